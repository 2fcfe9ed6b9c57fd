//! NanoMQ's access control list, evaluated inside the core: rules in order, the first that
//! applies decides, `no_match` decides when none does. Pure and allocation-free per check.
//!
//! A rule is `{permit, action, topics, <who>}`:
//! * `permit`: `allow` | `deny` (required).
//! * `action`: `publish` | `subscribe` | `pubsub` (default `pubsub`).
//! * `topics`: filters; absent means every topic. `${clientid}` and `${username}` are replaced
//!   by the client's values; `@` in front means "exactly this string" (`@#` is a subscription to
//!   `#` itself, not every topic).
//! * at most one of `username`, `clientid`, `ipaddr` (an address or CIDR block, v4 or v6),
//!   `ipaddrs` (a list of them), `and` / `or` (lists of one-key objects of those four); `"#"`
//!   means anyone, including clients without a user name. No selector: everyone.
//!
//! Differences from NanoMQ, all deliberate: `ipaddrs` lists match, CIDR blocks and IPv6 work
//! (IPv4-mapped IPv6 peers match IPv4 rules), and a bad rule (unknown key, wrong type, bad
//! value, two selectors, empty list) is an error naming the rule and key instead of being
//! dropped. Old-format rules (`acl.rule.N`) apply in the order of N.
//!
//! # Topic semantics
//!
//! A rule filter stands for the set of topic names it matches, with MQTT's matching except the
//! `$` rule: in an ACL, `#` and `+/x` also cover `$SYS/...`, so "allow `#`" allows everything
//! and a deny on `$SYS/#` is not escaped by a leading wildcard.
//! * PUBLISH to topic `t`: a rule topic applies when it matches `t`.
//! * SUBSCRIBE to filter `f` (after `$share/<group>/` is removed), compared as sets of topics:
//!   an **allow** topic applies when every topic `f` matches is one the rule matches
//!   (`f` ⊆ rule: `a/+` allows `a/b` and `a/+`, not `a/#`; `a/#` allows `a/+/c`); a **deny**
//!   topic applies when `f` matches at least one topic the rule matches (`f` ∩ rule ≠ ∅: a deny
//!   on `$SYS/#` refuses `#`, `+/brokers` and `$SYS/x`). So an allowed filter never receives
//!   anything outside the allow rule, and a denied topic cannot be reached through a wildcard.
//!   `@` topics compare the filter as a string in both cases.
//! * A rule with several topics applies when any one of them does.
//! * When a rule whose action and selector fit the client uses `${clientid}` (or
//!   `${username}`) and that value contains `+`, `#` or `/`, the check stops there with
//!   **deny**. A topic using `${username}` never applies to a client without one (nor with an
//!   empty one); likewise an empty client id.

use std::collections::BTreeMap;

use serde_json::Value;

// The parsers' own files, not `config_parse`: its `apply` reads these settings.
use crate::config_parse::entry::{ConfigIssue, Entry, Raw};
use crate::config_parse::syntax::{parse_hocon, parse_key_value};
use crate::ip::IpAddress;
use crate::topic;

mod parse;
mod rules;

use parse::*;
use rules::*;
pub use rules::{AclRules, Action, Decision, DenyAction, Reason, Who};

impl AclRules {
    /// The rules of a JSON array (the `rules` value), in order. Errors name `rules[i].key`.
    pub fn from_json(rules: &Value, no_match: Decision) -> Result<AclRules, ConfigIssue> {
        rules_from_json(rules, "rules", None, no_match)
    }

    /// The same from a configuration value (HOCON): numbers are read as the text written.
    pub fn from_raw(rules: &Raw, no_match: Decision) -> Result<AclRules, ConfigIssue> {
        rules_from_json(&raw_to_json(rules), "rules", None, no_match)
    }

    /// A standalone `acl.conf` (HOCON `rules = [ {...}, ... ]`). `env` resolves `${VAR}`
    /// substitutions outside strings; include directives are refused (the caller expands them).
    pub fn from_acl_conf(
        text: &str,
        env: &BTreeMap<String, String>,
        no_match: Decision,
    ) -> Result<AclRules, ConfigIssue> {
        let entries = parse_hocon(text, env)?;
        let mut found = None;
        for e in &entries {
            match e.key.as_str() {
                "rules" => found = Some(e),
                k if k.starts_with("rules.") => {
                    return Err(issue(e.line, "rules", "expected an array of rules"));
                }
                _ => {
                    return Err(issue(
                        e.line,
                        &e.key,
                        "unknown key (an ACL file holds only `rules = [...]`)",
                    ));
                }
            }
        }
        let e = found.ok_or_else(|| issue(None, "rules", "missing: expected rules = [ ... ]"))?;
        rules_from_json(&raw_to_json(&e.value), "rules", e.line, no_match)
    }

    pub fn with_no_match(mut self, no_match: Decision) -> AclRules {
        self.no_match = no_match;
        self
    }

