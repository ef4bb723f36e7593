/* smtpd.c: options, the launcher's environment, start-up. */
#define _POSIX_C_SOURCE 200809L
#include "smtp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: smtpd [-Lpe] [-h hostname] [-m template] [-d domain,...] [-r max_rcpt] "
	"[-s max_bytes] [-t seconds] [-T seconds] [-M milter]... [-F tempfail|accept|reject] "
	"| smtpd -b [options] address ... | smtpd -V";

/* --help: the usage line, then a line per option; the reference is smtpd(8). */
static const char help_text[] =
	"  -h NAME      host name in the greeting and Received: (default: gethostname)\n"
	"  -m TEMPLATE  where mail goes: %u local part, %d domain (default: $HOME/Maildir)\n"
	"  -d DOMAINS   the domains to receive for, comma-separated; others get 550 5.7.1\n"
	"  -e           user+detail@ into the folder .detail/ of the Maildir when it exists\n"
	"  -s BYTES     largest message (default 26214400)\n"
	"  -r N         most recipients per message, 1 to 1000 (default 100)\n"
	"  -t SECONDS   inactivity limit (default 300)\n"
	"  -T SECONDS   whole-session limit (default 1800)\n"
	"  -L           speak LMTP\n"
	"  -p           expect a PROXY protocol header first\n"
	"  -M MILTER    a milter, unix:/path or inet:host:port; up to 4, in order\n"
	"  -F ACTION    a milter that fails means tempfail (default), accept or reject\n"
	"  -b           probe: where each address would go; nothing is delivered\n"
	"  -V           print the version\n"
	"See smtpd(8).\n";

static char default_template[MD_PATH_MAX];
static char host_buf[HELO_MAX + 1];

static _Noreturn void die(int status, const char *what, const char *detail)
{
	dprintf(2, "smtpd: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	exit(status);
}

static _Noreturn void die_usage(const char *what, const char *detail)
{
	dprintf(2, "smtpd: %s%s%s\n%s\n", what, detail ? ": " : "", detail ? detail : "",
		usage_text);
	exit(EXIT_USAGE);
}

/* "smtpd: -r 1001: out of range (1 to 1000)": the option, its value, what it accepts; then the
 * usage line. value is NULL for an option given without one. */
static _Noreturn void die_option(int opt, const char *value, const char *what)
{
	if (value != NULL && *value == '\0')
		value = "''";
	dprintf(2, "smtpd: -%c%s%s: %s\n%s\n", opt, value ? " " : "", value ? value : "", what,
		usage_text);
	exit(EXIT_USAGE);
}

static _Noreturn void die_number(int opt, const char *text, const char *what, uint64_t min,
				 uint64_t max)
{
	char range[80];

	snprintf(range, sizeof range, "%s (%llu to %llu)", what, (unsigned long long)min,
		 (unsigned long long)max);
	die_option(opt, text, range);
}

/* A decimal number in [min, max], nothing else: no sign, no blanks, no overflow. */
static uint64_t parse_number(int opt, const char *text, uint64_t min, uint64_t max)
{
	uint64_t value = 0;

	if (*text == '\0')
		die_number(opt, "''", "empty value", min, max);
	for (const char *p = text; *p; p++) {
		if (*p < '0' || *p > '9')
			die_number(opt, text, "not a decimal number", min, max);
		unsigned digit = (unsigned)(*p - '0');
		if (value > (UINT64_MAX - digit) / 10)
			die_number(opt, text, "out of range", min, max);
		value = value * 10 + digit;
	}
	if (value < min || value > max)
		die_number(opt, text, "out of range", min, max);
	return value;
}

/* A host name goes into the greeting, Received: and file names: printable, no blanks. */
static const char *checked_hostname(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > HELO_MAX)
		die_number('h', *name ? "..." : "''", "host name length out of range", 1, HELO_MAX);
	for (const char *p = name; *p; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == '/')
			die_option('h', name, "blank, control byte, non-ASCII or / in host name");
	return name;
}

