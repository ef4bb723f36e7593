#!/usr/bin/env bats
# Faults: every write, fsync, openat, linkat, renameat, mkdir and fchown of a session made to
# fail in turn (tests/faultinject.c), watched by a reader of every new/ (inotifywait); in LMTP
# the spool moving on from a Maildir that fails; a real full disk, unwritable Maildirs,
# SIGKILL at random points.
# Whatever fails, a message is in new/ only if its 250 was sent, a 250 is sent only when the
# message is in new/ of every recipient, and nothing is left in tmp/.

setup_file() {
	export SHIM=$BATS_FILE_TMPDIR/faultinject.so
	cc -O2 -fPIC -shared -o "$SHIM" "$BATS_TEST_DIRNAME/faultinject.c" -ldl
}

setup() {
	T=$(mktemp -d)
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
	# gcc's ASan wants to come first among preloads; this lets the shim in.
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0
}

teardown() {
	rm -rf "$T"
}

# Two transactions: the first to four recipients in three Maildirs (b twice, c, d), the second
# to b.
walk_input() {
	printf 'EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<b+t@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\nSubject: txn1\r\n\r\nfirst\r\n.\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: txn2\r\n\r\nsecond\r\n.\r\nQUIT\r\n'
}

# d gets a hard link of b's file; as root c belongs to another user, so that c gets a copy of
# its own and the walk meets the copy's calls (and fchown) too.
fresh_maildirs() {
	rm -rf "$T/root"
	mkdir -p "$T/root/y.example/"{b,c,d}/{cur,new,tmp}
	[ "$(id -u)" -ne 0 ] || chown -R 2002:2002 "$T/root/y.example/c"
}

# A reader's view: every name that appears in any new/ during the run, in $T/seen.
watch_new_start() {
	local i
	: > "$T/watch.err"
	inotifywait -m -e create -e moved_to --format '%f' "$T"/root/y.example/*/new \
		> "$T/seen" 2> "$T/watch.err" &
	WPID=$!
	for i in $(seq 250); do
		grep -q 'Watches established' "$T/watch.err" && return 0
		sleep 0.01
	done
	echo "inotifywait did not start" >&2
	return 1
}

watch_new_stop() {
	kill "$WPID" 2>/dev/null || true
	wait "$WPID" 2>/dev/null || true
}

# A file of a transaction that got no 250 was never visible, unless the failure came while
# publishing (reopening tmp/ or new/, the rename, the fsync of new/): the window README names.
check_reader_view() {
	local name id
	while read -r name; do
		id=$(echo "$name" | sed -E 's/^([0-9]+\.M[0-9]+P[0-9]+Q[0-9]+)\..*/\1/')
		grep -q "^250 2.0.0 $id delivered" "$T/out" && continue
		grep -qE ' op=(open-tmp|open-new|rename-into-new|fsync-new) ' "$T/err" && continue
		echo "a reader saw $name in new/, and its transaction got no 250"
		return 1
	done < "$T/seen"
}

# rcpt_accepted c|d: the reply to txn1's RCPT for that box was 250 (a fault can refuse it)
rcpt_accepted() {
	local nth
	case $1 in c) nth=3 ;; d) nth=4 ;; esac
	tr -d '\r' < "$T/out" | sed -n '/^250 2\.1\.0 /,$p' | sed -n "$((nth + 1))p" | grep -q '^250 2\.1\.5 '
}

