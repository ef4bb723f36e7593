#!/usr/bin/env bats
# LMTP (RFC 2033, -L): the LMTP greeting, LHLO instead of HELO/EHLO, and after the data one
# reply per accepted recipient in RCPT order, each recipient's delivery standing alone.
# Pipe mode, a FIFO to change the file system in the middle of a session, python
# smtplib.LMTP over TCP (systemd-socket-activate) and swaks --protocol LMTP.

if [ -f "$BATS_TEST_DIRNAME/helpers.bash" ]; then
	load helpers
fi

# ---- local helpers (x_ prefix: independent of helpers.bash) ----

x_smtpd() { echo "${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}"; }

# runs smtpd in pipe mode on $T/in: stdout -> $T/out, stderr -> $T/err, exit status -> $XS
x_run() {
	XS=0
	"$(x_smtpd)" -h test.example "$@" <"$T/in" >"$T/out" 2>"$T/err" || XS=$?
	x_no_sanitizer_reports
}

# fails when a sanitizer (ASan, UBSan, LSan builds) reported anything on smtpd's stderr
x_no_sanitizer_reports() {
	local f
	for f in "$T/err" "$T/sa.log"; do
		if [ -f "$f" ] && grep -qE 'runtime error|AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer' "$f"; then
			echo "sanitizer report in $(basename "$f"):" >&2
			cat "$f" >&2
			return 1
		fi
	done
}

# x_session FORMAT [smtpd args]: the printf FORMAT (\r\n, \xHH ...) is the client's input
x_session() {
	printf -- "$1" >"$T/in"
	shift
	x_run "$@"
}

# appends raw input (a printf format) to $T/in
x_in() { printf -- "$1" >>"$T/in"; }

# appends "BDAT <n>[ LAST]" and the chunk (a printf format) to $T/in; n is counted here
x_chunk() {
	printf -- "$1" >"$T/chunk"
	printf 'BDAT %d%s\r\n' "$(($(wc -c <"$T/chunk")))" "${2:+ LAST}" >>"$T/in"
	cat "$T/chunk" >>"$T/in"
}

