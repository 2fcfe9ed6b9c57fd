//! Cluster mode against the real thing: three `nats-server -js` processes (cluster routes,
//! own ports and stores) and two `tidemq` nodes on loopback, driven by mosquitto's clients.
//! What is checked: messages cross nodes for plain and wildcard filters, once per client
//! however many of its filters match; a `$share` group gets each message once across nodes;
//! retained messages are seen on every node, and their deletion too; `$SYS` stays on its
//! node; with one nats-server killed, traffic between the nodes goes on; with two killed,
//! QoS 1 is refused (never acknowledged and lost) while QoS 0 still flows, after a restart
//! QoS 1 is taken again, and a message acknowledged just before the kill still arrives; a
//! client id has one connection in the cluster; the admin API kicks a client on either node;
//! a persistent session moves between nodes with its client, and one whose node is killed
//! with SIGKILL resumes on the other with every acknowledged message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use support::api::Api;
use support::browser::Browser;
use support::nats::NatsCluster;
use support::{Dir, Running, free_port, mosquitto_pub, mosquitto_sub};

struct Node {
    port: u16,
    /// The admin API.
    api: Api,
    _running: Running,
}

fn start_node(dir: &Dir, name: &str, urls: &[String]) -> Node {
    let port = free_port();
    let http = free_port();
    let conf: PathBuf = dir.file(&format!("{name}.conf"));
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{port}\"\n\
             http_server.port = {http}\n\
             log.level = info\n\
             cluster {{\n\
             \x20 enable = true\n\
             \x20 node_name = \"{name}\"\n\
             \x20 nats_urls = [{}]\n\
             \x20 replicas = 3\n\
             \x20 publish_timeout = 3s\n\
             \x20 durable_max_bytes = 256MB\n\
             \x20 node_ttl = 3s\n\
             }}\n",
            urls.join(", ")
        ),
    )
    .unwrap();
    let mut running = support::start(
        &conf,
        &dir.file(&format!("{name}.pid")),
        &dir.file(&format!("{name}.log")),
        port,
    );
    support::wait_serving(&mut running, port);
    Node {
        port,
        api: Api { port: http },
        _running: running,
    }
}

/// The lines a `mosquitto_sub` printed by the time it exited (it exits after `-C` messages
/// or its `-W` limit).
fn lines_of(mut child: Child) -> Vec<String> {
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success() || !out.is_empty() || err.contains("Timed out"),
        "mosquitto_sub failed: {status} {err}"
    );
    out.lines().map(str::to_owned).collect()
}

/// Publishes `topic` from node `from` until a subscriber on another node has it: interest
/// travels through NATS in a moment, not at once.
fn until_routed(from: u16, to: u16, topic: &str) {
    let start = Instant::now();
    loop {
        let sub = mosquitto_sub(to, &["-t", topic, "-C", "1", "-W", "2"]);
        std::thread::sleep(Duration::from_millis(300));
        mosquitto_pub(from, &["-t", topic, "-m", "probe"]);
        if lines_of(sub).iter().any(|l| l == "probe") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{topic} from port {from} never reached port {to}"
        );
    }
}

fn cluster(name: &str) -> (NatsCluster, Dir, Node, Node) {
    let nats = NatsCluster::start(name);
    let dir = Dir::new(&format!("cluster-{name}"));
    let urls_a = nats.urls();
    let mut urls_b = nats.urls();
    // Each node prefers another server: messages cross a NATS route.
    urls_b.rotate_left(1);
    let a = start_node(&dir, "node-a", &urls_a);
    let b = start_node(&dir, "node-b", &urls_b);
    (nats, dir, a, b)
}

