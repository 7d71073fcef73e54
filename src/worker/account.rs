//! What a worker publishes about each request in its scoreboard slot: the request's
//! identity, from its params (what it cost comes from the CGI child's wait4).

use crate::cgi::proxy_path::script_path;
use crate::fastcgi::Params;
use crate::scoreboard::RequestInfo;

/// The status page's view of a request.
pub(super) fn request_info(params: &Params) -> RequestInfo {
    let get = |name: &str| params.get(name).unwrap_or_default();
    let uri = match params.get("REQUEST_URI") {
        Some(uri) if !uri.is_empty() => uri.to_vec(),
        // No REQUEST_URI (a bare FastCGI client): php-fpm's own composition.
        _ => {
            let mut uri = get("SCRIPT_NAME").to_vec();
            uri.extend_from_slice(get("PATH_INFO"));
            let query = get("QUERY_STRING");
            if !query.is_empty() {
                uri.push(b'?');
                uri.extend_from_slice(query);
            }
            uri
        }
    };
    let user = match params.get("REMOTE_USER") {
        Some(user) if !user.is_empty() => user.to_vec(),
        _ => basic_auth_user(get("HTTP_AUTHORIZATION")).unwrap_or_default(),
    };
    RequestInfo {
        method: get("REQUEST_METHOD").to_vec(),
        uri,
        // The status page names the file, as php-fpm's does, not Apache's proxy form of it.
        script: script_path(get("SCRIPT_FILENAME")).path.into_owned(),
        user,
        content_length: params
            .get_str("CONTENT_LENGTH")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0),
    }
}

/// The user name of an `Authorization: Basic` header, as php-fpm shows PHP_AUTH_USER.
fn basic_auth_user(header: &[u8]) -> Option<Vec<u8>> {
    let (scheme, credentials) = header.split_at(header.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64_decode(credentials.trim_ascii())?;
    let end = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[..end].to_vec())
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text
        .strip_suffix(b"==")
        .or(text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut bits = 0u32;
        for &c in chunk {
            bits = bits << 6 | value(c)?;
        }
        bits <<= 6 * (4 - chunk.len() as u32);
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn the_request_uri_wins_and_else_script_name_path_info_and_query() {
        let info = request_info(&params(&[
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/app/x.sh/more?a=1"),
            ("SCRIPT_NAME", "/app/x.sh"),
            ("SCRIPT_FILENAME", "/srv/app/x.sh"),
            ("CONTENT_LENGTH", "17"),
        ]));
        assert_eq!(info.method, b"POST");
        assert_eq!(info.uri, b"/app/x.sh/more?a=1");
        assert_eq!(info.script, b"/srv/app/x.sh");
        assert_eq!(info.content_length, 17);
        assert!(info.user.is_empty());
        let info = request_info(&params(&[
            ("SCRIPT_NAME", "/x.sh"),
            ("PATH_INFO", "/p"),
            ("QUERY_STRING", "q=2"),
        ]));
        assert_eq!(info.uri, b"/x.sh/p?q=2");
        assert_eq!(request_info(&params(&[("SCRIPT_NAME", "/x")])).uri, b"/x");
    }

    #[test]
    fn apaches_proxy_form_shows_as_the_file() {
        let info = request_info(&params(&[(
            "SCRIPT_FILENAME",
            "proxy:fcgi://127.0.0.1:9000/srv/app/x.sh/more",
        )]));
        assert_eq!(info.script, b"/srv/app/x.sh/more");
    }

    #[test]
    fn the_user_comes_from_remote_user_or_basic_auth() {
        let info = request_info(&params(&[("REMOTE_USER", "carol")]));
        assert_eq!(info.user, b"carol");
        // "alice:secret"
        let info = request_info(&params(&[("HTTP_AUTHORIZATION", "Basic YWxpY2U6c2VjcmV0")]));
        assert_eq!(info.user, b"alice");
        let info = request_info(&params(&[("HTTP_AUTHORIZATION", "Bearer abc")]));
        assert!(info.user.is_empty());
        let info = request_info(&params(&[("HTTP_AUTHORIZATION", "Basic !!!")]));
        assert!(info.user.is_empty());
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode(b"YWJjZA").unwrap(), b"abcd");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"Y*==").is_none());
    }
}
