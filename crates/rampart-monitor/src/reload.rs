//! Prometheus's reload (`kill -HUP`, `POST /-/reload`): the topology file read again and
//! its alert rules applied without a restart. A file that does not load changes nothing
//! (the answer says where and why); alerts of rules that stay keep their state
//! ([`rampart_alert::Engine::set_rules`]). What else changed is named: targets, routes,
//! the listen address and the intervals take effect when the monitor restarts.

use std::sync::Arc;

use rampart_topology::Topology;

use crate::{rules, targets, Monitor};

/// Reads the topology again (the binary's loader: the same file and defaults as at
/// start, errors with file:line:col).
pub type Loader = Arc<dyn Fn() -> Result<Topology, String> + Send + Sync>;

impl Monitor {
    /// Re-read the topology and apply its rules: `Ok` with what was done, `Err` with why
    /// nothing was.
    pub fn reload(&self) -> Result<String, String> {
        let Some(load) = &self.loader else {
            return Err("this monitor was not started from a topology file".into());
        };
        let t = load().map_err(|e| format!("{e}\nthe running rules stay as they were"))?;
        let Some(cfg) = t.monitor.as_ref() else {
            return Err(
                "the topology has no [monitor] section any more; the running rules stay".into(),
            );
        };
        if cfg.name != self.cfg.name {
            return Err(format!(
                "[monitor] name is now \"{}\", this monitor is \"{}\"; the running rules stay",
                cfg.name, self.cfg.name
            ));
        }
        let new = rules::rules(&t, self.cfg.scrape_interval);
        let n = new.len();
        let kept = self.lock().engine.set_rules(new);
        let mut notes = vec![format!(
            "{n} rules applied ({kept} of them existed: their alerts keep their state)"
        )];
        let mut rest = cfg.clone();
        rest.rules = self.cfg.rules.clone();
        if rest != self.cfg {
            notes.push(
                "[monitor] settings besides rules changed: they take effect when the monitor restarts"
                    .into(),
            );
        }
        let same = |a: &targets::Target, b: &targets::Target| {
            (&a.job, &a.instance) == (&b.job, &b.instance)
        };
        let now = targets::targets(&t);
        if now.len() != self.targets.len()
            || !now.iter().all(|x| self.targets.iter().any(|y| same(x, y)))
        {
            notes.push(
                "the nodes to scrape changed: they take effect when the monitor restarts".into(),
            );
        }
        Ok(notes.join("; "))
    }
}
