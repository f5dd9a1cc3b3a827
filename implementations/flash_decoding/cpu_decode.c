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
 * compute-bound, the plain one memory-bound. A float8 cache with 4 query rows per kv head runs on
 * the AMX tiles where the CPU has them (cpu_decode_amx.h, included below).
 *
 * Why C: a decode step reads every K and V byte once and does G·Nq multiply-adds per element, so
 * it should run at memory speed. Through torch it is two skinny matmuls per partition (K·qᵀ and
 * p·V, G·Nq ≈ 4 columns), which BLAS runs compute-bound at about half the streaming-read rate of
 * one core, plus a gathered copy of K for a paged cache. Here each K row and V row is read once,
 * in order, with software prefetch a few rows ahead, the G·Nq dot products of a K row kept in
 * registers (8 vector accumulators), and pages read in place (no gather). With AVX-512, rows in
 * blocks of 4 and widths a multiple of 16, the 16-lane variant runs instead, in one pass over
 * blocks of 16 tokens with an online softmax (fused16).
 *
 * What bounds it, measured in a C harness on a 2-core Sapphire Rapids VM (B=8, Hq=32, Hkv=8,
 * D=128, KV=8192, 2 threads, every call from DRAM, ns per token and kv head per thread):
 * - Memory alone (the same rows read and summed, no compute): float32 86, bfloat16 46, float8 25.
 * - Compute alone (a cache that stays in L2, one thread): bfloat16 27, float8 28-30. For float8
 *   that is scores ~15 (4 rows x 128 multiply-adds, the 64-code conversions of ldg, the 8-way
 *   reductions of sum8) and p·V ~11.
 * - The kernel before fused16 ran in two passes per head: scores over K (fetching V ahead into
 *   L2), then p·V. It took float32 117, bfloat16 76, float8 46, about compute + memory. Its
 *   software prefetches came at twice the rate the compute consumed rows, and a software prefetch
 *   holds one of the core's ~16 L1 fill buffers until its line arrives. Without any software
 *   prefetch, the hardware streamers alone did no better.
 * - One pass with K and V prefetched 32 tokens ahead: float32 ~85, bfloat16 ~50, float8 ~37.
 *   bfloat16 and float32 now run at their memory time. float8 is bound by its compute.
 * - float8 with 4 query rows per kv head on a CPU with AMX (cpu_decode_amx.h: the multiply-adds on
 *   the tile unit): ~25 compute alone, ~27-29 from DRAM (float8 with fused16: ~40 in the same runs).
 *
 * Per head (the 8-lane code and the blocked variant): pass 1 scores s[r][t] = c·(q_r·K_t),
 * c = scale·log2 e (scores in log2 units); row max m_r and p = 2^(s − m_r), l_r = Σ p over the
 * keys row r may see (query token i of the Nq sees key j iff j <= i + last, `last` = kv_len − Nq);
 * pass 2 o_r = Σ_t p[r][t]·V_t. fused16 gives the same m, l and o in one pass.
 * Outputs are unnormalised; m = −inf, l = 0, o = 0 for a row that sees no key of the partition.
 *
 * Portable C11 with GCC/Clang vector extensions (8 floats); the AVX horizontal sum is used where
 * the compiler targets AVX, a plain loop elsewhere; head_dim % 8 trailing elements by scalar loops.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));

enum { KV_F32 = 0, KV_BF16 = 1, KV_FP8 = 2 };
/* internal to the 16-lane variant: a narrow cache read 16 elements at a time, in order (head
 * widths that are not a whole number of groups: see group_size) */
enum { KV_BF16_IN_ORDER = 3, KV_FP8_IN_ORDER = 4 };
static const int64_t ESZ[5] = {4, 2, 1, 2, 1};

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
#ifndef AHEAD_LOCALITY
#define AHEAD_LOCALITY 1
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
 * 4 rows x 2 tokens of accumulators (8: with the float8 tables they fit the 32 registers), their
 * 8 dot products reduced together (sum8). p·V: 4 rows x 4 tokens of weights, each chunk of o
 * loaded and stored once per four tokens.
 *
 * The narrow caches are read in groups of GS elements (ldg) converted in fewer instructions by
 * giving up the element order inside a group, since a dot product and a sum of rows do not care
 * about it as long as q is read in the same order and o is put back at the end (permute_rows):
 * - bfloat16, GS = 32 (one 64-byte load): the even elements are the 32-bit lanes shifted left by
 *   16, the odd ones the lanes with their low half cleared -- 1 instruction per 16 elements
 *   instead of a widening and a shift.
 * - float8 e4m3 with AVX512-VBMI, GS = 64 (one 64-byte load): the two bytes of each code's
 *   bfloat16 value (exact: 4 significant bits, exponents 2^-17..2^0 after the 2^-8 read factor)
 *   looked up in two 128-entry byte tables (vpermi2b, the sign bit ORed in), interleaved into
 *   16-bit values (unpack) and widened as bfloat16 above: 9 instructions per 64 elements instead
 *   of 20 (widen, shift, mask, float16 conversion per 16).
 * perm_of gives the element each position of a group holds. */
