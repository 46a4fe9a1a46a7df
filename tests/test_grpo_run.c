/*
 * test_grpo_run.c - the GRPO loop end to end (train/grpo_train.h) on a tiny random
 * model: rollouts, rewards, advantages, the objective's gradient, AdamW, checkpoints,
 * the log, and a resume that ends bit-identical to an uninterrupted run. Random
 * weights earn no ERGO reward, so the rewards come from a test hook (a parity of each
 * rollout's first token): what is checked is the loop, the objective's exactness is
 * test_grpo.c's and the rewards' test_reward.c's.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"
#include "check.h"
#include "train_fixture.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"
#include "runtime/engine.h"
#include "serve/server.h"
#include "runtime/context.h"
#include "train/grpo_train.h"
#include "train/policy_weights.h"
#include "train/step.h"
#include "train/run_log.h"

static char g_model[1100], g_data[1300];

static const char *scratch(const char *name) {
    static char buf[4][1100];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/grpo_%s", scratch_dir(), name);
    return buf[k];
}


/* Three V*-layout items on the pipeline fixture's photo. */
static int write_data(void) {
    char src[1024], dir[1100], img[1200];
    snprintf(src, sizeof src, "%s/pipeline/two_stage.original.png", fixtures_dir());
    snprintf(dir, sizeof dir, "%s", scratch("data"));
    snprintf(img, sizeof img, "%s/photo.png", dir);
    char *bytes = NULL;
    size_t n = 0;
    ergo_error err = {0};
    ergo_status s = file_read_all(src, (size_t)1 << 26, &bytes, &n, &err);
    if (!s) s = run_mkdir_p(dir, &err);
    if (!s) s = file_write_all(img, bytes, n, &err);
    free(bytes);
    CHECK(s == ERGO_OK, "data image: %s", err.msg);
    snprintf(g_data, sizeof g_data, "%s/items.jsonl", dir);
    FILE *f = fopen(g_data, "wb");
    CHECK(f != NULL, "cannot write %s", g_data);
    if (!f) return 0;
    static const char *const qs[3] = {"What colour is the sign?", "Which animal is shown?",
                                      "How many windows are there?"};
    for (int i = 0; i < 3; i++)
        fprintf(f, "{\"question_id\": %d, \"image\": \"photo.png\", \"text\": \"%s\\n(A) one\\n(B) two\\n"
                   "Answer with the option's letter from the given choices directly.\", \"category\": "
                   "\"t\", \"label\": \"%c\", \"bbox\": [4, 4, 30, 30]}\n",
                i, qs[i], "ABA"[i]);
    fclose(f);
    return !s;
}

/* R = parity of the rollout's first answer token (varies within a group). */
static double parity_reward(void *ctx, const rollout *r, int k) {
    (void)ctx, (void)k;
    return (double)(r->ids[r->s1_begin] & 1);
}

static void options(grpo_options *o, const char *out, int64_t steps) {
    grpo_options_default(o);
    o->data_path = g_data;
    o->out_dir = out;
    o->max_steps = steps;
    o->prompts_per_step = 2;
    o->rollout.group = o->objective.group_size = 4;
    o->rollout.max_vision_tokens = 16;
    o->rollout.max_new_tokens[0] = o->rollout.max_new_tokens[1] = 4;
    o->rollout.sampling.temperature = 1.0f;
    o->judge.kind = JUDGE_ORACLE;
    o->lr = 1e-2f; /* large, so that a few steps move the policy visibly */
    o->save_every = 1;
    o->keep = 10;
    o->progress = -1;
    o->reward_hook = parity_reward;
}


