/* session.c: one SMTP or LMTP session: the line reader, the verb table, the state machine, and
 * the DATA and BDAT decoders that stream the message into mailbox.c. */
#define _POSIX_C_SOURCE 200809L
#include "smtp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Reply texts, one per reason. bad: counts towards MAX_BAD_COMMANDS. */
enum reply_id {
	RPL_NONE,
	RPL_OK,
	RPL_MAIL_OK,
	RPL_RCPT_OK,
	RPL_DATA_GO,
	RPL_VRFY,
	RPL_HELP,
	RPL_HELP_LMTP,
	RPL_NOT_IMPL,
	RPL_UNKNOWN,
	RPL_LINE_LONG,
	RPL_BARE_LF,
	RPL_BAD_CHAR,
	RPL_NEED_HELO,
	RPL_NEED_LHLO,
	RPL_NEED_EHLO,
	RPL_NEED_MAIL,
	RPL_NEED_RCPT,
	RPL_NESTED_MAIL,
	RPL_DATA_AFTER_BDAT,
	RPL_BAD_SEQUENCE,
	RPL_NO_VALID_RCPT,
	RPL_NEED_ARG,
	RPL_NO_ARGS,
	RPL_BAD_SENDER,
	RPL_BAD_RCPT,
	RPL_BAD_PARAM,
	RPL_UNKNOWN_PARAM,
	RPL_BAD_SIZE,
	RPL_BAD_BODY,
	RPL_BAD_BDAT,
	RPL_NEED_UTF8,
	RPL_BAD_UTF8,
	RPL_TOO_BIG,
	RPL_TOO_MANY_RCPT,
	RPL_NO_USER,
	RPL_NO_DOMAIN,
	RPL_BAD_NAME,
	RPL_TEMP,
	RPL_FULL,
	RPL_MAILBOX_FULL,
	RPL_LOOP,
	RPL_TLS_GO,
	RPL_TLS_ACTIVE,
	RPL_MILTER, /* a milter's verdict, in milter_said */
};

/* What a milter said, and which: RPL_MILTER's text. */
static struct milter_reply milter_said;

static const struct {
	const char *text;
	bool bad;
} replies[] = {
	[RPL_OK] = { "250 2.0.0 Ok", false },
	[RPL_MAIL_OK] = { "250 2.1.0 Ok", false },
	[RPL_RCPT_OK] = { "250 2.1.5 Ok", false },
	[RPL_DATA_GO] = { "354 End data with <CR><LF>.<CR><LF>", false },
	[RPL_VRFY] = { "252 2.0.0 Will not verify; send mail to find out", false },
	[RPL_HELP] = { "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
		       false },
	[RPL_HELP_LMTP] = { "214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
			    false },
	[RPL_NOT_IMPL] = { "502 5.5.1 Command not implemented", true },
	[RPL_UNKNOWN] = { "500 5.5.1 Command unrecognized", true },
	[RPL_LINE_LONG] = { "500 5.5.2 Line too long", true },
	[RPL_BARE_LF] = { "500 5.5.2 Line must end with CRLF", true },
	[RPL_BAD_CHAR] = { "500 5.5.2 Invalid character in command", true },
	[RPL_NEED_HELO] = { "503 5.5.1 Send HELO/EHLO first", true },
	[RPL_NEED_LHLO] = { "503 5.5.1 Send LHLO first", true },
	[RPL_NEED_EHLO] = { "503 5.5.1 BDAT needs EHLO", true },
	[RPL_NEED_MAIL] = { "503 5.5.1 MAIL first", true },
	[RPL_NEED_RCPT] = { "503 5.5.1 RCPT first", true },
	[RPL_NESTED_MAIL] = { "503 5.5.1 Nested MAIL command", true },
	[RPL_DATA_AFTER_BDAT] = { "503 5.5.1 DATA not allowed after BDAT", true },
	[RPL_BAD_SEQUENCE] = { "503 5.5.1 Bad sequence of commands", true },
	[RPL_NO_VALID_RCPT] = { "554 5.5.1 No valid recipients", false },
	[RPL_NEED_ARG] = { "501 5.5.4 Argument required", true },
	[RPL_NO_ARGS] = { "501 5.5.4 No arguments allowed", true },
	[RPL_BAD_SENDER] = { "501 5.1.7 Bad sender address syntax", true },
	[RPL_BAD_RCPT] = { "501 5.1.3 Bad recipient address syntax", true },
	[RPL_BAD_PARAM] = { "501 5.5.4 Syntax error in parameters", true },
	[RPL_UNKNOWN_PARAM] = { "555 5.5.4 Unsupported parameter", true },
	[RPL_BAD_SIZE] = { "501 5.5.4 Bad SIZE value", true },
	[RPL_BAD_BODY] = { "501 5.5.4 Bad BODY value", true },
	[RPL_BAD_BDAT] = { "501 5.5.4 Syntax: BDAT <size> [LAST]", true },
	[RPL_NEED_UTF8] = { "553 5.6.7 Non-ASCII address needs SMTPUTF8", false },
	[RPL_BAD_UTF8] = { "553 5.6.7 Invalid UTF-8 in address", false },
	[RPL_TOO_BIG] = { "552 5.3.4 Message too big", false },
	[RPL_TOO_MANY_RCPT] = { "452 4.5.3 Too many recipients", false },
	[RPL_NO_USER] = { "550 5.1.1 No such user", false },
	[RPL_NO_DOMAIN] = { "550 5.7.1 Relaying denied", false },
	[RPL_BAD_NAME] = { "550 5.1.3 Bad recipient name", false },
	[RPL_TEMP] = { "451 4.3.0 Local error in delivery", false },
	[RPL_FULL] = { "452 4.3.1 Insufficient system storage", false },
	[RPL_MAILBOX_FULL] = { "452 4.2.2 Mailbox full", false },
	[RPL_LOOP] = { "554 5.4.6 Too many Received headers (mail loop)", false },
	[RPL_TLS_GO] = { "220 2.0.0 Ready to start TLS", false },
	[RPL_TLS_ACTIVE] = { "503 5.5.1 TLS already active", true },
	[RPL_MILTER] = { milter_said.text, false },
};

static const enum reply_id md_replies[] = {
	[MD_OK] = RPL_NONE,
	[MD_NO_USER] = RPL_NO_USER,
	[MD_NO_DOMAIN] = RPL_NO_DOMAIN,
	[MD_BAD_NAME] = RPL_BAD_NAME,
	[MD_TEMP] = RPL_TEMP,
	[MD_FULL] = RPL_FULL,
	[MD_TOO_MANY] = RPL_TOO_MANY_RCPT,
	[MD_QUOTA] = RPL_MAILBOX_FULL,
};

/* Protocol states, as bits so the verb table can say where each verb is in sequence. */
enum state {
	ST_START = 1 << 0, /* no HELO/EHLO/LHLO yet */
	ST_READY = 1 << 1, /* greeted, no transaction */
	ST_MAIL = 1 << 2,  /* MAIL accepted, no recipient yet */
	ST_RCPT = 1 << 3,  /* at least one recipient */
	ST_BDAT = 1 << 4,  /* BDAT chunks under way */
	ST_ANY = 0x1f,
	ST_SHUNNED = 1 << 5, /* a milter refused the connection: QUIT alone is in sequence */
};

enum input_mode { IN_COMMANDS, IN_DISCARD_LINE, IN_DATA, IN_BDAT };
enum line_ends { ENDS_UNKNOWN, ENDS_CRLF, ENDS_LF };
enum data_state { D_TEXT, D_CR, D_BOL, D_DOT, D_DOT_CR };
enum first_line { FIRST_UNDECIDED, FIRST_IS_HEADER, FIRST_IS_BODY };

struct rcpt {
	char addr[PATH_MAX_OCTETS + 1];
	size_t box;
};

struct session {
	struct config *cfg;
	enum state state;
	enum input_mode input;
	enum line_ends ends;
	bool done, greeted, extended;
	int fd[2];             /* where commands come from and replies go: 0 and 1, or TLS's */
	bool fd_not_socket[2]; /* fd[0] or fd[1] said ENOTSOCK: poll() before every read or write */
	bool tls_on;           /* STARTTLS done: fd[] are the launcher's clear-text pipes */
	char tls_protocol[TLS_NAME_MAX + 1], tls_cipher[TLS_NAME_MAX + 1]; /* "" when not told */
	char tls_bits[16]; /* "256/256" from the key sizes, or "" */
	int exit_status;
	const char *end_reason;
	unsigned bad_commands;
	unsigned refused_rcpts; /* since the last delivered message */
	char helo[HELO_MAX + 1];
	const char *protocol;
	long long started_ms, last_input_ms;

