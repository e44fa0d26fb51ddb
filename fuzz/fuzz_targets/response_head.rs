//! The fast path's response-head parser on arbitrary bytes. The first byte's low bits say
//! how it is asked (1: the request was a HEAD, 2: the client connection closes anyway,
//! 4: set HSTS); the rest is the response. Never a panic; a head it takes is rendered to
//! the client as one strict head with one framing that says what will be forwarded, no
//! hop-by-hop field, `connection: close` exactly when the client connection closes; a
//! response framed twice never leaves its connection reusable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::targets::response_head::run(data));
