//! The broker's side of the cluster's nodes (`cluster/nodes.rs`): its heartbeat, the other
//! nodes' heartbeats, and the v4 lists that describe the whole cluster (clients, nodes),
//! gathered from every live node.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::Broker;
use super::admin_v4::{client_item, uptime_text};
use crate::admin::code;
use crate::admin::v4::V4Reply;
use crate::admin::v4_query::{ClientFilter, Paging, SubscriptionFilter};
use crate::api::{Instant, Output};
use crate::cluster::nodes::{
    self, ANSWER_SID, ASK_SID, Answer, Ask, GATHER_WAIT_MS, HEARTBEAT_SID, Heartbeat, ListKind,
    Nodes,
};
use crate::timer::Timer;

/// One node's part of a client list: its matching clients, up to what was wanted.
struct Part {
    count: u64,
    items: Vec<Value>,
    truncated: bool,
}

impl Broker {
    /// Cluster mode: the first heartbeat goes out with the first input.
    pub(super) fn arm_heartbeat(&mut self, at: Instant) {
        if let Some(c) = self.cluster.as_deref_mut() {
            self.timers
                .arm(Timer::ClusterHeartbeat, &mut c.nodes.heartbeat_at, Some(at));
        }
    }

    /// This node's heartbeat goes out; nodes silent for `node_ttl` are forgotten.
    pub(super) fn heartbeat_tick(&mut self, at: Instant) {
        let connections = self.connected_clients() as u64;
        let started_at = self.wall().of(self.started);
        let now = self.now;
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if c.nodes.heartbeat_at != Some(at) {
            return;
        }
        c.nodes.heartbeat_at = None;
        let prefix = &c.config.subject_prefix;
        let node = &c.config.node_name;
        if !c.nodes.subscribed {
            c.nodes.subscribed = true;
            for (sid, subject) in [
                (HEARTBEAT_SID, nodes::heartbeats_subject(prefix)),
                (ASK_SID, nodes::ask_subject(prefix, node)),
                (ANSWER_SID, nodes::answer_subject(prefix, node)),
            ] {
                self.outputs.push_back(Output::ClusterSubscribe {
                    sid,
                    subject,
                    queue: None,
                });
            }
        }
        let heartbeat = Heartbeat {
            node: node.clone(),
            epoch: format!("{:x}", c.epoch),
            connections,
            started_at,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        self.outputs.push_back(Output::ClusterPublish {
            subject: nodes::heartbeat_subject(prefix, node),
            payload: heartbeat.encode(),
            // Never dropped when NATS is slow: a silence is taken for the node's end.
            droppable: false,
        });
        let next = now.plus_ms((c.config.node_ttl_ms / 3).max(1));
        self.timers.arm(
            Timer::ClusterHeartbeat,
            &mut c.nodes.heartbeat_at,
            Some(next),
        );
        self.forget_silent_nodes();
        self.reap_tick();
    }

    /// Nodes not heard of for `node_ttl` are gone; gathers stop waiting for them.
    fn forget_silent_nodes(&mut self) {
        let now = self.now;
        let wall = self.wall_now();
        let ledger = self.memory.ledger.clone();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        // A silent node's clients were all gone by a third of the ttl from now: its last
        // heartbeat came at least a ttl ago, and a node cut from NATS sends its clients away
        // a ttl after its link went down (within a heartbeat of the last one heard). Only
        // if this node has heard all along: connected to NATS for the whole ttl.
        let ttl = c.config.node_ttl_ms;
        if c.heard_all_along(now) {
            for (node, epoch) in c.nodes.silent(now, ttl) {
                c.nodes
                    .note_ended(&node, &epoch, wall.saturating_add(ttl / 3), &ledger);
            }
        }
        for token in c.nodes.expire(now, ttl) {
            self.finish_gather(token);
        }
    }

    /// A message on one of the node's own subjects: a heartbeat, a question, an answer.
    pub(super) fn cluster_node_message(&mut self, sid: u64, payload: &Bytes) {
        let now = self.now;
        let wall = self.wall_now();
        let ledger = self.memory.ledger.clone();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        match sid {
            HEARTBEAT_SID => match Heartbeat::parse(payload) {
                Some(h) if h.node != c.config.node_name => {
                    match c.nodes.start_of(&h.node) {
                        // A later start: the last one had ended before it began.
                        Some((old, started)) if old != h.epoch && h.started_at > started => {
                            let old = old.to_owned();
                            c.nodes.note_ended(&h.node, &old, wall, &ledger);
                            c.nodes.heard(h, now, &ledger);
                        }
                        // A late heartbeat of an earlier start (or a second node of the name).
                        Some((old, _)) if old != h.epoch => c.nodes.ignored += 1,
                        _ => {
                            c.nodes.heard(h, now, &ledger);
                        }
                    }
                }
                // This node's own name from elsewhere: two nodes share a name.
                Some(_) => {
                    c.nodes.ignored += 1;
                    tracing::warn!("cluster: another node is named {}", c.config.node_name);
                }
                None => c.nodes.ignored += 1,
            },
            ASK_SID => match Ask::parse(payload) {
                Some(ask) => self.answer_ask(&ask),
                None => c.counters.malformed += 1,
            },
            _ => match Answer::parse(payload) {
                Some(answer) => {
                    let token = answer.token;
                    if c.nodes.answered(answer, payload.len()) {
                        self.finish_gather(token);
                    }
                }
                None => c.counters.malformed += 1,
            },
        }
    }

    /// Another node asks for this node's part of a list.
    fn answer_ask(&mut self, ask: &Ask) {
        let want = usize::try_from(ask.want).unwrap_or(usize::MAX);
        let max_bytes = usize::try_from(ask.max_bytes)
            .unwrap_or(usize::MAX)
            .min(nodes::MAX_ANSWER_BYTES);
        // The asker checked the query; one that does not parse here gets an empty part.
        let part = wanted(ask.list, &ask.query)
            .map(|w| self.local_part(&w, want, max_bytes))
            .unwrap_or(Part {
                count: 0,
                items: Vec::new(),
                truncated: false,
            });
        let Some(c) = self.cluster.as_deref() else {
            return;
        };
        let answer = Answer {
            token: ask.token,
            node: c.config.node_name.clone(),
            count: part.count,
            items: part.items,
            truncated: part.truncated,
        };
        self.outputs.push_back(Output::ClusterPublish {
            subject: nodes::answer_subject(&c.config.subject_prefix, &ask.from),
            payload: answer.encode(),
            droppable: false,
        });
    }

    /// This node's items of list `w` in order (clients by id, subscriptions by client id and
    /// filter): all are counted, the first `want` listed within `max_bytes` of JSON.
    fn local_part(&self, w: &Wanted, want: usize, max_bytes: usize) -> Part {
        let items: Box<dyn Iterator<Item = Value> + '_> = match w {
            Wanted::Clients(filter) => Box::new(self.matching_clients(filter).map(client_item)),
            Wanted::Subscriptions(filter) => Box::new(self.subscription_items(filter)),
        };
        let node = self.cluster.as_deref().map(|c| c.config.node_name.clone());
        let mut part = Part {
            count: 0,
            items: Vec::new(),
            truncated: false,
        };
        let mut bytes = 0usize;
        for mut item in items {
            part.count += 1;
            if part.items.len() >= want || part.truncated {
                continue;
            }
            if let (Some(node), Value::Object(m)) = (&node, &mut item) {
                m.insert("node".into(), json!(node));
            }
            bytes += item.to_string().len() + 1;
            if bytes > max_bytes {
                part.truncated = true;
                continue;
            }
            part.items.push(item);
        }
        part
    }

