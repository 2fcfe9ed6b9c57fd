//! Cluster mode: a persistent session's QoS 2 messages go out exactly once, even when the
//! session moves to another node (what the record keeps: `cluster/qos2.rs`).
//!
//! - A QoS 2 delivery of a stream message takes its packet id and its place in the window at
//!   once, but its PUBLISH waits until a record holding (packet id, sequence) is written; its
//!   PUBREL likewise waits for a record holding its released stage. Record writes are one at
//!   a time per session, so one write carries every delivery that came while the last was on
//!   its way. QoS 0 and QoS 1 never wait (QoS 1 may come again after a move).
//! - Its PUBCOMP puts its sequence in the finished set, written lazily, until the cursor
//!   passes it.
//! - A session resumed from a record holds the record's window: a PUBLISH stage entry waits
//!   for the stream to bring its message (the catch-up read, or the feed), then is resent with
//!   its packet id and DUP; a released one resends its PUBREL. Finished messages and those in
//!   the window are not delivered again when the stream brings them.
//! - Inbound, a QoS 2 PUBLISH of a persistent session waits for a record holding its id and
//!   the stamp its stream write will carry (the write's dedup id) before that write is made;
//!   its PUBCOMP waits for a record without the id. A session resumed with such ids answers a
//!   PUBLISH again with one by writing it again under the recorded stamp (JetStream stores it
//!   once; the feed brings it here if it is new), and a PUBREL as usual. Once JetStream
//!   confirmed the write, the next record (the records tick's, or any earlier one) marks the id
//!   stored, and a PUBLISH again with a marked id is answered without a write: a client back
//!   after more than the stream's `duplicate_window` would otherwise have it stored twice.
//! - Room: at most `record::MAX_QOS2_WINDOW` in the window and `record::MAX_QOS2_DONE`
//!   finished past the cursor (51 KiB of record at most with 1,024 inbound ids' 85 KiB, beside its
//!   subscriptions); past either, QoS 2 deliveries wait in
//!   the session's queue (a client that never acknowledges one message stalls only itself).

use std::sync::Arc;

use super::Broker;
use crate::api::Output;
use crate::cluster::envelope::Stamp;
use crate::cluster::qos2::{Inbound, Qos2Record, Window};
use crate::cluster::record::MAX_QOS2_INBOUND;
use crate::codec::QoS;
use crate::codec::{Ack, Packet, reason};
use crate::ids::SessionId;
use crate::memory::Ledger;
use crate::message::{Content, Message, Origin};
use crate::session::{Delivery, Session};
use crate::window::InboundQos2;
use crate::window::OutStage;

/// Why a message in flight does not go out on a resend yet.
pub(super) enum Qos2Wait {
    /// Its record is being written: it goes out when that is answered.
    Record,
    /// Resumed from a record: the stream has not brought its message yet.
    Message,
}

impl Broker {
    /// Whether delivery `d` to `sid` must be in the record before it goes out: a QoS 2
    /// delivery of a stream message to a persistent session held here.
    pub(super) fn qos2_recorded_first(&self, sid: SessionId, d: &Delivery) -> bool {
        d.qos == QoS::ExactlyOnce && d.msg.durable.stream_seq() != 0 && self.keeps_record(sid)
    }

    /// Whether delivery `d` may take a place in `sid`'s window now.
    pub(super) fn qos2_has_room(&self, sid: SessionId, d: &Delivery) -> bool {
        !self.qos2_recorded_first(sid, d)
            || self
                .cluster
                .as_deref()
                .and_then(|c| c.owner.held(sid))
                .is_some_and(|h| h.qos2.has_room())
    }

    /// `pid`'s next packet (its first PUBLISH, or its PUBREL) waits for the record.
    pub(super) fn qos2_owe(&mut self, sid: SessionId, pid: u16) {
        let Some(h) = self.held_mut(sid) else {
            return;
        };
        h.qos2.owed.insert(pid);
        self.qos2_changed(sid);
    }

    /// PUBREC came for `pid` (already marked released): whether its PUBREL waits for the
    /// record (then it is owed).
    pub(super) fn qos2_owe_release(&mut self, sid: SessionId, pid: u16) -> bool {
        let owes = self
            .sessions
            .get(&sid)
            .and_then(|s| s.inflight.get(pid))
            .is_some_and(|f| self.qos2_recorded_first(sid, &f.item));
        if owes {
            self.qos2_owe(sid, pid);
        }
        owes
    }

