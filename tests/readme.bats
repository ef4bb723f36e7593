#!/usr/bin/env bats
# README's promises, tested as written. Its blocks, taken out by heading (tests/recipes.bash),
# run unchanged in private namespaces (network, mounts, PIDs) where /etc, /usr/local, /run,
# /var and /home are private copies: the ten-minute path with xinetd and Dovecot, read back
# over IMAP after a login; the probes; tcpserver, inetd and HAProxy; the TLS lines for
# xinetd. Then what README and smtpd.8 say where they could disagree, what make check
# installs, the security model as root, the static size, make demo, make uninstall, and
# the summary line of tests/run.sh.

load launch
load recipes

setup() {
	ROOT=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
	SMTPD=${SMTPD:-$ROOT/smtpd}
	case $SMTPD in /*) ;; *) SMTPD=$PWD/$SMTPD ;; esac
	export SMTPD
	export PW='a long secret'
	T=$(mktemp -d)
	chmod 755 "$T"
}

teardown() {
	rm -rf "$T"
}

need() {
	local c
	for c in "$@"; do command -v "$c" >/dev/null || skip "$c is not installed"; done
}

# The blocks of the ten-minute path into $T ($1: a sed script for step 2), the stand-ins, and
# the services its steps start: xinetd and Dovecot in the foreground of the namespace.
tour_scripts() {
	local f
	r_block "1. Build and install" >"$T/step1.sh"
	r_block "2. The mail user and the store" | sed "${1:-}" >"$T/step2.sh"
	r_block "4. One launcher: xinetd" >"$T/step4.sh"
	r_block "5. Dovecot" >"$T/step5.sh"
	r_block "6. Test from outside" >"$T/step6.sh"
	r_block "Which addresses it accepts" sh 2 >"$T/vdomain.sh"
	r_block "Troubleshooting" >"$T/probe.sh"
	r_block "Troubleshooting" "" 1 >"$T/probe.expected"
	for f in step1 step2 step4 step5 step6 vdomain probe; do
		[ -s "$T/$f.sh" ] || { echo "README has no block for $f"; return 1; }
	done
	r_standins
	cat >"$T/services.sh" <<'EOF'
svc_xinetd() { r_daemon "$1" xinetd -dontfork -pidfile /run/xinetd.pid; l_wait_listen 25; }
svc_dovecot() { r_daemon "$1" dovecot -F; l_wait_listen 143; }
EOF
	# What Debian's dovecot-core does on installation that the recipe relies on: a certificate
	# (ssl-cert's snakeoil), as this machine's copy of /etc may lack one.
	cat >"$T/postinst-dovecot-imapd" <<'EOF'
#!/bin/sh
set -e
[ ! -e /etc/dovecot/private/dovecot.pem ] || exit 0
[ -e /etc/ssl/certs/ssl-cert-snakeoil.pem ] || make-ssl-cert generate-default-snakeoil
ln -s /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/dovecot/private/dovecot.pem
ln -s /etc/ssl/private/ssl-cert-snakeoil.key /etc/dovecot/private/dovecot.key
EOF
	chmod 755 "$T/postinst-dovecot-imapd"
}

# The namespace's script for the tour: the steps in order, the virtual domains, the probe,
# then each line of step 6 with mx.example.org as localhost and alice's password on stdin.
tour_ns() {
	cat >"$T/ns.sh" <<'EOF'
step() { echo "--- $1"; shift; bash -ex "$@"; }
step "step 1" "$T/step1.sh"
step "step 2" "$T/step2.sh"
step "step 4" "$T/step4.sh"
printf '%s\n%s\n' "$PW" "$PW" | step "step 5" "$T/step5.sh"
step "virtual domains" "$T/vdomain.sh"
swaks --server localhost --to bob@example.net --h-Subject "to bob" >/dev/null
swaks --server localhost --to robert@example.net --h-Subject "to robert" >/dev/null
echo "--- the probe"
rc=0
bash -e "$T/probe.sh" >"$T/probe.out" 2>&1 || rc=$?
echo "probe exit $rc" | tee -a "$T/probe.out"
echo "--- step 6"
n=0
while IFS= read -r line; do
	n=$((n + 1))
	cmd=$(printf '%s\n' "$line" | sed 's/mx\.example\.org/localhost/g')
	echo "\$ $cmd"
	timeout 30 bash -c "$cmd" <<<"$PW" >"$T/outside.$n" 2>&1 || true
	cat "$T/outside.$n"
done <"$T/step6.sh"
curl -sS --ssl-reqd -k -u "alice@example.org:$PW" imap://localhost/INBOX -X 'SEARCH ALL' >"$T/imap.search" 2>&1 || true
ls -lR /var/mail/vhosts >"$T/store.txt"
cp /var/mail/vhosts/example.net/bob/new/* "$T/" 2>/dev/null || true
ls /var/mail/vhosts/example.net/bob/new | wc -l >"$T/bob.count"
EOF
}

# What each line of step 6 printed: the replies its comment names (lines 1 to 3), then the
# extensions, openssl's word for a server without STARTTLS, and the message through Dovecot.
check_outside() {
	local n=0 re
	[ "$(wc -l <"$T/step6.sh")" -eq 6 ]
	sed -n '1,3s/.*# \([245][0-9][0-9] .*\)$/\1/p' "$T/step6.sh" | sed 's/<id>/[^ ]+/; s/\./\\./g' >"$T/expect"
	[ "$(wc -l <"$T/expect")" -eq 3 ]
	printf '%s\n' '250.SMTPUTF8' "Didn't find STARTTLS" '^Subject: test' >>"$T/expect"
	while IFS= read -r re; do
		n=$((n + 1))
		grep -qE -- "$re" "$T/outside.$n" || { echo "step 6, line $n: nothing matches $re"; return 1; }
	done <"$T/expect"
}

@test "readme: ten minutes, steps 1, 2, 4, 5, 6 as written: xinetd delivers, Dovecot serves the mail after a login" {
	r_need_root
	need xinetd swaks openssl curl dovecot doveadm make-ssl-cert
	tour_scripts
	tour_ns
	r_ns_run 300
	[ "$status" -eq 0 ]
	check_outside
	# both messages to alice (step 4's and step 6's); alice's login read the first back
	grep -q '^\* SEARCH 1 2\b' "$T/imap.search"
	[ -z "$(grep 'dovecot.*\(Error\|Panic\|Fatal\):' "$T/syslog")" ]
	# the log line that shows a delivery, in syslog (xinetd: fd 2 is the client's socket)
	grep -q 'smtpd\[[0-9]*\]: delivered id=.* to=<alice@example.org>' "$T/syslog"
	# bob@ and robert@ (the alias) in one Maildir
	[ "$(cat "$T/bob.count")" -eq 2 ]
	grep -l '^Subject: to robert' "$T"/*,S=*
	# every directory of the store is vmail's
	grep -q '^d.* vmail vmail .* example.org$' "$T/store.txt"
	[ -z "$(awk '/^d/ && $3 != "vmail"' "$T/store.txt")" ]
	# the troubleshooting probe prints what the page shows, and exits 67 for bob
	diff <(cat "$T/probe.expected"; echo "probe exit 67") "$T/probe.out"
}

@test "readme: control: the store made by the old step 2 (only cur/ new/ tmp/ vmail's) fails in Dovecot" {
	r_need_root
	need xinetd swaks openssl curl dovecot doveadm make-ssl-cert
	tour_scripts 's#^sudo install -d -o vmail.*#sudo install -d -o vmail -g vmail -m 700 /var/mail/vhosts/example.org/alice/{cur,new,tmp}#; /^    \/var\/mail\/vhosts\/example.org\/alice /d'
	cat "$T/step2.sh"
	tour_ns
	r_ns_run 300
	[ "$status" -eq 0 ]
	grep -E 'dovecot.*Error:.*(Permission denied|missing \+w perm)' "$T/syslog"
	! grep -q '^Subject: test' "$T/outside.6" || false
}

@test "readme: the Unix-accounts probe as written: -d refuses the other domain; without -d it is delivered" {
	r_need_root
	r_block "Which addresses it accepts" >"$T/probe.sh"
	r_block "Which addresses it accepts" "" 1 >"$T/expected"
	cat "$T/probe.sh" "$T/expected"
	grep -q " -d example.org .*-m '/home/%u/Maildir'" "$T/probe.sh"
	sed 's/ -d example.org / /' "$T/probe.sh" >"$T/probe-without.sh"
	r_standins
	cat >"$T/ns.sh" <<'EOF'
install -m 755 "$SMTPD" /usr/local/sbin/smtpd
useradd -m alice
runuser -u alice -- mkdir -p /home/alice/Maildir/cur /home/alice/Maildir/new /home/alice/Maildir/tmp
rc=0; bash -e "$T/probe.sh" >"$T/with" || rc=$?; echo "exit $rc" >>"$T/with"
rc=0; bash -e "$T/probe-without.sh" >"$T/without" || rc=$?; echo "exit $rc" >>"$T/without"
EOF
	r_ns_run 60
	[ "$status" -eq 0 ]
	diff <(cat "$T/expected"; echo "exit 67") "$T/with"
	diff <(printf '%s\n' "alice@example.org: deliver to /home/alice/Maildir" \
		"alice@example.net: deliver to /home/alice/Maildir" "exit 0") "$T/without"
}

# The tcpserver, inetd and HAProxy recipes start after steps 1 and 2.
base_steps() {
	r_block "1. Build and install" >"$T/step1.sh"
	r_block "2. The mail user and the store" >"$T/step2.sh"
	r_standins
	printf 'bash -e "$T/step1.sh" >/dev/null\nbash -e "$T/step2.sh"\n' >"$T/ns.sh"
}

# Appends to the namespace's script: COMMAND (a shell line) in the background, a message to
# alice through port 25, COMMAND stopped; its output in $T/NAME.log.
deliver_through() { # NAME COMMAND
	cat >>"$T/ns.sh" <<EOF
setsid $2 </dev/null >"\$T/$1.log" 2>&1 3>&- &
l_wait_listen 25
swaks --server 127.0.0.1 --to alice@example.org --h-Subject "via $1" >"\$T/swaks.out"
kill -- -\$!
cp /var/mail/vhosts/example.org/alice/new/* "\$T/"
EOF
}

@test "readme: under tcpserver, the line as written delivers (in the background of the namespace)" {
	r_need_root
	need tcpserver swaks
	base_steps
	r_block "Under tcpserver" >"$T/tcpserver.sh"
	grep -q '^sudo tcpserver .* 0 25 ' "$T/tcpserver.sh"
	deliver_through tcpserver 'bash -e "$T/tcpserver.sh"'
	r_ns_run 120
	[ "$status" -eq 0 ]
	grep -q '^Subject: via tcpserver' "$T"/*,S=*
	grep -q '^Received: from .* (\[127.0.0.1\])' "$T"/*,S=*
	grep -q 'smtpd\[[0-9]*\]: delivered id=' "$T/tcpserver.log"
}

@test "readme: under inetd, the line as written in Debian's openbsd-inetd delivers; smtpd logs to syslog" {
	r_need_root
	need swaks
	local inetd=$ROOT/tests/.cache/openbsd-inetd/usr/sbin/inetd
	[ -x "$inetd" ] || skip "openbsd-inetd not unpacked: run sh tests/deps.sh"
	base_steps
	r_block "Under inetd" "" 1 >"$T/inetd.conf"
	[ "$(wc -l <"$T/inetd.conf")" -eq 1 ]
	export INETD=$inetd
	deliver_through inetd '"$INETD" -d "$T/inetd.conf"'
	r_ns_run 120
	[ "$status" -eq 0 ]
	grep -q '^Subject: via inetd' "$T"/*,S=*
	grep -q 'smtpd\[[0-9]*\]: delivered id=' "$T/syslog"
}

@test "readme: behind HAProxy, the backend line and the haproxy.cfg lines as written carry the client's address" {
	r_need_root
	need tcpserver swaks haproxy
	base_steps
	r_block "Behind HAProxy, and more than one machine" >"$T/backend.sh"
	r_block "Behind HAProxy, and more than one machine" sh 2 >"$T/haproxy.sh"
	grep -q ' 0 2525 ' "$T/backend.sh"
	# the two backends of the page, 192.0.2.11 and .12, are 127.0.0.2 and .3 here
	sed 's/ 0 2525 / 127.0.0.2 2525 /' "$T/backend.sh" >"$T/mx1.sh"
	sed 's/ 0 2525 / 127.0.0.3 2525 /; s/mx1\.example\.org/mx2.example.org/' "$T/backend.sh" >"$T/mx2.sh"
	sed -i 's/192\.0\.2\.11/127.0.0.2/; s/192\.0\.2\.12/127.0.0.3/' "$T/haproxy.sh"
	cat >>"$T/services.sh" <<'EOF'
svc_haproxy() { mkdir -p /run/haproxy; r_daemon "$1" haproxy -db -f /etc/haproxy/haproxy.cfg; l_wait_listen 25; }
EOF
	cat >>"$T/ns.sh" <<'EOF'
for mx in mx1 mx2; do setsid bash -e "$T/$mx.sh" </dev/null >"$T/$mx.log" 2>&1 3>&- & done
l_wait_listen 2525
bash -ex "$T/haproxy.sh"
for i in 1 2; do
	swaks --server 127.0.0.1 --local-interface 127.0.0.9 --to alice@example.org --h-Subject "via haproxy $i" >"$T/swaks.$i"
done
cp /var/mail/vhosts/example.org/alice/new/* "$T/"
EOF
	r_ns_run 120
	cat "$T"/haproxy.log || true
	[ "$status" -eq 0 ]
	[ "$(grep -l '^Subject: via haproxy' "$T"/*,S=* | wc -l)" -eq 2 ]
	# the real client, not HAProxy's own address; round robin over both backends
	[ "$(grep -c '^Received: from .* (\[127.0.0.9\])' "$T"/*,S=* | awk -F: '{s += $2} END {print s}')" -eq 2 ]
	grep -q 'by mx1.example.org (smtpd)' "$T"/*,S=*
	grep -q 'by mx2.example.org (smtpd)' "$T"/*,S=*
}

# The TLS block's lines in place of those of /etc/xinetd.d/smtpd that have their keys, the
# others before its closing brace: FILE LINES
xinetd_lines() {
	awk 'NR == FNR { line[$1] = $0; order[++n] = $1; next }
		$1 in line { print line[$1]; done[$1] = 1; next }
		/^}/ { for (i = 1; i <= n; i++) if (!(order[i] in done)) print line[order[i]] }
		{ print }' "$2" "$1" >"$1.new"
	mv "$1.new" "$1"
}

@test "readme: TLS under xinetd, the lines as written: STARTTLS delivers and ends with close_notify; the old lines fail" {
	r_need_root
	need xinetd swaks openssl python3
	tour_scripts
	r_block "TLS" "" 1 >"$T/tls.lines"
	cat "$T/tls.lines"
	[ "$(wc -l <"$T/tls.lines")" -eq 3 ]
	# the old lines: no -S, and no PATH in env
	sed 's/ -S / /; s/= PATH=[^ ]* /= /' "$T/tls.lines" >"$T/old.lines"
	! cmp -s "$T/tls.lines" "$T/old.lines" || false
	cat >"$T/close.py" <<'EOF'
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", 25), 10)
f = s.makefile("rb")
def reply():
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line.decode().rstrip()
reply()
s.sendall(b"EHLO client.example\r\n")
reply()
s.sendall(b"STARTTLS\r\n")
print(reply())
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
try:
    t = ctx.wrap_socket(s, suppress_ragged_eofs=False)
    t.sendall(b"EHLO client.example\r\nQUIT\r\n")
    data = b""
    while True:
        d = t.recv(4096)
        if not d:
            print("close_notify after", data.decode().splitlines()[-1])
            break
        data += d
except ssl.SSLEOFError:
    print("no close_notify")
except (OSError, ssl.SSLError) as e:
    print("handshake failed:", e)
EOF
	cat >"$T/ns.sh" <<'EOF'
bash -e "$T/step1.sh" >/dev/null
bash -e "$T/step2.sh"
bash -e "$T/step4.sh"
# s6-networking's programs where the lines name them: the stand-ins
install -m 755 "$ROOT/tests/s6-standin.py" /usr/local/bin/s6-ucspitlsd
install -m 755 "$ROOT/tests/s6-standin.py" /usr/local/bin/s6-tlsd-io
install -m 644 "$ROOT/tests/ucspitls.py" /usr/local/bin/ucspitls.py
# README's certificate paths; the key readable by vmail, as the xinetd lines say
mkdir -p /etc/smtpd/tls
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mx.example.org \
	-keyout /etc/smtpd/tls/key.pem -out /etc/smtpd/tls/fullchain.pem 2>/dev/null
chgrp vmail /etc/smtpd/tls/key.pem
chmod 640 /etc/smtpd/tls/key.pem
for lines in tls old; do
	cp /etc/xinetd.d/smtpd "$T/smtpd.shipped"
	xinetd_lines /etc/xinetd.d/smtpd "$T/$lines.lines"
	cp /etc/xinetd.d/smtpd "$T/xinetd.$lines"
	systemctl restart xinetd
	: >"$T/syslog"
	swaks --server localhost --tls --to alice@example.org --h-Subject "over TLS ($lines lines)" >"$T/swaks.$lines" 2>&1 || true
	python3 "$T/close.py" >"$T/close.$lines" 2>&1
	sleep 0.2
	cp "$T/syslog" "$T/syslog.$lines"
	cp "$T/smtpd.shipped" /etc/xinetd.d/smtpd
done
cp /var/mail/vhosts/example.org/alice/new/* "$T/"
EOF
	{ declare -f xinetd_lines; cat "$T/ns.sh"; } >"$T/ns.new" && mv "$T/ns.new" "$T/ns.sh"
	r_ns_run 180
	[ "$status" -eq 0 ]
	cat "$T/xinetd.tls" "$T/swaks.tls" "$T/close.tls" "$T/syslog.tls"
	# as written: delivered over TLS, and the session ends with a close_notify
	grep -q '^<~  250 2\.0\.0 .* delivered' "$T/swaks.tls"
	grep -q '^Subject: over TLS (tls lines)' "$T"/*,S=*
	grep -q 'by mx.example.org (smtpd) with ESMTPS' "$(grep -l '^Subject: over TLS (tls lines)' "$T"/*,S=*)"
	grep -qx 'close_notify after 221 2.0.0 mx.example.org closing' "$T/close.tls"
	grep -q 'session .* end=quit .*tls=TLSv1' "$T/syslog.tls"
	# the old lines: s6-ucspitlsd cannot find s6-tlsd-io, and STARTTLS fails after its 220
	cat "$T/xinetd.old" "$T/swaks.old" "$T/close.old" "$T/syslog.old"
	grep -q '^220 2.0.0 Ready to start TLS' "$T/close.old"
	grep -q '^handshake failed' "$T/close.old"
	grep -q 'session .* end=tls-failed' "$T/syslog.old"
	! grep -q '^Subject: over TLS (old lines)' "$T"/*,S=* || false
}

@test "docs: every s6-ucspitlsd command line in README, smtpd.8, xinetd.d/ and systemd/ carries -S" {
	local lines
	# a command line: s6-ucspitlsd followed by its options, or xinetd's server_args for it
	lines=$(grep -nE 's6-ucspitlsd( +\\?-[A-Za-z]+( +[0-9]+)?)* +(\\-|-)-' "$ROOT/README.md" "$ROOT/smtpd.8" \
		"$ROOT"/xinetd.d/* "$ROOT"/systemd/* "$ROOT"/examples/* 2>/dev/null || true)
	lines+=$'\n'$(grep -n -A1 -E '^\s*server\s*=.*s6-ucspitlsd' "$ROOT/README.md" "$ROOT/smtpd.8" "$ROOT"/xinetd.d/* |
		grep -E 'server_args' || true)
	printf '%s\n' "$lines"
	[ "$(printf '%s\n' "$lines" | grep -c .)" -ge 5 ]
	! printf '%s\n' "$lines" | grep . | grep -vE '(s6-ucspitlsd|server_args *=) +(-[A-Za-z]+ +([0-9]+ +)?)*-S ' || false
}

# smtpd.8 as text, one paragraph a line
man_paragraphs() {
	mandoc -T utf8 "$ROOT/smtpd.8" | col -b | awk 'BEGIN { RS = "" } { gsub(/\n */, " "); print }'
}

