/* One Flash-Decoding partition on the CPU, fp32 queries and accumulation: the partial attention
 * of one sequence's query rows over cached tokens [j0, j0 + n) of every kv head, read through page
 * offsets (a contiguous cache is one "page"). Built and loaded by
 * implementations/flash_decoding/kernel_build.py; called once per partition from flash_decoding's
 * worker threads (ctypes releases the GIL).
 *
 * The cache is read in its stored type, converted in registers (kv_dtype): float32; bfloat16
 * (its 16 bits are the top half of a float32: a shift); float8 e4m3fn (sign, 4 exponent bits with
 * bias 7, 3 mantissa bits: moved into a float16 or float32 of a larger exponent bias and read as
 * its value times 2^-8 (see ldc) -- exact for normals and subnormals; the caller folds 2^8 into
 * the per-head scales; NaN codes, which a saturating encoder never writes, read as 480).
 * Per kv head h the scores use c·kscale[h] and the partial output is multiplied by vscale[h].
 *
 * Keys and values may be rows of different widths Dk and Dv of one row stride (MLA: one latent
 * row of 576 per token, its first 512 columns the value); with many query rows per kv head (MLA's
 * 128 heads) a register-blocked variant (`blocked`) computes the scores as a small matmul, vector
 * along the query rows (q transposed into scratch), and p·V with a tile of rows x value columns
 * in registers (q arrives transposed: once per call, not per partition): that case is
 * compute-bound, the plain one memory-bound.
 *
 * Why C: a decode step reads every K and V byte once and does G·Nq multiply-adds per element, so
 * it should run at memory speed. Through torch it is two skinny matmuls per partition (K·qᵀ and
 * p·V, G·Nq ≈ 4 columns), which BLAS runs compute-bound at about half the streaming-read rate of
 * one core, plus a gathered copy of K for a paged cache. Here each K row and V row is read once,
 * in order, with software prefetch a few rows ahead, the G·Nq dot products of a K row kept in
 * registers (8 vector accumulators), and pages read in place (no gather); with AVX-512, rows in
 * blocks of 4 and widths a multiple of 16, the 16-lane variant (scores16, values16) instead.
 * What bounds it (one thread, Intel Xeon, B=4, Hkv=8, G=4, D=128, KV=8192): a plain sum over the
 * same rows in the same order streams ~14 GB/s per CPU-second; the kernel 9 (float32), 7.4
 * (bfloat16), 5.6 (float8); from a cache that stays in the last-level cache 27, 20 and 10: the
 * time is about the sum of the compute time and the memory time (the out-of-order window does
 * not overlap them), and the narrow caches carry the same multiply-adds per element plus the
 * conversion (float8: 4-5 port-0/5 uops per 16 elements beside 4 multiply-adds).
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
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));

enum { KV_F32 = 0, KV_BF16 = 1, KV_FP8 = 2 };
static const int64_t ESZ[3] = {4, 2, 1};

static inline v8 ld(const float *p) { v8 x; memcpy(&x, p, sizeof x); return x; }
static inline void st(float *p, v8 x) { memcpy(p, &x, sizeof x); }
static inline v8 bc(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline float hsum(v8 x) { float r = 0.f; for (int i = 0; i < 8; ++i) r += x[i]; return r; }
/* keep a value in a register: stops the compiler from re-loading it as a memory operand */
#define KEEP(x) __asm__("" : "+x"(x))

#if defined(__AVX__) || defined(__F16C__)
#include <immintrin.h>
#endif
#ifdef __AVX__
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

/* 8 cache elements from element i of row p, as float32 (dt is a constant where inlined). A float8
 * e4m3 code reads as its value times 2^-8 (FP8_READ_FACTOR; the caller folds 2^8 into the scales):
 * with F16C its bits moved into a float16 (sign to bit 15, exponent and mantissa to bits 13..7:
 * a float16 of exponent bias 15 instead of 7) converted by vcvtph2ps; elsewhere moved into a
 * float32 (bits 30..20: bias 127, a factor 2^-120) and multiplied by 2^112. */
