/* Causal self-attention on a CPU, forward and backward, for one fixed d_head.
 *
 * qkov.kernels compiles this file with the machine's C compiler the first time a model of
 * that d_head trains on a CPU (-DDH=<d_head> -O3 -march=native) and calls it through
 * ctypes; Python threads split the (batch, head) pairs between them (ctypes releases the
 * GIL). No torch headers, no Python API: plain float arrays with strides.
 *
 * Per (batch, head), queries in blocks of QB rows: a block's scores S = Q K^T * scale
 * reach only the keys at or before its last row (the causal half is never computed),
 * P = softmax(S) row by row, O = P V. The forward pass stores the log-sum-exp of each row;
 * the backward pass recomputes P from it (no [n, n] buffer kept between the passes):
 *   dV += P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(dO O)) * scale,
 *   dQ  = dS K,    dK += dS^T Q.
 * The products are two register-blocked loops the compiler vectorises: `scores` (rows of
 * A against columns of B^T, the reduction over d_head) and `combine` (rows of A times B,
 * the output d_head wide).
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

/* S[r, j] = sum_c A[r, c] BT[c, j] for r < nr (a multiple of RB), j < ncols (a multiple
 * of CB). A: [nr, DH] contiguous; BT: [DH, ldb]; S: [nr, lds]. */
static void scores(const float *restrict A, const float *restrict BT, int ldb, int nr,
                   int ncols, float *restrict S, int lds) {
    for (int r0 = 0; r0 < nr; r0 += RB)
        for (int j0 = 0; j0 < ncols; j0 += CB) {
            vf acc0[RB] = {0}, acc1[RB] = {0};
#pragma GCC unroll 2
            for (int c = 0; c < DH; c++) {
                const vf b0 = LOAD(BT + (i64)c * ldb + j0), b1 = LOAD(BT + (i64)c * ldb + j0 + 16);
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
                STORE(S + (i64)(r0 + r) * lds + j0 + 16, acc1[r]);
            }
        }
}

/* C[r, :] = sum_k A(r, k) B[k, :] (+= C[r, :] if acc_c) for r < nr (a multiple of RB),
 * k < nk; A(r, k) = A[r * lda + k], or A[k * lda + r] if transposed. B: [nk, DH]; C: [nr, DH]. */
static void combine(const float *restrict A, int lda, int transposed, const float *restrict B,
                    int nk, float *restrict C, int nr, int acc_c) {
    for (int r0 = 0; r0 < nr; r0 += RC) {
        vf acc[RC][NV];
#pragma GCC unroll 16
        for (int r = 0; r < RC; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                acc[r][v] = acc_c ? LOAD(C + (i64)(r0 + r) * DH + 16 * v) : (vf){0};
#pragma GCC unroll 2
        for (int k = 0; k < nk; k++) {
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

/* One head's [n, DH] rows (strided) into a contiguous [rows, DH] buffer, zero past n. */
static void load_rows(const float *src, i64 stride, int n, int rows, float *dst) {
    for (int i = 0; i < rows; i++) {
        if (i + PF < n) prefetch_row(src + (i + PF) * stride);
        if (i < n)
            memcpy(dst + (i64)i * DH, src + i * stride, DH * sizeof(float));
        else
            memset(dst + (i64)i * DH, 0, DH * sizeof(float));
    }
}

/* The transpose of one head's rows: dst[c, j] = src[j, c] for j < n, 0 for n <= j < ld. */
static void load_transposed(const float *src, i64 stride, int n, int ld, float *dst) {
    for (int c = 0; c < DH; c++) memset(dst + (i64)c * ld + n, 0, (ld - n) * sizeof(float));
    for (int j = 0; j < n; j++) {
        if (j + PF < n) prefetch_row(src + (j + PF) * stride);
        for (int c = 0; c < DH; c++) dst[(i64)c * ld + j] = src[j * stride + c];
    }
}

/* Strides, in floats, of a [batch, head, pos, DH] tensor whose last dimension is contiguous. */
typedef struct {
    i64 b, h, n;
} strides;

static const float *at(const float *x, strides s, int bh, int H) {
    return x + (bh / H) * s.b + (bh % H) * s.h;
}

/* row[j] = e^(row[j] * scale - m) for j < len, 0 for len <= j < ncols (a multiple of 16):
 * whole vectors; masked entries get an argument clamped to 0, then are zeroed. */
static void exp_row(float *row, int len, int ncols, float scale, float m) {
    for (int j0 = 0; j0 < ncols; j0 += 16) {
        vf x = LOAD(row + j0) * scale - m;
        x = (vf)((vi)x & (vi)(x < SPLAT(0.0f))); /* min(x, 0): the masked ones may be > 0 */
        STORE(row + j0, vexp(x));
    }
    for (int j = len; j < ncols; j++) row[j] = 0.0f;
}

/* Softmax of one row of scores over its first `len` entries, the rest of its `ncols` (a
 * multiple of 16) set to 0; returns the row's log-sum-exp. The scores are scaled here. */
static float softmax_row(float *row, int len, int ncols, float scale) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < len; j++) m = row[j] * scale > m ? row[j] * scale : m; /* no libm call */
    exp_row(row, len, ncols, scale, m);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < ncols; j++) sum += row[j];
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < ncols; j++) row[j] *= inv;
    return m + logf(sum);
}

