#!/usr/bin/env bats
# The ESMTP extensions smtpd offers after EHLO: PIPELINING (RFC 2920), SIZE (RFC 1870),
# 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034), SMTPUTF8 (RFC 6531), CHUNKING
# (RFC 3030) and HELP. Pipe mode for almost everything: exact replies, and the stored bytes
# compared with cmp; python smtplib over systemd-socket-activate for real clients.

load pipe

GREETING='220 test.example ESMTP smtpd'

# the reply to EHLO with -s $1 (default 26214400)
x_ehlo_lines() {
	printf '%s\n' '250-test.example' '250-PIPELINING' "250-SIZE ${1:-26214400}" '250-8BITMIME' \
		'250-ENHANCEDSTATUSCODES' '250-SMTPUTF8' '250-CHUNKING' '250 HELP'
}

setup() {
	T=$(mktemp -d)
	unset TCPREMOTEIP REMOTE_ADDR REMOTE_HOST
	[ -x "$(x_smtpd)" ] || { echo "no smtpd binary at $(x_smtpd)" >&2; return 1; }
	mapfile -t EHLO < <(x_ehlo_lines)
}

teardown() {
	local p
	if [ -f "$T/pids" ]; then
		while read -r p; do x_stop_pid "$p"; done <"$T/pids"
	fi
	local ok=0
	x_no_sanitizer_reports || ok=1
	rm -rf "$T"
	return $ok
}

# =============================== EHLO ===============================

@test "EHLO: advertises exactly PIPELINING SIZE 8BITMIME ENHANCEDSTATUSCODES SMTPUTF8 CHUNKING HELP" {
	x_session 'EHLO client.example\r\nQUIT\r\n' -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '221 2.0.0 test.example closing'
}

# =========================== PIPELINING ============================

