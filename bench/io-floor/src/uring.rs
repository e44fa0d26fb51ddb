//! io_uring: one operation in flight per connection pair (receive from the client, send up,
//! receive the answer, send it down), every completion of a batch handled before the next
//! `io_uring_enter`, which submits the operations they queued and waits for more.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::{connect_upstream, response_len, take_request};

/// `user_data` of the listener's multishot accept; a pair's is its index + 1.
const ACCEPT: u64 = 0;
/// Each direction's receive buffer (a request or an answer must fit).
const BUF: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    RecvClient,
    SendUp,
    RecvUp,
    SendClient,
}

struct Pair {
    client: TcpStream,
    up: TcpStream,
    /// Receive buffers: the kernel writes into their spare capacity while a receive is in
    /// flight, so they are never grown or touched then.
    cin: Vec<u8>,
    uin: Vec<u8>,
    out: Vec<u8>,
    /// How much of the message being sent went, and (down) the answer's length.
    sent: usize,
    answer: usize,
    stage: Stage,
}

impl Pair {
    /// The operation of the pair's stage.
    fn op(&mut self, ud: u64) -> squeue::Entry {
        match self.stage {
            Stage::RecvClient => recv(&self.client, &mut self.cin, ud),
            Stage::RecvUp => recv(&self.up, &mut self.uin, ud),
            Stage::SendUp => send(&self.up, &self.out[self.sent..], ud),
            Stage::SendClient => send(&self.client, &self.uin[self.sent..self.answer], ud),
        }
    }

    /// The completion of the pair's operation (`res` bytes): `false` closes the pair.
    fn complete(&mut self, res: i32) -> bool {
        let Ok(n) = usize::try_from(res) else {
            return res == -libc_eagain();
        };
        match self.stage {
            Stage::RecvClient | Stage::RecvUp => {
                if n == 0 {
                    return false;
                }
                let buf = if self.stage == Stage::RecvClient {
                    &mut self.cin
                } else {
                    &mut self.uin
                };
                // SAFETY: the kernel wrote `n` bytes into the spare capacity `recv` gave it
                // (at most that capacity), so they are initialized.
                unsafe { buf.set_len(buf.len() + n) };
            }
            Stage::SendUp | Stage::SendClient => self.sent += n,
        }
        loop {
            match self.stage {
                Stage::RecvClient => match take_request(&self.cin, &mut self.out) {
                    Some(len) => {
                        self.cin.drain(..len);
                        self.stage = Stage::SendUp;
                        self.sent = 0;
                    }
                    None => return self.cin.len() < BUF,
                },
                Stage::SendUp if self.sent < self.out.len() => return true,
                Stage::SendUp => {
                    self.out.clear();
                    self.stage = Stage::RecvUp;
                }
                Stage::RecvUp => match response_len(&self.uin) {
                    Some(len) => {
                        self.answer = len;
                        self.sent = 0;
                        self.stage = Stage::SendClient;
                    }
                    None => return self.uin.len() < BUF,
                },
                Stage::SendClient if self.sent < self.answer => return true,
                Stage::SendClient => {
                    self.uin.drain(..self.answer);
                    self.stage = Stage::RecvClient;
                }
            }
            // A receive stage whose message is already buffered moves on at once; a send,
            // or a receive that needs more, goes to the ring.
            if matches!(self.stage, Stage::SendUp | Stage::SendClient) {
                return true;
            }
            if self.stage == Stage::RecvClient && !self.cin.is_empty() {
                continue;
            }
            return true;
        }
    }
}

fn libc_eagain() -> i32 {
    io::Error::from(io::ErrorKind::WouldBlock)
        .raw_os_error()
        .unwrap_or(11)
}

fn recv(s: &TcpStream, buf: &mut Vec<u8>, ud: u64) -> squeue::Entry {
    let spare = buf.spare_capacity_mut();
    let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
    opcode::Recv::new(types::Fd(s.as_raw_fd()), spare.as_mut_ptr().cast(), len)
        .build()
        .user_data(ud)
}

fn send(s: &TcpStream, data: &[u8], ud: u64) -> squeue::Entry {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    opcode::Send::new(types::Fd(s.as_raw_fd()), data.as_ptr(), len)
        .build()
        .user_data(ud)
}

/// Queues `e`, submitting what is queued first when the ring is full.
fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an entry points into is a `Pair`'s, which is neither dropped
        // nor has that buffer touched until the entry's completion arrives (one operation in
        // flight per pair); the listener outlives the ring's use.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

pub fn run(listener: TcpListener, backends: &[SocketAddr]) -> io::Result<()> {
    let mut ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(4096)
    {
        Ok(r) => r,
        Err(_) => IoUring::new(4096)?,
    };
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    push(&mut ring, &accept)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    let mut accepted = 0usize;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted) => {}
            Err(e) if e.raw_os_error() == Some(16) => {} // EBUSY: completions to reap first
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &done {
            if ud == ACCEPT {
                if !cqueue::more(flags) {
                    push(&mut ring, &accept)?;
                }
                let fd = res;
                if fd < 0 {
                    eprintln!("io-floor: accept: {}", io::Error::from_raw_os_error(-fd));
                    continue;
                }
                // SAFETY: a successful accept's result is a new descriptor nobody else owns.
                let client = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let up = match connect_upstream(backends, accepted) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("io-floor: connect: {e}");
                        continue;
                    }
                };
                accepted += 1;
                client.set_nodelay(true)?;
                let i = free.pop().unwrap_or_else(|| {
                    pairs.push(None);
                    pairs.len() - 1
                });
                let p = pairs[i].insert(Pair {
                    client,
                    up,
                    cin: Vec::with_capacity(BUF),
                    uin: Vec::with_capacity(BUF),
                    out: Vec::with_capacity(4096),
                    sent: 0,
                    answer: 0,
                    stage: Stage::RecvClient,
                });
                let e = p.op(i as u64 + 1);
                push(&mut ring, &e)?;
                continue;
            }
            let i = (ud - 1) as usize;
            let Some(p) = pairs.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if p.complete(res) {
                let e = p.op(ud);
                push(&mut ring, &e)?;
            } else {
                pairs[i] = None;
                free.push(i);
            }
        }
    }
}
