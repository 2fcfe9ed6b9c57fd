//! The cluster's nodes in one core: its heartbeat, the nodes it hears of and forgets, and
//! the v4 client lists that describe the whole cluster (asked of every live node, merged in
//! client id order, paged, and saying which nodes did not answer).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use bytes::Bytes;
use harness::*;
use serde_json::{Value, json};
use tidemq_core::cluster::ClusterConfig;
use tidemq_core::cluster::nodes::{
    ANSWER_SID, ASK_SID, Answer, Ask, GATHER_WAIT_MS, HEARTBEAT_SID, Heartbeat, ListKind,
};
use tidemq_core::{Config, Input, Output};

fn clustered(name: &str) -> Config {
    Config {
        cluster: ClusterConfig {
            enable: true,
            node_name: name.to_owned(),
            ..ClusterConfig::default()
        },
        ..quiet_config()
    }
}

fn heartbeat_of(node: &str, connections: u64) -> Bytes {
    Heartbeat {
        node: node.to_owned(),
        epoch: "1".to_owned(),
        connections,
        started_at: 0,
        version: "9.9.9".to_owned(),
    }
    .encode()
}

fn hear(h: &mut Harness, node: &str, connections: u64) {
    h.input(Input::ClusterMessage {
        sid: HEARTBEAT_SID,
        subject: format!("tmq.h.{node}"),
        payload: heartbeat_of(node, connections),
    });
}

fn get(h: &mut Harness, req_id: u64, path: &str, query: &str) {
    h.input(Input::AdminV4 {
        req_id,
        credentials: tidemq_core::admin::Credentials {
            // admin:public
            authorization: Some("Basic YWRtaW46cHVibGlj".to_owned()),
            jwt: None,
        },
        method: "GET".to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        body: Bytes::new(),
    });
}

fn reply(h: &Harness, from: usize, req_id: u64) -> Option<(u16, Value)> {
    h.log[from..].iter().find_map(|o| match o {
        Output::AdminReply {
            req_id: r,
            status,
            body,
            ..
        } if *r == req_id => Some((*status, serde_json::from_slice(body).unwrap())),
        _ => None,
    })
}

fn published(h: &Harness, from: usize) -> Vec<(String, Bytes)> {
    h.log[from..]
        .iter()
        .filter_map(|o| match o {
            Output::ClusterPublish {
                subject, payload, ..
            } => Some((subject.clone(), payload.clone())),
            _ => None,
        })
        .collect()
}

fn ids(v: &Value) -> Vec<(String, String)> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["client_id"].as_str().unwrap().to_owned(),
                i["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn item(client_id: &str, node: &str) -> Value {
    json!({ "client_id": client_id, "node": node, "conn_state": "connected" })
}