#define FP8_READ_FACTOR 0x1p-8f
static inline __attribute__((always_inline)) v8 ldc(const void *p, int64_t i, int dt) {
    if (dt == KV_F32) return ld((const float *)p + i);
    if (dt == KV_BF16) {
        u16x8 h; memcpy(&h, (const uint16_t *)p + i, sizeof h);
        return (v8)(__builtin_convertvector(h, i8) << 16);
    }
#if defined(__AVX2__) && defined(__F16C__)
    __m128i b = _mm_loadl_epi64((const __m128i *)((const uint8_t *)p + i));
    __m128i w = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b), 7), _mm_set1_epi16((short)0xBFFF));
    return (v8)_mm256_cvtph_ps(w);
#else
    u8x8 b; memcpy(&b, (const uint8_t *)p + i, sizeof b);
    i8 x = __builtin_convertvector(b, i8);
    return (v8)(((x & 0x7f) << 20) | ((x & 0x80) << 24)) * 0x1p112f;
#endif
}

static inline __attribute__((always_inline)) float ldc1(const void *p, int64_t i, int dt) {
    uint32_t u;
    float f;
    if (dt == KV_F32) return ((const float *)p)[i];
    if (dt == KV_BF16) u = (uint32_t)((const uint16_t *)p)[i] << 16;
    else { uint32_t x = ((const uint8_t *)p)[i]; u = ((x & 0x7f) << 20) | ((x & 0x80) << 24); }
    memcpy(&f, &u, sizeof f);
    return dt == KV_FP8 ? f * 0x1p112f : f;
}

/* the factor a float8 code is read with (see ldc), for the caller's scales */
float attnbench_fd_fp8_read_factor(void) { return FP8_READ_FACTOR; }

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


/* rows[t] = address of cached token t (of this partition and head); offsets and strides in
 * elements of esz bytes */
static void fill_rows(const char *base, const int64_t *page_off, int64_t ps, int64_t hoff, int64_t stride,
                      int64_t esz, int64_t n, const void **rows) {
    int64_t t = 0;
    for (int64_t p = 0; t < n; ++p) {
        const char *pg = base + (page_off[p] + hoff) * esz;
        for (int64_t i = 0; i < ps && t < n; ++i, ++t) rows[t] = pg + i * stride * esz;
    }
}

#ifndef PF_LOCALITY
#define PF_LOCALITY 1
#endif
#ifndef PF_BYTES
#define PF_BYTES 4096
#endif
static inline void prefetch_row(const void *row, int64_t bytes) {
    const char *p = (const char *)row;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, PF_LOCALITY);
}

