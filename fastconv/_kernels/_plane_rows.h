/* One output channel per group at stride 1, straight from the input plane (see
 * conv2d_plane_rows in _blocked.pyx): depthwise layers and single-channel filters.
 *
 * The general one-channel kernel (fc_plane_blocks in _blocked.h) first copies each plane,
 * zero-padded, into a scratch grid and then stores its tiles through a buffer; on a 3x3
 * depthwise plane those two copies took about 40% of its time (perf, AVX-512). At stride 1
 * neither is needed: each output row reads KH input rows in place, a block of vectors of
 * pixels at a time, and the vectors that reach into the padding load only their lanes inside
 * the row (masked loads, zero elsewhere), so the padding is never materialised. Results go
 * straight into the output row, the last vector of a row through a masked store.
 *
 * A block is FC_ROWS_R output rows x FC_ROWS_NV vectors (8 accumulators, which cover the FMA
 * latency); at dilation 1 the output rows share their input rows, so each input vector is
 * loaded once for all the rows it feeds. Each output sums its taps in (kh, kw) order, as the
 * general kernel does; taps on rows outside the image are skipped and lanes outside a row
 * load zeros. The caller keeps this kernel away from non-finite weights when there is row
 * padding (a skipped row would not turn an inf weight into NaN as a real zero does; a
 * masked lane, a real zero, does).
 *
 * Masked loads and stores exist with AVX2 and AVX-512 (FC_ROWS_NATIVE 1); the baseline
 * build has a lane-by-lane version of them so that the kernel still compiles and works
 * there, but Python runs the general kernel at that level.
 */
#ifndef FASTCONV_PLANE_ROWS_H
#define FASTCONV_PLANE_ROWS_H

#include "_simd.h"

/* 8 accumulators; 4 rows on AVX-512 were no faster (56x56 planes 0.144 against 0.138 ms,
 * 512x512 equal; 3x3 with every loop unrolled was slower, 0.078 against 0.062 ms, from
 * spills). */
#define FC_ROWS_R 2
#define FC_ROWS_NV 4

#if FC_VECTOR_EXT && defined(__AVX512F__)
#define FC_ROWS_NATIVE 1
/* Lanes [lo, hi) of p, zero elsewhere; lanes outside are never read. 0 <= lo < hi <= VLEN. */
static inline fc_vec_f32 fc_mload_f32(const float *p, ptrdiff_t lo, ptrdiff_t hi) {
    return (fc_vec_f32)_mm512_maskz_loadu_ps(
        (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1)), p);
}
static inline fc_vec_f64 fc_mload_f64(const double *p, ptrdiff_t lo, ptrdiff_t hi) {
    return (fc_vec_f64)_mm512_maskz_loadu_pd(
        (__mmask8)(((1u << hi) - 1) & ~((1u << lo) - 1)), p);
}
/* The first n lanes of v to p, 0 < n <= VLEN. */
static inline void fc_mstore_f32(float *p, fc_vec_f32 v, ptrdiff_t n) {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
}
static inline void fc_mstore_f64(double *p, fc_vec_f64 v, ptrdiff_t n) {
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
}
#elif FC_VECTOR_EXT && defined(__AVX2__)
#define FC_ROWS_NATIVE 1
static inline __m256i fc_lanes_f32(ptrdiff_t lo, ptrdiff_t hi) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)lo), iota),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), iota));
}
static inline __m256i fc_lanes_f64(ptrdiff_t lo, ptrdiff_t hi) {
    const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_andnot_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(lo), iota),
                               _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), iota));
}
static inline fc_vec_f32 fc_mload_f32(const float *p, ptrdiff_t lo, ptrdiff_t hi) {
    return (fc_vec_f32)_mm256_maskload_ps(p, fc_lanes_f32(lo, hi));
}
static inline fc_vec_f64 fc_mload_f64(const double *p, ptrdiff_t lo, ptrdiff_t hi) {
    return (fc_vec_f64)_mm256_maskload_pd(p, fc_lanes_f64(lo, hi));
}
static inline void fc_mstore_f32(float *p, fc_vec_f32 v, ptrdiff_t n) {
    _mm256_maskstore_ps(p, fc_lanes_f32(0, n), (__m256)v);
}
static inline void fc_mstore_f64(double *p, fc_vec_f64 v, ptrdiff_t n) {
    _mm256_maskstore_pd(p, fc_lanes_f64(0, n), (__m256d)v);
}
#else
#define FC_ROWS_NATIVE 0
#define FC_DEFINE_LANEWISE(T, SUF)                                                             \
    static inline fc_vec_##SUF fc_mload_##SUF(const T *p, ptrdiff_t lo, ptrdiff_t hi) {       \
        T lanes[FC_VBYTES / sizeof(T)] FC_ALIGNED;                                             \
        ptrdiff_t l;                                                                           \
        for (l = 0; l < FC_VLEN(T); l++) lanes[l] = l >= lo && l < hi ? p[l] : (T)0;           \
        return *(const fc_vec_##SUF *)lanes;                                                   \
    }                                                                                          \
    static inline void fc_mstore_##SUF(T *p, fc_vec_##SUF v, ptrdiff_t n) {                   \
        T lanes[FC_VBYTES / sizeof(T)] FC_ALIGNED;                                             \
        ptrdiff_t l;                                                                           \
        *(fc_vec_##SUF *)lanes = v;                                                            \
        for (l = 0; l < n; l++) p[l] = lanes[l];                                               \
    }
