/* Causal self-attention on a CPU, forward and backward, for one fixed d_head.
 *
 * qkov.kernels compiles this file with the machine's C compiler the first time a model of
 * that d_head trains on a CPU (-DDH=<d_head> -O3 -march=native) and calls it through
 * ctypes; torch's OpenMP threads split the (batch, head) pairs between them. No torch
 * headers, no Python API: plain float arrays with strides.
 *
 * Per (batch, head), queries in blocks of QB rows: a block's scores S = (Q * scale) K^T
 * (the queries scaled as they are loaded) reach only the keys at or before its last row
 * (the causal half is never computed). Forward: each row of S becomes e^(S - max) in
 * place, O = that V, and each row of O is divided by its sum as it is stored; the
 * log-sum-exp of each row is kept. The backward pass recomputes P = e^(S - lse) from it
 * (no [n, n] buffer kept between the passes):
 *   dV += P^T dO,  G = P (dO V^T - rowsum(dO O)),  dK += G^T (Q * scale),  dQ = scale G K.
 * The products are two register-blocked loops the compiler vectorises: `scores` (rows of
 * A against columns of B^T, the reduction over d_head) and `combine` (rows of A times B,
 * the output d_head wide); K^T and V^T are made 16 x 16 blocks at a time by shuffles.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#ifndef DH
#error "compile with -DDH=<d_head>"
#endif

#if DH % 16 != 0
#error "DH must be a multiple of 16"
#endif

#define QB 32 /* query rows per block */
#define RB 8  /* rows per register block; QB and every padded length are multiples of it */
#define CB 32 /* score columns per register block; padded key counts are multiples of it */
#define NV (DH / 16)                   /* vectors per row of d_head floats */
#define RC (NV <= 2 ? RB : 16 / NV)   /* rows per register block in `combine` */

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

/* The columns of a query block's scores that each group of RB rows needs: the keys up to
 * the group's last row (i0 + g RB + RB - 1), rounded up to whole 16-float vectors, at most
 * ncols. Nondecreasing in g; past a group's count its scores are never computed or read,
 * which skips a quarter of the diagonal tile of 32 x 32. */
static void group_cols(int i0, int groups, int ncols, int *cols) {
    for (int g = 0; g < groups; g++) {
        const int c = round_up(i0 + g * RB + RB, 16);
        cols[g] = c < ncols ? c : ncols;
    }
}

/* S[r, j] = sum_c A[r, c] BT[c, j] for r < nr (a multiple of RB) and j < cols[r / RB] (a
 * multiple of 16). A: [nr, DH] contiguous; BT: [DH, ldb]; S: [nr, lds]. */