	/* transaction */
	char sender[PATH_MAX_OCTETS + 1];
	bool smtputf8, rcpt_tried;
	struct rcpt *rcpts;
	size_t rcpt_count;
	uint64_t msg_size;
	enum reply_id txn_error;
	unsigned received_count;
	struct md_txn md;

	/* message decoding and writing */
	enum data_state dstate;
	uint64_t bdat_left;
	bool bdat_last, bdat_cr_pending;
	enum reply_id bdat_reply;
	enum first_line first_line;
	size_t prefix_len, header_match;
	bool in_header, at_line_start;
	size_t chunk_len;
	uint64_t body_octets; /* stored octets of the message itself, after our header fields */
	unsigned char last_octet;

	/* totals for the session log line */
	unsigned long messages, recipients;
	uint64_t bytes;

	size_t in_start, in_end, out_len;
	unsigned char in[IN_BUF_SIZE];
	char out[OUT_BUF_SIZE];
	unsigned char chunk[DATA_CHUNK + 2];
};

static struct session S;

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

static long long now_ms(void)
{
	struct timespec ts = { 0, 0 }; /* a clock that fails reads as 0, never as stack garbage */

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The milliseconds left before the idle (-t) or the whole-session (-T) deadline. */
static int ms_left(struct session *s)
{
	long long now = now_ms();
	long long idle = s->last_input_ms + (long long)s->cfg->idle_timeout * 1000 - now;
	long long whole = s->started_ms + (long long)s->cfg->session_timeout * 1000 - now;
	long long left = idle < whole ? idle : whole;

	return left < 0 ? 0 : (int)left;
}

static void end_session(struct session *s, int status, const char *reason)
{
	if (s->done)
		return;
	s->done = true;
	s->exit_status = status;
	s->end_reason = reason;
}

/* ---- output: replies are gathered and written when the reader is about to wait ---- */

/* On a socket, one try without waiting: MSG_DONTWAIT makes this call alone non-blocking,
 * leaving the file's flags, which the launcher may share, as they are. When data or room is
 * there already, which is the rule in a busy session, that spares a poll() per read and
 * write. Returns -1 with errno EAGAIN when the caller must poll() first. */
static ssize_t try_io(struct session *s, int fd, void *buf, size_t len)
{
	if (!s->fd_not_socket[fd]) {
		ssize_t n = fd == 0 ? recv(s->fd[0], buf, len, MSG_DONTWAIT)
				    : send(s->fd[1], buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n >= 0 || errno != ENOTSOCK)
			return n < 0 && errno == EWOULDBLOCK ? (errno = EAGAIN, -1) : n;
		s->fd_not_socket[fd] = true;
	}
	errno = EAGAIN;
	return -1;
}

/* Waits until fd is ready for events, or returns 0 when it is not by the idle or whole-session
 * deadline. */
static int poll_fd(struct session *s, int fd, short events)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int ready;

	do
		ready = poll(&pfd, 1, ms_left(s));
	while (ready < 0 && errno == EINTR);
	return ready;
}

/* Waits until s->fd[0] (fd 0) can be read or s->fd[1] (fd 1) written; 0 past a deadline. */
static int wait_ready(struct session *s, int fd)
{
	return poll_fd(s, s->fd[fd], fd == 0 ? POLLIN : POLLOUT);
}

/* One read or write of at most len bytes; -1 with errno ETIMEDOUT once a deadline passed.
 * Before every read the deadline is checked, input waiting or not: a client that never
 * pauses must still be cut at -T. A write still goes out if it can at once: the 421 that
 * says why the session ends is one. */
static ssize_t do_io(struct session *s, int fd, unsigned char *buf, size_t len)
{
	for (;;) {
		if (fd == 0 && ms_left(s) == 0)
			return errno = ETIMEDOUT, -1;
		ssize_t n = try_io(s, fd, buf, len);
		if (n < 0 && errno == EAGAIN) {
			if (wait_ready(s, fd) <= 0)
				return errno = ETIMEDOUT, -1;
			if (!s->fd_not_socket[fd])
				continue; /* the next try cannot block, even on a short buffer */
			/* After POLLOUT a pipe takes PIPE_BUF octets without blocking; more may
			 * not. */
			n = fd == 0 ? read(s->fd[0], buf, len)
				    : write(s->fd[1], buf, len < PIPE_BUF ? len : PIPE_BUF);
		}
		if (n >= 0 || (errno != EINTR && errno != EAGAIN))
			return n;
	}
}

