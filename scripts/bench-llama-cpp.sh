#!/usr/bin/env bash
# bench-llama-cpp.sh - ergo side by side with llama.cpp on one random 7B-shaped
# checkpoint (issue 16 point 6). A benchmark, never a test: nothing here decides a
# build, and its figures go to BENCHMARKS.md by hand after a quiet run.
#
# What it does (each step skips itself when its output exists, so a rerun resumes):
#   source     llama.cpp's tree into $SCRATCH/src (or LLAMA_SRC used in place)
#   build      a release build with native CPU features, gcc from Debian
#   checkpoint `ergo make-checkpoint --preset 7b`: 7B widths, TEXT_LAYERS / VISION_LAYERS
#              deep, the real tokenizer; random BF16 weights (speed does not depend on them)
#   python     a venv for llama.cpp's converter (sentencepiece beside /work/venv's torch)
#   convert    convert_hf_to_gguf.py: the text model to BF16, the vision tower (--mmproj)
#              to BF16, F16 and Q8_0
#   quantize   llama-quantize BF16 -> Q8_0 and Q4_0
#   image      an image whose size gives exactly VISION_TOKENS merged vision tokens
#   bench      interleaved, ROUNDS times: per format llama-bench, llama-mtmd-cli's image
#              encoding, and `ergo bench model` with --compute f32 and bf16
#   report     a markdown table (median over rounds) on stdout and in $SCRATCH/results/
#
# llama.cpp's code never enters the ergo repository: it lives in $SCRATCH only.
# Run `scripts/bench-llama-cpp.sh --help` for the knobs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<EOF
usage: [VAR=value ...] scripts/bench-llama-cpp.sh [--help] [STEP ...]

Benchmarks ergo against llama.cpp on the same random 7B-shaped checkpoint: prefill,
decode and Qwen2.5-VL vision encoding, in BF16, Q8_0 and Q4_0, same thread count.
With no STEP every step runs in order (finished ones are skipped); steps are
source build checkpoint python convert quantize image bench report.
To redo a step, delete its output (paths in \$SCRATCH, see below).

Source of llama.cpp (one of, needed by the first run only):
  LLAMA_SRC=DIR        a llama.cpp work tree (built out of tree, into \$SCRATCH/build)
  LLAMA_SRC=GITDIR     a (bare) git directory, e.g. the mirror the search tool's fetch
                       brings; LLAMA_REF (default HEAD) is archived into \$SCRATCH/src
  LLAMA_SRC=pypi[:V]   the llama.cpp tree vendored in PyPI's llama-cpp-python sdist
                       (version V, default newest): pip download, unpack vendor/llama.cpp

Knobs (environment, defaults in brackets):
  SCRATCH        work folder, outside the repo         [/work/scratch/llama]
  ERGO           the ergo binary                       [$REPO/build/ergo]
  TEXT_LAYERS    text decoder layers                   [4]
  VISION_LAYERS  vision blocks, a multiple of 8 (why: see check_shape) [8]
  THREADS        threads for both tools                [2]
  PREFILL        prompt tokens                         [512]
  GEN            llama-bench -n from an empty context  [128]
  DEPTH          decode context: ergo --decode, llama-bench -d [512]
  DEPTH_GEN      llama-bench -n at that depth          [64]
  DECODE_STEPS   ergo --decode-steps                   [16]
  VISION_TOKENS  merged vision tokens of the image     [1280]
  REPS           repetitions inside each tool run      [3]
  ROUNDS         interleaved rounds (median taken)     [1]
  FORMATS        ergo weight formats                   [bf16 q8 q4]
  COMPUTES       ergo --compute values                 [f32 bf16]
  CC CXX         compilers for llama.cpp               [gcc g++]
  PYTHON         python with torch + transformers      [/work/venv/bin/python]
  PYVENV         venv made for the converter           [/work/scratch/llama-venv]

Outputs: \$SCRATCH/src, build/, ckpt-7b-LL-VV/, gguf/, image-WxH.png,
results/LL-VV/ (raw logs and JSON of every run, commands.txt, table.md).
EOF
}

