/* Part of cpu_decode.c (included by it, after fused16; uses its fp8 tables and fp8_words, exp2w and
 * FUSED_PF): the one pass of a float8 cache on the AMX tiles (TDPBF16PS: products of bfloat16 pairs,
 * float32 sums), for 4 query rows per kv head and head widths a multiple of 64.
 *
 * Why: fused16 runs a float8 cache at the speed of its vector instructions, not of memory. Per
 * token and kv head it issues 64 multiply-adds (4 rows x 128 elements, both for K and V, 16 lanes
 * each), the conversions of 256 codes and the dot products' reductions: ~30 ns of a core, where the
 * token's 256 bytes take ~15-25 ns to read. Here the multiply-adds go to the tile unit, and the
 * vector code only converts codes (exactly: a float8 value times the read factor is a bfloat16)
 * and runs the softmax.
 *
 * Per block of 32 tokens:
 * - K's 32 rows are converted into kbuf (bfloat16, each 64 codes in the order of the unpack that
 *   builds them: position p holds code fp8_amx_pos(p)); V's rows, two tokens at a time, into vbuf
 *   as B tiles (VNNI: row k holds the pair of tokens 2k, 2k + 1 for 16 value columns; column p of
 *   chunk 4g + w is element 64g + 16(p / 4) + 4w + p % 4, see amx_v_elem).
 * - Scores: C (16 tokens x 16 columns) += A (16 tokens x 32 key elements) · B (32 elements x 16
 *   columns), per 32 elements. B holds q split into three bfloat16 parts per element (h = bf16(q),
 *   m = bf16(q − h), l = bf16(q − h − m): together q's 24 bits, so the scores keep float32
 *   accuracy), column 4s + j part s of row j, columns 12..15 zero. The parts are added and the
 *   token x row block transposed in registers (amx_block_scores).
 * - The online softmax as fused16 (o and l rescaled where a block raises a row's max); p split in
 *   three bfloat16 parts the same way (p in [0, 1], its 24 bits kept), row 4s + j of an A tile.
 * - p·V: o (16 rows: part s of row j at 4s + j, rows 12..15 zero; Dv columns in vbuf's order)
 *   += A (p, 16 x 32 tokens) · B (V, 32 tokens x 16 columns), per 16 columns, o in L1 (obuf).
 * At the end the parts of o are added and its columns put back in element order.
 *
 * The tile unit flushes bfloat16 subnormals to zero: no code's value is one (the smallest, 2^-9,
 * times the read factor 2^-8, is a normal bfloat16); q's and p's third parts are, only below
 * ~2^-110 of their row's largest, far under float32's rounding.
 *
 * Linux lets a process use the tile registers only after asking (arch_prctl
 * ARCH_REQ_XCOMP_PERM); each partition call loads the tile configuration and releases the tiles
 * on return. Used where the CPU has AMX-BF16, Linux grants the tiles and attnbench_fd_amx has not
 * switched it off; else fused16. */
#if HAVE16 && HAVE_VBMI && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) \
    && defined(__linux__)
#define HAVE_AMX 1
/* The prefetches: AMX_LEAD blocks ahead of the block whose softmax and p·V run, into L2
 * (prefetcht2), spread over the pass (see fused_amx). Measured in the C harness (see the top of
 * cpu_decode.c), 2 threads from DRAM, best of 8 calls (the machine's bandwidth varied ~20% from
 * minute to minute): 2 / 3 / 4 / 6 blocks 8.0 / 7.5 / 7.4 / 7.5 ms, prefetcht0 7.8; issued in one
 * burst per block instead (32 tokens ahead of the conversion): 13.2 ms, no faster than fused16. */
#define AMX_LOC 1
#define AMX_LEAD 3
#define AMX_P_FLOOR 100.f /* log2 units, see amx_block_softmax */
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

static int amx_state = 0; /* 0 not yet asked, 1 granted and in use, -1 unavailable, -2 switched off */

