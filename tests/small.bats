#!/usr/bin/env bats
# Small systems: a 1 GiB message and a 1000-recipient session in a few MiB of address space
# (ulimit -v). The limit is 8 MiB for any build; the musl static build (make static, the one
# make install puts in place) is held to what README promises for it: 1 MiB and 4 MiB.

setup() {
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	case $SMTPD in
	*-asan | *valgrind*) skip "the sanitizers reserve far more address space than is measured here" ;;
	*.qemu) skip "under qemu-user the address space is the emulator's" ;;
	esac
	T=$(mktemp -d)
}

teardown() {
	rm -rf "$T"
}

# the limit in KiB: $1 for the musl static build, 8 MiB for any other
limit_kib() {
	if [ "$(cat "$SMTPD.libc" 2>/dev/null)" = musl ]; then echo "$1"; else echo 8192; fi
}

# runs smtpd under ulimit -v $1 KiB for at most 60 s, stdin and stdout passed on
run_limited() {
	local kib=$1
	shift
	timeout 60 bash -c 'ulimit -v "$1" && shift && exec "$@"' limited "$kib" \
		"$SMTPD" -h test.example "$@"
}

@test "a 1 GiB message by DATA is delivered under ulimit -v 1 MiB (musl static), 8 MiB (others)" {
	local kib lines=1075900 line f size head
	kib=$(limit_kib 1024)
	echo "# ulimit -v $kib KiB" >&3
	mkdir -p "$T/Maildir"
	# 1075900 lines of 996 x and CRLF: 1 GiB on the wire
	line=$(head -c 996 /dev/zero | tr '\0' x)$'\r'
	{ printf 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n'
	  yes "$line" | head -n "$lines"; printf '.\r\nQUIT\r\n'; } |
		run_limited "$kib" -s 2000000000 -m "$T/Maildir" > "$T/out" 2> "$T/err"
	cat "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(tail -1 "$T/out" | tr -d '\r')" = '221 2.0.0 test.example closing' ]
	f=$(find "$T/Maildir/new" -type f)
	[ "$(echo "$f" | wc -l)" -eq 1 ]
	size=$(stat -c %s "$f")
	[ "${f##*,S=}" = "$size" ]
	# the body, stored with LF line ends, starts after the first empty line
	head=$(grep -b -m1 -x '' "$f" | cut -d: -f1)
	[ $((size - head - 1)) -eq $((lines * 997)) ]
}

@test "1000 recipients in 1000 Maildirs under ulimit -v 4 MiB (musl static), 8 MiB (others)" {
	local kib i
	kib=$(limit_kib 4096)
	echo "# ulimit -v $kib KiB" >&3
	for i in $(seq 0 999); do echo "$T/u$i/cur $T/u$i/new $T/u$i/tmp"; done | xargs mkdir -p
	python3 -c '
import sys
w = sys.stdout.buffer.write
w(b"EHLO c\r\nMAIL FROM:<a@x>\r\n")
w(b"".join(b"RCPT TO:<u%d@y.example>\r\n" % i for i in range(1000)))
w(b"DATA\r\nSubject: many\r\n\r\nx\r\n.\r\nQUIT\r\n")' |
		run_limited "$kib" -r 1000 -m "$T/%u" > "$T/out" 2> "$T/err"
	[ "$(grep -c '^250 2.1.5 Ok' "$T/out")" -eq 1000 ]
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(find "$T"/u*/new -type f | wc -l)" -eq 1000 ]
	for i in $(seq 0 999); do [ "$(ls "$T/u$i/new" | wc -l)" -eq 1 ] || return 1; done
	cmp "$T"/u0/new/* "$T"/u999/new/*
	[ -z "$(find "$T"/u*/tmp -type f)" ]
}

@test "make install puts the static musl build in place when musl-gcc is there; make uninstall removes it" {
	command -v musl-gcc >/dev/null || skip "no musl-gcc (Debian package musl-tools)"
	local top=$BATS_TEST_DIRNAME/..
	make -s -C "$top" install DESTDIR="$T/root" PREFIX=/usr > "$T/log"
	cat "$T/log"
	grep -q '^installing smtpd-static (static musl) as ' "$T/log"
	cmp "$top/smtpd-static" "$T/root/usr/sbin/smtpd"
	# static: no program interpreter (dynamic loader) in its headers
	! readelf -l "$T/root/usr/sbin/smtpd" | grep -q INTERP || false
	[ -f "$T/root/usr/share/man/man8/smtpd.8" ]
	make -s -C "$top" uninstall DESTDIR="$T/root" PREFIX=/usr
	[ -z "$(find "$T/root" -type f)" ]
}
