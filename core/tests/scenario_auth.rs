//! Credentials checked outside the core: the wait, what is held meanwhile, its bounds, the
//! answers, and `auth.anonymous_mode`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use std::collections::BTreeMap;

use harness::*;
use tidemq_core::codec::{Packet, Subscribe, SubscriptionOptions};
use tidemq_core::config::AnonymousMode;
use tidemq_core::{AuthOutcome, Config, Input};

fn users_config() -> Config {
    Config {
        allow_anonymous: false,
        users: BTreeMap::from([("alice".to_owned(), "secret".to_owned())]),
        ..Config::default()
    }
}

fn held() -> Harness {
    let mut h = Harness::with_config(users_config());
    h.auto_auth = false;
    h.fragment = Fragment::Whole;
    h
}

fn subscribe_packet(id: u16, filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: id,
        properties: Default::default(),
        filters: vec![(filter.to_owned(), SubscriptionOptions::default())],
    })
}

#[test]
fn nothing_after_connect_is_processed_before_the_answer_then_all_of_it_in_order() {
    let mut h = held();
    let conn = h.accept();
    let ack = h.connect_on(
        conn,
        "c",
        V5,
        true,
        ConnectOpts::default().user("alice", "secret"),
    );
    assert!(ack.is_none(), "no CONNACK before the answer");
    assert_eq!(h.auth_asked.len(), 1);
    assert_eq!(h.auth_asked[0].1, "alice");
    assert_eq!(h.auth_asked[0].2, b"secret");
    h.send(conn, &subscribe_packet(7, "a/b"));
    h.publish(conn, "a/b", "early", Q0, false);
    assert!(h.recv(conn).is_empty(), "held packets were processed");
    assert_eq!(h.stats().sessions, 0);

    h.input(Input::AuthResult {
        conn,
        outcome: AuthOutcome::Allow { superuser: false },
    });
    let got = h.recv(conn);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.code.0 == 0),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Packet::SubAck(s) if s.packet_id == 7),
        "{got:?}"
    );
    // The held publish reached the subscription made just before it.
    assert!(
        matches!(&got[2], Packet::Publish(p) if p.payload.as_ref() == b"early"),
        "{got:?}"
    );
}

#[test]
fn a_denied_answer_is_0x86_in_v5_and_4_in_3_1_1() {
    for (version, code) in [(V5, 0x86), (V311, 0x04)] {
        let mut h = held();
        let conn = h.accept();
        h.connect_on(
            conn,
            "c",
            version,
            true,
            ConnectOpts::default().user("alice", "x"),
        );
        h.send(conn, &subscribe_packet(1, "a"));
        h.input(Input::AuthResult {
            conn,
            outcome: AuthOutcome::Deny,
        });
        let got = h.recv(conn);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            matches!(&got[0], Packet::ConnAck(a) if a.code.0 == code),
            "{got:?}"
        );
        assert!(h.is_closed(conn));
        assert_eq!(h.stats().auth_failed, 1);
    }
}

#[test]
fn a_busy_answer_is_0x89_in_v5_and_3_in_3_1_1() {
    for (version, code) in [(V5, 0x89), (V311, 0x03)] {
        let mut h = held();
        let conn = h.accept();
        h.connect_on(
            conn,
            "c",
            version,
            true,
            ConnectOpts::default().user("alice", "x"),
        );
        h.input(Input::AuthResult {
            conn,
            outcome: AuthOutcome::Busy,
        });
        let got = h.recv(conn);
        assert!(
            matches!(&got[0], Packet::ConnAck(a) if a.code.0 == code),
            "{got:?}"
        );
        assert!(h.is_closed(conn));
    }
}

#[test]
fn beyond_max_pending_a_connect_is_refused_as_busy_without_asking() {
    let mut config = users_config();
    config.auth.max_pending = 2;
    let mut h = Harness::with_config(config);
    h.auto_auth = false;
    let opts = || ConnectOpts::default().user("alice", "secret");
    let a = h.accept();
    let b = h.accept();
    let c = h.accept();
    assert!(h.connect_on(a, "a", V5, true, opts()).is_none());
    assert!(h.connect_on(b, "b", V5, true, opts()).is_none());
    let refused = h.connect_on(c, "c", V5, true, opts()).unwrap();
    assert_eq!(refused.code.0, 0x89);
    assert_eq!(h.auth_asked.len(), 2);
    // A place freed (the waiting client left): the next one is asked for again.
    h.close(a);
    let d = h.accept();
    assert!(h.connect_on(d, "d", V311, true, opts()).is_none());
    assert_eq!(h.auth_asked.len(), 3);
}

#[test]
fn sending_more_than_max_held_bytes_while_waiting_is_refused_0x97() {
    let mut config = users_config();
    config.auth.max_held_bytes = 1024;
    let mut h = Harness::with_config(config);
    h.auto_auth = false;
    h.fragment = Fragment::Whole;
    let conn = h.accept();
    h.connect_on(
        conn,
        "c",
        V5,
        true,
        ConnectOpts::default().user("alice", "secret"),
    );
    h.publish(conn, "t", &"x".repeat(600), Q0, false);
    assert!(h.recv(conn).is_empty());
    h.publish(conn, "t", &"x".repeat(600), Q0, false);
    let got = h.recv(conn);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.code.0 == 0x97),
        "{got:?}"
    );
    assert!(h.is_closed(conn));
    // The late answer changes nothing.
    h.input(Input::AuthResult {
        conn,
        outcome: AuthOutcome::Allow { superuser: false },
    });
    assert_eq!(h.stats().sessions, 0);
}

