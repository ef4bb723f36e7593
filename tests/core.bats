#!/usr/bin/env bats
# The core of RFC 5321 as smtpd speaks it, through piped transcripts: verbs and their exact
# replies, sequence and syntax errors, paths, every limit at its boundary and one past it,
# line endings and smuggling, templates and path escapes, the stored file byte for byte.

setup() {
	T=$(mktemp -d)
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	MD=$T/Maildir
}

teardown() {
	rm -rf "$T"
}

# run_smtpd INPUT [ARGS...]: pipes INPUT (printf format, so \r\n are real) into smtpd.
# Sets OUT (replies), ERR (stderr), RC (exit status).
run_smtpd() {
	local input=$1
	shift
	printf "$input" > "$T/in"
	RC=0
	timeout 60 "$SMTPD" -h test.example "$@" < "$T/in" > "$T/out" 2> "$T/err" || RC=$?
	OUT=$(cat "$T/out")
	ERR=$(cat "$T/err")
}

# expect_replies LINE...: the replies are exactly these lines, each ending in CRLF.
expect_replies() {
	printf '%s\r\n' "$@" > "$T/want"
	if ! cmp -s "$T/want" "$T/out"; then
		diff <(cat -A "$T/want") <(cat -A "$T/out") || true
		return 1
	fi
}

# Replies with the volatile message id replaced by ID.
replies_with_id() {
	sed -E 's/[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+/ID/' "$T/out" | tr -d '\r'
}

new_files() {
	ls "$1/new" 2>/dev/null | wc -l
}

# The stored message without our Return-Path and Received fields.
body_of() {
	awk 'done { print; next } NR == 1 { next } /^Received:/ { inrcv = 1; next }
	     inrcv && /^\t/ { next } { done = 1; print }' "$1"
}

EHLO='EHLO c.example\r\n'
EHLO_REPLIES=(
	'250-test.example' '250-PIPELINING' '250-SIZE 26214400' '250-8BITMIME'
	'250-ENHANCEDSTATUSCODES' '250-SMTPUTF8' '250-CHUNKING' '250 HELP'
)
GREETING='220 test.example ESMTP smtpd'

@test "verbs: a whole session with every verb, exact replies, exit 0" {
	run_smtpd "${EHLO}HELO c.example\r\nNOOP\r\nNOOP anything\r\nVRFY bob\r\nHELP\r\nMAIL FROM:<a@x.example>\r\nRSET\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" "${EHLO_REPLIES[@]}" '250 test.example' '250 2.0.0 Ok' '250 2.0.0 Ok' \
		'252 2.0.0 Will not verify; send mail to find out' \
		'214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT' \
		'250 2.1.0 Ok' '250 2.0.0 Ok' '221 2.0.0 test.example closing'
	[ "$RC" -eq 0 ]
}

@test "verbs: case-insensitive" {
	run_smtpd "ehlo c\r\nmail from:<a@x.example>\r\nrcpt to:<b@y.example>\r\ndata\r\nx\r\n.\r\nquit\r\n" -m "$MD"
	[ "$(replies_with_id | tail -2 | head -1)" = "250 2.0.0 ID delivered" ]
	[ "$(new_files "$MD")" -eq 1 ]
}

@test "verbs: VRFY answers the same whether the user exists or not" {
	mkdir -p "$T/y.example/bob/"{cur,new,tmp}
	run_smtpd "HELO c\r\nVRFY bob@y.example\r\nVRFY nobody@y.example\r\nQUIT\r\n" -m "$T/%d/%u"
	expect_replies "$GREETING" '250 test.example' \
		'252 2.0.0 Will not verify; send mail to find out' \
		'252 2.0.0 Will not verify; send mail to find out' '221 2.0.0 test.example closing'
}

@test "verbs: EXPN, TURN, SEND, SOML, SAML, STARTTLS, AUTH, ETRN -> 502 5.5.1" {
	run_smtpd "HELO c\r\nEXPN list\r\nTURN\r\nSEND FROM:<a@b>\r\nSOML FROM:<a@b>\r\nSAML FROM:<a@b>\r\nSTARTTLS\r\nAUTH PLAIN AGJvYgBwdw==\r\nETRN example.org\r\nQUIT\r\n" -m "$MD"
	[ "$(grep -c '^502 5.5.1 Command not implemented' "$T/out")" -eq 8 ]
	[ "$RC" -eq 0 ]
}

