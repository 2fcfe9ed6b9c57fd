//! `tidemq-bench SCENARIO [options]`: one run, printed as one JSON line and one human line.
//! `tidemq-bench report FILE [--subject L] [--baseline L]`: a Markdown table from JSON lines.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use tidemq_bench::{Opts, Scenario, report};
use tidemq_core::codec::QoS;

const USAGE: &str = "\
usage: tidemq-bench SCENARIO [options]
       tidemq-bench report FILE.jsonl [--subject tidemq] [--baseline mosquitto]...

scenarios:
  fan-in        P publishers -> 1 wildcard subscriber          (--publishers)
  fan-out       1 publisher -> S subscribers of one topic      (--subscribers)
  p2p           N publisher/subscriber pairs on N topics       (--pairs)
  latency       1 -> 1 at a fixed rate; p50/p99/p99.9/max       (--rate)
  connections   C idle clients: connect rate, broker RSS/conn  (--connections)
  soak          N pairs at a total --rate for --seconds, with connection churn; the
                broker's RSS sampled throughout               (--pairs, --rate, --churn)
  aliases       1 publisher round K long topics -> 1 MQTT 5 subscriber announcing a
                Topic Alias Maximum: bytes/message on the wire, aliases resolved and
                checked                          (--topics, --topic-len, --alias-max)

options (defaults in brackets):
  --host H            broker address [127.0.0.1]
  --port N            broker port [1883]
  --sub-port N        fan-in, fan-out, latency: subscribers connect to this port of the
                      same host instead (another node of a cluster)
  --broker-pid PID    the broker's pid, for its CPU use and memory
  --label NAME        names the broker in the output [broker]
  --seconds S         how long to publish [5]
  --drain S           most seconds to wait for messages on their way afterwards [5]
  --qos 0|1           [0]
  --payload BYTES     payload size, at least 16 [16]
  --publishers P      [8]     --subscribers S   [16]     --pairs N   [8]
  --rate R            latency: messages per second [1000]
  --messages M        most messages per publisher [50000000]
  --window W          end-to-end window per flow, messages; 0 = auto: QoS 0 up to
                      8192 messages or 2 MiB, QoS 1 2048 [0]
  --batch B           most messages per write [64]
  --inflight I        QoS 1: unacknowledged PUBLISHes per publisher [512]
  --connections C     [10000] (needs `ulimit -n` above C)
  --concurrency K     connection attempts at once [64]
  --hold S            seconds to hold idle clients before reading the broker's RSS [1]
  --keep-alive S      keep alive in CONNECT [60]
  --session K         subscribers' (and the connections case's clients') sessions: clean,
                      or persistent (clean session 0, so QoS 1 messages to them are stored
                      when the broker persists; in a cluster, claimed before the CONNACK)
                      [clean]
  --threads T         tokio worker threads; 1 = single-threaded runtime [1]
  --churn C           soak: clients connected and disconnected per cycle [500]
  --churn-every S     soak: seconds between churn cycles [10]
  --sample-every S    soak: seconds between RSS samples [5]
  --topics K          aliases: distinct topics [8]
  --topic-len L       aliases: bytes per topic name [200]
  --alias-max A       aliases: the subscriber's Topic Alias Maximum; 0 = none [16]
                      (aliases: --messages is the total, default 20000, and --seconds
                      only a bound, default 60)
";

enum Command {
    Run {
        scenario: Scenario,
        opts: Box<Opts>,
        threads: usize,
    },
    Report {
        file: String,
        subject: String,
        /// The peers, in column order; the subject's targets are judged against them.
        baselines: Vec<String>,
    },
    Help,
}

fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: cannot read {v:?}"))
}

