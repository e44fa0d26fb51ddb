//! `rampart-coord`: the only code in rampart that speaks to etcd.
//!
//! It offers the few primitives the roles build on: leases (granted, kept alive by the
//! caller, revoked), reads, writes, atomic create / compare-and-swap / delete-if on a key's
//! `mod_revision`, prefix watches that survive etcd restarts, and service registration.
//!
//! **Every call has a deadline** (`CoordOptions::op_timeout`, default 1 s): a caller cut off
//! from etcd gets [`CoordError::is_unavailable`] within that time and never hangs. The db
//! agent's safety depends on it: a primary that cannot renew its lease in time demotes.
//!
//! Keepalives are *not* automatic: the lease holder calls [`Coord::keep_alive_once`] itself
//! (about every TTL/3), so that it knows, at every moment, whether it still holds the lease.

mod backoff;
mod error;
mod service;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};

pub use backoff::Backoff;
pub use error::CoordError;
pub use service::{register_service, service_key, services_prefix, Registration, ServiceRecord};
pub use watch::WatchEvent;

/// An etcd lease id.
pub type LeaseId = i64;

/// One key and its value with etcd's revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was created (0 never appears for a present key).
    pub create_revision: i64,
    /// Revision of the last modification: the token for [`Coord::compare_and_swap`].
    pub mod_revision: i64,
    /// The lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

impl KeyValue {
    pub(crate) fn from_etcd(kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }

    /// The value as UTF-8 text (lossy).
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// A condition of a guarded write ([`Coord::put_guarded`], [`Coord::delete_guarded`]):
/// all must hold in the same transaction as the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key exists with this `mod_revision` (it was not rewritten, deleted or
    /// re-created since it was read).
    ModRevision(String, i64),
    /// The key exists with this value.
    Value(String, Vec<u8>),
    /// The key does not exist.
    Absent(String),
}

