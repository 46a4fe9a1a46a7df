/*
 * judge.h - the frozen judge of ERGO's region reward (shared/spec/ergo-training.md:
 * "a reward model given only the crop and the question with options"; training.md
 * section 5.5), behind one call: judge_ask(crop, full question) -> an answer text, or
 * "dropped" when the judge could not answer (r_region is then never scored as wrong:
 * reward.h leaves the rollout out). Three backends:
 *
 *   JUDGE_MODEL     another checkpoint run in process by ergo's engine (--judge DIR), or
 *                   an engine already loaded (the frozen SFT policy): one user turn
 *                   [crop, question] under the chat template's default system message, as
 *                   the one-pass baseline runs it (pipeline/ergo.h ergo_run_baseline),
 *                   decoded greedily (the generation config's repetition penalty
 *                   applies, as in the evaluation); one request at a time
 *   JUDGE_ENDPOINT  any OpenAI-compatible server (--judge-url URL/v1, e.g. Qwen2.5-VL-72B
 *                   on vLLM, or `ergo serve`): POST /chat/completions with one user message
 *                   [{"type": "image_url", data:image/png;base64 PNG of the crop},
 *                   {"type": "text", question}], temperature 0, max_tokens, seed 42, no
 *                   system message; transient failures (timeouts, connection errors, 408,
 *                   409, 429, 5xx) are retried with doubling backoff (eval/chat_client.h).
 *                   Any failure left after that drops the answer, counted in the stats
 *                   with its reason (a refusal such as a 400 or 404 as well: a
 *                   misconfigured judge shows as a drop rate of 1, not as wrong answers)
 *   JUDGE_ORACLE    the synthetic task's programmatic judge: it answers the label iff
 *                   area(gt ∩ crop) / area(gt) >= oracle_min_coverage (1.0: the whole
 *                   ground-truth box lies inside the crop) and, when oracle_min_scale > 0,
 *                   the crop image shows the original at a scale of at least that much
 *                   (min(crop_w / (x2 - x1), crop_h / (y2 - y1)): the calibrated
 *                   legibility threshold of section 5.5); otherwise it answers a wrong
 *                   letter (the first of A, B, C, ... that is not the label). Free,
 *                   deterministic, never cached (its answer follows from the geometry,
 *                   not the pixels)
 *
 * Model judges see the crop as given, or when max_vision_tokens > 0 resized first to at
 * most that many vision tokens the way ERGO sizes a crop (smart_resize_ergo + Pillow
 * LANCZOS; section 5.5's `budget` knob; 0 is `native`). Their answers are cached
 * (judge_cache.h) by (SHA-256 of the image sent and its size, question), in memory and,
 * with cache_path, in a JSONL file a resumed run reads back. Drops are never cached.
 *
 * Open judges before starting threads (libcurl's global init); judge_ask is then
 * thread-safe (the in-process judge serialises its requests on its one context).
 *
 *   judge_config jc; judge_config_default(&jc);
 *   jc.kind = JUDGE_ENDPOINT; jc.url = "http://gpu:8000/v1"; jc.model_name = "Qwen2.5-VL-72B-Instruct";
 *   jc.cache_path = "runs/a/judge_cache.jsonl";
 *   judge *j;  if (judge_open(&j, &jc, &err)) ...;
 *   judge_query q = {&crop, full_question, "B", {x1, y1, x2, y2}, NULL};
 *   judge_answer a;  if (judge_ask(j, &q, &a, &err)) ...;   // a.dropped or a.text
 *   judge_answer_free(&a);
 *   judge_stats st; judge_get_stats(j, &st);                 // st.dropped, st.cached, ...
 *   judge_close(j);
 */
#ifndef ERGO_TRAIN_JUDGE_H
#define ERGO_TRAIN_JUDGE_H

#include <stdint.h>

#include "base/status.h"
#include "eval/chat_client.h"
#include "image/image.h"
#include "runtime/engine.h"

