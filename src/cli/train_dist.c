/*
 * train_dist.c - MPI data parallelism for training (train_dist.h).
 */
#include "train_dist.h"

#include <stdlib.h>

#ifdef ERGO_MPI
#include <mpi.h>
#endif

#define CHUNK ((size_t)1 << 24)

void train_dist_init(train_dist *d) {
    d->rank = 0, d->size = 1, d->inited = 0;
#ifdef ERGO_MPI
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK")) {
        MPI_Init(NULL, NULL);
        d->inited = 1;
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    }
#endif
}

void train_dist_finalize(train_dist *d) {
#ifdef ERGO_MPI
    if (d->inited) MPI_Finalize();
#endif
    d->inited = 0;
}

#ifdef ERGO_MPI
static void sum_chunks(const train_dist *d, void *buf, size_t n, size_t elem, MPI_Datatype t) {
    for (size_t i = 0; i < n; i += CHUNK) {
        const size_t m = n - i < CHUNK ? n - i : CHUNK;
        MPI_Allreduce(MPI_IN_PLACE, (char *)buf + i * elem, (int)m, t, MPI_SUM, MPI_COMM_WORLD);
    }
    (void)d;
}
#endif

void train_dist_sum_f32(const train_dist *d, float *buf, size_t n) {
#ifdef ERGO_MPI
    if (d->size > 1) sum_chunks(d, buf, n, sizeof *buf, MPI_FLOAT);
#else
    (void)d, (void)buf, (void)n;
#endif
}

void train_dist_sum_f64(const train_dist *d, double *buf, size_t n) {
#ifdef ERGO_MPI
    if (d->size > 1) sum_chunks(d, buf, n, sizeof *buf, MPI_DOUBLE);
#else
    (void)d, (void)buf, (void)n;
#endif
}

void train_dist_sum_i64(const train_dist *d, int64_t *buf, size_t n) {
#ifdef ERGO_MPI
    if (d->size > 1) sum_chunks(d, buf, n, sizeof *buf, MPI_INT64_T);
#else
    (void)d, (void)buf, (void)n;
#endif
}

int train_dist_any(const train_dist *d, int flag) {
    int any = flag != 0;
#ifdef ERGO_MPI
    if (d->size > 1) MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#else
    (void)d;
#endif
    return any;
}

void train_dist_broadcast(const train_dist *d, void *buf, size_t n) {
#ifdef ERGO_MPI
    for (size_t i = 0; d->size > 1 && i < n; i += CHUNK) {
        const size_t m = n - i < CHUNK ? n - i : CHUNK;
        MPI_Bcast((char *)buf + i, (int)m, MPI_BYTE, 0, MPI_COMM_WORLD);
    }
#else
    (void)d, (void)buf, (void)n;
#endif
}