@test "docs: README and smtpd.8 agree on STARTTLS, 550 5.1.3 against 501 5.1.3, xinetd's instances, op= names" {
	need mandoc
	local readme
	readme=$(awk 'BEGIN { RS = "" } { gsub(/\n */, " "); print }' "$ROOT/README.md")
	# STARTTLS: wherever a paragraph says it is 502, it says under which launcher it is not
	printf '%s\n' "$readme" "$(man_paragraphs)" | grep 'STARTTLS' | grep -E '502|no TLS' |
		grep -v 'UCSPI-TLS' >"$T/starttls" || true
	cat "$T/starttls"
	[ ! -s "$T/starttls" ]
	! grep -q "offers no .STARTTLS\|There is no TLS and" "$ROOT/README.md" "$ROOT/smtpd.8" || false
	# 550 5.1.3 is for names that parse; an unquoted leading dot is 501 5.1.3, in both
	man_paragraphs | grep '550 5.1.3' | grep -q '501 5.1.3'
	grep '^| `550 5.1.3`' "$ROOT/README.md" | grep -q 'quoted'
	grep '^| `501 5.1.3`' "$ROOT/README.md" | grep -q 'unquoted local part that starts with `.`'
	# xinetd closes a connection past instances: the shipped file's comment and README say so
	! grep -qi 'listen queue' "$ROOT/xinetd.d/smtpd" || false
	grep -q 'closed at once' <(r_block_text "Under xinetd")
	# every op= the troubleshooting table names is one mailbox.c logs
	local op
	for op in $(grep '^| ' "$ROOT/README.md" | grep -o 'op=[a-z-]*' | cut -d= -f2 | sort -u; grep -o '`\(link-into-tmp\|rename-into-new\|fsync-new\)`' "$ROOT/README.md" | tr -d '`'); do
		grep -q "\"$op\"" "$ROOT/mailbox.c" || { echo "op=$op is not in mailbox.c"; false; }
	done
	# no command a Debian 12 machine lacks by default and the page does not install: nc -N
	! grep -q 'nc -N' "$ROOT/README.md" || false
}

