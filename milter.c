/* milter.c: the -M mail filters. smtpd is their client in the Sendmail milter protocol, version
 * 6, as Postfix's smtpd_milters speaks it: the wire format is libmilter's (mfdef.h), and what a
 * reply means at each stage is what Postfix makes of it (milter8.c), down to the choices milters
 * have come to rely on: our own Received: field is not shown to them, and a header inserted at
 * index 1 lands right after it. The milters are asked in -M order; the first that refuses
 * decides. Every wait is bounded, and every length read off the wire is checked before its data
 * is waited for; the buffers are fixed in size, taken once per session, never sized by a length
 * read off the wire. */
#define _POSIX_C_SOURCE 200809L
#include "smtp.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* What we send (SMFIC_) and what a milter answers (SMFIR_), from libmilter's mfdef.h. */
enum {
	SMFIC_ABORT = 'A',
	SMFIC_BODY = 'B',
	SMFIC_CONNECT = 'C',
	SMFIC_MACRO = 'D',
	SMFIC_BODYEOB = 'E',
	SMFIC_HELO = 'H',
	SMFIC_HEADER = 'L',
	SMFIC_MAIL = 'M',
	SMFIC_EOH = 'N',
	SMFIC_OPTNEG = 'O',
	SMFIC_QUIT = 'Q',
	SMFIC_RCPT = 'R',
	SMFIC_DATA = 'T',
};
enum {
	SMFIR_ADDRCPT = '+',
	SMFIR_DELRCPT = '-',
	SMFIR_ADDRCPT_PAR = '2',
	SMFIR_ACCEPT = 'a',
	SMFIR_REPLBODY = 'b',
	SMFIR_CONTINUE = 'c',
	SMFIR_DISCARD = 'd',
	SMFIR_CHGFROM = 'e',
	SMFIR_ADDHEADER = 'h',
	SMFIR_INSHEADER = 'i',
	SMFIR_CHGHEADER = 'm',
	SMFIR_PROGRESS = 'p',
	SMFIR_QUARANTINE = 'q',
	SMFIR_REJECT = 'r',
	SMFIR_SKIP = 's',
	SMFIR_TEMPFAIL = 't',
	SMFIR_REPLYCODE = 'y',
};

/* Actions a milter may take (SMFIF_): we offer only those we carry out. */
#define SMFIF_ADDHDRS    0x01u /* add and insert header fields */
#define SMFIF_CHGHDRS    0x10u /* change and delete them */
#define SMFIF_QUARANTINE 0x20u
#define OFFERED_ACTIONS  (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE)

/* Protocol steps (SMFIP_): what the milter does not want to get, and will not answer. */
#define SMFIP_NOCONNECT   0x000001u
#define SMFIP_NOHELO      0x000002u
#define SMFIP_NOMAIL      0x000004u
#define SMFIP_NORCPT      0x000008u
#define SMFIP_NOBODY      0x000010u
#define SMFIP_NOHDRS      0x000020u
#define SMFIP_NOEOH       0x000040u
#define SMFIP_NR_HDR      0x000080u
#define SMFIP_NOUNKNOWN   0x000100u
#define SMFIP_NODATA      0x000200u
#define SMFIP_SKIP        0x000400u
#define SMFIP_NR_CONN     0x001000u
#define SMFIP_NR_HELO     0x002000u
#define SMFIP_NR_MAIL     0x004000u
#define SMFIP_NR_RCPT     0x008000u
#define SMFIP_NR_DATA     0x010000u
#define SMFIP_NR_UNKN     0x020000u
#define SMFIP_NR_EOH      0x040000u
#define SMFIP_NR_BODY     0x080000u
#define SMFIP_HDR_LEADSPC 0x100000u
/* All of version 6 but SMFIP_RCPT_REJ: we never tell a milter of a recipient we refused. */
#define OFFERED_STEPS 0x1ff7ffu

enum {
	PROTOCOL_VERSION = 6,
	READ_BUF = 65536,   /* the spool, read through one buffer */
	PENDING_BUF = 8192, /* a milter's packets not yet written: envelope events and headers */
	MACROS_BUF = 4096,  /* one stage's macros: a handful of names and short values */
	REASON_MAX = 64,    /* what we log of a quarantine's reason */
	FIELD_HEAD = MILTER_NAME_MAX + 2, /* of a header line: enough to see its name and colon */
};

/* The events, in the order a message meets them. */
enum event { EV_CONNECT, EV_HELO, EV_MAIL, EV_RCPT, EV_DATA, EV_HEADER, EV_EOH, EV_BODY, EV_EOB };

static const struct {
	char cmd;
	uint32_t unwanted; /* SMFIP_NO*: the milter asked not to get it */
	uint32_t no_reply; /* SMFIP_NR_*: it will not answer it */
	const char *stage; /* its name in the log */
} events[] = {
	[EV_CONNECT] = { SMFIC_CONNECT, SMFIP_NOCONNECT, SMFIP_NR_CONN, "connect" },
	[EV_HELO] = { SMFIC_HELO, SMFIP_NOHELO, SMFIP_NR_HELO, "helo" },
	[EV_MAIL] = { SMFIC_MAIL, SMFIP_NOMAIL, SMFIP_NR_MAIL, "mail" },
	[EV_RCPT] = { SMFIC_RCPT, SMFIP_NORCPT, SMFIP_NR_RCPT, "rcpt" },
	[EV_DATA] = { SMFIC_DATA, SMFIP_NODATA, SMFIP_NR_DATA, "data" },
	[EV_HEADER] = { SMFIC_HEADER, SMFIP_NOHDRS, SMFIP_NR_HDR, "header" },
	[EV_EOH] = { SMFIC_EOH, SMFIP_NOEOH, SMFIP_NR_EOH, "header" },
	[EV_BODY] = { SMFIC_BODY, SMFIP_NOBODY, SMFIP_NR_BODY, "body" },
	[EV_EOB] = { SMFIC_BODYEOB, 0, 0, "eom" },
};

/* Our replies, each in one place. */
static const char tempfail_text[] = "451 4.7.1 Service unavailable, try again later";
static const char reject_text[] = "550 5.7.1 Command rejected";
static const char failed_reject_text[] = "550 5.7.1 Service unavailable";
static const char quarantine_text[] = "451 4.7.1 Message held by a filter, try again later";
static const char connect_reject_text[] = "554 5.7.1 No SMTP service here";
static const char no_memory_text[] = "421 4.3.0 Insufficient memory, try again later";

/* ---- header changes: kept in order, applied as a chain of filters over the header fields ---- */

struct edit {
	char kind;      /* SMFIR_ADDHEADER, SMFIR_INSHEADER or SMFIR_CHGHEADER */
	uint32_t index; /* where to insert; which instance of the name to change */
	size_t name, name_len, value, value_len; /* in text[]; the value as it follows the colon */
};

struct edits {
	size_t count, used;
	struct edit list[MILTER_EDITS_MAX];
	char text[MILTER_EDIT_BYTES];
};

/* ---- parsing what a milter sends: pure, and reachable from the fuzz target ---- */

enum step { STEP_MORE, STEP_DONE, STEP_ERROR };

/* The replies to one event. */
struct exchange {
	char event;                  /* the SMFIC_ command they answer */
	uint32_t actions;            /* SMFIF_ agreed on */
	bool lead_space;             /* header values come with the space after the colon */
	struct edits *edits;         /* header changes go here (end of message only) */
	char verdict;                /* the final reply's command */
	char reply[LINE_MAX_OCTETS]; /* SMFIR_REPLYCODE: the line the client gets */
	bool progress;               /* SMFIR_PROGRESS came: the wait starts again */
	bool quarantined;
	char reason[REASON_MAX + 1]; /* the quarantine's, as one log token */
	char ignored;                /* the first reply not acted on: an action we did not offer */
	uint32_t version, steps;     /* SMFIC_OPTNEG's answer */
	const char *error;           /* STEP_ERROR: one word for the log */
};

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static enum step broken(struct exchange *x, const char *error)
{
	x->error = error;
	return STEP_ERROR;
}