#ifdef __AVX512F__
static inline __attribute__((always_inline)) __m512 ldz(const void *p, int64_t i, int dt) {
    if (dt == KV_F32) return _mm512_loadu_ps((const float *)p + i);
    if (dt == KV_BF16 || dt == KV_BF16_IN_ORDER)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))), 16));
    __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((const uint8_t *)p + i)));
    w = _mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16((short)0xBFFF)); /* as ldc */
    return _mm512_cvtph_ps(w);
}

#if defined(__AVX512BW__) && defined(__AVX512VBMI__)
#define HAVE_VBMI 1
#else
#define HAVE_VBMI 0
#endif

/* elements per group of the 16-lane loads (see above) */
static inline int64_t group_size(int dt) { return dt == KV_BF16 ? 32 : (dt == KV_FP8 && HAVE_VBMI) ? 64 : 16; }

/* the 16-lane code of a cache type for head widths Dk and Dv (whole groups, else in order) */
static inline int wide_code(int dt, int64_t Dk, int64_t Dv) {
    if (dt == KV_F32 || (Dk % group_size(dt) == 0 && Dv % group_size(dt) == 0)) return dt;
    return dt == KV_BF16 ? KV_BF16_IN_ORDER : KV_FP8_IN_ORDER;
}

/* element of a group at position i (i < group_size(dt)) */
static int64_t perm_of(int dt, int64_t i) {
    const int64_t gs = group_size(dt);
    if (gs == 32) return 2 * (i % 16) + i / 16;
    if (gs == 64) {
        int64_t v = i / 16, lane = (i % 16) / 4, t = i % 4;
        return 16 * lane + 8 * (v >> 1) + 2 * t + (v & 1);
    }
    return i;
}

/* The float8 tables: the high and low byte of each magnitude code's bfloat16 value times the read
 * factor, in four 64-byte vectors (high 0..63, high 64..127, low 0..63, low 64..127). */
typedef struct { __m512i hi0, hi1, lo0, lo1; } fp8_tables;
static fp8_tables make_fp8_tables(void) {
    uint8_t t[4][64];
    for (int m = 0; m < 128; ++m) {
        int e = m >> 3, f = m & 7;
        float x = (e ? ldexpf(1.f + f / 8.f, e - 7) : ldexpf(f / 8.f, -6)) * FP8_READ_FACTOR;
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        t[m >> 6][m & 63] = (uint8_t)(u >> 24);
        t[2 + (m >> 6)][m & 63] = (uint8_t)(u >> 16);
    }
    fp8_tables r;
    memcpy(&r.hi0, t[0], 64); memcpy(&r.hi1, t[1], 64); memcpy(&r.lo0, t[2], 64); memcpy(&r.lo1, t[3], 64);
    return r;
}

#if HAVE_VBMI
/* 64 float8 codes from p as the 16-bit words of their bfloat16 values (times the read factor): the
 * high and low byte looked up in the tables (vpermi2b, the sign bit ORed in), interleaved. w0 holds
 * codes 16L + 0..7 of each 128-bit lane L, w1 codes 16L + 8..15 (the unpack's order). */
static inline __attribute__((always_inline)) void fp8_words(const void *p, const fp8_tables *tb, __m512i *w0,
                                                           __m512i *w1) {
    const __m512i c = _mm512_loadu_si512(p);
    __m512i hi = _mm512_permutex2var_epi8(tb->hi0, c, tb->hi1); /* index bits 6..0: the magnitude */
    hi = _mm512_ternarylogic_epi32(hi, c, _mm512_set1_epi8((char)0x80), 0xF8); /* hi | (c & 0x80): the sign */
    const __m512i lo = _mm512_permutex2var_epi8(tb->lo0, c, tb->lo1);
    *w0 = _mm512_unpacklo_epi8(lo, hi);
    *w1 = _mm512_unpackhi_epi8(lo, hi);
}
#endif

