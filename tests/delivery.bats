#!/usr/bin/env bats
# Delivery that cannot be raced, exhausted or misplaced: the spool linked from its open fd,
# never by name; Maildirs of other owners get their own copy (as root); 1000 Maildirs with 64
# descriptors; stored bytes that never depend on buffer boundaries; each LMTP recipient its own
# failure; an empty message. Root-only cases use setpriv for the other users and skip otherwise.

setup_file() {
	export SHIM=$BATS_FILE_TMPDIR/faultinject.so
	cc -O2 -fPIC -shared -o "$SHIM" "$BATS_TEST_DIRNAME/faultinject.c" -ldl
}

setup() {
	T=$(mktemp -d)
	chmod 755 "$T"
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0
	SPID=
}

teardown() {
	[ -z "$SPID" ] || kill "$SPID" 2>/dev/null || true
	rm -rf "$T"
}

need_root() {
	[ "$(id -u)" -eq 0 ] || skip "needs root: smtpd delivering for several Unix users"
	command -v setpriv >/dev/null || skip "setpriv is not installed"
}

# user_maildir NAME UID: $T/home/NAME/Maildir, all of it owned by UID
user_maildir() {
	mkdir -p "$T/home/$1/Maildir/"{cur,new,tmp}
	chown -R "$2:$2" "$T/home/$1"
	chmod 755 "$T/home"
}

as_uid() {
	local uid=$1
	shift
	setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"
}

# A session on a FIFO, so that the test can act in the middle of the data; fd 4 is the client.
fifo_start() {
	mkfifo "$T/fifo"
	timeout 60 "$SMTPD" -h test.example "$@" < "$T/fifo" > "$T/out" 2> "$T/err" &
	SPID=$!
	exec 4> "$T/fifo"
}

fifo_end() {
	exec 4>&-
	RC=0
	wait "$SPID" || RC=$?
	SPID=
}

# waits (bounded) until directory $1 holds a file and prints its name
first_file_in() {
	local i f
	for i in $(seq 250); do
		f=$(ls "$1" 2>/dev/null | head -1)
		[ -n "$f" ] && { echo "$f"; return 0; }
		sleep 0.02
	done
	return 1
}

# swap_during_data KIND: alice swaps her tmp/<spool> for a file (KIND=file) or a symbolic link
# (KIND=link) of her own while the data is still coming; bob must get the client's bytes.
swap_during_data() {
	need_root
	user_maildir alice 2001
	user_maildir bob 2002
	printf 'Subject: forged\n\nforged by alice\n' > "$T/forged"
	chmod 644 "$T/forged"
	fifo_start -m "$T/home/%u/Maildir"
	printf 'HELO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<alice@h.example>\r\nRCPT TO:<bob@h.example>\r\nDATA\r\nSubject: real\r\n\r\nfrom the client\r\n' >&4
	local spool
	spool=$(first_file_in "$T/home/alice/Maildir/tmp")
	if [ "$1" = link ]; then
		as_uid 2001 sh -c 'rm -f "$1" && ln -s "$2" "$1"' sh "$T/home/alice/Maildir/tmp/$spool" "$T/forged"
	else
		as_uid 2001 sh -c 'rm -f "$1" && cp "$2" "$1"' sh "$T/home/alice/Maildir/tmp/$spool" "$T/forged"
	fi
	printf '.\r\nQUIT\r\n' >&4
	fifo_end
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	local f
	f=$(ls "$T"/home/bob/Maildir/new/*)
	[ -f "$f" ] && [ ! -L "$f" ]
	grep -qx 'from the client' "$f"
	! grep -q forged "$f" || false
	[ "$(stat -c %u "$f")" -eq 2002 ]
	[ "$(stat -c %h "$f")" -eq 1 ]
}

@test "root: alice swaps her tmp/ file during the data: bob still gets the client's bytes, as his own file" {
	swap_during_data file
}

@test "root: alice swaps a symbolic link into her tmp/ during the data: bob gets a regular file of the client's bytes" {
	swap_during_data link
}

@test "root: two users' Maildirs: each file is its Maildir owner's, mode 0600, a separate inode" {
	need_root
	user_maildir alice 2001
	user_maildir bob 2002
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@h>\r\nRCPT TO:<bob@h>\r\nDATA\r\nSubject: two\r\n\r\nhi\r\n.\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/home/%u/Maildir" > "$T/out" 2> "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	local a b
	a=$(ls "$T"/home/alice/Maildir/new/*)
	b=$(ls "$T"/home/bob/Maildir/new/*)
	[ "$(stat -c '%u:%g %a %h' "$a")" = '2001:2001 600 1' ]
	[ "$(stat -c '%u:%g %a %h' "$b")" = '2002:2002 600 1' ]
	[ "$(stat -c %i "$a")" != "$(stat -c %i "$b")" ]
	cmp "$a" "$b"
}

@test "root: a link to bob's Maildir made by mallory is refused (550 5.1.1, as a missing Maildir; nothing in bob's); bob's own alias works" {
	need_root
	user_maildir bob 2002
	mkdir -p "$T/home/mallory" "$T/home/bobby"
	chown 2003:2003 "$T/home/mallory"
	chown 2002:2002 "$T/home/bobby"
	as_uid 2003 ln -s "$T/home/bob/Maildir" "$T/home/mallory/Maildir"
	as_uid 2002 ln -s "$T/home/bob/Maildir" "$T/home/bobby/Maildir"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<mallory@h>\r\nRCPT TO:<bobby@h>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/home/%u/Maildir" > "$T/out" 2> "$T/err"
	sed -n 4p "$T/out" | grep -q '^550 5.1.1 '
	grep -q ' refused .*to=<mallory@h> .* errno=EPERM$' "$T/err"
	sed -n 5p "$T/out" | grep -q '^250 2.1.5 '
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(ls "$T/home/bob/Maildir/new" | wc -l)" -eq 1 ]
	[ "$(stat -c %u "$T"/home/bob/Maildir/new/*)" -eq 2002 ]
}

@test "root: alice's tmp/ replaced by a link to bob's tmp/ is not a Maildir: nothing reaches bob" {
	need_root
	user_maildir alice 2001
	user_maildir bob 2002
	as_uid 2001 sh -c 'rmdir "$1/tmp" && ln -s "$2/tmp" "$1/tmp"' sh "$T/home/alice/Maildir" "$T/home/bob/Maildir"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@h>\r\nDATA\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/home/%u/Maildir" > "$T/out" 2> "$T/err"
	sed -n 4p "$T/out" | grep -qE '^(550 5\.1\.1|451 4\.3\.0) '
	[ -z "$(find "$T/home/bob/Maildir/tmp" "$T/home/bob/Maildir/new" -mindepth 1)" ]
}

@test "1000 recipients in 1000 distinct Maildirs under ulimit -n 64: all accepted, all delivered" {
	local i
	for i in $(seq 1 1000); do mkdir -p "$T/d/u$i/"{cur,new,tmp}; done
	{
		printf 'EHLO c\r\nMAIL FROM:<a@x>\r\n'
		for i in $(seq 1 1000); do printf 'RCPT TO:<u%d@d>\r\n' "$i"; done
		printf 'DATA\r\nSubject: many\r\n\r\nhello\r\n.\r\nQUIT\r\n'
	} > "$T/in"
	(ulimit -n 64 && exec "$SMTPD" -h test.example -r 1000 -m "$T/%d/%u" < "$T/in" > "$T/out" 2> "$T/err")
	[ "$(grep -c '^250 2.1.5 ' "$T/out")" -eq 1000 ]
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(find "$T"/d/*/new -type f | wc -l)" -eq 1000 ]
	[ -z "$(find "$T"/d/*/tmp -type f)" ]
}

