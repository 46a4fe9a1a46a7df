/*
 * test_tokenizer.c - the tokenizer against the reference (tokenizers 0.22.1 /
 * transformers 4.56.2), fixtures from tools/fixtures_tokenizer.py:
 *   encode.json     ids of ~130 texts with the real Qwen2.5-VL tokenizer.json, and
 *                   the same with its merges rewritten as "a b" strings (scratch dir)
 *   decode.json     decode with/without skip_special_tokens, cut multi-byte characters;
 *                   the streaming decoder must give the same text in complete characters
 *   normalize.json  NFC
 *   variants.json   small tokenizer.json files using the options Qwen does not
 *                   (added-token flags, byte fallback, unk, ignore_merges, ...)
 *   configs.json    tokenizer_config.json next to two variants, as AutoTokenizer loads
 *                   them: ids, decodes (clean-up), special ids, model_max_length; and
 *                   the configs ergo refuses
 * plus refusals with their messages, the CLI (ERGO_BIN) and the fuzz corpus replay.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <utf8proc.h>

#include "base/file.h"
#include "check.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_fuzz.h"
#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

#define ASSETS "assets/qwen2.5-vl-tokenizer"

/* Fixture JSON: texts may hold U+0000, which jansson refuses by default. */
static json_t *load_fixture(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/%s", fixtures_dir(), name);
    json_error_t je;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &je);
    CHECK(j != NULL, "%s: %s (line %d) - run tools/fixtures_tokenizer.py", path, je.text, je.line);
    return j;
}

static int ids_from_json(const json_t *arr, tok_ids *out) {
    out->n = 0;
    size_t i;
    const json_t *v;
    ergo_error err;
    json_array_foreach(arr, i, v) if (tok_ids_push(out, (int32_t)json_integer_value(v), &err)) return 0;
    return 1;
}

static void check_text(const char *got, size_t got_n, const json_t *want, const char *label) {
    const char *w = json_string_value(want);
    size_t wn = json_string_length(want);
    size_t i = 0;
    while (i < got_n && i < wn && got[i] == w[i]) i++;
    CHECK(got_n == wn && i == wn, "%s: text differs at byte %zu (lengths %zu, want %zu)", label, i,
          got_n, wn);
}

/* Encodes every fixture text; returns the number of bytes encoded. */
static size_t check_encode_corpus(const tokenizer *tok, const json_t *cases, const char *label) {
    size_t i, bytes = 0;
    const json_t *c;
    tok_ids want = {0}, got = {0};
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        ergo_error err = {0};
        char name[160];
        snprintf(name, sizeof name, "%s %s", label, json_string_value(json_object_get(c, "name")));
        got.n = 0;
        ergo_status st = tokenizer_encode(tok, json_string_value(text), json_string_length(text), &got, &err);
        CHECK(st == ERGO_OK, "%s: %s", name, err.msg);
        ids_from_json(json_object_get(c, "ids"), &want);
        CHECK_EQ_I32(got.v, got.n, want.v, want.n, name);
        bytes += json_string_length(text);
    }
    tok_ids_free(&want);
    tok_ids_free(&got);
    return bytes;
}

/* One-shot decode against the fixture, and streaming against one-shot. */
static void check_decode_case(const tokenizer *tok, const int32_t *ids, size_t n, int skip,
                              const json_t *want, const char *label) {
    ergo_error err = {0};
    tok_text one = {0}, streamed = {0};
    ergo_status st = tokenizer_decode(tok, ids, n, skip, &one, &err);
    CHECK(st == ERGO_OK, "%s: %s", label, err.msg);
    if (want) check_text(one.s, one.n, want, label);
    tokenizer_stream s;
    tokenizer_stream_init(&s, tok, skip);
    int complete = 1;
    for (size_t i = 0; i < n; i++) {
        size_t before = streamed.n;
        st = tokenizer_stream_push(&s, ids[i], &streamed, &err);
        CHECK(st == ERGO_OK, "%s: stream push %zu: %s", label, i, err.msg);
        complete &= utf8_first_invalid((const uint8_t *)streamed.s + before, streamed.n - before) ==
                    streamed.n - before;
    }
    tokenizer_stream_finish(&s, &streamed, &err);
    CHECK(complete, "%s: the stream emitted a partial character", label);
    CHECK(streamed.n == one.n && (one.n == 0 || memcmp(streamed.s, one.s, one.n) == 0),
          "%s: streamed text (%zu bytes) differs from one-shot decode (%zu bytes)", label,
          streamed.n, one.n);
    tok_text_free(&one);
    tok_text_free(&streamed);
}

static void check_decode_cases(const tokenizer *tok, const json_t *cases, const char *label) {
    size_t i;
    const json_t *c;
    tok_ids ids = {0};
    json_array_foreach(cases, i, c) {
        char name[160];
        const json_t *nm = json_object_get(c, "name");
        snprintf(name, sizeof name, "%s decode %s%zu", label, nm ? json_string_value(nm) : "#", i);
        ids_from_json(json_object_get(c, "ids"), &ids);
        check_decode_case(tok, ids.v, ids.n, json_is_true(json_object_get(c, "skip_special")),
                          json_object_get(c, "text"), name);
    }
    tok_ids_free(&ids);
}

/* ---------------------------------------------------------------- the real tokenizer */

