//! The model the client-facing checkers judge against: one pass over the trace that rebuilds
//! what the broker must hold after each entry (sessions and their subscriptions, the
//! connections, the messages it accepted and where it routed them, retained messages, wills,
//! its counters), from the client packets it took and the faults it went through.
//!
//! [`Replay::apply`] takes the entries in order; a checker looks at the model before the
//! entry it judges is applied, as the broker stood when the event happened.

use std::collections::{BTreeMap, BTreeSet};

use tidemq_core::Config;

use super::persist::{self as persist_check, Durable, ExpSession, Expected};
use crate::client::Role;
use crate::oracle::{split_share, topic_matches};
use crate::trace::{AckKind, Entry, Ev, Got, Pub, Sent, Tag};
use crate::world::ActorInfo;

#[derive(Debug, Clone, Default)]
pub struct Sess {
    pub generation: u32,
    pub alive: bool,
    pub expiry: u32,
    pub ended_at: Option<u64>,
    pub active: Option<u64>,
    pub subs: BTreeMap<String, u8>,
    pub awaiting_rel: BTreeSet<u16>,
    pub dropped_gens: BTreeSet<u32>,
    /// Restored by a restart and not connected since: the store may not hold a disconnect
    /// time for it (the one restore assumed is never written).
    pub restored_idle: bool,
}

impl Sess {
    /// Whether a CONNECT at `at` finds this session, and whether `at` is too close to its
    /// expiry (5 ms) to tell.
    pub fn exists_at(&self, at: u64) -> (bool, bool) {
        if !self.alive {
            return (false, false);
        }
        match (self.ended_at, self.active) {
            // A takeover ends a session whose connection had expiry 0.
            (_, Some(_)) => (self.expiry != 0, false),
            (Some(end), None) => {
                if self.expiry == u32::MAX {
                    (true, false)
                } else {
                    let deadline = end + u64::from(self.expiry) * 1000;
                    (at < deadline, at.abs_diff(deadline) <= 5)
                }
            }
            (None, None) => (false, false),
        }
    }
}

/// Share-group members `(client id, generation)`.
pub type Members = Vec<(String, u32)>;

#[derive(Debug, Clone)]
pub struct Accepted {
    pub at: u64,
    /// The latest acceptance (a QoS 1 resend starts the expiry clock again).
    pub last_at: u64,
    /// Times the broker routed it (a publisher's QoS 1 resend is routed again).
    pub routed: u32,
    /// Broker incarnations that routed it: without persistence, a restart forgets the
    /// QoS 2 ids awaiting PUBREL, and exactly-once cannot hold across it (S7).
    pub incarnations: BTreeSet<u32>,
    /// Publisher session generations that routed it: a session that expired while its
    /// CONNACK (Session Present 0) was lost leaves the client resending a QoS 2 id the new
    /// session never saw, and the broker must take it as new (v5 §4.1, [MQTT-3.2.2-4]).
    pub publisher_gens: BTreeSet<u32>,
    pub publish: Pub,
    /// Sessions that had a matching non-shared subscription: (client id, generation, QoS granted).
    pub targets: Vec<(String, u32, u8)>,
    /// Targets of a routing whose records a crash kept (or that needed none): the message
    /// must still reach them. A routing in a step whose records were lost may be undone.
    pub required: BTreeSet<(String, u32, u8)>,
    /// Share groups that matched: members (client id, generation) and the best QoS.
    pub groups: Vec<(String, Members, u8)>,
}

#[derive(Debug, Clone)]
pub struct WillState {
    pub client_id: String,
    pub tag: Tag,
    pub delay_ms: u64,
    pub normal: bool,
    pub ended: Option<u64>,
    pub cancelled: bool,
    /// The watcher was subscribed when the will was set.
    pub watcher_ready: bool,
}

/// When the will watcher listened: a QoS 0 will is lost while it is away.
#[derive(Debug, Default)]
pub struct Watcher {
    /// Subscribed to `will/#` in this broker life.
    pub ready: bool,
    /// Intervals without a watcher connection, closed by its next subscription.
    pub down: Vec<(u64, u64)>,
    pub down_since: Option<u64>,
}

/// The broker's message counters as the trace shows them (since its last start).
#[derive(Debug, Default)]
pub struct Counters {
    pub message_in: u64,
    pub message_out: u64,
    pub message_drop: u64,
}

