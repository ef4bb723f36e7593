#!/usr/bin/env bats
# Hostile clients: trickling, floods, giant lines, giant messages over the limit, NULs, 8-bit
# bytes and shell metacharacters in commands. Each ends in bounded time and memory, and
# nothing is delivered that the client did not finish.

setup() {
	T=$(mktemp -d)
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	MD=$T/Maildir
}

teardown() {
	rm -rf "$T"
}

# Peak RSS is measured on the plain build only: the sanitizers' shadow memory dwarfs it.
plain_build() {
	[[ "$SMTPD" != *-asan ]] && [ -x /usr/bin/time ]
}

# rss_run NAME: runs smtpd on stdin with peak RSS in $T/NAME.rss (0 when not measured).
rss_run() {
	local name=$1
	shift
	if plain_build; then
		/usr/bin/time -f %M -o "$T/$name.rss" "$SMTPD" -h test.example "$@"
	else
		echo 0 > "$T/$name.rss"
		"$SMTPD" -h test.example "$@"
	fi
}

assert_rss_under_4mib() {
	local kib
	kib=$(tail -n 1 "$T/$1.rss") # time(1) may say first that the exit status was not 0
	echo "# $1: peak RSS $kib KiB" >&3
	if [ -n "${SMTPD_EMULATED:-}" ]; then
		assert_rss_growth_under_2mib "$kib"
		return
	fi
	[ "$kib" -lt 4096 ]
}

# Under qemu-user (make check-cross) the RSS is mostly the emulator's own: what is bounded
# there is the growth over a session that ends at once, and the bound is tighter.
assert_rss_growth_under_2mib() {
	local base
	mkdir -p "$T/base"
	/usr/bin/time -f %M -o "$T/base.rss" "$SMTPD" -h test.example -m "$T/base" \
		< /dev/null > /dev/null 2>&1 || true
	base=$(cat "$T/base.rss" | tail -1)
	echo "# emulated: idle session $base KiB, growth $(($1 - base)) KiB" >&3
	[ $(($1 - base)) -lt 2048 ]
}

@test "slow-loris: one byte a second is still cut at -T with 421 4.4.2" {
	local start end
	start=$(date +%s)
	RC=0
	(printf 'HELO c\r\n'; while :; do printf N; sleep 1; done) 2>/dev/null |
		timeout 20 "$SMTPD" -h test.example -m "$MD" -t 2 -T 4 > "$T/out" 2>/dev/null || RC=$?
	end=$(date +%s)
	[ "$RC" -eq 1 ]
	[ "$(tail -1 "$T/out" | tr -d '\r')" = '421 4.4.2 test.example Timeout, closing' ]
	[ $((end - start)) -le 8 ]
}

@test "a client that never pauses is still cut at -T: 421 4.4.2 within seconds, nothing stored" {
	# A regular file is always ready to read: a deadline checked only when a wait begins would
	# never pass. 100 GiB of (sparse) zeros as message data, far over -s, read at memory speed.
	printf 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n' > "$T/in"
	truncate -s 100G "$T/in"
	local start end rc=0
	start=$(date +%s%N)
	timeout 60 "$SMTPD" -h test.example -m "$MD" -T 2 < "$T/in" > "$T/out" 2>/dev/null || rc=$?
	end=$(date +%s%N)
	echo "# ended after $(((end - start) / 1000000)) ms, exit $rc" >&3
	[ "$rc" -eq 1 ]
	[ "$(tail -n 1 "$T/out" | tr -d '\r')" = '421 4.4.2 test.example Timeout, closing' ]
	[ $(((end - start) / 1000000)) -lt 10000 ]
	[ -z "$(find "$MD" -type f)" ]
}

