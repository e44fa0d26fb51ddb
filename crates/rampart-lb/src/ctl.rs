//! `rampart lb ctl` and `rampart lb reload`: a small client of the admin API, and the
//! pid-file signal path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Why a control command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin API at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("bad answer from the admin API: {0}")]
    Bad(String),
    #[error("pid file {0}: {1}")]
    PidFile(String, String),
}

/// Where the admin API is and the token to use.
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl AdminClient {
    /// One request with `Connection: close`; a non-2xx answer is an error carrying the
    /// API's message.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        let io = |source| CtlError::Io {
            addr: self.addr,
            source,
        };
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| CtlError::Bad("no header end".into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CtlError::Bad("bad status line".into()))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        let v: Value =
            serde_json::from_str(&body).unwrap_or(Value::String(body.trim().to_string()));
        if !(200..300).contains(&status) {
            let message = v
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| match &v {
                    Value::String(s) => s.clone(),
                    o => o.to_string(),
                });
            return Err(CtlError::Status { status, message });
        }
        Ok(v)
    }

    pub fn state(&self) -> Result<Value, CtlError> {
        self.request("GET", "/api/state", None)
    }

    pub fn set_state(&self, pool: &str, server: &str, state: &str) -> Result<(), CtlError> {
        self.request(
            "POST",
            &format!("/api/pools/{pool}/servers/{server}/state"),
            Some(&serde_json::json!({ "state": state })),
        )
        .map(|_| ())
    }

    pub fn set_weight(&self, pool: &str, server: &str, weight: u32) -> Result<(), CtlError> {
        self.request(
            "POST",
            &format!("/api/pools/{pool}/servers/{server}/weight"),
            Some(&serde_json::json!({ "weight": weight })),
        )
        .map(|_| ())
    }

    pub fn add_server(
        &self,
        pool: &str,
        name: &str,
        address: &str,
        weight: u32,
    ) -> Result<(), CtlError> {
        self.request(
            "POST",
            &format!("/api/pools/{pool}/servers"),
            Some(&serde_json::json!({ "name": name, "address": address, "weight": weight })),
        )
        .map(|_| ())
    }

    pub fn remove_server(&self, pool: &str, server: &str) -> Result<(), CtlError> {
        self.request(
            "DELETE",
            &format!("/api/pools/{pool}/servers/{server}"),
            None,
        )
        .map(|_| ())
    }

    pub fn reload(&self) -> Result<(), CtlError> {
        self.request("POST", "/api/reload", None).map(|_| ())
    }

    /// Start a binary upgrade; the new process's pid once it accepts.
    pub fn upgrade(&self) -> Result<u64, CtlError> {
        let v = self.request("POST", "/api/upgrade", None)?;
        v.get("pid")
            .and_then(Value::as_u64)
            .ok_or_else(|| CtlError::Bad(format!("no pid in {v}")))
    }
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = b.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A field as text: strings bare, absent or null as `-`.
fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(o) => o.to_string(),
    }
}

