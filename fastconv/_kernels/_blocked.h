/* Register-blocked micro-kernels of the blocked direct convolution (see _blocked.pyx).
 *
 * The convolution of one image is run as an implicit GEMM over a prepared copy of the image
 * ("xs"): zero-padded and, for stride > 1, split into stride phases, so that output pixel q
 * (q = oh * Ws + ow on a grid Ws wide) meets kernel tap k at xs[q * ps + off[k]] for a fixed
 * table of offsets off[k] and a fixed pixel stride ps. No column matrix is ever built.
 *
 * Two orientations, one per layout of the output:
 *   pix: accumulators hold PIX_ROWS output channels x PIX_VECS vectors of consecutive pixels
 *        (NCHW; ps == 1, so each tap loads whole vectors of x and broadcasts weights);
 *   ch:  accumulators hold CH_ROWS pixels x CH_VECS vectors of consecutive output channels
 *        (NHWC; each tap broadcasts one x value per pixel and loads weight vectors).
 * Each output element is summed by one call in the order of off[], so results do not depend
 * on the thread count.
 *
 * The block sizes follow the register file: 32 vector registers with AVX-512 (24 accumulators),
 * 16 otherwise (12 accumulators). GCC/Clang vector extensions let the same source compile to
 * SSE2, AVX2+FMA or AVX-512 with the flags of each dispatched build; other compilers get plain
 * loops over the same arrays.
 */
#ifndef FASTCONV_BLOCKED_H
#define FASTCONV_BLOCKED_H

#include <stdint.h>
#include <string.h>

#include "_simd.h"
#include "_stream.h"

/* One output channel per group (depthwise, single filters): 8 vectors of pixels, so that 8
 * independent accumulators cover the FMA latency (4 gave 2.9 against 2.3 us per 56x56 3x3
 * plane, AVX2, one core, interleaved in one process). */
#define FC_PLANE_VECS 8
#if defined(__AVX512F__)
#define FC_PIX_ROWS 8
#define FC_PIX_VECS 3
#define FC_CH_ROWS 12
#define FC_CH_VECS 2
#elif defined(__AVX__)
#define FC_PIX_ROWS 4
#define FC_PIX_VECS 3
#define FC_CH_ROWS 6
#define FC_CH_VECS 2
#else
#define FC_PIX_ROWS 4
#define FC_PIX_VECS 3
#define FC_CH_ROWS 6
#define FC_CH_VECS 2
#endif

/* Block sizes in elements, for the Python side (weights are packed to these). */
static inline ptrdiff_t fc_pix_rows(void) { return FC_PIX_ROWS; }
static inline ptrdiff_t fc_pix_vecs(void) { return FC_PIX_VECS; }
static inline ptrdiff_t fc_ch_rows(void) { return FC_CH_ROWS; }
static inline ptrdiff_t fc_ch_vecs(void) { return FC_CH_VECS; }
static inline ptrdiff_t fc_plane_vecs(void) { return FC_PLANE_VECS; }

/* Epilogue of one stored tile row: dst[i] = src[i] + b (per-element bias when bvec), then
 * ReLU. "v <= 0 ? 0 : v" keeps NaN, as PyTorch does. */
#define FC_DEFINE_EPILOGUE(T, SUF)                                                             \
    static inline void fc_epilogue_##SUF(T *dst, const T *src, ptrdiff_t n, const T *bvec,     \
                                         T b, int relu) {                                      \
        ptrdiff_t i;                                                                           \
        if (bvec) {                                                                            \
            if (relu) { for (i = 0; i < n; i++) { T v = src[i] + bvec[i];                      \
                                                  dst[i] = v <= 0 ? (T)0 : v; } }              \
            else { for (i = 0; i < n; i++) dst[i] = src[i] + bvec[i]; }                        \
        } else if (relu) {                                                                     \
            for (i = 0; i < n; i++) { T v = src[i] + b; dst[i] = v <= 0 ? (T)0 : v; }          \
        } else {                                                                               \
            for (i = 0; i < n; i++) dst[i] = src[i] + b;                                       \
        }                                                                                      \
    }

/* The pixels of fc_store_channels_last in vectors, returning how many it stored (all of
 * them, or none where there is no such code): a group of VLEN pixels of the tile's PIX_ROWS
 * rows is transposed in registers, so that each pixel's channels leave in one (masked) store
 * instead of one store per value. With scalar stores, putting LeNet conv1's 6-channel NHWC
 * tiles in place took as long as computing them. A last group of fewer pixels is loaded
 * with a lane mask (masked-off lanes are not read) and stores only its pixels: LeNet conv1
 * rows are 28 pixels, a group of 16 and 12 that went one value at a time (NHWC batch 32, one
 * thread, 215 against NCHW's 196 us before this).
 * float32 with AVX-512 (8 rows x 16 pixels) or AVX2 (4 rows x 8 pixels); elsewhere none.
 * Same arithmetic as the scalar loop: v + (bias or 0), then v <= 0 ? 0 : v (NaN kept). */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && FC_PIX_ROWS == 8
/* One group: pixels i to i + m - 1 of the tile (m <= 16); inlined, so m == 16 costs no
 * tests. */
static inline __attribute__((always_inline)) void fc_channels_last_group_f32(
        float *dst, ptrdiff_t ds, const float *tile, ptrdiff_t NR, ptrdiff_t i, int m,
        __mmask8 keep, const __m512 *b, int relu) {
    /* Lanes of the two vectors holding 4 channels of 4 pixels each (see below) that make
     * pixels (j, j + 4) and (j + 8, j + 12) with all 8 channels. */
    const __m512i first = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4,
                                           19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i second = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12,
                                            27, 26, 25, 24, 11, 10, 9, 8);
    const __mmask16 lanes = (__mmask16)((1u << m) - 1);
    const __m512 zero = _mm512_setzero_ps();
    __m512 v[8];
    int r, j;
    for (r = 0; r < 8; r++) {
        v[r] = _mm512_add_ps(m == 16 ? _mm512_loadu_ps(tile + r * NR + i)
                                     : _mm512_maskz_loadu_ps(lanes, tile + r * NR + i), b[r]);
        if (relu) v[r] = _mm512_maskz_mov_ps(
            (__mmask16)~_mm512_cmp_ps_mask(v[r], zero, _CMP_LE_OQ), v[r]);
    }
    FC_UNROLL for (j = 0; j < 4; j++) {   /* unrolled: the j tests below are constant */
        /* Channels 0-3 (lo) and 4-7 (hi) of pixel 4 * lane + j, lane by lane. */
        __m512 t0 = j < 2 ? _mm512_unpacklo_ps(v[0], v[1]) : _mm512_unpackhi_ps(v[0], v[1]);
        __m512 t1 = j < 2 ? _mm512_unpacklo_ps(v[2], v[3]) : _mm512_unpackhi_ps(v[2], v[3]);
        __m512 t2 = j < 2 ? _mm512_unpacklo_ps(v[4], v[5]) : _mm512_unpackhi_ps(v[4], v[5]);
        __m512 t3 = j < 2 ? _mm512_unpacklo_ps(v[6], v[7]) : _mm512_unpackhi_ps(v[6], v[7]);
        __m512d lo = j % 2 == 0
            ? _mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))
            : _mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1));
        __m512d hi = j % 2 == 0
            ? _mm512_unpacklo_pd(_mm512_castps_pd(t2), _mm512_castps_pd(t3))
            : _mm512_unpackhi_pd(_mm512_castps_pd(t2), _mm512_castps_pd(t3));
        __m512 p0 = _mm512_permutex2var_ps(_mm512_castpd_ps(lo), first, _mm512_castpd_ps(hi));
        __m512 p1 = _mm512_permutex2var_ps(_mm512_castpd_ps(lo), second, _mm512_castpd_ps(hi));
        float *d = dst + (i + j) * ds;
        if (j < m) _mm256_mask_storeu_ps(d, keep, _mm512_castps512_ps256(p0));
        if (j + 4 < m) _mm256_mask_storeu_ps(d + 4 * ds, keep, _mm512_extractf32x8_ps(p0, 1));
        if (j + 8 < m) _mm256_mask_storeu_ps(d + 8 * ds, keep, _mm512_castps512_ps256(p1));
        if (j + 12 < m) _mm256_mask_storeu_ps(d + 12 * ds, keep, _mm512_extractf32x8_ps(p1, 1));
    }
}

