//! Where the configuration comes from: built-in defaults, then the file, then environment
//! variables, then command-line flags (later wins). Reading files lives here; parsing and
//! validation live in the core.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tidemq_core::Config;
use tidemq_core::config_parse::{self, ConfigIssue, Entry, Format, Raw};

/// The file a broker reads, and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub format: Format,
}

/// Everything that decides the configuration, kept so that a reload can redo it.
#[derive(Debug, Clone, Default)]
pub struct ConfigInputs {
    /// The file, if one is used.
    pub source: Option<ConfigSource>,
    /// Settings from command-line flags, as key/value entries.
    pub flags: Vec<(String, String)>,
}

/// The configuration and what was noticed on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigIssue>,
}

/// Picks the file: the `--conf`/`--old_conf` flag, else `NANOMQ_CONF_PATH`/`TIDEMQ_CONF_PATH`,
/// else `etc/nanomq.conf` in the working directory, else `nanomq.conf` beside the binary,
/// else `/etc/nanomq.conf`. `None` when none exists: built-in defaults apply.
pub fn find_source(
    conf: Option<&Path>,
    old_conf: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Option<ConfigSource> {
    if let Some(path) = old_conf {
        return Some(ConfigSource {
            path: path.to_owned(),
            format: Format::KeyValue,
        });
    }
    let hocon = |path: PathBuf| ConfigSource {
        path,
        format: Format::Hocon,
    };
    if let Some(path) = conf {
        return Some(hocon(path.to_owned()));
    }
    for var in ["TIDEMQ_CONF_PATH", "NANOMQ_CONF_PATH"] {
        if let Some(path) = env.get(var) {
            return Some(hocon(PathBuf::from(path)));
        }
    }
    let beside_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("nanomq.conf")));
    [
        Some(PathBuf::from("etc/nanomq.conf")),
        beside_binary,
        Some(PathBuf::from("/etc/nanomq.conf")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
    .map(hocon)
}

/// Builds and validates the configuration from its inputs. Nothing is applied on error.
pub fn load(inputs: &ConfigInputs, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigIssue> {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    if let Some(source) = &inputs.source {
        let name = source.path.display().to_string();
        let text = std::fs::read_to_string(&source.path).map_err(|e| ConfigIssue {
            source: Some(name.clone()),
            line: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let text = match source.format {
            Format::Hocon => {
                expand_includes(&text, &source.path, 0).map_err(|e| e.in_source(&name))?
            }
            Format::KeyValue => text,
        };
        let (loaded, file_warnings) = config_parse::load(&config, &text, source.format, env)
            .map_err(|e| e.in_source(&name))?;
        config = loaded;
        warnings.extend(file_warnings.into_iter().map(|w| w.in_source(&name)));
        if source.format == Format::Hocon {
            let over = override_path(&source.path);
            if let Ok(text) = std::fs::read_to_string(&over) {
                let over_name = over.display().to_string();
                let (loaded, over_warnings) =
                    config_parse::load(&config, &text, Format::Hocon, env)
                        .map_err(|e| e.in_source(&over_name))?;
                config = loaded;
                warnings.extend(over_warnings.into_iter().map(|w| w.in_source(&over_name)));
            }
        }
    }
    let env_warnings = config_parse::apply(
        &mut config,
        &config_parse::env_entries(env),
        Format::KeyValue,
    )
    .map_err(|e| e.in_source("environment"))?;
    warnings.extend(env_warnings.into_iter().map(|w| w.in_source("environment")));
    let flags: Vec<Entry> = inputs
        .flags
        .iter()
        .map(|(key, value)| Entry {
            key: key.clone(),
            value: Raw::Str(value.clone()),
            line: None,
        })
        .collect();
    let flag_warnings = config_parse::apply(&mut config, &flags, Format::Hocon)
        .map_err(|e| e.in_source("command line"))?;
    warnings.extend(
        flag_warnings
            .into_iter()
            .map(|w| w.in_source("command line")),
    );
    config.validate().map_err(|e| {
        ConfigIssue {
            source: None,
            line: None,
            key: Some(e.key.to_owned()),
            message: e.message,
        }
        .in_source(
            &inputs
                .source
                .as_ref()
                .map_or("configuration".to_owned(), |s| s.path.display().to_string()),
        )
    })?;
    Ok(Loaded { config, warnings })
}

/// How deep includes may nest (also stops include cycles).
const MAX_INCLUDE_DEPTH: usize = 8;
/// The largest file an include may pull in.
const MAX_INCLUDE_SIZE: u64 = 4 * 1024 * 1024;

/// Replaces each HOCON `include "file"` with the file's text (paths relative to the including
/// file), as NanoMQ's `password = {include "/etc/nanomq_pwd.conf"}` needs. A missing optional
/// include is dropped; a missing `required(...)` one is an error naming it.
pub fn expand_includes(text: &str, path: &Path, depth: usize) -> Result<String, ConfigIssue> {
    let includes = config_parse::find_includes(text);
    if includes.is_empty() {
        return Ok(text.to_owned());
    }
    let line_of = |offset: usize| text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for inc in includes {
        let fail = |message: String| ConfigIssue {
            source: None,
            line: Some(line_of(inc.start)),
            key: None,
            message,
        };
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(fail(format!(
                "include \"{}\": includes nest deeper than {MAX_INCLUDE_DEPTH} (a cycle?)",
                inc.path
            )));
        }
        let target = dir.join(&inc.path);
        let content = match std::fs::metadata(&target) {
            Ok(meta) if meta.len() > MAX_INCLUDE_SIZE => {
                return Err(fail(format!(
                    "include \"{}\": larger than {MAX_INCLUDE_SIZE} bytes",
                    inc.path
                )));
            }
            Ok(_) => std::fs::read_to_string(&target)
                .map_err(|e| fail(format!("include \"{}\": {e}", target.display())))?,
            Err(_) if !inc.required => String::new(),
            Err(e) => return Err(fail(format!("include \"{}\": {e}", target.display()))),
        };
        let content = expand_includes(&content, &target, depth + 1)?;
        out.push_str(text.get(last..inc.start).unwrap_or_default());
        out.push_str(&content);
        last = inc.end;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Ok(out)
}

/// The process environment, as the map the loaders take.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

/// The configuration as JSON for display, with passwords and key passwords masked.
pub fn masked_json(config: &Config) -> String {
    let mut shown = config.clone();
    const MASK: &str = "******";
    for password in shown.users.values_mut() {
        *password = MASK.to_owned();
    }
    shown.http_server.password = MASK.to_owned();
    if shown.tls.key_password.is_some() {
        shown.tls.key_password = Some(MASK.to_owned());
    }
    for bridge in shown.bridges.values_mut() {
        if bridge.password.is_some() {
            bridge.password = Some(MASK.to_owned());
        }
    }
    // Header values of the HTTP authentication service often carry its API key.
    let http = &mut shown.auth.http_auth;
    for req in [&mut http.auth_req, &mut http.super_req]
        .into_iter()
        .flatten()
    {
        for value in req.headers.values_mut() {
            *value = MASK.to_owned();
        }
    }
    serde_json::to_string_pretty(&shown).unwrap_or_default()
}

/// The file beside a HOCON configuration that holds changes made through the admin API; it
/// is loaded over the base file, which is never rewritten (EMQX does the same).
pub fn override_path(base: &Path) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "nanomq.conf".to_owned());
    let name = match name.strip_suffix(".conf") {
        Some(stem) => format!("{stem}.override.conf"),
        None => format!("{name}.override"),
    };
    base.with_file_name(name)
}

/// Writes `text` to `path` so that readers see the old or the new file, never a mix, and
/// the new one survives a crash: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    // A configuration may hold passwords: a new file is 0600; an existing one keeps its
    // mode and owner.
    crate::files::replace_atomically(path, text.as_bytes(), 0o600)
}

/// Replaces or appends `key=value` lines, keeping every other line and comment as it was.
/// Numbered bridge subscriptions beyond the new list are removed.
pub fn rewrite_key_value(text: &str, settings: &[(String, String)]) -> String {
    let key_of = |line: &str| -> Option<String> {
        let t = line.trim();
        if t.starts_with('#') {
            return None;
        }
        t.split_once('=').map(|(k, _)| k.trim().to_owned())
    };
    let new_subs = settings
        .iter()
        .filter(|(k, _)| k.starts_with("bridge.mqtt.subscription."))
        .count();
    let mut pending: Vec<&(String, String)> = settings.iter().collect();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(key) = key_of(line) else {
            out.push(line.to_owned());
            continue;
        };
        if let Some(pos) = pending.iter().position(|(k, _)| *k == key) {
            let (k, v) = pending.remove(pos);
            out.push(format!("{k}={v}"));
        } else if new_subs > 0 && key.starts_with("bridge.mqtt.subscription.") {
            // A stale entry of the old, longer list.
        } else {
            out.push(line.to_owned());
        }
    }
    for (k, v) in pending {
        out.push(format!("{k}={v}"));
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// Persists admin API changes to the broker's configuration: key by key in an old-format
/// file, or in the override file beside a HOCON one. Returns the file written.
pub fn persist(
    source: Option<&ConfigSource>,
    changes: &[tidemq_core::admin::ConfigChange],
) -> Result<PathBuf, String> {
    let Some(source) = source else {
        return Err(
            "the broker runs on built-in defaults: start it with --conf FILE to change its configuration"
                .to_owned(),
        );
    };
    let fail = |path: &Path, e: std::io::Error| format!("cannot write {}: {e}", path.display());
    // One read-modify-write at a time: concurrent set-configurations must not lose changes.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match source.format {
        Format::KeyValue => {
            let text = std::fs::read_to_string(&source.path).map_err(|e| fail(&source.path, e))?;
            let settings: Vec<(String, String)> = changes
                .iter()
                .flat_map(tidemq_core::admin::key_value_lines)
                .collect();
            write_atomically(&source.path, &rewrite_key_value(&text, &settings))
                .map_err(|e| fail(&source.path, e))?;
            Ok(source.path.clone())
        }
        Format::Hocon => {
            let path = override_path(&source.path);
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            let mut lines: Vec<String> = old
                .lines()
                .filter(|l| {
                    let key = l.split_once('=').map(|(k, _)| k.trim());
                    !changes.iter().any(|c| Some(c.key.as_str()) == key)
                })
                .map(str::to_owned)
                .collect();
            if lines.is_empty() {
                lines.push(format!(
                    "# Written by TideMQ's admin API (req 12); loaded over {}.",
                    source.path.display()
                ));
            }
            lines.extend(changes.iter().map(tidemq_core::admin::hocon_line));
            let mut text = lines.join("\n");
            text.push('\n');
            write_atomically(&path, &text).map_err(|e| fail(&path, e))?;
            Ok(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemq-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn precedence_is_defaults_then_file_then_env_then_flags() {
        let path = temp_file(
            "precedence.conf",
            "mqtt { max_mqueue_len = 10, property_size = 11 }\nhttp_server { port = 9001 }\n",
        );
        let inputs = ConfigInputs {
            source: Some(ConfigSource {
                path,
                format: Format::Hocon,
            }),
            flags: vec![("property_size".to_owned(), "13".to_owned())],
        };
        let loaded = load(
            &inputs,
            &env(&[("NANOMQ_MSQ_LEN", "12"), ("NANOMQ_PROPERTY_SIZE", "12")]),
        )
        .unwrap();
        assert_eq!(loaded.config.msq_len, 12, "env beats file");
        assert_eq!(loaded.config.property_size, 13, "flag beats env");
        assert_eq!(loaded.config.http_server.port, 9001, "file beats default");
        assert_eq!(loaded.config.max_inflight, Config::default().max_inflight);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let path = temp_file("broken.conf", "mqtt {\n  max_mqueue_len = -3\n}\n");
        let inputs = ConfigInputs {
            source: Some(ConfigSource {
                path: path.clone(),
                format: Format::Hocon,
            }),
            flags: Vec::new(),
        };
        let err = load(&inputs, &BTreeMap::new()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}:2: mqtt.max_mqueue_len", path.display())),
            "{text}"
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let inputs = ConfigInputs {
            source: Some(ConfigSource {
                path: PathBuf::from("/nonexistent/nanomq.conf"),
                format: Format::Hocon,
            }),
            flags: Vec::new(),
        };
        let err = load(&inputs, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/nanomq.conf"), "{err}");
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn old_conf_flag_selects_the_key_value_format() {
        let source = find_source(None, Some(Path::new("x.conf")), &BTreeMap::new()).unwrap();
        assert_eq!(source.format, Format::KeyValue);
        let source = find_source(None, None, &env(&[("NANOMQ_CONF_PATH", "/a.conf")])).unwrap();
        assert_eq!(source.path, PathBuf::from("/a.conf"));
        assert_eq!(source.format, Format::Hocon);
    }

    #[test]
    fn key_value_rewrite_keeps_comments_and_other_lines() {
        let text = "# main\nurl=nmq-tcp://0.0.0.0:1883\n\n# queue\nmsq_len = 64\nbridge.mqtt.subscription.1.topic=a\nbridge.mqtt.subscription.2.topic=b\n";
        let out = rewrite_key_value(
            text,
            &[
                ("msq_len".to_owned(), "5".to_owned()),
                ("allow_anonymous".to_owned(), "false".to_owned()),
                (
                    "bridge.mqtt.subscription.1.topic".to_owned(),
                    "c".to_owned(),
                ),
            ],
        );
        assert_eq!(
            out,
            "# main\nurl=nmq-tcp://0.0.0.0:1883\n\n# queue\nmsq_len=5\nbridge.mqtt.subscription.1.topic=c\nallow_anonymous=false\n"
        );
    }

    #[test]
    fn admin_changes_to_a_hocon_file_go_to_the_override_and_load_over_it() {
        let base = temp_file("persist.conf", "mqtt { max_mqueue_len = 10 }\n");
        let source = ConfigSource {
            path: base.clone(),
            format: Format::Hocon,
        };
        let change = |key: &str, value: serde_json::Value| tidemq_core::admin::ConfigChange {
            key: key.to_owned(),
            value,
        };
        persist(Some(&source), &[change("msq_len", serde_json::json!(20))]).unwrap();
        persist(
            Some(&source),
            &[
                change("msq_len", serde_json::json!(30)),
                change("allow_anonymous", serde_json::json!(false)),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&base).unwrap(),
            "mqtt { max_mqueue_len = 10 }\n",
            "the user's file is untouched"
        );
        let inputs = ConfigInputs {
            source: Some(source),
            flags: Vec::new(),
        };
        let loaded = load(&inputs, &BTreeMap::new()).unwrap();
        assert_eq!(loaded.config.msq_len, 30);
        assert!(!loaded.config.allow_anonymous);
        let _ = std::fs::remove_file(override_path(&base));
    }

    #[test]
    fn persisting_without_a_file_is_refused() {
        assert!(persist(None, &[]).unwrap_err().contains("--conf"));
    }

    #[test]
    fn includes_are_read_relative_to_the_including_file() {
        let pwd = temp_file("pwd.conf", "alice = \"secret\"\nbob = \"b0b\"\n");
        let main = temp_file(
            "with-include.conf",
            &format!(
                "auth {{\n  password = {{include \"{}\"}}\n}}\ninclude \"missing-optional.conf\"\n",
                pwd.file_name().unwrap().to_string_lossy()
            ),
        );
        let inputs = ConfigInputs {
            source: Some(ConfigSource {
                path: main,
                format: Format::Hocon,
            }),
            flags: Vec::new(),
        };
        let loaded = load(&inputs, &BTreeMap::new()).unwrap();
        assert_eq!(
            loaded.config.users.get("bob").map(String::as_str),
            Some("b0b")
        );
        let broken = temp_file(
            "required.conf",
            "mqtt {}\ninclude required(\"nope.conf\")\n",
        );
        let inputs = ConfigInputs {
            source: Some(ConfigSource {
                path: broken,
                format: Format::Hocon,
            }),
            flags: Vec::new(),
        };
        let err = load(&inputs, &BTreeMap::new()).unwrap_err().to_string();
        assert!(
            err.contains("required.conf:2") && err.contains("nope.conf"),
            "{err}"
        );
        let cycle = temp_file("cycle.conf", "include \"cycle.conf\"\n");
        let inputs = ConfigInputs {
            source: Some(ConfigSource {
                path: cycle,
                format: Format::Hocon,
            }),
            flags: Vec::new(),
        };
        assert!(
            load(&inputs, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("nest")
        );
    }

    #[test]
    fn masked_output_hides_secrets() {
        let mut config = Config::default();
        config.users.insert("alice".to_owned(), "s3cret".to_owned());
        config.http_server.password = "adminpw".to_owned();
        let mut req = tidemq_core::config::HttpAuthRequest::default();
        req.headers
            .insert("authorization".to_owned(), "Bearer apikey".to_owned());
        config.auth.http_auth.super_req = Some(req);
        let shown = masked_json(&config);
        assert!(
            !shown.contains("s3cret") && !shown.contains("adminpw") && !shown.contains("apikey"),
            "{shown}"
        );
        assert!(shown.contains("authorization"));
        assert!(shown.contains("alice"));
    }
}
