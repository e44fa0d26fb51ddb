//! TLS termination for HTTP listeners: rustls with the ring provider, TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1` (HTTP/2 is served when the client picks it).
//!
//! Each TLS listener has a [`TlsTerm`]: its PEM files and the certified key currently in
//! use, behind an `ArcSwap` that a certificate resolver reads at every handshake. The key
//! is swapped without a restart by [`reload_certs`] (and by a configuration reload, which
//! calls [`prepare`]), and by a watcher that re-reads the files when their modification
//! time changes. A reload that fails (unreadable file, key not matching the certificate,
//! e.g. halfway through a rotation) keeps the key in use and is retried on the next change.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use rampart_topology::lb::{LbConfig, ListenerTls};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;

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
}

/// The certified key a listener presents, swappable while it serves.
struct Resolver(ArcSwap<CertifiedKey>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// TLS termination of one listener.
pub struct TlsTerm {
    listener: String,
    files: ListenerTls,
    resolver: Arc<Resolver>,
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// Modification times of (cert, key) when they were last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    /// `Strict-Transport-Security` value for every response, when configured.
    pub(crate) hsts: Option<HeaderValue>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Read and check a certificate chain and its key.
fn load_key(listener: &str, files: &ListenerTls) -> Result<CertifiedKey, TlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|err| TlsError::Read {
            listener: listener.to_string(),
            what,
            path: path.to_path_buf(),
            err,
        })
    };
    let invalid = |what: &'static str, path: &Path, reason: String| TlsError::Invalid {
        listener: listener.to_string(),
        what,
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read("cert", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            invalid(
                "cert",
                &files.cert,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "cert",
            &files.cert,
            "holds no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid("key", &files.key, format!("no PEM private key: {e}")))?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        invalid(
            "key",
            &files.key,
            format!(
                "does not fit the certificate in {}: {e}",
                files.cert.display()
            ),
        )
    })
}

impl TlsTerm {
    fn new(listener: &str, files: &ListenerTls) -> Result<TlsTerm, TlsError> {
        let stamps = (mtime(&files.cert), mtime(&files.key));
        let key = load_key(listener, files)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e, listener.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let hsts = files
            .hsts_max_age
            .and_then(|s| HeaderValue::from_str(&format!("max-age={s}")).ok());
        Ok(TlsTerm {
            listener: listener.to_string(),
            files: files.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            loaded: Mutex::new(stamps),
            hsts,
        })
    }

    /// Read the files again and present the new certificate from the next handshake on.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (mtime(&self.files.cert), mtime(&self.files.key));
        let key = load_key(&self.listener, &self.files)?;
        self.resolver.0.store(Arc::new(key));
        if let Ok(mut l) = self.loaded.lock() {
            *l = stamps;
        }
        tracing::info!(listener = %self.listener, cert = %self.files.cert.display(), "TLS certificate loaded");
        Ok(())
    }

    /// Whether a file changed since it was loaded.
    fn changed(&self) -> bool {
        let now = (mtime(&self.files.cert), mtime(&self.files.key));
        self.loaded.lock().map(|l| *l != now).unwrap_or(false)
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }
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
            None => next.push(Arc::new(TlsTerm::new(&l.name, files)?)),
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

/// Watch the certificate files on the current runtime: reload a listener's certificate
/// when its cert or key file's modification time changes.
pub fn spawn_watch() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let terms: Vec<Arc<TlsTerm>> = TERMS.lock().map(|t| t.clone()).unwrap_or_default();
            for t in terms.iter().filter(|t| t.changed()) {
                if let Err(e) = t.reload() {
                    tracing::warn!(error = %e, "TLS certificate changed on disk but cannot be loaded; the current one stays");
                    // Retry on the next change only (not every tick).
                    if let Ok(mut l) = t.loaded.lock() {
                        *l = (mtime(&t.files.cert), mtime(&t.files.key));
                    }
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
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
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