/* "c.d[dd].d[dd]" of class c, then a space or the end: its length, or 0. */
static size_t enhanced_len(const unsigned char *p, size_t n, unsigned char class)
{
	size_t i = 2;

	if (n < 5 || p[0] != class || p[1] != '.')
		return 0;
	for (int part = 0; part < 2; part++) {
		size_t digits = 0;
		while (i < n && p[i] >= '0' && p[i] <= '9' && digits < 4)
			i++, digits++;
		if (digits == 0 || digits > 3 || (part == 0 && (i >= n || p[i] != '.')))
			return 0;
		i += part == 0;
	}
	return i == n || p[i] == ' ' ? i : 0;
}

/* A milter's SMTP reply as one line the client may get: its first line only, a 4xx or 5xx code,
 * an enhanced code of the same class (X.7.1 put in when there is none), '%%' as '%' (milters
 * double it for Sendmail, which takes the text as a format), control and non-ASCII bytes as '?',
 * cut to fit a reply line. False when there is no usable code. */
static bool reply_line(const unsigned char *raw, size_t n, char *out, size_t size)
{
	size_t len = 0;
	while (len < n && raw[len] != '\r' && raw[len] != '\n' && raw[len] != '\0')
		len++;
	if (len < 3 || (raw[0] != '4' && raw[0] != '5') || raw[1] < '0' || raw[1] > '5' ||
	    raw[2] < '0' || raw[2] > '9' || (len > 3 && raw[3] != ' ' && raw[3] != '-'))
		return false;
	struct text t = text_on(out, size < LINE_MAX_OCTETS - 1 ? size : LINE_MAX_OCTETS - 1);
	text_add_n(&t, (const char *)raw, 3);
	text_add(&t, " ");
	const unsigned char *p = raw + (len > 3 ? 4 : 3), *end = raw + len;
	if (enhanced_len(p, (size_t)(end - p), raw[0]) == 0)
		text_add(&t, p < end ? (raw[0] == '4' ? "4.7.1 " : "5.7.1 ")
				     : (raw[0] == '4' ? "4.7.1" : "5.7.1"));
	for (; p < end && !t.cut; p++) {
		if (*p == '%' && (p + 1 == end || p[1] != '%'))
			continue; /* a lone '%' is dropped, as Postfix does */
		p += *p == '%';
		char c = *p < 0x20 || *p > 0x7e ? '?' : (char)*p;
		text_add_n(&t, &c, 1);
	}
	return true;
}

/* A reason as one log token: printable ASCII but the space, the rest '?'. */
static void add_token(struct text *t, const unsigned char *s, size_t n, size_t max)
{
	for (size_t i = 0; i < n && i < max && s[i] != '\0'; i++) {
		char c = s[i] <= ' ' || s[i] > 0x7e ? '?' : (char)s[i];
		text_add_n(t, &c, 1);
	}
}

/* A header field name as RFC 5322 has it: printable ASCII but ':', not empty. */
static bool good_name(const char *s, size_t n)
{
	if (n == 0 || n > MILTER_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > 0x7e || s[i] == ':')
			return false;
	return true;
}

/* A value as it will follow the colon in the stored field: CRLF is LF (we store LF), a lone CR a
 * space, and every line break is followed by a blank, so that the value stays one field. Empty
 * lines go. Returns false when it does not fit. */
static bool put_value(struct edits *e, const char *v, size_t n, bool lead_space)
{
	if (!lead_space && n > 0 && e->used < sizeof e->text)
		e->text[e->used++] = ' ';
	for (size_t i = 0; i < n; i++) {
		char c = v[i] == '\r' ? (i + 1 < n && v[i + 1] == '\n' ? 0 : ' ') : v[i];
		if (c == '\n') {
			size_t next = i + 1;
			while (next < n && (v[next] == '\n' || v[next] == '\r'))
				next++;
			if (next == n)
				break;
			i = next - 1;
		}
		if (c != 0 && e->used < sizeof e->text)
			e->text[e->used++] = c;
		if (c == '\n' && v[i + 1] != ' ' && v[i + 1] != '\t' && e->used < sizeof e->text)
			e->text[e->used++] = '\t';
		if (e->used == sizeof e->text)
			return false;
	}
	return true;
}

static bool add_edit(struct edits *e, char kind, uint32_t index, const char *name,
		     const char *value, size_t value_len, bool lead_space)
{
	size_t name_len = strlen(name);

	if (e->count == MILTER_EDITS_MAX || name_len > sizeof e->text - e->used)
		return false;
	struct edit *ed = &e->list[e->count];
	*ed = (struct edit){ kind, index, e->used, name_len, 0, 0 };
	memcpy(e->text + e->used, name, name_len);
	e->used += name_len;
	ed->value = e->used;
	if (!put_value(e, value, value_len, lead_space))
		return false;
	ed->value_len = e->used - ed->value;
	e->count++;
	return true;
}

/* SMFIR_ADDHEADER "name\0value\0"; SMFIR_INSHEADER and SMFIR_CHGHEADER with an index first. */
static enum step take_edit(struct exchange *x, char cmd, const unsigned char *d, size_t n)
{
	uint32_t index = 0, need = cmd == SMFIR_CHGHEADER ? SMFIF_CHGHDRS : SMFIF_ADDHDRS;

	if (x->event != SMFIC_BODYEOB)
		return broken(x, "unexpected-reply");
	if (cmd != SMFIR_ADDHEADER) {
		if (n < 4)
			return broken(x, "bad-packet");
		index = be32(d);
		d += 4, n -= 4;
	}
	const unsigned char *nul = memchr(d, '\0', n);
	size_t name_len = nul ? (size_t)(nul - d) : n;
	if (nul == NULL || n - name_len < 2 || d[n - 1] != '\0' ||
	    memchr(d + name_len + 1, '\0', n - name_len - 2) != NULL)
		return broken(x, "bad-packet");
	if (!(x->actions & need)) {
		x->ignored = x->ignored ? x->ignored : cmd;
		return STEP_MORE;
	}
	if (!good_name((const char *)d, name_len))
		return broken(x, "bad-header");
	if (!add_edit(x->edits, cmd, index, (const char *)d, (const char *)d + name_len + 1,
		      n - name_len - 2, x->lead_space))
		return broken(x, "too-many-edits");
	return STEP_MORE;
}

/* A final verdict: nothing may follow the command letter. */
static enum step take_verdict(struct exchange *x, char cmd, size_t n)
{
	if (n != 0)
		return broken(x, "bad-packet");
	x->verdict = cmd;
	return STEP_DONE;
}

static enum step take_other(struct exchange *x, char cmd, const unsigned char *d, size_t n)
{
	switch (cmd) {
	case SMFIR_PROGRESS:
		if (n != 0)
			return broken(x, "bad-packet");
		x->progress = true;
		return STEP_MORE;
	case SMFIR_REPLYCODE:
		if (!reply_line(d, n, x->reply, sizeof x->reply))
			return broken(x, "bad-reply-code");
		x->verdict = cmd;
		return STEP_DONE;
	case SMFIR_QUARANTINE:
		if (x->event != SMFIC_BODYEOB || !(x->actions & SMFIF_QUARANTINE)) {
			x->ignored = x->ignored ? x->ignored : cmd;
			return STEP_MORE;
		}
		x->quarantined = true;
		struct text t = text_on(x->reason, sizeof x->reason);
		add_token(&t, d, n, REASON_MAX);
		return STEP_MORE;
	case SMFIR_ADDHEADER:
	case SMFIR_INSHEADER:
	case SMFIR_CHGHEADER: return take_edit(x, cmd, d, n);
	case SMFIR_ADDRCPT:
	case SMFIR_DELRCPT:
	case SMFIR_ADDRCPT_PAR:
	case SMFIR_REPLBODY:
	case SMFIR_CHGFROM:
		if (x->event != SMFIC_BODYEOB)
			return broken(x, "unexpected-reply");
		x->ignored = x->ignored ? x->ignored : cmd; /* never offered: nothing is done */
		return STEP_MORE;
	default: return broken(x, "unknown-reply");
	}
}

