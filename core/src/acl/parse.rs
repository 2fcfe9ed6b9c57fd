//! Reading ACL rules: from JSON (HOCON as parsed), from `acl.conf` text and from NanoMQ's
//! old-format keys; every error names the rule and key.

use serde_json::Value;

use super::rules::*;
use crate::config_parse::entry::{ConfigIssue, Entry, Raw};
use crate::ip::IpAddress;
use crate::topic;

pub(super) fn issue(line: Option<usize>, key: &str, message: &str) -> ConfigIssue {
    ConfigIssue {
        source: None,
        line,
        key: Some(key.to_owned()),
        message: message.to_owned(),
    }
}

pub(super) fn at(e: &Entry, message: String) -> ConfigIssue {
    ConfigIssue {
        source: None,
        line: e.line,
        key: Some(e.key.clone()),
        message,
    }
}

pub(super) fn text(e: &Entry) -> Result<&str, ConfigIssue> {
    match &e.value {
        Raw::Str(s) | Raw::Num(s) => Ok(s.trim()),
        _ => Err(at(e, "expected a string".to_owned())),
    }
}

pub(super) fn boolean(e: &Entry) -> Result<bool, ConfigIssue> {
    match &e.value {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) if s.trim() == "true" => Ok(true),
        Raw::Str(s) if s.trim() == "false" => Ok(false),
        _ => Err(at(e, "expected true or false".to_owned())),
    }
}

/// HOCON values as JSON; numbers keep the text written (`username = 007` is "007").
pub(super) fn raw_to_json(raw: &Raw) -> Value {
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

pub(super) fn rules_from_json(
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

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn str_of<'v>(
    v: &'v Value,
    key: &str,
    line: Option<usize>,
) -> Result<&'v str, ConfigIssue> {
    v.as_str()
        .ok_or_else(|| issue(line, key, &format!("expected a string, found {}", kind(v))))
}

/// A non-empty array of strings.
pub(super) fn strings<'v>(
    v: &'v Value,
    key: &str,
    line: Option<usize>,
) -> Result<Vec<&'v str>, ConfigIssue> {
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

pub(super) const SELECTORS: [&str; 6] = ["username", "clientid", "ipaddr", "ipaddrs", "and", "or"];

pub(super) fn rule_from_json(
    v: &Value,
    key: &str,
    line: Option<usize>,
) -> Result<Rule, ConfigIssue> {
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
pub(super) fn condition_object(
    v: &Value,
    key: &str,
    line: Option<usize>,
) -> Result<Cond, ConfigIssue> {
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

pub(super) fn condition(
    name: &str,
    v: &Value,
    key: &str,
    line: Option<usize>,
) -> Result<Cond, ConfigIssue> {
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
pub(super) fn ip_net(s: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr = IpAddress::parse(addr.trim())
        .ok_or_else(|| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: prefix length must be 0 to {max}")),
        },
    };
    let (addr, prefix) = match addr.canonical() {
        v4 if !addr.is_ipv4() && v4.is_ipv4() && prefix >= 96 => (v4, prefix - 96),
        _ => (addr, prefix),
    };
    let net = IpNet { addr, prefix };
    if addr.masked(prefix) != addr {
        return Err(format!(
            "{s:?} has bits set past the prefix (the block starts at {}/{})",
            addr.masked(prefix),
            net.prefix
        ));
    }
    Ok(net)
}

pub(super) fn rule_topic(
    s: &str,
    key: &str,
    line: Option<usize>,
) -> Result<RuleTopic, ConfigIssue> {
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
pub(super) fn pieces(text: &str) -> Result<Vec<Piece>, String> {
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
