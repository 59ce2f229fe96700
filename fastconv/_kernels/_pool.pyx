"""Max and average pooling kernels, NCHW and NHWC.

Compute only; see ``fastconv.pooling``. Windows are clipped to the input, so padding never has
to be materialised: max pooling behaves as if padded with -inf, average pooling as if padded with
zeros, and the divisor is computed from the window's extent. A window containing NaN gives NaN;
its index is the last NaN's (PyTorch's CPU rule). Otherwise the first maximum (row-major in the
window) wins.

Each prange iteration hands one output row to a ``nogil`` row function, so every window bound is
a local of that function and private to its thread.

The value-only passes (max without indices, average) hand the bulk of each row to the vector
code of ``_pool.h``, which computes every output in the same order as the loops here (so the
results are bit-identical): NCHW rows for strides 1 and 2, the columns whose windows lie inside
the input (the few border columns stay here); NHWC every pixel, channels in registers.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastconv._kernels._ranges cimport valid_range


cdef extern from "_pool.h" nogil:
    int fc_pool_vector()
    void fc_pool_cols_f32(const float* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                          Py_ssize_t KW, Py_ssize_t s, Py_ssize_t pl, Py_ssize_t j0,
                          Py_ssize_t j1, int avg, float div, float* out)
    void fc_pool_cols_f64(const double* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                          Py_ssize_t KW, Py_ssize_t s, Py_ssize_t pl, Py_ssize_t j0,
                          Py_ssize_t j1, int avg, double div, double* out)
    void fc_pool_pixel_nhwc_f32(const float* image, Py_ssize_t W, Py_ssize_t C, Py_ssize_t h0,
                                Py_ssize_t h1, Py_ssize_t w0, Py_ssize_t w1, int avg,
                                float div, float* out)
    void fc_pool_pixel_nhwc_f64(const double* image, Py_ssize_t W, Py_ssize_t C,
                                Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0, Py_ssize_t w1,
                                int avg, double div, double* out)


def vector_code():
    """Whether this build has the vector code of ``_pool.h`` (GCC builds; with other
    compilers every pass runs the loops of this module)."""
    return bool(fc_pool_vector())


cdef enum:
    CHANNEL_BLOCK = 16  # NHWC channels searched together (stack arrays); backward work items

# For the Python side, which sizes the thread team by the NHWC backward work items.
BACKWARD_CHANNEL_BLOCK = CHANNEL_BLOCK


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
    # Greater wins, and a NaN always wins, so the window's last NaN is kept: PyTorch's CPU rule
    # `(val > maxval) || isnan(val)`, which fixes which cell gets a NaN window's gradient.
    return (v > m) | (v != v)   # bitwise: no short-circuit branches


cdef struct Geometry:
    Py_ssize_t H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right
    Py_ssize_t divisor_override
    bint count_include_pad


cdef enum:
    ROW_CHUNK = 64      # output pixels searched together by _max_chunk (stack arrays)


cdef inline void _max_tap(const floating* src, Py_ssize_t stride, Py_ssize_t n, floating* m,
                          int* best_tap, int tap, bint want_index) noexcept nogil:
    """Fold one kernel tap into n running maxima: src[i * stride] is output i's cell. With
    want_index, best_tap[i] records the tap number of output i's maximum. Called with a literal
    stride for the common cases so the inlined loop has a constant stride and vectorises; int
    tap numbers keep the index select as wide as the float compare."""
    cdef Py_ssize_t i
    cdef floating v
    cdef bint better
    if want_index:
        for i in range(n):
            v = src[i * stride]
            better = _beats(v, m[i])
            best_tap[i] = tap if better else best_tap[i]
            m[i] = v if better else m[i]
    else:
        for i in range(n):
            v = src[i * stride]
            m[i] = v if _beats(v, m[i]) else m[i]


cdef inline void _max_chunk(const floating* plane, Py_ssize_t oh, Py_ssize_t ow0, Py_ssize_t n,
                            floating* m, int64_t* best, bint want_index,
                            const Geometry* g) noexcept nogil:
    """Maxima of output pixels ow0 .. ow0+n of row oh of one (n, c) plane, and with want_index
    the flat index of each first maximum.

    Visits the window one tap at a time across all n outputs (rows top to bottom, then columns
    left to right: row-major window order, so the first maximum (or last NaN) wins as in a scalar
    search), which turns the compare-and-select into a loop over outputs that vectorises.
    A tap is recorded as its offset from the window's first real row and column,
    (h - first row) * W + kw, which fits an int (checked by fastconv._validate.index_offsets).
    """
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, 0)
    cdef Py_ssize_t i, h, kw, off, lo, hi, col, sw = g.stride_w
    cdef int best_tap[ROW_CHUNK]
    cdef int tap
    cdef const floating* src
    for i in range(n):
        m[i] = -INFINITY
        col = (ow0 + i) * sw - g.pad_left
        best_tap[i] = <int>(-col if col < 0 else 0)     # the window's first real cell
    for h in range(wh.start, wh.end):
        for kw in range(g.KW):
            off = kw - g.pad_left              # output ow reads column ow * sw + off
            valid_range(off, sw, g.W, ow0 + n, &lo, &hi)
            if lo < ow0:
                lo = ow0
            if hi <= lo:
                continue
            src = plane + h * g.W + lo * sw + off
            tap = <int>((h - wh.start) * g.W + kw)
            if sw == 1:
                _max_tap(src, 1, hi - lo, m + lo - ow0, best_tap + lo - ow0, tap, want_index)
            elif sw == 2:
                _max_tap(src, 2, hi - lo, m + lo - ow0, best_tap + lo - ow0, tap, want_index)
            else:
                _max_tap(src, sw, hi - lo, m + lo - ow0, best_tap + lo - ow0, tap, want_index)
    if want_index:
        for i in range(n):
            col = (ow0 + i) * sw - g.pad_left
            best[i] = wh.start * g.W + col + best_tap[i]


cdef inline void _max_cols_nchw(const floating* plane, floating* o, int64_t* idx,
                                Py_ssize_t oh, Py_ssize_t ow0, Py_ssize_t ow1,
                                const Geometry* g) noexcept nogil:
    """Output columns [ow0, ow1) of row oh of one (n, c) plane by the scalar search, with
    their indices unless ``idx`` is NULL (``o`` and ``idx`` point at the row's column 0)."""
    cdef floating m[ROW_CHUNK]
    cdef int64_t best[ROW_CHUNK]
    cdef Py_ssize_t n, i
    while ow0 < ow1:
        n = ow1 - ow0 if ow1 - ow0 < ROW_CHUNK else ROW_CHUNK
        _max_chunk(plane, oh, ow0, n, m, best, idx != NULL, g)
        for i in range(n):
            o[ow0 + i] = m[i]
        if idx != NULL:
            for i in range(n):
                idx[ow0 + i] = best[i]
        ow0 += n


cdef inline void _max_cols_value(const floating* plane, floating* o, Window wh, Py_ssize_t ow0,
                                 Py_ssize_t ow1, const Geometry* g) noexcept nogil:
    """Maxima, values only, of output columns [ow0, ow1) of a row whose window rows are ``wh``:
    each window's real cells in row-major order, the order _max_chunk visits them, so the
    results are the same. For the few border columns of a row that the vector code leaves:
    _max_chunk's per-tap setup cost more than the rest of a 3x3 stride-2 row."""
    cdef Window ww
    cdef Py_ssize_t ow, h, w
    cdef floating m, v
    for ow in range(ow0, ow1):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, 0)
        m = -INFINITY
        for h in range(wh.start, wh.end):
            for w in range(ww.start, ww.end):
                v = plane[h * g.W + w]
                m = v if _beats(v, m) else m
        o[ow] = m


