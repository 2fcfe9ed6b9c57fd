//! A1: no packet of a connection is processed before its credentials are answered (the
//! broker sends it nothing but the CONNACK that ends a wait it gave up on: 0x88 connect
//! timeout, 0x89 busy, 0x97 too much held); after the answer the CONNACK comes first.
//! A2: a publish the ACL denies reaches no subscriber.

use std::collections::BTreeMap;

use tidemq_core::Config;
use tidemq_core::acl::{Action, Decision, Who};

use crate::oracle::Violation;
use crate::trace::{Entry, Ev, Sent, Tag};
use crate::world::ActorInfo;

/// Would the ACL deny `client_id` (the sim's user name too) publishing to `topic`?
pub fn publish_denied(config: &Config, client_id: &str, topic: &str) -> bool {
    let who = Who {
        client_id,
        username: Some(client_id),
        ip: None,
    };
    config.acl.enable && config.acl.rules.check(&who, Action::Publish, topic) == Decision::Deny
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Asked, not answered.
    Asked,
    /// Answered; the CONNACK not yet seen.
    Answered,
}

#[derive(Default)]
pub struct AuthCheck {
    waits: BTreeMap<u64, Wait>,
}

impl AuthCheck {
    pub fn observe(
        &mut self,
        e: &Entry,
        actors: &[ActorInfo],
        config: &Config,
        out: &mut Vec<Violation>,
    ) {
        match &e.ev {
            Ev::BrokerStart { .. } => self.waits.clear(),
            Ev::AuthAsked { conn } => {
                self.waits.insert(*conn, Wait::Asked);
            }
            Ev::AuthAnswered { conn, .. } => {
                if let Some(w) = self.waits.get_mut(conn) {
                    *w = Wait::Answered;
                }
            }
            Ev::BrokerClosed { conn, .. } => {
                self.waits.remove(conn);
            }
            Ev::BrokerSent { conn, pkt, .. } => match (self.waits.get(conn), pkt) {
                (None, _) => {}
                (
                    Some(Wait::Asked),
                    Sent::ConnAck {
                        code: 0x88 | 0x89 | 0x97 | 3,
                        ..
                    },
                ) => {
                    self.waits.remove(conn);
                }
                (Some(Wait::Answered), Sent::ConnAck { .. }) => {
                    self.waits.remove(conn);
                }
                (Some(w), pkt) => {
                    out.push(Violation::new(
                        "A1",
                        e.at,
                        format!(
                            "conn {conn}: {pkt:?} sent while its credentials were {}",
                            if *w == Wait::Asked {
                                "not yet answered"
                            } else {
                                "answered but the CONNACK not sent"
                            }
                        ),
                    ));
                    self.waits.remove(conn);
                }
            },
            Ev::Delivered(d) => {
                let publisher = match d.publish.tag {
                    Tag::Msg { publisher, .. } | Tag::Retained { publisher, .. } => publisher,
                    _ => return,
                };
                let Some(actor) = actors.get(publisher) else {
                    return;
                };
                if publish_denied(config, &actor.client_id, &d.publish.topic) {
                    out.push(Violation::new(
                        "A2",
                        e.at,
                        format!(
                            "{} published to {} (denied by the ACL) and it reached actor {}",
                            actor.client_id, d.publish.topic, d.actor
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}