static inline ptrdiff_t fc_channels_last_vec_f32(float *dst, ptrdiff_t ds, const float *tile,
                                                 ptrdiff_t NR, ptrdiff_t n, ptrdiff_t rows,
                                                 const float *bias, int relu) {
    const __mmask8 keep = (__mmask8)((1u << rows) - 1);
    __m512 b[8];
    ptrdiff_t i;
    int r;
    for (r = 0; r < 8; r++) b[r] = _mm512_set1_ps(bias && r < rows ? bias[r] : 0.0f);
    for (i = 0; i + 16 <= n; i += 16)
        fc_channels_last_group_f32(dst, ds, tile, NR, i, 16, keep, b, relu);
    if (i < n) fc_channels_last_group_f32(dst, ds, tile, NR, i, (int)(n - i), keep, b, relu);
    return n;
}
#elif defined(__AVX2__) && FC_PIX_ROWS == 4
/* One group: pixels i to i + m - 1 of the tile (m <= 8); inlined, so m == 8 costs no
 * tests. */
static inline __attribute__((always_inline)) void fc_channels_last_group_f32(
        float *dst, ptrdiff_t ds, const float *tile, ptrdiff_t NR, ptrdiff_t i, int m,
        ptrdiff_t rows, __m128i keep, const __m256 *b, int relu) {
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(m),
                                             _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
    const __m256 zero = _mm256_setzero_ps();
    __m256 v[4];
    int r, j;
    for (r = 0; r < 4; r++) {
        v[r] = _mm256_add_ps(m == 8 ? _mm256_loadu_ps(tile + r * NR + i)
                                    : _mm256_maskload_ps(tile + r * NR + i, lanes), b[r]);
        if (relu) v[r] = _mm256_and_ps(v[r], _mm256_cmp_ps(v[r], zero, _CMP_NLE_UQ));
    }
    FC_UNROLL for (j = 0; j < 4; j++) {   /* unrolled: the j tests below are constant */
        /* The 4 channels of pixel 4 * lane + j, lane by lane. */
        __m256 t0 = j < 2 ? _mm256_unpacklo_ps(v[0], v[1]) : _mm256_unpackhi_ps(v[0], v[1]);
        __m256 t1 = j < 2 ? _mm256_unpacklo_ps(v[2], v[3]) : _mm256_unpackhi_ps(v[2], v[3]);
        __m256 p = _mm256_castpd_ps(
            j % 2 == 0 ? _mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1))
                       : _mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1)));
        float *d = dst + (i + j) * ds;
        if (rows == 4) {
            if (j < m) _mm_storeu_ps(d, _mm256_castps256_ps128(p));
            if (j + 4 < m) _mm_storeu_ps(d + 4 * ds, _mm256_extractf128_ps(p, 1));
        } else {
            if (j < m) _mm_maskstore_ps(d, keep, _mm256_castps256_ps128(p));
            if (j + 4 < m) _mm_maskstore_ps(d + 4 * ds, keep, _mm256_extractf128_ps(p, 1));
        }
    }
}

static inline ptrdiff_t fc_channels_last_vec_f32(float *dst, ptrdiff_t ds, const float *tile,
                                                 ptrdiff_t NR, ptrdiff_t n, ptrdiff_t rows,
                                                 const float *bias, int relu) {
    const __m128i keep = _mm_cmplt_epi32(_mm_set_epi32(3, 2, 1, 0), _mm_set1_epi32((int)rows));
    __m256 b[4];
    ptrdiff_t i;
    int r;
    for (r = 0; r < 4; r++) b[r] = _mm256_set1_ps(bias && r < rows ? bias[r] : 0.0f);
    for (i = 0; i + 8 <= n; i += 8)
        fc_channels_last_group_f32(dst, ds, tile, NR, i, 8, rows, keep, b, relu);
    if (i < n)
        fc_channels_last_group_f32(dst, ds, tile, NR, i, (int)(n - i), rows, keep, b, relu);
    return n;
}
#else
static inline ptrdiff_t fc_channels_last_vec_f32(float *dst, ptrdiff_t ds, const float *tile,
                                                 ptrdiff_t NR, ptrdiff_t n, ptrdiff_t rows,
                                                 const float *bias, int relu) {
    (void)dst; (void)ds; (void)tile; (void)NR; (void)n; (void)rows; (void)bias; (void)relu;
    return 0;
}
#endif
static inline ptrdiff_t fc_channels_last_vec_f64(double *dst, ptrdiff_t ds, const double *tile,
                                                 ptrdiff_t NR, ptrdiff_t n, ptrdiff_t rows,
                                                 const double *bias, int relu) {
    (void)dst; (void)ds; (void)tile; (void)NR; (void)n; (void)rows; (void)bias; (void)relu;
    return 0;
}

/* The tile of the pix kernel into an NHWC result: n pixels (tile columns, NR apart per
 * row) x rows output channels, pixel i at dst + i * ds, its channels adjacent (so each pixel's
 * stores are contiguous); bias: one per row, or NULL. Then ReLU. A tile of FC_PIX_ROWS rows
 * (full_tile; fc_channels_last_vec reads all of them) goes through fc_channels_last_vec
 * (every pixel, for float32 on AVX2 and AVX-512); what that leaves goes one value at a time. */
#define FC_DEFINE_STORE_CHANNELS_LAST(T, SUF)                                                  \
    static inline void fc_store_channels_last_##SUF(T *dst, ptrdiff_t ds, const T *tile,      \
                                                    ptrdiff_t NR, ptrdiff_t n,                 \
                                                    ptrdiff_t rows, const T *bias, int relu,   \
                                                    int full_tile) {                           \
        ptrdiff_t i, r;                                                                        \
        i = full_tile ? fc_channels_last_vec_##SUF(dst, ds, tile, NR, n, rows, bias, relu) : 0; \
        for (; i < n; i++) {                                                                   \
            T *d = dst + i * ds;                                                               \
            for (r = 0; r < rows; r++) {                                                       \
                T v = tile[r * NR + i] + (bias ? bias[r] : (T)0);                              \
                d[r] = relu && v <= 0 ? (T)0 : v;                                              \
            }                                                                                  \
        }                                                                                      \
    }

/* The tile of the ch kernel into an NCHW result: n pixels (tile rows, NR apart) x cols
 * output channels, channel c's pixels adjacent at dst + c * cs; bias: one per channel, or
 * NULL. Then ReLU. */
#define FC_DEFINE_STORE_CHANNELS_FIRST(T, SUF)                                                 \
    static inline void fc_store_channels_first_##SUF(T *dst, ptrdiff_t cs, const T *tile,     \
                                                     ptrdiff_t NR, ptrdiff_t n,                \
                                                     ptrdiff_t cols, const T *bias,            \
                                                     int relu) {                               \
        ptrdiff_t i, c;                                                                        \
        for (c = 0; c < cols; c++) {                                                           \
            T *d = dst + c * cs, b = bias ? bias[c] : (T)0;                                    \
            for (i = 0; i < n; i++) {                                                          \
                T v = tile[i * NR + c] + b;                                                    \
                d[i] = relu && v <= 0 ? (T)0 : v;                                              \
            }                                                                                  \
        }                                                                                      \
    }

#if FC_VECTOR_EXT

