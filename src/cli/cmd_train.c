/*
 * cmd_train.c - `ergo train sft`: supervised fine-tuning of a checkpoint on a JSONL
 * file of conversations (src/train/sft.h), in one process or data-parallel under
 * `mpirun -np K` (train_dist.h).
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
#include "train/lora.h"
#include "train/sft.h"
#include "train_dist.h"

#define NAME "train sft"

static void usage(FILE *out) {
    fputs(
"usage: ergo train sft --model DIR --data FILE.jsonl --out DIR [options]\n"
"\n"
"Supervised fine-tuning on conversations in the OpenAI messages format, one per line:\n"
"  {\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": \"a.png\"},\n"
"                {\"type\": \"text\", \"text\": \"...\"}]}, {\"role\": \"assistant\", \"content\": \"...\"}]}\n"
"(images: paths relative to the file, file:// URLs or data URLs; image_url parts too). The loss\n"
"is the token mean of the assistant turns' content and closing <|im_end|> (TRL's\n"
"assistant_only_loss) over each optimiser step's examples on all ranks.\n"
"\n"
"  --epochs N (1)        --max-steps N (0: the epochs decide)\n"
"  --batch B (1)         examples per micro-batch; --accum A (1) micro-batches per step\n"
"  --lr LR (3e-4)        --schedule cosine|linear|constant (cosine)\n"
"  --warmup-steps N      or --warmup-ratio R (0.03 of the steps)\n"
"  --weight-decay W (0)  --adam-beta1 (0.9) --adam-beta2 (0.999) --adam-eps (1e-8)\n"
"  --max-grad-norm G (1.0; 0: no clipping)\n"
"  --lora-rank R         train LoRA adapters over the frozen base (0: full training)\n"
"  --lora-alpha A (2R)   --lora-targets q,k,v,o,gate,up,down|all (all)   --rslora\n"
"  --freeze LIST         vision,merger,embeddings,head,norms,layers (full training)\n"
"  --weights bf16|q8|q4  how a LoRA run reads the frozen base (bf16: as stored)\n"
"  --max-tokens N (4096) --max-images N (8) --max-patches N (4096 per image)\n"
"  --recompute           keep only each layer's input, recompute it in the backward\n"
"                        (about one more forward of compute for far less memory)\n"
"  --heldout N           held-out conversations (default 5%% of the file, at least 1)\n"
"  --eval-every N (50)   --save-every N (100)  --keep K (3 checkpoints)\n"
"  --resume              continue from the newest complete checkpoint in --out\n"
"  --skip-bad-lines      a malformed line is reported and skipped (default: the run stops)\n"
"  --seed S (42)         data order, held-out split, adapter initialisation\n"
"  --threads N           --log-every N (10 steps per line off a terminal)  --quiet\n"
"\n"
"Writes OUT/train_log.jsonl (a record per step and per held-out evaluation, fsynced),\n"
"OUT/loss.png, and OUT/checkpoint-STEP/ (the model in the published layout, or a PEFT\n"
"adapter, plus the optimiser state; written to a temporary directory and renamed, so a\n"
"crash leaves the previous one whole). Under `mpirun -np K ergo train sft ...` each rank\n"
"takes every K-th example of a step and the gradients are summed (rank 0 writes).\n", out);
}

static void mpi_sum_f32(void *ctx, float *buf, size_t n) { train_dist_sum_f32(ctx, buf, n); }
static void mpi_sum_f64(void *ctx, double *buf, size_t n) { train_dist_sum_f64(ctx, buf, n); }

static int train_sft(int argc, char **argv) {
    const char *model_dir = NULL, *data = NULL, *out = NULL, *schedule = "cosine", *freeze = NULL;
    const char *targets = "all", *weights = "bf16";
    long long epochs = 1, max_steps = 0, batch = 1, accum = 1, warmup_steps = -1, lora_rank = 0;
    long long max_tokens = 4096, max_images = 8, max_patches = 4096, heldout = -1, eval_every = 50;
    long long save_every = 100, keep = 3, seed = 42, threads = 0, log_every = 10;
    double lr = 3e-4, warmup_ratio = 0.03, wd = 0.0, b1 = 0.9, b2 = 0.999, eps = 1e-8, clip = 1.0;
    double lora_alpha = 0;
    int resume = 0, recompute = 0, skip_bad = 0, quiet = 0, rslora = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_dir, NULL, 0, 0, 0, 0, NULL},
        {"data", 0, CLI_STR, &data, NULL, 0, 0, 0, 0, NULL},
        {"out", 'o', CLI_STR, &out, NULL, 0, 0, 0, 0, NULL},
        {"epochs", 0, CLI_INT, &epochs, NULL, 1, 1000000, 0, 0, NULL},
        {"max-steps", 0, CLI_INT, &max_steps, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"batch", 0, CLI_INT, &batch, NULL, 1, 65536, 0, 0, NULL},
        {"accum", 0, CLI_INT, &accum, NULL, 1, 65536, 0, 0, NULL},
        {"lr", 0, CLI_FLOAT, &lr, NULL, 0, 0, 0.0, 10.0, NULL},
        {"schedule", 0, CLI_STR, &schedule, NULL, 0, 0, 0, 0, NULL},
        {"warmup-steps", 0, CLI_INT, &warmup_steps, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"warmup-ratio", 0, CLI_FLOAT, &warmup_ratio, NULL, 0, 0, 0.0, 1.0, NULL},
        {"weight-decay", 0, CLI_FLOAT, &wd, NULL, 0, 0, 0.0, 10.0, NULL},
        {"adam-beta1", 0, CLI_FLOAT, &b1, NULL, 0, 0, 0.0, 0.999999, NULL},
        {"adam-beta2", 0, CLI_FLOAT, &b2, NULL, 0, 0, 0.0, 0.99999999, NULL},
        {"adam-eps", 0, CLI_FLOAT, &eps, NULL, 0, 0, 1e-30, 1.0, NULL},
        {"max-grad-norm", 0, CLI_FLOAT, &clip, NULL, 0, 0, 0.0, 1e9, NULL},
        {"lora-rank", 0, CLI_INT, &lora_rank, NULL, 0, 4096, 0, 0, NULL},
        {"lora-alpha", 0, CLI_FLOAT, &lora_alpha, NULL, 0, 0, 0.0, 1e6, NULL},
        {"lora-targets", 0, CLI_STR, &targets, NULL, 0, 0, 0, 0, NULL},
        {"rslora", 0, CLI_FLAG, &rslora, NULL, 0, 0, 0, 0, NULL},
        {"freeze", 0, CLI_STR, &freeze, NULL, 0, 0, 0, 0, NULL},
        {"weights", 0, CLI_STR, &weights, NULL, 0, 0, 0, 0, NULL},
        {"max-tokens", 0, CLI_INT, &max_tokens, NULL, 8, 1 << 24, 0, 0, NULL},
        {"max-images", 0, CLI_INT, &max_images, NULL, 0, 64, 0, 0, NULL},
        {"max-patches", 0, CLI_INT, &max_patches, NULL, 4, 1 << 22, 0, 0, NULL},
        {"heldout", 0, CLI_INT, &heldout, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"eval-every", 0, CLI_INT, &eval_every, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"save-every", 0, CLI_INT, &save_every, NULL, 0, INT64_MAX / 4, 0, 0, NULL},
        {"keep", 0, CLI_INT, &keep, NULL, 1, 100000, 0, 0, NULL},
        {"recompute", 0, CLI_FLAG, &recompute, NULL, 0, 0, 0, 0, NULL},
        {"resume", 0, CLI_FLAG, &resume, NULL, 0, 0, 0, 0, NULL},
        {"skip-bad-lines", 0, CLI_FLAG, &skip_bad, NULL, 0, 0, 0, 0, NULL},
        {"seed", 's', CLI_INT, &seed, NULL, 0, INT64_MAX, 0, 0, NULL},
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
    if (!model_dir || !data || !out) return cli_usage_error(NAME, "%s", "--model, --data and --out are required");
    sft_options o;
    sft_options_default(&o);
    o.data_path = data, o.out_dir = out;
    o.epochs = epochs, o.max_steps = max_steps, o.batch = (int)batch, o.accum = (int)accum;
    o.lr = (float)lr;
    if (!strcmp(schedule, "cosine")) o.schedule = LR_COSINE;
    else if (!strcmp(schedule, "linear")) o.schedule = LR_LINEAR;
    else if (!strcmp(schedule, "constant")) o.schedule = LR_CONSTANT;
    else return cli_usage_error(NAME, "--schedule %.40s: cosine, linear or constant", schedule);
    o.warmup_steps = warmup_steps, o.warmup_ratio = warmup_ratio;
    o.adam = (adamw_config){(float)b1, (float)b2, (float)eps, (float)wd};
    o.max_grad_norm = (float)clip;
    o.seed = (uint64_t)seed;
    o.max_tokens = (int)max_tokens, o.max_images = (int)max_images, o.max_patches = (int)max_patches;
    o.heldout = heldout, o.eval_every = eval_every, o.save_every = save_every, o.keep = (int)keep;
    o.recompute = recompute, o.resume = resume, o.skip_bad_lines = skip_bad, o.log_every = log_every;
    o.train.seed = (uint64_t)seed;
    ergo_error err = {0};
    if (freeze && train_freeze_parse(freeze, &o.train.freeze, &err))
        return cli_usage_error(NAME, "%s", err.msg);
    const int qf = quant_format_parse(weights);
    if (qf < 0 && strcmp(weights, "bf16"))
        return cli_usage_error(NAME, "--weights %.40s: bf16, q8 or q4", weights);
    if (lora_rank > 0) {
        o.train.lora_rank = (int)lora_rank;
        o.train.lora_alpha = lora_alpha > 0 ? (float)lora_alpha : 2.0f * (float)lora_rank;
        o.train.lora_targets = lora_targets_parse(targets);
        o.train.use_rslora = rslora;
        if (!o.train.lora_targets)
            return cli_usage_error(NAME, "--lora-targets %.80s: a comma list of q,k,v,o,gate,up,down "
                                   "(or q_proj, ...) or all", targets);
        if (freeze) return cli_usage_error(NAME, "%s", "--freeze applies to full training (LoRA freezes the base)");
    } else if (qf > 0) {
        return cli_usage_error(NAME, "%s", "--weights q8/q4 needs --lora-rank (a frozen base)");
    }
    if (quiet) progress_set_quiet(1);
    if (threads) omp_set_num_threads((int)threads);

    train_dist d;
    train_dist_init(&d);
    train_comm comm = {d.rank, d.size, &d, mpi_sum_f32, mpi_sum_f64};
    o.progress = progress_quiet() || d.rank ? -1 : progress_is_tty() ? 1 : 0;
    engine_options eo;
    engine_options_default(&eo);
    eo.weights = qf > 0 ? (quant_format)qf : QUANT_NONE;
    eo.n_threads = (int)threads;
    engine e;
    ergo_status s = engine_load(&e, model_dir, &eo, &err);
    if (s) {
        fprintf(stderr, "ergo " NAME ": %s\n", err.msg);
        engine_free(&e);
        train_dist_finalize(&d);
        return 1;
    }
    if (e.warning[0] && d.rank == 0) fprintf(stderr, "ergo " NAME ": warning: %s\n", e.warning);
    sft_result res;
    s = sft_run(&e, model_dir, &o, &comm, &res, &err);
    if (s) fprintf(stderr, "ergo " NAME "%s: %s\n", d.size > 1 ? " (a rank)" : "", err.msg);
    else if (d.rank == 0) {
        printf("trained %lld steps on %d rank%s (%lld examples on rank 0, %lld bad lines skipped); "
               "last loss %.4f", (long long)res.steps, d.size, d.size > 1 ? "s" : "",
               (long long)res.examples, (long long)res.bad_lines, res.last_loss);
        if (!isnan(res.last_heldout))
            printf("; held-out loss %.4f (first %.4f)", res.last_heldout, res.first_heldout);
        printf("\ncheckpoint: %s\nlog: %s/train_log.jsonl, plot: %s/loss.png\n", res.checkpoint, out, out);
    }
    engine_free(&e);
    train_dist_finalize(&d);
    return s ? 1 : 0;
}

int cmd_train(int argc, char **argv) {
    /* The backward products are f32: the forward they differentiate is f32 too unless
     * --compute bf16 asks otherwise (then the gradients are those of an f32 forward
     * evaluated at a bf16 one's activations). */
    if (!getenv("ERGO_COMPUTE")) setenv("ERGO_COMPUTE", "f32", 1);
    if (argc >= 2 && !strcmp(argv[1], "sft")) return train_sft(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "grpo")) return cmd_train_grpo(argc - 1, argv + 1);
    FILE *f = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr;
    fputs("usage: ergo train sft --model DIR --data FILE.jsonl --out DIR [options]\n"
          "       ergo train grpo --model DIR --data FILE.jsonl --out DIR --judge ... [options]\n"
          "  (ergo train sft --help, ergo train grpo --help for the options)\n", f);
    return f == stdout ? 0 : 2;
}
