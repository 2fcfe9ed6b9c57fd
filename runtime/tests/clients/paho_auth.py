"""One paho-mqtt client for the authentication and ACL tests: connects, subscribes, publishes
at QoS 1, listens, and prints what the broker answered, one fact per line:

    connack <code>            the CONNACK's reason code (3.1.1: paho's v5 equivalent)
    suback <filter> <code>    one per filter
    puback <topic> <code>     the PUBACK's reason code (3.1.1: 0)
    msg <topic> <payload>     a message received while listening
    closed                    the broker closed the connection

Usage: paho_auth.py PORT VERSION(3|5) CLIENT_ID [--user U --pw P] [--persistent]
                    [--sub FILTER]... [--pub TOPIC=PAYLOAD]... [--listen SECONDS]
"""

import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes


def code_of(rc):
    return rc.value if hasattr(rc, "value") else int(rc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("version", choices=["3", "5"])
    ap.add_argument("client_id")
    ap.add_argument("--user")
    ap.add_argument("--pw")
    ap.add_argument("--persistent", action="store_true")
    ap.add_argument("--sub", action="append", default=[])
    ap.add_argument("--pub", action="append", default=[])
    ap.add_argument("--listen", type=float, default=0.0)
    a = ap.parse_args()

    v5 = a.version == "5"
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=a.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not a.persistent,
    )
    if a.user is not None:
        c.username_pw_set(a.user, a.pw)
    out = []
    lock = threading.Lock()
    connected = threading.Event()
    acked = {}
    subacked = {}

    def say(line):
        with lock:
            out.append(line)
            print(line, flush=True)

    def on_connect(client, userdata, flags, rc, props):
        say(f"connack {code_of(rc)}")
        connected.set()

    def on_subscribe(client, userdata, mid, rcs, props):
        subacked[mid] = [code_of(r) for r in rcs]

    def on_publish(client, userdata, mid, rc, props):
        acked[mid] = code_of(rc)

    def on_message(client, userdata, m):
        say(f"msg {m.topic} {m.payload.decode(errors='replace')}")

    leaving = threading.Event()

    def on_disconnect(client, userdata, flags, rc, props):
        if not leaving.is_set():
            say("closed")
        connected.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_publish = on_publish
    c.on_message = on_message
    c.on_disconnect = on_disconnect
    props = None
    if v5:
        props = Properties(PacketTypes.CONNECT)
        if a.persistent:
            props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", a.port, keepalive=30, clean_start=not a.persistent if v5 else 3,
              properties=props)
    c.loop_start()
    if not connected.wait(15):
        say("timeout connect")
        return 1
    if not c.is_connected():
        c.loop_stop()
        return 0
    for f in a.sub:
        _, mid = c.subscribe(f, qos=1)
        deadline = time.time() + 10
        while mid not in subacked and time.time() < deadline and c.is_connected():
            time.sleep(0.01)
        for code in subacked.get(mid, []):
            say(f"suback {f} {code}")
    for p in a.pub:
        topic, _, payload = p.partition("=")
        info = c.publish(topic, payload, qos=1)
        deadline = time.time() + 10
        while info.mid not in acked and time.time() < deadline and c.is_connected():
            time.sleep(0.01)
        if info.mid in acked:
            say(f"puback {topic} {acked[info.mid]}")
    time.sleep(a.listen)
    leaving.set()
    if c.is_connected():
        c.disconnect()
    c.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
