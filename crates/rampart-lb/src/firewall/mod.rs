//! The L7 firewall of a listener (`firewall = { ... }` in the lb file): what HAProxy's
//! ACLs and stick tables do in front of a pool.
//!
//! At accept: addresses blocked at run time through the admin API (every listener), the
//! listener's `allow` list (when not empty) and `deny` list (with `deny_file`), then the
//! per-client connection cap; a refused connection is closed at once. Per request, on
//! every path that serves HTTP/1 and HTTP/2: the method allow list (405 with `Allow`), the
//! declared body size (413; a chunked body past it is cut with a 413 as it streams on the
//! fast path), the per-client request rate (429 with `Retry-After`), and a minimum
//! upload rate of request bodies (408: a slow POST cannot hold a server connection). Every refusal is
//! counted by listener and reason (`rampart_firewall_refused_total`, `/api/firewall`).
//! After routing, a route's own `allow` list ([`Firewall::check_route`], 403, reason
//! `route`).
//! Behind trusted proxies (`client_address = "x-forwarded-for"`), the per-request rules
//! judge the client their `X-Forwarded-For` names ([`forwarded::forwarded_client`]), and
//! the address lists are checked for it per request (403), since the connection is the
//! proxy's.
//!
//! The lists are [`cidr::CidrSet`]s (a binary search per lookup, so 10,000 entries cost
//! about 14 comparisons); the per-client table ([`limits::Clients`]) is sharded and
//! bounded, and survives reloads of the same listener, as do the counters.

pub mod cidr;
pub mod forwarded;
pub mod limits;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use rampart_topology::lb::firewall::{ClientAddress, Firewall as FirewallConfig};
use rampart_topology::lb::{Cidr, LbConfig, Route};

use cidr::CidrSet;
use limits::Clients;

/// How many client addresses a listener remembers (rate buckets, connection counts).
const MAX_CLIENTS: usize = 100_000;

/// Why a connection or a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Blocked at run time (admin API).
    Blocked,
    /// In the listener's deny list.
    Denied,
    /// Not in the listener's allow list.
    NotAllowed,
    /// Past `max_connections_per_client`.
    Connections,
    /// Past the per-client request rate: 429.
    Rate,
    /// A method the listener does not serve: 405.
    Method,
    /// A body past `max_body`: 413.
    Body,
    /// A body slower than `min_upload_rate`: 408.
    SlowUpload,
    /// An HTTP/2 connection that reset streams faster than they were accepted, or made
    /// this side reset too many: GOAWAY (ENHANCE_YOUR_CALM) and closed.
    H2Flood,
    /// A route's `allow` list does not hold the client: 403.
    Route,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Blocked,
        Reason::Denied,
        Reason::NotAllowed,
        Reason::Connections,
        Reason::Rate,
        Reason::Method,
        Reason::Body,
        Reason::SlowUpload,
        Reason::H2Flood,
        Reason::Route,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Blocked => "blocked",
            Reason::Denied => "denied",
            Reason::NotAllowed => "not-allowed",
            Reason::Connections => "connections",
            Reason::Rate => "rate",
            Reason::Method => "method",
            Reason::Body => "body",
            Reason::SlowUpload => "slow-upload",
            Reason::H2Flood => "h2-flood",
            Reason::Route => "route",
        }
    }
}

/// A refused request: its status and what the answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub status: u16,
    /// A header to send with it: `Retry-After` (429) or `Allow` (405).
    pub header: Option<(&'static str, String)>,
    pub message: &'static [u8],
}

/// Refusals by reason, of one listener.
#[derive(Default)]
pub struct FwStats {
    refused: [AtomicU64; Reason::ALL.len()],
}

impl FwStats {
    pub fn count(&self, r: Reason) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, r: Reason) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }
}