static void flush_out(struct session *s)
{
	size_t sent = 0;

	while (sent < s->out_len) {
		ssize_t n = do_io(s, 1, (unsigned char *)s->out + sent, s->out_len - sent);
		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	if (sent < s->out_len)
		end_session(s, EXIT_DROPPED, "write-failed");
	s->out_len = 0;
}

static void reply_text(struct session *s, const char *text, size_t len)
{
	if (s->out_len + len + 2 > sizeof s->out)
		flush_out(s);
	if (len + 2 > sizeof s->out)
		len = sizeof s->out - 2;
	memcpy(s->out + s->out_len, text, len);
	memcpy(s->out + s->out_len + len, "\r\n", 2);
	s->out_len += len + 2;
}

/* A reply of fixed text around one variable piece, such as our host name or a number. */
static void reply_around(struct session *s, const char *head, const char *middle, const char *tail)
{
	char line[LINE_MAX_OCTETS];
	struct text t = text_on(line, sizeof line);

	text_add(&t, head);
	text_add(&t, middle);
	text_add(&t, tail);
	reply_text(s, line, t.len);
}

static void reply_around_num(struct session *s, const char *head, uint64_t n, const char *tail)
{
	char digits[24];
	struct text t = text_on(digits, sizeof digits);

	text_add_num(&t, n, 0);
	reply_around(s, head, digits, tail);
}

static void reply(struct session *s, enum reply_id id)
{
	reply_text(s, replies[id].text, strlen(replies[id].text));
	if (replies[id].bad && ++s->bad_commands >= MAX_BAD_COMMANDS) {
		reply_around(s, "421 4.7.0 ", s->cfg->hostname, " Too many errors, closing");
		end_session(s, EXIT_DROPPED, "too-many-errors");
	}
}

/* ---- input ---- */

/* Waits for input (after writing every pending reply) and appends it to the buffer.
 * Returns false when the session has ended: EOF, error, or a deadline passed. */
static bool fill_in(struct session *s)
{
	if (s->in_start > 0) {
		memmove(s->in, s->in + s->in_start, s->in_end - s->in_start);
		s->in_end -= s->in_start;
		s->in_start = 0;
	}
	flush_out(s);
	if (s->done)
		return false;
	if (s->in_end == sizeof s->in)
		return true; /* full: the caller consumes before it asks again */
	ssize_t n = do_io(s, 0, s->in + s->in_end, sizeof s->in - s->in_end);
	if (n < 0 && errno == ETIMEDOUT) {
		if (s->greeted)
			reply_around(s, "421 4.4.2 ", s->cfg->hostname, " Timeout, closing");
		end_session(s, EXIT_DROPPED, "timeout");
		return false;
	}
	if (n <= 0) {
		end_session(s, EXIT_DROPPED, n == 0 ? "client-closed" : "read-failed");
		return false;
	}
	s->in_end += (size_t)n;
	s->last_input_ms = now_ms();
	return true;
}

/* Reads exactly one PROXY header before the greeting; whatever follows it stays buffered. */
static bool read_proxy_header(struct session *s)
{
	char addr[ADDR_TEXT_MAX];

	for (;;) {
		size_t used = 0;
		enum proxy_result r = proxy_parse(s->in + s->in_start, s->in_end - s->in_start,
						  sizeof s->in, &used, addr, sizeof addr);
		if (r == PROXY_BAD)
			return false;
		if (r == PROXY_OK) {
			s->in_start += used;
			if (addr[0] != '\0')
				text_copy(s->cfg->client_addr, sizeof s->cfg->client_addr, addr);
			return true;
		}
		if (!fill_in(s))
			return false;
	}
}

/* ---- the message writer: our two header fields, then the message, into DATA_CHUNK pieces ---- */

/* The message is refused (too big, a loop, the spool unwritable): one reply for all. */
static void data_fail(struct session *s, enum reply_id why)
{
	if (s->txn_error != RPL_NONE)
		return;
	s->txn_error = why;
	md_abort(&s->md);
}

static void chunk_flush(struct session *s)
{
	if (s->txn_error == RPL_NONE && s->chunk_len > 0) {
		enum md_result r = md_write(&s->md, s->chunk, s->chunk_len);
		if (r != MD_OK)
			data_fail(s, md_replies[r]);
	}
	s->chunk_len = 0;
}

/* A message whose first line is no header field gets an empty line after ours, so its text
 * stays body. The decision is made within 1000 octets, long before the first flush. */
static void decide_first_line(struct session *s, enum first_line kind)
{
	s->first_line = kind;
	if (kind == FIRST_IS_HEADER)
		return;
	memmove(s->chunk + s->prefix_len + 1, s->chunk + s->prefix_len,
		s->chunk_len - s->prefix_len);
	s->chunk[s->prefix_len] = '\n';
	s->chunk_len++;
	s->in_header = false;
}

/* Watches the header section for its end, for "Received:" (hop count), and classifies the
 * first line. Returns how many of the len octets it has looked at: one at the start of a line,
 * the rest of the line at once when nothing in it matters. */
static size_t header_span(struct session *s, const unsigned char *p, size_t len)
{
	static const char received[] = "received:";
	enum { NAME_LEN = sizeof received - 1, MATCH_DONE = sizeof received };

	if (s->first_line != FIRST_UNDECIDED && !s->at_line_start &&
	    s->header_match == MATCH_DONE) {
		const unsigned char *nl = memchr(p, '\n', len);
		if (nl != p)
			return nl ? (size_t)(nl - p) : len;
	}
	if (s->first_line == FIRST_UNDECIDED) {
		size_t name_len = s->chunk_len - s->prefix_len;
		if ((*p == ':' && name_len > 0) || (*p == '\n' && name_len == 0))
			decide_first_line(s, FIRST_IS_HEADER);
		else if (*p <= ' ' || *p >= 0x7f || *p == ':' || name_len >= 998)
			decide_first_line(s, FIRST_IS_BODY);
	}
	if (*p == '\n') {
		s->in_header = !s->at_line_start && s->in_header;
		s->at_line_start = true;
		s->header_match = 0;
		return 1;
	}
	s->at_line_start = false;
	if (s->header_match >= NAME_LEN)
		return 1;
	if (lower(*p) != received[s->header_match]) {
		s->header_match = MATCH_DONE;
	} else if (++s->header_match == NAME_LEN) {
		s->header_match = MATCH_DONE;
		if (++s->received_count > MAX_RECEIVED)
			data_fail(s, RPL_LOOP);
	}
	return 1;
}

/* Appends message octets. The size is counted as RFC 1870 does, by the caller. */
static void emit(struct session *s, const unsigned char *p, size_t len)
{
	while (len > 0) {
		size_t room = DATA_CHUNK - s->chunk_len, n = len < room ? len : room;
		if (s->in_header)
			n = header_span(s, p, n);
		if (s->txn_error == RPL_NONE)
			memcpy(s->chunk + s->chunk_len, p, n);
		s->chunk_len += n;
		s->body_octets += n;
		s->last_octet = n > 0 ? p[n - 1] : s->last_octet;
		p += n;
		len -= n;
		if (s->chunk_len >= DATA_CHUNK) {
			if (s->first_line == FIRST_UNDECIDED)
				decide_first_line(s, FIRST_IS_BODY);
			chunk_flush(s);
		}
	}
}

static void count_size(struct session *s, uint64_t n)
{
	s->msg_size += n;
	if (s->msg_size > s->cfg->max_size)
		data_fail(s, RPL_TOO_BIG);
}

/* RFC 5322's date in UTC, as qmail writes it: the same on every host of a cluster, whatever TZ
 * the launcher passes. By hand, because gmtime_r() still reads the time zone file; the civil
 * date comes from days since 1970 by H. Hinnant's civil_from_days (proleptic Gregorian). */
static void add_date(struct text *t)
{
	static const char week[7][4] = { "Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed" };
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct timespec ts;
	long long now = clock_gettime(CLOCK_REALTIME, &ts) == 0 ? (long long)ts.tv_sec : 0;
	long long secs = now % 86400, days = now / 86400;

	if (secs < 0)
		secs += 86400, days--;
	int weekday = (int)(((days % 7) + 7) % 7); /* 1970-01-01 was a Thursday */
	long long z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
	long long doe = z - era * 146097;                                      /* [0, 146096] */
	long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
	long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
	long long mp = (5 * doy + 2) / 153;                                    /* March is 0 */
	int mday = (int)(doy - (153 * mp + 2) / 5 + 1), month = (int)(mp < 10 ? mp + 2 : mp - 10);
	long long year = yoe + era * 400 + (month < 2);

	text_add(t, week[weekday]);
	text_add(t, ", ");
	text_add_num(t, (unsigned long long)mday, 2);
	text_add(t, " ");
	text_add(t, months[month]);
	text_add(t, " ");
	text_add_num(t, (unsigned long long)(year > 0 ? year : 0), 4);
	text_add(t, " ");
	text_add_num(t, (unsigned long long)(secs / 3600), 2);
	text_add(t, ":");
	text_add_num(t, (unsigned long long)(secs / 60 % 60), 2);
	text_add(t, ":");
	text_add_num(t, (unsigned long long)(secs % 60), 2);
	text_add(t, " +0000");
}

/* Return-Path: and Received: (RFC 5321 4.4), written before the message's first octet. */
static void start_message(struct session *s)
{
	const char *a = s->cfg->client_addr;
	/* RFC 6531 3.7.3: the "with" word says when the transaction used SMTPUTF8. */
	const char *with = !s->smtputf8 ? s->protocol : s->cfg->lmtp ? "UTF8LMTP" : "UTF8SMTP";
	struct text t = text_on((char *)s->chunk, DATA_CHUNK);

	text_add(&t, "Return-Path: <");
	text_add(&t, s->sender);
	text_add(&t, ">\nReceived: from ");
	text_add(&t, s->helo);
	if (*a != '\0') {
		text_add(&t, strchr(a, ':') ? " ([IPv6:" : " ([");
		text_add(&t, a);
		text_add(&t, "])");
	}
	if (s->tls_on && s->tls_protocol[0] != '\0' && s->tls_cipher[0] != '\0') {
		/* Postfix's words, which readers of headers know */
		text_add(&t, "\n\t(using ");
		text_add(&t, s->tls_protocol);
		text_add(&t, " with cipher ");
		text_add(&t, s->tls_cipher);
		if (s->tls_bits[0] != '\0') {
			text_add(&t, " (");
			text_add(&t, s->tls_bits);
			text_add(&t, " bits)");
		}
		text_add(&t, ")");
	}
	text_add(&t, "\n\tby ");
	text_add(&t, s->cfg->hostname);
	text_add(&t, " (smtpd) with ");
	text_add(&t, with);
	if (s->tls_on && s->extended) /* RFC 3848: ESMTPS, LMTPS; RFC 6531: UTF8SMTPS, UTF8LMTPS */
		text_add(&t, "S");
	text_add(&t, " id ");
	text_add(&t, s->md.id);
	text_add(&t, ";\n\t");
	add_date(&t);
	text_add(&t, "\n");
	s->chunk_len = s->prefix_len = t.len;
	s->body_octets = 0;
	s->first_line = FIRST_UNDECIDED;
	s->in_header = s->at_line_start = true;
	s->header_match = 0;
	s->received_count = 0;
	s->msg_size = 0;
}

/* A message still undecided here is empty or one line without a colon: body either way. Its
 * last line gets a line end if it lacks one (BDAT), whatever the buffer holds at this point. */
static void end_message(struct session *s)
{
	if (s->first_line == FIRST_UNDECIDED)
		decide_first_line(s, FIRST_IS_BODY);
	if (s->body_octets > 0 && s->last_octet != '\n')
		emit(s, (const unsigned char *)"\n", 1);
	chunk_flush(s);
}

/* ---- transactions ---- */

static void reset_transaction(struct session *s)
{
	if (s->cfg->milter_count > 0)
		milter_abort();
	md_reset(&s->md);
	s->sender[0] = '\0';
	s->smtputf8 = s->rcpt_tried = false;
	s->rcpt_count = 0;
	s->txn_error = RPL_NONE;
	s->msg_size = 0;
	if (s->state != ST_START)
		s->state = ST_READY;
}

static void log_delivery(struct session *s)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, "delivered id=");
	text_add(&t, s->md.id);
	text_add(&t, " from=<");
	log_add_value(&t, s->sender);
	text_add(&t, "> size=");
	text_add_num(&t, s->md.stored_bytes, 0);
	for (size_t i = 0; i < s->rcpt_count && !t.cut; i++) {
		struct md_box *box = &s->md.boxes[s->rcpts[i].box];
		if (box->result != MD_OK)
			continue;
		text_add(&t, " to=<");
		log_add_value(&t, s->rcpts[i].addr);
		text_add(&t, "> file=");
		log_add_value(&t, box->path);
		text_add(&t, "/new/");
		text_add(&t, box->file);
	}
	log_text(L_INFO, line);
}

