//! The seed's diagram, live (pure): clients -> the site's addresses -> the load balancers
//! -> the web servers -> the primary database -> its replicas, with etcd beside them.
//!
//! [`Layout::of`] reads the shape from the topology once; [`build`] turns the monitor's
//! last scrapes into boxes (each with a state: `up`, `down`, `master`, `backup`,
//! `primary`, `replica`, ...) and arrows (request rates, replication lag); [`changes`]
//! compares two diagrams and says what happened between them (a node down or back, a
//! failover, a balancer takeover, a server ejected or back). No I/O, no clock: time is an
//! argument, so every piece is unit tested on hand-made samples.
//!
//! Only fresh samples count: a value is read from a target that answered its last scrape,
//! and only if the series was in that scrape (its last sample is from that round).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use rampart_alert::{Selector, SeriesKey, Store};
use rampart_topology::lb_section::VIP_MASTER_PRIORITY;
use rampart_topology::Topology;
use serde::Serialize;
use serde_json::Value;

use crate::targets::Target;
use crate::TargetHealth;

/// A virtual IP of the site (`[[lb.vip]]`), by its virtual router's name on the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vip {
    /// `vip1`, `vip2`, ...: the `router` label of `rampart_vrrp_state`.
    pub router: String,
    pub address: IpAddr,
    /// The node the topology makes its master (priority 150).
    pub master: Option<String>,
}

/// A server of an lb pool, and the web node it is (by name, else by address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolServer {
    pub pool: String,
    pub server: String,
    pub address: SocketAddr,
    /// The web box it is drawn as (a `[[web.node]]` name, else the server's own name).
    pub web: String,
}

/// The diagram's shape, from the topology.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The lb listeners (the site's addresses when there is no virtual IP).
    pub listeners: Vec<(String, SocketAddr)>,
    pub vips: Vec<Vip>,
    pub lbs: Vec<String>,
    pub servers: Vec<PoolServer>,
    /// Web nodes in topology order, then pool servers that are no web node.
    pub webs: Vec<String>,
    pub dbs: Vec<String>,
    pub etcd: Vec<String>,
}

impl Layout {
    pub fn of(t: &Topology) -> Layout {
        let mut l = Layout {
            webs: t.web.iter().map(|w| w.name.clone()).collect(),
            dbs: t
                .db
                .iter()
                .flat_map(|d| &d.nodes)
                .map(|n| n.name.clone())
                .collect(),
            etcd: t
                .etcd
                .iter()
                .flat_map(|e| &e.members)
                .map(|m| m.name.clone())
                .collect(),
            ..Layout::default()
        };
        let Some(lb) = &t.lb else {
            return l;
        };
        l.lbs = lb.nodes.iter().map(|n| n.name.clone()).collect();
        l.listeners = lb
            .config
            .listeners
            .iter()
            .map(|x| (x.name.clone(), x.address))
            .collect();
        if let Some((_, first)) = lb.vrrp.first() {
            for inst in first {
                let master = lb.vrrp.iter().find_map(|(node, is)| {
                    is.iter()
                        .any(|i| i.name == inst.name && i.priority == VIP_MASTER_PRIORITY)
                        .then(|| node.clone())
                });
                for a in &inst.addresses {
                    l.vips.push(Vip {
                        router: inst.name.clone(),
                        address: a.ip,
                        master: master.clone(),
                    });
                }
            }
        }
        for p in &lb.config.pools {
            for s in &p.servers {
                let web = t
                    .web
                    .iter()
                    .find(|w| w.name == s.name)
                    .or_else(|| t.web.iter().find(|w| w.listen == s.address))
                    .map(|w| w.name.clone())
                    .unwrap_or_else(|| s.name.clone());
                if !l.webs.contains(&web) {
                    l.webs.push(web.clone());
                }
                l.servers.push(PoolServer {
                    pool: p.name.clone(),
                    server: s.name.clone(),
                    address: s.address,
                    web,
                });
            }
        }
        l
    }
}

