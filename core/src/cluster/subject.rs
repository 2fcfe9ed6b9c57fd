//! MQTT topics and filters as NATS subjects, and back.
//!
//! A subject is `<prefix>.<space>.<ns>.<token>...`: `space` is `m` (live messages) or `d`
//! (the durable stream); `ns` is `s` for topics whose first character is `$` and `t` for the
//! rest, so a filter starting with a wildcard (subscribed under `t`) never matches a `$` topic
//! (MQTT 4.7.2). Each topic level is one token: bytes in `[A-Za-z0-9-]` stay, every other
//! byte becomes `_` and two upper-case hex digits, and an empty level is the token `_` alone.
//! Tokens are thus never empty and hold only `[A-Za-z0-9_-]`: valid NATS tokens and valid KV
//! key characters. The encoding is canonical (one subject per topic) because NATS matches by
//! byte equality; the decoder refuses every string the encoder would not produce.

use crate::topic::parse_subscription;

/// The default cluster namespace: every cluster subject starts with `tmq.`.
pub const DEFAULT_PREFIX: &str = "tmq";
/// The longest namespace prefix accepted.
pub const MAX_PREFIX_LEN: usize = 32;

const ESCAPE: u8 = b'_';

/// Why a name could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    /// The prefix is empty, too long, or not `[a-z0-9]`.
    BadPrefix,
    /// Not a topic name the broker accepts: empty, or holds `+`, `#` or U+0000.
    BadTopic,
    /// Not a valid topic filter or `$share/{group}/{filter}`.
    BadFilter,
    /// The result would exceed the caller's length bound.
    TooLong,
    /// The subject is not under this prefix and space, or has no topic tokens.
    Foreign,
    /// A token is not one the encoder produces.
    BadToken,
    /// The decoded bytes are not a valid topic name.
    BadDecoded,
}

/// Which part of the namespace: live messages (core NATS) or the durable stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Live,
    Durable,
}

impl Space {
    fn token(self) -> &'static str {
        match self {
            Space::Live => "m",
            Space::Durable => "d",
        }
    }
}

/// A subscription as NATS needs it: one or two subjects (a trailing `#` needs two), and the
/// queue group of a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSubscription {
    pub subjects: Vec<String>,
    pub queue: Option<String>,
}

/// A namespace prefix: 1 to [`MAX_PREFIX_LEN`] bytes of `[a-z0-9]`.
pub fn validate_prefix(prefix: &str) -> Result<(), SubjectError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(SubjectError::BadPrefix)
    }
}

fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn hex_digit(v: u8) -> char {
    // v < 16 by construction; the fallback is unreachable.
    char::from_digit(u32::from(v), 16)
        .unwrap_or('0')
        .to_ascii_uppercase()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Appends one topic level (or any string treated as one level) as a token.
pub fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push(char::from(ESCAPE));
        return;
    }
    // Runs of kept bytes are copied whole: they are ASCII, so each run is a `str` of its own.
    let bytes = level.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if kept(b) {
            continue;
        }
        push_run(bytes.get(run..i), out);
        out.push(char::from(ESCAPE));
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
        run = i + 1;
    }
    push_run(bytes.get(run..), out);
}

fn push_run(run: Option<&[u8]>, out: &mut String) {
    if let Some(text) = run.and_then(|r| std::str::from_utf8(r).ok()) {
        out.push_str(text);
    }
}

/// The length of the subject [`topic_to_subject`] writes for `topic`, without writing it.
pub fn subject_len(prefix: &str, topic: &str) -> usize {
    let levels: usize = topic
        .split('/')
        .map(|level| {
            let escaped: usize = level.bytes().map(|b| if kept(b) { 1 } else { 3 }).sum();
            1 + escaped.max(1)
        })
        .sum();
    // `<prefix>.m.t` and a `.` before each level.
    prefix.len() + 4 + levels
}

