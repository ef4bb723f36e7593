#!/bin/sh
# Installs what the test suite needs (Debian 12 package names). With --check-only it installs
# nothing and fails, naming what is missing.
set -u
packages="bats swaks xinetd ucspi-tcp-ipv6 socat haproxy dovecot-imapd curl python3 strace
time valgrind mandoc faketime clang-format iproute2 util-linux systemd clang libclang-rt-14-dev musl-tools
qemu-user-static gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-mips-linux-gnu libc6-dev-mips-cross"
missing=""
for p in $packages; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "${1:-}" = --check-only ]; then
	echo "tests need:$missing" >&2
	echo "install them with: apt-get install -y$missing" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || exit 1
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $missing >/dev/null
