//! Set-configurations (V1 req 12 and v4's writes) waiting for their file write.

use serde_json::Value;

use super::config_v1::ConfigUpdate;
use super::config_v4::V4Write;

/// A set-configuration waiting for its file write.
pub(crate) struct PendingConfig {
    pub seq: Value,
    pub update: ConfigUpdate,
    /// The request's `data`, re-applied to the configuration in force once written.
    pub data: Value,
    /// A v4 request (`None`: V1 req 12): which one, so it is checked and answered as such.
    pub v4: Option<V4Write>,
}
