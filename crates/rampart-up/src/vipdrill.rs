//! What the balancer drills need beyond [`crate::chaos`]'s client: a probe of the site
//! every 10 ms (from the client host in the separate-hosts rehearsal, so it reaches the
//! site only through the virtual IPs), the longest gap between two successful probes,
//! which balancer holds a virtual IP, and the network faults of a host: its link taken
//! down from the bridge side, or every packet dropped by nftables inside it.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hostnet::{HostState, HostsState};
use crate::site::Site;
use crate::UpError;

/// The nftables table a partition adds inside a host.
pub const CUT_TABLE: &str = "rampart_chaos_cut";

/// A site probe every 10 ms until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// What the probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    pub probes: u64,
    pub failed: u64,
    /// The longest time between two successful probes.
    pub longest_gap: Duration,
}

impl Prober {
    /// Start probing `site` from `netns` (None: from this machine). Bounded to 10 minutes.
    pub fn start(site: Site, netns: Option<String>) -> Result<Prober, UpError> {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), results.clone());
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), UpError>>();
        let handle = std::thread::spawn(move || {
            if let Some(ns) = &netns {
                if let Err(e) = crate::hostnet::enter(ns) {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            let _ = tx.send(Ok(()));
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = Instant::now();
                let ok = site
                    .get("/", Duration::from_millis(250))
                    .is_ok_and(|x| x.status == 200);
                if let Ok(mut v) = r.lock() {
                    v.push((t, ok));
                }
                if let Some(rest) = Duration::from_millis(10).checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        rx.recv()
            .map_err(|_| UpError::Drill("the probe thread died".into()))??;
        Ok(Prober {
            stop,
            results,
            handle: Some(handle),
        })
    }

    pub fn finish(mut self) -> ProbeResult {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let r = self.results.lock().map(|v| v.clone()).unwrap_or_default();
        summarize(&r)
    }
}

/// Probes, failures and the longest gap between successes.
pub fn summarize(r: &[(Instant, bool)]) -> ProbeResult {
    let mut gap = Duration::ZERO;
    let mut last_ok: Option<Instant> = None;
    for (t, ok) in r {
        if *ok {
            if let Some(l) = last_ok {
                gap = gap.max(t.saturating_duration_since(l));
            }
            last_ok = Some(*t);
        }
    }
    ProbeResult {
        probes: r.len() as u64,
        failed: r.iter().filter(|x| !x.1).count() as u64,
        longest_gap: gap,
    }
}

/// The lb node whose host holds `vip` now.
pub fn holder(h: &HostsState, vip: std::net::Ipv4Addr) -> Option<String> {
    h.hosts.iter().find_map(|host| {
        let out = Command::new("ip")
            .args(["-n", &host.netns, "-o", "-4", "addr", "show", "dev", "eth0"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("inet {vip}/"))
            .then(|| host.node.clone())
    })
}

/// Take a host's link down (its carrier goes, as when a cable is pulled) or up again.
pub fn set_link(h: &HostState, up: bool) -> Result<(), UpError> {
    run(&["link", "set", &h.port, if up { "up" } else { "down" }])
}

/// Drop every frame in and out of a host's `eth0`, or stop dropping. At the device
/// (`netdev` ingress and egress), not the IP layer: frames from packet sockets (a
/// cut-off balancer's gratuitous ARP) bypass the inet and arp hooks, and a partition
/// that lets them out pulls clients to the balancer nobody can reach.
pub fn set_cut(h: &HostState, on: bool) -> Result<(), UpError> {
    if on {
        let rules = format!(
            "table netdev {CUT_TABLE} {{ chain i {{ type filter hook ingress device \"eth0\" priority 0; policy drop; }}; chain e {{ type filter hook egress device \"eth0\" priority 0; policy drop; }}; }}"
        );
        nft_in(&h.netns, &[&rules])
    } else {
        nft_in(&h.netns, &["delete", "table", "netdev", CUT_TABLE])
    }
}

/// Heal every fault a drill may have left in the rehearsal: links up, cuts removed.
pub fn heal_all(h: &HostsState) -> Vec<String> {
    let mut healed = Vec::new();
    for host in &h.hosts {
        if nft_in(&host.netns, &["delete", "table", "netdev", CUT_TABLE]).is_ok() {
            healed.push(format!("{}: nftables cut removed", host.node));
        }
        let down = Command::new("ip")
            .args(["-o", "link", "show", &host.port])
            .output()
            .map(|o| !String::from_utf8_lossy(&o.stdout).contains(",UP"))
            .unwrap_or(false);
        if down && set_link(host, true).is_ok() {
            healed.push(format!("{}: link up again", host.node));
        }
    }
    healed
}

fn nft_in(netns: &str, args: &[&str]) -> Result<(), UpError> {
    let nft = crate::netcut::find_nft().ok_or_else(crate::netcut::nft_missing)?;
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(nft)
        .args(args)
        .output()
        .map_err(|e| UpError::Drill(format!("nft in {netns}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UpError::Drill(format!(
            "nft in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn run(args: &[&str]) -> Result<(), UpError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| UpError::Drill(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UpError::Drill(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_two_successes() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let r = vec![
            (at(0), true),
            (at(10), true),
            (at(20), false),
            (at(30), false),
            (at(250), true),
            (at(260), true),
        ];
        let s = summarize(&r);
        assert_eq!((s.probes, s.failed), (6, 2));
        assert_eq!(s.longest_gap, Duration::from_millis(240));
        assert_eq!(summarize(&[]).longest_gap, Duration::ZERO);
    }
}
