//! Binary upgrade without a refused connection: the running process starts the new
//! binary (`current_exe`, same arguments) and hands it every listening socket (each
//! listener's per-worker sockets and the admin socket) over a unix socket with
//! `SCM_RIGHTS`; once the new process accepts on them it says "ready" and the old one
//! stops accepting and drains (the sockets stay open in the new process, so no queued
//! connection is lost). If the new process fails, the old one keeps serving, and a new
//! process that never reports ready is killed, not left beside it.
//!
//! The rendezvous socket lives in a directory of its own that only this user can enter
//! (mode 0700, a random name), and the old process hands the sockets over only to the
//! process it started: the peer's pid (`SO_PEERCRED`) must be its child's.
//!
//! File descriptors travel through rustix's safe `sendmsg`/`recvmsg`, which hand out
//! `OwnedFd`s: no `unsafe` here.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// The environment variable that tells a new process where to get its sockets.
pub const HANDOFF_ENV: &str = "RAMPART_LB_HANDOFF";

/// The kernel's limit of descriptors in one message.
const MAX_FDS: usize = 253;

/// What one passed descriptor is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdInfo {
    /// The listener's name; empty for the admin socket.
    pub name: String,
    pub address: SocketAddr,
    pub admin: bool,
}

/// What travels with the descriptors: what each one is, and the virtual routers the old
/// process is master of (so the new one carries on as their master instead of starting
/// as a backup, which would move the virtual IP to a peer and back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Envelope {
    sockets: Vec<FdInfo>,
    #[serde(default)]
    vrrp_masters: Vec<String>,
}

/// Sockets received from the previous process.
#[derive(Default)]
pub struct Inherited {
    pub sockets: Vec<(FdInfo, std::net::TcpListener)>,
    /// The virtual routers (by name) the previous process was master of.
    pub vrrp_masters: Vec<String>,
    /// Where to say "ready".
    pub channel: Option<UnixStream>,
}

impl Inherited {
    /// Take the sockets of listener `name` at `address`.
    pub fn take_listener(&mut self, name: &str, address: SocketAddr) -> Vec<std::net::TcpListener> {
        let (take, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(i, _)| !i.admin && i.name == name && i.address == address);
        self.sockets = keep;
        take.into_iter().map(|(_, s)| s).collect()
    }

    pub fn take_admin(&mut self, address: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self
            .sockets
            .iter()
            .position(|(i, _)| i.admin && i.address == address)?;
        Some(self.sockets.remove(i).1)
    }

    /// Tell the previous process we accept on its sockets now.
    pub fn ready(&mut self) {
        if let Some(mut c) = self.channel.take() {
            if let Err(e) = c.write_all(b"R") {
                tracing::warn!(error = %e, "could not tell the previous process we are ready");
            }
        }
    }
}

/// In a process started by an upgrade, fetch the sockets (blocking, at start-up).
pub fn receive_from_env() -> Result<Inherited, String> {
    let Some(path) = std::env::var_os(HANDOFF_ENV) else {
        return Ok(Inherited::default());
    };
    let path = PathBuf::from(path);
    receive(&path)
        .map_err(|e| format!("receive the listening sockets from {}: {e}", path.display()))
}

fn receive(path: &Path) -> std::io::Result<Inherited> {
    receive_on(UnixStream::connect(path)?)
}

/// Read the sockets and what travels with them from `stream`.
fn receive_on(stream: UnixStream) -> std::io::Result<Inherited> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut data = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = rustix::net::recvmsg(&stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    // A previous process of an older version sends the bare list.
    let env: Envelope = serde_json::from_slice(&data[..msg.bytes])
        .or_else(|_| {
            serde_json::from_slice::<Vec<FdInfo>>(&data[..msg.bytes]).map(|sockets| Envelope {
                sockets,
                vrrp_masters: Vec::new(),
            })
        })
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let infos = env.sockets;
    if infos.len() != fds.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} sockets described, {} received", infos.len(), fds.len()),
        ));
    }
    let sockets = infos
        .into_iter()
        .zip(fds)
        .map(|(i, fd)| {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map(|()| (i, l))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    tracing::info!(
        sockets = sockets.len(),
        "took over the listening sockets of the previous process"
    );
    stream.set_read_timeout(None)?;
    Ok(Inherited {
        sockets,
        vrrp_masters: env.vrrp_masters,
        channel: Some(stream),
    })
}

/// Send `sockets` to the process connected on `stream`.
pub fn send(
    stream: &UnixStream,
    sockets: &[(FdInfo, std::net::TcpListener)],
    vrrp_masters: &[String],
) -> std::io::Result<()> {
    if sockets.len() > MAX_FDS {
        return Err(std::io::Error::other(format!(
            "{} listening sockets, at most {MAX_FDS} can be handed over",
            sockets.len()
        )));
    }
    let env = Envelope {
        sockets: sockets.iter().map(|(i, _)| i.clone()).collect(),
        vrrp_masters: vrrp_masters.to_vec(),
    };
    let data = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
    let fds: Vec<_> = sockets.iter().map(|(_, s)| s.as_fd()).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("control buffer too small"));
    }
    let n = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&data)],
        &mut control,
        SendFlags::empty(),
    )?;
    if n != data.len() {
        return Err(std::io::Error::other("short write of the socket list"));
    }
    Ok(())
}

