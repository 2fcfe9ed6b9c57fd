#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The two NanoMQ configuration formats read into the same typed configuration.

use std::collections::BTreeMap;

use tidemq_core::Config;
use tidemq_core::config::HttpAuthType;
use tidemq_core::config_parse::{
    ConfigIssue, Format, env_entries, load, parse_duration_ms, parse_size,
};

fn shipped(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../etc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn hocon(text: &str) -> Result<(Config, Vec<ConfigIssue>), ConfigIssue> {
    load(&Config::default(), text, Format::Hocon, &BTreeMap::new())
}

fn kv(text: &str) -> Result<(Config, Vec<ConfigIssue>), ConfigIssue> {
    load(&Config::default(), text, Format::KeyValue, &BTreeMap::new())
}

#[test]
fn shipped_hocon_file_is_the_default_configuration() {
    let (config, warnings) = hocon(&shipped("nanomq.conf")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    // Every default, with one change: the admin API is on, on loopback.
    let mut expected = Config::default();
    expected.http_server.enable = true;
    assert_eq!(config, expected);
    assert_eq!(config.http_server.ip_addr, "127.0.0.1");
    assert!(!config.http_server.exposes_default_credentials());
    config.validate().unwrap();
}

#[test]
fn shipped_key_value_file_equals_the_hocon_file() {
    let (from_kv, warnings) = kv(&shipped("nanomq_old.conf")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let (from_hocon, _) = hocon(&shipped("nanomq.conf")).unwrap();
    assert_eq!(from_kv, from_hocon);
}

#[test]
fn equivalent_settings_in_both_formats_give_equal_configs() {
    let (a, wa) = hocon(
        r#"
        listeners.tcp.bind = "127.0.0.1:1999"
        mqtt { max_packet_size = 64KB, max_mqueue_len = 10, retry_interval = 30s, property_size = 8 }
        http_server { port = 9000, username = root, password = pw }
        auth { allow_anonymous = false, password { alice = "s1", bob = "s2" } }
        listeners.ssl { bind = "0.0.0.0:8884", keyfile = "/k.pem", certfile = "/c.pem" }
        listeners.ws { bind = "0.0.0.0:9083/mqtt" }
        bridges.mqtt.default {
            server = "mqtt-tcp://10.0.0.1:1883"
            proto_ver = 5
            clientid = "b1"
            keepalive = 30s
            forwards = [{ local_topic = "up/#" }]
            subscription = [{ remote_topic = "down/#", qos = 1 }]
        }
        "#,
    )
    .unwrap();
    let (b, wb) = kv(r#"
url=nmq-tcp://127.0.0.1:1999
max_packet_size=64
msq_len=10
qos_duration=30
property_size=8
http_server.enable=true
http_server.port=9000
http_server.username=root
http_server.password=pw
allow_anonymous=false
auth.1.login=alice
auth.1.password=s1
auth.2.login=bob
auth.2.password=s2
tls.enable=true
tls.url=tls+nmq-tcp://0.0.0.0:8884
tls.keyfile=/k.pem
tls.certfile=/c.pem
websocket.enable=true
websocket.url=nmq-ws://0.0.0.0:9083/mqtt
bridge.mqtt.bridge_mode=true
bridge.mqtt.address=mqtt-tcp://10.0.0.1:1883
bridge.mqtt.proto_ver=5
bridge.mqtt.clientid=b1
bridge.mqtt.keepalive=30
bridge.mqtt.forwards=up/#
bridge.mqtt.subscription.1.topic=down/#
bridge.mqtt.subscription.1.qos=1
"#)
    .unwrap();
    // The retry interval is kept but has no effect, and both formats say so.
    for w in [&wa, &wb] {
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].to_string().contains("no effect"), "{w:?}");
    }
    assert_eq!(a, b);
    assert_eq!(a.max_packet_size, 64 * 1024);
    assert_eq!(a.users.get("bob").map(String::as_str), Some("s2"));
    assert!(a.http_server.enable && a.tls.enable && a.websocket.enable);
    assert_eq!(a.bridges["default"].subscription[0].qos, 1);
    a.validate().unwrap();
}

#[test]
fn default_admin_credentials_beyond_loopback_are_flagged() {
    let mut c = Config::default();
    c.http_server.enable = true;
    assert!(!c.http_server.exposes_default_credentials());
    c.http_server.ip_addr = "0.0.0.0".to_owned();
    assert!(c.http_server.exposes_default_credentials());
    c.http_server.ip_addr = "::1".to_owned();
    assert!(!c.http_server.exposes_default_credentials());
    c.http_server.ip_addr = "192.168.1.5".to_owned();
    c.http_server.password = "changed".to_owned();
    assert!(!c.http_server.exposes_default_credentials());
}

#[test]
fn sizes_and_durations_use_nanomq_units() {
    assert_eq!(parse_size("10KB").unwrap(), 10 * 1024);
    assert_eq!(parse_size("10k").unwrap(), 10 * 1024);
    assert_eq!(parse_size("256MB").unwrap(), 256 * 1024 * 1024);
    assert_eq!(parse_size("1G").unwrap(), 1024 * 1024 * 1024);
    assert_eq!(parse_size("100").unwrap(), 100);
    assert!(parse_size("-1").is_err());
    assert!(parse_size("10XB").is_err());
    assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
    assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
    assert_eq!(parse_duration_ms("2m").unwrap(), 120_000);
    assert_eq!(parse_duration_ms("7").unwrap(), 7_000);
    assert!(parse_duration_ms("soon").is_err());
}

#[test]
fn hocon_syntax_error_names_the_line() {
    let err = hocon("mqtt {\n  property_size = 32\n  max_packet_size = = 3\n}\n").unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
}

#[test]
fn hocon_bad_value_names_line_and_key() {
    let err = hocon("mqtt {\n  property_size = 32\n  max_mqueue_len = lots\n}\n").unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
    assert_eq!(err.key.as_deref(), Some("mqtt.max_mqueue_len"));
    assert!(
        err.to_string().contains("\"lots\" is not a whole number"),
        "{err}"
    );
}

#[test]
fn key_value_bad_line_names_the_line() {
    let err = kv("url=nmq-tcp://0.0.0.0:1883\nthis line has no equals sign\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    let err = kv("# comment\nallow_anonymous=maybe\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert_eq!(err.key.as_deref(), Some("allow_anonymous"));
    let err = kv("auth.1.login=alice\n").unwrap_err();
    assert!(err.to_string().contains("auth.1.password"), "{err}");
}

#[test]
fn out_of_range_numbers_are_rejected_not_wrapped() {
    let err = hocon("http_server { port = 70000 }").unwrap_err();
    assert_eq!(err.key.as_deref(), Some("http_server.port"));
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn unknown_keys_are_warned_about_with_their_line() {
    let (config, warnings) = hocon("mqtt {\n  property_sise = 10\n}\n").unwrap();
    assert_eq!(config.property_size, Config::default().property_size);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].line, Some(2));
    assert_eq!(warnings[0].key.as_deref(), Some("mqtt.property_sise"));
    let (_, warnings) = kv("max_taskq_thrad=4\n").unwrap();
    assert_eq!(warnings.len(), 1);
}

#[test]
fn nanomq_keys_without_effect_are_reported_as_such() {
    let (_, warnings) = hocon("mqtt { await_rel_timeout = 10s }").unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("no effect"), "{warnings:?}");
}

#[test]
fn http_auth_type_and_jwt_key_are_read_and_validated() {
    let (config, _) = hocon("http_server { auth_type = jwt }").unwrap();
    assert_eq!(config.http_server.auth_type, HttpAuthType::Jwt);
    let err = config.validate().unwrap_err();
    assert_eq!(err.key, "http_server.jwt.public.keyfile");
    let (config, _) =
        hocon("http_server { auth_type = jwt, jwt.public.keyfile = \"/k.pub\" }").unwrap();
    config.validate().unwrap();
    assert!(hocon("http_server { auth_type = magic }").is_err());
}

#[test]
fn environment_variables_use_nanomq_names_and_tidemq_aliases() {
    let env: BTreeMap<String, String> = [
        ("NANOMQ_BROKER_URL", "nmq-tcp://127.0.0.1:2000"),
        ("NANOMQ_MSQ_LEN", "7"),
        ("TIDEMQ_MSQ_LEN", "9"),
        ("NANOMQ_HTTP_SERVER_PORT", "8999"),
        ("UNRELATED", "x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut config = Config::default();
    let warnings =
        tidemq_core::config_parse::apply(&mut config, &env_entries(&env), Format::KeyValue)
            .unwrap();
    assert!(warnings.is_empty());
    assert_eq!(config.url, "nmq-tcp://127.0.0.1:2000");
    assert_eq!(config.msq_len, 9, "TIDEMQ_ wins over NANOMQ_");
    assert_eq!(config.http_server.port, 8999);
}

#[test]
fn hocon_substitutions_come_from_the_given_environment_only() {
    let env: BTreeMap<String, String> = [("PORT_FROM_ENV".to_owned(), "8123".to_owned())].into();
    let (config, _) = load(
        &Config::default(),
        "http_server { port = ${PORT_FROM_ENV} }",
        Format::Hocon,
        &env,
    )
    .unwrap();
    assert_eq!(config.http_server.port, 8123);
    assert!(hocon("http_server { port = ${PORT_FROM_ENV} }").is_err());
}

#[test]
fn include_directives_are_found_outside_strings_and_comments_and_refused_unexpanded() {
    use tidemq_core::config_parse::find_includes;
    let text = "# include \"no.conf\"\na = \"include \\\"no\\\"\"\ninclude \"yes.conf\"\nb { include required(file(\"req.conf\")) }\n";
    let found = find_includes(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].path, "yes.conf");
    assert!(!found[0].required);
    assert_eq!(found[1].path, "req.conf");
    assert!(found[1].required);
    assert_eq!(
        &text[found[1].start..found[1].end],
        "include required(file(\"req.conf\"))"
    );
    let err = hocon("mqtt {}\ninclude \"x.conf\"\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err.message.contains("not expanded"), "{err}");
}
