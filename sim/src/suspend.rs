//! Broker suspensions (S22's clock chaos) as the checkers need them.
//!
//! While the simulator suspends the broker, no input reaches it; when it resumes, every timer
//! that came due meanwhile fires at once, in deadline order. A deadline that fell inside a
//! suspension therefore takes effect at the resume instant, together with everything else that
//! expired in between (keep-alive cuts among them).

use crate::trace::{Entry, Ev};

/// The `(start, length)` of every "suspend broker" fault, in trace order.
pub fn suspensions(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::Fault(what) => what
                .strip_prefix("suspend broker ")
                .and_then(|rest| rest.strip_suffix(" ms"))
                .and_then(|ms| ms.parse().ok())
                .map(|ms| (e.at, ms)),
            _ => None,
        })
        .collect()
}

/// When the broker first runs at or after `t`. A suspension that starts while the broker is
/// already suspended replaces the end of the current one, as the simulator does.
pub fn broker_runs_at(suspensions: &[(u64, u64)], t: u64) -> u64 {
    let mut until = 0u64;
    for &(start, len) in suspensions {
        if start > t && start >= until {
            break;
        }
        until = start.saturating_add(len);
    }
    until.max(t)
}

#[cfg(test)]
mod tests {
    use super::broker_runs_at;

    #[test]
    fn chained_suspensions_end_at_the_last_replacement() {
        // SIM_SEED=1002009: five overlapping suspensions; the broker resumed at 40785.
        let s = [
            (16846, 22666),
            (20355, 15220),
            (28783, 17889),
            (37314, 6009),
            (39492, 1293),
            (50000, 1000),
        ];
        assert_eq!(broker_runs_at(&s, 20616), 40785);
        assert_eq!(broker_runs_at(&s, 16000), 16000);
        assert_eq!(broker_runs_at(&s, 45000), 45000);
        assert_eq!(broker_runs_at(&s, 50500), 51000);
        assert_eq!(broker_runs_at(&[], 7), 7);
    }
}
