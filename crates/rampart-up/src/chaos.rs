//! `rampart chaos`: fire drills against a running local stack, seen from a client.
//!
//! A client writes guestbook messages and reads the page through the site's address
//! during the whole drill. The drill kills (SIGKILL of the node's process group) one
//! node, and `rampart up` restarts what dies; or it cuts one node off the network for a
//! while (nftables rules on the node's cgroup, see [`crate::netcut`]), then heals the
//! cut (also on Ctrl-C). The report counts failed requests, the time from the fault
//! until requests succeed again for good, and the acknowledged writes that can no longer
//! be read (writes lost).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::Value;

use std::path::PathBuf;

use crate::config::Resolved;
use crate::netcut::{CgroupRef, Cut};
use crate::site::Site;
use crate::state::UpState;
use crate::UpError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drill {
    KillPrimary,
    /// Freeze the primary db node (agent, watchdog, PostgreSQL: its cgroup, else SIGSTOP)
    /// for a while, as a paused VM, then thaw it.
    FreezePrimary,
    KillLb(Option<String>),
    KillWeb(Option<String>),
    /// Cut a node off the network for a while (nftables on its cgroup, or inside its host
    /// in the separate-hosts rehearsal), then heal.
    Partition(String),
    /// SIGTERM a balancer (default: the master of the first virtual IP, or the first).
    StopLb(Option<String>),
    /// Take a balancer's link down for a while (separate-hosts rehearsal), then up.
    LbLinkDown(Option<String>),
}

impl Drill {
    /// Drills of the balancers, whose report adds what a 10 ms site probe saw.
    fn is_lb(&self) -> bool {
        matches!(
            self,
            Drill::KillLb(_) | Drill::StopLb(_) | Drill::LbLinkDown(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Load before the fault (must be clean).
    pub warmup: Duration,
    /// Observation after the fault.
    pub observe: Duration,
    /// How long a partition lasts.
    pub partition_for: Duration,
    /// Writes per second.
    pub rate: u32,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            warmup: Duration::from_secs(2),
            observe: Duration::from_secs(20),
            partition_for: Duration::from_secs(8),
            rate: 20,
        }
    }
}

/// What a client saw during the drill.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub drill: String,
    pub target: String,
    pub requests: u64,
    pub failed: u64,
    pub writes_acked: u64,
    pub writes_lost: u64,
    pub lost_ids: Vec<i64>,
    /// Rows storing an acknowledged write a second time (a write sent again across a
    /// failover without its idempotency key holding).
    pub writes_duplicated: u64,
    /// The longest a write took to be acknowledged (a write held across a failover
    /// shows here rather than as a failure).
    pub longest_write_ms: u64,
    /// From the fault to the first success after the last failure (0 when nothing failed).
    pub time_to_recovery_ms: u64,
    /// Whether requests were succeeding again at the end of the observation.
    pub recovered: bool,
    /// How long the node was cut off (partition drills).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_ms: Option<u64>,
    /// How long the node was frozen (freeze-primary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_ms: Option<u64>,
    /// A probe of the site every 10 ms (balancer drills): probes, failed, and the longest
    /// time between two successful probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes_failed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_gap_ms: Option<u64>,
    /// The first failed requests (up to [`FAILURES_SHOWN`]): when, from the fault, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

/// How many failed requests a report details.
pub const FAILURES_SHOWN: usize = 5;

/// One failed request of a drill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// When the answer (or the error) came, in ms from the fault.
    pub at_ms: u64,
    /// The request and what went wrong (`GET /: 503`, `POST /api/messages: connection
    /// reset by peer`).
    pub what: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "drill           {} ({})", self.drill, self.target)?;
        if let Some(ms) = self.cut_ms {
            writeln!(f, "cut off         {:.1}s, then healed", ms as f64 / 1000.0)?;
        }
        if let Some(ms) = self.frozen_ms {
            writeln!(f, "frozen          {:.1}s, then thawed", ms as f64 / 1000.0)?;
        }
        writeln!(
            f,
            "requests        {} sent, {} failed",
            self.requests, self.failed
        )?;
        if let (Some(p), Some(pf), Some(g)) = (self.probes, self.probes_failed, self.longest_gap_ms)
        {
            writeln!(
                f,
                "probes (10 ms)  {p} sent, {pf} failed, longest gap between successes {g} ms"
            )?;
        }
        writeln!(
            f,
            "recovery        {}",
            if !self.recovered {
                "NOT recovered by the end of the drill".to_string()
            } else if self.failed == 0 {
                "no request failed".to_string()
            } else {
                format!(
                    "{:.2}s after the fault",
                    self.time_to_recovery_ms as f64 / 1000.0
                )
            }
        )?;
        for x in &self.failures {
            writeln!(
                f,
                "  failed        {:+.2}s  {}",
                x.at_ms as f64 / 1000.0,
                x.what
            )?;
        }
        write!(
            f,
            "writes          {} acknowledged, {} lost, {} stored twice, the longest took {} ms{}",
            self.writes_acked,
            self.writes_lost,
            self.writes_duplicated,
            self.longest_write_ms,
            if self.lost_ids.is_empty() {
                String::new()
            } else {
                format!(" (ids {:?})", self.lost_ids)
            }
        )
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    ok: bool,
    /// A failure: the request and why.
    error: Option<String>,
}

