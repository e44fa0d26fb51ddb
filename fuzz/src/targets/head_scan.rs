//! The head scanner's fast path against httparse, its reference: on any bytes the fast path
//! takes (as a request head or as a response head), httparse must read the same first line,
//! the same fields at the same offsets and the same head length (the library asserts it).

/// One input: panics on what the target exists to find.
pub fn run(data: &[u8]) {
    rampart_lb::fuzzing::scan_agrees(data);
}
