//! The invariant checkers, one file per family, run over a finished trace:
//!
//! | file | invariants |
//! |---|---|
//! | `delivery.rs` | I1–I10, I14, I15: no panic, delivery and its QoS, order, sessions, retained messages, wills, counters |
//! | `persist.rs` | P1–P4: acknowledgements wait for the store; snapshots, failures, crashes |
//! | `admin.rs` | I13: the admin plane |
//! | `bridge.rs` | I11, I12 and the loop guard, in the bridge worlds |
//!
//! The helpers they share are in [`crate::oracle`].

pub mod admin;
pub mod bridge;
pub mod delivery;
pub mod persist;

pub use bridge::check_bridge;
pub use delivery::check;
