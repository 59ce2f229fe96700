/* Non-temporal ("streaming") stores for results too large for the caches.
 *
 * An ordinary store to a line that is not cached first reads the line from memory (write
 * allocate), so a kernel that writes a large result moves three bytes per byte written: the
 * input read, the line read, the write-back. A streaming store writes whole lines straight to
 * memory: two bytes. Measured on the 2-core AVX2 machine of the README's table, an add of
 * 256 MiB ran at 20 GB/s with ordinary stores and 32 GB/s with streaming ones (2 threads).
 * They pay only when the result will not be read from cache soon after, which is why the
 * Python side asks for them only above fastconv._buffers.STREAM_MIN_BYTES. Used by ReLU and
 * by the NHWC depthwise kernel (FC_DW_STORE in _blocked.h: its result vectors go straight
 * out; dw_3x3 batch 32 into a new array 4.9 against 5.7 ms). The NCHW one-channel kernel,
 * staging each 12 KB plane and streaming it out, was slower (10.0 against 11.6 ms), so it
 * keeps ordinary stores.
 *
 * Every function writes the same values as the ordinary loop would: a scalar head up to the
 * first vector-aligned element of dst, aligned streaming vectors, a scalar tail. Streaming
 * stores are weakly ordered, so each thread calls fc_stream_fence() once after its last one,
 * before the OpenMP barrier that publishes the result to the other threads and to Python.
 * Once per thread, not per call: an sfence waits until the stores reach memory.
 *
 *   fc_stream_ok()                     1 when streaming stores were compiled in (x86 SSE2+)
 *   fc_stream_fence()                  orders this thread's streaming stores (sfence)
 *   fc_relu_stream_SUF(dst, src, n)    dst[i] = src[i] <= 0 ? 0 : src[i] (NaN passes)
 */
#ifndef FASTCONV_STREAM_H
#define FASTCONV_STREAM_H

#include <stdint.h>

#include "_simd.h"

#if FC_VECTOR_EXT && defined(__SSE2__)
#define FC_STREAM 1
#if FC_VBYTES == 64
#define FC_STREAM_f32(p, v) _mm512_stream_ps((p), (__m512)(v))
#define FC_STREAM_f64(p, v) _mm512_stream_pd((p), (__m512d)(v))
#elif FC_VBYTES == 32
#define FC_STREAM_f32(p, v) _mm256_stream_ps((p), (__m256)(v))
#define FC_STREAM_f64(p, v) _mm256_stream_pd((p), (__m256d)(v))
#else
#define FC_STREAM_f32(p, v) _mm_stream_ps((p), (__m128)(v))
#define FC_STREAM_f64(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif
#else
#define FC_STREAM 0
#endif

static inline int fc_stream_ok(void) { return FC_STREAM; }

#if FC_STREAM
static inline void fc_stream_fence(void) { _mm_sfence(); }
#else
static inline void fc_stream_fence(void) {}
#endif

/* ReLU as the scalar loop computes it: the head and tail of the streaming loop. */
#define FC_RELU_SCALAR(T, v) ((v) <= 0 ? (T)0 : (v))

#if FC_STREAM
/* "v <= 0" is false for NaN, so NaN lanes keep v, as in the scalar form; -0.0 becomes +0.0. */
#define FC_DEFINE_RELU_STREAM(T, SUF)                                                          \
    static inline void fc_relu_stream_##SUF(T *dst, const T *src, ptrdiff_t n) {               \
        const ptrdiff_t V = FC_VLEN(T);                                                        \
        ptrdiff_t i = 0;                                                                       \
        /* Elements up to the first vector-aligned one (dst is element-aligned). */            \
        ptrdiff_t head = (ptrdiff_t)(((FC_VBYTES - ((uintptr_t)dst % FC_VBYTES)) % FC_VBYTES)  \
                                     / sizeof(T));                                             \
        if (head > n) head = n;                                                                \
        for (; i < head; i++) dst[i] = FC_RELU_SCALAR(T, src[i]);                              \
        for (; i + V <= n; i += V) {                                                           \
            fc_vec_##SUF v = FC_LOAD(SUF, src + i);                                            \
            FC_STREAM_##SUF(dst + i, (fc_vec_##SUF)(~(fc_ivec_##SUF)(v <= FC_ZERO(SUF))        \
                                                    & (fc_ivec_##SUF)v));                      \
        }                                                                                      \
        for (; i < n; i++) dst[i] = FC_RELU_SCALAR(T, src[i]);                                 \
    }
#else
/* Never called (the Cython side checks fc_stream_ok()); the plain loop keeps it correct. */
#define FC_DEFINE_RELU_STREAM(T, SUF)                                                          \
    static inline void fc_relu_stream_##SUF(T *dst, const T *src, ptrdiff_t n) {               \
        ptrdiff_t i;                                                                           \
        for (i = 0; i < n; i++) dst[i] = FC_RELU_SCALAR(T, src[i]);                            \
    }
#endif

FC_DEFINE_RELU_STREAM(float, f32)
FC_DEFINE_RELU_STREAM(double, f64)

#endif
