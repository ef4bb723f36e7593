/* mailbox.c: recipients to Maildirs, and durable delivery into them.
 *
 * A commit has two phases. Staging does every step that can fail on its own: the spool is
 * fsynced, and each Maildir gets the message under one name in its tmp/ (a hard link made from
 * the open spool, never from a name, or a copy), fsynced. Only then does publishing rename each
 * tmp/ name into new/ and fsync new/. A failure while staging leaves nothing any reader of
 * new/ could have seen. */
#define _GNU_SOURCE /* O_PATH, AT_EMPTY_PATH */
#include "smtp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
	MD_NAME_MAX = 256, /* a file name in tmp/ or new/, within NAME_MAX */
	MD_HOST_MAX = 128, /* the escaped host name in it */
	MD_COPY_BUF = 65536,
	MD_KEPT_BOXES = 16, /* boxes whose directory stays open from RCPT to the end */
	MD_LINKS_MAX = 40,  /* symbolic links followed on one path, as the kernel allows */
};

#define MD_DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

/* The catch-all Maildir, opened once: it, its tmp/ and its new/ stay open for the whole
 * process, so that a message costs one openat() there, as few as a Maildir allows. */
static struct {
	int fd, tmp_fd, new_fd;
	struct stat st;
} md_catch = { -1, -1, -1, { 0 } };

static bool md_as_root;                   /* euid 0: files get their Maildir's owner */
static bool md_no_create;                 /* the address probe: look, make nothing */
static char md_host[MD_HOST_MAX];         /* gethostname(), escaped, once */
static unsigned long md_counter;          /* the Q<n> of the id */
static unsigned long md_pid;              /* asked once: glibc asks the kernel on every getpid() */
static char md_name[MD_NAME_MAX];         /* <id>.<host>: the name in every tmp/ */
static char md_final[MD_NAME_MAX];        /* <id>.<host>,S=<size>: the name in new/ */
static int md_spool_tmp = -1;             /* tmp/ of the spool's box */
static bool md_spool_in_tmp;              /* the spool still has its name in tmp/ */
static bool md_staged[RCPT_LIMIT_MAX];    /* during md_commit: md_name is in that tmp/ */
static bool md_published[RCPT_LIMIT_MAX]; /* during md_commit: md_final is in that new/ */
static unsigned char md_copy_buf[MD_COPY_BUF];

int md_txn_init(struct md_txn *txn, size_t max_boxes)
{
	memset(txn, 0, sizeof *txn);
	txn->spool_fd = -1;
	if (max_boxes == 0 || max_boxes > RCPT_LIMIT_MAX) {
		errno = EINVAL;
		return -1;
	}
	txn->boxes = calloc(max_boxes, sizeof *txn->boxes);
	if (txn->boxes == NULL)
		return -1;
	txn->max_boxes = max_boxes;
	md_as_root = geteuid() == 0;
	return 0;
}

/* ---- names and templates ---- */

