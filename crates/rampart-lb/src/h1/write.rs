//! Writes (and other I/O) of the fast path with a deadline, setting no timer when they
//! complete at once.

use std::future::Future;
use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// `f`, or `TimedOut` at `deadline`. An operation that completes at once (most writes,
/// reads of bytes already there) sets no timer.
pub(super) async fn by<F: Future<Output = io::Result<R>>, R>(
    deadline: Instant,
    f: F,
) -> io::Result<R> {
    let mut f = std::pin::pin!(f);
    let first = std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    if let Some(r) = first {
        return r;
    }
    match tokio::time::timeout_at(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
}

pub(super) async fn write_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    by(deadline, async {
        w.write_all(data).await?;
        w.flush().await
    })
    .await
}

/// Write all of `data`, counting in `written` what the socket took (also when it fails).
pub(super) async fn write_counted<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    written: &mut usize,
) -> io::Result<()> {
    while let Some(rest) = data.get(*written..).filter(|r| !r.is_empty()) {
        match w.write(rest).await? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => *written += n,
        }
    }
    w.flush().await
}
