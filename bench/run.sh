#!/usr/bin/env bash
# bench/run.sh: performance figures for ./smtpd, next to bench/floor.c, the least a durable
# Maildir receiver can do. A benchmark, not a test: it prints Markdown on stdout (progress on
# stderr) and fails only when something breaks, such as a message missing from new/.
#
# Run from anywhere, after building ./smtpd (and ./smtpd-static, if wanted): `make bench`.
# As root on Debian it installs what it lacks (ucspi-tcp-ipv6, valgrind, strace, time, gcc,
# iproute2). The load generator is Postfix's smtp-source, taken out of Debian's postfix
# package with `apt-get download` and `dpkg -x` into bench/.cache/; the MTA is not installed.
#
# Environment: RUNS (runs per cell, median taken; default 3), BENCH_DIR (where the Maildirs
# are written; default bench/.cache, i.e. the disk the source tree is on), SMTPD and SMTPD_STATIC
# (default ./smtpd and ./smtpd-static, which is left out if missing),
# BIG (bytes of the largest message; default 1 GiB, scaled down if disk is short),
# QUICK=1 (one run of the smallest counts and a 64 MiB big message: to see that it works),
# MILTER_ONLY=1 (the milter cell alone: smtpd and Postfix with the same rspamd).
set -euo pipefail
export LC_ALL=C

top=$(cd "$(dirname "$0")/.." && pwd)
cache=$top/bench/.cache
SMTPD=${SMTPD:-$top/smtpd}
STATIC=${SMTPD_STATIC:-$top/smtpd-static}
RUNS=${RUNS:-3}
BIG=${BIG:-1073741824}
HOSTNAME_ARG=bench.example

# The cells: concurrency, messages per session, message size, total messages. Totals are
# multiples of concurrency x messages per session, so every session sends exactly its share.
CELLS=(
	"1 1 2048 400"
	"1 10 2048 600"
	"20 1 2048 800"
	"20 10 2048 1000"
	"1 1 1048576 120"
	"1 10 1048576 120"
	"20 1 1048576 400"
	"20 10 1048576 400"
)
# The milter cell: both servers with the same rspamd (tests/rspamd.bash) as their one milter.
MILTER_CELL="20 1 2048 600"
if [ "${QUICK:-}" = 1 ]; then
	RUNS=1 BIG=67108864
	MILTER_CELL="20 1 2048 20"
	for i in "${!CELLS[@]}"; do
		read -r c k size n <<<"${CELLS[$i]}"
		CELLS[i]="$c $k $size $((c * k))"
	done
fi

note() { printf 'bench: %s\n' "$*" >&2; }
die() {
	printf 'bench: FAILED: %s\n' "$*" >&2
	if [ -n "$T" ] && [ -s "$T/server.log" ]; then
		echo "bench: the servers' last log lines:" >&2
		tail -n 5 "$T/server.log" >&2
	fi
	exit 1
}

# ---------------------------------------------------------------- clean-up, even on Ctrl-C
T=
server_pids=() # tcpserver and the subshell around it, stopped by PID
client_pids=() # background smtp-source loops
daemon_pids=() # the milter cell's rspamd and its DNS stub

children_of() {
	local f=/proc/$1/task/$1/children
	if [ -r "$f" ]; then
		cat "$f" 2>/dev/null || true
	else
		pgrep -P "$1" 2>/dev/null || true
	fi
}

stop_pid() {
	local p=$1 i
	[ -n "$p" ] || return 0
	kill "$p" 2>/dev/null || return 0
	for i in $(seq 250); do
		kill -0 "$p" 2>/dev/null || return 0
		sleep 0.02
	done
	kill -9 "$p" 2>/dev/null || true
}

cleanup() {
	local p c c2
	trap - EXIT INT TERM
	for p in "${client_pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${server_pids[@]}"; do
		for c in $(children_of "$p"); do
			for c2 in $(children_of "$c"); do kill "$c2" 2>/dev/null || true; done
		done
	done
	for p in "${server_pids[@]}" "${daemon_pids[@]}"; do stop_pid "$p"; done
	wait 2>/dev/null || true
	[ -z "$T" ] || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- what it needs
apt_get() {
	DEBIAN_FRONTEND=noninteractive apt-get "$@" -o DPkg::Lock::Timeout=600 >&2 ||
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
			DEBIAN_FRONTEND=noninteractive apt-get "$@" -o DPkg::Lock::Timeout=600 >&2; }
}

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

need=()
command -v tcpserver >/dev/null || need+=(ucspi-tcp-ipv6)
command -v valgrind >/dev/null || need+=(valgrind)
command -v strace >/dev/null || need+=(strace)
[ -x /usr/bin/time ] || need+=(time)
command -v ss >/dev/null || need+=(iproute2)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v strip >/dev/null || need+=(binutils)

