/* Tests of the command line as a whole (src/cli/cli.c, progress.c, main.c, and the
 * option checking of cmd_run.c / cmd_generate.c), run as $ERGO_BIN (the sanitizer
 * build under `make asan`) on a random checkpoint with the real tokenizer (issue 15):
 * every option value and input file is checked before the model is loaded or
 * quantised, with the right exit status (2 usage, 1 input) and one line that names
 * the option or the file; no weights cache is written when an input is bad;
 * --opt=value, short flags and aliases; --question-file and stdin; ergo's own
 * OMP_NUM_THREADS error (no libgomp warning); --version and help; progress lines on
 * stderr (and none with --quiet); stage 1 streaming before the box line. */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/file.h"
#include "check.h"
#include "kernels/kernels.h"
#include "image/image.h"
#include "io/random_checkpoint.h"
#include "pipeline/viz.h"

static const char *cli_scratch(const char *name) {
    static char bufs[8][1024];
    static int k;
    char *p = bufs[k++ & 7];
    snprintf(p, 1024, "%s/%s", scratch_dir(), name);
    return p;
}

/* Runs `[env] $ERGO_BIN args` (a shell fragment) with stdin from `in` (NULL: /dev/null);
 * stdout and stderr come back in *out and *errtext (malloc'd). */
