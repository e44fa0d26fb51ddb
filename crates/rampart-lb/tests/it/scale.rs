//! A pool of 10,000 servers: the admin API pages it, a scrape stays small, and one server's
//! change shows at once (the balancer is updated for that server alone).

use std::fmt::Write as _;

use serde_json::Value;

use crate::ops::OpsLb;

/// A config with one pool of `n` servers on loopback addresses nobody listens on (no traffic
/// is sent; health checks off).
fn config(n: usize, algorithm: &str) -> String {
    let mut servers = String::new();
    for i in 0..n {
        let _ = writeln!(
            servers,
            "  {{ name = \"s{i}\", address = \"127.0.{}.{}:9\" }},",
            1 + i / 250,
            1 + i % 250
        );
    }
    format!(
        "[admin]\naddress = \"{{ADMIN}}\"\n\n[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nalgorithm = \"{algorithm}\"\nhealth_check = {{ kind = \"none\" }}\nservers = [\n{servers}]\n"
    )
}

async fn state(lb: &OpsLb, query: &str) -> Value {
    let (s, body) = lb.api("GET", &format!("/api/state{query}"), &[], "").await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_servers_are_paged_scraped_small_and_changed_one_at_a_time() {
    let lb = OpsLb::start(&config(10_000, "least-connections"), &[]).await;

    // /api/state: the first 1,000 servers, the totals over all 10,000.
    let st = state(&lb, "").await;
    let p = &st["pools"][0];
    assert_eq!(p["servers_total"], 10_000);
    assert_eq!(p["servers_eligible"], 10_000);
    assert_eq!(p["servers"].as_array().unwrap().len(), 1_000);
    assert_eq!(p["servers"][0]["name"], "s0");
    let st = state(&lb, "?offset=9500&limit=1000").await;
    let page = st["pools"][0]["servers"].as_array().unwrap();
    assert_eq!(page.len(), 500);
    assert_eq!(page[0]["name"], "s9500");
    assert_eq!(st["pools"][0]["servers_offset"], 9_500);

    // /metrics: healthy servers of a big pool are in the pool's series only.
    let (s, m) = lb.api("GET", "/metrics", &[], "").await;
    assert_eq!(s, 200);
    assert!(
        m.contains("rampart_pool_servers{pool=\"app\"} 10000"),
        "{m}"
    );
    assert!(!m.contains("server=\"s5\""));
    assert!(
        m.len() < 64 * 1024,
        "a scrape of 10,000 healthy servers is {} bytes",
        m.len()
    );

    // One server drained and one re-weighted: each shows where it matters.
    let json = [("Content-Type", "application/json")];
    let (s, body) = lb
        .api(
            "POST",
            "/api/pools/app/servers/s5/state",
            &json,
            r#"{"state":"drain"}"#,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = lb
        .api(
            "POST",
            "/api/pools/app/servers/s7777/weight",
            &json,
            r#"{"weight":0}"#,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let st = state(&lb, "?offset=5&limit=1").await;
    assert_eq!(st["pools"][0]["servers_eligible"], 9_998);
    assert_eq!(st["pools"][0]["servers"][0]["state"], "drain");
    assert_eq!(st["pools"][0]["servers"][0]["eligible"], false);
    let (_, m) = lb.api("GET", "/metrics", &[], "").await;
    assert!(
        m.contains("rampart_server_state{pool=\"app\",server=\"s5\",state=\"drain\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rampart_server_weight{pool=\"app\",server=\"s7777\"} 0"),
        "{m}"
    );
    assert!(!m.contains("server=\"s6\""));
}
