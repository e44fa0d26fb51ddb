//! A TLS listener's `acme` section: its certificate is ordered from an ACME (RFC 8555)
//! certificate authority, kept in a state folder and renewed ahead of its expiry.
//!
//! ```toml
//! [listener.tls]                     # a table of its own (or `acme = { ... }` in it)
//! [listener.tls.acme]
//! directory = "https://acme-v02.api.letsencrypt.org/directory"
//! email = "ops@example.org"          # the account's contact (optional)
//! domains = ["example.org", "www.example.org"]
//! challenge = "http-01"              # or "tls-alpn-01"
//! state_dir = "/var/lib/rampart/acme/web"   # account key, certificate and key (0600)
//! renew_before = "30d"               # renew when the certificate expires within this
//! ca = "pebble-ca.pem"               # trust these CAs for the directory's HTTPS (optional;
//!                                    # default: the system's bundle)
//! etcd = ["http://10.0.0.1:2379"]    # optional, with cluster: the balancers of a pair share
//! cluster = "main"                   # one order (a lock in etcd) and its result
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// A certificate is renewed this long before it expires, unless told.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `GET http://NAME/.well-known/acme-challenge/TOKEN` on port 80, answered by the
    /// balancer's plain-HTTP listeners.
    Http01,
    /// A TLS handshake on port 443 with ALPN `acme-tls/1` (RFC 8737), answered by the
    /// TLS listener itself.
    TlsAlpn01,
}

/// `acme = { ... }` of a listener's `tls`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The directory URL (https).
    pub directory: String,
    /// The account's contact address (`mailto:` is added).
    pub email: Option<String>,
    /// Lower case DNS names, no wildcard (neither challenge proves one); never empty.
    pub domains: Vec<String>,
    pub challenge: Challenge,
    /// Account key, certificate and its key.
    pub state_dir: PathBuf,
    pub renew_before: Duration,
    /// CA certificates (PEM) the directory's HTTPS certificate must chain to; `None`: the
    /// system's bundle.
    pub ca: Option<PathBuf>,
    /// Balancers with the same etcd, cluster and first domain share one order.
    pub share: Option<AcmeShare>,
}

/// `etcd` and `cluster` of an `acme` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeShare {
    pub etcd: Vec<String>,
    pub cluster: String,
}

impl Acme {
    /// The stored certificate chain (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("cert.pem")
    }

    /// The stored certificate's key (PEM, PKCS#8).
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("key.pem")
    }
}

/// `acme = { directory = "URL", email = "ADDR", domains = [...], challenge = "http-01", state_dir = "DIR", renew_before = "30d", ca = "PATH" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Spanned<String>,
    #[serde(default)]
    pub email: Option<Spanned<String>>,
    pub domains: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub challenge: Option<Spanned<String>>,
    pub state_dir: Spanned<String>,
    #[serde(default)]
    pub renew_before: Option<Spanned<String>>,
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    #[serde(default)]
    pub etcd: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub cluster: Option<Spanned<String>>,
}

/// Check a listener's `tls.acme`.
pub(super) fn acme(c: &mut Checker<'_>, r: &RawAcme) -> Acme {
    let directory = r.directory.get_ref().clone();
    if !https_url(&directory) {
        c.err(
            &r.directory,
            format!("acme directory must be an https:// URL, got \"{directory}\""),
        );
    }
    let email = r.email.as_ref().and_then(|e| {
        let v = e.get_ref();
        let ok = v
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.'))
            && !v.bytes().any(|b| b.is_ascii_whitespace() || b == b',');
        if ok {
            Some(v.clone())
        } else {
            c.err(e, format!("bad acme email \"{v}\"; expected name@domain"));
            None
        }
    });
    if r.domains.get_ref().is_empty() {
        c.err(&r.domains, "acme needs at least one domain");
    }
    let mut domains: Vec<String> = Vec::new();
    for d in r.domains.get_ref() {
        let Some(n) = super::tls::host_name(c, d) else {
            continue;
        };
        if n.starts_with("*.") {
            c.err(
                d,
                "acme cannot order a wildcard name (it needs the dns-01 challenge)",
            );
        } else if domains.contains(&n) {
            c.err(d, format!("duplicate acme domain \"{n}\""));
        } else {
            domains.push(n);
        }
    }
    let challenge = match &r.challenge {
        None => Challenge::Http01,
        Some(s) => match s.get_ref().as_str() {
            "http-01" => Challenge::Http01,
            "tls-alpn-01" => Challenge::TlsAlpn01,
            other => {
                c.err(
                    s,
                    format!(
                        "unknown acme challenge \"{other}\"; expected \"http-01\" or \"tls-alpn-01\""
                    ),
                );
                Challenge::Http01
            }
        },
    };
    if r.state_dir.get_ref().is_empty() {
        c.err(&r.state_dir, "acme state_dir must name a folder");
    }
    let state_dir = c
        .src
        .file
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join(r.state_dir.get_ref());
    let renew_before = c.positive_duration(&r.renew_before, DEFAULT_RENEW_BEFORE, "renew_before");
    let ca = r.ca.as_ref().map(|f| super::tls::file(c, f, "acme ca"));
    if let Some(e) = &r.etcd {
        if e.get_ref().is_empty() {
            c.err(e, "acme etcd needs at least one endpoint");
        }
        for u in e.get_ref() {
            let v = u.get_ref();
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                c.err(
                    u,
                    format!("bad etcd endpoint \"{v}\"; expected a URL such as \"http://127.0.0.1:2379\""),
                );
            }
        }
    }
    if let Some(cl) = &r.cluster {
        if cl.get_ref().is_empty() || cl.get_ref().contains('/') {
            c.err(cl, "acme cluster must be a name without '/'");
        }
    }
    let share = match (&r.etcd, &r.cluster) {
        (Some(e), Some(cl)) => Some(AcmeShare {
            etcd: e.get_ref().iter().map(|u| u.get_ref().clone()).collect(),
            cluster: cl.get_ref().clone(),
        }),
        (Some(e), None) => {
            c.err(e, "acme etcd needs cluster = \"NAME\"");
            None
        }
        (None, Some(cl)) => {
            c.err(cl, "acme cluster needs etcd = [\"URL\"]");
            None
        }
        (None, None) => None,
    };
    Acme {
        directory,
        email,
        domains,
        challenge,
        state_dir,
        renew_before,
        ca,
        share,
    }
}

