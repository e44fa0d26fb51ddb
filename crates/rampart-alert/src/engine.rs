//! The alert state machine: per rule and label group,
//! inactive → pending (condition holds) → firing (held for `for`) → resolved
//! (condition gone), with the events a notifier sends (firing, resolved).
//!
//! A pending alert whose condition stops holding goes back to inactive without an
//! event; a resolved alert is kept visible for `keep_resolved_ms`, and fires again
//! only after its condition held for `for` once more.

use std::collections::BTreeMap;

use crate::rule::{Rule, Severity};
use crate::store::Labels;
use crate::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert instance: a rule and a label group.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: String,
    pub labels: Labels,
    pub state: AlertState,
    pub severity: Severity,
    pub summary: String,
    /// The expression's latest value (while the condition holds).
    pub value: f64,
    /// When the condition started holding (ms).
    pub active_since: u64,
    pub fired_at: Option<u64>,
    pub resolved_at: Option<u64>,
}

/// What to notify.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Firing(Alert),
    Resolved(Alert),
}

impl Event {
    pub fn alert(&self) -> &Alert {
        match self {
            Event::Firing(a) | Event::Resolved(a) => a,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<Rule>,
    alerts: BTreeMap<(usize, Labels), Alert>,
    /// A series without a sample for this long is absent (ms).
    pub stale_ms: u64,
    /// How long a resolved alert stays listed (ms).
    pub keep_resolved_ms: u64,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, stale_ms: u64, keep_resolved_ms: u64) -> Engine {
        Engine {
            rules,
            alerts: BTreeMap::new(),
            stale_ms,
            keep_resolved_ms,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Replace the rules (a reload). As Prometheus's reload does, an alert keeps its state
    /// (pending since, firing) when a rule of its name is still there, even edited: the
    /// next evaluation applies the new condition and `for`; the alerts of a rule no longer
    /// there are dropped without a notification. Returns how many of the new rules had a
    /// rule of their name before.
    pub fn set_rules(&mut self, rules: Vec<Rule>) -> usize {
        let old = std::mem::take(&mut self.alerts);
        for ((i, labels), mut a) in old {
            let Some(name) = self.rules.get(i).map(|r| r.name.as_str()) else {
                continue;
            };
            if let Some(j) = rules.iter().position(|r| r.name == name) {
                a.severity = rules[j].severity;
                self.alerts.insert((j, labels), a);
            }
        }
        let kept = rules
            .iter()
            .filter(|r| self.rules.iter().any(|o| o.name == r.name))
            .count();
        self.rules = rules;
        kept
    }

    /// Evaluate every rule at `now` (ms); returns the notifications due.
    pub fn evaluate(&mut self, store: &Store, now: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for (ri, rule) in self.rules.iter().enumerate() {
            let holding: BTreeMap<Labels, f64> = rule.holding(store, now, self.stale_ms);
            for (labels, value) in &holding {
                let key = (ri, labels.clone());
                let a = self.alerts.entry(key).or_insert_with(|| Alert {
                    rule: rule.name.clone(),
                    labels: labels.clone(),
                    state: AlertState::Inactive,
                    severity: rule.severity,
                    summary: String::new(),
                    value: *value,
                    active_since: now,
                    fired_at: None,
                    resolved_at: None,
                });
                if matches!(a.state, AlertState::Inactive | AlertState::Resolved) {
                    a.state = AlertState::Pending;
                    a.active_since = now;
                    a.fired_at = None;
                    a.resolved_at = None;
                }
                a.value = *value;
                a.summary = rule.render_summary(labels, *value);
                if a.state == AlertState::Pending
                    && now.saturating_sub(a.active_since) >= rule.for_ms
                {
                    a.state = AlertState::Firing;
                    a.fired_at = Some(now);
                    events.push(Event::Firing(a.clone()));
                }
            }
            let keep = self.keep_resolved_ms;
            self.alerts.retain(|(i, labels), a| {
                if *i != ri || holding.contains_key(labels) {
                    return true;
                }
                match a.state {
                    AlertState::Firing => {
                        a.state = AlertState::Resolved;
                        a.resolved_at = Some(now);
                        events.push(Event::Resolved(a.clone()));
                        true
                    }
                    AlertState::Resolved => {
                        a.resolved_at.is_some_and(|t| now.saturating_sub(t) < keep)
                    }
                    AlertState::Pending | AlertState::Inactive => false,
                }
            });
        }
        events
    }

    /// Every listed alert (pending, firing, recently resolved), by rule then labels.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// The state of one rule's alert for a label group.
    pub fn state(&self, rule: &str, labels: &Labels) -> AlertState {
        self.alerts
            .values()
            .find(|a| a.rule == rule && &a.labels == labels)
            .map(|a| a.state)
            .unwrap_or(AlertState::Inactive)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rule::Cmp;
    use crate::store::labels;
    use crate::{Selector, SeriesKey};
    use proptest::prelude::*;

    fn down_rule(for_ms: u64) -> Rule {
        let mut r = Rule::last("NodeDown", Selector::name("up"), Cmp::Eq, 0.0);
        r.for_ms = for_ms;
        r.summary = "{{instance}} is down".into();
        r
    }

    #[test]
    fn pending_then_firing_then_resolved_then_forgotten() {
        let mut st = Store::new(100, 100);
        let mut e = Engine::new(vec![down_rule(2000)], 5000, 10_000);
        let k = SeriesKey::new("up", labels([("instance", "web1")]));
        let g = labels([("instance", "web1")]);
        st.push(&k, 0, 1.0);
        assert!(e.evaluate(&st, 0).is_empty());
        assert_eq!(e.state("NodeDown", &g), AlertState::Inactive);
        st.push(&k, 1000, 0.0);
        assert!(e.evaluate(&st, 1000).is_empty());
        assert_eq!(e.state("NodeDown", &g), AlertState::Pending);
        st.push(&k, 2000, 0.0);
        assert!(e.evaluate(&st, 2000).is_empty());
        st.push(&k, 3000, 0.0);
        let ev = e.evaluate(&st, 3000);
        assert_eq!(ev.len(), 1);
        let Event::Firing(a) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (a.summary.as_str(), a.active_since, a.fired_at),
            ("web1 is down", 1000, Some(3000))
        );
        assert!(e.evaluate(&st, 3500).is_empty(), "fires once");
        st.push(&k, 4000, 1.0);
        let ev = e.evaluate(&st, 4000);
        assert!(matches!(&ev[..], [Event::Resolved(a)] if a.resolved_at == Some(4000)));
        assert_eq!(e.state("NodeDown", &g), AlertState::Resolved);
        st.push(&k, 14_000, 1.0);
        assert!(e.evaluate(&st, 14_000).is_empty());
        assert_eq!(e.alerts().count(), 0);
    }

    #[test]
    fn a_short_blip_stays_pending_and_leaves_no_trace() {
        let mut st = Store::new(100, 100);
        let mut e = Engine::new(vec![down_rule(2000)], 5000, 10_000);
        let k = SeriesKey::new("up", labels([("instance", "db1")]));
        st.push(&k, 0, 0.0);
        e.evaluate(&st, 0);
        st.push(&k, 1000, 1.0);
        assert!(e.evaluate(&st, 1000).is_empty());
        assert_eq!(e.alerts().count(), 0);
    }

    #[test]
    fn a_reload_keeps_the_state_of_rules_that_stay_and_drops_the_others() {
        let mut st = Store::new(100, 100);
        let mut other = Rule::last("Hot", Selector::name("temp"), Cmp::Gt, 50.0);
        other.for_ms = 0;
        let mut e = Engine::new(vec![down_rule(5000), other], 5000, 10_000);
        let k = SeriesKey::new("up", labels([("instance", "web1")]));
        let g = labels([("instance", "web1")]);
        let hot = SeriesKey::new("temp", labels([("instance", "web1")]));
        st.push(&k, 1000, 0.0);
        st.push(&hot, 1000, 90.0);
        e.evaluate(&st, 1000);
        assert_eq!(e.state("NodeDown", &g), AlertState::Pending);
        assert_eq!(e.state("Hot", &g), AlertState::Firing);
        // NodeDown edited (shorter `for`), Hot removed, a new rule added; order changed.
        let mut added = Rule::last("Cold", Selector::name("temp"), Cmp::Lt, 0.0);
        added.for_ms = 0;
        assert_eq!(e.set_rules(vec![added, down_rule(2000)]), 1);
        assert_eq!(e.state("NodeDown", &g), AlertState::Pending, "state kept");
        assert_eq!(e.state("Hot", &g), AlertState::Inactive, "dropped");
        assert_eq!(e.alerts().count(), 1);
        st.push(&k, 3000, 0.0);
        st.push(&hot, 3000, 90.0);
        let ev = e.evaluate(&st, 3000);
        // Pending since 1000, `for` now 2 s: fires at 3000 under the new rule.
        assert!(
            matches!(&ev[..], [Event::Firing(a)] if a.rule == "NodeDown" && a.active_since == 1000),
            "{ev:?}"
        );
        assert_eq!(e.rules().len(), 2);
    }

    proptest! {
        /// Against a model: an alert fires exactly when its condition has held without a
        /// break for `for`, once per run, and resolves at the first evaluation without it.
        #[test]
        fn fires_only_after_for_and_resolves_when_the_condition_ends(
            for_ms in 0u64..5000,
            steps in proptest::collection::vec((1u64..2000, any::<bool>()), 1..80),
        ) {
            let mut st = Store::new(1000, 10);
            let mut e = Engine::new(vec![down_rule(for_ms)], u64::MAX / 4, 0);
            let k = SeriesKey::new("up", labels([("instance", "x")]));
            let (mut t, mut run_start, mut firing) = (0u64, None::<u64>, false);
            for (dt, down) in steps {
                t += dt;
                st.push(&k, t, if down { 0.0 } else { 1.0 });
                let ev = e.evaluate(&st, t);
                let mut expect = Vec::new();
                if down {
                    let s = *run_start.get_or_insert(t);
                    if !firing && t - s >= for_ms {
                        firing = true;
                        expect.push("firing");
                    }
                } else {
                    run_start = None;
                    if firing {
                        firing = false;
                        expect.push("resolved");
                    }
                }
                let got: Vec<&str> = ev.iter().map(|e| match e { Event::Firing(_) => "firing", Event::Resolved(_) => "resolved" }).collect();
                prop_assert_eq!(got, expect, "at t={}", t);
                if let Some(Event::Firing(a)) = ev.first() {
                    prop_assert!(a.fired_at.unwrap() - a.active_since >= for_ms);
                }
            }
        }
    }
}
