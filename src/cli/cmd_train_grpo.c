/*
 * cmd_train_grpo.c - `ergo train grpo`: ERGO's reinforcement learning (GRPO on
 * two-turn rollouts with the region, box, accuracy and format rewards;
 * src/train/grpo_train.h), in one process or data-parallel under `mpirun -np K`.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "progress.h"
#include "runtime/engine.h"
#include "train/grpo_train.h"
#include "train/lora.h"
#include "train_dist.h"

#define NAME "train grpo"

static void usage(FILE *out) {
    fputs(
"usage: ergo train grpo --model DIR --data FILE.jsonl --out DIR\n"
"                       (--judge DIR | --judge-url URL | --judge-oracle) [options]\n"
"\n"
"GRPO on ERGO's two-turn rollouts: for each item G conversations are sampled (stage 1 on\n"
"the downsampled image names a box, stage 2 answers from its crop), rewarded by\n"
"  R = alpha*r_region + beta*r_box + r_acc + r_format\n"
"(r_region: the judge answers right from the crop alone; r_box: crop area <= gamma of the\n"
"image; r_acc: the policy's own answer is right; r_format: both turns' tags), and the policy\n"
"moves by the clipped-ratio objective with a KL to the starting model. Items are lines in\n"
"V*'s layout (`ergo synth` writes them: test_questions.jsonl; images relative to the file;\n"
"a \"bbox\" for --judge-oracle).\n"
"\n"
"Judge (r_region):\n"
"  --judge DIR           a checkpoint run in process (e.g. a larger Qwen2.5-VL)\n"
"  --judge-url URL       an OpenAI-compatible server (.../v1), --judge-model NAME,\n"
"                        --judge-api-key KEY, --judge-timeout S (120), --judge-retries N (4)\n"
"  --judge-oracle        the synthetic task's ground truth: right iff the crop holds enough of\n"
"                        the bbox (--oracle-coverage F (1.0), --oracle-scale S (0: unchecked))\n"
"  --judge-cache FILE    answers cached across runs (JSONL; default OUT/judge_cache.jsonl)\n"
"  --judge-vision-tokens N (0: the crop as stage 2 sees it)  --judge-max-tokens N (64)\n"
"Rollouts:\n"
"  --group G (8)         rollouts per item      --prompts-per-step P (2) items per step\n"
"  --temperature T (1.0) --top-p P (1.0) --top-k K (0)   (always explicit, never the\n"
"                        checkpoint's generation_config.json)\n"
"  --max-new-tokens N (512 per stage)   --max-vision-tokens N (1280: stage-1 budget)\n"
"  --fallback-full       a rollout without a box runs stage 2 on the whole image (default:\n"
"                        it ends after stage 1)\n"
"  --box-text TEXT       benchmarks: read every rollout's box from TEXT (random weights\n"
"                        name none), e.g. '<zoom>[0, 0, 200, 200]</zoom>'\n"
"Rewards:\n"
"  --rewards full|acc-only|region-only|region-box|weighted (full)\n"
"  --alpha A (1) --beta B (0.5) --gamma G (0.6)   --format-reward full-match|partial\n"
"Objective:\n"
"  --kl-beta B (0.04)    --eps-low E (0.2) --eps-high E (0.2)\n"
"  --num-iterations MU (1) optimiser steps per batch of rollouts (ratio and clipping act\n"
"                        from the second)\n"
"  --loss-type grpo|bnpo|dr_grpo|dapo (grpo)   --scale-rewards group|batch|none (group)\n"
"Optimisation:\n"
"  --lr LR (1e-6)        --schedule constant|cosine|linear (constant)  --warmup-steps N (0)\n"
"  --max-grad-norm X (1) --weight-decay W (0) --adam-beta1 B (0.9) --adam-beta2 B (0.99)\n"
"  --freeze LIST         vision,merger,embeddings,head,norms,layers (default: train all)\n"
"  --lora-rank R         train LoRA adapters instead (--lora-alpha A (2R), --lora-targets\n"
"                        q,k,v,o,gate,up,down|all, --rslora); the reference is the base\n"
"  --max-steps N         --epochs N (1)    --seed S (42)\n"
"  --max-tokens N (4096) --max-patches N (16384)   --recompute\n"
"  --save-every N (50)   --keep K (3)      --resume\n"
"  --threads N  -q/--quiet  --log-every N (1)\n"
"\n"
"Writes OUT/checkpoint-N/ (loads in ergo run and transformers), OUT/train_log.jsonl (every\n"
"step: each reward's mean, zero-variance groups, no-box rate, box area, KL, clipping,\n"
"lengths, time per phase), OUT/rewards.png and OUT/boxes.png (box area, no-box rate,\n"
"zero-variance groups, clipping over the steps).\n", out);
}

static void mpi_sum_f32(void *ctx, float *buf, size_t n) { train_dist_sum_f32(ctx, buf, n); }
static void mpi_sum_f64(void *ctx, double *buf, size_t n) { train_dist_sum_f64(ctx, buf, n); }

int cmd_train_grpo(int argc, char **argv) {
    const char *model_dir = NULL, *data = NULL, *out = NULL, *judge_dir = NULL, *judge_url = NULL;
    const char *judge_model = NULL, *judge_key = NULL, *judge_cache = NULL, *schedule = "constant";
    const char *freeze = NULL, *rewards = "full", *format = "full-match", *loss_type = "grpo";
    const char *scale = "group", *targets = "all", *box_text = NULL;
    long long lora_rank = 0;
    double lora_alpha = 0;
    int rslora = 0;
    long long group = 8, pps = 2, top_k = 0, max_new = 512, max_vt = 1280, warmup = 0, max_steps = 0;
    long long epochs = 1, seed = 42, max_tokens = 4096, max_patches = 16384, save_every = 50, keep = 3;
    long long threads = 0, log_every = 1, mu = 1, judge_retries = 4, judge_vt = 0;
    double temperature = 1.0, top_p = 1.0, alpha = 1.0, beta = 0.5, gamma = 0.6, kl_beta = 0.04;
    double eps_low = 0.2, eps_high = 0.2, lr = 1e-6, clip = 1.0, wd = 0.0, b1 = 0.9, b2 = 0.99;
    double judge_timeout = 120, oracle_cov = 1.0, oracle_scale = 0.0;
    long long judge_max_tokens = 64;
    int oracle = 0, fallback_full = 0, recompute = 0, resume = 0, quiet = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_dir, NULL, 0, 0, 0, 0, NULL},
        {"data", 0, CLI_STR, &data, NULL, 0, 0, 0, 0, NULL},
        {"out", 'o', CLI_STR, &out, NULL, 0, 0, 0, 0, NULL},
        {"judge", 0, CLI_STR, &judge_dir, NULL, 0, 0, 0, 0, NULL},
        {"judge-url", 0, CLI_STR, &judge_url, NULL, 0, 0, 0, 0, NULL},
        {"judge-model", 0, CLI_STR, &judge_model, NULL, 0, 0, 0, 0, NULL},
        {"judge-api-key", 0, CLI_STR, &judge_key, NULL, 0, 0, 0, 0, NULL},
        {"judge-timeout", 0, CLI_FLOAT, &judge_timeout, NULL, 0, 0, 0.1, 86400.0, NULL},
        {"judge-retries", 0, CLI_INT, &judge_retries, NULL, 0, 100, 0, 0, NULL},
        {"judge-oracle", 0, CLI_FLAG, &oracle, NULL, 0, 0, 0, 0, NULL},
        {"judge-cache", 0, CLI_STR, &judge_cache, NULL, 0, 0, 0, 0, NULL},
        {"judge-vision-tokens", 0, CLI_INT, &judge_vt, NULL, 0, 1 << 20, 0, 0, NULL},
        {"judge-max-tokens", 0, CLI_INT, &judge_max_tokens, NULL, 1, 1 << 20, 0, 0, NULL},
        {"oracle-coverage", 0, CLI_FLOAT, &oracle_cov, NULL, 0, 0, 1e-9, 1.0, NULL},
        {"oracle-scale", 0, CLI_FLOAT, &oracle_scale, NULL, 0, 0, 0.0, 1e6, NULL},
        {"group", 'G', CLI_INT, &group, NULL, 2, 1024, 0, 0, NULL},
        {"prompts-per-step", 0, CLI_INT, &pps, NULL, 1, 1 << 20, 0, 0, NULL},
        {"temperature", 0, CLI_FLOAT, &temperature, NULL, 0, 0, 1e-3, 100.0, NULL},
        {"top-p", 0, CLI_FLOAT, &top_p, NULL, 0, 0, 1e-6, 1.0, NULL},
        {"top-k", 0, CLI_INT, &top_k, NULL, 0, 1 << 20, 0, 0, NULL},
        {"max-new-tokens", 'n', CLI_INT, &max_new, NULL, 1, 1 << 20, 0, 0, NULL},
        {"max-vision-tokens", 0, CLI_INT, &max_vt, NULL, 4, 1 << 20, 0, 0, NULL},
        {"fallback-full", 0, CLI_FLAG, &fallback_full, NULL, 0, 0, 0, 0, NULL},
        {"box-text", 0, CLI_STR, &box_text, NULL, 0, 0, 0, 0, NULL},
        {"rewards", 0, CLI_STR, &rewards, NULL, 0, 0, 0, 0, NULL},
        {"alpha", 0, CLI_FLOAT, &alpha, NULL, 0, 0, 0.0, 1e6, NULL},
        {"beta", 0, CLI_FLOAT, &beta, NULL, 0, 0, 0.0, 1e6, NULL},
        {"gamma", 0, CLI_FLOAT, &gamma, NULL, 0, 0, 1e-9, 1.0, NULL},
        {"format-reward", 0, CLI_STR, &format, NULL, 0, 0, 0, 0, NULL},
        {"kl-beta", 0, CLI_FLOAT, &kl_beta, NULL, 0, 0, 0.0, 1e6, NULL},
        {"num-iterations", 0, CLI_INT, &mu, NULL, 1, 1000, 0, 0, NULL},
        {"eps-low", 0, CLI_FLOAT, &eps_low, NULL, 0, 0, 0.0, 1.0, NULL},
        {"eps-high", 0, CLI_FLOAT, &eps_high, NULL, 0, 0, 0.0, 100.0, NULL},
        {"loss-type", 0, CLI_STR, &loss_type, NULL, 0, 0, 0, 0, NULL},
        {"scale-rewards", 0, CLI_STR, &scale, NULL, 0, 0, 0, 0, NULL},
        {"lr", 0, CLI_FLOAT, &lr, NULL, 0, 0, 0.0, 10.0, NULL},
        {"schedule", 0, CLI_STR, &schedule, NULL, 0, 0, 0, 0, NULL},
        {"warmup-steps", 0, CLI_INT, &warmup, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"max-grad-norm", 0, CLI_FLOAT, &clip, NULL, 0, 0, 0.0, 1e9, NULL},
        {"weight-decay", 0, CLI_FLOAT, &wd, NULL, 0, 0, 0.0, 10.0, NULL},
        {"adam-beta1", 0, CLI_FLOAT, &b1, NULL, 0, 0, 0.0, 0.999999, NULL},
        {"adam-beta2", 0, CLI_FLOAT, &b2, NULL, 0, 0, 0.0, 0.99999999, NULL},
        {"freeze", 0, CLI_STR, &freeze, NULL, 0, 0, 0, 0, NULL},
        {"lora-rank", 0, CLI_INT, &lora_rank, NULL, 0, 4096, 0, 0, NULL},
        {"lora-alpha", 0, CLI_FLOAT, &lora_alpha, NULL, 0, 0, 0.0, 1e6, NULL},
        {"lora-targets", 0, CLI_STR, &targets, NULL, 0, 0, 0, 0, NULL},
        {"rslora", 0, CLI_FLAG, &rslora, NULL, 0, 0, 0, 0, NULL},
        {"max-steps", 0, CLI_INT, &max_steps, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"epochs", 0, CLI_INT, &epochs, NULL, 1, 1000000, 0, 0, NULL},
        {"seed", 's', CLI_INT, &seed, NULL, 0, INT64_MAX, 0, 0, NULL},
        {"max-tokens", 0, CLI_INT, &max_tokens, NULL, 64, 1 << 24, 0, 0, NULL},
        {"max-patches", 0, CLI_INT, &max_patches, NULL, 4, 1 << 22, 0, 0, NULL},
        {"recompute", 0, CLI_FLAG, &recompute, NULL, 0, 0, 0, 0, NULL},
        {"save-every", 0, CLI_INT, &save_every, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"keep", 0, CLI_INT, &keep, NULL, 1, 100000, 0, 0, NULL},
        {"resume", 0, CLI_FLAG, &resume, NULL, 0, 0, 0, 0, NULL},
        {"threads", 't', CLI_INT, &threads, NULL, 1, 1024, 0, 0, NULL},
        {"log-every", 0, CLI_INT, &log_every, NULL, 1, INT64_MAX / 4, 0, 0, NULL},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, 0, 0, 0, 0, NULL},
    };
    int rc = cli_parse(NAME, opts, (int)(sizeof opts / sizeof opts[0]), argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (!model_dir || !data || !out)
        return cli_usage_error(NAME, "%s", "--model, --data and --out are required");
    ergo_error err = {0};
    grpo_options o;
    grpo_options_default(&o);
    o.data_path = data, o.out_dir = out;
    o.max_steps = max_steps, o.epochs = epochs, o.prompts_per_step = (int)pps;
    o.rollout.group = (int)group;
    o.rollout.max_vision_tokens = (int)max_vt;
    o.rollout.max_new_tokens[0] = o.rollout.max_new_tokens[1] = (int)max_new;
    o.rollout.sampling.temperature = (float)temperature;
    o.rollout.sampling.top_p = (float)top_p;
    o.rollout.sampling.top_k = (int)top_k;
    o.rollout.fallback_full = fallback_full;
    o.rollout.box_text = box_text;
    o.objective.group_size = (int)group;
    o.num_iterations = (int)mu;
    o.objective.kl_beta = kl_beta, o.objective.eps_low = eps_low, o.objective.eps_high = eps_high;
    if (grpo_loss_type_parse(loss_type, &o.objective.loss_type, &err) ||
        grpo_scale_parse(scale, &o.objective.scale_rewards, &err) ||
        reward_preset_parse(rewards, &o.reward.preset, &err) ||
        reward_format_parse(format, &o.reward.format, &err))
        return cli_usage_error(NAME, "%s", err.msg);
    o.objective.max_completion_length = 2 * (int)max_new;
    o.reward.alpha = alpha, o.reward.beta = beta, o.reward.gamma = gamma;
    const int n_judges = (judge_dir != NULL) + (judge_url != NULL) + oracle;
    if (reward_needs_judge(&o.reward) && n_judges != 1)
        return cli_usage_error(NAME, "--rewards %s needs exactly one of --judge DIR, --judge-url URL "
                               "and --judge-oracle", rewards);
    if (n_judges > 1) return cli_usage_error(NAME, "%s", "give one judge");
    o.judge.kind = oracle ? JUDGE_ORACLE : judge_url ? JUDGE_ENDPOINT : JUDGE_MODEL;
    o.judge.model_dir = judge_dir;
    o.judge.url = judge_url;
    o.judge.model_name = judge_model;
    o.judge.client.api_key = judge_key;
    o.judge.client.max_retries = (int)judge_retries;
    o.judge.client.timeout_ms = (long)(judge_timeout * 1000);
    o.judge.max_vision_tokens = (int)judge_vt;
    o.judge.max_new_tokens = (int)judge_max_tokens;
    o.judge.oracle_min_coverage = oracle_cov;
    o.judge.oracle_min_scale = oracle_scale;
    char cache_path[4200];
    snprintf(cache_path, sizeof cache_path, "%s/judge_cache.jsonl", out);
    o.judge.cache_path = oracle ? NULL : judge_cache ? judge_cache : cache_path;
    o.lr = (float)lr;
    if (!strcmp(schedule, "cosine")) o.schedule = LR_COSINE;
    else if (!strcmp(schedule, "linear")) o.schedule = LR_LINEAR;
    else if (!strcmp(schedule, "constant")) o.schedule = LR_CONSTANT;
    else return cli_usage_error(NAME, "--schedule %.40s: constant, cosine or linear", schedule);
    o.warmup_steps = warmup;
    o.adam = (adamw_config){(float)b1, (float)b2, 1e-8f, (float)wd};
    o.max_grad_norm = (float)clip;
    o.seed = (uint64_t)seed;
    o.train.seed = (uint64_t)seed;
    if (freeze && train_freeze_parse(freeze, &o.train.freeze, &err))
        return cli_usage_error(NAME, "%s", err.msg);
    if (lora_rank > 0) {
        if (freeze) return cli_usage_error(NAME, "%s", "--freeze applies to full training (LoRA freezes the base)");
        o.train.lora_rank = (int)lora_rank;
        o.train.lora_alpha = lora_alpha > 0 ? (float)lora_alpha : 2.0f * (float)lora_rank;
        o.train.use_rslora = rslora;
        if (!(o.train.lora_targets = lora_targets_parse(targets)))
            return cli_usage_error(NAME, "--lora-targets %.80s: a comma list of q,k,v,o,gate,up,down "
                                   "(or q_proj, ...) or all", targets);
    }
    o.max_tokens = (int)max_tokens, o.max_patches = (int)max_patches, o.recompute = recompute;
    o.save_every = save_every, o.keep = (int)keep, o.resume = resume, o.log_every = log_every;
    if (quiet) progress_set_quiet(1);
    if (threads) omp_set_num_threads((int)threads);

    train_dist d;
    train_dist_init(&d);
    train_comm comm = {d.rank, d.size, &d, mpi_sum_f32, mpi_sum_f64};
    o.progress = progress_quiet() || d.rank ? -1 : progress_is_tty() ? 1 : 0;
    engine_options eo;
    engine_options_default(&eo);
    eo.n_threads = (int)threads;
    engine e;
    ergo_status s = engine_load(&e, model_dir, &eo, &err);
    grpo_result res;
    if (!s) s = grpo_run(&e, model_dir, &o, &comm, &res, &err);
    if (s) fprintf(stderr, "ergo " NAME "%s: %s\n", d.size > 1 ? " (a rank)" : "", err.msg);
    else if (d.rank == 0)
        printf("trained %lld GRPO steps on %d rank%s (%lld rollouts on rank 0, %lld groups dropped, "
               "%lld bad items); mean reward %.3f -> %.3f\ncheckpoint: %s\nlog: %s/train_log.jsonl, "
               "plots: %s/rewards.png, boxes.png\n",
               (long long)res.steps, d.size, d.size > 1 ? "s" : "", (long long)res.rollouts,
               (long long)res.dropped_groups, (long long)res.bad_items, res.first_reward,
               res.last_reward, res.checkpoint, out, out);
    engine_free(&e);
    train_dist_finalize(&d);
    return s ? 1 : 0;
}