/// Per-connection facts that the trace shows later in the same step than the packet they
/// answer (the broker's reply follows the input it reads).
#[derive(Debug, Default)]
pub struct ConnFacts {
    /// The first CONNACK: (Session Present, reason code).
    pub connack: BTreeMap<u64, (bool, u8)>,
    /// Publishes answered with an error (after a store failure: refused, not accepted).
    pub refused_acks: BTreeSet<(u64, u16)>,
    /// The same, with the step they were sent at (the step the PUBLISH was read).
    pub refused_at: BTreeSet<(u64, u16, u64)>,
    /// The step in which the broker closed the connection.
    pub closed_step: BTreeMap<u64, u64>,
    /// DISCONNECTs the broker sent: (step, reason).
    pub disconnects: BTreeMap<u64, Vec<(u64, u8)>>,
    /// SUBACK reason codes, last first: each SUBSCRIBE takes the next one.
    subacks: BTreeMap<u64, Vec<Vec<u8>>>,
    /// UNSUBACK reason codes, last first: each UNSUBSCRIBE takes the next one.
    unsubacks: BTreeMap<u64, Vec<Vec<u8>>>,
    /// The run reached its quiet end (the liveness invariants apply).
    pub quiesced: bool,
}

impl ConnFacts {
    fn collect(entries: &[Entry]) -> Self {
        let mut f = Self::default();
        for e in entries {
            match &e.ev {
                Ev::BrokerSent { conn, pkt, .. } => match pkt {
                    Sent::ConnAck {
                        session_present,
                        code,
                    } => {
                        f.connack.entry(*conn).or_insert((*session_present, *code));
                    }
                    Sent::Disconnect { reason } => f
                        .disconnects
                        .entry(*conn)
                        .or_default()
                        .push((e.step, *reason)),
                    Sent::SubAck(r) => f.subacks.entry(*conn).or_default().push(r.clone()),
                    Sent::UnsubAck(r) => f.unsubacks.entry(*conn).or_default().push(r.clone()),
                    Sent::Ack(AckKind::PubAck | AckKind::PubRec, pid, reason)
                        if *reason >= 0x80 =>
                    {
                        f.refused_acks.insert((*conn, *pid));
                        f.refused_at.insert((*conn, *pid, e.step));
                    }
                    _ => {}
                },
                Ev::BrokerClosed {
                    conn,
                    by_broker: true,
                } => {
                    f.closed_step.entry(*conn).or_insert(e.step);
                }
                Ev::Quiesced => f.quiesced = true,
                _ => {}
            }
        }
        for s in f.subacks.values_mut().chain(f.unsubacks.values_mut()) {
            s.reverse();
        }
        f
    }
}

/// What the broker must hold, entry by entry.
pub struct Replay<'a> {
    pub actors: &'a [ActorInfo],
    pub config: &'a Config,
    /// Broker lives and what each crash kept (S6/S7).
    pub durable: &'a Durable,
    pub store: bool,
    pub facts: ConnFacts,
    pub sessions: BTreeMap<String, Sess>,
    pub conn_client: BTreeMap<u64, String>,
    pub conn_gen: BTreeMap<u64, u32>,
    pub conn_v5: BTreeMap<u64, bool>,
    pub client_ids: BTreeSet<String>,
    pub accepted: BTreeMap<Tag, Accepted>,
    /// New QoS 2 messages that arrived under a packet id the session still held awaiting
    /// PUBREL (another connection of the same client id sent it): the broker takes them as
    /// that message's resend and routes nothing, so a later resend routes them out of order.
    pub absorbed: BTreeSet<Tag>,
    /// Topics of accepted messages that are not tracked one by one (empty, other, hostile).
    pub other_topics: BTreeSet<String>,
    pub retained: BTreeMap<String, Tag>,
    /// Wills by the connection that set them.
    pub wills: BTreeMap<u64, WillState>,
    pub watcher: Watcher,
    pub counters: Counters,
    pub incarnation: u32,
    /// Broker lives started after a crash so far (an index into `durable.lives`).
    pub life: usize,
    /// Crashes and restarts.
    pub restarts: Vec<u64>,
    store_failed: bool,
    /// P4: the step of this life after which to take the picture.
    picture_at: Option<u64>,
    /// P4: the durable state the history implies, as of the last step a crash kept.
    pub picture: Option<Expected>,
    /// The time of the last entry applied.
    pub end_at: u64,
}