static int amx_granted(void) {
    int s = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    if (s == 0) {
        unsigned a, b, c, d;
        s = -1;
        /* CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; then the kernel's permission */
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1)
            && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0)
            s = 1;
        int expect = 0;
        __atomic_compare_exchange_n(&amx_state, &expect, s, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        s = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    }
    return s == 1;
}

/* want -1: ask; 0: switch the AMX pass off; 1: on again where available. Returns 1 when it is in use. */
int64_t attnbench_fd_amx(int64_t want) {
    const int usable = amx_granted() || __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE) == -2;
    if (want == 0 && usable) __atomic_store_n(&amx_state, -2, __ATOMIC_RELEASE);
    if (want == 1 && usable) __atomic_store_n(&amx_state, 1, __ATOMIC_RELEASE);
    return __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE) == 1;
}

static int amx_in_use(void) { return amx_granted(); }

/* all eight tiles 16 rows of 64 bytes: 0, 1 C (scores, then o); 2, 3 A (K), then B (V); 4, 6, 7 B
 * (q's first three chunks, for a head's whole pass); 5 A (p), or B (q's later chunks) */
static void amx_configure(void) {
    uint8_t cfg[64] = {0};
    cfg[0] = 1; /* palette 1 */
    for (int i = 0; i < 8; ++i) {
        cfg[16 + 2 * i] = 64; /* bytes per row */
        cfg[48 + i] = 16;     /* rows */
    }
    _tile_loadconfig(cfg);
}

/* the code of a 64-code group at tile-buffer position p (the unpack's order, see amx_convert_k) */
static inline int64_t fp8_amx_pos(int64_t p) { return 16 * ((p % 32) / 8) + 8 * (p / 32) + p % 8; }

/* the element of value column col of obuf (see the top of this file) */
static inline int64_t amx_v_elem(int64_t col) {
    const int64_t g = col / 64, w = (col % 64) / 16, p = col % 16;
    return 64 * g + 16 * (p / 4) + 4 * w + p % 4;
}

