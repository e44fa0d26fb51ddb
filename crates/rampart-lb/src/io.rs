//! Client connection wrapper that counts I/O progress, and the watcher that enforces the
//! client header-read and idle timeouts from those counts.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Progress counters of one client connection.
#[derive(Default)]
pub struct Activity {
    /// Incremented on every read that moved bytes.
    reads: AtomicU64,
    /// Incremented on every write that moved bytes (and when a response ends).
    writes: AtomicU64,
    /// Requests being served (from head received to response body end).
    busy: AtomicU32,
}

/// Marks a connection busy while alive.
pub struct Busy(Arc<Activity>);

impl Busy {
    pub fn new(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::Relaxed);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// A stream whose reads and writes are counted in an [`Activity`].
pub struct CountedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> CountedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        CountedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why the watcher closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    HeaderRead,
}

/// Resolves when the connection has been idle (no progress, nothing being served) for
/// `idle`, or has been receiving a request head (bytes in while nothing is served) for
/// longer than `header_read` (if given). A new connection starts waiting for a head.
/// Checked every half of the shorter timeout, so a deadline may be passed by that much.
pub async fn watch(
    activity: Arc<Activity>,
    idle: Duration,
    header_read: Option<Duration>,
) -> Expired {
    let shortest = header_read.map_or(idle, |h| h.min(idle));
    let tick = (shortest / 2).max(Duration::from_millis(20));
    let mut last = (0u64, 0u64);
    let mut quiet_since = Instant::now();
    let mut head_since: Option<Instant> = header_read.map(|_| Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let cur = (
            activity.reads.load(Ordering::Relaxed),
            activity.writes.load(Ordering::Relaxed),
        );
        if activity.busy.load(Ordering::Relaxed) > 0 {
            last = cur;
            quiet_since = now;
            head_since = None;
            continue;
        }
        if cur.1 != last.1 {
            // We wrote: a request head was complete (or the connection is being set up).
            head_since = None;
        } else if cur.0 != last.0 && head_since.is_none() && header_read.is_some() {
            head_since = Some(now);
        }
        if cur != last {
            last = cur;
            quiet_since = now;
        }
        if let (Some(t), Some(h)) = (head_since, header_read) {
            if now.duration_since(t) > h {
                return Expired::HeaderRead;
            }
        }
        if now.duration_since(quiet_since) >= idle {
            return Expired::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);
    const HEAD: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_times_out_on_the_header_timeout() {
        let a = Arc::new(Activity::default());
        let t = Instant::now();
        assert_eq!(watch(a, IDLE, Some(HEAD)).await, Expired::HeaderRead);
        let took = t.elapsed();
        assert!(
            took > HEAD && took <= HEAD + HEAD / 2 + HEAD / 2,
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_times_out_on_the_idle_timeout() {
        let a = Arc::new(Activity::default());
        // One request served: head read, response written.
        let busy = Busy::new(&a);
        a.reads.fetch_add(1, Ordering::Relaxed);
        let w = tokio::spawn(watch(a.clone(), IDLE, Some(HEAD)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        a.writes.fetch_add(1, Ordering::Relaxed);
        drop(busy);
        let t = Instant::now();
        assert_eq!(w.await.expect("watcher"), Expired::Idle);
        let took = t.elapsed();
        assert!(took >= IDLE - HEAD && took <= IDLE + HEAD, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_after_a_response_times_out_on_the_header_timeout() {
        let a = Arc::new(Activity::default());
        a.writes.fetch_add(1, Ordering::Relaxed);
        let w = tokio::spawn(watch(a.clone(), IDLE, Some(HEAD)));
        // A client trickling bytes of a head, never completing it.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.reads.fetch_add(1, Ordering::Relaxed);
            if w.is_finished() {
                break;
            }
        }
        assert_eq!(w.await.expect("watcher"), Expired::HeaderRead);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_never_times_out() {
        let a = Arc::new(Activity::default());
        let _busy = Busy::new(&a);
        let r = tokio::time::timeout(IDLE * 5, watch(a, IDLE, Some(HEAD))).await;
        assert!(r.is_err(), "expired while a request was being served");
    }
}
