/* smtp.h: what smtpd.c, session.c and mailbox.c share. */
#ifndef SMTP_H
#define SMTP_H

/* On 32-bit boards (ARM, MIPS) glibc's off_t and time_t are 32 bits unless asked: a message
 * past 2 GiB, a 64-bit inode number (stat fails with EOVERFLOW) and any date past January 2038
 * would break. Every .c file includes this header before any system header. */
#define _FILE_OFFSET_BITS 64
#define _TIME_BITS        64

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

_Static_assert(sizeof(off_t) == 8, "off_t must be 64 bits: see _FILE_OFFSET_BITS above");
_Static_assert(sizeof(time_t) == 8, "time_t must be 64 bits: see _TIME_BITS above");

#define SMTPD_VERSION "1.0.0"

/* Limits: each one here and nowhere else. */
enum {
	LINE_MAX_OCTETS = 512, /* command line incl. CRLF, RFC 5321 4.5.3.1.4 */
	LOCAL_MAX = 64,        /* local part, 4.5.3.1.1 */
	DOMAIN_MAX = 255,      /* domain, 4.5.3.1.2 */
	PATH_MAX_OCTETS = 256, /* path incl. <>, 4.5.3.1.3 */
	HELO_MAX = 255,        /* what we keep of a HELO/EHLO name */
	MAX_BAD_COMMANDS = 10, /* then 421 4.7.0 and exit */
	MAX_RECEIVED = 100,    /* more Received: fields is a loop: 554 5.4.6 */
	RCPT_LIMIT_MAX = 1000, /* the largest -r accepted */
	TIMEOUT_MAX = 86400,   /* the largest -t and -T accepted, seconds */
	IN_BUF_SIZE = 65536,   /* read buffer; a read never asks for less than 16 KiB */
	OUT_BUF_SIZE = 8192,   /* reply buffer, flushed before every blocking read */
	DATA_CHUNK = 131072,   /* message bytes gathered before one write(2) */
	MD_PATH_MAX = 1024,    /* an expanded template, or the -m argument */
	ADDR_TEXT_MAX = 64,    /* a client address as text */
	LOG_LINE_MAX = 2048,   /* one log line, without the "smtpd[pid]: " */
	MSG_ID_MAX = 64,       /* message id, and the file name base without host */
	TLS_INFO_MAX = 16384,  /* the launcher's "VAR=value\0...\0\0" after STARTTLS */
	TLS_NAME_MAX = 64,     /* what we keep of SSL_PROTOCOL or SSL_CIPHER */
	MILTER_MAX = 4,        /* -M given more often is a usage error */
	/* Milters: each wait is also cut to -t and to what is left of -T. */
	MILTER_CONNECT_TIMEOUT = 10,  /* seconds to connect to a milter and agree on the protocol */
	MILTER_REPLY_TIMEOUT = 30,    /* seconds for each reply, and for each write to a milter */
	MILTER_MESSAGE_TIMEOUT = 300, /* seconds for one milter's whole look at a message */
	MILTER_CHUNK_SIZE = 65535,    /* body octets per packet: what libmilter takes */
	MILTER_PACKET_MAX = 65536,    /* a packet's length field (command and data), either way */
	MILTER_EDITS_MAX = 64,        /* header changes per message, all milters together */
	MILTER_EDIT_BYTES = 65536,    /* the names and values of those changes, all together */
	MILTER_NAME_MAX = 256,        /* a header field name, to or from a milter */
	/* refused RCPTs since the last delivered message; one more ends the session: a whole
	 * transaction at -r 1000 whose every recipient bounces stays within it */
	MAX_REFUSED_RCPT = 1000,
	MAILDIRSIZE_MAX = 16384, /* a longer maildirsize is not added up (the reader's to redo) */
	SPACE_RESERVE = 1048576, /* with SIZE=, free octets a file system keeps beyond it */
};

/* The launcher's details after STARTTLS are read into the read buffer, with a NUL after. */
_Static_assert(TLS_INFO_MAX < IN_BUF_SIZE, "TLS_INFO_MAX must fit the read buffer");

