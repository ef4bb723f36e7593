#!/usr/bin/env bats
# A DNS blocklist in front of smtpd, as README's recipe has it: ucspi-tcp's rblsmtpd between
# tcpserver and smtpd. rblsmtpd asks DNSCACHEIP on port 53 alone, so everything runs in a
# network namespace of its own (unshare -n, loopback up): dnsmasq there serves the test zone
# bl.test, where 127.0.0.2 is listed and 127.0.0.1 is not.

load pipe

setup() {
	[ "$(id -u)" = 0 ] || skip "needs root for a network namespace (unshare -n)"
	command -v rblsmtpd >/dev/null && command -v tcpserver >/dev/null &&
		command -v dnsmasq >/dev/null || skip "needs ucspi-tcp-ipv6 and dnsmasq-base"
	T=$(mktemp -d)
	MD=$T/Maildir
	x_maildir "$MD"
}

teardown() {
	rm -rf "$T"
}

@test "rblsmtpd: a listed client gets rblsmtpd's refusal and never reaches smtpd; an unlisted one delivers" {
	cat >"$T/net.sh" <<'EOF'
set -u
ip link set lo up
dnsmasq --keep-in-foreground --user=nobody --conf-file=/dev/null --port=53 \
	--listen-address=127.0.0.1 --bind-interfaces --no-resolv \
	"--txt-record=2.0.0.127.bl.test,Listed by bl.test: see https://bl.test/127.0.0.2" \
	3>&- 2>"$T/dnsmasq.log" &
dns=$!
DNSCACHEIP=127.0.0.1 tcpserver -R -H -l0 127.0.0.1 25 rblsmtpd -r bl.test \
	"$SMTPD" -h test.example -m "$MD" 3>&- 2>"$T/server.log" &
tcp=$!
for i in $(seq 250); do ss -Hltn 'sport = :25' | grep -q LISTEN && break; sleep 0.02; done
timeout 60 python3 - <<'PY'
import smtplib
for src in ('127.0.0.2', '127.0.0.1'):
    c = smtplib.SMTP('127.0.0.1', 25, source_address=(src, 0), timeout=20)
    try:
        c.sendmail('a@example.org', ['b@example.net'], 'Subject: from %s\r\n\r\nhi\r\n' % src)
        print(src, 'delivered')
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients['b@example.net']
        print(src, code, text.decode())
    c.quit()
PY
status=$?
kill "$tcp" "$dns"
wait
exit $status
EOF
	T=$T MD=$MD SMTPD=$(x_smtpd) run timeout 120 unshare -n bash "$T/net.sh"
	echo "$output"
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "127.0.0.2 451 Listed by bl.test: see https://bl.test/127.0.0.2" ]
	[ "${lines[1]}" = "127.0.0.1 delivered" ]
	f=$(x_one "$MD")
	grep -q '^Subject: from 127.0.0.1$' "$f"
	grep -q '^Received: from .* (\[127.0.0.1\])$' "$f"
	cat "$T/server.log"
	grep -q 'session client=127.0.0.1 ' "$T/server.log"
	! grep -q 'client=127.0.0.2' "$T/server.log" || false
}
