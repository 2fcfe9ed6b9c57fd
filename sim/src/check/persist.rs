//! Persistence invariants over a finished trace (persistence-ops.md §1.8 (c); S6/S7).
//!
//! The store numbers records; the trace says which step (broker input) produced which
//! numbers, which numbers the store reported durable, and which a crash kept. From those:
//!
//! - **P1**: no CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK or UNSUBACK leaves the
//!   broker before the `PersistDone` covering the records produced by the input it answers
//!   (those an ack waits for: all but lazy ones — finished deliveries, disconnect times,
//!   QoS 1 packet ids — and those of a will the input published after closing a
//!   connection). Not checked with `sync = none`, which promises nothing.
//! - **P2**: a snapshot rebuilds the same state as the journal it replaces, records read back
//!   as written, and a restored broker holds what it was restored from (session and retained
//!   counts).
//! - **P3**: after `PersistFailed`, no ack of later work that needs the store: a CONNACK of a
//!   persistent session, a SUBACK to one, a PUBACK/PUBREC of a retained message or of a
//!   message a persistent subscription matches, a PUBREC of a new QoS 2 id of a persistent
//!   publisher, a PUBREL to a persistent subscriber, a v5 PUBCOMP to a persistent publisher.
//! - **P4**: after a crash, (a) where the mode promises it (`fsync`; `os` unless the power
//!   failed) every acknowledgement sent had its records kept, and (b) the restored
//!   sessions, their expiry and disconnect time, subscriptions (filter and QoS) and
//!   unreleased QoS 2 ids, and the retained messages are exactly what the history of
//!   client packets says as of the last step whose records were all kept (or the store
//!   failure, if earlier); keys that the next, partly kept, step touched may be either way.
//!   With P1 and (a), everything SUBACKed and not UNSUBACKed survives, an acknowledged
//!   retained value (or a later one) is there, and a persistent session is there.
//!
//! Delivery across restarts (I3/I4 with persistence) is judged by `delivery.rs`: a
//! message accepted in a step whose records a crash kept must still reach its persistent
//! subscribers, and QoS 2 stays exactly once across restarts unless a crash lost
//! acknowledged records (`os` with a power loss, `sync = none`).

use std::collections::{BTreeMap, BTreeSet};

use tidemq_core::Config;
use tidemq_core::config::SyncMode;

use crate::oracle::{Violation, split_share, topic_matches};
use crate::trace::{AckKind, Entry, Ev, Got, Pub, Rec, RestoredSession, Sent, Tag};

/// Keys a partly kept step touched: after the restart they may hold either state.
#[derive(Debug, Default, Clone)]
pub struct Ambiguous {
    pub sessions: BTreeSet<String>,
    pub subs: BTreeSet<(String, String)>,
    pub rel: BTreeSet<(String, u16)>,
    pub retained: BTreeSet<String>,
}

impl Ambiguous {
    fn add(&mut self, r: &Rec) {
        match r {
            Rec::SessionPut { client_id, .. } | Rec::SessionDel { client_id } => {
                self.sessions.insert(client_id.clone());
            }
            Rec::SubPut {
                client_id, filter, ..
            }
            | Rec::SubDel { client_id, filter } => {
                self.subs.insert((client_id.clone(), filter.clone()));
            }
            Rec::InQos2Put { client_id, pid } | Rec::InQos2Del { client_id, pid } => {
                self.rel.insert((client_id.clone(), *pid));
            }
            Rec::RetainPut { topic, .. } | Rec::RetainDel { topic } => {
                self.retained.insert(topic.clone());
            }
            _ => {}
        }
    }
}

/// How one broker life ended.
#[derive(Debug, Clone)]
pub struct CrashInfo {
    pub at: u64,
    pub power_loss: bool,
    pub handed: u64,
    pub done: u64,
    pub kept: u64,
    /// Every step of the life up to this one kept all its records (`u64::MAX`: all did).
    pub k_step: u64,
    pub ambiguous: Ambiguous,
    /// The mode promises that everything acknowledged survives this crash.
    pub promise: bool,
    /// Acknowledged work may have been lost (no store, `sync = none`, or `os` power loss).
    pub lossy: bool,
    /// The broker still held output for the store when it died: it had not been told that
    /// everything its output waited for was durable.
    pub held: bool,
}

