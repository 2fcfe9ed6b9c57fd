//! Trace hashes of a range of seeds, written to a file so that two commits can be compared.
//!
//! A pure refactoring must leave every trace hash unchanged; a behaviour change shows as the
//! seeds whose hashes differ. `TRACE_HASHES_OUT` names the output file:
//!
//! ```sh
//! TRACE_HASHES_OUT=/tmp/hashes.txt cargo run --release -p tidemq-sim --example trace_hashes
//! ```
//!
//! `SIM_BASE` (default 0) and `SIM_SEEDS` (default 44000: 2,000 seeds of each of the 22
//! families) choose the range. Each line is `seed family hash`.
//!
//! `SIM_FAMILIES=S13,S14` keeps only the seeds of those families (a quicker look at a change
//! that only they exercise). Checker results do not enter the hash; `TRACE_CHECKS_OUT=<file>` also writes every
//! violation and known-bug report (`seed invariant at detail`), to compare checker changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::time::Instant;

use tidemq_sim::{Family, run_seed};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let Ok(path) = std::env::var("TRACE_HASHES_OUT") else {
        eprintln!("trace_hashes: set TRACE_HASHES_OUT to the file to write");
        std::process::exit(2);
    };
    let base = env_u64("SIM_BASE").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(44_000);
    let checks_path = std::env::var("TRACE_CHECKS_OUT").ok();
    let families: Option<Vec<String>> = std::env::var("SIM_FAMILIES")
        .ok()
        .map(|v| v.split(',').map(|f| f.trim().to_owned()).collect());
    let started = Instant::now();
    let mut out = String::new();
    let mut checks = String::new();
    for seed in base..base + count {
        let family = format!("{:?}", Family::of_seed(seed));
        if families.as_ref().is_some_and(|f| !f.contains(&family)) {
            continue;
        }
        let o = run_seed(seed, None);
        writeln!(out, "{seed} {:?} {:016x}", o.family, o.hash()).unwrap();
        if checks_path.is_some() {
            for v in o.known.iter().chain(&o.violations) {
                writeln!(checks, "{seed} {} {} {}", v.invariant, v.at, v.detail).unwrap();
            }
        }
    }
    std::fs::write(&path, out).unwrap();
    if let Some(p) = checks_path {
        std::fs::write(p, checks).unwrap();
    }
    println!(
        "{count} seeds from {base} in {:.1} s, hashes in {path}",
        started.elapsed().as_secs_f64()
    );
}
