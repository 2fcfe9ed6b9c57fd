//! Whole checks against an independent oracle.

use super::*;

// ----- whole checks against an oracle --------------------------------------------------------

const CLIENT_IDS: &[&str] = &["c1", "a", "x+y", "p/q", ""];
const USERNAMES: &[Option<&str>] = &[None, Some("u1"), Some("a"), Some("#u"), Some("")];
const IPS: &[Option<&str>] = &[
    None,
    Some("10.0.0.5"),
    Some("10.1.2.3"),
    Some("192.168.1.9"),
    Some("::1"),
    Some("2001:db8::7"),
    Some("::ffff:10.0.0.5"),
];
const RULE_IPS: &[&str] = &[
    "#",
    "10.0.0.0/8",
    "10.0.0.5",
    "2001:db8::/32",
    "::1",
    "192.168.0.0/16",
];
const LEVELS: &[&str] = &["a", "b", "c1", "u1", ""];

/// The spec, written plainly: substitution by string replacement, sets by enumeration.
fn oracle(rules: &[Value], no_match: Decision, w: &Who<'_>, action: Action, raw: &str) -> Decision {
    let subject = match action {
        Action::Publish => {
            if raw.is_empty() || raw.contains(['+', '#']) {
                return Deny;
            }
            raw
        }
        Action::Subscribe => match topic::parse_subscription(raw, usize::MAX) {
            Ok(p) => p.filter,
            Err(_) => return Deny,
        },
    };
    let ip = w.ip.map(IpAddress::canonical);
    let in_net = |net: &str| -> bool {
        if net == "#" {
            return true;
        }
        let Some(ip) = ip else { return false };
        let (a, p) = net.split_once('/').unwrap_or((net, ""));
        let a: IpAddress = a.parse().unwrap();
        let bits = |x: IpAddress| -> Vec<bool> {
            x.octets()
                .iter()
                .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
                .collect()
        };
        let (ab, ib) = (bits(a), bits(ip));
        let p: usize = if p.is_empty() {
            ab.len()
        } else {
            p.parse().unwrap()
        };
        ab.len() == ib.len() && ab[..p] == ib[..p]
    };
    let cond = |k: &str, v: &Value| -> bool {
        match k {
            "username" => v.as_str() == Some("#") || w.username == v.as_str(),
            "clientid" => v.as_str() == Some("#") || Some(w.client_id) == v.as_str(),
            "ipaddr" => in_net(v.as_str().unwrap()),
            "ipaddrs" => v
                .as_array()
                .unwrap()
                .iter()
                .any(|x| in_net(x.as_str().unwrap())),
            _ => unreachable!(),
        }
    };
    let u = universe(&["a", "b", "c1", "u1", "", "z"], 4);
    for rule in rules {
        let r = rule.as_object().unwrap();
        let permit = if r["permit"] == "allow" { Allow } else { Deny };
        let fits = match r.get("action").and_then(Value::as_str) {
            None | Some("pubsub") => true,
            Some("publish") => action == Action::Publish,
            Some(_) => action == Action::Subscribe,
        };
        let mut applies_to = true;
        for (k, v) in r {
            match k.as_str() {
                "and" => {
                    applies_to = v.as_array().unwrap().iter().all(|o| {
                        let (k, v) = o.as_object().unwrap().iter().next().unwrap();
                        cond(k, v)
                    })
                }
                "or" => {
                    applies_to = v.as_array().unwrap().iter().any(|o| {
                        let (k, v) = o.as_object().unwrap().iter().next().unwrap();
                        cond(k, v)
                    })
                }
                "username" | "clientid" | "ipaddr" | "ipaddrs" => applies_to = cond(k, v),
                _ => {}
            }
        }
        if !fits || !applies_to {
            continue;
        }
        let Some(topics) = r.get("topics") else {
            return permit;
        };
        let topics: Vec<&str> = topics
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let bad = |s: &str| s.contains(['+', '#', '/']);
        if topics.iter().any(|t| t.contains("${clientid}")) && bad(w.client_id) {
            return Deny;
        }
        if topics.iter().any(|t| t.contains("${username}")) && w.username.is_some_and(bad) {
            return Deny;
        }
        for t in topics {
            if (t.contains("${clientid}") && w.client_id.is_empty())
                || (t.contains("${username}") && w.username.unwrap_or("").is_empty())
            {
                continue;
            }
            let t = t
                .replace("${clientid}", w.client_id)
                .replace("${username}", w.username.unwrap_or(""));
            let hit = if t.len() > 1 && t.starts_with('@') {
                t[1..] == *subject
            } else {
                match (action, permit) {
                    (Action::Publish, _) => oracle_match(&t, subject),
                    (Action::Subscribe, Allow) => u
                        .iter()
                        .all(|x| !oracle_match(subject, x) || oracle_match(&t, x)),
                    (Action::Subscribe, Deny) => u
                        .iter()
                        .any(|x| oracle_match(subject, x) && oracle_match(&t, x)),
                }
            };
            if hit {
                return permit;
            }
        }
    }
    no_match
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn filter_strategy(rule: bool) -> impl Strategy<Value = String> {
    let level = if rule {
        prop_oneof![
            pick(LEVELS).prop_map(str::to_owned),
            Just("+".to_owned()),
            Just("${clientid}".to_owned()),
            Just("${username}".to_owned()),
        ]
        .boxed()
    } else {
        prop_oneof![pick(LEVELS).prop_map(str::to_owned), Just("+".to_owned())].boxed()
    };
    (prop::collection::vec(level, 1..=3), any::<bool>(), 0u8..8).prop_map(
        move |(levels, hash, extra)| {
            let mut f = levels.join("/");
            if rule && f.is_empty() {
                f.push('a');
            }
            if hash {
                f.push_str("/#");
            }
            if extra == 0 {
                f = "#".to_owned();
            }
            if rule && extra == 1 {
                f.insert(0, '@');
            }
            if !rule && extra == 2 {
                f.insert_str(0, "$share/g/");
            }
            if !rule && extra == 3 {
                f.push_str("/a#");
            }
            f
        },
    )
}

fn topic_strategy() -> impl Strategy<Value = String> {
    (prop::collection::vec(pick(LEVELS), 1..=3), 0u8..10).prop_map(|(l, extra)| {
        let mut t = l.join("/");
        if extra == 0 {
            t.push_str("/+");
        }
        t
    })
}

fn cond_strategy() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        pick(&["#", "u1", "a"]).prop_map(|u| ("username".to_owned(), json!(u))),
        pick(&["#", "c1", "a"]).prop_map(|c| ("clientid".to_owned(), json!(c))),
        pick(RULE_IPS).prop_map(|ip| ("ipaddr".to_owned(), json!(ip))),
        prop::collection::vec(pick(RULE_IPS), 1..=3)
            .prop_map(|ips| ("ipaddrs".to_owned(), json!(ips))),
    ]
}

