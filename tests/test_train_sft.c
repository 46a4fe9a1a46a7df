/*
 * test_train_sft.c - `ergo train sft` end to end on a tiny random checkpoint with the
 * real tokenizer: the held-out loss falls on a small learnable data set (names and
 * their colours) and the checkpoint loads in `ergo generate`; a run killed with
 * SIGKILL at a random moment and resumed ends with weights bit-identical to an
 * uninterrupted run; mpirun -np 2 gives the weights of one process with the same
 * global batch (within the bound of a different gradient sum order); a malformed
 * line stops the run with file:line or is skipped with --skip-bad-lines; a
 * non-finite loss stops with the step named and the last checkpoint intact; an
 * existing run is not overwritten without --resume.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "base/json.h"
#include "base/rng.h"
#include "check.h"
#include "train_fixture.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"

static char g_bin[1024], g_model[1100], g_data[1100];

static const char *scratch(const char *name) {
    static char bufs[8][1100];
    static int k;
    char *p = bufs[k++ & 7];
    snprintf(p, 1100, "%s/train_sft/%s", scratch_dir(), name);
    return p;
}

/* Runs a shell command; stdout to out_path (NULL: discarded), stderr into errtext. */
static int sh_out(const char *cmd, const char *out_path, char *errtext, size_t errsize) {
    char full[12000], ef[1200];
    snprintf(ef, sizeof ef, "%s", scratch("stderr.txt"));
    snprintf(full, sizeof full, "%s >%s 2>%s", cmd, out_path ? out_path : "/dev/null", ef);
    int st = system(full);
    if (errtext) {
        errtext[0] = 0;
        FILE *f = fopen(ef, "rb");
        if (f) {
            size_t n = fread(errtext, 1, errsize - 1, f);
            errtext[n] = 0;
            fclose(f);
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int sh(const char *cmd, char *errtext, size_t errsize) { return sh_out(cmd, NULL, errtext, errsize); }

/* Reads a small text file into buf (empty when missing). */
static void slurp(const char *path, char *buf, size_t size) {
    buf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (f) buf[fread(buf, 1, size - 1, f)] = 0, fclose(f);
}


/* n conversations "What colour is NAME's kite?" -> "NAME's kite is COLOUR." over a
 * fixed name -> colour table: learnable (the template, then the table). */
static int write_data(const char *path, int n, const char *extra_line) {
    static const char *names[] = {"Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"};
    static const char *colours[] = {"red", "blue", "green", "black", "white"};
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return 0;
    for (int i = 0; i < n; i++) {
        const int k = (int)(rng_u64(77, (uint64_t)i) % 10);
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"What colour is %s's kite?\"}, "
                   "{\"role\": \"assistant\", \"content\": \"%s's kite is %s.\"}]}\n",
                names[k], names[k], colours[k % 5]);
        if (extra_line && i == n / 2) fprintf(f, "%s\n", extra_line);
    }
    fclose(f);
    return 1;
}


#define COMMON "--heldout 16 --lr 3e-3 --warmup-steps 2 --threads 2 --quiet"

static void test_learns(void) {
    char cmd[8192], err[4096];
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --max-steps 40 --batch 4 "
             "--eval-every 20 --save-every 20 " COMMON, g_bin, g_model, g_data, scratch("learn"));
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "train sft: exit %d: %s", rc, err);
    if (rc) return;
    /* the log: 40 step records and 2 held-out records, the held-out loss falls */
    char log[1200];
    snprintf(log, sizeof log, "%s/train_log.jsonl", scratch("learn"));
    FILE *f = fopen(log, "rb");
    char line[4096];
    int steps = 0, evals = 0;
    double first = NAN, last = NAN, loss0 = NAN, loss_n = NAN;
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (json_object_get(j, "heldout_loss")) {
            double h = json_number_value(json_object_get(j, "heldout_loss"));
            if (isnan(first)) first = h;
            last = h, evals++;
        } else if (json_object_get(j, "loss")) {
            if (isnan(loss0)) loss0 = json_number_value(json_object_get(j, "loss"));
            loss_n = json_number_value(json_object_get(j, "loss"));
            steps++;
        }
        json_decref(j);
    }
    if (f) fclose(f);
    CHECK(steps == 40 && evals == 2, "log: %d step and %d held-out records", steps, evals);
    CHECK(last < first - 0.5 && loss_n < loss0 - 2.0,
          "the loss did not fall: held-out %.4f -> %.4f, train %.4f -> %.4f", first, last, loss0, loss_n);
    printf("  train_sft: train loss %.3f -> %.3f, held-out %.3f -> %.3f over 40 steps\n", loss0, loss_n,
           first, last);
    char png[1200];
    snprintf(png, sizeof png, "%s/loss.png", scratch("learn"));
    CHECK(file_exists(png), "no loss plot %s", png);
    /* the checkpoint is a model ergo runs */
    snprintf(cmd, sizeof cmd, "%s generate --model %s/checkpoint-40 --prompt \"What colour is Ada's kite?\" "
             "--max-new-tokens 4 --quiet", g_bin, scratch("learn"));
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "generate on the trained checkpoint: exit %d: %s", rc, err);
    /* an existing run is not silently overwritten */
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --max-steps 2 " COMMON, g_bin,
             g_model, g_data, scratch("learn"));
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 1 && strstr(err, "--resume"), "rerun into a used --out: exit %d: %s", rc, err);
}

