# rspamd (its proxy worker as a milter) and a dnsmasq DNS stub, each with a private
# configuration under a directory of their own, started in the background and never as the
# machine's services: for tests/rspamd.bats and bench/run.sh. Needs root (rspamd drops to
# _rspamd, dnsmasq to nobody) and x_free_port from tests/pipe.bash. Each PID goes into
# DIR/NAME.pid; stop them by it.

# rs_wait_port PORT PID NAME: until something listens on 127.0.0.1:PORT (60 s at most), or
# the process is gone
rs_wait_port() {
	local i
	for i in $(seq 600); do
		ss -Hltn "sport = :$1" | grep -q LISTEN && return 0
		kill -0 "$2" 2>/dev/null || break
		sleep 0.1
	done
	echo "$3 did not start" >&2
	return 1
}

# rs_dns_start DIR PORT [DNSMASQ-OPTION]...: dnsmasq on 127.0.0.1:PORT, answering only what the
# options say (--txt-record=...): in the foreground, not in its debug mode, which would serve
# TCP from the one process and stall rspamd's lookups
rs_dns_start() {
	local dir=$1 port=$2
	shift 2
	dnsmasq --keep-in-foreground --user=nobody --conf-file=/dev/null --port="$port" \
		--listen-address=127.0.0.1 --bind-interfaces --no-resolv "$@" 3>&- 2>"$dir/dnsmasq.log" &
	echo $! >"$dir/dnsmasq.pid"
}

# rs_rspamd_start DIR PORT DNS_PORT: rspamd's proxy worker as a milter on 127.0.0.1:PORT
# (self_scan), its DNS the stub; no greylisting (no redis here) and thresholds no plain
# message reaches, so that GTUBE alone refuses; Authentication-Results and X-Spamd-Result
# added, to clients on loopback too. Returns once it listens (10-20 s).
rs_rspamd_start() {
	local dir=$1/rspamd port=$2 dns=$3 normal controller
	normal=$(x_free_port) controller=$(x_free_port)
	mkdir -p "$dir/local.d" "$dir/db" "$dir/run"
	echo "bind_socket = \"127.0.0.1:$port\"; milter = yes; timeout = 120s; upstream \"local\" { default = yes; self_scan = yes; }" \
		>"$dir/local.d/worker-proxy.inc"
	echo "bind_socket = \"127.0.0.1:$normal\";" >"$dir/local.d/worker-normal.inc"
	echo "bind_socket = \"127.0.0.1:$controller\";" >"$dir/local.d/worker-controller.inc"
	echo "dns { nameserver = [\"127.0.0.1:$dns\"]; timeout = 1s; retransmits = 1; }" >"$dir/local.d/options.inc"
	echo "type = \"file\"; filename = \"$dir/rspamd.log\"; level = \"info\";" >"$dir/local.d/logging.inc"
	echo 'greylist = null; add_header = 100; rewrite_subject = 120; reject = 150;' >"$dir/local.d/actions.conf"
	echo 'use = ["authentication-results", "x-spamd-result"]; skip_local = false;' \
		>"$dir/local.d/milter_headers.conf"
	chown -R _rspamd:_rspamd "$dir"
	rspamd -f -u _rspamd -g _rspamd -c /etc/rspamd/rspamd.conf --var=LOCAL_CONFDIR="$dir" \
		--var=DBDIR="$dir/db" --var=RUNDIR="$dir/run" --var=LOGDIR="$dir" \
		3>&- >"$1/rspamd.out" 2>&1 &
	echo $! >"$1/rspamd.pid"
	rs_wait_port "$port" "$(cat "$1/rspamd.pid")" rspamd
}
