#!/bin/bash
# smtpd under a real systemd as PID 1: a Debian 12 container booted with systemd-nspawn.
#   tests/nspawn.sh check   boot it, install smtpd and the shipped units, run tests/systemd.bats
#   tests/nspawn.sh bench   boot it, measure the shipped unit against the same unit unsandboxed
#                           and against smtpd-tcpserver.service (one sandbox for every session)
# The root file system is made once with debootstrap (minbase) into $SMTPD_ROOTFS, outside the
# source tree, and reused; the container writes only to a tmpfs overlay (--volatile=overlay).
# The container is powered off and every process started here ended, even on interrupt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROOTFS=${SMTPD_ROOTFS:-/var/cache/smtpd-test/bookworm-rootfs}
# swaks needs libio-socket-inet6-perl for IPv6, and netbase (/etc/protocols) for that; the list is kept in the tree: a new list, a new tree
PACKAGES=systemd,systemd-sysv,dbus,swaks,libio-socket-inet6-perl,netbase,python3,ucspi-tcp-ipv6
BOOT_WAIT=60     # seconds for the container's systemd to finish booting
STOP_WAIT=30     # seconds for a clean poweroff before SIGTERM, then SIGKILL
NSPID="" STAGE="" JOB=""

die() { echo "nspawn.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || die "no systemd-nspawn: apt-get install systemd-container"

# The Debian mirror this machine's apt uses (never a hard-coded one).
mirror() {
	grep -hE '^[[:space:]]*(URIs:|deb[[:space:]])' /etc/apt/sources.list \
		/etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		sed -E 's/^[[:space:]]*URIs:[[:space:]]*//; s/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' |
		awk '{ print $1 }' | grep -E '/debian/?$' | head -n 1 || true
}

# debootstrap once, into a temporary name renamed when complete: an interrupted run leaves
# no half tree that a later run would take for a cache.
rootfs() {
	local m
	[ "$(cat "$ROOTFS/.smtpd-test-packages" 2>/dev/null)" = "$PACKAGES" ] && return 0
	command -v debootstrap >/dev/null || die "no debootstrap: apt-get install debootstrap"
	m=$(mirror)
	[ -n "$m" ] || die "no Debian mirror in /etc/apt/sources.list*"
	# one debootstrap at a time: a second run waits, then finds the tree made
	mkdir -p "$(dirname "$ROOTFS")"
	exec 9>"$ROOTFS.lock"
	flock -w 1500 9 || die "another run holds $ROOTFS.lock"
	[ "$(cat "$ROOTFS/.smtpd-test-packages" 2>/dev/null)" = "$PACKAGES" ] && return 0
	rm -rf "$ROOTFS.tmp"
	echo "# debootstrap bookworm minbase from $m into $ROOTFS (once)" >&2
	timeout 1200 debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS.tmp" "$m" \
		>"$ROOTFS.log" 2>&1 || { tail -n 20 "$ROOTFS.log" >&2; die "debootstrap failed"; }
	echo "$PACKAGES" >"$ROOTFS.tmp/.smtpd-test-packages"
	rm -rf "$ROOTFS"
	mv "$ROOTFS.tmp" "$ROOTFS"
}

# PID 1 of the container: the child of systemd-nspawn that runs systemd
container_pid() {
	local p
	for p in $(pgrep -P "$NSPID" 2>/dev/null); do
		[ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && { echo "$p"; return 0; }
	done
	return 1
}

in_ct() { timeout 120 nsenter -t "$CPID" -a "$@"; }

stop() {
	trap - EXIT INT TERM
	# the tests or the bench first; what they run inside ends with the container
	[ -z "$JOB" ] || kill "$JOB" 2>/dev/null || true
	if [ -n "$NSPID" ] && kill -0 "$NSPID" 2>/dev/null; then
		[ -z "${CPID:-}" ] || timeout 10 nsenter -t "$CPID" -a systemctl poweroff >/dev/null 2>&1 || true
		for _ in $(seq $((STOP_WAIT * 10))); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
		kill -TERM "$NSPID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$NSPID" 2>/dev/null || true
		wait "$NSPID" 2>/dev/null || true
	fi
	[ -z "$STAGE" ] || rm -rf "$STAGE"
}

# Boots the container with smtpd, the shipped units and the test clients bound read-only at
# /srv/stage; sets CPID.
boot() {
	local state=""
	STAGE=$(mktemp -d)
	install -m 755 "$ROOT/smtpd" "$STAGE/smtpd"
	cp -r "$ROOT/systemd" "$STAGE/systemd"
	cp "$ROOT/tests/ct_client.py" "$STAGE/"
	cp "$ROOT/tests/milter.py" "$STAGE/"
	readme_blocks
	trap stop EXIT
	trap 'exit 130' INT TERM
	systemd-nspawn -q -b -D "$ROOTFS" -M "smtpdtest$$" --register=no --keep-unit \
		--private-network --volatile=overlay --bind-ro="$STAGE":/srv/stage \
		--console=read-only >"$STAGE/console.log" 2>&1 </dev/null &
	NSPID=$!
	CPID=""
	for _ in $(seq $((BOOT_WAIT * 10))); do
		CPID=$(container_pid) && break
		kill -0 "$NSPID" 2>/dev/null || { cat "$STAGE/console.log" >&2; die "systemd-nspawn exited"; }
		sleep 0.1
	done
	[ -n "$CPID" ] || die "no systemd in the container after ${BOOT_WAIT}s"
	for _ in $(seq $((BOOT_WAIT * 5))); do
		state=$(timeout 20 nsenter -t "$CPID" -a systemctl is-system-running --wait 2>/dev/null) && break
		case $state in running | degraded) break ;; esac
		sleep 0.2
	done
	case $state in running | degraded) ;; *) die "container did not boot (state '$state')" ;; esac
	export CPID
}