/* s[r*n + t] = c · (q_r · K_t) for t < n, rows r < GN; q is (GN, D) */
static inline __attribute__((always_inline)) void scores(const float *q, float scale, const void *const *rows,
                                                         int64_t GN, int64_t D, int64_t n, int64_t pf, float *s,
                                                         int dt) {
    const int64_t C = D / 8;
    int64_t t = 0;
    if (dt != KV_F32 && GN % 4 == 0) /* converted caches: two tokens share each q load (fewer uops per byte) */
        for (; t + 2 <= n; t += 2) {
            const void *k0 = rows[t], *k1 = rows[t + 1];
            if (t + pf + 1 < n) { prefetch_row(rows[t + pf], D * ESZ[dt]); prefetch_row(rows[t + pf + 1], D * ESZ[dt]); }
            for (int64_t r = 0; r < GN; r += 4) {
                const float *q0 = q + r * D;
                v8 a[8] = {0}; /* a[2j + u]: row r + j, token t + u */
                for (int64_t c = 0; c < C; ++c) {
                    v8 x0 = ldc(k0, 8 * c, dt), x1 = ldc(k1, 8 * c, dt);
                    KEEP(x0); KEEP(x1);
                    for (int j = 0; j < 4; ++j) {
                        v8 qv = ld(q0 + j * D + 8 * c);
                        a[2 * j] += qv * x0;
                        a[2 * j + 1] += qv * x1;
                    }
                }
                v8 h = hsum8(a);
                for (int j = 0; j < 4; ++j)
                    for (int u = 0; u < 2; ++u) {
                        float x = h[2 * j + u];
                        for (int64_t d = 8 * C; d < D; ++d) x += q0[j * D + d] * ldc1(u ? k1 : k0, d, dt);
                        s[(r + j) * n + t + u] = x * scale;
                    }
            }
        }
    for (; t < n; ++t) {
        const void *k = rows[t];
        if (t + pf < n) prefetch_row(rows[t + pf], D * ESZ[dt]);
        int64_t r = 0;
        for (; r + 4 <= GN; r += 4) {
            const float *q0 = q + r * D;
            v8 a[8] = {0};
            int64_t c = 0;
            for (; c + 2 <= C; c += 2) {
                v8 x0 = ldc(k, 8 * c, dt), x1 = ldc(k, 8 * c + 8, dt);
                KEEP(x0); KEEP(x1);
                for (int j = 0; j < 4; ++j) {
                    a[j] += ld(q0 + j * D + 8 * c) * x0;
                    a[4 + j] += ld(q0 + j * D + 8 * c + 8) * x1;
                }
            }
            if (c < C) {
                v8 x0 = ldc(k, 8 * c, dt);
                for (int j = 0; j < 4; ++j) a[j] += ld(q0 + j * D + 8 * c) * x0;
            }
            v8 h = hsum8(a);
            for (int j = 0; j < 4; ++j) {
                float x = h[j] + h[4 + j];
                for (int64_t d = 8 * C; d < D; ++d) x += q0[j * D + d] * ldc1(k, d, dt);
                s[(r + j) * n + t] = x * scale;
            }
        }
        for (; r < GN; ++r) {
            v8 a0 = {0}, a1 = {0};
            int64_t c = 0;
            for (; c + 2 <= C; c += 2) {
                a0 += ld(q + r * D + 8 * c) * ldc(k, 8 * c, dt);
                a1 += ld(q + r * D + 8 * c + 8) * ldc(k, 8 * c + 8, dt);
            }
            if (c < C) a0 += ld(q + r * D + 8 * c) * ldc(k, 8 * c, dt);
            float x = hsum(a0 + a1);
            for (int64_t d = 8 * C; d < D; ++d) x += q[r * D + d] * ldc1(k, d, dt);
            s[r * n + t] = x * scale;
        }
    }
}

/* o_r += Σ_{t < n} p[r*n + t] · V_t for rows r < GN (o zeroed by the caller). Four value rows per
 * step: each chunk of o is loaded and stored once per four tokens, and each converted V chunk
 * serves four query rows. */
static inline __attribute__((always_inline)) void values(const float *p, const void *const *rows, int64_t GN,
                                                         int64_t D, int64_t n, int64_t pf, float *o, int dt) {
    const int64_t C = D / 8;
    const int64_t bytes = D * ESZ[dt];
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const void *vr[4] = {rows[t], rows[t + 1], rows[t + 2], rows[t + 3]};
        for (int u = 0; u < 4; ++u)
            if (t + pf + u < n) prefetch_row(rows[t + pf + u], bytes);
        int64_t r = 0;
        for (; r + 4 <= GN; r += 4) {
            v8 w[4][4];
            for (int j = 0; j < 4; ++j)
                for (int u = 0; u < 4; ++u) w[j][u] = bc(p[(r + j) * n + t + u]);
            float *o0 = o + r * D;
            for (int64_t c = 0; c < C; ++c) {
                v8 x[4];
                for (int u = 0; u < 4; ++u) { x[u] = ldc(vr[u], 8 * c, dt); KEEP(x[u]); }
                for (int j = 0; j < 4; ++j)
                    st(o0 + j * D + 8 * c,
                       ld(o0 + j * D + 8 * c) + w[j][0] * x[0] + w[j][1] * x[1] + w[j][2] * x[2] + w[j][3] * x[3]);
            }
            for (int64_t d = 8 * C; d < D; ++d)
                for (int j = 0; j < 4; ++j)
                    for (int u = 0; u < 4; ++u) o0[j * D + d] += w[j][u][0] * ldc1(vr[u], d, dt);
        }
        for (; r < GN; ++r) {
            v8 w[4];
            for (int u = 0; u < 4; ++u) w[u] = bc(p[r * n + t + u]);
            for (int64_t c = 0; c < C; ++c)
                st(o + r * D + 8 * c, ld(o + r * D + 8 * c) + w[0] * ldc(vr[0], 8 * c, dt) + w[1] * ldc(vr[1], 8 * c, dt)
                                          + w[2] * ldc(vr[2], 8 * c, dt) + w[3] * ldc(vr[3], 8 * c, dt));
            for (int64_t d = 8 * C; d < D; ++d)
                for (int u = 0; u < 4; ++u) o[r * D + d] += w[u][0] * ldc1(vr[u], d, dt);
        }
    }
    for (; t < n; ++t)
        for (int64_t r = 0; r < GN; ++r) {
            v8 w = bc(p[r * n + t]);
            for (int64_t c = 0; c < C; ++c) st(o + r * D + 8 * c, ld(o + r * D + 8 * c) + w * ldc(rows[t], 8 * c, dt));
            for (int64_t d = 8 * C; d < D; ++d) o[r * D + d] += w[0] * ldc1(rows[t], d, dt);
        }
}