/// One box of the diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiagramBox {
    /// `clients`, `addr:<listener>`, `vip:<router>`, `lb:<node>`, `web:<node>`,
    /// `db:<node>`, `etcd:<member>`.
    pub id: String,
    /// `clients`, `address`, `lb`, `web`, `db`, `etcd`.
    pub tier: &'static str,
    pub name: String,
    /// What the box stands for in one line (an address, a role).
    pub label: String,
    /// `up`, `down`, `master`, `backup`, `primary`, `replica`, `not-ready`, `starting`,
    /// `demoted`, `stopped`, `leader`, `follower`, `fault`, `unknown`.
    pub state: String,
    /// Short facts drawn under the name (a request rate, a lag, who holds an address).
    pub detail: Vec<String>,
    /// The balancer holding a virtual IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The node's counters went back between its last two scrapes: it restarted, even if
    /// no scrape saw it down (a supervisor restarts what dies within a second).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub restarted: bool,
}

/// One arrow of the diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arrow {
    pub from: String,
    pub to: String,
    /// `request` (HTTP), `vip` (an address served by a balancer), `sql` (guestbook to
    /// its primary), `replication`.
    pub kind: &'static str,
    /// `up`, `down`, `master`, `backup`, `ejected`, `drain`, `maintenance`, `streaming`, ...
    pub state: String,
    /// Requests (or queries) per second over the rate window, when known.
    pub rate: Option<f64>,
    /// Replication arrows: the replica's lag behind the primary.
    pub lag_bytes: Option<f64>,
    /// What is written on the arrow.
    pub label: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diagram {
    pub boxes: Vec<DiagramBox>,
    pub arrows: Vec<Arrow>,
}

impl Diagram {
    pub fn find(&self, id: &str) -> Option<&DiagramBox> {
        self.boxes.iter().find(|b| b.id == id)
    }

    /// The database box in state `primary`, if exactly one is.
    pub fn primary(&self) -> Option<&DiagramBox> {
        let mut it = self
            .boxes
            .iter()
            .filter(|b| b.tier == "db" && b.state == "primary");
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }
}

/// What [`build`] reads.
pub struct Inputs<'a> {
    pub layout: &'a Layout,
    pub targets: &'a [Target],
    pub health: &'a [TargetHealth],
    pub store: &'a Store,
    /// The db cluster view (`/cluster` of an agent), for the synchronous standby.
    pub cluster: Option<&'a Value>,
    /// Rates are averaged over this much of the latest samples.
    pub rate_window_ms: u64,
}

/// Whether a target is drawn up: it answered its last scrape, or that scrape alone timed
/// out (a busy machine; a dead process refuses at once, and a hung one misses the next
/// round too), in which case what it said the round before is drawn.
pub fn shown_up(h: &TargetHealth) -> bool {
    h.up || (h.timed_out && h.fails == 1 && h.last_ok_ms > 0)
}

/// A target's samples, read only while fresh.
struct Node<'a> {
    instance: &'a str,
    health: &'a TargetHealth,
    store: &'a Store,
    window: u64,
}