impl Sample {
    fn of(at: Instant, r: Result<(), String>) -> Sample {
        Sample {
            at,
            ok: r.is_ok(),
            error: r.err(),
        }
    }
}

#[derive(Debug, Clone)]
struct Acked {
    id: i64,
    /// The write's number in this drill (its text and key carry it).
    n: u64,
    token: Option<String>,
    took: Duration,
}

fn kill_group(pid: u32, sig: Signal) -> Result<(), UpError> {
    let p = i32::try_from(pid).map_err(|_| UpError::Drill(format!("bad pid {pid}")))?;
    killpg(Pid::from_raw(p), sig)
        .map_err(|e| UpError::Drill(format!("signal {sig} to group {pid}: {e}")))
}

/// One write, named by an idempotency key of this drill (`run`) so that the web tier
/// may send it again across a failover without storing it twice. The client waits as
/// long as the web tier holds a write (8 s) and then some.
fn post_message(site: &Site, run: u64, n: u64) -> Result<Acked, String> {
    let body = format!(
        "{{\"author\":\"chaos\",\"text\":\"{}\"}}",
        drill_text(run, n)
    );
    let key = format!("chaos-{run:x}-{n}");
    let t = Instant::now();
    let r = site
        .request(
            "POST",
            "/api/messages",
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", &key),
            ],
            body.as_bytes(),
            Duration::from_secs(12),
        )
        .map_err(|e| format!("POST /api/messages: {e}"))?;
    if r.status != 201 {
        return Err(format!("POST /api/messages: {}", r.status));
    }
    let id = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("id")?.as_i64())
        .ok_or_else(|| "POST /api/messages: 201 without an id".to_string())?;
    Ok(Acked {
        id,
        n,
        token: r.header("x-rampart-token").map(str::to_string),
        took: t.elapsed(),
    })
}

/// The text of write `n` of drill `run`.
fn drill_text(run: u64, n: u64) -> String {
    format!("drill {run:x} message {n}")
}

