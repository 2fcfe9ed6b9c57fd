//! Cluster mode in one core: the NATS interest it asks for (one per distinct filter, `$SYS`
//! kept local, bounded), what it publishes to the other nodes, how it routes what they send
//! (once per client whatever the number of copies, share groups through queue subscriptions),
//! the retained mirror, and the bounds of its settings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use bytes::Bytes;
use harness::*;
use tidemq_core::cluster::envelope::{Envelope, Stamp};
use tidemq_core::cluster::nodes::{HEARTBEAT_SID, Heartbeat};
use tidemq_core::cluster::record::{self, SessionRecord};
use tidemq_core::cluster::{ClusterConfig, subject};
use tidemq_core::codec::{Packet, Properties, QoS, ReasonCode};
use tidemq_core::persist::RecoveredSession;
use tidemq_core::{Config, Input, Output};

fn clustered(name: &str) -> Config {
    Config {
        cluster: ClusterConfig {
            enable: true,
            node_name: name.to_owned(),
            max_subscriptions: 8,
            ..ClusterConfig::default()
        },
        ..quiet_config()
    }
}

/// The cluster outputs logged since `from`.
fn cluster_outputs(h: &Harness, from: usize) -> Vec<Output> {
    h.log[from..]
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::ClusterSubscribe { .. }
                    | Output::ClusterUnsubscribe { .. }
                    | Output::ClusterPublish { .. }
                    | Output::ClusterRetain { .. }
                    | Output::ClusterClaim { .. }
                    | Output::ClusterRecord { .. }
                    | Output::ClusterCatchUp { .. }
                    | Output::ClusterLookup { .. }
                    | Output::ClusterRelease { .. }
                    | Output::ClusterScan { .. }
                    | Output::ClusterDurable { .. }
            )
        })
        .cloned()
        .collect()
}

fn subscribes(h: &Harness, from: usize) -> Vec<(u64, String, Option<String>)> {
    cluster_outputs(h, from)
        .into_iter()
        .filter_map(|o| match o {
            Output::ClusterSubscribe {
                sid,
                subject,
                queue,
            } => Some((sid, subject, queue)),
            _ => None,
        })
        .collect()
}

fn from_node(node: &str, seq: u64, topic: &str, payload: &str, qos: QoS) -> (String, Bytes) {
    let subject = subject::topic_to_subject("tmq", subject::Space::Live, topic, 2048).unwrap();
    let envelope = Envelope {
        stamp: Stamp {
            node: node.to_owned(),
            epoch: 7,
            seq,
        },
        expires_unix_ms: None,
        qos,
        retain: false,
        properties: Properties::default(),
        payload: Bytes::from(payload.to_owned()),
    };
    (subject, envelope.encode())
}

/// The durable writes asked for since `from`, by token.
fn durable_tokens(h: &Harness, from: usize) -> Vec<u64> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterDurable { token, .. } => Some(*token),
            _ => None,
        })
        .collect()
}

/// Answers every durable write asked for since `from`: the stream puts each after anything
/// the tests' feeds read.
fn answer_durable(h: &mut Harness, from: usize, ok: bool) -> usize {
    let tokens = durable_tokens(h, from);
    for &token in &tokens {
        let seq = ok.then_some(1000 + token);
        h.input(Input::ClusterDurableDone { token, seq });
    }
    tokens.len()
}