@test "verbs: unknown verb -> 500 5.5.1, the session goes on" {
	run_smtpd "HELO c\r\nFROB x\r\nNOOP\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '500 5.5.1 Command unrecognized' \
		'250 2.0.0 Ok' '221 2.0.0 test.example closing'
}

@test "sequence: MAIL before HELO, RCPT before MAIL, DATA before RCPT, nested MAIL -> 503" {
	run_smtpd "MAIL FROM:<a@x>\r\nHELO c\r\nRCPT TO:<b@y>\r\nDATA\r\nMAIL FROM:<a@x>\r\nDATA\r\nMAIL FROM:<a@x>\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '503 5.5.1 Send HELO/EHLO first' '250 test.example' \
		'503 5.5.1 MAIL first' '503 5.5.1 MAIL first' '250 2.1.0 Ok' '503 5.5.1 RCPT first' \
		'503 5.5.1 Nested MAIL command' '221 2.0.0 test.example closing'
}

@test "sequence: DATA after every RCPT failed (pipelined) -> 554 5.5.1 No valid recipients" {
	mkdir -p "$T/y.example"
	run_smtpd "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<nobody@y.example>\r\nDATA\r\nQUIT\r\n" -m "$T/%d/%u"
	expect_replies "$GREETING" "${EHLO_REPLIES[@]}" '250 2.1.0 Ok' '550 5.1.1 No such user' \
		'554 5.5.1 No valid recipients' '221 2.0.0 test.example closing'
}

@test "sequence: several transactions in one session, RSET and EHLO reset a transaction" {
	run_smtpd "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\none\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRSET\r\nDATA\r\nMAIL FROM:<a@x>\r\nEHLO c\r\nRCPT TO:<b@y>\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n" -m "$MD"
	replies_with_id | grep -v '^250-' > "$T/got"
	printf '%s\n' "$GREETING" '250 HELP' '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 ID delivered' '250 2.1.0 Ok' \
		'250 2.1.5 Ok' '250 2.0.0 Ok' '503 5.5.1 MAIL first' '250 2.1.0 Ok' '250 HELP' \
		'503 5.5.1 MAIL first' '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 ID delivered' \
		'221 2.0.0 test.example closing' > "$T/want"
	diff "$T/want" "$T/got"
	[ "$(new_files "$MD")" -eq 2 ]
}

@test "syntax: HELO without a name, MAIL without brackets, bad recipient, arguments where none belong" {
	run_smtpd "HELO\r\nEHLO c\r\nMAIL FROM:a@x.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@>\r\nRCPT TO:b@y\r\nRSET x\r\nDATA x\r\nQUIT x\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '501 5.5.4 Argument required' "${EHLO_REPLIES[@]}" \
		'501 5.1.7 Bad sender address syntax' '250 2.1.0 Ok' \
		'501 5.1.3 Bad recipient address syntax' '501 5.1.3 Bad recipient address syntax' \
		'501 5.5.4 No arguments allowed' '501 5.5.4 No arguments allowed' \
		'501 5.5.4 No arguments allowed' '221 2.0.0 test.example closing'
}

@test "syntax: unknown MAIL and RCPT parameters -> 555 5.5.4; parameters after HELO -> 555" {
	run_smtpd "EHLO c\r\nMAIL FROM:<a@x> FOO=bar\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y> NOTIFY=NEVER\r\nRSET\r\nHELO c\r\nMAIL FROM:<a@x> SIZE=10\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" "${EHLO_REPLIES[@]}" '555 5.5.4 Unsupported parameter' \
		'250 2.1.0 Ok' '555 5.5.4 Unsupported parameter' '250 2.0.0 Ok' '250 test.example' \
		'555 5.5.4 Unsupported parameter' '221 2.0.0 test.example closing'
}

@test "syntax: a space after the colon is accepted (the one leniency)" {
	run_smtpd "HELO c\r\nMAIL FROM: <a@x.example>\r\nRCPT TO: <b@y.example>\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'221 2.0.0 test.example closing'
}

