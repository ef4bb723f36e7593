#!/usr/bin/env bats
# Milters (-M, -F) against tests/milter.py, a scripted milter that does what real ones seldom do:
# refuse at each stage, discard, quarantine, answer with its own text or a broken packet, hang,
# hang up mid-body, change headers. Each test starts its own milter on a unix socket under $T
# and records what it was sent; smtpd runs in pipe mode.

load pipe

setup() {
	x_setup_with_pids
}

teardown() {
	x_teardown_with_pids
}

# m_start NAME [SCRIPT LINE]...: the scripted milter NAME on unix:$T/NAME.sock
m_start() {
	local name=$1 i
	shift
	printf '%s\n' "$@" >"$T/$name.script"
	python3 "$BATS_TEST_DIRNAME/milter.py" serve "unix:$T/$name.sock" "$T/$name.script" \
		"$T/$name.rec" 3>&- 2>"$T/$name.log" &
	echo $! >>"$T/pids"
	for i in $(seq 250); do
		[ -S "$T/$name.sock" ] && return 0
		sleep 0.02
	done
	echo "milter $name did not start" >&2
	return 1
}

# what milter NAME was sent, one event a line (milter.py show)
m_show() { python3 "$BATS_TEST_DIRNAME/milter.py" show "$T/$1.rec"; }

# smtpd in pipe mode with milter NAME (and more smtpd arguments)
m_run() {
	local name=$1
	shift
	x_run -m "$MD" -t 10 -M "unix:$T/$name.sock" "$@"
}

MESSAGE='Subject: hello\r\nFrom: <a@example.org>\r\nTo: <b@example.net>\r\n\r\nline one\r\n..dot\r\nlast line\r\n.\r\n'
BODY='Subject: hello\nFrom: <a@example.org>\nTo: <b@example.net>\n\nline one\n.dot\nlast line\n'
EHLO='250-test.example|250-PIPELINING|250-SIZE 26214400|250-8BITMIME|250-ENHANCEDSTATUSCODES|250-SMTPUTF8|250-CHUNKING|250 HELP'

# x_expect with the EHLO reply written as one word
m_expect() {
	local a=() r
	for r in "$@"; do
		if [ "$r" = EHLO ]; then IFS='|' read -ra e <<<"$EHLO" && a+=("${e[@]}"); else a+=("$r"); fi
	done
	x_expect "${a[@]}"
}

# one message from a@example.org to b@example.net
one_message() {
	x_session "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n$MESSAGE""QUIT\r\n"
}

# one message through milter m: every reply as without it, but the one after the data, $1
m_data_answered() {
	one_message
	m_run m
	m_expect "220 test.example ESMTP smtpd" EHLO "250 2.1.0 Ok" "250 2.1.5 Ok" \
		"354 End data with <CR><LF>.<CR><LF>" "$1" "221 2.0.0 test.example closing"
}

# nothing in new/, nothing left in tmp/
m_nothing_stored() {
	[ "$(x_count "$MD")" -eq 0 ] && [ -z "$(ls "$MD/tmp")" ]
}

@test "events and macros: what the milter is sent, in order, with Postfix's macros; our Received: is not among the headers" {
	m_start m
	one_message
	TCPREMOTEIP=192.0.2.7 TCPREMOTEPORT=4242 m_run m
	m_expect "220 test.example ESMTP smtpd" EHLO "250 2.1.0 Ok" "250 2.1.5 Ok" \
		"354 End data with <CR><LF>.<CR><LF>" "250 2.0.0 <id> delivered" "221 2.0.0 test.example closing"
	run m_show m
	echo "$output"
	id=$(sed -n 's/^250 2.0.0 \([^ ]*\) delivered.*/\1/p' "$T/out")
	[ "${lines[0]}" = "optneg 6 0x31 0x1ff7ff" ]
	[ "${lines[1]}" = "macro connect j=test.example {daemon_name}=test.example _=unknown [192.0.2.7] {client_addr}=192.0.2.7 {client_name}=unknown {client_port}=4242" ]
	[ "${lines[2]}" = "connect [192.0.2.7] 4 4242 192.0.2.7" ]
	[ "${lines[3]}" = "helo client.example" ]
	[ "${lines[4]}" = "macro mail {mail_addr}=a@example.org" ]
	[ "${lines[5]}" = "mail <a@example.org>" ]
	[ "${lines[6]}" = "macro rcpt {rcpt_addr}=b@example.net" ]
	[ "${lines[7]}" = "rcpt <b@example.net>" ]
	[ "${lines[8]}" = "macro data i=$id" ]
	[ "${lines[9]}" = "data" ]
	[ "${lines[10]}" = "header Subject hello" ]
	[ "${lines[11]}" = "header From <a@example.org>" ]
	[ "${lines[12]}" = "header To <b@example.net>" ]
	[ "${lines[13]}" = "macro eoh i=$id" ]
	[ "${lines[14]}" = "eoh" ]
	[ "${lines[15]}" = 'body "line one\r\n.dot\r\nlast line\r\n"' ]
	[ "${lines[16]}" = "macro eom i=$id" ]
	[ "${lines[17]}" = "eom" ]
	[ "${lines[18]}" = "quit" ]
	[ "${#lines[@]}" -eq 20 ]
	f=$(x_one "$MD")
	x_headers "$f" ESMTP
	x_body "$f" "$BODY"
}

