//! TLS from the balancer to a pool's servers (`[[pool]] tls = { ca = ..., ... }`).
//!
//! A server's certificate is verified against the pool's CA and the configured name (else
//! the server's IP address), the balancer presents a client certificate when given one
//! (mutual TLS), and ALPN offers the pool's `alpn` (`http/1.1` by default). When that lists
//! `h2`, new request connections are made with [`connect_alpn`] and a server that picks
//! `h2` gets the pool's requests over HTTP/2 ([`crate::upstream_h2`]); health checks offer
//! the whole list too (and check over HTTP/2 a server that picks it, [`crate::health`]);
//! upgrades offer the list without `h2`. An upstream connection is an [`UpStream`]:
//! plain TCP or TLS over it, pooled alike (an idle TLS connection is its stream in the
//! server's pool, with its rustls state). Sessions to the servers resume (rustls's client
//! session cache, shared by the pools with the same settings).
//!
//! The client configurations are built from the files by [`prepare`] at start and on every
//! configuration reload; a file that cannot be used refuses the start or the reload,
//! naming it. A handshake that fails (unknown CA, wrong name, refused client certificate)
//! is a connect failure: the request is retried elsewhere or answered 502, and the log
//! line says why (`connect failed ... TLS handshake with ADDR as NAME: ...`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rampart_topology::lb::{LbConfig, PoolTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::upstream::{connect_tcp, ConnectError};

/// An upstream connection: plain or TLS.
pub enum UpStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpStream {
    /// Whether an idle connection is still usable: the server has not closed it, reset it
    /// or sent anything unasked. Over TLS, records that carry no data (a session ticket)
    /// are taken in on the way.
    pub fn alive(&mut self) -> bool {
        match self {
            // `try_read` reads only when the runtime saw the socket readable (a close, a
            // reset, unasked bytes) and else answers `WouldBlock` from the readiness it
            // keeps: no syscall, and unlike `poll_read_ready` no waker stored under the
            // socket's lock (a response read short of the buffer leaves it not readable).
            UpStream::Plain(tcp) => {
                let mut b = [0u8; 1];
                matches!(tcp.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            UpStream::Tls(t) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                // Ready with nothing is the end; with a byte, an answer nobody asked for.
                matches!(
                    Pin::new(&mut **t).poll_read(&mut cx, &mut rb),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Plain(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A pool's TLS settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("pool \"{pool}\": cannot read the TLS {what} file {path}: {err}")]
    Read {
        pool: String,
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("pool \"{pool}\": TLS {what} file {path}: {reason}")]
    Invalid {
        pool: String,
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The client side of one set of pool TLS settings.
pub struct UpstreamTls {
    cfg: PoolTls,
    /// Offers the pool's `alpn` as configured (`h2` included).
    connector: tokio_rustls::TlsConnector,
    /// Offers it without `h2`: HTTP/1.1 connections (upgrades, the hyper path's HTTP/1.1).
    h1_connector: tokio_rustls::TlsConnector,
    name: Option<ServerName<'static>>,
}

/// Every pool's client configuration, by settings.
static CLIENTS: LazyLock<ArcSwap<Vec<Arc<UpstreamTls>>>> =
    LazyLock::new(|| ArcSwap::from_pointee(Vec::new()));

fn build(pool: &str, cfg: &PoolTls) -> Result<UpstreamTls, UpstreamTlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|err| UpstreamTlsError::Read {
            pool: pool.to_string(),
            what,
            path: path.to_path_buf(),
            err,
        })
    };
    let invalid = |what: &'static str, path: &Path, reason: String| UpstreamTlsError::Invalid {
        pool: pool.to_string(),
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = |what: &'static str,
                 path: &Path|
     -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
        let pem = read(what, path)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(what, path, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(what, path, "holds no CERTIFICATE block".into()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs("ca", &cfg.ca)?);
    if added == 0 {
        return Err(invalid(
            "ca",
            &cfg.ca,
            "holds no usable CA certificate".into(),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("ca", &cfg.ca, e.to_string()))?
        .with_root_certificates(roots);
    let mut client = match &cfg.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs("cert", cert)?;
            let k = PrivateKeyDer::from_pem_slice(&read("key", key)?)
                .map_err(|e| invalid("key", key, format!("no PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, k).map_err(|e| {
                invalid(
                    "key",
                    key,
                    format!("does not fit the certificate in {}: {e}", cert.display()),
                )
            })?
        }
    };
    client.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let mut h1 = client.clone();
    h1.alpn_protocols.retain(|p| p.as_slice() != b"h2");
    let name = match &cfg.server_name {
        None => None,
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|e| invalid("ca", &cfg.ca, format!("server_name \"{n}\": {e}")))?,
        ),
    };
    Ok(UpstreamTls {
        cfg: cfg.clone(),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        h1_connector: tokio_rustls::TlsConnector::from(Arc::new(h1)),
        name,
    })
}

/// Build the client configuration of every pool with `tls` (files read again); the first
/// that cannot be built is the error and nothing changes.
pub fn prepare(config: &LbConfig) -> Result<(), UpstreamTlsError> {
    let mut next: Vec<Arc<UpstreamTls>> = Vec::new();
    for p in &config.pools {
        let Some(t) = &p.tls else { continue };
        if next.iter().any(|c| c.cfg == *t) {
            continue;
        }
        next.push(Arc::new(build(&p.name, t)?));
    }
    CLIENTS.store(Arc::new(next));
    Ok(())
}

fn client(cfg: &PoolTls) -> Option<Arc<UpstreamTls>> {
    CLIENTS.load().iter().find(|c| c.cfg == *cfg).cloned()
}

/// A new HTTP/1.1 upstream connection: TCP, then the TLS handshake when the pool has
/// `tls` (ALPN without `h2`); each step within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&PoolTls>,
) -> Result<UpStream, ConnectError> {
    Ok(connect_with(addr, timeout, tls, false).await?.0)
}

/// [`connect`], offering the pool's whole `alpn` list (`h2` included): with whether the
/// server picked `h2`.
pub async fn connect_alpn(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&PoolTls>,
) -> Result<(UpStream, bool), ConnectError> {
    connect_with(addr, timeout, tls, true).await
}

async fn connect_with(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&PoolTls>,
    h2: bool,
) -> Result<(UpStream, bool), ConnectError> {
    let tcp = connect_tcp(addr, timeout).await?;
    let Some(cfg) = tls else {
        return Ok((UpStream::Plain(tcp), false));
    };
    let name = cfg
        .server_name
        .clone()
        .unwrap_or_else(|| addr.ip().to_string());
    let Some(c) = client(cfg) else {
        return Err(ConnectError::Tls {
            addr,
            name,
            source: io::Error::other("no TLS client configuration (not prepared)"),
        });
    };
    let server_name = c
        .name
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let connector = if h2 { &c.connector } else { &c.h1_connector };
    match tokio::time::timeout(timeout, connector.connect(server_name, tcp)).await {
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => Err(ConnectError::Tls { addr, name, source }),
        Ok(Ok(s)) => {
            let picked_h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok((UpStream::Tls(Box::new(s)), picked_h2))
        }
    }
}