/* ---- the 16-lane variant (AVX-512; query rows a multiple of 4, head widths a multiple of 16) ------
 * The same two passes as scores/values with 512-bit vectors: half the multiply-add, load and
 * conversion instructions per cache byte of the 8-lane code, which matters most for the narrow
 * caches (a float8 row of 128 bytes carries the multiply-adds of a 512-byte float32 row). Scores:
 * 4 rows x 4 tokens of accumulators, their 16 dot products reduced together (halves added, then
 * two hsum8). p·V: 4 rows x 4 tokens of weights in registers, each chunk of o loaded and stored
 * once per four tokens. */
#ifdef __AVX512F__
static inline __attribute__((always_inline)) __m512 ldz(const void *p, int64_t i, int dt) {
    if (dt == KV_F32) return _mm512_loadu_ps((const float *)p + i);
    if (dt == KV_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))), 16));
    __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((const uint8_t *)p + i)));
    w = _mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16((short)0xBFFF)); /* as ldc */
    return _mm512_cvtph_ps(w);
}

static inline v8 halves(__m512 x) {
    return (v8)_mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

/* out = rows t..t+3, and the rows pf further on prefetched */
static inline __attribute__((always_inline)) void four_rows(const void *const *rows, int64_t t, int64_t n, int64_t pf,
                                                            int64_t bytes, const void **out) {
    for (int u = 0; u < 4; ++u) {
        out[u] = rows[t + u];
        if (t + pf + u < n) prefetch_row(rows[t + pf + u], bytes);
    }
}

static inline __attribute__((always_inline)) void scores16(const float *q, float scale, const void *const *rows,
                                                           int64_t GN, int64_t D, int64_t n, int64_t pf, float *s,
                                                           int dt) {
    const int64_t bytes = D * ESZ[dt];
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const void *kr[4];
        four_rows(rows, t, n, pf, bytes, kr);
        for (int64_t r = 0; r < GN; r += 4) {
            const float *q0 = q + r * D;
            __m512 a[16]; /* a[4j + u]: row r + j, token t + u */
            for (int i = 0; i < 16; ++i) a[i] = _mm512_setzero_ps();
            for (int64_t c = 0; c < D; c += 16) {
                __m512 x[4];
                for (int u = 0; u < 4; ++u) x[u] = ldz(kr[u], c, dt);
                for (int j = 0; j < 4; ++j) {
                    __m512 qv = _mm512_loadu_ps(q0 + j * D + c);
                    for (int u = 0; u < 4; ++u) a[4 * j + u] = _mm512_fmadd_ps(qv, x[u], a[4 * j + u]);
                }
            }
            v8 h[16];
            for (int i = 0; i < 16; ++i) h[i] = halves(a[i]);
            v8 lo = hsum8(h), hi = hsum8(h + 8);
            for (int i = 0; i < 8; ++i) {
                s[(r + i / 4) * n + t + i % 4] = lo[i] * scale;
                s[(r + 2 + i / 4) * n + t + i % 4] = hi[i] * scale;
            }
        }
    }
    for (; t < n; ++t)
        for (int64_t r = 0; r < GN; ++r) {
            __m512 a = _mm512_setzero_ps();
            for (int64_t c = 0; c < D; c += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * D + c), ldz(rows[t], c, dt), a);
            s[r * n + t] = _mm512_reduce_add_ps(a) * scale;
        }
}

