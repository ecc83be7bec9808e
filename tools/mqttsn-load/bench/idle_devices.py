#!/usr/bin/env python3
"""Sets up sessions that stay in the gateway for the storage benchmark's idle run: N devices
connect (CleanSession=0, keep-alive 1 h) and subscribe to idle/<i> at QoS 1; every second one
then sleeps for an hour. The caller publishes to the sleepers' topics, so they hold messages.
Usage: idle_devices.py GATEWAY_PORT N"""
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    cid = f"idle-{i}".encode()
    s.send(bytes([6 + len(cid), 0x04, 0x00, 0x01, 0x0E, 0x10]) + cid)  # CONNECT, clean=0, 3600 s
    assert s.recv(64)[1] == 0x05, "CONNACK"
    topic = f"idle/{i}".encode()
    s.send(bytes([5 + len(topic), 0x12, 0x20, 0x00, 0x01]) + topic)  # SUBSCRIBE QoS 1
    assert s.recv(64)[1] == 0x13, "SUBACK"
    if i % 2:
        s.send(bytes([4, 0x18, 0x0E, 0x10]))  # DISCONNECT, sleep 3600 s
        assert s.recv(64)[1] == 0x18, "DISCONNECT"
    socks.append(s)
print(f"{n} sessions, {n // 2} asleep")