/* -d: a comma-separated list of domain names, each as RCPT would take it. */
static const char *checked_domains(const char *list)
{
	const char *p = list;

	for (;;) {
		size_t len = strcspn(p, ",");
		if (len == 0 || len > DOMAIN_MAX)
			die_option('d', list,
				   "a comma-separated list of domains, none empty or "
				   "longer than 255 octets");
		for (size_t i = 0; i < len; i++)
			if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f || p[i] == '/' ||
			    p[i] == '@')
				die_option('d', list, "blank, control byte, / or @ in a domain");
		if (p[len] == '\0')
			return list;
		p += len + 1;
	}
}

/* -M: "unix:/absolute/path" or "inet:host:port" ("inet:[::1]:port" for IPv6 as well). */
static const char *checked_milter(const char *spec)
{
	static const char what[] = "unix:/path or inet:host:port, port 1 to 65535";
	size_t sun_path_max = sizeof((struct sockaddr_un *)0)->sun_path;

	if (strncmp(spec, "unix:", 5) == 0) {
		if (spec[5] != '/' || strlen(spec + 5) >= sun_path_max)
			die_option('M', spec, "unix: needs an absolute path of at most 107 octets");
		return spec;
	}
	const char *colon = strrchr(spec, ':');
	if (strncmp(spec, "inet:", 5) != 0 || colon == spec + 4 || colon == spec + 5 ||
	    strlen(colon + 1) > 5 || strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
	    colon[1] == '\0' || atoi(colon + 1) < 1 || atoi(colon + 1) > 65535)
		die_option('M', spec, what);
	return spec;
}

static enum milter_fallback checked_fallback(const char *word)
{
	static const char *const words[] = { [MILTER_TEMPFAIL] = "tempfail",
					     [MILTER_ACCEPT] = "accept",
					     [MILTER_REJECT] = "reject" };

	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
		if (strcmp(word, words[i]) == 0)
			return (enum milter_fallback)i;
	die_option('F', word, "tempfail, accept or reject");
}

static const char *default_hostname(void)
{
	if (gethostname(host_buf, sizeof host_buf - 1) != 0 || host_buf[0] == '\0')
		snprintf(host_buf, sizeof host_buf, "localhost");
	return checked_hostname(host_buf);
}

/* $HOME/Maildir, or the password database's home when HOME is unset (xinetd's passenv =).
 * HOME is a path, never a template: each % in it is doubled so that it stands for itself. */
static const char *home_maildir(void)
{
	const char *home = getenv("HOME");
	struct text t = text_on(default_template, sizeof default_template);

	if (home == NULL || *home == '\0') {
		struct passwd *pw = getpwuid(getuid());
		if (pw == NULL || pw->pw_dir == NULL || *pw->pw_dir == '\0')
			die(EXIT_OSERR, "no HOME and no home directory for this user", NULL);
		home = pw->pw_dir;
	}
	for (const char *p = home; *p != '\0'; p++)
		text_add_n(&t, *p == '%' ? "%%" : p, *p == '%' ? 2 : 1);
	text_add(&t, "/Maildir");
	if (t.cut)
		die(EXIT_OSERR, "home directory path too long", NULL);
	return default_template;
}

/* Each option letter, and ':' after those that take a value. */
static const char option_letters[] = "bLpeVh:m:d:r:s:t:T:M:F:";

static void set_option(struct config *cfg, int opt, const char *value)
{
	switch (opt) {
	case 'b': cfg->probe = true; break;
	case 'L': cfg->lmtp = true; break;
	case 'p': cfg->proxy = true; break;
	case 'e': cfg->detail_folders = true; break;
	case 'V': printf("smtpd %s\n", SMTPD_VERSION); exit(EXIT_QUIT);
	case 'h': cfg->hostname = checked_hostname(value); break;
	case 'm': cfg->mail_template = value; break;
	case 'd': cfg->domains = checked_domains(value); break;
	case 'M':
		if (cfg->milter_count == MILTER_MAX)
			die_option('M', value, "at most 4 milters");
		cfg->milters[cfg->milter_count++] = checked_milter(value);
		break;
	case 'F': cfg->milter_fallback = checked_fallback(value); break;
	case 'r': cfg->max_rcpt = parse_number(opt, value, 1, RCPT_LIMIT_MAX); break;
	case 's': cfg->max_size = parse_number(opt, value, 1, UINT64_MAX / 2); break;
	case 't': cfg->idle_timeout = (unsigned)parse_number(opt, value, 1, TIMEOUT_MAX); break;
	case 'T': cfg->session_timeout = (unsigned)parse_number(opt, value, 1, TIMEOUT_MAX); break;
	}
}