/* Writes the Qwen tokenizer.json with its merges as legacy "a b" strings. */
static int write_string_merges(const char *path) {
    json_error_t je;
    json_t *root = json_load_file(ASSETS "/tokenizer.json", 0, &je);
    if (!root) return 0;
    json_t *merges = json_object_get(json_object_get(root, "model"), "merges");
    size_t i;
    json_t *m;
    int ok = json_is_array(merges);
    json_array_foreach(merges, i, m) {
        const char *a = json_string_value(json_array_get(m, 0)), *b = json_string_value(json_array_get(m, 1));
        if (!a || !b) {
            ok = 0;
            break;
        }
        char *s = malloc(strlen(a) + strlen(b) + 2);
        sprintf(s, "%s %s", a, b);
        json_array_set_new(merges, i, json_string(s));
        free(s);
    }
    ok = ok && json_dump_file(root, path, JSON_COMPACT) == 0;
    json_decref(root);
    return ok;
}

static void test_real_tokenizer(const json_t *encode, const json_t *decode) {
    ergo_error err = {0};
    tokenizer *tok = NULL;
    ergo_status st = tokenizer_load(&tok, ASSETS, &err);
    CHECK(st == ERGO_OK, "load: %s", err.msg);
    if (st != ERGO_OK) return;
    CHECK_EQ_INT(tokenizer_n_ids(tok), 151665, "ids");
    CHECK_EQ_INT(tokenizer_token_id(tok, "<|image_pad|>", 13), 151655, "<|image_pad|> id");
    CHECK_EQ_INT(tokenizer_token_id(tok, "\xc4\xa0", 2), 220, "byte-level space id");
    CHECK(tokenizer_is_special(tok, 151645) && !tokenizer_is_special(tok, 151657) &&
              !tokenizer_is_special(tok, 220),
          "special flags of <|im_end|>, <tool_call>, space");

    size_t bytes = check_encode_corpus(tok, encode, "qwen");
    CHECK(bytes > 50000, "the corpus is the whole fixture (%zu bytes)", bytes);
    check_decode_cases(tok, decode, "qwen");

    /* The decode of each corpus encoding, streamed, must equal the one-shot. */
    size_t i;
    const json_t *c;
    tok_ids ids = {0};
    json_array_foreach(encode, i, c) {
        ids_from_json(json_object_get(c, "ids"), &ids);
        check_decode_case(tok, ids.v, ids.n, 0, NULL, json_string_value(json_object_get(c, "name")));
    }

    /* Bad input to encode and decode. */
    const char bad[] = "ok \xe2\x82 then";
    st = tokenizer_encode(tok, bad, sizeof bad - 1, &ids, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "invalid UTF-8 at byte 3"), "invalid UTF-8: %s", err.msg);
    const char surrogate[] = "\xed\xa0\x80";
    st = tokenizer_encode(tok, surrogate, 3, &ids, &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "invalid UTF-8 at byte 0"), "surrogate: %s", err.msg);
    int32_t out_of_range[] = {9707, 151665};
    tok_text t = {0};
    st = tokenizer_decode(tok, out_of_range, 2, 0, &t, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "token id 151665 is not in the vocabulary"),
          "decode out of range: %s", err.msg);
    int32_t negative[] = {-5};
    st = tokenizer_decode(tok, negative, 1, 1, &t, &err);
    CHECK(st == ERGO_E_ARG && strstr(err.msg, "token id -5"), "decode negative: %s", err.msg);
    tokenizer_stream s;
    tokenizer_stream_init(&s, tok, 0);
    st = tokenizer_stream_push(&s, 1 << 30, &t, &err);
    CHECK(st == ERGO_E_ARG, "stream push of a bad id: %s", err.msg);
    tok_text_free(&t);
    tok_ids_free(&ids);
    tokenizer_free(tok);

    /* Legacy merges ("a b" strings), as published Qwen2.5-VL checkpoints store them. */
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer-string-merges.json", scratch_dir());
    CHECK(write_string_merges(path), "cannot write %s", path);
    st = tokenizer_load_file(&tok, path, &err);
    CHECK(st == ERGO_OK, "string merges: %s", err.msg);
    if (st == ERGO_OK) {
        check_encode_corpus(tok, encode, "qwen-string-merges");
        tokenizer_free(tok);
    }
}

/* ---------------------------------------------------------------- variants */

static void test_variants(const json_t *variants) {
    size_t i;
    const json_t *v;
    json_array_foreach(variants, i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        char path[1024];
        snprintf(path, sizeof path, "%s/tokenizer/%s", fixtures_dir(),
                 json_string_value(json_object_get(v, "file")));
        ergo_error err = {0};
        tokenizer *tok;
        ergo_status st = tokenizer_load_file(&tok, path, &err);
        CHECK(st == ERGO_OK, "variant %s: %s", name, err.msg);
        if (st != ERGO_OK) continue;
        json_t *enc = json_object_get(v, "encode");
        size_t k;
        json_t *c;
        tok_ids got = {0}, want = {0};
        json_array_foreach(enc, k, c) {
            const json_t *text = json_object_get(c, "text");
            char label[160];
            snprintf(label, sizeof label, "variant %s text %zu", name, k);
            got.n = 0;
            st = tokenizer_encode(tok, json_string_value(text), json_string_length(text), &got, &err);
            CHECK(st == ERGO_OK, "%s: %s", label, err.msg);
            ids_from_json(json_object_get(c, "ids"), &want);
            CHECK_EQ_I32(got.v, got.n, want.v, want.n, label);
        }
        tok_ids_free(&got);
        tok_ids_free(&want);
        check_decode_cases(tok, json_object_get(v, "decode"), name);
        tokenizer_free(tok);
    }
}

