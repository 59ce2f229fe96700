"""Max and average pooling kernels, NCHW and NHWC.

Compute only; see ``fastconv.pooling``. Windows are clipped to the input, so padding never has
to be materialised: max pooling behaves as if padded with -inf, average pooling as if padded with
zeros, and the divisor is computed from the window's extent. A window containing NaN gives NaN;
its index is the first NaN's. Otherwise the first maximum (row-major in the window) wins.

Each prange iteration hands one output row to a ``nogil`` row function, so every window bound is
a local of that function and private to its thread.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t


cdef struct Window:
    Py_ssize_t start       # first real cell
    Py_ssize_t end         # one past the last real cell
    Py_ssize_t padded_len  # cells inside the explicitly padded input (count_include_pad)


cdef inline Window _window(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t k,
                           Py_ssize_t size, Py_ssize_t pad_end) noexcept nogil:
    """The window of output position o along one axis."""
    cdef Window win
    cdef Py_ssize_t s = o * stride - pad
    cdef Py_ssize_t e = s + k
    if e > size + pad_end:
        e = size + pad_end       # the ceil_mode overhang is not padding
    win.padded_len = e - s
    win.start = s if s > 0 else 0
    win.end = e if e < size else size
    return win


cdef inline bint _beats(floating v, floating m) noexcept nogil:
    # Greater wins; NaN beats any non-NaN, and a first NaN is never replaced.
    return (v > m) | ((v != v) & (m == m))   # bitwise: no short-circuit branches


cdef struct Geometry:
    Py_ssize_t H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right
    Py_ssize_t divisor_override
    bint count_include_pad


cdef inline void _max_row_nchw(const floating* plane, floating* o, int64_t* idx, Py_ssize_t oh,
                               const Geometry* g) noexcept nogil:
    """Output row oh of one (n, c) plane; ``idx`` may be NULL."""
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, 0)
    cdef Window ww
    cdef Py_ssize_t ow, h, w, best
    cdef floating m, v
    for ow in range(g.OW):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, 0)
        m = -INFINITY
        if idx == NULL:
            # Selects rather than branches: random data would mispredict every other compare.
            for h in range(wh.start, wh.end):
                for w in range(ww.start, ww.end):
                    v = plane[h * g.W + w]
                    m = v if _beats(v, m) else m
        else:
            best = wh.start * g.W + ww.start
            for h in range(wh.start, wh.end):
                for w in range(ww.start, ww.end):
                    v = plane[h * g.W + w]
                    if _beats(v, m):
                        m = v
                        best = h * g.W + w
            idx[ow] = best
        o[ow] = m


cdef inline void _max_row_nhwc(const floating* image, floating* o, int64_t* idx, Py_ssize_t oh,
                               const Geometry* g) noexcept nogil:
    """Output row oh of one image, (OW, C); channels are the inner loop. ``idx`` may be NULL."""
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, 0)
    cdef Window ww
    cdef Py_ssize_t ow, h, w, c, C = g.C
    cdef const floating* pix
    cdef floating* out_pix
    cdef int64_t* idx_pix
    for ow in range(g.OW):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, 0)
        out_pix = o + ow * C
        for c in range(C):
            out_pix[c] = -INFINITY
        if idx != NULL:
            idx_pix = idx + ow * C
            for c in range(C):
                idx_pix[c] = wh.start * g.W + ww.start
        for h in range(wh.start, wh.end):
            for w in range(ww.start, ww.end):
                pix = image + (h * g.W + w) * C
                if idx != NULL:
                    for c in range(C):
                        if _beats(pix[c], out_pix[c]):
                            out_pix[c] = pix[c]
                            idx_pix[c] = h * g.W + w
                else:
                    # A select, not a conditional store, so the channel loop vectorises.
                    for c in range(C):
                        out_pix[c] = pix[c] if _beats(pix[c], out_pix[c]) else out_pix[c]


cdef inline Py_ssize_t _divisor(const Geometry* g, Window wh, Window ww) noexcept nogil:
    if g.divisor_override > 0:
        return g.divisor_override
    if g.count_include_pad:
        return wh.padded_len * ww.padded_len
    return (wh.end - wh.start) * (ww.end - ww.start)


cdef inline void _avg_row_nchw(const floating* plane, floating* o, Py_ssize_t oh,
                               const Geometry* g) noexcept nogil:
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom)
    cdef Window ww
    cdef Py_ssize_t ow, h, w
    cdef floating acc
    for ow in range(g.OW):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, g.pad_right)
        acc = 0
        for h in range(wh.start, wh.end):
            for w in range(ww.start, ww.end):
                acc = acc + plane[h * g.W + w]
        o[ow] = acc / <floating>_divisor(g, wh, ww)


cdef inline void _avg_row_nhwc(const floating* image, floating* o, Py_ssize_t oh,
                               const Geometry* g) noexcept nogil:
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom)
    cdef Window ww
    cdef Py_ssize_t ow, h, w, c, C = g.C
    cdef const floating* pix
    cdef floating* out_pix
    cdef floating div
    for ow in range(g.OW):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, g.pad_right)
        out_pix = o + ow * C
        for c in range(C):
            out_pix[c] = 0
        for h in range(wh.start, wh.end):
            for w in range(ww.start, ww.end):
                pix = image + (h * g.W + w) * C
                for c in range(C):
                    out_pix[c] += pix[c]
        div = <floating>_divisor(g, wh, ww)
        for c in range(C):
            out_pix[c] = out_pix[c] / div


cdef Geometry _geometry(Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t OW,
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
                        Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left,
                        Py_ssize_t pad_right, bint count_include_pad,
                        Py_ssize_t divisor_override):
    cdef Geometry g
    g.H, g.W, g.C, g.OW, g.KH, g.KW = H, W, C, OW, KH, KW
    g.stride_h, g.stride_w = stride_h, stride_w
    g.pad_top, g.pad_bottom, g.pad_left, g.pad_right = pad_top, pad_bottom, pad_left, pad_right
    g.count_include_pad, g.divisor_override = count_include_pad, divisor_override
    return g


def max_pool_nchw(
    const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
    floating[:, :, :, ::1] out,        # OUT (N, C, OH, OW)
    int64_t[:, :, :, ::1] indices,     # OUT like out, or shape (0, 0, 0, 0) for none
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Max pooling, NCHW. One work item is one output row (n, c, oh)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, 0, pad_left,
                                0, False, 0)
    if N * C * OH * OW == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef int64_t* ip = &indices[0, 0, 0, 0] if indices.shape[0] > 0 else NULL
    with nogil:
        for r in prange(N * C * OH, schedule="static", num_threads=n_threads):
            _max_row_nchw(xp + (r // OH) * H * W, op + r * OW,
                          ip + r * OW if ip != NULL else NULL, r % OH, &g)


def max_pool_nhwc(
    const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
    floating[:, :, :, ::1] out,        # OUT (N, OH, OW, C)
    int64_t[:, :, :, ::1] indices,     # OUT like out, or shape (0, 0, 0, 0) for none
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Max pooling, NHWC. One work item is one output row (n, oh)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, 0, pad_left,
                                0, False, 0)
    if N * OH * OW * C == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef int64_t* ip = &indices[0, 0, 0, 0] if indices.shape[0] > 0 else NULL
    with nogil:
        for r in prange(N * OH, schedule="static", num_threads=n_threads):
            _max_row_nhwc(xp + (r // OH) * H * W * C, op + r * OW * C,
                          ip + r * OW * C if ip != NULL else NULL, r % OH, &g)


def avg_pool_nchw(
    const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
    floating[:, :, :, ::1] out,        # OUT (N, C, OH, OW)
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left, Py_ssize_t pad_right,
    bint count_include_pad, Py_ssize_t divisor_override, int n_threads,
):
    """Average pooling, NCHW. ``divisor_override`` 0 means none."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, pad_bottom,
                                pad_left, pad_right, count_include_pad, divisor_override)
    if N * C * OH * OW == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    with nogil:
        for r in prange(N * C * OH, schedule="static", num_threads=n_threads):
            _avg_row_nchw(xp + (r // OH) * H * W, op + r * OW, r % OH, &g)


def avg_pool_nhwc(
    const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
    floating[:, :, :, ::1] out,        # OUT (N, OH, OW, C)
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left, Py_ssize_t pad_right,
    bint count_include_pad, Py_ssize_t divisor_override, int n_threads,
):
    """Average pooling, NHWC; channels are the inner, vectorised loop."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, pad_bottom,
                                pad_left, pad_right, count_include_pad, divisor_override)
    if N * OH * OW * C == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    with nogil:
        for r in prange(N * OH, schedule="static", num_threads=n_threads):
            _avg_row_nhwc(xp + (r // OH) * H * W * C, op + r * OW * C, r % OH, &g)
