/*
 * probe.c - this machine's limits: memory read bandwidth and the peak rate of the
 * instructions the kernels use (f32 FMA on AVX-512 and AVX2, bf16 and int8 dot
 * products). Each SIMD loop carries a target attribute and runs only when the CPU
 * has the instruction (checked at run time), like every kernel.
 */
#include "probe.h"
#include "kernels.h"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sinks keep the compiler from dropping the loops. */
static volatile float sink_f;
static volatile int32_t sink_i;

/* 12 independent chains: enough to cover a 4-cycle latency on 2-3 pipes. */
#define CHAINS 12

__attribute__((target("avx512f"))) static void loop_fma512(long iters) {
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    __m512 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm512_add_ps(s, acc[c]);
    sink_f = _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static void loop_fma256(long iters) {
    __m256 acc[CHAINS];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    __m256 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm256_add_ps(s, acc[c]);
    float out[8];
    _mm256_storeu_ps(out, s);
    sink_f = out[0] + out[7];
}

__attribute__((target("avx512f,avx512bf16"))) static void loop_bf16(long iters) {
    __m512 acc[CHAINS];
    /* bf16 pairs of small values: the sums stay finite */
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3c003c00), b = (__m512bh)_mm512_set1_epi32(0x3c003c00);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    __m512 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm512_add_ps(s, acc[c]);
    sink_f = _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512vnni"))) static void loop_int8(long iters) {
    __m512i acc[CHAINS];
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_epi32(c);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
    __m512i s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm512_add_epi32(s, acc[c]);
    sink_i = _mm512_reduce_add_epi32(s);
}

/* Runs `fn(iters)` on every thread at once, growing iters until the run lasts
 * `target_s`; returns iterations per second per thread x threads (best of 3). */
static double rate(void (*fn)(long), int threads, double target_s) {
    long iters = 1000;
    double t = 0;
    for (;;) {
        double t0 = now_s();
        fn(iters);
        t = now_s() - t0;
        if (t > target_s / 8 || iters > (1L << 40)) break;
        iters *= 4;
    }
    iters = (long)((double)iters * (target_s / 3) / (t > 1e-9 ? t : 1e-9)) + 1;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = 0, t1 = 0;
#pragma omp parallel num_threads(threads)
        {
#pragma omp barrier
#pragma omp master
            t0 = now_s();
            fn(iters);
#pragma omp barrier
#pragma omp master
            t1 = now_s();
        }
        double rps = (double)iters * threads / (t1 - t0);
        if (rps > best) best = rps;
    }
    return best;
}

/* Four streams at once (the range cut in four): the hardware prefetchers track
 * several streams per core, and one stream per thread under-reads what the
 * decode's concurrent weight streams achieve. */
__attribute__((target("avx512f"))) static double sum_avx512(const float *p, size_t n) {
    const size_t q = n / 4 / 64 * 64;
    const float *s0 = p, *s1 = p + q, *s2 = p + 2 * q, *s3 = p + 3 * q;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= q; i += 64)
        for (size_t j = 0; j < 64; j += 16) {
            a0 = _mm512_add_ps(a0, _mm512_load_ps(s0 + i + j));
            a1 = _mm512_add_ps(a1, _mm512_load_ps(s1 + i + j));
            a2 = _mm512_add_ps(a2, _mm512_load_ps(s2 + i + j));
            a3 = _mm512_add_ps(a3, _mm512_load_ps(s3 + i + j));
        }
    double tail = 0;
    for (size_t i = 4 * q; i < n; i++) tail += (double)p[i];
    return tail + (double)_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static double sum_plain(const float *p, size_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    return (double)(s0 + s1 + s2 + s3);
}

int probe_run(probe_limits *lim, int threads, double seconds) {
    memset(lim, 0, sizeof *lim);
    if (threads < 1) threads = 1;
    lim->threads = threads;
    const cpu_features *f = cpu_features_get();
    const int avx512 = f->avx512f, avx2 = f->avx2 && f->fma;
    const int bf16 = f->avx512bf16, vnni = f->avx512vnni;
    double part = seconds / 5;
    if (avx512) lim->fma_avx512_gflops = rate(loop_fma512, threads, part) * CHAINS * 32 / 1e9;
    if (avx2) lim->fma_avx2_gflops = rate(loop_fma256, threads, part) * CHAINS * 16 / 1e9;
    if (bf16) lim->bf16_dot_gflops = rate(loop_bf16, threads, part) * CHAINS * 64 / 1e9;
    if (vnni) lim->int8_dot_gops = rate(loop_int8, threads, part) * CHAINS * 128 / 1e9;

    /* 1 GiB would be safer against huge caches but other work shares this memory;
     * 512 MiB is 16x any L3 here. */
    const size_t bytes = (size_t)512 << 20, n = bytes / sizeof(float);
    float *buf = aligned_alloc(64, bytes);
    lim->buffer_mb = (double)bytes / (1 << 20);
    if (!buf) return -1;
    /* huge pages where the kernel allows them: the walk measures DRAM, not the TLB */
    madvise(buf, bytes, MADV_HUGEPAGE);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023) * 1e-3f;
    double best = 0, total = 0;
    for (int pass = 0; pass < 6; pass++) {
        double t0 = now_s();
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
            int id = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t chunk = n / (size_t)nt / 128 * 128, lo = (size_t)id * chunk;
            size_t len = id == nt - 1 ? n - lo : chunk;
            total += avx512 ? sum_avx512(buf + lo, len) : sum_plain(buf + lo, len);
        }
        double gbs = (double)bytes / (now_s() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    sink_f = (float)total;
    lim->bandwidth_gbs = best;
    free(buf);
    return 0;
}
