//! Tests of `diagram`.

#![allow(clippy::unwrap_used)]

use super::*;
use rampart_alert::Labels;
use rampart_topology::Source;

const TOPO: &str = r#"
[cluster]
name = "d"
etcd = ["http://127.0.0.1:2379"]

[[etcd.members]]
name = "etcd1"
client = "127.0.0.1:2379"
peer = "127.0.0.1:2380"

[db]
data_dir = "/tmp/d"
[[db.nodes]]
name = "db1"
port = 5432
api = "127.0.0.1:8201"
[[db.nodes]]
name = "db2"
port = 5433
api = "127.0.0.1:8202"

[web]
root = "/tmp"
[[web.node]]
name = "web1"
listen = "127.0.0.1:8101"
[[web.node]]
name = "web2"
listen = "127.0.0.1:8102"

[[lb.nodes]]
name = "lb1"
address = "127.0.0.1:8091"
admin = "127.0.0.1:8191"
[[lb.nodes]]
name = "lb2"
address = "127.0.0.1:8092"
admin = "127.0.0.1:8192"

[[lb.listener]]
name = "site"
address = "127.0.0.1:8080"
pool = "web"

[[lb.pool]]
name = "web"
servers = [{ name = "web1", address = "127.0.0.1:8101" }, { name = "web2", address = "127.0.0.1:8102" }]

[monitor]
listen = "127.0.0.1:8090"
"#;

fn topo(extra: &str) -> Topology {
    Topology::from_source(&Source::new("t.toml", format!("{TOPO}{extra}"))).unwrap()
}

/// Scrapes written by hand: each round pushes samples at `t` for the targets up.
struct World {
    targets: Vec<Target>,
    health: Vec<TargetHealth>,
    store: Store,
}

impl World {
    fn new(t: &Topology) -> World {
        let targets = crate::targets::targets(t);
        World {
            health: vec![TargetHealth::default(); targets.len()],
            targets,
            store: Store::new(100, 10_000),
        }
    }

    /// One round at `t`: `up` says which instances answered; `samples` are
    /// (instance, metric, labels, value) of those.
    fn round(&mut self, t: u64, down: &[&str], samples: &[Sample<'_>]) {
        for (k, tg) in self.targets.iter().enumerate() {
            let up = !down.contains(&tg.instance.as_str());
            self.health[k] = TargetHealth {
                up,
                last_scrape_ms: t,
                ..TargetHealth::default()
            };
            if !up {
                continue;
            }
            for (inst, name, labels, v) in samples {
                if *inst != tg.instance {
                    continue;
                }
                let mut l: Labels = labels
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
                l.insert("job".into(), tg.job.clone());
                l.insert("instance".into(), tg.instance.clone());
                self.store.push(&SeriesKey::new(*name, l), t, *v);
            }
        }
    }

    fn diagram(&self, layout: &Layout) -> Diagram {
        build(&Inputs {
            layout,
            targets: &self.targets,
            health: &self.health,
            store: &self.store,
            cluster: None,
            rate_window_ms: 5000,
        })
    }
}

/// A healthy stack after `k` seconds of steady traffic: each lb forwards 10 req/s
/// to each web server, db1 is the primary, db2 its replica 2 kB behind.
type Owned = Vec<(String, String, Vec<(String, String)>, f64)>;
/// (instance, metric, labels, value) of one scrape.
type Sample<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64);

