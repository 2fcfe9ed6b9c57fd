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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::config_parse::{self, ConfigIssue, Entry, Raw};
use crate::topic;

/// Allowed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Allow,
    Deny,
}

/// What the client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

/// What a denied operation does to the connection (`deny_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyAction {
    /// Drop the PUBLISH, refuse the subscription in the SUBACK.
    #[default]
    Ignore,
    Disconnect,
}

/// Why [`AclRules::explain`] decided as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The rule at this position (0-based, in evaluation order) applied.
    Rule(usize),
    /// No rule applied: `no_match`.
    NoMatch,
    /// The rule at this position substitutes a client id or user name holding `+`, `#` or `/`.
    UnsafePlaceholder(usize),
    /// The topic name or filter is not valid (empty, misplaced wildcard, bad `$share`).
    Invalid,
}

/// The client asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    /// The peer's address, when it has one.
    pub ip: Option<IpAddr>,
}

/// An ordered list of rules and the `no_match` decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRules {
    rules: Vec<Rule>,
    no_match: Decision,
}

impl Default for AclRules {
    /// No rules; everything allowed.
    fn default() -> Self {
        AclRules {
            rules: Vec::new(),
            no_match: Decision::Allow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    permit: Decision,
    action: RuleAction,
    who: Selector,
    /// Empty: every topic.
    topics: Vec<RuleTopic>,
    uses_client_id: bool,
    uses_username: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleAction {
    Publish,
    Subscribe,
    PubSub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Everyone,
    One(Cond),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    /// `None`: `"#"`, anyone.
    Username(Option<String>),
    ClientId(Option<String>),
    /// Empty: `"#"`, any address (and none).
    Ip(Vec<IpNet>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleTopic {
    kind: TopicKind,
    uses_client_id: bool,
    uses_username: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicKind {
    /// `@...`: the whole string, compared as written.
    Exact(Vec<Piece>),
    Filter(Vec<Level>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Plus,
    Hash,
    Lit(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientId,
    Username,
}

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
        let entries = config_parse::parse_hocon(text, env)?;
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
        let ip = who.ip.map(|ip| ip.to_canonical());
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        AclSettings::from_entries(&config_parse::parse_key_value(text)?)
    }
}

fn issue(line: Option<usize>, key: &str, message: &str) -> ConfigIssue {
    ConfigIssue {
        source: None,
        line,
        key: Some(key.to_owned()),
        message: message.to_owned(),
    }
}

fn at(e: &Entry, message: String) -> ConfigIssue {
    ConfigIssue {
        source: None,
        line: e.line,
        key: Some(e.key.clone()),
        message,
    }
}

fn text(e: &Entry) -> Result<&str, ConfigIssue> {
    match &e.value {
        Raw::Str(s) | Raw::Num(s) => Ok(s.trim()),
        _ => Err(at(e, "expected a string".to_owned())),
    }
}

fn boolean(e: &Entry) -> Result<bool, ConfigIssue> {
    match &e.value {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) if s.trim() == "true" => Ok(true),
        Raw::Str(s) if s.trim() == "false" => Ok(false),
        _ => Err(at(e, "expected true or false".to_owned())),
    }
}

/// HOCON values as JSON; numbers keep the text written (`username = 007` is "007").
fn raw_to_json(raw: &Raw) -> Value {
    match raw {
        Raw::Str(s) | Raw::Num(s) => Value::String(s.clone()),
        Raw::Bool(b) => Value::Bool(*b),
        Raw::Null => Value::Null,
        Raw::List(items) => Value::Array(items.iter().map(raw_to_json).collect()),
        Raw::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), raw_to_json(v)))
                .collect(),
        ),
    }
}

fn rules_from_json(
    rules: &Value,
    key: &str,
    line: Option<usize>,
    no_match: Decision,
) -> Result<AclRules, ConfigIssue> {
    let Value::Array(items) = rules else {
        return Err(issue(line, key, "expected an array of rules"));
    };
    let rules = items
        .iter()
        .enumerate()
        .map(|(i, v)| rule_from_json(v, &format!("{key}[{i}]"), line))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AclRules { rules, no_match })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn str_of<'v>(v: &'v Value, key: &str, line: Option<usize>) -> Result<&'v str, ConfigIssue> {
    v.as_str()
        .ok_or_else(|| issue(line, key, &format!("expected a string, found {}", kind(v))))
}

