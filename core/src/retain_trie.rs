//! Retained messages keyed by topic levels: stored, replaced, removed, and walked by a
//! filter in topic order, whole or in steps of bounded work.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::topic::join;

/// Retained messages keyed by topic levels, matched by filters.
#[derive(Debug, Clone)]
pub struct RetainTrie<V> {
    root: RetainNode<V>,
    len: usize,
}

#[derive(Debug, Clone)]
struct RetainNode<V> {
    children: BTreeMap<String, RetainNode<V>>,
    value: Option<V>,
}

impl<V> Default for RetainNode<V> {
    fn default() -> Self {
        RetainNode {
            children: BTreeMap::new(),
            value: None,
        }
    }
}

impl<V> Default for RetainTrie<V> {
    fn default() -> Self {
        RetainTrie {
            root: RetainNode::default(),
            len: 0,
        }
    }
}

impl<V> RetainTrie<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` for `topic`, returning the one it replaced.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.to_owned()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Removes the value at `topic`, pruning empty nodes.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        let old = retain_remove(&mut self.root, &levels);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Calls `f` on every value, without building topic names.
    pub fn for_each_value(&self, mut f: impl FnMut(&V)) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(v) = &node.value {
                f(v);
            }
            stack.extend(node.children.values());
        }
    }

    /// Every (topic, value), `$` topics included, in topic order.
    pub fn all(&self) -> Vec<(String, &V)> {
        let mut out = Vec::new();
        let mut stack: Vec<(&RetainNode<V>, Option<String>)> = vec![(&self.root, None)];
        while let Some((node, path)) = stack.pop() {
            if let (Some(p), Some(v)) = (&path, &node.value) {
                out.push((p.clone(), v));
            }
            for (name, child) in node.children.iter().rev() {
                let p = match &path {
                    None => name.clone(),
                    Some(p) => join(p, name),
                };
                stack.push((child, Some(p)));
            }
        }
        out
    }

    /// Every (topic, value) matched by `filter`, in topic order.
    pub fn matching(&self, filter: &str) -> Vec<(String, &V)> {
        let mut out = Vec::new();
        self.walk_matching(filter, &[], &mut { usize::MAX }, |topic, v| {
            out.push((topic.to_owned(), v));
            true
        });
        out
    }

    /// Calls `f` on the values `filter` matches, in topic order (level by level), from the
    /// topic whose levels are `from` (inclusive; empty: from the start), visiting at most
    /// `visits` nodes (what is left of it stays there). `f` returns false to stop before
    /// taking the value it was shown.
    /// Returns where to go on from (`None`: finished), so a long walk can be done in steps
    /// of bounded work with the trie changing between them.
    pub fn walk_matching<'t>(
        &'t self,
        filter: &str,
        from: &[String],
        visits: &mut usize,
        mut f: impl FnMut(&str, &'t V) -> bool,
    ) -> Option<Vec<String>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut walk = RetainWalk {
            filter: &levels,
            path: Vec::new(),
            visits: *visits,
            stopped_at: None,
            f: &mut f,
        };
        walk.node(&self.root, Mode::Filter(0), Some(from));
        *visits = walk.visits;
        walk.stopped_at
    }
}

/// What a node on a retained walk is matched against: the filter from a level on, or
/// everything (below a `#`).
#[derive(Clone, Copy)]
enum Mode {
    Filter(usize),
    All,
}

struct RetainWalk<'a, 'f, V> {
    filter: &'f [&'f str],
    path: Vec<&'a str>,
    visits: usize,
    stopped_at: Option<Vec<String>>,
    f: &'f mut dyn FnMut(&str, &'a V) -> bool,
}

