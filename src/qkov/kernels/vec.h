/* What qkov's C kernels share: 16-float vectors (GCC vector extensions: AVX-512 registers
 * where the CPU has them, pairs of AVX2 ones or SSE quads elsewhere) and their exp. */
#ifndef QKOV_VEC_H
#define QKOV_VEC_H

typedef long long i64;
typedef float vf __attribute__((vector_size(64)));              /* 16 floats */
typedef float vfu __attribute__((vector_size(64), aligned(4))); /* the same, unaligned */
#define LOAD(p) (*(const vfu *)(p))
#define STORE(p, x) (*(vfu *)(p) = (x))

typedef int vi __attribute__((vector_size(64)));
#define SPLAT(x) ((vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x})
#define IOTA ((vi){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})

/* Lanewise: where `keep`, a; else b. */
static inline vf vselect(vi keep, vf a, vf b) { return (vf)(((vi)a & keep) | ((vi)b & ~keep)); }
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }

/* Transposes 16 rows of 16 floats in place (R[c][j] becomes R[j][c]): four rounds of
 * two-vector shuffles, each pairing rows s apart (s = 8, 4, 2, 1). */
static inline void transpose16(vf R[16]) {
    static const vi lo[4] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
        {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
        {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
        {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
    static const vi hi[4] = {
        {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
        {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
        {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
        {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
#pragma GCC unroll 4
    for (int round = 0; round < 4; round++) {
        const int s = 8 >> round;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            if (i & s) continue;
            const vf a = R[i], b = R[i + s];
            R[i] = __builtin_shuffle(a, b, lo[round]);
            R[i + s] = __builtin_shuffle(a, b, hi[round]);
        }
    }
}

/* The largest lane, and the sum of the lanes: halves folded onto each other (16 -> 8 ->
 * 4 -> 2 -> 1), four dependent steps instead of fifteen. */
#define FOLD(x, op)                                                                          \
    do {                                                                                      \
        x = op(x, __builtin_shuffle(x, (vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5,   \
                                            6, 7}));                                          \
        x = op(x, __builtin_shuffle(x, (vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, \
                                            11}));                                            \
        x = op(x, __builtin_shuffle(x, (vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, \
                                            13}));                                            \
        x = op(x, __builtin_shuffle(x, (vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, \
                                            14}));                                            \
    } while (0)
static inline vf vadd(vf a, vf b) { return a + b; }
static inline float hmax(vf x) {
    FOLD(x, vmax);
    return x[0];
}
static inline float hsum(vf x) {
    FOLD(x, vadd);
    return x[0];
}

/* ln x on 16 positive normal floats: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and ln m =
 * 2 atanh(u) with u = (m - 1) / (m + 1), |u| < 0.172, by its series to u^9 (relative
 * error < 2e-9, under float's). */
static inline vf vlog(vf x) {
    const vi bits = (vi)x;
    vf m = (vf)((bits & 0x7fffff) | 0x3f800000); /* [1, 2) */
    const vi big = m > SPLAT(1.41421356f);
    m = vselect(big, m * SPLAT(0.5f), m);
    const vf e = __builtin_convertvector(((bits >> 23) & 0xff) - 127 - big, vf);
    const vf u = (m - SPLAT(1.0f)) / (m + SPLAT(1.0f)), u2 = u * u;
    vf p = SPLAT(1.0f / 9);
    p = p * u2 + SPLAT(1.0f / 7);
    p = p * u2 + SPLAT(1.0f / 5);
    p = p * u2 + SPLAT(1.0f / 3);
    p = p * u2 + SPLAT(1.0f);
    return (SPLAT(2.0f) * u) * p + e * SPLAT(0.693145752f) + e * SPLAT(1.42860677e-06f);
}
/* e^x on 16 floats, for x <= 0 (softmax's arguments): x = n ln 2 + r with |r| <= ln 2 / 2,
 * e^r by its Taylor polynomial of degree 7 (error < 1e-8 relative, under float's 6e-8),
 * 2^n by writing n into the exponent bits. Below -87 (e^x < 2e-38, float's normal range
 * ends) it is 0. Written here, not taken from libm, so that it is always 16 lanes wide. */
static inline vf vexp(vf x) {
    const vi under = x < SPLAT(-87.0f);
    x = (vf)(((vi)x & ~under) | ((vi)SPLAT(-87.0f) & under));
    const vi n = -__builtin_convertvector(SPLAT(0.5f) - x * SPLAT(1.44269504f), vi);
    const vf nf = __builtin_convertvector(n, vf);
    const vf r = (x - nf * SPLAT(0.693145752f)) - nf * SPLAT(1.42860677e-06f);
    vf p = SPLAT(1.0f / 5040);
    p = p * r + SPLAT(1.0f / 720);
    p = p * r + SPLAT(1.0f / 120);
    p = p * r + SPLAT(1.0f / 24);
    p = p * r + SPLAT(1.0f / 6);
    p = p * r + SPLAT(0.5f);
    p = p * r + SPLAT(1.0f);
    p = p * r + SPLAT(1.0f);
    const vf two_n = (vf)((n + 127) << 23);
    return (vf)((vi)(p * two_n) & ~under);
}

#endif