    /// `sid`'s QoS 2 state changed in a way its record must show: counted, and written.
    fn qos2_changed(&mut self, sid: SessionId) {
        if let Some(h) = self.held_mut(sid) {
            h.qos2.recount();
            h.dirty = true;
        }
        self.write_record(sid);
    }

    /// Why `pid` of `sid` cannot be resent now, if it cannot.
    pub(super) fn qos2_wait(&self, sid: SessionId, pid: u16) -> Option<Qos2Wait> {
        let f = self.sessions.get(&sid)?.inflight.get(pid)?;
        if f.stage == OutStage::Published && stands_in(&f.item) {
            return Some(Qos2Wait::Message);
        }
        let h = self.cluster.as_deref()?.owner.held(sid)?;
        h.qos2.owed.contains(&pid).then_some(Qos2Wait::Record)
    }

    /// A QoS 2 delivery's flow ended (PUBCOMP, refused by the client, or abandoned): the
    /// stream will not bring it to this session again.
    pub(super) fn qos2_finished(&mut self, sid: SessionId, d: &Delivery) {
        let seq = d.msg.durable.stream_seq();
        if d.qos != QoS::ExactlyOnce || seq == 0 {
            return;
        }
        if let Some(h) = self.held_mut(sid)
            && h.keeps_record
        {
            let cursor = h.cursor;
            h.qos2.finish(seq, cursor);
            h.dirty = true;
        }
    }

    /// Whether `sid` is a persistent session held here: its QoS 2 state is in its record
    /// (a QoS 2 PUBLISH of it is there before its stream write).
    pub(super) fn keeps_record(&self, sid: SessionId) -> bool {
        self.cluster
            .as_deref()
            .and_then(|c| c.owner.held(sid))
            .is_some_and(|h| h.keeps_record)
    }

    /// Inbound id `pid` of `sid`, whose stream write will carry `stamp`, goes in the record;
    /// the write waits for it. False when the record holds as many as it may.
    pub(super) fn qos2_owe_inbound(&mut self, sid: SessionId, pid: u16, stamp: Stamp) -> bool {
        let Some(h) = self.held_mut(sid) else {
            return false;
        };
        if h.qos2.inbound.len() >= MAX_QOS2_INBOUND && !h.qos2.inbound.contains_key(&pid) {
            return false;
        }
        h.qos2.inbound.insert(pid, stamp);
        h.qos2.stored.remove(&pid);
        self.qos2_changed(sid);
        true
    }

    /// PUBREL for inbound id `pid` of `sid`: true when its PUBCOMP waits for a record without
    /// the id (then it is owed; a PUBREL again meanwhile waits with it).
    pub(super) fn qos2_owe_pubcomp(&mut self, sid: SessionId, pid: u16) -> bool {
        let Some(h) = self.held_mut(sid).filter(|h| h.keeps_record) else {
            return false;
        };
        if !h.qos2.releasing.insert(pid) {
            return true;
        }
        h.qos2.inbound.remove(&pid);
        h.qos2.resumed_inbound.remove(&pid);
        h.qos2.stored.remove(&pid);
        self.qos2_changed(sid);
        true
    }

