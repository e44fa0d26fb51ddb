//! What an alert rule computes.
//!
//! For every series the [`Rule::series`] selector picks (and whose last sample is fresh),
//! reduce its samples in the window to one number ([`Reduce`]); group the results by the
//! labels in [`Rule::by`] and combine each group with [`Aggregate`]. With [`Rule::over`],
//! the same is done for a second selector and each group's value is divided by it (a
//! ratio, e.g. 5xx rate over the request rate). Each group whose value compares true
//! with the threshold is an alert instance.
//!
//! A rule grouped by nothing (`by = []`) always has its one group, even when no series
//! match: `sum` and `count` of nothing are 0, so "no primary" can fire when every
//! database is down.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use crate::store::{Labels, Sample};
use crate::{Selector, Store};

/// How one series' samples in the window become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// The latest sample.
    Last,
    /// Per-second increase of a counter over the window (resets handled; never negative).
    Rate,
    Avg,
    Max,
    Min,
    /// The value a day from now, on the least-squares line through the window's samples
    /// (Prometheus' `predict_linear(x[window], 86400)`): "full within a day" is this
    /// below zero for the space left.
    PredictDay,
}

/// The horizon of [`Reduce::PredictDay`] (ms).
pub const DAY_MS: u64 = 86_400_000;

/// How the series of one group combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Max,
    Min,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

macro_rules! str_enum {
    ($t:ty, $what:literal, $($v:ident => $s:literal),+) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " \"{}\"; expected one of: {}"),
                        other,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

str_enum!(Reduce, "reduce", Last => "last", Rate => "rate", Avg => "avg", Max => "max", Min => "min", PredictDay => "predict-day");
str_enum!(Aggregate, "aggregate", Sum => "sum", Max => "max", Min => "min", Count => "count");
str_enum!(Cmp, "comparison", Gt => ">", Ge => ">=", Lt => "<", Le => "<=", Eq => "==", Ne => "!=");
str_enum!(Severity, "severity", Info => "info", Warning => "warning", Critical => "critical");

impl Cmp {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub series: Selector,
    /// Divide by this selection (same reduce, grouping and aggregate): a ratio.
    pub over: Option<Selector>,
    pub reduce: Reduce,
    /// Window of `rate`, `avg`, `max`, `min` (ms).
    pub window_ms: u64,
    /// Labels that make one alert instance (e.g. `["instance"]`: one per target).
    pub by: Vec<String>,
    pub aggregate: Aggregate,
    pub cmp: Cmp,
    pub threshold: f64,
    /// How long the condition must hold before the alert fires (ms).
    pub for_ms: u64,
    pub severity: Severity,
    /// Text of the notification; `{{label}}` and `{{value}}` are replaced.
    pub summary: String,
    /// Only where this condition holds too, for the same group (PromQL `and`): e.g. a disk
    /// predicted to fill within a day that is also under 40% free. Its own `for_ms`,
    /// `severity` and `summary` are not used.
    pub and: Option<Box<Rule>>,
}

impl Rule {
    /// A rule on the latest value of each series, one instance per `instance` label.
    pub fn last(name: &str, series: Selector, cmp: Cmp, threshold: f64) -> Rule {
        Rule {
            name: name.to_string(),
            series,
            over: None,
            reduce: Reduce::Last,
            window_ms: 0,
            by: vec!["instance".into()],
            aggregate: Aggregate::Max,
            cmp,
            threshold,
            for_ms: 0,
            severity: Severity::Warning,
            summary: String::new(),
            and: None,
        }
    }

    /// The groups where the condition holds now, with the expression's value (`and`
    /// applied).
    pub fn holding(&self, store: &Store, now: u64, stale_ms: u64) -> BTreeMap<Labels, f64> {
        let mut holding: BTreeMap<Labels, f64> = self
            .values(store, now, stale_ms)
            .into_iter()
            .filter(|(_, v)| self.cmp.holds(*v, self.threshold))
            .collect();
        if let Some(also) = &self.and {
            let also = also.holding(store, now, stale_ms);
            holding.retain(|g, _| also.contains_key(g));
        }
        holding
    }

    /// The expression's value now, per group (the group's labels: those named in `by`).
    pub fn values(&self, store: &Store, now: u64, stale_ms: u64) -> Vec<(Labels, f64)> {
        let num = self.grouped(store, &self.series, now, stale_ms);
        match &self.over {
            None => num.into_iter().collect(),
            Some(over) => {
                let den = self.grouped(store, over, now, stale_ms);
                den.into_iter()
                    .filter(|(_, d)| *d != 0.0 && d.is_finite())
                    .map(|(g, d)| {
                        let n = num.get(&g).copied().unwrap_or(0.0);
                        (g, n / d)
                    })
                    .collect()
            }
        }
    }