#define RESUME_ARGS "--max-steps 12 --batch 2 --save-every 3 --eval-every 6 " COMMON

static void test_kill_resume(void) {
    char cmd[8192], err[4096];
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s " RESUME_ARGS, g_bin, g_model,
             g_data, scratch("straight"));
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "uninterrupted run: exit %d: %s", rc, err);
    if (rc) return;
    /* the same run killed with SIGKILL some time after its first checkpoint */
    const char *out = scratch("killed");
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[40];
        int a = 0;
        char steps[] = "12";
        argv[a++] = g_bin, argv[a++] = "train", argv[a++] = "sft", argv[a++] = "--model", argv[a++] = g_model;
        argv[a++] = "--data", argv[a++] = g_data, argv[a++] = "--out", argv[a++] = (char *)out;
        argv[a++] = "--max-steps", argv[a++] = steps, argv[a++] = "--batch", argv[a++] = "2";
        argv[a++] = "--save-every", argv[a++] = "3", argv[a++] = "--eval-every", argv[a++] = "6";
        argv[a++] = "--heldout", argv[a++] = "16", argv[a++] = "--lr", argv[a++] = "3e-3";
        argv[a++] = "--warmup-steps", argv[a++] = "2", argv[a++] = "--threads", argv[a++] = "2";
        argv[a++] = "--quiet", argv[a] = NULL;
        freopen("/dev/null", "w", stderr);
        freopen("/dev/null", "w", stdout);
        execv(g_bin, argv);
        _exit(127);
    }
    char first[1200];
    snprintf(first, sizeof first, "%s/checkpoint-3", out);
    int waited = 0, status = 0;
    while (!dir_exists(first) && waited < 60000 && waitpid(pid, &status, WNOHANG) == 0) {
        usleep(5000);
        waited += 5;
    }
    srand((unsigned)time(NULL));
    usleep((useconds_t)(rand() % 400) * 1000); /* a random moment after it */
    const int still_running = waitpid(pid, &status, WNOHANG) == 0;
    if (still_running) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECK(dir_exists(first), "the killed run wrote no checkpoint-3 (waited %d ms)", waited);
    printf("  train_sft: %s at a random moment after checkpoint-3\n",
           still_running ? "killed with SIGKILL" : "(finished before the kill)");
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --resume " RESUME_ARGS, g_bin,
             g_model, g_data, out);
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "resumed run: exit %d: %s", rc, err);
    char a[1300], b[1300];
    snprintf(a, sizeof a, "%s/checkpoint-12/trainer_state.safetensors", scratch("straight"));
    snprintf(b, sizeof b, "%s/checkpoint-12/trainer_state.safetensors", out);
    size_t na = 0, nb = 0;
    float *wa = trf_read_all_f32(a, &na), *wb = trf_read_all_f32(b, &nb);
    CHECK(wa && wb && na == nb && na > 0 && !memcmp(wa, wb, na * 4),
          "resumed run's masters and moments differ from the uninterrupted run's (%zu vs %zu floats)",
          na, nb);
    free(wa), free(wb);
    /* the log holds each step once */
    char log[1300], line[4096];
    snprintf(log, sizeof log, "%s/train_log.jsonl", out);
    FILE *f = fopen(log, "rb");
    int seen[13] = {0}, dup = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (json_object_get(j, "loss")) {
            int s = (int)json_integer_value(json_object_get(j, "step"));
            if (s >= 1 && s <= 12) dup += seen[s]++ > 0;
        }
        json_decref(j);
    }
    if (f) fclose(f);
    int missing = 0;
    for (int s = 1; s <= 12; s++) missing += !seen[s];
    CHECK(dup == 0 && missing == 0, "resumed log: %d duplicated, %d missing steps", dup, missing);
}

