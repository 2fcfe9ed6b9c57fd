#!/usr/bin/env python3
"""Checks that MQTT messages cross every transport of one broker, with Eclipse Paho 2.x.

Usage: paho_transports.py CAFILE NAME=TRANSPORT:PORT [NAME=TRANSPORT:PORT ...]

TRANSPORT is tcp, tls, ws or wss (WebSocket path /mqtt, subprotocol mqtt). One subscriber per
endpoint subscribes to a shared topic; then each endpoint publishes one QoS 1 message, and every
subscriber must receive every message. Exit 0 on success; "FAIL ..." and exit 1 otherwise.
"""

import os
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 10.0
TOPIC = f"transports/{os.getpid()}"


def client(name, transport, port, cafile, protocol):
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{os.getpid()}",
        protocol=protocol,
        transport="websockets" if transport in ("ws", "wss") else "tcp",
    )
    if transport in ("ws", "wss"):
        c.ws_set_options(path="/mqtt")
    if transport in ("tls", "wss"):
        c.tls_set(ca_certs=cafile, cert_reqs=ssl.CERT_REQUIRED)
    connected = threading.Event()
    c.on_connect = lambda cl, ud, flags, rc, props=None: connected.set()
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not connected.wait(WAIT):
        print(f"FAIL: {name} ({transport}:{port}) did not connect", flush=True)
        sys.exit(1)
    return c


def main():
    cafile = sys.argv[1]
    endpoints = []
    for arg in sys.argv[2:]:
        name, rest = arg.split("=", 1)
        transport, port = rest.split(":")
        endpoints.append((name, transport, int(port)))
    received = {name: set() for name, _, _ in endpoints}
    lock = threading.Lock()
    subs = []
    for i, (name, transport, port) in enumerate(endpoints):
        protocol = mqtt.MQTTv5 if i % 2 == 0 else mqtt.MQTTv311
        c = client(f"sub-{name}", transport, port, cafile, protocol)

        def on_message(cl, ud, msg, name=name):
            with lock:
                received[name].add(msg.payload.decode())

        c.on_message = on_message
        done = threading.Event()
        c.on_subscribe = lambda *a, done=done: done.set()
        c.subscribe(TOPIC, qos=1)
        if not done.wait(WAIT):
            print(f"FAIL: {name} did not get SUBACK", flush=True)
            sys.exit(1)
        subs.append(c)
    for name, transport, port in endpoints:
        p = client(f"pub-{name}", transport, port, cafile, mqtt.MQTTv5)
        info = p.publish(TOPIC, f"from-{name}", qos=1)
        info.wait_for_publish(WAIT)
        p.disconnect()
        p.loop_stop()
    expected = {f"from-{name}" for name, _, _ in endpoints}
    deadline = time.time() + WAIT
    while time.time() < deadline:
        with lock:
            if all(r == expected for r in received.values()):
                break
        time.sleep(0.05)
    for c in subs:
        c.disconnect()
        c.loop_stop()
    for name, got in received.items():
        if got != expected:
            print(f"FAIL: subscriber {name} got {sorted(got)}, expected {sorted(expected)}", flush=True)
            sys.exit(1)
    print("ok", flush=True)


if __name__ == "__main__":
    main()
