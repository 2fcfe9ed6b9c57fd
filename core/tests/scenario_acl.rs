//! The ACL in the broker: PUBLISH and SUBSCRIBE decided by NanoMQ's rules, the reason codes
//! each version gets, `deny_action`, wills, and stored subscriptions after an ACL change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use std::collections::BTreeMap;

use harness::*;
use tidemq_core::codec::{Packet, ProtocolVersion};
use tidemq_core::config_parse::{Format, load};
use tidemq_core::{AuthOutcome, Config, ConnId, Input};

fn acl_config(extra: &str) -> Config {
    let text = format!(
        r#"
auth {{
  no_match = deny
  {extra}
  acl = {{
    rules = [
      {{ permit = allow, username = "admin" }}
      {{ permit = deny, action = publish, topics = ["secret/#"] }}
      {{ permit = allow, action = subscribe, topics = ["a/+", "$SYS/#"] }}
      {{ permit = allow, topics = ["own/${{clientid}}/#", "user/${{username}}"] }}
      {{ permit = allow, action = publish, topics = ["a/#", "secret/x"] }}
    ]
  }}
}}
"#
    );
    let (config, _) = load(&Config::default(), &text, Format::Hocon, &BTreeMap::new()).unwrap();
    assert!(config.acl.enable);
    config
}

fn client(h: &mut Harness, id: &str, version: ProtocolVersion, user: Option<&str>) -> ConnId {
    let mut opts = ConnectOpts::default();
    if let Some(u) = user {
        opts = opts.username(u);
    }
    let (conn, ack) = h.connect(id, version, true, opts);
    assert_eq!(ack.code.0, 0);
    conn
}

#[test]
fn subscribe_filters_are_checked_as_sets_of_topics() {
    let mut h = Harness::with_config(acl_config(""));
    let c = client(&mut h, "c1", V5, Some("bob"));
    let codes = |h: &mut Harness, f: &str| h.subscribe(c, f, Q1).reasons[0].0;
    assert_eq!(codes(&mut h, "a/b"), 1);
    assert_eq!(codes(&mut h, "a/+"), 1);
    // `a/+` does not cover `a/#` nor `a/b/c`.
    assert_eq!(codes(&mut h, "a/#"), 0x87);
    assert_eq!(codes(&mut h, "a/b/c"), 0x87);
    assert_eq!(codes(&mut h, "own/c1/x/#"), 1);
    assert_eq!(codes(&mut h, "own/c2/x"), 0x87);
    assert_eq!(codes(&mut h, "user/bob"), 1);
    assert_eq!(codes(&mut h, "user/+"), 0x87);
    assert_eq!(h.stats().subscriptions, 4);
    assert_eq!(h.stats().acl_denied, 4);
    assert_eq!(h.stats().acl_allowed, 4);
}

#[test]
fn a_3_1_1_subscription_denied_gets_0x80() {
    let mut h = Harness::with_config(acl_config(""));
    let c = client(&mut h, "c1", V311, None);
    assert_eq!(h.subscribe(c, "b/c", Q0).reasons[0].0, 0x80);
    assert_eq!(h.subscribe(c, "a/c", Q0).reasons[0].0, 0);
}

