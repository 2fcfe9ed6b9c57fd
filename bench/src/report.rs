//! Results: one JSON line and one human line per run, and the side-by-side Markdown table
//! built from many JSON lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::usage::CpuUse;

/// Publish-to-deliver latency percentiles, in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (percentile, µs) at [`CURVE`]: the percentile curve for charts.
    pub curve: Vec<(f64, f64)>,
}

/// The percentiles of the latency curve.
pub const CURVE: [f64; 16] = [
    1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.7, 99.8, 99.9, 99.95, 99.97, 99.99,
    100.0,
];

impl Latency {
    pub fn from_nanos(mut samples: Vec<u64>) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples.get(rank - 1).copied().unwrap_or(0) as f64 / 1000.0
        };
        Latency {
            samples: samples.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
            curve: CURVE.iter().map(|p| (*p, at(p / 100.0))).collect(),
        }
    }
}

/// The connections scenario's memory readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConnStats {
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_conn_bytes: Option<f64>,
}

/// What the subscriber of the aliases scenario read off its socket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WireStats {
    /// Bytes read after the SUBACK.
    pub bytes: u64,
    /// `bytes` per message delivered.
    pub bytes_per_msg: Option<f64>,
    /// Deliveries that named their topic by alias alone.
    pub by_alias: u64,
    /// Deliveries that carried their topic name.
    pub with_topic: u64,
}

/// What one scenario run measured and found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub label: String,
    pub params: Vec<(&'static str, Value)>,
    /// Messages published (connections: attempted).
    pub sent: u64,
    /// Deliveries that should have arrived (connections: attempted).
    pub expected: u64,
    /// Deliveries that arrived (connections: connected).
    pub delivered: u64,
    /// Expected deliveries that never arrived (connections: failed).
    pub missing: u64,
    pub out_of_order: u64,
    pub elapsed_s: f64,
    /// The scenario's throughput figure, in `unit`.
    pub rate: f64,
    pub unit: &'static str,
    pub latency: Option<Latency>,
    pub connections: Option<ConnStats>,
    /// aliases: the bytes on the wire towards the subscriber.
    pub wire: Option<WireStats>,
    pub cpu: CpuUse,
    pub broker_rss_kib: Option<u64>,
    /// soak: (seconds, broker VmRSS KiB) samples.
    pub rss_samples: Vec<(f64, u64)>,
    pub load1: Option<f64>,
    pub errors: Vec<String>,
    pub ok: bool,
}

/// How much the broker's RSS grew over the soak, in % (negative: shrank): the median of the
/// last fifth of the samples against the median from a tenth to three tenths of the run (after
/// the warm-up). Medians over windows, so the connection churn's ups and downs do not count;
/// growth that goes on does.
pub fn rss_drift(samples: &[(f64, u64)]) -> Option<f64> {
    let end = samples.last()?.0;
    let window = |from: f64, to: f64| {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| *t >= from * end && *t <= to * end)
            .map(|(_, kib)| *kib as f64)
            .collect();
        median(&mut v)
    };
    let early = window(0.1, 0.3)?;
    let late = window(0.8, 1.0)?;
    (early > 0.0).then(|| 100.0 * (late - early) / early)
}

/// Above this, the tool's own CPU use may be what limits the numbers.
pub const TOOL_SATURATED_PCT: f64 = 90.0;

impl Outcome {
    pub fn new(scenario: &'static str, label: &str) -> Outcome {
        Outcome {
            scenario,
            label: label.to_owned(),
            params: Vec::new(),
            sent: 0,
            expected: 0,
            delivered: 0,
            missing: 0,
            out_of_order: 0,
            elapsed_s: 0.0,
            rate: 0.0,
            unit: "msg/s",
            latency: None,
            connections: None,
            wire: None,
            cpu: CpuUse::default(),
            broker_rss_kib: None,
            rss_samples: Vec::new(),
            load1: None,
            errors: Vec::new(),
            ok: false,
        }
    }

    pub fn param(&mut self, key: &'static str, value: impl Into<Value>) {
        self.params.push((key, value.into()));
    }

