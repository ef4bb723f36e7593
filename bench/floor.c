/* floor.c: the least a durable Maildir receiver can do, as a yardstick for smtpd.
 * usage: floor MAILDIR   (its tmp/ and new/ must exist)
 *
 * One SMTP session on fds 0 and 1: greets 220, answers every command line 250 (354 for DATA,
 * 221 for QUIT, then exits), and stores each message's data up to the final dot, as received,
 * in tmp/ (O_EXCL), fsyncs it, renames it into new/ and fsyncs new/. No parsing, no checks, no
 * headers, no dot-unstuffing, no copy. Reads are buffered (64 KiB); replies are flushed only
 * when no input is pending, so pipelining costs nothing. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static unsigned char in[65536];
static size_t pos, len, out_len;
static char out[4096];
static int tmp_dir, new_dir;

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(75);
}

static void write_all(int fd, const void *p, size_t n)
{
	for (ssize_t w; n > 0; p = (const char *)p + w, n -= (size_t)w)
		if ((w = write(fd, p, n)) < 0 && (w = 0, errno != EINTR))
			die("write");
}

static void put(const char *s)
{
	if (out_len + strlen(s) > sizeof out)
		write_all(1, out, out_len), out_len = 0;
	memcpy(out + out_len, s, strlen(s));
	out_len += strlen(s);
}

/* Reads more input after what is left of it; first the replies go out. */
static int fill(void)
{
	write_all(1, out, out_len), out_len = 0;
	memmove(in, in + pos, len - pos);
	len -= pos, pos = 0;
	if (len == sizeof in)
		len = 0; /* a command line longer than the buffer: dropped */
	ssize_t n;
	while ((n = read(0, in + len, sizeof in - len)) < 0 && errno == EINTR)
		;
	return n > 0 ? (len += (size_t)n, 1) : 0;
}

/* Stores the data up to CRLF.CRLF; the first CRLF ends the last line and is kept. */
static int receive_message(void)
{
	static const char end[] = "\r\n.\r\n";
	static unsigned long seq;
	static long pid;
	char name[96];
	struct timespec ts;
	size_t k = 2;                     /* bytes of end[] matched; the data starts a line */
	long long written = 0;            /* bytes of data stored */
	long long seen = -(long long)pos; /* where in[0] is, counted from the data's start */

	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(name, sizeof name, "%lld.M%ldP%ldQ%lu.floor", (long long)ts.tv_sec,
		 ts.tv_nsec / 1000, pid ? pid : (pid = (long)getpid()), ++seq);
	int fd = openat(tmp_dir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		die("open tmp/");
	while (k < 5) {
		if (pos == len && (seen += (long long)len, !fill()))
			return -1; /* no final dot: the file stays in tmp/, as after a crash */
		while (pos < len && k < 5) {
			if (k == 0) { /* skip to the next CR */
				unsigned char *cr = memchr(in + pos, '\r', len - pos);
				if (!(pos = cr ? (size_t)(cr - in) : len, cr))
					break;
			}
			unsigned char c = in[pos++];
			k = c == (unsigned char)end[k] ? k + 1 : c == '\r';
		}
		/* "." and ".\r" after a CRLF are held back until we know whether they are data */
		long long upto = seen + (long long)pos - (k == 5 ? 3 : k > 2 ? (long long)k - 2 : 0);
		if (upto > written && written < seen) { /* held back from an earlier buffer */
			long long n = (upto < seen ? upto : seen) - written;
			write_all(fd, end + 2, (size_t)n);
			written += n;
		}
		if (upto > written)
			write_all(fd, in + (written - seen), (size_t)(upto - written)), written = upto;
	}
	if (fsync(fd) != 0 || close(fd) != 0 || renameat(tmp_dir, name, new_dir, name) != 0 ||
	    fsync(new_dir) != 0)
		die("fsync, close, rename or fsync new/");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2 || chdir(argv[1]) != 0) {
		fprintf(stderr, "usage: floor MAILDIR\n");
		return 64;
	}
	if ((tmp_dir = open("tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
	    (new_dir = open("new", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		die("open tmp/ or new/");
	put("220 floor ESMTP\r\n");
	for (;;) {
		unsigned char *lf; /* one command line, up to LF */
		while ((lf = memchr(in + pos, '\n', len - pos)) == NULL)
			if (!fill())
				return 1;
		const char *line = (const char *)in + pos;
		size_t n = (size_t)(lf - (in + pos));
		pos += n + 1;
		if (n >= 4 && strncasecmp(line, "DATA", 4) == 0) {
			put("354 go ahead\r\n");
			if (receive_message() != 0)
				return 1;
			put("250 delivered\r\n");
		} else if (n >= 4 && strncasecmp(line, "QUIT", 4) == 0) {
			put("221 bye\r\n");
			write_all(1, out, out_len);
			return 0;
		} else {
			put("250 ok\r\n");
		}
	}
}
