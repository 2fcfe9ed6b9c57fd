//! The admin HTTP APIs as data: authentication decisions, replies, and the configuration's
//! V1 shape. No HTTP here: the runtime carries bytes, the broker answers from its state.
//!
//! | file | what |
//! |---|---|
//! | `common.rs` | credentials, authentication, replies and result codes (both APIs) |
//! | `v1.rs` | NanoMQ's V1 `{req, seq}` requests |
//! | `config_v1.rs` | the configuration in V1's JSON shape, set-configuration checks and the file changes they make |

mod common;
mod config_v1;
mod v1;

pub use common::*;
pub(crate) use config_v1::PendingConfig;
pub use config_v1::{
    ConfigChange, ConfigUpdate, check_set_config, config_to_v1, hocon_line, key_value_lines,
};
pub use v1::{
    ControlAction, Envelope, Request, authenticate, bad_parameter, ok, parse_envelope,
    parse_request, restart_incomplete, write_failed,
};

#[cfg(test)]
mod tests;
