//! Who may read the monitor: the allow list and the token (in-process server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_monitor::Monitor;
use rampart_testkit::{free_port, http_get, http_request, wait_port};
use rampart_topology::{Source, Topology};

fn serve(extra: &str) -> SocketAddr {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = format!("[cluster]\nname = \"a\"\n\n[monitor]\nlisten = \"{addr}\"\n{extra}\n");
    let t = Topology::from_source(&Source::new("t.toml", text)).expect("topology");
    let m = Arc::new(Monitor::new(&t, "monitor").expect("monitor"));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let _ = rampart_monitor::server::serve(m, l).await;
        });
    });
    assert!(wait_port(addr, Duration::from_secs(5)));
    addr
}

#[test]
fn a_token_guards_everything_but_healthz() {
    std::env::set_var("RAMPART_IT_MONITOR_TOKEN", "s3cret");
    let a = serve("token_env = \"RAMPART_IT_MONITOR_TOKEN\"");
    assert_eq!(http_get(a, "/healthz").expect("healthz").status, 200);
    assert_eq!(http_get(a, "/api/alerts").expect("alerts").status, 401);
    assert_eq!(http_get(a, "/api/diagram").expect("diagram").status, 401);
    let reload = http_request(a, "POST", "/-/reload", &[], b"").expect("reload");
    assert_eq!(reload.status, 401, "a reload needs the token too");
    assert_eq!(
        http_get(a, "/api/diagram?token=s3cret")
            .expect("diagram")
            .status,
        200
    );
    assert_eq!(http_get(a, "/?token=wrong").expect("page").status, 401);
    assert_eq!(http_get(a, "/?token=s3cret").expect("page").status, 200);
    let r = http_request(
        a,
        "GET",
        "/api/targets",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .expect("targets");
    assert_eq!(r.status, 200);
}

#[test]
fn addresses_outside_allow_are_refused() {
    let a = serve("allow = [\"10.0.0.0/8\"]");
    assert_eq!(http_get(a, "/api/targets").expect("targets").status, 403);
    assert_eq!(http_get(a, "/api/diagram").expect("diagram").status, 403);
    let b = serve("allow = [\"127.0.0.1/32\"]");
    assert_eq!(http_get(b, "/api/targets").expect("targets").status, 200);
}
