//! Cluster mode's NATS client (design: `docs/cluster.md`). The core decides every subject,
//! queue group, key and payload; this turns its cluster outputs into NATS operations, in
//! order, and what NATS delivers into inputs. Two connections: plain subscriptions and
//! publishes share one without echo (a node routes its own messages itself); queue
//! subscriptions have their own, with echo, so this node's members are candidates too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tidemq_core::cluster::ClusterConfig;
use tidemq_core::{Input, RecordAnswer, SCAN_BATCH};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Bytes of publishes and retained writes waiting for the NATS client (which buffers a
/// bounded amount more behind it). Past it a QoS 0 message or a retained write is dropped and
/// counted; a QoS 1/2 message's copy is kept, since JetStream acknowledged it (such copies
/// stop coming when NATS stalls: the durable writes share the connection).
const QUEUE_BYTES: usize = 64 << 20;
/// What a queued item costs beyond its payload.
const ITEM_OVERHEAD: usize = 128;
/// Between two attempts of a durable write.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The node feed: messages per pull, how long a pull waits for messages (and then how much
/// longer for its answer), and how long the server keeps a consumer nobody pulls from.
const FEED_BATCH: usize = 512;
const FEED_POLL: Duration = Duration::from_secs(2);
const FEED_GRACE: Duration = Duration::from_secs(3);
const FEED_INACTIVE: Duration = Duration::from_secs(30);
/// How long the marker of a released claim stays in the sessions bucket.
const RELEASED_MARKER_TTL: Duration = Duration::from_secs(60);
/// How long the start keeps asking JetStream for the buckets and the stream, and between two
/// attempts.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
const RETRY_SETUP: Duration = Duration::from_secs(1);
/// How long the start waits for a NATS server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A NATS subscription to make (`Some`) or drop (`None`), by the core's subscription id.
type InterestChange = Option<(String, Option<String>)>;

/// What the core asked for that the command task has not applied yet.
#[derive(Default)]
struct Pending {
    /// Interest changes, coalesced: a subscription dropped before it was made is never made,
    /// so this holds at most one entry per live subscription id plus one per drop.
    interest: Mutex<BTreeMap<u64, InterestChange>>,
    interest_changed: Notify,
    /// Bytes of publishes and retained writes queued (see [`QUEUE_BYTES`]).
    queued_bytes: AtomicUsize,
    /// QoS 0 publishes and retained writes dropped because the queue was full.
    dropped: AtomicU64,
}

impl Pending {
    /// Takes `bytes` of the queue, unless it is full and the item may be dropped.
    fn admit(&self, bytes: usize, droppable: bool) -> bool {
        let cost = bytes + ITEM_OVERHEAD;
        if droppable && self.queued_bytes.load(Ordering::Relaxed) + cost > QUEUE_BYTES {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(
                    dropped = n,
                    "cluster: the queue to NATS is full; dropping QoS 0 messages and retained writes"
                );
            }
            return false;
        }
        self.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        true
    }

    fn change_interest(&self, sid: u64, change: InterestChange) {
        if let Ok(mut interest) = self.interest.lock() {
            match (interest.get(&sid), &change) {
                // Dropped before it was made: nothing to do for NATS.
                (Some(Some(_)), None) => {
                    interest.remove(&sid);
                }
                _ => {
                    interest.insert(sid, change);
                }
            }
        }
        self.interest_changed.notify_one();
    }

    fn release(&self, bytes: usize) {
        self.queued_bytes
            .fetch_sub(bytes + ITEM_OVERHEAD, Ordering::Relaxed);
    }
}

/// The running client: the core's cluster outputs go in through it.
pub struct ClusterLink {
    sessions: kv::Store,
    /// The durable stream, for catch-up reads.
    durable: jetstream::stream::Stream,
    inputs: mpsc::Sender<Input>,
    publish_timeout: Duration,
    durables: mpsc::UnboundedSender<DurableWrite>,
    pending: Arc<Pending>,
    publishes: mpsc::UnboundedSender<(String, Bytes)>,
    retains: mpsc::UnboundedSender<(String, Option<Bytes>)>,
    /// The reaper's read of the sessions bucket, while it runs: one at a time.
    scan: Option<tokio::task::AbortHandle>,
}