/* The log's records, checked for the columns every step must have. */
static int check_log(const char *out, int steps, double *kl_last, double *norm_sum) {
    char path[1300], line[8192];
    snprintf(path, sizeof path, "%s/train_log.jsonl", out);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "no log %s", path);
    int n = 0;
    *kl_last = NAN, *norm_sum = 0;
    static const char *const keys[] = {"reward", "r_region", "r_box", "r_acc", "r_format",
                                       "frac_reward_zero_std", "no_box_rate", "box_area_ratio", "kl",
                                       "clip_ratio_region", "completion_length", "tokens_per_s",
                                       "rollout_s", "judge_s", "reference_s", "update_s"};
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK(j != NULL, "log line %d is not JSON", n + 1);
        for (size_t k = 0; j && k < sizeof keys / sizeof *keys; k++)
            CHECK(json_is_number(json_object_get(j, keys[k])), "log step %d: no %s", n + 1, keys[k]);
        CHECK(json_integer_value(json_object_get(j, "step")) == n + 1, "log line %d: step %lld", n + 1,
              (long long)json_integer_value(json_object_get(j, "step")));
        *kl_last = json_number_value(json_object_get(j, "kl"));
        *norm_sum += json_number_value(json_object_get(j, "grad_norm"));
        json_decref(j);
        n++;
    }
    if (f) fclose(f);
    CHECK(n == steps, "%d log records, %d steps", n, steps);
    return n;
}

/* The judges in the loop: boxes forced (random weights name none), so every rollout's
 * crop goes to a judge checkpoint in process, then to `ergo serve` over HTTP. */
static void check_judge_run(const engine *e, const char *name, const judge_config *jc) {
    grpo_options o;
    grpo_result res;
    ergo_error err = {0};
    options(&o, scratch(name), 1);
    o.rollout.box_text = "<zoom>[4, 4, 30, 30]</zoom>";
    o.judge = *jc;
    ergo_status s = grpo_run(e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK, "%s judge run: %s", name, err.msg);
    char path[1300], line[8192] = "";
    snprintf(path, sizeof path, "%s/train_log.jsonl", scratch(name));
    FILE *f = fopen(path, "rb");
    if (f) {
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
    }
    json_t *j = json_loads(line, 0, NULL);
    const long long asked = (long long)json_integer_value(json_object_get(j, "judge_asked"));
    const long long dropped = (long long)json_integer_value(json_object_get(j, "judge_dropped"));
    CHECK(asked == 8 && dropped == 0, "%s judge: asked %lld times (8 rollouts with a box), %lld dropped",
          name, asked, dropped);
    CHECK(json_number_value(json_object_get(j, "r_box")) == 1.0 &&
              json_number_value(json_object_get(j, "no_box_rate")) == 0.0,
          "%s judge: the forced box (a small crop) earns r_box on every rollout", name);
    printf("  grpo_run: %s judge asked %lld times, r_region mean %.2f\n", name, asked,
           json_number_value(json_object_get(j, "r_region")));
    json_decref(j);
}