/* POSIX's utility syntax, as POSIX getopt(3) reads it: options end at the first operand or at
 * "--"; "-Lp" is -L -p; a value follows its letter or is the next argument. By hand, because
 * getopt's four variables are bound by the dynamic loader at every start (about 5,000
 * instructions, 3 % of a one-message session). Returns where the operands start. */
static int read_options(int argc, char **argv, struct config *cfg)
{
	int i = 1;

	for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
		if (argv[i][1] == '-' && argv[i][2] == '\0')
			return i + 1;
		for (const char *p = argv[i] + 1; *p != '\0'; p++) {
			const char *letter = *p == ':' ? NULL : strchr(option_letters, *p);
			if (letter == NULL)
				die_option(*p, NULL, "unknown option");
			if (letter[1] != ':') {
				set_option(cfg, *p, NULL);
				continue;
			}
			const char *value = p[1] != '\0' ? p + 1 : i + 1 < argc ? argv[++i] : NULL;
			if (value == NULL)
				die_option(*p, NULL, "needs a value");
			set_option(cfg, *p, value);
			break;
		}
	}
	return i;
}

/* Returns where the operands start: with -b, the addresses to look up. */
static int parse_options(int argc, char **argv, struct config *cfg)
{
	/* Looked at only when it starts with "--": a session's start-up calls no strcmp. */
	if (argc > 1 && argv[1][0] == '-' && argv[1][1] == '-' && strcmp(argv[1], "--help") == 0) {
		printf("%s\n%s", usage_text, help_text);
		exit(EXIT_QUIT);
	}
	int operands = read_options(argc, argv, cfg);
	if (cfg->probe && operands == argc)
		die_option('b', NULL, "needs at least one address after the options");
	if (!cfg->probe && operands != argc)
		die_usage(argv[operands], "unexpected argument (only -b takes addresses)");
	if (cfg->mail_template != NULL &&
	    (*cfg->mail_template == '\0' || strlen(cfg->mail_template) >= MD_PATH_MAX))
		die_number('m', *cfg->mail_template ? "..." : "''", "template length out of range",
			   1, MD_PATH_MAX - 1);
	return operands;
}

/* Only what an address can hold passes; "::ffff:192.0.2.1" is shown as the IPv4 it is. */
static void set_client_addr(struct config *cfg, const char *text)
{
	size_t len = strspn(text, "0123456789abcdefABCDEF:.");

	if (len == 0 || text[len] != '\0' || len >= sizeof cfg->client_addr)
		return;
	if (strncmp(text, "::ffff:", 7) == 0 && strchr(text + 7, '.') != NULL)
		text += 7;
	snprintf(cfg->client_addr, sizeof cfg->client_addr, "%s", text);
}

/* tcpserver, systemd Accept=yes, xinetd, then the socket itself; a pipe has no address. */
static void find_client_addr(struct config *cfg)
{
	static const char *const vars[] = { "TCPREMOTEIP", "REMOTE_ADDR", "REMOTE_HOST" };
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	char text[INET6_ADDRSTRLEN];

	for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
		const char *value = getenv(vars[i]);
		if (value != NULL && *value != '\0') {
			set_client_addr(cfg, value);
			if (cfg->client_addr[0] != '\0')
				return;
		}
	}
	if (getpeername(0, (struct sockaddr *)&ss, &len) != 0)
		return;
	if (ss.ss_family == AF_INET &&
	    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, text, sizeof text))
		set_client_addr(cfg, text);
	else if (ss.ss_family == AF_INET6 &&
		 inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, text, sizeof text))
		set_client_addr(cfg, text);
}

