//! Scenario families (robustness.md §3.5) as seed families, and BUGGIFY-style knobs.

use tidemq_core::Config;
use tidemq_core::acl::{AclRules, AclSettings, Decision, DenyAction};
use tidemq_core::codec::ProtocolVersion;
use tidemq_core::config::SyncMode;

use crate::client::{Attack, Profile, Role};
use crate::net::LinkShape;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Persistent QoS 1 subscribers partitioned (both ways and one way), then heal.
    S1,
    /// S1 at QoS 2, publishers cut mid-handshake.
    S2,
    /// Slow consumers that withhold acks, tiny windows and queues.
    S3,
    /// Silent black holes of clients with wills and will delays.
    S4,
    /// Client id takeover storm.
    S5,
    /// Broker crash and restart with persistence (`sync = fsync` or `os`): persistent
    /// sessions publishing and subscribing at QoS 1/2, retained and subscription churn,
    /// crashes at chosen persistence points, process crashes and power losses, slow disks,
    /// now and then a store failure. The store is [`crate::store::SimStore`].
    S6,
    /// The same without a durable promise: persistence off, or `sync = none`.
    S7,
    /// Retained churn.
    S8,
    /// Shared subscriptions, members cut mid-flow.
    S9,
    /// Unsubscribe during in-flight QoS 1/2, acks held.
    S10,
    /// Message expiry under partition.
    S11,
    /// Topic alias and Receive Maximum stress, with alias abuse.
    S12,
    /// Bridge uplink outage (partition, black hole, RST, refused connects), also mid-drain.
    S13,
    /// Bridge to a scripted hostile remote.
    S14,
    /// Two brokers bridged both ways (v5): the loop guard.
    S15,
    /// Pre-CONNECT flood, slowloris, bad first packets.
    S16,
    /// Mid-session fuzzing.
    S17,
    /// Configuration reloads (valid and invalid) and admin requests under load.
    S20,
    /// HTTP API fuzz at a high rate during traffic.
    S21,
    /// Clock chaos: wall clock jumps, broker suspended.
    S22,
    /// Many persistent sessions with random ids.
    S23,
    /// Swizzle-clog.
    S24,
    /// Adversaries against a small memory budget: retained floods, SUBSCRIBEs of copies of
    /// `#`, session floods, ping floods and subscribers that never read, beside honest
    /// workers and probers whose QoS 1 messages must keep arriving.
    S25,
    /// Every CONNECT's credentials checked outside the core, answered late, out of order,
    /// refused, busy or never; an ACL denies publishing to `t/c/#`.
    Auth,
}

pub const FAMILIES: &[Family] = &[
    Family::S1,
    Family::S2,
    Family::S3,
    Family::S4,
    Family::S5,
    Family::S6,
    Family::S7,
    Family::S8,
    Family::S9,
    Family::S10,
    Family::S11,
    Family::S12,
    Family::S13,
    Family::S14,
    Family::S15,
    Family::S16,
    Family::S17,
    Family::S20,
    Family::S21,
    Family::S22,
    Family::S23,
    Family::S24,
    Family::S25,
    Family::Auth,
];

impl Family {
    /// Families that run in the two-broker bridge world.
    pub fn is_bridge(self) -> bool {
        matches!(self, Family::S13 | Family::S14 | Family::S15)
    }

    pub fn of_seed(seed: u64) -> Family {
        let i = (seed % FAMILIES.len() as u64) as usize;
        FAMILIES.get(i).copied().unwrap_or(Family::S1)
    }
}

/// Per mille weights of each fault kind, and how often faults come.
#[derive(Debug, Clone, Default)]
pub struct FaultMix {
    pub every_ms: (u64, u64),
    pub partition: u64,
    pub one_way: u64,
    pub black_hole: u64,
    pub rst: u64,
    pub restart: u64,
    pub suspend: u64,
    pub wall_jump: u64,
    pub swizzle: u64,
    pub partition_ms: (u64, u64),
}

#[derive(Debug, Clone)]
pub struct Knobs {
    pub family: Family,
    pub config: Config,
    pub shape: LinkShape,
    /// Socket send buffer of the broker's side of each connection, bytes.
    pub sndbuf: usize,
    pub chaos_ms: u64,
    pub faults: FaultMix,
    pub profiles: Vec<Profile>,
    /// Visit ready connections in a rotating order rather than by id.
    pub random_order: bool,
    /// S6: the store fails once, at a time in this range (then the broker exits and
    /// restarts from what the store kept).
    pub persist_fail: Option<(u64, u64)>,
    /// S25: the broker bridges to a hostile remote that floods the link (`remote`).
    pub bridge_flood: bool,
}