/* the group of row p from element i, as group_size(dt) / 16 vectors (positions as perm_of) */
static inline __attribute__((always_inline)) void ldg(const void *p, int64_t i, int dt, const fp8_tables *tb,
                                                     __m512 *x) {
    if (dt == KV_F32 || dt == KV_BF16_IN_ORDER || dt == KV_FP8_IN_ORDER) { x[0] = ldz(p, i, dt); return; }
    const __m512i top = _mm512_set1_epi32((int)0xFFFF0000);
    if (dt == KV_BF16) {
        __m512i w = _mm512_loadu_si512((const uint16_t *)p + i);
        x[0] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        x[1] = _mm512_castsi512_ps(_mm512_and_si512(w, top));
        return;
    }
#if HAVE_VBMI
    __m512i w0, w1;
    fp8_words((const uint8_t *)p + i, tb, &w0, &w1);
    x[0] = _mm512_castsi512_ps(_mm512_slli_epi32(w0, 16));
    x[1] = _mm512_castsi512_ps(_mm512_and_si512(w0, top));
    x[2] = _mm512_castsi512_ps(_mm512_slli_epi32(w1, 16));
    x[3] = _mm512_castsi512_ps(_mm512_and_si512(w1, top));
#else
    (void)tb; (void)top;
    x[0] = ldz(p, i, KV_FP8);
#endif
}

/* rows r < R of width D (row stride D) from group order to element order (to_elements) or back */
static void permute_rows(float *a, int64_t R, int64_t D, int dt, int to_elements, float *tmp) {
    const int64_t gs = group_size(dt);
    if (gs == 16) return;
    for (int64_t r = 0; r < R; ++r) {
        float *row = a + r * D;
        memcpy(tmp, row, sizeof(float) * (size_t)D);
        for (int64_t c = 0; c < D; c += gs)
            for (int64_t i = 0; i < gs; ++i) {
                if (to_elements) row[c + perm_of(dt, i)] = tmp[c + i];
                else row[c + i] = tmp[c + perm_of(dt, i)];
            }
    }
}

/* lane i of the result = the sum of the 16 lanes of a[i] (i < 4 per 128-bit block, see sum8):
 * within each block, pairs of vectors unpacked and added (4 vectors -> 1 holding each one's block
 * sums); sum8 then transposes the blocks of two such and adds them (vshuff32x4): 24 instructions
 * for 8 dot products, against 37 for halves + hadd */
static inline __m512 sum4(const __m512 *a) {
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))));
}

/* lanes 0..7 of the result: the sums of a[0..7] */
static inline __m512 sum8(const __m512 *a) {
    __m512 b0 = sum4(a), b1 = sum4(a + 4);
    __m512 d01 = _mm512_add_ps(_mm512_shuffle_f32x4(b0, b1, 0x88), _mm512_shuffle_f32x4(b0, b1, 0xDD));
    /* blocks: [b0 0+1, b0 2+3, b1 0+1, b1 2+3] */
    return _mm512_add_ps(_mm512_shuffle_f32x4(d01, d01, 0x08), _mm512_shuffle_f32x4(d01, d01, 0x0D));
}

#define HAVE16 1
#else
#define HAVE16 0
#define HAVE_VBMI 0
typedef int fp8_tables;
static inline fp8_tables make_fp8_tables(void) { return 0; }
static inline int64_t group_size(int dt) { (void)dt; return 16; }
static inline int wide_code(int dt, int64_t Dk, int64_t Dv) { (void)Dk; (void)Dv; return dt; }
static void permute_rows(float *a, int64_t R, int64_t D, int dt, int to_elements, float *tmp) {
    (void)a; (void)R; (void)D; (void)dt; (void)to_elements; (void)tmp;
}
#endif

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

/* 2^x for x <= 0 (scores minus their row max), lane-wise: 2^round(x) · 2^f, f in [-0.5, 0.5],
 * 2^f by its Taylor series to degree 7 (relative error < 1e-8 before rounding); x below −125
 * gives ~2e-38 instead of 0 (a weight 37 orders of magnitude below the row's largest). */
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

/* row r's softmax numerators over its visible keys t < tn (in place), zeros for tn <= t < n_eff;
 * W lanes at a time (16 with AVX-512) */
static void softmax_row(float *s, int64_t tn, int64_t n_eff, float *m, float *l) {
    if (tn <= 0) {
        *m = -INFINITY; *l = 0.f;
        memset(s, 0, sizeof(float) * (size_t)n_eff);
        return;
    }
    int64_t t = 0;
    vw mv = bcw(-INFINITY);
    for (; t + W <= tn; t += W) { vw x = ldw(s + t); iw gt = x > mv; mv = (vw)((gt & (iw)x) | (~gt & (iw)mv)); }
    float mx = -INFINITY;
    for (int i = 0; i < W; ++i) mx = mv[i] > mx ? mv[i] : mx;
    for (; t < tn; ++t) mx = s[t] > mx ? s[t] : mx;
    vw sum = bcw(0.f), mb = bcw(mx);
    float tail = 0.f, total = 0.f;
    for (t = 0; t + W <= tn; t += W) { vw e = exp2w(ldw(s + t) - mb); stw(s + t, e); sum += e; }
    for (; t < tn; ++t) { s[t] = exp2f(s[t] - mx); tail += s[t]; }
    if (n_eff > tn) memset(s + tn, 0, sizeof(float) * (size_t)(n_eff - tn));
    for (int i = 0; i < W; ++i) total += sum[i];
    *m = mx;
    *l = total + tail;
}

