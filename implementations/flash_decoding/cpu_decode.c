/* One Flash-Decoding partition on the CPU, fp32: the partial attention of one sequence's query
 * rows over cached tokens [j0, j0 + n) of every kv head, read through page offsets (a contiguous
 * cache is one "page"). Built and loaded by implementations/flash_decoding/kernel_build.py;
 * called once per partition from flash_decoding's worker threads (ctypes releases the GIL).
 *
 * Why C: a decode step reads every K and V byte once and does G·Nq multiply-adds per element, so
 * it should run at memory speed. Through torch it is two skinny matmuls per partition (K·qᵀ and
 * p·V, G·Nq ≈ 4 columns), which BLAS runs compute-bound at about half the streaming-read rate of
 * one core, plus a gathered copy of K for a paged cache. Here each K row and V row is read once,
 * in order, with software prefetch a few rows ahead, the G·Nq dot products of a K row kept in
 * registers (8 vector accumulators), and pages read in place (no gather).
 *
 * Per head: pass 1 scores s[r][t] = c·(q_r·K_t), c = scale·log2 e (scores in log2 units); row
 * max m_r and p = 2^(s − m_r), l_r = Σ p over the keys row r may see (query token i of the Nq
 * sees key j iff j <= i + last, `last` = kv_len − Nq); pass 2 o_r = Σ_t p[r][t]·V_t.
 * Outputs are unnormalised; m = −inf, l = 0, o = 0 for a row that sees no key of the partition.
 *
 * Portable C11 with GCC/Clang vector extensions (8 floats); the AVX horizontal sum is used where
 * the compiler targets AVX, a plain loop elsewhere; head_dim % 8 trailing elements by scalar loops.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

static inline v8 ld(const float *p) { v8 x; memcpy(&x, p, sizeof x); return x; }
static inline void st(float *p, v8 x) { memcpy(p, &x, sizeof x); }
static inline v8 bc(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline float hsum(v8 x) { float r = 0.f; for (int i = 0; i < 8; ++i) r += x[i]; return r; }
/* keep a value in a register: stops the compiler from re-loading it as a memory operand */
#define KEEP(x) __asm__("" : "+x"(x))

#ifdef __AVX__
#include <immintrin.h>
/* lane i of the result = the sum of the 8 lanes of a[i] */
static inline v8 hsum8(const v8 *a) {
    __m256 h01 = _mm256_hadd_ps((__m256)a[0], (__m256)a[1]), h23 = _mm256_hadd_ps((__m256)a[2], (__m256)a[3]);
    __m256 h45 = _mm256_hadd_ps((__m256)a[4], (__m256)a[5]), h67 = _mm256_hadd_ps((__m256)a[6], (__m256)a[7]);
    __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
    return (v8)_mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}
#else
static inline v8 hsum8(const v8 *a) { v8 r; for (int i = 0; i < 8; ++i) r[i] = hsum(a[i]); return r; }
#undef KEEP
#define KEEP(x) ((void)0)
#endif

/* 2^x for x <= 0 (scores minus their row max), 8 lanes: 2^round(x) · 2^f, f in [-0.5, 0.5],
 * 2^f by its Taylor series to degree 7 (relative error < 1e-8 before rounding); x below −125
 * gives ~2e-38 instead of 0 (a weight 37 orders of magnitude below the row's largest). */
static inline v8 exp2v(v8 x) {
    const v8 lo = bc(-125.f), magic = bc(12582912.f); /* 1.5·2^23: adding it rounds to an integer */
    i8 small = x < lo;
    x = (v8)((small & (i8)lo) | (~small & (i8)x));
    v8 r = (x + magic) - magic;
    v8 f = x - r;
    const float c1 = 0.6931471805599453f, c2 = 0.2402265069591007f, c3 = 0.05550410866482158f,
                c4 = 0.009618129107628477f, c5 = 0.0013333558146428443f, c6 = 0.00015403530393381608f,
                c7 = 1.525273380405984e-05f;
    v8 p = bc(c7);
    p = p * f + c6; p = p * f + c5; p = p * f + c4; p = p * f + c3; p = p * f + c2; p = p * f + c1;
    p = p * f + 1.f;
    i8 e = __builtin_convertvector(r, i8) << 23;
    return (v8)((i8)p + e);
}


