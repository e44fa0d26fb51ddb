//! The Prometheus text exposition format (version 0.0.4), parsed into samples (pure).
//!
//! Lines are `name{label="value",...} value [timestamp]`; `#` lines (HELP, TYPE,
//! comments) are skipped; label values use `\\`, `\"` and `\n` escapes; values may be
//! `NaN`, `+Inf`, `-Inf`. A malformed line is skipped and counted, never fatal: one
//! bad exporter line must not hide the rest of a target.

use rampart_alert::{Labels, SeriesKey};

/// The samples of one scrape and how many lines could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    pub samples: Vec<(SeriesKey, f64)>,
    pub bad_lines: usize,
}

pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(s) => out.samples.push(s),
            None => out.bad_lines += 1,
        }
    }
    out
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<(SeriesKey, f64)> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let lname = rest[..eq].trim();
            if lname.is_empty() {
                return None;
            }
            let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut end = None;
            let mut it = after.char_indices();
            while let Some((i, c)) = it.next() {
                match c {
                    '\\' => match it.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, e) => value.push(e),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => value.push(c),
                }
            }
            labels.insert(lname.to_string(), value);
            rest = after[end? + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return None;
            }
        }
    }
    let mut parts = rest.split_whitespace();
    let value = parse_value(parts.next()?)?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((SeriesKey::new(name, labels), value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_prometheus_client_and_etcd_write() {
        let text = r#"# HELP rampart_web_requests HTTP requests answered.
# TYPE rampart_web_requests counter
rampart_web_requests_total{kind="App",class="2xx"} 17
rampart_web_request_duration_seconds_bucket{kind="App",le="+Inf"} 3
etcd_server_has_leader 1
weird{a="x\"y\\z\nw", b="2"} NaN 1712345678000
broken{a="x" 1
no_value
"#;
        let p = parse(text);
        assert_eq!(p.bad_lines, 2);
        assert_eq!(p.samples.len(), 4);
        assert_eq!(
            p.samples[0].0.to_string(),
            "rampart_web_requests_total{class=\"2xx\",kind=\"App\"}"
        );
        assert_eq!(p.samples[0].1, 17.0);
        assert_eq!(p.samples[1].0.label("le"), Some("+Inf"));
        assert_eq!(
            p.samples[2],
            (SeriesKey::new("etcd_server_has_leader", Labels::new()), 1.0)
        );
        assert_eq!(p.samples[3].0.label("a"), Some("x\"y\\z\nw"));
        assert!(p.samples[3].1.is_nan());
    }

    proptest! {
        #[test]
        fn never_panics_on_any_input(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn what_is_written_is_read_back(
            name in "[a-z_][a-z0-9_]{0,10}",
            ls in proptest::collection::btree_map("[a-z][a-z0-9_]{0,5}", "[ -~]{0,8}", 0..4),
            v in -1e12f64..1e12,
        ) {
            let key = SeriesKey::new(name, ls.into_iter().collect());
            let line = format!("{key} {v}\n");
            let p = parse(&line);
            prop_assert_eq!(p.samples, vec![(key, v)]);
        }
    }
}