static enum step take_packet(struct exchange *x, char cmd, const unsigned char *d, size_t n)
{
	if ((x->event == SMFIC_OPTNEG) != (cmd == SMFIC_OPTNEG))
		return broken(x, "unexpected-reply");
	switch (cmd) {
	case SMFIC_OPTNEG: /* version, actions, steps; macro lists after them are not asked for */
		if (n < 12)
			return broken(x, "bad-packet");
		x->version = be32(d);
		x->actions = be32(d + 4);
		x->steps = be32(d + 8);
		x->verdict = cmd;
		return STEP_DONE;
	case SMFIR_CONTINUE:
	case SMFIR_ACCEPT:
	case SMFIR_REJECT:
	case SMFIR_TEMPFAIL:
	case SMFIR_DISCARD:
	case SMFIR_SKIP: return take_verdict(x, cmd, n);
	default: return take_other(x, cmd, d, n);
	}
}

/* Takes the whole packets at the start of buf (*used says how much), until a final verdict.
 * The length field is checked as soon as it is there, before its data is waited for. */
static enum step parse(struct exchange *x, const unsigned char *buf, size_t len, size_t *used)
{
	*used = 0;
	while (len - *used >= 4) {
		const unsigned char *p = buf + *used;
		uint32_t n = be32(p);
		if (n == 0 || n > MILTER_PACKET_MAX)
			return broken(x, "bad-length");
		if (len - *used - 4 < n)
			return STEP_MORE;
		*used += 4 + (size_t)n;
		enum step s = take_packet(x, (char)p[4], p + 5, n - 1);
		if (s != STEP_MORE)
			return s;
	}
	return STEP_MORE;
}

/* The line a refusal gives the client: the milter's own, or ours for its verdict. */
static const char *refusal_text(const struct exchange *x)
{
	if (x->reply[0] != '\0')
		return x->reply;
	return x->verdict == SMFIR_TEMPFAIL ? tempfail_text : reject_text;
}

int milter_parse_replies(int event, const unsigned char *buf, size_t len, char *reply, size_t size)
{
	struct edits edits; /* on the stack: only the fuzz target calls this */
	struct exchange x = { .event = (char)event, .actions = OFFERED_ACTIONS, .edits = &edits };
	size_t used = 0;

	edits.count = edits.used = 0;
	reply[0] = '\0';
	enum step s = parse(&x, buf, len, &used);
	if (s != STEP_DONE)
		return s == STEP_ERROR ? -1 : MV_CONTINUE;
	if (x.verdict == SMFIR_DISCARD)
		return MV_DISCARD;
	if (x.verdict != SMFIR_REJECT && x.verdict != SMFIR_TEMPFAIL &&
	    x.verdict != SMFIR_REPLYCODE)
		return x.quarantined ? (text_copy(reply, size, quarantine_text), MV_TEMPFAIL)
				     : MV_CONTINUE;
	text_copy(reply, size, refusal_text(&x));
	return reply[0] == '4' ? MV_TEMPFAIL : MV_REJECT;
}

/* ---- the milters, and the session's side of each ---- */

enum milter_state {
	MS_OFF,     /* not spoken to: not reached with -F accept, or done with this connection */
	MS_OPEN,    /* talking */
	MS_FAILED,  /* broke with -F tempfail or reject: every transaction gets that reply */
	MS_REFUSED, /* refused at HELO: every later HELO and MAIL gets its reply */
};

struct milter {
	const char *spec;
	int fd;
	enum milter_state state;
	uint32_t version, actions, steps; /* agreed on */
	bool in_txn;   /* told of a MAIL and not yet of the end of its message: ABORT owed */
	bool msg_done; /* accepted or discarded this message: nothing more of it */
	char skip;     /* SMFIR_SKIP: no more of this event while it repeats */
	char reply[LINE_MAX_OCTETS]; /* MS_FAILED, MS_REFUSED: the reply from now on */
	size_t out_len;              /* packets not yet written: sent when a reply is needed */
	unsigned char *out;          /* PENDING_BUF of them */
};

/* One packet being built. */
struct packet {
	size_t len;
	unsigned char b[4 + MILTER_PACKET_MAX];
};

/* The message in the spool, as the milters see it. */
struct message {
	int fd;
	uint64_t start;      /* after our Return-Path: and Received: */
	uint64_t header_end; /* the empty line, or the first line that is no header field */
	uint64_t body;       /* after that empty line */
	uint64_t end;
};

static struct {
	const struct config *cfg;
	struct milter list[MILTER_MAX];
	size_t count;
	long long session_end, phase_end; /* ms; phase_end 0 outside connect and content */
	long long connect_ms, reply_ms, message_ms;
	const char *tls_version, *cipher, *id;
	char sender[PATH_MAX_OCTETS + 1];
	unsigned long rcpts;
	const char *discarded_by; /* the milter that discarded this transaction */
	struct message msg;
	size_t in_len; /* of B->in */
} M;

/* The buffers, taken from the heap when a session has milters: without -M they cost nothing,
 * not even address space (the musl build is held to 1 MiB of it). */
static struct {
	unsigned char in[4 + MILTER_PACKET_MAX]; /* what a milter sent, read ahead */
	struct packet pkt;                       /* the packet being built; the rewrite's output */
	unsigned char read[READ_BUF];            /* the spool, read back */
	struct edits edits;                      /* this message's header changes, in order */
	unsigned char out[MILTER_MAX][PENDING_BUF];
} * B;

static struct {
	size_t len;
	unsigned char b[MACROS_BUF];
} Mac; /* the macros sent before it */

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* When the current wait must end: bound from now, within the phase's end and the session's. */
static long long wait_end(long long bound)
{
	long long end = now_ms() + bound;

	if (M.phase_end > 0 && M.phase_end < end)
		end = M.phase_end;
	return end < M.session_end ? end : M.session_end;
}

/* 1 when fd is ready, 0 when end passed first. */
static int wait_fd(int fd, short what, long long end)
{
	for (;;) {
		long long left = end - now_ms();
		struct pollfd p = { fd, what, 0 };
		if (left <= 0)
			return 0;
		int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (n >= 0 || errno != EINTR)
			return n > 0;
	}
}

static const char *errno_word(int e)
{
	if (e == ETIMEDOUT)
		return "timeout";
	return e == EPIPE || e == ECONNRESET ? "closed" : "io-error";
}

/* Why a connect failed, in one word. */
static const char *connect_word(int e)
{
	if (e == ECONNREFUSED || e == ENOENT)
		return "connect-refused";
	if (e == ENXIO)
		return "unknown-host";
	return e == ETIMEDOUT ? "timeout" : "connect-failed";
}

/* ---- the log ---- */

static void add_spec(struct text *t, const char *spec)
{
	text_add(t, " milter=");
	add_token(t, (const unsigned char *)spec, strlen(spec), LOG_LINE_MAX);
}

/* "KIND milter=SPEC stage=STAGE": how a milter's log line starts. */
static void log_head(struct text *t, const char *kind, const char *spec, enum event e)
{
	text_add(t, kind);
	add_spec(t, spec);
	text_add(t, " stage=");
	text_add(t, events[e].stage);
}

static void log_failed(const struct milter *m, enum event e, const char *error)
{
	static const char *const actions[] = { [MILTER_TEMPFAIL] = "tempfail",
					       [MILTER_ACCEPT] = "accept",
					       [MILTER_REJECT] = "reject" };
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	log_head(&t, "milter-failed", m->spec, e);
	text_add(&t, " error=");
	text_add(&t, error);
	text_add(&t, " action=");
	text_add(&t, actions[M.cfg->milter_fallback]);
	log_text(L_WARN, line);
}

/* A reply that is never acted on: an action we did not offer, or a discard of a connection. */
static void log_ignored(const struct milter *m, enum event e, char cmd)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	log_head(&t, "milter-ignored", m->spec, e);
	text_add(&t, " reply=");
	text_add_n(&t, &cmd, 1);
	log_text(L_WARN, line);
}

