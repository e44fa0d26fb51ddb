//! The balancer's virtual routers (`[[vrrp]]`): VRRP version 3 inside `rampart lb`, so
//! the balancer itself moves the site's virtual IPs between the balancers of a pair.
//!
//! One task per virtual router on the control thread's runtime. The protocol is
//! `rampart_vrrp`'s pure state machine; this module feeds it adverts (from
//! `rampart_hostnet`'s raw socket; TTL or hop limit 255, VRID and sender checked), its
//! timers and the health of what it tracks, and carries out its actions: adverts to
//! 224.0.0.18 / ff02::12 or the unicast peers, the addresses added and removed by
//! netlink, gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6). A
//! router is of one family: IPv6 routers advertise from the interface's link-local
//! address, as RFC 5798 asks. Health
//! tracking: a tracked listener fails when its socket is gone or every server of its pool
//! is down, and takes its weight off the priority (weight 0: fault, mastership given up);
//! the interface losing its carrier is a fault too. On stop, a master advertises
//! priority 0 and keeps the addresses (and keeps serving) until its successor advertises,
//! before the listeners drain: make before break.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_hostnet::addr::{self, IfAddr};
use rampart_hostnet::garp::Announcer;
use rampart_hostnet::iface::Interface;
use rampart_hostnet::sock6::{Advertiser, VrrpSocket6};
use rampart_hostnet::VrrpSocket;
use rampart_topology::vrrp::VrrpInstance;
use rampart_vrrp::packet::{self, parse_ipv4, Advert};
use rampart_vrrp::{Action, Actions, Router, RouterConfig, State};
use tokio::sync::watch;

use crate::Shared;

/// What the admin API, the metrics and the stats page show of one virtual router.
pub struct RouterView {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    pub priority: u8,
    pub addresses: Vec<String>,
    state: AtomicU8,
    effective_priority: AtomicU8,
    /// [`Router::is_settled`] after the router's last event (at least every 100 ms).
    settled: AtomicBool,
    pub transitions: AtomicU64,
    pub adverts_sent: AtomicU64,
    pub adverts_received: AtomicU64,
    pub adverts_dropped: AtomicU64,
    /// The last transition (`from -> to: cause`) and the master last heard.
    detail: Mutex<Detail>,
}

#[derive(Default, Clone)]
struct Detail {
    last_transition: String,
    master: Option<(IpAddr, u8)>,
    failing: Vec<String>,
}

fn state_code(s: State) -> u8 {
    match s {
        State::Init => 0,
        State::Backup => 1,
        State::Master => 2,
        State::Fault => 3,
        State::Stopping => 4,
    }
}

/// Names of [`state_code`]s.
pub const STATE_NAMES: [&str; 5] = ["init", "backup", "master", "fault", "stopping"];

impl RouterView {
    fn new(i: &VrrpInstance) -> RouterView {
        RouterView {
            name: i.name.clone(),
            vrid: i.vrid,
            interface: i.interface.clone(),
            priority: i.priority,
            addresses: i.addresses.iter().map(|a| a.to_string()).collect(),
            state: AtomicU8::new(0),
            effective_priority: AtomicU8::new(i.priority),
            settled: AtomicBool::new(false),
            transitions: AtomicU64::new(0),
            adverts_sent: AtomicU64::new(0),
            adverts_received: AtomicU64::new(0),
            adverts_dropped: AtomicU64::new(0),
            detail: Mutex::new(Detail::default()),
        }
    }

    /// 0 init, 1 backup, 2 master, 3 fault, 4 stopping (a master handing over).
    pub fn state_code(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    pub fn state_name(&self) -> &'static str {
        STATE_NAMES
            .get(usize::from(self.state_code()))
            .copied()
            .unwrap_or("init")
    }

    pub fn effective_priority(&self) -> u8 {
        self.effective_priority.load(Ordering::Relaxed)
    }