/* ---------------------------------------------------------------- tokenizer_config.json */

/* Writes dir/tokenizer.json (a copy of the fixture variant) and dir/tokenizer_config.json. */
static int write_config_dir(const char *dir, const char *variant, const char *config) {
    char src[1024], dst[1024];
    ergo_error err = {0};
    char *buf;
    size_t n;
    snprintf(src, sizeof src, "%s/tokenizer/%s", fixtures_dir(), variant);
    if ((mkdir(dir, 0755) != 0 && errno != EEXIST) || file_read_all(src, 64u << 20, &buf, &n, &err))
        return 0;
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    int ok = file_write_all(dst, buf, n, &err) == ERGO_OK;
    free(buf);
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    if (config) ok = ok && file_write_all(dst, config, strlen(config), &err) == ERGO_OK;
    return ok;
}

static void check_config_case(const json_t *c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/config-%s", scratch_dir(), name);
    CHECK(write_config_dir(dir, json_string_value(json_object_get(c, "file")),
                           json_string_value(json_object_get(c, "config_text"))),
          "config %s: cannot write %s", name, dir);
    ergo_error err = {0};
    tokenizer *tok;
    ergo_status st = tokenizer_load(&tok, dir, &err);
    CHECK(st == ERGO_OK, "config %s: %s", name, err.msg);
    if (st != ERGO_OK) return;
    const tokenizer_settings *set = tokenizer_get_settings(tok);
    const json_t *mml = json_object_get(c, "model_max_length");
    int64_t want_mml = json_is_integer(mml) ? (int64_t)json_integer_value(mml) : INT64_MAX;
    CHECK(set->has_config &&
              set->clean_up_tokenization_spaces ==
                  json_is_true(json_object_get(c, "clean_up_tokenization_spaces")) &&
              set->split_special_tokens == json_is_true(json_object_get(c, "split_special_tokens")) &&
              set->model_max_length == want_mml,
          "config %s: settings %d %d %d %lld, want clean_up %d split %d max %lld", name,
          set->has_config, set->clean_up_tokenization_spaces, set->split_special_tokens,
          (long long)set->model_max_length,
          json_is_true(json_object_get(c, "clean_up_tokenization_spaces")),
          json_is_true(json_object_get(c, "split_special_tokens")), (long long)want_mml);
    size_t k;
    const json_t *e;
    tok_ids got = {0}, want = {0};
    json_array_foreach(json_object_get(c, "encode"), k, e) {
        const json_t *text = json_object_get(e, "text");
        char label[160];
        snprintf(label, sizeof label, "config %s text %zu", name, k);
        got.n = 0;
        st = tokenizer_encode(tok, json_string_value(text), json_string_length(text), &got, &err);
        CHECK(st == ERGO_OK, "%s: %s", label, err.msg);
        ids_from_json(json_object_get(e, "ids"), &want);
        CHECK_EQ_I32(got.v, got.n, want.v, want.n, label);
    }
    char label[160];
    snprintf(label, sizeof label, "config %s", name);
    check_decode_cases(tok, json_object_get(c, "decode"), label);
    /* Special ids: tokenizer.json's, plus the added tokens the config names. */
    ids_from_json(json_object_get(c, "special_ids"), &want);
    got.n = 0;
    for (int32_t id = 0; id < tokenizer_n_ids(tok); id++)
        if (tokenizer_is_special(tok, id)) tok_ids_push(&got, id, &err);
    snprintf(label, sizeof label, "config %s special ids", name);
    CHECK_EQ_I32(got.v, got.n, want.v, want.n, label);
    tok_ids_free(&got);
    tok_ids_free(&want);
    tokenizer_free(tok);
}

/* What ergo says when it refuses each of the fixture's refused configs. */
static const struct {
    const char *name, *needle;
} config_refusals[] = {
    {"new_special", "additional_special_tokens[0] \"<new>\" is not an added token of tokenizer.json"},
    {"vocab_special", "eos_token \"ab\" is not an added token"},
    {"default_specials", "eos_token (Qwen2TokenizerFast's default) \"<|endoftext|>\" is not an added token"},
    {"decoder_flags", "\"[L]\" has other flags than in tokenizer.json"},
    {"decoder_extra", "added_tokens_decoder[500] \"<extra>\" is not an added token"},
    {"additional_dict_flags", "additional_special_tokens[0] \"[L]\" has other flags"},
    {"other_class", "tokenizer_class GPT2Tokenizer is not supported"},
    {"prefix_space_bytelevel", "add_prefix_space true on a single ByteLevel pre-tokenizer"},
};

static void expect_config_refused(const char *label, const char *variant, const char *config,
                                  const char *needle) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/config-%s", scratch_dir(), label);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK(write_config_dir(dir, variant, config), "config %s: cannot write %s", label, dir);
    ergo_error err = {0};
    tokenizer *tok = (tokenizer *)1;
    ergo_status st = tokenizer_load(&tok, dir, &err);
    CHECK(st != ERGO_OK && tok == NULL && strstr(err.msg, needle) && strstr(err.msg, path),
          "config %s: got status %d, message \"%s\", want one naming %s and \"%s\"", label,
          (int)st, err.msg, path, needle);
    if (st == ERGO_OK) tokenizer_free(tok);
}

