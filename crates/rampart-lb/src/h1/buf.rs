//! Read buffers and head scratch vectors of the fast path, from per-thread free lists.

use std::cell::RefCell;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::MAX_HEAD;

/// Size of a read buffer when it is taken: enough for almost every head and small body.
pub(super) const SMALL: usize = 4 * 1024;
/// What a buffer grows to while streaming a body that fills it (HAProxy's `bufsize`).
pub(super) const BUF: usize = 16 * 1024;
/// Small buffers (and head scratch vectors) kept per thread for reuse: more than the
/// exchanges in flight at once under load, so that buffers are not freed and allocated
/// again per request (p99 1.20x -> 1.00x of HAProxy, CPU 0.92x -> 0.87x, in the bench);
/// at most 2 MiB per thread.
pub(super) const FREE_MAX: usize = 256;
/// Big (streaming) buffers kept per thread: at most 512 KiB.
pub(super) const FREE_MAX_BIG: usize = 32;

thread_local! {
    static FREE: RefCell<FreeList> = const { RefCell::new(FreeList::new()) };
    static FREE_SMALL: RefCell<FreeList> = const { RefCell::new(FreeList::new()) };
    static FREE_OUT: RefCell<FreeList> = const { RefCell::new(FreeList::new()) };
}

/// Spare vectors of one size, last in first out, and the fewest it held since the last
/// [`trim`]: that many were not needed for a whole interval.
pub(super) struct FreeList {
    bufs: Vec<Vec<u8>>,
    low: usize,
}

impl FreeList {
    const fn new() -> FreeList {
        FreeList {
            bufs: Vec::new(),
            low: 0,
        }
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let v = self.bufs.pop();
        self.low = self.low.min(self.bufs.len());
        v
    }

    fn push(&mut self, v: Vec<u8>, max: usize) {
        if self.bufs.len() < max {
            self.bufs.push(v);
        }
    }

    /// Free the spares no request took since the last call (the bottom of the stack,
    /// the longest unused): how many.
    fn trim(&mut self) -> usize {
        let n = self.low.min(self.bufs.len());
        self.bufs.drain(..n);
        self.low = self.bufs.len();
        n
    }
}

/// Free this thread's spare buffers that went unused since the last call. The lists are
/// sized for bursts (hundreds of exchanges at once); once the load falls, what a burst
/// left goes back to the allocator within two calls instead of staying for good (8,000
/// idle keep-alive clients after a burst held ~2 MiB of spares, 260 bytes a connection).
pub(crate) fn trim() -> usize {
    [&FREE, &FREE_SMALL, &FREE_OUT]
        .into_iter()
        .map(|l| l.try_with(|f| f.borrow_mut().trim()).unwrap_or(0))
        .sum()
}

/// [`trim`] every `every`, on the calling worker's runtime (the lists are per thread).
pub(crate) async fn trim_every(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = trim();
        if n > 0 {
            tracing::trace!(freed = n, "freed unused spare buffers");
        }
    }
}

/// A byte buffer from the thread's free lists: bytes `start..len` of `v` are unread, its
/// capacity is the room (never zeroed: reads go into the spare capacity). It starts at
/// [`SMALL`] and grows when a head needs it or a read fills it.
pub(crate) struct Buf {
    pub(super) v: Vec<u8>,
    /// (A `u32`: a buffer never grows past `MAX_HEAD + BUF`, and the 4 bytes it saves keep
    /// an idle connection's future, which holds an `Option<Buf>`, in a smaller task.)
    pub(super) start: u32,
    /// The last read filled the buffer: grow before the next one.
    pub(super) full: bool,
}