static void test_mpi(void) {
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        SKIP("mpirun not found: data-parallel training is not tested");
        return;
    }
    char cmd[8192], err[4096];
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --max-steps 6 --batch 4 "
             "--threads 1 --heldout 16 --lr 3e-3 --warmup-steps 2 --quiet", g_bin, g_model, g_data,
             scratch("one_rank"));
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 0, "one rank: exit %d: %s", rc, err);
    snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 timeout 600 mpirun -np 2 --oversubscribe "
             "--allow-run-as-root %s train sft --model %s --data %s --out %s --max-steps 6 --batch 2 "
             "--threads 1 --heldout 16 --lr 3e-3 --warmup-steps 2 --quiet", g_bin, g_model, g_data,
             scratch("two_ranks"));
    char outp[1200];
    snprintf(outp, sizeof outp, "%s", scratch("two_ranks_stdout.txt"));
    rc = sh_out(cmd, outp, err, sizeof err);
    CHECK(rc == 0, "mpirun -np 2: exit %d: %s", rc, err);
    char text[4096];
    slurp(outp, text, sizeof text);
    if (!strstr(text, "on 2 ranks")) {
        SKIP("ergo built without Open MPI (rank 0 trained every example): data parallelism not tested");
        return;
    }
    char a[1300], b[1300];
    snprintf(a, sizeof a, "%s/checkpoint-6/trainer_state.safetensors", scratch("one_rank"));
    snprintf(b, sizeof b, "%s/checkpoint-6/trainer_state.safetensors", scratch("two_ranks"));
    size_t na = 0, nb = 0;
    float *wa = trf_read_all_f32(a, &na), *wb = trf_read_all_f32(b, &nb);
    double worst = 0;
    for (size_t i = 0; wa && wb && na == nb && i < na; i++) worst = fmax(worst, fabs((double)wa[i] - (double)wb[i]));
    /* the ranks sum the gradients in another order (f32 rounding, about 1e-7 relative);
     * Adam's m / sqrt(v) can magnify that where a gradient is near 0, over 6 steps of
     * lr 3e-3: well under 1e-4 */
    CHECK(wa && wb && na == nb && worst < 1e-4, "2 ranks vs 1: max |diff| %g over %zu floats", worst, na);
    printf("  train_sft: mpirun -np 2 vs one process: max |diff| of masters and moments %.3g\n", worst);
    free(wa), free(wb);
}

static void test_bad_input(void) {
    char cmd[8192], err[4096], data[1200];
    snprintf(data, sizeof data, "%s", scratch("bad.jsonl"));
    if (!write_data(data, 40, "{\"messages\": [{\"role\": \"bot\", \"content\": \"hi\"}]}")) return;
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --max-steps 20 --batch 2 "
             "--heldout 2 --threads 2 --quiet", g_bin, g_model, data, scratch("bad_stop"));
    int rc = sh(cmd, err, sizeof err);
    CHECK(rc == 1 && strstr(err, "bad.jsonl:22") && strstr(err, "bot"),
          "a malformed line must stop the run naming file:line: exit %d: %s", rc, err);
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --max-steps 20 --batch 2 "
             "--heldout 2 --threads 2 --skip-bad-lines", g_bin, g_model, data, scratch("bad_skip"));
    char outp[1200], text[2048];
    snprintf(outp, sizeof outp, "%s", scratch("bad_skip_stdout.txt"));
    rc = sh_out(cmd, outp, err, sizeof err);
    slurp(outp, text, sizeof text);
    CHECK(rc == 0 && strstr(err, "skipped") && strstr(err, "bad.jsonl:22") && strstr(text, "1 bad lines skipped"),
          "--skip-bad-lines: exit %d: %s / %s", rc, err, text);
    /* a loss that overflows: norm and head weights scaled to the edge of f32 */
    char path[1024];
    snprintf(path, sizeof path, "%s/checkpoints/cases/flat_new_f32_tied.json", fixtures_dir());
    json_t *root = json_load_path(path, NULL);
    if (!root) return;
    json_object_set_new(root, "dtype", json_string("f32"));
    json_object_set_new(root, "scale", json_pack("{s:f, s:f}", "lm_head", 1e38, "text_norm", 1e38));
    json_object_set_new(json_object_get(root, "config"), "tie_word_embeddings", json_false());
    ckpt_case c;
    ergo_error e2 = {0};
    char nan_model[1200];
    snprintf(nan_model, sizeof nan_model, "%s", scratch("nan_model"));
    int ok = ckpt_case_parse(&c, root, "nan case", &e2) == ERGO_OK;
    json_decref(root);
    if (ok) ok = random_checkpoint_write(&c, nan_model, "assets/qwen2.5-vl-tokenizer", &e2) == ERGO_OK,
            ckpt_case_free(&c);
    CHECK(ok, "nan model: %s", e2.msg);
    if (!ok) return;
    snprintf(cmd, sizeof cmd, "%s train sft --model %s --data %s --out %s --max-steps 3 --heldout 2 "
             "--threads 2 --quiet", g_bin, nan_model, g_data, scratch("nan_run"));
    rc = sh(cmd, err, sizeof err);
    CHECK(rc == 1 && strstr(err, "step 1") && strstr(err, "not finite"),
          "a non-finite loss must stop the run naming the step: exit %d: %s", rc, err);
}

void test_train_sft(void) {
    const char *bin = getenv("ERGO_BIN");
    if (!bin) {
        SKIP("ERGO_BIN not set: the train CLI tests need the ergo binary (make test sets it)");
        return;
    }
    snprintf(g_bin, sizeof g_bin, "%s", bin);
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/train_sft", scratch_dir());
    mkdir(dir, 0755);
    if (!trf_write_tiny_model(g_model, sizeof g_model, scratch("model"))) return;
    snprintf(g_data, sizeof g_data, "%s", scratch("kites.jsonl"));
    if (!write_data(g_data, 200, NULL)) return;
    test_learns();
    test_kill_resume();
    test_mpi();
    test_bad_input();
}
