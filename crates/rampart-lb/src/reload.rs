//! Applying a configuration in place (reload) and runtime changes (admin API).
//!
//! A reload binds the sockets of new listeners first (a busy port refuses the whole
//! reload, nothing changed), then swaps in new pool generations (servers that stay keep
//! their state, counters, health and idle connections; removed ones drain: requests in
//! flight hold the old generation), then updates listeners (same name, address and mode:
//! same sockets, new settings; others: new sockets, and the old ones close).
//!
//! Runtime changes survive a reload that does not touch the server: an operator's weight
//! stays while the config's weight for that server is unchanged, its state (drain,
//! maintenance) stays while its address is unchanged, a server removed at run time stays
//! removed while the config gives it unchanged, a server added at run time stays while the
//! config does not name it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rampart_topology::lb::{LbConfig, Pool, Server};
use tokio_util::sync::CancellationToken;

use crate::health;
use crate::state::{health_policy, AdminState, PoolHandle, PoolState, ServerState};
use crate::{bind, ListenerSlot, ListenerStats, Shared};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
}

/// Re-read the configuration and apply it; on error nothing changed.
pub fn reload(shared: &Arc<Shared>) -> Result<(), String> {
    let Some(loader) = &shared.loader else {
        return Err(
            "this load balancer was started without a config file; nothing to reload".into(),
        );
    };
    let r = loader().and_then(|c| apply(shared, c).map_err(|e| e.to_string()));
    match &r {
        Ok(()) => {
            shared.reloads.fetch_add(1, Ordering::Relaxed);
            crate::discovery::reconcile(shared);
        }
        Err(_) => {
            shared.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    r
}

/// Apply `new` in place.
pub fn apply(shared: &Arc<Shared>, new: LbConfig) -> Result<(), ControlError> {
    let _g = shared
        .control
        .lock()
        .map_err(|_| ControlError::Refused("control lock poisoned".into()))?;
    // TLS certificates are read again (also when unchanged: SIGHUP reloads certificates).
    crate::tls::prepare(&new).map_err(|e| ControlError::Refused(e.to_string()))?;
    crate::firewall::prepare(&new).map_err(ControlError::Refused)?;
    crate::upstream_tls::prepare(&new).map_err(|e| ControlError::Refused(e.to_string()))?;
    let old_listeners: Vec<Arc<ListenerSlot>> = shared
        .listeners
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();

    // 1. Sockets of new listeners (or listeners whose address or mode changed).
    let keep = |name: &str, addr: SocketAddr, mode| {
        old_listeners
            .iter()
            .find(|s| s.name == name && s.address == addr && s.mode == mode)
            .cloned()
    };
    let mut new_socks = Vec::new();
    for l in &new.listeners {
        if keep(&l.name, l.address, l.mode).is_none() {
            let mut socks = Vec::new();
            for _ in 0..shared.workers {
                socks.push(
                    bind(&l.name, l.address).map_err(|e| ControlError::Refused(e.to_string()))?,
                );
            }
            new_socks.push((l.name.clone(), socks));
        }
    }

    // 2. Pools.
    let old_pools: Vec<Arc<PoolHandle>> =
        shared.pools.lock().map(|p| p.clone()).unwrap_or_default();
    let mut pools = Vec::new();
    for pc in &new.pools {
        match old_pools.iter().find(|h| h.name == pc.name) {
            Some(h) => {
                next_generation(h, pc);
                pools.push(h.clone());
            }
            None => {
                let h = shared.new_pool(pc);
                health::spawn_checks(&h);
                tracing::info!(pool = %pc.name, servers = pc.servers.len(), "pool added");
                pools.push(h);
            }
        }
    }
    for h in &old_pools {
        if !new.pools.iter().any(|p| p.name == h.name) {
            tracing::info!(pool = %h.name, "pool removed");
            for s in h.get().servers.iter() {
                s.stop_checks.cancel();
            }
        }
    }

    // 3. Listeners.
    let mut listeners = Vec::new();
    for l in &new.listeners {
        if pools.get(l.pool).is_none() {
            continue;
        }
        match keep(&l.name, l.address, l.mode) {
            Some(slot) => {
                let Some(rt) = shared.listener_rt(l, &pools, &new, slot.stats.clone()) else {
                    continue;
                };
                slot.current.store(Arc::new(rt));
                listeners.push(slot);
            }
            None => {
                let stats = Arc::new(ListenerStats::new(shared.workers));
                let Some(rt) = shared.listener_rt(l, &pools, &new, stats.clone()) else {
                    continue;
                };
                let slot = Arc::new(ListenerSlot {
                    name: l.name.clone(),
                    address: l.address,
                    mode: l.mode,
                    current: ArcSwap::from_pointee(rt),
                    stop: CancellationToken::new(),
                    stats,
                    fds: std::sync::Mutex::new(Vec::new()),
                });
                if let Some(i) = new_socks.iter().position(|(n, _)| *n == l.name) {
                    let (_, socks) = new_socks.swap_remove(i);
                    shared.start_listener(&slot, socks);
                }
                tracing::info!(listener = %l.name, address = %l.address, "listener added");
                listeners.push(slot);
            }
        }
    }
    for s in &old_listeners {
        if !listeners.iter().any(|n| Arc::ptr_eq(n, s)) {
            tracing::info!(listener = %s.name, address = %s.address, "listener removed");
            s.stop.cancel();
            if let Ok(mut f) = s.fds.lock() {
                f.clear();
            }
        }
    }

    // 4. Global limit.
    let old_max = shared
        .max_connections
        .swap(new.max_connections, Ordering::AcqRel);
    if new.max_connections > old_max {
        shared.global.add_permits(new.max_connections - old_max);
    } else if new.max_connections < old_max {
        shared.global.forget_permits(old_max - new.max_connections);
    }

    if let Ok(mut p) = shared.pools.lock() {
        *p = pools;
    }
    if let Ok(mut l) = shared.listeners.lock() {
        *l = listeners;
    }
    let log_changed = shared
        .config
        .lock()
        .map(|c| c.access_log != new.access_log)
        .unwrap_or(true);
    if log_changed {
        if let Err(e) = crate::accesslog::configure(new.access_log.as_ref()) {
            tracing::error!(error = %e, "cannot open the new access log; access logging is off");
            let _ = crate::accesslog::configure(None);
        }
    }
    crate::acme::sync(&new);
    if let Ok(mut c) = shared.config.lock() {
        *c = new;
    }
    tracing::info!("configuration reloaded");
    Ok(())
}

/// Swap in the pool generation for config `pc`, keeping what stays.
fn next_generation(h: &Arc<PoolHandle>, pc: &Pool) {
    let cur = h.get();
    let policy = health_policy(pc);
    let mut servers: Vec<Arc<ServerState>> = Vec::new();
    let mut added = Vec::new();
    let mut removed = h.removed.lock().map(|r| r.clone()).unwrap_or_default();
    for sc in &pc.servers {
        if let Some(def) = removed.get(&sc.name) {
            if def == sc {
                continue; // removed at run time, config unchanged: stays removed
            }
            removed.remove(&sc.name);
        }
        match cur.find(&sc.name) {
            Some(s) if s.addr == sc.address => {
                if s.cfg_weight.load(Ordering::Relaxed) != sc.weight
                    || s.runtime_added.load(Ordering::Relaxed)
                {
                    s.set_weight_raw(sc.weight);
                }
                s.cfg_weight.store(sc.weight, Ordering::Relaxed);
                s.runtime_added.store(false, Ordering::Relaxed);
                s.set_policy(policy);
                servers.push(s.clone());
            }
            _ => {
                let s = Arc::new(ServerState::new(sc, policy, h.workers));
                added.push(s.clone());
                servers.push(s);
            }
        }
    }
    for s in cur.servers.iter() {
        if s.runtime_added.load(Ordering::Relaxed) && !pc.servers.iter().any(|c| c.name == s.name) {
            servers.push(s.clone());
        }
    }
    let kept: HashSet<*const ServerState> = servers.iter().map(Arc::as_ptr).collect();
    for s in cur.servers.iter() {
        if !kept.contains(&Arc::as_ptr(s)) {
            tracing::info!(pool = %pc.name, server = %s.name, in_flight = s.in_flight.load(Ordering::Relaxed), "server removed; its requests in flight finish");
            s.stop_checks.cancel();
        }
    }
    if let Ok(mut r) = h.removed.lock() {
        *r = removed;
    }
    let gen = PoolState::generation(pc.clone(), servers, cur.shared.clone(), rand::random());
    h.store(gen);
    for s in &added {
        tracing::info!(pool = %pc.name, server = %s.name, addr = %s.addr, "server added");
        health::spawn_check(h, s);
    }
}

fn pool_of(shared: &Shared, pool: &str) -> Result<Arc<PoolHandle>, ControlError> {
    shared
        .pool(pool)
        .ok_or_else(|| ControlError::NotFound(format!("no pool \"{pool}\"")))
}

/// Under the control lock, `f` on the pool's current state and the index of its server named
/// `server`.
fn on_server(
    shared: &Shared,
    pool: &str,
    server: &str,
    f: impl FnOnce(&PoolState, usize),
) -> Result<(), ControlError> {
    let _g = shared
        .control
        .lock()
        .map_err(|_| ControlError::Refused("control lock poisoned".into()))?;
    let h = pool_of(shared, pool)?;
    let p = h.get();
    let i = p
        .servers
        .iter()
        .position(|s| s.name == server)
        .ok_or_else(|| {
            ControlError::NotFound(format!("no server \"{server}\" in pool \"{pool}\""))
        })?;
    f(&p, i);
    Ok(())
}

/// Set a server's operator state.
pub fn set_state(
    shared: &Shared,
    pool: &str,
    server: &str,
    st: AdminState,
) -> Result<(), ControlError> {
    on_server(shared, pool, server, |p, i| p.set_admin_state(i, st))
}

/// Set a server's weight.
pub fn set_weight(shared: &Shared, pool: &str, server: &str, w: u32) -> Result<(), ControlError> {
    if w > rampart_topology::lb::MAX_WEIGHT {
        return Err(ControlError::Invalid(format!(
            "weight must be between 0 and {}, got {w}",
            rampart_topology::lb::MAX_WEIGHT
        )));
    }
    on_server(shared, pool, server, |p, i| p.set_weight(i, w))
}

/// Add a server to a pool without a reload.
pub fn add_server(shared: &Shared, pool: &str, sc: Server) -> Result<(), ControlError> {
    if sc.name.is_empty() {
        return Err(ControlError::Invalid(
            "server name must not be empty".into(),
        ));
    }
    if sc.weight > rampart_topology::lb::MAX_WEIGHT {
        return Err(ControlError::Invalid(format!(
            "weight must be between 0 and {}, got {}",
            rampart_topology::lb::MAX_WEIGHT,
            sc.weight
        )));
    }
    let _g = shared
        .control
        .lock()
        .map_err(|_| ControlError::Refused("control lock poisoned".into()))?;
    let h = pool_of(shared, pool)?;
    let cur = h.get();
    if cur
        .servers
        .iter()
        .any(|s| s.name == sc.name || s.addr == sc.address)
    {
        return Err(ControlError::Conflict(format!(
            "pool \"{pool}\" already has a server named \"{}\" or at {}",
            sc.name, sc.address
        )));
    }
    let s = Arc::new(ServerState::new(&sc, health_policy(&cur.cfg), h.workers));
    s.runtime_added.store(true, Ordering::Relaxed);
    let mut servers: Vec<Arc<ServerState>> = cur.servers.to_vec();
    servers.push(s.clone());
    if let Ok(mut r) = h.removed.lock() {
        r.remove(&sc.name);
    }
    h.store(PoolState::generation(
        cur.cfg.clone(),
        servers,
        cur.shared.clone(),
        rand::random(),
    ));
    tracing::warn!(pool, server = %sc.name, addr = %sc.address, weight = sc.weight, "server added at run time");
    health::spawn_check(&h, &s);
    Ok(())
}

/// Remove a server from a pool without a reload; its requests in flight finish.
pub fn remove_server(shared: &Shared, pool: &str, server: &str) -> Result<(), ControlError> {
    let _g = shared
        .control
        .lock()
        .map_err(|_| ControlError::Refused("control lock poisoned".into()))?;
    let h = pool_of(shared, pool)?;
    let cur = h.get();
    let Some(s) = cur.find(server).cloned() else {
        return Err(ControlError::NotFound(format!(
            "no server \"{server}\" in pool \"{pool}\""
        )));
    };
    if cur.servers.len() == 1 {
        return Err(ControlError::Refused(format!(
            "\"{server}\" is the last server of pool \"{pool}\"; set it to maintenance instead"
        )));
    }
    let servers: Vec<Arc<ServerState>> = cur
        .servers
        .iter()
        .filter(|x| !Arc::ptr_eq(x, &s))
        .cloned()
        .collect();
    // Remember the config's definition, so a reload that keeps it unchanged keeps it out.
    let def = shared.config.lock().ok().and_then(|c| {
        c.pools
            .iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.servers.iter().find(|x| x.name == server).cloned())
    });
    if let (Some(def), Ok(mut r)) = (def, h.removed.lock()) {
        r.insert(server.to_string(), def);
    }
    h.store(PoolState::generation(
        cur.cfg.clone(),
        servers,
        cur.shared.clone(),
        rand::random(),
    ));
    s.stop_checks.cancel();
    tracing::warn!(
        pool,
        server,
        in_flight = s.in_flight.load(Ordering::Relaxed),
        "server removed at run time; its requests in flight finish"
    );
    Ok(())
}

/// Make the pool's discovered servers exactly `want` (static and operator-added servers
/// stay); a server that left finishes its requests in flight.
pub fn set_discovered(shared: &Shared, pool: &str, want: Vec<Server>) -> Result<(), ControlError> {
    let _g = shared
        .control
        .lock()
        .map_err(|_| ControlError::Refused("control lock poisoned".into()))?;
    let h = pool_of(shared, pool)?;
    let cur = h.get();
    // By name, so that 10,000 records apply in O(n), not O(n^2).
    let wanted: HashMap<&str, &Server> = want.iter().map(|w| (w.name.as_str(), w)).collect();
    let mut servers: Vec<Arc<ServerState>> = Vec::with_capacity(cur.servers.len().max(want.len()));
    let mut changed = false;
    for s in cur.servers.iter() {
        if !s.discovered.load(Ordering::Relaxed) {
            servers.push(s.clone());
            continue;
        }
        match wanted.get(s.name.as_str()) {
            Some(w) if w.address == s.addr => {
                if s.cfg_weight.load(Ordering::Relaxed) != w.weight {
                    s.set_weight_raw(w.weight);
                    s.cfg_weight.store(w.weight, Ordering::Relaxed);
                    changed = true;
                }
                servers.push(s.clone());
            }
            _ => {
                tracing::warn!(pool, server = %s.name, addr = %s.addr, in_flight = s.in_flight.load(Ordering::Relaxed), "discovery: server left (deregistered or lease ended); its requests in flight finish");
                s.stop_checks.cancel();
                changed = true;
            }
        }
    }
    let mut names: HashSet<String> = servers.iter().map(|s| s.name.clone()).collect();
    let mut addrs: HashSet<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let mut added = Vec::new();
    for w in &want {
        if names.contains(&w.name) {
            continue;
        }
        if addrs.contains(&w.address) {
            tracing::warn!(pool, server = %w.name, addr = %w.address, "discovery: address already in the pool, record skipped");
            continue;
        }
        let s = Arc::new(ServerState::new(w, health_policy(&cur.cfg), h.workers));
        s.discovered.store(true, Ordering::Relaxed);
        s.runtime_added.store(true, Ordering::Relaxed);
        names.insert(w.name.clone());
        addrs.insert(w.address);
        servers.push(s.clone());
        added.push(s);
        changed = true;
    }
    // One line per server for a few; one summary for a crowd (10,000 lines help nobody).
    let few = added.len() <= 10;
    for s in &added {
        let weight = s.weight();
        if few {
            tracing::warn!(pool, server = %s.name, addr = %s.addr, weight, "discovery: server joined");
        } else {
            tracing::debug!(pool, server = %s.name, addr = %s.addr, weight, "discovery: server joined");
        }
    }
    if !few {
        tracing::warn!(
            pool,
            joined = added.len(),
            servers = servers.len(),
            "discovery: servers joined"
        );
    }
    if !changed {
        return Ok(());
    }
    h.store(PoolState::generation(
        cur.cfg.clone(),
        servers,
        cur.shared.clone(),
        rand::random(),
    ));
    for s in &added {
        health::spawn_check(&h, s);
    }
    Ok(())
}
