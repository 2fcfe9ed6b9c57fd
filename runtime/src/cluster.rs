//! Cluster mode's NATS client (design: `docs/cluster.md`). The core decides every subject,
//! queue group, key and payload; this turns its cluster outputs into NATS operations, in
//! order, and what NATS delivers into inputs. Two connections: plain subscriptions and
//! publishes share one without echo (a node routes its own messages itself); queue
//! subscriptions have their own, with echo, so this node's members are candidates too.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use tidemq_core::Input;
use tidemq_core::cluster::ClusterConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Publishes and retained writes waiting for the NATS client; past it they are dropped and
/// logged (the client itself buffers a bounded amount behind this).
const QUEUE: usize = 65_536;
/// Between two attempts of a durable write.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long the start waits for a NATS server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

enum Cmd {
    Subscribe {
        sid: u64,
        subject: String,
        queue: Option<String>,
    },
    Unsubscribe {
        sid: u64,
    },
    Publish {
        subject: String,
        payload: Bytes,
    },
}

/// The running client: the core's cluster outputs go in through it.
pub struct ClusterLink {
    js: jetstream::Context,
    inputs: mpsc::Sender<Input>,
    publish_timeout: Duration,
    cmds: mpsc::Sender<Cmd>,
    retains: mpsc::Sender<(String, Option<Bytes>)>,
    dropped: u64,
}

/// The retained bucket's name for a subject prefix.
pub fn retained_bucket(prefix: &str) -> String {
    format!("{}_RETAINED", prefix.to_ascii_uppercase())
}

/// The durable stream's name for a subject prefix.
pub fn durable_stream(prefix: &str) -> String {
    format!("{}_DURABLE", prefix.to_ascii_uppercase())
}

async fn connect(config: &ClusterConfig, echo: bool) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .name(format!("tidemq-{}", config.node_name))
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None);
    if !echo {
        options = options.no_echo();
    }
    options
        .connect(config.nats_urls.as_slice())
        .await
        .map_err(|e| format!("cluster.nats_urls {:?}: {e}", config.nats_urls))
}

impl ClusterLink {
    /// Connects to NATS, opens (or creates) the retained bucket and starts its watch; what
    /// arrives is sent to `inputs`.
    pub async fn start(
        config: &ClusterConfig,
        inputs: mpsc::Sender<Input>,
    ) -> Result<ClusterLink, String> {
        let plain = connect(config, false).await?;
        let queued = connect(config, true).await?;
        let js = jetstream::new(plain.clone());
        let bucket = retained_bucket(&config.subject_prefix);
        let store = js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                num_replicas: usize::from(config.replicas),
                max_bytes: i64::try_from(config.retained_max_bytes).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cluster: the retained bucket {bucket}: {e}"))?;
        let stream = durable_stream(&config.subject_prefix);
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{}.d.>", config.subject_prefix)],
            num_replicas: usize::from(config.replicas),
            max_bytes: i64::try_from(config.durable_max_bytes).unwrap_or(i64::MAX),
            max_age: Duration::from_millis(config.durable_max_age_ms),
            // Well above the publish timeout: a write retried after a lost acknowledgement is
            // kept once.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cluster: the durable stream {stream}: {e}"))?;
        info!(
            node = %config.node_name,
            urls = ?config.nats_urls,
            bucket = %bucket,
            "cluster: connected to NATS"
        );
        let (cmds, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run_commands(plain, queued, rx, inputs.clone()));
        let (retains, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run_retains(store.clone(), rx, inputs.clone()));
        tokio::spawn(watch_retained(store, inputs.clone()));
        Ok(ClusterLink {
            js,
            inputs,
            publish_timeout: Duration::from_millis(config.publish_timeout_ms),
            cmds,
            retains,
            dropped: 0,
        })
    }

    pub fn subscribe(&mut self, sid: u64, subject: String, queue: Option<String>) {
        self.send(Cmd::Subscribe {
            sid,
            subject,
            queue,
        });
    }

    pub fn unsubscribe(&mut self, sid: u64) {
        self.send(Cmd::Unsubscribe { sid });
    }

    pub fn publish(&mut self, subject: String, payload: Bytes) {
        self.send(Cmd::Publish { subject, payload });
    }

    /// Writes a message to the durable stream and reports whether JetStream acknowledged it
    /// within the publish timeout. One per waiting connection at most (the core's bound).
    pub fn durable(&mut self, token: u64, subject: String, msg_id: String, payload: Bytes) {
        let (js, inputs, limit) = (self.js.clone(), self.inputs.clone(), self.publish_timeout);
        tokio::spawn(async move {
            // Retried until the timeout: a stream electing its leader answers "no stream" or
            // nothing for a few seconds; the de-duplication id keeps a retried write once.
            let deadline = tokio::time::Instant::now() + limit;
            let mut last = String::new();
            let ok = loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                let write = async {
                    let ack = js
                        .publish_with_headers(subject.clone(), headers, payload.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    ack.await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout_at(deadline, write).await {
                    Ok(Ok(_)) => break true,
                    Ok(Err(e)) => last = e,
                    Err(_) => last = "no acknowledgement".to_owned(),
                }
                if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                    break false;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            };
            if !ok {
                warn!(
                    timeout_ms = limit.as_millis() as u64,
                    "cluster: durable write not acknowledged in time: {last}"
                );
            }
            let _ = inputs.send(Input::ClusterDurableDone { token, ok }).await;
        });
    }

    pub fn retain(&mut self, key: String, value: Option<Bytes>) {
        if self.retains.try_send((key, value)).is_err() {
            self.dropped += 1;
            warn!(
                dropped = self.dropped,
                "cluster: retained write dropped, the queue to NATS is full"
            );
        }
    }

    fn send(&mut self, cmd: Cmd) {
        if self.cmds.try_send(cmd).is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(
                    dropped = self.dropped,
                    "cluster: the queue to NATS is full; dropping"
                );
            }
        }
    }
}

/// Applies the core's cluster outputs in order.
async fn run_commands(
    plain: Client,
    queued: Client,
    mut rx: mpsc::Receiver<Cmd>,
    inputs: mpsc::Sender<Input>,
) {
    let mut readers: BTreeMap<u64, JoinHandle<()>> = BTreeMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Publish { subject, payload } => {
                if let Err(e) = plain.publish(subject, payload).await {
                    warn!("cluster: publish failed: {e}");
                }
            }
            Cmd::Subscribe {
                sid,
                subject,
                queue,
            } => {
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
            Cmd::Unsubscribe { sid } => {
                // Dropping the subscriber unsubscribes it.
                if let Some(reader) = readers.remove(&sid) {
                    reader.abort();
                }
            }
        }
    }
    for reader in readers.into_values() {
        reader.abort();
    }
}

/// Writes retained messages to the bucket, in order.
async fn run_retains(
    store: kv::Store,
    mut rx: mpsc::Receiver<(String, Option<Bytes>)>,
    inputs: mpsc::Sender<Input>,
) {
    while let Some((key, value)) = rx.recv().await {
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
