//! The one error type of `rampart-coord`: callers decide on `is_unavailable()`.

use std::time::Duration;

/// What went wrong talking to etcd.
///
/// The split that matters to callers is [`CoordError::is_unavailable`]: etcd could not be
/// reached or did not answer within the deadline, so the outcome of a write is *unknown* and
/// the caller retries with backoff (and a lease holder must assume it lost its lease when the
/// lease's TTL passes without a successful keepalive). Every other kind is a definite answer.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The call did not finish within its deadline (etcd down, partitioned or overloaded).
    #[error("etcd {op} timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    /// etcd could not be reached or dropped the connection, or has no leader.
    #[error("etcd unavailable during {op}: {detail}")]
    Unavailable { op: &'static str, detail: String },
    /// etcd answered with an error (bad argument, permission, unknown lease...).
    #[error("etcd rejected {op}: {detail}")]
    Rejected { op: &'static str, detail: String },
    /// The options given to [`crate::Coord::connect`] are invalid (e.g. a malformed endpoint URL).
    #[error("invalid etcd client options: {0}")]
    Config(String),
    /// A stored value could not be decoded (e.g. a service record that is not JSON).
    #[error("cannot decode the value at {key}: {detail}")]
    Decode { key: String, detail: String },
}

impl CoordError {
    /// True when the outcome is unknown because etcd was not reachable in time:
    /// retry with backoff. False for definite answers.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CoordError::Timeout { .. } | CoordError::Unavailable { .. }
        )
    }

    /// True when the request surely never reached a member that could apply it: the
    /// connection could not be made, or the member has no raft leader. Repeating such a
    /// request elsewhere cannot apply it twice.
    pub(crate) fn request_not_sent(&self) -> bool {
        match self {
            CoordError::Unavailable { detail, .. } => {
                let d = detail.to_ascii_lowercase();
                d.contains("connect") || d.contains("no leader") || d.contains("connection refused")
            }
            _ => false,
        }
    }

    pub(crate) fn from_etcd(op: &'static str, e: etcd_client::Error) -> CoordError {
        use etcd_client::Error as E;
        use tonic_code::is_unavailable_code;
        match e {
            E::TransportError(t) => CoordError::Unavailable {
                op,
                detail: t.to_string(),
            },
            E::IoError(io) => CoordError::Unavailable {
                op,
                detail: io.to_string(),
            },
            E::GRpcStatus(s) if is_unavailable_code(s.code()) => CoordError::Unavailable {
                op,
                detail: format!("{:?}: {}", s.code(), s.message()),
            },
            E::GRpcStatus(s) => CoordError::Rejected {
                op,
                detail: format!("{:?}: {}", s.code(), s.message()),
            },
            // Stream-level failures (the request channel of a watch or keepalive stream closed):
            // the connection went away under us.
            E::WatchError(m) | E::LeaseKeepAliveError(m) => {
                CoordError::Unavailable { op, detail: m }
            }
            E::InvalidArgs(m) => CoordError::Config(m),
            E::InvalidUri(u) => CoordError::Config(u.to_string()),
            other => CoordError::Rejected {
                op,
                detail: other.to_string(),
            },
        }
    }
}

mod tonic_code {
    use tonic::Code;

    /// gRPC codes that mean "the server could not be reached or could not decide now".
    /// `Unknown` is included: hyper reports a connection torn down mid-request that way.
    pub(super) fn is_unavailable_code(c: Code) -> bool {
        matches!(
            c,
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_unavailable_are_retryable_others_not() {
        let t = CoordError::Timeout {
            op: "get",
            timeout: Duration::from_secs(1),
        };
        assert!(t.is_unavailable());
        let u = CoordError::from_etcd(
            "put",
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("down")),
        );
        assert!(u.is_unavailable(), "{u}");
        let r = CoordError::from_etcd(
            "put",
            etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("bad")),
        );
        assert!(!r.is_unavailable(), "{r}");
        assert!(!CoordError::Config("x".into()).is_unavailable());
    }
}
