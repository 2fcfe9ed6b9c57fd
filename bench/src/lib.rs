//! `tidemq-bench`: an MQTT 3.1.1 load generator for side-by-side broker benchmarks.
//!
//! The client side is TideMQ's own codec over tokio `TcpStream`s (see [`wire`]); each
//! scenario in [`scenario`] is bounded in time and count, checks what arrived, and reports
//! its own CPU use next to the broker's so the tool is never the hidden bottleneck.

pub mod report;
pub mod scenario;
pub mod usage;
pub mod wire;

pub use report::Outcome;
pub use scenario::{Opts, Scenario, run};