@test "paths: <>, <postmaster>, <Postmaster>, source route, quoted local part, address literals" {
	mkdir -p "$T/test.example/postmaster/"{cur,new,tmp} "$T/y.example/u/"{cur,new,tmp} \
		"$T/y.example/john doe/"{cur,new,tmp}
	run_smtpd "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<@a.example,@b.example:u@y.example>\r\nRCPT TO:<\"john doe\"@y.example>\r\nDATA\r\nSubject: p\r\n\r\nx\r\n.\r\nQUIT\r\n" -m "$T/%d/%u"
	[ "$(grep -c '^250 2.1.5 Ok' "$T/out")" -eq 4 ]
	[ "$(new_files "$T/test.example/postmaster")" -eq 1 ]
	[ "$(new_files "$T/y.example/u")" -eq 1 ]
	[ "$(new_files "$T/y.example/john doe")" -eq 1 ]
	head -1 "$T"/y.example/u/new/* | grep -qx 'Return-Path: <>'
	run_smtpd "HELO c\r\nMAIL FROM:<a@[192.0.2.1]>\r\nRCPT TO:<u@[192.0.2.1]>\r\nRCPT TO:<u@[IPv6:2001:db8::1]>\r\nRCPT TO:<u@[300.1.1.1]>\r\nRCPT TO:<u@[IPv6:zz]>\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.1.5 Ok' \
		'501 5.1.3 Bad recipient address syntax' '501 5.1.3 Bad recipient address syntax' \
		'221 2.0.0 test.example closing'
}

@test "paths: local part 64 octets ok, 65 refused; a path of 256 octets ok, 257 refused" {
	local l64 l65 d252 d253
	l64=$(printf 'l%.0s' $(seq 64))
	l65=${l64}l
	# <b@ + domain + > : a 252-octet domain makes a 256-octet path.
	d252="$(printf 'a%.0s' $(seq 63)).$(printf 'b%.0s' $(seq 63)).$(printf 'c%.0s' $(seq 63)).$(printf 'd%.0s' $(seq 60))"
	d253="${d252}d"
	[ ${#d252} -eq 252 ]
	run_smtpd "HELO c\r\nMAIL FROM:<$l64@x.example>\r\nRCPT TO:<$l65@y.example>\r\nRCPT TO:<$l64@y.example>\r\nRCPT TO:<b@$d253>\r\nRCPT TO:<b@$d252>\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '250 2.1.0 Ok' \
		'501 5.1.3 Bad recipient address syntax' '250 2.1.5 Ok' \
		'501 5.1.3 Bad recipient address syntax' '250 2.1.5 Ok' '221 2.0.0 test.example closing'
}

@test "paths: an address cut at the line end is refused, whatever an earlier line left in memory" {
	# The NOOP leaves "stale@y.example>" where the next line's text ends; the parser once read
	# past that end (strchr() matched the NUL) and took "<ab" for <ab@y.example>. Found by fuzzing.
	run_smtpd "HELO c\r\nMAIL FROM:<a@x.example>\r\nNOOP qqqqqqqstale@y.example>\r\nRCPT TO:<ab\r\nRCPT TO:<a.b\r\nRCPT TO:<\"ab\"\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '250 2.1.0 Ok' '250 2.0.0 Ok' \
		'501 5.1.3 Bad recipient address syntax' '501 5.1.3 Bad recipient address syntax' \
		'501 5.1.3 Bad recipient address syntax' '221 2.0.0 test.example closing'
}

@test "limits: a 512-octet command line is taken, 513 gets 500 5.5.2 and the session goes on" {
	local pad510 pad511
	pad510=$(printf 'x%.0s' $(seq 505))
	pad511=${pad510}x
	# "NOOP " + 505 = 510 octets + CRLF = 512
	run_smtpd "HELO c\r\nNOOP $pad510\r\nNOOP $pad511\r\nNOOP\r\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '250 2.0.0 Ok' '500 5.5.2 Line too long' \
		'250 2.0.0 Ok' '221 2.0.0 test.example closing'
}

@test "limits: a 100 KiB line without an end is refused once and discarded to its end" {
	head -c 102400 /dev/zero | tr '\0' a > "$T/long"
	{ printf 'HELO c\r\n'; cat "$T/long"; printf '\r\nNOOP\r\nQUIT\r\n'; } > "$T/in2"
	timeout 20 "$SMTPD" -h test.example -m "$MD" < "$T/in2" > "$T/out" 2>/dev/null
	expect_replies "$GREETING" '250 test.example' '500 5.5.2 Line too long' '250 2.0.0 Ok' \
		'221 2.0.0 test.example closing'
}

@test "limits: -r 2: the third recipient gets 452 4.5.3, the message goes to two" {
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n" -m "$MD" -r 2
	[ "$(sed -n 6p "$T/out" | tr -d '\r')" = '452 4.5.3 Too many recipients' ]
	[ "$(grep -c '^250 2.1.5' "$T/out")" -eq 2 ]
	grep -q ' delivered' "$T/out"
}

# A message whose RFC 1870 size (CRLF as two, after unstuffing) is exactly N octets.
message_of() {
	local n=$1 fill
	# "Subject: s\r\n\r\n" is 14 octets, the stuffed ".." counts 1, the body line's CRLF 2.
	fill=$(printf 'b%.0s' $(seq $((n - 14 - 1 - 2))))
	printf 'Subject: s\r\n\r\n..%s\r\n' "$fill"
}

@test "limits: -s 100: 100 octets delivered, 101 read to the end then 552 5.3.4, nothing stored" {
	message_of 100 > "$T/m100"
	message_of 101 > "$T/m101"
	{ printf 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n'; cat "$T/m100"; printf '.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n'; cat "$T/m101"; printf '.\r\nQUIT\r\n'; } > "$T/in2"
	"$SMTPD" -h test.example -m "$MD" -s 100 < "$T/in2" > "$T/out" 2>/dev/null
	replies_with_id | grep -v '^250-' | tail -3 > "$T/got"
	printf '%s\n' '354 End data with <CR><LF>.<CR><LF>' '552 5.3.4 Message too big' \
		'221 2.0.0 test.example closing' > "$T/want"
	diff "$T/want" "$T/got"
	[ "$(grep -c ' delivered' "$T/out")" -eq 1 ]
	[ "$(new_files "$MD")" -eq 1 ]
	[ -z "$(ls "$MD/tmp")" ]
}

@test "limits: 100 Received: fields are delivered, 101 are a loop: 554 5.4.6" {
	local i
	for i in $(seq 100); do printf 'Received: from hop%d\r\n' "$i"; done > "$T/h100"
	{ printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n'; cat "$T/h100"; printf 'Subject: ok\r\n\r\nx\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n'; cat "$T/h100"; printf 'received: from hop101\r\n\r\nx\r\n.\r\nQUIT\r\n'; } > "$T/in2"
	"$SMTPD" -h test.example -m "$MD" < "$T/in2" > "$T/out" 2>/dev/null
	[ "$(grep -c ' delivered' "$T/out")" -eq 1 ]
	grep -q '^554 5.4.6 ' "$T/out"
	[ "$(new_files "$MD")" -eq 1 ]
	grep -q '^Subject: ok$' "$MD"/new/*
}

@test "limits: Received: in the body is no hop" {
	local i
	for i in $(seq 150); do printf 'Received: in the body %d\r\n' "$i"; done > "$T/b150"
	{ printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: s\r\n\r\n'; cat "$T/b150"; printf '.\r\nQUIT\r\n'; } > "$T/in2"
	"$SMTPD" -h test.example -m "$MD" < "$T/in2" > "$T/out" 2>/dev/null
	grep -q ' delivered' "$T/out"
}

@test "limits: the 10th bad command is answered, then 421 4.7.0 and exit 1" {
	run_smtpd "HELO c\r\nA\r\nB\r\nC\r\nD\r\nE\r\nF\r\nG\r\nH\r\nI\r\nJ\r\nNOOP\r\n" -m "$MD"
	[ "$(grep -c '^500 5.5.1' "$T/out")" -eq 10 ]
	[ "$(tail -1 "$T/out" | tr -d '\r')" = '421 4.7.0 test.example Too many errors, closing' ]
	[ "$RC" -eq 1 ]
	! grep -q '^250 2.0.0 Ok' "$T/out"
}

@test "limits: -t 1 with a silent client: 421 4.4.2 and exit 1 within about 1 s" {
	local start end
	start=$(date +%s%N)
	RC=0
	# Process substitution: the shell does not wait for the silent writer.
	timeout 10 "$SMTPD" -h test.example -m "$MD" -t 1 < <(sleep 4) > "$T/out" 2>/dev/null || RC=$?
	end=$(date +%s%N)
	expect_replies "$GREETING" '421 4.4.2 test.example Timeout, closing'
	[ "$RC" -eq 1 ]
	[ $(((end - start) / 1000000)) -lt 3900 ]
}

@test "limits: -T 2 bounds a client that trickles a NOOP every 0.4 s" {
	RC=0
	(for i in $(seq 20); do printf 'NOOP\r\n'; sleep 0.4; done) |
		timeout 15 "$SMTPD" -h test.example -m "$MD" -t 10 -T 2 > "$T/out" 2>/dev/null || RC=$?
	[ "$RC" -eq 1 ]
	[ "$(tail -1 "$T/out" | tr -d '\r')" = '421 4.4.2 test.example Timeout, closing' ]
	n=$(grep -c '^250 2.0.0 Ok' "$T/out")
	[ "$n" -ge 3 ] && [ "$n" -le 7 ]
}

@test "options: bad values exit 64 with an smtpd: line on stderr and nothing on stdout" {
	local args
	for args in "-r 0" "-r 1001" "-t 0" "-T 0" "-t 86401" "-s abc" "-s -1" "-s 0" \
		"-r 99999999999999999999" "-x" "-m" "-h bad/name" "extra"; do
		RC=0
		# shellcheck disable=SC2086
		"$SMTPD" $args < /dev/null > "$T/out" 2> "$T/err" || RC=$?
		[ "$RC" -eq 64 ] || { echo "$args: exit $RC"; return 1; }
		[ ! -s "$T/out" ] || { echo "$args: stdout not empty"; return 1; }
		head -1 "$T/err" | grep -q '^smtpd: ' || { echo "$args: $(cat "$T/err")"; return 1; }
	done
}

@test "options: -V prints the version and exits 0" {
	run "$SMTPD" -V
	[ "$status" -eq 0 ]
	[[ "$output" =~ ^smtpd\ [0-9]+\.[0-9]+\.[0-9]+$ ]]
}

smuggle_session() {
	printf 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: s\r\n\r\nbefore'
	printf "$1"
	printf 'MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n'
}

@test "smuggling: none of the bare-LF/bare-CR end sequences ends the data in a CRLF session" {
	local seq
	for seq in '\n.\n' '\n.\r\n' '\r.\r' '\r\n.\n' '\r.\r\n' '\n.\r' '\r\n.\r'; do
		rm -rf "$MD"
		smuggle_session "$seq" > "$T/in2"
		"$SMTPD" -h test.example -m "$MD" < "$T/in2" > "$T/out" 2>/dev/null
		[ "$(grep -c ' delivered' "$T/out")" -eq 1 ] || { echo "seq $seq"; cat "$T/out"; return 1; }
		[ "$(grep -c '^250 2.1.0' "$T/out")" -eq 1 ] || { echo "seq $seq: MAIL was taken"; return 1; }
		grep -q 'MAIL FROM:<evil@x>' "$MD"/new/* || { echo "seq $seq: not in the message"; return 1; }
	done
}

@test "line ends: bare LF in the data of a CRLF session is stored as a line break" {
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: s\r\n\r\none\ntwo\r\n.\r\nQUIT\r\n" -m "$MD"
	printf 'Subject: s\n\none\ntwo\n' > "$T/want"
	body_of "$MD"/new/* | cmp - "$T/want"
}

@test "line ends: a command ending in bare LF in a CRLF session is refused" {
	run_smtpd "HELO c\r\nNOOP\nQUIT\r\n" -m "$MD"
	expect_replies "$GREETING" '250 test.example' '500 5.5.2 Line must end with CRLF' \
		'221 2.0.0 test.example closing'
}

@test "line ends: a session that starts with bare LF takes LF alone, and LF.LF ends the data" {
	run_smtpd "HELO c\nMAIL FROM:<a@x>\nRCPT TO:<b@y>\nDATA\nSubject: lf\n\nline\n..dot\n.\nQUIT\n" -m "$MD"
	[ "$(replies_with_id | tail -2 | head -1)" = '250 2.0.0 ID delivered' ]
	[ "$RC" -eq 0 ]
	printf 'Subject: lf\n\nline\n.dot\n' > "$T/want"
	body_of "$MD"/new/* | cmp - "$T/want"
}

@test "data: dot-stuffing undone, CRLF stored as LF, byte for byte" {
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: d\r\n\r\n..one\r\n...two\r\n.three\r\n \r\n.\r\nQUIT\r\n" -m "$MD"
	printf 'Subject: d\n\n.one\n..two\nthree\n \n' > "$T/want"
	body_of "$MD"/new/* | cmp - "$T/want"
}

@test "data: a whole transcript piped before the greeting: everything after DATA up to the dot is the message" {
	run_smtpd "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: early\r\n\r\nQUIT\r\nRSET\r\n.\r\nNOOP\r\nQUIT\r\n" -m "$MD"
	printf 'Subject: early\n\nQUIT\nRSET\n' > "$T/want"
	body_of "$MD"/new/* | cmp - "$T/want"
	[ "$(replies_with_id | tail -2 | tr '\n' '|')" = '250 2.0.0 Ok|221 2.0.0 test.example closing|' ]
}

@test "data: EOF in the middle of the data delivers nothing, exit 1" {
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: half\r\n\r\nhalf a" -m "$MD"
	[ "$RC" -eq 1 ]
	[ "$(new_files "$MD")" -eq 0 ]
	[ -z "$(ls "$MD/tmp")" ]
}

@test "stored file: name, S= size, Return-Path, Received with HELO name, id and date, then the message" {
	run_smtpd "EHLO client.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: f\r\n\r\nbody\r\n.\r\nQUIT\r\n" -m "$MD"
	local f name id size
	f=$(ls "$MD"/new/*)
	name=${f##*/}
	[[ "$name" =~ ^[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\..+,S=([0-9]+)$ ]]
	size=${BASH_REMATCH[1]}
	[ "$size" -eq "$(stat -c %s "$f")" ]
	id=$(sed -nE 's/^250 2\.0\.0 ([^ ]+) delivered.*/\1/p' "$T/out")
	[[ "$name" == "$id."* ]]
	sed -n 1p "$f" | grep -qx 'Return-Path: <a@x.example>'
	sed -n 2p "$f" | grep -qx 'Received: from client.example'
	sed -n 3p "$f" | grep -qx "	by test.example (smtpd) with ESMTP id $id;"
	sed -n 4p "$f" | grep -qE '^	(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}$'
	printf 'Subject: f\n\nbody\n' > "$T/want"
	tail -n +5 "$f" | cmp - "$T/want"
	[ "$(stat -c %a "$f")" = 600 ]
}

