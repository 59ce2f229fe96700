"""im2col (window cells to matrix rows) and its adjoint col2im, NCHW and NHWC.

Compute only; see ``fastconv.im2col`` for the validated public functions. The column matrix has
one row per output pixel q = (n, oh, ow) and one column per window cell: (c, kh, kw) for NCHW,
(kh, kw, c) for NHWC. Cells that fall in the padding are written as zeros.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from fastconv._kernels._ranges cimport source_index, valid_range


def im2col_nchw(
    const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
    floating[:, ::1] cols,            # OUT (q1 - q0, c_count*KH*KW)
    Py_ssize_t q0, Py_ssize_t c0, Py_ssize_t KH, Py_ssize_t KW,
    Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Rows q0 .. q0+len(cols) of the column matrix, channels c0 .. c0+c_count (one group)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t n_rows = cols.shape[0], K = cols.shape[1]
    cdef Py_ssize_t c_count = K // (KH * KW)
    cdef Py_ssize_t i, q, n, oh, ow, c, kh, kw, ih, iw
    cdef const floating* plane
    cdef floating* row
    if n_rows == 0 or K == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* cp = &cols[0, 0]
    with nogil:
        for i in prange(n_rows, schedule="static", num_threads=n_threads):
            q = q0 + i
            n = q // (OH * OW)
            oh = (q // OW) % OH
            ow = q % OW
            row = cp + i * K
            for c in range(c_count):
                plane = xp + (n * C + c0 + c) * H * W
                for kh in range(KH):
                    ih = oh * stride_h - pad_top + kh * dilation_h
                    for kw in range(KW):
                        iw = ow * stride_w - pad_left + kw * dilation_w
                        if 0 <= ih < H and 0 <= iw < W:
                            row[(c * KH + kh) * KW + kw] = plane[ih * W + iw]
                        else:
                            row[(c * KH + kh) * KW + kw] = 0


def im2col_nchw_t(
    const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
    floating[:, :, ::1] cols_t,       # OUT (images, c_count*KH*KW, pixels)
    Py_ssize_t n0, Py_ssize_t p0, Py_ssize_t c0, Py_ssize_t KH, Py_ssize_t KW,
    Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """The transposed column matrix of images n0.., output pixels p0.., channels c0..: one row
    per window cell (c, kh, kw), one column per output pixel. With it the NCHW convolution is a
    plain row-major GEMM, ``weight (C_out, K) @ cols_t (K, pixels)``, and each row is filled by
    unit-stride copies of input rows (for stride 1)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t A = cols_t.shape[0], K = cols_t.shape[1], L = cols_t.shape[2]
    cdef Py_ssize_t r
    if A * K * L == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* cp = &cols_t[0, 0, 0]
    with nogil:
        for r in prange(A * K, schedule="static", num_threads=n_threads):
            _cols_t_row(xp + ((n0 + r // K) * C + c0 + (r % K) // (KH * KW)) * H * W,
                        cp + r * L, (r % K) % (KH * KW) // KW, (r % K) % KW, p0, L, H, W,
                        OW, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left)


cdef inline void _cols_t_row(
    const floating* plane,  # IN  the (H, W) input plane of this row's channel
    floating* row,          # OUT L entries: window cell (kh, kw) at output pixels p0 .. p0+L
    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t p0, Py_ssize_t L, Py_ssize_t H, Py_ssize_t W,
    Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
    Py_ssize_t pt, Py_ssize_t pl,
) noexcept nogil:
    cdef Py_ssize_t p = p0, end = p0 + L, oh, ow, ow_end, ih, off, lo, hi, i
    cdef const floating* src
    cdef floating* dst
    while p < end:
        # One output row's worth of pixels at a time: [ow, ow_end) of output row oh.
        oh = p // OW
        ow = p % OW
        ow_end = OW if end - p >= OW - ow else ow + (end - p)
        dst = row + (p - p0) - ow          # dst[ow'] is pixel (oh, ow')
        ih = oh * sh - pt + kh * dh
        off = kw * dw - pl                 # input column of ow' is ow' * sw + off
        if ih < 0 or ih >= H:
            lo = ow_end
            hi = ow_end
        else:
            lo = 0 if off >= 0 else (-off + sw - 1) // sw
            hi = 0 if W - 1 - off < 0 else (W - 1 - off) // sw + 1
            lo = ow if lo < ow else (ow_end if lo > ow_end else lo)
            hi = lo if hi < lo else (ow_end if hi > ow_end else hi)
        for i in range(ow, lo):
            dst[i] = 0
        if hi > lo:
            src = plane + ih * W + off     # src[i * sw] is input column i * sw + off
            if sw == 1:
                for i in range(lo, hi):
                    dst[i] = src[i]
            else:
                for i in range(lo, hi):
                    dst[i] = src[i * sw]
        for i in range(hi, ow_end):
            dst[i] = 0
        p += ow_end - ow


def im2col_nhwc(
    const floating[:, :, :, ::1] x,   # IN  (N, H, W, C)
    floating[:, ::1] cols,            # OUT (q1 - q0, KH*KW*c_count)
    Py_ssize_t q0, Py_ssize_t c0, Py_ssize_t KH, Py_ssize_t KW,
    Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Rows q0 .. q0+len(cols) of the column matrix, channels c0 .. c0+c_count (one group)."""
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t n_rows = cols.shape[0], K = cols.shape[1]
    cdef Py_ssize_t c_count = K // (KH * KW)
    cdef Py_ssize_t i, q, n, oh, ow, kh, kw, ih, iw, iw0
    cdef floating* dst
    # With every channel and no horizontal dilation, a window row (kh) is one contiguous run
    # of KW*C values in x and in the column row: one copy instead of KW (few-channel layers).
    cdef bint row_runs = c_count == C and dilation_w == 1
    if n_rows == 0 or K == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* cp = &cols[0, 0]
    with nogil:
        for i in prange(n_rows, schedule="static", num_threads=n_threads):
            q = q0 + i
            n = q // (OH * OW)
            oh = (q // OW) % OH
            ow = q % OW
            iw0 = ow * stride_w - pad_left
            for kh in range(KH):
                ih = oh * stride_h - pad_top + kh * dilation_h
                if row_runs and 0 <= ih < H and iw0 >= 0 and iw0 + KW <= W:
                    memcpy(cp + i * K + kh * KW * C, xp + ((n * H + ih) * W + iw0) * C,
                           KW * C * sizeof(floating))
                    continue
                for kw in range(KW):
                    iw = ow * stride_w - pad_left + kw * dilation_w
                    dst = cp + i * K + (kh * KW + kw) * c_count
                    # The channels of one input pixel are contiguous: one copy per cell.
                    if 0 <= ih < H and 0 <= iw < W:
                        memcpy(dst, xp + ((n * H + ih) * W + iw) * C + c0,
                               c_count * sizeof(floating))
                    else:
                        memset(dst, 0, c_count * sizeof(floating))


def col2im_nchw(
    const floating[:, ::1] cols,       # IN  (N*OH*OW, C*KH*KW)
    floating[:, :, :, ::1] x,          # OUT (N, C, H, W), fully overwritten
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Sum every column entry back into its input cell.

    Gathers per input cell (each cell is owned by one thread and summed in a fixed (kh, kw)
    order), so the result is deterministic and independent of the thread count.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = cols.shape[1]
    cdef Py_ssize_t r, n, c, ih, iw, kh, kw, oh, ow
    cdef floating acc
    if N * C * H * W == 0:
        return
    cdef const floating* cp = &cols[0, 0] if cols.shape[0] > 0 else NULL
    cdef floating* xp = &x[0, 0, 0, 0]
    with nogil:
        for r in prange(N * C * H, schedule="static", num_threads=n_threads):
            n = r // (C * H)
            c = (r // H) % C
            ih = r % H
            for iw in range(W):
                acc = 0
                for kh in range(KH):
                    oh = source_index(ih, kh, stride_h, dilation_h, pad_top, OH)
                    if oh < 0:
                        continue
                    for kw in range(KW):
                        ow = source_index(iw, kw, stride_w, dilation_w, pad_left, OW)
                        if ow >= 0:
                            acc = acc + cp[(n * OH * OW + oh * OW + ow) * K
                                           + (c * KH + kh) * KW + kw]
                xp[r * W + iw] = acc


cdef inline void _add_nhwc_row(
    const floating* cols,   # IN  the column rows of this row's image: (OH*OW, K)
    floating* row,          # IN/OUT input row ih of the image from channel c0: W cells, stride C
    Py_ssize_t ih, Py_ssize_t W, Py_ssize_t C, Py_ssize_t cc, Py_ssize_t K,
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw,
    Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl,
) noexcept nogil:
    """Add to each of the row's cells (cc channels) every column entry copied from it, in a
    fixed (kh, kw) order: a gather, so each cell is summed by one thread, deterministically."""
    cdef Py_ssize_t iw, kh, kw, oh, ow, c
    cdef floating* dst
    cdef const floating* src
    for iw in range(W):
        dst = row + iw * C
        for kh in range(KH):
            oh = source_index(ih, kh, sh, dh, pt, OH)
            if oh < 0:
                continue
            for kw in range(KW):
                ow = source_index(iw, kw, sw, dw, pl, OW)
                if ow >= 0:
                    src = cols + (oh * OW + ow) * K + (kh * KW + kw) * cc
                    for c in range(cc):
                        dst[c] += src[c]


def col2im_nhwc(
    const floating[:, ::1] cols,       # IN  (N*OH*OW, KH*KW*C)
    floating[:, :, :, ::1] x,          # OUT (N, H, W, C), fully overwritten
    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """NHWC col2im; deterministic for the same reason as :func:`col2im_nchw`."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t K = cols.shape[1]
    cdef Py_ssize_t r
    if N * H * W * C == 0:
        return
    cdef const floating* cp = &cols[0, 0] if cols.shape[0] > 0 else NULL
    cdef floating* xp = &x[0, 0, 0, 0]
    with nogil:
        for r in prange(N * H, schedule="static", num_threads=n_threads):
            memset(xp + r * W * C, 0, W * C * sizeof(floating))
            _add_nhwc_row(cp + (r // H) * OH * OW * K, xp + r * W * C, r % H, W, C, C, K,
                          KH, KW, OH, OW, stride_h, stride_w, dilation_h, dilation_w,
                          pad_top, pad_left)


cdef inline void _add_cols_t_plane(
    const floating* rows,   # IN  the KH*KW rows of this channel in cols_t: (KH*KW, L)
    floating* plane,        # IN/OUT the (H, W) plane the rows are added to
    Py_ssize_t p0, Py_ssize_t L, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
    Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
    Py_ssize_t pt, Py_ssize_t pl,
) noexcept nogil:
    cdef Py_ssize_t kh, kw, p, end = p0 + L, oh, ow, ow_end, ih, off, lo, hi, i
    cdef const floating* src
    cdef floating* dst
    for kh in range(KH):
        for kw in range(KW):
            off = kw * dw - pl
            p = p0
            while p < end:
                # One output row's worth of pixels at a time: [ow, ow_end) of output row oh.
                oh = p // OW
                ow = p % OW
                ow_end = OW if end - p >= OW - ow else ow + (end - p)
                ih = oh * sh - pt + kh * dh
                if 0 <= ih < H:
                    valid_range(off, sw, W, OW, &lo, &hi)
                    lo = ow if lo < ow else lo
                    hi = ow_end if hi > ow_end else hi
                    src = rows + (kh * KW + kw) * L + (p - p0) - ow   # src[i]: pixel (oh, i)
                    dst = plane + ih * W + off                         # dst[i*sw]: its cell
                    if sw == 1:
                        for i in range(lo, hi):
                            dst[i] += src[i]
                    else:
                        for i in range(lo, hi):
                            dst[i * sw] += src[i]
                p += ow_end - ow


def col2im_nchw_t_add(
    const floating[:, :, ::1] cols_t,  # IN  (images, c_count*KH*KW, L): pixels p0 .. p0+L
    floating[:, :, :, ::1] x,          # IN/OUT (N, C, H, W); images n0.., channels c0.. added to
    Py_ssize_t n0, Py_ssize_t p0, Py_ssize_t c0, Py_ssize_t KH, Py_ssize_t KW,
    Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Add a transposed column matrix (as built by :func:`im2col_nchw_t`) back into x.

    The adjoint of ``im2col_nchw_t``. One work item is one (image, channel) plane, whose taps
    are added in a fixed (kh, kw, pixel) order: deterministic for any thread count.
    """
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t A = cols_t.shape[0], K = cols_t.shape[1], L = cols_t.shape[2]
    cdef Py_ssize_t cc = K // (KH * KW), r
    if A * K * L == 0:
        return
    cdef const floating* cp = &cols_t[0, 0, 0]
    cdef floating* xp = &x[0, 0, 0, 0]
    with nogil:
        for r in prange(A * cc, schedule="static", num_threads=n_threads):
            _add_cols_t_plane(cp + r * KH * KW * L,
                              xp + ((n0 + r // cc) * C + c0 + r % cc) * H * W,
                              p0, L, H, W, KH, KW, OW, stride_h, stride_w, dilation_h,
                              dilation_w, pad_top, pad_left)


def col2im_nhwc_add(
    const floating[:, ::1] cols,       # IN  (images*OH*OW, KH*KW*c_count)
    floating[:, :, :, ::1] x,          # IN/OUT (N, H, W, C); images n0.., channels c0.. added to
    Py_ssize_t n0, Py_ssize_t c0, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """Add a column matrix of whole images (as built by :func:`im2col_nhwc`) back into x.

    Gathers per input pixel, in a fixed (kh, kw) order: deterministic for any thread count.
    """
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t K = cols.shape[1], cc = K // (KH * KW)
    cdef Py_ssize_t A = cols.shape[0] // (OH * OW)
    cdef Py_ssize_t r
    if A * H * W * cc == 0:
        return
    cdef const floating* cp = &cols[0, 0]
    cdef floating* xp = &x[0, 0, 0, 0]
    with nogil:
        for r in prange(A * H, schedule="static", num_threads=n_threads):
            _add_nhwc_row(cp + (r // H) * OH * OW * K, xp + ((n0 * H + r) * W) * C + c0,
                          r % H, W, C, cc, K, KH, KW, OH, OW, stride_h, stride_w, dilation_h,
                          dilation_w, pad_top, pad_left)
