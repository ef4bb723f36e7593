/* mailbox.c: recipients to Maildirs, and durable delivery into them (tmp/, fsync, new/). */
#define _POSIX_C_SOURCE 200809L
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
};

#define MD_DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

/* The catch-all Maildir, made once: it, its tmp/ and its new/ stay open for the whole
 * process, so that a message costs one openat() there, as few as a Maildir allows. */
static struct {
	char path[MD_PATH_MAX];
	int fd, tmp_fd, new_fd;
	dev_t dev;
	ino_t ino;
} md_catch = { "", -1, -1, -1, 0, 0 };

static char md_host[MD_HOST_MAX];      /* gethostname(), escaped, once */
static unsigned long md_counter;       /* the Q<n> of the id */
static unsigned long md_pid;           /* asked once: glibc asks the kernel on every getpid() */
static char md_name[MD_NAME_MAX];      /* <id>.<host>: the spool's name in tmp/ */
static char md_final[MD_NAME_MAX];     /* <id>.<host>,S=<size>: the name in new/ */
static int md_spool_tmp = -1;          /* tmp/ of the spool's box */
static bool md_spool_in_tmp;           /* the spool still has its name in tmp/ */
static int md_new_fd[RCPT_LIMIT_MAX];  /* during md_commit: each box's new/ */
static bool md_placed[RCPT_LIMIT_MAX]; /* during md_commit: md_final is in that new/ */
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

/* Finds %u and %d as md_expand sees them, so that "%%u" is never taken for a placeholder.
 * *d_end: the end of the path component holding the first %d; *d_with_u: that it holds %u. */
static void md_scan(const char *tmpl, bool *has_u, bool *has_d, size_t *d_end, bool *d_with_u)
{
	bool comp_u = false, in_d = false;

	*has_u = *has_d = *d_with_u = false;
	*d_end = 0;
	for (size_t i = 0;; i++) {
		if (tmpl[i] == '\0' || tmpl[i] == '/') {
			if (in_d)
				*d_end = i, *d_with_u = comp_u, in_d = false;
			if (tmpl[i] == '\0')
				return;
			comp_u = false;
		} else if (tmpl[i] == '%' &&
			   (tmpl[i + 1] == 'u' || tmpl[i + 1] == 'd' || tmpl[i + 1] == '%')) {
			i++;
			comp_u |= tmpl[i] == 'u';
			*has_u |= tmpl[i] == 'u';
			in_d |= tmpl[i] == 'd' && !*has_d;
			*has_d |= tmpl[i] == 'd';
		}
	}
}

/* ---- recipients ---- */

/* 1 when fd is a Maildir with real tmp/ and new/, 0 when it is not, -1 (errno) when unsure. */
static int md_is_maildir(int fd)
{
	static const char *const subs[] = { "tmp", "new" };
	struct stat st;

	for (size_t i = 0; i < 2; i++) {
		if (fstatat(fd, subs[i], &st, AT_SYMLINK_NOFOLLOW) != 0)
			return errno == ENOENT || errno == ENOTDIR ? 0 : -1;
		if (!S_ISDIR(st.st_mode))
			return 0;
	}
	return 1;
}

/* At RCPT, running out of fds means too many Maildirs: 452 4.5.3 asks for the rest later. */
static enum md_result md_errno_result(int e)
{
	if (e == EMFILE || e == ENFILE)
		return MD_TOO_MANY;
	return e == ENOSPC || e == EDQUOT || e == EFBIG ? MD_FULL : MD_TEMP;
}

static bool md_missing(int e)
{
	return e == ENOENT || e == ENOTDIR || e == ENAMETOOLONG;
}

/* Tells a missing domain from a missing user: the %d directory itself decides. */
static enum md_result md_why_missing(const char *tmpl, const char *u, const char *d)
{
	char prefix[MD_PATH_MAX];
	bool has_u, has_d, d_with_u;
	size_t d_end;
	struct stat st;

	md_scan(tmpl, &has_u, &has_d, &d_end, &d_with_u);
	if (!has_d || d_with_u)
		return MD_NO_USER;
	if (!md_expand(tmpl, d_end, u, d, prefix))
		return MD_BAD_NAME;
	if (stat(prefix, &st) != 0)
		return md_missing(errno) ? MD_NO_DOMAIN : md_errno_result(errno);
	return S_ISDIR(st.st_mode) ? MD_NO_USER : MD_NO_DOMAIN;
}

