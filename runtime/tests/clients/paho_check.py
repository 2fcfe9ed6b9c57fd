#!/usr/bin/env python3
"""End-to-end checks of an MQTT broker on 127.0.0.1 with Eclipse Paho (paho-mqtt 2.x).

Usage: paho_check.py PORT CHECK [CHECK ...]

CHECK is NAME:PROTOCOL, NAME one of roundtrip, retained, will, persistent and PROTOCOL one
of v5, v311, v31 (e.g. "roundtrip:v5"). Exit status 0 if every check passes; otherwise a
line starting with "FAIL" says what went wrong and the status is 1 (2 for bad usage, 3 if
paho-mqtt 2.x is missing). Every wait is bounded.
"""

import json
import os
import queue
import signal
import sys
import threading
import time

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as e:
    print(f"FAIL: cannot import paho-mqtt ({e}); install the PyPI package paho-mqtt>=2", flush=True)
    sys.exit(3)

if int(paho.mqtt.__version__.split(".")[0]) < 2:
    print(f"FAIL: paho-mqtt {paho.mqtt.__version__} is too old; install paho-mqtt>=2", flush=True)
    sys.exit(3)

HOST = "127.0.0.1"
WAIT = 10.0  # longest wait for anything that should happen
QUIET = 1.0  # how long we watch for something that must not happen
PROTOCOLS = {"v5": mqtt.MQTTv5, "v311": mqtt.MQTTv311, "v31": mqtt.MQTTv31}
RUN = f"{os.getpid()}-{int(time.time() * 1000) % 100000}"


class CheckFailed(Exception):
    pass


def require(cond, what):
    if not cond:
        raise CheckFailed(what)


class Peer:
    """One paho client with its network loop in a background thread."""

    def __init__(self, port, name, protocol, clean=True, session_expiry=None, will=None):
        # MQTT 3.1 limits client identifiers to 23 characters.
        self.client_id = f"{name[:6]}{protocol}-{RUN}"[:23]
        self.port = port
        self.protocol = protocol
        self.v5 = protocol == mqtt.MQTTv5
        self.clean = clean
        self.session_expiry = session_expiry
        kwargs = {}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            **kwargs,
        )
        if will is not None:
            topic, payload, qos, props = will
            self.client.will_set(topic, payload, qos=qos, retain=False, properties=props)
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.connect_result = None
        self.subacks = {}
        self.subscribed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_result = (reason_code, flags)
        self.connected.set()

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.subscribed:
            self.subacks[mid] = reason_codes
            self.subscribed.notify_all()

    def connect(self):
        """Connects and returns the CONNACK's session-present flag."""
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        self.client.connect(HOST, self.port, keepalive=30, **kwargs)
        self.client.loop_start()
        require(self.connected.wait(WAIT), f"{self.client_id}: no CONNACK within {WAIT}s")
        reason_code, flags = self.connect_result
        require(not reason_code.is_failure, f"{self.client_id}: CONNACK {reason_code}")
        return flags.session_present

    def subscribe(self, topic, qos):
        result, mid = self.client.subscribe(topic, qos)
        require(result == mqtt.MQTT_ERR_SUCCESS, f"{self.client_id}: subscribe({topic}) -> {result}")
        deadline = time.monotonic() + WAIT
        with self.subscribed:
            while mid not in self.subacks:
                left = deadline - time.monotonic()
                require(left > 0, f"{self.client_id}: no SUBACK for {topic} within {WAIT}s")
                self.subscribed.wait(left)
            codes = self.subacks.pop(mid)
        granted = [c.value for c in codes]
        require(granted == [qos], f"{self.client_id}: SUBACK for {topic}: {codes} (wanted QoS {qos})")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        """Publishes and waits until QoS 0 is sent, QoS 1 acknowledged, QoS 2 completed."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)
        require(info.is_published(), f"{self.client_id}: publish to {topic} (QoS {qos}) not completed within {WAIT}s")

    def recv(self, what="a message"):
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise CheckFailed(f"{self.client_id}: no {what} within {WAIT}s") from None

    def recv_until(self, pred, what):
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            require(left > 0, f"{self.client_id}: no {what} within {WAIT}s")
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if pred(m):
                return m

    def expect_nothing(self, topic, seconds=QUIET):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                return
            require(m.topic != topic, f"{self.client_id}: unexpected message on {topic}: {m.payload!r}")

    def disconnect(self):
        """A clean DISCONNECT."""
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Closes the TCP connection without sending DISCONNECT."""
        self.client.loop_stop()
        sock = self.client.socket()
        require(sock is not None, f"{self.client_id}: no socket to close")
        sock.close()


def check_roundtrip(port, protocol):
    base = f"paho/rt/{RUN}/{protocol}"
    sub = Peer(port, "sub", protocol)
    sub.connect()
    sub.subscribe(f"{base}/#", 2)
    pub = Peer(port, "pub", protocol)
    pub.connect()
    v5 = protocol == mqtt.MQTTv5
    sent = {}
    for qos in (0, 1, 2):
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("qos", str(qos)), ("k", "v")]
            props.ContentType = "text/plain"
        topic = f"{base}/q{qos}"
        payload = f"paho QoS {qos} \u2713".encode()
        pub.publish(topic, payload, qos, properties=props)
        sent[topic] = (payload, qos)
    got = {}
    for _ in sent:
        m = sub.recv("published message")
        require(m.topic not in got, f"duplicate delivery on {m.topic}")
        got[m.topic] = m
    for topic, (payload, qos) in sent.items():
        m = got.get(topic)
        require(m is not None, f"nothing received on {topic}; got {sorted(got)}")
        require(m.payload == payload, f"{topic}: payload {m.payload!r}, sent {payload!r}")
        require(m.qos == qos, f"{topic}: delivered at QoS {m.qos}, published and subscribed at {qos}")
        require(not m.retain, f"{topic}: live message has RETAIN=1")
        if v5:
            user = getattr(m.properties, "UserProperty", None)
            require(user == [("qos", str(qos)), ("k", "v")], f"{topic}: user properties {user}")
            ctype = getattr(m.properties, "ContentType", None)
            require(ctype == "text/plain", f"{topic}: content type {ctype!r}")
    sub.expect_nothing(f"{base}/q1")
    pub.disconnect()
    sub.disconnect()