    /// The stamp a PUBLISH again with inbound id `pid` is written again under: an id `sid`
    /// resumed with whose stream write this node has not confirmed, or whose first write is
    /// still on its way (the client sent it again on a new connection).
    pub(super) fn qos2_inbound_unconfirmed(&self, sid: SessionId, pid: u16) -> Option<Stamp> {
        let h = self.cluster.as_deref()?.owner.held(sid)?;
        let accepted = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.qos2_in.contains(pid));
        if accepted && !h.qos2.resumed_inbound.contains(&pid) {
            return None;
        }
        h.qos2.inbound.get(&pid).cloned()
    }

    /// Inbound id `pid` of `sid` is let go without PUBCOMP: its PUBLISH was refused (the
    /// client ends that flow), so the record must not keep it for a later PUBLISH with it.
    pub(super) fn qos2_forget_inbound(&mut self, sid: SessionId, pid: u16) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.qos2_in.release(pid);
        }
        let Some(h) = self.held_mut(sid) else {
            return;
        };
        if h.qos2.inbound.remove(&pid).is_some() {
            h.qos2.resumed_inbound.remove(&pid);
            h.qos2.stored.remove(&pid);
            self.qos2_changed(sid);
        }
    }

    /// JetStream confirmed the stream write of inbound id `pid` of `sid`, made under
    /// `stamp`: the message is stored, and the next record says so (written lazily: the
    /// records tick's, unless one goes earlier).
    pub(super) fn qos2_inbound_confirmed(&mut self, sid: SessionId, pid: u16, stamp: &Stamp) {
        let Some(h) = self.held_mut(sid) else {
            return;
        };
        // Only the write the record holds the id for (not one of an id since reused).
        if h.qos2.inbound.get(&pid) != Some(stamp) {
            return;
        }
        h.qos2.resumed_inbound.remove(&pid);
        if h.qos2.stored.insert(pid) {
            h.dirty = true;
        }
        h.qos2.recount();
    }

    /// What a record write of `sid` carries of its QoS 2 state (noted as on its way).
    pub(super) fn qos2_to_write(&mut self, sid: SessionId) -> Qos2Record {
        let window: Window = self
            .sessions
            .get(&sid)
            .map(|s| {
                s.inflight
                    .iter()
                    .filter(|(_, f)| {
                        f.item.qos == QoS::ExactlyOnce && f.item.msg.durable.stream_seq() != 0
                    })
                    .map(|(pid, f)| {
                        let seq = f.item.msg.durable.stream_seq();
                        (pid, (seq, f.stage == OutStage::Released))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let Some(h) = self.held_mut(sid) else {
            return Qos2Record {
                window,
                ..Qos2Record::default()
            };
        };
        h.qos2.writing = Some(window.clone());
        h.qos2.inbound_writing = Some(h.qos2.inbound.clone());
        h.qos2.recount();
        Qos2Record {
            window,
            done: h.qos2.done.clone(),
            inbound: h.qos2.inbound.clone(),
            stored: h.qos2.stored.clone(),
        }
    }

    /// A record write of `sid` was answered: written, the packets it vouches for go out, in
    /// the order they were sent; not written, they wait for the next.
    pub(super) fn qos2_recorded(&mut self, sid: SessionId, written: bool) {
        self.qos2_inbound_recorded(sid, written);
        let Some(h) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.owner.held_mut(sid))
        else {
            return;
        };
        let window = h.qos2.writing.take();
        if let (true, Some(window)) = (written, window) {
            h.qos2.recorded = window;
        }
        h.qos2.recount();
        if h.qos2.owed.is_empty() {
            return;
        }
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let mut ready = Vec::new();
        for pid in session.inflight.ids_in_order() {
            let Some(f) = session.inflight.get(pid) else {
                continue;
            };
            let seq = f.item.msg.durable.stream_seq();
            if h.qos2.owed.contains(&pid) && h.qos2.recorded_as(pid, seq, f.stage) {
                h.qos2.owed.remove(&pid);
                // Not on the current connection yet: the resend after the reconnect sends it.
                if f.sent() {
                    ready.push(pid);
                }
            }
        }
        h.qos2.recount();
        let Some(conn) = session.conn else {
            return;
        };
        for pid in ready {
            self.send_in_flight(sid, conn, pid, false);
        }
        // One that could not go (expired, or too large now) made room.
        self.pump(sid);
    }

    /// Inbound: the stream writes a record write of `sid` vouched for are made, and the
    /// PUBCOMPs of ids it no longer holds are sent.
    fn qos2_inbound_recorded(&mut self, sid: SessionId, written: bool) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let unwritten = c.unwritten_of(sid);
        let Some(h) = c.owner.held_mut(sid) else {
            return;
        };
        let inbound = h.qos2.inbound_writing.take();
        if let (true, Some(inbound)) = (written, inbound) {
            h.qos2.inbound_recorded = inbound;
        }
        let recorded: &Inbound = &h.qos2.inbound_recorded;
        let mut asked = Vec::new();
        for token in unwritten {
            let Some(w) = c.waiting.get_mut(&token) else {
                continue;
            };
            let due = w.unwritten.is_some()
                && w.recorded_stamp.is_some()
                && recorded.get(&w.packet_id) == w.recorded_stamp.as_ref();
            if let Some(u) = w.unwritten.take_if(|_| due) {
                asked.push(token);
                self.outputs.push_back(Output::ClusterDurable {
                    token,
                    subject: u.subject,
                    msg_id: u.msg_id,
                    payload: u.payload,
                });
            }
        }
        let released: Vec<u16> = h
            .qos2
            .releasing
            .iter()
            .copied()
            .filter(|pid| written && !recorded.contains_key(pid))
            .collect();
        for pid in &released {
            h.qos2.releasing.remove(pid);
        }
        h.qos2.recount();
        for token in asked {
            c.written(sid, token);
        }
        for pid in released {
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            if !session.qos2_in.release(pid) {
                continue;
            }
            self.store.in_qos2(session, pid, false);
            let (conn, version) = (session.conn, session.version);
            if let Some(conn) = conn {
                let comp = Packet::PubComp(Ack::new(pid, reason::SUCCESS));
                self.send(conn, version, &comp);
            }
        }
    }

    /// A delivery of a stream message to `sid`, unless the session had it: one at or below
    /// its cursor, a finished one, or one in the window it resumed with is not delivered
    /// again, and a resumed PUBLISH stage entry takes the message it waited for (and is
    /// resent).
    pub(super) fn qos2_unless_had(&mut self, sid: SessionId, d: Delivery) -> Option<Delivery> {
        let seq = d.msg.durable.stream_seq();
        if seq == 0 {
            return Some(d);
        }
        let Some(h) = self.held_mut(sid) else {
            return Some(d);
        };
        // At or below the cursor: delivered already (here, or where the session was; a
        // node's feed may lag the cursor the session came with).
        if h.qos2.done.contains(&seq) || h.cursor.is_some_and(|c| seq <= c) {
            return None;
        }
        let Some(&(pid, stage)) = h.qos2.resumed.get(&seq) else {
            return Some(d);
        };
        if stage == OutStage::Published {
            h.qos2.resumed.remove(&seq);
            h.qos2.recount();
            if let Some(f) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.inflight.get_mut(pid))
                && f.item.msg.durable.stream_seq() == seq
                && stands_in(&f.item)
            {
                let mut d = d;
                d.qos = QoS::ExactlyOnce;
                f.item = d;
            }
            self.pump(sid);
        }
        None
    }

    /// Entries `sid` resumed with whose message the stream no longer brings (it was read past
    /// `upto`: expired, gone from the stream, or no longer subscribed to) go on to PUBREL: a
    /// client that has the message finishes its flow, one that has not answers PUBCOMP all
    /// the same; the id is free only then.
    pub(super) fn qos2_give_up(&mut self, sid: SessionId, upto: u64) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let lost: Vec<(u16, u64)> = session
            .inflight
            .iter()
            .filter(|(_, f)| f.stage == OutStage::Published && stands_in(&f.item))
            .map(|(pid, f)| (pid, f.item.msg.durable.stream_seq()))
            .filter(|(_, seq)| *seq <= upto)
            .collect();
        if lost.is_empty() {
            return;
        }
        for (pid, _) in &lost {
            session.inflight.release(*pid);
        }
        if let Some(h) = self.held_mut(sid) {
            for (_, seq) in &lost {
                h.qos2.resumed.remove(seq);
            }
        }
        for (pid, _) in lost {
            self.qos2_owe(sid, pid);
        }
        self.pump(sid);
    }
}

