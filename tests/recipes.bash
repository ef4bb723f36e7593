# Helpers for running README's recipes as written (r_ prefix), for tests/readme.bats and
# tests/mta.bats: the blocks taken out of README.md by heading, and a root shell in private
# mount, network and PID namespaces where what a recipe changes (/etc, /usr/local, /run,
# /var/lib, /var/log, /var/mail, /var/spool, /home) is a copy or a tmpfs that ends with it.
# There, sudo runs the command itself, apt-get only checks that a package is installed, and
# systemctl starts each service the recipes name in the foreground of the namespace: nothing
# of this machine's is started, installed or changed.

# shellcheck source=tests/launch.bash
. "${BASH_SOURCE[0]%/*}/launch.bash"

# The Nth (default 1st) block of language LANG ("sh", "ini", "" for a plain ```) in the section
# of README.md whose heading reads exactly TITLE, at any level; the section ends at the next
# heading of the same or a higher level (lines inside code blocks are never headings).
r_block() { # TITLE [LANG] [N]
	awk -v title="$1" -v lang="${2-sh}" -v want="${3:-1}" '
		/^```/ && in_blk { if ($0 == "```") { in_blk = 0; if (mine) exit } else if (mine) print; next }
		/^```/ { in_blk = 1; if (in_sec && $0 == "```" lang && ++n == want) mine = 1; next }
		in_blk { if (mine) print; next }
		/^#+ / {
			lvl = index($0, " ") - 1
			if (in_sec && lvl <= sec_lvl) exit
			if (!in_sec && substr($0, lvl + 2) == title) { in_sec = 1; sec_lvl = lvl }
		}
	' "$ROOT/README.md"
}

# The stand-ins, into $T/bin. systemctl knows a service by a function "svc_NAME" (dots and
# dashes as _) that the test defines in $T/services.sh: called with the unit's name (without
# .service), it starts the service in the background of the namespace (r_daemon) and waits
# until it serves. A "reload_NAME" function, when there is one, reloads a running service.
r_standins() {
	mkdir -p "$T/bin"
	cat >"$T/bin/sudo" <<'EOF'
#!/bin/sh
# root already; "sudo -u USER cmd" runs cmd as USER
if [ "$1" = -u ]; then u=$2; shift 2; exec runuser -u "$u" -- "$@"; fi
exec "$@"
EOF
	cat >"$T/bin/apt-get" <<'EOF'
#!/bin/sh
# "apt-get install PKG...": the packages must be there already (tests/deps.sh installs them)
[ "$1" = install ] || { echo "apt-get $*: not expected here" >&2; exit 1; }
shift
for p in "$@"; do
	case $p in -*) continue ;; esac
	dpkg -s "$p" >/dev/null 2>&1 || { echo "apt-get: $p is not installed on this machine" >&2; exit 1; }
	[ ! -x "$T/postinst-$p" ] || "$T/postinst-$p" || exit 1
done
EOF
	cat >"$T/bin/systemctl" <<'EOF'
#!/bin/bash
# start, restart, reload, enable --now: the service runs (again); stop, disable --now: it ends
set -u
. "$ROOT/tests/recipes.bash"
. "$T/services.sh"
stop() {
	local f=/run/test-$1.pid p i
	[ -f "$f" ] || return 0
	p=$(cat "$f")
	kill -- -"$p" 2>/dev/null || kill "$p" 2>/dev/null || true
	for i in $(seq 250); do kill -0 "$p" 2>/dev/null || break; sleep 0.02; done
	rm -f "$f"
}
now=""
verb=$1
shift
[ "${1:-}" = --now ] && { now=yes; shift; }
for unit in "$@"; do
	name=${unit%.service}
	fn=svc_$(printf '%s' "$name" | tr '.-' '__')
	case $verb in
	daemon-reload) continue ;;
	enable) [ -z "$now" ] && continue ;;
	disable) stop "$name"; continue ;;
	stop) stop "$name"; continue ;;
	start | restart | reload) ;;
	*) echo "systemctl $verb: not expected here" >&2; exit 1 ;;
	esac
	declare -F "$fn" >/dev/null || { echo "systemctl: no stand-in for $unit" >&2; exit 1; }
	if [ "$verb" = reload ] && declare -F "reload_${fn#svc_}" >/dev/null && [ -f "/run/test-$name.pid" ]; then
		"reload_${fn#svc_}" || exit 1
		continue
	fi
	stop "$name"
	"$fn" "$name" || { echo "systemctl: $unit did not start" >&2; exit 1; }
