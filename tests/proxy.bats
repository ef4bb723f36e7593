#!/usr/bin/env bats
# The PROXY protocol header (-p; HAProxy's proxy-protocol.txt, v1 text and v2 binary): the
# client address it carries goes into Received:, and a missing, malformed or late header ends
# the session with no greeting at all and exit status 1. Pipe mode with hand-made headers,
# and swaks --proxy-* over --pipe.

load pipe

GREETING='220 test.example ESMTP smtpd'

# the v2 signature, and the address blocks used below (printf formats)
SIG='\r\n\r\n\x00\r\nQUIT\n'
A4='\xc0\x00\x02\x07\xc6\x33\x64\x01\x0f\xa0\x00\x19' # 192.0.2.7 -> 198.51.100.1, 4000 -> 25
A6='\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x0f\xa0\x00\x19' # 2001:db8::7 -> 2001:db8::1

# one whole transaction, after the header
TXN='EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: p\r\n\r\nproxied\r\n.\r\nQUIT\r\n'

# the reply to EHLO
x_ehlo_lines() {
	printf '%s\n' '250-test.example' '250-PIPELINING' "250-SIZE ${1:-26214400}" '250-8BITMIME' \
		'250-ENHANCEDSTATUSCODES' '250-SMTPUTF8' '250-CHUNKING' '250 HELP'
}

# $T/in = header (printf format) + TXN; runs smtpd -p; the message must be delivered and its
# Received: line must be exactly $2
x_proxy_ok() {
	printf -- "$1" >"$T/in"
	printf -- "$TXN" >>"$T/in"
	x_run -p -m "$T/Maildir"
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_headers "$f" ESMTP
	x_eq "$(sed -n 2p "$f")" "$2" "Received: line"
	x_body "$f" 'Subject: p\n\nproxied\n'
}

# a bad or missing header (printf format $1, then TXN): no greeting, no reply at all,
# exit status 1, nothing delivered
x_proxy_bad() {
	printf -- "$1" >"$T/in"
	printf -- "$TXN" >>"$T/in"
	x_run -p -m "$T/Maildir"
	if [ -s "$T/out" ]; then
		echo "expected no output, got:" >&2
		cat -A "$T/out" >&2
		return 1
	fi
	x_eq "$XS" 1 "exit status"
	x_eq "$(x_count "$T/Maildir")" 0 "messages stored"
}

setup() {
	T=$(mktemp -d)
	unset TCPREMOTEIP REMOTE_ADDR REMOTE_HOST
	[ -x "$(x_smtpd)" ] || { echo "no smtpd binary at $(x_smtpd)" >&2; return 1; }
	mapfile -t EHLO < <(x_ehlo_lines)
}

teardown() {
	local p
	exec 4>&- 2>/dev/null || true
	if [ -f "$T/pids" ]; then
		while read -r p; do x_stop_pid "$p"; done <"$T/pids"
	fi
	local ok=0
	x_no_sanitizer_reports || ok=1
	rm -rf "$T"
	return $ok
}

# ---------------------------- v1, good ----------------------------

@test "PROXY v1 TCP4: Received: from x ([192.0.2.7])" {
	x_proxy_ok 'PROXY TCP4 192.0.2.7 198.51.100.1 4000 25\r\n' 'Received: from x ([192.0.2.7])'
}

@test "PROXY v1 TCP6: Received: from x ([IPv6:2001:db8::7])" {
	x_proxy_ok 'PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n' 'Received: from x ([IPv6:2001:db8::7])'
}

@test "PROXY v1 TCP6 with a v4-mapped source shows the IPv4 address" {
	x_proxy_ok 'PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 4000 25\r\n' 'Received: from x ([192.0.2.7])'
}

@test "PROXY v1 UNKNOWN: accepted, no address in pipe mode" {
	x_proxy_ok 'PROXY UNKNOWN\r\n' 'Received: from x'
}

@test "PROXY v1 UNKNOWN with addresses after it: accepted, the addresses ignored" {
	x_proxy_ok 'PROXY UNKNOWN 192.0.2.7 198.51.100.1 4000 25\r\n' 'Received: from x'
}

