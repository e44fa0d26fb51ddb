//! `rampart status`: every node of the topology, probed now.
//!
//! The JSON form (`rampart status --json`) is a stable interface, documented in the
//! README: a list of objects with `name`, `kind` (`lb`, `web`, `db`, `etcd`, `monitor`),
//! `role`, `healthy`, `address`, `pid` (null unless the node runs on this machine under
//! `rampart up`) and `details` (key figures by kind; keys may be added).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart_topology::NodeKind;
use serde::Serialize;
use serde_json::Value;

use crate::config::Resolved;
use crate::plan::Probe;
use crate::state::{pid_alive, UpState};
use crate::supervise::probe;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    /// `lb`, `web`, `db`, `etcd` or `monitor`.
    pub kind: String,
    /// etcd: leader/follower; db: primary/replica/...; lb: active, or with virtual IPs
    /// master/backup/master+backup (see [`vrrp_role`]); web: ready/not-ready;
    /// "down" when it does not answer, "unavailable" when this binary cannot run it.
    pub role: String,
    pub healthy: bool,
    pub address: String,
    pub pid: Option<u32>,
    pub details: BTreeMap<String, Value>,
}

const T: Duration = Duration::from_millis(800);

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = crate::http::get(addr, path, T).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

fn etcd_status(addr: SocketAddr) -> Option<Value> {
    let r = crate::http::request(
        addr,
        "POST",
        "/v3/maintenance/status",
        &[("Content-Type", "application/json")],
        b"{}",
        T,
    )
    .ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// Requests a node answered so far according to its Prometheus `/metrics` at `addr`: the
/// sum of counter `name` over every series except those with label `skip` (web:
/// `rampart_web_requests_total` without `kind="Admin"`, the health checks and scrapes; lb:
/// `rampart_listener_requests_total` from the admin listener without `listener="direct"`,
/// the node's own entry that probes and drills use).
fn requests_counter(addr: SocketAddr, name: &str, skip: &str, token: Option<&str>) -> Option<f64> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = crate::http::request(addr, "GET", "/metrics", &headers, b"", T).ok()?;
    if r.status != 200 {
        return None;
    }
    Some(sum_counter(&r.text(), name, skip))
}

fn sum_counter(text: &str, name: &str, skip: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && !l.contains(skip)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn web_requests(addr: SocketAddr) -> Option<f64> {
    requests_counter(addr, "rampart_web_requests_total", "kind=\"Admin\"", None)
}

/// An lb node's admin API: the topology's, else the one `rampart up` gave it (with its
/// token).
pub(crate) type Admin = Option<(SocketAddr, Option<String>)>;

/// Each lb node's admin API, in the topology's order: its own `admin` (guarded off
/// loopback by the token in its file), else the one `rampart up` gave it (in `live`).
pub(crate) fn lb_admins(t: &rampart_topology::Topology, live: Option<&UpState>) -> Vec<Admin> {
    t.lb.iter()
        .flat_map(|l| &l.nodes)
        .map(|n| match n.admin {
            Some(a) => Some((
                a,
                n.admin_token_file
                    .as_ref()
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty()),
            )),
            None => live
                .and_then(|s| s.lb_admin.iter().find(|a| a.node == n.name))
                .map(|a| (a.address, a.token())),
        })
        .collect()
}

/// Of the virtual routers `expected` (by name), those not held yet by the balancer that
/// will go on holding them, with why: not exactly one master among the balancers' admin
/// states (`/api/state`, its `vrrp` list), or one master and a router of it not settled
/// (a backup that has heard no master yet, or outranks the master and will preempt it:
/// the address is about to move). A balancer that does not list a router yet (still
/// starting) masters none of it; a router that does not say whether it is settled is.
pub(crate) fn vips_not_held(states: &[Value], expected: &[String]) -> Vec<String> {
    // Name -> (masters, routers not settled).
    let mut seen: BTreeMap<&str, (usize, usize)> =
        expected.iter().map(|n| (n.as_str(), (0, 0))).collect();
    for st in states {
        for r in st
            .get("vrrp")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some((masters, unsettled)) = seen.get_mut(name) {
                if r.get("state").and_then(Value::as_str) == Some("master") {
                    *masters += 1;
                }
                if r.get("settled").and_then(Value::as_bool) == Some(false) {
                    *unsettled += 1;
                }
            }
        }
    }
    seen.into_iter()
        .filter_map(|(name, (masters, unsettled))| match (masters, unsettled) {
            (1, 0) => None,
            (1, u) => Some(format!(
                "{name} (1 master, {u} router(s) about to take over)"
            )),
            (m, _) => Some(format!("{name} ({m} masters)")),
        })
        .collect()
}

