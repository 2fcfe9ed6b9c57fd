//! Topic aliases the broker sets towards a client (MQTT 5 §3.3.2.3.4): the first PUBLISH on
//! a topic carries the topic and an alias, later ones only the alias. Off unless
//! `mqtt.max_topic_alias_out` is set; never more aliases than the client's Topic Alias
//! Maximum. The table is bounded by entries and bytes; the least recently used entry makes
//! room, its alias number mapped to the new topic.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Topic bytes one connection's table may hold.
pub const TABLE_BYTES: usize = 16 * 1024;
/// What an entry costs beyond its topic (three map entries), for accounting.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug)]
pub struct OutAliases {
    capacity: u16,
    /// Topic -> (alias, last use).
    by_topic: BTreeMap<Arc<str>, (u16, u64)>,
    /// Alias -> topic (the same allocation as the key above).
    by_alias: BTreeMap<u16, Arc<str>>,
    /// Last use -> alias: the replacement order. A hit moves an entry without allocating.
    by_use: BTreeMap<u64, u16>,
    bytes: usize,
    tick: u64,
    next: u16,
}

impl OutAliases {
    /// A table of at most `capacity` aliases (1..=capacity); `None` when aliases are off.
    pub fn new(capacity: u16) -> Option<Box<OutAliases>> {
        (capacity > 0).then(|| {
            Box::new(OutAliases {
                capacity,
                by_topic: BTreeMap::new(),
                by_alias: BTreeMap::new(),
                by_use: BTreeMap::new(),
                bytes: 0,
                tick: 0,
                next: 1,
            })
        })
    }

    /// The alias to send `topic` under, and whether the topic must go with it (the alias is
    /// new or was mapped to another topic). `None`: send the topic alone (too long for the
    /// table).
    pub fn alias_for(&mut self, topic: &str) -> Option<(u16, bool)> {
        if topic.is_empty() || topic.len() + ENTRY_OVERHEAD > TABLE_BYTES / 4 {
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some((alias, used)) = self.by_topic.get_mut(topic) {
            let alias = *alias;
            self.by_use.remove(used);
            *used = tick;
            self.by_use.insert(tick, alias);
            return Some((alias, false));
        }
        let cost = topic.len() + ENTRY_OVERHEAD;
        let mut alias = None;
        if self.next <= self.capacity {
            alias = Some(self.next);
            self.next += 1;
        }
        // Room by count (no fresh number) and by bytes: the least recently used goes.
        while alias.is_none() || self.bytes + cost > TABLE_BYTES {
            let Some(freed) = self.evict_oldest() else {
                break;
            };
            alias = alias.or(Some(freed));
        }
        let alias = alias?;
        let topic: Arc<str> = Arc::from(topic);
        self.by_topic.insert(topic.clone(), (alias, tick));
        self.by_alias.insert(alias, topic);
        self.by_use.insert(tick, alias);
        self.bytes += cost;
        Some((alias, true))
    }

    fn evict_oldest(&mut self) -> Option<u16> {
        let (_, alias) = self.by_use.pop_first()?;
        let topic = self.by_alias.remove(&alias)?;
        self.by_topic.remove(&topic);
        self.bytes = self.bytes.saturating_sub(topic.len() + ENTRY_OVERHEAD);
        Some(alias)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn first_use_sends_the_topic_then_only_the_alias() {
        let mut t = OutAliases::new(2).unwrap();
        assert_eq!(t.alias_for("a/b"), Some((1, true)));
        assert_eq!(t.alias_for("a/b"), Some((1, false)));
        assert_eq!(t.alias_for("c"), Some((2, true)));
        // Full: the least recently used ("a/b" was used before "c") gives up its number.
        assert_eq!(t.alias_for("c"), Some((2, false)));
        assert_eq!(t.alias_for("d"), Some((1, true)));
        assert_eq!(t.alias_for("a/b"), Some((2, true)));
        assert!(OutAliases::new(0).is_none());
    }

    #[test]
    fn the_table_stays_within_its_bytes() {
        let mut t = OutAliases::new(u16::MAX).unwrap();
        let long = "x".repeat(3000);
        for i in 0..100 {
            let topic = format!("{long}/{i}");
            assert!(t.alias_for(&topic).is_some());
            assert!(t.bytes <= TABLE_BYTES);
        }
        assert!(t.alias_for(&"y".repeat(TABLE_BYTES)).is_none());
        assert!(t.alias_for("").is_none());
    }
}
