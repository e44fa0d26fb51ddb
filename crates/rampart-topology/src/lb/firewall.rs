//! `firewall = { ... }` of a listener: the L7 firewall in the balancer (what HAProxy's
//! ACLs and stick tables do), checked before a request reaches a pool.
//!
//! ```toml
//! [[listener]]
//! name = "site"
//! address = "0.0.0.0:80"
//! pool = "web"
//! firewall = { deny = ["203.0.113.0/24", "2001:db8::/32"], deny_file = "deny.txt",
//!              allow = [],                    # when not empty: only these sources
//!              rate = "20/s", burst = 40,     # per client address: 429 + Retry-After past it
//!              max_connections_per_client = 50,
//!              methods = ["GET", "HEAD", "POST"],   # others: 405 with Allow
//!              max_body = "10MB",             # 413 (Content-Length or a chunked body past it)
//!              min_upload_rate = "10kB/s",    # a slower body (after its first second): 408
//!              client_address = "x-forwarded-for" }  # behind trusted proxies (see below)
//! ```
//!
//! `client_address`: whose address the per-request rules count and check. `"peer"` (the
//! default): the connection's source. `"x-forwarded-for"`: for a request from one of the
//! lb file's `forwarded.trusted_proxies`, the nearest address its `X-Forwarded-For` names
//! that is not itself a trusted proxy (as nginx's `real_ip_recursive`); the rate limit,
//! and the allow, deny and run-time block lists, then apply to that client per request
//! (403). A request from any other peer is judged by its own address, whatever it sends.
//!
//! `deny_file` holds one network per line (`#` comments, blank lines), read at start and
//! on every reload (tens of thousands of entries cost a binary search per connection).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, Cidr};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny_file: Option<Spanned<String>>,
    #[serde(default)]
    pub rate: Option<Spanned<String>>,
    #[serde(default)]
    pub burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_connections_per_client: Option<Spanned<i64>>,
    #[serde(default)]
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub max_body: Option<Spanned<String>>,
    #[serde(default)]
    pub min_upload_rate: Option<Spanned<String>>,
    #[serde(default)]
    pub client_address: Option<Spanned<String>>,
}

/// Whose address a listener's per-request rules judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAddress {
    /// The connection's source.
    #[default]
    Peer,
    /// From trusted proxies: the nearest untrusted address of `X-Forwarded-For`.
    XForwardedFor,
}

/// Requests per second a client may make, with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// A listener's validated firewall.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Firewall {
    /// Not empty: only clients in these networks are served.
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// More deny entries, one network per line (relative paths from the config's folder).
    pub deny_file: Option<PathBuf>,
    pub rate: Option<RateLimit>,
    pub max_connections_per_client: Option<u32>,
    /// Upper-case method names; `None`: every method.
    pub methods: Option<Vec<String>>,
    pub max_body: Option<u64>,
    /// Bytes per second a request body must keep up (after its first second); a slower
    /// upload is answered 408 and its server connection freed.
    pub min_upload_rate: Option<u64>,
    pub client_address: ClientAddress,
}

/// `"20/s"`, `"600/m"`, `"3600/h"` as requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("bad rate \"{s}\"; expected requests per unit, e.g. \"20/s\", \"600/m\"");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if !n.is_finite() || n <= 0.0 || n > 1e9 {
        return Err(bad());
    }
    Ok(n / per)
}

