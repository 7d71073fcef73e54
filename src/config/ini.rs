//! The INI dialect php-fpm reads, one line at a time (php-fpm feeds the Zend INI parser line by
//! line, so no construct spans lines).
//!
//! Matches PHP where it matters for fpm configs (checked against `php-fpm8.2 -tt`):
//! - `;` starts a comment anywhere outside quotes (`k = a;b` is `a`); `#` only at line start;
//! - `"..."` knows the escapes `\"`, `\\` and `\$` and nothing else; `'...'` is raw; pieces
//!   concatenate (`"a"b'c'` is `abc`), and blanks next to a `"..."` piece are dropped as PHP does;
//! - `${VAR}` is expanded from the environment, unquoted or in `"..."`, never in `'...'`;
//!   an unset variable is empty; `$` not followed by `{` is literal (`$pool` is left for later);
//! - an unquoted `=` in a value is a syntax error; a line without `=` is an error.
//!
//! Deliberate differences: PHP evaluates `| & ^ ~ ! ( )` and constants in unquoted values as
//! expressions (`E_ALL & ~E_NOTICE` becomes a number); we keep the text, which is what a
//! `php-cgi -d` flag wants anyway. PHP turns unquoted `yes`/`no`/`none`... into `1`/`""` for
//! every key; we keep the word and let boolean directives read it. `#` comments are accepted
//! although PHP 7+ no longer has them.

/// One meaningful line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    /// `[name]`, trimmed.
    Section(String),
    Entry(Entry),
}

/// `key = value` or `key[index] = value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// As written (trimmed); directive lookup is case-insensitive.
    pub key: String,
    /// `Some("")` for `key[]`, `Some("NAME")` for `key[NAME]`, `None` for a plain key.
    pub index: Option<String>,
    pub value: String,
}

/// The outcome of one non-blank, non-comment line, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    pub number: usize,
    pub item: Result<Item, String>,
}

/// Looks up `${NAME}`; `None` means unset.
pub(super) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a whole file. Every line yields at most one [`Line`]; a bad line does not stop
/// the reading, so the caller can report every error at once.
pub(super) fn parse(text: &[u8], env: EnvLookup) -> Vec<Line> {
    let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
    text.split(|&byte| byte == b'\n')
        .enumerate()
        .filter_map(|(index, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let item = match std::str::from_utf8(raw) {
                Ok(line) => parse_line(line, env)?,
                Err(_) if is_comment_or_blank(raw) => return None,
                Err(_) => Err("the line is not valid UTF-8".to_string()),
            };
            Some(Line {
                number: index + 1,
                item,
            })
        })
        .collect()
}

