/*
 * bpe.c - byte-level BPE: vocabulary and merge tables, and the merge loop.
 *
 * Mirrors tokenizers 0.22.1 models/bpe (model.rs BpeBuilder::build, merge_word,
 * tokenize_with_cache; word.rs Word::merge_all): a word starts as one symbol per
 * byte-level character; the adjacent pair with the lowest merge rank (leftmost
 * on ties) is merged until no pair has a merge. We use the same heap of
 * (rank, position) candidates with lazy invalidation, so long words (runs of
 * thousands of spaces) stay O(n log n).
 */
#include "tokenizer/bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/utf8.h"

typedef struct bpe_entry {
    int32_t id;
    uint32_t off, len;
} bpe_entry;

typedef struct bpe_symbol {
    int32_t id;
    int32_t prev, next; /* neighbours still alive, -1 at the ends */
    int32_t dead;       /* merged into its left neighbour */
} bpe_symbol;

typedef struct bpe_heap_item {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
} bpe_heap_item;

/* ---------------------------------------------------------------- byte-level map */

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes stand for themselves; the other
 * 68 bytes (controls, space, 0x7F-0xA0, 0xAD) take U+0100.. in byte order. */
static int byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static uint32_t byte_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t k = 0;
    for (int i = 0; i < b; i++) k += !byte_is_printable(i);
    return 0x100 + k;
}

size_t bpe_byte_char(uint8_t b, char out[4]) { return utf8_encode(byte_cp(b), out); }

int bpe_char_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t k = cp - 0x100;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b) && k-- == 0) return b;
    return -1;
}

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t k) { /* splitmix64 finaliser */
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebull;
    return k ^ (k >> 31);
}

static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

void bpe_init(bpe_model *m) {
    memset(m, 0, sizeof *m);
    m->unk_id = -1;
    for (int b = 0; b < 256; b++) m->byte_id[b] = m->fallback[b][0] = m->fallback[b][1] = -1;
}

void bpe_free(bpe_model *m) {
    free(m->pool);
    free(m->text);
    free(m->vslot);
    free(m->mslot);
    free(m->entries);
    bpe_init(m);
}

