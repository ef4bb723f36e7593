#!/usr/bin/env bats
# README's "Behind Postfix, OpenSMTPD or Exim", run as written against Debian 12's packages:
# postfix, exim4 (daemon-light, base, config) and opensmtpd, fetched with apt-get download and
# unpacked with dpkg -x into tests/.cache/mta (never installed: Debian allows one MTA). Each
# test is a private namespace (tests/recipes.bash) where the package is laid over /usr and its
# /etc, set up as its Debian maintainer scripts would (users, configuration, running), then
# README's blocks: the LMTP units, the socket's drop-in and the MTA's lines. smtpd-lmtp.socket
# is stood in for by systemd-socket-activate, reading the unit and its drop-ins; tests/nspawn.sh
# runs the units under a real systemd. A message to alice goes through the MTA into her Maildir.

load recipes

setup_file() {
	local cache=$BATS_TEST_DIRNAME/.cache/mta
	mkdir -p "$cache"
	# one fetch at a time; a set is unpacked whole or not at all
	(
		flock -w 300 9 || exit 0
		cd "$cache" || exit 0
		for set in "postfix:postfix" "exim:exim4-base exim4-config exim4-daemon-light" "opensmtpd:opensmtpd"; do
			dir=${set%%:*}
			[ -e "$dir/.unpacked" ] && continue
			rm -rf "$dir.tmp" && mkdir "$dir.tmp"
			for p in ${set#*:}; do
				ls "${p}"_*.deb >/dev/null 2>&1 || timeout 120 apt-get download -q "$p" >/dev/null 2>&1 ||
					{ timeout 120 apt-get update -q >/dev/null 2>&1 && timeout 120 apt-get download -q "$p" >/dev/null 2>&1; } ||
					continue 2
				dpkg -x "${p}"_*.deb "$dir.tmp" || continue 2
			done
			touch "$dir.tmp/.unpacked" && rm -rf "$dir" && mv "$dir.tmp" "$dir"
		done
	) 9>"$cache/.lock"
}

setup() {
	ROOT=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
	SMTPD=${SMTPD:-$ROOT/smtpd}
	case $SMTPD in /*) ;; *) SMTPD=$PWD/$SMTPD ;; esac
	export SMTPD
	T=$(mktemp -d)
	chmod 755 "$T"
}

teardown() {
	rm -rf "$T"
}

# The package set DIR laid over /usr, or a skip that says why not: PKGS BINARY...
use_package() {
	local dir=$BATS_TEST_DIRNAME/.cache/mta/$1 b missing
	shift
	r_need_root
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate (systemd) not installed"
	command -v swaks >/dev/null || skip "swaks not installed"
	[ -e "$dir/.unpacked" ] || skip "could not fetch and unpack $1 (apt-get download)"
	for b in "$@"; do
		missing=$(LD_LIBRARY_PATH=$dir/usr/lib/postfix ldd "$dir$b" 2>&1 | grep 'not found' || true)
		[ -z "$missing" ] || skip "$b lacks shared libraries (tests/deps.sh installs them): $missing"
	done
	export R_PACKAGE=$dir
}

# README's blocks for MTA into $T, the stand-ins, and the LMTP socket's stand-in: the unit as
# installed, its drop-ins (ListenStream=, SocketGroup=) and the service's ExecStart and User.
mta_blocks() { # MTA
	r_block "Behind Postfix, OpenSMTPD or Exim" >"$T/units.sh"
	r_block "$1" >"$T/mta.sh"
	[ -s "$T/units.sh" ] && [ -s "$T/mta.sh" ]
	cat "$T/mta.sh"
	r_standins
	cat >"$T/services.sh" <<'EOF'
unit_value() { # KEY FILE...: the last value, after the last empty one
	sed -n "s/^$1=//p" "$@" 2>/dev/null | awk '$0 == "" { v = ""; next } { v = $0 } END { print v }'
}
svc_smtpd_lmtp_socket() {
	local d=/etc/systemd/system sock group mode user cmd
	sock=$(unit_value ListenStream $d/smtpd-lmtp.socket $d/smtpd-lmtp.socket.d/*.conf)
	group=$(unit_value SocketGroup $d/smtpd-lmtp.socket $d/smtpd-lmtp.socket.d/*.conf)
	mode=$(unit_value SocketMode $d/smtpd-lmtp.socket $d/smtpd-lmtp.socket.d/*.conf)
	user=$(unit_value User $d/smtpd-lmtp@.service)
	cmd=$(unit_value ExecStart $d/smtpd-lmtp@.service | sed 's/%%/%/g; s#^/usr/local/sbin/smtpd#'"$SMTPD"'#')
	mkdir -p "$(dirname "$sock")"
	# shellcheck disable=SC2086
	r_daemon "$1" systemd-socket-activate -l "$sock" --inetd -a \
		setpriv --reuid="$user" --regid="$user" --clear-groups $cmd
	for i in $(seq 250); do [ -S "$sock" ] && break; sleep 0.02; done
	chgrp "${group:-root}" "$sock"
	chmod "${mode:-0666}" "$sock"
	echo "smtpd-lmtp.socket: $sock $(stat -c '%U:%G %a' "$sock")" >>"$T/$1.log"
}
EOF
}

# The namespace's script: step 2 (the user and the store), the MTA as Debian installs it
# ($T/debian.sh), then README's blocks; a message to alice and one to nobody.
mta_ns() { # SUBJECT
	cat >"$T/ns.sh" <<EOF
bash -e "\$T/store.sh"
bash -ex "\$T/debian.sh"
bash -ex "\$T/units.sh"
bash -ex "\$T/mta.sh"
swaks --server 127.0.0.1 --to alice@example.org --h-Subject "$1" >"\$T/swaks.alice" 2>&1 || true
swaks --server 127.0.0.1 --to nobody@example.org --h-Subject "$1" >"\$T/swaks.nobody" 2>&1 || true
for i in \$(seq 100); do [ -n "\$(ls /var/mail/vhosts/example.org/alice/new)" ] && break; sleep 0.1; done
sleep 1
cp /var/mail/vhosts/example.org/alice/new/* "\$T/" 2>/dev/null || true
cp /var/log/exim4/mainlog "\$T/exim.mainlog" 2>/dev/null || true
EOF
	r_block "2. The mail user and the store" >"$T/store.sh"
}

# alice's message came through the MTA (its Received:) and smtpd over LMTP (ours, on top)
delivered_via() { # RECEIVED-REGEX SUBJECT
	local f
	f=$(grep -l "^Subject: $2\$" "$T"/*,S=* 2>/dev/null | head -n 1)
	[ -n "$f" ] || { echo "no message '$2' in alice's Maildir"; return 1; }
	cat "$f"
	sed -n 2p "$f" | grep -q '^Received: from '
	sed -n 3p "$f" | grep -q '^	by mx.example.org (smtpd) with LMTP id '
	grep -qE "$1" "$f"
	grep -q 'smtpd\[[0-9]*\]: delivered id=.* to=<alice@example.org>' "$T/smtpd-lmtp.socket.log"
}

@test "mta: Postfix with Debian's master.cf (lmtp chrooted): README's lines deliver; an unknown user is refused at RCPT" {
	use_package postfix /usr/lib/postfix/sbin/master /usr/lib/postfix/sbin/lmtp
	mta_blocks Postfix
	cat >"$T/debian.sh" <<'EOF'
# what postfix.postinst does for an "Internet Site" (names of this test)
groupadd -r postdrop
useradd -r -U -d /var/spool/postfix -s /usr/sbin/nologin postfix
mkdir -p /var/lib/postfix && chown postfix /var/lib/postfix
cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
postconf -e 'smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination' \
	'myhostname = relay.example.net' 'mydestination = $myhostname, localhost' \
	'mynetworks = 127.0.0.0/8 [::1]/128' 'inet_interfaces = all' 'inet_protocols = all' \
	'alias_maps =' 'alias_database ='
systemctl start postfix
EOF
	cat >>"$T/services.sh" <<'EOF'
svc_postfix() { r_daemon "$1" postfix start-fg; l_wait_listen 25; }
reload_postfix() { postfix reload; }
EOF
	mta_ns "via Postfix"
	cat >>"$T/ns.sh" <<'EOF'
grep -E '^lmtp +unix +- +- +y ' /etc/postfix/master.cf >"$T/lmtp-line"
# the old line, an absolute path: inside lmtp's chroot it does not exist
cp /etc/systemd/system/smtpd-lmtp.socket.d/postfix.conf "$T/dropin"
rm /etc/systemd/system/smtpd-lmtp.socket.d/postfix.conf
systemctl restart smtpd-lmtp.socket
postconf -e 'virtual_transport = lmtp:unix:/run/smtpd/lmtp.sock' 'smtpd_recipient_restrictions ='
postfix reload
swaks --server 127.0.0.1 --to alice@example.org --h-Subject "old line" >"$T/swaks.old" 2>&1 || true
sleep 2
postfix stop || true
EOF
	r_ns_run 180
	cat "$T/postfix.log" "$T/syslog"
	[ "$status" -eq 0 ]
	cat "$T/swaks.alice" "$T/swaks.nobody" "$T/smtpd-lmtp.socket.log"
	# Debian's own master.cf, lmtp chrooted
	[ -s "$T/lmtp-line" ]
	grep -q 'smtpd-lmtp.socket: /var/spool/postfix/private/smtpd-lmtp root:postfix 660' "$T/smtpd-lmtp.socket.log"
	grep -q '^<-  250 2.0.0 Ok: queued' "$T/swaks.alice"
	delivered_via '^	by relay.example.net \(Postfix\) with ESMTP id ' "via Postfix"
	grep -q 'postfix/lmtp\[[0-9]*\]: .* to=<alice@example.org>, relay=.*private/smtpd-lmtp\].* status=sent (250 2.0.0 .* delivered)' "$T/syslog"
	# reject_unverified_recipient: Postfix asked smtpd, which said 550 5.1.1, and refused at RCPT
	grep -q '^<\*\* *450 4.1.1 <nobody@example.org>: Recipient address rejected: unverified address: .*550 5.1.1 No such user' "$T/swaks.nobody"
	# the old absolute path: the socket is there, but not in lmtp's chroot; the message waits
	grep -q 'smtpd-lmtp.socket: /run/smtpd/lmtp.sock root:root 660' "$T/smtpd-lmtp.socket.log"
	grep -q 'postfix/lmtp\[[0-9]*\]: .*to=<alice@example.org>.*status=deferred (connect to [^ ]*\[/run/smtpd/lmtp.sock\]: No such file or directory)' "$T/syslog"
	! grep -q '^Subject: old line' "$T"/*,S=* || false
}

@test "mta: Exim with Debian's split configuration: README's lines deliver over LMTP; smtpd's 550 becomes Exim's bounce" {
	use_package exim /usr/sbin/exim4
	mta_blocks Exim
	cat >"$T/debian.sh" <<'EOF'
# what exim4-base and exim4-config do on installation (debconf's answers for an Internet site)
groupadd -r Debian-exim
useradd -r -g Debian-exim -d /var/spool/exim4 -s /usr/sbin/nologin Debian-exim
install -d -o Debian-exim -g Debian-exim -m 750 /var/spool/exim4 /var/lib/exim4
install -d -o Debian-exim -g adm -m 2750 /var/log/exim4
echo relay.example.net >/etc/mailname
printf 'postmaster: root\n' >/etc/aliases
cat >/etc/exim4/update-exim4.conf.conf <<'EOC'
dc_eximconfig_configtype='internet'
dc_other_hostnames='relay.example.net'
dc_local_interfaces='127.0.0.1 ; ::1'
dc_readhost=''
dc_relay_domains=''
dc_minimaldns='false'
dc_relay_nets=''
dc_smarthost=''
CFILEMODE='644'
dc_use_split_config='false'
dc_hide_mailname=''
dc_mailname_in_oh='true'
dc_localdelivery='mail_spool'
EOC
update-exim4.conf
systemctl start exim4
EOF
	cat >>"$T/services.sh" <<'EOF'
svc_exim4() { r_daemon "$1" /usr/sbin/exim4 -bdf -q30m; l_wait_listen 25; }
EOF
	mta_ns "via Exim"
	r_ns_run 180
	[ "$status" -eq 0 ]
	cat "$T/swaks.alice" "$T/smtpd-lmtp.socket.log" "$T/exim.mainlog" 2>/dev/null || true
	grep -q 'smtpd-lmtp.socket: /run/smtpd/lmtp.sock root:Debian-exim 660' "$T/smtpd-lmtp.socket.log"
	grep -q '^<-  250 OK id=' "$T/swaks.alice"
	delivered_via '^	by [^ ]+ with esmtp \(Exim 4' "via Exim"
	# nobody@ is accepted by Exim, refused by smtpd at RCPT, and bounced by Exim
	grep -q '^<-  250 OK id=' "$T/swaks.nobody"
	grep -q 'smtpd\[[0-9]*\]: refused .* to=<nobody@example.org> reply=550 code=5.1.1' "$T/smtpd-lmtp.socket.log"
	grep -q '\*\* nobody@example.org R=smtpd_lmtp T=smtpd_lmtp: LMTP error after RCPT TO:<nobody@example.org>: 550 5.1.1 No such user' "$T/exim.mainlog"
}

@test "mta: OpenSMTPD with README's smtpd.conf delivers over LMTP as vmail" {
	use_package opensmtpd /usr/sbin/smtpd
	mta_blocks OpenSMTPD
	cat >"$T/debian.sh" <<'EOF'
# what opensmtpd.postinst does; its own program is /usr/sbin/smtpd, ours /usr/local/sbin/smtpd
for name in opensmtpd opensmtpq; do
	groupadd -r "$name"
	useradd -r -g "$name" -d /var/lib/opensmtpd/empty -s /usr/sbin/nologin "$name"
done
mkdir -p /var/lib/opensmtpd/empty
echo relay.example.net >/etc/mailname
printf 'postmaster: root\n' >/etc/aliases
systemctl start opensmtpd
EOF
	cat >>"$T/services.sh" <<'EOF'
svc_opensmtpd() { r_daemon "$1" /usr/sbin/smtpd -d -f /etc/smtpd.conf; l_wait_listen 25; }
EOF
	mta_ns "via OpenSMTPD"
	cat >>"$T/ns.sh" <<'EOF'
# the addresses listed instead of the domain: the others are refused at RCPT
sed -i 's/"@example.org" = "vmail"/"alice@example.org" = "vmail"/' /etc/smtpd.conf
grep -q '"alice@example.org" = "vmail"' /etc/smtpd.conf
systemctl restart opensmtpd
swaks --server 127.0.0.1 --to nobody@example.org >"$T/swaks.listed" 2>&1 || true
EOF
	r_ns_run 180
	cat "$T/opensmtpd.log"
	[ "$status" -eq 0 ]
	cat "$T/swaks.alice" "$T/smtpd-lmtp.socket.log"
	grep -q 'smtpd-lmtp.socket: /run/smtpd/lmtp.sock root:vmail 660' "$T/smtpd-lmtp.socket.log"
	grep -q '^<-  250 2.0.0 .*Message accepted for delivery' "$T/swaks.alice"
	delivered_via '^	by relay.example.net \(OpenSMTPD\) with ESMTP id ' "via OpenSMTPD"
	grep -q 'mda delivery .* to=<alice@example.org> rcpt=<alice@example.org> user=vmail .* result=Ok' "$T/opensmtpd.log"
	# what README says of an unknown user: a temporary failure to OpenSMTPD 6.8
	grep -q 'mda delivery .* to=<nobody@example.org> .* result=TempFail .*550 5.1.1 No such user' "$T/opensmtpd.log"
	grep -q '^<\*\* *524 5.2.4 .*<nobody@example.org>' "$T/swaks.listed"
}
