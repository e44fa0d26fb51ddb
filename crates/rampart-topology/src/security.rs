//! `[tls]` and `[firewall]`: how the site is served over HTTPS and which traffic the
//! hosts accept.
//!
//! ```toml
//! [tls]
//! self_signed = true            # or cert = "PATH" and key = "PATH" (PEM), ca = "PATH"
//! dir = ".rampart/main/tls"     # self_signed: where rampart up writes its CA and certificates
//! redirect_http = true          # plain-HTTP lb listeners answer 308 to the HTTPS listener
//! replication = true            # PostgreSQL streaming replication over TLS (verify-ca)
//! upstream = true               # balancers -> web nodes over TLS (default: on when the nodes
//!                               # are separate hosts, `rampart up --hosts netns`; off on loopback)
//!
//! [firewall]
//! policy = "drop"               # what happens to incoming traffic no rule allows
//! admin = ["10.0.0.0/24"]       # where operators come from: ssh, lb entries, agent APIs
//! ssh = 22                      # the ssh port opened to `admin` (0: none)
//! trusted = ["10.0.0.5/32"]     # reach every port of every node (the host running rampart up's checks)
//! allow = [                     # extra openings, on every node
//!   { port = 443, from = "0.0.0.0/0" },   # the site, from anywhere
//!   { port = 5441, from = "10.0.0.0/8" }, # a database port, from the cluster's network
//! ]
//! ```

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, Source};
use crate::lb::Cidr;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default)]
    pub self_signed: Option<Spanned<bool>>,
    #[serde(default)]
    pub cert: Option<Spanned<String>>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub redirect_http: Option<Spanned<bool>>,
    #[serde(default)]
    pub replication: Option<Spanned<bool>>,
    /// TLS from the balancers to the web nodes (each web node a certificate of the stack's
    /// CA, every pool of web nodes verifying it).
    #[serde(default)]
    pub upstream: Option<Spanned<bool>>,
    /// The CA certificate that signed `cert` (clients and replicas verify with it).
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    /// With `self_signed`: the folder of the generated CA and certificates.
    #[serde(default)]
    pub dir: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FirewallSection {
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    #[serde(default)]
    pub admin: Vec<Spanned<String>>,
    #[serde(default)]
    pub ssh: Option<Spanned<i64>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawAllow>>,
    #[serde(default)]
    pub trusted: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub port: Spanned<i64>,
    pub from: Spanned<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    SelfSigned,
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificate: Certificate,
    pub redirect_http: bool,
    pub replication: bool,
    /// `upstream = true` (with `self_signed`): every web node serves HTTPS with its own
    /// pair signed by the stack's CA ([`TlsConfig::web_pair`]), and every `[[lb.pool]]`
    /// of web nodes without a `tls` of its own verifies them against that CA. Off unless
    /// set; the separate-hosts rehearsal sets it when the file does not say.
    pub upstream: bool,
    /// `ca`: the CA of `cert` (absolute). With `self_signed`, `<dir>/ca.crt`.
    pub ca: Option<PathBuf>,
    /// Where `rampart up` writes the self-signed material (absolute; default
    /// `.rampart/<cluster>/tls` beside the topology file).
    pub dir: PathBuf,
}

/// File names of the self-signed material in [`TlsConfig::dir`].
pub const SELF_SIGNED_CA: (&str, &str) = ("ca.crt", "ca.key");
pub const SELF_SIGNED_DB: (&str, &str) = ("db.crt", "db.key");

impl TlsConfig {
    /// The certificate and key PostgreSQL serves replication with (self-signed: the db
    /// pair `rampart up` makes in `dir`, signed by its CA).
    pub fn db_pair(&self) -> (PathBuf, PathBuf) {
        match &self.certificate {
            Certificate::SelfSigned => (
                self.dir.join(SELF_SIGNED_DB.0),
                self.dir.join(SELF_SIGNED_DB.1),
            ),
            Certificate::Files { cert, key } => (cert.clone(), key.clone()),
        }
    }

    /// The certificate and key web node `node` serves the balancers with under
    /// `upstream` (self-signed: made by `rampart up` in `dir`).
    pub fn web_pair(&self, node: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("web-{node}.crt")),
            self.dir.join(format!("web-{node}.key")),
        )
    }

    /// What a client (a replica, a drill) trusts: the CA, else the certificate itself
    /// (a self-signed one, or a chain file).
    pub fn trust_file(&self) -> PathBuf {
        match (&self.ca, &self.certificate) {
            (Some(ca), _) => ca.clone(),
            (None, Certificate::Files { cert, .. }) => cert.clone(),
            (None, Certificate::SelfSigned) => self.dir.join(SELF_SIGNED_CA.0),
        }
    }
}

