#!/usr/bin/env bats
# Real milters: rspamd 3.4 (its proxy worker as a milter, self_scan) and OpenDKIM in verify
# mode, each with a private configuration, started once for this file on free loopback ports,
# never as the machine's services. DNS is dnsmasq on loopback, answering only what it is told:
# the SPF, DKIM and DMARC records of example.test. Clients: pipe mode, and tcpserver with
# swaks and Python's smtplib.

load pipe
load rspamd

# a directory the milters' own users can read: not under bats' private temporary directory
m_dir() {
	local d
	d=$(mktemp -d)
	chmod 755 "$d"
	echo "$d"
}

setup_file() {
	command -v rspamd >/dev/null && command -v opendkim >/dev/null && command -v dnsmasq >/dev/null ||
		skip "needs rspamd, opendkim and dnsmasq (tests/deps.sh)"
	[ "$(id -u)" = 0 ] || skip "rspamd and OpenDKIM drop to their own users: run as root"
	R=$(m_dir)
	export R
	echo "$R" >"$BATS_FILE_TMPDIR/dir"
	DNS_PORT=$(x_free_port) RSPAMD_PORT=$(x_free_port) OPENDKIM_PORT=$(x_free_port)
	export DNS_PORT RSPAMD_PORT OPENDKIM_PORT
	openssl genrsa -out "$R/dkim.pem" 2048 2>/dev/null
	local key
	key=$(python3 "$BATS_TEST_DIRNAME/dkimsign.py" key "$R/dkim.pem" | fold -w 250 | paste -sd, -)
	rs_dns_start "$R" "$DNS_PORT" "--txt-record=example.test,v=spf1 ip4:192.0.2.10 -all" \
		"--txt-record=sel._domainkey.example.test,$key" "--txt-record=_dmarc.example.test,v=DMARC1; p=none"
	rs_rspamd_start "$R" "$RSPAMD_PORT" "$DNS_PORT"
	opendkim_start
}

# OpenDKIM's resolver is libunbound: pointed at the stub, with test. served, not refused
opendkim_start() {
	mkdir -p "$R/opendkim"
	printf 'server:\n\tdo-not-query-localhost: no\n\tlocal-zone: "test." nodefault\nforward-zone:\n\tname: "."\n\tforward-addr: 127.0.0.1@%s\n' \
		"$DNS_PORT" >"$R/opendkim/unbound.conf"
	cat >"$R/opendkim/opendkim.conf" <<EOF
Mode v
Socket inet:$OPENDKIM_PORT@127.0.0.1
Background no
Syslog no
UserID opendkim
PidFile $R/opendkim/pid
ResolverConfiguration $R/opendkim/unbound.conf
AuthservID opendkim.test.example
EOF
	chown -R opendkim "$R/opendkim"
	opendkim -f -x "$R/opendkim/opendkim.conf" 3>&- >"$R/opendkim.out" 2>&1 &
	echo $! >"$R/opendkim.pid"
	rs_wait_port "$OPENDKIM_PORT" "$(cat "$R/opendkim.pid")" opendkim
}

teardown_file() {
	local p
	R=$(cat "$BATS_FILE_TMPDIR/dir" 2>/dev/null) || return 0
	for p in opendkim rspamd dnsmasq; do
		[ -f "$R/$p.pid" ] && x_stop_pid "$(cat "$R/$p.pid")"
	done
	rm -rf "$R"
}

setup() {
	x_setup_with_pids
}

teardown() {
	x_teardown_with_pids
}

# a message with what rspamd wants of a clean one (Date, Message-ID, MIME), CRLF line ends
clean_message() {
	printf 'From: Alice <a@example.test>\r\nTo: <x@y.example>\r\nSubject: %s\r\nDate: Sun, 06 Dec 2026 04:37:00 +0000\r\nMessage-ID: <%s@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello  there,\r\nthis is a plain message.\r\n' \
		"${1:-clean}" "${2:-m1}"
}

# the session for the message in $T/msg (CRLF, not dot-stuffed: no line starts with a dot)
session_for() {
	{
		printf 'EHLO mail.example.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n'
		cat "$T/msg"
		printf '.\r\nQUIT\r\n'
	} >"$T/in"
}

# the stored message without our two fields and without the fields named in $2 (a regex of
# names, with their continuation lines), CRLF line ends as sent
stripped() {
	tail -n +5 "$1" | awk -v re="^($2):" '
		in_head && /^[ \t]/ { if (skip) next }
		in_head && $0 == "" { in_head = 0 }
		in_head && /^[^ \t]/ { skip = ($0 ~ re) }
		skip && in_head { next }
		{ printf "%s\r\n", $0 }' in_head=1
}

RSPAMD_FIELDS='Authentication-Results|X-Spamd-Result'

@test "rspamd: GTUBE is refused with rspamd's reply; nothing stored" {
	printf 'Subject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n' >"$T/msg"
	session_for
	TCPREMOTEIP=192.0.2.10 x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT"
	cat "$T/out"
	grep -q $'^554 5.7.1 Gtube pattern\r$' "$T/out"
	[ "$(x_count "$MD")" -eq 0 ]
	[ -z "$(ls "$MD/tmp")" ]
	grep -q "rejected id=.* reply=554 code=5.7.1 milter=inet:127.0.0.1:$RSPAMD_PORT" "$T/err"
}

@test "rspamd: a clean message is delivered with Authentication-Results after our Received: and X-Spamd-Result; the rest byte-exact" {
	clean_message >"$T/msg"
	session_for
	TCPREMOTEIP=192.0.2.10 x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT"
	f=$(x_one "$MD")
	x_headers "$f" ESMTP
	x_size_ok "$f"
	cat "$f"
	sed -n 5p "$f" | grep -qx 'Authentication-Results: test.example;'
	grep -q '^	spf=pass .* smtp.mailfrom=a@example.test;\?$' "$f"
	grep -q '^X-Spamd-Result: default: False \[' "$f"
	stripped "$f" "$RSPAMD_FIELDS" >"$T/rest"
	cmp "$T/msg" "$T/rest"
}

