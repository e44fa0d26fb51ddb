//! The run of `rampart up`: resolve and check the topology, stop what an earlier `up`
//! left, start the roles in order and wait for their health (and the virtual IPs), then
//! tend them until a signal, and stop them all. The process table it drives is
//! [`Supervisor`](super::Supervisor).

use super::*;

/// The PostgreSQL data folders of the topology's db nodes.
pub fn db_dirs(t: &Topology) -> Vec<PathBuf> {
    t.db.iter()
        .flat_map(|d| d.nodes.iter().map(|n| n.data_dir.clone()))
        .collect()
}

/// Run `rampart up` until SIGINT, SIGTERM or SIGHUP.
pub fn run(o: UpOptions) -> Result<(), UpError> {
    let t0 = Instant::now();
    let r = resolve(&o.resolve)?;
    if let Some(s) = UpState::read(&r.data_dir) {
        if crate::state::pid_alive(s.pid) && crate::lifecycle::is_up(s.pid) {
            return Err(UpError::Start(format!(
                "a stack is already running from {} (rampart up, pid {}); stop it first (Ctrl-C there, or rampart down{})",
                r.data_dir.display(),
                s.pid,
                if r.builtin { String::new() } else { format!(" --config {}", r.origin) }
            )));
        }
        // Its `up` is gone (killed, or a machine that lost the parent-death signal):
        // what it left running is stopped before this stack takes the same ports.
        let left = crate::lifecycle::stop_leftovers(
            &s,
            &r.topology.cluster,
            &db_dirs(&r.topology),
            Duration::from_secs(10),
        );
        if left.is_empty() {
            outln!(
                "rampart up: the stack of rampart up pid {} ended without stopping; nothing of it was still running",
                s.pid
            );
        } else {
            outln!(
                "rampart up: stopped the stack left running by rampart up pid {} (gone): {}",
                s.pid,
                left.describe()
            );
        }
    }
    // The separate-hosts rehearsal: the same topology rewritten for a host per node.
    let chosen = if o.hosts_from_topology {
        r.topology.hosts
    } else {
        o.hosts
    };
    let (r, hosts) = match chosen {
        None => (r, None),
        Some(subnet) => rehearse(r, subnet)?,
    };
    outln!(
        "rampart up: {} (cluster {}), data in {}",
        r.origin,
        r.topology.cluster,
        r.data_dir.display()
    );
    std::fs::create_dir_all(&r.data_dir).map_err(io("create", &r.data_dir))?;
    if o.fresh {
        wipe(&r)?;
    }

    // What the machine must have.
    let etcd = match &r.topology.etcd {
        Some(e) if !e.members.is_empty() => Some(find_program("etcd", &ETCD_DIRS).ok_or_else(|| UpError::Missing {
            program: "etcd".into(),
            hint: "install Debian's etcd-server package (apt-get install etcd-server), or run bash scripts/deps.sh".into(),
        })?),
        _ => None,
    };
    if let Some(db) = &r.topology.db {
        let explicit = db
            .pg_bin_dir
            .as_ref()
            .is_some_and(|d| d.join("postgres").is_file());
        if !explicit && find_postgres().is_none() {
            return Err(UpError::Missing {
                program: "PostgreSQL (postgres, initdb, pg_ctl)".into(),
                hint: "install Debian's postgresql-15 package (apt-get install postgresql-15), or run bash scripts/deps.sh".into(),
            });
        }
    }
    let rampart = o.rampart.clone();
    let has_role = |k: NodeKind| binary_has_role(&rampart, k);
    let etcd_path = etcd.unwrap_or_default();
    let Plan {
        mut procs,
        unavailable,
    } = plan(
        &r.topology,
        &r.file,
        &r.data_dir,
        &Tools {
            rampart: &rampart,
            etcd: &etcd_path,
            has_role: &has_role,
        },
    );
    if hosts.is_none() {
        check_ports_free(&r.topology)?;
    }
    for cert in crate::tls::ensure_self_signed(&r.topology)? {
        outln!("certificate written: {}", cert.display());
    }
    if let Some(t) = r.topology.tls.as_ref().filter(|t| t.upstream) {
        outln!(
            "  upstream    balancers -> web nodes over TLS, verified against {}",
            t.trust_file().display()
        );
    }
    let lb_admin = crate::lbadmin::assign(&r.topology, &r.data_dir, &mut procs)?;
    // The hosts, before anything starts in them; removed when this function returns.
    let _network = match &hosts {
        Some(h) => {
            crate::hostnet::create(h)?;
            let guard = NetworkGuard(h.clone());
            outln!(
                "  hosts       {} nodes on {}/24 (bridge {}, this machine {}), client host {} ({})",
                h.hosts.len(),
                h.subnet,
                h.bridge,
                h.operator,
                h.client.netns,
                h.client.ip
            );
            for host in &h.hosts {
                crate::hostnet::apply_firewall(host, &o.rampart, &r.file)?;
            }
            for p in procs.iter_mut() {
                p.netns = h.host(&p.name).map(|x| x.netns.clone());
            }
            Some(guard)
        }
        None => None,
    };

    let logs = r.data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io("create", &logs))?;
    let mut state = UpState {
        pid: std::process::id(),
        topology: r.file.clone(),
        data_dir: r.data_dir.clone(),
        nodes: Vec::new(),
        cgroup: None,
        lb_admin,
        hosts: hosts.clone(),
    };
    for u in &unavailable {
        state.nodes.push(NodeState {
            name: u.name.clone(),
            kind: u.kind.as_str().into(),
            pid: None,
            log: PathBuf::new(),
            restarts: 0,
            state: "unavailable".into(),
        });
    }
    // Each node in its own cgroup (best effort), so a partition drill can cut its network.
    // Orphans of the nodes come to us, not to PID 1 (see crate::reap).
    if !crate::reap::become_subreaper() {
        outln!("  note: cannot become the subreaper of the nodes: what a killed node leaves behind waits for PID 1 to reap it");
    }
    let cgroups = crate::cgroup::StackCgroups::create(&r.topology.cluster, std::process::id())
        .and_then(|c| {
            for spec in &procs {
                c.ensure_node(&spec.name)?;
            }
            Ok(c)
        });
    let cgroups = match cgroups {
        Ok(c) => {
            state.cgroup = Some(c.dir.clone());
            Some(c)
        }
        Err(why) => {
            outln!("  note: nodes share this process's cgroup: {why}; rampart chaos partition cannot cut them off");
            None
        }
    };
    let mut sup = Supervisor {
        procs: procs
            .into_iter()
            .map(|spec| Proc {
                log: logs.join(format!("{}.log", spec.name)),
                spec,
                child: None,
                started: Instant::now(),
                crashes: 0,
                restarts: 0,
                restart_at: None,
                healthy: false,
                ever_healthy: false,
                last_reason: None,
                same_reason: 0,
            })
            .collect(),
        logs,
        t0,
        backoff: Backoff::default(),
        state,
        cgroups,
        rampart: o.rampart.clone(),
        starting: true,
    };

    // Signals: SIGINT (Ctrl-C), SIGTERM (rampart down, kill) and SIGHUP (the terminal
    // closed) all stop the stack.
    let stop = Arc::new(AtomicBool::new(false));
    let got: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the signal runtime", "."))?;
    {
        let stop = stop.clone();
        let got = got.clone();
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut int, mut term, mut hup) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) {
                    (Ok(i), Ok(t), Ok(h)) => (i, t, h),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                if let Ok(mut g) = got.lock() {
                    *g = Some(name);
                }
                stop.store(true, Ordering::SeqCst);
            })
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(UpError::Start(format!("install signal handlers: {e}"))),
            Err(_) => {
                return Err(UpError::Start(
                    "install signal handlers: the signal thread died".into(),
                ))
            }
        }
    }

    // Health probes in the background, so a hung node never stalls the supervisor.
    let health: Health = Arc::new(Mutex::new(HashMap::new()));
    let probes: Vec<(String, Probe)> = sup
        .procs
        .iter()
        .map(|p| (p.spec.name.clone(), p.spec.probe.clone()))
        .collect();
    {
        let health = health.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (name, p) in &probes {
                    let ok = probe(p);
                    if let Ok(mut m) = health.lock() {
                        m.insert(name.clone(), ok);
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
    }

    for u in &unavailable {
        sup.say(format!(
            "- {} ({}): not available: {}",
            u.name, u.kind, u.why
        ));
    }
    let result = start_and_watch(&mut sup, &health, &stop, &r, &o, &unavailable);
    if let Err(e) = &result {
        sup.say(format!("✘ {e}"));
    }
    match got.lock().ok().and_then(|g| *g) {
        Some(sig) => sup.say(format!("{sig}: stopping the stack (reverse order) ...")),
        None => sup.say("stopping the stack (reverse order) ..."),
    }
    sup.stop_all();
    // A partition drill that could not heal (its process was killed) heals now.
    if let Some(nft) = crate::netcut::find_nft() {
        let table = crate::netcut::table_name(&r.topology.cluster, std::process::id());
        if let Ok(true) = crate::netcut::delete_table(&nft, &table) {
            sup.say(format!(
                "removed the partition left by a drill (nftables table {table})"
            ));
        }
    }
    if let Some(c) = &sup.cgroups {
        c.remove(Duration::from_secs(3));
    }
    let _ = std::fs::remove_file(crate::state::path(&r.data_dir));
    sup.say(format!(
        "stopped; data kept in {} (rampart up --fresh starts over)",
        r.data_dir.display()
    ));
    result
}

/// Removes the rehearsal's network when dropped (every way out of `run`).
struct NetworkGuard(crate::hostnet::HostsState);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        crate::hostnet::remove(&self.0);
    }
}