/* Refusals before a transaction has recipients; those at RCPT and after are the session's. */
static void log_refused(const struct milter_reply *r, enum event e, const char *helo)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	log_head(&t, "milter-refused", r->milter, e);
	text_add(&t, " client=");
	text_add(&t, M.cfg->client_addr[0] ? M.cfg->client_addr : "-");
	if (helo != NULL) {
		text_add(&t, " helo=");
		text_add(&t, helo);
	}
	if (e == EV_MAIL) {
		text_add(&t, " from=<");
		log_add_value(&t, M.sender);
		text_add(&t, ">");
	}
	log_add_reply(&t, r->text);
	log_text(L_WARN, line);
}

static void log_message(const char *kind, const char *milter, const char *reason)
{
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	text_add(&t, kind);
	text_add(&t, " id=");
	text_add(&t, M.id ? M.id : "-");
	add_spec(&t, milter);
	text_add(&t, " from=<");
	log_add_value(&t, M.sender);
	text_add(&t, "> recipients=");
	text_add_num(&t, M.rcpts, 0);
	if (reason != NULL) {
		text_add(&t, " reason=");
		text_add(&t, reason[0] ? reason : "-");
	}
	log_text(reason ? L_WARN : L_INFO, line);
}

/* ---- the wire ---- */

static void begin(struct packet *p, char cmd)
{
	p->len = 5;
	p->b[4] = (unsigned char)cmd;
}

static void put(struct packet *p, const void *data, size_t n)
{
	if (n > sizeof p->b - p->len)
		n = sizeof p->b - p->len; /* never: what goes in is bounded below the size */
	memcpy(p->b + p->len, data, n);
	p->len += n;
}

static void put_str(struct packet *p, const char *s)
{
	put(p, s, strlen(s) + 1);
}

static void finish(unsigned char *b, size_t len)
{
	uint32_t n = (uint32_t)(len - 4);

	b[0] = (unsigned char)(n >> 24), b[1] = (unsigned char)(n >> 16);
	b[2] = (unsigned char)(n >> 8), b[3] = (unsigned char)n;
}

static void close_fd(struct milter *m)
{
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
	m->out_len = 0;
	M.in_len = 0;
}

/* Writes len octets to m; each write may wait the reply bound. */
static bool send_all(struct milter *m, const unsigned char *b, size_t len)
{
	size_t done = 0;
	long long end = wait_end(M.reply_ms);

	while (done < len) {
		ssize_t n = send(m->fd, b + done, len - done, MSG_NOSIGNAL);
		if (n > 0) {
			done += (size_t)n;
			end = wait_end(M.reply_ms);
			continue;
		}
		if (n < 0 && (errno == EINTR || (errno == EAGAIN && wait_fd(m->fd, POLLOUT, end))))
			continue;
		errno = n == 0 ? EPIPE : errno == EAGAIN ? ETIMEDOUT : errno;
		return false;
	}
	return true;
}

/* Writes what is pending for m. */
static bool flush(struct milter *m)
{
	size_t len = m->out_len;

	m->out_len = 0;
	return send_all(m, m->out, len);
}

/* A packet after what is pending: the write waits until a reply is needed or the buffer fills.
 * One that does not fit the buffer (a header or body chunk) goes straight from where it is. */
static bool queue(struct milter *m, const unsigned char *b, size_t len)
{
	if (len > PENDING_BUF - m->out_len && !flush(m))
		return false;
	if (len > PENDING_BUF)
		return send_all(m, b, len);
	memcpy(m->out + m->out_len, b, len);
	m->out_len += len;
	return true;
}

/* Reads until the exchange is complete. Progress starts the wait again, within the phase. */
static bool take_replies(struct milter *m, struct exchange *x)
{
	long long end = wait_end(M.reply_ms);

	for (;;) {
		size_t used;
		enum step s = parse(x, B->in, M.in_len, &used);
		memmove(B->in, B->in + used, M.in_len - used);
		M.in_len -= used;
		if (s == STEP_ERROR)
			return false;
		if (s == STEP_DONE)
			return M.in_len == 0 || (broken(x, "unexpected-reply"), false);
		if (x->progress)
			x->progress = false, end = wait_end(M.reply_ms);
		if (!wait_fd(m->fd, POLLIN, end))
			return broken(x, "timeout"), false;
		ssize_t n = recv(m->fd, B->in + M.in_len, sizeof B->in - M.in_len, 0);
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			return broken(x, n == 0 ? "closed" : errno_word(errno)), false;
		M.in_len += n > 0 ? (size_t)n : 0;
	}
}

/* ---- verdicts ---- */

/* The reply a failed or refusing milter holds to. */
static enum milter_verdict held(struct milter *m, struct milter_reply *r)
{
	r->milter = m->spec;
	text_copy(r->text, sizeof r->text, m->reply);
	return r->text[0] == '4' ? MV_TEMPFAIL : MV_REJECT;
}

/* The milter is closed and, by -F, left out (accept) or made to refuse what follows; a failure
 * known before a transaction is told to the client at MAIL. */
static enum milter_verdict fail(struct milter *m, enum event e, const char *error,
				struct milter_reply *r)
{
	enum milter_fallback f = M.cfg->milter_fallback;

	log_failed(m, e, error);
	close_fd(m);
	m->state = f == MILTER_ACCEPT ? MS_OFF : MS_FAILED;
	text_copy(m->reply, sizeof m->reply,
		  f == MILTER_TEMPFAIL ? tempfail_text : failed_reject_text);
	if (f == MILTER_ACCEPT || e == EV_CONNECT || e == EV_HELO)
		return MV_CONTINUE;
	return held(m, r);
}

