//! Integration tests of `rampart db`: real etcd, real PostgreSQL 15, the real binary.
//! Build the binary first: `cargo build -p rampart`.

#![allow(clippy::unwrap_used)]

mod basic;
mod checker;
mod conditions;
mod failover;
mod fence;
mod harness;
mod jepsen;
mod kwatchdog;
mod leader_keys;
mod lease;
mod netns;
mod operate;
mod orphan;
mod partition;
mod patroni_api;
mod switchover_crash;
mod timeline;