/// The retained bucket's name for a subject prefix.
pub fn retained_bucket(prefix: &str) -> String {
    format!("{}_RETAINED", prefix.to_ascii_uppercase())
}

/// The sessions bucket's name for a subject prefix.
pub fn sessions_bucket(prefix: &str) -> String {
    format!("{}_SESSIONS", prefix.to_ascii_uppercase())
}

/// The durable stream's name for a subject prefix.
pub fn durable_stream(prefix: &str) -> String {
    format!("{}_DURABLE", prefix.to_ascii_uppercase())
}

/// Connects to NATS; `link`, when given, is told whenever the connection goes down or comes
/// back.
async fn connect(
    config: &ClusterConfig,
    echo: bool,
    link: Option<watch::Sender<bool>>,
) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .name(format!("tidemq-{}", config.node_name))
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None);
    if !echo {
        options = options.no_echo();
    }
    if let Some(link) = link {
        options = options.event_callback(move |event| {
            match event {
                async_nats::Event::Connected => {
                    link.send_replace(true);
                }
                async_nats::Event::Disconnected => {
                    warn!("cluster: the connection to NATS is down; reconnecting");
                    link.send_replace(false);
                }
                _ => {}
            }
            std::future::ready(())
        });
    }
    options
        .connect(config.nats_urls.as_slice())
        .await
        .map_err(|e| format!("cluster.nats_urls {:?}: {e}", config.nats_urls))
}

/// Runs `attempt` until it succeeds or `deadline` passes (its last error then), a second
/// apart, each failure logged.
async fn until<T, F, Fut>(deadline: tokio::time::Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if tokio::time::Instant::now() + RETRY_SETUP >= deadline => return Err(e),
            Err(e) => warn!("{e}; trying again"),
        }
        tokio::time::sleep(RETRY_SETUP).await;
    }
}