mkdir -p "$cache"
pf=$cache/postfix
SOURCE=$pf/usr/sbin/smtp-source
if [ ! -x "$SOURCE" ]; then
	[ "$(id -u)" = 0 ] || die "smtp-source is missing: run as root once, so that it can be fetched"
	note "fetching Postfix's smtp-source (apt-get download postfix; the MTA is not installed)"
	rm -rf "$pf" "$cache"/postfix_*.deb
	(cd "$cache" && apt_get download -q -o APT::Sandbox::User=root postfix) || die "apt-get download postfix"
	dpkg -x "$cache"/postfix_*.deb "$pf"
	[ -x "$SOURCE" ] || die "no usr/sbin/smtp-source in the postfix package"
fi
debs=("$cache"/postfix_*.deb)
deb=${debs[0]}
if [ -e "$deb" ]; then
	# the shared libraries that smtp-source and Postfix's own libraries link against
	for p in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep '^lib'); do
		installed "$p" || need+=("$p")
	done
fi
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing: ${need[*]} (apt-get install ${need[*]})"
	note "installing ${need[*]}"
	apt_get install -y -q --no-install-recommends "${need[@]}" || die "apt-get install ${need[*]}"
fi
smtp_source() { LD_LIBRARY_PATH=$pf/usr/lib/postfix "$SOURCE" "$@"; }
missing=$(LD_LIBRARY_PATH=$pf/usr/lib/postfix ldd "$SOURCE" | grep 'not found' || true)
[ -z "$missing" ] || die "smtp-source lacks shared libraries: $missing"

[ -x "$SMTPD" ] || die "no $SMTPD: build it first (make)"
have_static=false
[ -x "$STATIC" ] && have_static=true

mkdir -p "${BENCH_DIR:-$cache}"
T=$(mktemp -d "${BENCH_DIR:-$cache}/run.XXXXXX")
FLOOR=$T/floor
GEN=$T/gen
cc -O2 -o "$FLOOR" "$top/bench/floor.c" || die "cc bench/floor.c"
cc -O2 -o "$GEN" "$top/bench/gen.c" || die "cc bench/gen.c"
FLOOR_STATIC=$T/floor-static
if $have_static; then # built the way the Makefile builds smtpd-static
	if command -v musl-gcc >/dev/null; then
		musl-gcc -static -Os -s -o "$FLOOR_STATIC" "$top/bench/floor.c"
	else
		cc -static -Os -s -o "$FLOOR_STATIC" "$top/bench/floor.c"
	fi || die "static bench/floor.c"
fi

# Postfix as a peer, from the same unpacked package: its own config, queue and data
# directories under $T, listening on 127.0.0.1, delivering every recipient into one Maildir
# with virtual(8). Nothing is installed, no user is made: mail_owner is Debian's "mail", the
# Maildir belongs to "nobody". Needs root; PEER=0 leaves it out.
# master.cf for one cell: smtpd on 127.0.0.1:PORT, the services virtual delivery needs
postfix_master() {
	cat >"$PFX/conf/master.cf" <<EOF
127.0.0.1:$1 inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
EOF
	[ ! -d "$PFX/conf-milter" ] || cp "$PFX/conf/master.cf" "$PFX/conf-milter/master.cf"
	rm -f "$PFX/queue/pid/master.pid"
}

have_postfix=false
if [ "${PEER:-1}" = 1 ] && [ "$(id -u)" = 0 ] && [ -x "$pf/usr/lib/postfix/sbin/master" ] &&
	getent passwd mail >/dev/null && getent group news >/dev/null && getent passwd nobody >/dev/null; then
	PFX=$T/postfix
	mkdir -p "$PFX/conf" "$PFX/queue" "$PFX/data" "$PFX/mail"
	chmod 711 "$T"
	chown mail "$PFX/data"
	chown nobody "$PFX/mail"
	cat >"$PFX/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PFX/queue
data_directory = $PFX/data
daemon_directory = $pf/usr/lib/postfix/sbin
command_directory = $pf/usr/sbin
shlib_directory = $pf/usr/lib/postfix
meta_directory = $pf/etc/postfix
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH=$pf/usr/lib/postfix
mail_owner = mail
setgid_group = news
maillog_file = /dev/stdout
myhostname = $HOSTNAME_ARG
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = $HOSTNAME_ARG
virtual_mailbox_base = $PFX/mail
virtual_mailbox_maps = static:Maildir/
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
virtual_minimum_uid = 1
virtual_mailbox_limit = 0
message_size_limit = 0
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
EOF
	postfix_master 25 # each cell writes its own
	if LD_LIBRARY_PATH=$pf/usr/lib/postfix "$pf/usr/sbin/postfix" -c "$PFX/conf" check >>"$T/server.log" 2>&1; then
		have_postfix=true
	else
		note "Postfix could not be set up (postfix check failed): left out"
	fi