# ---- knobs ----
SCRATCH=${SCRATCH:-/work/scratch/llama}
LLAMA_SRC=${LLAMA_SRC:-}
LLAMA_REF=${LLAMA_REF:-HEAD}
ERGO=${ERGO:-$REPO/build/ergo}
TEXT_LAYERS=${TEXT_LAYERS:-4}
VISION_LAYERS=${VISION_LAYERS:-8}
THREADS=${THREADS:-2}
PREFILL=${PREFILL:-512}
GEN=${GEN:-128}
DEPTH=${DEPTH:-512}
DEPTH_GEN=${DEPTH_GEN:-64}
DECODE_STEPS=${DECODE_STEPS:-16}
VISION_TOKENS=${VISION_TOKENS:-1280}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-1}
FORMATS=${FORMATS:-bf16 q8 q4}
COMPUTES=${COMPUTES:-f32 bf16}
CC=${CC:-gcc}
CXX=${CXX:-g++}
PYTHON=${PYTHON:-/work/venv/bin/python}
PYVENV=${PYVENV:-/work/scratch/llama-venv}

SRC=$SCRATCH/src
BUILD=$SCRATCH/build
BIN=$BUILD/bin
SHAPE=${TEXT_LAYERS}L-${VISION_LAYERS}V
CKPT=$SCRATCH/ckpt-7b-$SHAPE
GGUF=$SCRATCH/gguf/$SHAPE
RESULTS=$SCRATCH/results/$SHAPE
TOKENIZER=$REPO/assets/qwen2.5-vl-tokenizer

log() { printf '== %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench-llama-cpp: %s\n' "$*" >&2; exit 1; }

# Runs a command, appending it to commands.txt first, so the report can show exactly
# what produced each figure.
# The 1-minute load average at each start goes to load.txt: on a shared machine it
# tells which figures were taken while something else ran.
run() {
  mkdir -p "$RESULTS"
  printf '%s\n' "$*" >>"$RESULTS/commands.txt"
  printf '%s %s %s\n' "$(date -u +%H:%M:%S)" "$(cut -d' ' -f1 /proc/loadavg)" "${*:1:3}" >>"$RESULTS/load.txt"
  "$@"
}

# The ergo format name -> llama.cpp's name for the same precision.
llama_type() {
  case $1 in bf16) echo BF16 ;; q8) echo Q8_0 ;; q4) echo Q4_0 ;; *) die "unknown format $1" ;; esac
}

# Which vision projector stands beside each format: llama.cpp quantises no mmproj to
# 4 bits, so q4 is measured with F16 (which also shows F16 against BF16).
mmproj_type() {
  case $1 in bf16) echo bf16 ;; q8) echo q8_0 ;; q4) echo f16 ;; *) die "unknown format $1" ;; esac
}

# ---- checks ----

# llama.cpp's Qwen2.5-VL vision graph knows the window/full pattern only as "every
# n-th block is full" (n = fullatt_block_indexes[0] + 1, converter's qwenvl.py), and
# ergo's --vision-layers V keeps the real model's full blocks 7, 15, 23, 31 below V
# (block 0 if none). With V a multiple of 8 both run the same 7 window + 1 full
# pattern; with fewer blocks llama.cpp would make every block full attention.
check_shape() {
  [ $((VISION_LAYERS % 8)) -eq 0 ] && [ "$VISION_LAYERS" -ge 8 ] && [ "$VISION_LAYERS" -le 32 ] ||
    die "VISION_LAYERS=$VISION_LAYERS: give 8, 16, 24 or 32 (see check_shape)"
  [ -x "$ERGO" ] || die "ERGO=$ERGO is not an executable (build it: make -j2)"
  [ -f "$TOKENIZER/tokenizer.json" ] || die "no tokenizer at $TOKENIZER"
}

# ---- step: source ----

# Where the llama.cpp tree ends up: LLAMA_SRC itself when it is a work tree, else
# $SCRATCH/src made from a git dir or the PyPI sdist.
tree() {
  if [ -n "$LLAMA_SRC" ] && [ -f "$LLAMA_SRC/CMakeLists.txt" ]; then echo "$LLAMA_SRC"
  else echo "$SRC"; fi
}

