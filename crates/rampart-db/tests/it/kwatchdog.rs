//! The kernel watchdog modes on a machine without the device: `automatic` falls back to
//! the watchdog process, `required` refuses to lead.

use std::time::{Duration, Instant};

use crate::harness::{connect, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_without_a_kernel_watchdog_never_leads_and_automatic_falls_back() {
    let mut c = Cluster::start(Opts {
        nodes: 2,
        first_alone: true,
        extra_db: "watchdog_device = \"/nonexistent/rampart-test/watchdog\"".into(),
        node_extra: vec![(1, "watchdog = \"required\"".into())],
        ..Opts::default()
    });
    c.wait_replica(1, Duration::from_secs(60));
    let log0 = c.agent_log(0);
    assert!(
        log0.contains("no kernel watchdog (watchdog = \"automatic\"): the watchdog process fences this primary alone"),
        "{log0}"
    );
    let log1 = c.agent_log(1);
    assert!(
        log1.contains("watchdog = \"required\" but the kernel watchdog is unavailable: this node will not lead"),
        "{log1}"
    );
    assert!(
        log1.contains("/nonexistent/rampart-test/watchdog"),
        "{log1}"
    );

    c.kill_node(0);
    // Three leases (ttl 3 s) and more: the only node left never leads.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        assert_ne!(
            c.api(1, "/primary").map(|(s, _)| s),
            Some(200),
            "db2 leads without its required kernel watchdog"
        );
        if let Some(cl) = connect(c.nodes[1].pg_port).await {
            if let Ok(row) = cl.query_one("SELECT pg_is_in_recovery()", &[]).await {
                assert!(row.get::<_, bool>(0), "db2 was promoted");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(c.leader_key().await, None);
}