#[test]
fn the_connect_timeout_runs_while_waiting() {
    let mut h = held();
    let timeout = h.broker.config().connect_timeout_ms;
    let conn = h.accept();
    h.connect_on(
        conn,
        "c",
        V5,
        true,
        ConnectOpts::default().user("alice", "secret"),
    );
    h.advance(timeout - 1);
    assert!(!h.is_closed(conn));
    // Bytes sent meanwhile do not push the deadline back.
    h.send(conn, &Packet::PingReq);
    h.advance(1);
    let got = h.recv(conn);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.code.0 == 0x88),
        "{got:?}"
    );
    assert!(h.is_closed(conn));
}

#[test]
fn an_answer_for_a_closed_connection_is_ignored() {
    let mut h = held();
    let conn = h.accept();
    h.connect_on(
        conn,
        "c",
        V5,
        true,
        ConnectOpts::default().user("alice", "secret"),
    );
    h.close(conn);
    h.input(Input::AuthResult {
        conn,
        outcome: AuthOutcome::Allow { superuser: false },
    });
    assert_eq!(h.stats().sessions, 0);
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn strict_checks_given_credentials_even_when_anonymous_is_allowed() {
    let mut config = users_config();
    config.allow_anonymous = true;
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default().user("alice", "bad"));
    assert_eq!(ack.code.0, 0x86);
    let (_, ack) = h.connect("d", V5, true, ConnectOpts::default());
    assert_eq!(ack.code.0, 0);
}

#[test]
fn nanomq_mode_with_anonymous_allowed_looks_at_no_credentials() {
    let mut config = users_config();
    config.allow_anonymous = true;
    config.auth.anonymous_mode = AnonymousMode::Nanomq;
    let mut h = Harness::with_config(config);
    h.auto_auth = false;
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default().user("alice", "bad"));
    assert_eq!(ack.code.0, 0);
    assert!(h.auth_asked.is_empty());
}

#[test]
fn nanomq_mode_without_anonymous_refuses_missing_credentials_and_checks_the_rest() {
    let mut config = users_config();
    config.auth.anonymous_mode = AnonymousMode::Nanomq;
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect("a", V311, true, ConnectOpts::default().username("alice"));
    assert_eq!(ack.code.0, 0x04);
    let (_, ack) = h.connect("b", V5, true, ConnectOpts::default());
    assert_eq!(ack.code.0, 0x86);
    let (_, ack) = h.connect(
        "c",
        V5,
        true,
        ConnectOpts::default().user("alice", "secret"),
    );
    assert_eq!(ack.code.0, 0);
    let (_, ack) = h.connect("d", V5, true, ConnectOpts::default().user("alice", "nope"));
    assert_eq!(ack.code.0, 0x86);
}

#[test]
fn a_password_file_alone_makes_the_core_ask() {
    let mut config = Config::default();
    config.auth.password_file = Some("/etc/tidemq/passwd".to_owned());
    let mut h = Harness::with_config(config);
    h.auto_auth = false;
    let conn = h.accept();
    assert!(
        h.connect_on(conn, "c", V5, true, ConnectOpts::default().user("u", "p"))
            .is_none()
    );
    assert_eq!(h.auth_asked.len(), 1);
}

#[test]
fn http_auth_settings_are_read_and_make_the_core_ask() {
    use tidemq_core::config_parse::{Format, load};
    let text = r#"auth {
  allow_anonymous = false
  http_auth {
    timeout = 2s
    on_error = allow
    auth_req {
      url = "http://127.0.0.1:8991/auth"
      method = get
      headers.x-api = "k"
      params = { clientid = "%c", username = "%u" }
    }
    acl_req { url = "http://127.0.0.1:8991/acl" }
  }
}"#;
    let (config, warnings) =
        load(&Config::default(), text, Format::Hocon, &BTreeMap::new()).unwrap();
    let h = &config.auth.http_auth;
    assert!(h.enable && h.asks() && h.allow_on_error);
    assert_eq!(h.timeout_ms, 2000);
    let req = h.auth_req.as_ref().unwrap();
    assert_eq!(req.method, "GET");
    assert_eq!(req.headers.get("x-api").map(String::as_str), Some("k"));
    assert_eq!(
        req.params,
        [
            ("clientid".to_owned(), "%c".to_owned()),
            ("username".to_owned(), "%u".to_owned())
        ]
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(h.asks_acl());
    assert_eq!(
        h.acl_req.as_ref().map(|r| r.url.as_str()),
        Some("http://127.0.0.1:8991/acl")
    );
    assert!(config.validate().is_ok());

    let mut h = Harness::with_config(config);
    h.auto_auth = false;
    let conn = h.accept();
    assert!(
        h.connect_on(conn, "c", V5, true, ConnectOpts::default().user("u", "p"))
            .is_none()
    );
    assert_eq!(h.auth_asked.len(), 1);
    assert!(h.log.iter().any(|o| matches!(
        o,
        tidemq_core::Output::Authenticate {
            method: tidemq_core::AuthMethod::PasswordThenHttp,
            ..
        }
    )));

    let mut bad = Config::default();
    bad.auth.http_auth.enable = true;
    bad.auth.http_auth.auth_req = Some(tidemq_core::config::HttpAuthRequest {
        url: "https://x/".to_owned(),
        ..Default::default()
    });
    assert!(bad.validate().is_err());
}