fn lb_requests(admin: &Admin) -> Option<f64> {
    let (addr, token) = admin.as_ref()?;
    requests_counter(
        *addr,
        "rampart_listener_requests_total",
        "listener=\"direct\"",
        token.as_deref(),
    )
}

/// An lb node's admin `/api/state`.
pub(crate) fn lb_state(admin: &Admin) -> Option<Value> {
    let (addr, token) = admin.as_ref()?;
    let auth = token.as_deref().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = crate::http::request(*addr, "GET", "/api/state", &headers, b"", T).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// An lb node's role from its virtual routers (the `vrrp` list of its admin state), and
/// the detail naming each router by state: `master` when it masters every one, `backup`
/// when it backs up every one, `master+backup` when it masters some (`master(vip51)
/// backup(vip52)`); other states (`fault`, `stopping`, `init`) join the same way. `None`
/// without virtual routers (the role stays `active`).
pub fn vrrp_role(state: &Value) -> Option<(String, String)> {
    let routers = state.get("vrrp")?.as_array()?;
    if routers.is_empty() {
        return None;
    }
    // State name -> routers in that state, in this order.
    let order = ["master", "backup", "fault", "stopping", "init"];
    let mut by: Vec<(String, Vec<String>)> = Vec::new();
    for r in routers {
        let st = r.get("state").and_then(Value::as_str).unwrap_or("unknown");
        let name = r
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| r.get("vrid").map(|v| format!("vrid-{v}")))
            .unwrap_or_default();
        match by.iter_mut().find(|(s, _)| s == st) {
            Some((_, names)) => names.push(name),
            None => by.push((st.to_string(), vec![name])),
        }
    }
    by.sort_by_key(|(s, _)| order.iter().position(|o| o == s).unwrap_or(order.len()));
    let role = by
        .iter()
        .map(|(s, _)| s.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let detail = by
        .iter()
        .map(|(s, names)| format!("{s}({})", names.join(",")))
        .collect::<Vec<_>>()
        .join(" ");
    Some((role, detail))
}

fn rate(before: Option<f64>, after: Option<f64>, secs: f64) -> Option<Value> {
    let (a, b) = (before?, after?);
    Some(serde_json::json!(
        ((b - a).max(0.0) / secs * 10.0).round() / 10.0
    ))
}

/// Probe every node of the topology. Takes about a second: request rates are measured
/// over that window.
pub fn collect(r: &Resolved) -> Vec<NodeStatus> {
    let t = &r.topology;
    let window_start = Instant::now();
    let live = UpState::read_live(&r.data_dir);
    let before: Vec<Option<f64>> = t.web.iter().map(|w| web_requests(w.listen)).collect();
    let lb_admins = lb_admins(t, live.as_ref());
    let lb_before: Vec<Option<f64>> = lb_admins.iter().map(lb_requests).collect();
    let pid_of = |name: &str| {
        live.as_ref()
            .and_then(|s| s.node(name))
            .and_then(|n| n.pid)
            .filter(|p| pid_alive(*p))
    };
    let unavailable = |name: &str| {
        live.as_ref()
            .and_then(|s| s.node(name))
            .is_some_and(|n| n.state == "unavailable")
    };
    let mut out = Vec::new();

    for m in t.etcd.iter().flat_map(|e| &e.members) {
        let healthy = probe(&Probe::Etcd(m.client));
        let mut details = BTreeMap::new();
        let role = match etcd_status(m.client) {
            Some(s) => {
                let me = s
                    .pointer("/header/member_id")
                    .cloned()
                    .unwrap_or(Value::Null);
                let leader = s.get("leader").cloned().unwrap_or(Value::Null);
                for k in ["dbSize", "raftIndex", "raftTerm"] {
                    if let Some(v) = s.get(k) {
                        details.insert(k.to_string(), v.clone());
                    }
                }
                if me != Value::Null && me == leader {
                    "leader"
                } else {
                    "follower"
                }
                .to_string()
            }
            None => "down".to_string(),
        };
        out.push(NodeStatus {
            name: m.name.clone(),
            kind: "etcd".into(),
            role,
            healthy,
            address: m.client.to_string(),
            pid: pid_of(&m.name),
            details,
        });
    }

    if let Some(db) = &t.db {
        let cluster = db.nodes.iter().find_map(|n| get_json(n.api, "/cluster"));
        for n in &db.nodes {
            let healthy = probe(&Probe::Http {
                addr: n.api,
                path: "/health".into(),
            });
            let member = cluster.as_ref().and_then(|c| {
                c.get("members")?
                    .as_array()?
                    .iter()
                    .find(|m| m.get("name").and_then(Value::as_str) == Some(n.name.as_str()))
                    .cloned()
            });
            let mut details = BTreeMap::new();
            let mut role = if healthy { "unknown" } else { "down" }.to_string();
            if let Some(m) = member {
                if healthy {
                    if let Some(r) = m.get("role").and_then(Value::as_str) {
                        role = r.to_string();
                    }
                }
                for k in [
                    "state",
                    "timeline",
                    "lag_bytes",
                    "lag_seconds",
                    "sync_standby",
                ] {
                    if let Some(v) = m.get(k) {
                        details.insert(k.to_string(), v.clone());
                    }
                }
            }
            details.insert("api".into(), Value::String(format!("http://{}", n.api)));
            out.push(NodeStatus {
                name: n.name.clone(),
                kind: "db".into(),
                role,
                healthy,
                address: format!("{}:{}", n.host, n.port),
                pid: pid_of(&n.name),
                details,
            });
        }
    }

    let elapsed = window_start.elapsed();
    if elapsed < Duration::from_secs(1) && before.iter().chain(&lb_before).any(Option::is_some) {
        std::thread::sleep(Duration::from_secs(1) - elapsed);
    }
    let secs = window_start.elapsed().as_secs_f64();
    for (i, w) in t.web.iter().enumerate() {
        let mut details = BTreeMap::new();
        if let Some(rps) = rate(before[i], web_requests(w.listen), secs) {
            details.insert("rps".to_string(), rps);
        }
        let live_ok = probe(&Probe::Http {
            addr: w.listen,
            path: "/healthz".into(),
        });
        let ready = probe(&Probe::Http {
            addr: w.listen,
            path: "/readyz".into(),
        });
        out.push(NodeStatus {
            name: w.name.clone(),
            kind: "web".into(),
            role: match (live_ok, ready) {
                (_, true) => "ready",
                (true, false) => "not-ready",
                _ => "down",
            }
            .into(),
            healthy: ready,
            address: w.listen.to_string(),
            pid: pid_of(&w.name),
            details,
        });
    }

    if let Some(lb) = &t.lb {
        for (i, n) in lb.nodes.iter().enumerate() {
            let healthy = probe(&Probe::Http {
                addr: n.address,
                path: "/healthz".into(),
            });
            let mut details = BTreeMap::new();
            let vips: Vec<Value> = lb
                .config
                .listeners
                .iter()
                .map(|l| Value::String(l.address.to_string()))
                .collect();
            details.insert("listeners".into(), Value::Array(vips));
            if let Some((a, _)) = &lb_admins[i] {
                details.insert("stats".into(), Value::String(format!("http://{a}/stats")));
            }
            // Client requests on the site's listeners over the window, from the admin /metrics.
            if let Some(rps) = rate(lb_before[i], lb_requests(&lb_admins[i]), secs) {
                details.insert("rps".to_string(), rps);
            }
            let mut role = if healthy { "active" } else { "down" }.to_string();
            // With virtual IPs: which this node holds (a node that does not forward may
            // still hold or back up an address, so its own word counts).
            if let Some((r, detail)) = lb_state(&lb_admins[i]).as_ref().and_then(vrrp_role) {
                details.insert("vrrp".into(), Value::String(detail));
                if healthy {
                    role = r;
                }
            }
            out.push(NodeStatus {
                name: n.name.clone(),
                kind: "lb".into(),
                role,
                healthy,
                address: n.address.to_string(),
                pid: pid_of(&n.name),
                details,
            });
        }
    }

    if let Some(m) = &t.monitor {
        let role = if unavailable(&m.name) {
            "unavailable".to_string()
        } else if probe(&Probe::Http {
            addr: m.listen,
            path: "/healthz".into(),
        }) {
            "active".to_string()
        } else {
            "down".to_string()
        };
        let mut details = BTreeMap::new();
        if role == "active" {
            monitor_details(m, &mut details);
        }
        out.push(NodeStatus {
            name: m.name.clone(),
            kind: NodeKind::Monitor.as_str().into(),
            healthy: role == "active",
            role,
            address: m.listen.to_string(),
            pid: pid_of(&m.name),
            details,
        });
    }
    out
}

/// The monitor's own view: targets up, alerts firing, the dashboard's URL.
fn monitor_details(
    m: &rampart_topology::monitor::MonitorConfig,
    details: &mut BTreeMap<String, Value>,
) {
    let token = m
        .token_env
        .as_ref()
        .and_then(|v| std::env::var(v).ok())
        .map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("Authorization", t)])
        .unwrap_or_default();
    let get = |path: &str| {
        crate::http::request(m.listen, "GET", path, &headers, b"", T)
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
    };
    details.insert(
        "dashboard".into(),
        Value::String(format!("http://{}/", m.listen)),
    );
    if let Some(ts) = get("/api/targets").and_then(|v| v.get("targets").cloned()) {
        let all = ts.as_array().map(Vec::len).unwrap_or(0);
        let up = ts
            .as_array()
            .map(|a| a.iter().filter(|t| t["up"] == Value::Bool(true)).count())
            .unwrap_or(0);
        details.insert("targets_up".into(), Value::String(format!("{up}/{all}")));
    }
    if let Some(a) = get("/api/alerts") {
        let firing: Vec<Value> = a["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["state"] == "firing")
            .map(|x| {
                let inst = x["labels"]["instance"].as_str().unwrap_or("");
                let name = x["name"].as_str().unwrap_or("");
                Value::String(if inst.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}:{inst}")
                })
            })
            .collect();
        details.insert("firing".into(), Value::Array(firing));
    }
}

