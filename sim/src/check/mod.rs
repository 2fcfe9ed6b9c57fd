//! The invariant checkers, one file per family, run over a finished trace:
//!
//! | file | invariants |
//! |---|---|
//! | `replay.rs` | no invariant: the model of what the broker holds, rebuilt entry by entry |
//! | `connections.rs` | I1, I2: no panic or stall, bad input closes at once, bounded memory |
//! | `sessions.rs` | I10: Session Present, takeover, keep alive |
//! | `delivery.rs` | I3, I4, I6: at least once, exactly once, nothing phantom or expired |
//! | `order.rs` | I5: per-publisher, per-topic order |
//! | `inflight.rs` | I7: resend discipline, packet ids, Receive Maximum |
//! | `retained.rs` | I8: the retained store |
//! | `wills.rs` | I9: wills |
//! | `counters.rs` | I15: the admin API's message counters |
//! | `persist.rs` | P1–P4: acknowledgements wait for the store; snapshots, failures, crashes |
//! | `admin.rs` | I13: the admin plane |
//! | `auth.rs` | A1, A2: nothing processed before the credentials' answer; denied publishes go nowhere |
//! | `bridge.rs` | I11, I12 and the loop guard, in the bridge worlds |
//! | `liveness.rs` | I16: an honest client's QoS 1 messages keep arriving under attack (S25) |
//!
//! I14 (the same seed gives the same trace) is `tests/determinism.rs`. The helpers the
//! checkers share are in [`crate::oracle`].

pub mod admin;
pub(crate) mod auth;
pub mod bridge;
mod connections;
mod counters;
mod delivery;
mod inflight;
mod liveness;
mod order;
pub mod persist;
mod replay;
mod retained;
mod sessions;
mod wills;

pub use bridge::check_bridge;

use tidemq_core::Config;

use crate::oracle::Violation;
use crate::trace::{Entry, Ev};
use crate::world::ActorInfo;

/// Runs every checker of a broker world. `actors` describes the actor indices used in the
/// trace.
pub fn check(entries: &[Entry], actors: &[ActorInfo], config: &Config) -> Vec<Violation> {
    let durable = persist::prepass(entries, config);
    let mut replay = replay::Replay::new(entries, actors, config, &durable);
    let mut delivery = delivery::DeliveryCheck::default();
    let mut order = order::OrderCheck::default();
    let mut wills = wills::WillCheck::default();
    let mut inflight = inflight::InflightCheck::default();
    let mut retained = retained::RetainedCheck::default();
    let mut auth = auth::AuthCheck::default();
    let mut out = Vec::new();
    // Each checker sees the model as the broker stood when the entry happened, then the
    // entry updates it. The order of the checkers is the order of their reports.
    for e in entries {
        replay.take_picture_if_due(e);
        counters::observe(e, &replay, &mut out);
        if let Ev::Restored {
            sessions: restored,
            retained: kept_retained,
            ..
        } = &e.ev
            && let (Some(expected), Some(crash)) = (
                &replay.picture,
                durable.crash_of(replay.life.wrapping_sub(1)),
            )
        {
            // P4 (b): the restored state against the history as of the last kept step.
            out.extend(persist::compare_restored(
                expected,
                restored,
                kept_retained,
                &crash.ambiguous,
                e.at,
            ));
        }
        connections::observe(e, &replay, &mut out);
        auth.observe(e, actors, config, &mut out);
        sessions::observe(e, &replay, &mut out);
        delivery.observe(e, &replay, &mut out);
        order.observe(e, &replay, &mut out);
        wills.observe(e, &replay, &mut out);
        inflight.observe(e, &replay, &mut out);
        retained.observe(e, &replay);
        replay.apply(e);
    }
    out.extend(persist::check(entries, &durable));
    out.extend(liveness::check(entries, actors));
    if !replay.facts.quiesced {
        return out;
    }
    // Liveness, after heal.
    delivery.finish(&replay, &mut out);
    wills.finish(entries, &replay, &mut out);
    retained.finish(entries, &replay, &mut out);
    out.extend(admin::check_admin(entries));
    out
}