@test "events: ESMTP parameters with MAIL, ABORT after RSET, a second transaction, IPv6 and a pipe's 'unknown'" {
	m_start m
	x_session "EHLO c\r\nMAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n$MESSAGE""QUIT\r\n"
	m_run m
	run m_show m
	echo "$output"
	[[ $output == *$'\nmail <a@example.org> SIZE=100 BODY=8BITMIME\n'* ]]
	[[ $output == *$'\nrcpt <b@example.net>\nabort\nmail <>\n'* ]]
	[ "${lines[1]}" = "macro connect j=test.example {daemon_name}=test.example _=unknown {client_name}=unknown" ]
	[ "${lines[2]}" = "connect unknown U None None" ]
	[ "$(x_count "$MD")" -eq 1 ]
	: >"$T/m.rec"
	REMOTE_ADDR=2001:db8::7 REMOTE_PORT=25000 m_run m
	m_show m | grep -qx 'connect \[2001:db8::7\] 6 25000 2001:db8::7'
}

@test "connect: a reject greets 554 and answers all but QUIT with 503 5.5.1; nothing more reaches the milter" {
	m_start m "connect reject"
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\nQUIT\r\n"
	m_run m
	x_eq "$XS" 0 "exit status"
	m_expect "554 5.7.1 No SMTP service here" "503 5.5.1 Bad sequence of commands" \
		"503 5.5.1 Bad sequence of commands" "503 5.5.1 Bad sequence of commands" \
		"221 2.0.0 test.example closing"
	grep -q "milter-refused milter=unix:$T/m.sock stage=connect client=- reply=554 code=5.7.1" "$T/err"
	[ "$(m_show m | grep -v '^macro\|^optneg\|^closed' | tr '\n' ' ')" = "connect unknown U None None quit " ]
	[ "$(x_count "$MD")" -eq 0 ]
}

@test "connect: a tempfail with its own text is 421 and the end (exit 1)" {
	m_start m 'connect reply:451\x204.7.0\x20Try\x20later'
	one_message
	m_run m
	x_eq "$XS" 1 "exit status"
	m_expect "421 4.7.0 Try later"
	grep -q 'end=milter-tempfail' "$T/err"
}

@test "helo: a reject refuses that HELO and every later one; MAIL still needs a greeting" {
	m_start m 'helo reply:550\x205.7.1\x20Bad\x20helo'
	x_session "EHLO bad.example\r\nMAIL FROM:<a@example.org>\r\nHELO other.example\r\nQUIT\r\n"
	m_run m
	m_expect "220 test.example ESMTP smtpd" "550 5.7.1 Bad helo" "503 5.5.1 Send HELO/EHLO first" \
		"550 5.7.1 Bad helo" "221 2.0.0 test.example closing"
	grep -q "milter-refused milter=unix:$T/m.sock stage=helo client=- helo=bad.example reply=550 code=5.7.1" "$T/err"
	[ "$(m_show m | grep -c '^helo')" -eq 1 ]
}

