//! The head scanner: a request or status line and its header fields, found and classified
//! in one pass.
//!
//! The fast path takes only the strict shape clients and servers send in practice: single
//! spaces in the first line, CRLF line ends, fields `name ":" OWS value CRLF` with no
//! whitespace after the value, no byte outside ASCII in the first line. Anything else (a bare
//! LF, an incomplete head, obs-text, a byte either would refuse) goes to httparse, whose
//! reading is the reference: on every input the fast path takes, httparse reads the same
//! line, the same fields at the same offsets and the same head length ([`check_agrees`], run
//! by a property test here and by the `head_scan` fuzz target). The fast path never refuses
//! anything itself, so every refusal and its status stay httparse's.

use std::cell::RefCell;

use crate::token::is_tchar;

/// Most header fields in a head; more get 431 (request) or 502 (response).
pub(super) const MAX_HEADERS: usize = 128;

/// A header name's meaning to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum H {
    Other,
    /// Always dropped (hop-by-hop).
    Hop,
    Connection,
    ContentLength,
    TransferEncoding,
    Host,
    Upgrade,
    Expect,
    Xff,
    Xfp,
    Xfh,
    /// `Forwarded` (RFC 7239): kept from trusted peers only.
    Fwd,
    /// `X-Real-IP`: kept from trusted peers, else set to the peer's address.
    Xri,
    Hsts,
}

/// `n`, as long as `l`, with every byte ORed with `0x20` is `l`: compared a word at a time
/// (the last word overlapping the one before when the length is no multiple of its size).
#[inline(always)]
fn is_lower(n: &[u8], l: &[u8]) -> bool {
    fn w8(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    }
    fn w4(b: &[u8], at: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(a)
    }
    let len = l.len();
    if n.len() != len {
        return false;
    }
    if len >= 8 {
        let mut at = 0;
        while at + 8 < len {
            if w8(n, at) | 0x2020_2020_2020_2020 != w8(l, at) {
                return false;
            }
            at += 8;
        }
        w8(n, len - 8) | 0x2020_2020_2020_2020 == w8(l, len - 8)
    } else if len >= 4 {
        w4(n, 0) | 0x2020_2020 == w4(l, 0) && w4(n, len - 4) | 0x2020_2020 == w4(l, len - 4)
    } else {
        n.iter().zip(l).all(|(&b, &l)| b | 0x20 == l)
    }
}

pub(super) fn classify(n: &[u8]) -> H {
    // Every name below is lowercase letters and `-`, and `n` is a token (the scanner's, and
    // the `http` crate's field names are): then `b | 0x20` is `b` lowercased, and only `-`
    // itself turns into `-` (carriage return, the other byte that would, is no token
    // character). One OR a byte (a word at a time) instead of lowercasing both sides.
    let is = |s: &str| is_lower(n, s.as_bytes());
    match n.len() {
        2 if is("te") => H::Hop,
        4 if is("host") => H::Host,
        6 if is("expect") => H::Expect,
        7 if is("upgrade") => H::Upgrade,
        7 if is("trailer") => H::Hop,
        9 if is("forwarded") => H::Fwd,
        9 if is("x-real-ip") => H::Xri,
        10 if is("connection") => H::Connection,
        10 if is("keep-alive") => H::Hop,
        14 if is("content-length") => H::ContentLength,
        15 if is("x-forwarded-for") => H::Xff,
        16 if is("proxy-connection") => H::Hop,
        16 if is("x-forwarded-host") => H::Xfh,
        17 if is("transfer-encoding") => H::TransferEncoding,
        17 if is("x-forwarded-proto") => H::Xfp,
        18 if is("proxy-authenticate") => H::Hop,
        19 if is("proxy-authorization") => H::Hop,
        25 if is("strict-transport-security") => H::Hsts,
        _ => H::Other,
    }
}

/// One header field of a scanned head, by offsets into the head (no lifetime, so one
/// buffer of them is reused by every head a worker thread scans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Field {
    name: u32,
    name_end: u32,
    value: u32,
    value_end: u32,
    /// Where the field's line ends (after its CRLF) when the line is exactly
    /// `name ":" OWS value CRLF`, so that it can be copied as it came; else 0.
    line_end: u32,
    pub(super) kind: H,
}