/// Appends the bytes one token stands for, refusing any token the encoder would not write.
fn unescape_token(token: &str, out: &mut Vec<u8>) -> Result<(), SubjectError> {
    if token == "_" {
        return Ok(());
    }
    let mut bytes = token.bytes();
    let mut any = false;
    while let Some(b) = bytes.next() {
        any = true;
        if kept(b) {
            out.push(b);
            continue;
        }
        if b != ESCAPE {
            return Err(SubjectError::BadToken);
        }
        let hi = bytes.next().and_then(hex_value);
        let lo = bytes.next().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(SubjectError::BadToken);
        };
        let v = (hi << 4) | lo;
        // An escaped byte that needs no escape would be a second spelling of the same topic.
        if kept(v) {
            return Err(SubjectError::BadToken);
        }
        out.push(v);
    }
    if any {
        Ok(())
    } else {
        Err(SubjectError::BadToken)
    }
}

fn head(prefix: &str, space: Space, dollar: bool) -> Result<String, SubjectError> {
    validate_prefix(prefix)?;
    let mut s = String::with_capacity(prefix.len() + 6);
    s.push_str(prefix);
    s.push('.');
    s.push_str(space.token());
    s.push_str(if dollar { ".s" } else { ".t" });
    Ok(s)
}

fn check_topic(topic: &str) -> Result<(), SubjectError> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(SubjectError::BadTopic);
    }
    Ok(())
}

fn bounded(s: String, max_len: usize) -> Result<String, SubjectError> {
    if s.len() > max_len {
        Err(SubjectError::TooLong)
    } else {
        Ok(s)
    }
}

/// The tokens of a topic joined by `.`, without any prefix: also its KV key.
fn push_levels(topic: &str, out: &mut String) {
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        escape_level(level, out);
    }
}

/// The subject a message published to `topic` is sent on, at most `max_len` bytes.
pub fn topic_to_subject(
    prefix: &str,
    space: Space,
    topic: &str,
    max_len: usize,
) -> Result<String, SubjectError> {
    check_topic(topic)?;
    let mut s = head(prefix, space, topic.starts_with('$'))?;
    s.push('.');
    push_levels(topic, &mut s);
    bounded(s, max_len)
}

/// The topic a subject written by [`topic_to_subject`] stands for.
pub fn subject_to_topic(prefix: &str, space: Space, subject: &str) -> Result<String, SubjectError> {
    validate_prefix(prefix)?;
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(space.token()))
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(SubjectError::Foreign)?;
    let (dollar, tokens) = if let Some(t) = rest.strip_prefix("s.") {
        (true, t)
    } else if let Some(t) = rest.strip_prefix("t.") {
        (false, t)
    } else {
        return Err(SubjectError::Foreign);
    };
    let mut bytes = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        let start = bytes.len();
        unescape_token(token, &mut bytes)?;
        // A level holds no separator or wildcard, and a topic no U+0000.
        if bytes
            .get(start..)
            .is_some_and(|level| level.iter().any(|b| matches!(b, b'/' | b'+' | b'#' | 0)))
        {
            return Err(SubjectError::BadDecoded);
        }
    }
    let topic = String::from_utf8(bytes).map_err(|_| SubjectError::BadDecoded)?;
    // The namespace token must be the one the encoder would have chosen.
    if topic.is_empty() || topic.starts_with('$') != dollar {
        return Err(SubjectError::BadDecoded);
    }
    Ok(topic)
}

