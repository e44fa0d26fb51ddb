//! The load balancer section: listeners and pools. Owned by the lb work.