/// A path of the file, relative to its folder.
fn resolve(src: &Source, p: &str) -> PathBuf {
    let p = std::path::Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    src.file
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Drop,
    Accept,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub port: u16,
    pub from: Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    pub policy: Policy,
    pub allow: Vec<AllowRule>,
    /// Networks operators come from (admin ports: ssh, lb entries, agent APIs, monitor).
    pub admin: Vec<Cidr>,
    /// The ssh port opened to `admin` (None: no ssh rule).
    pub ssh: Option<u16>,
    /// Sources that reach every port of every node: an operations host that runs the
    /// stack's health checks (`rampart up`'s machine in the separate-hosts rehearsal).
    pub trusted: Vec<Cidr>,
}

impl FirewallConfig {
    /// The sources allowed to reach `port` (empty when no rule names it).
    pub fn allowed_from(&self, port: u16) -> Vec<Cidr> {
        self.allow
            .iter()
            .filter(|r| r.port == port)
            .map(|r| r.from)
            .collect()
    }
}

pub(crate) fn validate_tls(
    src: &Source,
    cluster: &str,
    s: &TlsSection,
    errs: &mut Vec<Diagnostic>,
) -> Option<TlsConfig> {
    let self_signed = s
        .self_signed
        .as_ref()
        .map(|b| *b.get_ref())
        .unwrap_or(false);
    let certificate = match (self_signed, &s.cert, &s.key) {
        (true, None, None) => Certificate::SelfSigned,
        (true, Some(c), _) => {
            errs.push(src.error_at(
                c.span(),
                "give either self_signed = true or cert and key, not both",
            ));
            Certificate::SelfSigned
        }
        (true, None, Some(k)) => {
            errs.push(src.error_at(
                k.span(),
                "give either self_signed = true or cert and key, not both",
            ));
            Certificate::SelfSigned
        }
        (false, Some(c), Some(k)) => Certificate::Files {
            cert: resolve(src, c.get_ref()),
            key: resolve(src, k.get_ref()),
        },
        (false, Some(c), None) => {
            errs.push(src.error_at(c.span(), "cert needs key = \"PATH\" too"));
            return None;
        }
        (false, None, Some(k)) => {
            errs.push(src.error_at(k.span(), "key needs cert = \"PATH\" too"));
            return None;
        }
        (false, None, None) => {
            errs.push(
                src.error("[tls] needs self_signed = true or cert = \"PATH\" and key = \"PATH\""),
            );
            return None;
        }
    };
    let dir = match &s.dir {
        Some(d) if d.get_ref().is_empty() => {
            errs.push(src.error_at(d.span(), "dir must name a folder"));
            return None;
        }
        Some(d) => resolve(src, d.get_ref()),
        None => resolve(src, &format!(".rampart/{cluster}/tls")),
    };
    let ca = match (&s.ca, &certificate) {
        (Some(c), Certificate::SelfSigned) => {
            errs.push(src.error_at(
                c.span(),
                "with self_signed = true rampart up makes its own CA (in dir); ca goes with cert and key",
            ));
            None
        }
        (Some(c), _) => Some(resolve(src, c.get_ref())),
        (None, Certificate::SelfSigned) => Some(dir.join(SELF_SIGNED_CA.0)),
        (None, _) => None,
    };
    let upstream = match &s.upstream {
        Some(u) if *u.get_ref() && certificate != Certificate::SelfSigned => {
            errs.push(src.error_at(
                u.span(),
                "upstream = true needs self_signed = true (rampart up issues each web node a \
                 certificate from the stack's CA); with your own certificates give each \
                 [[web.node]] tls = { cert, key } and each [[lb.pool]] tls = { ca }",
            ));
            false
        }
        Some(u) => *u.get_ref(),
        None => false,
    };
    Some(TlsConfig {
        ca,
        dir,
        certificate,
        redirect_http: s
            .redirect_http
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(true),
        replication: s
            .replication
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(false),
        upstream,
    })
}