impl<'a> Replay<'a> {
    pub fn new(
        entries: &[Entry],
        actors: &'a [ActorInfo],
        config: &'a Config,
        durable: &'a Durable,
    ) -> Self {
        Self {
            actors,
            config,
            durable,
            store: durable.store,
            facts: ConnFacts::collect(entries),
            sessions: BTreeMap::new(),
            conn_client: BTreeMap::new(),
            conn_gen: BTreeMap::new(),
            conn_v5: BTreeMap::new(),
            client_ids: BTreeSet::new(),
            accepted: BTreeMap::new(),
            absorbed: BTreeSet::new(),
            other_topics: BTreeSet::new(),
            retained: BTreeMap::new(),
            wills: BTreeMap::new(),
            watcher: Watcher {
                down_since: Some(0),
                ..Watcher::default()
            },
            counters: Counters::default(),
            incarnation: 0,
            life: 0,
            restarts: Vec::new(),
            store_failed: false,
            picture_at: durable.picture_step(0),
            picture: None,
            end_at: 0,
        }
    }

    pub fn role(&self, actor: usize) -> Option<Role> {
        self.actors.get(actor).map(|x| x.role.clone())
    }

    pub fn is_storm(&self, actor: usize) -> bool {
        self.role(actor) == Some(Role::Storm)
    }

    /// The session generation of a connection's client.
    pub fn generation_of(&self, conn: u64) -> u32 {
        self.conn_gen.get(&conn).copied().unwrap_or(0)
    }

    /// For a CONNECT the broker took, the Session Present its CONNACK showed (`None`: the
    /// CONNACK never went out). With a store, a CONNACK waits for it and may never go out
    /// (the connection or the broker died first): the broker took the CONNECT all the same.
    pub fn taken_connect(&self, conn: u64) -> Option<Option<bool>> {
        let known = self.facts.connack.get(&conn).copied();
        let (sp, code) = known.or(self.store.then_some((false, 0)))?;
        (code == 0).then_some(known.map(|_| sp))
    }

    /// Whether a restart between the first and last of these broker lives may have
    /// forgotten QoS 2 state: without a store every restart does; with one, only a crash
    /// that lost acknowledged records.
    pub fn lossy_across(&self, lives: &BTreeSet<u32>) -> bool {
        let (Some(first), Some(last)) = (lives.first(), lives.last()) else {
            return false;
        };
        (*first..*last).any(|i| self.durable.crash_of(i as usize).is_none_or(|c| c.lossy))
    }

    /// P4: takes the picture of the durable state once the entry is past the last step of
    /// this life that a crash kept (or is the crash).
    pub fn take_picture_if_due(&mut self, e: &Entry) {
        let Some(k) = self.picture_at else {
            return;
        };
        if e.step <= k && !matches!(e.ev, Ev::Crash { .. }) {
            return;
        }
        self.picture_at = None;
        self.picture = Some(Expected {
            sessions: self
                .sessions
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
            retained: self.retained.clone(),
        });
    }

    /// Cancels every will not yet due at `at`: the broker that would send it is gone.
    fn cancel_wills_not_due(&mut self, at: u64) {
        for w in self.wills.values_mut() {
            if w.ended.is_none_or(|end| end + w.delay_ms > at) {
                w.cancelled = true;
            }
        }
    }