fn version(rng: &mut Rng) -> ProtocolVersion {
    if rng.chance(500) {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    }
}

impl Knobs {
    pub fn from_seed(seed: u64) -> Knobs {
        Knobs::in_family(seed, Family::of_seed(seed))
    }

    /// The knobs of `seed` run as `family` (what the seed chose when the family list was
    /// shorter: regression seeds stay the runs they were filed as).
    pub fn in_family(seed: u64, family: Family) -> Knobs {
        let mut rng = Rng::new(seed);
        let mut config = Config {
            sys_events: rng.chance(300),
            ..Config::default()
        };
        // BUGGIFY: tiny limits now and then.
        if rng.chance(500) {
            config.max_inflight = rng.range(1, 4) as u16;
        }
        if rng.chance(400) {
            config.receive_maximum = rng.range(2, 6) as u16;
        }
        config.msq_len = if rng.chance(300) {
            rng.range(1, 8) as u32
        } else {
            4096
        };
        if rng.chance(400) {
            config.max_topic_alias = rng.range(0, 3) as u16;
        }
        if rng.chance(300) {
            config.max_packet_size = rng.range(256, 1024) as u32;
        }
        if rng.chance(300) {
            config.max_write_buffer = rng.range(1024, 4096) as u32;
        }
        if rng.chance(200) {
            config.max_keepalive = rng.range(1, 10) as u16;
        }
        config.connect_timeout_ms = rng.range(500, 5_000);
        let shape = LinkShape {
            latency_ms: rng.range(0, 30),
            jitter_ms: rng.range(0, 40),
            fragment_per_mille: rng.range(0, 800),
        };
        let mut faults = FaultMix {
            every_ms: (500, 4_000),
            partition: 200,
            one_way: 100,
            black_hole: 50,
            rst: 150,
            restart: 0,
            suspend: 0,
            wall_jump: 0,
            swizzle: 0,
            partition_ms: (200, 15_000),
        };
        let mut n_workers = rng.range(3, 6) as usize;
        let mut persist_per_mille = 700;
        let mut expiry = (5u64, 120u64);
        let mut will_rate = 300;
        let mut withhold_rate = 20;
        let mut retain_rate = 100;
        let mut expiry_rate = 0;
        let mut alias = false;
        let mut abuse = false;
        let mut churn = false;
        let mut fuzz_rate = 0;
        let mut leave_rate = 10;
        let mut storm = 0;
        let mut shared = 0;
        let mut fuzzers = 0;
        let mut max_q: u8 = 2;
        let mut persist_fail = None;
        let mut attacks: Vec<Attack> = Vec::new();
        let mut probers = 0;
        let mut bridge_flood = false;
        match family {
            Family::S1 => {
                max_q = 1;
                faults.partition = 500;
                faults.one_way = 300;
                faults.partition_ms = (500, 40_000);
            }
            Family::S2 => {
                faults.rst = 500;
                faults.partition = 300;
            }
            Family::S3 => {
                withhold_rate = 300;
                faults.one_way = 500;
                config.max_inflight = rng.range(1, 3) as u16;
                config.msq_len = rng.range(2, 16) as u32;
            }
            Family::S4 => {
                will_rate = 900;
                faults.black_hole = 600;
                faults.rst = 200;
            }
            Family::S5 => {
                storm = rng.range(3, 6) as usize;
                faults.rst = 400;
            }
            Family::S6 | Family::S7 => {
                faults = FaultMix {
                    every_ms: (400, 3_000),
                    partition: 120,
                    one_way: 40,
                    black_hole: 30,
                    rst: 150,
                    restart: 350,
                    partition_ms: (200, 10_000),
                    ..FaultMix::default()
                };
                persist_per_mille = 900;
                expiry = (2, 900);
                retain_rate = 250;
                churn = true;
                will_rate = 150;
                let p = &mut config.persistence;
                if family == Family::S6 {
                    p.enable = true;
                    p.sync = if rng.chance(550) {
                        SyncMode::Fsync
                    } else {
                        SyncMode::Os
                    };
                    if rng.chance(250) {
                        persist_fail = Some((3_000, 12_000));
                    }
                } else if rng.chance(500) {
                    p.enable = true;
                    p.sync = SyncMode::None;
                }
            }
            Family::S8 => {
                retain_rate = 600;
                churn = true;
            }
            Family::S9 => {
                shared = rng.range(2, 4) as usize;
                faults.partition = 400;
                faults.rst = 400;
                expiry = (u32::MAX as u64, u32::MAX as u64);
            }
            Family::S10 => {
                churn = true;
                withhold_rate = 200;
            }
            Family::S11 => {
                expiry_rate = 600;
                faults.partition = 600;
                faults.partition_ms = (1_000, 30_000);
            }
            Family::S12 => {
                alias = true;
                abuse = rng.chance(500);
                config.max_topic_alias = rng.range(1, 3) as u16;
                config.max_topic_alias_out = rng.range(0, 3) as u16;
                config.receive_maximum = rng.range(1, 4) as u16;
            }
            Family::S16 => {
                fuzzers = rng.range(4, 12) as usize;
            }
            Family::S17 => {
                fuzz_rate = 5;
                fuzzers = 2;
            }
            Family::S22 => {
                faults.suspend = 300;
                faults.wall_jump = 400;
            }
            Family::S23 => {
                n_workers = rng.range(8, 16) as usize;
                persist_per_mille = 950;
                expiry = (1, 20);
                leave_rate = 30;
            }
            Family::S24 => {
                faults.swizzle = 500;
            }
            Family::S25 => {
                config.max_memory = 1024 * 1024;
                config.max_packet_size = rng.range(1024, 4096) as u32;
                config.max_write_buffer = rng.range(4096, 16_384) as u32;
                config.max_inflight = rng.range(2, 8) as u16;
                config.receive_maximum = rng.range(4, 16) as u16;
                config.max_topic_alias = rng.range(0, 3) as u16;
                config.msq_len = rng.range(32, 512) as u32;
                faults.partition = 100;
                faults.rst = 100;
                attacks = vec![
                    Attack::Retained,
                    Attack::Filters,
                    Attack::Sessions,
                    Attack::Pings,
                    Attack::NonReader,
                    Attack::NonReader,
                ];
                // Some seeds run one attack alone, so each is seen against the budget by itself.
                if rng.chance(400)
                    && let Some(one) = rng.pick(&attacks).copied()
                {
                    attacks = vec![one, one];
                }
                probers = rng.range(1, 3) as usize;
                // Its own stream: the seeds' other draws stay what they were.
                let mut brng = Rng::new(seed ^ 0xB21D_6E00_F100_D000);
                if brng.chance(600) {
                    let bridge = crate::remote::bridge_config(&mut brng);
                    config.bridges.insert("hostile".to_owned(), bridge);
                    bridge_flood = true;
                }
                // Honest workers keep to what the model can follow under pressure: a QoS 0
                // retained message dropped at the high mark has no answer to show it, and a
                // shed session's will goes out early (at the session's end, as it should).
                retain_rate = 0;
                will_rate = 0;
            }
            Family::Auth => auth_knobs(&mut config, &mut rng),
            // Run by `bridge::BridgeWorld`; these knobs are not used.
            Family::S13 | Family::S14 | Family::S15 => {}
            Family::S20 => {
                will_rate = 0;
                faults.partition = 150;
                faults.rst = 100;
                faults.one_way = 0;
                faults.black_hole = 0;
            }
            Family::S21 => {
                will_rate = 0;
                faults = FaultMix {
                    every_ms: (1_000, 4_000),
                    ..FaultMix::default()
                };
                config.sys_events = true;
            }
        }
        if family != Family::S3 && rng.chance(700) {
            // Most seeds keep queues big enough that drops are rare.
            config.msq_len = config.msq_len.max(64);
        }
        let server_receive_max = config.receive_maximum;
        let mut profiles = Vec::new();
        let keep_alive = |rng: &mut Rng| *rng.pick(&[1u16, 2, 3, 5, 10, 20]).unwrap_or(&5);
        let all_filters: &[&str] = &[
            "t/#", "t/+/x", "t/a/+", "#", "+/+/+", "r/#", "t/c/z", "$app/#", "r/+",
        ];
        for i in 0..n_workers {
            let v = version(&mut rng);
            let persistent = rng.chance(persist_per_mille);
            let mut filters = Vec::new();
            for _ in 0..rng.range(0, 3) {
                if let Some(f) = rng.pick(all_filters) {
                    filters.push(((*f).to_owned(), rng.range(0, u64::from(max_q)) as u8));
                }
            }
            if family == Family::S1 && filters.is_empty() {
                filters.push(("t/#".to_owned(), 1));
            }
            let mut client_id = if family == Family::S23 {
                format!("c{:x}", rng.next_u64() & 0xFFFF)
            } else {
                format!("w{i}")
            };
            // Random ids can collide, and two live workers sharing one would take each other
            // over forever [MQTT-3.1.4-3]: keep them distinct.
            if profiles.iter().any(|p: &Profile| p.client_id == client_id) {
                client_id = format!("{client_id}-{i}");
            }
            profiles.push(Profile {
                client_id,
                role: Role::Worker,
                version: v,
                persistent,
                expiry: rng.range(expiry.0, expiry.1) as u32,
                keep_alive: keep_alive(&mut rng),
                receive_max: (v.is_v5() && rng.chance(500)).then(|| rng.range(1, 5) as u16),
                will: rng
                    .chance(will_rate)
                    .then(|| (rng.range(0, 8) as u32, rng.range(0, 2) as u8)),
                filters,
                window: rng.range(1, 8) as u16,
                publish_rate: rng.range(200, 900),
                retain_rate,
                expiry_rate,
                topic_alias: alias,
                accept_aliases: (alias && v.is_v5()).then(|| rng.range(0, 4) as u16),
                alias_abuse: abuse,
                churn_subs: churn,
                withhold_rate,
                leave_rate,
                fuzz_rate,
                think_ms: (20, 400),
                server_receive_max,
                server_max_keepalive: config.max_keepalive,
                server_max_packet: config.max_packet_size,
                faultable: true,
            });
        }
        for i in 0..shared {
            let v = version(&mut rng);
            profiles.push(Profile {
                client_id: format!("m{i}"),
                role: Role::SharedMember,
                version: v,
                persistent: true,
                expiry: u32::MAX,
                keep_alive: keep_alive(&mut rng),
                receive_max: v.is_v5().then(|| rng.range(1, 4) as u16),
                will: None,
                filters: vec![("$share/g/s/#".to_owned(), rng.range(1, 2) as u8)],
                window: 1,
                publish_rate: 0,
                retain_rate: 0,
                expiry_rate: 0,
                topic_alias: false,
                accept_aliases: None,
                alias_abuse: false,
                churn_subs: false,
                withhold_rate: 100,
                leave_rate: 5,
                fuzz_rate: 0,
                think_ms: (20, 300),
                server_receive_max,
                server_max_keepalive: config.max_keepalive,
                server_max_packet: config.max_packet_size,
                faultable: true,
            });
        }
        for _ in 0..storm {
            let v = version(&mut rng);
            profiles.push(Profile {
                client_id: "storm".to_owned(),
                role: Role::Storm,
                version: v,
                persistent: rng.chance(500),
                expiry: 60,
                keep_alive: keep_alive(&mut rng),
                receive_max: None,
                will: rng.chance(300).then_some((0, 1)),
                filters: vec![("t/#".to_owned(), rng.range(0, 2) as u8)],
                window: 2,
                publish_rate: 500,
                retain_rate: 0,
                expiry_rate: 0,
                topic_alias: false,
                accept_aliases: None,
                alias_abuse: false,
                churn_subs: true,
                withhold_rate: 0,
                leave_rate: 0,
                fuzz_rate: 0,
                think_ms: (5, 100),
                server_receive_max,
                server_max_keepalive: config.max_keepalive,
                server_max_packet: config.max_packet_size,
                faultable: true,
            });
        }
        for i in 0..fuzzers {
            profiles.push(Profile {
                client_id: format!("f{i}"),
                role: Role::Fuzzer,
                version: version(&mut rng),
                persistent: false,
                expiry: 0,
                keep_alive: 0,
                receive_max: None,
                will: None,
                filters: Vec::new(),
                window: 1,
                publish_rate: 0,
                retain_rate: 0,
                expiry_rate: 0,
                topic_alias: false,
                accept_aliases: None,
                alias_abuse: false,
                churn_subs: false,
                withhold_rate: 0,
                leave_rate: 0,
                fuzz_rate: 0,
                think_ms: (50, 500),
                server_receive_max,
                server_max_keepalive: config.max_keepalive,
                server_max_packet: config.max_packet_size,
                faultable: false,
            });
        }
        for (i, attack) in attacks.into_iter().enumerate() {
            profiles.push(Profile {
                client_id: format!("x{i}"),
                role: Role::Flood(attack),
                // A v5 retained flood is told 0x97; 3.1.1 would be cut (scenario tests).
                version: if attack == Attack::Retained {
                    ProtocolVersion::V5
                } else {
                    version(&mut rng)
                },
                persistent: attack == Attack::Sessions,
                expiry: u32::MAX,
                keep_alive: 0,
                receive_max: None,
                will: None,
                filters: match attack {
                    Attack::NonReader => vec![("#".to_owned(), 1)],
                    _ => Vec::new(),
                },
                window: 1,
                publish_rate: 0,
                retain_rate: 0,
                expiry_rate: 0,
                topic_alias: false,
                accept_aliases: None,
                alias_abuse: false,
                churn_subs: false,
                withhold_rate: 0,
                leave_rate: 0,
                fuzz_rate: 0,
                // Often enough to pass the budget within the chaos, rarely enough to keep a
                // seed under a second.
                think_ms: (15, 60),
                server_receive_max,
                server_max_keepalive: config.max_keepalive,
                server_max_packet: config.max_packet_size,
                faultable: false,
            });
        }
        for i in 0..probers {
            let v = version(&mut rng);
            profiles.push(Profile {
                client_id: format!("p{i}"),
                role: Role::Prober,
                version: v,
                persistent: false,
                expiry: 0,
                keep_alive: 5,
                receive_max: None,
                will: None,
                // Its own topic: the index it will have among the actors.
                filters: vec![(format!("h/{}", profiles.len()), 1)],
                window: 2,
                publish_rate: 1000,
                retain_rate: 0,
                expiry_rate: 0,
                topic_alias: false,
                accept_aliases: None,
                alias_abuse: false,
                churn_subs: false,
                withhold_rate: 0,
                leave_rate: 0,
                fuzz_rate: 0,
                think_ms: (200, 400),
                server_receive_max,
                server_max_keepalive: config.max_keepalive,
                server_max_packet: config.max_packet_size,
                faultable: false,
            });
        }
        // The will watcher: never faulted, always acking.
        profiles.push(Profile {
            client_id: "watcher".to_owned(),
            role: Role::Watcher,
            version: ProtocolVersion::V5,
            persistent: true,
            expiry: u32::MAX,
            keep_alive: 0,
            receive_max: None,
            will: None,
            filters: vec![("will/#".to_owned(), 2)],
            window: 1,
            publish_rate: 0,
            retain_rate: 0,
            expiry_rate: 0,
            topic_alias: false,
            accept_aliases: None,
            alias_abuse: false,
            churn_subs: false,
            withhold_rate: 0,
            leave_rate: 0,
            fuzz_rate: 0,
            think_ms: (500, 1_000),
            server_receive_max,
            server_max_keepalive: config.max_keepalive,
            server_max_packet: config.max_packet_size,
            faultable: false,
        });
        Knobs {
            family,
            config,
            shape,
            sndbuf: rng.range(256, 16_384) as usize,
            chaos_ms: rng.range(20_000, 60_000),
            faults,
            profiles,
            random_order: rng.chance(500),
            persist_fail,
            bridge_flood,
        }
    }