/* pix micro-kernels: tile[r][j] = sum_k w[k * ROWS + r] * x[off[k] + j], r < ROWS,
 * j < VECS * VLEN; NAME_f32 and NAME_f64. Not inlined: inside the driver GCC kept one of the
 * AVX2 kernel's 12 accumulators on the stack (a store and a reload on every tap, half of the
 * loop's samples); compiled on its own the loop holds all of them in registers, and the call
 * costs nothing next to K taps. */
#define FC_DEFINE_PIX_KERNEL(T, SUF, NAME, ROWS, VECS)                                         \
    static __attribute__((noinline)) void NAME##_##SUF(const T *x, const ptrdiff_t *off,       \
                                                       const T *w, ptrdiff_t K, T *tile) {     \
        fc_vec_##SUF acc[ROWS][VECS];                                                          \
        ptrdiff_t k;                                                                           \
        int r, j;                                                                              \
        FC_UNROLL for (r = 0; r < ROWS; r++)                                                   \
            FC_UNROLL for (j = 0; j < VECS; j++) acc[r][j] = FC_ZERO(SUF);                     \
        for (k = 0; k < K; k++) {                                                              \
            const T *xk = x + off[k];                                                          \
            const T *wk = w + k * ROWS;                                                        \
            fc_vec_##SUF xv[VECS];                                                             \
            FC_UNROLL for (j = 0; j < VECS; j++)                                               \
                xv[j] = FC_LOAD(SUF, xk + j * FC_VLEN(T));                                     \
            FC_UNROLL for (r = 0; r < ROWS; r++) {                                             \
                fc_vec_##SUF b = FC_SPLAT(SUF, wk[r]);                                         \
                FC_UNROLL for (j = 0; j < VECS; j++) acc[r][j] += b * xv[j];                   \
            }                                                                                  \
        }                                                                                      \
        FC_UNROLL for (r = 0; r < ROWS; r++)                                                   \
            FC_UNROLL for (j = 0; j < VECS; j++)                                               \
                FC_STORE(SUF, tile + (r * VECS + j) * FC_VLEN(T), acc[r][j]);                  \
    }

/* ch micro-kernel: tile[r][j] = sum_k x[ro[r] + off[k]] * w[k * CH_VECS * VLEN + j],
 * r < CH_ROWS, j < CH_VECS * VLEN. Each pixel row has its own offset ro[r], so a block can
 * jump the padding columns between two output rows. */
#define FC_DEFINE_CH_KERNEL(T, SUF)                                                            \
    static inline void fc_ch_kernel_##SUF(const T *x, const ptrdiff_t *ro,                     \
                                          const ptrdiff_t *off, const T *w, ptrdiff_t K,       \
                                          T *tile) {                                           \
        fc_vec_##SUF acc[FC_CH_ROWS][FC_CH_VECS];                                              \
        const T *xr[FC_CH_ROWS];                                                               \
        ptrdiff_t k;                                                                           \
        int r, j;                                                                              \
        FC_UNROLL for (r = 0; r < FC_CH_ROWS; r++) {                                           \
            xr[r] = x + ro[r];                                                                 \
            FC_UNROLL for (j = 0; j < FC_CH_VECS; j++) acc[r][j] = FC_ZERO(SUF);               \
        }                                                                                      \
        for (k = 0; k < K; k++) {                                                              \
            const ptrdiff_t o = off[k];                                                        \
            const T *wk = w + k * (FC_CH_VECS * FC_VLEN(T));                                   \
            fc_vec_##SUF wv[FC_CH_VECS];                                                       \
            FC_UNROLL for (j = 0; j < FC_CH_VECS; j++) wv[j] = FC_LOAD(SUF, wk + j * FC_VLEN(T)); \
            FC_UNROLL for (r = 0; r < FC_CH_ROWS; r++) {                                       \
                fc_vec_##SUF b = FC_SPLAT(SUF, xr[r][o]);                                      \
                FC_UNROLL for (j = 0; j < FC_CH_VECS; j++) acc[r][j] += b * wv[j];             \
            }                                                                                  \
        }                                                                                      \
        FC_UNROLL for (r = 0; r < FC_CH_ROWS; r++)                                             \
            FC_UNROLL for (j = 0; j < FC_CH_VECS; j++)                                         \
                FC_STORE(SUF, tile + (r * FC_CH_VECS + j) * FC_VLEN(T), acc[r][j]);            \
    }
#else
#define FC_DEFINE_PIX_KERNEL(T, SUF, NAME, ROWS, VECS)                                         \
    static void NAME##_##SUF(const T *x, const ptrdiff_t *off, const T *w, ptrdiff_t K,        \
                             T *tile) {                                                        \
        enum { NR = VECS * (FC_VBYTES / sizeof(T)) };                                          \
        ptrdiff_t k; int r, j;                                                                 \
        for (r = 0; r < ROWS * NR; r++) tile[r] = 0;                                           \
        for (k = 0; k < K; k++)                                                                \
            for (r = 0; r < ROWS; r++)                                                         \
                for (j = 0; j < NR; j++)                                                       \
                    tile[r * NR + j] += w[k * ROWS + r] * x[off[k] + j];                       \
    }
#define FC_DEFINE_CH_KERNEL(T, SUF)                                                            \
    static void fc_ch_kernel_##SUF(const T *x, const ptrdiff_t *ro, const ptrdiff_t *off,      \
                                   const T *w, ptrdiff_t K, T *tile) {                         \
        enum { NR = FC_CH_VECS * (FC_VBYTES / sizeof(T)) };                                    \
        ptrdiff_t k; int r, j;                                                                 \
        for (r = 0; r < FC_CH_ROWS * NR; r++) tile[r] = 0;                                     \
        for (k = 0; k < K; k++)                                                                \
            for (r = 0; r < FC_CH_ROWS; r++)                                                   \
                for (j = 0; j < NR; j++) tile[r * NR + j] += x[ro[r] + off[k]] * w[k * NR + j]; \
    }
#endif

/* Drivers: pixel blocks [qb0, qb1) x every output-channel block of one image (of one group),
 * pixel blocks outside, so that a block's x stays in L1 while the weights of every channel
 * block stream from L2 (measured at least as fast as the other order on every suite layer).
 *
 * fc_pix_blocks (fc_plane_blocks: one output channel, PLANE_VECS vectors of pixels): pixel
 * q = oh * Ws + ow on a grid Ws wide (only ow < OW, oh < OH exist), in blocks of
 * PIX_VECS * VLEN; output channels in blocks of PIX_ROWS. wpack: (co blocks, K,
 * PIX_ROWS). out: channel 0, pixel 0 of this group of one image; output channel co, pixel
 * (oh, ow) at out[co * ocs + (oh * OW + ow) * ops]: (ocs, ops) = (OH * OW, 1) for an NCHW
 * result, (1, C_out) for an NHWC one (ops != 1 means that layout). bias: cog values or
 * NULL. A block reads x from min(its first pixel, qmax): x read in place (an unpadded NCHW
 * 1x1 convolution, no slack after the planes) passes qmax = OH * OW - block, so that the last
 * block, moved back, reads no further than its plane's end; it still stores only its own
 * pixels. A prepared image passes a qmax past the last block.
 *
 * fc_ch_blocks: output pixels p = oh * OW + ow in blocks of CH_ROWS (a short last block
 * repeats its last pixel), reading x at (oh * Ws + ow) * ps; output channels in blocks of
 * CH_VECS * VLEN. x: NHWC (ps = C) or NCHW (ps = 1) prepared image. wpack: (co blocks, K,
 * CH_VECS * VLEN). out: pixel 0, channel 0 of this group of one image; (ocs, ops) as for
 * fc_pix_blocks: ops == 1, an NCHW result, stores each channel's pixels as a run (small
 * output planes, whose Ws-wide grid the pix blocks would waste); else channels adjacent,
 * pixels ops apart. prefetch_x: x is the caller's NHWC array, read in place (not a prepared
 * copy already in cache), so blocks ahead are prefetched (see fc_prefetch_pixels). */
