//! `[tls]` and `[firewall]`: how the site is served over HTTPS and which traffic the
//! hosts accept.
//!
//! ```toml
//! [tls]
//! self_signed = true            # or cert = "PATH" and key = "PATH" (PEM)
//! redirect_http = true          # plain HTTP answers with a redirect to HTTPS
//! replication = true            # PostgreSQL replication and client links over TLS
//!
//! [firewall]
//! policy = "drop"               # what happens to incoming traffic no rule allows
//! admin = ["10.0.0.0/24"]       # where operators come from: ssh, lb entries, agent APIs
//! ssh = 22                      # the ssh port opened to `admin` (0: none)
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
            cert: PathBuf::from(c.get_ref()),
            key: PathBuf::from(k.get_ref()),
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
    Some(TlsConfig {
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
    Some(FirewallConfig {
        policy,
        allow,
        admin,
        ssh,
    })
}