step_source() {
  local t; t=$(tree)
  if [ -f "$t/convert_hf_to_gguf.py" ]; then log "source: $t (exists)"; return; fi
  [ -n "$LLAMA_SRC" ] || die "no llama.cpp tree at $SRC: give LLAMA_SRC (see --help)"
  mkdir -p "$SCRATCH"
  rm -rf "$SRC.part" && mkdir -p "$SRC.part"
  case $LLAMA_SRC in
    pypi | pypi:*)
      # llama-cpp-python's sdist carries the whole llama.cpp tree (tools, converter,
      # gguf-py) as vendor/llama.cpp; pip download is the registry's ordinary client.
      local want=llama-cpp-python ver=${LLAMA_SRC#pypi}
      [ -n "$ver" ] && want="llama-cpp-python==${ver#:}"
      mkdir -p "$SCRATCH/dl"
      log "source: pip download $want (sdist)"
      "$PYTHON" -m pip download --no-binary :all: --no-deps -d "$SCRATCH/dl" "$want" >&2
      local sdist; sdist=$(ls -t "$SCRATCH"/dl/llama_cpp_python-*.tar.gz | head -1)
      local top; top=$(basename "$sdist" .tar.gz)
      tar -xzf "$sdist" -C "$SRC.part" --strip-components=3 "$top/vendor/llama.cpp"
      rm -f "$SRC.part/.git" # a submodule pointer to nowhere: would confuse build-info
      echo "llama.cpp vendored in $top (PyPI sdist)" >"$SRC.part/.ergo-bench-source"
      ;;
    *)
      git --git-dir="$LLAMA_SRC" rev-parse --verify -q "$LLAMA_REF^{commit}" >/dev/null 2>&1 ||
        die "LLAMA_SRC=$LLAMA_SRC is neither a llama.cpp work tree nor a git dir with $LLAMA_REF"
      local commit; commit=$(git --git-dir="$LLAMA_SRC" rev-parse "$LLAMA_REF^{commit}")
      log "source: git archive $commit from $LLAMA_SRC"
      git --git-dir="$LLAMA_SRC" archive "$commit" | tar -x -C "$SRC.part"
      echo "llama.cpp commit $commit ($LLAMA_SRC)" >"$SRC.part/.ergo-bench-source"
      ;;
  esac
  [ -f "$SRC.part/convert_hf_to_gguf.py" ] || die "$SRC.part does not look like llama.cpp"
  rm -rf "$SRC" && mv "$SRC.part" "$SRC"
}

# A line saying which llama.cpp was built, for the report.
source_note() {
  local t; t=$(tree)
  if [ -f "$t/.ergo-bench-source" ]; then cat "$t/.ergo-bench-source"
  elif git -C "$t" rev-parse HEAD >/dev/null 2>&1; then echo "llama.cpp commit $(git -C "$t" rev-parse HEAD) ($t)"
  else echo "llama.cpp tree $t"; fi
}

# ---- step: build ----

# Release build, -march=native (GGML_NATIVE), no network code, only the three tools.
# Traps:
#  - gcc 12 miscompiles ggml's AMX tile configuration on AMX CPUs (Sapphire Rapids
#    and later): results are garbage or it crashes. On such a machine look for the
#    AMX buffer type in the start-up log of llama-bench / llama-mtmd-cli (a line like
#    "AMX model buffer size" or a "buffer type AMX"), and build with clang instead; with
#    clang 14 pass CFLAGS/CXXFLAGS="-D__AMX_TILE__ -D__AMX_INT8__ -D__AMX_BF16__" (it
#    enables the instructions but does not define the macros ggml tests). This script
#    stops when it sees gcc 12 on a CPU with amx_tile.
#  - LLAMA_CURL is deprecated in newer trees (a warning only); OpenSSL is switched off.
step_build() {
  if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-quantize" ] && [ -x "$BIN/llama-mtmd-cli" ]; then
    log "build: $BIN (exists)"; return
  fi
  command -v cmake >/dev/null || { log "build: installing cmake"; apt-get install -y cmake >&2; }
  if grep -qw amx_tile /proc/cpuinfo && "$CC" --version | head -1 | grep -q ' 12\.'; then
    die "gcc 12 on an AMX CPU miscompiles ggml's AMX code: CC=clang CXX=clang++ (see step_build)"
  fi
  mkdir -p "$SCRATCH/logs"
  log "build: configure (log: $SCRATCH/logs/build.log)"
  cmake -S "$(tree)" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" \
    >"$SCRATCH/logs/build.log" 2>&1 || die "cmake configure failed: $SCRATCH/logs/build.log"
  log "build: llama-bench llama-quantize llama-mtmd-cli (10-30 minutes on 2 cores)"
  cmake --build "$BUILD" -j"$(nproc)" --target llama-bench llama-quantize llama-mtmd-cli \
    >>"$SCRATCH/logs/build.log" 2>&1 || die "build failed: $SCRATCH/logs/build.log"
}