@test "a client that sends but never reads is cut at -t, on a socket or a pipe: no write blocks" {
	# With buffers full both ways, a blocking write would wait for ever: a socket, then pipes.
	cat > "$T/stall.py" <<'PY'
import fcntl, os, socket, subprocess, sys, threading, time
if sys.argv[1] == "socket":
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    p = subprocess.Popen(sys.argv[2:], stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    send = ours.sendall
else:  # two pipes; the replies' one shrunk to two pages and never read
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    fcntl.fcntl(out_w, 1031, 8192)  # F_SETPIPE_SZ: two pages
    p = subprocess.Popen(sys.argv[2:], stdin=in_r, stdout=out_w, stderr=subprocess.DEVNULL)
    os.close(in_r), os.close(out_w)
    send = lambda data: os.write(in_w, data) and None
def flood():
    try:
        send(b"EHLO c\r\n" + b"NOOP\r\n" * 200000)
    except OSError:
        pass
threading.Thread(target=flood, daemon=True).start()
start = time.monotonic()
try:
    rc = p.wait(timeout=30)
except subprocess.TimeoutExpired:
    p.kill()
    rc = "hung"
print(rc, round(time.monotonic() - start, 1))
PY
	local kind rc secs
	for kind in socket pipe; do
		read -r rc secs < <(timeout 60 python3 "$T/stall.py" "$kind" "$SMTPD" -h test.example -m "$MD" -t 2 -T 3)
		echo "# $kind: exit $rc after $secs s" >&3
		[ "$rc" = 1 ]
		awk -v s="$secs" 'BEGIN { exit !(s < 10) }'
	done
}

@test "a 1 GiB line with no line end: one 500 5.5.2, bounded memory, the session goes on" {
	local size=1073741824
	plain_build || size=134217728
	{ printf 'HELO c\r\n'; head -c "$size" /dev/zero | tr '\0' a; printf '\r\nNOOP\r\nQUIT\r\n'; } |
		timeout 300 bash -c "$(declare -f rss_run plain_build); SMTPD='$SMTPD' T='$T' rss_run line -m '$MD'" > "$T/out" 2>/dev/null
	[ "$(grep -c '^500 5.5.2 Line too long' "$T/out")" -eq 1 ]
	[ "$(tail -2 "$T/out" | tr -d '\r' | tr '\n' '|')" = '250 2.0.0 Ok|221 2.0.0 test.example closing|' ]
	! plain_build || assert_rss_under_4mib line
}

@test "2 GiB of data over -s: read to the end, 552 5.3.4, nothing stored, bounded memory" {
	local size=2147483648
	plain_build || size=268435456
	{ printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: huge\r\n\r\n'
	  { head -c "$size" /dev/zero | tr '\0' 'x' | fold -w 998; echo; } | sed 's/$/\r/'
	  printf '.\r\nQUIT\r\n'; } |
		timeout 600 bash -c "$(declare -f rss_run plain_build); SMTPD='$SMTPD' T='$T' rss_run data -s 1000 -m '$MD'" > "$T/out" 2>/dev/null
	grep -q '^552 5.3.4 Message too big' "$T/out"
	grep -q '^221 ' "$T/out"
	[ -z "$(find "$MD" -type f)" ]
	! plain_build || assert_rss_under_4mib data
}

@test "100 000 NOOPs and 100 000 RSETs: every one answered, bounded memory" {
	python3 -c '
import sys
w = sys.stdout.buffer.write
w(b"HELO c\r\n" + b"NOOP\r\n" * 100000 + b"RSET\r\n" * 100000 + b"QUIT\r\n")' > "$T/in"
	timeout 120 bash -c "$(declare -f rss_run plain_build); SMTPD='$SMTPD' T='$T' rss_run flood -m '$MD'" < "$T/in" > "$T/out" 2>/dev/null
	[ "$(grep -c '^250 2.0.0 Ok' "$T/out")" -eq 200000 ]
	[ "$(tail -1 "$T/out" | tr -d '\r')" = '221 2.0.0 test.example closing' ]
	! plain_build || assert_rss_under_4mib flood
}

@test "10 000 RCPTs with -r 100: 100 accepted, 1001 refused (452 4.5.3), then 421 4.7.0; nothing stored" {
	python3 -c '
import sys
w = sys.stdout.buffer.write
w(b"HELO c\r\nMAIL FROM:<a@x>\r\n")
w(b"".join(b"RCPT TO:<u%d@y.example>\r\n" % i for i in range(10000)))
w(b"DATA\r\nSubject: many\r\n\r\nx\r\n.\r\nQUIT\r\n")' > "$T/in"
	local rc=0
	timeout 120 bash -c "$(declare -f rss_run plain_build); SMTPD='$SMTPD' T='$T' rss_run rcpt -m '$MD'" < "$T/in" > "$T/out" 2>"$T/err" || rc=$?
	[ "$rc" -eq 1 ]
	[ "$(grep -c '^250 2.1.5 Ok' "$T/out")" -eq 100 ]
	# refusals past the session's limit (MAX_REFUSED_RCPT) end it: the log stays bounded
	[ "$(grep -c '^452 4.5.3 Too many recipients' "$T/out")" -eq 1001 ]
	[ "$(tail -1 "$T/out" | tr -d '\r')" = '421 4.7.0 test.example Too many refused recipients, closing' ]
	[ "$(grep -c ' refused ' "$T/err")" -eq 1001 ]
	[ "$(ls "$MD/new" | wc -l)" -eq 0 ]
	! plain_build || assert_rss_under_4mib rcpt
}

@test "NULs and 8-bit bytes in commands: refused, never crash" {
	printf 'HELO c\r\nNO\0OP\r\nMAIL FROM:<a\0b@x>\r\n\xff\xfe\r\nMAIL FROM:<\xc3\xa9@x>\r\nQUIT\r\n' > "$T/in"
	"$SMTPD" -h test.example -m "$MD" < "$T/in" > "$T/out" 2>/dev/null
	[ "$(sed -n 3p "$T/out" | tr -d '\r')" = '500 5.5.2 Invalid character in command' ]
	[ "$(sed -n 4p "$T/out" | tr -d '\r')" = '500 5.5.2 Invalid character in command' ]
	[ "$(sed -n 5p "$T/out" | tr -d '\r')" = '500 5.5.1 Command unrecognized' ]
	[ "$(sed -n 6p "$T/out" | tr -d '\r')" = '553 5.6.7 Non-ASCII address needs SMTPUTF8' ]
	[ "$(sed -n 7p "$T/out" | tr -d '\r')" = '221 2.0.0 test.example closing' ]
}

@test "shell metacharacters in addresses (the CVE-2020-7247 class): nothing runs, headers stay safe" {
	local canary=$T/pwned
	printf 'HELO c\r\nMAIL FROM:<`touch %s`@x.example>\r\nMAIL FROM:<a;touch${IFS}%s;@x.example>\r\nMAIL FROM:<"$(touch %s)"@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: meta\r\n\r\nx\r\n.\r\nQUIT\r\n' "$canary" "$canary" "$canary" > "$T/in"
	"$SMTPD" -h test.example -m "$MD" < "$T/in" > "$T/out" 2> "$T/err"
	[ ! -e "$canary" ]
	grep -q ' delivered' "$T/out"
	# The accepted quoted sender is stored as written, inside the angle brackets.
	head -1 "$MD"/new/* | grep -qxF "Return-Path: <\"\$(touch $canary)\"@x.example>"
	! LC_ALL=C grep -q '[[:cntrl:]]' "$T/err"
}

@test "every smuggling sequence, pipelined after a full transcript, delivers exactly one message" {
	printf 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: one\r\n\r\na\n.\nb\n.\r\nc\r.\rd\r\n.\ne\r.\r\nf\r\n.\r\nMAIL FROM:<x@x>\r\nQUIT\r\n' > "$T/in"
	"$SMTPD" -h test.example -m "$MD" < "$T/in" > "$T/out" 2>/dev/null
	[ "$(grep -c ' delivered' "$T/out")" -eq 1 ]
	[ "$(ls "$MD/new" | wc -l)" -eq 1 ]
	[ "$(grep -c '^250 2.1.0' "$T/out")" -eq 2 ]
}