#[test]
fn a_qos1_message_is_in_jetstream_before_it_is_routed_or_acknowledged() {
    let mut h = Harness::with_config(clustered("a"));
    let sub = h.client("sub", V5);
    h.subscribe(sub, "d/#", QoS::AtLeastOnce);
    let p = h.client("p", V5);
    let mark = h.log.len();
    let pid = h
        .publish(p, "d/1", "first", QoS::AtLeastOnce, false)
        .unwrap();
    // A QoS 0 message sent right after waits behind it: order is kept.
    h.publish(p, "d/2", "second", QoS::AtMostOnce, false);
    let writes: Vec<(String, String)> = h.log[mark..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterDurable {
                subject, msg_id, ..
            } => Some((subject.clone(), msg_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].0, "tmq.d.t.d.1");
    assert!(writes[0].1.starts_with("a."), "{writes:?}");
    assert!(h.recv(p).is_empty(), "no PUBACK before JetStream has it");
    assert!(
        h.publishes(sub).is_empty(),
        "no delivery before JetStream has it"
    );
    assert!(
        !cluster_outputs(&h, mark)
            .iter()
            .any(|o| matches!(o, Output::ClusterPublish { .. })),
        "nothing to the other nodes before JetStream has it"
    );
    answer_durable(&mut h, mark, true);
    let acks = h.recv(p);
    assert!(
        matches!(&acks[..], [tidemq_core::codec::Packet::PubAck(a)] if a.packet_id == pid && a.reason == ReasonCode(0)),
        "{acks:?}"
    );
    assert_eq!(h.payloads(sub), ["first", "second"]);
}

#[test]
fn without_jetstream_a_qos1_message_is_refused_not_lost() {
    let mut h = Harness::with_config(clustered("a"));
    let sub = h.client("sub", V5);
    h.subscribe(sub, "d/#", QoS::AtLeastOnce);
    let v5 = h.client("v5", V5);
    let mark = h.log.len();
    h.publish(v5, "d/1", "x", QoS::AtLeastOnce, false);
    assert_eq!(answer_durable(&mut h, mark, false), 1);
    let acks = h.recv(v5);
    assert!(
        matches!(&acks[..], [tidemq_core::codec::Packet::PubAck(a)] if a.reason == ReasonCode(0x80)),
        "v5 is told: {acks:?}"
    );
    let v3 = h.client("v3", V311);
    let mark = h.log.len();
    h.publish(v3, "d/1", "x", QoS::ExactlyOnce, false);
    answer_durable(&mut h, mark, false);
    assert!(h.is_closed(v3), "3.1.1 has no refusal: disconnected");
    assert!(
        h.publishes(sub).is_empty(),
        "a refused message is not delivered"
    );
}

#[test]
fn interest_is_one_nats_subscription_per_distinct_filter_and_sys_stays_local() {
    let mut h = Harness::with_config(clustered("a"));
    let c1 = h.client("c1", V5);
    let c2 = h.client("c2", V311);
    let mark = h.log.len();
    h.subscribe(c1, "s/+", QoS::AtMostOnce);
    h.subscribe(c2, "s/+", QoS::AtMostOnce);
    h.subscribe(c1, "t/#", QoS::AtMostOnce);
    h.subscribe(c1, "$SYS/#", QoS::AtMostOnce);
    let subs = subscribes(&h, mark);
    let subjects: Vec<&str> = subs.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(subjects, ["tmq.m.t.s.*", "tmq.m.t.t", "tmq.m.t.t.>"]);
    let mark = h.log.len();
    h.unsubscribe(c1, &["s/+"]);
    assert!(cluster_outputs(&h, mark).is_empty(), "c2 still holds s/+");
    h.unsubscribe(c2, &["s/+"]);
    assert_eq!(
        cluster_outputs(&h, mark),
        [Output::ClusterUnsubscribe { sid: subs[0].0 }]
    );
    // A session that ends takes its interest with it.
    let mark = h.log.len();
    h.disconnect(c1, 0);
    let dropped: Vec<Output> = cluster_outputs(&h, mark);
    assert_eq!(
        dropped,
        [
            Output::ClusterUnsubscribe { sid: subs[1].0 },
            Output::ClusterUnsubscribe { sid: subs[2].0 }
        ]
    );
}

#[test]
fn a_local_message_goes_to_the_cluster_once_stamped_and_sys_does_not() {
    let mut h = Harness::with_config(Config {
        sys_events: true,
        ..clustered("a")
    });
    let p = h.client("p", V5);
    let mark = h.log.len();
    h.publish(p, "x/y", "one", QoS::AtLeastOnce, false);
    // QoS 1: JetStream has it first (its write is stamped too).
    answer_durable(&mut h, mark, true);
    h.publish(p, "x/y", "two", QoS::AtMostOnce, true);
    let out = cluster_outputs(&h, mark);
    let mut seqs = Vec::new();
    let mut retained = 0;
    for o in out {
        match o {
            Output::ClusterDurable { .. } => {}
            Output::ClusterPublish {
                subject,
                payload,
                droppable,
            } => {
                assert_eq!(subject, "tmq.m.t.x.y");
                let e = Envelope::decode(payload).unwrap();
                // Only QoS 0 may be dropped on the way to NATS: a QoS 1/2 copy was vouched for.
                assert_eq!(droppable, e.qos == QoS::AtMostOnce);
                assert_eq!(e.stamp.node, "a");
                seqs.push((e.stamp.seq, e.qos, e.retain, e.payload));
            }
            Output::ClusterRetain { key, value } => {
                assert_eq!(key, "t.x.y");
                assert!(value.is_some());
                retained += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seqs,
        [
            (2, QoS::AtLeastOnce, false, Bytes::from("one")),
            (3, QoS::AtMostOnce, true, Bytes::from("two"))
        ]
    );
    assert_eq!(retained, 1);
    // The broker's own `$SYS` events are routed here only.
    h.recv(p);
    h.subscribe(p, "$SYS/#", QoS::AtMostOnce);
    let mark = h.log.len();
    let _ = h.client("q", V311);
    assert!(!h.publishes(p).is_empty(), "the connect event, locally");
    assert!(
        !cluster_outputs(&h, mark)
            .iter()
            .any(|o| matches!(o, Output::ClusterPublish { .. }))
    );
}

#[test]
fn a_message_from_another_node_reaches_each_client_once_whatever_the_copies() {
    let mut h = Harness::with_config(clustered("a"));
    let c = h.client("c", V5);
    let d = h.client("d", V311);
    let mark = h.log.len();
    h.subscribe(c, "x/+", QoS::AtLeastOnce);
    h.subscribe(c, "x/#", QoS::AtMostOnce);
    h.subscribe(d, "x/y", QoS::AtMostOnce);
    let subs = subscribes(&h, mark);
    // NATS brings one copy per matching subscription (x.*, x.>, x.y), in any order.
    let (subject, payload) = from_node("b", 1, "x/y", "hello", QoS::AtMostOnce);
    for (sid, _, _) in subs.iter().rev() {
        h.input(Input::ClusterMessage {
            sid: *sid,
            subject: subject.clone(),
            payload: payload.clone(),
        });
    }
    let got = h.publishes(c);
    assert_eq!(got.len(), 1, "one delivery to c: {got:?}");
    assert_eq!(h.payloads(d), ["hello"]);
    // A QoS 1 copy on a plain subscription is passed over: the node feed brings it.
    let (subject1, payload1) = from_node("b", 2, "x/y", "feed", QoS::AtLeastOnce);
    for (sid, _, _) in &subs {
        h.input(Input::ClusterMessage {
            sid: *sid,
            subject: subject1.clone(),
            payload: payload1.clone(),
        });
    }
    assert!(h.publishes(c).is_empty() && h.publishes(d).is_empty());
    // Garbage, or a subject that is not one of ours, is counted, not routed.
    h.input(Input::ClusterMessage {
        sid: subs[0].0,
        subject: subject.clone(),
        payload: Bytes::from_static(b"\x01\x09garbage"),
    });
    h.input(Input::ClusterMessage {
        sid: subs[0].0,
        subject: "tmq.m.t.x.y_zz".to_owned(),
        payload,
    });
    assert!(h.publishes(c).is_empty());
    assert!(h.publishes(d).is_empty());
}

#[test]
fn the_metrics_count_the_cluster_path() {
    let mut h = Harness::with_config(clustered("a"));
    let c = h.client("c", V5);
    let p = h.client("p", V5);
    let mark = h.log.len();
    h.subscribe(c, "x/#", QoS::AtMostOnce);
    h.subscribe(c, "y/+", QoS::AtMostOnce);
    let subs = subscribes(&h, mark);
    h.publish(p, "x/1", "local", QoS::AtMostOnce, false);
    let (subject, payload) = from_node("b", 1, "x/y", "remote", QoS::AtMostOnce);
    h.input(Input::ClusterMessage {
        sid: subs[0].0,
        subject,
        payload,
    });
    h.input(Input::ClusterMessage {
        sid: subs[0].0,
        subject: "tmq.m.t.x.y".to_owned(),
        payload: Bytes::from_static(b"not an envelope"),
    });
    h.input(Input::RuntimeCounters(tidemq_core::RuntimeConnCounters {
        cluster_dropped: 5,
        ..Default::default()
    }));
    let text = scrape(&mut h);
    // `x/#` is two NATS subscriptions, `y/+` one.
    assert_eq!(value(&text, "tidemq_cluster_nats_subscriptions"), 3.0);
    assert_eq!(value(&text, "tidemq_cluster_filters"), 2.0);
    assert_eq!(value(&text, "tidemq_cluster_published_total"), 1.0);
    assert_eq!(value(&text, "tidemq_cluster_received_total"), 1.0);
    assert_eq!(value(&text, "tidemq_cluster_refused_total"), 1.0);
    assert_eq!(value(&text, "tidemq_cluster_dropped_total"), 5.0);
    assert_eq!(h.payloads(c), ["local", "remote"]);
}

#[test]
fn a_share_group_takes_messages_from_its_queue_subscription_only() {
    let mut h = Harness::with_config(clustered("a"));
    let m1 = h.client("m1", V5);
    let m2 = h.client("m2", V5);
    let p = h.client("p", V5);
    let mark = h.log.len();
    h.subscribe(m1, "$share/g/q/#", QoS::AtMostOnce);
    h.subscribe(m2, "$share/g/q/#", QoS::AtMostOnce);
    let subs = subscribes(&h, mark);
    assert_eq!(subs.len(), 2, "q and q.>: {subs:?}");
    assert!(subs.iter().all(|s| s.2.as_deref() == Some("g__q_2F_23")));
    // A local publish is not given to the group here: NATS picks the node.
    h.publish(p, "q/1", "local", QoS::AtMostOnce, false);
    assert!(h.publishes(m1).is_empty() && h.publishes(m2).is_empty());
    // What the queue subscription brings (this node's own messages included) goes to one
    // member, round robin.
    for i in 0..4 {
        let (subject, payload) = from_node("b", 100 + i, "q/1", &format!("m{i}"), QoS::AtMostOnce);
        h.input(Input::ClusterMessage {
            sid: subs[1].0,
            subject,
            payload,
        });
    }
    let (a, b) = (h.payloads(m1), h.payloads(m2));
    assert_eq!(a.len() + b.len(), 4, "{a:?} {b:?}");
    assert_eq!(a.len(), 2, "round robin: {a:?} {b:?}");
}

#[test]
fn too_long_a_topic_or_too_many_filters_is_refused() {
    let mut config = clustered("a");
    config.cluster.max_subject_len = 64;
    let mut h = Harness::with_config(config);
    let c = h.client("c", V5);
    let long = "l/".repeat(40);
    let suback = h.subscribe(c, &format!("{long}x"), QoS::AtMostOnce);
    assert_eq!(suback.reasons, [ReasonCode(0x97)]);
    for i in 0..8 {
        let suback = h.subscribe(c, &format!("f/{i}"), QoS::AtMostOnce);
        assert_eq!(suback.reasons, [ReasonCode(0)], "filter {i}");
    }
    let suback = h.subscribe(c, "f/9", QoS::AtMostOnce);
    assert_eq!(suback.reasons, [ReasonCode(0x97)], "max_subscriptions = 8");
    // Subscribing again to a filter already held needs nothing more.
    let suback = h.subscribe(c, "f/1", QoS::AtLeastOnce);
    assert_eq!(suback.reasons, [ReasonCode(1)]);
    let p = h.client("p", V5);
    h.publish(p, &format!("{long}x"), "x", QoS::AtMostOnce, false);
    assert_eq!(h.disconnect_reason(p), Some(0x90));
}

#[test]
fn the_retained_mirror_follows_the_bucket() {
    let mut h = Harness::with_config(clustered("a"));
    let (_, payload) = from_node("b", 1, "r/1", "kept", QoS::AtLeastOnce);
    h.input(Input::ClusterRetained {
        key: "t.r.1".to_owned(),
        value: Some(payload),
    });
    let c = h.client("c", V5);
    h.subscribe(c, "r/#", QoS::AtLeastOnce);
    let got = h.publishes_acked(c);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(got[0].payload, Bytes::from("kept"));
    h.input(Input::ClusterRetained {
        key: "t.r.1".to_owned(),
        value: None,
    });
    let d = h.client("d", V5);
    h.subscribe(d, "r/#", QoS::AtLeastOnce);
    assert!(
        h.publishes(d).is_empty(),
        "deleted in the bucket, gone here"
    );
}

#[test]
fn cluster_settings_are_bounded_and_read_at_start_only() {
    let ok = clustered("node-1");
    assert!(ok.validate().is_ok());
    for (what, change) in [
        (
            "cluster.node_name",
            Box::new(|c: &mut Config| c.cluster.node_name = "a b".into())
                as Box<dyn Fn(&mut Config)>,
        ),
        (
            "cluster.node_name",
            Box::new(|c: &mut Config| c.cluster.node_name.clear()),
        ),
        (
            "cluster.nats_urls",
            Box::new(|c: &mut Config| c.cluster.nats_urls = vec!["nats://h".into()]),
        ),
        (
            "cluster.nats_urls",
            Box::new(|c: &mut Config| c.cluster.nats_urls.clear()),
        ),
        (
            "cluster.subject_prefix",
            Box::new(|c: &mut Config| c.cluster.subject_prefix = "A".into()),
        ),
        (
            "cluster.replicas",
            Box::new(|c: &mut Config| c.cluster.replicas = 6),
        ),
        (
            "cluster.max_subject_len",
            Box::new(|c: &mut Config| c.cluster.max_subject_len = 4000),
        ),
        (
            "cluster.publish_timeout",
            Box::new(|c: &mut Config| c.cluster.publish_timeout_ms = 50),
        ),
        (
            "cluster.durable_max_bytes",
            Box::new(|c: &mut Config| c.cluster.durable_max_bytes = 1000),
        ),
        (
            "cluster.record_interval",
            Box::new(|c: &mut Config| c.cluster.record_interval_ms = 5),
        ),
        (
            "cluster.node_ttl",
            Box::new(|c: &mut Config| c.cluster.node_ttl_ms = 1999),
        ),
        (
            "cluster.node_ttl",
            Box::new(|c: &mut Config| c.cluster.node_ttl_ms = 300_001),
        ),
        (
            "cluster.max_subscriptions",
            Box::new(|c: &mut Config| c.cluster.max_subscriptions = 0),
        ),
        (
            "cluster.retained_max_bytes",
            Box::new(|c: &mut Config| c.cluster.retained_max_bytes = c.max_memory),
        ),
    ] {
        let mut c = ok.clone();
        change(&mut c);
        assert_eq!(c.validate().map_err(|e| e.key), Err(what));
    }
    // A reload keeps the cluster settings the node started with.
    let mut h = Harness::with_config(ok.clone());
    let mut changed = ok;
    changed.cluster.node_name = "other".into();
    h.input(Input::ConfigChange(Box::new(changed)));
    assert_eq!(h.broker.config().cluster.node_name, "node-1");
}

#[test]
fn a_message_jetstream_kept_is_routed_even_if_its_publisher_has_gone() {
    let mut h = Harness::with_config(clustered("a"));
    let sub = h.client("sub", V5);
    h.subscribe(sub, "d/#", QoS::AtLeastOnce);
    let p = h.client("p", V311);
    let mark = h.log.len();
    h.publish(p, "d/1", "kept", QoS::AtLeastOnce, false);
    h.disconnect(p, 0);
    assert_eq!(answer_durable(&mut h, mark, true), 1);
    assert_eq!(h.payloads(sub), ["kept"]);
}

#[test]
fn qos1_writes_of_one_connection_overlap_and_are_answered_in_order() {
    let mut h = Harness::with_config(clustered("a"));
    let sub = h.client("sub", V5);
    h.subscribe(sub, "d/#", QoS::AtLeastOnce);
    let p = h.client("p", V5);
    let mark = h.log.len();
    let first = h.publish(p, "d/1", "one", QoS::AtLeastOnce, false).unwrap();
    let second = h.publish(p, "d/2", "two", QoS::AtLeastOnce, false).unwrap();
    let tokens = durable_tokens(&h, mark);
    assert_eq!(tokens.len(), 2, "both written before either is answered");
    // The second answer first: nothing goes until the first is answered.
    h.input(Input::ClusterDurableDone {
        token: tokens[1],
        seq: Some(2),
    });
    assert!(h.recv(p).is_empty());
    assert!(h.publishes(sub).is_empty());
    h.input(Input::ClusterDurableDone {
        token: tokens[0],
        seq: Some(1),
    });
    let acks: Vec<u16> = h
        .recv(p)
        .into_iter()
        .filter_map(|pkt| match pkt {
            tidemq_core::codec::Packet::PubAck(a) => Some(a.packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [first, second]);
    assert_eq!(h.payloads(sub), ["one", "two"]);
}

/// A persistent session's CONNECT, which waits for its claim: the claim answered with
/// `revision` and the entry it replaced; the connection and its CONNACK.
fn connect_claimed(
    h: &mut Harness,
    client_id: &str,
    opts: ConnectOpts,
    revision: Option<u64>,
    previous: Option<(Bytes, u64)>,
) -> (tidemq_core::ConnId, tidemq_core::codec::ConnAck) {
    let conn = h.accept();
    let mark = h.log.len();
    let early = h.connect_on(conn, client_id, V5, false, opts);
    assert!(early.is_none(), "a persistent CONNECT waits for its claim");
    let (token, _, _) = claims(h, mark).pop().expect("a claim");
    let (conn, ack, _) = connect_claimed_with(h, conn, token, revision, previous);
    (conn, ack)
}

/// The claim `token` of the waiting CONNECT on `conn` answered: the CONNACK and what came
/// after it.
fn connect_claimed_with(
    h: &mut Harness,
    conn: tidemq_core::ConnId,
    token: u64,
    revision: Option<u64>,
    previous: Option<(Bytes, u64)>,
) -> (
    tidemq_core::ConnId,
    tidemq_core::codec::ConnAck,
    Vec<tidemq_core::codec::Packet>,
) {
    h.input(Input::ClusterClaimed {
        token,
        revision,
        previous,
    });
    let mut got = h.recv(conn).into_iter();
    match got.next() {
        Some(tidemq_core::codec::Packet::ConnAck(a)) => (conn, a, got.collect()),
        other => panic!("a CONNACK once the claim is answered, not {other:?}"),
    }
}

/// The claims logged since `from`: (token, key, value).
fn claims(h: &Harness, from: usize) -> Vec<(u64, String, String)> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterClaim {
                token, key, value, ..
            } => Some((
                *token,
                key.clone(),
                String::from_utf8_lossy(value).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

fn releases(h: &Harness, from: usize) -> Vec<(String, u64)> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterRelease { key, revision } => Some((key.clone(), *revision)),
            _ => None,
        })
        .collect()
}

fn kick(h: &mut Harness, payload: &str) {
    h.input(Input::ClusterMessage {
        sid: tidemq_core::cluster::owner::KICK_SID,
        subject: "tmq.n.a.kick".to_owned(),
        payload: Bytes::from(payload.to_owned()),
    });
}

#[test]
fn a_client_id_has_one_owner_in_the_cluster() {
    let mut h = Harness::with_config(clustered("a"));
    let mark = h.log.len();
    let opts = || ConnectOpts::default().session_expiry(300);
    let (c, _) = connect_claimed(&mut h, "c/1", opts(), Some(5), None);
    // The first claim subscribes the node's kick subject; the key escapes the id.
    let made = claims(&h, mark);
    assert_eq!(made.len(), 1);
    let (_, key, claim) = made[0].clone();
    assert_eq!(key, "c_2F1");
    assert!(claim.starts_with("a "), "{claim}");
    assert!(subscribes(&h, mark).contains(&(0, "tmq.n.a.kick".to_owned(), None)));
    // A kick for another revision or another key is not this session's.
    kick(&mut h, "4 c_2F1");
    kick(&mut h, "5 d");
    kick(&mut h, "garbage");
    assert!(!h.is_closed(c));
    let mark = h.log.len();
    kick(&mut h, "5 c_2F1");
    assert_eq!(h.disconnect_reason(c), Some(0x8E));
    assert!(h.is_closed(c));
    // The session went with it (its claim is the other node's now: nothing to release).
    assert!(releases(&h, mark).is_empty());
    let (_, ack) = connect_claimed(&mut h, "c/1", opts(), Some(6), None);
    assert!(!ack.session_present);

    // A claim that replaced another node's kicks that node, once; one of this node's own
    // does not.
    let mark = h.log.len();
    let d = h.client("d", V311);
    let e = h.client("e", V5);
    let made = claims(&h, mark);
    assert_eq!(made.len(), 2);
    h.input(Input::ClusterClaimed {
        token: made[0].0,
        revision: Some(9),
        previous: Some((Bytes::from_static(b"b 1f"), 3)),
    });
    h.input(Input::ClusterClaimed {
        token: made[1].0,
        revision: Some(10),
        previous: Some((Bytes::from(made[1].2.clone()), 8)),
    });
    let kicks: Vec<(String, Bytes, bool)> = cluster_outputs(&h, mark)
        .into_iter()
        .filter_map(|o| match o {
            Output::ClusterPublish {
                subject,
                payload,
                droppable,
            } => Some((subject, payload, droppable)),
            _ => None,
        })
        .collect();
    assert_eq!(
        kicks,
        [("tmq.n.b.kick".to_owned(), Bytes::from_static(b"3 d"), false)]
    );
    // A session that ends gives its claim back, at the revision it wrote.
    let mark = h.log.len();
    h.disconnect(d, 0);
    assert_eq!(releases(&h, mark), [("d".to_owned(), 9)]);
    // A claim answered after its session ended is given back at once, and the session it
    // replaced on another node still goes: the client came here after it.
    let mark = h.log.len();
    let f = h.client("f", V5);
    let token = claims(&h, mark)[0].0;
    h.disconnect(f, 0);
    let mark = h.log.len();
    h.input(Input::ClusterClaimed {
        token,
        revision: Some(12),
        previous: Some((Bytes::from_static(b"c 2"), 11)),
    });
    assert_eq!(releases(&h, mark), [("f".to_owned(), 12)]);
    assert!(cluster_outputs(&h, mark).iter().any(|o| matches!(
        o,
        Output::ClusterPublish { subject, payload, .. }
            if subject == "tmq.n.c.kick" && payload == "11 f"
    )));
    // A claim that could not be written changes nothing.
    let mark = h.log.len();
    let g = h.client("g", V5);
    let token = claims(&h, mark)[0].0;
    h.input(Input::ClusterClaimed {
        token,
        revision: None,
        previous: None,
    });
    assert!(!h.is_closed(g) && !h.is_closed(e));
    // An assigned id is the node's own: no claim.
    let mark = h.log.len();
    let _ = h.connect("", V5, true, ConnectOpts::default());
    assert!(claims(&h, mark).is_empty());
    // A client id too long to name in the cluster is refused (0x85).
    let long = "x".repeat(3000);
    let conn = h.accept();
    let ack = h
        .connect_on(conn, &long, V5, true, ConnectOpts::default())
        .unwrap();
    assert_eq!(ack.code, 0x85);
    let text = scrape(&mut h);
    assert_eq!(value(&text, "tidemq_cluster_claims_total"), 5.0);
    assert_eq!(value(&text, "tidemq_cluster_claims_failed_total"), 1.0);
    assert_eq!(value(&text, "tidemq_cluster_taken_over_total"), 1.0);
}

/// A QoS 1/2 message of another node, as the node feed reads it from the durable stream.
fn from_stream(node: &str, seq: u64, topic: &str, payload: &str, qos: QoS) -> (String, Bytes) {
    let (_, envelope) = from_node(node, seq, topic, payload, qos);
    let subject = subject::topic_to_subject("tmq", subject::Space::Durable, topic, 2048).unwrap();
    (subject, envelope)
}

#[test]
fn the_node_feed_brings_each_durable_message_once_to_every_matching_session() {
    let mut h = Harness::with_config(clustered("a"));
    let c = h.client("c", V5);
    let d = h.client("d", V311);
    let e = h.client("e", V5);
    h.subscribe(c, "x/+", QoS::AtLeastOnce);
    h.subscribe(c, "x/#", QoS::AtMostOnce);
    h.subscribe(d, "x/y", QoS::AtMostOnce);
    h.subscribe(e, "$share/g/x/y", QoS::AtLeastOnce);
    for (seq, text) in [(1, "one"), (2, "two")] {
        let (subject, payload) = from_stream("b", seq, "x/y", text, QoS::AtLeastOnce);
        h.input(Input::ClusterFeedMessage {
            seq,
            subject,
            payload,
        });
    }
    // One delivery per session, in stream order, at the highest QoS granted.
    let got = h.publishes_acked(c);
    assert_eq!(
        got.iter()
            .map(|p| (p.payload.clone(), p.qos))
            .collect::<Vec<_>>(),
        [
            (Bytes::from("one"), QoS::AtLeastOnce),
            (Bytes::from("two"), QoS::AtLeastOnce)
        ]
    );
    assert_eq!(h.payloads(d), ["one", "two"]);
    // A share group takes its copies through its queue subscription only.
    assert!(h.publishes(e).is_empty());
    // The node's own messages (routed when JetStream took them), garbage and live subjects
    // are not routed again.
    let mark = h.log.len();
    let p = h.client("p", V5);
    h.publish(p, "x/y", "own", QoS::AtLeastOnce, false);
    let own = h.log[mark..]
        .iter()
        .find_map(|o| match o {
            Output::ClusterDurable {
                token,
                subject,
                payload,
                ..
            } => Some((*token, subject.clone(), payload.clone())),
            _ => None,
        })
        .unwrap();
    h.input(Input::ClusterDurableDone {
        token: own.0,
        seq: Some(3),
    });
    assert_eq!(h.payloads(d), ["own"]);
    h.input(Input::ClusterFeedMessage {
        seq: 3,
        subject: own.1,
        payload: own.2,
    });
    let (live, payload) = from_node("b", 3, "x/y", "live subject", QoS::AtLeastOnce);
    h.input(Input::ClusterFeedMessage {
        seq: 4,
        subject: live,
        payload,
    });
    let (subject, _) = from_stream("b", 4, "x/y", "", QoS::AtLeastOnce);
    h.input(Input::ClusterFeedMessage {
        seq: 5,
        subject,
        payload: Bytes::from_static(b"garbage"),
    });
    assert!(h.publishes(d).is_empty());
    let text = scrape(&mut h);
    assert_eq!(value(&text, "tidemq_cluster_received_total"), 2.0);
    assert_eq!(value(&text, "tidemq_cluster_refused_total"), 2.0);
}

/// Every node of a cluster runs its bridges: each connects to the remote with its own client
/// id (the configured one and the node's name), or the remote would have each take the
/// other's session over, again and again.
#[test]
fn a_bridge_connects_with_its_nodes_own_client_id() {
    use tidemq_core::Broker;
    use tidemq_core::codec::{DecodeLimits, Packet, decode_packet};
    use tidemq_core::config::BridgeConfig;

    let mut config = clustered("node-a");
    config.bridges.insert(
        "up".to_owned(),
        BridgeConfig {
            enable: true,
            address: "mqtt-tcp://remote:1883".to_owned(),
            ..BridgeConfig::default()
        },
    );
    let mut broker = Broker::new(config, 3, tidemq_core::Instant(0));
    let mut link = None;
    let mut sent = bytes::BytesMut::new();
    for _ in 0..16 {
        let now = broker.poll_timeout().unwrap_or(tidemq_core::Instant(0));
        broker.handle_input(now, Input::Timeout);
        while let Some(out) = broker.poll_output() {
            match out {
                Output::BridgeConnect { conn, .. } if link.is_none() => {
                    link = Some(conn);
                    broker.handle_input(now, Input::BridgeConnected { conn });
                }
                Output::Transmit { conn, bytes } if Some(conn) == link => {
                    sent.extend_from_slice(&bytes);
                }
                _ => {}
            }
        }
        if !sent.is_empty() {
            break;
        }
    }
    let connect = decode_packet(&mut sent, None, &DecodeLimits::default()).unwrap();
    let Some(Packet::Connect(c)) = connect else {
        panic!("no CONNECT to the remote: {connect:?}");
    };
    assert_eq!(c.client_id, "bridge_client-node-a");
}

/// A retained write on its way to the bucket is counted in memory until the watch hands it
/// back.
#[test]
fn retained_writes_awaited_from_the_watch_are_counted() {
    let mut h = Harness::with_config(clustered("a"));
    let p = h.client("p", V5);
    let mark = h.log.len();
    h.publish(p, "r/1", "x", QoS::AtMostOnce, true);
    let (key, value) = h.log[mark..]
        .iter()
        .find_map(|o| match o {
            Output::ClusterRetain { key, value } => Some((key.clone(), value.clone())),
            _ => None,
        })
        .unwrap();
    let waiting = value_of(&mut h, "tidemq_memory_counted_bytes");
    h.input(Input::ClusterRetained { key, value });
    let settled = value_of(&mut h, "tidemq_memory_counted_bytes");
    assert!(
        waiting - settled >= 64.0 + 5.0,
        "the pending key was counted: {waiting} then {settled}"
    );
}

fn value_of(h: &mut Harness, sample: &str) -> f64 {
    let text = scrape(h);
    value(&text, sample)
}

/// `DELETE /api/v4/clients/{id}` on this node; the sessions-bucket lookup it asked for, if
/// any: (token, key).
fn admin_kick(h: &mut Harness, req_id: u64, client_id: &str) -> Option<(u64, String)> {
    let mark = h.log.len();
    h.input(Input::AdminV4 {
        req_id,
        credentials: tidemq_core::admin::Credentials {
            // admin:public
            authorization: Some("Basic YWRtaW46cHVibGlj".to_owned()),
            jwt: None,
        },
        method: "DELETE".to_owned(),
        path: format!("/api/v4/clients/{client_id}"),
        query: String::new(),
        body: Bytes::new(),
    });
    h.log[mark..].iter().find_map(|o| match o {
        Output::ClusterLookup { token, key } => Some((*token, key.clone())),
        _ => None,
    })
}

fn reply_status(h: &Harness, from: usize, req_id: u64) -> Option<u16> {
    h.log[from..].iter().find_map(|o| match o {
        Output::AdminReply {
            req_id: r, status, ..
        } if *r == req_id => Some(*status),
        _ => None,
    })
}

/// The admin API kicks a client wherever it is connected: a node without the client id asks
/// the sessions bucket which node holds it and tells that node, which disconnects it (v5
/// 0x98) and ends the session unless asked to keep it.
#[test]
fn the_admin_api_kicks_a_client_connected_on_another_node() {
    let mut h = Harness::with_config(clustered("a"));
    // Not here: the bucket is asked; the reply waits for its answer.
    let mark = h.log.len();
    let (token, key) = admin_kick(&mut h, 1, "far.away").unwrap();
    assert_eq!(key, "far_2Eaway");
    assert_eq!(reply_status(&h, mark, 1), None);
    let mark = h.log.len();
    h.input(Input::ClusterLookedUp {
        token,
        entry: Ok(Some((Bytes::from_static(b"b 1f"), 41))),
    });
    assert_eq!(reply_status(&h, mark, 1), Some(200));
    assert!(cluster_outputs(&h, mark).iter().any(|o| matches!(
        o,
        Output::ClusterPublish { subject, payload, droppable: false }
            if subject == "tmq.n.b.kick" && payload == "41 far_2Eaway admin"
    )));
    // Held by nobody: 404, as on one node; the bucket could not be read: 503.
    for (req_id, entry, status) in [(2, Ok(None), 404), (3, Err("no answer".to_owned()), 503)] {
        let mark = h.log.len();
        let (token, _) = admin_kick(&mut h, req_id, "nobody").unwrap();
        h.input(Input::ClusterLookedUp { token, entry });
        assert_eq!(reply_status(&h, mark, req_id), Some(status));
    }
    // The node holding the client: an admin kick for its claim's revision.
    let opts = ConnectOpts::default().session_expiry(300);
    let (c, _) = connect_claimed(&mut h, "kept", opts, Some(50), None);
    let mark = h.log.len();
    let d = h.client("gone", V5);
    let made = claims(&h, mark);
    h.input(Input::ClusterClaimed {
        token: made[0].0,
        revision: Some(51),
        previous: None,
    });
    kick(&mut h, "50 kept admin keep");
    assert_eq!(h.disconnect_reason(c), Some(0x98));
    let mark = h.log.len();
    kick(&mut h, "51 gone admin");
    assert_eq!(h.disconnect_reason(d), Some(0x98));
    // Its session ended here, and its claim with it; the kept one resumes.
    assert_eq!(releases(&h, mark), [("gone".to_owned(), 51)]);
    let opts = ConnectOpts::default().session_expiry(300);
    let (_, ack) = connect_claimed(&mut h, "kept", opts, Some(52), None);
    assert!(ack.session_present);
}

/// The session records node "a" wrote since `from`: (token, key, revision, record).
fn records(h: &Harness, from: usize, client_id: &str) -> Vec<(u64, String, u64, SessionRecord)> {
    records_of(h, "a", from, client_id)
}

/// The session records `node` wrote since `from`.
fn records_of(
    h: &Harness,
    node: &str,
    from: usize,
    client_id: &str,
) -> Vec<(u64, String, u64, SessionRecord)> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterRecord {
                token,
                key,
                value,
                revision,
            } => {
                let (line, record) = record::parse_value(value, client_id);
                assert!(
                    line.strip_prefix(node.as_bytes())
                        .is_some_and(|rest| rest.starts_with(b" ")),
                    "the owner's line leads"
                );
                Some((*token, key.clone(), *revision, record?.ok()?))
            }
            _ => None,
        })
        .collect()
}

/// The payloads `c` received (and acknowledged) since last asked.
fn payloads(h: &mut Harness, c: tidemq_core::ConnId) -> Vec<Bytes> {
    h.publishes_acked(c)
        .into_iter()
        .map(|p| p.payload)
        .collect()
}

/// Message `seq` of node b in the durable stream, as this node's feed brings it.
fn feed_message(h: &mut Harness, seq: u64, topic: &str, text: &str) {
    feed_at_qos(h, seq, topic, text, QoS::AtLeastOnce);
}

/// The same at `qos`.
fn feed_at_qos(h: &mut Harness, seq: u64, topic: &str, text: &str, qos: QoS) {
    let (subject, payload) = from_stream("b", seq, topic, text, qos);
    h.input(Input::ClusterFeedMessage {
        seq,
        subject,
        payload,
    });
}

/// Message `seq` of node b in the durable stream, as catch-up read `token` brings it.
fn catch_up_message(h: &mut Harness, token: u64, seq: u64, topic: &str, text: &str) {
    let (subject, payload) = from_stream("b", seq, topic, text, QoS::AtLeastOnce);
    h.input(Input::ClusterCatchUpMessage {
        token,
        seq,
        subject,
        payload,
    });
}

/// A record of a session subscribed to `x/+` at `qos` with cursor `cursor`.
fn record_at(qos: u8, cursor: u64) -> SessionRecord {
    session_record(&["x/+"], qos, cursor)
}

/// A record of a session subscribed to `filters` at `qos` with cursor `cursor`.
fn session_record(filters: &[&str], qos: u8, cursor: u64) -> SessionRecord {
    let mut session = RecoveredSession {
        version: 5,
        expiry_secs: 300,
        ..Default::default()
    };
    for f in filters {
        session.subscriptions.insert((*f).to_owned(), (qos, None));
    }
    SessionRecord {
        cursor: Some(cursor),
        session,
        ..Default::default()
    }
}

/// Another node's record of `client_id`: its subscriptions (QoS 1) and cursor.
fn record_of(node: &str, client_id: &str, filters: &[&str], cursor: u64) -> Bytes {
    record_with_qos(node, client_id, filters, 1, cursor)
}

/// The same with the subscriptions' QoS (the v5 options byte's low bits).
fn record_with_qos(node: &str, client_id: &str, filters: &[&str], qos: u8, cursor: u64) -> Bytes {
    let record = session_record(filters, qos, cursor);
    record::record_value(format!("{node} 1f").as_bytes(), client_id, &record)
}

/// Client `roam` connects with a persistent session whose record node b wrote (filter `x/+`,
/// cursor 3) while this node's feed has read the stream up to 6: the session resumes. The
/// client, and where the log stood before its CONNECT.
fn resume_roam(h: &mut Harness) -> (tidemq_core::ConnId, usize) {
    resume_roam_at(h, 1)
}

/// The same with the record's subscription at `qos`.
fn resume_roam_at(h: &mut Harness, qos: u8) -> (tidemq_core::ConnId, usize) {
    h.input(Input::ClusterFeedStart { seq: 6 });
    let previous = record_with_qos("b", "roam", &["x/+"], qos, 3);
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let (c, ack) = connect_claimed(h, "roam", opts, Some(20), Some((previous, 19)));
    assert!(ack.session_present, "the session came with its record");
    (c, mark)
}

#[test]
fn a_persistent_session_resumes_from_another_nodes_record_and_catches_up() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mark) = resume_roam(&mut h);
    // The node that held it is told to let it go; the stream is read from the cursor on.
    let outs = cluster_outputs(&h, mark);
    assert!(outs.iter().any(
        |o| matches!(o, Output::ClusterPublish { subject, payload, .. }
        if subject == "tmq.n.b.kick" && payload == "19 roam")
    ));
    let catch_up = outs.iter().find_map(|o| match o {
        Output::ClusterCatchUp { token, from, to } => Some((*token, *from, *to)),
        _ => None,
    });
    let (token, from, to) = catch_up.expect("a catch-up read");
    assert_eq!((from, to), (4, 6));
    // Written again at once, as this node's, with its subscription and the old cursor.
    let written = records(&h, mark, "roam");
    let (_, key, revision, rec) = written.last().cloned().expect("a record write");
    assert_eq!((key.as_str(), revision, rec.cursor), ("roam", 20, Some(3)));
    assert!(rec.session.subscriptions.contains_key("x/+"));
    // What the read brings reaches this session, through its restored subscription.
    for (seq, topic, text) in [(4, "x/1", "four"), (5, "y/1", "other"), (6, "x/2", "six")] {
        let (subject, payload) = from_stream("b", seq, topic, text, QoS::AtLeastOnce);
        h.input(Input::ClusterCatchUpMessage {
            token,
            seq,
            subject,
            payload,
        });
    }
    h.input(Input::ClusterCatchUpDone { token, ok: true });
    let texts = |p: Vec<tidemq_core::codec::Publish>| -> Vec<Bytes> {
        p.into_iter().map(|p| p.payload).collect()
    };
    assert_eq!(texts(h.publishes_acked(c)), ["four", "six"]);
    // The live feed goes on from 7.
    feed_message(&mut h, 7, "x/3", "seven");
    assert_eq!(texts(h.publishes_acked(c)), ["seven"]);
    // Once acknowledged, the cursor moves to the feed's place at the next tick.
    let mark = h.log.len();
    h.input(Input::ClusterRecorded {
        token: written.last().unwrap().0,
        answer: tidemq_core::RecordAnswer::Written(21),
    });
    h.advance(1000);
    let moved = records(&h, mark, "roam");
    let (token, _, revision, rec) = moved.last().cloned().expect("the cursor written");
    assert_eq!((revision, rec.cursor), (21, Some(7)));
    // Another node wrote over it: fenced, the session ends here as in a takeover.
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Fenced,
    });
    assert_eq!(h.disconnect_reason(c), Some(0x8E));
    let text = scrape(&mut h);
    assert_eq!(value(&text, "tidemq_cluster_sessions_resumed_total"), 1.0);
    assert_eq!(value(&text, "tidemq_cluster_caught_up_total"), 3.0);
}

