#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The cluster's topic ↔ subject mapping: round trips with every awkward character, every token
//! a valid NATS token, a decoder that refuses what the encoder never writes, and, above all,
//! MQTT matching (`topic::matches`) agreeing with NATS matching of the mapped subjects.

use proptest::prelude::*;
use tidemq_core::cluster::subject::{
    DEFAULT_PREFIX, NatsSubscription, Space, SubjectError, filter_to_subjects, name_key,
    nats_matches, queue_group, subject_len, subject_to_topic, subscription, topic_key,
    topic_to_subject, validate_prefix,
};
use tidemq_core::topic::matches;

const P: &str = DEFAULT_PREFIX;
const MAX: usize = usize::MAX;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_nats_matcher_follows_the_engine_rules() {
    assert!(nats_matches("a.*", "a.b"));
    assert!(!nats_matches("a.*", "a"));
    assert!(!nats_matches("a.*", "a.b.c"));
    assert!(nats_matches("a.>", "a.b.c"));
    assert!(!nats_matches("a.>", "a"));
    assert!(nats_matches("a", "a"));
    assert!(!nats_matches("a.b", "a.c"));
}

/// A valid NATS token: not empty, no `.`, `*`, `>` or white space.
fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && !t
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace())
}

/// Every token of a topic subject: valid for NATS, and only `[A-Za-z0-9_-]` (KV-safe).
fn assert_topic_subject(subject: &str) {
    for t in subject.split('.') {
        assert!(valid_token(t), "token {t:?} of {subject:?}");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "token {t:?} of {subject:?}"
        );
    }
}

/// Every token of a filter subject: a topic token, or a whole-token wildcard (`>` last only).
fn assert_filter_subject(subject: &str) {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            "*" => {}
            ">" => assert_eq!(i + 1, tokens.len(), "`>` not last in {subject:?}"),
            t => assert_topic_subject(t),
        }
    }
}

fn kv_key_ok(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// One character of a topic level: mostly the awkward ones, sometimes any scalar value.
fn level_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            '.', '*', '>', ' ', '\t', '\n', '\r', '$', '_', '-', '=', '%', '\\', 'a', 'b', 'Z',
            '0', '9', 'é', '日', '\u{1F600}', '\u{7f}', '\u{a0}', '\u{2028}', '\u{1}',
        ]),
        1 => any::<char>(),
    ]
    .prop_filter("not a separator, wildcard or U+0000", |c| {
        !matches!(c, '/' | '+' | '#' | '\0')
    })
}

fn level() -> impl Strategy<Value = String> {
    prop::collection::vec(level_char(), 0..6).prop_map(|c| c.into_iter().collect())
}

/// A topic name with every awkward character, empty levels and sometimes a leading `$`.
fn nasty_topic() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(level(), 1..6))
        .prop_map(|(dollar, levels)| {
            let t = levels.join("/");
            if dollar { format!("${t}") } else { t }
        })
        .prop_filter("not empty", |t| !t.is_empty())
}

/// Levels from a small set, so random filters and topics often match, including the strings
/// that look like escapes or wildcards once mapped.
fn small_level() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "b", "", "$", "$x", "a.b", "*", ">", " ", "_", "_2E", "__", "é", "a b",
    ])
    .prop_map(str::to_owned)
}

fn small_topic() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(small_level(), 1..5).prop_filter("not empty", |l| !l.join("/").is_empty())
}

/// A filter derived from `topic` (each level kept, replaced by `+`, or swapped for another,
/// possibly cut and ended with `#`), or an unrelated one.
fn filter_for(topic: Vec<String>) -> impl Strategy<Value = String> {
    let n = topic.len();
    (
        prop::collection::vec((0u8..4, small_level()), n),
        0..=n,
        any::<bool>(),
        prop::collection::vec(small_level(), 0..3),
    )
        .prop_map(move |(choices, cut, hash, extra)| {
            let mut levels: Vec<String> = topic
                .iter()
                .zip(&choices)
                .map(|(l, (c, other))| match c {
                    0 | 1 => l.clone(),
                    2 => "+".to_owned(),
                    _ => other.clone(),
                })
                .collect();
            if hash {
                levels.truncate(cut);
                levels.push("#".to_owned());
            } else {
                levels.extend(extra.into_iter().take(usize::from(cut % 2 == 0)));
            }
            levels.join("/")
        })
        .prop_filter("a valid filter", |f| {
            tidemq_core::topic::validate_filter(f, usize::MAX).is_ok()
        })
}