/* "452 4.3.1 Insufficient..." as " reply=452 code=4.3.1", and the milter that gave it. */
static void add_reply_code(struct text *t, enum reply_id id)
{
	log_add_reply(t, replies[id].text);
	text_add(t, id == RPL_MILTER ? " milter=" : "");
	if (id == RPL_MILTER)
		log_add_value(t, milter_said.milter);
}

/* One line per recipient that did not get the message, naming its Maildir and what failed
 * there; in SMTP the others of the transaction are withdrawn with it. */
static void log_failure(struct session *s, const struct rcpt *rc, enum reply_id why)
{
	const struct md_box *box = &s->md.boxes[rc->box];
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, "failed id=");
	text_add(&t, s->md.id);
	text_add(&t, " to=<");
	log_add_value(&t, rc->addr);
	text_add(&t, "> path=");
	log_add_value(&t, box->path);
	text_add(&t, " op=");
	text_add(&t, box->fail_op ? box->fail_op : "withdrawn");
	text_add(&t, " errno=");
	if (box->fail_op)
		log_add_errno(&t, box->fail_errno);
	else
		text_add(&t, "-");
	add_reply_code(&t, why);
	log_text(L_WARN, line);
}

/* A message the client stopped sending: the session line alone would not show it. */
static void log_incomplete(struct session *s)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, "incomplete id=");
	text_add(&t, s->md.id[0] ? s->md.id : "-");
	text_add(&t, " from=<");
	log_add_value(&t, s->sender);
	text_add(&t, "> recipients=");
	text_add_num(&t, s->rcpt_count, 0);
	text_add(&t, " octets=");
	text_add_num(&t, s->msg_size, 0);
	text_add(&t, " end=");
	text_add(&t, s->end_reason ? s->end_reason : "-");
	log_text(L_WARN, line);
}

/* A message refused as a whole before delivery: too big, a loop, or the spool failed. */
static void log_rejected(struct session *s)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, "rejected id=");
	text_add(&t, s->md.id);
	text_add(&t, " from=<");
	log_add_value(&t, s->sender);
	text_add(&t, "> recipients=");
	text_add_num(&t, s->rcpt_count, 0);
	if (s->md.fail_op != NULL) {
		text_add(&t, " path=");
		log_add_value(&t, s->md.boxes[0].path); /* the spool's Maildir */
		text_add(&t, " op=");
		text_add(&t, s->md.fail_op);
		text_add(&t, " errno=");
		log_add_errno(&t, s->md.fail_errno);
	}
	add_reply_code(&t, s->txn_error);
	log_text(L_WARN, line);
}

/* The reply for recipient i: in SMTP the transaction's, in LMTP its own Maildir's outcome
 * first, whatever became of the others. */
static enum reply_id rcpt_outcome(const struct session *s, size_t i, enum md_result committed)
{
	enum md_result own = s->md.boxes[s->rcpts[i].box].result;

	if (s->cfg->lmtp && own != MD_OK)
		return md_replies[own];
	if (s->txn_error != RPL_NONE)
		return s->txn_error;
	if (!s->cfg->lmtp)
		return committed == MD_OK ? RPL_NONE : md_replies[committed];
	return RPL_NONE;
}

/* The milters' verdict on the whole message, their header changes put into the spool; a discard
 * stores nothing and answers 250. */
static enum milter_verdict milter_end(struct session *s)
{
	enum milter_verdict v = milter_message(&s->md, s->prefix_len, &milter_said);
	enum md_result r = v == MV_CONTINUE ? milter_apply(&s->md) : MD_OK;

	s->last_input_ms = now_ms();
	if (v == MV_REJECT || v == MV_TEMPFAIL)
		data_fail(s, RPL_MILTER);
	else if (r != MD_OK)
		data_fail(s, md_replies[r]);
	return v;
}

/* After the last octet: the reply, or in LMTP one reply per recipient (RFC 2033 4.2). */
static void finish_message(struct session *s)
{
	enum md_result committed = MD_TEMP;
	unsigned long delivered = 0;
	enum milter_verdict mv = MV_CONTINUE;

	end_message(s);
	if (s->txn_error == RPL_NONE && s->cfg->milter_count > 0)
		mv = milter_end(s);
	if (s->txn_error != RPL_NONE)
		log_rejected(s);
	else if (mv == MV_DISCARD)
		md_abort(&s->md), committed = MD_OK;
	else
		committed = md_commit(&s->md);
	for (size_t i = 0; i < s->rcpt_count; i++) {
		enum reply_id why = rcpt_outcome(s, i, committed);
		if (why == RPL_NONE)
			delivered++;
		else if (s->txn_error == RPL_NONE || s->md.boxes[s->rcpts[i].box].result != MD_OK)
			log_failure(s, &s->rcpts[i], why);
		if (i > 0 && !s->cfg->lmtp)
			continue;
		if (why == RPL_NONE)
			reply_around(s, "250 2.0.0 ", s->md.id, " delivered");
		else
			reply(s, why);
	}
	if (delivered > 0 && mv != MV_DISCARD) {
		log_delivery(s);
		s->refused_rcpts = 0;
		s->messages++;
		s->recipients += delivered;
		s->bytes += s->md.stored_bytes;
	}
	reset_transaction(s);
}

/* The common case in a strict session, outside the header: whole lines ending in CRLF, the
 * next one not starting with a dot. One memchr and one memcpy a line; a bare LF inside a line
 * is copied as it is. Returns where the careful state machine must take over. */
static const unsigned char *copy_lines(struct session *s, const unsigned char *p,
				       const unsigned char *end)
{
	while (!s->in_header) {
		const unsigned char *cr = memchr(p, '\r', (size_t)(end - p));
		if (cr == NULL || end - cr < 3 || cr[1] != '\n' || cr[2] == '.')
			break;
		size_t n = (size_t)(cr - p);
		if (n + 1 > DATA_CHUNK - s->chunk_len)
			break;
		if (s->txn_error == RPL_NONE) {
			memcpy(s->chunk + s->chunk_len, p, n);
			s->chunk[s->chunk_len + n] = '\n';
		}
		s->chunk_len += n + 1;
		s->body_octets += n + 1;
		s->last_octet = '\n';
		count_size(s, n + 2);
		p = cr + 2;
	}
	return p;
}

/* Strict sessions end the data only at CRLF.CRLF; a bare LF is stored as a line break but never
 * starts a line, so none of the smuggling sequences can end it. LF sessions take LF alone. */
static bool scan_data(struct session *s)
{
	const unsigned char *p = s->in + s->in_start, *end = s->in + s->in_end, *nl = NULL;
	bool lf_ends = s->ends == ENDS_LF, done = false;

	while (p < end && !done) {
		switch (s->dstate) {
		case D_TEXT: {
			if (!lf_ends && (p = copy_lines(s, p, end)) == end)
				break;
			/* Only an LF session needs to stop at a bare LF. */
			if (nl == NULL || nl < p) {
				nl = lf_ends ? memchr(p, '\n', (size_t)(end - p)) : NULL;
				nl = nl ? nl : end;
			}
			const unsigned char *cr = memchr(p, '\r', (size_t)(nl - p));
			const unsigned char *stop = cr ? cr : nl;
			emit(s, p, (size_t)(stop - p));
			count_size(s, (uint64_t)(stop - p));
			p = stop;
			if (p == end)
				break;
			if (*p == '\r') {
				s->dstate = D_CR;
			} else {
				emit(s, p, 1);
				count_size(s, lf_ends ? 2 : 1);
				s->dstate = lf_ends ? D_BOL : D_TEXT;
			}
			p++;
			break;
		}
		case D_CR:
			if (*p == '\n') {
				emit(s, p++, 1);
				count_size(s, 2);
				s->dstate = D_BOL;
			} else {
				emit(s, (const unsigned char *)"\r", 1);
				count_size(s, 1);
				s->dstate = D_TEXT;
			}
			break;
		case D_BOL:
			s->dstate = *p == '.' ? D_DOT : D_TEXT;
			p += *p == '.';
			break;
		case D_DOT:
			if (*p == '\r')
				s->dstate = D_DOT_CR, p++;
			else if (*p == '\n' && lf_ends)
				done = true, p++;
			else
				s->dstate = D_TEXT; /* the dot was stuffing */
			break;
		case D_DOT_CR:
			if (*p == '\n') {
				done = true, p++;
			} else {
				emit(s, (const unsigned char *)"\r", 1);
				count_size(s, 1);
				s->dstate = D_TEXT;
			}
			break;
		}
	}
	s->in_start = (size_t)(p - s->in);
	return done;
}

/* BDAT chunks are taken as sent (RFC 3030), but for CRLF, which is stored as LF, even when the
 * CR ends one chunk and the LF starts the next. */
