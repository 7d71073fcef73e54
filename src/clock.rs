//! Local time as text, with strftime(3): the error log's timestamps, the access log's
//! `%t`/`%T` and the status page's start time. A leaf: it knows no configuration.

/// Local time as `22-Nov-2026 10:00:00`, php-fpm's error-log timestamp.
pub fn timestamp() -> String {
    strftime_now(c"%d-%b-%Y %H:%M:%S")
}

/// Format the current local time with a strftime(3) pattern.
pub fn strftime_now(pattern: &std::ffi::CStr) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as nix::libc::time_t)
        .unwrap_or(0);
    strftime_at(now, pattern)
}

/// Format a Unix time in local time with a strftime(3) pattern.
pub fn strftime_at(when: nix::libc::time_t, pattern: &std::ffi::CStr) -> String {
    let mut tm = std::mem::MaybeUninit::<nix::libc::tm>::zeroed();
    let mut buf = [0u8; 128];
    // SAFETY: localtime_r writes only into `tm`, which is large enough and zero-initialised;
    // strftime writes at most buf.len() bytes into `buf` and returns how many it wrote.
    let len = unsafe {
        if nix::libc::localtime_r(&when, tm.as_mut_ptr()).is_null() {
            return when.to_string();
        }
        nix::libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            pattern.as_ptr(),
            tm.as_ptr(),
        )
    };
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_php_fpm_shape() {
        // 22-Nov-2026 10:00:00
        let t = strftime_at(0, c"%d-%b-%Y %H:%M:%S");
        assert_eq!(t.len(), 20, "{t}");
        assert_eq!(&t[2..3], "-");
        assert_eq!(&t[6..7], "-");
        assert_eq!(&t[11..12], " ");
        assert_eq!(timestamp().len(), 20);
    }
}
