//! The seed corpus (`fuzz/corpus/<target>/`) replayed through every target's checks on
//! stable Rust, without libFuzzer: the seeds, and what fuzzing once found and was fixed,
//! stay handled. `scripts/test.sh` runs it (CI); `scripts/fuzz.sh` fuzzes (nightly).

use std::path::{Path, PathBuf};

use rampart_fuzz::targets;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 6] = [
    ("chunked", targets::chunked::run),
    ("head_scan", targets::head_scan::run),
    ("request_differential", targets::request_differential::run),
    ("request_head", targets::request_head::run),
    ("response_head", targets::response_head::run),
    ("topology", targets::topology::run),
];

fn seeds(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_seed_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut failed = Vec::new();
    let mut total = 0;
    for (name, run) in TARGETS {
        let files = seeds(&root.join(name));
        assert!(!files.is_empty(), "no seeds for {name}");
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(f.display().to_string());
            }
            total += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} seeds failed: {failed:#?}",
        failed.len()
    );
}

#[test]
fn every_target_has_its_corpus_and_nothing_else_is_there() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .expect("fuzz/corpus")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    names.sort();
    assert_eq!(dirs, names);
}