/// The human table.
pub fn render_table(nodes: &[NodeStatus]) -> String {
    let mut s = String::new();
    // 12 wide, wider for a long role (`master+backup`).
    let rw = nodes
        .iter()
        .map(|n| n.role.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let _ = writeln!(
        s,
        "{:<10} {:<8} {:<rw$} {:<8} {:<22} {:<8} DETAILS",
        "NAME", "KIND", "ROLE", "HEALTHY", "ADDRESS", "PID"
    );
    for n in nodes {
        let details: Vec<String> = n
            .details
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(
            s,
            "{:<10} {:<8} {:<rw$} {:<8} {:<22} {:<8} {}",
            n.name,
            n.kind,
            n.role,
            if n.healthy { "yes" } else { "NO" },
            n.address,
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            details.join(" ")
        );
    }
    s
}

/// The stable JSON form: a list of node objects.
pub fn render_json(nodes: &[NodeStatus]) -> String {
    serde_json::to_string_pretty(nodes).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{render_table, sum_counter, vips_not_held, vrrp_role, NodeStatus};
    use serde_json::json;

    #[test]
    fn a_virtual_ip_is_held_when_exactly_one_balancer_masters_it() {
        let want = ["vip51".to_string(), "vip52".to_string()];
        let lb1 = json!({ "vrrp": [
            { "name": "vip51", "state": "master" }, { "name": "vip52", "state": "backup" }
        ] });
        let lb2 = |s52: &str| {
            json!({ "vrrp": [
            { "name": "vip51", "state": "backup" }, { "name": "vip52", "state": s52 }
        ] })
        };
        assert!(vips_not_held(&[lb1.clone(), lb2("master")], &want).is_empty());
        assert_eq!(
            vips_not_held(&[lb1.clone(), lb2("init")], &want),
            ["vip52 (0 masters)"]
        );
        let both = json!({ "vrrp": [{ "name": "vip51", "state": "master" }] });
        assert_eq!(
            vips_not_held(&[lb1.clone(), both], &want),
            ["vip51 (2 masters)", "vip52 (0 masters)"]
        );
        // One master, but a backup outranks it (or has heard no master yet): the address
        // is about to move.
        let lb2s = |settled: bool| {
            json!({ "vrrp": [
            { "name": "vip51", "state": "backup", "settled": settled },
            { "name": "vip52", "state": "master", "settled": true }
        ] })
        };
        assert!(vips_not_held(&[lb1.clone(), lb2s(true)], &want).is_empty());
        assert_eq!(
            vips_not_held(&[lb1.clone(), lb2s(false)], &want),
            ["vip51 (1 master, 1 router(s) about to take over)"]
        );
        // Balancers still starting list no router yet: nothing is held.
        let starting = json!({ "vrrp": [] });
        assert_eq!(
            vips_not_held(&[starting.clone(), starting], &want),
            ["vip51 (0 masters)", "vip52 (0 masters)"]
        );
    }

    #[test]
    fn an_lb_role_follows_its_virtual_routers() {
        let r = |v: serde_json::Value| vrrp_role(&json!({ "vrrp": v }));
        assert_eq!(vrrp_role(&json!({ "pools": [] })), None);
        assert_eq!(r(json!([])), None);
        assert_eq!(
            r(json!([{ "name": "vip51", "state": "master" }])),
            Some(("master".into(), "master(vip51)".into()))
        );
        assert_eq!(
            r(json!([
                { "name": "vip51", "state": "backup" },
                { "name": "vip52", "state": "backup" }
            ])),
            Some(("backup".into(), "backup(vip51,vip52)".into()))
        );
        assert_eq!(
            r(json!([
                { "name": "vip52", "state": "backup" },
                { "name": "vip51", "state": "master" }
            ])),
            Some(("master+backup".into(), "master(vip51) backup(vip52)".into()))
        );
        assert_eq!(
            r(json!([
                { "name": "vip51", "state": "fault" },
                { "vrid": 52, "state": "master" }
            ])),
            Some(("master+fault".into(), "master(vrid-52) fault(vip51)".into()))
        );
    }

    #[test]
    fn the_table_shows_the_lb_role_and_its_routers() {
        let mut details = std::collections::BTreeMap::new();
        details.insert("vrrp".to_string(), json!("master(vip51) backup(vip52)"));
        let t = render_table(&[NodeStatus {
            name: "lb1".into(),
            kind: "lb".into(),
            role: "master+backup".into(),
            healthy: true,
            address: "10.0.0.11:8091".into(),
            pid: None,
            details,
        }]);
        let row = t.lines().nth(1).unwrap();
        assert!(row.starts_with("lb1        lb       master+backup "), "{t}");
        assert!(row.ends_with("vrrp=master(vip51) backup(vip52)"), "{t}");
    }

    #[test]
    fn sums_a_counter_over_series_but_the_skipped_one() {
        let text = "# HELP rampart_listener_requests Responses.\n\
# TYPE rampart_listener_requests counter\n\
rampart_listener_requests_total{listener=\"site\",class=\"2xx\"} 40\n\
rampart_listener_requests_total{listener=\"site\",class=\"5xx\"} 2\n\
rampart_listener_requests_total{listener=\"direct\",class=\"2xx\"} 1000\n\
rampart_listener_requests_total_other{listener=\"site\"} 7\n\
rampart_listener_response_count{listener=\"site\"} 42\n";
        let n = sum_counter(
            text,
            "rampart_listener_requests_total",
            "listener=\"direct\"",
        );
        assert_eq!(n, 42.0);
        assert_eq!(sum_counter(text, "absent_total", "x"), 0.0);
    }
}
