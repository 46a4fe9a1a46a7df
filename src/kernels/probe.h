/*
 * probe.h - measures this machine's limits with a given number of threads, so
 * `ergo bench` can say how close each kernel gets to what the hardware allows.
 *
 *   probe_limits lim;
 *   probe_run(&lim, 2, 1.0);   // 2 threads, about 1 s per figure set
 *   printf("%.1f GB/s\n", lim.bandwidth_gbs);
 *
 * Each throughput figure is a tight loop of independent instructions of one kind
 * (enough chains to hide latency) on every thread; 0 means the CPU lacks it.
 * Bandwidth is a streaming sum over a buffer far larger than the caches, split
 * between the threads; the best of several passes is kept.
 */
#ifndef ERGO_PROBE_H
#define ERGO_PROBE_H

typedef struct probe_limits {
    int threads;
    double bandwidth_gbs;     /* memory read, GB/s (1e9 bytes) */
    double fma_avx512_gflops; /* f32 FMA on 16 lanes, GFLOP/s (an FMA = 2 FLOPs) */
    double fma_avx2_gflops;   /* f32 FMA on 8 lanes */
    double bf16_dot_gflops;   /* _mm512_dpbf16_ps: 32 bf16 products + sums per instruction */
    double int8_dot_gops;     /* _mm512_dpbusd_epi32: 64 u8*s8 products + sums per instruction */
    double buffer_mb;         /* size of the bandwidth buffer */
} probe_limits;

/* Fills *lim; `seconds` scales the run time (about that long in total). Returns 0,
 * or -1 if the bandwidth buffer could not be allocated (its figure is then 0). */
int probe_run(probe_limits *lim, int threads, double seconds);

#endif
