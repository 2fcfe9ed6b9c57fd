//! Topic names, topic filters, shared-subscription parsing, and the two tries that match them:
//! subscriptions (filters, matched by a topic) and retained messages (topics, matched by a
//! filter). Both use ordered maps, so every walk visits nodes in the same order, and both
//! walk with explicit stacks, so deep topics cannot exhaust the call stack.

use std::cell::Cell;
use std::collections::BTreeMap;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    Wildcard,
    BadWildcard,
    TooManyLevels,
    BadShare,
}

/// A topic name a client may publish to: not empty, no wildcards, at most `max_levels` levels.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    // One pass over the bytes: '+', '#' and '/' are ASCII, so never inside a UTF-8 sequence.
    let mut levels = 1usize;
    for b in topic.bytes() {
        match b {
            b'+' | b'#' => return Err(TopicError::Wildcard),
            b'/' => levels += 1,
            _ => {}
        }
    }
    if levels > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// A topic filter: `+` and `#` only as whole levels, `#` last.
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    let mut count = 0;
    while let Some(level) = levels.next() {
        count += 1;
        if count > max_levels {
            return Err(TopicError::TooManyLevels);
        }
        match level {
            "+" => {}
            "#" if levels.peek().is_none() => {}
            _ if level.contains(['+', '#']) => return Err(TopicError::BadWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A subscription filter as the client wrote it, split into its share group (if any) and the
/// filter that is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and validates `$share/{group}/{filter}` or a plain filter.
pub fn parse_subscription(raw: &str, max_levels: usize) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter, max_levels)?;
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    if raw == "$share" || raw.starts_with("$share/") {
        return Err(TopicError::BadShare);
    }
    validate_filter(raw, max_levels)?;
    Ok(ParsedFilter {
        share_group: None,
        filter: raw,
    })
}

/// The reference matcher: does `filter` match `topic`? Kept simple on purpose; the tries are
/// checked against it.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The members of one share group on one filter; each message goes to one of them.
#[derive(Debug, Clone)]
pub struct SharedGroup<K, V> {
    pub members: BTreeMap<K, V>,
    /// Round-robin position; a `Cell` so matching can stay a shared borrow.
    cursor: Cell<u64>,
}

impl<K, V> Default for SharedGroup<K, V> {
    fn default() -> Self {
        SharedGroup {
            members: BTreeMap::new(),
            cursor: Cell::new(0),
        }
    }
}

impl<K, V> SharedGroup<K, V> {
    /// The next round-robin position, advancing it.
    pub fn advance(&self) -> u64 {
        let c = self.cursor.get();
        self.cursor.set(c.wrapping_add(1));
        c
    }
}

/// One node of the subscription trie. The wildcard levels have their own slots, so matching
/// a topic costs one map lookup per level.
#[derive(Debug, Clone)]
struct SubNode<K, V> {
    children: BTreeMap<String, SubNode<K, V>>,
    plus: Option<Box<SubNode<K, V>>>,
    hash: Option<Box<SubNode<K, V>>>,
    subscribers: BTreeMap<K, V>,
    /// share group name -> members.
    shared: BTreeMap<String, SharedGroup<K, V>>,
}

impl<K, V> Default for SubNode<K, V> {
    fn default() -> Self {
        SubNode {
            children: BTreeMap::new(),
            plus: None,
            hash: None,
            subscribers: BTreeMap::new(),
            shared: BTreeMap::new(),
        }
    }
}

impl<K, V> SubNode<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.shared.is_empty()
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut SubNode<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_default(&mut self, level: &str) -> &mut SubNode<K, V> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.entry(level.to_owned()).or_default(),
        }
    }

    fn child(&self, level: &str) -> Option<&SubNode<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    /// Children in level order, wildcards included.
    fn sorted_children(&self) -> Vec<(&str, &SubNode<K, V>)> {
        let mut all: Vec<(&str, &SubNode<K, V>)> =
            self.children.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if let Some(n) = &self.plus {
            all.push(("+", n));
        }
        if let Some(n) = &self.hash {
            all.push(("#", n));
        }
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// A match found for a topic.
#[derive(Debug)]
pub enum SubMatch<'a, K, V> {
    /// An ordinary subscription.
    Single(&'a K, &'a V),
    /// A shared subscription group: one member gets the message.
    Shared(&'a SharedGroup<K, V>),
}

/// Subscriptions, keyed by filter levels. `K` names a subscriber, `V` is what it asked for.
#[derive(Debug, Clone)]
pub struct SubscriptionTrie<K, V> {
    root: SubNode<K, V>,
    len: usize,
}

impl<K: Ord + Clone, V: Clone> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie {
            root: SubNode::default(),
            len: 0,
        }
    }
}

impl<K: Ord + Clone, V: Clone> SubscriptionTrie<K, V> {
    /// Number of (subscriber, filter) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces a subscription; returns true when it is new.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_default(level);
        }
        let slot = match group {
            Some(g) => &mut node.shared.entry(g.to_owned()).or_default().members,
            None => &mut node.subscribers,
        };
        let new = slot.insert(key, value).is_none();
        if new {
            self.len += 1;
        }
        new
    }

    /// Removes a subscription; returns true when it existed. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: &K) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// The share group `group` on exactly `filter`, if it has members.
    pub fn shared_group(&self, filter: &str, group: &str) -> Option<&SharedGroup<K, V>> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.child(level)?;
        }
        node.shared.get(group)
    }

    /// Every subscription whose filter matches `topic`, appended to `out` in a deterministic
    /// order.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<SubMatch<'a, K, V>>) {
        let dollar = topic.starts_with('$');
        // Topics have few levels: re-splitting to reach a depth is cheap and allocation-free.
        let mut pending: Vec<(&SubNode<K, V>, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = pending.pop() {
            let wildcards_allowed = !(depth == 0 && dollar);
            if wildcards_allowed && let Some(hash) = &node.hash {
                collect(hash, out);
            }
            let Some(level) = topic.split('/').nth(depth) else {
                collect(node, out);
                continue;
            };
            if wildcards_allowed && let Some(plus) = &node.plus {
                pending.push((plus, depth + 1));
            }
            if let Some(child) = node.children.get(level) {
                pending.push((child, depth + 1));
            }
        }
    }
}