@test "mail: a tempfail answers MAIL 451 4.7.1; the next MAIL is asked again" {
	m_start m "mail tempfail"
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nMAIL FROM:<c@example.org>\r\nQUIT\r\n"
	m_run m
	m_expect "220 test.example ESMTP smtpd" EHLO "451 4.7.1 Service unavailable, try again later" \
		"503 5.5.1 MAIL first" "451 4.7.1 Service unavailable, try again later" \
		"221 2.0.0 test.example closing"
	grep -q "milter-refused milter=unix:$T/m.sock stage=mail client=- from=<a@example.org> reply=451 code=4.7.1" "$T/err"
	[ "$(m_show m | grep -c '^mail')" -eq 2 ]
	# a 421 would say the session ends, and it does not: 451
	m_start n 'mail reply:421\x204.7.0\x20Busy'
	x_run -m "$MD" -t 10 -M "unix:$T/n.sock"
	m_expect "220 test.example ESMTP smtpd" EHLO "451 4.7.0 Busy" "503 5.5.1 MAIL first" "451 4.7.0 Busy" \
		"221 2.0.0 test.example closing"
}

@test "rcpt: a reject of the second of two refuses it alone; its Maildir gets nothing, the first gets the message" {
	mkdir -p "$T/vhosts/example.net"
	x_maildir "$T/vhosts/example.net/b"
	x_maildir "$T/vhosts/example.net/c"
	m_start m 'rcpt#2 reply:550\x205.7.1\x20Not\x20c'
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n$MESSAGE""QUIT\r\n"
	x_run -t 10 -m "$T/vhosts/%d/%u" -M "unix:$T/m.sock"
	m_expect "220 test.example ESMTP smtpd" EHLO "250 2.1.0 Ok" "250 2.1.5 Ok" "550 5.7.1 Not c" \
		"354 End data with <CR><LF>.<CR><LF>" "250 2.0.0 <id> delivered" "221 2.0.0 test.example closing"
	[ "$(x_count "$T/vhosts/example.net/b")" -eq 1 ]
	[ "$(x_count "$T/vhosts/example.net/c")" -eq 0 ]
	grep -q "refused client=- from=<a@example.org> to=<c@example.net> reply=550 code=5.7.1 milter=unix:$T/m.sock reason=not-c" "$T/err"
	grep -q 'delivered .* to=<b@example.net> ' "$T/err"
	! grep -q 'to=<c@example.net> file=' "$T/err" || false
}

@test "rcpt: a tempfail of the only recipient: 451 there, and DATA finds no recipient" {
	m_start m "rcpt tempfail"
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nQUIT\r\n"
	m_run m
	m_expect "220 test.example ESMTP smtpd" EHLO "250 2.1.0 Ok" "451 4.7.1 Service unavailable, try again later" \
		"554 5.5.1 No valid recipients" "221 2.0.0 test.example closing"
	[ "$(m_show m | grep -c '^rcpt')" -eq 1 ]
}

@test "data: a reject answers DATA, never 354; the data that follows is taken for commands, as after any refused DATA" {
	m_start m "data reject"
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nQUIT\r\n"
	m_run m
	m_expect "220 test.example ESMTP smtpd" EHLO "250 2.1.0 Ok" "250 2.1.5 Ok" "550 5.7.1 Command rejected" \
		"221 2.0.0 test.example closing"
	grep -q "rejected id=.* recipients=1 reply=550 code=5.7.1 milter=unix:$T/m.sock" "$T/err"
	[ -z "$(ls "$MD/tmp")" ]
}

@test "eom: a reply code with its own text is the reply; nothing stored, nothing left in tmp/" {
	m_start m 'eom reply:554\x205.7.0\x20Spam\x20score\x20100%%'
	m_data_answered "554 5.7.0 Spam score 100%"
	m_nothing_stored
}

@test "eom: a reply text holding CRLF and '250 ok' reaches the client as its first line alone" {
	m_start m 'eom reply:550\x205.7.1\x20No\r\n250\x20ok\r\n250\x202.0.0\x20x\x20delivered'
	m_data_answered "550 5.7.1 No"
	m_nothing_stored
}

@test "eom: reply texts: a multi-line reply is its first line; a missing enhanced code is put in; control bytes become '?'" {
	m_start m 'eom reply:550-5.7.1\x20First\r\n550\x205.7.1\x20Second'
	one_message
	m_run m
	grep -qx $'550 5.7.1 First\r' "$T/out"
	m_start n 'eom reply:451\x20Busy\x01now'
	m_run n
	grep -qx $'451 4.7.1 Busy?now\r' "$T/out"
	m_start o 'eom reply:550\x204.7.1\x20wrong\x20class'
	m_run o
	grep -qx $'550 5.7.1 4.7.1 wrong class\r' "$T/out"
}