static void bdat_emit(struct session *s, const unsigned char *p, size_t len)
{
	const unsigned char *end = p + len;

	if (s->bdat_cr_pending && p < end) {
		s->bdat_cr_pending = false;
		if (*p == '\n')
			emit(s, p++, 1);
		else
			emit(s, (const unsigned char *)"\r", 1);
	}
	while (p < end) {
		const unsigned char *cr = memchr(p, '\r', (size_t)(end - p));
		const unsigned char *stop = cr ? cr : end;
		emit(s, p, (size_t)(stop - p));
		p = stop;
		if (p == end)
			break;
		if (p + 1 == end) {
			s->bdat_cr_pending = true;
			p++;
		} else if (p[1] == '\n') {
			emit(s, p + 1, 1);
			p += 2;
		} else {
			emit(s, p++, 1);
		}
	}
}

static void bdat_chunk_done(struct session *s)
{
	s->input = IN_COMMANDS;
	if (s->bdat_reply != RPL_NONE) {
		reply(s, s->bdat_reply);
		return;
	}
	if (!s->bdat_last) {
		if (s->txn_error != RPL_NONE)
			reply(s, s->txn_error);
		else
			reply_around_num(s, "250 2.0.0 ", s->msg_size, " octets received");
		return;
	}
	if (s->bdat_cr_pending) {
		s->bdat_cr_pending = false;
		emit(s, (const unsigned char *)"\r", 1);
	}
	finish_message(s);
}

static bool scan_bdat(struct session *s)
{
	size_t avail = s->in_end - s->in_start;
	size_t n = s->bdat_left < avail ? (size_t)s->bdat_left : avail;

	if (s->bdat_reply == RPL_NONE) {
		bdat_emit(s, s->in + s->in_start, n);
		count_size(s, n);
	}
	s->in_start += n;
	s->bdat_left -= n;
	if (s->bdat_left > 0)
		return false;
	bdat_chunk_done(s);
	return true;
}

/* ---- verbs ---- */

enum verb {
	V_HELO,
	V_EHLO,
	V_LHLO,
	V_MAIL,
	V_RCPT,
	V_DATA,
	V_BDAT,
	V_RSET,
	V_NOOP,
	V_QUIT,
	V_VRFY,
	V_HELP,
	V_STARTTLS,
	V_NOT_IMPL,
};
enum arg_rule { ARG_NONE, ARG_OPTIONAL, ARG_REQUIRED };
enum { MODE_SMTP = 1, MODE_LMTP = 2, MODE_BOTH = 3 };

static void greet_client(struct session *s, char *arg, const char *protocol, bool extended)
{
	reset_transaction(s);
	size_t i = 0;
	for (; arg[i] != '\0' && i < HELO_MAX; i++) {
		unsigned char c = (unsigned char)arg[i];
		bool safe = is_alpha(c) || is_digit(c) || (c && strchr(".-_:[]", c));
		s->helo[i] = safe ? (char)c : '?';
	}
	s->helo[i] = '\0';
	if (s->cfg->milter_count > 0 &&
	    milter_helo(s->helo, s->tls_protocol, s->tls_cipher, &milter_said) != MV_CONTINUE)
		return reply(s, RPL_MILTER);
	s->protocol = protocol;
	s->extended = extended;
	s->state = ST_READY;
	if (!extended) {
		reply_around(s, "250 ", s->cfg->hostname, "");
		return;
	}
	reply_around(s, "250-", s->cfg->hostname, "");
	reply_text(s, "250-PIPELINING", 14);
	reply_around_num(s, "250-SIZE ", s->cfg->max_size, "");
	reply_text(s, "250-8BITMIME", 12);
	reply_text(s, "250-ENHANCEDSTATUSCODES", 23);
	reply_text(s, "250-SMTPUTF8", 12);
	reply_text(s, "250-CHUNKING", 12);
	if (s->cfg->tls && !s->tls_on)
		reply_text(s, "250-STARTTLS", 12);
	reply_text(s, "250 HELP", 8);
}

static void h_helo(struct session *s, char *arg)
{
	greet_client(s, arg, "SMTP", false);
}

static void h_ehlo(struct session *s, char *arg)
{
	greet_client(s, arg, "ESMTP", true);
}

static void h_lhlo(struct session *s, char *arg)
{
	greet_client(s, arg, "LMTP", true);
}

/* "FROM:" or "TO:", case-insensitive, then (a leniency) any spaces before the path. */
static const char *after_keyword(const char *arg, const char *keyword)
{
	size_t len = strlen(keyword);

	if (strncasecmp(arg, keyword, len) != 0)
		return NULL;
	arg += len;
	while (*arg == ' ')
		arg++;
	return arg;
}

/* One parameter "KEYWORD[=value]" (RFC 5321 4.1.2 esmtp-param) split in place. */
static bool split_param(char *param, char **value)
{
	char *eq = strchr(param, '=');

	if (!is_alpha((unsigned char)*param) && !is_digit((unsigned char)*param))
		return false;
	for (char *p = param; *p && p != eq; p++)
		if (!is_alpha((unsigned char)*p) && !is_digit((unsigned char)*p) && *p != '-')
			return false;
	*value = NULL;
	if (eq != NULL) {
		*eq = '\0';
		*value = eq + 1;
		if (**value == '\0')
			return false;
		for (char *p = *value; *p; p++)
			if ((unsigned char)*p < 33 || *p == '=' || *p == 127)
				return false;
	}
	return true;
}

static enum reply_id param_size(struct session *s, const char *value)
{
	if (value == NULL || strlen(value) > 20 || strspn(value, "0123456789") != strlen(value))
		return RPL_BAD_SIZE;
	errno = 0;
	unsigned long long size = strtoull(value, NULL, 10);
	if (errno == ERANGE || size > s->cfg->max_size)
		return RPL_TOO_BIG;
	s->md.declared_size = size;
	return RPL_NONE;
}

static enum reply_id param_body(struct session *s, const char *value)
{
	(void)s;
	if (value && (strcasecmp(value, "7BIT") == 0 || strcasecmp(value, "8BITMIME") == 0))
		return RPL_NONE;
	return RPL_BAD_BODY;
}

static enum reply_id param_smtputf8(struct session *s, const char *value)
{
	s->smtputf8 = true;
	return value == NULL ? RPL_NONE : RPL_BAD_PARAM;
}

/* The MAIL parameters we take (RFC 1870, 6152, 6531); each at most once. */
static const struct {
	const char *name;
	enum reply_id (*check)(struct session *, const char *);
} mail_params_known[] = {
	{ "SIZE", param_size },
	{ "BODY", param_body },
	{ "SMTPUTF8", param_smtputf8 },
};

static enum reply_id mail_param(struct session *s, char *param, unsigned *seen)
{
	char *value;

	if (!split_param(param, &value))
		return RPL_BAD_PARAM;
	for (unsigned i = 0; i < sizeof mail_params_known / sizeof mail_params_known[0]; i++) {
		if (strcasecmp(param, mail_params_known[i].name) != 0)
			continue;
		if (*seen & 1u << i)
			return RPL_BAD_PARAM;
		*seen |= 1u << i;
		return mail_params_known[i].check(s, value);
	}
	return RPL_UNKNOWN_PARAM;
}

static enum reply_id mail_params(struct session *s, char *rest)
{
	unsigned seen = 0;
	char *save = NULL;

	if (*rest == '\0')
		return RPL_NONE;
	if (*rest != ' ')
		return RPL_BAD_SENDER;
	if (!s->extended) /* after HELO: plain SMTP has no parameters */
		return RPL_UNKNOWN_PARAM;
	for (char *p = strtok_r(rest, " ", &save); p; p = strtok_r(NULL, " ", &save)) {
		enum reply_id r = mail_param(s, p, &seen);
		if (r != RPL_NONE)
			return r;
	}
	return RPL_NONE;
}

static void h_mail(struct session *s, char *arg)
{
	struct address a;
	const char *path = after_keyword(arg, "FROM:"), *rest = NULL;
	char params[LINE_MAX_OCTETS]; /* as sent, for the milters: mail_params cuts them up */

	s->smtputf8 = false;
	s->md.declared_size = 0;
	enum path_result pr = path ? parse_path(path, &a, &rest) : PATH_BAD;
	if (pr == PATH_BAD || pr == PATH_BAD_UTF8 || pr == PATH_POSTMASTER) {
		reply(s, pr == PATH_BAD_UTF8 ? RPL_BAD_UTF8 : RPL_BAD_SENDER);
		return;
	}
	if (s->cfg->milter_count > 0)
		text_copy(params, sizeof params, rest);
	enum reply_id r = mail_params(s, (char *)rest);
	if (r == RPL_NONE && a.has_8bit && !s->smtputf8)
		r = RPL_NEED_UTF8;
	if (r == RPL_NONE && s->cfg->milter_count > 0 &&
	    milter_mail(a.text, params, &milter_said) != MV_CONTINUE)
		r = RPL_MILTER;
	if (r != RPL_NONE) {
		s->smtputf8 = false;
		reply(s, r);
		return;
	}
	text_copy(s->sender, sizeof s->sender, a.text);
	s->state = ST_MAIL;
	reply(s, RPL_MAIL_OK);
}

