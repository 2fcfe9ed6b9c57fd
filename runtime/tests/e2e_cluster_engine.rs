#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The engine behaviour the cluster design (docs/cluster.md) relies on, checked against three
//! real `nats-server -js` processes on loopback: subjects made by the core's mapping route
//! across servers as MQTT would match them; one connection gets a copy per overlapping
//! subscription, in publish order, and none of its own with echo off; queue groups named by
//! group and filter deliver each message once per group; a replicated KV bucket refuses a
//! second create and a stale compare-and-swap; a replicated stream acknowledges writes with one
//! server of three killed, acknowledges nothing without a quorum, and keeps what it acknowledged.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, message::PublishMessage, stream};
use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use support::nats::NatsCluster;
use tidemq_core::cluster::subject::{
    DEFAULT_PREFIX as P, Space, name_key, nats_matches, subject_to_topic, subscription, topic_key,
    topic_to_subject,
};
use tidemq_core::topic::matches;

const MAX: usize = 2048;
/// How long a test waits for messages it expects.
const WAIT: Duration = Duration::from_secs(10);

fn start(name: &str) -> NatsCluster {
    tokio::task::block_in_place(|| NatsCluster::start(name))
}

async fn connect(url: &str) -> Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Subscribes `client` to `probe` last: subscriptions travel to the other servers in order on
/// each route, so once a publish to `probe` arrives, every earlier subscription is known too.
async fn probe_until_routed(publisher: &Client, probes: &mut [(String, Subscriber)]) {
    let start = Instant::now();
    for (subject, sub) in probes.iter_mut() {
        loop {
            publisher
                .publish(subject.clone(), "probe".into())
                .await
                .unwrap();
            publisher.flush().await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "interest in {subject} never reached the publisher"
            );
        }
    }
}

