/* gen.c: writes one SMTP session's transcript to stdout, fast enough not to be what is measured.
 *
 * usage: gen MESSAGES BODY_BYTES HOST
 *
 * EHLO, then per message MAIL, RCPT, DATA, a short header and BODY_BYTES of text in lines of 80
 * octets (78 letters and CRLF; the last one shorter), the final dot, and QUIT at the end. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { LINE = 80, LINES = 13107 }; /* a block of just under 1 MiB */
static char block[LINE * LINES];

static void put(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(1, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			exit(1); /* the reader went away: nothing to add */
		p += w, n -= (size_t)w;
	}
}

int main(int argc, char **argv)
{
	char text[1024];
	if (argc != 4) {
		fprintf(stderr, "usage: gen MESSAGES BODY_BYTES HOST\n");
		return 64;
	}
	long messages = atol(argv[1]);
	unsigned long long bytes = strtoull(argv[2], NULL, 10);
	const char *host = argv[3];

	for (size_t i = 0; i < sizeof block; i += LINE) {
		memset(block + i, 'X', LINE - 2);
		memcpy(block + i + LINE - 2, "\r\n", 2);
	}
	put(text, (size_t)snprintf(text, sizeof text, "EHLO client.%s\r\n", host));
	for (long m = 0; m < messages; m++) {
		put(text, (size_t)snprintf(text, sizeof text,
					   "MAIL FROM:<sender@%s>\r\nRCPT TO:<rcpt@%s>\r\nDATA\r\n"
					   "From: <sender@%s>\r\nTo: <rcpt@%s>\r\nSubject: bench\r\n\r\n",
					   host, host, host, host));
		unsigned long long left = bytes;
		for (; left >= sizeof block; left -= sizeof block)
			put(block, sizeof block);
		size_t rest = (size_t)left - (size_t)left % LINE;
		put(block, rest);
		if (left % LINE >= 2) { /* a shorter last line */
			put(block, left % LINE - 2);
			put("\r\n", 2);
		}
		put(".\r\n", 3);
	}
	put("QUIT\r\n", 6);
	return 0;
}
