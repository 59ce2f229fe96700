"""Direct 2-D convolution kernels (cross-correlation), NCHW and NHWC.

Compute only: every argument has been validated, normalised and made C-contiguous by
``fastconv.conv``. ``bias`` of length 0 means "no bias". The GIL is released for the whole
computation; work is split over output rows so that both cores are busy even at batch size 1.
"""

from cython cimport floating
from cython.parallel cimport prange

from fastconv._kernels._ranges cimport valid_range


cdef inline void _relu_inplace(floating* y, Py_ssize_t n) noexcept nogil:
    # `v <= 0` is false for NaN, so NaN propagates (as in PyTorch). An unconditional store of a
    # select vectorises; a conditional store would branch, and mispredict on random signs.
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = y[i]
        y[i] = 0 if v <= 0 else v


cdef inline void _nchw_row(
    const floating* x,      # IN  first input channel of this group, image n: (cig, H, W)
    const floating* w,      # IN  weight[co]: (cig, KH, KW)
    floating* o,            # OUT out[n, co, oh, :]: (OW,)
    floating b, Py_ssize_t cig, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
    Py_ssize_t OW, Py_ssize_t ih0, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
    Py_ssize_t pl, bint relu,
) noexcept nogil:
    cdef Py_ssize_t ci, kh, kw, ih, ow, off, lo, hi
    cdef const floating* xrow
    cdef floating wv
    for ow in range(OW):
        o[ow] = b
    for ci in range(cig):
        for kh in range(KH):
            ih = ih0 + kh * dh
            if ih < 0 or ih >= H:
                continue
            xrow = x + (ci * H + ih) * W
            for kw in range(KW):
                wv = w[(ci * KH + kh) * KW + kw]
                off = kw * dw - pl
                valid_range(off, sw, W, OW, &lo, &hi)
                # Unit stride gets its own loop so the compiler vectorises it.
                if sw == 1:
                    for ow in range(lo, hi):
                        o[ow] += wv * xrow[ow + off]
                else:
                    for ow in range(lo, hi):
                        o[ow] += wv * xrow[ow * sw + off]
    if relu:
        _relu_inplace(o, OW)