#define FC_DEFINE_PIX_DRIVER(T, SUF, NAME, KERNEL, ROWS, VECS)                                 \
    static void NAME##_##SUF(const T *xs, const ptrdiff_t *off, const T *wpack, ptrdiff_t K,   \
                             ptrdiff_t qb0, ptrdiff_t qb1, T *out, const T *bias,              \
                             ptrdiff_t cog, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Ws,          \
                             int relu, ptrdiff_t ocs, ptrdiff_t ops, ptrdiff_t qmax) {         \
        enum { NR = VECS * (FC_VBYTES / sizeof(T)) };                                          \
        T tile[ROWS * NR] FC_ALIGNED;                                                          \
        ptrdiff_t cb, qb, q, r, end;                                                           \
        for (qb = qb0; qb < qb1; qb++) {                                                       \
            ptrdiff_t q0 = qb * NR, qr = q0 < qmax ? q0 : qmax;   /* stored from, read from */ \
            for (cb = 0; cb * ROWS < cog; cb++) {                                              \
                ptrdiff_t rows = cog - cb * ROWS;                                              \
                if (rows > ROWS) rows = ROWS;                                                  \
                KERNEL##_##SUF(xs + qr, off, wpack + cb * K * ROWS, K, tile);                  \
                /* Scatter the tile's valid pixels, one output-row segment at a time. */      \
                for (q = q0; q < q0 + NR; q = end) {                                           \
                    ptrdiff_t oh = q / Ws, ow = q - oh * Ws, n;                                \
                    end = (oh + 1) * Ws;                                                       \
                    if (end > q0 + NR) end = q0 + NR;                                          \
                    if (oh >= OH) break;                                                       \
                    if (ow >= OW) continue;                                                    \
                    n = end - q;                                                               \
                    if (ow + n > OW) n = OW - ow;                                              \
                    if (ops != 1) {                                                            \
                        fc_store_channels_last_##SUF(                                          \
                            out + cb * ROWS + (oh * OW + ow) * ops, ops, tile + (q - qr), NR,  \
                            n, rows, bias ? bias + cb * ROWS : NULL, relu,                     \
                            ROWS == FC_PIX_ROWS);                                              \
                        continue;                                                              \
                    }                                                                          \
                    for (r = 0; r < rows; r++) {                                               \
                        ptrdiff_t co = cb * ROWS + r;                                          \
                        fc_epilogue_##SUF(out + co * ocs + oh * OW + ow,                       \
                                          tile + r * NR + (q - qr), n, NULL,                   \
                                          bias ? bias[co] : (T)0, relu);                       \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

/* x read in place by the ch kernel (an NHWC 1x1 convolution without stride or padding)
 * comes from memory, one pixel row of C_in values per accumulator row: 12 rows of 1 KB each
 * on ResNet's 256->64, which the hardware prefetchers did not keep ahead of the kernel
 * (its tap loop ran at about 67% of the FMA peak, against about 97% on a prepared image).
 * So each block first asks for the pixels of the block FC_CH_PREFETCH_BLOCKS ahead, into L2
 * (the next block's own x would push the weights out of L1). Measured, ResNet 256->64 56x56
 * NHWC batch 32, two threads, separate builds interleaved by process: 143-162 -> 159-176
 * GFLOP/s at 2 blocks ahead; 1 block 143-169, 4 blocks 170-173, into L1 156-162. */
#define FC_CH_PREFETCH_BLOCKS 2

/* The smallest and largest of the K tap offsets. */
static inline void fc_offset_range(const ptrdiff_t *off, ptrdiff_t K, ptrdiff_t *lo,
                                   ptrdiff_t *hi) {
    ptrdiff_t k, a = K > 0 ? off[0] : 0, b = a;
    for (k = 1; k < K; k++) {
        if (off[k] < a) a = off[k];
        if (off[k] > b) b = off[k];
    }
    *lo = a;
    *hi = b;
}

/* Prefetch into L2 the x that the ch kernel's block of pixels p0 .. p0 + CH_ROWS - 1
 * (those up to last) reads: for each pixel, elements [omin, omax] after its start. Byte
 * addresses are computed as integers, since they may lie outside x (a prefetch never
 * faults). */
static inline void fc_prefetch_pixels(const void *xs, size_t item, ptrdiff_t p0,
                                      ptrdiff_t last, ptrdiff_t OW, ptrdiff_t Ws,
                                      ptrdiff_t ps, ptrdiff_t omin, ptrdiff_t omax) {
    ptrdiff_t r;
    for (r = 0; r < FC_CH_ROWS && p0 + r <= last; r++) {
        ptrdiff_t p = p0 + r, oh = p / OW, start = (oh * Ws + (p - oh * OW)) * ps;
        uintptr_t a = (uintptr_t)xs + (uintptr_t)((start + omin) * (ptrdiff_t)item);
        uintptr_t b = (uintptr_t)xs + (uintptr_t)((start + omax) * (ptrdiff_t)item);
#if defined(__GNUC__) || defined(__clang__)
        for (a &= ~(uintptr_t)63; a <= b; a += 64) __builtin_prefetch((const void *)a, 0, 2);
#else
        (void)a;
        (void)b;
#endif
    }
}

#define FC_DEFINE_DRIVERS(T, SUF)                                                              \
    static void fc_ch_blocks_##SUF(const T *xs, ptrdiff_t ps, const ptrdiff_t *off,            \
                                   const T *wpack, ptrdiff_t K,                                \
                                   ptrdiff_t qb0, ptrdiff_t qb1, T *out, const T *bias,        \
                                   ptrdiff_t cog, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Ws,    \
                                   int relu, ptrdiff_t ocs, ptrdiff_t ops, int prefetch_x) {   \
        enum { NR = FC_CH_VECS * (FC_VBYTES / sizeof(T)) };                                    \
        T tile[FC_CH_ROWS * NR] FC_ALIGNED;                                                    \
        ptrdiff_t ro[FC_CH_ROWS];                                                              \
        ptrdiff_t cb, qb, r, n, last = OH * OW - 1, omin = 0, omax = 0;                        \
        if (prefetch_x) fc_offset_range(off, K, &omin, &omax);                                 \
        for (qb = qb0; qb < qb1; qb++) {                                                       \
            ptrdiff_t p0 = qb * FC_CH_ROWS;                                                    \
            if (prefetch_x && qb + FC_CH_PREFETCH_BLOCKS < qb1)                                \
                fc_prefetch_pixels(xs, sizeof(T), p0 + FC_CH_PREFETCH_BLOCKS * FC_CH_ROWS,     \
                                   last, OW, Ws, ps, omin, omax);                              \
            for (r = 0; r < FC_CH_ROWS; r++) {                                                 \
                ptrdiff_t p = p0 + r < last ? p0 + r : last, oh = p / OW;                      \
                ro[r] = (oh * Ws + (p - oh * OW)) * ps;                                        \
            }                                                                                  \
            n = last + 1 - p0 < FC_CH_ROWS ? last + 1 - p0 : FC_CH_ROWS;                       \
            for (cb = 0; cb * NR < cog; cb++) {                                                \
                ptrdiff_t c0 = cb * NR, cols = cog - c0;                                       \
                if (cols > NR) cols = NR;                                                      \
                fc_ch_kernel_##SUF(xs, ro, off, wpack + cb * K * NR, K, tile);                 \
                if (ops == 1) {   /* NCHW result: the pixels of a channel are adjacent */     \
                    fc_store_channels_first_##SUF(out + c0 * ocs + p0, ocs, tile, NR, n, cols, \
                                                  bias ? bias + c0 : NULL, relu);              \
                    continue;                                                                  \
                }                                                                              \
                for (r = 0; r < n; r++)                                                        \
                    fc_epilogue_##SUF(out + (p0 + r) * ops + c0, tile + r * NR, cols,          \
                                      bias ? bias + c0 : NULL, (T)0, relu);                    \
            }                                                                                  \
        }                                                                                      \
    }