/* float32 -> bfloat16 bits, rounded to nearest even (x finite) */
static inline uint32_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
static inline float bf16_value(uint32_t b) {
    const uint32_t u = b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* bt[(c·16 + k)·16 + 4s + j]: the pair (positions 2k, 2k + 1 of chunk c) of part s of q row j, the
 * B tiles (one per 32 key elements, 1 KiB each) of q (4, Dk) in element order */
static void amx_pack_q(const float *q, int64_t Dk, uint32_t *bt) {
    memset(bt, 0, sizeof(uint32_t) * 256 * (size_t)(Dk / 32));
    for (int64_t c = 0; c < Dk / 32; ++c)
        for (int64_t i = 0; i < 32; ++i) {
            const int64_t e = 64 * (c / 2) + fp8_amx_pos(32 * (c % 2) + i);
            for (int j = 0; j < 4; ++j) {
                float x = q[j * Dk + e];
                for (int s = 0; s < 3; ++s) {
                    const uint32_t b = bf16_bits(x);
                    x -= bf16_value(b); /* exact: the remainder */
                    bt[(c * 16 + i / 2) * 16 + 4 * s + j] |= b << (16 * (i % 2));
                }
            }
        }
}

/* The state of one head's pass: its buffers (carved from 64-byte aligned scratch), rows and the
 * prefetch cursor over one block of tokens: slot i (of 32 << pf_sh, wrapping) is line
 * pf_off[i & (2^pf_sh - 1)] of row pf_rows[i >> pf_sh] (plus pf_add bytes), i from pf_i; a step
 * that issues more slots than a block has prefetches some twice (harmless). Without a branch per
 * line: the cursor it replaced (token and line counters, the row looked up per line, two branches)
 * cost ~15% of the pass (C harness, L2-resident: 0.85 without it, 1.01 with its logic but no
 * prefetch instruction); this one runs at 0.95 of it (L2-resident and from DRAM). A list of line
 * addresses written per block was slower (1.06-1.15: an 8-byte store per line, and stores are what
 * this pass is short of), and so was issuing the lines of all 32 rows one line at a time (1.11
 * from DRAM). */
typedef struct {
    uint32_t *bt;     /* q's B tiles, Dk / 32 KiB */
    uint16_t *kbuf;   /* one block's K rows, bfloat16 (32 x Dk) */
    uint32_t *vbuf;   /* two blocks' V B tiles (2 x Dv / 16 KiB) */
    float *obuf;      /* o: 16 rows x Dv */
    float *cb;        /* two blocks' score C tiles (2 x 2 KiB) */
    uint16_t *pbuf;   /* the A tile of p (1 KiB) */
    const void *const *krows;
    int64_t vdelta, next_k, Dk, Dv, n;
    const fp8_tables *tb;
    const void *const *pf_rows;
    int64_t pf_add, pf_i, pf_sh;
    int64_t *pf_off;          /* 2^pf_sh line offsets: K's lines, V's, then V's last repeated */
    const void **pf_spare;    /* 32 row pointers: a block that straddles n, or obuf's (no row) */
} amx_head;

/* the prefetch cursor at block t0 / 32's tokens; past n: the next head's first ones, where there
 * is one; none (obuf, already in L1, a no-op) past those */
static inline __attribute__((always_inline)) void amx_prefetch_block(amx_head *H, int64_t t0) {
    const int64_t n = H->n;
    H->pf_i = 0;
    H->pf_add = 0;
    if (t0 + 32 <= n) {
        H->pf_rows = H->krows + t0;
    } else if (H->next_k && t0 >= n && t0 + 32 <= 2 * n) {
        H->pf_rows = H->krows + (t0 - n);
        H->pf_add = H->next_k;
    } else { /* the rare straddling block, or past both heads */
        for (int64_t i = 0; i < 32; ++i) {
            const int64_t t = t0 + i;
            H->pf_spare[i] = t < n ? H->krows[t]
                             : H->next_k && t < 2 * n ? (const char *)H->krows[t - n] + H->next_k
                                                     : (const void *)H->obuf;
        }
        H->pf_rows = H->pf_spare;
    }
}

/* slot i (< 32 << pf_sh) of the cursor into L2 */
static inline __attribute__((always_inline)) void amx_prefetch_slot(const amx_head *H, int64_t i) {
    __builtin_prefetch((const char *)H->pf_rows[i >> H->pf_sh] + H->pf_add + H->pf_off[i & ((1 << H->pf_sh) - 1)], 0,
                       AMX_LOC);
}

/* the next `count` slots of the cursor into L2 */
static inline __attribute__((always_inline)) void amx_prefetch(amx_head *H, int count) {
    const int64_t mask = (32 << H->pf_sh) - 1;
    for (int c = 0; c < count; ++c) amx_prefetch_slot(H, (H->pf_i + c) & mask);
    H->pf_i += count;
}

/* the slots of the cursor not yet issued */
static inline __attribute__((always_inline)) void amx_prefetch_rest(amx_head *H) {
    for (; H->pf_i < (32 << H->pf_sh); ++H->pf_i) amx_prefetch_slot(H, H->pf_i);
}

/* K rows r[0..31] (Dk codes each) into kbuf (32 rows of Dk bfloat16, positions as fp8_amx_pos) */
static inline __attribute__((always_inline)) void amx_convert_k(amx_head *H, const void *const *r, uint16_t *kbuf) {
    const int64_t Dk = H->Dk;
    for (int i = 0; i < 32; ++i) {
        amx_prefetch(H, 1);
        for (int64_t g = 0; g < Dk; g += 64) {
            __m512i w0, w1;
            fp8_words((const uint8_t *)r[i] + g, H->tb, &w0, &w1);
            _mm512_store_si512(kbuf + i * Dk + g, w0);
            _mm512_store_si512(kbuf + i * Dk + g + 32, w1);
        }
    }
}

/* V rows r[0..31] (Dv codes each) into vbuf: Dv / 16 B tiles of 16 token pairs x 16 columns */
static inline __attribute__((always_inline)) void amx_convert_v(amx_head *H, const void *const *r, uint32_t *vbuf) {
    const int64_t Dv = H->Dv;
    for (int k = 0; k < 16; ++k) {
        amx_prefetch(H, 2);
        for (int64_t g = 0; g < Dv; g += 64) {
            __m512i a0, a1, b0, b1; /* the words of tokens 2k (a) and 2k + 1 (b) */
            fp8_words((const uint8_t *)r[2 * k] + g, H->tb, &a0, &a1);
            fp8_words((const uint8_t *)r[2 * k + 1] + g, H->tb, &b0, &b1);
            uint32_t *dst = vbuf + (g / 16) * 256 + k * 16; /* chunk 4(g / 64) + w, row k */
            _mm512_store_si512(dst, _mm512_unpacklo_epi16(a0, b0));
            _mm512_store_si512(dst + 256, _mm512_unpackhi_epi16(a0, b0));
            _mm512_store_si512(dst + 512, _mm512_unpacklo_epi16(a1, b1));
            _mm512_store_si512(dst + 768, _mm512_unpackhi_epi16(a1, b1));
        }
    }
}

/* s[j] = the scores of query row j for the 16 tokens of C (cb, 16 rows of 16 floats: the three
 * parts in columns 4s + j), times c */
static inline __attribute__((always_inline)) void amx_block_scores(const float *cb, float c, __m512 *s) {
    __m512 y[4];
    for (int g = 0; g < 4; ++g) { /* tokens 4g..4g + 3: lane 4u + j = token 4g + u, row j */
        const float *z = cb + 64 * g;
        const __m512 z0 = _mm512_load_ps(z), z1 = _mm512_load_ps(z + 16), z2 = _mm512_load_ps(z + 32),
                     z3 = _mm512_load_ps(z + 48);
        const __m512 u01 = _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, 0x44), _mm512_shuffle_f32x4(z0, z1, 0xEE));
        const __m512 u23 = _mm512_add_ps(_mm512_shuffle_f32x4(z2, z3, 0x44), _mm512_shuffle_f32x4(z2, z3, 0xEE));
        y[g] = _mm512_add_ps(_mm512_shuffle_f32x4(u01, u23, 0x88), _mm512_shuffle_f32x4(u01, u23, 0xDD));
    }
    const __m512 cv = _mm512_set1_ps(c);
    for (int j = 0; j < 4; ++j) { /* lane i: token i = y[i / 4] lane 4(i % 4) + j */
        const __m512i idx = _mm512_add_epi32(
            _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0), _mm512_set1_epi32(j));
        const __m512 lo = _mm512_permutex2var_ps(y[0], idx, y[1]), hi = _mm512_permutex2var_ps(y[2], idx, y[3]);
        s[j] = _mm512_mul_ps(_mm512_mask_blend_ps(0xFF00, lo, hi), cv);
    }
}