/* ---- the 16-lane variant's one pass (AVX-512) -------------------------------------------------
 * One kv head in one pass over blocks of FUSED_TB tokens, as flash attention does: the block's
 * scores (K rows), an online softmax (the running row max raised where a block's is larger, o and
 * l rescaled), then p·V (V rows). K and V are read together, and both are prefetched FUSED_PF
 * tokens ahead (prefetcht2; past the partition's end, the next head's first rows). The software
 * prefetches then come at the rate the compute consumes rows. The two-pass form this replaced
 * fetched V during the scores pass, twice that rate, and stalled on the core's L1 fill buffers.
 * Measured in a C harness (the shape at the top of the file, 2 threads, from DRAM), best of 5:
 * float32 30.6 -> 22-25 ms, bfloat16 19.9 -> 12.7-14, float8 12.1 -> 9.1-10 (the machine's load
 * varied). Prefetch distance 24 / 32 / 48 tokens: float8 9.3 / 9.1 / 10.4 ms. No software
 * prefetch (the hardware streamers alone): 12.2. With 4 query rows per kv head, p·V keeps its
 * 4 x 64 accumulators in registers for the whole block (values_rows4): bfloat16 13.2 -> 12.7 ms,
 * float8 9.9 -> 9.1. */
#define FUSED_TB 16 /* tokens per block: one 16-lane vector of scores per row (the masks assume it) */
_Static_assert(FUSED_TB == 16, "fused16's softmax masks a block as one 16-lane vector");
#define FUSED_PF 32 /* prefetch distance, tokens */
#if HAVE16

/* o rows 0..3, columns cc..cc + 16·NVEC, += p[j][t] · V_t over the block's nb tokens, with the
 * 4 x NVEC accumulators in registers: o is loaded and stored once per block (4 query rows) */
static inline __attribute__((always_inline)) void values_rows4(const float *pb, const void *const *vrows,
                                                               int64_t vdelta, int64_t nb, int64_t cc, int64_t Dv,
                                                               float *o, int dt, const fp8_tables *tb,
                                                               const int NVEC) {
    const int64_t nv = group_size(dt) / 16;
    __m512 acc[4][4];
    for (int j = 0; j < 4; ++j)
        for (int v = 0; v < NVEC; ++v) acc[j][v] = _mm512_loadu_ps(o + j * Dv + cc + 16 * v);
    for (int64_t t = 0; t < nb; ++t) {
        const void *vr = (const char *)vrows[t] + vdelta;
        __m512 x[4];
        for (int g = 0; g < NVEC; g += (int)nv) ldg(vr, cc + 16 * g, dt, tb, x + g);
        for (int j = 0; j < 4; ++j) {
            const __m512 w = _mm512_set1_ps(pb[j * FUSED_TB + t]);
            for (int v = 0; v < NVEC; ++v) acc[j][v] = _mm512_fmadd_ps(x[v], w, acc[j][v]);
        }
    }
    for (int j = 0; j < 4; ++j)
        for (int v = 0; v < NVEC; ++v) _mm512_storeu_ps(o + j * Dv + cc + 16 * v, acc[j][v]);
}

/* One kv head: q (GN, Dk) in group order (qg, see permute_rows), c = scale·log2 e; K row t at
 * krows[t], its V row vdelta bytes on, the next head's K row next_k bytes on (0: none); query row
 * r sees the tokens t < (r mod Nq) + first; o (GN, Dv) in group order, zeroed by the caller; m, l
 * as the two-pass code (log2 units). pb: GN·FUSED_TB floats of scratch. */
