//! Unit tests of the fast path.

#![allow(clippy::unwrap_used)]

use super::*;

#[tokio::test]
async fn an_idle_connection_costs_a_small_future() {
    // Every client connection holds one `serve` future for its whole life: what it
    // keeps across awaits is the balancer's memory per idle connection (the bench's
    // idle scenario). A buffer held in it (say a 4 KiB array) shows up here first.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    // The guard the accept loop passes (permits, counters) is about this big.
    let guard = [0u64; 9];
    let fut = serve(c, test_ctx(false), Instant::now(), true, guard);
    let size = std::mem::size_of_val(&fut);
    // tokio's task adds 96 bytes (header, scheduler, id, trailer) and rounds up to 128:
    // a future of at most 416 bytes keeps each connection's task at 512. The release
    // build's future is no bigger than this debug one.
    assert!(size <= 416, "the serve future is {size} bytes");
}

// Hardening: the request parser against smuggling and malformed heads.

pub(super) fn test_ctx(trusted: bool) -> Arc<ConnCtx> {
    test_ctx_with(trusted, Default::default(), "192.0.2.7:40000")
}

/// A connection from `peer` (a trusted proxy when `192.0.2.0/24` and `trusted`) to a
/// listener adding `forwarded`.
pub(crate) fn test_ctx_with(
    trusted: bool,
    forwarded: rampart_topology::lb::ForwardedHeaders,
    peer: &str,
) -> Arc<ConnCtx> {
    use rampart_topology::lb::{CheckKind, LbConfig, Mode};
    let cfg = LbConfig::quick(
        "127.0.0.1:1".parse().unwrap(),
        &["127.0.0.1:2".parse().unwrap()],
        rampart_balance::Algorithm::RoundRobin,
        Mode::Http,
        CheckKind::None,
    )
    .unwrap();
    let pool = crate::state::PoolState::new(cfg.pools[0].clone(), 1, 1);
    let rt = Arc::new(crate::ListenerRt {
        cfg: cfg.listeners[0].clone(),
        pool: Arc::new(crate::state::PoolHandle::new(pool, 1)),
        routes: Box::new([]),
        trusted: if trusted {
            vec!["192.0.2.0/24".parse().unwrap()]
        } else {
            Vec::new()
        },
        forwarded,
        stats: Arc::new(crate::ListenerStats::new(1)),
        limit: None,
        tls: None,
        firewall: None,
    });
    ConnCtx::new(peer.parse().unwrap(), &rt, 0, None).unwrap()
}

/// A connection to the first listener of `cfg` (its routes' pools included).
pub(crate) fn test_ctx_of(cfg: &rampart_topology::lb::LbConfig) -> Arc<ConnCtx> {
    let pools: Vec<_> = cfg
        .pools
        .iter()
        .map(|p| {
            let st = crate::state::PoolState::new(p.clone(), 1, 1);
            Arc::new(crate::state::PoolHandle::new(st, 1))
        })
        .collect();
    let l = &cfg.listeners[0];
    let rt = Arc::new(crate::ListenerRt {
        cfg: l.clone(),
        pool: pools[l.pool].clone(),
        routes: l
            .routes
            .iter()
            .map(|r| r.pool().map(|p| pools[p].clone()))
            .collect(),
        trusted: Vec::new(),
        forwarded: Default::default(),
        stats: Arc::new(crate::ListenerStats::new(1)),
        limit: None,
        tls: None,
        firewall: None,
    });
    ConnCtx::new("192.0.2.7:40000".parse().unwrap(), &rt, 0, None).unwrap()
}

#[test]
fn only_unsent_or_idempotent_body_less_requests_are_resent() {
    assert!(may_resend(0, false), "nothing reached the socket");
    assert!(may_resend(10, true), "a GET may be seen twice");
    assert!(!may_resend(1, false), "a partly sent POST must not be");
}