impl Buf {
    pub(super) fn take() -> Buf {
        let v = FREE_SMALL
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(SMALL));
        Buf {
            v,
            start: 0,
            full: false,
        }
    }

    pub(super) fn grow(&mut self, max: usize) {
        let cap = self.v.capacity();
        let n = if cap < BUF {
            BUF.min(max)
        } else {
            (cap * 2).min(max)
        };
        if n == BUF {
            if let Some(mut big) = FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten() {
                big.extend_from_slice(self.data());
                self.start = 0;
                let small = std::mem::replace(&mut self.v, big);
                give_back(small);
                return;
            }
        }
        self.v.reserve_exact(n.saturating_sub(self.v.len()));
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.v[self.start as usize..]
    }

    pub(super) fn len(&self) -> usize {
        self.v.len() - self.start as usize
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start as usize == self.v.len()
    }

    pub(super) fn consume(&mut self, n: usize) {
        // At most what is unread: within the buffer, so within a u32.
        self.start += n.min(self.len()) as u32;
        if self.start as usize == self.v.len() {
            self.start = 0;
            self.v.clear();
        }
    }

    /// Make room at the end (compacting, then growing up to `max`); false when full.
    pub(super) fn make_room(&mut self, max: usize) -> bool {
        if self.full && self.v.capacity() < max {
            self.full = false;
            self.grow(max);
        }
        if self.v.len() < self.v.capacity() {
            return true;
        }
        if self.start > 0 {
            self.v.drain(..self.start as usize);
            self.start = 0;
            return true;
        }
        if self.v.capacity() < max {
            self.grow(max);
            return true;
        }
        false
    }

    /// One read from `r` into the free space; 0 at end of stream.
    pub(super) async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        use bytes::BufMut;
        if !self.make_room(max) {
            return Err(io::Error::other("buffer full"));
        }
        let room = self.v.capacity() - self.v.len();
        let n = r.read_buf(&mut (&mut self.v).limit(room)).await?;
        self.full = self.v.len() == self.v.capacity();
        Ok(n)
    }
}

/// Keep a buffer of one of the two pooled sizes for reuse.
pub(super) fn give_back(mut v: Vec<u8>) {
    v.clear();
    let (list, max) = match v.capacity() {
        SMALL => (&FREE_SMALL, FREE_MAX),
        BUF => (&FREE, FREE_MAX_BIG),
        _ => return,
    };
    let _ = list.try_with(|f| f.borrow_mut().push(v, max));
}

impl Drop for Buf {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.v));
    }
}

/// A scratch vector for rendered heads, from the thread's free list.
pub(super) struct Out(pub(super) Vec<u8>);

/// Capacity of a new [`Out`]; one that grew past [`MAX_HEAD`] is not kept.
pub(super) const OUT: usize = 4096;

impl Out {
    pub(super) fn take() -> Out {
        let v = FREE_OUT
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(OUT));
        Out(v)
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.0.capacity() <= MAX_HEAD + BUF {
            let mut v = std::mem::take(&mut self.0);
            v.clear();
            let _ = FREE_OUT.try_with(|f| f.borrow_mut().push(v, FREE_MAX));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spares_unused_for_a_whole_interval_are_freed() {
        let held: Vec<Buf> = (0..3).map(|_| Buf::take()).collect();
        drop(held);
        let len = || FREE_SMALL.with(|f| f.borrow().bufs.len());
        assert_eq!(len(), 3);
        // The burst's spares were all just used: none goes at the first trim.
        trim();
        assert_eq!(len(), 3);
        // One is taken and given back in the next interval: the two never taken go.
        drop(Buf::take());
        trim();
        assert_eq!(len(), 1);
        // Nothing taken in the next one: the last goes too.
        trim();
        assert_eq!(len(), 0);
    }

    #[tokio::test]
    async fn buffers_start_small_grow_when_filled_and_are_reused() {
        let data = vec![7u8; 40 * 1024];
        let mut r = &data[..];
        let mut b = Buf::take();
        assert_eq!(b.v.capacity(), SMALL);
        // A body streamed through: each read filled the buffer, so it grows to BUF, no more.
        let mut got = 0;
        while got < data.len() {
            let n = b.read_from(&mut r, BUF).await.unwrap();
            got += n;
            b.consume(n);
        }
        assert_eq!(b.v.capacity(), BUF);
        drop(b);
        assert_eq!(Buf::take().v.capacity(), SMALL);
        // A head that does not fit grows it up to the given limit, then it is full.
        let big = vec![7u8; 2 * MAX_HEAD];
        let mut b = Buf::take();
        let mut r = &big[..];
        while let Ok(n) = b.read_from(&mut r, MAX_HEAD).await {
            assert!(n > 0);
        }
        assert_eq!((b.v.capacity(), b.len()), (MAX_HEAD, MAX_HEAD));
        assert!(b.data().iter().all(|x| *x == 7));
    }
}