@test "rspamd: DKIM signed with the key the stub serves is dkim=pass; the same with its body changed is dkim=fail" {
	clean_message signed m2 | python3 "$BATS_TEST_DIRNAME/dkimsign.py" sign "$R/dkim.pem" example.test sel >"$T/msg"
	session_for
	TCPREMOTEIP=192.0.2.10 x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT"
	f=$(x_one "$MD")
	grep -q '^	dkim=pass header.d=example.test header.s=sel ' "$f"
	stripped "$f" "$RSPAMD_FIELDS" | cmp - "$T/msg"
	rm "$f"
	sed -i 's/plain message/changed message/' "$T/msg"
	session_for
	TCPREMOTEIP=192.0.2.10 x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT"
	f=$(x_one "$MD")
	grep -q '^	dkim=fail .*header.d=example.test header.s=sel ' "$f"
}

@test "rspamd through tcpserver and a PROXY header: swaks from 192.0.2.99, which example.test's SPF -all does not list, is spf=fail; smtplib too" {
	PORT=$(x_free_port)
	tcpserver -R -H -l0 127.0.0.1 "$PORT" "$(x_smtpd)" -p -h test.example -m "$MD" -t 20 \
		-M "inet:127.0.0.1:$RSPAMD_PORT" 3>&- 2>"$T/launcher.log" &
	echo $! >>"$T/pids"
	x_wait_listen "$PORT"
	clean_message swaks m3 >"$T/msg"
	run swaks --server "127.0.0.1:$PORT" --helo mail.example.test --from a@example.test \
		--to x@y.example --data "@$T/msg" --proxy-family TCP4 --proxy-source 192.0.2.99 \
		--proxy-source-port 40000 --proxy-dest 127.0.0.1 --proxy-dest-port 25
	echo "$output"
	[ "$status" -eq 0 ]
	f=$(x_one "$MD")
	cat "$f"
	grep -q '^Received: from mail.example.test (\[192.0.2.99\])$' "$f"
	grep -q '^	spf=fail (test.example: domain of a@example.test does not designate 192.0.2.99 as permitted sender) smtp.mailfrom=a@example.test;\?$' "$f"
	printf '\r\n' >>"$T/msg" # swaks ends its data with a line end of its own
	stripped "$f" "$RSPAMD_FIELDS" | cmp - "$T/msg"
	rm "$f"
	python3 - "$PORT" <<'EOF'
import smtplib, socket, sys
class Proxied(smtplib.SMTP):
    def _get_socket(self, host, port, timeout):
        s = socket.create_connection((host, port), timeout)
        s.sendall(b'PROXY TCP4 192.0.2.99 127.0.0.1 40001 25\r\n')
        return s
c = Proxied('127.0.0.1', int(sys.argv[1]), local_hostname='mail.example.test', timeout=30)
msg = ('From: <a@example.test>\r\nTo: <x@y.example>\r\nSubject: smtplib\r\n'
       'Date: Sun, 06 Dec 2026 04:37:00 +0000\r\nMessage-ID: <m4@example.test>\r\n\r\nhi\r\n')
c.sendmail('a@example.test', ['x@y.example'], msg)
try:
    c.sendmail('a@example.test', ['x@y.example'],
               'Subject: t\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n')
    sys.exit('GTUBE was accepted')
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 554, e
c.quit()
EOF
	f=$(x_one "$MD")
	grep -q '^Subject: smtplib$' "$f"
	grep -q '^	spf=fail ' "$f"
}

@test "OpenDKIM after rspamd: both milters' Authentication-Results, OpenDKIM's (inserted last, at index 1) first" {
	clean_message both m5 | python3 "$BATS_TEST_DIRNAME/dkimsign.py" sign "$R/dkim.pem" example.test sel >"$T/msg"
	session_for
	TCPREMOTEIP=192.0.2.10 x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT" \
		-M "inet:127.0.0.1:$OPENDKIM_PORT"
	f=$(x_one "$MD")
	cat "$f"
	grep -n '^Authentication-Results:' "$f" >"$T/ar"
	[ "$(sed -n 1p "$T/ar")" = "5:Authentication-Results: opendkim.test.example;" ]
	[[ $(sed -n 2p "$T/ar") == *":Authentication-Results: test.example;" ]]
	grep -q '^	dkim=pass (2048-bit key; unprotected) header.d=example.test ' "$f"
	grep -q '^	dkim=pass header.d=example.test header.s=sel ' "$f"
	stripped "$f" "$RSPAMD_FIELDS" | cmp - "$T/msg"
}

@test "rspamd stopped: 451 at MAIL and nothing stored; -F accept delivers without it (last: it stops rspamd)" {
	x_stop_pid "$(cat "$R/rspamd.pid")"
	clean_message >"$T/msg"
	session_for
	x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT"
	grep -q $'^451 4.7.1 Service unavailable, try again later\r$' "$T/out"
	grep -q "milter-failed milter=inet:127.0.0.1:$RSPAMD_PORT stage=connect error=connect-refused action=tempfail" "$T/err"
	[ "$(x_count "$MD")" -eq 0 ]
	[ -z "$(ls "$MD/tmp")" ]
	x_run -m "$MD" -t 20 -M "inet:127.0.0.1:$RSPAMD_PORT" -F accept
	f=$(x_one "$MD")
	tail -n +5 "$f" | sed 's/$/\r/' | cmp - "$T/msg"
}