#[test]
fn a_denied_publish_reaches_no_subscriber_v5_is_told_0x87_3_1_1_is_acknowledged() {
    let mut h = Harness::with_config(acl_config(""));
    let admin = client(&mut h, "adm", V5, Some("admin"));
    assert_eq!(h.subscribe(admin, "#", Q1).reasons[0].0, 1);
    let v5 = client(&mut h, "p5", V5, Some("bob"));
    let v3 = client(&mut h, "p3", V311, Some("bob"));

    let pid = h.publish(v5, "secret/1", "no", Q1, false).unwrap();
    let got = h.recv(v5);
    assert!(matches!(&got[0], Packet::PubAck(a) if a.packet_id == pid && a.reason.0 == 0x87));
    let pid = h.publish(v5, "secret/2", "no", Q2, false).unwrap();
    let got = h.recv(v5);
    assert!(matches!(&got[0], Packet::PubRec(a) if a.packet_id == pid && a.reason.0 == 0x87));
    let pid = h.publish(v3, "secret/3", "no", Q1, false).unwrap();
    let got = h.recv(v3);
    assert!(
        matches!(&got[0], Packet::PubAck(a) if a.packet_id == pid),
        "{got:?}"
    );
    assert!(!h.is_closed(v3));
    // No match at all: no_match = deny.
    h.publish(v5, "elsewhere", "no", Q0, false);

    h.publish(v5, "a/1", "yes", Q1, false);
    h.publish(v3, "own/p3/x", "yes", Q0, false);
    // The admin is allowed everything by the first rule, even `secret/...`.
    h.publish(admin, "secret/4", "yes", Q0, false);
    let mut got = h.payloads(admin);
    got.sort();
    assert_eq!(got, ["yes", "yes", "yes"]);
}

#[test]
fn deny_action_disconnect_closes_on_a_denied_publish_or_subscribe() {
    let mut h = Harness::with_config(acl_config("deny_action = disconnect"));
    let c = client(&mut h, "c1", V5, None);
    h.publish(c, "secret/1", "no", Q1, false);
    assert_eq!(h.disconnect_reason(c), Some(0x87));
    assert!(h.is_closed(c));
    let c = client(&mut h, "c2", V311, None);
    let packet_id = 9;
    h.send(
        c,
        &Packet::Subscribe(tidemq_core::codec::Subscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![("zzz".to_owned(), Default::default())],
        }),
    );
    assert!(h.is_closed(c));
}

#[test]
fn a_will_to_a_denied_topic_refuses_the_connect() {
    let mut h = Harness::with_config(acl_config(""));
    let opts = ConnectOpts::default().will("secret/w", "x", Q0, false);
    let (conn, ack) = h.connect("c", V5, true, opts);
    assert_eq!(ack.code.0, 0x87);
    assert!(h.is_closed(conn));
}

#[test]
fn a_superuser_is_not_subject_to_the_acl() {
    let mut config = acl_config("");
    config.users.insert("root".to_owned(), "pw".to_owned());
    let mut h = Harness::with_config(config);
    h.auto_auth = false;
    let conn = h.accept();
    h.connect_on(
        conn,
        "r",
        V5,
        true,
        ConnectOpts::default().user("root", "pw"),
    );
    h.input(Input::AuthResult {
        conn,
        outcome: AuthOutcome::Allow { superuser: true },
    });
    h.recv(conn);
    assert_eq!(h.subscribe(conn, "zzz/#", Q0).reasons[0].0, 0);
}

#[test]
fn an_acl_change_removes_stored_subscriptions_now_denied() {
    let mut h = Harness::with_config(acl_config(""));
    let opts = ConnectOpts::default().username("bob").session_expiry(3600);
    let (c, _) = h.connect("c1", V5, true, opts.clone());
    assert_eq!(h.subscribe(c, "a/x", Q1).reasons[0].0, 1);
    assert_eq!(h.subscribe(c, "user/bob", Q1).reasons[0].0, 1);
    h.disconnect(c, 0);
    assert_eq!(h.stats().subscriptions, 2);

    // New rules: `a/...` no longer subscribable.
    let text = r#"auth { no_match = deny, acl = { rules = [
        { permit = allow, topics = ["user/${username}"] }
        { permit = allow, action = publish, topics = ["a/#"] }
    ] } }"#;
    let (new, _) = load(&Config::default(), text, Format::Hocon, &BTreeMap::new()).unwrap();
    h.input(Input::ConfigChange(Box::new(new)));
    assert_eq!(h.stats().subscriptions, 1);
    assert_eq!(h.stats().acl_revoked, 1);

    let pubr = client(&mut h, "p", V5, None);
    h.publish(pubr, "a/x", "gone", Q1, false);
    let (c, ack) = h.connect("c1", V5, false, opts);
    assert!(ack.session_present);
    assert!(h.payloads(c).is_empty());
}

