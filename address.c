/* address.c: the paths of MAIL FROM: and RCPT TO:, RFC 5321 4.1.2 with RFC 6531's UTF-8: a
 * parser over one command's argument, with no I/O and no state, so that it can be read and
 * fuzzed apart from the session. */
#define _POSIX_C_SOURCE 200809L
#include "smtp.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static bool is_atext(unsigned c)
{
	/* strchr() finds the NUL that ends its set: c == 0 must be ruled out first */
	return is_alpha(c) || is_digit(c) || c >= 0x80 ||
	       (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", (int)c) != NULL);
}

/* RFC 3629 UTF-8: no overlongs, no surrogates, nothing past U+10FFFF. */
static bool valid_utf8(const unsigned char *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned c = p[i], need, min;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			need = 1, min = 0x80;
		else if (c >= 0xe0 && c <= 0xef)
			need = 2, min = 0x800;
		else if (c >= 0xf0 && c <= 0xf4)
			need = 3, min = 0x10000;
		else
			return false;
		if (len - i <= need)
			return false;
		unsigned cp = c & (0x3f >> need);
		for (unsigned k = 1; k <= need; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += need + 1;
	}
	return true;
}

/* sub-domain *("." sub-domain); a sub-domain is letters, digits and inner hyphens (or UTF-8). */
static const char *parse_domain_name(const char *p)
{
	for (;;) {
		const char *label = p;
		while (is_alpha((unsigned char)*p) || is_digit((unsigned char)*p) || *p == '-' ||
		       (unsigned char)*p >= 0x80)
			p++;
		if (p == label || *label == '-' || p[-1] == '-')
			return NULL;
		if (*p != '.')
			return p;
		p++;
	}
}

static bool ipv4_literal(const char *text, size_t len)
{
	char buf[16];
	unsigned char addr[4];

	if (len >= sizeof buf || strspn(text, "0123456789.") < len)
		return false;
	memcpy(buf, text, len);
	buf[len] = '\0';
	return inet_pton(AF_INET, buf, addr) == 1;
}

/* "[" IPv4 / "IPv6:" IPv6 / tag ":" dcontent "]" */
static const char *parse_address_literal(const char *p)
{
	const char *close = strchr(p, ']');
	char buf[INET6_ADDRSTRLEN + 8];
	unsigned char addr[16];

	if (close == NULL)
		return NULL;
	size_t len = (size_t)(close - p - 1);
	if (ipv4_literal(p + 1, len))
		return close + 1;
	if (len > 5 && strncmp(p + 1, "IPv6:", 5) == 0 && len - 5 < sizeof buf) {
		memcpy(buf, p + 6, len - 5);
		buf[len - 5] = '\0';
		return inet_pton(AF_INET6, buf, addr) == 1 ? close + 1 : NULL;
	}
	const char *tag_end = parse_domain_name(p + 1);
	if (tag_end == NULL || *tag_end != ':' || tag_end + 1 >= close)
		return NULL;
	for (const char *q = tag_end + 1; q < close; q++)
		if (*q < 33 || *q > 126 || *q == '[' || *q == '\\')
			return NULL;
	return close + 1;
}

static const char *parse_domain(const char *p)
{
	return *p == '[' ? parse_address_literal(p) : parse_domain_name(p);
}

/* A quoted string: unquoted into local[], which holds LOCAL_MAX octets. */
static const char *parse_quoted(const char *p, char *local, size_t *len)
{
	for (p++; *p != '"'; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '\\') {
			c = (unsigned char)*++p;
			if (c < 32 || c > 126)
				return NULL;
		} else if (c < 32 || c == 127) {
			return NULL;
		}
		if (*len >= LOCAL_MAX)
			return NULL;
		local[(*len)++] = (char)c;
	}
	return p + 1;
}

static const char *parse_dot_string(const char *p, char *local, size_t *len)
{
	const char *start = p;

	for (;;) {
		const char *atom = p;
		while (is_atext((unsigned char)*p))
			p++;
		if (p == atom || (size_t)(p - start) > LOCAL_MAX)
			return NULL;
		if (*p != '.')
			break;
		p++;
	}
	*len = (size_t)(p - start);
	memcpy(local, start, *len);
	return p;
}

/* Source route "@a,@b:" is read and ignored (RFC 5321 4.1.2, C.). */
static const char *skip_source_route(const char *p)
{
	if (*p != '@')
		return p;
	for (;;) {
		p = parse_domain(p + 1);
		if (p == NULL)
			return NULL;
		if (*p == ':')
			return p + 1;
		if (*p != ',' || p[1] != '@')
			return NULL;
		p++;
	}
}

/* "<" [source route] mailbox ">"; on success *rest points after the ">". */
enum path_result parse_path(const char *p, struct address *a, const char **rest)
{
	const char *start = p, *box, *q;
	size_t local_len = 0;

	memset(a, 0, sizeof *a);
	/* Bad encoding is named as such, before the grammar can call it a syntax error. */
	if (!valid_utf8((const unsigned char *)p, strlen(p)))
		return PATH_BAD_UTF8;
	if (*p++ != '<')
		return PATH_BAD;
	if (*p == '>') {
		*rest = p + 1;
		return PATH_NULL;
	}
	if ((box = skip_source_route(p)) == NULL)
		return PATH_BAD;
	q = *box == '"' ? parse_quoted(box, a->local, &local_len)
			: parse_dot_string(box, a->local, &local_len);
	if (q == NULL || (size_t)(q - box) > LOCAL_MAX)
		return PATH_BAD;
	enum path_result result = PATH_OK;
	if (*q == '>' && *box != '"' && strcasecmp(a->local, "postmaster") == 0) {
		result = PATH_POSTMASTER;
	} else {
		const char *domain = q + 1;
		if (*q != '@' || (q = parse_domain(domain)) == NULL ||
		    (size_t)(q - domain) > DOMAIN_MAX || *q != '>')
			return PATH_BAD;
		memcpy(a->domain, domain, (size_t)(q - domain));
	}
	if ((size_t)(q + 1 - start) > PATH_MAX_OCTETS)
		return PATH_BAD;
	memcpy(a->text, box, (size_t)(q - box));
	for (const char *c = start; c < q; c++)
		a->has_8bit |= (unsigned char)*c >= 0x80;
	*rest = q + 1;
	return result;
}