cdef inline void _max_pixel(const floating* image, Window wh, Window ww, Py_ssize_t W,
                            Py_ssize_t C, Py_ssize_t n, floating* m, int64_t* best) noexcept nogil:
    """Maxima of one NHWC window for n <= CHANNEL_BLOCK consecutive channels:
    image[(h * W + w) * C + c] is channel c of cell (h, w). Writes m[0:n] and, unless best is
    NULL, each maximum's flat index h * W + w. Selects, not branches, and int offsets from the
    window's first cell (as wide as a float32 compare; see check_index_offsets), so the channel
    loop vectorises."""
    cdef Py_ssize_t h, w, c
    cdef int cell
    cdef int offset[CHANNEL_BLOCK]
    cdef const floating* pix
    cdef bint better
    for c in range(n):
        m[c] = -INFINITY
        offset[c] = 0
    for h in range(wh.start, wh.end):
        for w in range(ww.start, ww.end):
            pix = image + (h * W + w) * C
            if best != NULL:
                cell = <int>((h - wh.start) * W + (w - ww.start))
                for c in range(n):
                    better = _beats(pix[c], m[c])
                    offset[c] = cell if better else offset[c]
                    m[c] = pix[c] if better else m[c]
            else:
                for c in range(n):
                    m[c] = pix[c] if _beats(pix[c], m[c]) else m[c]
    if best != NULL:
        for c in range(n):
            best[c] = wh.start * W + ww.start + offset[c]


