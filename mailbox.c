/* mailbox.c: recipients to Maildirs, and durable delivery into them.
 *
 * A commit has two phases. Staging does every step that can fail on its own: the spool is
 * fsynced, and each Maildir gets the message under one name in its tmp/ (a hard link made from
 * the open spool, never from a name, or a copy), fsynced. Only then does publishing rename each
 * tmp/ name into new/ and fsync new/. A failure while staging leaves nothing any reader of
 * new/ could have seen.
 *
 * In LMTP each recipient stands alone: when the spool's Maildir fails (its tmp/, the file, a
 * write, the fsync), that box alone fails and the spool moves to the next box's tmp/, the
 * bytes so far read back from the old one. At RCPT a Maildir's Maildir++ quota (maildirsize)
 * and, given SIZE=, its file system's free space are checked, so that a full Maildir is
 * refused there and holds back no one else. */
#define _GNU_SOURCE /* O_PATH, AT_EMPTY_PATH, setfsuid, syscall */
#include "smtp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum {
	MD_NAME_MAX = 256, /* a file name in tmp/ or new/, within NAME_MAX */
	MD_HOST_MAX = 128, /* the escaped host name in it */
	MD_COPY_BUF = 65536,
	MD_KEPT_BOXES = 16,       /* boxes whose directory stays open from RCPT to the end */
	MD_LINKS_MAX = 40,        /* symbolic links followed on one path, as the kernel allows */
	MD_CAP_SYS_RESOURCE = 24, /* capabilities(7) */
	MD_CAP_VERSION_3 = 0x20080522,
};

#define MD_DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
/* A user's own file, never followed, and never waited on should it be a FIFO. */
#define MD_QUOTA_FLAGS (O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)

/* The catch-all Maildir, opened once: it, its tmp/ and its new/ stay open for the whole
 * process, so that a message costs one openat() there, as few as a Maildir allows. */
static struct {
	int fd, tmp_fd, new_fd;
	struct stat st;
	struct md_quota quota; /* quota.kept once its maildirsize was looked for */
} md_catch = { -1, -1, -1, { 0 }, { 0 } };

static bool md_as_root;                   /* euid 0: files get their Maildir's owner */
static gid_t md_root_gid;                 /* the file-system group to come back to */
static bool md_fs_other;                  /* md_fs_as took another file-system identity */
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
static char md_quota_text[MAILDIRSIZE_MAX + 1];

static void md_find_root(void)
{
	md_as_root = geteuid() == 0;
}

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
	md_find_root();
	return 0;
}

/* ---- as root: a Maildir's files are its owner's ---- */

/* Root's CAP_SYS_RESOURCE would still let those writes pass a user's quota and use the
 * reserved blocks; nothing here needs it, so it goes before the first write as a user (best
 * effort: a kernel or sandbox that refuses leaves it as it was). */
static void md_drop_sys_resource(void)
{
	struct {
		uint32_t version;
		int pid;
	} head = { MD_CAP_VERSION_3, 0 };
	struct {
		uint32_t effective, permitted, inheritable;
	} caps[2];

	if (syscall(SYS_capget, &head, caps) != 0)
		return;
	caps[0].effective &= ~(1u << MD_CAP_SYS_RESOURCE);
	caps[0].permitted &= ~(1u << MD_CAP_SYS_RESOURCE);
	(void)syscall(SYS_capset, &head, caps);
}

/* Back to root's file-system identity, whose rights open every Maildir. */
static void md_fs_root(void)
{
	if (!md_fs_other)
		return;
	setfsuid(0);
	setfsgid(md_root_gid);
	md_fs_other = false;
}

/* As root, what is made or written for a Maildir is made and written under its owner's
 * file-system uid and gid: born theirs, within their rights, charged to their quota, and in
 * the space left to users, not in the blocks a file system keeps for root. */
static int md_fs_as(uid_t uid, gid_t gid)
{
	static bool dropped;

	/* root's own Maildir: root's identity is its owner's (its files get their group from
	 * md_give) */
	if (!md_as_root || uid == 0)
		return 0;
	/* Only a session that writes as another user needs these: one delivering into root's
	 * own store asks for neither. */
	if (!dropped) {
		md_root_gid = getegid();
		md_drop_sys_resource();
		dropped = true;
	}
	md_fs_other = true;
	setfsgid(gid);
	setfsuid(uid);
	/* setfsuid() reports no error: asking again tells whether it took. */
	if ((uid_t)setfsuid(uid) == uid && (gid_t)setfsgid(gid) == gid)
		return 0;
	md_fs_root();
	return errno = EPERM, -1;
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

/* The owners of the symbolic links met on a path, as root. */
struct md_links {
	uid_t owners[MD_LINKS_MAX];
	size_t count;
};

static int md_walk(int at, const char *path, struct md_links *links);

/* One symbolic link, held by an O_PATH fd so that what is read is what was checked. */
static int md_follow(int at, int link_fd, const struct stat *st, struct md_links *links)
{
	char target[MD_PATH_MAX];
	ssize_t n = readlinkat(link_fd, "", target, sizeof target);

	if (n < 0 || (size_t)n >= sizeof target)
		return n < 0 ? -1 : (errno = ENAMETOOLONG, -1);
	target[n] = '\0';
	if (links->count >= MD_LINKS_MAX)
		return errno = ELOOP, -1;
	links->owners[links->count++] = st->st_uid;
	return md_walk(at, target, links);
}

/* The next component, opened without following it; a link is followed by md_follow. */
static int md_step(int at, const char *name, struct md_links *links)
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
	int next = md_follow(at, fd, &st, links), e = errno;
	close(fd);
	return errno = e, next;
}

