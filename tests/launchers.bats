#!/usr/bin/env bats
# smtpd under real launchers: tcpserver (TCPREMOTEIP), systemd-socket-activate
# (REMOTE_ADDR / getpeername), xinetd (REMOTE_HOST, fd 2 = the client's socket,
# no HOME). Through each: swaks, curl smtp:// and 20 concurrent sessions, with
# every message counted in new/, the Received: header and the log lines checked.

load launch

if [ -f "$BATS_TEST_DIRNAME/helpers.bash" ]; then
	load helpers
fi

# ---- local helpers (l_ prefix: independent of helpers.bash) ----

# the message as the client sent it: the file without our Return-Path: and Received:
l_body() {
	awk 'top && /^(Return-Path|Received):/ { next } top && /^[ \t]/ { next } { top = 0; print }' top=1 "$1"
}

# the ASan build's reports: under xinetd they go to $T/asan.*, elsewhere to the launcher's
# stderr log. Any report fails the test.
l_no_sanitizer_reports() {
	local f bad=0
	for f in "$T"/asan* "$T"/ubsan*; do
		[ -e "$f" ] || continue
		echo "sanitizer report $f:" >&2
		cat "$f" >&2
		bad=1
	done
	if grep -E -A30 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T"/*.log 2>/dev/null >&2; then
		bad=1
	fi
	return $bad
}

# environment items that carry the sanitizer settings through launchers that clean the
# environment, with reports kept off fd 2 (the client's socket under xinetd)
l_asan_env() {
	printf 'ASAN_OPTIONS=%slog_path=%s/asan UBSAN_OPTIONS=%slog_path=%s/ubsan' \
		"${ASAN_OPTIONS:+$ASAN_OPTIONS:}" "$T" "${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}" "$T"
	if [ -n "${LSAN_OPTIONS:-}" ]; then printf ' LSAN_OPTIONS=%s' "$LSAN_OPTIONS"; fi
}

# a /dev/log sink, only when nothing owns /dev/log; returns 1 (caller skips) otherwise
l_syslog_start() {
	local i
	[ ! -e /dev/log ] || return 1
	"${PY:-python3}" "$BATS_TEST_DIRNAME/syslogd.py" /dev/log "$T/syslog" 3>&- 2>"$T/syslogd.log" &
	echo $! >"$T/syslogd.pid"
	for i in $(seq 250); do
		[ -S /dev/log ] && return 0
		sleep 0.02
	done
	echo "syslog sink did not start" >&2
	return 1
}

l_tcpserver_start() { # HOST PORT smtpd-args...
	local host=$1 port=$2
	shift 2
	tcpserver -v -R -H -l0 "$host" "$port" "$SMTPD" "$@" 3>&- 2>"$T/launcher.log" &
	echo $! >"$T/launcher.pid"
	l_wait_listen "$port"
}

l_socket_activate_start() { # [-E VAR=VALUE]... -- smtpd-args...
	local env=() v
	for v in ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
		if [ -n "${!v:-}" ]; then env+=(-E "$v=${!v}"); fi
	done
	while [ "$1" != "--" ]; do
		env+=("$1")
		shift
	done
	shift
	systemd-socket-activate --inetd -a -l "127.0.0.1:$PORT" "${env[@]}" "$SMTPD" "$@" \
		3>&- 2>"$T/launcher.log" &
	echo $! >"$T/launcher.pid"
	l_wait_listen "$PORT"
}

# xinetd in the foreground with a private config. $1 = server_args, $2 = extra service lines,
# $XBIND = bind address, $XWRAP = a command to run xinetd under. passenv = (empty): the
# child gets only env = and REMOTE_HOST, so no HOME.
l_xinetd_start() {
	cat >"$T/xinetd.conf" <<EOF
defaults
{
    log_type = FILE $T/xinetd-service.log
}
service smtpd-test
{
    type           = UNLISTED
    socket_type    = stream
    protocol       = tcp
    wait           = no
    user           = root
    bind           = ${XBIND:-127.0.0.1}
    port           = $PORT
    server         = $SMTPD
    server_args    = $1
    passenv        =
    env            = PATH=/usr/bin:/bin $(l_asan_env)
    instances      = 100
    cps            = 200 1
    log_on_success = PID EXIT
    log_on_failure = HOST
${2:-}
}
EOF
	${XWRAP:-} xinetd -dontfork -f "$T/xinetd.conf" -pidfile "$T/xinetd.pid" \
		3>&- 2>"$T/launcher.log" &
	echo $! >"$T/launcher.pid"
	l_wait_listen "$PORT"
}

