//! The TLS sections of the balancer's configuration: a listener's `tls` (certificates
//! chosen by SNI, session resumption) and a pool's `tls` (TLS to the servers).
//!
//! ```toml
//! [[listener]]
//! name = "web"
//! address = "0.0.0.0:443"
//! pool = "web"
//! [listener.tls]
//! cert = "site-ecdsa.pem"          # the default certificate (chain) and its key
//! key = "site-ecdsa.key"
//! # more certificates: by SNI (names from the certificate unless given), and RSA beside
//! # ECDSA for the same names (the client's offered signature schemes choose)
//! certificates = [
//!   { cert = "site-rsa.pem", key = "site-rsa.key" },
//!   { cert = "other.pem", key = "other.key", names = ["other.example", "*.other.example"] },
//! ]
//! hsts = "365d"
//! redirect_from = "0.0.0.0:80"
//! session_tickets = true           # TLS 1.3 tickets and 1.2 tickets (default on)
//! session_cache = 20000            # TLS 1.2 session IDs kept (0: none)
//! ticket_keys_file = "/var/lib/rampart/ticket.keys"  # shared by the balancers of a pair
//! ticket_keys_rotate = "12h"       # this balancer rotates the file (one of the pair)
//! ocsp_stapling = true             # staple OCSP answers where a certificate names a responder
//!
//! [[pool]]
//! name = "web"
//! servers = [{ address = "10.0.0.5:443" }]
//! tls = { ca = "ca.pem", server_name = "web.internal", cert = "lb.pem", key = "lb.key" }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// Tickets are issued with a key for at most this long past its introduction (TLS 1.3
/// caps a ticket's lifetime at 7 days).
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 86400);
/// In-memory ticket keys (no `ticket_keys_file`) rotate this often unless told.
pub const DEFAULT_TICKET_ROTATE: Duration = Duration::from_secs(12 * 3600);
/// TLS 1.2 sessions kept for resumption by session ID, unless told.
pub const DEFAULT_SESSION_CACHE: usize = 20_000;

/// TLS termination of one listener: its certificates (PEM files, read at start, on reload
/// and whenever their modification time changes) and session resumption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Never empty; the first is the default (with every other one naming the same hosts),
    /// presented when the client names no host or one no certificate is for.
    pub certs: Vec<CertFiles>,
    /// `Strict-Transport-Security: max-age=<seconds>` on every response, when set.
    pub hsts_max_age: Option<u64>,
    pub resumption: Resumption,
    /// The first certificate is ordered from an ACME CA (and kept in its state folder).
    pub acme: Option<super::acme::Acme>,
    /// Staple OCSP answers for the certificates that name a responder (default on).
    pub ocsp_stapling: bool,
}

/// One certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// Relative paths in the file are taken from the config file's folder.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Host names (lower case, `*.example.org` wildcards) this certificate is chosen for by
    /// SNI; empty: the DNS names of the certificate's subjectAltName.
    pub names: Vec<String>,
    /// May be absent (an ACME certificate not ordered yet): then skipped, not an error.
    pub optional: bool,
}

/// Session resumption of a listener. Early data (0-RTT) is never accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    /// Stateless tickets (TLS 1.3, and TLS 1.2 clients that ask).
    pub tickets: bool,
    /// TLS 1.2 sessions kept in memory for resumption by session ID (0: none).
    pub session_cache: usize,
    /// The ticket keys, shared with the other balancers that read the same file; `None`:
    /// random keys kept in memory.
    pub ticket_keys_file: Option<PathBuf>,
    /// When set with a file, this balancer rotates it this often (else it only reads it,
    /// and whoever owns it rotates it); without a file, the in-memory keys' rotation.
    pub ticket_keys_rotate: Option<Duration>,
}

impl Resumption {
    /// How often keys change, whoever changes them: a ticket stays valid this long.
    pub fn ticket_lifetime(&self) -> Duration {
        self.ticket_keys_rotate
            .unwrap_or(DEFAULT_TICKET_ROTATE)
            .min(MAX_TICKET_LIFETIME)
    }
}

impl Default for Resumption {
    fn default() -> Self {
        Resumption {
            tickets: true,
            session_cache: DEFAULT_SESSION_CACHE,
            ticket_keys_file: None,
            ticket_keys_rotate: None,
        }
    }
}