static void check_judges(const engine *e) {
    judge_config jc;
    judge_config_default(&jc);
    jc.kind = JUDGE_MODEL;
    jc.model_dir = g_model;
    jc.max_new_tokens = 4;
    check_judge_run(e, "model", &jc);

    serve_options so;
    serve_options_default(&so);
    so.port = 0;
    so.parallel = 1;
    so.queue = 16;
    server *sv;
    ergo_error err = {0};
    if (server_start(&sv, e, &so, &err)) {
        SKIP("cannot start ergo serve on 127.0.0.1 for the endpoint judge: %s", err.msg);
        return;
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", server_port(sv));
    judge_config_default(&jc);
    jc.kind = JUDGE_ENDPOINT;
    jc.url = url;
    jc.max_new_tokens = 4;
    check_judge_run(e, "endpoint", &jc);
    server_stop(sv);
}

/* The rollouts' merged LoRA weights give the training forward's log-probabilities
 * (x W + s (x A^T) B^T unmerged) within f32 rounding. */
static void check_policy_weights(const engine *e) {
    train_config tc = {0, 4, 8.0f, LORA_ALL_LINEARS, 0, 3};
    train_model tm;
    ergo_error err = {0};
    if (train_model_init(&tm, &e->m, &tc, &err)) {
        CHECK(0, "LoRA train model: %s", err.msg);
        return;
    }
    /* non-zero B (PEFT starts it at 0, which would test nothing) */
    uint64_t x = 99;
    for (int l = 0; l < tm.cfg.text.n_layers; l++)
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            lora_linear *ad = lora_at(&tm.lora, l, (lora_target)t);
            for (size_t i = 0; ad && i < (size_t)ad->out * (size_t)tm.lora.rank; i++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                ad->b[i] = (float)((double)(x >> 40) / (double)(1ull << 24) - 0.5) * 0.2f;
            }
        }
    enum { N = 12 };
    int32_t ids[N], pos[3][N], targets[N];
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % 150000u);
        pos[0][i] = pos[1][i] = pos[2][i] = i;
    }
    for (int i = 0; i < N; i++) targets[i] = i + 1 < N ? ids[i + 1] : -1;
    train_states ts;
    float logp[N];
    int n = 0;
    ergo_status s = train_states_init(&ts, &tm, 64, 16, 0, 0, &err);
    train_example ex = {{ids, {pos[0], pos[1], pos[2]}, targets, N, NULL, 0, e->m.config.image_token_id},
                        NULL, 0};
    if (!s) s = train_forward(&ts, &tm, &ex, 1.0f, logp, &n, &err);
    CHECK(s == ERGO_OK && n == N - 1, "training forward with LoRA: %s (%d)", err.msg, n);
    policy_weights pw;
    engine view;
    context c;
    session ss;
    int ok = !s && policy_weights_init(&pw, &tm, &err) == ERGO_OK;
    CHECK(ok, "policy weights: %s", err.msg);
    if (ok) {
        engine_view(&view, e, &pw.w);
        ok = context_init(&c, &view, &err) == ERGO_OK;
        if (ok && context_session_init(&c, &ss, &err)) context_free(&c), ok = 0;
        CHECK(ok, "policy context: %s", err.msg);
    }
    double worst = 0;
    const int V = e->m.config.text.vocab_size;
    for (int i = 0; ok && i + 1 < N; i++) {
        context_piece p = {ids + i, 1, NULL, 0, NULL};
        context_prefill_out pf;
        if (context_prefill(&c, &ss, &p, &pf, &err)) {
            CHECK(0, "prefill: %s", err.msg);
            break;
        }
        double mx = -INFINITY, z = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, (double)pf.logits[v]);
        for (int v = 0; v < V; v++) z += exp((double)pf.logits[v] - mx);
        const double want = (double)pf.logits[ids[i + 1]] - mx - log(z);
        worst = fmax(worst, fabs(want - (double)logp[i]));
    }
    if (ok) {
        CHECK(worst < 2e-4, "merged LoRA weights vs the unmerged training forward: max |d logp| %g", worst);
        printf("  grpo_run: merged LoRA policy vs training forward: max |d logp| %.3g over %d tokens\n",
               worst, N - 1);
        session_free(&ss);
        context_free(&c);
    }
    if (!s) policy_weights_free(&pw);
    train_states_free(&ts);
    train_model_free(&tm);
}

/* ---- two ranks in one process: a train_comm over two threads ---- */

typedef struct thread_comm {
    pthread_barrier_t bar;
    double *slot_d[2];
    float *slot_f[2];
} thread_comm;

typedef struct rank_ctx {
    thread_comm *tc;
    int rank;
    const engine *e;
    grpo_options o;
    grpo_result res;
    ergo_status s;
    ergo_error err;
} rank_ctx;

/* Both ranks sum in rank order, so both get the same bits. */
static void tc_sum_f64(void *ctx, double *buf, size_t n) {
    rank_ctx *r = ctx;
    thread_comm *tc = r->tc;
    tc->slot_d[r->rank] = buf;
    pthread_barrier_wait(&tc->bar);
    double *tmp = malloc(sizeof(double) * n);
    for (size_t i = 0; tmp && i < n; i++) tmp[i] = tc->slot_d[0][i] + tc->slot_d[1][i];
    pthread_barrier_wait(&tc->bar);
    if (tmp) memcpy(buf, tmp, sizeof(double) * n);
    free(tmp);
    pthread_barrier_wait(&tc->bar);
}