    pub fn json(&self) -> serde_json::Value {
        let d = self.detail.lock().map(|d| d.clone()).unwrap_or_default();
        serde_json::json!({
            "name": self.name,
            "vrid": self.vrid,
            "interface": self.interface,
            "state": self.state_name(),
            "priority": self.priority,
            "effective_priority": self.effective_priority(),
            "settled": self.settled.load(Ordering::Relaxed),
            "addresses": self.addresses,
            "master": d.master.map(|(ip, p)| serde_json::json!({"address": ip.to_string(), "priority": p})),
            "last_transition": d.last_transition,
            "failing": d.failing,
            "transitions": self.transitions.load(Ordering::Relaxed),
            "adverts_sent": self.adverts_sent.load(Ordering::Relaxed),
            "adverts_received": self.adverts_received.load(Ordering::Relaxed),
            "adverts_dropped": self.adverts_dropped.load(Ordering::Relaxed),
        })
    }
}

/// The running virtual routers of this process.
pub(crate) struct Vrrp {
    pub views: Vec<Arc<RouterView>>,
    stop: watch::Sender<Stop>,
    done: Vec<tokio::task::JoinHandle<Option<Held>>>,
    /// The write ends of the guards' stdin: they close when this process dies.
    guards: Vec<std::process::ChildStdin>,
}

/// How the routers are told to stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Run,
    /// A clean stop: masters hand over (priority 0) and keep the addresses until
    /// [`Release::apply`].
    Shutdown,
    /// A binary upgrade: the new process runs the same routers, masters included
    /// ([`Router::resume_master`]); these stop without a word and leave the addresses.
    Detach,
}

/// What a guard is told on its stdin when the balancer hands its addresses to the next
/// process of a binary upgrade: leave them on the interface when this one is gone.
const GUARD_HANDED_OVER: u8 = b'K';

/// A balancer that dies without stopping (SIGKILL, a crash, the OOM killer) would leave
/// its virtual IPs on the interface: the host would go on answering ARP for them and
/// refusing connections, fighting the new master. So each balancer with virtual routers
/// starts a guard (`rampart lb vip-guard`, its own process group, so a kill of the
/// balancer's group spares it) holding the read end of a pipe whose write end only the
/// balancer has. When the balancer is gone the kernel closes the pipe; the guard reads
/// the end of file, removes the addresses (netlink) and exits.
fn spawn_guard(instances: &[VrrpInstance]) -> Result<Vec<std::process::ChildStdin>, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut by_iface: Vec<(String, Vec<String>)> = Vec::new();
    for i in instances {
        let addrs = i.addresses.iter().map(|a| a.to_string());
        match by_iface.iter_mut().find(|(n, _)| *n == i.interface) {
            Some((_, v)) => v.extend(addrs),
            None => by_iface.push((i.interface.clone(), addrs.collect())),
        }
    }
    // One guard (and one pipe) per interface.
    let mut guards = Vec::new();
    for (iface, addrs) in by_iface {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["lb", "vip-guard", "--interface", &iface]);
        for a in &addrs {
            cmd.args(["--address", a]);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the virtual IP guard: {e}"))?;
        guards.extend(child.stdin.take());
        // Reaped by nobody until we exit; it exits only after we do.
        std::mem::forget(child);
    }
    Ok(guards)
}

/// `rampart lb vip-guard`: block until stdin ends (the balancer died), then remove
/// `addresses` from `interface`, unless the balancer said it handed them to its
/// successor (a binary upgrade, [`GUARD_HANDED_OVER`]), whose own guard watches them now.
pub fn guard_main(interface: &str, addresses: &[String]) -> Result<(), String> {
    use std::io::Read;
    let iface = Interface::lookup(interface).map_err(|e| e.to_string())?;
    let vips: Vec<IfAddr> = addresses
        .iter()
        .map(|a| a.parse::<IfAddr>())
        .collect::<Result<_, _>>()?;
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    let mut handed_over = false;
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                handed_over |= buf[..n].contains(&GUARD_HANDED_OVER);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if handed_over {
        eprintln!(
            "rampart lb vip-guard: the balancer handed its addresses to its successor: leaving them on {interface}"
        );
        return Ok(());
    }
    for v in vips {
        if addr::present(interface, v.ip) {
            match addr::remove(iface.index, v) {
                Ok(()) => eprintln!(
                    "rampart lb vip-guard: the balancer is gone: removed {v} from {interface}"
                ),
                Err(e) => {
                    eprintln!("rampart lb vip-guard: cannot remove {v} from {interface}: {e}")
                }
            }
        }
    }
    Ok(())
}