static void scores(const float *restrict A, const float *restrict BT, int ldb, int nr,
                   const int *cols, float *restrict S, int lds) {
    for (int r0 = 0; r0 < nr; r0 += RB) {
        const int nc = cols[r0 / RB];
        for (int j0 = 0; j0 < nc; j0 += CB) {
            const int two = j0 + 16 < nc; /* a 32-column tile, or the last 16 columns */
            vf acc0[RB] = {0}, acc1[RB] = {0};
#pragma GCC unroll 2
            for (int c = 0; c < DH; c++) {
                const vf b0 = LOAD(BT + (i64)c * ldb + j0);
                const vf b1 = two ? LOAD(BT + (i64)c * ldb + j0 + 16) : SPLAT(0.0f);
#pragma GCC unroll 8
                for (int r = 0; r < RB; r++) {
                    const float a = A[(r0 + r) * DH + c];
                    acc0[r] += a * b0;
                    acc1[r] += a * b1;
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < RB; r++) {
                STORE(S + (i64)(r0 + r) * lds + j0, acc0[r]);
                if (two) STORE(S + (i64)(r0 + r) * lds + j0 + 16, acc1[r]);
            }
        }
    }
}

/* C[r, :] = sum_k A(r, k) B[k, :] (+= C[r, :] if acc_c) for r < nr (a multiple of RB),
 * over the k a causal block holds. Not transposed, A(r, k) = A[r * lda + k]: A's rows are
 * query rows and k < cols[r / RB] (the keys its scores hold). Transposed, A(r, k) =
 * A[k * lda + r]: A's rows k < nk are query rows, C's rows keys, and k runs over the query
 * groups whose scores reach key r (cols[k / RB] > r; for a group of RC keys that holds for
 * all of them or none, RC dividing 16). B: [., DH]; C: [nr, DH]. */
static void combine(const float *restrict A, int lda, int transposed, const float *restrict B,
                    const int *cols, int nk, float *restrict C, int nr, int acc_c) {
    int k0 = 0;
    for (int r0 = 0; r0 < nr; r0 += RC) {
        while (transposed && k0 < nk && cols[k0 / RB] <= r0) k0 += RB;
        const int k1 = transposed ? nk : cols[r0 / RB];
        vf acc[RC][NV];
#pragma GCC unroll 16
        for (int r = 0; r < RC; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                acc[r][v] = acc_c ? LOAD(C + (i64)(r0 + r) * DH + 16 * v) : (vf){0};
#pragma GCC unroll 2
        for (int k = transposed ? k0 : 0; k < k1; k++) {
            vf b[NV];
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) b[v] = LOAD(B + (i64)k * DH + 16 * v);
#pragma GCC unroll 16
            for (int r = 0; r < RC; r++) {
                const float a = transposed ? A[(i64)k * lda + r0 + r] : A[(i64)(r0 + r) * lda + k];
#pragma GCC unroll 16
                for (int v = 0; v < NV; v++) acc[r][v] += a * b[v];
            }
        }
#pragma GCC unroll 16
        for (int r = 0; r < RC; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) STORE(C + (i64)(r0 + r) * DH + 16 * v, acc[r][v]);
    }
}

/* The rows of one head lie a whole position apart in memory (all heads of a position
 * are side by side), too far for the hardware prefetcher: ask for rows PF ahead. */
#define PF 8
static void prefetch_row(const float *row) {
    for (int c = 0; c < DH; c += 16) __builtin_prefetch(row + c);
}

/* One head's [n, DH] rows (strided) times mul into a contiguous [rows, DH] buffer, zero
 * past n. */
static void load_rows(const float *src, i64 stride, int n, int rows, float *dst, float mul) {
    for (int i = 0; i < rows; i++) {
        if (i + PF < n) prefetch_row(src + (i + PF) * stride);
        for (int v = 0; v < NV; v++)
            STORE(dst + (i64)i * DH + 16 * v,
                  i < n ? LOAD(src + i * stride + 16 * v) * mul : SPLAT(0.0f));
    }
}

/* The first n rows of a contiguous [., DH] buffer, each times mul[i] (or 1 if mul is
 * NULL), into a head's strided rows. */
static void store_rows(const float *src, const float *mul, int n, float *dst, i64 stride) {
    for (int i = 0; i < n; i++) {
        const float m = mul ? mul[i] : 1.0f;
        for (int v = 0; v < NV; v++)
            STORE(dst + i * stride + 16 * v, LOAD(src + (i64)i * DH + 16 * v) * m);
    }
}

/* The transpose of one head's rows: dst[c, j] = src[j, c] for j < n, 0 for n <= j < ld
 * (ld a multiple of 16), 16 rows at a time. */
static void load_transposed(const float *src, i64 stride, int n, int ld, float *dst) {
    for (int j0 = 0; j0 < n; j0 += 16) {
        for (int i = 0; i < 16; i++)
            if (j0 + 16 + i < n) prefetch_row(src + (j0 + 16 + i) * stride);
        for (int v = 0; v < NV; v++) {
            vf R[16];
            for (int i = 0; i < 16; i++)
                R[i] = j0 + i < n ? LOAD(src + (j0 + i) * stride + 16 * v) : SPLAT(0.0f);
            transpose16(R);
            for (int c = 0; c < 16; c++) STORE(dst + (i64)(16 * v + c) * ld + j0, R[c]);
        }
    }
    const int done = round_up(n, 16);
    for (int c = 0; c < DH; c++) memset(dst + (i64)c * ld + done, 0, (ld - done) * sizeof(float));
}

/* Strides, in floats, of a [batch, head, pos, DH] tensor whose last dimension is contiguous. */
typedef struct {
    i64 b, h, n;
} strides;

static const float *at(const float *x, strides s, int bh, int H) {
    return x + (bh / H) * s.b + (bh % H) * s.h;
}

/* The argument of exp for the 16 entries of a row from j0: x - m where j < len, else -100
 * (whose exp is 0); never above 0 (a masked score may exceed the row's max). */
static inline vf exp_arg(const float *row, int j0, int len, float m) {
    const vf x = LOAD(row + j0) - m;
    const vf capped = vselect(x < SPLAT(0.0f), x, SPLAT(0.0f));
    return j0 + 16 <= len ? capped : vselect(IOTA + j0 < len, capped, SPLAT(-100.0f));
}

/* Softmax's numerator for one row of (already scaled) scores, in place: row[j] = e^(row[j]
 * - m) for j < len, 0 for len <= j < ncols (a multiple of 16), m the max of the first len.
 * Returns the sum of the row; *max = m. One pass for the max, one for exp and the sum. */
static float exp_row(float *row, int len, int ncols, float *max) {
    vf mv = SPLAT(-INFINITY);
    int j0 = 0;
    for (; j0 + 16 <= len; j0 += 16) mv = vmax(mv, LOAD(row + j0));
    if (j0 < len) mv = vmax(mv, vselect(IOTA + j0 < len, LOAD(row + j0), SPLAT(-INFINITY)));
    const float m = hmax(mv);
    vf sum = SPLAT(0.0f);
    for (j0 = 0; j0 < ncols; j0 += 16) {
        const vf e = vexp(exp_arg(row, j0, len, m));
        STORE(row + j0, e);
        sum += e;
    }
    *max = m;
    return hsum(sum);
}

/* Forward for the (batch, head) pairs bh0 <= bh < bh1 (bh = batch * H + head):
 * o = softmax(q k^T * scale, causal) v, and lse[bh, i] = the log-sum-exp of row i.
 * The queries are scaled as they are loaded, and each output row is divided by its
 * softmax's sum as it is stored (the [rows, keys] block is never normalised). */
static int forward_range(int n, int H, int bh0, int bh1, float scale, const float *q,
                           strides sq, const float *k, strides sk, const float *v, strides sv,
                           float *o, strides so, float *lse) {
    const int np = round_up(n, CB);
    float *KT = malloc(sizeof(float) * DH * np), *V = malloc(sizeof(float) * np * DH);
    float *Q = malloc(sizeof(float) * np * DH), *S = malloc(sizeof(float) * QB * np);
    float *O = malloc(sizeof(float) * QB * DH);
    if (!KT || !V || !Q || !S || !O) {
        free(KT), free(V), free(Q), free(S), free(O);
        return 1;
    }
    float inv[QB], max[QB], sum[QB], row_lse[QB];
    int cols[QB / RB];
    for (int bh = bh0; bh < bh1; bh++) {
        float *oh = (float *)at(o, so, bh, H);
        load_transposed(at(k, sk, bh, H), sk.n, n, np, KT);
        load_rows(at(v, sv, bh, H), sv.n, n, np, V, 1.0f);
        load_rows(at(q, sq, bh, H), sq.n, n, np, Q, scale);
        for (int i0 = 0; i0 < n; i0 += QB) {
            const int nr = n - i0 < QB ? n - i0 : QB, keys = i0 + nr;
            const int ncols = round_up(keys, CB), nr8 = round_up(nr, RB);
            group_cols(i0, nr8 / RB, ncols, cols);
            scores(Q + (i64)i0 * DH, KT, np, nr8, cols, S, np);
            for (int r = 0; r < QB; r++) {
                float *row = S + (i64)r * np;
                if (r < nr) {
                    sum[r] = exp_row(row, i0 + r + 1, cols[r / RB], &max[r]);
                } else {
                    if (r < nr8) memset(row, 0, cols[r / RB] * sizeof(float));
                    max[r] = 0.0f, sum[r] = 1.0f;
                }
            }
            for (int r = 0; r < QB; r += 16) {
                STORE(inv + r, SPLAT(1.0f) / LOAD(sum + r));
                STORE(row_lse + r, LOAD(max + r) + vlog(LOAD(sum + r)));
            }
            memcpy(lse + (i64)bh * n + i0, row_lse, nr * sizeof(float));
            combine(S, np, 0, V, cols, ncols, O, nr8, 0);
            store_rows(O, inv, nr, oh + i0 * so.n, so.n);
        }
    }
    free(KT), free(V), free(Q), free(S), free(O);
    return 0;
}

/* Backward for the pairs bh0 <= bh < bh1: dq, dk, dv from do (the gradient of o), with P
 * recomputed from lse. dq, dk and dv are written, not accumulated. With the queries
 * scaled as they are loaded (Qs = Q * scale, the scores as the forward pass made them) and
 * G = dL/dS = P (dP - rowsum(dO O)), dK += G^T Qs and dQ = scale * G K. */
static int backward_range(int n, int H, int bh0, int bh1, float scale, const float *q,
                            strides sq, const float *k, strides sk, const float *v, strides sv,
                            const float *o, strides so, const float *dout, strides sdo,
                            const float *lse, float *dq, strides sdq, float *dk, strides sdk,
                            float *dv, strides sdv) {
    const int np = round_up(n, CB);
    float *KT = malloc(sizeof(float) * DH * np), *VT = malloc(sizeof(float) * DH * np);
    float *K = malloc(sizeof(float) * np * DH), *dK = malloc(sizeof(float) * np * DH);
    float *dV = malloc(sizeof(float) * np * DH), *Q = malloc(sizeof(float) * QB * DH);
    float *dO = malloc(sizeof(float) * QB * DH), *dQ = malloc(sizeof(float) * QB * DH);
    float *P = malloc(sizeof(float) * QB * np), *dS = malloc(sizeof(float) * QB * np);
    if (!KT || !VT || !K || !dK || !dV || !Q || !dO || !dQ || !P || !dS) {
        free(KT), free(VT), free(K), free(dK), free(dV), free(Q), free(dO), free(dQ), free(P),
            free(dS);
        return 1;
    }
    float scales[QB];
    int cols[QB / RB];
    for (int r = 0; r < QB; r++) scales[r] = scale;
    for (int bh = bh0; bh < bh1; bh++) {
        const float *qh = at(q, sq, bh, H), *oh = at(o, so, bh, H), *doh = at(dout, sdo, bh, H);
        const float *kh = at(k, sk, bh, H);
        float *dqh = (float *)at(dq, sdq, bh, H);
        load_transposed(kh, sk.n, n, np, KT);
        load_transposed(at(v, sv, bh, H), sv.n, n, np, VT);
        load_rows(kh, sk.n, n, np, K, 1.0f);
        memset(dK, 0, sizeof(float) * np * DH);
        memset(dV, 0, sizeof(float) * np * DH);
        for (int i0 = 0; i0 < n; i0 += QB) {
            const int nr = n - i0 < QB ? n - i0 : QB, keys = i0 + nr;
            const int ncols = round_up(keys, CB), nr8 = round_up(nr, RB);
            load_rows(qh + i0 * sq.n, sq.n, nr, nr8, Q, scale);
            load_rows(doh + i0 * sdo.n, sdo.n, nr, nr8, dO, 1.0f);
            group_cols(i0, nr8 / RB, ncols, cols);
            scores(Q, KT, np, nr8, cols, P, np);
            scores(dO, VT, np, nr8, cols, dS, np);
            for (int r = 0; r < nr8; r++) {
                float *p = P + (i64)r * np, *ds = dS + (i64)r * np;
                const int nc = cols[r / RB];
                if (r >= nr) {
                    memset(p, 0, nc * sizeof(float));
                    memset(ds, 0, nc * sizeof(float));
                    continue;
                }
                const int i = i0 + r, len = i + 1;
                const float m = lse[(i64)bh * n + i]; /* P recomputed: m is the row's lse */
                vf dot = SPLAT(0.0f);
                for (int c = 0; c < NV; c++)
                    dot += LOAD(dO + r * DH + 16 * c) * LOAD(oh + i * so.n + 16 * c);
                const vf delta = SPLAT(hsum(dot));
                for (int j0 = 0; j0 < nc; j0 += 16) {
                    const vf e = vexp(exp_arg(p, j0, len, m));
                    STORE(p + j0, e);
                    STORE(ds + j0, e * (LOAD(ds + j0) - delta));
                }
            }
            combine(P, np, 1, dO, cols, nr8, dV, ncols, 1); /* dV[j] += sum_r P[r, j] dO[r] */
            combine(dS, np, 1, Q, cols, nr8, dK, ncols, 1); /* dK[j] += sum_r G[r, j] Qs[r] */
            combine(dS, np, 0, K, cols, ncols, dQ, nr8, 0); /* dQ[r] = sum_j G[r, j] K[j] */
            store_rows(dQ, scales, nr, dqh + i0 * sdq.n, sdq.n);
        }
        store_rows(dK, NULL, n, (float *)at(dk, sdk, bh, H), sdk.n);
        store_rows(dV, NULL, n, (float *)at(dv, sdv, bh, H), sdv.n);
    }
    free(KT), free(VT), free(K), free(dK), free(dV), free(Q), free(dO), free(dQ), free(P),
        free(dS);
    return 0;
}

/* The (batch, head) pairs split evenly between the OpenMP threads: the process's own pool
 * (torch's libgomp, which this library resolves to), sized by torch.set_num_threads. */
#define SPLIT(call)                                                                           \
    int failed = 0;                                                                           \
    _Pragma("omp parallel reduction(| : failed)") {                                          \
        const int T = omp_get_num_threads(), t = omp_get_thread_num();                       \
        const int bh0 = (int)((i64)BH * t / T), bh1 = (int)((i64)BH * (t + 1) / T);           \
        if (bh0 < bh1) failed |= call;                                                        \
    }                                                                                         \
    return failed;

int qkov_attention_forward(int n, int H, int BH, float scale, const float *q, strides sq,
                           const float *k, strides sk, const float *v, strides sv, float *o,
                           strides so, float *lse) {
    SPLIT(forward_range(n, H, bh0, bh1, scale, q, sq, k, sk, v, sv, o, so, lse))
}

int qkov_attention_backward(int n, int H, int BH, float scale, const float *q, strides sq,
                            const float *k, strides sk, const float *v, strides sv,
                            const float *o, strides so, const float *dout, strides sdo,
                            const float *lse, float *dq, strides sdq, float *dk, strides sdk,
                            float *dv, strides sdv) {
    SPLIT(backward_range(n, H, bh0, bh1, scale, q, sq, k, sk, v, sv, o, so, dout, sdo, lse, dq,
                         sdq, dk, sdk, dv, sdv))
}
