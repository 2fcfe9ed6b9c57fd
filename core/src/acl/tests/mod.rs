use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::config_parse;

fn rules(v: Value) -> AclRules {
    AclRules::from_json(&v, Decision::Allow).unwrap()
}

fn rules_deny(v: Value) -> AclRules {
    AclRules::from_json(&v, Decision::Deny).unwrap()
}

fn who<'a>(client_id: &'a str, username: Option<&'a str>, ip: Option<&str>) -> Who<'a> {
    Who {
        client_id,
        username,
        ip: ip.map(|s| s.parse().unwrap()),
    }
}

fn anyone() -> Who<'static> {
    who("c", None, None)
}

fn error(v: Value) -> String {
    AclRules::from_json(&v, Decision::Allow)
        .unwrap_err()
        .to_string()
}

use Action::{Publish as Pub, Subscribe as Sub};
use Decision::{Allow, Deny};

// ----- parsing -------------------------------------------------------------------------------

#[test]
fn bad_rules_name_the_rule_and_key() {
    let cases: &[(Value, &str)] = &[
        (json!({}), "rules: expected an array of rules"),
        (
            json!([1]),
            "rules[0]: expected a rule object, found a number",
        ),
        (json!([{}]), "rules[0].permit: missing (allow or deny)"),
        (
            json!([{"permit": "allow"}, {"permit": "maybe"}]),
            "rules[1].permit: expected allow or deny, found \"maybe\"",
        ),
        (
            json!([{"permit": true}]),
            "rules[0].permit: expected a string, found a boolean",
        ),
        (
            json!([{"permit": "allow", "action": "pub"}]),
            "rules[0].action: expected publish, subscribe or pubsub, found \"pub\"",
        ),
        (
            json!([{"permit": "allow", "topic": ["a"]}]),
            "rules[0].topic: unknown key (expected permit, action, topics, username, clientid, ipaddr, ipaddrs, and, or)",
        ),
        (
            json!([{"permit": "allow", "topics": "a/#"}]),
            "rules[0].topics: expected an array of strings, found a string",
        ),
        (
            json!([{"permit": "allow", "topics": []}]),
            "rules[0].topics: is empty (leave the key out to mean every one)",
        ),
        (
            json!([{"permit": "allow", "topics": ["a", 3]}]),
            "rules[0].topics[1]: expected a string, found a number",
        ),
        (
            json!([{"permit": "allow", "topics": ["a/#/b"]}]),
            "rules[0].topics[0]: \"a/#/b\" is not a valid topic filter (BadWildcard)",
        ),
        (
            json!([{"permit": "allow", "topics": [""]}]),
            "rules[0].topics[0]: \"\" is not a valid topic filter (Empty)",
        ),
        (
            json!([{"permit": "allow", "topics": ["t/${client}"]}]),
            "rules[0].topics[0]: unknown placeholder at \"${client}\" (known: ${clientid}, ${username})",
        ),
        (
            json!([{"permit": "allow", "username": "u", "clientid": "c"}]),
            "rules[0]: has both username and clientid: a rule takes one of username, clientid, ipaddr, ipaddrs, and, or (combine them with and / or)",
        ),
        (
            json!([{"permit": "allow", "username": 5}]),
            "rules[0].username: expected a string, found a number",
        ),
        (
            json!([{"permit": "allow", "ipaddr": "10.0.0.1/8"}]),
            "rules[0].ipaddr: \"10.0.0.1/8\" has bits set past the prefix (the block starts at 10.0.0.0/8)",
        ),
        (
            json!([{"permit": "allow", "ipaddr": "10.0.0.0/33"}]),
            "rules[0].ipaddr: \"10.0.0.0/33\": prefix length must be 0 to 32",
        ),
        (
            json!([{"permit": "allow", "ipaddr": "localhost"}]),
            "rules[0].ipaddr: \"localhost\" is not an IP address or CIDR block",
        ),
        (
            json!([{"permit": "allow", "ipaddrs": ["10.0.0.1", "x"]}]),
            "rules[0].ipaddrs[1]: \"x\" is not an IP address or CIDR block",
        ),
        (
            json!([{"permit": "allow", "ipaddrs": []}]),
            "rules[0].ipaddrs: is empty (leave the key out to mean every one)",
        ),
        (
            json!([{"permit": "allow", "and": []}]),
            "rules[0].and: is empty",
        ),
        (
            json!([{"permit": "allow", "or": {"username": "u"}}]),
            "rules[0].or: expected an array of conditions, found an object",
        ),
        (
            json!([{"permit": "allow", "or": [{"username": "u"}, {"user": "v"}]}]),
            "rules[0].or[1].user: unknown key (expected username, clientid, ipaddr or ipaddrs)",
        ),
        (
            json!([{"permit": "allow", "and": [{"username": "u", "clientid": "c"}]}]),
            "rules[0].and[0]: expected exactly one of username, clientid, ipaddr, ipaddrs",
        ),
        (
            json!([{"permit": "allow", "and": ["u"]}]),
            "rules[0].and[0]: expected an object like {\"username\": \"u\"}, found a string",
        ),
    ];
    for (v, want) in cases {
        assert_eq!(&error(v.clone()), want, "{v}");
    }
}