/// What the node routes to a moved session while its catch-up read runs waits behind the
/// read: the session gets each publisher's messages in stream order (newer ones from the feed
/// and from this node's own publishers after the older ones the read brings).
#[test]
fn a_moved_session_gets_what_its_catch_up_brings_before_what_came_meanwhile() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mark) = resume_roam(&mut h);
    let (token, _, _) = catch_ups(&h, mark).pop().expect("a catch-up read");
    // The feed goes on before the read answers, and a publisher here sends one too.
    feed_message(&mut h, 7, "x/1", "seven");
    let p = h.client("p", V5);
    let mark = h.log.len();
    h.publish(p, "x/2", "eight", QoS::AtLeastOnce, false);
    answer_durable(&mut h, mark, true);
    assert!(
        h.publishes_acked(c).is_empty(),
        "newer ones wait for the read"
    );
    for (seq, text) in [(4, "four"), (5, "five")] {
        catch_up_message(&mut h, token, seq, "x/1", text);
    }
    h.input(Input::ClusterCatchUpDone { token, ok: true });
    let texts = payloads(&mut h, c);
    assert_eq!(texts, ["four", "five", "seven", "eight"]);
    // Once caught up, deliveries go straight on.
    feed_message(&mut h, 9, "x/1", "nine");
    let texts = payloads(&mut h, c);
    assert_eq!(texts, ["nine"]);
}