# stored_body FILE: the message without our Return-Path and Received fields
stored_body() {
	awk 'done { print; next } NR == 1 { next } /^Received:/ { r = 1; next }
	     r && /^\t/ { next } { done = 1; print }' "$1"
}

@test "stored bytes never depend on the 128 KiB write buffer: BDAT and DATA agree at every size" {
	local n
	for n in 1 100 131000 131063 131064 131072 131073 140000 262150; do
		rm -rf "$T/m" "$T/b" && mkdir "$T/m" "$T/b"
		{ printf 'S: x\n\n'; head -c "$n" /dev/zero | tr '\0' a; printf '\n'; } > "$T/want"
		{ printf 'EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT %d LAST\r\nS: x\r\n\r\n' $((n + 8))
		  head -c "$n" /dev/zero | tr '\0' a; printf 'QUIT\r\n'; } > "$T/in.bdat"
		"$SMTPD" -h test.example -m "$T/b/Maildir" < "$T/in.bdat" > "$T/out" 2> "$T/err"
		grep -q '^250 2.0.0 .* delivered' "$T/out"
		{ printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nS: x\r\n\r\n'
		  head -c "$n" /dev/zero | tr '\0' a; printf '\r\n.\r\nQUIT\r\n'; } > "$T/in.data"
		"$SMTPD" -h test.example -m "$T/m/Maildir" < "$T/in.data" > "$T/out" 2> "$T/err"
		grep -q '^250 2.0.0 .* delivered' "$T/out"
		stored_body "$T"/b/Maildir/new/* | cmp - "$T/want" || { echo "BDAT, n=$n"; return 1; }
		stored_body "$T"/m/Maildir/new/* | cmp - "$T/want" || { echo "DATA, n=$n"; return 1; }
	done
}

@test "LMTP: two recipients failing for different reasons each get their own code" {
	mkdir -p "$T/y/"{b,c,d}/{cur,new,tmp}
	# Staging links c and d from b's spool: the first link fails with ENOSPC, the second EIO.
	printf 'LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' |
		FAULT_CALL=linkat FAULT_NTH=1 FAULT_ERRNO=ENOSPC,EIO LD_PRELOAD=$SHIM \
			"$SMTPD" -L -h test.example -m "$T/%d/%u" > "$T/out" 2> "$T/err"
	tr -d '\r' < "$T/out" | sed -n '/^354 /,$p' | sed -n '2,4p' > "$T/final"
	grep -q '^250 2.0.0 .* delivered' <(sed -n 1p "$T/final")
	grep -q '^452 4.3.1 ' <(sed -n 2p "$T/final")
	grep -q '^451 4.3.0 ' <(sed -n 3p "$T/final")
	[ "$(ls "$T/y/b/new" | wc -l)" -eq 1 ]
	[ -z "$(find "$T"/y/[cd]/new "$T"/y/[cd]/tmp -mindepth 1)" ]
	grep -q ' failed .*to=<c@y> .*errno=ENOSPC reply=452 code=4.3.1$' "$T/err"
	grep -q ' failed .*to=<d@y> .*errno=EIO reply=451 code=4.3.0$' "$T/err"
}

@test "an empty message (DATA, then the dot) gets the empty line after our two fields" {
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n.\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/Maildir" > "$T/out" 2> "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	local f
	f=$(ls "$T"/Maildir/new/*)
	[ "$(stored_body "$f" | od -An -c | tr -d ' ')" = '\n' ]
	[ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" = '\n' ]
}

# ---- every error path of delivery, each with its reply and nothing left behind ----

# two_boxes: y/b and y/c; as root c belongs to another user when $1 is "owners"
two_boxes() {
	mkdir -p "$T/y/"{b,c}/{cur,new,tmp}
	[ "${1:-}" != owners ] || chown -R 2002:2002 "$T/y/c"
}

# faulted SMTPD-ARGS...: one SMTP message to b and c under the fault in FAULT_* variables
faulted() {
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\nSubject: f\r\n\r\nbody\r\n.\r\nQUIT\r\n' |
		LD_PRELOAD=$SHIM "$SMTPD" -h test.example -m "$T/%d/%u" "$@" > "$T/out" 2> "$T/err"
}

nothing_left() {
	[ -z "$(find "$T"/y/*/tmp "$T"/y/*/new -type f)" ]
}

@test "a hard link refused (EXDEV, EPERM, ENOTSUP, EMLINK) becomes a copy: delivered, c's file its own inode" {
	local e
	for e in EXDEV EPERM ENOTSUP EMLINK; do
		rm -rf "$T/y" && two_boxes
		FAULT_CALL=linkat FAULT_NTH=1 FAULT_ERRNO=$e faulted
		grep -q '^250 2.0.0 .* delivered' "$T/out" || { echo "$e"; cat "$T/out"; return 1; }
		[ "$(stat -c %h "$T"/y/c/new/*)" -eq 1 ] || { echo "$e: not a copy"; return 1; }
		cmp "$T"/y/b/new/* "$T"/y/c/new/*
	done
}

@test "a hard link that fails otherwise (EIO, ENOSPC) fails the message: 451/452, nothing left" {
	two_boxes
	FAULT_CALL=linkat FAULT_NTH=1 FAULT_ERRNO=EIO faulted
	grep -q '^451 4.3.0 ' "$T/out"
	nothing_left
	FAULT_CALL=linkat FAULT_NTH=1 FAULT_ERRNO=ENOSPC faulted
	grep -q '^452 4.3.1 ' "$T/out"
	nothing_left
}

@test "root: linkat of the descriptor refused with ENOENT (no CAP_DAC_READ_SEARCH) links through /proc instead" {
	need_root
	two_boxes
	FAULT_CALL=linkat FAULT_NTH=1 FAULT_ERRNO=ENOENT faulted
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(stat -c %h "$T"/y/c/new/*)" -eq 2 ]
}

@test "EINTR is retried: a write, a copy's read and its write interrupted once still deliver" {
	need_root
	local call nth
	for call in write:1 pread:1 write:2; do
		rm -rf "$T/y" && two_boxes owners
		FAULT_CALL=${call%:*} FAULT_NTH=${call#*:} FAULT_ERRNO=EINTR faulted
		grep -q '^250 2.0.0 .* delivered' "$T/out" || { echo "$call"; cat "$T/out" "$T/err"; return 1; }
		cmp "$T"/y/b/new/* "$T"/y/c/new/*
	done
}

@test "a copy that fails (its read, write, fchown or fsync) fails the message: 4xx, nothing left" {
	need_root
	local call
	for call in pread write:2 fchown fsync:2; do
		rm -rf "$T/y" && two_boxes owners
		local nth=${call#*:}
		[ "$nth" != "$call" ] || nth=1
		FAULT_CALL=${call%:*} FAULT_NTH=$nth FAULT_ERRNO=EIO faulted
		grep -q '^451 4.3.0 ' "$T/out" || { echo "$call"; cat "$T/out" "$T/err"; return 1; }
		nothing_left || { echo "$call left a file"; return 1; }
	done
}

@test "every close failing in turn (EIO, as on NFS): a 250 only with both files, else 451 and nothing left" {
	need_root
	two_boxes owners
	FAULT_CALL=close FAULT_NTH=0 FAULT_TRACE=$T/trace faulted
	local n count failed=0
	count=$(wc -l < "$T/trace")
	for n in $(seq 1 "$count"); do
		rm -rf "$T/y" && two_boxes owners
		FAULT_CALL=close FAULT_NTH=$n FAULT_ERRNO=EIO faulted || true
		if grep -q '^250 2.0.0 .* delivered' "$T/out"; then
			[ -n "$(ls "$T/y/b/new")" ] && [ -n "$(ls "$T/y/c/new")" ] ||
				{ echo "close $n: 250 without both"; return 1; }
		else
			grep -q '^451 4.3.0 ' "$T/out" || { echo "close $n:"; cat "$T/out"; return 1; }
			nothing_left || { echo "close $n left a file"; return 1; }
			failed=$((failed + 1))
		fi
	done
	echo "# $count closes, $failed of them failed the message" >&3
	[ "$failed" -ge 2 ]
}

@test "no clock (clock_gettime fails at DATA): 451 4.3.0, nothing made, the session goes on" {
	two_boxes
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nNOOP\r\nQUIT\r\n' > "$T/in"
	FAULT_CALL=clock_gettime FAULT_NTH=0 FAULT_TRACE=$T/trace LD_PRELOAD=$SHIM \
		"$SMTPD" -h test.example -m "$T/%d/%u" < "$T/in" > /dev/null 2>&1 || true
	local n
	for n in $(seq 1 "$(wc -l < "$T/trace")"); do
		rm -rf "$T/y" && two_boxes
		FAULT_CALL=clock_gettime FAULT_NTH=$n FAULT_ERRNO=EIO LD_PRELOAD=$SHIM \
			"$SMTPD" -h test.example -m "$T/%d/%u" < "$T/in" > "$T/out" 2> "$T/err" || true
		grep -qE '^(221|421) ' "$T/out"
		if grep -q '^451 4.3.0 ' "$T/out"; then
			nothing_left
			[ "$(tail -2 "$T/out" | head -1 | tr -d '\r')" = '250 2.0.0 Ok' ]
			return 0
		fi
	done
	echo "no clock_gettime failure gave 451"
	return 1
}

@test "a Maildir past the 16th replaced during the data: that recipient alone gets 451 (ESTALE), nothing in either" {
	local u
	for u in $(seq 1 18); do mkdir -p "$T/w/u$u/"{cur,new,tmp}; done
	fifo_start -L -m "$T/%d/%u"
	{ printf 'LHLO c\r\nMAIL FROM:<a@x>\r\n'; for u in $(seq 1 18); do printf 'RCPT TO:<u%d@w>\r\n' "$u"; done
	  printf 'DATA\r\nSubject: stale\r\n\r\n'; } >&4
	first_file_in "$T/w/u1/tmp" > /dev/null
	mv "$T/w/u18" "$T/u18.old"
	mkdir -p "$T/w/u18/"{cur,new,tmp}
	printf 'body\r\n.\r\nQUIT\r\n' >&4
	fifo_end
	[ "$(grep -c '^250 2.0.0 .* delivered' "$T/out")" -eq 17 ]
	grep -q '^451 4.3.0 ' "$T/out"
	grep -q ' failed .*to=<u18@w> .*errno=ESTALE reply=451 code=4.3.0$' "$T/err"
	[ -z "$(find "$T/w/u18" "$T/u18.old" -type f)" ]
	[ "$(find "$T"/w/u{1..17}/new -type f | wc -l)" -eq 17 ]
}

@test "root: a host name with / : \\ and a space is written \\057 \\072 \\134 \\040 in the file name (Maildir's rule)" {
	need_root
	command -v unshare >/dev/null || skip "unshare is not installed"
	unshare -u true 2>/dev/null || skip "UTS namespaces are not allowed here"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n' > "$T/in"
	unshare -u sh -c 'printf "mx/1:2\\\\3 4" > /proc/sys/kernel/hostname && exec "$1" -h test.example -m "$2" < "$3" > "$4"' sh \
		"$SMTPD" "$T/Maildir" "$T/in" "$T/out"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	ls "$T/Maildir/new" | grep -qE '^[0-9]+\.M[0-9]+P[0-9]+Q1\.mx\\0571\\0722\\1343\\0404,S=[0-9]+$'
}

@test "an address whose Maildir path would pass 1024 octets is refused 550 5.1.3, nothing made" {
	local p=$T i
	for i in 1 2 3 4; do p=$p/$(printf 'a%.0s' $(seq 235)); done
	mkdir -p "$p"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<%s@y>\r\nQUIT\r\n' "$(printf 'b%.0s' $(seq 64))" |
		"$SMTPD" -h test.example -m "$p/%d/%u" > "$T/out" 2> "$T/err"
	sed -n 4p "$T/out" | grep -q '^550 5.1.3 '
	[ -z "$(ls -A "$p")" ]
}

@test "the probe (-b) as a user who cannot write tmp/ or new/ says which; as root it names the wrong owner" {
	need_root
	user_maildir alice 2001
	user_maildir bob 2001
	chmod 500 "$T/home/alice/Maildir/tmp" "$T/home/bob/Maildir/new"
	chmod 777 "$T/home/bob/Maildir/tmp"
	chmod 755 "$T/home/alice" "$T/home/bob" "$T/home/alice/Maildir" "$T/home/bob/Maildir"
	run as_uid 2002 "$SMTPD" -b -h test.example -m "$T/home/%u/Maildir" alice@h bob@h
	[ "$status" -eq 67 ]
	echo "$output" | grep -q '^alice@h: 451 4.3.0 .*tmp-not-writable'
	echo "$output" | grep -q '^bob@h: 451 4.3.0 .*new-not-writable'
	chown 2002 "$T/home/alice/Maildir/tmp"
	run "$SMTPD" -b -h test.example -m "$T/home/%u/Maildir" alice@h
	[ "$status" -eq 67 ]
	echo "$output" | grep -q 'tmp-wrong-owner'
}

# ---- paths and templates: every way a recipient's Maildir can be missing or strange ----

# rcpt_reply SMTPD-ARGS...: the reply to one RCPT TO:<$ADDR> (default b@y)
rcpt_reply() {
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<%s>\r\nQUIT\r\n' "${ADDR:-b@y}" |
		"$SMTPD" -h test.example "$@" > "$T/out" 2> "$T/err" || true
	sed -n 4p "$T/out" | tr -d '\r'
}

@test "RCPT: a Maildir that cannot be opened gets the errno's reply: EMFILE/ENFILE 452 4.5.3, ENOSPC/EDQUOT/EFBIG 452 4.3.1, EIO 451 4.3.0" {
	mkdir -p "$T/y/b/"{cur,new,tmp}
	local e want
	for e in EMFILE:'452 4.5.3' ENFILE:'452 4.5.3' ENOSPC:'452 4.3.1' EDQUOT:'452 4.3.1' \
		EFBIG:'452 4.3.1' EIO:'451 4.3.0'; do
		want=${e#*:}
		# the first openat of the RCPT's walk: the template's root
		FAULT_CALL=openat FAULT_NTH=1 FAULT_ERRNO=${e%%:*} LD_PRELOAD=$SHIM rcpt_reply -m "$T/%d/%u" > "$T/reply"
		grep -q "^$want " "$T/reply" || { echo "${e%%:*}: $(cat "$T/reply")"; return 1; }
	done
}

@test "paths: a symbolic link loop is 451 4.3.0 (ELOOP); a link whose target passes 1024 octets is 550 5.1.1" {
	mkdir -p "$T/y"
	ln -s "$T/y/loop2" "$T/y/loop1"
	ln -s "$T/y/loop1" "$T/y/loop2"
	ADDR=loop1@y run rcpt_reply -m "$T/%d/%u"
	[[ "$output" == "451 4.3.0 "* ]]
	grep -q 'errno=ELOOP' "$T/err"
	ln -s "$T/$(printf 'x%.0s' $(seq 1100))" "$T/y/long"
	ADDR=long@y run rcpt_reply -m "$T/%d/%u"
	[[ "$output" == "550 5.1.1 "* ]]
}

@test "paths: a domain that is a file is 550 5.7.1; // in a template is one /; %u and %d in one name is 550 5.1.1 when missing" {
	printf 'not a directory\n' > "$T/y"
	run rcpt_reply -m "$T/%d/%u"
	[[ "$output" == "550 5.7.1 "* ]]
	rm "$T/y" && mkdir -p "$T/y/b/"{cur,new,tmp}
	run rcpt_reply -m "$T//%d//%u"
	[[ "$output" == "250 2.1.5 "* ]]
	run rcpt_reply -m "$T/%u@%d"
	[[ "$output" == "550 5.1.1 "* ]]
	mkdir -p "$T/b@y/"{cur,new,tmp}
	run rcpt_reply -m "$T/%u@%d"
	[[ "$output" == "250 2.1.5 "* ]]
}

@test "templates: %% is a percent sign, an unknown %x stands for itself, a template may start with %" {
	mkdir -p "$T/p%c/y/b/"{cur,new,tmp} "$T/a%xb/y/b/"{cur,new,tmp} "$T/w/y/b/"{cur,new,tmp}
	run rcpt_reply -m "$T/p%%c/%d/%u"
	[[ "$output" == "250 2.1.5 "* ]]
	run rcpt_reply -m "$T/a%xb/%d/%u"
	[[ "$output" == "250 2.1.5 "* ]]
	cd "$T/w"
	run rcpt_reply -m "%d/%u"
	[[ "$output" == "250 2.1.5 "* ]]
	run rcpt_reply -m "Maildir"
	[[ "$output" == "250 2.1.5 "* ]]
	[ -d "$T/w/Maildir/new" ]
}

@test "names: a local part with DEL, or a quoted one with /, is 550 5.1.3 whatever the template" {
	mkdir -p "$T/y"
	ADDR=$'b\x7fc@y' run rcpt_reply -m "$T/%d/%u"
	[[ "$output" == 5* ]]
	ADDR='"b/c"@y' run rcpt_reply -m "$T/%d/%u"
	[[ "$output" == "550 5.1.3 "* ]]
	[ -z "$(ls -A "$T/y")" ]
}

@test "root: a catch-all whose tmp/ belongs to another user than the Maildir is no store: 421 4.3.0, exit 75" {
	need_root
	mkdir -p "$T/c/Maildir/"{cur,new,tmp}
	chown 2001:2001 "$T/c/Maildir" "$T/c/Maildir/new" "$T/c/Maildir/cur"
	chown 2002:2002 "$T/c/Maildir/tmp"
	run rcpt_reply -m "$T/c/Maildir"
	grep -q '^421 4.3.0 .*Mail store unavailable' "$T/out"
	grep -q 'unavailable path=' "$T/err"
	[ -z "$(find "$T/c" -type f)" ]
}

@test "as an ordinary user: two Maildirs of that user share one file by a hard link, and it stays theirs" {
	need_root
	user_maildir alice 2001
	user_maildir bob 2001
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@h>\r\nRCPT TO:<bob@h>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n' > "$T/in"
	as_uid 2001 "$SMTPD" -h test.example -m "$T/home/%u/Maildir" < "$T/in" > "$T/out" 2> "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	local a b
	a=$(ls "$T"/home/alice/Maildir/new/*)
	b=$(ls "$T"/home/bob/Maildir/new/*)
	[ "$(stat -c '%u %h %i' "$a")" = "$(stat -c '%u %h %i' "$b")" ]
	[ "$(stat -c '%u %h' "$a")" = '2001 2' ]
}

@test "the probe on a catch-all that is not there yet says it will be made, and makes nothing" {
	mkdir "$T/c"
	run "$SMTPD" -b -h test.example -m "$T/c/Maildir" b@y
	[ "$status" -eq 0 ]
	[ ! -e "$T/c/Maildir" ]
	mkdir "$T/c/Maildir"
	run "$SMTPD" -b -h test.example -m "$T/c/Maildir" b@y
	[ "$status" -eq 0 ]
	[ -z "$(ls -A "$T/c/Maildir")" ]
}

@test "root: a catch-all reached through mallory's link to bob's Maildir is no store: 421 4.3.0, nothing in bob's" {
	need_root
	user_maildir bob 2002
	mkdir -p "$T/m"
	chown 2003:2003 "$T/m"
	as_uid 2003 ln -s "$T/home/bob/Maildir" "$T/m/Maildir"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/m/Maildir" > "$T/out" 2> "$T/err" || true
	grep -q '^421 4.3.0 .*Mail store unavailable' "$T/out"
	[ -z "$(find "$T/home/bob/Maildir" -type f)" ]
}

# ---- one recipient never holds back another ----

@test "LMTP: tmp/ of the first recipient replaced by a file after its RCPT: it alone gets 451 4.3.0, the second gets the mail" {
	mkdir -p "$T/y/"{b,c}/{cur,new,tmp}
	fifo_start -L -m "$T/%d/%u"
	printf 'LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\n' >&4
	local i
	for i in $(seq 250); do [ "$(grep -c '^250 2.1.5' "$T/out")" -eq 2 ] && break; sleep 0.02; done
	rmdir "$T/y/b/tmp" && printf 'a file\n' > "$T/y/b/tmp"
	printf 'DATA\r\nSubject: isolated\r\n\r\nhi\r\n.\r\nQUIT\r\n' >&4
	fifo_end
	tr -d '\r' < "$T/out" | sed -n '/^354 /,$p' | sed -n '2,3p' > "$T/final"
	grep -q '^451 4.3.0 ' <(sed -n 1p "$T/final")
	grep -q '^250 2.0.0 .* delivered' <(sed -n 2p "$T/final")
	grep -q ' failed .*to=<b@y> .*op=open-tmp errno=ENOTDIR reply=451 code=4.3.0$' "$T/err"
	[ "$(ls "$T/y/c/new" | wc -l)" -eq 1 ]
	grep -qx 'Subject: isolated' "$T"/y/c/new/*
	[ -z "$(find "$T/y/c/tmp" "$T/y/b/new" -type f)" ]
}

# full_tmpfs_session SMTPD-ARGS...: bob's Maildir on a full 64 KiB tmpfs (a private mount),
# alice's on the ordinary file system; $T/in is the client's input
full_tmpfs_session() {
	command -v unshare >/dev/null || skip "unshare is not installed"
	unshare -m true 2>/dev/null || skip "mount namespaces are not allowed here"
	mkdir -p "$T/full" "$T/y/alice/"{cur,new,tmp}
	run unshare -m sh -c '
		mount -t tmpfs -o size=64k tmpfs "$1" || exit 90
		mkdir -p "$1/bob/cur" "$1/bob/new" "$1/bob/tmp" && ln -s "$1/bob" "$2/y/bob"
		head -c 1048576 /dev/zero > "$1/fill" 2>/dev/null
		shift 2
		"$@" < "$T/in" > "$T/out" 2> "$T/err"
		find "$T/full/bob" -type f > "$T/bob.files"
	' sh "$T/full" "$T" "$SMTPD" -h test.example "$@"
	[ "$status" -ne 90 ] || skip "mounting a tmpfs is not allowed here"
}

@test "LMTP: bob on a full 64 KiB tmpfs, alice elsewhere: alice gets the mail, bob 452 4.3.1" {
	printf 'LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@y>\r\nRCPT TO:<alice@y>\r\nDATA\r\nSubject: full\r\n\r\nfor both\r\n.\r\nQUIT\r\n' > "$T/in"
	T=$T full_tmpfs_session -L -m "$T/y/%u"
	tr -d '\r' < "$T/out" | sed -n '/^354 /,$p' | sed -n '2,3p' > "$T/final"
	cat "$T/final" "$T/err"
	grep -q '^452 4.3.1 ' <(sed -n 1p "$T/final")
	grep -q '^250 2.0.0 .* delivered' <(sed -n 2p "$T/final")
	grep -q ' failed .*to=<bob@y> .*op=write errno=ENOSPC reply=452 code=4.3.1$' "$T/err"
	[ "$(ls "$T/y/alice/new" | wc -l)" -eq 1 ]
	[ ! -s "$T/bob.files" ]
	[ -z "$(ls "$T/y/alice/tmp")" ]
}

@test "root: the spool and every copy are their Maildir owner's before the first byte, and written as that owner" {
	need_root
	user_maildir alice 2001
	user_maildir bob 2002
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@h>\r\nRCPT TO:<bob@h>\r\nDATA\r\nSubject: owners\r\n\r\nhi\r\n.\r\nQUIT\r\n' |
		FAULT_OWNERS=$T/owners LD_PRELOAD=$SHIM "$SMTPD" -h test.example -m "$T/home/%u/Maildir" > "$T/out" 2> "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	cat "$T/owners"
	# one write of the spool (alice's), one of bob's copy
	[ "$(wc -l < "$T/owners")" -eq 2 ]
	[ "$(sed -n 1p "$T/owners")" = '2001:2001 fsuid=2001:2001' ]
	[ "$(sed -n 2p "$T/owners")" = '2002:2002 fsuid=2002:2002' ]
}

@test "root: a full disk's blocks reserved for root are not used for a user's Maildir: 452 4.3.1" {
	need_root
	command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is not installed"
	unshare -m true 2>/dev/null || skip "mount namespaces are not allowed here"
	truncate -s 4M "$T/ext4.img"
	mkfs.ext4 -q -m 50 "$T/ext4.img"
	mkdir "$T/mnt"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<u@y>\r\nDATA\r\nSubject: reserved\r\n\r\nhi\r\n.\r\nQUIT\r\n' > "$T/in"
	run unshare -m sh -c '
		mount -o loop "$1/ext4.img" "$1/mnt" 2>/dev/null || exit 90
		mkdir -p "$1/mnt/u/cur" "$1/mnt/u/new" "$1/mnt/u/tmp" && chown -R 2001:2001 "$1/mnt/u"
		setpriv --reuid 2001 --regid 2001 --clear-groups sh -c "head -c 8388608 /dev/zero > \"\$0/mnt/u/fill\"" "$1" 2>/dev/null
		"$2" -h test.example -m "$1/mnt/%u" < "$1/in" > "$1/out" 2> "$1/err"
		find "$1/mnt/u/new" "$1/mnt/u/tmp" -type f > "$1/left"
	' sh "$T" "$SMTPD"
	[ "$status" -ne 90 ] || skip "a loop device cannot be mounted here"
	cat "$T/out" "$T/err"
	grep -q '^452 4.3.1 ' "$T/out"
	[ ! -s "$T/left" ]
}

@test "the catch-all is not made at start-up, nor for a refused recipient; the first accepted one makes it" {
	mkdir "$T/c"
	"$SMTPD" -h test.example -m "$T/c/Maildir" < /dev/null > "$T/out" 2> "$T/err" || true
	[ ! -e "$T/c/Maildir" ]
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<"b/c"@y>\r\nRCPT TO:<bad@nowhere>\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -d y -m "$T/c/Maildir" > "$T/out" 2> "$T/err"
	[ ! -e "$T/c/Maildir" ]
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/c/Maildir" > "$T/out" 2> "$T/err"
	sed -n 4p "$T/out" | grep -q '^250 2.1.5 '
	[ -d "$T/c/Maildir/cur" ] && [ -d "$T/c/Maildir/new" ] && [ -d "$T/c/Maildir/tmp" ]
	# the parent must still exist at start-up
	run "$SMTPD" -h test.example -m "$T/nothing/Maildir" < /dev/null
	[ "$status" -eq 75 ]
	[[ "$output" == "421 4.3.0 "* ]]
}

@test "root: a link by the owner of the catch-all's parent on its way makes root create nothing where it points: 421" {
	need_root
	mkdir -p "$T/vmhome" "$T/target"
	chown 2001:2001 "$T/vmhome"
	as_uid 2001 ln -s "$T/target" "$T/vmhome/store"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n' |
		"$SMTPD" -h test.example -m "$T/vmhome/store/Maildir" > "$T/out" 2> "$T/err" || true
	grep -q '^421 4.3.0 ' "$T/out"
	grep -q "unavailable path=$T/vmhome/store/Maildir errno=EPERM " "$T/err"
	[ -z "$(ls -A "$T/target")" ]
}

@test "root: a catch-all, its cur/ new/ tmp/ made by smtpd belong to the owner of where they are made; the next session delivers too" {
	need_root
	mkdir -p "$T/c/Maildir" "$T/d"
	chown 2001:2001 "$T/c/Maildir"
	chown 2002:2003 "$T/d"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n' > "$T/in"
	local m i
	for m in "$T/c/Maildir" "$T/d/Maildir"; do
		for i in 1 2; do
			"$SMTPD" -h test.example -m "$m" < "$T/in" > "$T/out" 2> "$T/err" || true
			grep -q '^250 2.0.0 .* delivered' "$T/out" || { echo "$m, session $i:"; cat "$T/out" "$T/err"; return 1; }
		done
	done
	[ "$(stat -c '%U %u:%g %a' "$T/c/Maildir/"{cur,new,tmp} | sort -u)" = "$(stat -c '%U' "$T/c/Maildir") 2001:2001 700" ]
	[ "$(stat -c '%u:%g %a' "$T/d/Maildir" "$T/d/Maildir/"{cur,new,tmp} | sort -u)" = '2002:2003 700' ]
	[ "$(stat -c '%u:%g' "$T"/d/Maildir/new/* | sort -u)" = '2002:2003' ]
}

@test "a user's link to a directory smtpd may not open, and one to nothing, get the same 550 5.1.1; the log tells them apart" {
	need_root
	mkdir -p "$T/home/m1" "$T/home/m2" "$T/secret/Maildir/"{cur,new,tmp}
	chmod 700 "$T/secret"
	chmod 755 "$T" "$T/home"
	chown 2003:2003 "$T/home/m1" "$T/home/m2"
	as_uid 2003 ln -s "$T/secret/Maildir" "$T/home/m1/Maildir"
	as_uid 2003 ln -s "$T/nothing/Maildir" "$T/home/m2/Maildir"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<m1@h>\r\nRCPT TO:<m2@h>\r\nQUIT\r\n' > "$T/in"
	# as another user (vmail), and as root, whose rule refuses a link of another owner
	local who
	for who in 2005 0; do
		as_uid "$who" "$SMTPD" -h test.example -m "$T/home/%u/Maildir" < "$T/in" > "$T/out" 2> "$T/err"
		[ "$(sed -n 4p "$T/out" | tr -d '\r')" = '550 5.1.1 No such user' ] || { echo "as $who:"; cat "$T/out"; return 1; }
		[ "$(sed -n 5p "$T/out" | tr -d '\r')" = '550 5.1.1 No such user' ]
		grep -qE " refused .*to=<m1@h> reply=550 code=5.1.1 reason=no-such-user path=$T/home/m1/Maildir errno=(EACCES|EPERM)$" "$T/err"
		grep -q " refused .*to=<m2@h> reply=550 code=5.1.1 reason=no-such-user path=$T/home/m2/Maildir detail=directory-missing$" "$T/err"
	done
}

# break_own_tmp: alice removes her tmp/ during the data and puts a file in its place
break_own_tmp() {
	local spool
	spool=$(first_file_in "$T/home/alice/Maildir/tmp")
	as_uid 2001 sh -c 'rm -f "$1/$2" && rmdir "$1" && echo mine > "$1"' sh "$T/home/alice/Maildir/tmp" "$spool"
}

@test "root: alice breaks her own tmp/ during the data: in SMTP the message fails for bob too (451, nothing left), in LMTP bob gets it" {
	need_root
	local proto
	for proto in SMTP LMTP; do
		rm -rf "$T/home" "$T/fifo"
		user_maildir alice 2001
		user_maildir bob 2002
		if [ "$proto" = LMTP ]; then fifo_start -L -m "$T/home/%u/Maildir"; else fifo_start -m "$T/home/%u/Maildir"; fi
		printf '%s c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@h>\r\nRCPT TO:<bob@h>\r\nDATA\r\nSubject: broken\r\n\r\nbody\r\n' \
			"$([ "$proto" = LMTP ] && echo LHLO || echo HELO)" >&4
		break_own_tmp
		printf '.\r\nQUIT\r\n' >&4
		fifo_end
		tr -d '\r' < "$T/out" | sed -n '/^354 /,$p' > "$T/final"
		if [ "$proto" = SMTP ]; then
			[ "$(sed -n 2p "$T/final")" = '451 4.3.0 Local error in delivery' ]
			[ -z "$(find "$T/home/bob/Maildir" -type f)" ]
			grep -q ' failed .*to=<bob@h> .*op=withdrawn ' "$T/err"
		else
			[ "$(sed -n 2p "$T/final")" = '451 4.3.0 Local error in delivery' ]
			sed -n 3p "$T/final" | grep -q '^250 2.0.0 .* delivered'
			[ "$(ls "$T/home/bob/Maildir/new" | wc -l)" -eq 1 ]
			[ -z "$(ls "$T/home/bob/Maildir/tmp")" ]
		fi
		grep -q ' failed .*to=<alice@h> .*op=rename-into-new errno=ENOENT ' "$T/err"
	done
}