/// Everything one router needs from the host, opened before it starts (so a missing
/// interface or a lack of privilege refuses the balancer's start, naming the cause).
struct Host {
    iface: Interface,
    /// The address adverts come from: the interface's primary IPv4 address, or its IPv6
    /// link-local address (a virtual router is of one family, RFC 5798).
    primary: IpAddr,
    sock: Sock,
    announcer: Announce,
    vips: Vec<IfAddr>,
}

/// The router's VRRP sockets, of its family.
enum Sock {
    V4(VrrpSocket),
    V6(VrrpSocket6),
}

/// What a raw socket said of a datagram beyond its bytes: IPv4 hands over the IP header
/// with the bytes; IPv6 gives the source, destination and hop limit beside them.
struct Meta {
    len: usize,
    v6: Option<(Ipv6Addr, Ipv6Addr, u8)>,
}

impl Sock {
    /// The next datagram into `rx` (for IPv6 the VRRP message alone).
    async fn recv(&mut self, rx: &mut [u8]) -> std::io::Result<Meta> {
        match self {
            Sock::V4(s) => s.recv(rx).await.map(|(len, _)| Meta { len, v6: None }),
            Sock::V6(s) => {
                let r = s.recv().await?;
                let len = r.len.min(rx.len());
                rx[..len].copy_from_slice(&s.message(r.len)[..len]);
                Ok(Meta {
                    len,
                    v6: Some((r.src, r.dst, r.hop_limit)),
                })
            }
        }
    }

    async fn send(&self, payload: &[u8], dst: IpAddr) -> std::io::Result<()> {
        match (self, dst) {
            (Sock::V4(s), IpAddr::V4(d)) => s.send(payload, d).await,
            (Sock::V6(s), IpAddr::V6(d)) => s.send(payload, d).await,
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a VRRP advert to an address of the other family",
            )),
        }
    }
}

/// Gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6).
enum Announce {
    Arp(Announcer),
    Na(Advertiser),
}

fn open_host(i: &VrrpInstance) -> Result<Host, String> {
    let iface = Interface::lookup(&i.interface).map_err(|e| e.to_string())?;
    let vip_ips: Vec<IpAddr> = i.addresses.iter().map(|a| a.ip).collect();
    let v6 = vip_ips.first().is_some_and(|a| a.is_ipv6());
    let (primary, sock, announcer) = if v6 {
        let ll = iface.link_local_v6().map_err(|e| e.to_string())?;
        let sock = VrrpSocket6::open(&iface, ll).map_err(|e| e.to_string())?;
        let na = Advertiser::open(&iface).map_err(|e| e.to_string())?;
        (IpAddr::V6(ll), Sock::V6(sock), Announce::Na(na))
    } else {
        let primary = iface.primary_v4(&vip_ips).map_err(|e| e.to_string())?;
        let sock = VrrpSocket::open_v4(&iface, primary).map_err(|e| e.to_string())?;
        let arp = Announcer::open(&iface).map_err(|e| e.to_string())?;
        (IpAddr::V4(primary), Sock::V4(sock), Announce::Arp(arp))
    };
    let vips = i
        .addresses
        .iter()
        .map(|a| IfAddr {
            ip: a.ip,
            prefix: a.prefix,
        })
        .collect();
    Ok(Host {
        iface,
        primary,
        sock,
        announcer,
        vips,
    })
}