/// Opens (or creates) a key-value bucket keeping one value per key, replicated as
/// configured, capped at `max_bytes`.
async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    config: &ClusterConfig,
    max_bytes: u64,
    limit_markers: Option<Duration>,
) -> Result<kv::Store, String> {
    js.create_key_value(kv::Config {
        bucket: name.to_owned(),
        history: 1,
        num_replicas: usize::from(config.replicas),
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        limit_markers,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cluster: the bucket {name}: {e}"))
}

impl ClusterLink {
    /// Connects to NATS, opens (or creates) the retained bucket and starts its watch; what
    /// arrives is sent to `inputs`.
    pub async fn start(
        config: &ClusterConfig,
        inputs: mpsc::Sender<Input>,
    ) -> Result<ClusterLink, String> {
        let (link, link_rx) = watch::channel(true);
        let plain = connect(config, false, Some(link)).await?;
        let queued = connect(config, true, None).await?;
        tokio::spawn(report_link(link_rx, inputs.clone()));
        let js = jetstream::new(plain.clone());
        let bucket = retained_bucket(&config.subject_prefix);
        // JetStream may still be electing its leaders when the node starts (servers started
        // together): each set-up request is tried again until SETUP_DEADLINE.
        let deadline = tokio::time::Instant::now() + SETUP_DEADLINE;
        let store = until(deadline, || {
            open_bucket(&js, &bucket, config, config.retained_max_bytes, None)
        })
        .await?;
        // The marker a released claim leaves goes after a while, so the bucket holds only the
        // client ids in use.
        let name = sessions_bucket(&config.subject_prefix);
        let markers = Some(RELEASED_MARKER_TTL);
        let sessions = until(deadline, || {
            open_bucket(&js, &name, config, config.sessions_max_bytes, markers)
        })
        .await?;
        let stream = durable_stream(&config.subject_prefix);
        let durable = until(deadline, || async {
            js.get_or_create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{}.d.>", config.subject_prefix)],
                num_replicas: usize::from(config.replicas),
                max_bytes: i64::try_from(config.durable_max_bytes).unwrap_or(i64::MAX),
                max_age: Duration::from_millis(config.durable_max_age_ms),
                // Well above the publish timeout: a write retried after a lost acknowledgement
                // is kept once.
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cluster: the durable stream {stream}: {e}"))
        })
        .await?;
        info!(
            node = %config.node_name,
            urls = ?config.nats_urls,
            bucket = %bucket,
            "cluster: connected to NATS"
        );
        let pending = Arc::new(Pending::default());
        let (publishes, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_commands(
            plain,
            queued,
            rx,
            pending.clone(),
            inputs.clone(),
        ));
        let (retains, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_retains(
            store.clone(),
            rx,
            pending.clone(),
            inputs.clone(),
        ));
        tokio::spawn(watch_retained(store, inputs.clone()));
        let everything = format!("{}.d.>", config.subject_prefix);
        tokio::spawn(run_feed(durable.clone(), everything, inputs.clone()));
        let (durables, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_durables(js, rx, inputs.clone()));
        Ok(ClusterLink {
            sessions,
            durable,
            inputs,
            durables,
            publish_timeout: Duration::from_millis(config.publish_timeout_ms),
            pending,
            publishes,
            retains,
            scan: None,
        })
    }

    pub fn subscribe(&mut self, sid: u64, subject: String, queue: Option<String>) {
        self.change_interest(sid, Some((subject, queue)));
    }

    pub fn unsubscribe(&mut self, sid: u64) {
        self.change_interest(sid, None);
    }

    fn change_interest(&mut self, sid: u64, change: InterestChange) {
        self.pending.change_interest(sid, change);
    }

    /// Publishes an envelope to the other nodes. A QoS 0 one is dropped (and counted) when
    /// the queue to NATS is full.
    pub fn publish(&mut self, subject: String, payload: Bytes, droppable: bool) {
        if self.pending.admit(payload.len(), droppable) {
            let _ = self.publishes.send((subject, payload));
        }
    }

    /// QoS 0 messages and retained writes dropped because the queue to NATS was full.
    pub fn dropped(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }

    /// Writes a message to the durable stream and reports whether JetStream acknowledged it
    /// within the publish timeout. Writes go out in the order asked, so the stream holds a
    /// node's messages in its publishers' order (a retried write may land later). The core
    /// bounds how many wait (64 per connection).
    pub fn durable(&mut self, token: u64, subject: String, msg_id: String, payload: Bytes) {
        let _ = self.durables.send(DurableWrite {
            token,
            subject,
            msg_id,
            payload,
            deadline: tokio::time::Instant::now() + self.publish_timeout,
        });
    }

    /// Claims a client id for this node in the sessions bucket (compare-and-swap on the
    /// revision read, again after a conflict, until the publish timeout) and answers with the
    /// revision written and the entry it replaced. One per session opened, at most.
    pub fn claim(&mut self, token: u64, key: String, value: Bytes, keep_record: bool) {
        let (store, inputs) = (self.sessions.clone(), self.inputs.clone());
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        tokio::spawn(async move {
            let claimed = claim(&store, &key, value, keep_record, deadline).await;
            let (revision, previous) = match claimed {
                Ok((revision, previous)) => (Some(revision), previous),
                Err(e) => {
                    warn!(%key, "cluster: client id not claimed: {e}");
                    (None, None)
                }
            };
            let answer = Input::ClusterClaimed {
                token,
                revision,
                previous,
            };
            let _ = inputs.send(answer).await;
        });
    }

    /// Writes a session's record over exactly `revision`. On a conflict the entry is read: if
    /// its owner's line is still this one's (an earlier write answered late), the write is
    /// made over the revision read; otherwise another node owns the key (fenced).
    pub fn record(&mut self, token: u64, key: String, value: Bytes, revision: u64) {
        let (store, inputs) = (self.sessions.clone(), self.inputs.clone());
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        tokio::spawn(async move {
            let answer = match tokio::time::timeout_at(
                deadline,
                record(&store, &key, value, revision),
            )
            .await
            {
                Ok(answer) => answer,
                Err(_) => RecordAnswer::Failed,
            };
            if !matches!(answer, RecordAnswer::Written(_)) {
                tracing::debug!(%key, ?answer, "cluster: session record");
            }
            let _ = inputs.send(Input::ClusterRecorded { token, answer }).await;
        });
    }

    /// Reads the durable stream's messages `from..=to` for a session resumed here, through
    /// an ephemeral consumer of its own that goes when the read ends.
    pub fn catch_up(&mut self, token: u64, from: u64, to: u64) {
        let (stream, inputs) = (self.durable.clone(), self.inputs.clone());
        let limit = self.publish_timeout;
        tokio::spawn(async move {
            let ok = match catch_up(&stream, token, from, to, limit, &inputs).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(from, to, "cluster: catch-up read stopped: {e}");
                    false
                }
            };
            let _ = inputs.send(Input::ClusterCatchUpDone { token, ok }).await;
        });
    }

    /// Reads a sessions-bucket entry (who holds a client id) and answers with its value and
    /// revision, or none (also when NATS does not answer within the publish timeout).
    pub fn lookup(&mut self, token: u64, key: String) {
        let (store, inputs, limit) = (
            self.sessions.clone(),
            self.inputs.clone(),
            self.publish_timeout,
        );
        tokio::spawn(async move {
            let entry = match tokio::time::timeout(limit, store.entry(&key)).await {
                Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => {
                    Ok(Some((e.value, e.revision)))
                }
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) => Err(format!("the sessions bucket: {e}")),
                Err(_) => Err("the sessions bucket did not answer in time".to_owned()),
            };
            if let Err(why) = &entry {
                warn!(%key, "cluster: {why}");
            }
            let _ = inputs.send(Input::ClusterLookedUp { token, entry }).await;
        });
    }

    /// Reads every entry of the sessions bucket for the reaper, in batches; the last one says
    /// done, also when the read stopped. A read still running (the core gave it up) stops.
    pub fn scan(&mut self, token: u64) {
        if let Some(running) = self.scan.take() {
            running.abort();
        }
        let (store, inputs, limit) = (
            self.sessions.clone(),
            self.inputs.clone(),
            self.publish_timeout,
        );
        let task = tokio::spawn(async move {
            if let Err(e) = scan(&store, token, limit, &inputs).await {
                warn!("cluster: the scan of the sessions bucket stopped: {e}");
            }
            let done = Input::ClusterScanned {
                token,
                entries: Vec::new(),
                done: true,
            };
            let _ = inputs.send(done).await;
        });
        self.scan = Some(task.abort_handle());
    }

    /// Removes a claim unless another node's replaced it (then the revision differs).
    pub fn release(&mut self, key: String, revision: u64) {
        let store = self.sessions.clone();
        tokio::spawn(async move {
            let purged = store.purge_expect_revision_with_ttl(&key, revision, RELEASED_MARKER_TTL);
            if let Err(e) = purged.await {
                tracing::debug!(%key, "cluster: claim not released: {e}");
            }
        });
    }

    /// Writes a retained message (or its deletion) to the bucket. False when the queue to NATS
    /// is full: the write is dropped, and the core must be told it failed.
    #[must_use]
    pub fn retain(&mut self, key: String, value: Option<Bytes>) -> bool {
        let bytes = key.len() + value.as_ref().map_or(0, Bytes::len);
        if !self.pending.admit(bytes, true) {
            return false;
        }
        let _ = self.retains.send((key, value));
        true
    }
}

