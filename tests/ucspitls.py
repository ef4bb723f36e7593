#!/usr/bin/env python3
"""A small UCSPI-TLS launcher (ucspi-tls(2)) for the tests only, on Python's ssl module.

Accepts on 127.0.0.1 and runs the program for each connection with fds 0 and 1 on the
socket and SSLCTLFD (a socketpair end), SSLREADFD and SSLWRITEFD (pipes) in the
environment, as s6-ucspitlsd does. On "Y" or "y" from the control fd it runs the
server side of the TLS handshake on the socket, writes the connection details
("VAR=value\\0...\\0\\0", after "Y" only), and relays clear text between the TLS
session and the two pipes. A failed handshake closes the control fd and the pipes.

usage: ucspitls.py --cert FILE --key FILE --port-file FILE --status-file FILE
                   [--tls-max 1.2|1.3] [--no-env] [--bad-fd] [--pad N] -- program [args...]

The chosen port is written to --port-file; one line "pid=N exit=S tls=T" per session
is appended to --status-file, T saying how the handshake went (none, ok, failed).
"""
import argparse
import os
import select
import socket
import ssl
import subprocess
import sys
import threading

HANDSHAKE_SECONDS = 20
IDLE_SECONDS = 60
APP_BUFFER_MAX = 1 << 20  # clear text waiting for the program before the socket is read again

status_lock = threading.Lock()


def log_status(path, pid, status, tls):
    with status_lock, open(path, "a") as f:
        f.write("pid=%d exit=%d tls=%s\n" % (pid, status, tls))


def flush(sock, outgoing):
    data = outgoing.read()
    if data:
        sock.sendall(data)


def handshake(sock, obj, incoming, outgoing):
    sock.settimeout(HANDSHAKE_SECONDS)
    while True:
        try:
            obj.do_handshake()
            flush(sock, outgoing)
            return
        except ssl.SSLWantReadError:
            flush(sock, outgoing)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("EOF in handshake")
            incoming.write(data)


def details(obj, pad):
    name, _, bits = obj.cipher()
    items = ["SSL_PAD=" + "x" * pad] if pad else []
    items += [
        "SSL_PROTOCOL=" + obj.version(),
        "SSL_CIPHER=" + name,
        "SSL_CIPHER_USEKEYSIZE=%d" % bits,
        "SSL_CIPHER_ALGKEYSIZE=%d" % bits,
        "SSL_TLS_SNI_SERVERNAME",  # a name without "=": unset, as s6-ucspitlsd writes it
    ]
    return b"".join(i.encode() + b"\0" for i in items) + b"\0"


def drain(obj, to_app):
    """Clear text the TLS session holds into to_app; False once the client has closed."""
    while True:
        try:
            chunk = obj.read(65536)
        except ssl.SSLWantReadError:
            return True
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLError):
            return False
        if not chunk:
            return False
        to_app += chunk


def relay(sock, obj, incoming, outgoing, rd_w, wr_r):
    """Clear text both ways until the program closes its write pipe or the client goes."""
    to_app = bytearray()
    app_open = True
    # The client's first data may have come in with its last handshake message.
    sock_open = drain(obj, to_app)
    flush(sock, outgoing)
    sock.settimeout(None)
    os.set_blocking(rd_w, False)
    while app_open:
        rlist = [wr_r]
        if sock_open and len(to_app) < APP_BUFFER_MAX:
            rlist.append(sock)
        wlist = [rd_w] if to_app and rd_w is not None else []
        r, w, _ = select.select(rlist, wlist, [], IDLE_SECONDS)
        if not r and not w:
            break
        if sock in r:
            data = sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            sock_open = drain(obj, to_app)
            flush(sock, outgoing)
        if rd_w is not None and to_app and (rd_w in w or not sock_open):
            try:
                del to_app[: os.write(rd_w, to_app[:65536])]
            except BlockingIOError:
                pass
            except BrokenPipeError:
                to_app.clear()
        if rd_w is not None and not sock_open and not to_app:
            os.close(rd_w)
            rd_w = None
        if wr_r in r:
            data = os.read(wr_r, 65536)
            if data:
                obj.write(data)
                flush(sock, outgoing)
            else:
                app_open = False
                try:
                    obj.unwrap()
                except ssl.SSLError:
                    pass
                flush(sock, outgoing)
    if rd_w is not None:
        os.close(rd_w)


def session(conn, args, ctx):
    ctl_parent, ctl_child = socket.socketpair()
    rd_r, rd_w = os.pipe()
    wr_r, wr_w = os.pipe()
    env = dict(os.environ, TCPREMOTEIP=conn.getpeername()[0], PROTO="TCP")
    if not args.no_env:
        ctl_fd = 99 if args.bad_fd else ctl_child.fileno()
        env.update(SSLCTLFD=str(ctl_fd), SSLREADFD=str(rd_r), SSLWRITEFD=str(wr_w))
    proc = subprocess.Popen(args.program, stdin=conn, stdout=conn, env=env,
                            pass_fds=(ctl_child.fileno(), rd_r, wr_w))
    ctl_child.close()
    os.close(rd_r)
    os.close(wr_w)
    tls = "none"
    try:
        command = ctl_parent.recv(1)
        if command in (b"Y", b"y"):
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
            try:
                handshake(conn, obj, incoming, outgoing)
            except (OSError, ssl.SSLError, ConnectionError):
                tls = "failed"
            if tls != "failed":
                tls = "ok"
                if command == b"Y":
                    ctl_parent.sendall(details(obj, args.pad))
                ctl_parent.close()
                relay(conn, obj, incoming, outgoing, rd_w, wr_r)
                rd_w = None
    except OSError:
        pass
    finally:
        for c in (ctl_parent, conn):
            c.close()
        for fd in (rd_w, wr_r):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        log_status(args.status_file, proc.pid, proc.wait(), tls)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--status-file", required=True)
    p.add_argument("--tls-max", choices=("1.2", "1.3"), default="1.3")
    p.add_argument("--no-env", action="store_true", help="no SSL*FD variables")
    p.add_argument("--bad-fd", action="store_true", help="SSLCTLFD names a closed fd")
    p.add_argument("--pad", type=int, default=0, help="a first variable of this many octets")
    p.add_argument("program", nargs="+")
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[args.tls_max]
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % lsock.getsockname()[1])
    os.rename(tmp, args.port_file)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=session, args=(conn, args, ctx), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