    /// The end-of-run retained auditor.
    pub fn auditor(&self) -> Profile {
        Profile {
            client_id: "auditor".to_owned(),
            role: Role::Auditor,
            version: ProtocolVersion::V5,
            persistent: false,
            expiry: 0,
            keep_alive: 0,
            receive_max: None,
            will: None,
            filters: vec![("r/#".to_owned(), 0)],
            window: 1,
            publish_rate: 0,
            retain_rate: 0,
            expiry_rate: 0,
            topic_alias: false,
            accept_aliases: None,
            alias_abuse: false,
            churn_subs: false,
            withhold_rate: 0,
            leave_rate: 0,
            fuzz_rate: 0,
            think_ms: (100, 200),
            server_receive_max: self.config.receive_maximum,
            server_max_keepalive: self.config.max_keepalive,
            server_max_packet: self.config.max_packet_size,
            faultable: false,
        }
    }
}

/// The `Auth` family's broker: a password table to ask about (the sim answers), few places
/// to wait in, and an ACL.
fn auth_knobs(config: &mut Config, rng: &mut Rng) {
    config.allow_anonymous = false;
    config.auth.password_file = Some("sim-passwd".to_owned());
    config.auth.max_pending = rng.range(1, 6) as u32;
    let rules = r#"rules = [
        { permit = deny, action = publish, topics = ["t/c/#"] }
        { permit = allow }
    ]"#;
    if let Ok(rules) = AclRules::from_acl_conf(rules, &Default::default(), Decision::Allow) {
        config.acl = AclSettings {
            enable: true,
            deny_action: DenyAction::Ignore,
            rules,
        };
    }
}
