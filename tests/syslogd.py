#!/usr/bin/env python3
"""A tiny syslog sink for tests: syslogd.py SOCKET_PATH OUT_FILE

Binds a Unix datagram socket at SOCKET_PATH (normally /dev/log, only when no
syslog daemon owns it) and appends every datagram it receives to OUT_FILE as
one line, unchanged apart from a trailing newline, e.g.
    <22>Nov 22 11:01:38 smtpd[4242]: session client=127.0.0.1 ...
(<22> = facility mail, severity info). It removes SOCKET_PATH when stopped
with SIGTERM or SIGINT.
"""
import os
import signal
import socket
import sys


def main():
    path, out = sys.argv[1], sys.argv[2]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)

    def stop(signum, frame):
        try:
            os.unlink(path)
        except OSError:
            pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(out, "ab", buffering=0) as f:
        while True:
            data = sock.recv(65536)
            f.write(data.rstrip(b"\n") + b"\n")


if __name__ == "__main__":
    main()
