# smtpd: one SMTP session on stdin/stdout, delivered into Maildirs.
CC ?= cc
CFLAGS ?= -O2
WARN = -std=c11 -Wall -Wextra -Werror
SAN = -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
PREFIX ?= /usr/local
SRC = smtpd.c session.c mailbox.c log.c
FUZZ_SECONDS ?= 60

all: smtpd

smtpd: $(SRC) smtp.h
	$(CC) $(CFLAGS) $(WARN) $(LDFLAGS) -o $@ $(SRC)

smtpd-asan: $(SRC) smtp.h
	$(CC) $(SAN) $(WARN) -o $@ $(SRC)

# musl gives a binary of a few dozen KiB for small systems; glibc's static one works too.
smtpd-static: $(SRC) smtp.h
	if command -v musl-gcc >/dev/null; then musl-gcc -static -Os -s $(WARN) -o $@ $(SRC); \
	else $(CC) -static -Os -s $(WARN) -o $@ $(SRC); fi

static: smtpd-static
	@ls -l smtpd-static | awk '{print "smtpd-static: " $$5 " bytes"}'

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
STATIC_SUITES = tests/core.bats tests/golden.bats tests/extensions.bats tests/lmtp.bats tests/proxy.bats
check-static: smtpd-static
	SMTPD=$(CURDIR)/smtpd-static bats $(STATIC_SUITES)

fuzz: tests/fuzz/fuzz_session
	mkdir -p tests/fuzz/corpus
	cp tests/fuzz/seeds/* tests/fuzz/corpus/
	cd tests/fuzz && TMPDIR=$${TMPDIR:-/dev/shm} ./fuzz_session -max_total_time=$(FUZZ_SECONDS) -close_fd_mask=2 \
		-dict=smtp.dict -print_final_stats=1 corpus

tests/fuzz/fuzz_session: tests/fuzz/fuzz_session.c session.c mailbox.c log.c smtp.h
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-o $@ tests/fuzz/fuzz_session.c session.c mailbox.c log.c

# Line and branch coverage of the whole suite (gcc --coverage, gcovr), per file. The binary
# and its counters live in cov/, writable by every user a launcher test runs smtpd as.
COVERAGE_SUITES ?= tests
coverage: $(SRC) smtp.h tests/faultinject.so
	rm -rf cov && mkdir -m 777 cov
	$(CC) --coverage -O0 $(WARN) -o cov/smtpd $(SRC)
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

# A benchmark, not a test: the shipped unit against the same unit without its sandbox.
bench-systemd: smtpd
	bash tests/nspawn.sh bench

demo: smtpd
	@rm -rf demo && mkdir demo
	@for t in examples/*.txt; do \
		echo "== $$t: ./smtpd -h demo.example -m ./demo/Maildir < $$t"; \
		echo "-- sent (C:) and replies (S:)"; sed 's/^/C: /' $$t; \
		./smtpd -h demo.example -m ./demo/Maildir < $$t 2>/dev/null | tr -d '\r' | sed 's/^/S: /'; \
		echo; done
	@for f in demo/Maildir/new/*; do echo "== $$f"; cat "$$f"; echo; done

install: smtpd
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 755 smtpd $(DESTDIR)$(PREFIX)/sbin/smtpd
	install -m 644 smtpd.8 $(DESTDIR)$(PREFIX)/share/man/man8/smtpd.8

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/smtpd $(DESTDIR)$(PREFIX)/share/man/man8/smtpd.8

format:
	clang-format -i $(SRC) smtp.h

format-check:
	clang-format --dry-run --Werror $(SRC) smtp.h

clean:
	rm -rf smtpd smtpd-asan smtpd-static tests/faultinject.so tests/fuzz/fuzz_session demo cov

.PHONY: all bench bench-systemd coverage deps static check check-static check-systemd \
	check-valgrind fuzz demo install uninstall format format-check clean