/* Done with this connection: QUIT, if it can be written at once, and close. */
static void hang_up(struct milter *m)
{
	unsigned char quit[5] = { 0, 0, 0, 1, SMFIC_QUIT };

	if (m->fd >= 0 && queue(m, quit, sizeof quit))
		(void)!send(m->fd, m->out, m->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
	close_fd(m);
}

/* What a final reply means at each stage, as Postfix takes it. */
static enum milter_verdict verdict(struct milter *m, enum event e, const struct exchange *x,
				   struct milter_reply *r)
{
	bool connection = e == EV_CONNECT || e == EV_HELO;

	if (x->ignored)
		log_ignored(m, e, x->ignored);
	switch (x->verdict) {
	case SMFIR_CONTINUE: return MV_CONTINUE;
	case SMFIR_SKIP: m->skip = events[e].cmd; return MV_CONTINUE;
	case SMFIR_ACCEPT:
		if (connection)
			hang_up(m), m->state = MS_OFF;
		m->msg_done = true;
		return MV_CONTINUE;
	case SMFIR_DISCARD:
		if (connection)
			return log_ignored(m, e, x->verdict), MV_CONTINUE;
		m->msg_done = true;
		M.discarded_by = m->spec;
		return MV_DISCARD;
	}
	r->milter = m->spec;
	text_copy(r->text, sizeof r->text, refusal_text(x));
	/* 421 says the channel closes (RFC 5321 3.8), as it does at connect alone: else 451. */
	if (e != EV_CONNECT && memcmp(r->text, "421", 3) == 0)
		memcpy(r->text, "451", 3);
	if (connection) {
		hang_up(m);
		m->state = MS_REFUSED;
		text_copy(m->reply, sizeof m->reply, r->text);
	}
	return r->text[0] == '4' ? MV_TEMPFAIL : MV_REJECT;
}

/* Sends the macros (libmilter keeps them per stage) and the event, and unless the milter said it
 * will not answer, waits for its reply. */
static enum milter_verdict ask(struct milter *m, enum event e, bool macros, struct milter_reply *r)
{
	char cmd = events[e].cmd;
	struct exchange x = { .event = cmd,
			      .actions = m->actions,
			      .edits = &B->edits,
			      .lead_space = (m->steps & SMFIP_HDR_LEADSPC) != 0 };

	if (m->skip != 0 && m->skip != cmd)
		m->skip = 0;
	if (m->skip == cmd || (e == EV_DATA && m->version < 4))
		return MV_CONTINUE; /* SMFIC_DATA came with version 4 */
	if (macros && Mac.len > 6 && !queue(m, Mac.b, Mac.len))
		return fail(m, e, errno_word(errno), r);
	if (m->steps & events[e].unwanted)
		return MV_CONTINUE;
	if (!queue(m, B->pkt.b, B->pkt.len))
		return fail(m, e, errno_word(errno), r);
	if (m->steps & events[e].no_reply)
		return MV_CONTINUE;
	if (!flush(m))
		return fail(m, e, errno_word(errno), r);
	if (!take_replies(m, &x))
		return fail(m, e, x.error, r);
	return verdict(m, e, &x, r);
}

/* One envelope event for one milter, as its state allows. */
static enum milter_verdict tell(struct milter *m, enum event e, struct milter_reply *r)
{
	switch (m->state) {
	case MS_OFF: return MV_CONTINUE;
	case MS_FAILED: return e == EV_HELO ? MV_CONTINUE : held(m, r);
	case MS_REFUSED: return held(m, r);
	case MS_OPEN: break;
	}
	if (m->msg_done && (e == EV_RCPT || e == EV_DATA))
		return MV_CONTINUE;
	if (e == EV_MAIL)
		m->in_txn = true, m->msg_done = false;
	return ask(m, e, true, r);
}

/* The event in P and its macros in Mac are complete. */
static void seal(void)
{
	finish(B->pkt.b, B->pkt.len);
	finish(Mac.b, Mac.len);
}

/* The event in P, its macros in Mac, to each milter in turn until one refuses. A discard ends
 * what the milters hear of this transaction. */
static enum milter_verdict tell_all(enum event e, struct milter_reply *r)
{
	seal();
	for (size_t i = 0; i < M.count && M.discarded_by == NULL; i++) {
		enum milter_verdict v = tell(&M.list[i], e, r);
		if (v == MV_REJECT || v == MV_TEMPFAIL)
			return v;
	}
	return MV_CONTINUE;
}

/* ---- macros: Postfix's defaults, at the stages libmilter takes them ---- */

static void macros_begin(char cmd)
{
	Mac.len = 6;
	Mac.b[4] = SMFIC_MACRO;
	Mac.b[5] = (unsigned char)cmd;
}

/* One name and value; an empty value is left out, as Postfix leaves out what it does not know. */
static void macro(const char *name, const char *value)
{
	size_t n = strlen(name) + 1, v = strlen(value) + 1;

	if (value[0] == '\0' || n + v > sizeof Mac.b - Mac.len)
		return;
	memcpy(Mac.b + Mac.len, name, n);
	memcpy(Mac.b + Mac.len + n, value, v);
	Mac.len += n + v;
}

static void macros_tls(void)
{
	macro("{tls_version}", M.tls_version ? M.tls_version : "");
	macro("{cipher}", M.cipher ? M.cipher : "");
}

/* ---- connecting ---- */

/* A non-blocking connect, over by end. */
static int dial(const struct sockaddr *sa, socklen_t len, long long end)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), e = 0;
	socklen_t elen = sizeof e;

	if (fd < 0)
		return -1;
	if (connect(fd, sa, len) == 0)
		return fd;
	if (errno == EINPROGRESS || errno == EINTR) {
		if (!wait_fd(fd, POLLOUT, end))
			e = ETIMEDOUT;
		else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) != 0)
			e = errno;
		if (e == 0)
			return fd;
	}
	e = e ? e : errno;
	close(fd);
	return errno = e, -1;
}

/* "inet:host:port": an IPv4 literal, an IPv6 one with or without brackets, or a name. */
static int dial_inet(const char *spec, long long end)
{
	char host[DOMAIN_MAX + 1];
	const char *colon = strrchr(spec, ':'), *h = spec + 5;
	size_t hlen = (size_t)(colon - h);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *ai;

	if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']')
		h++, hlen -= 2;
	if (hlen >= sizeof host)
		return errno = ENAMETOOLONG, -1;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		return errno = ENXIO, -1; /* no such host */
	int fd = -1;
	for (struct addrinfo *a = ai; a != NULL && fd < 0; a = a->ai_next)
		fd = dial(a->ai_addr, a->ai_addrlen, end);
	int e = errno;
	freeaddrinfo(ai);
	return errno = e, fd;
}

static int dial_spec(const char *spec, long long end)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	if (strncmp(spec, "inet:", 5) == 0)
		return dial_inet(spec, end);
	text_copy(sun.sun_path, sizeof sun.sun_path, spec + 5); /* checked at start-up */
	return dial((const struct sockaddr *)&sun, sizeof sun, end);
}

static void put32(struct packet *p, uint32_t v)
{
	unsigned char b[4] = { (unsigned char)(v >> 24), (unsigned char)(v >> 16),
			       (unsigned char)(v >> 8), (unsigned char)v };
	put(p, b, 4);
}

/* SMFIC_OPTNEG: we offer version 6, our actions and steps; what the milter asks beyond that
 * offer is masked off (rspamd asks for more than it is offered). */
static const char *negotiate(struct milter *m)
{
	struct exchange x = { .event = SMFIC_OPTNEG };

	begin(&B->pkt, SMFIC_OPTNEG);
	put32(&B->pkt, PROTOCOL_VERSION);
	put32(&B->pkt, OFFERED_ACTIONS);
	put32(&B->pkt, OFFERED_STEPS);
	finish(B->pkt.b, B->pkt.len);
	if (!queue(m, B->pkt.b, B->pkt.len) || !flush(m))
		return errno_word(errno);
	if (!take_replies(m, &x))
		return x.error;
	if (x.version < 2 || x.version > PROTOCOL_VERSION)
		return "bad-version";
	m->version = x.version;
	m->actions = x.actions & OFFERED_ACTIONS;
	m->steps = x.steps & OFFERED_STEPS;
	return NULL;
}

/* Connects and agrees on the protocol; false when the milter failed (and is failed). */
static bool open_milter(struct milter *m, struct milter_reply *r)
{
	const char *error = NULL;

	M.phase_end = now_ms() + M.connect_ms;
	m->fd = dial_spec(m->spec, wait_end(M.connect_ms));
	if (m->fd < 0)
		error = connect_word(errno);
	else if ((error = negotiate(m)) == NULL)
		m->state = MS_OPEN;
	M.phase_end = 0;
	if (error != NULL)
		fail(m, EV_CONNECT, error, r);
	return error == NULL;
}

/* The client's port, from the launcher; none behind a proxy, whose port it would be. */
static unsigned client_port(void)
{
	static const char *const vars[] = { "TCPREMOTEPORT", "REMOTE_PORT" };

	for (size_t i = 0; i < 2 && !M.cfg->proxy && M.cfg->client_addr[0] != '\0'; i++) {
		const char *v = getenv(vars[i]);
		if (v == NULL || *v == '\0' || strlen(v) > 5 ||
		    strspn(v, "0123456789") != strlen(v))
			continue;
		unsigned port = (unsigned)atoi(v);
		if (port <= 65535)
			return port;
	}
	return 0;
}

/* SMFIC_CONNECT "[addr]\0" family port addr\0 (Postfix's form when there is no name), or for a
 * pipe, with no address, "unknown\0" 'U'. */
static void connect_event(void)
{
	const char *addr = M.cfg->client_addr;
	char name[ADDR_TEXT_MAX + 16], port_text[8], under[ADDR_TEXT_MAX + 16];
	unsigned port = client_port();
	struct text t = text_on(name, sizeof name), p = text_on(port_text, sizeof port_text);
	struct text u = text_on(under, sizeof under);

	text_add(&t, addr[0] ? "[" : "unknown");
	text_add(&t, addr);
	text_add(&t, addr[0] ? "]" : "");
	text_add(&u, "unknown");
	text_add(&u, addr[0] ? " " : "");
	text_add(&u, name + (addr[0] ? 0 : t.len));
	if (port > 0)
		text_add_num(&p, port, 0);
	macros_begin(SMFIC_CONNECT);
	macro("j", M.cfg->hostname);
	macro("{daemon_name}", M.cfg->hostname);
	macro("_", under);
	macro("{client_addr}", addr);
	macro("{client_name}", "unknown");
	macro("{client_port}", port_text);
	begin(&B->pkt, SMFIC_CONNECT);
	put_str(&B->pkt, name);
	B->pkt.b[B->pkt.len++] = addr[0] == '\0' ? 'U' : strchr(addr, ':') ? '6' : '4';
	if (addr[0] != '\0') {
		unsigned char be[2] = { (unsigned char)(port >> 8), (unsigned char)port };
		put(&B->pkt, be, 2);
		put_str(&B->pkt, addr);
	}
}