impl CrashInfo {
    /// Whether a will published before this crash and not yet sent may have died with it:
    /// its records (if its publication produced any) were not kept, or, without records,
    /// it may have waited behind other output the broker held.
    pub fn may_lose_will(&self, will_records: Option<u64>) -> bool {
        match will_records {
            Some(last) => last > self.kept,
            None => self.held,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Life {
    pub start_step: u64,
    /// The step of `PersistFailed`, if the store failed in this life: nothing after it is
    /// stored.
    pub failed_step: Option<u64>,
    pub crash: Option<CrashInfo>,
}

/// Sequence numbers one step handed to the store.
#[derive(Debug, Clone, Copy)]
pub struct StepSeqs {
    pub min: u64,
    pub max: u64,
    /// Highest record an acknowledgement of this step waits for. A will published in the
    /// step is not counted: it follows the close of its connection, after whatever that
    /// connection was sent on its way out, and no acknowledgement depends on it.
    pub gating: Option<u64>,
    /// Highest record any output of the step waits for (wills included).
    pub holds: Option<u64>,
}

/// What the persistence events of a trace say, gathered before the checkers run.
#[derive(Debug, Default)]
pub struct Durable {
    /// A store is in use.
    pub store: bool,
    pub mode: Option<SyncMode>,
    pub lives: Vec<Life>,
    pub steps: BTreeMap<u64, StepSeqs>,
    /// Steps with records a crash did not keep.
    pub lost_steps: BTreeSet<u64>,
    /// The last record each will's publication produced (its message and its queue entries).
    pub will_records: BTreeMap<Tag, u64>,
}

impl Durable {
    /// The step after which the checker takes its picture of durable state for the crash
    /// that ends `life`.
    pub fn picture_step(&self, life: usize) -> Option<u64> {
        let l = self.lives.get(life)?;
        let c = l.crash.as_ref()?;
        let k = c.k_step.min(l.failed_step.map_or(u64::MAX, |f| f - 1));
        Some(k.max(l.start_step))
    }

    pub fn crash_of(&self, life: usize) -> Option<&CrashInfo> {
        self.lives.get(life).and_then(|l| l.crash.as_ref())
    }

    fn gating(&self, step: u64) -> Option<u64> {
        self.steps.get(&step).and_then(|s| s.gating)
    }
}

pub fn prepass(entries: &[Entry], config: &Config) -> Durable {
    let store = config.persistence.enable;
    let mut d = Durable {
        store,
        mode: store.then_some(config.persistence.sync),
        ..Durable::default()
    };
    let mut recs: BTreeMap<u64, Vec<&Rec>> = BTreeMap::new();
    let mut life_steps: Vec<u64> = Vec::new();
    // What the broker of the current life was told is durable.
    let mut reported = 0u64;
    for e in entries {
        match &e.ev {
            Ev::BrokerStart { .. } => {
                d.lives.push(Life {
                    start_step: e.step,
                    failed_step: None,
                    crash: None,
                });
                life_steps.clear();
                reported = 0;
            }
            Ev::PersistDone { upto } => reported = reported.max(*upto),
            Ev::Persist { upto, recs: rs } => {
                let n = rs.len() as u64;
                if n == 0 {
                    continue;
                }
                let first = upto + 1 - n.min(upto + 1);
                let holds = rs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.gating())
                    .map(|(i, _)| first + i as u64)
                    .max();
                let mut wills = BTreeMap::new();
                let mut will_entries = BTreeMap::new();
                let mut gating = None;
                for (i, r) in rs.iter().enumerate() {
                    let seq = first + i as u64;
                    let will = match r {
                        Rec::MsgPut {
                            id,
                            tag: tag @ Tag::Will { .. },
                        } => {
                            wills.insert(*id, *tag);
                            Some(*tag)
                        }
                        Rec::QueuePut {
                            client_id,
                            entry,
                            msg_id,
                            ..
                        } => wills.get(msg_id).copied().inspect(|tag| {
                            will_entries.insert((client_id.clone(), *entry), *tag);
                        }),
                        Rec::OutState {
                            client_id, entry, ..
                        } => will_entries.get(&(client_id.clone(), *entry)).copied(),
                        Rec::RetainPut { msg_id, .. } => wills.get(msg_id).copied(),
                        _ => None,
                    };
                    match will {
                        Some(tag) => {
                            let last = d.will_records.entry(tag).or_insert(seq);
                            *last = (*last).max(seq);
                        }
                        None if r.gating() => gating = Some(seq),
                        None => {}
                    }
                }
                let s = d.steps.entry(e.step).or_insert(StepSeqs {
                    min: first,
                    max: *upto,
                    gating: None,
                    holds: None,
                });
                s.min = s.min.min(first);
                s.max = s.max.max(*upto);
                s.gating = s.gating.max(gating);
                s.holds = s.holds.max(holds);
                if life_steps.last() != Some(&e.step) {
                    life_steps.push(e.step);
                }
                recs.entry(e.step).or_default().extend(rs.iter());
            }
            Ev::PersistFailed => {
                if let Some(l) = d.lives.last_mut() {
                    l.failed_step.get_or_insert(e.step);
                }
            }
            Ev::Crash {
                power_loss,
                handed,
                done,
                kept,
            } => {
                let start_step = d.lives.last().map_or(0, |l| l.start_step);
                let mut ambiguous = Ambiguous::default();
                let first_lost = life_steps
                    .iter()
                    .copied()
                    .find(|s| d.steps.get(s).is_some_and(|q| q.max > *kept));
                let k_step = match first_lost {
                    None => u64::MAX,
                    Some(f) => {
                        let partial = d.steps.get(&f).is_some_and(|q| q.min <= *kept);
                        if partial || f == start_step {
                            for r in recs.get(&f).into_iter().flatten() {
                                ambiguous.add(r);
                            }
                        }
                        f - 1
                    }
                };
                for s in &life_steps {
                    if d.steps.get(s).is_some_and(|q| q.max > *kept) {
                        d.lost_steps.insert(*s);
                    }
                }
                let mode = d.mode;
                let held = life_steps
                    .iter()
                    .filter_map(|s| d.steps.get(s).and_then(|q| q.holds))
                    .any(|g| g > reported);
                let info = CrashInfo {
                    at: e.at,
                    power_loss: *power_loss,
                    handed: *handed,
                    done: *done,
                    kept: *kept,
                    k_step,
                    ambiguous,
                    promise: match mode {
                        Some(SyncMode::Fsync) => true,
                        Some(SyncMode::Os) => !*power_loss,
                        _ => false,
                    },
                    lossy: !store || kept < done,
                    held,
                };
                if let Some(l) = d.lives.last_mut() {
                    l.crash = Some(info);
                }
                recs.clear();
            }
            _ => {}
        }
    }
    d
}

/// The durable state the acknowledged history implies for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpSession {
    pub expiry: u32,
    /// When its connection ended (sim ms); `None` while connected.
    pub ended_at: Option<u64>,
    /// Restored by an earlier restart and idle since: the store may hold no disconnect time.
    pub unrecorded_end: bool,
    pub subs: BTreeMap<String, u8>,
    pub awaiting_rel: BTreeSet<u16>,
}

/// The durable state the acknowledged history implies.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub sessions: BTreeMap<String, ExpSession>,
    pub retained: BTreeMap<String, Tag>,
}

