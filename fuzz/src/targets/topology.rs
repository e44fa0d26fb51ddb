//! The config parsers (a `rampart lb` file and a topology file) on arbitrary text: never a
//! panic; every error names the file and a position inside the text (or none, for
//! something missing as a whole); a file that is not TOML at all gets positions.

use rampart_topology::lb::LbConfig;
use rampart_topology::{ConfigError, Source, Topology};

const FILE: &str = "fuzz.toml";

fn check(text: &str, e: &ConfigError, syntax: bool) {
    assert!(!e.diagnostics.is_empty());
    let lines: Vec<&str> = text.split('\n').collect();
    for d in &e.diagnostics {
        assert_eq!(d.file.to_str(), Some(FILE));
        let shown = d.to_string();
        assert!(
            !d.message.trim().is_empty(),
            "an empty message: {shown:?} in {e:?}"
        );
        if d.line == 0 {
            assert_eq!(d.col, 0);
            assert!(!syntax, "a syntax error without a position: {shown}");
            assert!(shown.starts_with(&format!("{FILE}: ")), "{shown}");
        } else {
            assert!(d.line <= lines.len(), "{shown} past the last line");
            let width = lines[d.line - 1].chars().count();
            assert!(
                d.col >= 1 && d.col <= width + 1,
                "{shown} past the line's end ({width})"
            );
            assert!(
                shown.starts_with(&format!("{FILE}:{}:{}: ", d.line, d.col)),
                "{shown}"
            );
        }
    }
}

/// One input: panics on what the target exists to find.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let syntax = text.parse::<toml::Table>().is_err();
    let src = Source::new(FILE, text.to_string());
    match LbConfig::from_source(&src) {
        Ok(_) => assert!(!syntax),
        Err(e) => check(&text, &e, syntax),
    }
    match Topology::from_source(&src) {
        Ok(_) => assert!(!syntax),
        Err(e) => check(&text, &e, syntax),
    }
}