@test "eom: a reply code that is no 4xx or 5xx is a broken milter: -F decides (451 by default)" {
	m_start m 'eom reply:250\x20ok'
	one_message
	m_run m
	grep -qx $'451 4.7.1 Service unavailable, try again later\r' "$T/out"
	grep -q "milter-failed milter=unix:$T/m.sock stage=eom error=bad-reply-code action=tempfail" "$T/err"
	[ "$(x_count "$MD")" -eq 0 ]
}

@test "eom: discard answers 250 and stores nothing; the log says discarded and by which milter" {
	m_start m "eom discard"
	m_data_answered "250 2.0.0 <id> delivered"
	m_nothing_stored
	grep -q "discarded id=[0-9.MPQ]* milter=unix:$T/m.sock from=<a@example.org> recipients=1" "$T/err"
	grep -q 'session .* messages=0 recipients=0 ' "$T/err"
}

@test "rcpt: a discard there discards the message: the milter hears nothing more of it" {
	m_start m "rcpt discard"
	one_message
	m_run m
	grep -qx $'250 2.0.0 [0-9.MPQ]* delivered\r' "$T/out"
	[ "$(x_count "$MD")" -eq 0 ]
	! m_show m | grep -q '^data\|^eom' || false
}

@test "eom: a quarantine is a 451 (no hold queue here); nothing stored; logged with its reason" {
	m_start m 'eom quarantine:virus\x20found continue'
	one_message
	m_run m
	grep -qx $'451 4.7.1 Message held by a filter, try again later\r' "$T/out"
	grep -q "quarantined id=.* milter=unix:$T/m.sock from=<a@example.org> recipients=1 reason=virus?found" "$T/err"
	[ "$(x_count "$MD")" -eq 0 ]
}

@test "headers: add, insert (index 0, 1, 3) and change land after our Received:, the rest byte-exact" {
	m_start m 'eom add:X-Added:one ins:1:X-Ins1:two ins:0:X-Ins0:three ins:3:X-Ins3:four chg:1:Subject:changed\r\n\tover\x20two\x20lines chg:1:To: chg:1:X-Missing:five add:X-Folded:a\nb\r\n\tc continue'
	one_message
	m_run m
	f=$(x_one "$MD")
	x_headers "$f" ESMTP
	x_size_ok "$f"
	x_body "$f" 'X-Ins0: three\nX-Ins1: two\nX-Ins3: four\nSubject: changed\n\tover two lines\nFrom: <a@example.org>\nX-Added: one\nX-Missing: five\nX-Folded: a\n\tb\n\tc\n\nline one\n.dot\nlast line\n'
}

@test "headers: as root, the rewritten spool is its Maildir owner's and written as them, like the first" {
	[ "$(id -u)" -eq 0 ] || skip "needs root: a Maildir of another owner"
	local shim=$BATS_TEST_DIRNAME/faultinject.so
	[ -f "$shim" ] || skip "tests/faultinject.so is not built (make tests/faultinject.so)"
	chown -R 2001:2001 "$MD"
	m_start m 'eom add:X-Added:one ins:0:X-Ins0:two continue'
	one_message
	FAULT_OWNERS=$T/owners LD_PRELOAD=$shim ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
		"$(x_smtpd)" -h test.example -m "$MD" -t 10 -M "unix:$T/m.sock" <"$T/in" >"$T/out" 2>"$T/err"
	grep -q "^250 2.0.0 .* delivered" "$T/out" || { cat "$T/out" "$T/err"; false; }
	f=$(x_one "$MD")
	x_eq "$(stat -c '%u:%g %a' "$f")" "2001:2001 600" "owner and mode of the stored file"
	grep -q '^X-Ins0: two$' "$f"
	[ -z "$(ls "$MD/tmp")" ]
	cat "$T/owners"
	# the spool's write, then the rewrite's head and copied rest: every one as the owner
	[ "$(wc -l <"$T/owners")" -ge 2 ]
	[ "$(grep -vcx '2001:2001 fsuid=2001:2001' "$T/owners")" -eq 0 ]
}

