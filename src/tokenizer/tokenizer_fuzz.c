/*
 * tokenizer_fuzz.c - fuzzing entry point (see tokenizer_fuzz.h).
 */
#include "tokenizer/tokenizer_fuzz.h"

#include <string.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

static const char *const texts[] = {
    "Hello world's 'S 'LL ſ", "<|im_start|>user\n\xe4\xbd\xa0\xe5\xa5\xbd<|im_end|>\n",
    "  a\t\tb \r\n\n  12345 \xf0\x9f\x98\x80\xe2\x80\x8d", "e\xcc\x81 \xe1\x84\x80\xe1\x85\xa1",
    "[L] word [R]  [LR] <sw> <|s|> ca\314\201fe the",
};

/* Decodes ids one-shot and streaming and checks that both give the same text. */
static void check_decode(const tokenizer *tok, const int32_t *ids, size_t n, int skip) {
    ergo_error err = {0};
    tok_text one = {0}, streamed = {0};
    ergo_status st = tokenizer_decode(tok, ids, n, skip, &one, &err);
    ERGO_ASSERT(st == ERGO_OK || err.msg[0]);
    if (st == ERGO_OK) {
        ERGO_ASSERT(utf8_first_invalid((const uint8_t *)one.s, one.n) == one.n);
        tokenizer_stream s;
        tokenizer_stream_init(&s, tok, skip);
        for (size_t i = 0; i < n && st == ERGO_OK; i++) {
            size_t before = streamed.n;
            st = tokenizer_stream_push(&s, ids[i], &streamed, &err);
            /* Only complete characters come out of a push. */
            ERGO_ASSERT(utf8_first_invalid((const uint8_t *)streamed.s + before,
                                           streamed.n - before) == streamed.n - before);
        }
        ERGO_ASSERT(st == ERGO_OK);
        ERGO_ASSERT(tokenizer_stream_finish(&s, &streamed, &err) == ERGO_OK);
        ERGO_ASSERT(streamed.n == one.n && memcmp(streamed.s, one.s, one.n) == 0);
    }
    tok_text_free(&one);
    tok_text_free(&streamed);
}

/* An input may carry a tokenizer_config.json after this line. */
static const char config_mark[] = "\n#tokenizer_config.json\n";

static size_t find_mark(const uint8_t *data, size_t size) {
    size_t m = sizeof config_mark - 1;
    for (size_t i = 0; i + m <= size; i++)
        if (data[i] == '\n' && memcmp(data + i, config_mark, m) == 0) return i;
    return size;
}

int tokenizer_fuzz_one(const uint8_t *data, size_t size) {
    ergo_error err = {0};
    tokenizer *tok = NULL;
    size_t json_len = find_mark(data, size), skip = json_len + sizeof config_mark - 1;
    const char *config = json_len < size ? (const char *)data + skip : NULL;
    if (tokenizer_load_bytes_config(&tok, (const char *)data, json_len, config,
                                    config ? size - skip : 0, "fuzz input", &err) != ERGO_OK) {
        ERGO_ASSERT(err.msg[0] != 0 && tok == NULL);
        return 0;
    }
    tok_ids ids = {0};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        ergo_status st = tokenizer_encode(tok, texts[i], strlen(texts[i]), &ids, &err);
        ERGO_ASSERT(st == ERGO_OK || err.msg[0]);
    }
    /* The input itself as text: either valid UTF-8 that encodes, or an error. */
    ergo_status st = tokenizer_encode(tok, (const char *)data, size, &ids, &err);
    ERGO_ASSERT(st == ERGO_OK ||
                utf8_first_invalid(data, size) != size || err.code == ERGO_E_LIMIT);
    for (size_t i = 0; i < ids.n; i++) ERGO_ASSERT(ids.v[i] >= 0 && ids.v[i] < tokenizer_n_ids(tok));
    check_decode(tok, ids.v, ids.n, 0);
    check_decode(tok, ids.v, ids.n, 1);
    /* Every id (the first few hundred), and ids out of range. */
    ids.n = 0;
    int32_t n = tokenizer_n_ids(tok);
    for (int32_t i = 0; i < n && i < 512; i++) tok_ids_push(&ids, i, &err);
    check_decode(tok, ids.v, ids.n, 0);
    int32_t bad[] = {-1, n, 0};
    tok_text t = {0};
    ERGO_ASSERT(tokenizer_decode(tok, bad, 1, 0, &t, &err) != ERGO_OK);
    ERGO_ASSERT(tokenizer_decode(tok, bad + 1, 1, 0, &t, &err) != ERGO_OK);
    tok_text_free(&t);
    tok_ids_free(&ids);
    tokenizer_free(tok);
    return 1;
}
