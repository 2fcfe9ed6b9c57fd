//! The connect timeout and keep alive: a connection that stays silent past its limit is
//! closed (before CONNECT: `connect_timeout_ms`; after: keep alive × `keepalive_multiplier`).

use super::Broker;
use crate::api::{ConnId, Instant};
use crate::codec::reason;
use crate::conn::{CloseReason, ConnState};
use crate::timer::Timer;

/// The keep alive a CONNECT gets: what the client asked for, within `max_keepalive`.
pub(super) struct KeepAlive {
    /// Seconds the client is held to.
    pub secs: u16,
    /// Told to a v5 client in CONNACK when it differs from what it asked.
    pub server_keep_alive: Option<u16>,
    /// Milliseconds of silence allowed.
    pub idle_limit_ms: u64,
}

impl Broker {
    pub(super) fn keep_alive_for(&self, asked: u16, v5: bool) -> KeepAlive {
        // Above the cap (0 is "never"), every client is held to the cap; only v5 can be told.
        let max_keepalive = self.config.max_keepalive;
        let capped =
            (max_keepalive > 0 && (asked == 0 || asked > max_keepalive)).then_some(max_keepalive);
        let secs = capped.unwrap_or(asked);
        KeepAlive {
            secs,
            server_keep_alive: capped.filter(|_| v5),
            idle_limit_ms: (f64::from(secs) * 1000.0 * self.config.keepalive_multiplier) as u64,
        }
    }

    pub(super) fn arm_conn_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let at = conn.idle_deadline();
        self.timers.arm(Timer::Conn(id), &mut conn.timer_armed, at);
    }

    pub(super) fn conn_timer(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.timer_armed != Some(at) {
            return;
        }
        conn.timer_armed = None;
        let due = conn.last_rx.plus_ms(conn.idle_limit_ms);
        if conn.idle_limit_ms == 0 {
            return;
        }
        if due > self.now {
            self.arm_conn_timer(id);
            return;
        }
        let (code, detail) = match conn.state {
            ConnState::Authenticating => {
                return self.abandon_auth(
                    id,
                    reason::SERVER_UNAVAILABLE,
                    "credentials not checked within the connect timeout",
                );
            }
            ConnState::AwaitingConnect => (reason::MALFORMED_PACKET, "no CONNECT in time"),
            ConnState::Active(_) => (reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout"),
        };
        self.drop_conn(id, CloseReason::error(code, detail));
    }
}