/// Applies the core's interest changes and publishes, each kind in the order made.
async fn run_commands(
    plain: Client,
    queued: Client,
    mut publishes: mpsc::UnboundedReceiver<(String, Bytes)>,
    pending: Arc<Pending>,
    inputs: mpsc::Sender<Input>,
) {
    let mut readers: BTreeMap<u64, JoinHandle<()>> = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            () = pending.interest_changed.notified() => {
                let changes = match pending.interest.lock() {
                    Ok(mut interest) => std::mem::take(&mut *interest),
                    Err(_) => break,
                };
                for (sid, change) in changes {
                    apply_interest(&plain, &queued, &mut readers, &inputs, sid, change).await;
                }
            }
            next = publishes.recv() => {
                let Some((subject, payload)) = next else {
                    break;
                };
                let bytes = payload.len();
                if let Err(e) = plain.publish(subject, payload).await {
                    warn!("cluster: publish failed: {e}");
                }
                pending.release(bytes);
            }
        }
    }
    for reader in readers.into_values() {
        reader.abort();
    }
}

/// Tells the core when the connection to NATS goes down or comes back (the last state of a
/// flapping link wins).
async fn report_link(mut link: watch::Receiver<bool>, inputs: mpsc::Sender<Input>) {
    while link.changed().await.is_ok() {
        let up = *link.borrow_and_update();
        if inputs.send(Input::ClusterLink { up }).await.is_err() {
            return;
        }
    }
}