/* With %u or %d the file system is the user database: only an existing Maildir is a user. */
static enum md_result md_open_user(const char *tmpl, const char *path, const char *u, const char *d,
				   int *fd)
{
	*fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0)
		return md_missing(errno) ? md_why_missing(tmpl, u, d) : md_errno_result(errno);
	int is = md_is_maildir(*fd);
	if (is == 1)
		return MD_OK;
	int e = errno;
	close(*fd);
	*fd = -1;
	return is == 0 ? md_why_missing(tmpl, u, d) : md_errno_result(e);
}

static bool md_is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Like mkdir -p, so that a fresh catch-all under a missing parent still works. */
static int md_mkdir_p(const char *path)
{
	char buf[MD_PATH_MAX];
	size_t len = strlen(path);

	if (len >= sizeof buf)
		return errno = ENAMETOOLONG, -1;
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if ((buf[i] != '/' && buf[i] != '\0') || buf[i - 1] == '/')
			continue;
		char keep = buf[i];
		buf[i] = '\0';
		int rc = mkdir(buf, 0700), e = errno;
		if (rc != 0 && e != EEXIST && !md_is_dir(buf))
			return errno = e, -1;
		buf[i] = keep;
	}
	return 0;
}

static int md_open_or_make(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0 || errno != ENOENT || md_mkdir_p(path) != 0)
		return fd;
	return open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