/* Resolves path component by component from the directory at, noting who owns each link. */
static int md_walk(int at, const char *path, struct md_links *links)
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
		int next = md_step(dir, name, links), e = errno;
		close(dir);
		dir = next;
		errno = e;
	}
	return dir;
}

/* fd with its status, or -1 (fd closed) with errno. */
static int md_with_stat(int fd, struct stat *st)
{
	if (fd < 0 || fstat(fd, st) == 0)
		return fd;
	int e = errno;
	close(fd);
	return errno = e, -1;
}

/* The directory an O_PATH walk ended at, opened for use; at is closed. */
static int md_open_walked(int at, struct stat *st)
{
	int fd = openat(at, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), e = errno;

	close(at);
	return fd < 0 ? (errno = e, -1) : md_with_stat(fd, st);
}

/* As root, a user who owns a directory on a Maildir's path could point a link at another
 * user's Maildir, or anywhere. A link is followed only where root or the Maildir's owner owns
 * it; every other component is the kernel's to resolve, as it is for anyone. st gets the
 * directory's status. */
static int md_open_dir(const char *path, struct stat *st)
{
	struct md_links links = { .count = 0 };

	/* openat, not open: musl's open() adds an fcntl(FD_CLOEXEC) call to every session. */
	if (!md_as_root)
		return md_with_stat(openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), st);
	int at = md_walk(AT_FDCWD, path, &links);
	int fd = at < 0 ? -1 : md_open_walked(at, st);
	for (size_t i = 0; fd >= 0 && i < links.count; i++) {
		if (links.owners[i] != 0 && links.owners[i] != st->st_uid) {
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

/* With %u or %d the file system is the user database: only an existing Maildir is a user. A
 * Maildir we may not open (EACCES; as root, EPERM: a link of another owner on its path) is
 * answered as a missing one, so that a user's link says nothing of what exists where it
 * points; *why keeps the errno for the log. */
static enum md_result md_open_user(const char *tmpl, const char *path, const char *u, const char *d,
				   int *fd, struct stat *st, int *why)
{
	*fd = md_open_dir(path, st);
	int is = *fd < 0 ? -1 : md_is_maildir(*fd, st);
	if (is == 1)
		return MD_OK;
	int e = is == 0 ? ENOENT : errno;
	bool hidden = e == EACCES || (*fd < 0 && e == EPERM);
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
	*why = md_missing(e) ? 0 : e;
	return md_missing(e) || hidden ? md_why_missing(tmpl, u, d) : md_errno_result(e);
}

/* ---- the catch-all ---- */

static void md_close_catch(void)
{
	int *fds[] = { &md_catch.fd, &md_catch.tmp_fd, &md_catch.new_fd };

	for (size_t i = 0; i < 3; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	memset(&md_catch.st, 0, sizeof md_catch.st);
	memset(&md_catch.quota, 0, sizeof md_catch.quota);
}

/* A directory made in dir as owner would have made it: it is theirs from its first instant,
 * so that no session, not even a concurrent one, ever finds it root's. EEXIST is no error:
 * a concurrent session made it first. */
static int md_mkdir_as(int dir, const char *name, const struct stat *owner)
{
	if (md_fs_as(owner->st_uid, owner->st_gid) != 0)
		return -1;
	int made = mkdirat(dir, name, 0700), e = errno;
	md_fs_root();
	return made == 0 || e == EEXIST ? 0 : (errno = e, -1);
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

/* cur/ new/ tmp/ are made, as the Maildir's owner, only when tmp/ or new/ is missing, and only
 * for a recipient (create): start-up and the probe make nothing. */
static int md_fill_catch(bool create)
{
	static const char *const subs[] = { "cur", "new", "tmp" };
	int dfd = md_catch.fd;

	if (md_open_catch_subs(dfd) == 0)
		return 0;
	int is = md_is_maildir(dfd, &md_catch.st);
	if (is < 0)
		return -1;
	if (is == 0 && !create)
		return 0; /* the first recipient makes them */
	for (size_t i = 0; is == 0 && i < 3; i++)
		if (md_mkdir_as(dfd, subs[i], &md_catch.st) != 0)
			return -1;
	md_catch.tmp_fd = openat(dfd, "tmp", MD_DIR_FLAGS);
	md_catch.new_fd = openat(dfd, "new", MD_DIR_FLAGS);
	return md_catch.tmp_fd < 0 || md_catch.new_fd < 0 ? -1 : 0;
}

/* "a/b/Maildir" as "a/b" and "Maildir"; "Maildir" as "." and itself. False when the last
 * component is "." or "..", which is never made. */
static bool md_split(const char *path, char parent[MD_PATH_MAX], char name[MD_NAME_MAX])
{
	size_t len = strlen(path);

	while (len > 1 && path[len - 1] == '/')
		len--;
	size_t start = len;
	while (start > 0 && path[start - 1] != '/')
		start--;
	size_t name_len = len - start;
	if (name_len == 0 || name_len >= MD_NAME_MAX || strncmp(path + start, ".", name_len) == 0 ||
	    strncmp(path + start, "..", name_len) == 0)
		return false;
	memcpy(name, path + start, name_len);
	name[name_len] = '\0';
	size_t parent_len = start == 0 ? 0 : start > 1 ? start - 1 : 1;
	memcpy(parent, start == 0 ? "." : path, start == 0 ? 1 : parent_len);
	parent[start == 0 ? 1 : parent_len] = '\0';
	return true;
}

/* The catch-all's parent, opened as root under the link rule for the owner a catch-all made
 * there gets: the parent's own. A typo in -m or a wrong HOME must not build a tree of its
 * own, so the parent must exist. */
static int md_open_parent(const char *path, struct stat *st)
{
	char parent[MD_PATH_MAX], name[MD_NAME_MAX];

	if (!md_split(path, parent, name))
		return errno = ENOENT, -1;
	return md_open_dir(parent, st);
}

/* A missing catch-all is made through its parent's descriptor, never by its path, as the
 * parent's owner. */
static int md_make_catch(const char *path, struct stat *st)
{
	char parent[MD_PATH_MAX], name[MD_NAME_MAX];
	struct stat pst;

	if (!md_split(path, parent, name))
		return errno = ENOENT, -1;
	int pfd = md_open_dir(parent, &pst);
	if (pfd < 0)
		return -1;
	int fd = md_mkdir_as(pfd, name, &pst) == 0 ? openat(pfd, name, MD_DIR_FLAGS) : -1,
	    e = errno;
	close(pfd);
	return fd < 0 ? (errno = e, -1) : md_with_stat(fd, st);
}

/* The catch-all's directory: opened, or for a recipient (create) made when missing. Missing
 * and not made, md_catch.fd stays -1. */
static int md_catch_dir(const char *path, bool create)
{
	md_close_catch();
	int fd = md_open_dir(path, &md_catch.st);
	if (fd < 0 && errno == ENOENT && !create) {
		struct stat pst;
		int parent = md_open_parent(path, &pst);
		if (parent < 0)
			return -1;
		close(parent);
		return 0;
	}
	if (fd < 0 && errno == ENOENT)
		fd = md_make_catch(path, &md_catch.st);
	if (fd < 0)
		return -1;
	md_catch.fd = fd;
	return 0;
}

/* The catch-all, kept open once it is whole. */
static int md_open_catch(const char *path, bool create)
{
	/* One process, one template: a catch-all's path is the same at every call. */
	bool open = md_catch.fd >= 0;

	if (open && (md_catch.tmp_fd >= 0 || !create))
		return 0;
	if (!open && md_catch_dir(path, create) != 0)
		return -1;
	if (md_catch.fd < 0 || md_fill_catch(create) == 0)
		return 0;
	int e = errno;
	md_close_catch();
	return errno = e, -1;
}

int md_check_store(const char *tmpl, char *path, size_t size)
{
	struct md_shape sh = md_scan(tmpl);
	struct stat st;

	/* Before any transaction: the catch-all opened here is kept for the session, so root's
	 * checks (links, owners) must already apply to it. */
	md_find_root();
	char expanded[MD_PATH_MAX];
	bool catch_all = !sh.has_u && !sh.has_d;

	if (!md_expand(tmpl, catch_all ? strlen(tmpl) : sh.fixed_end, "", "", expanded))
		return errno = ENAMETOOLONG, -1;
	if (expanded[0] == '\0')
		text_copy(expanded, sizeof expanded, tmpl[0] == '/' ? "/" : ".");
	text_copy(path, size, expanded);
	if (catch_all)
		return md_open_catch(expanded, false);
	if (stat(expanded, &st) != 0)
		return -1;
	return S_ISDIR(st.st_mode) ? 0 : (errno = ENOTDIR, -1);
}

/* ---- quotas (Maildir++'s maildirsize) and free space ---- */

/* Digits into *value, false when there are none or they overflow. */
static bool md_digits(const char **p, const char *end, uint64_t *value)
{
	const char *start = *p;

	for (*value = 0; *p < end && **p >= '0' && **p <= '9'; (*p)++) {
		if (*value > (UINT64_MAX - 9) / 10)
			return false;
		*value = *value * 10 + (uint64_t)(**p - '0');
	}
	return *p > start;
}

/* The first line: "<bytes>S,<count>C", either may be missing; 0 (or none) is no limit. */
static bool md_parse_limits(const char *p, const char *end, struct md_quota *q)
{
	while (p < end) {
		uint64_t value;
		if (!md_digits(&p, end, &value) || p == end || (*p != 'S' && *p != 'C'))
			return false;
		*(*p == 'S' ? &q->max_bytes : &q->max_count) = value;
		if (++p < end && *p++ != ',')
			return false;
	}
	return true;
}

/* One "<bytes> <count>" line, either negative (a removal). */
static bool md_parse_change(const char *p, const char *end, int64_t *bytes, int64_t *count)
{
	int64_t *out[2] = { bytes, count };

	for (size_t i = 0; i < 2; i++) {
		uint64_t value;
		p += strspn(p, " \t");
		bool minus = p < end && *p == '-';
		p += minus;
		if (!md_digits(&p, end, &value) || value > INT64_MAX)
			return false;
		*out[i] = minus ? -(int64_t)value : (int64_t)value;
	}
	p += strspn(p, " \t");
	return p == end;
}

/* The limits, then the sum of every line after them. A last line without its LF is still
 * being written by another process and is left out, as Dovecot does; anything that does not
 * parse, a NUL, or a negative sum leaves the quota unknown (the reader recalculates). */
static bool md_parse_quota(struct md_quota *q, char *text, size_t len)
{
	while (len > 0 && text[len - 1] != '\n')
		len--;
	if (len == 0 || memchr(text, '\0', len) != NULL)
		return false;
	const char *end = text + len, *nl = memchr(text, '\n', len);
	if (!md_parse_limits(text, nl, q))
		return false;
	int64_t bytes = 0, count = 0, b, c;
	for (const char *line = nl + 1; line < end; line = nl + 1) {
		nl = memchr(line, '\n', (size_t)(end - line));
		if (!md_parse_change(line, nl, &b, &c) ||
		    __builtin_add_overflow(bytes, b, &bytes) ||
		    __builtin_add_overflow(count, c, &count))
			return false;
	}
	if (bytes < 0 || count < 0)
		return false;
	q->bytes = (uint64_t)bytes;
	q->count = (uint64_t)count;
	return true;
}

/* A maildirsize smtpd may read or append to: a regular file, and as root the owner's own (a
 * hard link to a file of root's is no quota). */
static bool md_quota_file_ok(int fd, uid_t owner)
{
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (!md_as_root || st.st_uid == owner);
}

/* At RCPT: the Maildir's maildirsize, read with one bounded read. Without one (the usual
 * case: one failed openat) the Maildir has no quota; past MAILDIRSIZE_MAX octets its use is
 * not added up, since the reader recalculates such a file and smtpd never does. */
static void md_read_quota(struct md_quota *q, int dir, uid_t owner)
{
	int fd = openat(dir, "maildirsize", O_RDONLY | MD_QUOTA_FLAGS);
	size_t len = 0;
	ssize_t n = 1;

	if (fd < 0)
		return;
	q->file = md_quota_file_ok(fd, owner);
	while (q->file && n > 0 && len < sizeof md_quota_text) {
		n = read(fd, md_quota_text + len, sizeof md_quota_text - len);
		len += n > 0 ? (size_t)n : 0;
		if (n < 0 && errno == EINTR)
			n = 1;
	}
	close(fd);
	q->known = q->file && n >= 0 && len <= MAILDIRSIZE_MAX &&
		   md_parse_quota(q, md_quota_text, len);
}

static bool md_over_quota(const struct md_quota *q, uint64_t bytes)
{
	return q->known && ((q->max_bytes != 0 && q->bytes + bytes > q->max_bytes) ||
			    (q->max_count != 0 && q->count + 1 > q->max_count));
}

/* With SIZE=: less room for users (f_bavail) on the Maildir's file system than the message
 * and SPACE_RESERVE. */
static bool md_short_of_space(int fd, uint64_t declared)
{
	struct statvfs vfs;

	if (declared == 0 || fstatvfs(fd, &vfs) != 0)
		return false;
	uint64_t unit = vfs.f_frsize != 0 ? vfs.f_frsize : vfs.f_bsize;
	return unit != 0 && (uint64_t)vfs.f_bavail < (declared + SPACE_RESERVE + unit - 1) / unit;
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

/* A recipient's Maildir as found at RCPT: the box it would be (the Maildir, or with -e its
 * +detail folder) and the Maildir itself, whose maildirsize counts for both. */
struct md_found {
	int fd, maildir_fd;
	struct stat st;
	char path[MD_PATH_MAX];
};

static void md_found_close(struct md_found *f)
{
	if (f->maildir_fd != f->fd)
		md_drop(f->maildir_fd);
	md_drop(f->fd);
	f->fd = f->maildir_fd = -1;
}

/* The folder ".name" of the Maildir, when it is a Maildir of the same owner; never a link. */
static bool md_try_folder(struct md_found *f, const char *name)
{
	char path[MD_PATH_MAX];
	struct text t = text_on(path, sizeof path);
	struct stat st;

	text_add(&t, f->path);
	text_add(&t, "/");
	text_add(&t, name);
	int fd = t.cut ? -1 : md_with_stat(openat(f->maildir_fd, name, MD_DIR_FLAGS), &st);
	if (fd < 0)
		return false;
	if (md_is_maildir(fd, &st) != 1 || st.st_uid != f->st.st_uid) {
		close(fd);
		return false;
	}
	f->fd = fd;
	f->st = st;
	text_copy(f->path, sizeof f->path, path);
	return true;
}

/* -e: "bob+lists" goes into the Maildir++ folder .lists of bob's Maildir, the detail looked up
 * as written, then in ASCII lower case. A detail that could not be a name (empty, a leading
 * dot), or names no folder, leaves the mail in the Maildir itself. */
static void md_find_folder(struct md_found *f, const char *local)
{
	const char *plus = strchr(local, '+');
	char name[MD_NAME_MAX], lower[MD_NAME_MAX];

	if (plus == NULL || md_bad_name(plus + 1) || strlen(plus + 1) + 2 > sizeof name)
		return;
	name[0] = lower[0] = '.';
	text_copy(name + 1, sizeof name - 1, plus + 1);
	if (md_try_folder(f, name) || !md_lower(lower + 1, sizeof lower - 1, plus + 1, false))
		return;
	if (strcmp(lower, name) != 0)
		md_try_folder(f, lower);
}

void md_forget_boxes(struct md_txn *txn, size_t keep)
{
	while (txn->box_count > keep) {
		md_drop(txn->boxes[--txn->box_count].dir_fd);
		txn->boxes[txn->box_count].dir_fd = -1;
	}
}

/* Why a recipient was refused, for the log and the probe: the path that decided (for 5.7.1 the
 * domain's directory) and, for a failure that is not simply a missing name, the errno. */
static enum md_result md_refused(struct md_txn *txn, enum md_result r, const char *tmpl,
				 const char *path, const char *u, const char *d, int e)
{
	struct md_shape sh = md_scan(tmpl);

	txn->why_errno = e;
	if (r == MD_NO_DOMAIN && sh.has_d && md_expand(tmpl, sh.d_end, u, d, txn->why_path))
		return r;
	text_copy(txn->why_path, sizeof txn->why_path, path);
	return r;
}

/* A new box: its quota is read and, given SIZE=, its room checked, so that a full Maildir is
 * refused here, for its recipient alone. */
static enum md_result md_check_room(struct md_txn *txn, struct md_box *box,
				    const struct md_found *f)
{
	uint64_t need = txn->declared_size != 0 ? txn->declared_size : 1;

	if (md_is_catch(f->maildir_fd)) {
		/* A further message to the catch-all costs no more calls than before: its
		 * maildirsize is looked for once, and this process's deliveries are added. */
		if (!md_catch.quota.kept)
			md_read_quota(&md_catch.quota, md_catch.fd, md_catch.st.st_uid);
		md_catch.quota.kept = true;
		box->quota = md_catch.quota;
	} else if (f->maildir_fd >= 0) {
		md_read_quota(&box->quota, f->maildir_fd, f->st.st_uid);
	}
	box->quota.in_parent = f->fd != f->maildir_fd;
	if (md_over_quota(&box->quota, need))
		return MD_QUOTA;
	if (f->fd >= 0 && md_short_of_space(f->fd, txn->declared_size))
		return MD_FULL;
	return MD_OK;
}

/* Two recipients in one Maildir share one box, hence one file there. Past MD_KEPT_BOXES a box
 * keeps no fd: it is opened again by its path at commit, so that a message to a thousand
 * Maildirs needs no more descriptors than one to sixteen. */
static enum md_result md_admit(struct md_txn *txn, struct md_found *f, size_t *index)
{
	for (size_t i = 0; i < txn->box_count; i++) {
		if (txn->boxes[i].dev == f->st.st_dev && txn->boxes[i].ino == f->st.st_ino) {
			md_found_close(f);
			return *index = i, MD_OK;
		}
	}
	if (txn->box_count >= txn->max_boxes) {
		md_found_close(f);
		return MD_TOO_MANY;
	}
	struct md_box *box = &txn->boxes[txn->box_count];
	memset(box, 0, sizeof *box);
	enum md_result r = md_check_room(txn, box, f);
	if (f->maildir_fd != f->fd)
		md_drop(f->maildir_fd);
	if (r != MD_OK || (txn->box_count >= MD_KEPT_BOXES && !md_is_catch(f->fd))) {
		md_drop(f->fd);
		f->fd = -1;
	}
	if (r != MD_OK)
		return r;
	box->dir_fd = f->fd;
	box->dev = f->st.st_dev;
	box->ino = f->st.st_ino;
	box->uid = f->st.st_uid;
	box->gid = f->st.st_gid;
	box->result = MD_OK;
	text_copy(box->path, sizeof box->path, f->path);
	*index = txn->box_count++;
	return MD_OK;
}

enum md_result md_add(struct md_txn *txn, const char *tmpl, const char *local, const char *domain,
		      size_t *box_index)
{
	char u[MD_PATH_MAX], d[MD_PATH_MAX];
	struct md_shape sh = md_scan(tmpl);
	struct md_found f = { .fd = -1, .maildir_fd = -1 };
	int why = 0;

	txn->why_path[0] = '\0';
	txn->why_errno = 0;
	if (md_bad_name(local) || md_bad_name(domain))
		return MD_BAD_NAME;
	if (!md_lower(u, sizeof u, local, true) || !md_lower(d, sizeof d, domain, false))
		return MD_BAD_NAME;
	if (!md_expand(tmpl, strlen(tmpl), u, d, f.path))
		return MD_BAD_NAME;
	if (sh.has_u || sh.has_d) {
		enum md_result r = md_open_user(tmpl, f.path, u, d, &f.fd, &f.st, &why);
		if (r != MD_OK)
			return md_refused(txn, r, tmpl, f.path, u, d, why);
	} else if (md_open_catch(f.path, !md_no_create) != 0) {
		return md_refused(txn, md_errno_result(errno), tmpl, f.path, u, d, errno);
	} else {
		f.fd = md_catch.fd;
		f.st = md_catch.st;
	}
	f.maildir_fd = f.fd;
	if (txn->detail_folders && f.fd >= 0)
		md_find_folder(&f, local);
	char path[MD_PATH_MAX];
	text_copy(path, sizeof path, f.path);
	enum md_result r = md_admit(txn, &f, box_index);
	if (r == MD_OK || r == MD_TOO_MANY)
		return r;
	return md_refused(txn, r, tmpl, path, u, d, r == MD_FULL ? ENOSPC : 0);
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
static enum md_result md_fail_as(struct md_txn *txn, const char *op, int e, enum md_result r)
{
	if (txn->fail_op == NULL) {
		txn->fail_op = op;
		txn->fail_errno = e;
		txn->fail_result = r;
	}
	return r;
}

static enum md_result md_fail(struct md_txn *txn, const char *op, int e)
{
	return md_fail_as(txn, op, e, md_full_or_temp(e));
}

static void md_box_fail_as(struct md_txn *txn, size_t i, const char *op, int e, enum md_result r)
{
	struct md_box *box = &txn->boxes[i];

	md_fail_as(txn, op, e, r);
	if (box->result == MD_OK) {
		box->result = r;
		box->fail_op = op;
		box->fail_errno = e;
	}
}

static void md_box_fail(struct md_txn *txn, size_t i, const char *op, int e)
{
	md_box_fail_as(txn, i, op, e, md_full_or_temp(e));
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

/* The next box at or after i that has not failed, or box_count. */
static size_t md_next_ok(const struct md_txn *txn, size_t i)
{
	while (i < txn->box_count && txn->boxes[i].result != MD_OK)
		i++;
	return i;
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
	int fd = md_open_dir(box->path, &st);
	if (fd >= 0 && (st.st_dev != box->dev || st.st_ino != box->ino)) {
		close(fd);
		return errno = ESTALE, -1;
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

/* As root, every file belongs to the owner of the Maildir it is in. */
static int md_give(int fd, const struct md_box *box)
{
	if (!md_as_root || (box->uid == 0 && box->gid == 0))
		return 0;
	return fchown(fd, box->uid, box->gid);
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

/* As root, bytes for a Maildir are written as its owner (md_fs_as), and only while they are
 * written: nothing else the process does between two writes runs under another identity.
 * Without a box they are written as we are. */
static int md_write_as(const struct md_box *box, int fd, const void *buf, size_t len)
{
	if (box == NULL)
		return md_write_all(fd, buf, len);
	if (md_fs_as(box->uid, box->gid) != 0)
		return -1;
	int r = md_write_all(fd, buf, len), e = errno;
	md_fs_root();
	return errno = e, r;
}

/* Octets off to end of the file at from, appended to to (as box's owner when box is given);
 * *reading tells which side failed. */
static int md_copy_span(int from, uint64_t off, uint64_t end, int to, const struct md_box *box,
			bool *reading)
{
	while (off < end) {
		uint64_t left = end - off;
		ssize_t n = pread(from, md_copy_buf, left < MD_COPY_BUF ? left : MD_COPY_BUF,
				  (off_t)off);
		*reading = true;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? (errno = EIO, -1) : -1;
		*reading = false;
		if (md_write_as(box, to, md_copy_buf, (size_t)n) != 0)
			return -1;
		off += (uint64_t)n;
	}
	return 0;
}

/* The first len bytes of the file at from, read back into to, box's. */
static int md_copy_bytes(int from, int to, const struct md_box *box, uint64_t len, bool *reading)
{
	return md_copy_span(from, 0, len, to, box, reading);
}

int md_copy_range(int from, uint64_t off, uint64_t end, int to)
{
	bool reading;

	return md_copy_span(from, off, end, to, NULL, &reading);
}

/* The spool goes: closed, and its name taken out of tmp/. */
static void md_spool_drop(struct md_txn *txn)
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

/* A new spool in box i's tmp/, its owner's before its first byte; 0, or an errno with the step
 * that failed. */
static int md_spool_in(struct md_txn *txn, size_t i, const char **op)
{
	const struct md_box *box = &txn->boxes[i];
	int tmp = md_open_sub(txn, i, "tmp"), e = errno;

	*op = "open-tmp";
	if (tmp < 0)
		return e;
	int fd = openat(tmp, md_name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = errno;
		md_close_sub(tmp);
		return *op = "create-in-tmp", e;
	}
	md_spool_tmp = tmp;
	md_spool_in_tmp = true;
	txn->spool_fd = fd;
	txn->spool_box = i;
	*op = "chown";
	if (md_give(fd, box) != 0) {
		e = errno;
		md_spool_drop(txn);
		return e;
	}
	return 0;
}

/* LMTP: the spool's box has failed, for its own recipients only. The spool goes on in the next
 * box that has not failed: the bytes so far are read back from the old file into a new one
 * there, and the old file goes. 0, or -1 when no box is left, or when the old file cannot be
 * read back: then none can get the message. */
static int md_spool_move(struct md_txn *txn)
{
	int old = txn->spool_fd, old_tmp = md_spool_tmp;
	bool reading = false;
	const char *op;

	txn->spool_fd = md_spool_tmp = -1;
	md_spool_in_tmp = false;
	unlinkat(old_tmp, md_name, 0);
	md_close_sub(old_tmp);
	for (size_t i = md_next_ok(txn, txn->spool_box + 1); i < txn->box_count;
	     i = md_next_ok(txn, i + 1)) {
		int e = md_spool_in(txn, i, &op);
		if (e == 0 && md_copy_bytes(old, txn->spool_fd, &txn->boxes[i], txn->stored_bytes,
					    &reading) == 0)
			break;
		if (e == 0) {
			e = errno;
			op = reading ? "read-spool" : "write";
			md_spool_drop(txn);
		}
		if (reading) {
			md_fail_all(txn, op, e);
			break;
		}
		md_box_fail(txn, i, op, e);
	}
	close(old);
	return txn->spool_fd >= 0 ? 0 : -1;
}

/* The spool's box failed at op: in SMTP the message fails; in LMTP that box does, and the
 * spool moves on. 0 when there is a spool to go on with. */
static int md_spool_failed(struct md_txn *txn, const char *op, int e)
{
	if (!txn->each_alone) {
		md_fail(txn, op, e);
		return -1;
	}
	md_box_fail(txn, txn->spool_box, op, e);
	return md_spool_move(txn);
}

enum md_result md_begin(struct md_txn *txn)
{
	const char *op;

	if (txn->spool_fd >= 0)
		md_abort(txn);
	txn->stored_bytes = 0;
	if (txn->box_count == 0)
		return md_fail(txn, "begin", EINVAL);
	if (md_make_id(txn) != 0)
		return md_fail(txn, "message-id", errno);
	for (size_t i = md_next_ok(txn, 0); i < txn->box_count; i = md_next_ok(txn, i + 1)) {
		int e = md_spool_in(txn, i, &op);
		if (e == 0)
			return MD_OK;
		md_box_fail(txn, i, op, e);
		if (!txn->each_alone)
			break;
	}
	return txn->fail_result;
}

enum md_result md_write(struct md_txn *txn, const void *buf, size_t len)
{
	if (txn->spool_fd < 0)
		return md_fail(txn, "write", EBADF);
	while (md_write_as(&txn->boxes[txn->spool_box], txn->spool_fd, buf, len) != 0)
		if (md_spool_failed(txn, "write", errno) != 0)
			return txn->fail_result;
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
	const struct md_box *box = &txn->boxes[txn->spool_box];
	errno = 0;
	/* The spool's owner's from the first byte, written as them: see md_write_as. */
	if (md_give(fd, box) != 0)
		op = "chown-rewrite", e = errno;
	else if (md_fs_as(box->uid, box->gid) != 0)
		e = errno;
	else if (write_head(fd, ctx) != 0 ||
		 md_copy_range(txn->spool_fd, keep, txn->stored_bytes, fd) != 0 ||
		 (size = lseek(fd, 0, SEEK_CUR)) < 0)
		e = errno != 0 ? errno : EIO;
	md_fs_root();
	if (e == 0 && renameat(md_spool_tmp, name, md_spool_tmp, md_name) != 0)
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
	const struct md_box *a = &txn->boxes[txn->spool_box], *b = &txn->boxes[i];

	return !md_as_root || (a->uid == b->uid && a->gid == b->gid);
}

/* A copy of the spool into tmp/, its owner's before its first byte, then fsynced; 0 or an
 * errno, naming the step. */
static int md_copy_file(struct md_txn *txn, size_t i, int tmp, const char **op)
{
	const struct md_box *box = &txn->boxes[i];
	bool reading;
	int e = 0,
	    fd = openat(tmp, md_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

	*op = "create-copy";
	if (fd < 0)
		return errno;
	if (*op = "chown-copy", md_give(fd, box) != 0)
		e = errno;
	else if (*op = "write-copy",
		 md_copy_bytes(txn->spool_fd, fd, box, txn->stored_bytes, &reading) != 0)
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

/* The spool is closed only once every copy is made from it, so that a late write error (NFS)
 * is still seen before anything is published. */
static void md_stage_spool(struct md_txn *txn)
{
	int fd = txn->spool_fd;

	txn->spool_fd = -1;
	if (close(fd) != 0)
		md_fail_all(txn, "close", errno);
	md_staged[txn->spool_box] = txn->boxes[txn->spool_box].result == MD_OK;
}

/* The spool is made durable first; in LMTP a spool whose fsync fails moves on, as for a write. */
static bool md_stage_all(struct md_txn *txn, bool all_or_nothing)
{
	while (fsync(txn->spool_fd) != 0) {
		int e = errno;
		if (md_spool_failed(txn, "fsync", e) != 0) {
			md_fail_all(txn, "fsync", e); /* in LMTP, every box has failed already */
			return false;
		}
	}
	for (size_t i = md_next_ok(txn, 0); i < txn->box_count; i = md_next_ok(txn, i + 1)) {
		if (i != txn->spool_box)
			md_stage(txn, i);
		if (all_or_nothing && md_any_failed(txn))
			return false;
	}
	md_stage_spool(txn);
	return !(all_or_nothing && md_any_failed(txn));
}

/* ---- publishing: tmp/ to new/, then new/ fsynced ---- */

/* Returns 0 or an errno, naming the step that failed. */
static int md_publish_into(const struct md_txn *txn, size_t i, int tmp, int new, const char **op)
{
	*op = "rename-into-new";
	if (renameat(tmp, md_name, new, md_final) != 0)
		return errno;
	md_published[i] = true;
	if (i == txn->spool_box)
		md_spool_in_tmp = false;
	*op = "fsync-new";
	return fsync(new) != 0 ? errno : 0;
}

static void md_publish(struct md_txn *txn, size_t i)
{
	const char *op = "open-tmp";
	bool spool = i == txn->spool_box;
	int e, tmp = spool ? md_spool_tmp : md_open_sub(txn, i, "tmp"), new = -1;

	if (tmp < 0)
		e = errno;
	else if ((new = md_open_sub(txn, i, "new")) < 0)
		op = "open-new", e = errno;
	else
		e = md_publish_into(txn, i, tmp, new, &op);
	if (!spool)
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

/* Takes name out of box i's tmp/ or new/ (then fsynced). Should no descriptor be had for the
 * directory (EMFILE, ENOMEM), its path still reaches the name: one no one else uses. */
static void md_unlink_in(const struct md_txn *txn, size_t i, const char *sub, const char *name)
{
	char path[MD_PATH_MAX + MD_NAME_MAX + 8];
	struct text t = text_on(path, sizeof path);
	int dir = md_open_sub(txn, i, sub);

	if (dir >= 0) {
		if (unlinkat(dir, name, 0) == 0 && strcmp(sub, "new") == 0)
			(void)fsync(dir);
		md_close_sub(dir);
		return;
	}
	text_add(&t, txn->boxes[i].path);
	text_add(&t, "/");
	text_add(&t, sub);
	text_add(&t, "/");
	text_add(&t, name);
	if (!t.cut)
		unlinkat(AT_FDCWD, path, 0);
}

/* What failed leaves nothing: not in new/ (removed, and the removal made durable) nor in
 * tmp/. Only a box that failed after its rename was ever visible. */
static void md_clean(struct md_txn *txn, size_t i)
{
	if (md_published[i] && txn->boxes[i].result != MD_OK)
		md_unlink_in(txn, i, "new", md_final);
	if (i != txn->spool_box && md_staged[i] && !md_published[i])
		md_unlink_in(txn, i, "tmp", md_name);
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

/* With the real size known: a box it would take over its quota fails (452 4.2.2). */
static void md_check_quotas(struct md_txn *txn)
{
	for (size_t i = 0; i < txn->box_count; i++)
		if (txn->boxes[i].result == MD_OK &&
		    md_over_quota(&txn->boxes[i].quota, txn->stored_bytes))
			md_box_fail_as(txn, i, "quota", EDQUOT, MD_QUOTA);
}

/* After a delivery, its line in maildirsize: "<size> 1", one write(2) with O_APPEND so that
 * concurrent writers' lines never mix. A missing file is never made; a failure only leaves
 * the count low until the reader recalculates. */
static void md_count(const struct md_txn *txn, size_t i)
{
	const struct md_box *box = &txn->boxes[i];
	char line[32];
	struct text t = text_on(line, sizeof line);
	int dir = md_box_dir(txn, i);
	int fd = dir < 0 ? -1
			 : openat(dir, box->quota.in_parent ? "../maildirsize" : "maildirsize",
				  O_WRONLY | O_APPEND | MD_QUOTA_FLAGS);

	text_add_num(&t, txn->stored_bytes, 0);
	text_add(&t, " 1\n");
	if (fd >= 0 && md_quota_file_ok(fd, box->uid) && md_write_as(box, fd, line, t.len) == 0 &&
	    box->quota.kept) {
		md_catch.quota.bytes += txn->stored_bytes;
		md_catch.quota.count++;
	}
	if (fd >= 0)
		close(fd);
	if (dir >= 0 && dir != box->dir_fd)
		close(dir);
}

enum md_result md_commit(struct md_txn *txn)
{
	bool all = !txn->each_alone, any_ok = false;

	for (size_t i = 0; i < txn->box_count; i++)
		md_staged[i] = md_published[i] = false;
	md_check_quotas(txn);
	if (txn->spool_fd < 0)
		md_fail_all(txn, "commit", EBADF);
	else if (!md_final_name(txn))
		md_fail_all(txn, "file-name", EOVERFLOW);
	else if (!(all ? md_any_failed(txn) : md_next_ok(txn, 0) == txn->box_count) &&
		 md_stage_all(txn, all))
		md_publish_all(txn, all);
	bool failed = md_any_failed(txn);
	for (size_t i = 0; i < txn->box_count; i++) {
		struct md_box *box = &txn->boxes[i];
		if (all && failed && box->result == MD_OK)
			box->result = txn->fail_result;
		any_ok |= box->result == MD_OK;
		md_clean(txn, i);
		if (box->result == MD_OK && box->quota.file)
			md_count(txn, i);
		text_copy(box->file, sizeof box->file, box->result == MD_OK ? md_final : "");
	}
	md_abort(txn); /* the spool, if it is still in tmp/ */
	return any_ok ? MD_OK : txn->fail_result;
}

void md_abort(struct md_txn *txn)
{
	md_spool_drop(txn);
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
	txn->spool_box = 0;
	txn->fail_op = NULL;
	txn->fail_errno = 0;
	txn->fail_result = MD_OK;
}

/* The end of the session: what md_txn_init took is given back. */
void md_txn_free(struct md_txn *txn)
{
	md_reset(txn);
	free(txn->boxes);
	txn->boxes = NULL;
	txn->max_boxes = 0;
}