# ---- step: checkpoint ----

# The same 7B-shaped model both tools read: ergo's writer, HF layout (flat config,
# legacy tensor names, BF16), so llama.cpp's converter takes it as Qwen2.5-VL-7B.
step_checkpoint() {
  if [ -f "$CKPT/model.safetensors" ]; then log "checkpoint: $CKPT (exists)"; return; fi
  log "checkpoint: $CKPT"
  rm -rf "$CKPT.part"
  run "$ERGO" make-checkpoint --preset 7b --text-layers "$TEXT_LAYERS" \
    --vision-layers "$VISION_LAYERS" --out "$CKPT.part" --tokenizer "$TOKENIZER" >&2
  mv "$CKPT.part" "$CKPT"
}

# ---- step: python ----

# The converter imports sentencepiece before it looks for a tokenizer.model, and
# /work/venv must keep its packages as they are: a separate venv sees /work/venv's
# site-packages through a .pth file and gets only what is missing.
step_python() {
  if [ -x "$PYVENV/bin/python" ] && "$PYVENV/bin/python" -c 'import torch, transformers, sentencepiece' 2>/dev/null; then
    log "python: $PYVENV (exists)"; return
  fi
  log "python: $PYVENV"
  "$PYTHON" -m venv --system-site-packages "$PYVENV"
  local base_sp own_sp
  base_sp=$("$PYTHON" -c 'import site; print(site.getsitepackages()[0])')
  own_sp=$("$PYVENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
  [ "$base_sp" = "$own_sp" ] || echo "$base_sp" >"$own_sp/zz-base-venv.pth"
  "$PYVENV/bin/python" -m pip install -q sentencepiece >&2
  "$PYVENV/bin/python" -c 'import torch, transformers, sentencepiece' ||
    die "$PYVENV cannot import torch, transformers, sentencepiece"
}

# ---- step: convert ----

# One converter run; writes OUT only when it succeeded. The tree's own gguf-py is used
# (the converter puts it on sys.path), so the writer matches the tools built.
convert() {
  local out=$1; shift
  if [ -f "$out" ]; then log "convert: $out (exists)"; return; fi
  mkdir -p "$(dirname "$out")" "$SCRATCH/logs"
  log "convert: $out"
  run "$PYVENV/bin/python" "$(tree)/convert_hf_to_gguf.py" "$CKPT" --outfile "$out.part" "$@" \
    >"$SCRATCH/logs/convert-$(basename "$out").log" 2>&1 ||
    die "conversion failed: $SCRATCH/logs/convert-$(basename "$out").log"
  mv "$out.part" "$out"
}

step_convert() {
  convert "$GGUF/text-BF16.gguf" --outtype bf16
  local t
  for t in bf16 f16 q8_0; do convert "$GGUF/mmproj-$t.gguf" --mmproj --outtype "$t"; done
}

# ---- step: quantize ----

# ergo keeps the output head one step finer than the layers (q8 layers: head as
# stored; q4 layers: head q8, src/model/quantize.c), and quantises neither the
# embedding (a row lookup, no speed effect) nor norms. llama-quantize's default head
# is Q6_K; --output-tensor-type makes the head match ergo's, so both read the same
# bytes per decoded token.
step_quantize() {
  local f head
  for f in Q8_0 Q4_0; do
    local out=$GGUF/text-$f.gguf
    if [ -f "$out" ]; then log "quantize: $out (exists)"; continue; fi
    case $f in Q8_0) head=bf16 ;; Q4_0) head=q8_0 ;; esac
    log "quantize: $out (head $head)"
    run "$BIN/llama-quantize" --output-tensor-type "$head" "$GGUF/text-BF16.gguf" "$out.part" "$f" \
      >"$SCRATCH/logs/quantize-$f.log" 2>&1 || die "llama-quantize failed: $SCRATCH/logs/quantize-$f.log"
    mv "$out.part" "$out"
  done
}