/// Makes or drops one NATS subscription; what a made one receives goes to the core.
async fn apply_interest(
    plain: &Client,
    queued: &Client,
    readers: &mut BTreeMap<u64, JoinHandle<()>>,
    inputs: &mpsc::Sender<Input>,
    sid: u64,
    change: InterestChange,
) {
    let Some((subject, queue)) = change else {
        // Dropping the subscriber unsubscribes it.
        if let Some(reader) = readers.remove(&sid) {
            reader.abort();
        }
        return;
    };
    let made = match queue {
        Some(q) => queued.queue_subscribe(subject.clone(), q).await,
        None => plain.subscribe(subject.clone()).await,
    };
    match made {
        Ok(mut sub) => {
            let inputs = inputs.clone();
            let reader = tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let input = Input::ClusterMessage {
                        sid,
                        subject: m.subject.to_string(),
                        payload: m.payload,
                    };
                    if inputs.send(input).await.is_err() {
                        break;
                    }
                }
            });
            readers.insert(sid, reader);
        }
        Err(e) => warn!(%subject, "cluster: subscribe failed: {e}"),
    }
}

/// An ephemeral reader of the durable stream (the node feed, a catch-up read): no acks, in
/// memory, one replica, dropped by the server when nobody pulls from it for a while.
fn reader(subject: &str, deliver_policy: DeliverPolicy) -> pull::Config {
    pull::Config {
        filter_subject: subject.to_owned(),
        deliver_policy,
        ack_policy: AckPolicy::None,
        inactive_threshold: FEED_INACTIVE,
        num_replicas: 1,
        memory_storage: true,
        ..Default::default()
    }
}

