#!/usr/bin/env python3
"""Opens COUNT TLS connections to 127.0.0.1:PORT, makes one request on each (GET /small on HOST, over HTTP/1.1
with ALPN http/1.1 or over HTTP/2 with ALPN h2), keeps them all open and idle, and prints the growth of the
resident memory of the processes PIDS (comma-separated; their sum) over them, in bytes per connection.

Usage: idle_conns.py PORT HOST h1|h2 COUNT PIDS
"""
import socket
import ssl
import struct
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    total += int(line.split()[1])
    return total


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h1_request(tls, host):
    tls.sendall(f"GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("idle_conns: the connection closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status = head.split(b" ", 2)[1]
    if not status.startswith(b"2"):
        raise SystemExit(f"idle_conns: status {status.decode()} over HTTP/1.1")
    length = [l.split(b":", 1)[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    if not length:
        raise SystemExit("idle_conns: a response without Content-Length")
    while len(body) < int(length[0]):
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("idle_conns: the connection closed before the response body")
        body += chunk


def h2_request(tls, host):
    # HPACK: :method GET, :scheme https, :path / (static table 2, 7, 4), :authority as a literal, then no other
    # header; the path /small as a literal with the indexed name :path (static table 4).
    block = b"\x82\x87" + b"\x04" + bytes([6]) + b"/small" + b"\x01" + bytes([len(host)]) + host.encode()
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 5, 1, block))
    buf = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("idle_conns: the HTTP/2 connection closed before the response")
        buf += chunk
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + length:]
            if kind == 4 and not flags & 1:
                tls.sendall(frame(4, 1, 0))  # SETTINGS ack
            elif kind == 3 and stream == 1:
                raise SystemExit("idle_conns: the HTTP/2 request was reset")
            elif kind == 7:
                raise SystemExit("idle_conns: GOAWAY")
            elif stream == 1 and kind in (0, 1) and flags & 1:
                return


def main():
    port, host, proto, count, pids = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    pids = [int(p) for p in pids.split(",") if p]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2" if proto == "h2" else "http/1.1"])
    # One connection first, so what every proxy allocates once (TLS session state, pools, the upstream
    # connection) is in the baseline.
    conns = []
    for i in range(count + 1):
        tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname=host)
        want = "h2" if proto == "h2" else "http/1.1"
        if tls.selected_alpn_protocol() != want:
            raise SystemExit(f"idle_conns: ALPN chose {tls.selected_alpn_protocol()}, not {want}")
        (h2_request if proto == "h2" else h1_request)(tls, host)
        conns.append(tls)
        if i == 0:
            time.sleep(0.5)
            before = rss_kib(pids)
    time.sleep(1)
    after = rss_kib(pids)
    print(f"{before} {after} {(after - before) * 1024 / count:.0f}")


main()
