"""The output buffer pool: a NumPy memory handler (NEP 49) that recycles large buffers.

The policy and its bounds are in ``_bufpool.h``; the public controls and their documentation
are in ``fastconv._buffers``. Arrays made by :func:`empty` behave like any NumPy array; only
their buffer goes back to the pool, not to the C allocator, when they are freed.
"""

import numpy as np

cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New

cnp.import_array()

cdef extern from "_bufpool.h":
    ctypedef struct PyDataMem_Handler:
        pass
    ctypedef struct fc_pool_stats:
        size_t max_bytes, min_bytes, cached_bytes
        int n_cached
        unsigned long long hits, misses, evictions
    PyDataMem_Handler fc_handler
    int FC_POOL_SLOTS
    int fc_pool_init(size_t max_bytes, size_t min_bytes)
    void fc_pool_set_max(size_t max_bytes)
    void fc_pool_clear()
    fc_pool_stats fc_pool_read()

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

# NumPy's capsule name for memory handlers; the capsule lives as long as the module.
cdef object _handler = PyCapsule_New(&fc_handler, "mem_handler", NULL)
# The lock must exist before any array can use the handler; fastconv._buffers sets the bounds.
if fc_pool_init(0, 0) != 0:
    raise MemoryError("fastconv: could not allocate the buffer pool's lock")
HANDLER_NAME = "fastconv_buffer_pool"
MAX_BLOCKS = FC_POOL_SLOTS


def init(size_t max_bytes, size_t min_bytes):
    """Set the pool's bounds; called by ``fastconv._buffers`` at import."""
    fc_pool_init(max_bytes, min_bytes)


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` with its buffer from (and later back to) the pool."""
    previous = PyDataMem_SetHandler(_handler)
    try:
        return np.empty(shape, dtype=dtype)
    finally:
        PyDataMem_SetHandler(previous)


def set_max_bytes(size_t max_bytes):
    """Bound the cached bytes, freeing the oldest blocks beyond it."""
    fc_pool_set_max(max_bytes)


def clear():
    """Free every cached block."""
    fc_pool_clear()


def stats():
    """The pool's bounds, contents and counters, as a dict."""
    cdef fc_pool_stats s = fc_pool_read()
    return {"max_bytes": s.max_bytes, "min_bytes": s.min_bytes,
            "cached_bytes": s.cached_bytes, "cached_blocks": s.n_cached,
            "hits": s.hits, "misses": s.misses, "evictions": s.evictions}