fi

# ---------------------------------------------------------------- helpers
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
now() { echo "$EPOCHREALTIME"; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN {printf "%.*f", d, v}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else printf "-"}'; }

# Below the ephemeral range: a port that smtp-source's own connections hold cannot be bound.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % (ephemeral_low - 10000)))
		[ -z "$(ss -Hltn "sport = :$p")" ] && { echo "$p"; return; }
	done
}

# x_wait_listen: the test suite's wait for a LISTEN socket, without connecting to it
# shellcheck source=tests/pipe.bash
. "$top/tests/pipe.bash"
# rs_dns_start, rs_rspamd_start: the milter cell's rspamd, as the tests start it
# shellcheck source=tests/rspamd.bash
. "$top/tests/rspamd.bash"

# A fresh, empty Maildir (floor needs one; smtpd would create it).
fresh_maildir() {
	rm -rf "$1"
	mkdir -p "$1/tmp" "$1/new" "$1/cur"
}

# The server's command line for a Maildir: prog_cmd NAME MAILDIR [MAX_SIZE]
prog_cmd() {
	local size=${3:+-s $3 }
	case $1 in
	smtpd) echo "$SMTPD -h $HOSTNAME_ARG $size-m $2" ;;
	smtpd-static) echo "$STATIC -h $HOSTNAME_ARG $size-m $2" ;;
	smtpd-milter) echo "$SMTPD -h $HOSTNAME_ARG $size-m $2 -M inet:127.0.0.1:$RSPAMD_PORT" ;;
	floor) echo "$FLOOR $2" ;;
	floor-static) echo "$FLOOR_STATIC $2" ;;
	esac
}

# Checks that new/ holds exactly N messages and tmp/ nothing.
check_delivered() { # name maildir n
	local got stray
	got=$(find "$2/new" -type f | wc -l)
	stray=$(find "$2/tmp" -type f | wc -l)
	[ "$got" -eq "$3" ] || die "$1: $got of $3 messages in new/"
	[ "$stray" -eq 0 ] || die "$1: $stray stray files in tmp/"
	[ -z "${MUST_HAVE:-}" ] || [ "$3" -eq 0 ] || grep -q "^$MUST_HAVE" "$(find "$2/new" -type f | head -n 1)" ||
		die "$1: no $MUST_HAVE field in what was stored: the milter was not asked"
}

# One SMTP session's transcript on stdout: transcript MESSAGES BODY_BYTES (see bench/gen.c)
transcript() { "$GEN" "$1" "$2" "$HOSTNAME_ARG"; }

