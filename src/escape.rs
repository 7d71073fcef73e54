//! Control characters escaped for the logs (`\x0A`, as nginx writes them). A leaf, so
//! that the access log can use it without importing the error log (and, through it, the
//! configuration that imports the access log's format).

use std::fmt::Write as _;

/// Which control characters [`escape_control`] leaves alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// A tab breaks no line: the error log keeps it (scripts indent their stderr).
    Tab,
    /// Every control character is escaped: the access log and the slowlog, whose
    /// fields a tab could shift.
    Nothing,
}

/// `text` with its C0 control characters and DEL written as nginx writes them in its
/// logs (`\x0A`), so that no value can end a log line early, start a forged one, or send
/// escape sequences to the terminal of whoever reads the log.
pub fn escape_control(text: &str, keep: Keep) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_ascii_control() && !(keep == Keep::Tab && c == '\t');
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            let _ = write!(out, "\\x{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Append `value` to `out` with every control byte (C0 and DEL) escaped as `\xHH`; other
/// bytes, UTF-8 included, are copied as they are.
pub fn push_escaped(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if b.is_ascii_control() {
            let _ = std::io::Write::write_fmt(out, format_args!("\\x{b:02X}"));
        } else {
            out.push(b);
        }
    }
}