# README's blocks that run here, as written: step 2 of the ten-minute path (the user and the
# store), "Under systemd", the LMTP units' line of "Behind Postfix, OpenSMTPD or Exim", and
# for tests/systemd.bats "One sandbox for many sessions" and Postfix's socket drop-in (its
# lines before Postfix's own).
readme_blocks() {
	# shellcheck source=tests/recipes.bash
	. "$ROOT/tests/recipes.bash"
	mkdir "$STAGE/readme"
	r_block "2. The mail user and the store" >"$STAGE/readme/store.sh"
	r_block "Under systemd" >"$STAGE/readme/systemd.sh"
	r_block "Behind Postfix, OpenSMTPD or Exim" >"$STAGE/readme/lmtp.sh"
	r_block "One sandbox for many sessions" >"$STAGE/readme/tcpserver.sh"
	r_block "Postfix" | sed '/^sudo postconf/,$d' >"$STAGE/readme/postfix-socket.sh"
	for f in store systemd lmtp tcpserver postfix-socket; do [ -s "$STAGE/readme/$f.sh" ] || die "README has no block for $f"; done
	r_block "Filtering" ini 1 >"$STAGE/readme/milter-unix.conf"
	r_block "Filtering" ini 2 >"$STAGE/readme/milter-inet.conf"
	for f in milter-unix milter-inet; do [ -s "$STAGE/readme/$f.conf" ] || die "README has no block for $f"; done
}

# What an admin does after step 1 (the binary, copied: no compiler here): README's blocks, run in
# the staged tree with stand-ins for sudo (root already) and apt-get (the packages are in the
# tree, and the container has no network).
install_smtpd() {
	in_ct sh -euc '
		install -m 755 /srv/stage/smtpd /usr/local/sbin/smtpd
		printf "#!/bin/sh\nexec \"\$@\"\n" >/usr/local/bin/sudo
		printf "#!/bin/sh\n[ \"\$1\" = install ] || exit 1\nshift\nfor p; do dpkg -s \"\$p\" >/dev/null || exit 1; done\n" \
			>/usr/local/bin/apt-get
		chmod 755 /usr/local/bin/sudo /usr/local/bin/apt-get
		cd /srv/stage
		bash -e readme/store.sh
		bash -e readme/systemd.sh
		bash -e readme/lmtp.sh
		systemctl enable --now smtpd-lmtp.socket 2>/dev/null'
}

