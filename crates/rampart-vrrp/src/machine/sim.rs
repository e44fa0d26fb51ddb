//! A deterministic discrete-event simulation of routers on one link, for the property
//! tests in `props.rs`: adverts go through `encode`/`decode`, each delivery takes a random
//! latency (one link keeps its order), links can be cut one way, routers crash (silently), restart, stop cleanly,
//! fault, get penalties. Every call's actions are checked as they are applied.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::packet::GROUP_V4;

/// splitmix64: small, deterministic, good enough to pick events.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_nanos() as u64;
        lo + Duration::from_nanos(self.below(span.saturating_add(1)))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
pub(super) enum Ev {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        gen: u64,
    },
    /// Drop everything `from` sends to `to`.
    Cut {
        from: usize,
        to: usize,
    },
    /// Restore every link.
    Heal,
    /// The router stops silently; its addresses go with the machine.
    Crash(usize),
    /// Start a router that is not running (first start, after a crash or a stop).
    Restart(usize),
    /// Clean stop (`shutdown`).
    Stop(usize),
    Fault(usize, bool),
    Penalty(usize, u8),
    /// Exactly one master among routers that may be master (none if there is none).
    Check,
    /// The same, once in-flight adverts have landed (a takeover by preemption overlaps
    /// the old master for one latency: make before break, not split brain).
    Recheck,
}

pub(super) struct Node {
    pub cfg: RouterConfig,
    pub r: Router,
    pub running: bool,
    pub holds: bool,
    pub fault: bool,
    pub penalty: u8,
    gen: u64,
}

pub(super) struct World {
    t0: Instant,
    pub now: Duration,
    pub nodes: Vec<Node>,
    cut: Vec<Vec<bool>>,
    /// fifo[from][to]: time of the last delivery scheduled on that link.
    fifo: Vec<Vec<Duration>>,
    queue: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    pub rng: Rng,
    /// Latency of one delivery: uniform in this range.
    pub lat: (Duration, Duration),
    trace: Vec<String>,
    /// (time, node, cause) of every transition to Master.
    pub takeovers: Vec<(Duration, usize, Cause)>,
    /// (time, node, cause of the last transition) of every `Stopped`.
    pub stops: Vec<(Duration, usize, Cause)>,
    /// heard[to][from]: first delivery from `from` since `to` last started.
    pub heard: Vec<Vec<Option<Duration>>>,
    /// While true, some router must hold the addresses after every event.
    pub watch_holders: bool,
}

impl World {
    /// Routers with primaries 10.0.0.1, 10.0.0.2, ... (not started: schedule `Restart`).
    pub fn new(cfgs: Vec<RouterConfig>, seed: u64, lat: (Duration, Duration)) -> World {
        let n = cfgs.len();
        let nodes = cfgs
            .into_iter()
            .map(|cfg| Node {
                r: Router::new(cfg.clone()).unwrap(),
                cfg,
                running: false,
                holds: false,
                fault: false,
                penalty: 0,
                gen: 0,
            })
            .collect();
        World {
            t0: Instant::now(),
            now: Duration::ZERO,
            nodes,
            cut: vec![vec![false; n]; n],
            fifo: vec![vec![Duration::ZERO; n]; n],
            queue: BTreeMap::new(),
            seq: 0,
            rng: Rng(seed),
            lat,
            trace: Vec::new(),
            takeovers: Vec::new(),
            stops: Vec::new(),
            heard: vec![vec![None; n]; n],
            watch_holders: false,
        }
    }

    /// The configuration of router `i` (0-based) of a simulation.
    pub fn config(i: usize, prio: u8, interval: Duration) -> RouterConfig {
        let mut c = RouterConfig::new(7, prio, primary(i), vec![vip()]);
        c.interval = interval;
        c
    }