# python clients
l_write_clients() {
	# send.py HOST PORT PREFIX COUNT PER_CONNECTION: COUNT messages, Subject PREFIX-i
	cat >"$T/send.py" <<'EOF'
import smtplib, sys
host, port, prefix, count, per = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
i = 0
while i < count:
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=20) as s:
        for _ in range(min(per, count - i)):
            msg = ("From: a@x.example\r\nTo: b@y.example\r\nSubject: %s-%d\r\n"
                   "Message-ID: <%s-%d@client.example>\r\n\r\nbody of %s-%d\r\n"
                   % (prefix, i, prefix, i, prefix, i)).encode()
            refused = s.sendmail("a@x.example", ["b@y.example"], msg)
            if refused:
                sys.exit("refused: %r" % refused)
            i += 1
EOF
	# conc.py HOST PORT N: N sessions open at the same time
	cat >"$T/conc.py" <<'EOF'
import smtplib, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
barrier = threading.Barrier(n, timeout=30)
errors = []
def one(i):
    try:
        with smtplib.SMTP(host, port, local_hostname="client.example", timeout=30) as s:
            s.ehlo()
            barrier.wait()
            msg = ("From: a@x.example\r\nTo: b@y.example\r\nSubject: conc%d-0\r\n"
                   "Message-ID: <conc%d@client.example>\r\n\r\nbody of conc%d\r\n" % (i, i, i)).encode()
            refused = s.sendmail("a@x.example", ["b@y.example"], msg)
            if refused:
                raise RuntimeError("refused: %r" % refused)
    except Exception as e:
        errors.append("session %d: %r" % (i, e))
        barrier.abort()
threads = [threading.Thread(target=one, args=(i,)) for i in range(1, n + 1)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("\n".join(errors))
EOF
	# transcript.py HOST PORT OUT MODE: one whole session, step by step, recording every
	# byte the server sends until it closes. MODE quit: a delivery, an unknown command and
	# QUIT; MODE drop: EHLO and MAIL, then the client stops sending (shutdown for writing).
	cat >"$T/transcript.py" <<'EOF'
import socket, sys
host, port, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=10)
f = s.makefile("rb")
log = open(out, "wb")
def reply():
    while True:
        line = f.readline()
        log.write(line)
        if not line:
            sys.exit("connection closed while waiting for a reply")
        if line[3:4] != b"-":
            return line
def cmd(c):
    s.sendall(c + b"\r\n")
    return reply()
reply()
cmd(b"EHLO client.example")
cmd(b"MAIL FROM:<a@x.example>")
if mode == "quit":
    cmd(b"RCPT TO:<b@y.example>")
    cmd(b"DATA")
    s.sendall(b"Subject: transcript\r\n\r\nhello\r\n.\r\n")
    reply()
    cmd(b"BOGUS")
    cmd(b"QUIT")
else:
    s.shutdown(socket.SHUT_WR)
log.write(f.read())   # everything up to EOF: nothing may follow the last reply
log.close()
EOF
}

# 20 sessions at once (one message each, Subject conc<i>-0): 20 threads connect and say
# EHLO, wait until all 20 sessions are open, then each sends its message; all must succeed
l_concurrent20() { # HOST PORT
	timeout 60 "$PY" "$T/conc.py" "$1" "$2" 20 3>&-
}