/// Held deliveries have limits: QoS 0 (live, at most once) is never held, and a catch-up read
/// that keeps failing stops holding what came meanwhile (its cursor stays until it succeeds).
#[test]
fn a_failing_catch_up_holds_deliveries_no_longer_and_never_holds_qos0() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, _) = resume_roam(&mut h);
    feed_message(&mut h, 7, "x/1", "seven");
    let p = h.client("p", V5);
    h.publish(p, "x/2", "live", QoS::AtMostOnce, false);
    let texts = |h: &mut Harness| payloads(h, c);
    assert_eq!(texts(&mut h), ["live"], "QoS 0 goes straight on");
    for attempt in 1..=3 {
        let token = h
            .log
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::ClusterCatchUp { token, .. } => Some(*token),
                _ => None,
            })
            .unwrap();
        assert!(texts(&mut h).is_empty(), "held during attempt {attempt}");
        h.input(Input::ClusterCatchUpDone { token, ok: false });
    }
    assert_eq!(texts(&mut h), ["seven"], "released after the last attempt");
}

/// A moved session's QoS 0 subscription gets QoS 1 messages from the stream too (as QoS 0):
/// those wait behind the catch-up read like any other stream message.
#[test]
fn a_moved_sessions_qos0_subscription_keeps_the_order_of_stream_messages() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mark) = resume_roam_at(&mut h, 0);
    let (token, _, _) = catch_ups(&h, mark).pop().expect("a catch-up read");
    feed_message(&mut h, 7, "x/1", "seven");
    assert!(payloads(&mut h, c).is_empty(), "held behind the read");
    catch_up_message(&mut h, token, 4, "x/1", "four");
    h.input(Input::ClusterCatchUpDone { token, ok: true });
    assert_eq!(payloads(&mut h, c), ["four", "seven"]);
}