/// Rows that store an acknowledged write a second time: every id between this drill's
/// first acknowledged write and a little past its last that the client was not given
/// (the sequence has gaps: rolled-back inserts, a new primary's cached values), read
/// with the newest token; one whose text is an acknowledged write's is a copy. A write
/// that failed for the client but was stored is not counted (it is stored once).
fn duplicates(site: &Site, run: u64, acked: &[Acked]) -> u64 {
    let (Some(lo), Some(newest)) = (
        acked.iter().map(|a| a.id).min(),
        acked.iter().max_by_key(|a| a.id),
    ) else {
        return 0;
    };
    let given: std::collections::HashSet<i64> = acked.iter().map(|a| a.id).collect();
    let texts: std::collections::HashSet<String> =
        acked.iter().map(|a| drill_text(run, a.n)).collect();
    let headers: Vec<(&str, &str)> = newest
        .token
        .as_deref()
        .map(|t| vec![("X-Rampart-Token", t)])
        .unwrap_or_default();
    // Past the last acknowledged id: a held write's copy may have taken a later one.
    let hi = newest.id.saturating_add(64);
    let mut copies = 0;
    for id in (lo..=hi).filter(|id| !given.contains(id)) {
        let path = format!("/api/messages/{id}");
        let Ok(r) = site.request("GET", &path, &headers, b"", Duration::from_secs(3)) else {
            continue;
        };
        if r.status != 200 {
            continue;
        }
        let text = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("text").and_then(Value::as_str).map(str::to_string));
        if text.is_some_and(|t| texts.contains(&t)) {
            copies += 1;
        }
    }
    copies
}

