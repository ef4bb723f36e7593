#!/usr/bin/env bats
# Launchers under a burst: the shipped xinetd file (port, address, user and paths changed,
# nothing else) takes a few hundred connects as fast as a loop can make them and goes on
# greeting clients at once. xinetd's default rate limit (cps 50 10) would stop listening
# for 10 s after such a burst.

load launch

setup() {
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	ROOT=$BATS_TEST_DIRNAME/..
	T=$(mktemp -d)
	PY=python3
	if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; fi
}

teardown() {
	l_stop_tree "$T/xinetd.pid.own"
	rm -rf "$T"
}

# the shipped file with only what a loopback test must change, started in the foreground
b_xinetd_start() {
	command -v xinetd >/dev/null || skip "xinetd is not installed"
	port=$(l_free_port)
	mkdir -p "$T/Maildir"
	sed -e "s#^\(\s*port\s*=\).*#\1 $port#" -e 's#^\(\s*user\s*=\).*#\1 root#' \
		-e 's#^\(\s*group\s*=\).*#\1 root#' -e "s#^\(\s*server\s*=\).*#\1 $SMTPD#" \
		-e "s#^\(\s*server_args\s*=\).*#\1 -h test.example -m $T/Maildir#" \
		-e 's#^\(\s*flags\s*=\).*#\1 IPv4\n\tbind = 127.0.0.1#' \
		-e "s#^\(\s*log_type\s*=\).*#\1 FILE $T/xinetd.log#" \
		-e 's#^service smtp$#service smtpd-test#' \
		-e "s#^\(\s*passenv\s*=\).*#\1\n\tenv = ASAN_OPTIONS=log_path=$T/asan#" \
		"$ROOT/xinetd.d/smtpd" >"$T/xinetd.conf"
	# AddressSanitizer reserves terabytes of address space: the shipped 64M cap would kill it.
	[[ "$SMTPD" != *-asan ]] || sed -i '/rlimit_as/d' "$T/xinetd.conf"
	xinetd -dontfork -f "$T/xinetd.conf" -pidfile "$T/xinetd.pid" 3>&- 2>"$T/xinetd.err" &
	echo $! >"$T/xinetd.pid.own"
	l_wait_listen "$port"
}

# N connections held open at once from SRC (a * in it: 1..N); prints how many were greeted
b_hold() { # SRC N
	timeout 60 "$PY" -c "
import socket
socks, greeted = [], 0
for i in range($2):
    s = socket.socket()
    s.settimeout(5)
    s.bind(('$1'.replace('*', str(1 + i)), 0))
    s.connect(('127.0.0.1', $port))
    socks.append(s)
for s in socks:
    try:
        greeted += s.makefile('rb').readline().startswith(b'220 ')
    except OSError:
        pass
print(greeted)
"
}

@test "xinetd: 200 quick connects to the shipped file, then a normal client is greeted, not refused" {
	local port
	b_xinetd_start
	grep -q '^\s*cps\s*=' "$T/xinetd.conf"
	run timeout 60 "$PY" -c "
import socket, sys, time
port, refused = $port, 0
t0 = time.monotonic()
for i in range(200):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(('127.0.0.1', port))
    except OSError:
        refused += 1
    s.close()
burst = time.monotonic() - t0
# one normal client, from another address (per_source counts the burst's sessions)
t0 = time.monotonic()
s = socket.socket()
s.settimeout(5)
s.bind(('127.0.0.2', 0))
try:
    s.connect(('127.0.0.1', port))
    greeting = s.makefile('rb').readline().decode().rstrip()
    s.sendall(b'QUIT\r\n')
except OSError as e:
    greeting = repr(e)
took = time.monotonic() - t0
print('200 connects in %.3f s, %d refused; then %r after %.3f s' % (burst, refused, greeting, took))
# No refusal and a greeting: xinetd's rate limit would refuse it for 10 s. The bound on the
# wait only keeps a test bounded; the 50 burst sessions ending first may take a second.
sys.exit(0 if refused == 0 and greeting.startswith('220 ') and took < 5 else 1)
"
	echo "# $output" >&3
	[ "$status" -eq 0 ]
}

@test "xinetd: instances = 50: the 51st session at once is closed without a greeting (service_limit)" {
	local port
	b_xinetd_start
	run b_hold '127.0.3.*' 55
	echo "$output"
	[ "$output" = 50 ]
	grep -q 'FAIL: smtpd-test service_limit from=127.0.3.5[1-5]' "$T/xinetd.log"
}

@test "xinetd: per_source = 5: a sixth session from one address is closed without a greeting" {
	local port
	b_xinetd_start
	run b_hold 127.0.0.3 7
	echo "$output"
	[ "$output" = 5 ]
	grep -q 'FAIL: smtpd-test per_source_limit from=127.0.0.3' "$T/xinetd.log"
}