impl<'a> Node<'a> {
    fn series(
        &self,
        sel: &'a Selector,
    ) -> impl Iterator<Item = (&'a SeriesKey, &'a VecDeque<(u64, f64)>)> + '_ {
        let up = shown_up(self.health);
        let fresh = if self.health.up {
            self.health.last_scrape_ms
        } else {
            self.health.last_ok_ms
        };
        let inst = self.instance;
        self.store.select(sel).filter(move |(k, s)| {
            up && k.label("instance") == Some(inst) && s.back().is_some_and(|p| p.0 >= fresh)
        })
    }

    /// The newest value of one series (exact labels besides job and instance).
    fn last(&self, sel: &'a Selector) -> Option<f64> {
        self.series(sel)
            .last()
            .and_then(|(_, s)| s.back())
            .map(|p| p.1)
    }

    /// Whether the sum of the selected counters went down between this node's last two
    /// scrapes (series in both): the process behind it started again.
    fn reset(&self, sel: &'a Selector) -> bool {
        let mut at: Option<(u64, u64)> = None;
        let (mut before, mut now) = (0.0, 0.0);
        for (_, s) in self.series(sel) {
            let n = s.len();
            if n < 2 {
                continue;
            }
            let (p, l) = (s[n - 2], s[n - 1]);
            if *at.get_or_insert((p.0, l.0)) != (p.0, l.0) {
                continue;
            }
            before += p.1;
            now += l.1;
        }
        at.is_some() && now < before
    }

    /// Per-second increase, summed over the selected counters (reset-aware).
    fn rate(&self, sel: &'a Selector) -> Option<f64> {
        let mut total = None;
        for (_, s) in self.series(sel) {
            let Some(&(t_end, _)) = s.back() else {
                continue;
            };
            let from = t_end.saturating_sub(self.window);
            let pts: Vec<(u64, f64)> = s.iter().copied().filter(|p| p.0 >= from).collect();
            let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
                continue;
            };
            if last.0 <= first.0 {
                continue;
            }
            let inc: f64 = pts
                .windows(2)
                .map(|w| {
                    if w[1].1 >= w[0].1 {
                        w[1].1 - w[0].1
                    } else {
                        w[1].1
                    }
                })
                .sum();
            *total.get_or_insert(0.0) += inc / ((last.0 - first.0) as f64 / 1000.0);
        }
        total
    }
}

fn sel(name: &str, labels: &[(&str, &str)]) -> Selector {
    labels
        .iter()
        .fold(Selector::name(name), |s, (k, v)| s.with(k, v))
}

fn not(mut s: Selector, label: &str, value: &str) -> Selector {
    s.matchers.push(rampart_alert::Matcher {
        label: label.into(),
        equal: false,
        value: value.into(),
    });
    s
}

/// `12.3 req/s`, `0.40 req/s`, `1.2k req/s`.
pub fn fmt_rate(r: f64, unit: &str) -> String {
    if r >= 1000.0 {
        format!("{:.1}k {unit}", r / 1000.0)
    } else if r >= 10.0 {
        format!("{r:.0} {unit}")
    } else if r >= 1.0 {
        format!("{r:.1} {unit}")
    } else {
        format!("{r:.2} {unit}")
    }
}