/// One listener's firewall (every listener has one; an empty one checks only the
/// run-time blocks). The object lives as long as the listener's name is in the
/// configuration: a reload swaps its rules, keeping its clients and counters, so a
/// listener whose other settings did not change sees the new lists too.
pub struct Firewall {
    pub listener: String,
    rules: ArcSwap<Rules>,
    /// Whether the rules check anything per request ([`Firewall::checks_requests`]), kept
    /// beside them so that a listener without such rules pays one load per request, not
    /// a load of the rules.
    per_request: AtomicBool,
    clients: Clients,
    pub stats: FwStats,
}

/// What a reload may change.
struct Rules {
    cfg: FirewallConfig,
    allow: CidrSet,
    deny: CidrSet,
    /// Networks in `deny` plus `deny_file`.
    deny_entries: usize,
    allow_header: String,
}

/// A request the listener routed to `route`: refused (403) when the route has an `allow`
/// list without the client in it, and counted by `fw` (the listener's firewall). The client
/// is the one [`Firewall::check_request`] judges: the peer, or `forwarded` (what a trusted
/// proxy named, with [`Firewall::keys_forwarded`]).
pub fn check_route(
    fw: Option<&Firewall>,
    route: &Route,
    peer: IpAddr,
    forwarded: Option<IpAddr>,
) -> Result<(), Refusal> {
    if route.allows(cidr::canonical(forwarded.unwrap_or(peer))) {
        return Ok(());
    }
    let r = Refusal {
        reason: Reason::Route,
        status: 403,
        header: None,
        message: b"403 Forbidden\n",
    };
    Err(match fw {
        Some(fw) => fw.refuse(r),
        None => r,
    })
}

/// Addresses blocked at run time, for every listener.
struct Blocks {
    list: Vec<Cidr>,
    set: CidrSet,
}

static BLOCKS: LazyLock<ArcSwap<Blocks>> = LazyLock::new(|| {
    ArcSwap::from_pointee(Blocks {
        list: Vec::new(),
        set: CidrSet::default(),
    })
});
static FIREWALLS: Mutex<Vec<Arc<Firewall>>> = Mutex::new(Vec::new());

/// Why the address lists refuse `ip` (canonical), if they do: run-time blocks, then the
/// listener's allow and deny lists.
fn listed(rules: &Rules, ip: IpAddr) -> Option<Reason> {
    let blocks = BLOCKS.load();
    if !blocks.set.is_empty() && blocks.set.contains(ip) {
        Some(Reason::Blocked)
    } else if !rules.allow.is_empty() && !rules.allow.contains(ip) {
        Some(Reason::NotAllowed)
    } else if !rules.deny.is_empty() && rules.deny.contains(ip) {
        Some(Reason::Denied)
    } else {
        None
    }
}

fn set_of(nets: &[Cidr]) -> CidrSet {
    CidrSet::new(nets.iter().map(|c| (c.addr(), c.prefix())))
}

/// Read a deny file: one network per line, `#` comments and blank lines ignored.
/// Errors name `file:line`.
pub fn read_deny_file(path: &Path) -> Result<Vec<Cidr>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the deny file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let net: Cidr = l
            .parse()
            .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(net);
    }
    Ok(out)
}

impl Rules {
    /// Anything to check per request at all.
    fn checks_requests(&self) -> bool {
        let c = &self.cfg;
        c.methods.is_some()
            || c.max_body.is_some()
            || c.rate.is_some()
            || c.client_address == ClientAddress::XForwardedFor
    }

    fn build(listener: &str, cfg: &FirewallConfig) -> Result<Rules, String> {
        let mut deny = cfg.deny.clone();
        if let Some(f) = &cfg.deny_file {
            deny.extend(read_deny_file(f).map_err(|e| format!("listener {listener}: {e}"))?);
        }
        Ok(Rules {
            allow: set_of(&cfg.allow),
            deny: set_of(&deny),
            deny_entries: deny.len(),
            allow_header: cfg
                .methods
                .as_ref()
                .map(|m| m.join(", "))
                .unwrap_or_default(),
            cfg: cfg.clone(),
        })
    }
}

