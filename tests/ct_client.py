#!/usr/bin/env python3
"""Clients that tests/systemd.bats and the systemd bench run inside the container.

ct_client.py hold SRC N PORT        N connections from SRC (a * in it: 1..N) held open;
                                    prints how many were greeted
ct_client.py burst N PORT           N connects from 127.0.1.x as fast as a loop can, then closed
ct_client.py abort HOST PORT        greeting, EHLO, then gone without QUIT
ct_client.py lmtp PATH RCPT...      one LMTP transaction; prints each reply after DATA
ct_client.py bench HOST PORT N C    N one-message sessions, C at a time: latency and rate
Every wait is bounded; any unexpected reply ends the run with status 1.
"""
import socket
import statistics
import sys
import threading
import time

WAIT = 10.0  # seconds any single reply may take


def reply(f):
    """One SMTP/LMTP reply (all its lines); returns its last line."""
    while True:
        line = f.readline()
        if not line:
            raise EOFError("connection closed")
        if line[3:4] != b"-":
            return line.decode().rstrip()


def expect(f, code):
    r = reply(f)
    if not r.startswith(code):
        raise RuntimeError("expected %s, got %r" % (code, r))
    return r


def hold(src, n, port):
    socks, greeted = [], 0
    for i in range(n):
        s = socket.socket()
        s.settimeout(WAIT)
        s.bind((src.replace("*", str(1 + i)), 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        try:
            if s.makefile("rb").readline().startswith(b"220 "):
                greeted += 1
        except OSError:
            pass
    print(greeted)
    for s in socks:
        try:
            s.sendall(b"QUIT\r\n")
        except OSError:
            pass
        s.close()


def burst(n, port):
    socks, refused = [], 0
    t0 = time.monotonic()
    for i in range(n):
        s = socket.socket()
        s.settimeout(WAIT)
        s.bind(("127.0.1.%d" % (1 + i % 250), 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            refused += 1
        socks.append(s)
    took = time.monotonic() - t0
    for s in socks:
        s.close()
    print("%d connects in %.3f s, %d refused" % (n, took, refused))
    return 1 if refused else 0


def abort(host, port):
    with socket.create_connection((host, port), WAIT) as s:
        f = s.makefile("rb")
        expect(f, "220")
        s.sendall(b"EHLO gone.example\r\n")
        expect(f, "250")


def lmtp(path, rcpts):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    s.connect(path)
    f = s.makefile("rb")
    expect(f, "220")
    s.sendall(b"LHLO mta.example\r\n")
    expect(f, "250")
    s.sendall(b"MAIL FROM:<lmtp@sender.example>\r\n")
    expect(f, "250")
    for r in rcpts:
        s.sendall(b"RCPT TO:<%s>\r\n" % r.encode())
        expect(f, "250")
    s.sendall(b"DATA\r\n")
    expect(f, "354")
    s.sendall(b"Subject: lmtp\r\n\r\nover the unix socket\r\n.\r\n")
    for r in rcpts:
        print(r, reply(f))
    s.sendall(b"QUIT\r\n")
    expect(f, "221")
    s.close()


def session(host, port, n):
    """One whole session; returns seconds from connect() to the greeting."""
    t0 = time.monotonic()
    with socket.create_connection((host, port), WAIT) as s:
        f = s.makefile("rb")
        expect(f, "220")
        greeted = time.monotonic() - t0
        s.sendall(b"EHLO bench.example\r\n")
        expect(f, "250")
        s.sendall(b"MAIL FROM:<bench@sender.example>\r\nRCPT TO:<bench@example.org>\r\nDATA\r\n")
        expect(f, "250")
        expect(f, "250")
        expect(f, "354")
        s.sendall(b"Subject: bench %d\r\n\r\none line\r\n.\r\nQUIT\r\n" % n)
        expect(f, "250")
        expect(f, "221")
    return greeted


def bench(host, port, n, conc):
    lat, lock, errors = [], threading.Lock(), []
    todo = iter(range(n))

    def worker():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                g = session(host, port, i)
            except Exception as e:  # counted, reported, fails the run
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                lat.append(g)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    print("sessions=%d concurrency=%d greeting_median_ms=%.1f sessions_per_s=%.1f errors=%d"
          % (n, conc, 1000 * statistics.median(lat) if lat else -1, len(lat) / took, len(errors)))
    for e in errors[:3]:
        print("error:", e)
    return 1 if errors else 0


def main(a):
    cmd = a[0]
    if cmd == "hold":
        return hold(a[1], int(a[2]), int(a[3]))
    if cmd == "burst":
        return burst(int(a[1]), int(a[2]))
    if cmd == "abort":
        return abort(a[1], int(a[2]))
    if cmd == "lmtp":
        return lmtp(a[1], a[2:])
    if cmd == "bench":
        return bench(a[1], int(a[2]), int(a[3]), int(a[4]))
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)