    /// A v4 client or subscription list in cluster mode: this node's part now, the others'
    /// when they answer. `None`: answered later.
    pub(super) fn cluster_list(
        &mut self,
        req_id: u64,
        list: ListKind,
        query: &str,
    ) -> Result<Option<V4Reply>, V4Reply> {
        let w = wanted(list, query)?;
        self.forget_silent_nodes();
        let deadline = self.now.plus_ms(GATHER_WAIT_MS);
        let ledger = self.memory.ledger.clone();
        // Alone (as far as this node knows): answered at once.
        let Some(c) = self
            .cluster
            .as_deref_mut()
            .filter(|c| c.nodes.live().next().is_some())
        else {
            return Ok(Some(self.merged(&w, Vec::new(), &[])));
        };
        let (token, asked) = match c
            .nodes
            .gather(req_id, list, query.to_owned(), deadline, &ledger)
        {
            Ok(gather) => gather,
            Err(nodes::GatherRefused::Busy) => return Err(V4Reply::code(503, code::UNKNOWN)),
        };
        let want = w
            .paging()
            .map_or(u64::MAX, |p| p.page.saturating_mul(p.limit) as u64);
        let ask = Ask {
            from: c.config.node_name.clone(),
            token,
            list,
            query: query.to_owned(),
            want,
            max_bytes: Nodes::answer_bytes(asked.len()) as u64,
        };
        let payload = ask.encode();
        for node in &asked {
            self.outputs.push_back(Output::ClusterPublish {
                subject: nodes::ask_subject(&c.config.subject_prefix, node),
                payload: payload.clone(),
                droppable: false,
            });
        }
        self.arm_gather_timer();
        Ok(None)
    }

    fn arm_gather_timer(&mut self) {
        if let Some(c) = self.cluster.as_deref_mut() {
            let next = c.nodes.next_deadline();
            if next != c.nodes.gather_at {
                self.timers
                    .arm(Timer::ClusterGather, &mut c.nodes.gather_at, next);
            }
        }
    }

    /// Gathers past their deadline are answered with what came.
    pub(super) fn gather_tick(&mut self, at: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if c.nodes.gather_at != Some(at) {
            return;
        }
        c.nodes.gather_at = None;
        for token in c.nodes.overdue(self.now) {
            self.finish_gather(token);
        }
        self.arm_gather_timer();
    }