impl Firewall {
    /// A new connection from `ip`: refused (close it), or admitted with the ticket that
    /// counts it against the client's connection cap while held.
    /// `proxy`: the peer is a trusted proxy; with `client_address = "x-forwarded-for"` its
    /// connections are judged only by the run-time blocks (its requests are, by the
    /// clients it names: [`Firewall::check_request`]).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        proxy: bool,
        now: Instant,
    ) -> Result<Option<ConnTicket>, Reason> {
        let ip = cidr::canonical(ip);
        let rules = self.rules.load();
        if proxy && rules.cfg.client_address == ClientAddress::XForwardedFor {
            let blocks = BLOCKS.load();
            if !blocks.set.is_empty() && blocks.set.contains(ip) {
                self.stats.count(Reason::Blocked);
                return Err(Reason::Blocked);
            }
            return Ok(None);
        }
        if let Some(r) = listed(&rules, ip) {
            self.stats.count(r);
            return Err(r);
        }
        match rules.cfg.max_connections_per_client {
            None => Ok(None),
            Some(max) if self.clients.connect(ip, now, max) => Ok(Some(ConnTicket {
                fw: self.clone(),
                ip,
            })),
            Some(_) => {
                self.stats.count(Reason::Connections);
                Err(Reason::Connections)
            }
        }
    }

    /// Whether requests are judged by the client their trusted proxies name.
    pub fn keys_forwarded(&self) -> bool {
        self.rules.load().cfg.client_address == ClientAddress::XForwardedFor
    }

    /// A request from `peer`: its method and declared body length (`None`: none declared,
    /// or chunked). `forwarded`: the client a trusted proxy named (with
    /// [`Firewall::keys_forwarded`]), judged instead of the peer, address lists included.
    /// One policy for every path that serves requests.
    pub fn check_request(
        &self,
        peer: IpAddr,
        forwarded: Option<IpAddr>,
        method: &str,
        content_length: Option<u64>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let rules = self.rules.load();
        let ip = match forwarded.map(cidr::canonical) {
            Some(client) if client != cidr::canonical(peer) => {
                if let Some(reason) = listed(&rules, client) {
                    return Err(self.refuse(Refusal {
                        reason,
                        status: 403,
                        header: None,
                        message: b"403 Forbidden\n",
                    }));
                }
                client
            }
            _ => peer,
        };
        if let Some(m) = &rules.cfg.methods {
            if !m.iter().any(|x| x == method) {
                return Err(self.refuse(Refusal {
                    reason: Reason::Method,
                    status: 405,
                    header: Some(("allow", rules.allow_header.clone())),
                    message: b"405 Method Not Allowed\n",
                }));
            }
        }
        if let (Some(max), Some(n)) = (rules.cfg.max_body, content_length) {
            if n > max {
                return Err(self.body_too_large());
            }
        }
        if let Some(rate) = rules.cfg.rate {
            if let Err(wait) = self.clients.take(cidr::canonical(ip), now, rate) {
                return Err(self.refuse(Refusal {
                    reason: Reason::Rate,
                    status: 429,
                    header: Some(("retry-after", wait.as_secs().max(1).to_string())),
                    message: b"429 Too Many Requests: slow down\n",
                }));
            }
        }
        Ok(())
    }

    /// The refusal of a body found too large while it streams.
    pub fn body_too_large(&self) -> Refusal {
        self.refuse(Refusal {
            reason: Reason::Body,
            status: 413,
            header: None,
            message: b"413 Content Too Large\n",
        })
    }

    /// The refusal of a body that came too slowly.
    pub fn too_slow(&self) -> Refusal {
        self.refuse(Refusal {
            reason: Reason::SlowUpload,
            status: 408,
            header: None,
            message: b"408 Request Timeout: the request body came too slowly\n",
        })
    }

    /// Bytes per second a body must keep up.
    pub fn min_upload_rate(&self) -> Option<u64> {
        self.rules.load().cfg.min_upload_rate
    }

    /// The largest body a request may have.
    pub fn max_body(&self) -> Option<u64> {
        self.rules.load().cfg.max_body
    }

    /// Anything to check per request at all.
    pub fn checks_requests(&self) -> bool {
        self.per_request.load(Ordering::Relaxed)
    }

    fn refuse(&self, r: Refusal) -> Refusal {
        self.stats.count(r.reason);
        r
    }

    pub fn json(&self) -> serde_json::Value {
        let refused: serde_json::Map<String, serde_json::Value> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), self.stats.get(*r).into()))
            .collect();
        let rules = self.rules.load();
        let cfg = &rules.cfg;
        serde_json::json!({
            "listener": self.listener,
            "allow": cfg.allow.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "deny_entries": rules.deny_entries,
            "rate_per_second": cfg.rate.map(|r| r.per_second),
            "burst": cfg.rate.map(|r| r.burst),
            "max_connections_per_client": cfg.max_connections_per_client,
            "methods": cfg.methods,
            "max_body": cfg.max_body,
            "min_upload_rate": cfg.min_upload_rate,
            "clients_tracked": self.clients.tracked(),
            "refused": refused,
        })
    }
}

