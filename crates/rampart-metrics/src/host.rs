//! Host figures every role exposes beside its own metrics (issue 14, part 4): the machine's
//! CPU time by mode and memory (`/proc/stat`, `/proc/meminfo`), the space and I/O of the
//! filesystems holding the node's data directories (`statvfs`, `/proc/diskstats`), and the
//! process's open descriptors against its limit (`/proc/self/fd`, `/proc/self/limits`),
//! resident memory (`/proc/self/status`) and CPU time (`/proc/self/stat`).
//!
//! The parsers are pure (tested on captured text); [`sample`] reads the files and
//! [`render`] writes OpenMetrics families, appended to a role's exposition before its
//! `# EOF` by [`append`]. A file that cannot be read leaves its families out (a container
//! without `/proc/diskstats` still serves the rest): a scrape never fails for them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The node's data directories, set once by the role at start ([`set_data_dirs`]).
static DATA_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Which directories' filesystems this process reports (a db agent: its PostgreSQL data
/// directory; a web server: its site).
pub fn set_data_dirs(dirs: Vec<PathBuf>) {
    if let Ok(mut d) = DATA_DIRS.lock() {
        *d = dirs;
    }
}

/// [`sample`] of the directories given to [`set_data_dirs`].
pub fn sample_now() -> Sample {
    let dirs = DATA_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    sample(&refs)
}

/// Seconds per tick of `/proc/stat` and `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICK: f64 = 0.01;
/// Bytes per sector of `/proc/diskstats` (always 512, whatever the device's).
const SECTOR: u64 = 512;

/// CPU time of the whole machine by mode, in ticks (`/proc/stat`'s `cpu` line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTicks {
    fn modes(&self) -> [(&'static str, u64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ]
    }
}

/// The first (`cpu `) line of `/proc/stat`.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    Some(CpuTicks {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    })
}

/// Total and available memory in bytes (`/proc/meminfo`'s `MemTotal`, `MemAvailable`).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let l = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = l[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Bytes read and written since boot by the device `major:minor` (`/proc/diskstats`).
pub fn parse_diskstats(text: &str, major: u64, minor: u64) -> Option<(String, u64, u64)> {
    for l in text.lines() {
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        if f[0].parse::<u64>().ok() == Some(major) && f[1].parse::<u64>().ok() == Some(minor) {
            let read: u64 = f[5].parse().ok()?;
            let written: u64 = f[9].parse().ok()?;
            return Some((f[2].to_string(), read * SECTOR, written * SECTOR));
        }
    }
    None
}