@test "headers: with SMFIP_HDR_LEADSPC values go with their space, and ours come back as given" {
	m_start m "optneg optneg:6:0x31:0x100000" 'eom add:X-Lead:\x20\x20two\x20spaces continue'
	one_message
	m_run m
	m_show m | grep -qx 'header Subject " hello"'
	f=$(x_one "$MD")
	x_body "$f" 'Subject: hello\nFrom: <a@example.org>\nTo: <b@example.net>\nX-Lead:  two spaces\n\nline one\n.dot\nlast line\n'
}

@test "headers: a message without a header section, and one without a body, with BDAT" {
	m_start m "eom add:X-A:1 continue"
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	x_chunk 'no header here\r\n' last
	x_in "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	x_chunk 'Subject: only\r\n' last
	x_in "QUIT\r\n"
	m_run m
	[ "$(x_count "$MD")" -eq 2 ]
	x_body "$(grep -l 'no header' "$MD"/new/*)" 'X-A: 1\n\nno header here\n'
	x_body "$(grep -l 'only' "$MD"/new/*)" 'Subject: only\nX-A: 1\n'
	m_show m | grep -qx 'body "no header here\\r\\n"'
}

@test "two milters in order: the second sees the first's header, both headers stored in their order; a refusal by the first is final" {
	m_start a "eom add:X-A:first continue"
	m_start b "eom add:X-B:second continue"
	one_message
	m_run a -M "unix:$T/b.sock"
	f=$(x_one "$MD")
	x_body "$f" 'Subject: hello\nFrom: <a@example.org>\nTo: <b@example.net>\nX-A: first\nX-B: second\n\nline one\n.dot\nlast line\n'
	m_show b | grep -qx 'header X-A first'
	! m_show a | grep -q 'header X-B' || false
	rm "$f"
	m_start c "mail reject"
	m_start d
	m_run c -M "unix:$T/d.sock"
	grep -qx $'550 5.7.1 Command rejected\r' "$T/out"
	! m_show d | grep -q '^mail' || false
}

@test "limits: a 4 GiB packet length is a broken milter, found before its data is waited for" {
	m_start m "eom raw:ffffffff63"
	one_message
	start=$(date +%s%N)
	m_run m
	[ $((($(date +%s%N) - start) / 1000000)) -lt 2000 ]
	grep -qx $'451 4.7.1 Service unavailable, try again later\r' "$T/out"
	grep -q "milter-failed milter=unix:$T/m.sock stage=eom error=bad-length action=tempfail" "$T/err"
	[ "$(x_count "$MD")" -eq 0 ]
	m_run m -F accept
	[ "$(x_count "$MD")" -eq 1 ]
	grep -q 'action=accept' "$T/err"
	m_run m -F reject
	grep -qx $'550 5.7.1 Service unavailable\r' "$T/out"
	[ "$(x_count "$MD")" -eq 1 ]
}

@test "limits: more header changes than MILTER_EDITS_MAX is a broken milter" {
	local adds=() i
	for i in $(seq 65); do adds+=("add:X-$i:v"); done
	m_start m "eom ${adds[*]} continue"
	one_message
	m_run m
	grep -q "milter-failed .* stage=eom error=too-many-edits" "$T/err"
	[ "$(x_count "$MD")" -eq 0 ]
	m_run m -F accept
	f=$(x_one "$MD")
	! grep -q '^X-1:' "$f" || false
}

@test "failure: the socket closed mid-body (second 64 KiB chunk): 451, nothing stored" {
	m_start m "body#2 close"
	python3 - "$T/in" <<'EOF'
import sys
line = b'x' * 1000 + b'\r\n'
with open(sys.argv[1], 'wb') as f:
    f.write(b'EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: big\r\n\r\n')
    f.write(line * 200 + b'.\r\nQUIT\r\n')
EOF
	m_run m
	grep -qx $'451 4.7.1 Service unavailable, try again later\r' "$T/out"
	grep -q "milter-failed milter=unix:$T/m.sock stage=body error=closed action=tempfail" "$T/err"
	[ "$(m_show m | grep -c '^body')" -eq 2 ]
	[ "$(x_count "$MD")" -eq 0 ]
	[ -z "$(ls "$MD/tmp")" ]
}

