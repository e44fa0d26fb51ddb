//! Registration with the balancers through etcd (`rampart_coord::register_service`): the
//! node registers once it is ready and deregisters first thing on shutdown, before the
//! drain wait, so the balancers stop sending before the listener closes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_coord::{register_service, Coord, CoordOptions, ServiceRecord};
use rampart_topology::web::Registration as RegistrationConfig;

use crate::{Lifecycle, Node};

/// Lease TTL of the service key: a node that dies leaves the pool within about this.
pub const SERVICE_TTL: Duration = Duration::from_secs(3);

enum State {
    Idle,
    Starting(tokio::task::JoinHandle<Option<rampart_coord::Registration>>),
    Stopped,
}

/// The etcd registration of one web node.
pub struct EtcdRegistration {
    cfg: RegistrationConfig,
    name: String,
    state: Mutex<State>,
}

impl EtcdRegistration {
    pub fn new(cfg: RegistrationConfig, name: &str) -> Self {
        EtcdRegistration {
            cfg,
            name: name.to_string(),
            state: Mutex::new(State::Idle),
        }
    }
}

async fn register_when_ready(
    cfg: RegistrationConfig,
    rec: ServiceRecord,
    node: Arc<Node>,
) -> Option<rampart_coord::Registration> {
    let mut backoff = Duration::from_millis(100);
    loop {
        if node.is_ready() {
            let opts = CoordOptions::new(cfg.etcd.iter().cloned());
            let r = match Coord::connect(opts).await {
                Ok(c) => register_service(&c, &cfg.cluster, &cfg.pool, &rec, SERVICE_TTL).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(reg) => {
                    tracing::info!(pool = %cfg.pool, name = %rec.name, address = %rec.address, "registered with the balancers");
                    return Some(reg);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "etcd registration failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Lifecycle for EtcdRegistration {
    async fn started(&self, node: &Arc<Node>, addr: SocketAddr) {
        let rec = ServiceRecord {
            name: self.name.clone(),
            address: addr.to_string(),
            weight: self.cfg.weight,
        };
        let task = tokio::spawn(register_when_ready(self.cfg.clone(), rec, node.clone()));
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Starting(task);
    }

    async fn stopping(&self) {
        let state = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Stopped,
        );
        let State::Starting(task) = state else { return };
        if !task.is_finished() {
            // Never registered (not ready yet, or etcd down): nothing to take back.
            task.abort();
            return;
        }
        if let Ok(Some(reg)) = task.await {
            match tokio::time::timeout(Duration::from_secs(3), reg.deregister()).await {
                Ok(Ok(())) => tracing::info!("deregistered from the balancers"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "deregistration failed; the lease expires on its own")
                }
                Err(_) => tracing::warn!("deregistration timed out; the lease expires on its own"),
            }
        }
    }
}
