# smtpd: one SMTP session on stdin/stdout, delivered into Maildirs.
CC ?= cc
CFLAGS ?= -O2
WARN = -std=c11 -Wall -Wextra -Werror
SAN = -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
PREFIX ?= /usr/local
SRC = smtpd.c session.c address.c mailbox.c log.c proxy.c milter.c
FUZZ_SECONDS ?= 60

all: smtpd

smtpd: $(SRC) smtp.h
	$(CC) $(CFLAGS) $(WARN) $(LDFLAGS) -o $@ $(SRC)

smtpd-asan: $(SRC) smtp.h
	$(CC) $(SAN) $(WARN) -o $@ $(SRC)

# musl gives a binary of a few dozen KiB for small systems; glibc's static one works too.
smtpd-static: $(SRC) smtp.h
	if command -v musl-gcc >/dev/null; then musl-gcc -static -Os -s $(WARN) -o $@ $(SRC); \
		echo musl > $@.libc; \
	else $(CC) -static -Os -s $(WARN) -o $@ $(SRC); \
		echo 'glibc (no musl-gcc: Debian package musl-tools)' > $@.libc; fi

static: smtpd-static
	@ls -l smtpd-static | awk -v libc="$$(cat smtpd-static.libc)" \
		'{print "smtpd-static: " libc ", " $$5 " bytes"}'

tests/faultinject.so: tests/faultinject.c
	$(CC) -O2 -Wall -Wextra -Werror -fPIC -shared -o $@ tests/faultinject.c -ldl

# What the tests need comes first, so that a missing tool (clang-format too) is named, or
# installed when root, before anything uses it.
deps:
	@sh tests/deps.sh --check-only || { [ "$$(id -u)" = 0 ] && sh tests/deps.sh; } || exit 1

check: deps
	@$(MAKE) --no-print-directory format-check smtpd smtpd-asan tests/faultinject.so
	@SMTPD=$(CURDIR)/smtpd sh tests/run.sh plain
	@SMTPD=$(CURDIR)/smtpd-asan ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 sh tests/run.sh asan

# The pipe-mode suites with smtpd under valgrind; any report fails the run.
VALGRIND_SUITES = tests/extensions.bats tests/lmtp.bats tests/proxy.bats
check-valgrind: smtpd
	@logs=$$(mktemp -d); \
	SMTPD=$(CURDIR)/tests/valgrind-smtpd VALGRIND_LOGS=$$logs bats $(VALGRIND_SUITES); status=$$?; \
	for f in $$logs/valgrind.*; do [ -s "$$f" ] && { cat "$$f"; status=1; }; done; \
	rm -rf $$logs; exit $$status

# The pipe-mode suites against the static (musl) build: libc differences show here.
STATIC_SUITES = tests/core.bats tests/golden.bats tests/extensions.bats tests/lmtp.bats tests/proxy.bats \
	tests/small.bats
check-static: smtpd-static
	SMTPD=$(CURDIR)/smtpd-static bats $(STATIC_SUITES)

# Other CPUs, with Debian's cross compilers (gcc-<triplet>). The binary is static, so that
# qemu-user runs it without binfmt_misc or a target sysroot; the libc is the cross packages'
# glibc (static glibc warns about getpwuid: only a run with no -m and no HOME needs NSS).
TARGET ?= arm-linux-gnueabihf
cross: $(SRC) smtp.h
	$(TARGET)-gcc -static -Os -s $(WARN) -o smtpd-$(TARGET) $(SRC)
	@ls -l smtpd-$(TARGET) | awk '{print "smtpd-$(TARGET): glibc, static, " $$5 " bytes"}'

# The pipe-mode suites against cross builds under qemu-user: little-endian 32-bit ARM and
# big-endian 32-bit MIPS, where byte order and word size show. Each target gets a wrapper
# script with absolute paths, since launchers such as systemd-socket-activate pass no
# environment on.
CROSS_CHECK_TARGETS = arm-linux-gnueabihf mips-linux-gnu
CROSS_SUITES = tests/core.bats tests/golden.bats tests/extensions.bats tests/lmtp.bats \
	tests/proxy.bats tests/hostile.bats
