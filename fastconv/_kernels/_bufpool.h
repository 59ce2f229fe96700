/* A bounded pool of large array buffers, served to NumPy as a memory handler (NEP 49).
 *
 * Why: a fresh multi-megabyte output is mapped by the kernel page by page on first touch, and
 * those faults (zeroing included) cost as much as a memory-bound kernel itself. Arrays made
 * under this handler give their buffer back to the pool when NumPy frees them, and the next
 * output of a fitting size reuses it, already mapped. The arrays own their memory as usual
 * (OWNDATA, resize, pickling): only where the bytes go on free changes.
 *
 * Every block carries a small header just below the pointer NumPy sees, recording the raw
 * malloc pointer and the usable capacity, so that free and realloc never depend on the size
 * NumPy passes. Pointers are 64-byte aligned. Blocks below min_bytes, or above max_bytes, go
 * straight back to the C allocator. All pool state is behind one lock, taken only for a few
 * pointer moves; the C allocator is always called outside it.
 */
#ifndef FASTCONV_BUFPOOL_H
#define FASTCONV_BUFPOOL_H

#include <Python.h>
#include <pythread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <numpy/ndarraytypes.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define FC_POOL_SLOTS 64            /* most blocks kept at once */
#define FC_POOL_ALIGN 64            /* alignment of the pointers handed to NumPy */
#define FC_POOL_OVERHEAD 128        /* header + alignment slack per block */
#define FC_POOL_HUGEPAGE (4u << 20) /* NumPy's own threshold for MADV_HUGEPAGE */

typedef struct {
    void *raw;        /* what malloc/calloc returned */
    size_t capacity;  /* usable bytes from the aligned pointer */
} fc_block_header;

typedef struct {
    PyThread_type_lock lock;
    size_t max_bytes;     /* bound on cached bytes; 0 keeps nothing */
    size_t min_bytes;     /* smaller blocks are never kept */
    size_t cached_bytes;
    int n_cached;
    void *cached[FC_POOL_SLOTS];   /* oldest first */
    unsigned long long hits, misses, evictions;
} fc_pool_state;

static fc_pool_state fc_pool;

static inline fc_block_header *fc_header(void *p)
{
    return (fc_block_header *)((char *)p - sizeof(fc_block_header));
}

static inline size_t fc_capacity(void *p) { return fc_header(p)->capacity; }

/* Aligned user pointer inside raw, with its header written below it. */
static void *fc_place(void *raw, size_t size)
{
    uintptr_t user = ((uintptr_t)raw + sizeof(fc_block_header) + FC_POOL_ALIGN - 1)
                     & ~(uintptr_t)(FC_POOL_ALIGN - 1);
    fc_block_header *h = fc_header((void *)user);
    h->raw = raw;
    h->capacity = size;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (size >= FC_POOL_HUGEPAGE) {
        /* As NumPy's default allocator does: fewer, larger faults on first touch. */
        uintptr_t start = (user + 4095u) & ~(uintptr_t)4095u;
        madvise((void *)start, size - (size_t)(start - user), MADV_HUGEPAGE);
    }
#endif
    return (void *)user;
}

static void *fc_fresh(size_t size, int zeroed)
{
    void *raw;
    if (size == 0)
        size = 1;
    if (size > SIZE_MAX - FC_POOL_OVERHEAD)
        return NULL;
    raw = zeroed ? calloc(1, size + FC_POOL_OVERHEAD) : malloc(size + FC_POOL_OVERHEAD);
    return raw ? fc_place(raw, size) : NULL;
}

static inline void fc_release(void *p) { free(fc_header(p)->raw); }

/* Remove and return a cached block that fits size (at most 1/8 larger), newest first. */
static void *fc_take(size_t size)
{
    void *found = NULL;
    int i;
    if (size < fc_pool.min_bytes)
        return NULL;
    PyThread_acquire_lock(fc_pool.lock, WAIT_LOCK);
    for (i = fc_pool.n_cached - 1; i >= 0; i--) {
        size_t cap = fc_capacity(fc_pool.cached[i]);
        if (cap >= size && cap - size <= size / 8) {
            found = fc_pool.cached[i];
            memmove(&fc_pool.cached[i], &fc_pool.cached[i + 1],
                    (size_t)(fc_pool.n_cached - i - 1) * sizeof(void *));
            fc_pool.n_cached--;
            fc_pool.cached_bytes -= cap;
            break;
        }
    }
    if (found)
        fc_pool.hits++;
    else
        fc_pool.misses++;
    PyThread_release_lock(fc_pool.lock);
    return found;
}

/* With the lock held: move the oldest blocks to evicted[] until the pool is within its bound
 * and has room for `room` more. Returns how many were moved. */
