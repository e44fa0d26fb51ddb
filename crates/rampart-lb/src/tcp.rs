//! TCP forwarding (`mode = "tcp"`): one upstream connection per client connection, bytes
//! copied both ways. The balancer counts connections as in-flight load.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::clock::now_ns;
use crate::io::{self, Activity, CountedIo};
use crate::state::{mark_tried, Fail, Outcome, PickError};
use crate::upstream;
use crate::ListenerRt;

/// Forward one accepted client connection.
pub async fn serve(client: TcpStream, peer: SocketAddr, listener: Arc<ListenerRt>) {
    let pool = &listener.pool.get();
    pool.budget.on_request(now_ns());
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let key = match ip {
        IpAddr::V4(v4) => rampart_balance::hash_key(&v4.octets()),
        IpAddr::V6(v6) => rampart_balance::hash_key(&v6.octets()),
    };
    let mut tried = 0u64;
    let mut attempt = 0u32;
    loop {
        let slot = match pool.pick(key, tried).await {
            Ok(s) => s,
            Err(e) => {
                let reason = match e {
                    PickError::NoneUp => "no healthy server",
                    PickError::QueueFull => "queue full",
                    PickError::QueueTimeout => "queue timeout",
                };
                tracing::warn!(pool = %pool.cfg.name, %peer, reason, "closing client connection");
                return;
            }
        };
        let i = slot.server;
        tried = mark_tried(tried, i);
        let s = slot.server();
        match upstream::connect_tcp(s.addr, pool.cfg.timeouts.connect).await {
            Ok(up) => {
                pool.on_passive(i, Outcome::Connected, now_ns());
                let activity = Arc::new(Activity::default());
                let local = crate::wake::local_ip(listener.cfg.address.ip(), || {
                    client.local_addr().ok().map(|a| a.ip())
                });
                let mut c = CountedIo::new(client, activity.clone());
                let mut u = up;
                let idle = io::watch(activity, listener.cfg.idle_timeout, None);
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, server = %s.name, error = %e, "tcp session ended");
                        }
                    }
                    _ = idle => tracing::debug!(%peer, server = %s.name, "tcp session idle, closed"),
                    // Its virtual address went to another balancer: the client's packets
                    // now reach that one, which resets them; closing tells the client (and
                    // the server) now.
                    _ = crate::wake::given_up_wait(local) => tracing::debug!(%peer, server = %s.name, "tcp session closed: its virtual address moved to another balancer"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(pool = %pool.cfg.name, server = %s.name, error = %e, "connect failed");
                pool.on_passive(i, Outcome::Failed(Fail::Connect), now_ns());
                drop(slot);
                // Nothing was sent yet: always safe to try another server.
                if attempt >= pool.cfg.retries.attempts || !pool.budget.try_retry(now_ns()) {
                    return;
                }
                attempt += 1;
            }
        }
    }
}