#define DEFAULT_MAX_SIZE        26214400ULL
#define DEFAULT_MAX_RCPT        100
#define DEFAULT_IDLE_TIMEOUT    300
#define DEFAULT_SESSION_TIMEOUT 1800

/* Exit statuses, from the contract. */
enum {
	EXIT_QUIT = 0,
	EXIT_DROPPED = 1, /* client vanished, timed out, too many errors, bad PROXY */
	EXIT_USAGE = 64,
	EXIT_OSERR = 71,
	EXIT_TEMPFAIL = 75,
	EXIT_PROBE_FAILED = 67, /* -b: some address would not be delivered (EX_NOUSER) */
};

/* -F: what a milter that cannot be reached, times out or breaks the protocol means. */
enum milter_fallback { MILTER_TEMPFAIL, MILTER_ACCEPT, MILTER_REJECT };

struct config {
	const char *hostname;            /* -h: greeting, Received:, postmaster's %d */
	const char *mail_template;       /* -m */
	const char *domains;             /* -d: "a.example,b.example", checked; NULL: no list */
	bool detail_folders;             /* -e: user+detail@ into the folder .detail/ */
	const char *milters[MILTER_MAX]; /* -M: "unix:/path" or "inet:host:port", checked */
	size_t milter_count;
	enum milter_fallback milter_fallback; /* -F */
	uint64_t max_size;                    /* -s */
	size_t max_rcpt;                      /* -r */
	unsigned idle_timeout;                /* -t, seconds */
	unsigned session_timeout;             /* -T, seconds */
	bool lmtp;                            /* -L */
	bool proxy;                           /* -p */
	bool probe;                           /* -b: the operands are addresses to look up */
	char client_addr[ADDR_TEXT_MAX];      /* "" when unknown (a pipe) */
	bool tls;                             /* a UCSPI-TLS launcher: STARTTLS is offered */
	int tls_ctl, tls_rd, tls_wr;          /* then SSLCTLFD, SSLREADFD, SSLWRITEFD */
};

/* Text appended piece by piece into a fixed array, as qmail's fmt_* do: the per-message path
 * uses it where snprintf's format parsing would cost more than the rest of the work. It never
 * writes past size, always ends in a NUL, and a piece that does not fit is cut and sets cut. */
struct text {
	char *buf;
	size_t size, len; /* size >= 1; len < size */
	bool cut;
};

static inline struct text text_on(char *buf, size_t size)
{
	buf[0] = '\0';
	return (struct text){ buf, size, 0, false };
}

static inline void text_add_n(struct text *t, const char *s, size_t n)
{
	size_t room = t->size - 1 - t->len;

	if (n > room)
		n = room, t->cut = true;
	memcpy(t->buf + t->len, s, n);
	t->len += n;
	t->buf[t->len] = '\0';
}

static inline void text_add(struct text *t, const char *s)
{
	text_add_n(t, s, strlen(s));
}

/* In decimal, with leading zeros up to width digits. */
static inline void text_add_num(struct text *t, unsigned long long n, size_t width)
{
	char digits[20]; /* 2^64 - 1 has 20 */
	size_t i = sizeof digits;

	do
		digits[--i] = (char)('0' + n % 10);
	while ((n /= 10) != 0);
	while (i > 0 && sizeof digits - i < width)
		digits[--i] = '0';
	text_add_n(t, digits + i, sizeof digits - i);
}

/* The whole of src into dst, or false when it had to be cut. */
static inline bool text_copy(char *dst, size_t size, const char *src)
{
	struct text t = text_on(dst, size);

	text_add(&t, src);
	return !t.cut;
}