/// P4 (b): what a restarted broker was restored from, against the history.
pub fn compare_restored(
    exp: &Expected,
    sessions: &[RestoredSession],
    retained: &[(String, Tag)],
    amb: &Ambiguous,
    at: u64,
) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |detail: String| {
        v.push(Violation {
            invariant: "P4",
            at,
            detail,
        })
    };
    let got: BTreeMap<&str, &RestoredSession> =
        sessions.iter().map(|s| (s.client_id.as_str(), s)).collect();
    for (cid, e) in &exp.sessions {
        if amb.sessions.contains(cid) {
            continue;
        }
        let Some(r) = got.get(cid.as_str()) else {
            push(format!("session {cid} lost in the crash"));
            continue;
        };
        if r.expiry != e.expiry {
            push(format!(
                "session {cid}: expiry {} restored, {} expected",
                r.expiry, e.expiry
            ));
        }
        if r.disconnected_at != e.ended_at && !(e.unrecorded_end && r.disconnected_at.is_none()) {
            push(format!(
                "session {cid}: disconnected at {:?} restored, {:?} expected",
                r.disconnected_at, e.ended_at
            ));
        }
        let rs: BTreeMap<&str, u8> = r.subs.iter().map(|(f, q)| (f.as_str(), *q)).collect();
        for (f, q) in &e.subs {
            if amb.subs.contains(&(cid.clone(), f.clone())) {
                continue;
            }
            match rs.get(f.as_str()) {
                None => push(format!("session {cid}: subscription {f} lost in the crash")),
                Some(rq) if rq != q => push(format!(
                    "session {cid}: subscription {f} restored at QoS {rq}, {q} expected"
                )),
                _ => {}
            }
        }
        for f in rs.keys() {
            if !e.subs.contains_key(*f) && !amb.subs.contains(&(cid.clone(), (*f).to_owned())) {
                push(format!(
                    "session {cid}: subscription {f} restored, but it was removed or never made"
                ));
            }
        }
        let rr: BTreeSet<u16> = r.awaiting_rel.iter().copied().collect();
        for pid in e.awaiting_rel.symmetric_difference(&rr) {
            if !amb.rel.contains(&(cid.clone(), *pid)) {
                push(format!(
                    "session {cid}: QoS 2 id {pid} awaiting PUBREL: restored {}, expected {}",
                    rr.contains(pid),
                    e.awaiting_rel.contains(pid)
                ));
            }
        }
    }
    for s in sessions {
        if !exp.sessions.contains_key(&s.client_id) && !amb.sessions.contains(&s.client_id) {
            push(format!(
                "session {} restored, but it had ended or never was persistent",
                s.client_id
            ));
        }
    }
    let rret: BTreeMap<&str, Tag> = retained.iter().map(|(t, g)| (t.as_str(), *g)).collect();
    let topics: BTreeSet<&str> = rret
        .keys()
        .copied()
        .chain(exp.retained.keys().map(String::as_str))
        .collect();
    for t in topics {
        if amb.retained.contains(t) {
            continue;
        }
        let (want, have) = (exp.retained.get(t), rret.get(t));
        if want != have {
            push(format!(
                "retained {t}: {have:?} restored, {want:?} expected"
            ));
        }
    }
    v
}

