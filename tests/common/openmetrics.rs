//! A strict OpenMetrics 1.0 text-format checker for the tests (no parser crate or Python
//! module is needed, so it runs everywhere, CI included). It follows the specification's
//! ABNF and the rules a strict parser (prometheus_client's) enforces: metric families
//! described before their samples and never interleaved, one TYPE/HELP/UNIT each, sample
//! names that fit the family's type (`_total` for counters), units that end the name,
//! well-formed label sets without duplicates, valid numbers, non-negative counters, and
//! `# EOF` as the last line.

use std::collections::{HashMap, HashSet};

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

/// A sample found in the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Default)]
struct Family {
    kind: Option<String>,
    help: bool,
    unit: Option<String>,
    has_samples: bool,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Check escapes in a HELP text or label value (`\\`, `\"`, `\n` only) and return the
/// unescaped text.
fn unescape(text: &str, in_quotes: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in {text:?}")),
            },
            '"' if in_quotes => return Err(format!("unescaped quote in {text:?}")),
            '\n' => return Err(format!("raw newline in {text:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn parse_number(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" | "inf" | "+inf" => return Ok(f64::INFINITY),
        "-Inf" | "-inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let digits = text.trim_start_matches(['+', '-']);
    let ok = !digits.is_empty()
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if !ok {
        return Err(format!("not a number: {text:?}"));
    }
    text.parse::<f64>()
        .map_err(|e| format!("not a number: {text:?}: {e}"))
}

/// Split `name{labels} value [timestamp]`.
fn parse_sample(line: &str) -> Result<(Sample, Option<f64>), String> {
    let (name_end, labels, rest) = match line.find('{') {
        Some(open) if line[..open].find(' ').is_none() => {
            let close = find_label_end(line, open)?;
            (
                open,
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        _ => {
            let space = line.find(' ').ok_or(format!("no value in {line:?}"))?;
            (space, Vec::new(), &line[space..])
        }
    };
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or(format!("expected one space before the value in {line:?}"))?;
    let mut parts = rest.split(' ');
    let value = parse_number(parts.next().unwrap_or(""))?;
    let timestamp = match parts.next() {
        None => None,
        Some(t) => Some(parse_number(t)?),
    };
    if let Some(extra) = parts.next() {
        return Err(format!(
            "unexpected {extra:?} (exemplars are not expected) in {line:?}"
        ));
    }
    Ok((
        Sample {
            name: name.to_string(),
            labels,
            value,
        },
        timestamp,
    ))
}

fn find_label_end(line: &str, open: usize) -> Result<usize, String> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Ok(open + i),
            _ => {}
        }
    }
    Err(format!("unterminated label set in {line:?}"))
}

fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or(format!("no '=' in labels {text:?}"))?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let after = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or(format!("label value not quoted in {text:?}"))?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or(format!("unterminated label value in {text:?}"))?;
        let value = unescape(&after[..end], true)?;
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("duplicate label {name:?}"));
        }
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
            if rest.is_empty() {
                return Err(format!("trailing comma in labels {text:?}"));
            }
        } else if !rest.is_empty() {
            return Err(format!("expected ',' between labels in {text:?}"));
        }
    }
    Ok(labels)
}

/// The family a sample name belongs to, given the families described so far.
fn family_of<'a>(name: &'a str, families: &HashMap<String, Family>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    for suffix in [
        "_total", "_created", "_count", "_sum", "_bucket", "_gcount", "_gsum", "_info",
    ] {
        if let Some(base) = name.strip_suffix(suffix)
            && families.contains_key(base)
        {
            return Some(base);
        }
    }
    None
}

fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" | "stateset" | "unknown" => &[""],
        "info" => &["_info"],
        "summary" => &["", "_count", "_sum", "_created"],
        "histogram" => &["_count", "_sum", "_bucket", "_created"],
        "gaugehistogram" => &["_gcount", "_gsum", "_bucket"],
        _ => &[],
    }
}