# ---------------------------------------------------------------- one throughput run
# run_cell NAME C K SIZE N -> "msgs_per_second cpu_ms_per_message" on stdout. Not to be run
# in a subshell: the servers it starts must be known to cleanup.
run_cell() {
	local name=$1 c=$2 k=$3 size=$4 n=$5 port md tpid tcp t0 t1 w j per fail=0 cpu conf=$PFX/conf
	md=$T/cell/Maildir
	fresh_maildir "$md"
	port=$(free_port)
	[ "$name" = postfix-milter ] && conf=$PFX/conf-milter name=postfix
	if [ "$name" = postfix ]; then
		md=$PFX/mail/Maildir
		rm -rf "$md"
		postfix_master "$port"
		(
			cd / && LD_LIBRARY_PATH=$pf/usr/lib/postfix MAIL_CONFIG=$conf \
				"$pf/usr/sbin/postfix" -c "$conf" start-fg 3>&- >>"$T/server.log" 2>&1 || true
			times >"$T/cpu"
		) &
		tpid=$!
		server_pids=("$tpid")
		x_wait_listen "$port" || die "postfix: nothing listening on port $port"
	else
	# The subshell's `times` gives the CPU time of its reaped children (in ms): tcpserver's, and
	# through it that of every session, since tcpserver reaps them.
	# shellcheck disable=SC2046
	(
		tcpserver -R -H -l0 -c 40 127.0.0.1 "$port" $(prog_cmd "$name" "$md") 3>&- 2>>"$T/server.log" || true
		times >"$T/cpu"
	) &
	tpid=$!
	server_pids=("$tpid")
	x_wait_listen "$port" || die "nothing listening on port $port"
	fi
	tcp=$(children_of "$tpid")
	tcp=${tcp%% *}
	[ -n "$tcp" ] || die "cannot find the server's PID"
	server_pids=("$tcp" "$tpid")

	local src=(-M "$HOSTNAME_ARG" -f "sender@$HOSTNAME_ARG" -t "rcpt@$HOSTNAME_ARG" -l "$size")
	t0=$(now)
	if [ "$k" -eq 1 ]; then
		smtp_source "${src[@]}" -s "$c" -m "$n" "127.0.0.1:$port" >&2 || fail=1
	else
		# c clients, each a row of sessions of exactly k messages
		per=$((n / (c * k)))
		client_pids=()
		for ((w = 0; w < c; w++)); do
			(for ((j = 0; j < per; j++)); do
				smtp_source "${src[@]}" -s 1 -m "$k" -d "127.0.0.1:$port" >&2 || exit 1
			done) &
			client_pids+=($!)
		done
		for w in "${client_pids[@]}"; do wait "$w" || fail=1; done
		client_pids=()
	fi
	# Postfix answers 250 once the message is safe in its queue: the time that counts is
	# when the last one is in new/
	if [ "$name" = postfix ]; then
		for _ in $(seq 12000); do
			[ "$(find "$md/new" -type f 2>/dev/null | wc -l)" -ge "$n" ] && break
			sleep 0.01
		done
	fi
	t1=$(now)
	[ "$fail" -eq 0 ] || die "$name: smtp-source failed (see above)"
	# the sessions' CPU time counts once tcpserver has reaped them
	for _ in $(seq 500); do
		[ "$name" != postfix ] || break
		[ -z "$(children_of "$tcp")" ] && break
		sleep 0.01
	done
	if [ "$name" = postfix ]; then # postfix stop waits until master and its children are gone
		LD_LIBRARY_PATH=$pf/usr/lib/postfix "$pf/usr/sbin/postfix" -c "$conf" stop >>"$T/server.log" 2>&1 ||
			kill "$tcp"
	else
		kill "$tcp"
	fi
	wait "$tpid" || true
	server_pids=()
	check_delivered "$name" "$md" "$n"
	cpu=$(tail -n 1 "$T/cpu" | awk '{for (i = 1; i <= NF; i++) {split($i, f, /[ms]/); s += f[1] * 60 + f[2]}; print s}')
	awk -v n="$n" -v t="$t0" -v u="$t1" -v cpu="$cpu" 'BEGIN {printf "%.3f %.4f\n", n / (u - t), cpu * 1000 / n}'
	rm -rf "$md"
}

human() { # bytes as KiB/MiB/GiB
	awk -v b="$1" 'BEGIN {
		if (b >= 1073741824 && b % 1073741824 == 0) printf "%d GiB", b / 1073741824;
		else if (b >= 1048576) printf "%g MiB", b / 1048576;
		else printf "%g KiB", b / 1024 }'
}

# ---------------------------------------------------------------- header
fs_type=$(findmnt -no FSTYPE -T "$T" 2>/dev/null || stat -f -c %T "$T")
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "## smtpd benchmark"
echo
echo "- $("$SMTPD" -V), $(date -u '+%Y-%m-%d'), Linux $(uname -r), ${cpu_model:-unknown CPU}, $(nproc) CPUs"
echo "- Maildirs on $fs_type ($(df -P "$T" | awk 'NR == 2 {print $1}')); load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- floor: bench/floor.c (cc -O2): greets, answers 250/354/221 without parsing, and stores"
echo "  each message exactly as durably as smtpd (tmp/ with O_EXCL, fsync, rename into new/,"
echo "  fsync new/), without dot-unstuffing or headers"
case $fs_type in tmpfs | ramfs) echo "- WARNING: fsync costs nothing on $fs_type: set BENCH_DIR to a directory on a disk" ;; esac
echo