static inline __attribute__((always_inline)) void fused16(const float *qg, float c, const void *const *krows,
                                                          int64_t vdelta, int64_t next_k, int64_t GN, int64_t Dk,
                                                          int64_t Dv, int64_t n, int64_t Nq, int64_t first, float *o,
                                                          float *m, float *l, int dt, const fp8_tables *tb, float *pb) {
    const int64_t gs = group_size(dt), nv = gs / 16, kbytes = Dk * ESZ[dt], vbytes = Dv * ESZ[dt];
    for (int64_t r = 0; r < GN; ++r) { m[r] = -INFINITY; l[r] = 0.f; }
    for (int64_t t0 = 0; t0 < n; t0 += FUSED_TB) {
        const int64_t nb = n - t0 < FUSED_TB ? n - t0 : FUSED_TB;
        const void *const *kb = krows + t0;
        int64_t i = 0;
        for (; i + 4 <= nb; i += 4) {
            /* the rows FUSED_PF tokens on: this head's, else the next head's */
            const int64_t ta = t0 + i + FUSED_PF, add = ta + 4 <= n ? 0 : next_k;
            const void *const *ahead = ta + 4 <= n                            ? krows + ta
                                       : next_k && ta >= n && ta - n + 4 <= n ? krows + (ta - n)
                                                                              : NULL;
            if (ahead)
                for (int u = 0; u < 4; ++u) {
                    const char *pk = (const char *)ahead[u] + add;
                    for (int64_t b = 0; b < kbytes; b += 64) __builtin_prefetch(pk + b, 0, 1);
                    for (int64_t b = 0; b < vbytes; b += 64) __builtin_prefetch(pk + vdelta + b, 0, 1);
                }
            for (int64_t r = 0; r < GN; r += 4) {
                const float *q0 = qg + r * Dk;
                float sums[16];
                for (int half = 0; half < 2; ++half) { /* tokens 2·half, 2·half + 1: 8 accumulators */
                    __m512 a[8]; /* a[2j + u]: row r + j, token i + 2·half + u */
                    for (int z = 0; z < 8; ++z) a[z] = _mm512_setzero_ps();
                    for (int64_t cc = 0; cc < Dk; cc += gs)
                        for (int u = 0; u < 2; ++u) {
                            __m512 x[4];
                            ldg(kb[i + 2 * half + u], cc, dt, tb, x);
                            for (int64_t v = 0; v < nv; ++v)
                                for (int j = 0; j < 4; ++j) {
                                    const __m512 qv = _mm512_loadu_ps(q0 + j * Dk + cc + 16 * v);
                                    a[2 * j + u] = _mm512_fmadd_ps(qv, x[v], a[2 * j + u]);
                                }
                        }
                    _mm256_storeu_ps(sums + 8 * half, _mm512_castps512_ps256(sum8(a)));
                }
                for (int j = 0; j < 4; ++j)
                    for (int u = 0; u < 4; ++u) pb[(r + j) * FUSED_TB + i + u] = sums[8 * (u / 2) + 2 * j + u % 2] * c;
            }
        }
        for (; i < nb; ++i)
            for (int64_t r = 0; r < GN; ++r) {
                __m512 a = _mm512_setzero_ps();
                for (int64_t cc = 0; cc < Dk; cc += gs) {
                    __m512 x[4];
                    ldg(kb[i], cc, dt, tb, x);
                    for (int64_t v = 0; v < nv; ++v)
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + r * Dk + cc + 16 * v), x[v], a);
                }
                pb[r * FUSED_TB + i] = _mm512_reduce_add_ps(a) * c;
            }
        /* the online softmax: p = 2^(s − m) over the tokens a row sees (a prefix), 0 elsewhere */
        for (int64_t r = 0; r < GN; ++r) {
            int64_t tn = (r % Nq) + first - t0;
            tn = tn < 0 ? 0 : (tn > nb ? nb : tn);
            float *pr = pb + r * FUSED_TB;
            if (tn == 0) { memset(pr, 0, sizeof(float) * FUSED_TB); continue; }
            const __mmask16 seen = (__mmask16)(tn >= 16 ? 0xFFFF : (1u << tn) - 1);
            const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), seen, pr);
            const float bm = _mm512_reduce_max_ps(s);
            if (bm > m[r]) {
                if (m[r] != -INFINITY) {
                    const float a = exp2f(m[r] - bm);
                    const __m512 av = _mm512_set1_ps(a);
                    l[r] *= a;
                    for (int64_t d = 0; d < Dv; d += 16)
                        _mm512_storeu_ps(o + r * Dv + d, _mm512_mul_ps(av, _mm512_loadu_ps(o + r * Dv + d)));
                }
                m[r] = bm;
            }
            const __m512 p = _mm512_maskz_mov_ps(seen, (__m512)exp2w((vw)_mm512_sub_ps(s, _mm512_set1_ps(m[r]))));
            l[r] += _mm512_reduce_add_ps(p);
            _mm512_storeu_ps(pr, p);
        }
        if (GN == 4) {
            int64_t cc = 0;
            for (; cc + 64 <= Dv; cc += 64) values_rows4(pb, kb, vdelta, nb, cc, Dv, o, dt, tb, 4);
            for (; cc < Dv; cc += gs) values_rows4(pb, kb, vdelta, nb, cc, Dv, o, dt, tb, (int)nv); /* one group */
            continue;
        }
        /* more query rows: four value rows per step, each chunk of o loaded and stored once per
         * four tokens, each converted V chunk serving every row */
        for (i = 0; i + 4 <= nb; i += 4)
            for (int64_t cc = 0; cc < Dv; cc += gs) {
                __m512 x[4][4];
                for (int u = 0; u < 4; ++u) ldg((const char *)kb[i + u] + vdelta, cc, dt, tb, x[u]);
                for (int64_t r = 0; r < GN; ++r) {
                    const float *pr = pb + r * FUSED_TB + i;
                    const __m512 w0 = _mm512_set1_ps(pr[0]), w1 = _mm512_set1_ps(pr[1]), w2 = _mm512_set1_ps(pr[2]),
                                 w3 = _mm512_set1_ps(pr[3]);
                    for (int64_t v = 0; v < nv; ++v) {
                        float *oc = o + r * Dv + cc + 16 * v;
                        __m512 acc = _mm512_loadu_ps(oc);
                        acc = _mm512_fmadd_ps(w0, x[0][v], acc);
                        acc = _mm512_fmadd_ps(w1, x[1][v], acc);
                        acc = _mm512_fmadd_ps(w2, x[2][v], acc);
                        acc = _mm512_fmadd_ps(w3, x[3][v], acc);
                        _mm512_storeu_ps(oc, acc);
                    }
                }
            }
        for (; i < nb; ++i)
            for (int64_t cc = 0; cc < Dv; cc += gs) {
                __m512 x[4];
                ldg((const char *)kb[i] + vdelta, cc, dt, tb, x);
                for (int64_t r = 0; r < GN; ++r) {
                    const __m512 w = _mm512_set1_ps(pb[r * FUSED_TB + i]);
                    for (int64_t v = 0; v < nv; ++v) {
                        float *oc = o + r * Dv + cc + 16 * v;
                        _mm512_storeu_ps(oc, _mm512_fmadd_ps(w, x[v], _mm512_loadu_ps(oc)));
                    }
                }
            }
    }
}
#else
/* never called (`wide` is 0) */
#define fused16(qg, c, krows, vdelta, next_k, GN, Dk, Dv, n, Nq, first, o, m, l, dt, tb, pb) \
    ((void)(vdelta), (void)(next_k), (void)(tb))