done
[ "$verb" != daemon-reload ] || [ $# -eq 0 ]
EOF
	chmod 755 "$T"/bin/*
	touch "$T/services.sh"
}

# For a svc_ function: runs CMD in its own process group in the background, its pid in the
# file systemctl reads, its output appended to $T/NAME.log.
r_daemon() { # NAME CMD...
	local name=$1
	shift
	setsid "$@" </dev/null >>"$T/$name.log" 2>&1 3>&- &
	echo $! >"/run/test-$name.pid"
}

# The namespace's first steps, run as its PID 1's shell: loopback up, the private copies.
r_ns_setup() {
	ip link set lo up
	mount -t tmpfs tmpfs "$T/fs"
	mkdir "$T/fs/etc" "$T/fs/local" "$T/fs/localw" "$T/fs/lib" "$T/fs/libw"
	cp -a /etc/. "$T/fs/etc/"
	mount --bind "$T/fs/etc" /etc
	if [ -n "${R_PACKAGE:-}" ]; then # a package unpacked with dpkg -x, seen as installed
		mount -t overlay overlay -o "lowerdir=$R_PACKAGE/usr:/usr" /usr
		[ ! -d "$R_PACKAGE/etc" ] || cp -a "$R_PACKAGE/etc/." /etc/
	fi
	mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$T/fs/local,workdir=$T/fs/localw" /usr/local
	mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$T/fs/lib,workdir=$T/fs/libw" /var/lib
	for d in /run /var/log /var/mail /var/spool /home; do mount -t tmpfs tmpfs "$d"; done
	chmod 2775 /var/mail
	chgrp mail /var/mail
	for d in spool lib log; do # what the package itself makes there
		[ ! -d "${R_PACKAGE:-/nonexistent}/var/$d" ] || cp -a "$R_PACKAGE/var/$d/." "/var/$d/"
	done
	r_private_dev
	! id vmail >/dev/null 2>&1 || userdel vmail # in the copy: the recipe makes its own
	export PATH="$T/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	cd "$ROOT" || return 1
}

# A /dev of the namespace's own, so that syslog lines (smtpd under xinetd and inetd) reach a
# sink of the test's, $T/syslog, and never this machine's syslog daemon.
r_private_dev() {
	local d=$T/fs/dev n
	mkdir "$d"
	mount -t tmpfs -o mode=755 tmpfs "$d"
	for n in null zero full random urandom tty; do
		touch "$d/$n"
		mount --bind "/dev/$n" "$d/$n"
	done
	ln -s /proc/self/fd "$d/fd"
	for n in 0 1 2; do ln -s "/proc/self/fd/$n" "$d/$(echo stdin stdout stderr | cut -d' ' -f$((n + 1)))"; done
	mkdir "$d/shm" "$d/pts"
	mount -t tmpfs tmpfs "$d/shm"
	mount --rbind "$d" /dev
	python3 "$ROOT/tests/syslogd.py" /dev/log "$T/syslog" </dev/null >/dev/null 2>&1 3>&- &
	for n in $(seq 250); do [ -S /dev/log ] && return 0; sleep 0.02; done
	return 1
}

# Runs the script $T/ns.sh in the namespace (after r_ns_setup) within $1 seconds: status and
# output as bats' run leaves them.
r_ns_run() { # SECONDS
	mkdir -p "$T/fs"
	chmod 755 "$T"
	run timeout "$1" env T="$T" ROOT="$ROOT" R_PACKAGE="${R_PACKAGE:-}" \
		unshare --mount --net --pid --fork --kill-child --mount-proc \
		bash -c '. "$ROOT/tests/recipes.bash" && set -eu && r_ns_setup && . "$T/ns.sh"'
	# shellcheck disable=SC2154 # bats' run sets output
	echo "$output"
}

r_need_root() {
	[ "$(id -u)" = 0 ] || skip "needs root (namespaces, port 25, users of its own)"
	command -v unshare >/dev/null || skip "unshare (util-linux) not installed"
}
