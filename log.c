/* log.c: the one home of logging: where lines go (syslog, the journal, stderr), their
 * priorities, and the pieces that make every value one token. */
#define _POSIX_C_SOURCE 200809L
#include "smtp.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

enum sink { SINK_STDERR, SINK_JOURNAL, SINK_SYSLOG };

static enum sink log_sink = SINK_STDERR; /* until log_open: a test harness or fuzzer's stderr */
static char log_prefix[32];              /* "smtpd[<pid>]: " on a plain stderr, else "" */
static size_t log_prefix_len;

/* JOURNAL_STREAM="<dev>:<ino>" names the stream systemd gave us; it counts only when fd 2
 * is still that stream, not a file or pipe that replaced it (sd-daemon(3), systemd.exec(5)). */
static bool stderr_is_journal(const struct stat *err)
{
	const char *v = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	int used = 0;

	if (v == NULL || sscanf(v, "%llu:%llu%n", &dev, &ino, &used) != 2 || v[used] != '\0')
		return false;
	return (unsigned long long)err->st_dev == dev && (unsigned long long)err->st_ino == ino;
}

/* Under inetd and xinetd fd 2 is the client's socket: a log line there would enter the SMTP
 * stream. A terminal is never the client's socket, even when fds 0 and 1 are that terminal. */
static enum sink choose_sink(void)
{
	struct stat err, in, out;

	if (fstat(2, &err) != 0)
		return SINK_SYSLOG;
	if (stderr_is_journal(&err))
		return SINK_JOURNAL;
	if (S_ISCHR(err.st_mode) && isatty(2))
		return SINK_STDERR;
	if (fstat(0, &in) == 0 && in.st_dev == err.st_dev && in.st_ino == err.st_ino)
		return SINK_SYSLOG;
	if (fstat(1, &out) == 0 && out.st_dev == err.st_dev && out.st_ino == err.st_ino)
		return SINK_SYSLOG;
	return SINK_STDERR;
}

void log_open(void)
{
	struct text prefix = text_on(log_prefix, sizeof log_prefix);

	log_sink = choose_sink();
	if (log_sink == SINK_STDERR) {
		text_add(&prefix, "smtpd[");
		text_add_num(&prefix, (unsigned long long)getpid(), 0);
		text_add(&prefix, "]: ");
	}
	log_prefix_len = prefix.len;
	if (log_sink == SINK_SYSLOG)
		openlog("smtpd", LOG_PID, LOG_MAIL);
}

/* Code points a log line never carries as they are, though valid UTF-8: C1 controls (NEL and
 * a terminal's CSI among them), white space other than the space (a reader splitting on
 * Unicode white space would cut a value in two), the line and paragraph separators, and the
 * invisible characters that reorder or hide text (bidi controls, zero widths, the BOM, tags). */
static const struct {
	uint32_t first, last;
} log_unsafe[] = {
	{ 0x0080, 0x00a0 },   /* C1 controls, no-break space */
	{ 0x00ad, 0x00ad },   /* soft hyphen */
	{ 0x061c, 0x061c },   /* Arabic letter mark */
	{ 0x1680, 0x1680 },   /* Ogham space mark */
	{ 0x180e, 0x180e },   /* Mongolian vowel separator */
	{ 0x2000, 0x200f },   /* spaces, zero widths, LRM, RLM */
	{ 0x2028, 0x202f },   /* line and paragraph separators, bidi embeddings, narrow space */
	{ 0x205f, 0x206f },   /* math space, word joiner, invisible operators, bidi isolates */
	{ 0x3000, 0x3000 },   /* ideographic space */
	{ 0xfeff, 0xfeff },   /* zero-width no-break space (BOM) */
	{ 0xfff9, 0xfffb },   /* interlinear annotation */
	{ 0xe0000, 0xe007f }, /* tags */
};

/* The length of the valid UTF-8 sequence at p (RFC 3629: no overlong form, no surrogate,
 * nothing past U+10FFFF) and its code point, or 0. */
static size_t utf8_char(const unsigned char *p, size_t left, uint32_t *cp)
{
	size_t need = p[0] >= 0xc2 && p[0] <= 0xdf   ? 1
		      : p[0] >= 0xe0 && p[0] <= 0xef ? 2
		      : p[0] >= 0xf0 && p[0] <= 0xf4 ? 3
						     : 0;
	static const uint32_t min[4] = { 0, 0x80, 0x800, 0x10000 };

	if (need == 0 || left <= need)
		return 0;
	*cp = p[0] & (0x3fu >> need);
	for (size_t k = 1; k <= need; k++) {
		if ((p[k] & 0xc0) != 0x80)
			return 0;
		*cp = *cp << 6 | (p[k] & 0x3fu);
	}
	if (*cp < min[need] || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff))
		return 0;
	return need + 1;
}

