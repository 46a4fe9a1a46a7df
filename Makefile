# ergo - build, test, sanitize, fuzz.
#
#   make            release build: build/ergo (CLI) and build/libergo.a
#   make test       build and run the test suite (last line: "N passed, N failed")
#   make asan       the same suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz       libFuzzer targets (clang) in build/fuzz/
#   make fuzz-smoke run every fuzz target for FUZZ_SECONDS each (bounded; used by CI)
#   make check      everything CI runs: fuzz-smoke, test, then asan (its line is last)
#   make deps       install the Debian packages ergo builds against (needs root or sudo)
#   make clean
#
# No -ffast-math and no -march=native: results must match the reference bit for bit
# where they can, and one binary must run on any x86-64 (kernels pick their
# instruction set at run time). -ffp-contract=off keeps a*b+c unfused in the scalar
# reference code (gcc fuses under gnu11, clang under both unless told).

CC      ?= cc
CLANG   ?= clang
PKGS    := jansson libpcre2-8 libutf8proc libjpeg libpng
DEPS_DEBIAN := build-essential pkg-config clang libclang-rt-14-dev \
               libjansson-dev libpcre2-dev libutf8proc-dev libjpeg62-turbo-dev libpng-dev

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Wshadow -Wdouble-promotion -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN    += -Werror
endif
BASEFLAGS := -std=c11 -ffp-contract=off -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
             -fopenmp -Isrc $(PKG_CFLAGS) $(WARN)
CFLAGS_RELEASE := $(BASEFLAGS) -O2 -g
CFLAGS_ASAN    := $(BASEFLAGS) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                  -fno-omit-frame-pointer
LDLIBS  := $(PKG_LIBS) -lm -fopenmp

# Library sources: everything under src/ except the CLI and the libFuzzer mains.
LIB_SRC   := $(sort $(filter-out src/cli/%,$(wildcard src/*/*.c)))
CLI_SRC   := $(sort $(wildcard src/cli/*.c))
TEST_SRC  := $(sort $(wildcard tests/test_*.c))
SUITES    := $(patsubst tests/test_%.c,%,$(TEST_SRC))
FUZZ_SRC  := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BINS := $(patsubst fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_SECONDS ?= 20

HEADERS   := $(wildcard src/*/*.h) tests/check.h

.PHONY: all test asan fuzz fuzz-smoke check deps clean
all: build/ergo

build/release/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_RELEASE) -c $< -o $@

build/asan/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ASAN) -c $< -o $@

build/libergo.a: $(patsubst %.c,build/release/%.o,$(LIB_SRC))
	@rm -f $@
	ar rcs $@ $^

build/ergo: $(patsubst %.c,build/release/%.o,$(CLI_SRC)) build/libergo.a
	$(CC) $(CFLAGS_RELEASE) $^ $(LDLIBS) -o $@

# The runner's suite table comes from the test file names.
build/suites.h: $(TEST_SRC)
	@mkdir -p build
	@printf '$(foreach s,$(SUITES),SUITE($(s))\n)' | sed 's/^ //' > $@.tmp
	@cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp

build/release/tests/runner.o build/asan/tests/runner.o: build/suites.h
build/release/tests/%.o: CFLAGS_RELEASE += -Ibuild -Itests
build/asan/tests/%.o: CFLAGS_ASAN += -Ibuild -Itests

build/ergo_tests: $(patsubst %.c,build/release/%.o,$(TEST_SRC) tests/runner.c) build/libergo.a
	$(CC) $(CFLAGS_RELEASE) $^ $(LDLIBS) -o $@

build/asan/ergo_tests: $(patsubst %.c,build/asan/%.o,$(TEST_SRC) tests/runner.c $(LIB_SRC))
	$(CC) $(CFLAGS_ASAN) $^ $(LDLIBS) -o $@

build/asan/ergo: $(patsubst %.c,build/asan/%.o,$(CLI_SRC) $(LIB_SRC))
	$(CC) $(CFLAGS_ASAN) $^ $(LDLIBS) -o $@

# Tests that run the CLI find it through ERGO_BIN.
test: build/ergo_tests build/ergo
	ERGO_BIN=build/ergo ./build/ergo_tests $(T)

asan: build/asan/ergo_tests build/asan/ergo
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ERGO_BIN=build/asan/ergo ./build/asan/ergo_tests $(T)

# libFuzzer targets: clang only. Each fuzz/fuzz_<name>.c calls the library's entry point.
FUZZ_FLAGS := $(filter-out -fopenmp $(WARN),$(BASEFLAGS)) -O1 -g -fsanitize=fuzzer,address,undefined
build/fuzz/%: fuzz/%.c $(LIB_SRC) $(HEADERS)
	@mkdir -p build/fuzz
	$(CLANG) $(FUZZ_FLAGS) -fopenmp $< $(LIB_SRC) $(PKG_LIBS) -lm -o $@

fuzz: $(FUZZ_BINS)

fuzz-smoke: $(FUZZ_BINS)
	@for b in $(FUZZ_BINS); do \
	  n=$$(basename $$b | sed 's/^fuzz_//'); mkdir -p build/fuzz/corpus-$$n; \
	  echo "fuzz $$n: $(FUZZ_SECONDS) s"; \
	  $$b -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	      -print_final_stats=0 build/fuzz/corpus-$$n tests/fuzz_corpus/$$n 2>build/fuzz/$$n.log \
	    || { tail -40 build/fuzz/$$n.log; exit 1; }; \
	  grep -E '^#[0-9]+.*DONE' build/fuzz/$$n.log | tail -1; \
	done

check: fuzz-smoke test asan

deps:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEPS_DEBIAN)

clean:
	rm -rf build
