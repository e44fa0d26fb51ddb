//! Each validation rule that spans sections (and a sample of each section's own),
//! with the file:line:col it reports.

use crate::{pos, replace_once, Dir};

/// The diagnostics of `text`, which must be invalid.
fn errors(d: &Dir, text: &str) -> Vec<(usize, usize, String)> {
    let e = d.validate(text).expect_err("must be invalid");
    let file = d.file();
    for x in &e.diagnostics {
        assert_eq!(x.file, file);
    }
    // The rendered form names file:line:col.
    assert!(
        e.to_string().contains(&format!("{}:", file.display())),
        "{e}"
    );
    e.diagnostics
        .iter()
        .map(|x| (x.line, x.col, x.message.clone()))
        .collect()
}

fn one(d: &Dir, text: &str) -> (usize, usize, String) {
    let e = errors(d, text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn the_default_topology_is_valid() {
    let d = Dir::new();
    d.validate(&d.default_text())
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn duplicate_name_across_roles() {
    let d = Dir::new();
    let text = replace_once(&d.default_text(), "\nname = \"db3\"", "\nname = \"etcd1\"");
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"etcd1\"", 1), "{m}");
    assert!(
        m.contains("db node name \"etcd1\" is already used by the etcd member at"),
        "{m}"
    );
}

#[test]
fn duplicate_port_across_roles() {
    let d = Dir::new();
    // The monitor on the api port of db1.
    let text = replace_once(
        &d.default_text(),
        "listen = \"127.0.0.1:8090\"",
        "listen = \"127.0.0.1:8201\"",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"127.0.0.1:8201\"", 1), "{m}");
    assert!(
        m.contains("monitor wants 127.0.0.1:8201, already used by db node db1 (api)"),
        "{m}"
    );
}

#[test]
fn wildcard_address_clashes_with_any_host_on_the_same_port() {
    let d = Dir::new();
    let text = replace_once(
        &d.default_text(),
        "listen = \"127.0.0.1:8090\"",
        "listen = \"0.0.0.0:8103\"",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"0.0.0.0:8103\"", 0), "{m}");
    assert!(
        m.contains("monitor wants 0.0.0.0:8103, already used by web node web3"),
        "{m}"
    );
}

#[test]
fn pool_naming_an_unknown_server() {
    let d = Dir::new();
    let text = replace_once(&d.default_text(), "{ name = \"web3\"", "{ name = \"web4\"");
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"web4\"", 0), "{m}");
    assert!(
        m.contains("pool \"web\" names unknown server \"web4\""),
        "{m}"
    );
    assert!(m.contains("web1, web2, web3"), "{m}");
}

#[test]
fn pool_server_at_another_address_than_its_node() {
    let d = Dir::new();
    let text = replace_once(
        &d.default_text(),
        "{ name = \"web2\", address = \"127.0.0.1:8102\" }",
        "{ name = \"web2\", address = \"127.0.0.1:8109\" }",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"127.0.0.1:8109\"", 0), "{m}");
    assert!(
        m.contains("server \"web2\" is at 127.0.0.1:8102 in the topology"),
        "{m}"
    );
}

#[test]
fn synchronous_mode_with_no_replica() {
    let d = Dir::new();
    let text = String::from(
        "[cluster]\nname = \"m\"\netcd = [\"http://127.0.0.1:2379\"]\n[db]\ndata_dir = \"/tmp/x\"\nsynchronous = true\n\
         [[db.nodes]]\nname = \"db1\"\nport = 5433\napi = \"127.0.0.1:8008\"\n"
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), (6, 15), "{m}");
    assert!(
        m.contains("synchronous replication needs at least one replica"),
        "{m}"
    );
    // Without the explicit flag one node is allowed (the audit reports the missing replica).
    let text = text.replace("synchronous = true\n", "");
    d.validate(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn etcd_endpoint_not_served_by_a_member() {
    let d = Dir::new();
    let text = replace_once(
        &d.default_text(),
        "\"http://127.0.0.1:8405\"]",
        "\"http://127.0.0.1:2379\"]",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"http://127.0.0.1:2379\"", 0), "{m}");
    assert!(
        m.contains("not the client address of any [[etcd.members]]"),
        "{m}"
    );
}

