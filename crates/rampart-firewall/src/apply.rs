//! Running `nft`: apply a ruleset, remove it, read what is loaded.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::render::{render, render_remove, TABLE};
use crate::ruleset::Ruleset;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft not found: install Debian's nftables package (apt-get install nftables)")]
    NoNft,
    #[error("run nft: {0}")]
    Run(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

fn nft() -> Result<PathBuf, FirewallError> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| PathBuf::from(d).join("nft"))
        .find(|p| p.is_file());
    found.ok_or(FirewallError::NoNft)
}

fn run_script(script: &str) -> Result<(), FirewallError> {
    let mut child = Command::new(nft()?)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Run)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(FirewallError::Run)?;
    }
    let out = child.wait_with_output().map_err(FirewallError::Run)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Replace the `inet rampart` table with this ruleset (atomic, idempotent).
pub fn apply(r: &Ruleset) -> Result<(), FirewallError> {
    run_script(&render(r))
}

/// Remove the `inet rampart` table (nothing else); fine when it is absent.
pub fn remove() -> Result<(), FirewallError> {
    run_script(&render_remove())
}

/// The loaded table as `nft list` prints it, or None when absent.
pub fn loaded() -> Result<Option<String>, FirewallError> {
    let (family, name) = TABLE.split_once(' ').unwrap_or(("inet", "rampart"));
    let out = Command::new(nft()?)
        .args(["list", "table", family, name])
        .output()
        .map_err(FirewallError::Run)?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}
