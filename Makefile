# ergo - build, test, sanitize, fuzz.
#
#   make            release build: build/ergo (CLI) and build/libergo.a
#   make test       build and run the test suite, fast tier (last line: "N passed, N failed")
#   make asan       the same suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz       libFuzzer targets (clang) in build/fuzz/
#   make fuzz-smoke run every fuzz target for FUZZ_SECONDS each (bounded; used by CI)
#   make check      everything CI runs: fuzz-smoke, test, then asan (its line is last),
#                   the suites in the full tier
#
# Choosing tests (test and asan):
#   T="quant text"  the suites whose name contains quant or text (quant, quant_model, text)
#   S=quant         only the suite named exactly quant (several: S="quant text")
#   TIER=full       also the slow cases (default fast: they print "skip ... full tier");
#                   make check always runs the full tier
#   make deps       install the Debian packages ergo builds against (needs root or sudo)
#   make clean
#
# No -ffast-math and no -march=native: results must match the reference bit for bit
# where they can, and one binary must run on any x86-64 (kernels pick their
# instruction set at run time). -ffp-contract=off keeps a*b+c unfused in the scalar
# reference code (gcc fuses under gnu11, clang under both unless told).

CC      ?= cc
CLANG   ?= clang
# libcurl: models from the Hugging Face hub (src/io/hub.c)
# gdlib: the --save-viz picture's text and PNG (src/pipeline/viz.c)
# snappy, libzstd, zlib: the codecs of the benchmarks' parquet files (src/eval/parquet.c)
# libmicrohttpd: the loopback server of the eval endpoint test (and `ergo serve`)
PKGS    := jansson libpcre2-8 libutf8proc libjpeg libpng nettle libcurl gdlib snappy libzstd zlib \
           libmicrohttpd

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Wshadow -Wdouble-promotion -Wno-unused-parameter
# Warnings are errors in CI (CI=true is set there) or with WERROR=1.
ifeq ($(CI),true)
WERROR  ?= 1
endif
ifeq ($(WERROR),1)
WARN    += -Werror
endif
BASEFLAGS := -std=c11 -ffp-contract=off -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
             -fopenmp -Isrc $(PKG_CFLAGS) $(WARN)
CFLAGS_RELEASE := $(BASEFLAGS) -O2 -g
CFLAGS_ASAN    := $(BASEFLAGS) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                  -fno-omit-frame-pointer
LDLIBS  := $(PKG_LIBS) -lm -fopenmp

# Open MPI (libopenmpi-dev): `mpirun -np K ergo eval` shards over the ranks. Built only
# when pkg-config finds it (MPI=0 to leave it out); only the CLI links it.
MPI ?= $(shell pkg-config --exists ompi-c 2>/dev/null && echo 1 || echo 0)
ifeq ($(MPI),1)
MPI_CFLAGS := -DERGO_MPI $(shell pkg-config --cflags ompi-c)
MPI_LIBS   := $(shell pkg-config --libs ompi-c)
endif

