/* Vectorised pooling for the value-only passes (no indices); see _pool.pyx, which keeps the
 * window geometry (clipping, ceil_mode, divisors) and calls these for the bulk of each row.
 *
 * Every output is computed exactly as the scalar search of _pool.pyx does it: max pooling
 * folds the window's cells in row-major order with "v > m || v != v" (greater wins, a NaN
 * always wins, so the window's last NaN is the result) starting from -inf; average pooling adds
 * the cells in row-major order starting from 0 and divides once. The vectors only run several
 * outputs (NCHW: consecutive output columns; NHWC: consecutive channels) side by side, so the
 * results are bit-identical to the scalar code's. NCHW max folds each window row first and then
 * the rows' maxima: the same bits, because that fold splits anywhere. The later part's result
 * wins only if it is NaN or greater, so the last NaN, else the first maximum (of equal values:
 * the first of -0.0 and +0.0) is kept either way.
 *
 * NCHW columns are vectorised for strides 1 and 2: a stride-2 tap is gathered from two loads
 * by one two-register shuffle. That needs GCC's __builtin_shuffle; with other compilers
 * (Clang included) fc_pool_vector() is 0 and the Cython loops do all the work, which the
 * tests check on Linux GCC builds.
 */
#ifndef FASTCONV_POOL_H
#define FASTCONV_POOL_H

#include <math.h>

#include "_simd.h"

#if FC_VECTOR_EXT && defined(__GNUC__) && !defined(__clang__)
#define FC_POOL_VECTOR 1
#else
#define FC_POOL_VECTOR 0
#endif

static inline int fc_pool_vector(void) { return FC_POOL_VECTOR; }

#define FC_MAX_STEP(m, v) (((v) > (m) || (v) != (v)) ? (v) : (m))

#if FC_POOL_VECTOR
/* A stride-2 tap p[0], p[2], ..., p[2 (V-1)] is gathered from a = p[0 .. V-1] and
 * b = p[V-1 .. 2V-2] (the second load starts one element early so that it ends at the last
 * element the tap uses) by a shuffle that stays inside each 128-bit lane: lane l of the result
 * is a[4l], a[4l+2], b[4l+1], b[4l+3] (float; double: a[2l], b[2l+1]), one vshufps/vshufpd,
 * where a shuffle into order would cross lanes (two vpermd and a blend on AVX2). The outputs
 * then sit in a fixed permuted order in every tap alike, so the element-wise max or sum is
 * unchanged, and FC_UNLANE puts them back in order once per stored vector. */
#if FC_VBYTES == 64
#define FC_LANE_f32 {0, 2, 17, 19, 4, 6, 21, 23, 8, 10, 25, 27, 12, 14, 29, 31}
#define FC_UNLANE_f32 {0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15}
#define FC_LANE_f64 {0, 9, 2, 11, 4, 13, 6, 15}
#define FC_UNLANE_f64 {0, 2, 4, 6, 1, 3, 5, 7}
#elif FC_VBYTES == 32
#define FC_LANE_f32 {0, 2, 9, 11, 4, 6, 13, 15}
#define FC_UNLANE_f32 {0, 1, 4, 5, 2, 3, 6, 7}
#define FC_LANE_f64 {0, 5, 2, 7}
#define FC_UNLANE_f64 {0, 2, 1, 3}
#else   /* one lane: the shuffle already gives the outputs in order */
#define FC_LANE_f32 {0, 2, 5, 7}
#define FC_LANE_f64 {0, 3}
#endif
#if FC_VBYTES > 16
#define FC_UNLANE(SUF, v) __builtin_shuffle((v), (fc_ivec_##SUF)FC_UNLANE_##SUF)
#else
#define FC_UNLANE(SUF, v) (v)
#endif

#define FC_VMAX_STEP(SUF, m, v) FC_SELECT(SUF, ((v) > (m)) | ((v) != (v)), v, m)

