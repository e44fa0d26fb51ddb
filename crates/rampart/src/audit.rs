//! `rampart audit`: review a topology's design; exit non-zero on any error finding.

use std::path::PathBuf;

use clap::Args;
use rampart_topology::audit::{audit, has_errors, Severity};

/// Review a topology: single points of failure, security gaps, missing monitoring, each
/// with a fix. Exits with status 1 when any finding is an error.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let r = rampart_up::config::resolve(&rampart_up::config::ResolveOptions {
        config: args.config.clone(),
        ..Default::default()
    })
    .map_err(crate::up::config_error)?;
    let findings = audit(&r.topology);
    println!("audit of {}: {} finding(s)", r.origin, findings.len());
    for f in &findings {
        println!(
            "\n{:<7} [{}] {}: {}\n        fix: {}",
            f.severity.as_str().to_uppercase(),
            f.area.as_str(),
            f.code,
            f.message,
            f.fix
        );
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    println!(
        "\n{} error(s), {} warning(s), {} note(s)",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    if has_errors(&findings) {
        std::process::exit(1);
    }
    Ok(())
}