# ---------------------------------------------------------------- with a milter
# smtpd (-M) and Postfix (smtpd_milters) with the same rspamd as their one milter, its proxy
# worker on loopback with a private configuration and a DNS stub that answers nothing, so that
# no lookup leaves the machine: what a filtering MX costs. Needs root, rspamd and dnsmasq.
milter_cell() {
	local c k size n p res
	read -r c k size n <<<"$MILTER_CELL"
	mkdir -p "$T/milter" && chmod 755 "$T/milter"
	RSPAMD_PORT=$(free_port)
	local dns_port
	dns_port=$(free_port)
	rs_dns_start "$T/milter" "$dns_port"
	daemon_pids+=("$(cat "$T/milter/dnsmasq.pid")")
	note "milter cell: starting rspamd (10-20 s)"
	rs_rspamd_start "$T/milter" "$RSPAMD_PORT" "$dns_port" || die "rspamd did not start"
	daemon_pids+=("$(cat "$T/milter/rspamd.pid")")
	mkdir -p "$PFX/conf-milter"
	{
		cat "$PFX/conf/main.cf"
		echo "smtpd_milters = inet:127.0.0.1:$RSPAMD_PORT"
		echo "milter_default_action = tempfail"
		echo "milter_protocol = 6"
	} >"$PFX/conf-milter/main.cf"
	cp "$PFX/conf/master.cf" "$PFX/conf-milter/master.cf"
	echo "### With a milter: rspamd, $n messages of $(human "$size"), $c sessions at once"
	echo
	echo "Both servers ask the same rspamd 3.4 (proxy worker, self_scan, a private configuration"
	echo "adding Authentication-Results and X-Spamd-Result; DNS answered by a stub that knows"
	echo "nothing). smtpd: \`-M inet:127.0.0.1:PORT\` under tcpserver, as above; Postfix:"
	echo "\`smtpd_milters\`. One run each, in alternation; CPU is the server side's, not rspamd's."
	echo
	echo "| program | msg/s | CPU ms/msg |"
	echo "| --- | ---: | ---: |"
	for p in smtpd-milter postfix-milter; do
		MUST_HAVE=X-Spamd-Result: run_cell "$p" "$c" "$k" "$size" "$n" >"$T/res"
		res=$(cat "$T/res")
		note "milter cell $p: $res (msg/s, CPU ms/msg)"
		echo "| $p | $(fmt "$(echo "$res" | cut -d' ' -f1)" 1) | $(fmt "$(echo "$res" | cut -d' ' -f2)" 3) |"
	done
	echo
	for p in "${daemon_pids[@]}"; do stop_pid "$p"; done
	daemon_pids=()
}

if command -v rspamd >/dev/null && command -v dnsmasq >/dev/null && $have_postfix; then
	milter_cell
else
	note "milter cell left out: it needs rspamd, dnsmasq and Postfix (root)"
fi
[ "${MILTER_ONLY:-}" != 1 ] || exit 0

# ---------------------------------------------------------------- throughput
avail_kib=$(df -Pk "$T" | awk 'NR == 2 {print $4}')
[ "$avail_kib" -gt $((600 * 1024)) ] || die "less than 600 MiB free under $T"

# the programs, each build next to its own floor: the same floor.c linked the same way
progs=(smtpd)
$have_static && progs+=(smtpd-static)
progs+=(floor)
$have_static && progs+=(floor-static)

# the throughput table has Postfix too
tprogs=("${progs[@]}")
$have_postfix && tprogs+=(postfix)

note "throughput: ${#CELLS[@]} cells x ${#tprogs[@]} programs x $RUNS runs"
echo "### Throughput: smtp-source over loopback, tcpserver, one process per session"
echo
echo "Median of $RUNS runs, the programs in alternation; every message counted in new/."
echo "\`tcpserver -R -H -l0 -c 40\` on 127.0.0.1 starts one server per connection. CPU is the"
echo "user+system time of the server side (tcpserver and the sessions it reaped) per message."
echo "Load: 1 message per session is \`smtp-source -s C -m N\`; 10 per session is C parallel"
echo "loops of \`smtp-source -s 1 -m 10 -d\`. smtp-source does not pipeline: it waits for each reply."
echo "smtpd/floor compares each build with the floor linked the same way (dynamic glibc; static)."
! $have_postfix || echo "Postfix: Debian's package unpacked, virtual(8) into a Maildir; its time ends when the last message is in new/."
echo
printf '| concurrency | msgs/session | size | messages |'
for p in "${tprogs[@]}"; do printf ' %s msg/s |' "$p"; done
printf ' smtpd/floor |'
$have_static && printf ' smtpd-static/floor-static | smtpd-static/floor |'
for p in "${tprogs[@]}"; do printf ' %s CPU ms/msg |' "$p"; done
printf '\n| ---: | ---: | ---: | ---: |'
for p in "${tprogs[@]}" x "${tprogs[@]}"; do printf ' ---: |'; done
$have_static && printf ' ---: | ---: |'
echo
declare -A rate cpu_ms
for cell in "${CELLS[@]}"; do
	read -r c k size n <<<"$cell"
	for p in "${tprogs[@]}"; do : >"$T/r.$p"; done
	for ((r = 1; r <= RUNS; r++)); do
		for prog in "${tprogs[@]}"; do
			run_cell "$prog" "$c" "$k" "$size" "$n" >"$T/res"
			res=$(cat "$T/res")
			note "c=$c k=$k size=$size n=$n run $r $prog: $res (msg/s, CPU ms/msg)"
			echo "$res" >>"$T/r.$prog"
		done
	done
	printf '| %s | %s | %s | %s |' "$c" "$k" "$(human "$size")" "$n"
	for p in "${tprogs[@]}"; do
		rate[$p]=$(awk '{print $1}' "$T/r.$p" | median)
		cpu_ms[$p]=$(awk '{print $2}' "$T/r.$p" | median)
		printf ' %s |' "$(fmt "${rate[$p]}" 1)"
	done
	printf ' %s |' "$(ratio "${rate[smtpd]}" "${rate[floor]}")"
	if $have_static; then
		printf ' %s | %s |' "$(ratio "${rate[smtpd-static]}" "${rate[floor-static]}")" \
			"$(ratio "${rate[smtpd-static]}" "${rate[floor]}")"
		# the issue's cell: 20 sessions at once, 2 KiB, kept for the summary
		[ "$c" = 20 ] && for p in "${tprogs[@]}"; do echo "$k $size ${rate[$p]}" >>"$T/sum.$p"; done
	fi
	for p in "${tprogs[@]}"; do printf ' %s |' "$(fmt "${cpu_ms[$p]}" 3)"; done
	echo