/* One prepared row: zl zeros, then src[0 .. n), then zr zeros. Inline vector loops, because
 * the rows are short (56 floats on a ResNet layer) and three libc calls per row (memset,
 * memcpy, memset) cost about a fifth of a depthwise plane. GCC would turn the loops back into
 * those calls, hence the attribute. */
#if defined(__GNUC__) && !defined(__clang__)
#define FC_NO_LIBC_PATTERNS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define FC_NO_LIBC_PATTERNS
#endif
#define FC_DEFINE_PREP_ROW(T, SUF)                                                             \
    static inline FC_NO_LIBC_PATTERNS void fc_prep_row_##SUF(T *dst, const T *src,             \
                                                             ptrdiff_t n, ptrdiff_t zl,        \
                                                             ptrdiff_t zr) {                   \
        ptrdiff_t i = 0;                                                                       \
        for (; i < zl; i++) dst[i] = (T)0;                                                     \
        dst += zl;                                                                             \
        i = 0;                                                                                 \
        FC_PREP_VECTOR_COPY(T, SUF)                                                            \
        for (; i < n; i++) dst[i] = src[i];                                                    \
        for (i = n; i < n + zr; i++) dst[i] = (T)0;                                            \
    }
#if FC_VECTOR_EXT
#define FC_PREP_VECTOR_COPY(T, SUF)                                                            \
        for (; i + 2 * FC_VLEN(T) <= n; i += 2 * FC_VLEN(T)) {                                 \
            fc_vec_##SUF v0 = FC_LOAD(SUF, src + i), v1 = FC_LOAD(SUF, src + i + FC_VLEN(T));  \
            FC_STORE(SUF, dst + i, v0);                                                        \
            FC_STORE(SUF, dst + i + FC_VLEN(T), v1);                                           \
        }                                                                                      \
        for (; i + FC_VLEN(T) <= n; i += FC_VLEN(T)) FC_STORE(SUF, dst + i, FC_LOAD(SUF, src + i));
#else
#define FC_PREP_VECTOR_COPY(T, SUF)
#endif
FC_DEFINE_PREP_ROW(float, f32)
FC_DEFINE_PREP_ROW(double, f64)

/* One input row into its sw column phases, for strides 2 and 4 (AlexNet's conv1, the ResNet
 * stem and stride-2 3x3 layers): phase b's row, at dst + b * phase_len, gets
 * dst_b[j] = src[j * sw + b - pl] for ja <= j < jb, a range where every phase reads inside
 * the row (the caller fills the padding columns around it). sw vectors of the row are
 * loaded and split by even and odd lanes (twice for stride 4); a last, overlapping step
 * ends the range. One element at a time, with the column bounds worked out per row and
 * phase, this copy took about 9% of a stride-2 64->128 56x56 layer at batch 32 (perf) and
 * 8% of AlexNet's conv1; in vectors those layers ran 2-3% faster, and the copy (7.6% of
 * the stride-2 layer) now waits on the image's first reads from memory. Returns 1, or 0
 * (nothing done) for other strides, ranges shorter than a vector and builds without the
 * shuffle builtin. */
#if FC_VECTOR_EXT && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FC_HAS_SHUFFLE 1
#endif
#endif
#ifdef FC_HAS_SHUFFLE
#define FC_EVENS_2 0, 2
#define FC_ODDS_2 1, 3
#define FC_EVENS_4 0, 2, 4, 6
#define FC_ODDS_4 1, 3, 5, 7
#define FC_EVENS_8 0, 2, 4, 6, 8, 10, 12, 14
#define FC_ODDS_8 1, 3, 5, 7, 9, 11, 13, 15
#define FC_EVENS_16 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define FC_ODDS_16 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#if FC_VBYTES == 64
#define FC_LANES_f32 16
#define FC_LANES_f64 8
#elif FC_VBYTES == 32
#define FC_LANES_f32 8
#define FC_LANES_f64 4
#else
#define FC_LANES_f32 4
#define FC_LANES_f64 2
#endif
/* Two levels, so that the lane count is expanded before it is pasted into the index list. */
#define FC_SPLIT_(a, b, WHICH, N) __builtin_shufflevector(a, b, FC_##WHICH##_##N)
#define FC_SPLIT(a, b, WHICH, N) FC_SPLIT_(a, b, WHICH, N)
#define FC_EVENS(SUF, a, b) FC_SPLIT(a, b, EVENS, FC_LANES_##SUF)
#define FC_ODDS(SUF, a, b) FC_SPLIT(a, b, ODDS, FC_LANES_##SUF)
#define FC_DEFINE_PREP_PHASES(T, SUF)                                                          \
    static inline int fc_prep_phases_##SUF(T *dst, ptrdiff_t phase_len, const T *src,          \
                                           ptrdiff_t sw, ptrdiff_t pl, ptrdiff_t ja,           \
                                           ptrdiff_t jb) {                                     \
        const ptrdiff_t V = FC_VLEN(T);                                                        \
        ptrdiff_t j = ja;                                                                      \
        if ((sw != 2 && sw != 4) || jb - ja < V) return 0;                                     \
        for (;;) {                                                                             \
            const T *s = src + j * sw - pl;                                                    \
            fc_vec_##SUF v0 = FC_LOAD(SUF, s), v1 = FC_LOAD(SUF, s + V);                       \
            fc_vec_##SUF e = FC_EVENS(SUF, v0, v1), o = FC_ODDS(SUF, v0, v1);                  \
            if (sw == 2) {                                                                     \
                FC_STORE(SUF, dst + j, e);                                                     \
                FC_STORE(SUF, dst + phase_len + j, o);                                         \
            } else {                                                                           \
                fc_vec_##SUF v2 = FC_LOAD(SUF, s + 2 * V), v3 = FC_LOAD(SUF, s + 3 * V);       \
                fc_vec_##SUF e2 = FC_EVENS(SUF, v2, v3), o2 = FC_ODDS(SUF, v2, v3);            \
                FC_STORE(SUF, dst + j, FC_EVENS(SUF, e, e2));                                  \
                FC_STORE(SUF, dst + phase_len + j, FC_EVENS(SUF, o, o2));                      \
                FC_STORE(SUF, dst + 2 * phase_len + j, FC_ODDS(SUF, e, e2));                   \
                FC_STORE(SUF, dst + 3 * phase_len + j, FC_ODDS(SUF, o, o2));                   \
            }                                                                                  \
            if (j + V == jb) return 1;                                                         \
            j = j + 2 * V <= jb ? j + V : jb - V;   /* the last step overlaps the one before */ \
        }                                                                                      \
    }
#else
#define FC_DEFINE_PREP_PHASES(T, SUF)                                                          \
    static inline int fc_prep_phases_##SUF(T *dst, ptrdiff_t phase_len, const T *src,          \
                                           ptrdiff_t sw, ptrdiff_t pl, ptrdiff_t ja,           \
                                           ptrdiff_t jb) {                                     \
        (void)dst; (void)phase_len; (void)src; (void)sw; (void)pl; (void)ja; (void)jb;         \
        return 0;                                                                              \
    }
#endif
FC_DEFINE_PREP_PHASES(float, f32)
FC_DEFINE_PREP_PHASES(double, f64)

