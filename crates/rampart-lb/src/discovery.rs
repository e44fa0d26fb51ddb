//! Service discovery: a pool with `discovery` watches
//! `/rampart/<cluster>/services/<service>/` in etcd (through `rampart-coord`, which
//! reconnects and resyncs after any interruption) and keeps its discovered servers equal to
//! the registered ones: a new record joins at once, a vanished one (deregistered, or its
//! lease ended) leaves the pool and finishes its requests in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_coord::{services_prefix, Backoff, Coord, CoordOptions, ServiceRecord, WatchEvent};
use rampart_topology::lb::{Discovery, Server, MAX_WEIGHT};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Running watchers by pool name.
pub type Watchers = HashMap<String, (Discovery, CancellationToken)>;

/// Start, restart or stop watchers so they match the current config.
pub fn reconcile(shared: &Arc<Shared>) {
    let wanted: Vec<(String, Discovery)> = shared
        .config
        .lock()
        .map(|c| {
            c.pools
                .iter()
                .filter_map(|p| p.discovery.clone().map(|d| (p.name.clone(), d)))
                .collect()
        })
        .unwrap_or_default();
    let Ok(mut running) = shared.discovery.lock() else {
        return;
    };
    running.retain(|pool, (d, stop)| {
        let keep = wanted.iter().any(|(p, w)| p == pool && w == d);
        if !keep {
            stop.cancel();
        }
        keep
    });
    for (pool, d) in wanted {
        if running.contains_key(&pool) {
            continue;
        }
        let stop = CancellationToken::new();
        tokio::spawn(watch(shared.clone(), pool.clone(), d.clone(), stop.clone()));
        running.insert(pool, (d, stop));
    }
}

async fn watch(shared: Arc<Shared>, pool: String, d: Discovery, stop: CancellationToken) {
    let prefix = services_prefix(&d.cluster, &d.service);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    tracing::info!(pool = %pool, prefix = %prefix, "discovery: watching etcd");
    loop {
        let run = async {
            let coord = Coord::connect(CoordOptions::new(d.etcd.clone()))
                .await
                .map_err(|e| e.to_string())?;
            let mut rx = coord
                .watch_prefix(&prefix, 0)
                .await
                .map_err(|e| e.to_string())?;
            let mut view: BTreeMap<String, ServiceRecord> = BTreeMap::new();
            while let Some(first) = rx.recv().await {
                // Apply every event already waiting as one change: registering 10,000
                // servers makes one pool generation, not 10,000.
                let mut next = Some(first);
                while let Some(ev) = next.take() {
                    apply_event(&pool, &mut view, ev);
                    next = rx.try_recv().ok();
                }
                let servers = to_servers(&pool, view.values());
                if let Err(e) = crate::reload::set_discovered(&shared, &pool, servers) {
                    tracing::warn!(pool = %pool, error = %e, "discovery: cannot apply");
                }
                backoff.reset();
            }
            Err::<(), String>("the watch ended".into())
        };
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = run => r,
        };
        if let Err(e) = r {
            let delay = backoff.next_delay();
            tracing::warn!(pool = %pool, error = %e, retry_in = ?delay, "discovery: etcd unavailable; keeping the servers known so far");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// One watch event into the view of the service's records.
fn apply_event(pool: &str, view: &mut BTreeMap<String, ServiceRecord>, ev: WatchEvent) {
    match ev {
        WatchEvent::Resync(kvs) => {
            view.clear();
            for kv in kvs {
                match ServiceRecord::from_kv(&kv) {
                    Ok(r) => {
                        view.insert(kv.key.clone(), r);
                    }
                    Err(e) => tracing::warn!(pool, error = %e, "discovery: bad record"),
                }
            }
        }
        WatchEvent::Put(kv) => match ServiceRecord::from_kv(&kv) {
            Ok(r) => {
                view.insert(kv.key.clone(), r);
            }
            Err(e) => tracing::warn!(pool, error = %e, "discovery: bad record"),
        },
        WatchEvent::Delete { key, .. } => {
            view.remove(&key);
        }
    }
}

fn to_servers<'a>(pool: &str, recs: impl Iterator<Item = &'a ServiceRecord>) -> Vec<Server> {
    let mut out: Vec<Server> = Vec::new();
    let mut names: HashSet<&str> = HashSet::new();
    let mut addrs: HashSet<SocketAddr> = HashSet::new();
    for r in recs {
        let Ok(address) = r.address.parse::<SocketAddr>() else {
            tracing::warn!(pool, name = %r.name, address = %r.address, "discovery: record with a bad address skipped");
            continue;
        };
        if r.name.is_empty() || names.contains(r.name.as_str()) || addrs.contains(&address) {
            continue;
        }
        names.insert(&r.name);
        addrs.insert(address);
        out.push(Server {
            name: r.name.clone(),
            address,
            weight: r.weight.min(MAX_WEIGHT),
        });
    }
    out
}
