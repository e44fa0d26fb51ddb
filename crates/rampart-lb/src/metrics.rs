//! `/metrics`: the counters in the Prometheus text format, read at scrape time (nothing
//! on the data path beyond the atomics of `stats`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rampart_balance::outlier::Reason;

use crate::state::AdminState;
use crate::stats::{prometheus_buckets, Snapshot, ERROR_KINDS};
use crate::Shared;

/// Pools of more servers than this get per-server series only for their servers that are
/// down, ejected, not ready or weighted 0 (the ones worth looking at); their healthy servers
/// count in the pool's series. Keeps a scrape of a 10,000-server pool small and fast.
pub const SERVER_SERIES_MAX: usize = 1_000;

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Render every metric.
pub fn render(shared: &Arc<Shared>) -> Result<String, String> {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(LbCollector(shared.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}

struct LbCollector(Arc<Shared>);

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its samples, each a label set and a value.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, Snapshot)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (l, s) in samples {
        let b = prometheus_buckets(s);
        let count: u64 = s.lat.iter().sum();
        m.encode_family(l)?
            .encode_histogram::<()>(s.lat_sum_ns as f64 / 1e9, count, &b, None)?;
    }
    Ok(())
}

fn by_class(base: &Labels, s: &Snapshot, out: &mut Vec<(Labels, u64)>) {
    for (i, c) in CLASSES.iter().enumerate() {
        let mut l = base.clone();
        l.push(("class", (*c).to_string()));
        out.push((l, s.class[i]));
    }
}

fn by_error(base: &Labels, s: &Snapshot, out: &mut Vec<(Labels, u64)>) {
    for k in ERROR_KINDS {
        let mut l = base.clone();
        l.push(("kind", k.as_str().to_string()));
        out.push((l, s.errors[k as usize]));
    }
}

