//! rampart-dbroute against a real PostgreSQL primary and streaming replica.

mod etcd;
mod routing;