done
echo

# The head of a table with a column per program: table_head FIRST_COLUMN ITS_ALIGNMENT
table_head() {
	local p
	printf '| %s |' "$1"
	for p in "${progs[@]}"; do printf ' %s |' "$p"; done
	printf '\n| %s |' "$2"
	for p in "${progs[@]}"; do printf ' ---: |'; done
	echo
}

# ---------------------------------------------------------------- instructions

transcript 0 0 >"$T/none.txt"
transcript 1 2048 >"$T/one.txt"
transcript 10 2048 >"$T/ten.txt"

callgrind_ir() { # name transcript -> total instructions
	local md=$T/cg/Maildir out=$T/cg.out
	fresh_maildir "$md"
	rm -f "$out"
	# shellcheck disable=SC2046
	valgrind --tool=callgrind -q --callgrind-out-file="$out" $(prog_cmd "$1" "$md") \
		<"$2" >"$T/cg.reply" 2>>"$T/server.log" || die "$1 under valgrind failed"
	check_delivered "$1" "$md" "$3"
	awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

note "instruction counts (callgrind)"
echo "### Instructions (valgrind --tool=callgrind, whole process from exec to exit)"
echo
echo "One session piped in: EHLO, then per message MAIL, RCPT, DATA and 2 KiB of text, then QUIT."
echo
echo "| program | session without a message | 1-message session | 1-message / its floor's | each further message (from a 10-message session) |"
echo "| --- | ---: | ---: | ---: | ---: |"
declare -A none_ir one_ir ten_ir
for p in "${progs[@]}"; do
	none_ir[$p]=$(callgrind_ir "$p" "$T/none.txt" 0)
	one_ir[$p]=$(callgrind_ir "$p" "$T/one.txt" 1)
	ten_ir[$p]=$(callgrind_ir "$p" "$T/ten.txt" 10)
done
for p in "${progs[@]}"; do
	case $p in
	smtpd) vs=$(ratio "${one_ir[$p]}" "${one_ir[floor]}") ;;
	smtpd-static) vs=$(ratio "${one_ir[$p]}" "${one_ir[floor-static]}") ;;
	*) vs="-" ;;
	esac
	each=$(awk -v a="${one_ir[$p]}" -v b="${ten_ir[$p]}" 'BEGIN {printf "%d", (b - a) / 9}')
	echo "| $p | ${none_ir[$p]} | ${one_ir[$p]} | $vs | $each |"
done
echo

# ---------------------------------------------------------------- memory and the data path
avail_kib=$(df -Pk "$T" | awk 'NR == 2 {print $4}')
big=$BIG
if [ $((avail_kib * 1024)) -lt $((big + 512 * 1048576)) ]; then
	big=$(((avail_kib * 1024 - 512 * 1048576) / 2 / 1048576 * 1048576))
	[ "$big" -ge 67108864 ] || die "too little space under $T for the big message"
	note "only $((avail_kib / 1024)) MiB free: the big message is $(human "$big") instead of $(human "$BIG")"
fi

pipe_run() { # name bytes -> "seconds peak_rss_kib cpu_seconds"; one message through a pipe
	local md=$T/pipe/Maildir t0 t1
	fresh_maildir "$md"
	t0=$(now)
	# shellcheck disable=SC2046
	transcript 1 "$2" | /usr/bin/time -f '%M %U %S' -o "$T/rss" $(prog_cmd "$1" "$md" $(($2 + 4096))) \
		>"$T/pipe.reply" 2>>"$T/server.log" || die "$1: exit status $? for a $(human "$2") message"
	t1=$(now)
	check_delivered "$1" "$md" 1
	awk -v t="$t0" -v u="$t1" -v m="$(tail -n 1 "$T/rss")" 'BEGIN {split(m, r, " "); printf "%.3f %s %.2f\n", u - t, r[1], r[2] + r[3]}'
	rm -rf "$md"
}

