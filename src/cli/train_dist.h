/*
 * train_dist.h - data-parallel training over Open MPI (training.md section 4.1):
 * every rank runs the same model on its share of the global batch; gradients and
 * token counts are summed with MPI_Allreduce, so every rank applies the same update.
 * Without MPI (built without libopenmpi-dev, or not started by mpirun) there is one
 * rank and every call is the identity.
 *
 *   train_dist d;  train_dist_init(&d);          // rank, size
 *   train_dist_sum_i64(&d, &tokens, 1);          // global token count
 *   train_dist_sum_f32(&d, grad, n);             // after each rank's backward
 *   train_dist_finalize(&d);
 */
#ifndef ERGO_TRAIN_DIST_H
#define ERGO_TRAIN_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct train_dist {
    int rank, size;
    int inited;          /* 1: this process called MPI_Init */
} train_dist;

/* Joins the MPI job when launched by mpirun (OMPI_COMM_WORLD_SIZE / PMIX_RANK set). */
void train_dist_init(train_dist *d);
void train_dist_finalize(train_dist *d);

/* In-place sums over the ranks. Floats go in chunks of at most 2^24 elements (MPI
 * counts are int; the chunks keep the reduction's buffers bounded). */
void train_dist_sum_f32(const train_dist *d, float *buf, size_t n);
void train_dist_sum_f64(const train_dist *d, double *buf, size_t n);
void train_dist_sum_i64(const train_dist *d, int64_t *buf, size_t n);
/* 1 when any rank passes a non-zero flag (a rank's failure stops them all). */
int train_dist_any(const train_dist *d, int flag);
/* Rank 0's bytes to every rank (the run configuration, resume state). */
void train_dist_broadcast(const train_dist *d, void *buf, size_t n);

#endif