#[test]
fn old_format_acl_keys_apply_in_rule_order() {
    let text = "acl_enable=true\nacl_nomatch=deny\nacl.rule.2={\"permit\": \"allow\", \"action\": \"subscribe\", \"topics\": [\"x\"]}\nacl.rule.1={\"permit\": \"deny\", \"topics\": [\"x\"]}\n";
    let (config, warnings) =
        load(&Config::default(), text, Format::KeyValue, &BTreeMap::new()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut h = Harness::with_config(config);
    let c = client(&mut h, "c", V5, None);
    assert_eq!(h.subscribe(c, "x", Q0).reasons[0].0, 0x87);
}

fn service_config() -> Config {
    let text = r#"auth {
  acl = { rules = [ { permit = deny, action = publish, topics = ["secret/#"] }, { permit = allow, action = subscribe, topics = ["open/#"] } ] }
  http_auth { acl_req { url = "http://127.0.0.1:9/acl", params = { topic = "%t" } } }
}"#;
    let (config, _) = load(&Config::default(), text, Format::Hocon, &BTreeMap::new()).unwrap();
    assert!(config.auth.http_auth.asks_acl());
    config
}

#[test]
fn the_acl_service_is_asked_only_what_no_rule_decides_and_the_packet_waits() {
    use tidemq_core::acl::Action;
    let mut h = Harness::with_config(service_config());
    h.fragment = Fragment::Whole;
    let watcher = client(&mut h, "w", V5, None);
    // `open/#` is decided by the file; `ask/#` is asked.
    let packet_id = 5;
    h.send(
        watcher,
        &Packet::Subscribe(tidemq_core::codec::Subscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![
                ("open/#".to_owned(), Default::default()),
                ("ask/#".to_owned(), Default::default()),
            ],
        }),
    );
    assert_eq!(
        h.acl_asked,
        [(watcher, Action::Subscribe, "ask/#".to_owned())]
    );
    // Held: nothing answered, and a PINGREQ behind it waits too.
    h.send(watcher, &Packet::PingReq);
    assert!(h.recv(watcher).is_empty());
    h.input(Input::AuthorizeResult {
        conn: watcher,
        action: Action::Subscribe,
        topic: "ask/#".to_owned(),
        allow: true,
    });
    let got = h.recv(watcher);
    assert!(
        matches!(&got[0], Packet::SubAck(s) if s.reasons.iter().map(|r| r.0).collect::<Vec<_>>() == [0, 0]),
        "{got:?}"
    );
    assert!(matches!(got[1], Packet::PingResp), "{got:?}");

    let p = client(&mut h, "p", V5, None);
    h.acl_asked.clear();
    // Denied by the file: not asked.
    let pid = h.publish(p, "secret/x", "no", Q1, false).unwrap();
    assert!(h.acl_asked.is_empty());
    assert!(matches!(&h.recv(p)[0], Packet::PubAck(a) if a.packet_id == pid && a.reason.0 == 0x87));
    // No rule: asked; the answer decides.
    let pid = h.publish(p, "ask/1", "no", Q1, false).unwrap();
    assert_eq!(h.acl_asked, [(p, Action::Publish, "ask/1".to_owned())]);
    assert!(h.recv(p).is_empty());
    h.input(Input::AuthorizeResult {
        conn: p,
        action: Action::Publish,
        topic: "ask/1".to_owned(),
        allow: false,
    });
    assert!(matches!(&h.recv(p)[0], Packet::PubAck(a) if a.packet_id == pid && a.reason.0 == 0x87));
    h.publish(p, "ask/2", "yes", Q0, false);
    h.input(Input::AuthorizeResult {
        conn: p,
        action: Action::Publish,
        topic: "ask/2".to_owned(),
        allow: true,
    });
    assert_eq!(h.payloads(watcher), ["yes"]);
    // An answer nobody waits for changes nothing.
    h.input(Input::AuthorizeResult {
        conn: p,
        action: Action::Publish,
        topic: "ask/3".to_owned(),
        allow: true,
    });
    assert!(h.recv(p).is_empty());
}
