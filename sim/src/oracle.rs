//! What every checker shares: the violation it reports, and oracles independent of the
//! broker's own code (a naive topic matcher, the shared-subscription syntax).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant broken; `K<n>` marks a known core bug (see [`Violation::known`]).
    pub invariant: &'static str,
    pub at: u64,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: &'static str, at: u64, detail: String) -> Self {
        Self {
            invariant,
            at,
            detail,
        }
    }

    /// A manifestation of a known, reported core bug: listed, but not a failure of the
    /// sweep until the core is fixed (`persistence_regressions` in `tests/sweep.rs` holds
    /// seeds that show each one).
    /// - K1: with persistence, a takeover's DISCONNECT 0x8E is held behind the store with
    ///   the rest of the input's output and dropped when the old connection closes.
    /// - K2: with persistence, a QoS 2 message queued in memory (for a session whose
    ///   window was full) is sent by a later input before the input that accepted it (the
    ///   publisher's QoS 2 id, the message) is durable.
    pub fn known(&self) -> bool {
        self.invariant.starts_with('K')
    }
}

/// A naive topic matcher, independent of the broker's trie: the oracle.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    let mut i = 0;
    loop {
        match (f.get(i), t.get(i)) {
            (Some(&"#"), _) => return i + 1 == f.len(),
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

/// `$share/<group>/<filter>` split into group and filter.
pub fn split_share(raw: &str) -> (Option<&str>, &str) {
    if let Some(rest) = raw.strip_prefix("$share/")
        && let Some((group, filter)) = rest.split_once('/')
    {
        return (Some(group), filter);
    }
    (None, raw)
}
