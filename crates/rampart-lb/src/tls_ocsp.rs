//! OCSP stapling of the certificates a TLS listener serves (unless its `tls` says
//! `ocsp_stapling = false`): for each certificate whose leaf names an OCSP responder
//! (`http://`) and whose chain holds its issuer next, a task on the control runtime
//! fetches an answer (RFC 6960 POST), checks it ([`crate::ocsp`], signature included) and
//! staples it (`CertifiedKey::ocsp`, sent to clients that ask with `status_request`); it
//! fetches again halfway to the answer's `nextUpdate`, backing off after a failure. A
//! failed fetch keeps the staple in use until its `nextUpdate`, then stapling stops until
//! a fetch succeeds.
//!
//! Handshakes never wait for any of this: the resolver reads the listener's certificate
//! set through its `ArcSwap`, into which a new staple is stored like a reloaded
//! certificate; fetches run on the control runtime, never on a worker.
//!
//! A `revoked` answer is stapled as it is (as Apache and HAProxy do): the client then
//! refuses the certificate now rather than after its own, maybe soft-failing, check; an
//! earlier `good` staple is never kept past it. It is logged as an error at each fetch.
//! An `unknown` answer is a failed fetch.
//!
//! Each listener's [`Book`] holds a state per certificate chain (by [`ChainId`]: leaf and
//! issuer); every write of the listener's certificate set goes through [`Book::store`],
//! under the book's lock, so a reload and a new staple never undo each other. A reload of
//! the same chain keeps its staple; a new chain is fetched for at once.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rampart_topology::lb::ListenerTls;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::acme::now_secs;
use crate::ocsp::{self, CertId, CertStatus, Checked};
use crate::tls_certs::{CertSet, Loaded};

/// How often the task looks for fetches due and staples expired.
const TICK: Duration = Duration::from_secs(1);
/// A fetch (connect, request, answer) must be done within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read from a responder (they are a few KiB at most).
const MAX_ANSWER: usize = 64 * 1024;

/// A certificate chain's identity: SHA-256 of its leaf and issuer (DER).
pub(crate) type ChainId = [u8; 32];

pub(crate) fn chain_id(chain: &[CertificateDer<'_>]) -> ChainId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in chain.iter().take(2) {
        ctx.update(&(c.as_ref().len() as u64).to_be_bytes());
        ctx.update(c.as_ref());
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    id
}

/// What to fetch for one certificate.
struct Fetch {
    url: String,
    id: CertId,
    request: Vec<u8>,
}

/// An answer being stapled.
#[derive(Clone)]
struct Staple {
    der: Vec<u8>,
    good: bool,
    valid_until: i64,
}

/// One certificate chain's stapling state.
struct Entry {
    /// `None`: nothing to staple (no responder, no issuer, or stapling off).
    fetch: Option<Arc<Fetch>>,
    staple: Option<Staple>,
    /// When to fetch next (seconds since the epoch).
    next_try: i64,
    failures: u32,
    busy: bool,
    /// The certificate file, for logs.
    cert: String,
}

/// A listener's stapling states.
pub(crate) struct Book {
    on: bool,
    entries: Mutex<HashMap<ChainId, Entry>>,
}

/// Wakes the task when a new chain is to be fetched for (not a second later).
static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// The fetch plan of a certificate chain; logs (once: when the chain is first served) why
/// a certificate that names a responder cannot be stapled.
fn plan(listener: &str, cert: &str, chain: &[CertificateDer<'_>]) -> Option<Arc<Fetch>> {
    let leaf = chain.first()?;
    let url = ocsp::responder_url(leaf.as_ref())?;
    if !url.starts_with("http://") {
        tracing::warn!(listener, cert, %url, "the certificate's OCSP responder is not an http:// URL: not stapled");
        return None;
    }
    match CertId::new(leaf.as_ref(), chain.get(1).map(|c| c.as_ref())) {
        Ok(id) => {
            tracing::debug!(listener, cert, %url, serial = %id.serial_hex(), "OCSP stapling planned");
            Some(Arc::new(Fetch {
                url,
                request: id.request(),
                id,
            }))
        }
        Err(e) => {
            tracing::warn!(listener, cert, %url, reason = %e, "the certificate names an OCSP responder but cannot be stapled");
            None
        }
    }
}

/// The staple chain `id` should present now (after [`expire`]).
fn want<'a>(entries: &'a HashMap<ChainId, Entry>, id: &ChainId) -> Option<&'a [u8]> {
    entries.get(id)?.staple.as_ref().map(|s| s.der.as_slice())
}