# ---- step: image ----

# The merged grid ergo's bench uses for VISION_TOKENS (grid_for in
# src/cli/cmd_bench_model.c): the factor pair h x w nearest a square with w <= 2h.
# Qwen2.5-VL's processor resizes to multiples of 28 px (14-px patches, 2x2 merge)
# between its min and max pixels, so an image of exactly 28w x 28h px is kept as it
# is: 1280 tokens -> 32 x 40 merged -> 1120 x 896 px.
grid() {
  local v=$VISION_TOKENS h
  h=$(awk -v v="$v" 'BEGIN { print int(sqrt(v)) }')
  while [ "$h" -ge 1 ]; do
    if [ $((v % h)) -eq 0 ]; then
      [ $((v / h)) -le $((2 * h)) ] && { echo "$h $((v / h))"; return; }
      break
    fi
    h=$((h - 1))
  done
  die "VISION_TOKENS=$VISION_TOKENS has no factor pair h x w with w <= 2h: pick another"
}

image_path() { local hw; hw=$(grid); set -- $hw; echo "$SCRATCH/image-$((28 * $2))x$((28 * $1)).png"; }

step_image() {
  local img; img=$(image_path)
  if [ -f "$img" ]; then log "image: $img (exists)"; return; fi
  local hw; hw=$(grid); set -- $hw
  log "image: $img ($1 x $2 merged tokens)"
  "$PYTHON" - "$REPO/assets/demo.jpg" "$img" $((28 * $2)) $((28 * $1)) <<'PY'
import sys
from PIL import Image
src, out, w, h = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC).save(out + ".part.png")
PY
  mv "$img.part.png" "$img"
}

# ---- step: bench ----

# llama-bench: prompt processing and generation from an empty context (the usual
# pp512 / tg128), then generation at DEPTH tokens of context, which is what ergo's
# --decode DEPTH times.
bench_llama() {
  local r=$1 f=$2 t; t=$(llama_type "$f")
  local out=$RESULTS/r$r-llama-bench-$f.json
  if [ ! -f "$out" ]; then
    log "round $r: llama-bench $t"
    run "$BIN/llama-bench" -m "$GGUF/text-$t.gguf" -p "$PREFILL" -n "$GEN" -t "$THREADS" \
      -r "$REPS" -o json >"$out.part" 2>"$RESULTS/r$r-llama-bench-$f.log" ||
      die "llama-bench failed: $RESULTS/r$r-llama-bench-$f.log"
    mv "$out.part" "$out"
  fi
  out=$RESULTS/r$r-llama-bench-depth-$f.json
  if [ ! -f "$out" ]; then
    log "round $r: llama-bench $t at depth $DEPTH"
    run "$BIN/llama-bench" -m "$GGUF/text-$t.gguf" -p 0 -n "$DEPTH_GEN" -d "$DEPTH" -t "$THREADS" \
      -r "$REPS" -o json >"$out.part" 2>"$RESULTS/r$r-llama-bench-depth-$f.log" ||
      die "llama-bench failed: $RESULTS/r$r-llama-bench-depth-$f.log"
    mv "$out.part" "$out"
  fi
}

# llama-mtmd-cli on REPS+1 copies of the image, text between them so that each is
# its own encode batch ("mtmd batch encoding done in N ms", or "image slice encoded
# in N ms" in older trees). Warm-up is off (it encodes a 46x46-token image at load);
# the first encode, cold, is dropped by the report.
bench_mtmd() {
  local r=$1 f=$2 mt; mt=$(mmproj_type "$f")
  local out=$RESULTS/r$r-mtmd-$mt.log
  [ -f "$out" ] && return
  local img; img=$(image_path)
  local args=() prompt="" i
  for ((i = 0; i <= REPS; i++)); do args+=(--image "$img"); prompt+="<__media__> image $i. "; done
  log "round $r: llama-mtmd-cli, mmproj $mt, $((REPS + 1)) encodes"
  run "$BIN/llama-mtmd-cli" -m "$GGUF/text-$(llama_type "$f").gguf" --mmproj "$GGUF/mmproj-$mt.gguf" \
    "${args[@]}" -p "${prompt}Describe." -n 1 -t "$THREADS" --no-warmup -v \
    -c $(((REPS + 1) * (VISION_TOKENS + 32) + 256)) >"$out.part" 2>&1 </dev/null ||
    die "llama-mtmd-cli failed: $out.part"
  mv "$out.part" "$out"
}