/* clean_up_tokenization cut at tokconfig_clean_up_stable: the two parts cleaned
 * apart equal the whole cleaned (what streaming relies on). */
static void test_clean_up_cut(void) {
    static const char alphabet[] = " .?!,'ntmsvexa\xc3\xa9";
    uint64_t x = 12345;
    int bad = 0;
    for (int trial = 0; trial < 3000 && !bad; trial++) {
        char s[24];
        size_t n = 0;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t len = (size_t)(x >> 59) + 1; /* 1..32, capped */
        if (len > sizeof s) len = sizeof s;
        while (n < len) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            size_t k = (size_t)(x >> 33) % (sizeof alphabet - 3);
            if (k == sizeof alphabet - 4 && n + 2 <= len) {
                s[n++] = '\xc3', s[n++] = '\xa9'; /* é, a character outside the patterns */
            } else if (k < sizeof alphabet - 4) {
                s[n++] = alphabet[k];
            } else {
                break;
            }
        }
        ergo_error err;
        tok_text whole = {0};
        tok_text_append(&whole, s, n, &err);
        tokconfig_clean_up(&whole, 0);
        for (size_t p = 0; p <= n && !bad; p++) {
            size_t cut = tokconfig_clean_up_stable(s, p);
            tok_text a = {0}, b = {0};
            tok_text_append(&a, s, cut, &err);
            tok_text_append(&b, s + cut, n - cut, &err);
            tokconfig_clean_up(&a, 0);
            tokconfig_clean_up(&b, 0);
            tok_text_append(&a, b.s, b.n, &err);
            if (a.n != whole.n || memcmp(a.s, whole.s, a.n)) {
                bad = 1;
                CHECK(0, "clean-up cut at %zu of \"%.*s\" changes the result", cut, (int)n, s);
            }
            tok_text_free(&a);
            tok_text_free(&b);
        }
        tok_text_free(&whole);
    }
    CHECK(!bad, "clean-up cuts");
}

