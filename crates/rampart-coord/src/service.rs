//! Service registration: a record under a lease, kept alive in the background.
//!
//! Key layout: `/rampart/<cluster>/services/<pool>/<server-name>`, value JSON
//! `{"name": "...", "address": "127.0.0.1:8081", "weight": 100}`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::{Backoff, Coord, CoordError, KeyValue, LeaseId};

/// One registered server of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub address: String,
    pub weight: u32,
}

impl ServiceRecord {
    /// Decode a record read from etcd (e.g. from a watch on [`services_prefix`]).
    pub fn from_kv(kv: &KeyValue) -> Result<ServiceRecord, CoordError> {
        serde_json::from_slice(&kv.value).map_err(|e| CoordError::Decode {
            key: kv.key.clone(),
            detail: e.to_string(),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing three plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `/rampart/<cluster>/services/<pool>/<name>`
pub fn service_key(cluster: &str, pool: &str, name: &str) -> String {
    format!("{}{name}", services_prefix(cluster, pool))
}

/// `/rampart/<cluster>/services/<pool>/` (with the trailing slash, so that pool `web`
/// does not match pool `web2`).
pub fn services_prefix(cluster: &str, pool: &str) -> String {
    format!("/rampart/{cluster}/services/{pool}/")
}

/// A live registration. Dropping it stops the keepalives (the record disappears when the
/// lease expires, within its TTL); [`Registration::deregister`] removes it at once.
pub struct Registration {
    key: String,
    lease: Arc<Mutex<LeaseId>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    coord: Coord,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .finish()
    }
}

impl Registration {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the record is currently attached to (changes after a re-registration).
    pub async fn lease(&self) -> LeaseId {
        *self.lease.lock().await
    }

    /// Stop the keepalives and revoke the lease: the record disappears now.
    pub async fn deregister(mut self) -> Result<(), CoordError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let lease = *self.lease.lock().await;
        self.coord.revoke(lease).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Register `rec` under `services_prefix(cluster, pool)` with a lease of `ttl` and keep it
/// alive every ttl/3 in a background task. When the lease is lost (etcd was unreachable
/// for longer than the TTL, or lost its data), the task registers again under a new lease
/// as soon as etcd answers. Fails only if the first registration fails.
pub async fn register_service(
    coord: &Coord,
    cluster: &str,
    pool: &str,
    rec: &ServiceRecord,
    ttl: Duration,
) -> Result<Registration, CoordError> {
    let key = service_key(cluster, pool, &rec.name);
    let value = rec.to_json();
    let lease = register_once(coord, &key, &value, ttl).await?;
    let lease = Arc::new(Mutex::new(lease));
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(keep(
        coord.clone(),
        key.clone(),
        value,
        ttl,
        lease.clone(),
        stop_rx,
    ));
    tracing::info!(key = %key, ttl_ms = ttl.as_millis() as u64, "service registered");
    Ok(Registration {
        key,
        lease,
        stop: Some(stop_tx),
        task: Some(task),
        coord: coord.clone(),
    })
}

async fn register_once(
    coord: &Coord,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<LeaseId, CoordError> {
    let lease = coord.grant_lease(ttl).await?;
    if let Err(e) = coord.put(key, value, Some(lease)).await {
        let _ = coord.revoke(lease).await;
        return Err(e);
    }
    Ok(lease)
}

async fn keep(
    coord: Coord,
    key: String,
    value: Vec<u8>,
    ttl: Duration,
    lease: Arc<Mutex<LeaseId>>,
    mut stop: oneshot::Receiver<()>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut backoff = Backoff::new(Duration::from_millis(100), period);
    let mut wait = period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return,
        }
        let current = *lease.lock().await;
        match coord.keep_alive_once(current).await {
            Ok(Some(_)) => {
                backoff.reset();
                wait = period;
            }
            Ok(None) => {
                tracing::warn!(key = %key, lease = current, "service lease lost; registering again");
                match register_once(&coord, &key, &value, ttl).await {
                    Ok(new) => {
                        *lease.lock().await = new;
                        tracing::info!(key = %key, lease = new, "service registered again");
                        backoff.reset();
                        wait = period;
                    }
                    Err(e) => {
                        wait = backoff.next_delay();
                        tracing::warn!(key = %key, error = %e, retry_ms = wait.as_millis() as u64, "service re-registration failed");
                    }
                }
            }
            Err(e) => {
                wait = backoff.next_delay();
                tracing::warn!(key = %key, error = %e, retry_ms = wait.as_millis() as u64, "service keepalive failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_json_layout() {
        assert_eq!(
            services_prefix("main", "web"),
            "/rampart/main/services/web/"
        );
        assert_eq!(
            service_key("main", "web", "web1"),
            "/rampart/main/services/web/web1"
        );
        let r = ServiceRecord {
            name: "web1".into(),
            address: "127.0.0.1:8081".into(),
            weight: 100,
        };
        let json: serde_json::Value = serde_json::from_slice(&r.to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"name": "web1", "address": "127.0.0.1:8081", "weight": 100})
        );
        let kv = KeyValue {
            key: service_key("main", "web", "web1"),
            value: r.to_json(),
            create_revision: 1,
            mod_revision: 1,
            lease: 7,
        };
        assert_eq!(ServiceRecord::from_kv(&kv).expect("decode"), r);
        let bad = KeyValue {
            value: b"nope".to_vec(),
            ..kv
        };
        assert!(matches!(
            ServiceRecord::from_kv(&bad),
            Err(CoordError::Decode { .. })
        ));
    }
}
