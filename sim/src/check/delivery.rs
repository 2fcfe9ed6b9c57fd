//! The client-facing invariants over a finished trace (robustness.md §3.5, I1–I10, I14,
//! I15): delivery, ordering, QoS, sessions, retained messages, wills, counters. It also runs
//! the persistence checks (`persist.rs`) and the admin plane's (`admin.rs`).

use std::collections::{BTreeMap, BTreeSet};

use tidemq_core::Config;

use super::admin;
use super::persist::{self as persist_check, ExpSession, Expected};
use crate::client::Role;
use crate::json::Json;
use crate::oracle::{Violation, split_share, topic_matches};
use crate::trace::{AckKind, Entry, Ev, Got, Pub, Sent, Tag};
use crate::world::ActorInfo;

#[derive(Debug, Clone, Default)]
struct Sess {
    generation: u32,
    alive: bool,
    expiry: u32,
    ended_at: Option<u64>,
    active: Option<u64>,
    subs: BTreeMap<String, u8>,
    awaiting_rel: BTreeSet<u16>,
    dropped_gens: BTreeSet<u32>,
    /// Restored by a restart and not connected since: the store may not hold a disconnect
    /// time for it (the one restore assumed is never written).
    restored_idle: bool,
}

/// Share-group members `(client id, generation)`.
type Members = Vec<(String, u32)>;

#[derive(Debug, Clone)]
struct Accepted {
    at: u64,
    /// The latest acceptance (a QoS 1 resend starts the expiry clock again).
    last_at: u64,
    /// Times the broker routed it (a publisher's QoS 1 resend is routed again).
    routed: u32,
    /// Broker incarnations that routed it: without persistence, a restart forgets the
    /// QoS 2 ids awaiting PUBREL, and exactly-once cannot hold across it (S7).
    incarnations: BTreeSet<u32>,
    /// Publisher session generations that routed it: a session that expired while its
    /// CONNACK (Session Present 0) was lost leaves the client resending a QoS 2 id the new
    /// session never saw, and the broker must take it as new (v5 §4.1, [MQTT-3.2.2-4]).
    publisher_gens: BTreeSet<u32>,
    publish: Pub,
    /// Sessions that had a matching non-shared subscription: (client id, generation, QoS granted).
    targets: Vec<(String, u32, u8)>,
    /// Targets of a routing whose records a crash kept (or that needed none): the message
    /// must still reach them. A routing in a step whose records were lost may be undone.
    required: BTreeSet<(String, u32, u8)>,
    /// Share groups that matched: members (client id, generation) and the best QoS.
    groups: Vec<(String, Members, u8)>,
}

#[derive(Debug, Clone)]
struct WillState {
    client_id: String,
    tag: Tag,
    delay_ms: u64,
    expiry: u32,
    normal: bool,
    ended: Option<u64>,
    cancelled: bool,
    watcher_ready: bool,
    incarnation: u32,
}