/// Sessions a restore keeps (the others have expired while the broker was down).
pub fn survives_restore(s: &RestoredSession, restore_at: u64) -> bool {
    if s.expiry == 0 {
        return false;
    }
    if s.expiry == u32::MAX {
        return true;
    }
    let elapsed = s
        .disconnected_at
        .map_or(0, |d| restore_at.saturating_sub(d));
    elapsed < u64::from(s.expiry) * 1000
}

/// Per connection, the packets an acknowledgement answers.
#[derive(Default)]
struct ConnLog {
    client_id: String,
    durable: bool,
    v5: bool,
    connect: Option<u64>,
    /// By (QoS, packet id): the step, the message, and whether it resent a QoS 2 id the
    /// broker already held (answered without the store).
    publishes: BTreeMap<(u8, u16), (u64, Pub, bool)>,
    pubrel_in: BTreeMap<u16, u64>,
    pubrec_in: BTreeMap<u16, u64>,
    subscribes: std::collections::VecDeque<u64>,
    /// Per SUBSCRIBE awaiting its SUBACK: each filter and the durable QoS it had before, to
    /// restore when the SUBACK refuses it.
    subscribe_before: std::collections::VecDeque<Vec<(String, Option<u8>)>>,
    unsubscribes: std::collections::VecDeque<u64>,
}

