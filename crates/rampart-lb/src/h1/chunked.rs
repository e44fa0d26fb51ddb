//! The chunked transfer coding, scanned strictly as a body is forwarded (or decoded for
//! an HTTP/1.0 client).

use crate::token::is_tchar;

/// Where a chunked body ends, found by scanning it as it is forwarded (unchanged:
/// chunk extensions and trailers pass through).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    pub(super) st: CSt,
    pub(super) size: u64,
    pub(super) digits: u8,
    pub(super) line: usize,
    /// The trailer section's bytes, when kept ([`Chunked::keeping_trailers`]).
    pub(super) trailers: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum CSt {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, `;` or the CR may follow.
    ExtWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// A chunked body that does not follow the grammar.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk;

/// Longest chunk-size line (with extensions), and all trailers together.
pub(super) const MAX_CHUNK_LINE: usize = 4096;
pub(super) const MAX_TRAILERS: usize = 64 * 1024;

impl Chunked {
    pub(crate) fn done(&self) -> bool {
        self.st == CSt::Done
    }

    /// A scanner that keeps the trailer section (`name: value` lines with their CRLF).
    pub(crate) fn keeping_trailers() -> Chunked {
        Chunked {
            trailers: Some(Vec::new()),
            ..Chunked::default()
        }
    }

    /// The trailer section kept so far (empty when none, or not kept).
    pub(crate) fn trailers(&self) -> &[u8] {
        self.trailers.as_deref().unwrap_or_default()
    }

    /// How many bytes at the start of `data` belong to the body: all of them, unless it
    /// ends inside.
    pub(crate) fn scan(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        self.scan_with(data, |_| {})
    }

    /// [`Chunked::scan`], handing `on_data` each run of chunk data (the body without its
    /// framing).
    pub(crate) fn scan_with(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                CSt::Done => return Ok(i),
                CSt::Data => {
                    let take = self.size.min((data.len() - i) as u64);
                    on_data(&data[i..i + take as usize]);
                    i += take as usize;
                    self.size -= take;
                    if self.size == 0 {
                        self.st = CSt::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = data[i];
            i += 1;
            if let Some(t) = self.trailers.as_mut() {
                if matches!(self.st, CSt::TrailerName | CSt::Trailer | CSt::TrailerLf)
                    || (self.st == CSt::TrailerStart && b != b'\r')
                {
                    t.push(b);
                }
            }
            match self.st {
                CSt::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(BadChunk);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                        // At most 2^52 - 1, as HAProxy: a server in a language whose
                        // integers are doubles must read the same size.
                        if self.size >> 52 != 0 {
                            return Err(BadChunk);
                        }
                    }
                    b';' if self.digits > 0 => self.st = CSt::Ext,
                    b' ' | b'\t' if self.digits > 0 => self.st = CSt::ExtWs,
                    b'\r' if self.digits > 0 => self.st = CSt::SizeLf,
                    _ => return Err(BadChunk),
                },
                // Strict framing, since the bytes go upstream as they came: CRLF only (a
                // bare LF or CR is where two parsers disagree), visible characters in
                // extensions, `name: value` trailers without folding.
                CSt::ExtWs | CSt::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(BadChunk);
                    }
                    match b {
                        b'\r' => self.st = CSt::SizeLf,
                        b' ' | b'\t' => {}
                        b';' => self.st = CSt::Ext,
                        _ if self.st == CSt::ExtWs => return Err(BadChunk),
                        0x21..=0x7e | 0x80..=0xff => {}
                        _ => return Err(BadChunk),
                    }
                }
                CSt::SizeLf if b == b'\n' => self.line_end(),
                CSt::DataCr if b == b'\r' => self.st = CSt::DataLf,
                CSt::DataLf if b == b'\n' => self.st = CSt::Size,
                CSt::TrailerStart if b == b'\r' => self.st = CSt::FinalLf,
                CSt::TrailerStart | CSt::TrailerName if is_tchar(b) => {
                    self.st = CSt::TrailerName;
                    self.trailer_byte()?;
                }
                CSt::TrailerName if b == b':' => {
                    self.st = CSt::Trailer;
                    self.trailer_byte()?;
                }
                CSt::Trailer => {
                    self.trailer_byte()?;
                    match b {
                        b'\r' => self.st = CSt::TrailerLf,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(BadChunk),
                    }
                }
                CSt::TrailerLf if b == b'\n' => self.st = CSt::TrailerStart,
                CSt::FinalLf if b == b'\n' => self.st = CSt::Done,
                _ => return Err(BadChunk),
            }
        }
        Ok(i)
    }

    pub(super) fn trailer_byte(&mut self) -> Result<(), BadChunk> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(BadChunk);
        }
        Ok(())
    }

    pub(super) fn line_end(&mut self) {
        self.digits = 0;
        if self.size == 0 {
            self.line = 0;
            self.st = CSt::TrailerStart;
        } else {
            self.line = 0;
            self.st = CSt::Data;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunked_body(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
        let mut b = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            b.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            b.extend_from_slice(c);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n");
        if trailer {
            b.extend_from_slice(b"x-sum: 7\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b
    }

    #[test]
    fn chunked_scan_finds_the_end_and_leaves_what_follows() {
        let mut body = chunked_body(&[b"hello".to_vec(), vec![b'x'; 300]], true);
        let n = body.len();
        body.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut c = Chunked::default();
        assert_eq!(c.scan(&body), Ok(n));
        assert!(c.done());
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn chunked_scan_is_independent_of_how_bytes_arrive(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let body = chunked_body(&chunks, trailer);
            let mut data = body.clone();
            data.extend_from_slice(b"NEXT");
            let mut c = Chunked::default();
            let mut pos = 0;
            let mut cuts = cuts.into_iter().cycle();
            while !c.done() && pos < data.len() {
                let end = (pos + cuts.next().unwrap()).min(data.len());
                let k = c.scan(&data[pos..end]).unwrap();
                pos += k;
                if k < end - (pos - k) {
                    break;
                }
            }
            prop_assert!(c.done());
            prop_assert_eq!(pos, body.len());
        }
    }

    #[test]
    fn trailers_are_kept_when_asked_for() {
        let body = b"5\r\nhello\r\n0;x\r\nx-a: 1\r\nx-b:\r\n\r\nNEXT";
        let mut c = Chunked::keeping_trailers();
        let mut n = 0;
        for part in body.chunks(3) {
            n += c.scan(part).unwrap();
            if c.done() {
                break;
            }
        }
        assert_eq!(n, body.len() - 4);
        assert_eq!(c.trailers(), b"x-a: 1\r\nx-b:\r\n");
        let mut c = Chunked::default();
        c.scan(body).unwrap();
        assert_eq!(c.trailers(), b"");
    }

    #[test]
    fn chunk_framing_is_strict_crlf_visible_extensions_and_field_trailers() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5;a\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"0\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n x: 1\r\n\r\n",
            b"0\r\nx : 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
            b"0\r\nx: \x01\r\n\r\n",
            b"0\r\nx: 1\r\r\n",
            b"10000000000000\r\n",
            b"0000000000000000A\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"5 ;a=b\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=\"q\";b\r\nhello\r\n0;x\r\nx-a: 1\r\nx-b:\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"00000000000000A\r\n0123456789\r\n0\r\n\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(good),
                Ok(good.len()),
                "{:?}",
                String::from_utf8_lossy(good)
            );
            assert!(c.done());
        }
    }
}