@test "stored file: the Received date is in UTC (+0000) whatever TZ says, right across calendars" {
	command -v faketime >/dev/null || skip "faketime is not installed"
	ldd "$SMTPD" >/dev/null 2>&1 || skip "a static binary: faketime's preload cannot reach its clock"
	local t want
	# the epoch, a leap day, the day after a non-leap century, 2^31 s, a Sunday at 23:59
	export TZ=IST-5:30 # faketime reads its start in TZ too
	for t in 0 951782400 4107542400 2147483648 1795996740; do
		rm -rf "$MD"
		faketime -f "@$(date -d "@$t" '+%Y-%m-%d %H:%M:%S')" "$SMTPD" -h test.example -m "$MD" \
			< <(printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n') >/dev/null 2>&1
		want=$(date -u -d "@$t" '+%a, %d %b %Y %H:%M:%S +0000')
		# faketime's clock keeps running from the start it is given: allow its first seconds
		sed -n 4p "$MD"/new/* | grep -qE "^	${want%:*}:0[0-9] \+0000$"
	done
}

# system calls of one catch-all session of $1 messages: "<opens> <stats>"
count_file_calls() {
	local i
	{
		printf 'EHLO c\r\n'
		for i in $(seq "$1"); do printf 'MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n.\r\n'; done
		printf 'QUIT\r\n'
	} >"$T/in$1"
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" strace -f -o "$T/trace$1" \
		-e trace=openat,open,stat,lstat,fstat,newfstatat,statx "$SMTPD" -m "$MD" <"$T/in$1" >/dev/null 2>&1
	[ "$(ls "$MD/new" | wc -l)" -eq "$1" ]
	rm -rf "$MD"
	echo "$(grep -cE '^[0-9]+ +open(at)?\(' "$T/trace$1") $(grep -cE '^[0-9]+ +(new)?f?l?stat(x|at)?\(' "$T/trace$1")"
}

@test "stored file: a further message to the catch-all opens its file and nothing else (strace)" {
	command -v strace >/dev/null || skip "strace is not installed"
	local one ten
	one=$(count_file_calls 1)
	ten=$(count_file_calls 10)
	echo "one message: $one, ten: $ten (opens, stats)" >&2
	[ "${ten% *}" -eq $((${one% *} + 9)) ]
	[ "${ten#* }" -eq "${one#* }" ]
}

@test "stored file: HELO gives 'with SMTP'; a message without a header gets an empty line first" {
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\njust text, no header\r\n.\r\nQUIT\r\n" -m "$MD"
	local f
	f=$(ls "$MD"/new/*)
	grep -q '^	by test.example (smtpd) with SMTP id ' "$f"
	printf '\njust text, no header\n' > "$T/want"
	tail -n +5 "$f" | cmp - "$T/want"
}

@test "stored file: odd bytes in the HELO name never reach the header" {
	run_smtpd "EHLO bad\x01name\x7f\xff(x)\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n" -m "$MD"
	sed -n 2p "$MD"/new/* | grep -qx 'Received: from bad?name???x?'
	! head -4 "$MD"/new/* | LC_ALL=C grep -q '[^[:print:]	]'
}

@test "templates: no % is one catch-all Maildir, created with cur/ new/ tmp/ in an existing directory" {
	mkdir "$T/deep"
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<anyone@anywhere.example>\r\nRCPT TO:<else@other.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n" -m "$T/deep/Maildir"
	[ -d "$T/deep/Maildir/cur" ] && [ -d "$T/deep/Maildir/tmp" ]
	[ "$(new_files "$T/deep/Maildir")" -eq 1 ]
}

@test "templates: a catch-all whose parent is missing is never created: 421 4.3.0, exit 75, the path logged" {
	run_smtpd "HELO c\r\nQUIT\r\n" -m "$T/typo/Maildir"
	[ "$RC" -eq 75 ]
	expect_replies '421 4.3.0 test.example Mail store unavailable, try again later'
	[ ! -e "$T/typo" ]
	grep -qE "unavailable path=$T/typo/Maildir errno=ENOENT " "$T/err"
}

@test "templates: a %d/%u template whose fixed directory is missing is a start-up error, not 550s" {
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y.example>\r\nQUIT\r\n" -m "$T/vhots/%d/%u"
	[ "$RC" -eq 75 ]
	expect_replies '421 4.3.0 test.example Mail store unavailable, try again later'
	grep -qE "unavailable path=$T/vhots errno=ENOENT " "$T/err"
}

@test "templates: HOME is a path, never a template: % in it stands for itself" {
	mkdir -p "$T/h%u" "$T/h%y"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n' > "$T/in"
	HOME="$T/h%u" "$SMTPD" -h test.example < "$T/in" > "$T/out" 2> "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(new_files "$T/h%u/Maildir")" -eq 1 ]
	HOME="$T/h%%y" "$SMTPD" -h test.example < "$T/in" > "$T/out" 2> "$T/err" || true
	[ ! -e "$T/h%y/Maildir" ]
	grep -q "unavailable path=$T/h%%y/Maildir " "$T/err"
}

@test "templates: %d/%u delivers to existing Maildirs; unknown user 550 5.1.1; unknown domain 550 5.7.1" {
	mkdir -p "$T/y.example/bob/"{cur,new,tmp} "$T/y.example/carol/"{cur,new,tmp}
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<Bob+list@Y.Example>\r\nRCPT TO:<bob@y.example>\r\nRCPT TO:<carol@y.example>\r\nRCPT TO:<dave@y.example>\r\nRCPT TO:<bob@z.example>\r\nDATA\r\nSubject: t\r\n\r\nx\r\n.\r\nQUIT\r\n" -m "$T/%d/%u"
	expect_replies "$GREETING" '250 test.example' '250 2.1.0 Ok' '250 2.1.5 Ok' '250 2.1.5 Ok' \
		'250 2.1.5 Ok' '550 5.1.1 No such user' '550 5.7.1 Relaying denied' \
		'354 End data with <CR><LF>.<CR><LF>' "$(sed -n 10p "$T/out" | tr -d '\r')" \
		'221 2.0.0 test.example closing'
	[ "$(new_files "$T/y.example/bob")" -eq 1 ]
	[ "$(new_files "$T/y.example/carol")" -eq 1 ]
	[ "$(stat -c %h "$T"/y.example/bob/new/*)" -eq 2 ]
	cmp "$T"/y.example/bob/new/* "$T"/y.example/carol/new/*
}

@test "templates: %% is a percent sign" {
	mkdir -p "$T/100%/bob/"{cur,new,tmp}
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n" -m "$T/100%%/%u"
	[ "$(new_files "$T/100%/bob")" -eq 1 ]
}

@test "path escapes: refused with 550 5.1.3 whatever exists on disk, nothing created outside the root" {
	mkdir -p "$T/root/y.example/u/"{cur,new,tmp} "$T/root/x/"{cur,new,tmp} \
		"$T/root/y.example/.hidden/"{cur,new,tmp} "$T/outside/"{cur,new,tmp}
	ln -s "$T/outside" "$T/root/y.example/link"
	find "$T" | sort > "$T/before"
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<\"../x\"@y.example>\r\nRCPT TO:<\"a/b\"@y.example>\r\nRCPT TO:<\".hidden\"@y.example>\r\nRCPT TO:<\"..\"@y.example>\r\nRCPT TO:<\".\"@y.example>\r\nRCPT TO:<u@..>\r\nRCPT TO:<\"\"@y.example>\r\nRCPT TO:<\"a\\\\\x01b\"@y.example>\r\nRCPT TO:<+tag@y.example>\r\nRCPT TO:<\"../../outside\"@y.example>\r\nQUIT\r\n" -m "$T/root/%d/%u"
	[ "$(grep -c '^550 5.1.3 Bad recipient name' "$T/out")" -eq 8 ]
	! grep -q '^250 2.1.5' "$T/out" || false
	rm -f "$T/in" "$T/out" "$T/err"
	find "$T" | grep -v -e "^$T/in$" -e "^$T/out$" -e "^$T/err$" | sort > "$T/after"
	diff <(grep -v -e '/before$' -e '/after$' "$T/before") <(grep -v -e '/before$' -e '/after$' "$T/after")
}

@test "path escapes: a symbolic link as new/ is never followed" {
	mkdir -p "$T/root/y.example/u/"{cur,tmp} "$T/elsewhere"
	ln -s "$T/elsewhere" "$T/root/y.example/u/new"
	run_smtpd "HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<u@y.example>\r\nQUIT\r\n" -m "$T/root/%d/%u"
	grep -q '^550 5.1.1' "$T/out"
	[ -z "$(ls "$T/elsewhere")" ]
}

@test "memory: a 50 MiB message is stored exactly, and peak RSS is within 512 KiB of a 1 KiB one's" {
	[ -x /usr/bin/time ] || skip "/usr/bin/time is not installed"
	[[ "$SMTPD" != *-asan ]] || skip "RSS is measured on the plain build"
	python3 - "$T" <<'EOF'
import sys
t = sys.argv[1]
line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b".\r\n"
for name, size in (("small", 1024), ("big", 50 * 1024 * 1024)):
    body = bytearray(b"Subject: big\r\n\r\n")
    while len(body) < size:
        body += line
    with open(f"{t}/{name}.in", "wb") as f:
        f.write(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        f.write(body.replace(b"\r\n.", b"\r\n.."))
        f.write(b".\r\nQUIT\r\n")
    with open(f"{t}/{name}.want", "wb") as f:
        f.write(bytes(body).replace(b"\r\n", b"\n"))
EOF
	local small big
	for m in small big; do
		/usr/bin/time -f %M -o "$T/$m.rss" "$SMTPD" -h test.example -s 60000000 -m "$T/$m" < "$T/$m.in" > "$T/$m.out" 2>/dev/null
		grep -q ' delivered' "$T/$m.out"
		tail -n +5 "$T/$m"/new/* | cmp - "$T/$m.want"
	done
	small=$(cat "$T/small.rss")
	big=$(cat "$T/big.rss")
	echo "# peak RSS: 1 KiB message ${small} KiB, 50 MiB message ${big} KiB" >&3
	# The fixed buffers (64 KiB in, 128 KiB out) are touched whole only by a large message, and
	# libc's shared pages vary by up to ~150 KiB from run to run; beyond that nothing may grow.
	[ "$big" -le $((small + 512)) ]
}

@test "real client: smtplib sends one message to two recipients through systemd-socket-activate" {
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate is not installed"
	local port pid i
	mkdir -p "$T/y.example/bob/"{cur,new,tmp} "$T/z.example/carol/"{cur,new,tmp}
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	systemd-socket-activate --inetd -a -l "127.0.0.1:$port" "$SMTPD" -h test.example \
		-m "$T/%d/%u" 3>&- 2> "$T/sa.log" < /dev/null > /dev/null &
	pid=$!
	for i in $(seq 250); do ss -Hltn "sport = :$port" | grep -q LISTEN && break; sleep 0.02; done
	run timeout 20 python3 -c "
import smtplib
with smtplib.SMTP('127.0.0.1', $port, local_hostname='client.example', timeout=15) as s:
    print(s.sendmail('a@x.example', ['Bob@Y.example', 'carol+tag@z.example'],
                     b'Subject: two\r\n\r\nfor both\r\n'))
"
	kill "$pid"
	wait "$pid" || true
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "{}" ]
	[ "$(new_files "$T/y.example/bob")" -eq 1 ]
	[ "$(new_files "$T/z.example/carol")" -eq 1 ]
	cmp "$T"/y.example/bob/new/* "$T"/z.example/carol/new/*
	grep -q '^Received: from client.example (\[127.0.0.1\])$' "$T"/y.example/bob/new/*
}