/// Runs every checker. `actors` describes the actor indices used in the trace.
pub fn check(entries: &[Entry], actors: &[ActorInfo], config: &Config) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |inv: &'static str, at: u64, detail: String| {
        v.push(Violation {
            invariant: inv,
            at,
            detail,
        })
    };
    let role = |a: usize| actors.get(a).map(|x| x.role.clone());
    let storm = |a: usize| role(a) == Some(Role::Storm);
    // Persistence: broker lives, what each crash kept (S6/S7).
    let durable = persist_check::prepass(entries, config);
    let store = durable.store;
    let mut life = 0usize;
    let mut picture_at = durable.picture_step(0);
    let mut picture: Option<Expected> = None;

    // ----- pre-pass: per connection facts that appear later in the same step -------------
    let mut connack: BTreeMap<u64, (bool, u8)> = BTreeMap::new();
    // Publishes answered with an error (after a store failure: refused, not accepted).
    let mut refused_acks: BTreeSet<(u64, u16)> = BTreeSet::new();
    let mut store_failed = false;
    let mut closed_step: BTreeMap<u64, u64> = BTreeMap::new();
    let mut disconnects: BTreeMap<u64, Vec<(u64, u8)>> = BTreeMap::new();
    let mut subacks: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut unsubacks: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut quiesced = false;
    for e in entries {
        match &e.ev {
            Ev::BrokerSent { conn, pkt, .. } => match pkt {
                Sent::ConnAck {
                    session_present,
                    code,
                } => {
                    connack.entry(*conn).or_insert((*session_present, *code));
                }
                Sent::Disconnect { reason } => disconnects
                    .entry(*conn)
                    .or_default()
                    .push((e.step, *reason)),
                Sent::SubAck(r) => subacks.entry(*conn).or_default().push(r.clone()),
                Sent::UnsubAck(r) => unsubacks.entry(*conn).or_default().push(r.clone()),
                Sent::Ack(AckKind::PubAck | AckKind::PubRec, pid, reason) if *reason >= 0x80 => {
                    refused_acks.insert((*conn, *pid));
                }
                _ => {}
            },
            Ev::BrokerClosed {
                conn,
                by_broker: true,
            } => {
                closed_step.entry(*conn).or_insert(e.step);
            }
            Ev::Quiesced => quiesced = true,
            _ => {}
        }
    }
    for s in subacks.values_mut().chain(unsubacks.values_mut()) {
        s.reverse();
    }

    // ----- replay ------------------------------------------------------------------------
    let mut sessions: BTreeMap<String, Sess> = BTreeMap::new();
    let mut conn_client: BTreeMap<u64, String> = BTreeMap::new();
    let mut conn_gen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut conn_v5: BTreeMap<u64, bool> = BTreeMap::new();
    let mut accepted: BTreeMap<Tag, Accepted> = BTreeMap::new();
    let mut other_topics: BTreeSet<String> = BTreeSet::new();
    let mut retained: BTreeMap<String, Tag> = BTreeMap::new();
    let mut wills: BTreeMap<u64, WillState> = BTreeMap::new();
    let mut watcher_ready = false;
    let mut watcher_down: Vec<(u64, u64)> = Vec::new();
    let mut watcher_down_since: Option<u64> = Some(0);
    let mut incarnation = 0u32;
    let mut restarts: Vec<u64> = Vec::new();
    let mut client_ids: BTreeSet<String> = BTreeSet::new();
    // Deliveries by (client id, generation) and by group.
    let mut got_by_session: BTreeSet<(String, u32, Tag)> = BTreeSet::new();
    let mut q2_first: BTreeMap<(usize, Tag), (u32, u32)> = BTreeMap::new();
    let mut q2_group_first: BTreeMap<Tag, u32> = BTreeMap::new();
    let mut seen: BTreeSet<(usize, Tag)> = BTreeSet::new();
    let mut order: BTreeMap<(usize, String, u8, usize), u64> = BTreeMap::new();
    // I7 state.
    let mut conn_inflight: BTreeMap<u64, BTreeSet<u16>> = BTreeMap::new();
    let mut conn_seen: BTreeSet<(u64, u16, Tag)> = BTreeSet::new();
    // The last message sent under each packet id, and its QoS.
    let mut pid_tag: BTreeMap<(usize, u32, u16), (Tag, u8)> = BTreeMap::new();
    let mut unacked: BTreeMap<(usize, u32), BTreeSet<u16>> = BTreeMap::new();
    // Without a store every restart forgets the QoS 2 ids awaiting PUBREL; with one, only a
    // crash that lost acknowledged records may.
    let lossy_across = |lives: &BTreeSet<u32>| {
        let (Some(first), Some(last)) = (lives.first(), lives.last()) else {
            return false;
        };
        (*first..*last).any(|i| durable.crash_of(i as usize).is_none_or(|c| c.lossy))
    };
    // Per will: first deliveries to the watcher, and the broker life of the last one.
    let mut will_seen: BTreeMap<Tag, (u32, u32)> = BTreeMap::new();
    let mut will_delivered_at: BTreeMap<Tag, u64> = BTreeMap::new();
    let mut will_sent_at: BTreeMap<Tag, u64> = BTreeMap::new();
    let mut auditor: BTreeSet<(String, Tag)> = BTreeSet::new();
    let mut last_stats_retained = None;
    let mut end_at = 0;
    // I15: the broker's counters as the trace shows them (since the last start).
    let mut count_in = 0u64;
    let mut count_out = 0u64;
    let mut count_drop = 0u64;

    for e in entries {
        let at = e.at;
        end_at = at;
        // P4: the durable state the history implies, as of the last step a crash kept.
        if let Some(k) = picture_at
            && (e.step > k || matches!(e.ev, Ev::Crash { .. }))
        {
            picture_at = None;
            picture = Some(Expected {
                sessions: sessions
                    .iter()
                    .filter(|(_, s)| s.alive && s.expiry > 0)
                    .map(|(cid, s)| {
                        (
                            cid.clone(),
                            ExpSession {
                                expiry: s.expiry,
                                ended_at: if s.active.is_some() { None } else { s.ended_at },
                                unrecorded_end: s.restored_idle,
                                subs: s.subs.clone(),
                                awaiting_rel: s.awaiting_rel.clone(),
                            },
                        )
                    })
                    .collect(),
                retained: retained.clone(),
            });
        }
        match &e.ev {
            Ev::Dropped { count, .. } => count_drop += count,
            Ev::BrokerSent {
                pkt: Sent::Publish(_),
                ..
            } => count_out += 1,
            Ev::AdminReply {
                status: 200,
                body,
                req_id,
                ..
            } => {
                // I15: req 2 counters against the trace at the moment of the request.
                let j = crate::json::parse(body);
                let data = j.as_ref().and_then(|j| j.get("data"));
                let rep = j.as_ref().and_then(|j| j.get("rep")).and_then(Json::int);
                if rep == Some(2) {
                    let field = |k: &str| data.and_then(|d| d.get(k)).and_then(Json::int);
                    let want = [
                        ("message_in", count_in),
                        ("message_out", count_out),
                        ("message_drop", count_drop),
                    ];
                    for (k, n) in want {
                        if field(k) != Some(i128::from(n)) {
                            push(
                                "I15",
                                at,
                                format!(
                                    "admin request {req_id}: {k} {:?}, the trace says {n}",
                                    field(k)
                                ),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        match &e.ev {
            Ev::Crash { .. } => {
                // The broker is gone from here: wills not yet due never go out.
                restarts.push(at);
                for w in wills.values_mut() {
                    if w.ended.is_none_or(|end| end + w.delay_ms > at) {
                        w.cancelled = true;
                    }
                }
            }
            Ev::Restored {
                sessions: restored,
                retained: kept_retained,
                ..
            } => {
                if let (Some(exp), Some(c)) =
                    (picture.take(), durable.crash_of(life.wrapping_sub(1)))
                {
                    for x in persist_check::compare_restored(
                        &exp,
                        restored,
                        kept_retained,
                        &c.ambiguous,
                        at,
                    ) {
                        push(x.invariant, x.at, x.detail);
                    }
                }
                // From here the broker holds what the store gave back.
                for r in restored {
                    if !persist_check::survives_restore(r, at) {
                        continue;
                    }
                    let s = sessions.entry(r.client_id.clone()).or_default();
                    s.alive = true;
                    s.active = None;
                    s.expiry = r.expiry;
                    let elapsed = r.disconnected_at.map_or(0, |d| at.saturating_sub(d));
                    s.ended_at = Some(at.saturating_sub(elapsed));
                    s.subs = r.subs.iter().cloned().collect();
                    s.awaiting_rel = r.awaiting_rel.iter().copied().collect();
                    s.restored_idle = r.disconnected_at.is_none();
                }
                retained = kept_retained.iter().cloned().collect();
            }
            Ev::PersistFailed => store_failed = true,
            Ev::BrokerStart { incarnation: n } => {
                incarnation = *n;
                store_failed = false;
                (count_in, count_out, count_drop) = (0, 0, 0);
                if store {
                    // A QoS 1 delivery's packet id and its completion are written lazily: a
                    // crash can forget either, and the restored broker may resend a message
                    // the subscriber already acknowledged (DUP, under its old id, which may
                    // have been reused since) or send an unfinished one under a new id.
                    // A crash that lost acknowledged records (an `os` power loss) may have
                    // forgotten QoS 2 ids as well: the client and the broker disagree.
                    let lossy = *n > 0 && durable.crash_of(life).is_none_or(|c| c.lossy);
                    let q1: BTreeSet<(usize, u32, u16)> = pid_tag
                        .iter()
                        .filter(|(_, (_, q))| *q == 1 || lossy)
                        .map(|(k, _)| *k)
                        .collect();
                    for (a, g, pid) in q1 {
                        pid_tag.remove(&(a, g, pid));
                        if let Some(s) = unacked.get_mut(&(a, g)) {
                            s.remove(&pid);
                        }
                    }
                }
                if *n > 0 {
                    restarts.push(at);
                    life += 1;
                    picture_at = durable.picture_step(life);
                }
                for s in sessions.values_mut() {
                    s.alive = false;
                    s.active = None;
                    s.subs.clear();
                    s.awaiting_rel.clear();
                }
                retained.clear();
                watcher_ready = false;
                for w in wills.values_mut() {
                    if w.ended.is_none_or(|end| end + w.delay_ms > at) {
                        w.cancelled = true;
                    }
                }
            }
            Ev::Panic(msg) => push("I1", at, format!("the core panicked: {msg}")),
            Ev::Stuck(msg) => push("I1", at, format!("no progress: {msg}")),
            Ev::GarbageFed { conn, code, notify } => {
                if closed_step.get(conn) != Some(&e.step) {
                    push(
                        "I1",
                        at,
                        format!("conn {conn}: bad input (code {code:#x}) but not closed at once"),
                    );
                } else if *notify
                    && !disconnects
                        .get(conn)
                        .is_some_and(|d| d.iter().any(|(s, r)| *s == e.step && r == code))
                {
                    push(
                        "I1",
                        at,
                        format!("conn {conn}: bad input, no DISCONNECT {code:#x} before the close"),
                    );
                }
            }
            Ev::Backlog { conn, bytes, bound } => push(
                "I2",
                at,
                format!("conn {conn}: {bytes} unwritten bytes, bound {bound}"),
            ),
            Ev::Stats {
                connections,
                open_conns,
                sessions: n_sessions,
                retained: n_retained,
            } => {
                if connections != open_conns {
                    push(
                        "I2",
                        at,
                        format!("broker counts {connections} connections, {open_conns} are open"),
                    );
                }
                if *n_sessions > client_ids.len() as u64 {
                    push(
                        "I2",
                        at,
                        format!("{n_sessions} sessions for {} client ids", client_ids.len()),
                    );
                }
                last_stats_retained = Some(*n_retained);
            }
            Ev::KeepAliveMissed {
                conn,
                silent_ms,
                limit_ms,
            } => push(
                "I2",
                at,
                format!("conn {conn} silent {silent_ms} ms, limit {limit_ms} ms, still open"),
            ),
            Ev::KeepAliveEarly {
                conn,
                silent_ms,
                limit_ms,
            } => push(
                "I10",
                at,
                format!("conn {conn} closed for keepalive after {silent_ms} ms < {limit_ms} ms"),
            ),
            Ev::Dropped { client_id, why, .. } if why != "session ended" => {
                if let Some(s) = sessions.get_mut(client_id) {
                    let g = s.generation;
                    s.dropped_gens.insert(g);
                }
            }
            Ev::BrokerGot { conn, actor, pkt } => match pkt {
                Got::Connect {
                    client_id,
                    clean_start,
                    expiry,
                    will,
                    ..
                } => {
                    // With a store, a CONNACK waits for it and may never go out (the connection
                    // or the broker died first): the broker took the CONNECT all the same.
                    let known = connack.get(conn).copied();
                    let Some((sp, code)) = known.or(store.then_some((false, 0))) else {
                        continue;
                    };
                    if code != 0 {
                        continue;
                    }
                    client_ids.insert(client_id.clone());
                    conn_client.insert(*conn, client_id.clone());
                    let v5 = actors.get(*actor).is_some_and(|a| a.v5);
                    conn_v5.insert(*conn, v5);
                    // Pending wills of this client id are cancelled by a new connection.
                    for w in wills.values_mut() {
                        if &w.client_id == client_id
                            && !w.normal
                            && w.ended.is_some_and(|end| at < end + w.delay_ms)
                        {
                            w.cancelled = true;
                        }
                    }
                    let s = sessions.entry(client_id.clone()).or_default();
                    // I10: Session Present.
                    let mut ambiguous = false;
                    let exists = s.alive
                        && match (s.ended_at, s.active) {
                            // A takeover ends a session whose connection had expiry 0.
                            (_, Some(_)) => s.expiry != 0,
                            (Some(end), None) => {
                                if s.expiry == u32::MAX {
                                    true
                                } else {
                                    let deadline = end + u64::from(s.expiry) * 1000;
                                    ambiguous = at.abs_diff(deadline) <= 5;
                                    at < deadline
                                }
                            }
                            (None, None) => false,
                        };
                    let expected = exists && !clean_start;
                    let sp = if known.is_some() { sp } else { expected };
                    if sp != expected && !ambiguous {
                        push(
                            "I10",
                            at,
                            format!(
                                "conn {conn} ({client_id}): Session Present {sp}, expected {expected}"
                            ),
                        );
                    }
                    // Takeover of a live connection: 0x8E (v5) and close, in this step.
                    if let Some(old) = s.active
                        && old != *conn
                    {
                        // The old connection's will waits out its delay, and this
                        // connection cancels it; with no delay it goes out at once.
                        if let Some(w) = wills.get_mut(&old)
                            && w.delay_ms > 0
                        {
                            w.cancelled = true;
                        }
                        if closed_step.get(&old) != Some(&e.step) {
                            push(
                                "I10",
                                at,
                                format!("takeover by conn {conn}: old conn {old} not closed"),
                            );
                        } else if conn_v5.get(&old) == Some(&true)
                            && !disconnects.get(&old).is_some_and(|d| {
                                d.iter().any(|(st, r)| *st == e.step && *r == 0x8E)
                            })
                        {
                            push(
                                "I10",
                                at,
                                format!("takeover by conn {conn}: old conn {old} got no 0x8E"),
                            );
                        }
                    }
                    if !sp {
                        s.generation += 1;
                        s.subs.clear();
                        s.awaiting_rel.clear();
                    }
                    s.alive = true;
                    s.active = Some(*conn);
                    s.ended_at = None;
                    s.restored_idle = false;
                    s.expiry = (*expiry).min(config.max_session_expiry);
                    conn_gen.insert(*conn, s.generation);
                    if let Some((delay, tag)) = will {
                        let eff = if s.expiry == 0 {
                            0
                        } else {
                            (*delay).min(s.expiry)
                        };
                        wills.insert(
                            *conn,
                            WillState {
                                client_id: client_id.clone(),
                                tag: *tag,
                                delay_ms: u64::from(eff) * 1000,
                                expiry: s.expiry,
                                normal: false,
                                ended: None,
                                cancelled: false,
                                watcher_ready,
                                incarnation,
                            },
                        );
                    }
                }
                Got::Subscribe(filters) => {
                    let reasons = subacks.get_mut(conn).and_then(|s| s.pop());
                    let Some(cid) = conn_client.get(conn) else {
                        continue;
                    };
                    let Some(s) = sessions.get_mut(cid) else {
                        continue;
                    };
                    for (i, (f, q)) in filters.iter().enumerate() {
                        // With a store a SUBACK may never go out (it waits for the store and
                        // the connection or the broker died first): the broker took it.
                        let ok = match reasons.as_ref() {
                            Some(r) => r.get(i).is_some_and(|r| *r < 0x80),
                            None => store,
                        };
                        if ok {
                            s.subs.insert(f.clone(), *q);
                            if f == "will/#" && role(*actor) == Some(Role::Watcher) {
                                watcher_ready = true;
                                if let Some(since) = watcher_down_since.take() {
                                    watcher_down.push((since, at));
                                }
                            }
                        }
                    }
                }
                Got::Unsubscribe(filters) => {
                    // A v5 UNSUBACK may refuse a filter (after a store failure): it stays.
                    let reasons = unsubacks.get_mut(conn).and_then(|s| s.pop());
                    if let Some(s) = conn_client.get(conn).and_then(|c| sessions.get_mut(c)) {
                        for (i, f) in filters.iter().enumerate() {
                            let refused = reasons
                                .as_ref()
                                .and_then(|r| r.get(i))
                                .is_some_and(|r| *r >= 0x80);
                            if !refused {
                                s.subs.remove(f);
                            }
                        }
                    }
                }
                Got::Disconnect { reason } => {
                    if *reason == 0
                        && let Some(w) = wills.get_mut(conn)
                    {
                        w.normal = true;
                    }
                }
                Got::Ack(AckKind::PubRel, pid) => {
                    if let Some(s) = conn_client.get(conn).and_then(|c| sessions.get_mut(c)) {
                        s.awaiting_rel.remove(pid);
                    }
                }
                Got::Publish(p) => {
                    let Some(cid) = conn_client.get(conn).cloned() else {
                        continue;
                    };
                    if p.topic.starts_with("$SYS") {
                        continue;
                    }
                    // After a store failure a message that needs the store (retained, or
                    // taken at QoS 1/2 by a persistent session) is refused: an error code
                    // (v5 QoS 1/2; it may wait forever behind output held for the store) or
                    // the connection closed (3.1.1, QoS 0).
                    if store_failed {
                        let needs = p.retain
                            || p.qos > 0
                                && sessions.values().any(|s| {
                                    s.alive
                                        && s.expiry > 0
                                        && s.subs.iter().any(|(raw, q)| {
                                            *q > 0 && topic_matches(split_share(raw).1, &p.topic)
                                        })
                                });
                        let refused = p
                            .pid
                            .is_some_and(|pid| refused_acks.contains(&(*conn, pid)));
                        if needs || refused {
                            continue;
                        }
                    }
                    if p.qos == 2 {
                        let Some(s) = sessions.get_mut(&cid) else {
                            continue;
                        };
                        let pid = p.pid.unwrap_or(0);
                        if !s.awaiting_rel.insert(pid) {
                            continue; // a resend before PUBREL: not routed again
                        }
                    }
                    count_in += 1;
                    if p.retain {
                        if p.tag == Tag::Empty {
                            retained.remove(&p.topic);
                        } else {
                            retained.insert(p.topic.clone(), p.tag);
                        }
                    }
                    let publisher_gen = sessions.get(&cid).map_or(0, |s| s.generation);
                    let mut targets = Vec::new();
                    let mut groups: BTreeMap<(String, String), (Members, u8)> = BTreeMap::new();
                    for (id, s) in &sessions {
                        if !s.alive {
                            continue;
                        }
                        let mut best: Option<u8> = None;
                        for (raw, q) in &s.subs {
                            let (group, filter) = split_share(raw);
                            if !topic_matches(filter, &p.topic) {
                                continue;
                            }
                            match group {
                                None => best = Some(best.map_or(*q, |b| b.max(*q))),
                                Some(g) => {
                                    let entry = groups
                                        .entry((g.to_owned(), filter.to_owned()))
                                        .or_insert((Vec::new(), 0));
                                    entry.0.push((id.clone(), s.generation));
                                    entry.1 = entry.1.max(*q);
                                }
                            }
                        }
                        if let Some(q) = best {
                            targets.push((id.clone(), s.generation, q));
                        }
                    }
                    if targets.is_empty() && groups.is_empty() {
                        // Unrouted: the broker counts it in message_drop.
                        count_drop += 1;
                    }
                    match p.tag {
                        Tag::Msg { .. } | Tag::Retained { .. } => {
                            let groups: Vec<_> = groups
                                .into_iter()
                                .map(|((g, _), (m, q))| (g, m, q))
                                .collect();
                            // A QoS 1 resend is routed again: the targets add up.
                            let a = accepted.entry(p.tag).or_insert_with(|| Accepted {
                                at,
                                last_at: at,
                                routed: 0,
                                incarnations: BTreeSet::new(),
                                publisher_gens: BTreeSet::new(),
                                publish: p.clone(),
                                targets: Vec::new(),
                                required: BTreeSet::new(),
                                groups: Vec::new(),
                            });
                            a.last_at = at;
                            a.routed += 1;
                            a.incarnations.insert(incarnation);
                            a.publisher_gens.insert(publisher_gen);
                            if !durable.lost_steps.contains(&e.step) {
                                a.required.extend(targets.iter().cloned());
                            }
                            a.targets.extend(targets);
                            a.groups.extend(groups);
                        }
                        _ => {
                            other_topics.insert(p.topic.clone());
                        }
                    }
                }
                _ => {}
            },
            Ev::SessionExpired { client_id } => {
                // Gone from the broker: nothing routes to it any more.
                if let Some(s) = sessions.get_mut(client_id) {
                    s.alive = false;
                    s.subs.clear();
                }
            }
            Ev::BrokerClosed { conn, .. } => {
                if let Some(w) = wills.get_mut(conn)
                    && w.ended.is_none()
                {
                    w.ended = Some(at);
                }
                if let Some(cid) = conn_client.get(conn)
                    && let Some(s) = sessions.get_mut(cid)
                    && s.active == Some(*conn)
                {
                    if cid == "watcher" && watcher_down_since.is_none() {
                        watcher_down_since = Some(at);
                    }
                    s.active = None;
                    s.ended_at = Some(at);
                    if s.expiry == 0 {
                        s.alive = false;
                    }
                }
            }
            Ev::BrokerSent {
                pkt: Sent::Publish(p),
                conn,
                actor,
            } => {
                if let Tag::Will { .. } = p.tag
                    && role(*actor) == Some(Role::Watcher)
                {
                    will_sent_at.entry(p.tag).or_insert(at);
                }
                // I6: nothing sent after its expiry, except a resend (DUP) that finishes a
                // delivery already started (v5 §3.3.2.3.3).
                if let Some(a) = accepted.get(&p.tag)
                    && let Some(secs) = a.publish.expiry
                {
                    if at >= a.last_at + u64::from(secs) * 1000 && !p.dup {
                        push(
                            "I6",
                            at,
                            format!("conn {conn}: {:?} sent after its expiry", p.tag),
                        );
                    }
                    if p.expiry.is_some_and(|left| left == 0 || left > secs) {
                        push(
                            "I6",
                            at,
                            format!("conn {conn}: {:?} expiry {:?} of {secs}", p.tag, p.expiry),
                        );
                    }
                }
            }
            Ev::Delivered(d) => {
                let p = &d.publish;
                let actor = d.actor;
                let cid = actors.get(actor).map(|a| a.client_id.clone());
                let generation = conn_gen.get(&d.conn).copied().unwrap_or(0);
                let r = role(actor);
                if r == Some(Role::Auditor) && p.retain {
                    auditor.insert((p.topic.clone(), p.tag));
                }
                // I6: only accepted messages, only to matching subscriptions.
                match p.tag {
                    Tag::Msg { .. } | Tag::Retained { .. } => match accepted.get(&p.tag) {
                        None => push(
                            "I6",
                            at,
                            format!("actor {actor}: {:?} delivered, never accepted", p.tag),
                        ),
                        Some(a) => {
                            if a.publish.topic != p.topic || p.qos > a.publish.qos {
                                push(
                                    "I6",
                                    at,
                                    format!("actor {actor}: {:?} altered in transit", p.tag),
                                );
                            }
                            if p.retain && matches!(p.tag, Tag::Msg { .. }) {
                                push(
                                    "I6",
                                    at,
                                    format!("actor {actor}: {:?} carries RETAIN", p.tag),
                                );
                            }
                            if !p.retain {
                                let cid = cid.clone().unwrap_or_default();
                                let direct = a
                                    .targets
                                    .iter()
                                    .filter(|(c, g, _)| *c == cid && *g == generation)
                                    .map(|t| t.2)
                                    .find(|q| p.qos == (*q).min(a.publish.qos))
                                    .or_else(|| {
                                        a.targets
                                            .iter()
                                            .find(|(c, g, _)| *c == cid && *g == generation)
                                            .map(|t| t.2)
                                    });
                                let shared = a.groups.iter().any(|(_, m, _)| {
                                    m.iter().any(|(c, g)| *c == cid && *g == generation)
                                });
                                match direct {
                                    Some(q) if p.qos != q.min(a.publish.qos) && !shared => push(
                                        "I6",
                                        at,
                                        format!(
                                            "actor {actor}: {:?} at QoS {} (granted {q})",
                                            p.tag, p.qos
                                        ),
                                    ),
                                    None if !shared => push(
                                        "I6",
                                        at,
                                        format!(
                                            "actor {actor} generation {generation}: {:?} on {} without a matching subscription at acceptance",
                                            p.tag, p.topic
                                        ),
                                    ),
                                    _ => {}
                                }
                            }
                        }
                    },
                    Tag::Will { .. } => {
                        let known = wills.values().any(|w| {
                            w.tag == p.tag && !w.normal && w.ended.is_some_and(|end| end <= at)
                        });
                        if !known {
                            push(
                                "I9",
                                at,
                                format!("actor {actor}: will {:?} that should not exist", p.tag),
                            );
                        }
                    }
                    Tag::Empty | Tag::Other | Tag::Hostile { .. } => {
                        if !other_topics.contains(&p.topic) {
                            push(
                                "I6",
                                at,
                                format!("actor {actor}: unexpected message on {}", p.topic),
                            );
                        }
                    }
                }
                if let Some(cid) = &cid {
                    got_by_session.insert((cid.clone(), generation, p.tag));
                }
                let fresh = d.first && !(p.dup && seen.contains(&(actor, p.tag)));
                // I4: QoS 2 exactly once.
                let storm_publisher =
                    matches!(p.tag, Tag::Msg { publisher, .. } if storm(publisher));
                if p.qos == 2
                    && d.first
                    && !p.retain
                    && !storm(actor)
                    && !storm_publisher
                    && accepted.get(&p.tag).is_none_or(|a| {
                        !lossy_across(&a.incarnations) && a.publisher_gens.len() <= 1
                    })
                    && matches!(p.tag, Tag::Msg { .. })
                {
                    {
                        // A crash that lost acknowledged records between two first
                        // deliveries may have forgotten that the first one completed.
                        let (n, life_of) =
                            q2_first.entry((actor, p.tag)).or_insert((0, incarnation));
                        if lossy_across(&BTreeSet::from([*life_of, incarnation])) {
                            *n = 0;
                        }
                        *life_of = incarnation;
                        *n += 1;
                        if *n > 1 {
                            push(
                                "I4",
                                at,
                                format!("actor {actor}: second first delivery of {:?}", p.tag),
                            );
                        }
                        if r == Some(Role::SharedMember) {
                            let n = q2_group_first.entry(p.tag).or_insert(0);
                            *n += 1;
                            if *n > 1 {
                                push("I4", at, format!("group: {:?} delivered twice", p.tag));
                            }
                        }
                    }
                }
                // I5: first deliveries per (subscriber, topic, QoS, publisher) in order.
                // A message routed twice (publisher resend) may legitimately overtake: its
                // first copy can have been dropped (QoS 0 to a slow or absent reader).
                let rerouted = accepted.get(&p.tag).is_some_and(|a| a.routed > 1);
                if let Tag::Msg { publisher, seq } = p.tag
                    && !p.retain
                    && fresh
                    && !rerouted
                    && !seen.contains(&(actor, p.tag))
                {
                    let pq = accepted.get(&p.tag).map_or(p.qos, |a| a.publish.qos);
                    let key = (actor, p.topic.clone(), pq, publisher);
                    if let Some(last) = order.get(&key)
                        && *last > seq
                    {
                        push(
                            "I5",
                            at,
                            format!(
                                "actor {actor} on {}: seq {seq} of publisher {publisher} after {last}",
                                p.topic
                            ),
                        );
                    }
                    let e = order.entry(key).or_insert(seq);
                    *e = (*e).max(seq);
                }
                seen.insert((actor, p.tag));
                // I9: wills at most once, never early.
                // The first copy the watcher sees may be a resend (DUP): the copy sent before
                // died with a restarted broker, or with a watcher connection that the broker
                // had not yet seen die (a keep-alive cut after a suspension).
                if let Tag::Will { .. } = p.tag
                    && r == Some(Role::Watcher)
                    && (!p.dup || !will_seen.contains_key(&p.tag))
                    && d.first
                {
                    let (n, life_of) = will_seen.entry(p.tag).or_insert((0, incarnation));
                    // A crash that lost acknowledged records may forget the will's delivery
                    // completed, and send it again.
                    if lossy_across(&BTreeSet::from([*life_of, incarnation])) {
                        *n = 0;
                    }
                    *life_of = incarnation;
                    *n += 1;
                    if *n > 1 {
                        push("I9", at, format!("will {:?} published twice", p.tag));
                    }
                    will_delivered_at.entry(p.tag).or_insert(at);
                    if let Some(w) = wills.values().find(|w| w.tag == p.tag)
                        && w.ended.is_some_and(|end| at < end + w.delay_ms)
                    {
                        push("I9", at, format!("will {:?} before its delay", p.tag));
                    }
                }
                // I7: resend discipline and the inflight window (client side).
                if p.qos > 0 && !storm(actor) {
                    let pid = p.pid.unwrap_or(0);
                    let key = (actor, generation);
                    if p.dup {
                        if conn_seen.contains(&(d.conn, pid, p.tag)) {
                            push(
                                "I7",
                                at,
                                format!(
                                    "actor {actor} conn {}: DUP resend of pid {pid} without reconnect",
                                    d.conn
                                ),
                            );
                        }
                        // With a store, a first transmission can die with the broker after
                        // the id's earlier message completed: the resend is the first copy.
                        let in_flight =
                            !store || unacked.get(&key).is_some_and(|s| s.contains(&pid));
                        if let Some((t, _)) = pid_tag.get(&(actor, generation, pid))
                            && in_flight
                            && *t != p.tag
                        {
                            push(
                                "I7",
                                at,
                                format!(
                                    "actor {actor}: DUP pid {pid} carries {:?}, was {t:?}",
                                    p.tag
                                ),
                            );
                        }
                    } else if unacked.get(&key).is_some_and(|s| s.contains(&pid)) {
                        push(
                            "I7",
                            at,
                            format!(
                                "actor {actor}: pid {pid} reused while in flight ({:?})",
                                p.tag
                            ),
                        );
                    }
                    pid_tag.insert((actor, generation, pid), (p.tag, p.qos));
                    conn_seen.insert((d.conn, pid, p.tag));
                    unacked.entry(key).or_default().insert(pid);
                    let set = conn_inflight.entry(d.conn).or_default();
                    set.insert(pid);
                    let limit = actors
                        .get(actor)
                        .and_then(|a| a.receive_max.filter(|_| a.v5))
                        .unwrap_or(u16::MAX)
                        .min(config.max_inflight);
                    if set.len() > usize::from(limit) {
                        push(
                            "I7",
                            at,
                            format!(
                                "actor {actor} conn {}: {} in flight, Receive Maximum {limit}",
                                d.conn,
                                set.len()
                            ),
                        );
                    }
                }
            }
            Ev::ClientAck {
                actor,
                conn,
                kind,
                pid,
            } => {
                if matches!(kind, AckKind::PubAck | AckKind::PubComp) {
                    if let Some(s) = conn_inflight.get_mut(conn) {
                        s.remove(pid);
                    }
                    let generation = conn_gen.get(conn).copied().unwrap_or(0);
                    if let Some(s) = unacked.get_mut(&(*actor, generation)) {
                        s.remove(pid);
                    }
                }
            }
            _ => {}
        }
    }

    for x in persist_check::check(entries, &durable) {
        push(x.invariant, x.at, x.detail);
    }
    if !quiesced {
        return v;
    }

    // ----- liveness, after heal ----------------------------------------------------------
    // I3 (and I4's "none lost"): QoS 1/2 reach every surviving matching session.
    let final_gen = |cid: &str| sessions.get(cid).map(|s| s.generation);
    let storm_ids: BTreeSet<String> = actors
        .iter()
        .filter(|a| a.role == Role::Storm)
        .map(|a| a.client_id.clone())
        .collect();
    let survives = |cid: &str, g: u32| {
        final_gen(cid) == Some(g)
            && !storm_ids.contains(cid)
            && sessions
                .get(cid)
                .is_some_and(|s| !s.dropped_gens.contains(&g))
    };
    for (tag, a) in &accepted {
        if a.publish.qos == 0 || a.publish.retain || a.publish.expiry.is_some() {
            continue;
        }
        if !matches!(tag, Tag::Msg { .. }) {
            continue;
        }
        for (cid, g, q) in &a.targets {
            if *q == 0 || !survives(cid, *g) || !a.required.contains(&(cid.clone(), *g, *q)) {
                continue;
            }
            if !got_by_session.contains(&(cid.clone(), *g, *tag)) {
                let inv = if a.publish.qos == 2 && *q == 2 {
                    "I4"
                } else {
                    "I3"
                };
                push(
                    inv,
                    a.at,
                    format!(
                        "{tag:?} (QoS {}, {}) never reached {cid} generation {g}",
                        a.publish.qos, a.publish.topic
                    ),
                );
            }
        }
        for (group, members, q) in &a.groups {
            if *q == 0 || !members.iter().all(|(c, g)| survives(c, *g)) {
                continue;
            }
            if !members
                .iter()
                .any(|(c, g)| got_by_session.contains(&(c.clone(), *g, *tag)))
            {
                push(
                    "I3",
                    a.at,
                    format!("{tag:?} never reached share group {group}"),
                );
            }
        }
    }
    // I9: every will due before the end was published (once the watcher listened).
    let quiesced_at = entries
        .iter()
        .find(|e| e.ev == Ev::Quiesced)
        .map_or(end_at, |e| e.at);
    let watcher_dropped = sessions
        .get("watcher")
        .is_some_and(|s| !s.dropped_gens.is_empty());
    let suspensions = crate::suspend::suspensions(entries);
    for (conn, w) in &wills {
        let Some(end) = w.ended else {
            continue;
        };
        // A will delay that ran out while the broker was suspended takes effect when it
        // resumes, after the keep-alive cuts that came due before it.
        let due = crate::suspend::broker_runs_at(&suspensions, end + w.delay_ms);
        if w.normal {
            if will_seen.contains_key(&w.tag) {
                push(
                    "I9",
                    end,
                    format!("conn {conn}: will after DISCONNECT 0x00"),
                );
            }
            continue;
        }
        // A restart without persistence also loses a will already sent but not yet received.
        let sent = will_sent_at.get(&w.tag);
        let restarted = restarts
            .iter()
            .any(|r| *r >= end && (*r <= due || sent.is_some_and(|s| s <= r)))
            // With a store, a will published just before a crash may still have been held
            // behind the store (with the records its publication produced, or behind other
            // output to the watcher), and it dies with the broker.
            || durable.lives.iter().filter_map(|l| l.crash.as_ref()).any(|c| {
                c.at >= due
                    && sent.is_none_or(|s| *s > c.at)
                    && c.may_lose_will(durable.will_records.get(&w.tag).copied())
            });
        // A QoS 0 will is lost while the watcher is away: only judge when it listened.
        let watcher_away = watcher_down.iter().any(|(a, b)| due >= *a && due <= *b)
            || watcher_down_since.is_some_and(|a| due >= a);
        if w.cancelled
            || restarted
            || watcher_away
            || !w.watcher_ready
            || watcher_dropped
            || due > quiesced_at
        {
            continue;
        }
        let _ = (w.expiry, w.incarnation);
        if !will_seen.contains_key(&w.tag) {
            push(
                "I9",
                due,
                format!(
                    "conn {conn} ({}): will {:?} never published",
                    w.client_id, w.tag
                ),
            );
        }
    }
    // I8: the retained store is the last retained publish per topic.
    let audited = entries.iter().any(|e| {
        matches!(&e.ev, Ev::BrokerGot { actor, pkt: Got::Subscribe(_), .. }
            if role(*actor) == Some(Role::Auditor))
    });
    if audited {
        let model: BTreeSet<(String, Tag)> =
            retained.iter().map(|(t, g)| (t.clone(), *g)).collect();
        if model != auditor {
            push(
                "I8",
                end_at,
                format!("retained store {auditor:?}, expected {model:?}"),
            );
        }
        if let Some(n) = last_stats_retained
            && n != model.len() as u64
        {
            push(
                "I8",
                end_at,
                format!("stats count {n} retained, expected {}", model.len()),
            );
        }
    }
    v.extend(admin::check_admin(entries));
    v
}
