#!/usr/bin/env bats
# README's promises, tested as written: the xinetd, virtual-domain and "from outside" shell
# blocks run unchanged in private namespaces (network, mounts, PIDs) where /etc, /usr/local,
# /run, /var/log and /var/mail are private copies, then Dovecot reads the store as vmail;
# what make check installs; the security model as root; the static size; make demo, make
# uninstall, and the summary line of tests/run.sh.

load launch

setup() {
	ROOT=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
	SMTPD=${SMTPD:-$ROOT/smtpd}
	T=$(mktemp -d)
	chmod 755 "$T"
}

teardown() {
	rm -rf "$T"
}

IMAP_BIN=/usr/lib/dovecot/imap

# The first ```sh block after the heading "## $1" of README.md.
readme_block() {
	awk -v h="## $1" '
		$0 == h { in_sec = 1; next }
		in_sec && /^## / { exit }
		in_sec && $0 == "```sh" { in_blk = 1; next }
		in_blk && $0 == "```" { exit }
		in_blk { print }
	' "$ROOT/README.md"
}

# What the namespace needs besides the blocks: sudo and systemctl stand-ins (this machine's
# services are never asked), and the script run as PID 1 of the new PID namespace, so that
# every process it leaves (xinetd, smtpd) is killed when it ends.
write_namespace() {
	mkdir -p "$T/bin" "$T/fs"
	cat >"$T/bin/sudo" <<'EOF'
#!/bin/sh
# root already; "sudo -u USER cmd" runs cmd as USER
if [ "$1" = -u ]; then u=$2; shift 2; exec runuser -u "$u" -- "$@"; fi
exec "$@"
EOF
	cat >"$T/bin/systemctl" <<'EOF'
#!/bin/sh
# "systemctl reload xinetd": an xinetd of the namespace's own, in the foreground
[ "$*" = "reload xinetd" ] || { echo "systemctl $*: not expected here" >&2; exit 1; }
xinetd -dontfork -pidfile /run/xinetd.pid >"$T/xinetd.log" 2>&1 &
for i in $(seq 250); do
	ss -Hltn 'sport = :25' | grep -q LISTEN && exit 0
	sleep 0.02
done
echo "xinetd is not listening on port 25" >&2
exit 1
EOF
	chmod 755 "$T/bin/sudo" "$T/bin/systemctl"
	cat >"$T/ns.sh" <<'EOF'
set -eu
ip link set lo up
# Everything the recipes write lands in this tmpfs, seen only in this mount namespace.
mount -t tmpfs tmpfs "$T/fs"
mkdir "$T/fs/etc" "$T/fs/up" "$T/fs/work"
cp -a /etc/. "$T/fs/etc/"
mount --bind "$T/fs/etc" /etc
mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$T/fs/up,workdir=$T/fs/work" /usr/local
for d in /run /var/log /var/mail; do mount -t tmpfs tmpfs "$d"; done
chmod 2775 /var/mail
userdel vmail >/dev/null 2>&1 || true # in the copy: the recipe makes its own
export PATH="$T/bin:$PATH"
cd "$ROOT"
echo "--- xinetd recipe"
bash -ex "$T/xinetd.sh"
echo "--- virtual-domain recipe"
bash -ex "$T/vdomain.sh"
swaks --server localhost --to bob@example.net --h-Subject "to bob"
swaks --server localhost --to robert@example.net --h-Subject "to robert"
echo "--- from outside"
n=0
while IFS= read -r line; do
	n=$((n + 1))
	cmd=$(printf '%s\n' "$line" | sed 's/mx\.example\.org/localhost/g')
	echo "\$ $cmd"
	out=$(timeout 30 bash -c "$cmd" 2>&1) || true
	printf '%s\n' "$out"
	re=$(sed -n "${n}p" "$T/expect")
	printf '%s\n' "$out" | grep -qE -- "$re" || { echo "command $n: no line matching $re"; exit 1; }
done <"$T/outside.sh"
[ "$n" = "$(wc -l <"$T/expect")" ] || { echo "$n commands, $(wc -l <"$T/expect") expected"; exit 1; }
echo "--- Dovecot as vmail"
mkdir -m 755 /run/dc
printf 'mail_location = maildir:%s\nstats_writer_socket_path =\nlog_path = /dev/stderr\n' \
	/var/mail/vhosts/example.org/alice >/run/dc/imap.conf
printf 'a SELECT INBOX\r\nb FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\nc LOGOUT\r\n' |
	timeout 30 setpriv --reuid=vmail --regid=vmail --clear-groups env -i USER=vmail \
		HOME=/var/mail/vhosts /usr/lib/dovecot/imap -c /run/dc/imap.conf >"$T/imap.out" 2>"$T/dovecot.log" || true
cat "$T/imap.out" "$T/dovecot.log"
ls -lR /var/mail/vhosts >"$T/store.txt"
cp /var/mail/vhosts/example.net/bob/new/* "$T/" 2>/dev/null || true
ls /var/mail/vhosts/example.net/bob/new | wc -l >"$T/bob.count"
EOF
}

# One run of the recipes: the README's blocks ($1: sed applied to the xinetd block).
run_recipes() {
	command -v unshare >/dev/null || skip "unshare (util-linux) not installed"
	command -v xinetd >/dev/null || skip "xinetd not installed"
	command -v swaks >/dev/null || skip "swaks not installed"
	command -v nc >/dev/null || skip "nc (netcat-openbsd) not installed"
	command -v openssl >/dev/null || skip "openssl not installed"
	[ -x "$IMAP_BIN" ] || skip "Dovecot's imap ($IMAP_BIN) not installed"
	[ "$(id -u)" = 0 ] || skip "needs root (namespaces, port 25, the vmail user)"
	readme_block "Five minutes with xinetd" | sed "${1:-}" >"$T/xinetd.sh"
	readme_block "Virtual domains" >"$T/vdomain.sh"
	readme_block "Testing a setup from outside" >"$T/outside.sh"
	[ -s "$T/xinetd.sh" ] && [ -s "$T/vdomain.sh" ] && [ -s "$T/outside.sh" ]
	# What each line of "from outside" must print: the replies its comment names, then the
	# 221 of a QUIT typed into nc, then openssl's word for a server without STARTTLS.
	sed -n '1,3s/.*# \([245][0-9][0-9] .*\)$/\1/p' "$T/outside.sh" | sed 's/<id>/[^ ]+/; s/\./\\./g' >"$T/expect"
	[ "$(wc -l <"$T/expect")" = 3 ]
	printf '%s\n' '^221 ' "Didn't find STARTTLS" >>"$T/expect"
	write_namespace
	run timeout 300 env T="$T" ROOT="$ROOT" unshare --mount --net --pid --fork --kill-child \
		--mount-proc bash "$T/ns.sh"
	echo "$output"
}

@test "readme: the xinetd, virtual-domain and from-outside recipes run as written; Dovecot reads the store as vmail" {
	run_recipes
	[ "$status" -eq 0 ]
	# the xinetd swaks and the first "from outside" one, both to alice
	grep -q '^\* 2 EXISTS' "$T/imap.out"
	grep -q '^c OK' "$T/imap.out"
	[ "$(grep -c '^Subject: test' "$T/imap.out")" -eq 2 ]
	[ -z "$(grep -E 'Error:|Panic:|Fatal:' "$T/dovecot.log")" ]
	# bob@ and robert@ (the alias) in one Maildir
	[ "$(cat "$T/bob.count")" -eq 2 ]
	grep -l '^Subject: to robert' "$T"/*,S=*
	# every directory of the store is vmail's
	grep -q '^d.* vmail vmail .* example.org$' "$T/store.txt"
	[ -z "$(awk '/^d/ && $3 != "vmail"' "$T/store.txt")" ]
}

@test "readme: control: the store made by the old recipe (only cur/ new/ tmp/ vmail's) fails in Dovecot" {
	run_recipes 's#^sudo install -d -o vmail.*#sudo install -d -o vmail -g vmail -m 700 /var/mail/vhosts/example.org/alice/{cur,new,tmp}#; /^    \/var\/mail\/vhosts\/example.org\/alice /d'
	cat "$T/xinetd.sh"
	[ "$status" -eq 0 ]
	grep -E 'Error:.*(Permission denied|missing \+w perm)' "$T/dovecot.log"
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

@test "readme: make demo shows each transcript's lines as sent and the replies" {
	rm -rf "$T/src" && mkdir "$T/src" && cp -r "$ROOT"/*.c "$ROOT"/*.h "$ROOT/Makefile" "$ROOT/examples" "$T/src/"
	run make -s -C "$T/src" demo
	echo "$output"
	[ "$status" -eq 0 ]
	echo "$output" | grep -qx 'C: EHLO client.example'
	echo "$output" | grep -qx 'C: RCPT TO:<carol@demo.example>'
	echo "$output" | grep -qx 'S: 220 demo.example ESMTP smtpd'
	[ "$(echo "$output" | grep -c '^S: 250 2.0.0 .* delivered$')" -eq 2 ]
	[ "$(echo "$output" | grep -c '^S: 221 ')" -eq 2 ]
}

@test "readme: make uninstall removes what make install put in place" {
	rm -rf "$T/src" && mkdir "$T/src" && cp "$ROOT"/*.c "$ROOT"/*.h "$ROOT/Makefile" "$ROOT/smtpd.8" "$T/src/"
	make -s -C "$T/src" install DESTDIR="$T/dest" PREFIX=/usr/local
	[ -x "$T/dest/usr/local/sbin/smtpd" ] && [ -f "$T/dest/usr/local/share/man/man8/smtpd.8" ]
	make -s -C "$T/src" uninstall DESTDIR="$T/dest" PREFIX=/usr/local
	[ -z "$(find "$T/dest" -type f)" ]
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
