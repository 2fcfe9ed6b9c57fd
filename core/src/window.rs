//! What MQTT keeps for a session on either side of a link: the outbound QoS 1/2 messages in
//! flight (packet ids, send order, how far each QoS 2 flow got) and the inbound QoS 2 ids not
//! yet released. Sessions (the broker towards its clients) and bridges (the broker as a client
//! of a remote) use the same two types.

use std::collections::BTreeMap;

/// How far an outbound QoS 1/2 flow got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutStage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
pub(crate) struct Inflight<T> {
    pub item: T,
    pub stage: OutStage,
    /// Sent on the current connection; cleared on reconnect until it is resent.
    sent: bool,
    /// Send order, for resending in order.
    seq: u64,
}

impl<T> Inflight<T> {
    /// Sent on the current connection (or, waiting for something, its turn taken).
    pub fn sent(&self) -> bool {
        self.sent
    }
}

/// Outbound messages in flight at one peer, by packet id, in send order.
#[derive(Debug)]
pub(crate) struct OutWindow<T> {
    inflight: BTreeMap<u16, Inflight<T>>,
    /// Send order of `inflight` keys.
    order: BTreeMap<u64, u16>,
    next_seq: u64,
    /// Entries not yet resent on the current connection.
    unsent: usize,
    next_packet_id: u16,
}

impl<T> Default for OutWindow<T> {
    fn default() -> Self {
        OutWindow {
            inflight: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            unsent: 0,
            next_packet_id: 1,
        }
    }
}

impl<T> OutWindow<T> {
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn contains(&self, id: u16) -> bool {
        self.inflight.contains_key(&id)
    }

    pub fn get(&self, id: u16) -> Option<&Inflight<T>> {
        self.inflight.get(&id)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut Inflight<T>> {
        self.inflight.get_mut(&id)
    }

    /// A free packet id, never `reserved` (an id the peer holds for something else, such as
    /// a SUBSCRIBE), or `None` when every id is taken.
    pub fn allocate_packet_id(&mut self, reserved: Option<u16>) -> Option<u16> {
        let usable = usize::from(u16::MAX) - usize::from(reserved.is_some());
        if self.inflight.len() >= usable {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if id != 0 && Some(id) != reserved && !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// A message just sent with packet id `id`.
    pub fn push(&mut self, id: u16, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Inflight {
            item,
            stage: OutStage::Published,
            sent: true,
            seq,
        };
        if let Some(old) = self.inflight.insert(id, entry) {
            self.order.remove(&old.seq);
            if !old.sent {
                self.unsent -= 1;
            }
        }
        self.order.insert(seq, id);
    }

    pub fn remove(&mut self, id: u16) -> Option<Inflight<T>> {
        let removed = self.inflight.remove(&id)?;
        self.order.remove(&removed.seq);
        if !removed.sent {
            self.unsent -= 1;
        }
        Some(removed)
    }

    /// PUBREC came for `id`: PUBREL goes out now.
    pub fn release(&mut self, id: u16) {
        if let Some(f) = self.inflight.get_mut(&id) {
            f.stage = OutStage::Released;
        }
        self.mark_sent(id);
    }

    /// A new connection: everything in flight is to be resent.
    pub fn mark_all_unsent(&mut self) {
        for f in self.inflight.values_mut() {
            f.sent = false;
        }
        self.unsent = self.inflight.len();
    }

    /// `id` went out (again) on the current connection.
    pub fn mark_sent(&mut self, id: u16) {
        if let Some(f) = self.inflight.get_mut(&id)
            && !f.sent
        {
            f.sent = true;
            self.unsent -= 1;
        }
    }

    /// The oldest message in flight not yet resent on the current connection.
    pub fn next_resend(&self) -> Option<u16> {
        // O(1) in the steady state: only a resumed session has anything to resend.
        if self.unsent == 0 {
            return None;
        }
        self.order
            .values()
            .copied()
            .find(|id| self.inflight.get(id).is_some_and(|f| !f.sent))
    }

    /// Messages in flight on the current connection: what counts against its window.
    pub fn sent_count(&self) -> usize {
        self.inflight.len() - self.unsent
    }

    /// Whether everything in flight went out on the current connection.
    pub fn all_sent(&self) -> bool {
        self.unsent == 0
    }

    /// Everything in flight, by packet id.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Inflight<T>)> {
        self.inflight.iter().map(|(id, f)| (*id, f))
    }

    /// Packet ids in send order.
    pub fn ids_in_order(&self) -> Vec<u16> {
        self.order.values().copied().collect()
    }

    /// Everything in flight, in send order, and the window emptied (the peer lost its
    /// session: these go out again as new messages).
    pub fn take_all(&mut self) -> Vec<T> {
        let ids = self.ids_in_order();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(f) = self.remove(id) {
                out.push(f.item);
            }
        }
        out
    }
}

/// Inbound QoS 2 packet ids received and not yet released (PUBREL). A resend of one is
/// acknowledged, never delivered again. Those received on the current connection count
/// against the Receive Maximum we announced, which does not carry over to the next
/// connection (v5 §4.9).
#[derive(Debug, Default, Clone)]
pub(crate) struct InboundQos2 {
    /// id -> received on the current connection.
    ids: BTreeMap<u16, bool>,
    this_connection: usize,
}

impl InboundQos2 {
    /// Ids held, from this connection and earlier ones.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn contains(&self, id: u16) -> bool {
        self.ids.contains_key(&id)
    }

    /// Ids received on the current connection and not released.
    pub fn this_connection(&self) -> usize {
        self.this_connection
    }

    /// A new id, received on the current connection.
    pub fn accept(&mut self, id: u16) {
        if self.ids.insert(id, true) != Some(true) {
            self.this_connection += 1;
        }
    }

    /// A known id came again on the current connection.
    pub fn seen_again(&mut self, id: u16) {
        if let Some(here) = self.ids.get_mut(&id)
            && !*here
        {
            *here = true;
            self.this_connection += 1;
        }
    }

    /// PUBREL: forgets the id; false when it was not known.
    pub fn release(&mut self, id: u16) -> bool {
        match self.ids.remove(&id) {
            Some(here) => {
                if here {
                    self.this_connection -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// A new connection: nothing counts against it yet.
    pub fn new_connection(&mut self) {
        for here in self.ids.values_mut() {
            *here = false;
        }
        self.this_connection = 0;
    }

    /// The peer lost its session: every id is forgotten.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.this_connection = 0;
    }

    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids.keys().copied()
    }

    /// Ids recovered from the store, none of them on a connection.
    pub fn restored(ids: impl IntoIterator<Item = u16>) -> InboundQos2 {
        InboundQos2 {
            ids: ids.into_iter().map(|id| (id, false)).collect(),
            this_connection: 0,
        }
    }
}