bench_ergo() {
  local r=$1 f=$2 c=$3
  local out=$RESULTS/r$r-ergo-$f-$c.json
  [ -f "$out" ] && return
  log "round $r: ergo bench model --weights $f --compute $c"
  run "$ERGO" bench model --random 7b --text-layers "$TEXT_LAYERS" --vision-layers "$VISION_LAYERS" \
    --vision-tokens "$VISION_TOKENS" --prefill "$PREFILL" --decode "$DEPTH" \
    --decode-steps "$DECODE_STEPS" --threads "$THREADS" --reps "$REPS" --weights "$f" \
    --compute "$c" --json >"$out.part" 2>"$RESULTS/r$r-ergo-$f-$c.log" ||
    die "ergo bench failed: $RESULTS/r$r-ergo-$f-$c.log"
  mv "$out.part" "$out"
}

# The two tools alternate format by format, so a change in the machine's load hits
# both alike rather than one tool's whole series.
step_bench() {
  local r f c
  for ((r = 1; r <= ROUNDS; r++)); do
    for f in $FORMATS; do
      bench_llama "$r" "$f"
      for c in $COMPUTES; do bench_ergo "$r" "$f" "$c"; done
      bench_mtmd "$r" "$f"
    done
  done
}

# ---- step: report ----

machine_note() {
  local model fam mdl flags
  model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
  fam=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
  mdl=$(lscpu | sed -n 's/^Model: *//p' | head -1)
  flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
    grep -E '^(avx2|fma|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_vnni|avx_vnni|amx_tile|amx_int8|amx_bf16)$' |
    tr '\n' ' ')
  echo "$model (family $fam, model $mdl), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB;" \
    "flags: ${flags% }; $("$CC" --version | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