fn read_back(site: &Site, a: &Acked) -> bool {
    let path = format!("/api/messages/{}", a.id);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let headers: Vec<(&str, &str)> = a
            .token
            .as_deref()
            .map(|t| vec![("X-Rampart-Token", t)])
            .unwrap_or_default();
        if let Ok(r) = site.request("GET", &path, &headers, b"", Duration::from_secs(3)) {
            if r.status == 200 {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The primary's name, from any db agent that answers.
fn find_primary(r: &Resolved) -> Option<String> {
    let db = r.topology.db.as_ref()?;
    for n in &db.nodes {
        if let Ok(resp) = crate::http::get(n.api, "/cluster", Duration::from_secs(1)) {
            if let Ok(v) = serde_json::from_slice::<Value>(&resp.body) {
                if let Some(l) = v.get("leader").and_then(Value::as_str) {
                    return Some(l.to_string());
                }
            }
        }
    }
    None
}

fn pick(state: &UpState, kind: &str, name: &Option<String>) -> Result<(String, u32), UpError> {
    let n = match name {
        Some(n) => state.node(n).filter(|x| x.kind == kind).ok_or_else(|| {
            UpError::Drill(format!("no {kind} node named {n} in the running stack"))
        })?,
        None => state
            .nodes
            .iter()
            .find(|x| x.kind == kind && x.pid.is_some())
            .ok_or_else(|| UpError::Drill(format!("no running {kind} node")))?,
    };
    let pid = n
        .pid
        .ok_or_else(|| UpError::Drill(format!("{} is not running right now", n.name)))?;
    Ok((n.name.clone(), pid))
}

/// How long a balancer drill waits for every balancer to run.
pub const BALANCERS_WAIT: Duration = Duration::from_secs(60);

/// Why a balancer drill cannot start now: a balancer of the stack that is not running
/// (starting, restarting after an earlier drill, stopped). `None`: all run.
pub fn balancers_not_running(state: &UpState) -> Option<String> {
    let down: Vec<String> = state
        .nodes
        .iter()
        .filter(|n| n.kind == "lb" && n.state != "running")
        .map(|n| format!("{} is {}", n.name, n.state))
        .collect();
    (!down.is_empty()).then(|| {
        format!(
            "{}: a balancer drill needs every balancer running, or it takes down the last one serving",
            down.join(", ")
        )
    })
}

/// Run one drill against the stack `rampart up` runs from `r`'s data dir.
pub fn run(r: &Resolved, drill: &Drill, o: &DrillOptions) -> Result<Report, UpError> {
    let state = UpState::read_live(&r.data_dir).ok_or_else(|| {
        UpError::NotRunning(format!(
            "no stack is running from {} (start one with rampart up)",
            r.data_dir.display()
        ))
    })?;
    let lb_target = match drill {
        Drill::Partition(n) => r.topology.lb.as_ref().is_some_and(|l| l.node(n).is_some()),
        d => d.is_lb(),
    };
    // A balancer drill shows a failover only when the other balancers are there to take
    // over: right after an earlier drill `up` may still be restarting one (with backoff),
    // and the target would be the last balancer serving. Wait for them (a while).
    let mut state = state;
    if lb_target {
        let since = Instant::now();
        let mut said = false;
        while let Some(why) = balancers_not_running(&state) {
            if since.elapsed() > BALANCERS_WAIT {
                return Err(UpError::Drill(format!(
                    "{why} (waited {}s)",
                    BALANCERS_WAIT.as_secs()
                )));
            }
            if !said {
                eprintln!("waiting: {why}");
                said = true;
            }
            std::thread::sleep(Duration::from_millis(200));
            state = UpState::read_live(&r.data_dir).ok_or_else(|| {
                UpError::NotRunning(format!(
                    "the stack running from {} stopped",
                    r.data_dir.display()
                ))
            })?;
        }
    }
    // A partition checks what it needs before any load: the fault must be possible.
    let hosts = state.hosts.clone();
    let partition = match (drill, &hosts) {
        (Drill::Partition(n), None) => Some(prepare_partition(r, &state, n)?),
        (Drill::Partition(_), Some(h)) | (Drill::LbLinkDown(_), Some(h)) => {
            heal_hosts_on_signal(h.clone())?;
            None
        }
        (Drill::LbLinkDown(_), None) => {
            return Err(UpError::Drill(
                "lb-link-down takes a host's link down: it needs the stack on separate hosts (rampart up --hosts netns)".into(),
            ))
        }
        _ => None,
    };
    // A freeze is thawed on Ctrl-C too.
    let frozen: Arc<Mutex<Option<crate::freeze::Frozen>>> = Arc::new(Mutex::new(None));
    if *drill == Drill::FreezePrimary {
        thaw_on_signal(frozen.clone())?;
    }
    // HTTPS when the site has it (verified against the stack's CA), like a browser.
    let site = Site::of(&r.topology)?;

    // The client.
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
    // This drill's writes' keys and texts: unique per run (the clock and this process).
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 48;
    let client = {
        let (stop, samples, acked) = (stop.clone(), samples.clone(), acked.clone());
        let site = site.clone();
        let period = Duration::from_secs_f64(1.0 / f64::from(o.rate.max(1)));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let tick = Instant::now();
                n += 1;
                // Samples are stamped when the answer (or the error) came back.
                let w = post_message(&site, run, n);
                let w_at = Instant::now();
                let w = w.map(|a| {
                    if let Ok(mut v) = acked.lock() {
                        v.push(a);
                    }
                });
                let r = match site.get("/", Duration::from_secs(5)) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("GET /: {}", r.status)),
                    Err(e) => Err(format!("GET /: {e}")),
                };
                if let Ok(mut s) = samples.lock() {
                    s.push(Sample::of(w_at, w));
                    s.push(Sample::of(Instant::now(), r));
                }
                if let Some(rest) = period.checked_sub(tick.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        })
    };
    // Balancer drills (and cuts of a balancer): a probe every 10 ms, from the client host
    // when there is one (it reaches the site through the virtual IPs only).
    let prober = if lb_target {
        Some(crate::vipdrill::Prober::start(
            site.clone(),
            hosts.as_ref().map(|h| h.client.netns.clone()),
        )?)
    } else {
        None
    };
    std::thread::sleep(o.warmup);
    let warm_failed = samples
        .lock()
        .map(|s| s.iter().filter(|x| !x.ok).count())
        .unwrap_or(0);
    if warm_failed > 0 {
        stop.store(true, Ordering::SeqCst);
        let _ = client.join();
        return Err(UpError::Drill(format!(
            "{warm_failed} request(s) failed before the fault: the stack is not healthy (see rampart status); no fault injected"
        )));
    }

    let (label, target) = match drill {
        Drill::KillPrimary => {
            let name = find_primary(r)
                .ok_or_else(|| UpError::Drill("no db agent names a primary".into()))?;
            ("kill-primary", name)
        }
        Drill::FreezePrimary => {
            let name = find_primary(r)
                .ok_or_else(|| UpError::Drill("no db agent names a primary".into()))?;
            ("freeze-primary", name)
        }
        Drill::KillLb(n) => ("kill-lb", pick_lb(&state, n)?.0),
        Drill::StopLb(n) => ("stop-lb", pick_lb(&state, n)?.0),
        Drill::LbLinkDown(n) => ("lb-link-down", pick_lb(&state, n)?.0),
        Drill::KillWeb(n) => ("kill-web", pick(&state, "web", n)?.0),
        Drill::Partition(n) => ("partition", n.clone()),
    };
    let fault_at = Instant::now();
    let mut cut_ms = None;
    let mut frozen_ms = None;
    let inject = (|| -> Result<(), UpError> {
        match drill {
            Drill::KillPrimary => {
                let (_, pid) = pick(&state, "db", &Some(target.clone()))?;
                kill_group(pid, Signal::SIGKILL)?;
                // PostgreSQL itself, wherever its group is.
                if let Some(node) = r.topology.db.as_ref().and_then(|d| d.node(&target)) {
                    if let Ok(text) = std::fs::read_to_string(node.data_dir.join("postmaster.pid"))
                    {
                        if let Some(pm) = text
                            .lines()
                            .next()
                            .and_then(|l| l.trim().parse::<i32>().ok())
                        {
                            let _ = nix::sys::signal::kill(Pid::from_raw(pm), Signal::SIGKILL);
                        }
                    }
                }
                Ok(())
            }
            Drill::FreezePrimary => {
                let (_, pid) = pick(&state, "db", &Some(target.clone()))?;
                let cgroup = state
                    .cgroup
                    .as_ref()
                    .map(|s| s.join(&target))
                    .filter(|dir| {
                        // Only when the node really runs in it.
                        let mount = crate::cgroup::cgroup2_mount();
                        crate::cgroup::of_pid(pid).is_some_and(|cg| {
                            mount.is_some_and(|m| m.join(cg.trim_start_matches('/')) == *dir)
                        })
                    });
                let data_dir = r
                    .topology
                    .db
                    .as_ref()
                    .and_then(|d| d.node(&target))
                    .map(|n| n.data_dir.clone());
                // Frozen under the lock, so a Ctrl-C always finds what it must thaw.
                let at = {
                    let mut g = frozen
                        .lock()
                        .map_err(|_| UpError::Drill("the freeze's lock is poisoned".into()))?;
                    *g = Some(crate::freeze::freeze(
                        cgroup.as_deref(),
                        pid,
                        data_dir.as_deref(),
                    )?);
                    Instant::now()
                };
                std::thread::sleep(o.partition_for);
                if let Ok(mut g) = frozen.lock() {
                    if let Some(mut f) = g.take() {
                        f.thaw()?;
                    }
                }
                frozen_ms = Some(at.elapsed().as_millis() as u64);
                Ok(())
            }
            Drill::KillLb(_) => kill_group(
                pick(&state, "lb", &Some(target.clone()))?.1,
                Signal::SIGKILL,
            ),
            Drill::StopLb(_) => kill_group(
                pick(&state, "lb", &Some(target.clone()))?.1,
                Signal::SIGTERM,
            ),
            Drill::LbLinkDown(_) => {
                let h = hosts
                    .as_ref()
                    .and_then(|h| h.host(&target))
                    .ok_or_else(|| UpError::Drill(format!("{target} has no host")))?;
                crate::vipdrill::set_link(h, false)?;
                let at = Instant::now();
                std::thread::sleep(o.partition_for);
                crate::vipdrill::set_link(h, true)?;
                cut_ms = Some(at.elapsed().as_millis() as u64);
                Ok(())
            }
            Drill::Partition(n) if hosts.is_some() => {
                let h = hosts.as_ref().and_then(|h| h.host(n)).ok_or_else(|| {
                    UpError::Drill(format!("no host named {n} in the running stack"))
                })?;
                crate::vipdrill::set_cut(h, true)?;
                let at = Instant::now();
                std::thread::sleep(o.partition_for);
                crate::vipdrill::set_cut(h, false)?;
                cut_ms = Some(at.elapsed().as_millis() as u64);
                Ok(())
            }
            Drill::KillWeb(_) => kill_group(
                pick(&state, "web", &Some(target.clone()))?.1,
                Signal::SIGKILL,
            ),
            Drill::Partition(n) => {
                let p = partition
                    .as_ref()
                    .ok_or_else(|| UpError::Drill("partition not prepared".into()))?;
                // Cut under the lock, so a Ctrl-C always finds the cut it must heal.
                let at = {
                    let mut g = p
                        .active
                        .lock()
                        .map_err(|_| UpError::Drill("the cut's lock is poisoned".into()))?;
                    *g = Some(Cut::apply(&p.nft, &p.table, n, &p.cgroup)?);
                    Instant::now()
                };
                std::thread::sleep(o.partition_for);
                // Healed under the lock: a Ctrl-C now waits for the heal, then finds
                // nothing left to do.
                if let Ok(mut g) = p.active.lock() {
                    if let Some(mut cut) = g.take() {
                        cut.heal()?;
                    }
                }
                cut_ms = Some(at.elapsed().as_millis() as u64);
                Ok(())
            }
        }
    })();
    if let Err(e) = inject {
        stop.store(true, Ordering::SeqCst);
        let _ = client.join();
        if let Some(p) = prober {
            p.finish();
        }
        return Err(e);
    }
    let observed = fault_at.elapsed();
    if let Some(rest) = o.observe.checked_sub(observed) {
        std::thread::sleep(rest);
    }
    stop.store(true, Ordering::SeqCst);
    let _ = client.join();
    let probe = prober.map(|p| p.finish());

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let acked = acked.lock().map(|s| s.clone()).unwrap_or_default();
    let failed = samples.iter().filter(|s| !s.ok).count() as u64;
    let last_failure = samples.iter().filter(|s| !s.ok).map(|s| s.at).max();
    let (time_to_recovery_ms, recovered) = match last_failure {
        None => (0, true),
        Some(lf) => match samples
            .iter()
            .filter(|s| s.ok && s.at > lf)
            .map(|s| s.at)
            .min()
        {
            Some(first_ok) => (
                first_ok.saturating_duration_since(fault_at).as_millis() as u64,
                true,
            ),
            None => (0, false),
        },
    };
    let mut lost_ids = Vec::new();
    for a in &acked {
        if !read_back(&site, a) {
            lost_ids.push(a.id);
        }
    }
    Ok(Report {
        drill: label.to_string(),
        target,
        requests: samples.len() as u64,
        failed,
        writes_acked: acked.len() as u64,
        writes_lost: lost_ids.len() as u64,
        lost_ids,
        writes_duplicated: duplicates(&site, run, &acked),
        longest_write_ms: acked
            .iter()
            .map(|a| a.took.as_millis() as u64)
            .max()
            .unwrap_or(0),
        time_to_recovery_ms,
        recovered,
        cut_ms,
        frozen_ms,
        probes: probe.map(|p| p.probes),
        probes_failed: probe.map(|p| p.failed),
        longest_gap_ms: probe.map(|p| p.longest_gap.as_millis() as u64),
        failures: samples
            .iter()
            .filter_map(|s| {
                Some(Failure {
                    at_ms: s.at.saturating_duration_since(fault_at).as_millis() as u64,
                    what: s.error.clone()?,
                })
            })
            .take(FAILURES_SHOWN)
            .collect(),
    })
}