#endif

#include "cpu_decode_amx.h" /* fused_amx: a float8 cache's one pass on the AMX tiles */

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
 * -1 for an unknown dt or a blocked call on a non-float32 cache, -2 when its buffers (q and o in
 * group order, a few KiB; the AMX pass's tiles and blocks, ~42 KiB at D = 128) cannot be allocated. */
int attnbench_fd_partition(const float *q, float c, const void *k, const void *v, const int64_t *page_off,
                           int64_t ps, int64_t head_stride, int64_t row_stride, int64_t Hkv, int64_t GN, int64_t Nq,
                           int64_t Dk, int64_t Dv, int64_t j0, int64_t n, int64_t last, int64_t dt, int64_t blocked,
                           const float *kscale, const float *vscale, float *scratch, const void **rows, float *o,
                           float *m, float *l) {
    if (dt < 0 || dt > 2 || (blocked && dt != KV_F32)) return -1;
    /* the 8-lane code's software prefetch distance: PF_BYTES of rows ahead, into L2 (PF_LOCALITY 1:
     * prefetcht2). Earlier 8 KiB with prefetchnta, measured on a 2-core AMD EPYC: 1 KiB 27.0/30.8 ms
     * (contiguous/paged 16), 4 KiB 24.6/28.2, 8 KiB 23.4/26.2, 16 KiB 23.4/28.2, 32 KiB 27.0/29.9 (2
     * threads, B=8, Hq=32, Hkv=8, D=128, KV=8192, float32). On an Intel Xeon (Sapphire Rapids)
     * prefetchnta made the 8-lane loops slower than no prefetch at all (one thread, float32 cache,
     * GB/s per CPU-second: nta 5.5, none 8.2, prefetcht2 9.2). The 16-lane pass: see fused16. */
    const int64_t esz = ESZ[dt], rb = Dk * esz;
    const int64_t pf = PF_BYTES / rb > 2 ? PF_BYTES / rb : 2;
    const int64_t GNp = (GN + W - 1) / W * W;
    const int wide = HAVE16 && !blocked && GN % 4 == 0 && Dk % 16 == 0 && Dv % 16 == 0; /* the 16-lane pass */
    const int wdt = wide ? wide_code((int)dt, Dk, Dv) : (int)dt;
    const int grouped = wide && group_size(wdt) > 16; /* q and o in group order */
    fp8_tables tb = make_fp8_tables();
    /* float8, 4 query rows per kv head: the tiles (see cpu_decode_amx.h) */
    const int amx = wide && wdt == KV_FP8 && HAVE_VBMI && GN == 4 && amx_in_use();
    char *amx_buf = NULL;
    float *qg = NULL, *tmp = NULL, *pb = NULL;
    if (amx) {
        amx_buf = aligned_alloc(64, (AMX_BUF_BYTES(Dk, Dv) + 63) / 64 * 64);
        if (!amx_buf) return -2;
#if HAVE_AMX
        amx_configure();
#endif
    } else if (wide) {
        qg = malloc(sizeof(float) * (size_t)(GN * Dk));
        tmp = malloc(sizeof(float) * (size_t)(Dk > Dv ? Dk : Dv));
        pb = malloc(sizeof(float) * (size_t)(GN * FUSED_TB));
        if (!qg || !tmp || !pb) { free(qg); free(tmp); free(pb); return -2; }
    }
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
        /* bytes from a K row to its V row, and to the next head's K row (0: the last head) */
        const int64_t vdelta = (const char *)v - (const char *)k;
        const int64_t next_k = h + 1 < Hkv ? head_stride * esz : 0;
        if (blocked) {
            scores_blk(q + h * Dk * GNp, ch, rows, GNp, Dk, n, scratch);
            softmax_cols(scratch, GN, GNp, n, Nq, last - j0 + 1, mh, lh);
            fill_rows((const char *)v, page_off, ps, h * head_stride, row_stride, esz, n, rows);
            values_blk(scratch, rows, GN, GNp, Dv, n, oh);
        } else if (amx) {
#if HAVE_AMX
            fused_amx(qh, ch, rows, vdelta, next_k, Dk, Dv, n, Nq, last - j0 + 1, oh, mh, lh, &tb, amx_buf);
#endif
        } else if (wide) {
            memcpy(qg, qh, sizeof(float) * (size_t)(GN * Dk));
            if (grouped) permute_rows(qg, GN, Dk, wdt, 0, tmp);
#define FUSED(code) fused16(qg, ch, rows, vdelta, next_k, GN, Dk, Dv, n, Nq, last - j0 + 1, oh, mh, lh, code, &tb, pb)
            if (wdt == KV_F32) FUSED(KV_F32);
            else if (wdt == KV_BF16) FUSED(KV_BF16);
            else if (wdt == KV_FP8) FUSED(KV_FP8);
            else if (wdt == KV_BF16_IN_ORDER) FUSED(KV_BF16_IN_ORDER);
            else FUSED(KV_FP8_IN_ORDER);
#undef FUSED
            if (grouped) permute_rows(oh, GN, Dv, wdt, 1, tmp);
        } else {
            if (dt == KV_F32) scores(qh, ch, rows, GN, Dk, n, pf, scratch, KV_F32);
            else if (dt == KV_BF16) scores(qh, ch, rows, GN, Dk, n, pf, scratch, KV_BF16);
            else scores(qh, ch, rows, GN, Dk, n, pf, scratch, KV_FP8);
            for (int64_t r = 0; r < GN; ++r) {
                int64_t tn = (r % Nq) + last - j0 + 1;
                tn = tn < 0 ? 0 : (tn > n ? n : tn);
                softmax_row(scratch + r * n, tn, n, mh + r, lh + r);
            }
            fill_rows((const char *)v, page_off, ps, h * head_stride, row_stride, esz, n, rows);
            if (dt == KV_F32) values(scratch, rows, GN, Dv, n, pf, oh, KV_F32);
            else if (dt == KV_BF16) values(scratch, rows, GN, Dv, n, pf, oh, KV_BF16);
            else values(scratch, rows, GN, Dv, n, pf, oh, KV_FP8);
        }
        if (vscale[h] != 1.f)
            for (int64_t i = 0; i < GN * Dv; ++i) oh[i] *= vscale[h];
    }
#if HAVE_AMX
    if (amx) _tile_release();
#endif
    free(amx_buf);
    free(qg);
    free(tmp);
    free(pb);
    return 0;
}