fn is_comment_or_blank(raw: &[u8]) -> bool {
    match raw.iter().find(|byte| !matches!(byte, b' ' | b'\t')) {
        None => true,
        Some(first) => matches!(first, b';' | b'#'),
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn parse_line(line: &str, env: EnvLookup) -> Option<Result<Item, String>> {
    let line = line.trim_start_matches(is_blank);
    if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
        return None;
    }
    Some(match line.strip_prefix('[') {
        Some(rest) => parse_section(rest),
        None => parse_entry(line, env).map(Item::Entry),
    })
}

fn parse_section(rest: &str) -> Result<Item, String> {
    let Some(close) = rest.find(']') else {
        return Err("missing ']' after the section name".to_string());
    };
    let name = rest[..close].trim_matches(is_blank);
    let tail = rest[close + 1..].trim_start_matches(is_blank);
    if !tail.is_empty() && !tail.starts_with(';') {
        return Err(format!("unexpected '{tail}' after the section name"));
    }
    if name.is_empty() {
        return Err("empty section name".to_string());
    }
    Ok(Item::Section(name.to_string()))
}

fn parse_entry(line: &str, env: EnvLookup) -> Result<Entry, String> {
    let key_end = line.find(['=', '[', ';', '"', '\'']).unwrap_or(line.len());
    let key = line[..key_end].trim_end_matches(is_blank);
    let mut rest = &line[key_end..];
    let mut index = None;
    if let Some(after_bracket) = rest.strip_prefix('[') {
        let (parsed, after_index) = parse_index(after_bracket, env)?;
        index = Some(parsed);
        rest = after_index.trim_start_matches(is_blank);
    }
    let Some(value) = rest.strip_prefix('=') else {
        return Err(match rest.chars().next() {
            None | Some(';') => format!("'{key}' has no '=': expected 'key = value'"),
            Some(quote @ ('"' | '\'')) => format!("unexpected {quote} in the key '{key}'"),
            Some('[') => format!("unexpected '[' after '{key}[...]'"),
            Some(_) => format!("unexpected '{rest}' after '{key}[...]'"),
        });
    };
    if key.is_empty() {
        return Err("missing key before '='".to_string());
    }
    Ok(Entry {
        key: key.to_string(),
        index,
        value: parse_value(value, env)?,
    })
}

/// The inside of `key[...]`, which may be quoted or use `${VAR}`; returns it and what follows `]`.
fn parse_index<'l>(after_bracket: &'l str, env: EnvLookup) -> Result<(String, &'l str), String> {
    let Some(close) = after_bracket.find(']') else {
        return Err("missing ']' after the array key".to_string());
    };
    let inside = after_bracket[..close].trim_matches(is_blank);
    let unquoted = ['"', '\''].iter().find_map(|&quote| {
        inside
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
    });
    let index = match unquoted {
        Some(literal) => literal.to_string(),
        None if inside.contains('[') => return Err("unexpected '[' in the array key".to_string()),
        None => parse_value(inside, env)?,
    };
    Ok((index, &after_bracket[close + 1..]))
}

/// Everything after `=`: PHP's concatenation of unquoted text, `"..."`, `'...'` and `${VAR}`.
fn parse_value(text: &str, env: EnvLookup) -> Result<String, String> {
    let mut value = String::new();
    // Blanks are only kept when something follows them: trailing blanks are not part of
    // the value, and PHP drops the blanks that touch a double-quoted piece.
    let mut pending_blanks = String::new();
    let mut chars = text.trim_start_matches(is_blank).chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => pending_blanks.push(c),
            ';' => break,
            '=' => {
                return Err(
                    "unexpected '=' in the value (put the value in double quotes)".to_string(),
                );
            }
            '"' => {
                pending_blanks.clear();
                read_double_quoted(&mut chars, &mut value, env)?;
                while chars.next_if(|&c| is_blank(c)).is_some() {}
            }
            '\'' => {
                value.push_str(&std::mem::take(&mut pending_blanks));
                read_single_quoted(&mut chars, &mut value)?;
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                value.push_str(&std::mem::take(&mut pending_blanks));
                read_variable(&mut chars, &mut value, env)?;
            }
            _ => {
                value.push_str(&std::mem::take(&mut pending_blanks));
                value.push(c);
            }
        }
    }
    Ok(value)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn read_double_quoted(chars: &mut Chars, value: &mut String, env: EnvLookup) -> Result<(), String> {
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok(()),
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\' | '$')) => value.push(escaped),
                Some(other) => {
                    value.push('\\');
                    value.push(other);
                }
                None => break,
            },
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                read_variable(chars, value, env)?;
            }
            _ => value.push(c),
        }
    }
    Err("missing closing '\"'".to_string())
}

fn read_single_quoted(chars: &mut Chars, value: &mut String) -> Result<(), String> {
    for c in chars.by_ref() {
        if c == '\'' {
            return Ok(());
        }
        value.push(c);
    }
    Err("missing closing \"'\"".to_string())
}

