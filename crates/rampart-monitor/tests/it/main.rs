//! rampart-monitor's integration tests: real `rampart web`, `rampart db`, etcd and
//! `rampart monitor` processes on loopback.

mod access;
mod cdp;
mod dashboard;
mod lb_admin;
mod prometheus;
mod reload;
mod scrape;
mod up_drills;
mod up_vips;