#if FC_VECTOR_EXT
FC_DEFINE_LANEWISE(float, f32)
FC_DEFINE_LANEWISE(double, f64)
#endif
#endif

static inline int fc_plane_rows_native(void) { return FC_ROWS_NATIVE; }

#if FC_VECTOR_EXT
/* Tap (t, kw) of a block: the input vectors xv times each fed row's weight. */
#define FC_ROWS_TAP(SUF)                                                                       \
    FC_UNROLL for (r = 0; r < FC_ROWS_R; r++) {                                                \
        if (feeds[r]) {                                                                        \
            fc_vec_##SUF wv = FC_SPLAT(SUF, wr[r][kw]);                                        \
            FC_UNROLL for (j = 0; j < FC_ROWS_NV; j++) acc[r][j] += wv * xv[j];                \
        }                                                                                      \
    }

/* Output rows [oh0, oh1) of one plane. x: the input plane (H x W); w: KH x KW taps; out: the
 * output plane (OW wide). Input row oh - pt + t feeds output row oh + r through tap row
 * kh = (t - r) / dh when that divides evenly and 0 <= kh < KH.
 *
 * The body is inlined into fc_plane_rows once per common geometry (3x3 with padding 1 or 0,
 * 5x5 with 2, 7x7 with 3, any 3x3; dilation 1) with the sizes as constants, so that the
 * compiler unrolls the tap loops and works out which input rows feed which output row and
 * which lanes each load keeps at compile time. With everything known only at run time, a 3x3
 * depthwise plane set (128 x 56x56, one thread, standalone C loop) took 0.203 ms, with the
 * kernel size constant 0.173, with the padding constant too 0.143-0.159; one 512x512 image
 * 0.087, 0.065, 0.061 ms. Same code, so the same bits. */
