//! The body decoder (Content-Length and chunked) fed the same bytes whole and in random
//! pieces: the same verdict and the same length; it stops exactly at the body's end (a
//! Content-Length's, or where an independent chunked reader finds the last CRLF), and
//! never takes a byte of what follows. Input: a control byte (bit 0: Content-Length of
//! the other bits, else chunked), a seed for the cuts, then the bytes as they arrive.

use crate::show;
use rampart_lb::fuzzing::{decode_body, Decoded, Framing};

/// Where a chunked body starting at `b[0]` ends (RFC 9112 section 7.1, read loosely:
/// a size line is hex digits then anything up to CRLF, a trailer anything up to CRLF).
fn chunked_end(b: &[u8]) -> Option<usize> {
    let crlf = |from: usize| {
        b.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let mut i = 0;
    loop {
        let le = crlf(i)?;
        let digits = b[i..le]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if digits == 0 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&b[i..i + digits]).ok()?, 16).ok()?;
        i = le + 2;
        if size == 0 {
            loop {
                let le = crlf(i)?;
                if le == i {
                    return Some(i + 2);
                }
                i = le + 2;
            }
        }
        i = i.checked_add(usize::try_from(size).ok()?)?;
        if b.get(i..i.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        i += 2;
    }
}

fn consumed(d: &Decoded) -> usize {
    d.taken.iter().sum()
}

/// One input: panics on what the target exists to find.
pub fn run(input: &[u8]) {
    let [ctl, seed, body @ ..] = input else {
        return;
    };
    let framing = if ctl & 1 == 1 {
        Framing::Length(u64::from(ctl >> 1))
    } else {
        Framing::Chunked
    };
    // Pieces of 0 to 15 bytes, from a xorshift of the seed.
    let mut x = u32::from(*seed) | 0x100;
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < body.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = ((x % 16) as usize).min(body.len() - at);
        pieces.push(&body[at..at + n]);
        at += n;
    }
    let whole = decode_body(framing, &[body]);
    let split = decode_body(framing, &pieces);
    let says = || {
        format!(
            "{framing:?} {}: whole {whole:?}, split {split:?}",
            show(body)
        )
    };
    assert_eq!(
        (whole.bad, whole.done),
        (split.bad, split.done),
        "{}",
        says()
    );
    if whole.bad {
        return;
    }
    assert_eq!(consumed(&whole), consumed(&split), "{}", says());
    // It takes all of a piece unless the body ends inside it.
    for (i, (k, p)) in split.taken.iter().zip(&pieces).enumerate() {
        assert!(*k <= p.len());
        assert!(
            *k == p.len() || (split.done && i + 1 == split.taken.len()),
            "{}",
            says()
        );
    }
    let c = consumed(&whole);
    if !whole.done {
        assert_eq!(c, body.len(), "{}", says());
        if let Framing::Length(n) = framing {
            assert!((c as u64) < n);
        }
        return;
    }
    match framing {
        Framing::Length(n) => assert_eq!(c as u64, n.min(body.len() as u64), "{}", says()),
        _ => assert_eq!(chunked_end(body), Some(c), "{}", says()),
    }
    // Exactly the body: it ends with its last byte, not before.
    if c > 0 {
        let end = decode_body(framing, &[&body[..c]]);
        assert!(end.done && consumed(&end) == c, "{}", says());
        let short = decode_body(framing, &[&body[..c - 1]]);
        assert!(!short.done && !short.bad, "{}", says());
    }
}
