//! Alerts to a Prometheus Alertmanager through its v2 API (`POST /api/v2/alerts`), the
//! way Prometheus sends them: after each round, every firing alert not sent for `resend`
//! and every resolved alert not yet sent as resolved go out in one POST; a firing alert's
//! `endsAt` is 4 x `resend` ahead (Alertmanager resolves it by itself if the monitor dies),
//! a resolved alert's `endsAt` is when it resolved (and it is sent again every `resend`
//! while the engine keeps it, as Prometheus does). A failed POST is retried with backoff;
//! what it carried stays due for the next round.
//!
//! [`due`], [`body`] and [`Sent`] are pure; [`spawn`] runs one route's sender.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rampart_alert::{Alert, AlertState, Labels};
use rampart_topology::monitor::AlertRoute;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::{client, rfc3339, Monitor};

/// What the last successful POSTs sent, per alert (rule and labels).
#[derive(Debug, Default, Clone)]
pub struct Sent {
    by_alert: HashMap<(String, Labels), SentAt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentAt {
    at_ms: u64,
    resolved: bool,
}

impl Sent {
    /// Remember that these alerts were delivered at `now`.
    pub fn mark(&mut self, alerts: &[Alert], now: u64) {
        for a in alerts {
            self.by_alert.insert(
                (a.rule.clone(), a.labels.clone()),
                SentAt {
                    at_ms: now,
                    resolved: a.state == AlertState::Resolved,
                },
            );
        }
    }

