/*
 * quantize.c - block-quantised twins of a model's linear weights, and their cache.
 *
 * Cache file layout (little-endian, written by this file only):
 *   0   "ERGOQNT1"                         magic and layout version
 *   8   u32 format (1 q8, 2 q4), u32 n (twins), u32 data_offset, u32 reserved
 *   24  u8[32] fingerprint of the source weights (see quantize.h)
 *   56  n x {i32 rows, i32 cols, u32 format, u32 0, u64 q_offset, u64 scale_offset}
 *   data_offset (a multiple of 4096): each twin's q bytes then its scales, every
 *       array starting on a 64-byte boundary, in weights_spec order.
 * A reader recomputes the whole layout from the model and accepts the file only
 * if every field and the file size are exactly what it computed, and every scale
 * is finite; no q byte is an invalid value.
 */
#define _GNU_SOURCE /* madvise */
#include "quantize.h"

#include <errno.h>
#include <math.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/file.h"

#define CACHE_MAGIC "ERGOQNT1"
#define CACHE_FIXED 56
#define CACHE_ENTRY 32
#define FINGERPRINT_STRIDE (1u << 20)
#define FINGERPRINT_SAMPLE 64

typedef struct model_quant {
    quant_format format; /* of the linear layers (the head may be finer, see twin_format) */
    int n;
    qmatrix *mats;     /* n twins */
    weight **slots;    /* the weight each twin belongs to */
    quant_format *formats; /* each twin's format */
    mapped_file cache; /* the cache file the twins point into, when mapped */
} model_quant;

/* ---- which tensors ---- */

/* The format of a parameter's twin, QUANT_NONE for none. The head is kept one step
 * finer than the layers (q8 layers: head as stored; q4 layers: head q8): its
 * rounding moves every logit directly, and on the 7B-width fixture it caused most
 * top-1 flips (tests/test_quant_model.c; figures in BENCHMARKS.md). */
static quant_format twin_format(quant_format layers, const weight_spec *sp) {
    if (sp->kind == WEIGHT_LM_HEAD) return layers == QUANT_Q4 ? QUANT_Q8 : QUANT_NONE;
    return sp->kind == WEIGHT_MATRIX && sp->n_dims == 2 ? layers : QUANT_NONE;
}

/* Lists the tensors to quantise into mq->slots (allocated); returns ERGO_OK. */
static ergo_status list_targets(model_quant *mq, model *m, ergo_error *err) {
    const int n_all = weights_spec(&m->config, NULL, NULL);
    weight_spec *specs = malloc(sizeof *specs * (size_t)n_all);
    mq->slots = calloc((size_t)n_all, sizeof *mq->slots);
    mq->formats = calloc((size_t)n_all, sizeof *mq->formats);
    if (!specs || !mq->slots || !mq->formats) {
        free(specs);
        return ergo_fail(err, ERGO_E_NOMEM, "quantize: out of memory");
    }
    weights_spec(&m->config, specs, &m->weights);
    mq->n = 0;
    for (int i = 0; i < n_all; i++) {
        const quant_format f = twin_format(mq->format, &specs[i]);
        if (f == QUANT_NONE || !specs[i].slot) continue;
        mq->formats[mq->n] = f;
        mq->slots[mq->n++] = specs[i].slot;
    }
    free(specs);
    return ERGO_OK;
}

/* ---- fingerprint of the source weights ---- */