# the replies must be exactly these lines, each ending in CRLF; the id in
# "250 2.0.0 <id> delivered" is written as <id>
x_expect() {
	if [ $# -eq 0 ]; then
		: >"$T/expected"
	else
		printf '%s\r\n' "$@" >"$T/expected"
	fi
	sed -E 's/^250 2\.0\.0 [0-9]+\.M[0-9]+P[0-9]+Q[0-9]+ delivered\r$/250 2.0.0 <id> delivered\r/' \
		"$T/out" >"$T/out.norm"
	if ! cmp -s "$T/expected" "$T/out.norm"; then
		echo "replies differ (- expected, + got; ^M\$ is CRLF):" >&2
		diff -u <(cat -A "$T/expected") <(cat -A "$T/out.norm") >&2 || true
		return 1
	fi
}

x_eq() {
	if [ "$1" != "$2" ]; then
		echo "$3: expected '$2', got '$1'" >&2
		return 1
	fi
}

# the number of messages in Maildir $1
x_count() { find "$1/new" -type f 2>/dev/null | wc -l; }

# the one message in $1/new (fails unless there is exactly one)
x_one() {
	local n
	n=$(x_count "$1")
	if [ "$n" -ne 1 ]; then
		echo "expected 1 message in $1/new, found $n" >&2
		ls -la "$1/new" >&2 || true
		return 1
	fi
	find "$1/new" -type f
}

# our two header fields (4 lines) at the top of file $1, with protocol word $2
x_headers() {
	local f=$1 proto=$2
	sed -n 1p "$f" | grep -qE '^Return-Path: <[^>]*>$' || { echo "bad Return-Path in $f" >&2; head -4 "$f" >&2; return 1; }
	sed -n 2p "$f" | grep -qE '^Received: from ' || { echo "bad Received in $f" >&2; head -4 "$f" >&2; return 1; }
	sed -n 3p "$f" | grep -qP "^\\tby test\\.example \\(smtpd\\) with $proto id [0-9]+\\.M[0-9]+P[0-9]+Q[0-9]+;\$" ||
		{ echo "bad 'by' line (want with $proto) in $f" >&2; head -4 "$f" >&2; return 1; }
	sed -n 4p "$f" | grep -qP '^\t[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [-+][0-9]{4}$' ||
		{ echo "bad date line in $f" >&2; head -4 "$f" >&2; return 1; }
}

# the stored message after our header fields must be exactly the printf FORMAT $2
x_body() {
	printf -- "$2" >"$T/body.expected"
	tail -n +5 "$1" >"$T/body.got"
	if ! cmp "$T/body.expected" "$T/body.got" >&2; then
		diff -u <(od -c "$T/body.expected") <(od -c "$T/body.got") >&2 || true
		return 1
	fi
}

# the S= part of a Maildir file name is the file's size
x_size_ok() {
	local s
	s=${1##*,S=}
	x_eq "$s" "$(($(wc -c <"$1")))" "S= of $(basename "$1")"
}

x_maildir() { mkdir -p "$1/cur" "$1/new" "$1/tmp"; }

x_free_port() {
	"${PY:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# waits until something LISTENs on port $1, without connecting
x_wait_listen() {
	local i
	for i in $(seq 250); do
		ss -Hltn "sport = :$1" | grep -q LISTEN && return 0
		sleep 0.02
	done
	echo "nothing listening on $1" >&2
	return 1
}

x_stop_pid() {
	local p=$1 i
	[ -n "$p" ] || return 0
	kill "$p" 2>/dev/null || return 0
	for i in $(seq 250); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.02
	done
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
}

# smtpd behind systemd-socket-activate on 127.0.0.1:$PORT (one smtpd per connection)
x_socket_activate() {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate not installed"
	PORT=$(x_free_port)
	systemd-socket-activate --inetd -a -l "127.0.0.1:$PORT" "$(x_smtpd)" -h test.example "$@" \
		3>&- 2>"$T/sa.log" </dev/null >/dev/null &
	echo $! >>"$T/pids"
	x_wait_listen "$PORT"
}

# a session on a FIFO, to act between its parts: smtpd args; the client writes to fd 4
x_fifo_start() {
	mkfifo "$T/fifo"
	"$(x_smtpd)" -h test.example "$@" <"$T/fifo" >"$T/out" 2>"$T/err" 3>&- &
	SPID=$!
	echo "$SPID" >>"$T/pids"
	exec 4>"$T/fifo"
}

# waits until $T/out has a line matching the extended regex $1
x_wait_out() {
	local i
	for i in $(seq 500); do
		grep -qE -- "$1" "$T/out" 2>/dev/null && return 0
		sleep 0.02
	done
	echo "no reply matching '$1' in:" >&2
	cat -A "$T/out" >&2
	return 1
}

# ends the FIFO session and sets XS to smtpd's exit status
x_fifo_end() {
	exec 4>&-
	XS=0
	wait "$SPID" || XS=$?
}

GREETING='220 test.example LMTP smtpd'

# the reply to LHLO with -s $1 (default 26214400)
x_ehlo_lines() {
	printf '%s\n' '250-test.example' '250-PIPELINING' "250-SIZE ${1:-26214400}" '250-8BITMIME' \
		'250-ENHANCEDSTATUSCODES' '250-SMTPUTF8' '250-CHUNKING' '250 HELP'
}

setup() {
	T=$(mktemp -d)
	unset TCPREMOTEIP REMOTE_ADDR REMOTE_HOST
	[ -x "$(x_smtpd)" ] || { echo "no smtpd binary at $(x_smtpd)" >&2; return 1; }
	mapfile -t LHLO < <(x_ehlo_lines)
}

teardown() {
	local p
	exec 4>&- 2>/dev/null || true
	if [ -f "$T/pids" ]; then
		while read -r p; do x_stop_pid "$p"; done <"$T/pids"
	fi
	local ok=0
	x_no_sanitizer_reports || ok=1
	rm -rf "$T"
	return $ok
}

@test "LMTP: greeting '220 test.example LMTP smtpd', LHLO answers with the extensions" {
	x_session 'LHLO client.example\r\nNOOP\r\nQUIT\r\n' -L -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${LHLO[@]}" '250 2.0.0 Ok' '221 2.0.0 test.example closing'
}

@test "LMTP: HELO and EHLO -> 500 5.5.1 Command unrecognized; MAIL before LHLO -> 503" {
	x_session 'HELO c\r\nEHLO c\r\nMAIL FROM:<a@x.example>\r\nLHLO c\r\nMAIL FROM:<a@x.example>\r\nQUIT\r\n' \
		-L -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" '500 5.5.1 Command unrecognized' '500 5.5.1 Command unrecognized' \
		'503 5.5.1 Send LHLO first' "${LHLO[@]}" '250 2.1.0 Ok' \
		'221 2.0.0 test.example closing'
}

@test "LMTP: without -L, LHLO is an unknown command" {
	x_session 'LHLO c\r\nQUIT\r\n' -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect '220 test.example ESMTP smtpd' '500 5.5.1 Command unrecognized' \
		'221 2.0.0 test.example closing'
}

@test "LMTP: HELP names LHLO" {
	x_session 'LHLO c\r\nHELP\r\nQUIT\r\n' -L -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${LHLO[@]}" \
		'214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT' \
		'221 2.0.0 test.example closing'
}

@test "LMTP: after the data one reply per accepted recipient, in RCPT order; Received says LMTP" {
	x_maildir "$T/y.example/b"
	x_maildir "$T/y.example/c"
	x_session 'LHLO client.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<nobody@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<x@z.example>\r\nRCPT TO:<B+tag@Y.example>\r\nDATA\r\nSubject: lmtp\r\n\r\nhello\r\n.\r\nQUIT\r\n' \
		-L -m "$T/%d/%u"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${LHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' '550 5.1.1 No such user' \
		'250 2.1.5 Ok' '550 5.7.1 Relaying denied' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'250 2.0.0 <id> delivered' '250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	# b and B+tag are one Maildir: one file there
	for u in b c; do
		f=$(x_one "$T/y.example/$u")
		x_headers "$f" LMTP
		sed -n 2p "$f" | grep -qx 'Received: from client.example'
		x_body "$f" 'Subject: lmtp\n\nhello\n'
		x_size_ok "$f"
	done
}

@test "LMTP: SMTPUTF8 transaction: Received says UTF8LMTP" {
	x_session 'LHLO c\r\nMAIL FROM:<j\xc3\xb8ran@x.example> SMTPUTF8\r\nRCPT TO:<\xc7\xbf@y.example>\r\nDATA\r\nSubject: u\r\n\r\nx\r\n.\r\nQUIT\r\n' \
		-L -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${LHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_headers "$f" UTF8LMTP
}

@test "LMTP: a message over -s gets 552 5.3.4 once per recipient, nothing delivered" {
	x_maildir "$T/y.example/b"
	x_maildir "$T/y.example/c"
	x_session 'LHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\nSubject: big\r\n\r\n0123456789\r\n.\r\nQUIT\r\n' \
		-L -m "$T/%d/%u" -s 20
	x_eq "$XS" 0 "exit status"
	mapfile -t lhlo < <(x_ehlo_lines 20)
	x_expect "$GREETING" "${lhlo[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '552 5.3.4 Message too big' \
		'552 5.3.4 Message too big' '221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/y.example/b")" 0 "messages for b"
	x_eq "$(x_count "$T/y.example/c")" 0 "messages for c"
}

@test "LMTP: BDAT ... LAST gets one reply per recipient too" {
	x_maildir "$T/y.example/b"
	x_maildir "$T/y.example/c"
	: >"$T/in"
	x_in 'LHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\n'
	x_chunk 'Subject: chunked\r\n\r\n'
	x_chunk 'body\r\n' LAST
	x_in 'QUIT\r\n'
	x_run -L -m "$T/%d/%u"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${LHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 20 octets received' '250 2.0.0 <id> delivered' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	for u in b c; do
		f=$(x_one "$T/y.example/$u")
		x_headers "$f" LMTP
		x_body "$f" 'Subject: chunked\n\nbody\n'
	done
}

# three recipients b c d; the session is held open in the middle of the data while
# "$1" (a shell command) breaks one Maildir; $2 is the recipient that must fail alone
x_lmtp_break() {
	local action=$1 broken=$2 u i line n=0
	for u in b c d; do x_maildir "$T/y.example/$u"; done
	x_fifo_start -L -m "$T/%d/%u"
	printf 'LHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\nSubject: half\r\n\r\nfirst half\r\n' >&4
	x_wait_out '^354 '
	sleep 0.1
	eval "$action"
	printf 'second half\r\n.\r\nQUIT\r\n' >&4
	x_fifo_end
	x_eq "$XS" 0 "exit status"
	cat -A "$T/out" >&2
	mapfile -t lines < <(tr -d '\r' <"$T/out")
	x_eq "${#lines[@]}" 18 "reply lines"
	x_eq "${lines[0]}" "$GREETING" "greeting"
	x_eq "${lines[13]}" '354 End data with <CR><LF>.<CR><LF>' "reply to DATA"
	i=14
	for u in b c d; do
		line=${lines[i]}
		if [ "$u" = "$broken" ]; then
			[[ $line =~ ^4[0-9][0-9]\ 4\.[0-9]{1,3}\.[0-9]{1,3}\  ]] ||
				{ echo "recipient $u: expected a 4xx reply, got '$line'" >&2; return 1; }
		else
			[[ $line =~ ^250\ 2\.0\.0\ [0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\ delivered$ ]] ||
				{ echo "recipient $u: expected 250 ... delivered, got '$line'" >&2; return 1; }
			f=$(x_one "$T/y.example/$u")
			x_headers "$f" LMTP
			x_body "$f" 'Subject: half\n\nfirst half\nsecond half\n'
			x_size_ok "$f"
			x_eq "$(find "$T/y.example/$u/tmp" -type f | wc -l)" 0 "files left in $u/tmp"
		fi
		i=$((i + 1))
	done
	x_eq "${lines[17]}" '221 2.0.0 test.example closing' "reply to QUIT"
}

@test "LMTP: one recipient's Maildir removed during the data: that recipient alone gets 4xx" {
	x_lmtp_break 'rm -rf "$T/y.example/c"' c
	[ ! -e "$T/y.example/c" ]
}

@test "LMTP: one recipient's new/ replaced by a file during the data: that recipient alone gets 4xx" {
	x_lmtp_break 'rm -rf "$T/y.example/c/new" && echo not-a-dir >"$T/y.example/c/new"' c
	[ -f "$T/y.example/c/new" ]
	x_eq "$(find "$T/y.example/c/tmp" -type f | wc -l)" 0 "files left in c/tmp"
}

@test "LMTP: the FIRST recipient's Maildir removed during the data: it alone gets 4xx" {
	x_lmtp_break 'rm -rf "$T/y.example/b"' b
}

@test "LMTP: the last recipient's Maildir removed during the data: it alone gets 4xx" {
	x_lmtp_break 'rm -rf "$T/y.example/d"' d
}

@test "LMTP: python smtplib.LMTP over TCP (systemd-socket-activate) delivers to two recipients" {
	x_maildir "$T/y.example/b"
	x_maildir "$T/y.example/c"
	x_socket_activate -L -m "$T/%d/%u"
	"${PY:-python3}" - "$PORT" <<'PYEOF'
import smtplib, sys
s = smtplib.LMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.example", timeout=20)
code, msg = s.ehlo()              # LMTP's ehlo() sends LHLO
assert code == 250, (code, msg)
refused = s.sendmail("a@x.example", ["b@y.example", "c@y.example"],
                     b"Subject: py lmtp\r\n\r\nhello\r\n")
assert refused == {}, refused
# smtplib reads one reply after the data; LMTP sends one per recipient: the second is here
code, msg = s.getreply()
assert code == 250 and msg.endswith(b" delivered"), (code, msg)
code, msg = s.quit()
assert code == 221, (code, msg)
PYEOF
	for u in b c; do
		f=$(x_one "$T/y.example/$u")
		x_headers "$f" LMTP
		sed -n 2p "$f" | grep -qx 'Received: from client.example (\[127.0.0.1\])'
		x_body "$f" 'Subject: py lmtp\n\nhello\n'
		x_size_ok "$f"
	done
}

@test "LMTP: swaks --pipe --protocol LMTP, two recipients, two replies after the data" {
	command -v swaks >/dev/null || skip "swaks not installed"
	x_maildir "$T/y.example/b"
	x_maildir "$T/y.example/c"
	XS=0
	swaks --pipe "$(x_smtpd) -L -h test.example -m $T/%d/%u" --protocol LMTP \
		--ehlo client.example --from a@x.example --to b@y.example,c@y.example \
		--timeout 20 >"$T/swaks.out" 2>&1 || XS=$?
	cat "$T/swaks.out" >&2
	x_eq "$XS" 0 "swaks exit status"
	grep -qE '^ *-> LHLO client\.example' "$T/swaks.out"
	x_eq "$(grep -cE '^ *<- +250 2\.0\.0 [0-9]+\.M[0-9]+P[0-9]+Q[0-9]+ delivered' "$T/swaks.out")" 2 \
		"delivered replies"
	for u in b c; do
		f=$(x_one "$T/y.example/$u")
		x_headers "$f" LMTP
	done
}