#define FC_DEFINE_POOL(T, SUF)                                                                 \
    /* p[0], p[s], ..., p[(V-1) s] for s in {1, 2}, reading nothing past p[(V-1) s]. */        \
    static inline __attribute__((always_inline)) fc_vec_##SUF fc_pool_tap_##SUF(             \
            const T *p, ptrdiff_t s) {                                                         \
        if (s == 1) return FC_LOAD(SUF, p);                                                    \
        return __builtin_shuffle((fc_vec_##SUF)FC_LOAD(SUF, p),                                \
                                 (fc_vec_##SUF)FC_LOAD(SUF, p + FC_VLEN(T) - 1),               \
                                 (fc_ivec_##SUF)FC_LANE_##SUF);                                \
    }                                                                                          \
                                                                                               \
    /* The outputs of stride-s taps in order (see FC_LANE). */                                 \
    static inline __attribute__((always_inline)) fc_vec_##SUF fc_pool_unlane_##SUF(           \
            fc_vec_##SUF v, ptrdiff_t s) {                                                     \
        return s == 1 ? v : FC_UNLANE(SUF, v);                                                 \
    }                                                                                          \
                                                                                               \
    /* One NCHW output row, columns [j0, j1): column j's window is rows [h0, h1) x columns     \
     * j*s - pl .. j*s - pl + KW - 1 of the plane (W wide), all inside the plane. avg: divide   \
     * by div, else max. A last short block is recomputed overlapping the previous one (the     \
     * same values); rows narrower than a vector run one column at a time. */                  \
    static inline __attribute__((always_inline)) void fc_pool_cols_body_##SUF(                 \
            const T *plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t KW,             \
            ptrdiff_t s, ptrdiff_t pl, ptrdiff_t j0, ptrdiff_t j1, int avg, T div, T *out) {   \
        const ptrdiff_t V = FC_VLEN(T);                                                        \
        ptrdiff_t j, h, kw;                                                                    \
        if (j1 - j0 < V) {                                                                     \
            for (j = j0; j < j1; j++) {                                                        \
                T m = avg ? (T)0 : (T)-INFINITY;                                               \
                for (h = h0; h < h1; h++)                                                      \
                    for (kw = 0; kw < KW; kw++) {                                              \
                        T v = plane[h * W + j * s - pl + kw];                                  \
                        m = avg ? m + v : FC_MAX_STEP(m, v);                                   \
                    }                                                                          \
                out[j] = avg ? m / div : m;                                                    \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        for (j = j0; j < j1; j += V) {                                                         \
            if (j > j1 - V) j = j1 - V;                                                        \
            fc_vec_##SUF m = avg ? FC_ZERO(SUF) : FC_SPLAT(SUF, (T)-INFINITY);                 \
            for (h = h0; h < h1; h++) {                                                        \
                const T *p = plane + h * W + j * s - pl;                                       \
                if (avg) {                                                                     \
                    for (kw = 0; kw < KW; kw++) m = m + fc_pool_tap_##SUF(p + kw, s);          \
                } else {                                                                       \
                    /* The row's maximum first, then folded into the window's: the same     \
                     * result as one row-major fold (see the top of this file), with a       \
                     * dependency chain of KH + KW steps instead of KH * KW. */              \
                    fc_vec_##SUF r = fc_pool_tap_##SUF(p, s);                                  \
                    for (kw = 1; kw < KW; kw++)                                                \
                        r = FC_VMAX_STEP(SUF, r, fc_pool_tap_##SUF(p + kw, s));               \
                    m = FC_VMAX_STEP(SUF, m, r);                                               \
                }                                                                              \
            }                                                                                  \
            m = fc_pool_unlane_##SUF(m, s);                                                    \
            FC_STORE(SUF, out + j, avg ? m / FC_SPLAT(SUF, div) : m);                          \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* The stride, the operation and the common window widths 2 and 3 become constants in   \
     * each copy of the body, so the taps of a row unroll. s must be 1 or 2 (any other value  \
     * is taken as 2): the Cython caller only passes those. */                                \
    static inline __attribute__((always_inline)) void fc_pool_cols_kw_##SUF(                   \
            const T *plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t KW,             \
            ptrdiff_t s, ptrdiff_t pl, ptrdiff_t j0, ptrdiff_t j1, int avg, T div, T *out) {   \
        if (KW == 2)                                                                           \
            fc_pool_cols_body_##SUF(plane, W, h0, h1, 2, s, pl, j0, j1, avg, div, out);        \
        else if (KW == 3)                                                                      \
            fc_pool_cols_body_##SUF(plane, W, h0, h1, 3, s, pl, j0, j1, avg, div, out);        \
        else                                                                                   \
            fc_pool_cols_body_##SUF(plane, W, h0, h1, KW, s, pl, j0, j1, avg, div, out);       \
    }                                                                                          \
                                                                                               \
    static void fc_pool_cols_##SUF(const T *plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,    \
                                   ptrdiff_t KW, ptrdiff_t s, ptrdiff_t pl, ptrdiff_t j0,      \
                                   ptrdiff_t j1, int avg, T div, T *out) {                     \
        if (avg) {                                                                             \
            if (s == 1)                                                                        \
                fc_pool_cols_kw_##SUF(plane, W, h0, h1, KW, 1, pl, j0, j1, 1, div, out);       \
            else                                                                               \
                fc_pool_cols_kw_##SUF(plane, W, h0, h1, KW, 2, pl, j0, j1, 1, div, out);       \
        } else {                                                                               \
            if (s == 1)                                                                        \
                fc_pool_cols_kw_##SUF(plane, W, h0, h1, KW, 1, pl, j0, j1, 0, div, out);       \
            else                                                                               \
                fc_pool_cols_kw_##SUF(plane, W, h0, h1, KW, 2, pl, j0, j1, 0, div, out);       \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* One NHWC output pixel: out[c] over the cells [h0, h1) x [w0, w1) of an image (W wide, C \
     * channels), channels in blocks of 4 vectors held in registers, then single vectors, then \
     * one at a time. avg: divide by div, else max. */                                         \
    static inline void fc_pool_pixel_nhwc_##SUF(const T *image, ptrdiff_t W, ptrdiff_t C,      \
                                                ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t w0,      \
                                                ptrdiff_t w1, int avg, T div, T *out) {        \
        const ptrdiff_t V = FC_VLEN(T);                                                        \
        const fc_vec_##SUF init = avg ? FC_ZERO(SUF) : FC_SPLAT(SUF, (T)-INFINITY);            \
        ptrdiff_t c = 0, h, w;                                                                 \
        int j;                                                                                 \
        for (; c + 4 * V <= C; c += 4 * V) {                                                   \
            fc_vec_##SUF m[4] = {init, init, init, init};                                      \
            for (h = h0; h < h1; h++)                                                          \
                for (w = w0; w < w1; w++) {                                                    \
                    const T *p = image + (h * W + w) * C + c;                                  \
                    FC_UNROLL for (j = 0; j < 4; j++) {                                        \
                        fc_vec_##SUF v = FC_LOAD(SUF, p + j * V);                              \
                        m[j] = avg ? m[j] + v : FC_VMAX_STEP(SUF, m[j], v);                    \
                    }                                                                          \
                }                                                                              \
            FC_UNROLL for (j = 0; j < 4; j++)                                                  \
                FC_STORE(SUF, out + c + j * V, avg ? m[j] / FC_SPLAT(SUF, div) : m[j]);        \
        }                                                                                      \
        for (; c + V <= C; c += V) {                                                           \
            fc_vec_##SUF m = init;                                                             \
            for (h = h0; h < h1; h++)                                                          \
                for (w = w0; w < w1; w++) {                                                    \
                    fc_vec_##SUF v = FC_LOAD(SUF, image + (h * W + w) * C + c);                \
                    m = avg ? m + v : FC_VMAX_STEP(SUF, m, v);                                 \
                }                                                                              \
            FC_STORE(SUF, out + c, avg ? m / FC_SPLAT(SUF, div) : m);                          \
        }                                                                                      \
        for (; c < C; c++) {                                                                   \
            T m = avg ? (T)0 : (T)-INFINITY;                                                   \
            for (h = h0; h < h1; h++)                                                          \
                for (w = w0; w < w1; w++) {                                                    \
                    T v = image[(h * W + w) * C + c];                                          \
                    m = avg ? m + v : FC_MAX_STEP(m, v);                                       \
                }                                                                              \
            out[c] = avg ? m / div : m;                                                        \
        }                                                                                      \
    }
#else
/* Never called (the Cython side checks fc_pool_vector()); defined so the module links. */
#define FC_DEFINE_POOL(T, SUF)                                                                 \
    static void fc_pool_cols_##SUF(const T *plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,    \
                                   ptrdiff_t KW, ptrdiff_t s, ptrdiff_t pl, ptrdiff_t j0,      \
                                   ptrdiff_t j1, int avg, T div, T *out) {                     \
        (void)plane; (void)W; (void)h0; (void)h1; (void)KW; (void)s; (void)pl; (void)j0;       \
        (void)j1; (void)avg; (void)div; (void)out;                                             \
    }                                                                                          \
    static inline void fc_pool_pixel_nhwc_##SUF(const T *image, ptrdiff_t W, ptrdiff_t C,      \
                                                ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t w0,      \
                                                ptrdiff_t w1, int avg, T div, T *out) {        \
        (void)image; (void)W; (void)C; (void)h0; (void)h1; (void)w0; (void)w1; (void)avg;      \
        (void)div; (void)out;                                                                  \
    }
#endif

FC_DEFINE_POOL(float, f32)
FC_DEFINE_POOL(double, f64)

#endif
