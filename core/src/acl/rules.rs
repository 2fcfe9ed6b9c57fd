//! The compiled rule model and how a rule is matched against a client and a topic.

use crate::ip::IpAddress;

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
    pub ip: Option<IpAddress>,
}

/// An ordered list of rules and the `no_match` decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRules {
    pub(super) rules: Vec<Rule>,
    pub(super) no_match: Decision,
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
pub(super) struct Rule {
    pub(super) permit: Decision,
    pub(super) action: RuleAction,
    pub(super) who: Selector,
    /// Empty: every topic.
    pub(super) topics: Vec<RuleTopic>,
    pub(super) uses_client_id: bool,
    pub(super) uses_username: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RuleAction {
    Publish,
    Subscribe,
    PubSub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Selector {
    Everyone,
    One(Cond),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cond {
    /// `None`: `"#"`, anyone.
    Username(Option<String>),
    ClientId(Option<String>),
    /// Empty: `"#"`, any address (and none).
    Ip(Vec<IpNet>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IpNet {
    pub(super) addr: IpAddress,
    pub(super) prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleTopic {
    pub(super) kind: TopicKind,
    pub(super) uses_client_id: bool,
    pub(super) uses_username: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TopicKind {
    /// `@...`: the whole string, compared as written.
    Exact(Vec<Piece>),
    Filter(Vec<Level>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Level {
    Plus,
    Hash,
    Lit(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Text(String),
    ClientId,
    Username,
}

impl Selector {
    pub(super) fn matches(&self, who: &Who<'_>, ip: Option<IpAddress>) -> bool {
        match self {
            Selector::Everyone => true,
            Selector::One(c) => c.matches(who, ip),
            Selector::And(cs) => cs.iter().all(|c| c.matches(who, ip)),
            Selector::Or(cs) => cs.iter().any(|c| c.matches(who, ip)),
        }
    }
}

impl Cond {
    pub(super) fn matches(&self, who: &Who<'_>, ip: Option<IpAddress>) -> bool {
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
pub(super) fn eq_pieces(s: &str, pieces: &[Piece], who: &Who<'_>) -> bool {
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

pub(super) fn is_wild(level: &str) -> bool {
    level == "+" || level == "#"
}

impl RuleTopic {
    pub(super) fn applies(
        &self,
        subject: &str,
        action: Action,
        permit: Decision,
        who: &Who<'_>,
    ) -> bool {
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
pub(super) fn matches_topic(rule: &[Level], topic: &str, who: &Who<'_>) -> bool {
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
pub(super) fn is_subset(filter: &str, rule: &[Level], who: &Who<'_>) -> bool {
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
pub(super) fn intersects(filter: &str, rule: &[Level], who: &Who<'_>) -> bool {
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

impl IpNet {
    /// `ip` is canonical (mapped IPv6 already IPv4).
    pub(super) fn contains(&self, ip: IpAddress) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && ip.masked(self.prefix) == self.addr
    }
}

pub(super) fn unsafe_value(v: &str) -> bool {
    v.contains(['+', '#', '/'])
}
