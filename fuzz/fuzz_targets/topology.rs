//! The config parsers (a `rampart lb` file and a topology file) on arbitrary text: never a
//! panic; every error names the file and a position inside the text (or none, for
//! something missing as a whole); a file that is not TOML at all gets positions.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::targets::topology::run(data));