check-cross:
	@for t in $(CROSS_CHECK_TARGETS); do $(MAKE) --no-print-directory cross TARGET=$$t || exit 1; done
	@for t in $(CROSS_CHECK_TARGETS); do \
		a=$${t%%-*}; case $$a in powerpc*) a=ppc$${a#powerpc};; esac; \
		q=$$(command -v qemu-$$a-static) || { echo "no qemu-$$a-static for $$t" >&2; exit 1; }; \
		printf '#!/bin/sh\nexec %s %s "$$@"\n' "$$q" "$(CURDIR)/smtpd-$$t" > smtpd-$$t.qemu; \
		chmod +x smtpd-$$t.qemu; \
		echo "== $$t under $$q"; \
		SMTPD=$(CURDIR)/smtpd-$$t.qemu SMTPD_EMULATED=1 bats $(CROSS_SUITES) || exit 1; \
	done

fuzz: tests/fuzz/fuzz_session
	mkdir -p tests/fuzz/corpus
	cp tests/fuzz/seeds/* tests/fuzz/corpus/
	cd tests/fuzz && TMPDIR=$${TMPDIR:-/dev/shm} ./fuzz_session -max_total_time=$(FUZZ_SECONDS) -close_fd_mask=2 \
		-dict=smtp.dict -print_final_stats=1 corpus

tests/fuzz/fuzz_session: tests/fuzz/fuzz_session.c session.c address.c mailbox.c log.c proxy.c milter.c smtp.h
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-o $@ tests/fuzz/fuzz_session.c session.c address.c mailbox.c log.c proxy.c milter.c

# Line and branch coverage of the whole suite (gcc --coverage, gcovr), per file. The binary
# and its counters live in cov/, made by one run and then writable by every user a test runs
# smtpd as.
COVERAGE_SUITES ?= tests
coverage: $(SRC) smtp.h tests/faultinject.so
	rm -rf cov && mkdir -m 777 cov
	$(CC) --coverage -O0 $(WARN) -o cov/smtpd $(SRC)
	cov/smtpd -V >/dev/null
	chmod -R a+rwX cov
	-SMTPD=$(CURDIR)/cov/smtpd bats $(COVERAGE_SUITES) | grep -v '^ok '
	@for kind in lines branches; do \
		opt=; [ $$kind = branches ] && opt=--branches; \
		gcovr -r . --object-directory cov $$opt $(SRC:%=--filter %) | \
		awk -v k=$$kind '$$1 ~ /\.c$$/ || $$1 == "TOTAL" { printf "%-10s %-8s %5s of %5s  %s\n", $$1, k, $$3, $$2, $$4 }'; \
	done

# A benchmark, not a test: figures for smtpd next to bench/floor.c (see bench/run.sh).
bench: smtpd smtpd-static
	bash bench/run.sh

# Under Debian 12's systemd as PID 1 in a container (root; debootstraps a cached tree once).
check-systemd: smtpd
	bash tests/nspawn.sh check

# A benchmark, not a test: the shipped unit against the same unit without its sandbox and
# against smtpd-tcpserver.service (bench/README.md).
bench-systemd: smtpd
	bash tests/nspawn.sh bench

# The examples through ./smtpd a line at a time, into a store of three Maildirs: bob, carol and
# postmaster of demo.example. The template makes them the user database.
DEMO_STORE = demo/vhosts/demo.example
demo: smtpd
	@rm -rf demo
	@for u in bob carol postmaster; do mkdir -p $(DEMO_STORE)/$$u/cur $(DEMO_STORE)/$$u/new $(DEMO_STORE)/$$u/tmp; done
	@echo "# the store: $(DEMO_STORE)/{bob,carol,postmaster}, a Maildir each"
	@for t in examples/*.txt; do \
		echo "== $$t"; echo "\$$ ./smtpd -h demo.example -m 'demo/vhosts/%d/%u' < $$t"; \
		bash examples/demo.sh $$t -h demo.example -m 'demo/vhosts/%d/%u' || exit 1; echo; done
	@for f in demo/vhosts/*/*/new/*; do echo "== $$f"; cat "$$f"; echo; done

# What an admin installs is the fast build: static musl when musl-gcc is there (no dynamic
# loader at each session's start: see bench/README.md), else the glibc build.
INSTALL_BIN = $(if $(shell command -v musl-gcc 2>/dev/null),smtpd-static,smtpd)
install: $(INSTALL_BIN)
	@echo "installing $(INSTALL_BIN) ($(if $(filter smtpd-static,$(INSTALL_BIN)),static musl,dynamic glibc: no musl-gcc, Debian package musl-tools)) as $(DESTDIR)$(PREFIX)/sbin/smtpd"
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 755 $(INSTALL_BIN) $(DESTDIR)$(PREFIX)/sbin/smtpd
	install -m 644 smtpd.8 $(DESTDIR)$(PREFIX)/share/man/man8/smtpd.8

# man8/ goes too when smtpd.8 was all it held: install made it, and rmdir takes only an empty one.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/smtpd $(DESTDIR)$(PREFIX)/share/man/man8/smtpd.8
	@[ ! -d $(DESTDIR)$(PREFIX)/share/man/man8 ] || rmdir $(DESTDIR)$(PREFIX)/share/man/man8 2>/dev/null || true

format:
	clang-format -i $(SRC) smtp.h

format-check:
	clang-format --dry-run --Werror $(SRC) smtp.h

clean:
	rm -rf smtpd smtpd-asan smtpd-static smtpd-static.libc smtpd-*-linux-* tests/faultinject.so \
		tests/fuzz/fuzz_session demo cov

.PHONY: all bench bench-systemd coverage cross deps static check check-cross check-static \
	check-systemd check-valgrind fuzz demo install uninstall format format-check clean