void bpe_scratch_free(bpe_scratch *s) {
    free(s->sym);
    free(s->heap);
    tok_text_free(&s->mapped);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- vocabulary */

ergo_status bpe_add_token(bpe_model *m, const char *text, size_t len, int64_t id, const char *what,
                          ergo_error *err) {
    if (id < 0 || id >= BPE_MAX_ID)
        return ergo_fail(err, ERGO_E_FORMAT, "%s: vocabulary id %lld is out of range [0, %d)",
                         what, (long long)id, BPE_MAX_ID);
    if (len > UINT32_MAX / 2 || m->pool_n + len > UINT32_MAX / 2)
        return ergo_fail(err, ERGO_E_LIMIT, "%s: vocabulary text is too large", what);
    if (m->pool_n + len > m->pool_cap) {
        size_t cap = m->pool_cap ? m->pool_cap : 1 << 16;
        while (cap < m->pool_n + len) cap *= 2;
        char *p = realloc(m->pool, cap);
        if (!p) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
        m->pool = p, m->pool_cap = cap;
    }
    if (m->n_entries == m->entries_cap) {
        size_t cap = m->entries_cap ? m->entries_cap * 2 : 1024;
        bpe_entry *e = realloc(m->entries, cap * sizeof *e);
        if (!e) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
        m->entries = e, m->entries_cap = cap;
    }
    if (len) memcpy(m->pool + m->pool_n, text, len);
    m->entries[m->n_entries++] = (bpe_entry){(int32_t)id, (uint32_t)m->pool_n, (uint32_t)len};
    m->pool_n += len;
    return ERGO_OK;
}

int32_t bpe_lookup(const bpe_model *m, const char *text, size_t len) {
    if (!m->vslot) return -1;
    for (size_t i = hash_bytes(text, len) & m->vmask;; i = (i + 1) & m->vmask) {
        uint32_t v = m->vslot[i];
        if (!v) return -1;
        const bpe_span *sp = &m->text[v - 1];
        if (sp->len == len && memcmp(m->pool + sp->off, text, len) == 0) return (int32_t)(v - 1);
    }
}

ergo_status bpe_index_vocab(bpe_model *m, size_t expected_merges, const char *what,
                            ergo_error *err) {
    int32_t n_ids = 0;
    for (size_t i = 0; i < m->n_entries; i++)
        if (m->entries[i].id + 1 > n_ids) n_ids = m->entries[i].id + 1;
    m->n_ids = n_ids;
    m->n_vocab = m->n_entries;
    m->text = malloc((n_ids ? (size_t)n_ids : 1) * sizeof *m->text);
    m->vmask = table_size(m->n_entries) - 1;
    m->vslot = calloc(m->vmask + 1, sizeof *m->vslot);
    m->mmask = table_size(expected_merges) - 1;
    m->mslot = calloc(m->mmask + 1, sizeof *m->mslot);
    if (!m->text || !m->vslot || !m->mslot)
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    for (int32_t i = 0; i < n_ids; i++) m->text[i] = (bpe_span){0, UINT32_MAX};
    for (size_t k = 0; k < m->n_entries; k++) {
        const bpe_entry *e = &m->entries[k];
        bpe_span *sp = &m->text[e->id];
        if (sp->len != UINT32_MAX)
            return ergo_fail(err, ERGO_E_FORMAT,
                             "%s: vocabulary id %d is given to two tokens (\"%.*s\" and \"%.*s\")",
                             what, e->id, (int)(sp->len > 64 ? 64 : sp->len), m->pool + sp->off,
                             (int)(e->len > 64 ? 64 : e->len), m->pool + e->off);
        *sp = (bpe_span){e->off, e->len};
        const char *t = m->pool + e->off;
        size_t i = hash_bytes(t, e->len) & m->vmask;
        for (; m->vslot[i]; i = (i + 1) & m->vmask) {
            const bpe_span *o = &m->text[m->vslot[i] - 1];
            if (o->len == e->len && memcmp(m->pool + o->off, t, e->len) == 0)
                return ergo_fail(err, ERGO_E_FORMAT, "%s: vocabulary token \"%.*s\" appears twice",
                                 what, (int)(e->len > 64 ? 64 : e->len), t);
        }
        m->vslot[i] = (uint32_t)e->id + 1;
    }
    free(m->entries);
    m->entries = NULL;
    m->n_entries = m->entries_cap = 0;
    return ERGO_OK;
}

/* ---------------------------------------------------------------- merges */

static bpe_merge_slot *merge_find(const bpe_model *m, int32_t a, int32_t b) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (size_t i = hash_pair(key) & m->mmask;; i = (i + 1) & m->mmask) {
        bpe_merge_slot *s = &m->mslot[i];
        if (s->key == key || s->key == 0) return s;
    }
}

static ergo_status merge_grow(bpe_model *m, const char *what, ergo_error *err) {
    size_t old_n = m->mmask + 1;
    bpe_merge_slot *old = m->mslot;
    m->mslot = calloc(old_n * 2, sizeof *m->mslot);
    if (!m->mslot) {
        m->mslot = old;
        return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    }
    m->mmask = old_n * 2 - 1;
    for (size_t i = 0; i < old_n; i++) {
        if (!old[i].key) continue;
        uint64_t key = old[i].key - 1;
        *merge_find(m, (int32_t)(key >> 32), (int32_t)(uint32_t)key) = old[i];
    }
    free(old);
    return ERGO_OK;
}

static ergo_status missing_piece(const char *what, size_t rank, const char *piece, size_t len,
                                 ergo_error *err) {
    return ergo_fail(err, ERGO_E_FORMAT, "%s: merge %zu: \"%.*s\" is not in the vocabulary", what,
                     rank, (int)(len > 64 ? 64 : len), piece);
}