/* the three bfloat16 parts of 16 weights p (in [0, 1]) into rows 0, 4, 8 of an A tile (dst: row 0,
 * rows of 32 bfloat16) */
static inline __attribute__((always_inline)) void amx_split_p(__m512 p, uint16_t *dst) {
    for (int s = 0; s < 3; ++s) {
        const __m256bh h = _mm512_cvtneps_pbh(p);
        _mm256_store_si256((__m256i *)(dst + 4 * 32 * s), (__m256i)h);
        if (s < 2) p = _mm512_sub_ps(p, _mm512_cvtpbh_ps(h)); /* exact: the remainder */
    }
}


/* q's tiles, kbuf, vbuf, obuf, cb, pbuf, the prefetch cursor's spare rows and line offsets */
#define AMX_BUF_BYTES(Dk, Dv) \
    ((size_t)(1024 * ((Dk) / 32) + 64 * (Dk) + 128 * (Dv) + 64 * (Dv) + 4096 + 1024 + 8 * 32 + 8 * ((Dk) + (Dv)) / 32))

/* block b (tokens 32b ..) converted into kbuf and vbuf half b % 2. A short last block repeats its
 * last row (its p is 0). One kbuf suffices: block b's K rows are converted after block b - 1's
 * scores loaded theirs into the tiles (fused_amx's order), and 8 KiB less kept the buffers closer
 * to L1's 48 KiB (C harness A/B, L2-resident and from DRAM: 0.95-0.97). */