static void tc_sum_f32(void *ctx, float *buf, size_t n) {
    rank_ctx *r = ctx;
    thread_comm *tc = r->tc;
    tc->slot_f[r->rank] = buf;
    pthread_barrier_wait(&tc->bar);
    float *tmp = malloc(sizeof(float) * n);
    for (size_t i = 0; tmp && i < n; i++) tmp[i] = tc->slot_f[0][i] + tc->slot_f[1][i];
    pthread_barrier_wait(&tc->bar);
    if (tmp) memcpy(buf, tmp, sizeof(float) * n);
    free(tmp);
    pthread_barrier_wait(&tc->bar);
}

static void *rank_main(void *arg) {
    rank_ctx *r = arg;
    train_comm comm = {r->rank, 2, r, tc_sum_f32, tc_sum_f64};
    r->s = grpo_run(r->e, g_model, &r->o, &comm, &r->res, &r->err);
    return NULL;
}

/* Two ranks, each taking whole groups, give the one-rank run's weights up to the
 * order of the gradient sums. */
static void check_two_ranks(const engine *e, const char *straight) {
    thread_comm tc;
    pthread_barrier_init(&tc.bar, NULL, 2);
    rank_ctx rk[2];
    memset(rk, 0, sizeof rk);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        rk[i].tc = &tc, rk[i].rank = i, rk[i].e = e;
        options(&rk[i].o, scratch("two_ranks"), 2);
    }
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, rank_main, &rk[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&tc.bar);
    CHECK(rk[0].s == ERGO_OK && rk[1].s == ERGO_OK, "two ranks: %s / %s", rk[0].err.msg, rk[1].err.msg);
    CHECK(rk[0].res.rollouts == 8 && rk[1].res.rollouts == 8, "each rank rolls out its groups: %lld + %lld",
          (long long)rk[0].res.rollouts, (long long)rk[1].res.rollouts);
    char a[1300], b[1300];
    snprintf(a, sizeof a, "%s/checkpoint-2/trainer_state.safetensors", straight);
    snprintf(b, sizeof b, "%s/checkpoint-2/trainer_state.safetensors", scratch("two_ranks"));
    size_t na = 0, nb = 0;
    float *wa = trf_read_all_f32(a, &na), *wb = trf_read_all_f32(b, &nb);
    double worst = 0;
    for (size_t i = 0; wa && wb && na == nb && i < na; i++) worst = fmax(worst, fabs((double)wa[i] - (double)wb[i]));
    /* AdamW's first steps move each weight by about lr = 1e-2 whatever the gradient's size,
     * so a sum-order difference in a near-zero gradient component can flip a few ulps of
     * the update; the masters stay within 1e-4 of each other */
    CHECK(wa && wb && na == nb && worst <= 1e-4, "two ranks vs one: max |diff| %g over %zu floats", worst, na);
    printf("  grpo_run: 2 ranks (threads) vs 1: max |diff| %.3g in masters and moments\n", worst);
    free(wa), free(wb);
}

