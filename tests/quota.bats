#!/usr/bin/env bats
# Quotas, space and +detail folders: a Maildir++ maildirsize (as Dovecot's maildir quota
# backend and Exim's maildir_use_size_file keep it) checked at RCPT and counted after each
# delivery; with SIZE=, the file system's free space at RCPT; -e, user+detail@ into the
# Maildir++ folder .detail/. Dovecot (its imap binary in PREAUTH mode, no daemon) checks that
# its figures agree with smtpd's, and reads the folders.

load pipe

IMAP_BIN=/usr/lib/dovecot/imap

setup() {
	T=$(mktemp -d)
	chmod 755 "$T"
	V=$T/v
	SMTPD=$(x_smtpd)
	unset TCPREMOTEIP REMOTE_ADDR REMOTE_HOST
	RUNAS=()
	ARGS=(-m "$V/%d/%u")
}

teardown() {
	local ok=0
	x_no_sanitizer_reports || ok=1
	rm -rf "$T"
	return $ok
}

need_root() {
	[ "$(id -u)" -eq 0 ] || skip "needs root"
	command -v setpriv >/dev/null || skip "setpriv is not installed"
}

# box NAME [MAILDIRSIZE]: the Maildir $V/y/NAME, with that maildirsize (a printf format)
box() {
	x_maildir "$V/y/$1"
	[ $# -lt 2 ] || printf -- "$2" > "$V/y/$1/maildirsize"
}

# send ADDRESS...: one message (BODY octets of body, default 1200) to each address; MAIL has
# SIZE=$SIZE when SIZE is set; LHLO instead of EHLO when HELO=LHLO. BDAT, so that a message
# nobody takes is read and dropped.
send() {
	input "$@"
	XS=0
	"${RUNAS[@]}" "$SMTPD" -h test.example "${ARGS[@]}" < "$T/in" > "$T/out" 2> "$T/err" || XS=$?
	x_no_sanitizer_reports
}

# input ADDRESS...: what send sends, in $T/in
input() {
	local r
	NRCPT=$#
	{
		printf '%s c\r\nMAIL FROM:<a@x>%s\r\n' "${HELO:-EHLO}" "${SIZE:+ SIZE=$SIZE}"
		for r in "$@"; do printf 'RCPT TO:<%s>\r\n' "$r"; done
	} > "$T/in"
	{ printf 'Subject: %s\r\n\r\n' "${SUBJECT:-quota}"; head -c "${BODY:-1200}" /dev/zero | tr '\0' q |
		fold -w 60 | sed 's/$/\r/'; } > "$T/msg"
	printf 'BDAT %d LAST\r\n' "$(wc -c < "$T/msg")" >> "$T/in"
	cat "$T/msg" >> "$T/in"
	printf 'QUIT\r\n' >> "$T/in"
}

# rcpt N: the reply to the Nth RCPT; final N: the Nth reply after the data (LMTP: one per
# accepted recipient)
rcpt() { tr -d '\r' < "$T/out" | sed -n '/^250 2\.1\.0 /,$p' | sed -n "$(($1 + 1))p"; }
final() { tr -d '\r' < "$T/out" | sed -n '/^250 2\.1\.0 /,$p' | sed -n "$((NRCPT + $1 + 1))p"; }

# the S= values of a Maildir's messages (new/ and cur/), summed, then their number
s_sum() { find "$1/new" "$1/cur" -type f | sed 's/.*,S=\([0-9]*\).*/\1/' | awk '{ s += $1 } END { print s + 0, NR }'; }

# the sum of a maildirsize's lines after the first, then the sum of counts
mds_sum() { awk 'NR > 1 { b += $1; c += $2 } END { print b + 0, c + 0 }' "$1/maildirsize"; }

@test "quota: over its maildirsize at RCPT (with SIZE=) is 452 4.2.2 for that recipient alone; the others get the mail" {
	box full '1000S\n900 3\n'
	box roomy '100000S,100C\n900 3\n'
	box none
	SIZE=200 send full@y roomy@y none@y
	[ "$(rcpt 1)" = '452 4.2.2 Mailbox full' ]
	[ "$(rcpt 2)" = '250 2.1.5 Ok' ]
	[ "$(rcpt 3)" = '250 2.1.5 Ok' ]
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ -z "$(ls "$V/y/full/new")" ]
	[ "$(x_count "$V/y/roomy")" -eq 1 ] && [ "$(x_count "$V/y/none")" -eq 1 ]
	grep -qE "^smtpd\[[0-9]+\]: refused client=- from=<a@x> to=<full@y> reply=452 code=4\.2\.2 reason=mailbox-full path=$V/y/full$" "$T/err"
	# the same message without SIZE= fits: 900 + 1 octet is within 1000 at RCPT
	send full@y
	[ "$(rcpt 1)" = '250 2.1.5 Ok' ]
}