/// A node's start died with its client connected: the session's record has no disconnect
/// time. A node that saw that start end (silent for `node_ttl`: forgotten at a heartbeat tick,
/// its clients gone by a third of the ttl later; or its own earlier start) counts the
/// session's expiry from then. A node that did not see it end resumes it, however late.
#[test]
fn a_dead_nodes_session_expires_counted_from_when_its_end_was_seen() {
    const T0: u64 = 1_700_000_000_000;
    let record_of = |line: &[u8]| {
        let rec = SessionRecord {
            cursor: Some(1),
            session: RecoveredSession {
                version: 5,
                expiry_secs: 20,
                ..Default::default()
            },
            ..Default::default()
        };
        record::record_value(line, "m", &rec)
    };
    // (owner line, whether node b heard of a, when the client comes back, resumed?)
    let cases: [(&[u8], bool, u64, bool); 5] = [
        // a forgotten at the tick at 13,332 ms: gone by 16,665; expired from 36,665.
        (b"a 1f", true, 36_000, true),
        (b"a 1f", true, 37_000, false),
        (b"a 1f", false, 60_000, true),
        // b's own earlier start: ended before this one began (at 0).
        (b"b 5", false, 19_000, true),
        (b"b 5", false, 21_000, false),
    ];
    let hear = |h: &mut Harness, epoch: &str, started_at: u64| {
        let beat = Heartbeat {
            node: "a".to_owned(),
            epoch: epoch.to_owned(),
            connections: 1,
            started_at,
            version: "9.9.9".to_owned(),
        };
        h.input(Input::ClusterMessage {
            sid: HEARTBEAT_SID,
            subject: "tmq.h.a".to_owned(),
            payload: beat.encode(),
        });
    };
    for (line, heard, back_at, resumed) in cases {
        let mut h = Harness::with_config(clustered("b"));
        h.input(Input::WallClock { unix_ms: T0 });
        h.input(Input::ClusterFeedStart { seq: 2 });
        h.advance(0);
        if heard {
            hear(&mut h, "1f", T0);
        }
        h.advance(back_at);
        let opts = ConnectOpts::default().session_expiry(300);
        let (_, ack) = connect_claimed(&mut h, "m", opts, Some(20), Some((record_of(line), 19)));
        assert_eq!(
            ack.session_present,
            resumed,
            "{} heard={heard} back at {back_at}",
            String::from_utf8_lossy(line)
        );
    }
    // a restarts at 5 s: its first start ended before the new one's first heartbeat.
    for (back_at, resumed) in [(24_000, true), (26_000, false)] {
        let mut h = Harness::with_config(clustered("b"));
        h.input(Input::WallClock { unix_ms: T0 });
        h.input(Input::ClusterFeedStart { seq: 2 });
        h.advance(0);
        hear(&mut h, "1f", T0);
        h.advance(5_000);
        hear(&mut h, "20", T0 + 5_000);
        // A late heartbeat of the first start changes nothing.
        hear(&mut h, "1f", T0);
        h.advance(back_at - 5_000);
        let opts = ConnectOpts::default().session_expiry(300);
        let previous = Some((record_of(b"a 1f"), 19));
        let (_, ack) = connect_claimed(&mut h, "m", opts, Some(20), previous);
        assert_eq!(ack.session_present, resumed, "restarted, back at {back_at}");
    }
    // Not ended after all: a silent a is heard again with the same start (and goes on); or
    // b, cut from NATS for 40 s, heard nobody, which says nothing of the others, and a's
    // session is taken over as soon as NATS is back. Either way it resumes.
    for cut in [false, true] {
        let mut h = Harness::with_config(clustered("b"));
        h.input(Input::WallClock { unix_ms: T0 });
        h.input(Input::ClusterFeedStart { seq: 2 });
        h.advance(0);
        hear(&mut h, "1f", T0);
        if cut {
            h.input(Input::ClusterLink { up: false });
            h.advance(40_000);
            h.input(Input::ClusterLink { up: true });
            h.advance(500);
        } else {
            h.advance(14_000);
            // Heard again, every 3 s from then on.
            for _ in 0..15 {
                h.advance(1_000);
                hear(&mut h, "1f", T0);
                h.advance(2_000);
            }
        }
        let opts = ConnectOpts::default().session_expiry(300);
        let previous = Some((record_of(b"a 1f"), 19));
        let (_, ack) = connect_claimed(&mut h, "m", opts, Some(20), previous);
        assert!(ack.session_present, "cut {cut}: a had not ended");
    }
}

#[test]
fn a_record_that_cannot_resume_is_not_resumed() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::WallClock {
        unix_ms: 1_700_000_000_000,
    });
    h.input(Input::ClusterFeedStart { seq: 2 });
    let opts = || ConnectOpts::default().session_expiry(300);
    // An expired record, garbage, another client's record: each a new session.
    let stale = RecoveredSession {
        version: 5,
        expiry_secs: 1,
        disconnected_at_unix_ms: Some(0),
        ..Default::default()
    };
    let stale = SessionRecord {
        cursor: Some(1),
        session: stale,
        ..Default::default()
    };
    for (client_id, previous) in [
        ("c1", record::record_value(b"b 1f", "c1", &stale)),
        ("c2", Bytes::from_static(b"b 1f\n\x07garbage")),
        ("c3", record_of("b", "other-client", &["x"], 1)),
    ] {
        let (_, ack) = connect_claimed(&mut h, client_id, opts(), Some(5), Some((previous, 4)));
        assert!(!ack.session_present, "{client_id}");
    }
    assert!(
        !h.log
            .iter()
            .any(|o| matches!(o, Output::ClusterCatchUp { .. }))
    );
    // Without a claim a persistent session is refused: 0x88 (server unavailable).
    let (conn, ack) = connect_claimed(&mut h, "d", opts(), None, None);
    assert_eq!(ack.code, 0x88);
    assert!(h.is_closed(conn));
}

#[test]
fn a_persistent_sessions_record_is_bounded() {
    let mut config = clustered("a");
    config.cluster.max_subscriptions = 1000;
    let mut h = Harness::with_config(config);
    let opts = ConnectOpts::default().session_expiry(300);
    let (c, _) = connect_claimed(&mut h, "big", opts, Some(3), None);
    let long = "l".repeat(1900);
    let mut granted = 0;
    let mut refused = None;
    for i in 0..200 {
        let ack = h.subscribe(c, &format!("{long}/{i}"), QoS::AtLeastOnce);
        if ack.reasons[0].0 == 0x97 {
            refused = Some(i);
            break;
        }
        granted += 1;
    }
    // About 256 KiB of filters, then 0x97 (quota exceeded).
    assert_eq!(refused, Some(granted));
    assert!((120..140).contains(&granted), "{granted}");
    // A clean session has no record, and no such bound.
    let d = h.client("small", V5);
    for i in 0..150 {
        let ack = h.subscribe(d, &format!("{long}/{i}"), QoS::AtLeastOnce);
        assert_eq!(ack.reasons[0].0, 1, "{i}");
    }
}

#[test]
fn a_session_another_node_took_meanwhile_resumes_from_that_nodes_record() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 9 });
    let opts = || ConnectOpts::default().session_expiry(300);
    let (c, _) = connect_claimed(&mut h, "s", opts(), Some(5), None);
    h.subscribe(c, "old/x", QoS::AtLeastOnce);
    h.disconnect(c, 0);
    // The client went to node b, subscribed there, and comes back here: the claim replaces
    // node b's entry, so what this node kept is stale.
    let mark = h.log.len();
    let previous = record_of("b", "s", &["new/y"], 9);
    let (c, ack) = connect_claimed(&mut h, "s", opts(), Some(12), Some((previous, 11)));
    assert!(ack.session_present);
    // Nothing of the old claim is released (it is node b's entry now).
    assert!(releases(&h, mark).is_empty());
    let (_, _, _, rec) = records(&h, mark, "s").last().cloned().expect("a record");
    let filters: Vec<&String> = rec.session.subscriptions.keys().collect();
    assert_eq!(filters, ["new/y"]);
    // The old filter is gone from this node, the new one taken.
    for (seq, topic, text) in [(10, "old/x", "stale"), (11, "new/y", "fresh")] {
        let (subject, payload) = from_stream("b", seq, topic, text, QoS::AtLeastOnce);
        h.input(Input::ClusterFeedMessage {
            seq,
            subject,
            payload,
        });
    }
    assert_eq!(h.payloads(c), ["fresh"]);
    // A kick for a revision before this claim (node b's, late) leaves it alone.
    kick(&mut h, "11 s");
    assert!(!h.is_closed(c));
}

