#!/usr/bin/env bats
# STARTTLS through a UCSPI-TLS launcher (SSLCTLFD, SSLREADFD, SSLWRITEFD): tests/ucspitls.py
# plays the launcher with Python's ssl module and a certificate made here by openssl req.
# Clients: openssl s_client -starttls smtp, swaks --tls, smtplib's starttls(), and raw
# sockets for what no client does on purpose (pipelined injection, garbage for a ClientHello).

load launch

PY=${PY:-python3}

setup_file() {
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=mx.test.example \
		-keyout "$BATS_FILE_TMPDIR/key.pem" -out "$BATS_FILE_TMPDIR/cert.pem" 2>/dev/null
}

setup() {
	T=$(mktemp -d)
	export T
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	[ -x "$SMTPD" ] || { echo "no smtpd binary at $SMTPD" >&2; return 1; }
	mkdir -p "$T/Maildir/cur" "$T/Maildir/new" "$T/Maildir/tmp"
	LPID=
}

teardown() {
	l_stop_pid "$LPID"
	if grep -E -A20 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T/launcher.log" >&2; then
		rm -rf "$T"
		return 1
	fi
	rm -rf "$T"
}

# t_launch [launcher options] -- [smtpd options]: the launcher on a free port, in $PORT
t_launch() {
	local lopts=() i
	while [ "$1" != -- ]; do lopts+=("$1"); shift; done
	shift
	"$PY" "$BATS_TEST_DIRNAME/ucspitls.py" --cert "$BATS_FILE_TMPDIR/cert.pem" \
		--key "$BATS_FILE_TMPDIR/key.pem" --port-file "$T/port" --status-file "$T/status" \
		"${lopts[@]}" -- "$SMTPD" -h mx.test.example -m "$T/Maildir" "$@" \
		>"$T/launcher.log" 2>&1 &
	LPID=$!
	for i in $(seq 500); do
		[ -s "$T/port" ] && break
		sleep 0.02
	done
	PORT=$(cat "$T/port") || return 1
	export PORT
}