@test "PROXY v1: a line of exactly 107 octets (the maximum) is accepted" {
	local fill
	fill=$(printf '%091d' 0)
	x_proxy_ok "PROXY UNKNOWN ${fill}\\r\\n" 'Received: from x'
	x_eq "$(($(head -c 200 "$T/in" | head -n 1 | wc -c)))" 107 "header length"
}

@test "PROXY v1 TCP4: the header's address wins over REMOTE_ADDR from the launcher" {
	export REMOTE_ADDR=203.0.113.9
	x_proxy_ok 'PROXY TCP4 192.0.2.7 198.51.100.1 4000 25\r\n' 'Received: from x ([192.0.2.7])'
}

@test "PROXY v1 UNKNOWN keeps the launcher's address (REMOTE_ADDR)" {
	export REMOTE_ADDR=203.0.113.9
	x_proxy_ok 'PROXY UNKNOWN\r\n' 'Received: from x ([203.0.113.9])'
}

# ---------------------------- v2, good ----------------------------

@test "PROXY v2 TCP4: Received: from x ([192.0.2.7])" {
	x_proxy_ok "${SIG}"'\x21\x11\x00\x0c'"${A4}" 'Received: from x ([192.0.2.7])'
}

@test "PROXY v2 TCP4 with TLVs (AUTHORITY, NOOP) after the addresses" {
	x_proxy_ok "${SIG}"'\x21\x11\x00\x1c'"${A4}"'\x02\x00\x0amx.example\x04\x00\x00' \
		'Received: from x ([192.0.2.7])'
}

@test "PROXY v2 TCP6: Received: from x ([IPv6:2001:db8::7])" {
	x_proxy_ok "${SIG}"'\x21\x21\x00\x24'"${A6}" 'Received: from x ([IPv6:2001:db8::7])'
}

@test "PROXY v2 LOCAL: accepted, no address in pipe mode" {
	x_proxy_ok "${SIG}"'\x20\x00\x00\x00' 'Received: from x'
}

@test "PROXY v2 LOCAL with a TCP4 address block: the block is ignored" {
	x_proxy_ok "${SIG}"'\x20\x11\x00\x0c'"${A4}" 'Received: from x'
}

@test "PROXY v2 LOCAL keeps the launcher's address (REMOTE_ADDR)" {
	export REMOTE_ADDR=203.0.113.9
	x_proxy_ok "${SIG}"'\x20\x11\x00\x0c'"${A4}" 'Received: from x ([203.0.113.9])'
}

# ---------------------------- split over writes ----------------------------

@test "PROXY v1 header split over three writes still works" {
	XS=0
	{
		printf 'PRO'
		sleep 0.2
		printf 'XY TCP4 192.0.2.7 198.51'
		sleep 0.2
		printf '.100.1 4000 25\r'
		sleep 0.2
		printf "\\n$TXN"
	} | "$(x_smtpd)" -h test.example -p -m "$T/Maildir" >"$T/out" 2>"$T/err" || XS=$?
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_eq "$(sed -n 2p "$f")" 'Received: from x ([192.0.2.7])' "Received: line"
}

@test "PROXY v2 header split over four writes (inside the signature, the fixed part, the addresses)" {
	XS=0
	{
		printf '\r\n\r\n\x00'
		sleep 0.2
		printf '\r\nQUIT\n\x21\x11'
		sleep 0.2
		printf '\x00\x0c\xc0\x00\x02'
		sleep 0.2
		printf "\\x07\\xc6\\x33\\x64\\x01\\x0f\\xa0\\x00\\x19$TXN"
	} | "$(x_smtpd)" -h test.example -p -m "$T/Maildir" >"$T/out" 2>"$T/err" || XS=$?
	x_eq "$XS" 0 "exit status"
	x_expect "$GREETING" "${EHLO[@]}" '250 2.1.0 Ok' '250 2.1.5 Ok' \
		'354 End data with <CR><LF>.<CR><LF>' '250 2.0.0 <id> delivered' \
		'221 2.0.0 test.example closing'
	f=$(x_one "$T/Maildir")
	x_eq "$(sed -n 2p "$f")" 'Received: from x ([192.0.2.7])' "Received: line"
}