impl<'a, V> RetainWalk<'a, '_, V> {
    /// Walks `node` (at `self.path`); `from` is what is left of the starting point below it
    /// (`None`: the whole subtree is after it). False once stopped.
    fn node(&mut self, node: &'a RetainNode<V>, mode: Mode, from: Option<&[String]>) -> bool {
        let depth = self.path.len();
        let own_pending = from.is_none_or(|f| f.is_empty());
        // Going back down to the starting point is not counted: stopping there would lose it.
        if depth > 0 && own_pending {
            if self.visits == 0 {
                return self.stop();
            }
            self.visits -= 1;
        }
        let matched = match mode {
            Mode::All => true,
            Mode::Filter(d) => {
                d == self.filter.len() || (d > 0 && self.filter.get(d) == Some(&"#"))
            }
        };
        if own_pending
            && matched
            && let Some(v) = &node.value
            && !(self.f)(&self.path.join("/"), v)
        {
            return self.stop();
        }
        let (child_mode, only) = match mode {
            Mode::All => (Mode::All, None),
            Mode::Filter(d) => match self.filter.get(d) {
                None => return true,
                Some(&"#") => (Mode::All, None),
                Some(&"+") => (Mode::Filter(d + 1), None),
                Some(level) => (Mode::Filter(d + 1), Some(*level)),
            },
        };
        let below = from.and_then(|f| f.split_first());
        let start = match (only, below) {
            (Some(level), Some((first, _))) if level < first.as_str() => return true,
            (Some(level), _) => Bound::Included(level),
            (None, Some((first, _))) => Bound::Included(first.as_str()),
            (None, None) => Bound::Unbounded,
        };
        let end = only.map_or(Bound::Unbounded, Bound::Included);
        for (name, child) in node.children.range::<str, _>((start, end)) {
            // `#` and `+` at the first level do not match `$` topics.
            if depth == 0 && only.is_none() && name.starts_with('$') {
                continue;
            }
            let from_child = match below {
                Some((first, rest)) if first == name => Some(rest),
                _ => None,
            };
            self.path.push(name);
            let go_on = self.node(child, child_mode, from_child);
            self.path.pop();
            if !go_on {
                return false;
            }
        }
        true
    }

    fn stop(&mut self) -> bool {
        self.stopped_at = Some(self.path.iter().map(|l| (*l).to_owned()).collect());
        false
    }
}

fn retain_remove<V>(node: &mut RetainNode<V>, levels: &[&str]) -> Option<V> {
    let Some((first, rest)) = levels.split_first() else {
        return node.value.take();
    };
    let child = node.children.get_mut(*first)?;
    let old = retain_remove(child, rest);
    if child.value.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    old
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    #[test]
    fn retain_trie_matches_like_the_reference() {
        let topics = ["a", "a/b", "a/b/c", "b", "$SYS/x", "/", "/x", "a/"];
        let filters = [
            "#", "+", "a/#", "a/+", "+/+", "$SYS/#", "/+", "a/b", "+/#", "+/b/+",
        ];
        let mut trie = RetainTrie::default();
        for t in topics {
            trie.insert(t, t.to_owned());
        }
        assert_eq!(trie.len(), topics.len());
        for f in filters {
            let mut got: Vec<String> = trie
                .matching(f)
                .into_iter()
                .map(|(t, v)| {
                    assert_eq!(&t, v);
                    t
                })
                .collect();
            got.sort();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
        assert_eq!(trie.remove("a/b").as_deref(), Some("a/b"));
        assert_eq!(trie.get("a/b/c").map(String::as_str), Some("a/b/c"));
        assert_eq!(trie.len(), topics.len() - 1);
    }

    /// A walk in steps of any size, with the trie changing between steps, sees every value
    /// that was there throughout exactly once, in topic order, and nothing twice.
    #[test]
    fn retain_walk_in_steps_sees_what_a_whole_walk_sees() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["a", "b", "", "$x", "c"];
        let filters = [
            "#", "+", "a/#", "+/+", "+/#", "a/+/c", "$x/#", "b", "+/b/#", "/+",
        ];
        for round in 0..300 {
            let mut trie = RetainTrie::default();
            let mut topics = Vec::new();
            for _ in 0..next(40) {
                let depth = 1 + next(4);
                let t: Vec<&str> = (0..depth).map(|_| names[next(5) as usize]).collect();
                let t = t.join("/");
                trie.insert(&t, t.clone());
                topics.push(t);
            }
            let filter = filters[round % filters.len()];
            let whole: Vec<String> = trie.matching(filter).into_iter().map(|(t, _)| t).collect();
            let mut sorted = whole.clone();
            sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
            assert_eq!(whole, sorted, "topic order for {filter}");
            let mut stepped = Vec::new();
            let mut from: Vec<String> = Vec::new();
            let mut added = Vec::new();
            loop {
                let step = 1 + next(6) as usize;
                let mut took = 0;
                let take_max = next(4);
                let stopped = trie.walk_matching(filter, &from, &mut { step }, |t, _| {
                    if took >= take_max {
                        return false;
                    }
                    took += 1;
                    stepped.push(t.to_owned());
                    true
                });
                match stopped {
                    None => break,
                    Some(at) => from = at,
                }
                // Topics added between steps may or may not be seen; none is seen twice.
                let t = format!("{}/new{}", names[next(5) as usize], next(1000));
                trie.insert(&t, t.clone());
                added.push(t);
            }
            let mut seen = std::collections::BTreeSet::new();
            for t in &stepped {
                assert!(seen.insert(t.clone()), "{t} seen twice for {filter}");
            }
            let mut old: Vec<&String> = stepped.iter().filter(|t| !added.contains(t)).collect();
            old.dedup();
            assert_eq!(
                old.into_iter().cloned().collect::<Vec<_>>(),
                whole,
                "stepped walk of {filter}"
            );
        }
    }
}