static void test_configs(const json_t *configs) {
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(configs, "cases"), i, c) check_config_case(c);
    size_t n_refused = 0;
    json_array_foreach(json_object_get(configs, "refused"), i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *needle = NULL;
        for (size_t k = 0; k < sizeof config_refusals / sizeof config_refusals[0]; k++)
            if (!strcmp(name, config_refusals[k].name)) needle = config_refusals[k].needle;
        CHECK(needle != NULL, "refused config %s: no expected message in the test", name);
        if (!needle) continue;
        expect_config_refused(name, json_string_value(json_object_get(c, "file")),
                              json_string_value(json_object_get(c, "config_text")), needle);
        n_refused++;
    }
    CHECK(n_refused == sizeof config_refusals / sizeof config_refusals[0],
          "%zu refused configs in the fixture, %zu in the test", n_refused,
          sizeof config_refusals / sizeof config_refusals[0]);

    /* The Qwen config: its settings, and (test_real_tokenizer) its ids. */
    ergo_error err = {0};
    tokenizer *tok;
    ergo_status st = tokenizer_load(&tok, ASSETS, &err);
    CHECK(st == ERGO_OK, "qwen: %s", err.msg);
    if (st == ERGO_OK) {
        const json_t *q = json_object_get(configs, "qwen");
        const tokenizer_settings *set = tokenizer_get_settings(tok);
        CHECK(set->has_config &&
                  set->model_max_length == json_integer_value(json_object_get(q, "model_max_length")) &&
                  set->clean_up_tokenization_spaces ==
                      json_is_true(json_object_get(q, "clean_up_tokenization_spaces")) &&
                  set->split_special_tokens == json_is_true(json_object_get(q, "split_special_tokens")),
              "qwen settings: max %lld clean_up %d split %d", (long long)set->model_max_length,
              set->clean_up_tokenization_spaces, set->split_special_tokens);
        tokenizer_free(tok);
    }

    /* Without a config: tokenizers' semantics and the defaults. */
    const char *pairs = "variants/pairs.json";
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/config-none", scratch_dir());
    CHECK(write_config_dir(dir, pairs, NULL), "cannot write %s", dir);
    st = tokenizer_load(&tok, dir, &err);
    CHECK(st == ERGO_OK, "no config: %s", err.msg);
    if (st == ERGO_OK) {
        const tokenizer_settings *set = tokenizer_get_settings(tok);
        CHECK(!set->has_config && !set->clean_up_tokenization_spaces &&
                  !set->split_special_tokens && set->model_max_length == INT64_MAX,
              "no config: defaults");
        tokenizer_free(tok);
    }

    /* Refusals that need no reference: bad files and settings ergo does not read. */
    const char *specials = "\"eos_token\":\"<|s|>\",\"pad_token\":null,\"unk_token\":null";
    char cfg[1024];
    expect_config_refused("bad_json", pairs, "{\"eos_token\": }", "invalid JSON at byte");
    expect_config_refused("dup_key", pairs, "{\"eos_token\":null,\"eos_token\":null}", "duplicate object key");
    expect_config_refused("not_object", pairs, "[]", "not a JSON object");
    snprintf(cfg, sizeof cfg, "{%s,\"clean_up_tokenization_spaces\":1}", specials);
    expect_config_refused("clean_up_int", pairs, cfg, "key `clean_up_tokenization_spaces' is not a boolean");
    snprintf(cfg, sizeof cfg, "{%s,\"model_max_length\":-4}", specials);
    expect_config_refused("max_negative", pairs, cfg, "model_max_length is not a non-negative integer");
    snprintf(cfg, sizeof cfg, "{%s,\"max_len\":1.5}", specials);
    expect_config_refused("max_len_fraction", pairs, cfg, "max_len is not a non-negative integer");
    snprintf(cfg, sizeof cfg, "{%s,\"tokenizer_file\":null}", specials);
    expect_config_refused("tokenizer_file", pairs, cfg, "tokenizer_file is not supported");
    snprintf(cfg, sizeof cfg, "{%s,\"from_slow\":true}", specials);
    expect_config_refused("from_slow", pairs, cfg, "from_slow is not supported");
    snprintf(cfg, sizeof cfg, "{%s,\"additional_special_tokens\":\"[L]\"}", specials);
    expect_config_refused("additional_not_list", pairs, cfg, "additional_special_tokens is not a list");
    snprintf(cfg, sizeof cfg, "{%s,\"extra_special_tokens\":[\"[L]\"]}", specials);
    expect_config_refused("extra_not_object", pairs, cfg, "extra_special_tokens is not an object");
    snprintf(cfg, sizeof cfg, "{%s,\"bos_token\":{\"content\":\"[L]\"}}", specials);
    expect_config_refused("dict_untyped", pairs, cfg, "bos_token is a dict without \"__type\"");
    snprintf(cfg, sizeof cfg, "{%s,\"bos_token\":7}", specials);
    expect_config_refused("special_number", pairs, cfg, "bos_token is neither a string nor an AddedToken");
    snprintf(cfg, sizeof cfg, "{%s,\"added_tokens_decoder\":{\"400\":{\"content\":\"[L]\",\"lstrip\":true,\"special\":true}}}", specials);
    expect_config_refused("decoder_id", pairs, cfg, "\"[L]\" has id 408 in tokenizer.json");
    snprintf(cfg, sizeof cfg, "{%s,\"added_tokens_decoder\":{\"x\":{\"content\":\"[L]\"}}}", specials);
    expect_config_refused("decoder_key", pairs, cfg, "added_tokens_decoder[x]: the key is not an id");
    snprintf(cfg, sizeof cfg, "{%s,\"added_tokens_decoder\":{\"408\":{\"content\":\"[L]\",\"color\":true}}}", specials);
    expect_config_refused("decoder_unknown_key", pairs, cfg, "unknown key `color'");
    /* Without added_tokens_decoder transformers also reads special_tokens_map.json. */
    snprintf(dir, sizeof dir, "%s/config-side_file", scratch_dir());
    snprintf(cfg, sizeof cfg, "{%s}", specials);
    CHECK(write_config_dir(dir, pairs, cfg), "cannot write %s", dir);
    char side[1100];
    snprintf(side, sizeof side, "%s/special_tokens_map.json", dir);
    file_write_all(side, "{}", 2, &err);
    expect_config_refused("side_file", pairs, cfg, "so transformers would read");
    test_clean_up_cut();
}

/* ---------------------------------------------------------------- NFC and regex */

static void test_normalize(const json_t *cases) {
    /* The inert table was measured against one utf8proc; another needs a new table. */
    CHECK_EQ_STR(utf8proc_unicode_version(), unicode_tables_utf8proc_version,
                 "utf8proc Unicode version (regenerate with tools/tokenizer_tables.py)");
    size_t i;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        tok_text out = {0};
        ergo_error err = {0};
        ergo_status st = nfc_append(json_string_value(text), json_string_length(text), &out, &err);
        CHECK(st == ERGO_OK, "nfc: %s", err.msg);
        check_text(out.s, out.n, json_object_get(c, "nfc"), json_string_value(json_object_get(c, "name")));
        tok_text_free(&out);
    }
}

/* Does `pattern` (translated, compiled) match the single code point cp? */
static int matches_cp(const pretokenizer *p, pcre2_match_data *md, uint32_t cp) {
    char buf[4];
    size_t n = utf8_encode(cp, buf);
    int rc = pcre2_match(p->re, (PCRE2_SPTR)buf, n, 0, PCRE2_ANCHORED, md, NULL);
    return rc > 0 && pcre2_get_ovector_pointer(md)[1] == n;
}