impl Guard {
    fn compare(&self) -> Compare {
        match self {
            Guard::ModRevision(k, r) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            Guard::Value(k, v) => Compare::value(k.as_str(), CompareOp::Equal, v.clone()),
            Guard::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
        }
    }
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct CoordOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`. Several members are balanced over.
    pub endpoints: Vec<String>,
    /// Deadline of every call (default 1 s).
    pub op_timeout: Duration,
    /// Deadline of establishing a connection to one endpoint (default 1 s).
    pub connect_timeout: Duration,
}

impl CoordOptions {
    /// Options with the default deadlines for these endpoints.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> CoordOptions {
        CoordOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..CoordOptions::default()
        }
    }
}

impl Default for CoordOptions {
    fn default() -> Self {
        CoordOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            op_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// A handle on an etcd cluster. Cheap to clone; all clones share the connections.
///
/// With several endpoints it holds one connection per member and sticks to the member that
/// answered last; a call that cannot reach it moves on to the next member within the same
/// deadline (tonic's balanced channel keeps picking a dead member, so it is not used).
#[derive(Clone)]
pub struct Coord {
    inner: Arc<Inner>,
}

struct Inner {
    clients: Vec<Client>,
    preferred: AtomicUsize,
    opts: CoordOptions,
}

/// Whether repeating a call on another member after an unknown outcome is harmless.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Retry {
    /// Reads, keepalives, revokes, plain puts and deletes: try the next member on any
    /// unavailable error.
    Idempotent,
    /// create / compare-and-swap / delete-if: a second attempt after a lost answer could
    /// report "lost" for a write that took effect, so only retry when the request surely
    /// never reached a member (connection refused, no leader).
    OnlyIfNotSent,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("endpoints", &self.inner.opts.endpoints)
            .field("op_timeout", &self.inner.opts.op_timeout)
            .finish()
    }
}

// === impl Coord ===

impl Coord {
    /// Build a client. Connecting is lazy: this succeeds while etcd is down (calls then
    /// fail with an unavailable error until it is back); it fails only on invalid options.
    pub async fn connect(opts: CoordOptions) -> Result<Coord, CoordError> {
        if opts.endpoints.is_empty() {
            return Err(CoordError::Config("no etcd endpoint given".into()));
        }
        if opts.op_timeout.is_zero() {
            return Err(CoordError::Config("op_timeout must be above zero".into()));
        }
        for e in &opts.endpoints {
            if e.contains("://") && !e.starts_with("http://") {
                return Err(CoordError::Config(format!(
                    "endpoint {e:?}: only plain http:// endpoints are supported"
                )));
            }
        }
        let copts = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.op_timeout)
            // HTTP/2 pings find a silently dead connection (partition) while a watch or
            // keepalive stream is open. etcd refuses pings closer than 5 s
            // (--grpc-keepalive-min-time), so stay above that.
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_keep_alive_while_idle(false)
            // A member cut off from its cluster's leader must not serve us (stale reads,
            // watches that never fire).
            .with_require_leader(true);
        let budget = opts.op_timeout + opts.connect_timeout;
        let mut clients = Vec::with_capacity(opts.endpoints.len());
        for e in &opts.endpoints {
            let client =
                tokio::time::timeout(budget, Client::connect([e.as_str()], Some(copts.clone())))
                    .await
                    .map_err(|_| CoordError::Timeout {
                        op: "connect",
                        timeout: budget,
                    })?
                    .map_err(|e| CoordError::from_etcd("connect", e))?;
            clients.push(client);
        }
        Ok(Coord {
            inner: Arc::new(Inner {
                clients,
                preferred: AtomicUsize::new(0),
                opts,
            }),
        })
    }

    /// The options this handle was built with.
    pub fn options(&self) -> &CoordOptions {
        &self.inner.opts
    }

    /// Run `f` against the preferred member under the per-call deadline; on an
    /// unavailable error move on to the next members (as `retry` allows) while the
    /// deadline lasts.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        retry: Retry,
        mut f: F,
    ) -> Result<T, CoordError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let op_timeout = self.inner.opts.op_timeout;
        let deadline = tokio::time::Instant::now() + op_timeout;
        let n = self.inner.clients.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut last = CoordError::Timeout {
            op,
            timeout: op_timeout,
        };
        // Rounds over the members until the deadline: an etcd that comes back (restart,
        // leader election) within the deadline still serves the call, and a connection
        // broken by a restart is re-established instead of failing the call.
        let mut pause = Duration::from_millis(25);
        for attempt in 0usize.. {
            let i = attempt % n;
            if attempt > 0 && i == 0 {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(pause.min(remaining)).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            let idx = (start + attempt) % n;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            // An idempotent call gives a member at most half of what is left (the last of a
            // round gets all of it), so a member that hangs (partitioned) cannot eat the
            // whole deadline while a slow but healthy one still gets most of it.
            let budget = match retry {
                Retry::Idempotent if i + 1 < n => remaining / 2,
                Retry::Idempotent | Retry::OnlyIfNotSent => remaining,
            };
            match tokio::time::timeout(budget, f(self.inner.clients[idx].clone())).await {
                Ok(Ok(v)) => {
                    if idx != start {
                        self.inner.preferred.store(idx, Ordering::Relaxed);
                        tracing::info!(endpoint = %self.inner.opts.endpoints[idx], "etcd: switched to another member");
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let e = CoordError::from_etcd(op, e);
                    if !e.is_unavailable()
                        || (retry == Retry::OnlyIfNotSent && !e.request_not_sent())
                    {
                        return Err(e);
                    }
                    last = e;
                }
                Err(_) => {
                    last = CoordError::Timeout {
                        op,
                        timeout: op_timeout,
                    };
                    if retry == Retry::OnlyIfNotSent {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// A client for a long-lived stream (watch): the preferred member first, then the others.
    pub(crate) fn clients_in_order(&self) -> impl Iterator<Item = (usize, Client)> + '_ {
        let n = self.inner.clients.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| {
            let idx = (start + i) % n;
            (idx, self.inner.clients[idx].clone())
        })
    }

    pub(crate) fn set_preferred(&self, idx: usize) {
        self.inner.preferred.store(idx, Ordering::Relaxed);
    }

    /// Grant a lease of `ttl` (rounded up to whole seconds, at least 1 s). Note that etcd
    /// raises TTLs below its minimum (about 3 × heartbeat interval; 2 s with default
    /// settings) silently; the granted TTL is what keep_alive_once returns.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let secs = ttl_secs(ttl);
        let resp = self
            .call("grant_lease", Retry::Idempotent, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(CoordError::Rejected {
                op: "grant_lease",
                detail: resp.error().to_string(),
            });
        }
        Ok(resp.id())
    }

    /// Renew a lease once. `Some(ttl)` is the lease's TTL from now on; `None` means the
    /// lease no longer exists (expired or revoked): whatever was attached to it is gone.
    /// Measure the lease's validity from *before* the call, not from its return.
    pub async fn keep_alive_once(&self, lease: LeaseId) -> Result<Option<Duration>, CoordError> {
        self.call("keep_alive", Retry::Idempotent, |mut c| async move {
            // etcd-client sends one keepalive while opening the stream and reports a
            // TTL of 0 (lease gone) as this error; it hides the granted TTL, so a second
            // keepalive on the open stream reads it.
            let (mut keeper, mut stream) = match c.lease_keep_alive(lease).await {
                Ok(pair) => pair,
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(resp) if resp.ttl() > 0 => Ok(Some(Duration::from_secs(resp.ttl() as u64))),
                Some(_) => Ok(None),
                None => Err(etcd_client::Error::LeaseKeepAliveError(
                    "keepalive stream closed without an answer".into(),
                )),
            }
        })
        .await
    }

    /// Revoke a lease, deleting every key attached to it. Revoking a lease that is already
    /// gone succeeds.
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        let r = self
            .call("revoke", Retry::Idempotent, |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(CoordError::Rejected { detail, .. }) if detail.contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Read one key (a linearizable read).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, CoordError> {
        let resp = self
            .call("get", Retry::Idempotent, |mut c| async move {
                c.get(key, None).await
            })
            .await?;
        Ok(resp.kvs().first().map(KeyValue::from_etcd))
    }

    /// Read every key under `prefix`, sorted by key, with the store revision of the read
    /// (watch from it to see every later change).
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), CoordError> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend);
        let resp = self
            .call("get_prefix", Retry::Idempotent, |mut c| {
                let opts = opts.clone();
                async move { c.get(prefix, Some(opts)).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.kvs().iter().map(KeyValue::from_etcd).collect(), rev))
    }

    /// Write a key, optionally attached to a lease; returns the new store revision (the
    /// key's `mod_revision`).
    pub async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<i64, CoordError> {
        let resp = self
            .call("put", Retry::Idempotent, |mut c| async move {
                c.put(key, value, put_options(lease)).await
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Atomic create: succeeds only if the key does not exist (create_revision == 0).
    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, put_options(lease))]);
        self.txn("create", txn).await
    }

    /// Atomic create that also returns the key's `mod_revision` (the token a holder puts
    /// in a [`Guard::ModRevision`] of its later writes); `None` when the key exists.
    pub async fn create_revision(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>, CoordError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, put_options(lease))]);
        self.txn_revision("create", txn).await
    }

    /// Write `key` only if every guard holds, atomically (one etcd transaction): e.g. only
    /// while the writer still holds the leader key it took (`ModRevision` of `/leader`).
    /// False when a guard failed and nothing was written.
    pub async fn put_guarded(
        &self,
        guards: &[Guard],
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when(guards.iter().map(Guard::compare).collect::<Vec<_>>())
            .and_then([TxnOp::put(key, value, put_options(lease))]);
        self.txn("put_guarded", txn).await
    }

    /// Delete `key` only if every guard holds (atomically). False when a guard failed.
    pub async fn delete_guarded(&self, guards: &[Guard], key: &str) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when(guards.iter().map(Guard::compare).collect::<Vec<_>>())
            .and_then([TxnOp::delete(key, None)]);
        self.txn("delete_guarded", txn).await
    }

    /// Atomic compare-and-set on mod_revision: writes only if the key's current
    /// `mod_revision` is `expect_mod_revision` (0 means "the key must not exist").
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expect_mod_revision: i64,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool, CoordError> {
        Ok(self
            .swap_revision(key, expect_mod_revision, value, lease)
            .await?
            .is_some())
    }

    /// [`Coord::compare_and_swap`] that also says the key's new `mod_revision` (`None`:
    /// the key had changed or was gone, nothing written).
    pub async fn swap_revision(
        &self,
        key: &str,
        expect_mod_revision: i64,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>, CoordError> {
        let cmp = if expect_mod_revision == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, expect_mod_revision)
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, value, put_options(lease))]);
        self.txn_revision("compare_and_swap", txn).await
    }

    /// Atomic delete if mod_revision matches. False when the key changed or is gone.
    pub async fn delete_if(&self, key: &str, expect_mod_revision: i64) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                expect_mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.txn("delete_if", txn).await
    }

    /// Delete a key (no error when it is absent).
    pub async fn delete(&self, key: &str) -> Result<(), CoordError> {
        self.call("delete", Retry::Idempotent, |mut c| async move {
            c.delete(key, None).await
        })
        .await?;
        Ok(())
    }

    /// Delete every key under `prefix`; returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, CoordError> {
        let resp = self
            .call("delete_prefix", Retry::Idempotent, |mut c| async move {
                c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            })
            .await?;
        Ok(resp.deleted())
    }

    /// The remaining TTL of a lease, `None` when it is gone (does not renew it).
    pub async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>, CoordError> {
        let resp = self
            .call("lease_ttl", Retry::Idempotent, |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await?;
        Ok((resp.ttl() > 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }

    /// Watch a prefix. Events with a revision above `from_revision` are delivered in order
    /// (pass the revision returned by [`Coord::get_prefix`]); `from_revision == 0` starts
    /// with a [`WatchEvent::Resync`] snapshot of the prefix. The watcher reconnects with
    /// backoff and, after any interruption, emits a `Resync` with the full current contents
    /// (the consumer replaces its view). The task ends when the receiver is dropped.
    ///
    /// Fails only when the first watch cannot be established within the deadline.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<WatchEvent>, CoordError> {
        watch::start(self.clone(), prefix.to_string(), from_revision).await
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<bool, CoordError> {
        Ok(self.txn_revision(op, txn).await?.is_some())
    }

    /// Run a transaction; the store's revision after it when its guards held.
    async fn txn_revision(&self, op: &'static str, txn: Txn) -> Result<Option<i64>, CoordError> {
        let resp = self
            .call(op, Retry::OnlyIfNotSent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|l| PutOptions::new().with_lease(l))
}

/// Whole seconds for etcd, rounding up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let ms = ttl.as_millis();
    let secs = ms.div_ceil(1000).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(0)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(300)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(30)), 30);
    }

    #[tokio::test]
    async fn connect_is_lazy_and_rejects_bad_options() {
        // Nothing listens on port 1: connect still succeeds (lazy), calls fail fast.
        let mut o = CoordOptions::new(["http://127.0.0.1:1"]);
        o.op_timeout = Duration::from_millis(300);
        let c = Coord::connect(o).await.expect("lazy connect");
        let t0 = std::time::Instant::now();
        let e = c.get("/x").await.expect_err("nothing listens");
        assert!(e.is_unavailable(), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(1500));

        let e = Coord::connect(CoordOptions::new(Vec::<String>::new()))
            .await
            .expect_err("no endpoint");
        assert!(matches!(e, CoordError::Config(_)));
        let e = Coord::connect(CoordOptions::new(["https://127.0.0.1:2379"]))
            .await
            .expect_err("tls not built in");
        assert!(matches!(e, CoordError::Config(_)));
    }
}
