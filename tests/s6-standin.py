#!/usr/bin/env python3
"""Stand-ins for s6-networking's s6-ucspitlsd and s6-tlsd-io, for the tests only (neither is
packaged in Debian 12). Installed under both names; argv[0] chooses. They keep the parts of
the real programs' interface that README's lines rely on:

s6-ucspitlsd [-S|-s] [-v N] [-K MS] [-Z|-z] [--] prog...
    The connection on fds 0 and 1. Forks: the parent execs prog with SSLCTLFD, SSLREADFD and
    SSLWRITEFD (and without CERTFILE, KEYFILE, TLS_UID, TLS_GID unless -Z); the child waits
    for "Y" or "y" on the control socket, then execs "s6-tlsd-io", found through PATH as the
    real one finds it. Without it there: exit 111 (the program's STARTTLS then fails).
s6-tlsd-io [-S|-s] [-v N] [-K MS] [-d NOTIF] -- FDR FDW
    The TLS server on fds 0 and 1 with CERTFILE and KEYFILE (the handshake's bound is
    tests/ucspitls.py's, whatever -K says); after the handshake writes
    "VAR=value\\0...\\0\\0" to NOTIF, then relays: what the program writes to FDR goes out
    encrypted, what the client sends comes out clear on FDW. When the program closes FDR,
    -S sends a TLS close_notify first, -s (the default) only half-closes TCP.
"""
import getopt
import os
import select
import socket
import ssl
import sys

from ucspitls import details, drain, flush, handshake  # the other launcher's, beside this file

DEFAULT_PATH = "/usr/bin:/bin"  # skalibs' SKALIBS_DEFAULTPATH, for a process without PATH
IDLE_SECONDS = 60
DRAIN_SECONDS = 10  # for the client to close after we have


def die(prog, verbosity, status, msg):
    if verbosity > 0:
        sys.stderr.write("%s: fatal: %s\n" % (prog, msg))
    sys.exit(status)


def ucspitlsd(argv):
    opts, prog = getopt.getopt(argv, "SsYyZzJjv:K:k:")
    flags = dict(opts)
    verbosity = int(flags.get("-v", "1"))
    if not prog:
        die("s6-ucspitlsd", verbosity, 100, "usage: s6-ucspitlsd [ -S | -s ] [ -v verbosity ] [ -K kimeout ] prog...")
    ctl_app, ctl_eng = socket.socketpair()
    rd_r, rd_w = os.pipe()  # engine -> program (SSLREADFD)
    wr_r, wr_w = os.pipe()  # program -> engine (SSLWRITEFD)
    if os.fork() != 0:
        ctl_eng.close()
        os.close(rd_w)
        os.close(wr_r)
        env = dict(os.environ, SSLCTLFD=str(ctl_app.fileno()), SSLREADFD=str(rd_r), SSLWRITEFD=str(wr_w))
        if "-Z" not in flags:
            for k in ("CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID", "CADIR", "CAFILE"):
                env.pop(k, None)
        for fd in (ctl_app.fileno(), rd_r, wr_w):
            os.set_inheritable(fd, True)
        os.execvpe(prog[0], prog, env)
    ctl_app.close()
    os.close(rd_r)
    os.close(wr_w)
    command = ctl_eng.recv(1)
    if command not in (b"Y", b"y"):
        sys.exit(0)
    args = ["s6-tlsd-io", "-S" if "-S" in flags else "-s", "-v", str(verbosity)]
    if "-K" in flags:
        args += ["-K", flags["-K"]]
    if command == b"Y":
        os.set_inheritable(ctl_eng.fileno(), True)
        args += ["-d", str(ctl_eng.fileno())]
    for fd in (wr_r, rd_w):
        os.set_inheritable(fd, True)
    args += ["--", str(wr_r), str(rd_w)]
    for d in os.environ.get("PATH", DEFAULT_PATH).split(":"):
        try:
            os.execv(os.path.join(d or ".", "s6-tlsd-io"), args)
        except OSError:
            pass
    die("s6-ucspitlsd", verbosity, 111, "unable to exec s6-tlsd-io: No such file or directory")


def to_program(obj, fdw):
    """Clear text the session holds, written to the program; False once the client closed."""
    clear = bytearray()
    client_open = drain(obj, clear)
    if clear:
        os.write(fdw, clear)
    return client_open


def relay(net, obj, incoming, outgoing, fdr, fdw, close_notify):
    client_open = to_program(obj, fdw)
    flush(net, outgoing)
    while True:
        rlist = [fdr] + ([net] if client_open else [])
        r, _, _ = select.select(rlist, [], [], IDLE_SECONDS)
        if not r:
            return
        if net in r:
            data = net.recv(65536)
            incoming.write(data) if data else incoming.write_eof()
            client_open = to_program(obj, fdw) and bool(data)
            flush(net, outgoing)
        if fdr in r:
            data = os.read(fdr, 65536)
            if data:
                obj.write(data)
                flush(net, outgoing)
                continue
            if close_notify:
                try:
                    obj.unwrap()
                except (ssl.SSLError, ssl.SSLWantReadError):
                    pass
                flush(net, outgoing)
            try:
                net.shutdown(socket.SHUT_WR)
            except OSError:  # the client has gone already
                pass
            return


def tlsd_io(argv):
    opts, rest = getopt.getopt(argv, "SsYyJjv:K:k:d:")
    flags = dict(opts)
    verbosity = int(flags.get("-v", "1"))
    if len(rest) != 2:
        die("s6-tlsd-io", verbosity, 100, "usage: s6-tlsd-io [ -S | -s ] [ -d notif ] -- fdr fdw")
    fdr, fdw = int(rest[0]), int(rest[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(os.environ["CERTFILE"], os.environ["KEYFILE"])
    except (KeyError, OSError, ssl.SSLError) as e:
        die("s6-tlsd-io", verbosity, 96, "unable to load the certificate and key: %s" % e)
    if os.getuid() == 0 and os.environ.get("TLS_UID"):
        os.setgid(int(os.environ.get("TLS_GID", "0")))
        os.setuid(int(os.environ["TLS_UID"]))
    net = socket.socket(fileno=os.dup(0))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
    try:
        handshake(net, obj, incoming, outgoing)
    except (OSError, ssl.SSLError, ConnectionError):
        sys.exit(98)
    net.settimeout(None)
    if "-d" in flags:
        notif = int(flags["-d"])
        os.write(notif, details(obj, 0))
        os.close(notif)
    relay(net, obj, incoming, outgoing, fdr, fdw, "-S" in flags)
    os.close(fdw)
    net.settimeout(DRAIN_SECONDS)
    try:
        while net.recv(65536):
            pass
    except OSError:
        pass


if __name__ == "__main__":
    name = os.path.basename(sys.argv[0])
    if name == "s6-ucspitlsd":
        ucspitlsd(sys.argv[1:])
    elif name == "s6-tlsd-io":
        tlsd_io(sys.argv[1:])
    else:
        sys.exit("run as s6-ucspitlsd or s6-tlsd-io (a link of that name)")