/// Drop the staples whose validity has passed at `now`.
fn expire(listener: &str, entries: &mut HashMap<ChainId, Entry>, now: i64) {
    for e in entries.values_mut() {
        if e.staple.as_ref().is_some_and(|s| s.valid_until <= now) {
            tracing::warn!(listener, cert = %e.cert, "the OCSP staple expired before a new answer was fetched: not stapled until one is");
            e.staple = None;
        }
    }
}

impl Book {
    /// A listener's book; with `prior` (the listener's book before a configuration
    /// reload that made its TLS set-up again) the chains it knew keep their staples and
    /// schedules.
    pub fn new(on: bool, prior: Option<&Book>) -> Book {
        let mut entries = HashMap::new();
        if let Some(p) = prior.filter(|p| on && p.on) {
            let old = p.entries.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, e) in old.iter() {
                entries.insert(
                    *id,
                    Entry {
                        fetch: e.fetch.clone(),
                        staple: e.staple.clone(),
                        next_try: e.next_try,
                        failures: e.failures,
                        busy: false,
                        cert: e.cert.clone(),
                    },
                );
            }
        }
        Book {
            on,
            entries: Mutex::new(entries),
        }
    }

    /// Store the listener's certificates: `fresh` (just loaded) or, when `None`, those in
    /// use, each with its current staple (none once expired). Entries of new chains are
    /// made (fetched at once), those of chains no longer served dropped: a reloaded
    /// chain that is the same (leaf and issuer) keeps its staple, a new one is presented
    /// without one until its first answer. Without `fresh`, stores only when a staple
    /// changed. Handshakes never wait for this: they read the set through the `ArcSwap`.
    pub fn store(
        &self,
        listener: &str,
        files: &ListenerTls,
        swap: &ArcSwap<CertSet>,
        fresh: Option<Vec<Loaded>>,
        now: i64,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        expire(listener, &mut entries, now);
        let mut certs = match fresh {
            Some(certs) => {
                let mut added = false;
                for c in &certs {
                    if entries.contains_key(&c.chain_id) {
                        continue;
                    }
                    let label = files
                        .certs
                        .get(c.source)
                        .map(|f| f.cert.display().to_string())
                        .unwrap_or_default();
                    let fetch = if self.on {
                        plan(listener, &label, &c.key.cert)
                    } else {
                        None
                    };
                    added |= fetch.is_some();
                    entries.insert(
                        c.chain_id,
                        Entry {
                            fetch,
                            staple: None,
                            next_try: now,
                            failures: 0,
                            busy: false,
                            cert: label,
                        },
                    );
                }
                entries.retain(|id, _| certs.iter().any(|c| c.chain_id == *id));
                if added {
                    WAKE.notify_one();
                }
                certs
            }
            None => {
                let cur = swap.load();
                if cur
                    .certs
                    .iter()
                    .all(|c| c.key.ocsp.as_deref() == want(&entries, &c.chain_id))
                {
                    return;
                }
                cur.certs.clone()
            }
        };
        for c in &mut certs {
            let w = want(&entries, &c.chain_id);
            if c.key.ocsp.as_deref() != w {
                let mut k = CertifiedKey::clone(&c.key);
                k.ocsp = w.map(<[u8]>::to_vec);
                c.key = Arc::new(k);
            }
        }
        swap.store(Arc::new(CertSet::new(certs)));
    }

    /// The fetches due at `now` (marked busy until [`Book::settle`]).
    fn due(&self, now: i64) -> Vec<(ChainId, Arc<Fetch>)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter_mut()
            .filter(|(_, e)| !e.busy && e.next_try <= now)
            .filter_map(|(id, e)| {
                let f = e.fetch.clone()?;
                e.busy = true;
                Some((*id, f))
            })
            .collect()
    }

    /// Record a fetch's outcome: the answer (DER, checked) or why there is none.
    fn settle(&self, listener: &str, id: &ChainId, r: Result<(Vec<u8>, Checked), String>) {
        let now = now_secs();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(e) = entries.get_mut(id) else {
            return;
        };
        e.busy = false;
        let url = e.fetch.as_ref().map(|f| f.url.clone()).unwrap_or_default();
        match r {
            Ok((der, checked)) => {
                e.failures = 0;
                e.next_try = checked.refresh_at(now);
                let valid_until = checked.valid_until(now);
                let good = match checked.status {
                    CertStatus::Good => {
                        tracing::info!(listener, cert = %e.cert, %url, valid_until, refresh_in_s = e.next_try - now, "OCSP response stapled (good)");
                        true
                    }
                    CertStatus::Revoked(at) => {
                        tracing::error!(listener, cert = %e.cert, %url, revoked_at = at, "the OCSP responder says the certificate is REVOKED; its answer is stapled (clients will refuse the certificate)");
                        false
                    }
                };
                e.staple = Some(Staple {
                    der,
                    good,
                    valid_until,
                });
            }
            Err(err) => {
                e.failures = e.failures.saturating_add(1);
                let wait = ocsp::backoff(e.failures);
                e.next_try = now + wait;
                let kept_until = e.staple.as_ref().map_or(0, |s| s.valid_until);
                tracing::warn!(listener, cert = %e.cert, %url, error = %err, failures = e.failures, retry_in_s = wait, kept_until, "OCSP fetch failed; the staple in use (if any) is kept until it expires");
            }
        }
    }

    /// Until when the chain `id` has a `good` answer stapled (seconds since the epoch; 0:
    /// none, or not good).
    pub fn good_until(&self, id: &ChainId, now: i64) -> i64 {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(id)
            .and_then(|e| e.staple.as_ref())
            .filter(|s| s.good && s.valid_until > now)
            .map_or(0, |s| s.valid_until)
    }
}

