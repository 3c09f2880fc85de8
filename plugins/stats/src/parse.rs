//! Reading the exposition text back: lines of `name{label="value",…} value` into
//! [`Sample`]s.
//!
//! `lametun stats` only needs the samples, so this reads both formats the endpoint
//! writes (OpenMetrics 1.0 and the classic Prometheus text 0.0.4) and any other
//! exporter's: comments (`# HELP`, `# TYPE`, `# EOF`) and blank lines are skipped, a
//! timestamp or an OpenMetrics exemplar after the value is ignored, and label values
//! are unescaped (`\\`, `\"`, `\n`). A line that is none of these is an error naming
//! the line, never a panic: the text comes from the network.

use std::fmt;

/// One sample: a metric name, its labels in the order written, and a value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The full name as written (`lametun_stage_dropped_total`).
    pub name: String,
    /// `(name, value)` pairs, unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not a sample, a comment or blank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Every sample of an exposition text, in the order written.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected a metric name at {:?}", truncate(line)));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("{name}: invalid value {value:?}"))?;
    // Anything after the value (a timestamp, `# {…} exemplar`) is not needed here.
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Reads `a="x",b="y"}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let key_end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
        let key = &s[..key_end];
        if key.is_empty() {
            return Err(format!(
                "expected a label name or '}}' at {:?}",
                truncate(s)
            ));
        }
        s = s[key_end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("label {key}: expected '='"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: expected a quoted value"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {key}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("label {key}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("label {key}: expected ',' or '}}' after the value"));
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_and_without_labels_and_skips_comments() {
        let text = "# HELP lametun_tun_rx_packets Packets read from the TUN device\n\
                    # TYPE lametun_tun_rx_packets counter\n\
                    lametun_tun_rx_packets_total 12\n\
                    \n\
                    lametun_stage_dropped_total{stage=\"filter\",type=\"filter\",direction=\"inbound\",reason=\"filtered\"} 3\n\
                    lametun_uptime_seconds 12.5\n\
                    # EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "lametun_tun_rx_packets_total");
        assert!(s[0].labels.is_empty());
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].label("stage"), Some("filter"));
        assert_eq!(s[1].label("reason"), Some("filtered"));
        assert_eq!(s[1].label("rule"), None);
        assert_eq!(s[1].value, 3.0);
        assert_eq!(s[2].value, 12.5);
    }

    #[test]
    fn unescapes_label_values_and_accepts_spacing_trailing_commas_timestamps_and_specials() {
        let s = parse(
            "m{a=\"x\\\"y\\\\z\\nw\", b = \"{},=\" ,} 1 1700000000000\nn +Inf\no -Inf\np NaN\nq{} 1e3 # {trace=\"1\"} 2\n",
        )
        .unwrap();
        assert_eq!(s[0].label("a"), Some("x\"y\\z\nw"));
        assert_eq!(s[0].label("b"), Some("{},="));
        assert_eq!(s[0].value, 1.0);
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert!(s[3].value.is_nan());
        assert_eq!(s[4].value, 1000.0);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number_never_panics() {
        let bad = [
            "m{a=\"x} 1",
            "m{a=x} 1",
            "m{a\"x\"} 1",
            "m{=\"x\"} 1",
            "m{a=\"x\" b=\"y\"} 1",
            "m",
            "m{a=\"x\"}",
            "m abc",
            "{a=\"x\"} 1",
            "9m 1",
            "m{a=\"\\",
            "m inf",
        ];
        for line in bad {
            let text = format!("# ok\nok 1\n{line}\n");
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, 3, "{line:?}: {err}");
        }
        // Every prefix of a valid line parses or fails, without panicking.
        let line = "lametun_x_total{stage=\"é\\\"\",b=\"2\"} 3.5";
        for (i, _) in line.char_indices() {
            let _ = parse(&line[..i]);
        }
    }
}
