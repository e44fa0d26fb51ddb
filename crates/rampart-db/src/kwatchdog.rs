//! The kernel watchdog (`/dev/watchdog`, e.g. softdog): Patroni's `watchdog.mode`.
//!
//! Opening the device arms it; every write is a keepalive; writing `V` before closing
//! disarms it (the "magic close", unless the driver was built `nowayout`). If nobody
//! writes for the device's timeout, the kernel resets the machine: the fence that holds
//! even when the whole agent, watchdog process included, is frozen or killed.
//!
//! Only writes and file reads: no ioctl (so no `unsafe`). The timeout is the driver's
//! (softdog: `modprobe softdog soft_margin=N`), read from sysfs and checked against the
//! lease before the device is opened: one that cannot fire before etcd can expire the
//! lease is refused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An open (armed) kernel watchdog.
pub struct KernelWatchdog {
    file: File,
    pub timeout: Duration,
    pub path: PathBuf,
}

/// The sysfs name of a watchdog device node: `/dev/watchdog` is `watchdog0`'s legacy
/// alias, `/dev/watchdogN` is `watchdogN`.
fn sysfs_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    match name {
        "watchdog" => Some("watchdog0".into()),
        n if n.starts_with("watchdog") && n[8..].chars().all(|c| c.is_ascii_digit()) => {
            Some(n.to_string())
        }
        _ => None,
    }
}

fn parse_timeout(text: &str) -> Option<Duration> {
    let s: u64 = text.trim().parse().ok()?;
    (s > 0).then(|| Duration::from_secs(s))
}

/// Is the device there, and how long is its timeout? An error says why it cannot be used.
pub fn probe(path: &Path) -> Result<Duration, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.file_type().is_char_device() {
        return Err(format!("{} is not a character device", path.display()));
    }
    let name = sysfs_name(path)
        .ok_or_else(|| format!("{}: not a watchdog device name", path.display()))?;
    let sys = format!("/sys/class/watchdog/{name}/timeout");
    let text = std::fs::read_to_string(&sys)
        .map_err(|e| format!("cannot read its timeout ({sys}): {e}"))?;
    parse_timeout(&text).ok_or_else(|| format!("unreadable timeout in {sys}: {:?}", text.trim()))
}

/// Whether a device with this timeout can fence in time (`max`: the timings' bound).
pub fn usable(path: &Path, max: Duration) -> Result<Duration, String> {
    let t = probe(path)?;
    if t > max {
        return Err(format!(
            "its timeout ({t:?}) is longer than the lease allows ({max:?}, ttl - retry_timeout - 0.5s): \
             it would fire after etcd can expire the lease (softdog: modprobe softdog soft_margin=N)"
        ));
    }
    Ok(t)
}

impl KernelWatchdog {
    /// Open (arm) the device after checking that its timeout is at most `max`.
    pub fn open(path: &Path, max: Duration) -> Result<KernelWatchdog, String> {
        let timeout = usable(path, max)?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(KernelWatchdog {
            file,
            timeout,
            path: path.to_path_buf(),
        })
    }

    /// Push the reset back by one timeout.
    pub fn keepalive(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"1")
    }

    /// Disarm (magic close) and close.
    pub fn disarm(mut self) {
        if let Err(e) = self.file.write_all(b"V") {
            tracing::warn!(device = %self.path.display(), error = %e, "cannot disarm the kernel watchdog");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_names_map_to_sysfs() {
        assert_eq!(
            sysfs_name(Path::new("/dev/watchdog")).as_deref(),
            Some("watchdog0")
        );
        assert_eq!(
            sysfs_name(Path::new("/dev/watchdog1")).as_deref(),
            Some("watchdog1")
        );
        assert_eq!(sysfs_name(Path::new("/dev/null")), None);
        assert_eq!(parse_timeout("60\n"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("x"), None);
    }

    #[test]
    fn a_missing_or_wrong_device_is_refused_with_a_reason() {
        let e = probe(Path::new("/nonexistent/watchdog")).unwrap_err();
        assert!(e.contains("/nonexistent/watchdog"), "{e}");
        let e = probe(&std::env::temp_dir()).unwrap_err();
        assert!(e.contains("not a character device"), "{e}");
        let e = probe(Path::new("/dev/null")).unwrap_err();
        assert!(e.contains("not a watchdog device"), "{e}");
    }
}
