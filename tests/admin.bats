#!/usr/bin/env bats
# What an admin meets before any mail flows: option errors that name the option and what it
# accepts, and the -b probe that says where an address would go without SMTP.

load pipe

setup() {
	T=$(mktemp -d)
	V=$T/vhosts
	x_maildir "$V/x.example/bob"
}

teardown() {
	rm -rf "$T"
}

# opt_error "ARGS" "FIRST LINE": exit 64, nothing on stdout, that line then the usage line
opt_error() {
	local rc=0
	# shellcheck disable=SC2086
	eval "\"\$(x_smtpd)\" $1" </dev/null >"$T/out" 2>"$T/err" || rc=$?
	x_eq "$rc" 64 "exit status of '$1'"
	x_eq "$(wc -c <"$T/out")" 0 "stdout of '$1'"
	x_eq "$(sed -n 1p "$T/err")" "$2" "first line of '$1'"
	x_eq "$(wc -l <"$T/err")" 2 "lines on stderr of '$1'"
	sed -n 2p "$T/err" | grep -q '^usage: smtpd ' || { echo "no usage line: $(cat "$T/err")"; false; }
}

@test "options: an error names the option, its value and what it accepts, then the usage line" {
	opt_error "-r 1001" "smtpd: -r 1001: out of range (1 to 1000)"
	opt_error "-r 0" "smtpd: -r 0: out of range (1 to 1000)"
	opt_error "-r x1" "smtpd: -r x1: not a decimal number (1 to 1000)"
	opt_error "-r ''" "smtpd: -r '': empty value (1 to 1000)"
	opt_error "-t 86401" "smtpd: -t 86401: out of range (1 to 86400)"
	opt_error "-T 0" "smtpd: -T 0: out of range (1 to 86400)"
	opt_error "-s -1" "smtpd: -s -1: not a decimal number (1 to 9223372036854775807)"
	opt_error "-s 99999999999999999999" "smtpd: -s 99999999999999999999: out of range (1 to 9223372036854775807)"
	opt_error "-h bad/name" "smtpd: -h bad/name: blank, control byte, non-ASCII or / in host name"
	opt_error "-h ''" "smtpd: -h '': host name length out of range (1 to 255)"
	opt_error "-m ''" "smtpd: -m '': template length out of range (1 to 1023)"
	opt_error "-x" "smtpd: -x: unknown option"
	opt_error "-m" "smtpd: -m: needs a value"
	opt_error "extra" "smtpd: extra: unexpected argument (only -b takes addresses)"
	opt_error "-b" "smtpd: -b: needs at least one address after the options"
}

# probe ARGS...: runs smtpd -b; stdout -> $T/out, exit status -> $XS
probe() {
	XS=0
	"$(x_smtpd)" -b -h t.example "$@" </dev/null >"$T/out" 2>"$T/err" || XS=$?
	cat "$T/out"
}

@test "-b: the Maildir for each address, or the reply RCPT would get and why; exit 67 if any fails" {
	mkdir -p "$V/x.example/eve/cur" "$V/x.example/eve/tmp"
	ln -s "$T" "$V/x.example/eve/new"
	probe -m "$V/%d/%u" bob@x.example '<Bob+tag@X.EXAMPLE>'
	x_eq "$XS" 0 "exit status when all deliver"
	x_eq "$(cat "$T/out")" "bob@x.example: deliver to $V/x.example/bob
<Bob+tag@X.EXAMPLE>: deliver to $V/x.example/bob" "output"
	before=$(find "$V" | wc -l)
	probe -m "$V/%d/%u" bob@x.example nobody@x.example eve@x.example c@no.example '../x@x.example' 'a b@x.example' postmaster
	x_eq "$XS" 67 "exit status when one fails"
	x_eq "$(cat "$T/out")" "bob@x.example: deliver to $V/x.example/bob
nobody@x.example: 550 5.1.1 No such user: $V/x.example/nobody: directory-missing
eve@x.example: 550 5.1.1 No such user: $V/x.example/eve: new-is-a-symlink
c@no.example: 550 5.7.1 Relaying denied: $V/no.example
../x@x.example: 501 5.1.3 Bad recipient address syntax
a b@x.example: 501 5.1.3 Bad recipient address syntax
postmaster: 550 5.7.1 Relaying denied: $V/t.example" "output"
	x_eq "$(find "$V" | wc -l)" "$before" "entries in the store (nothing made)"
}