fn healthy(k: u64, down: &[&str], vrrp: &[(&str, &str, &str)]) -> Owned {
    let mut s = Vec::new();
    let n = k as f64;
    for lb in ["lb1", "lb2"] {
        s.push((
            lb.to_string(),
            "rampart_listener_requests_total".into(),
            vec![
                ("listener".into(), "site".into()),
                ("class".into(), "2xx".into()),
            ],
            20.0 * n,
        ));
        s.push((
            lb.to_string(),
            "rampart_listener_requests_total".into(),
            vec![
                ("listener".into(), "direct".into()),
                ("class".into(), "2xx".into()),
            ],
            1000.0 * n,
        ));
        for w in ["web1", "web2"] {
            let up = !down.contains(&w);
            s.push((
                lb.to_string(),
                "rampart_server_requests_total".into(),
                vec![
                    ("pool".into(), "web".into()),
                    ("server".into(), w.into()),
                    ("class".into(), "2xx".into()),
                ],
                if up { 10.0 * n } else { 0.0 },
            ));
            s.push((
                lb.to_string(),
                "rampart_server_up".into(),
                vec![("pool".into(), "web".into()), ("server".into(), w.into())],
                if up { 1.0 } else { 0.0 },
            ));
            s.push((
                lb.to_string(),
                "rampart_server_ejected".into(),
                vec![("pool".into(), "web".into()), ("server".into(), w.into())],
                0.0,
            ));
        }
    }
    for (lb, router, st) in vrrp {
        for x in ["init", "backup", "master", "fault", "stopping"] {
            s.push((
                lb.to_string(),
                "rampart_vrrp_state".into(),
                vec![
                    ("router".into(), router.to_string()),
                    ("state".into(), x.into()),
                ],
                if x == *st { 1.0 } else { 0.0 },
            ));
        }
    }
    for w in ["web1", "web2"] {
        s.push((
            w.to_string(),
            "rampart_web_requests_total".into(),
            vec![
                ("kind".into(), "App".into()),
                ("class".into(), "2xx".into()),
            ],
            20.0 * n,
        ));
        s.push((
            w.to_string(),
            "rampart_web_requests_total".into(),
            vec![
                ("kind".into(), "Admin".into()),
                ("class".into(), "2xx".into()),
            ],
            500.0 * n,
        ));
        s.push((
            w.to_string(),
            "rampart_web_db_writes".into(),
            vec![],
            3.0 * n,
        ));
        s.push((w.to_string(), "rampart_web_ready".into(), vec![], 1.0));
    }
    for (db, role) in [("db1", "primary"), ("db2", "replica")] {
        for r in ["primary", "replica", "demoted", "starting", "stopped"] {
            s.push((
                db.to_string(),
                "rampart_db_role".into(),
                vec![("role".into(), r.into())],
                if r == role { 1.0 } else { 0.0 },
            ));
        }
        s.push((
            db.to_string(),
            "rampart_db_replication_lag_bytes".into(),
            vec![],
            if role == "replica" { 2048.0 } else { 0.0 },
        ));
    }
    s.push((
        "etcd1".to_string(),
        "etcd_server_is_leader".into(),
        vec![],
        1.0,
    ));
    s
}

fn push(w: &mut World, k: u64, down: &[&str], vrrp: &[(&str, &str, &str)]) {
    let owned = healthy(k, down, vrrp);
    let lbls: Vec<Vec<(&str, &str)>> = owned
        .iter()
        .map(|(_, _, l, _)| l.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect())
        .collect();
    let samples: Vec<Sample<'_>> = owned
        .iter()
        .zip(&lbls)
        .map(|((i, n, _, v), l)| (i.as_str(), n.as_str(), l.as_slice(), *v))
        .collect();
    w.round(k * 1000, down, &samples);
}

fn arrow<'a>(d: &'a Diagram, from: &str, to: &str) -> &'a Arrow {
    d.arrows
        .iter()
        .find(|a| a.from == from && a.to == to)
        .unwrap_or_else(|| panic!("no arrow {from} -> {to} in {:#?}", d.arrows))
}

fn state<'a>(d: &'a Diagram, id: &str) -> &'a str {
    &d.find(id).unwrap_or_else(|| panic!("no box {id}")).state
}

#[test]
fn layout_reads_tiers_listeners_vips_and_pool_servers() {
    let l = Layout::of(&topo(""));
    assert_eq!(l.lbs, ["lb1", "lb2"]);
    assert_eq!(l.webs, ["web1", "web2"]);
    assert_eq!(l.dbs, ["db1", "db2"]);
    assert_eq!(l.etcd, ["etcd1"]);
    assert_eq!(l.listeners.len(), 1);
    assert!(l.vips.is_empty());
    assert_eq!(l.servers[1].web, "web2");

    let l = Layout::of(&topo(
            "\n[[lb.vip]]\naddress = \"10.0.0.100/24\"\n[[lb.vip]]\naddress = \"10.0.0.101/24\"\nmaster = \"lb2\"\n",
        ));
    assert_eq!(
        l.vips,
        vec![
            Vip {
                router: "vip1".into(),
                address: "10.0.0.100".parse().unwrap(),
                master: Some("lb1".into())
            },
            Vip {
                router: "vip2".into(),
                address: "10.0.0.101".parse().unwrap(),
                master: Some("lb2".into())
            },
        ]
    );
}

