//! Test harness shared by rampart's integration tests.
//!
//! Everything here starts *real* processes on loopback and cleans them up when
//! the guard is dropped, including when a test panics: each child runs in its
//! own process group and the whole group gets SIGKILL on drop ([`kill_all`], which also
//! removes the shared memory of any PostgreSQL killed with it).
//!
//! Binaries are found, never built, here: `rampart_bin()` reads `RAMPART_BIN`
//! or falls back to `<target>/debug/rampart`; the README's test command builds
//! it before running the tests.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

pub use rampart_pgshm as pgshm;
pub use rampart_pgshm::kill_all;
use rampart_pgshm::processes;
pub use tempfile::TempDir;

pub mod etcd;
pub mod netns;
pub mod pg;

/// A free TCP port on 127.0.0.1, never handed out twice in this process.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on the given loopback address (e.g. `127.0.0.2`), never handed out
/// twice in this process.
///
/// Drawn from above the kernel's ephemeral range when there is room (61000-65535 with
/// Debian's default range), so that no outgoing connection of a concurrent test and no
/// `bind(0)` can take the port between this check and the moment the test's server binds
/// it (an `openssl ocsp` failed with "Address already in use" that way in CI). The first
/// candidate depends on the process id, so concurrent test processes start apart.
pub fn free_port_on(ip: &str) -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut g = given.lock().expect("port set");
    if let Some((lo, hi)) = above_ephemeral() {
        let span = u32::from(hi - lo) + 1;
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            if !g.contains(&port) && TcpListener::bind((ip, port)).is_ok() {
                g.insert(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if g.insert(port) {
            return port;
        }
    }
    panic!("no free port found on {ip}");
}

/// A base port for a whole stack of processes (`rampart up`'s `port_base`): `base + o` is
/// free for every offset in `offsets` (each below 500). Bases are 500 apart, from 10000 up
/// to the kernel's ephemeral range, and never handed out twice in this process: a block is
/// only checked free when it is handed out and its processes bind it seconds later, so two
/// tests running at once must never be given overlapping blocks (100-apart bases with
/// offsets up to 406 were, and a stack then failed to come up). The first candidate
/// depends on the process id.
pub fn port_block(offsets: &[u16]) -> u16 {
    const LO: u16 = 10_000;
    const STEP: u16 = 500;
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    assert!(
        offsets.iter().all(|&o| o < STEP),
        "port_block: offsets must be below {STEP}"
    );
    let hi = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&lo| lo >= LO + STEP)
        .unwrap_or(32_768);
    let slots = u32::from((hi - LO) / STEP);
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut g = given.lock().expect("block set");
    let start = std::process::id().wrapping_mul(2_654_435_761) % slots;
    for i in 0..slots {
        let base = LO + ((start + i) % slots) as u16 * STEP;
        if !g.contains(&base)
            && offsets
                .iter()
                .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            g.insert(base);
            return base;
        }
    }
    panic!("no free block of ports below {hi}");
}

/// The ports above the kernel's ephemeral range, if there are at least a thousand.
fn above_ephemeral() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let hi: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
    (hi <= 64_535).then(|| (hi + 1, u16::MAX))
}

/// A wait that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout;

/// A real child process in its own process group; the group is killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Send a signal to the process itself (not its group).
    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Send a signal to the whole process group.
    pub fn signal_group(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = killpg(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL the group and every process below it, wherever it moved (removing the
    /// shared memory of a PostgreSQL among them: [`kill_all`]), and reap the child. The
    /// clean-up kill: nothing it started survives.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_all(&[c.id() as i32], &[]);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL the group only, as a crash or an operator's `kill -9 -<pgid>` would, and
    /// reap the child: a process the program deliberately put in a group of its own to
    /// outlive it (the balancer's virtual IP guard) lives on and does its clean-up, which is
    /// what a fault test checks. Not for PostgreSQL (its backends leave the group: [`kill`]).
    ///
    /// [`kill`]: Proc::kill
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the child to exit by itself, up to `timeout`. Returns its exit code
    /// (`None` when killed by a signal) or `Err(Timeout)` when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, Timeout> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = self.child.as_mut() else {
                return Ok(None);
            };
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                return Err(Timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The log so far (for assertions and for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: String = text
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!(
                "---- last lines of {} ({}) ----\n{tail}",
                self.name,
                self.log.display()
            );
        }
        self.kill();
    }
}

/// Wait until a TCP connect to `addr` succeeds.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// How many TCP connections on this host are established with `port` as their *local*
/// port: the server side of connections to a listener on `port` (read from
/// `/proc/net/tcp` and `/proc/net/tcp6`). It drops to zero once no process serves such a
/// connection any more, e.g. every backend of a killed server has exited.
pub fn established_on_port(port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|l| {
                    // sl local_address rem_address st ...
                    let mut f = l.split_whitespace();
                    let local = f.nth(1).and_then(|a| a.rsplit(':').next());
                    let state = f.nth(1);
                    local.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                        && state == Some(ESTABLISHED)
                })
                .count()
        })
        .sum()
}

/// The tests' HTTP client is the workspace's one (`rampart-http1`), with a 5 s connect
/// and a 30 s read timeout and no size limit.
pub use rampart_http1::Response as HttpResponse;

const HTTP: rampart_http1::Client = rampart_http1::Client {
    connect_timeout: Duration::from_secs(5),
    io_timeout: Duration::from_secs(30),
    max_response: u64::MAX,
};

/// A blocking HTTP/1.1 GET with `Connection: close`.
/// Good enough for health and assertion checks; load tests use a real client.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    HTTP.get(addr, path)
}

/// A blocking HTTP/1.1 request with `Connection: close`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    HTTP.request(addr, method, path, headers, body)
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// The `rampart` binary under test: `$RAMPART_BIN`, else `<target>/debug/rampart`.
pub fn rampart_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RAMPART_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("debug/rampart");
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build -p rampart` (the README's test command does)",
        p.display()
    );
    p
}

/// Look a program up on PATH and in the given extra directories.
pub fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Directory holding PostgreSQL's server binaries (initdb, postgres, pg_ctl, pg_basebackup...).
pub fn pg_bin_dir() -> PathBuf {
    for v in ["17", "16", "15"] {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("postgres").is_file() {
            return d;
        }
    }
    find_program("postgres", &[])
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("PostgreSQL server binaries not found: apt-get install postgresql-15")
}

/// Path to the etcd server binary.
pub fn etcd_bin() -> PathBuf {
    find_program("etcd", &["/usr/bin", "/usr/local/bin"])
        .expect("etcd not found: apt-get install etcd-server")
}

/// The children of `parent` with their command lines (spaces for NULs).
pub fn children_of(parent: i32) -> Vec<(i32, String)> {
    processes()
        .filter(|&(_, ppid, _)| ppid == parent)
        .filter_map(|(pid, _, _)| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let title = String::from_utf8_lossy(&cmd).replace('\0', " ");
            Some((pid, title))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_on_port_counts_the_server_side_until_it_closes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            established_on_port(port),
            0,
            "a listener is not a connection"
        );
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (served, _) = l.accept().unwrap();
        assert_eq!(established_on_port(port), 1);
        drop(served);
        assert!(wait_until(Duration::from_secs(5), || established_on_port(
            port
        ) == 0));
    }
}