/// One node of the subscription tree as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode<'a, K> {
    pub level: &'a str,
    pub children: usize,
    /// Subscribers at this node (ordinary and shared).
    pub subscribers: Vec<&'a K>,
}

impl<K: Ord + Clone, V: Clone> SubscriptionTrie<K, V> {
    /// The tree breadth first: level 0 is the root, then each depth in order. Bounded by
    /// the number of nodes, which subscriptions bound.
    pub fn levels(&self) -> Vec<Vec<TreeNode<'_, K>>> {
        let mut levels = Vec::new();
        let mut current: Vec<(&str, &SubNode<K, V>)> = vec![("", &self.root)];
        while !current.is_empty() {
            let mut next = Vec::new();
            let mut level = Vec::new();
            for (name, node) in current {
                let mut subscribers: Vec<&K> = node.subscribers.keys().collect();
                for group in node.shared.values() {
                    subscribers.extend(group.members.keys());
                }
                level.push(TreeNode {
                    level: name,
                    children: node.child_count(),
                    subscribers,
                });
                next.extend(node.sorted_children());
            }
            levels.push(level);
            current = next;
        }
        levels
    }
}

pub(crate) fn join(path: &str, level: &str) -> String {
    let mut s = String::with_capacity(path.len() + 1 + level.len());
    s.push_str(path);
    s.push('/');
    s.push_str(level);
    s
}

fn collect<'a, K, V>(node: &'a SubNode<K, V>, out: &mut Vec<SubMatch<'a, K, V>>) {
    for (k, v) in &node.subscribers {
        out.push(SubMatch::Single(k, v));
    }
    for group in node.shared.values() {
        out.push(SubMatch::Shared(group));
    }
}

fn remove_at<K: Ord, V>(
    node: &mut SubNode<K, V>,
    levels: &[&str],
    group: Option<&str>,
    key: &K,
) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            Some(g) => {
                let Some(group) = node.shared.get_mut(g) else {
                    return false;
                };
                let removed = group.members.remove(key).is_some();
                if group.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
            None => node.subscribers.remove(key).is_some(),
        };
    };
    let Some(child) = node.child_mut(first) else {
        return false;
    };
    let removed = remove_at(child, rest, group, key);
    if child.is_empty() {
        node.remove_child(first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_matcher_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn filters_with_misplaced_wildcards_are_invalid() {
        for bad in ["a/#/b", "a/b#", "a+", "+a", "#/", "", "a/+b"] {
            assert!(validate_filter(bad, 16).is_err(), "{bad}");
        }
        for good in ["#", "+", "a/+/b", "a/#", "/", "+/+/#", "a//b"] {
            assert!(validate_filter(good, 16).is_ok(), "{good}");
        }
        assert_eq!(validate_filter("a/b/c", 2), Err(TopicError::TooManyLevels));
    }

    #[test]
    fn share_syntax_is_checked() {
        let p = parse_subscription("$share/g/a/+", 16).unwrap();
        assert_eq!(p.share_group, Some("g"));
        assert_eq!(p.filter, "a/+");
        for bad in [
            "$share/ab",
            "$share//t",
            "$share/a+b/t",
            "$share/a/",
            "$share",
        ] {
            assert!(parse_subscription(bad, 16).is_err(), "{bad}");
        }
    }

    #[test]
    fn subscription_trie_agrees_with_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "a/b", "+/b", "+/+", "a/b/c", "$SYS/#", "$SYS/+", "/",
            "/+", "+/#",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "b", "$SYS/x", "$SYS", "/", "/x", "a/", "x/b",
        ];
        let mut trie = SubscriptionTrie::default();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, None, i, ());
        }
        for t in topics {
            let mut found = Vec::new();
            trie.matches(t, &mut found);
            let mut got: Vec<usize> = found
                .into_iter()
                .filter_map(|m| match m {
                    SubMatch::Single(k, _) => Some(*k),
                    SubMatch::Shared(_) => None,
                })
                .collect();
            got.sort();
            let want: Vec<usize> = (0..filters.len())
                .filter(|i| matches(filters[*i], t))
                .collect();
            assert_eq!(got, want, "topic {t}");
        }
    }

    #[test]
    fn removing_subscriptions_prunes_the_trie() {
        let mut trie = SubscriptionTrie::default();
        assert!(trie.insert("a/b/c", None, 1, ()));
        assert!(!trie.insert("a/b/c", None, 1, ()));
        assert!(trie.insert("a/b/c", Some("g"), 1, ()));
        assert_eq!(trie.len(), 2);
        assert!(trie.remove("a/b/c", None, &1));
        assert!(!trie.remove("a/b/c", None, &1));
        assert!(trie.remove("a/b/c", Some("g"), &1));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }
}
