//! The fast path's request-head parser on arbitrary bytes, from an untrusted client and
//! from a trusted proxy. Never a panic; a head it takes is rendered upstream as one
//! strict HTTP/1.1 head with one Host, one unambiguous framing that says what the codec
//! will forward, no hop-by-hop field, and no client-set forwarding fields from an
//! untrusted peer; what follows the head changes nothing (pipelining).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::targets::request_head::run(data));
