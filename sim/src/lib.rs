//! Deterministic simulation of the TideMQ core.
//!
//! One seed drives everything: the BUGGIFY knobs and scenario family ([`scenario`]), the
//! network ([`net`]: latency, jitter, fragmentation, coalescing, partitions, black holes,
//! RST), the clients ([`client`], written with the core's codec), faults such as broker
//! restarts, and the broker's own seed. A run is a chaos phase (faults, safety invariants
//! only) then a heal phase (faults stop, clients reconnect and drain) after which the liveness
//! invariants must hold too. Everything observable goes into a typed [`trace::Trace`];
//! [`check::check`] judges it afterwards.
//!
//! With persistence on (S6, some S7 seeds) the broker's records go to a simulated store
//! ([`store::SimStore`]: group commits on a seeded clock, snapshots, failures, process
//! crashes and power losses that keep only what its disk holds), crashed brokers are rebuilt
//! with `Broker::restore` from what it kept, and the persistence checks add P1–P4.

pub mod bridge;
pub mod check;
pub mod client;
pub mod cluster;
pub mod json;
pub mod mutation;
pub mod net;
pub mod oracle;
pub mod remote;
pub mod rng;
pub mod scenario;
pub mod store;
pub mod suspend;
pub mod trace;
pub mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use mutation::Mutation;
pub use oracle::Violation;
pub use scenario::Family;
use trace::{Ev, Trace};
pub use world::{ActorInfo, World};

/// Everything one seed produced.
pub struct Outcome {
    pub seed: u64,
    pub family: Family,
    pub trace: Trace,
    pub actors: Vec<ActorInfo>,
    pub config: tidemq_core::Config,
    /// Bridge worlds (S13–S15): what their checkers need.
    pub bridge: Option<bridge::Meta>,
    pub violations: Vec<Violation>,
    /// Manifestations of known, reported core bugs ([`Violation::known`]): not failures.
    pub known: Vec<Violation>,
}

impl Outcome {
    pub fn hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Re-runs the checkers (after a trace mutation).
    pub fn recheck(&mut self) {
        let all = match &self.bridge {
            Some(meta) => check::check_bridge(&self.trace.entries, meta),
            None => check::check(&self.trace.entries, &self.actors, &self.config),
        };
        (self.known, self.violations) = all.into_iter().partition(Violation::known);
    }

    /// The command that replays this seed.
    pub fn replay_hint(&self) -> String {
        format!(
            "SIM_SEED={} cargo test -p tidemq-sim --test sweep -- --nocapture replay",
            self.seed
        )
    }
}

/// Runs one seed, chaos then heal, and checks it. A panic in the core is a violation.
pub fn run_seed(seed: u64, mutation: Option<Mutation>) -> Outcome {
    run_seed_in(seed, Family::of_seed(seed), mutation)
}

/// Runs `seed` as `family`: a regression seed filed under a family stays that run when
/// families are added (which changes the family a seed picks).
pub fn run_seed_in(seed: u64, family: Family, mutation: Option<Mutation>) -> Outcome {
    if family.is_bridge() {
        return run_bridge_seed(seed, family, mutation);
    }
    let mut world = World::in_family(seed, family, mutation);
    let family = world.knobs.family;
    let config = world.knobs.config.clone();
    let result = catch_unwind(AssertUnwindSafe(|| world.run()));
    if let Err(e) = result {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        world.trace.push(Ev::Panic(msg));
    }
    let actors = world.actors();
    let trace = std::mem::take(&mut world.trace);
    let (known, violations) = check::check(&trace.entries, &actors, &config)
        .into_iter()
        .partition(Violation::known);
    Outcome {
        seed,
        family,
        trace,
        actors,
        config,
        bridge: None,
        violations,
        known,
    }
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Runs one seed of a bridge family (two brokers, or a broker and a hostile remote).
fn run_bridge_seed(seed: u64, family: Family, mutation: Option<Mutation>) -> Outcome {
    let mut world = bridge::BridgeWorld::new(seed, family, mutation);
    let result = catch_unwind(AssertUnwindSafe(|| world.run()));
    if let Err(e) = result {
        world.trace.push(Ev::Panic(panic_message(e.as_ref())));
    }
    let trace = std::mem::take(&mut world.trace);
    let meta = world.meta.clone();
    let violations = check::check_bridge(&trace.entries, &meta);
    Outcome {
        seed,
        family,
        trace,
        actors: Vec::new(),
        config: world.config.clone(),
        bridge: Some(meta),
        violations,
        known: Vec::new(),
    }
}
