/* An LD_PRELOAD shim for tests: makes one chosen call to write, fsync, open, openat, mkdir,
 * mkdirat, link, linkat, rename, renameat, fchown, fstat, fstatat, pread, unlinkat, readlinkat,
 * close or clock_gettime fail with a chosen errno.
 *   FAULT_CALL=fsync      the function to fail (write and fsync count only fds above 2,
 *                         so the replies on fds 0-2 are never hit)
 *   FAULT_NTH=3           fail its 3rd call; 0 fails none and only counts
 *   FAULT_ERRNO=ENOSPC,EIO a list fails as many calls in a row: the 3rd with ENOSPC, the 4th
 *                         with EIO
 *   FAULT_ERRNO=ENOSPC    ENOSPC EDQUOT EIO EACCES EROFS EXDEV EMFILE EFBIG EPERM ENOTSUP
 *                         EMLINK ENOENT EINTR ENFILE (default EIO); a failed close still
 *                         closes;
 *                         EEXIST for mkdir and mkdirat makes the directory first, as a
 *                         concurrent session winning the race would
 *   FAULT_TRACE=file      append one line per counted call: "<function>"
 *   FAULT_OWNERS=file     append one line per write(2) to a regular file, whatever
 *                         FAULT_CALL says: "<file's uid>:<gid> fsuid=<fsuid>:<fsgid>", the
 *                         file's owner and who writes, at that moment
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const struct {
	const char *name;
	int value;
} errnos[] = {
	{"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EIO", EIO},       {"EACCES", EACCES},
	{"EROFS", EROFS},   {"EXDEV", EXDEV},   {"EMFILE", EMFILE}, {"EFBIG", EFBIG},
	{"EEXIST", EEXIST}, {"EPERM", EPERM},   {"ENOTSUP", ENOTSUP}, {"EMLINK", EMLINK},
	{"ENOENT", ENOENT}, {"EINTR", EINTR},   {"ENFILE", ENFILE},
};

/* The errno for the call that is FAULT_NTH + skip, or 0 when the list is shorter. */
static int fault_errno(unsigned long skip)
{
	const char *name = getenv("FAULT_ERRNO");

	if (name == NULL)
		return skip == 0 ? EIO : 0;
	for (; skip > 0 && name != NULL; skip--)
		if ((name = strchr(name, ',')) != NULL)
			name++;
	if (name == NULL)
		return 0;
	size_t len = strcspn(name, ",");
	for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
		if (strlen(errnos[i].name) == len && strncmp(name, errnos[i].name, len) == 0)
			return errnos[i].value;
	return EIO;
}

/* Appends text to the file at path as the process's own user, whoever smtpd writes as at the
 * moment (as root it may write under a Maildir owner's file-system uid). */
static void append(const char *path, const char *text, size_t len)
{
	ssize_t (*real_write)(int, const void *, size_t) = dlsym(RTLD_NEXT, "write");
	int (*real_open)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
	int e = errno, fsuid = setfsuid(geteuid()), fsgid = setfsgid(getegid());
	int fd = real_open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);

	if (fd >= 0 && real_write(fd, text, len) < 0)
		(void)0;
	if (fd >= 0)
		((int (*)(int))dlsym(RTLD_NEXT, "close"))(fd); /* not ours: that would trace itself */
	setfsgid((gid_t)fsgid);
	setfsuid((uid_t)fsuid);
	errno = e;
}

static void trace(const char *fn)
{
	const char *path = getenv("FAULT_TRACE");
	char line[64];

	if (path != NULL)
		append(path, line, (size_t)snprintf(line, sizeof line, "%s\n", fn));
}

/* True when this call is the one chosen to fail. */
static int should_fail(const char *fn)
{
	static unsigned long calls;
	const char *call = getenv("FAULT_CALL"), *nth = getenv("FAULT_NTH");

	if (call == NULL || strcmp(call, fn) != 0)
		return 0;
	trace(fn);
	calls++;
	unsigned long first = nth == NULL ? 0 : strtoul(nth, NULL, 10);
	if (first == 0 || calls < first)
		return 0;
	int e = fault_errno(calls - first);
	if (e == 0)
		return 0;
	errno = e;
	return 1;
}

#define REAL(fn) ((__typeof__(&fn))dlsym(RTLD_NEXT, #fn))

/* One FAULT_OWNERS line for a write to fd: setfsuid(-1) changes nothing and tells the
 * current file-system ids. */
