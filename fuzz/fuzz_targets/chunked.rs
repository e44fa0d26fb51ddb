//! The body decoder (Content-Length and chunked) fed the same bytes whole and in random
//! pieces: the same verdict and the same length; it stops exactly at the body's end (a
//! Content-Length's, or where an independent chunked reader finds the last CRLF), and
//! never takes a byte of what follows. Input: a control byte (bit 0: Content-Length of
//! the other bits, else chunked), a seed for the cuts, then the bytes as they arrive.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::targets::chunked::run(data));