static inline __attribute__((always_inline)) void amx_convert_block(amx_head *H, int64_t b) {
    const int64_t t0 = 32 * b, nb = H->n - t0 < 32 ? H->n - t0 : 32;
    const void *kr[32], *vr[32];
    for (int i = 0; i < 32; ++i) {
        kr[i] = H->krows[t0 + (i < nb ? i : nb - 1)];
        vr[i] = (const char *)kr[i] + H->vdelta;
    }
    amx_convert_k(H, kr, H->kbuf);
    amx_convert_v(H, vr, H->vbuf + (b % 2) * 16 * H->Dv);
}

/* the scores of block b (in kbuf) into its C tiles in cb half (b % 2): tokens 0..15, 16..31 */
static inline __attribute__((always_inline)) void amx_block_tiles(amx_head *H, int64_t b) {
    const int64_t Dk = H->Dk, nb = H->n - 32 * b;
    float *cb = H->cb + (b % 2) * 512;
    const uint16_t *kb = H->kbuf;
    _tile_zero(0);
    _tile_zero(1);
    /* q's first three chunks stay in tiles 4, 6 and 7 (loaded once per head, fused_amx); the others
     * are loaded into tile 5 (p's, loaded again for p·V) */
#define AMX_SCORE_CHUNK(qt)                                                                                  \
    do {                                                                                                     \
        _tile_loadd(2, kb + 32 * ch, 2 * Dk);                                                               \
        _tile_dpbf16ps(0, 2, qt);                                                                            \
        if (nb > 16) {                                                                                       \
            _tile_loadd(3, kb + 16 * Dk + 32 * ch, 2 * Dk);                                                 \
            _tile_dpbf16ps(1, 3, qt);                                                                        \
        }                                                                                                    \
    } while (0)
    for (int64_t ch = 0; ch < Dk / 32; ++ch) {
        amx_prefetch(H, 4);
        if (ch == 0) AMX_SCORE_CHUNK(4);
        else if (ch == 1) AMX_SCORE_CHUNK(6);
        else if (ch == 2) AMX_SCORE_CHUNK(7);
        else {
            _tile_loadd(5, H->bt + 256 * ch, 64);
            AMX_SCORE_CHUNK(5);
        }
    }
#undef AMX_SCORE_CHUNK
    _tile_stored(0, cb, 64);
    if (nb > 16) _tile_stored(1, cb + 256, 64);
}