/// Counts a connection against its client's cap while held.
pub struct ConnTicket {
    fw: Arc<Firewall>,
    ip: IpAddr,
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        self.fw.clients.disconnect(self.ip);
    }
}

/// Build every listener's firewall for `config` (at start and on reload, before anything
/// changes): a deny file that cannot be read or holds a bad line refuses it, naming
/// `file:line`. Client tables and counters carry over for listeners of the same name.
pub fn prepare(config: &LbConfig) -> Result<(), String> {
    let old: Vec<Arc<Firewall>> = FIREWALLS.lock().map(|f| f.clone()).unwrap_or_default();
    let empty = FirewallConfig::default();
    // Every file read and checked before anything changes.
    let mut rules = Vec::new();
    for l in &config.listeners {
        let cfg = l.firewall.as_ref().unwrap_or(&empty);
        rules.push(Rules::build(&l.name, cfg)?);
    }
    let mut next = Vec::new();
    for (l, r) in config.listeners.iter().zip(rules) {
        match old.iter().find(|f| f.listener == l.name) {
            Some(f) => {
                let per_request = r.checks_requests();
                f.rules.store(Arc::new(r));
                f.per_request.store(per_request, Ordering::Relaxed);
                next.push(f.clone());
            }
            None => next.push(Arc::new(Firewall {
                listener: l.name.clone(),
                per_request: AtomicBool::new(r.checks_requests()),
                rules: ArcSwap::from_pointee(r),
                clients: Clients::new(MAX_CLIENTS),
                stats: FwStats::default(),
            })),
        }
    }
    if let Ok(mut f) = FIREWALLS.lock() {
        *f = next;
    }
    Ok(())
}

/// The firewall of listener `name` (after [`prepare`]).
pub fn get(name: &str) -> Option<Arc<Firewall>> {
    FIREWALLS
        .lock()
        .ok()?
        .iter()
        .find(|f| f.listener == name)
        .cloned()
}

/// Every listener's firewall.
pub fn all() -> Vec<Arc<Firewall>> {
    FIREWALLS.lock().map(|f| f.clone()).unwrap_or_default()
}

/// Block `net` on every listener from now on (new connections; open ones finish).
/// Whether it was new.
pub fn block(net: Cidr) -> bool {
    let cur = BLOCKS.load();
    if cur.list.contains(&net) {
        return false;
    }
    let mut list = cur.list.clone();
    list.push(net);
    BLOCKS.store(Arc::new(Blocks {
        set: set_of(&list),
        list,
    }));
    true
}

/// Lift a block; whether there was one.
pub fn unblock(net: Cidr) -> bool {
    let cur = BLOCKS.load();
    if !cur.list.contains(&net) {
        return false;
    }
    let list: Vec<Cidr> = cur.list.iter().filter(|c| **c != net).copied().collect();
    BLOCKS.store(Arc::new(Blocks {
        set: set_of(&list),
        list,
    }));
    true
}

/// The run-time blocks.
pub fn blocks() -> Vec<Cidr> {
    BLOCKS.load().list.clone()
}