/* Forward for the (batch, head) pairs bh0 <= bh < bh1 (bh = batch * H + head):
 * o = softmax(q k^T * scale, causal) v, and lse[bh, i] = the log-sum-exp of row i. */
static int forward_range(int n, int H, int bh0, int bh1, float scale, const float *q,
                           strides sq, const float *k, strides sk, const float *v, strides sv,
                           float *o, strides so, float *lse) {
    const int np = round_up(n, CB);
    float *KT = malloc(sizeof(float) * DH * np), *V = malloc(sizeof(float) * np * DH);
    float *Q = malloc(sizeof(float) * QB * DH), *S = malloc(sizeof(float) * QB * np);
    float *O = malloc(sizeof(float) * QB * DH);
    if (!KT || !V || !Q || !S || !O) {
        free(KT), free(V), free(Q), free(S), free(O);
        return 1;
    }
    for (int bh = bh0; bh < bh1; bh++) {
        const float *qh = at(q, sq, bh, H);
        float *oh = (float *)at(o, so, bh, H);
        load_transposed(at(k, sk, bh, H), sk.n, n, np, KT);
        load_rows(at(v, sv, bh, H), sv.n, n, np, V);
        for (int i0 = 0; i0 < n; i0 += QB) {
            const int nr = n - i0 < QB ? n - i0 : QB, keys = i0 + nr;
            const int ncols = round_up(keys, CB), nr8 = round_up(nr, RB);
            load_rows(qh + i0 * sq.n, sq.n, nr, nr8, Q);
            scores(Q, KT, np, nr8, ncols, S, np);
            for (int r = 0; r < nr8; r++) {
                float *row = S + (i64)r * np;
                if (r < nr)
                    lse[(i64)bh * n + i0 + r] = softmax_row(row, i0 + r + 1, ncols, scale);
                else
                    memset(row, 0, ncols * sizeof(float));
            }
            combine(S, np, 0, V, ncols, O, nr8, 0);
            for (int r = 0; r < nr; r++)
                memcpy(oh + (i0 + r) * so.n, O + (i64)r * DH, DH * sizeof(float));
        }
    }
    free(KT), free(V), free(Q), free(S), free(O);
    return 0;
}

/* Backward for the pairs bh0 <= bh < bh1: dq, dk, dv from do (the gradient of o), with P
 * recomputed from lse. dq, dk and dv are written, not accumulated. */
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
    for (int bh = bh0; bh < bh1; bh++) {
        const float *qh = at(q, sq, bh, H), *oh = at(o, so, bh, H), *doh = at(dout, sdo, bh, H);
        const float *kh = at(k, sk, bh, H);
        float *dqh = (float *)at(dq, sdq, bh, H);
        load_transposed(kh, sk.n, n, np, KT);
        load_transposed(at(v, sv, bh, H), sv.n, n, np, VT);
        load_rows(kh, sk.n, n, np, K);
        memset(dK, 0, sizeof(float) * np * DH);
        memset(dV, 0, sizeof(float) * np * DH);
        for (int i0 = 0; i0 < n; i0 += QB) {
            const int nr = n - i0 < QB ? n - i0 : QB, keys = i0 + nr;
            const int ncols = round_up(keys, CB), nr8 = round_up(nr, RB);
            load_rows(qh + i0 * sq.n, sq.n, nr, nr8, Q);
            load_rows(doh + i0 * sdo.n, sdo.n, nr, nr8, dO);
            scores(Q, KT, np, nr8, ncols, P, np);
            scores(dO, VT, np, nr8, ncols, dS, np);
            for (int r = 0; r < nr8; r++) {
                float *p = P + (i64)r * np, *ds = dS + (i64)r * np;
                if (r >= nr) {
                    memset(p, 0, ncols * sizeof(float));
                    memset(ds, 0, ncols * sizeof(float));
                    continue;
                }
                const int i = i0 + r, len = i + 1;
                const float m = lse[(i64)bh * n + i];
                float delta = 0.0f;
                for (int c = 0; c < DH; c++) delta += dO[r * DH + c] * oh[i * so.n + c];
                exp_row(p, len, ncols, scale, m); /* P recomputed: m is the row's lse */
#pragma omp simd
                for (int j = 0; j < ncols; j++) ds[j] = p[j] * (ds[j] - delta) * scale;
            }
            combine(P, np, 1, dO, nr8, dV, ncols, 1);   /* dV[j] += sum_r P[r, j] dO[r] */
            combine(dS, np, 1, Q, nr8, dK, ncols, 1);   /* dK[j] += sum_r dS[r, j] Q[r] */
            combine(dS, np, 0, K, ncols, dQ, nr8, 0);   /* dQ[r] = sum_j dS[r, j] K[j] */
            for (int r = 0; r < nr; r++)
                memcpy(dqh + (i0 + r) * sdq.n, dQ + (i64)r * DH, DH * sizeof(float));
        }
        float *dkh = (float *)at(dk, sdk, bh, H), *dvh = (float *)at(dv, sdv, bh, H);
        for (int j = 0; j < n; j++) {
            memcpy(dkh + j * sdk.n, dK + (i64)j * DH, DH * sizeof(float));
            memcpy(dvh + j * sdv.n, dV + (i64)j * DH, DH * sizeof(float));
        }
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