/// A node subscribes to heartbeats and its own question and answer subjects at its first
/// heartbeat, sends a heartbeat every third of `node_ttl`, and lists as nodes itself and those
/// heard of within `node_ttl`.
#[test]
fn a_node_beats_and_lists_the_nodes_it_hears_of_until_they_fall_silent() {
    let mut h = Harness::with_config(clustered("a"));
    h.client("c1", V5);
    // The heartbeat's timer is due from the start: the runtime fires it at once.
    h.advance(0);
    let subscribed: Vec<(u64, String)> = h
        .log
        .iter()
        .filter_map(|o| match o {
            Output::ClusterSubscribe { sid, subject, .. } => Some((*sid, subject.clone())),
            _ => None,
        })
        .collect();
    for want in [
        (HEARTBEAT_SID, "tmq.h.*"),
        (ASK_SID, "tmq.n.a.ask"),
        (ANSWER_SID, "tmq.n.a.answer"),
    ] {
        assert!(
            subscribed.contains(&(want.0, want.1.to_owned())),
            "{want:?} in {subscribed:?}"
        );
    }
    let beats = |h: &Harness, from: usize| -> Vec<Heartbeat> {
        published(h, from)
            .into_iter()
            .filter(|(s, _)| s == "tmq.h.a")
            .map(|(_, p)| Heartbeat::parse(&p).unwrap())
            .collect()
    };
    let mark = h.log.len();
    h.advance(10_000);
    let sent = beats(&h, mark);
    assert_eq!(sent.len(), 3, "every third of node_ttl");
    assert_eq!(sent[2].connections, 1);
    assert_eq!(beats(&h, 0).len(), 4);

    hear(&mut h, "b", 4);
    // This node's own name from elsewhere is not another node.
    hear(&mut h, "a", 9);
    let mark = h.log.len();
    get(&mut h, 1, "/api/v4/nodes", "");
    let (status, v) = reply(&h, mark, 1).unwrap();
    assert_eq!(status, 200);
    let nodes: Vec<(&str, u64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap(),
                n["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(nodes, vec![("a", 1), ("b", 4)]);
    let text = scrape(&mut h);
    assert_eq!(value(&text, "tidemq_cluster_nodes"), 2.0);
    assert_eq!(value(&text, "tidemq_cluster_heartbeats_ignored_total"), 1.0);

    // b falls silent: gone once node_ttl has passed.
    h.advance(10_001);
    let mark = h.log.len();
    get(&mut h, 2, "/api/v4/nodes", "");
    let (_, v) = reply(&h, mark, 2).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
}

/// `GET /clients` asks every live node; the reply waits for their parts and merges them in
/// client id order, each item naming its node.
#[test]
fn a_client_list_names_the_clients_of_every_node() {
    let mut h = Harness::with_config(clustered("a"));
    h.client("c3", V5);
    h.client("c1", V5);
    hear(&mut h, "b", 2);
    hear(&mut h, "c", 0);
    let mark = h.log.len();
    get(&mut h, 7, "/api/v4/clients", "_page=1&_limit=3");
    assert_eq!(reply(&h, mark, 7), None, "waits for the other nodes");
    let asks: Vec<(String, Ask)> = published(&h, mark)
        .into_iter()
        .map(|(s, p)| (s, Ask::parse(&p).unwrap()))
        .collect();
    let to: Vec<&str> = asks.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(to, vec!["tmq.n.b.ask", "tmq.n.c.ask"]);
    let ask = &asks[0].1;
    assert_eq!(
        (ask.from.as_str(), ask.list, ask.want),
        ("a", ListKind::Clients, 3)
    );

    let answer = |node: &str, count: u64, items: Vec<Value>| Input::ClusterMessage {
        sid: ANSWER_SID,
        subject: "tmq.n.a.answer".to_owned(),
        payload: Answer {
            token: ask.token,
            node: node.to_owned(),
            count,
            items,
            truncated: false,
        }
        .encode(),
    };
    h.input(answer("b", 5, vec![item("c2", "b"), item("c4", "b")]));
    assert_eq!(reply(&h, mark, 7), None, "c has not answered");
    h.input(answer("c", 0, Vec::new()));
    let (status, v) = reply(&h, mark, 7).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        ids(&v),
        vec![
            ("c1".to_owned(), "a".to_owned()),
            ("c2".to_owned(), "b".to_owned()),
            ("c3".to_owned(), "a".to_owned()),
        ]
    );
    assert_eq!(
        v["meta"],
        json!({ "page": 1, "limit": 3, "count": 7, "hasnext": true })
    );
    assert_eq!(
        v["cluster"],
        json!({ "answered": ["a", "b", "c"], "missing": [], "truncated": [] })
    );
}

/// A node that does not answer in time is named; the reply carries what came.
#[test]
fn a_client_list_says_which_nodes_did_not_answer() {
    let mut h = Harness::with_config(clustered("a"));
    h.client("c1", V5);
    hear(&mut h, "b", 1);
    let mark = h.log.len();
    get(&mut h, 3, "/api/v4/clients/c1", "");
    assert_eq!(reply(&h, mark, 3), None);
    h.advance(GATHER_WAIT_MS);
    let (status, v) = reply(&h, mark, 3).unwrap();
    assert_eq!(status, 200);
    assert_eq!(ids(&v), vec![("c1".to_owned(), "a".to_owned())]);
    assert_eq!(v["cluster"]["missing"], json!(["b"]));
    // A late answer is dropped.
    let late = h.log.len();
    h.input(Input::ClusterMessage {
        sid: ANSWER_SID,
        subject: "tmq.n.a.answer".to_owned(),
        payload: Answer {
            token: 1,
            node: "b".to_owned(),
            count: 0,
            items: Vec::new(),
            truncated: false,
        }
        .encode(),
    });
    assert!(h.log[late..].is_empty());
    // A bad query is refused at once, as on one node.
    let mark = h.log.len();
    get(&mut h, 4, "/api/v4/clients", "nope=1");
    assert_eq!(reply(&h, mark, 4).unwrap().0, 400);
}

/// Another node's question is answered with this node's part: every match counted, the
/// first `want` listed in client id order within the bytes allowed, on the asker's subject.
#[test]
fn a_question_from_another_node_gets_this_nodes_part() {
    let mut h = Harness::with_config(clustered("b"));
    for id in ["x3", "x1", "x2", "y"] {
        h.client(id, V5);
    }
    let ask = |want: u64, max_bytes: u64, query: &str| Input::ClusterMessage {
        sid: ASK_SID,
        subject: "tmq.n.b.ask".to_owned(),
        payload: Ask {
            from: "a".to_owned(),
            token: 9,
            list: ListKind::Clients,
            query: query.to_owned(),
            want,
            max_bytes,
        }
        .encode(),
    };
    let mark = h.log.len();
    h.input(ask(2, 100_000, "_like_clientid=x"));
    let out = published(&h, mark);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "tmq.n.a.answer");
    let a = Answer::parse(&out[0].1).unwrap();
    assert_eq!((a.token, a.node.as_str(), a.count), (9, "b", 3));
    let listed: Vec<&str> = a
        .items
        .iter()
        .map(|i| i["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["x1", "x2"]);
    assert!(!a.truncated);

    // Too few bytes for every item: fewer listed, said so, all still counted.
    let mark = h.log.len();
    h.input(ask(100, 300, ""));
    let a = Answer::parse(&published(&h, mark)[0].1).unwrap();
    assert_eq!(a.count, 4);
    assert!(a.truncated && a.items.len() < 4, "{a:?}");

    // Garbage on the question subject is counted, not answered.
    let mark = h.log.len();
    h.input(Input::ClusterMessage {
        sid: ASK_SID,
        subject: "tmq.n.b.ask".to_owned(),
        payload: Bytes::from_static(b"{not json"),
    });
    assert!(published(&h, mark).is_empty());
}

/// Without another node heard of, a list is answered at once from this node alone.
#[test]
fn a_lone_node_answers_its_lists_at_once() {
    let mut h = Harness::with_config(clustered("a"));
    h.client("c1", V5);
    let mark = h.log.len();
    get(&mut h, 5, "/api/v4/clients/username/nobody", "");
    let (status, v) = reply(&h, mark, 5).unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["data"], json!([]));
    assert_eq!(v["cluster"]["answered"], json!(["a"]));
}

/// A node without NATS for `node_ttl` sends its clients to another server (v5 DISCONNECT
/// 0x9C, 3.1.1 closed) and refuses CONNECTs (v5 0x9C, 3.1.1 3) until NATS is back; a shorter
/// outage changes nothing for them.
#[test]
fn a_node_cut_off_from_nats_sends_its_clients_to_another_server() {
    let mut h = Harness::with_config(clustered("a"));
    let v5 = h.client("five", V5);
    let v3 = h.client("three", V311);
    h.input(Input::ClusterLink { up: false });
    h.advance(9_000);
    h.input(Input::ClusterLink { up: true });
    h.input(Input::ClusterLink { up: false });
    h.advance(9_999);
    assert!(!h.is_closed(v5) && !h.is_closed(v3), "within node_ttl");
    h.advance(1);
    assert_eq!(h.disconnect_reason(v5), Some(0x9C));
    assert!(h.is_closed(v5) && h.is_closed(v3));
    assert_eq!(
        value(&scrape(&mut h), "tidemq_cluster_cut_off"),
        1.0,
        "the gauge says so"
    );
    let (_, ack) = h.connect("again", V5, true, ConnectOpts::default());
    assert_eq!(ack.code.0, 0x9C);
    let (_, ack) = h.connect("again3", V311, true, ConnectOpts::default());
    assert_eq!(ack.code.0, 3);
    h.input(Input::ClusterLink { up: true });
    let (_, ack) = h.connect("again", V5, true, ConnectOpts::default());
    assert_eq!(ack.code.0, 0);
    assert_eq!(value(&scrape(&mut h), "tidemq_cluster_cut_off"), 0.0);
}

/// Subscription lists describe the cluster too: asked of every node, merged by client id and
/// filter, each item naming its node; a node answers with its own subscriptions.
#[test]
fn a_subscription_list_names_the_subscriptions_of_every_node() {
    let mut h = Harness::with_config(clustered("a"));
    let c1 = h.client("c1", V5);
    h.subscribe(c1, "a/b", tidemq_core::codec::QoS::AtLeastOnce);
    hear(&mut h, "b", 1);
    let mark = h.log.len();
    get(&mut h, 8, "/api/v4/subscriptions", "");
    let (_, payload) = published(&h, mark)
        .into_iter()
        .find(|(s, _)| s == "tmq.n.b.ask")
        .expect("b is asked");
    let ask = Ask::parse(&payload).unwrap();
    assert_eq!(ask.list, ListKind::Subscriptions);
    h.input(Input::ClusterMessage {
        sid: ANSWER_SID,
        subject: "tmq.n.a.answer".to_owned(),
        payload: Answer {
            token: ask.token,
            node: "b".to_owned(),
            count: 1,
            items: vec![json!({ "clientid": "c0", "topic": "x/#", "qos": 0, "node": "b" })],
            truncated: false,
        }
        .encode(),
    });
    let (status, v) = reply(&h, mark, 8).unwrap();
    assert_eq!(status, 200);
    let subs: Vec<(&str, &str, &str)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["clientid"].as_str().unwrap(),
                s["topic"].as_str().unwrap(),
                s["node"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(subs, vec![("c0", "x/#", "b"), ("c1", "a/b", "a")]);
    // The same key order as on one node: data first.
    let body = h
        .log
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::AdminReply {
                req_id: 8, body, ..
            } => Some(body.clone()),
            _ => None,
        })
        .unwrap();
    assert!(body.starts_with(b"{\"data\""), "{body:?}");

    // Asked by another node: this node's subscriptions of one client.
    let mark = h.log.len();
    h.input(Input::ClusterMessage {
        sid: ASK_SID,
        subject: "tmq.n.a.ask".to_owned(),
        payload: Ask {
            from: "b".to_owned(),
            token: 3,
            list: ListKind::ClientSubscriptions,
            query: "c1".to_owned(),
            want: 10,
            max_bytes: 10_000,
        }
        .encode(),
    });
    let (subject, payload) = published(&h, mark).pop().unwrap();
    assert_eq!(subject, "tmq.n.b.answer");
    let answer = Answer::parse(&payload).unwrap();
    assert_eq!(answer.count, 1);
    assert_eq!(answer.items[0]["topic"], "a/b");
    assert_eq!(answer.items[0]["node"], "a");
}
