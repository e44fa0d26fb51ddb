//! Integration tests of `rampart lb`: the real binary in front of real backends on loopback.
//! Build the binary first: `cargo build -p rampart`.

#![allow(clippy::unwrap_used)]

mod acme;
mod algorithms;
mod config;
mod failures;
mod firewall;
mod h1;
mod h1_hardening;
mod lrt;
mod ocsp;
mod ops;
mod outlier;
mod pki;
mod postgres;
mod protocols;
mod routes;
mod scale;
mod support;
mod tls;
mod tls_multi;
mod tls_support;
mod tls_upstream;
mod tls_upstream_h2;
mod tls_upstream_h2_limits;
mod vrrp;
