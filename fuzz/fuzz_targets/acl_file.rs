//! ACL files, HOCON `rules = [...]` (even first byte) or old-format `acl.rule.N=...` lines
//! (odd), then after a NUL: a client (id, user name, address) and topics to check, NUL-separated.
//! Parsing either succeeds or names a key; checks never panic, are deterministic, and deny
//! invalid topics and filters.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tidemq_core::acl::{AclRules, AclSettings, Action, Decision, Reason, Who};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (text, probe) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let parse = || -> Result<AclRules, _> {
        if selector % 2 == 0 {
            AclRules::from_acl_conf(text, &BTreeMap::new(), Decision::Deny)
        } else {
            AclSettings::from_old_conf(text).map(|s| s.rules)
        }
    };
    let rules = match (parse(), parse()) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "parsing is deterministic");
            a
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "parsing is deterministic");
            assert!(!a.message.is_empty(), "errors say what is wrong");
            return;
        }
        _ => panic!("parsing is deterministic"),
    };
    let Ok(probe) = std::str::from_utf8(probe) else {
        return;
    };
    let mut parts = probe.split('\0');
    let client_id = parts.next().unwrap_or_default();
    // An empty user name field means none; "\u{1}" means the empty user name.
    let username = match parts.next() {
        None | Some("") => None,
        Some("\u{1}") => Some(""),
        Some(u) => Some(u),
    };
    let ip = parts.next().and_then(|s| s.parse().ok());
    let who = Who {
        client_id,
        username,
        ip,
    };
    for subject in parts.take(16) {
        for action in [Action::Publish, Action::Subscribe] {
            let (decision, reason) = rules.explain(&who, action, subject);
            assert_eq!(rules.explain(&who, action, subject), (decision, reason));
            assert_eq!(rules.check(&who, action, subject), decision);
            match reason {
                Reason::Rule(i) | Reason::UnsafePlaceholder(i) => assert!(i < rules.len()),
                Reason::NoMatch => assert_eq!(decision, rules.no_match()),
                Reason::Invalid => assert_eq!(decision, Decision::Deny),
            }
            if matches!(reason, Reason::UnsafePlaceholder(_)) {
                assert_eq!(decision, Decision::Deny);
            }
        }
    }
});