/// The balancer a drill targets: the one named, else the master of the first virtual IP
/// (separate hosts), else the first running one.
fn pick_lb(state: &UpState, name: &Option<String>) -> Result<(String, u32), UpError> {
    if name.is_none() {
        if let Some(h) = &state.hosts {
            if let Some(master) = h.vips.first().and_then(|v| crate::vipdrill::holder(h, *v)) {
                return pick(state, "lb", &Some(master));
            }
        }
    }
    pick(state, "lb", name)
}

/// On SIGINT or SIGTERM during a drill on separate hosts: heal every host, then exit 130.
fn heal_hosts_on_signal(h: crate::hostnet::HostsState) -> Result<(), UpError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UpError::Drill(format!("start the signal runtime: {e}")))?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            let healed = crate::vipdrill::heal_all(&h);
            eprintln!(
                "\ninterrupted: {}",
                if healed.is_empty() {
                    "nothing to heal".to_string()
                } else {
                    healed.join("; ")
                }
            );
            std::process::exit(130);
        })
    });
    Ok(())
}

/// What a partition drill needs, checked before the drill starts.
struct Partition {
    nft: PathBuf,
    table: String,
    cgroup: CgroupRef,
    /// The cut while it is on (a Ctrl-C heals it).
    active: Arc<Mutex<Option<Cut>>>,
}

