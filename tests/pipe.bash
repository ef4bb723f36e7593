# Helpers for pipe-mode tests (x_ prefix): run smtpd on a transcript, compare the replies and
# the stored files, and start it behind systemd-socket-activate or on a FIFO.

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

# a test's $T with an empty Maildir $MD, and $T/pids for the PIDs of what it starts
x_setup_with_pids() {
	T=$(mktemp -d)
	MD=$T/Maildir
	x_maildir "$MD"
	: >"$T/pids"
}

# stops each process $T/pids names, then removes $T
x_teardown_with_pids() {
	local p
	for p in $(cat "$T/pids"); do x_stop_pid "$p"; done
	rm -rf "$T"
}

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
