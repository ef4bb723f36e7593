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
netcat-openbsd openssl bsdutils debootstrap systemd-container
qemu-user-static gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-mips-linux-gnu libc6-dev-mips-cross
libbsd0 libevent-2.1-7 libtirpc3 libwrap0
rspamd opendkim dnsmasq-base inotify-tools libidn12 libgnutls-dane0"
policy=/usr/sbin/policy-rc.d

# openbsd-inetd conflicts with xinetd as a package, and installing it would start it: it is
# unpacked into tests/.cache instead, for tests/inetd.bats (its libraries are in the list).
inetd_cache="$(dirname "$0")/.cache/openbsd-inetd"
fetch_inetd() {
	[ -x "$inetd_cache/usr/sbin/inetd" ] && return 0
	mkdir -p "$inetd_cache" && (cd "$inetd_cache/.." && rm -f openbsd-inetd_*.deb &&
		{ apt-get download -q openbsd-inetd >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null && apt-get download -q openbsd-inetd >/dev/null; }; } &&
		dpkg -x openbsd-inetd_*.deb openbsd-inetd && rm -f openbsd-inetd_*.deb) ||
		{ echo "deps.sh: could not fetch and unpack openbsd-inetd" >&2; return 1; }
}

missing=""
for p in $packages; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -z "$missing" ]; then
	[ "${1:-}" = --check-only ] && [ ! -x "$inetd_cache/usr/sbin/inetd" ] &&
		{ echo "tests need: openbsd-inetd, unpacked by sh tests/deps.sh" >&2; exit 1; }
	[ "${1:-}" = --check-only ] && exit 0
	fetch_inetd
	exit $?
fi
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
[ "$status" = 0 ] && fetch_inetd || status=1
exit "$status"