static bool printable(uint32_t cp)
{
	for (size_t i = 0; i < sizeof log_unsafe / sizeof log_unsafe[0]; i++)
		if (cp >= log_unsafe[i].first && cp <= log_unsafe[i].last)
			return false;
	return true;
}

/* Log lines carry client text: printable ASCII and printable, valid UTF-8 pass; every other
 * byte (C0 controls, DEL, anything not valid UTF-8) and every character of log_unsafe becomes
 * one '?'. The text only shrinks. */
static void keep_printable(struct text *t, const char *line)
{
	const unsigned char *p = (const unsigned char *)line;

	while (*p != '\0' && !t->cut) {
		size_t n = 0;
		while (p[n] >= 0x20 && p[n] < 0x7f)
			n++;
		uint32_t cp = 0;
		if (n == 0 && *p >= 0x80)
			n = utf8_char(p, strlen((const char *)p), &cp);
		if (n == 0 || (cp != 0 && !printable(cp)))
			text_add_n(t, "?", 1);
		else
			text_add_n(t, (const char *)p, n);
		p += n > 0 ? n : 1;
	}
}

/* One write per line, so that lines of concurrent sessions sharing a log never interleave. */
void log_text(enum log_level level, const char *line)
{
	char buf[LOG_LINE_MAX + sizeof log_prefix];
	struct text t = text_on(buf, sizeof buf - 1); /* the last byte is for the newline */
	size_t start;

	if (log_sink == SINK_JOURNAL) {
		char head[4] = { '<', (char)('0' + level), '>', '\0' };
		text_add(&t, head);
	} else {
		text_add_n(&t, log_prefix, log_prefix_len);
	}
	start = t.len;
	keep_printable(&t, line);
	if (log_sink == SINK_SYSLOG) {
		syslog(LOG_MAIL | (int)level, "%s", buf + start);
		return;
	}
	buf[t.len] = '\n';
	/* A failed write is not retried: when stderr is gone there is nowhere to say so. */
	(void)!write(2, buf, t.len + 1);
}

void log_line(enum log_level level, const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	log_text(level, line);
}

/* A value as one token: a blank (a quoted local part may hold one) becomes '?', as control
 * bytes do in log_text, so that "key=value" splits at spaces. */
void log_add_value(struct text *t, const char *value)
{
	size_t start = t->len;

	text_add(t, value);
	for (size_t i = start; i < t->len; i++)
		if (t->buf[i] == ' ')
			t->buf[i] = '?';
}

static const struct {
	int number;
	const char *name;
} errno_names[] = {
	{ ENOSPC, "ENOSPC" },
	{ EDQUOT, "EDQUOT" },
	{ EFBIG, "EFBIG" },
	{ EIO, "EIO" },
	{ EACCES, "EACCES" },
	{ EPERM, "EPERM" },
	{ EROFS, "EROFS" },
	{ ENOENT, "ENOENT" },
	{ ENOTDIR, "ENOTDIR" },
	{ EEXIST, "EEXIST" },
	{ EXDEV, "EXDEV" },
	{ EMLINK, "EMLINK" },
	{ EMFILE, "EMFILE" },
	{ ENFILE, "ENFILE" },
	{ ELOOP, "ELOOP" },
	{ ESTALE, "ESTALE" },
	{ EBADF, "EBADF" },
	{ EINVAL, "EINVAL" },
	{ ENAMETOOLONG, "ENAMETOOLONG" },
	{ EOVERFLOW, "EOVERFLOW" },
	{ ENOMEM, "ENOMEM" },
};

/* A symbolic errno is one token and the same in every libc and locale. */
void log_add_errno(struct text *t, int e)
{
	for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
		if (errno_names[i].number == e)
			return text_add(t, errno_names[i].name);
	text_add(t, "E");
	text_add_num(t, (unsigned long long)(e > 0 ? e : 0), 0);
}

/* "452 4.3.1 Insufficient system storage" as " reply=452 code=4.3.1". */
void log_add_reply(struct text *t, const char *reply)
{
	text_add(t, " reply=");
	text_add_n(t, reply, 3);
	text_add(t, " code=");
	text_add_n(t, reply + 4, strcspn(reply + 4, " "));
}

/* The reply's own words as one token: "550 5.1.1 No such user" gives "no-such-user", so that
 * the reason in the log is never a second text to keep in step with the reply. */
void log_add_reason(struct text *t, const char *reply)
{
	const char *p = reply + 4;
	size_t start;

	p += strcspn(p, " ");
	p += strspn(p, " ");
	text_add(t, " reason=");
	start = t->len;
	for (; *p != '\0' && !t->cut; p++) {
		char c = *p >= 'A' && *p <= 'Z' ? (char)(*p | 0x20) : *p;
		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			text_add_n(t, &c, 1);
		else if (t->len > start && t->buf[t->len - 1] != '-')
			text_add_n(t, "-", 1);
	}
	if (t->len > start && t->buf[t->len - 1] == '-')
		t->buf[--t->len] = '\0';
}
