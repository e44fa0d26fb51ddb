//! A small connection pool per database node.
//!
//! Why not deadpool-postgres: the router needs per-node in-flight counts for balancing,
//! a way to drop (never reuse) a connection whose node changed role, and a connect
//! deadline it controls; all of that is a few dozen lines over a semaphore.
//!
//! Every call through a checked-out connection ([`Pooled::query`] and friends, or
//! [`CallBound::call`] for a transaction's statements) is bounded by the node's call
//! timeout: a server that stops answering with the TCP connection open (a frozen node:
//! SIGSTOP, cgroup freezer, a paused VM) costs one bound, not the whole freeze. A call
//! that times out, fails on the connection, or is dropped half-way (its request
//! cancelled) leaves the connection discarded, never returned to the pool: its state is
//! unknown.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, ToStatement};

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
    call_timeout: Duration,
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
            call_timeout: params.call_timeout,
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
            health: Arc::new(Health::default()),
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

/// What a checked-out connection's calls left behind.
#[derive(Default)]
struct Health {
    /// Calls started and not finished: a call dropped half-way leaves this above zero.
    busy: AtomicU32,
    discard: AtomicBool,
}

/// A checked-out connection; returns to its pool on drop unless closed, discarded, or
/// left with a call half-way (timed out or cancelled).
pub struct Pooled {
    client: Option<Client>,
    pool: Arc<NodePool>,
    _permit: OwnedSemaphorePermit,
    health: Arc<Health>,
}

/// Bounds calls on one checked-out connection (see [`Pooled::bound`]); holds no borrow of
/// it, so a transaction's statements can go through it too.
#[derive(Clone)]
pub struct CallBound {
    health: Arc<Health>,
    pool: Arc<NodePool>,
}

impl CallBound {
    /// Run one call on the connection within the node's call timeout. On a timeout the
    /// connection is discarded and the node's idle connections dropped (the server is
    /// probably frozen: they would wait the same), and the outcome is unknown
    /// ([`crate::RouteError::Timeout`], retryable); a lost connection is discarded too.
    pub async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, RouteError> {
        self.health.busy.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(self.pool.call_timeout, f).await;
        // Not reached when the call is dropped half-way: `busy` then stays up.
        self.health.busy.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_closed() || e.code().is_none() {
                    self.health.discard.store(true, Ordering::Relaxed);
                }
                Err(e.into())
            }
            Err(_) => {
                self.health.discard.store(true, Ordering::Relaxed);
                self.pool.clear_idle();
                tracing::warn!(node = %self.pool.name, after_ms = self.pool.call_timeout.as_millis() as u64,
                    "database call timed out: connection discarded");
                Err(RouteError::Timeout {
                    node: self.pool.name.clone(),
                    after: self.pool.call_timeout,
                })
            }
        }
    }
}

impl Pooled {
    /// Never return this connection to the pool (its node's role is in doubt).
    pub fn discard(&mut self) {
        self.health.discard.store(true, Ordering::Relaxed);
    }

    /// The bound of this connection's calls, for statements not made through the
    /// methods below (a transaction's: `b.call(tx.execute(..))`).
    pub fn bound(&self) -> CallBound {
        CallBound {
            health: self.health.clone(),
            pool: self.pool.clone(),
        }
    }

    /// [`Client::query`] within the call timeout.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, RouteError>
    where
        T: ?Sized + ToStatement,
    {
        self.bound()
            .call(self.client().query(statement, params))
            .await
    }

    /// [`Client::query_one`] within the call timeout.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, RouteError>
    where
        T: ?Sized + ToStatement,
    {
        self.bound()
            .call(self.client().query_one(statement, params))
            .await
    }

    /// [`Client::query_opt`] within the call timeout.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, RouteError>
    where
        T: ?Sized + ToStatement,
    {
        self.bound()
            .call(self.client().query_opt(statement, params))
            .await
    }

    /// [`Client::execute`] within the call timeout.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, RouteError>
    where
        T: ?Sized + ToStatement,
    {
        self.bound()
            .call(self.client().execute(statement, params))
            .await
    }

    /// [`Client::batch_execute`] within the call timeout.
    pub async fn batch_execute(&self, query: &str) -> Result<(), RouteError> {
        self.bound().call(self.client().batch_execute(query)).await
    }

    fn client(&self) -> &Client {
        // Invariant: `client` is Some until drop.
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled client taken before drop"))
    }
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client()
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
            let h = &self.health;
            let clean = !h.discard.load(Ordering::Relaxed) && h.busy.load(Ordering::Relaxed) == 0;
            if clean && !c.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c);
            }
        }
    }
}
