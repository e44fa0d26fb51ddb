//! TLS termination for HTTP listeners: rustls with the ring provider, TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1` (HTTP/2 is served when the client picks it).
//!
//! Each TLS listener has a [`TlsTerm`]: its PEM files and the certificates currently in
//! use ([`crate::tls_certs`]: chosen by SNI, then by the client's signature schemes),
//! behind an `ArcSwap` that a certificate resolver reads at every handshake. They are
//! swapped without a restart by [`reload_certs`] (and by a configuration reload, which
//! calls [`prepare`]), and by a watcher that re-reads the files when their modification
//! time changes. A certificate whose reload fails (unreadable file, key not matching the
//! certificate, e.g. halfway through a rotation) keeps the one in use and is retried on
//! the next change.
//!
//! Certificates whose leaf names an OCSP responder get its answers stapled
//! ([`crate::tls_ocsp`]; every store of a listener's certificate set goes through its
//! [`Book`], which attaches them).
//!
//! Sessions resume by TLS 1.3 tickets and TLS 1.2 tickets or session IDs: tickets are
//! sealed with keys that may be shared by the balancers of a pair ([`crate::tls_tickets`]),
//! session IDs are kept per process. Early data (0-RTT) is refused.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use rampart_topology::lb::DEFAULT_TICKET_ROTATE;
use rampart_topology::lb::{LbConfig, ListenerTls};
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;

use crate::tls_certs::{self, CertSet};
use crate::tls_ocsp::Book;
use crate::tls_tickets::{KeyFileError, Tickets};

/// How often the watcher looks at the certificate files' modification times.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Why a listener's certificate could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener \"{listener}\": cannot read the TLS {what} file {path}: {err}")]
    Read {
        listener: String,
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("listener \"{listener}\": TLS {what} file {path}: {reason}")]
    Invalid {
        listener: String,
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("listener \"{listener}\": TLS set-up: {0}", listener = .1)]
    Config(rustls::Error, String),
    #[error("listener \"{listener}\": {0}", listener = .1)]
    Tickets(KeyFileError, String),
}

/// The certificates a listener presents, swappable while it serves.
struct Resolver(ArcSwap<CertSet>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A CA's TLS-ALPN-01 validation (RFC 8737) offers `acme-tls/1` alone and gets the
        // challenge certificate (or none: the handshake fails).
        if hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN))
        {
            return crate::acme::alpn_cert(hello.server_name());
        }
        self.0
            .load()
            .pick(hello.server_name(), hello.signature_schemes())
    }
}

/// Modification times of a certificate's (cert, key) files.
type Stamps = (Option<SystemTime>, Option<SystemTime>);