/* The bounds of this session: each within -t, and -T from now. */
static void set_bounds(const struct config *cfg)
{
	long long idle = (long long)cfg->idle_timeout * 1000;

	M.cfg = cfg;
	M.count = cfg->milter_count;
	M.session_end = now_ms() + (long long)cfg->session_timeout * 1000;
	M.connect_ms =
		MILTER_CONNECT_TIMEOUT * 1000LL < idle ? MILTER_CONNECT_TIMEOUT * 1000LL : idle;
	M.reply_ms = MILTER_REPLY_TIMEOUT * 1000LL < idle ? MILTER_REPLY_TIMEOUT * 1000LL : idle;
	M.message_ms =
		MILTER_MESSAGE_TIMEOUT * 1000LL < idle ? MILTER_MESSAGE_TIMEOUT * 1000LL : idle;
}

/* A refusal of the connection, in the words RFC 5321 3.1 gives a greeting: 554 or 421. */
static enum milter_verdict refuse_connection(enum milter_verdict v, struct milter_reply *r)
{
	if (v == MV_TEMPFAIL)
		memcpy(r->text, "421", 3);
	else if (strcmp(r->text, reject_text) == 0)
		text_copy(r->text, sizeof r->text, connect_reject_text);
	else
		memcpy(r->text, "554", 3);
	log_refused(r, EV_CONNECT, NULL);
	return v;
}

/* No memory for the buffers: the session cannot go on as configured, so the client is told to
 * come back, as at any start-up failure. */
static enum milter_verdict no_memory(struct milter_reply *r)
{
	log_line(L_ERR, "out of memory");
	r->milter = "-";
	text_copy(r->text, sizeof r->text, no_memory_text);
	return MV_TEMPFAIL;
}

enum milter_verdict milter_connect(const struct config *cfg, struct milter_reply *r)
{
	set_bounds(cfg);
	for (size_t i = 0; i < M.count; i++)
		M.list[i] = (struct milter){ .spec = cfg->milters[i], .fd = -1 };
	if (B == NULL && (B = malloc(sizeof *B)) == NULL)
		return no_memory(r);
	for (size_t i = 0; i < M.count; i++) {
		struct milter *m = &M.list[i];
		m->out = B->out[i];
		if (!open_milter(m, r))
			continue;
		connect_event();
		seal();
		enum milter_verdict v = tell(m, EV_CONNECT, r);
		if (v == MV_REJECT || v == MV_TEMPFAIL)
			return refuse_connection(v, r);
	}
	return MV_CONTINUE;
}

/* ---- the envelope ---- */

enum milter_verdict milter_helo(const char *helo, const char *tls_version, const char *cipher,
				struct milter_reply *r)
{
	M.tls_version = tls_version;
	M.cipher = cipher;
	macros_begin(SMFIC_HELO);
	macros_tls();
	begin(&B->pkt, SMFIC_HELO);
	put_str(&B->pkt, helo);
	enum milter_verdict v = tell_all(EV_HELO, r);
	if (v != MV_CONTINUE)
		log_refused(r, EV_HELO, helo);
	return v;
}

/* SMFIC_MAIL "<sender>\0" and each ESMTP parameter as its own string. */
enum milter_verdict milter_mail(const char *sender, const char *params, struct milter_reply *r)
{
	char path[PATH_MAX_OCTETS + 3];
	struct text t = text_on(path, sizeof path);

	text_copy(M.sender, sizeof M.sender, sender);
	M.rcpts = 0;
	M.id = NULL;
	M.discarded_by = NULL;
	text_add(&t, "<");
	text_add(&t, sender);
	text_add(&t, ">");
	macros_begin(SMFIC_MAIL);
	macro("{mail_addr}", sender);
	macros_tls();
	begin(&B->pkt, SMFIC_MAIL);
	put_str(&B->pkt, path);
	for (const char *p = params; *(p += strspn(p, " ")) != '\0'; p += strcspn(p, " ")) {
		put(&B->pkt, p, strcspn(p, " "));
		put(&B->pkt, "", 1);
	}
	enum milter_verdict v = tell_all(EV_MAIL, r);
	if (v != MV_CONTINUE) {
		log_refused(r, EV_MAIL, NULL);
		milter_abort();
	}
	return v;
}

enum milter_verdict milter_rcpt(const char *rcpt, struct milter_reply *r)
{
	char path[PATH_MAX_OCTETS + 3];
	struct text t = text_on(path, sizeof path);

	text_add(&t, "<");
	text_add(&t, rcpt);
	text_add(&t, ">");
	macros_begin(SMFIC_RCPT);
	macro("{rcpt_addr}", rcpt);
	begin(&B->pkt, SMFIC_RCPT);
	put_str(&B->pkt, path);
	enum milter_verdict v = tell_all(EV_RCPT, r);
	M.rcpts += v == MV_CONTINUE;
	return v;
}

enum milter_verdict milter_data(const char *id, struct milter_reply *r)
{
	M.id = id;
	macros_begin(SMFIC_DATA);
	macro("i", id);
	macros_tls();
	begin(&B->pkt, SMFIC_DATA);
	return tell_all(EV_DATA, r);
}

/* SMFIC_ABORT to each milter told of a transaction that did not reach its end; no reply. */
void milter_abort(void)
{
	unsigned char abort[5] = { 0, 0, 0, 1, SMFIC_ABORT };
	struct milter_reply r;

	for (size_t i = 0; i < M.count; i++) {
		struct milter *m = &M.list[i];
		if (m->state == MS_OPEN && m->in_txn && !queue(m, abort, sizeof abort))
			fail(m, EV_MAIL, errno_word(errno), &r);
		m->in_txn = m->msg_done = false;
		m->skip = 0;
	}
	M.discarded_by = NULL;
}

void milter_quit(void)
{
	for (size_t i = 0; i < M.count; i++)
		hang_up(&M.list[i]);
	free(B);
	B = NULL;
}

/* ---- the message: read back from the spool ---- */

/* The spool's header section, a line at a time through one buffer. */
static struct {
	int fd;
	uint64_t base, end; /* the file offset of buf[0]; where the data ends */
	size_t len, pos;    /* bytes in buf; where the next line starts */
} R;                        /* its buffer is B->read */

/* One line: where it is, and its first bytes (all of a line that fits the buffer). */
struct line {
	uint64_t off, len;
	const unsigned char *head;
	size_t head_len;
	unsigned char copy[FIELD_HEAD]; /* the head of a line longer than the buffer */
};

static int refill(void)
{
	memmove(B->read, B->read + R.pos, R.len - R.pos);
	R.base += R.pos;
	R.len -= R.pos;
	R.pos = 0;
	while (R.len < sizeof B->read && R.base + R.len < R.end) {
		uint64_t want = R.end - R.base - R.len;
		ssize_t n =
			pread(R.fd, B->read + R.len,
			      want < sizeof B->read - R.len ? (size_t)want : sizeof B->read - R.len,
			      (off_t)(R.base + R.len));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		R.len += (size_t)n;
	}
	return 0;
}