#[test]
fn nanomq_documentation_example_reads() {
    let text = r##"
rules = [
  ## Allow MQTT client using username "dashboard"  to subscribe to "$SYS/#" topics
  {"permit": "allow", "username": "dashboard", "action": "subscribe", "topics": ["$SYS/#"]}

  ## Deny "All Users" subscribe to "$SYS/#" "#" Topics
  {"permit": "deny", "username": "#", "action": "subscribe", "topics": ["$SYS/#", "#"]}

  # unquoted HOCON works too
  {permit = allow, clientid = 007, topics = ["t/${clientid}/#", "@x/+"]}

  ## Allow any other publish/subscribe operation
  {"permit": "allow"}
]
"##;
    let acl = AclRules::from_acl_conf(text, &BTreeMap::new(), Deny).unwrap();
    assert_eq!(acl.len(), 4);
    let dash = who("d", Some("dashboard"), None);
    assert_eq!(acl.check(&dash, Sub, "$SYS/brokers/#"), Allow);
    assert_eq!(acl.check(&dash, Sub, "#"), Deny);
    let other = who("d", Some("bob"), None);
    assert_eq!(acl.check(&other, Sub, "$SYS/brokers"), Deny);
    assert_eq!(
        acl.check(&other, Sub, "a/b"),
        Deny,
        "\"#\" denies every filter"
    );
    assert_eq!(acl.check(&other, Pub, "a/b"), Allow);
    // `username: "#"` covers clients without a user name too.
    assert_eq!(acl.check(&anyone(), Sub, "a/b"), Deny);
    // `${clientid}` in a quoted HOCON string is left for the ACL, and 007 stays "007".
    let c = acl.explain(&who("007", None, None), Pub, "t/007/x");
    assert_eq!(c, (Allow, Reason::Rule(2)));
}