@test "PIPELINING: two whole transactions in one write are answered in order" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<nobody>\r\nRCPT TO:<c@y.example>\r\nDATA\r\nSubject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<d@x.example>\r\nRCPT TO:<e@y.example>\r\nDATA\r\nSubject: two\r\n\r\nsecond\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'501 5.1.3 Bad recipient address syntax' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'250 2.1.0 Ok' '250 2.1.5 Ok' '354 End data with <CR><LF>.<CR><LF>' \
		'250 2.0.0 <id> delivered' '250 2.0.0 Ok' '250 2.0.0 Ok' '221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/Maildir")" 2 "messages stored"
	grep -lx 'Subject: one' "$T"/Maildir/new/* >/dev/null
	grep -lx 'Subject: two' "$T"/Maildir/new/* >/dev/null
	# the two ids in the replies are distinct and name the two files
	mapfile -t ids < <(grep -oE '^250 2\.0\.0 [^ ]+ delivered' "$T/out" | cut -d' ' -f3)
	x_eq "${#ids[@]}" 2 "delivered replies"
	[ "${ids[0]}" != "${ids[1]}" ]
	ls "$T/Maildir/new" | grep -q "^${ids[0]}\."
	ls "$T/Maildir/new" | grep -q "^${ids[1]}\."
}

@test "PIPELINING: the replies to one pipelined group leave in ONE write(2) (strace)" {
	command -v strace >/dev/null || skip "strace not installed"
	# LeakSanitizer cannot run under ptrace; leaks are checked by the other tests
	export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
	# bash's printf writes a pipe line by line; cat writes each small file in one write(2)
	printf 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n' >"$T/group"
	printf 'Subject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n' >"$T/rest"
	XS=0
	{
		cat "$T/group"
		# the rest only once the group has been answered
		for i in $(seq 500); do
			grep -q '^354 ' "$T/out" 2>/dev/null && break
			sleep 0.02
		done
		cat "$T/rest"
	} | strace -f -e trace=write,writev -s 65535 -o "$T/trace" \
		"$(x_smtpd)" -h test.example -m "$T/Maildir" >"$T/out" 2>"$T/err" || XS=$?
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	grep -E '^([0-9]+ +)?writev?\(1,' "$T/trace" >"$T/w1" || true
	cat "$T/w1" >&2
	# the greeting, the group EHLO..DATA, then the final reply and QUIT's
	x_eq "$(wc -l <"$T/w1")" 3 "writes to fd 1"
	sed -n 1p "$T/w1" | grep -qF '"220 test.example ESMTP smtpd\r\n"'
	sed -n 2p "$T/w1" | grep -qF '"250-test.example\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 HELP\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"'
	sed -n 3p "$T/w1" | grep -qE '"250 2\.0\.0 [^ ]+ delivered\\r\\n221 2\.0\.0 test\.example closing\\r\\n"'
}

# ============================== SIZE ===============================

@test "SIZE: EHLO shows 250-SIZE <n> from -s" {
	x_session 'EHLO c\r\nQUIT\r\n' -m "$T/Maildir" -s 12345
	x_eq "$XS" 0 "exit status"
	mapfile -t ehlo < <(x_ehlo_lines 12345)
	x_expect "$GREETING" "${ehlo[@]}" '221 2.0.0 test.example closing'
}

@test "SIZE: MAIL FROM SIZE=n over -s is refused at once with 552; SIZE=-s exactly is fine" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> SIZE=1001\r\nRCPT TO:<b@y.example>\r\nMAIL FROM:<a@x.example> SIZE=99999999999999999999\r\nMAIL FROM:<a@x.example> size=1000\r\nRCPT TO:<b@y.example>\r\nQUIT\r\n' \
		-m "$T/Maildir" -s 1000
	x_eq "$XS" 0 "exit status"
	mapfile -t ehlo < <(x_ehlo_lines 1000)
	x_expect "$GREETING" "${ehlo[@]}" '552 5.3.4 Message too big' '503 5.5.1 MAIL first' \
		'552 5.3.4 Message too big' '250 2.1.0 Ok' '250 2.1.5 Ok' '221 2.0.0 test.example closing'
}

@test "SIZE: malformed values: SIZE=abc SIZE=-1 SIZE (no value) 21 digits -> 501 Bad SIZE value; SIZE= -> 501 syntax" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> SIZE=abc\r\nMAIL FROM:<a@x.example> SIZE=\r\nMAIL FROM:<a@x.example> SIZE=-1\r\nMAIL FROM:<a@x.example> SIZE\r\nMAIL FROM:<a@x.example> SIZE=100000000000000000000\r\nMAIL FROM:<a@x.example> SIZE=1x\r\nMAIL FROM:<a@x.example> SIZE=10\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '501 5.5.4 Bad SIZE value' \
		'501 5.5.4 Syntax error in parameters' '501 5.5.4 Bad SIZE value' \
		'501 5.5.4 Bad SIZE value' '501 5.5.4 Bad SIZE value' '501 5.5.4 Bad SIZE value' \
		'250 2.1.0 Ok' '221 2.0.0 test.example closing'
}

@test "SIZE: a message over -s in DATA is read to its end, then 552, nothing delivered, session goes on" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: big\r\n\r\n0123456789012345678901234567890123456789\r\nQUIT\r\nRSET\r\n.\r\nNOOP\r\nQUIT\r\n' \
		-m "$T/Maildir" -s 30
	x_eq "$XS" 0 "exit status"
	mapfile -t ehlo < <(x_ehlo_lines 30)
	x_expect "$GREETING" "${ehlo[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '552 5.3.4 Message too big' '250 2.0.0 Ok' \
		'221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/Maildir")" 0 "messages stored"
	x_eq "$(find "$T/Maildir/tmp" -type f | wc -l)" 0 "files left in tmp/"
}

@test "SIZE: counted with CRLF as 2 after dot-unstuffing: exactly -s octets ok, one more 552" {
	# "Subject: x\r\n" 12 + "\r\n" 2 + ".abc\r\n" 6 (sent stuffed as "..abc") = 20
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: x\r\n\r\n..abc\r\n.\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: x\r\n\r\n..abcd\r\n.\r\nQUIT\r\n' \
		-m "$T/Maildir" -s 20
	x_eq "$XS" 0 "exit status"
	mapfile -t ehlo < <(x_ehlo_lines 20)
	x_expect "$GREETING" "${ehlo[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'250 2.1.0 Ok' '250 2.1.5 Ok' '354 End data with <CR><LF>.<CR><LF>' \
		'552 5.3.4 Message too big' '221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_body "$f" 'Subject: x\n\n.abc\n'
}

# ============================= 8BITMIME ============================

@test "8BITMIME: BODY=7BIT and BODY=8BITMIME accepted, BODY=BINARYMIME and bad BODY values refused" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> BODY=7BIT\r\nRSET\r\nMAIL FROM:<a@x.example> BODY=8BITMIME\r\nRSET\r\nMAIL FROM:<a@x.example> body=8bitmime SIZE=10\r\nRSET\r\nMAIL FROM:<a@x.example> BODY=BINARYMIME\r\nMAIL FROM:<a@x.example> BODY=8BIT\r\nMAIL FROM:<a@x.example> BODY\r\nMAIL FROM:<a@x.example> BODY=7BIT BODY=7BIT\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.0.0 Ok' '250 2.1.0 Ok' '250 2.0.0 Ok' \
		'250 2.1.0 Ok' '250 2.0.0 Ok' '501 5.5.4 Bad BODY value' '501 5.5.4 Bad BODY value' \
		'501 5.5.4 Bad BODY value' '501 5.5.4 Syntax error in parameters' \
		'221 2.0.0 test.example closing'
}

@test "8BITMIME: 8-bit bytes in the data are stored untouched" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> BODY=8BITMIME\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncaf\xc3\xa9 \xff\xfe\x80 \xe2\x82\xac\r\n\xc3\xa9\r\n.\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_headers "$f" ESMTP
	x_body "$f" 'Subject: =?utf-8?q?caf=C3=A9?=\n\ncaf\xc3\xa9 \xff\xfe\x80 \xe2\x82\xac\n\xc3\xa9\n'
	x_size_ok "$f"
}

@test "8BITMIME: python smtplib sendmail(BODY=8BITMIME) with 8-bit bytes through systemd-socket-activate" {
	x_socket_activate -m "$T/Maildir"
	"${PY:-python3}" - "$PORT" <<'EOF'
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.example", timeout=20) as s:
    s.ehlo()
    assert s.has_extn("8bitmime"), s.esmtp_features
    refused = s.sendmail("a@x.example", ["b@y.example"],
                         b"Subject: py\r\n\r\nh\xc3\xa9llo \xff\r\n", mail_options=["BODY=8BITMIME"])
    assert refused == {}, refused
EOF
	f=$(x_one "$T/Maildir")
	x_headers "$f" ESMTP
	sed -n 2p "$f" | grep -qx 'Received: from client.example (\[127.0.0.1\])'
	x_body "$f" 'Subject: py\n\nh\xc3\xa9llo \xff\n'
	x_size_ok "$f"
}

# ======================= ENHANCEDSTATUSCODES ========================

@test "ENHANCEDSTATUSCODES: every 2xx/4xx/5xx reply but the greeting and HELO/EHLO carries a matching code" {
	printf -- 'EHLO c.example\r\nHELP\r\nNOOP\r\nVRFY b\r\nEXPN list\r\nFOO\r\nRCPT TO:<b@y.example>\r\nMAIL FROM:<a@x.example> SIZE=100 BODY=8BITMIME\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@@y>\r\nRCPT TO:<b@y.example> FOO=1\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\nSubject: e\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@x.example> SIZE=999999999\r\nMAIL FROM:<a@x.example> BODY=BINARYMIME\r\nMAIL FROM:<j\xc3\xb8@x.example>\r\nMAIL FROM:<a@x.example>\r\nDATA\r\nRSET\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nBDAT 4 LAST\r\nabc\nHELO c.example\r\nEHLO c.example\r\nQUIT\r\n' >"$T/in"
	x_run -m "$T/Maildir" -s 1000 -r 1
	x_eq "$XS" 0 "exit status"
	cat -A "$T/out" >&2
	local n=0 checked=0 exempt=0 bad=0 line
	while IFS= read -r line; do
		n=$((n + 1))
		line=${line%$'\r'}
		if [ $n -eq 1 ] && [ "$line" = "$GREETING" ]; then
			exempt=$((exempt + 1))
		elif [[ $line =~ ^250[\ -](test\.example|PIPELINING|SIZE\ [0-9]+|8BITMIME|ENHANCEDSTATUSCODES|SMTPUTF8|CHUNKING|HELP)$ ]]; then
			exempt=$((exempt + 1)) # the reply to HELO or EHLO
		elif [[ $line =~ ^3[0-9][0-9][\ -] ]]; then
			exempt=$((exempt + 1)) # RFC 2034 section 4: 3xx replies are not included
		elif [[ $line =~ ^([245])[0-9][0-9][\ -]([245])\.[0-9]{1,3}\.[0-9]{1,3}\  ]] &&
			[ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then
			checked=$((checked + 1))
		else
			echo "reply without a matching enhanced status code: '$line'" >&2
			bad=$((bad + 1))
		fi
	done <"$T/out"
	x_eq "$bad" 0 "replies without an enhanced code"
	# greeting + 8 EHLO lines + 354 + HELO's line + 8 EHLO lines
	x_eq "$exempt" 19 "greeting/HELO/EHLO/3xx lines"
	x_eq "$checked" 23 "replies with an enhanced code"
	x_eq "$(x_count "$T/Maildir")" 2 "messages stored"
}

# ============================= SMTPUTF8 ============================

@test "SMTPUTF8: UTF-8 sender with SMTPUTF8 and a UTF-8 recipient are accepted; Received says UTF8SMTP" {
	x_session 'EHLO c\r\nMAIL FROM:<j\xc3\xb8ran@x.example> SMTPUTF8\r\nRCPT TO:<\xc7\xbf@y.example>\r\nDATA\r\nSubject: utf8\r\n\r\nhej\r\n.\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_headers "$f" UTF8SMTP
	sed -n 1p "$f" | cmp - <(printf 'Return-Path: <j\xc3\xb8ran@x.example>\n')
	x_body "$f" 'Subject: utf8\n\nhej\n'
}

@test "SMTPUTF8: a -m %d/%u template maps a UTF-8 local part to a UTF-8 directory (ASCII lower-cased only)" {
	x_maildir "$T/y.example/$(printf '\xc3\x85bc')"   # Åbc
	x_maildir "$T/y.example/$(printf '\xc7\xbf')"     # ǿ
	x_maildir "$T/y.example/$(printf '\xc3\xa5bc')"   # åbc: must NOT be chosen for ÅBC
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> SMTPUTF8\r\nRCPT TO:<\xc3\x85BC@Y.example>\r\nRCPT TO:<\xc7\xbf+tag@y.example>\r\nRCPT TO:<\xc3\x85bd@y.example>\r\nDATA\r\nSubject: dirs\r\n\r\nx\r\n.\r\nQUIT\r\n' \
		-m "$T/%d/%u"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.1.5 Ok' \
		'550 5.1.1 No such user' '354 End data with <CR><LF>.<CR><LF>' \
		'250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	f=$(x_one "$T/y.example/$(printf '\xc3\x85bc')")
	x_headers "$f" UTF8SMTP
	x_body "$f" 'Subject: dirs\n\nx\n'
	f=$(x_one "$T/y.example/$(printf '\xc7\xbf')")
	x_body "$f" 'Subject: dirs\n\nx\n'
	x_eq "$(x_count "$T/y.example/$(printf '\xc3\xa5bc')")" 0 "messages in the lower-cased åbc"
}

@test "SMTPUTF8: a non-ASCII address without the SMTPUTF8 parameter -> 553 5.6.7" {
	x_session 'EHLO c\r\nMAIL FROM:<j\xc3\xb8ran@x.example>\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<\xc7\xbf@y.example>\r\nRCPT TO:<b@\xc3\xa9.example>\r\nRSET\r\nMAIL FROM:<a@x.example> BODY=8BITMIME\r\nRCPT TO:<\xc7\xbf@y.example>\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '553 5.6.7 Non-ASCII address needs SMTPUTF8' \
		'250 2.1.0 Ok' '553 5.6.7 Non-ASCII address needs SMTPUTF8' \
		'553 5.6.7 Non-ASCII address needs SMTPUTF8' '250 2.0.0 Ok' '250 2.1.0 Ok' \
		'553 5.6.7 Non-ASCII address needs SMTPUTF8' '221 2.0.0 test.example closing'
}

@test "SMTPUTF8: SMTPUTF8 holds for one transaction only; SMTPUTF8=value is a syntax error" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> SMTPUTF8\r\nRCPT TO:<\xc7\xbf@y.example>\r\nRSET\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<\xc7\xbf@y.example>\r\nRSET\r\nMAIL FROM:<a@x.example> SMTPUTF8=yes\r\nMAIL FROM:<a@x.example> SMTPUTF8 SMTPUTF8\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.0.0 Ok' \
		'250 2.1.0 Ok' '553 5.6.7 Non-ASCII address needs SMTPUTF8' '250 2.0.0 Ok' \
		'501 5.5.4 Syntax error in parameters' '501 5.5.4 Syntax error in parameters' \
		'221 2.0.0 test.example closing'
}

@test "SMTPUTF8: invalid UTF-8 in MAIL FROM (\\xc3\\x28, overlong \\xc0\\xaf, surrogate \\xed\\xa0\\x80) -> 553 5.6.7" {
	x_session 'EHLO c\r\nMAIL FROM:<a\xc3\x28b@x.example> SMTPUTF8\r\nMAIL FROM:<a\xc0\xafb@x.example> SMTPUTF8\r\nMAIL FROM:<a\xed\xa0\x80b@x.example> SMTPUTF8\r\nMAIL FROM:<ab@\xff.example> SMTPUTF8\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '553 5.6.7 Invalid UTF-8 in address' \
		'553 5.6.7 Invalid UTF-8 in address' '553 5.6.7 Invalid UTF-8 in address' \
		'553 5.6.7 Invalid UTF-8 in address' '221 2.0.0 test.example closing'
}

@test "SMTPUTF8: invalid UTF-8 in RCPT TO (\\xc3\\x28, overlong \\xc0\\xaf, surrogate \\xed\\xa0\\x80) -> 553 5.6.7" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example> SMTPUTF8\r\nRCPT TO:<b\xc3\x28c@y.example>\r\nRCPT TO:<b\xc0\xafc@y.example>\r\nRCPT TO:<b\xed\xa0\x80c@y.example>\r\nRCPT TO:<bc@\xff.example>\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '553 5.6.7 Invalid UTF-8 in address' \
		'553 5.6.7 Invalid UTF-8 in address' '553 5.6.7 Invalid UTF-8 in address' \
		'553 5.6.7 Invalid UTF-8 in address' '221 2.0.0 test.example closing'
}

@test "SMTPUTF8: python smtplib send_message with UTF-8 addresses through systemd-socket-activate" {
	x_maildir "$T/y.example/$(printf '\xc7\xbf')"
	x_socket_activate -m "$T/%d/%u"
	"${PY:-python3}" - "$PORT" <<'EOF'
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "j\u00f8ran@x.example"
m["To"] = "\u01ff@y.example"
m["Subject"] = "py utf8"
m.set_content("hej d\u00e5\n")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.example", timeout=20) as s:
    s.ehlo()
    assert s.has_extn("smtputf8"), s.esmtp_features
    refused = s.send_message(m)   # adds SMTPUTF8 and BODY=8BITMIME by itself
    assert refused == {}, refused
EOF
	f=$(x_one "$T/y.example/$(printf '\xc7\xbf')")
	x_headers "$f" UTF8SMTP
	sed -n 1p "$f" | cmp - <(printf 'Return-Path: <j\xc3\xb8ran@x.example>\n')
	grep -qx "$(printf 'To: \xc7\xbf@y.example')" "$f"
	grep -q "$(printf 'hej d\xc3\xa5')" "$f"
	x_size_ok "$f"
}

# ============================= CHUNKING ============================

@test "CHUNKING: BDAT chunks then BDAT LAST: octet totals, then <id> delivered; stored as sent" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: c\r\n'
	x_chunk '\r\nfirst '
	x_chunk 'line\r\nsecond line\r\n' LAST
	x_in 'QUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 12 octets received' '250 2.0.0 20 octets received' \
		'250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_headers "$f" ESMTP
	x_body "$f" 'Subject: c\n\nfirst line\nsecond line\n'
	x_size_ok "$f"
	id=$(grep -oE '^250 2\.0\.0 [^ ]+ delivered' "$T/out" | cut -d' ' -f3)
	[[ $(basename "$f") == "$id".* ]]
}

@test "CHUNKING: exactly n octets, no dot-stuffing: CRLF.CRLF, leading dots and commands inside a chunk are data" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: d\r\n\r\nline\r\n.\r\n..two dots\r\nQUIT\r\nRSET\r\n'
	x_chunk '.\r\n' LAST
	x_in 'NOOP\r\nQUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 47 octets received' '250 2.0.0 <id> delivered' '250 2.0.0 Ok' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_body "$f" 'Subject: d\n\nline\n.\n..two dots\nQUIT\nRSET\n.\n'
}

@test "CHUNKING: BDAT 0 LAST alone stores our header fields and the empty line after them" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nBDAT 0 LAST\r\nQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_headers "$f" ESMTP
	x_eq "$(wc -l <"$f")" 5 "lines in the stored file"
	x_body "$f" '\n'
	x_size_ok "$f"
}

@test "CHUNKING: chunks then BDAT 0 LAST; a message not ending in a newline gets a final LF" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: n\r\n\r\nno newline'
	x_in 'BDAT 0 LAST\r\n'
	x_in 'MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'hello, no header' LAST
	x_in 'QUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 24 octets received' '250 2.0.0 <id> delivered' '250 2.1.0 Ok' \
		'250 2.1.5 Ok' '250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/Maildir")" 2 "messages stored"
	f=$(grep -lx 'Subject: n' "$T"/Maildir/new/*)
	x_body "$f" 'Subject: n\n\nno newline\n'
	x_size_ok "$f"
	f=$(grep -l 'hello, no header' "$T"/Maildir/new/*)
	# not a header field: an empty line after ours keeps it body
	x_body "$f" '\nhello, no header\n'
	x_size_ok "$f"
}

@test "CHUNKING: DATA after BDAT in one transaction -> 503 5.5.1 DATA not allowed after BDAT" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: b\r\n\r\n'
	x_in 'DATA\r\n'
	x_chunk 'after DATA\r\n' LAST
	x_in 'QUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 14 octets received' '503 5.5.1 DATA not allowed after BDAT' \
		'250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_body "$f" 'Subject: b\n\nafter DATA\n'
}

@test "CHUNKING: chunks past -s are still read, then 552 5.3.4; nothing delivered; the next transaction works" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: x\r\n\r\n'
	x_chunk 'NOOP\r\nQUIT\r\n'
	x_chunk 'RSET\r\n' LAST
	x_in 'MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: 20 octets\r\n' LAST
	x_in 'MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: 21 octets.\r\n' LAST
	x_in 'QUIT\r\n'
	x_run -m "$T/Maildir" -s 20
	x_eq "$XS" 0 "exit status"
	mapfile -t ehlo < <(x_ehlo_lines 20)
	x_expect "$GREETING" "${ehlo[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 14 octets received' '552 5.3.4 Message too big' '552 5.3.4 Message too big' \
		'250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.0.0 <id> delivered' \
		'250 2.1.0 Ok' '250 2.1.5 Ok' '552 5.3.4 Message too big' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_body "$f" 'Subject: 20 octets\n'
	x_eq "$(find "$T/Maildir/tmp" -type f | wc -l)" 0 "files left in tmp/"
}

@test "CHUNKING: a chunk over -s -> 552 5.3.4 after the whole chunk is read; later chunks discarded with 552" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: big\r\n\r\nQUIT\r\nNOOP\r\n0123456789\r\n'
	x_chunk 'RSET\r\n'
	x_chunk 'QUIT\r\n' LAST
	x_in 'NOOP\r\nQUIT\r\n'
	x_run -m "$T/Maildir" -s 20
	x_eq "$XS" 0 "exit status"
	mapfile -t ehlo < <(x_ehlo_lines 20)
	x_expect "$GREETING" "${ehlo[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'552 5.3.4 Message too big' '552 5.3.4 Message too big' '552 5.3.4 Message too big' \
		'250 2.0.0 Ok' '221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/Maildir")" 0 "messages stored"
	x_eq "$(find "$T/Maildir/tmp" -type f | wc -l)" 0 "files left in tmp/"
}

@test "CHUNKING: bare CR and bare LF stored as received, CRLF as LF, also across a chunk boundary" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: b\r\n\r\na\rb\nc\r'
	x_chunk '\nd\r'
	x_chunk 'e\r\n\n' LAST
	x_in 'QUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 20 octets received' '250 2.0.0 23 octets received' \
		'250 2.0.0 <id> delivered' '221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_body "$f" 'Subject: b\n\na\rb\nc\nd\re\n\n'
	x_size_ok "$f"
}

@test "CHUNKING: pipelined BDAT chunks (several in one write), two messages, answered in order" {
	: >"$T/in"
	x_in 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n'
	x_chunk 'Subject: p1\r\n'
	x_chunk '\r\none\r\n'
	x_chunk 'two\r\n' LAST
	x_in 'MAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\n'
	x_chunk 'Subject: p2\r\n\r\nthree\r\n' LAST
	x_in 'NOOP\r\nQUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'250 2.0.0 13 octets received' '250 2.0.0 20 octets received' \
		'250 2.0.0 <id> delivered' '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.0.0 <id> delivered' \
		'250 2.0.0 Ok' '221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/Maildir")" 2 "messages stored"
	x_body "$(grep -lx 'Subject: p1' "$T"/Maildir/new/*)" 'Subject: p1\n\none\ntwo\n'
	x_body "$(grep -lx 'Subject: p2' "$T"/Maildir/new/*)" 'Subject: p2\n\nthree\n'
}

@test "CHUNKING: BDAT without MAIL: the chunk is consumed (its bytes are no commands) and 503" {
	: >"$T/in"
	x_chunk 'QUIT\r\n'
	x_in 'EHLO c\r\n'
	x_chunk 'NOOP\r\nQUIT\r\n'
	x_chunk 'RSET\r\n' LAST
	x_in 'MAIL FROM:<a@x.example>\r\n'
	x_chunk 'NOOP\r\n'
	x_in 'RCPT TO:<nobody>\r\n'
	x_chunk 'NOOP\r\n' LAST
	x_in 'QUIT\r\n'
	x_run -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" '503 5.5.1 Send HELO/EHLO first' "${EHLO[@]}" \
		'503 5.5.1 MAIL first' '503 5.5.1 MAIL first' '250 2.1.0 Ok' '503 5.5.1 RCPT first' \
		'501 5.1.3 Bad recipient address syntax' '554 5.5.1 No valid recipients' \
		'221 2.0.0 test.example closing'
	x_eq "$(x_count "$T/Maildir")" 0 "messages stored"
}

@test "CHUNKING: malformed BDAT arguments -> 501 5.5.4 Syntax: BDAT <size> [LAST]" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nBDAT x\r\nBDAT -1\r\nBDAT 5 LASTX\r\nBDAT 5 LAST more\r\nBDAT 5x\r\nBDAT 123456789012345678901\r\nBDAT\r\nBDAT 3 last\r\nabcQUIT\r\n' \
		-m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'501 5.5.4 Syntax: BDAT <size> [LAST]' '501 5.5.4 Syntax: BDAT <size> [LAST]' \
		'501 5.5.4 Syntax: BDAT <size> [LAST]' '501 5.5.4 Syntax: BDAT <size> [LAST]' \
		'501 5.5.4 Syntax: BDAT <size> [LAST]' '501 5.5.4 Syntax: BDAT <size> [LAST]' \
		'501 5.5.4 Argument required' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_body "$f" '\nabc\n'
}

# =============================== HELP ==============================

@test "HELP lists the verbs (214 2.0.0 Commands: ...), with or without an argument" {
	x_session 'HELP\r\nEHLO c\r\nHELP DATA\r\nQUIT\r\n' -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" '214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT' \
		"${EHLO[@]}" '214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT' \
		'221 2.0.0 test.example closing'
}
