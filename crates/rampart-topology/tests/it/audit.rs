//! `rampart audit`'s review: the default topology passes, the seed's original design
//! reports every weak point the seed names, and the kin of those weak points.

use std::path::Path;

use rampart_topology::audit::{audit, has_errors, Finding, Severity};
use rampart_topology::{Source, Topology};

use crate::{replace_once, Dir};

fn seed_text() -> String {
    std::fs::read_to_string(fixtures().join("seed.toml")).unwrap()
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn seed(text: &str) -> Topology {
    Topology::from_source(&Source::new(fixtures().join("seed.toml"), text))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn codes(f: &[Finding], s: Severity) -> Vec<&'static str> {
    f.iter()
        .filter(|x| x.severity == s)
        .map(|x| x.code)
        .collect()
}

#[test]
fn the_default_topology_has_no_error_and_no_warning() {
    let d = Dir::new();
    let t = d.validate(&d.default_text()).unwrap();
    let f = audit(&t);
    assert!(!has_errors(&f), "{f:#?}");
    assert!(codes(&f, Severity::Warning).is_empty(), "{f:#?}");
    // Honest about what one machine cannot survive.
    assert_eq!(codes(&f, Severity::Info), vec!["one-machine"], "{f:#?}");
}

#[test]
fn the_seed_design_reports_each_weak_point_the_seed_names() {
    let f = audit(&seed(&seed_text()));
    assert!(has_errors(&f));
    let errors = codes(&f, Severity::Error);
    // The seed's own list: SPOF load balancer, SPOF primary (no automatic failover),
    // no firewall, no HTTPS, no monitoring.
    for code in [
        "spof-lb",
        "no-failover",
        "no-firewall",
        "no-https",
        "no-monitoring",
    ] {
        assert!(errors.contains(&code), "{code} missing from {f:#?}");
    }
    // And their kin in this design.
    assert!(errors.contains(&"spof-etcd"), "{f:#?}");
    assert!(
        codes(&f, Severity::Warning).contains(&"async-replication"),
        "{f:#?}"
    );
    for x in &f {
        assert!(!x.message.is_empty() && !x.fix.is_empty(), "{x:?}");
    }
    // Errors first.
    assert!(
        f.windows(2).all(|w| w[0].severity >= w[1].severity),
        "{f:#?}"
    );
}

#[test]
fn fixing_the_seed_one_point_at_a_time_clears_its_finding() {
    let text = replace_once(&seed_text(), "nofailover = true ", "nofailover = false");
    let f = audit(&seed(&text));
    assert!(
        !codes(&f, Severity::Error).contains(&"no-failover"),
        "{f:#?}"
    );
    let text = format!("{}\n[monitor]\nlisten = \"127.0.0.1:9090\"\n", seed_text());
    let f = audit(&seed(&text));
    assert!(
        !codes(&f, Severity::Error).contains(&"no-monitoring"),
        "{f:#?}"
    );
    assert!(
        codes(&f, Severity::Warning).contains(&"no-alert-routes"),
        "{f:#?}"
    );
}

#[test]
fn tls_without_an_https_listener_or_without_the_redirect_is_a_warning() {
    // [tls] on the seed, whose one listener is plain: HTTPS is still not served.
    let text = format!("{}\n[tls]\nself_signed = true\n", seed_text());
    let f = audit(&seed(&text));
    assert!(!codes(&f, Severity::Error).contains(&"no-https"), "{f:#?}");
    assert!(
        codes(&f, Severity::Warning).contains(&"https-not-served"),
        "{f:#?}"
    );
    // The default topology with redirect_http = false: the plain site serves.
    let d = Dir::new();
    let text = replace_once(
        &d.default_text(),
        "redirect_http = true    #",
        "redirect_http = false   #",
    );
    let t = d.validate(&text).unwrap();
    let site =
        t.lb.as_ref()
            .unwrap()
            .config
            .listeners
            .iter()
            .find(|l| l.name == "site");
    assert_eq!(site.unwrap().redirect_https, None);
    assert_eq!(
        codes(&audit(&t), Severity::Warning),
        vec!["http-not-redirected"]
    );
}

#[test]
fn the_seed_on_real_hosts_exposes_admin_endpoints_and_plain_replication() {
    let text = seed_text()
        .replace(
            "port = 5432\napi = \"127.0.0.1:8008\"",
            "host = \"10.0.0.5\"\nport = 5432\napi = \"10.0.0.5:8008\"",
        )
        .replace(
            "port = 5433\napi = \"127.0.0.1:8009\"",
            "host = \"10.0.0.6\"\nport = 5433\napi = \"10.0.0.6:8009\"",
        )
        .replace(
            "[\"http://127.0.0.1:8008\", \"http://127.0.0.1:8009\"]",
            "[\"http://10.0.0.5:8008\", \"http://10.0.0.6:8009\"]",
        );
    let f = audit(&seed(&text));
    let errors = codes(&f, Severity::Error);
    for code in ["admin-exposed", "db-exposed", "plain-replication"] {
        assert!(errors.contains(&code), "{code} missing from {f:#?}");
    }
    assert!(
        !codes(&f, Severity::Info).contains(&"one-machine"),
        "{f:#?}"
    );
    // A firewall that keeps the api and database ports to the private network fixes the exposure.
    let text = format!(
        "{text}\n[firewall]\npolicy = \"drop\"\nallow = [{{ port = 80, from = \"0.0.0.0/0\" }}, {{ port = 8008, from = \"10.0.0.0/8\" }}, {{ port = 5432, from = \"10.0.0.0/8\" }}, {{ port = 8009, from = \"10.0.0.0/8\" }}, {{ port = 5433, from = \"10.0.0.0/8\" }}]\n"
    );
    let f = audit(&seed(&text));
    let errors = codes(&f, Severity::Error);
    assert!(
        !errors.contains(&"admin-exposed")
            && !errors.contains(&"db-exposed")
            && !errors.contains(&"no-firewall"),
        "{f:#?}"
    );
}

#[test]
fn even_etcd_and_a_public_dashboard() {
    let d = Dir::new();
    let text = d.default_text();
    // Drop etcd3: two members.
    let text = replace_once(&text, ", \"http://127.0.0.1:8405\"]", "]");
    let text = replace_once(&text, "\n[[etcd.members]]\nname = \"etcd3\"\nclient = \"127.0.0.1:8405\"\npeer = \"127.0.0.1:8406\"\n", "\n");
    let text = replace_once(
        &text,
        "listen = \"127.0.0.1:8090\"",
        "listen = \"0.0.0.0:8090\"",
    );
    let text = replace_once(&text, "allow = [\"127.0.0.1/32\"]", "allow = []");
    let f = audit(&d.validate(&text).unwrap_or_else(|e| panic!("{e}")));
    assert!(
        codes(&f, Severity::Warning).contains(&"etcd-even"),
        "{f:#?}"
    );
    assert!(
        codes(&f, Severity::Error).contains(&"admin-exposed"),
        "{f:#?}"
    );
}