    fn grouped(
        &self,
        store: &Store,
        sel: &Selector,
        now: u64,
        stale_ms: u64,
    ) -> BTreeMap<Labels, f64> {
        let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
        if self.by.is_empty() {
            groups.insert(Labels::new(), Vec::new());
        }
        for (k, samples) in store.select(sel) {
            let Some(v) = reduce(samples, self.reduce, now, self.window_ms, stale_ms) else {
                continue;
            };
            let g: Labels = self
                .by
                .iter()
                .filter_map(|l| k.labels.get(l).map(|v| (l.clone(), v.clone())))
                .collect();
            groups.entry(g).or_default().push(v);
        }
        groups
            .into_iter()
            .filter_map(|(g, vs)| aggregate(&vs, self.aggregate).map(|v| (g, v)))
            .collect()
    }

    /// The summary with `{{label}}` and `{{value}}` filled in.
    pub fn render_summary(&self, labels: &Labels, value: f64) -> String {
        let mut s = if self.summary.is_empty() {
            format!("{} {} {}", self.series, self.cmp, self.threshold)
        } else {
            self.summary.clone()
        };
        for (k, v) in labels {
            s = s.replace(&format!("{{{{{k}}}}}"), v);
        }
        let shown = if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        s.replace("{{value}}", &shown)
    }
}

/// One series' samples reduced to a number, or `None` when the series is stale (no
/// sample since `now - stale_ms`) or the window has too few samples.
pub fn reduce(
    samples: &VecDeque<Sample>,
    how: Reduce,
    now: u64,
    window_ms: u64,
    stale_ms: u64,
) -> Option<f64> {
    let &(last_t, last_v) = samples.back()?;
    if last_t.saturating_add(stale_ms) < now {
        return None;
    }
    if how == Reduce::Last {
        return Some(last_v);
    }
    let from = now.saturating_sub(window_ms);
    let w = samples.iter().filter(|(t, _)| *t >= from && *t <= now);
    match how {
        Reduce::Last => Some(last_v),
        Reduce::Rate => {
            let pts: Vec<&Sample> = w.collect();
            let (first, last) = (pts.first()?, pts.last()?);
            let dt = last.0.checked_sub(first.0).filter(|d| *d > 0)?;
            Some(increase(pts.iter().map(|s| s.1)) / (dt as f64 / 1000.0))
        }
        Reduce::Avg => {
            let (n, sum) = w.fold((0u32, 0.0), |(n, s), x| (n + 1, s + x.1));
            (n > 0).then(|| sum / f64::from(n))
        }
        Reduce::Max => w.map(|x| x.1).reduce(f64::max),
        Reduce::Min => w.map(|x| x.1).reduce(f64::min),
        Reduce::PredictDay => predict(w, now.saturating_add(DAY_MS)),
    }
}

/// The least-squares line through `samples` (time in ms, value), read at `at`; `None`
/// with fewer than two distinct times.
fn predict<'a>(samples: impl Iterator<Item = &'a Sample> + Clone, at: u64) -> Option<f64> {
    let (n, st, sv) = samples
        .clone()
        .fold((0u32, 0.0, 0.0), |(n, st, sv), &(t, v)| {
            (n + 1, st + t as f64, sv + v)
        });
    if n < 2 {
        return None;
    }
    let (mt, mv) = (st / f64::from(n), sv / f64::from(n));
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(t, v) in samples {
        let dt = t as f64 - mt;
        sxy += dt * (v - mv);
        sxx += dt * dt;
    }
    if sxx == 0.0 {
        return None;
    }
    Some(mv + sxy / sxx * (at as f64 - mt))
}

/// The increase of a counter over a run of samples; a drop is a reset (the counter
/// restarted from zero), so the new value counts in full.
pub fn increase(values: impl Iterator<Item = f64>) -> f64 {
    let mut total = 0.0;
    let mut prev: Option<f64> = None;
    for v in values {
        if let Some(p) = prev {
            total += if v >= p { v - p } else { v };
        }
        prev = Some(v);
    }
    total
}