@test "failure: a milter that never answers is given up within -t (2 s here): 451, nothing stored" {
	m_start m "eom hang"
	one_message
	start=$(date +%s%N)
	x_run -m "$MD" -t 2 -M "unix:$T/m.sock"
	ms=$((($(date +%s%N) - start) / 1000000))
	echo "# $ms ms" >&3
	[ "$ms" -ge 1900 ] && [ "$ms" -lt 4000 ]
	grep -qx $'451 4.7.1 Service unavailable, try again later\r' "$T/out"
	grep -qx $'221 2.0.0 test.example closing\r' "$T/out"
	grep -q "error=timeout" "$T/err"
	[ "$(x_count "$MD")" -eq 0 ]
}

@test "failure: progress starts the wait again, never beyond the message's bound" {
	m_start m "eom progress sleep:0.3 progress continue"
	one_message
	m_run m
	[ "$(x_count "$MD")" -eq 1 ]
	m_start n "eom sleep:1.2 progress sleep:1.2 progress sleep:1.2 continue"
	x_run -m "$MD" -t 2 -M "unix:$T/n.sock"
	grep -q "error=timeout" "$T/err"
	[ "$(x_count "$MD")" -eq 1 ]
}

@test "failure: a milter that is not there: HELO as usual, MAIL gets -F's reply; accept goes on without it" {
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n"
	x_run -m "$MD" -M "unix:$T/none.sock"
	m_expect "220 test.example ESMTP smtpd" EHLO "451 4.7.1 Service unavailable, try again later" \
		"451 4.7.1 Service unavailable, try again later" "221 2.0.0 test.example closing"
	grep -q "milter-failed milter=unix:$T/none.sock stage=connect error=connect-refused action=tempfail" "$T/err"
	x_run -m "$MD" -M "unix:$T/none.sock" -F reject
	grep -qx $'550 5.7.1 Service unavailable\r' "$T/out"
	one_message
	x_run -m "$MD" -M "unix:$T/none.sock" -F accept
	[ "$(x_count "$MD")" -eq 1 ]
	x_run -m "$MD" -M "inet:127.0.0.1:$(x_free_port)" -F reject
	grep -q 'stage=connect error=connect-refused action=reject' "$T/err"
}

@test "negotiation: action bits beyond the offer are masked off; actions not offered are ignored, with a warning" {
	m_start m "optneg optneg:6:0x1ff:0" \
		"eom pkt:+:<new@example.org>\\0 pkt:b:replaced\\r\\n pkt:e:<new@example.org>\\0 pkt:-:<b@example.net>\\0 continue"
	one_message
	m_run m
	f=$(x_one "$MD")
	x_body "$f" "$BODY"
	grep -q "milter-ignored milter=unix:$T/m.sock stage=eom reply=+" "$T/err"
}

@test "negotiation: with rspamd's no-reply steps nothing is waited for but the end of the message" {
	m_start m "optneg optneg:6:0x31:0xff080" "eom add:X-NR:yes continue"
	one_message
	m_run m
	f=$(x_one "$MD")
	grep -qx 'X-NR: yes' "$f"
	m_show m | grep -qx 'eoh'
	! grep -q 'milter-refused\|milter-failed' "$T/err" || false
}

@test "negotiation: steps the milter does not want are not sent (no headers, no body)" {
	m_start m "optneg optneg:6:0x31:0x30"
	one_message
	m_run m
	[ "$(x_count "$MD")" -eq 1 ]
	! m_show m | grep -q '^header\|^body' || false
	m_show m | grep -qx eom
}

@test "LMTP: a recipient refused at RCPT; after the data one reply for the one taken; a discard answers 250 for each" {
	mkdir -p "$T/vhosts/example.net"
	x_maildir "$T/vhosts/example.net/b"
	x_maildir "$T/vhosts/example.net/c"
	x_maildir "$T/vhosts/example.net/d"
	m_start m "rcpt#2 reject"
	x_session "LHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n$MESSAGE""QUIT\r\n"
	x_run -L -t 10 -m "$T/vhosts/%d/%u" -M "unix:$T/m.sock"
	run tr -d '\r' <"$T/out"
	[ "${lines[11]}" = "550 5.7.1 Command rejected" ]
	[[ ${lines[14]} == "250 2.0.0 "*" delivered" ]]
	[[ ${lines[15]} == "250 2.0.0 "*" delivered" ]]
	[ "${lines[16]}" = "221 2.0.0 test.example closing" ]
	[ "$(x_count "$T/vhosts/example.net/c")" -eq 0 ]
	[ "$(x_count "$T/vhosts/example.net/d")" -eq 1 ]
	m_start n "eom discard"
	x_run -L -t 10 -m "$T/vhosts/%d/%u" -M "unix:$T/n.sock"
	[ "$(grep -c '^250 2.0.0 .* delivered' "$T/out")" -eq 3 ]
	[ "$(x_count "$T/vhosts/example.net/b")" -eq 1 ]
}