static void fingerprint(uint8_t out[SHA256_DIGEST_SIZE], const model_quant *mq, const void *salt,
                        size_t salt_len) {
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    uint32_t fmt = (uint32_t)mq->format;
    sha256_update(&ctx, sizeof fmt, (const uint8_t *)&fmt);
    if (salt && salt_len) sha256_update(&ctx, salt_len, salt); /* none: the old fingerprint */
    for (int i = 0; i < mq->n; i++) {
        const tensor *t = &mq->slots[i]->t;
        const uint8_t *d = t->data;
        sha256_update(&ctx, strlen(t->name) + 1, (const uint8_t *)t->name);
        int64_t dims[4] = {t->shape[0], t->shape[1], (int64_t)t->dtype, (int64_t)mq->formats[i]};
        sha256_update(&ctx, sizeof dims, (const uint8_t *)dims);
        /* a sample of every MiB (a full hash of 15 GB would cost more than quantising) */
        for (size_t off = 0; off < t->nbytes; off += FINGERPRINT_STRIDE) {
            size_t len = t->nbytes - off < FINGERPRINT_SAMPLE ? t->nbytes - off : FINGERPRINT_SAMPLE;
            sha256_update(&ctx, len, d + off);
        }
        size_t tail = t->nbytes < FINGERPRINT_SAMPLE ? t->nbytes : FINGERPRINT_SAMPLE;
        if (tail) sha256_update(&ctx, tail, d + t->nbytes - tail);
    }
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

/* ---- cache layout ---- */

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

typedef struct twin_place {
    size_t q_off, q_bytes, s_off, s_bytes;
} twin_place;

/* Offsets of every array; returns the file size. */
static size_t cache_layout(twin_place *pl, const model_quant *mq, size_t *data_offset) {
    *data_offset = align_up(CACHE_FIXED + (size_t)CACHE_ENTRY * (size_t)mq->n, 4096);
    size_t at = *data_offset;
    for (int i = 0; i < mq->n; i++) {
        const tensor *t = &mq->slots[i]->t;
        const int rows = (int)t->shape[0], cols = (int)t->shape[1];
        pl[i].q_off = at;
        pl[i].q_bytes = (size_t)rows * quant_row_bytes(mq->formats[i], cols);
        at = align_up(at + pl[i].q_bytes, 64);
        pl[i].s_off = at;
        pl[i].s_bytes = (size_t)rows * quant_scale_count(cols) * sizeof(float);
        at = align_up(at + pl[i].s_bytes, 64);
    }
    return at;
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Maps the cache if it is exactly what this model and format would write. Returns 1
 * when the twins now point into it, 0 with a note otherwise. */
static int cache_try_map(model_quant *mq, const char *path, const uint8_t fp[32], char *note,
                         size_t note_size) {
    if (!file_exists(path)) {
        snprintf(note, note_size, "no cache file yet");
        return 0;
    }
    ergo_error e = {0};
    if (file_map(&mq->cache, path, &e)) {
        snprintf(note, note_size, "cache not readable: %.200s", e.msg);
        return 0;
    }
    const uint8_t *d = mq->cache.data;
    const size_t size = mq->cache.size;
    twin_place *pl = malloc(sizeof *pl * (size_t)(mq->n ? mq->n : 1));
    size_t data_offset = 0, want = pl ? cache_layout(pl, mq, &data_offset) : 0;
    const char *why = NULL;
    if (!pl) why = "out of memory";
    else if (size < CACHE_FIXED || memcmp(d, CACHE_MAGIC, 8)) why = "not an ergo weights cache";
    else if (rd32(d + 8) != (uint32_t)mq->format) why = "another format";
    else if (rd32(d + 12) != (uint32_t)mq->n || rd32(d + 16) != data_offset)
        why = "another model";
    else if (memcmp(d + 24, fp, 32)) why = "made from other weights";
    else if (size != want) why = "truncated or extended";
    for (int i = 0; !why && i < mq->n; i++) {
        const uint8_t *e8 = d + CACHE_FIXED + (size_t)CACHE_ENTRY * i;
        if ((int32_t)rd32(e8) != (int32_t)mq->slots[i]->t.shape[0] ||
            (int32_t)rd32(e8 + 4) != (int32_t)mq->slots[i]->t.shape[1] ||
            rd32(e8 + 8) != (uint32_t)mq->formats[i] || rd64(e8 + 16) != pl[i].q_off ||
            rd64(e8 + 24) != pl[i].s_off)
            why = "its table does not match this model";
    }
    for (int i = 0; !why && i < mq->n; i++) {
        const tensor *t = &mq->slots[i]->t;
        const float *sc = (const float *)(d + pl[i].s_off);
        const size_t ns = pl[i].s_bytes / sizeof(float);
        for (size_t k = 0; k < ns; k++)
            if (!isfinite(sc[k])) {
                why = "a scale is infinite or NaN (corrupt)";
                break;
            }
        qmatrix *q = &mq->mats[i];
        q->format = mq->formats[i];
        q->rows = (int)t->shape[0];
        q->cols = (int)t->shape[1];
        q->cols_padded = quant_padded_cols(q->cols);
        q->q = (uint8_t *)(d + pl[i].q_off); /* read-only map: the kernels only read */
        q->scale = (float *)(d + pl[i].s_off);
        q->owned = 0;
    }
    free(pl);
    if (why) {
        snprintf(note, note_size, "cache %.160s ignored: %s", path, why);
        memset(mq->mats, 0, sizeof *mq->mats * (size_t)mq->n);
        file_unmap(&mq->cache);
        return 0;
    }
    return 1;
}

static int write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n; }

static int write_pad(FILE *f, size_t from, size_t to) {
    static const uint8_t zeros[4096];
    while (from < to) {
        size_t n = to - from < sizeof zeros ? to - from : sizeof zeros;
        if (!write_all(f, zeros, n)) return 0;
        from += n;
    }
    return 1;
}

/* Writes the cache to path (through a temporary file renamed into place, so a
 * reader never sees half a file). Returns 1, or 0 with a note. */
static int cache_write(const model_quant *mq, const char *path, const uint8_t fp[32], char *note,
                       size_t note_size) {
    twin_place *pl = malloc(sizeof *pl * (size_t)(mq->n ? mq->n : 1));
    char tmp[4200];
    if (!pl || snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        free(pl);
        snprintf(note, note_size, "cache not written: path too long or out of memory");
        return 0;
    }
    size_t data_offset, total = cache_layout(pl, mq, &data_offset);
    FILE *f = fopen(tmp, "wb");
    int ok = f != NULL;
    uint8_t head[CACHE_FIXED] = {0};
    memcpy(head, CACHE_MAGIC, 8);
    uint32_t h32[4] = {(uint32_t)mq->format, (uint32_t)mq->n, (uint32_t)data_offset, 0};
    memcpy(head + 8, h32, sizeof h32);
    memcpy(head + 24, fp, 32);
    ok = ok && write_all(f, head, sizeof head);
    for (int i = 0; ok && i < mq->n; i++) {
        uint8_t e8[CACHE_ENTRY];
        int32_t rc[2] = {mq->mats[i].rows, mq->mats[i].cols};
        uint32_t fmt[2] = {(uint32_t)mq->formats[i], 0};
        uint64_t off[2] = {pl[i].q_off, pl[i].s_off};
        memcpy(e8, rc, 8);
        memcpy(e8 + 8, fmt, 8);
        memcpy(e8 + 16, off, 16);
        ok = write_all(f, e8, sizeof e8);
    }
    size_t at = CACHE_FIXED + (size_t)CACHE_ENTRY * (size_t)mq->n;
    for (int i = 0; ok && i < mq->n; i++) {
        ok = write_pad(f, at, pl[i].q_off) && write_all(f, mq->mats[i].q, pl[i].q_bytes) &&
             write_pad(f, pl[i].q_off + pl[i].q_bytes, pl[i].s_off) &&
             write_all(f, mq->mats[i].scale, pl[i].s_bytes);
        at = pl[i].s_off + pl[i].s_bytes;
    }
    ok = ok && write_pad(f, at, total);
    int saved_errno = errno;
    if (f && fclose(f) != 0) ok = 0;
    if (ok && rename(tmp, path) != 0) {
        saved_errno = errno;
        ok = 0;
    }
    if (!ok) {
        snprintf(note, note_size, "cache not written to %.160s: %s", path, strerror(saved_errno));
        unlink(tmp);
    }
    free(pl);
    return ok;
}

/* ---- quantising ---- */

/* madvise(DONTNEED) over the whole pages inside a tensor: an anonymous (in-memory)
 * model gives the memory back; a file map just drops its pages. */
static void release_pages(const tensor *t) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)t->data + page - 1) / page * page;
    uintptr_t b = ((uintptr_t)t->data + t->nbytes) / page * page;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Quantises every twin; with `release` each source is given back as soon as its
 * twin exists, so the peak is the sources plus one twin, not plus all of them
 * (the full 7B in q8 from an in-memory model peaked at 23.5 GB otherwise). */
