//! rampart web integration tests: the real binary on loopback, real PostgreSQL, nginx as
//! an external application server, and the real `rampart lb` in front.

mod common;
mod db_agents;
mod guestbook;
mod lb;
mod proxy;
mod register;
mod static_files;
mod timeouts;
mod tls;
