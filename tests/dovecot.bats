#!/usr/bin/env bats
# Dovecot as the real consumer of what smtpd delivers: the imap binary in PREAUTH mode (no
# daemon), as user mail. Every message is checked in new/ first (name, S=, exact bytes),
# then fetched through IMAP (size, Subject, body), and Dovecot must log no error: a wrong
# ,S= in a file name shows up there.

load launch

if [ -f "$BATS_TEST_DIRNAME/helpers.bash" ]; then
	load helpers
fi

IMAP_BIN=/usr/lib/dovecot/imap

# ---- local helpers (l_ prefix: independent of helpers.bash) ----

l_no_sanitizer_reports() {
	if grep -E -A30 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T"/*.log 2>/dev/null >&2; then
		return 1
	fi
}

# Dovecot's log must hold no error; print it for the record
l_dovecot_clean() {
	echo "--- Dovecot log:"
	cat "$T/dovecot.log" 2>/dev/null || true
	if grep -E 'Error:|Panic:|Fatal:' "$T/dovecot.log" >&2; then
		echo "Dovecot logged errors" >&2
		return 1
	fi
}

l_write_scripts() {
	# deliver.py HOST PORT SET OUTDIR: sends a set of messages and writes what Dovecot should
	# see to OUTDIR/<mailbox>.json (bytes as hex): the stored text after smtpd's Return-Path:
	# and Received: ("stored"), the body ("text"), the Subject field as IMAP returns it, and
	# the protocol word of Received:.
	cat >"$T/deliver.py" <<'EOF'
import json, smtplib, socket, sys
host, port, which, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
boxes = {}

def expect(box, key, wire, with_word="ESMTP", header=True, search=None):
    """wire: the message as sent, CRLF, not dot-stuffed."""
    stored = wire.replace(b"\r\n", b"\n")
    if header:
        head, sep, text = stored.partition(b"\n\n")
        subject = b"\r\n".join(l for l in head.split(b"\n") if l.lower().startswith(b"subject:"))
        subject = subject + b"\r\n\r\n" if subject else b"\r\n"
    else:
        stored, text, subject = b"\n" + stored, stored, b"\r\n"
    boxes.setdefault(box, []).append({"key": key, "with": with_word, "stored": stored.hex(),
                                      "text": text.hex(), "subject": subject.hex(),
                                      "search": search})

def smtp():
    return smtplib.SMTP(host, port, local_hostname="client.example", timeout=30)

def send(s, wire, rcpts=("b@y.example",), opts=()):
    refused = s.sendmail("a@x.example", list(rcpts), wire, mail_options=list(opts))
    if refused:
        sys.exit("refused: %r" % refused)

if which == "set":
    msgs = []
    m = b"From: a@x.example\r\nTo: b@y.example\r\nSubject: plain one\r\nX-Key: KEY-m1\r\n\r\nHello Dovecot.\r\n"
    msgs.append(("m1", m, {}, dict(search="plain one")))
    m = (b"Subject: dots\r\nX-Key: KEY-m2\r\n\r\n.one\r\n..two\r\n.\r\n...\r\n"
         b"a line . with a dot\r\nend\r\n")
    msgs.append(("m2", m, {}, dict(search="dots")))
    m = "Subject: eight bit\r\nX-Key: KEY-m3\r\n\r\nh\u00e9llo w\u00f6rld \u2603\r\n".encode()
    msgs.append(("m3", m, {"opts": ["BODY=8BITMIME"]}, dict(search="eight bit")))
    m = b"just text, no header here KEY-m4\r\nsecond line: still body\r\n"
    msgs.append(("m4", m, {}, dict(header=False)))
    lines = [b"Subject: large one", b"X-Key: KEY-m5", b""]
    for i in range(4000):
        lines.append((b"." if i % 7 == 0 else b"") + (b"line %05d " % i) + b"x" * 60)
    lines.append(b"y" * 990)
    m = b"\r\n".join(lines) + b"\r\n"
    msgs.append(("m5", m, {}, dict(search="large one")))
    m = b"Subject: header only\r\nX-Key: KEY-m6\r\n"
    msgs.append(("m6", m, {}, dict(search="header only")))
    m = b"Subject: empty body\r\nX-Key: KEY-m9\r\n\r\n"
    msgs.append(("m9", m, {}, dict(search="empty body")))
    m = b"Subject: two recipients\r\nX-Key: KEY-m8\r\n\r\none file for both\r\n"
    msgs.append(("m8", m, {"rcpts": ["b@y.example", "c@y.example"]}, dict(search="two recipients")))
    m = "Subject: gr\u00fc\u00dfe\r\nX-Key: KEY-m10\r\n\r\nSMTPUTF8 body\r\n".encode()
    msgs.append(("m10", m, {"opts": ["SMTPUTF8", "BODY=8BITMIME"]}, dict(with_word="UTF8SMTP")))
    with smtp() as s:
        for key, wire, kw, ex in msgs:
            send(s, wire, **kw)
            expect("Maildir", key, wire, **ex)
    # BDAT (CHUNKING), chunk boundary between CR and LF; no dot-stuffing in BDAT
    c = socket.create_connection((host, port), timeout=30)
    f = c.makefile("rb")
    def reply(want):
        while True:
            line = f.readline()
            if not line.startswith(want):
                sys.exit("BDAT session: expected %r, got %r" % (want, line))
            if line[3:4] != b"-":
                return
    reply(b"220")
    for cmd, want in ((b"EHLO client.example", b"250"), (b"MAIL FROM:<a@x.example>", b"250"),
                      (b"RCPT TO:<b@y.example>", b"250")):
        c.sendall(cmd + b"\r\n")
        reply(want)
    c1 = b"Subject: bdat chunks\r\nX-Key: KEY-m7\r"
    c2 = b"\n\r\n.not stuffed\r\n..two\r\nlast line\r\n"
    c.sendall(b"BDAT %d\r\n" % len(c1) + c1)
    reply(b"250")
    c.sendall(b"BDAT %d LAST\r\n" % len(c2) + c2)
    reply(b"250")
    c.sendall(b"QUIT\r\n")
    reply(b"221")
    expect("Maildir", "m7", c1 + c2, search="bdat chunks")
elif which == "links":
    m1 = b"Subject: for alice and bob\r\nX-Key: KEY-l1\r\n\r\nshared\r\n"
    m2 = b"Subject: for bob alone\r\nX-Key: KEY-l2\r\n\r\nbob only\r\n"
    with smtp() as s:
        # Bob+tag@Y.EXAMPLE is bob again: one file in bob's Maildir
        send(s, m1, rcpts=["alice@y.example", "bob@y.example", "Bob+tag@Y.EXAMPLE"])
        send(s, m2, rcpts=["bob@y.example"])
    expect("alice", "l1", m1, search="for alice and bob")
    expect("bob", "l1", m1, search="for alice and bob")
    expect("bob", "l2", m2, search="for bob alone")
for box, msgs in boxes.items():
    with open("%s/%s.json" % (outdir, box), "w") as out:
        json.dump(msgs, out)
EOF
	# check.py MAILDIR EXPECTED.json WORKDIR: first new/ (before any reader touches it):
	# the names, S= against the real size, smtpd's two trace fields and the exact bytes; then
	# the Maildir goes to user mail and Dovecot's imap (PREAUTH) fetches every message:
	# RFC822.SIZE, the whole message, the Subject field, the body, and SEARCH SUBJECT.
	cat >"$T/check.py" <<'EOF'
import email.utils, imaplib, json, os, pwd, re, sys, time
maildir, expected_file, work = sys.argv[1], sys.argv[2], sys.argv[3]
expected = json.load(open(expected_file))
for e in expected:
    for k in ("stored", "text", "subject"):
        e[k] = bytes.fromhex(e[k])
problems = []
def problem(msg):
    problems.append(msg)
    print("PROBLEM: " + msg)

# ---- new/ before Dovecot
names = sorted(os.listdir(maildir + "/new"))
if os.listdir(maildir + "/tmp"):
    problem("files left in tmp/: %r" % os.listdir(maildir + "/tmp"))
if os.listdir(maildir + "/cur"):
    problem("files in cur/ before any reader: %r" % os.listdir(maildir + "/cur"))
if len(names) != len(expected):
    problem("%d files in new/, expected %d" % (len(names), len(expected)))
name_re = re.compile(r"^(\d+\.M\d+P\d+Q\d+)\.([^/]+),S=(\d+)$")
trace_re = re.compile(rb"^Return-Path: <a@x\.example>\nReceived: from client\.example \(\[127\.0\.0\.1\]\)\n"
                      rb"\tby test\.example \(smtpd\) with ([A-Z0-9]+) id ([^;\n]+);\n\t([^\n]+)\n")
by_key, files = {}, {}
for name in names:
    m = name_re.match(name)
    data = open(maildir + "/new/" + name, "rb").read()
    if not m:
        problem("bad file name %s" % name)
        continue
    if int(m.group(3)) != len(data):
        problem("%s: S=%s but %d bytes" % (name, m.group(3), len(data)))
    t = trace_re.match(data)
    if not t:
        problem("%s: trace fields not as expected: %r" % (name, data[:300]))
        continue
    if t.group(2).decode() != m.group(1):
        problem("%s: Received: id %s is not the file's id" % (name, t.group(2).decode()))
    try:
        when = email.utils.parsedate_to_datetime(t.group(3).decode()).timestamp()
        if abs(when - time.time()) > 600:
            problem("%s: Received: date %s is off" % (name, t.group(3).decode()))
    except Exception as ex:
        problem("%s: Received: date %r does not parse: %r" % (name, t.group(3), ex))
    rest = data[t.end():]
    k = re.search(rb"KEY-([a-z0-9]+)", rest)
    if not k:
        problem("%s: no KEY in message" % name)
        continue
    key = k.group(1).decode()
    if key in by_key:
        problem("message %s delivered twice: %s and %s" % (key, by_key[key], name))
    by_key[key] = name
    files[key] = data
    e = [e for e in expected if e["key"] == key]
    if not e:
        problem("%s: unexpected message %s" % (name, key))
        continue
    e = e[0]
    if t.group(1).decode() != e["with"]:
        problem("%s (%s): with %s, expected %s" % (name, key, t.group(1).decode(), e["with"]))
    if rest != e["stored"]:
        problem("%s (%s): stored text differs:\n got %r\nwant %r" % (name, key, rest[:400], e["stored"][:400]))
for e in expected:
    if e["key"] not in by_key:
        problem("message %s not delivered" % e["key"])

# ---- Dovecot
mail = pwd.getpwnam("mail")
for root, dirs, fs in os.walk(maildir):
    for n in dirs + fs:
        os.chown(os.path.join(root, n), mail.pw_uid, mail.pw_gid)
os.chown(maildir, mail.pw_uid, mail.pw_gid)
conf = work + "/imap.conf"
with open(conf, "w") as c:
    c.write("mail_location = maildir:%s:INDEX=MEMORY\nstats_writer_socket_path =\n"
            "log_path = /dev/stderr\n" % maildir)
cmd = ("setpriv --reuid=mail --regid=mail --clear-groups env -i USER=tester HOME=%s/home "
       "/usr/lib/dovecot/imap -c %s 2>>%s/dovecot.log" % (work, conf, work))
M = imaplib.IMAP4_stream(cmd)
if M.state != "AUTH":
    problem("imap did not start in PREAUTH state: %s" % M.state)
typ, d = M.select("INBOX", readonly=True)
if typ != "OK" or int(d[0]) != len(expected):
    problem("EXAMINE INBOX: %s %r, expected %d messages" % (typ, d, len(expected)))
typ, d = M.uid("SEARCH", None, "ALL")
uids = d[0].split()
def fetch(uid, item):
    typ, d = M.uid("FETCH", uid, "(%s)" % item)
    if typ != "OK" or not d or d[0] is None:
        problem("UID FETCH %s %s: %s %r" % (uid.decode(), item, typ, d))
        return None, b""
    return (d[0][0], d[0][1]) if isinstance(d[0], tuple) else (d[0], b"")
seen = set()
for uid in uids:
    head, whole = fetch(uid, "BODY.PEEK[]")
    k = re.search(rb"KEY-([a-z0-9]+)", whole or b"")
    if not k:
        problem("uid %s: no KEY in %r" % (uid, whole[:200]))
        continue
    key = k.group(1).decode()
    seen.add(key)
    e = [e for e in expected if e["key"] == key][0]
    if whole != files.get(key, b"").replace(b"\n", b"\r\n"):
        problem("%s: IMAP BODY[] is not the stored file with CRLF" % key)
    head, _ = fetch(uid, "RFC822.SIZE")
    size = re.search(rb"RFC822\.SIZE (\d+)", head or b"")
    if not size or int(size.group(1)) != len(whole):
        problem("%s: RFC822.SIZE %r, BODY[] has %d octets" % (key, head, len(whole)))
    _, subj = fetch(uid, "BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
    if subj != e["subject"]:
        problem("%s: Subject field %r, expected %r" % (key, subj, e["subject"]))
    _, text = fetch(uid, "BODY.PEEK[TEXT]")
    if text != e["text"].replace(b"\n", b"\r\n"):
        problem("%s: body %r, expected %r" % (key, text[:200], e["text"][:200]))
    if e["search"]:
        typ, d = M.uid("SEARCH", None, "SUBJECT", '"%s"' % e["search"])
        if d[0].split() != [uid]:
            problem("%s: SEARCH SUBJECT %r found %r, expected [%r]" % (key, e["search"], d, uid))
    print("ok %s: uid %s, %d octets" % (key, uid.decode(), len(whole)))
if seen != {e["key"] for e in expected}:
    problem("Dovecot saw %s, expected %s" % (sorted(seen), sorted(e["key"] for e in expected)))
M.logout()
sys.exit(1 if problems else 0)
EOF
}

setup() {
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	case $SMTPD in /*) ;; *) SMTPD=$PWD/$SMTPD ;; esac
	if [ ! -x "$SMTPD" ]; then
		echo "no smtpd binary at $SMTPD: build it first" >&2
		return 1
	fi
	[ -x "$IMAP_BIN" ] || skip "Dovecot's imap ($IMAP_BIN, package dovecot-imapd) not installed"
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	id mail >/dev/null 2>&1 || skip "no user mail (Dovecot refuses to read mail as root)"
	[ "$(id -u)" = 0 ] || skip "needs root (to run Dovecot as user mail)"
	PY=python3
	if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; fi
	T=$(mktemp -d)
	chmod 755 "$T" # user mail walks into it
	mkdir "$T/home" "$T/exp"
	chown mail:mail "$T/home"
	PORT=$(l_free_port)
	l_write_scripts
}

teardown() {
	local rc=0
	[ -n "${T:-}" ] || return 0
	if [ -f "$T/launcher.pid" ]; then l_stop_pid "$(cat "$T/launcher.pid")"; fi
	# reports written after the test's own check (e.g. by a session that ended late)
	l_no_sanitizer_reports || rc=1
	rm -rf "$T"
	return $rc
}

l_tcpserver_start() { # smtpd-args...
	tcpserver -v -R -H -l0 127.0.0.1 "$PORT" "$SMTPD" "$@" 3>&- 2>"$T/launcher.log" &
	echo $! >"$T/launcher.pid"
	l_wait_listen "$PORT"
}

@test "dovecot: reads every delivered message; name, S=, size, Subject and body match, no error" {
	l_tcpserver_start -h test.example -m "$T/Maildir"
	timeout 60 "$PY" "$T/deliver.py" 127.0.0.1 "$PORT" set "$T/exp"
	timeout 60 "$PY" "$T/check.py" "$T/Maildir" "$T/exp/Maildir.json" "$T"
	l_dovecot_clean
	l_no_sanitizer_reports
}

@test "dovecot: %u recipients share one file by hard link, and Dovecot reads each Maildir" {
	for u in alice bob; do mkdir -p "$T/mail/$u/Maildir/cur" "$T/mail/$u/Maildir/new" "$T/mail/$u/Maildir/tmp"; done
	l_tcpserver_start -h test.example -m "$T/mail/%u/Maildir"
	timeout 60 "$PY" "$T/deliver.py" 127.0.0.1 "$PORT" links "$T/exp"
	l_eq "$(find "$T/mail/alice/Maildir/new" -type f | wc -l)" 1 "messages for alice"
	l_eq "$(find "$T/mail/bob/Maildir/new" -type f | wc -l)" 2 "messages for bob (bob and Bob+tag share one file)"
	a=$(find "$T/mail/alice/Maildir/new" -type f)
	b=$(grep -l '^X-Key: KEY-l1$' "$T/mail/bob/Maildir/new/"*)
	l_eq "$(basename "$a")" "$(basename "$b")" "file name of the shared message"
	l_eq "$(stat -c %i "$a")" "$(stat -c %i "$b")" "inode of the shared message (hard link)"
	l_eq "$(stat -c %h "$a")" 2 "link count of the shared message"
	timeout 60 "$PY" "$T/check.py" "$T/mail/alice/Maildir" "$T/exp/alice.json" "$T"
	timeout 60 "$PY" "$T/check.py" "$T/mail/bob/Maildir" "$T/exp/bob.json" "$T"
	l_dovecot_clean
	l_no_sanitizer_reports
}

@test "dovecot: control: a wrong ,S= in a file name makes Dovecot log an error" {
	# proves that "no Error: in Dovecot's log" above can fail
	l_tcpserver_start -h test.example -m "$T/Maildir"
	timeout 30 "$PY" -c 'import smtplib,sys; smtplib.SMTP("127.0.0.1",int(sys.argv[1]),local_hostname="client.example").sendmail("a@x.example",["b@y.example"],b"Subject: t\r\n\r\nbody\r\n")' "$PORT"
	f=$(find "$T/Maildir/new" -type f)
	[ -n "$f" ]
	mv "$f" "${f%,S=*},S=999"
	chown -R mail:mail "$T/Maildir"
	printf 'mail_location = maildir:%s:INDEX=MEMORY\nstats_writer_socket_path =\nlog_path = /dev/stderr\n' \
		"$T/Maildir" >"$T/imap.conf"
	printf 'a EXAMINE INBOX\r\nb UID FETCH 1:* (RFC822.SIZE BODY.PEEK[])\r\nc LOGOUT\r\n' |
		timeout 30 setpriv --reuid=mail --regid=mail --clear-groups env -i USER=tester HOME="$T/home" \
			"$IMAP_BIN" -c "$T/imap.conf" >"$T/imap.out" 2>"$T/dovecot.log" || true
	cat "$T/imap.out" "$T/dovecot.log"
	grep -q 'Error:' "$T/dovecot.log"
}
