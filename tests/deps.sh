#!/bin/sh
# Installs what the test suite needs (Debian 12 package names). With --check-only it installs
# nothing and fails, naming what is missing.
set -u
packages="bats swaks xinetd ucspi-tcp-ipv6 socat haproxy dovecot-imapd curl python3 strace
time valgrind mandoc faketime clang-format iproute2 util-linux systemd clang libclang-rt-14-dev musl-tools
qemu-user-static gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-mips-linux-gnu libc6-dev-mips-cross
libbsd0 libevent-2.1-7 libtirpc3 libwrap0"
# openbsd-inetd conflicts with xinetd as a package, and installing it would start it: it is
# unpacked here instead, for tests/inetd.bats (its libraries are in the list above).
inetd_cache="$(dirname "$0")/.cache/openbsd-inetd"
fetch_inetd() {
	[ -x "$inetd_cache/usr/sbin/inetd" ] && return 0
	mkdir -p "$inetd_cache" && (cd "$inetd_cache/.." && rm -f openbsd-inetd_*.deb &&
		apt-get download -q openbsd-inetd >/dev/null 2>&1 &&
		dpkg -x openbsd-inetd_*.deb openbsd-inetd && rm -f openbsd-inetd_*.deb)
}
missing=""
for p in $packages; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ "${1:-}" = --check-only ]; then
	[ -x "$inetd_cache/usr/sbin/inetd" ] || missing="$missing openbsd-inetd"
	[ -z "$missing" ] && exit 0
	echo "tests need:$missing" >&2
	echo "install them with: sh tests/deps.sh (as root)" >&2
	exit 1
fi
[ -z "$missing" ] && { fetch_inetd && exit 0; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || exit 1
if [ -n "$missing" ]; then
	# Nothing installed here may start or enable a service (xinetd, HAProxy, Dovecot): a
	# policy-rc.d that refuses every action, removed afterwards only if it is ours.
	policy=/usr/sbin/policy-rc.d ours=false
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=true
	fi
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $missing >/dev/null
	status=$?
	! $ours || rm -f "$policy"
	[ "$status" -eq 0 ] || exit 1
fi
fetch_inetd || { echo "could not fetch and unpack openbsd-inetd" >&2; exit 1; }
