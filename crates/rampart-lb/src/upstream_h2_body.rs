//! Request bodies sent over HTTP/2 to a pool's server ([`crate::upstream_h2`]).
//!
//! A body is a [`BodyWriter`] (the client's side, fed as the body is read: by the fast
//! path, or for an HTTP/2 client by [`pump`]) and a [`Replay`] reader (the stream's side,
//! polled by hyper). Every chunk is also kept
//! while the body is at most [`REPLAY_MAX`] bytes, so that a request the server refused
//! unprocessed (`REFUSED_STREAM`, or a stream above a GOAWAY's last stream id: RFC 9113
//! sections 8.7 and 6.8) can be sent again on another connection with its whole body:
//! [`BodyWriter::replay`] gives a new reader that starts from the first byte and then goes
//! on with what the client still sends. Past the limit, or once the answer came
//! ([`BodyWriter::settle`]), nothing is kept. A body ends with its trailer fields, if any
//! (a HEADERS frame with END_STREAM); a writer dropped before its end fails the stream,
//! so that a server never takes a cut body for a whole one.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// How much of a request body is kept to send it again after a refusal (the client's
/// bytes already read: a 64 KiB window, as HTTP/2's initial flow-control window).
pub const REPLAY_MAX: usize = 64 * 1024;

/// Body bytes queued for the stream beyond which the client's side waits.
const QUEUED_MAX: usize = 64 * 1024;

/// A request body sent over HTTP/2.
pub enum H2Body {
    Empty,
    /// An HTTP/2 client's body as hyper gives it (what `to_upstream` wraps; a body that may
    /// have to go again goes through [`pump`] instead).
    Hyper(crate::body::ReqBody),
    /// A body fed by a [`BodyWriter`] (the fast path's, and an HTTP/2 client's through
    /// [`pump`]).
    Replay(Replay),
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            H2Body::Empty => Poll::Ready(None),
            H2Body::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(io::Error::other),
            H2Body::Replay(r) => r.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2Body::Empty => true,
            H2Body::Hyper(b) => b.is_end_stream(),
            H2Body::Replay(r) => r.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            H2Body::Empty => SizeHint::with_exact(0),
            H2Body::Hyper(b) => b.size_hint(),
            H2Body::Replay(Replay { len: Some(n), .. }) => SizeHint::with_exact(*n),
            H2Body::Replay(_) => SizeHint::default(),
        }
    }
}

struct Shared {
    /// Chunks the current reader has not taken yet, and their bytes.
    queued: VecDeque<Bytes>,
    queued_len: usize,
    /// Every chunk so far, while they fit in [`REPLAY_MAX`]; `None`: no replay.
    kept: Option<Vec<Bytes>>,
    kept_len: usize,
    /// The body ended (with its trailer fields, if any).
    end: Option<Option<HeaderMap>>,
    /// The writer went away before the end.
    failed: bool,
    /// The current reader's generation, and whether it is gone (the stream ended).
    gen: u64,
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// The client's side of a fast-path request body.
#[derive(Clone)]
pub struct BodyWriter {
    sh: Arc<Mutex<Shared>>,
    len: Option<u64>,
}

/// The stream's side: what hyper sends.
pub struct Replay {
    sh: Arc<Mutex<Shared>>,
    gen: u64,
    len: Option<u64>,
    trailers_sent: bool,
    done: bool,
}

fn lock(sh: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    sh.lock().unwrap_or_else(|p| p.into_inner())
}

fn gone() -> io::Error {
    io::Error::other("the server stopped taking the request body")
}

impl BodyWriter {
    /// A body of `len` bytes (else of unknown length), and its first reader.
    pub fn new(len: Option<u64>) -> (BodyWriter, H2Body) {
        let sh = Arc::new(Mutex::new(Shared {
            queued: VecDeque::new(),
            queued_len: 0,
            kept: Some(Vec::new()),
            kept_len: 0,
            end: None,
            failed: false,
            gen: 0,
            reader_gone: false,
            reader: None,
            writer: None,
        }));
        let r = Replay {
            sh: sh.clone(),
            gen: 0,
            len,
            trailers_sent: false,
            done: false,
        };
        (BodyWriter { sh, len }, H2Body::Replay(r))
    }