# the 20 messages of l_concurrent20, each exactly once, each with the client's address
l_check_concurrent20() { # MAILDIR ADDRESS
	local i n
	l_eq "$(l_count "$1")" 20 "messages in new/"
	for i in $(seq 20); do
		n=$(grep -lFx "Subject: conc$i-0" "$1"/new/* | wc -l)
		l_eq "$n" 1 "files with Subject: conc$i-0"
	done
	n=$(grep -hFx "Received: from client.example ([$2])" "$1"/new/* | wc -l)
	l_eq "$n" 20 "Received: from client.example ([$2]) lines"
	l_eq "$(find "$1/tmp" -type f | wc -l)" 0 "files left in tmp/"
}

# the swaks session: one message, its headers, and its log lines on stderr ($T/launcher.log)
l_swaks_session() { # PORT SUBJECT
	timeout 30 swaks --server "127.0.0.1:$1" --ehlo client.example --from a@x.example \
		--to b@y.example --header "Subject: $2" --body "hello from swaks" \
		--timeout 10 --hide-all 3>&-
}

l_check_swaks_message() { # MAILDIR SUBJECT ADDRESS
	local f
	l_eq "$(l_count "$1")" 1 "messages in new/"
	f=$(find "$1/new" -type f)
	l_check_name "$f"
	grep -Fx "Return-Path: <a@x.example>" "$f"
	grep -Fx "Received: from client.example ([$3])" "$f"
	grep -Fx "$(printf '\tby test.example (smtpd) with ESMTP id %s;' "$ID")" "$f"
	grep -Fx "Subject: $2" "$f"
	grep -Fx "hello from swaks" "$f"
	FILE=$f
}

# smtpd's own log lines on stderr (tcpserver, systemd-socket-activate): exact formats
l_check_stderr_log() { # LOG FILE ADDRESS
	local n
	grep -Fx "smtpd[$PID]: delivered id=$ID from=<a@x.example> size=$SIZE to=<b@y.example> file=$2" "$1"
	n=$(grep -cE "^smtpd\[$PID\]: session client=$(printf '%s' "$3" | sed 's/[.]/[.]/g') helo=client[.]example messages=1 recipients=1 bytes=$SIZE end=quit seconds=[0-9]+[.][0-9]+$" "$1")
	l_eq "$n" 1 "session log lines of smtpd[$PID]"
}

setup() {
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	case $SMTPD in /*) ;; *) SMTPD=$PWD/$SMTPD ;; esac
	if [ ! -x "$SMTPD" ]; then
		echo "no smtpd binary at $SMTPD: build it first" >&2
		return 1
	fi
	# the system's python starts faster than a version manager's shim
	PY=python3
	if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; fi
	T=$(mktemp -d)
	PORT=$(l_free_port)
	l_write_clients
}

teardown() {
	local p kids="" rc=0
	[ -n "${T:-}" ] || return 0
	if [ -f "$T/launcher.pid" ]; then
		p=$(cat "$T/launcher.pid")
		# xinetd does not end running sessions when it stops: end them too
		kids=$(pgrep -P "$p" 2>/dev/null || true)
		l_stop_pid "$p"
		for p in $kids; do l_stop_pid "$p"; done
	fi
	if [ -f "$T/syslogd.pid" ]; then
		l_stop_pid "$(cat "$T/syslogd.pid")"
		rm -f /dev/log
	fi
	# reports written after the test's own check (e.g. by a session that ended late)
	l_no_sanitizer_reports || rc=1
	rm -rf "$T"
	return $rc
}

# ---------------------------------------------------------------- tcpserver

@test "tcpserver: swaks session delivers one message; Received: and stderr log carry TCPREMOTEIP" {
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	command -v swaks >/dev/null || skip "swaks not installed"
	l_tcpserver_start 127.0.0.1 "$PORT" -h test.example -m "$T/Maildir"
	l_swaks_session "$PORT" "via tcpserver"
	l_check_swaks_message "$T/Maildir" "via tcpserver" 127.0.0.1
	n=$(l_wait_count "$T/launcher.log" '^tcpserver: end [0-9]+ status 0$' 1)
	l_eq "$n" 1 "tcpserver 'end N status 0' lines"
	l_check_stderr_log "$T/launcher.log" "$FILE" 127.0.0.1
	l_no_sanitizer_reports
}

@test "tcpserver: curl smtp:// upload is stored byte for byte (dot-unstuffed, LF)" {
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	l_tcpserver_start 127.0.0.1 "$PORT" -h test.example -m "$T/Maildir"
	printf '%s\n' "From: a@x.example" "To: b@y.example" "Subject: curl via tcpserver" \
		"Message-ID: <curl-tcpserver@client.example>" "" "first line" ".leading dot" \
		"..two dots" "." "last line" >"$T/msg.eml"
	timeout 30 curl -sS --max-time 20 --crlf "smtp://127.0.0.1:$PORT/client.example" \
		--mail-from a@x.example --mail-rcpt b@y.example -T "$T/msg.eml" 3>&-
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	grep -Fx "Received: from client.example ([127.0.0.1])" "$f"
	l_body "$f" >"$T/got.eml"
	diff -u "$T/msg.eml" "$T/got.eml"
	l_no_sanitizer_reports
}

@test "tcpserver: 20 concurrent sessions, all delivered" {
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	l_tcpserver_start 127.0.0.1 "$PORT" -h test.example -m "$T/Maildir"
	l_concurrent20 127.0.0.1 "$PORT"
	l_check_concurrent20 "$T/Maildir" 127.0.0.1
	n=$(l_wait_count "$T/launcher.log" '^tcpserver: end [0-9]+ status 0$' 20)
	l_eq "$n" 20 "tcpserver 'end N status 0' lines"
	n=$(grep -cE '^smtpd\[[0-9]+\]: session client=127[.]0[.]0[.]1 helo=client[.]example messages=1 recipients=1 bytes=[0-9]+ end=quit ' "$T/launcher.log")
	l_eq "$n" 20 "session log lines"
	l_eq "$(grep -cE '^smtpd\[[0-9]+\]: delivered id=' "$T/launcher.log")" 20 "delivered log lines"
	l_no_sanitizer_reports
}

@test "tcpserver: an IPv6 client is shown as [IPv6:::1]" {
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1' || skip "no IPv6 on loopback"
	tcpserver -v -R -H -l0 ::1 "$PORT" "$SMTPD" -h test.example -m "$T/Maildir" \
		3>&- 2>"$T/launcher.log" &
	echo $! >"$T/launcher.pid"
	l_wait_listen "$PORT" "[::1]"
	timeout 30 "$PY" "$T/send.py" ::1 "$PORT" v6 1 1
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	grep -Fx "Received: from client.example ([IPv6:::1])" "$f"
	n=$(l_wait_count "$T/launcher.log" '^smtpd\[[0-9]+\]: session client=::1 helo=client[.]example messages=1 ' 1)
	l_eq "$n" 1 "session log line with client=::1"
	l_no_sanitizer_reports
}

@test "tcpserver: with fd 2 closed, log lines go to syslog (mail.info) and nowhere else" {
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	l_syslog_start || skip "/dev/log already exists (a syslog daemon runs): cannot capture"
	# smtpd starts with fd 2 closed; sanitizer reports (ASan build) go to $T/asan.*
	# shellcheck disable=SC2046 # l_asan_env's words are NAME=VALUE items
	env $(l_asan_env) tcpserver -v -R -H -l0 127.0.0.1 "$PORT" sh -c 'exec "$0" "$@" 2>&-' \
		"$SMTPD" -h test.example -m "$T/Maildir" 3>&- 2>"$T/launcher.log" &
	echo $! >"$T/launcher.pid"
	l_wait_listen "$PORT"
	timeout 30 "$PY" "$T/send.py" 127.0.0.1 "$PORT" closed2 1 1
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	printf 'From: a@x.example\nTo: b@y.example\nSubject: closed2-0\nMessage-ID: <closed2-0@client.example>\n\nbody of closed2-0\n' >"$T/want"
	l_body "$f" | diff -u "$T/want" -
	n=$(l_wait_count "$T/syslog" 'smtpd\[[0-9]+\]: session ' 1)
	echo "--- syslog:"
	cat "$T/syslog"
	n=$(grep -cE "^<22>.* smtpd\[$PID\]: delivered id=$ID from=<a@x[.]example> size=$SIZE to=<b@y[.]example> file=" "$T/syslog")
	l_eq "$n" 1 "syslog delivered lines"
	n=$(grep -cE "^<22>.* smtpd\[$PID\]: session client=127[.]0[.]0[.]1 helo=client[.]example messages=1 recipients=1 bytes=$SIZE end=quit " "$T/syslog")
	l_eq "$n" 1 "syslog session lines"
	l_eq "$(grep -c '^smtpd\[' "$T/launcher.log" || true)" 0 "smtpd lines on the launcher's stderr"
	l_eq "$(l_wait_count "$T/launcher.log" '^tcpserver: end [0-9]+ status 0$' 1)" 1 "tcpserver 'end N status 0' lines"
	l_no_sanitizer_reports
}

# ---------------------------------------------------------------- systemd-socket-activate

@test "systemd-socket-activate: swaks session; address from getpeername(0); log on stderr" {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate not installed"
	command -v swaks >/dev/null || skip "swaks not installed"
	l_socket_activate_start -- -h test.example -m "$T/Maildir"
	l_swaks_session "$PORT" "via systemd-socket-activate"
	l_check_swaks_message "$T/Maildir" "via systemd-socket-activate" 127.0.0.1
	n=$(l_wait_count "$T/launcher.log" '^Child [0-9]+ died with code 0$' 1)
	l_eq "$n" 1 "'Child N died with code 0' lines"
	l_check_stderr_log "$T/launcher.log" "$FILE" 127.0.0.1
	l_no_sanitizer_reports
}

@test "systemd-socket-activate: REMOTE_ADDR (as systemd Accept=yes sets it) is the client address" {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate not installed"
	# value given -> shown in Received:
	for pair in "192.0.2.1=192.0.2.1" "::ffff:192.0.2.7=192.0.2.7" "2001:db8::5=IPv6:2001:db8::5"; do
		given=${pair%%=*} shown=${pair#*=}
		rm -rf "$T/Maildir"
		l_socket_activate_start -E "REMOTE_ADDR=$given" -- -h test.example -m "$T/Maildir"
		timeout 30 "$PY" "$T/send.py" 127.0.0.1 "$PORT" ra 1 1
		l_eq "$(l_count "$T/Maildir")" 1 "messages in new/ for REMOTE_ADDR=$given"
		f=$(find "$T/Maildir/new" -type f)
		if ! grep -Fx "Received: from client.example ([$shown])" "$f"; then
			echo "REMOTE_ADDR=$given: expected 'Received: from client.example ([$shown])'; file:" >&2
			cat "$f" >&2
			return 1
		fi
		n=$(l_wait_count "$T/launcher.log" "^smtpd\[[0-9]+\]: session client=${shown#IPv6:} helo=" 1)
		l_eq "$n" 1 "session log line with client=${shown#IPv6:}"
		l_no_sanitizer_reports
		l_stop_pid "$(cat "$T/launcher.pid")"
		rm -f "$T/launcher.pid"
		PORT=$(l_free_port)
	done
}

@test "systemd-socket-activate: curl smtp:// upload is stored byte for byte" {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate not installed"
	l_socket_activate_start -- -h test.example -m "$T/Maildir"
	printf '%s\n' "From: a@x.example" "To: b@y.example" "Subject: curl via socket activation" \
		"" "first line" ".leading dot" "..two dots" "." "last line" >"$T/msg.eml"
	timeout 30 curl -sS --max-time 20 --crlf "smtp://127.0.0.1:$PORT/client.example" \
		--mail-from a@x.example --mail-rcpt b@y.example -T "$T/msg.eml" 3>&-
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	grep -Fx "Received: from client.example ([127.0.0.1])" "$f"
	l_body "$f" >"$T/got.eml"
	diff -u "$T/msg.eml" "$T/got.eml"
	l_no_sanitizer_reports
}

@test "systemd-socket-activate: 20 concurrent sessions, all delivered" {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate not installed"
	l_socket_activate_start -- -h test.example -m "$T/Maildir"
	l_concurrent20 127.0.0.1 "$PORT"
	l_check_concurrent20 "$T/Maildir" 127.0.0.1
	n=$(l_wait_count "$T/launcher.log" '^Child [0-9]+ died with code 0$' 20)
	l_eq "$n" 20 "'Child N died with code 0' lines"
	l_eq "$(grep -cE '^Child [0-9]+ died with code [1-9]' "$T/launcher.log")" 0 "children that failed"
	n=$(grep -cE '^smtpd\[[0-9]+\]: session client=127[.]0[.]0[.]1 helo=client[.]example messages=1 recipients=1 bytes=[0-9]+ end=quit ' "$T/launcher.log")
	l_eq "$n" 20 "session log lines"
	l_no_sanitizer_reports
}

# ---------------------------------------------------------------- xinetd

@test "xinetd: swaks session with no HOME (passenv =) and -m; address from REMOTE_HOST" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	command -v swaks >/dev/null || skip "swaks not installed"
	l_xinetd_start "-h test.example -m $T/Maildir"
	l_swaks_session "$PORT" "via xinetd"
	l_check_swaks_message "$T/Maildir" "via xinetd" 127.0.0.1
	n=$(l_wait_count "$T/xinetd-service.log" 'EXIT: smtpd-test status=0 ' 1)
	l_eq "$n" 1 "xinetd 'EXIT: smtpd-test status=0' lines"
	l_no_sanitizer_reports
}

@test "xinetd: no log line ever enters the SMTP stream (fd 2 is the socket)" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	l_xinetd_start "-h test.example -m $T/Maildir"
	# a whole session with a delivery, an error reply and QUIT
	timeout 30 "$PY" "$T/transcript.py" 127.0.0.1 "$PORT" "$T/quit.txt" quit
	# a session the client abandons after MAIL
	timeout 30 "$PY" "$T/transcript.py" 127.0.0.1 "$PORT" "$T/drop.txt" drop
	for t in quit drop; do
		echo "--- transcript $t:"
		cat -A "$T/$t.txt"
		n=$(grep -cvE $'^[2-5][0-9][0-9][ -][^\r]*\r$' "$T/$t.txt" || true)
		l_eq "$n" 0 "lines in the $t transcript that are not SMTP replies"
		[ "$(tail -c 2 "$T/$t.txt" | od -An -c | tr -d ' ')" = '\r\n' ]
	done
	grep -qE '^220 test[.]example ' "$T/quit.txt"
	grep -qE '^250 2[.]0[.]0 .* delivered' "$T/quit.txt"
	grep -qE '^500 ' "$T/quit.txt"
	tail -n 1 "$T/quit.txt" | grep -qE '^221 '
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	l_no_sanitizer_reports
}

@test "xinetd: log lines go to syslog with facility mail (<22> = mail.info)" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	l_syslog_start || skip "/dev/log already exists (a syslog daemon runs): cannot capture"
	l_xinetd_start "-h test.example -m $T/Maildir"
	timeout 30 "$PY" "$T/transcript.py" 127.0.0.1 "$PORT" "$T/quit.txt" quit
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	n=$(l_wait_count "$T/syslog" 'smtpd\[[0-9]+\]: session ' 1)
	echo "--- syslog:"
	cat "$T/syslog"
	prefix='^<22>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} smtpd\['"$PID"'\]: '
	n=$(grep -cE "${prefix}delivered id=$ID from=<a@x[.]example> size=$SIZE to=<b@y[.]example> file=$(printf '%s' "$f" | sed 's/[.]/[.]/g')\$" "$T/syslog")
	l_eq "$n" 1 "syslog delivered lines"
	n=$(grep -cE "${prefix}session client=127[.]0[.]0[.]1 helo=client[.]example messages=1 recipients=1 bytes=$SIZE end=quit seconds=[0-9]+[.][0-9]+\$" "$T/syslog")
	l_eq "$n" 1 "syslog session lines"
	l_eq "$(grep 'smtpd\[' "$T/syslog" | grep -cvE '^<22>')" 0 "smtpd syslog lines with another facility/severity"
	# and nothing of it in the client's stream
	l_eq "$(grep -cF "smtpd[" "$T/quit.txt" || true)" 0 "log text in the SMTP stream"
	l_no_sanitizer_reports
}

@test "xinetd: curl smtp:// upload is stored byte for byte" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	l_xinetd_start "-h test.example -m $T/Maildir"
	printf '%s\n' "From: a@x.example" "To: b@y.example" "Subject: curl via xinetd" \
		"" "first line" ".leading dot" "..two dots" "." "last line" >"$T/msg.eml"
	timeout 30 curl -sS --max-time 20 --crlf "smtp://127.0.0.1:$PORT/client.example" \
		--mail-from a@x.example --mail-rcpt b@y.example -T "$T/msg.eml" 3>&-
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	grep -Fx "Received: from client.example ([127.0.0.1])" "$f"
	l_body "$f" >"$T/got.eml"
	diff -u "$T/msg.eml" "$T/got.eml"
	l_no_sanitizer_reports
}

@test "xinetd: 20 concurrent sessions, all delivered" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	l_xinetd_start "-h test.example -m $T/Maildir"
	l_concurrent20 127.0.0.1 "$PORT"
	l_check_concurrent20 "$T/Maildir" 127.0.0.1
	n=$(l_wait_count "$T/xinetd-service.log" 'EXIT: smtpd-test status=0 ' 20)
	l_eq "$n" 20 "xinetd 'EXIT: smtpd-test status=0' lines"
	l_no_sanitizer_reports
}

@test "xinetd: IPv6 client (flags = IPv6) is shown as [IPv6:::1]" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1' || skip "no IPv6 on loopback"
	XBIND=::1 l_xinetd_start "-h test.example -m $T/Maildir" "    flags          = IPv6"
	timeout 30 "$PY" "$T/send.py" ::1 "$PORT" v6 1 1
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	grep -Fx "Received: from client.example ([IPv6:::1])" "$f"
	l_no_sanitizer_reports
}

@test "xinetd: a v4-mapped REMOTE_HOST (::ffff:127.0.0.1) is shown as 127.0.0.1" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	# an IPv6 socket bound to the v4-mapped loopback: IPv4 clients arrive as ::ffff:127.0.0.1
	XBIND=::ffff:127.0.0.1 l_xinetd_start "-h test.example -m $T/Maildir" "    flags          = IPv6"
	timeout 30 "$PY" "$T/send.py" 127.0.0.1 "$PORT" mapped 1 1
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	grep -Fx "Received: from client.example ([127.0.0.1])" "$f"
	l_no_sanitizer_reports
}

@test "xinetd: with no HOME and no -m, mail goes to the password database home's Maildir" {
	command -v xinetd >/dev/null || skip "xinetd not installed"
	unshare -m true 2>/dev/null || skip "unshare -m not permitted here (needs CAP_SYS_ADMIN)"
	[ "$(id -u)" = 0 ] || skip "needs root (xinetd service runs as root, whose home is replaced)"
	home=$(getent passwd root | cut -d: -f6)
	[ -d "$home" ] || skip "root's home $home does not exist"
	# In a private mount namespace an empty directory hides root's real home, so the
	# default Maildir lands there and nothing outside is touched.
	mkdir "$T/home"
	had=0
	[ -e "$home/Maildir" ] && had=1
	cat >"$T/wrap.sh" <<EOF
#!/bin/sh
mount --bind "$T/home" "$home" && exec "\$@"
EOF
	chmod +x "$T/wrap.sh"
	XWRAP="unshare -m $T/wrap.sh" l_xinetd_start "-h test.example"
	timeout 30 "$PY" "$T/send.py" 127.0.0.1 "$PORT" nohome 1 1
	l_eq "$(l_count "$T/home/Maildir")" 1 "messages in (hidden) $home/Maildir/new"
	grep -Fx "Subject: nohome-0" "$T/home/Maildir/new/"*
	if [ "$had" = 0 ] && [ -e "$home/Maildir" ]; then
		echo "$home/Maildir appeared outside the namespace" >&2
		return 1
	fi
	l_no_sanitizer_reports
}