static inline __attribute__((always_inline)) void values16(const float *p, const void *const *rows, int64_t GN,
                                                           int64_t D, int64_t n, int64_t pf, float *o, int dt) {
    const int64_t bytes = D * ESZ[dt];
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const void *vr[4];
        four_rows(rows, t, n, pf, bytes, vr);
        for (int64_t r = 0; r < GN; r += 4) {
            __m512 w[4][4];
            for (int j = 0; j < 4; ++j)
                for (int u = 0; u < 4; ++u) w[j][u] = _mm512_set1_ps(p[(r + j) * n + t + u]);
            float *o0 = o + r * D;
            for (int64_t c = 0; c < D; c += 16) {
                __m512 x[4];
                for (int u = 0; u < 4; ++u) x[u] = ldz(vr[u], c, dt);
                for (int j = 0; j < 4; ++j) {
                    __m512 acc = _mm512_loadu_ps(o0 + j * D + c);
                    for (int u = 0; u < 4; ++u) acc = _mm512_fmadd_ps(w[j][u], x[u], acc);
                    _mm512_storeu_ps(o0 + j * D + c, acc);
                }
            }
        }
    }
    for (; t < n; ++t)
        for (int64_t r = 0; r < GN; ++r) {
            __m512 w = _mm512_set1_ps(p[r * n + t]);
            for (int64_t c = 0; c < D; c += 16)
                _mm512_storeu_ps(o + r * D + c, _mm512_fmadd_ps(w, ldz(rows[t], c, dt), _mm512_loadu_ps(o + r * D + c)));
        }
}
#define HAVE16 1
#else
#define HAVE16 0
#define scores16 scores
#define values16 values
#endif

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

/* ---- the register-blocked variant (float32 cache, many query rows per kv head: MLA) ---------- */

#if defined(__AVX512F__)
#define W 16
#else
#define W 8
#endif
typedef float vw __attribute__((vector_size(4 * W)));
typedef int32_t iw __attribute__((vector_size(4 * W)));
/* Register tiles, sized to the vector registers (32 with AVX-512, 16 with AVX2): scores, TT
 * tokens x RV row vectors of accumulators (+ RV loads + 1 broadcast); p·V, VR rows x VCOLS value
 * vectors (+ VCOLS loads + 1 broadcast). */
#define TT 6
#define RV (W == 16 ? 4 : 2)
#define VR 6
#define VCOLS (W == 16 ? 4 : 2)

static inline vw ldw(const float *p) { vw x; memcpy(&x, p, sizeof x); return x; }
static inline void stw(float *p, vw x) { memcpy(p, &x, sizeof x); }
static inline vw bcw(float x) { return (vw){0} + x; } /* GCC/Clang broadcast a scalar operand */

/* 2^x lane-wise for x <= 0, as exp2v */
static inline vw exp2w(vw x) {
    const vw lo = bcw(-125.f), magic = bcw(12582912.f);
    iw small = x < lo;
    x = (vw)((small & (iw)lo) | (~small & (iw)x));
    vw r = (x + magic) - magic;
    vw f = x - r;
    vw p = bcw(1.525273380405984e-05f);
    p = p * f + 0.00015403530393381608f; p = p * f + 0.0013333558146428443f; p = p * f + 0.009618129107628477f;
    p = p * f + 0.05550410866482158f; p = p * f + 0.2402265069591007f; p = p * f + 0.6931471805599453f;
    p = p * f + 1.f;
    iw e = __builtin_convertvector(r, iw) << 23;
    return (vw)((iw)p + e);
}

/* sT[(t0 + i)·GNp + rb + v·W + lane] = c · (q · K_t) for nt tokens from t0, nv row vectors from rb;
 * qT (Dk, GNp) */
