//! Integration tests of `rampart up`, `status` and `chaos`: the real rampart binary runs
//! the whole default topology (real etcd, real PostgreSQL, real rampart roles) on
//! loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod hosts;
mod lifecycle;
mod partition;
mod stack;
