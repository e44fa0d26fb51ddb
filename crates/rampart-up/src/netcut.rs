//! A real network cut of one node of a local stack: nftables rules keyed on the node's
//! cgroup (see [`crate::cgroup`]), no network namespace needed.
//!
//! Every node talks over loopback, so ports alone cannot tell a node's own traffic (its
//! agent and its PostgreSQL) from the rest. The cut asks the kernel whose sockets are at
//! both ends instead:
//!
//! - `output` (sender side): a packet sent by a socket of the node's cgroup gets a mark bit;
//! - `input` (receiver side, after loopback): the receiving socket is known (early demux,
//!   or the socket lookup of nftables' `socket` expression). A marked packet whose
//!   receiver is outside the node, or an unmarked one whose receiver is inside, is
//!   dropped: node -> others and others -> node, established connections included (a
//!   drop, like a real partition: senders retransmit into the void until they time out).
//!
//! A SYN-ACK is sent by a request socket, which has no cgroup: it is never marked, so the
//! second rule lets SYN-ACKs through (the SYN that would start a connection across the
//! cut was already dropped). The node's traffic with itself flows on.
//!
//! The rules live in one table per stack (`inet rampart_chaos_<cluster>_<up pid>`);
//! healing deletes the table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cgroup::sanitize;
use crate::UpError;

/// The mark bit of packets sent by the cut node (set and read only by the cut's table).
pub const MARK: u32 = 0x0040_0000;

/// Where nftables resolves the cgroup paths of `socket cgroupv2` (its compiled-in
/// `/sys/fs/cgroup`, whatever the cgroup2 mount point is).
pub const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The table of a stack's partition drills.
pub fn table_name(cluster: &str, up_pid: u32) -> String {
    format!("{}{up_pid}", table_prefix(cluster))
}

fn table_prefix(cluster: &str) -> String {
    format!("rampart_chaos_{}_", sanitize(cluster))
}

/// What nftables needs to name a node's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRef {
    /// Path relative to [`NFT_CGROUP_ROOT`], e.g. `unified/rampart-main-42/db1`.
    pub nft_path: String,
    /// Depth below the cgroup2 root (`rampart-main-42/db1`: 2).
    pub level: usize,
}

/// How nftables names `dir`, a cgroup below the cgroup2 mount `mount` (pure).
pub fn cgroup_ref(mount: &Path, dir: &Path) -> Result<CgroupRef, String> {
    let level = dir
        .strip_prefix(mount)
        .map_err(|_| format!("{} is not below {}", dir.display(), mount.display()))?
        .components()
        .count();
    let rel = dir.strip_prefix(NFT_CGROUP_ROOT).map_err(|_| {
        format!(
            "nftables names cgroups below {NFT_CGROUP_ROOT}, and cgroup2 is mounted at {}",
            mount.display()
        )
    })?;
    let nft_path = rel.display().to_string();
    if level == 0 || nft_path.contains('"') {
        return Err(format!("cannot name cgroup {} to nftables", dir.display()));
    }
    Ok(CgroupRef { nft_path, level })
}

/// The nftables script that cuts the node whose cgroup is `cg` off (pure).
pub fn ruleset(table: &str, node: &str, cg: &CgroupRef) -> String {
    let sock = format!("socket cgroupv2 level {} \"{}\"", cg.level, cg.nft_path);
    let not_sock = format!("socket cgroupv2 level {} != \"{}\"", cg.level, cg.nft_path);
    let m = format!("0x{MARK:08x}");
    format!(
        "table inet {table} {{\n\
         \x20 comment \"rampart chaos partition: {node} cut off (rampart chaos heal removes it)\"\n\
         \x20 chain sent {{\n\
         \x20   type filter hook output priority -150; policy accept;\n\
         \x20   {sock} meta mark set meta mark | {m}\n\
         \x20 }}\n\
         \x20 chain received {{\n\
         \x20   type filter hook input priority -150; policy accept;\n\
         \x20   meta mark & {m} == {m} {not_sock} drop\n\
         \x20   meta mark & {m} == 0 meta l4proto != tcp {sock} drop\n\
         \x20   meta mark & {m} == 0 tcp flags & (syn | ack) != syn | ack {sock} drop\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The `nft` program, on PATH or where Debian puts it.
pub fn find_nft() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join("nft"))
        .find(|p| p.is_file());
    found
}

pub fn nft_missing() -> UpError {
    UpError::Missing {
        program: "nft (nftables)".into(),
        hint: "a partition drill cuts the node with nftables: install Debian's nftables package (apt-get install nftables)".into(),
    }
}