static inline __attribute__((always_inline)) void score_tile(const float *qT, int64_t GNp, int64_t rb, int nv,
                                                             const void *const *rows, int64_t t0, int nt,
                                                             int64_t Dk, float c, float *sT) {
    vw acc[TT][RV];
    const float *k[TT];
    for (int i = 0; i < nt; ++i) {
        k[i] = rows[t0 + i];
        for (int v = 0; v < nv; ++v) acc[i][v] = bcw(0.f);
    }
    for (int64_t d = 0; d < Dk; ++d) {
        const float *qd = qT + d * GNp + rb;
        vw a[RV];
        for (int v = 0; v < nv; ++v) a[v] = ldw(qd + v * W);
        for (int i = 0; i < nt; ++i) {
            vw kv = bcw(k[i][d]);
            for (int v = 0; v < nv; ++v) acc[i][v] += a[v] * kv;
        }
    }
    for (int i = 0; i < nt; ++i)
        for (int v = 0; v < nv; ++v) stw(sT + (t0 + i) * GNp + rb + v * W, acc[i][v] * c);
}

/* sT (n, GNp) = c · K qᵀ for q given transposed, qT (Dk, GNp) (rows past GN zero) */
static void scores_blk(const float *qT, float c, const void *const *rows, int64_t GNp, int64_t Dk, int64_t n,
                       float *sT) {
    int64_t t0 = 0;
    for (; t0 + TT <= n; t0 += TT) {
        int64_t rb = 0;
        for (; rb + RV * W <= GNp; rb += RV * W) score_tile(qT, GNp, rb, RV, rows, t0, TT, Dk, c, sT);
        for (; rb < GNp; rb += W) score_tile(qT, GNp, rb, 1, rows, t0, TT, Dk, c, sT);
    }
    for (; t0 < n; ++t0) {
        int64_t rb = 0;
        for (; rb + RV * W <= GNp; rb += RV * W) score_tile(qT, GNp, rb, RV, rows, t0, 1, Dk, c, sT);
        for (; rb < GNp; rb += W) score_tile(qT, GNp, rb, 1, rows, t0, 1, Dk, c, sT);
    }
}

/* Column-wise softmax numerators of sT (n, GNp) in place: row r sees tokens t < tn_r, its max m[r]
 * and sum l[r] (m = −inf, l = 0 and zeros for a row that sees none) */
static void softmax_cols(float *sT, int64_t GN, int64_t GNp, int64_t n, int64_t Nq, int64_t first, float *m,
                         float *l) {
    for (int64_t rb = 0; rb < GNp; rb += W) {
        iw tn;
        for (int i = 0; i < W; ++i) {
            int64_t x = (rb + i) % Nq + first;
            tn[i] = (int32_t)(x < 0 ? 0 : (x > n ? n : x));
        }
        vw mx = bcw(-INFINITY);
        for (int64_t t = 0; t < n; ++t) {
            vw x = ldw(sT + t * GNp + rb);
            iw take = (iw){0} + (int32_t)t < tn;
            take &= (iw)(x > mx);
            mx = (vw)((take & (iw)x) | (~take & (iw)mx));
        }
        iw none = mx == bcw(-INFINITY);
        vw base = (vw)(~none & (iw)mx), sum = bcw(0.f);
        for (int64_t t = 0; t < n; ++t) {
            iw take = (iw){0} + (int32_t)t < tn;
            vw e = (vw)(take & (iw)exp2w(ldw(sT + t * GNp + rb) - base));
            stw(sT + t * GNp + rb, e);
            sum += e;
        }
        for (int i = 0; i < W && rb + i < GN; ++i) { m[rb + i] = mx[i]; l[rb + i] = sum[i]; }
    }
}