/// Start the new binary and hand it `sockets`; returns its pid once it says it accepts.
/// Blocking (run it on a blocking thread).
pub fn upgrade(
    sockets: Vec<(FdInfo, std::net::TcpListener)>,
    vrrp_masters: Vec<String>,
) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("find the current executable: {e}"))?;
    let exe = installed_path(exe);
    let dir = private_dir()?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let path = dir.join("handoff.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| format!("bind {}: {e}", path.display()))?;
    let child = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(HANDOFF_ENV, &path)
        .spawn()
        .map_err(|e| format!("start {}: {e}", exe.display()))?;
    // From here on, a failure kills the new process: it never runs beside this one.
    let mut child = KillOnDrop(Some(child));
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), "upgrade: started the new process");
    // Wait for it to connect (or die).
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("unix socket: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => match rustix::net::sockopt::socket_peercred(&s) {
                Ok(cred) if cred.pid.as_raw_nonzero().get() as u32 == pid => break s,
                Ok(cred) => {
                    tracing::warn!(
                        peer_pid = cred.pid.as_raw_nonzero().get(),
                        expected = pid,
                        "upgrade: refused a connection to the hand-over socket from another process"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade: cannot read the peer of the hand-over socket")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the new process exited ({status}) before taking the sockets"
                    ));
                }
                if std::time::Instant::now() > deadline {
                    return Err("the new process did not connect within 20 s: killed it".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept on the upgrade socket: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("unix socket: {e}"))?;
    send(&stream, &sockets, &vrrp_masters).map_err(|e| format!("hand over the sockets: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("unix socket: {e}"))?;
    let mut b = [0u8; 1];
    let mut s = stream;
    match s.read(&mut b) {
        Ok(1) if b[0] == b'R' => {
            tracing::info!(
                pid,
                "upgrade: the new process accepts; this one stops accepting and drains"
            );
            // Reap it later, never leave a zombie behind if we outlive it.
            if let Some(mut c) = child.0.take() {
                std::thread::spawn(move || {
                    let _ = c.wait();
                });
            }
            Ok(pid)
        }
        _ => {
            let status = child.try_wait().ok().flatten();
            Err(format!(
                "the new process (pid {pid}) did not report ready{}",
                status
                    .map(|s| format!("; it exited ({s})"))
                    .unwrap_or_else(|| "; killed it".into())
            ))
        }
    }
}

/// The path of the binary on disk. Installing a new binary replaces the file (a new
/// inode at the same path: `install`, `cp` to a temporary name then `mv`, package
/// managers), and the kernel then names the running one `PATH (deleted)`: the upgrade
/// is meant for the file now at `PATH`.
fn installed_path(exe: PathBuf) -> PathBuf {
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(p) if !exe.exists() => PathBuf::from(p),
        _ => exe,
    }
}

/// A new directory only this user can enter, for the rendezvous socket: under
/// `$XDG_RUNTIME_DIR` when set, else the temporary directory, with a random name (so
/// no other user can plant a socket or a link at a path we would use).
fn private_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    for _ in 0..8 {
        let dir = base.join(format!(
            "rampart-lb-upgrade-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("create {}: {e}", dir.display())),
        }
    }
    Err(format!("no free directory name under {}", base.display()))
}

/// Removes the rendezvous directory and its socket.
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The new process until it reported ready: killed (and reaped) if the upgrade fails.
struct KillOnDrop(Option<std::process::Child>);
impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self.0.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }
}
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Ok(None) = c.try_wait() {
                tracing::warn!(pid = c.id(), "upgrade failed: killing the new process");
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sockets_travel_with_their_names_and_still_listen() {
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let (tx, rx) = UnixStream::pair().unwrap();
        let sockets = vec![
            (
                FdInfo {
                    name: "web".into(),
                    address: a1,
                    admin: false,
                },
                l1,
            ),
            (
                FdInfo {
                    name: String::new(),
                    address: a2,
                    admin: true,
                },
                l2,
            ),
        ];
        send(&tx, &sockets, &["vip1".to_string()]).unwrap();
        drop(sockets); // the receiver's copies keep them open
        let mut got = receive_on(rx).unwrap();
        assert_eq!(got.vrrp_masters, ["vip1"]);
        assert_eq!(got.sockets.len(), 2);
        let web = got.take_listener("web", a1);
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].local_addr().unwrap(), a1);
        let _c = std::net::TcpStream::connect(a1).unwrap();
        web[0].set_nonblocking(false).unwrap();
        assert!(web[0].accept().is_ok());
        assert!(got.take_admin(a2).is_some());
    }

    #[test]
    fn a_replaced_binary_is_found_at_its_path() {
        let dir = std::env::temp_dir();
        assert_eq!(
            installed_path(dir.join("rampart (deleted)")),
            dir.join("rampart")
        );
        assert_eq!(installed_path(dir.join("rampart")), dir.join("rampart"));
    }

    #[test]
    fn the_rendezvous_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = private_dir().unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        let _cleanup = RemoveOnDrop(d.clone());
        assert_eq!(mode & 0o777, 0o700);
        assert_ne!(private_dir().unwrap(), d, "a fresh name each time");
    }

    #[test]
    fn a_previous_version_s_bare_list_is_still_understood() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let (tx, rx) = UnixStream::pair().unwrap();
        let infos = vec![FdInfo {
            name: "web".into(),
            address: a,
            admin: false,
        }];
        let data = serde_json::to_vec(&infos).unwrap();
        let fds = [l.as_fd()];
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &tx,
            &[IoSlice::new(&data)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        let got = receive_on(rx).unwrap();
        assert!(got.vrrp_masters.is_empty());
        assert_eq!(got.sockets.len(), 1);
    }
}