def conv2d_direct_nchw(
    const floating[:, :, :, ::1] x,        # IN  (N, C_in, H, W)
    const floating[:, :, :, ::1] weight,   # IN  (C_out, C_in/groups, KH, KW)
    const floating[::1] bias,              # IN  (C_out,) or (0,) for none
    floating[:, :, :, ::1] out,            # OUT (N, C_out, OH, OW)
    Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left,
    Py_ssize_t groups, bint relu, int n_threads,
):
    """Direct convolution, NCHW. One work item is one output row (n, co, oh)."""
    cdef Py_ssize_t N = x.shape[0], C_in = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t C_out = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t cig = weight.shape[1], KH = weight.shape[2], KW = weight.shape[3]
    cdef Py_ssize_t cog = C_out // groups
    cdef Py_ssize_t n_rows = N * C_out * OH
    cdef Py_ssize_t r, n, co, oh
    cdef bint has_bias = bias.shape[0] > 0
    if n_rows == 0 or OW == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef const floating* bp = &bias[0] if has_bias else NULL
    with nogil:
        for r in prange(n_rows, schedule="static", num_threads=n_threads):
            n = r // (C_out * OH)
            co = (r // OH) % C_out
            oh = r % OH
            _nchw_row(
                xp + (n * C_in + (co // cog) * cig) * H * W,
                wp + co * cig * KH * KW,
                op + r * OW,
                bp[co] if has_bias else 0,
                cig, H, W, KH, KW, OW, oh * stride_h - pad_top, stride_w,
                dilation_h, dilation_w, pad_left, relu,
            )


cdef inline void _nhwc_pixel(
    const floating* x,      # IN  image n: (H, W, C_in)
    const floating* w,      # IN  (KH, KW, cig, C_out)
    const floating* b,      # IN  (C_out,) or NULL
    floating* o,            # OUT out[n, oh, ow, :]: (C_out,)
    Py_ssize_t H, Py_ssize_t W, Py_ssize_t C_in, Py_ssize_t C_out, Py_ssize_t KH,
    Py_ssize_t KW, Py_ssize_t cig, Py_ssize_t cog, Py_ssize_t groups,
    Py_ssize_t ih0, Py_ssize_t iw0, Py_ssize_t dh, Py_ssize_t dw, bint relu,
) noexcept nogil:
    cdef Py_ssize_t kh, kw, ih, iw, g, ci, j, c
    cdef const floating* xpix
    cdef const floating* wk
    cdef const floating* wrow
    cdef floating xv
    for c in range(C_out):
        o[c] = b[c] if b != NULL else 0
    for kh in range(KH):
        ih = ih0 + kh * dh
        if ih < 0 or ih >= H:
            continue
        for kw in range(KW):
            iw = iw0 + kw * dw
            if iw < 0 or iw >= W:
                continue
            xpix = x + (ih * W + iw) * C_in
            wk = w + (kh * KW + kw) * cig * C_out
            if cig == 1 and cog == 1:
                # Depthwise: channel c of x meets weight column c; one unit-stride loop.
                for c in range(C_out):
                    o[c] += xpix[c] * wk[c]
            else:
                for g in range(groups):
                    for ci in range(cig):
                        xv = xpix[g * cig + ci]
                        wrow = wk + ci * C_out + g * cog
                        for j in range(cog):
                            o[g * cog + j] += xv * wrow[j]
    if relu:
        _relu_inplace(o, C_out)


def conv2d_direct_nhwc(
    const floating[:, :, :, ::1] x,        # IN  (N, H, W, C_in)
    const floating[:, :, :, ::1] weight,   # IN  (KH, KW, C_in/groups, C_out)
    const floating[::1] bias,              # IN  (C_out,) or (0,) for none
    floating[:, :, :, ::1] out,            # OUT (N, OH, OW, C_out)
    Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left,
    Py_ssize_t groups, bint relu, int n_threads,
):
    """Direct convolution, NHWC. One work item is one output row (n, oh)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C_in = x.shape[3]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2], C_out = out.shape[3]
    cdef Py_ssize_t KH = weight.shape[0], KW = weight.shape[1], cig = weight.shape[2]
    cdef Py_ssize_t cog = C_out // groups
    cdef Py_ssize_t n_rows = N * OH
    cdef Py_ssize_t r, n, oh, ow
    if n_rows == 0 or OW == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef const floating* bp = &bias[0] if bias.shape[0] > 0 else NULL
    with nogil:
        for r in prange(n_rows, schedule="static", num_threads=n_threads):
            n = r // OH
            oh = r % OH
            for ow in range(OW):
                _nhwc_pixel(
                    xp + n * H * W * C_in, wp, bp, op + (r * OW + ow) * C_out,
                    H, W, C_in, C_out, KH, KW, cig, cog, groups,
                    oh * stride_h - pad_top, ow * stride_w - pad_left,
                    dilation_h, dilation_w, relu,
                )


cdef inline void _epilogue_row(floating* row, Py_ssize_t n, const floating* bias_vec,
                               floating bias_scalar, bint relu) noexcept nogil:
    """row[i] += bias_vec[i] (or bias_scalar when bias_vec is NULL), then ReLU if asked.

    Branch-free loops with unit stride, one per case, so each vectorises."""
    cdef Py_ssize_t i
    cdef floating v
    if bias_vec != NULL:
        if relu:
            for i in range(n):
                v = row[i] + bias_vec[i]
                row[i] = 0 if v <= 0 else v
        else:
            for i in range(n):
                row[i] = row[i] + bias_vec[i]
    elif relu:
        for i in range(n):
            v = row[i] + bias_scalar
            row[i] = 0 if v <= 0 else v
    else:
        for i in range(n):
            row[i] = row[i] + bias_scalar


def add_bias_relu(
    floating[:, :, :] y,          # IN/OUT (A, B, C), any strides but a contiguous last axis
    const floating[::1] bias,     # IN  per-channel bias or (0,) for none
    int channel_axis,             # 1: channel is axis B (NCHW tiles); 2: axis C (NHWC tiles)
    bint relu, int n_threads,
):
    """Epilogue of the im2col path: add the per-channel bias and apply ReLU in one pass."""
    cdef Py_ssize_t A = y.shape[0], B = y.shape[1], C = y.shape[2]
    cdef Py_ssize_t r
    cdef bint has_bias = bias.shape[0] > 0
    if A * B == 0 or C == 0 or not (has_bias or relu):
        return
    if y.strides[2] != sizeof(floating):
        raise ValueError("add_bias_relu: the last axis of y must be contiguous")
    cdef const floating* bp = &bias[0] if has_bias else NULL
    with nogil:
        for r in prange(A * B, schedule="static", num_threads=n_threads):
            _epilogue_row(&y[r // B, r % B, 0], C,
                          bp if channel_axis == 2 else NULL,
                          bp[r % B] if has_bias and channel_axis == 1 else 0, relu)
