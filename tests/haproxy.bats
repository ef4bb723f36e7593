#!/usr/bin/env bats
# smtpd -p behind HAProxy: the PROXY header (v1 and v2) gives the real client address,
# two backends ("hosts" 127.0.0.2 and 127.0.0.3) share one Maildir under load, and a
# missing or bad PROXY header gets no greeting and exit status 1.

load launch

if [ -f "$BATS_TEST_DIRNAME/helpers.bash" ]; then
	load helpers
fi

# ---- local helpers (l_ prefix: independent of helpers.bash) ----

# sanitizer reports of the ASan build land in the launchers' stderr logs
l_no_sanitizer_reports() {
	if grep -E -A30 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T"/*.log 2>/dev/null >&2; then
		return 1
	fi
}

# a background process whose PID teardown stops
l_bg_pid() { echo "$1" >>"$T/pids"; }

# tcpserver -v on HOST PORT running smtpd with ARGS, stderr to LOG
l_backend() { # HOST PORT LOG smtpd-args...
	local host=$1 port=$2 log=$3
	shift 3
	tcpserver -v -R -H -l0 -c 100 "$host" "$port" "$SMTPD" "$@" 3>&- 2>"$log" &
	l_bg_pid $!
	l_wait_listen "$port" "$host"
}

# HAProxy with the config in $T/haproxy.cfg; waits for its listener on $1 ($2 = address)
l_haproxy() {
	if ! haproxy -c -f "$T/haproxy.cfg" >"$T/haproxy-check.out" 2>&1; then
		cat "$T/haproxy-check.out" >&2
		return 1
	fi
	haproxy -db -f "$T/haproxy.cfg" 3>&- 2>"$T/haproxy.log" &
	l_bg_pid $!
	l_wait_listen "$1" "${2:-}"
}

l_haproxy_head() {
	cat <<EOF
global
    maxconn 1000
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
EOF
}

l_write_clients() {
	# send.py HOST PORT SOURCE PREFIX COUNT PER_CONNECTION: COUNT messages with Subject and
	# Message-ID PREFIX-i, PER_CONNECTION of them per session, from SOURCE ("-": any)
	cat >"$T/send.py" <<'EOF'
import smtplib, sys
host, port, src, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
count, per = int(sys.argv[5]), int(sys.argv[6])
kw = {} if src == "-" else {"source_address": (src, 0)}
i = 0
while i < count:
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=30, **kw) as s:
        for _ in range(min(per, count - i)):
            msg = ("From: a@x.example\r\nTo: b@y.example\r\nSubject: %s-%d\r\n"
                   "Message-ID: <%s-%d@client.example>\r\n\r\nbody of %s-%d\r\n"
                   % (prefix, i, prefix, i, prefix, i)).encode()
            refused = s.sendmail("a@x.example", ["b@y.example"], msg)
            if refused:
                sys.exit("refused: %r" % refused)
            i += 1
EOF
	# raw.py HOST PORT HEX: sends the bytes, keeps its side open, and prints (as hex) all the
	# server sends until it closes. Exit 3 if the server does not close within 10 s.
	cat >"$T/raw.py" <<'EOF'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(bytes.fromhex(sys.argv[3]))
got = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
except socket.timeout:
    print(got.hex())
    sys.exit(3)
print(got.hex())
EOF
}