fn prepare_partition(r: &Resolved, state: &UpState, name: &str) -> Result<Partition, UpError> {
    let node = state
        .node(name)
        .ok_or_else(|| UpError::Drill(format!("no node named {name} in the running stack")))?;
    let pid = node
        .pid
        .ok_or_else(|| UpError::Drill(format!("{name} is not running right now")))?;
    let mount = crate::cgroup::cgroup2_mount().ok_or_else(|| UpError::Missing {
        program: "cgroup v2".into(),
        hint: "a partition drill cuts a node by its cgroup, and no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified), then restart rampart up".into(),
    })?;
    let stack = state.cgroup.as_ref().ok_or_else(|| UpError::Missing {
        program: "the nodes' cgroups".into(),
        hint: format!(
            "rampart up (pid {}) runs the nodes without cgroups of their own: it could not create them under {} (its output says why; it needs root); a partition drill needs them",
            state.pid,
            mount.display()
        ),
    })?;
    let dir = stack.join(name);
    let inside =
        crate::cgroup::of_pid(pid).is_some_and(|cg| mount.join(cg.trim_start_matches('/')) == dir);
    if !inside {
        return Err(UpError::Drill(format!(
            "{name} (pid {pid}) does not run in its cgroup {}: cannot cut it off",
            dir.display()
        )));
    }
    let cgroup = crate::netcut::cgroup_ref(&mount, &dir).map_err(UpError::Drill)?;
    let nft = crate::netcut::find_nft().ok_or_else(crate::netcut::nft_missing)?;
    let table = crate::netcut::table_name(&r.topology.cluster, state.pid);
    let active: Arc<Mutex<Option<Cut>>> = Arc::new(Mutex::new(None));
    heal_on_signal(active.clone())?;
    Ok(Partition {
        nft,
        table,
        cgroup,
        active,
    })
}