static void test_regex_classes(void) {
    /* The translated classes agree with the measured Oniguruma tables at every
     * range boundary (and one step outside it). */
    struct {
        const char *pat;
        const uint32_t (*r)[2];
        size_t n;
    } cls[] = {{"\\s", onig_space, onig_space_n},
               {"\\p{L}", onig_letter, onig_letter_n},
               {"\\p{N}", onig_number, onig_number_n},
               {"[^\\s\\p{L}\\p{N}]", NULL, 0}};
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    ergo_error err = {0};
    for (int k = 0; k < 3; k++) {
        pretokenizer p;
        CHECK(pretokenize_compile(&p, cls[k].pat, strlen(cls[k].pat), 0, "test", &err) == ERGO_OK,
              "%s: %s", cls[k].pat, err.msg);
        int bad = 0;
        for (size_t i = 0; i < cls[k].n && !bad; i++) {
            uint32_t a = cls[k].r[i][0], b = cls[k].r[i][1];
            if (!matches_cp(&p, md, a) || !matches_cp(&p, md, b)) bad = 1;
            if (a > 0 && (a - 1 < 0xD800 || a - 1 > 0xDFFF) && matches_cp(&p, md, a - 1) &&
                !unicode_in_ranges(cls[k].r, cls[k].n, a - 1))
                bad = 2;
            if (b < 0x10FFFF && (b + 1 < 0xD800 || b + 1 > 0xDFFF) && matches_cp(&p, md, b + 1) &&
                !unicode_in_ranges(cls[k].r, cls[k].n, b + 1))
                bad = 3;
        }
        CHECK(!bad, "%s: PCRE2 disagrees with the Oniguruma table (%d)", cls[k].pat, bad);
        /* The spots where PCRE2 10.42 and Oniguruma are known to differ. */
        if (k == 0)
            CHECK(matches_cp(&p, md, 0x85) && matches_cp(&p, md, 0x3000) &&
                      !matches_cp(&p, md, 0x200B) && !matches_cp(&p, md, 0xFEFF),
                  "\\s: U+0085/U+3000 in, U+200B/U+FEFF out");
        if (k == 1) CHECK(matches_cp(&p, md, 0x31350), "\\p{L}: U+31350 (Unicode 15) is a letter");
        pretokenize_free(&p);
    }
    pcre2_match_data_free(md);

    /* Translation refuses what PCRE2 would read differently. */
    const char *refused[] = {"[a[b]]", "[a-z&&[^c]]", "[\\S]", "[\\P{L}]"};
    for (int i = 0; i < 4; i++) {
        pretokenizer p;
        ergo_status st = pretokenize_compile(&p, refused[i], strlen(refused[i]), 0, "test", &err);
        CHECK(st == ERGO_E_UNSUPPORTED, "pattern %s should be refused: %s", refused[i], err.msg);
        if (st == ERGO_OK) pretokenize_free(&p);
    }
    pretokenizer p;
    ergo_status st = pretokenize_compile(&p, "(", 1, 0, "test.json", &err);
    CHECK(st != ERGO_OK && strstr(err.msg, "test.json: pre-tokenizer pattern does not compile"),
          "bad regex: %s", err.msg);
}

/* The contractions are matched case-insensitively: PCRE2's folding must give
 * exactly Oniguruma's sets (s: S, s and the long s U+017F; no others). */
static void test_case_folds(const json_t *folds) {
    const char *letter;
    const json_t *members;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    json_object_foreach((json_t *)folds, letter, members) {
        char pat[16];
        snprintf(pat, sizeof pat, "(?i:%s)", letter);
        pretokenizer p;
        ergo_error err = {0};
        if (pretokenize_compile(&p, pat, strlen(pat), 0, "test", &err) != ERGO_OK) {
            CHECK(0, "%s: %s", pat, err.msg);
            continue;
        }
        size_t k = 0, n = json_array_size(members), bad = 0;
        uint32_t first_bad = 0;
        for (uint32_t cp = 0; cp < 0x10000; cp++) {
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            int want = k < n && (uint32_t)json_integer_value(json_array_get(members, k)) == cp;
            k += want;
            if (matches_cp(&p, md, cp) != want && bad++ == 0) first_bad = cp;
        }
        CHECK(bad == 0, "%s: %zu code points fold differently from Oniguruma, first U+%04X", pat,
              bad, (unsigned)first_bad);
        pretokenize_free(&p);
    }
    pcre2_match_data_free(md);
}

/* ---------------------------------------------------------------- refusals */

static const char *write_scratch(const char *name, const char *text) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", scratch_dir(), name);
    ergo_error err;
    file_write_all(path, text, strlen(text), &err);
    return path;
}

/* A minimal valid file; %s are replaced by the parts a case changes. */
#define MINI_HEAD "{\"version\":\"1.0\",\"added_tokens\":[%s],\"normalizer\":%s,"
#define MINI_PRE                                                                              \
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":" \
    "{\"Regex\":\"\\\\s+|\\\\w+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":"       \
    "\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
#define MINI_TAIL                                                                     \
    "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":%s," \
    "\"vocab\":%s,\"merges\":%s}}"

static void expect_refused(const char *label, const char *json, const char *needle) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.json", scratch_dir(), label);
    ergo_error err = {0};
    file_write_all(path, json, strlen(json), &err);
    tokenizer *tok = (tokenizer *)1;
    ergo_status st = tokenizer_load_file(&tok, path, &err);
    CHECK(st != ERGO_OK && tok == NULL && strstr(err.msg, needle) && strstr(err.msg, path),
          "%s: got status %d, message \"%s\", want one naming the file and \"%s\"", label, (int)st,
          err.msg, needle);
    if (st == ERGO_OK) tokenizer_free(tok);
}

static void mini(char *out, size_t n, const char *added, const char *norm, const char *type,
                 const char *vocab, const char *merges) {
    snprintf(out, n, MINI_HEAD MINI_PRE MINI_TAIL, added, norm, type, vocab, merges);
}