# BUILD, MODULES and TESTS let one developer build a subset in a separate folder
# while other modules are being written, e.g.
#   make BUILD=build/tok MODULES="base tokenizer" TESTS="tests/test_tokenizer.c" build/tok/ergo_tests
BUILD     ?= build
MODULES   ?= $(filter-out cli,$(notdir $(wildcard src/*)))
LIB_SRC   := $(sort $(foreach m,$(MODULES),$(wildcard src/$(m)/*.c)))
CLI_SRC   := $(sort $(wildcard src/cli/*.c))
TESTS     ?= $(wildcard tests/test_*.c)
TEST_SRC  := $(sort $(TESTS))
SUITES    := $(patsubst tests/test_%.c,%,$(TEST_SRC))
FUZZ_SRC  := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BINS := $(patsubst fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
FUZZ_SECONDS ?= 20

HEADERS   := $(wildcard src/*/*.h tests/*.h)

.PHONY: all test asan fuzz fuzz-smoke check deps clean FORCE
all: $(BUILD)/ergo

$(BUILD)/release/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS_RELEASE) -c $< -o $@

$(BUILD)/asan/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	@echo "CC (asan) $<"
	@$(CC) $(CFLAGS_ASAN) -c $< -o $@

$(BUILD)/libergo.a: $(patsubst %.c,$(BUILD)/release/%.o,$(LIB_SRC))
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/release/src/cli/cmd_eval.o $(BUILD)/release/src/cli/train_dist.o: CFLAGS_RELEASE += $(MPI_CFLAGS)
$(BUILD)/asan/src/cli/cmd_eval.o $(BUILD)/asan/src/cli/train_dist.o: CFLAGS_ASAN += $(MPI_CFLAGS)

$(BUILD)/ergo: $(patsubst %.c,$(BUILD)/release/%.o,$(CLI_SRC)) $(BUILD)/libergo.a
	$(CC) $(CFLAGS_RELEASE) $^ $(LDLIBS) $(MPI_LIBS) -o $@

# The runner's suite table comes from the test file names.
$(BUILD)/suites.h: $(TEST_SRC) FORCE
	@mkdir -p $(BUILD)
	@printf '$(foreach s,$(SUITES),SUITE($(s))\n)' | sed 's/^ //' > $@.tmp
	@cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp

$(BUILD)/release/tests/runner.o $(BUILD)/asan/tests/runner.o: $(BUILD)/suites.h
$(BUILD)/release/tests/%.o: CFLAGS_RELEASE += -I$(BUILD) -Itests
$(BUILD)/asan/tests/%.o: CFLAGS_ASAN += -I$(BUILD) -Itests

$(BUILD)/ergo_tests: $(patsubst %.c,$(BUILD)/release/%.o,$(TEST_SRC) tests/runner.c) $(BUILD)/libergo.a
	$(CC) $(CFLAGS_RELEASE) $^ $(LDLIBS) -o $@

$(BUILD)/asan/ergo_tests: $(patsubst %.c,$(BUILD)/asan/%.o,$(TEST_SRC) tests/runner.c $(LIB_SRC))
	$(CC) $(CFLAGS_ASAN) $^ $(LDLIBS) -o $@

$(BUILD)/asan/ergo: $(patsubst %.c,$(BUILD)/asan/%.o,$(CLI_SRC) $(LIB_SRC))
	$(CC) $(CFLAGS_ASAN) $^ $(LDLIBS) $(MPI_LIBS) -o $@

# `ergo --version`: the version, the commit and the flags of this build, baked into
# main.o; the stamp changes (and main.o is rebuilt) when the commit does.
ERGO_VERSION    := 0.1.0
ERGO_GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
$(BUILD)/version.stamp: FORCE
	@mkdir -p $(BUILD)
	@echo '$(ERGO_VERSION) $(ERGO_GIT_COMMIT)' > $@.tmp
	@cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp
$(BUILD)/release/src/cli/main.o $(BUILD)/asan/src/cli/main.o: $(BUILD)/version.stamp
$(BUILD)/release/src/cli/main.o: CFLAGS_RELEASE += -DERGO_VERSION='"$(ERGO_VERSION)"' \
    -DERGO_GIT_COMMIT='"$(ERGO_GIT_COMMIT)"' -DERGO_BUILD_FLAGS='"$(CC) -O2 -std=c11 -ffp-contract=off -fopenmp, no -march (ISA chosen at run time)"'
$(BUILD)/asan/src/cli/main.o: CFLAGS_ASAN += -DERGO_VERSION='"$(ERGO_VERSION)"' \
    -DERGO_GIT_COMMIT='"$(ERGO_GIT_COMMIT)"' -DERGO_BUILD_FLAGS='"$(CC) -O1 -std=c11 -ffp-contract=off -fopenmp -fsanitize=address,undefined"'

# Tests that run the CLI find it through ERGO_BIN. The runner's arguments: T's words
# as substrings, S's as exact names (=NAME); an unknown name is an error.
# ERGO_PROGRESS=0: the progress lines would mix with the one-line errors the CLI tests
# read (tests/test_cli.c turns them back on where it checks them).
TIER      ?= fast
TEST_ARGS  = $(T) $(addprefix =,$(S))
test: $(BUILD)/ergo_tests $(BUILD)/ergo
	ERGO_PROGRESS=0 ERGO_TEST_TIER=$(TIER) ERGO_BIN=$(BUILD)/ergo ./$(BUILD)/ergo_tests $(TEST_ARGS)

asan: $(BUILD)/asan/ergo_tests $(BUILD)/asan/ergo
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ERGO_PROGRESS=0 ERGO_TEST_TIER=$(TIER) ERGO_BIN=$(BUILD)/asan/ergo ./$(BUILD)/asan/ergo_tests $(TEST_ARGS)

# libFuzzer targets: clang only. Each fuzz/fuzz_<name>.c calls the library's entry point.
# The library is compiled once with the fuzzer's instrumentation (fuzzer-no-link) into
# libergo_fuzz.a, and each target links against it.
FUZZ_FLAGS := $(filter-out -fopenmp $(WARN),$(BASEFLAGS)) -O1 -g -fsanitize=fuzzer,address,undefined
FUZZ_LIB_FLAGS := $(filter-out -fopenmp $(WARN),$(BASEFLAGS)) -O1 -g \
                  -fsanitize=fuzzer-no-link,address,undefined -fopenmp
$(BUILD)/fuzz/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	@echo "CC (fuzz) $<"
	@$(CLANG) $(FUZZ_LIB_FLAGS) -c $< -o $@

$(BUILD)/fuzz/libergo_fuzz.a: $(patsubst %.c,$(BUILD)/fuzz/obj/%.o,$(LIB_SRC))
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/%: fuzz/%.c $(BUILD)/fuzz/libergo_fuzz.a $(HEADERS)
	@mkdir -p $(BUILD)/fuzz
	$(CLANG) $(FUZZ_FLAGS) -fopenmp $< $(BUILD)/fuzz/libergo_fuzz.a $(PKG_LIBS) -lm -o $@

fuzz: $(FUZZ_BINS)

fuzz-smoke: $(FUZZ_BINS)
	@for b in $(FUZZ_BINS); do \
	  n=$$(basename $$b | sed 's/^fuzz_//'); mkdir -p $(BUILD)/fuzz/corpus-$$n; \
	  echo "fuzz $$n: $(FUZZ_SECONDS) s"; \
	  $$b -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	      -print_final_stats=0 $(BUILD)/fuzz/corpus-$$n tests/fuzz_corpus/$$n 2>$(BUILD)/fuzz/$$n.log \
	    || { tail -40 $(BUILD)/fuzz/$$n.log; exit 1; }; \
	  grep -E '^#[0-9]+.*DONE' $(BUILD)/fuzz/$$n.log | tail -1; \
	done

# Sequential on purpose: the sanitizer run's summary must be the last line printed.
check:
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory test TIER=full
	@$(MAKE) --no-print-directory asan TIER=full

deps:
	scripts/deps.sh

clean:
	rm -rf $(BUILD)
