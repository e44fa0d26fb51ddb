//! Errors of the db agent.

use std::path::PathBuf;

/// What went wrong in the agent; the loop logs it and retries on the next turn.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: &'static str, detail: String },
    #[error("postgres query failed: {0}")]
    Query(String),
    #[error(transparent)]
    Coord(#[from] rampart_coord::CoordError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}