static void test_refusals(void) {
    ergo_error err = {0};
    tokenizer *tok = (tokenizer *)1;
    ergo_status st = tokenizer_load(&tok, "/nonexistent/dir", &err);
    CHECK(st == ERGO_E_IO && tok == NULL && strstr(err.msg, "/nonexistent/dir: no such directory"),
          "missing dir: %s", err.msg);
    st = tokenizer_load(&tok, scratch_dir(), &err);
    CHECK(st == ERGO_E_IO && strstr(err.msg, "tokenizer.json: no such file"), "missing file: %s", err.msg);
    expect_refused("malformed", "{\"model\": {\"vocab\": {\"a\": 0,}}", "invalid JSON");
    expect_refused("not_object", "[1, 2]", "not a JSON object");
    /* The JSON grammar, as jansson checks it (base/json.c: duplicate keys refused). */
    expect_refused("dup_key", "{\"model\": {}, \"model\": {}}", "duplicate object key near '\"model\"'");
    expect_refused("dup_vocab_key", "{\"model\": {\"vocab\": {\"a\": 0, \"a\": 1}}}", "duplicate object key");
    expect_refused("trailing", "{} x", "invalid JSON at byte 4: end of file expected");
    expect_refused("lone_surrogate", "{\"a\": \"\\ud800\"}", "invalid Unicode '\\uD800'");
    expect_refused("nul_escape", "{\"a\": \"\\u0000\"}", "\\u0000 is not allowed");
    expect_refused("nul_key", "{\"model\": {\"vocab\": {\"\\u0000\": 0}}}", "NUL byte in object key");
    expect_refused("bad_utf8", "{\"a\": \"\xff\"}", "unable to decode byte 0xff");
    expect_refused("control_char", "{\"a\": \"x\ty\"}", "control character 0x9");
    expect_refused("bad_number", "{\"a\": 01}", "invalid JSON");
    expect_refused("huge_id", "{\"model\": {\"vocab\": {\"a\": 123456789012345678901234567890}}}", "too big integer");
    expect_refused("vocab_float", "{\"model\": {\"vocab\": {\"a\": 1.0}}}", "vocabulary entry \"a\" has no integer id");
    expect_refused("vocab_trailing_comma", "{\"model\": {\"vocab\": {\"a\": 0,}}}", "string or '}' expected");
    expect_refused("merges_unterminated", "{\"model\": {\"merges\": [\"a b\"", "invalid JSON");
    char deep[3200];
    memset(deep, '[', 3000); /* jansson stops at depth 2048 */
    deep[3000] = 0;
    expect_refused("deep", deep, "maximum parsing depth reached");

    const char *vocab = "{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3}";
    char buf[4096];
    mini(buf, sizeof buf, "", "{\"type\":\"NFC\"}", "\"BPE\"", vocab, "[\"a b\"]");
    tok = NULL;
    st = tokenizer_load_file(&tok, write_scratch("mini.json", buf), &err);
    CHECK(st == ERGO_OK, "the minimal file loads: %s", err.msg);
    if (st == ERGO_OK) {
        tok_ids ids = {0};
        st = tokenizer_encode(tok, "ab a", 4, &ids, &err);
        int32_t want[] = {2, 3, 0};
        CHECK_EQ_I32(ids.v, ids.n, want, 3, "minimal file: \"ab a\"");
        tok_ids_free(&ids);
        tokenizer_free(tok);
    }
    mini(buf, sizeof buf, "", "null", "\"WordPiece\"", vocab, "[]");
    expect_refused("wordpiece", buf, "model type WordPiece is not supported");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", "[]", "[]");
    expect_refused("vocab_list", buf, "model.vocab is missing or not an object");
    snprintf(buf, sizeof buf, MINI_HEAD MINI_PRE "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{}}}", "", "null");
    expect_refused("no_merges", buf, "model.merges is missing");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", vocab, "[\"a c\"]");
    expect_refused("merge_oov", buf, "merge 0: \"c\" is not in the vocabulary");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", "{\"a\":0,\"b\":1}", "[\"a b\"]");
    expect_refused("merge_result_oov", buf, "merge 0: \"ab\" is not in the vocabulary");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", vocab, "[\"a  b\"]");
    expect_refused("merge_two_spaces", buf, "is not two tokens separated by one space");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", vocab, "[[\"a\",\"b\"], \"a b\"]");
    expect_refused("merge_mixed", buf, "merges mix");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", "{\"a\":0,\"b\":0}", "[]");
    expect_refused("duplicate_id", buf, "vocabulary id 0 is given to two tokens");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", "{\"a\":-1}", "[]");
    expect_refused("negative_id", buf, "vocabulary id -1 is out of range");
    mini(buf, sizeof buf, "", "null", "\"BPE\"", "{\"a\":\"x\"}", "[]");
    expect_refused("string_id", buf, "has no integer id");
    mini(buf, sizeof buf, "", "{\"type\":\"Lowercase\"}", "\"BPE\"", vocab, "[]");
    expect_refused("lowercase", buf, "normalizer Lowercase is not supported");
    mini(buf, sizeof buf,
         "{\"id\":9,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
         "\"normalized\":false,\"special\":true}",
         "null", "\"BPE\"", vocab, "[]");
    expect_refused("added_id", buf, "added token \"<s>\" has id 9, but tokenizers would number it 4");
    mini(buf, sizeof buf,
         "{\"id\":4,\"content\":\"<s>\",\"special\":true},{\"id\":5,\"content\":\"<s>\",\"special\":false}",
         "null", "\"BPE\"", vocab, "[]");
    expect_refused("added_twice", buf, "added token \"<s>\" is listed twice");
    snprintf(buf, sizeof buf,
             MINI_HEAD MINI_PRE
             "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"dropout\":0.1,"
             "\"vocab\":{},\"merges\":[]}}",
             "", "null");
    expect_refused("dropout", buf, "BPE dropout is not supported");
    snprintf(buf, sizeof buf,
             MINI_HEAD "\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"decoder\":{\"type\":\"ByteLevel\"},"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
             "", "null");
    expect_refused("whitespace_pre", buf, "pre-tokenizer step Whitespace is not supported");
    snprintf(buf, sizeof buf,
             MINI_HEAD MINI_PRE "\"decoder\":{\"type\":\"WordPiece\"},"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
             "", "null");
    expect_refused("decoder", buf, "decoder WordPiece is not supported");
    snprintf(buf, sizeof buf,
             MINI_HEAD MINI_PRE "\"post_processor\":{\"type\":\"TemplateProcessing\"},\"decoder\":{\"type\":\"ByteLevel\"},"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
             "", "null");
    expect_refused("template_post", buf, "post_processor TemplateProcessing is not supported");
}

/* ---------------------------------------------------------------- CLI */

/* Runs a shell command; returns its exit status and its first stdout line in out. */
static int run(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    out[0] = 0;
    if (!fgets(out, (int)n, p)) out[0] = 0;
    char sink[256];
    while (fgets(sink, sizeof sink, p)) {}
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_cli(void) {
    const char *bin = getenv("ERGO_BIN");
    if (!bin || !*bin || !file_exists(bin)) {
        SKIP("ERGO_BIN not set: the CLI tests need the ergo binary (make test sets it)");
        return;
    }
    char cmd[2048], out[4096];
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model " ASSETS " 'Hello world<|im_end|>' 2>&1", bin);
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "[9707, 1879, 151645]\n"), "cli encode: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "printf 'a\\tb\\n' > '%s/in.txt'; '%s' tokenize --model " ASSETS
             " --file '%s/in.txt' 2>&1", scratch_dir(), bin, scratch_dir());
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "[64, 2233, 198]\n"), "cli --file: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model " ASSETS " --decode '[9707, 1879, 151645]' 2>&1", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "Hello world<|im_end|>\n"), "cli decode: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model " ASSETS " --decode --skip-special '9707 1879 151645' 2>&1", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strcmp(out, "Hello world\n"), "cli decode skip: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model " ASSETS " \"$(printf 'ok\\377')\" 2>&1", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && !strcmp(out, "ergo tokenize: invalid UTF-8 at byte 2\n"), "cli bad UTF-8: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model /nonexistent/model hi 2>&1", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && !strcmp(out, "ergo tokenize: /nonexistent/model: no such directory\n"),
          "cli missing dir: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --model " ASSETS " --decode '1 999999' 2>&1", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "token id 999999 is not in the vocabulary"), "cli bad id: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize 2>&1", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 2 && !strncmp(out, "ergo tokenize: ", 15), "cli usage: rc %d, \"%s\"", rc, out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --help", bin);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strncmp(out, "usage: ergo tokenize", 20), "cli --help: rc %d, \"%s\"", rc, out);
}

