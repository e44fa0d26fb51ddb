//! The fast path's request-head parser against a reference reading (httparse's tokens and
//! the RFC 9110/9112 rules, in src/reference.rs). It fails where the difference matters:
//! the codec takes (or hands to hyper, past its own checks) a request the reference
//! refuses for its framing, its Host or its target; or takes one with another head
//! length, body framing or destination; or renders an upstream head that the reference
//! reads with another framing or Host. The codec refusing more than the reference is
//! allowed (it is stricter on purpose, e.g. `Transfer-Encoding: gzip, chunked`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::targets::request_differential::run(data));