    /// Answers a gathered list with this node's part and the parts that came.
    fn finish_gather(&mut self, token: u64) {
        let Some(g) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.nodes.take(token))
        else {
            return;
        };
        let mut missing: Vec<String> = g.waiting.iter().chain(&g.gone).cloned().collect();
        missing.sort();
        let reply = match wanted(g.list, &g.query) {
            Ok(w) => self.merged(&w, g.answers, &missing),
            Err(reply) => reply,
        };
        self.v4_reply(g.req_id, reply);
        self.arm_gather_timer();
    }

    /// This node's part and the others', in order, paged as asked; `cluster` says which
    /// nodes answered, which did not, and which sent fewer items than wanted.
    fn merged(&self, w: &Wanted, answers: Vec<Answer>, missing: &[String]) -> V4Reply {
        let paging = w.paging();
        let want = paging.map_or(usize::MAX, |p| p.page.saturating_mul(p.limit));
        let own = self.local_part(w, want, usize::MAX);
        let mut count = own.count;
        let mut answered = Vec::new();
        let mut truncated = Vec::new();
        let mut items = own.items;
        if let Some(c) = self.cluster.as_deref() {
            answered.push(c.config.node_name.clone());
        }
        for a in answers {
            count = count.saturating_add(a.count);
            if a.truncated {
                truncated.push(a.node.clone());
            }
            answered.push(a.node);
            items.extend(a.items);
        }
        answered.sort();
        // Stable: one client id on two nodes (a move under way) keeps both, this node's first.
        items.sort_by(|a, b| order_of(a).cmp(&order_of(b)));
        let mut m = Map::new();
        // Key order as on one node: the subscription list has its data first.
        if matches!(w, Wanted::Subscriptions(_)) {
            m.insert("data".into(), Value::Null);
        }
        m.insert("code".into(), json!(0));
        match paging {
            Some(p) => {
                let start = (p.page - 1).saturating_mul(p.limit);
                let page: Vec<Value> = items.into_iter().skip(start).take(p.limit).collect();
                let hasnext = (start.saturating_add(p.limit) as u64) < count;
                m.insert("data".into(), Value::Array(page));
                m.insert(
                    "meta".into(),
                    json!({ "page": p.page, "limit": p.limit, "count": count, "hasnext": hasnext }),
                );
            }
            None => {
                m.insert("data".into(), Value::Array(items));
            }
        }
        m.insert(
            "cluster".into(),
            json!({ "answered": answered, "missing": missing, "truncated": truncated }),
        );
        V4Reply::json(200, &Value::Object(m))
    }

    /// `GET /nodes` in cluster mode: this node, then every node heard of within `node_ttl`.
    pub(super) fn cluster_nodes(&mut self) -> Option<Value> {
        self.forget_silent_nodes();
        let c = self.cluster.as_deref()?;
        let now = self.wall_now();
        let mut items = vec![json!({
            "node": c.config.node_name,
            "connections": self.connected_clients(),
            "node_status": "Running",
            "uptime": uptime_text(self.now.since(self.started) / 1000),
            "version": env!("CARGO_PKG_VERSION"),
        })];
        for k in c.nodes.live() {
            let h = &k.heartbeat;
            items.push(json!({
                "node": h.node,
                "connections": h.connections,
                "node_status": "Running",
                "uptime": uptime_text(now.saturating_sub(h.started_at) / 1000),
                "version": h.version,
            }));
        }
        // This node first (one node's view of itself comes first, as on a single node), then
        // the others by name.
        if let Some(others) = items.get_mut(1..) {
            others.sort_by(|a, b| node_of(a).cmp(node_of(b)));
        }
        Some(Value::Array(items))
    }
}

/// What a list asks for, parsed: its filter (and paging).
enum Wanted {
    Clients(ClientFilter),
    Subscriptions(SubscriptionFilter),
}

impl Wanted {
    fn paging(&self) -> Option<Paging> {
        match self {
            Wanted::Clients(f) => f.paging,
            Wanted::Subscriptions(f) => f.paging,
        }
    }
}

/// The filter a list asks for: the query's, or the path's client id or user name.
fn wanted(list: ListKind, query: &str) -> Result<Wanted, V4Reply> {
    Ok(match list {
        ListKind::Clients => Wanted::Clients(ClientFilter::parse(query)?),
        ListKind::Client => Wanted::Clients(ClientFilter {
            client_id: Some(query.to_owned()),
            ..ClientFilter::default()
        }),
        ListKind::Username => Wanted::Clients(ClientFilter {
            username: Some(query.to_owned()),
            ..ClientFilter::default()
        }),
        ListKind::Subscriptions => Wanted::Subscriptions(SubscriptionFilter::parse(query)?),
        ListKind::ClientSubscriptions => Wanted::Subscriptions(SubscriptionFilter {
            client_id: Some(query.to_owned()),
            ..SubscriptionFilter::default()
        }),
    })
}

fn node_of(item: &Value) -> &str {
    item.get("node").and_then(Value::as_str).unwrap_or("")
}

/// Where an item goes in a merged list: clients by id, subscriptions by client id and filter.
fn order_of(item: &Value) -> (&str, &str) {
    let text = |k: &str| item.get(k).and_then(Value::as_str);
    let client = text("client_id").or_else(|| text("clientid")).unwrap_or("");
    (client, text("topic").unwrap_or(""))
}