    /// Forget alerts the engine no longer has.
    pub fn retain_only(&mut self, alerts: &[Alert]) {
        self.by_alert.retain(|(rule, labels), _| {
            alerts
                .iter()
                .any(|a| &a.rule == rule && &a.labels == labels)
        });
    }
}

/// The alerts to send now, of those the engine has (pending ones never go out).
pub fn due(sent: &Sent, alerts: &[Alert], now: u64, resend_ms: u64) -> Vec<Alert> {
    alerts
        .iter()
        .filter(|a| {
            let last = sent.by_alert.get(&(a.rule.clone(), a.labels.clone()));
            match a.state {
                AlertState::Firing => {
                    // Sent firing within `resend`: not yet (a resolved mark means it fired again).
                    !last.is_some_and(|s| !s.resolved && s.at_ms.saturating_add(resend_ms) > now)
                }
                AlertState::Resolved => {
                    !last.is_some_and(|s| s.resolved && s.at_ms.saturating_add(resend_ms) > now)
                }
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// The v2 API's body: a list of postable alerts. Labels are the alert's group labels
/// plus `alertname`, `severity` and `cluster`; the summary is an annotation.
pub fn body(
    alerts: &[Alert],
    cluster: &str,
    generator_url: &str,
    now: u64,
    resend_ms: u64,
) -> Value {
    let list: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let mut labels = a.labels.clone();
            labels.insert("alertname".into(), a.rule.clone());
            labels.insert("severity".into(), a.severity.to_string());
            labels.insert("cluster".into(), cluster.to_string());
            let ends = match (a.state, a.resolved_at) {
                (AlertState::Resolved, Some(t)) => t,
                _ => now.saturating_add(resend_ms.saturating_mul(4)),
            };
            json!({
                "labels": labels,
                "annotations": { "summary": a.summary },
                "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_since)),
                "endsAt": rfc3339(ends),
                "generatorURL": generator_url,
            })
        })
        .collect();
    Value::Array(list)
}

/// The alerts a route's sender looks at after a round: firing and resolved ones, and
/// the time of the round.
pub type Snapshot = (u64, Vec<Alert>);

/// Start the sender of one `kind = "alertmanager"` route; feed it a [`Snapshot`] after
/// each round.
pub fn spawn(
    m: Arc<Monitor>,
    route: AlertRoute,
    url: String,
    resend: Duration,
) -> watch::Sender<Snapshot> {
    let (tx, mut rx) = watch::channel::<Snapshot>((0, Vec::new()));
    let resend_ms = u64::try_from(resend.as_millis()).unwrap_or(u64::MAX);
    let endpoint = format!("{url}/api/v2/alerts");
    let generator = format!("http://{}/", m.cfg.listen);
    tokio::spawn(async move {
        let mut sent = Sent::default();
        while rx.changed().await.is_ok() {
            let (now, alerts) = rx.borrow_and_update().clone();
            sent.retain_only(&alerts);
            let batch = due(&sent, &alerts, now, resend_ms);
            if batch.is_empty() {
                continue;
            }
            let b = body(&batch, &m.cluster, &generator, now, resend_ms);
            let r = post_with_backoff(&endpoint, &b).await;
            match &r {
                Ok(()) => sent.mark(&batch, now),
                Err(e) => {
                    tracing::warn!(route = %route.name, alerts = batch.len(), error = %e, "alertmanager: alerts not delivered (sent again after the next round)")
                }
            }
            for a in &batch {
                let status = if a.state == AlertState::Resolved {
                    "resolved"
                } else {
                    "firing"
                };
                m.record(&route, a, status, r.clone());
            }
        }
    });
    tx
}

/// Tries with 0.5 s, 1 s, 2 s, 4 s between them; each bounded by 5 s.
async fn post_with_backoff(url: &str, body: &Value) -> Result<(), String> {
    let (hostport, path) = client::split_url(url)?;
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut last = String::new();
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        match client::request(
            &hostport,
            "POST",
            &path,
            Some("application/json"),
            None,
            bytes.clone(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(r) if (200..300).contains(&r.status) => return Ok(()),
            Ok(r) => {
                last = format!(
                    "{url} answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                );
                // A 4xx is our request's fault: sending it again changes nothing.
                if (400..500).contains(&r.status) {
                    break;
                }
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_alert::store::labels;
    use rampart_alert::Severity;

    fn alert(state: AlertState, resolved_at: Option<u64>) -> Alert {
        Alert {
            rule: "NodeDown".into(),
            labels: labels([("instance", "web1"), ("job", "web")]),
            state,
            severity: Severity::Critical,
            summary: "web node web1 does not answer".into(),
            value: 0.0,
            active_since: 1000,
            fired_at: Some(3000),
            resolved_at,
        }
    }

    #[test]
    fn firing_alerts_go_out_once_per_resend_and_resolved_ones_once_resolved() {
        let mut sent = Sent::default();
        let firing = vec![alert(AlertState::Firing, None)];
        let pending = vec![alert(AlertState::Pending, None)];
        assert!(due(&sent, &pending, 3000, 60_000).is_empty());
        assert_eq!(due(&sent, &firing, 3000, 60_000).len(), 1, "new");
        sent.mark(&firing, 3000);
        assert!(due(&sent, &firing, 4000, 60_000).is_empty(), "just sent");
        assert_eq!(due(&sent, &firing, 63_000, 60_000).len(), 1, "resend");
        // Not delivered: still due at the next round.
        assert_eq!(due(&sent, &firing, 64_000, 60_000).len(), 1);
        sent.mark(&firing, 64_000);
        let resolved = vec![alert(AlertState::Resolved, Some(65_000))];
        assert_eq!(
            due(&sent, &resolved, 65_000, 60_000).len(),
            1,
            "resolved at once"
        );
        sent.mark(&resolved, 65_000);
        assert!(due(&sent, &resolved, 66_000, 60_000).is_empty());
        assert_eq!(due(&sent, &resolved, 125_000, 60_000).len(), 1, "resent");
        // It fires again: sent at once although a resolved notice went out recently.
        assert_eq!(due(&sent, &firing, 126_000, 60_000).len(), 1);
        sent.retain_only(&[]);
        assert!(sent.by_alert.is_empty());
    }

    #[test]
    fn the_body_is_what_alertmanager_v2_takes() {
        let b = body(
            &[
                alert(AlertState::Firing, None),
                alert(AlertState::Resolved, Some(9000)),
            ],
            "main",
            "http://127.0.0.1:8090/",
            5000,
            60_000,
        );
        let a = &b[0];
        assert_eq!(a["labels"]["alertname"], "NodeDown");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["cluster"], "main");
        assert_eq!(a["labels"]["instance"], "web1");
        assert_eq!(a["annotations"]["summary"], "web node web1 does not answer");
        assert_eq!(a["startsAt"], "1970-01-01T00:00:03.000Z");
        assert_eq!(a["endsAt"], "1970-01-01T00:04:05.000Z", "now + 4 x resend");
        assert_eq!(a["generatorURL"], "http://127.0.0.1:8090/");
        assert_eq!(
            b[1]["endsAt"], "1970-01-01T00:00:09.000Z",
            "when it resolved"
        );
    }
}