/* One log line per refused recipient, so that "recipients=0" is never the only trace; for a
 * Maildir's verdict it names the path that decided and what is wrong there. */
static void refuse_rcpt(struct session *s, const char *to, enum reply_id id, bool looked)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, "refused client=");
	text_add(&t, s->cfg->client_addr[0] ? s->cfg->client_addr : "-");
	text_add(&t, " from=<");
	log_add_value(&t, s->sender);
	text_add(&t, "> to=<");
	log_add_value(&t, to);
	text_add(&t, ">");
	add_reply_code(&t, id);
	log_add_reason(&t, replies[id].text);
	if (looked && s->md.why_path[0] != '\0') {
		bool maildir = id == RPL_NO_USER || id == RPL_TEMP;
		const char *detail = maildir ? md_explain(s->md.why_path) : NULL;
		text_add(&t, " path=");
		log_add_value(&t, s->md.why_path);
		text_add(&t, detail ? " detail=" : "");
		text_add(&t, detail ? detail : "");
		text_add(&t, s->md.why_errno ? " errno=" : "");
		if (s->md.why_errno)
			log_add_errno(&t, s->md.why_errno);
	}
	log_text(L_WARN, line);
	reply(s, id);
	/* Each refusal is a log line: past the limit the session ends, so that the log grows no
	 * faster than the session's own work (Postfix's smtpd_hard_error_limit, likewise reset
	 * by a delivery). */
	if (!s->done && ++s->refused_rcpts > MAX_REFUSED_RCPT) {
		reply_around(s, "421 4.7.0 ", s->cfg->hostname,
			     " Too many refused recipients, closing");
		end_session(s, EXIT_DROPPED, "too-many-refusals");
	}
}

/* The path as the client wrote it, for the log of a recipient that could not be parsed. */
static const char *raw_path(const char *path, char *buf, size_t size)
{
	size_t len = strcspn(path, " ");

	if (len >= 2 && path[0] == '<' && path[len - 1] == '>')
		path++, len -= 2;
	struct text t = text_on(buf, size);
	text_add_n(&t, path, len);
	return buf;
}

/* -d: the domains this host receives for, whatever the template would take. <postmaster>
 * without a domain is every host's (RFC 5321 4.5.1) and is never refused here. */
static bool domain_local(const struct config *cfg, enum path_result pr, const char *domain)
{
	size_t len = strlen(domain);

	if (cfg->domains == NULL || pr == PATH_POSTMASTER)
		return true;
	for (const char *p = cfg->domains; *p != '\0'; p += *p == ',') {
		size_t item = strcspn(p, ",");
		if (item == len && strncasecmp(p, domain, len) == 0)
			return true;
		p += item;
	}
	return false;
}

static void h_rcpt(struct session *s, char *arg)
{
	struct address a;
	const char *path = after_keyword(arg, "TO:"), *rest = NULL;
	size_t box;
	char raw[LINE_MAX_OCTETS];

	s->rcpt_tried = true;
	enum path_result pr = path ? parse_path(path, &a, &rest) : PATH_BAD;
	if (pr == PATH_BAD || pr == PATH_BAD_UTF8 || pr == PATH_NULL ||
	    (*rest != '\0' && *rest != ' ')) {
		refuse_rcpt(s, raw_path(path ? path : arg, raw, sizeof raw),
			    pr == PATH_BAD_UTF8 ? RPL_BAD_UTF8 : RPL_BAD_RCPT, false);
		return;
	}
	if (*rest != '\0') {
		refuse_rcpt(s, a.text, RPL_UNKNOWN_PARAM, false);
		return;
	}
	if (a.has_8bit && !s->smtputf8) {
		refuse_rcpt(s, a.text, RPL_NEED_UTF8, false);
		return;
	}
	if (s->rcpt_count >= s->cfg->max_rcpt) {
		refuse_rcpt(s, a.text, RPL_TOO_MANY_RCPT, false);
		return;
	}
	if (!domain_local(s->cfg, pr, a.domain)) {
		refuse_rcpt(s, a.text, RPL_NO_DOMAIN, false);
		return;
	}
	const char *domain = pr == PATH_POSTMASTER ? s->cfg->hostname : a.domain;
	size_t boxes = s->md.box_count;
	enum md_result r = md_add(&s->md, s->cfg->mail_template, a.local, domain, &box);
	if (r != MD_OK) {
		refuse_rcpt(s, a.text, md_replies[r], true);
		return;
	}
	if (s->cfg->milter_count > 0 && milter_rcpt(a.text, &milter_said) != MV_CONTINUE) {
		md_forget_boxes(&s->md, boxes);
		refuse_rcpt(s, a.text, RPL_MILTER, false);
		return;
	}
	struct rcpt *rc = &s->rcpts[s->rcpt_count++];
	text_copy(rc->addr, sizeof rc->addr, a.text);
	rc->box = box;
	s->state = ST_RCPT;
	reply(s, RPL_RCPT_OK);
}

/* The spool for a message, and the milters told of its DATA: the reply refusing it, or none. */
static enum reply_id begin_message(struct session *s)
{
	enum md_result r = md_begin(&s->md);

	if (r == MD_OK && s->cfg->milter_count > 0 &&
	    milter_data(s->md.id, &milter_said) != MV_CONTINUE)
		return RPL_MILTER;
	return md_replies[r];
}

static void h_data(struct session *s, char *arg)
{
	(void)arg;
	enum reply_id why = begin_message(s);
	if (why != RPL_NONE) {
		data_fail(s, why);
		log_rejected(s);
		reply(s, why);
		reset_transaction(s);
		return;
	}
	reply(s, RPL_DATA_GO);
	start_message(s);
	s->input = IN_DATA;
	s->dstate = D_BOL;
}

static enum reply_id sequence_error(const struct session *s, enum verb verb);

/* "BDAT <size> [LAST]". The chunk is read whatever the reply, or it would be taken for commands. */
static void h_bdat(struct session *s, char *arg)
{
	char *end;

	if (!is_digit((unsigned char)*arg) || strspn(arg, "0123456789") > 20) {
		reply(s, RPL_BAD_BDAT);
		return;
	}
	errno = 0;
	unsigned long long size = strtoull(arg, &end, 10);
	bool last = strcasecmp(end, " LAST") == 0;
	if (errno == ERANGE || (*end != '\0' && !last)) {
		reply(s, RPL_BAD_BDAT);
		return;
	}
	s->bdat_left = size;
	s->bdat_last = last;
	s->bdat_reply = RPL_NONE;
	s->input = IN_BDAT;
	if (!s->extended && s->state != ST_START) {
		s->bdat_reply = RPL_NEED_EHLO; /* CHUNKING exists only after EHLO or LHLO */
	} else if (s->state == ST_RCPT) {
		enum reply_id why = begin_message(s);
		start_message(s);
		if (why != RPL_NONE)
			data_fail(s, why);
		s->state = ST_BDAT;
		s->bdat_cr_pending = false;
	} else if (s->state != ST_BDAT) {
		s->bdat_reply = sequence_error(s, V_DATA); /* out of order just as DATA would be */
	}
}

static void h_rset(struct session *s, char *arg)
{
	(void)arg;
	reset_transaction(s);
	reply(s, RPL_OK);
}

static void h_noop(struct session *s, char *arg)
{
	(void)arg;
	reply(s, RPL_OK);
}

static void h_quit(struct session *s, char *arg)
{
	(void)arg;
	reply_around(s, "221 2.0.0 ", s->cfg->hostname, " closing");
	end_session(s, EXIT_QUIT, "quit");
}

static void h_vrfy(struct session *s, char *arg)
{
	(void)arg;
	reply(s, RPL_VRFY);
}

static void h_help(struct session *s, char *arg)
{
	(void)arg;
	reply(s, s->cfg->lmtp ? RPL_HELP_LMTP : RPL_HELP);
}

static void h_not_impl(struct session *s, char *arg)
{
	(void)arg;
	reply(s, RPL_NOT_IMPL);
}

/* ---- STARTTLS through the launcher (UCSPI-TLS, ucspi-tls(2)) ---- */

/* One value of the launcher's, kept only as a log token and comment text can carry it. */
static void keep_tls_value(char *dst, size_t size, const char *value, const char *allowed)
{
	size_t i = 0;

	for (; value[i] != '\0' && i + 1 < size; i++)
		dst[i] = strchr(allowed, value[i]) != NULL ? value[i] : '?';
	dst[i] = '\0';
}

