//! SCRIPT_FILENAME as Apache's mod_proxy_fcgi sends it.
//!
//! With `ProxyFCGIBackendType FPM` (its default since 2.4.26) Apache sends its internal
//! file name: `proxy:fcgi://HOST[:PORT]/srv/www/app.sh` for the `SetHandler` form, the
//! same with a trailing path (`/app.sh/extra`) and percent-encoded (`a%20b.sh`) for the
//! `ProxyPass`/`ProxyPassMatch` form, and `proxy:balancer://NAME/...` behind a balancer;
//! a `RewriteRule [P]` may leave a `?query` on it. php-fpm strips the prefix up to the
//! first `/` (case-insensitively) and cuts at the `?`; so does this module. It also
//! offers the percent-decoded path, which the resolver tries when the path as sent names
//! no file (only the ProxyPass form encodes; a SetHandler path is the file's own name,
//! which may hold a literal `%`).

use std::borrow::Cow;

const PREFIXES: &[&[u8]] = &[b"proxy:fcgi://", b"proxy:balancer://"];

/// The script path of a SCRIPT_FILENAME value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptPath<'a> {
    /// The path as sent, minus any proxy prefix and query.
    pub path: Cow<'a, [u8]>,
    /// The percent-decoded path, when the value came through Apache's proxy and decoding
    /// changes it.
    pub decoded: Option<Vec<u8>>,
}

/// Strip Apache's proxy prefix and query from `raw`; anything else is returned as is.
pub fn script_path(raw: &[u8]) -> ScriptPath<'_> {
    let Some(rest) = strip_prefix(raw) else {
        return ScriptPath {
            path: Cow::Borrowed(raw),
            decoded: None,
        };
    };
    let path = match rest.iter().position(|&b| b == b'?') {
        Some(q) => &rest[..q],
        None => rest,
    };
    let decoded = percent_decode(path).filter(|d| d.as_slice() != path);
    ScriptPath {
        path: Cow::Borrowed(path),
        decoded,
    }
}

/// The path after `proxy:fcgi://HOST[:PORT]` or `proxy:balancer://NAME`, from its `/`;
/// `None` when `raw` has no such prefix or no path after the host.
fn strip_prefix(raw: &[u8]) -> Option<&[u8]> {
    let prefix = PREFIXES
        .iter()
        .find(|p| raw.len() >= p.len() && raw[..p.len()].eq_ignore_ascii_case(p))?;
    let after = &raw[prefix.len()..];
    let slash = after.iter().position(|&b| b == b'/')?;
    Some(&after[slash..])
}

/// `%XX` to its byte; a `%` not followed by two hex digits stays as it is (Apache never
/// sends one, and refusing would only make a stray `%` in a file name unreachable).
/// `None` when there is nothing to decode.
fn percent_decode(path: &[u8]) -> Option<Vec<u8>> {
    if !path.contains(&b'%') {
        return None;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(raw: &str) -> (String, Option<String>) {
        let p = script_path(raw.as_bytes());
        (
            String::from_utf8(p.path.into_owned()).unwrap(),
            p.decoded.map(|d| String::from_utf8(d).unwrap()),
        )
    }

    #[test]
    fn plain_paths_are_untouched_even_with_a_percent_or_a_question_mark() {
        for raw in ["/srv/www/a.sh", "/srv/www/p%41.sh", "/srv/www/a?b.sh", ""] {
            assert_eq!(stripped(raw), (raw.to_string(), None), "{raw}");
        }
    }

    #[test]
    fn the_sethandler_form_loses_its_prefix() {
        assert_eq!(
            stripped("proxy:fcgi://localhost/srv/www/hello.sh"),
            ("/srv/www/hello.sh".into(), None)
        );
        assert_eq!(
            stripped("proxy:fcgi://127.0.0.1:9000/srv/www/app.php/extra/path"),
            ("/srv/www/app.php/extra/path".into(), None)
        );
        assert_eq!(
            stripped("proxy:fcgi://[::1]:9000/srv/x.sh"),
            ("/srv/x.sh".into(), None)
        );
    }

    #[test]
    fn prefixes_match_case_insensitively_balancers_included() {
        for raw in [
            "PROXY:FCGI://Host:1/srv/x.sh",
            "Proxy:Fcgi://h/srv/x.sh",
            "proxy:balancer://mycluster/srv/x.sh",
            "PROXY:BALANCER://c/srv/x.sh",
        ] {
            assert_eq!(stripped(raw), ("/srv/x.sh".into(), None), "{raw}");
        }
    }

    #[test]
    fn a_query_apache_left_on_is_cut() {
        assert_eq!(
            stripped("proxy:fcgi://h:9000/srv/x.sh?a=1&b=%20"),
            ("/srv/x.sh".into(), None)
        );
        assert_eq!(
            stripped("proxy:fcgi://h/srv/x.sh/info?"),
            ("/srv/x.sh/info".into(), None)
        );
    }

    #[test]
    fn the_proxypass_forms_encoding_is_offered_decoded() {
        assert_eq!(
            stripped("proxy:fcgi://h:9000/srv/www/a%20b.sh/pa%20th"),
            (
                "/srv/www/a%20b.sh/pa%20th".into(),
                Some("/srv/www/a b.sh/pa th".into())
            )
        );
        assert_eq!(
            stripped("proxy:fcgi://h/srv/p%2541.sh"),
            ("/srv/p%2541.sh".into(), Some("/srv/p%41.sh".into()))
        );
        // A decoded `..` is offered as it is: the resolver's canonical path and
        // cgi.allowed_roots decide where it leads.
        assert_eq!(
            stripped("proxy:fcgi://h/srv/www/%2e%2E/etc/x.sh"),
            (
                "/srv/www/%2e%2E/etc/x.sh".into(),
                Some("/srv/www/../etc/x.sh".into())
            )
        );
        // Malformed escapes stay as they are.
        assert_eq!(
            stripped("proxy:fcgi://h/srv/a%zz%4.sh%"),
            ("/srv/a%zz%4.sh%".into(), None)
        );
    }

    #[test]
    fn a_prefix_without_a_path_is_left_whole() {
        // php-fpm leaves it too; the resolver then refuses it as not absolute.
        for raw in [
            "proxy:fcgi://localhost",
            "proxy:balancer://c",
            "proxy:fcgi:/x",
        ] {
            assert_eq!(stripped(raw), (raw.to_string(), None), "{raw}");
        }
    }
}