/* A line longer than the buffer: its head is kept, the rest passed over. */
static int long_line(struct line *l)
{
	memcpy(l->copy, B->read, sizeof l->copy);
	l->head = l->copy;
	l->head_len = sizeof l->copy;
	l->off = R.base;
	for (;;) {
		R.pos = R.len;
		if (refill() != 0)
			return -1;
		unsigned char *nl = memchr(B->read, '\n', R.len);
		if (nl != NULL || R.len == 0) {
			R.pos = nl ? (size_t)(nl - B->read) + 1 : 0;
			l->len = R.base + R.pos - l->off;
			return 1;
		}
	}
}

/* 1 and the next line, 0 at the end, -1 when the spool cannot be read. */
static int next_line(struct line *l)
{
	for (;;) {
		unsigned char *start = B->read + R.pos, *nl = memchr(start, '\n', R.len - R.pos);
		if (nl != NULL || (R.base + R.len >= R.end && R.pos < R.len)) {
			l->off = R.base + R.pos;
			l->len = nl ? (size_t)(nl - start) + 1 : R.len - R.pos;
			l->head = start;
			l->head_len = (size_t)l->len;
			R.pos += (size_t)l->len;
			return 1;
		}
		if (R.base + R.len >= R.end)
			return 0;
		if (R.pos == 0 && R.len == sizeof B->read)
			return long_line(l);
		if (refill() != 0)
			return -1;
	}
}

/* A header field as found in the spool. */
struct field {
	uint64_t off, len; /* with its last LF */
	size_t name_len;
	char name[MILTER_NAME_MAX + 1];
};

/* The length of the field name a line starts with ("Name:", or "Name :" of RFC 822), or 0. */
static size_t field_name(const unsigned char *p, size_t n)
{
	size_t i = 0, j;

	while (i < n && i <= MILTER_NAME_MAX && p[i] > ' ' && p[i] < 0x7f && p[i] != ':')
		i++;
	for (j = i; j < n && (p[j] == ' ' || p[j] == '\t');)
		j++;
	return i > 0 && i <= MILTER_NAME_MAX && j < n && p[j] == ':' ? i : 0;
}

struct pass;
static void pass_field(struct pass *p, const struct field *f);
static void pass_end(struct pass *p);

/* Each header field of the message, in order, to the chain of changes; where the header section
 * and the body begin is noted in M.msg. False when the spool could not be read. */
static bool scan_fields(struct pass *p)
{
	struct field f = { 0 };
	struct line l;
	bool open = false;
	int got;

	R.fd = M.msg.fd, R.base = M.msg.start, R.end = M.msg.end, R.len = R.pos = 0;
	M.msg.header_end = M.msg.body = M.msg.end;
	while ((got = next_line(&l)) == 1) {
		if (open && (l.head[0] == ' ' || l.head[0] == '\t')) {
			f.len += l.len;
			continue;
		}
		if (open)
			pass_field(p, &f), open = false;
		f.name_len = field_name(l.head, l.head_len);
		if (f.name_len == 0) {
			M.msg.header_end = l.off;
			M.msg.body = l.head[0] == '\n' ? l.off + l.len : l.off;
			break;
		}
		memcpy(f.name, l.head, f.name_len);
		f.name[f.name_len] = '\0';
		f.off = l.off, f.len = l.len, open = true;
	}
	if (open)
		pass_field(p, &f);
	pass_end(p);
	return got >= 0;
}

/* ---- the chain: each change a filter over the fields, in the order the milters gave them ---- */

/* A header field on its way: from the spool, or one a milter made. */
struct item {
	const struct field *field; /* NULL: B->edits.list[edit] */
	size_t edit;
};

struct pass {
	size_t edits; /* the changes that apply: those of the milters before */
	struct {
		uint32_t seen;
		bool done;
	} state[MILTER_EDITS_MAX];
	void (*sink)(struct pass *, const struct item *);
	struct milter *m; /* to a milter */
	struct milter_reply *r;
	enum milter_verdict v;
	int fd; /* to the new spool */
	bool failed;
};

static bool same_name(const struct item *it, const struct edit *e)
{
	const char *name =
		it->field ? it->field->name : B->edits.text + B->edits.list[it->edit].name;
	size_t len = it->field ? it->field->name_len : B->edits.list[it->edit].name_len;

	return len == e->name_len && strncasecmp(name, B->edits.text + e->name, len) == 0;
}

/* An insert at index 0 or 1 goes right after our Received: (Postfix counts our field as 1, but
 * shows it to no milter), at n after the first n - 1 fields of the message. */
static uint32_t insert_before(const struct edit *e)
{
	return e->index > 1 ? e->index - 1 : 0;
}

/* The field through the changes from number from on, then to the sink. */
static void pass_on(struct pass *p, struct item it, size_t from)
{
	for (size_t j = from; j < p->edits; j++) {
		const struct edit *e = &B->edits.list[j];
		if (p->state[j].done || e->kind == SMFIR_ADDHEADER)
			continue;
		if (e->kind == SMFIR_INSHEADER) {
			if (p->state[j].seen++ == insert_before(e)) {
				p->state[j].done = true;
				pass_on(p, (struct item){ NULL, j }, j + 1);
			}
			continue;
		}
		if (!same_name(&it, e) || ++p->state[j].seen < (e->index > 0 ? e->index : 1))
			continue;
		p->state[j].done = true;
		if (e->value_len == 0)
			return; /* deleted */
		it = (struct item){ NULL, j };
	}
	p->sink(p, &it);
}

static void pass_field(struct pass *p, const struct field *f)
{
	pass_on(p, (struct item){ f, 0 }, 0);
}

/* The end of the fields: each change still open adds its field there, an insert past the end
 * and a change of a field that is not there as well. */
static void pass_end(struct pass *p)
{
	for (size_t j = 0; j < p->edits; j++) {
		const struct edit *e = &B->edits.list[j];
		if (p->state[j].done || (e->kind == SMFIR_CHGHEADER && e->value_len == 0))
			continue;
		p->state[j].done = true;
		pass_on(p, (struct item){ NULL, j }, j + 1);
	}
}

/* ---- the message to one milter ---- */

/* True while the milter still wants this message. */
static bool going(const struct milter *m, enum milter_verdict v)
{
	return v == MV_CONTINUE && m->state == MS_OPEN && !m->msg_done;
}

/* SMFIC_HEADER "name\0value\0": the value as it follows the colon, less the one space libmilter
 * takes off unless the milter asked for it (SMFIP_HDR_LEADSPC); lines end in LF, as Sendmail
 * sends them. A field too long for one packet is cut: the milter sees its start. */
static void to_milter(struct pass *p, const struct item *it)
{
	struct milter *m = p->m;
	const char *value;
	size_t len, room = MILTER_CHUNK_SIZE - 2;

	if (!going(m, p->v) || (m->steps & SMFIP_NOHDRS))
		return;
	begin(&B->pkt, SMFIC_HEADER);
	if (it->field != NULL) {
		const struct field *f = it->field;
		room -= f->name_len;
		ssize_t n = pread(M.msg.fd, B->in, f->len < room + 1 ? (size_t)f->len : room + 1,
				  (off_t)f->off);
		const unsigned char *colon =
			n > (ssize_t)f->name_len
				? memchr(B->in + f->name_len, ':', (size_t)n - f->name_len)
				: NULL;
		if (colon == NULL) {
			p->v = fail(m, EV_HEADER, "io-error", p->r);
			return;
		}
		value = (const char *)colon + 1;
		len = (size_t)(B->in + n - colon - 1);
		len -= (uint64_t)n == f->len && B->in[n - 1] == '\n';
		put(&B->pkt, f->name, f->name_len);
	} else {
		const struct edit *e = &B->edits.list[it->edit];
		value = B->edits.text + e->value, len = e->value_len;
		put(&B->pkt, B->edits.text + e->name, e->name_len);
	}
	put(&B->pkt, "", 1);
	if (!(m->steps & SMFIP_HDR_LEADSPC) && len > 0 && value[0] == ' ')
		value++, len--;
	put(&B->pkt, value, len < room ? len : room);
	put(&B->pkt, "", 1);
	finish(B->pkt.b, B->pkt.len);
	p->v = ask(m, EV_HEADER, false, p->r);
}

