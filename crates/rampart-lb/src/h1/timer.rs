//! One timer for every wait of a client connection.
//!
//! A request on a kept-alive connection waits twice on the network: for the client's next
//! request and for the server's answer. With a timeout of its own, each wait inserts a timer
//! into tokio's wheel and removes it again (a lock, the wheel's lists, a clone of the runtime
//! handle): about 1.3 % of the balancer's CPU per request, profiled. Here every wait of a
//! connection shares the connection's one [`Sleep`], armed at most [`STEP`] ahead of the
//! wait's start, not at its deadline: the starts only move forward, so pushing the armed
//! time later is a compare-and-swap in tokio and no wheel operation. A wait that finds the
//! timer armed within its own span (from its start to its deadline) does not touch it at
//! all: on a busy connection only about one wait a second arms it. A wait that outlives the
//! armed time (an idle keep-alive connection, a slow server) is woken once then, and the
//! timer is re-armed at the real deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How far ahead of a wait's start the timer is armed at most. Every timeout of the fast
/// path is at least this long by default (10 s for a request head, 30 s for a response,
/// 60 s idle), so consecutive waits arm it at increasing times; a shorter timeout arms it
/// at its own deadline, which only costs a wheel operation.
const STEP: Duration = Duration::from_secs(1);

/// The wait's deadline passed.
#[derive(Debug)]
pub(super) struct Elapsed;

/// `f`, or [`Elapsed`] once `timeout` has passed since `start`, on the connection's
/// `timer`, armed here when it has to be.
pub(super) fn within<F: Future>(
    mut timer: Pin<&mut Sleep>,
    start: Instant,
    timeout: Duration,
    f: F,
) -> Within<'_, F> {
    // Armed already between this wait's start and its deadline (an earlier wait of the
    // last second armed it a step ahead of its own start): left as it is. It goes off at
    // the deadline or before, and then the wait re-arms it (`Within::poll`). On a busy
    // connection that spares every wait but about one a second its reset. (One clock
    // subtraction, no deadline computed: `Instant` arithmetic is out of line in std.)
    let rest = match timer.deadline().checked_duration_since(start) {
        Some(ahead) if ahead <= timeout => timeout - ahead,
        _ => {
            // Later than the last wait's arming: a compare-and-swap in tokio, no wheel
            // operation.
            let step = timeout.min(STEP);
            timer.as_mut().reset(start + step);
            timeout - step
        }
    };
    Within {
        timer,
        // Whole milliseconds (tokio's timer ticks; rounded up: never early), so the wait
        // stays small: it lives in every idle connection's future.
        rest_ms: ceil_ms(rest),
        f,
    }
}

/// `d` in whole milliseconds, rounded up, at most `u32::MAX` (no 128-bit division).
fn ceil_ms(d: Duration) -> u32 {
    let ms = d
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_nanos()).div_ceil(1_000_000));
    u32::try_from(ms).unwrap_or(u32::MAX)
}

pin_project_lite::pin_project! {
    /// The future of [`within`].
    pub(super) struct Within<'t, F> {
        timer: Pin<&'t mut Sleep>,
        // How much later than the timer's first going off the deadline is (0 once the
        // timer is armed at the deadline).
        rest_ms: u32,
        #[pin]
        f: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.f.poll(cx) {
            return Poll::Ready(Ok(r));
        }
        loop {
            match this.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if *this.rest_ms == 0 => return Poll::Ready(Err(Elapsed)),
                // Armed short of the deadline: now at it.
                Poll::Ready(()) => {
                    let deadline =
                        this.timer.deadline() + Duration::from_millis(u64::from(*this.rest_ms));
                    *this.rest_ms = 0;
                    this.timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// `f`, or `None` once `stop` is ready: `tokio::select!` on the two without the
    /// macro's own state (a closure and a mask), which an idle connection's future would
    /// keep. `stop` is the connection's one wait for a wake-up (the stop, a virtual address
    /// given up: `crate::wake`), kept across its waits: it joins the waiter list on its
    /// first poll and stays there, where a wait of its own each time joined and left the
    /// list (a lock and a list update each way, about 200 instructions a request).
    pub(super) struct UnlessWoken<'s, F, S> {
        #[pin]
        f: F,
        stop: Pin<&'s mut S>,
    }
}

impl<'s, F: Future, S: Future<Output = ()>> UnlessWoken<'s, F, S> {
    pub(super) fn new(f: F, stop: Pin<&'s mut S>) -> Self {
        UnlessWoken { f, stop }
    }
}

impl<F: Future, S: Future<Output = ()>> Future for UnlessWoken<'_, F, S> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.f.poll(cx) {
            return Poll::Ready(Some(r));
        }
        // (A wake-up that is over stays over: polled again, it is ready.)
        this.stop.as_mut().poll(cx).map(|()| None)
    }
}

/// [`within`] for I/O that often completes at once (a write, a read of bytes already
/// there): the timer is armed, and `start` read, only if `f` has to wait. The deadline's
/// passing is a `TimedOut` error. Not for an idle connection's wait: its future is bigger.
pub(super) async fn within_io<F: Future<Output = std::io::Result<R>>, R>(
    timer: Pin<&mut Sleep>,
    start: impl FnOnce() -> Instant,
    timeout: Duration,
    f: F,
) -> std::io::Result<R> {
    let mut f = std::pin::pin!(f);
    let at_once = std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await;
    let r = match at_once {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => within(timer, start(), timeout, f).await,
    };
    match r {
        Ok(r) => r,
        Err(Elapsed) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
    }
}

