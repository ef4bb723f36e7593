#!/usr/bin/env bats
# LMTP (RFC 2033, -L): the LMTP greeting, LHLO instead of HELO/EHLO, and after the data one
# reply per accepted recipient in RCPT order, each recipient's delivery standing alone.
# Pipe mode, a FIFO to change the file system in the middle of a session, python
# smtplib.LMTP over TCP (systemd-socket-activate) and swaks --protocol LMTP.

load pipe

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