/// After `${`: the name up to `}`, looked up in the environment.
fn read_variable(chars: &mut Chars, value: &mut String, env: EnvLookup) -> Result<(), String> {
    let mut name = String::new();
    for c in chars.by_ref() {
        if c == '}' {
            let name = name.trim_matches(is_blank);
            if name.is_empty() {
                return Err("empty variable name in '${}'".to_string());
            }
            value.push_str(&env(name).unwrap_or_default());
            return Ok(());
        }
        name.push(c);
    }
    Err("missing '}' after '${'".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn test_env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/u".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn lines(text: &str) -> Vec<Line> {
        parse(text.as_bytes(), &test_env)
    }

    /// The value of the single entry in `line`, or its error.
    fn value_of(line: &str) -> Result<String, String> {
        let mut parsed = lines(line);
        assert_eq!(parsed.len(), 1, "{line:?} gave {parsed:?}");
        match parsed.remove(0).item? {
            Item::Entry(entry) => Ok(entry.value),
            Item::Section(name) => panic!("{line:?} is a section {name}"),
        }
    }

    fn entry(line: &str) -> Entry {
        match lines(line).remove(0).item {
            Ok(Item::Entry(entry)) => entry,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn quoting_matches_php() {
        // Each case was checked against `php-fpm8.2 -tt` with `env[X] = <value>`.
        let cases = [
            ("k = a;b", "a"),
            ("k = a ; c", "a"),
            ("k = color#fff", "color#fff"),
            ("k = a#b", "a#b"),
            (r#"k = "a"b'c'"#, "abc"),
            (r#"k = "a" "b""#, "ab"),
            (r#"k = a "b""#, "ab"),
            (r#"k = "a" b"#, "ab"),
            (r#"k = a b "c" d"#, "a bcd"),
            ("k = 'a' 'b'", "a b"),
            (r#"k = "a"  b  c"#, "ab  c"),
            ("k = a'b'", "ab"),
            ("k = a   b  ", "a   b"),
            (r#"k = "a;b""#, "a;b"),
            (r#"k = a;b"c""#, "a"),
            (r#"k = "a" ; c"#, "a"),
            (r#"k = "a=b""#, "a=b"),
            ("k = 'x\\y'", "x\\y"),
            (r"k = C:\new", r"C:\new"),
            (r#"k = "q\"q\\x\$y\n""#, r#"q"q\x$y\n"#),
            ("k = {x}", "{x}"),
            ("k = 1.5", "1.5"),
            ("k = -3", "-3"),
            ("k = $pool", "$pool"),
            ("k = $HOME", "$HOME"),
            ("k =", ""),
            ("k = ;only a comment", ""),
            (r#"k = """#, ""),
            ("k = ''", ""),
            ("k=v", "v"),
            ("k\t=\tv\t", "v"),
            (
                r#"k = "%R - %u %t \"%m %r\" %s""#,
                r#"%R - %u %t "%m %r" %s"#,
            ),
            ("k = E_ALL & ~E_NOTICE", "E_ALL & ~E_NOTICE"),
        ];
        for (line, expected) in cases {
            assert_eq!(value_of(line).as_deref(), Ok(expected), "{line}");
        }
    }

    #[test]
    fn environment_variables_expand_outside_single_quotes() {
        let cases = [
            ("k = ${HOME}", "/home/u"),
            ("k = ${HOME} x", "/home/u x"),
            ("k = x ${HOME}", "x /home/u"),
            ("k = ${HOME}${HOME}", "/home/u/home/u"),
            ("k = ${ HOME }", "/home/u"),
            (r#"k = "${HOME}x""#, "/home/ux"),
            ("k = '${HOME}'", "${HOME}"),
            (r#"k = "\${HOME}""#, "${HOME}"),
            ("k = ${UNSET}z", "z"),
            ("k = a${EMPTY}b", "ab"),
        ];
        for (line, expected) in cases {
            assert_eq!(value_of(line).as_deref(), Ok(expected), "{line}");
        }
    }

    #[test]
    fn value_syntax_errors() {
        let cases = [
            ("k = a=b", "unexpected '='"),
            (r#"k = "unterminated"#, "missing closing '\"'"),
            (r#"k = a\"b"#, "missing closing '\"'"),
            ("k = 'open", "missing closing \"'\""),
            ("k = ${HOME", "missing '}'"),
            (r#"k = "${HOME""#, "missing '}'"),
            ("k = ${}", "empty variable name"),
        ];
        for (line, expected) in cases {
            let error = value_of(line).expect_err(line);
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn keys_and_array_indexes() {
        assert_eq!(
            entry("env[PATH] = /bin"),
            Entry {
                key: "env".into(),
                index: Some("PATH".into()),
                value: "/bin".into()
            }
        );
        assert_eq!(
            entry("access.suppress_path[] = /ping").index.as_deref(),
            Some("")
        );
        assert_eq!(entry("env [B] = y").key, "env");
        assert_eq!(entry("env[ A ] = x").index.as_deref(), Some("A"));
        assert_eq!(entry(r#"env["Q"] = q"#).index.as_deref(), Some("Q"));
        assert_eq!(entry("env['R'] = r").index.as_deref(), Some("R"));
        assert_eq!(entry("env[${HOME}] = r").index.as_deref(), Some("/home/u"));
        assert_eq!(
            entry("cgi.interpreter[.php] = /x").index.as_deref(),
            Some(".php")
        );
        assert_eq!(entry("  pm.max_children = 5").key, "pm.max_children");
        assert_eq!(entry("Listen.Backlog = 5").key, "Listen.Backlog");
        assert_eq!(entry("ping.response=").value, "");
    }

    #[test]
    fn line_errors() {
        let cases = [
            ("barekey", "has no '='"),
            ("key ; comment", "has no '='"),
            ("env[S = x", "missing ']'"),
            ("env[a][b] = x", "unexpected '['"),
            ("env[a]b = x", "unexpected 'b = x'"),
            ("= value", "missing key"),
            ("[]", "empty section name"),
            ("[www", "missing ']'"),
            ("[www] junk", "unexpected 'junk'"),
            ("a\"b = c", "unexpected \""),
        ];
        for (line, expected) in cases {
            let parsed = lines(line);
            let error = parsed[0].item.clone().expect_err(line);
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn sections_comments_blanks_and_line_numbers() {
        let text =
            "\u{feff}; comment\n# another\n\n   \t\n[ www ] ; pool\r\nlisten = 9000\r\n[global]\n";
        let parsed = lines(text);
        assert_eq!(
            parsed,
            vec![
                Line {
                    number: 5,
                    item: Ok(Item::Section("www".into()))
                },
                Line {
                    number: 6,
                    item: Ok(Item::Entry(Entry {
                        key: "listen".into(),
                        index: None,
                        value: "9000".into()
                    }))
                },
                Line {
                    number: 7,
                    item: Ok(Item::Section("global".into()))
                },
            ]
        );
    }

    #[test]
    fn a_bad_line_does_not_hide_later_ones() {
        let parsed = lines("a = b=c\nok = 1\nbroken\n");
        let numbers: Vec<_> = parsed
            .iter()
            .map(|line| (line.number, line.item.is_ok()))
            .collect();
        assert_eq!(numbers, vec![(1, false), (2, true), (3, false)]);
    }

    #[test]
    fn invalid_utf8_is_an_error_except_in_comments() {
        let parsed = parse(b"; caf\xe9\nk = caf\xe9\n", &test_env);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].number, 2);
        assert!(parsed[0].item.clone().unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn bom_is_only_skipped_at_the_start() {
        let parsed = lines("k = 1\n\u{feff}j = 2\n");
        match &parsed[1].item {
            Ok(Item::Entry(entry)) => assert_eq!(entry.key, "\u{feff}j"),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes, &test_env);
        }

        #[test]
        fn never_panics_on_ini_like_text(text in r#"[\[\]=;#"'$\{\} \ta-z\\\n\r]{0,120}"#) {
            let _ = parse(text.as_bytes(), &test_env);
        }

        #[test]
        fn a_plain_value_reads_back_unchanged(value in "[a-zA-Z0-9/._:-]([a-zA-Z0-9/._: -]{0,30}[a-zA-Z0-9/._:-])?") {
            let parsed = value_of(&format!("key = {value}"));
            prop_assert_eq!(parsed, Ok(value));
        }
    }
}