# check_invariants ERRNO: what must hold after any run, whatever failed.
check_invariants() {
	local errno=$1 f id subject box
	[ -z "$(find "$T"/root/y.example/*/tmp -type f)" ] || { echo "stray file in tmp/"; return 1; }
	for f in "$T"/root/y.example/*/new/*; do
		[ -e "$f" ] || continue
		id=$(basename "$f" | sed -E 's/^([0-9]+\.M[0-9]+P[0-9]+Q[0-9]+)\..*/\1/')
		grep -q "^250 2.0.0 $id delivered" "$T/out" || { echo "$f in new/ without a 250"; return 1; }
	done
	for id in $(sed -nE 's/^250 2\.0\.0 ([^ ]+) delivered.*/\1/p' "$T/out"); do
		f=$(ls "$T"/root/y.example/b/new/"$id".* 2>/dev/null | head -1)
		[ -n "$f" ] || { echo "250 for $id, but not in b/new"; return 1; }
		subject=$(sed -n 's/^Subject: //p' "$f")
		[ "$subject" = txn1 ] || continue
		# c and d got txn1 only if their RCPTs (the third, the fourth) were accepted.
		for box in c d; do
			rcpt_accepted "$box" || continue
			ls "$T"/root/y.example/$box/new/"$id".* >/dev/null 2>&1 ||
				{ echo "250 for $id, not in $box/new"; return 1; }
		done
	done
	grep -qE '^(221|421) ' "$T/out" || { echo "the session did not end with 221 or 421"; return 1; }
	if grep -qE '^smtpd\[[0-9]+\]: (failed|rejected) ' "$T/err"; then
		grep -qE '^45[12] 4\.3\.[01] ' "$T/out" || { echo "a delivery failed, but no 451/452"; return 1; }
		case $errno in ENOSPC | EDQUOT)
			! grep -qE ' op=(write|fsync) ' "$T/err" || grep -q '^452 4.3.1 ' "$T/out" ||
				{ echo "a full disk not answered 452 4.3.1"; return 1; } ;;
		esac
	fi
}

@test "fault walk: every call of every kind fails in turn, with each errno; the promises hold" {
	local fn count n errno points=0 failed_txn=0
	walk_input > "$T/in"
	for fn in write fsync openat linkat renameat mkdir fchown; do
		fresh_maildirs
		rm -f "$T/trace"
		FAULT_CALL=$fn FAULT_NTH=0 FAULT_TRACE=$T/trace LD_PRELOAD=$SHIM \
			"$SMTPD" -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2> "$T/err"
		count=$(wc -l < "$T/trace" 2>/dev/null || echo 0)
		echo "# $fn: $count calls in the session" >&3
		for n in $(seq 1 "$count"); do
			for errno in ENOSPC EDQUOT EIO EACCES EROFS; do
				fresh_maildirs
				watch_new_start
				FAULT_CALL=$fn FAULT_NTH=$n FAULT_ERRNO=$errno LD_PRELOAD=$SHIM \
					"$SMTPD" -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2> "$T/err" || true
				watch_new_stop
				{ check_invariants "$errno" && check_reader_view; } || {
					echo "FAULT_CALL=$fn FAULT_NTH=$n FAULT_ERRNO=$errno"
					cat "$T/out" "$T/err"
					return 1
				}
				points=$((points + 1))
				grep -q '^45[12] ' "$T/out" && failed_txn=$((failed_txn + 1))
			done
		done
	done
	echo "# walked $points fault points; $failed_txn ended in a 451/452" >&3
	[ "$points" -ge 50 ]
	[ "$failed_txn" -ge 10 ]
}

# wide_input: an LMTP session to 18 Maildirs (b to s of w.example, s through a symbolic link):
# past the 16 Maildirs that keep a descriptor, so that the rest are opened again by their path
# at commit.
WIDE_BOXES="b c d e f g h i j k l m n o p q r s"
wide_input() {
	local u
	printf 'LHLO c\r\nMAIL FROM:<a@x.example>\r\n'
	for u in $WIDE_BOXES; do printf 'RCPT TO:<%s@w.example>\r\n' "$u"; done
	printf 'DATA\r\nSubject: wide\r\n\r\nto many\r\n.\r\nQUIT\r\n'
}