void test_grpo_run(void) {
    if (!trf_write_tiny_model(g_model, sizeof g_model, scratch("model")) || !write_data()) return;
    engine e;
    ergo_error err = {0};
    ergo_status s = engine_load(&e, g_model, NULL, &err);
    CHECK(s == ERGO_OK, "engine: %s", err.msg);
    if (s) {
        engine_free(&e);
        return;
    }
    /* an uninterrupted run of 3 steps */
    grpo_options o;
    grpo_result res;
    const char *straight = scratch("straight");
    options(&o, straight, 2);
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK, "grpo run: %s", err.msg);
    CHECK(res.steps == 2 && res.rollouts == 16 && res.dropped_groups == 0, "steps %lld, rollouts %lld, "
          "dropped %lld", (long long)res.steps, (long long)res.rollouts, (long long)res.dropped_groups);
    double kl, norms;
    check_log(straight, 2, &kl, &norms);
    CHECK(norms > 0, "the gradient was zero at every step: the rewards gave no advantage");
    CHECK(kl > 0 && isfinite(kl), "after an update the policy's KL to the reference is %g", kl);
    printf("  grpo_run: 2 steps, 16 rollouts, sum of grad norms %.4g, KL at step 2 %.3g\n", norms, kl);
    char a[1300], b[1300], png[1300];
    snprintf(png, sizeof png, "%s/rewards.png", straight);
    CHECK(file_exists(png), "no rewards.png");
    snprintf(png, sizeof png, "%s/boxes.png", straight);
    CHECK(file_exists(png), "no boxes.png");

    /* the policy moved: the masters of step 2 differ from step 1's */
    snprintf(a, sizeof a, "%s/checkpoint-1/trainer_state.safetensors", straight);
    snprintf(b, sizeof b, "%s/checkpoint-2/trainer_state.safetensors", straight);
    size_t na = 0, nb = 0;
    float *wa = trf_read_all_f32(a, &na), *wb = trf_read_all_f32(b, &nb);
    CHECK(wa && wb && na == nb && na > 0 && memcmp(wa, wb, na * 4), "the weights did not change");
    free(wa), free(wb);

    /* 1 step, then --resume to 2: the same bits as the straight run */
    const char *resumed = scratch("resumed");
    options(&o, resumed, 1);
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK, "first part: %s", err.msg);
    options(&o, resumed, 2);
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_E_ARG && strstr(err.msg, "--resume"), "reusing --out without --resume: %s", err.msg);
    o.resume = 1;
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK && res.steps == 2, "resumed: %s (steps %lld)", err.msg, (long long)res.steps);
    snprintf(a, sizeof a, "%s/checkpoint-2/trainer_state.safetensors", straight);
    snprintf(b, sizeof b, "%s/checkpoint-2/trainer_state.safetensors", resumed);
    wa = trf_read_all_f32(a, &na), wb = trf_read_all_f32(b, &nb);
    CHECK(wa && wb && na == nb && na > 0 && !memcmp(wa, wb, na * 4),
          "the resumed run's masters and moments differ from the uninterrupted run's");
    free(wa), free(wb);
    check_log(resumed, 2, &kl, &norms);

    check_two_ranks(&e, straight);

    /* mu = 2: a second optimiser step on the same rollouts, against the old policy */
    const char *mu2 = scratch("mu2");
    options(&o, mu2, 1);
    o.num_iterations = 2;
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK && res.steps == 1, "num_iterations 2: %s", err.msg);
    check_log(mu2, 1, &kl, &norms);
    CHECK(kl > 0 && norms > 0, "num_iterations 2: the second iteration's KL %g, grad norm %g", kl, norms);

    /* without a gradient (constant rewards, no KL) nothing moves */
    const char *flat = scratch("flat");
    options(&o, flat, 1);
    o.reward_hook = NULL; /* random weights: every reward 0 */
    o.objective.kl_beta = 0;
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK, "flat run: %s", err.msg);
    check_log(flat, 1, &kl, &norms);
    CHECK(norms == 0, "equal rewards and no KL still gave a gradient of norm %g", norms);

    check_judges(&e);

    /* bad input */
    options(&o, scratch("bad"), 1);
    o.data_path = "/nonexistent/items.jsonl";
    CHECK(grpo_run(&e, g_model, &o, NULL, &res, &err) != ERGO_OK && strstr(err.msg, "/nonexistent"),
          "a missing data file: %s", err.msg);
    /* LoRA: the adapters train, the rollouts see them merged */
    check_policy_weights(&e);
    const char *lora = scratch("lora");
    options(&o, lora, 2);
    o.train = (train_config){0, 4, 8.0f, LORA_ALL_LINEARS, 0, 3};
    o.lr = 1e-2f;
    s = grpo_run(&e, g_model, &o, NULL, &res, &err);
    CHECK(s == ERGO_OK && res.steps == 2, "LoRA run: %s", err.msg);
    check_log(lora, 2, &kl, &norms);
    CHECK(norms > 0 && kl > 0, "LoRA run: grad norms %g, KL after an update %g", norms, kl);
    snprintf(a, sizeof a, "%s/checkpoint-2/adapter_model.safetensors", lora);
    CHECK(file_exists(a), "LoRA run: no PEFT adapter in checkpoint-2");
    options(&o, scratch("bad3"), 1);
    o.objective.group_size = 3;
    CHECK(grpo_run(&e, g_model, &o, NULL, &res, &err) == ERGO_E_ARG, "group sizes that differ: %s",
          err.msg);
    engine_free(&e);
}
