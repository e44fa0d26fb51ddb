//! Hosts in network namespaces for multi-host tests: a switch namespace holding a bridge,
//! and one namespace per host wired to it by a veth pair (`eth0` inside the host).
//! Everything a [`Lab`] makes is removed when it is dropped, also when the test panics
//! (deleting a namespace deletes its interfaces; processes started in one are the
//! caller's [`crate::Proc`]s, killed on their own drop).
//!
//! Code in the test process reaches a host through [`Lab::run_in`]: a thread that joins
//! the host's namespace (`setns` affects that thread only), so sockets it opens belong to
//! the host. Child processes are started with [`Lab::command`] (`ip netns exec`).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of namespaced hosts on one bridge.
pub struct Lab {
    prefix: String,
    switch: String,
    hosts: Vec<String>,
    ports: u32,
}

/// Whether namespaces can be made here (root, iproute2).
pub fn available() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("the ip command (iproute2) is missing".into()),
    }
}

/// Run `ip ARGS`, panicking with its error output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command inside namespace `ns`, returning whether it succeeded.
pub fn exec_ok(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Lab {
    /// A new lab; `tag` (a few letters) goes into the namespace names with this
    /// process's id, so parallel tests and leftovers of killed runs never collide.
    pub fn new(tag: &str) -> Lab {
        available().unwrap_or_else(|e| panic!("{e}"));
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("rt{}{}{n}", tag, std::process::id());
        let switch = format!("{prefix}-sw");
        let lab = Lab {
            prefix,
            switch: switch.clone(),
            hosts: Vec::new(),
            ports: 0,
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        // Forward at once (no STP learning delay) and flood everything.
        ip(&[
            "-n",
            &switch,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        lab
    }

    /// The namespace name of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Add host `name` with `addr` (e.g. "10.77.0.11/24") on its `eth0`, wired to the bridge.
    /// Returns the namespace's name.
    pub fn host(&mut self, name: &str, addr: &str) -> String {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        self.ports += 1;
        let port = format!("p{}", self.ports);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        // No duplicate address detection on the lab's link (every address is ours to
        // give): IPv6 addresses, the link-local one included, are usable at once instead
        // of a second later.
        exec_ok(
            &ns,
            &[
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad",
            ],
        );
        ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ns
    }

    /// The bridge port of host `name` (in the switch namespace), for cutting its link
    /// from the outside.
    pub fn port_of(&self, name: &str) -> String {
        let ns = self.ns(name);
        let i = self
            .hosts
            .iter()
            .position(|h| *h == ns)
            .unwrap_or_else(|| panic!("no host {name}"));
        format!("p{}", i + 1)
    }

    /// Take host `name`'s link down (`up = false`) or up again, from the switch side:
    /// the host sees its carrier go, as when a cable is pulled.
    pub fn set_link(&self, name: &str, up: bool) {
        let port = self.port_of(name);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }

    /// `ip netns exec NS PROGRAM`: a command to start inside host `name`.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(name)]).arg(program);
        c
    }

    /// Run `f` on a thread inside host `name`'s namespace.
    pub fn run_in<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(name));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Join the network namespace at `path` (this thread only).
pub fn enter(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