/// A non-empty array of strings.
fn strings<'v>(v: &'v Value, key: &str, line: Option<usize>) -> Result<Vec<&'v str>, ConfigIssue> {
    let Value::Array(items) = v else {
        return Err(issue(
            line,
            key,
            &format!("expected an array of strings, found {}", kind(v)),
        ));
    };
    if items.is_empty() {
        return Err(issue(
            line,
            key,
            "is empty (leave the key out to mean every one)",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| str_of(item, &format!("{key}[{i}]"), line))
        .collect()
}

const SELECTORS: [&str; 6] = ["username", "clientid", "ipaddr", "ipaddrs", "and", "or"];

fn rule_from_json(v: &Value, key: &str, line: Option<usize>) -> Result<Rule, ConfigIssue> {
    let Value::Object(obj) = v else {
        return Err(issue(
            line,
            key,
            &format!("expected a rule object, found {}", kind(v)),
        ));
    };
    let field = |name: &str| format!("{key}.{name}");
    let mut selector: Option<(&str, &Value)> = None;
    for (k, value) in obj {
        match k.as_str() {
            "permit" | "action" | "topics" => {}
            s if SELECTORS.contains(&s) => {
                if let Some((first, _)) = selector {
                    return Err(issue(
                        line,
                        key,
                        &format!(
                            "has both {first} and {s}: a rule takes one of username, clientid, \
                             ipaddr, ipaddrs, and, or (combine them with and / or)"
                        ),
                    ));
                }
                selector = Some((s, value));
            }
            other => {
                return Err(issue(
                    line,
                    &field(other),
                    "unknown key (expected permit, action, topics, username, clientid, ipaddr, \
                     ipaddrs, and, or)",
                ));
            }
        }
    }
    let permit = match obj.get("permit") {
        None => return Err(issue(line, &field("permit"), "missing (allow or deny)")),
        Some(p) => match str_of(p, &field("permit"), line)? {
            "allow" => Decision::Allow,
            "deny" => Decision::Deny,
            other => {
                return Err(issue(
                    line,
                    &field("permit"),
                    &format!("expected allow or deny, found {other:?}"),
                ));
            }
        },
    };
    let action = match obj.get("action") {
        None => RuleAction::PubSub,
        Some(a) => match str_of(a, &field("action"), line)? {
            "publish" => RuleAction::Publish,
            "subscribe" => RuleAction::Subscribe,
            "pubsub" => RuleAction::PubSub,
            other => {
                return Err(issue(
                    line,
                    &field("action"),
                    &format!("expected publish, subscribe or pubsub, found {other:?}"),
                ));
            }
        },
    };
    let who = match selector {
        None => Selector::Everyone,
        Some((name @ ("and" | "or"), value)) => {
            let key = field(name);
            let Value::Array(items) = value else {
                return Err(issue(
                    line,
                    &key,
                    &format!("expected an array of conditions, found {}", kind(value)),
                ));
            };
            if items.is_empty() {
                return Err(issue(line, &key, "is empty"));
            }
            let conds = items
                .iter()
                .enumerate()
                .map(|(i, item)| condition_object(item, &format!("{key}[{i}]"), line))
                .collect::<Result<Vec<_>, _>>()?;
            if name == "and" {
                Selector::And(conds)
            } else {
                Selector::Or(conds)
            }
        }
        Some((name, value)) => Selector::One(condition(name, value, &field(name), line)?),
    };
    let topics = match obj.get("topics") {
        None => Vec::new(),
        Some(t) => {
            let key = field("topics");
            strings(t, &key, line)?
                .into_iter()
                .enumerate()
                .map(|(i, s)| rule_topic(s, &format!("{key}[{i}]"), line))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(Rule {
        permit,
        action,
        who,
        uses_client_id: topics.iter().any(|t| t.uses_client_id),
        uses_username: topics.iter().any(|t| t.uses_username),
        topics,
    })
}

/// One `{key: value}` object inside `and` / `or`.
fn condition_object(v: &Value, key: &str, line: Option<usize>) -> Result<Cond, ConfigIssue> {
    let Value::Object(obj) = v else {
        return Err(issue(
            line,
            key,
            &format!(
                "expected an object like {{\"username\": \"u\"}}, found {}",
                kind(v)
            ),
        ));
    };
    let mut it = obj.iter();
    match (it.next(), it.next()) {
        (Some((k, value)), None) => match k.as_str() {
            name @ ("username" | "clientid" | "ipaddr" | "ipaddrs") => {
                condition(name, value, &format!("{key}.{name}"), line)
            }
            other => Err(issue(
                line,
                &format!("{key}.{other}"),
                "unknown key (expected username, clientid, ipaddr or ipaddrs)",
            )),
        },
        _ => Err(issue(
            line,
            key,
            "expected exactly one of username, clientid, ipaddr, ipaddrs",
        )),
    }
}

fn condition(name: &str, v: &Value, key: &str, line: Option<usize>) -> Result<Cond, ConfigIssue> {
    let any_or = |s: &str| (s != "#").then(|| s.to_owned());
    Ok(match name {
        "username" => Cond::Username(any_or(str_of(v, key, line)?)),
        "clientid" => Cond::ClientId(any_or(str_of(v, key, line)?)),
        "ipaddr" => {
            let s = str_of(v, key, line)?;
            if s == "#" {
                Cond::Ip(Vec::new())
            } else {
                Cond::Ip(vec![ip_net(s).map_err(|m| issue(line, key, &m))?])
            }
        }
        _ => {
            let list = strings(v, key, line)?;
            if list.contains(&"#") {
                Cond::Ip(Vec::new())
            } else {
                Cond::Ip(
                    list.iter()
                        .enumerate()
                        .map(|(i, s)| {
                            ip_net(s).map_err(|m| issue(line, &format!("{key}[{i}]"), &m))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        }
    })
}

/// `1.2.3.4`, `10.0.0.0/8`, `::1`, `fe80::/10`; IPv4-mapped IPv6 becomes IPv4.
fn ip_net(s: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: prefix length must be 0 to {max}")),
        },
    };
    let (addr, prefix) = match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            _ => (addr, prefix),
        },
        v4 => (v4, prefix),
    };
    let net = IpNet { addr, prefix };
    if masked(addr, prefix) != addr {
        return Err(format!(
            "{s:?} has bits set past the prefix (the block starts at {}/{})",
            masked(addr, prefix),
            net.prefix
        ));
    }
    Ok(net)
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl IpNet {
    /// `ip` is canonical (mapped IPv6 already IPv4).
    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }
}

fn rule_topic(s: &str, key: &str, line: Option<usize>) -> Result<RuleTopic, ConfigIssue> {
    let bad = |m: String| issue(line, key, &m);
    let (exact, body) = match s.strip_prefix('@') {
        Some(rest) if !rest.is_empty() => (true, rest),
        _ => (false, s),
    };
    topic::validate_filter(body, usize::MAX)
        .map_err(|e| bad(format!("{s:?} is not a valid topic filter ({e:?})")))?;
    let kind = if exact {
        TopicKind::Exact(pieces(body).map_err(bad)?)
    } else {
        TopicKind::Filter(
            body.split('/')
                .map(|level| match level {
                    "+" => Ok(Level::Plus),
                    "#" => Ok(Level::Hash),
                    _ => pieces(level).map(Level::Lit),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?,
        )
    };
    Ok(RuleTopic {
        kind,
        uses_client_id: s.contains("${clientid}"),
        uses_username: s.contains("${username}"),
    })
}

/// Splits text at `${clientid}` / `${username}`; any other `${` is an error.
fn pieces(text: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let (before, tail) = rest.split_at(at);
        if !before.is_empty() {
            out.push(Piece::Text(before.to_owned()));
        }
        if let Some(r) = tail.strip_prefix("${clientid}") {
            out.push(Piece::ClientId);
            rest = r;
        } else if let Some(r) = tail.strip_prefix("${username}") {
            out.push(Piece::Username);
            rest = r;
        } else {
            let shown: String = tail.chars().take(20).collect();
            return Err(format!(
                "unknown placeholder at {shown:?} (known: ${{clientid}}, ${{username}})"
            ));
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_owned()));
    }
    Ok(out)
}

fn unsafe_value(v: &str) -> bool {
    v.contains(['+', '#', '/'])
}

impl Selector {
    fn matches(&self, who: &Who<'_>, ip: Option<IpAddr>) -> bool {
        match self {
            Selector::Everyone => true,
            Selector::One(c) => c.matches(who, ip),
            Selector::And(cs) => cs.iter().all(|c| c.matches(who, ip)),
            Selector::Or(cs) => cs.iter().any(|c| c.matches(who, ip)),
        }
    }
}

impl Cond {
    fn matches(&self, who: &Who<'_>, ip: Option<IpAddr>) -> bool {
        match self {
            Cond::Username(None) | Cond::ClientId(None) => true,
            Cond::Username(Some(u)) => who.username == Some(u.as_str()),
            Cond::ClientId(Some(c)) => who.client_id == c,
            Cond::Ip(nets) if nets.is_empty() => true,
            Cond::Ip(nets) => ip.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
        }
    }
}

/// Does `s` equal the pieces with the client's values put in? Values were checked present.
fn eq_pieces(s: &str, pieces: &[Piece], who: &Who<'_>) -> bool {
    let mut rest = s;
    for p in pieces {
        let part = match p {
            Piece::Text(t) => t.as_str(),
            Piece::ClientId => who.client_id,
            Piece::Username => who.username.unwrap_or_default(),
        };
        match rest.strip_prefix(part) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

fn is_wild(level: &str) -> bool {
    level == "+" || level == "#"
}

impl RuleTopic {
    fn applies(&self, subject: &str, action: Action, permit: Decision, who: &Who<'_>) -> bool {
        // A placeholder with no value names no topic.
        if (self.uses_client_id && who.client_id.is_empty())
            || (self.uses_username && who.username.is_none_or(str::is_empty))
        {
            return false;
        }
        match &self.kind {
            TopicKind::Exact(pieces) => eq_pieces(subject, pieces, who),
            TopicKind::Filter(levels) => match (action, permit) {
                (Action::Publish, _) => matches_topic(levels, subject, who),
                (Action::Subscribe, Decision::Allow) => is_subset(subject, levels, who),
                (Action::Subscribe, Decision::Deny) => intersects(subject, levels, who),
            },
        }
    }
}

/// Does the rule filter match topic name `topic`? (No `$` exception.)
fn matches_topic(rule: &[Level], topic: &str, who: &Who<'_>) -> bool {
    let mut t = topic.split('/');
    for level in rule {
        match level {
            Level::Hash => return true,
            Level::Plus => {
                if t.next().is_none() {
                    return false;
                }
            }
            Level::Lit(p) => match t.next() {
                Some(x) if eq_pieces(x, p, who) => {}
                _ => return false,
            },
        }
    }
    t.next().is_none()
}

/// Is every topic `filter` matches also matched by `rule`?
fn is_subset(filter: &str, rule: &[Level], who: &Who<'_>) -> bool {
    // A topic has at least one level, so a leading `#` means "one or more": `+/#`.
    let filter = if filter == "#" { "+/#" } else { filter };
    let mut f = filter.split('/');
    for level in rule {
        match level {
            Level::Hash => return true,
            // `+` covers any one level, but not `#` (which also means zero or several).
            Level::Plus => match f.next() {
                Some(x) if x != "#" => {}
                _ => return false,
            },
            Level::Lit(p) => match f.next() {
                Some(x) if !is_wild(x) && eq_pieces(x, p, who) => {}
                _ => return false,
            },
        }
    }
    // Anything left (a level, or `#` standing for more) is outside the rule.
    f.next().is_none()
}

/// Is some topic matched by both `filter` and `rule`?
fn intersects(filter: &str, rule: &[Level], who: &Who<'_>) -> bool {
    let mut f = filter.split('/');
    for level in rule {
        let p = match level {
            Level::Hash => return true,
            Level::Plus => None,
            Level::Lit(p) => Some(p),
        };
        match f.next() {
            // The filter ends where the rule needs another level.
            None => return false,
            Some("#") => return true,
            Some("+") => {}
            Some(x) => {
                if let Some(p) = p
                    && !eq_pieces(x, p, who)
                {
                    return false;
                }
            }
        }
    }
    // The rule ends here: a filter `#` here matches that topic too (zero levels).
    matches!(f.next(), None | Some("#"))
}

#[cfg(test)]
mod tests;
