//! I10, the session lifecycle: Session Present is what the session's history says, a
//! takeover closes the old connection with 0x8E (v5), and keep alive never cuts a
//! connection early.

use super::replay::Replay;
use crate::oracle::Violation;
use crate::trace::{Entry, Ev, Got};

pub fn observe(e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
    let at = e.at;
    match &e.ev {
        Ev::KeepAliveEarly {
            conn,
            silent_ms,
            limit_ms,
        } => out.push(Violation::new(
            "I10",
            at,
            format!("conn {conn} closed for keepalive after {silent_ms} ms < {limit_ms} ms"),
        )),
        Ev::BrokerGot {
            conn,
            pkt:
                Got::Connect {
                    client_id,
                    clean_start,
                    ..
                },
            ..
        } => {
            let Some(shown) = replay.taken_connect(*conn) else {
                return;
            };
            let session = replay.sessions.get(client_id);
            let (exists, ambiguous) = session.map_or((false, false), |s| s.exists_at(at));
            let expected = exists && !clean_start;
            let sp = shown.unwrap_or(expected);
            if sp != expected && !ambiguous {
                out.push(Violation::new(
                    "I10",
                    at,
                    format!("conn {conn} ({client_id}): Session Present {sp}, expected {expected}"),
                ));
            }
            // Takeover of a live connection: 0x8E (v5) and close, in this step.
            if let Some(old) = session.and_then(|s| s.active)
                && old != *conn
            {
                let facts = &replay.facts;
                if facts.closed_step.get(&old) != Some(&e.step) {
                    out.push(Violation::new(
                        "I10",
                        at,
                        format!("takeover by conn {conn}: old conn {old} not closed"),
                    ));
                } else if replay.conn_v5.get(&old) == Some(&true)
                    && !facts
                        .disconnects
                        .get(&old)
                        .is_some_and(|d| d.iter().any(|(st, r)| *st == e.step && *r == 0x8E))
                {
                    out.push(Violation::new(
                        "I10",
                        at,
                        format!("takeover by conn {conn}: old conn {old} got no 0x8E"),
                    ));
                }
            }
        }
        _ => {}
    }
}
