/* The fused loss's step between its two matmuls, on a CPU (qkov.loss): for each row of a
 * chunk of logits, in place,
 *     loss[r] = logsumexp(row) - row[target[r]]          (exact: no log of a probability)
 *     row     = softmax(row) - onehot(target[r])         (d loss / d logits)
 * in three passes over the row, in L1 after the first (max; exp and sum; the scaling).
 * Rows are split between torch's OpenMP threads. Built by qkov.kernels like every kernel.
 */
#include <math.h>
#include <omp.h>

#include "vec.h"

void qkov_softmax_xent(int rows, int V, float *logits, const long long *targets, float *loss) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *row = logits + (i64)r * V;
        const long long t = targets[r];
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
        const float inv = 1.0f / sum;
        for (int j = 0; j < full; j += 16) STORE(row + j, LOAD(row + j) * inv);
        for (int j = full; j < V; j++) row[j] *= inv;
        loss[r] = m + logf(sum) - logit_t;
        row[t] -= 1.0f;
    }
}