fn router_config(i: &VrrpInstance, primary: IpAddr) -> RouterConfig {
    let mut c = RouterConfig::new(
        i.vrid,
        i.priority,
        primary,
        i.addresses.iter().map(|a| a.ip).collect(),
    );
    c.interval = i.advert_interval;
    c.preempt = i.preempt;
    c.preempt_delay = i.preempt_delay;
    c
}

/// Open every virtual router's sockets and start them (inside the control runtime).
/// `inherited_masters`: the routers (by name) the previous process of a binary upgrade
/// was master of; they start as master ([`Router::resume_master`]).
pub(crate) fn start(
    shared: &Arc<Shared>,
    instances: &[VrrpInstance],
    inherited_masters: &[String],
) -> Result<Vrrp, String> {
    let (stop, _) = watch::channel(Stop::Run);
    let mut views = Vec::new();
    let mut hosts = Vec::new();
    for i in instances {
        let host = open_host(i).map_err(|e| format!("virtual router {}: {e}", i.name))?;
        let router = Router::new(router_config(i, host.primary))
            .map_err(|e| format!("virtual router {}: {e}", i.name))?;
        hosts.push((i.clone(), host, router));
    }
    let guards = spawn_guard(instances)?;
    let mut done = Vec::new();
    for (i, host, router) in hosts {
        let view = Arc::new(RouterView::new(&i));
        views.push(view.clone());
        let task = RouterTask {
            inherited: inherited_masters.contains(&i.name),
            inst: i,
            host,
            router,
            view,
            shared: shared.clone(),
            buf: Vec::with_capacity(64),
            stopping: false,
            deferred: false,
        };
        done.push(tokio::spawn(task.run(stop.subscribe())));
    }
    Ok(Vrrp {
        views,
        stop,
        done,
        guards,
    })
}

/// How long a master that handed over keeps the addresses: its connections accepted in
/// the last moment can still answer from them (a reply cannot leave from an address the
/// host no longer has). Shorter than the successor's second gratuitous ARP (1 s after it
/// took over), which corrects any host that learnt this one's address meanwhile.
pub(crate) const HANDOVER_LINGER: Duration = Duration::from_millis(500);

/// Addresses a stopped master still holds, to remove once its last connections had
/// their moment ([`HANDOVER_LINGER`]).
pub(crate) struct Release(Vec<Held>);

/// A router's name, its interface's index and the addresses it still holds.
type Held = (String, u32, Vec<IfAddr>);

impl Release {
    pub fn apply(self) {
        for (name, index, vips) in self.0 {
            for v in vips {
                if let Err(e) = addr::remove(index, v) {
                    tracing::error!(router = %name, address = %v, error = %e, "cannot remove the virtual address");
                }
            }
        }
    }
}

impl Vrrp {
    /// Stop every router: masters hand over first (bounded by 3 adverts + 1 s each) and
    /// keep their addresses until [`Release::apply`].
    pub async fn stop(self) -> Release {
        let _ = self.stop.send(Stop::Shutdown);
        let mut out = Vec::new();
        for t in self.done {
            if let Ok(Some(r)) = t.await {
                out.push(r);
            }
        }
        Release(out)
    }

    /// The routers this process is master of, by name (handed to the next process of a
    /// binary upgrade).
    pub fn masters(views: &[Arc<RouterView>]) -> Vec<String> {
        views
            .iter()
            .filter(|v| v.state_code() == state_code(State::Master))
            .map(|v| v.name.clone())
            .collect()
    }

    /// A binary upgrade took over: the new process runs these routers now (masters as
    /// masters). Stop without an advert or a change of address, and tell the guards to
    /// leave the addresses when this process is gone.
    pub async fn detach(mut self) {
        use std::io::Write;
        for g in &mut self.guards {
            if let Err(e) = g.write_all(&[GUARD_HANDED_OVER]) {
                tracing::warn!(error = %e, "cannot tell the virtual IP guard about the hand-over");
            }
        }
        let _ = self.stop.send(Stop::Detach);
        for t in std::mem::take(&mut self.done) {
            let _ = t.await;
        }
        tracing::info!("virtual routers handed to the new process");
    }
}

