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