ergo_status bpe_add_merge(bpe_model *m, const char *a, size_t alen, const char *b, size_t blen,
                          size_t rank, const char *what, ergo_error *err) {
    int32_t ia = bpe_lookup(m, a, alen), ib = bpe_lookup(m, b, blen);
    if (ia < 0) return missing_piece(what, rank, a, alen, err);
    if (ib < 0) return missing_piece(what, rank, b, blen, err);
    char small[256];
    char *cat = alen + blen <= sizeof small ? small : malloc(alen + blen);
    if (!cat) return ergo_fail(err, ERGO_E_NOMEM, "%s: out of memory", what);
    memcpy(cat, a, alen);
    memcpy(cat + alen, b, blen);
    int32_t inew = bpe_lookup(m, cat, alen + blen);
    ergo_status st = inew < 0 ? missing_piece(what, rank, cat, alen + blen, err) : ERGO_OK;
    if (cat != small) free(cat);
    if (st != ERGO_OK) return st;
    if (rank > UINT32_MAX - 1) return ergo_fail(err, ERGO_E_LIMIT, "%s: too many merges", what);
    if (2 * (m->n_merges + 1) > m->mmask + 1 && (st = merge_grow(m, what, err)) != ERGO_OK)
        return st;
    bpe_merge_slot *s = merge_find(m, ia, ib);
    if (!s->key) m->n_merges++;
    /* A pair listed twice keeps its last rank: HF collects the list into a HashMap. */
    *s = (bpe_merge_slot){(((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1, (uint32_t)rank,
                          inew};
    return ERGO_OK;
}

ergo_status bpe_set_options(bpe_model *m, const char *unk, size_t unk_len, int fuse_unk,
                            int byte_fallback, int ignore_merges, const char *what,
                            ergo_error *err) {
    m->fuse_unk = fuse_unk;
    m->byte_fallback = byte_fallback;
    m->ignore_merges = ignore_merges;
    m->unk_id = -1;
    if (unk) {
        m->unk_id = bpe_lookup(m, unk, unk_len);
        /* HF fails only when an unknown character shows up; we say so at load. */
        if (m->unk_id < 0)
            return ergo_fail(err, ERGO_E_FORMAT, "%s: unk_token \"%.*s\" is not in the vocabulary",
                             what, (int)(unk_len > 64 ? 64 : unk_len), unk);
    }
    for (int b = 0; b < 256; b++) {
        char ch[4];
        size_t n = bpe_byte_char((uint8_t)b, ch);
        m->byte_id[b] = bpe_lookup(m, ch, n);
        /* byte_fallback replaces a character by <0xXX> per UTF-8 byte of the character. */
        m->fallback[b][0] = m->fallback[b][1] = -1;
        int32_t f[2] = {-1, -1};
        int ok = 1;
        for (size_t k = 0; k < n; k++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", (unsigned)(uint8_t)ch[k]);
            f[k] = bpe_lookup(m, name, 6);
            ok &= f[k] >= 0;
        }
        if (ok) m->fallback[b][0] = f[0], m->fallback[b][1] = f[1];
    }
    return ERGO_OK;
}

/* ---------------------------------------------------------------- encoding */

static int heap_less(const bpe_heap_item *x, const bpe_heap_item *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(bpe_heap_item *h, size_t *n, bpe_heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&it, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static bpe_heap_item heap_pop(bpe_heap_item *h, size_t *n) {
    bpe_heap_item top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static ergo_status reserve(void **p, size_t *cap, size_t need, size_t elem, ergo_error *err) {
    if (need <= *cap) return ERGO_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return ergo_fail(err, ERGO_E_NOMEM, "BPE: out of memory for a %zu-byte word", need);
    *p = q, *cap = c;
    return ERGO_OK;
}

/* Queues the pair starting at symbol pos when it has a merge. */
static void queue_pair(const bpe_model *m, bpe_scratch *sc, size_t *nh, int32_t pos) {
    int32_t next = sc->sym[pos].next;
    if (next < 0) return;
    const bpe_merge_slot *s = merge_find(m, sc->sym[pos].id, sc->sym[next].id);
    if (s->key) heap_push(sc->heap, nh, (bpe_heap_item){s->rank, pos, s->new_id});
}

ergo_status bpe_encode_word(const bpe_model *m, const uint8_t *bytes, size_t n, bpe_scratch *sc,
                            tok_ids *out, ergo_error *err) {
    if (n == 0) return ERGO_OK;
    ergo_status st;
    if (m->ignore_merges) {
        sc->mapped.n = 0;
        for (size_t i = 0; i < n; i++) {
            char ch[4];
            if ((st = tok_text_append(&sc->mapped, ch, bpe_byte_char(bytes[i], ch), err)))
                return st;
        }
        int32_t id = bpe_lookup(m, sc->mapped.s, sc->mapped.n);
        if (id >= 0) return tok_ids_push(out, id, err);
    }
    if (n > INT32_MAX / 2) return ergo_fail(err, ERGO_E_LIMIT, "BPE: word of %zu bytes", n);
    /* Up to two symbols per byte (byte fallback of a two-byte character); each
     * merge queues at most two pairs, so the heap never holds more than 3 per symbol. */
    if ((st = reserve((void **)&sc->sym, &sc->sym_cap, 2 * n, sizeof *sc->sym, err)) ||
        (st = reserve((void **)&sc->heap, &sc->heap_cap, 6 * n + 8, sizeof *sc->heap, err)))
        return st;

    /* merge_word: one symbol per character; unknown characters become byte
     * fallback tokens, or unk (fused when asked), or are dropped when there is
     * no unk. Like HF, a pending unk is only flushed by a known character or the
     * end, so byte-fallback tokens can land before it. */
    int32_t ns = 0;
    int pending_unk = 0;
#define ADD_SYMBOL(ID)                                                   \
    do {                                                                 \
        sc->sym[ns] = (bpe_symbol){(ID), ns - 1, -1, 0};                 \
        if (ns > 0) sc->sym[ns - 1].next = ns;                           \
        ns++;                                                            \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        int32_t id = m->byte_id[bytes[i]];
        if (id >= 0) {
            if (pending_unk) {
                ADD_SYMBOL(m->unk_id);
                pending_unk = 0;
            }
            ADD_SYMBOL(id);
        } else if (m->byte_fallback && m->fallback[bytes[i]][0] >= 0) {
            ADD_SYMBOL(m->fallback[bytes[i]][0]);
            if (m->fallback[bytes[i]][1] >= 0) ADD_SYMBOL(m->fallback[bytes[i]][1]);
        } else if (m->unk_id >= 0) {
            if (pending_unk && !m->fuse_unk) ADD_SYMBOL(m->unk_id);
            pending_unk = 1;
        }
    }
    if (pending_unk) ADD_SYMBOL(m->unk_id);
#undef ADD_SYMBOL

    /* merge_all: lowest rank first, leftmost among equal ranks. */
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++) queue_pair(m, sc, &nh, i);
    while (nh > 0) {
        bpe_heap_item top = heap_pop(sc->heap, &nh);
        bpe_symbol *left = &sc->sym[top.pos];
        if (left->dead || left->next < 0) continue;
        int32_t right = left->next;
        /* Stale entry: the pair at pos changed since it was queued. */
        const bpe_merge_slot *s = merge_find(m, left->id, sc->sym[right].id);
        if (!s->key || s->new_id != top.new_id) continue;
        left->id = top.new_id;
        sc->sym[right].dead = 1;
        left->next = sc->sym[right].next;
        if (left->next >= 0) sc->sym[left->next].prev = top.pos;
        if (left->prev >= 0) queue_pair(m, sc, &nh, left->prev);
        queue_pair(m, sc, &nh, top.pos);
    }
    for (int32_t i = 0; i < ns; i++)
        if (!sc->sym[i].dead && (st = tok_ids_push(out, sc->sym[i].id, err))) return st;
    return ERGO_OK;
}
