use super::*;
use crate::config::{Config, HttpAuthType};
use serde_json::json;

fn env(body: &str) -> Result<Envelope, Reply> {
    parse_envelope(body.as_bytes())
}

#[test]
fn base64_decodes_rfc4648_vectors_and_rejects_garbage() {
    for (enc, dec) in [
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("YWRtaW46cHVibGlj", "admin:public"),
        // Bits past the last byte are ignored.
        ("Zh==", "f"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes());
    }
    for bad in ["", "Zg=", "Z===", "Zg==Zg==", "Zm9v!", "====", "Zm 9"] {
        assert_eq!(base64_decode(bad), None, "{bad}");
    }
}

#[test]
fn envelope_errors_follow_the_documented_order() {
    assert_eq!(
        env("not json").unwrap_err().body,
        json!({"code":109,"seq":0,"message":"the body must be a JSON object"})
    );
    assert_eq!(env("[1]").unwrap_err().status, 400);
    let e = env(r#"{"req":2}"#).unwrap_err();
    assert_eq!((e.status, e.body["code"].clone()), (400, json!(107)));
    let e = env(r#"{"req":"2","seq":5}"#).unwrap_err();
    assert_eq!(
        (e.status, e.body["code"].clone(), e.body["seq"].clone()),
        (400, json!(108), json!(5))
    );
    let e = env(r#"{"req":2.5,"seq":5}"#).unwrap_err();
    assert_eq!(e.body["code"], 108);
    let ok = env(r#"{"req":2,"seq":18446744073709551615}"#).unwrap();
    assert_eq!(ok.seq, json!(u64::MAX));
}

#[test]
fn unknown_req_is_404_with_rep() {
    let e = env(r#"{"req":3,"seq":9}"#).unwrap();
    let r = parse_request(&e).unwrap_err();
    assert_eq!(r.status, 404);
    assert_eq!(r.body["code"], 108);
    assert_eq!(r.body["rep"], 3);
    let e = env(r#"{"req":-1,"seq":9}"#).unwrap();
    assert!(parse_request(&e).unwrap_err().body.get("rep").is_none());
}

#[test]
fn basic_auth_outcomes() {
    let config = Config::default();
    let e = env(r#"{"req":2,"seq":1}"#).unwrap();
    let creds = |h: Option<&str>| Credentials {
        authorization: h.map(str::to_owned),
        jwt: None,
    };
    assert!(authenticate(&config, &creds(Some("Basic YWRtaW46cHVibGlj")), &e).is_ok());
    assert!(authenticate(&config, &creds(Some("basic YWRtaW46cHVibGlj")), &e).is_ok());
    let wrong = authenticate(&config, &creds(Some("Basic YWRtaW46eA==")), &e).unwrap_err();
    assert_eq!(
        (wrong.status, wrong.body["code"].clone()),
        (401, json!(103))
    );
    assert!(wrong.challenge.unwrap().starts_with("Basic"));
    for bad in [
        None,
        Some("Basic"),
        Some("Basic !!!"),
        Some("Bearer x"),
        Some("Basic Zm9v"),
    ] {
        let r = authenticate(&config, &creds(bad), &e).unwrap_err();
        assert_eq!(r.body["code"], 104, "{bad:?}");
    }
}

#[test]
fn a_request_head_is_authorized_before_any_body() {
    let config = Config::default();
    let creds = |h: &str| Credentials {
        authorization: Some(h.to_owned()),
        jwt: None,
    };
    assert!(authorize_head(&config, &creds("Basic YWRtaW46cHVibGlj")).is_ok());
    let r = authorize_head(&config, &creds("Basic YWRtaW46eA==")).unwrap_err();
    assert_eq!(r.status, 401);
    assert_eq!(r.body["code"], 103);
    // No body was read: seq is 0 and there is no rep.
    assert_eq!(r.body["seq"], 0);
    assert!(r.body.get("rep").is_none());
    assert!(r.challenge.is_some());
    let r = authorize_head(&config, &Credentials::default()).unwrap_err();
    assert_eq!(r.body["code"], 104);
}

#[test]
fn jwt_outcomes_map_to_codes() {
    let mut config = Config::default();
    config.http_server.auth_type = HttpAuthType::Jwt;
    let e = env(r#"{"req":2,"seq":1}"#).unwrap();
    let creds = |v| Credentials {
        authorization: Some("Bearer abc".to_owned()),
        jwt: v,
    };
    assert!(authenticate(&config, &creds(Some(JwtVerdict::Valid)), &e).is_ok());
    let code = |v| authenticate(&config, &creds(v), &e).unwrap_err().body["code"].clone();
    assert_eq!(code(Some(JwtVerdict::Expired)), 116);
    assert_eq!(code(Some(JwtVerdict::Invalid)), 103);
    assert_eq!(code(None), 103);
    let none = Credentials::default();
    assert_eq!(
        authenticate(&config, &none, &e).unwrap_err().body["code"],
        104
    );
}

#[test]
fn set_config_refuses_control_characters_and_relative_paths() {
    let base = Config::default();
    for data in [
        json!({"http_server": {"password": "x\nhttp_server.username=evil"}}),
        json!({"bridge": {"clientid": "a\rb"}}),
        json!({"bridge": {"forwards": ["ok/#", "bad\u{0}"]}}),
        json!({"bridge": {"subscription": [{"topic": "a\u{7f}", "qos": 1}]}}),
        json!({"url": "nmq-tcp://0.0.0.0:1883\u{85}"}),
    ] {
        let err = check_set_config(&base, &data).unwrap_err();
        assert!(err.contains("control characters"), "{data}: {err}");
    }
    for path in ["key.pem", "/etc/../root/key.pem", "./k"] {
        let err = check_set_config(&base, &json!({"tls": {"key": path}})).unwrap_err();
        assert!(err.contains("absolute file path"), "{path}: {err}");
    }
    assert!(check_set_config(&base, &json!({"tls": {"key": "/etc/tidemq/key.pem"}})).is_ok());
    assert!(check_set_config(&base, &json!({"http_server": {"password": "pä ss"}})).is_ok());
}

#[test]
fn get_config_masks_secrets_and_round_trips_through_set() {
    let mut base = Config::default();
    base.http_server.password = "topsecret".to_owned();
    let shown = config_to_v1(&base);
    assert_eq!(shown["http_server"]["password"], MASK);
    assert_eq!(shown["qos_duration"], 10);
    let update = check_set_config(&base, &shown).unwrap();
    assert_eq!(update.config.http_server.password, "topsecret");
    assert_eq!(update.config, base);
    assert!(update.restart_required.is_empty());
}

#[test]
fn set_config_checks_everything_before_applying() {
    let base = Config::default();
    let err =
        check_set_config(&base, &json!({"msq_len": 5, "allow_anonymous": "yes"})).unwrap_err();
    assert!(err.contains("allow_anonymous must be a boolean"), "{err}");
    let err = check_set_config(&base, &json!({"msq_lenn": 5})).unwrap_err();
    assert!(err.contains("unknown field msq_lenn"), "{err}");
    let err = check_set_config(&base, &json!({"msq_len": 0})).unwrap_err();
    assert!(err.contains("msq_len"), "{err}");
    let update = check_set_config(
        &base,
        &json!({"msq_len": 5, "allow_anonymous": false, "http_server": {"port": 9000},
                "bridge": {"bridge_mode": true, "forwards": ["a/#"], "subscription": [{"topic": "b/#", "qos": 1}]}}),
    )
    .unwrap();
    assert_eq!(update.config.msq_len, 5);
    assert!(!update.config.allow_anonymous);
    assert_eq!(update.restart_required, vec!["http_server", "bridges"]);
    let kv: Vec<(String, String)> = update.changes.iter().flat_map(key_value_lines).collect();
    assert!(kv.contains(&("allow_anonymous".to_owned(), "false".to_owned())));
    assert!(kv.contains(&(
        "bridge.mqtt.subscription.1.topic".to_owned(),
        "b/#".to_owned()
    )));
    assert!(kv.contains(&("bridge.mqtt.forwards".to_owned(), "a/#".to_owned())));
}