cdef inline void _max_row_nhwc(const floating* image, floating* o, int64_t* idx, Py_ssize_t oh,
                               const Geometry* g) noexcept nogil:
    """Output row oh of one image, (OW, C); channels are the inner loop. ``idx`` may be NULL."""
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, 0)
    cdef Window ww
    cdef Py_ssize_t ow, c0, n, q
    for ow in range(g.OW):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, 0)
        c0 = 0
        while c0 < g.C:
            n = g.C - c0 if g.C - c0 < CHANNEL_BLOCK else CHANNEL_BLOCK
            q = ow * g.C + c0
            _max_pixel(image + c0, wh, ww, g.W, g.C, n, o + q, idx + q if idx != NULL else NULL)
            c0 += n


cdef inline Py_ssize_t _divisor(const Geometry* g, Window wh, Window ww) noexcept nogil:
    if g.divisor_override > 0:
        return g.divisor_override
    if g.count_include_pad:
        return wh.padded_len * ww.padded_len
    return (wh.end - wh.start) * (ww.end - ww.start)


cdef inline void _avg_cols_nchw(const floating* plane, floating* o, Py_ssize_t oh,
                                Py_ssize_t ow0, Py_ssize_t ow1, const Geometry* g) noexcept nogil:
    """Averages of output columns [ow0, ow1) of row oh of one plane."""
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom)
    cdef Window ww
    cdef Py_ssize_t ow, h, w
    cdef floating acc
    for ow in range(ow0, ow1):
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


cdef inline void _interior_cols(const Geometry* g, Py_ssize_t* j0, Py_ssize_t* j1) noexcept nogil:
    """The output columns [j0, j1) whose windows lie wholly inside the input's columns."""
    cdef Py_ssize_t last = g.W - g.KW + g.pad_left   # the last window start + pad_left
    j0[0] = (g.pad_left + g.stride_w - 1) // g.stride_w
    j1[0] = last // g.stride_w + 1 if last >= 0 else 0
    if j1[0] > g.OW:
        j1[0] = g.OW
    if j0[0] > j1[0]:
        j0[0] = j1[0]


cdef inline void _pool_row_nchw_vector(const floating* plane, floating* o, Py_ssize_t oh,
                                       Py_ssize_t j0, Py_ssize_t j1, bint avg,
                                       const Geometry* g) noexcept nogil:
    """Output row oh of one plane, value only, stride_w 1 or 2: the interior columns
    [j0, j1) by the vector code, the border columns by the scalar search."""
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom if avg else 0)
    cdef Window ww
    cdef floating div = 1
    if avg:
        _avg_cols_nchw(plane, o, oh, 0, j0, g)
        _avg_cols_nchw(plane, o, oh, j1, g.OW, g)
        ww.start, ww.end, ww.padded_len = 0, g.KW, g.KW   # any interior window
        div = <floating>_divisor(g, wh, ww)
    else:
        _max_cols_value(plane, o, wh, 0, j0, g)
        _max_cols_value(plane, o, wh, j1, g.OW, g)
    if floating is float:
        fc_pool_cols_f32(plane, g.W, wh.start, wh.end, g.KW, g.stride_w, g.pad_left, j0, j1,
                         avg, div, o)
    else:
        fc_pool_cols_f64(plane, g.W, wh.start, wh.end, g.KW, g.stride_w, g.pad_left, j0, j1,
                         avg, div, o)


