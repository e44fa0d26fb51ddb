//! Series selectors: `name`, `name{label="value"}`, `name{a="x",b!="y"}`.

use std::fmt;
use std::str::FromStr;

use crate::SeriesKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `true` for `=`, `false` for `!=`. A missing label counts as the empty string.
    pub equal: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub name: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    pub fn name(name: impl Into<String>) -> Selector {
        Selector {
            name: name.into(),
            matchers: Vec::new(),
        }
    }

    pub fn with(mut self, label: &str, value: &str) -> Selector {
        self.matchers.push(Matcher {
            label: label.into(),
            equal: true,
            value: value.into(),
        });
        self
    }

    pub fn matches(&self, k: &SeriesKey) -> bool {
        k.name == self.name
            && self
                .matchers
                .iter()
                .all(|m| (k.label(&m.label).unwrap_or("") == m.value) == m.equal)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.matchers.is_empty() {
            f.write_str("{")?;
            for (i, m) in self.matchers.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(
                    f,
                    "{}{}\"{}\"",
                    m.label,
                    if m.equal { "=" } else { "!=" },
                    m.value.replace('\\', "\\\\").replace('"', "\\\"")
                )?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

fn is_name(s: &str, first_colon_ok: bool) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_' || (first_colon_ok && ch == ':'))
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || (first_colon_ok && ch == ':'))
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Selector, String> {
        let s = s.trim();
        let (name, rest) = match s.find('{') {
            Some(i) => (s[..i].trim(), Some(&s[i + 1..])),
            None => (s, None),
        };
        if !is_name(name, true) {
            return Err(format!(
                "bad series selector \"{s}\": expected a metric name like rampart_web_requests_total, optionally followed by {{label=\"value\",...}}"
            ));
        }
        let mut matchers = Vec::new();
        if let Some(rest) = rest {
            let body = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("bad series selector \"{s}\": missing closing }}"))?;
            let mut b = body.trim();
            while !b.is_empty() {
                let op_at = b.find(['=', '!']).ok_or_else(|| {
                    format!("bad label matcher in \"{s}\": expected label=\"value\"")
                })?;
                let label = b[..op_at].trim();
                if !is_name(label, false) {
                    return Err(format!("bad label name \"{label}\" in \"{s}\""));
                }
                let (equal, after) = if let Some(a) = b[op_at..].strip_prefix("!=") {
                    (false, a)
                } else if let Some(a) = b[op_at..].strip_prefix('=') {
                    (true, a)
                } else {
                    return Err(format!("bad label matcher in \"{s}\": expected = or !="));
                };
                let after = after.trim_start();
                let after = after.strip_prefix('"').ok_or_else(|| {
                    format!("bad label matcher in \"{s}\": the value must be in double quotes")
                })?;
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut end = None;
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => match chars.next() {
                            Some((_, e)) => value.push(e),
                            None => break,
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => value.push(ch),
                    }
                }
                let end =
                    end.ok_or_else(|| format!("bad label matcher in \"{s}\": unterminated value"))?;
                matchers.push(Matcher {
                    label: label.to_string(),
                    equal,
                    value,
                });
                b = after[end + 1..].trim_start();
                if let Some(r) = b.strip_prefix(',') {
                    b = r.trim_start();
                } else if !b.is_empty() {
                    return Err(format!(
                        "bad series selector \"{s}\": expected , between label matchers"
                    ));
                }
            }
        }
        Ok(Selector {
            name: name.to_string(),
            matchers,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::labels;
    use proptest::prelude::*;

    #[test]
    fn parses_and_matches() {
        let s: Selector = r#"rampart_web_requests_total{class="5xx", kind!="Admin"}"#
            .parse()
            .unwrap();
        assert_eq!(s.matchers.len(), 2);
        let k = |class, kind| {
            SeriesKey::new(
                "rampart_web_requests_total",
                labels([("class", class), ("kind", kind)]),
            )
        };
        assert!(s.matches(&k("5xx", "App")));
        assert!(!s.matches(&k("5xx", "Admin")));
        assert!(!s.matches(&k("2xx", "App")));
        let up: Selector = "up".parse().unwrap();
        assert!(up.matches(&SeriesKey::new("up", labels([("job", "x")]))));
        for bad in [
            "",
            "1x",
            "a{b}",
            "a{b=c}",
            "a{b=\"c\"",
            "a{b=\"c\" d=\"e\"}",
            "a{=\"x\"}",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(
            name in "[a-z_][a-z0-9_:]{0,12}",
            ms in proptest::collection::vec(("[a-z_][a-z0-9_]{0,6}", any::<bool>(), ".{0,8}"), 0..4),
        ) {
            let s = Selector {
                name,
                matchers: ms.into_iter().map(|(label, equal, value)| Matcher { label, equal, value }).collect(),
            };
            let back: Selector = s.to_string().parse().unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
