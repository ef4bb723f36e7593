/* proxy.c: the PROXY protocol header that a load balancer sends before the client's first
 * byte (HAProxy's proxy-protocol.txt, versions 1 and 2). A pure parser over what has been read
 * so far: session.c reads, this file decides. */
#define _POSIX_C_SOURCE 200809L
#include "smtp.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char proxy_v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
						0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
enum { PROXY_V1_MAX = 107, PROXY_V2_HEAD = 16 };

/* "::ffff:192.0.2.1" sent as IPv6 is shown as the IPv4 it is. */
static void proxy_addr_text(int family, const unsigned char *a, char *out, size_t size)
{
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	char text[INET6_ADDRSTRLEN];

	if (family == AF_INET6 && memcmp(a, mapped, sizeof mapped) == 0) {
		family = AF_INET;
		a += sizeof mapped;
	}
	if (inet_ntop(family, a, text, sizeof text) != NULL)
		text_copy(out, size, text);
}

/* One v1 port: 1 to 5 digits, at most 65535. */
static bool proxy_port_ok(const char *p)
{
	size_t len = strlen(p);
	return len >= 1 && len <= 5 && strspn(p, "0123456789") == len && atol(p) <= 65535;
}

/* Splits at single spaces, as the specification writes them; an empty field is an error. */
static size_t split_fields(char *line, char **field, size_t max)
{
	size_t n = 0;

	for (char *p = line;; p++) {
		if (n == max)
			return max + 1;
		field[n++] = p;
		p = strchr(p, ' ');
		if (p == NULL)
			return n;
		*p = '\0';
		if (p == field[n - 1])
			return max + 1;
	}
}

/* "PROXY TCP4 src dst sport dport", "PROXY TCP6 ...", or "PROXY UNKNOWN ...". */
static bool proxy_v1(char *line, char *out, size_t size)
{
	char *field[6];
	unsigned char addr[16], dst[16];

	if (strncmp(line, "PROXY UNKNOWN", 13) == 0 && (line[13] == '\0' || line[13] == ' '))
		return true;
	if (split_fields(line, field, 6) != 6 || strcmp(field[0], "PROXY") != 0)
		return false;
	int family = strcmp(field[1], "TCP4") == 0   ? AF_INET
		     : strcmp(field[1], "TCP6") == 0 ? AF_INET6
						     : -1;
	if (family < 0 || inet_pton(family, field[2], addr) != 1 ||
	    inet_pton(family, field[3], dst) != 1 || !proxy_port_ok(field[4]) ||
	    !proxy_port_ok(field[5]))
		return false;
	proxy_addr_text(family, addr, out, size);
	return true;
}

static bool proxy_v2(const unsigned char *h, size_t body_len, char *out, size_t size)
{
	unsigned version = h[12] >> 4, command = h[12] & 0x0f, family = h[13];

	if (version != 2 || command > 1)
		return false;
	if (command == 0) /* LOCAL: a health check from the proxy itself */
		return true;
	switch (family) {
	case 0x00: return true; /* UNSPEC: keep the socket's address */
	case 0x31: return true; /* UNIX stream */
	case 0x11:
		if (body_len < 12)
			return false;
		proxy_addr_text(AF_INET, h + PROXY_V2_HEAD, out, size);
		return true;
	case 0x21:
		if (body_len < 36)
			return false;
		proxy_addr_text(AF_INET6, h + PROXY_V2_HEAD, out, size);
		return true;
	default: return false;
	}
}

static enum proxy_result proxy_parse_v2(const unsigned char *h, size_t have, size_t cap,
					size_t *used, char *addr, size_t addr_size)
{
	if (have < PROXY_V2_HEAD)
		return PROXY_MORE;
	size_t body = (size_t)h[14] << 8 | h[15];
	if (body > cap - PROXY_V2_HEAD)
		return PROXY_BAD;
	if (have < PROXY_V2_HEAD + body)
		return PROXY_MORE;
	*used = PROXY_V2_HEAD + body;
	return proxy_v2(h, body, addr, addr_size) ? PROXY_OK : PROXY_BAD;
}

static enum proxy_result proxy_parse_v1(const unsigned char *h, size_t have, size_t *used,
					char *addr, size_t addr_size)
{
	size_t prefix = have < 6 ? have : 6;
	char line[PROXY_V1_MAX + 1];

	if (memcmp(h, "PROXY ", prefix) != 0)
		return PROXY_BAD;
	const unsigned char *lf = memchr(h, '\n', have);
	if (lf == NULL)
		return have >= PROXY_V1_MAX ? PROXY_BAD : PROXY_MORE;
	size_t len = (size_t)(lf - h) + 1;
	if (len > PROXY_V1_MAX || len < 2 || lf[-1] != '\r')
		return PROXY_BAD;
	memcpy(line, h, len - 2);
	line[len - 2] = '\0';
	*used = len;
	return strlen(line) == len - 2 && proxy_v1(line, addr, addr_size) ? PROXY_OK : PROXY_BAD;
}

enum proxy_result proxy_parse(const unsigned char *buf, size_t have, size_t cap, size_t *used,
			      char *addr, size_t addr_size)
{
	size_t cmp = have < sizeof proxy_v2_sig ? have : sizeof proxy_v2_sig;

	addr[0] = '\0';
	if (cap < PROXY_V2_HEAD || have > cap)
		return PROXY_BAD;
	if (memcmp(buf, proxy_v2_sig, cmp) == 0)
		return proxy_parse_v2(buf, have, cap, used, addr, addr_size);
	return proxy_parse_v1(buf, have, used, addr, addr_size);
}
