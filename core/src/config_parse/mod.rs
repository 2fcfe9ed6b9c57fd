//! NanoMQ's two configuration formats, HOCON (`nanomq.conf`) and the older `key=value` format
//! (`--old_conf`), read into one [`Config`]. Both are flattened into [`Entry`]s with line
//! numbers, and one table of keys applies them, so environment variables and command-line
//! flags go through the same checks. Parsing is pure: the caller reads the files.

use std::collections::BTreeMap;

use crate::config::Config;

mod apply;
pub(crate) mod entry;
pub(crate) mod syntax;

pub use apply::{apply, parse_duration_ms, parse_size};
pub use entry::{ConfigIssue, Entry, Format, Raw};
pub use syntax::{Include, env_entries, find_includes, parse_hocon, parse_key_value};

/// Parses a whole configuration source and layers it over `base`.
pub fn load(
    base: &Config,
    text: &str,
    format: Format,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Vec<ConfigIssue>), ConfigIssue> {
    let entries = match format {
        Format::Hocon => parse_hocon(text, env)?,
        Format::KeyValue => parse_key_value(text)?,
    };
    let mut config = base.clone();
    let warnings = apply(&mut config, &entries, format)?;
    Ok((config, warnings))
}