#[test]
fn a_healthy_stack_draws_every_tier_with_rates_and_lag() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    for k in 0..4 {
        push(&mut w, k, &[], &[]);
    }
    let d = w.diagram(&layout);
    let ids: Vec<&str> = d.boxes.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "clients",
            "addr:site",
            "lb:lb1",
            "lb:lb2",
            "web:web1",
            "web:web2",
            "db:db1",
            "db:db2",
            "etcd:etcd1"
        ]
    );
    assert_eq!(state(&d, "lb:lb1"), "up");
    assert_eq!(state(&d, "web:web2"), "up");
    assert_eq!(state(&d, "db:db1"), "primary");
    assert_eq!(state(&d, "db:db2"), "replica");
    assert_eq!(state(&d, "etcd:etcd1"), "leader");
    // The site's rate is both balancers' (without their `direct` entries).
    assert_eq!(arrow(&d, "clients", "addr:site").rate, Some(40.0));
    assert_eq!(arrow(&d, "addr:site", "lb:lb2").rate, Some(20.0));
    assert_eq!(d.find("lb:lb1").unwrap().detail[0], "20 req/s");
    let a = arrow(&d, "lb:lb1", "web:web2");
    assert_eq!(
        (a.state.as_str(), a.rate, a.label.as_str()),
        ("up", Some(10.0), "10 req/s")
    );
    // Web requests without the admin endpoints; guestbook writes go to the primary.
    assert_eq!(d.find("web:web1").unwrap().detail[0], "20 req/s");
    assert_eq!(arrow(&d, "web:web1", "db:db1").rate, Some(3.0));
    let r = arrow(&d, "db:db1", "db:db2");
    assert_eq!(
        (r.kind, r.state.as_str(), r.lag_bytes),
        ("replication", "streaming", Some(2048.0))
    );
    assert_eq!(r.label, "lag 2 kB");
    // 4 lb->web arrows, 2 site->lb, 1 clients->site, 2 web->db, 1 replication.
    assert_eq!(d.arrows.len(), 10, "{:#?}", d.arrows);
}

#[test]
fn a_dead_web_server_turns_down_and_the_balancers_mark_it() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    for k in 0..3 {
        push(&mut w, k, &[], &[]);
    }
    let before = w.diagram(&layout);
    push(&mut w, 3, &["web1"], &[]);
    let after = w.diagram(&layout);
    assert_eq!(state(&after, "web:web1"), "down");
    assert!(
        after.find("web:web1").unwrap().detail.is_empty(),
        "no stale rate"
    );
    assert_eq!(arrow(&after, "lb:lb1", "web:web1").state, "down");
    assert_eq!(arrow(&after, "web:web1", "db:db1").state, "down");
    assert_eq!(arrow(&after, "lb:lb1", "web:web2").state, "up");
    let ch = changes(&before, &after);
    let texts: Vec<&str> = ch.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "web1 is down (was up)",
            "lb1 marks web1 down (health checks)",
            "lb2 marks web1 down (health checks)"
        ]
    );
    push(&mut w, 4, &[], &[]);
    let back = w.diagram(&layout);
    let texts: Vec<String> = changes(&after, &back).into_iter().map(|c| c.text).collect();
    assert_eq!(
        texts,
        [
            "web1 is back (up)",
            "lb1 takes web1 back",
            "lb2 takes web1 back"
        ]
    );
}

#[test]
fn a_restart_between_two_scrapes_is_an_event() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    for k in 0..3 {
        push(&mut w, k, &[], &[]);
    }
    let before = w.diagram(&layout);
    assert!(before.boxes.iter().all(|b| !b.restarted));
    // web2 died and came back between rounds 2 and 3: its counters start again.
    let app = [("kind", "App"), ("class", "2xx")];
    let admin = [("kind", "Admin"), ("class", "2xx")];
    w.round(
        3000,
        &[],
        &[
            ("web2", "rampart_web_requests_total", &app, 1.0),
            ("web2", "rampart_web_requests_total", &admin, 4.0),
        ],
    );
    let after = w.diagram(&layout);
    assert!(after.find("web:web2").unwrap().restarted);
    assert!(!after.find("web:web1").unwrap().restarted);
    let ch = changes(&before, &after);
    assert!(
        ch.iter()
            .any(|c| c.kind == "restart" && c.text == "web2 restarted between two scrapes"),
        "{ch:?}"
    );
}