#[test]
fn messages_cross_nodes_once_per_client_and_once_per_share_group() {
    let (_nats, _dir, a, b) = cluster("routing");
    until_routed(a.port, b.port, "warm/up");
    let n = 50;
    // On node b: one client with three overlapping filters, one with a single wildcard.
    let overlapping = mosquitto_sub(
        b.port,
        &[
            "-t", "x/+/c", "-t", "x/#", "-t", "x/b/c", "-q", "1", "-C", "100", "-W", "20", "-v",
        ],
    );
    let single = mosquitto_sub(b.port, &["-t", "x/+/c", "-C", "100", "-W", "20", "-v"]);
    // A share group with a member on each node, and a plain subscriber on a that must not
    // see b's publishes twice.
    let member_a = mosquitto_sub(
        a.port,
        &["-t", "$share/g/x/#", "-V", "5", "-C", "100", "-W", "20"],
    );
    let member_b = mosquitto_sub(
        b.port,
        &["-t", "$share/g/x/#", "-V", "5", "-C", "100", "-W", "20"],
    );
    until_routed(a.port, b.port, "x/probe/c");
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..n {
        mosquitto_pub(a.port, &["-t", "x/b/c", "-m", &format!("m{i}"), "-q", "1"]);
    }
    let got = lines_of(overlapping);
    let data: Vec<&String> = got.iter().filter(|l| l.starts_with("x/b/c m")).collect();
    let want: Vec<String> = (0..n).map(|i| format!("x/b/c m{i}")).collect();
    assert_eq!(
        data.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "each message once and in order for a client with three matching filters"
    );
    let got = lines_of(single);
    let data = got.iter().filter(|l| l.starts_with("x/b/c m")).count();
    assert_eq!(data, n, "every message for the single filter");
    let shared: Vec<String> = lines_of(member_a)
        .into_iter()
        .chain(lines_of(member_b))
        .filter(|l| l.starts_with('m'))
        .collect();
    let mut sorted = shared.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        shared.len(),
        n,
        "one delivery per message to the group: {shared:?}"
    );
    assert_eq!(sorted.len(), n, "no message twice in the group");
}

#[test]
fn retained_messages_are_seen_on_every_node_and_their_deletion_too() {
    let (_nats, _dir, a, b) = cluster("retained");
    mosquitto_pub(a.port, &["-t", "r/1", "-m", "kept", "-r", "-q", "1"]);
    mosquitto_pub(b.port, &["-t", "r/2", "-m", "also", "-r", "-q", "1"]);
    let both = |port: u16| -> Vec<String> {
        let mut got = lines_of(mosquitto_sub(port, &["-t", "r/#", "-v", "-W", "1"]));
        got.sort();
        got
    };
    let want = vec!["r/1 kept".to_owned(), "r/2 also".to_owned()];
    let start = Instant::now();
    while both(a.port) != want || both(b.port) != want {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "retained never converged: a {:?}, b {:?}",
            both(a.port),
            both(b.port)
        );
    }
    // Deleted on b, gone on a.
    mosquitto_pub(b.port, &["-t", "r/1", "-n", "-r", "-q", "1"]);
    let start = Instant::now();
    while both(a.port) != vec!["r/2 also".to_owned()] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the deletion never reached node a: {:?}",
            both(a.port)
        );
    }
    // `$SYS` stays on its node: a's client events never reach b.
    let sys = mosquitto_sub(b.port, &["-t", "$SYS/brokers/+/connected", "-v", "-W", "3"]);
    std::thread::sleep(Duration::from_millis(500));
    mosquitto_pub(a.port, &["-t", "z", "-m", "x", "-i", "sys-probe"]);
    let got = lines_of(sys);
    assert!(
        !got.iter().any(|l| l.contains("sys-probe")),
        "a's $SYS event reached b: {got:?}"
    );
}

#[test]
fn with_one_nats_server_killed_traffic_between_nodes_goes_on() {
    let (mut nats, _dir, a, b) = cluster("failover");
    until_routed(a.port, b.port, "f/probe");
    // Kill a server node a is connected to: its client fails over.
    let serving = nats.serving("tidemq-node-a");
    let Some(&first) = serving.first() else {
        panic!("no nats-server holds node a's connection")
    };
    nats.kill9(first);
    let start = Instant::now();
    until_routed(a.port, b.port, "f/after");
    eprintln!(
        "QoS 0 a→b again {} ms after the kill of a's nats-server",
        start.elapsed().as_millis()
    );
    // QoS 1 waits for the durable stream, whose leader may have been the killed server: a
    // publish is refused until a new one is elected, then taken.
    loop {
        if try_pub(a.port, &["-t", "f/probe1", "-m", "x", "-q", "1"]).0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "QoS 1 never taken again after the kill"
        );
    }
    eprintln!(
        "QoS 1 taken again {} ms after the kill",
        start.elapsed().as_millis()
    );
    let sub = mosquitto_sub(
        b.port,
        &["-t", "f/data", "-t", "f/end", "-q", "1", "-v", "-W", "60"],
    );
    std::thread::sleep(Duration::from_millis(500));
    // The stream may elect a leader again meanwhile: a publish refused then is sent again (a
    // refused one may have been stored all the same: at least once).
    let mut again = 0;
    for i in 0..=20 {
        let (topic, payload) = if i < 20 {
            ("f/data", i.to_string())
        } else {
            ("f/end", "end".to_owned())
        };
        while !try_pub(a.port, &["-t", topic, "-m", &payload, "-q", "1"]).0 {
            again += 1;
            assert!(
                again < 100,
                "QoS 1 refused again and again after the failover"
            );
        }
    }
    let got = lines_until(sub, "f/end end", Duration::from_secs(60));
    let mut data: Vec<&str> = got
        .iter()
        .filter_map(|l| l.strip_prefix("f/data "))
        .collect();
    data.dedup();
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(
        data,
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "every message after the failover, in order ({again} publishes sent again)"
    );
}

