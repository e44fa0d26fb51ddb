//! A rule as PromQL: the expression a Prometheus server evaluates to find the same alert
//! instances as [`Rule::values`] with [`Rule::cmp`] and [`Rule::threshold`], and the
//! summary as a Prometheus template.
//!
//! The translation follows the rule model term by term:
//!
//! - reduce: `last` is the instant vector itself; `rate` is `rate(sel[w])`; `avg`, `max`,
//!   `min` are `avg_over_time`, `max_over_time`, `min_over_time` over `[w]`;
//! - grouping: `sum|max|min|count by (labels) (...)`;
//! - a rule grouped by nothing whose aggregate is `sum` or `count` has its one group even
//!   without a series (0): `(... or vector(0))`;
//! - a ratio (`over`): a group without numerator series counts 0, a denominator of 0 is
//!   no group: `((num) or (den) * 0) / ((den) != 0)`;
//! - the comparison with the threshold filters the groups (PromQL's comparison without
//!   `bool`).

use std::fmt::Write as _;

use crate::rule::{Aggregate, Reduce, Rule};
use crate::Selector;

impl Rule {
    /// The rule's condition as a PromQL expression (an alerting rule's `expr`).
    pub fn promql(&self) -> String {
        let num = self.side(&self.series);
        let value = match &self.over {
            None => num,
            Some(over) => {
                let den = self.side(over);
                format!("(({num}) or ({den}) * 0) / (({den}) != 0)")
            }
        };
        let value = if self.by.is_empty()
            && self.over.is_none()
            && matches!(self.aggregate, Aggregate::Sum | Aggregate::Count)
        {
            format!("({value} or vector(0))")
        } else {
            value
        };
        let cond = format!("{value} {} {}", self.cmp, number(self.threshold));
        match &self.and {
            None => cond,
            Some(also) => format!("({cond}) and ({})", also.promql()),
        }
    }

    /// `for` as a Prometheus duration.
    pub fn promql_for(&self) -> String {
        duration(self.for_ms)
    }

    /// The summary as a Prometheus template: `{{label}}` is `{{ $labels.label }}`,
    /// `{{value}}` is `{{ $value }}`.
    pub fn promql_summary(&self) -> String {
        let s = if self.summary.is_empty() {
            format!("{} {} {}", self.series, self.cmp, self.threshold)
        } else {
            self.summary.clone()
        };
        go_template(&s)
    }

    /// One selection reduced per series and aggregated per group.
    fn side(&self, sel: &Selector) -> String {
        let w = duration(self.window_ms.max(1));
        let series = match self.reduce {
            Reduce::Last => sel.to_string(),
            Reduce::Rate => format!("rate({sel}[{w}])"),
            Reduce::Avg => format!("avg_over_time({sel}[{w}])"),
            Reduce::Max => format!("max_over_time({sel}[{w}])"),
            Reduce::Min => format!("min_over_time({sel}[{w}])"),
            Reduce::PredictDay => format!("predict_linear({sel}[{w}], 86400)"),
        };
        let by = if self.by.is_empty() {
            String::new()
        } else {
            format!(" by ({})", self.by.join(", "))
        };
        format!("{}{by} ({series})", self.aggregate.as_str())
    }
}

/// A PromQL number literal (`Inf`, `NaN` spelled as PromQL reads them).
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Milliseconds as a Prometheus duration: whole hours, minutes or seconds when exact,
/// else milliseconds (`0s` for zero).
pub fn duration(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// `{{name}}` placeholders as Go template actions on an alert's labels and value; any
/// other `{{` or `}}` is written so the template prints it as it is.
pub fn go_template(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        out.push_str(&escape_close(&rest[..i]));
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) if is_ident(&after[..j]) => {
                let name = &after[..j];
                if name == "value" {
                    out.push_str("{{ $value }}");
                } else {
                    let _ = write!(out, "{{{{ $labels.{name} }}}}");
                }
                rest = &after[j + 2..];
            }
            _ => {
                out.push_str("{{ \"{{\" }}");
                rest = after;
            }
        }
    }
    out.push_str(&escape_close(rest));
    out
}