/* rows[t] = address of cached token t (of this partition and head) */
static void fill_rows(const float *base, const int64_t *page_off, int64_t ps, int64_t hoff, int64_t D,
                      int64_t n, const float **rows) {
    int64_t t = 0;
    for (int64_t p = 0; t < n; ++p) {
        const float *pg = base + page_off[p] + hoff;
        for (int64_t i = 0; i < ps && t < n; ++i, ++t) rows[t] = pg + i * D;
    }
}

static inline void prefetch_row(const float *row, int64_t D) {
    const char *p = (const char *)row;
    for (int64_t b = 0; b < D * 4; b += 64) __builtin_prefetch(p + b, 0, 0);
}

/* s[r*n + t] = c · (q_r · K_t) for t < n, rows r < GN; q is (GN, D) */
static void scores(const float *q, float scale, const float *const *rows, int64_t GN, int64_t D, int64_t n,
                   int64_t pf, float *s) {
    const int64_t C = D / 8;
    for (int64_t t = 0; t < n; ++t) {
        const float *k = rows[t];
        if (t + pf < n) prefetch_row(rows[t + pf], D);
        int64_t r = 0;
        for (; r + 4 <= GN; r += 4) {
            const float *q0 = q + r * D;
            v8 a[8] = {0};
            int64_t c = 0;
            for (; c + 2 <= C; c += 2) {
                v8 x0 = ld(k + 8 * c), x1 = ld(k + 8 * c + 8);
                KEEP(x0); KEEP(x1);
                for (int j = 0; j < 4; ++j) {
                    a[j] += ld(q0 + j * D + 8 * c) * x0;
                    a[4 + j] += ld(q0 + j * D + 8 * c + 8) * x1;
                }
            }
            if (c < C) {
                v8 x0 = ld(k + 8 * c);
                for (int j = 0; j < 4; ++j) a[j] += ld(q0 + j * D + 8 * c) * x0;
            }
            v8 h = hsum8(a);
            for (int j = 0; j < 4; ++j) {
                float x = h[j] + h[4 + j];
                for (int64_t d = 8 * C; d < D; ++d) x += q0[j * D + d] * k[d];
                s[(r + j) * n + t] = x * scale;
            }
        }
        for (; r < GN; ++r) {
            v8 a0 = {0}, a1 = {0};
            int64_t c = 0;
            for (; c + 2 <= C; c += 2) {
                a0 += ld(q + r * D + 8 * c) * ld(k + 8 * c);
                a1 += ld(q + r * D + 8 * c + 8) * ld(k + 8 * c + 8);
            }
            if (c < C) a0 += ld(q + r * D + 8 * c) * ld(k + 8 * c);
            float x = hsum(a0 + a1);
            for (int64_t d = 8 * C; d < D; ++d) x += q[r * D + d] * k[d];
            s[r * n + t] = x * scale;
        }
    }
}

/* o_r += Σ_{t < n} p[r*n + t] · V_t for rows r < GN (o zeroed by the caller) */
static void values(const float *p, const float *const *rows, int64_t GN, int64_t D, int64_t n, int64_t pf,
                   float *o) {
    const int64_t C = D / 8;
    int64_t t = 0;
    for (; t + 2 <= n; t += 2) {
        const float *v0 = rows[t], *v1 = rows[t + 1];
        if (t + pf + 1 < n) { prefetch_row(rows[t + pf], D); prefetch_row(rows[t + pf + 1], D); }
        int64_t r = 0;
        for (; r + 4 <= GN; r += 4) {
            v8 w0[4], w1[4];
            for (int j = 0; j < 4; ++j) { w0[j] = bc(p[(r + j) * n + t]); w1[j] = bc(p[(r + j) * n + t + 1]); }
            float *o0 = o + r * D;
            for (int64_t c = 0; c < C; ++c) {
                v8 x0 = ld(v0 + 8 * c), x1 = ld(v1 + 8 * c);
                KEEP(x0); KEEP(x1);
                for (int j = 0; j < 4; ++j) st(o0 + j * D + 8 * c, ld(o0 + j * D + 8 * c) + w0[j] * x0 + w1[j] * x1);
            }
            for (int64_t d = 8 * C; d < D; ++d)
                for (int j = 0; j < 4; ++j) o0[j * D + d] += w0[j][0] * v0[d] + w1[j][0] * v1[d];
        }
        for (; r < GN; ++r) {
            v8 w0 = bc(p[r * n + t]), w1 = bc(p[r * n + t + 1]);
            for (int64_t c = 0; c < C; ++c)
                st(o + r * D + 8 * c, ld(o + r * D + 8 * c) + w0 * ld(v0 + 8 * c) + w1 * ld(v1 + 8 * c));
            for (int64_t d = 8 * C; d < D; ++d) o[r * D + d] += w0[0] * v0[d] + w1[0] * v1[d];
        }
    }
    if (t < n)
        for (int64_t r = 0; r < GN; ++r) {
            v8 w = bc(p[r * n + t]);
            for (int64_t c = 0; c < C; ++c) st(o + r * D + 8 * c, ld(o + r * D + 8 * c) + w * ld(rows[t] + 8 * c));
            for (int64_t d = 8 * C; d < D; ++d) o[r * D + d] += w[0] * rows[t][d];
        }
}