static int run_ergo(const char *env, const char *args, const char *in, char **out,
                    char **errtext) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s %s %s <%s >%s 2>%s", env ? env : "", getenv("ERGO_BIN"), args,
             in ? in : "/dev/null", cli_scratch("cli.out"), cli_scratch("cli.err"));
    int rc = system(cmd);
    ergo_error err = {0};
    size_t n;
    *out = *errtext = NULL;
    file_read_all(cli_scratch("cli.out"), 1 << 24, out, &n, &err);
    file_read_all(cli_scratch("cli.err"), 1 << 20, errtext, &n, &err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* A refusal is exactly one line "ergo <command>: ..." holding `want`, nothing on stdout. */
static void check_refused(const char *env, const char *args, int want_rc, const char *prefix,
                          const char *want, const char *label) {
    char *out, *e;
    int rc = run_ergo(env, args, NULL, &out, &e);
    const char *nl = e ? strchr(e, '\n') : NULL;
    CHECK(rc == want_rc && e && !strncmp(e, prefix, strlen(prefix)) && nl && !nl[1] &&
              strstr(e, want) && out && !*out,
          "%s: exit %d, stderr \"%s\", stdout \"%.200s\" (want exit %d and one line with \"%s\")",
          label, rc, e ? e : "", out ? out : "", want_rc, want);
    free(out);
    free(e);
}

static void test_usage_and_inputs(const char *dir) {
    char a[8192];
    const char *img = "tests/fixtures/text/img_84x112.png";
    /* values out of range, the range stated; --opt=value and -n */
    snprintf(a, sizeof a, "run -m %s -i %s -p Q --max-new-tokens 0", dir, img);
    check_refused(NULL, a, 2, "ergo run: ", "--max-new-tokens: 0 is below 1 (the range is 1..",
                  "max-new-tokens 0");
    snprintf(a, sizeof a, "run --model=%s --image=%s --question=Q -n 99999999", dir, img);
    check_refused(NULL, a, 2, "ergo run: ", "--max-new-tokens: 99999999 is above the cap 1048576",
                  "max-new-tokens over the cap");
    snprintf(a, sizeof a, "run -m %s -i %s -p Q --threads=x", dir, img);
    check_refused(NULL, a, 2, "ergo run: ", "--threads: `x' is not an integer (1..1024)",
                  "threads not a number");
    /* unknown options and a missing last value are told apart */
    snprintf(a, sizeof a, "run -m %s -i %s -p Q --bogus", dir, img);
    check_refused(NULL, a, 2, "ergo run: ", "unknown option `--bogus'", "unknown last flag");
    snprintf(a, sizeof a, "run -m %s -p Q --image", dir);
    check_refused(NULL, a, 2, "ergo run: ", "--image needs a value", "missing last value");
    snprintf(a, sizeof a, "run -m %s -i %s -p Q --mode fast", dir, img);
    check_refused(NULL, a, 2, "ergo run: ", "--mode fast: use ergo, baseline or both", "bad mode");
    snprintf(a, sizeof a, "run -m %s -i %s -p Q --weights q5", dir, img);
    check_refused(NULL, a, 2, "ergo run: ", "--weights q5", "bad weights");
    /* generate: a bad sampling value is a usage error before the load (no such model) */
    check_refused(NULL, "generate -m /nonexistent/model -p x --temperature -1", 2,
                  "ergo generate: ", "--temperature: -1 is below", "generate temperature -1");
    check_refused(NULL, "generate -m /nonexistent/model -p x --max-new-tokens=0", 2,
                  "ergo generate: ", "--max-new-tokens: 0 is below 1", "generate max-new-tokens 0");
    check_refused(NULL, "generate -m /nonexistent/model --question x --top-p 2", 2,
                  "ergo generate: ", "--top-p: 2 is above the cap 1", "generate top-p 2");

    /* bad inputs, before the model is loaded or quantised: no cache is written */
    char cache[1100];
    snprintf(cache, sizeof cache, "%s/ergo-weights.q8", dir);
    remove(cache);
    snprintf(a, sizeof a, "run -m %s --weights q8 --image %s -p Q", dir,
             cli_scratch("missing.jpg"));
    check_refused(NULL, a, 1, "ergo run: ", "missing.jpg", "missing image");
    CHECK(!file_exists(cache), "a bad image still wrote the weights cache %s", cache);
    snprintf(a, sizeof a, "generate -m %s --weights q4 -i %s -p Q", dir, cli_scratch("missing.jpg"));
    check_refused(NULL, a, 1, "ergo generate: ", "missing.jpg", "generate missing image");
    snprintf(cache, sizeof cache, "%s/ergo-weights.q4", dir);
    CHECK(!file_exists(cache), "a bad image still wrote the weights cache %s", cache);

    /* a 20000x20 image: the file, its real size and the resized one */
    image wide = {20000, 20, calloc((size_t)20000 * 20 * 3, 1)};
    ergo_error err = {0};
    const char *wide_path = cli_scratch("wide_20000x20.png");
    CHECK(wide.rgb && viz_write_png(&wide, wide_path, &err) == ERGO_OK, "writing %s: %s",
          wide_path, err.msg);
    image_free(&wide);
    snprintf(a, sizeof a, "run -m %s --weights q8 -i %s -p Q", dir, wide_path);
    check_refused(NULL, a, 1, "ergo run: ",
                  "wide_20000x20.png (20000x20 image, 19992x28 after ERGO's stage-1 resize): "
                  "smart_resize: absolute aspect ratio",
                  "aspect ratio over 200");
    snprintf(cache, sizeof cache, "%s/ergo-weights.q8", dir);
    CHECK(!file_exists(cache), "an image over the aspect ratio still wrote %s", cache);
    snprintf(a, sizeof a, "generate -m %s -i %s -p Q", dir, wide_path);
    check_refused(NULL, a, 1, "ergo generate: ", "wide_20000x20.png (20000x20 image): ",
                  "generate aspect ratio");

    /* invalid UTF-8 is located in the question itself */
    const char *bad = cli_scratch("bad_utf8.txt");
    CHECK(file_write_all(bad, "abc\xff" "d\n", 6, &err) == ERGO_OK, "%s", err.msg);
    snprintf(a, sizeof a, "run -m %s -i %s --question-file %s", dir, img, bad);
    check_refused(NULL, a, 1, "ergo run: ", "bad_utf8.txt: invalid UTF-8 at byte 3",
                  "invalid UTF-8 in the question file");
    snprintf(a, sizeof a, "run -m %s -i %s --question-file %s", dir, img,
             cli_scratch("no_question.txt"));
    check_refused(NULL, a, 1, "ergo run: ", "no_question.txt", "missing question file");

    /* OMP_NUM_THREADS: ergo's own line, not libgomp's warning */
    snprintf(a, sizeof a, "run -m %s -i %s -p Q", dir, img);
    check_refused("OMP_NUM_THREADS=abc", a, 2, "ergo run: ", "OMP_NUM_THREADS=abc: not a thread count",
                  "bad OMP_NUM_THREADS");
    check_refused("OMP_NUM_THREADS=0", a, 2, "ergo run: ", "OMP_NUM_THREADS=0", "OMP_NUM_THREADS 0");
}

static void test_version_help(void) {
    char *out, *e;
    int rc = run_ergo(NULL, "--version", NULL, &out, &e);
    CHECK(rc == 0 && out && !strncmp(out, "ergo ", 5) && strstr(out, "(commit ") &&
              strstr(out, "\nisa: ") && strstr(out, "\nbuild: "),
          "--version: exit %d, \"%s\"", rc, out ? out : "");
    free(out), free(e);
    rc = run_ergo(NULL, "help", NULL, &out, &e);
    const char *cmds[] = {"run", "generate", "download", "inspect", "tokenize", "preprocess",
                          "bench", "bench model", "make-checkpoint", "synth"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        CHECK(rc == 0 && out && strstr(out, cmds[i]), "help lists %s: \"%s\"", cmds[i],
              out ? out : "");
    free(out), free(e);
    rc = run_ergo(NULL, "help run", NULL, &out, &e);
    CHECK(rc == 0 && out && strstr(out, "usage: ergo run"), "help run: exit %d", rc);
    free(out), free(e);
    rc = run_ergo(NULL, "help nope", NULL, &out, &e);
    CHECK(rc == 2 && e && strstr(e, "unknown command `nope'"), "help nope: exit %d", rc);
    free(out), free(e);
}

static void test_runs(const char *dir) {
    char a[8192], *out, *e;
    const char *img = "tests/fixtures/text/img_84x112.png";
    const char *common = "-n 3 --max-vision-tokens 16 --stage1-text '<zoom>[2, 2, 20, 20]</zoom>'";
    /* the question from stdin; progress on; the stage-1 text, then the box line */
    const char *q = cli_scratch("question.txt");
    ergo_error err = {0};
    CHECK(file_write_all(q, "Where is it?\n", 13, &err) == ERGO_OK, "%s", err.msg);
    snprintf(a, sizeof a, "run -m %s -i %s --question-file - -t 1 %s", dir, img, common);
    int rc = run_ergo("ERGO_PROGRESS=1", a, q, &out, &e);
    const char *s1 = out ? strstr(out, "<zoom>[2, 2, 20, 20]</zoom>\n[box [2, 2, 20, 20]") : NULL;
    CHECK(rc == 0 && s1 == out && strstr(out, "\n[answer: "),
          "run (stdin question): exit %d, stdout \"%s\", stderr \"%s\"", rc, out ? out : "",
          e ? e : "");
    CHECK(e && strstr(e, "ergo: load ") && strstr(e, "ergo: ERGO stage 1 (the downsampled image): ") &&
              strstr(e, "ergo: ERGO stage 2 (the crop): "),
          "progress lines: \"%s\"", e ? e : "");
    free(out), free(e);
    /* --quiet: nothing on stderr; the alias --prompt */
    snprintf(a, sizeof a, "run -m %s -i %s --prompt Where --quiet %s", dir, img, common);
    rc = run_ergo("ERGO_PROGRESS=1", a, NULL, &out, &e);
    CHECK(rc == 0 && e && !*e && out && strstr(out, "[box "), "run --quiet: exit %d, stderr \"%s\"",
          rc, e ? e : "");
    free(out), free(e);
    /* generate: load, prefill and decode lines */
    snprintf(a, sizeof a, "generate -m %s -p Hi -n 2 --threads 1", dir);
    rc = run_ergo("ERGO_PROGRESS=1", a, NULL, &out, &e);
    CHECK(rc == 0 && e && strstr(e, "ergo: load ") && strstr(e, "ergo: prefill ") &&
              strstr(e, "ergo: decode: 2 tokens"),
          "generate progress: exit %d, stderr \"%s\"", rc, e ? e : "");
    free(out), free(e);
    /* --compute anywhere on the line: bf16 (where the CPU has it) runs; a bad value or an
     * unsupported one is a usage error naming it */
    check_refused(NULL, "run --compute fp8 -m x", 2, "ergo: ", "--compute fp8: unknown",
                  "--compute fp8");
    check_refused("ERGO_COMPUTE=fp8", "generate -m x -p Hi", 2, "ergo: ", "--compute fp8",
                  "ERGO_COMPUTE=fp8");
    check_refused(NULL, "generate -m x --compute", 2, "ergo: ", "--compute needs a value",
                  "--compute without a value");
    if (compute_default() == COMPUTE_BF16) {
        snprintf(a, sizeof a, "run -m %s -i %s --prompt Where --compute bf16 %s", dir, img, common);
        rc = run_ergo(NULL, a, NULL, &out, &e);
        CHECK(rc == 0 && out && strstr(out, "[box "), "run --compute bf16: exit %d, stderr \"%s\"",
              rc, e ? e : "");
        free(out), free(e);
    }
    if (cpu_best_isa() >= ISA_AVX2) /* the AVX2 table has no bf16 kernel */
        check_refused("ERGO_ISA=avx2", "generate -m x --compute=bf16", 2, "ergo: ",
                      "no bf16 dot-product", "--compute bf16 without the instructions");
}

/* ergo chat: two turns on one session, an image attached between them, a bad one
 * refused without ending the conversation. */
static void test_chat(const char *dir) {
    const char *in = cli_scratch("chat_in.txt");
    const char *lines = "Hi there\n/image tests/fixtures/text/img_84x112.png\nWhat is it?\n"
                        "/image nope.png\n/quit\nnot read\n";
    ergo_error err = {0};
    CHECK(file_write_all(in, lines, strlen(lines), &err) == ERGO_OK, "%s", err.msg);
    char a[4096], *out, *e;
    snprintf(a, sizeof a, "chat -m %s -n 5 --greedy -t 1", dir);
    int rc = run_ergo("ERGO_PROGRESS=1", a, in, &out, &e);
    int n_lines = 0;
    for (const char *p = out; p && *p; p++) n_lines += *p == '\n';
    const char *p1 = e ? strstr(e, "ergo: prefill ") : NULL;
    const char *p2 = p1 ? strstr(p1 + 1, "ergo: prefill ") : NULL;
    CHECK(rc == 0 && n_lines == 2 && e && strstr(e, "ergo: encode image (112x84): 12 vision tokens") &&
              p2 && strstr(e, "ergo chat: nope.png: ") && !strstr(p2 + 1, "ergo: prefill "),
          "chat: exit %d, %d answer lines, stdout \"%s\", stderr \"%s\"", rc, n_lines,
          out ? out : "", e ? e : "");
    free(out), free(e);
    snprintf(a, sizeof a, "chat -m %s -i %s", dir, cli_scratch("missing.jpg"));
    check_refused(NULL, a, 1, "ergo chat: ", "missing.jpg", "chat with a missing image");
}

void test_cli(void) {
    if (!getenv("ERGO_BIN")) {
        SKIP("ERGO_BIN not set: the CLI tests need the ergo binary (make test sets it)");
        return;
    }
    ergo_error err = {0};
    ckpt_case c;
    const char *dir = cli_scratch("cli_model");
    char model_dir[1024];
    snprintf(model_dir, sizeof model_dir, "%s", dir);
    if (ckpt_case_load(&c, "tests/fixtures/checkpoints/cases/flat_legacy_bf16.json", &err) ||
        random_checkpoint_write(&c, model_dir, "assets/qwen2.5-vl-tokenizer", &err)) {
        CHECK(0, "writing the checkpoint: %s", err.msg);
        return;
    }
    ckpt_case_free(&c);
    test_version_help();
    test_usage_and_inputs(model_dir);
    test_runs(model_dir);
    test_chat(model_dir);
}