impl Field {
    #[inline]
    pub(super) fn name<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        data.get(self.name as usize..self.name_end as usize)
            .unwrap_or_default()
    }

    #[inline]
    pub(super) fn value<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        data.get(self.value as usize..self.value_end as usize)
            .unwrap_or_default()
    }

    /// The field's line in the head, its CRLF included, when it can be copied as it came.
    #[inline]
    pub(super) fn line(&self) -> Option<std::ops::Range<usize>> {
        (self.line_end != 0).then_some(self.name as usize..self.line_end as usize)
    }
}

thread_local! {
    /// The fields of the head being parsed on this thread (heads are parsed one at a time
    /// per thread, never re-entered): the buffer keeps its capacity, no allocation per head.
    static FIELDS: RefCell<Vec<Field>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's field buffer (emptied).
#[inline]
pub(super) fn with_fields<R>(f: impl FnOnce(&mut Vec<Field>) -> R) -> R {
    FIELDS.with_borrow_mut(|v| {
        v.clear();
        f(v)
    })
}

/// A request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ReqLine<'a> {
    /// Token characters.
    pub(super) method: &'a [u8],
    /// As it came (visible ASCII on the fast path; httparse's reading takes obs-text too).
    pub(super) target: &'a [u8],
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub(super) version: u8,
    pub(super) head_len: usize,
}

/// A status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StatusLine<'a> {
    pub(super) code: u16,
    /// As it came (httparse's reading: empty when it holds obs-text).
    pub(super) reason: &'a [u8],
    pub(super) version: u8,
    /// Where the line ends (after its CRLF) when it is exactly `HTTP/1.x DDD reason CRLF`,
    /// so that it can be copied as it came (with the version rewritten).
    pub(super) line_end: Option<usize>,
    pub(super) head_len: usize,
}

/// A scan: complete, or `None` when the head is not all there yet; the error is httparse's.
pub(super) type Scanned<T> = Result<Option<T>, httparse::Error>;

/// Scan the request head at the start of `data` into `fields` (emptied first).
#[inline]
pub(super) fn request<'a>(data: &'a [u8], fields: &mut Vec<Field>) -> Scanned<ReqLine<'a>> {
    fields.clear();
    if let Some(line) = fast_request(data, fields) {
        return Ok(Some(line));
    }
    fields.clear();
    slow_request(data, fields)
}

/// Scan the response head at the start of `data` into `fields` (emptied first).
#[inline]
pub(super) fn response<'a>(data: &'a [u8], fields: &mut Vec<Field>) -> Scanned<StatusLine<'a>> {
    fields.clear();
    if let Some(line) = fast_response(data, fields) {
        return Ok(Some(line));
    }
    fields.clear();
    slow_response(data, fields)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The 8 bytes at `at`, little-endian, when there are 8.