    /// Queue `data` for the stream (waiting while much is queued). Fails when the stream
    /// ended and the body can no longer be sent again.
    pub async fn put(&self, data: Bytes) -> io::Result<()> {
        let mut data = Some(data);
        std::future::poll_fn(|cx| {
            let mut s = lock(&self.sh);
            if s.reader_gone && s.kept.is_none() {
                return Poll::Ready(Err(gone()));
            }
            if !s.reader_gone && s.queued_len >= QUEUED_MAX {
                s.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let Some(d) = data.take() else {
                return Poll::Ready(Ok(()));
            };
            if s.kept_len + d.len() <= REPLAY_MAX {
                if let Some(k) = s.kept.as_mut() {
                    k.push(d.clone());
                    s.kept_len += d.len();
                }
            } else {
                s.kept = None;
                if s.reader_gone {
                    return Poll::Ready(Err(gone()));
                }
            }
            if !s.reader_gone {
                s.queued_len += d.len();
                s.queued.push_back(d);
                if let Some(w) = s.reader.take() {
                    w.wake();
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The body's end, with its trailer fields (none when empty).
    pub fn finish(&self, trailers: HeaderMap) -> io::Result<()> {
        let mut s = lock(&self.sh);
        if s.reader_gone && s.kept.is_none() {
            return Err(gone());
        }
        s.end = Some((!trailers.is_empty()).then_some(trailers));
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        Ok(())
    }

    /// A new reader of the whole body from its first byte (the previous one is dropped),
    /// when all of it that was read so far is kept.
    pub fn replay(&self) -> Option<H2Body> {
        replay(&self.sh, self.len)
    }

    /// What can send the body again (and settle it) without being its writer: dropping it
    /// fails nothing, where a writer dropped before the end fails the stream.
    pub fn replayer(&self) -> Replayer {
        Replayer {
            sh: self.sh.clone(),
            len: self.len,
        }
    }

    /// The answer came: the body will not be sent again (what was kept is let go).
    pub fn settle(&self) {
        settle(&self.sh);
    }
}

/// See [`BodyWriter::replayer`].
pub struct Replayer {
    sh: Arc<Mutex<Shared>>,
    len: Option<u64>,
}

impl Replayer {
    /// [`BodyWriter::replay`].
    pub fn replay(&self) -> Option<H2Body> {
        replay(&self.sh, self.len)
    }

    /// [`BodyWriter::settle`].
    pub fn settle(&self) {
        settle(&self.sh);
    }
}

/// Feed an HTTP/2 client's body (the hyper path) into `w`: its data, then its end with its
/// trailer fields. A client that fails or goes away drops the writer before the end, which
/// fails the stream; a stream that can no longer take the body stops the feed.
pub async fn pump(mut body: crate::body::ReqBody, w: BodyWriter) {
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    if w.put(d).await.is_err() {
                        return;
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        let _ = w.finish(t);
                        return;
                    }
                }
            },
            Some(Err(_)) => return,
            None => {
                let _ = w.finish(HeaderMap::new());
                return;
            }
        }
    }
}

fn replay(sh: &Arc<Mutex<Shared>>, len: Option<u64>) -> Option<H2Body> {
    {
        let mut s = lock(sh);
        let kept = s.kept.clone()?;
        s.gen += 1;
        s.queued = kept.into();
        s.queued_len = s.kept_len;
        s.reader_gone = false;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        Some(H2Body::Replay(Replay {
            sh: sh.clone(),
            gen: s.gen,
            len,
            trailers_sent: false,
            done: false,
        }))
    }
}

fn settle(sh: &Mutex<Shared>) {
    let mut s = lock(sh);
    s.kept = None;
    s.kept_len = 0;
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // A writer (the pump's, or the forwarder's) gone before the end: the client's
        // side failed.
        let mut s = lock(&self.sh);
        if s.end.is_none() {
            s.failed = true;
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        }
    }
}

impl Replay {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = lock(&self.sh);
        if s.gen != self.gen {
            // A reader replaced by a replay (never polled again in practice).
            return Poll::Ready(Some(Err(gone())));
        }
        if let Some(d) = s.queued.pop_front() {
            s.queued_len -= d.len();
            if let Some(w) = s.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        match &s.end {
            Some(Some(t)) if !self.trailers_sent => {
                self.trailers_sent = true;
                self.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            Some(_) => {
                self.done = true;
                return Poll::Ready(None);
            }
            None => {}
        }
        if s.failed {
            return Poll::Ready(Some(Err(io::Error::other(
                "the client's request body was cut short",
            ))));
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let mut s = lock(&self.sh);
        if s.gen == self.gen {
            s.reader_gone = true;
            s.reader = None;
            if let Some(w) = s.writer.take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The first `n` bytes of a body that has not ended.
    async fn collect_some(mut b: H2Body, n: usize) -> (Vec<u8>, H2Body) {
        let mut out = Vec::new();
        while out.len() < n {
            let f = b.frame().await.expect("a frame").expect("data");
            out.extend_from_slice(&f.into_data().expect("data"));
        }
        (out, b)
    }

    async fn collect(b: H2Body) -> (Vec<u8>, Option<HeaderMap>) {
        let c = b.collect().await.expect("a whole body");
        let t = c.trailers().cloned();
        (c.to_bytes().to_vec(), t)
    }

    #[tokio::test]
    async fn a_replay_starts_from_the_first_byte_and_goes_on_with_the_rest() {
        let (w, first) = BodyWriter::new(None);
        w.put(Bytes::from_static(b"hello ")).await.expect("queued");
        drop(first);
        // The stream ended (refused): more still goes, kept for the replay.
        w.put(Bytes::from_static(b"world")).await.expect("kept");
        let again = w.replay().expect("all of it is kept");
        let mut t = HeaderMap::new();
        t.insert("x-sum", http::HeaderValue::from_static("7"));
        let w2 = w.clone();
        let feed = tokio::spawn(async move {
            w2.put(Bytes::from_static(b"!")).await.expect("queued");
            w2.finish(t).expect("ended");
        });
        let (body, trailers) = collect(again).await;
        feed.await.expect("fed");
        assert_eq!(body, b"hello world!");
        assert_eq!(
            trailers.and_then(|t| t.get("x-sum").cloned()),
            Some(http::HeaderValue::from_static("7"))
        );
    }

    #[tokio::test]
    async fn past_the_limit_or_after_the_answer_there_is_no_replay() {
        let (w, first) = BodyWriter::new(None);
        w.put(Bytes::from(vec![b'a'; REPLAY_MAX - 10]))
            .await
            .expect("kept");
        drop(first);
        let again = w.replay().expect("all of it is kept");
        w.put(Bytes::from_static(&[b'b'; 20]))
            .await
            .expect("queued");
        assert!(w.replay().is_none(), "past the limit");
        let (body, _) = collect_some(again, REPLAY_MAX + 10).await;
        assert_eq!(body.len(), REPLAY_MAX + 10);
        let (w, first) = BodyWriter::new(Some(1));
        w.put(Bytes::from_static(b"a")).await.expect("queued");
        w.settle();
        assert!(w.replay().is_none(), "answered");
        drop(first);
        assert!(w.put(Bytes::from_static(b"b")).await.is_err());
    }

    #[tokio::test]
    async fn a_writer_gone_before_the_end_fails_the_stream() {
        let (w, b) = BodyWriter::new(None);
        w.put(Bytes::from_static(b"part")).await.expect("queued");
        drop(w);
        assert!(b.collect().await.is_err());
    }
}
