/*
 * cmd_eval.c - `ergo eval`: the paper's benchmarks (src/eval/run.h) in process or
 * against an OpenAI-compatible endpoint, sharded, resumable; `ergo eval merge`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "eval/run.h"
#include "io/hub.h"
#include "runtime/context.h"
#include "runtime/engine.h"

#ifdef ERGO_MPI
#include <mpi.h>
#endif

#define NAME "eval"

static void usage(FILE *out) {
    fputs(
"usage: ergo eval --bench vstar|hrbench|hrbench4k|hrbench8k|mmerwl --data-root DIR --out DIR\n"
"                 (--model DIR|OWNER/NAME | --endpoint URL [--api-key K] [--concurrency N])\n"
"                 [--mode ergo|baseline|both] [--max-vision-tokens 640,1280] [--limit N]\n"
"                 [--shard I/N] [--resume] [--reference-denominator] [--crop-probe gt|noise|full]\n"
"                 [--threads N] [--weights bf16|q8|q4] [--weights-cache auto|off|FILE]\n"
"                 [--max-new-tokens N] [--fallback full|downsampled] [--fixed-tokens S1,S2,B]\n"
"                 [--box-text TEXT] [--retries N] [--no-progress] [--lora DIR]\n"
"       ergo eval merge OUT_DIR SHARD_DIR... [--reference-denominator]\n"
"\n"
"Runs a benchmark as ERGO's src/ergo/eval.py does: stage 1 sees the bare question, stage 2\n"
"the question, the options one per line and the postfix; the answer is the text between\n"
"<answer> and </answer> (or the whole response), every ASCII letter of it compared with the\n"
"label, case-insensitive. The data root is laid out as ERGO's data/README.md clones it:\n"
"vstar_bench/ (test_questions.jsonl + images), HR-Bench/ (hr_bench_4k/8k .parquet or .tsv),\n"
"MME-RealWorld-lite-lmms-eval/data/ (four parquet shards). hrbench runs both files (the\n"
"reference's 1,600 samples); hrbench4k / hrbench8k one of them.\n"
"\n"
"--mode baseline is the one-pass model on the whole image smart-resized to the same budget;\n"
"--mode both runs both and reports the paired comparison (same samples, McNemar p).\n"
"--max-vision-tokens takes a comma list of budgets (each a separate run of every sample).\n"
"\n"
"Failed samples (an image that does not decode, a degenerate box the reference raises on, a\n"
"request that failed after its retries) are counted and scored wrong; the reference drops\n"
"them silently, and --reference-denominator leaves them out of the accuracies as it does.\n"
"\n"
"Output in --out: results.jsonl (one line per sample, mode and budget: box, both texts,\n"
"vision / prompt / generated tokens and times per stage; appended and fsynced line by line),\n"
"summary.json, summary.md (the reference's accuracy report byte for byte, 95% Wilson\n"
"intervals, per-stage tokens and times mean/p50/p90, box areas, no-box and fallback rates),\n"
"accuracy.png (accuracy against vision tokens per mode and budget) and box_areas.png.\n"
"--resume continues a killed run (a torn last line is redone); without it an existing\n"
"results.jsonl is refused.\n"
"\n"
"--shard I/N takes samples I, I+N, I+2N, ...; `ergo eval merge OUT SHARDS...` writes the\n"
"union and the same summary one process gives. Built with Open MPI, `mpirun -np K ergo\n"
"eval ...` shards over the ranks (rank r writes OUT/rank-r) and rank 0 merges into OUT.\n"
"\n"
"--lora DIR (with --model) merges a PEFT LoRA adapter, or the newest checkpoint of an\n"
"`ergo train sft` output, into the weights at load (see `ergo generate --help`).\n"
"In process, samples run one after another on one context (several samples per weight\n"
"pass is a later optimisation).\n"
"\n"
"--endpoint URL (e.g. http://127.0.0.1:8008/v1) sends the reference's two chat-completion\n"
"requests (system prompt, image part first as a PNG data URL labelled image/jpeg,\n"
"temperature 0, max_tokens 1024, stop <|im_end|>, seed 42), retrying 408/409/429/5xx and\n"
"connection errors with doubling backoff (--retries, 4). --concurrency N (16, as the\n"
"reference): samples in flight at once, each sending its two requests in turn.\n"
"\n"
"--crop-probe gt|noise|full (samples with a ground-truth box: `ergo synth` data, V* with a\n"
"bbox): also runs ERGO with stage 2 seeing the ground-truth region, noise of that size, or\n"
"the whole downsampled image instead of its own crop; the report pairs it with ERGO.\n"
"\n"
"Benchmark aids for random-weight checkpoints: --fixed-tokens S1,S2,B generates exactly that\n"
"many tokens per stage; --box-text TEXT reads the box from TEXT.\n"
"\n"
"Parquet: PLAIN and dictionary (PLAIN_DICTIONARY / RLE_DICTIONARY) pages, data pages v1 and\n"
"v2, RLE / bit-packed levels, byte arrays, fixed-length byte arrays, int32/int64/float/\n"
"double/boolean, one level of LIST; UNCOMPRESSED, SNAPPY, GZIP, ZSTD. Not supported (refused\n"
"by name): encrypted files or columns, column chunks in other files, INT96, nested types\n"
"other than one level of LIST, lists of structs, the codecs LZO, BROTLI, LZ4, LZ4_RAW, the\n"
"encodings DELTA_BINARY_PACKED, DELTA_LENGTH_BYTE_ARRAY, DELTA_BYTE_ARRAY, BYTE_STREAM_SPLIT,\n"
"and BIT_PACKED levels.\n",
        out);
}

static int fail(const char *msg) { return cli_fail(NAME, msg); }

static int parse_budgets(const char *v, eval_config *c) {
    char buf[256];
    if (strlen(v) >= sizeof buf) return 0;
    memcpy(buf, v, strlen(v) + 1);
    c->n_budgets = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        long long n;
        if (c->n_budgets >= EVAL_MAX_BUDGETS || !cli_parse_long(t, 4, 1 << 20, &n)) return 0;
        c->budgets[c->n_budgets++] = (int)n;
    }
    return c->n_budgets > 0;
}


static int cmd_merge(int argc, char **argv) {
    eval_config c;
    eval_config_default(&c);
    const char *dirs[256];
    int n = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--reference-denominator")) c.reference_denominator = 1;
        else if (!strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (!strncmp(argv[i], "--", 2)) return cli_usage_error(NAME, "unknown option `%s'", argv[i]);
        else if (n < 256) dirs[n++] = argv[i];
    }
    if (n < 2) return cli_usage_error(NAME, "%s", "merge needs OUT_DIR and at least one SHARD_DIR");
    ergo_error err = {0};
    if (eval_merge(dirs[0], dirs + 1, n - 1, &c, &err)) return fail(err.msg);
    printf("merged %d shard(s) into %s\n", n - 1, dirs[0]);
    return 0;
}

int cmd_eval(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "merge")) return cmd_merge(argc, argv);
    eval_config c;
    eval_config_default(&c);
    const char *bench = NULL, *model_dir = NULL, *weights = NULL, *weights_cache = NULL;
    const char *lora = NULL;
    long long threads = 0;
    int no_progress = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!strcmp(a, "--resume")) { c.resume = 1; continue; }
        if (!strcmp(a, "--reference-denominator")) { c.reference_denominator = 1; continue; }
        if (!strcmp(a, "--no-progress")) { no_progress = 1; continue; }
        if (i + 1 >= argc) return cli_usage_error(NAME, "%s needs a value or is unknown", a);
        const char *v = argv[++i];
        long long n = 0;
        int ok = 1;
        if (!strcmp(a, "--bench")) bench = v;
        else if (!strcmp(a, "--data-root")) c.data_root = v;
        else if (!strcmp(a, "--out")) c.out_dir = v;
        else if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--endpoint")) c.endpoint = v;
        else if (!strcmp(a, "--api-key")) c.api_key = v;
        else if (!strcmp(a, "--weights")) weights = v;
        else if (!strcmp(a, "--weights-cache")) weights_cache = v;
        else if (!strcmp(a, "--lora")) lora = v;
        else if (!strcmp(a, "--box-text")) c.run.box_text = v;
        else if (!strcmp(a, "--max-vision-tokens")) ok = parse_budgets(v, &c);
        else if (!strcmp(a, "--fixed-tokens")) ok = cli_parse_fixed_tokens(v, c.run.fixed_tokens);
        else if (!strcmp(a, "--limit")) { if ((ok = cli_parse_long(v, 1, INT64_MAX / 2, &n))) c.limit = n; }
        else if (!strcmp(a, "--threads")) ok = cli_parse_long(v, 1, 4096, &threads);
        else if (!strcmp(a, "--concurrency")) { if ((ok = cli_parse_long(v, 1, 1024, &n))) c.concurrency = (int)n; }
        else if (!strcmp(a, "--retries")) { if ((ok = cli_parse_long(v, 0, 100, &n))) c.max_retries = (int)n; }
        else if (!strcmp(a, "--max-new-tokens")) { if ((ok = cli_parse_long(v, 1, 1 << 20, &n))) c.run.max_new_tokens = (int)n; }
        else if (!strcmp(a, "--mode")) {
            c.modes = !strcmp(v, "ergo") ? EVAL_MODE_ERGO : !strcmp(v, "baseline") ? EVAL_MODE_BASELINE
                      : !strcmp(v, "both") ? EVAL_MODE_BOTH : 0;
            ok = c.modes != 0;
        } else if (!strcmp(a, "--fallback")) {
            ok = !strcmp(v, "full") || !strcmp(v, "downsampled");
            c.run.fallback = !strcmp(v, "full") ? ERGO_FALLBACK_FULL : ERGO_FALLBACK_DOWNSAMPLED;
        } else if (!strcmp(a, "--crop-probe")) {
            c.probe = !strcmp(v, "gt") ? EVAL_PROBE_GT : !strcmp(v, "noise") ? EVAL_PROBE_NOISE
                      : !strcmp(v, "full") ? EVAL_PROBE_FULL : EVAL_PROBE_NONE;
            ok = c.probe != EVAL_PROBE_NONE;
        } else if (!strcmp(a, "--shard")) {
            long long si = -1, sn = 0;
            char buf[64];
            const char *sl = strchr(v, '/');
            ok = sl && (size_t)(sl - v) < sizeof buf;
            if (ok) {
                memcpy(buf, v, (size_t)(sl - v));
                buf[sl - v] = 0;
                ok = cli_parse_long(buf, 0, 1 << 20, &si) && cli_parse_long(sl + 1, 1, 1 << 20, &sn) && si < sn;
            }
            c.shard_i = (int)si, c.shard_n = (int)sn;
        } else return cli_usage_error(NAME, "unknown option `%s'", a);
        if (!ok) return cli_usage_error(NAME, "bad value for %s", a);
    }
    if (!bench) return cli_usage_error(NAME, "%s", "--bench is required");
    if (!strcmp(bench, "hrbench4k") || !strcmp(bench, "hrbench8k")) {
        c.kind = BENCH_HRBENCH;
        c.hr_only = bench[7] == '4' ? "4k" : "8k";
    } else {
        int k = bench_parse_name(bench);
        if (k < 0) return cli_usage_error(NAME, "unknown --bench `%s' (vstar, hrbench, hrbench4k, hrbench8k, mmerwl)", bench);
        c.kind = (bench_kind)k;
    }
    if (!c.data_root) return cli_usage_error(NAME, "%s", "--data-root is required");
    if (!c.out_dir) return cli_usage_error(NAME, "%s", "--out is required");
    if (!model_dir == !c.endpoint) return cli_usage_error(NAME, "%s", "give exactly one of --model and --endpoint");
    if (lora && !model_dir) return cli_usage_error(NAME, "%s", "--lora needs --model (an endpoint serves its own weights)");
    if (lora) {
        ergo_error lerr = {0};
        if (cli_check_lora(lora, &lerr)) return fail(lerr.msg);
    }
    c.progress = no_progress ? -1 : isatty(2) ? 1 : 0;

    int rank = 0, size = 1;
    char rank_dir[4096];
    const char *final_out = c.out_dir;
#ifdef ERGO_MPI
    int inited = 0;
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK")) {
        MPI_Init(NULL, NULL);
        inited = 1;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    if (size > 1) {
        if (c.shard_n > 1) {
            MPI_Finalize();
            return cli_usage_error(NAME, "%s", "--shard and mpirun ranks cannot be combined");
        }
        snprintf(rank_dir, sizeof rank_dir, "%s/rank-%d", final_out, rank);
        c.out_dir = rank_dir;
        c.shard_i = rank, c.shard_n = size;
        if (rank) c.progress = -1;
    }
#else
    (void)rank_dir;
#endif

    ergo_error err = {0};
    int rc = 0;
    engine *e = NULL;
    context *ctx = NULL;
    if (model_dir) {
        char dir[4096];
        engine_options eo;
        engine_options_default(&eo);
        eo.n_threads = (int)threads;
        eo.lora = lora;
        e = calloc(1, sizeof *e);
        ctx = calloc(1, sizeof *ctx);
        ergo_status s = !e || !ctx ? ergo_fail(&err, ERGO_E_NOMEM, "out of memory") : ERGO_OK;
        if (!s) s = hub_resolve_model(model_dir, dir, sizeof dir, &err);
        if (!s) s = cli_weights_options(&eo, weights, weights_cache, &err);
        if (!s) s = engine_load(e, dir, &eo, &err);
        if (!s && e->lora_note[0]) fprintf(stderr, "ergo eval: note: %s\n", e->lora_note);
        if (!s) cli_engine_warning(NAME, e);
        if (!s) s = context_init(ctx, e, &err);
        if (s) rc = fail(err.msg);
    }
    if (!rc && eval_run(&c, ctx, &err)) rc = fail(err.msg);
    if (ctx) context_free(ctx);
    if (e) engine_free(e);
    free(ctx);
    free(e);
#ifdef ERGO_MPI
    if (size > 1) {
        int bad = rc != 0, any = 0;
        MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0 && !any) {
            char **dp = calloc((size_t)size, sizeof *dp);
            int okm = dp != NULL;
            for (int r = 0; okm && r < size; r++) {
                size_t len = strlen(final_out) + 32;
                if ((okm = (dp[r] = malloc(len)) != NULL)) snprintf(dp[r], len, "%s/rank-%d", final_out, r);
            }
            if (!okm) rc = fail("out of memory");
            else if (eval_merge(final_out, (const char *const *)dp, size, &c, &err)) rc = fail(err.msg);
            for (int r = 0; dp && r < size; r++) free(dp[r]);
            free(dp);
        } else if (rank == 0 && any && !rc) {
            rc = fail("another rank failed (see its message)");
        }
    }
    if (inited) MPI_Finalize();
#endif
    if (!rc && rank == 0) { /* the reports on stdout, as the reference prints its own */
        char path[4200];
        snprintf(path, sizeof path, "%s/summary.md", final_out);
        FILE *f = fopen(path, "rb");
        char buf[8192];
        size_t n;
        while (f && (n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
        if (f) fclose(f);
        printf("summary: %s\n", path);
    }
    return rc;
}