# the prose of README's section TITLE
r_block_text() {
	awk -v title="## $1" '$0 == title { s = 1; next } s && /^## / { exit } s { print }' "$ROOT/README.md"
}

@test "readme: the troubleshooting rows' examples get the row's reply: 550 5.1.3 and 501 5.1.3" {
	local code row r n=0
	mkdir -p "$T/s/x.example"
	for code in "550 5.1.3" "501 5.1.3"; do
		row=$(grep "^| \`$code\` /" "$ROOT/README.md")
		for r in $(printf '%s\n' "$row" | grep -o '`[^` ]*@`' | tr -d '`'); do
			n=$((n + 1))
			printf 'HELO c\r\nMAIL FROM:<q@y>\r\nRCPT TO:<%sx.example>\r\nQUIT\r\n' "$r" |
				"$SMTPD" -h h.example -m "$T/s/%d/%u" 2>/dev/null | sed -n 4p | tr -d '\r' >"$T/reply"
			echo "$r: $(cat "$T/reply") (the row says $code)"
			[ "$(cut -c1-9 "$T/reply")" = "$code" ]
		done
	done
	[ "$n" -ge 7 ]
}

@test "readme: the troubleshooting row for tmp/: open-tmp when tmp/ cannot be opened, create-in-tmp when it cannot be written" {
	[ "$(id -u)" = 0 ] || skip "needs root (setpriv to nobody)"
	local s=$T/s/x.example box op
	mkdir -p "$s"/{a,b}/{cur,new,tmp}
	chown -R nobody "$T/s"
	chown root "$s/a/tmp" "$s/b/tmp"
	chmod 700 "$s/a/tmp"
	chmod 755 "$s/b/tmp"
	for box in a:open-tmp b:create-in-tmp; do
		op=${box#*:}
		box=${box%%:*}
		printf 'HELO x\r\nMAIL FROM:<q@y>\r\nRCPT TO:<%s@x.example>\r\nDATA\r\n' "$box" |
			setpriv --reuid=nobody --regid=nogroup --clear-groups "$SMTPD" -h h.example -m "$T/s/%d/%u" \
				>"$T/out" 2>"$T/err" || true
		cat "$T/out" "$T/err"
		grep -q '^451 4.3.0' "$T/out"
		grep -q "rejected .* path=$s/$box op=$op errno=EACCES reply=451 code=4.3.0" "$T/err"
		grep '^| `451 4.3.0` at `DATA`' "$ROOT/README.md" | grep -q "op=$op"
		setpriv --reuid=nobody --regid=nogroup --clear-groups "$SMTPD" -b -h h.example -m "$T/s/%d/%u" \
			"$box@x.example" | grep -q 'tmp-not-writable$'
	done
}

@test "readme: the shape: for whom, the two commands, the contents' links lead to headings; the reference is smtpd.8" {
	local anchors link
	head -n 3 "$ROOT/README.md" | grep -q '^smtpd .* for admins who'
	[ "$(awk '/^## /{exit} /^make (demo|check) /' "$ROOT/README.md" | wc -l)" -eq 2 ]
	# GitHub's anchors: lower case, punctuation dropped, spaces as -
	anchors=$(awk '/^```/ { f = !f; next } !f && /^#+ / { sub(/^#+ /, ""); print tolower($0) }' "$ROOT/README.md" |
		sed 's/[^a-z0-9 _-]//g; s/ /-/g')
	for link in $(grep -o '](#[^)]*)' "$ROOT/README.md" | sed 's/^](#//; s/)$//'); do
		printf '%s\n' "$anchors" | grep -qx -- "$link" || { echo "no heading for #$link"; false; }
	done
	for link in $(grep -o '](bench/README.md#[^)]*)' "$ROOT/README.md" | sed 's/.*#//; s/)$//'); do
		awk '/^#+ / { sub(/^#+ /, ""); print tolower($0) }' "$ROOT/bench/README.md" |
			sed 's/[^a-z0-9 _-]//g; s/ /-/g' | grep -qx -- "$link" || { echo "no heading in bench/README.md for #$link"; false; }
	done
	# the headings other parts of the project add text under
	grep -qx '## Durability' "$ROOT/README.md"
	grep -qx '### Delivering as root' "$ROOT/README.md"
	grep -qx '## Troubleshooting' "$ROOT/README.md"
	grep -qx '## TLS' "$ROOT/README.md"
	# the recipes come before the reference-like parts, the tests and development last
	[ "$(grep -n '^## Receive mail for your domain in ten minutes$' "$ROOT/README.md" | cut -d: -f1)" -lt 60 ]
	[ "$(grep -n '^## Troubleshooting$' "$ROOT/README.md" | cut -d: -f1)" -lt "$(grep -n '^## What is tested$' "$ROOT/README.md" | cut -d: -f1)" ]
	# no reference tables of smtpd.8's here, and no benchmark tables
	! grep -qE '^## (Options|Limits|Exit status|Logging|Protocol)$' "$ROOT/README.md" || false
	! grep -q '^| `-m TEMPLATE` |' "$ROOT/README.md" || false
	! grep -qE '^\| (shipped|1 msg/session)' "$ROOT/README.md" || false
	grep -q 'man ./smtpd.8' "$ROOT/README.md"
	# the systemd recipe names what it needs instead of leaning on the xinetd one
	r_block_text "Under systemd" | grep -q '^Steps 1 and 2 first'
}

@test "readme: the packages make check installs are the ones tests/deps.sh names" {
	doc=$(awk '/^`make check` first runs/,/`\. Run by/' "$ROOT/README.md" | tr '\n' ' ' |
		sed 's/.*the tests use: *`//; s/`\..*//' | tr -s ' ' '\n' | sort)
	code=$(sed -n '/^packages="/,/"$/p' "$ROOT/tests/deps.sh" | tr -d '"' | sed 's/^packages=//' |
		tr -s ' \t' '\n' | sed '/^$/d' | sort)
	[ -n "$code" ]
	diff <(echo "$doc") <(echo "$code")
}

@test "readme: deps.sh installs under a policy-rc.d that denies starts, then disables what got enabled" {
	[ "$(id -u)" = 0 ] || skip "needs root (a private mount namespace)"
	command -v unshare >/dev/null || skip "unshare (util-linux) not installed"
	mkdir -p "$T/bin" "$T/fs"
	# dpkg: one package missing; apt-get: checks the policy, then enables like Debian would
	cat >"$T/bin/dpkg" <<'EOF'
#!/bin/sh
[ "$2" != xinetd ]
EOF
	cat >"$T/bin/apt-get" <<'EOF'
#!/bin/sh
[ "$1" = update ] && exit 0
[ "$1" = download ] && exit 0 # openbsd-inetd for tests/.cache (dpkg -x above unpacks nothing)
/usr/sbin/policy-rc.d xinetd start; echo "policy says $?" >>"$T/apt.log"
echo "install: $*" >>"$T/apt.log"
mkdir -p /etc/systemd/system/multi-user.target.wants /etc/rc2.d
ln -s /lib/systemd/system/smtpdtestd.service /etc/systemd/system/multi-user.target.wants/smtpdtestd.service
ln -s ../init.d/smtpdtestd /etc/rc2.d/S01smtpdtestd
EOF
	cat >"$T/bin/update-rc.d" <<'EOF'
#!/bin/sh
[ "$2" = disable ] && mv "/etc/rc2.d/S01$1" "/etc/rc2.d/K01$1"
EOF
	printf '#!/bin/sh\nexit 1\n' >"$T/bin/systemctl"
	chmod 755 "$T"/bin/*
	cat >"$T/ns.sh" <<'EOF'
set -u
mount -t tmpfs tmpfs "$T/fs"
mkdir "$T/fs/etc" "$T/fs/up" "$T/fs/work"
cp -a /etc/. "$T/fs/etc/"
mount --bind "$T/fs/etc" /etc
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$T/fs/up,workdir=$T/fs/work" /usr/sbin
export PATH="$T/bin:$PATH"
rm -f /usr/sbin/policy-rc.d
sh "$ROOT/tests/deps.sh"; echo "deps.sh exit $?"
ls /usr/sbin/policy-rc.d 2>&1
ls /etc/systemd/system/multi-user.target.wants/smtpdtestd.service 2>&1
ls /etc/rc2.d/*smtpdtestd
# an admin's own policy that allows starts: nothing is installed, the policy stays
printf '#!/bin/sh\nexit 0\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
sh "$ROOT/tests/deps.sh"; echo "deps.sh exit $?"
cat /usr/sbin/policy-rc.d
EOF
	run timeout 60 env T="$T" ROOT="$ROOT" unshare --mount --pid --fork --kill-child --mount-proc sh "$T/ns.sh"
	echo "$output"
	cat "$T/apt.log"
	[ "$status" -eq 0 ]
	grep -qx 'policy says 101' "$T/apt.log"
	[ "$(grep -c '^install: .* xinetd$' "$T/apt.log")" -eq 1 ]
	echo "$output" | grep -qx 'deps.sh exit 0'
	echo "$output" | grep -q "policy-rc.d': No such file"
	echo "$output" | grep -q "smtpdtestd.service': No such file"
	echo "$output" | grep -qx '/etc/rc2.d/K01smtpdtestd'
	echo "$output" | grep -q 'exists and allows starts'
	echo "$output" | grep -qx 'deps.sh exit 1'
	echo "$output" | grep -qx 'exit 0'
}

@test "readme: security model: as root, files get their Maildir's owner; others' links and sub-directories are refused" {
	[ "$(id -u)" = 0 ] || skip "needs root"
	id nobody >/dev/null 2>&1 && id daemon >/dev/null 2>&1 || skip "no users nobody and daemon"
	local s=$T/s/d.example
	mkdir -p "$s"/{nob,dae,mix}/{cur,new,tmp}
	chown -R nobody "$s/nob" && chown -R daemon "$s/dae"
	chown nobody "$s/mix" "$s/mix/new"
	ln -s nob "$s/evil" && chown -h daemon "$s/evil" # daemon points a name at nobody's Maildir
	ln -s nob "$s/good"                              # root's link: followed
	printf 'HELO x\nMAIL FROM:<a@b.example>\nRCPT TO:<nob@d.example>\nRCPT TO:<dae@d.example>\nRCPT TO:<evil@d.example>\nRCPT TO:<good@d.example>\nRCPT TO:<mix@d.example>\nDATA\nSubject: s\n\nhi\n.\nQUIT\n' |
		"$SMTPD" -h h.example -m "$T/s/%d/%u" >"$T/out" 2>/dev/null
	cat "$T/out"
	[ "$(sed -n 4,8p "$T/out" | tr -d '\r' | cut -c1-9 | tr '\n' ' ')" = "250 2.1.5 250 2.1.5 550 5.1.1 250 2.1.5 451 4.3.0 " ]
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(stat -c %U "$s"/nob/new/*)" = nobody ]
	[ "$(stat -c %U "$s"/dae/new/*)" = daemon ]
	[ "$(stat -c %a "$s"/nob/new/*)" = 600 ]
	[ -z "$(ls "$s/mix/new")" ]
}

@test "readme: the pipe at the top, a catch-all with -d, delivers into ./Maildir, made there" {
	r_block "smtpd" sh 2 | sed "s#^    \./smtpd #    $SMTPD #" >"$T/pipe.sh"
	grep -q -- ' -d example.net -m ./Maildir$' "$T/pipe.sh"
	cd "$T"
	run bash -e pipe.sh
	echo "$output"
	[ "$status" -eq 0 ]
	echo "$output" | grep -q '^250 2.0.0 .* delivered'
	grep -qx 'Subject: hi' "$T"/Maildir/new/*
}

@test "readme: the static size README gives is within 5 % of what make static prints" {
	command -v musl-gcc >/dev/null || skip "musl-gcc (musl-tools) not installed"
	doc=$(grep '^| x86-64 (`make static`) | musl' "$ROOT/README.md" | awk -F'|' '{print $4}' | tr -dc 0-9)
	[ -n "$doc" ]
	rm -rf "$T/src" && mkdir "$T/src" && cp "$ROOT"/*.c "$ROOT"/*.h "$ROOT/Makefile" "$T/src/"
	run make -s -C "$T/src" static
	echo "$output"
	built=$(echo "$output" | sed -n 's/^smtpd-static: musl, \([0-9]*\) bytes$/\1/p')
	echo "README $doc, built $built"
	[ "$built" -gt 0 ]
	[ $((built * 100 / doc)) -ge 95 ] && [ $((built * 100 / doc)) -le 105 ]
}

@test "readme: make demo shows each line sent, then its reply; a refused recipient, the %d/%u template, the log" {
	rm -rf "$T/src" && mkdir "$T/src" && cp -r "$ROOT"/*.c "$ROOT"/*.h "$ROOT/Makefile" "$ROOT/examples" "$T/src/"
	run make -s -C "$T/src" demo
	echo "$output"
	[ "$status" -eq 0 ]
	# the command line shows the template
	echo "$output" | grep -q '^\$ ./smtpd -h demo.example -m .*/%d/%u'
	# each client line is followed by its reply, not all lines then all replies
	echo "$output" | grep -A1 -x 'C: MAIL FROM:<alice@example.org>' | tail -n 1 | grep -qx 'S: 250 2.1.0 Ok'
	echo "$output" | grep -A1 -x 'C: RCPT TO:<bob@demo.example>' | tail -n 1 | grep -qx 'S: 250 2.1.5 Ok'
	echo "$output" | grep -A1 -x 'C: DATA' | grep -q '^S: 354 '
	# refused: a user without a Maildir, a domain without a directory
	echo "$output" | grep -A1 '^C: RCPT TO:<dave@demo.example>' | tail -n 1 | grep -qx 'S: 550 5.1.1 No such user'
	echo "$output" | grep -A1 '^C: RCPT TO:<eve@elsewhere.example>' | tail -n 1 | grep -qx 'S: 550 5.7.1 Relaying denied'
	echo "$output" | grep -qx 'S: 220 demo.example ESMTP smtpd'
	[ "$(echo "$output" | grep -c '^S: 250 2.0.0 .* delivered$')" -eq 2 ]
	[ "$(echo "$output" | grep -c '^S: 221 ')" -eq 2 ]
	# the log lines, and where each message landed
	echo "$output" | grep -q '^L: smtpd\[[0-9]*\]: refused .* to=<dave@demo.example> reply=550 code=5.1.1'
	echo "$output" | grep -q '^L: smtpd\[[0-9]*\]: delivered id=.* to=<bob@demo.example>'
	echo "$output" | grep -q '^L: smtpd\[[0-9]*\]: session .* end=quit'
	echo "$output" | grep -q '^== demo/vhosts/demo.example/bob/new/'
}

@test "readme: make uninstall removes what make install put in place, and the man8/ it made" {
	rm -rf "$T/src" && mkdir "$T/src" && cp "$ROOT"/*.c "$ROOT"/*.h "$ROOT/Makefile" "$ROOT/smtpd.8" "$T/src/"
	make -s -C "$T/src" install DESTDIR="$T/dest" PREFIX=/usr/local
	[ -x "$T/dest/usr/local/sbin/smtpd" ] && [ -f "$T/dest/usr/local/share/man/man8/smtpd.8" ]
	make -s -C "$T/src" uninstall DESTDIR="$T/dest" PREFIX=/usr/local
	[ -z "$(find "$T/dest" -type f)" ]
	[ ! -e "$T/dest/usr/local/share/man/man8" ]
	# a man8/ with another page in it stays, with that page
	make -s -C "$T/src" install DESTDIR="$T/dest" PREFIX=/usr/local
	touch "$T/dest/usr/local/share/man/man8/other.8"
	make -s -C "$T/src" uninstall DESTDIR="$T/dest" PREFIX=/usr/local
	[ -f "$T/dest/usr/local/share/man/man8/other.8" ]
	[ ! -e "$T/dest/usr/local/share/man/man8/smtpd.8" ]
}

@test "readme: tests/run.sh counts skipped tests apart from passed ones" {
	mkdir -p "$T/w/tests"
	printf '@test "a" { true; }\n@test "b" { skip "why"; }\n@test "c" { true; }\n' >"$T/w/tests/x.bats"
	cd "$T/w"
	# the bats of PATH, not the one running this file (its libexec comes first in PATH here)
	PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v bats-core | paste -sd:)
	run env -i PATH="$PATH" HOME="$T" sh "$ROOT/tests/run.sh" plain
	echo "$output"
	[ "$status" -eq 0 ]
	[ "${lines[-1]}" = "plain: 2 passed, 1 skipped, 0 failed" ]
	printf '@test "d" { false; }\n' >>"$T/w/tests/x.bats"
	run env -i PATH="$PATH" HOME="$T" sh "$ROOT/tests/run.sh" plain
	[ "$status" -ne 0 ]
	[ "${lines[-1]}" = "plain: 2 passed, 1 skipped, 1 failed" ]
}

@test "readme: every source file and every launcher file of the tree is in the Files table" {
	local f missing=""
	for f in $(cd "$ROOT" && git ls-files '*.c' '*.h' 'systemd/*' 'xinetd.d/*' 2>/dev/null | grep -v '^tests/\|^bench/'); do
		grep -q "^| \`$f\`\|^| .*\`$(dirname "$f")/\`" "$ROOT/README.md" || missing="$missing $f"
	done
	[ -z "$missing" ] || { echo "not in README's Files table:$missing"; false; }
}