/* block b's online softmax (its scores in cb half b % 2) into pbuf (o rescaled where a row's max rises) */
static inline __attribute__((always_inline)) void amx_block_softmax(amx_head *H, int64_t b, float c, int64_t Nq,
                                                                  int64_t first, float *m, float *l) {
    const int64_t t0 = 32 * b, nb = H->n - t0 < 32 ? H->n - t0 : 32, Dv = H->Dv;
    const float *cb = H->cb + (b % 2) * 512;
    float *obuf = H->obuf;
    __m512 s[2][4];
    amx_block_scores(cb, c, s[0]);
    if (nb > 16) amx_block_scores(cb + 256, c, s[1]);
    else for (int j = 0; j < 4; ++j) s[1][j] = _mm512_set1_ps(-INFINITY);
    /* p = 2^(s − m) over the tokens a row sees (a prefix), 0 elsewhere */
    for (int j = 0; j < 4; ++j) {
        amx_prefetch(H, 4);
        int64_t tn = (j % Nq) + first - t0;
        tn = tn < 0 ? 0 : (tn > nb ? nb : tn);
        const __mmask16 k0 = (__mmask16)(tn >= 16 ? 0xFFFF : (1u << tn) - 1),
                        k1 = (__mmask16)(tn >= 32 ? 0xFFFF : tn <= 16 ? 0 : (1u << (tn - 16)) - 1);
        __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
        if (tn > 0) {
            const __m512 x0 = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), k0, s[0][j]);
            const __m512 x1 = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), k1, s[1][j]);
            const float bm = _mm512_reduce_max_ps(_mm512_max_ps(x0, x1));
            if (bm > m[j]) {
                if (m[j] != -INFINITY) { /* o's three parts and l rescaled (dropped below the floor) */
                    const float a = m[j] - bm > -AMX_P_FLOOR ? exp2f(m[j] - bm) : 0.f;
                    const __m512 av = _mm512_set1_ps(a);
                    l[j] *= a;
                    for (int sp = 0; sp < 3; ++sp)
                        for (int64_t d = 0; d < Dv; d += 16) {
                            float *od = obuf + (4 * sp + j) * Dv + d;
                            _mm512_store_ps(od, _mm512_mul_ps(av, _mm512_load_ps(od)));
                        }
                }
                m[j] = bm;
            }
            /* weights below 2^-AMX_P_FLOOR of the row's largest are dropped: their bfloat16 parts'
             * remainders would be float32 subnormals, which cost the core a microcode assist each
             * (a softmax spread over ~100 log2 units ran 1.9x slower), and they are far below
             * float32's rounding of l (>= 1) */
            const __m512 mv = _mm512_set1_ps(m[j]), y0 = _mm512_sub_ps(x0, mv), y1 = _mm512_sub_ps(x1, mv);
            const __m512 floor = _mm512_set1_ps(-AMX_P_FLOOR);
            p0 = _mm512_maskz_mov_ps(k0 & _mm512_cmp_ps_mask(y0, floor, _CMP_GT_OQ), (__m512)exp2w((vw)y0));
            p1 = _mm512_maskz_mov_ps(k1 & _mm512_cmp_ps_mask(y1, floor, _CMP_GT_OQ), (__m512)exp2w((vw)y1));
            l[j] += _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
        }
        amx_split_p(p0, H->pbuf + 32 * j);
        amx_split_p(p1, H->pbuf + 32 * j + 16);
    }
}

/* o += p·V for block b (p in pbuf, V in vbuf half b % 2), 32 value columns (two C tiles) at a time */
static inline __attribute__((always_inline)) void amx_block_pv(amx_head *H, int64_t b) {
    const int64_t Dv = H->Dv;
    float *obuf = H->obuf;
    const uint32_t *vb = H->vbuf + (b % 2) * 16 * Dv;
    _tile_loadd(5, H->pbuf, 64);
    for (int64_t cc = 0; cc < Dv / 16; cc += 2) {
        amx_prefetch(H, 8);
        _tile_loadd(0, obuf + 16 * cc, 4 * Dv);
        _tile_loadd(2, vb + 256 * cc, 64);
        _tile_loadd(1, obuf + 16 * (cc + 1), 4 * Dv);
        _tile_loadd(3, vb + 256 * (cc + 1), 64);
        _tile_dpbf16ps(0, 5, 2);
        _tile_dpbf16ps(1, 5, 3);
        _tile_stored(0, obuf + 16 * cc, 4 * Dv);
        _tile_stored(1, obuf + 16 * (cc + 1), 4 * Dv);
    }
}

