//! I13, the admin plane: every request gets exactly one well-formed answer with a documented
//! status, credentials are honoured (no fail-open), reads change nothing, and a configuration
//! change is applied exactly when it is valid (a rejected one leaves the old one in force).
//! The same for the v4 API (its own shapes: `{"code":N}` errors, no `seq`), and a kick closes
//! exactly the kicked client's connection, in the same step.

use std::collections::BTreeMap;

use crate::json::{self, Json};
use crate::oracle::Violation;
use crate::trace::{Entry, Ev, Got, Sent};

const STATUSES: &[u16] = &[200, 400, 401, 404, 413, 500];
const READS: &[i64] = &[2, 4, 5, 11, 13];

const V4_STATUSES: &[u16] = &[200, 400, 401, 404, 405];

struct V4Req {
    step: u64,
    at: u64,
    target: String,
    auth_ok: bool,
    read: bool,
    /// The connection the kicked client had when asked, if it had one.
    kick: Option<Option<u64>>,
    replies: u32,
}

struct Req {
    step: u64,
    at: u64,
    req: i64,
    seq: Option<i64>,
    auth_ok: bool,
    replies: u32,
}

pub fn check_admin(entries: &[Entry]) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |at: u64, detail: String| {
        v.push(Violation {
            invariant: "I13",
            at,
            detail,
        })
    };
    // Everything each step produced, to judge side effects and verdicts.
    let mut by_step: BTreeMap<u64, Vec<&Ev>> = BTreeMap::new();
    for e in entries {
        by_step.entry(e.step).or_default().push(&e.ev);
    }
    let mut reqs: BTreeMap<u64, Req> = BTreeMap::new();
    let mut v4: BTreeMap<u64, V4Req> = BTreeMap::new();
    // Each client id's connection, as the broker holds it (from CONNECT until closed).
    let mut active: BTreeMap<String, u64> = BTreeMap::new();
    // Request heads: (when, credentials good, answered).
    let mut heads: BTreeMap<u64, (u64, bool, bool)> = BTreeMap::new();
    let mut last_config: Option<Json> = None;
    let mut changed_since = false;
    let mut end_at = 0;
    let mut quiesced = false;
    for e in entries {
        let at = e.at;
        end_at = at;
        let same_step = by_step.get(&e.step).map(Vec::as_slice).unwrap_or(&[]);
        match &e.ev {
            Ev::Quiesced => quiesced = true,
            Ev::BrokerStart { .. } => active.clear(),
            Ev::BrokerGot {
                conn,
                pkt: Got::Connect { client_id, .. },
                ..
            } => {
                active.insert(client_id.clone(), *conn);
            }
            Ev::BrokerSent {
                conn,
                pkt: Sent::ConnAck { code, .. },
                ..
            } if *code != 0 => active.retain(|_, c| c != conn),
            Ev::BrokerClosed { conn, .. } => active.retain(|_, c| c != conn),
            Ev::AdminV4Req {
                req_id,
                target,
                auth_ok,
                read,
                kick,
                ..
            } => {
                let closed: Vec<u64> = same_step
                    .iter()
                    .filter_map(|ev| match ev {
                        Ev::BrokerClosed {
                            conn,
                            by_broker: true,
                        } => Some(*conn),
                        _ => None,
                    })
                    .collect();
                let kick = kick.as_ref().map(|id| active.get(id).copied());
                let expected: Vec<u64> = match kick {
                    Some(Some(conn)) if *auth_ok => vec![conn],
                    _ => Vec::new(),
                };
                if closed != expected {
                    push(
                        at,
                        format!(
                            "admin v4 request {req_id} ({target}) closed {closed:?}, expected {expected:?}"
                        ),
                    );
                }
                if *read {
                    let effects: Vec<String> = same_step
                        .iter()
                        .filter(|ev| {
                            matches!(
                                ev,
                                Ev::BrokerSent { .. }
                                    | Ev::ConfigEvent { .. }
                                    | Ev::Dropped { .. }
                                    | Ev::AdminWrite { .. }
                                    | Ev::AdminControl
                            )
                        })
                        .map(|ev| format!("{ev:?}"))
                        .collect();
                    if !effects.is_empty() {
                        push(
                            at,
                            format!(
                                "admin v4 read {req_id} ({target}) had side effects: {effects:?}"
                            ),
                        );
                    }
                }
                v4.insert(
                    *req_id,
                    V4Req {
                        step: e.step,
                        at,
                        target: target.clone(),
                        auth_ok: *auth_ok,
                        read: *read,
                        kick,
                        replies: 0,
                    },
                );
            }
            Ev::AdminReply {
                req_id,
                status,
                body,
                challenge,
            } if v4.contains_key(req_id) => {
                let Some(r) = v4.get_mut(req_id) else {
                    continue;
                };
                r.replies += 1;
                let what = format!("admin v4 request {req_id} ({})", r.target);
                if r.replies > 1 {
                    push(at, format!("{what} answered twice"));
                }
                if r.step != e.step {
                    push(at, format!("{what} answered late"));
                }
                if !V4_STATUSES.contains(status) {
                    push(at, format!("{what}: status {status}"));
                }
                if r.auth_ok == (*status == 401) {
                    push(
                        at,
                        format!(
                            "{what}: credentials {} but status {status}",
                            if r.auth_ok { "valid" } else { "invalid" }
                        ),
                    );
                }
                if *status == 401 && !challenge {
                    push(at, format!("{what}: 401 without a challenge"));
                }
                if r.read && r.auth_ok && *status != 200 {
                    push(at, format!("{what}: read failed with {status} {body}"));
                }
                if let Some(conn) = r.kick
                    && r.auth_ok
                    && conn.is_some()
                    && *status != 200
                {
                    push(
                        at,
                        format!("{what}: kick of a connected client got {status}"),
                    );
                }
                let text = r.target.starts_with("/api/v4/prometheus") && *status == 200;
                let parsed = json::parse(body);
                let code = parsed
                    .as_ref()
                    .and_then(|j| j.get("code"))
                    .and_then(Json::int);
                let fields = match &parsed {
                    Some(Json::Obj(m)) => Some(m.len()),
                    _ => None,
                };
                let metrics = r.target.starts_with("/api/v4/metrics") && *status == 200;
                let well_formed = if text {
                    body.starts_with("# TYPE nanomq_connections_count gauge\n")
                } else if metrics {
                    fields.is_some() && code.is_none()
                } else if *status == 200 {
                    code == Some(0)
                } else {
                    // Errors carry only the code.
                    fields == Some(1) && code.is_some_and(|c| c > 0)
                };
                if !well_formed {
                    push(at, format!("{what}: malformed reply {status} {body:?}"));
                }
            }
            Ev::AdminReq {
                req_id,
                req,
                seq,
                auth_ok,
            } => {
                reqs.insert(
                    *req_id,
                    Req {
                        step: e.step,
                        at,
                        req: *req,
                        seq: *seq,
                        auth_ok: *auth_ok,
                        replies: 0,
                    },
                );
                let effects: Vec<String> = same_step
                    .iter()
                    // Only what the broker put out (client-side events share the step).
                    .filter(|ev| match ev {
                        Ev::AdminControl => *req != 10,
                        Ev::AdminWrite { .. } => *req != 12,
                        Ev::BrokerSent { .. }
                        | Ev::BrokerClosed {
                            by_broker: true, ..
                        }
                        | Ev::ConfigEvent { .. }
                        | Ev::Dropped { .. }
                        | Ev::SessionExpired { .. }
                        | Ev::SessionShed { .. } => true,
                        _ => false,
                    })
                    .map(|ev| format!("{ev:?}"))
                    .collect();
                if !effects.is_empty() {
                    push(
                        at,
                        format!("admin request {req_id} (req {req}) had side effects: {effects:?}"),
                    );
                }
            }
            Ev::AdminHead { req_id, auth_ok } => {
                heads.insert(*req_id, (at, *auth_ok, false));
            }
            // A head is authorized at once, and only with good credentials.
            Ev::AdminAuthorized { req_id } => match heads.get_mut(req_id) {
                Some((_, auth_ok, answered)) if !*answered => {
                    *answered = true;
                    if !*auth_ok {
                        push(
                            at,
                            format!("admin head {req_id}: wrong credentials authorized"),
                        );
                    }
                }
                _ => push(
                    at,
                    format!("admin head {req_id}: authorized twice or unknown"),
                ),
            },
            Ev::AdminReply {
                req_id,
                status,
                body,
                challenge,
            } if heads.contains_key(req_id) => {
                let Some((_, auth_ok, answered)) = heads.get_mut(req_id) else {
                    continue;
                };
                let seq = json::parse(body)
                    .as_ref()
                    .and_then(|j| j.get("seq"))
                    .and_then(Json::int);
                if *answered || *auth_ok || *status != 401 || !challenge || seq != Some(0) {
                    push(
                        at,
                        format!(
                            "admin head {req_id} (credentials {}): answered {} with {status} {body}",
                            if *auth_ok { "good" } else { "bad" },
                            if *answered { "twice" } else { "once" }
                        ),
                    );
                }
                *answered = true;
            }
            Ev::AdminReply {
                req_id,
                status,
                body,
                challenge,
            } => {
                let Some(r) = reqs.get_mut(req_id) else {
                    push(at, format!("reply to unknown admin request {req_id}"));
                    continue;
                };
                r.replies += 1;
                if r.replies > 1 {
                    push(at, format!("admin request {req_id} answered twice"));
                }
                if !STATUSES.contains(status) {
                    push(at, format!("admin request {req_id}: status {status}"));
                }
                let parsed = json::parse(body);
                let code = parsed
                    .as_ref()
                    .and_then(|j| j.get("code"))
                    .and_then(Json::int);
                let seq = parsed
                    .as_ref()
                    .and_then(|j| j.get("seq"))
                    .and_then(Json::int);
                if !matches!(parsed, Some(Json::Obj(_))) || code.is_none() || seq.is_none() {
                    push(
                        at,
                        format!("admin request {req_id}: malformed reply body {body:?}"),
                    );
                    continue;
                }
                if (*status == 200) != (code == Some(0)) {
                    push(
                        at,
                        format!("admin request {req_id}: status {status} with code {code:?}"),
                    );
                }
                if *status == 401 && !challenge {
                    push(
                        at,
                        format!("admin request {req_id}: 401 without a challenge"),
                    );
                }
                if let Some(s) = r.seq
                    && seq != Some(i128::from(s))
                {
                    push(
                        at,
                        format!("admin request {req_id}: seq {s} echoed as {seq:?}"),
                    );
                }
                if !r.auth_ok && *status == 200 {
                    push(
                        at,
                        format!("admin request {req_id}: wrong credentials, yet 200 (fail-open)"),
                    );
                }
                if r.req != 0 && r.auth_ok == (*status == 401) {
                    push(
                        at,
                        format!(
                            "admin request {req_id} (req {}): credentials {} but status {status}",
                            r.req,
                            if r.auth_ok { "valid" } else { "invalid" }
                        ),
                    );
                }
                if READS.contains(&r.req) && r.auth_ok && *status != 200 {
                    push(
                        at,
                        format!("admin read {req_id} (req {}) failed: {body}", r.req),
                    );
                }
                if r.req == 11 && *status == 200 {
                    let data = parsed.as_ref().and_then(|j| j.get("data")).cloned();
                    if let (Some(prev), false) = (&last_config, changed_since)
                        && data.as_ref() != Some(prev)
                    {
                        push(
                            at,
                            format!(
                                "admin request {req_id}: the configuration changed with no change applied"
                            ),
                        );
                    }
                    last_config = data;
                    changed_since = false;
                }
                // A set-configuration waits for its write, a restart for the reload.
                if r.step != e.step && r.req != 12 && r.req != 10 {
                    push(
                        at,
                        format!("admin request {req_id} (req {}) answered late", r.req),
                    );
                }
            }
            Ev::ConfigEvent { applied: true } => changed_since = true,
            Ev::ConfigSent { valid } => {
                let verdicts: Vec<bool> = same_step
                    .iter()
                    .filter_map(|ev| match ev {
                        Ev::ConfigEvent { applied } => Some(*applied),
                        _ => None,
                    })
                    .collect();
                if verdicts != [*valid] {
                    push(
                        at,
                        format!(
                            "a {} configuration change got {verdicts:?}",
                            if *valid { "valid" } else { "invalid" }
                        ),
                    );
                }
            }
            Ev::AdminRestarted { req_id, ok } => {
                let status = same_step.iter().find_map(|ev| match ev {
                    Ev::AdminReply {
                        req_id: r, status, ..
                    } if r == req_id => Some(*status),
                    _ => None,
                });
                let want = if *ok { 200 } else { 500 };
                if status != Some(want) {
                    push(
                        at,
                        format!(
                            "restart {req_id} (applied: {ok}): answered {status:?}, not {want}"
                        ),
                    );
                }
            }
            Ev::AdminWritten { req_id, ok } => {
                let applied = same_step
                    .iter()
                    .any(|ev| matches!(ev, Ev::ConfigEvent { applied: true }));
                let status = same_step.iter().find_map(|ev| match ev {
                    Ev::AdminReply {
                        req_id: r, status, ..
                    } if r == req_id => Some(*status),
                    _ => None,
                });
                if !ok && (applied || status != Some(500)) {
                    push(
                        at,
                        format!(
                            "failed write of request {req_id}: applied {applied}, status {status:?}"
                        ),
                    );
                }
                if *ok && applied != (status == Some(200)) {
                    push(
                        at,
                        format!("written request {req_id}: applied {applied}, status {status:?}"),
                    );
                }
            }
            _ => {}
        }
    }
    if quiesced {
        for (id, (at, _, answered)) in &heads {
            if !answered {
                push(*at, format!("admin head {id} never answered"));
            }
        }
        for (id, r) in &v4 {
            if r.replies == 0 {
                push(
                    r.at,
                    format!("admin v4 request {id} ({}) never answered", r.target),
                );
            }
        }
        for (id, r) in &reqs {
            if r.replies == 0 {
                push(
                    r.at,
                    format!("admin request {id} (req {}) never answered", r.req),
                );
            }
        }
    }
    let _ = end_at;
    v
}