/* o[r0 + j][cb + v·W ..] += Σ_t sT[t][r0 + j] · V_t[cb + v·W ..] for nr rows, nc column vectors */
static inline __attribute__((always_inline)) void value_tile(const float *sT, int64_t GNp, int64_t r0, int nr,
                                                             const void *const *rows, int64_t t0, int64_t t1,
                                                             int64_t cb, int nc, int64_t Dv, float *o) {
    vw acc[VR][VCOLS];
    for (int j = 0; j < nr; ++j)
        for (int v = 0; v < nc; ++v) acc[j][v] = ldw(o + (r0 + j) * Dv + cb + v * W);
    for (int64_t t = t0; t < t1; ++t) {
        const float *vr = (const float *)rows[t] + cb;
        vw x[VCOLS];
        for (int v = 0; v < nc; ++v) x[v] = ldw(vr + v * W);
        for (int j = 0; j < nr; ++j) {
            vw w = bcw(sT[t * GNp + r0 + j]);
            for (int v = 0; v < nc; ++v) acc[j][v] += w * x[v];
        }
    }
    for (int j = 0; j < nr; ++j)
        for (int v = 0; v < nc; ++v) stw(o + (r0 + j) * Dv + cb + v * W, acc[j][v]);
}

static void values_blk(const float *sT, const void *const *rows, int64_t GN, int64_t GNp, int64_t Dv, int64_t n,
                       float *o) {
    const int64_t TV = 96; /* tokens per tile: a tile's value columns stay in L1 across the rows */
    const int64_t full = Dv / W * W;
    for (int64_t t0 = 0; t0 < n; t0 += TV) {
        int64_t t1 = t0 + TV < n ? t0 + TV : n, cb = 0;
        for (; cb + VCOLS * W <= full; cb += VCOLS * W) {
            int64_t r = 0;
            for (; r + VR <= GN; r += VR) value_tile(sT, GNp, r, VR, rows, t0, t1, cb, VCOLS, Dv, o);
            for (; r < GN; ++r) value_tile(sT, GNp, r, 1, rows, t0, t1, cb, VCOLS, Dv, o);
        }
        for (; cb < full; cb += W) {
            int64_t r = 0;
            for (; r + VR <= GN; r += VR) value_tile(sT, GNp, r, VR, rows, t0, t1, cb, 1, Dv, o);
            for (; r < GN; ++r) value_tile(sT, GNp, r, 1, rows, t0, t1, cb, 1, Dv, o);
        }
        for (int64_t r = 0; r < GN; ++r)
            for (int64_t t = t0; t < t1; ++t) {
                const float *vr = (const float *)rows[t];
                for (int64_t d = full; d < Dv; ++d) o[r * Dv + d] += sT[t * GNp + r] * vr[d];
            }
    }
}

/* ---- the entry point ----------------------------------------------------------------------------- */

/* See the top of the file. q (Hkv, GN, Dk) unscaled float32 (blocked: transposed and padded,
 * (Hkv, Dk, GNp), GNp = GN rounded up to the vector width, rows past GN zero), c = scale·log2 e; k, v the cache
 * bases (dt: 0 float32, 1 bfloat16, 2 float8 e4m3fn); page_off[i]: element offset of page i of
 * the partition (head 0, slot 0); ps: tokens per page; head_stride: elements between heads in a
 * page; row_stride: elements between tokens; [j0, j0 + n): the partition's tokens, all < kv_len =
 * last + Nq; kscale, vscale (Hkv); blocked: the register-blocked variant (float32 only); scratch:
 * GN·n floats (blocked: GNp·n; see attnbench_fd_vector_width); rows: n pointers; o (Hkv, GN, Dv), m and l (Hkv, GN). Returns 0, or
 * -1 for an unknown dt or a blocked call on a non-float32 cache. */
