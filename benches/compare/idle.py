#!/usr/bin/env python3
"""Helpers for benches/compare/run.sh (stdlib only).

  idle.py sink --port-file F --count-file C
      plaintext upstream for the idle-connection test: one thread, selectors; accepts
      and reads/discards; writes the number of open connections to C twice a second.
  idle.py hold --port P --ca CA --cert CRT --key KEY -n N --ready-file F
      opens N mTLS connections one after another (TLS 1.3, full handshakes), keeps them
      open, writes F when all are up, then sleeps until killed.
  idle.py bare --port P -n N --ready-file F [--hello-bytes B]
      opens N plain TCP connections that send nothing (no TLS), keeps them open; with
      --hello-bytes, each sends the first B bytes of a TLS record that announces a
      512-byte ClientHello and then nothing more (a handshake paused mid-record).
  idle.py probe --port P --ca CA [--cert CRT --key KEY]
      one connection: prints "accepted <version> <cipher>" if the server keeps it open
      after the handshake and a byte of data, "refused <why>" if it is torn down.
"""

import argparse
import os
import selectors
import signal
import socket
import ssl
import sys
import time


def sink(a):
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    with open(a.port_file + ".tmp", "w") as f:
        f.write(f"{ls.getsockname()[1]}\n")
    os.rename(a.port_file + ".tmp", a.port_file)
    open_conns = 0
    last = 0.0
    while True:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            if s is ls:
                while True:
                    try:
                        c, _ = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # EMFILE and the like: try again later
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                    open_conns += 1
            else:
                try:
                    d = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    d = b""
                if not d:
                    sel.unregister(s)
                    s.close()
                    open_conns -= 1
        now = time.monotonic()
        if now - last >= 0.5:
            with open(a.count_file + ".tmp", "w") as f:
                f.write(f"{open_conns}\n")
            os.rename(a.count_file + ".tmp", a.count_file)
            last = now


def context(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(a.ca)
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    return ctx


def hold(a):
    ctx = context(a)
    conns = []
    t0 = time.monotonic()
    for i in range(a.n):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=30)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        conns.append(t)
        if (i + 1) % 1000 == 0:
            print(f"hold: {i + 1} connections, {time.monotonic() - t0:.1f}s", file=sys.stderr)
    with open(a.ready_file + ".tmp", "w") as f:
        f.write(f"{len(conns)} {time.monotonic() - t0:.3f}\n")
    os.rename(a.ready_file + ".tmp", a.ready_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def bare(a):
    conns = []
    t0 = time.monotonic()
    # A handshake record header (TLS 1.0 record version, as clients send), 512 bytes
    # announced, then the start of a ClientHello: type 1, length 508, version 3.3.
    hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03])
    hello += os.urandom(512)
    first = hello[: a.hello_bytes]
    for _ in range(a.n):
        c = socket.create_connection(("127.0.0.1", a.port), timeout=30)
        if first:
            c.sendall(first)
        conns.append(c)
    with open(a.ready_file + ".tmp", "w") as f:
        f.write(f"{len(conns)} {time.monotonic() - t0:.3f}\n")
    os.rename(a.ready_file + ".tmp", a.ready_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def probe(a):
    ctx = context(a)
    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname="localhost")
        version, cipher = t.version(), t.cipher()[0]
        # TLS 1.3: the server checks the client's certificate after the client has
        # finished; a refusal shows up as an alert or a close on the next read.
        t.settimeout(1.5)
        t.sendall(b"x")
        try:
            d = t.recv(1)
            print("refused closed" if not d else f"accepted {version} {cipher} (data)")
        except (socket.timeout, TimeoutError):
            print(f"accepted {version} {cipher}")
    except ssl.SSLError as e:
        print(f"refused {e.reason or e}".replace(" ", "_").replace("refused_", "refused ", 1))
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
        print(f"refused {type(e).__name__}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--port-file", required=True)
    s.add_argument("--count-file", required=True)
    for name in ("hold", "probe"):
        h = sub.add_parser(name)
        h.add_argument("--port", type=int, required=True)
        h.add_argument("--ca", required=True)
        h.add_argument("--cert")
        h.add_argument("--key")
        if name == "hold":
            h.add_argument("-n", type=int, required=True)
            h.add_argument("--ready-file", required=True)
    b = sub.add_parser("bare")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("-n", type=int, required=True)
    b.add_argument("--ready-file", required=True)
    b.add_argument("--hello-bytes", type=int, default=0)
    a = p.parse_args()
    {"sink": sink, "hold": hold, "probe": probe, "bare": bare}[a.cmd](a)


if __name__ == "__main__":
    main()
