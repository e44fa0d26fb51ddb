//! The `rampart` binary: parses the command line and calls into the library crates.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rampart", version, about = "A complete, highly available web infrastructure from one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the L7/L4 load balancer.
    Lb,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lb => Ok(()),
    }
}
