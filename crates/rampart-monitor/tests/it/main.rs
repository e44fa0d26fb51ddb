//! rampart-monitor's integration tests: real `rampart web`, `rampart db`, etcd and
//! `rampart monitor` processes on loopback.

mod access;
mod lb_admin;
mod scrape;