int attnbench_fd_partition(const float *q, float c, const void *k, const void *v, const int64_t *page_off,
                           int64_t ps, int64_t head_stride, int64_t row_stride, int64_t Hkv, int64_t GN, int64_t Nq,
                           int64_t Dk, int64_t Dv, int64_t j0, int64_t n, int64_t last, int64_t dt, int64_t blocked,
                           const float *kscale, const float *vscale, float *scratch, const void **rows, float *o,
                           float *m, float *l) {
    if (dt < 0 || dt > 2 || (blocked && dt != KV_F32)) return -1;
    /* software prefetch distance: PF_BYTES of rows ahead, into L2 (PF_LOCALITY 1: prefetcht2).
     * Earlier 8 KiB with prefetchnta, measured on a 2-core AMD EPYC: 1 KiB 27.0/30.8 ms
     * (contiguous/paged 16), 4 KiB 24.6/28.2, 8 KiB 23.4/26.2, 16 KiB 23.4/28.2, 32 KiB 27.0/29.9 (2
     * threads, B=8, Hq=32, Hkv=8, D=128, KV=8192, float32). On an Intel Xeon (Sapphire Rapids, AVX-512)
     * prefetchnta made the 8-lane loops slower than no prefetch at all (one thread, float32 cache,
     * GB/s per CPU-second: nta 5.5, none 8.2, prefetcht2 9.2); with the 16-lane variant the distance
     * (2-32 KiB) and hint hardly matter (8.5-9.1 float32, 7.1-7.5 bfloat16, 5.4-5.6 float8). */
    const int64_t esz = ESZ[dt], rb = Dk * esz;
    const int64_t pf = PF_BYTES / rb > 2 ? PF_BYTES / rb : 2;
    const int64_t GNp = (GN + W - 1) / W * W;
    const int wide = HAVE16 && GN % 4 == 0 && Dk % 16 == 0 && Dv % 16 == 0; /* the 16-lane variant */
    for (int64_t h = 0; h < Hkv; ++h) {
        const float *qh = q + h * GN * Dk;
        float *oh = o + h * GN * Dv, *mh = m + h * GN, *lh = l + h * GN;
        const float ch = c * kscale[h];
        memset(oh, 0, sizeof(float) * (size_t)(GN * Dv));
        if (n == 0) {
            for (int64_t r = 0; r < GN; ++r) { mh[r] = -INFINITY; lh[r] = 0.f; }
            continue;
        }
        fill_rows((const char *)k, page_off, ps, h * head_stride, row_stride, esz, n, rows);
        if (blocked) {
            scores_blk(q + h * Dk * GNp, ch, rows, GNp, Dk, n, scratch);
            softmax_cols(scratch, GN, GNp, n, Nq, last - j0 + 1, mh, lh);
            fill_rows((const char *)v, page_off, ps, h * head_stride, row_stride, esz, n, rows);
            values_blk(scratch, rows, GN, GNp, Dv, n, oh);
        } else {
            if (wide && dt == KV_F32) scores16(qh, ch, rows, GN, Dk, n, pf, scratch, KV_F32);
            else if (wide && dt == KV_BF16) scores16(qh, ch, rows, GN, Dk, n, pf, scratch, KV_BF16);
            else if (wide) scores16(qh, ch, rows, GN, Dk, n, pf, scratch, KV_FP8);
            else if (dt == KV_F32) scores(qh, ch, rows, GN, Dk, n, pf, scratch, KV_F32);
            else if (dt == KV_BF16) scores(qh, ch, rows, GN, Dk, n, pf, scratch, KV_BF16);
            else scores(qh, ch, rows, GN, Dk, n, pf, scratch, KV_FP8);
            for (int64_t r = 0; r < GN; ++r) {
                int64_t tn = (r % Nq) + last - j0 + 1;
                tn = tn < 0 ? 0 : (tn > n ? n : tn);
                softmax_row(scratch + r * n, tn, n, mh + r, lh + r);
            }
            fill_rows((const char *)v, page_off, ps, h * head_stride, row_stride, esz, n, rows);
            if (wide && dt == KV_F32) values16(scratch, rows, GN, Dv, n, pf, oh, KV_F32);
            else if (wide && dt == KV_BF16) values16(scratch, rows, GN, Dv, n, pf, oh, KV_BF16);
            else if (wide) values16(scratch, rows, GN, Dv, n, pf, oh, KV_FP8);
            else if (dt == KV_F32) values(scratch, rows, GN, Dv, n, pf, oh, KV_F32);
            else if (dt == KV_BF16) values(scratch, rows, GN, Dv, n, pf, oh, KV_BF16);
            else values(scratch, rows, GN, Dv, n, pf, oh, KV_FP8);
        }
        if (vscale[h] != 1.f)
            for (int64_t i = 0; i < GN * Dv; ++i) oh[i] *= vscale[h];
    }
    return 0;
}

/* lanes of the blocked variant's vectors (its scratch rounds GN up to a multiple) */
int64_t attnbench_fd_vector_width(void) { return W; }