# ---------------------------- malformed ----------------------------

@test "PROXY: no header at all, just SMTP (EHLO x) -> no greeting, exit 1" {
	x_proxy_bad ''
}

@test "PROXY: garbage instead of a header -> no greeting, exit 1" {
	x_proxy_bad 'GET / HTTP/1.0\r\n\r\n'
}

@test "PROXY v1: a line ending in LF without CR -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4 192.0.2.7 198.51.100.1 4000 25\n'
}

@test "PROXY v1: a line over 107 octets -> no greeting, exit 1" {
	local fill
	fill=$(printf '%092d' 0)
	x_proxy_bad "PROXY UNKNOWN ${fill}\\r\\n"
}

@test "PROXY v1: no line end within 107 octets -> no greeting, exit 1" {
	local fill
	fill=$(printf '%0200d' 0)
	x_proxy_bad "PROXY TCP4 ${fill}"
}

@test "PROXY v1: a bad address (999.1.1.1) -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4 999.1.1.1 198.51.100.1 4000 25\r\n'
}

@test "PROXY v1: an IPv6 address in a TCP4 line -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4 2001:db8::7 198.51.100.1 4000 25\r\n'
}

@test "PROXY v1: port 65536 -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n'
}

@test "PROXY v1: a missing field (no destination port) -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4 192.0.2.7 198.51.100.1 4000\r\n'
}

@test "PROXY v1: an extra field after the destination port -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4 192.0.2.7 198.51.100.1 4000 25 26\r\n'
}

@test "PROXY v1: two spaces between fields -> no greeting, exit 1" {
	x_proxy_bad 'PROXY TCP4  192.0.2.7 198.51.100.1 4000 25\r\n'
}

@test "PROXY v1: a lower-case keyword or an unknown protocol (UDP4) -> no greeting, exit 1" {
	x_proxy_bad 'proxy TCP4 192.0.2.7 198.51.100.1 4000 25\r\n'
	x_proxy_bad 'PROXY UDP4 192.0.2.7 198.51.100.1 4000 25\r\n'
}

@test "PROXY v2: version 1 in the version/command byte -> no greeting, exit 1" {
	x_proxy_bad "${SIG}"'\x11\x11\x00\x0c'"${A4}"
}

@test "PROXY v2: command 0xF -> no greeting, exit 1" {
	x_proxy_bad "${SIG}"'\x2f\x11\x00\x0c'"${A4}"
}

@test "PROXY v2: family UDP over IPv4 (0x12) -> no greeting, exit 1" {
	x_proxy_bad "${SIG}"'\x21\x12\x00\x0c'"${A4}"
}

@test "PROXY v2: an address block shorter than TCP4 needs -> no greeting, exit 1" {
	x_proxy_bad "${SIG}"'\x21\x11\x00\x04\xc0\x00\x02\x07'
}

@test "PROXY v2: a broken signature -> no greeting, exit 1" {
	x_proxy_bad '\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c'"${A4}"
}

# ---------------------------- timeouts ----------------------------

@test "PROXY: -p -t 1 with nothing sent: exit 1 within about 2 s, stdout empty" {
	mkfifo "$T/fifo"
	exec 4<>"$T/fifo"
	local start end
	start=$(date +%s%N)
	XS=0
	"$(x_smtpd)" -h test.example -p -t 1 -m "$T/Maildir" <"$T/fifo" >"$T/out" 2>"$T/err" 3>&- || XS=$?
	end=$(date +%s%N)
	exec 4>&-
	x_eq "$XS" 1 "exit status"
	[ ! -s "$T/out" ] || { cat -A "$T/out" >&2; false; }
	ms=$(((end - start) / 1000000))
	echo "took ${ms} ms" >&2
	[ "$ms" -ge 900 ] && [ "$ms" -le 2500 ]
}

