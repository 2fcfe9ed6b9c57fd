//! Topic validation and the subscription trie, cross-checked against the reference matcher.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemq_core::topic::{
    SubMatch, SubscriptionTrie, matches, parse_subscription, validate_filter, validate_topic_name,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines: filters until an empty line, then topics.
    let mut lines = text.split('\n');
    let filters: Vec<&str> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .filter(|f| validate_filter(f, 32).is_ok())
        .collect();
    for f in &filters {
        let _ = parse_subscription(f, 32);
    }
    let mut trie = SubscriptionTrie::default();
    for (i, f) in filters.iter().enumerate() {
        trie.insert(f, None, i, ());
    }
    for topic in lines.filter(|t| validate_topic_name(t, 32).is_ok()) {
        let mut found = Vec::new();
        trie.matches(topic, &mut found);
        let mut got: Vec<usize> = found
            .into_iter()
            .filter_map(|m| match m {
                SubMatch::Single(k, _) => Some(*k),
                SubMatch::Shared(_) => None,
            })
            .collect();
        got.sort_unstable();
        got.dedup();
        let mut want: Vec<usize> = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| matches(f, topic))
            .map(|(i, _)| i)
            .collect();
        // Duplicate filters share one trie entry per key; keys are distinct here.
        want.sort_unstable();
        assert_eq!(got, want, "trie and reference disagree on {topic:?}");
    }
});
