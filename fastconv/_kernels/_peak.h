/* A multiply-add loop at the vector width of the level being compiled (see _simd.h): the
 * "FMA peak" ceiling of `python -m fastconv bench`, measured by each dispatched build with its
 * own instructions, so that a kernel's GFLOP/s can be put against what its level can do.
 *
 * FC_PEAK_ACCS independent accumulators cover the multiply-add latency (4 cycles on two
 * pipes needs 8 in flight on Zen 3 and Skylake-X) and with the two constants fit in the 16
 * registers of AVX2 and SSE2. acc * m + c contracts to one FMA where the level has it (GCC
 * and Clang contract by default, as the micro-kernels rely on too); SSE2 has none and runs a
 * multiply and an add, still counted as two operations per lane. */
#ifndef FASTCONV_PEAK_H
#define FASTCONV_PEAK_H

#include "_simd.h"

#define FC_PEAK_ACCS 12

/* Multiply-adds done by one call: lanes x accumulators x iters. */
static inline double fc_peak_madds_f32(long iters) {
    return (double)FC_VLEN(float) * FC_PEAK_ACCS * (double)iters;
}
static inline double fc_peak_madds_f64(long iters) {
    return (double)FC_VLEN(double) * FC_PEAK_ACCS * (double)iters;
}

/* iters rounds of FC_PEAK_ACCS independent multiply-adds; returns the sum of the results so
 * that the compiler must compute them (m just below 1 keeps the values finite). */
#if FC_VECTOR_EXT
#define FC_DEFINE_PEAK_LOOP(T, SUF)                                                            \
    static double fc_peak_loop_##SUF(long iters, T m) {                                        \
        fc_vec_##SUF acc[FC_PEAK_ACCS];                                                        \
        const fc_vec_##SUF mv = FC_SPLAT(SUF, m), cv = FC_SPLAT(SUF, (T)1e-7);                 \
        double sum = 0;                                                                        \
        long it;                                                                               \
        int i, j;                                                                              \
        FC_UNROLL for (i = 0; i < FC_PEAK_ACCS; i++) acc[i] = FC_SPLAT(SUF, (T)i);             \
        for (it = 0; it < iters; it++) {                                                       \
            FC_UNROLL for (i = 0; i < FC_PEAK_ACCS; i++) acc[i] = acc[i] * mv + cv;            \
        }                                                                                      \
        for (i = 0; i < FC_PEAK_ACCS; i++)                                                     \
            for (j = 0; j < FC_VLEN(T); j++) sum += acc[i][j];                                 \
        return sum;                                                                            \
    }
#else
#define FC_DEFINE_PEAK_LOOP(T, SUF)                                                            \
    static double fc_peak_loop_##SUF(long iters, T m) {                                        \
        enum { N = FC_PEAK_ACCS * (FC_VBYTES / sizeof(T)) };                                   \
        T acc[N];                                                                              \
        double sum = 0;                                                                        \
        long it;                                                                               \
        int i;                                                                                 \
        for (i = 0; i < N; i++) acc[i] = (T)i;                                                 \
        for (it = 0; it < iters; it++)                                                         \
            for (i = 0; i < N; i++) acc[i] = acc[i] * m + (T)1e-7;                             \
        for (i = 0; i < N; i++) sum += acc[i];                                                 \
        return sum;                                                                            \
    }
#endif

FC_DEFINE_PEAK_LOOP(float, f32)
FC_DEFINE_PEAK_LOOP(double, f64)

#endif