typedef enum judge_kind { JUDGE_ORACLE = 0, JUDGE_MODEL, JUDGE_ENDPOINT } judge_kind;

const char *judge_kind_name(judge_kind k); /* "oracle", "model", "endpoint" */

typedef struct judge_config {
    judge_kind kind;
    /* JUDGE_MODEL */
    const char *model_dir;      /* the checkpoint directory (--judge DIR); names the judge in
                                   the cache even when `shared` is given */
    const engine *shared;       /* an engine already loaded to use instead of loading
                                   model_dir (not owned; must outlive the judge) */
    engine_options engine;      /* how model_dir is loaded (defaults) */
    /* JUDGE_ENDPOINT */
    const char *url;            /* the API base, ".../v1" (--judge-url) */
    const char *model_name;     /* the request's "model" (NULL: left out; vLLM wants its
                                   served model name, ergo serve its
                                   --served-model-name) */
    chat_client_options client; /* api key, retries (3), backoff (500 ms), timeout (120 s) */
    /* model judges */
    int max_new_tokens;         /* of the answer (64) */
    int max_vision_tokens;      /* the crop's budget, 0 = as given (0) */
    const char *cache_path;     /* JSONL of answers (appended, fsynced); NULL = memory only */
    /* JUDGE_ORACLE */
    double oracle_min_coverage; /* in (0, 1] (1.0) */
    double oracle_min_scale;    /* 0 = not checked (0) */
} judge_config;

void judge_config_default(judge_config *c);

typedef struct judge judge;

/* Checks c and opens the judge (loads the checkpoint, reads the cache file). The config's
 * strings are copied. */
ergo_status judge_open(judge **out, const judge_config *c, ergo_error *err);
void judge_close(judge *j);

/* The judge's identity (kind, checkpoint or URL + model, budgets): what the cache file
 * records. Owned by j. */
const char *judge_id(const judge *j);

typedef struct judge_query {
    const image *crop;          /* the crop (RGB), as the policy's stage 2 sees it */
    const char *question;       /* the full multiple-choice question: question, options and
                                   postfix as ergo_full_question joins them */
    /* what only the oracle reads: */
    const char *label;          /* the right option's letter(s) */
    int crop_box[4];            /* the crop in the original [x1, y1, x2, y2], end exclusive */
    const int *gt_box;          /* the ground-truth box in the original, end exclusive */
} judge_query;

typedef struct judge_answer {
    int dropped;                /* 1: no answer (text NULL); why says what failed */
    int cached;                 /* the answer came from the cache */
    char *text;                 /* the judge's whole answer, malloc'd */
    char why[256];
} judge_answer;

void judge_answer_free(judge_answer *a);

/* Asks the judge. A drop is not a failure (ERGO_OK with a->dropped); failures are bad
 * queries (no crop, an oracle query without a ground-truth box), out of memory, an
 * in-process generation that fails, a cache file that cannot be written. */
ergo_status judge_ask(judge *j, const judge_query *q, judge_answer *a, ergo_error *err);

typedef struct judge_stats {
    int64_t asked;              /* judge_ask calls that returned ERGO_OK */
    int64_t answered;           /* answers computed (not from the cache) */
    int64_t cached;             /* answers from the cache */
    int64_t dropped;            /* asks that got no answer */
    int64_t requests;           /* endpoint: HTTP requests sent, retries included */
    int64_t retries;            /* endpoint: requests beyond the first of an ask */
    int64_t loaded;             /* answers read from the cache file at open */
    char last_drop[256];        /* the reason of the last drop */
} judge_stats;

void judge_get_stats(judge *j, judge_stats *out);

/* ---- the synthetic task ------------------------------------------------------------ */

struct synth_sample;
/* The oracle's ground truth of a synth item: the target landmark's tag box. */
void judge_synth_gt_box(const struct synth_sample *s, int box[4]);

#endif