/// P1, P2, P3 and P4 (a).
pub fn check(entries: &[Entry], d: &Durable) -> Vec<Violation> {
    let mut v = Vec::new();
    if !d.store {
        return v;
    }
    let mut push = |inv: &'static str, at: u64, detail: String| {
        v.push(Violation {
            invariant: inv,
            at,
            detail,
        })
    };
    let check_p1 = d.mode != Some(SyncMode::None);
    let dropped: BTreeSet<(u64, &str)> = entries
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::Dropped { client_id, .. } => Some((e.step, client_id.as_str())),
            _ => None,
        })
        .collect();
    let mut life = 0usize;
    let mut done = 0u64;
    let mut failed: Option<u64> = None;
    let mut conns: BTreeMap<u64, ConnLog> = BTreeMap::new();
    // Acknowledgements sent this life: (step they answer, what).
    let mut acks: Vec<(u64, String)> = Vec::new();
    // Persistent sessions' subscriptions (P3's model).
    let mut dsubs: BTreeMap<String, BTreeMap<String, u8>> = BTreeMap::new();
    // Inbound QoS 2 ids each client id's session holds (PUBREC'd, not released).
    let mut awaiting: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut restored_counts: Option<(u64, u64)> = None;
    // The first step of this life that accepted each QoS 2 message.
    let mut accepted_at: BTreeMap<Tag, u64> = BTreeMap::new();
    let mut first_start = true;
    for e in entries {
        let at = e.at;
        match &e.ev {
            Ev::BrokerStart { .. } => {
                if !first_start {
                    life += 1;
                }
                first_start = false;
                done = d
                    .lives
                    .get(life.wrapping_sub(1))
                    .and_then(|l| l.crash.as_ref())
                    .map_or(0, |c| c.kept);
                failed = None;
                conns.clear();
                accepted_at.clear();
                acks.clear();
                dsubs.clear();
                awaiting.clear();
            }
            Ev::Restored {
                sessions, retained, ..
            } => {
                dsubs = sessions
                    .iter()
                    .map(|s| (s.client_id.clone(), s.subs.iter().cloned().collect()))
                    .collect();
                awaiting = sessions
                    .iter()
                    .map(|s| {
                        (
                            s.client_id.clone(),
                            s.awaiting_rel.iter().copied().collect(),
                        )
                    })
                    .collect();
                let n = sessions.iter().filter(|s| survives_restore(s, at)).count() as u64;
                restored_counts = Some((n, retained.len() as u64));
            }
            Ev::RestoreStats { sessions, retained } => {
                if let Some((n, r)) = restored_counts.take()
                    && (n, r) != (*sessions, *retained)
                {
                    push(
                        "P2",
                        at,
                        format!(
                            "restored broker holds {sessions} sessions and {retained} retained \
                             messages; the store gave {n} live sessions and {r} retained"
                        ),
                    );
                }
            }
            Ev::SnapshotMismatch { upto, detail } => {
                push("P2", at, format!("snapshot/records at {upto}: {detail}"));
            }
            Ev::PersistDone { upto } => {
                if failed.is_some() {
                    push("P3", at, format!("PersistDone {upto} after PersistFailed"));
                }
                done = done.max(*upto);
            }
            Ev::PersistFailed => {
                failed.get_or_insert(e.step);
            }
            Ev::SessionExpired { client_id } | Ev::SessionShed { client_id } => {
                dsubs.remove(client_id);
                awaiting.remove(client_id);
            }
            Ev::Crash { kept, .. } => {
                if let Some(c) = d.crash_of(life)
                    && c.promise
                {
                    for (step, what) in &acks {
                        if let Some(g) = d.gating(*step)
                            && g > *kept
                        {
                            push(
                                "P4",
                                at,
                                format!(
                                    "{what} was sent, but the crash kept records only up to \
                                     {kept} and it needed {g} (store reported {} durable)",
                                    c.done
                                ),
                            );
                        }
                    }
                }
                acks.clear();
            }
            Ev::BrokerGot { conn, pkt, .. } => {
                let c = conns.entry(*conn).or_default();
                match pkt {
                    Got::Connect {
                        client_id,
                        clean_start,
                        expiry,
                        v5,
                        ..
                    } => {
                        c.client_id = client_id.clone();
                        c.durable = *expiry > 0;
                        c.v5 = *v5;
                        c.connect = Some(e.step);
                        if *clean_start || !c.durable {
                            dsubs.remove(client_id);
                        }
                        if *clean_start {
                            awaiting.remove(client_id);
                        }
                        if c.durable {
                            dsubs.entry(client_id.clone()).or_default();
                        }
                    }
                    Got::Publish(p) => {
                        // A QoS 2 resend under an id the broker still holds (restored from the
                        // store, say) is answered from that state: it accepts nothing anew.
                        let resend = p.qos == 2
                            && p.pid.is_some_and(|pid| {
                                !awaiting.entry(c.client_id.clone()).or_default().insert(pid)
                            });
                        if p.qos == 2
                            && !resend
                            && matches!(p.tag, Tag::Msg { .. } | Tag::Retained { .. })
                        {
                            accepted_at.entry(p.tag).or_insert(e.step);
                        }
                        if let Some(pid) = p.pid {
                            c.publishes
                                .insert((p.qos, pid), (e.step, p.clone(), resend));
                        }
                    }
                    Got::Ack(AckKind::PubRel, pid) => {
                        c.pubrel_in.insert(*pid, e.step);
                        if let Some(a) = awaiting.get_mut(&c.client_id) {
                            a.remove(pid);
                        }
                    }
                    Got::Ack(AckKind::PubRec, pid) => {
                        c.pubrec_in.insert(*pid, e.step);
                    }
                    Got::Subscribe(filters) => {
                        c.subscribes.push_back(e.step);
                        let mut before = Vec::new();
                        if c.durable
                            && let Some(s) = dsubs.get_mut(&c.client_id)
                        {
                            for (f, q) in filters {
                                before.push((f.clone(), s.insert(f.clone(), *q)));
                            }
                        }
                        c.subscribe_before.push_back(before);
                    }
                    Got::Unsubscribe(filters) => {
                        c.unsubscribes.push_back(e.step);
                        if let Some(s) = dsubs.get_mut(&c.client_id) {
                            for f in filters {
                                s.remove(f);
                            }
                        }
                    }
                    _ => {}
                }
            }
            // P1 for deliveries: a message delivered at QoS 2 leaves only once the input that
            // accepted it is durable, or a crash could take back what the subscriber saw, and
            // the publisher, never sent PUBREC, sends it again: a second delivery. (At QoS 0
            // and 1 a message may arrive twice anyway.)
            Ev::BrokerSent {
                conn,
                pkt: Sent::Publish(p),
                ..
            } if check_p1 && p.qos == 2 => {
                if let Some(s) = accepted_at.get(&p.tag)
                    && let Some(g) = d.gating(*s)
                    && g > done
                {
                    // Known core bug K2 when sent by a later input than the one that
                    // accepted it (queued in memory, then pumped without the barrier).
                    push(
                        "P1",
                        at,
                        format!(
                            "conn {conn}: {:?} (QoS {}, {}) sent at step {} before the input that \
                             accepted it (step {s}) was durable: records up to {g}, PersistDone \
                             {done}",
                            p.tag, p.qos, p.topic, e.step
                        ),
                    );
                }
            }
            Ev::BrokerSent { conn, pkt, .. } => {
                let Some(c) = conns.get_mut(conn) else {
                    continue;
                };
                // The step the packet answers, what it is, and whether it needs the store.
                let (origin, what, needs) = match pkt {
                    Sent::ConnAck { code, .. } => {
                        let Some(s) = c.connect else { continue };
                        (
                            s,
                            format!("CONNACK to {}", c.client_id),
                            *code == 0 && c.durable,
                        )
                    }
                    Sent::Ack(AckKind::PubAck, pid, reason) => {
                        let Some((s, p, _)) = c.publishes.get(&(1, *pid)) else {
                            continue;
                        };
                        let needs = *reason < 0x80 && needs_store(p, *s, &dsubs, &dropped);
                        (*s, format!("PUBACK of {:?} on {}", p.tag, p.topic), needs)
                    }
                    Sent::Ack(AckKind::PubRec, pid, reason) => {
                        let Some((s, p, resend)) = c.publishes.get(&(2, *pid)) else {
                            continue;
                        };
                        let needs = *reason < 0x80
                            && !resend
                            && (needs_store(p, *s, &dsubs, &dropped) || c.durable);
                        (*s, format!("PUBREC of {:?} on {}", p.tag, p.topic), needs)
                    }
                    Sent::Ack(AckKind::PubComp, pid, reason) => {
                        let Some(s) = c.pubrel_in.get(pid) else {
                            continue;
                        };
                        let needs = c.durable && c.v5 && *reason == 0;
                        (*s, format!("PUBCOMP {pid} to {}", c.client_id), needs)
                    }
                    Sent::Ack(AckKind::PubRel, pid, _) => {
                        // A resend after a reconnect answers the CONNECT.
                        let Some(s) = c.pubrec_in.get(pid).copied().or(c.connect) else {
                            continue;
                        };
                        (s, format!("PUBREL {pid} to {}", c.client_id), c.durable)
                    }
                    Sent::SubAck(reasons) => {
                        let Some(s) = c.subscribes.pop_front() else {
                            continue;
                        };
                        // A refused filter (after a store failure: 0x97) changed nothing.
                        let before = c.subscribe_before.pop_front().unwrap_or_default();
                        if let Some(subs) = dsubs.get_mut(&c.client_id) {
                            for ((f, prev), r) in before.into_iter().zip(reasons) {
                                if *r < 0x80 {
                                    continue;
                                }
                                match prev {
                                    Some(q) => subs.insert(f, q),
                                    None => subs.remove(&f),
                                };
                            }
                        }
                        let needs = c.durable && reasons.iter().any(|r| *r < 0x80);
                        (s, format!("SUBACK {reasons:?} to {}", c.client_id), needs)
                    }
                    Sent::UnsubAck(_) => {
                        let Some(s) = c.unsubscribes.pop_front() else {
                            continue;
                        };
                        (s, format!("UNSUBACK to {}", c.client_id), false)
                    }
                    _ => continue,
                };
                let g = d.gating(origin);
                if check_p1
                    && let Some(g) = g
                    && g > done
                {
                    push(
                        "P1",
                        at,
                        format!(
                            "conn {conn}: {what} (answering step {origin}) sent at step {} before \
                             its records up to {g} were durable (PersistDone {done})",
                            e.step
                        ),
                    );
                }
                if let Some(f) = failed
                    && origin > f
                    && needs
                {
                    push(
                        "P3",
                        at,
                        format!(
                            "conn {conn}: {what} (answering step {origin}) sent after the store \
                             failed (step {f})"
                        ),
                    );
                }
                acks.push((origin, what));
            }
            _ => {}
        }
    }
    v
}

/// Whether accepting `p` needs the store: a retained message, or one a persistent
/// subscription takes at QoS 1 or 2 (unless that session dropped it in the same step).
fn needs_store(
    p: &Pub,
    step: u64,
    dsubs: &BTreeMap<String, BTreeMap<String, u8>>,
    dropped: &BTreeSet<(u64, &str)>,
) -> bool {
    if p.topic.starts_with('$') {
        return false;
    }
    if p.retain && p.tag != Tag::Empty {
        return true;
    }
    if p.qos == 0 {
        return false;
    }
    dsubs.iter().any(|(cid, subs)| {
        !dropped.contains(&(step, cid.as_str()))
            && subs.iter().any(|(raw, q)| {
                let (_, filter) = split_share(raw);
                *q > 0 && topic_matches(filter, &p.topic)
            })
    })
}
