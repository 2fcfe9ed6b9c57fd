//! I14: the same seed gives the same trace, hash for hash; different seeds differ.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tidemq_sim::run_seed;
use tidemq_sim::scenario::FAMILIES;

#[test]
fn same_seed_same_trace_hash() {
    // One seed of every family, each run twice.
    for seed in 500..500 + FAMILIES.len() as u64 {
        let a = run_seed(seed, None);
        let b = run_seed(seed, None);
        assert_eq!(
            a.trace.entries.len(),
            b.trace.entries.len(),
            "SIM_SEED={seed}: trace lengths differ"
        );
        assert_eq!(
            a.hash(),
            b.hash(),
            "SIM_SEED={seed}: not reproducible; replay: {}",
            a.replay_hint()
        );
        assert!(
            a.trace.entries.len() > if a.family.is_bridge() { 30 } else { 100 },
            "SIM_SEED={seed}: suspiciously short trace"
        );
    }
}

#[test]
fn different_seeds_differ() {
    let a = run_seed(7, None);
    let b = run_seed(7 + FAMILIES.len() as u64, None);
    assert_eq!(a.family, b.family);
    assert_ne!(a.hash(), b.hash());
}
