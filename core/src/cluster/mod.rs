//! Cluster mode on NATS JetStream, as pure data (design: `docs/cluster.md`). The runtime will
//! own the NATS client; what is here only computes names.
//!
//! - `subject`: MQTT topics and filters as NATS subjects, queue groups and KV keys.

pub mod subject;