#[test]
fn a_record_write_that_fails_is_tried_again_at_the_next_interval() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 1 });
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let (c, _) = connect_claimed(&mut h, "r", opts, Some(4), None);
    let (token, _, revision, _) = records(&h, mark, "r").pop().expect("a record");
    assert_eq!(revision, 4);
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Failed,
    });
    // Nothing more until the interval; then the same revision again.
    let mark = h.log.len();
    h.advance(500);
    assert!(records(&h, mark, "r").is_empty());
    h.advance(500);
    let (token, _, revision, _) = records(&h, mark, "r").pop().expect("written again");
    assert_eq!(revision, 4);
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(6),
    });
    // A change is written at once, over the revision last written.
    let mark = h.log.len();
    h.subscribe(c, "q", QoS::AtLeastOnce);
    let (token, _, revision, rec) = records(&h, mark, "r").pop().expect("the change");
    assert_eq!(revision, 6);
    assert!(rec.session.subscriptions.contains_key("q"));
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(7),
    });
    // A session that ends releases its claim at the revision last written.
    let mark = h.log.len();
    h.disconnect_with(
        c,
        0,
        Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    );
    assert_eq!(releases(&h, mark), [("r".to_owned(), 7)]);
    let text = scrape(&mut h);
    assert_eq!(
        value(&text, "tidemq_cluster_session_records_failed_total"),
        1.0
    );
}

/// The catch-up reads asked since `from`: (token, from, to).
fn catch_ups(h: &Harness, from: usize) -> Vec<(u64, u64, u64)> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterCatchUp { token, from, to } => Some((*token, *from, *to)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_catch_up_waits_for_the_feed_and_goes_on_after_a_failure() {
    let mut h = Harness::with_config(clustered("a"));
    // Resumed before the node feed has started: the read waits for it.
    let previous = record_of("b", "w", &["w/+"], 2);
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let (c, ack) = connect_claimed(&mut h, "w", opts, Some(8), Some((previous, 7)));
    assert!(ack.session_present);
    assert!(catch_ups(&h, mark).is_empty());
    h.input(Input::ClusterFeedStart { seq: 5 });
    let (token, from, to) = catch_ups(&h, mark)
        .pop()
        .expect("a catch-up once the feed starts");
    assert_eq!((from, to), (3, 5));
    // One message read, then the read fails: the next starts after it.
    catch_up_message(&mut h, token, 3, "w/1", "three");
    let mark = h.log.len();
    h.input(Input::ClusterCatchUpDone { token, ok: false });
    let (mut token, from, to) = catch_ups(&h, mark).pop().expect("tried again");
    assert_eq!((from, to), (4, 5));
    // Failed twice more: tried again at the next records tick, still from 4.
    for retried in [true, false] {
        let mark = h.log.len();
        h.input(Input::ClusterCatchUpDone { token, ok: false });
        let again = catch_ups(&h, mark).pop();
        assert_eq!(again.is_some(), retried);
        token = again.map_or(token, |a| a.0);
    }
    let mark = h.log.len();
    h.advance(1000);
    let (token, from, to) = catch_ups(&h, mark).pop().expect("tried again at the tick");
    assert_eq!((from, to), (4, 5));
    catch_up_message(&mut h, token, 5, "w/2", "five");
    h.input(Input::ClusterCatchUpDone { token, ok: true });
    let texts = payloads(&mut h, c);
    assert_eq!(texts, ["three", "five"]);
}

#[test]
fn a_cursor_does_not_pass_this_nodes_own_messages_not_yet_routed() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 10 });
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let (c, _) = connect_claimed(&mut h, "sub", opts, Some(3), None);
    h.subscribe(c, "own/x", QoS::AtLeastOnce);
    let mut rev = 100;
    answer_records(&mut h, mark, "sub", &mut rev);
    // A local QoS 1 publish: JetStream takes it at 11, the answer is late; the feed reads
    // it (its own, passed over) and 12 meanwhile.
    let p = h.client("p", V5);
    let mark = h.log.len();
    h.publish(p, "own/x", "late", QoS::AtLeastOnce, false);
    let token = durable_tokens(&h, mark)[0];
    for seq in [11, 12] {
        let (subject, payload) = from_stream("b", seq, "other/y", "x", QoS::AtLeastOnce);
        h.input(Input::ClusterFeedMessage {
            seq,
            subject,
            payload,
        });
    }
    let mark = h.log.len();
    h.advance(1000);
    let written = records(&h, mark, "sub");
    let cursors: Vec<Option<u64>> = written.iter().map(|r| r.3.cursor).collect();
    assert!(
        cursors.iter().all(|c| *c <= Some(10)),
        "a cursor passed the unrouted message: {cursors:?}"
    );
    // Once answered it is routed; the cursor moves on when the client has it.
    h.input(Input::ClusterDurableDone {
        token,
        seq: Some(11),
    });
    let texts = payloads(&mut h, c);
    assert_eq!(texts, ["late"]);
    answer_records(&mut h, mark, "sub", &mut rev);
    let mark = h.log.len();
    h.advance(1000);
    let cursor = records(&h, mark, "sub").last().and_then(|r| r.3.cursor);
    assert_eq!(cursor, Some(12));
}

#[test]
fn a_record_taken_for_a_connect_that_went_stays_here_as_an_offline_session() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 4 });
    let conn = h.accept();
    let mark = h.log.len();
    let opts = ConnectOpts::default().session_expiry(300);
    assert!(h.connect_on(conn, "gone", V5, false, opts).is_none());
    let (token, _, _) = claims(&h, mark).pop().expect("a claim");
    // The connection goes before the claim is answered; the claim took node b's record.
    h.close(conn);
    let mark = h.log.len();
    h.input(Input::ClusterClaimed {
        token,
        revision: Some(30),
        previous: Some((record_of("b", "gone", &["g/+"], 2), 29)),
    });
    // Not released: the session is here now, offline, with its subscription, caught up.
    assert!(releases(&h, mark).is_empty());
    let (_, _, revision, rec) = records(&h, mark, "gone").pop().expect("its record");
    assert_eq!(revision, 30);
    assert!(rec.session.subscriptions.contains_key("g/+"));
    assert!(rec.session.disconnected_at_unix_ms.is_some());
    let (token, from, to) = catch_ups(&h, mark).pop().expect("a catch-up");
    assert_eq!((from, to), (3, 4));
    catch_up_message(&mut h, token, 3, "g/1", "kept");
    h.input(Input::ClusterCatchUpDone { token, ok: true });
    // The client comes back: its session, and what it was owed.
    let opts = ConnectOpts::default().session_expiry(300);
    let conn = h.accept();
    let mark = h.log.len();
    assert!(h.connect_on(conn, "gone", V5, false, opts).is_none());
    let (token, _, _) = claims(&h, mark).pop().expect("a claim");
    let (_, ack, rest) = connect_claimed_with(&mut h, conn, token, Some(32), None);
    assert!(ack.session_present);
    let texts: Vec<&Bytes> = rest
        .iter()
        .filter_map(|p| match p {
            tidemq_core::codec::Packet::Publish(p) => Some(&p.payload),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["kept"]);
}

#[test]
fn of_two_connects_on_one_node_the_newer_claim_keeps_the_session() {
    let mut h = Harness::with_config(clustered("a"));
    let opts = || ConnectOpts::default().session_expiry(300);
    let (older, newer) = (h.accept(), h.accept());
    let mark = h.log.len();
    assert!(h.connect_on(older, "twice", V5, false, opts()).is_none());
    assert!(h.connect_on(newer, "twice", V5, false, opts()).is_none());
    let made = claims(&h, mark);
    assert_eq!(made.len(), 2);
    // The newer claim (written later, revision 9) is answered first.
    h.input(Input::ClusterClaimed {
        token: made[1].0,
        revision: Some(9),
        previous: Some((Bytes::from(made[0].2.clone()), 8)),
    });
    h.input(Input::ClusterClaimed {
        token: made[0].0,
        revision: Some(8),
        previous: None,
    });
    assert!(!h.is_closed(newer), "the newer connection stays");
    assert!(h.is_closed(older), "the older one is refused");
    // A clean_start=0 CONNECT without expiry waits for its claim too (it may resume).
    let conn = h.accept();
    assert!(
        h.connect_on(conn, "resumer", V5, false, ConnectOpts::default())
            .is_none()
    );
}

/// Writes answered for every record write since `from`, at increasing revisions from `rev`.
fn answer_records(h: &mut Harness, from: usize, client_id: &str, rev: &mut u64) {
    answer_records_of(h, "a", from, client_id, rev);
}

/// [`answer_records`] for the records `node` writes.
fn answer_records_of(h: &mut Harness, node: &str, from: usize, client_id: &str, rev: &mut u64) {
    let mut from = from;
    loop {
        let written = records_of(h, node, from, client_id);
        from = h.log.len();
        if written.is_empty() {
            return;
        }
        for (token, ..) in written {
            *rev += 1;
            h.input(Input::ClusterRecorded {
                token,
                answer: tidemq_core::RecordAnswer::Written(*rev),
            });
        }
    }
}

/// A persistent session's client `client_id` connected once the feed has started at 1, its
/// record writes answered; the revision last written.
fn persistent(h: &mut Harness, client_id: &str) -> (tidemq_core::ConnId, u64) {
    h.input(Input::ClusterFeedStart { seq: 1 });
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let (c, _) = connect_claimed(h, client_id, opts, Some(4), None);
    let mut rev = 4;
    answer_records(h, mark, client_id, &mut rev);
    (c, rev)
}

/// A QoS 2 message to a persistent session goes out only once its record holds its packet id
/// and sequence, and its PUBREL once the record holds its released stage; a finished one
/// stays in the record until the cursor passes it.
#[test]
fn a_persistent_sessions_qos2_packets_wait_for_its_record() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mut rev) = persistent(&mut h, "q");
    let mark = h.log.len();
    h.subscribe(c, "x/+", QoS::ExactlyOnce);
    answer_records(&mut h, mark, "q", &mut rev);
    let mark = h.log.len();
    feed_at_qos(&mut h, 2, "x/1", "two", QoS::ExactlyOnce);
    feed_at_qos(&mut h, 3, "x/1", "three", QoS::ExactlyOnce);
    assert!(h.recv(c).is_empty(), "no PUBLISH before the record has it");
    let (token, _, _, rec) = records(&h, mark, "q").pop().expect("a record write");
    assert_eq!(
        rec.qos2_window.len(),
        1,
        "the write on its way carries the first"
    );
    let (pid2, &(seq, released)) = rec.qos2_window.iter().next().unwrap();
    assert_eq!((seq, released), (2, false));
    let mark = h.log.len();
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    let first = h.publishes(c);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].packet_id, first[0].dup), (Some(*pid2), false));
    // The second came while the first write was on its way: the next write carries it.
    let (token, _, _, rec) = records(&h, mark, "q").pop().expect("the next write");
    let pid3 = rec
        .qos2_window
        .iter()
        .find(|(_, (seq, _))| *seq == 3)
        .map(|(pid, _)| *pid)
        .expect("the second in the window");
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    assert_eq!(h.publishes(c)[0].payload, "three");
    // PUBREC of the second: its PUBREL waits for the released stage to be written.
    let mark = h.log.len();
    h.pubrec(c, pid3);
    assert!(h.recv(c).is_empty(), "no PUBREL before the record has it");
    let (token, _, _, rec) = records(&h, mark, "q").pop().expect("the released stage");
    assert_eq!(rec.qos2_window.get(&pid3), Some(&(3, true)));
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    assert!(matches!(h.recv_one(c), Packet::PubRel(a) if a.packet_id == pid3));
    h.pubcomp(c, pid3);
    // Finished past the cursor (the first is still in flight): kept as finished.
    let mark = h.log.len();
    h.advance(1000);
    let (token, _, _, rec) = records(&h, mark, "q").pop().expect("a tick's write");
    assert_eq!(rec.cursor, Some(1), "not past the first, still in flight");
    assert_eq!(rec.qos2_done.iter().copied().collect::<Vec<_>>(), [3]);
    assert_eq!(rec.qos2_window.keys().copied().collect::<Vec<_>>(), [*pid2]);
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    // Once the first is done too, the cursor passes both and the marks go.
    let mark = h.log.len();
    h.pubrec(c, *pid2);
    answer_records(&mut h, mark, "q", &mut rev);
    assert!(matches!(h.recv_one(c), Packet::PubRel(a) if a.packet_id == *pid2));
    h.pubcomp(c, *pid2);
    let mark = h.log.len();
    h.advance(1000);
    let (_, _, _, rec) = records(&h, mark, "q").pop().expect("a tick's write");
    assert_eq!(rec.cursor, Some(3));
    assert!(rec.qos2_done.is_empty() && rec.qos2_window.is_empty());
}