/// TLS termination of one listener.
pub struct TlsTerm {
    listener: String,
    files: ListenerTls,
    resolver: Arc<Resolver>,
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// Modification times of each certificate's files when they were last loaded.
    loaded: Mutex<Vec<Stamps>>,
    tickets: Option<Arc<Tickets>>,
    /// `Strict-Transport-Security` value for every response, when configured.
    pub(crate) hsts: Option<HeaderValue>,
    /// OCSP stapling states of the certificates.
    pub(crate) ocsp: Book,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn stamps(files: &ListenerTls) -> Vec<Stamps> {
    files
        .certs
        .iter()
        .map(|c| (mtime(&c.cert), mtime(&c.key)))
        .collect()
}

impl TlsTerm {
    /// A listener's TLS set-up; `prior` is the OCSP book of the listener's set-up before a
    /// configuration reload changed it (its staples are kept).
    fn new(listener: &str, files: &ListenerTls, prior: Option<&Book>) -> Result<TlsTerm, TlsError> {
        let stamps = stamps(files);
        let mut certs = Vec::with_capacity(files.certs.len());
        for (i, c) in files.certs.iter().enumerate() {
            match tls_certs::load(listener, c, i) {
                Ok(l) => certs.push(l),
                // An ACME certificate not ordered yet (or unreadable: ordered again).
                Err(e) if c.optional => {
                    tracing::info!(listener, reason = %e, "no ACME certificate stored yet");
                }
                Err(e) => return Err(e),
            }
        }
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(CertSet::new(Vec::new()))));
        let ocsp = Book::new(files.ocsp_stapling, prior);
        ocsp.store(
            listener,
            files,
            &resolver.0,
            Some(certs),
            crate::acme::now_secs(),
        );
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e, listener.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if files
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == rampart_topology::lb::Challenge::TlsAlpn01)
        {
            // Last: chosen only by a client that offers nothing else (the CA's validator).
            cfg.alpn_protocols.push(crate::acme::ACME_TLS_ALPN.to_vec());
        }
        // No early data (0-RTT): replayable requests are not worth a round trip.
        cfg.max_early_data_size = 0;
        // The server's cipher suite order (AEADs only, AES-GCM then ChaCha20), not the
        // client's: what testssl.sh and HAProxy's prefer-server-ciphers expect.
        cfg.ignore_client_order = true;
        let r = &files.resumption;
        cfg.session_storage = if r.session_cache > 0 {
            ServerSessionMemoryCache::new(r.session_cache)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let tickets = if r.tickets {
            let lifetime = r.ticket_lifetime();
            let t = match &r.ticket_keys_file {
                Some(path) => Tickets::file(path, r.ticket_keys_rotate, lifetime)
                    .map_err(|e| TlsError::Tickets(e, listener.to_string()))?,
                None => Tickets::memory(
                    r.ticket_keys_rotate.unwrap_or(DEFAULT_TICKET_ROTATE),
                    lifetime,
                )
                .ok_or_else(|| {
                    TlsError::Config(rustls::Error::FailedToGetRandomBytes, listener.to_string())
                })?,
            };
            let t = Arc::new(t);
            cfg.ticketer = t.clone();
            Some(t)
        } else {
            None
        };
        let hsts = files
            .hsts_max_age
            .and_then(|s| HeaderValue::from_str(&format!("max-age={s}")).ok());
        Ok(TlsTerm {
            listener: listener.to_string(),
            files: files.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            loaded: Mutex::new(stamps),
            tickets,
            hsts,
            ocsp,
        })
    }

    /// Read the files again and present the new certificates from the next handshake on.
    /// A certificate that cannot be loaded keeps the one in use (the first such error is
    /// returned); the others are replaced.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.files);
        let old = self.resolver.0.load_full();
        let mut first_err = None;
        let mut certs = Vec::with_capacity(self.files.certs.len());
        for (i, files) in self.files.certs.iter().enumerate() {
            match tls_certs::load(&self.listener, files, i) {
                Ok(c) => certs.push(c),
                Err(e) => {
                    let kept = old.certs.iter().find(|c| c.source == i);
                    if let Some(c) = kept {
                        certs.push(c.clone());
                    }
                    // An ACME certificate not ordered yet is no error.
                    if !(files.optional && kept.is_none()) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        self.ocsp.store(
            &self.listener,
            &self.files,
            &self.resolver.0,
            Some(certs),
            crate::acme::now_secs(),
        );
        if let Ok(mut l) = self.loaded.lock() {
            *l = stamps;
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                tracing::info!(listener = %self.listener, certificates = certs_len(&self.resolver), "TLS certificate loaded");
                Ok(())
            }
        }
    }

    /// Whether a file changed since it was loaded.
    fn changed(&self) -> bool {
        let now = stamps(&self.files);
        self.loaded.lock().map(|l| *l != now).unwrap_or(false)
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Present the certificates in use with their current OCSP staples (none once
    /// expired); a no-op when nothing changed.
    pub(crate) fn restaple(&self) {
        self.ocsp.store(
            &self.listener,
            &self.files,
            &self.resolver.0,
            None,
            crate::acme::now_secs(),
        );
    }
}

/// Each served certificate's expiry: (listener, certificate file, notAfter in seconds since
/// the epoch), for the metrics.
pub(crate) fn expiries() -> Vec<(String, String, i64)> {
    let terms: Vec<Arc<TlsTerm>> = TERMS.lock().map(|t| t.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for t in &terms {
        let set = t.resolver.0.load();
        for c in set.certs.iter() {
            let Some(files) = t.files.certs.get(c.source) else {
                continue;
            };
            if let Some(na) = c.not_after {
                out.push((t.listener.clone(), files.cert.display().to_string(), na));
            }
        }
    }
    out
}

/// Each served certificate's stapled OCSP answer: (listener, certificate file, until when
/// a `good` answer is stapled in seconds since the epoch, 0 when none), for the metrics.
pub(crate) fn ocsp_staples() -> Vec<(String, String, i64)> {
    let now = crate::acme::now_secs();
    let mut out = Vec::new();
    for t in terms() {
        let set = t.resolver.0.load();
        for c in set.certs.iter() {
            let Some(files) = t.files.certs.get(c.source) else {
                continue;
            };
            let until = if c.key.ocsp.is_some() {
                t.ocsp.good_until(&c.chain_id, now)
            } else {
                0
            };
            out.push((t.listener.clone(), files.cert.display().to_string(), until));
        }
    }
    out
}

/// Every TLS listener's terminator.
pub(crate) fn terms() -> Vec<Arc<TlsTerm>> {
    TERMS.lock().map(|t| t.clone()).unwrap_or_default()
}

fn certs_len(r: &Resolver) -> usize {
    r.0.load().certs.len()
}

/// Every TLS listener's terminator, by listener name.
static TERMS: LazyLock<Mutex<Vec<Arc<TlsTerm>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// Load (or reload) the certificates of every TLS listener of `config`; the first that
/// cannot be loaded is the error and nothing changes. Called before the listeners start
/// and on every configuration reload.
pub fn prepare(config: &LbConfig) -> Result<(), TlsError> {
    let old: Vec<Arc<TlsTerm>> = TERMS.lock().map(|t| t.clone()).unwrap_or_default();
    let mut next = Vec::new();
    for l in &config.listeners {
        let Some(files) = &l.tls else { continue };
        match old
            .iter()
            .find(|t| t.listener == l.name && t.files == *files)
        {
            Some(t) => {
                t.reload()?;
                next.push(t.clone());
            }
            None => {
                let prior = old.iter().find(|t| t.listener == l.name).map(|t| &t.ocsp);
                next.push(Arc::new(TlsTerm::new(&l.name, files, prior)?));
            }
        }
    }
    if let Ok(mut t) = TERMS.lock() {
        *t = next;
    }
    Ok(())
}

/// The terminator of listener `name` (after [`prepare`]).
pub fn term(name: &str) -> Option<Arc<TlsTerm>> {
    TERMS
        .lock()
        .ok()?
        .iter()
        .find(|t| t.listener == name)
        .cloned()
}

/// Re-read every TLS listener's certificate and key (e.g. on SIGHUP). A listener whose
/// files cannot be loaded keeps its current certificate; its error is returned.
pub fn reload_certs() -> Vec<TlsError> {
    let terms: Vec<Arc<TlsTerm>> = TERMS.lock().map(|t| t.clone()).unwrap_or_default();
    terms.iter().filter_map(|t| t.reload().err()).collect()
}

/// Watch the certificate files on the current runtime: reload a listener's certificates
/// when a cert or key file's modification time changes; rotate and re-read the session
/// ticket keys; fetch and staple OCSP answers.
pub fn spawn_watch() {
    crate::tls_ocsp::spawn();
    tokio::spawn(async {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let terms: Vec<Arc<TlsTerm>> = TERMS.lock().map(|t| t.clone()).unwrap_or_default();
            for t in terms.iter().filter(|t| t.changed()) {
                // A failed reload records the new stamps too: retried on the next change
                // only (not every tick).
                if let Err(e) = t.reload() {
                    tracing::warn!(error = %e, "TLS certificate changed on disk but cannot be loaded; the current one stays");
                }
            }
            for t in &terms {
                if let Some(k) = &t.tickets {
                    k.maintain();
                }
            }
        }
    });
}

/// Complete the TLS handshake of a new client connection within `timeout`; whether the
/// client chose HTTP/2.
pub(crate) async fn handshake(
    term: &TlsTerm,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, bool)> {
    match tokio::time::timeout(timeout, term.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            let alpn = s.get_ref().1.alpn_protocol();
            if alpn == Some(crate::acme::ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the handshake was all it wanted.
                tracing::debug!(%peer, listener = %term.listener, "answered an acme-tls/1 handshake");
                return None;
            }
            let h2 = alpn == Some(b"h2");
            Some((s, h2))
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = %term.listener, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, listener = %term.listener, "TLS handshake timed out");
            None
        }
    }
}
