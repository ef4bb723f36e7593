#!/bin/bash
# make demo: one transcript through ./smtpd as a client sends it, a line at a time: each line
# (C:), then the reply it got (S:); at the end smtpd's log lines (L:).
#   examples/demo.sh TRANSCRIPT SMTPD-OPTIONS...
# Within DATA the lines get no reply until the final dot. Every wait is 10 s at most.
set -u
transcript=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/in" "$dir/out"
./smtpd "$@" <"$dir/in" >"$dir/out" 2>"$dir/log" &
exec 3>"$dir/in" 4<"$dir/out"

# one reply, all its lines; its last line in $last
reply() {
	local line
	while IFS= read -r -t 10 line <&4; do
		line=${line%$'\r'}
		echo "S: $line"
		last=$line
		[ "${line:3:1}" = - ] || return 0
	done
	echo "(no reply within 10 s)"
	return 1
}

last=""
reply || exit 1
in_data=no
while IFS= read -r line; do
	echo "C: $line"
	printf '%s\n' "$line" >&3
	if [ "$in_data" = yes ]; then
		[ "$line" = . ] || continue
		in_data=no
	fi
	reply || exit 1
	case $line in [Dd][Aa][Tt][Aa]) [ "${last:0:3}" = 354 ] && in_data=yes ;; esac
done <"$transcript"
exec 3>&- 4<&-
wait
sed 's/^/L: /' "$dir/log"
