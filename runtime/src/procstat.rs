//! The process's resident memory and CPU use, read from `/proc` as NanoMQ does: CPU is the
//! process's share of the whole machine's CPU time between two samples (`/proc/self/stat`
//! against `/proc/stat`), memory is `VmRSS`. Elsewhere than Linux nothing is sampled.

/// Remembers the previous sample's times.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    last: Option<(u64, u64)>,
}

impl Sampler {
    /// Resident bytes and CPU percent since the previous sample (0 the first time).
    pub fn sample(&mut self) -> Option<(u64, f64)> {
        let rss = rss_bytes(&std::fs::read_to_string("/proc/self/status").ok()?)?;
        let process = process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let total = total_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let cpu = match self.last.replace((process, total)) {
            Some((p0, t0)) if total > t0 => {
                100.0 * process.saturating_sub(p0) as f64 / (total - t0) as f64
            }
            _ => 0.0,
        };
        Some((rss, cpu))
    }
}

/// `VmRSS:   1234 kB` in `/proc/self/status`.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime + cutime + cstime from `/proc/self/stat` (fields 14-17; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is index 0, so field n is index n - 3.
    (14..=17)
        .map(|n| fields.get(n - 3)?.parse::<i64>().ok())
        .try_fold(0u64, |acc, v| Some(acc + v?.max(0) as u64))
}

/// The first line of `/proc/stat`: user, nice, system, idle, iowait, irq, softirq, steal.
fn total_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "cpu" {
        return None;
    }
    parts.take(8).map(|v| v.parse::<u64>().ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read() {
        assert_eq!(
            rss_bytes("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(process_ticks(stat), Some(11 + 12 + 13 + 14));
        assert_eq!(total_ticks("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1\n"), Some(36));
        let mut s = Sampler::default();
        if cfg!(target_os = "linux") {
            let (rss, cpu) = s.sample().unwrap();
            assert!(rss > 0 && cpu == 0.0);
            assert!(s.sample().is_some());
        }
    }
}
