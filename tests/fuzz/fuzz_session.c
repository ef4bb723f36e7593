/* A libFuzzer target: one whole session over the input bytes, through the real smtp_session()
 * and mailbox.c, delivering into a scratch Maildir root. After each session it checks what
 * the contract promises and aborts when a promise is broken. */
#define _GNU_SOURCE
#include "../../smtp.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256], out_path[300], in_path[300];

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
	snprintf(out_path, sizeof out_path, "%s/out", root);
	snprintf(in_path, sizeof in_path, "%s/in", root);
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
	/* y.example, catch, out, in */
	if (entries > 4)
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

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
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
	};

	snprintf(tmpl, sizeof tmpl, "%s/%%d/%%u", root);
	snprintf(catch_all, sizeof catch_all, "%s/catch", root);
	cfg.mail_template = templated ? tmpl : catch_all;
	int in = open(in_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	int out = open(out_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (in < 0 || out < 0 || (size > 1 && write(in, data + 1, size - 1) != (ssize_t)(size - 1)))
		abort();
	lseek(in, 0, SEEK_SET);
	int saved_in = dup(0), saved_out = dup(1);
	dup2(in, 0);
	dup2(out, 1);
	smtp_session(&cfg);
	dup2(saved_in, 0);
	dup2(saved_out, 1);
	close(saved_in);
	close(saved_out);
	close(in);

	static char replies[1 << 20];
	ssize_t n = pread(out, replies, sizeof replies - 1, 0);
	close(out);
	if (n < 0)
		abort();
	replies[n] = '\0';
	check_replies(replies, (size_t)n);
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