fn rule_strategy() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        pick(&[None, Some("publish"), Some("subscribe"), Some("pubsub")]),
        0u8..4,
        cond_strategy(),
        prop::collection::vec(cond_strategy(), 1..=3),
        proptest::option::weighted(0.8, prop::collection::vec(filter_strategy(true), 1..=3)),
    )
        .prop_map(|(allow, action, sel, one, many, topics)| {
            let mut r = serde_json::Map::new();
            r.insert("permit".into(), json!(if allow { "allow" } else { "deny" }));
            if let Some(a) = action {
                r.insert("action".into(), json!(a));
            }
            match sel {
                1 => {
                    r.insert(one.0, one.1);
                }
                2 | 3 => {
                    let list: Vec<Value> = many.into_iter().map(|(k, v)| json!({ k: v })).collect();
                    r.insert(
                        if sel == 2 { "and" } else { "or" }.into(),
                        Value::Array(list),
                    );
                }
                _ => {}
            }
            if let Some(t) = topics {
                r.insert("topics".into(), json!(t));
            }
            Value::Object(r)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn check_agrees_with_the_oracle(
        rule_list in prop::collection::vec(rule_strategy(), 0..=4),
        deny_by_default in any::<bool>(),
        cid in pick(CLIENT_IDS),
        user in pick(USERNAMES),
        ip in pick(IPS),
        subscribe in any::<bool>(),
        topic in topic_strategy(),
        filter in filter_strategy(false),
    ) {
        let no_match = if deny_by_default { Deny } else { Allow };
        let acl = AclRules::from_json(&Value::Array(rule_list.clone()), no_match).unwrap();
        let w = who(cid, user, ip);
        let (action, subject) = if subscribe { (Sub, filter) } else { (Pub, topic) };
        let (got, why) = acl.explain(&w, action, &subject);
        let want = oracle(&rule_list, no_match, &w, action, &subject);
        prop_assert_eq!(got, want, "{:?} {} {:?} rules {}", why, subject, w, Value::Array(rule_list));
    }

    #[test]
    fn any_json_is_parsed_or_refused(v in arb_json()) {
        let _ = AclRules::from_json(&Value::Array(vec![v.clone()]), Allow);
        let _ = AclRules::from_json(&v, Allow);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        pick(&[
            "allow",
            "deny",
            "publish",
            "subscribe",
            "pubsub",
            "#",
            "a/+",
            "@#",
            "10.0.0.0/8",
            "${clientid}",
            "::1"
        ])
        .prop_map(|s| json!(s)),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    pick(&[
                        "permit", "action", "topics", "username", "clientid", "ipaddr", "ipaddrs",
                        "and", "or", "x"
                    ]),
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}