cat_run() { # bytes -> "seconds - cpu_seconds" for the same bytes through cat into a file, then fsync
	local f=$T/cat.out t0 t1
	rm -f "$f"
	t0=$(now)
	transcript 1 "$1" | /usr/bin/time -f '%U %S' -o "$T/rss" cat >"$f"
	sync "$f"
	t1=$(now)
	rm -f "$f"
	awk -v t="$t0" -v u="$t1" -v m="$(tail -n 1 "$T/rss")" 'BEGIN {split(m, r, " "); printf "%.3f - %.2f\n", u - t, r[1] + r[2]}'
}

note "peak RSS and the data path ($(human "$big"))"
: >"$T/big.smtpd"
: >"$T/big.floor"
: >"$T/big.cat"
for ((r = 1; r <= RUNS; r++)); do
	pipe_run smtpd "$big" >>"$T/big.smtpd"
	pipe_run floor "$big" >>"$T/big.floor"
	cat_run "$big" >>"$T/big.cat"
	note "data path run $r: smtpd $(tail -n 1 "$T/big.smtpd" | cut -d' ' -f1) s," \
		"floor $(tail -n 1 "$T/big.floor" | cut -d' ' -f1) s, cat+fsync $(tail -n 1 "$T/big.cat" | cut -d' ' -f1) s"
done

echo "### Peak memory (maximum RSS, /usr/bin/time -f %M), one message through a pipe"
echo
table_head message ---:
for size in 1024 52428800 "$big"; do
	printf '| %s |' "$(human "$size")"
	for p in "${progs[@]}"; do
		if [ -s "$T/big.$p" ] && [ "$size" = "$big" ]; then
			rss=$(awk '{print $2}' "$T/big.$p" | sort -g | tail -n 1)
		else
			rss=$(pipe_run "$p" "$size" | awk '{print $2}')
		fi
		printf ' %s KiB |' "$rss"
	done
	echo
done
echo

mbps() { awk -v b="$big" -v s="$1" 'BEGIN {printf "%.0f", b / s / 1e6}'; }
col() { awk -v i="$2" '{print $i}' "$T/big.$1" | median; } # writer, column
smtpd_s=$(col smtpd 1) smtpd_cpu=$(col smtpd 3)
floor_s=$(col floor 1) floor_cpu=$(col floor 3)
cat_s=$(col cat 1) cat_cpu=$(col cat 3)
echo "### Data path: one $(human "$big") message through a pipe, median of $RUNS"
echo
echo "The same bytes (a whole SMTP session, from bench/gen.c) go to each writer. CPU is the"
echo "writer's own user+system time (for cat, without the sync)."
echo
echo "| writer | seconds | MB/s | time / cat's | CPU seconds |"
echo "| --- | ---: | ---: | ---: | ---: |"
echo "| smtpd -m DIR (decodes DATA; tmp/, fsync, new/) | $(fmt "$smtpd_s" 2) | $(mbps "$smtpd_s") | $(ratio "$smtpd_s" "$cat_s") | $smtpd_cpu |"
echo "| floor (stores DATA as received; tmp/, fsync, new/) | $(fmt "$floor_s" 2) | $(mbps "$floor_s") | $(ratio "$floor_s" "$cat_s") | $floor_cpu |"
echo "| cat > file; sync file | $(fmt "$cat_s" 2) | $(mbps "$cat_s") | 1.00 | $cat_cpu |"
echo

# ---------------------------------------------------------------- system calls
note "system calls (strace -c -f)"
for p in "${progs[@]}"; do
	md=$T/st/Maildir
	fresh_maildir "$md"
	# shellcheck disable=SC2046
	strace -c -f -o "$T/strace.$p" $(prog_cmd "$p" "$md") <"$T/ten.txt" >/dev/null 2>>"$T/server.log" ||
		die "$p under strace failed"
	check_delivered "$p" "$md" 10
	# "calls name" per line, "calls total" last
	awk '/^-+ / {sep++; next} sep >= 1 && NF >= 5 {print $4, $NF}' "$T/strace.$p" >"$T/calls.$p"
