//! Read-your-writes tokens: the (timeline, WAL position) a write reached.

use std::fmt;
use std::str::FromStr;

/// The position of a committed write: the primary's timeline and its WAL insert position
/// read just after the commit. A replica that replayed up to `lsn` on `timeline` has the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    pub timeline: u32,
    pub lsn: u64,
}

/// A token string that is not `TIMELINE-LSN` in hexadecimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed read-your-writes token (expected TIMELINE-LSN in hex, e.g. 1-3000060)")]
pub struct BadToken;

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x}", self.timeline, self.lsn)
    }
}

impl FromStr for Token {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        let (tl, lsn) = s.trim().split_once('-').ok_or(BadToken)?;
        if tl.is_empty() || lsn.is_empty() || tl.len() > 8 || lsn.len() > 16 {
            return Err(BadToken);
        }
        if !tl.bytes().all(|b| b.is_ascii_hexdigit()) || !lsn.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(BadToken);
        }
        let timeline = u32::from_str_radix(tl, 16).map_err(|_| BadToken)?;
        let lsn = u64::from_str_radix(lsn, 16).map_err(|_| BadToken)?;
        if timeline == 0 {
            return Err(BadToken);
        }
        Ok(Token { timeline, lsn })
    }
}

impl Token {
    /// The later of two tokens on the same timeline; a token on a later timeline wins.
    pub fn max(self, other: Token) -> Token {
        if (other.timeline, other.lsn) > (self.timeline, self.lsn) {
            other
        } else {
            self
        }
    }
}

/// Parse PostgreSQL's `pg_lsn` text form (`16/B374D848`) into a byte position.
pub fn parse_pg_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

/// Format a byte position as PostgreSQL's `pg_lsn` text.
pub fn format_pg_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The timeline in a WAL segment file name (`000000020000000000000003` -> 2).
pub fn timeline_of_walfile(name: &str) -> Option<u32> {
    let t = name.get(..8)?;
    u32::from_str_radix(t, 16).ok().filter(|t| *t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pg_lsn_parses() {
        assert_eq!(parse_pg_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_pg_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_pg_lsn("3000060"), None);
        assert_eq!(parse_pg_lsn("x/1"), None);
        assert_eq!(format_pg_lsn((0x16 << 32) | 0xB374D848), "16/B374D848");
    }

    #[test]
    fn walfile_timeline() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000000"), None);
        assert_eq!(timeline_of_walfile("00000000000000000000000A"), None);
    }

    #[test]
    fn bad_tokens_are_rejected() {
        for s in [
            "",
            "-",
            "1-",
            "-5",
            "0-5",
            "g-1",
            "1-zz",
            "1-2-3",
            "123456789-1",
            "1-12345678901234567",
        ] {
            assert!(s.parse::<Token>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn max_prefers_later_timeline_then_lsn() {
        let a = Token {
            timeline: 1,
            lsn: 100,
        };
        let b = Token {
            timeline: 2,
            lsn: 5,
        };
        assert_eq!(a.max(b), b);
        assert_eq!(b.max(a), b);
        assert_eq!(
            a.max(Token {
                timeline: 1,
                lsn: 7
            }),
            a
        );
    }

    proptest! {
        #[test]
        fn token_round_trips(timeline in 1u32.., lsn: u64) {
            let t = Token { timeline, lsn };
            prop_assert_eq!(t.to_string().parse::<Token>(), Ok(t));
        }

        #[test]
        fn pg_lsn_round_trips(lsn: u64) {
            prop_assert_eq!(parse_pg_lsn(&format_pg_lsn(lsn)), Some(lsn));
        }

        #[test]
        fn token_parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Token>();
        }
    }
}