/// Whether `d` stands in for a message the stream has not brought back yet (no real message
/// has an empty topic).
fn stands_in(d: &Delivery) -> bool {
    d.msg.topic.is_empty() && d.msg.durable.stream_seq() != 0
}

/// The window a session resumes with from a record: each entry in flight again under its
/// packet id, standing for its message until the stream brings it (a released one needs
/// none).
pub(super) fn resume_window(
    s: &mut Session,
    qos2: &Qos2Record,
    mut message_id: impl FnMut() -> u64,
    now: crate::api::Instant,
    ledger: &Ledger,
) {
    // Ids the client sent and has not released: a PUBLISH again with one is not new.
    s.qos2_in = InboundQos2::restored(qos2.inbound.keys().copied());
    // In the order they were sent, as near as the record tells: the stream's.
    let mut entries: Vec<(u64, u16, bool)> = qos2
        .window
        .iter()
        .map(|(&pid, &(seq, released))| (seq, pid, released))
        .collect();
    entries.sort_unstable();
    for (seq, pid, released) in entries {
        let content = Content {
            topic: String::new(),
            payload: bytes::Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
        };
        let msg = Message::new(message_id(), content, Origin::Cluster, None, now, ledger);
        msg.durable.set_stream_seq(seq);
        let d = Delivery::new(Arc::new(msg), QoS::ExactlyOnce, false, Vec::new(), 0);
        s.inflight.push(pid, d);
        if released {
            s.inflight.release(pid);
        }
    }
    s.inflight.mark_all_unsent();
}
