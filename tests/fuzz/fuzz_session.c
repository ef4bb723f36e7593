/* A libFuzzer target: one whole session over the input bytes, through the real smtp_session()
 * and mailbox.c, delivering into a scratch Maildir root. After each session it checks what
 * the contract promises and aborts when a promise is broken.
 *
 * The first byte chooses the mode (bit 0 templates, 1 LMTP, 2 PROXY, 3 STARTTLS offered, 4 one
 * fd for TLS control and input, 5 milter replies instead of a session: the second byte is the
 * event, the rest what a milter sent in answer, and a refusal must come out as one well-formed
 * reply line). With STARTTLS the rest is "clear text" TLS_SEP "launcher's
 * details" TLS_SEP "text under TLS": the control fd is a socketpair whose other end holds the
 * details, the read and write fds are two more files, as a UCSPI-TLS launcher would give them;
 * with bit 4 the text under TLS follows the details on the control fd itself. */
#define _GNU_SOURCE
#include "../../smtp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define TLS_SEP     "\0TLS\0"
#define TLS_SEP_LEN 5

static char root[256], out_path[300], in_path[300], tls_out_path[300], tls_in_path[300];

static void make_maildir(const char *path)
{
	char sub[512];

	mkdir(path, 0700);
	for (const char *const *d = (const char *const[]){"cur", "new", "tmp", NULL}; *d; d++) {
		snprintf(sub, sizeof sub, "%s/%s", path, *d);
		mkdir(sub, 0700);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char path[512];

	(void)argc, (void)argv;
	snprintf(root, sizeof root, "%s/smtpd-fuzz-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(root) == NULL)
		abort();
	snprintf(path, sizeof path, "%s/y.example", root);
	mkdir(path, 0700);
	snprintf(path, sizeof path, "%s/y.example/b", root);
	make_maildir(path);
	snprintf(path, sizeof path, "%s/y.example/c", root);
	make_maildir(path);
	/* As root, c belongs to another user: its recipients get a copy, b's a hard link. */
	if (geteuid() == 0)
		for (const char *const *d = (const char *const[]){"", "/cur", "/new", "/tmp", NULL}; *d;
		     d++) {
			char sub[600];
			snprintf(sub, sizeof sub, "%s%s", path, *d);
			if (chown(sub, 2002, 2002) != 0)
				abort();
		}
	snprintf(out_path, sizeof out_path, "%s/out", root);
	snprintf(in_path, sizeof in_path, "%s/in", root);
	snprintf(tls_out_path, sizeof tls_out_path, "%s/tls-out", root);
	snprintf(tls_in_path, sizeof tls_in_path, "%s/tls-in", root);
	return 0;
}

/* Every reply line: three digits, a space or a dash, text, CRLF, at most 512 octets. */
static void check_replies(const char *out, size_t len)
{
	size_t start = 0;

	while (start < len) {
		const char *crlf = memmem(out + start, len - start, "\r\n", 2);
		if (crlf == NULL)
			abort();
		size_t line = (size_t)(crlf - (out + start)) + 2;
		const char *l = out + start;
		if (line > LINE_MAX_OCTETS || line < 6 || l[0] < '2' || l[0] > '5' || l[1] < '0' ||
		    l[1] > '9' || l[2] < '0' || l[2] > '9' || (l[3] != ' ' && l[3] != '-'))
			abort();
		start += line;
	}
}

/* Files in new/ must each have been answered "250 2.0.0 <id> delivered", and carry their size. */
static void check_maildir(const char *maildir, const char *out)
{
	char path[600];
	struct dirent *e;

	snprintf(path, sizeof path, "%s/tmp", maildir);
	DIR *d = opendir(path);
	if (d == NULL)
		abort();
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			abort(); /* a stray file in tmp/ */
	closedir(d);
	snprintf(path, sizeof path, "%s/new", maildir);
	if ((d = opendir(path)) == NULL)
		abort();
	while ((e = readdir(d)) != NULL) {
		char id[MSG_ID_MAX + 32], file[900];
		struct stat st;
		if (e->d_name[0] == '.')
			continue;
		const char *dot = strchr(e->d_name, '.'), *dot2 = dot ? strchr(dot + 1, '.') : NULL;
		const char *size = strstr(e->d_name, ",S=");
		if (dot2 == NULL || size == NULL)
			abort();
		snprintf(id, sizeof id, "250 2.0.0 %.*s delivered", (int)(dot2 - e->d_name), e->d_name);
		if (strstr(out, id) == NULL)
			abort(); /* delivered without the reply that says so */
		snprintf(file, sizeof file, "%s/%s", path, e->d_name);
		if (stat(file, &st) != 0 || (unsigned long long)st.st_size != strtoull(size + 3, NULL, 10))
			abort();
		unlink(file);
	}
	closedir(d);
}

/* Only the Maildirs, the input and the output may exist under the root. */
static void check_root(void)
{
	char path[512];
	struct dirent *e;
	DIR *d = opendir(root);
	size_t entries = 0;

	while (d && (e = readdir(d)) != NULL)
		entries += e->d_name[0] != '.' || e->d_name[1] > '.';
	closedir(d);
	/* y.example, catch, out, in, tls-out, tls-in */
	if (entries > 6)
		abort();
	snprintf(path, sizeof path, "%s/y.example", root);
	entries = 0;
	d = opendir(path);
	while (d && (e = readdir(d)) != NULL)
		entries += e->d_name[0] != '.';
	closedir(d);
	if (entries != 2)
		abort();
}

/* The next piece of data up to TLS_SEP (or its end); *pos moves past the separator. */
static size_t piece(const unsigned char *data, size_t size, size_t *pos, const unsigned char **start)
{
	const unsigned char *p = data + *pos;
	size_t left = size - *pos;
	const unsigned char *sep = memmem(p, left, TLS_SEP, TLS_SEP_LEN);
	size_t len = sep ? (size_t)(sep - p) : left;

	*start = p;
	*pos += sep ? len + TLS_SEP_LEN : len;
	return len;
}

static int file_with(const char *path, const unsigned char *data, size_t len)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	if (fd < 0 || (len > 0 && write(fd, data, len) != (ssize_t)len))
		abort();
	lseek(fd, 0, SEEK_SET);
	return fd;
}

static size_t read_all(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);

	if (n < 0)
		abort();
	buf[n] = '\0';
	return (size_t)n;
}