    pub fn no_match(&self) -> Decision {
        self.no_match
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// May `who` do `action` on `topic_or_filter` (a topic name for PUBLISH, a filter, maybe
    /// `$share/<group>/...`, for SUBSCRIBE)? An invalid topic or filter is denied.
    pub fn check(&self, who: &Who<'_>, action: Action, topic_or_filter: &str) -> Decision {
        self.explain(who, action, topic_or_filter).0
    }

    /// [`AclRules::check`], with the reason (for logs and decision counters).
    pub fn explain(
        &self,
        who: &Who<'_>,
        action: Action,
        topic_or_filter: &str,
    ) -> (Decision, Reason) {
        let subject = match action {
            Action::Publish => match topic::validate_topic_name(topic_or_filter, usize::MAX) {
                Ok(()) => topic_or_filter,
                Err(_) => return (Decision::Deny, Reason::Invalid),
            },
            Action::Subscribe => match topic::parse_subscription(topic_or_filter, usize::MAX) {
                Ok(parsed) => parsed.filter,
                Err(_) => return (Decision::Deny, Reason::Invalid),
            },
        };
        let ip = who.ip.map(IpAddress::canonical);
        for (i, rule) in self.rules.iter().enumerate() {
            let fits = match rule.action {
                RuleAction::PubSub => true,
                RuleAction::Publish => action == Action::Publish,
                RuleAction::Subscribe => action == Action::Subscribe,
            };
            if !fits || !rule.who.matches(who, ip) {
                continue;
            }
            if (rule.uses_client_id && unsafe_value(who.client_id))
                || (rule.uses_username && who.username.is_some_and(unsafe_value))
            {
                return (Decision::Deny, Reason::UnsafePlaceholder(i));
            }
            if rule.topics.is_empty()
                || rule
                    .topics
                    .iter()
                    .any(|t| t.applies(subject, action, rule.permit, who))
            {
                return (rule.permit, Reason::Rule(i));
            }
        }
        (self.no_match, Reason::NoMatch)
    }
}

/// Everything the ACL settings say, from either configuration format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclSettings {
    /// Old format: `acl_enable = true`. HOCON: an `auth.acl` section, unless its
    /// `enable = false`.
    pub enable: bool,
    pub deny_action: DenyAction,
    /// The rules, with `no_match` (`acl_nomatch` / `auth.no_match`, default allow).
    pub rules: AclRules,
}

impl AclSettings {
    /// Picks the ACL keys out of a configuration's entries, ignoring every other key. Old
    /// format: `acl_enable`, `acl_nomatch`, `acl_deny_action`, `acl.rule.<N>={json}` (applied in
    /// the order of N). HOCON: `auth.no_match`, `auth.deny_action`, `auth.acl.enable`,
    /// `auth.acl.rules`.
    pub fn from_entries(entries: &[Entry]) -> Result<AclSettings, ConfigIssue> {
        let mut enable = None;
        let mut section = false;
        let mut no_match = Decision::Allow;
        let mut deny_action = DenyAction::Ignore;
        let mut hocon_rules: Option<&Entry> = None;
        // N -> (line, JSON text)
        let mut numbered: BTreeMap<u64, (&Entry, &str)> = BTreeMap::new();
        for e in entries {
            let key = e.key.as_str();
            match key {
                "acl_enable" | "auth.acl.enable" => enable = Some(boolean(e)?),
                "acl_nomatch" | "auth.no_match" => {
                    no_match = match text(e)? {
                        "allow" => Decision::Allow,
                        "deny" => Decision::Deny,
                        other => {
                            return Err(at(e, format!("expected allow or deny, found {other:?}")));
                        }
                    }
                }
                "acl_deny_action" | "auth.deny_action" => {
                    deny_action = match text(e)? {
                        "ignore" => DenyAction::Ignore,
                        "disconnect" => DenyAction::Disconnect,
                        other => {
                            return Err(at(
                                e,
                                format!("expected ignore or disconnect, found {other:?}"),
                            ));
                        }
                    }
                }
                "auth.acl" => section = true,
                "auth.acl.rules" => {
                    section = true;
                    hocon_rules = Some(e);
                }
                _ => {
                    if let Some(n) = key.strip_prefix("acl.rule.") {
                        let n: u64 = n
                            .parse()
                            .map_err(|_| at(e, "expected acl.rule.<number>={json}".to_owned()))?;
                        if let Some((first, _)) = numbered.get(&n) {
                            let where_ = first
                                .line
                                .map_or(String::new(), |l| format!(" on line {l}"));
                            return Err(at(e, format!("rule {n} is already defined{where_}")));
                        }
                        numbered.insert(n, (e, text(e)?));
                    } else if key.starts_with("auth.acl.") {
                        return Err(at(
                            e,
                            "unknown ACL key (expected enable or rules)".to_owned(),
                        ));
                    }
                }
            }
        }
        let mut rules = Vec::new();
        if let Some(e) = hocon_rules {
            rules = rules_from_json(&raw_to_json(&e.value), &e.key, e.line, no_match)?.rules;
        }
        for (e, json) in numbered.values() {
            let value: Value = serde_json::from_str(json)
                .map_err(|err| at(e, format!("not valid JSON: {err}")))?;
            rules.push(rule_from_json(&value, &e.key, e.line)?);
        }
        Ok(AclSettings {
            enable: enable.unwrap_or(section),
            deny_action,
            rules: AclRules { rules, no_match },
        })
    }

    /// A file in NanoMQ's old `key=value` format (a whole `nanomq_old.conf` or just its ACL
    /// lines).
    pub fn from_old_conf(text: &str) -> Result<AclSettings, ConfigIssue> {
        AclSettings::from_entries(&parse_key_value(text)?)
    }
}

#[cfg(test)]
mod tests;
