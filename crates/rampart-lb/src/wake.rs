//! Waking the client connections that wait for their client's next request, for either of
//! two reasons: the process stops, or this balancer gave up a virtual address (VRRP: a
//! higher-priority peer took it over, or this router went to fault).
//!
//! On the second, a connection that came in on that address and waits idle closes at
//! once, while its FIN still reaches the client from here; a busy one answers its request
//! with `Connection: close`. The client's next request then opens a connection, which goes
//! to the new master. Kept open, the connection's next request would reach the new master
//! (the client's neighbour entry follows its gratuitous ARP), which knows nothing of it
//! and resets it: a failed request for every keep-alive client after each failback.
//! keepalived in front of HAProxy leaves those connections open.
//!
//! Each worker thread has a [`Notify`] of its own (its own waiter list: no lock shared
//! between threads on the request path). Waking is rare and wakes every waiting
//! connection of every thread; each decides whether the wake was for it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

/// Every thread's [`Notify`] (one per thread that ever served a connection; leaked, as
/// the threads live as long as the process).
static THREADS: Mutex<Vec<&'static Notify>> = Mutex::new(Vec::new());

thread_local! {
    static THIS: &'static Notify = {
        let n: &'static Notify = Box::leak(Box::new(Notify::new()));
        THREADS.lock().unwrap_or_else(PoisonError::into_inner).push(n);
        n
    };
}

/// This thread's wake-up: a connection waits on `this_thread().notified()`, created
/// before it checks [`crate::stopping`] and [`given_up`], so that no wake is missed.
pub(crate) fn this_thread() -> &'static Notify {
    THIS.with(|n| *n)
}

/// Wake every waiting connection of every thread.
pub(crate) fn all() {
    let threads = THREADS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for n in threads {
        n.notify_waiters();
    }
}

/// How long after giving an address up its connections are looked for: a connection idle
/// then closes at once; one busy closes after its request, if that ends within this
/// window. (While any address is given up, each request on a wildcard listener asks for its
/// socket's local address: a system call; so not for ever.)
pub(crate) const GIVEN_UP_FOR: Duration = Duration::from_secs(10);

/// The virtual addresses this balancer gave up, each with the give-up that put it there.
static GIVEN_UP: RwLock<Vec<(IpAddr, u64)>> = RwLock::new(Vec::new());
/// `GIVEN_UP` is not empty (read on every request; the set only when it is set).
static ANY_GIVEN_UP: AtomicBool = AtomicBool::new(false);
static GIVE_UPS: AtomicU64 = AtomicU64::new(0);

fn given_up_set() -> std::sync::RwLockWriteGuard<'static, Vec<(IpAddr, u64)>> {
    GIVEN_UP.write().unwrap_or_else(PoisonError::into_inner)
}

/// This balancer no longer holds `ips`: their connections close (idle ones now). Returns
/// the give-up, for [`expire`] after [`GIVEN_UP_FOR`].
pub(crate) fn give_up(ips: &[IpAddr]) -> u64 {
    let id = GIVE_UPS.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut g = given_up_set();
        for ip in ips {
            let ip = ip.to_canonical();
            g.retain(|(i, _)| *i != ip);
            g.push((ip, id));
        }
        ANY_GIVEN_UP.store(!g.is_empty(), Ordering::SeqCst);
    }
    all();
    id
}

/// The end of give-up `id`'s window (a later give-up of the same address has its own).
pub(crate) fn expire(id: u64) {
    let mut g = given_up_set();
    g.retain(|(_, i)| *i != id);
    ANY_GIVEN_UP.store(!g.is_empty(), Ordering::SeqCst);
}

/// This balancer holds `ips` again: their connections are served as any other.
pub(crate) fn take_back(ips: &[IpAddr]) {
    let mut g = given_up_set();
    g.retain(|(ip, _)| !ips.iter().any(|t| t.to_canonical() == *ip));
    ANY_GIVEN_UP.store(!g.is_empty(), Ordering::SeqCst);
}

/// Whether any address is given up (one load: the request path asks this first).
pub(crate) fn any_given_up() -> bool {
    ANY_GIVEN_UP.load(Ordering::SeqCst)
}

/// Whether connections to local address `ip` belong to an address given up.
pub(crate) fn given_up(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    any_given_up()
        && GIVEN_UP
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|(i, _)| *i == ip)
}

/// The local address of a client connection: its listener's (`bound`), unless that is a
/// wildcard; then the socket's (`sock`: a system call).
pub(crate) fn local_ip(bound: IpAddr, sock: impl FnOnce() -> Option<IpAddr>) -> Option<IpAddr> {
    if bound.is_unspecified() {
        sock()
    } else {
        Some(bound)
    }
}

/// Ready once this balancer gives up virtual address `local` (never for `None`).
pub(crate) async fn given_up_wait(local: Option<IpAddr>) {
    let Some(ip) = local else {
        return std::future::pending().await;
    };
    loop {
        // Made before the check: a give-up after it wakes this wait.
        let woken = this_thread().notified();
        if given_up(ip) {
            return;
        }
        woken.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the set is process-wide.
    #[test]
    fn a_given_up_address_wakes_waiters_on_every_thread_until_taken_back() {
        let a: IpAddr = "10.0.0.100".parse().unwrap();
        let b: IpAddr = "10.0.0.101".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.100".parse().unwrap();
        assert!(!any_given_up() && !given_up(a));

        // A waiter registered on another thread before the address is given up wakes.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async move {
                let n = std::pin::pin!(this_thread().notified());
                ready_tx.send(()).unwrap();
                tokio::time::timeout(Duration::from_secs(5), n)
                    .await
                    .is_ok()
            })
        });
        ready_rx.recv().unwrap();
        let _ = give_up(&[a]);
        assert!(waiter.join().unwrap(), "the waiter was not woken");

        assert!(any_given_up());
        assert!(
            given_up(a) && given_up(mapped),
            "an IPv4-mapped local address is the same"
        );
        assert!(!given_up(b));
        let first = give_up(&[a, b]);
        take_back(&[a]);
        assert!(!given_up(a) && given_up(b) && any_given_up());
        take_back(&[b]);
        assert!(!given_up(b) && !any_given_up());

        // A window ends its own give-up only: `a` given up again keeps its second window.
        let one = give_up(&[a]);
        let two = give_up(&[a, b]);
        assert!(first < one && one < two);
        expire(one);
        assert!(given_up(a) && given_up(b));
        expire(two);
        assert!(!given_up(a) && !given_up(b) && !any_given_up());
    }
}
