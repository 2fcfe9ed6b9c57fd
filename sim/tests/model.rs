//! Model-based property test: subscriptions, the retained store and session state of the
//! core against a plain reference model, over random operation sequences.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tidemq_core::codec::{
    Ack, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    ReasonOnly, Subscribe, SubscriptionOptions, Unsubscribe, decode_packet, encode_packet,
};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};
use tidemq_sim::oracle::topic_matches;

const FILTERS: &[&str] = &["a/b", "a/+", "a/#", "#", "+/b", "$x/#", "+/+", "b"];
const TOPICS: &[&str] = &["a/b", "a/c", "a", "b", "$x/b", "c/b", "a/b/c"];

#[derive(Debug, Clone)]
enum Op {
    Connect {
        c: usize,
        persistent: bool,
    },
    Disconnect {
        c: usize,
    },
    Sub {
        c: usize,
        f: usize,
        q: u8,
    },
    Unsub {
        c: usize,
        f: usize,
    },
    Pub {
        c: usize,
        t: usize,
        q: u8,
        retain: bool,
        empty: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, any::<bool>()).prop_map(|(c, persistent)| Op::Connect { c, persistent }),
        (0..3usize).prop_map(|c| Op::Disconnect { c }),
        (0..3usize, 0..FILTERS.len(), 0..2u8).prop_map(|(c, f, q)| Op::Sub { c, f, q }),
        (0..3usize, 0..FILTERS.len()).prop_map(|(c, f)| Op::Unsub { c, f }),
        (
            0..3usize,
            0..TOPICS.len(),
            0..2u8,
            any::<bool>(),
            prop::bool::weighted(0.2)
        )
            .prop_map(|(c, t, q, retain, empty)| Op::Pub {
                c,
                t,
                q,
                retain,
                empty
            }),
    ]
}

#[derive(Default)]
struct MSess {
    subs: BTreeMap<String, u8>,
    persistent: bool,
    /// QoS 1 messages waiting while offline: (topic, payload).
    queued: VecDeque<(String, Bytes)>,
}

struct Sut {
    broker: Broker,
    next_conn: u64,
    conns: BTreeMap<usize, u64>,
    rx: BTreeMap<u64, BytesMut>,
    seq: u64,
}

const LIMITS: DecodeLimits = DecodeLimits {
    max_packet_size: 1 << 20,
    max_user_properties: 64,
};

impl Sut {
    fn send(&mut self, conn: u64, p: &Packet) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        encode_packet(p, ProtocolVersion::V5, &mut buf).unwrap();
        self.input(Input::Received {
            conn: ConnId(conn),
            bytes: buf.freeze(),
        })
        .remove(&conn)
        .unwrap_or_default()
    }

    /// Feeds one input; returns packets per connection, acking QoS 1 at once.
    fn input(&mut self, input: Input) -> BTreeMap<u64, Vec<Packet>> {
        let mut got: BTreeMap<u64, Vec<Packet>> = BTreeMap::new();
        let mut pending = VecDeque::from([input]);
        while let Some(i) = pending.pop_front() {
            self.broker.handle_input(Instant(0), i);
            while let Some(out) = self.broker.poll_output() {
                if let Output::Transmit { conn, bytes } = out {
                    pending.push_back(Input::Written {
                        conn,
                        bytes: bytes.len(),
                    });
                    let rx = self.rx.entry(conn.0).or_default();
                    rx.extend_from_slice(&bytes);
                    while let Some(p) =
                        decode_packet(rx, Some(ProtocolVersion::V5), &LIMITS).unwrap()
                    {
                        if let Packet::Publish(p) = &p
                            && let Some(pid) = p.packet_id
                        {
                            let mut buf = BytesMut::new();
                            encode_packet(
                                &Packet::PubAck(Ack {
                                    packet_id: pid,
                                    reason: ReasonCode(0),
                                    properties: Properties::default(),
                                }),
                                ProtocolVersion::V5,
                                &mut buf,
                            )
                            .unwrap();
                            pending.push_back(Input::Received {
                                conn,
                                bytes: buf.freeze(),
                            });
                        }
                        got.entry(conn.0).or_default().push(p);
                    }
                }
            }
        }
        got
    }
}

