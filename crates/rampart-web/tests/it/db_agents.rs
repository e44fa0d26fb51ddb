//! The guestbook on a real `rampart db` cluster (etcd + two agents, each owning a
//! PostgreSQL), topology learned from the agents' `/cluster`, across a failover.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_testkit::etcd::Etcd;
use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, Proc};
use serde_json::Value;

use crate::common::{get, request};

const PASSWORD: &str = "secret";

struct DbNode {
    name: String,
    api: SocketAddr,
    agent: Option<Proc>,
}

fn cluster_json(api: SocketAddr) -> Option<Value> {
    let r = http_get(api, "/cluster").ok()?;
    serde_json::from_slice(&r.body).ok()
}

fn role_of(doc: &Value, name: &str) -> Option<String> {
    doc["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["role"].as_str().map(str::to_string))
}

fn post(addr: SocketAddr, text: &str) -> Option<(i64, String, String)> {
    let body = serde_json::json!({ "author": "dbit", "text": text }).to_string();
    let r = request(
        addr,
        "POST",
        "/api/messages",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    if r.status != 201 {
        return None;
    }
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    Some((
        v["id"].as_i64()?,
        r.header("x-rampart-token")?.to_string(),
        r.header("x-db-node")?.to_string(),
    ))
}

#[test]
fn guestbook_on_rampart_db_survives_a_failover() {
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("rampart-web-db-")
        .tempdir()
        .expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let mut nodes: Vec<DbNode> = (1..=2)
        .map(|i| DbNode {
            name: format!("db{i}"),
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            agent: None,
        })
        .collect();
    let mut toml = format!(
        "[cluster]\nname = \"webit\"\netcd = [\"{}\"]\n\n[db]\ndata_dir = \"{}\"\nsynchronous = false\n\
         superuser_password = \"{PASSWORD}\"\nreplication_password = \"{PASSWORD}\"\n",
        etcd.client_url(0),
        dir.path().join("data").display()
    );
    for n in &nodes {
        toml.push_str(&format!(
            "\n[[db.nodes]]\nname = \"{}\"\nport = {}\napi = \"{}\"\n",
            n.name,
            free_port(),
            n.api
        ));
    }
    let config = dir.path().join("topology.toml");
    std::fs::write(&config, toml).expect("topology");
    for n in &mut nodes {
        let mut c = Command::new(rampart_bin());
        c.args(["db", "--config"])
            .arg(&config)
            .args(["--node", &n.name])
            .env("RUST_LOG", "info");
        n.agent = Some(Proc::spawn(
            &n.name,
            c,
            &dir.path().join(format!("{}.log", n.name)),
        ));
    }
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    let settled = || -> Option<(String, String)> {
        let doc = apis.iter().find_map(|a| cluster_json(*a))?;
        let p = nodes
            .iter()
            .find(|n| role_of(&doc, &n.name).as_deref() == Some("primary"))?;
        let r = nodes
            .iter()
            .find(|n| role_of(&doc, &n.name).as_deref() == Some("replica"))?;
        Some((p.name.clone(), r.name.clone()))
    };
    assert!(
        wait_until(Duration::from_secs(90), || settled().is_some()),
        "the db cluster never settled"
    );
    let (primary, replica) = settled().expect("roles");

    let mut args = vec![
        "--root".to_string(),
        dir.path().to_str().expect("utf8").to_string(),
    ];
    for a in &apis {
        args.push("--db-agent".into());
        args.push(format!("http://{a}"));
    }
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = Command::new(rampart_bin());
    c.arg("web")
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--name", "web-db", "--threads", "2"])
        .args(&args);
    c.env("PGPASSWORD", PASSWORD).env("RUST_LOG", "info");
    let web = Proc::spawn("web-db", c, &dir.path().join("web.log"));
    assert!(
        wait_until(Duration::from_secs(30), || http_get(addr, "/readyz")
            .is_ok_and(|r| r.status == 200)),
        "web never ready:\n{}",
        web.log_text()
    );

    // Read-your-writes through the agents' view.
    for i in 0..100 {
        let (id, token, node) = post(addr, &format!("before {i}")).expect("post");
        assert_eq!(node, primary);
        let g = get(
            addr,
            &format!("/api/messages/{id}"),
            &[("X-Rampart-Token", &token)],
        );
        assert_eq!(
            g.status,
            200,
            "write {id} not visible on {:?}",
            g.header("x-db-node")
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            get(addr, "/api/messages?limit=1", &[]).header("x-db-node") == Some(replica.as_str())
        }),
        "token-less reads never reached the replica"
    );

    // Kill the primary (agent, watchdog and PostgreSQL): writes come back on the other node.
    let pi = nodes
        .iter()
        .position(|n| n.name == primary)
        .expect("primary index");
    if let Some(mut p) = nodes[pi].agent.take() {
        p.kill();
    }
    let killed = Instant::now();
    let mut back = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            back = post(addr, "after failover");
            back.is_some()
        }),
        "writes never resumed:\n{}",
        web.log_text()
    );
    let (id, token, node) = back.expect("post");
    eprintln!(
        "writes resumed on {node} {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        node, replica,
        "the write went elsewhere than the promoted replica"
    );
    let g = get(
        addr,
        &format!("/api/messages/{id}"),
        &[("X-Rampart-Token", &token)],
    );
    assert_eq!(g.status, 200);
    let l: Value = serde_json::from_slice(
        &get(
            addr,
            "/api/messages?limit=1",
            &[("X-Rampart-Token", &token)],
        )
        .body,
    )
    .expect("json");
    assert_eq!(
        l[0]["id"], id,
        "the newest message is the one written after the failover"
    );
}
