//! The head scanner's fast path against httparse, its reference: on any bytes the fast path
//! takes (as a request head or as a response head), httparse must read the same first line,
//! the same fields at the same offsets and the same head length (the library asserts it).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::targets::head_scan::run(data));