/* A descriptor number from the launcher's environment, open in this process; else -1. */
static int launcher_fd(const char *var)
{
	const char *text = getenv(var);
	int fd = 0;

	if (text == NULL || *text == '\0' || strlen(text) > 6 ||
	    strspn(text, "0123456789") != strlen(text))
		return -1;
	for (const char *p = text; *p != '\0'; p++)
		fd = fd * 10 + (*p - '0');
	return fcntl(fd, F_GETFD) == -1 ? -1 : fd;
}

/* UCSPI-TLS (ucspi-tls(2)): STARTTLS is offered only when the launcher gave all three fds and
 * each is open; a half-made setup is logged once and the session goes on without TLS. */
static void find_tls(struct config *cfg)
{
	static const char *const vars[3] = { "SSLCTLFD", "SSLREADFD", "SSLWRITEFD" };
	int fd[3];
	unsigned set = 0, valid = 0;

	for (int i = 0; i < 3; i++) {
		set += getenv(vars[i]) != NULL;
		fd[i] = launcher_fd(vars[i]);
		valid += fd[i] >= 0;
	}
	if (set == 0)
		return;
	if (valid < 3) {
		log_line(L_WARN, "tls-unavailable reason=SSL-fds-not-open");
		return;
	}
	cfg->tls = true;
	cfg->tls_ctl = fd[0], cfg->tls_rd = fd[1], cfg->tls_wr = fd[2];
}

/* A store that is not there is the admin's to fix, not the client's: nothing is created in
 * its place, the client is told to come back later, and the log says which path. The probe
 * (-b) prints the same reply as a line of its own output. */
static void check_store(const struct config *cfg)
{
	char path[MD_PATH_MAX];

	if (md_check_store(cfg->mail_template, path, sizeof path) == 0)
		return;
	int e = errno;
	char reply[LINE_MAX_OCTETS];
	struct text r = text_on(reply, sizeof reply);
	text_add(&r, "421 4.3.0 ");
	text_add(&r, cfg->hostname);
	text_add(&r, " Mail store unavailable, try again later");
	char line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);
	text_add(&t, "unavailable path=");
	log_add_value(&t, path);
	text_add(&t, " errno=");
	log_add_errno(&t, e);
	log_add_reply(&t, reply);
	log_text(L_ERR, line);
	text_add(&r, cfg->probe ? "\n" : "\r\n");
	(void)!write(1, reply, r.len);
	exit(EXIT_TEMPFAIL);
}

/* Under a launcher the working directory is the launcher's (xinetd's is /), so a relative -m
 * that works in a pipe points elsewhere there: said once, before the store is looked at. */
static void warn_relative_template(const struct config *cfg)
{
	struct stat st;
	char cwd[MD_PATH_MAX], line[LOG_LINE_MAX];
	struct text t = text_on(line, sizeof line);

	if (cfg->mail_template[0] == '/' || fstat(0, &st) != 0 || !S_ISSOCK(st.st_mode))
		return;
	text_add(&t, "relative-template template=");
	log_add_value(&t, cfg->mail_template);
	text_add(&t, " cwd=");
	log_add_value(&t, getcwd(cwd, sizeof cwd) ? cwd : "?");
	log_text(L_WARN, line);
}

int main(int argc, char **argv)
{
	struct config cfg = {
		.max_size = DEFAULT_MAX_SIZE,
		.max_rcpt = DEFAULT_MAX_RCPT,
		.idle_timeout = DEFAULT_IDLE_TIMEOUT,
		.session_timeout = DEFAULT_SESSION_TIMEOUT,
	};

	int operands = parse_options(argc, argv, &cfg);
	if (cfg.hostname == NULL)
		cfg.hostname = default_hostname();
	if (cfg.mail_template == NULL)
		cfg.mail_template = home_maildir();
	/* A vanished client must surface as EPIPE, a file over RLIMIT_FSIZE as EFBIG. */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);
	umask(077);
	log_open();
	if (cfg.probe) {
		md_set_probe();
		check_store(&cfg);
		return smtp_probe(&cfg, argv + operands, (size_t)(argc - operands));
	}
	find_client_addr(&cfg);
	find_tls(&cfg);
	warn_relative_template(&cfg);
	check_store(&cfg);
	return smtp_session(&cfg);
}