/// The state as a table, one line per pool and server, then the virtual routers (when
/// the balancer runs any).
pub fn format_state(v: &Value) -> String {
    let mut out = String::new();
    let s = field;
    for l in v
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "listener {:<12} {:<22} {:<4} pool={} connections={}\n",
            s(l, "name"),
            s(l, "address"),
            s(l, "mode"),
            s(l, "pool"),
            s(l, "connections")
        ));
        for r in l
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let any = |k: &str| match r.get(k).and_then(Value::as_str) {
                Some(v) => v.to_string(),
                None => "*".to_string(),
            };
            let hosts: Vec<&str> = r
                .get("hosts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let hosts = if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts.join(",")
            };
            let mut to = match r.get("redirect").filter(|v| !v.is_null()) {
                Some(red) => format!("redirect={} {}", s(red, "status"), s(red, "to")),
                None => format!("pool={}", s(r, "pool")),
            };
            if let Some(nets) = r.get("allow").and_then(Value::as_array) {
                let nets: Vec<&str> = nets.iter().filter_map(Value::as_str).collect();
                to.push_str(&format!(
                    " allow={}",
                    if nets.is_empty() { "none" } else { "" }
                ));
                to.push_str(&nets.join(","));
            }
            let mut when = String::new();
            if let Some(p) = r.get("path").and_then(Value::as_str) {
                when.push_str(&format!(" path={p}"));
            }
            if let Some(ms) = r
                .get("methods")
                .and_then(Value::as_array)
                .filter(|m| !m.is_empty())
            {
                let ms: Vec<&str> = ms.iter().filter_map(Value::as_str).collect();
                when.push_str(&format!(" methods={}", ms.join(",")));
            }
            if let Some(h) = r.get("header").filter(|h| h.is_object()) {
                when.push_str(&format!(" header={}", s(h, "name")));
                if let Some(v) = h.get("value").and_then(Value::as_str) {
                    when.push_str(&format!(":{v}"));
                }
            }
            out.push_str(&format!(
                "  route host={} path_prefix={}{} {}\n",
                hosts,
                any("path_prefix"),
                when,
                to
            ));
        }
    }
    out.push_str(&format!(
        "{:<12} {:<12} {:<22} {:<11} {:<9} {:>6} {:>9} {:>10} {:>8}\n",
        "POOL", "SERVER", "ADDRESS", "STATE", "HEALTH", "WEIGHT", "IN-FLIGHT", "REQUESTS", "ERRORS"
    ));
    for p in v
        .get("pools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for sv in p
            .get("servers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let errors: u64 = sv
                .pointer("/counters/errors")
                .and_then(Value::as_object)
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            out.push_str(&format!(
                "{:<12} {:<12} {:<22} {:<11} {:<9} {:>6} {:>9} {:>10} {:>8}\n",
                s(p, "name"),
                s(sv, "name"),
                s(sv, "address"),
                s(sv, "state"),
                s(sv, "health"),
                s(sv, "weight"),
                s(sv, "in_flight"),
                s(sv, "requests"),
                errors
            ));
        }
    }
    out.push_str(&format_vrrp(v));
    out
}

/// The virtual routers (`vrrp` in the admin state), one line each; empty without any.
/// MASTER is the master last heard (address and priority), FAILING the tracked items
/// that lower the priority.
pub fn format_vrrp(v: &Value) -> String {
    let routers: Vec<&Value> = v
        .get("vrrp")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if routers.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<12} {:>4} {:<10} {:<9} {:<8} {:<20} {:<20} {:<28} FAILING\n",
        "VRRP", "VRID", "INTERFACE", "STATE", "PRIO", "ADDRESSES", "MASTER", "LAST TRANSITION"
    );
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    for r in routers {
        let list = |k: &str, sep: &str| -> String {
            r.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(sep)
                })
                .unwrap_or_default()
        };
        let prio = format!(
            "{}/{}",
            field(r, "priority"),
            field(r, "effective_priority")
        );
        let master = match r.get("master") {
            Some(m @ Value::Object(_)) => {
                format!("{} ({})", field(m, "address"), field(m, "priority"))
            }
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<12} {:>4} {:<10} {:<9} {:<8} {:<20} {:<20} {:<28} {}\n",
            field(r, "name"),
            field(r, "vrid"),
            field(r, "interface"),
            field(r, "state"),
            prio,
            dash(list("addresses", ",")),
            master,
            dash(
                r.get("last_transition")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            ),
            dash(list("failing", "; ")),
        ));
    }
    out
}

pub use nix::sys::signal::Signal;

