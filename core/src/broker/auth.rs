//! Credentials: what a CONNECT's user name and password need (nothing, a refusal, or a check
//! made outside the core), the wait for that check, and its answer.
//!
//! While a connection waits (`ConnState::Authenticating`) none of its later bytes is decoded:
//! they stay in its receive buffer, up to `auth.max_held_bytes`, and are processed in order
//! once the answer allows the connection. The connect timeout keeps running from the CONNECT.

use super::Broker;
use crate::api::{AuthMethod, AuthOutcome, ConnId, Output, Secret};
use crate::codec::{Connect, ReasonCode, reason};
use crate::config::AnonymousMode;
use crate::conn::ConnState;

/// What a CONNECT's credentials need.
pub(super) enum Verdict {
    Accept,
    Refuse(ReasonCode),
    /// A check outside the core ([`Output::Authenticate`]).
    Ask,
}

impl Broker {
    /// Decides from the configuration alone, when it can. `by_certificate`: TLS verified the
    /// client, whose certificate stands for user name and password.
    pub(super) fn credentials_verdict(&self, connect: &Connect, by_certificate: bool) -> Verdict {
        if by_certificate {
            return Verdict::Accept;
        }
        let has_table = !self.config.users.is_empty()
            || self.config.auth.password_file.is_some()
            || self.config.auth.http_auth.asks();
        let anonymous = self.config.allow_anonymous;
        match self.config.auth.anonymous_mode {
            AnonymousMode::Nanomq => {
                let empty = connect.username.as_deref().is_none_or(str::is_empty)
                    || connect.password.as_ref().is_none_or(|p| p.is_empty());
                if anonymous {
                    Verdict::Accept
                } else if empty {
                    Verdict::Refuse(reason::BAD_USERNAME_OR_PASSWORD)
                } else if has_table {
                    Verdict::Ask
                } else {
                    Verdict::Accept
                }
            }
            AnonymousMode::Strict => match &connect.username {
                None if anonymous => Verdict::Accept,
                None => Verdict::Refuse(reason::NOT_AUTHORIZED),
                Some(_) if has_table => Verdict::Ask,
                Some(_) if anonymous => Verdict::Accept,
                Some(_) => Verdict::Refuse(reason::NOT_AUTHORIZED),
            },
        }
    }

    /// Puts the connection in wait and asks for the check, unless too many wait already.
    pub(super) fn ask_credentials(&mut self, id: ConnId, mut connect: Connect) {
        if self.authenticating.len() >= self.config.auth.max_pending as usize {
            self.stats.auth_busy += 1;
            return self.refuse_connect(
                id,
                &connect,
                reason::SERVER_BUSY,
                "too many connections waiting for authentication",
            );
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let password = Secret(connect.password.take().unwrap_or_default());
        let username = connect.username.clone().unwrap_or_default();
        let client_id = connect.client_id.clone();
        let peer = conn.peer.clone();
        conn.state = ConnState::Authenticating;
        conn.pending_connect = Some(Box::new(connect));
        self.authenticating.insert(id);
        self.outputs.push_back(Output::Authenticate {
            conn: id,
            username,
            password,
            client_id,
            peer,
            method: if self.config.auth.http_auth.asks() {
                AuthMethod::PasswordThenHttp
            } else {
                AuthMethod::Password
            },
        });
    }

    /// The answer to an [`Output::Authenticate`]; ignored unless the connection still waits.
    pub(super) fn auth_result(&mut self, id: ConnId, outcome: AuthOutcome) {
        if !self.authenticating.remove(&id) {
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(connect) = conn.pending_connect.take() else {
            return;
        };
        conn.state = ConnState::AwaitingConnect;
        match outcome {
            AuthOutcome::Allow { superuser } => {
                self.stats.auth_succeeded += 1;
                conn.superuser = superuser;
                // Keep alive counts from the CONNACK, not from the wait's start.
                conn.last_rx = self.now;
                self.complete_connect(id, *connect);
                // What the client sent meanwhile, in order.
                self.receive(id, &[]);
            }
            AuthOutcome::Deny => {
                self.stats.auth_failed += 1;
                self.refuse_connect(
                    id,
                    &connect,
                    reason::BAD_USERNAME_OR_PASSWORD,
                    "authentication failed",
                );
            }
            AuthOutcome::Busy => {
                self.stats.auth_busy += 1;
                self.refuse_connect(
                    id,
                    &connect,
                    reason::SERVER_BUSY,
                    "authentication could not be checked (busy)",
                );
            }
        }
    }

    /// A waiting connection sent more than it may hold, or its connect timeout passed.
    pub(super) fn abandon_auth(&mut self, id: ConnId, code: ReasonCode, detail: &str) {
        self.authenticating.remove(&id);
        let Some(connect) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.pending_connect.take())
        else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.state = ConnState::AwaitingConnect;
        }
        self.refuse_connect(id, &connect, code, detail);
    }

    /// Whether a waiting connection's held bytes are over the limit.
    pub(super) fn holds_too_much(&self, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| c.rx.len() > self.config.auth.max_held_bytes as usize)
    }
}
