//! What another node (or anything on the NATS subjects) can send a node: message envelopes,
//! subjects, retained-bucket entries, durable-stream messages, kicks, claimed sessions-bucket
//! entries and session records. Decoding never panics; what decodes re-encodes to the same
//! bytes' meaning; a clustered broker with a claimed session (persistent or not, by the
//! first byte) takes any of it as a bucket entry, a claim's previous value (a record to
//! resume from), a catch-up message and a kick, and as another node's heartbeat, question
//! and answer to a cluster-wide client list, and as an entry its reaper's scan finds.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tidemq_core::cluster::envelope::Envelope;
use tidemq_core::cluster::nodes::{ANSWER_SID, ASK_SID, Answer, Ask, HEARTBEAT_SID, Heartbeat};
use tidemq_core::cluster::owner::{self, KICK_SID};
use tidemq_core::cluster::record;
use tidemq_core::cluster::subject::{self, Space};
use tidemq_core::codec::{Connect, Packet, Properties, ProtocolVersion, encode_packet};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output, RecordAnswer};

fuzz_target!(|data: &[u8]| {
    // The first line is a subject or key; the rest an envelope.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (head, rest) = data.split_at(split);
    let payload = Bytes::copy_from_slice(rest.get(1..).unwrap_or_default());
    if let Ok(e) = Envelope::decode(payload.clone()) {
        let again = Envelope::decode(e.encode());
        assert_eq!(
            again.as_ref(),
            Ok(&e),
            "an envelope that does not survive re-encoding"
        );
    }
    let text = String::from_utf8_lossy(head).into_owned();
    if let Ok(topic) = subject::subject_to_topic("tmq", Space::Live, &text) {
        let back = subject::topic_to_subject("tmq", Space::Live, &topic, usize::MAX);
        assert_eq!(
            back.as_deref(),
            Ok(text.as_str()),
            "a subject that is not canonical"
        );
    }
    if let Ok(name) = subject::key_name(&text) {
        assert_eq!(
            subject::name_key(&name, usize::MAX).as_deref(),
            Ok(text.as_str()),
            "a key that is not canonical"
        );
    }
    let mut config = Config::default();
    config.cluster.enable = true;
    config.cluster.node_name = "fuzz".to_owned();
    if let Some((revision, key, by)) = owner::parse_kick(&payload) {
        let again = owner::kick_payload(revision, key, by);
        assert_eq!(owner::parse_kick(&again), Some((revision, key, by)));
    }
    if let Some(h) = Heartbeat::parse(&payload) {
        assert_eq!(Heartbeat::parse(&h.encode()), Some(h));
    }
    if let Some(a) = Ask::parse(&payload) {
        assert_eq!(Ask::parse(&a.encode()), Some(a));
    }
    let mut broker = Broker::new(config, 1, Instant(0));
    // A client with a claimed session (claim 1, written at revision 7).
    let mut connect = BytesMut::new();
    let persistent = data.first().is_some_and(|b| b & 1 == 1);
    let properties = Properties {
        session_expiry_interval: persistent.then_some(3600),
        ..Properties::default()
    };
    let packet = Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 0,
        properties,
        client_id: "c".to_owned(),
        will: None,
        username: None,
        password: None,
    }));
    let _ = encode_packet(&packet, ProtocolVersion::V5, &mut connect);
    let conn = ConnId(1);
    if let (_, Some(Ok(record))) = record::parse_value(&payload, "c") {
        let line = record::owner_line(&payload);
        let again = record::record_value(line, "c", &record);
        assert_eq!(
            record::parse_value(&again, "c").1,
            Some(Ok(record)),
            "a session record that does not survive re-encoding"
        );
    }
    let inputs = [
        Input::ClusterFeedStart { seq: 10 },
        Input::Accepted {
            conn,
            peer: "10.0.0.1:1883".to_owned(),
        },
        Input::Received {
            conn,
            bytes: connect.freeze(),
        },
        Input::ClusterClaimed {
            token: 1,
            revision: Some(7),
            previous: Some((payload.clone(), 3)),
        },
        Input::ClusterRetained {
            key: text.clone(),
            value: Some(payload.clone()),
        },
        Input::ClusterFeedMessage {
            seq: 11,
            subject: text.clone(),
            payload: payload.clone(),
        },
        Input::ClusterCatchUpMessage {
            token: 1,
            seq: u64::MAX,
            subject: text.clone(),
            payload: payload.clone(),
        },
        Input::ClusterRecorded {
            token: 2,
            answer: RecordAnswer::Fenced,
        },
        Input::ClusterMessage {
            sid: KICK_SID,
            subject: text.clone(),
            payload: payload.clone(),
        },
        Input::ClusterMessage {
            sid: HEARTBEAT_SID,
            subject: text.clone(),
            payload: payload.clone(),
        },
        // Another node is heard of, so a client list waits for its answer (token 1).
        Input::ClusterMessage {
            sid: HEARTBEAT_SID,
            subject: "tmq.h.b".to_owned(),
            payload: Heartbeat {
                node: "b".to_owned(),
                epoch: "1".to_owned(),
                connections: 1,
                started_at: 0,
                version: "0".to_owned(),
            }
            .encode(),
        },
        Input::AdminV4 {
            req_id: 1,
            credentials: tidemq_core::admin::Credentials {
                authorization: Some("Basic YWRtaW46cHVibGlj".to_owned()),
                jwt: None,
            },
            method: "GET".to_owned(),
            path: "/api/v4/clients".to_owned(),
            query: "_page=1&_limit=2".to_owned(),
            body: Bytes::new(),
        },
        Input::ClusterMessage {
            sid: ANSWER_SID,
            subject: text.clone(),
            payload: payload.clone(),
        },
        Input::ClusterMessage {
            sid: ASK_SID,
            subject: text.clone(),
            payload: payload.clone(),
        },
    ];
    for input in inputs {
        broker.handle_input(Instant(1), input);
        while broker.poll_output().is_some() {}
    }
    // The list's wait ends.
    broker.handle_input(Instant(60_000), Input::Timeout);
    while broker.poll_output().is_some() {}
    // Node b falls silent and is taken for ended; this node, alone, scans the sessions
    // bucket at its 18th heartbeat (one per timeout here), and finds the entry there.
    let mut scan = None;
    for t in 7..=30 {
        broker.handle_input(Instant(t * 10_000), Input::Timeout);
        while let Some(out) = broker.poll_output() {
            if let Output::ClusterScan { token } = out {
                scan = Some(token);
            }
        }
    }
    let token = scan.expect("a scan of the sessions bucket");
    let entries = vec![(text, payload, 3)];
    let done = true;
    broker.handle_input(
        Instant(300_001),
        Input::ClusterScanned {
            token,
            entries,
            done,
        },
    );
    while broker.poll_output().is_some() {}
    let _ = Answer::parse(b"");
});