/// Send `sig` (SIGHUP: reload, SIGUSR2: upgrade) to the process named in `pid_file`.
pub fn signal(pid_file: &Path, sig: Signal) -> Result<(), CtlError> {
    let bad = |m: String| CtlError::PidFile(pid_file.display().to_string(), m);
    let text = std::fs::read_to_string(pid_file).map_err(|e| bad(e.to_string()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| bad(format!("no pid in \"{}\"", text.trim())))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .map_err(|e| bad(format!("cannot signal pid {pid}: {e}")))
}

/// The admin API's JSON value type.
pub type Json = Value;

/// Pretty-printed JSON.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_line_is_followed_by_its_routes_in_order() {
        let v = serde_json::json!({
            "listeners": [{
                "name": "site", "address": "0.0.0.0:80", "mode": "http", "pool": "web",
                "connections": 3,
                "routes": [
                    { "hosts": ["api.example.com", "*.api.example.com"], "path_prefix": null, "pool": "api" },
                    { "hosts": [], "path_prefix": "/static/", "strip_prefix": true, "pool": "static" },
                    { "hosts": ["www.example.com"], "path_prefix": null, "pool": null,
                      "redirect": { "to": "https://example.com", "status": 301 } },
                    { "hosts": [], "path_prefix": "/admin/", "pool": "admin",
                      "allow": ["10.0.0.0/8", "::1/128"] },
                    { "hosts": [], "path_prefix": "/.git/", "pool": "web", "allow": [] },
                    { "hosts": [], "path_prefix": null, "path": "/login", "methods": ["POST"],
                      "pool": "auth" },
                    { "hosts": [], "path_prefix": null, "path": null, "methods": ["PUT", "DELETE"],
                      "pool": "api" },
                    { "hosts": [], "path_prefix": null, "header": { "name": "x-canary", "value": "1" },
                      "pool": "canary" }
                ]
            }],
            "pools": [],
            "vrrp": []
        });
        let text = format_state(&v);
        let lines: Vec<&str> = text.lines().take(9).collect();
        assert!(lines[0].starts_with("listener site"), "{text}");
        assert!(lines[0].contains("pool=web connections=3"), "{text}");
        assert_eq!(
            lines[1],
            "  route host=api.example.com,*.api.example.com path_prefix=* pool=api"
        );
        assert_eq!(lines[2], "  route host=* path_prefix=/static/ pool=static");
        assert_eq!(
            lines[3],
            "  route host=www.example.com path_prefix=* redirect=301 https://example.com"
        );
        assert_eq!(
            lines[4],
            "  route host=* path_prefix=/admin/ pool=admin allow=10.0.0.0/8,::1/128"
        );
        assert_eq!(
            lines[5],
            "  route host=* path_prefix=/.git/ pool=web allow=none"
        );
        assert_eq!(
            lines[6],
            "  route host=* path_prefix=* path=/login methods=POST pool=auth"
        );
        assert_eq!(
            lines[7],
            "  route host=* path_prefix=* methods=PUT,DELETE pool=api"
        );
        assert_eq!(
            lines[8],
            "  route host=* path_prefix=* header=x-canary:1 pool=canary"
        );
    }

    #[test]
    fn the_table_shows_each_virtual_router_and_nothing_without_any() {
        let none = serde_json::json!({ "listeners": [], "pools": [], "vrrp": [] });
        assert_eq!(format_vrrp(&none), "");
        assert!(!format_state(&none).contains("VRRP"));
        let v = serde_json::json!({
            "listeners": [],
            "pools": [],
            "vrrp": [
                {
                    "name": "vip51", "vrid": 51, "interface": "eth0", "state": "master",
                    "priority": 150, "effective_priority": 150,
                    "addresses": ["10.0.0.51/24"],
                    "master": { "address": "10.0.0.1", "priority": 150 },
                    "last_transition": "backup -> master: master down",
                    "failing": []
                },
                {
                    "name": "vip52", "vrid": 52, "interface": "eth0", "state": "backup",
                    "priority": 150, "effective_priority": 50,
                    "addresses": ["10.0.0.52/24", "10.0.0.53/24"],
                    "master": null,
                    "last_transition": "",
                    "failing": ["listener site: every server down", "interface eth0 down"]
                }
            ]
        });
        let t = format_state(&v);
        let lines: Vec<&str> = t.lines().collect();
        let head = lines.iter().position(|l| l.starts_with("VRRP")).unwrap();
        assert!(lines[head].contains("LAST TRANSITION"), "{t}");
        let first: Vec<&str> = lines[head + 1].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "vip51",
                "51",
                "eth0",
                "master",
                "150/150",
                "10.0.0.51/24",
                "10.0.0.1",
                "(150)",
                "backup",
                "->",
                "master:",
                "master",
                "down",
                "-"
            ],
            "{t}"
        );
        let second = lines[head + 2];
        assert!(second.starts_with("vip52"), "{t}");
        assert!(second.contains(" backup "), "{t}");
        assert!(second.contains(" 150/50 "), "{t}");
        assert!(second.contains(" 10.0.0.52/24,10.0.0.53/24 "), "{t}");
        assert!(
            second.ends_with("listener site: every server down; interface eth0 down"),
            "{t}"
        );
    }
}
