//! The admin HTTP APIs as data: authentication decisions, replies, and the configuration's
//! V1 and v4 shapes. No HTTP here: the runtime carries bytes, the broker answers from its
//! state.
//!
//! | file | what |
//! |---|---|
//! | `common.rs` | credentials, authentication, replies and result codes (both APIs) |
//! | `v1.rs` | NanoMQ's V1 `{req, seq}` requests |
//! | `config_v1.rs` | the configuration in V1's JSON shape, set-configuration checks and the file changes they make |
//! | `v4.rs` | NanoMQ's v4 REST API: the route table, routing, replies |
//! | `v4_query.rs` | v4 query strings: filters and paging |
//! | `v4_body.rs` | v4 request bodies: publish, subscribe, bridge switch and subscriptions |
//! | `config_v4.rs` | the configuration in v4's shapes and the checks of its writes |
//! | `pending.rs` | set-configurations waiting for their file write |

mod common;
mod config_v1;
mod config_v4;
mod pending;
pub mod v4;
pub mod v4_body;
pub mod v4_query;

pub use common::*;
pub use config_v1::{
    ConfigChange, ConfigUpdate, check_set_config, config_to_v1, hocon_line, key_value_lines,
};
pub use config_v4::{
    SECTIONS, V4Write, bridge_node, check_bridge, check_configuration, check_reload, configuration,
    plain_name, reload_values, section,
};
pub(crate) use pending::PendingConfig;
pub use v1::{
    ControlAction, Envelope, Request, authenticate, bad_parameter, ok, parse_envelope,
    parse_request, restart_incomplete, write_failed,
};

mod v1;

#[cfg(test)]
mod tests;