# A variant of the shipped unit on its own port: NAME PORT SED-SCRIPT (applied to the service).
install_variant() {
	in_ct sh -euc "
		sed 's/^ListenStream=25\$/ListenStream=$2/' /etc/systemd/system/smtpd.socket \
			>/etc/systemd/system/smtpd-$1.socket
		sed '$3' /etc/systemd/system/smtpd@.service >/etc/systemd/system/smtpd-$1@.service
		systemctl daemon-reload
		systemctl start smtpd-$1.socket"
}

bench_one() { # NAME PORT
	local c
	for c in 1 5; do
		printf '%-22s ' "$1"
		in_ct timeout 300 python3 /srv/stage/ct_client.py bench 127.0.0.1 "$2" "$BENCH_N" "$c"
	done
}

# smtpd-tcpserver.service on its own port, beside smtpd.socket (so without its Conflicts=)
install_tcpserver_variant() { # PORT
	in_ct sh -euc "
		sed -e 's/ 0 25 / 0 $1 /' -e '/^Conflicts=/d' /srv/stage/systemd/smtpd-tcpserver.service \\
			>/etc/systemd/system/smtpd-tcpserver-bench.service
		systemctl daemon-reload
		systemctl start smtpd-tcpserver-bench.service"
	for _ in $(seq 100); do # a socket in state 0A (LISTEN) on the port; no ss in the tree
		in_ct cat /proc/net/tcp /proc/net/tcp6 | grep -Eqi ":$(printf %04X "$1") [0-9A-F]+:0000 0A" && return 0
		sleep 0.1
	done
	die "smtpd-tcpserver-bench.service: nothing listening on port $1"
}

exposure() { # UNIT
	in_ct systemd-analyze security --no-pager "$1" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p'
}

# The shipped unit; the same without its sandbox (the lines from "NoNewPrivileges=" to the
# end go); smtpd-tcpserver.service; and for each word of $BENCH_WITHOUT (a key, or keys joined
# by commas) the shipped unit without those keys alone.
bench() {
	local port=2600 k
	BENCH_N=${BENCH_SESSIONS:-100}
	in_ct sh -euc 'install -d -o vmail -g vmail -m 700 /var/mail/vhosts/example.org/bench
		for d in cur new tmp; do install -d -o vmail -g vmail -m 700 /var/mail/vhosts/example.org/bench/$d; done'
	install_variant bare 2526 '/^NoNewPrivileges=/,$d'
	install_tcpserver_variant 2527
	echo "# $(in_ct systemctl --version | head -n 1), $(nproc) CPUs, $BENCH_N one-message sessions"
	echo "# exposure: shipped $(exposure smtpd@0.service), no-sandbox $(exposure smtpd-bare@0.service)," \
		"tcpserver $(exposure smtpd-tcpserver-bench.service)"
	bench_one shipped 25
	bench_one no-sandbox 2526
	bench_one tcpserver 2527
	for k in ${BENCH_WITHOUT:-}; do # KEY or KEY,KEY,... (removed together)
		install_variant "w$port" "$port" "/^\(${k//,/\\|}\)=/d"
		bench_one "without $k" "$port"
		port=$((port + 1))
	done
}

# Runs "$@" as a job and waits for it: bash runs a trap only between commands, and wait is
# one that a signal interrupts, so an interrupt stops the container at once.
in_background() {
	"$@" &
	JOB=$!
	wait "$JOB"
}

case ${1:-} in
rootfs) rootfs ;;
check)
	[ -x "$ROOT/smtpd" ] || die "build smtpd first (make)"
	rootfs
	boot
	install_smtpd
	in_background timeout 900 bats "$ROOT/tests/systemd.bats"
	;;
bench)
	[ -x "$ROOT/smtpd" ] || die "build smtpd first (make)"
	rootfs
	boot
	install_smtpd
	in_background bench
	;;
*) die "usage: tests/nspawn.sh check|bench|rootfs" ;;
esac