/// Validate one listener's `firewall`; `dir`: the config file's folder.
pub(super) fn validate(c: &mut Checker<'_>, raw: &RawFirewall, dir: &std::path::Path) -> Firewall {
    let nets = |c: &mut Checker<'_>, list: &[Spanned<String>]| -> Vec<Cidr> {
        let mut out = Vec::new();
        for v in list {
            match v.get_ref().parse::<Cidr>() {
                Ok(n) => out.push(n),
                Err(e) => c.err(v, e),
            }
        }
        out
    };
    let allow = nets(c, &raw.allow);
    let deny = nets(c, &raw.deny);
    let deny_file = raw.deny_file.as_ref().map(|f| {
        if f.get_ref().is_empty() {
            c.err(f, "deny_file must name a file of networks, one per line");
        }
        dir.join(f.get_ref())
    });
    let rate = raw
        .rate
        .as_ref()
        .and_then(|r| match parse_rate(r.get_ref()) {
            Ok(per_second) => {
                let default_burst = per_second.ceil().max(1.0) as i64;
                let burst = c.int(
                    &raw.burst,
                    default_burst.min(1_000_000),
                    1,
                    1_000_000,
                    "burst",
                ) as u32;
                Some(RateLimit { per_second, burst })
            }
            Err(e) => {
                c.err(r, e);
                None
            }
        });
    if raw.burst.is_some() && raw.rate.is_none() {
        if let Some(b) = &raw.burst {
            c.err(b, "burst needs rate = \"N/s\"");
        }
    }
    let max_connections_per_client = raw.max_connections_per_client.as_ref().map(|_| {
        c.int(
            &raw.max_connections_per_client,
            1,
            1,
            1_000_000,
            "max_connections_per_client",
        ) as u32
    });
    let methods = raw.methods.as_ref().map(|list| {
        if list.get_ref().is_empty() {
            // An empty list would refuse everything: almost certainly a mistake.
            c.err(
                list,
                "methods is empty: name the methods to serve, e.g. [\"GET\", \"HEAD\", \"POST\"]",
            );
        }
        let mut out = Vec::new();
        for m in list.get_ref() {
            let s = m.get_ref();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                c.err(m, format!("\"{s}\" is not an HTTP method (e.g. \"GET\")"));
            } else {
                out.push(s.to_ascii_uppercase());
            }
        }
        out
    });
    let max_body = raw
        .max_body
        .as_ref()
        .and_then(|m| match crate::db::parse_size(m.get_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                c.err(m, format!("max_body: {e}"));
                None
            }
        });
    let min_upload_rate = raw.min_upload_rate.as_ref().and_then(|m| {
        let v = m.get_ref();
        match v
            .strip_suffix("/s")
            .map(crate::db::parse_size)
            .unwrap_or_else(|| Err(String::new()))
        {
            Ok(n) if n > 0 => Some(n),
            _ => {
                c.err(
                    m,
                    format!("min_upload_rate \"{v}\": expected bytes per second, e.g. \"10kB/s\""),
                );
                None
            }
        }
    });
    let client_address = match raw.client_address.as_ref() {
        None => ClientAddress::Peer,
        Some(v) => match v.get_ref().as_str() {
            "peer" => ClientAddress::Peer,
            "x-forwarded-for" => ClientAddress::XForwardedFor,
            other => {
                c.err(
                    v,
                    format!("client_address \"{other}\": expected \"peer\" or \"x-forwarded-for\""),
                );
                ClientAddress::Peer
            }
        },
    };
    Firewall {
        allow,
        deny,
        deny_file,
        rate,
        max_connections_per_client,
        methods,
        max_body,
        min_upload_rate,
        client_address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Source;
    use crate::lb::LbConfig;

    fn load(fw: &str) -> Result<LbConfig, String> {
        let text = format!(
            "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\npool = \"app\"\nfirewall = {fw}\n\n[[pool]]\nname = \"app\"\nservers = [{{ name = \"a\", address = \"127.0.0.1:9001\" }}]\n"
        );
        LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", &text))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_listener_firewall_validates_and_every_mistake_is_placed() {
        let c = load(
            "{ allow = [\"10.0.0.0/8\"], deny = [\"2001:db8::/32\"], deny_file = \"deny.txt\", rate = \"600/m\", max_connections_per_client = 20, methods = [\"get\", \"POST\"], max_body = \"1MB\", min_upload_rate = \"10kB/s\" }",
        )
        .expect("valid");
        let f = c.listeners[0].firewall.clone().expect("a firewall");
        assert_eq!(
            f.rate,
            Some(RateLimit {
                per_second: 10.0,
                burst: 10
            })
        );
        assert_eq!(f.methods, Some(vec!["GET".to_string(), "POST".to_string()]));
        assert_eq!(f.max_body, Some(1024 * 1024));
        assert_eq!(f.min_upload_rate, Some(10 * 1024));
        assert_eq!(f.deny_file, Some(PathBuf::from("/etc/rampart/deny.txt")));
        let e = load(
            "{ deny = [\"10.0.0.300/8\"], rate = \"lots\", burst = 3, methods = [], max_body = \"huge\", max_connections_per_client = 0 }",
        )
        .expect_err("invalid");
        for want in [
            "lb.toml:5:22: bad network \"10.0.0.300/8\"",
            "lb.toml:5:46: bad rate \"lots\"",
            "methods is empty",
            "max_body",
            "max_connections_per_client must be between 1 and",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn client_address_is_peer_by_default_and_forwarded_needs_trusted_proxies() {
        let c = load("{ rate = \"5/s\" }").expect("valid");
        let f = c.listeners[0].firewall.clone().expect("a firewall");
        assert_eq!(f.client_address, ClientAddress::Peer);
        let e = load("{ client_address = \"x-forwarded-for\" }").expect_err("no trusted proxies");
        assert!(
            e.contains("lb.toml:5:31: client_address = \"x-forwarded-for\" needs the proxies"),
            "{e}"
        );
        let e = load("{ client_address = \"forwarded\" }").expect_err("unknown");
        assert!(
            e.contains("client_address \"forwarded\": expected \"peer\" or \"x-forwarded-for\""),
            "{e}"
        );
        let text = "[forwarded]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\npool = \"app\"\nfirewall = { rate = \"5/s\", client_address = \"x-forwarded-for\" }\n\n[[pool]]\nname = \"app\"\nservers = [{ name = \"a\", address = \"127.0.0.1:9001\" }]\n";
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)).expect("valid");
        let f = c.listeners[0].firewall.clone().expect("a firewall");
        assert_eq!(f.client_address, ClientAddress::XForwardedFor);
    }

    #[test]
    fn rates_parse_per_unit_and_garbage_is_named() {
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        assert!((parse_rate("3600/h").unwrap_or(0.0) - 1.0).abs() < 1e-9);
        for bad in ["20", "x/s", "0/s", "-1/s", "5/d", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
