//! Alerting for `rampart monitor`, as pure code: no I/O, no clock, no threads; every
//! time is a millisecond timestamp passed in by the caller.
//!
//! - [`store`]: a bounded ring of samples per series (name + labels).
//! - [`selector`]: `name{label="v",other!="w"}`, the way rules and queries pick series.
//! - [`rule`]: what a rule computes: a reduction of each series over a window (last,
//!   per-second rate, avg, max, min), optionally divided by another selection (ratios),
//!   aggregated by labels, compared with a threshold.
//! - [`engine`]: the alert state machine per rule and label group, with `for`
//!   durations: inactive → pending → firing → resolved, and the events to notify.
//! - [`promql`]: each rule as the PromQL expression, `for` and summary template a
//!   Prometheus server evaluates to the same alerts (`rampart monitor export prometheus`).

pub mod engine;
pub mod promql;
pub mod rule;
pub mod selector;
pub mod store;

pub use engine::{Alert, AlertState, Engine, Event};
pub use rule::{Aggregate, Cmp, Reduce, Rule, Severity};
pub use selector::{Matcher, Selector};
pub use store::{Labels, SeriesKey, Store};