#[inline(always)]
fn word(data: &[u8], at: usize) -> Option<u64> {
    let w: [u8; 8] = data.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// The high bit of each byte of `x` (little-endian) that is outside `lo..=hi` (`1 <= lo`,
/// `hi <= 0x7e`). A byte below 0x80 adds without a carry into the next, so only a byte that
/// is itself flagged can disturb the flags above it: the lowest flag is exactly the first
/// byte outside the range.
#[inline(always)]
fn outside(x: u64, lo: u8, hi: u8) -> u64 {
    let above = x.wrapping_add(ONES * u64::from(0x7f - hi));
    let from_lo = x.wrapping_add(ONES * u64::from(0x80 - lo));
    (x | above | !from_lo) & HIGH
}

/// From `at`, the end of a run of bytes in `lo..=hi` or, when `tab`, HTAB: eight bytes at a
/// time, byte by byte only in the last seven of `data`.
#[inline(always)]
fn run(data: &[u8], mut at: usize, lo: u8, hi: u8, tab: bool) -> usize {
    loop {
        match word(data, at) {
            Some(x) => {
                let bad = outside(x, lo, hi);
                if bad == 0 {
                    at += 8;
                    continue;
                }
                at += (bad.trailing_zeros() / 8) as usize;
            }
            None => {
                while let Some(&b) = data.get(at) {
                    if !((lo..=hi).contains(&b) || (tab && b == b'\t')) {
                        break;
                    }
                    at += 1;
                }
                return at;
            }
        }
        if !(tab && data.get(at) == Some(&b'\t')) {
            return at;
        }
        at += 1;
    }
}

/// From `at`, the end of a run of bytes a strict field value or reason phrase may hold
/// (SP, HTAB and visible ASCII; obs-text ends the run, and the fast path gives up there).
#[inline(always)]
fn text_run(data: &[u8], at: usize) -> usize {
    run(data, at, 0x20, 0x7e, true)
}

/// From `at`, the end of a run of visible ASCII (a request target's bytes).
#[inline(always)]
fn visible_run(data: &[u8], at: usize) -> usize {
    run(data, at, 0x21, 0x7e, false)
}

/// From `at`, the end of a run of token bytes.
#[inline(always)]
fn token_run(data: &[u8], at: usize) -> usize {
    match data.get(at..) {
        Some(rest) => at + rest.iter().take_while(|b| is_tchar(**b)).count(),
        None => at,
    }
}

/// The strict fields from `at` to the empty line that ends the head: the head's length, or
/// `None` when anything is not in the strict shape (or the head is not all there).
#[inline(always)]
fn fast_fields(data: &[u8], mut at: usize, fields: &mut Vec<Field>) -> Option<usize> {
    // Offsets are `u32`: a head the fast path takes is far shorter (and longer input is
    // left to the slow path, which refuses it).
    if data.len() > u32::MAX as usize {
        return None;
    }
    loop {
        if *data.get(at)? == b'\r' {
            return (*data.get(at + 1)? == b'\n').then_some(at + 2);
        }
        let name = at;
        let name_end = token_run(data, at);
        if name_end == name || *data.get(name_end)? != b':' {
            return None;
        }
        at = name_end + 1;
        while let Some(b' ' | b'\t') = data.get(at) {
            at += 1;
        }
        let value = at;
        let value_end = text_run(data, at);
        let (Some(b'\r'), Some(b'\n')) = (data.get(value_end), data.get(value_end + 1)) else {
            return None;
        };
        // No whitespace after the value (httparse trims it; the slow path keeps to that).
        if value_end > value && matches!(data.get(value_end - 1), Some(b' ' | b'\t')) {
            return None;
        }
        if fields.len() == MAX_HEADERS {
            return None;
        }
        let kind = classify(data.get(name..name_end)?);
        fields.push(Field {
            name: name as u32,
            name_end: name_end as u32,
            value: value as u32,
            value_end: value_end as u32,
            line_end: (value_end + 2) as u32,
            kind,
        });
        at = value_end + 2;
    }
}

/// `HTTP/1.1` or `HTTP/1.0` at `at`: its minor version.
#[inline(always)]
fn version(data: &[u8], at: usize) -> Option<u8> {
    match word(data, at)? {
        v if v == u64::from_le_bytes(*b"HTTP/1.1") => Some(1),
        v if v == u64::from_le_bytes(*b"HTTP/1.0") => Some(0),
        _ => None,
    }
}

#[inline]
fn fast_request<'a>(data: &'a [u8], fields: &mut Vec<Field>) -> Option<ReqLine<'a>> {
    let method_end = if data.starts_with(b"GET ") {
        3
    } else {
        token_run(data, 0)
    };
    if method_end == 0 || *data.get(method_end)? != b' ' {
        return None;
    }
    let target = method_end + 1;
    let target_end = visible_run(data, target);
    if target_end == target || *data.get(target_end)? != b' ' {
        return None;
    }
    let version = version(data, target_end + 1)?;
    let eol = target_end + 9;
    let (Some(b'\r'), Some(b'\n')) = (data.get(eol), data.get(eol + 1)) else {
        return None;
    };
    let head_len = fast_fields(data, eol + 2, fields)?;
    Some(ReqLine {
        method: data.get(..method_end)?,
        target: data.get(target..target_end)?,
        version,
        head_len,
    })
}