/// What a running `mosquitto_sub -d` printed, once the broker cut it, if it did within
/// `limit` (else it is stopped).
fn cut_within(mut child: Child, limit: Duration) -> Option<String> {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The lines a running `mosquitto_sub` prints until one equals `last` (then it is stopped),
/// or until `limit`.
fn lines_until(mut child: Child, last: &str, limit: Duration) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut got = Vec::new();
    while let Some(left) = limit.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line == last;
                got.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    got
}

/// `mosquitto_pub` that may fail: its exit status and what it printed.
fn try_pub(port: u16, args: &[&str]) -> (bool, String) {
    let out = support::run(
        support::tool("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn without_a_jetstream_quorum_qos1_is_refused_and_qos0_still_flows() {
    let (mut nats, _dir, a, b) = cluster("quorum");
    until_routed(a.port, b.port, "q/probe");
    // On node b, the accepted messages; on node a, which refuses them, the refused ones.
    let taken = mosquitto_sub(
        b.port,
        &[
            "-t", "q/before", "-t", "q/after", "-q", "1", "-v", "-C", "2", "-W", "150",
        ],
    );
    let local = mosquitto_sub(
        a.port,
        &[
            "-t", "q/v5", "-t", "q/v3", "-t", "q/after", "-q", "1", "-v", "-C", "1", "-W", "150",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _) = try_pub(a.port, &["-t", "q/before", "-m", "kept", "-q", "1"]);
    assert!(ok, "QoS 1 with all three servers");
    // At once two of three servers go, whichever the nodes are on: no quorum for the stream,
    // and both nodes fail over to the survivor. The message just acknowledged is in the
    // stream, whose node feed on b reads it once the stream is back, wherever it was then.
    nats.kill9(1);
    nats.kill9(2);
    let start = Instant::now();
    let (ok, text) = try_pub(
        a.port,
        &["-t", "q/v5", "-m", "refused", "-q", "1", "-V", "5"],
    );
    eprintln!(
        "v5 QoS 1 without a quorum answered in {} ms: {}",
        start.elapsed().as_millis(),
        text.trim()
    );
    // mosquitto_pub reports a PUBACK with a failure reason as a warning and exits 0.
    let _ = ok;
    assert!(
        text.contains("Unspecified error"),
        "a v5 QoS 1 publish without a quorum must be refused with 0x80: {text}"
    );
    let (ok, text) = try_pub(a.port, &["-t", "q/v3", "-m", "refused", "-q", "1"]);
    assert!(
        !ok,
        "a 3.1.1 QoS 1 publish without a quorum must fail: {text}"
    );
    // QoS 0 does not touch JetStream; both nodes are on the surviving server by now.
    until_routed(a.port, b.port, "q/zero");
    // A server back: a quorum again, QoS 1 is taken.
    nats.restart(1);
    let start = Instant::now();
    loop {
        let (ok, _) = try_pub(a.port, &["-t", "q/after", "-m", "kept", "-q", "1"]);
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "QoS 1 never taken again after a server came back"
        );
    }
    eprintln!(
        "QoS 1 taken again {} ms after the restart",
        start.elapsed().as_millis()
    );
    // Every acknowledged message reaches the other node, the one sent just before the kill
    // too. (A refused one may reach it as well: JetStream may have kept it after all, and
    // the feed reads what the stream holds: at least once.)
    let got = lines_of(taken);
    assert_eq!(got, ["q/before kept", "q/after kept"]);
    // The node that refused a message never routes it: the first message its own
    // subscriber gets after the refusals is the one taken.
    assert_eq!(lines_of(local), ["q/after kept"]);
}

/// A client id has one owner in the cluster: a client that connects on another node while
/// its first connection is still open ends that one (v5 DISCONNECT 0x8E), as on one node.
#[test]
fn a_client_that_connects_on_another_node_leaves_one_connection() {
    let (_nats, _dir, a, b) = cluster("owner");
    until_routed(a.port, b.port, "o/probe");
    let mut first = mosquitto_sub(
        a.port,
        &[
            "-i", "roamer", "-t", "o/x", "-q", "1", "-V", "5", "-W", "60", "-d",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first connection is up"
    );
    let start = Instant::now();
    let second = mosquitto_sub(
        b.port,
        &[
            "-i", "roamer", "-t", "o/x", "-q", "1", "-V", "5", "-C", "1", "-W", "60",
        ],
    );
    let out = cut_within(first, Duration::from_secs(20))
        .expect("node a kept the first connection of the client id node b took");
    eprintln!(
        "node a ended the first connection {} ms after the client connected on node b",
        start.elapsed().as_millis(),
    );
    // mosquitto_sub's debug output names what it received.
    assert!(
        out.contains("Received DISCONNECT (142)"),
        "a DISCONNECT with 0x8E (Session taken over): {out}"
    );
    // The newest connection stays and is served.
    loop {
        if try_pub(a.port, &["-t", "o/x", "-m", "kept", "-q", "1"]).0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert_eq!(lines_of(second), ["kept"]);
}

/// The admin API kicks a client wherever it is: `DELETE /api/v4/clients/{id}` on node a for
/// a client connected on node b disconnects it there (v5 DISCONNECT 0x98).
#[test]
fn the_admin_api_of_one_node_kicks_a_client_on_the_other() {
    let (_nats, _dir, a, b) = cluster("kick");
    until_routed(a.port, b.port, "k/probe");
    let client = mosquitto_sub(
        b.port,
        &["-i", "far", "-t", "k/x", "-V", "5", "-W", "60", "-d"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let answer = a.api.call("DELETE", "/api/v4/clients/far", None);
    assert_eq!(answer.status, 200, "{}", answer.text);
    let out = cut_within(client, Duration::from_secs(20))
        .expect("node b kept the client node a's admin API kicked");
    eprintln!(
        "node b disconnected the client {} ms after node a's API was asked",
        start.elapsed().as_millis()
    );
    assert!(
        out.contains("Received DISCONNECT (152)"),
        "a DISCONNECT with 0x98 (Administrative action): {out}"
    );
    // A client id nobody holds: 404 from either node.
    let answer = a.api.call("DELETE", "/api/v4/clients/nobody", None);
    assert_eq!(answer.status, 404, "{}", answer.text);
}

/// The nodes' names, as `GET /api/v4/nodes` on `node` lists them.
fn nodes_listed(node: &Node) -> Vec<String> {
    let v = node.api.get("/api/v4/nodes");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `node` lists both nodes (the other's heartbeat came), itself first.
fn until_both_listed(node: &Node) {
    let start = Instant::now();
    let both = |mut names: Vec<String>| {
        names.sort();
        names == ["node-a", "node-b"]
    };
    while !both(nodes_listed(node)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the other node was never heard of: {:?}",
            nodes_listed(node)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("both nodes listed after {:?}", start.elapsed());
}

/// Waits until `node`'s admin API lists `filter` among `client_id`'s subscriptions (a
/// persistent session's SUBACK waits for its record, and nothing routes to it before).
fn until_subscribed(node: &Node, client_id: &str, filter: &str) {
    let start = Instant::now();
    let quoted = format!("\"{filter}\"");
    while !node
        .api
        .get(&format!("/api/v4/subscriptions/{client_id}"))
        .to_string()
        .contains(&quoted)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{client_id} never subscribed to {filter}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (client id, node) of each connected client `GET /api/v4/clients` on `node` lists.
fn clients_listed(node: &Node, path: &str) -> (Vec<(String, String)>, serde_json::Value) {
    let v = node.api.get(path);
    let items = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client_id"].as_str().unwrap().to_owned(),
                c["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (items, v["cluster"].clone())
}

/// The admin lists describe the cluster: `GET /api/v4/nodes` names every node whose
/// heartbeat is current, `GET /api/v4/clients` on one node lists the clients of all with the
/// node each is on; a node killed drops out of both within `node_ttl`.
#[test]
fn the_admin_lists_describe_every_node_of_the_cluster() {
    let (_nats, _dir, a, b) = cluster("lists");
    // Each node asks the nodes it has heard of: both must have heard of each other.
    until_both_listed(&a);
    until_both_listed(&b);
    assert_eq!(nodes_listed(&b)[0], "node-b", "the answering node first");
    let left = mosquitto_sub(a.port, &["-i", "left-1", "-t", "l/x", "-W", "60"]);
    let right = mosquitto_sub(b.port, &["-i", "right-1", "-t", "l/x", "-W", "60"]);
    let both = vec![
        ("left-1".to_owned(), "node-a".to_owned()),
        ("right-1".to_owned(), "node-b".to_owned()),
    ];
    let start = Instant::now();
    loop {
        let (listed, cluster) = clients_listed(&a, "/api/v4/clients?conn_state=connected");
        if listed == both {
            assert_eq!(cluster["missing"], serde_json::json!([]));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "node a lists {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (one, _) = clients_listed(&b, "/api/v4/clients/left-1");
    assert_eq!(one, vec![("left-1".to_owned(), "node-a".to_owned())]);
    let paged = a.api.get("/api/v4/clients?_page=2&_limit=1");
    assert_eq!(paged["data"][0]["client_id"], "right-1", "{paged}");
    assert_eq!(paged["meta"]["count"], 2, "{paged}");

    // Node b killed: once its heartbeat is older than node_ttl, node a lists itself alone.
    drop(b);
    let killed = Instant::now();
    while nodes_listed(&a) != ["node-a"] {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "node a still lists {:?}",
            nodes_listed(&a)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "node b dropped out of node a's list {:?} after it was killed",
        killed.elapsed()
    );
    let (listed, cluster) = clients_listed(&a, "/api/v4/clients?conn_state=connected");
    assert_eq!(listed, vec![("left-1".to_owned(), "node-a".to_owned())]);
    assert_eq!(cluster["answered"], serde_json::json!(["node-a"]));
    for mut client in [left, right] {
        let _ = client.kill();
        let _ = client.wait();
    }
}

/// The dashboard of one node shows the cluster: its overview lists both nodes (this one
/// first), its client and subscription lists those of both with the node each is on.
#[test]
fn the_dashboard_shows_the_whole_cluster() {
    let (_nats, _dir, a, b) = cluster("dashboard");
    until_both_listed(&a);
    let left = mosquitto_sub(a.port, &["-i", "left-1", "-t", "d/x", "-W", "60"]);
    let right = mosquitto_sub(b.port, &["-i", "right-1", "-t", "d/x", "-W", "60"]);
    // Both connected before the page loads its list once.
    let start = Instant::now();
    while clients_listed(&a, "/api/v4/clients").0.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "clients not listed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let browser = Browser::start();
    browser.go(&format!("http://127.0.0.1:{}/dashboard", a.api.port));
    browser.until(
        "the sign-in form",
        "return !document.getElementById('login-view').hidden",
    );
    browser.type_into("#login-username", "admin");
    browser.type_into("#login-password", "public");
    browser.click("#login-submit");
    browser.until(
        "both nodes on the overview",
        "const rows = [...document.querySelectorAll('[data-testid=node-row]')]; \
         return !document.getElementById('ov-cluster').hidden && \
         rows.map((r) => r.dataset.node).join(',') === 'node-a,node-b'",
    );
    browser.screenshot("cluster-overview.png");
    browser.click("#nav-clients");
    browser.until(
        "the clients of both nodes with their node",
        "const rows = [...document.querySelectorAll('[data-testid=client-row]')]; \
         const seen = rows.map((r) => r.dataset.clientId + '@' + r.querySelector('[data-testid=client-node]').textContent).join(','); \
         const shown = getComputedStyle(document.querySelector('#clients-table th.cluster-only')).display !== 'none'; \
         return shown && seen === 'left-1@node-a,right-1@node-b'",
    );
    browser.screenshot("cluster-clients.png");
    browser.click("#nav-subscriptions");
    browser.until(
        "the subscriptions of both nodes with their node",
        "const rows = [...document.querySelectorAll('[data-testid=sub-row]')]; \
         const seen = rows.map((r) => r.dataset.clientId + '@' + r.querySelector('[data-testid=sub-node]').textContent).join(','); \
         return seen === 'left-1@node-a,right-1@node-b'",
    );
    for mut client in [left, right] {
        let _ = client.kill();
        let _ = client.wait();
    }
}

/// A node without NATS for `node_ttl` sends its clients to another server (v5 DISCONNECT
/// 0x9C) and refuses CONNECTs until NATS is back; then it serves again.
#[test]
fn a_node_cut_off_from_nats_sends_its_clients_elsewhere_until_it_is_back() {
    let (mut nats, _dir, a, b) = cluster("cutoff");
    until_routed(a.port, b.port, "c/probe");
    let client = mosquitto_sub(
        a.port,
        &["-i", "cut", "-t", "c/x", "-V", "5", "-W", "60", "-d"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for i in 0..3 {
        nats.kill9(i);
    }
    let out =
        cut_within(client, Duration::from_secs(30)).expect("node a kept its client without NATS");
    eprintln!(
        "node a sent its client away {} ms after the NATS servers died",
        start.elapsed().as_millis()
    );
    assert!(
        out.contains("Received DISCONNECT (156)"),
        "a DISCONNECT with 0x9C (Use another server): {out}"
    );
    let (accepted, why) = try_pub(a.port, &["-t", "c/x", "-m", "m", "-V", "5"]);
    assert!(!accepted, "a CONNECT is refused while cut off");
    eprintln!("while cut off: {}", why.trim());
    nats.restart_all();
    let back = Instant::now();
    loop {
        if try_pub(a.port, &["-t", "c/x", "-m", "m", "-V", "5"]).0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "node a never took clients again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "node a accepts clients {:?} after NATS is back",
        back.elapsed()
    );
}

/// A persistent session moves with its client: subscribed on node a, away while QoS 1
/// messages are published, back on node b without subscribing again, it gets them there
/// (its record in the sessions bucket, a catch-up read of the durable stream).
#[test]
fn a_persistent_session_moves_between_nodes() {
    let (_nats, _dir, a, b) = cluster("move");
    until_routed(a.port, b.port, "m/probe");
    let session = ["-i", "mover", "-c", "-q", "1", "-V", "5", "-x", "3600"];
    // On node a: subscribed, one message read, then a clean DISCONNECT (session kept).
    let first = mosquitto_sub(
        a.port,
        &[&session[..], &["-t", "m/x", "-C", "1", "-W", "30", "-v"]].concat(),
    );
    until_subscribed(&a, "mover", "m/x");
    mosquitto_pub(b.port, &["-t", "m/x", "-m", "before", "-q", "1"]);
    assert_eq!(lines_of(first), ["m/x before"]);
    // Away: published on both nodes, each acknowledged once JetStream has it.
    let away: Vec<String> = (1..=6).map(|i| format!("away-{i}")).collect();
    for (i, m) in away.iter().enumerate() {
        let port = if i % 2 == 0 { a.port } else { b.port };
        mosquitto_pub(port, &["-t", "m/x", "-m", m, "-q", "1"]);
    }
    // Back on node b, subscribed to something else only: the session brings its filter.
    // ("before" may come again: the session's cursor moves at most each record_interval.)
    let start = Instant::now();
    let back = mosquitto_sub(
        b.port,
        &[&session[..], &["-t", "m/unrelated", "-W", "30", "-v"]].concat(),
    );
    let got = lines_until(back, "m/x away-6", Duration::from_secs(30));
    eprintln!(
        "the session resumed on node b and got {} messages in {} ms",
        got.len(),
        start.elapsed().as_millis()
    );
    let got: Vec<&String> = got.iter().filter(|l| *l != "m/x before").collect();
    let want: Vec<String> = away.iter().map(|m| format!("m/x {m}")).collect();
    assert_eq!(
        got,
        want.iter().collect::<Vec<_>>(),
        "every message sent while away, in order"
    );
    // Node b holds it now: a message published on node a reaches it there.
    let again = mosquitto_sub(
        b.port,
        &[&session[..], &["-t", "m/unrelated", "-W", "30", "-v"]].concat(),
    );
    std::thread::sleep(Duration::from_millis(500));
    mosquitto_pub(a.port, &["-t", "m/x", "-m", "after", "-q", "1"]);
    let got = lines_until(again, "m/x after", Duration::from_secs(30));
    assert_eq!(got.last().map(String::as_str), Some("m/x after"), "{got:?}");
    let metrics = b.api.call("GET", "/api/v4/prometheus", None).text;
    assert!(
        metrics.contains("tidemq_cluster_sessions_resumed_total 1"),
        "{metrics}"
    );
}

/// A persistent QoS 2 subscriber that moves between nodes gets each message once: what it
/// completed on node a does not come again on node b, what was sent while it was away comes
/// once each, in order.
#[test]
fn a_persistent_qos2_session_moves_and_gets_each_message_once() {
    let (_nats, _dir, a, b) = cluster("move2");
    until_routed(a.port, b.port, "q/probe");
    let session = ["-i", "mover2", "-c", "-q", "2", "-V", "5", "-x", "3600"];
    let first = mosquitto_sub(
        a.port,
        &[&session[..], &["-t", "q/x", "-C", "1", "-W", "30", "-v"]].concat(),
    );
    until_subscribed(&a, "mover2", "q/x");
    mosquitto_pub(b.port, &["-t", "q/x", "-m", "before", "-q", "2"]);
    assert_eq!(lines_of(first), ["q/x before"]);
    let away: Vec<String> = (1..=6).map(|i| format!("away-{i}")).collect();
    for (i, m) in away.iter().enumerate() {
        let port = if i % 2 == 0 { a.port } else { b.port };
        mosquitto_pub(port, &["-t", "q/x", "-m", m, "-q", "2"]);
    }
    let back = mosquitto_sub(
        b.port,
        &[&session[..], &["-t", "q/unrelated", "-W", "30", "-v"]].concat(),
    );
    let got = lines_until(back, "q/x away-6", Duration::from_secs(30));
    let want: Vec<String> = away.iter().map(|m| format!("q/x {m}")).collect();
    assert_eq!(
        got, want,
        "each message sent while away once, in order, and no other"
    );
}

/// `kill -9` of a node holding three persistent sessions, two with a 2 s expiry and one with
/// an hour's: node b sees the node's start end (silent for `node_ttl`, 3 s here) and counts
/// their expiry from then. Two clients come back to node b well after 2 s: the short one
/// starts afresh and does not get what was published meanwhile; the long one resumes and does.
/// b deletes nothing of a node that is only silent (not for minutes); node a, started again,
/// deletes the record of the third, which never comes back.
#[test]
fn a_dead_nodes_session_expires_counted_from_its_end_and_its_record_is_reaped() {
    let (nats, dir, a, b) = cluster("expire");
    until_routed(a.port, b.port, "e/probe");
    let short = ["-i", "short", "-c", "-q", "1", "-V", "5", "-x", "2"];
    let long = ["-i", "long", "-c", "-q", "1", "-V", "5", "-x", "3600"];
    let gone = ["-i", "gone", "-c", "-q", "1", "-V", "5", "-x", "2"];
    let subs: Vec<Child> = [&short, &long, &gone]
        .iter()
        .map(|session| {
            mosquitto_sub(
                a.port,
                &[&session[..], &["-t", "e/x", "-W", "30", "-v"]].concat(),
            )
        })
        .collect();
    for id in ["short", "long", "gone"] {
        until_subscribed(&a, id, "e/x");
    }
    // The records with the subscriptions are written (at the latest at the records tick).
    std::thread::sleep(Duration::from_millis(1500));
    // SIGKILL: the records keep no disconnect time.
    drop(a);
    for sub in subs {
        let _ = lines_until(sub, "", Duration::from_millis(100));
    }
    mosquitto_pub(b.port, &["-t", "e/x", "-m", "while-away", "-q", "1"]);
    // b forgets a node_ttl after its last heartbeat, at one of its own (a third of the ttl
    // apart), and a's clients count as gone a third of the ttl later: 3 + 1 + 1 s, then the
    // short expiry of 2 s, and a margin.
    std::thread::sleep(Duration::from_secs(9));
    let back = |session: &[&str]| {
        mosquitto_sub(
            b.port,
            &[session, &["-t", "e/unrelated", "-W", "5", "-v"]].concat(),
        )
    };
    let got_long = lines_until(back(&long[..]), "e/x while-away", Duration::from_secs(10));
    assert_eq!(
        got_long.last().map(String::as_str),
        Some("e/x while-away"),
        "the long session resumes with what it was owed: {got_long:?}"
    );
    let got_short = lines_of(back(&short[..]));
    assert!(
        !got_short.iter().any(|l| l.contains("while-away")),
        "the short session expired: {got_short:?}"
    );
    let metrics = b.api.call("GET", "/api/v4/prometheus", None).text;
    assert!(
        metrics.contains("tidemq_cluster_sessions_resumed_total 1\n"),
        "only the long session resumed: {metrics}"
    );
    // b scans every six ttls (18 s) and deletes nothing: a was only silent.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = metrics;
    while Instant::now() < deadline && metrics.contains("tidemq_cluster_scans_total 0\n") {
        std::thread::sleep(Duration::from_millis(500));
        metrics = b.api.call("GET", "/api/v4/prometheus", None).text;
    }
    assert!(
        !metrics.contains("tidemq_cluster_scans_total 0\n"),
        "b never scanned: {metrics}"
    );
    assert!(
        metrics.contains("tidemq_cluster_records_reaped_total 0\n"),
        "nothing of a silent node is deleted within minutes: {metrics}"
    );
    // a again, a new start of the lowest name: a ttl and 18 heartbeats (18 s) later it scans
    // and deletes what its earlier start left and nobody resumed.
    let a = start_node(&dir, "node-a", &nats.urls());
    let reaped = "tidemq_cluster_records_reaped_total 1\n";
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut metrics = String::new();
    while Instant::now() < deadline && !metrics.contains(reaped) {
        std::thread::sleep(Duration::from_millis(500));
        metrics = a.api.call("GET", "/api/v4/prometheus", None).text;
    }
    assert!(
        metrics.contains(reaped),
        "the expired record was not reaped: {metrics}"
    );
}

/// `kill -9` of a node while publishers on the other send QoS 1: its persistent
/// subscriber connects to the other node and gets every message that was acknowledged (some
/// may come twice: at least once).
#[test]
fn a_node_killed_with_9_loses_no_acknowledged_qos1_message() {
    let (_nats, _dir, a, b) = cluster("kill9");
    until_routed(a.port, b.port, "s/probe");
    let session = ["-i", "survivor", "-c", "-q", "1", "-V", "5", "-x", "3600"];
    let first = mosquitto_sub(
        a.port,
        &[&session[..], &["-t", "s/x", "-W", "60", "-v"]].concat(),
    );
    std::thread::sleep(Duration::from_millis(500));
    // A publisher on node b sends QoS 1 messages; node a is killed halfway.
    let mut acked = Vec::new();
    let mut killed = None;
    let start = Instant::now();
    let mut a = Some(a);
    for i in 1..=60 {
        let m = format!("m-{i}");
        if try_pub(b.port, &["-t", "s/x", "-m", &m, "-q", "1"]).0 {
            acked.push(m);
        }
        if i == 30 {
            // SIGKILL: nothing of node a gets to finish.
            drop(a.take());
            killed = Some(start.elapsed());
        }
    }
    eprintln!(
        "node a killed after {:?}; {} of 60 publishes acknowledged",
        killed,
        acked.len()
    );
    // What the first connection got before its node died.
    let before = lines_until(first, "", Duration::from_secs(2));
    // Its client connects to node b, subscribed to nothing new: the session comes along.
    let back = mosquitto_sub(
        b.port,
        &[&session[..], &["-t", "s/unrelated", "-W", "30", "-v"]].concat(),
    );
    let last = format!("s/x {}", acked.last().unwrap());
    let after = lines_until(back, &last, Duration::from_secs(60));
    let got: std::collections::BTreeSet<&str> = before
        .iter()
        .chain(after.iter())
        .filter_map(|l| l.strip_prefix("s/x "))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|m| !got.contains(m.as_str())).collect();
    eprintln!(
        "before the kill: {} messages; on node b: {} ({} again)",
        before.len(),
        after.len(),
        (before.len() + after.len()).saturating_sub(got.len())
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert_eq!(acked.len(), 60, "node b took every publish");
}
