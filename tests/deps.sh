#!/bin/sh
# Installs what the test suite needs (Debian 12 package names). With --check-only it installs
# nothing and fails, naming what is missing.
#
# Several of these packages hold daemons (Dovecot, HAProxy, xinetd) that Debian starts and
# enables on installation. The tests run their own instances in the foreground on loopback, so
# a system service is never wanted: while installing, a policy-rc.d denies every start, and the
# services the installation enabled are disabled again afterwards.
set -u
packages="bats swaks libio-socket-ssl-perl xinetd ucspi-tcp-ipv6 socat haproxy dovecot-imapd curl python3 strace
time valgrind mandoc faketime clang-format iproute2 util-linux systemd clang libclang-rt-14-dev musl-tools
netcat-openbsd openssl bsdutils debootstrap systemd-container"
policy=/usr/sbin/policy-rc.d
missing=""
for p in $packages; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "${1:-}" = --check-only ]; then
	echo "tests need:$missing" >&2
	echo "install them as root with: sh tests/deps.sh (it starts and enables no service)" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "tests need:$missing; run sh tests/deps.sh as root" >&2
	exit 1
fi

# The service links that exist now; whatever the installation adds is undone below.
links() {
	find /etc/systemd/system /etc/rc[2-5].d -type l 2>/dev/null | sort
}
before=$(mktemp) && after=$(mktemp) || exit 1
links >"$before"

# Made only if absent, and removed only if made here: an admin's own policy stays as it is.
made_policy=""
# shellcheck disable=SC2317
cleanup() {
	rm -f "$before" "$after"
	if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\n# tests/deps.sh: no service starts while test packages install\nexit 101\n' >"$policy" &&
		chmod 755 "$policy" && made_policy=yes
fi
if [ -z "$made_policy" ]; then
	"$policy" dovecot start >/dev/null 2>&1
	if [ $? != 101 ]; then
		echo "deps.sh: $policy exists and allows starts: not installing$missing" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
status=0
apt-get update -q >/dev/null || status=1
# shellcheck disable=SC2086
[ "$status" = 0 ] && { apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
	$missing >/dev/null || status=1; }

# Disable what the installation enabled: systemd's links (once they are gone, Debian's
# maintainer scripts keep the unit disabled on upgrades) and SysV start links.
links >"$after"
done=""
for l in $(comm -13 "$before" "$after"); do
	case "$l" in
	/etc/systemd/system/*.wants/*)
		unit=${l##*/}
		systemctl disable --quiet --no-reload "$unit" 2>/dev/null || true
		rm -f "$l"
		echo "deps.sh: $unit left disabled" >&2
		;;
	/etc/rc[2-5].d/S*)
		name=${l##*/S[0-9][0-9]}
		case " $done " in *" $name "*) continue ;; esac
		done="$done $name"
		update-rc.d "$name" disable >/dev/null 2>&1 || rm -f /etc/rc[2-5].d/S[0-9][0-9]"$name"
		echo "deps.sh: $name (SysV) left disabled" >&2
		;;
	esac
done
[ "$status" = 0 ] && echo "deps.sh: installed$missing (no service started or enabled)" >&2
exit "$status"
