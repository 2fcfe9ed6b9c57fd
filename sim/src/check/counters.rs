//! I15, counters: the message counters an admin request (req 2) reports equal the ones the
//! trace implies at the moment of the request.

use super::replay::Replay;
use crate::json::{self, Json};
use crate::oracle::Violation;
use crate::trace::{Entry, Ev};

pub fn observe(e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
    let Ev::AdminReply {
        status: 200,
        body,
        req_id,
        ..
    } = &e.ev
    else {
        return;
    };
    let j = json::parse(body);
    if j.as_ref().and_then(|j| j.get("rep")).and_then(Json::int) != Some(2) {
        return;
    }
    let data = j.as_ref().and_then(|j| j.get("data"));
    let field = |k: &str| data.and_then(|d| d.get(k)).and_then(Json::int);
    let c = &replay.counters;
    let want = [
        ("message_in", c.message_in),
        ("message_out", c.message_out),
        ("message_drop", c.message_drop),
    ];
    for (k, n) in want {
        if field(k) != Some(i128::from(n)) {
            out.push(Violation::new(
                "I15",
                e.at,
                format!(
                    "admin request {req_id}: {k} {:?}, the trace says {n}",
                    field(k)
                ),
            ));
        }
    }
}
