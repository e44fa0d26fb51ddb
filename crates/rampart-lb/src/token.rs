//! The `token` characters of HTTP (RFC 9110 section 5.6.2): methods, field names,
//! `Forwarded` values. One table for every place that asks (the head scanner, the chunked
//! trailers, the `Forwarded` element's quoting).

/// Whether `b` is a token character.
#[inline(always)]
pub(crate) fn is_tchar(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// The token characters, by value: `!#$%&'*+-.^_`|~`, digits and letters.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_characters_are_rfc_9110s() {
        let want: Vec<u8> = (0..=255u8)
            .filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
            .collect();
        let got: Vec<u8> = (0..=255u8).filter(|b| super::is_tchar(*b)).collect();
        assert_eq!(got, want);
        assert_eq!(got.len(), 62 + 15);
    }
}