fn escape_close(s: &str) -> String {
    s.replace("}}", "{{ \"}}\" }}")
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Cmp, Severity};

    #[test]
    fn each_part_of_a_rule_has_its_promql() {
        let mut r = Rule::last("Down", "up{job!=\"etcd\"}".parse().unwrap(), Cmp::Eq, 0.0);
        r.by = vec!["job".into(), "instance".into()];
        assert_eq!(
            r.promql(),
            "max by (job, instance) (up{job!=\"etcd\"}) == 0"
        );
        r.by.clear();
        r.aggregate = Aggregate::Sum;
        r.cmp = Cmp::Lt;
        r.threshold = 1.0;
        assert_eq!(r.promql(), "(sum (up{job!=\"etcd\"}) or vector(0)) < 1");
        r.aggregate = Aggregate::Min;
        assert_eq!(r.promql(), "min (up{job!=\"etcd\"}) < 1");

        let mut r = Rule::last(
            "Ratio",
            "x_total{class=\"5xx\"}".parse().unwrap(),
            Cmp::Gt,
            0.05,
        );
        r.over = Some("x_total".parse().unwrap());
        r.reduce = Reduce::Rate;
        r.window_ms = 60_000;
        r.aggregate = Aggregate::Sum;
        assert_eq!(
            r.promql(),
            "((sum by (instance) (rate(x_total{class=\"5xx\"}[1m]))) or (sum by (instance) (rate(x_total[1m]))) * 0) / ((sum by (instance) (rate(x_total[1m]))) != 0) > 0.05"
        );
        for (reduce, f) in [
            (Reduce::Avg, "avg_over_time"),
            (Reduce::Max, "max_over_time"),
            (Reduce::Min, "min_over_time"),
        ] {
            let mut r = Rule::last("W", Selector::name("g"), Cmp::Ge, 1e6);
            r.reduce = reduce;
            r.window_ms = 1500;
            assert_eq!(
                r.promql(),
                format!("max by (instance) ({f}(g[1500ms])) >= 1000000")
            );
        }
        // A second condition on the same groups: PromQL `and`.
        let mut r = Rule::last("Both", Selector::name("a"), Cmp::Lt, 0.0);
        r.and = Some(Box::new(Rule::last(
            "Both",
            Selector::name("b"),
            Cmp::Gt,
            1.0,
        )));
        assert_eq!(
            r.promql(),
            "(max by (instance) (a) < 0) and (max by (instance) (b) > 1)"
        );
        let mut r = Rule::last("F", Selector::name("g"), Cmp::Ne, 0.0);
        r.for_ms = 90_000;
        r.severity = Severity::Info;
        assert_eq!(r.promql_for(), "90s");
        assert_eq!(r.promql_summary(), "g != 0", "a default summary");
    }

    #[test]
    fn durations_and_numbers() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(4000), "4s");
        assert_eq!(duration(120_000), "2m");
        assert_eq!(duration(7_200_000), "2h");
        assert_eq!(duration(2500), "2500ms");
        assert_eq!(number(16.0 * 1024.0 * 1024.0), "16777216");
        assert_eq!(number(0.05), "0.05");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }

    #[test]
    fn summaries_become_templates_and_stray_braces_stay_text() {
        assert_eq!(
            go_template("{{job}} node {{instance}} is {{value}} behind"),
            "{{ $labels.job }} node {{ $labels.instance }} is {{ $value }} behind"
        );
        assert_eq!(
            go_template("a {{not a label}} b }} c {{"),
            "a {{ \"{{\" }}not a label{{ \"}}\" }} b {{ \"}}\" }} c {{ \"{{\" }}"
        );
        assert_eq!(go_template("plain"), "plain");
    }
}