fn aggregate(vs: &[f64], how: Aggregate) -> Option<f64> {
    match how {
        Aggregate::Sum => Some(vs.iter().sum()),
        Aggregate::Count => Some(vs.len() as f64),
        Aggregate::Max => vs.iter().copied().reduce(f64::max),
        Aggregate::Min => vs.iter().copied().reduce(f64::min),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::labels;
    use crate::SeriesKey;
    use proptest::prelude::*;

    #[test]
    fn rate_handles_resets_and_staleness() {
        let s: VecDeque<Sample> = [(0, 10.0), (1000, 20.0), (2000, 5.0), (3000, 15.0)].into();
        // 10 + 5 (reset) + 10 over 3 s.
        assert_eq!(
            reduce(&s, Reduce::Rate, 3000, 10_000, 1000),
            Some(25.0 / 3.0)
        );
        assert_eq!(reduce(&s, Reduce::Rate, 3000, 1000, 1000), Some(10.0));
        assert_eq!(reduce(&s, Reduce::Last, 3000, 0, 0), Some(15.0));
        assert_eq!(reduce(&s, Reduce::Last, 5000, 0, 1000), None, "stale");
        assert_eq!(reduce(&s, Reduce::Max, 3000, 1500, 1000), Some(15.0));
        assert_eq!(reduce(&s, Reduce::Avg, 3000, 10_000, 1000), Some(12.5));
        // A line falling 1 per second: a day on, 86,400 lower; one sample is no line.
        let line: VecDeque<Sample> = (0..10).map(|i| (i * 1000, 100.0 - i as f64)).collect();
        let p = reduce(&line, Reduce::PredictDay, 9000, 60_000, 1000).unwrap_or(0.0);
        assert!((p - (91.0 - 86_400.0)).abs() < 1e-6, "{p}");
        let one: VecDeque<Sample> = [(9000, 5.0)].into_iter().collect();
        assert_eq!(reduce(&one, Reduce::PredictDay, 9000, 60_000, 1000), None);
    }

    #[test]
    fn sum_by_nothing_is_zero_when_nothing_matches_and_ratios_skip_zero_denominators() {
        let mut st = Store::new(10, 100);
        let mut r = Rule::last("NoPrimary", Selector::name("leader"), Cmp::Lt, 1.0);
        r.by = vec![];
        r.aggregate = Aggregate::Sum;
        assert_eq!(r.values(&st, 0, 1000), vec![(Labels::new(), 0.0)]);
        for (i, v) in [("a", 0.0), ("b", 1.0)] {
            st.push(&SeriesKey::new("leader", labels([("instance", i)])), 100, v);
        }
        assert_eq!(r.values(&st, 100, 1000), vec![(Labels::new(), 1.0)]);

        let mut ratio = Rule::last(
            "5xx",
            Selector::name("req").with("class", "5xx"),
            Cmp::Gt,
            0.1,
        );
        ratio.over = Some(Selector::name("req"));
        ratio.reduce = Reduce::Rate;
        ratio.window_ms = 10_000;
        ratio.aggregate = Aggregate::Sum;
        for (inst, t, ok, bad) in [
            ("x", 0, 0.0, 0.0),
            ("x", 1000, 90.0, 10.0),
            ("y", 0, 5.0, 0.0),
            ("y", 1000, 5.0, 0.0),
        ] {
            st.push(
                &SeriesKey::new("req", labels([("instance", inst), ("class", "2xx")])),
                t,
                ok,
            );
            st.push(
                &SeriesKey::new("req", labels([("instance", inst), ("class", "5xx")])),
                t,
                bad,
            );
        }
        let v = ratio.values(&st, 1000, 1000);
        assert_eq!(
            v,
            vec![(labels([("instance", "x")]), 0.1)],
            "y has no traffic"
        );
        assert_eq!(
            ratio.render_summary(&v[0].0, v[0].1),
            "req{class=\"5xx\"} > 0.1"
        );
        ratio.summary = "{{instance}} at {{value}}".into();
        assert_eq!(ratio.render_summary(&v[0].0, v[0].1), "x at 0.100");
    }

    proptest! {
        #[test]
        fn the_rate_of_a_counter_is_never_negative_and_matches_its_increments(
            steps in proptest::collection::vec((1u64..5000, 0.0f64..1000.0, any::<bool>()), 2..50),
        ) {
            let mut s = VecDeque::new();
            let (mut t, mut v, mut total_inc) = (0u64, 0.0f64, 0.0f64);
            s.push_back((t, v));
            for (dt, inc, reset) in steps {
                t += dt;
                // A reset shows as a drop; a "reset" to a higher value is just growth.
                if reset && inc < v { v = inc; } else { v += inc; }
                total_inc += inc;
                s.push_back((t, v));
            }
            let r = reduce(&s, Reduce::Rate, t, t, 0).unwrap();
            prop_assert!(r >= 0.0);
            let expect = total_inc / (t as f64 / 1000.0);
            prop_assert!((r - expect).abs() <= 1e-6 * expect.max(1.0), "{} vs {}", r, expect);
        }
    }
}