#[tokio::test]
async fn write_counted_counts_what_went_out_before_a_failure() {
    // A pipe that takes 100 bytes, then its reader goes away.
    let (mut w, mut r) = tokio::io::duplex(100);
    let data = vec![b'x'; 1000];
    let mut written = 0;
    let writing = write_counted(&mut w, &data, &mut written);
    let reading = async {
        let mut b = [0u8; 60];
        r.read_exact(&mut b).await.unwrap();
        drop(r);
    };
    let (res, ()) = tokio::join!(writing, reading);
    assert!(res.is_err());
    assert!((100..1000).contains(&written), "{written}");
    let (mut w, _r) = tokio::io::duplex(4096);
    let mut written = 0;
    write_counted(&mut w, b"abc", &mut written).await.unwrap();
    assert_eq!(written, 3);
}

/// A POST whose head went partly out on a pooled connection that the server then
/// resets is answered 502 and never sent again (before: resent on a new connection).
/// In process because the partial write needs small socket buffers on the balancer's
/// side: over loopback the kernel takes megabytes at once otherwise.
#[tokio::test]
async fn a_partly_written_post_on_a_pooled_connection_is_not_resent() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::net::TcpSocket;
    // The backend: small receive buffers; the first connection reads 1000 bytes and
    // resets, later ones count a POST and answer.
    let ls = TcpSocket::new_v4().unwrap();
    ls.set_recv_buffer_size(4096).unwrap();
    ls.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = ls.listen(16).unwrap();
    let backend = listener.local_addr().unwrap();
    let posts = Arc::new(AtomicU32::new(0));
    let p2 = posts.clone();
    let server = tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            let mut b = vec![0u8; 1000];
            if c.read_exact(&mut b).await.is_ok() && b.starts_with(b"POST") {
                p2.fetch_add(1, Ordering::SeqCst);
            }
            if first {
                first = false;
                socket2::SockRef::from(&c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(c);
                continue;
            }
            tokio::spawn(async move {
                let mut sink = vec![0u8; 65536];
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while c.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                })
                .await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let ctx = ctx_for(backend);
    // A pooled connection with a small send buffer (as a busy or slow link has).
    let us = TcpSocket::new_v4().unwrap();
    us.set_send_buffer_size(4096).unwrap();
    let up = us.connect(backend).await.unwrap();
    let pool = ctx.listener.pool.get();
    pool.servers[0].idle_raw[0]
        .lock()
        .unwrap()
        .push(upstream::IdleRaw {
            conn: UpStream::Plain(up),
            since_ns: crate::clock::now_ns(),
        });
    // A POST with a ~56 KiB head.
    let mut req = b"POST /pay HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n".to_vec();
    for i in 0..100 {
        req.extend_from_slice(format!("x-pad-{i}: {}\r\n", "p".repeat(550)).as_bytes());
    }
    req.extend_from_slice(b"\r\nhi");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (lb_side, _) = l.accept().await.unwrap();
    let serving = tokio::spawn(serve(lb_side, ctx, Instant::now(), false, ()));
    client.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut b = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match client.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&got).into_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the POST reached the server again"
    );
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    serving.abort();
    server.abort();
}

/// A connection context whose pool is one server at `backend` (round robin, no checks).
fn ctx_for(backend: std::net::SocketAddr) -> Arc<ConnCtx> {
    use rampart_topology::lb::{CheckKind, LbConfig, Mode};
    let cfg = LbConfig::quick(
        "127.0.0.1:1".parse().unwrap(),
        &[backend],
        rampart_balance::Algorithm::RoundRobin,
        Mode::Http,
        CheckKind::None,
    )
    .unwrap();
    let pool = crate::state::PoolState::new(cfg.pools[0].clone(), 1, 1);
    let rt = Arc::new(crate::ListenerRt {
        cfg: cfg.listeners[0].clone(),
        pool: Arc::new(crate::state::PoolHandle::new(pool, 1)),
        routes: Box::new([]),
        trusted: Vec::new(),
        forwarded: Default::default(),
        stats: Arc::new(crate::ListenerStats::new(1)),
        limit: None,
        tls: None,
        firewall: None,
    });
    ConnCtx::new("192.0.2.7:40000".parse().unwrap(), &rt, 0, None).unwrap()
}