pub(crate) fn validate_firewall(
    src: &Source,
    s: &FirewallSection,
    errs: &mut Vec<Diagnostic>,
) -> Option<FirewallConfig> {
    let policy = match s.policy.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("drop") => Policy::Drop,
        Some("accept") => Policy::Accept,
        Some(other) => {
            if let Some(p) = &s.policy {
                errs.push(src.error_at(
                    p.span(),
                    format!("unknown firewall policy \"{other}\"; expected \"drop\" or \"accept\""),
                ));
            }
            Policy::Drop
        }
    };
    let mut allow = Vec::new();
    for r in &s.allow {
        let r = r.get_ref();
        let port = match u16::try_from(*r.port.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                errs.push(src.error_at(r.port.span(), "port must be 1..=65535"));
                continue;
            }
        };
        match r.from.get_ref().parse::<Cidr>() {
            Ok(from) => allow.push(AllowRule { port, from }),
            Err(m) => errs.push(src.error_at(r.from.span(), m)),
        }
    }
    let mut admin = Vec::new();
    for a in &s.admin {
        match a.get_ref().parse::<Cidr>() {
            Ok(c) => admin.push(c),
            Err(m) => errs.push(src.error_at(a.span(), m)),
        }
    }
    let ssh = match &s.ssh {
        None => Some(22),
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(0) => None,
            Ok(p) => Some(p),
            Err(_) => {
                errs.push(src.error_at(p.span(), "ssh must be a port 1..=65535, or 0 for none"));
                None
            }
        },
    };
    let mut trusted = Vec::new();
    for a in &s.trusted {
        match a.get_ref().parse::<Cidr>() {
            Ok(c) => trusted.push(c),
            Err(m) => errs.push(src.error_at(a.span(), m)),
        }
    }
    Some(FirewallConfig {
        policy,
        allow,
        admin,
        ssh,
        trusted,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tls(text: &str) -> (Option<TlsConfig>, Vec<Diagnostic>) {
        let src = Source::new("/etc/rampart/t.toml", text);
        let s: TlsSection = src.parse().unwrap();
        let mut errs = Vec::new();
        (validate_tls(&src, "main", &s, &mut errs), errs)
    }

    #[test]
    fn material_paths_follow_the_file_and_the_mode() {
        // Own files: relative to the topology's folder; replicas trust the CA given.
        let (t, errs) = tls(
            "cert = \"site.crt\"\nkey = \"/k/site.key\"\nca = \"ca.crt\"\nreplication = true\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let t = t.unwrap();
        assert_eq!(
            t.db_pair(),
            (
                PathBuf::from("/etc/rampart/site.crt"),
                PathBuf::from("/k/site.key")
            )
        );
        assert_eq!(t.trust_file(), PathBuf::from("/etc/rampart/ca.crt"));
        assert!(t.redirect_http && t.replication);
        // Without ca, the certificate file itself (a chain, or a self-signed one).
        let (t, _) = tls("cert = \"site.crt\"\nkey = \"site.key\"\nredirect_http = false\n");
        let t = t.unwrap();
        assert_eq!(t.trust_file(), PathBuf::from("/etc/rampart/site.crt"));
        assert!(!t.redirect_http && !t.replication);
        // Self-signed: everything in dir (default .rampart/<cluster>/tls beside the file).
        let (t, _) = tls("self_signed = true\n");
        let t = t.unwrap();
        assert_eq!(t.dir, PathBuf::from("/etc/rampart/.rampart/main/tls"));
        assert_eq!(t.trust_file(), t.dir.join("ca.crt"));
        assert_eq!(t.db_pair(), (t.dir.join("db.crt"), t.dir.join("db.key")));
        // upstream: off unless set; with own certificates it has no pairs to give.
        let (t, _) = tls("self_signed = true\nupstream = true\n");
        let t = t.unwrap();
        assert!(t.upstream);
        assert_eq!(
            t.web_pair("web1"),
            (t.dir.join("web-web1.crt"), t.dir.join("web-web1.key"))
        );
        let (_, errs) = tls("cert = \"a\"\nkey = \"b\"\nupstream = true\n");
        assert_eq!((errs[0].line, errs[0].col), (3, 12), "{errs:?}");
        assert!(errs[0].message.contains("needs self_signed"), "{errs:?}");
        // ca makes no sense with self_signed.
        let (_, errs) = tls("self_signed = true\nca = \"x.crt\"\n");
        assert!(
            errs[0].message.contains("rampart up makes its own CA"),
            "{errs:?}"
        );
    }
}