/* "VAR=value\0...\0" as mod_ssl names them; we keep the protocol, cipher and key sizes. */
static void keep_tls_info(struct session *s, const char *info)
{
	static const char name_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
					 "0123456789._-";
	const char *use = "", *alg = "";

	for (const char *e = info; *e != '\0'; e += strlen(e) + 1) {
		if (strncmp(e, "SSL_PROTOCOL=", 13) == 0)
			keep_tls_value(s->tls_protocol, sizeof s->tls_protocol, e + 13, name_chars);
		else if (strncmp(e, "SSL_CIPHER=", 11) == 0)
			keep_tls_value(s->tls_cipher, sizeof s->tls_cipher, e + 11, name_chars);
		else if (strncmp(e, "SSL_CIPHER_USEKEYSIZE=", 22) == 0)
			use = e + 22;
		else if (strncmp(e, "SSL_CIPHER_ALGKEYSIZE=", 22) == 0)
			alg = e + 22;
	}
	size_t use_len = strlen(use), alg_len = strlen(alg);
	if (use_len == 0 || use_len > 5 || strspn(use, "0123456789") != use_len || alg_len == 0 ||
	    alg_len > 5 || strspn(alg, "0123456789") != alg_len)
		return;
	struct text t = text_on(s->tls_bits, sizeof s->tls_bits);
	text_add(&t, use);
	text_add(&t, "/");
	text_add(&t, alg);
}

/* The launcher may give one fd for control and clear text (ucspi-tls(2) allows it): then what
 * came after the list is the client's first input under TLS. */
static void keep_after_info(struct session *s, size_t end, size_t len)
{
	if (s->cfg->tls_ctl != s->cfg->tls_rd || end >= len)
		return;
	memmove(s->in, s->in + end, len - end);
	s->in_end = len - end;
}

/* Asks the launcher to start TLS with "Y" and reads back what it says of the connection,
 * which it writes once the handshake is over: so the -t and -T deadlines bound a handshake
 * that never ends. The list ends at its first empty entry; EOF before that is a failed
 * handshake. The read buffer, just emptied, holds the list. */
static bool tls_handshake(struct session *s)
{
	int ctl = s->cfg->tls_ctl;
	size_t len = 0;
	ssize_t n;

	do
		n = poll_fd(s, ctl, POLLOUT) > 0 ? write(ctl, "Y", 1) : 0;
	while (n < 0 && (errno == EINTR || errno == EAGAIN));
	if (n != 1)
		return false;
	for (;;) {
		for (size_t e = 0; e < len; e++) {
			if (s->in[e] == '\0') {
				s->in[len] = '\0';
				keep_tls_info(s, (const char *)s->in);
				keep_after_info(
					s, e == 0 && len > 1 && s->in[1] == '\0' ? 2 : e + 1, len);
				return true;
			}
			e += strnlen((const char *)s->in + e, len - e);
		}
		if (len == TLS_INFO_MAX)
			return false;
		n = poll_fd(s, ctl, POLLIN) > 0 ? read(ctl, s->in + len, TLS_INFO_MAX - len) : 0;
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return false;
		len += (size_t)n;
	}
}

/* RFC 3207 4.2: after the handshake the client starts from nothing, as on a new connection. */
static void forget_session(struct session *s)
{
	reset_transaction(s);
	s->state = ST_START;
	s->helo[0] = '\0';
	s->protocol = "SMTP";
	s->extended = false;
}

static void h_starttls(struct session *s, char *arg)
{
	if (!s->cfg->tls)
		return reply(s, RPL_NOT_IMPL);
	if (s->tls_on)
		return reply(s, RPL_TLS_ACTIVE);
	if (*arg != '\0')
		return reply(s, RPL_NO_ARGS);
	if (s->state != ST_READY)
		return reply(s, sequence_error(s, V_STARTTLS));
	reply(s, RPL_TLS_GO);
	flush_out(s);
	if (s->done)
		return;
	/* What the client sent after STARTTLS came in clear text: it is not the client's word
	 * under TLS, and is dropped unread (the command injection of CVE-2011-0411). */
	s->in_start = s->in_end = 0;
	/* fds 0 and 1 belong to the launcher from now on, even if the handshake fails. */
	s->tls_on = true;
	s->fd[0] = s->cfg->tls_rd;
	s->fd[1] = s->cfg->tls_wr;
	s->fd_not_socket[0] = s->fd_not_socket[1] = false;
	if (!tls_handshake(s)) {
		end_session(s, EXIT_DROPPED, ms_left(s) == 0 ? "tls-timeout" : "tls-failed");
		return; /* the log keeps the HELO name the client gave in clear text */
	}
	forget_session(s);
	s->last_input_ms = now_ms();
}

static const struct command {
	const char *name;
	enum verb verb;
	void (*handle)(struct session *, char *);
	unsigned states; /* where the verb is in sequence; elsewhere 503 */
	enum arg_rule arg;
	unsigned modes;
} commands[] = {
	{ "HELO", V_HELO, h_helo, ST_ANY, ARG_REQUIRED, MODE_SMTP },
	{ "EHLO", V_EHLO, h_ehlo, ST_ANY, ARG_REQUIRED, MODE_SMTP },
	{ "LHLO", V_LHLO, h_lhlo, ST_ANY, ARG_REQUIRED, MODE_LMTP },
	{ "MAIL", V_MAIL, h_mail, ST_READY, ARG_REQUIRED, MODE_BOTH },
	{ "RCPT", V_RCPT, h_rcpt, ST_MAIL | ST_RCPT, ARG_REQUIRED, MODE_BOTH },
	{ "DATA", V_DATA, h_data, ST_RCPT, ARG_NONE, MODE_BOTH },
	{ "BDAT", V_BDAT, h_bdat, ST_ANY, ARG_REQUIRED, MODE_BOTH },
	{ "RSET", V_RSET, h_rset, ST_ANY, ARG_NONE, MODE_BOTH },
	{ "NOOP", V_NOOP, h_noop, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "QUIT", V_QUIT, h_quit, ST_ANY | ST_SHUNNED, ARG_NONE, MODE_BOTH },
	{ "VRFY", V_VRFY, h_vrfy, ST_ANY, ARG_REQUIRED, MODE_BOTH },
	{ "HELP", V_HELP, h_help, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "EXPN", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "TURN", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "ATRN", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "ETRN", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "SEND", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "SOML", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "SAML", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "STARTTLS", V_STARTTLS, h_starttls, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "AUTH", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
	{ "BURL", V_NOT_IMPL, h_not_impl, ST_ANY, ARG_OPTIONAL, MODE_BOTH },
};

/* The one place that answers a verb given out of order. */
static enum reply_id sequence_error(const struct session *s, enum verb verb)
{
	if (s->state == ST_SHUNNED)
		return RPL_BAD_SEQUENCE;
	if (s->state == ST_START)
		return s->cfg->lmtp ? RPL_NEED_LHLO : RPL_NEED_HELO;
	switch (verb) {
	case V_MAIL: return RPL_NESTED_MAIL;
	case V_RCPT: return s->state == ST_READY ? RPL_NEED_MAIL : RPL_BAD_SEQUENCE;
	case V_DATA:
		if (s->state == ST_BDAT)
			return RPL_DATA_AFTER_BDAT;
		if (s->state == ST_MAIL)
			return s->rcpt_tried ? RPL_NO_VALID_RCPT : RPL_NEED_RCPT;
		return RPL_NEED_MAIL;
	default: return RPL_BAD_SEQUENCE;
	}
}

static void dispatch(struct session *s, char *line)
{
	size_t verb_len = strcspn(line, " ");
	char *arg = line + verb_len;
	unsigned mode = s->cfg->lmtp ? MODE_LMTP : MODE_SMTP;

	while (*arg == ' ')
		arg++;
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
		const struct command *c = &commands[i];
		/* The first letter, either case, rules out most rows before any call (| 0x20 may
		 * let a non-letter through: strncasecmp still decides). */
		if ((line[0] | 0x20) != (c->name[0] | 0x20) || strlen(c->name) != verb_len ||
		    strncasecmp(line, c->name, verb_len) != 0 || !(c->modes & mode))
			continue;
		if (c->arg == ARG_NONE && *arg != '\0')
			reply(s, RPL_NO_ARGS);
		else if (c->arg == ARG_REQUIRED && *arg == '\0')
			reply(s, RPL_NEED_ARG);
		else if (!(c->states & s->state))
			reply(s, sequence_error(s, c->verb));
		else
			c->handle(s, arg);
		return;
	}
	reply(s, RPL_UNKNOWN);
}

