//! Integration tests of rampart-coord against a real etcd on loopback
//! (started through `rampart_testkit::etcd`, killed when each test ends).

mod kv;
mod lease;
mod service;
mod unavailable;
mod watch;

use std::time::{Duration, Instant};

use rampart_coord::{Coord, CoordOptions};
use rampart_testkit::etcd::Etcd;

/// Start a one-member etcd without blocking the runtime's other tasks.
pub async fn etcd() -> Etcd {
    tokio::task::spawn_blocking(Etcd::start)
        .await
        .expect("start etcd")
}

pub async fn etcd_cluster(n: usize) -> Etcd {
    tokio::task::spawn_blocking(move || Etcd::start_cluster(n))
        .await
        .expect("start etcd cluster")
}

pub async fn coord(etcd: &Etcd) -> Coord {
    let mut o = CoordOptions::new(etcd.client_urls());
    o.op_timeout = Duration::from_millis(800);
    o.connect_timeout = Duration::from_millis(500);
    Coord::connect(o).await.expect("connect")
}

/// Poll an async condition until it holds or `timeout` passes; returns the elapsed time.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if f().await {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
