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
# libcurl: models from the Hugging Face hub (src/io/hub.c)
# gdlib: the --save-viz picture's text and PNG (src/pipeline/viz.c)
# snappy, libzstd, zlib: the codecs of the benchmarks' parquet files (src/eval/parquet.c)
PKGS    := jansson libpcre2-8 libutf8proc libjpeg libpng nettle libcurl gdlib snappy libzstd zlib libmicrohttpd

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

$(BUILD)/ergo: $(patsubst %.c,$(BUILD)/release/%.o,$(CLI_SRC)) $(BUILD)/libergo.a
	$(CC) $(CFLAGS_RELEASE) $^ $(LDLIBS) -o $@

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
	$(CC) $(CFLAGS_ASAN) $^ $(LDLIBS) -o $@

# Tests that run the CLI find it through ERGO_BIN.
test: $(BUILD)/ergo_tests $(BUILD)/ergo
	ERGO_BIN=$(BUILD)/ergo ./$(BUILD)/ergo_tests $(T)

asan: $(BUILD)/asan/ergo_tests $(BUILD)/asan/ergo
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ERGO_BIN=$(BUILD)/asan/ergo ./$(BUILD)/asan/ergo_tests $(T)

# libFuzzer targets: clang only. Each fuzz/fuzz_<name>.c calls the library's entry point.
FUZZ_FLAGS := $(filter-out -fopenmp $(WARN),$(BASEFLAGS)) -O1 -g -fsanitize=fuzzer,address,undefined
$(BUILD)/fuzz/%: fuzz/%.c $(LIB_SRC) $(HEADERS)
	@mkdir -p $(BUILD)/fuzz
	$(CLANG) $(FUZZ_FLAGS) -fopenmp $< $(LIB_SRC) $(PKG_LIBS) -lm -o $@

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
	@$(MAKE) --no-print-directory test
	@$(MAKE) --no-print-directory asan

deps:
	scripts/deps.sh

clean:
	rm -rf $(BUILD)