@test "-b: delivers nothing and makes nothing, not even a missing catch-all" {
	mkdir "$T/home"
	probe -m "$T/home/Maildir" a@x.example
	x_eq "$XS" 0 "exit status"
	x_eq "$(cat "$T/out")" "a@x.example: deliver to $T/home/Maildir (made by the first session)" "output"
	[ ! -e "$T/home/Maildir" ]
	probe -m "$T/nohome/Maildir" a@x.example
	x_eq "$XS" 75 "exit status with the store missing"
	x_eq "$(cat "$T/out")" "421 4.3.0 t.example Mail store unavailable, try again later" "output"
	[ ! -e "$T/nohome" ]
	probe -m "$V/x.example/bob" a@x.example
	x_eq "$(x_count "$V/x.example/bob")" 0 "messages"
	x_eq "$(find "$V/x.example/bob/tmp" -type f | wc -l)" 0 "files in tmp/"
}

# as_user CMD...: runs CMD as nobody when we are root (the launcher's user is not root)
as_user() {
	if [ "$(id -u)" -eq 0 ]; then
		setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"
	else
		"$@"
	fi
}

@test "-b: as the launcher's user, a tmp/ it cannot write is a 451 before any mail is lost" {
	[ "$(id -u)" -ne 0 ] || command -v setpriv >/dev/null || skip "needs setpriv to drop root"
	x_maildir "$V/x.example/ro"
	chmod 500 "$V/x.example/ro/tmp"
	[ "$(id -u)" -ne 0 ] || chown -R nobody "$T"
	XS=0
	as_user "$(x_smtpd)" -b -h t.example -m "$V/%d/%u" bob@x.example ro@x.example >"$T/out" || XS=$?
	cat "$T/out"
	x_eq "$XS" 67 "exit status"
	x_eq "$(sed -n 2p "$T/out")" "ro@x.example: 451 4.3.0 Local error in delivery: $V/x.example/ro: tmp-not-writable" "ro line"
	x_eq "$(sed -n 1p "$T/out")" "bob@x.example: deliver to $V/x.example/bob" "bob line"
}

@test "-b: as root, a tmp/ of another owner than its Maildir's is named" {
	[ "$(id -u)" -eq 0 ] || skip "needs root"
	x_maildir "$V/x.example/mixed"
	chown nobody "$V/x.example/mixed" "$V/x.example/mixed/new" "$V/x.example/mixed/cur"
	probe -m "$V/%d/%u" mixed@x.example
	x_eq "$XS" 67 "exit status"
	x_eq "$(cat "$T/out")" "mixed@x.example: 451 4.3.0 Local error in delivery: $V/x.example/mixed: tmp-wrong-owner" "output"
}

@test "options: -d, -M and -F values are checked before any SMTP" {
	opt_error "-d ''" "smtpd: -d '': a comma-separated list of domains, none empty or longer than 255 octets"
	opt_error "-d a.example,,b.example" "smtpd: -d a.example,,b.example: a comma-separated list of domains, none empty or longer than 255 octets"
	opt_error "-d 'a example'" "smtpd: -d a example: blank, control byte, / or @ in a domain"
	opt_error "-d u@a.example" "smtpd: -d u@a.example: blank, control byte, / or @ in a domain"
	opt_error "-M milter.sock" "smtpd: -M milter.sock: unix:/path or inet:host:port, port 1 to 65535"
	opt_error "-M unix:rel/path" "smtpd: -M unix:rel/path: unix: needs an absolute path of at most 107 octets"
	opt_error "-M inet:127.0.0.1" "smtpd: -M inet:127.0.0.1: unix:/path or inet:host:port, port 1 to 65535"
	opt_error "-M inet::25" "smtpd: -M inet::25: unix:/path or inet:host:port, port 1 to 65535"
	opt_error "-M inet:127.0.0.1:65536" "smtpd: -M inet:127.0.0.1:65536: unix:/path or inet:host:port, port 1 to 65535"
	opt_error "-M inet:h:0" "smtpd: -M inet:h:0: unix:/path or inet:host:port, port 1 to 65535"
	opt_error "-M unix:/a -M unix:/b -M unix:/c -M unix:/d -M unix:/e" "smtpd: -M unix:/e: at most 4 milters"
	opt_error "-F maybe" "smtpd: -F maybe: tempfail, accept or reject"
}