fresh_wide() {
	local u
	rm -rf "$T/root" "$T/catch"
	mkdir "$T/catch"
	for u in $WIDE_BOXES; do mkdir -p "$T/root/w.example/$u/"{cur,new,tmp}; done
	[ "$(id -u)" -ne 0 ] || chown -R 2002:2002 "$T/root/w.example/c"
	# s is reached through a symbolic link, as an alias is
	mv "$T/root/w.example/s" "$T/root/s.real"
	ln -s "$T/root/s.real" "$T/root/w.example/s"
}

# In LMTP each recipient stands alone: a file in new/ for every 250 and for nothing else.
check_wide() {
	local f id delivered files
	[ -z "$(find "$T/root" "$T/catch" -path "$T/*/tmp/*" -type f)" ] || { echo "stray file in tmp/"; return 1; }
	for f in $(find "$T/root" "$T/catch" -path "$T/*/new/*" -type f); do
		id=$(basename "$f" | sed -E 's/^([0-9]+\.M[0-9]+P[0-9]+Q[0-9]+)\..*/\1/')
		grep -q "^250 2.0.0 $id delivered" "$T/out" || { echo "$f in new/ without a 250"; return 1; }
	done
	delivered=$(grep -c '^250 2.0.0 .* delivered' "$T/out" || true)
	files=$(find "$T/root" "$T/catch" -path "$T/*/new/*" -type f | wc -l)
	[ "$delivered" -eq "$files" ] || { echo "$delivered times 250, $files files"; return 1; }
	grep -qE '^(221|421) ' "$T/out" || { echo "the session did not end with 221 or 421"; return 1; }
}

@test "fault walk, wide: LMTP to 18 Maildirs and a catch-all made on the spot; every call of more kinds fails in turn" {
	local fn count n mode points=0
	# Hundreds of sessions with 18 fsyncs each: on tmpfs when there is one, to stay quick.
	if [ -d /dev/shm ] && [ -w /dev/shm ]; then
		rm -rf "$T"
		T=$(mktemp -d -p /dev/shm)
	fi
	for mode in wide catch; do
		if [ "$mode" = wide ]; then
			wide_input > "$T/in"
			set -- -L -m "$T/root/%d/%u"
		else
			walk_input > "$T/in"
			set -- -m "$T/catch/Maildir"
		fi
		for fn in openat fstat fstatat fsync linkat renameat mkdir mkdirat fchown pread unlinkat \
			readlinkat write close clock_gettime; do
			fresh_wide
			rm -f "$T/trace"
			FAULT_CALL=$fn FAULT_NTH=0 FAULT_TRACE=$T/trace LD_PRELOAD=$SHIM \
				"$SMTPD" -h test.example "$@" < "$T/in" > "$T/out" 2> "$T/err" || true
			count=$(wc -l < "$T/trace" 2>/dev/null || echo 0)
			echo "# $mode $fn: $count calls" >&3
			# Of a long run of calls, the first 20 (RCPT) and the last 40 (commit).
			for n in $(seq 1 "$count" | awk -v c="$count" 'NR <= 20 || NR > c - 40'); do
				fresh_wide
				FAULT_CALL=$fn FAULT_NTH=$n FAULT_ERRNO=EIO LD_PRELOAD=$SHIM \
					"$SMTPD" -h test.example "$@" < "$T/in" > "$T/out" 2> "$T/err" || true
				check_wide || {
					echo "$mode: FAULT_CALL=$fn FAULT_NTH=$n"
					cat "$T/out" "$T/err"
					return 1
				}
				points=$((points + 1))
			done
		done
	done
	echo "# walked $points fault points" >&3
	[ "$points" -ge 100 ]
}

# move_input: LMTP to b, c, d; as root c belongs to another user (fresh_maildirs), so that a
# spool moving from b to c and on to d meets owners, links and copies. The message passes one
# write buffer (128 KiB): a spool that moves after its first write is read back.
move_input() {
	printf 'LHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\nSubject: move\r\n\r\n'
	head -c 150000 /dev/zero | tr '\0' m | fold -w 75 | sed 's/$/\r/'
	printf 'moving on\r\n.\r\nQUIT\r\n'
}

# check_move: each accepted recipient's own reply after the data says whether its new/ holds
# the file; a Maildir that failed or was refused holds nothing, and no tmp/ holds anything.
# Sets MOVED when b (the spool's first Maildir) failed at one of the spool's steps and a later
# recipient got the mail.
check_move() {
	local box reply accepted= k=0 i
	MOVED=0
	[ -z "$(find "$T"/root/y.example/*/tmp -type f)" ] || { echo "stray file in tmp/"; return 1; }
	grep -qE '^(221|421) ' "$T/out" || { echo "the session did not end with 221 or 421"; return 1; }
	tr -d '\r' < "$T/out" > "$T/out.lf"
	for box in b c d; do
		k=$((k + 1))
		if sed -n '/^250 2\.1\.0 /,$p' "$T/out.lf" | sed -n "$((k + 1))p" | grep -q '^250 2\.1\.5 '; then
			accepted=$accepted$box
		elif [ -n "$(ls "$T/root/y.example/$box/new")" ]; then
			echo "$box: refused at RCPT, and a file"
			return 1
		fi
	done
	if ! grep -q '^354 ' "$T/out.lf"; then
		[ -z "$(find "$T"/root/y.example/*/new -type f)" ] || { echo "files without a 354"; return 1; }
		return 0
	fi
	sed -n '/^354 /,$p' "$T/out.lf" | sed -n "2,$((${#accepted} + 1))p" > "$T/final"
	for ((i = 0; i < ${#accepted}; i++)); do
		box=${accepted:i:1}
		reply=$(sed -n "$((i + 1))p" "$T/final")
		case $reply in
		"250 2.0.0 "*" delivered")
			[ "$(ls "$T/root/y.example/$box/new" | wc -l)" -eq 1 ] || { echo "$box: 250, no file"; return 1; } ;;
		45[12]" "*)
			[ -z "$(ls "$T/root/y.example/$box/new")" ] || { echo "$box: $reply, and a file"; return 1; } ;;
		*) echo "$box: reply '$reply'"; return 1 ;;
		esac
	done
	if [ "${accepted:0:1}" = b ] &&
		grep -qE ' failed [^ ]+ to=<b@y.example> .* op=(open-tmp|create-in-tmp|chown|write|fsync) ' "$T/err" &&
		sed -n '2,$p' "$T/final" | grep -q '^250 '; then
		MOVED=1
	fi
}

@test "fault walk, LMTP: the spool moves on from a Maildir that fails; every call fails in turn; each recipient stands alone" {
	local fn count n errno points=0 moves=0
	move_input > "$T/in"
	for fn in openat write fsync fchown pread close unlinkat linkat renameat; do
		fresh_maildirs
		rm -f "$T/trace"
		FAULT_CALL=$fn FAULT_NTH=0 FAULT_TRACE=$T/trace LD_PRELOAD=$SHIM \
			"$SMTPD" -L -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2> "$T/err" || true
		count=$(wc -l < "$T/trace" 2>/dev/null || echo 0)
		echo "# $fn: $count calls" >&3
		for n in $(seq 1 "$count"); do
			for errno in ENOSPC EIO; do
				fresh_maildirs
				# a list of errnos fails that many calls in a row: the spool's next Maildir too
				for e in "$errno" "$errno,$errno"; do
					fresh_maildirs
					FAULT_CALL=$fn FAULT_NTH=$n FAULT_ERRNO=$e LD_PRELOAD=$SHIM \
						"$SMTPD" -L -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2> "$T/err" || true
					check_move || {
						echo "FAULT_CALL=$fn FAULT_NTH=$n FAULT_ERRNO=$e"
						cat "$T/out" "$T/err"
						return 1
					}
					points=$((points + 1))
					moves=$((moves + MOVED))
				done
			done
		done
	done
	echo "# walked $points fault points; in $moves the spool moved on from b" >&3
	[ "$points" -ge 100 ]
	[ "$moves" -ge 10 ]
}

@test "fault walk: a one-off fault leaves the session able to deliver the next message" {
	walk_input > "$T/in"
	fresh_maildirs
	# The first fsync is the first message's file: that message fails, the second arrives.
	FAULT_CALL=fsync FAULT_NTH=1 FAULT_ERRNO=EIO LD_PRELOAD=$SHIM \
		"$SMTPD" -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2> "$T/err"
	grep -q '^451 4.3.0 Local error in delivery' "$T/out"
	[ "$(grep -c ' delivered' "$T/out")" -eq 1 ]
	grep -qE ' failed id=[^ ]+ to=<b@y.example> path=[^ ]+/b op=fsync errno=EIO reply=451 code=4.3.0$' "$T/err"
	[ "$(ls "$T/root/y.example/b/new" | wc -l)" -eq 1 ]
	[ -z "$(ls "$T/root/y.example/c/new")" ]
	grep -q '^Subject: txn2$' "$T"/root/y.example/b/new/*
}

@test "race: a concurrent session making the catch-all or its tmp/ first (mkdirat -> EEXIST) is no error" {
	local n
	for n in 1 2 3 4; do
	rm -rf "$T/race" && mkdir "$T/race"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n' > "$T/in"
	FAULT_CALL=mkdirat FAULT_NTH=$n FAULT_ERRNO=EEXIST LD_PRELOAD=$SHIM \
		"$SMTPD" -h test.example -m "$T/race/Maildir" < "$T/in" > "$T/out" 2> "$T/err"
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(ls "$T/race/Maildir/new" | wc -l)" -eq 1 ]
	done
}

@test "fault walk: the new/ directory's fsync failing takes the message back out of new/" {
	walk_input > "$T/in"
	fresh_maildirs
	# fsyncs of message 1: its file (as root also c's copy), then new/ of b, c, d: the third is a new/.
	FAULT_CALL=fsync FAULT_NTH=3 FAULT_ERRNO=EIO LD_PRELOAD=$SHIM \
		"$SMTPD" -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2> "$T/err"
	grep -q '^451 4.3.0' "$T/out"
	grep -q ' op=fsync-new errno=EIO reply=451 code=4.3.0$' "$T/err"
	! grep -q '^Subject: txn1$' "$T"/root/y.example/*/new/* 2>/dev/null
}

@test "full disk: a real tmpfs fills up: 452 4.3.1, nothing partial, then delivery after space is freed" {
	command -v unshare >/dev/null || skip "unshare is not installed"
	unshare -m true 2>/dev/null || skip "mount namespaces are not allowed here"
	head -c 200000 /dev/urandom | base64 -w 76 | sed 's/$/\r/' > "$T/body"
	{ printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: big\r\n\r\n'; cat "$T/body"; printf '.\r\nQUIT\r\n'; } > "$T/big.in"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: small\r\n\r\nfits\r\n.\r\nQUIT\r\n' > "$T/small.in"
	mkdir -p "$T/full"
	run unshare -m sh -c '
		mount -t tmpfs -o size=128k tmpfs "$1" || exit 90
		"$2" -h test.example -m "$1/Maildir" < "$3/big.in" > "$3/big.out" 2> "$3/big.err"
		ls -A "$1/Maildir/new" > "$3/new.after-full"
		ls -A "$1/Maildir/tmp" > "$3/tmp.after-full"
		"$2" -h test.example -m "$1/Maildir" < "$3/small.in" > "$3/small.out" 2>/dev/null
		ls -A "$1/Maildir/new" > "$3/new.after-small"
	' sh "$T/full" "$SMTPD" "$T"
	[ "$status" -ne 90 ] || skip "mounting a tmpfs is not allowed here"
	cat "$T/big.out" "$T/big.err"
	grep -q '^452 4.3.1 Insufficient system storage' "$T/big.out"
	grep -qE ' rejected id=[^ ]+ from=<a@x> recipients=1 path=[^ ]+/Maildir op=write errno=ENOSPC reply=452 code=4.3.1$' "$T/big.err"
	[ ! -s "$T/new.after-full" ]
	[ ! -s "$T/tmp.after-full" ]
	grep -q ' delivered' "$T/small.out"
	[ "$(wc -l < "$T/new.after-small")" -eq 1 ]
}

@test "unwritable: a read-only Maildir gets 4xx and nothing is written" {
	unshare -m true 2>/dev/null || skip "mount namespaces are not allowed here"
	mkdir -p "$T/Maildir/"{cur,new,tmp}
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nQUIT\r\n' > "$T/in"
	run unshare -m sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" &&
		"$2" -h test.example -m "$1" < "$3/in" > "$3/out" 2> "$3/err"' sh "$T/Maildir" "$SMTPD" "$T"
	cat "$T/out" "$T/err"
	grep -q '^451 4.3.0' "$T/out"
	grep -q ' op=create-in-tmp errno=EROFS reply=451 code=4.3.0$' "$T/err"
	[ -z "$(find "$T/Maildir/new" "$T/Maildir/tmp" -type f)" ]
}

@test "unwritable: a Maildir whose tmp/ is a file, and one that is missing" {
	mkdir -p "$T/root/y.example/f/"{cur,new} "$T/root/y.example/ok/"{cur,new,tmp}
	: > "$T/root/y.example/f/tmp"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<f@y.example>\r\nRCPT TO:<gone@y.example>\r\nRCPT TO:<ok@y.example>\r\nQUIT\r\n' > "$T/in"
	"$SMTPD" -h test.example -m "$T/root/%d/%u" < "$T/in" > "$T/out" 2>/dev/null
	[ "$(sed -n 4p "$T/out" | tr -d '\r')" = '550 5.1.1 No such user' ]
	[ "$(sed -n 5p "$T/out" | tr -d '\r')" = '550 5.1.1 No such user' ]
	[ "$(sed -n 6p "$T/out" | tr -d '\r')" = '250 2.1.5 Ok' ]
}

@test "SIGKILL at 200 random points: whatever is in new/ is complete, byte for byte" {
	local i pid delay f complete=0 killed=0
	mkdir -p "$T/Maildir/"{cur,new,tmp}
	python3 - "$T" <<'EOF'
import sys
t = sys.argv[1]
body = b"".join(b"line %06d of the message that must arrive whole\r\n" % i for i in range(4000))
with open(f"{t}/in", "wb") as f:
    f.write(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: whole\r\n\r\n")
    f.write(body + b".\r\nQUIT\r\n")
with open(f"{t}/want", "wb") as f:
    f.write(b"Subject: whole\n\n" + body.replace(b"\r\n", b"\n"))
EOF
	for i in $(seq 200); do
		mkfifo "$T/fifo"
		"$SMTPD" -h test.example -m "$T/Maildir" < "$T/fifo" > /dev/null 2>&1 3>&- &
		pid=$!
		# The writer trickles the input in pieces so the kill lands anywhere in it.
		(head -c 100000 "$T/in"; sleep 0.005; tail -c +100001 "$T/in") > "$T/fifo" 2>/dev/null &
		delay=$(printf '0.%03d' $((RANDOM % 40)))
		sleep "$delay"
		kill -9 "$pid" 2>/dev/null && killed=$((killed + 1))
		wait "$pid" 2>/dev/null || true
		wait 2>/dev/null || true
		rm -f "$T/fifo"
	done
	for f in "$T"/Maildir/new/*; do
		[ -e "$f" ] || continue
		tail -n +5 "$f" | cmp -s - "$T/want" || { echo "incomplete file in new/: $f"; return 1; }
		complete=$((complete + 1))
	done
	echo "# 200 runs: $killed killed mid-session, $complete complete messages in new/, $(ls "$T/Maildir/tmp" | wc -l) left in tmp/" >&3
	[ "$killed" -gt 0 ]
}