    pub fn at(&mut self, t: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    pub fn run_until(&mut self, end: Duration) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((t, _), ev) = entry.remove_entry();
            self.now = t;
            self.handle(ev);
            if self.watch_holders && !self.nodes.iter().any(|n| n.holds) {
                self.fail("nobody holds the addresses during a clean stop");
            }
        }
        self.now = end;
    }

    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running && self.nodes[i].r.state() == State::Master)
            .collect()
    }

    /// Routers that may be master: running, not faulted, not stopping.
    fn eligible(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.running && !n.fault && n.r.state() != State::Stopping)
            .count()
    }

    pub fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    pub fn fail(&self, msg: &str) -> ! {
        let tail = self.trace.len().saturating_sub(40);
        panic!(
            "{msg} at {:?}\nstates: {:?}\nlast events:\n{}",
            self.now,
            self.nodes
                .iter()
                .map(|n| (n.running, n.r.state(), n.r.effective_priority(), n.holds))
                .collect::<Vec<_>>(),
            self.trace[tail..].join("\n")
        );
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("{:>12?} {line}", self.now));
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.instant();
        match ev {
            Ev::Deliver { to, from, bytes } => {
                if !self.nodes[to].running {
                    return;
                }
                let src = primary(from);
                let ad = match Advert::decode(&bytes, src, IpAddr::V4(GROUP_V4)) {
                    Ok(ad) => ad,
                    Err(e) => self.fail(&format!("our own advert does not decode: {e}")),
                };
                self.heard[to][from].get_or_insert(self.now);
                self.log(format!("{from} -> {to} prio {}", ad.priority));
                let acts = self.nodes[to].r.on_advert(now, src, &ad);
                self.apply(to, acts);
            }
            Ev::Timer { node, gen } => {
                if !self.nodes[node].running || self.nodes[node].gen != gen {
                    return;
                }
                let acts = self.nodes[node].r.on_timer(now);
                self.apply(node, acts);
                if self.nodes[node].r.next_deadline().is_some_and(|d| d <= now) {
                    self.fail("on_timer left a deadline in the past");
                }
            }
            Ev::Cut { from, to } => {
                self.log(format!("cut {from} -> {to}"));
                self.cut[from][to] = true;
            }
            Ev::Heal => {
                self.log("heal".into());
                for row in &mut self.cut {
                    row.fill(false);
                }
            }
            Ev::Crash(i) => {
                self.log(format!("crash {i}"));
                let n = &mut self.nodes[i];
                n.running = false;
                n.holds = false;
                n.gen += 1;
            }
            Ev::Restart(i) => {
                if self.nodes[i].running {
                    return;
                }
                self.log(format!("restart {i}"));
                let n = &mut self.nodes[i];
                n.r = Router::new(n.cfg.clone()).unwrap();
                let (fault, penalty) = (n.fault, n.penalty);
                assert!(n.r.set_fault(now, fault).is_empty());
                assert!(n.r.set_penalty(now, penalty).is_empty());
                n.running = true;
                self.heard[i].fill(None);
                let acts = self.nodes[i].r.start(now);
                self.apply(i, acts);
            }
            Ev::Stop(i) => {
                if !self.nodes[i].running {
                    return;
                }
                self.log(format!("stop {i}"));
                let acts = self.nodes[i].r.shutdown(now);
                self.apply(i, acts);
            }
            Ev::Fault(i, on) => {
                self.nodes[i].fault = on;
                if self.nodes[i].running {
                    self.log(format!("fault {i} {on}"));
                    let acts = self.nodes[i].r.set_fault(now, on);
                    self.apply(i, acts);
                }
            }
            Ev::Penalty(i, p) => {
                self.nodes[i].penalty = p;
                if self.nodes[i].running {
                    self.log(format!("penalty {i} {p}"));
                    let acts = self.nodes[i].r.set_penalty(now, p);
                    self.apply(i, acts);
                }
            }
            Ev::Check | Ev::Recheck => {
                let masters = self.masters();
                let want = usize::from(self.eligible() > 0);
                self.log(format!("check: masters {masters:?}"));
                if masters.len() != want {
                    if matches!(ev, Ev::Recheck) {
                        self.fail(&format!("{} masters, expected {want}", masters.len()));
                    }
                    let t = self.now + self.lat.1 + Duration::from_millis(1);
                    self.at(t, Ev::Recheck);
                }
            }
        }
    }

    /// Performs `acts` for router `i`, checking they make sense, and re-arms its timer.
    fn apply(&mut self, i: usize, acts: Actions) {
        if acts.len() > 4 {
            self.fail(&format!("{} actions in one call: {acts:?}", acts.len()));
        }
        // A master that yields to a higher priority sends one parting advert (in Backup).
        let yielded = acts.iter().any(|a| {
            matches!(
                a,
                Action::Transition {
                    from: State::Master,
                    to: State::Backup,
                    cause: Cause::HigherPriorityMaster
                }
            )
        });
        for a in acts {
            self.log(format!("{i}: {a:?}"));
            match a {
                Action::SendAdvert { priority } => {
                    let state = self.nodes[i].r.state();
                    let leaving = matches!(state, State::Stopping | State::Fault);
                    let parting = yielded && state == State::Backup && priority > 0;
                    if !parting
                        && ((priority == 0) != leaving
                            || !matches!(state, State::Master) && !leaving)
                    {
                        self.fail(&format!("advert of priority {priority} in {state}"));
                    }
                    let bytes = self.nodes[i]
                        .r
                        .advert(priority)
                        .encode(primary(i), IpAddr::V4(GROUP_V4))
                        .unwrap();
                    for to in 0..self.nodes.len() {
                        if to != i && !self.cut[i][to] {
                            // One link does not reorder (Ethernet keeps the order of one
                            // sender's frames): no delivery before the previous one.
                            let t = (self.now + self.rng.between(self.lat.0, self.lat.1))
                                .max(self.fifo[i][to]);
                            self.fifo[i][to] = t;
                            let bytes = bytes.clone();
                            self.at(t, Ev::Deliver { to, from: i, bytes });
                        }
                    }
                }
                Action::AddAddresses => {
                    if self.nodes[i].holds {
                        self.fail("AddAddresses while holding them");
                    }
                    self.nodes[i].holds = true;
                }
                Action::RemoveAddresses => {
                    if !self.nodes[i].holds {
                        self.fail("RemoveAddresses without holding them");
                    }
                    self.nodes[i].holds = false;
                }
                Action::Announce => {
                    if !self.nodes[i].holds {
                        self.fail("Announce without holding the addresses");
                    }
                }
                Action::Transition { to, cause, .. } => {
                    if to == State::Master {
                        self.takeovers.push((self.now, i, cause));
                    }
                    if to == State::Init {
                        self.stops.push((self.now, i, cause));
                    }
                }
                Action::Stopped => {
                    if self.nodes[i].holds {
                        self.fail("Stopped while holding the addresses");
                    }
                    self.nodes[i].running = false;
                    if !self
                        .stops
                        .last()
                        .is_some_and(|s| s.1 == i && s.0 == self.now)
                    {
                        self.stops.push((self.now, i, Cause::Shutdown));
                    }
                }
            }
        }
        let n = &self.nodes[i];
        if n.running && n.r.state().holds_addresses() != n.holds {
            self.fail(&format!("state {} but holds = {}", n.r.state(), n.holds));
        }
        let n = &mut self.nodes[i];
        n.gen += 1;
        let gen = n.gen;
        if let Some(d) = n.r.next_deadline() {
            let t = d.saturating_duration_since(self.t0).max(self.now);
            self.at(t, Ev::Timer { node: i, gen });
        }
    }
}

pub(super) fn primary(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i as u8))
}

fn vip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))
}
