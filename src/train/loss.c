/*
 * loss.c - log-probabilities of chosen tokens under the language-model head and their
 * backward, HEAD_CHUNK_ROWS rows at a time (see loss.h).
 *
 * Numerics, per row of a chunk's logits z (f32, from linear_forward):
 *   zs_j = z_j / tau (f32, a division as torch's logits / temperature);
 *   m = max_j zs_j; e_j = exp(zs_j - m) in f32 by the dispatched vectorised exp
 *   (akern.exp_f32, within 2 ulp of expf); S = sum_j e_j in double, in index order;
 *   lse = f32(m + log S), logp = f32((zs_t - m) - log S) (double; not zs_t - f32 lse).
 * The backward recomputes z with the same chunking (so the same linear path and the
 * same bits), p_j = exp(zs_j - lse) (same exp), and writes dz over the logits:
 *   dz_j = -(a p_j), dz_t = a (1 - p_t), a = g / tau;
 * then dh = dz W and dW += dz^T h by linear_backward_input / linear_backward_weight.
 * Rows of a chunk are threaded (OpenMP); each row is computed the same way whichever
 * thread does it, so nothing depends on the number of threads.
 */
#include "loss.h"

#include <math.h>

#include "kernels/attention.h"
#include "kernels/backward.h"

/* Row statistics are threaded from this many logits per chunk on. */
#define HEAD_PARALLEL_MIN 32768

size_t head_scratch_floats(int vocab) { return (size_t)HEAD_CHUNK_ROWS * (size_t)vocab; }

/* max_j z_j / tau (the division is monotonic, so it is max(z) / tau exactly). */
static float row_max_scaled(const float *z, int V, float tau) {
    float mx = z[0];
    for (int j = 1; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    return mx / tau;
}

void head_logprob_forward(float *logp, float *lse, const float *h, const kweight *w,
                          const int32_t *targets, int n, float tau, float *scratch) {
    const int V = w->rows, D = w->cols;
    ERGO_ASSERT(V > 0 && tau > 0.0f);
    for (int r0 = 0; r0 < n; r0 += HEAD_CHUNK_ROWS) {
        const int rows = n - r0 < HEAD_CHUNK_ROWS ? n - r0 : HEAD_CHUNK_ROWS;
        linear_forward(scratch, h + (size_t)r0 * D, w, NULL, rows); /* z (rows, V) */
#pragma omp parallel for schedule(static) if ((size_t)rows * (size_t)V >= HEAD_PARALLEL_MIN)
        for (int i = 0; i < rows; i++) {
            float *z = scratch + (size_t)i * V;
            const int t = targets[r0 + i];
            ERGO_ASSERT(t >= 0 && t < V);
            const float m = row_max_scaled(z, V, tau);
            const float zt = z[t] / tau;
            for (int j = 0; j < V; j++) z[j] = z[j] / tau - m;
            akern.exp_f32(z, z, (size_t)V);
            double S = 0.0;
            for (int j = 0; j < V; j++) S += (double)z[j];
            const double logS = log(S);
            lse[r0 + i] = (float)((double)m + logS);
            logp[r0 + i] = (float)((double)(zt - m) - logS);
        }
    }
}

void head_logprob_backward(float *dh, float *dw, const float *g, const float *h,
                           const kweight *w, const int32_t *targets, const float *lse, int n,
                           float tau, float *scratch) {
    const int V = w->rows, D = w->cols;
    ERGO_ASSERT(V > 0 && tau > 0.0f);
    for (int r0 = 0; r0 < n; r0 += HEAD_CHUNK_ROWS) {
        const int rows = n - r0 < HEAD_CHUNK_ROWS ? n - r0 : HEAD_CHUNK_ROWS;
        const float *hc = h + (size_t)r0 * D; /* (rows, D) */
        linear_forward(scratch, hc, w, NULL, rows); /* z (rows, V), as the forward's */
#pragma omp parallel for schedule(static) if ((size_t)rows * (size_t)V >= HEAD_PARALLEL_MIN)
        for (int i = 0; i < rows; i++) {
            float *z = scratch + (size_t)i * V; /* z, then p, then dz */
            const int t = targets[r0 + i];
            ERGO_ASSERT(t >= 0 && t < V);
            const float L = lse[r0 + i], a = g[r0 + i] / tau;
            for (int j = 0; j < V; j++) z[j] = z[j] / tau - L;
            akern.exp_f32(z, z, (size_t)V);
            const float pt = z[t];
            for (int j = 0; j < V; j++) z[j] = -(a * z[j]);
            z[t] = a * (1.0f - pt);
        }
        linear_backward_input(dh + (size_t)r0 * D, scratch, w, rows, 0); /* dh = dz W */
        if (dw) linear_backward_weight(dw, NULL, scratch, hc, rows, V, D); /* dW += dz^T h */
    }
}
