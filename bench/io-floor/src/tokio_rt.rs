//! A task per connection on tokio's current-thread runtime: rampart's I/O model with none of
//! its features. Pinned (each client connection keeps one upstream connection), or with a
//! choice per request as a balancer makes it: round robin, or the less busy of two servers
//! drawn at random, over each server's idle connections (a new one when it has none).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{connect_upstream, response_len, take_request};

/// Where each request goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// To the client connection's own upstream connection.
    Pinned,
    RoundRobin,
    TwoChoices,
}

pub fn run(listener: TcpListener, backends: &[SocketAddr], choice: Choice) -> io::Result<()> {
    if choice != Choice::Pinned {
        return run_pooled(listener, backends, choice);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let backends = backends.to_vec();
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut n = 0usize;
        loop {
            let client = match listener.accept().await {
                Ok((c, _)) => c,
                Err(e) => {
                    eprintln!("io-floor: accept: {e}");
                    continue;
                }
            };
            let up = match connect_upstream(&backends, n) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("io-floor: connect: {e}");
                    continue;
                }
            };
            n += 1;
            up.set_nonblocking(true)?;
            let up = TcpStream::from_std(up)?;
            client.set_nodelay(true)?;
            tokio::spawn(async move {
                let _ = serve(client, up).await;
            });
        }
    })
}

async fn serve(mut c: TcpStream, mut u: TcpStream) -> io::Result<()> {
    let mut cin = Vec::with_capacity(4096);
    let mut uin = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    while next_request(&mut c, &mut cin, &mut out).await? {
        u.write_all(&out).await?;
        out.clear();
        let n = next_response(&mut u, &mut uin).await?;
        c.write_all(&uin[..n]).await?;
        uin.drain(..n);
    }
    Ok(())
}

/// Reads until a whole request is in `cin`, takes it and renders it into `out`: `false` when
/// the client closed first.
async fn next_request(c: &mut TcpStream, cin: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        if let Some(n) = take_request(cin, out) {
            cin.drain(..n);
            return Ok(true);
        }
        if c.read_buf(cin).await? == 0 {
            return Ok(false);
        }
    }
}

/// Reads until a whole answer is in `uin`: its length.
async fn next_response(u: &mut TcpStream, uin: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        if let Some(n) = response_len(uin) {
            return Ok(n);
        }
        if u.read_buf(uin).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    }
}

/// Every server's idle connections and requests in flight (one thread: no locks).
struct Pool {
    addrs: Vec<SocketAddr>,
    idle: RefCell<Vec<Vec<TcpStream>>>,
    busy: RefCell<Vec<u32>>,
    next: Cell<usize>,
    rng: Cell<u64>,
    two: bool,
}

impl Pool {
    fn pick(&self) -> usize {
        let n = self.addrs.len();
        if !self.two {
            let i = self.next.get();
            self.next.set((i + 1) % n);
            return i;
        }
        let (a, b) = (self.random() % n, self.random() % n);
        let busy = self.busy.borrow();
        if busy[b] < busy[a] {
            b
        } else {
            a
        }
    }

    /// xorshift64*: enough to spread picks.
    fn random(&self) -> usize {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize
    }
}

fn run_pooled(listener: TcpListener, backends: &[SocketAddr], choice: Choice) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let pool = Rc::new(Pool {
        addrs: backends.to_vec(),
        idle: RefCell::new(backends.iter().map(|_| Vec::new()).collect()),
        busy: RefCell::new(vec![0; backends.len()]),
        next: Cell::new(0),
        rng: Cell::new(0x9e37_79b9_7f4a_7c15),
        two: choice == Choice::TwoChoices,
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let client = match listener.accept().await {
                Ok((c, _)) => c,
                Err(e) => {
                    eprintln!("io-floor: accept: {e}");
                    continue;
                }
            };
            client.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = serve_pooled(client, &pool).await {
                    eprintln!("io-floor: {e}");
                }
            });
        }
    })
}

async fn serve_pooled(mut c: TcpStream, pool: &Pool) -> io::Result<()> {
    let mut cin = Vec::with_capacity(4096);
    let mut uin = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    while next_request(&mut c, &mut cin, &mut out).await? {
        let i = pool.pick();
        pool.busy.borrow_mut()[i] += 1;
        let idle = pool.idle.borrow_mut()[i].pop();
        let r = async {
            let mut u = match idle {
                Some(u) => u,
                None => {
                    let u = TcpStream::connect(pool.addrs[i]).await?;
                    u.set_nodelay(true)?;
                    u
                }
            };
            u.write_all(&out).await?;
            let n = next_response(&mut u, &mut uin).await?;
            Ok::<_, io::Error>((u, n))
        }
        .await;
        pool.busy.borrow_mut()[i] -= 1;
        let (u, n) = r?;
        out.clear();
        c.write_all(&uin[..n]).await?;
        uin.drain(..n);
        pool.idle.borrow_mut()[i].push(u);
    }
    Ok(())
}