/// On SIGINT or SIGTERM: heal the cut if one is on, then exit (130).
fn heal_on_signal(active: Arc<Mutex<Option<Cut>>>) -> Result<(), UpError> {
    on_interrupt(move || {
        let mut cut = active.lock().ok().and_then(|mut g| g.take())?;
        Some(match cut.heal() {
            Ok(()) => format!("partition healed (table {} removed)", cut.table()),
            Err(e) => e.to_string(),
        })
    })
}

/// On SIGINT or SIGTERM during a freeze: thaw the node, then exit (130).
fn thaw_on_signal(active: Arc<Mutex<Option<crate::freeze::Frozen>>>) -> Result<(), UpError> {
    on_interrupt(move || {
        let mut f = active.lock().ok().and_then(|mut g| g.take())?;
        Some(match f.thaw() {
            Ok(()) => "the node was thawed".to_string(),
            Err(e) => e.to_string(),
        })
    })
}

/// On SIGINT or SIGTERM: `undo` what the drill has on (it says what it did, or `None` when
/// nothing was on), print that and exit (130). Returns once the handlers are installed.
fn on_interrupt(undo: impl FnOnce() -> Option<String> + Send + 'static) -> Result<(), UpError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UpError::Drill(format!("start the signal runtime: {e}")))?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut int, mut term) = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            match undo() {
                Some(done) => eprintln!("\ninterrupted: {done}"),
                None => eprintln!("\ninterrupted"),
            }
            std::process::exit(130);
        })
    });
    match rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(UpError::Drill(format!("install signal handlers: {e}"))),
        Err(_) => Err(UpError::Drill(
            "install signal handlers: the signal thread died".into(),
        )),
    }
}