# the last session's line in the status file, once smtpd has exited, must be
# "pid=N exit=S tls=T" with $1 = "exit=S tls=T"; N is left in SPID
t_status() {
	local n line
	n=$(l_wait_count "$T/status" '^pid=' 1)
	l_eq "$n" 1 "sessions ended"
	line=$(tail -n 1 "$T/status")
	SPID=${line%% *}
	SPID=${SPID#pid=}
	l_eq "${line#pid=$SPID }" "$1" "session status"
}

# the one message in new/; its name in $F
t_one() {
	l_eq "$(l_count "$T/Maildir")" "${1:-1}" "messages in new/"
	F=$(find "$T/Maildir/new" -type f | head -n 1)
	l_check_name "$F"
}

# line 3 of the message: Received:'s comment from the TLS details
t_received_tls() {
	local want=$1 with=$2
	sed -n 3p "$F" | grep -qP "^\\t\\(using $want with cipher [A-Z0-9_-]+ \\([0-9]+/[0-9]+ bits\\)\\)\$" ||
		{ echo "bad TLS comment (want $want)" >&2; head -5 "$F" >&2; return 1; }
	sed -n 4p "$F" | grep -qP "^\\tby mx\\.test\\.example \\(smtpd\\) with $with id " ||
		{ echo "bad 'by' line (want $with)" >&2; head -5 "$F" >&2; return 1; }
}

# Python with a small raw client: R = Raw(); R.send(b"..."); R.reply() -> the lines of one
# reply; R.tls() wraps the socket; R.rest() -> all that comes until EOF
t_py() {
	"$PY" -c '
import os, socket, ssl, smtplib, sys
PORT = int(os.environ["PORT"])
def client_ctx(version=None):
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    if version:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
        c.minimum_version = c.maximum_version = v
    return c
class Raw:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        self.buf = b""
    def send(self, b):
        self.s.sendall(b)
    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(4096)
            if not d:
                raise EOFError(self.buf)
            self.buf += d
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l.decode()
    def reply(self):
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines
    def tls(self, version=None):
        assert self.buf == b"", ("clear text after 220", self.buf)
        self.s = client_ctx(version).wrap_socket(self.s)
    def rest(self):
        while True:
            try:
                d = self.s.recv(4096)
            except (ssl.SSLError, ConnectionResetError):
                d = b""
            if not d:
                return self.buf
            self.buf += d
def expect(got, want):
    if got != want:
        sys.exit("expected %r, got %r" % (want, got))
'"$1" "${@:2}"
}

# smtplib: EHLO, STARTTLS, then MAIL, RCPT (each of $3), DATA with the message in file $2
t_smtplib() {
	local version=$1 msg=$2
	shift 2
	t_py '
s = smtplib.SMTP("127.0.0.1", PORT, timeout=30)
s.ehlo("client.example")
assert s.has_extn("starttls"), "STARTTLS not offered"
s.starttls(context=client_ctx(sys.argv[1]))
s.ehlo("client.example")
assert not s.has_extn("starttls"), "STARTTLS offered under TLS"
refused = s.sendmail("a@x.example", sys.argv[3:], open(sys.argv[2], "rb").read())
assert refused == {}, refused
s.quit()
' "$version" "$msg" "$@"
}

# the stored message after our header fields (Return-Path, Received with its comment)
t_body() { tail -n +6 "$F"; }

t_s_client_delivers() {
	t_launch -- -t 10
	printf 'EHLO client.example\nMAIL FROM:<a@x.example>\nRCPT TO:<b@y.example>\nDATA\nSubject: s\n\nvia s_client\n.\nQUIT\n' |
		timeout 20 openssl s_client -connect "127.0.0.1:$PORT" -starttls smtp -name client.example \
			-quiet -crlf -ign_eof "-tls1_${1#1.}" >"$T/client.out" 2>"$T/client.err"
	grep -q '^250 2.0.0 [0-9.MPQ]* delivered' "$T/client.out" || { cat "$T/client.out" "$T/client.err" >&2; return 1; }
	grep -q '^221 2.0.0 mx.test.example closing' "$T/client.out"
	t_one
	t_received_tls "TLSv1.${1#1.}" ESMTPS
	l_eq "$(t_body)" "$(printf 'Subject: s\n\nvia s_client')" "body"
	t_status "exit=0 tls=ok"
}

@test "openssl s_client -starttls smtp delivers over TLS 1.2" {
	t_s_client_delivers 1.2
}

@test "openssl s_client -starttls smtp delivers over TLS 1.3" {
	t_s_client_delivers 1.3
}

t_swaks_delivers() {
	t_launch --
	timeout 30 swaks --server 127.0.0.1 --port "$PORT" --helo client.example --from a@x.example \
		--to b@y.example --tls --tls-protocol "tlsv${1/./_}" --body 'via swaks' >"$T/swaks.out" 2>&1 ||
		{ cat "$T/swaks.out" >&2; return 1; }
	grep -q '^<-  220 2.0.0 Ready to start TLS' "$T/swaks.out" || { cat "$T/swaks.out" >&2; return 1; }
	grep -q "^=== TLS started with cipher TLSv1.${1#1.}" "$T/swaks.out" || { cat "$T/swaks.out" >&2; return 1; }
	t_one
	t_received_tls "TLSv1.${1#1.}" ESMTPS
	t_status "exit=0 tls=ok"
}

@test "swaks --tls delivers over TLS 1.2" {
	t_swaks_delivers 1.2
}

@test "swaks --tls delivers over TLS 1.3" {
	t_swaks_delivers 1.3
}

@test "smtplib starttls() delivers over TLS 1.2 and 1.3, to two recipients" {
	t_launch --
	printf 'Subject: two\r\n\r\nto both\r\n' >"$T/msg"
	t_smtplib 1.2 "$T/msg" b@y.example c@y.example
	t_smtplib 1.3 "$T/msg" b@y.example c@y.example
	# catch-all: each recipient of each message is one link of the same file
	l_eq "$(l_count "$T/Maildir")" 2 "messages in new/"
	for F in "$T"/Maildir/new/*; do
		l_check_name "$F"
		l_eq "$(t_body)" "$(printf 'Subject: two\n\nto both')" "body"
	done
	n=$(l_wait_count "$T/status" '^pid=[0-9]+ exit=0 tls=ok$' 2)
	l_eq "$n" 2 "sessions ended well"
	n=$(grep -cE '^smtpd\[[0-9]+\]: delivered .* to=<b@y.example> .* to=<c@y.example> ' "$T/launcher.log")
	l_eq "$n" 2 "delivery lines naming both recipients"
}

@test "a 5 MiB message over TLS is stored byte-exact" {
	t_launch --
	"$PY" -c '
import random, sys
r = random.Random(5)
lines = []
size = 0
while size < 5 * 1024 * 1024:
    l = "".join(r.choice("abcdefghij .,:") for _ in range(r.randint(0, 200)))
    if r.random() < 0.05:
        l = "." + l
    lines.append(l)
    size += len(l) + 2
sys.stdout.write("Subject: big\r\n\r\n" + "\r\n".join(lines) + "\r\n")
' >"$T/msg"
	t_smtplib 1.3 "$T/msg" b@y.example
	t_one
	tr -d '\r' <"$T/msg" >"$T/expected"
	t_body >"$T/got"
	cmp "$T/expected" "$T/got"
	[ "$(stat -c %s "$T/msg")" -gt 5242880 ]
}

@test "Received: with ESMTPS and Postfix's comment; the session log line has tls= fields" {
	t_launch --
	printf 'Subject: r\r\n\r\nr\r\n' >"$T/msg"
	t_smtplib 1.3 "$T/msg" b@y.example
	t_one
	sed -n 2p "$F" | grep -qx 'Received: from client.example (\[127.0.0.1\])'
	sed -n 3p "$F" | grep -qP '^\t\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+ \(\d+/\d+ bits\)\)$'
	sed -n 4p "$F" | grep -qP "^\\tby mx\\.test\\.example \\(smtpd\\) with ESMTPS id $ID;\$"
	t_status "exit=0 tls=ok"
	grep -qE "^smtpd\\[$PID\\]: session client=127[.]0[.]0[.]1 helo=client[.]example messages=1 recipients=1 bytes=$SIZE end=quit seconds=[0-9]+[.][0-9]{3} tls=TLSv1[.]3 tls_cipher=TLS_[A-Z0-9_]+\$" "$T/launcher.log"
}

@test "SMTPUTF8 over TLS: Received: says UTF8SMTPS" {
	t_launch --
	t_py '
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\n"); r.reply()
r.send(b"STARTTLS\r\n"); expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
r.tls()
r.send(b"EHLO client.example\r\n"); r.reply()
r.send("MAIL FROM:<ü@x.example> SMTPUTF8\r\nRCPT TO:<b@y.example>\r\nDATA\r\n".encode())
expect([r.reply()[0] for _ in range(3)], ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])
r.send(b"Subject: u\r\n\r\nu\r\n.\r\nQUIT\r\n")
assert r.reply()[0].endswith(" delivered")
'
	t_one
	sed -n 4p "$F" | grep -qP '^\tby mx\.test\.example \(smtpd\) with UTF8SMTPS id '
}

@test "after HELO over TLS, Received: says SMTP, with the TLS comment" {
	t_launch --
	t_py '
r = Raw(); r.reply()
r.send(b"HELO client.example\r\n"); r.reply()
r.send(b"STARTTLS\r\n"); expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
r.tls("1.2")
r.send(b"HELO client.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
expect([r.reply()[0] for _ in range(4)], ["250 mx.test.example", "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])
r.send(b"Subject: h\r\n\r\nh\r\n.\r\nQUIT\r\n")
assert r.reply()[0].endswith(" delivered")
'
	t_one
	t_received_tls TLSv1.2 SMTP
}

@test "details past 16 KiB from the launcher end the session, nothing answered, exit 1" {
	t_launch --pad 16400 --
	t_py '
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\nSTARTTLS\r\n"); r.reply()
expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
r.tls()
r.send(b"EHLO client.example\r\n")
expect(r.rest(), b"")
'
	t_status "exit=1 tls=ok"
	grep -qE "^smtpd\\[$SPID\\]: session .* end=tls-failed " "$T/launcher.log"
}

@test "injection: what is pipelined after STARTTLS is never answered, inside or outside TLS" {
	t_launch --
	t_py '
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\n"); r.reply()
r.send(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")
expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
r.tls()   # fails when anything followed the 220 in clear text
r.send(b"NOOP\r\n")
expect(r.reply(), ["250 2.0.0 Ok"])
r.send(b"QUIT\r\n")
expect(r.reply(), ["221 2.0.0 mx.test.example closing"])
rest = r.rest()
expect(rest, b"")
'
	t_status "exit=0 tls=ok"
	! grep -q '^smtpd.* bad\|^smtpd.*from=<x@y>' "$T/launcher.log"
}

@test "after TLS: EHLO again without STARTTLS; MAIL before it 503; a second STARTTLS 503 5.5.1" {
	t_launch --
	t_py '
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\n")
assert "250-STARTTLS" in r.reply(), "STARTTLS not offered"
r.send(b"MAIL FROM:<a@x.example>\r\n"); expect(r.reply(), ["250 2.1.0 Ok"])
r.send(b"STARTTLS\r\n"); expect(r.reply(), ["503 5.5.1 Bad sequence of commands"])
r.send(b"RSET\r\nSTARTTLS\r\n"); r.reply(); expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
r.tls()
r.send(b"MAIL FROM:<a@x.example>\r\n"); expect(r.reply(), ["503 5.5.1 Send HELO/EHLO first"])
r.send(b"EHLO client.example\r\n")
ehlo = r.reply()
expect(ehlo[0], "250-mx.test.example")
assert "250-STARTTLS" not in ehlo and "250 STARTTLS" not in ehlo, ehlo
expect(ehlo[-1], "250 HELP")
r.send(b"STARTTLS\r\n"); expect(r.reply(), ["503 5.5.1 TLS already active"])
r.send(b"QUIT\r\n"); expect(r.reply(), ["221 2.0.0 mx.test.example closing"])
'
	t_status "exit=0 tls=ok"
	l_eq "$(l_count "$T/Maildir")" 0 "messages"
}

@test "STARTTLS with an argument is 501 5.5.4, before EHLO 503 5.5.1" {
	t_launch --
	t_py '
r = Raw(); r.reply()
r.send(b"STARTTLS\r\n"); expect(r.reply(), ["503 5.5.1 Send HELO/EHLO first"])
r.send(b"EHLO client.example\r\n"); r.reply()
r.send(b"STARTTLS now\r\n"); expect(r.reply(), ["501 5.5.4 No arguments allowed"])
r.send(b"QUIT\r\n"); expect(r.reply(), ["221 2.0.0 mx.test.example closing"])
'
	t_status "exit=0 tls=none"
}

@test "garbage instead of a ClientHello ends the session: nothing delivered, exit 1" {
	t_launch --
	t_py '
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n")
for _ in range(3):
    r.reply()
r.send(b"RSET\r\nSTARTTLS\r\n"); r.reply()
expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
r.send(b"DATA\r\nSubject: not TLS\r\n\r\nx\r\n.\r\nQUIT\r\n" + bytes(range(256)) * 8)
rest = r.rest()
assert b"250" not in rest and b"354" not in rest, rest
'
	t_status "exit=1 tls=failed"
	l_eq "$(l_count "$T/Maildir")" 0 "messages"
	# the HELO name given in clear text stays in the log when the handshake fails
	grep -qE "^smtpd\\[$SPID\\]: session client=127[.]0[.]0[.]1 helo=client[.]example .* end=tls-failed .* tls=- tls_cipher=-\$" "$T/launcher.log"
}

@test "a client that never starts the handshake is cut at -t" {
	t_launch -- -t 1
	t_py '
import time
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\nSTARTTLS\r\n"); r.reply()
expect(r.reply(), ["220 2.0.0 Ready to start TLS"])
for _ in range(100):
    if "end=tls-timeout" in open(os.environ["T"] + "/launcher.log").read():
        break
    time.sleep(0.05)
else:
    sys.exit("smtpd still waits for the handshake after 5 s")
'
}

@test "no variables, or an fd that is not open: STARTTLS neither offered nor accepted (502)" {
	for opt in --no-env --bad-fd; do
		t_launch "$opt" --
		t_py '
r = Raw(); r.reply()
r.send(b"EHLO client.example\r\n")
ehlo = r.reply()
assert not [l for l in ehlo if "STARTTLS" in l], ehlo
r.send(b"STARTTLS\r\n"); expect(r.reply(), ["502 5.5.1 Command not implemented"])
r.send(b"QUIT\r\n"); r.reply()
'
		t_status "exit=0 tls=none"
		l_stop_pid "$LPID"
		rm -f "$T/port" "$T/status"
	done
	grep -q 'tls-unavailable reason=SSL-fds-not-open' "$T/launcher.log"
}

@test "LMTP (-L): LHLO, STARTTLS, LHLO again, delivered with LMTPS" {
	t_launch -- -L
	t_py '
s = smtplib.LMTP("127.0.0.1", PORT)
s.ehlo("client.example")
assert s.has_extn("starttls"), "STARTTLS not offered"
s.starttls(context=client_ctx())
refused = s.sendmail("a@x.example", ["b@y.example"], b"Subject: l\r\n\r\nlmtp\r\n")
assert refused == {}, refused
s.quit()
'
	t_one
	t_received_tls TLSv1.3 LMTPS
	t_status "exit=0 tls=ok"
}

@test "PROXY (-p): the header first, then plain SMTP, then STARTTLS; the proxied address kept" {
	t_launch -- -p
	t_py '
class ProxiedSMTP(smtplib.SMTP):
    def _get_socket(self, host, port, timeout):
        s = socket.create_connection((host, port), timeout)
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 25\r\n")
        return s
s = ProxiedSMTP("127.0.0.1", PORT)
s.starttls(context=client_ctx("1.2"))
refused = s.sendmail("a@x.example", ["b@y.example"], b"Subject: p\r\n\r\nproxied\r\n")
assert refused == {}, refused
s.quit()
'
	t_one
	sed -n 2p "$F" | grep -qP '^Received: from \S+ \(\[192\.0\.2\.7\]\)$'
	t_received_tls TLSv1.2 ESMTPS
	t_status "exit=0 tls=ok"
}