/// A connection's timer, not yet armed.
pub(super) fn idle() -> Sleep {
    // Far enough that it never fires before a wait arms it; not `Instant::far_future`
    // (private), and not so far that tokio's tick arithmetic saturates.
    tokio::time::sleep_until(Instant::now() + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_at_its_deadline_not_at_the_step() {
        let mut timer = std::pin::pin!(idle());
        let start = Instant::now();
        let r = within(
            timer.as_mut(),
            start,
            Duration::from_secs(5),
            std::future::pending::<()>(),
        )
        .await;
        assert!(r.is_err());
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shorter_and_longer_waits_in_turn_each_keep_their_own_deadline() {
        let mut timer = std::pin::pin!(idle());
        for (secs, ms) in [(30u64, 0u64), (0, 200), (60, 0), (0, 5), (3, 0)] {
            let timeout = Duration::from_secs(secs) + Duration::from_millis(ms);
            let start = Instant::now();
            // Something that finishes before the deadline does, then one that never does.
            let quick = within(
                timer.as_mut(),
                start,
                timeout,
                tokio::time::sleep(timeout / 2),
            )
            .await;
            assert!(quick.is_ok(), "{timeout:?}");
            let start = Instant::now();
            let r = within(timer.as_mut(), start, timeout, std::future::pending::<()>()).await;
            assert!(r.is_err());
            let waited = start.elapsed();
            assert!(
                waited >= timeout && waited <= timeout + Duration::from_millis(5),
                "timeout {timeout:?}, waited {waited:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_within_the_armed_span_leaves_the_timer_and_keeps_its_deadline() {
        let mut timer = std::pin::pin!(idle());
        let t0 = Instant::now();
        // A quick exchange arms the timer a step ahead of its start.
        let r = within(timer.as_mut(), t0, Duration::from_secs(30), async { 1 }).await;
        assert_eq!(r.ok(), Some(1));
        assert_eq!(timer.deadline(), t0 + STEP);
        tokio::time::advance(Duration::from_millis(200)).await;
        // The next wait (60 s) starts before that and ends after it: the timer stays.
        let start = Instant::now();
        let wait = within(
            timer.as_mut(),
            start,
            Duration::from_secs(60),
            std::future::pending::<()>(),
        );
        assert_eq!(wait.timer.deadline(), t0 + STEP);
        assert!(wait.await.is_err());
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_millis(60_002),
            "{waited:?}"
        );
        // A wait whose deadline comes before the armed time re-arms it at its deadline.
        tokio::time::advance(Duration::from_millis(10)).await;
        let mut timer = std::pin::pin!(idle());
        let start = Instant::now();
        let r = within(
            timer.as_mut(),
            start,
            Duration::from_millis(300),
            std::future::pending::<()>(),
        );
        assert_eq!(r.timer.deadline(), start + Duration::from_millis(300));
        assert!(r.await.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_too_long_for_the_clock_never_fires() {
        let mut timer = std::pin::pin!(idle());
        let wait = within(
            timer.as_mut(),
            Instant::now(),
            Duration::MAX,
            tokio::time::sleep(Duration::from_secs(3_600)),
        );
        assert!(wait.await.is_ok());
    }

    #[test]
    fn milliseconds_round_up_and_saturate() {
        assert_eq!(ceil_ms(Duration::ZERO), 0);
        assert_eq!(ceil_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ceil_ms(Duration::new(2, 1_000_001)), 2002);
        assert_eq!(ceil_ms(Duration::MAX), u32::MAX);
        for ns in [
            0u64,
            999_999,
            1_000_000,
            1_000_001,
            59_999_999_999,
            4_294_967_295_000_000,
        ] {
            let d = Duration::from_nanos(ns);
            let want = u32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX);
            assert_eq!(ceil_ms(d), want, "{d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_ready_at_once_is_returned() {
        let mut timer = std::pin::pin!(idle());
        let r = within(
            timer.as_mut(),
            Instant::now(),
            Duration::from_secs(1),
            async { 7 },
        )
        .await;
        assert_eq!(r.ok(), Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_and_the_operation_wins_a_tie() {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut timer = std::pin::pin!(idle());
        let wait = within(
            timer.as_mut(),
            Instant::now(),
            Duration::from_secs(60),
            std::future::pending::<()>(),
        );
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            s.cancel();
        });
        let start = Instant::now();
        let mut stopped = std::pin::pin!(stop.cancelled());
        // One wait for the stop serves every wait of a connection.
        for i in 0..3 {
            let quick = UnlessWoken::new(
                tokio::time::sleep(Duration::from_millis(10)),
                stopped.as_mut(),
            );
            assert_eq!(quick.await, Some(()), "{i}");
        }
        assert!(UnlessWoken::new(wait, stopped.as_mut()).await.is_none());
        assert_eq!(start.elapsed(), Duration::from_millis(2000));
        // Both ready: the operation's result, not the stop.
        assert_eq!(
            UnlessWoken::new(async { 1 }, stopped.as_mut()).await,
            Some(1)
        );
        // And a stop stays seen by every wait after it.
        let wait = std::future::pending::<()>();
        assert!(UnlessWoken::new(wait, stopped.as_mut()).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_no_wait_runs_ends_the_next_wait() {
        // The connection's wait for the stop is registered while it serves a request (no
        // wait polled): the stop must still end the wait after it, at once.
        let stop = tokio_util::sync::CancellationToken::new();
        let mut stopped = std::pin::pin!(stop.cancelled());
        let first = UnlessWoken::new(
            tokio::time::sleep(Duration::from_millis(1)),
            stopped.as_mut(),
        );
        assert_eq!(first.await, Some(()));
        stop.cancel();
        let start = Instant::now();
        let next = UnlessWoken::new(std::future::pending::<()>(), stopped.as_mut());
        assert!(next.await.is_none());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
