//! Prefix watches that survive disconnections: reconnect with backoff, then resync.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use crate::{Backoff, Coord, CoordError, KeyValue};

/// One change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (`mod_revision` is the revision of the deletion).
    Delete { key: String, mod_revision: i64 },
    /// The full current contents of the prefix: replace the whole view with it. Sent first
    /// when watching from revision 0, and after every interruption of the watch.
    Resync(Vec<KeyValue>),
}

/// Channel depth: a slow consumer makes the watcher wait (etcd buffers meanwhile).
const CHANNEL: usize = 256;

pub(crate) async fn start(
    coord: Coord,
    prefix: String,
    from_revision: i64,
) -> Result<mpsc::Receiver<WatchEvent>, CoordError> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let next_rev = if from_revision <= 0 {
        let (kvs, rev) = coord.get_prefix(&prefix).await?;
        // The receiver is still in our hands: this cannot fail.
        let _ = tx.send(WatchEvent::Resync(kvs)).await;
        rev + 1
    } else {
        from_revision + 1
    };
    let stream = open(&coord, &prefix, next_rev).await?;
    tokio::spawn(run(coord, prefix, next_rev, stream, tx));
    Ok(rx)
}

/// Open a watch stream on the preferred member, else on the next ones, within one deadline.
async fn open(
    coord: &Coord,
    prefix: &str,
    start_revision: i64,
) -> Result<etcd_client::WatchStream, CoordError> {
    let op_timeout = coord.options().op_timeout;
    let deadline = tokio::time::Instant::now() + op_timeout;
    let clients: Vec<_> = coord.clients_in_order().collect();
    let n = clients.len();
    let mut last = CoordError::Timeout {
        op: "watch",
        timeout: op_timeout,
    };
    for (i, (idx, mut c)) in clients.into_iter().enumerate() {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            break;
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision);
        match tokio::time::timeout(remaining / (n - i) as u32, c.watch(prefix, Some(opts))).await {
            Ok(Ok(s)) => {
                coord.set_preferred(idx);
                return Ok(s);
            }
            Ok(Err(e)) => last = CoordError::from_etcd("watch", e),
            Err(_) => {}
        }
    }
    Err(last)
}

/// Why a watch stream ended.
enum Gap {
    /// The consumer went away: stop.
    Closed,
    /// Connection lost, compaction, cancellation: reconnect and resync.
    Lost(String),
}

async fn run(
    coord: Coord,
    prefix: String,
    mut next_rev: i64,
    first: etcd_client::WatchStream,
    tx: mpsc::Sender<WatchEvent>,
) {
    let mut stream = Some(first);
    let op_timeout = coord.options().op_timeout;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        if let Some(s) = stream.take() {
            match pump(s, &mut next_rev, &tx, op_timeout).await {
                Gap::Closed => return,
                Gap::Lost(why) => {
                    tracing::warn!(prefix = %prefix, reason = %why, "etcd watch interrupted; reconnecting");
                }
            }
        }
        // Reconnect: snapshot first, then watch from just after it.
        loop {
            if tx.is_closed() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = tx.closed() => return,
            }
            let snapshot = match coord.get_prefix(&prefix).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(prefix = %prefix, error = %e, "etcd watch resync failed; retrying");
                    continue;
                }
            };
            match open(&coord, &prefix, snapshot.1 + 1).await {
                Ok(s) => {
                    next_rev = snapshot.1 + 1;
                    if tx.send(WatchEvent::Resync(snapshot.0)).await.is_err() {
                        return;
                    }
                    tracing::info!(prefix = %prefix, revision = snapshot.1, "etcd watch resynced");
                    backoff.reset();
                    stream = Some(s);
                    break;
                }
                Err(e) => {
                    tracing::debug!(prefix = %prefix, error = %e, "etcd watch reopen failed; retrying");
                }
            }
        }
    }
}

/// Forward events until the stream breaks. Liveness: a progress request every
/// `op_timeout`; if nothing at all arrives within 3 × op_timeout the connection is
/// presumed dead (a partition does not close TCP).
async fn pump(
    mut s: etcd_client::WatchStream,
    next_rev: &mut i64,
    tx: &mpsc::Sender<WatchEvent>,
    op_timeout: Duration,
) -> Gap {
    let silence_limit = op_timeout * 3;
    let mut last_heard = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(op_timeout);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return Gap::Closed,
            _ = tick.tick() => {
                if last_heard.elapsed() > silence_limit {
                    return Gap::Lost(format!("no answer from etcd for {silence_limit:?}"));
                }
                if let Err(e) = s.request_progress().await {
                    return Gap::Lost(format!("progress request failed: {e}"));
                }
            }
            msg = s.message() => {
                last_heard = tokio::time::Instant::now();
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Gap::Lost("watch stream closed".into()),
                    Err(e) => return Gap::Lost(e.to_string()),
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Gap::Lost(format!(
                        "watch canceled (compact_revision {}, reason {:?})",
                        resp.compact_revision(),
                        resp.cancel_reason()
                    ));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let out = match ev.event_type() {
                        EventType::Put => WatchEvent::Put(KeyValue::from_etcd(kv)),
                        EventType::Delete => WatchEvent::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            mod_revision: kv.mod_revision(),
                        },
                    };
                    *next_rev = kv.mod_revision() + 1;
                    if tx.send(out).await.is_err() {
                        return Gap::Closed;
                    }
                }
            }
        }
    }
}
