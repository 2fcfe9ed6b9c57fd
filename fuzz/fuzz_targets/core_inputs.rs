//! The whole broker, with persistence on: arbitrary bytes on several connections, closes,
//! time steps, writer acknowledgements, admin API requests, metrics scrapes, store commits,
//! snapshots, the store's disk use against a 1 MiB cap, the `$SYS` tree and a store failure.
//! It must never panic, and:
//! - every output names a live connection;
//! - every admin request gets exactly one reply;
//! - store records are numbered without gaps, and a snapshot holds exactly the state the
//!   records handed out so far rebuild (what a restart from either would restore);
//! - after every input the memory count stays within the budget (a small one here, so the
//!   refusals run) plus what live connections and sessions may still add
//!   (`tidemq_core::accounting_bound`).
#![no_main]

use std::collections::BTreeSet;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidemq_core::admin::Credentials;
use tidemq_core::config::SyncMode;
use tidemq_core::persist::{Record, Recovered};
use tidemq_core::{AuthOutcome, Broker, Config, ConnId, Input, Instant, Output, accounting_bound};

/// `admin:public`, the default admin credentials.
const BASIC: &str = "Basic YWRtaW46cHVibGlj";

struct Model {
    open: BTreeSet<u64>,
    /// Admin requests not answered yet.
    admin_pending: BTreeSet<u64>,
    /// Every record handed to the store, in order.
    journal: Vec<Record>,
    persisted_upto: u64,
    store_failed: bool,
    /// Credential checks asked and not yet answered, oldest first; how many were answered.
    auth_waiting: std::collections::VecDeque<ConnId>,
    auth_answered: u64,
}

fuzz_target!(|data: &[u8]| {
    let mut config = Config {
        max_packet_size: 4096,
        msq_len: 8,
        max_inflight: 4,
        receive_maximum: 4,
        // The $SYS tree runs too: retained, yet never in a record or a snapshot.
        sys_interval: 1,
        // Below the configurable minimum, so that a fuzzed input reaches the budget.
        max_memory: 16 * 1024,
        // A small writer cap keeps the per-connection allowance small too.
        max_write_buffer: 2048,
        ..Config::default()
    };
    config.persistence.enable = true;
    config.persistence.sync = SyncMode::Fsync;
    config.persistence.max_disk = 1 << 20;
    config.http_server.enable = true;
    // A CONNECT with a user name waits for its credentials' answer (given below, in turn).
    config.users.insert("u".to_owned(), "p".to_owned());
    config.auth.max_pending = 2;
    config.auth.max_held_bytes = 1024;
    let budget = config.max_memory;
    let bound_config = config.clone();
    let mut broker = Broker::new(config, 7, Instant(0));
    let mut now = 0u64;
    let mut next_req = 0u64;
    let mut model = Model {
        open: BTreeSet::new(),
        admin_pending: BTreeSet::new(),
        journal: Vec::new(),
        persisted_upto: 0,
        store_failed: false,
        auth_waiting: Default::default(),
        auth_answered: 0,
    };
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let conn = u64::from(op & 0x03);
        rest = tail;
        let input = match op >> 2 {
            0 => Input::Accepted {
                conn: ConnId(conn),
                peer: format!("127.0.0.1:{}", 1000 + conn),
            },
            1 => Input::Closed { conn: ConnId(conn) },
            2 => {
                now += u64::from(tail.first().copied().unwrap_or(1)) * 500;
                Input::Timeout
            }
            3 => Input::Written {
                conn: ConnId(conn),
                bytes: usize::from(tail.first().copied().unwrap_or(0)) * 64,
            },
            4 => Input::PersistDone {
                upto: model.persisted_upto,
            },
            5 if conn == 1 => {
                next_req += 1;
                model.admin_pending.insert(next_req);
                Input::MetricsScrape { req_id: next_req }
            }
            5 => Input::SnapshotRequest,
            6 => {
                // The next 1..=64 bytes are a request body.
                let len = (usize::from(tail.first().copied().unwrap_or(0)) % 64 + 1)
                    .min(tail.len().saturating_sub(1));
                let body = tail.get(1..1 + len).unwrap_or_default();
                rest = tail.get(1 + len..).unwrap_or_default();
                next_req += 1;
                model.admin_pending.insert(next_req);
                let credentials = Credentials {
                    authorization: Some(BASIC.to_owned()),
                    jwt: None,
                };
                // An empty body stands for a request head alone.
                if body.is_empty() {
                    Input::AdminAuthorize {
                        req_id: next_req,
                        credentials,
                    }
                } else {
                    Input::Admin {
                        req_id: next_req,
                        credentials,
                        body: Bytes::copy_from_slice(body),
                    }
                }
            }
            // The oldest credential check answered: allowed, refused, busy in turn.
            7 if conn == 2 => {
                let Some(waiting) = model.auth_waiting.pop_front() else {
                    continue;
                };
                model.auth_answered += 1;
                Input::AuthResult {
                    conn: waiting,
                    outcome: match model.auth_answered % 3 {
                        1 => AuthOutcome::Allow { superuser: false },
                        2 => AuthOutcome::Deny,
                        _ => AuthOutcome::Busy,
                    },
                }
            }
            7 if conn == 3 => {
                model.store_failed = true;
                Input::PersistFailed {
                    error: "fuzzed failure".to_owned(),
                }
            }
            7 if conn == 1 => {
                // The store's disk use around a 1 MiB cap; odd bytes: the writer refuses.
                let b = tail.first().copied().unwrap_or(0);
                Input::StoreUsage {
                    bytes: u64::from(b) * 8 * 1024,
                    refusing: b & 1 == 1,
                }
            }
            7 => Input::WallClock {
                unix_ms: 1_700_000_000_000 + now,
            },
            n => {
                // n = 8..=63 sends the next n - 7 bytes (1..=56).
                let len = usize::from(n - 7).min(tail.len());
                let (chunk, after) = tail.split_at(len);
                rest = after;
                if !model.open.contains(&conn) {
                    continue;
                }
                Input::Received {
                    conn: ConnId(conn),
                    bytes: Bytes::copy_from_slice(chunk),
                }
            }
        };
        if let Input::Accepted { conn, .. } = &input
            && !model.open.insert(conn.0)
        {
            continue;
        }
        if let Input::Closed { conn } = &input {
            model.open.remove(&conn.0);
        }
        broker.handle_input(Instant(now), input);
        drain(&mut broker, &mut model, now);
        let stats = broker.stats();
        let bound = accounting_bound(&bound_config, budget, stats.connections, stats.sessions);
        let used = broker.memory_used() as u64;
        assert!(used <= bound, "{used} bytes counted, {bound} allowed");
    }
    assert!(
        model.admin_pending.is_empty(),
        "admin requests without a reply: {:?}",
        model.admin_pending
    );
});