/// A session resumed from another node's record with QoS 2 messages in flight sends none of
/// them twice: a PUBLISH stage one goes out again with its packet id and DUP once the
/// stream brings its message, a released one as PUBREL, and finished ones not at all.
#[test]
fn a_moved_session_sends_no_qos2_message_twice() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 8 });
    let record = SessionRecord {
        qos2_window: [(5, (4, false)), (6, (5, true)), (9, (7, false))].into(),
        qos2_done: [6].into(),
        ..record_at(2, 3)
    };
    let previous = record::record_value(b"b 1f", "m", &record);
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let conn = h.accept();
    h.connect_on(conn, "m", V5, false, opts);
    let (token, _, _) = claims(&h, mark).pop().expect("a claim");
    let (c, ack, after) = connect_claimed_with(&mut h, conn, token, Some(20), Some((previous, 19)));
    assert!(ack.session_present);
    // Resent in order once the stream brings the first one's message.
    assert!(after.is_empty(), "{after:?}");
    let (read, _, _) = catch_ups(&h, mark).pop().expect("a catch-up read");
    for seq in 4..=8 {
        let (subject, payload) = from_stream("b", seq, "x/1", &format!("m{seq}"), QoS::ExactlyOnce);
        h.input(Input::ClusterCatchUpMessage {
            token: read,
            seq,
            subject,
            payload,
        });
    }
    h.input(Input::ClusterCatchUpDone {
        token: read,
        ok: true,
    });
    let mut rev = 20;
    answer_records(&mut h, mark, "m", &mut rev);
    let got: Vec<(Option<u16>, bool, Bytes)> = h
        .recv(c)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.packet_id, p.dup, p.payload),
            Packet::PubRel(a) => (Some(a.packet_id), false, Bytes::from("PUBREL")),
            other => panic!("{other:?}"),
        })
        .collect();
    // 4 and 7 again under their ids, with DUP; 5 released (its PUBREL again) and 6 finished,
    // neither sent as a message; 8 new.
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0], (Some(5), true, Bytes::from("m4")));
    assert_eq!(got[1], (Some(6), false, Bytes::from("PUBREL")));
    assert_eq!(got[2], (Some(9), true, Bytes::from("m7")));
    assert_eq!((got[3].1, &got[3].2), (false, &Bytes::from("m8")));
    assert!(
        ![5, 6, 9].contains(&got[3].0.unwrap()),
        "a new message takes a free id"
    );
}

/// An entry a session resumed with whose message the stream no longer has (expired, or cut
/// by the stream's limits) goes on to PUBREL once the stream is read past it (a client that
/// has the message finishes its flow), and what waited behind it goes out.
#[test]
fn a_resumed_qos2_entry_whose_message_is_gone_is_released() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 6 });
    let record = SessionRecord {
        qos2_window: [(5, (4, false))].into(),
        ..record_at(1, 3)
    };
    let previous = record::record_value(b"b 1f", "g", &record);
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    let (c, _) = connect_claimed(&mut h, "g", opts, Some(20), Some((previous, 19)));
    let (read, _, _) = catch_ups(&h, mark).pop().expect("a catch-up read");
    catch_up_message(&mut h, read, 5, "x/1", "five");
    h.input(Input::ClusterCatchUpDone {
        token: read,
        ok: true,
    });
    assert!(
        h.recv(c).is_empty(),
        "nothing passes the entry waiting for its message"
    );
    h.advance(1000);
    let mut rev = 20;
    answer_records(&mut h, mark, "g", &mut rev);
    let got = h.recv(c);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubRel(a) if a.packet_id == 5)),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(p) if p.payload == "five")),
        "{got:?}"
    );
}

/// Client `c` sends a QoS 2 PUBLISH with packet id `pid` on topic `t`.
fn send_qos2(h: &mut Harness, c: tidemq_core::ConnId, pid: u16, text: &'static str, dup: bool) {
    let p = tidemq_core::codec::Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: Some(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(text.as_bytes()),
    };
    h.send(c, &Packet::Publish(p));
}

/// The durable writes asked for since `from`: (token, msg id).
fn durable_writes(h: &Harness, from: usize) -> Vec<(u64, String)> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterDurable { token, msg_id, .. } => Some((*token, msg_id.clone())),
            _ => None,
        })
        .collect()
}

/// A persistent session's QoS 2 PUBLISH is in its record, with the dedup id its stream write
/// carries, before that write is made; its PUBCOMP waits for a record without the id.
#[test]
fn a_persistent_sessions_qos2_publish_is_recorded_before_it_is_stored() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mut rev) = persistent(&mut h, "p");
    let mark = h.log.len();
    send_qos2(&mut h, c, 9, "once", false);
    assert!(
        durable_writes(&h, mark).is_empty(),
        "no write before the record"
    );
    let (token, _, _, rec) = records(&h, mark, "p").pop().expect("a record write");
    let stamp = rec
        .qos2_inbound
        .get(&9)
        .cloned()
        .expect("the id in the record");
    assert_eq!(stamp.node, "a");
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    let writes = durable_writes(&h, mark);
    let msg_id = format!("a.{}.{}", stamp.epoch, stamp.seq);
    assert_eq!(writes.iter().map(|w| &w.1).collect::<Vec<_>>(), [&msg_id]);
    assert!(h.recv(c).is_empty(), "no PUBREC before JetStream has it");
    h.input(Input::ClusterDurableDone {
        token: writes[0].0,
        seq: Some(2),
    });
    assert!(matches!(h.recv_one(c), Packet::PubRec(a) if a.packet_id == 9));
    // PUBREL: the PUBCOMP waits for a record without the id (a PUBREL again meanwhile too).
    let mark = h.log.len();
    h.pubrel(c, 9);
    h.pubrel(c, 9);
    assert!(
        h.recv(c).is_empty(),
        "no PUBCOMP before the record lost the id"
    );
    let (token, _, _, rec) = records(&h, mark, "p").pop().expect("a record write");
    assert!(rec.qos2_inbound.is_empty());
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    assert!(matches!(h.recv_one(c), Packet::PubComp(a) if a.packet_id == 9 && a.reason.0 == 0));
}

/// Once JetStream confirmed a persistent session's QoS 2 message, the next record marks its
/// id stored; the node the session moves to then answers a PUBLISH again with that id without
/// writing it: the client may come back after the stream's `duplicate_window`, when a write
/// again would be stored twice.
#[test]
fn a_confirmed_qos2_publish_is_marked_stored_and_not_written_again_after_a_move() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mut rev) = persistent(&mut h, "p");
    let mark = h.log.len();
    send_qos2(&mut h, c, 9, "once", false);
    let (token, _, _, rec) = records(&h, mark, "p").pop().expect("a record write");
    assert!(rec.qos2_inbound_stored.is_empty(), "not stored yet");
    rev += 1;
    h.input(Input::ClusterRecorded {
        token,
        answer: tidemq_core::RecordAnswer::Written(rev),
    });
    let writes = durable_writes(&h, mark);
    h.input(Input::ClusterDurableDone {
        token: writes[0].0,
        seq: Some(2),
    });
    assert!(matches!(h.recv_one(c), Packet::PubRec(a) if a.packet_id == 9));
    // The client is gone before its PUBREL; the records tick writes the mark.
    let mark = h.log.len();
    h.advance(1000);
    let (_, _, _, rec) = records(&h, mark, "p")
        .pop()
        .expect("the records tick writes the mark");
    assert_eq!(rec.qos2_inbound.keys().copied().collect::<Vec<_>>(), [9]);
    assert_eq!(
        rec.qos2_inbound_stored.iter().copied().collect::<Vec<_>>(),
        [9]
    );

    // Node b resumes the session from that record: the PUBLISH again is a resend.
    let mut b = Harness::with_config(clustered("b"));
    b.input(Input::ClusterFeedStart { seq: 6 });
    let previous = record::record_value(
        b"a 1f",
        "p",
        &SessionRecord {
            cursor: Some(3),
            ..rec
        },
    );
    let opts = ConnectOpts::default().session_expiry(300);
    let connected = b.log.len();
    let (c, ack) = connect_claimed(&mut b, "p", opts, Some(20), Some((previous, 19)));
    assert!(ack.session_present);
    let mark = b.log.len();
    send_qos2(&mut b, c, 9, "once", true);
    assert!(durable_writes(&b, mark).is_empty(), "no write again");
    assert!(matches!(b.recv_one(c), Packet::PubRec(a) if a.packet_id == 9 && a.reason.0 == 0));
    b.pubrel(c, 9);
    answer_records_of(&mut b, "b", connected, "p", &mut 20);
    let got = b.recv(c);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubComp(a) if a.packet_id == 9 && a.reason.0 == 0)),
        "{got:?}"
    );
}