/* A refusal a milter gave: one reply line of the verdict's class, "ddd c.d.d text", printable
 * ASCII only, short enough for RFC 5321. */
static void check_milter_reply(int verdict, const char *reply)
{
	size_t len = strlen(reply);

	if (verdict != MV_REJECT && verdict != MV_TEMPFAIL)
		return;
	if (len < 9 || len > LINE_MAX_OCTETS - 2 || reply[0] != (verdict == MV_REJECT ? '5' : '4') ||
	    reply[3] != ' ' || reply[4] != reply[0] || reply[5] != '.')
		abort();
	for (size_t i = 0; i < len; i++)
		if (reply[i] < 0x20 || reply[i] > 0x7e || (i < 3 && (reply[i] < '0' || reply[i] > '9')))
			abort();
}

static int fuzz_milter(const unsigned char *data, size_t size)
{
	static const char events[] = "CHMRTLNBEO";
	char reply[LINE_MAX_OCTETS];

	if (size < 2)
		return 0;
	int verdict = milter_parse_replies(events[data[1] % (sizeof events - 1)], data + 2, size - 2,
					   reply, sizeof reply);
	check_milter_reply(verdict, reply);
	return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static const char ready[] = "220 2.0.0 Ready to start TLS\r\n";
	char tmpl[300], catch_all[300];
	bool templated = size > 0 && (data[0] & 1);
	struct config cfg = {
		.hostname = "test.example",
		.max_size = 4096,
		.max_rcpt = 5,
		.idle_timeout = 10,
		.session_timeout = 10,
		.lmtp = size > 0 && (data[0] & 2),
		.proxy = size > 0 && (data[0] & 4),
		.tls = size > 0 && (data[0] & 8),
	};
	bool one_fd = size > 0 && (data[0] & 16);

	if (size > 0 && (data[0] & 32))
		return fuzz_milter(data, size);
	const unsigned char *clear = data + (size > 0), *info = NULL, *secret = NULL;
	size_t pos = size > 0, clear_len = size > 0 ? size - 1 : 0, info_len = 0, secret_len = 0;
	int ctl[2];

	snprintf(tmpl, sizeof tmpl, "%s/%%d/%%u", root);
	snprintf(catch_all, sizeof catch_all, "%s/catch", root);
	cfg.mail_template = templated ? tmpl : catch_all;
	if (cfg.tls) {
		clear_len = piece(data, size, &pos, &clear);
		info_len = piece(data, size, &pos, &info);
		secret_len = size - pos, secret = data + pos;
	}
	if (info_len > 4096)
		info_len = 4096; /* what a socketpair surely holds */
	if (secret_len > 4096)
		secret_len = 4096;
	int in = file_with(in_path, clear, clear_len);
	int out = file_with(out_path, NULL, 0);
	int tls_in = file_with(tls_in_path, secret, secret_len);
	int tls_out = file_with(tls_out_path, NULL, 0);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, ctl) != 0 ||
	    (info_len > 0 && write(ctl[1], info, info_len) != (ssize_t)info_len) ||
	    (one_fd && secret_len > 0 && write(ctl[1], secret, secret_len) != (ssize_t)secret_len) ||
	    shutdown(ctl[1], SHUT_WR) != 0)
		abort();
	cfg.tls_ctl = ctl[0], cfg.tls_rd = one_fd ? ctl[0] : tls_in, cfg.tls_wr = tls_out;
	int saved_in = dup(0), saved_out = dup(1);
	dup2(in, 0);
	dup2(out, 1);
	smtp_session(&cfg);
	dup2(saved_in, 0);
	dup2(saved_out, 1);
	close(saved_in);
	close(saved_out);
	close(in);
	close(tls_in);

	/* The launcher is asked to start TLS once, only after the 220 has gone out, and nothing
	 * at all is written on fd 1 after it. (Read before ctl[0] is closed: its unread data
	 * would make this ECONNRESET.) */
	char asked[8];
	ssize_t n_asked = recv(ctl[1], asked, sizeof asked, MSG_DONTWAIT);
	if (n_asked < 0 && errno == EAGAIN)
		n_asked = 0;
	close(ctl[0]);
	close(ctl[1]);
	static char replies[1 << 20], tls_replies[1 << 20];
	size_t n = read_all(out, replies, sizeof replies);
	size_t n_tls = read_all(tls_out, tls_replies, sizeof tls_replies);
	close(out);
	close(tls_out);
	const char *go = strstr(replies, ready);
	bool started = n_asked == 1 && asked[0] == 'Y';
	if (getenv("FUZZ_DEBUG"))
		fprintf(stderr, "asked=%zd out=[%s] tls=[%s]\n", n_asked, replies, tls_replies);
	if (n_asked != 0 && !started)
		abort();
	if (started != (go != NULL) || (go && go + strlen(ready) != replies + n) ||
	    (!started && n_tls > 0) || (started && !cfg.tls))
		abort();
	check_replies(replies, n);
	check_replies(tls_replies, n_tls);
	/* check_maildir looks for each delivery's reply in either stream */
	if (n + n_tls + 1 > sizeof replies)
		abort();
	memcpy(replies + n, tls_replies, n_tls + 1);
	if (templated) {
		char path[400];
		snprintf(path, sizeof path, "%s/y.example/b", root);
		check_maildir(path, replies);
		snprintf(path, sizeof path, "%s/y.example/c", root);
		check_maildir(path, replies);
	} else {
		struct stat st;
		if (stat(catch_all, &st) == 0)
			check_maildir(catch_all, replies);
	}
	check_root();
	return 0;
}