impl Collector for LbCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sh = &self.0;
        let listeners: Vec<_> = sh.listeners.lock().map(|l| l.clone()).unwrap_or_default();
        let pools: Vec<_> = sh.pools.lock().map(|p| p.clone()).unwrap_or_default();

        // Listeners.
        let mut l_req = Vec::new();
        let mut l_conn = Vec::new();
        let mut l_acc = Vec::new();
        let mut l_lat = Vec::new();
        for l in &listeners {
            let base: Labels = vec![("listener", l.name.clone())];
            let s = l.stats.counters.snapshot();
            by_class(&base, &s, &mut l_req);
            l_conn.push((
                base.clone(),
                l.stats.conns_active.load(Ordering::Relaxed) as i64,
            ));
            l_acc.push((base.clone(), l.stats.conns_total.load(Ordering::Relaxed)));
            l_lat.push((base, s));
        }
        counter(
            &mut enc,
            "rampart_listener_requests",
            "Responses sent to clients, by status class.",
            &l_req,
        )?;
        gauge(
            &mut enc,
            "rampart_listener_connections",
            "Client connections open.",
            &l_conn,
        )?;
        counter(
            &mut enc,
            "rampart_listener_connections_accepted",
            "Client connections accepted.",
            &l_acc,
        )?;
        histogram(
            &mut enc,
            "rampart_listener_response",
            "Time from request to response head, as seen by clients.",
            &l_lat,
        )?;
        let mut fw = Vec::new();
        for f in crate::firewall::all() {
            for r in crate::firewall::Reason::ALL {
                let l: Labels = vec![
                    ("listener", f.listener.clone()),
                    ("reason", r.as_str().to_string()),
                ];
                fw.push((l, f.stats.get(r)));
            }
        }
        counter(
            &mut enc,
            "rampart_firewall_refused",
            "Connections and requests the listener's firewall refused, by reason.",
            &fw,
        )?;

        counter(
            &mut enc,
            "rampart_upstream_h2_connections",
            "HTTP/2 connections opened to servers (pools whose tls alpn offers h2).",
            &[(
                Vec::new(),
                crate::upstream_h2::CONNECTIONS.load(Ordering::Relaxed),
            )],
        )?;
        counter(
            &mut enc,
            "rampart_upstream_h2_streams",
            "Requests sent to servers over HTTP/2 (a request sent again counts again).",
            &[(
                Vec::new(),
                crate::upstream_h2::STREAMS.load(Ordering::Relaxed),
            )],
        )?;

        // Pools.
        let mut p_req = Vec::new();
        let mut p_err = Vec::new();
        let mut p_retry = Vec::new();
        let mut p_queue = Vec::new();
        let mut p_inflight = Vec::new();
        let mut p_up = Vec::new();
        let mut p_ejections = Vec::new();
        let mut p_refused = Vec::new();
        let mut p_ejected = Vec::new();
        let mut p_panic = Vec::new();
        let mut p_servers = Vec::new();
        // Servers.
        let mut s_req = Vec::new();
        let mut s_err = Vec::new();
        let mut s_retry = Vec::new();
        let mut s_inflight = Vec::new();
        let mut s_up = Vec::new();
        let mut s_ejected = Vec::new();
        let mut s_state = Vec::new();
        let mut s_weight = Vec::new();
        let mut s_bytes = Vec::new();
        let mut s_lat = Vec::new();
        for h in &pools {
            let p = h.get();
            let base: Labels = vec![("pool", p.cfg.name.clone())];
            let ps = p.stats.snapshot();
            let detailed = p.servers.len() <= SERVER_SERIES_MAX;
            p_servers.push((base.clone(), p.servers.len() as i64));
            let mut sum = Snapshot::default();
            for s in p.servers.iter() {
                let ss = s.stats.snapshot();
                for (a, b) in sum.class.iter_mut().zip(ss.class) {
                    *a += b;
                }
                if !detailed
                    && s.is_up()
                    && !s.is_ejected()
                    && s.admin_state() == AdminState::Ready
                    && s.weight() > 0
                {
                    // A big pool's healthy servers are in its aggregates only.
                    continue;
                }
                let sb: Labels = vec![("pool", p.cfg.name.clone()), ("server", s.name.clone())];
                by_class(&sb, &ss, &mut s_req);
                by_error(&sb, &ss, &mut s_err);
                s_retry.push((sb.clone(), ss.retries));
                s_inflight.push((sb.clone(), i64::from(s.in_flight.load(Ordering::Relaxed))));
                s_up.push((sb.clone(), i64::from(s.is_up())));
                s_ejected.push((sb.clone(), i64::from(s.is_ejected())));
                for st in ["ready", "drain", "maintenance"] {
                    let mut l = sb.clone();
                    l.push(("state", st.to_string()));
                    s_state.push((l, i64::from(s.admin_state().as_str() == st)));
                }
                s_weight.push((sb.clone(), i64::from(s.weight())));
                s_bytes.push((sb.clone(), ss.bytes_out));
                s_lat.push((sb, ss));
            }
            by_class(&base, &sum, &mut p_req);
            by_error(&base, &ps, &mut p_err);
            p_retry.push((base.clone(), ps.retries));
            p_queue.push((base.clone(), p.waiting.load(Ordering::Relaxed) as i64));
            p_inflight.push((
                base.clone(),
                p.servers
                    .iter()
                    .map(|s| i64::from(s.in_flight.load(Ordering::Relaxed)))
                    .sum(),
            ));
            for r in Reason::ALL {
                let mut l = base.clone();
                l.push(("reason", r.as_str().to_string()));
                p_ejections.push((l, p.ejections[r as usize].load(Ordering::Relaxed)));
            }
            p_refused.push((base.clone(), p.ejections_refused.load(Ordering::Relaxed)));
            p_ejected.push((
                base.clone(),
                p.servers.iter().filter(|s| s.is_ejected()).count() as i64,
            ));
            p_panic.push((base.clone(), i64::from(p.in_panic())));
            p_up.push((
                base,
                (0..p.servers.len()).filter(|&i| p.takes(i)).count() as i64,
            ));
        }
        counter(
            &mut enc,
            "rampart_pool_requests",
            "Responses from the pool's current servers, by status class.",
            &p_req,
        )?;
        counter(&mut enc, "rampart_pool_errors", "Failed requests of the pool, by kind (connect, upstream, timeout, status_5xx, queue_full, queue_timeout, no_server).", &p_err)?;
        counter(
            &mut enc,
            "rampart_pool_retries",
            "Requests sent again to another server.",
            &p_retry,
        )?;
        gauge(
            &mut enc,
            "rampart_pool_queue_length",
            "Requests waiting for a free server slot.",
            &p_queue,
        )?;
        gauge(
            &mut enc,
            "rampart_pool_in_flight",
            "Requests in flight to the pool's servers.",
            &p_inflight,
        )?;
        gauge(
            &mut enc,
            "rampart_pool_servers",
            "Servers in the pool (pools of more than 1,000 have per-server series only for servers that are down, ejected, not ready or weighted 0).",
            &p_servers,
        )?;
        gauge(
            &mut enc,
            "rampart_pool_servers_eligible",
            "Servers taking new requests (healthy, not ejected, ready, weight > 0; in panic: ready, weight > 0).",
            &p_up,
        )?;
        counter(
            &mut enc,
            "rampart_pool_ejections",
            "Servers ejected by outlier detection, by reason (connect_failures, failure_ratio).",
            &p_ejections,
        )?;
        counter(
            &mut enc,
            "rampart_pool_ejections_refused",
            "Ejections refused because max_ejection_percent of the pool was ejected already.",
            &p_refused,
        )?;
        gauge(
            &mut enc,
            "rampart_pool_servers_ejected",
            "Servers ejected by outlier detection now.",
            &p_ejected,
        )?;
        gauge(
            &mut enc,
            "rampart_pool_panic",
            "1 while too few servers are available (panic_threshold) and the pool balances over all of them.",
            &p_panic,
        )?;
        counter(
            &mut enc,
            "rampart_server_requests",
            "Responses from the server, by status class.",
            &s_req,
        )?;
        counter(
            &mut enc,
            "rampart_server_errors",
            "Failed requests on the server, by kind.",
            &s_err,
        )?;
        counter(
            &mut enc,
            "rampart_server_retries",
            "Retries sent to the server after a failure elsewhere.",
            &s_retry,
        )?;
        gauge(
            &mut enc,
            "rampart_server_in_flight",
            "Requests (HTTP) or connections (TCP) in flight on the server.",
            &s_inflight,
        )?;
        gauge(
            &mut enc,
            "rampart_server_up",
            "1 when health checks say the server is up.",
            &s_up,
        )?;
        gauge(
            &mut enc,
            "rampart_server_ejected",
            "1 while outlier detection keeps the server out of rotation.",
            &s_ejected,
        )?;
        gauge(
            &mut enc,
            "rampart_server_state",
            "The operator state of the server (1 for the current one).",
            &s_state,
        )?;
        gauge(
            &mut enc,
            "rampart_server_weight",
            "The weight in effect.",
            &s_weight,
        )?;
        counter(
            &mut enc,
            "rampart_server_response_body_bytes",
            "Response body bytes received from the server.",
            &s_bytes,
        )?;
        histogram(
            &mut enc,
            "rampart_server_response",
            "Time from sending the request to the response head.",
            &s_lat,
        )?;

        gauge(
            &mut enc,
            "rampart_connections",
            "Client connections open on every listener.",
            &[(Vec::new(), crate::active_connections() as i64)],
        )?;
        counter(
            &mut enc,
            "rampart_reloads",
            "Configuration reloads applied.",
            &[(Vec::new(), sh.reloads.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut enc,
            "rampart_reload_failures",
            "Configuration reloads refused.",
            &[(Vec::new(), sh.reload_failures.load(Ordering::Relaxed))],
        )?;
        let expiries: Vec<(Labels, i64)> = crate::tls::expiries()
            .into_iter()
            .map(|(listener, cert, t)| (vec![("listener", listener), ("cert", cert)], t))
            .collect();
        gauge(
            &mut enc,
            "rampart_tls_certificate_not_after_seconds",
            "When each served TLS certificate expires (its notAfter), in seconds since the epoch.",
            &expiries,
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let left: Vec<(Labels, i64)> = expiries
            .into_iter()
            .map(|(l, t)| (l, t.saturating_sub(now)))
            .collect();
        gauge(
            &mut enc,
            "rampart_tls_certificate_expires_in_seconds",
            "Seconds left before each served TLS certificate expires (negative: expired).",
            &left,
        )?;
        let staples: Vec<(Labels, i64)> = crate::tls::ocsp_staples()
            .into_iter()
            .map(|(listener, cert, t)| (vec![("listener", listener), ("cert", cert)], t))
            .collect();
        gauge(
            &mut enc,
            "rampart_tls_ocsp_staple_valid_until_seconds",
            "Until when each served TLS certificate has a good OCSP answer stapled (its nextUpdate), in seconds since the epoch; 0 when none (no responder, not fetched yet, expired, or revoked).",
            &staples,
        )?;
        vrrp_metrics(&mut enc, sh)
    }
}

/// The virtual routers: state (one sample per state, 1 for the current one), effective
/// priority, transitions and adverts.
fn vrrp_metrics(enc: &mut DescriptorEncoder, sh: &Shared) -> Result<(), std::fmt::Error> {
    let views: Vec<_> = sh.vrrp.lock().map(|v| v.clone()).unwrap_or_default();
    if views.is_empty() {
        return Ok(());
    }
    let mut state = Vec::new();
    let mut prio = Vec::new();
    let (mut trans, mut sent, mut recv, mut dropped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for v in &views {
        let base: Labels = vec![
            ("router", v.name.clone()),
            ("vrid", v.vrid.to_string()),
            ("interface", v.interface.clone()),
        ];
        for (i, name) in crate::vrrp::STATE_NAMES.iter().enumerate() {
            let mut l = base.clone();
            l.push(("state", (*name).to_string()));
            state.push((l, i64::from(usize::from(v.state_code()) == i)));
        }
        prio.push((base.clone(), i64::from(v.effective_priority())));
        trans.push((base.clone(), v.transitions.load(Ordering::Relaxed)));
        sent.push((base.clone(), v.adverts_sent.load(Ordering::Relaxed)));
        recv.push((base.clone(), v.adverts_received.load(Ordering::Relaxed)));
        dropped.push((base, v.adverts_dropped.load(Ordering::Relaxed)));
    }
    gauge(
        enc,
        "rampart_vrrp_state",
        "Virtual router state: 1 for the current one (init, backup, master, fault, stopping).",
        &state,
    )?;
    gauge(
        enc,
        "rampart_vrrp_priority",
        "Virtual router's effective priority (configured minus tracked failures).",
        &prio,
    )?;
    counter(
        enc,
        "rampart_vrrp_transitions",
        "Virtual router state changes.",
        &trans,
    )?;
    counter(
        enc,
        "rampart_vrrp_adverts_sent",
        "VRRP adverts sent.",
        &sent,
    )?;
    counter(
        enc,
        "rampart_vrrp_adverts_received",
        "VRRP adverts accepted from peers.",
        &recv,
    )?;
    counter(
        enc,
        "rampart_vrrp_adverts_dropped",
        "VRRP packets dropped (TTL, checksum, unknown sender).",
        &dropped,
    )
}