/* A name that could leave its directory, or hide in it, is refused whatever the template. */
static bool md_bad_name(const char *s)
{
	if (*s == '\0' || *s == '.')
		return true;
	for (; *s != '\0'; s++)
		if (*s == '/' || (unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return true;
	return false;
}

/* ASCII-only lower-casing: UTF-8 bytes stay as they are, so that no locale decides a path. */
static bool md_lower(char *dst, size_t size, const char *src, bool cut_at_plus)
{
	size_t n = 0;

	for (; *src != '\0' && !(cut_at_plus && *src == '+'); src++) {
		if (n + 1 >= size)
			return false;
		char c = *src;
		dst[n++] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
	}
	dst[n] = '\0';
	return n > 0;
}

/* Expands the first tlen bytes of tmpl; false when the result does not fit MD_PATH_MAX. */
static bool md_expand(const char *tmpl, size_t tlen, const char *u, const char *d,
		      char out[MD_PATH_MAX])
{
	size_t n = 0;

	for (size_t i = 0; i < tlen; i++) {
		const char *piece = NULL;
		char c = tmpl[i], next = i + 1 < tlen ? tmpl[i + 1] : '\0';
		if (c == '%' && (next == 'u' || next == 'd' || next == '%')) {
			piece = next == 'u' ? u : next == 'd' ? d : "%";
			i++;
		}
		size_t plen = piece ? strlen(piece) : 1;
		if (plen >= MD_PATH_MAX - n)
			return false;
		memcpy(out + n, piece ? piece : &c, plen);
		n += plen;
	}
	out[n] = '\0';
	return true;
}

/* Where %u and %d are, as md_expand sees them, so that "%%u" is never taken for a placeholder. */
struct md_shape {
	bool has_u, has_d;
	size_t d_end;     /* the end of the path component holding the first %d */
	bool d_with_u;    /* that component holds %u too */
	size_t fixed_end; /* the end of the last component before the first placeholder */
};

static struct md_shape md_scan(const char *tmpl)
{
	struct md_shape sh = { false, false, 0, false, 0 };
	bool comp_u = false, in_d = false;
	size_t comp_start = 0;

	for (size_t i = 0;; i++) {
		if (tmpl[i] == '\0' || tmpl[i] == '/') {
			if (in_d)
				sh.d_end = i, sh.d_with_u = comp_u, in_d = false;
			if (!sh.has_u && !sh.has_d)
				sh.fixed_end = i;
			if (tmpl[i] == '\0')
				return sh;
			comp_u = false;
			comp_start = i + 1;
		} else if (tmpl[i] == '%' &&
			   (tmpl[i + 1] == 'u' || tmpl[i + 1] == 'd' || tmpl[i + 1] == '%')) {
			i++;
			if (tmpl[i] != '%' && !sh.has_u && !sh.has_d)
				sh.fixed_end = comp_start > 0 ? comp_start - 1 : 0;
			comp_u |= tmpl[i] == 'u';
			sh.has_u |= tmpl[i] == 'u';
			in_d |= tmpl[i] == 'd' && !sh.has_d;
			sh.has_d |= tmpl[i] == 'd';
		}
	}
}

/* ---- opening Maildirs ---- */

static bool md_missing(int e)
{
	return e == ENOENT || e == ENOTDIR || e == ENAMETOOLONG;
}

/* At RCPT, running out of fds means too many Maildirs: 452 4.5.3 asks for the rest later. */
static enum md_result md_errno_result(int e)
{
	if (e == EMFILE || e == ENFILE)
		return MD_TOO_MANY;
	return e == ENOSPC || e == EDQUOT || e == EFBIG ? MD_FULL : MD_TEMP;
}

static int md_walk(int at, const char *path, uid_t *owners, size_t *links);

/* One symbolic link, held by an O_PATH fd so that what is read is what was checked. */
static int md_follow(int at, int link_fd, const struct stat *st, uid_t *owners, size_t *links)
{
	char target[MD_PATH_MAX];
	ssize_t n = readlinkat(link_fd, "", target, sizeof target);

	if (n < 0 || (size_t)n >= sizeof target)
		return n < 0 ? -1 : (errno = ENAMETOOLONG, -1);
	target[n] = '\0';
	if (*links >= MD_LINKS_MAX)
		return errno = ELOOP, -1;
	owners[(*links)++] = st->st_uid;
	return md_walk(at, target, owners, links);
}

/* The next component, opened without following it; a link is followed by md_follow. */
static int md_step(int at, const char *name, uid_t *owners, size_t *links)
{
	struct stat st;
	int fd = openat(at, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || !(S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode))) {
		close(fd);
		return errno = ENOTDIR, -1;
	}
	if (!S_ISLNK(st.st_mode))
		return fd;
	int next = md_follow(at, fd, &st, owners, links), e = errno;
	close(fd);
	return errno = e, next;
}

/* Resolves path component by component from the directory at, noting who owns each link. */
static int md_walk(int at, const char *path, uid_t *owners, size_t *links)
{
	char name[MD_PATH_MAX];
	int dir = openat(*path == '/' ? AT_FDCWD : at, *path == '/' ? "/" : ".",
			 O_PATH | O_DIRECTORY | O_CLOEXEC);

	while (dir >= 0 && *path != '\0') {
		while (*path == '/')
			path++;
		size_t len = strcspn(path, "/");
		if (len == 0)
			break;
		if (len >= sizeof name) {
			close(dir);
			return errno = ENAMETOOLONG, -1;
		}
		memcpy(name, path, len);
		name[len] = '\0';
		path += len;
		int next = md_step(dir, name, owners, links), e = errno;
		close(dir);
		dir = next;
		errno = e;
	}
	return dir;
}

/* As root, a user who owns a directory on a Maildir's path could point a link at another
 * user's Maildir, or anywhere. A link is followed only where root or the Maildir's owner owns
 * it; every other component is the kernel's to resolve, as it is for anyone. */
static int md_open_dir(const char *path)
{
	/* openat, not open: musl's open() adds an fcntl(FD_CLOEXEC) call to every session. */
	if (!md_as_root)
		return openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	uid_t owners[MD_LINKS_MAX];
	size_t links = 0;
	struct stat st;
	int at = md_walk(AT_FDCWD, path, owners, &links);
	if (at < 0)
		return -1;
	int fd = openat(at, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), e = errno;
	close(at);
	if (fd < 0 || fstat(fd, &st) != 0)
		return fd < 0 ? (errno = e, -1) : (close(fd), -1);
	for (size_t i = 0; i < links; i++) {
		if (owners[i] != 0 && owners[i] != st.st_uid) {
			close(fd);
			return errno = EPERM, -1;
		}
	}
	return fd;
}

/* 1 when fd is a Maildir with real tmp/ and new/, 0 when it is not, -1 (errno) when it is
 * unusable: as root, a tmp/ or new/ of another owner than the Maildir's. */
static int md_is_maildir(int fd, const struct stat *dir)
{
	static const char *const subs[] = { "tmp", "new" };
	struct stat st;

	for (size_t i = 0; i < 2; i++) {
		if (fstatat(fd, subs[i], &st, AT_SYMLINK_NOFOLLOW) != 0)
			return errno == ENOENT || errno == ENOTDIR ? 0 : -1;
		if (!S_ISDIR(st.st_mode))
			return 0;
		if (md_as_root && st.st_uid != dir->st_uid)
			return errno = EPERM, -1;
	}
	return 1;
}

/* Tells a missing domain from a missing user: the %d directory itself decides. */
static enum md_result md_why_missing(const char *tmpl, const char *u, const char *d)
{
	char prefix[MD_PATH_MAX];
	struct md_shape sh = md_scan(tmpl);
	struct stat st;

	if (!sh.has_d || sh.d_with_u)
		return MD_NO_USER;
	if (!md_expand(tmpl, sh.d_end, u, d, prefix))
		return MD_BAD_NAME;
	if (stat(prefix, &st) != 0)
		return md_missing(errno) ? MD_NO_DOMAIN : md_errno_result(errno);
	return S_ISDIR(st.st_mode) ? MD_NO_USER : MD_NO_DOMAIN;
}

/* With %u or %d the file system is the user database: only an existing Maildir is a user. */
static enum md_result md_open_user(const char *tmpl, const char *path, const char *u, const char *d,
				   int *fd, struct stat *st)
{
	*fd = md_open_dir(path);
	if (*fd < 0)
		return md_missing(errno) ? md_why_missing(tmpl, u, d) : md_errno_result(errno);
	int is = fstat(*fd, st) == 0 ? md_is_maildir(*fd, st) : -1;
	if (is == 1)
		return MD_OK;
	int e = errno;
	close(*fd);
	*fd = -1;
	return is == 0 ? md_why_missing(tmpl, u, d) : md_errno_result(e);
}

static void md_close_catch(void)
{
	int *fds[] = { &md_catch.fd, &md_catch.tmp_fd, &md_catch.new_fd };

	for (size_t i = 0; i < 3; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

/* The usual case costs two calls per session: tmp/ and new/ are there, and opening them
 * without following a link (O_NOFOLLOW | O_DIRECTORY) is the check md_is_maildir makes; as
 * root their owners are checked too. Anything else takes the long way below. */
static int md_open_catch_subs(int dfd)
{
	struct stat st;

	md_catch.tmp_fd = openat(dfd, "tmp", MD_DIR_FLAGS);
	md_catch.new_fd = openat(dfd, "new", MD_DIR_FLAGS);
	bool ok = md_catch.tmp_fd >= 0 && md_catch.new_fd >= 0;
	for (size_t i = 0; ok && md_as_root && i < 2; i++)
		ok = fstat(i ? md_catch.new_fd : md_catch.tmp_fd, &st) == 0 &&
		     st.st_uid == md_catch.st.st_uid;
	if (ok)
		return 0;
	int *fds[] = { &md_catch.tmp_fd, &md_catch.new_fd };
	for (size_t i = 0; i < 2; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	return -1;
}

/* cur/ new/ tmp/ are made only when tmp/ or new/ is missing; both are opened without
 * following a link. */
static int md_fill_catch(int dfd)
{
	static const char *const subs[] = { "cur", "new", "tmp" };

	if (fstat(dfd, &md_catch.st) != 0)
		return -1;
	if (md_open_catch_subs(dfd) == 0)
		return 0;
	int is = md_is_maildir(dfd, &md_catch.st);
	if (is < 0)
		return -1;
	if (is == 0 && md_no_create)
		return 0; /* the probe: the first session makes them */
	for (size_t i = 0; is == 0 && i < 3; i++)
		if (mkdirat(dfd, subs[i], 0700) != 0 && errno != EEXIST)
			return -1;
	md_catch.tmp_fd = openat(dfd, "tmp", MD_DIR_FLAGS);
	md_catch.new_fd = openat(dfd, "new", MD_DIR_FLAGS);
	return md_catch.tmp_fd < 0 || md_catch.new_fd < 0 ? -1 : 0;
}

static bool md_parent_exists(const char *path)
{
	char parent[MD_PATH_MAX];
	struct stat st;

	text_copy(parent, sizeof parent, path);
	char *slash = strrchr(parent, '/');
	if (slash == NULL)
		return true; /* the current directory */
	slash[slash == parent] = '\0';
	return stat(parent, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The catch-all is made if missing, but only inside a directory that exists: a typo in -m or
 * a wrong HOME must not build a tree of its own. Its fds are then reused. */
static int md_open_catch(const char *path)
{
	/* One process, one template: a catch-all's path is the same at every call. */
	if (md_catch.fd >= 0)
		return 0;
	md_close_catch();
	int dfd = md_open_dir(path);
	/* EEXIST: a concurrent session made it between our open and our mkdir. */
	if (dfd < 0 && errno == ENOENT && md_no_create) /* the probe: see md_fill_catch */
		return md_parent_exists(path) ? 0 : (errno = ENOENT, -1);
	if (dfd < 0 && errno == ENOENT && (mkdir(path, 0700) == 0 || errno == EEXIST))
		dfd = md_open_dir(path);
	if (dfd < 0)
		return -1;
	md_catch.fd = dfd;
	if (md_fill_catch(dfd) != 0) {
		int e = errno;
		md_close_catch();
		return errno = e, -1;
	}
	return 0;
}

int md_check_store(const char *tmpl, char *path, size_t size)
{
	struct md_shape sh = md_scan(tmpl);
	struct stat st;

	/* Before any transaction: the catch-all opened here is kept for the session, so root's
	 * checks (links, owners) must already apply to it. */
	md_as_root = geteuid() == 0;
	char expanded[MD_PATH_MAX];
	bool catch_all = !sh.has_u && !sh.has_d;

	if (!md_expand(tmpl, catch_all ? strlen(tmpl) : sh.fixed_end, "", "", expanded))
		return errno = ENAMETOOLONG, -1;
	if (expanded[0] == '\0')
		text_copy(expanded, sizeof expanded, tmpl[0] == '/' ? "/" : ".");
	text_copy(path, size, expanded);
	if (catch_all)
		return md_open_catch(expanded);
	if (stat(expanded, &st) != 0)
		return -1;
	return S_ISDIR(st.st_mode) ? 0 : (errno = ENOTDIR, -1);
}

/* ---- recipients ---- */

static bool md_is_catch(int dir_fd)
{
	return dir_fd >= 0 && dir_fd == md_catch.fd;
}

/* The catch-all's fd outlives the transaction; every other one is the box's own. */
static void md_drop(int fd)
{
	if (fd >= 0 && !md_is_catch(fd))
		close(fd);
}

/* Two recipients in one Maildir share one box, hence one file there. Past MD_KEPT_BOXES a box
 * keeps no fd: it is opened again by its path at commit, so that a message to a thousand
 * Maildirs needs no more descriptors than one to sixteen. */
static enum md_result md_append(struct md_txn *txn, int fd, const struct stat *st, const char *path,
				size_t *index)
{
	for (size_t i = 0; i < txn->box_count; i++) {
		if (txn->boxes[i].dev == st->st_dev && txn->boxes[i].ino == st->st_ino) {
			if (fd != txn->boxes[i].dir_fd)
				md_drop(fd);
			return *index = i, MD_OK;
		}
	}
	if (txn->box_count >= txn->max_boxes) {
		md_drop(fd);
		return MD_TOO_MANY;
	}
	struct md_box *box = &txn->boxes[txn->box_count];
	memset(box, 0, sizeof *box);
	if (txn->box_count >= MD_KEPT_BOXES && !md_is_catch(fd)) {
		close(fd);
		fd = -1;
	}
	box->dir_fd = fd;
	box->dev = st->st_dev;
	box->ino = st->st_ino;
	box->uid = st->st_uid;
	box->gid = st->st_gid;
	box->result = MD_OK;
	text_copy(box->path, sizeof box->path, path);
	*index = txn->box_count++;
	return MD_OK;
}

void md_forget_boxes(struct md_txn *txn, size_t keep)
{
	while (txn->box_count > keep) {
		md_drop(txn->boxes[--txn->box_count].dir_fd);
		txn->boxes[txn->box_count].dir_fd = -1;
	}
}

/* Why a recipient was refused, for the log and the probe: the path that decided (for 5.7.1 the
 * domain's directory) and, for a failure that is not the sender's, the errno. */
static enum md_result md_refused(struct md_txn *txn, enum md_result r, const char *tmpl,
				 const char *path, const char *u, const char *d, int e)
{
	struct md_shape sh = md_scan(tmpl);

	txn->why_errno = r == MD_NO_USER || r == MD_NO_DOMAIN ? 0 : e;
	if (r == MD_NO_DOMAIN && sh.has_d && md_expand(tmpl, sh.d_end, u, d, txn->why_path))
		return r;
	text_copy(txn->why_path, sizeof txn->why_path, path);
	return r;
}

enum md_result md_add(struct md_txn *txn, const char *tmpl, const char *local, const char *domain,
		      size_t *box_index)
{
	char u[MD_PATH_MAX], d[MD_PATH_MAX], path[MD_PATH_MAX];
	struct md_shape sh = md_scan(tmpl);
	struct stat st;
	int fd = -1;

	txn->why_path[0] = '\0';
	txn->why_errno = 0;
	if (md_bad_name(local) || md_bad_name(domain))
		return MD_BAD_NAME;
	if (!md_lower(u, sizeof u, local, true) || !md_lower(d, sizeof d, domain, false))
		return MD_BAD_NAME;
	if (!md_expand(tmpl, strlen(tmpl), u, d, path))
		return MD_BAD_NAME;
	if (sh.has_u || sh.has_d) {
		enum md_result r = md_open_user(tmpl, path, u, d, &fd, &st);
		if (r != MD_OK)
			return md_refused(txn, r, tmpl, path, u, d, errno);
	} else if (md_open_catch(path) != 0) {
		return md_refused(txn, md_errno_result(errno), tmpl, path, u, d, errno);
	} else {
		fd = md_catch.fd;
		st = md_catch.st;
	}
	return md_append(txn, fd, &st, path, box_index);
}

/* What is wrong with the Maildir at path, as one token, or NULL when nothing is seen: the
 * reason a 5.1.1 or 4.3.0 names. tmp/ and new/ are looked at without following a link, as
 * delivery does. */
const char *md_explain(const char *path)
{
	static const char *const subs[] = { "tmp", "new" };
	static const char *const why[][4] = {
		{ "tmp-missing", "tmp-not-a-directory", "tmp-is-a-symlink", "tmp-wrong-owner" },
		{ "new-missing", "new-not-a-directory", "new-is-a-symlink", "new-wrong-owner" },
	};
	char sub[MD_PATH_MAX + 8];
	struct stat dir, st;

	if (stat(path, &dir) != 0)
		return md_missing(errno) ? "directory-missing" : NULL;
	if (!S_ISDIR(dir.st_mode))
		return "not-a-directory";
	for (size_t i = 0; i < 2; i++) {
		struct text t = text_on(sub, sizeof sub);
		text_add(&t, path);
		text_add(&t, "/");
		text_add(&t, subs[i]);
		if (lstat(sub, &st) != 0)
			return md_missing(errno) ? why[i][0] : NULL;
		if (!S_ISDIR(st.st_mode))
			return why[i][S_ISLNK(st.st_mode) ? 2 : 1];
		if (md_as_root && st.st_uid != dir.st_uid)
			return why[i][3];
		/* The probe runs as the launcher's user: what that user may not write, nor may
		 * smtpd. */
		if (!md_as_root && access(sub, W_OK | X_OK) != 0)
			return i == 0 ? "tmp-not-writable" : "new-not-writable";
	}
	return NULL;
}

void md_set_probe(void)
{
	md_no_create = true;
}

bool md_is_catch_all(const char *tmpl)
{
	struct md_shape sh = md_scan(tmpl);

	return !sh.has_u && !sh.has_d;
}

/* ---- failures ---- */

static enum md_result md_full_or_temp(int e)
{
	return e == ENOSPC || e == EDQUOT || e == EFBIG ? MD_FULL : MD_TEMP;
}

/* The transaction keeps its first failure, each box its own. */
static enum md_result md_fail(struct md_txn *txn, const char *op, int e)
{
	if (txn->fail_op == NULL) {
		txn->fail_op = op;
		txn->fail_errno = e;
	}
	return md_full_or_temp(e);
}

static void md_box_fail(struct md_txn *txn, size_t i, const char *op, int e)
{
	struct md_box *box = &txn->boxes[i];
	enum md_result r = md_fail(txn, op, e);

	if (box->result == MD_OK) {
		box->result = r;
		box->fail_op = op;
		box->fail_errno = e;
	}
}

static void md_fail_all(struct md_txn *txn, const char *op, int e)
{
	for (size_t i = 0; i < txn->box_count; i++)
		md_box_fail(txn, i, op, e);
	md_fail(txn, op, e);
}

static bool md_any_failed(const struct md_txn *txn)
{
	for (size_t i = 0; i < txn->box_count; i++)
		if (txn->boxes[i].result != MD_OK)
			return true;
	return false;
}

/* ---- the spool ---- */

/* Maildir names may not hold '/' or ':', so a host name's odd bytes become \ooo. */
static void md_make_host(void)
{
	char raw[256] = "";
	size_t n = 0;

	if (gethostname(raw, sizeof raw - 1) != 0 || raw[0] == '\0')
		snprintf(raw, sizeof raw, "localhost");
	raw[sizeof raw - 1] = '\0';
	for (const unsigned char *p = (const unsigned char *)raw; *p != '\0'; p++) {
		bool odd = *p == '/' || *p == ':' || *p == '\\' || *p < 0x21 || *p > 0x7e;
		if (n + (odd ? 4 : 1) >= sizeof md_host)
			break;
		if (odd)
			n += (size_t)snprintf(md_host + n, sizeof md_host - n, "\\%03o",
					      (unsigned)*p);
		else
			md_host[n++] = (char)*p;
	}
	md_host[n] = '\0';
}

static int md_make_id(struct md_txn *txn)
{
	struct timespec ts;

	if (md_host[0] == '\0')
		md_make_host();
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return -1;
	if (md_pid == 0)
		md_pid = (unsigned long)getpid();
	struct text id = text_on(txn->id, sizeof txn->id);
	text_add_num(&id, (unsigned long long)ts.tv_sec, 0);
	text_add(&id, ".M");
	text_add_num(&id, (unsigned long long)ts.tv_nsec / 1000, 0);
	text_add(&id, "P");
	text_add_num(&id, md_pid, 0);
	text_add(&id, "Q");
	text_add_num(&id, ++md_counter, 0);
	struct text name = text_on(md_name, sizeof md_name);
	text_add(&name, txn->id);
	text_add(&name, ".");
	text_add(&name, md_host);
	return id.cut || name.cut ? (errno = EOVERFLOW, -1) : 0;
}

/* A box's directory: kept since RCPT, or opened again by its path and checked to be the
 * same directory, so that a Maildir swapped since RCPT gets nothing. */
static int md_box_dir(const struct md_txn *txn, size_t i)
{
	const struct md_box *box = &txn->boxes[i];
	struct stat st;

	if (box->dir_fd >= 0)
		return box->dir_fd;
	int fd = md_open_dir(box->path);
	if (fd < 0 || fstat(fd, &st) != 0 || st.st_dev != box->dev || st.st_ino != box->ino) {
		int e = fd < 0 ? errno : ESTALE;
		if (fd >= 0)
			close(fd);
		return errno = e, -1;
	}
	return fd;
}

/* A box's tmp/ or new/: the catch-all's kept ones, or freshly opened for this message. */
static int md_open_sub(const struct md_txn *txn, size_t i, const char *sub)
{
	int dir = txn->boxes[i].dir_fd;

	if (md_is_catch(dir))
		return sub[0] == 't' ? md_catch.tmp_fd : md_catch.new_fd; /* "tmp" or "new" */
	if ((dir = md_box_dir(txn, i)) < 0)
		return -1;
	int fd = openat(dir, sub, MD_DIR_FLAGS), e = errno;
	if (dir != txn->boxes[i].dir_fd)
		close(dir);
	return errno = e, fd;
}

static void md_close_sub(int fd)
{
	if (fd >= 0 && fd != md_catch.tmp_fd && fd != md_catch.new_fd)
		close(fd);
}

enum md_result md_begin(struct md_txn *txn)
{
	if (txn->spool_fd >= 0)
		md_abort(txn);
	txn->stored_bytes = 0;
	if (txn->box_count == 0)
		return md_fail(txn, "begin", EINVAL);
	if (md_make_id(txn) != 0)
		return md_fail(txn, "message-id", errno);
	int tmp = md_open_sub(txn, 0, "tmp");
	if (tmp < 0)
		return md_fail(txn, "open-tmp", errno);
	int fd = openat(tmp, md_name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		md_close_sub(tmp);
		return md_fail(txn, "create-in-tmp", e);
	}
	md_spool_tmp = tmp;
	md_spool_in_tmp = true;
	txn->spool_fd = fd;
	return MD_OK;
}

static int md_write_all(int fd, const unsigned char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? (errno = EIO, -1) : -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

enum md_result md_write(struct md_txn *txn, const void *buf, size_t len)
{
	if (txn->spool_fd < 0)
		return md_fail(txn, "write", EBADF);
	if (md_write_all(txn->spool_fd, buf, len) != 0)
		return md_fail(txn, "write", errno);
	txn->stored_bytes += len;
	return MD_OK;
}

/* ---- rewriting the spool for a milter's header changes ---- */

enum md_result md_rewrite(struct md_txn *txn, uint64_t keep, int (*write_head)(int fd, void *ctx),
			  void *ctx)
{
	char name[MD_NAME_MAX + 4];
	struct text t = text_on(name, sizeof name);
	const char *op = "write-rewrite";
	off_t size = -1;
	int e = 0;

	text_add(&t, md_name);
	text_add(&t, ",R"); /* beside the spool in tmp/, never a name a delivery uses */
	if (txn->spool_fd < 0 || !md_spool_in_tmp || t.cut)
		return md_fail(txn, "rewrite", EBADF);
	int fd = openat(md_spool_tmp, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			0600);
	if (fd < 0)
		return md_fail(txn, "create-rewrite", errno);
	errno = 0;
	if (write_head(fd, ctx) != 0 ||
	    md_copy_range(txn->spool_fd, keep, txn->stored_bytes, fd) != 0 ||
	    (size = lseek(fd, 0, SEEK_CUR)) < 0)
		e = errno != 0 ? errno : EIO;
	else if (renameat(md_spool_tmp, name, md_spool_tmp, md_name) != 0)
		op = "rename-rewrite", e = errno;
	if (e != 0) {
		close(fd);
		unlinkat(md_spool_tmp, name, 0);
		return md_fail(txn, op, e);
	}
	close(txn->spool_fd);
	txn->spool_fd = fd;
	txn->stored_bytes = (uint64_t)size;
	return MD_OK;
}

/* ---- staging: every box gets the message in its tmp/ ---- */

/* The spool's file as a new name: from its fd, never from its name in tmp/, which whoever can
 * write that tmp/ could have replaced. AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH, /proc does not. */
static int md_link_fd(int fd, int dir, const char *name)
{
	char proc[32];
	struct text t = text_on(proc, sizeof proc);

	if (md_as_root && linkat(fd, "", dir, name, AT_EMPTY_PATH) == 0)
		return 0;
	if (md_as_root && errno != ENOENT) /* ENOENT: root without its capabilities */
		return -1;
	text_add(&t, "/proc/self/fd/");
	text_add_num(&t, (unsigned long long)fd, 0);
	return linkat(AT_FDCWD, proc, dir, name, AT_SYMLINK_FOLLOW);
}

/* No link across file systems (EXDEV), on some that lack them (EPERM, ENOTSUP), at too many
 * links (EMLINK), or without /proc (ENOENT): a copy does the same job. */
static bool md_link_fails_over(int e)
{
	return e == EXDEV || e == EPERM || e == ENOTSUP || e == EMLINK || e == ENOENT;
}

/* As root, every file belongs to the owner of the Maildir it is in. */
static bool md_owned_as_spool(const struct md_txn *txn, size_t i)
{
	const struct md_box *a = &txn->boxes[0], *b = &txn->boxes[i];

	return !md_as_root || (a->uid == b->uid && a->gid == b->gid);
}

static int md_give(int fd, const struct md_box *box)
{
	if (!md_as_root || (box->uid == 0 && box->gid == 0))
		return 0;
	return fchown(fd, box->uid, box->gid);
}

int md_copy_range(int from, uint64_t off, uint64_t end, int to)
{
	while (off < end) {
		uint64_t left = end - off;
		ssize_t n = pread(from, md_copy_buf, left < MD_COPY_BUF ? left : MD_COPY_BUF,
				  (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? (errno = EIO, -1) : -1;
		if (md_write_all(to, md_copy_buf, (size_t)n) != 0)
			return -1;
		off += (uint64_t)n;
	}
	return 0;
}

static int md_copy_bytes(struct md_txn *txn, int to)
{
	return md_copy_range(txn->spool_fd, 0, txn->stored_bytes, to);
}

/* A copy of the spool into tmp/, owned and fsynced; 0 or an errno, naming the step. */
static int md_copy_file(struct md_txn *txn, size_t i, int tmp, const char **op)
{
	int e = 0,
	    fd = openat(tmp, md_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

	*op = "create-copy";
	if (fd < 0)
		return errno;
	if (*op = "write-copy", md_copy_bytes(txn, fd) != 0)
		e = errno;
	else if (*op = "chown-copy", md_give(fd, &txn->boxes[i]) != 0)
		e = errno;
	else if (*op = "fsync-copy", fsync(fd) != 0)
		e = errno;
	if (close(fd) != 0 && e == 0)
		*op = "close-copy", e = errno;
	if (e != 0)
		unlinkat(tmp, md_name, 0);
	return e;
}

/* A box other than the spool's: a hard link to the spool when the owner is the same and the
 * file system allows it, else a copy of its own. */
static void md_stage(struct md_txn *txn, size_t i)
{
	const char *op = "open-tmp";
	int e = 0, tmp = md_open_sub(txn, i, "tmp");

	if (tmp < 0) {
		e = errno;
	} else if (md_owned_as_spool(txn, i) && md_link_fd(txn->spool_fd, tmp, md_name) == 0) {
		e = 0;
	} else if (md_owned_as_spool(txn, i) && !md_link_fails_over(errno)) {
		op = "link-into-tmp", e = errno;
	} else {
		e = md_copy_file(txn, i, tmp, &op);
	}
	md_close_sub(tmp);
	if (e != 0)
		md_box_fail(txn, i, op, e);
	md_staged[i] = e == 0;
}

/* The spool is given away only once every copy is made from it, and closed then, so that a
 * late write error (NFS) is still seen before anything is published. */
static void md_stage_spool(struct md_txn *txn)
{
	int fd = txn->spool_fd, e = 0;
	const char *op = "close";

	txn->spool_fd = -1;
	if (md_give(fd, &txn->boxes[0]) != 0)
		op = "chown", e = errno;
	if (close(fd) != 0 && e == 0)
		e = errno;
	if (e != 0)
		md_fail_all(txn, op, e);
	md_staged[0] = e == 0;
}

static bool md_stage_all(struct md_txn *txn, bool all_or_nothing)
{
	if (fsync(txn->spool_fd) != 0) {
		md_fail_all(txn, "fsync", errno);
		return false;
	}
	for (size_t i = 1; i < txn->box_count; i++) {
		md_stage(txn, i);
		if (all_or_nothing && md_any_failed(txn))
			return false;
	}
	md_stage_spool(txn);
	return !(all_or_nothing && md_any_failed(txn));
}

/* ---- publishing: tmp/ to new/, then new/ fsynced ---- */

/* Returns 0 or an errno, naming the step that failed. */
static int md_publish_into(size_t i, int tmp, int new, const char **op)
{
	*op = "rename-into-new";
	if (renameat(tmp, md_name, new, md_final) != 0)
		return errno;
	md_published[i] = true;
	if (i == 0)
		md_spool_in_tmp = false;
	*op = "fsync-new";
	return fsync(new) != 0 ? errno : 0;
}

static void md_publish(struct md_txn *txn, size_t i)
{
	const char *op = "open-tmp";
	int e, tmp = i == 0 ? md_spool_tmp : md_open_sub(txn, i, "tmp"), new = -1;

	if (tmp < 0)
		e = errno;
	else if ((new = md_open_sub(txn, i, "new")) < 0)
		op = "open-new", e = errno;
	else
		e = md_publish_into(i, tmp, new, &op);
	if (i != 0)
		md_close_sub(tmp);
	md_close_sub(new);
	if (e != 0)
		md_box_fail(txn, i, op, e);
}

static void md_publish_all(struct md_txn *txn, bool all_or_nothing)
{
	for (size_t i = 0; i < txn->box_count; i++) {
		if (md_staged[i] && txn->boxes[i].result == MD_OK)
			md_publish(txn, i);
		if (all_or_nothing && md_any_failed(txn))
			return;
	}
}

/* What failed leaves nothing: not in new/ (removed, and the removal made durable) nor in
 * tmp/. Only a box that failed after its rename was ever visible. */
static void md_clean(struct md_txn *txn, size_t i)
{
	if (md_published[i] && txn->boxes[i].result != MD_OK) {
		int new = md_open_sub(txn, i, "new");
		if (new >= 0 && unlinkat(new, md_final, 0) == 0)
			(void)fsync(new);
		md_close_sub(new);
	}
	if (i != 0 && md_staged[i] && !md_published[i]) {
		int tmp = md_open_sub(txn, i, "tmp");
		if (tmp >= 0)
			unlinkat(tmp, md_name, 0);
		md_close_sub(tmp);
	}
	md_staged[i] = md_published[i] = false;
}

static bool md_final_name(struct md_txn *txn)
{
	struct text final = text_on(md_final, sizeof md_final);

	text_add(&final, md_name);
	text_add(&final, ",S=");
	text_add_num(&final, txn->stored_bytes, 0);
	return !final.cut;
}

enum md_result md_commit(struct md_txn *txn, bool all_or_nothing)
{
	for (size_t i = 0; i < txn->box_count; i++)
		md_staged[i] = md_published[i] = false;
	if (txn->spool_fd < 0)
		md_fail_all(txn, "commit", EBADF);
	else if (!md_final_name(txn))
		md_fail_all(txn, "file-name", EOVERFLOW);
	else if (md_stage_all(txn, all_or_nothing))
		md_publish_all(txn, all_or_nothing);
	bool failed = md_any_failed(txn), any_ok = false;
	for (size_t i = 0; i < txn->box_count; i++) {
		struct md_box *box = &txn->boxes[i];
		if (all_or_nothing && failed && box->result == MD_OK)
			box->result = md_full_or_temp(txn->fail_errno);
		any_ok |= box->result == MD_OK;
		md_clean(txn, i);
		text_copy(box->file, sizeof box->file, box->result == MD_OK ? md_final : "");
	}
	md_abort(txn); /* the spool, if it is still in tmp/ */
	return any_ok ? MD_OK : md_full_or_temp(txn->fail_errno);
}

void md_abort(struct md_txn *txn)
{
	if (txn->spool_fd >= 0)
		close(txn->spool_fd);
	txn->spool_fd = -1;
	if (md_spool_in_tmp)
		unlinkat(md_spool_tmp, md_name, 0);
	md_spool_in_tmp = false;
	md_close_sub(md_spool_tmp);
	md_spool_tmp = -1;
}

void md_reset(struct md_txn *txn)
{
	md_abort(txn);
	for (size_t i = 0; i < txn->box_count; i++) {
		md_drop(txn->boxes[i].dir_fd);
		txn->boxes[i].dir_fd = -1;
	}
	txn->box_count = 0;
	txn->stored_bytes = 0;
	txn->fail_op = NULL;
	txn->fail_errno = 0;
}

/* The end of the session: what md_txn_init took is given back. */
void md_txn_free(struct md_txn *txn)
{
	md_reset(txn);
	free(txn->boxes);
	txn->boxes = NULL;
	txn->max_boxes = 0;
}
