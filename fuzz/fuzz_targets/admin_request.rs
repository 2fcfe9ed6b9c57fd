//! The admin HTTP handlers. V1: any body and any `Authorization` header get exactly one
//! reply, with a status the API uses and a JSON object carrying `code` and `seq`. v4 (the
//! first byte's high bit): any method, path, query and body get exactly one reply (or are
//! handed to the runtime: a configuration write, a restart), with a status the API uses and
//! a body of the content type it says. Neither changes the configuration before a write is
//! confirmed.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tidemq_core::admin::{Credentials, JwtVerdict};
use tidemq_core::codec::{self, Connect, Packet, Properties, ProtocolVersion};
use tidemq_core::config::BridgeConfig;
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};

fuzz_target!(|data: &[u8]| {
    // First line: the Authorization header; the rest: the body (v4: a request line
    // `METHOD /path?query` first). The first byte picks the JWT verdict the runtime would
    // have given, and with its high bit, v4.
    let Some((&verdict, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (header, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    if verdict & 0x80 != 0 {
        return v4(verdict, header, body);
    }
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
            // A req 10 restart is answered once the runtime has reloaded.
            Output::Control {
                action: tidemq_core::admin::ControlAction::Restart,
                ..
            } => writes += 1,
            _ => {}
        }
    }
    assert_eq!(
        replies + writes,
        1,
        "exactly one reply, or one write or restart"
    );
    assert_eq!(broker.config(), &before, "nothing applied before the write");
});

fn v4(verdict: u8, header: &[u8], rest: &[u8]) {
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (line, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let (method, target) = line.split_once(' ').unwrap_or((&line, ""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut config = Config::default();
    config.bridges.insert(
        "b".to_owned(),
        BridgeConfig {
            enable: true,
            ..BridgeConfig::default()
        },
    );
    let before = config.clone();
    let mut broker = Broker::new(config, 1, Instant(0));
    // A connected v5 client "c", to kick, subscribe and publish to.
    let conn = ConnId(1);
    let mut connect = BytesMut::new();
    let packet = Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: "c".to_owned(),
        will: None,
        username: None,
        password: None,
    }));
    codec::encode_packet(&packet, ProtocolVersion::V5, &mut connect).expect("CONNECT encodes");
    broker.handle_input(
        Instant(0),
        Input::Accepted {
            conn,
            peer: "127.0.0.1:1".to_owned(),
        },
    );
    broker.handle_input(
        Instant(0),
        Input::Received {
            conn,
            bytes: connect.freeze(),
        },
    );
    while broker.poll_output().is_some() {}
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
        Input::AdminV4 {
            req_id: 7,
            credentials,
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            body: Bytes::copy_from_slice(body),
        },
    );
    let (mut replies, mut later) = (0, 0);
    while let Some(output) = broker.poll_output() {
        match output {
            Output::AdminReply {
                req_id,
                status,
                body,
                content_type,
                ..
            } => {
                assert_eq!(req_id, 7);
                assert!(
                    matches!(status, 200 | 400 | 401 | 403 | 404 | 405 | 500),
                    "status {status}"
                );
                if content_type == "application/json" {
                    let json: serde_json::Value =
                        serde_json::from_slice(&body).expect("reply is JSON");
                    assert!(json.is_object());
                    if status != 200 {
                        assert_eq!(
                            json.as_object().map(|o| o.len()),
                            Some(1),
                            "errors carry only the code"
                        );
                        assert!(json.get("code").is_some());
                    }
                } else {
                    assert!(std::str::from_utf8(&body).is_ok());
                }
                replies += 1;
            }
            Output::WriteConfig { req_id, .. } => {
                assert_eq!(req_id, 7);
                later += 1;
            }
            Output::Control { req_id, action } => {
                assert_eq!(req_id, 7);
                if action == tidemq_core::admin::ControlAction::Restart {
                    later += 1;
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        replies + later,
        1,
        "exactly one reply, or one write or restart"
    );
    assert_eq!(broker.config(), &before, "nothing applied before the write");
}