/* One kv head as fused16 (same arguments; GN = 4, Dk and Dv multiples of 64, q and o in element
 * order), the tiles configured; buf: AMX_BUF_BYTES(Dk, Dv) of 64-byte aligned scratch. Software
 * pipelined over blocks of 32 tokens: while block b's softmax and p·V wait for their tile results,
 * block b + 1's scores are in the tile unit and block b + 2 is being converted. */
static void fused_amx(const float *q, float c, const void *const *krows, int64_t vdelta, int64_t next_k, int64_t Dk,
                      int64_t Dv, int64_t n, int64_t Nq, int64_t first, float *o, float *m, float *l,
                      const fp8_tables *tb, char *buf) {
    amx_head H = {.krows = krows, .vdelta = vdelta, .next_k = next_k, .Dk = Dk, .Dv = Dv, .n = n, .tb = tb};
    H.bt = (uint32_t *)buf;
    H.kbuf = (uint16_t *)(buf + 1024 * (Dk / 32));
    H.vbuf = (uint32_t *)((char *)H.kbuf + 64 * Dk);
    H.obuf = (float *)((char *)H.vbuf + 128 * Dv);
    H.cb = (float *)((char *)H.obuf + 64 * Dv);
    H.pbuf = (uint16_t *)((char *)H.cb + 4096);
    amx_pack_q(q, Dk, H.bt);
    memset(H.obuf, 0, sizeof(float) * 16 * (size_t)Dv);
    memset(H.pbuf, 0, 1024);
    for (int j = 0; j < 4; ++j) { m[j] = -INFINITY; l[j] = 0.f; }
    const int64_t blocks = (n + 31) / 32;
    H.pf_spare = (const void **)((char *)H.pbuf + 1024);
    H.pf_off = (int64_t *)(H.pf_spare + 32);
    {
        const int64_t kl = Dk / 64, lines = kl + Dv / 64;
        int sh = 0;
        while ((1 << sh) < lines) ++sh;
        H.pf_sh = sh;
        for (int64_t l = 0; l < (1 << sh); ++l) {
            const int64_t x = l < lines ? l : lines - 1;
            H.pf_off[l] = x < kl ? 64 * x : vdelta + 64 * (x - kl);
        }
    }
    _tile_loadd(4, H.bt, 64); /* q's first chunks: see amx_block_tiles */
    _tile_loadd(6, H.bt + 256, 64);
    if (Dk > 64) _tile_loadd(7, H.bt + 512, 64);
    for (int64_t b = 0; b < AMX_LEAD && b < blocks; ++b) { /* the first blocks (also prefetched by the previous head) */
        amx_prefetch_block(&H, 32 * b);
        amx_prefetch_rest(&H);
    }
    amx_convert_block(&H, 0);
    amx_block_tiles(&H, 0);
    if (blocks > 1) amx_convert_block(&H, 1);
    for (int64_t b = 0; b < blocks; ++b) {
        /* while block b's softmax and p·V and block b + 1's scores run, block b + 3 is prefetched */
        amx_prefetch_block(&H, 32 * (b + AMX_LEAD));
        if (b + 1 < blocks) amx_block_tiles(&H, b + 1);
        amx_block_softmax(&H, b, c, Nq, first, m, l);
        amx_block_pv(&H, b);
        if (b + 2 < blocks) amx_convert_block(&H, b + 2);
        amx_prefetch_rest(&H);
    }
    /* o (4, Dv) in element order: the parts added */
    for (int j = 0; j < 4; ++j)
        for (int64_t col = 0; col < Dv; ++col)
            o[j * Dv + amx_v_elem(col)] = H.obuf[j * Dv + col] + H.obuf[(4 + j) * Dv + col] + H.obuf[(8 + j) * Dv + col];
}
#else
#define HAVE_AMX 0
#define AMX_BUF_BYTES(Dk, Dv) ((size_t)0)
int64_t attnbench_fd_amx(int64_t want) { (void)want; return 0; }
static int amx_in_use(void) { return 0; }
#endif
