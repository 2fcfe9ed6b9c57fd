//! End-to-end tests of the `tidemq` binary with the rumqttc client library, MQTT 3.1.1
//! (`rumqttc::AsyncClient`) and MQTT 5 (`rumqttc::v5::AsyncClient`).
//!
//! Every test starts its own broker process and bounds every wait.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{Debug, Display};
use std::time::Duration;

use common::{Broker, unique};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long we watch for something that must NOT happen, once everything that precedes it
/// has been observed.
const QUIET: Duration = Duration::from_millis(1000);

/// What a bounded wait for an event found.
enum Found<T> {
    Yes(T),
    TimedOut,
    Failed(String),
}

/// One client connection: the rumqttc client handle, and its event loop driven by a task that
/// forwards every event (and the final error) to us. The task stops after an error or after
/// sending DISCONNECT, which drops the event loop and closes the socket.
struct Conn<C, E, X> {
    id: String,
    client: C,
    events: mpsc::UnboundedReceiver<Result<E, X>>,
    /// Events read while looking for something else.
    backlog: VecDeque<E>,
    pump: JoinHandle<()>,
}

impl<C, E: Debug, X: Display> Conn<C, E, X> {
    /// The first event (earlier skipped ones first) that `pick` accepts, within `limit`.
    async fn find<T>(
        &mut self,
        limit: Duration,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> Found<T> {
        if let Some(pos) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let event = self.backlog.remove(pos).unwrap();
            return Found::Yes(pick(&event).unwrap());
        }
        let deadline = Instant::now() + limit;
        loop {
            match timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Found::TimedOut,
                Ok(None) => return Found::Failed("the connection has ended".to_owned()),
                Ok(Some(Err(e))) => return Found::Failed(format!("connection error: {e}")),
                Ok(Some(Ok(event))) => match pick(&event) {
                    Some(t) => return Found::Yes(t),
                    None => self.backlog.push_back(event),
                },
            }
        }
    }

    /// Like [`Conn::find`] with [`WAIT`], failing the test if nothing is found.
    async fn expect<T>(&mut self, what: &str, pick: impl FnMut(&E) -> Option<T>) -> T {
        match self.find(WAIT, pick).await {
            Found::Yes(t) => t,
            Found::TimedOut => panic!(
                "{}: no {what} within {WAIT:?}; other events: {:?}",
                self.id, self.backlog
            ),
            Found::Failed(why) => panic!(
                "{}: {why} while waiting for {what}; other events: {:?}",
                self.id, self.backlog
            ),
        }
    }

    /// Fails the test if `pick` accepts an event within `limit`.
    async fn expect_none<T: Debug>(
        &mut self,
        what: &str,
        limit: Duration,
        pick: impl FnMut(&E) -> Option<T>,
    ) {
        match self.find(limit, pick).await {
            Found::Yes(t) => panic!("{}: unexpected {what}: {t:?}", self.id),
            Found::TimedOut => {}
            Found::Failed(why) => {
                panic!("{}: {why} while checking that no {what} arrives", self.id)
            }
        }
    }

    /// The connection's next error (the event loop's end), within [`WAIT`].
    async fn expect_error(&mut self) -> X {
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("{}: the connection did not end within {WAIT:?}", self.id),
                Ok(None) => panic!("{}: the event loop ended without an error", self.id),
                Ok(Some(Err(e))) => return e,
                Ok(Some(Ok(event))) => self.backlog.push_back(event),
            }
        }
    }

    /// Drops the event loop without sending DISCONNECT: the TCP connection just closes.
    async fn close_abruptly(mut self) {
        self.pump.abort();
        let _ = timeout(WAIT, &mut self.pump).await;
    }

    /// Waits for the event-loop task to finish (after a DISCONNECT it stops by itself).
    async fn wait_closed(&mut self) {
        if timeout(WAIT, &mut self.pump).await.is_err() {
            panic!("{}: the event loop did not stop within {WAIT:?}", self.id);
        }
    }
}

