//! What another node (or anything on the NATS subjects) can send a node: message envelopes,
//! subjects and retained-bucket entries. Decoding never panics; what decodes re-encodes to the
//! same bytes' meaning; a clustered broker takes any of it as a retained-bucket entry.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidemq_core::cluster::envelope::Envelope;
use tidemq_core::cluster::subject::{self, Space};
use tidemq_core::{Broker, Config, Input, Instant};

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
    let mut config = Config::default();
    config.cluster.enable = true;
    config.cluster.node_name = "fuzz".to_owned();
    let mut broker = Broker::new(config, 1, Instant(0));
    broker.handle_input(
        Instant(1),
        Input::ClusterRetained {
            key: text,
            value: Some(payload),
        },
    );
    while broker.poll_output().is_some() {}
});