#[test]
fn db_agent_that_is_no_db_node() {
    let d = Dir::new();
    let text = replace_once(
        &d.default_text(),
        "\"http://127.0.0.1:8203\"",
        "\"http://127.0.0.1:8209\"",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"http://127.0.0.1:8209\"", 0), "{m}");
    assert!(
        m.contains("db agent \"http://127.0.0.1:8209\" is not the api of any [[db.nodes]]"),
        "{m}"
    );
}

#[test]
fn etcd_timings_and_addresses() {
    let d = Dir::new();
    let text = replace_once(&d.default_text(), "election_ms = 500", "election_ms = 100");
    let text = replace_once(
        &text,
        "peer = \"127.0.0.1:8404\"",
        "peer = \"localhost:8404\"",
    );
    let e = errors(&d, &text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), pos(&text, "100", 0));
    assert!(e[0].2.contains("at least 5 x heartbeat_ms"), "{e:#?}");
    assert_eq!((e[1].0, e[1].1), pos(&text, "\"localhost:8404\"", 0));
}

#[test]
fn lb_section_errors_come_from_the_lb_model_with_positions() {
    let d = Dir::new();
    let text = replace_once(
        &d.default_text(),
        "pool = \"web\"\n\n[[lb.pool]]",
        "pool = \"webs\"\n\n[[lb.pool]]",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"webs\"", 0), "{m}");
    assert!(
        m.contains("unknown pool \"webs\"; defined pools: web"),
        "{m}"
    );
    let text = replace_once(
        &d.default_text(),
        "address = \"127.0.0.1:8092\"",
        "address = \"8092\"",
    );
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "\"8092\"", 0), "{m}");
    assert!(m.contains("lb node address"), "{m}");
}

#[test]
fn monitor_tls_and_firewall_errors() {
    let d = Dir::new();
    let text = replace_once(&d.default_text(), "kind = \"log\"", "kind = \"pager\"");
    let text = replace_once(&text, "self_signed = true ", "cert = \"/etc/site.pem\" ");
    let text = replace_once(
        &text,
        "from = \"0.0.0.0/0\" },\n  {",
        "from = \"0.0.0.0/40\" },\n  {",
    );
    let e = errors(&d, &text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), pos(&text, "\"pager\"", 0));
    assert!(e[0].2.contains("unknown alert route kind"));
    assert_eq!((e[1].0, e[1].1), pos(&text, "\"/etc/site.pem\"", 0));
    assert!(e[1].2.contains("cert needs key"));
    assert_eq!((e[2].0, e[2].1), pos(&text, "\"0.0.0.0/40\"", 0));
}

#[test]
fn unknown_field_is_reported_at_its_position() {
    let d = Dir::new();
    let text = replace_once(&d.default_text(), "heartbeat_ms = 50", "heartbeat = 50");
    let (l, c, m) = one(&d, &text);
    assert_eq!((l, c), pos(&text, "heartbeat = 50", 0), "{m}");
    assert!(m.contains("unknown field `heartbeat`"), "{m}");
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let d = Dir::new();
    let text = replace_once(&d.default_text(), "\nname = \"web2\"", "\nname = \"lb1\"");
    let text = replace_once(&text, "{ name = \"web3\"", "{ name = \"web9\"");
    let text = replace_once(&text, "port = 8302", "port = 8301");
    let e = errors(&d, &text);
    assert!(e.len() >= 3, "{e:#?}");
    let msgs: Vec<&str> = e.iter().map(|x| x.2.as_str()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("used by two nodes")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("unknown server \"web9\"")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("lb node name \"lb1\" is already used by the web node")),
        "{msgs:#?}"
    );
}
