#!/usr/bin/env bats
# smtpd under classic inetd: Debian's openbsd-inetd, unpacked by tests/deps.sh (the package
# conflicts with xinetd and would start itself if installed), run in the foreground (-d) on a
# loopback port with a private inetd.conf. inetd passes no environment: the client's address
# comes from getpeername(0), and fd 2 is the client's socket.

load launch

setup_file() {
	local cache=$BATS_TEST_DIRNAME/.cache/openbsd-inetd
	if [ ! -x "$cache/usr/sbin/inetd" ] && command -v apt-get >/dev/null; then
		mkdir -p "$cache"
		(cd "$cache/.." && apt-get download -q openbsd-inetd >/dev/null 2>&1 &&
			dpkg -x openbsd-inetd_*.deb openbsd-inetd && rm -f openbsd-inetd_*.deb) || true
	fi
}

setup() {
	INETD=${INETD:-$BATS_TEST_DIRNAME/.cache/openbsd-inetd/usr/sbin/inetd}
	[ -x "$INETD" ] || skip "openbsd-inetd not unpacked: run sh tests/deps.sh"
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	case $SMTPD in /*) ;; *) SMTPD=$PWD/$SMTPD ;; esac
	T=$(mktemp -d)
	mkdir "$T/Maildir"
	PORT=$(l_free_port)
	# the README's line, with this test's port, user, binary and Maildir
	printf '127.0.0.1:%s stream tcp nowait %s %s smtpd -h test.example -m %s\n' \
		"$PORT" "$(id -un)" "$SMTPD" "$T/Maildir" > "$T/inetd.conf"
	# sanitizer reports (ASan build) go to files: fd 2 is the client's socket
	ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$T/asan \
		UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$T/ubsan \
		"$INETD" -d "$T/inetd.conf" 3>&- 2> "$T/inetd.log" < /dev/null > /dev/null &
	echo $! > "$T/inetd.pid"
	l_wait_listen "$PORT" 127.0.0.1
}

teardown() {
	l_stop_tree "$T/inetd.pid"
	rm -rf "$T"
}

no_sanitizer_reports() {
	! ls "$T"/asan* "$T"/ubsan* 2>/dev/null || { cat "$T"/asan* "$T"/ubsan* >&2; return 1; }
}

@test "inetd: swaks delivers one message; Received: carries the address from getpeername" {
	command -v swaks >/dev/null || skip "swaks not installed"
	timeout 30 swaks --server "127.0.0.1:$PORT" --ehlo client.example --from a@x.example \
		--to b@y.example --header "Subject: via inetd" --body "hello from swaks" \
		--timeout 10 --hide-all 3>&-
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	f=$(find "$T/Maildir/new" -type f)
	l_check_name "$f"
	grep -Fx "Received: from client.example ([127.0.0.1])" "$f"
	grep -Fx "$(printf '\tby test.example (smtpd) with ESMTP id %s;' "$ID")" "$f"
	grep -Fx "Subject: via inetd" "$f"
	# inetd saw the session end with status 0
	n=$(l_wait_count "$T/inetd.log" '^[0-9]+ reaped, status 0$' 1)
	l_eq "$n" 1 "inetd 'reaped, status 0' lines"
	no_sanitizer_reports
}

@test "inetd: no log line enters the SMTP stream (fd 2 is the client's socket)" {
	# a delivery, an error reply, QUIT: every octet the client receives, up to EOF, is kept
	timeout 30 python3 - 127.0.0.1 "$PORT" "$T/stream" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
log = open(sys.argv[3], "wb")
def reply():
    while True:
        line = f.readline()
        log.write(line)
        if not line or line[3:4] != b"-":
            return
def cmd(c):
    s.sendall(c + b"\r\n")
    reply()
reply()
for c in (b"EHLO client.example", b"MAIL FROM:<a@x.example>", b"RCPT TO:<b@y.example>", b"DATA"):
    cmd(c)
s.sendall(b"Subject: stream\r\n\r\nhello\r\n.\r\n")
reply()
cmd(b"BOGUS")
cmd(b"QUIT")
log.write(f.read())
PY
	cat -A "$T/stream"
	n=$(grep -cvE $'^[2-5][0-9][0-9][ -][^\r]*\r$' "$T/stream" || true)
	l_eq "$n" 0 "lines in the stream that are not SMTP replies"
	grep -qE '^220 test[.]example ' "$T/stream"
	grep -qE '^250 2[.]0[.]0 .* delivered' "$T/stream"
	grep -qE '^500 ' "$T/stream"
	tail -n 1 "$T/stream" | grep -qE '^221 '
	l_eq "$(l_count "$T/Maildir")" 1 "messages in new/"
	no_sanitizer_reports
}