static ergo_status quantise_all(model_quant *mq, int release, const void *keep,
                                const quantize_opts *opts, ergo_error *err) {
    int64_t total = 0, done = 0;
    for (int i = 0; i < mq->n; i++) total += (int64_t)mq->slots[i]->t.nbytes;
    for (int i = 0; i < mq->n; i++) {
        const tensor *t = &mq->slots[i]->t;
        const int rows = (int)t->shape[0], cols = (int)t->shape[1];
        if (cols > QUANT_MAX_COLS)
            return ergo_fail(err, ERGO_E_UNSUPPORTED,
                             "quantize: %s has %d columns, over the %d the kernels support",
                             t->name, cols, QUANT_MAX_COLS);
        ergo_status s = quant_alloc(&mq->mats[i], mq->formats[i], rows, cols, err);
        if (s) return s;
        const kdtype wt = tensor_kdtype(t);
        qmatrix *q = &mq->mats[i];
#pragma omp parallel for schedule(dynamic, 64)
        for (int j = 0; j < rows; j++) quant_rows(q, t->data, wt, j, j + 1);
        done += (int64_t)t->nbytes;
        if (opts->on_bytes) opts->on_bytes(opts->on_bytes_ctx, done, total);
        if (release && t->data != keep) release_pages(t);
    }
    return ERGO_OK;
}