/// TLS from the balancer to a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTls {
    /// The CA certificates (PEM) a server's certificate must chain to.
    pub ca: PathBuf,
    /// The name the server's certificate must be valid for (also sent as SNI); `None`: the
    /// server's IP address.
    pub server_name: Option<String>,
    /// A client certificate chain and key presented to the servers (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`).
    pub alpn: Vec<String>,
}

impl PoolTls {
    /// Whether `h2` is offered: a server that picks it is sent its requests over HTTP/2.
    pub fn offers_h2(&self) -> bool {
        self.alpn.iter().any(|p| p == "h2")
    }
}

/// `tls = { cert = "PATH", key = "PATH", certificates = [...], hsts = "365d", redirect_from = "ADDR", ... }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    #[serde(default)]
    pub cert: Option<Spanned<String>>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub names: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub certificates: Option<Vec<Spanned<RawCert>>>,
    #[serde(default)]
    pub hsts: Option<Spanned<String>>,
    #[serde(default)]
    pub redirect_from: Option<Spanned<String>>,
    #[serde(default)]
    pub redirect_status: Option<Spanned<i64>>,
    #[serde(default)]
    pub session_tickets: Option<bool>,
    #[serde(default)]
    pub session_cache: Option<Spanned<i64>>,
    #[serde(default)]
    pub ticket_keys_file: Option<Spanned<String>>,
    #[serde(default)]
    pub ticket_keys_rotate: Option<Spanned<String>>,
    #[serde(default)]
    pub acme: Option<super::acme::RawAcme>,
    #[serde(default)]
    pub ocsp_stapling: Option<bool>,
}

/// `{ cert = "PATH", key = "PATH", names = ["HOST", ...] }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub names: Option<Vec<Spanned<String>>>,
}

/// `tls = { ca = "PATH", server_name = "NAME", cert = "PATH", key = "PATH", alpn = ["http/1.1"] }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    pub ca: Spanned<String>,
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    #[serde(default)]
    pub cert: Option<Spanned<String>>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub alpn: Option<Vec<Spanned<String>>>,
}

pub(super) fn file(c: &mut Checker<'_>, v: &Spanned<String>, what: &str) -> PathBuf {
    if v.get_ref().is_empty() {
        c.err(v, format!("tls {what} must name a PEM file"));
    }
    let dir = c.src.file.parent().unwrap_or(Path::new(""));
    dir.join(v.get_ref())
}

/// A host name for SNI selection: lower case, letters, digits, `-` and dots, or a
/// `*.` wildcard for one label.
pub(super) fn host_name(c: &mut Checker<'_>, v: &Spanned<String>) -> Option<String> {
    let n = v.get_ref().to_ascii_lowercase();
    let bare = n.strip_prefix("*.").unwrap_or(&n);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Some(n)
    } else {
        c.err(
            v,
            format!(
                "bad host name \"{}\"; expected a DNS name like \"www.example.org\" or \"*.example.org\"",
                v.get_ref()
            ),
        );
        None
    }
}

fn names(c: &mut Checker<'_>, v: &Option<Vec<Spanned<String>>>) -> Vec<String> {
    v.iter().flatten().filter_map(|n| host_name(c, n)).collect()
}