/* The merge of sequence b's partitions (flash_decoding's log-sum-exp merge, see split.merge): for
 * each kv head h and row r, M = the largest partial max over its counts[b] partitions (and the
 * sink logit sinks2[h·GN + r], log2 units, when sinks2 is not NULL), w_p = 2^(m_p − M), and
 * out[b, h, r] = Σ_p w_p·o_p / (Σ_p w_p·l_p + 2^(sink − M)). o_part (B, P, Hkv, GN, Dv), m_part and
 * l_part (B, P, Hkv, GN), out (B, Hkv, GN, Dv). In C rather than torch ops: batched, those ran on
 * torch's OpenMP threads, which then spin on both cores for ~1 ms after the call and slowed the next
 * call's partitions by 15% (float8, B=8); per sequence they cost ~50 us each. */
static void merge_sequence(int64_t b, const float *o_part, const float *m_part, const float *l_part,
                           const float *sinks2, int64_t np, int64_t P, int64_t Hkv, int64_t GN, int64_t Dv,
                           float *out) {
    for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t r = 0; r < GN; ++r) {
            const int64_t row = h * GN + r;
            float M = sinks2 ? sinks2[row] : -INFINITY;
            for (int64_t p = 0; p < np; ++p) {
                const float x = m_part[(b * P + p) * Hkv * GN + row];
                M = x > M ? x : M;
            }
            float den = sinks2 ? exp2f(sinks2[row] - M) : 0.f;
            float *dst = out + (b * Hkv * GN + row) * Dv;
            for (int64_t d = 0; d < Dv; ++d) dst[d] = 0.f;
            for (int64_t p = 0; p < np; ++p) {
                const int64_t at = (b * P + p) * Hkv * GN + row;
                const float w = exp2f(m_part[at] - M); /* 0 where the row saw no key (m = −inf) */
                if (w == 0.f) continue;
                den += w * l_part[at];
                const float *src = o_part + at * Dv;
                for (int64_t d = 0; d < Dv; ++d) dst[d] += w * src[d];
            }
            for (int64_t d = 0; d < Dv; ++d) dst[d] /= den;
        }
}