FC_DEFINE_EPILOGUE(float, f32)
FC_DEFINE_EPILOGUE(double, f64)
FC_DEFINE_STORE_CHANNELS_LAST(float, f32)
FC_DEFINE_STORE_CHANNELS_LAST(double, f64)
FC_DEFINE_STORE_CHANNELS_FIRST(float, f32)
FC_DEFINE_STORE_CHANNELS_FIRST(double, f64)
FC_DEFINE_PIX_KERNEL(float, f32, fc_pix_kernel, FC_PIX_ROWS, FC_PIX_VECS)
FC_DEFINE_PIX_KERNEL(double, f64, fc_pix_kernel, FC_PIX_ROWS, FC_PIX_VECS)
FC_DEFINE_PIX_KERNEL(float, f32, fc_plane_kernel, 1, FC_PLANE_VECS)
FC_DEFINE_PIX_KERNEL(double, f64, fc_plane_kernel, 1, FC_PLANE_VECS)
FC_DEFINE_CH_KERNEL(float, f32)
FC_DEFINE_CH_KERNEL(double, f64)
FC_DEFINE_PIX_DRIVER(float, f32, fc_pix_blocks, fc_pix_kernel, FC_PIX_ROWS, FC_PIX_VECS)
FC_DEFINE_PIX_DRIVER(double, f64, fc_pix_blocks, fc_pix_kernel, FC_PIX_ROWS, FC_PIX_VECS)
FC_DEFINE_PIX_DRIVER(float, f32, fc_plane_blocks, fc_plane_kernel, 1, FC_PLANE_VECS)
FC_DEFINE_PIX_DRIVER(double, f64, fc_plane_blocks, fc_plane_kernel, 1, FC_PLANE_VECS)
FC_DEFINE_DRIVERS(float, f32)
FC_DEFINE_DRIVERS(double, f64)

/* NHWC depthwise (one input and one output channel per group): one output row, channels in
 * blocks of DW_VECS vectors held in registers over every tap (taps on padding are skipped;
 * the caller pads x explicitly when the weight is not finite). out[ow, c] = bias[c] +
 * sum over (kh, kw) of x[ih0 + kh*dh, ow*sw - pl + kw*dw, c] * w[kh, kw, c], then ReLU. */
#define FC_DW_VECS 4
/* Taps of one output row kept in a table for the interior columns (larger kernels: the loop
 * with bounds checks). */
#define FC_DW_MAX_TAPS 64
#if FC_VECTOR_EXT
/* ReLU ("v <= 0" is false for NaN, so NaN passes, as in PyTorch) on the biased sums acc[0..n),
 * then store them (n vectors, V apart, from o). */