#[test]
fn acl_conf_errors() {
    let env = BTreeMap::new();
    let e = AclRules::from_acl_conf("rules = [ {permit = allow}, {permit = alow} ]", &env, Allow)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1: rules[1].permit: expected allow or deny, found \"alow\""
    );
    let e = AclRules::from_acl_conf("x = 1\nrules = []", &env, Allow).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1: x: unknown key (an ACL file holds only `rules = [...]`)"
    );
    let e = AclRules::from_acl_conf("rules { a = 1 }", &env, Allow).unwrap_err();
    assert_eq!(e.to_string(), "line 1: rules: expected an array of rules");
    let e = AclRules::from_acl_conf("# nothing\n", &env, Allow).unwrap_err();
    assert_eq!(e.to_string(), "rules: missing: expected rules = [ ... ]");
    let e = AclRules::from_acl_conf("rules = [", &env, Allow).unwrap_err();
    assert!(e.message.starts_with("not valid HOCON"), "{e}");
    let e = AclRules::from_acl_conf("include \"x.conf\"\nrules = []", &env, Allow).unwrap_err();
    assert!(e.message.contains("was not expanded"), "{e}");
    // An empty list of rules is fine: no_match decides everything.
    let acl = AclRules::from_acl_conf("rules = []", &env, Deny).unwrap();
    assert!(acl.is_empty());
    assert_eq!(acl.explain(&anyone(), Pub, "a"), (Deny, Reason::NoMatch));
}