fn nft(nft: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", nft.display()))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("run {}: {e}", nft.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// An active cut: healed by [`Cut::heal`], or when dropped.
#[derive(Debug)]
pub struct Cut {
    nft: PathBuf,
    table: String,
    active: bool,
}

impl Cut {
    /// Add the table: from now on the node is cut off.
    pub fn apply(nft_bin: &Path, table: &str, node: &str, cg: &CgroupRef) -> Result<Cut, UpError> {
        let script = ruleset(table, node, cg);
        // What a killed drill left of this stack's table goes first (rules not doubled).
        let _ = delete_table(nft_bin, table);
        nft(nft_bin, &["-f", "-"], Some(&script)).map_err(|e| {
            let hint = if e.contains("Operation not permitted") {
                " (nftables needs root: CAP_NET_ADMIN)"
            } else {
                ""
            };
            UpError::Drill(format!("cut {node} off with nftables{hint}: {e}"))
        })?;
        Ok(Cut {
            nft: nft_bin.to_path_buf(),
            table: table.to_string(),
            active: true,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Delete the table: the node is back on the network.
    pub fn heal(&mut self) -> Result<(), UpError> {
        if !self.active {
            return Ok(());
        }
        delete_table(&self.nft, &self.table).map_err(UpError::Drill)?;
        self.active = false;
        Ok(())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = delete_table(&self.nft, &self.table) {
                eprintln!(
                    "rampart chaos: could not heal ({e}); run: nft delete table inet {}",
                    self.table
                );
            }
        }
    }
}

/// Delete one table; `Ok(false)` when it did not exist.
pub fn delete_table(nft_bin: &Path, table: &str) -> Result<bool, String> {
    match nft(nft_bin, &["delete", "table", "inet", table], None) {
        Ok(_) => Ok(true),
        Err(e) if e.contains("No such file or directory") => Ok(false),
        Err(e) => Err(format!("nft delete table inet {table}: {e}")),
    }
}

/// The partition tables of a cluster's stacks present now.
pub fn tables_of(nft_bin: &Path, cluster: &str) -> Result<Vec<String>, String> {
    let prefix = table_prefix(cluster);
    let out = nft(nft_bin, &["list", "tables", "inet"], None)?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| t.starts_with(&prefix))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_named_below_sys_fs_cgroup_with_its_depth_below_the_mount() {
        let r = cgroup_ref(
            Path::new("/sys/fs/cgroup/unified"),
            Path::new("/sys/fs/cgroup/unified/rampart-main-42/db1"),
        )
        .unwrap();
        assert_eq!(
            r,
            CgroupRef {
                nft_path: "unified/rampart-main-42/db1".into(),
                level: 2
            }
        );
        let pure = cgroup_ref(
            Path::new("/sys/fs/cgroup"),
            Path::new("/sys/fs/cgroup/rampart-main-42/web1"),
        )
        .unwrap();
        assert_eq!(pure.nft_path, "rampart-main-42/web1");
        assert_eq!(pure.level, 2);
        let elsewhere = cgroup_ref(
            Path::new("/mnt/cg2"),
            Path::new("/mnt/cg2/rampart-main-42/web1"),
        );
        assert!(elsewhere.unwrap_err().contains("mounted at /mnt/cg2"));
    }

    #[test]
    fn the_ruleset_marks_what_the_node_sends_and_drops_what_crosses_the_cut() {
        let cg = CgroupRef {
            nft_path: "unified/rampart-main-42/db1".into(),
            level: 2,
        };
        let s = ruleset(&table_name("main", 42), "db1", &cg);
        assert!(s.starts_with("table inet rampart_chaos_main_42 {"), "{s}");
        let sock = "socket cgroupv2 level 2 \"unified/rampart-main-42/db1\"";
        assert!(s.contains(&format!(
            "hook output priority -150; policy accept;\n    {sock} meta mark set meta mark | 0x00400000"
        )), "{s}");
        assert!(s.contains(
            "meta mark & 0x00400000 == 0x00400000 socket cgroupv2 level 2 != \"unified/rampart-main-42/db1\" drop"
        ), "{s}");
        assert!(
            s.contains(&format!(
                "meta mark & 0x00400000 == 0 tcp flags & (syn | ack) != syn | ack {sock} drop"
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "meta mark & 0x00400000 == 0 meta l4proto != tcp {sock} drop"
            )),
            "{s}"
        );
        // Nothing else is dropped.
        assert_eq!(s.matches(" drop").count(), 3);
    }

    #[test]
    fn table_names_are_per_cluster_and_supervisor() {
        assert_eq!(table_name("main", 7), "rampart_chaos_main_7");
        assert_eq!(table_name("a-b", 7), "rampart_chaos_a_b_7");
    }
}