impl<C, E, X> Drop for Conn<C, E, X> {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// `"client_id":"<id>"` in a `$SYS` JSON payload (whitespace-insensitive).
fn sys_payload_names(payload: &[u8], client_id: &str) -> bool {
    let text: String = String::from_utf8_lossy(payload)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    text.contains(&format!("\"client_id\":\"{client_id}\""))
}

// ----- MQTT 3.1.1 -------------------------------------------------------------------------

mod v3 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions,
        Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
    };

    pub type Client = Conn<AsyncClient, Event, ConnectionError>;

    /// Connects (MQTT 3.1.1) and waits for a successful CONNACK.
    pub async fn connect(
        broker: &Broker,
        id: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> (Client, ConnAck) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_keep_alive(Duration::from_secs(30));
        tweak(&mut options);
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let result = event_loop.poll().await;
                let last = matches!(result, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
                if tx.send(result).is_err() || last {
                    break;
                }
            }
        });
        let mut conn = Conn {
            id: id.to_owned(),
            client,
            events,
            backlog: VecDeque::new(),
            pump,
        };
        let connack = conn
            .expect("CONNACK", |e| match e {
                Event::Incoming(Packet::ConnAck(c)) => Some(c.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connack.code, ConnectReturnCode::Success, "{id}: CONNACK");
        (conn, connack)
    }

    impl Client {
        /// Subscribes and checks the granted QoS.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            let codes = self
                .expect("SUBACK", |e| match e {
                    Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                    _ => None,
                })
                .await;
            assert_eq!(
                codes,
                vec![SubscribeReasonCode::Success(qos)],
                "{}: SUBACK for {filter}",
                self.id
            );
        }

        /// Publishes and waits until the message is written (QoS 0), acknowledged (QoS 1) or
        /// completed (QoS 2).
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, qos, retain, payload)
                .await
                .unwrap();
            let pkid = self
                .expect("outgoing PUBLISH", |e| match e {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                    _ => None,
                })
                .await;
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.expect("PUBACK", |e| match e {
                        Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid => Some(()),
                        _ => None,
                    })
                    .await
                }
                QoS::ExactlyOnce => {
                    self.expect("PUBCOMP", |e| match e {
                        Event::Incoming(Packet::PubComp(c)) if c.pkid == pkid => Some(()),
                        _ => None,
                    })
                    .await
                }
            }
        }

        /// The next message delivered to us.
        pub async fn recv(&mut self) -> Publish {
            self.expect("PUBLISH", incoming_publish).await
        }

        /// Fails if a message on `topic` arrives within `limit`.
        pub async fn expect_no_message(&mut self, topic: &str, limit: Duration) {
            self.expect_none(&format!("message on {topic}"), limit, |e| {
                incoming_publish(e).filter(|p| p.topic == topic)
            })
            .await;
        }

        /// Sends DISCONNECT and waits until the connection is closed.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.unwrap();
            self.expect("outgoing DISCONNECT", |e| {
                matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
            })
            .await;
            self.wait_closed().await;
        }
    }

    pub fn incoming_publish(e: &Event) -> Option<Publish> {
        match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos_0_1_2_round_trips() {
    use v3::QoS;
    let broker = Broker::start();
    let topic = unique("v311/rt");
    let (mut sub, _) = v3::connect(&broker, &unique("sub"), |_| {}).await;
    sub.subscribe(&format!("{topic}/#"), QoS::ExactlyOnce).await;
    let (mut publisher, _) = v3::connect(&broker, &unique("pub"), |_| {}).await;

    let cases = [
        ("q0", QoS::AtMostOnce),
        ("q1", QoS::AtLeastOnce),
        ("q2", QoS::ExactlyOnce),
    ];
    for (name, qos) in cases {
        publisher
            .publish(
                &format!("{topic}/{name}"),
                qos,
                false,
                format!("payload {name}"),
            )
            .await;
    }
    let mut got = BTreeMap::new();
    for _ in 0..cases.len() {
        let p = sub.recv().await;
        got.insert(p.topic.clone(), p);
    }
    for (name, qos) in cases {
        let t = format!("{topic}/{name}");
        let p = got
            .get(&t)
            .unwrap_or_else(|| panic!("nothing on {t}; got {got:?}"));
        assert_eq!(p.qos, qos, "{t}: delivered QoS");
        assert_eq!(
            &p.payload[..],
            format!("payload {name}").as_bytes(),
            "{t}: payload"
        );
        assert!(!p.retain, "{t}: a live, non-retained message has RETAIN=0");
        assert!(!p.dup, "{t}: first delivery has DUP=0");
    }
    sub.expect_no_message(&format!("{topic}/q1"), QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_delivery_qos_is_the_lower_of_publish_and_subscription() {
    use v3::QoS;
    let broker = Broker::start();
    let topic = unique("v311/downgrade");
    let (mut sub0, _) = v3::connect(&broker, &unique("sub0"), |_| {}).await;
    sub0.subscribe(&topic, QoS::AtMostOnce).await;
    let (mut sub1, _) = v3::connect(&broker, &unique("sub1"), |_| {}).await;
    sub1.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = v3::connect(&broker, &unique("pub"), |_| {}).await;
    publisher
        .publish(&topic, QoS::ExactlyOnce, false, "down")
        .await;
    let p0 = sub0.recv().await;
    let p1 = sub1.recv().await;
    assert_eq!((p0.qos, &p0.payload[..]), (QoS::AtMostOnce, &b"down"[..]));
    assert_eq!((p1.qos, &p1.payload[..]), (QoS::AtLeastOnce, &b"down"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_retained_message_reaches_later_subscriber_with_retain_flag() {
    use v3::QoS;
    let broker = Broker::start();
    let topic = unique("v311/retained");
    // Subscribed before the publish: a live delivery, RETAIN=0 [MQTT-3.3.1-9].
    let (mut early, _) = v3::connect(&broker, &unique("early"), |_| {}).await;
    early.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = v3::connect(&broker, &unique("pub"), |_| {}).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "kept")
        .await;
    let live = early.recv().await;
    assert_eq!(&live.payload[..], b"kept");
    assert!(
        !live.retain,
        "live delivery to an existing subscription must have RETAIN=0"
    );

    // Subscribed after the publish: the retained copy, RETAIN=1 [MQTT-3.3.1-8].
    let (mut late, _) = v3::connect(&broker, &unique("late"), |_| {}).await;
    late.subscribe(&topic, QoS::AtLeastOnce).await;
    let p = late.recv().await;
    assert_eq!(p.topic, topic);
    assert_eq!(&p.payload[..], b"kept");
    assert!(
        p.retain,
        "a retained message sent on subscription must have RETAIN=1"
    );
    assert_eq!(p.qos, QoS::AtLeastOnce);
    late.expect_no_message(&topic, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_retained_payload_clears_the_retained_message() {
    use v3::QoS;
    let broker = Broker::start();
    let base = unique("v311/clear");
    let (mut publisher, _) = v3::connect(&broker, &unique("pub"), |_| {}).await;
    publisher
        .publish(&format!("{base}/gone"), QoS::AtLeastOnce, true, "old")
        .await;
    publisher
        .publish(&format!("{base}/gone"), QoS::AtLeastOnce, true, "")
        .await;
    publisher
        .publish(&format!("{base}/kept"), QoS::AtLeastOnce, true, "here")
        .await;

    let (mut sub, _) = v3::connect(&broker, &unique("sub"), |_| {}).await;
    sub.subscribe(&format!("{base}/#"), QoS::AtLeastOnce).await;
    let p = sub.recv().await;
    assert_eq!(p.topic, format!("{base}/kept"));
    assert_eq!(&p.payload[..], b"here");
    assert!(p.retain);
    sub.expect_no_message(&format!("{base}/gone"), QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_is_published_when_the_connection_drops() {
    use v3::QoS;
    let broker = Broker::start();
    let will_topic = unique("v311/will");
    let (mut watcher, _) = v3::connect(&broker, &unique("watcher"), |_| {}).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;

    let (dying, _) = v3::connect(&broker, &unique("dying"), |o| {
        o.set_last_will(v3::LastWill::new(
            &will_topic,
            "gone",
            QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    dying.close_abruptly().await;

    let will = watcher.recv().await;
    assert_eq!(will.topic, will_topic);
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!will.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_no_will_after_a_clean_disconnect() {
    use v3::QoS;
    let broker = Broker::start();
    let will_topic = unique("v311/nowill");
    let id = unique("polite");
    let (mut watcher, _) = v3::connect(&broker, &unique("watcher"), |_| {}).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;
    // The broker's own "client gone" event is our barrier: it follows the will, if any.
    watcher
        .subscribe("$SYS/brokers/disconnected", QoS::AtMostOnce)
        .await;

    let (polite, _) = v3::connect(&broker, &id, |o| {
        o.set_last_will(v3::LastWill::new(
            &will_topic,
            "gone",
            QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    polite.disconnect().await;

    watcher
        .expect("$SYS/brokers/disconnected for the polite client", |e| {
            v3::incoming_publish(e).filter(|p| {
                p.topic == "$SYS/brokers/disconnected" && sys_payload_names(&p.payload, &id)
            })
        })
        .await;
    watcher.expect_no_message(&will_topic, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_receives_messages_queued_while_offline() {
    use v3::QoS;
    const N: usize = 10;
    let broker = Broker::start();
    let topic = unique("v311/persist");
    let id = unique("persistent");

    let (mut sub, connack) = v3::connect(&broker, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        !connack.session_present,
        "a brand-new client id has no session"
    );
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = v3::connect(&broker, &unique("pub"), |_| {}).await;
    for i in 0..N {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let (mut sub, connack) = v3::connect(&broker, &id, |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        connack.session_present,
        "the session must be resumed (session present = 1)"
    );
    let mut payloads = Vec::new();
    for _ in 0..N {
        let p = sub.recv().await;
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        payloads.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "queued messages, once each, in order");
    sub.expect_no_message(&topic, QUIET).await;

    // The subscription itself survived too.
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"live");
}

// ----- MQTT 5 -----------------------------------------------------------------------------

mod v5 {
    use super::*;
    pub use rumqttc::Outgoing;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Filter, LastWill, LastWillProperties, Packet, Publish,
        PublishProperties, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};

    pub type Client = Conn<AsyncClient, Event, ConnectionError>;

    /// Connects (MQTT 5) and waits for a successful CONNACK.
    pub async fn connect(
        broker: &Broker,
        id: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> (Client, ConnAck) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_keep_alive(Duration::from_secs(30));
        tweak(&mut options);
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let result = event_loop.poll().await;
                let last = matches!(result, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
                if tx.send(result).is_err() || last {
                    break;
                }
            }
        });
        let mut conn = Conn {
            id: id.to_owned(),
            client,
            events,
            backlog: VecDeque::new(),
            pump,
        };
        let connack = conn
            .expect("CONNACK", |e| match e {
                Event::Incoming(Packet::ConnAck(c)) => Some(c.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connack.code, ConnectReturnCode::Success, "{id}: CONNACK");
        (conn, connack)
    }

    impl Client {
        /// Subscribes with these filters and properties and checks the granted QoS.
        pub async fn subscribe_filters(
            &mut self,
            filters: Vec<Filter>,
            properties: Option<SubscribeProperties>,
        ) {
            let expected: Vec<_> = filters
                .iter()
                .map(|f| SubscribeReasonCode::Success(f.qos))
                .collect();
            let names: Vec<_> = filters.iter().map(|f| f.path.clone()).collect();
            match properties {
                Some(p) => self.client.subscribe_many_with_properties(filters, p).await,
                None => self.client.subscribe_many(filters).await,
            }
            .unwrap();
            let codes = self
                .expect("SUBACK", |e| match e {
                    Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                    _ => None,
                })
                .await;
            assert_eq!(codes, expected, "{}: SUBACK for {names:?}", self.id);
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.subscribe_filters(vec![Filter::new(filter, qos)], None)
                .await;
        }

        /// Publishes and waits until the message is written (QoS 0), acknowledged (QoS 1) or
        /// completed (QoS 2), with a success reason code.
        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            properties: Option<PublishProperties>,
        ) {
            let payload: Vec<u8> = payload.into();
            match properties {
                Some(p) => {
                    self.client
                        .publish_with_properties(topic, qos, retain, payload, p)
                        .await
                }
                None => self.client.publish(topic, qos, retain, payload).await,
            }
            .unwrap();
            let pkid = self
                .expect("outgoing PUBLISH", |e| match e {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                    _ => None,
                })
                .await;
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    let reason = self
                        .expect("PUBACK", |e| match e {
                            Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid => Some(a.reason),
                            _ => None,
                        })
                        .await;
                    assert!(
                        (reason as u8) < 0x80,
                        "{}: PUBACK reason {reason:?}",
                        self.id
                    );
                }
                QoS::ExactlyOnce => {
                    let reason = self
                        .expect("PUBCOMP", |e| match e {
                            Event::Incoming(Packet::PubComp(c)) if c.pkid == pkid => Some(c.reason),
                            _ => None,
                        })
                        .await;
                    assert!(
                        (reason as u8) < 0x80,
                        "{}: PUBCOMP reason {reason:?}",
                        self.id
                    );
                }
            }
        }

        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.publish_with(topic, qos, retain, payload, None).await;
        }

        /// The next message delivered to us.
        pub async fn recv(&mut self) -> Publish {
            self.expect("PUBLISH", incoming_publish).await
        }

        /// Fails if a message on `topic` arrives within `limit`.
        pub async fn expect_no_message(&mut self, topic: &str, limit: Duration) {
            self.expect_none(&format!("message on {topic}"), limit, |e| {
                incoming_publish(e).filter(|p| p.topic == topic.as_bytes())
            })
            .await;
        }

        /// Sends DISCONNECT (normal disconnection) and waits until the connection is closed.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.unwrap();
            self.expect("outgoing DISCONNECT", |e| {
                matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
            })
            .await;
            self.wait_closed().await;
        }
    }

    pub fn incoming_publish(e: &Event) -> Option<Publish> {
        match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        }
    }

    pub fn topic(p: &Publish) -> String {
        String::from_utf8_lossy(&p.topic).into_owned()
    }

    pub fn props(p: &Publish) -> PublishProperties {
        p.properties.clone().unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos_0_1_2_round_trips() {
    use v5::QoS;
    let broker = Broker::start();
    let topic = unique("v5/rt");
    let (mut sub, connack) = v5::connect(&broker, &unique("sub"), |_| {}).await;
    assert!(!connack.session_present);
    sub.subscribe(&format!("{topic}/#"), QoS::ExactlyOnce).await;
    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;

    let cases = [
        ("q0", QoS::AtMostOnce),
        ("q1", QoS::AtLeastOnce),
        ("q2", QoS::ExactlyOnce),
    ];
    for (name, qos) in cases {
        publisher
            .publish(
                &format!("{topic}/{name}"),
                qos,
                false,
                format!("payload {name}"),
            )
            .await;
    }
    let mut got = BTreeMap::new();
    for _ in 0..cases.len() {
        let p = sub.recv().await;
        got.insert(v5::topic(&p), p);
    }
    for (name, qos) in cases {
        let t = format!("{topic}/{name}");
        let p = got
            .get(&t)
            .unwrap_or_else(|| panic!("nothing on {t}; got {got:?}"));
        assert_eq!(p.qos, qos, "{t}: delivered QoS");
        assert_eq!(
            &p.payload[..],
            format!("payload {name}").as_bytes(),
            "{t}: payload"
        );
        assert!(!p.retain, "{t}: RETAIN=0");
    }
    sub.expect_no_message(&format!("{topic}/q2"), QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retained_message_flags_and_retain_as_published() {
    use v5::{Filter, QoS};
    let broker = Broker::start();
    let topic = unique("v5/retained");
    // Two live subscriptions: without and with Retain As Published.
    let (mut plain, _) = v5::connect(&broker, &unique("plain"), |_| {}).await;
    plain.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut rap, _) = v5::connect(&broker, &unique("rap"), |_| {}).await;
    let mut filter = Filter::new(&topic, QoS::AtLeastOnce);
    filter.preserve_retain = true;
    rap.subscribe_filters(vec![filter], None).await;

    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, "kept")
        .await;
    let p = plain.recv().await;
    assert_eq!(&p.payload[..], b"kept");
    assert!(
        !p.retain,
        "Retain As Published = 0: live delivery has RETAIN=0 [MQTT-3.3.1-12]"
    );
    let p = rap.recv().await;
    assert_eq!(&p.payload[..], b"kept");
    assert!(
        p.retain,
        "Retain As Published = 1: RETAIN as published [MQTT-3.3.1-13]"
    );

    let (mut late, _) = v5::connect(&broker, &unique("late"), |_| {}).await;
    late.subscribe(&topic, QoS::ExactlyOnce).await;
    let p = late.recv().await;
    assert_eq!(v5::topic(&p), topic);
    assert_eq!(&p.payload[..], b"kept");
    assert!(
        p.retain,
        "a retained message sent on subscription has RETAIN=1"
    );
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "delivered at the published QoS (1 < granted 2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_is_published_when_the_connection_drops() {
    use v5::QoS;
    let broker = Broker::start();
    let will_topic = unique("v5/will");
    let (mut watcher, _) = v5::connect(&broker, &unique("watcher"), |_| {}).await;
    watcher.subscribe(&will_topic, QoS::ExactlyOnce).await;

    let (dying, _) = v5::connect(&broker, &unique("dying"), |o| {
        let props = v5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: Some("text/plain".to_owned()),
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("why".to_owned(), "crash".to_owned())],
        };
        o.set_last_will(v5::LastWill::new(
            &will_topic,
            "gone",
            QoS::ExactlyOnce,
            false,
            Some(props),
        ));
    })
    .await;
    dying.close_abruptly().await;

    let will = watcher.recv().await;
    assert_eq!(v5::topic(&will), will_topic);
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, QoS::ExactlyOnce);
    assert!(!will.retain);
    let props = v5::props(&will);
    assert_eq!(
        props.content_type.as_deref(),
        Some("text/plain"),
        "will content type"
    );
    assert_eq!(
        props.payload_format_indicator,
        Some(1),
        "will payload format indicator"
    );
    assert_eq!(
        props.user_properties,
        vec![("why".to_owned(), "crash".to_owned())],
        "will user properties"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_will_after_a_normal_disconnect() {
    use v5::QoS;
    let broker = Broker::start();
    let will_topic = unique("v5/nowill");
    let id = unique("polite");
    let (mut watcher, _) = v5::connect(&broker, &unique("watcher"), |_| {}).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;
    watcher
        .subscribe("$SYS/brokers/disconnected", QoS::AtMostOnce)
        .await;

    let (polite, _) = v5::connect(&broker, &id, |o| {
        o.set_last_will(v5::LastWill::new(
            &will_topic,
            "gone",
            QoS::AtLeastOnce,
            false,
            None,
        ));
    })
    .await;
    polite.disconnect().await;

    watcher
        .expect("$SYS/brokers/disconnected for the polite client", |e| {
            v5::incoming_publish(e).filter(|p| {
                p.topic == "$SYS/brokers/disconnected".as_bytes()
                    && sys_payload_names(&p.payload, &id)
            })
        })
        .await;
    watcher.expect_no_message(&will_topic, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_persistent_session_receives_messages_queued_while_offline() {
    use v5::QoS;
    const N: usize = 10;
    let broker = Broker::start();
    let topic = unique("v5/persist");
    let id = unique("persistent");
    let persistent = |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(300));
    };

    let (mut sub, connack) = v5::connect(&broker, &id, persistent).await;
    assert!(
        !connack.session_present,
        "a brand-new client id has no session"
    );
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;
    for i in 0..N {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let (mut sub, connack) = v5::connect(&broker, &id, persistent).await;
    assert!(
        connack.session_present,
        "the session must be resumed (session present = 1)"
    );
    let mut payloads = Vec::new();
    for _ in 0..N {
        let p = sub.recv().await;
        assert_eq!(v5::topic(&p), topic);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        payloads.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "queued messages, once each, in order");
    sub.expect_no_message(&topic, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_shared_subscription_delivers_each_message_to_exactly_one_member() {
    use v5::QoS;
    const N: usize = 20;
    let broker = Broker::start();
    let topic = unique("v5/shared");
    let filter = format!("$share/g/{topic}");
    let (mut a, _) = v5::connect(&broker, &unique("member-a"), |_| {}).await;
    a.subscribe(&filter, QoS::AtLeastOnce).await;
    let (mut b, _) = v5::connect(&broker, &unique("member-b"), |_| {}).await;
    b.subscribe(&filter, QoS::AtLeastOnce).await;

    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;
    for i in 0..N {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let mut seen: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut total = 0;
    let deadline = Instant::now() + WAIT;
    while total < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let (who, found) = tokio::select! {
            f = a.find(left, v5::incoming_publish) => ("a", f),
            f = b.find(left, v5::incoming_publish) => ("b", f),
        };
        match found {
            Found::Yes(p) => {
                assert_eq!(v5::topic(&p), topic);
                seen.entry(String::from_utf8_lossy(&p.payload).into_owned())
                    .or_default()
                    .push(who);
                total += 1;
            }
            Found::TimedOut => {
                panic!("only {total} of {N} messages delivered within {WAIT:?}: {seen:?}")
            }
            Found::Failed(why) => panic!("member {who}: {why}"),
        }
    }
    // Nothing more may come: each message went to exactly one member.
    a.expect_no_message(&topic, QUIET).await;
    b.expect_no_message(&topic, Duration::from_millis(100))
        .await;
    for i in 0..N {
        let who = seen.get(&format!("m{i}"));
        assert_eq!(
            who.map(Vec::len),
            Some(1),
            "m{i} must reach exactly one member; deliveries: {seen:?}"
        );
    }
    assert_eq!(seen.len(), N, "unexpected payloads: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifier_is_returned_with_matching_messages() {
    use v5::{QoS, SubscribeProperties};
    let broker = Broker::start();
    let topic = unique("v5/subid");
    let (mut sub, _) = v5::connect(&broker, &unique("sub"), |_| {}).await;
    sub.subscribe_filters(
        vec![v5::Filter::new(format!("{topic}/+"), QoS::AtLeastOnce)],
        Some(SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        }),
    )
    .await;
    // A second subscription without an identifier.
    sub.subscribe(&format!("{topic}-other"), QoS::AtLeastOnce)
        .await;

    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;
    publisher
        .publish(&format!("{topic}/x"), QoS::AtLeastOnce, false, "with id")
        .await;
    let p = sub.recv().await;
    assert_eq!(v5::topic(&p), format!("{topic}/x"));
    assert_eq!(v5::props(&p).subscription_identifiers, vec![42]);

    publisher
        .publish(&format!("{topic}-other"), QoS::AtLeastOnce, false, "no id")
        .await;
    let p = sub.recv().await;
    assert_eq!(v5::topic(&p), format!("{topic}-other"));
    assert!(
        v5::props(&p).subscription_identifiers.is_empty(),
        "no identifier for a subscription made without one: {:?}",
        p.properties
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_properties_pass_through_unchanged() {
    use v5::{PublishProperties, QoS};
    let broker = Broker::start();
    let topic = unique("v5/props");
    let (mut sub, _) = v5::connect(&broker, &unique("sub"), |_| {}).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;
    let user_properties = vec![
        ("k".to_owned(), "v1".to_owned()),
        ("k".to_owned(), "v2".to_owned()),
        ("émoji".to_owned(), "✓".to_owned()),
    ];
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: Some(format!("{topic}/reply")),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: user_properties.clone(),
        subscription_identifiers: vec![],
        content_type: Some("application/json".to_owned()),
    };
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish_with(&topic, qos, false, "{}", Some(sent.clone()))
            .await;
        let p = sub.recv().await;
        assert_eq!(p.qos, qos);
        let got = v5::props(&p);
        assert_eq!(
            got.user_properties, user_properties,
            "user properties, in order [MQTT-3.3.2-18]"
        );
        assert_eq!(got.payload_format_indicator, Some(1));
        assert_eq!(got.response_topic, sent.response_topic);
        assert_eq!(got.correlation_data, sent.correlation_data);
        assert_eq!(got.content_type, sent.content_type);
        assert_eq!(got.message_expiry_interval, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_expiry_is_forwarded_and_expired_messages_are_not_delivered() {
    use v5::{PublishProperties, QoS};
    let broker = Broker::start();
    let topic = unique("v5/expiry");
    let id = unique("offline");
    let expiring = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };

    // Online: the interval is forwarded, never larger than sent [MQTT-3.3.2-6].
    let (mut online, _) = v5::connect(&broker, &unique("online"), |_| {}).await;
    online
        .subscribe(&format!("{topic}/#"), QoS::AtLeastOnce)
        .await;
    let (mut publisher, _) = v5::connect(&broker, &unique("pub"), |_| {}).await;
    publisher
        .publish_with(
            &format!("{topic}/live"),
            QoS::AtLeastOnce,
            false,
            "live",
            Some(expiring(100)),
        )
        .await;
    let p = online.recv().await;
    let forwarded = v5::props(&p).message_expiry_interval;
    assert!(
        matches!(forwarded, Some(1..=100)),
        "forwarded message expiry interval: {forwarded:?}, sent 100"
    );
    online.disconnect().await;

    // Offline: a message that expires while queued is dropped; the others are delivered
    // with the time they waited taken off.
    let persistent = |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(300));
    };
    let (mut sub, _) = v5::connect(&broker, &id, persistent).await;
    sub.subscribe(&format!("{topic}/#"), QoS::AtLeastOnce).await;
    sub.disconnect().await;
    publisher
        .publish_with(
            &format!("{topic}/short"),
            QoS::AtLeastOnce,
            false,
            "short",
            Some(expiring(1)),
        )
        .await;
    publisher
        .publish_with(
            &format!("{topic}/long"),
            QoS::AtLeastOnce,
            false,
            "long",
            Some(expiring(300)),
        )
        .await;
    publisher
        .publish(
            &format!("{topic}/forever"),
            QoS::AtLeastOnce,
            false,
            "forever",
        )
        .await;
    // Let the 1 s interval run out (with margin) while the subscriber is away.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (mut sub, connack) = v5::connect(&broker, &id, persistent).await;
    assert!(connack.session_present);
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let p = sub.recv().await;
        got.insert(v5::topic(&p), p);
    }
    assert!(
        !got.contains_key(&format!("{topic}/short")),
        "an expired message was delivered: {got:?}"
    );
    let long = got
        .get(&format!("{topic}/long"))
        .unwrap_or_else(|| panic!("the unexpired message is missing: {got:?}"));
    let left = v5::props(long).message_expiry_interval;
    assert!(
        matches!(left, Some(1..=298)),
        "after waiting >= 2.5 s, the interval must be reduced from 300: {left:?}"
    );
    let forever = got
        .get(&format!("{topic}/forever"))
        .unwrap_or_else(|| panic!("the message without expiry is missing: {got:?}"));
    assert_eq!(v5::props(forever).message_expiry_interval, None);
    sub.expect_no_message(&format!("{topic}/short"), QUIET)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_local_subscription_skips_own_messages() {
    use v5::{Filter, QoS};
    let broker = Broker::start();
    let topic = unique("v5/nolocal");
    let (mut me, _) = v5::connect(&broker, &unique("me"), |_| {}).await;
    let mut no_local = Filter::new(format!("{topic}/quiet"), QoS::AtLeastOnce);
    no_local.nolocal = true;
    let normal = Filter::new(format!("{topic}/loud"), QoS::AtLeastOnce);
    me.subscribe_filters(vec![no_local, normal], None).await;
    me.publish(&format!("{topic}/quiet"), QoS::AtLeastOnce, false, "mine")
        .await;
    me.publish(&format!("{topic}/loud"), QoS::AtLeastOnce, false, "echo")
        .await;
    let p = me.recv().await;
    assert_eq!(
        (v5::topic(&p), &p.payload[..]),
        (format!("{topic}/loud"), &b"echo"[..]),
        "only the subscription without No Local echoes our own message"
    );
    me.expect_no_message(&format!("{topic}/quiet"), QUIET).await;

    // Others' messages still arrive on the No Local subscription.
    let (mut other, _) = v5::connect(&broker, &unique("other"), |_| {}).await;
    other
        .publish(&format!("{topic}/quiet"), QoS::AtLeastOnce, false, "theirs")
        .await;
    let p = me.recv().await;
    assert_eq!(&p.payload[..], b"theirs");
}

/// SIGTERM: the broker tells its v5 clients why (DISCONNECT 0x8B), closes their connections
/// and exits with status 0. The DISCONNECT carries an empty property length: rumqttc 0.25
/// cannot read the shorter form the spec also allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_client_connections_and_exits_cleanly() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{ConnectionError, StateError};
    let mut broker = Broker::start();
    let (mut client, _) = v5::connect(&broker, &unique("bystander"), |_| {}).await;
    let status = tokio::task::block_in_place(|| broker.stop());
    let status = status.expect("the broker must exit within the stop timeout after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    match client.expect_error().await {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => assert_eq!(
            reason_code,
            DisconnectReasonCode::ServerShuttingDown,
            "a v5 client is told why (DISCONNECT 0x8B)"
        ),
        other => panic!("expected the server to close the connection, got: {other}"),
    }
    assert!(broker.log().contains("shutting down"), "{}", broker.log());
}