done
echo "### System calls: one session, 10 pipelined 2 KiB messages (strace -c -f, calls)"
echo
table_head syscall ---
# every syscall any of them made, by smtpd's count, then the total
cat "$T"/calls.* | awk '$2 != "total" {print $2}' | sort -u >"$T/names"
while read -r name; do
	printf '%s' "$name"
	for p in "${progs[@]}"; do
		printf ' %s' "$(awk -v n="$name" '$2 == n {print $1; f = 1} END {if (!f) print 0}' "$T/calls.$p")"
	done
	echo
done <"$T/names" | sort -k2,2nr -k1,1 | while read -r name rest; do
	printf '| %s |' "$name"
	for v in $rest; do printf ' %s |' "$v"; done
	echo
done
printf '| **total** |'
for p in "${progs[@]}"; do printf ' **%s** |' "$(awk '$2 == "total" {print $1}' "$T/calls.$p")"; done
echo
echo

# ---------------------------------------------------------------- start-up
# From exec to the greeting: the system calls strace sees up to the one that writes "220 ",
# and the minor page faults (getrusage) of a session whose client closes at once, which does
# little more after the greeting than exit.
note "start-up: system calls and page faults to the greeting"
declare -A sys_greet faults
for p in "${progs[@]}"; do
	md=$T/su/Maildir
	fresh_maildir "$md"
	# shellcheck disable=SC2046
	strace -o "$T/su.$p" $(prog_cmd "$p" "$md") </dev/null >/dev/null 2>>"$T/server.log" || true
	sys_greet[$p]=$(awk '{n++} /^(write|sendto)\([0-9]+, "220 / {print n; exit}' "$T/su.$p")
	for ((r = 0; r < 20; r++)); do
		# shellcheck disable=SC2046
		/usr/bin/time -f %R -o "$T/pf" $(prog_cmd "$p" "$md") </dev/null >/dev/null 2>>"$T/server.log" || true
		tail -n 1 "$T/pf"
	done | median >"$T/pf.med"
	faults[$p]=$(cat "$T/pf.med")
done
echo "### Start-up: from exec to the greeting"
echo
echo "System calls: strace, from execve to the write of \"220 \" (both counted). Minor page faults:"
echo "median of 20 sessions that end at the greeting (stdin /dev/null), /usr/bin/time -f %R."
echo "Instructions: the session without a message, from the table above."
echo
echo "| program | system calls to the greeting | minor page faults | instructions |"
echo "| --- | ---: | ---: | ---: |"
for p in "${progs[@]}"; do
	echo "| $p | ${sys_greet[$p]} | ${faults[$p]} | ${none_ir[$p]} |"
done
echo

# ---------------------------------------------------------------- summary
# The issue's table: 20 sessions at once, 2 KiB; msg/s as a multiple of each floor.
if $have_static; then
	echo "### Summary: c = 20, msg/s as a multiple of the dynamic floor (of the static floor)"
	echo
	echo "| cell | smtpd (glibc, dynamic) | smtpd-static | floor-static | Postfix |"
	echo "| --- | ---: | ---: | ---: | ---: |"
	for cell in "1 2048" "10 2048" "1 1048576"; do
		read -r k size <<<"$cell"
		get() { if [ -f "$T/sum.$1" ]; then awk -v k="$k" -v s="$size" '$1 == k && $2 == s {print $3}' "$T/sum.$1"; else echo 0; fi; }
		f=$(get floor) fs=$(get floor-static)
		echo "| $k msg/session, $(human "$size") | $(ratio "$(get smtpd)" "$f") | $(ratio "$(get smtpd-static)" "$f") ($(ratio "$(get smtpd-static)" "$fs")) | $(ratio "$fs" "$f") | $(ratio "$(get postfix)" "$f") |"
	done
	echo
	echo "| program | instructions, 1-message session | each further message | system calls to the greeting | minor page faults |"
	echo "| --- | ---: | ---: | ---: | ---: |"
	for p in "${progs[@]}"; do
		each=$(awk -v a="${one_ir[$p]}" -v b="${ten_ir[$p]}" 'BEGIN {printf "%d", (b - a) / 9}')
		echo "| $p | ${one_ir[$p]} | $each | ${sys_greet[$p]} | ${faults[$p]} |"
	done
	echo
fi

# ---------------------------------------------------------------- sizes
echo "### Binary sizes"
echo
echo "| file | bytes | stripped |"
echo "| --- | ---: | ---: |"
for p in "${progs[@]}"; do
	case $p in
	smtpd) f=$SMTPD ;;
	smtpd-static) f=$STATIC ;;
	floor) f=$FLOOR ;;
	floor-static) f=$FLOOR_STATIC ;;
	esac
	strip -o "$T/stripped" "$f"
	echo "| $p$(case $p in *-static) echo " (static)" ;; esac) | $(stat -c %s "$f") | $(stat -c %s "$T/stripped") |"
done
echo
note "done"