static void md_close_catch(void)
{
	int *fds[] = { &md_catch.fd, &md_catch.tmp_fd, &md_catch.new_fd };

	for (size_t i = 0; i < 3; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	md_catch.path[0] = '\0';
}

/* cur/ new/ tmp/ made if missing; tmp/ and new/ opened without following a symlink. */
static int md_fill_catch(int dfd)
{
	static const char *const subs[] = { "cur", "new", "tmp" };
	struct stat st;

	for (size_t i = 0; i < 3; i++)
		if (mkdirat(dfd, subs[i], 0700) != 0 && errno != EEXIST)
			return -1;
	md_catch.tmp_fd = openat(dfd, "tmp", MD_DIR_FLAGS);
	md_catch.new_fd = openat(dfd, "new", MD_DIR_FLAGS);
	if (md_catch.tmp_fd < 0 || md_catch.new_fd < 0 || fstat(dfd, &st) != 0)
		return -1;
	md_catch.dev = st.st_dev;
	md_catch.ino = st.st_ino;
	return 0;
}

/* The catch-all is created with its cur/ new/ tmp/ on first use, then its fds are reused. */
static enum md_result md_open_catch(const char *path, int *fd)
{
	if (md_catch.fd >= 0 && strcmp(md_catch.path, path) == 0)
		return *fd = md_catch.fd, MD_OK;
	md_close_catch();
	int dfd = md_open_or_make(path);
	if (dfd < 0)
		return md_errno_result(errno);
	md_catch.fd = dfd;
	if (md_fill_catch(dfd) != 0) {
		int e = errno;
		md_close_catch();
		return md_errno_result(e);
	}
	text_copy(md_catch.path, sizeof md_catch.path, path);
	return *fd = dfd, MD_OK;
}

static bool md_is_catch(int dir_fd)
{
	return dir_fd >= 0 && dir_fd == md_catch.fd;
}

/* A box's tmp/ or new/: the catch-all's kept ones, or freshly opened for this message. */
static int md_open_sub(const struct md_txn *txn, size_t i, const char *sub)
{
	int dir = txn->boxes[i].dir_fd;

	if (md_is_catch(dir))
		return strcmp(sub, "tmp") == 0 ? md_catch.tmp_fd : md_catch.new_fd;
	return openat(dir, sub, MD_DIR_FLAGS);
}

static void md_close_sub(int fd)
{
	if (fd >= 0 && fd != md_catch.tmp_fd && fd != md_catch.new_fd)
		close(fd);
}

/* The catch-all's fd outlives the transaction; every other one is the box's own. */
static void md_drop(int fd)
{
	if (fd >= 0 && !md_is_catch(fd))
		close(fd);
}

/* Two recipients in one Maildir share one box, hence one file there. */
static enum md_result md_append(struct md_txn *txn, int fd, const char *path, size_t *index)
{
	struct stat st = { .st_dev = md_catch.dev, .st_ino = md_catch.ino };

	if (!md_is_catch(fd) && fstat(fd, &st) != 0) {
		enum md_result r = md_errno_result(errno);
		md_drop(fd);
		return r;
	}
	for (size_t i = 0; i < txn->box_count; i++) {
		if (txn->boxes[i].dev == st.st_dev && txn->boxes[i].ino == st.st_ino) {
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
	box->dir_fd = fd;
	box->dev = st.st_dev;
	box->ino = st.st_ino;
	box->result = MD_OK;
	text_copy(box->path, sizeof box->path, path);
	*index = txn->box_count++;
	return MD_OK;
}

enum md_result md_add(struct md_txn *txn, const char *tmpl, const char *local, const char *domain,
		      size_t *box_index)
{
	char u[MD_PATH_MAX], d[MD_PATH_MAX], path[MD_PATH_MAX];
	bool has_u, has_d, d_with_u;
	size_t d_end;
	int fd = -1;

	if (md_bad_name(local) || md_bad_name(domain))
		return MD_BAD_NAME;
	if (!md_lower(u, sizeof u, local, true) || !md_lower(d, sizeof d, domain, false))
		return MD_BAD_NAME;
	if (!md_expand(tmpl, strlen(tmpl), u, d, path))
		return MD_BAD_NAME;
	md_scan(tmpl, &has_u, &has_d, &d_end, &d_with_u);
	enum md_result r =
		has_u || has_d ? md_open_user(tmpl, path, u, d, &fd) : md_open_catch(path, &fd);
	return r != MD_OK ? r : md_append(txn, fd, path, box_index);
}

/* ---- failures ---- */

static enum md_result md_full_or_temp(int e)
{
	return e == ENOSPC || e == EDQUOT || e == EFBIG ? MD_FULL : MD_TEMP;
}

/* Only the first failure is logged by the caller: it is usually the cause of the others. */
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
	enum md_result r = md_fail(txn, op, e);
	if (txn->boxes[i].result == MD_OK)
		txn->boxes[i].result = r;
}

static void md_fail_all(struct md_txn *txn, const char *op, int e)
{
	for (size_t i = 0; i < txn->box_count; i++)
		md_box_fail(txn, i, op, e);
	md_fail(txn, op, e);
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

static bool md_create_spool(struct md_txn *txn, size_t i)
{
	int tmp = md_open_sub(txn, i, "tmp");
	if (tmp < 0) {
		md_box_fail(txn, i, "open tmp/", errno);
		return false;
	}
	int fd = openat(tmp, md_name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		md_box_fail(txn, i, "create in tmp/", errno);
		md_close_sub(tmp);
		return false;
	}
	md_spool_tmp = tmp;
	md_spool_in_tmp = true;
	txn->spool_fd = fd;
	txn->spool_box = i;
	return true;
}

enum md_result md_begin(struct md_txn *txn)
{
	if (txn->spool_fd >= 0)
		md_abort(txn);
	txn->stored_bytes = 0;
	if (txn->box_count == 0)
		return md_fail(txn, "begin", EINVAL);
	if (md_make_id(txn) != 0)
		return md_fail(txn, "message id", errno);
	for (size_t i = 0; i < txn->box_count; i++)
		if (txn->boxes[i].result == MD_OK && md_create_spool(txn, i))
			return MD_OK;
	return md_full_or_temp(txn->fail_errno);
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

/* ---- commit ---- */

static int md_open_new(struct md_txn *txn, size_t i)
{
	md_new_fd[i] = md_open_sub(txn, i, "new");
	if (md_new_fd[i] < 0)
		md_box_fail(txn, i, "open new/", errno);
	return md_new_fd[i];
}

static int md_copy_bytes(struct md_txn *txn, int to)
{
	for (uint64_t off = 0; off < txn->stored_bytes;) {
		uint64_t left = txn->stored_bytes - off;
		ssize_t n = pread(txn->spool_fd, md_copy_buf,
				  left < MD_COPY_BUF ? left : MD_COPY_BUF, (off_t)off);
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

/* Writes the copy into tmp/ and renames it into new/; returns 0 or an errno, naming the step. */
static int md_copy_file(struct md_txn *txn, size_t i, int tmp, const char **op)
{
	int e = 0,
	    fd = openat(tmp, md_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

	*op = "create in tmp/";
	if (fd < 0)
		return errno;
	*op = "write copy";
	if (md_copy_bytes(txn, fd) != 0)
		e = errno;
	else if (*op = "fsync copy", fsync(fd) != 0)
		e = errno;
	if (close(fd) != 0 && e == 0)
		*op = "close copy", e = errno;
	if (e == 0 && renameat(tmp, md_name, md_new_fd[i], md_final) != 0)
		*op = "rename copy", e = errno;
	if (e != 0)
		unlinkat(tmp, md_name, 0);
	return e;
}

/* Across file systems a hard link is impossible: the same tmp/-then-new/ dance, by copy. */
static void md_copy_into(struct md_txn *txn, size_t i)
{
	const char *op = "open tmp/";
	int e, tmp = md_open_sub(txn, i, "tmp");

	if (tmp < 0) {
		e = errno;
	} else {
		e = md_copy_file(txn, i, tmp, &op);
		md_close_sub(tmp);
	}
	if (e != 0)
		md_box_fail(txn, i, op, e);
	md_placed[i] = e == 0;
}

/* No link across file systems (EXDEV), on some that lack them (EPERM, ENOTSUP), at too many
 * links (EMLINK), or when the spool's Maildir was removed under us (ENOENT): its fd still reads. */
static bool md_link_fails_over(int e)
{
	return e == EXDEV || e == EPERM || e == ENOTSUP || e == EMLINK || e == ENOENT;
}

/* A box other than the spool's gets a hard link to the spool, or a copy. */
static void md_place_other(struct md_txn *txn, size_t i)
{
	if (md_open_new(txn, i) < 0)
		return;
	if (linkat(md_spool_tmp, md_name, md_new_fd[i], md_final, 0) == 0)
		md_placed[i] = true;
	else if (md_link_fails_over(errno))
		md_copy_into(txn, i);
	else
		md_box_fail(txn, i, "link", errno);
}

/* The spool is closed before its rename, so that a late write error (NFS) is still seen. */
static void md_place_spool(struct md_txn *txn)
{
	size_t i = txn->spool_box;
	int fd = txn->spool_fd;

	txn->spool_fd = -1;
	if (close(fd) != 0) {
		md_fail_all(txn, "close", errno);
		return;
	}
	if (txn->boxes[i].result != MD_OK || md_open_new(txn, i) < 0)
		return;
	if (renameat(md_spool_tmp, md_name, md_new_fd[i], md_final) != 0) {
		md_box_fail(txn, i, "rename", errno);
		return;
	}
	md_spool_in_tmp = false;
	md_placed[i] = true;
}

static bool md_any_failed(const struct md_txn *txn)
{
	for (size_t i = 0; i < txn->box_count; i++)
		if (txn->boxes[i].result != MD_OK)
			return true;
	return false;
}

/* Only a new/ fsynced after the rename makes the delivery survive a crash. */
static void md_sync_new(struct md_txn *txn)
{
	for (size_t i = 0; i < txn->box_count; i++)
		if (md_placed[i] && txn->boxes[i].result == MD_OK && fsync(md_new_fd[i]) != 0)
			md_box_fail(txn, i, "fsync new/", errno);
}

/* Whatever failed leaves nothing in new/ and nothing in tmp/; every fd of the commit closes. */
static void md_finish(struct md_txn *txn)
{
	for (size_t i = 0; i < txn->box_count; i++) {
		struct md_box *box = &txn->boxes[i];
		if (md_placed[i] && box->result != MD_OK)
			unlinkat(md_new_fd[i], md_final, 0);
		md_close_sub(md_new_fd[i]);
		md_new_fd[i] = -1;
		md_placed[i] = false;
		text_copy(box->file, sizeof box->file, box->result == MD_OK ? md_final : "");
	}
	md_abort(txn); /* the spool, if it is still in tmp/ */
}

/* Every box in new/, or in SMTP nothing more once one box has failed. */
static void md_deliver(struct md_txn *txn, bool all_or_nothing)
{
	struct text final = text_on(md_final, sizeof md_final);

	text_add(&final, md_name);
	text_add(&final, ",S=");
	text_add_num(&final, txn->stored_bytes, 0);
	if (final.cut) {
		md_fail_all(txn, "file name", EOVERFLOW);
		return;
	}
	if (fsync(txn->spool_fd) != 0) {
		md_fail_all(txn, "fsync", errno);
		return;
	}
	for (size_t i = 0; i < txn->box_count; i++) {
		if (all_or_nothing && md_any_failed(txn))
			return;
		if (i != txn->spool_box && txn->boxes[i].result == MD_OK)
			md_place_other(txn, i);
	}
	if (!(all_or_nothing && md_any_failed(txn)))
		md_place_spool(txn);
	md_sync_new(txn);
}

enum md_result md_commit(struct md_txn *txn, bool all_or_nothing)
{
	for (size_t i = 0; i < txn->box_count; i++)
		md_new_fd[i] = -1, md_placed[i] = false;
	if (txn->spool_fd < 0)
		md_fail_all(txn, "commit", EBADF);
	else
		md_deliver(txn, all_or_nothing);
	enum md_result r = md_full_or_temp(txn->fail_errno);
	bool any_ok = false, failed = md_any_failed(txn);
	for (size_t i = 0; i < txn->box_count; i++) {
		if (all_or_nothing && failed)
			txn->boxes[i].result = r;
		any_ok |= txn->boxes[i].result == MD_OK;
	}
	md_finish(txn);
	return any_ok ? MD_OK : r;
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