@test "quota: without SIZE=, a Maildir at its limit (no room for one octet) or at its message count is 452 4.2.2" {
	box bytes '1000S\n1000 3\n'
	box count '0S,3C\n100 3\n'
	box under '1000S,4C\n999 3\n'
	send bytes@y count@y under@y
	[ "$(rcpt 1)" = '452 4.2.2 Mailbox full' ]
	[ "$(rcpt 2)" = '452 4.2.2 Mailbox full' ]
	[ "$(rcpt 3)" = '250 2.1.5 Ok' ]
}

@test "quota: each delivery appends '<S=> 1' with one write; a Maildir without maildirsize never gets one" {
	box q '50000S\n0 0\n'
	box none
	send q@y none@y
	SUBJECT=second BODY=3000 send q@y
	[ "$(x_count "$V/y/q")" -eq 2 ]
	[ ! -e "$V/y/none/maildirsize" ]
	# the file as Dovecot wrote it, then one line per delivery with its file's S=
	[ "$(head -2 "$V/y/q/maildirsize")" = "$(printf '50000S\n0 0')" ]
	[ "$(wc -l < "$V/y/q/maildirsize")" -eq 4 ]
	[ "$(mds_sum "$V/y/q")" = "$(s_sum "$V/y/q")" ]
	grep -qxE '[0-9]+ 1' <(tail -1 "$V/y/q/maildirsize")
}

