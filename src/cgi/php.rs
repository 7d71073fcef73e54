//! PHP pools: a pool's `php_value[]`, `php_flag[]`, `php_admin_value[]` and
//! `php_admin_flag[]` reach php-cgi as `-d name=value` arguments, placed before the script.
//!
//! php-fpm applies them inside PHP, where the admin ones cannot be changed by `ini_set()`.
//! php-cgi knows no such distinction: every `-d` setting is a startup setting, and a script
//! may still change the ones PHP lets scripts change. The admin ones come last, so they win
//! over a plain one of the same name.
//!
//! php-cgi ignores all its command-line options when the query string contains no `=` and
//! begins, once URL-decoded and past leading blanks, with `-` (its guard against
//! CVE-2012-1823). Such a request would run without the pool's settings, so it is refused.

use crate::config::PhpSetting;
use std::ffi::OsString;

/// The `-d` arguments for the settings, plain ones first, admin ones last.
pub fn ini_arguments(settings: &[PhpSetting]) -> Vec<OsString> {
    let plain = settings.iter().filter(|setting| !setting.admin);
    let admin = settings.iter().filter(|setting| setting.admin);
    plain
        .chain(admin)
        .flat_map(|setting| {
            [
                OsString::from("-d"),
                OsString::from(format!("{}={}", setting.name, setting.value)),
            ]
        })
        .collect()
}

/// Whether php-cgi would skip its command-line options for this query string.
pub fn query_hides_options(query: &[u8]) -> bool {
    if query.contains(&b'=') {
        return false;
    }
    let mut rest = query;
    loop {
        let (byte, used) = match rest {
            [b'%', high, low, ..] => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => (high << 4 | low, 3),
                _ => (b'%', 1),
            },
            [b'+', ..] => (b' ', 1),
            [byte, ..] => (*byte, 1),
            [] => return false,
        };
        if byte > b' ' {
            return byte == b'-';
        }
        rest = &rest[used..];
    }
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, value: &str, admin: bool) -> PhpSetting {
        PhpSetting {
            name: name.into(),
            value: value.into(),
            admin,
        }
    }

    #[test]
    fn admin_settings_come_last() {
        let args = ini_arguments(&[
            setting("memory_limit", "77M", true),
            setting("display_errors", "0", false),
            setting("memory_limit", "32M", false),
            setting("sendmail_path", "/usr/sbin/sendmail -t -i", true),
        ]);
        assert_eq!(
            args,
            [
                "-d",
                "display_errors=0",
                "-d",
                "memory_limit=32M",
                "-d",
                "memory_limit=77M",
                "-d",
                "sendmail_path=/usr/sbin/sendmail -t -i",
            ]
            .map(OsString::from)
        );
        assert!(ini_arguments(&[]).is_empty());
    }

    #[test]
    fn queries_that_make_php_cgi_skip_its_options() {
        for hiding in [
            &b"-s"[..],
            b"%2ds",
            b"%2Ds",
            b"+-s",
            b"%20-s",
            b"\t-x",
            b"-",
        ] {
            assert!(
                query_hides_options(hiding),
                "{}",
                String::from_utf8_lossy(hiding)
            );
        }
        for harmless in [
            &b""[..],
            b"a=1",
            b"-s=1",
            b"s",
            b"x-s",
            b"%2",
            b"%zz-",
            b"%41-",
        ] {
            assert!(
                !query_hides_options(harmless),
                "{}",
                String::from_utf8_lossy(harmless)
            );
        }
    }
}
