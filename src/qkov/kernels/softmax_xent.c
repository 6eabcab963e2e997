/* The fused loss on a CPU (qkov.loss), two entry points built on one row operation: for a
 * row of logits and its target, in place,
 *     loss    = logsumexp(row) - row[target]                (exact: no log of a probability)
 *     row     = scale (softmax(row) - onehot(target))        (scale d loss / d logits)
 * in three passes over the row, in L1 after the first (max; exp and sum; the scaling).
 *
 * qkov_softmax_xent: that, for each row of a chunk of logits (scale 1), the rows split
 * between torch's OpenMP threads: the step between the chunk's matmuls.
 *
 * qkov_unembed_xent: the whole loss, logits never materialised beyond a block: each thread
 * takes its own rows, and for each block of them makes the block's logits (x W_U), turns
 * them into the gradient (scale 1/n, the mean's), and contracts it at once into grad_x (its
 * rows) and its own partial grad_W_U; the partials are summed at the end. The products are
 * torch's BLAS (its `sgemm_`, passed in as a pointer), each run on the calling thread alone:
 * a block is made, read and contracted by one core, in its cache, where PyTorch's
 * multithreaded matmuls split every product between the cores (the training step's loss at
 * d_model 128: ~1.1x, benchmarks/RESULTS.md). Built by qkov.kernels like every kernel.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

static float xent_row(float *row, int V, long long t, float scale) {
    const float logit_t = row[t]; /* before the row is overwritten */
    const int full = V / 16 * 16;
    vf mv = SPLAT(-INFINITY);
    for (int j = 0; j < full; j += 16) mv = vmax(mv, LOAD(row + j));
    float m = hmax(mv);
    for (int j = full; j < V; j++) m = row[j] > m ? row[j] : m;
    vf sv = SPLAT(0.0f);
    for (int j = 0; j < full; j += 16) {
        const vf e = vexp(LOAD(row + j) - m);
        STORE(row + j, e);
        sv += e;
    }
    float sum = hsum(sv);
    for (int j = full; j < V; j++) {
        const float e = expf(row[j] - m);
        row[j] = e;
        sum += e;
    }
    const float inv = scale / sum;
    for (int j = 0; j < full; j += 16) STORE(row + j, LOAD(row + j) * inv);
    for (int j = full; j < V; j++) row[j] *= inv;
    row[t] -= scale;
    return m + logf(sum) - logit_t;
}

void qkov_softmax_xent(int rows, int V, float *logits, const long long *targets, float *loss) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) loss[r] = xent_row(logits + (i64)r * V, V, targets[r], 1.0f);
}

/* BLAS's sgemm (Fortran interface: column-major, every argument by address) and MKL's
 * per-thread thread count (C interface: returns the previous setting). */
typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const float *, const float *, const int *, const float *, const int *,
                         const float *, float *, const int *);
typedef int (*threads_fn)(int);

/* x [n, D], W [D, V] (row-major, contiguous), targets [n] -> loss [n] (each row's), grad_x
 * [n, D] and grad_w [D, V] of the mean loss, written (not accumulated). Blocks of `block`
 * rows. A row-major [r, c] matrix is BLAS's column-major [c, r], its transpose: so the
 * logits L = x W are L^T = W^T x^T, grad_x = G W^T is grad_x^T = W G^T, and grad_w += x^T G
 * is grad_w^T += G^T x. Returns 1 if a buffer could not be allocated, else 0. */
int qkov_unembed_xent(int n, int D, int V, const float *x, const float *W,
                      const long long *targets, float *loss, float *grad_x, float *grad_w,
                      int block, sgemm_fn sgemm, threads_fn set_threads) {
    const float one = 1.0f, zero = 0.0f, scale = 1.0f / n;
    const i64 DV = (i64)D * V;
    float **partial = NULL; /* each thread's grad_w; thread 0's is grad_w itself */
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        const int T = omp_get_num_threads(), id = omp_get_thread_num();
#pragma omp single
        partial = calloc(T, sizeof(float *));
        /* (the single's implied barrier: every thread sees `partial`) */
        float *logits = malloc(sizeof(float) * block * V);
        float *gw = id == 0 ? grad_w : malloc(sizeof(float) * DV);
        if (partial) partial[id] = logits && gw ? gw : NULL;
#pragma omp barrier
        int ok = partial != NULL; /* the same in every thread: all work, or none */
        for (int k = 0; ok && k < T; k++) ok = partial[k] != NULL;
        failed |= !ok;
        if (ok) {
            const int before = set_threads(1); /* this thread's products on this thread */
            memset(gw, 0, sizeof(float) * DV);
            const int r0 = (int)((i64)n * id / T), r1 = (int)((i64)n * (id + 1) / T);
            for (int b = r0; b < r1; b += block) {
                const int r = r1 - b < block ? r1 - b : block;
                const float *xb = x + (i64)b * D;
                sgemm("N", "N", &V, &r, &D, &one, W, &V, xb, &D, &zero, logits, &V);
                for (int i = 0; i < r; i++)
                    loss[b + i] = xent_row(logits + (i64)i * V, V, targets[b + i], scale);
                sgemm("T", "N", &D, &r, &V, &one, W, &V, logits, &V, &zero, grad_x + (i64)b * D, &D);
                sgemm("N", "T", &V, &D, &r, &one, logits, &V, xb, &D, &one, gw, &V);
            }
            set_threads(before);
#pragma omp barrier
            const i64 c0 = DV * id / T, c1 = DV * (id + 1) / T; /* the partials summed */
            for (int k = 1; k < T; k++) {
                const float *p = partial[k];
                for (i64 c = c0; c < c1; c++) grad_w[c] += p[c];
            }
        }
#pragma omp barrier
        free(logits);
        if (id != 0) free(gw);
    }
    free(partial);
    return failed;
}