#[inline]
fn fast_response<'a>(data: &'a [u8], fields: &mut Vec<Field>) -> Option<StatusLine<'a>> {
    let version = version(data, 0)?;
    let [b' ', a, b, c, b' '] = *data.get(8..13)? else {
        return None;
    };
    if !(a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit()) {
        return None;
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    let reason_end = text_run(data, 13);
    let (Some(b'\r'), Some(b'\n')) = (data.get(reason_end), data.get(reason_end + 1)) else {
        return None;
    };
    let head_len = fast_fields(data, reason_end + 2, fields)?;
    Some(StatusLine {
        code,
        reason: data.get(13..reason_end)?,
        version,
        line_end: Some(reason_end + 2),
        head_len,
    })
}

/// httparse's fields as [`Field`]s: offsets from the slices' addresses in `data`, each line
/// checked for the shape that lets it be copied as it came.
fn from_httparse(data: &[u8], headers: &[httparse::Header<'_>], fields: &mut Vec<Field>) {
    let base = data.as_ptr() as usize;
    for h in headers {
        let name = (h.name.as_ptr() as usize).wrapping_sub(base);
        let name_end = name + h.name.len();
        let value = (h.value.as_ptr() as usize).wrapping_sub(base);
        let value_end = value + h.value.len();
        // `name ":" OWS value CRLF`, exactly, in `data`.
        let shaped = data.get(name_end) == Some(&b':')
            && data
                .get(name_end + 1..value)
                .is_some_and(|ows| ows.iter().all(|b| *b == b' ' || *b == b'\t'))
            && data.get(value_end..value_end + 2) == Some(b"\r\n");
        fields.push(Field {
            name: name as u32,
            name_end: name_end as u32,
            value: value as u32,
            value_end: value_end as u32,
            line_end: if shaped { (value_end + 2) as u32 } else { 0 },
            kind: classify(h.name.as_bytes()),
        });
    }
}

#[cold]
fn slow_request<'a>(data: &'a [u8], fields: &mut Vec<Field>) -> Scanned<ReqLine<'a>> {
    if data.len() > u32::MAX as usize {
        return Err(httparse::Error::TooManyHeaders);
    }
    // Uninitialized: zeroing 4 KiB of headers per head showed in profiles.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(data, &mut headers)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(httparse::Error::Token);
    };
    from_httparse(data, req.headers, fields);
    Ok(Some(ReqLine {
        method: method.as_bytes(),
        target: target.as_bytes(),
        version,
        head_len,
    }))
}

#[cold]
fn slow_response<'a>(data: &'a [u8], fields: &mut Vec<Field>) -> Scanned<StatusLine<'a>> {
    if data.len() > u32::MAX as usize {
        return Err(httparse::Error::TooManyHeaders);
    }
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        data,
        &mut headers,
    )? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(httparse::Error::Status);
    };
    from_httparse(data, resp.headers, fields);
    let reason = resp.reason.unwrap_or("").as_bytes();
    // The line is `HTTP/1.x DDD reason CRLF` exactly when the reason is all there, where
    // the strict line would have it.
    let end = 13 + reason.len();
    let strict = data.starts_with(b"HTTP/1.")
        && data.get(8) == Some(&b' ')
        && data.get(12) == Some(&b' ')
        && data.get(13..end) == Some(reason)
        && data.get(end..end + 2) == Some(b"\r\n");
    Ok(Some(StatusLine {
        code,
        reason,
        version,
        line_end: strict.then_some(end + 2),
        head_len,
    }))
}

/// Panics unless the fast path, wherever it takes `data` (as a request head and as a response
/// head), reads exactly what httparse reads. Returns whether the fast path took it as
/// (request, response).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn check_agrees(data: &[u8]) -> (bool, bool) {
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    let req = fast_request(data, &mut fast);
    if let Some(line) = req {
        let want = slow_request(data, &mut slow);
        assert_eq!(
            want,
            Ok(Some(line)),
            "request line of {:?}",
            data.escape_ascii().to_string()
        );
        assert_eq!(
            fast,
            slow,
            "request fields of {:?}",
            data.escape_ascii().to_string()
        );
    }
    fast.clear();
    slow.clear();
    let resp = fast_response(data, &mut fast);
    if let Some(line) = resp {
        let want = slow_response(data, &mut slow);
        assert_eq!(
            want,
            Ok(Some(line)),
            "status line of {:?}",
            data.escape_ascii().to_string()
        );
        assert_eq!(
            fast,
            slow,
            "response fields of {:?}",
            data.escape_ascii().to_string()
        );
    }
    (req.is_some(), resp.is_some())
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