/* A worker's share of a call's partitions: items (b, p, h0) taken in order from items[3i..3i + 2]
 * while *next (shared by the call's workers, advanced atomically) is below n_items, each the kv
 * heads [h0, h0 + hpi) (fewer at the end) of partition p of sequence b, run by
 * attnbench_fd_partition. Sequence b's q rows at q + b·q_stride (q_stride / Hkv per head); its
 * partition p's first page | run at offs[b·offs_cols + (ps ? j0 / ps : p)], j0 = p·part, ps: tokens
 * per page (0: contiguous, one run of `part`); kv_len lens[b]; its o, m, l at item b·P + p of
 * o_part (·Hkv·GN·Dv), m_part and l_part (·Hkv·GN). One Python call per worker instead of one per
 * partition: the ctypes call and its 25 arguments cost ~45 us under the GIL, a few % of a float8
 * partition of 4096 tokens. Heads split into items of hpi: the workers then finish within a smaller
 * item of each other. With `remaining` (items left per sequence, shared; NULL: the caller merges),
 * the worker that finishes a sequence's last item merges it into out (merge_sequence; sinks2 as
 * there, counts[b] partitions): no wait for the slower worker before the merges, and no second
 * handoff. Returns 0 or the first item's nonzero code (the other workers finish theirs). */
int attnbench_fd_partitions(const float *q, int64_t q_stride, float c, const void *k, const void *v,
                            const int64_t *offs, int64_t offs_cols, int64_t ps, int64_t part, int64_t head_stride,
                            int64_t row_stride, int64_t Hkv, int64_t GN, int64_t Nq, int64_t Dk, int64_t Dv,
                            const int64_t *items, int64_t n_items, int64_t hpi, const int64_t *lens, int64_t P,
                            int64_t dt, int64_t blocked, const float *kscale, const float *vscale, float *scratch,
                            const void **rows, float *o_part, float *m_part, float *l_part, int64_t *next,
                            int64_t *remaining, const int64_t *counts, const float *sinks2, float *out) {
    if (dt < 0 || dt > 2) return -1;
    const int64_t hb = head_stride * ESZ[dt]; /* bytes between heads */
    for (;;) {
        const int64_t i = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
        if (i >= n_items) return 0;
        const int64_t b = items[3 * i], p = items[3 * i + 1], h0 = items[3 * i + 2], L = lens[b], j0 = p * part;
        const int64_t nh = Hkv - h0 < hpi ? Hkv - h0 : hpi;
        const int64_t first = b * offs_cols + (ps ? j0 / ps : p), item = b * P + p;
        const int rc = attnbench_fd_partition(
            q + b * q_stride + h0 * (q_stride / Hkv), c, (const char *)k + h0 * hb, (const char *)v + h0 * hb,
            offs + first, ps ? ps : part, head_stride, row_stride, nh, GN, Nq, Dk, Dv, j0,
            part < L - j0 ? part : L - j0, L - Nq, dt, blocked, kscale + h0, vscale + h0, scratch, rows,
            o_part + (item * Hkv + h0) * GN * Dv, m_part + (item * Hkv + h0) * GN, l_part + (item * Hkv + h0) * GN);
        if (rc) return rc;
        if (remaining && __atomic_sub_fetch(remaining + b, 1, __ATOMIC_ACQ_REL) == 0)
            merge_sequence(b, o_part, m_part, l_part, sinks2, counts[b], P, Hkv, GN, Dv, out);
    }
}

/* lanes of the blocked variant's vectors (its scratch rounds GN up to a multiple) */
int64_t attnbench_fd_vector_width(void) { return W; }