/// Check a listener's `tls` (all but `redirect_from`, which makes a listener and is the
/// caller's).
pub(super) fn listener_tls(c: &mut Checker<'_>, rt: &Spanned<RawListenerTls>) -> ListenerTls {
    let t = rt.get_ref();
    let mut certs = Vec::new();
    let acme = t.acme.as_ref().map(|a| super::acme::acme(c, a));
    if let Some(a) = &acme {
        certs.push(CertFiles {
            cert: a.cert_path(),
            key: a.key_path(),
            names: a.domains.clone(),
            optional: true,
        });
    }
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => certs.push(CertFiles {
            cert: file(c, cert, "cert"),
            key: file(c, key, "key"),
            names: names(c, &t.names),
            optional: false,
        }),
        (Some(cert), None) => c.err(cert, "tls cert needs its key = \"PATH\""),
        (None, Some(key)) => c.err(key, "tls key needs its cert = \"PATH\""),
        (None, None) => {
            if let Some(n) = t.names.as_ref().and_then(|n| n.first()) {
                c.err(n, "tls names needs cert = \"PATH\" and key = \"PATH\"");
            }
        }
    }
    for rc in t.certificates.iter().flatten() {
        let r = rc.get_ref();
        certs.push(CertFiles {
            cert: file(c, &r.cert, "cert"),
            key: file(c, &r.key, "key"),
            names: names(c, &r.names),
            optional: false,
        });
    }
    if certs.is_empty() && t.cert.is_none() && t.key.is_none() {
        c.err(
            rt,
            "tls needs a certificate: cert = \"PATH\" and key = \"PATH\", or certificates = [{ cert = \"PATH\", key = \"PATH\" }], or acme = { ... }",
        );
    }
    let hsts_max_age = t.hsts.as_ref().map(|h| {
        let d = c.positive_duration(&Some(h.clone()), Duration::from_secs(1), "hsts");
        d.as_secs().max(1)
    });
    let session_cache = c.int(
        &t.session_cache,
        DEFAULT_SESSION_CACHE as i64,
        0,
        10_000_000,
        "session_cache",
    ) as usize;
    let ticket_keys_file = t
        .ticket_keys_file
        .as_ref()
        .map(|f| file(c, f, "ticket_keys_file"));
    let ticket_keys_rotate = t.ticket_keys_rotate.as_ref().map(|r| {
        c.positive_duration(
            &Some(r.clone()),
            DEFAULT_TICKET_ROTATE,
            "ticket_keys_rotate",
        )
    });
    let tickets = t.session_tickets.unwrap_or(true);
    if !tickets {
        if let Some(f) = &t.ticket_keys_file {
            c.err(f, "ticket_keys_file needs session_tickets = true");
        }
    }
    ListenerTls {
        certs,
        hsts_max_age,
        resumption: Resumption {
            tickets,
            session_cache,
            ticket_keys_file,
            ticket_keys_rotate,
        },
        acme,
        ocsp_stapling: t.ocsp_stapling.unwrap_or(true),
    }
}