struct RouterTask {
    /// The previous process (a binary upgrade) was master of this router.
    inherited: bool,
    inst: VrrpInstance,
    host: Host,
    router: Router,
    view: Arc<RouterView>,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    /// A clean stop is under way: the addresses are released by [`Release`], later.
    stopping: bool,
    /// The machine asked for the addresses to go while stopping.
    deferred: bool,
}

impl RouterTask {
    /// Runs until stopped; returns the addresses still to remove after a hand-over.
    async fn run(mut self, stop: watch::Receiver<Stop>) -> Option<Held> {
        self.serve(stop).await;
        self.deferred.then(|| {
            (
                self.inst.name.clone(),
                self.host.iface.index,
                self.host.vips.clone(),
            )
        })
    }

    async fn serve(&mut self, mut stop: watch::Receiver<Stop>) {
        let acts = if self.inherited {
            tracing::info!(router = %self.inst.name, "VRRP: carrying on as master after the binary upgrade");
            self.router.resume_master(Instant::now())
        } else {
            // A balancer that crashed as master may have left the addresses behind: a
            // backup must not hold them (keepalived removes them at start as well).
            self.remove_addresses();
            self.router.start(Instant::now())
        };
        let mut stopping = false;
        if self.apply(acts).await {
            return;
        }
        let mut rx = vec![0u8; 2048];
        let track_every = self.inst.advert_interval.min(Duration::from_millis(100));
        let mut track = tokio::time::interval(track_every);
        track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.router.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let acts = tokio::select! {
                r = self.host.sock.recv(&mut rx) => match r {
                    Ok(meta) => match self.advert(&rx[..meta.len], meta.v6) {
                        Some((from, ad)) => self.router.on_advert(Instant::now(), from, &ad),
                        None => continue,
                    },
                    Err(e) => {
                        tracing::warn!(router = %self.inst.name, error = %e, "VRRP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = sleep => self.router.on_timer(Instant::now()),
                _ = track.tick(), if !stopping => {
                    let (penalty, fault) = self.health();
                    let now = Instant::now();
                    let mut acts = self.router.set_fault(now, fault);
                    if self.apply(acts).await {
                        return;
                    }
                    acts = self.router.set_penalty(now, penalty);
                    self.view.effective_priority.store(self.router.effective_priority(), Ordering::Relaxed);
                    acts
                }
                r = stop.changed(), if !stopping => {
                    let how = if r.is_err() { Stop::Shutdown } else { *stop.borrow() };
                    match how {
                        Stop::Run => continue,
                        // Not a word, no address touched: the new process carries on.
                        Stop::Detach => return,
                        Stop::Shutdown => {
                            stopping = true;
                            self.stopping = true;
                            self.router.shutdown(Instant::now())
                        }
                    }
                }
            };
            if self.apply(acts).await {
                return;
            }
        }
    }

    /// A received datagram as an advert for this router, or `None` (counted as dropped
    /// when it is VRRP that may not be accepted). `v6`: the source, destination and hop
    /// limit of an IPv6 datagram (whose header the socket does not hand over).
    fn advert(
        &self,
        datagram: &[u8],
        v6: Option<(Ipv6Addr, Ipv6Addr, u8)>,
    ) -> Option<(IpAddr, Advert)> {
        let (src, dst, ttl, payload) = match v6 {
            Some((src, dst, hop)) => (IpAddr::V6(src), IpAddr::V6(dst), hop, datagram),
            None => {
                let ip = parse_ipv4(datagram).ok()?;
                if ip.protocol != packet::IPPROTO_VRRP {
                    return None;
                }
                (IpAddr::V4(ip.src), IpAddr::V4(ip.dst), ip.ttl, ip.payload)
            }
        };
        if src == self.host.primary {
            return None;
        }
        let drop = |why: &str| {
            self.view.adverts_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(router = %self.inst.name, from = %src, why, "VRRP packet dropped");
            None
        };
        if ttl != packet::TTL {
            return drop("TTL or hop limit is not 255 (sent from off the link)");
        }
        let ad = match Advert::decode(payload, src, dst) {
            Ok(a) => a,
            Err(e) => {
                self.view.adverts_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(router = %self.inst.name, from = %src, error = %e, "VRRP packet dropped");
                return None;
            }
        };
        if ad.vrid != self.inst.vrid {
            return None;
        }
        if !self.inst.unicast_peers.is_empty() && !self.inst.unicast_peers.contains(&src) {
            return drop("sender is not a unicast peer");
        }
        if !self.router.addresses_match(&ad) {
            tracing::warn!(router = %self.inst.name, from = %src, theirs = ?ad.addrs,
                "a peer of this virtual router advertises other addresses: check both configurations");
        }
        self.view.adverts_received.fetch_add(1, Ordering::Relaxed);
        Some((src, ad))
    }

    /// Penalty (sum of the weights of failing tracked listeners, capped) and fault.
    fn health(&mut self) -> (u8, bool) {
        let mut failing = Vec::new();
        let mut penalty: u32 = 0;
        let mut fault = false;
        if !self.host.iface.is_up() {
            failing.push(format!("interface {} down", self.inst.interface));
            fault = true;
        }
        let listeners: Vec<_> = self
            .shared
            .listeners
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        for t in &self.inst.track {
            let why = match listeners.iter().find(|l| l.name == t.listener) {
                None => Some("not listening"),
                Some(l) if l.stop.is_cancelled() => Some("not listening"),
                Some(l) => {
                    let pool = l.current.load().pool.get();
                    (!pool.servers.iter().any(|s| s.is_up())).then_some("every server down")
                }
            };
            if let Some(why) = why {
                failing.push(format!("listener {}: {why}", t.listener));
                if t.weight == 0 {
                    fault = true;
                } else {
                    penalty += u32::from(t.weight);
                }
            }
        }
        if let Ok(mut d) = self.view.detail.lock() {
            if d.failing != failing {
                if !failing.is_empty() {
                    tracing::warn!(router = %self.inst.name, failing = %failing.join("; "), penalty, fault, "VRRP tracking: priority lowered");
                } else if !d.failing.is_empty() {
                    tracing::info!(router = %self.inst.name, "VRRP tracking: everything tracked is healthy again");
                }
                d.failing = failing;
            }
        }
        (penalty.min(255) as u8, fault)
    }

    /// Carry out the state machine's actions; true once the router has stopped.
    async fn apply(&mut self, acts: Actions) -> bool {
        let mut stopped = false;
        // This batch gives mastership up to a higher-priority master (a healed partition,
        // a preempting peer): that master announces itself, but a connection accepted
        // here a moment ago still needs the address to answer from.
        let mut yielded = false;
        for a in acts.as_slice() {
            match *a {
                Action::SendAdvert { priority } => self.send(priority).await,
                Action::AddAddresses => {
                    crate::wake::take_back(&self.vip_ips());
                    for v in &self.host.vips {
                        if let Err(e) = addr::add(self.host.iface.index, *v) {
                            tracing::error!(router = %self.inst.name, address = %v, error = %e, "cannot add the virtual address");
                        }
                    }
                }
                Action::RemoveAddresses if self.stopping => self.deferred = true,
                Action::RemoveAddresses if yielded => self.remove_addresses_later(),
                Action::RemoveAddresses => self.remove_addresses(),
                Action::Announce => {
                    for v in &self.host.vips {
                        let sent = match (&self.host.announcer, v.ip) {
                            (Announce::Arp(a), IpAddr::V4(ip)) => {
                                a.send(&packet::garp_ipv4(self.host.iface.mac, ip))
                            }
                            (Announce::Na(a), IpAddr::V6(ip)) => {
                                a.send(&packet::unsolicited_na(ip, self.host.iface.mac))
                            }
                            _ => Ok(()),
                        };
                        if let Err(e) = sent {
                            tracing::warn!(router = %self.inst.name, address = %v.ip, error = %e, "announcing the virtual address failed (gratuitous ARP or neighbour advertisement)");
                        }
                    }
                }
                Action::Transition { from, to, cause } => {
                    yielded = from == State::Master && to == State::Backup;
                    // Given up (to a peer, to a fault, or handed over by a clean stop): the
                    // connections that came in on these addresses close (`crate::wake`).
                    let gives_up = matches!(
                        (from, to),
                        (State::Master, State::Backup | State::Fault)
                            | (State::Stopping, State::Init)
                    );
                    if gives_up {
                        let id = crate::wake::give_up(&self.vip_ips());
                        tokio::spawn(async move {
                            tokio::time::sleep(crate::wake::GIVEN_UP_FOR).await;
                            crate::wake::expire(id);
                        });
                    }
                    self.view.state.store(state_code(to), Ordering::Relaxed);
                    self.view.transitions.fetch_add(1, Ordering::Relaxed);
                    self.view
                        .effective_priority
                        .store(self.router.effective_priority(), Ordering::Relaxed);
                    let master = self.router.master_seen();
                    if let Ok(mut d) = self.view.detail.lock() {
                        d.last_transition =
                            format!("{} -> {}: {}", from.as_str(), to.as_str(), cause.as_str());
                        d.master = master;
                    }
                    tracing::info!(
                        router = %self.inst.name, vrid = self.inst.vrid, interface = %self.inst.interface,
                        from = from.as_str(), to = to.as_str(), cause = cause.as_str(),
                        priority = self.router.effective_priority(),
                        master = ?master.map(|(ip, p)| format!("{ip} (priority {p})")),
                        addresses = %self.view.addresses.join(","),
                        "VRRP transition"
                    );
                }
                Action::Stopped => stopped = true,
            }
        }
        if let Ok(mut d) = self.view.detail.lock() {
            d.master = self.router.master_seen();
        }
        self.view
            .settled
            .store(self.router.is_settled(Instant::now()), Ordering::Relaxed);
        stopped
    }

    /// Remove the addresses after [`HANDOVER_LINGER`], unless this router is master (or
    /// handing over) again by then.
    fn remove_addresses_later(&self) {
        let (view, index, vips) = (
            self.view.clone(),
            self.host.iface.index,
            self.host.vips.clone(),
        );
        let name = self.inst.name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HANDOVER_LINGER).await;
            let code = view.state_code();
            if code == state_code(State::Master) || code == state_code(State::Stopping) {
                return;
            }
            for v in vips {
                if let Err(e) = addr::remove(index, v) {
                    tracing::error!(router = %name, address = %v, error = %e, "cannot remove the virtual address");
                }
            }
        });
    }

    fn vip_ips(&self) -> Vec<IpAddr> {
        self.host.vips.iter().map(|v| v.ip).collect()
    }

    fn remove_addresses(&self) {
        for v in &self.host.vips {
            if let Err(e) = addr::remove(self.host.iface.index, *v) {
                tracing::error!(router = %self.inst.name, address = %v, error = %e, "cannot remove the virtual address");
            }
        }
    }

    async fn send(&mut self, priority: u8) {
        let ad = self.router.advert(priority);
        let src = self.host.primary;
        let dsts: Vec<IpAddr> = if self.inst.unicast_peers.is_empty() {
            vec![match src {
                IpAddr::V4(_) => IpAddr::V4(packet::GROUP_V4),
                IpAddr::V6(_) => IpAddr::V6(packet::GROUP_V6),
            }]
        } else {
            self.inst
                .unicast_peers
                .iter()
                .filter(|p| p.is_ipv4() == src.is_ipv4())
                .copied()
                .collect()
        };
        for dst in dsts {
            if let Err(e) = ad.encode_into(src, dst, &mut self.buf) {
                tracing::error!(router = %self.inst.name, error = %e, "cannot encode a VRRP advert");
                return;
            }
            match self.host.sock.send(&self.buf, dst).await {
                Ok(()) => {
                    self.view.adverts_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(router = %self.inst.name, to = %dst, error = %e, "VRRP advert not sent")
                }
            }
        }
    }
}