/// A node that restarted between two scrapes and is not yet as it was (a web node not
/// ready until it reaches the database again) is still reported as a restart: the drill's
/// news, not a bare state change (seen in CI: `web1: up -> not-ready`, no restart event).
#[test]
fn a_restart_that_changed_the_state_is_still_a_restart() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    for k in 0..3 {
        push(&mut w, k, &[], &[]);
    }
    let before = w.diagram(&layout);
    let app = [("kind", "App"), ("class", "2xx")];
    let admin = [("kind", "Admin"), ("class", "2xx")];
    w.round(
        3000,
        &[],
        &[
            ("web2", "rampart_web_requests_total", &app, 1.0),
            ("web2", "rampart_web_requests_total", &admin, 4.0),
            ("web2", "rampart_web_ready", &[], 0.0),
        ],
    );
    let after = w.diagram(&layout);
    let b = after.find("web:web2").unwrap();
    assert!(b.restarted);
    assert_eq!(b.state, "not-ready");
    let ch = changes(&before, &after);
    assert!(
        ch.iter().any(|c| c.kind == "restart"
            && c.text == "web2 restarted between two scrapes (up -> not-ready)"),
        "{ch:?}"
    );
}

#[test]
fn one_timed_out_scrape_draws_the_node_as_it_was_two_draw_it_down() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    for k in 0..3 {
        push(&mut w, k, &[], &[]);
    }
    let timeout = |w: &mut World, t: u64, fails: u32| {
        let k = w.targets.iter().position(|x| x.instance == "db1").unwrap();
        w.health[k] = TargetHealth {
            up: false,
            last_scrape_ms: t,
            error: Some("no answer from 127.0.0.1:8201 within 800 ms".into()),
            fails,
            last_ok_ms: 2000,
            timed_out: true,
            ..TargetHealth::default()
        };
    };
    push(&mut w, 3, &["db1"], &[]);
    timeout(&mut w, 3000, 1);
    let d = w.diagram(&layout);
    assert_eq!(
        state(&d, "db:db1"),
        "primary",
        "the last answer, one round late"
    );
    assert_eq!(arrow(&d, "db:db1", "db:db2").state, "streaming");
    push(&mut w, 4, &["db1"], &[]);
    timeout(&mut w, 4000, 2);
    let d = w.diagram(&layout);
    assert_eq!(state(&d, "db:db1"), "down");
    assert!(d.primary().is_none());
    // Refused at once (not a timeout): down at once.
    push(&mut w, 5, &["web1"], &[]);
    assert_eq!(state(&w.diagram(&layout), "web:web1"), "down");
}

#[test]
fn an_ejected_server_is_an_event_and_back_again() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    push(&mut w, 0, &[], &[]);
    let before = w.diagram(&layout);
    let lbl = [("pool", "web"), ("server", "web2")];
    w.round(
        1000,
        &[],
        &[
            ("lb1", "rampart_server_up", &lbl, 1.0),
            ("lb1", "rampart_server_ejected", &lbl, 1.0),
        ],
    );
    // Other series of lb1 are stale now (not in this round): their arrows say nothing.
    let d = w.diagram(&layout);
    assert_eq!(arrow(&d, "lb:lb1", "web:web2").state, "ejected");
    let ch = changes(&before, &d);
    assert!(
        ch.iter()
            .any(|c| c.kind == "ejected" && c.text == "lb1 ejected web2 (outlier)"),
        "{ch:?}"
    );
}

