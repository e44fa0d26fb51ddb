//! Integration tests of `rampart db`: real etcd, real PostgreSQL 15, the real binary.
//! Build the binary first: `cargo build -p rampart`.

mod basic;
mod failover;
mod harness;
