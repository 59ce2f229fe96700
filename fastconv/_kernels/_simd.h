/* Portable SIMD vocabulary shared by the C kernels (_blocked.h, _pool.h).
 *
 * The vector width follows the instruction set the file is compiled for (each dispatched
 * extension is built with its level's flags): 64 bytes with AVX-512, 32 with AVX, 16 otherwise.
 * GCC/Clang vector extensions let one source compile to SSE2, AVX2+FMA or AVX-512; other
 * compilers see FC_VECTOR_EXT == 0 and the kernels fall back to plain loops.
 *
 *   fc_vec_f32 / fc_vec_f64    register types (aligned)
 *   fc_uvec_f32 / fc_uvec_f64  the same with element alignment, for unaligned loads and stores
 *   fc_ivec_f32 / fc_ivec_f64  integer vectors of the same shape: comparison masks
 */
#ifndef FASTCONV_SIMD_H
#define FASTCONV_SIMD_H

#include <stddef.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define FC_VBYTES 64
#elif defined(__AVX__)
#define FC_VBYTES 32
#else
#define FC_VBYTES 16
#endif

/* Elements per vector of T. */
#define FC_VLEN(T) ((ptrdiff_t)(FC_VBYTES / sizeof(T)))

/* For the Python side, which sizes blocks and packs weights to the vector length. */
static inline ptrdiff_t fc_vec_len_f32(void) { return FC_VBYTES / 4; }
static inline ptrdiff_t fc_vec_len_f64(void) { return FC_VBYTES / 8; }

#if defined(__GNUC__) || defined(__clang__)
#define FC_VECTOR_EXT 1
#define FC_UNROLL _Pragma("GCC unroll 32")
#define FC_ALIGNED __attribute__((aligned(64)))
#else
#define FC_VECTOR_EXT 0
#define FC_UNROLL
#define FC_ALIGNED
#endif

#if FC_VECTOR_EXT
typedef float fc_vec_f32 __attribute__((vector_size(FC_VBYTES)));
typedef float fc_uvec_f32 __attribute__((vector_size(FC_VBYTES), aligned(4)));
typedef int fc_ivec_f32 __attribute__((vector_size(FC_VBYTES)));
typedef double fc_vec_f64 __attribute__((vector_size(FC_VBYTES)));
typedef double fc_uvec_f64 __attribute__((vector_size(FC_VBYTES), aligned(8)));
typedef long long fc_ivec_f64 __attribute__((vector_size(FC_VBYTES)));

#define FC_ZERO(SUF) ((fc_vec_##SUF){0})
#define FC_LOAD(SUF, p) (*(const fc_uvec_##SUF *)(p))
#define FC_STORE(SUF, p, v) (*(fc_uvec_##SUF *)(p) = (v))
/* mask ? a : b, element by element (C has no vector "?:"); mask lanes are all ones or zero. */
#define FC_SELECT(SUF, mask, a, b)                                                             \
    ((fc_vec_##SUF)(((fc_ivec_##SUF)(mask) & (fc_ivec_##SUF)(a))                               \
                    | (~(fc_ivec_##SUF)(mask) & (fc_ivec_##SUF)(b))))
/* Broadcast with the intrinsic of the level being compiled: "{0} + s" would cost an extra add
 * and an element-by-element fill compiles to shuffles. */
#if defined(__AVX512F__)
#define FC_SPLAT(SUF, s) FC_SPLAT_##SUF(_mm512, s)
#elif defined(__AVX__)
#define FC_SPLAT(SUF, s) FC_SPLAT_##SUF(_mm256, s)
#elif defined(__SSE2__)
#define FC_SPLAT(SUF, s) FC_SPLAT_##SUF(_mm, s)
#else
#define FC_SPLAT(SUF, s) ((fc_vec_##SUF){0} + (s))
#endif
#define FC_SPLAT_f32(P, s) ((fc_vec_f32)P##_set1_ps(s))
#define FC_SPLAT_f64(P, s) ((fc_vec_f64)P##_set1_pd(s))
#endif

#endif