/// The soft limit of open files (`/proc/self/limits`); `None` when unlimited.
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let l = text.lines().find(|l| l.starts_with("Max open files"))?;
    l["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds (user + system) of a process (`/proc/PID/stat`).
pub fn parse_proc_stat(text: &str) -> Option<f64> {
    // The command may hold spaces and parentheses: fields count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) is f[11], stime f[12].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 * TICK)
}

/// Resident memory of a process in bytes (`/proc/PID/status`'s `VmRSS`).
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let l = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = l["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Linux's `st_dev` split into (major, minor) as glibc's `gnu_dev_major/minor` do.
pub fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// One data directory's filesystem.
#[derive(Debug, Clone, PartialEq)]
pub struct Fs {
    pub path: PathBuf,
    pub size: u64,
    pub avail: u64,
    /// Device name and bytes read and written since boot, when `/proc/diskstats` has it.
    pub io: Option<(String, u64, u64)>,
}

/// What one scrape reports of the host and the process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub cpu: Option<CpuTicks>,
    pub mem: Option<(u64, u64)>,
    pub fs: Vec<Fs>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// CPU seconds of this process.
    pub cpu_seconds: Option<f64>,
    /// Resident bytes of this process.
    pub rss: Option<u64>,
}

/// Read the host's and this process's figures; `data_dirs`: the node's data directories
/// (a path that does not exist yet is measured at its nearest existing parent).
pub fn sample(data_dirs: &[&Path]) -> Sample {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let diskstats = read("/proc/diskstats");
    let mut fs = Vec::new();
    for d in data_dirs {
        let Some(at) = d.ancestors().find(|a| a.exists()) else {
            continue;
        };
        let Ok(st) = nix::sys::statvfs::statvfs(at) else {
            continue;
        };
        let frag = st.fragment_size();
        let io = std::fs::metadata(at).ok().and_then(|m| {
            use std::os::unix::fs::MetadataExt;
            let (major, minor) = dev_major_minor(m.dev());
            parse_diskstats(diskstats.as_deref()?, major, minor)
        });
        fs.push(Fs {
            path: d.to_path_buf(),
            size: st.blocks() * frag,
            avail: st.blocks_available() * frag,
            io,
        });
    }
    Sample {
        cpu: read("/proc/stat").as_deref().and_then(parse_stat),
        mem: read("/proc/meminfo").as_deref().and_then(parse_meminfo),
        fs,
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: read("/proc/self/limits").as_deref().and_then(parse_max_fds),
        cpu_seconds: read("/proc/self/stat").as_deref().and_then(parse_proc_stat),
        rss: read("/proc/self/status")
            .as_deref()
            .and_then(parse_status_rss),
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The sample as OpenMetrics families (without `# EOF`).
pub fn render(s: &Sample) -> String {
    let mut o = String::new();
    if let Some(cpu) = &s.cpu {
        o.push_str("# TYPE rampart_host_cpu_seconds counter\n");
        o.push_str("# HELP rampart_host_cpu_seconds CPU time of the whole machine by mode.\n");
        for (mode, ticks) in cpu.modes() {
            let _ = writeln!(
                o,
                "rampart_host_cpu_seconds_total{{mode=\"{mode}\"}} {}",
                ticks as f64 * TICK
            );
        }
    }
    if let Some((total, avail)) = s.mem {
        o.push_str("# TYPE rampart_host_memory_total_bytes gauge\n");
        o.push_str("# HELP rampart_host_memory_total_bytes Memory of the machine.\n");
        let _ = writeln!(o, "rampart_host_memory_total_bytes {total}");
        o.push_str("# TYPE rampart_host_memory_available_bytes gauge\n");
        o.push_str(
            "# HELP rampart_host_memory_available_bytes Memory available to new work (MemAvailable).\n",
        );
        let _ = writeln!(o, "rampart_host_memory_available_bytes {avail}");
    }
    if !s.fs.is_empty() {
        o.push_str("# TYPE rampart_host_filesystem_size_bytes gauge\n");
        o.push_str("# HELP rampart_host_filesystem_size_bytes Size of the filesystem holding a data directory.\n");
        for f in &s.fs {
            let _ = writeln!(
                o,
                "rampart_host_filesystem_size_bytes{{path=\"{}\"}} {}",
                escape(&f.path.display().to_string()),
                f.size
            );
        }
        o.push_str("# TYPE rampart_host_filesystem_avail_bytes gauge\n");
        o.push_str("# HELP rampart_host_filesystem_avail_bytes Space left for unprivileged use on the filesystem holding a data directory.\n");
        for f in &s.fs {
            let _ = writeln!(
                o,
                "rampart_host_filesystem_avail_bytes{{path=\"{}\"}} {}",
                escape(&f.path.display().to_string()),
                f.avail
            );
        }
        let io: Vec<(&Fs, &(String, u64, u64))> =
            s.fs.iter()
                .filter_map(|f| f.io.as_ref().map(|io| (f, io)))
                .collect();
        for (name, pick, help) in [
            (
                "rampart_host_disk_read_bytes",
                1usize,
                "Bytes read since boot from the device holding a data directory.",
            ),
            (
                "rampart_host_disk_written_bytes",
                2usize,
                "Bytes written since boot to the device holding a data directory.",
            ),
        ] {
            if io.is_empty() {
                break;
            }
            let _ = writeln!(o, "# TYPE {name} counter\n# HELP {name} {help}");
            for (f, (dev, r, w)) in &io {
                let v = if pick == 1 { r } else { w };
                let _ = writeln!(
                    o,
                    "{name}_total{{path=\"{}\",device=\"{}\"}} {v}",
                    escape(&f.path.display().to_string()),
                    escape(dev)
                );
            }
        }
    }
    if let Some(n) = s.open_fds {
        o.push_str("# TYPE rampart_process_open_fds gauge\n# HELP rampart_process_open_fds Open file descriptors of this process.\n");
        let _ = writeln!(o, "rampart_process_open_fds {n}");
    }
    if let Some(n) = s.max_fds {
        o.push_str("# TYPE rampart_process_max_fds gauge\n# HELP rampart_process_max_fds The soft limit of open file descriptors of this process.\n");
        let _ = writeln!(o, "rampart_process_max_fds {n}");
    }
    if let Some(cpu) = s.cpu_seconds {
        o.push_str("# TYPE rampart_process_cpu_seconds counter\n# HELP rampart_process_cpu_seconds CPU time (user and system) of this process.\n");
        let _ = writeln!(o, "rampart_process_cpu_seconds_total {cpu}");
    }
    if let Some(rss) = s.rss {
        o.push_str("# TYPE rampart_process_resident_memory_bytes gauge\n# HELP rampart_process_resident_memory_bytes Resident memory of this process.\n");
        let _ = writeln!(o, "rampart_process_resident_memory_bytes {rss}");
    }
    o
}

/// `exposition` (OpenMetrics text ending in `# EOF`) with the host families before its end.
pub fn append(exposition: &str, s: &Sample) -> String {
    let host = render(s);
    match exposition.rfind("# EOF") {
        Some(at) => format!("{}{host}{}", &exposition[..at], &exposition[at..]),
        None => format!("{exposition}{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0\ncpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\nintr 1 2 3\n";
    const MEMINFO: &str =
        "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8192000 kB\n";
    const DISKSTATS: &str = " 254       0 vda 25305 10 2189146 11133 9520 11013 4101712 39446 0 25640 53100 0 0 0 0 2000 2520\n 254       1 vda1 25000 10 2000000 11000 9000 11000 4000000 39000 0 25000 53000 0 0 0 0 0 0\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \n";
    const PSTAT: &str = "4242 (rampart (lb)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 50 0 0 20 0 4 0 100 123456789 2560 18446744073709551615 1 1 0 0 0 0 0 4096 17475 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn proc_files_parse() {
        let c = parse_stat(STAT).unwrap_or_default();
        assert_eq!(c.user, 10132153);
        assert_eq!(c.idle, 46828483);
        assert_eq!(c.steal, 0);
        assert_eq!(
            parse_meminfo(MEMINFO),
            Some((16384000 * 1024, 8192000 * 1024))
        );
        assert_eq!(
            parse_diskstats(DISKSTATS, 254, 1),
            Some(("vda1".to_string(), 2000000 * 512, 4000000 * 512))
        );
        assert_eq!(parse_diskstats(DISKSTATS, 8, 0), None);
        assert_eq!(parse_max_fds(LIMITS), Some(1024));
        assert_eq!(
            parse_max_fds("Max open files  unlimited  unlimited files\n"),
            None
        );
        let cpu = parse_proc_stat(PSTAT).unwrap_or_default();
        assert!((cpu - 2.0).abs() < 1e-9, "{cpu}");
        assert_eq!(
            parse_status_rss("Name:\tx\nVmRSS:\t   12345 kB\n"),
            Some(12345 * 1024)
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_meminfo("MemTotal: x kB\n"), None);
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        // makedev(254, 1) and makedev(259, 70000).
        assert_eq!(dev_major_minor((254 << 8) | 1), (254, 1));
        let makedev = |major: u64, minor: u64| {
            (minor & 0xff)
                | ((major & 0xfff) << 8)
                | ((minor & !0xff) << 12)
                | ((major & !0xfff) << 32)
        };
        assert_eq!(dev_major_minor(makedev(259, 70000)), (259, 70000));
        assert_eq!(dev_major_minor(makedev(8, 1)), (8, 1));
    }

    #[test]
    fn a_live_sample_renders_before_eof() {
        let dir = std::env::temp_dir();
        let s = sample(&[dir.as_path(), Path::new("/nonexistent/rampart/data")]);
        assert!(s.cpu.is_some() && s.mem.is_some(), "{s:?}");
        assert_eq!(
            s.fs.len(),
            2,
            "a missing directory is measured at its parent"
        );
        assert!(
            s.fs.iter().all(|f| f.size >= f.avail && f.size > 0),
            "{s:?}"
        );
        assert!(s.open_fds.unwrap_or(0) > 0);
        let text = append("# TYPE x gauge\nx 1\n# EOF\n", &s);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for family in [
            "rampart_host_cpu_seconds_total{mode=\"idle\"}",
            "rampart_host_memory_available_bytes ",
            "rampart_host_filesystem_avail_bytes{path=",
            "rampart_process_open_fds ",
            "rampart_process_resident_memory_bytes ",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
    }
}