/// An `https://HOST[:PORT]/PATH` URL, checked without a URL crate.
fn https_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    !authority.is_empty()
        && !authority.contains('@')
        && !s
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::diag::Source;
    use crate::lb::LbConfig;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::Challenge;

    const POOL: &str = "[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";

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

    #[test]
    fn an_acme_listener_needs_no_certificate_file() {
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             [listener.tls]\nredirect_from = \"127.0.0.1:80\"\n\
             acme = {{ directory = \"https://127.0.0.1:14000/dir\", email = \"ops@example.org\", domains = [\"Example.org\", \"www.example.org\"], challenge = \"tls-alpn-01\", state_dir = \"acme\", renew_before = \"10d\", ca = \"/ca.pem\" }}\n{POOL}"
        );
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)).unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        let a = t.acme.as_ref().unwrap();
        assert_eq!(a.domains, ["example.org", "www.example.org"]);
        assert_eq!(a.challenge, Challenge::TlsAlpn01);
        assert_eq!(a.state_dir, PathBuf::from("/etc/rampart/acme"));
        assert_eq!(a.renew_before, Duration::from_secs(10 * 86400));
        assert_eq!(a.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(a.email.as_deref(), Some("ops@example.org"));
        assert_eq!(a.share, None);
        // The ordered certificate is the listener's first (default) one, for its domains.
        assert_eq!(t.certs.len(), 1);
        assert_eq!(t.certs[0].cert, PathBuf::from("/etc/rampart/acme/cert.pem"));
        assert!(t.certs[0].optional);
        assert_eq!(t.certs[0].names, a.domains);
    }

    #[test]
    fn a_pair_shares_through_etcd() {
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             tls = {{ acme = {{ directory = \"https://ca/dir\", domains = [\"a.example\"], state_dir = \"/s\", etcd = [\"http://127.0.0.1:2379\"], cluster = \"main\" }} }}\n{POOL}"
        );
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)).unwrap();
        let a = c.listeners[0].tls.as_ref().unwrap().acme.as_ref().unwrap();
        let s = a.share.as_ref().unwrap();
        assert_eq!(s.etcd, ["http://127.0.0.1:2379"]);
        assert_eq!(s.cluster, "main");
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             tls = {{ acme = {{ directory = \"https://ca/dir\", domains = [\"a.example\"], state_dir = \"/s\", etcd = [\"127.0.0.1:2379\"] }} }}\n{POOL}"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e.iter().any(|m| m.contains("bad etcd endpoint")), "{e:#?}");
        assert!(
            e.iter().any(|m| m.contains("acme etcd needs cluster")),
            "{e:#?}"
        );
    }

    #[test]
    fn acme_errors_have_positions() {
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             [listener.tls]\n[listener.tls.acme]\ndirectory = \"http://x/dir\"\nemail = \"nobody\"\ndomains = [\"*.example.org\", \"a.example\", \"a.example\"]\nchallenge = \"dns-01\"\nstate_dir = \"\"\nrenew_before = \"0s\"\n{POOL}"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 7, "{e:#?}");
        for (line, want) in [
            (7, "7:13: acme directory must be an https:// URL"),
            (8, "8:9: bad acme email"),
            (9, "9:12: acme cannot order a wildcard"),
            (9, "9:42: duplicate acme domain"),
            (10, "10:13: unknown acme challenge"),
            (11, "11:13: acme state_dir must name a folder"),
            (12, "12:16: renew_before must be greater than zero"),
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "line {line}: {want}: {e:#?}"
            );
        }
        for want in [
            "acme directory must be an https:// URL",
            "bad acme email \"nobody\"",
            "acme cannot order a wildcard name",
            "duplicate acme domain \"a.example\"",
            "unknown acme challenge \"dns-01\"",
            "acme state_dir must name a folder",
            "renew_before must be greater than zero",
        ] {
            assert!(e.iter().any(|m| m.contains(want)), "{want}: {e:#?}");
        }
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\npool = \"p\"\n\
             [listener.tls]\n[listener.tls.acme]\ndirectory = \"https://ca.example/dir\"\ndomains = []\nstate_dir = \"s\"\nwho = 1\n{POOL}"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("10:1:"), "{e:#?}");
        let text = text.replace("who = 1\n", "");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("8:11: acme needs at least one domain"),
            "{e:#?}"
        );
    }
}
