//! Integration tests of the topology model: every validation rule of the whole file,
//! each with the position it reports, and the audit of known designs.

#![allow(clippy::unwrap_used, clippy::new_without_default)]

mod audit;
mod validation;

use std::path::{Path, PathBuf};

use rampart_topology::default::{render, DefaultOptions, DB_PASSWORD_ENV};
use rampart_topology::{ConfigError, Source, Topology};

/// A folder with `site/` beside where the topology file would be (web roots must exist).
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        std::env::set_var(DB_PASSWORD_ENV, "test-password");
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("site")).unwrap();
        Dir(d)
    }
    pub fn file(&self) -> PathBuf {
        self.0.path().join("rampart.toml")
    }
    pub fn default_text(&self) -> String {
        render(&DefaultOptions {
            cluster: "main",
            data_dir: &self.0.path().join("data"),
            port_base: 8000,
        })
    }
    pub fn validate(&self, text: &str) -> Result<Topology, ConfigError> {
        Topology::from_source(&Source::new(self.file(), text))
    }
}

/// 1-based (line, col) of the `nth` (0-based) occurrence of `needle` in `text`.
pub fn pos(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let at = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in text"))
        .0;
    Source::new(Path::new("x"), text).position(at)
}

/// Replace exactly one occurrence (the test is wrong if the needle is not unique).
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
    text.replacen(from, to, 1)
}