#define FC_DW_STORE(SUF, o, acc, n, relu, stream)                                           \
    FC_UNROLL for (j = 0; j < (n); j++) {                                                   \
        if (relu)                                                                           \
            acc[j] = (fc_vec_##SUF)((fc_ivec_##SUF)acc[j]                                   \
                                    & ~(fc_ivec_##SUF)(acc[j] <= FC_ZERO(SUF)));            \
        if (stream && (uintptr_t)((o) + j * V) % FC_VBYTES == 0)                            \
            FC_DW_STREAM(SUF, (o) + j * V, acc[j]);                                         \
        else                                                                                \
            FC_STORE(SUF, (o) + j * V, acc[j]);                                             \
    }
/* Streaming stores for results larger than the caches (see _stream.h), on aligned vectors. */
#if FC_STREAM
#define FC_DW_STREAM(SUF, p, v) FC_STREAM_##SUF(p, v)
#else
#define FC_DW_STREAM(SUF, p, v) FC_STORE(SUF, p, v)
#endif
/* Stride 1, 3 columns, no column dilation: FC_DW_RUN output columns x FC_DW_RUN_VECS vectors
 * of channels, the window sliding along the row, so each input vector is loaded once per
 * kernel row (FC_DW_RUN + 2 loads and 3 weight loads for 3 * FC_DW_RUN multiply-adds, where
 * the per-column loop loads two vectors for each). Taps added in (kh, kw) order, as below. */
#define FC_DW_RUN 4
#define FC_DW_RUN_VECS 2
/* Columns per fc_dw_nhwc_pair_run: nine weight vectors and 2 x FC_DW_PAIR_RUN sums stay in
 * registers, so 4 with AVX-512's 32 of them and 2 with 16 (measured: dw_3x3 NHWC batch 32,
 * 1.26-1.39x the one-row runs at 4 and 1.18 at 8 on AVX-512; with AVX2 1.44x at 2, 1.20 at
 * 4). */
#if FC_VBYTES == 64
#define FC_DW_PAIR_RUN 4
#else
#define FC_DW_PAIR_RUN 2
#endif
#define FC_DEFINE_DW_NHWC_RUN(T, SUF)                                                       \
    static inline void fc_dw_nhwc_run_##SUF(const T *xp, const T *w, const T *bias, T *o,   \
                                            ptrdiff_t C, const ptrdiff_t *xo,               \
                                            const ptrdiff_t *wo, ptrdiff_t nt, int relu,    \
                                            int stream) {                                   \
        enum { V = FC_VBYTES / sizeof(T) };                                                 \
        fc_vec_##SUF acc[FC_DW_RUN][FC_DW_RUN_VECS];                                        \
        ptrdiff_t t;                                                                        \
        int i, j, col;                                                                      \
        FC_UNROLL for (j = 0; j < FC_DW_RUN_VECS; j++) {                                    \
            fc_vec_##SUF b = bias ? FC_LOAD(SUF, bias + j * V) : FC_ZERO(SUF);              \
            FC_UNROLL for (i = 0; i < FC_DW_RUN; i++) acc[i][j] = b;                        \
        }                                                                                   \
        for (t = 0; t < nt; t += 3) {   /* one kernel row: taps t, t + 1, t + 2 */          \
            const T *xr = xp + xo[t], *wr = w + wo[t];                                      \
            FC_UNROLL for (j = 0; j < FC_DW_RUN_VECS; j++) {                                \
                fc_vec_##SUF w0 = FC_LOAD(SUF, wr + j * V);                                 \
                fc_vec_##SUF w1 = FC_LOAD(SUF, wr + C + j * V);                             \
                fc_vec_##SUF w2 = FC_LOAD(SUF, wr + 2 * C + j * V);                         \
                FC_UNROLL for (col = 0; col < FC_DW_RUN + 2; col++) {                       \
                    fc_vec_##SUF xv = FC_LOAD(SUF, xr + col * C + j * V);                   \
                    /* column col is tap kw = col - i of output i; kw ascending per i */    \
                    if (col < FC_DW_RUN) acc[col][j] += xv * w0;                            \
                    if (col >= 1 && col - 1 < FC_DW_RUN) acc[col - 1][j] += xv * w1;        \
                    if (col >= 2) acc[col - 2][j] += xv * w2;                               \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        FC_UNROLL for (i = 0; i < FC_DW_RUN; i++) {                                         \
            FC_DW_STORE(SUF, o + i * C, acc[i], FC_DW_RUN_VECS, relu, stream)               \
        }                                                                                   \
    }
/* Two output rows (oh, oh + 1) of a 3x3 stride-1 undilated kernel whose four input rows
 * (xp, xp + X, xp + 2X, xp + 3X, X = W * C) all lie inside the image: FC_DW_PAIR_RUN output
 * columns x one vector of channels in each row, the weights of the vector loaded once. Each
 * input vector is loaded once and feeds up to six sums (both rows, three columns): 4 *
 * (FC_DW_PAIR_RUN + 2) + 9 loads for 18 * FC_DW_PAIR_RUN multiply-adds (0.46 per multiply-
 * add at 4 columns; fc_dw_nhwc_run: 0.75), and the two rows share three of their four input
 * rows while they are in cache. The input row loop is outermost, so each sum still adds its
 * taps in (kh, kw) order, as every other path here does: the results are the same bits. */
#define FC_DEFINE_DW_NHWC_PAIR_RUN(T, SUF)                                                  \
    static inline void fc_dw_nhwc_pair_run_##SUF(const T *xp, const T *pf, const T *w,      \
                                                 const T *bias, T *o0, T *o1, ptrdiff_t C,  \
                                                 ptrdiff_t X, int relu, int stream) {       \
        enum { V = FC_VBYTES / sizeof(T), R = FC_DW_PAIR_RUN };                             \
        fc_vec_##SUF acc[2][R], wv[3][3];                                                   \
        int i, j, col, kh, kw;                                                              \
        {                                                                                   \
            fc_vec_##SUF b = bias ? FC_LOAD(SUF, bias) : FC_ZERO(SUF);                      \
            FC_UNROLL for (i = 0; i < R; i++) acc[0][i] = acc[1][i] = b;                    \
        }                                                                                   \
        FC_UNROLL for (kh = 0; kh < 3; kh++)                                                \
            FC_UNROLL for (kw = 0; kw < 3; kw++) wv[kh][kw] = FC_LOAD(SUF, w + (kh * 3 + kw) * C); \
        if (pf)   /* the next pair's two new input rows, these columns */                   \
            FC_UNROLL for (i = 0; i < R; i++) {                                             \
                __builtin_prefetch(pf + i * C, 0, 3);                                       \
                __builtin_prefetch(pf + X + i * C, 0, 3);                                   \
            }                                                                               \
        FC_UNROLL for (i = 0; i < 4; i++) {   /* input row ih0 + i: tap kh = i - r of row r */ \
            FC_UNROLL for (col = 0; col < R + 2; col++) {                                   \
                fc_vec_##SUF xv = FC_LOAD(SUF, xp + i * X + col * C);                       \
                FC_UNROLL for (j = 0; j < 2; j++) {                                         \
                    if (i - j < 0 || i - j > 2) continue;                                   \
                    FC_UNROLL for (kw = 0; kw < 3; kw++)                                    \
                        if (col - kw >= 0 && col - kw < R)                                  \
                            acc[j][col - kw] += xv * wv[i - j][kw];                         \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        FC_UNROLL for (i = 0; i < R; i++) {                                                 \
            FC_DW_STORE(SUF, o0 + i * C, (&acc[0][i]), 1, relu, stream)                     \
            FC_DW_STORE(SUF, o1 + i * C, (&acc[1][i]), 1, relu, stream)                     \
        }                                                                                   \
    }
/* Columns whose window lies inside the row (ow in [lo, hi)) run over a table of the row's
 * valid taps with no bounds checks (3-wide stride-1 kernels: runs of FC_DW_RUN columns
 * first, see fc_dw_nhwc_run); the others check each tap. All add the taps in (kh, kw) order.
 * fc_dw_nhwc_pair does two rows at once (see fc_dw_nhwc_pair_ok), then the same per-column
 * loop on each row for what its runs left. */
#define FC_DEFINE_DW_NHWC(T, SUF)                                                           \
    /* The table of one output row's valid taps (offsets into x and w) and its interior    \
     * columns [*lo, *hi); returns the number of taps (0 for kernels too large to table). */ \
    static ptrdiff_t fc_dw_nhwc_taps_##SUF(ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,           \
                                           ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t OW,        \
                                           ptrdiff_t ih0, ptrdiff_t sw, ptrdiff_t dh,       \
                                           ptrdiff_t dw, ptrdiff_t pl, ptrdiff_t *xo,       \
                                           ptrdiff_t *wo, ptrdiff_t *lo, ptrdiff_t *hi) {   \
        ptrdiff_t nt = 0, kh, kw;                                                           \
        ptrdiff_t span = W - (KW - 1) * dw + pl;   /* interior: ow * sw < span */           \
        *lo = *hi = 0;                                                                      \
        if (KH * KW > FC_DW_MAX_TAPS) return 0;                                             \
        for (kh = 0; kh < KH; kh++) {                                                       \
            ptrdiff_t ih = ih0 + kh * dh;                                                   \
            if (ih < 0 || ih >= H) continue;                                                \
            for (kw = 0; kw < KW; kw++, nt++) {                                             \
                xo[nt] = (ih * W + kw * dw) * C;                                            \
                wo[nt] = (kh * KW + kw) * C;                                                \
            }                                                                               \
        }                                                                                   \
        *lo = pl > 0 ? (pl + sw - 1) / sw : 0;                                              \
        *hi = span > 0 ? (span - 1) / sw + 1 : 0;                                           \
        if (*hi > OW) *hi = OW;                                                             \
        if (*lo > *hi) *lo = *hi;                                                           \
        return nt;                                                                          \
    }                                                                                       \
    /* Every column of one output row but channels below run_c of columns [lo, run_end),   \
     * which runs have done. */                                                             \
    static void fc_dw_nhwc_cols_##SUF(const T *x, const T *w, const T *bias, T *out,        \
                                      ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t KH,  \
                                      ptrdiff_t KW, ptrdiff_t OW, ptrdiff_t ih0,            \
                                      ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,             \
                                      ptrdiff_t pl, int relu, int stream,                   \
                                      const ptrdiff_t *xo, const ptrdiff_t *wo,             \
                                      ptrdiff_t nt, ptrdiff_t lo, ptrdiff_t hi,             \
                                      ptrdiff_t run_end, ptrdiff_t run_c) {                 \
        enum { V = FC_VBYTES / sizeof(T), B = FC_DW_VECS * V };                             \
        ptrdiff_t ow, c, kh, kw, t;                                                         \
        int j;                                                                              \
        for (ow = 0; ow < OW; ow++) {                                                       \
            ptrdiff_t iw0 = ow * sw - pl;                                                   \
            T *o = out + ow * C;                                                            \
            if (ow >= lo && ow < hi) {                                                      \
                const T *xp = x + iw0 * C;                                                  \
                c = ow < run_end ? run_c : 0;                                               \
                for (; c + B <= C; c += B) {                                                \
                    fc_vec_##SUF acc[FC_DW_VECS];                                           \
                    FC_UNROLL for (j = 0; j < FC_DW_VECS; j++)                              \
                        acc[j] = bias ? FC_LOAD(SUF, bias + c + j * V) : FC_ZERO(SUF);      \
                    for (t = 0; t < nt; t++) {                                              \
                        const T *xt = xp + xo[t] + c, *wt = w + wo[t] + c;                  \
                        FC_UNROLL for (j = 0; j < FC_DW_VECS; j++)                          \
                            acc[j] += FC_LOAD(SUF, xt + j * V) * FC_LOAD(SUF, wt + j * V);  \
                    }                                                                       \
                    FC_DW_STORE(SUF, o + c, acc, FC_DW_VECS, relu, stream)                  \
                }                                                                           \
            } else {                                                                        \
                for (c = 0; c + B <= C; c += B) {                                           \
                    fc_vec_##SUF acc[FC_DW_VECS];                                           \
                    FC_UNROLL for (j = 0; j < FC_DW_VECS; j++)                              \
                        acc[j] = bias ? FC_LOAD(SUF, bias + c + j * V) : FC_ZERO(SUF);      \
                    for (kh = 0; kh < KH; kh++) {                                           \
                        ptrdiff_t ih = ih0 + kh * dh;                                       \
                        if (ih < 0 || ih >= H) continue;                                    \
                        for (kw = 0; kw < KW; kw++) {                                       \
                            ptrdiff_t iw = iw0 + kw * dw;                                   \
                            if (iw < 0 || iw >= W) continue;                                \
                            FC_UNROLL for (j = 0; j < FC_DW_VECS; j++)                      \
                                acc[j] += FC_LOAD(SUF, x + (ih * W + iw) * C + c + j * V)   \
                                          * FC_LOAD(SUF, w + (kh * KW + kw) * C + c + j * V); \
                        }                                                                   \
                    }                                                                       \
                    FC_DW_STORE(SUF, o + c, acc, FC_DW_VECS, relu, stream)                  \
                }                                                                           \
            }                                                                               \
            fc_dw_nhwc_tail_##SUF(x, w, bias, o, c, C, H, W, KH, KW, ih0, iw0, dh, dw,      \
                                  relu);                                                    \
        }                                                                                   \
    }                                                                                       \
    static void fc_dw_nhwc_row_##SUF(const T *x, const T *w, const T *bias, T *out,         \
                                     ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t KH,   \
                                     ptrdiff_t KW, ptrdiff_t OW, ptrdiff_t ih0,             \
                                     ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,              \
                                     ptrdiff_t pl, int relu, int stream) {                  \
        enum { V = FC_VBYTES / sizeof(T), RB = FC_DW_RUN_VECS * V };                        \
        ptrdiff_t xo[FC_DW_MAX_TAPS], wo[FC_DW_MAX_TAPS], lo, hi, c, run_end = 0, run_c = 0; \
        ptrdiff_t nt = fc_dw_nhwc_taps_##SUF(C, H, W, KH, KW, OW, ih0, sw, dh, dw, pl, xo,  \
                                             wo, &lo, &hi);                                 \
        if (KW == 3 && sw == 1 && dw == 1 && nt > 0) {                                      \
            for (run_end = lo; run_end + FC_DW_RUN <= hi; run_end += FC_DW_RUN)             \
                for (c = 0; c + RB <= C; c += RB)                                           \
                    fc_dw_nhwc_run_##SUF(x + (run_end - pl) * C + c, w + c,                 \
                                         bias ? bias + c : NULL, out + run_end * C + c, C,  \
                                         xo, wo, nt, relu, stream);                         \
            run_c = C - C % RB;                                                             \
        }                                                                                   \
        fc_dw_nhwc_cols_##SUF(x, w, bias, out, C, H, W, KH, KW, OW, ih0, sw, dh, dw, pl,    \
                              relu, stream, xo, wo, nt, lo, hi, run_end, run_c);            \
    }                                                                                       \
    /* Output rows oh and oh + 1 (out, out + OW * C); only where fc_dw_nhwc_pair_ok. */     \
    static void fc_dw_nhwc_pair_##SUF(const T *x, const T *w, const T *bias, T *out,        \
                                      ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OW,  \
                                      ptrdiff_t ih0, ptrdiff_t pl, int relu, int stream) {  \
        enum { V = FC_VBYTES / sizeof(T) };                                                 \
        ptrdiff_t xo[FC_DW_MAX_TAPS], wo[FC_DW_MAX_TAPS], lo, hi, c, t, run_end, run_c;     \
        ptrdiff_t nt = fc_dw_nhwc_taps_##SUF(C, H, W, 3, 3, OW, ih0, 1, 1, 1, pl, xo, wo,  \
                                             &lo, &hi);                                     \
        T *out1 = out + OW * C;                                                             \
        /* Rows ih0 + 4 and ih0 + 5, which the next pair loads first, are prefetched while \
         * this one runs, when the image has them and the data is larger than the caches   \
         * (the result is streamed): dw_3x3 batch 32 3.8-3.9 -> 3.05-3.30 ms. */            \
        const int ahead = stream && ih0 + 5 < H;                                            \
        for (run_end = lo; run_end + FC_DW_PAIR_RUN <= hi; run_end += FC_DW_PAIR_RUN)       \
            for (c = 0; c + V <= C; c += V) {                                               \
                const T *xp = x + (ih0 * W + run_end - pl) * C + c;                         \
                fc_dw_nhwc_pair_run_##SUF(xp, ahead ? xp + 4 * W * C : NULL, w + c,         \
                                          bias ? bias + c : NULL, out + run_end * C + c,    \
                                          out1 + run_end * C + c, C, W * C, relu, stream);  \
            }                                                                               \
        run_c = C - C % V;                                                                  \
        fc_dw_nhwc_cols_##SUF(x, w, bias, out, C, H, W, 3, 3, OW, ih0, 1, 1, 1, pl, relu,   \
                              stream, xo, wo, nt, lo, hi, run_end, run_c);                  \
        for (t = 0; t < nt; t++) xo[t] += W * C;   /* the next row's taps, all inside too */ \
        fc_dw_nhwc_cols_##SUF(x, w, bias, out1, C, H, W, 3, 3, OW, ih0 + 1, 1, 1, 1, pl,    \
                              relu, stream, xo, wo, nt, lo, hi, run_end, run_c);            \
    }