@test "--help: the usage line and one line per option on stdout, exit 0; every option is in it" {
	run "$(x_smtpd)" --help
	x_eq "$status" 0 "exit status"
	[ "${lines[0]:0:13}" = "usage: smtpd " ]
	local opt
	for opt in b d e F h L m M p r s t T V; do
		printf '%s\n' "$output" | grep -q "^  -$opt " || { echo "no line for -$opt"; false; }
		printf '%s\n' "${lines[0]}" | grep -q -- "-[A-Za-z]*$opt" || { echo "-$opt not in usage"; false; }
	done
}

@test "-d: a domain not listed is 550 5.7.1 whatever the template; case does not matter; <postmaster> passes" {
	x_maildir "$T/home/bob"
	x_maildir "$V/y.example/bob"
	x_maildir "$V/t.example/postmaster"
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@x.example>\r\nRCPT TO:<bob@y.example>\r\nRCPT TO:<Bob@X.Example>\r\nQUIT\r\n' >"$T/in"
	x_run -m "$V/%d/%u" -d X.EXAMPLE,z.example
	x_expect "220 test.example ESMTP smtpd" "250 test.example" "250 2.1.0 Ok" "250 2.1.5 Ok" \
		"550 5.7.1 Relaying denied" "250 2.1.5 Ok" "221 2.0.0 test.example closing"
	grep -q 'refused .* to=<bob@y.example> reply=550 code=5.7.1 reason=relaying-denied$' "$T/err"
	# a template without %d takes every domain; -d makes it take only the listed ones
	printf 'HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@anything.example>\r\nRCPT TO:<bob@x.example>\r\nRCPT TO:<postmaster>\r\nQUIT\r\n' >"$T/in"
	x_run -m "$T/home/%u" -d x.example
	x_expect "220 test.example ESMTP smtpd" "250 test.example" "250 2.1.0 Ok" \
		"550 5.7.1 Relaying denied" "250 2.1.5 Ok" "550 5.1.1 No such user" "221 2.0.0 test.example closing"
	x_run -m "$T/home/%u"
	x_expect "220 test.example ESMTP smtpd" "250 test.example" "250 2.1.0 Ok" \
		"250 2.1.5 Ok" "250 2.1.5 Ok" "550 5.1.1 No such user" "221 2.0.0 test.example closing"
	probe -m "$V/%d/%u" -d x.example bob@x.example bob@y.example
	x_eq "$XS" 67 "probe exit status"
	grep -qx 'bob@y.example: 550 5.7.1 Relaying denied' "$T/out"
	grep -qx "bob@x.example: deliver to $V/x.example/bob" "$T/out"
}

@test "options: POSIX utility syntax: clustered letters, attached values, --, and none after the first operand" {
	# -e and -b clustered, the value of -m attached; the operand ends the options
	probe_rc=0
	"$(x_smtpd)" -eb -ht.example "-m$V/%d/%u" bob@x.example -h other.example </dev/null >"$T/out" 2>"$T/err" || probe_rc=$?
	x_eq "$probe_rc" 67 "exit status (-h after an operand is an address, not an option)"
	grep -qx "bob@x.example: deliver to $V/x.example/bob" "$T/out"
	grep -qx -- '-h: 501 5.1.3 Bad recipient address syntax' "$T/out"
	# "--" ends the options: what follows is an operand even if it looks like one
	opt_error "-- -L" "smtpd: -L: unexpected argument (only -b takes addresses)"
	opt_error "-Lx" "smtpd: -x: unknown option"
	opt_error "-L -:" "smtpd: -:: unknown option"
}
