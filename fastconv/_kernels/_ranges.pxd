# Index arithmetic shared by the kernels (inline, so cimporting it costs nothing at run time).


cdef inline void valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                             Py_ssize_t n_out, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Output positions o in [lo, hi) whose input position o*stride + offset lies in [0, size)."""
    cdef Py_ssize_t last = size - 1 - offset
    lo[0] = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi[0] = 0 if last < 0 else last // stride + 1
    if hi[0] > n_out:
        hi[0] = n_out


cdef inline Py_ssize_t source_index(Py_ssize_t i, Py_ssize_t k, Py_ssize_t stride,
                                    Py_ssize_t dilation, Py_ssize_t pad,
                                    Py_ssize_t n_out) noexcept nogil:
    """The output position whose window cell k covers input position i, or -1 if none.

    Returned rather than written through a pointer so that prange sees the caller's variable
    assigned, and makes it thread-private.
    """
    cdef Py_ssize_t t = i + pad - k * dilation
    if t < 0 or t % stride != 0 or t // stride >= n_out:
        return -1
    return t // stride


cdef inline Py_ssize_t share_start(Py_ssize_t n, Py_ssize_t parts, Py_ssize_t t) noexcept nogil:
    """Where share t of n items split into ``parts`` contiguous shares starts (share t is
    [share_start(t), share_start(t + 1))): n // parts each, the first n % parts one longer,
    as prange(n, schedule="static") deals them out."""
    return (n // parts) * t + (t if t < n % parts else n % parts)