/// The subjects a plain (unshared) topic filter subscribes to: `+` → `*`, and `f/#` → both
/// `f` and `f.>`, because MQTT's `a/#` matches `a` itself and NATS's `a.>` does not.
pub fn filter_to_subjects(
    prefix: &str,
    space: Space,
    filter: &str,
    max_len: usize,
) -> Result<Vec<String>, SubjectError> {
    crate::topic::validate_filter(filter, usize::MAX).map_err(|_| SubjectError::BadFilter)?;
    if filter.contains('\0') {
        return Err(SubjectError::BadFilter);
    }
    // A filter starting with a wildcard lives under `t`: it must not see `$` topics.
    let mut s = head(prefix, space, filter.starts_with('$'))?;
    let mut trailing_hash = false;
    for level in filter.split('/') {
        match level {
            "#" => trailing_hash = true,
            "+" => s.push_str(".*"),
            _ => {
                s.push('.');
                escape_level(level, &mut s);
            }
        }
    }
    let mut out = Vec::with_capacity(2);
    if trailing_hash {
        // `#` alone: the namespace token is no topic, so only the `>` form.
        if filter != "#" {
            out.push(bounded(s.clone(), max_len)?);
        }
        s.push_str(".>");
    }
    out.push(bounded(s, max_len)?);
    Ok(out)
}

/// The queue group of `$share/{group}/{filter}`: the group and the whole filter, each escaped
/// as one token, joined by `__`. NATS groups queue subscribers by name across subjects, so the
/// filter is in the name. `__` never occurs inside a non-empty escaped token (an `_` there is
/// always followed by a hex digit), so the first `__` splits the two and the name is unique.
pub fn queue_group(group: &str, filter: &str, max_len: usize) -> Result<String, SubjectError> {
    let mut q = String::with_capacity(group.len() + filter.len() + 2);
    escape_level(group, &mut q);
    q.push_str("__");
    escape_level(filter, &mut q);
    bounded(q, max_len)
}

/// A subscription as the client wrote it (a filter or `$share/{group}/{filter}`), as NATS
/// subjects and, for a shared one, the queue group. `max_len` bounds each subject, or each
/// subject with its queue group and a separator: both travel in one protocol line.
pub fn subscription(
    prefix: &str,
    space: Space,
    raw: &str,
    max_len: usize,
) -> Result<NatsSubscription, SubjectError> {
    let parsed = parse_subscription(raw, usize::MAX).map_err(|_| SubjectError::BadFilter)?;
    let subjects = filter_to_subjects(prefix, space, parsed.filter, max_len)?;
    let queue = match parsed.share_group {
        Some(group) => Some(queue_group(group, parsed.filter, max_len)?),
        None => None,
    };
    let queue_len = queue.as_ref().map_or(0, |q| q.len().saturating_add(1));
    if subjects
        .iter()
        .any(|s| s.len().saturating_add(queue_len) > max_len)
    {
        return Err(SubjectError::TooLong);
    }
    Ok(NatsSubscription { subjects, queue })
}

/// The KV key of a topic (the retained bucket): `t.` or `s.` and its tokens.
pub fn topic_key(topic: &str, max_len: usize) -> Result<String, SubjectError> {
    check_topic(topic)?;
    let mut k = String::from(if topic.starts_with('$') { "s." } else { "t." });
    push_levels(topic, &mut k);
    bounded(k, max_len)
}

/// The KV key of a client id or bridge name: the name escaped as one token.
pub fn name_key(name: &str, max_len: usize) -> Result<String, SubjectError> {
    let mut k = String::with_capacity(name.len());
    escape_level(name, &mut k);
    bounded(k, max_len)
}

/// The client id or bridge name a key written by [`name_key`] stands for.
pub fn key_name(key: &str) -> Result<String, SubjectError> {
    let mut out = Vec::with_capacity(key.len());
    unescape_token(key, &mut out)?;
    String::from_utf8(out).map_err(|_| SubjectError::BadToken)
}

/// How NATS matches a subscription `pattern` against a `subject`: tokens split on `.`, `*`
/// one token, `>` (last only) one or more. The engine's rule, for the simulation's model of
/// it; `runtime/tests/e2e_cluster_engine.rs` checks it against nats-server.
pub fn nats_matches(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, tok) in p.iter().enumerate() {
        match *tok {
            ">" => return i + 1 == p.len() && s.len() > i,
            "*" if i < s.len() => {}
            t if s.get(i) == Some(&t) => {}
            _ => return false,
        }
    }
    p.len() == s.len()
}