static int fc_trim_locked(size_t bound, int room, void **evicted)
{
    int n = 0, i;
    while (fc_pool.n_cached > 0 &&
           (fc_pool.cached_bytes > bound || fc_pool.n_cached > FC_POOL_SLOTS - room)) {
        evicted[n++] = fc_pool.cached[0];
        fc_pool.cached_bytes -= fc_capacity(fc_pool.cached[0]);
        fc_pool.n_cached--;
        for (i = 0; i < fc_pool.n_cached; i++)
            fc_pool.cached[i] = fc_pool.cached[i + 1];
    }
    fc_pool.evictions += (unsigned long long)n;
    return n;
}

static void fc_free_all(void **blocks, int n)
{
    int i;
    for (i = 0; i < n; i++)
        fc_release(blocks[i]);
}

static void fc_give_back(void *p)
{
    void *evicted[FC_POOL_SLOTS];
    int n = 0, kept = 0;
    size_t cap = fc_capacity(p);
    PyThread_acquire_lock(fc_pool.lock, WAIT_LOCK);
    if (cap >= fc_pool.min_bytes && cap <= fc_pool.max_bytes) {
        n = fc_trim_locked(fc_pool.max_bytes - cap, 1, evicted);
        fc_pool.cached[fc_pool.n_cached++] = p;
        fc_pool.cached_bytes += cap;
        kept = 1;
    }
    PyThread_release_lock(fc_pool.lock);
    fc_free_all(evicted, n);
    if (!kept)
        fc_release(p);
}

/* The NumPy handler functions. */

static void *fc_malloc(void *ctx, size_t size)
{
    void *p = fc_take(size);
    (void)ctx;
    return p ? p : fc_fresh(size, 0);
}

static void *fc_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    /* Fresh zeroed pages cost no more than zeroing a cached block by hand. */
    if (elsize != 0 && nelem > SIZE_MAX / elsize)
        return NULL;
    return fc_fresh(nelem * elsize, 1);
}

static void *fc_realloc(void *ctx, void *ptr, size_t new_size)
{
    void *q;
    size_t cap;
    (void)ctx;
    if (ptr == NULL)
        return fc_fresh(new_size, 0);
    cap = fc_capacity(ptr);
    if (new_size <= cap && new_size >= cap / 2)
        return ptr;
    /* Growing, or shrinking to under half: a block of the new size (a shrunk array must not
     * hold on to, and later cache, its old capacity). */
    q = fc_fresh(new_size, 0);
    if (q == NULL)
        return new_size <= cap ? ptr : NULL;   /* realloc's contract: ptr stays valid */
    memcpy(q, ptr, new_size < cap ? new_size : cap);
    fc_release(ptr);
    return q;
}

static void fc_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;   /* the header knows the capacity */
    if (ptr != NULL)
        fc_give_back(ptr);
}

static PyDataMem_Handler fc_handler = {
    "fastconv_buffer_pool",
    1,
    {NULL, fc_malloc, fc_calloc, fc_realloc, fc_free},
};

/* Module set-up and control, called with the GIL held. */

static void fc_pool_set_max(size_t max_bytes)
{
    void *evicted[FC_POOL_SLOTS];
    int n;
    PyThread_acquire_lock(fc_pool.lock, WAIT_LOCK);
    fc_pool.max_bytes = max_bytes;
    n = fc_trim_locked(max_bytes, 0, evicted);
    PyThread_release_lock(fc_pool.lock);
    fc_free_all(evicted, n);
}

/* The lock is made once, at module import (before any pooled allocation can happen); a
 * later call (a reloaded fastconv._buffers) only sets the bounds. */
static int fc_pool_init(size_t max_bytes, size_t min_bytes)
{
    if (fc_pool.lock == NULL) {
        fc_pool.lock = PyThread_allocate_lock();
        if (fc_pool.lock == NULL)
            return -1;
    }
    PyThread_acquire_lock(fc_pool.lock, WAIT_LOCK);
    fc_pool.min_bytes = min_bytes;
    PyThread_release_lock(fc_pool.lock);
    fc_pool_set_max(max_bytes);
    return 0;
}

static void fc_pool_clear(void)
{
    void *evicted[FC_POOL_SLOTS];
    int n;
    PyThread_acquire_lock(fc_pool.lock, WAIT_LOCK);
    n = fc_trim_locked(0, 0, evicted);
    PyThread_release_lock(fc_pool.lock);
    fc_free_all(evicted, n);
}

typedef struct {
    size_t max_bytes, min_bytes, cached_bytes;
    int n_cached;
    unsigned long long hits, misses, evictions;
} fc_pool_stats;

static fc_pool_stats fc_pool_read(void)
{
    fc_pool_stats s;
    PyThread_acquire_lock(fc_pool.lock, WAIT_LOCK);
    s.max_bytes = fc_pool.max_bytes;
    s.min_bytes = fc_pool.min_bytes;
    s.cached_bytes = fc_pool.cached_bytes;
    s.n_cached = fc_pool.n_cached;
    s.hits = fc_pool.hits;
    s.misses = fc_pool.misses;
    s.evictions = fc_pool.evictions;
    PyThread_release_lock(fc_pool.lock);
    return s;
}

#endif /* FASTCONV_BUFPOOL_H */