static inline bool is_alpha(unsigned c)
{
	return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static inline bool is_digit(unsigned c)
{
	return c >= '0' && c <= '9';
}

/* address.c: a path, "<" [source route] mailbox ">"; on success *rest points after the ">". */
struct address {
	char text[PATH_MAX_OCTETS + 1]; /* the mailbox as written, without <> and source route */
	char local[LOCAL_MAX + 1];      /* quotes and quoted-pairs undone */
	char domain[DOMAIN_MAX + 1];
	bool has_8bit;
};

enum path_result { PATH_OK, PATH_NULL, PATH_POSTMASTER, PATH_BAD, PATH_BAD_UTF8 };
enum path_result parse_path(const char *p, struct address *a, const char **rest);

/* proxy.c: the PROXY protocol header (v1 and v2) at the start of buf. PROXY_OK sets *used to
 * its length and addr to the client's address ("" for LOCAL, UNKNOWN, UNSPEC and UNIX, which
 * keep the socket's); PROXY_MORE asks for more input, never past cap octets in all. */
enum proxy_result { PROXY_MORE, PROXY_OK, PROXY_BAD };
enum proxy_result proxy_parse(const unsigned char *buf, size_t have, size_t cap, size_t *used,
			      char *addr, size_t addr_size);

/* session.c: runs one whole session on fds 0 and 1; returns the exit status. */
int smtp_session(struct config *cfg);
/* session.c: -b, for each address the Maildir or the reply, on stdout; delivers nothing. */
int smtp_probe(struct config *cfg, char **addrs, size_t count);

/* log.c: one log line, to syslog, the journal or stderr (chosen once by log_open); log_text
 * takes it made. Levels are syslog's and sd-daemon(3)'s numbers. */
enum log_level {
	L_ERR = 3,  /* smtpd could not start: the admin must act */
	L_WARN = 4, /* a recipient refused, a delivery failed, a message rejected */
	L_INFO = 6, /* deliveries and sessions */
};
void log_open(void);
void log_line(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_text(enum log_level level, const char *line);
void log_add_value(struct text *t, const char *value);  /* blanks become '?': one token */
void log_add_errno(struct text *t, int e);              /* "EACCES", or "E<n>" */
void log_add_reply(struct text *t, const char *reply);  /* " reply=550 code=5.1.1" */
void log_add_reason(struct text *t, const char *reply); /* " reason=no-such-user" */

/* mailbox.c: recipients to Maildirs, and durable delivery into them. */
enum md_result {
	MD_OK = 0,
	MD_NO_USER,   /* 550 5.1.1: no Maildir at the expanded path */
	MD_NO_DOMAIN, /* 550 5.7.1: the %d part does not exist: we do not relay */
	MD_BAD_NAME,  /* 550 5.1.3: local part or domain could escape the root */
	MD_TEMP,      /* 451 4.3.0: any other failure */
	MD_FULL,      /* 452 4.3.1: ENOSPC, EDQUOT, EFBIG */
	MD_TOO_MANY,  /* 452 4.5.3: no room for another Maildir (fds) */
	MD_QUOTA,     /* 452 4.2.2: over the Maildir's maildirsize quota */
};

/* A Maildir's Maildir++ quota, from its maildirsize (a +detail folder's is its Maildir's). */
struct md_quota {
	bool file;      /* maildirsize exists: each delivery appends its line to it */
	bool known;     /* it was read whole and adds up: its limits are checked */
	bool in_parent; /* the box is a +detail folder: the file is in the Maildir above */
	bool kept;      /* the catch-all's: read once a process, then kept up to date */
	uint64_t max_bytes, max_count; /* 0: no limit */
	uint64_t bytes, count;         /* in use, when known */
};

/* One distinct Maildir in a transaction. */
struct md_box {
	int dir_fd; /* the Maildir directory, O_DIRECTORY; -1 when reopened by path at commit */
	dev_t dev;
	ino_t ino;
	uid_t uid; /* the Maildir's owner: as root, the owner of what is delivered there */
	gid_t gid;
	struct md_quota quota;
	enum md_result result; /* this box's outcome: set when it fails, final after md_commit */
	const char *fail_op;   /* when it failed: the call, and its errno */
	int fail_errno;
	char path[MD_PATH_MAX]; /* expanded path, for log lines */
	char file[MD_PATH_MAX]; /* after md_commit: name in new/ */
};

/* One transaction: the distinct Maildirs of its recipients and the spool file. */
struct md_txn {
	struct md_box *boxes; /* md_txn_init allocates max_boxes of them */
	size_t box_count, max_boxes;
	bool each_alone;        /* LMTP: a box's failure is its own (the caller sets it once) */
	bool detail_folders;    /* -e: user+detail@ into the folder .detail/ (likewise) */
	uint64_t declared_size; /* MAIL's SIZE=, or 0: checked against quota and space at RCPT */
	int spool_fd;           /* -1, or the file in tmp/ of boxes[spool_box] */
	size_t spool_box;
	uint64_t stored_bytes;
	char id[MSG_ID_MAX]; /* "<sec>.M<usec>P<pid>Q<n>", set by md_begin */
	const char *fail_op; /* on failure: the first call that failed, for the log */
	int fail_errno;
	enum md_result fail_result; /* and what it means for the message */
	char why_path[MD_PATH_MAX]; /* after md_add refused: the path that decided, or "" */
	int why_errno;              /* and the errno of a failure that was not the sender's, or 0 */
};

/* At start-up: the catch-all's parent present (the catch-all itself is opened if it exists,
 * made by the first recipient if not), or the directory a template's placeholders start in
 * present. -1 with errno; path names what was checked. */
int md_check_store(const char *tmpl, char *path, size_t size);
int md_txn_init(struct md_txn *txn, size_t max_boxes);
enum md_result md_add(struct md_txn *txn, const char *tmpl, const char *local, const char *domain,
		      size_t *box_index);
enum md_result md_begin(struct md_txn *txn);
enum md_result md_write(struct md_txn *txn, const void *buf, size_t len);
enum md_result md_commit(struct md_txn *txn);
/* The spool rewritten for a milter's header changes: write_head writes the new start of the
 * message into a new file, the old spool from offset keep on follows, and the new file takes
 * the spool's name and place. On failure the spool stays as it was. */
enum md_result md_rewrite(struct md_txn *txn, uint64_t keep, int (*write_head)(int fd, void *ctx),
			  void *ctx);
/* Octets off to end of from, appended to to; -1 with errno. */
int md_copy_range(int from, uint64_t off, uint64_t end, int to);
/* Forgets the boxes past the first keep: a recipient md_add took and a milter then refused. */
void md_forget_boxes(struct md_txn *txn, size_t keep);
void md_abort(struct md_txn *txn);
void md_reset(struct md_txn *txn);
void md_txn_free(struct md_txn *txn);
/* What is wrong with the Maildir at path as one token ("new-is-a-symlink"), or NULL. */
const char *md_explain(const char *path);
/* The address probe (-b): from now on nothing is created; a missing catch-all (or its cur/
 * new/ tmp/) is let pass, as the first session would make it. */
void md_set_probe(void);
bool md_is_catch_all(const char *tmpl);

/* milter.c: the -M mail filters, asked in the Sendmail milter protocol (version 6) as Postfix's
 * smtpd_milters asks them, one call per stage of the session. A verdict other than MV_CONTINUE
 * comes with the line the client gets and the milter that gave it. */
enum milter_verdict { MV_CONTINUE, MV_REJECT, MV_TEMPFAIL, MV_DISCARD };
struct milter_reply {
	const char *milter;         /* the -M spec that decided */
	char text[LINE_MAX_OCTETS]; /* "550 5.7.1 ...", one line without its CRLF */
};
enum milter_verdict milter_connect(const struct config *cfg, struct milter_reply *r);
enum milter_verdict milter_helo(const char *helo, const char *tls_version, const char *cipher,
				struct milter_reply *r);
enum milter_verdict milter_mail(const char *sender, const char *params, struct milter_reply *r);
enum milter_verdict milter_rcpt(const char *rcpt, struct milter_reply *r);
enum milter_verdict milter_data(const char *id, struct milter_reply *r);
/* After the data: the message as the spool holds it after prefix_len (our Return-Path: and
 * Received:), to each milter in turn. MV_DISCARD: store nothing, answer 250. */
enum milter_verdict milter_message(struct md_txn *txn, size_t prefix_len, struct milter_reply *r);
/* The header changes the milters asked for, into the spool, before it is committed. */
enum md_result milter_apply(struct md_txn *txn);
void milter_abort(void); /* the transaction ends undelivered */
void milter_quit(void);  /* the session ends */
/* For the fuzz target: the packets a milter sent in answer to event (an SMFIC_ letter), taken
 * as a session takes them. Returns the verdict, or -1 for a broken protocol; reply gets the
 * line the client would see. */
int milter_parse_replies(int event, const unsigned char *buf, size_t len, char *reply, size_t size);

#endif
