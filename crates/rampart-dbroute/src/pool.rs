//! A small connection pool per database node.
//!
//! Why not deadpool-postgres: the router needs per-node in-flight counts for balancing,
//! a way to drop (never reuse) a connection whose node changed role, and a connect
//! deadline it controls; all of that is a few dozen lines over a semaphore.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

use crate::RouteError;

/// Connections to one node.
pub(crate) struct NodePool {
    pub(crate) name: String,
    config: tokio_postgres::Config,
    tls: Option<crate::tls::MakeRustls>,
    idle: Mutex<Vec<Client>>,
    slots: Arc<Semaphore>,
    in_flight: AtomicU32,
    checkout_timeout: Duration,
}

impl NodePool {
    pub(crate) fn new(
        name: &str,
        host: &str,
        port: u16,
        params: &crate::ConnParams,
        size: usize,
    ) -> NodePool {
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user(&params.user)
            .dbname(&params.dbname)
            .application_name(&params.application_name)
            .connect_timeout(params.connect_timeout);
        if let Some(p) = &params.password {
            config.password(p.as_bytes());
        }
        if params.tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        NodePool {
            name: name.to_string(),
            config,
            tls: params.tls.clone(),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(size.max(1))),
            in_flight: AtomicU32::new(0),
            checkout_timeout: params.connect_timeout,
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Check a connection out (reusing an idle one, else connecting).
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Pooled, RouteError> {
        let permit =
            tokio::time::timeout(self.checkout_timeout, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| RouteError::PoolTimeout {
                    node: self.name.clone(),
                })?
                .map_err(|_| RouteError::PoolTimeout {
                    node: self.name.clone(),
                })?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled {
            client: Some(client),
            pool: self.clone(),
            _permit: permit,
            discard: false,
        })
    }

    /// A fresh connection outside the pool's slots (for probes).
    pub(crate) async fn connect(&self) -> Result<Client, RouteError> {
        let timed_out = || RouteError::Connect {
            node: self.name.clone(),
            reason: "connect timed out".into(),
        };
        let failed = |e: tokio_postgres::Error| RouteError::Connect {
            node: self.name.clone(),
            reason: e.to_string(),
        };
        let name = self.name.clone();
        let ended = move |r: Result<(), tokio_postgres::Error>| {
            if let Err(e) = r {
                tracing::debug!(node = %name, error = %e, "database connection ended");
            }
        };
        match &self.tls {
            Some(tls) => {
                let (client, conn) =
                    tokio::time::timeout(self.checkout_timeout, self.config.connect(tls.clone()))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(failed)?;
                tokio::spawn(async move { ended(conn.await) });
                Ok(client)
            }
            None => {
                let (client, conn) =
                    tokio::time::timeout(self.checkout_timeout, self.config.connect(NoTls))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(failed)?;
                tokio::spawn(async move { ended(conn.await) });
                Ok(client)
            }
        }
    }

    /// Drop every idle connection (the node changed role or went away).
    pub(crate) fn clear_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A checked-out connection; returns to its pool on drop unless closed or discarded.
pub struct Pooled {
    client: Option<Client>,
    pool: Arc<NodePool>,
    _permit: OwnedSemaphorePermit,
    discard: bool,
}

impl Pooled {
    /// Never return this connection to the pool (its node's role is in doubt).
    pub fn discard(&mut self) {
        self.discard = true;
    }
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Invariant: `client` is Some until drop.
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled client taken before drop"))
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("pooled client taken before drop"))
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.client.take() {
            if !self.discard && !c.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c);
            }
        }
    }
}
