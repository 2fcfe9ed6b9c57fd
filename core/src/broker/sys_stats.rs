//! The broker's figures at one moment (what `/metrics` and the `$SYS/broker` tree show
//! beside the counters), and the tree's timer: every `sys_interval` seconds the topics whose
//! value changed are published, retained, QoS 0, never stored.

use bytes::Bytes;

use super::Broker;
use crate::bridge::Link;
use crate::codec::{Properties, QoS};
use crate::message::{Content, Origin};
use crate::metrics::DropReason;
use crate::sys;
use crate::sys_tree::Figures;
use crate::timer::Timer;

/// Gauges summed over sessions, subscriptions and retained messages.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Live {
    pub connected: u64,
    pub offline: u64,
    pub subscriptions: u64,
    pub shared_subscriptions: u64,
    pub inflight: u64,
    pub queued: u64,
    pub queued_bytes: u64,
    pub retained: u64,
    pub retained_bytes: u64,
}

impl Broker {
    pub(super) fn live(&self) -> Live {
        let mut l = Live::default();
        for s in self.sessions.values() {
            if s.conn.is_some() {
                l.connected += 1;
            } else {
                l.offline += 1;
            }
            for filter in s.subscriptions.keys() {
                if filter.starts_with("$share/") {
                    l.shared_subscriptions += 1;
                } else {
                    l.subscriptions += 1;
                }
            }
            l.inflight += s.inflight.len() as u64;
            l.queued += s.queue.len() as u64;
            l.queued_bytes += s
                .queue
                .iter()
                .map(|d| d.msg.payload.len() as u64)
                .sum::<u64>();
        }
        l.retained = self.retained.len() as u64;
        let mut bytes = 0u64;
        self.retained
            .for_each_value(|m| bytes += m.payload.len() as u64);
        l.retained_bytes = bytes;
        l
    }

    pub(super) fn sys_figures(&self) -> Figures {
        let l = self.live();
        let c = &self.counters;
        let packets = |a: &[u64]| a.iter().sum::<u64>();
        Figures {
            uptime_secs: self.now.since(self.started) / 1000,
            clients_connected: l.connected,
            clients_disconnected: l.offline,
            clients_expired: c.sessions_expired,
            packets_received: packets(&c.packets_in),
            packets_sent: packets(&c.packets_out),
            stored_messages: l.retained + l.queued,
            stored_bytes: l.retained_bytes + l.queued_bytes,
            publish_received: c.publish_in_total(),
            publish_sent: c.publish_out_total(),
            publish_dropped: DropReason::ALL.iter().map(|d| c.drops_of(*d)).sum(),
            publish_bytes_received: c.publish_in_bytes,
            publish_bytes_sent: c.publish_out_bytes,
            bytes_received: c.bytes_in,
            bytes_sent: c.bytes_out,
            subscriptions: l.subscriptions + l.shared_subscriptions,
            shared_subscriptions: l.shared_subscriptions,
            retained: l.retained,
            sockets: c.sockets,
            connects: c.packets_in.get(1).copied().unwrap_or(0),
            bridges: self
                .bridges_in_order()
                .map(|b| (b.name.clone(), b.link == Link::Up))
                .collect(),
        }
    }

    /// Arms the tree's next tick, or disarms it when `sys_interval` is 0.
    pub(super) fn arm_sys_timer(&mut self) {
        let interval = u64::from(self.config.sys_interval);
        if interval == 0 {
            self.timers.arm(Timer::Sys, &mut self.sys_tree.armed, None);
            self.sys_tree.reset();
        } else if self.sys_tree.armed.is_none() {
            let at = self.now.plus_secs(interval);
            self.timers
                .arm(Timer::Sys, &mut self.sys_tree.armed, Some(at));
        }
    }

    pub(super) fn sys_tick(&mut self, at: crate::api::Instant) {
        if self.sys_tree.armed != Some(at) {
            return;
        }
        self.sys_tree.armed = None;
        if self.config.sys_interval == 0 {
            return;
        }
        let figures = self.sys_figures();
        for (topic, payload) in self.sys_tree.update(&figures, self.now) {
            debug_assert!(sys::is_reserved(&topic));
            let content = Content {
                topic,
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
            };
            self.publish(content, Origin::Broker, None);
        }
        // The next tick keeps to the schedule; one that fell far behind starts afresh.
        let interval = u64::from(self.config.sys_interval);
        let next = at.plus_secs(interval).max(self.now.plus_ms(1));
        self.timers
            .arm(Timer::Sys, &mut self.sys_tree.armed, Some(next));
    }
}
