//! TideMQ's tokio runtime: sockets, clock and signals around the sans-IO core.
//!
//! One driver task owns the [`tidemq_core::Broker`], feeds it one input at a time, and reads
//! and writes the connections' sockets itself when they are ready; accept loops and TLS and
//! WebSocket handshakes run in tasks of their own. The runtime holds no protocol logic.

pub mod auth;
pub mod cluster;
pub mod config_file;
mod conn;
pub mod ctl;
mod dashboard;
mod driver;
pub mod files;
pub mod health;
mod http;
pub mod limits;
mod link;
mod listener;
pub mod logging;
pub mod net;
pub mod notify;
pub mod pidfile;
mod procstat;
pub mod store;
pub mod tls;

pub use driver::{ConfigOrigin, Control, Server, ServerHandle};
pub use listener::{ListenerUrl, Transport, parse_listener_url};
