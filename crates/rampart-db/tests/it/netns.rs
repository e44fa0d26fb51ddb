//! A network namespace for one db node, to cut it off with nftables (a real partition).
//!
//! Two veth pairs join the namespace to the host:
//! - the *cluster* link (`10.213.K.1` host side, `10.213.K.2` in the namespace): etcd, the
//!   other nodes and their PostgreSQL listen on `10.213.K.1`; the node in the namespace
//!   uses `10.213.K.2`. This is the link the test cuts.
//! - the *management* link (`10.214.K.1` / `10.214.K.2`), never cut, through which the
//!   test keeps watching the cut node's PostgreSQL (an out-of-band monitoring network).
//!   No route leads from the namespace to the cluster addresses over it.
//!
//! The cut is an nftables table created *inside* the namespace that drops everything in
//! and out of the cluster link; [`Netns::heal`] deletes it, and dropping the [`Netns`]
//! deletes the table, the namespace and both veth pairs, also when the test panics.

use std::process::{Command, Stdio};

pub struct Netns {
    pub name: String,
    /// Host side of the cluster link (etcd and the other nodes listen here).
    pub host_ip: String,
    /// The namespaced node's address on the cluster link.
    pub ns_ip: String,
    /// The namespaced node's address on the management link (never cut).
    pub mgmt_ip: String,
    cluster_veth: String,
    mgmt_veth: String,
    cut: bool,
}

const TABLE: &str = "rampart_it_partition";

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Netns {
    /// Create the namespace and both links. Needs root (CAP_NET_ADMIN).
    pub fn create() -> Netns {
        let pid = std::process::id();
        // A /24 index unused on this host (another test process may hold one).
        let used = Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let k = (0..250u32)
            .map(|i| (pid + i) % 250 + 1)
            .find(|k| {
                !used.contains(&format!("10.213.{k}.")) && !used.contains(&format!("10.214.{k}."))
            })
            .expect("a free 10.213.K.0/24");
        let n = Netns {
            name: format!("rdbit{pid}"),
            host_ip: format!("10.213.{k}.1"),
            ns_ip: format!("10.213.{k}.2"),
            mgmt_ip: format!("10.214.{k}.2"),
            cluster_veth: format!("rdbc{pid}"),
            mgmt_veth: format!("rdbm{pid}"),
            cut: false,
        };
        // Leftovers of an earlier run of this pid (unlikely): remove quietly.
        let _ = run(&["ip", "netns", "del", &n.name]);
        let steps: Vec<Vec<String>> = vec![
            vec!["ip", "netns", "add", &n.name],
            vec![
                "ip", "netns", "exec", &n.name, "ip", "link", "set", "lo", "up",
            ],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        let mut all = steps;
        for (veth, net) in [(&n.cluster_veth, "10.213"), (&n.mgmt_veth, "10.214")] {
            let host = format!("{veth}h");
            let inner = format!("{veth}n");
            for v in [
                vec![
                    "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
                ],
                vec!["ip", "link", "set", &inner, "netns", &n.name],
                vec![
                    "ip",
                    "addr",
                    "add",
                    &format!("{net}.{k}.1/24"),
                    "dev",
                    &host,
                ],
                vec!["ip", "link", "set", &host, "up"],
                vec![
                    "ip",
                    "netns",
                    "exec",
                    &n.name,
                    "ip",
                    "addr",
                    "add",
                    &format!("{net}.{k}.2/24"),
                    "dev",
                    &inner,
                ],
                vec![
                    "ip", "netns", "exec", &n.name, "ip", "link", "set", &inner, "up",
                ],
            ] {
                all.push(v.into_iter().map(String::from).collect());
            }
        }
        for step in &all {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = run(&args) {
                drop(n);
                panic!("cannot set up the network namespace (needs root): {e}");
            }
        }
        n
    }

    /// `ip netns exec <ns> <program>`: a command that runs inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Drop every packet in and out of the namespace's cluster link.
    pub fn cut(&mut self) {
        let rules = format!(
            "table inet {TABLE} {{\n\
               chain input {{ type filter hook input priority -10; policy accept; iifname \"{v}n\" drop; }}\n\
               chain output {{ type filter hook output priority -10; policy accept; oifname \"{v}n\" drop; }}\n\
             }}\n",
            v = self.cluster_veth
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("nft stdin");
            stdin.write_all(rules.as_bytes()).expect("write nft rules");
        }
        assert!(
            child.wait().is_ok_and(|s| s.success()),
            "nft refused the partition rules"
        );
        self.cut = true;
    }

    /// Remove the partition.
    pub fn heal(&mut self) {
        if self.cut {
            run(&[
                "ip", "netns", "exec", &self.name, "nft", "delete", "table", "inet", TABLE,
            ])
            .expect("delete the partition table");
            self.cut = false;
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.cut {
            let _ = run(&[
                "ip", "netns", "exec", &self.name, "nft", "delete", "table", "inet", TABLE,
            ]);
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
        // Deleting the namespace destroys the veth pairs, asynchronously: make sure.
        for v in [&self.cluster_veth, &self.mgmt_veth] {
            let _ = run(&["ip", "link", "del", &format!("{v}h")]);
        }
    }
}