    fn param_u64(&self, key: &str) -> Option<u64> {
        self.params
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_u64())
    }

    /// Names the configuration, so runs of the same case can be grouped.
    pub fn case(&self) -> String {
        let base = self.base_case();
        if self.param_u64("persistent") == Some(1) {
            format!("{base}, persistent sessions")
        } else {
            base
        }
    }

    fn base_case(&self) -> String {
        let p = |k| self.param_u64(k).unwrap_or(0);
        match self.scenario {
            "fan-in" => format!(
                "fan-in {}→1 qos{} {}",
                p("publishers"),
                p("qos"),
                size(p("payload"))
            ),
            "fan-out" => format!(
                "fan-out 1→{} qos{} {}",
                p("subscribers"),
                p("qos"),
                size(p("payload"))
            ),
            "p2p" => format!(
                "p2p {}×(1→1) qos{} {}",
                p("publishers"),
                p("qos"),
                size(p("payload"))
            ),
            "latency" => {
                let rate = self
                    .params
                    .iter()
                    .find(|(k, _)| *k == "rate")
                    .and_then(|(_, v)| v.as_f64())
                    .unwrap_or(0.0);
                format!(
                    "latency {rate:.0} msg/s qos{} {}",
                    p("qos"),
                    size(p("payload"))
                )
            }
            "connections" => format!("connections {}", p("connections")),
            "aliases" => format!(
                "aliases {} topics×{} alias max {} qos{} {}",
                p("topics"),
                size(p("topic_len")),
                p("alias_max"),
                p("qos"),
                size(p("payload"))
            ),
            "soak" => {
                let f = |k: &str| {
                    self.params
                        .iter()
                        .find(|(name, _)| *name == k)
                        .and_then(|(_, v)| v.as_f64())
                        .unwrap_or(0.0)
                };
                let rate = f("rate") * p("publishers") as f64;
                format!(
                    "soak {:.0} s {}×(1→1) qos{} {rate:.0} msg/s + {} conn churn",
                    f("seconds"),
                    p("publishers"),
                    p("qos"),
                    p("churn")
                )
            }
            other => other.to_owned(),
        }
    }

    pub fn tool_saturated(&self) -> bool {
        self.cpu.tool_pct.is_some_and(|t| t >= TOOL_SATURATED_PCT)
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), self.scenario.into());
        m.insert("label".into(), self.label.clone().into());
        m.insert("case".into(), self.case().into());
        for (k, v) in &self.params {
            m.insert((*k).into(), v.clone());
        }
        m.insert("ok".into(), self.ok.into());
        m.insert("sent".into(), self.sent.into());
        m.insert("expected".into(), self.expected.into());
        m.insert("delivered".into(), self.delivered.into());
        m.insert("missing".into(), self.missing.into());
        m.insert("out_of_order".into(), self.out_of_order.into());
        m.insert("elapsed_s".into(), round(self.elapsed_s, 4).into());
        m.insert("rate".into(), round(self.rate, 1).into());
        m.insert("unit".into(), self.unit.into());
        if let Some(l) = &self.latency {
            m.insert("latency_samples".into(), l.samples.into());
            m.insert("p50_us".into(), round(l.p50_us, 1).into());
            m.insert("p99_us".into(), round(l.p99_us, 1).into());
            m.insert("p999_us".into(), round(l.p999_us, 1).into());
            m.insert("max_us".into(), round(l.max_us, 1).into());
            let curve: Vec<Value> = l
                .curve
                .iter()
                .map(|(p, us)| json!([p, round(*us, 1)]))
                .collect();
            m.insert("latency_curve".into(), Value::Array(curve));
        }
        if let Some(c) = &self.connections {
            m.insert("rss_before_kib".into(), c.rss_before_kib.into());
            m.insert("rss_after_kib".into(), c.rss_after_kib.into());
            m.insert(
                "rss_per_conn_bytes".into(),
                c.rss_per_conn_bytes.map(|b| round(b, 1)).into(),
            );
        }
        if let Some(w) = &self.wire {
            m.insert("wire_bytes".into(), w.bytes.into());
            m.insert(
                "bytes_per_msg".into(),
                w.bytes_per_msg.map(|b| round(b, 2)).into(),
            );
            m.insert("by_alias".into(), w.by_alias.into());
            m.insert("with_topic".into(), w.with_topic.into());
        }
        let opt = |v: Option<f64>| v.map(|x| round(x, 1)).into();
        m.insert("tool_cpu_pct".into(), opt(self.cpu.tool_pct));
        m.insert("tool_saturated".into(), self.tool_saturated().into());
        m.insert("broker_cpu_pct".into(), opt(self.cpu.broker_pct));
        m.insert("others_cpu_pct".into(), opt(self.cpu.others_pct));
        m.insert("broker_rss_kib".into(), self.broker_rss_kib.into());
        if !self.rss_samples.is_empty() {
            let samples: Vec<Value> = self
                .rss_samples
                .iter()
                .map(|(t, kib)| json!([round(*t, 1), kib]))
                .collect();
            m.insert("rss_samples".into(), Value::Array(samples));
            if let Some(drift) = rss_drift(&self.rss_samples) {
                m.insert("rss_drift_pct".into(), round(drift, 1).into());
            }
            let max = self.rss_samples.iter().map(|(_, kib)| *kib).max();
            m.insert("rss_max_kib".into(), max.into());
        }
        m.insert("load1".into(), self.load1.into());
        m.insert("errors".into(), json!(self.errors));
        Value::Object(m)
    }

    pub fn human(&self) -> String {
        let mut s = format!("{} [{}]: ", self.case(), self.label);
        if let Some(l) = &self.latency {
            let _ = write!(
                s,
                "p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs ({} samples); ",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
            );
        } else {
            let _ = write!(s, "{} {}; ", thousands(self.rate), self.unit);
        }
        if let Some(w) = &self.wire {
            let per = w
                .bytes_per_msg
                .map_or("?".to_owned(), |b| format!("{b:.1}"));
            let _ = write!(
                s,
                "{per} B/msg on the wire ({} B; {} by alias alone, {} with the topic); ",
                thousands(w.bytes as f64),
                w.by_alias,
                w.with_topic
            );
        }
        if let Some(c) = &self.connections {
            let _ = write!(s, "{} of {} connected", self.delivered, self.expected);
            if let Some(b) = c.rss_per_conn_bytes {
                let _ = write!(s, ", broker RSS +{b:.0} B/conn");
            }
            s.push_str("; ");
        } else {
            let _ = write!(
                s,
                "delivered {}/{} (missing {}, out of order {}) in {:.2} s; ",
                self.delivered, self.expected, self.missing, self.out_of_order, self.elapsed_s
            );
        }
        let pct = |v: Option<f64>| v.map_or("?".to_owned(), |x| format!("{x:.0}%"));
        let _ = write!(
            s,
            "CPU: tool {}, broker {}, others {}",
            pct(self.cpu.tool_pct),
            pct(self.cpu.broker_pct),
            pct(self.cpu.others_pct)
        );
        if self.tool_saturated() {
            s.push_str(" (TOOL NEAR SATURATION: the numbers may be the tool's limit)");
        }
        s.push_str(if self.ok { " — OK" } else { " — FAILED" });
        for e in &self.errors {
            let _ = write!(s, "; {e}");
        }
        s
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn size(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A compact figure: 3.73M, 771k, 93.2k, 812.
fn compact(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e5 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// One figure compared across brokers.
struct Metric {
    name: &'static str,
    /// JSON key of the value.
    key: &'static str,
    higher_is_better: bool,
}

fn metrics_for(scenario: &str) -> Vec<Metric> {
    let m = |name, key, higher_is_better| Metric {
        name,
        key,
        higher_is_better,
    };
    match scenario {
        "fan-out" => vec![m("deliveries/s", "rate", true)],
        "aliases" => vec![
            m("wire B/msg", "bytes_per_msg", false),
            m("msg/s", "rate", true),
        ],
        "latency" => vec![
            m("p50 µs", "p50_us", false),
            m("p99 µs", "p99_us", false),
            m("p99.9 µs", "p999_us", false),
            m("max µs", "max_us", false),
        ],
        "connections" => vec![
            m("connect rate conn/s", "rate", true),
            m("broker RSS B/conn", "rss_per_conn_bytes", false),
        ],
        "soak" => vec![
            m("msg/s", "rate", true),
            m("p99 µs", "p99_us", false),
            m("RSS end KiB", "broker_rss_kib", false),
            m("RSS max KiB", "rss_max_kib", false),
            m("RSS drift %", "rss_drift_pct", false),
        ],
        _ => vec![m("msg/s", "rate", true)],
    }
}

/// What the subject broker must reach (issue 20), judged against the peers measured in the
/// same run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// At least as good as every peer present.
    EveryPeer,
    /// At least as good as this peer.
    Peer(&'static str),
    /// Within ± this value (the soak's RSS drift, in percent).
    Within(f64),
}

fn target_for(scenario: &str, key: &str) -> Option<Target> {
    match (scenario, key) {
        ("fan-in" | "fan-out" | "p2p", "rate") => Some(Target::EveryPeer),
        ("latency", "p99_us") => Some(Target::EveryPeer),
        ("connections", "rate" | "rss_per_conn_bytes") => Some(Target::Peer("mosquitto")),
        ("soak", "rss_drift_pct") => Some(Target::Within(10.0)),
        _ => None,
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mid = values.get(n / 2).copied()?;
    if n % 2 == 1 {
        Some(mid)
    } else {
        Some((values.get(n / 2 - 1).copied()? + mid) / 2.0)
    }
}

#[derive(Default)]
struct Runs {
    values: BTreeMap<&'static str, Vec<f64>>,
    tool_cpu: Vec<f64>,
    broker_cpu: Vec<f64>,
    others_cpu: Vec<f64>,
    runs: usize,
    ok: usize,
    saturated: usize,
    /// The first error of the first failed run.
    first_error: Option<String>,
}

/// The Markdown side-by-side tables from JSON lines (one per run): medians with the range
/// over runs, the ratio of the subject to each baseline (its peers), and whether the subject
/// meets its targets against the peers measured in the same run.
pub fn markdown(jsonl: &str, subject: &str, baselines: &[String]) -> Result<String, String> {
    // case -> (scenario, qos, subscribers), in first-seen order
    let mut cases: Vec<(String, String, u64, u64)> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let mut runs: BTreeMap<(String, String), Runs> = BTreeMap::new();
    for (n, line) in jsonl.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || !line.starts_with('{') {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let (scenario, case, label) = (text("scenario"), text("case"), text("label"));
        if !cases.iter().any(|c| c.0 == case) {
            let int = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            cases.push((
                case.clone(),
                scenario.clone(),
                int("qos"),
                int("subscribers"),
            ));
        }
        if !labels.contains(&label) {
            labels.push(label.clone());
        }
        let r = runs.entry((case, label)).or_default();
        r.runs += 1;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            r.ok += 1;
        }
        if v.get("tool_saturated").and_then(Value::as_bool) == Some(true) {
            r.saturated += 1;
        }
        if r.first_error.is_none() {
            r.first_error = v
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        for m in metrics_for(&scenario) {
            if let Some(x) = num(m.key) {
                r.values.entry(m.key).or_default().push(x);
            }
        }
        r.tool_cpu.extend(num("tool_cpu_pct"));
        r.broker_cpu.extend(num("broker_cpu_pct"));
        r.others_cpu.extend(num("others_cpu_pct"));
    }
    // Subject first, the baselines in their order, the others after.
    let rank = |l: &String| {
        if l == subject {
            0
        } else {
            baselines
                .iter()
                .position(|b| b == l)
                .map_or(usize::MAX, |i| i + 1)
        }
    };
    labels.sort_by_key(|l| (rank(l), l.clone()));
    let peers: Vec<&String> = baselines.iter().filter(|b| labels.contains(b)).collect();
    let mut out = String::new();
    let ratios: Vec<String> = peers.iter().map(|b| format!("{subject}/{b}")).collect();
    let _ = writeln!(
        out,
        "| Case | Metric | {} | {} | Target ({subject}) | Met |",
        labels.join(" | "),
        ratios.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---|{}{}---|---|",
        "---|".repeat(labels.len()),
        "---|".repeat(peers.len())
    );
    let mut verdicts = Vec::new();
    for (case, scenario, _qos, _subscribers) in &cases {
        for m in metrics_for(scenario) {
            let mut medians = BTreeMap::new();
            let mut cells = Vec::new();
            for label in &labels {
                let values = runs
                    .get_mut(&(case.clone(), label.clone()))
                    .and_then(|r| r.values.get_mut(m.key));
                match values {
                    Some(values) if !values.is_empty() => {
                        let med = median(values).unwrap_or(0.0);
                        let (lo, hi) = (
                            values.first().copied().unwrap_or(0.0),
                            values.last().copied().unwrap_or(0.0),
                        );
                        medians.insert(label.clone(), med);
                        cells.push(if values.len() > 1 {
                            format!("**{}** ({}–{})", compact(med), compact(lo), compact(hi))
                        } else {
                            format!("**{}**", compact(med))
                        });
                    }
                    _ => cells.push("—".to_owned()),
                }
            }
            let s = medians.get(subject).copied();
            let ratio_cells: Vec<String> = peers
                .iter()
                .map(|b| match (s, medians.get(*b)) {
                    (Some(s), Some(b)) if *b > 0.0 => format!("{:.2}×", s / b),
                    _ => "—".to_owned(),
                })
                .collect();
            // The targets are for the broker's default (no persistence, clean sessions).
            let target = if case.ends_with("persistent sessions") {
                None
            } else {
                target_for(scenario, m.key)
            };
            if let (Some(Target::Within(limit)), Some(s)) = (target, s) {
                let met = verdict(
                    s.abs() <= limit,
                    s.abs() / limit,
                    &mut verdicts,
                    case,
                    m.name,
                );
                let _ = writeln!(
                    out,
                    "| {case} | {} | {} | {} | ±{limit:.0}% | {met} |",
                    m.name,
                    cells.join(" | "),
                    ratio_cells.join(" | ")
                );
                continue;
            }
            let judged: Vec<&String> = match target {
                Some(Target::EveryPeer) => peers.clone(),
                Some(Target::Peer(name)) => peers.iter().copied().filter(|p| *p == name).collect(),
                Some(Target::Within(_)) | None => Vec::new(),
            };
            let sign = if m.higher_is_better { "≥" } else { "≤" };
            let (target, met) = match (target, s) {
                (None, _) => (String::new(), String::new()),
                (Some(_), _) if judged.is_empty() => {
                    ("no peer measured".to_owned(), "?".to_owned())
                }
                (Some(_), None) => (String::new(), "?".to_owned()),
                (Some(_), Some(s)) => {
                    let names: Vec<&str> = judged.iter().map(|p| p.as_str()).collect();
                    // The worst ratio against the peers judged, as "subject / target".
                    let mut worst: Option<f64> = None;
                    let mut met = true;
                    for p in &judged {
                        let Some(b) = medians.get(*p).copied().filter(|b| *b > 0.0) else {
                            continue;
                        };
                        let ok = if m.higher_is_better { s >= b } else { s <= b };
                        met &= ok;
                        let r = s / b;
                        worst = Some(match worst {
                            None => r,
                            Some(w) if m.higher_is_better => w.min(r),
                            Some(w) => w.max(r),
                        });
                    }
                    let text = format!("{sign} {}", names.join(", "));
                    match worst {
                        Some(r) => (text, verdict(met, r, &mut verdicts, case, m.name)),
                        None => (text, "?".to_owned()),
                    }
                }
            };
            let _ = writeln!(
                out,
                "| {case} | {} | {} | {} | {target} | {met} |",
                m.name,
                cells.join(" | "),
                ratio_cells.join(" | ")
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCPU use during the runs (median % of one core; `others` = everything else on the \
         machine, max over runs), and checks:\n"
    );
    let _ = writeln!(
        out,
        "| Case | Broker | runs OK | tool CPU | broker CPU | others CPU (max) | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (case, ..) in &cases {
        for label in &labels {
            let Some(r) = runs.get_mut(&(case.clone(), label.clone())) else {
                continue;
            };
            let pct = |v: Option<f64>| v.map_or("—".to_owned(), |x| format!("{x:.0}%"));
            let others_max = r.others_cpu.iter().copied().reduce(f64::max);
            let mut notes = Vec::new();
            if r.saturated > 0 {
                notes.push(format!(
                    "tool ≥ {TOOL_SATURATED_PCT:.0}% CPU in {} run(s)",
                    r.saturated
                ));
            }
            if r.ok < r.runs {
                let first = r.first_error.as_deref().unwrap_or("no deliveries");
                notes.push(format!("{} run(s) failed, e.g. {first}", r.runs - r.ok));
            }
            let _ = writeln!(
                out,
                "| {case} | {label} | {}/{} | {} | {} | {} | {} |",
                r.ok,
                r.runs,
                pct(median(&mut r.tool_cpu)),
                pct(median(&mut r.broker_cpu)),
                pct(others_max),
                notes.join("; ")
            );
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(out, "\nTargets not met by {subject}:\n");
        for v in verdicts {
            let _ = writeln!(out, "- {v}");
        }
    }
    Ok(out)
}

fn verdict(met: bool, ratio: f64, misses: &mut Vec<String>, case: &str, metric: &str) -> String {
    if met {
        "yes".to_owned()
    } else {
        misses.push(format!("{case}, {metric}: {ratio:.2}× the target"));
        format!("**no** ({ratio:.2}×)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency::from_nanos((1..=1000).map(|x| x * 1000).collect());
        assert_eq!(l.samples, 1000);
        assert_eq!(l.p50_us, 500.0);
        assert_eq!(l.p99_us, 990.0);
        assert_eq!(l.p999_us, 999.0);
        assert_eq!(l.max_us, 1000.0);
        assert_eq!(Latency::from_nanos(Vec::new()).max_us, 0.0);
    }

    #[test]
    fn rss_drift_ignores_the_warm_up_and_the_churn_and_sees_growth() {
        // Warm-up to 100, then 100/110 alternating (churn): flat.
        let flat: Vec<(f64, u64)> = (0..100)
            .map(|i| (i as f64, if i < 5 { 50 } else { 100 + 10 * (i % 2) }))
            .collect();
        assert!(rss_drift(&flat).unwrap().abs() < 10.0);
        let growing: Vec<(f64, u64)> = (0..100).map(|i| (i as f64, 100 + i)).collect();
        assert!(rss_drift(&growing).unwrap() > 50.0);
        assert_eq!(rss_drift(&[]), None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn markdown_compares_medians() {
        let mut lines = String::new();
        for (label, rates) in [
            ("tidemq", [3.0e5, 4.0e5, 5.0e5]),
            ("mosquitto", [1.0e5, 2.0e5, 3.0e5]),
            ("rumqttd", [5.0e5, 5.0e5, 5.0e5]),
        ] {
            for rate in rates {
                let mut o = Outcome::new("fan-in", label);
                o.param("publishers", 8);
                o.param("qos", 0);
                o.param("payload", 16);
                o.rate = rate;
                o.ok = true;
                lines.push_str(&o.to_json().to_string());
                lines.push('\n');
            }
        }
        let peers = ["mosquitto".to_owned(), "rumqttd".to_owned()];
        let md = markdown(&lines, "tidemq", &peers).unwrap();
        assert!(md.contains("| fan-in 8→1 qos0 16B | msg/s | **400k** (300k–500k) | **200k** (100k–300k) | **500k** (500k–500k) | 2.00× | 0.80× | ≥ mosquitto, rumqttd | **no** (0.80×) |"), "{md}");
        let md = markdown(&lines, "tidemq", &peers[..1]).unwrap();
        assert!(md.contains("| 2.00× | ≥ mosquitto | yes |"), "{md}");
    }
}
