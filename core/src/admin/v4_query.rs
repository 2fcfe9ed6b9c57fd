//! Query strings of the v4 API: `k=v&…`, percent-decoded (`+` is a space). On an operation
//! that declares query parameters, an undeclared key, a repeated key or a bad value is
//! 400 + 108; the filters and the EMQX-style paging (`_page`, `_limit`, `meta`) they give.

use serde_json::{Value, json};

use super::v4::{V4Reply, bad_params, percent_decode};

/// Largest `_limit`.
pub const MAX_LIMIT: usize = 10_000;
/// `_limit` when only `_page` is given.
pub const DEFAULT_LIMIT: usize = 100;

/// The pairs of a query string, decoded, in order. A repeated key is refused here.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, V4Reply> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k, true).ok_or_else(bad_params)?;
        let v = percent_decode(v, true).ok_or_else(bad_params)?;
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(bad_params());
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Paging asked with `_page` and/or `_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// 1-based.
    pub page: usize,
    pub limit: usize,
}

impl Paging {
    /// This page of `items`, and the `meta` object describing it.
    pub fn apply<T>(self, items: Vec<T>) -> (Vec<T>, Value) {
        let count = items.len();
        let start = (self.page - 1).saturating_mul(self.limit);
        let page: Vec<T> = items.into_iter().skip(start).take(self.limit).collect();
        let hasnext = start.saturating_add(self.limit) < count;
        let meta =
            json!({ "page": self.page, "limit": self.limit, "count": count, "hasnext": hasnext });
        (page, meta)
    }
}

fn positive(v: &str, max: usize) -> Result<usize, V4Reply> {
    // Digits only: no sign, no spaces, no leading `+`.
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_params());
    }
    match v.parse::<usize>() {
        Ok(n) if n >= 1 && n <= max => Ok(n),
        _ => Err(bad_params()),
    }
}

fn paging(page: Option<&str>, limit: Option<&str>) -> Result<Option<Paging>, V4Reply> {
    if page.is_none() && limit.is_none() {
        return Ok(None);
    }
    // A page past the last one is allowed (it is empty); its number is bounded so that the
    // offset cannot overflow.
    let page = page.map_or(Ok(1), |p| positive(p, 1_000_000_000))?;
    let limit = limit.map_or(Ok(DEFAULT_LIMIT), |l| positive(l, MAX_LIMIT))?;
    Ok(Some(Paging { page, limit }))
}

fn boolean(v: &str) -> Result<bool, V4Reply> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_params()),
    }
}

/// Keeps only the declared keys; anything else is 108.
fn declared<'a>(
    pairs: &'a [(String, String)],
    keys: &[&str],
) -> Result<impl Fn(&str) -> Option<&'a str>, V4Reply> {
    if pairs.iter().any(|(k, _)| !keys.contains(&k.as_str())) {
        return Err(bad_params());
    }
    Ok(move |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    })
}

/// `GET /clients` filters; every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub connected: Option<bool>,
    pub clean_start: Option<bool>,
    pub proto_name: Option<String>,
    pub proto_ver: Option<u8>,
    pub like_client_id: Option<String>,
    pub like_username: Option<String>,
    pub paging: Option<Paging>,
}

/// One session as the filters see it.
pub struct ClientView<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub connected: bool,
    pub clean_start: bool,
    pub proto_name: &'a str,
    pub proto_ver: u8,
}

impl ClientFilter {
    pub fn parse(query: &str) -> Result<ClientFilter, V4Reply> {
        let pairs = parse_query(query)?;
        let get = declared(
            &pairs,
            &[
                "clientid",
                "client_id",
                "username",
                "conn_state",
                "clean_start",
                "proto_name",
                "proto_ver",
                "_like_clientid",
                "_like_username",
                "_page",
                "_limit",
            ],
        )?;
        if get("clientid").is_some() && get("client_id").is_some() {
            return Err(bad_params());
        }
        let connected = match get("conn_state") {
            None => None,
            Some("connected") => Some(true),
            Some("disconnected") => Some(false),
            Some(_) => return Err(bad_params()),
        };
        let proto_ver = match get("proto_ver") {
            None => None,
            Some(v @ ("3" | "4" | "5")) => v.parse().ok(),
            Some(_) => return Err(bad_params()),
        };
        Ok(ClientFilter {
            client_id: get("clientid").or(get("client_id")).map(str::to_owned),
            username: get("username").map(str::to_owned),
            connected,
            clean_start: get("clean_start").map(boolean).transpose()?,
            proto_name: get("proto_name").map(str::to_owned),
            proto_ver,
            like_client_id: get("_like_clientid").map(str::to_owned),
            like_username: get("_like_username").map(str::to_owned),
            paging: paging(get("_page"), get("_limit"))?,
        })
    }

    pub fn matches(&self, c: &ClientView<'_>) -> bool {
        self.client_id.as_deref().is_none_or(|v| v == c.client_id)
            && self.username.as_deref().is_none_or(|v| v == c.username)
            && self.connected.is_none_or(|v| v == c.connected)
            && self.clean_start.is_none_or(|v| v == c.clean_start)
            && self.proto_name.as_deref().is_none_or(|v| v == c.proto_name)
            && self.proto_ver.is_none_or(|v| v == c.proto_ver)
            && self
                .like_client_id
                .as_deref()
                .is_none_or(|v| c.client_id.contains(v))
            && self
                .like_username
                .as_deref()
                .is_none_or(|v| c.username.contains(v))
    }
}

/// `GET /subscriptions` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionFilter {
    pub client_id: Option<String>,
    pub topic: Option<String>,
    pub qos: Option<u8>,
    pub share: Option<String>,
    pub paging: Option<Paging>,
}

impl SubscriptionFilter {
    pub fn parse(query: &str) -> Result<SubscriptionFilter, V4Reply> {
        let pairs = parse_query(query)?;
        let get = declared(
            &pairs,
            &["clientid", "topic", "qos", "share", "_page", "_limit"],
        )?;
        let qos = match get("qos") {
            None => None,
            Some(v @ ("0" | "1" | "2")) => v.parse().ok(),
            Some(_) => return Err(bad_params()),
        };
        Ok(SubscriptionFilter {
            client_id: get("clientid").map(str::to_owned),
            topic: get("topic").map(str::to_owned),
            qos,
            share: get("share").map(str::to_owned),
            paging: paging(get("_page"), get("_limit"))?,
        })
    }

    /// `raw` as subscribed (maybe `$share/<group>/<filter>`).
    pub fn matches(&self, client_id: &str, raw: &str, qos: u8) -> bool {
        let (group, filter) = split_share(raw);
        self.client_id.as_deref().is_none_or(|v| v == client_id)
            && self.topic.as_deref().is_none_or(|v| v == filter)
            && self.qos.is_none_or(|v| v == qos)
            && self.share.as_deref().is_none_or(|v| Some(v) == group)
    }
}

/// The share group and the filter of a subscription as written.
pub fn split_share(raw: &str) -> (Option<&str>, &str) {
    match raw
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((group, filter)) => (Some(group), filter),
        None => (None, raw),
    }
}

/// `GET /retained` query: a topic filter (default `#`) and paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedQuery {
    pub filter: String,
    pub paging: Option<Paging>,
}

impl RetainedQuery {
    pub fn parse(query: &str, max_levels: usize) -> Result<RetainedQuery, V4Reply> {
        let pairs = parse_query(query)?;
        let get = declared(&pairs, &["topic", "_page", "_limit"])?;
        let filter = get("topic").unwrap_or("#").to_owned();
        crate::topic::validate_filter(&filter, max_levels).map_err(|_| bad_params())?;
        Ok(RetainedQuery {
            filter,
            paging: paging(get("_page"), get("_limit"))?,
        })
    }
}

/// `DELETE /clients/{id}` query: `keep_session=true|false` (default false).
pub fn keep_session(query: &str) -> Result<bool, V4Reply> {
    let pairs = parse_query(query)?;
    let get = declared(&pairs, &["keep_session"])?;
    get("keep_session").map_or(Ok(false), boolean)
}
