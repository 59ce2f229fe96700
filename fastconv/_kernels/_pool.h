/* Vectorised pooling for the value-only passes (no indices); see _pool.pyx, which keeps the
 * window geometry (clipping, ceil_mode, divisors) and calls these for the bulk of each row.
 *
 * Every output is computed exactly as the scalar search of _pool.pyx does it: max pooling
 * folds the window's cells in row-major order with "v > m || v != v" (greater wins, a NaN
 * always wins, so the window's last NaN is the result) starting from -inf; average pooling adds
 * the cells in row-major order starting from 0 and divides once. The vectors only run several
 * outputs (NCHW: consecutive output columns; NHWC: consecutive channels) side by side, so the
 * results are bit-identical to the scalar code's.
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
/* Lane i of the shuffle of (a, b) is p[2 i] when a = p[0 .. V-1] and b = p[V-1 .. 2V-2]: the
 * second load starts one element early so that it ends at the last element a tap uses. */
#if FC_VBYTES == 64
#define FC_EVEN_f32 {0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31}
#define FC_EVEN_f64 {0, 2, 4, 6, 9, 11, 13, 15}
#elif FC_VBYTES == 32
#define FC_EVEN_f32 {0, 2, 4, 6, 9, 11, 13, 15}
#define FC_EVEN_f64 {0, 2, 5, 7}
#else
#define FC_EVEN_f32 {0, 2, 5, 7}
#define FC_EVEN_f64 {0, 3}
#endif

#define FC_VMAX_STEP(SUF, m, v) FC_SELECT(SUF, ((v) > (m)) | ((v) != (v)), v, m)

#define FC_DEFINE_POOL(T, SUF)                                                                 \
    /* p[0], p[s], ..., p[(V-1) s] for s in {1, 2}, reading nothing past p[(V-1) s]. */        \
    static inline __attribute__((always_inline)) fc_vec_##SUF fc_pool_tap_##SUF(             \
            const T *p, ptrdiff_t s) {                                                         \
        if (s == 1) return FC_LOAD(SUF, p);                                                    \
        return __builtin_shuffle((fc_vec_##SUF)FC_LOAD(SUF, p),                                \
                                 (fc_vec_##SUF)FC_LOAD(SUF, p + FC_VLEN(T) - 1),               \
                                 (fc_ivec_##SUF)FC_EVEN_##SUF);                                \
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
                for (kw = 0; kw < KW; kw++) {                                                  \
                    fc_vec_##SUF v = fc_pool_tap_##SUF(p + kw, s);                             \
                    m = avg ? m + v : FC_VMAX_STEP(SUF, m, v);                                 \
                }                                                                              \
            }                                                                                  \
            FC_STORE(SUF, out + j, avg ? m / FC_SPLAT(SUF, div) : m);                          \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* The stride and the operation become constants in each copy of the body. s must be 1  \
     * or 2 (any other value is taken as 2): the Cython caller only passes those. */           \
    static void fc_pool_cols_##SUF(const T *plane, ptrdiff_t W, ptrdiff_t h0, ptrdiff_t h1,    \
                                   ptrdiff_t KW, ptrdiff_t s, ptrdiff_t pl, ptrdiff_t j0,      \
                                   ptrdiff_t j1, int avg, T div, T *out) {                     \
        if (avg) {                                                                             \
            if (s == 1)                                                                        \
                fc_pool_cols_body_##SUF(plane, W, h0, h1, KW, 1, pl, j0, j1, 1, div, out);     \
            else                                                                               \
                fc_pool_cols_body_##SUF(plane, W, h0, h1, KW, 2, pl, j0, j1, 1, div, out);     \
        } else {                                                                               \
            if (s == 1)                                                                        \
                fc_pool_cols_body_##SUF(plane, W, h0, h1, KW, 1, pl, j0, j1, 0, div, out);     \
            else                                                                               \
                fc_pool_cols_body_##SUF(plane, W, h0, h1, KW, 2, pl, j0, j1, 0, div, out);     \
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