/// Write the rehearsal of `r`'s topology beside it (`<name>.hosts.toml`, so relative
/// paths keep their meaning) and resolve that instead.
fn rehearse(
    r: Resolved,
    subnet: std::net::Ipv4Addr,
) -> Result<(Resolved, Option<crate::hostnet::HostsState>), UpError> {
    let text = std::fs::read_to_string(&r.file).map_err(io("read", &r.file))?;
    let (text, layout) =
        rampart_topology::hosts::rehearsal(&text, &r.topology, subnet, &r.data_dir)
            .map_err(UpError::Start)?;
    let stem = r
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "topology".into());
    let file = r.file.with_file_name(format!("{stem}.hosts.toml"));
    std::fs::write(&file, &text).map_err(io("write", &file))?;
    let r2 = resolve(&crate::config::ResolveOptions {
        config: Some(file),
        data_dir: Some(r.data_dir.clone()),
        port_base: None,
    })?;
    let h = crate::hostnet::plan(&r2.topology.cluster, &layout);
    Ok((
        Resolved {
            origin: format!("{}, on separate hosts ({subnet}/24)", r.origin),
            builtin: r.builtin,
            ..r2
        },
        Some(h),
    ))
}

/// With virtual IPs the stack is not up until each has exactly one master and no router
/// of it is about to take over: a balancer answers on its own address a master-down
/// interval (3 adverts and a skew) before it takes an address, and a client sent to a
/// virtual IP right after "stack healthy" must reach the balancer that keeps it. A
/// balancer started a few milliseconds after its peer can find the peer master of its
/// own address and preempt it an advert later: a connection a client opened in between
/// breaks, its next packets reaching the new master, which knows nothing of it.
/// Balancers whose admin API `up` cannot reach are not waited for.
fn wait_for_vips(
    sup: &mut Supervisor,
    stop: &AtomicBool,
    r: &Resolved,
    o: &UpOptions,
) -> Result<(), UpError> {
    let t = &r.topology;
    if t.lb.iter().all(|l| l.vips().is_empty()) {
        return Ok(());
    }
    let admins = crate::status::lb_admins(t, Some(&sup.state));
    if admins.iter().any(Option::is_none) {
        return Ok(());
    }
    let mut expected: Vec<String> =
        t.lb.iter()
            .flat_map(|l| &l.vrrp)
            .flat_map(|(_, v)| v.iter().map(|i| i.name.clone()))
            .collect();
    expected.sort();
    expected.dedup();
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        sup.tend(false)?;
        let states: Option<Vec<serde_json::Value>> =
            admins.iter().map(crate::status::lb_state).collect();
        let waiting = match &states {
            Some(s) => crate::status::vips_not_held(s, &expected),
            None => vec!["a balancer's admin API does not answer".to_string()],
        };
        if waiting.is_empty() {
            sup.say(format!(
                "✔ virtual IPs held after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > o.start_timeout {
            return Err(UpError::Start(format!(
                "virtual IPs not held by exactly one balancer after {:.0}s: {}",
                o.start_timeout.as_secs_f64(),
                waiting.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_and_watch(
    sup: &mut Supervisor,
    health: &Health,
    stop: &AtomicBool,
    r: &Resolved,
    o: &UpOptions,
    unavailable: &[crate::plan::Unavailable],
) -> Result<(), UpError> {
    let groups = [
        NodeKind::Etcd,
        NodeKind::Db,
        NodeKind::Web,
        NodeKind::Lb,
        NodeKind::Monitor,
    ];
    for kind in groups {
        let idx: Vec<usize> = (0..sup.procs.len())
            .filter(|&i| sup.procs[i].spec.kind == kind)
            .collect();
        if idx.is_empty() {
            continue;
        }
        for &i in &idx {
            sup.spawn(i)?;
        }
        let names: Vec<String> = idx
            .iter()
            .map(|&i| sup.procs[i].spec.name.clone())
            .collect();
        sup.say(format!("starting {kind}: {}", names.join(", ")));
        let started = Instant::now();
        let mut last_wait = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            sup.tend(false)?;
            for i in sup.apply_health(health, false) {
                let p = &sup.procs[i];
                sup.say(format!(
                    "✔ {} ({}) healthy after {:.1}s",
                    p.spec.name,
                    p.spec.kind,
                    started.elapsed().as_secs_f64()
                ));
            }
            if idx.iter().all(|&i| sup.procs[i].healthy) {
                break;
            }
            if started.elapsed() > o.start_timeout {
                let waiting: Vec<String> = idx
                    .iter()
                    .filter(|&&i| !sup.procs[i].healthy)
                    .map(|&i| {
                        format!(
                            "{} (log: {})",
                            sup.procs[i].spec.name,
                            sup.procs[i].log.display()
                        )
                    })
                    .collect();
                return Err(UpError::Start(format!(
                    "not healthy after {:.0}s: {}",
                    o.start_timeout.as_secs_f64(),
                    waiting.join(", ")
                )));
            }
            if last_wait.elapsed() > Duration::from_secs(3) {
                last_wait = Instant::now();
                let waiting: Vec<String> = idx
                    .iter()
                    .filter(|&&i| !sup.procs[i].healthy)
                    .map(|&i| sup.procs[i].spec.name.clone())
                    .collect();
                sup.say(format!("… waiting for {}", waiting.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_for_vips(sup, stop, r, o)?;
    sup.starting = false;
    let t = &r.topology;
    sup.say(format!(
        "stack healthy in {:.1}s",
        sup.t0.elapsed().as_secs_f64()
    ));
    outln!();
    // A listener on 0.0.0.0 (separate hosts) is reached through the first virtual IP.
    let first_vip = t.lb.iter().flat_map(|l| l.vips()).next();
    for l in t.lb.iter().flat_map(|l| &l.config.listeners) {
        if l.mode != rampart_topology::lb::Mode::Http {
            continue;
        }
        let mut l = l.clone();
        if let (true, Some(v)) = (l.address.ip().is_unspecified(), first_vip) {
            l.address.set_ip(v);
        }
        let l = &l;
        match (&l.tls, &l.redirect_https) {
            (Some(tls), _) => outln!(
                "  site        https://{}/   (certificate {}{})",
                l.address,
                tls.certs
                    .first()
                    .map(|c| c.cert.display().to_string())
                    .unwrap_or_default(),
                t.tls
                    .as_ref()
                    .and_then(|c| c.ca.as_ref())
                    .map(|ca| format!(", CA {}", ca.display()))
                    .unwrap_or_default()
            ),
            (None, Some(_)) => {
                outln!("  site        http://{}/   (redirects to HTTPS)", l.address)
            }
            (None, None) => outln!("  site        http://{}/", l.address),
        }
    }
    for n in t.lb.iter().flat_map(|l| &l.nodes) {
        outln!(
            "  {:<11} http://{}/   (this balancer's own entry)",
            n.name,
            n.address
        );
    }
    for n in t.lb.iter().flat_map(|l| &l.nodes) {
        if let Some(a) = n.admin {
            outln!(
                "  {:<11} http://{a}/stats   (admin API, metrics: /metrics)",
                format!("{} stats", n.name)
            );
        } else if let Some(a) = sup.state.lb_admin.iter().find(|a| a.node == n.name) {
            outln!(
                "  {:<11} http://{}/stats   (admin API given by rampart up, token in {})",
                format!("{} stats", n.name),
                a.address,
                a.token_file.display()
            );
        }
    }
    if let Some(db) = &t.db {
        if let Some(n) = db.nodes.first() {
            outln!("  db cluster  http://{}/cluster", n.api);
        }
    }
    if let Some(m) = &t.monitor {
        if unavailable.iter().any(|u| u.kind == NodeKind::Monitor) {
            outln!("  dashboard   not available: this binary has no `rampart monitor` role yet");
        } else {
            outln!(
                "  dashboard   http://{}/   (alerts: /api/alerts, targets: /api/targets)",
                m.listen
            );
        }
    }
    let https =
        t.lb.iter()
            .flat_map(|l| &l.config.listeners)
            .any(|l| l.tls.is_some());
    if t.tls.is_some() && !https {
        outln!("  https       not served: [tls] is in the topology, but no [[lb.listener]] has tls = {{ cert, key }}");
    }
    if let Some(h) = &sup.state.hosts {
        let vips: Vec<String> = h.vips.iter().map(|v| v.to_string()).collect();
        outln!(
            "  virtual IPs {} (the site's addresses; listeners bind 0.0.0.0 on every balancer, VRRP moves the addresses)",
            vips.join(", ")
        );
        outln!(
            "  client      ip netns exec {} curl --cacert <CA> https://{}:{}/   (reaches only what the firewall lets anyone reach)",
            h.client.netns,
            vips.first().map(String::as_str).unwrap_or("?"),
            t.site_addresses().iter().map(|a| a.port()).max().unwrap_or(443)
        );
        outln!("  firewall    applied in every host (each node's own ruleset: rampart firewall --print --node NAME --config {})", r.file.display());
    } else if t.firewall.is_some() {
        outln!("  firewall    not applied on one machine (every node shares loopback); see the per-node rulesets: rampart firewall --print --node NAME{}",
            if r.builtin { String::new() } else { format!(" --config {}", r.origin) });
    }
    outln!("  logs        {}", sup.logs.display());
    outln!("\n  rampart status{}    rampart chaos kill-primary    Ctrl-C stops everything (data kept)\n",
        if r.builtin { String::new() } else { format!(" --config {}", r.origin) });

    while !stop.load(Ordering::SeqCst) {
        sup.tend(false)?;
        sup.apply_health(health, true);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