/// `rampart chaos heal`: remove every partition the drills of this cluster left on
/// this machine. Returns the nftables tables removed, and what else was healed or
/// removed (faults left in separate hosts, the hosts of a killed `up`).
pub fn heal(r: &Resolved) -> Result<(Vec<String>, Vec<String>), UpError> {
    let nft = crate::netcut::find_nft().ok_or_else(crate::netcut::nft_missing)?;
    let tables = crate::netcut::tables_of(&nft, &r.topology.cluster).map_err(UpError::Drill)?;
    let mut other = Vec::new();
    for t in &tables {
        crate::netcut::delete_table(&nft, t).map_err(UpError::Drill)?;
    }
    // The separate-hosts rehearsal: faults left in the hosts, and the hosts themselves
    // when the rampart up that made them is gone.
    match UpState::read(&r.data_dir) {
        Some(s) if crate::state::pid_alive(s.pid) => {
            if let Some(h) = &s.hosts {
                other.extend(crate::vipdrill::heal_all(h));
            }
        }
        _ => other.extend(crate::hostnet::remove_leftovers(&r.topology.cluster)),
    }
    Ok((tables, other))
}

/// The report as JSON.
pub fn report_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_balancer_drill_waits_for_every_balancer() {
        let node = |name: &str, kind: &str, st: &str| crate::state::NodeState {
            name: name.into(),
            kind: kind.into(),
            pid: (st == "running").then_some(42),
            log: Default::default(),
            restarts: 0,
            state: st.into(),
        };
        let mut state = UpState {
            pid: 1,
            topology: Default::default(),
            data_dir: Default::default(),
            nodes: vec![
                node("db1", "db", "restarting"),
                node("lb1", "lb", "running"),
                node("lb2", "lb", "running"),
            ],
            cgroup: None,
            lb_admin: Vec::new(),
            hosts: None,
        };
        assert_eq!(
            balancers_not_running(&state),
            None,
            "a db restarting is no matter"
        );
        state.nodes[1] = node("lb1", "lb", "restarting");
        let why = balancers_not_running(&state).unwrap();
        assert!(
            why.starts_with("lb1 is restarting: a balancer drill needs"),
            "{why}"
        );
    }

    #[test]
    fn a_report_says_when_and_why_each_shown_request_failed() {
        let mut r = Report {
            drill: "lb-link-down".into(),
            target: "lb1".into(),
            requests: 820,
            failed: 1,
            writes_acked: 410,
            writes_lost: 0,
            lost_ids: Vec::new(),
            writes_duplicated: 0,
            longest_write_ms: 60,
            time_to_recovery_ms: 190,
            recovered: true,
            cut_ms: Some(8000),
            frozen_ms: None,
            probes: None,
            probes_failed: None,
            longest_gap_ms: None,
            failures: vec![Failure {
                at_ms: 180,
                what: "POST /api/messages: Connection reset by peer (os error 104)".into(),
            }],
        };
        let text = r.to_string();
        assert!(
            text.contains("recovery        0.19s after the fault\n  failed        +0.18s  POST /api/messages: Connection reset by peer"),
            "{text}"
        );
        let json: Value = serde_json::from_str(&report_json(&r)).unwrap();
        assert_eq!(json["failures"][0]["at_ms"], 180);
        // Nothing failed: no list, in either form.
        r.failures.clear();
        assert!(!r.to_string().contains("failed        +"));
        assert!(!report_json(&r).contains("failures"));
    }
}
