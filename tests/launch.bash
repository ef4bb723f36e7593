# Helpers for tests that start launchers (l_ prefix): free ports, waiting for a listener
# without connecting, stopping by PID, counting delivered files.

# a free TCP port (kernel-chosen on 127.0.0.1, then released)
l_free_port() {
	"${PY:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# stop one process by PID and wait until it is gone
l_stop_pid() {
	local p=$1 i
	[ -n "$p" ] || return 0
	kill "$p" 2>/dev/null || return 0
	for i in $(seq 250); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.02
	done
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
}

# stop the launcher whose PID is in FILE (if it was started) and the sessions it forked
l_stop_tree() {
	local p kids
	[ -f "$1" ] || return 0
	p=$(cat "$1")
	kids=$(pgrep -P "$p" 2>/dev/null || true)
	l_stop_pid "$p"
	for p in $kids; do l_stop_pid "$p"; done
}

# messages in a Maildir's new/
l_count() { find "$1/new" -type f | wc -l; }

# poll until FILE has at least N lines matching the extended regex, then print the count
l_wait_count() {
	local file=$1 re=$2 n=$3 i c=0
	for i in $(seq 250); do
		c=$(grep -cE -- "$re" "$file" 2>/dev/null || true)
		[ "${c:-0}" -ge "$n" ] && break
		sleep 0.02
	done
	echo "${c:-0}"
}

# assert two values are equal, with a readable message
l_eq() {
	if [ "$1" != "$2" ]; then
		echo "$3: expected '$2', got '$1'" >&2
		return 1
	fi
}

# checks the name of a delivered file and sets ID, SIZE (the S= value, checked against the
# file's real size) and PID (the P part of the id)
l_check_name() {
	local base re='^([0-9]+\.M[0-9]+P([0-9]+)Q[0-9]+)\.[^/]+,S=([0-9]+)$'
	base=$(basename "$1")
	if ! [[ $base =~ $re ]]; then
		echo "bad Maildir file name: $base" >&2
		return 1
	fi
	ID=${BASH_REMATCH[1]} PID=${BASH_REMATCH[2]} SIZE=${BASH_REMATCH[3]}
	l_eq "$(stat -c %s "$1")" "$SIZE" "size of $base"
}

# wait until something LISTENs on port $1 (optionally on address $2, as ss shows it:
# 127.0.0.2 or [::1]) without connecting: a connect would spawn a session
l_wait_listen() {
	local i
	for i in $(seq 250); do
		if [ -n "${2:-}" ]; then
			ss -Hltn "sport = :$1" | grep -qF " $2:$1 " && return 0
		else
			ss -Hltn "sport = :$1" | grep -q LISTEN && return 0
		fi
		sleep 0.02
	done
	echo "nothing listening on ${2:-*}:$1" >&2
	return 1
}
