//! TideMQ's broker core: a pure, deterministic MQTT state machine.
//!
//! Feed one [`Input`] at a time to [`Broker::handle_input`], then drain
//! [`Broker::poll_output`] until it returns `None`, then wait until [`Broker::poll_timeout`] (or
//! the next input) and call again. The core never reads a clock, never does I/O, and draws
//! randomness only from the seed it was built with: the same inputs give the same outputs.

pub mod acl;
pub mod address;
pub mod admin;
mod alias;
pub mod api;
mod bridge;
mod broker;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod config_parse;
mod conn;
mod durable;
mod ids;
pub mod ip;
mod memory;
mod message;
mod metrics;
pub mod persist;
pub mod retain_trie;
mod rng;
mod session;
mod sys;
mod sys_tree;
mod timer;
pub mod topic;
mod window;
pub mod ws;

pub use api::{
    AuthMethod, AuthOutcome, BrokerEvent, ConnId, Input, Instant, Output, RecordAnswer, SCAN_BATCH,
    Secret,
};
pub use broker::{Broker, Stats};
pub use config::{Config, ConfigError};
pub use memory::accounting_bound;
pub use metrics::{COMMIT_BOUNDS_US, RuntimeConnCounters, StoreFigures};