/// Node b recorded a client's QoS 2 id (and maybe stored its message) when the client moved
/// here: a PUBLISH again with that id is written under the dedup id b recorded (JetStream
/// stores it once) and not routed here (the feed brings it), and its PUBREL is answered.
#[test]
fn a_qos2_publish_sent_again_after_a_move_is_stored_once() {
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::ClusterFeedStart { seq: 6 });
    let sub = h.client("sub", V5);
    h.subscribe(sub, "t", QoS::ExactlyOnce);
    let stamp = Stamp {
        node: "b".to_owned(),
        epoch: 0x1f,
        seq: 40,
    };
    let record = SessionRecord {
        cursor: Some(3),
        qos2_inbound: [(9, stamp.clone()), (10, Stamp { seq: 41, ..stamp })].into(),
        session: RecoveredSession {
            version: 5,
            expiry_secs: 300,
            ..Default::default()
        },
        ..Default::default()
    };
    let previous = record::record_value(b"b 1f", "m", &record);
    let opts = ConnectOpts::default().session_expiry(300);
    let connected = h.log.len();
    let (c, ack) = connect_claimed(&mut h, "m", opts, Some(20), Some((previous, 19)));
    assert!(ack.session_present);
    let mark = h.log.len();
    send_qos2(&mut h, c, 9, "again", true);
    let writes = durable_writes(&h, mark);
    assert_eq!(
        writes.iter().map(|w| w.1.as_str()).collect::<Vec<_>>(),
        ["b.31.40"]
    );
    h.input(Input::ClusterDurableDone {
        token: writes[0].0,
        seq: Some(40),
    });
    assert!(matches!(h.recv_one(c), Packet::PubRec(a) if a.packet_id == 9 && a.reason.0 == 0));
    assert!(
        h.recv(sub).is_empty(),
        "not routed here: the feed brings it"
    );
    // A PUBLISH again now is the same message, written no more.
    let mark = h.log.len();
    send_qos2(&mut h, c, 9, "again", true);
    assert!(durable_writes(&h, mark).is_empty());
    assert!(matches!(h.recv_one(c), Packet::PubRec(a) if a.packet_id == 9));
    // PUBREL for the other id (its PUBREC came from b): PUBCOMP once recorded, not 0x92.
    h.pubrel(c, 10);
    let mut rev = 20;
    answer_records(&mut h, connected, "m", &mut rev);
    let got = h.recv(c);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubComp(a) if a.packet_id == 10 && a.reason.0 == 0)),
        "{got:?}"
    );
}

/// A session that moved here publishes: its messages are acknowledged when JetStream has
/// them but routed here only once the feed has read up to them, behind what it published
/// through its last node.
#[test]
fn a_moved_publishers_messages_are_routed_behind_what_its_last_node_wrote() {
    let mut h = Harness::with_config(clustered("a"));
    let sub = h.client("sub", V5);
    h.subscribe(sub, "x/+", QoS::AtLeastOnce);
    let (c, _) = resume_roam(&mut h);
    let mark = h.log.len();
    let pid = h.publish(c, "x/1", "newer", QoS::AtLeastOnce, false);
    let (token, _) = durable_writes(&h, mark).pop().expect("a durable write");
    h.input(Input::ClusterDurableDone {
        token,
        seq: Some(9),
    });
    assert!(
        h.recv(c)
            .iter()
            .any(|p| matches!(p, Packet::PubAck(a) if Some(a.packet_id) == pid)),
        "acknowledged once JetStream has it"
    );
    assert!(h.recv(sub).is_empty(), "not before the feed reads up to it");
    // The feed brings what the client published through node b, then passes 9.
    feed_message(&mut h, 8, "x/1", "older");
    feed_message(&mut h, 10, "y/1", "other");
    assert_eq!(payloads(&mut h, sub), ["older", "newer"]);
    // Nothing of it waits any more: the next goes at once.
    let mark = h.log.len();
    h.publish(c, "x/1", "next", QoS::AtLeastOnce, false);
    let (token, _) = durable_writes(&h, mark).pop().expect("a durable write");
    h.input(Input::ClusterDurableDone {
        token,
        seq: Some(11),
    });
    assert_eq!(payloads(&mut h, sub), ["next"]);
}

/// A QoS 2 PUBLISH sent again on a new connection while its first write is still on its way
/// is written under the same dedup id (JetStream keeps it once), not as a new message.
#[test]
fn a_qos2_publish_sent_again_before_its_write_is_answered_keeps_its_dedup_id() {
    let mut h = Harness::with_config(clustered("a"));
    let (c, mut rev) = persistent(&mut h, "p");
    let opts = ConnectOpts::default().session_expiry(300);
    let mark = h.log.len();
    send_qos2(&mut h, c, 9, "once", false);
    answer_records(&mut h, mark, "p", &mut rev);
    let first = durable_writes(&h, mark);
    assert_eq!(first.len(), 1, "{first:?}");
    // The connection drops before JetStream answers; the client comes back and sends it again.
    h.close(c);
    let (c, ack) = connect_claimed(&mut h, "p", opts, Some(rev + 1), None);
    assert!(ack.session_present);
    let mark = h.log.len();
    send_qos2(&mut h, c, 9, "once", true);
    let again = durable_writes(&h, mark);
    assert_eq!(
        again.iter().map(|w| &w.1).collect::<Vec<_>>(),
        [&first[0].1],
        "written again under the first write's dedup id"
    );
}

/// The scans of the sessions bucket asked since `from`, by token.
fn scans(h: &Harness, from: usize) -> Vec<u64> {
    cluster_outputs(h, from)
        .into_iter()
        .filter_map(|o| match o {
            Output::ClusterScan { token } => Some(token),
            _ => None,
        })
        .collect()
}

#[test]
fn the_reaper_deletes_what_nobody_would_resume() {
    const T0: u64 = 1_700_000_000_000;
    let record_of = |line: &[u8], client_id: &str, expiry_secs: u32, gone: Option<u64>| {
        let rec = SessionRecord {
            cursor: Some(1),
            session: RecoveredSession {
                version: 5,
                expiry_secs,
                disconnected_at_unix_ms: gone,
                ..Default::default()
            },
            ..Default::default()
        };
        record::record_value(line, client_id, &rec)
    };
    let beat = |node: &str, epoch: &str, started_at: u64| {
        let beat = Heartbeat {
            node: node.to_owned(),
            epoch: epoch.to_owned(),
            connections: 1,
            started_at,
            version: "9.9.9".to_owned(),
        };
        Input::ClusterMessage {
            sid: HEARTBEAT_SID,
            subject: format!("tmq.h.{node}"),
            payload: beat.encode(),
        }
    };
    // Node a scans (the lowest name). b restarts at 5 s and is heard from then on; d is
    // heard once and falls silent (forgotten at 13,332 ms, gone by 16,665).
    let mut h = Harness::with_config(clustered("a"));
    h.input(Input::WallClock { unix_ms: T0 });
    h.input(Input::ClusterFeedStart { seq: 2 });
    h.advance(0);
    h.input(beat("b", "1f", T0));
    h.input(beat("d", "1", T0));
    h.advance(5_000);
    let until = |h: &mut Harness, at: u64| {
        while h.now.0 < at {
            h.input(beat("b", "20", T0 + 5_000));
            h.advance((at - h.now.0).min(3_000));
        }
    };
    let entries = vec![
        // b's first start, 90 s from its end at 5 s: expired from 95 s.
        ("m1".to_owned(), record_of(b"b 1f", "m1", 90, None), 11),
        // A session that keeps no record, and a claim alone: nobody resumes them.
        ("m2".to_owned(), record_of(b"b 1f", "m2", 0, None), 12),
        ("m3".to_owned(), Bytes::from_static(b"b 1f"), 13),
        // z's end went unseen: its entries stay, whatever their times say.
        ("m4".to_owned(), record_of(b"z 1", "m4", 1, Some(T0)), 14),
        ("m5".to_owned(), record_of(b"z 1", "m5", 1, None), 15),
        // a's own earlier start: ended when this one began (T0); 150 s.
        ("m6".to_owned(), record_of(b"a 5", "m6", 150, None), 16),
        // Never expires; not a client id's key; unreadable; b's live start.
        (
            "m7".to_owned(),
            record_of(b"b 1f", "m7", u32::MAX, None),
            17,
        ),
        ("x.y".to_owned(), record_of(b"b 1f", "x.y", 0, None), 18),
        (
            "m8".to_owned(),
            Bytes::from_static(b"b 1f\n\x09garbage"),
            19,
        ),
        ("m9".to_owned(), Bytes::from_static(b"b 20"), 20),
        // d is only silent: its claim waits five minutes past its end (316,665 ms).
        ("m10".to_owned(), Bytes::from_static(b"d 1"), 21),
    ];
    let want = |keys: &[(&str, u64)]| -> Vec<(String, u64)> {
        let mut w: Vec<_> = keys.iter().map(|(k, r)| (k.to_string(), *r)).collect();
        w.sort();
        w
    };
    // The 18th heartbeat, at 56,661 ms, is the first scan's; then one a minute.
    let mark = h.log.len();
    until(&mut h, 56_000);
    assert!(
        scans(&h, mark).is_empty(),
        "scanned before its 18th heartbeat"
    );
    let first = [("m2", 12), ("m3", 13)];
    let second = [("m1", 11), ("m2", 12), ("m3", 13)];
    let third = [("m1", 11), ("m2", 12), ("m3", 13), ("m6", 16)];
    let sixth = [("m1", 11), ("m2", 12), ("m3", 13), ("m6", 16), ("m10", 21)];
    for (at, reaped) in [
        (56_700, &first[..]),
        (116_700, &second[..]),
        (176_700, &third[..]),
        (236_700, &third[..]),
        (296_700, &third[..]),
        (356_700, &sixth[..]),
    ] {
        let mark = h.log.len();
        until(&mut h, at);
        let [token] = scans(&h, mark)[..] else {
            panic!("no scan by {at}: {:?}", scans(&h, mark));
        };
        // In two batches.
        let mut batch = entries.clone();
        let rest = batch.split_off(4);
        let mark = h.log.len();
        h.input(Input::ClusterScanned {
            token,
            entries: batch,
            done: false,
        });
        h.input(Input::ClusterScanned {
            token,
            entries: rest,
            done: true,
        });
        let mut got = releases(&h, mark);
        got.sort();
        assert_eq!(got, want(reaped), "at {at}");
        // A late batch of a finished scan is not taken.
        let mark = h.log.len();
        h.input(Input::ClusterScanned {
            token,
            entries: entries.clone(),
            done: true,
        });
        assert!(releases(&h, mark).is_empty());
    }
    assert_eq!(
        value_of(&mut h, "tidemq_cluster_records_reaped_total"),
        22.0
    );
}

#[test]
fn only_the_live_node_with_the_lowest_name_scans() {
    let mut h = Harness::with_config(clustered("c"));
    h.input(Input::WallClock {
        unix_ms: 1_700_000_000_000,
    });
    h.input(Input::ClusterFeedStart { seq: 2 });
    h.advance(0);
    let beat = Heartbeat {
        node: "b".to_owned(),
        epoch: "1".to_owned(),
        connections: 0,
        started_at: 0,
        version: "9.9.9".to_owned(),
    };
    let mark = h.log.len();
    // b, lower, is heard every 3 s for a minute: c never scans.
    for _ in 0..20 {
        h.input(Input::ClusterMessage {
            sid: HEARTBEAT_SID,
            subject: "tmq.h.b".to_owned(),
            payload: beat.encode(),
        });
        h.advance(3_000);
    }
    assert!(scans(&h, mark).is_empty());
    // b falls silent: forgotten within a ttl and a heartbeat, then c is the lowest.
    h.advance(14_000);
    assert_eq!(scans(&h, mark).len(), 1);
    // Cut from NATS past its next scan's time: it does not know who lives, and scans only a
    // ttl after NATS is back.
    h.input(Input::ClusterLink { up: false });
    let mark = h.log.len();
    h.advance(70_000);
    h.input(Input::ClusterLink { up: true });
    h.advance(9_000);
    assert!(scans(&h, mark).is_empty());
    h.advance(5_000);
    assert_eq!(scans(&h, mark).len(), 1);
}