@test "PROXY: -p -t 1 with half a header and then silence: exit 1, stdout empty" {
	mkfifo "$T/fifo"
	exec 4<>"$T/fifo"
	printf 'PROXY TCP4 192.0.2.7 ' >&4
	local start end
	start=$(date +%s%N)
	XS=0
	"$(x_smtpd)" -h test.example -p -t 1 -m "$T/Maildir" <"$T/fifo" >"$T/out" 2>"$T/err" 3>&- || XS=$?
	end=$(date +%s%N)
	exec 4>&-
	x_eq "$XS" 1 "exit status"
	[ ! -s "$T/out" ] || { cat -A "$T/out" >&2; false; }
	ms=$(((end - start) / 1000000))
	echo "took ${ms} ms" >&2
	[ "$ms" -ge 900 ] && [ "$ms" -le 2500 ]
}

@test "PROXY: the client closes before the header is complete: exit 1, stdout empty" {
	printf 'PROXY TCP4 192.0.2.7 198.51.100.1' >"$T/in"
	x_run -p -m "$T/Maildir"
	x_eq "$XS" 1 "exit status"
	[ ! -s "$T/out" ]
}

# ---------------------------- swaks ----------------------------

# swaks --pipe with -p and the given --proxy-* options; $1 is the expected Received: line
x_swaks_proxy() {
	command -v swaks >/dev/null || skip "swaks not installed"
	local want=$1
	shift
	XS=0
	swaks --pipe "$(x_smtpd) -p -h test.example -m $T/Maildir" --ehlo client.example \
		--from a@x.example --to b@y.example --timeout 20 "$@" >"$T/swaks.out" 2>&1 || XS=$?
	cat "$T/swaks.out" >&2
	x_eq "$XS" 0 "swaks exit status"
	f=$(x_one "$T/Maildir")
	x_headers "$f" ESMTP
	x_eq "$(sed -n 2p "$f")" "$want" "Received: line"
}

@test "PROXY swaks --proxy-version 1 --proxy-family TCP4" {
	x_swaks_proxy 'Received: from client.example ([192.0.2.7])' --proxy-version 1 \
		--proxy-family TCP4 --proxy-source 192.0.2.7 --proxy-source-port 4000 \
		--proxy-dest 198.51.100.1 --proxy-dest-port 25
}

@test "PROXY swaks --proxy-version 1 --proxy-family TCP6" {
	x_swaks_proxy 'Received: from client.example ([IPv6:2001:db8::7])' --proxy-version 1 \
		--proxy-family TCP6 --proxy-source 2001:db8::7 --proxy-source-port 4000 \
		--proxy-dest 2001:db8::1 --proxy-dest-port 25
}

@test "PROXY swaks --proxy-version 2 --proxy-family AF_INET" {
	x_swaks_proxy 'Received: from client.example ([192.0.2.7])' --proxy-version 2 \
		--proxy-family AF_INET --proxy-source 192.0.2.7 --proxy-source-port 4000 \
		--proxy-dest 198.51.100.1 --proxy-dest-port 25
}

@test "PROXY swaks --proxy-version 2 --proxy-family AF_INET6" {
	x_swaks_proxy 'Received: from client.example ([IPv6:2001:db8::7])' --proxy-version 2 \
		--proxy-family AF_INET6 --proxy-source 2001:db8::7 --proxy-source-port 4000 \
		--proxy-dest 2001:db8::1 --proxy-dest-port 25
}

@test "PROXY swaks --proxy GARBAGE: the session ends before any greeting, nothing delivered" {
	command -v swaks >/dev/null || skip "swaks not installed"
	XS=0
	swaks --pipe "$(x_smtpd) -p -h test.example -m $T/Maildir" --ehlo client.example \
		--from a@x.example --to b@y.example --timeout 20 --proxy 'GARBAGE' >"$T/swaks.out" 2>&1 || XS=$?
	cat "$T/swaks.out" >&2
	[ "$XS" -ne 0 ]
	! grep -q '220 test.example' "$T/swaks.out" || false
	x_eq "$(x_count "$T/Maildir")" 0 "messages stored"
}