#[test]
fn old_format_keys() {
    let text = r##"
url=nmq-tcp://0.0.0.0:1883
acl_enable=true
acl_nomatch=deny
acl_deny_action=disconnect
## applied in the order of the numbers, not of the lines
acl.rule.10={"permit": "allow"}
acl.rule.2={"permit": "deny", "username": "#", "action": "subscribe", "topics": ["$SYS/#"]}
acl.rule.1={"permit": "allow", "username": "dashboard", "action": "subscribe", "topics": ["$SYS/#"]}
"##;
    let s = AclSettings::from_old_conf(text).unwrap();
    assert!(s.enable);
    assert_eq!(s.deny_action, DenyAction::Disconnect);
    assert_eq!(s.rules.no_match(), Deny);
    assert_eq!(s.rules.len(), 3);
    let dash = who("d", Some("dashboard"), None);
    assert_eq!(
        s.rules.explain(&dash, Sub, "$SYS/#"),
        (Allow, Reason::Rule(0))
    );
    assert_eq!(
        s.rules.explain(&anyone(), Sub, "$SYS/#"),
        (Deny, Reason::Rule(1))
    );
    assert_eq!(
        s.rules.explain(&anyone(), Pub, "a"),
        (Allow, Reason::Rule(2))
    );

    let defaults = AclSettings::from_old_conf("acl.rule.1={\"permit\": \"deny\"}\n").unwrap();
    assert!(!defaults.enable, "acl_enable defaults to false");
    assert_eq!(defaults.rules.no_match(), Allow);
    assert_eq!(defaults.deny_action, DenyAction::Ignore);

    let err = |t: &str| AclSettings::from_old_conf(t).unwrap_err().to_string();
    assert_eq!(
        err("acl.rule.1={\"permit\": \"allow\"}\nacl.rule.1={\"permit\": \"deny\"}\n"),
        "line 2: acl.rule.1: rule 1 is already defined on line 1"
    );
    assert_eq!(
        err("\nacl.rule.x={\"permit\": \"allow\"}"),
        "line 2: acl.rule.x: expected acl.rule.<number>={json}"
    );
    assert_eq!(
        err("acl.rule.3={\"permit\": \"allow\""),
        "line 1: acl.rule.3: not valid JSON: EOF while parsing an object at line 1 column 18"
    );
    assert_eq!(
        err("x=1\nacl.rule.3={\"permit\": \"allow\", \"action\": \"all\"}"),
        "line 2: acl.rule.3.action: expected publish, subscribe or pubsub, found \"all\""
    );
    assert_eq!(
        err("acl_enable=yes"),
        "line 1: acl_enable: expected true or false"
    );
    assert_eq!(
        err("acl_nomatch=permit"),
        "line 1: acl_nomatch: expected allow or deny, found \"permit\""
    );
    // NanoMQ's blog shows this malformed `or`; it is refused, not silently dropped.
    assert!(
        err(r#"acl.rule.1={"permit": "deny", "or" :["username": "u", "clientid": "m"]}"#)
            .starts_with("line 1: acl.rule.1: not valid JSON")
    );
}

#[test]
fn hocon_config_entries() {
    let text = r#"
auth {
  allow_anonymous = true
  no_match = deny
  deny_action = ignore
  acl {
    rules = [
      {"permit": "allow", "ipaddrs": ["127.0.0.1", "::1"]}
      {"permit": "allow", "action": "publish", "and": [{"username": "u"}, {"ipaddr": "10.0.0.0/8"}]}
    ]
  }
}
"#;
    let entries = config_parse::parse_hocon(text, &BTreeMap::new()).unwrap();
    let s = AclSettings::from_entries(&entries).unwrap();
    assert!(s.enable, "an auth.acl section turns the ACL on");
    assert_eq!(s.rules.no_match(), Deny);
    assert_eq!(s.rules.len(), 2);
    assert_eq!(s.rules.check(&who("c", None, Some("::1")), Sub, "#"), Allow);
    assert_eq!(
        s.rules
            .check(&who("c", Some("u"), Some("10.9.9.9")), Pub, "x"),
        Allow
    );
    assert_eq!(
        s.rules
            .check(&who("c", Some("u"), Some("10.9.9.9")), Sub, "x"),
        Deny
    );

    let off = config_parse::parse_hocon(
        "auth { acl { enable = false, rules = [] } }",
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(!AclSettings::from_entries(&off).unwrap().enable);
    let none =
        config_parse::parse_hocon("auth { allow_anonymous = true }", &BTreeMap::new()).unwrap();
    let s = AclSettings::from_entries(&none).unwrap();
    assert!(!s.enable);
    assert!(s.rules.is_empty());

    let bad = config_parse::parse_hocon(
        "auth {\n acl {\n rules = [\n {permit = allow, action = sub} ] } }",
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        AclSettings::from_entries(&bad).unwrap_err().to_string(),
        "line 3: auth.acl.rules[0].action: expected publish, subscribe or pubsub, found \"sub\""
    );
    let bad = config_parse::parse_hocon("auth.acl.rule = []", &BTreeMap::new()).unwrap();
    assert_eq!(
        AclSettings::from_entries(&bad).unwrap_err().to_string(),
        "line 1: auth.acl.rule: unknown ACL key (expected enable or rules)"
    );
}

#[test]
fn from_raw_reads_numbers_as_text() {
    let raw = Raw::List(vec![Raw::Object(vec![
        ("permit".into(), Raw::Str("allow".into())),
        ("username".into(), Raw::Num("1e3".into())),
    ])]);
    let acl = AclRules::from_raw(&raw, Deny).unwrap();
    assert_eq!(acl.check(&who("c", Some("1e3"), None), Pub, "t"), Allow);
    assert_eq!(acl.check(&who("c", Some("1000"), None), Pub, "t"), Deny);
}

// ----- selectors -----------------------------------------------------------------------------

#[test]
fn username_and_clientid() {
    let acl = rules_deny(json!([
        {"permit": "allow", "username": "alice"},
        {"permit": "allow", "clientid": "dev-1"},
    ]));
    assert_eq!(acl.check(&who("x", Some("alice"), None), Pub, "t"), Allow);
    assert_eq!(acl.check(&who("x", Some("alic"), None), Pub, "t"), Deny);
    assert_eq!(acl.check(&who("x", None, None), Pub, "t"), Deny);
    assert_eq!(acl.check(&who("dev-1", None, None), Pub, "t"), Allow);
    assert_eq!(acl.check(&who("dev-10", None, None), Pub, "t"), Deny);
    // "#" is anyone, with or without a user name.
    let any = rules_deny(json!([{"permit": "allow", "username": "#"}]));
    assert_eq!(any.check(&anyone(), Pub, "t"), Allow);
    let any = rules_deny(json!([{"permit": "allow", "clientid": "#"}]));
    assert_eq!(any.check(&anyone(), Pub, "t"), Allow);
}

#[test]
fn ip_addresses_cidr_and_v6() {
    let acl = rules_deny(json!([
        {"permit": "allow", "ipaddr": "192.168.1.7", "topics": ["one"]},
        {"permit": "allow", "ipaddrs": ["10.0.0.0/8", "172.16.0.0/12", "2001:db8::/32"], "topics": ["many"]},
        {"permit": "allow", "ipaddr": "::1", "topics": ["v6"]},
        {"permit": "allow", "ipaddr": "::ffff:100.64.0.0/106", "topics": ["mapped"]},
        {"permit": "allow", "ipaddrs": ["0.0.0.0/0"], "topics": ["all4"]},
        {"permit": "allow", "ipaddr": "#", "topics": ["any"]},
    ]));
    let ok = |ip: &str, t: &str| acl.check(&who("c", None, Some(ip)), Pub, t) == Allow;
    assert!(ok("192.168.1.7", "one"));
    assert!(!ok("192.168.1.8", "one"));
    assert!(
        ok("::ffff:192.168.1.7", "one"),
        "IPv4-mapped peers match IPv4 rules"
    );
    assert!(ok("10.255.0.1", "many"));
    assert!(ok("172.31.255.255", "many"));
    assert!(!ok("172.32.0.0", "many"));
    assert!(ok("2001:db8:ffff::1", "many"));
    assert!(!ok("2001:db9::1", "many"));
    assert!(!ok("::ffff:2001:db8", "many"));
    assert!(ok("::1", "v6"));
    assert!(!ok("127.0.0.1", "v6"));
    assert!(
        ok("100.127.1.1", "mapped"),
        "mapped CIDR rules become IPv4 blocks"
    );
    assert!(!ok("100.128.0.0", "mapped"));
    assert!(ok("8.8.8.8", "all4"));
    assert!(!ok("::2", "all4"));
    assert!(ok("::2", "any"));
    // Without an address only "#" matches.
    assert_eq!(acl.check(&who("c", None, None), Pub, "many"), Deny);
    assert_eq!(acl.check(&who("c", None, None), Pub, "any"), Allow);
    let mapped_net = ip_net("::ffff:10.0.0.0/104").unwrap();
    assert_eq!(
        mapped_net,
        IpNet {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8
        }
    );
    // Below /96 a mapped block always has bits of ffff past its prefix.
    assert!(ip_net("::ffff:0:0/95").is_err());
    assert_eq!(ip_net("::ffff:0:0/96").unwrap().prefix, 0);
    assert!(ip_net("fe80::1/10").is_err());
    assert!(ip_net("fe80::/10").is_ok());
    assert!(ip_net("0.0.0.0/0").is_ok());
    assert!(ip_net("::/0").is_ok());
}

#[test]
fn and_or() {
    let acl = rules_deny(json!([
        {"permit": "allow", "and": [{"username": "u"}, {"clientid": "c"}, {"ipaddrs": ["10.0.0.0/8"]}], "topics": ["and"]},
        {"permit": "allow", "or": [{"username": "u"}, {"clientid": "c"}, {"ipaddr": "10.0.0.1"}], "topics": ["or"]},
    ]));
    let ok = |w: Who<'_>, t: &str| acl.check(&w, Pub, t) == Allow;
    assert!(ok(who("c", Some("u"), Some("10.1.1.1")), "and"));
    assert!(!ok(who("c", Some("u"), Some("11.1.1.1")), "and"));
    assert!(!ok(who("c", Some("v"), Some("10.1.1.1")), "and"));
    assert!(!ok(who("c", Some("u"), None), "and"));
    assert!(ok(who("x", Some("u"), None), "or"));
    assert!(ok(who("c", None, None), "or"));
    assert!(ok(who("x", None, Some("10.0.0.1")), "or"));
    assert!(!ok(who("x", Some("v"), Some("10.0.0.2")), "or"));
}

// ----- actions, order, no_match --------------------------------------------------------------

#[test]
fn first_match_wins_and_no_match() {
    let acl = rules(json!([
        {"permit": "deny", "action": "publish", "topics": ["a/#"]},
        {"permit": "allow", "action": "publish", "topics": ["a/b"]},
        {"permit": "allow", "action": "subscribe", "topics": ["a/#"]},
        {"permit": "deny", "topics": ["x"]},
    ]));
    let w = anyone();
    assert_eq!(acl.explain(&w, Pub, "a/b"), (Deny, Reason::Rule(0)));
    assert_eq!(acl.explain(&w, Sub, "a/b"), (Allow, Reason::Rule(2)));
    assert_eq!(acl.explain(&w, Pub, "x"), (Deny, Reason::Rule(3)));
    assert_eq!(acl.explain(&w, Sub, "x"), (Deny, Reason::Rule(3)));
    assert_eq!(acl.explain(&w, Pub, "y"), (Allow, Reason::NoMatch));
    let acl = acl.with_no_match(Deny);
    assert_eq!(acl.explain(&w, Pub, "y"), (Deny, Reason::NoMatch));
    assert_eq!(AclRules::default().check(&w, Pub, "y"), Allow);
}

// ----- topics --------------------------------------------------------------------------------

#[test]
fn publish_matching() {
    let acl = rules_deny(json!([{"permit": "allow", "topics": ["a/+/c", "b/#", "$SYS/x"]}]));
    let ok = |t: &str| acl.check(&anyone(), Pub, t) == Allow;
    assert!(ok("a/b/c"));
    assert!(ok("a//c"));
    assert!(!ok("a/b/c/d"));
    assert!(ok("b"), "b/# covers b itself");
    assert!(ok("b/x/y"));
    assert!(ok("$SYS/x"));
    assert!(!ok("bb"));
    // In an ACL, wildcards cover $ topics.
    let all = rules_deny(json!([{"permit": "allow", "topics": ["#"]}]));
    assert_eq!(all.check(&anyone(), Pub, "$SYS/x"), Allow);
    let plus = rules_deny(json!([{"permit": "allow", "topics": ["+/x"]}]));
    assert_eq!(plus.check(&anyone(), Pub, "$foo/x"), Allow);
}

#[test]
fn invalid_topics_and_filters_are_denied() {
    let acl = rules(json!([{"permit": "allow"}]));
    for t in ["", "a/+", "#", "a/#"] {
        assert_eq!(
            acl.explain(&anyone(), Pub, t),
            (Deny, Reason::Invalid),
            "{t:?}"
        );
    }
    for f in [
        "",
        "a/#/b",
        "a+",
        "$share/g",
        "$share//a",
        "$share/g+/a",
        "$share/g/",
    ] {
        assert_eq!(
            acl.explain(&anyone(), Sub, f),
            (Deny, Reason::Invalid),
            "{f:?}"
        );
    }
}

#[test]
fn subscribe_allow_needs_a_subset() {
    let acl = rules_deny(json!([{"permit": "allow", "action": "subscribe", "topics": ["a/+"]}]));
    let ok = |f: &str| acl.check(&anyone(), Sub, f) == Allow;
    assert!(ok("a/b"));
    assert!(ok("a/+"));
    assert!(!ok("a/#"), "a/# also covers a and a/b/c");
    assert!(!ok("a"));
    assert!(!ok("+/b"));
    assert!(!ok("#"));
    let acl = rules_deny(json!([{"permit": "allow", "action": "subscribe", "topics": ["a/#"]}]));
    let ok = |f: &str| acl.check(&anyone(), Sub, f) == Allow;
    assert!(ok("a/+/c"));
    assert!(ok("a/#"));
    assert!(ok("a"));
    assert!(ok("a/+/#"));
    assert!(!ok("+/b"));
    assert!(!ok("#"));
    assert!(ok("$share/g/a/+"), "the share prefix is removed first");
    // `#` and `+/#` are the same set (a topic has at least one level).
    let acl = rules_deny(json!([{"permit": "allow", "action": "subscribe", "topics": ["+/#"]}]));
    assert_eq!(acl.check(&anyone(), Sub, "#"), Allow);
    let acl = rules_deny(json!([{"permit": "allow", "action": "subscribe", "topics": ["a/+/#"]}]));
    assert_eq!(acl.check(&anyone(), Sub, "a/#"), Deny, "a/# covers a");
    assert!(!ok("$share/g/b"));
}

#[test]
fn subscribe_deny_applies_on_overlap() {
    let acl = rules(json!([
        {"permit": "deny", "action": "subscribe", "topics": ["$SYS/#"]},
        {"permit": "deny", "action": "subscribe", "topics": ["secret/+/data"]},
    ]));
    let denied = |f: &str| acl.check(&anyone(), Sub, f) == Deny;
    assert!(denied("#"), "# could receive what $SYS/# covers");
    assert!(denied("$SYS/brokers"));
    assert!(denied("$SYS/+/x"));
    assert!(denied("+/brokers"));
    assert!(denied("+"), "+ matches $SYS itself, which $SYS/# covers");
    assert!(denied("$share/g/#"));
    assert!(!denied("a/#"));
    assert!(!denied("$SYSTEM/#"));
    assert!(denied("secret/#"));
    assert!(denied("secret/+/+"));
    assert!(denied("+/a/data"));
    assert!(!denied("secret/a/data/more"));
    assert!(!denied("secret/a"));
    assert!(!denied("secret/+/other"));
}

#[test]
fn at_means_exact() {
    let acl = rules(json!([
        {"permit": "deny", "action": "subscribe", "topics": ["@#"]},
        {"permit": "deny", "topics": ["@a/+"]},
    ]));
    assert_eq!(acl.check(&anyone(), Sub, "#"), Deny);
    assert_eq!(acl.check(&anyone(), Sub, "$share/g/#"), Deny);
    assert_eq!(acl.check(&anyone(), Sub, "a/#"), Allow);
    assert_eq!(acl.check(&anyone(), Sub, "a/+"), Deny);
    assert_eq!(acl.check(&anyone(), Sub, "a/b"), Allow);
    assert_eq!(acl.check(&anyone(), Pub, "a/b"), Allow);
    // "@" alone is the topic "@".
    let at = rules_deny(json!([{"permit": "allow", "topics": ["@"]}]));
    assert_eq!(at.check(&anyone(), Pub, "@"), Allow);
    assert_eq!(
        error(json!([{"permit": "allow", "topics": ["@a/#/b"]}])),
        "rules[0].topics[0]: \"@a/#/b\" is not a valid topic filter (BadWildcard)"
    );
}

#[test]
fn placeholders() {
    let acl = rules_deny(json!([
        {"permit": "allow", "topics": ["dev/${clientid}/#", "user/${username}", "@raw/${clientid}-${username}/+"]},
        {"permit": "allow", "clientid": "other", "topics": ["o"]},
    ]));
    let ok = |w: Who<'_>, a: Action, t: &str| acl.check(&w, a, t) == Allow;
    let w = who("c1", Some("u1"), None);
    assert!(ok(w, Pub, "dev/c1"));
    assert!(ok(w, Pub, "dev/c1/x/y"));
    assert!(!ok(w, Pub, "dev/c2/x"));
    assert!(ok(w, Sub, "dev/c1/+"));
    assert!(
        !ok(w, Sub, "dev/+/x"),
        "other clients' topics are not a subset"
    );
    assert!(ok(w, Pub, "user/u1"));
    assert!(!ok(w, Pub, "user/u2"));
    assert!(ok(w, Sub, "raw/c1-u1/+"));
    assert!(!ok(w, Sub, "raw/c1-u1/x"));
    assert!(
        !ok(w, Pub, "dev/${clientid}/x"),
        "the placeholder is not literal"
    );
    // No (or an empty) user name: that topic applies to nobody; the others still do.
    let anon = who("c1", None, None);
    assert!(!ok(anon, Pub, "user/"));
    assert!(ok(anon, Pub, "dev/c1/x"));
    assert!(!ok(who("c1", Some(""), None), Pub, "user/"));
    assert!(!ok(who("", Some("u1"), None), Pub, "dev//x"));
    // Wildcards or '/' in a substituted value deny the whole check.
    for w in [
        who("a+b", None, None),
        who("#", None, None),
        who("a/b", None, None),
        who("c1", Some("u/1"), None),
    ] {
        assert_eq!(
            acl.explain(&w, Pub, "anything"),
            (Deny, Reason::UnsafePlaceholder(0)),
            "{w:?}"
        );
    }
    // Only rules that fit the client are looked at.
    let scoped = rules(json!([
        {"permit": "allow", "username": "admin", "topics": ["u/${username}"]},
        {"permit": "deny", "topics": ["z"]},
    ]));
    assert_eq!(
        scoped.explain(&who("c", Some("a/b"), None), Pub, "q"),
        (Allow, Reason::NoMatch)
    );
}

// ----- filter-in-filter: exhaustive against brute force --------------------------------------

/// MQTT matching without the `$` exception: the ACL's reading of a filter.
fn oracle_match(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Every topic of 1..=depth levels over `alphabet`.
fn universe(alphabet: &[&str], depth: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut layer: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
    for _ in 0..depth {
        out.extend(layer.iter().cloned());
        layer = layer
            .iter()
            .flat_map(|t| alphabet.iter().map(move |a| format!("{t}/{a}")))
            .collect();
    }
    out
}

/// Every valid filter of 1..=depth levels over `levels`, `#` only last.
fn filters(levels: &[&str], depth: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut prefixes = vec![String::new()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for p in &prefixes {
            all.push(if p.is_empty() {
                "#".to_owned()
            } else {
                format!("{p}/#")
            });
            for l in levels {
                let f = if p.is_empty() {
                    (*l).to_owned()
                } else {
                    format!("{p}/{l}")
                };
                all.push(f.clone());
                next.push(f);
            }
        }
        prefixes = next;
    }
    // "" alone is not a valid filter; "/" and such are.
    all.retain(|f| !f.is_empty());
    all
}

fn compile(filter: &str) -> Vec<Level> {
    match rule_topic(filter, "t", None).unwrap().kind {
        TopicKind::Filter(levels) => levels,
        TopicKind::Exact(_) => unreachable!(),
    }
}

#[test]
fn subset_and_intersection_match_brute_force() {
    // Filters use {a, "", +, #}; topics add the fresh level z, one level deeper.
    let fs = filters(&["a", "", "+"], 3);
    let u = universe(&["a", "", "z"], 4);
    let w = anyone();
    let mut checked = 0;
    for c in &fs {
        let cm: Vec<bool> = u.iter().map(|t| oracle_match(c, t)).collect();
        for r in &fs {
            let levels = compile(r);
            let rm = u.iter().map(|t| oracle_match(r, t));
            let (mut subset, mut meet) = (true, false);
            for (x, y) in cm.iter().zip(rm) {
                subset &= !x || y;
                meet |= *x && y;
            }
            assert_eq!(is_subset(c, &levels, &w), subset, "{c} ⊆ {r}");
            assert_eq!(intersects(c, &levels, &w), meet, "{c} ∩ {r}");
            checked += 1;
        }
        for t in &u {
            assert_eq!(
                matches_topic(&compile(c), t, &w),
                oracle_match(c, t),
                "{c} matches {t}"
            );
        }
    }
    assert!(checked > 2000, "{checked}");
}

mod oracle;
