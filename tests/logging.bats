#!/usr/bin/env bats
# The log: one line per refused recipient, per delivery, per failure and per session, every
# value one token; where lines go (stderr, the journal stream, syslog, a terminal) and with
# which priority.

load pipe

setup() {
	T=$(mktemp -d)
	V=$T/vhosts
	x_maildir "$V/x.example/bob"
	mkdir -p "$V/x.example/eve/cur" "$V/x.example/eve/tmp"
	ln -s "$T" "$V/x.example/eve/new"
}

teardown() {
	if [ -f "$T/syslogd.pid" ]; then
		x_stop_pid "$(cat "$T/syslogd.pid")"
		rm -f /dev/log
	fi
	rm -rf "$T"
}

# Every line: "smtpd[pid]: " then words, each after the first a key=value with no blank inside.
tokens_ok() { # FILE
	local line bad=0
	while IFS= read -r line; do
		line=${line#smtpd\[*\]: }
		line=${line#<[0-9]>}
		# shellcheck disable=SC2086
		set -- $line
		shift
		for w in "$@"; do
			[[ $w == [a-z]*=?* ]] || { echo "not key=value: '$w' in: $line" >&2; bad=1; }
		done
	done <"$1"
	return $bad
}

# the lines of $T/err that match the extended regex $1 (after the prefix) must number $2
count_is() {
	local n
	n=$(grep -cE "^smtpd\[[0-9]+\]: $1" "$T/err" || true)
	x_eq "$n" "$2" "lines matching '$1' (stderr was: $(cat "$T/err"))"
}

@test "refused: one line per refused recipient with the reply, a one-word reason and the path" {
	x_maildir "$V/x.example/d"
	x_session 'EHLO c\r\nMAIL FROM:<a@q.example>\r\nRCPT TO:<nobody@x.example>\r\nRCPT TO:<eve@x.example>\r\nRCPT TO:<c@nodomain.example>\r\nRCPT TO:<"a b"@x.example>\r\nRCPT TO:<../x@x.example>\r\nRCPT TO:<bob@x.example>\r\nRCPT TO:<d@x.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' \
		-r 1 -m "$V/%d/%u"
	count_is "refused client=- from=<a@q[.]example> to=<nobody@x[.]example> reply=550 code=5[.]1[.]1 reason=no-such-user path=$V/x[.]example/nobody detail=directory-missing$" 1
	count_is "refused client=- from=<a@q[.]example> to=<eve@x[.]example> reply=550 code=5[.]1[.]1 reason=no-such-user path=$V/x[.]example/eve detail=new-is-a-symlink$" 1
	count_is "refused client=- from=<a@q[.]example> to=<c@nodomain[.]example> reply=550 code=5[.]7[.]1 reason=relaying-denied path=$V/nodomain[.]example$" 1
	count_is 'refused client=- from=<a@q[.]example> to=<"a[?]b"@x[.]example> reply=550 code=5[.]1[.]1 reason=no-such-user ' 1
	count_is 'refused client=- from=<a@q[.]example> to=<[.][.]/x@x[.]example> reply=501 code=5[.]1[.]3 reason=bad-recipient-address-syntax$' 1
	count_is 'refused client=- from=<a@q[.]example> to=<d@x[.]example> reply=452 code=4[.]5[.]3 reason=too-many-recipients$' 1
	count_is 'refused ' 6
	count_is 'delivered .* to=<bob@x[.]example> file=' 1
	count_is 'session client=- helo=c messages=1 recipients=1 bytes=[0-9]+ end=quit seconds=' 1
	tokens_ok "$T/err"
}

@test "refused: a Maildir whose tmp/ or new/ is missing says which" {
	mkdir -p "$V/x.example/nonew/tmp"
	x_session 'HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<nonew@x.example>\r\nQUIT\r\n' -m "$V/%d/%u"
	count_is 'refused client=- from=<> to=<nonew@x[.]example> reply=550 code=5[.]1[.]1 reason=no-such-user path=.*/nonew detail=new-missing$' 1
}

@test "refused: a name that could leave the store is 5.1.3 bad-recipient-name" {
	x_session 'HELO c\r\nMAIL FROM:<a@q>\r\nRCPT TO:<"../x"@x.example>\r\nRCPT TO:<".a"@x.example>\r\nQUIT\r\n' -m "$V/%d/%u"
	count_is 'refused client=- from=<a@q> to=<"[.][.]/x"@x[.]example> reply=550 code=5[.]1[.]3 reason=bad-recipient-name$' 1
	count_is 'refused client=- from=<a@q> to=<"[.]a"@x[.]example> reply=550 code=5[.]1[.]3 reason=bad-recipient-name$' 1
}

@test "refused: as root, a tmp/ owned by another user than its Maildir is a 451 naming it and EPERM" {
	[ "$(id -u)" -eq 0 ] || skip "needs root"
	x_maildir "$V/x.example/m"
	chown nobody "$V/x.example/m" "$V/x.example/m/new" "$V/x.example/m/cur"
	x_session 'HELO c\r\nMAIL FROM:<a@q>\r\nRCPT TO:<m@x.example>\r\nQUIT\r\n' -m "$V/%d/%u"
	count_is "refused client=- from=<a@q> to=<m@x[.]example> reply=451 code=4[.]3[.]0 reason=local-error-in-delivery path=$V/x[.]example/m detail=tmp-wrong-owner errno=EPERM$" 1
}

@test "end=: each way a session ends is one token" {
	x_session 'HELO c\r\n' -m "$T/M"
	count_is 'session .* end=client-closed seconds=' 1
	x_session 'HELO c\r\nQUIT\r\n' -m "$T/M"
	count_is 'session .* end=quit seconds=' 1
	x_session 'X\r\nX\r\nX\r\nX\r\nX\r\nX\r\nX\r\nX\r\nX\r\nX\r\n' -m "$T/M"
	count_is 'session .* end=too-many-errors seconds=' 1
	x_session 'GET / HTTP/1.0\r\n\r\n' -p -m "$T/M"
	count_is 'session .* end=bad-proxy-header seconds=' 1
	mkfifo "$T/fifo"
	{ printf 'HELO c\r\n'; sleep 3; } >"$T/fifo" &
	timeout 20 "$(x_smtpd)" -h t.example -t 1 -m "$T/M" <"$T/fifo" >"$T/out" 2>"$T/err" || true
	wait
	count_is 'session .* end=timeout seconds=' 1
	tokens_ok "$T/err"
}

@test "rejected and unavailable: a message refused as a whole, a store missing at start-up" {
	x_session 'HELO c\r\nMAIL FROM:<a@q>\r\nRCPT TO:<b@x>\r\nDATA\r\n0123456789\r\n.\r\nQUIT\r\n' -s 5 -m "$T/M"
	count_is 'rejected id=[0-9.MPQ]+ from=<a@q> recipients=1 reply=552 code=5[.]3[.]4$' 1
	{ printf 'HELO c\r\nMAIL FROM:<a@q>\r\nRCPT TO:<b@x>\r\nDATA\r\n'
	  for i in $(seq 101); do printf 'Received: from h%d\r\n' "$i"; done
	  printf '\r\nhi\r\n.\r\nQUIT\r\n'; } >"$T/in"
	x_run -m "$T/M"
	count_is 'rejected id=[0-9.MPQ]+ from=<a@q> recipients=1 reply=554 code=5[.]4[.]6$' 1
	x_session 'HELO c\r\nQUIT\r\n' -m "$T/missing/Maildir"
	x_eq "$XS" 75 "exit status"
	count_is "unavailable path=$T/missing/Maildir errno=ENOENT reply=421 code=4[.]3[.]0$" 1
	tokens_ok "$T/err"
}

@test "failed: a delivery that fails names the recipient, the path, the call and the errno" {
	[ "$(id -u)" -ne 0 ] || command -v setpriv >/dev/null || skip "needs setpriv to drop root"
	x_maildir "$T/ro"
	printf 'HELO c\r\nMAIL FROM:<a@q>\r\nRCPT TO:<b@x>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' >"$T/in"
	chmod 500 "$T/ro/tmp"
	if [ "$(id -u)" -eq 0 ]; then
		chown -R nobody "$T"
		setpriv --reuid=nobody --regid=nogroup --clear-groups "$(x_smtpd)" -h t.example -m "$T/ro" \
			<"$T/in" >"$T/out" 2>"$T/err" || true
	else
		x_run -m "$T/ro" || true
	fi
	count_is "rejected id=[0-9.MPQ]+ from=<a@q> recipients=1 path=$T/ro op=create-in-tmp errno=EACCES reply=451 code=4[.]3[.]0$" 1
}

# ---- where lines go

journal_of() { stat -c '%d:%i' "$1"; }

@test "journal: when fd 2 is the JOURNAL_STREAM, lines carry <N> priorities and no prefix of ours" {
	printf 'HELO c\r\nMAIL FROM:<a@q>\r\nRCPT TO:<bob@x.example>\r\nRCPT TO:<nobody@x.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' >"$T/in"
	: >"$T/err"
	JOURNAL_STREAM=$(journal_of "$T/err") "$(x_smtpd)" -h t.example -m "$V/%d/%u" <"$T/in" >"$T/out" 2>>"$T/err"
	cat "$T/err"
	x_eq "$(grep -c 'smtpd\[' "$T/err")" 0 "lines with our own prefix"
	x_eq "$(grep -cE '^<4>refused client=- from=<a@q> to=<nobody@x[.]example> reply=550 ' "$T/err")" 1 "<4> refused"
	x_eq "$(grep -cE '^<6>delivered id=' "$T/err")" 1 "<6> delivered"
	x_eq "$(grep -cE '^<6>session client=- ' "$T/err")" 1 "<6> session"
	x_eq "$(wc -l <"$T/err")" 3 "lines"
	: >"$T/err"
	JOURNAL_STREAM=$(journal_of "$T/err") "$(x_smtpd)" -h t.example -m "$T/missing/M" <"$T/in" >"$T/out" 2>>"$T/err" || true
	x_eq "$(grep -cE '^<3>unavailable path=' "$T/err")" 1 "<3> unavailable"
}

@test "journal: a JOURNAL_STREAM that is not fd 2, or malformed, leaves the plain format" {
	printf 'HELO c\r\nQUIT\r\n' >"$T/in"
	: >"$T/other"
	for js in "$(journal_of "$T/other")" "$(journal_of "$T/err" 2>/dev/null || echo 1:2)x" "" "12"; do
		: >"$T/err"
		JOURNAL_STREAM=$js "$(x_smtpd)" -h t.example -m "$T/M" <"$T/in" >"$T/out" 2>>"$T/err"
		grep -qE '^smtpd\[[0-9]+\]: session client=- helo=c ' "$T/err" || { echo "JOURNAL_STREAM='$js': $(cat "$T/err")"; false; }
		x_eq "$(grep -c '^<' "$T/err")" 0 "priority prefixes with JOURNAL_STREAM='$js'"
	done
}

syslog_start() {
	[ ! -e /dev/log ] || return 1
	"${PY:-python3}" "$BATS_TEST_DIRNAME/syslogd.py" /dev/log "$T/syslog" 2>"$T/syslogd.log" &
	echo $! >"$T/syslogd.pid"
	for i in $(seq 250); do
		[ -S /dev/log ] && return 0
		sleep 0.02
	done
	return 1
}

# waits until $T/syslog holds a line matching $1
syslog_wait() {
	for i in $(seq 250); do
		grep -qE "$1" "$T/syslog" 2>/dev/null && return 0
		sleep 0.02
	done
	echo "no syslog line matching $1; got: $(cat "$T/syslog" 2>/dev/null)" >&2
	return 1
}

@test "syslog: with fd 2 closed, facility mail with priorities: info, warning, err" {
	syslog_start || skip "/dev/log exists (a syslog daemon runs): cannot capture"
	# /dev/log is the machine's: other smtpd processes may log there too; ours are marked
	local h=h$$x$RANDOM
	printf 'HELO %s\r\nMAIL FROM:<%s@q>\r\nRCPT TO:<bob@x.example>\r\nRCPT TO:<nobody@x.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' "$h" "$h" >"$T/in"
	"$(x_smtpd)" -h t.example -m "$V/%d/%u" <"$T/in" >"$T/out" 2>&-
	"$(x_smtpd)" -h t.example -m "$T/missing/M" <"$T/in" >"$T/out" 2>&- || true
	syslog_wait "unavailable path=$T/"
	syslog_wait "session client=- helo=$h "
	grep -F -e "$h" -e "$T/" "$T/syslog" >"$T/ours"
	cat "$T/ours"
	# mail = 2: <20> warning, <22> info, <19> err
	x_eq "$(grep -cE "^<20>.* smtpd\[[0-9]+\]: refused client=- from=<$h@q> to=<nobody@x[.]example> " "$T/ours")" 1 "<20> refused"
	x_eq "$(grep -cE "^<22>.* smtpd\[[0-9]+\]: delivered id=[^ ]+ from=<$h@q> " "$T/ours")" 1 "<22> delivered"
	x_eq "$(grep -cE "^<22>.* smtpd\[[0-9]+\]: session client=- helo=$h " "$T/ours")" 1 "<22> session"
	x_eq "$(grep -cE "^<19>.* smtpd\[[0-9]+\]: unavailable path=$T/missing/M " "$T/ours")" 1 "<19> unavailable"
	x_eq "$(wc -l <"$T/ours")" 4 "our lines"
}

@test "terminal: fds 0, 1 and 2 on one tty log to the tty, not to syslog" {
	command -v script >/dev/null || skip "script (bsdutils) not installed"
	syslog_start || skip "/dev/log exists (a syslog daemon runs): cannot capture"
	# the tty turns CR into LF: a session with LF line ends
	local h=h$$x$RANDOM
	{ printf 'HELO %s\r\n' "$h"; sleep 0.5; printf 'QUIT\r\n'; sleep 0.5; } |
		timeout 20 script -qec "$(x_smtpd) -h t.example -m $T/M" /dev/null >"$T/tty" || true
	cat -A "$T/tty"
	grep -qE "smtpd\[[0-9]+\]: session client=- helo=$h messages=0 recipients=0 bytes=0 end=quit " "$T/tty"
	sleep 0.2
	x_eq "$(grep -c "$h" "$T/syslog" 2>/dev/null || true)" 0 "our lines in syslog"
}

@test "incomplete: a message cut by the client is one line of its own, and nothing is stored" {
	x_session 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@x.example>\r\nDATA\r\nSubject: half\r\n\r\nhalf a bo' -m "$V/%d/%u"
	count_is 'incomplete id=[0-9]+\.M[0-9]+P[0-9]+Q1 from=<a@x> recipients=1 octets=26 end=client-closed$' 1
	count_is 'session .* messages=0 .* end=client-closed ' 1
	x_session 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@x.example>\r\nBDAT 4\r\nabcd' -m "$V/%d/%u"
	count_is 'incomplete id=[^ ]+ from=<a@x> recipients=1 octets=4 end=client-closed$' 1
	x_session 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@x.example>\r\nDATA\r\nx\r\n.\r\n' -m "$V/%d/%u"
	count_is 'incomplete ' 0
	x_eq "$(x_count "$V/x.example/bob")" 1 "messages stored"
	find "$V/x.example/bob/tmp" -type f | grep -q . && { echo "a file left in tmp/"; false; } || true
	tokens_ok "$T/err"
}

@test "relative-template: a relative -m under a launcher (fd 0 a socket) is named at start-up" {
	command -v socat >/dev/null || skip "socat is not installed"
	mkdir -p "$T/cwd"
	(cd "$T/cwd" && timeout 10 socat -T 2 EXEC:"$(x_smtpd) -h t.example -m rel/Maildir" - </dev/null >"$T/out" 2>"$T/err") || true
	count_is "relative-template template=rel/Maildir cwd=$T/cwd\$" 1
	# in a pipe (the developer's case) it is not a warning
	x_session 'QUIT\r\n' -m rel/Maildir
	count_is 'relative-template' 0
}

# ---- what a client can put into a line

@test "escaping: no C0/C1 control, DEL, invalid UTF-8, line or paragraph separator, bidi control or odd blank reaches a line; printable UTF-8 does" {
	x_maildir "$V/x.example/bob"
	# SMTPUTF8 addresses: U+2028 with a forged line after it, NEL (U+0085), the C1 CSI (U+009B)
	# and a raw 0x9b, a right-to-left override (U+202E), a no-break space, a BOM, a tag; and
	# Greek, which must stay as it is
	x_session 'EHLO c\r\nMAIL FROM:<a@q> SMTPUTF8\r\nRCPT TO:<"a\xe2\x80\xa8smtpd[1]:\xe2\x80\xa8delivered"@x.example>\r\nRCPT TO:<"b\xc2\x85smtpd[1]:\xc2\x9b31m\xe2\x80\xaeev\xc2\xa0il\xef\xbb\xbf\xf3\xa0\x80\x81"@x.example>\r\nRCPT TO:<c\x9b[2J@x.example>\r\nRCPT TO:<\xce\xb4\xce\xbf\xce\xba\xce\xb9\xce\xbc\xce\xae@x.example>\r\nRCPT TO:<d\xed\xa0\x80\xc0\xaf@x.example>\r\nQUIT\r\n' \
		-m "$V/%d/%u"
	cat -A "$T/err"
	# a reader that decodes UTF-8 and splits lines as Python's str.splitlines() does (on U+2028,
	# U+2029, U+0085, FS/GS/RS, VT, FF as well as CR and LF) sees exactly the lines written,
	# each ours; no character in them is a control, a format character or a separator other
	# than the space between fields
	"${PY:-python3}" - "$T/err" <<'PY'
import sys, unicodedata
raw = open(sys.argv[1], "rb").read()
text = raw.decode("utf-8")                     # strict: invalid UTF-8 would raise
lines = text.splitlines()
assert len(lines) == raw.count(b"\n"), lines
for line in lines:
    assert line.startswith("smtpd["), line
    for ch in line:
        cat = unicodedata.category(ch)
        assert cat not in ("Cc", "Cf", "Zl", "Zp") and (cat != "Zs" or ch == " "), (hex(ord(ch)), line)
    assert "\x1b" not in line and "\x9b" not in line
assert "δοκιμή@x.example" in text
PY
	count_is 'refused client=- from=<a@q> to=<"a[?]smtpd\[1\]:[?]delivered"@x[.]example> reply=550 .* path=[^ ]+/a[?]smtpd\[1\]:[?]delivered detail=directory-missing$' 1
	count_is 'refused client=- from=<a@q> to=<"b[?]smtpd\[1\]:[?]31m[?]ev[?]il[?][?]"@x[.]example> reply=550 ' 1
	count_is 'refused client=- from=<a@q> to=<c[?]\[2J@x[.]example> reply=553 code=5[.]6[.]7 ' 1
	count_is 'refused client=- from=<a@q> to=<d[?]{5}@x[.]example> reply=553 code=5[.]6[.]7 ' 1
	count_is 'session ' 1
	tokens_ok "$T/err"
}

# ---- refused recipients are bounded

@test "refused recipients: past 1000 since the last delivery the session ends 421 4.7.0 (end=too-many-refusals, exit 1); 200,000 write no more than that" {
	x_maildir "$V/x.example/bob"
	"${PY:-python3}" -c '
import sys
out = sys.stdout.buffer
out.write(b"EHLO c\r\nMAIL FROM:<a@q>\r\n")
out.write(b"RCPT TO:<nobody@x.example>\r\n" * 999)
out.write(b"RCPT TO:<bob@x.example>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<a@q>\r\n")
out.write(b"RCPT TO:<nobody@x.example>\r\n" * 200000)
out.write(b"QUIT\r\n")' > "$T/in"
	x_run -m "$V/%d/%u"
	x_eq "$XS" 1 "exit status"
	# 999 refused, a delivery, then 1000 refused, one more and the 421
	x_eq "$(grep -c '^550 5.1.1 ' "$T/out")" 2000 "550 replies"
	x_eq "$(tail -1 "$T/out" | tr -d '\r')" '421 4.7.0 test.example Too many refused recipients, closing' "last reply"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	count_is 'refused ' 2000
	count_is 'session .* messages=1 recipients=1 .* end=too-many-refusals seconds=' 1
	x_eq "$(wc -l < "$T/err")" 2002 "log lines"
	echo "# 200,999 refused RCPTs: $(wc -l < "$T/err") log lines, $(wc -c < "$T/err") octets" >&3
	tokens_ok "$T/err"
}