@test "STARTTLS: HELO, MAIL and DATA carry {tls_version} and {cipher} once TLS is on" {
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=mx.test.example \
		-keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
	m_start m
	python3 "$BATS_TEST_DIRNAME/ucspitls.py" --cert "$T/cert.pem" --key "$T/key.pem" \
		--port-file "$T/port" --status-file "$T/status" -- "$(x_smtpd)" -h test.example \
		-m "$MD" -M "unix:$T/m.sock" 3>&- >"$T/launcher.log" 2>&1 &
	echo $! >>"$T/pids"
	for i in $(seq 500); do [ -s "$T/port" ] && break; sleep 0.02; done
	python3 - "$(cat "$T/port")" <<'EOF'
import smtplib, ssl, sys
c = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)
c.starttls(context=ssl._create_unverified_context())
c.sendmail('a@example.org', ['b@example.net'], b'Subject: tls\r\n\r\nhi\r\n')
c.quit()
EOF
	run m_show m
	echo "$output"
	echo "$output" | grep -q '^macro helo {tls_version}=TLSv1\.. {cipher}=[A-Z]'
	echo "$output" | grep -q '^macro mail {mail_addr}=a@example.org {tls_version}=TLSv1\.. {cipher}=[A-Z]'
	echo "$output" | grep -q '^macro data i=[0-9.MPQ]* {tls_version}=TLSv1\.. {cipher}=[A-Z]'
	[ "$(echo "$output" | grep -c '^helo ')" -eq 2 ]
	[ "$(x_count "$MD")" -eq 1 ]
}

@test "failure: a milter that never answers the negotiation is given up within -t; the greeting comes, MAIL gets 451" {
	m_start m "optneg hang"
	x_session "EHLO c\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n"
	start=$(date +%s%N)
	x_run -m "$MD" -t 2 -M "unix:$T/m.sock"
	ms=$((($(date +%s%N) - start) / 1000000))
	[ "$ms" -ge 1900 ] && [ "$ms" -lt 4000 ]
	m_expect "220 test.example ESMTP smtpd" EHLO "451 4.7.1 Service unavailable, try again later" \
		"221 2.0.0 test.example closing"
	grep -q "milter-failed milter=unix:$T/m.sock stage=connect error=timeout action=tempfail" "$T/err"
}

@test "connect: a discard there is ignored, with a warning; the session goes on" {
	m_start m "connect discard" "helo discard"
	one_message
	m_run m
	[ "$(x_count "$MD")" -eq 1 ]
	grep -q "milter-ignored milter=unix:$T/m.sock stage=connect reply=d" "$T/err"
	grep -q "milter-ignored milter=unix:$T/m.sock stage=helo reply=d" "$T/err"
}

@test "memory: without room for the milters' buffers the client gets 421 4.3.0, logged 'out of memory'" {
	local lo=512 hi=65536 mid
	case $(x_smtpd) in
	*-asan | *valgrind* | *.qemu) skip "the address space here is not smtpd's alone" ;;
	esac
	m_start m
	x_session "EHLO c\r\nQUIT\r\n"
	# the least address space a session without milters needs, to 32 KiB
	while [ $((hi - lo)) -gt 32 ]; do
		mid=$(((lo + hi) / 2))
		if (ulimit -v "$mid" && exec "$(x_smtpd)" -h test.example -m "$MD" <"$T/in" >/dev/null 2>&1); then
			hi=$mid
		else
			lo=$mid
		fi
	done
	echo "# a session needs $hi KiB" >&3
	(ulimit -v $((hi + 64)) && exec "$(x_smtpd)" -h test.example -m "$MD" -M "unix:$T/m.sock" \
		<"$T/in" >"$T/out" 2>"$T/err") || true
	m_expect "421 4.3.0 Insufficient memory, try again later"
	grep -q 'out of memory' "$T/err"
	! grep -q 'milter-refused\|milter-failed' "$T/err" || false
}
