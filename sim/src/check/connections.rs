//! I1 (no panic, no stall; bad input closes the connection at once, with the DISCONNECT
//! its reason code calls for) and I2 (bounded memory, counts that agree with the open
//! connections and sessions).

use super::replay::Replay;
use crate::oracle::Violation;
use crate::trace::{Entry, Ev};

pub fn observe(e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
    let at = e.at;
    let facts = &replay.facts;
    match &e.ev {
        Ev::Panic(msg) => out.push(Violation::new(
            "I1",
            at,
            format!("the core panicked: {msg}"),
        )),
        Ev::Stuck(msg) => out.push(Violation::new("I1", at, format!("no progress: {msg}"))),
        Ev::GarbageFed { conn, code, notify } => {
            if facts.closed_step.get(conn) != Some(&e.step) {
                out.push(Violation::new(
                    "I1",
                    at,
                    format!("conn {conn}: bad input (code {code:#x}) but not closed at once"),
                ));
            } else if *notify
                && !facts
                    .disconnects
                    .get(conn)
                    .is_some_and(|d| d.iter().any(|(s, r)| *s == e.step && r == code))
            {
                out.push(Violation::new(
                    "I1",
                    at,
                    format!("conn {conn}: bad input, no DISCONNECT {code:#x} before the close"),
                ));
            }
        }
        Ev::MemoryOver { used, bound } => out.push(Violation::new(
            "I2",
            at,
            format!("the broker holds {used} bytes for peers, bound {bound}"),
        )),
        Ev::Backlog { conn, bytes, bound } => out.push(Violation::new(
            "I2",
            at,
            format!("conn {conn}: {bytes} unwritten bytes, bound {bound}"),
        )),
        Ev::Stats {
            connections,
            open_conns,
            sessions,
            ..
        } => {
            if connections != open_conns {
                out.push(Violation::new(
                    "I2",
                    at,
                    format!("broker counts {connections} connections, {open_conns} are open"),
                ));
            }
            let client_ids = replay.client_ids.len();
            if *sessions > client_ids as u64 {
                out.push(Violation::new(
                    "I2",
                    at,
                    format!("{sessions} sessions for {client_ids} client ids"),
                ));
            }
        }
        Ev::KeepAliveMissed {
            conn,
            silent_ms,
            limit_ms,
        } => out.push(Violation::new(
            "I2",
            at,
            format!("conn {conn} silent {silent_ms} ms, limit {limit_ms} ms, still open"),
        )),
        _ => {}
    }
}
