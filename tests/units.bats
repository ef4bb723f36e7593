#!/usr/bin/env bats
# The shipped launcher files and the manual: systemd accepts the units, with no warning at
# all (systemd-analyze exits 0 even on unknown keys, so its output must be empty), their
# sandbox stays tight, xinetd parses its file, and the manual lints clean.

setup() {
	T=$(mktemp -d)
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	ROOT=$BATS_TEST_DIRNAME/..
}

teardown() {
	rm -rf "$T"
}

# The units name /usr/local/sbin/smtpd; systemd-analyze wants a binary that exists.
units_to_tmp() {
	local u
	for u in smtpd smtpd-lmtp; do
		sed "s#/usr/local/sbin/smtpd#$SMTPD#" "$ROOT/systemd/$u@.service" > "$T/$u@.service"
		cp "$ROOT/systemd/$u.socket" "$T/"
	done
	sed "s#/usr/local/sbin/smtpd#$SMTPD#" "$ROOT/systemd/smtpd-tcpserver.service" >"$T/smtpd-tcpserver.service"
}

@test "units: systemd-analyze verify prints nothing for both socket/service pairs" {
	command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
	units_to_tmp
	run systemd-analyze verify --man=no "$T/smtpd.socket" "$T/smtpd@.service" \
		"$T/smtpd-lmtp.socket" "$T/smtpd-lmtp@.service"
	echo "$output"
	[ "$status" -eq 0 ]
	[ -z "$output" ]
}

@test "units: systemd-analyze verify prints nothing for smtpd-tcpserver.service" {
	command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
	[ -x /usr/bin/tcpserver ] || skip "tcpserver (ucspi-tcp-ipv6) is not installed"
	units_to_tmp
	run systemd-analyze verify --man=no "$T/smtpd-tcpserver.service"
	echo "$output"
	[ "$status" -eq 0 ]
	[ -z "$output" ]
}

@test "units: smtpd-tcpserver.service: exposure at most 2.0; smtpd runs without the capability, with %d and %u its own" {
	command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
	units_to_tmp
	run systemd-analyze security --offline=true --man=no --threshold=20 "$T/smtpd-tcpserver.service"
	echo "# smtpd-tcpserver.service exposure $(echo "$output" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')" >&3
	[ "$status" -eq 0 ]
	# the one capability (port 25) is tcpserver's: setpriv clears it before smtpd runs
	grep -qx 'AmbientCapabilities=CAP_NET_BIND_SERVICE' "$ROOT/systemd/smtpd-tcpserver.service"
	awk '/^ExecStart=/ { c = 1 } c { print; if (!/\\$/) exit }' "$ROOT/systemd/smtpd-tcpserver.service" | tr -d '\\\n' |
		grep -q 'tcpserver .* 0 25 *.*/usr/bin/setpriv --inh-caps=-all --ambient-caps=-all -- *.*/usr/local/sbin/smtpd .*-m /var/mail/vhosts/%%d/%%u$'
	grep -qx 'StandardError=journal' "$ROOT/systemd/smtpd-tcpserver.service"
	grep -qx 'Conflicts=smtpd.socket' "$ROOT/systemd/smtpd-tcpserver.service"
}

@test "units: verify does catch a broken unit (the check above can fail)" {
	command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
	units_to_tmp
	sed -i 's/^NoNewPrivileges=/NoNewPrivilegs=/' "$T/smtpd@.service"
	run systemd-analyze verify --man=no "$T/smtpd.socket" "$T/smtpd@.service"
	[[ "$output" == *"Unknown key"* ]]
}

@test "units: systemd-analyze security rates both services at most 1.0" {
	command -v systemd-analyze >/dev/null || skip "systemd-analyze is not installed"
	units_to_tmp
	local u score
	for u in smtpd smtpd-lmtp; do
		run systemd-analyze security --offline=true --man=no --threshold=10 "$T/$u@.service"
		score=$(echo "$output" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
		echo "# $u@.service exposure $score" >&3
		[ "$status" -eq 0 ]
	done
}

@test "units: the service never sends stderr to the client's socket" {
	grep -qx 'StandardError=journal' "$ROOT/systemd/smtpd@.service"
	grep -qx 'StandardError=journal' "$ROOT/systemd/smtpd-lmtp@.service"
	grep -q '%%d/%%u' "$ROOT/systemd/smtpd@.service"
}

@test "xinetd: the shipped service file is parsed and served (on a loopback test port)" {
	command -v xinetd >/dev/null || skip "xinetd is not installed"
	local port pid i
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	mkdir -p "$T/Maildir"
	# The shipped file, with only what a test on loopback must change.
	sed -e "s#^\(\s*port\s*=\).*#\1 $port#" -e 's#^\(\s*user\s*=\).*#\1 root#' \
		-e 's#^\(\s*group\s*=\).*#\1 root#' -e "s#^\(\s*server\s*=\).*#\1 $SMTPD#" \
		-e "s#^\(\s*server_args\s*=\).*#\1 -h test.example -m $T/Maildir#" \
		-e 's#^\(\s*flags\s*=\).*#\1 IPv4#' -e 's#^service smtp#service smtpd-test#' \
		-e "s#^\(\s*passenv\s*=\).*#\1\n\tenv = ASAN_OPTIONS=log_path=$T/asan#" \
		"$ROOT/xinetd.d/smtpd" > "$T/smtpd.svc"
	# AddressSanitizer reserves terabytes of address space: the shipped 64M cap would kill it.
	[[ "$SMTPD" != *-asan ]] || sed -i '/rlimit_as/d' "$T/smtpd.svc"
	{ printf 'defaults\n{\n\tlog_type = FILE %s/xinetd.log\n}\n' "$T"; cat "$T/smtpd.svc"; } \
		| sed 's#^\(\s*flags\s*=.*\)#\1\n\tbind = 127.0.0.1#' > "$T/xinetd.conf"
	xinetd -dontfork -f "$T/xinetd.conf" -pidfile "$T/pid" 3>&- &
	pid=$!
	for i in $(seq 250); do ss -Hltn "sport = :$port" | grep -q LISTEN && break; sleep 0.02; done
	run timeout 10 python3 -c "
import smtplib
with smtplib.SMTP('127.0.0.1', $port, local_hostname='c.example', timeout=8) as s:
    s.sendmail('a@x.example', ['b@y.example'], b'Subject: xinetd\r\n\r\nbody\r\n')
"
	kill "$pid"; wait "$pid" || true
	echo "$output"; cat "$T/xinetd.log" || true
	[ "$status" -eq 0 ]
	[ "$(ls "$T/Maildir/new" | wc -l)" -eq 1 ]
	grep -q '^Subject: xinetd$' "$T"/Maildir/new/*
}

@test "manual: mandoc -T lint finds nothing in smtpd.8" {
	command -v mandoc >/dev/null || skip "mandoc is not installed"
	run mandoc -T lint -W warning "$ROOT/smtpd.8"
	echo "$output"
	[ "$status" -eq 0 ]
	[ -z "$output" ]
}

@test "manual: every option in the usage text is documented in smtpd.8" {
	local opt opts
	opts=$("${SMTPD:-$ROOT/smtpd}" --help | sed -n 's/^  -\([A-Za-z]\) .*/\1/p')
	[ "$(printf '%s\n' "$opts" | wc -l)" -ge 14 ]
	for opt in $opts; do
		grep -q "^\.It Fl $opt\b" "$ROOT/smtpd.8" || { echo "no -$opt in smtpd.8"; false; }
	done
}
