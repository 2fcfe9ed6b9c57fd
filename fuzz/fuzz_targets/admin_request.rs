//! The HTTP API V1 handler: any body and any `Authorization` header get exactly one reply,
//! with a status the API uses and a JSON object carrying `code` and `seq`; a set-configuration
//! never changes the configuration until its write is confirmed.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidemq_core::admin::{Credentials, JwtVerdict};
use tidemq_core::{Broker, Config, Input, Instant, Output};

fuzz_target!(|data: &[u8]| {
    // First line: the Authorization header; the rest: the body. The first byte picks the
    // JWT verdict the runtime would have given.
    let Some((&verdict, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (header, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let config = Config::default();
    let before = config.clone();
    let mut broker = Broker::new(config, 1, Instant(0));
    let credentials = Credentials {
        authorization: std::str::from_utf8(header).ok().map(str::to_owned),
        jwt: match verdict % 4 {
            0 => None,
            1 => Some(JwtVerdict::Valid),
            2 => Some(JwtVerdict::Expired),
            _ => Some(JwtVerdict::Invalid),
        },
    };
    broker.handle_input(
        Instant(1),
        Input::Admin {
            req_id: 7,
            credentials,
            body: Bytes::copy_from_slice(body),
        },
    );
    let mut replies = 0;
    let mut writes = 0;
    while let Some(output) = broker.poll_output() {
        match output {
            Output::AdminReply {
                req_id,
                status,
                body,
                ..
            } => {
                assert_eq!(req_id, 7);
                assert!(matches!(status, 200 | 400 | 401 | 404), "status {status}");
                let json: serde_json::Value = serde_json::from_slice(&body).expect("reply is JSON");
                assert!(json.get("code").is_some() && json.get("seq").is_some());
                replies += 1;
            }
            Output::WriteConfig { .. } => writes += 1,
            _ => {}
        }
    }
    assert_eq!(replies + writes, 1, "exactly one reply or one write");
    assert_eq!(broker.config(), &before, "nothing applied before the write");
});
