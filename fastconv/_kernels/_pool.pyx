"""Max and average pooling kernels, NCHW and NHWC.

Compute only; see ``fastconv.pooling``. Windows are clipped to the input, so padding never has
to be materialised: max pooling behaves as if padded with -inf, average pooling as if padded with
zeros, and the divisor is computed from the window's extent. A window containing NaN gives NaN;
its index is the first NaN's. Otherwise the first maximum (row-major in the window) wins.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t


cdef inline void _clip(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t k,
                       Py_ssize_t size, Py_ssize_t pad_end,
                       Py_ssize_t* start, Py_ssize_t* end, Py_ssize_t* padded_len) noexcept nogil:
    """Window of output o: real cells [start, end); cells inside the explicit padding: padded_len."""
    cdef Py_ssize_t s = o * stride - pad
    cdef Py_ssize_t e = s + k
    if e > size + pad_end:
        e = size + pad_end       # the ceil_mode overhang is not padding
    padded_len[0] = e - s
    start[0] = s if s > 0 else 0
    end[0] = e if e < size else size


cdef inline bint _beats(floating v, floating m) noexcept nogil:
    # Greater wins; NaN beats any non-NaN, and a first NaN is never replaced.
    return v > m or (v != v and m == m)


def max_pool_nchw(
    const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
    floating[:, :, :, ::1] out,        # OUT (N, C, OH, OW)
    int64_t[:, :, :, ::1] indices,     # OUT like out, or shape (0, 0, 0, 0) for none
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Max pooling, NCHW. One work item is one output row (n, c, oh)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef bint want_idx = indices.shape[0] > 0
    cdef Py_ssize_t r, ow, h, w, hs, he, ws, we, plen, best
    cdef const floating* plane
    cdef floating m, v
    if N * C * OH * OW == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef int64_t* ip = &indices[0, 0, 0, 0] if want_idx else NULL
    with nogil:
        for r in prange(N * C * OH, schedule="static", num_threads=n_threads):
            plane = xp + (r // OH) * H * W
            _clip(r % OH, stride_h, pad_top, KH, H, 0, &hs, &he, &plen)
            for ow in range(OW):
                _clip(ow, stride_w, pad_left, KW, W, 0, &ws, &we, &plen)
                m = -INFINITY
                best = hs * W + ws
                for h in range(hs, he):
                    for w in range(ws, we):
                        v = plane[h * W + w]
                        if _beats(v, m):
                            m = v
                            best = h * W + w
                op[r * OW + ow] = m
                if want_idx:
                    ip[r * OW + ow] = best


def max_pool_nhwc(
    const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
    floating[:, :, :, ::1] out,        # OUT (N, OH, OW, C)
    int64_t[:, :, :, ::1] indices,     # OUT like out, or shape (0, 0, 0, 0) for none
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Max pooling, NHWC. One work item is one output row (n, oh); channels are the inner loop."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2]
    cdef bint want_idx = indices.shape[0] > 0
    cdef Py_ssize_t r, ow, h, w, c, hs, he, ws, we, plen
    cdef const floating* pix
    cdef floating* o
    cdef int64_t* idx
    cdef floating v
    if N * OH * OW * C == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef int64_t* ip = &indices[0, 0, 0, 0] if want_idx else NULL
    with nogil:
        for r in prange(N * OH, schedule="static", num_threads=n_threads):
            _clip(r % OH, stride_h, pad_top, KH, H, 0, &hs, &he, &plen)
            for ow in range(OW):
                _clip(ow, stride_w, pad_left, KW, W, 0, &ws, &we, &plen)
                o = op + (r * OW + ow) * C
                for c in range(C):
                    o[c] = -INFINITY
                if want_idx:
                    idx = ip + (r * OW + ow) * C
                    for c in range(C):
                        idx[c] = hs * W + ws
                for h in range(hs, he):
                    for w in range(ws, we):
                        pix = xp + (((r // OH) * H + h) * W + w) * C
                        if want_idx:
                            for c in range(C):
                                if _beats(pix[c], o[c]):
                                    o[c] = pix[c]
                                    idx[c] = h * W + w
                        else:
                            for c in range(C):
                                v = pix[c]
                                if _beats(v, o[c]):
                                    o[c] = v


cdef inline Py_ssize_t _divisor(Py_ssize_t override, bint count_include_pad,
                                Py_ssize_t padded_cells, Py_ssize_t real_cells) noexcept nogil:
    if override > 0:
        return override
    return padded_cells if count_include_pad else real_cells


def avg_pool_nchw(
    const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
    floating[:, :, :, ::1] out,        # OUT (N, C, OH, OW)
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left, Py_ssize_t pad_right,
    bint count_include_pad, Py_ssize_t divisor_override, int n_threads,
):
    """Average pooling, NCHW. ``divisor_override`` 0 means none."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t r, ow, h, w, hs, he, ws, we, hlen, wlen
    cdef const floating* plane
    cdef floating acc
    if N * C * OH * OW == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    with nogil:
        for r in prange(N * C * OH, schedule="static", num_threads=n_threads):
            plane = xp + (r // OH) * H * W
            _clip(r % OH, stride_h, pad_top, KH, H, pad_bottom, &hs, &he, &hlen)
            for ow in range(OW):
                _clip(ow, stride_w, pad_left, KW, W, pad_right, &ws, &we, &wlen)
                acc = 0
                for h in range(hs, he):
                    for w in range(ws, we):
                        acc = acc + plane[h * W + w]
                op[r * OW + ow] = acc / _divisor(divisor_override, count_include_pad,
                                                 hlen * wlen, (he - hs) * (we - ws))


def avg_pool_nhwc(
    const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
    floating[:, :, :, ::1] out,        # OUT (N, OH, OW, C)
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left, Py_ssize_t pad_right,
    bint count_include_pad, Py_ssize_t divisor_override, int n_threads,
):
    """Average pooling, NHWC; channels are the inner, vectorised loop."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2]
    cdef Py_ssize_t r, ow, h, w, c, hs, he, ws, we, hlen, wlen
    cdef const floating* pix
    cdef floating* o
    cdef floating div
    if N * OH * OW * C == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    with nogil:
        for r in prange(N * OH, schedule="static", num_threads=n_threads):
            _clip(r % OH, stride_h, pad_top, KH, H, pad_bottom, &hs, &he, &hlen)
            for ow in range(OW):
                _clip(ow, stride_w, pad_left, KW, W, pad_right, &ws, &we, &wlen)
                o = op + (r * OW + ow) * C
                for c in range(C):
                    o[c] = 0
                for h in range(hs, he):
                    for w in range(ws, we):
                        pix = xp + (((r // OH) * H + h) * W + w) * C
                        for c in range(C):
                            o[c] += pix[c]
                div = <floating>_divisor(divisor_override, count_include_pad,
                                         hlen * wlen, (he - hs) * (we - ws))
                for c in range(C):
                    o[c] = o[c] / div