/* Takes one command line from the buffer. The first line decides the session's line ends. */
static bool next_command(struct session *s)
{
	unsigned char *line = s->in + s->in_start;
	size_t avail = s->in_end - s->in_start;
	unsigned char *nl = memchr(line, '\n', avail);

	if (nl == NULL) {
		if (avail < LINE_MAX_OCTETS)
			return false;
		/* Keep a final CR: it may be the first half of the CRLF that ends this line. */
		s->in_start = s->in_end - (line[avail - 1] == '\r');
		if (s->input == IN_COMMANDS)
			reply(s, RPL_LINE_LONG);
		s->input = IN_DISCARD_LINE;
		return true;
	}
	size_t len = (size_t)(nl - line) + 1;
	bool crlf = len >= 2 && nl[-1] == '\r';
	s->in_start += len;
	if (s->input == IN_DISCARD_LINE) {
		s->input = IN_COMMANDS;
		return true;
	}
	if (s->ends == ENDS_UNKNOWN)
		s->ends = crlf ? ENDS_CRLF : ENDS_LF;
	if (len > LINE_MAX_OCTETS) {
		reply(s, RPL_LINE_LONG);
		return true;
	}
	if (s->ends == ENDS_CRLF && !crlf) {
		reply(s, RPL_BARE_LF);
		return true;
	}
	len -= crlf ? 2 : 1;
	if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL) {
		reply(s, RPL_BAD_CHAR);
		return true;
	}
	char text[LINE_MAX_OCTETS];
	while (len > 0 && line[len - 1] == ' ')
		len--;
	memcpy(text, line, len);
	text[len] = '\0';
	dispatch(s, text);
	return true;
}

/* Does what the buffered input allows; false when more input is needed. */
static bool step(struct session *s)
{
	switch (s->input) {
	case IN_DATA:
		if (!scan_data(s))
			return false;
		s->input = IN_COMMANDS;
		finish_message(s);
		return true;
	case IN_BDAT: return scan_bdat(s);
	case IN_COMMANDS:
	case IN_DISCARD_LINE: return next_command(s);
	}
	return false;
}

static void log_session(struct session *s)
{
	long long ms = now_ms() - s->started_ms;
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, "session client=");
	text_add(&t, s->cfg->client_addr[0] ? s->cfg->client_addr : "-");
	text_add(&t, " helo=");
	text_add(&t, s->helo[0] ? s->helo : "-");
	text_add(&t, " messages=");
	text_add_num(&t, s->messages, 0);
	text_add(&t, " recipients=");
	text_add_num(&t, s->recipients, 0);
	text_add(&t, " bytes=");
	text_add_num(&t, s->bytes, 0);
	text_add(&t, " end=");
	text_add(&t, s->end_reason ? s->end_reason : "-");
	text_add(&t, " seconds=");
	text_add_num(&t, (unsigned long long)(ms > 0 ? ms : 0) / 1000, 0);
	text_add(&t, ".");
	text_add_num(&t, (unsigned long long)(ms > 0 ? ms : 0) % 1000, 3);
	if (s->tls_on) {
		text_add(&t, " tls=");
		text_add(&t, s->tls_protocol[0] ? s->tls_protocol : "-");
		text_add(&t, " tls_cipher=");
		text_add(&t, s->tls_cipher[0] ? s->tls_cipher : "-");
	}
	log_text(L_INFO, line);
}

/* The greeting, unless a milter refuses the connection (RFC 5321 3.1): 421 and the end, or 554
 * and then 503 to all but QUIT. */
static void greet(struct session *s)
{
	bool refused = false;

	s->greeted = true;
	if (s->cfg->milter_count > 0) {
		refused = milter_connect(s->cfg, &milter_said) != MV_CONTINUE;
		s->last_input_ms = now_ms(); /* the milters' time is not the client's silence */
	}
	if (!refused)
		return reply_around(s, "220 ", s->cfg->hostname,
				    s->cfg->lmtp ? " LMTP smtpd" : " ESMTP smtpd");
	reply(s, RPL_MILTER);
	s->state = ST_SHUNNED;
	if (milter_said.text[0] == '4')
		end_session(s, EXIT_DROPPED, "milter-tempfail");
}

int smtp_session(struct config *cfg)
{
	struct session *s = &S;

	/* The buffers at the end are always written before they are read: clearing them would
	 * cost more than the rest of a session (and touch 200 KiB of memory). */
	memset(s, 0, offsetof(struct session, in_start));
	s->in_start = s->in_end = s->out_len = 0;
	s->cfg = cfg;
	s->fd[0] = 0;
	s->fd[1] = 1;
	s->state = ST_START;
	s->protocol = "SMTP";
	s->started_ms = s->last_input_ms = now_ms();
	s->rcpts = malloc(cfg->max_rcpt * sizeof *s->rcpts);
	if (s->rcpts == NULL || md_txn_init(&s->md, cfg->max_rcpt) != 0) {
		log_line(L_ERR, "out of memory");
		free(s->rcpts);
		return EXIT_TEMPFAIL;
	}
	s->md.each_alone = cfg->lmtp;
	s->md.detail_folders = cfg->detail_folders;
	if (cfg->proxy && !read_proxy_header(s))
		end_session(s, EXIT_DROPPED, "bad-proxy-header");
	else
		greet(s);
	while (!s->done)
		if (!step(s) && !s->done)
			fill_in(s);
	flush_out(s);
	if (s->input == IN_DATA || s->input == IN_BDAT || s->state == ST_BDAT)
		log_incomplete(s);
	if (cfg->milter_count > 0)
		milter_quit();
	log_session(s);
	md_txn_free(&s->md);
	free(s->rcpts);
	return s->exit_status;
}

/* ---- the address probe (-b): RCPT's verdict without a session ---- */

static const char *errno_name(int e)
{
	static char name[24];
	struct text t = text_on(name, sizeof name);

	log_add_errno(&t, e);
	return name;
}

/* One address: what RCPT would answer, and for an accepted one whether DATA could deliver
 * there. Returns true when mail to it would be delivered. */
static bool probe_one(struct config *cfg, struct md_txn *txn, const char *addr)
{
	char path_text[LINE_MAX_OCTETS];
	struct text t = text_on(path_text, sizeof path_text);
	struct address a;
	const char *rest = "", *detail = NULL;
	size_t box;
	enum reply_id id = RPL_NONE;

	text_add(&t, addr[0] == '<' ? "" : "<");
	text_add(&t, addr);
	text_add(&t, addr[0] == '<' ? "" : ">");
	enum path_result pr = t.cut ? PATH_BAD : parse_path(path_text, &a, &rest);
	if (pr == PATH_BAD || pr == PATH_BAD_UTF8 || pr == PATH_NULL || *rest != '\0')
		id = pr == PATH_BAD_UTF8 ? RPL_BAD_UTF8 : RPL_BAD_RCPT;
	else if (!domain_local(cfg, pr, a.domain))
		id = RPL_NO_DOMAIN;
	const char *domain = pr == PATH_POSTMASTER ? cfg->hostname : a.domain;
	enum md_result r =
		id != RPL_NONE ? MD_OK : md_add(txn, cfg->mail_template, a.local, domain, &box);
	const char *path = id != RPL_NONE ? "" : r == MD_OK ? txn->boxes[box].path : txn->why_path;
	if (r != MD_OK)
		id = md_replies[r];
	if ((id == RPL_NONE || id == RPL_NO_USER || id == RPL_TEMP) && path[0] != '\0')
		detail = md_explain(path);
	/* A catch-all that is not there yet is made by the first session. */
	bool made = id == RPL_NONE && detail != NULL && md_is_catch_all(cfg->mail_template) &&
		    strstr(detail, "missing") != NULL;
	if (id == RPL_NONE && detail != NULL && !made)
		id = RPL_TEMP; /* RCPT would take it; DATA would fail there */
	if (id == RPL_NONE)
		printf("%s: deliver to %s%s\n", addr, path,
		       made ? " (made by the first session)" : "");
	else if (path[0] == '\0')
		printf("%s: %s\n", addr, replies[id].text);
	else if (detail == NULL && txn->why_errno != 0)
		printf("%s: %s: %s: %s (%s)\n", addr, replies[id].text, path,
		       errno_name(txn->why_errno), strerror(txn->why_errno));
	else
		printf("%s: %s: %s%s%s\n", addr, replies[id].text, path, detail ? ": " : "",
		       detail ? detail : "");
	md_reset(txn);
	return id == RPL_NONE;
}

int smtp_probe(struct config *cfg, char **addrs, size_t count)
{
	struct md_txn txn;
	bool all = true;

	if (md_txn_init(&txn, 1) != 0) {
		log_line(L_ERR, "out of memory");
		return EXIT_TEMPFAIL;
	}
	txn.detail_folders = cfg->detail_folders;
	for (size_t i = 0; i < count; i++)
		all &= probe_one(cfg, &txn, addrs[i]);
	md_txn_free(&txn);
	return all ? EXIT_QUIT : EXIT_PROBE_FAILED;
}