/* ---------------------------------------------------------------- fuzz corpus */

typedef struct corpus_counts {
    int loaded, configs, configs_loaded;
} corpus_counts;

static void count_loaded(void *ctx, const char *name, const uint8_t *data, size_t size) {
    corpus_counts *c = ctx;
    int ok = tokenizer_fuzz_one(data, size);
    c->loaded += ok;
    /* The seeds with a tokenizer_config.json part must load with it. */
    if (strstr(name, "_config")) c->configs++, c->configs_loaded += ok;
}

static void test_fuzz_corpus(void) {
    corpus_counts c = {0};
    int files = for_each_corpus_file("tokenizer", count_loaded, &c);
    CHECK(files >= 10 && c.loaded >= 10, "fuzz corpus: %d files, %d loaded", files, c.loaded);
    CHECK(c.configs >= 2 && c.configs_loaded == c.configs,
          "fuzz corpus: %d seeds with a config, %d loaded", c.configs, c.configs_loaded);
}

void test_tokenizer(void) {
    json_t *encode = load_fixture("encode.json"), *decode = load_fixture("decode.json");
    json_t *normalize = load_fixture("normalize.json"), *variants = load_fixture("variants.json");
    json_t *folds = load_fixture("case_folds.json"), *configs = load_fixture("configs.json");
    if (encode && decode) test_real_tokenizer(encode, decode);
    if (normalize) test_normalize(normalize);
    if (variants) test_variants(variants);
    if (configs) test_configs(configs);
    test_regex_classes();
    if (folds) test_case_folds(folds);
    test_refusals();
    test_cli();
    test_fuzz_corpus();
    json_decref(encode);
    json_decref(decode);
    json_decref(normalize);
    json_decref(variants);
    json_decref(folds);
    json_decref(configs);
}