step_report() {
  local table=$RESULTS/table.md
  log "report: $table"
  {
    echo "Machine: $(machine_note)"
    echo "llama.cpp: $(source_note); ergo: $("$ERGO" --version | head -1)"
    echo "Model: 7B widths, $TEXT_LAYERS text layers, $VISION_LAYERS vision blocks; threads $THREADS;" \
      "$ROUNDS round(s) of $REPS reps, median"
    echo
    python3 - "$RESULTS" "$ROUNDS" "$FORMATS" "$COMPUTES" "$PREFILL" "$GEN" "$DEPTH" "$DEPTH_GEN" \
      "$VISION_TOKENS" <<'PY'
import json, re, statistics, sys, os
res, rounds, formats, computes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
prefill, gen, depth, depth_gen, vt = map(int, sys.argv[5:10])
LT = {"bf16": "BF16", "q8": "Q8_0", "q4": "Q4_0"}
MT = {"bf16": "BF16", "q8": "Q8_0", "q4": "F16"}
med = lambda xs: statistics.median(xs) if xs else None
notes = set()

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def llama_ts(f, kind):  # tokens/s of llama-bench's pp / tg test
    xs = []
    for r in range(1, rounds + 1):
        name = "llama-bench-depth" if kind == "depth" else "llama-bench"
        for t in load(f"{res}/r{r}-{name}-{f}.json") or []:
            if kind == "pp" and t["n_prompt"] == prefill and t["n_gen"] == 0: xs.append(t["avg_ts"])
            if kind == "tg" and t["n_gen"] == gen and t["n_prompt"] == 0 and t.get("n_depth", 0) == 0: xs.append(t["avg_ts"])
            if kind == "depth" and t["n_gen"] == depth_gen and t.get("n_depth", 0) == depth: xs.append(t["avg_ts"])
    return med(xs)

def mtmd_ms(f):  # median encode time, the first (cold) encode of each run dropped
    xs = []
    for r in range(1, rounds + 1):
        try:
            text = open(f"{res}/r{r}-mtmd-{MT[f].lower()}.log").read()
        except OSError:
            continue
        ms = [int(m) for m in re.findall(r"(?:mtmd batch encoding done|image slice encoded) in (\d+) ms", text)]
        # every encode must have been one image of exactly vt tokens, else the row lies
        toks = [int(m) for m in re.findall(r"encoding batch with 1 entries and total (\d+) tokens", text)]
        if toks and any(t != vt for t in toks):
            sys.exit(f"r{r}-mtmd-{MT[f].lower()}.log: encodes of {sorted(set(toks))} tokens, not {vt}")
        if "AMX" in text:
            notes.add(f"llama.cpp used an AMX buffer type (r{r}-mtmd-{MT[f].lower()}.log): check the compiler, see step_build")
        xs += ms[1:]
    return med(xs)

def ergo(f, c, key):
    xs = []
    for r in range(1, rounds + 1):
        j = load(f"{res}/r{r}-ergo-{f}-{c}.json")
        if not j: continue
        if key == "prefill": xs.append(j["prefill"][0]["tokens_per_s"])
        if key == "decode": xs.append(j["decode"][0]["tokens_per_s"])
        if key == "vision": xs.append(j["vision"][0]["ms"]["median"])
    return med(xs)

def fmt(x, unit):
    if x is None: return "-"
    return f"{x:.0f} ms" if unit == "ms" else f"{x:.2f} tok/s"

def ratio(e, l, unit):  # ergo speed / llama.cpp speed: > 1 means ergo is faster
    if e is None or l is None: return "-"
    return f"{(l / e if unit == 'ms' else e / l):.2f}x"

head = ["phase", "format (ergo / llama.cpp)"] + [f"ergo {c}" for c in computes] + ["llama.cpp"] + \
       [f"ergo {c} / llama.cpp" for c in computes]
print("| " + " | ".join(head) + " |")
print("|" + "|".join([" --- "] * 2 + [" ---: "] * (len(head) - 2)) + "|")
rows = [("prefill", f"prefill {prefill}", "tok/s"), ("decode", f"decode at {depth} context", "tok/s"),
        ("vision", f"vision {vt} tokens", "ms")]
for key, label, unit in rows:
    for f in formats:
        if key == "prefill": l = llama_ts(f, "pp"); lname = LT[f]
        elif key == "decode": l = llama_ts(f, "depth"); lname = LT[f]
        else: l = mtmd_ms(f); lname = "mmproj " + MT[f]
        es = [ergo(f, c, key) for c in computes]
        print("| " + " | ".join([label, f"{f} / {lname}"] + [fmt(e, unit) for e in es] + [fmt(l, unit)] +
                                [ratio(e, l, unit) for e in es]) + " |")
print()
tg = ", ".join(f"{LT[f]} {fmt(llama_ts(f, 'tg'), 'tok/s')}" for f in formats)
print(f"llama.cpp tg{gen} from an empty context (not in the ratio): {tg}.")
for n in sorted(notes): print(f"Note: {n}.")
print("Ratios are ergo's speed over llama.cpp's (tokens/s over tokens/s; for vision, llama.cpp's ms over ergo's): above 1 ergo is faster.")
PY
    echo
    echo "1-minute load average at the start of each run (load.txt): $(awk '{ print $2 }' "$RESULTS/load.txt" |
      sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo " to " hi }')"
    echo
    echo "Commands (in the order run; raw logs and JSON beside this file):"
    echo
    sed 's/^/    /' "$RESULTS/commands.txt" | awk '!seen[$0]++'
  } >"$table.part"
  mv "$table.part" "$table"
  cat "$table"
}

# ---- main ----

main() {
  local steps=()
  for a in "$@"; do
    case $a in
      -h | --help) usage; exit 0 ;;
      source | build | checkpoint | python | convert | quantize | image | bench | report) steps+=("$a") ;;
      *) usage >&2; die "unknown step or option: $a" ;;
    esac
  done
  [ ${#steps[@]} -gt 0 ] || steps=(source build checkpoint python convert quantize image bench report)
  check_shape
  grid >/dev/null
  for s in "${steps[@]}"; do "step_$s"; done
}

main "$@"