fn drain(broker: &mut Broker, model: &mut Model, now: u64) {
    let mut written = Vec::new();
    let mut restarted = Vec::new();
    while let Some(output) = broker.poll_output() {
        match output {
            Output::Transmit { conn, bytes } => {
                assert!(
                    model.open.contains(&conn.0),
                    "transmit to a closed connection"
                );
                assert!(!bytes.is_empty(), "empty transmit");
            }
            Output::Close { conn } => {
                assert!(model.open.remove(&conn.0), "close of a closed connection");
            }
            Output::AdminReply { req_id, .. } | Output::AdminAuthorized { req_id } => {
                assert!(
                    model.admin_pending.remove(&req_id),
                    "a reply to request {req_id}, which is not waiting for one"
                );
            }
            Output::WriteConfig { req_id, .. } => written.push(req_id),
            Output::Persist { upto, records } => {
                assert!(!model.store_failed, "records after the store failed");
                assert_eq!(
                    upto,
                    model.persisted_upto + records.len() as u64,
                    "records numbered with a gap"
                );
                model.persisted_upto = upto;
                model.journal.extend(records);
            }
            Output::Snapshot { upto, records } => {
                assert_eq!(
                    upto, model.persisted_upto,
                    "snapshot not at the last record"
                );
                if !model.store_failed {
                    let mut from_journal = replay(model.journal.iter().cloned());
                    let mut from_snapshot = replay(records);
                    from_journal.prune();
                    from_snapshot.prune();
                    assert_eq!(
                        from_snapshot, from_journal,
                        "the snapshot and the journal rebuild different states"
                    );
                }
            }
            Output::Control { req_id, action } => {
                if action == tidemq_core::admin::ControlAction::Restart {
                    restarted.push(req_id);
                }
            }
            Output::Authenticate { conn, .. } => model.auth_waiting.push_back(conn),
            // No ACL service is configured here.
            Output::Authorize { .. } => panic!("asked the ACL service, which is not configured"),
            Output::Event(_) | Output::BridgeConnect { .. } => {}
            // Cluster mode is off here (`cluster_message` drives it).
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
            | Output::ClusterDurable { .. } => panic!("a cluster output without cluster mode"),
        }
    }
    // The restart "was done", every other one in part.
    for (i, req_id) in restarted.into_iter().enumerate() {
        let result = if i % 2 == 0 {
            Ok(())
        } else {
            Err("in part".to_owned())
        };
        broker.handle_input(Instant(now), Input::ControlDone { req_id, result });
        drain(broker, model, now);
    }
    // The configuration file "was written": the set-configuration completes.
    for req_id in written {
        broker.handle_input(
            Instant(now),
            Input::AdminConfigWritten {
                req_id,
                result: Ok(()),
            },
        );
        drain(broker, model, now);
    }
}

fn replay(records: impl IntoIterator<Item = Record>) -> Recovered {
    let mut r = Recovered::default();
    for record in records {
        r.apply(record);
    }
    r
}