static void trace_owner(int fd)
{
	const char *path = getenv("FAULT_OWNERS");
	struct stat st;
	char line[96];

	if (path == NULL || REAL(fstat)(fd, &st) != 0 || !S_ISREG(st.st_mode))
		return;
	int n = snprintf(line, sizeof line, "%u:%u fsuid=%d:%d\n", (unsigned)st.st_uid,
			 (unsigned)st.st_gid, setfsuid((uid_t)-1), setfsgid((gid_t)-1));
	append(path, line, (size_t)n);
}

ssize_t write(int fd, const void *buf, size_t len)
{
	if (fd > 2)
		trace_owner(fd);
	if (fd > 2 && should_fail("write"))
		return -1;
	return REAL(write)(fd, buf, len);
}

int fsync(int fd)
{
	if (fd > 2 && should_fail("fsync"))
		return -1;
	return REAL(fsync)(fd);
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	if (should_fail("open"))
		return -1;
	return REAL(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	if (should_fail("open"))
		return -1;
	return REAL(open64)(path, flags, mode);
}

int openat(int dir, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	if (should_fail("openat"))
		return -1;
	return REAL(openat)(dir, path, flags, mode);
}

int openat64(int dir, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	if (should_fail("openat"))
		return -1;
	return REAL(openat64)(dir, path, flags, mode);
}

int mkdir(const char *path, mode_t mode)
{
	if (!should_fail("mkdir"))
		return REAL(mkdir)(path, mode);
	if (errno == EEXIST && REAL(mkdir)(path, mode) == 0)
		errno = EEXIST;
	return -1;
}

int mkdirat(int dir, const char *path, mode_t mode)
{
	if (!should_fail("mkdirat"))
		return REAL(mkdirat)(dir, path, mode);
	if (errno == EEXIST && REAL(mkdirat)(dir, path, mode) == 0)
		errno = EEXIST;
	return -1;
}

int link(const char *from, const char *to)
{
	return should_fail("link") ? -1 : REAL(link)(from, to);
}

int linkat(int fromdir, const char *from, int todir, const char *to, int flags)
{
	return should_fail("linkat") ? -1 : REAL(linkat)(fromdir, from, todir, to, flags);
}

int rename(const char *from, const char *to)
{
	return should_fail("rename") ? -1 : REAL(rename)(from, to);
}

int renameat(int fromdir, const char *from, int todir, const char *to)
{
	return should_fail("renameat") ? -1 : REAL(renameat)(fromdir, from, todir, to);
}

int fchown(int fd, uid_t uid, gid_t gid)
{
	return should_fail("fchown") ? -1 : REAL(fchown)(fd, uid, gid);
}

int fstat(int fd, struct stat *st)
{
	return fd > 2 && should_fail("fstat") ? -1 : REAL(fstat)(fd, st);
}

int fstatat(int dir, const char *path, struct stat *st, int flags)
{
	return should_fail("fstatat") ? -1 : REAL(fstatat)(dir, path, st, flags);
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	return should_fail("pread") ? -1 : REAL(pread)(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
	return should_fail("pread") ? -1 : REAL(pread64)(fd, buf, len, off);
}

int unlinkat(int dir, const char *path, int flags)
{
	return should_fail("unlinkat") ? -1 : REAL(unlinkat)(dir, path, flags);
}

ssize_t readlinkat(int dir, const char *path, char *buf, size_t len)
{
	return should_fail("readlinkat") ? -1 : REAL(readlinkat)(dir, path, buf, len);
}

/* A failed close still closes, as Linux's does: the descriptor is never left open. */
int close(int fd)
{
	if (fd > 2 && should_fail("close")) {
		int e = errno;
		REAL(close)(fd);
		errno = e;
		return -1;
	}
	return REAL(close)(fd);
}

int clock_gettime(clockid_t clock, struct timespec *ts)
{
	return should_fail("clock_gettime") ? -1 : REAL(clock_gettime)(clock, ts);
}

/* With _FILE_OFFSET_BITS=64 glibc's headers call these names instead. */
int fstat64(int fd, struct stat64 *st)
{
	return fd > 2 && should_fail("fstat") ? -1 : REAL(fstat64)(fd, st);
}

int fstatat64(int dir, const char *path, struct stat64 *st, int flags)
{
	return should_fail("fstatat") ? -1 : REAL(fstatat64)(dir, path, st, flags);
}