fn topic_and_filter() -> impl Strategy<Value = (String, String)> {
    small_topic().prop_flat_map(|levels| {
        let topic = levels.join("/");
        (Just(topic), filter_for(levels))
    })
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn mqtt_and_nats_agree(filter: &str, topic: &str) {
    let subject = topic_to_subject(P, Space::Live, topic, MAX).unwrap();
    let subjects = filter_to_subjects(P, Space::Live, filter, MAX).unwrap();
    assert!(!subjects.is_empty() && subjects.len() <= 2);
    let hits = subjects
        .iter()
        .filter(|s| nats_matches(s, &subject))
        .count();
    // At most one subject of a `#` pair matches a topic: NATS delivers once per filter.
    assert!(
        hits <= 1,
        "{filter:?} {topic:?}: {subjects:?} all match {subject:?}"
    );
    assert_eq!(
        matches(filter, topic),
        hits == 1,
        "filter {filter:?} topic {topic:?}: subjects {subjects:?} vs {subject:?}"
    );
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn topics_round_trip_and_every_token_is_valid(topic in nasty_topic()) {
        for space in [Space::Live, Space::Durable] {
            let subject = topic_to_subject(P, space, &topic, MAX).unwrap();
            assert_topic_subject(&subject);
            prop_assert_eq!(subject_to_topic(P, space, &subject).unwrap(), topic.clone());
        }
        let key = topic_key(&topic, MAX).unwrap();
        prop_assert!(kv_key_ok(&key), "{:?}", key);
        prop_assert!(kv_key_ok(&name_key(&topic, MAX).unwrap()));
    }

    #[test]
    fn mqtt_matching_agrees_with_nats_matching((topic, filter) in topic_and_filter()) {
        mqtt_and_nats_agree(&filter, &topic);
    }

    #[test]
    fn nasty_filters_map_to_valid_subjects_and_agree(
        topic in nasty_topic(),
        plus in prop::collection::vec(any::<bool>(), 6),
        cut in 0usize..7,
    ) {
        // A filter from the topic with some levels made `+`, maybe cut and ended with `#`.
        let mut levels: Vec<String> = topic
            .split('/')
            .zip(plus.iter().chain(std::iter::repeat(&false)))
            .map(|(l, p)| if *p { "+".to_owned() } else { l.to_owned() })
            .collect();
        if cut < levels.len() {
            levels.truncate(cut);
            levels.push("#".to_owned());
        }
        let filter = levels.join("/");
        for s in filter_to_subjects(P, Space::Live, &filter, MAX).unwrap() {
            assert_filter_subject(&s);
        }
        mqtt_and_nats_agree(&filter, &topic);
    }

    #[test]
    fn the_decoder_refuses_what_the_encoder_does_not_write(
        tokens in prop::collection::vec("[A-Za-z0-9_$.*> -]{0,6}", 0..5),
        ns in prop::sample::select(vec!["t", "s", "x", ""]),
    ) {
        // Never panics; whatever it accepts encodes back to the very same subject.
        let subject = format!("{P}.m.{ns}.{}", tokens.join("."));
        if let Ok(topic) = subject_to_topic(P, Space::Live, &subject) {
            prop_assert_eq!(topic_to_subject(P, Space::Live, &topic, MAX).unwrap(), subject);
        }
    }

    #[test]
    fn the_decoder_survives_any_text(subject in any::<String>()) {
        if let Ok(topic) = subject_to_topic(P, Space::Durable, &subject) {
            prop_assert_eq!(topic_to_subject(P, Space::Durable, &topic, MAX).unwrap(), subject);
        }
    }

    #[test]
    fn shared_subscriptions_are_queue_groups_named_by_group_and_filter(
        g1 in prop::sample::select(vec!["g", "g_", "_", "g__h", "__", "h", "g h", "g.h"]),
        g2 in prop::sample::select(vec!["g", "g_", "_", "g__h", "__", "h", "g h", "g.h"]),
        (t1, f1) in topic_and_filter(),
        (_t2, f2) in topic_and_filter(),
    ) {
        let s1 = subscription(P, Space::Live, &format!("$share/{g1}/{f1}"), MAX).unwrap();
        let plain = subscription(P, Space::Live, &f1, MAX).unwrap();
        prop_assert_eq!(&plain.queue, &None);
        prop_assert_eq!(&s1.subjects, &plain.subjects);
        let q1 = s1.queue.clone().unwrap();
        prop_assert!(valid_token(&q1), "{:?}", q1);
        // One queue group per (group, filter): NATS merges queue subscribers by name.
        let q2 = queue_group(g2, &f2, MAX).unwrap();
        prop_assert_eq!(q1 == q2, g1 == g2 && f1 == f2, "{:?} {:?}", q1, q2);
        // And the shared subscription matches as its filter does.
        mqtt_and_nats_agree(&f1, &t1);
    }
}

// ---------------------------------------------------------------------------------------------
// Examples: the shapes docs/cluster.md promises
// ---------------------------------------------------------------------------------------------

#[test]
fn examples() {
    let t = |topic: &str| topic_to_subject(P, Space::Live, topic, MAX).unwrap();
    let f = |filter: &str| filter_to_subjects(P, Space::Live, filter, MAX).unwrap();
    assert_eq!(t("a/b"), "tmq.m.t.a.b");
    assert_eq!(t("a.b/ c"), "tmq.m.t.a_2Eb._20c");
    assert_eq!(t("a//b/"), "tmq.m.t.a._.b._");
    assert_eq!(t("$SYS/x"), "tmq.m.s._24SYS.x");
    assert_eq!(t("_/*/>"), "tmq.m.t._5F._2A._3E");
    assert_eq!(t("é"), "tmq.m.t._C3_A9");
    assert_eq!(
        topic_to_subject(P, Space::Durable, "a", MAX).unwrap(),
        "tmq.d.t.a"
    );
    assert_eq!(f("a/+/c"), ["tmq.m.t.a.*.c"]);
    assert_eq!(f("a/#"), ["tmq.m.t.a", "tmq.m.t.a.>"]);
    assert_eq!(f("#"), ["tmq.m.t.>"]);
    assert_eq!(f("+"), ["tmq.m.t.*"]);
    assert_eq!(f("$SYS/#"), ["tmq.m.s._24SYS", "tmq.m.s._24SYS.>"]);
    assert_eq!(
        subscription(P, Space::Live, "$share/g/a/#", MAX).unwrap(),
        NatsSubscription {
            subjects: vec!["tmq.m.t.a".to_owned(), "tmq.m.t.a.>".to_owned()],
            queue: Some("g__a_2F_23".to_owned()),
        }
    );
    assert_eq!(topic_key("a/b", MAX).unwrap(), "t.a.b");
    assert_eq!(topic_key("$SYS/b", MAX).unwrap(), "s._24SYS.b");
    assert_eq!(name_key("client 1", MAX).unwrap(), "client_201");
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    for topic in ["$SYS/x", "$SYS", "$/x", "$x/y/z"] {
        for filter in ["#", "+/x", "+", "+/#", "+/+/z"] {
            assert!(!matches(filter, topic));
            mqtt_and_nats_agree(filter, topic);
        }
    }
    mqtt_and_nats_agree("$SYS/#", "$SYS/x");
    assert!(matches("$SYS/#", "$SYS/x"));
}

#[test]
fn malformed_subjects_are_refused() {
    let d = |s: &str| subject_to_topic(P, Space::Live, s);
    assert_eq!(d("tmq.m.t.a.b").unwrap(), "a/b");
    assert_eq!(d("other.m.t.a"), Err(SubjectError::Foreign));
    assert_eq!(d("tmq.d.t.a"), Err(SubjectError::Foreign));
    assert_eq!(d("tmq.m.x.a"), Err(SubjectError::Foreign));
    assert_eq!(d("tmq.m.t"), Err(SubjectError::Foreign));
    assert_eq!(d("tmq.m.t."), Err(SubjectError::BadToken));
    assert_eq!(d("tmq.m.t.a..b"), Err(SubjectError::BadToken));
    assert_eq!(d("tmq.m.t._"), Err(SubjectError::BadDecoded), "empty topic");
    assert_eq!(
        d("tmq.m.t._2e"),
        Err(SubjectError::BadToken),
        "lower-case hex"
    );
    assert_eq!(
        d("tmq.m.t._41"),
        Err(SubjectError::BadToken),
        "`A` needs no escape"
    );
    assert_eq!(d("tmq.m.t._2"), Err(SubjectError::BadToken));
    assert_eq!(d("tmq.m.t.a_"), Err(SubjectError::BadToken));
    assert_eq!(d("tmq.m.t.a*"), Err(SubjectError::BadToken));
    assert_eq!(d("tmq.m.t.a>"), Err(SubjectError::BadToken));
    assert_eq!(
        d("tmq.m.t._2F"),
        Err(SubjectError::BadDecoded),
        "`/` in a level"
    );
    assert_eq!(d("tmq.m.t._2B"), Err(SubjectError::BadDecoded), "`+`");
    assert_eq!(d("tmq.m.t._23"), Err(SubjectError::BadDecoded), "`#`");
    assert_eq!(d("tmq.m.t._00"), Err(SubjectError::BadDecoded), "U+0000");
    assert_eq!(d("tmq.m.t._FF"), Err(SubjectError::BadDecoded), "not UTF-8");
    assert_eq!(
        d("tmq.m.t._24x"),
        Err(SubjectError::BadDecoded),
        "`$` topic under t"
    );
    assert_eq!(
        d("tmq.m.s.x"),
        Err(SubjectError::BadDecoded),
        "plain topic under s"
    );
}

#[test]
fn bad_input_and_bounds_are_errors() {
    assert_eq!(
        topic_to_subject(P, Space::Live, "", MAX),
        Err(SubjectError::BadTopic)
    );
    assert_eq!(
        topic_to_subject(P, Space::Live, "a/+", MAX),
        Err(SubjectError::BadTopic)
    );
    assert_eq!(
        topic_to_subject(P, Space::Live, "a\0", MAX),
        Err(SubjectError::BadTopic)
    );
    assert_eq!(
        filter_to_subjects(P, Space::Live, "a/#/b", MAX),
        Err(SubjectError::BadFilter)
    );
    assert_eq!(
        filter_to_subjects(P, Space::Live, "a+", MAX),
        Err(SubjectError::BadFilter)
    );
    assert_eq!(
        subscription(P, Space::Live, "$share/g", MAX),
        Err(SubjectError::BadFilter)
    );
    assert_eq!(
        topic_to_subject("Tmq", Space::Live, "a", MAX),
        Err(SubjectError::BadPrefix)
    );
    assert_eq!(validate_prefix(""), Err(SubjectError::BadPrefix));
    assert_eq!(validate_prefix("a.b"), Err(SubjectError::BadPrefix));
    assert_eq!(
        validate_prefix(&"a".repeat(33)),
        Err(SubjectError::BadPrefix)
    );
    assert_eq!(validate_prefix("tmq2"), Ok(()));
    // "tmq.m.t." is 8 bytes; `.` escapes to three.
    assert_eq!(
        topic_to_subject(P, Space::Live, "...", 17).unwrap().len(),
        17
    );
    assert_eq!(
        topic_to_subject(P, Space::Live, "....", 17),
        Err(SubjectError::TooLong)
    );
    assert_eq!(
        filter_to_subjects(P, Space::Live, "ab/#", 11),
        Err(SubjectError::TooLong),
        "the `.>` form is the longer one"
    );
    assert_eq!(queue_group("g", "ab", 4), Err(SubjectError::TooLong));
    // A shared subscription's subject and queue group share one bound: "tmq.m.t.a" (9), a
    // space, "g__a" (4).
    assert!(subscription(P, Space::Live, "$share/g/a", 14).is_ok());
    assert_eq!(
        subscription(P, Space::Live, "$share/g/a", 13),
        Err(SubjectError::TooLong)
    );
    assert!(subscription(P, Space::Live, "a", 9).is_ok());
    assert_eq!(topic_key("a", 1), Err(SubjectError::TooLong));
    assert_eq!(name_key("a b", 4), Err(SubjectError::TooLong));
}

proptest! {
    #![proptest_config(config(20_000))]

    /// The length the publish path checks is the length of the subject it sends.
    #[test]
    fn subject_len_is_the_written_length(topic in nasty_topic()) {
        let written = topic_to_subject(P, Space::Live, &topic, MAX).unwrap();
        prop_assert_eq!(subject_len(P, &topic), written.len());
    }
}
