//! Reloads and binary upgrades under load: no request lost, no connection refused; an
//! upgrade that never reports ready is killed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_no_request_and_refuse_no_connection() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let with_c = config(&servers(&[(&a, 1), (&b, 1), (&c, 2)]), "");
    let without_c = config(&servers(&[(&a, 1), (&b, 2)]), "");
    let lb = OpsLb::start(&without_c, &[]).await;
    let load = Load::start(lb.addr, 6);
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        lb.write(if i % 2 == 0 { &with_c } else { &without_c });
        if i % 4 == 3 {
            let (okc, out) = lb.cli(&["reload", "--admin", "{ADMIN}"]).await;
            assert!(okc, "{out}");
        } else {
            lb.proc.signal(Signal::SIGHUP);
        }
    }
    assert!(
        wait_for(
            || lb.proc.log_text().matches("configuration reloaded").count() == 20,
            Duration::from_secs(10)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    load.finish(50).await;
    assert!(c.hits() > 0, "c never served during the reloads");
    let st = lb.state().await;
    assert_eq!(st["reloads"], 20);
}

/// A bounded load: `n` clients in a loop, half on keep-alive connections, half with a
/// new connection per request; every failure is counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, n: usize) -> Load {
        let mut l = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            refused: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(std::sync::Mutex::new(Vec::new())),
            clients: Vec::new(),
        };
        for i in 0..n {
            let (stop, ok, failed, refused, errors) = (
                l.stop.clone(),
                l.ok.clone(),
                l.failed.clone(),
                l.refused.clone(),
                l.errors.clone(),
            );
            let keep = i % 2 == 0;
            l.clients.push(tokio::spawn(async move {
                let mut cl: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    if cl.is_none() {
                        match Client::connect(addr).await {
                            Ok(c) => cl = Some(c),
                            Err(e) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("connect: {e}"));
                                continue;
                            }
                        }
                    }
                    let Some(c) = cl.as_mut() else { continue };
                    // Closed by the server between requests (`Connection: close` when a
                    // process stops): a client reconnects; nothing was sent, nothing lost.
                    if !c.usable().await {
                        cl = None;
                        continue;
                    }
                    match c.get("/").await {
                        Ok((200, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, body)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{s} {body}"));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("request: {e}"));
                            cl = None;
                        }
                    }
                    if !keep {
                        cl = None;
                    }
                }
            }));
        }
        l
    }

    /// Stop; assert nothing failed and at least `min_ok` requests succeeded.
    async fn finish(self, min_ok: u64) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        let ok = self.ok.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        assert_eq!(
            (failed, refused),
            (0, 0),
            "ok {ok}: {:?}",
            self.errors.lock().unwrap()
        );
        assert!(ok >= min_ok, "too little load: {ok}");
        ok
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_finds_the_installed_binary_and_kills_one_that_never_reports_ready() {
    let a = Backend::start("a").await;
    let bin_dir = TempDir::new().unwrap();
    let bin = bin_dir.path().join("rampart");
    std::fs::copy(rampart_bin(), &bin).unwrap();
    let lb = OpsLb::start_from(&bin, &config(&servers(&[(&a, 1)]), ""), &[], 2).await;
    let old = lb.proc.pid();

    // A "new binary" that never takes the sockets: the upgrade gives up, kills it, and
    // the running process keeps serving.
    install(&bin, b"#!/bin/sh\nexec sleep 300\n");
    let (ok, out) = lb.cli(&["upgrade", "--admin", "{ADMIN}"]).await;
    assert!(
        !ok,
        "an upgrade to a program that never connects succeeded: {out}"
    );
    let log = lb.proc.log_text();
    let started: u32 = log
        .lines()
        .filter(|l| l.contains("upgrade: started the new process"))
        .filter_map(|l| l.split("pid=").nth(1))
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or_else(|| {
            panic!("no new process was started (the replaced binary's path?):\n{log}")
        });
    assert!(
        gone(started),
        "the new process {started} is left running:\n{log}"
    );
    let addr = lb.addr;
    let serves = move || http_request(addr, "GET", "/", &[], b"").is_ok_and(|r| r.status == 200);
    assert!(
        tokio::task::spawn_blocking(serves).await.unwrap(),
        "the old process stopped serving"
    );

    // The real binary installed the same way: the upgrade runs it, from the path (the
    // running process's own file shows as "(deleted)").
    let fresh = std::fs::read(rampart_bin()).unwrap();
    install(&bin, &fresh);
    let (ok, out) = lb.cli(&["upgrade", "--admin", "{ADMIN}"]).await;
    assert!(ok, "{out}\n{}", lb.proc.log_text());
    let pid_file = lb.pid_file();
    assert!(
        wait_for(
            || pid_in(&pid_file).is_some_and(|p| p != old),
            Duration::from_secs(15)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    assert!(
        tokio::task::spawn_blocking(serves).await.unwrap(),
        "the new process does not serve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrades_under_load_lose_no_request_and_refuse_no_connection() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = OpsLb::start(
        &config(
            &servers(&[(&a, 1), (&b, 1)]),
            "[shutdown]\ngrace = \"5s\"\n",
        ),
        &[],
    )
    .await;
    let old = lb.proc.pid();
    let pid_file = lb.pid_file();
    let load = Load::start(lb.addr, 6);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // By signal: a new process takes the sockets, the old one drains and exits 0.
    let (ok, out) = lb.cli(&["upgrade", "--pid-file", &pid_file]).await;
    assert!(ok, "{out}");
    assert!(
        wait_for(
            || pid_in(&pid_file).is_some_and(|p| p != old),
            Duration::from_secs(15)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    let new = pid_in(&pid_file).unwrap();
    let (code, lb) = tokio::task::spawn_blocking(move || {
        let mut lb = lb;
        let c = lb.proc.wait_exit(Duration::from_secs(10));
        (c, lb)
    })
    .await
    .unwrap();
    assert_eq!(code.unwrap(), Some(0), "{}", lb.proc.log_text());
    let (st, _) = lb
        .state_until(&[], Duration::from_secs(5), |st| st["pid"] == new)
        .await;
    assert_eq!(st["pid"], new, "{}", lb.proc.log_text());

    // Through the admin API (served by the new process now).
    let (ok, out) = lb.cli(&["upgrade", "--admin", "{ADMIN}"]).await;
    assert!(ok, "{out}");
    let newer = pid_in(&pid_file).unwrap();
    assert_ne!(newer, new);
    assert!(
        wait_for(|| gone(new), Duration::from_secs(10)).await,
        "the second process did not exit:\n{}",
        lb.proc.log_text()
    );
    let (st, _) = lb
        .state_until(&[], Duration::from_secs(5), |st| st["pid"] == newer)
        .await;
    assert_eq!(st["pid"], newer, "{}", lb.proc.log_text());
    load.finish(50).await;
    assert!(a.hits() > 0 && b.hits() > 0);
    assert!(lb
        .proc
        .log_text()
        .contains("took over the listening sockets"));
}