cdef inline void _pool_row_nhwc_vector(const floating* image, floating* o, Py_ssize_t oh,
                                       bint avg, const Geometry* g) noexcept nogil:
    """Output row oh of one image, (OW, C), value only, by the vector code."""
    cdef Window wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom if avg else 0)
    cdef Window ww
    cdef Py_ssize_t ow
    cdef floating div = 1
    for ow in range(g.OW):
        ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, g.pad_right if avg else 0)
        if avg:
            div = <floating>_divisor(g, wh, ww)
        if floating is float:
            fc_pool_pixel_nhwc_f32(image, g.W, g.C, wh.start, wh.end, ww.start, ww.end, avg,
                                   div, o + ow * g.C)
        else:
            fc_pool_pixel_nhwc_f64(image, g.W, g.C, wh.start, wh.end, ww.start, ww.end, avg,
                                   div, o + ow * g.C)


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
    cdef Py_ssize_t j0, j1
    _interior_cols(&g, &j0, &j1)
    cdef bint vector = ip == NULL and fc_pool_vector() and stride_w <= 2
    with nogil:
        for r in prange(N * C * OH, schedule="static", num_threads=n_threads):
            if vector:
                _pool_row_nchw_vector(xp + (r // OH) * H * W, op + r * OW, r % OH, j0, j1,
                                      False, &g)
            else:
                _max_cols_nchw(xp + (r // OH) * H * W, op + r * OW,
                               ip + r * OW if ip != NULL else NULL, r % OH, 0, OW, &g)


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
    cdef bint vector = ip == NULL and fc_pool_vector()
    with nogil:
        for r in prange(N * OH, schedule="static", num_threads=n_threads):
            if vector:
                _pool_row_nhwc_vector(xp + (r // OH) * H * W * C, op + r * OW * C, r % OH,
                                      False, &g)
            else:
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
    cdef Py_ssize_t j0, j1
    _interior_cols(&g, &j0, &j1)
    cdef bint vector = fc_pool_vector() and stride_w <= 2
    with nogil:
        for r in prange(N * C * OH, schedule="static", num_threads=n_threads):
            if vector:
                _pool_row_nchw_vector(xp + (r // OH) * H * W, op + r * OW, r % OH, j0, j1,
                                      True, &g)
            else:
                _avg_cols_nchw(xp + (r // OH) * H * W, op + r * OW, r % OH, 0, OW, &g)


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
    cdef bint vector = fc_pool_vector()
    with nogil:
        for r in prange(N * OH, schedule="static", num_threads=n_threads):
            if vector:
                _pool_row_nhwc_vector(xp + (r // OH) * H * W * C, op + r * OW * C, r % OH,
                                      True, &g)
            else:
                _avg_row_nhwc(xp + (r // OH) * H * W * C, op + r * OW * C, r % OH, &g)


# --------------------------------------------------------------------------------------------
# backward passes
#
# Each work item owns whole (n, c) planes of grad_x (NCHW: one plane; NHWC: one image's block of
# up to CHANNEL_BLOCK channels), zeroes them and adds every window's share in row-major output
# order. No two threads touch the same cell, and the order of the additions is fixed, so the
# result is deterministic for any thread count.



cdef inline void _max_backward_plane(
    const floating* x,      # IN  x[n, c]: (H, W), or NULL when idx is given
    const floating* gy,     # IN  grad_out[n, c]: (OH, OW)
    const int64_t* idx,     # IN  indices[n, c]: (OH, OW), or NULL to search the windows
    floating* gx,           # OUT grad_x[n, c]: (H, W)
    Py_ssize_t OH, const Geometry* g,
) noexcept nogil:
    cdef floating m[ROW_CHUNK]
    cdef int64_t best[ROW_CHUNK]
    cdef Py_ssize_t oh, ow, ow0, n, i
    memset(gx, 0, g.H * g.W * sizeof(floating))
    for oh in range(OH):
        if idx != NULL:
            for ow in range(g.OW):
                gx[idx[oh * g.OW + ow]] += gy[oh * g.OW + ow]
        else:
            ow0 = 0
            while ow0 < g.OW:
                n = g.OW - ow0 if g.OW - ow0 < ROW_CHUNK else ROW_CHUNK
                _max_chunk(x, oh, ow0, n, m, best, True, g)   # the forward pass's search
                for i in range(n):
                    gx[best[i]] += gy[oh * g.OW + ow0 + i]
                ow0 += n


def max_pool_backward_nchw(
    const floating[:, :, :, ::1] x,        # IN  (N, C, H, W), or (0, 0, 0, 0) when indices given
    const floating[:, :, :, ::1] grad_out, # IN  (N, C, OH, OW)
    const int64_t[:, :, :, ::1] indices,   # IN  like grad_out, or (0, 0, 0, 0) to search
    floating[:, :, :, ::1] grad_x,         # OUT (N, C, H, W), overwritten
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Max pooling backward, NCHW. One work item is one (n, c) plane."""
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[1], H = grad_x.shape[2]
    cdef Py_ssize_t W = grad_x.shape[3], OH = grad_out.shape[2], OW = grad_out.shape[3], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, 0, pad_left,
                                0, False, 0)
    if N * C * H * W == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0] if x.shape[0] > 0 else NULL
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef const int64_t* ip = &indices[0, 0, 0, 0] if indices.shape[0] > 0 else NULL
    cdef floating* op = &grad_x[0, 0, 0, 0]
    with nogil:
        for r in prange(N * C, schedule="static", num_threads=n_threads):
            _max_backward_plane(xp + r * H * W if xp != NULL else NULL, gp + r * OH * OW,
                                ip + r * OH * OW if ip != NULL else NULL, op + r * H * W,
                                OH, &g)


cdef inline void _max_backward_block(
    const floating* x,      # IN  x[n]: (H, W, C), or NULL when idx is given
    const floating* gy,     # IN  grad_out[n]: (OH, OW, C)
    const int64_t* idx,     # IN  indices[n]: (OH, OW, C), or NULL to search the window
    floating* gx,           # OUT grad_x[n]: (H, W, C); channels c0 .. c0+cb are written
    Py_ssize_t c0, Py_ssize_t cb, Py_ssize_t OH, const Geometry* g,
) noexcept nogil:
    cdef Py_ssize_t oh, ow, c, q, C = g.C
    cdef Window wh
    cdef floating m[CHANNEL_BLOCK]
    cdef int64_t best[CHANNEL_BLOCK]
    for q in range(g.H * g.W):
        memset(gx + q * C + c0, 0, cb * sizeof(floating))
    for oh in range(OH):
        wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, 0)
        for ow in range(g.OW):
            q = (oh * g.OW + ow) * C + c0
            if idx != NULL:
                for c in range(cb):
                    best[c] = idx[q + c]
            else:   # the forward pass's search
                _max_pixel(x + c0, wh, _window(ow, g.stride_w, g.pad_left, g.KW, g.W, 0), g.W,
                           C, cb, m, best)
            for c in range(cb):
                gx[best[c] * C + c0 + c] += gy[q + c]


def max_pool_backward_nhwc(
    const floating[:, :, :, ::1] x,        # IN  (N, H, W, C), or (0, 0, 0, 0) when indices given
    const floating[:, :, :, ::1] grad_out, # IN  (N, OH, OW, C)
    const int64_t[:, :, :, ::1] indices,   # IN  like grad_out, or (0, 0, 0, 0) to search
    floating[:, :, :, ::1] grad_x,         # OUT (N, H, W, C), overwritten
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Max pooling backward, NHWC. One work item is one image's block of channels."""
    cdef Py_ssize_t N = grad_x.shape[0], H = grad_x.shape[1], W = grad_x.shape[2]
    cdef Py_ssize_t C = grad_x.shape[3], OH = grad_out.shape[1], OW = grad_out.shape[2], r
    cdef Py_ssize_t blocks = (C + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK, c0, cb
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, 0, pad_left,
                                0, False, 0)
    if N * C * H * W == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0] if x.shape[0] > 0 else NULL
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef const int64_t* ip = &indices[0, 0, 0, 0] if indices.shape[0] > 0 else NULL
    cdef floating* op = &grad_x[0, 0, 0, 0]
    with nogil:
        for r in prange(N * blocks, schedule="static", num_threads=n_threads):
            c0 = (r % blocks) * CHANNEL_BLOCK
            cb = C - c0 if C - c0 < CHANNEL_BLOCK else CHANNEL_BLOCK
            _max_backward_block(xp + (r // blocks) * H * W * C if xp != NULL else NULL,
                                gp + (r // blocks) * OH * OW * C,
                                ip + (r // blocks) * OH * OW * C if ip != NULL else NULL,
                                op + (r // blocks) * H * W * C, c0, cb, OH, &g)


cdef inline void _avg_backward_plane(const floating* gy, floating* gx, Py_ssize_t OH,
                                     const Geometry* g) noexcept nogil:
    cdef Py_ssize_t oh, ow, h, w
    cdef Window wh, ww
    cdef floating share
    memset(gx, 0, g.H * g.W * sizeof(floating))
    for oh in range(OH):
        wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom)
        for ow in range(g.OW):
            ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, g.pad_right)
            share = gy[oh * g.OW + ow] / <floating>_divisor(g, wh, ww)
            for h in range(wh.start, wh.end):
                for w in range(ww.start, ww.end):
                    gx[h * g.W + w] += share


def avg_pool_backward_nchw(
    const floating[:, :, :, ::1] grad_out, # IN  (N, C, OH, OW)
    floating[:, :, :, ::1] grad_x,         # OUT (N, C, H, W), overwritten
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left, Py_ssize_t pad_right,
    bint count_include_pad, Py_ssize_t divisor_override, int n_threads,
):
    """Average pooling backward, NCHW. One work item is one (n, c) plane."""
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[1], H = grad_x.shape[2]
    cdef Py_ssize_t W = grad_x.shape[3], OH = grad_out.shape[2], OW = grad_out.shape[3], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, pad_bottom,
                                pad_left, pad_right, count_include_pad, divisor_override)
    if N * C * H * W == 0:
        return
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef floating* op = &grad_x[0, 0, 0, 0]
    with nogil:
        for r in prange(N * C, schedule="static", num_threads=n_threads):
            _avg_backward_plane(gp + r * OH * OW, op + r * H * W, OH, &g)


cdef inline void _avg_backward_image(const floating* gy, floating* gx, Py_ssize_t OH,
                                     const Geometry* g) noexcept nogil:
    cdef Py_ssize_t oh, ow, h, w, c, C = g.C
    cdef Window wh, ww
    cdef floating div
    cdef const floating* src
    cdef floating* dst
    memset(gx, 0, g.H * g.W * C * sizeof(floating))
    for oh in range(OH):
        wh = _window(oh, g.stride_h, g.pad_top, g.KH, g.H, g.pad_bottom)
        for ow in range(g.OW):
            ww = _window(ow, g.stride_w, g.pad_left, g.KW, g.W, g.pad_right)
            div = <floating>_divisor(g, wh, ww)
            src = gy + (oh * g.OW + ow) * C
            for h in range(wh.start, wh.end):
                for w in range(ww.start, ww.end):
                    dst = gx + (h * g.W + w) * C
                    for c in range(C):
                        dst[c] += src[c] / div


def avg_pool_backward_nhwc(
    const floating[:, :, :, ::1] grad_out, # IN  (N, OH, OW, C)
    floating[:, :, :, ::1] grad_x,         # OUT (N, H, W, C), overwritten
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t pad_top, Py_ssize_t pad_bottom, Py_ssize_t pad_left, Py_ssize_t pad_right,
    bint count_include_pad, Py_ssize_t divisor_override, int n_threads,
):
    """Average pooling backward, NHWC. One work item is one image; channels are the inner,
    vectorised loop."""
    cdef Py_ssize_t N = grad_x.shape[0], H = grad_x.shape[1], W = grad_x.shape[2]
    cdef Py_ssize_t C = grad_x.shape[3], OH = grad_out.shape[1], OW = grad_out.shape[2], r
    cdef Geometry g = _geometry(H, W, C, OW, KH, KW, stride_h, stride_w, pad_top, pad_bottom,
                                pad_left, pad_right, count_include_pad, divisor_override)
    if N * C * H * W == 0:
        return
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef floating* op = &grad_x[0, 0, 0, 0]
    with nogil:
        for r in prange(N, schedule="static", num_threads=n_threads):
            _avg_backward_image(gp + r * OH * OW * C, op + r * H * W * C, OH, &g)