/// One pull of up to [`FEED_BATCH`] messages, answered within [`FEED_POLL`] by the server.
async fn pull_batch(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
) -> Result<pull::Batch, String> {
    consumer
        .batch()
        .max_messages(FEED_BATCH)
        .expires(FEED_POLL)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// The node feed: one ephemeral consumer reading the whole durable stream from the node's
/// start, so a node has every QoS 1/2 message of the others however its sessions subscribe
/// (it routes by its own filters and drops what none matches). It keeps its own place: a gap
/// in the consumer's sequence, a pull left unanswered (its server gone) or an error makes a new
/// consumer from the message after the last one read, so nothing written meanwhile is
/// skipped and nothing read is read again. (The client library's ordered consumer starts a
/// recreated one from the stream's beginning when it has read nothing yet.)
async fn run_feed(stream: jetstream::stream::Stream, subject: String, inputs: mpsc::Sender<Input>) {
    let mut last: Option<u64> = None;
    loop {
        let deliver_policy = match last {
            Some(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            None => DeliverPolicy::New,
        };
        let consumer = match stream
            .create_consumer(reader(&subject, deliver_policy))
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => {
                warn!("cluster: the node feed could not open: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // From the end: what was there when it was made counts as read.
        if last.is_none() {
            let seq = consumer.cached_info().delivered.stream_sequence;
            last = Some(seq);
            if inputs.send(Input::ClusterFeedStart { seq }).await.is_err() {
                return;
            }
        }
        let mut delivered = 0;
        // One pull at a time, each answered within its expiry by the consumer's server; no
        // answer means that server is gone, and a new consumer is made on another.
        let why = loop {
            let pulled = tokio::time::timeout(FEED_POLL + FEED_GRACE, async {
                let mut batch = pull_batch(&consumer).await?;
                while let Some(next) = batch.next().await {
                    let m = next.map_err(|e| e.to_string())?;
                    let info = m.info().map_err(|e| e.to_string())?;
                    if info.consumer_sequence != delivered + 1 {
                        return Err(format!(
                            "skipped from {delivered} to {}",
                            info.consumer_sequence
                        ));
                    }
                    delivered = info.consumer_sequence;
                    last = Some(info.stream_sequence);
                    let input = Input::ClusterFeedMessage {
                        seq: info.stream_sequence,
                        subject: m.subject.to_string(),
                        payload: m.payload.clone(),
                    };
                    if inputs.send(input).await.is_err() {
                        return Err(String::new());
                    }
                }
                Ok(())
            })
            .await;
            match pulled {
                Ok(Ok(())) => {}
                Ok(Err(why)) => break why,
                Err(_) => break "no answer to a pull".to_owned(),
            }
        };
        if inputs.is_closed() {
            return;
        }
        warn!("cluster: the node feed: {why}; opening it again");
        let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    }
}

/// One claim: read the entry, write over exactly that revision; again on a conflict.
async fn claim(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    keep_record: bool,
    deadline: tokio::time::Instant,
) -> Result<(u64, Option<(Bytes, u64)>), String> {
    loop {
        let attempt = async {
            let entry = store.entry(key).await.map_err(|e| e.to_string())?;
            match entry {
                Some(e) => {
                    let value = match keep_record && e.operation == kv::Operation::Put {
                        true => with_record_of(&value, &e.value),
                        false => value.clone(),
                    };
                    let written = store.update(key, value, e.revision).await;
                    let written = written.map_err(|e| e.to_string())?;
                    let replaced =
                        (e.operation == kv::Operation::Put).then_some((e.value, e.revision));
                    Ok((written, replaced))
                }
                None => {
                    let written = store.create(key, value.clone()).await;
                    Ok((written.map_err(|e| e.to_string())?, None))
                }
            }
        };
        let last = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e)) => e,
            Err(_) => return Err("no answer in time".to_owned()),
        };
        if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
            return Err(last);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// A claim's owner line followed by the record of the entry it replaces, if it has one.
fn with_record_of(line: &Bytes, replaced: &Bytes) -> Bytes {
    let record = tidemq_core::cluster::record::owner_line(replaced).len();
    match replaced.get(record..) {
        Some(rest) if !rest.is_empty() => {
            let mut value = Vec::with_capacity(line.len() + rest.len());
            value.extend_from_slice(line);
            value.extend_from_slice(rest);
            Bytes::from(value)
        }
        _ => line.clone(),
    }
}

/// One record write (see [`ClusterLink::record`]).
async fn record(store: &kv::Store, key: &str, value: Bytes, revision: u64) -> RecordAnswer {
    let mut revision = revision;
    // Twice at most: the second write is over the revision just read.
    for _ in 0..2 {
        match store.update(key, value.clone(), revision).await {
            Ok(written) => return RecordAnswer::Written(written),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(_) => return RecordAnswer::Failed,
        }
        let ours = tidemq_core::cluster::record::owner_line(&value);
        match store.entry(key).await {
            Ok(Some(e))
                if e.operation == kv::Operation::Put
                    && tidemq_core::cluster::record::owner_line(&e.value) == ours =>
            {
                revision = e.revision;
            }
            Ok(_) => return RecordAnswer::Fenced,
            Err(_) => return RecordAnswer::Failed,
        }
    }
    RecordAnswer::Failed
}

/// Most bytes of entries in one batch of a scan (one entry may pass it alone).
const SCAN_BYTES: usize = 1 << 20;

/// The entries of the sessions bucket in batches of at most [`SCAN_BATCH`] entries or
/// [`SCAN_BYTES`]: one ordered read of every key's last entry (values included, not a request
/// per key), ended by the entry after which nothing was pending. Each step waits at most
/// `limit`.
async fn scan(
    store: &kv::Store,
    token: u64,
    limit: Duration,
    inputs: &mpsc::Sender<Input>,
) -> Result<(), String> {
    let in_time = |e: tokio::time::error::Elapsed| format!("no answer in time ({e})");
    // An empty bucket's read would wait for its first write.
    let info = tokio::time::timeout(limit, store.stream.get_info())
        .await
        .map_err(in_time)?
        .map_err(|e| e.to_string())?;
    if info.state.messages == 0 {
        return Ok(());
    }
    // Writes made meanwhile come too: the read ends once it has had as many entries as the
    // bucket held when it began, if the watch has not said it is current before.
    let mut left = info.state.messages;
    let mut watch = tokio::time::timeout(limit, store.watch_with_history(">"))
        .await
        .map_err(in_time)?
        .map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    let mut bytes = 0;
    while let Some(entry) = tokio::time::timeout(limit, watch.next())
        .await
        .map_err(in_time)?
    {
        let entry = entry.map_err(|e| e.to_string())?;
        left = left.saturating_sub(1);
        let last = entry.seen_current || left == 0;
        if entry.operation == kv::Operation::Put {
            bytes += entry.key.len() + entry.value.len();
            entries.push((entry.key, entry.value, entry.revision));
        }
        if !entries.is_empty() && (last || entries.len() >= SCAN_BATCH || bytes >= SCAN_BYTES) {
            bytes = 0;
            let batch = Input::ClusterScanned {
                token,
                entries: std::mem::take(&mut entries),
                done: false,
            };
            inputs
                .send(batch)
                .await
                .map_err(|_| "the broker stopped".to_owned())?;
        }
        if last {
            break;
        }
    }
    Ok(())
}

/// One catch-up read (see [`ClusterLink::catch_up`]): each pull is answered within `limit`.
async fn catch_up(
    stream: &jetstream::stream::Stream,
    token: u64,
    from: u64,
    to: u64,
    limit: Duration,
    inputs: &mpsc::Sender<Input>,
) -> Result<(), String> {
    let subject = stream.cached_info().config.subjects.first().cloned();
    let start = DeliverPolicy::ByStartSequence {
        start_sequence: from,
    };
    let config = reader(&subject.unwrap_or_default(), start);
    let consumer = tokio::time::timeout(limit, stream.create_consumer(config))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let name = consumer.cached_info().name.clone();
    let read = async {
        loop {
            let pulled = tokio::time::timeout(FEED_POLL + FEED_GRACE, async {
                let mut batch = pull_batch(&consumer).await?;
                let mut got = 0;
                while let Some(next) = batch.next().await {
                    let m = next.map_err(|e| e.to_string())?;
                    let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
                    got += 1;
                    if seq > to {
                        return Ok(None);
                    }
                    let input = Input::ClusterCatchUpMessage {
                        token,
                        seq,
                        subject: m.subject.to_string(),
                        payload: m.payload.clone(),
                    };
                    if inputs.send(input).await.is_err() {
                        return Err("the broker stopped".to_owned());
                    }
                    if seq == to {
                        return Ok(None);
                    }
                }
                Ok::<_, String>(Some(got))
            })
            .await
            .map_err(|_| "no answer to a pull".to_owned())??;
            match pulled {
                // Up to `to`, or nothing more: what the range held is read (the stream's
                // limits may have removed its end).
                None | Some(0) => return Ok(()),
                Some(_) => {}
            }
        }
    };
    let result = read.await;
    let _ = stream.delete_consumer(&name).await;
    result
}

struct DurableWrite {
    token: u64,
    subject: String,
    msg_id: String,
    payload: Bytes,
    /// The publish timeout, counted from the core's asking.
    deadline: tokio::time::Instant,
}

impl DurableWrite {
    /// Sends the write; the future answers with JetStream's acknowledgement.
    async fn send(&self, js: &jetstream::Context) -> Result<PublishAckFuture, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", self.msg_id.as_str());
        let sent = js.publish_with_headers(self.subject.clone(), headers, self.payload.clone());
        match tokio::time::timeout_at(self.deadline, sent).await {
            Ok(sent) => sent.map_err(|e| e.to_string()),
            Err(_) => Err("not sent".to_owned()),
        }
    }

    /// Waits for the acknowledgement of the first attempt, retrying until the deadline: a
    /// stream electing its leader answers "no stream" or nothing for a few seconds, and the
    /// de-duplication id keeps a retried write once.
    async fn settle(
        self,
        js: jetstream::Context,
        first: Result<PublishAckFuture, String>,
    ) -> (u64, Option<u64>) {
        let mut attempt = first;
        loop {
            let last = match attempt {
                Ok(ack) => match tokio::time::timeout_at(self.deadline, ack).await {
                    Ok(Ok(ack)) => return (self.token, Some(ack.sequence)),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no acknowledgement".to_owned(),
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() + RETRY_PAUSE >= self.deadline {
                warn!("cluster: durable write not acknowledged in time: {last}");
                return (self.token, None);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            attempt = self.send(&js).await;
        }
    }
}

/// Sends durable writes in the order asked and answers each when JetStream does.
async fn run_durables(
    js: jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<DurableWrite>,
    inputs: mpsc::Sender<Input>,
) {
    let mut waiting = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some(write) = next else {
                    break;
                };
                let first = write.send(&js).await;
                waiting.push(write.settle(js.clone(), first));
            }
            Some((token, seq)) = waiting.next(), if !waiting.is_empty() => {
                if inputs.send(Input::ClusterDurableDone { token, seq }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes retained messages to the bucket, in order.
async fn run_retains(
    store: kv::Store,
    mut rx: mpsc::UnboundedReceiver<(String, Option<Bytes>)>,
    pending: Arc<Pending>,
    inputs: mpsc::Sender<Input>,
) {
    while let Some((key, value)) = rx.recv().await {
        pending.release(key.len() + value.as_ref().map_or(0, Bytes::len));
        let written = match value {
            Some(v) => store
                .put(&key, v)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => store.delete(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            warn!(%key, "cluster: retained write failed: {e}");
            if inputs
                .send(Input::ClusterRetainFailed { key })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Mirrors the retained bucket: its current entries, then every change, in its order. A
/// watch that ends is opened again (from the current state: the mirror converges).
async fn watch_retained(store: kv::Store, inputs: mpsc::Sender<Input>) {
    loop {
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else {
                        break;
                    };
                    let value = match entry.operation {
                        kv::Operation::Put => Some(entry.value),
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    };
                    let input = Input::ClusterRetained {
                        key: entry.key,
                        value,
                    };
                    if inputs.send(input).await.is_err() {
                        return;
                    }
                }
                warn!("cluster: the retained bucket's watch ended; opening it again");
            }
            Err(e) => warn!("cluster: watching the retained bucket: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_only_what_may_be_dropped_and_counts_it() {
        let pending = Pending::default();
        let big = QUEUE_BYTES / 2;
        assert!(pending.admit(big, true));
        assert!(pending.admit(big - 2 * ITEM_OVERHEAD, true));
        // Full: QoS 0 and retained writes go, a copy JetStream acknowledged does not.
        assert!(!pending.admit(1, true));
        assert!(pending.admit(1, false));
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 1);
        pending.release(big);
        assert!(pending.admit(1, true));
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn interest_changes_coalesce_and_keep_the_order_made() {
        let pending = Pending::default();
        let sub = |s: &str| Some((s.to_owned(), None));
        pending.change_interest(1, sub("a"));
        pending.change_interest(2, sub("b"));
        pending.change_interest(3, sub("c"));
        // Made and dropped before the task ran: never made.
        pending.change_interest(2, None);
        // Dropped when NATS holds it (made earlier): the drop is kept.
        pending.change_interest(7, None);
        let changes: Vec<(u64, InterestChange)> = pending
            .interest
            .lock()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        assert_eq!(changes, vec![(1, sub("a")), (3, sub("c")), (7, None)]);
    }
}