/// Check a pool's `tls`.
pub(super) fn pool_tls(c: &mut Checker<'_>, t: &RawPoolTls) -> PoolTls {
    let ca = file(c, &t.ca, "ca");
    let server_name = t.server_name.as_ref().and_then(|n| {
        // An IP address is a valid name too (a certificate with an IP subjectAltName).
        if n.get_ref().parse::<std::net::IpAddr>().is_ok() {
            Some(n.get_ref().clone())
        } else {
            let h = host_name(c, n)?;
            if h.starts_with("*.") {
                c.err(n, "server_name must be one host name, not a wildcard");
                return None;
            }
            Some(h)
        }
    });
    let client_cert = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some((file(c, cert, "cert"), file(c, key, "key"))),
        (Some(cert), None) => {
            c.err(cert, "tls cert needs its key = \"PATH\"");
            None
        }
        (None, Some(key)) => {
            c.err(key, "tls key needs its cert = \"PATH\"");
            None
        }
        (None, None) => None,
    };
    let alpn = match &t.alpn {
        None => vec!["http/1.1".to_string()],
        Some(list) => list
            .iter()
            .filter_map(|p| match p.get_ref().as_str() {
                "http/1.1" => Some(p.get_ref().clone()),
                "h2" => Some(p.get_ref().clone()),
                other => {
                    c.err(
                        p,
                        format!(
                            "unknown ALPN protocol \"{other}\"; expected \"h2\" or \"http/1.1\""
                        ),
                    );
                    None
                }
            })
            .collect(),
    };
    if let Some(list) = &t.alpn {
        for (i, p) in list.iter().enumerate() {
            if list[..i].iter().any(|q| q.get_ref() == p.get_ref()) {
                c.err(p, format!("ALPN protocol \"{}\" listed twice", p.get_ref()));
            }
        }
    }
    PoolTls {
        ca,
        server_name,
        client_cert,
        alpn,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::diag::Source;
    use crate::lb::LbConfig;
    use std::path::PathBuf;
    use std::time::Duration;

    fn errors(text: &str) -> Vec<String> {
        match LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics
                .iter()
                .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
                .collect(),
        }
    }

    const POOL: &str = "[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";

    #[test]
    fn several_certificates_with_names_and_resumption() {
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             [listener.tls]\ncert = \"ec.pem\"\nkey = \"ec.key\"\n\
             certificates = [{{ cert = \"rsa.pem\", key = \"rsa.key\" }}, {{ cert = \"/o.pem\", key = \"/o.key\", names = [\"Other.Example\", \"*.other.example\"] }}]\n\
             session_cache = 100\nticket_keys_file = \"keys\"\nticket_keys_rotate = \"1h\"\n{POOL}"
        );
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text.clone())).unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.certs.len(), 3);
        assert_eq!(t.certs[0].cert, PathBuf::from("/etc/rampart/ec.pem"));
        assert!(t.certs[1].names.is_empty());
        assert_eq!(t.certs[2].names, ["other.example", "*.other.example"]);
        let r = &t.resumption;
        assert!(r.tickets);
        assert_eq!(r.session_cache, 100);
        assert_eq!(
            r.ticket_keys_file.as_deref(),
            Some(std::path::Path::new("/etc/rampart/keys"))
        );
        assert_eq!(r.ticket_keys_rotate, Some(Duration::from_secs(3600)));
        assert_eq!(r.ticket_lifetime(), Duration::from_secs(3600));
        assert!(t.ocsp_stapling);
        let off = LbConfig::from_source(&Source::new(
            "/etc/rampart/lb.toml",
            text.replace(
                "session_cache = 100",
                "session_cache = 100\nocsp_stapling = false",
            ),
        ))
        .unwrap();
        assert!(!off.listeners[0].tls.as_ref().unwrap().ocsp_stapling);
    }

    #[test]
    fn listener_tls_errors_have_positions() {
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             tls = {{ certificates = [{{ cert = \"a\", key = \"b\", names = [\"bad name\"] }}], session_cache = -1, session_tickets = false, ticket_keys_file = \"k\" }}\n{POOL}"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e.iter().all(|m| m.starts_with("5:")), "{e:#?}");
        assert!(e.iter().any(|m| m.contains("bad host name \"bad name\"")));
        assert!(e
            .iter()
            .any(|m| m.contains("session_cache must be between")));
        assert!(e
            .iter()
            .any(|m| m.contains("ticket_keys_file needs session_tickets = true")));
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\ntls = {{ hsts = \"1d\" }}\n{POOL}"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("5:7: tls needs a certificate"), "{e:#?}");
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             [listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nocsp_stapling = \"no\"\n{POOL}"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("8:17:"), "{e:#?}");
        assert!(e[0].contains("bool"), "{e:#?}");
    }

    #[test]
    fn pool_tls_parses_and_checks() {
        let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n\
             tls = { ca = \"ca.pem\", server_name = \"Web.Internal\", cert = \"c.pem\", key = \"k.pem\", alpn = [\"http/1.1\"] }\n";
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)).unwrap();
        let t = c.pools[0].tls.as_ref().unwrap();
        assert_eq!(t.ca, PathBuf::from("/etc/rampart/ca.pem"));
        assert_eq!(t.server_name.as_deref(), Some("web.internal"));
        assert_eq!(
            t.client_cert,
            Some((
                PathBuf::from("/etc/rampart/c.pem"),
                PathBuf::from("/etc/rampart/k.pem")
            ))
        );
        assert_eq!(t.alpn, ["http/1.1"]);
        assert!(!t.offers_h2());
        let h2 = text.replace("alpn = [\"http/1.1\"]", "alpn = [\"h2\", \"http/1.1\"]");
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", h2)).unwrap();
        let t = c.pools[0].tls.as_ref().unwrap();
        assert_eq!(t.alpn, ["h2", "http/1.1"]);
        assert!(t.offers_h2());
        let text = text.replace(
            "server_name = \"Web.Internal\", cert = \"c.pem\", key = \"k.pem\", alpn = [\"http/1.1\"]",
            "server_name = \"*.x\", cert = \"c.pem\", alpn = [\"spdy\", \"h2\", \"h2\"]",
        );
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e.iter().all(|m| m.starts_with("8:")), "{e:#?}");
        assert!(e
            .iter()
            .any(|m| m.contains("ALPN protocol \"h2\" listed twice")));
        assert!(e.iter().any(|m| m.contains("not a wildcard")));
        assert!(e
            .iter()
            .any(|m| m.contains("unknown ALPN protocol \"spdy\"")));
        assert!(e.iter().any(|m| m.contains("tls cert needs its key")));
    }

    #[test]
    fn a_tcp_listener_cannot_use_a_tls_pool() {
        let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\nmode = \"tcp\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\ntls = { ca = \"ca.pem\" }\n";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("5:8: a pool with tls serves HTTP listeners only"),
            "{e:#?}"
        );
    }
}