fn publishes(ps: &[Packet]) -> Vec<(String, Bytes, u8, bool)> {
    ps.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone(), p.qos as u8, p.retain)),
            _ => None,
        })
        .collect()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = Config {
        sys_events: false,
        ..Config::default()
    };
    let mut sut = Sut {
        broker: Broker::new(config, 1, Instant(0)),
        next_conn: 1,
        conns: BTreeMap::new(),
        rx: BTreeMap::new(),
        seq: 0,
    };
    let mut sessions: BTreeMap<usize, MSess> = BTreeMap::new();
    let mut retained: BTreeMap<String, Bytes> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Connect { c, persistent } => {
                if sut.conns.contains_key(&c) {
                    continue;
                }
                let conn = sut.next_conn;
                sut.next_conn += 1;
                sut.input(Input::Accepted {
                    conn: ConnId(conn),
                    peer: "1.2.3.4:5".to_owned(),
                });
                let got = sut.send(
                    conn,
                    &Packet::Connect(Box::new(Connect {
                        version: ProtocolVersion::V5,
                        clean_start: !persistent,
                        keep_alive: 0,
                        properties: Properties {
                            session_expiry_interval: persistent.then_some(u32::MAX),
                            ..Properties::default()
                        },
                        client_id: format!("c{c}"),
                        will: None,
                        username: None,
                        password: None,
                    })),
                );
                let sp = matches!(got.first(), Some(Packet::ConnAck(a)) if a.session_present);
                let exists = sessions.contains_key(&c);
                prop_assert_eq!(sp, exists && persistent, "session present for c{}", c);
                let s = sessions.entry(c).or_default();
                if !persistent || !exists {
                    *s = MSess::default();
                }
                s.persistent = persistent;
                let expected: Vec<_> = s.queued.drain(..).collect();
                let delivered: Vec<_> = publishes(&got)
                    .into_iter()
                    .map(|(t, p, _, _)| (t, p))
                    .collect();
                prop_assert_eq!(delivered, expected, "queued messages for c{}", c);
                sut.conns.insert(c, conn);
            }
            Op::Disconnect { c } => {
                let Some(conn) = sut.conns.remove(&c) else {
                    continue;
                };
                sut.send(conn, &Packet::Disconnect(ReasonOnly::default()));
                if sessions.get(&c).is_some_and(|s| !s.persistent) {
                    sessions.remove(&c);
                }
            }
            Op::Sub { c, f, q } => {
                let Some(&conn) = sut.conns.get(&c) else {
                    continue;
                };
                let filter = FILTERS[f];
                let got = sut.send(
                    conn,
                    &Packet::Subscribe(Subscribe {
                        packet_id: 1,
                        properties: Properties::default(),
                        filters: vec![(
                            filter.to_owned(),
                            SubscriptionOptions {
                                qos: QoS::from_u8(q).unwrap(),
                                ..SubscriptionOptions::default()
                            },
                        )],
                    }),
                );
                prop_assert!(
                    matches!(got.first(), Some(Packet::SubAck(a)) if a.reasons == vec![ReasonCode(q)]),
                    "SUBACK for {}: {:?}",
                    filter,
                    got.first()
                );
                sessions
                    .get_mut(&c)
                    .unwrap()
                    .subs
                    .insert(filter.to_owned(), q);
                let want: BTreeSet<(String, Bytes)> = retained
                    .iter()
                    .filter(|(t, _)| topic_matches(filter, t))
                    .map(|(t, p)| (t.clone(), p.clone()))
                    .collect();
                let seen: BTreeSet<(String, Bytes)> = publishes(&got)
                    .into_iter()
                    .filter(|m| m.3)
                    .map(|(t, p, _, _)| (t, p))
                    .collect();
                prop_assert_eq!(seen, want, "retained messages for {}", filter);
            }
            Op::Unsub { c, f } => {
                let Some(&conn) = sut.conns.get(&c) else {
                    continue;
                };
                sut.send(
                    conn,
                    &Packet::Unsubscribe(Unsubscribe {
                        packet_id: 2,
                        properties: Properties::default(),
                        filters: vec![FILTERS[f].to_owned()],
                    }),
                );
                sessions.get_mut(&c).unwrap().subs.remove(FILTERS[f]);
            }
            Op::Pub {
                c,
                t,
                q,
                retain,
                empty,
            } => {
                let Some(&conn) = sut.conns.get(&c) else {
                    continue;
                };
                let topic = TOPICS[t];
                sut.seq += 1;
                let payload = if empty && retain {
                    Bytes::new()
                } else {
                    Bytes::from(format!("m{}", sut.seq))
                };
                if retain {
                    if payload.is_empty() {
                        retained.remove(topic);
                    } else {
                        retained.insert(topic.to_owned(), payload.clone());
                    }
                }
                let mut buf = BytesMut::new();
                encode_packet(
                    &Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::from_u8(q).unwrap(),
                        retain,
                        topic: topic.to_owned(),
                        packet_id: (q > 0).then_some(7),
                        properties: Properties::default(),
                        payload: payload.clone(),
                    }),
                    ProtocolVersion::V5,
                    &mut buf,
                )
                .unwrap();
                let got = sut.input(Input::Received {
                    conn: ConnId(conn),
                    bytes: buf.freeze(),
                });
                for (client, s) in sessions.iter_mut() {
                    let best = s
                        .subs
                        .iter()
                        .filter(|(f, _)| topic_matches(f, topic))
                        .map(|(_, q)| *q)
                        .max();
                    let online = sut.conns.get(client).copied();
                    let seen = online
                        .and_then(|cn| got.get(&cn))
                        .map(|ps| publishes(ps))
                        .unwrap_or_default();
                    let mine: Vec<_> = seen.into_iter().filter(|m| m.1 == payload).collect();
                    match (best, online) {
                        (Some(sq), Some(_)) => {
                            prop_assert_eq!(mine.len(), 1, "c{} gets {} once", client, topic);
                            prop_assert_eq!(mine[0].2, sq.min(q));
                            prop_assert!(!mine[0].3, "live delivery without RETAIN");
                        }
                        (Some(sq), None) if sq.min(q) > 0 => {
                            s.queued.push_back((topic.to_owned(), payload.clone()));
                        }
                        _ => prop_assert!(mine.is_empty(), "c{} must not get {}", client, topic),
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