setup() {
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	case $SMTPD in /*) ;; *) SMTPD=$PWD/$SMTPD ;; esac
	if [ ! -x "$SMTPD" ]; then
		echo "no smtpd binary at $SMTPD: build it first" >&2
		return 1
	fi
	PY=python3
	if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; fi
	T=$(mktemp -d)
	FPORT=$(l_free_port)
	BPORT=$(l_free_port)
	while [ "$BPORT" = "$FPORT" ]; do BPORT=$(l_free_port); done
	l_write_clients
}

teardown() {
	local p rc=0
	[ -n "${T:-}" ] || return 0
	if [ -f "$T/pids" ]; then
		for p in $(cat "$T/pids"); do l_stop_pid "$p"; done
	fi
	# reports written after the test's own check (e.g. by a session that ended late)
	l_no_sanitizer_reports || rc=1
	rm -rf "$T"
	return $rc
}

# one message from 127.0.0.9 through HAProxy (on 127.0.0.1) to one backend using KIND
l_one_proxied_message() { # KIND
	command -v haproxy >/dev/null || skip "haproxy not installed"
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	l_backend 127.0.0.1 "$BPORT" "$T/backend.log" -p -h test.example -m "$T/Maildir"
	{
		l_haproxy_head
		cat <<EOF
frontend smtp
    bind 127.0.0.1:$FPORT
    default_backend mx
backend mx
    server mx1 127.0.0.1:$BPORT $1
EOF
	} >"$T/haproxy.cfg"
	l_haproxy "$FPORT"
	timeout 30 "$PY" "$T/send.py" 127.0.0.1 "$FPORT" 127.0.0.9 "$1" 1 1
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	grep -Fx "Subject: $1-0" "$f"
	# the real client, not HAProxy's 127.0.0.1 that the backend's TCPREMOTEIP holds
	grep -Fx "Received: from client.example ([127.0.0.9])" "$f"
	grep -Fx "$(printf '\tby test.example (smtpd) with ESMTP id %s;' "$ID")" "$f"
	grep -qE '^tcpserver: pid [0-9]+ from 127[.]0[.]0[.]1$' "$T/backend.log"
	n=$(l_wait_count "$T/backend.log" '^tcpserver: end [0-9]+ status 0$' 1)
	l_eq "$n" 1 "tcpserver 'end N status 0' lines"
	grep -Fx "smtpd[$PID]: delivered id=$ID from=<a@x.example> size=$SIZE to=<b@y.example> file=$f" "$T/backend.log"
	n=$(grep -cE "^smtpd\[$PID\]: session client=127[.]0[.]0[.]9 helo=client[.]example messages=1 recipients=1 bytes=$SIZE end=quit " "$T/backend.log")
	l_eq "$n" 1 "session log lines with client=127.0.0.9"
	l_no_sanitizer_reports
}

@test "haproxy send-proxy (v1): Received: shows the real client address" {
	l_one_proxied_message send-proxy
}

@test "haproxy send-proxy-v2: Received: shows the real client address" {
	l_one_proxied_message send-proxy-v2
}

@test "haproxy send-proxy and send-proxy-v2 carry an IPv6 client as [IPv6:::1]" {
	command -v haproxy >/dev/null || skip "haproxy not installed"
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1' || skip "no IPv6 on loopback"
	FPORT2=$(l_free_port)
	while [ "$FPORT2" = "$FPORT" ] || [ "$FPORT2" = "$BPORT" ]; do FPORT2=$(l_free_port); done
	l_backend 127.0.0.1 "$BPORT" "$T/backend.log" -p -h test.example -m "$T/Maildir"
	{
		l_haproxy_head
		cat <<EOF
frontend smtp_v1
    bind [::1]:$FPORT
    default_backend mx_v1
frontend smtp_v2
    bind [::1]:$FPORT2
    default_backend mx_v2
backend mx_v1
    server mx1 127.0.0.1:$BPORT send-proxy
backend mx_v2
    server mx1 127.0.0.1:$BPORT send-proxy-v2
EOF
	} >"$T/haproxy.cfg"
	l_haproxy "$FPORT" "[::1]"
	l_wait_listen "$FPORT2" "[::1]"
	timeout 30 "$PY" "$T/send.py" ::1 "$FPORT" - v6v1 1 1
	timeout 30 "$PY" "$T/send.py" ::1 "$FPORT2" - v6v2 1 1
	l_eq "$(l_count "$T/Maildir")" 2 "messages in new/"
	for s in v6v1-0 v6v2-0; do
		f=$(grep -lFx "Subject: $s" "$T/Maildir/new/"*)
		grep -Fx "Received: from client.example ([IPv6:::1])" "$f"
	done
	n=$(grep -cE '^smtpd\[[0-9]+\]: session client=::1 helo=client[.]example messages=1 ' "$T/backend.log")
	l_eq "$n" 2 "session log lines with client=::1"
	l_no_sanitizer_reports
}

@test "haproxy roundrobin over two hosts (send-proxy-v2): 1000 messages, each delivered once" {
	command -v haproxy >/dev/null || skip "haproxy not installed"
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	# two "hosts" on one port, one Maildir root
	l_backend 127.0.0.2 "$BPORT" "$T/mx2.log" -p -h mx2.test -m "$T/Maildir"
	l_backend 127.0.0.3 "$BPORT" "$T/mx3.log" -p -h mx3.test -m "$T/Maildir"
	{
		l_haproxy_head
		cat <<EOF
frontend smtp
    bind 127.0.0.1:$FPORT
    default_backend mx
backend mx
    balance roundrobin
    server mx2 127.0.0.2:$BPORT send-proxy-v2
    server mx3 127.0.0.3:$BPORT send-proxy-v2
EOF
	} >"$T/haproxy.cfg"
	l_haproxy "$FPORT"
	# 10 clients at once, 100 messages each, 5 per session: 200 sessions
	start=$SECONDS
	pids=()
	for k in $(seq 0 9); do
		timeout 120 "$PY" "$T/send.py" 127.0.0.1 "$FPORT" 127.0.0.9 "lb$k" 100 5 \
			3>&- 2>"$T/client$k.err" &
		pids+=($!)
	done
	bad=0
	for p in "${pids[@]}"; do wait "$p" || bad=1; done
	echo "1000 messages sent in $((SECONDS - start)) s"
	if [ "$bad" = 1 ]; then
		cat "$T"/client*.err >&2
		return 1
	fi
	new=$T/Maildir/new
	l_eq "$(l_count "$T/Maildir")" 1000 "messages in new/"
	l_eq "$(find "$T/Maildir/tmp" -type f | wc -l)" 0 "files left in tmp/"
	# each message exactly once, by Subject and by Message-ID
	for k in $(seq 0 9); do for i in $(seq 0 99); do echo "lb$k-$i"; done; done | sort >"$T/expected"
	find "$new" -type f -exec grep -h '^Subject: ' {} + | sed 's/^Subject: //' | sort >"$T/subjects"
	diff "$T/expected" "$T/subjects" >"$T/subjects.diff" || {
		echo "Subjects differ from the 1000 sent (missing '<', duplicated or extra '>'):" >&2
		head -20 "$T/subjects.diff" >&2
		return 1
	}
	find "$new" -type f -exec grep -h '^Message-ID: ' {} + | sed 's/^Message-ID: <\(.*\)@client.example>$/\1/' |
		sort >"$T/msgids"
	diff "$T/expected" "$T/msgids" >&2
	# the real client in every Received:, and both hosts used
	n=$(find "$new" -type f -exec grep -hFx 'Received: from client.example ([127.0.0.9])' {} + | wc -l)
	l_eq "$n" 1000 "Received: lines with the client's address 127.0.0.9"
	by2=$(find "$new" -type f -exec grep -hE $'^\tby mx2[.]test \\(smtpd\\) with ESMTP id ' {} + | wc -l)
	by3=$(find "$new" -type f -exec grep -hE $'^\tby mx3[.]test \\(smtpd\\) with ESMTP id ' {} + | wc -l)
	echo "messages received by mx2: $by2, by mx3: $by3"
	l_eq "$((by2 + by3))" 1000 "messages received by mx2 plus mx3"
	[ "$by2" -ge 100 ] && [ "$by3" -ge 100 ] || {
		echo "roundrobin did not use both hosts: mx2 $by2, mx3 $by3" >&2
		return 1
	}
	# each backend's own log agrees: its deliveries, its sessions, all from 127.0.0.9
	for h in 2 3; do
		byvar=by$h
		by=${!byvar}
		d=$(grep -cE '^smtpd\[[0-9]+\]: delivered id=' "$T/mx$h.log" || true)
		l_eq "$d" "$by" "delivered lines in mx$h's log"
		s=$(grep -cE '^smtpd\[[0-9]+\]: session ' "$T/mx$h.log" || true)
		c=$(grep -cE '^smtpd\[[0-9]+\]: session client=127[.]0[.]0[.]9 helo=client[.]example messages=5 recipients=5 bytes=[0-9]+ end=quit ' "$T/mx$h.log" || true)
		l_eq "$c" "$s" "mx$h sessions with client=127.0.0.9 and 5 messages"
		e=$(l_wait_count "$T/mx$h.log" '^tcpserver: end [0-9]+ status 0$' "$s")
		l_eq "$e" "$s" "mx$h 'end N status 0' lines"
		l_eq "$(grep -cE '^tcpserver: end [0-9]+ status [1-9]' "$T/mx$h.log" || true)" 0 "mx$h sessions that failed"
	done
	# unique file names, all in new/, and unique message ids
	cat "$T/mx2.log" "$T/mx3.log" | sed -n 's/^smtpd\[[0-9]*\]: delivered id=.* file=//p' | sort >"$T/files"
	l_eq "$(sort -u "$T/files" | wc -l)" 1000 "distinct file= names in the logs"
	find "$new" -type f | sort | diff "$T/files" - >&2
	find "$new" -type f -exec grep -h $'^\tby mx[23][.]test (smtpd) with ESMTP id ' {} + | sort -u | wc -l >"$T/ids"
	l_eq "$(cat "$T/ids")" 1000 "distinct message ids in Received:"
	l_no_sanitizer_reports
}

# the cases for a missing or bad PROXY header (hex of what the client sends first)
l_bad_headers() {
	local sig=0d0a0d0a000d0a515549540a
	printf '%s %s\n' \
		no-header "$(printf 'EHLO client.example\r\n' | od -An -tx1 | tr -d ' \n')" \
		v1-truncated "$(printf 'PROXY TCP4 127.0.0.9\r\n' | od -An -tx1 | tr -d ' \n')" \
		v1-bad-address "$(printf 'PROXY TCP4 300.0.0.9 127.0.0.1 4000 25\r\n' | od -An -tx1 | tr -d ' \n')" \
		v1-bad-port "$(printf 'PROXY TCP4 127.0.0.9 127.0.0.1 70000 25\r\n' | od -An -tx1 | tr -d ' \n')" \
		v1-lf-only "$(printf 'PROXY TCP4 127.0.0.9 127.0.0.1 4000 25\n' | od -An -tx1 | tr -d ' \n')" \
		v1-lowercase "$(printf 'proxy TCP4 127.0.0.9 127.0.0.1 4000 25\r\n' | od -An -tx1 | tr -d ' \n')" \
		v2-version-1 "${sig}1111000c7f0000097f0000010fa00019" \
		v2-bad-command "${sig}2f11000c7f0000097f0000010fa00019" \
		v2-bad-family "${sig}2191000c7f0000097f0000010fa00019" \
		v2-short-ipv4 "${sig}211100047f000009"
}

# runs the good control case and every bad case against a -p smtpd on 127.0.0.1:$BPORT;
# $1 = the regex of the launcher's log line for one ended child, with status S as the
# placeholder for the exit status
l_bad_proxy_cases() { # END_REGEX_OK END_REGEX_FAIL LOG
	local ok_re=$1 fail_re=$2 log=$3 name hex got rc n=0
	# control: a valid v1 header and QUIT: a greeting, 221, exit status 0
	got=$(timeout 20 "$PY" "$T/raw.py" 127.0.0.1 "$BPORT" \
		"$(printf 'PROXY TCP4 192.0.2.7 127.0.0.1 4000 25\r\nQUIT\r\n' | od -An -tx1 | tr -d ' \n')")
	got=$("$PY" -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))' "$got")
	echo "control: $got"
	[[ $got == "220 "* ]] || { echo "control case: no greeting" >&2; return 1; }
	[[ $got == *$'\r\n221 '* ]] || { echo "control case: no 221" >&2; return 1; }
	n=$((n + 1))
	l_eq "$(l_wait_count "$log" "$ok_re" 1)" 1 "control session ended with status 0"
	while read -r name hex; do
		rc=0
		got=$(timeout 20 "$PY" "$T/raw.py" 127.0.0.1 "$BPORT" "$hex") || rc=$?
		l_eq "$rc" 0 "$name: raw client exit (3 = server did not close the connection)"
		l_eq "$got" "" "$name: bytes sent by smtpd (hex)"
		n=$((n + 1))
		l_eq "$(l_wait_count "$log" "$fail_re" $((n - 1)))" $((n - 1)) "$name: sessions ended with exit status 1 so far"
	done < <(l_bad_headers)
	# a client that connects and closes without a byte (like a proxy's health check)
	got=$("$PY" -c 'import socket,sys; s=socket.create_connection(("127.0.0.1",int(sys.argv[1]))); s.shutdown(socket.SHUT_WR); print(s.recv(100).hex())' "$BPORT")
	l_eq "$got" "" "silent client: bytes sent by smtpd (hex)"
	n=$((n + 1))
	l_eq "$(l_wait_count "$log" "$fail_re" $((n - 1)))" $((n - 1)) "silent client: sessions ended with exit status 1"
	l_eq "$(grep -cE "$ok_re" "$log")" 1 "sessions ended with status 0"
}

@test "-p under tcpserver: a missing or bad PROXY header gets no greeting and exit status 1" {
	command -v tcpserver >/dev/null || skip "tcpserver (ucspi-tcp-ipv6) not installed"
	l_backend 127.0.0.1 "$BPORT" "$T/backend.log" -p -h test.example -m "$T/Maildir"
	l_bad_proxy_cases '^tcpserver: end [0-9]+ status 0$' '^tcpserver: end [0-9]+ status 256$' "$T/backend.log"
	l_eq "$(find "$T/Maildir/new" -type f 2>/dev/null | wc -l)" 0 "messages delivered"
	l_no_sanitizer_reports
}

@test "-p under systemd-socket-activate: a missing or bad PROXY header gets no greeting and exit status 1" {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate not installed"
	env=()
	for v in ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
		if [ -n "${!v:-}" ]; then env+=(-E "$v=${!v}"); fi
	done
	systemd-socket-activate --inetd -a -l "127.0.0.1:$BPORT" "${env[@]}" \
		"$SMTPD" -p -h test.example -m "$T/Maildir" 3>&- 2>"$T/backend.log" &
	l_bg_pid $!
	l_wait_listen "$BPORT"
	l_bad_proxy_cases '^Child [0-9]+ died with code 0$' '^Child [0-9]+ died with code 1$' "$T/backend.log"
	l_eq "$(grep -cE '^Child [0-9]+ died with code' "$T/backend.log")" 12 "children ended"
	l_no_sanitizer_reports
}