#define FC_DEFINE_PLANE_ROWS(T, SUF)                                                           \
    static inline __attribute__((always_inline)) void fc_plane_rows_body_##SUF(               \
        const T *x, ptrdiff_t H, ptrdiff_t W, const T *w, ptrdiff_t KH, ptrdiff_t KW,          \
        ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl, T *out, ptrdiff_t OW,          \
        ptrdiff_t oh0, ptrdiff_t oh1, T bias, int relu) {                                      \
        const ptrdiff_t V = FC_VLEN(T), span = FC_ROWS_R + (KH - 1) * dh;                      \
        const fc_vec_##SUF zero = FC_ZERO(SUF), bv = FC_SPLAT(SUF, bias);                      \
        ptrdiff_t oh, ow0, t, kw, r, j;                                                        \
        for (oh = oh0; oh < oh1; oh += FC_ROWS_R) {                                            \
            ptrdiff_t nr = oh1 - oh < FC_ROWS_R ? oh1 - oh : FC_ROWS_R;                        \
            for (ow0 = 0; ow0 < OW; ow0 += FC_ROWS_NV * V) {                                   \
                fc_vec_##SUF acc[FC_ROWS_R][FC_ROWS_NV];                                       \
                /* Whether every vector of the block reads inside the row at every kw. */     \
                int inside = ow0 - pl >= 0 && ow0 - pl + (KW - 1) * dw + FC_ROWS_NV * V <= W;  \
                FC_UNROLL for (r = 0; r < FC_ROWS_R; r++)                                      \
                    FC_UNROLL for (j = 0; j < FC_ROWS_NV; j++) acc[r][j] = zero;               \
                for (t = 0; t < span; t++) {                                                   \
                    ptrdiff_t ih = oh - pt + t;                                                \
                    const T *xr, *wr[FC_ROWS_R];                                               \
                    int feeds[FC_ROWS_R], any = 0;                                             \
                    if (ih < 0 || ih >= H) continue;                                           \
                    xr = x + ih * W;                                                           \
                    /* The tap row (if any) through which this input row feeds row r. */      \
                    FC_UNROLL for (r = 0; r < FC_ROWS_R; r++) {                                \
                        ptrdiff_t kh = t >= r ? (t - r) / dh : 0;                              \
                        feeds[r] = r < nr && t >= r && kh * dh == t - r && kh < KH;            \
                        wr[r] = w + kh * KW;                                                   \
                        any |= feeds[r];                                                       \
                    }                                                                          \
                    if (!any) continue;   /* between tap rows (dilation > 2) */               \
                    if (inside) {   /* plain loads, no lane bounds to work out */             \
                        const T *xc = xr + ow0 - pl;                                           \
                        for (kw = 0; kw < KW; kw++, xc += dw) {                                \
                            fc_vec_##SUF xv[FC_ROWS_NV];                                       \
                            FC_UNROLL for (j = 0; j < FC_ROWS_NV; j++)                         \
                                xv[j] = FC_LOAD(SUF, xc + j * V);                              \
                            FC_ROWS_TAP(SUF)                                                   \
                        }                                                                      \
                        continue;                                                              \
                    }                                                                          \
                    for (kw = 0; kw < KW; kw++) {                                              \
                        ptrdiff_t c0 = ow0 + kw * dw - pl;                                     \
                        fc_vec_##SUF xv[FC_ROWS_NV];                                           \
                        FC_UNROLL for (j = 0; j < FC_ROWS_NV; j++) {                           \
                            ptrdiff_t c = c0 + j * V;                                          \
                            ptrdiff_t lo = c < 0 ? -c : 0, hi = W - c < V ? W - c : V;         \
                            if (lo == 0 && hi == V) xv[j] = FC_LOAD(SUF, xr + c);              \
                            else if (lo >= hi) xv[j] = zero;                                   \
                            else xv[j] = fc_mload_##SUF(xr + c, lo, hi);                       \
                        }                                                                      \
                        FC_ROWS_TAP(SUF)                                                       \
                    }                                                                          \
                }                                                                              \
                /* Constant bounds, so that acc stays in registers. */                        \
                FC_UNROLL for (r = 0; r < FC_ROWS_R; r++) {                                    \
                    T *o;                                                                      \
                    if (r >= nr) break;                                                        \
                    o = out + (oh + r) * OW + ow0;                                             \
                    FC_UNROLL for (j = 0; j < FC_ROWS_NV; j++) {                               \
                        fc_vec_##SUF v = acc[r][j] + bv;                                       \
                        ptrdiff_t n = OW - ow0 - j * V;                                        \
                        if (n <= 0) break;                                                     \
                        if (relu) v = FC_SELECT(SUF, v <= zero, zero, v);                      \
                        if (n >= V) FC_STORE(SUF, o + j * V, v);                               \
                        else fc_mstore_##SUF(o + j * V, v, n);                                 \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    static void fc_plane_rows_##SUF(const T *x, ptrdiff_t H, ptrdiff_t W, const T *w,         \
                                    ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t dh, ptrdiff_t dw,    \
                                    ptrdiff_t pt, ptrdiff_t pl, T *out, ptrdiff_t OW,          \
                                    ptrdiff_t oh0, ptrdiff_t oh1, T bias, int relu) {          \
        if (dh == 1 && dw == 1 && KH == KW) {                                                  \
            FC_ROWS_CASE(SUF, 3, 1)   /* 'same' */                                            \
            FC_ROWS_CASE(SUF, 3, 0)   /* 'valid' */                                           \
            FC_ROWS_CASE(SUF, 5, 2)                                                            \
            FC_ROWS_CASE(SUF, 7, 3)                                                            \
            if (KH == 3) {                                                                     \
                fc_plane_rows_body_##SUF(x, H, W, w, 3, 3, 1, 1, pt, pl, out, OW, oh0, oh1,    \
                                         bias, relu);                                          \
                return;                                                                        \
            }                                                                                  \
        }                                                                                      \
        fc_plane_rows_body_##SUF(x, H, W, w, KH, KW, dh, dw, pt, pl, out, OW, oh0, oh1, bias,  \
                                 relu);                                                        \
    }
/* The body for a K x K kernel with padding P at the top and left, as constants. */
#define FC_ROWS_CASE(SUF, K, P)                                                                \
    if (KH == (K) && pt == (P) && pl == (P)) {                                                 \
        fc_plane_rows_body_##SUF(x, H, W, w, K, K, 1, 1, P, P, out, OW, oh0, oh1, bias, relu); \
        return;                                                                                \
    }
FC_DEFINE_PLANE_ROWS(float, f32)
FC_DEFINE_PLANE_ROWS(double, f64)
#else
/* No vector extensions (not GCC or Clang): one output at a time, same order. */
#define FC_DEFINE_PLANE_ROWS(T, SUF)                                                           \
    static void fc_plane_rows_##SUF(const T *x, ptrdiff_t H, ptrdiff_t W, const T *w,         \
                                    ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t dh, ptrdiff_t dw,    \
                                    ptrdiff_t pt, ptrdiff_t pl, T *out, ptrdiff_t OW,          \
                                    ptrdiff_t oh0, ptrdiff_t oh1, T bias, int relu) {          \
        ptrdiff_t oh, ow, kh, kw;                                                              \
        for (oh = oh0; oh < oh1; oh++)                                                         \
            for (ow = 0; ow < OW; ow++) {                                                      \
                T s = 0, v;                                                                    \
                for (kh = 0; kh < KH; kh++) {                                                  \
                    ptrdiff_t ih = oh - pt + kh * dh;                                          \
                    if (ih < 0 || ih >= H) continue;                                           \
                    for (kw = 0; kw < KW; kw++) {                                              \
                        ptrdiff_t iw = ow - pl + kw * dw;                                      \
                        s += w[kh * KW + kw] * (iw >= 0 && iw < W ? x[ih * W + iw] : (T)0);    \
                    }                                                                          \
                }                                                                              \
                v = s + bias;                                                                  \
                out[oh * OW + ow] = relu && v <= 0 ? (T)0 : v;                                 \
            }                                                                                  \
    }
FC_DEFINE_PLANE_ROWS(float, f32)
FC_DEFINE_PLANE_ROWS(double, f64)
#endif

#endif