#[test]
fn failover_is_seen_when_the_primary_changes() {
    let t = topo("");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    push(&mut w, 0, &[], &[]);
    let before = w.diagram(&layout);
    let role = |r: &'static str| -> [(&'static str, &'static str); 1] { [("role", r)] };
    let (p, rp, s) = (role("primary"), role("replica"), role("stopped"));
    w.round(
        1000,
        &["db1"],
        &[
            ("db2", "rampart_db_role", &p, 1.0),
            ("db2", "rampart_db_role", &rp, 0.0),
            ("db2", "rampart_db_role", &s, 0.0),
        ],
    );
    let after = w.diagram(&layout);
    assert_eq!(state(&after, "db:db1"), "down");
    assert_eq!(state(&after, "db:db2"), "primary");
    // Replication now flows from db2 to db1, which is down.
    assert_eq!(arrow(&after, "db:db2", "db:db1").state, "down");
    let ch = changes(&before, &after);
    assert!(
        ch.iter()
            .any(|c| c.kind == "failover" && c.text == "failover: db2 is the primary (was db1)"),
        "{ch:?}"
    );
    assert!(
        ch.iter().any(|c| c.kind == "down" && c.subject == "db1"),
        "{ch:?}"
    );
}

#[test]
fn virtual_ips_show_their_holder_and_a_takeover() {
    let t = topo("\n[[lb.vip]]\naddress = \"10.0.0.100/24\"\n[[lb.vip]]\naddress = \"10.0.0.101/24\"\nmaster = \"lb2\"\n");
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    let normal = [
        ("lb1", "vip1", "master"),
        ("lb1", "vip2", "backup"),
        ("lb2", "vip1", "backup"),
        ("lb2", "vip2", "master"),
    ];
    for k in 0..3 {
        push(&mut w, k, &[], &normal);
    }
    let before = w.diagram(&layout);
    let ids: Vec<&str> = before
        .boxes
        .iter()
        .filter(|b| b.tier == "address")
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(ids, ["vip:vip1", "vip:vip2"]);
    let v1 = before.find("vip:vip1").unwrap();
    assert_eq!(
        (v1.name.as_str(), v1.state.as_str(), v1.holder.as_deref()),
        ("10.0.0.100", "master", Some("lb1"))
    );
    assert_eq!(state(&before, "lb:lb1"), "master");
    assert_eq!(arrow(&before, "vip:vip1", "lb:lb1").label, "active");
    assert_eq!(arrow(&before, "vip:vip1", "lb:lb2").state, "backup");
    // lb1 holds one address: the site's 20 req/s of lb1 go through it.
    assert_eq!(arrow(&before, "clients", "vip:vip1").rate, Some(20.0));

    // lb1 dies: lb2 holds both.
    let takeover = [("lb2", "vip1", "master"), ("lb2", "vip2", "master")];
    push(&mut w, 3, &["lb1"], &takeover);
    let after = w.diagram(&layout);
    assert_eq!(state(&after, "lb:lb1"), "down");
    assert_eq!(
        after.find("vip:vip1").unwrap().holder.as_deref(),
        Some("lb2")
    );
    assert_eq!(arrow(&after, "vip:vip1", "lb:lb1").state, "down");
    assert_eq!(arrow(&after, "clients", "vip:vip1").rate, Some(10.0));
    let texts: Vec<String> = changes(&before, &after)
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(
        texts,
        [
            "10.0.0.100 moved from lb1 to lb2",
            "lb1 is down (was master)"
        ]
    );

    // Nobody holds vip2 any more when both are down.
    push(&mut w, 4, &["lb1", "lb2"], &[]);
    let dark = w.diagram(&layout);
    assert_eq!(state(&dark, "vip:vip2"), "down");
    assert_eq!(arrow(&dark, "clients", "vip:vip2").state, "down");
}

#[test]
fn without_a_balancer_clients_reach_the_web_servers() {
    let t = Topology::from_source(&Source::new(
            "t.toml",
            "[cluster]\nname = \"x\"\n[web]\nroot = \"/tmp\"\n[[web.node]]\nname = \"w\"\nlisten = \"127.0.0.1:9\"\n[monitor]\nlisten = \"127.0.0.1:8\"\n",
        ))
        .unwrap();
    let layout = Layout::of(&t);
    let mut w = World::new(&t);
    w.round(0, &["w"], &[]);
    let d = w.diagram(&layout);
    assert_eq!(state(&d, "web:w"), "down");
    assert_eq!(arrow(&d, "clients", "web:w").state, "down");
    assert!(d.primary().is_none());
}