/* row r's softmax numerators over its visible keys t < tn (in place), zeros for tn <= t < n_eff */
static void softmax_row(float *s, int64_t tn, int64_t n_eff, float *m, float *l) {
    if (tn <= 0) {
        *m = -INFINITY; *l = 0.f;
        memset(s, 0, sizeof(float) * (size_t)n_eff);
        return;
    }
    int64_t t = 0;
    v8 mv = bc(-INFINITY);
    for (; t + 8 <= tn; t += 8) { v8 x = ld(s + t); i8 gt = x > mv; mv = (v8)((gt & (i8)x) | (~gt & (i8)mv)); }
    float mx = -INFINITY;
    for (int i = 0; i < 8; ++i) mx = mv[i] > mx ? mv[i] : mx;
    for (; t < tn; ++t) mx = s[t] > mx ? s[t] : mx;
    v8 sum = {0}, mb = bc(mx);
    float tail = 0.f;
    for (t = 0; t + 8 <= tn; t += 8) { v8 e = exp2v(ld(s + t) - mb); st(s + t, e); sum += e; }
    for (; t < tn; ++t) { s[t] = exp2f(s[t] - mx); tail += s[t]; }
    if (n_eff > tn) memset(s + tn, 0, sizeof(float) * (size_t)(n_eff - tn));
    *m = mx;
    *l = hsum(sum) + tail;
}

/* See the top of the file. q (Hkv, GN, D) unscaled, c = scale·log2 e; page_off[i]: element offset
 * of page i of the partition (head 0, slot 0) from k/v; ps: tokens per page; head_stride: elements
 * between heads in a page; [j0, j0 + n): the partition's tokens, all < kv_len = last + Nq;
 * scratch: GN·n floats; rows: n pointers; o (Hkv, GN, D), m and l (Hkv, GN). Returns 0. */
int attnbench_fd_partition_f32(const float *q, float c, const float *k, const float *v, const int64_t *page_off,
                               int64_t ps, int64_t head_stride, int64_t Hkv, int64_t GN, int64_t Nq,
                               int64_t D, int64_t j0, int64_t n, int64_t last, float *scratch,
                               const float **rows, float *o, float *m, float *l) {
    /* software prefetch distance: ~8 KiB of rows ahead (16 rows at D = 128). Measured with 2
     * threads (B=8, Hq=32, Hkv=8, D=128, KV=8192): 1 KiB 27.0/30.8 ms (contiguous/paged 16),
     * 4 KiB 24.6/28.2, 8 KiB 23.4/26.2, 16 KiB 23.4/28.2, 32 KiB 27.0/29.9. */
    const int64_t pf = 8192 / (D * 4) > 2 ? 8192 / (D * 4) : 2;
    for (int64_t h = 0; h < Hkv; ++h) {
        const float *qh = q + h * GN * D;
        float *oh = o + h * GN * D, *mh = m + h * GN, *lh = l + h * GN;
        memset(oh, 0, sizeof(float) * (size_t)(GN * D));
        if (n == 0) {
            for (int64_t r = 0; r < GN; ++r) { mh[r] = -INFINITY; lh[r] = 0.f; }
            continue;
        }
        fill_rows(k, page_off, ps, h * head_stride, D, n, rows);
        scores(qh, c, rows, GN, D, n, pf, scratch);
        for (int64_t r = 0; r < GN; ++r) {
            int64_t tn = (r % Nq) + last - j0 + 1;
            tn = tn < 0 ? 0 : (tn > n ? n : tn);
            softmax_row(scratch + r * n, tn, n, mh + r, lh + r);
        }
        fill_rows(v, page_off, ps, h * head_stride, D, n, rows);
        values(scratch, rows, GN, D, n, pf, oh);
    }
    return 0;
}