void model_quant_enable(model *m, int on) {
    model_quant *mq = m->quant;
    for (int i = 0; mq && i < mq->n; i++) {
        ERGO_ASSERT(mq->slots[i]->k.data || on);
        mq->slots[i]->k.q = on ? &mq->mats[i] : NULL;
    }
}

void model_quant_free(model *m) {
    model_quant *mq = m->quant;
    if (!mq) return;
    for (int i = 0; i < mq->n; i++) {
        if (mq->slots && mq->slots[i]) mq->slots[i]->k.q = NULL;
        if (mq->mats) quant_free(&mq->mats[i]);
    }
    file_unmap(&mq->cache);
    free(mq->mats);
    free(mq->slots);
    free(mq->formats);
    free(mq);
    m->quant = NULL;
}

ergo_status model_quantize(model *m, const quantize_opts *opts, quantize_report *rep,
                           ergo_error *err) {
    memset(rep, 0, sizeof *rep);
    if (opts->format == QUANT_NONE) return ERGO_OK;
    if (opts->format != QUANT_Q8 && opts->format != QUANT_Q4)
        return ergo_fail(err, ERGO_E_ARG, "quantize: unknown format %d", (int)opts->format);
    if (m->quant) return ergo_fail(err, ERGO_E_ARG, "quantize: the model is already quantised");
    const double t0 = now_ms();
    model_quant *mq = calloc(1, sizeof *mq);
    if (!mq) return ergo_fail(err, ERGO_E_NOMEM, "quantize: out of memory");
    mq->format = opts->format;
    m->quant = mq;
    ergo_status s = list_targets(mq, m, err);
    if (!s && !(mq->mats = calloc((size_t)(mq->n ? mq->n : 1), sizeof *mq->mats)))
        s = ergo_fail(err, ERGO_E_NOMEM, "quantize: out of memory");
    if (s) {
        model_quant_free(m);
        return s;
    }
    for (int i = 0; i < mq->n; i++)
        if (!mq->slots[i]->t.data) {
            model_quant_free(m);
            return ergo_fail(err, ERGO_E_ARG, "quantize: %s has no data", mq->slots[i]->t.name);
        }
    uint8_t fp[SHA256_DIGEST_SIZE];
    fingerprint(fp, mq, opts->salt, opts->salt_len);
    if (opts->cache_path)
        rep->from_cache = cache_try_map(mq, opts->cache_path, fp, rep->cache_note,
                                        sizeof rep->cache_note);
    if (!rep->from_cache) {
        /* the cache file is written from the twins, so sources can go early */
        if ((s = quantise_all(mq, opts->release_source, m->weights.text.embed.t.data, opts, err))) {
            model_quant_free(m);
            return s;
        }
        if (opts->cache_path) {
            char note[sizeof rep->cache_note];
            rep->cache_written = cache_write(mq, opts->cache_path, fp, note, sizeof note);
            if (!rep->cache_written) snprintf(rep->cache_note, sizeof rep->cache_note, "%s", note);
        }
    }
    const tensor *embed = &m->weights.text.embed.t;
    for (int i = 0; i < mq->n; i++) {
        weight *w = mq->slots[i];
        rep->source_bytes += w->t.nbytes;
        rep->quant_bytes += quant_matrix_bytes(mq->formats[i], mq->mats[i].rows, mq->mats[i].cols);
        w->k.q = &mq->mats[i];
        /* a tied head shares the embedding's bytes, which lookups still read */
        if (opts->release_source && w->t.data != embed->data) {
            if (rep->from_cache) release_pages(&w->t);
            w->t.data = NULL;
            w->k.data = NULL;
        }
    }
    rep->n_tensors = mq->n;
    rep->ms = now_ms() - t0;
    return ERGO_OK;
}

ergo_status quant_cache_default_path(char *out, size_t size, const char *model_dir,
                                     quant_format f, ergo_error *err) {
    char name[32];
    snprintf(name, sizeof name, "ergo-weights.%s", quant_format_name(f));
    return path_join(out, size, model_dir, name, err);
}