fn parse(args: Vec<String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Help);
    };
    if matches!(first.as_str(), "-h" | "--help" | "help") {
        return Ok(Command::Help);
    }
    if first == "report" {
        let file = args.next().ok_or("report needs a file of JSON lines")?;
        let mut subject = "tidemq".to_owned();
        let mut baselines = Vec::new();
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--subject" => subject = value(&flag, args.next())?,
                "--baseline" => baselines.push(value(&flag, args.next())?),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if baselines.is_empty() {
            baselines.push("mosquitto".to_owned());
        }
        return Ok(Command::Report {
            file,
            subject,
            baselines,
        });
    }
    let scenario = Scenario::parse(&first).ok_or_else(|| format!("unknown scenario {first:?}"))?;
    let mut opts = Opts::default();
    let (mut host, mut port) = ("127.0.0.1".to_owned(), 1883u16);
    let mut sub_port = None;
    let mut threads = 1usize;
    let (mut messages_given, mut seconds_given) = (false, false);
    while let Some(flag) = args.next() {
        messages_given |= flag == "--messages";
        seconds_given |= flag == "--seconds";
        let v = args.next();
        match flag.as_str() {
            "--host" => host = value(&flag, v)?,
            "--port" => port = value(&flag, v)?,
            "--sub-port" => sub_port = Some(value(&flag, v)?),
            "--broker-pid" => opts.broker_pid = Some(value(&flag, v)?),
            "--label" => opts.label = value(&flag, v)?,
            "--seconds" => opts.seconds = value(&flag, v)?,
            "--drain" => opts.drain = value(&flag, v)?,
            "--qos" => {
                let q: u8 = value(&flag, v)?;
                opts.qos = match q {
                    0 | 1 => QoS::from_u8(q).unwrap_or_default(),
                    _ => return Err("--qos must be 0 or 1".to_owned()),
                };
            }
            "--payload" => opts.payload = value(&flag, v)?,
            "--publishers" => opts.publishers = value(&flag, v)?,
            "--subscribers" => opts.subscribers = value(&flag, v)?,
            "--pairs" => opts.pairs = value(&flag, v)?,
            "--rate" => opts.rate = value(&flag, v)?,
            "--messages" => opts.messages = value(&flag, v)?,
            "--window" => opts.window = value(&flag, v)?,
            "--batch" => opts.batch = value(&flag, v)?,
            "--inflight" => opts.inflight = value(&flag, v)?,
            "--connections" => opts.connections = value(&flag, v)?,
            "--concurrency" => opts.concurrency = value(&flag, v)?,
            "--hold" => opts.hold = value(&flag, v)?,
            "--keep-alive" => opts.keep_alive = value(&flag, v)?,
            "--session" => {
                opts.persistent = match value::<String>(&flag, v)?.as_str() {
                    "clean" => false,
                    "persistent" => true,
                    other => {
                        return Err(format!("--session: {other:?} is not clean or persistent"));
                    }
                }
            }
            "--threads" => threads = value(&flag, v)?,
            "--churn" => opts.churn = value(&flag, v)?,
            "--churn-every" => opts.churn_every = value(&flag, v)?,
            "--sample-every" => opts.sample_every = value(&flag, v)?,
            "--topics" => opts.topics = value(&flag, v)?,
            "--topic-len" => opts.topic_len = value(&flag, v)?,
            "--alias-max" => opts.alias_max = value(&flag, v)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if scenario == Scenario::Aliases {
        // A fixed count, so runs against different brokers move the same messages.
        if !messages_given {
            opts.messages = 20_000;
        }
        if !seconds_given {
            opts.seconds = 60.0;
        }
    }
    // NaN and infinities are outside every range.
    if !(0.0..=3600.0).contains(&opts.seconds) {
        return Err("--seconds must be between 0 and 3600".to_owned());
    }
    if !(0.0..=600.0).contains(&opts.drain) || !(0.0..=600.0).contains(&opts.hold) {
        return Err("--drain and --hold must be between 0 and 600".to_owned());
    }
    opts.addr = resolve(&host, port)?;
    opts.sub_addr = sub_port.map(|p| resolve(&host, p)).transpose()?;
    Ok(Command::Run {
        scenario,
        opts: Box::new(opts),
        threads: threads.max(1),
    })
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

fn main() -> ExitCode {
    let command = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidemq-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Report {
            file,
            subject,
            baselines,
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("tidemq-bench: cannot read {file}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match report::markdown(&text, &subject, &baselines) {
                Ok(md) => {
                    print!("{md}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tidemq-bench: {file}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            scenario,
            opts,
            threads,
        } => run(scenario, &opts, threads),
    }
}

fn run(scenario: Scenario, opts: &Opts, threads: usize) -> ExitCode {
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidemq-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tidemq_bench::run(scenario, opts)) {
        Ok(outcome) => {
            println!("{}", outcome.to_json());
            println!("{}", outcome.human());
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tidemq-bench {}: {e}", scenario.name());
            ExitCode::FAILURE
        }
    }
}