/// Reads messages from all `subs` until `want` have arrived (or `WAIT` passed), then for a
/// little longer so that duplicates would show.
async fn collect(subs: &mut [Subscriber], want: usize) -> Vec<async_nats::Message> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = settle.unwrap_or(deadline);
        if now >= until {
            return got;
        }
        let mut any = false;
        for sub in subs.iter_mut() {
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(20), sub.next()).await
            {
                got.push(m);
                any = true;
            }
        }
        if got.len() >= want && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(300));
        }
        if !any {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_filters_route_across_servers_as_mqtt_matches() {
    let cluster = start("routing");
    let publisher = connect(&cluster.url(0)).await;
    let filters = ["a/+", "a/#", "#", "$SYS/#", "+/b", "+", "a.b/ /+"];
    let topics = [
        "a", "a/b", "a/b/c", "a/", "/b", "$SYS/a", "$SYS", "b", "x/b", "a.b", "a.b/ /*", "a b/b",
        "é/b", "a/>",
    ];
    let mut subs: Vec<(String, Vec<Subscriber>)> = Vec::new();
    let mut probes = Vec::new();
    for (i, filter) in filters.iter().enumerate() {
        // Subscribers on the two servers the publisher is not connected to.
        let client = connect(&cluster.url(1 + i % 2)).await;
        let mut streams = Vec::new();
        for subject in subscription(P, Space::Live, filter, MAX).unwrap().subjects {
            streams.push(client.subscribe(subject).await.unwrap());
        }
        let probe = format!("probe.routing.{i}");
        probes.push((probe.clone(), client.subscribe(probe).await.unwrap()));
        client.flush().await.unwrap();
        subs.push((filter.to_string(), streams));
    }
    probe_until_routed(&publisher, &mut probes).await;

    for topic in topics {
        let subject = topic_to_subject(P, Space::Live, topic, MAX).unwrap();
        publisher
            .publish(subject, Bytes::from(topic.to_owned()))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    for (filter, streams) in &mut subs {
        let mut want: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| matches(filter, t))
            .collect();
        want.sort_unstable();
        let got = collect(streams, want.len()).await;
        let mut got: Vec<String> = got
            .iter()
            .map(|m| {
                let topic = subject_to_topic(P, Space::Live, m.subject.as_str()).unwrap();
                assert_eq!(m.payload, topic.as_bytes(), "subject decodes to its topic");
                topic
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "filter {filter:?}: each matching topic once");
    }

    // The longest subscription line and publish subject the mapping allows pass the server.
    let longest = 3584;
    let level = "x".repeat(1000);
    let raw = format!("$share/{}/{level}", "g".repeat(1573));
    let shared = subscription(P, Space::Live, &raw, longest).unwrap();
    let queue = shared.queue.clone().unwrap();
    assert_eq!(shared.subjects[0].len() + 1 + queue.len(), longest);
    let topic = "y".repeat(longest - "tmq.m.t.".len());
    let long_subject = topic_to_subject(P, Space::Live, &topic, longest).unwrap();
    assert_eq!(long_subject.len(), longest);
    let client = connect(&cluster.url(1)).await;
    let mut long_subs = vec![
        client
            .queue_subscribe(shared.subjects[0].clone(), queue)
            .await
            .unwrap(),
        client.subscribe(long_subject.clone()).await.unwrap(),
    ];
    let mut probes = vec![(
        "probe.routing.long".to_owned(),
        client.subscribe("probe.routing.long").await.unwrap(),
    )];
    client.flush().await.unwrap();
    probe_until_routed(&publisher, &mut probes).await;
    for t in [&level, &topic] {
        let subject = topic_to_subject(P, Space::Live, t, longest).unwrap();
        publisher.publish(subject, "long".into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let got = collect(&mut long_subs, 2).await;
    assert_eq!(got.len(), 2, "both long subjects delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_one_copy_per_matching_subscription_in_publish_order() {
    let cluster = start("copies");
    // One node's two connections: it publishes with echo off (and sees none of its own
    // messages on its plain subscriptions), its shared members sit on the other connection.
    let node_pub = async_nats::ConnectOptions::new()
        .no_echo()
        .connect(cluster.url(0))
        .await
        .unwrap();
    let node_queue = connect(&cluster.url(0)).await;
    let mut own = Vec::new();
    for subject in subscription(P, Space::Live, "a/#", MAX).unwrap().subjects {
        own.push(node_pub.subscribe(subject).await.unwrap());
    }
    let shared = subscription(P, Space::Live, "$share/g/a/#", MAX).unwrap();
    let mut member = Vec::new();
    for subject in &shared.subjects {
        member.push(
            node_queue
                .queue_subscribe(subject.clone(), shared.queue.clone().unwrap())
                .await
                .unwrap(),
        );
    }
    // Another node: several overlapping subscriptions on one connection.
    let remote = connect(&cluster.url(1)).await;
    let mut subs: Vec<(String, Subscriber)> = Vec::new();
    for filter in ["a/+", "a/#", "+/x"] {
        for subject in subscription(P, Space::Live, filter, MAX).unwrap().subjects {
            subs.push((subject.clone(), remote.subscribe(subject).await.unwrap()));
        }
    }
    let mut probes = vec![
        (
            "probe.copies.0".to_owned(),
            node_queue.subscribe("probe.copies.0").await.unwrap(),
        ),
        (
            "probe.copies.1".to_owned(),
            remote.subscribe("probe.copies.1").await.unwrap(),
        ),
    ];
    node_queue.flush().await.unwrap();
    remote.flush().await.unwrap();
    // Probed from the publisher's own connection: server 1's subscriptions must have reached
    // server 0 (a probe through server 2 proves only the route from 1 to 2).
    probe_until_routed(&node_pub, &mut probes).await;

    let topics = ["a/x", "a/y", "a", "b/x"];
    let sent: Vec<(&str, u32)> = (0..400).map(|n| (topics[n as usize % 4], n)).collect();
    for (topic, n) in &sent {
        let subject = topic_to_subject(P, Space::Live, topic, MAX).unwrap();
        node_pub
            .publish(subject, Bytes::from(n.to_string()))
            .await
            .unwrap();
    }
    node_pub.flush().await.unwrap();

    let seqs = |msgs: Vec<async_nats::Message>| -> Vec<u32> {
        msgs.iter()
            .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect()
    };
    // Each subscription: every matching message, once, in publish order. Where filters
    // overlap, the connection gets one copy per subscription (what the node must dedupe).
    for (pattern, sub) in &mut subs {
        let want: Vec<u32> = sent
            .iter()
            .filter(|(t, _)| {
                nats_matches(pattern, &topic_to_subject(P, Space::Live, t, MAX).unwrap())
            })
            .map(|(_, n)| *n)
            .collect();
        assert!(!want.is_empty());
        let got = seqs(collect(std::slice::from_mut(sub), want.len()).await);
        assert_eq!(got, want, "{pattern}: in publish order, once");
    }
    let want: Vec<u32> = sent
        .iter()
        .filter(|(t, _)| matches("a/#", t))
        .map(|(_, n)| *n)
        .collect();
    let mut got = seqs(collect(&mut member, want.len()).await);
    got.sort_unstable();
    assert_eq!(
        got, want,
        "the publishing node's own shared member gets every message"
    );
    assert!(
        collect(&mut own, 0).await.is_empty(),
        "with echo off, a node never gets its own messages back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_deliver_each_message_to_one_member_per_group() {
    let cluster = start("queues");
    let publisher = connect(&cluster.url(0)).await;
    // `$share/g/a/#` with a member on every server, and `$share/g/a/+` (the same group name on
    // another filter: another MQTT group) with members on two.
    let groups = [
        ("$share/g/a/#", vec![0, 1, 2]),
        ("$share/g/a/+", vec![1, 2]),
    ];
    let mut members: Vec<Vec<Vec<Subscriber>>> = Vec::new();
    let mut probes = Vec::new();
    for (g, (raw, servers)) in groups.iter().enumerate() {
        let sub = subscription(P, Space::Live, raw, MAX).unwrap();
        let queue = sub.queue.clone().unwrap();
        let mut group = Vec::new();
        for (m, &server) in servers.iter().enumerate() {
            let client = connect(&cluster.url(server)).await;
            let mut streams = Vec::new();
            for subject in &sub.subjects {
                streams.push(
                    client
                        .queue_subscribe(subject.clone(), queue.clone())
                        .await
                        .unwrap(),
                );
            }
            let probe = format!("probe.queues.{g}.{m}");
            probes.push((probe.clone(), client.subscribe(probe).await.unwrap()));
            client.flush().await.unwrap();
            group.push(streams);
        }
        members.push(group);
    }
    probe_until_routed(&publisher, &mut probes).await;

    // 60 messages to a/x (both groups), 20 to a (only a/#).
    let mut sent = Vec::new();
    for n in 0..80 {
        let topic = if n % 4 == 3 { "a" } else { "a/x" };
        let subject = topic_to_subject(P, Space::Live, topic, MAX).unwrap();
        let id = format!("{topic}#{n}");
        publisher
            .publish(subject, Bytes::from(id.clone()))
            .await
            .unwrap();
        sent.push((topic, id));
    }
    publisher.flush().await.unwrap();

    for ((raw, _), group) in groups.iter().zip(&mut members) {
        let filter = raw.splitn(3, '/').nth(2).unwrap();
        let want: Vec<&String> = sent
            .iter()
            .filter(|(t, _)| matches(filter, t))
            .map(|(_, id)| id)
            .collect();
        let mut all: Vec<Subscriber> = Vec::new();
        let mut member_of = Vec::new();
        for (m, streams) in group.drain(..).enumerate() {
            for s in streams {
                all.push(s);
                member_of.push(m);
            }
        }
        let got = collect(&mut all, want.len()).await;
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for msg in &got {
            let id = String::from_utf8(msg.payload.to_vec()).unwrap();
            *count.entry(id).or_default() += 1;
        }
        assert_eq!(got.len(), want.len(), "{raw}: one delivery per message");
        for id in want {
            assert_eq!(
                count.get(id),
                Some(&1),
                "{raw}: {id} delivered exactly once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_kv_creates_once_and_compares_revisions() {
    let cluster = start("kv");
    let js0 = jetstream::new(connect(&cluster.url(0)).await);
    let js1 = jetstream::new(connect(&cluster.url(1)).await);
    let kv0 = js0
        .create_key_value(kv::Config {
            bucket: "TMQ_SESSIONS_TEST".into(),
            history: 1,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let status = kv0.status().await.unwrap();
    assert_eq!(status.info.config.num_replicas, 3);
    let kv1 = js1.get_key_value("TMQ_SESSIONS_TEST").await.unwrap();

    // Retained keys of awkward topics are valid keys for the client and the server.
    for topic in ["a.b/ /*", "$SYS/x", "é/>", "/", "a_2E/_"] {
        let key = topic_key(topic, MAX).unwrap();
        kv0.put(&key, Bytes::from(topic.to_owned())).await.unwrap();
        let start = Instant::now();
        loop {
            if let Some(v) = kv1.get(&key).await.unwrap() {
                assert_eq!(v, topic.as_bytes());
                break;
            }
            assert!(start.elapsed() < WAIT, "{key} never became visible");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let key = name_key("client/1 é.*", MAX).unwrap();

    // Two nodes claim a new session: one create wins, the other is told it exists.
    let r1 = kv0.create(&key, "owner=n0".into()).await.unwrap();
    let err = kv1.create(&key, "owner=n1".into()).await.unwrap_err();
    assert_eq!(err.kind(), kv::CreateErrorKind::AlreadyExists, "{err}");

    // Takeover: a compare-and-swap on the revision read wins once; the old owner's write on
    // the same revision is refused (the fence).
    let r2 = kv1.update(&key, "owner=n1".into(), r1).await.unwrap();
    assert!(r2 > r1);
    let err = kv0
        .update(&key, "owner=n0 again".into(), r1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), kv::UpdateErrorKind::WrongLastRevision, "{err}");
    let r3 = kv0.update(&key, "owner=n0".into(), r2).await.unwrap();
    assert!(r3 > r2);

    let start = Instant::now();
    loop {
        let entry = kv1.entry(&key).await.unwrap().unwrap();
        if entry.revision == r3 {
            assert_eq!(entry.value, "owner=n0");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the last write never became visible"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One durable publish, acknowledged or not within `timeout`.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    timeout: Duration,
) -> Result<u64, String> {
    let publish = PublishMessage::build()
        .payload(Bytes::from(id.to_owned()))
        .message_id(id);
    let attempt = async {
        let ack = js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|a| a.sequence).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err("no answer".into()),
    }
}

/// Writes `id` until JetStream acknowledges it (retried with the same id, stored once), for at
/// most 30 s.
async fn publish_until_acked(js: &jetstream::Context, subject: &str, id: &str) -> u64 {
    let start = Instant::now();
    loop {
        match publish_acked(js, subject, id, Duration::from_secs(3)).await {
            Ok(seq) => return seq,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{id} never acked: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_stream_survives_one_lost_server_and_fails_closed_without_quorum() {
    let mut cluster = start("stream");
    let admin = jetstream::new(connect(&cluster.url(0)).await);
    let mut stream = admin
        .create_stream(stream::Config {
            name: "TMQ_DURABLE_TEST".into(),
            subjects: vec![format!("{P}.d.>")],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .unwrap()
        .leader
        .unwrap();
    let leader = cluster.index_of(&leader);
    // The publisher stays on a server that lives; the stream's leader dies first.
    let home = (0..3).find(|&i| i != leader).unwrap();
    let second = (0..3).find(|&i| i != leader && i != home).unwrap();
    let mut js = jetstream::new(connect(&cluster.url(home)).await);
    js.set_timeout(Duration::from_secs(2));
    let subject = topic_to_subject(P, Space::Durable, "a/b", MAX).unwrap();

    // The new stream's interest reaches the publisher's server a moment after its creation
    // ("no stream found for given subject" until then), so the first writes retry too.
    let mut acked: Vec<(u64, String)> = Vec::new();
    for n in 0..20 {
        let id = format!("before-{n}");
        let seq = publish_until_acked(&js, &subject, &id).await;
        acked.push((seq, id));
    }

    // kill -9 the stream's leader: two replicas of three remain, a quorum; after an election
    // writes are acknowledged again (retried with the same id, stored once).
    tokio::task::block_in_place(|| cluster.kill9(leader));
    let killed = Instant::now();
    for n in 0..10 {
        let id = format!("one-down-{n}");
        let seq = publish_until_acked(&js, &subject, &id).await;
        acked.push((seq, id));
    }
    eprintln!(
        "one server of three killed: writes acknowledged again after {:?}",
        killed.elapsed()
    );

    // kill -9 a second server: one of three, no quorum. Nothing may be acknowledged.
    tokio::task::block_in_place(|| cluster.kill9(second));
    for n in 0..3 {
        let id = format!("no-quorum-{n}");
        let result = publish_acked(&js, &subject, &id, Duration::from_secs(5)).await;
        assert!(result.is_err(), "acknowledged without a quorum: {result:?}");
        eprintln!("without a quorum, {id}: {}", result.unwrap_err());
    }

    // Both servers back: every acknowledged write is there, at its sequence.
    tokio::task::block_in_place(|| {
        cluster.restart(leader);
        cluster.restart(second);
    });
    let start = Instant::now();
    for (seq, id) in &acked {
        loop {
            match stream.get_raw_message(*seq).await {
                Ok(m) => {
                    assert_eq!(m.payload, id.as_bytes(), "sequence {seq}");
                    break;
                }
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "{id} at {seq}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let mut seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        acked.len(),
        "one sequence per acknowledged message"
    );
}