def check_retained(port, protocol):
    topic = f"paho/ret/{RUN}/{protocol}"
    pub = Peer(port, "pub", protocol)
    pub.connect()
    pub.publish(topic, b"kept", 1, retain=True)
    sub = Peer(port, "late", protocol)
    sub.connect()
    sub.subscribe(topic, 1)
    m = sub.recv("retained message")
    require(m.topic == topic and m.payload == b"kept", f"retained: {m.topic} {m.payload!r}")
    require(m.retain, "a retained message sent on subscription must have RETAIN=1")
    # Clear it: a later subscriber gets nothing.
    pub.publish(topic, b"", 1, retain=True)
    m = sub.recv("the clearing message")
    require(m.payload == b"", f"clearing message payload {m.payload!r}")
    later = Peer(port, "later", protocol)
    later.connect()
    later.subscribe(topic, 1)
    later.expect_nothing(topic)
    for p in (pub, sub, later):
        p.disconnect()


def check_will(port, protocol):
    will_topic = f"paho/will/{RUN}/{protocol}"
    watcher = Peer(port, "watcher", protocol)
    watcher.connect()
    watcher.subscribe(f"{will_topic}/#", 1)
    watcher.subscribe("$SYS/brokers/disconnected", 0)

    props = None
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.WILLMESSAGE)
        props.UserProperty = [("why", "dropped")]
    dying = Peer(port, "dying", protocol, will=(f"{will_topic}/dying", b"dropped", 1, props))
    dying.connect()
    dying.drop()
    m = watcher.recv_until(lambda m: m.topic.startswith(will_topic), "will message")
    require(m.topic == f"{will_topic}/dying", f"will on {m.topic}")
    require(m.payload == b"dropped", f"will payload {m.payload!r}")
    require(m.qos == 1, f"will QoS {m.qos}")
    require(not m.retain, "will RETAIN flag")
    if props is not None:
        user = getattr(m.properties, "UserProperty", None)
        require(user == [("why", "dropped")], f"will user properties {user}")

    polite = Peer(port, "polite", protocol, will=(f"{will_topic}/polite", b"nope", 1, None))
    polite.connect()
    polite.disconnect()

    # The broker's "client gone" event follows the will (if any) on the same connection.
    def gone(m):
        if m.topic == f"{will_topic}/polite":
            raise CheckFailed(f"will published after a clean DISCONNECT: {m.payload!r}")
        if m.topic != "$SYS/brokers/disconnected":
            return False
        try:
            event = json.loads(m.payload)
        except ValueError as e:
            raise CheckFailed(f"$SYS/brokers/disconnected payload is not JSON: {m.payload!r}: {e}") from None
        return event.get("client_id") == polite.client_id

    watcher.recv_until(gone, f"$SYS/brokers/disconnected for {polite.client_id}")
    watcher.expect_nothing(f"{will_topic}/polite")
    watcher.disconnect()


def check_persistent(port, protocol):
    topic = f"paho/persist/{RUN}/{protocol}"
    n = 5
    expiry = 300 if protocol == mqtt.MQTTv5 else None
    sub = Peer(port, "persist", protocol, clean=False, session_expiry=expiry)
    present = sub.connect()
    sub.subscribe(topic, 1)
    sub.disconnect()
    pub = Peer(port, "pub", protocol)
    pub.connect()
    for i in range(n):
        pub.publish(topic, f"m{i}".encode(), 1)
    again = Peer(port, "persist", protocol, clean=False, session_expiry=expiry)
    present = again.connect()
    require(present, "the session must be resumed (session present = 1)")
    got = [again.recv(f"queued message {i}").payload for i in range(n)]
    require(got == [f"m{i}".encode() for i in range(n)], f"queued messages: {got}")
    again.expect_nothing(topic)
    pub.disconnect()
    again.disconnect()


CHECKS = {
    "roundtrip": check_roundtrip,
    "retained": check_retained,
    "will": check_will,
    "persistent": check_persistent,
}


def main(argv):
    if len(argv) < 3 or not argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    port = int(argv[1])
    # A last-resort bound on the whole run.
    signal.signal(signal.SIGALRM, lambda *_: (print("FAIL: paho_check.py overall timeout", flush=True), os._exit(1)))
    signal.alarm(120)
    for spec in argv[2:]:
        name, _, proto = spec.partition(":")
        if name not in CHECKS or proto not in PROTOCOLS:
            print(f"unknown check {spec!r}", file=sys.stderr)
            return 2
        try:
            CHECKS[name](port, PROTOCOLS[proto])
        except CheckFailed as e:
            print(f"FAIL {spec}: {e}", flush=True)
            return 1
        print(f"ok {spec}", flush=True)
    return 0


if __name__ == "__main__":
    # os._exit: don't wait for paho's loop threads of failed checks.
    code = main(sys.argv)
    sys.stdout.flush()
    os._exit(code)