static enum milter_verdict body_chunk(struct milter *m, struct milter_reply *r)
{
	finish(B->pkt.b, B->pkt.len);
	enum milter_verdict v = ask(m, EV_BODY, false, r);
	begin(&B->pkt, SMFIC_BODY);
	return v;
}

/* SMFIC_BODY: the body in chunks, with CRLF line ends as on the wire, until the milter has seen
 * it all or asks to skip the rest. */
static enum milter_verdict send_body(struct milter *m, struct milter_reply *r)
{
	enum milter_verdict v = MV_CONTINUE;
	uint64_t off = M.msg.body;

	begin(&B->pkt, SMFIC_BODY);
	while (off < M.msg.end && going(m, v) && m->skip != SMFIC_BODY) {
		uint64_t want = M.msg.end - off;
		ssize_t n = pread(M.msg.fd, B->read, want < READ_BUF ? (size_t)want : READ_BUF,
				  (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return fail(m, EV_BODY, "io-error", r);
		const unsigned char *p = B->read, *end = B->read + n;
		off += (uint64_t)(end - p);
		while (p < end && going(m, v) && m->skip != SMFIC_BODY) {
			size_t room = 5 + MILTER_CHUNK_SIZE - B->pkt.len;
			const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t span = (size_t)((nl ? nl : end) - p),
			       take = span < room ? span : room;
			if (room < 2) {
				v = body_chunk(m, r);
				continue;
			}
			memcpy(B->pkt.b + B->pkt.len, p, take);
			B->pkt.len += take, p += take;
			if (p == nl && 5 + MILTER_CHUNK_SIZE - B->pkt.len >= 2)
				B->pkt.b[B->pkt.len++] = '\r', B->pkt.b[B->pkt.len++] = '\n', p++;
		}
	}
	if (B->pkt.len > 5 && going(m, v) && m->skip != SMFIC_BODY)
		v = body_chunk(m, r);
	return v;
}

/* The end of the headers and of the message, with the macro Postfix sends there. */
static enum milter_verdict end_event(struct milter *m, enum event e, struct milter_reply *r)
{
	macros_begin(events[e].cmd);
	macro("i", M.id ? M.id : "");
	begin(&B->pkt, events[e].cmd);
	seal();
	return ask(m, e, true, r);
}

/* What a quarantine means here, with no hold queue: the message is not taken (4xx), and the
 * sender's queue holds it instead. */
static enum milter_verdict quarantine(struct milter *m, const char *reason, struct milter_reply *r)
{
	log_message("quarantined", m->spec, reason);
	r->milter = m->spec;
	text_copy(r->text, sizeof r->text, quarantine_text);
	return MV_TEMPFAIL;
}

/* The end of the message to one milter: its final reply, with header changes and perhaps a
 * quarantine before it. */
static enum milter_verdict end_of_message(struct milter *m, struct milter_reply *r)
{
	struct exchange x = { .event = SMFIC_BODYEOB,
			      .actions = m->actions,
			      .edits = &B->edits,
			      .lead_space = (m->steps & SMFIP_HDR_LEADSPC) != 0 };

	macros_begin(SMFIC_BODYEOB);
	macro("i", M.id ? M.id : "");
	begin(&B->pkt, SMFIC_BODYEOB);
	seal();
	m->skip = 0;
	if (!queue(m, Mac.b, Mac.len) || !queue(m, B->pkt.b, B->pkt.len) || !flush(m))
		return fail(m, EV_EOB, errno_word(errno), r);
	if (!take_replies(m, &x))
		return fail(m, EV_EOB, x.error, r);
	m->in_txn = false;
	enum milter_verdict v = verdict(m, EV_EOB, &x, r);
	return v == MV_CONTINUE && x.quarantined ? quarantine(m, x.reason, r) : v;
}

/* The whole message to one milter, the changes of those before it applied: its header fields,
 * the end of them, the body, the end. */
static enum milter_verdict feed(struct milter *m, struct milter_reply *r)
{
	static struct pass p;

	p = (struct pass){ .edits = B->edits.count, .sink = to_milter, .m = m, .r = r };
	if (!scan_fields(&p))
		return fail(m, EV_HEADER, "io-error", r);
	if (going(m, p.v))
		p.v = end_event(m, EV_EOH, r);
	if (going(m, p.v) && !(m->steps & SMFIP_NOBODY))
		p.v = send_body(m, r);
	if (going(m, p.v))
		p.v = end_of_message(m, r);
	return p.v;
}

/* One milter's look at the message, within MILTER_MESSAGE_TIMEOUT. The changes of a milter
 * that failed are dropped with it. */
static enum milter_verdict look(struct milter *m, struct milter_reply *r)
{
	size_t count = B->edits.count, used = B->edits.used;

	switch (m->state) {
	case MS_OFF: return MV_CONTINUE;
	case MS_FAILED:
	case MS_REFUSED: return held(m, r);
	case MS_OPEN: break;
	}
	if (m->msg_done)
		return MV_CONTINUE;
	M.phase_end = now_ms() + M.message_ms;
	enum milter_verdict v = feed(m, r);
	M.phase_end = 0;
	if (m->state != MS_OPEN)
		B->edits.count = count, B->edits.used = used;
	return v;
}

enum milter_verdict milter_message(struct md_txn *txn, size_t prefix_len, struct milter_reply *r)
{
	enum milter_verdict v = MV_CONTINUE;

	M.msg = (struct message){ .fd = txn->spool_fd,
				  .start = prefix_len,
				  .end = txn->stored_bytes };
	B->edits.count = B->edits.used = 0;
	for (size_t i = 0; i < M.count && v == MV_CONTINUE && M.discarded_by == NULL; i++)
		v = look(&M.list[i], r);
	if (M.discarded_by != NULL) {
		log_message("discarded", M.discarded_by, NULL);
		return MV_DISCARD;
	}
	return v;
}

/* ---- the changes into the spool ---- */

static bool out_flush(struct pass *p)
{
	if (!p->failed && B->pkt.len > 0 &&
	    write(p->fd, B->pkt.b, B->pkt.len) != (ssize_t)B->pkt.len)
		p->failed = true;
	B->pkt.len = 0;
	return !p->failed;
}

static void out_put(struct pass *p, const char *s, size_t n)
{
	if (n > sizeof B->pkt.b - B->pkt.len && !out_flush(p))
		return;
	if (n > sizeof B->pkt.b) {
		p->failed = true; /* never: a name and a value each fit in MILTER_EDIT_BYTES */
		return;
	}
	memcpy(B->pkt.b + B->pkt.len, s, n);
	B->pkt.len += n;
}

/* A field into the new spool: one of the message's as it was, byte for byte, or "Name:value"
 * with the value as it follows the colon. */
static void to_file(struct pass *p, const struct item *it)
{
	if (it->field != NULL) {
		if (out_flush(p) && md_copy_range(M.msg.fd, it->field->off,
						  it->field->off + it->field->len, p->fd) != 0)
			p->failed = true;
		return;
	}
	const struct edit *e = &B->edits.list[it->edit];
	out_put(p, B->edits.text + e->name, e->name_len);
	out_put(p, ":", 1);
	out_put(p, B->edits.text + e->value, e->value_len);
	out_put(p, "\n", 1);
}

/* The new start of the message: our Return-Path: and Received: as they are, then the fields
 * with every change applied. */
static int write_head(int fd, void *ctx)
{
	struct pass *p = ctx;

	p->fd = fd;
	B->pkt.len = 0;
	if (md_copy_range(M.msg.fd, 0, M.msg.start, fd) != 0)
		return -1;
	if (!scan_fields(p))
		p->failed = true;
	return out_flush(p) ? 0 : -1;
}

enum md_result milter_apply(struct md_txn *txn)
{
	static struct pass p;

	if (B->edits.count == 0)
		return MD_OK;
	p = (struct pass){ .edits = B->edits.count, .sink = to_file };
	M.msg.fd = txn->spool_fd;
	/* the header section's end is where the copy resumes: scan_fields finds it again */
	return md_rewrite(txn, M.msg.header_end, write_head, &p);
}
