//! Body types of the proxy: streamed both ways, never buffered whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::Notify;

use crate::state::{InFlight, PoolState};
use crate::upstream;

/// A request body sent upstream: the client's stream, or nothing (a rebuilt retry).
pub enum ReqBody {
    /// The client's body; `sent` is notified once its last frame went upstream, which
    /// starts the response timeout. The server it goes to (set per attempt) counts its
    /// bytes as "bytes in".
    Incoming(Incoming, Arc<Notify>, Option<(Arc<PoolState>, usize)>),
    Empty,
}

impl ReqBody {
    fn finished(&self) {
        if let ReqBody::Incoming(_, sent, _) = self {
            sent.notify_one();
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = match &mut *self {
            ReqBody::Incoming(b, _, to) => {
                let r = Pin::new(b).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some((pool, i))) = (&r, to.as_ref()) {
                    if let Some(d) = frame.data_ref() {
                        pool.servers[*i].stats.bytes_in(d.len());
                    }
                }
                r
            }
            ReqBody::Empty => return Poll::Ready(None),
        };
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finished(),
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.finished(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Incoming(b, _, _) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Incoming(b, _, _) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Things that end with the response: the upstream connection goes back to the pool
/// when the body was read to its end, the server slot and the client's "busy" mark are
/// released in any case.
pub struct Finish {
    pub sender: Option<SendRequest<ReqBody>>,
    /// The HTTP/2 stream the response comes on (its connection takes another request
    /// once it drops).
    pub lease: Option<crate::upstream_h2::Lease>,
    pub worker: usize,
    pub slot: InFlight,
}

impl Finish {
    fn complete(&mut self) {
        // The HTTP/2 stream ended: another request may take it.
        drop(self.lease.take());
        if let Some(s) = self.sender.take() {
            let idle = self.slot.pool.cfg.timeouts.idle;
            upstream::checkin(self.slot.server(), self.worker, s, idle);
        }
    }
}

/// A response body sent to the client.
pub enum RespBody {
    Upstream {
        body: Incoming,
        finish: Option<Finish>,
        busy: Option<crate::io::Busy>,
    },
    Full {
        data: Option<Bytes>,
        busy: Option<crate::io::Busy>,
    },
}

impl RespBody {
    pub fn full(data: Bytes, busy: Option<crate::io::Busy>) -> RespBody {
        RespBody::Full {
            data: Some(data),
            busy,
        }
    }

    fn done(&mut self) {
        match self {
            RespBody::Upstream { finish, busy, .. } => {
                if let Some(mut f) = finish.take() {
                    f.complete();
                }
                busy.take();
            }
            RespBody::Full { busy, .. } => {
                busy.take();
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = match this {
            RespBody::Upstream { body, .. } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => this.done(),
                    Poll::Ready(Some(Ok(frame))) => {
                        if let RespBody::Upstream { body, finish, .. } = this {
                            if let (Some(d), Some(f)) = (frame.data_ref(), finish.as_ref()) {
                                f.slot.server().stats.bytes_out(d.len());
                            }
                            if body.is_end_stream() {
                                this.done();
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // The upstream connection is broken: do not reuse it.
                        if let RespBody::Upstream { finish, .. } = this {
                            if let Some(f) = finish.as_mut() {
                                f.sender = None;
                            }
                        }
                        this.done();
                    }
                    Poll::Pending => {}
                }
                r
            }
            RespBody::Full { data, .. } => {
                let d = data.take();
                let r = Poll::Ready(d.map(|d| Ok(Frame::data(d))));
                this.done();
                r
            }
        };
        r
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { body, .. } => body.is_end_stream(),
            RespBody::Full { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { body, .. } => body.size_hint(),
            RespBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // Not read to its end: the connection is not reused (Finish drops the sender).
        if let RespBody::Upstream { finish, .. } = self {
            if let Some(f) = finish.as_mut() {
                f.sender = None;
            }
        }
    }
}
