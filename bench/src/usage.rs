//! CPU and memory use, read from `/proc`: the tool's own (so it is never the hidden
//! bottleneck), the broker's (when its pid is known) and the machine's (to see other load).

use std::time::Instant;

/// `USER_HZ`: the unit of the tick counts in `/proc/*/stat`, fixed at 100 by the Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

/// user + system CPU ticks of a process (`/proc/PID/stat` fields 14 and 15).
pub fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after its last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy ticks of the whole machine in user, nice and system mode (`/proc/stat` `cpu` line).
/// Interrupt time is left out: loopback traffic lands there and belongs to the benchmark.
pub fn machine_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut f = line.split_whitespace().skip(1);
    let user: u64 = f.next()?.parse().ok()?;
    let nice: u64 = f.next()?.parse().ok()?;
    let system: u64 = f.next()?.parse().ok()?;
    Some(user + nice + system)
}

/// The 1-minute load average.
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A snapshot to measure CPU use from.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    tool: Option<u64>,
    broker: Option<u64>,
    machine: Option<u64>,
}

/// CPU use between two marks, in percent of one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub tool_pct: Option<f64>,
    pub broker_pct: Option<f64>,
    /// Everything else on the machine (user and system time not ours nor the broker's).
    pub others_pct: Option<f64>,
}

impl CpuMark {
    pub fn now(broker_pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            tool: process_ticks("self"),
            broker: broker_pid.and_then(|p| process_ticks(&p.to_string())),
            machine: machine_ticks(),
        }
    }

    pub fn until(&self, end: &CpuMark) -> CpuUse {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |a: Option<u64>, b: Option<u64>| {
            Some(b?.saturating_sub(a?) as f64 / TICKS_PER_SEC / secs * 100.0)
        };
        let tool_pct = pct(self.tool, end.tool);
        let broker_pct = pct(self.broker, end.broker);
        let machine_pct = pct(self.machine, end.machine);
        // Without the broker's pid its time cannot be told apart from other load.
        let others_pct = match (machine_pct, tool_pct, broker_pct) {
            (Some(m), Some(t), Some(b)) => Some((m - t - b).max(0.0)),
            _ => None,
        };
        CpuUse {
            tool_pct,
            broker_pct,
            others_pct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        assert!(process_ticks("self").is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        assert!(machine_ticks().is_some());
        assert!(load1().is_some());
    }
}