/// Check `text`; return its samples or the first violation.
pub fn check(text: &str) -> Result<Vec<Sample>, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .ok_or("the exposition does not end with '# EOF'")?;
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("'# EOF' does not start a line".into());
    }
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen_series: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.is_empty() {
            return Err("empty line".into());
        }
        if line.contains("# EOF") && line.starts_with('#') {
            return Err("'# EOF' before the end".into());
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let name = parts.next().ok_or(format!("incomplete line {line:?}"))?;
            let value = parts.next().ok_or(format!("incomplete line {line:?}"))?;
            if !is_metric_name(name) {
                return Err(format!("bad metric family name {name:?}"));
            }
            if current.as_deref() != Some(name) {
                if let Some(previous) = current.take() {
                    finished.insert(previous);
                }
                if finished.contains(name) {
                    return Err(format!("family {name} appears twice (interleaved)"));
                }
                current = Some(name.to_string());
            }
            let family = families.entry(name.to_string()).or_default();
            if family.has_samples {
                return Err(format!("metadata for {name} after its samples"));
            }
            match keyword {
                "TYPE" => {
                    if family.kind.is_some() {
                        return Err(format!("two TYPE lines for {name}"));
                    }
                    if !TYPES.contains(&value) {
                        return Err(format!("unknown type {value:?} for {name}"));
                    }
                    family.kind = Some(value.to_string());
                }
                "HELP" => {
                    if family.help {
                        return Err(format!("two HELP lines for {name}"));
                    }
                    unescape(value, false)?;
                    family.help = true;
                }
                "UNIT" => {
                    if family.unit.is_some() {
                        return Err(format!("two UNIT lines for {name}"));
                    }
                    if !value.is_empty() && !name.ends_with(&format!("_{value}")) {
                        return Err(format!("{name} does not end with its unit {value}"));
                    }
                    family.unit = Some(value.to_string());
                }
                other => return Err(format!("unknown descriptor {other:?}")),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(format!("a comment that is no descriptor: {line:?}"));
        }
        let (sample, _timestamp) = parse_sample(line)?;
        let family_name = family_of(&sample.name, &families)
            .ok_or(format!("sample {} of no described family", sample.name))?
            .to_string();
        if current.as_deref() != Some(family_name.as_str()) {
            return Err(format!("sample {} outside its family's block", sample.name));
        }
        let family = families.get_mut(&family_name).expect("known family");
        let kind = family.kind.clone().unwrap_or_else(|| "unknown".into());
        let suffix = &sample.name[family_name.len()..];
        if !allowed_suffixes(&kind).contains(&suffix) {
            return Err(format!(
                "sample {} does not fit a {kind} family {family_name}",
                sample.name
            ));
        }
        if kind == "counter" && suffix == "_total" && (sample.value < 0.0 || sample.value.is_nan())
        {
            return Err(format!("counter {} is {}", sample.name, sample.value));
        }
        if kind == "info" && sample.value != 1.0 {
            return Err(format!("info {} is not 1", sample.name));
        }
        let mut labels = sample.labels.clone();
        labels.sort();
        let series = format!("{}{labels:?}", sample.name);
        if !seen_series.insert(series) {
            return Err(format!("duplicate series {}", sample.name));
        }
        family.has_samples = true;
        samples.push(sample);
    }
    // A family name must not collide with another family's sample names.
    for name in families.keys() {
        for (other, family) in &families {
            let kind = family.kind.as_deref().unwrap_or("unknown");
            for suffix in allowed_suffixes(kind) {
                if other != name && format!("{other}{suffix}") == *name {
                    return Err(format!("family {name} clashes with {other}{suffix}"));
                }
            }
        }
    }
    Ok(samples)
}

/// Known-bad inputs the checker must refuse (used by the pools tests to show it bites).
pub fn refuses_bad_input() -> bool {
    let bad = [
        // php-fpm's own: a counter sampled without _total.
        "# TYPE phpfpm_accepted_connections counter\nphpfpm_accepted_connections 1\n# EOF\n",
        // No EOF.
        "# TYPE a gauge\na 1\n",
        // Interleaved families.
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n# EOF\n",
        // A unit the name does not end with.
        "# TYPE a gauge\n# UNIT a seconds\na 1\n# EOF\n",
        // Bad escape.
        "# TYPE a gauge\na{x=\"\\t\"} 1\n# EOF\n",
        // Duplicate series.
        "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n# EOF\n",
        // Something after EOF.
        "# TYPE a gauge\na 1\n# EOF\na 2\n",
        // Not a number.
        "# TYPE a gauge\na one\n# EOF\n",
    ];
    let good = "# TYPE a counter\n# HELP a An \\\\ escaped \\n help.\na_total{x=\"q\\\"\"} 1\n# TYPE b info\nb_info{v=\"1\"} 1\n# EOF\n";
    bad.iter().all(|text| check(text).is_err()) && check(good).is_ok()
}

/// Where Python's prometheus_client is installed, its strict parser must take `text` too
/// (a second opinion beside `check`); under CI it must be installed.
pub fn python_cross_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let found = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status();
    if !found.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with prometheus_client not found, and CI requires it \
             (scripts/install-test-deps.sh)"
        );
        eprintln!(
            "SKIPPED (in part): python3 with prometheus_client not found; the Rust checker alone ran"
        );
        return;
    }
    let program = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nlist(p(sys.stdin.read()))\n";
    let mut child = Command::new("python3")
        .args(["-c", program])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client refuses it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}
