//! A node cut off from NATS: after `cluster.node_ttl` without its connection it sends its
//! clients to another server (v5 DISCONNECT 0x9C) and refuses CONNECTs until NATS is back,
//! rather than serve clients whose messages reach no other node.

use super::Broker;
use crate::api::{ConnId, Instant};
use crate::codec::reason;
use crate::conn::CloseReason;
use crate::timer::Timer;

impl Broker {
    /// The connection to NATS went down or came back. A node without it cannot route, claim
    /// or store for its clients; after `node_ttl` it sends them to another server.
    pub(super) fn cluster_link(&mut self, up: bool) {
        let now = self.now;
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if up {
            if c.link_down_since.take().is_some() {
                c.link_up_at = now;
            }
            self.timers
                .arm(Timer::ClusterCutOff, &mut c.cut_off_at, None);
            if std::mem::take(&mut c.cut_off) {
                tracing::info!("cluster: NATS is back; connections are accepted again");
            }
        } else if c.link_down_since.is_none() {
            c.link_down_since = Some(now);
            let at = now.plus_ms(c.config.node_ttl_ms);
            self.timers
                .arm(Timer::ClusterCutOff, &mut c.cut_off_at, Some(at));
        }
    }

    /// Still without NATS after `node_ttl`: every client goes (v5 DISCONNECT 0x9C, Use
    /// another server) and CONNECTs are refused until NATS is back. No will is published: its
    /// client is not gone, only sent elsewhere.
    pub(super) fn cut_off_tick(&mut self, at: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if c.cut_off_at != Some(at) {
            return;
        }
        c.cut_off_at = None;
        if c.link_down_since.is_none() {
            return;
        }
        c.cut_off = true;
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        tracing::warn!(
            clients = conns.len(),
            "cluster: without NATS for node_ttl; clients are sent to another server"
        );
        for conn in conns {
            self.drop_conn(
                conn,
                CloseReason {
                    peer_gone: false,
                    code: reason::USE_ANOTHER_SERVER,
                    notify: true,
                    will: false,
                    detail: "the node is cut off from the cluster".to_owned(),
                },
            );
        }
    }
}