#else
#define FC_DEFINE_DW_NHWC(T, SUF)                                                           \
    static void fc_dw_nhwc_row_##SUF(const T *x, const T *w, const T *bias, T *out,         \
                                     ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t KH,   \
                                     ptrdiff_t KW, ptrdiff_t OW, ptrdiff_t ih0,             \
                                     ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,              \
                                     ptrdiff_t pl, int relu, int stream) {                  \
        ptrdiff_t ow;                                                                       \
        (void)stream;                                                                       \
        for (ow = 0; ow < OW; ow++)                                                         \
            fc_dw_nhwc_tail_##SUF(x, w, bias, out + ow * C, 0, C, H, W, KH, KW, ih0,        \
                                  ow * sw - pl, dh, dw, relu);                              \
    }                                                                                       \
    static void fc_dw_nhwc_pair_##SUF(const T *x, const T *w, const T *bias, T *out,        \
                                      ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OW,  \
                                      ptrdiff_t ih0, ptrdiff_t pl, int relu, int stream) {  \
        fc_dw_nhwc_row_##SUF(x, w, bias, out, C, H, W, 3, 3, OW, ih0, 1, 1, 1, pl, relu,    \
                             stream);                                                       \
        fc_dw_nhwc_row_##SUF(x, w, bias, out + OW * C, C, H, W, 3, 3, OW, ih0 + 1, 1, 1, 1, \
                             pl, relu, stream);                                             \
    }
#endif

/* Whether output rows with input rows from ih0 (and the next one) can go to fc_dw_nhwc_pair:
 * a 3x3 kernel, stride and dilation 1, all four input rows inside the image. */
static inline int fc_dw_nhwc_pair_ok(ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t sh, ptrdiff_t sw,
                                     ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t ih0, ptrdiff_t H) {
    return KH == 3 && KW == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 && ih0 >= 0
           && ih0 + 3 < H;
}

/* Channels [c0, C) of one NHWC depthwise output pixel, one at a time, in the same order. */
#define FC_DEFINE_DW_NHWC_TAIL(T, SUF)                                                      \
    static inline void fc_dw_nhwc_tail_##SUF(const T *x, const T *w, const T *bias, T *o,   \
                                             ptrdiff_t c0, ptrdiff_t C, ptrdiff_t H,        \
                                             ptrdiff_t W, ptrdiff_t KH, ptrdiff_t KW,       \
                                             ptrdiff_t ih0, ptrdiff_t iw0, ptrdiff_t dh,    \
                                             ptrdiff_t dw, int relu) {                      \
        ptrdiff_t c, kh, kw;                                                                \
        for (c = c0; c < C; c++) {                                                          \
            T v = bias ? bias[c] : (T)0;                                                    \
            for (kh = 0; kh < KH; kh++) {                                                   \
                ptrdiff_t ih = ih0 + kh * dh;                                               \
                if (ih < 0 || ih >= H) continue;                                            \
                for (kw = 0; kw < KW; kw++) {                                               \
                    ptrdiff_t iw = iw0 + kw * dw;                                           \
                    if (iw < 0 || iw >= W) continue;                                        \
                    v += x[(ih * W + iw) * C + c] * w[(kh * KW + kw) * C + c];              \
                }                                                                           \
            }                                                                               \
            o[c] = relu && v <= 0 ? (T)0 : v;                                               \
        }                                                                                   \
    }

FC_DEFINE_DW_NHWC_TAIL(float, f32)
FC_DEFINE_DW_NHWC_TAIL(double, f64)
#if FC_VECTOR_EXT
FC_DEFINE_DW_NHWC_RUN(float, f32)
FC_DEFINE_DW_NHWC_RUN(double, f64)
FC_DEFINE_DW_NHWC_PAIR_RUN(float, f32)
FC_DEFINE_DW_NHWC_PAIR_RUN(double, f64)
#endif
FC_DEFINE_DW_NHWC(float, f32)
FC_DEFINE_DW_NHWC(double, f64)

#endif
