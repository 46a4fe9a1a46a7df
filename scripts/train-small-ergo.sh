#!/usr/bin/env bash
# The small ERGO model, trained here from nothing (training.md section 5): the synthetic
# "landmark tag" data (ergo synth), a freshly initialised Qwen2.5-VL-architecture model
# (tiny-a: text 256 x 4 layers, vision 128 x 4 blocks, the real tokenizer), SFT on ERGO's
# two-turn format, GRPO with ERGO's rewards (judge: the frozen SFT model on the crop alone,
# or the task's oracle), then `ergo eval` of both models and of the one-pass baselines.
#
#   scripts/train-small-ergo.sh OUT            # the full recipe (hours on 2 cores)
#   QUICK=1 scripts/train-small-ergo.sh OUT    # a few steps of every phase (minutes): a check
#
# Every phase is resumable: rerun the same command after a crash and finished phases are
# skipped, a phase cut short continues from its last checkpoint. Knobs (environment):
#   ERGO=build/ergo  THREADS=2  SEED=1
#   N_TRAIN=6000 N_TEST=500       synthetic items (train split has the SFT conversations)
#   STAGE1_TOKENS=64              ERGO's stage-1 budget (a 1344x1344 image -> 224x224)
#   SFT_EPOCHS=3 SFT_LR=1e-3 SFT_BATCH=16
#   GRPO_STEPS=150 GROUP=8 PROMPTS=8 GRPO_LR=1e-5 JUDGE=sft|oracle
set -euo pipefail
OUT=${1:?usage: scripts/train-small-ergo.sh OUT_DIR}
ERGO=${ERGO:-build/ergo}
THREADS=${THREADS:-2}
SEED=${SEED:-1}
if [ "${QUICK:-0}" = 1 ]; then
  : "${N_TRAIN:=48}" "${N_TEST:=16}" "${SFT_EPOCHS:=1}" "${GRPO_STEPS:=2}" "${GROUP:=4}" "${PROMPTS:=2}"
fi
N_TRAIN=${N_TRAIN:-6000}
N_TEST=${N_TEST:-500}
STAGE1_TOKENS=${STAGE1_TOKENS:-64}
SFT_EPOCHS=${SFT_EPOCHS:-3}
SFT_LR=${SFT_LR:-1e-3}
SFT_BATCH=${SFT_BATCH:-16}
GRPO_STEPS=${GRPO_STEPS:-150}
GROUP=${GROUP:-8}
PROMPTS=${PROMPTS:-8}
GRPO_LR=${GRPO_LR:-1e-5}
JUDGE=${JUDGE:-sft}
TOKENIZER=${TOKENIZER:-assets/qwen2.5-vl-tokenizer}
[ -d "$TOKENIZER" ] || TOKENIZER=../shared/assets/qwen2.5-vl-tokenizer

mkdir -p "$OUT/data/train" "$OUT/data/test/vstar_bench"
log() { printf '== %s: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
latest() { ls -d "$1"/checkpoint-[0-9]* 2>/dev/null | sort -t- -k2 -n | tail -1; }
start=$(date +%s)

# 1. data: the train split (with ERGO's SFT conversations) and a held-out test split in
#    V*'s layout, as `ergo eval --bench vstar` reads it
if [ ! -f "$OUT/data/train/synth_manifest.json" ]; then
  log "synth $N_TRAIN train items"
  "$ERGO" synth --out "$OUT/data/train" --count "$N_TRAIN" --split train --seed "$SEED" \
      --stage1-tokens "$STAGE1_TOKENS" --quiet
fi
if [ ! -f "$OUT/data/test/vstar_bench/synth_manifest.json" ]; then
  log "synth $N_TEST test items"
  "$ERGO" synth --out "$OUT/data/test/vstar_bench" --count "$N_TEST" --split test --seed "$SEED" \
      --stage1-tokens "$STAGE1_TOKENS" --quiet
fi

# 2. the model, freshly initialised (the reference's normal(0, initializer_range))
if [ ! -f "$OUT/init/config.json" ]; then
  log "initialise tiny-a"
  "$ERGO" make-checkpoint --preset tiny-a --init --seed "$SEED" --out "$OUT/init" --tokenizer "$TOKENIZER"
fi

# 3. SFT on the two-turn conversations (resumable; a finished run is left as it is)
if [ ! -f "$OUT/sft/.done" ]; then
  log "SFT: $SFT_EPOCHS epoch(s), batch $SFT_BATCH, lr $SFT_LR"
  resume=; [ -d "$OUT/sft" ] && resume=--resume
  "$ERGO" train sft --model "$OUT/init" --data "$OUT/data/train/sft.jsonl" --out "$OUT/sft" \
      --epochs "$SFT_EPOCHS" --batch "$SFT_BATCH" --lr "$SFT_LR" --warmup-ratio 0.03 \
      --max-grad-norm 1.0 --eval-every 100 --save-every 100 --keep 2 --seed "$SEED" \
      --threads "$THREADS" $resume
  touch "$OUT/sft/.done"
fi
SFT=$(latest "$OUT/sft")

# 4. GRPO with ERGO's full reward (the region judge: the frozen SFT model, or the oracle)
if [ ! -f "$OUT/grpo/.done" ]; then
  log "GRPO: $GRPO_STEPS steps of $PROMPTS x $GROUP rollouts, judge $JUDGE"
  judge=(--judge "$SFT"); [ "$JUDGE" = oracle ] && judge=(--judge-oracle)
  resume=; [ -d "$OUT/grpo" ] && resume=--resume
  "$ERGO" train grpo --model "$SFT" --data "$OUT/data/train/test_questions.jsonl" --out "$OUT/grpo" \
      "${judge[@]}" --group "$GROUP" --prompts-per-step "$PROMPTS" --max-steps "$GRPO_STEPS" \
      --lr "$GRPO_LR" --max-new-tokens 64 --max-vision-tokens "$STAGE1_TOKENS" --temperature 1.0 \
      --save-every 10 --keep 2 --seed "$SEED" --threads "$THREADS" $resume
  touch "$OUT/grpo/.done"
fi
GRPO=$(latest "$OUT/grpo")

# 5. evaluation on the held-out split: ERGO's two stages and the one-pass model at the
#    stage-1 budget (both), for the SFT and the GRPO model
for m in sft grpo; do
  dir=$SFT; [ $m = grpo ] && dir=$GRPO
  if [ ! -f "$OUT/eval_$m/summary.json" ]; then
    log "eval $m ($dir)"
    resume=; [ -f "$OUT/eval_$m/results.jsonl" ] && resume=--resume
    "$ERGO" eval --bench vstar --data-root "$OUT/data/test" --model "$dir" --out "$OUT/eval_$m" \
        --mode both --max-vision-tokens "$STAGE1_TOKENS" --max-new-tokens 64 --threads "$THREADS" \
        --no-progress $resume
  fi
done
log "done in $(( $(date +%s) - start )) s: $OUT/eval_sft/summary.md, $OUT/eval_grpo/summary.md"