    pub fn apply(&mut self, e: &Entry) {
        let at = e.at;
        self.end_at = at;
        match &e.ev {
            Ev::Crash { .. } => {
                self.restarts.push(at);
                self.cancel_wills_not_due(at);
            }
            Ev::Restored {
                sessions: restored,
                retained: kept_retained,
                ..
            } => {
                self.picture = None;
                // From here the broker holds what the store gave back.
                for r in restored {
                    if !persist_check::survives_restore(r, at) {
                        continue;
                    }
                    let s = self.sessions.entry(r.client_id.clone()).or_default();
                    s.alive = true;
                    s.active = None;
                    s.expiry = r.expiry;
                    let elapsed = r.disconnected_at.map_or(0, |d| at.saturating_sub(d));
                    s.ended_at = Some(at.saturating_sub(elapsed));
                    s.subs = r.subs.iter().cloned().collect();
                    s.awaiting_rel = r.awaiting_rel.iter().copied().collect();
                    s.restored_idle = r.disconnected_at.is_none();
                }
                self.retained = kept_retained.iter().cloned().collect();
            }
            Ev::PersistFailed => self.store_failed = true,
            Ev::BrokerStart { incarnation } => {
                self.incarnation = *incarnation;
                self.store_failed = false;
                self.counters = Counters::default();
                if *incarnation > 0 {
                    self.restarts.push(at);
                    self.life += 1;
                    self.picture_at = self.durable.picture_step(self.life);
                }
                for s in self.sessions.values_mut() {
                    s.alive = false;
                    s.active = None;
                    s.subs.clear();
                    s.awaiting_rel.clear();
                }
                self.retained.clear();
                self.watcher.ready = false;
                self.cancel_wills_not_due(at);
            }
            Ev::Dropped {
                client_id,
                why,
                count,
            } => {
                self.counters.message_drop += count;
                if why != "session ended"
                    && let Some(s) = self.sessions.get_mut(client_id)
                {
                    s.dropped_gens.insert(s.generation);
                }
            }
            Ev::BrokerGot { conn, actor, pkt } => self.got(e, *conn, *actor, pkt),
            // Untagged, like an adversary's: delivered anywhere it matches, promised nowhere.
            Ev::RemotePublished { topic } => {
                self.other_topics.insert(topic.clone());
            }
            Ev::SessionExpired { client_id } | Ev::SessionShed { client_id } => {
                // Gone from the broker: nothing routes to it any more.
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.alive = false;
                    s.subs.clear();
                }
            }
            // The watcher's client lost its connection: what the broker sends it from now on
            // (a QoS 0 will, say) is lost, though the broker learns of it only later.
            Ev::ClientLost { conn, .. }
                if self.conn_client.get(conn).map(String::as_str) == Some("watcher")
                    && self
                        .sessions
                        .get("watcher")
                        .is_some_and(|s| s.active == Some(*conn))
                    && self.watcher.down_since.is_none() =>
            {
                self.watcher.down_since = Some(at);
            }
            Ev::BrokerClosed { conn, .. } => {
                if let Some(w) = self.wills.get_mut(conn)
                    && w.ended.is_none()
                {
                    w.ended = Some(at);
                }
                if let Some(cid) = self.conn_client.get(conn)
                    && let Some(s) = self.sessions.get_mut(cid)
                    && s.active == Some(*conn)
                {
                    if cid == "watcher" && self.watcher.down_since.is_none() {
                        self.watcher.down_since = Some(at);
                    }
                    s.active = None;
                    s.ended_at = Some(at);
                    if s.expiry == 0 {
                        s.alive = false;
                    }
                }
            }
            Ev::BrokerSent {
                pkt: Sent::Publish(_),
                ..
            } => self.counters.message_out += 1,
            _ => {}
        }
    }

    /// A packet the broker read.
    fn got(&mut self, e: &Entry, conn: u64, actor: usize, pkt: &Got) {
        let at = e.at;
        match pkt {
            Got::Connect {
                client_id,
                clean_start,
                expiry,
                will,
                ..
            } => {
                let Some(shown) = self.taken_connect(conn) else {
                    return;
                };
                self.client_ids.insert(client_id.clone());
                self.conn_client.insert(conn, client_id.clone());
                let v5 = self.actors.get(actor).is_some_and(|a| a.v5);
                self.conn_v5.insert(conn, v5);
                // Pending wills of this client id are cancelled by a new connection.
                for w in self.wills.values_mut() {
                    if &w.client_id == client_id
                        && !w.normal
                        && w.ended.is_some_and(|end| at < end + w.delay_ms)
                    {
                        w.cancelled = true;
                    }
                }
                let s = self.sessions.entry(client_id.clone()).or_default();
                let (exists, _) = s.exists_at(at);
                let sp = shown.unwrap_or(exists && !clean_start);
                // A takeover: the old connection's will waits out its delay, and this
                // connection cancels it; with no delay it goes out at once.
                if let Some(old) = s.active
                    && old != conn
                    && let Some(w) = self.wills.get_mut(&old)
                    && w.delay_ms > 0
                {
                    w.cancelled = true;
                }
                if !sp {
                    s.generation += 1;
                    s.subs.clear();
                    s.awaiting_rel.clear();
                }
                s.alive = true;
                s.active = Some(conn);
                s.ended_at = None;
                s.restored_idle = false;
                // Simulated clients send no user name: the anonymous cap applies.
                s.expiry = (*expiry)
                    .min(self.config.max_session_expiry)
                    .min(self.config.anonymous_session_expiry);
                self.conn_gen.insert(conn, s.generation);
                if let Some((delay, tag)) = will {
                    let eff = if s.expiry == 0 {
                        0
                    } else {
                        (*delay).min(s.expiry)
                    };
                    self.wills.insert(
                        conn,
                        WillState {
                            client_id: client_id.clone(),
                            tag: *tag,
                            delay_ms: u64::from(eff) * 1000,
                            normal: false,
                            ended: None,
                            cancelled: false,
                            watcher_ready: self.watcher.ready,
                        },
                    );
                }
            }
            Got::Subscribe(filters) => {
                let reasons = self.facts.subacks.get_mut(&conn).and_then(|s| s.pop());
                let Some(cid) = self.conn_client.get(&conn) else {
                    return;
                };
                let Some(s) = self.sessions.get_mut(cid) else {
                    return;
                };
                let watcher = self.actors.get(actor).map(|x| &x.role) == Some(&Role::Watcher);
                for (i, (f, q)) in filters.iter().enumerate() {
                    // With a store a SUBACK may never go out (it waits for the store and
                    // the connection or the broker died first): the broker took it.
                    let ok = match reasons.as_ref() {
                        Some(r) => r.get(i).is_some_and(|r| *r < 0x80),
                        None => self.store,
                    };
                    if ok {
                        s.subs.insert(f.clone(), *q);
                        if f == "will/#" && watcher {
                            self.watcher.ready = true;
                            if let Some(since) = self.watcher.down_since.take() {
                                self.watcher.down.push((since, at));
                            }
                        }
                    }
                }
            }
            Got::Unsubscribe(filters) => {
                // A v5 UNSUBACK may refuse a filter (after a store failure): it stays.
                let reasons = self.facts.unsubacks.get_mut(&conn).and_then(|s| s.pop());
                if let Some(s) = self
                    .conn_client
                    .get(&conn)
                    .and_then(|c| self.sessions.get_mut(c))
                {
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
                    && let Some(w) = self.wills.get_mut(&conn)
                {
                    w.normal = true;
                }
            }
            Got::Ack(AckKind::PubRel, pid) => {
                if let Some(s) = self
                    .conn_client
                    .get(&conn)
                    .and_then(|c| self.sessions.get_mut(c))
                {
                    s.awaiting_rel.remove(pid);
                }
            }
            Got::Publish(p) => self.route(e, conn, p),
            _ => {}
        }
    }

    /// A client PUBLISH: accepted or refused, then routed to the sessions subscribed.
    fn route(&mut self, e: &Entry, conn: u64, p: &Pub) {
        let at = e.at;
        let Some(cid) = self.conn_client.get(&conn).cloned() else {
            return;
        };
        if p.topic.starts_with("$SYS") || super::auth::publish_denied(self.config, &cid, &p.topic) {
            return;
        }
        // After a store failure a message that needs the store (retained, or taken at QoS
        // 1/2 by a persistent session) is refused: an error code (v5 QoS 1/2; it may wait
        // forever behind output held for the store) or the connection closed (3.1.1, QoS 0).
        if self.store_failed {
            let needs = p.retain
                || p.qos > 0
                    && self.sessions.values().any(|s| {
                        s.alive
                            && s.expiry > 0
                            && s.subs.iter().any(|(raw, q)| {
                                *q > 0 && topic_matches(split_share(raw).1, &p.topic)
                            })
                    });
            let refused = p
                .pid
                .is_some_and(|pid| self.facts.refused_acks.contains(&(conn, pid)));
            if needs || refused {
                return;
            }
        }
        // Past the memory budget's high mark a retained message is refused (v5: 0x97 at
        // once, in the input that read it).
        if p.retain
            && p.pid
                .is_some_and(|pid| self.facts.refused_at.contains(&(conn, pid, e.step)))
        {
            return;
        }
        if p.qos == 2 {
            let Some(s) = self.sessions.get_mut(&cid) else {
                return;
            };
            let pid = p.pid.unwrap_or(0);
            if !s.awaiting_rel.insert(pid) {
                if !self.accepted.contains_key(&p.tag) {
                    self.absorbed.insert(p.tag);
                }
                return; // a resend before PUBREL: not routed again
            }
        }
        self.counters.message_in += 1;
        if p.retain {
            if p.tag == Tag::Empty {
                self.retained.remove(&p.topic);
            } else {
                self.retained.insert(p.topic.clone(), p.tag);
            }
        }
        let publisher_gen = self.sessions.get(&cid).map_or(0, |s| s.generation);
        let mut targets = Vec::new();
        let mut groups: BTreeMap<(String, String), (Members, u8)> = BTreeMap::new();
        for (id, s) in &self.sessions {
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
            self.counters.message_drop += 1;
        }
        match p.tag {
            Tag::Msg { .. } | Tag::Retained { .. } => {
                let groups: Vec<_> = groups
                    .into_iter()
                    .map(|((g, _), (m, q))| (g, m, q))
                    .collect();
                // A QoS 1 resend is routed again: the targets add up.
                let a = self.accepted.entry(p.tag).or_insert_with(|| Accepted {
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
                a.incarnations.insert(self.incarnation);
                a.publisher_gens.insert(publisher_gen);
                if !self.durable.lost_steps.contains(&e.step) {
                    a.required.extend(targets.iter().cloned());
                }
                a.targets.extend(targets);
                a.groups.extend(groups);
            }
            _ => {
                self.other_topics.insert(p.topic.clone());
            }
        }
    }
}