/// POST `request` to `url` (http://) and return the answer's body.
async fn post(url: &str, request: Vec<u8>) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("not an http:// URL".into());
    }
    let host = uri
        .host()
        .ok_or("no host in the URL")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let work = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        // Ends when the answer is read or its wait is given up (bounded either way).
        tokio::spawn(tokio::time::timeout(FETCH_TIMEOUT, conn));
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/ocsp-request")
            .header(header::ACCEPT, "application/ocsp-response")
            .header(header::CONNECTION, "close")
            .header(
                header::USER_AGENT,
                concat!("rampart/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(request)))
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("the responder answered HTTP {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(body.to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Fetch and check one answer.
async fn fetch(f: &Fetch) -> Result<(Vec<u8>, Checked), String> {
    let der = post(&f.url, f.request.clone()).await?;
    let checked = f.id.check(&der, now_secs()).map_err(|e| e.to_string())?;
    Ok((der, checked))
}

/// Run the fetches due and drop expired staples, every [`TICK`], on the current runtime.
pub(crate) fn spawn() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = WAKE.notified() => {}
            }
            let now = now_secs();
            for t in crate::tls::terms() {
                for (id, f) in t.ocsp.due(now) {
                    let t = t.clone();
                    tokio::spawn(async move {
                        let r = fetch(&f).await;
                        t.ocsp.settle(t.listener(), &id, r);
                        t.restaple();
                    });
                }
                t.restaple();
            }
        }
    });
}