@test "quota: over it during the data: LMTP refuses that recipient 452 4.2.2, SMTP the message" {
	box tight '1500S\n0 0\n'
	box other
	BODY=2000 send tight@y other@y
	[ "$(rcpt 1)" = '250 2.1.5 Ok' ]
	[ "$(final 1)" = '452 4.2.2 Mailbox full' ]
	[ -z "$(find "$V/y" -path "$V/y/*/new/*" -type f)" ] && [ -z "$(find "$V/y" -path "$V/y/*/tmp/*" -type f)" ]
	grep -q ' failed .*to=<tight@y> .*op=quota errno=EDQUOT reply=452 code=4.2.2$' "$T/err"
	grep -q ' failed .*to=<other@y> .*op=withdrawn errno=- reply=452 code=4.2.2$' "$T/err"
	ARGS=(-L "${ARGS[@]}")
	HELO=LHLO BODY=2000 send tight@y other@y
	[ "$(final 1)" = '452 4.2.2 Mailbox full' ]
	final 2 | grep -q '^250 2.0.0 .* delivered'
	[ -z "$(ls "$V/y/tight/new")" ] && [ "$(x_count "$V/y/other")" -eq 1 ]
	[ "$(wc -l < "$V/y/tight/maildirsize")" -eq 2 ]
	[ -z "$(find "$V/y" -path "$V/y/*/tmp/*" -type f)" ]
}

@test "quota: a maildirsize past 16 KiB, one that does not parse, or adds up below zero is not checked; a last line without LF is left out" {
	box big "$(printf '1000S\\n'; for i in $(seq 3000); do printf '5000 1\\n'; done)"
	[ "$(wc -c < "$V/y/big/maildirsize")" -gt 16384 ]
	box junk '1000S\nnot a number\n5000 1\n'
	box negative '1000S\n5000 1\n-9000 -2\n'
	box partial '1000S\n100 1\n5000 1'
	box limits '1000X\n5000 1\n'
	BODY=100 send big@y junk@y negative@y partial@y limits@y
	local i
	for i in 1 2 3 4 5; do [ "$(rcpt $i)" = '250 2.1.5 Ok' ] || { echo "rcpt $i: $(rcpt $i)"; return 1; }; done
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	# a file smtpd cannot add up still gets its line, for the reader's recount to replace
	grep -qE '^[0-9]+ 1$' <(tail -1 "$V/y/big/maildirsize")
	box over '1000S\n900 1\n200 1\n'
	send over@y
	[ "$(rcpt 1)" = '452 4.2.2 Mailbox full' ]
}

@test "quota: as root, a maildirsize that is a link, a FIFO, or a file of another owner is no quota: never followed, waited on, or written" {
	need_root
	box link
	box fifo
	box other
	printf '1S\n5 1\n' > "$T/root-file"
	ln -s "$T/root-file" "$V/y/link/maildirsize"
	mkfifo "$V/y/fifo/maildirsize"
	printf '1S\n5 1\n' > "$V/y/other/maildirsize"
	chown -R 2001:2001 "$V/y/link" "$V/y/fifo" "$V/y/other"
	chown 2002 "$V/y/other/maildirsize"
	RUNAS=(timeout 20)
	SIZE=100 send link@y fifo@y other@y
	[ "$XS" -eq 0 ]
	local i
	for i in 1 2 3; do [ "$(rcpt $i)" = '250 2.1.5 Ok' ] || { echo "rcpt $i: $(rcpt $i)"; return 1; }; done
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(cat "$T/root-file")" = "$(printf '1S\n5 1')" ]
	[ "$(cat "$V/y/other/maildirsize")" = "$(printf '1S\n5 1')" ]
}

@test "space: with SIZE=, a Maildir on a full file system is 452 4.3.1 at RCPT; the others of the message get it (SMTP)" {
	command -v unshare >/dev/null || skip "unshare is not installed"
	unshare -m true 2>/dev/null || skip "mount namespaces are not allowed here"
	box alice
	mkdir "$T/full"
	SIZE=1500 input bob@y alice@y
	run unshare -m sh -c '
		mount -t tmpfs -o size=64k tmpfs "$1" || exit 90
		mkdir -p "$1/bob/cur" "$1/bob/new" "$1/bob/tmp" && ln -s "$1/bob" "$2/y/bob"
		head -c 1048576 /dev/zero > "$1/fill" 2>/dev/null
		"$3" -h test.example -m "$2/%d/%u" < "$4/in" > "$4/out" 2> "$4/err"
		find "$1/bob" -type f > "$4/bob.files"
	' sh "$T/full" "$V" "$SMTPD" "$T"
	[ "$status" -ne 90 ] || skip "mounting a tmpfs is not allowed here"
	cat "$T/out" "$T/err"
	[ "$(rcpt 1)" = '452 4.3.1 Insufficient system storage' ]
	[ "$(rcpt 2)" = '250 2.1.5 Ok' ]
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	[ "$(x_count "$V/y/alice")" -eq 1 ]
	[ ! -s "$T/bob.files" ]
	grep -qE " refused .*to=<bob@y> reply=452 code=4\.3\.1 reason=insufficient-system-storage path=$V/y/bob errno=ENOSPC$" "$T/err"
}

# ---- -e: +detail folders ----

# folder MAILDIR NAME: the Maildir++ folder .NAME in MAILDIR, as Dovecot makes it
folder() { x_maildir "$1/.$2" && : > "$1/.$2/maildirfolder"; }

@test "-e: bob+lists@ goes into .lists/ of bob's Maildir; the detail as written, then lower-cased; %u stays bob" {
	box bob
	folder "$V/y/bob" lists
	folder "$V/y/bob" Work
	folder "$V/y/bob" lists.sub
	ARGS=(-e "${ARGS[@]}")
	send bob+lists@y
	[ "$(x_count "$V/y/bob/.lists")" -eq 1 ] && [ "$(x_count "$V/y/bob")" -eq 0 ]
	grep -q " delivered .* to=<bob+lists@y> file=$V/y/bob/.lists/new/" "$T/err"
	send Bob+LISTS@y
	[ "$(x_count "$V/y/bob/.lists")" -eq 2 ]
	send bob+Work@y
	[ "$(x_count "$V/y/bob/.Work")" -eq 1 ]
	send bob+work@y
	[ "$(x_count "$V/y/bob/.Work")" -eq 1 ] && [ "$(x_count "$V/y/bob")" -eq 1 ]
	send bob+lists.sub@y
	[ "$(x_count "$V/y/bob/.lists.sub")" -eq 1 ]
	# two recipients, one Maildir and one of its folders: a file in each
	send bob@y bob+lists@y
	[ "$(x_count "$V/y/bob")" -eq 2 ] && [ "$(x_count "$V/y/bob/.lists")" -eq 3 ]
	# without -e the folder is not looked at
	ARGS=(-m "$V/%d/%u")
	send bob+lists@y
	[ "$(x_count "$V/y/bob")" -eq 3 ]
}

@test "-e: no folder by that name, a detail that is no name, a folder that is a link, not a Maildir or another owner's: the Maildir itself" {
	box bob
	x_maildir "$T/elsewhere"
	ln -s "$T/elsewhere" "$V/y/bob/.linked"
	mkdir -p "$V/y/bob/.half/new"
	folder "$V/y/bob" '.x'
	ARGS=(-e "${ARGS[@]}")
	local d n=0
	for d in nothing '' .x linked half; do
		send "bob+$d@y"
		n=$((n + 1))
		[ "$(x_count "$V/y/bob")" -eq "$n" ] || { echo "detail '$d':"; cat "$T/out" "$T/err"; return 1; }
	done
	[ -z "$(find "$T/elsewhere" "$V/y/bob/.half" "$V/y/bob/..x" -path '*/new/*' -type f)" ]
	if [ "$(id -u)" -eq 0 ]; then
		folder "$V/y/bob" theirs
		chown -R 2002 "$V/y/bob/.theirs"
		send bob+theirs@y
		[ "$(x_count "$V/y/bob")" -eq $((n + 1)) ] && [ "$(x_count "$V/y/bob/.theirs")" -eq 0 ]
	fi
}

@test "-e: the probe (-b) names the folder; a folder's delivery counts in its Maildir's maildirsize, and its quota refuses it" {
	box bob '3000S\n0 0\n'
	folder "$V/y/bob" lists
	run "$SMTPD" -b -e -h test.example -m "$V/%d/%u" bob+lists@y bob+other@y
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "bob+lists@y: deliver to $V/y/bob/.lists" ]
	[ "${lines[1]}" = "bob+other@y: deliver to $V/y/bob" ]
	ARGS=(-e "${ARGS[@]}")
	send bob+lists@y
	[ "$(x_count "$V/y/bob/.lists")" -eq 1 ]
	[ ! -e "$V/y/bob/.lists/maildirsize" ]
	[ "$(mds_sum "$V/y/bob")" = "$(s_sum "$V/y/bob/.lists")" ]
	SIZE=2000 send bob+lists@y
	[ "$(rcpt 1)" = '452 4.2.2 Mailbox full' ]
	# without SIZE= the probe asks for one octet: there is none left once the file says so
	printf '3000 1\n' >> "$V/y/bob/maildirsize"
	run "$SMTPD" -b -e -h test.example -m "$V/%d/%u" bob+lists@y
	[ "$output" = "bob+lists@y: 452 4.2.2 Mailbox full: $V/y/bob/.lists" ]
}

@test "-e: with a catch-all, b+lists@ goes into its folder .lists/" {
	x_maildir "$T/c/Maildir"
	folder "$T/c/Maildir" lists
	ARGS=(-e -m "$T/c/Maildir")
	send b+lists@y b@y
	[ "$(x_count "$T/c/Maildir/.lists")" -eq 1 ] && [ "$(x_count "$T/c/Maildir")" -eq 1 ]
}

# ---- Dovecot ----

need_dovecot() {
	need_root
	[ -x "$IMAP_BIN" ] || skip "Dovecot's imap ($IMAP_BIN, package dovecot-imapd) not installed"
	id mail >/dev/null 2>&1 || skip "no user mail (Dovecot refuses to read mail as root)"
	mkdir -p "$T/home"
	chown mail:mail "$T/home"
	# smtpd runs as mail, as it would under a vmail launcher: every file is Dovecot's to read
	RUNAS=(setpriv --reuid=mail --regid=mail --clear-groups)
}

# imap MAILDIR COMMANDS: Dovecot's imap in PREAUTH mode on MAILDIR with the maildir quota
# backend (10 KiB, 100 messages); the tagged COMMANDS (a printf format), then LOGOUT.
imap() {
	printf 'mail_location = maildir:%s:INDEX=MEMORY\nstats_writer_socket_path =\nlog_path = /dev/stderr\nmail_plugins = quota\nprotocol imap {\n  mail_plugins = $mail_plugins imap_quota\n}\nplugin {\n  quota = maildir:User quota\n  quota_rule = *:storage=10K:messages=100\n}\n' \
		"$1" > "$T/imap.conf"
	printf -- "$2"'z LOGOUT\r\n' | timeout 30 setpriv --reuid=mail --regid=mail --clear-groups \
		env -i USER=tester HOME="$T/home" "$IMAP_BIN" -c "$T/imap.conf" 2>> "$T/dovecot.log" | tr -d '\r'
}

# quota_of MAILDIR: Dovecot's "STORAGE <KiB> 10 MESSAGE <n> 100"
quota_of() { imap "$1" 'a GETQUOTAROOT INBOX\r\n' | sed -n 's/^\* QUOTA "User quota" (\(.*\))$/\1/p'; }

@test "dovecot: smtpd fills a Maildir to its quota; Dovecot's figures agree with smtpd's count and with its own recount; the next message is refused at RCPT, another user in it gets it" {
	need_dovecot
	box bob
	box alice
	chown -R mail:mail "$V"
	# Dovecot writes bob's maildirsize with its limits
	[ "$(quota_of "$V/y/bob")" = 'STORAGE 0 10 MESSAGE 0 100' ]
	[ "$(head -1 "$V/y/bob/maildirsize")" = '10240S,100C' ]
	local i refused=0
	for i in $(seq 20); do
		SIZE=1600 BODY=1400 SUBJECT="fill $i" send bob@y
		if [ "$(rcpt 1)" = '452 4.2.2 Mailbox full' ]; then
			refused=1
			break
		fi
		grep -q '^250 2.0.0 .* delivered' "$T/out" || { cat "$T/out" "$T/err"; return 1; }
	done
	[ "$refused" -eq 1 ]
	local counted
	counted=$(s_sum "$V/y/bob")
	echo "# smtpd delivered $i messages and refused the next: $counted (octets, messages)" >&3
	[ "$(mds_sum "$V/y/bob")" = "$counted" ]
	local bytes=${counted% *} n=${counted#* }
	[ "$bytes" -le 10240 ]
	[ "$(quota_of "$V/y/bob")" = "STORAGE $(((bytes + 1023) / 1024)) 10 MESSAGE $n 100" ]
	# Dovecot's own recount, from the files alone, says the same
	cp -a "$V/y/bob" "$T/bob.copy"
	rm "$T/bob.copy/maildirsize"
	[ "$(quota_of "$T/bob.copy")" = "STORAGE $(((bytes + 1023) / 1024)) 10 MESSAGE $n 100" ]
	[ "$(mds_sum "$T/bob.copy")" = "$counted" ]
	# the next message, to bob and alice: bob is refused at RCPT, alice gets it
	SIZE=1600 BODY=1400 SUBJECT=both send bob@y alice@y
	[ "$(rcpt 1)" = '452 4.2.2 Mailbox full' ]
	[ "$(rcpt 2)" = '250 2.1.5 Ok' ]
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	imap "$V/y/alice" 'a SELECT INBOX\r\nb FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\n' > "$T/imap.out"
	grep -q '^\* 1 EXISTS$' "$T/imap.out"
	grep -q '^Subject: both$' "$T/imap.out"
	[ "$(s_sum "$V/y/bob")" = "$counted" ]
	! grep -E 'Error:|Panic:|Fatal:' "$T/dovecot.log" || false
}

@test "dovecot: -e: a folder Dovecot made gets bob+lists@'s message; Dovecot lists it and fetches it from there" {
	need_dovecot
	box bob
	chown -R mail:mail "$V"
	imap "$V/y/bob" 'a CREATE lists\r\n' | grep -q '^a OK'
	[ -d "$V/y/bob/.lists/tmp" ] && [ -d "$V/y/bob/.lists/new" ]
	ARGS=(-e "${ARGS[@]}")
	SUBJECT='for the list' send bob+lists@y
	grep -q '^250 2.0.0 .* delivered' "$T/out"
	imap "$V/y/bob" 'a LIST "" "*"\r\nb SELECT lists\r\nc FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\nd STATUS INBOX (MESSAGES)\r\n' > "$T/imap.out"
	cat "$T/imap.out"
	grep -qE '^\* LIST \([^)]*\) "\." lists$' "$T/imap.out"
	grep -q '^\* 1 EXISTS$' "$T/imap.out"
	grep -q '^Subject: for the list$' "$T/imap.out"
	grep -q '^\* STATUS INBOX (MESSAGES 0)$' "$T/imap.out"
	! grep -E 'Error:|Panic:|Fatal:' "$T/dovecot.log" || false
}