/// `0 B`, `12 kB`, `3.4 MB`.
pub fn fmt_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The diagram of the monitor's latest scrapes.
pub fn build(i: &Inputs<'_>) -> Diagram {
    let l = i.layout;
    let node = |job: &str, name: &str| -> Option<Node<'_>> {
        let k = i
            .targets
            .iter()
            .position(|t| t.job == job && t.instance == name)?;
        Some(Node {
            instance: &i.targets[k].instance,
            health: i.health.get(k)?,
            store: i.store,
            window: i.rate_window_ms,
        })
    };
    let up = |n: &Option<Node<'_>>| n.as_ref().is_some_and(|n| shown_up(n.health));
    let mut d = Diagram::default();
    d.boxes.push(DiagramBox {
        id: "clients".into(),
        tier: "clients",
        name: "clients".into(),
        label: "browsers, API clients".into(),
        state: "up".into(),
        detail: Vec::new(),
        holder: None,
        restarted: false,
    });

    // The balancers: health, virtual routers, listener rates.
    let lb_sel = not(
        Selector::name("rampart_listener_requests_total"),
        "listener",
        "direct",
    );
    let vrrp_sel = Selector::name("rampart_vrrp_state");
    struct Lb<'a> {
        name: &'a str,
        up: bool,
        /// router -> state, from `rampart_vrrp_state`.
        routers: BTreeMap<String, String>,
        /// listener -> req/s.
        rates: BTreeMap<String, f64>,
        total: Option<f64>,
    }
    let lbs: Vec<Lb<'_>> = l
        .lbs
        .iter()
        .map(|name| {
            let n = node("lb", name);
            let mut routers = BTreeMap::new();
            let mut rates = BTreeMap::new();
            let mut total = None;
            if let Some(n) = &n {
                for (k, s) in n.series(&vrrp_sel) {
                    if s.back().map(|p| p.1) == Some(1.0) {
                        if let (Some(r), Some(st)) = (k.label("router"), k.label("state")) {
                            routers.insert(r.to_string(), st.to_string());
                        }
                    }
                }
                for (lname, _) in &l.listeners {
                    let s = sel("rampart_listener_requests_total", &[("listener", lname)]);
                    if let Some(r) = n.rate(&s) {
                        rates.insert(lname.clone(), r);
                    }
                }
                total = n.rate(&lb_sel);
            }
            Lb {
                name,
                up: up(&n),
                routers,
                rates,
                total,
            }
        })
        .collect();
    let vip_mode = !l.vips.is_empty();

    // The site's addresses.
    if vip_mode {
        for v in &l.vips {
            let holder = lbs
                .iter()
                .find(|b| b.up && b.routers.get(&v.router).map(String::as_str) == Some("master"));
            let id = format!("vip:{}", v.router);
            // A balancer's rate, shared by the addresses it holds.
            let rate = holder.and_then(|h| {
                let held = l
                    .vips
                    .iter()
                    .filter(|x| h.routers.get(&x.router).map(String::as_str) == Some("master"))
                    .count()
                    .max(1);
                h.total.map(|t| t / held as f64)
            });
            let mut detail = vec![match holder {
                Some(h) => format!("held by {}", h.name),
                None => "no balancer holds it".into(),
            }];
            if let Some(m) = &v.master {
                detail.push(format!("preferred {m}"));
            }
            d.boxes.push(DiagramBox {
                id: id.clone(),
                tier: "address",
                name: v.address.to_string(),
                label: format!("virtual IP ({})", v.router),
                state: if holder.is_some() { "master" } else { "down" }.into(),
                detail,
                holder: holder.map(|h| h.name.to_string()),
                restarted: false,
            });
            d.arrows.push(Arrow {
                from: "clients".into(),
                to: id.clone(),
                kind: "request",
                state: if holder.is_some() { "up" } else { "down" }.into(),
                rate,
                lag_bytes: None,
                label: rate.map(|r| fmt_rate(r, "req/s")).unwrap_or_default(),
            });
            for b in &lbs {
                let st = if !b.up {
                    "down".to_string()
                } else {
                    b.routers
                        .get(&v.router)
                        .cloned()
                        .unwrap_or_else(|| "unknown".into())
                };
                let is_holder = holder.is_some_and(|h| h.name == b.name);
                d.arrows.push(Arrow {
                    from: id.clone(),
                    to: format!("lb:{}", b.name),
                    kind: "vip",
                    label: if is_holder {
                        "active".into()
                    } else {
                        st.clone()
                    },
                    state: st,
                    rate: if is_holder { rate } else { None },
                    lag_bytes: None,
                });
            }
        }
    } else if !l.lbs.is_empty() {
        for (lname, addr) in &l.listeners {
            let id = format!("addr:{lname}");
            let any_up = lbs.iter().any(|b| b.up);
            let rates: Vec<f64> = lbs
                .iter()
                .filter(|b| b.up)
                .filter_map(|b| b.rates.get(lname).copied())
                .collect();
            let rate = (!rates.is_empty()).then(|| rates.iter().sum::<f64>());
            let serving = lbs.iter().filter(|b| b.up).count();
            d.boxes.push(DiagramBox {
                id: id.clone(),
                tier: "address",
                name: addr.to_string(),
                label: format!("listener {lname}"),
                state: if any_up { "up" } else { "down" }.into(),
                detail: vec![format!(
                    "{serving} of {} balancers serve it (SO_REUSEPORT)",
                    lbs.len()
                )],
                holder: None,
                restarted: false,
            });
            d.arrows.push(Arrow {
                from: "clients".into(),
                to: id.clone(),
                kind: "request",
                state: if any_up { "up" } else { "down" }.into(),
                rate,
                lag_bytes: None,
                label: rate.map(|r| fmt_rate(r, "req/s")).unwrap_or_default(),
            });
            for b in &lbs {
                let rate = if b.up {
                    b.rates.get(lname).copied()
                } else {
                    None
                };
                d.arrows.push(Arrow {
                    from: id.clone(),
                    to: format!("lb:{}", b.name),
                    kind: "vip",
                    state: if b.up { "up" } else { "down" }.into(),
                    rate,
                    lag_bytes: None,
                    label: rate.map(|r| fmt_rate(r, "req/s")).unwrap_or_default(),
                });
            }
        }
    }
    for b in &lbs {
        let held: Vec<&Vip> = l
            .vips
            .iter()
            .filter(|v| b.routers.get(&v.router).map(String::as_str) == Some("master"))
            .collect();
        let state = if !b.up {
            "down"
        } else if !vip_mode {
            "up"
        } else if !held.is_empty() {
            "master"
        } else if b.routers.values().any(|s| s == "fault") {
            "fault"
        } else {
            "backup"
        };
        let mut detail = Vec::new();
        if let Some(t) = b.total {
            detail.push(fmt_rate(t, "req/s"));
        }
        if !held.is_empty() {
            detail.push(format!(
                "holds {}",
                held.iter()
                    .map(|v| v.address.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        d.boxes.push(DiagramBox {
            id: format!("lb:{}", b.name),
            tier: "lb",
            name: b.name.to_string(),
            label: "load balancer".into(),
            state: state.into(),
            detail,
            holder: None,
            restarted: false,
        });
    }

    // The web servers, and each balancer's view of them.
    let web_sel = not(
        Selector::name("rampart_web_requests_total"),
        "kind",
        "Admin",
    );
    let ready_sel = Selector::name("rampart_web_ready");
    let writes_sel = Selector::name("rampart_web_db_writes");
    let reads_primary = sel("rampart_web_db_reads", &[("role", "primary")]);
    let reads_replica = sel("rampart_web_db_reads", &[("role", "replica")]);
    let mut web_db: Vec<(String, bool, Option<f64>)> = Vec::new();
    for w in &l.webs {
        let n = node("web", w);
        let mut detail = Vec::new();
        let state = match &n {
            Some(n) if shown_up(n.health) => {
                if let Some(r) = n.rate(&web_sel) {
                    detail.push(fmt_rate(r, "req/s"));
                }
                let sql = match (n.rate(&writes_sel), n.rate(&reads_primary)) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
                };
                if let Some(r) = n.rate(&reads_replica).filter(|r| *r > 0.0) {
                    detail.push(format!("{} from replicas", fmt_rate(r, "reads/s")));
                }
                web_db.push((w.clone(), true, sql));
                if n.last(&ready_sel) == Some(0.0) {
                    "not-ready"
                } else {
                    "up"
                }
            }
            Some(_) => {
                web_db.push((w.clone(), false, None));
                "down"
            }
            // A pool server that is no web node: what the balancers say of it.
            None => {
                let ups: Vec<f64> = lbs
                    .iter()
                    .filter(|b| b.up)
                    .filter_map(|b| {
                        let n = node("lb", b.name)?;
                        let s = l.servers.iter().find(|s| &s.web == w)?;
                        let q = sel(
                            "rampart_server_up",
                            &[("pool", &s.pool), ("server", &s.server)],
                        );
                        n.last(&q)
                    })
                    .collect();
                if ups.is_empty() {
                    "unknown"
                } else if ups.contains(&1.0) {
                    "up"
                } else {
                    "down"
                }
            }
        };
        let label = l
            .servers
            .iter()
            .find(|s| &s.web == w)
            .map(|s| s.address.to_string())
            .or_else(|| {
                i.targets
                    .iter()
                    .find(|t| t.job == "web" && &t.instance == w)
                    .map(|t| t.addr.to_string())
            })
            .unwrap_or_default();
        d.boxes.push(DiagramBox {
            id: format!("web:{w}"),
            tier: "web",
            name: w.clone(),
            label,
            state: state.into(),
            detail,
            holder: None,
            restarted: false,
        });
    }
    for b in &lbs {
        let n = node("lb", b.name);
        for s in &l.servers {
            let q = |name: &str| {
                sel(
                    name,
                    &[("pool", s.pool.as_str()), ("server", s.server.as_str())],
                )
            };
            let (up_s, ej_s, drain_s, maint_s, req_s) = (
                q("rampart_server_up"),
                q("rampart_server_ejected"),
                q("rampart_server_state").with("state", "drain"),
                q("rampart_server_state").with("state", "maintenance"),
                q("rampart_server_requests_total"),
            );
            let (state, rate) = match &n {
                Some(n) if shown_up(n.health) => {
                    let st = if n.last(&maint_s) == Some(1.0) {
                        "maintenance"
                    } else if n.last(&drain_s) == Some(1.0) {
                        "drain"
                    } else if n.last(&up_s) == Some(0.0) {
                        // Health checks say down: that is why, ejected or not.
                        "down"
                    } else if n.last(&ej_s) == Some(1.0) {
                        "ejected"
                    } else {
                        match n.last(&up_s) {
                            Some(_) => "up",
                            // A balancer without metrics (probe only): the web node's state.
                            None => d
                                .find(&format!("web:{}", s.web))
                                .map(|x| if x.state == "down" { "down" } else { "up" })
                                .unwrap_or("unknown"),
                        }
                    };
                    (st, n.rate(&req_s))
                }
                _ => ("down", None),
            };
            // Out of rotation: the state, not the rate of before.
            let label = match (state, rate) {
                ("up", Some(r)) => fmt_rate(r, "req/s"),
                ("up", None) => String::new(),
                (st, _) => st.to_string(),
            };
            d.arrows.push(Arrow {
                from: format!("lb:{}", b.name),
                to: format!("web:{}", s.web),
                kind: "request",
                state: state.into(),
                rate,
                lag_bytes: None,
                label,
            });
        }
    }
    if l.lbs.is_empty() {
        for w in &l.webs {
            d.arrows.push(Arrow {
                from: "clients".into(),
                to: format!("web:{w}"),
                kind: "request",
                state: d
                    .find(&format!("web:{w}"))
                    .map(|b| if b.state == "down" { "down" } else { "up" })
                    .unwrap_or("unknown")
                    .into(),
                rate: None,
                lag_bytes: None,
                label: String::new(),
            });
        }
    }

    // The databases.
    let lag_sel = Selector::name("rampart_db_replication_lag_bytes");
    let tl_sel = Selector::name("rampart_db_timeline");
    let members = i
        .cluster
        .and_then(|c| c.get("members"))
        .and_then(Value::as_array);
    let mut lags = BTreeMap::new();
    for db in &l.dbs {
        let n = node("db", db);
        let mut detail = Vec::new();
        let state = match &n {
            Some(n) if shown_up(n.health) => {
                let mut role = "up";
                for r in ["primary", "replica", "demoted", "starting", "stopped"] {
                    if n.last(&sel("rampart_db_role", &[("role", r)])) == Some(1.0) {
                        role = r;
                    }
                }
                if let Some(t) = n.last(&tl_sel) {
                    detail.push(format!("timeline {t}"));
                }
                if role == "replica" {
                    if let Some(lag) = n.last(&lag_sel) {
                        lags.insert(db.clone(), lag);
                        detail.push(format!("lag {}", fmt_bytes(lag)));
                    }
                }
                let sync = members
                    .and_then(|ms| {
                        ms.iter()
                            .find(|m| m.get("name").and_then(Value::as_str) == Some(db.as_str()))
                    })
                    .and_then(|m| m.get("sync_standby"))
                    .and_then(Value::as_bool)
                    == Some(true);
                if sync && role == "replica" {
                    detail.push("synchronous standby".into());
                }
                role
            }
            Some(_) => "down",
            None => "unknown",
        };
        d.boxes.push(DiagramBox {
            id: format!("db:{db}"),
            tier: "db",
            name: db.clone(),
            label: match state {
                "primary" => "primary (reads, writes)",
                "replica" => "replica (reads)",
                _ => "PostgreSQL",
            }
            .into(),
            state: state.into(),
            detail,
            holder: None,
            restarted: false,
        });
    }
    if let Some(p) = d.primary().map(|b| b.id.clone()) {
        for (w, up, rate) in &web_db {
            d.arrows.push(Arrow {
                from: format!("web:{w}"),
                to: p.clone(),
                kind: "sql",
                state: if *up { "up" } else { "down" }.into(),
                rate: *rate,
                lag_bytes: None,
                label: rate.map(|r| fmt_rate(r, "q/s")).unwrap_or_default(),
            });
        }
        for db in &l.dbs {
            let id = format!("db:{db}");
            if id == p {
                continue;
            }
            let st = d.find(&id).map(|b| b.state.clone()).unwrap_or_default();
            let lag = lags.get(db).copied();
            d.arrows.push(Arrow {
                from: p.clone(),
                to: id,
                kind: "replication",
                state: if st == "replica" { "streaming" } else { "down" }.into(),
                rate: None,
                lag_bytes: lag,
                label: lag
                    .map(|b| format!("lag {}", fmt_bytes(b)))
                    .unwrap_or_default(),
            });
        }
    }

    // Restarts no scrape saw: a counter of the node's own went back.
    let counters = [
        ("lb", Selector::name("rampart_listener_requests_total")),
        ("web", Selector::name("rampart_web_requests_total")),
        ("db", Selector::name("rampart_db_xact_commit_total")),
    ];
    for b in d.boxes.iter_mut() {
        if let Some((job, c)) = counters.iter().find(|(j, _)| *j == b.tier) {
            b.restarted = node(job, &b.name).is_some_and(|n| n.reset(c));
        }
    }

    // etcd, beside the databases (their failover's referee).
    let leader_sel = Selector::name("etcd_server_is_leader");
    for m in &l.etcd {
        let n = node("etcd", m);
        let state = match &n {
            Some(n) if shown_up(n.health) => match n.last(&leader_sel) {
                Some(1.0) => "leader",
                Some(_) => "follower",
                None => "up",
            },
            Some(_) => "down",
            None => "unknown",
        };
        d.boxes.push(DiagramBox {
            id: format!("etcd:{m}"),
            tier: "etcd",
            name: m.clone(),
            label: "etcd".into(),
            state: state.into(),
            detail: Vec::new(),
            holder: None,
            restarted: false,
        });
    }
    d
}

/// Something the monitor saw happen between two scrapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `down`, `up`, `restart`, `failover`, `takeover`, `ejected`, `back`, `state`.
    pub kind: &'static str,
    /// The box (or arrow's target) it is about.
    pub subject: String,
    pub text: String,
}

fn is_down(s: &str) -> bool {
    matches!(s, "down" | "unknown")
}

/// What changed from `prev` to `next`, in diagram order.
pub fn changes(prev: &Diagram, next: &Diagram) -> Vec<Change> {
    let mut out = Vec::new();
    for b in &next.boxes {
        let Some(p) = prev.find(&b.id) else {
            continue;
        };
        if b.tier == "address" {
            if p.holder != b.holder {
                let text = match (&p.holder, &b.holder) {
                    (Some(a), Some(z)) => format!("{} moved from {a} to {z}", b.name),
                    (None, Some(z)) => format!("{z} took {}", b.name),
                    (Some(a), None) => format!("{} lost its holder ({a})", b.name),
                    (None, None) => continue,
                };
                out.push(Change {
                    kind: "takeover",
                    subject: b.name.clone(),
                    text,
                });
            } else if p.state != b.state {
                out.push(Change {
                    kind: if is_down(&b.state) { "down" } else { "up" },
                    subject: b.name.clone(),
                    text: format!("{} {} -> {}", b.name, p.state, b.state),
                });
            }
            continue;
        }
        if p.state == b.state {
            if b.restarted && !is_down(&b.state) {
                out.push(Change {
                    kind: "restart",
                    subject: b.name.clone(),
                    text: format!("{} restarted between two scrapes", b.name),
                });
            }
            continue;
        }
        let (kind, text) = if is_down(&b.state) {
            ("down", format!("{} is down (was {})", b.name, p.state))
        } else if is_down(&p.state) {
            ("up", format!("{} is back ({})", b.name, b.state))
        } else if b.tier == "lb" && b.state == "master" {
            ("takeover", format!("{} became master", b.name))
        } else if b.restarted {
            // Back before a scrape saw it down, but not yet as it was (a web node that is
            // not ready until it reaches the database again): the restart is the news.
            (
                "restart",
                format!(
                    "{} restarted between two scrapes ({} -> {})",
                    b.name, p.state, b.state
                ),
            )
        } else {
            ("state", format!("{}: {} -> {}", b.name, p.state, b.state))
        };
        out.push(Change {
            kind,
            subject: b.name.clone(),
            text,
        });
    }
    match (prev.primary(), next.primary()) {
        (Some(a), Some(z)) if a.id != z.id => out.push(Change {
            kind: "failover",
            subject: z.name.clone(),
            text: format!("failover: {} is the primary (was {})", z.name, a.name),
        }),
        (None, Some(z)) if prev.boxes.iter().any(|b| b.tier == "db") => out.push(Change {
            kind: "failover",
            subject: z.name.clone(),
            text: format!("{} is the primary", z.name),
        }),
        (Some(a), None) => out.push(Change {
            kind: "failover",
            subject: a.name.clone(),
            text: format!("no primary (was {})", a.name),
        }),
        _ => {}
    }
    for a in next.arrows.iter().filter(|a| a.from.starts_with("lb:")) {
        let Some(p) = prev
            .arrows
            .iter()
            .find(|x| x.from == a.from && x.to == a.to && x.kind == a.kind)
        else {
            continue;
        };
        // A balancer going down is its own event; only what a live one decides counts.
        if p.state == a.state
            || a.state == "down" && next.find(&a.from).is_some_and(|b| b.state == "down")
        {
            continue;
        }
        if p.state == "down" && prev.find(&a.from).is_some_and(|b| b.state == "down") {
            continue;
        }
        let lb = a.from.trim_start_matches("lb:");
        let server = a.to.trim_start_matches("web:");
        let (kind, text) = match (p.state.as_str(), a.state.as_str()) {
            (_, "ejected") => ("ejected", format!("{lb} ejected {server} (outlier)")),
            (_, "down") => (
                "ejected",
                format!("{lb} marks {server} down (health checks)"),
            ),
            ("ejected" | "down", "up") => ("back", format!("{lb} takes {server} back")),
            (_, s) => ("state", format!("{lb}: {server} {} -> {s}", p.state)),
        };
        out.push(Change {
            kind,
            subject: server.to_string(),
            text,
        });
    }
    out
}

#[cfg(test)]
mod tests;
