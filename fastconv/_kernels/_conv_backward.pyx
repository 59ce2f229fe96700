"""Direct backward kernels of 2-D convolution, for the input and for the weight: any groups in
NCHW, and depthwise (one filter per channel) in NHWC.

Compute only; see ``fastconv.conv.conv2d_backward``. Both are deterministic: every output
element is owned by one work item, which sums its terms in a fixed order, so the result does not
depend on the number of threads. The inner loops run along output rows (unit stride for stride
1), which the compiler vectorises.
"""

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from fastconv._kernels._ranges cimport source_index, valid_range


cdef struct Geometry:
    Py_ssize_t H, W, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl


cdef inline void _input_plane(
    const floating* g,      # IN  grad_out[n, first output channel of the group]: (cog, OH, OW)
    const floating* w,      # IN  weight[first output channel of the group, cil]: co stride wstride
    floating* gx,           # OUT grad_x[n, ci]: (H, W), overwritten
    Py_ssize_t cog, Py_ssize_t wstride, const Geometry* q,
) noexcept nogil:
    cdef Py_ssize_t co, oh, kh, kw, ih, ow, off, lo, hi
    cdef const floating* grow
    cdef floating* xrow
    cdef floating wv
    memset(gx, 0, q.H * q.W * sizeof(floating))
    for co in range(cog):
        for oh in range(q.OH):
            grow = g + (co * q.OH + oh) * q.OW
            for kh in range(q.KH):
                ih = oh * q.sh - q.pt + kh * q.dh
                if ih < 0 or ih >= q.H:
                    continue
                xrow = gx + ih * q.W
                for kw in range(q.KW):
                    wv = w[co * wstride + kh * q.KW + kw]
                    off = kw * q.dw - q.pl
                    valid_range(off, q.sw, q.W, q.OW, &lo, &hi)
                    if q.sw == 1:
                        for ow in range(lo, hi):
                            xrow[ow + off] += wv * grow[ow]
                    else:
                        for ow in range(lo, hi):
                            xrow[ow * q.sw + off] += wv * grow[ow]


def conv2d_backward_input_nchw(
    const floating[:, :, :, ::1] grad_out,  # IN  (N, C_out, OH, OW)
    const floating[:, :, :, ::1] weight,    # IN  (C_out, C_in/groups, KH, KW)
    floating[:, :, :, ::1] grad_x,          # OUT (N, C_in, H, W), overwritten
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t groups, int n_threads,
):
    """grad_x of a convolution by scattering each output gradient through the kernel taps.

    One work item is one (n, c_in) plane: it adds the contributions of the group's output
    channels in order, so planes never overlap between threads.
    """
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[1]
    cdef Py_ssize_t C_out = weight.shape[0], cig = weight.shape[1]
    cdef Py_ssize_t cog = C_out // groups, r, n, ci, gi
    cdef Geometry q
    q.H, q.W, q.OH, q.OW = grad_x.shape[2], grad_x.shape[3], grad_out.shape[2], grad_out.shape[3]
    q.KH, q.KW, q.sh, q.sw = weight.shape[2], weight.shape[3], stride_h, stride_w
    q.dh, q.dw, q.pt, q.pl = dilation_h, dilation_w, pad_top, pad_left
    if N * C * q.H * q.W == 0:
        return
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0, 0]
    cdef floating* xp = &grad_x[0, 0, 0, 0]
    cdef Py_ssize_t wstride = cig * q.KH * q.KW
    with nogil:
        for r in prange(N * C, schedule="static", num_threads=n_threads):
            n = r // C
            ci = r % C
            gi = ci // cig
            _input_plane(gp + (n * C_out + gi * cog) * q.OH * q.OW,
                         wp + (gi * cog * cig + ci % cig) * q.KH * q.KW,
                         xp + r * q.H * q.W, cog, wstride, &q)


cdef inline void _weight_item(
    const floating* g,      # IN  grad_out[0, co]: image stride gstride
    const floating* x,      # IN  x[0, ci]: image stride xstride
    floating* gw,           # OUT grad_weight[co, cil]: (KH, KW), overwritten
    floating* acc,          # scratch (KH*KW, OW)
    Py_ssize_t N, Py_ssize_t gstride, Py_ssize_t xstride, const Geometry* q,
) noexcept nogil:
    cdef Py_ssize_t n, oh, kh, kw, ih, ow, off, lo, hi, t
    cdef const floating* grow
    cdef const floating* xrow
    cdef floating* a
    cdef floating s
    memset(acc, 0, q.KH * q.KW * q.OW * sizeof(floating))
    # Per-tap row accumulators instead of scalar sums: element-wise updates vectorise, and the
    # final sum over a row is done once, in a fixed order.
    for n in range(N):
        for oh in range(q.OH):
            grow = g + n * gstride + oh * q.OW
            for kh in range(q.KH):
                ih = oh * q.sh - q.pt + kh * q.dh
                if ih < 0 or ih >= q.H:
                    continue
                xrow = x + n * xstride + ih * q.W
                for kw in range(q.KW):
                    off = kw * q.dw - q.pl
                    valid_range(off, q.sw, q.W, q.OW, &lo, &hi)
                    a = acc + (kh * q.KW + kw) * q.OW
                    if q.sw == 1:
                        for ow in range(lo, hi):
                            a[ow] += grow[ow] * xrow[ow + off]
                    else:
                        for ow in range(lo, hi):
                            a[ow] += grow[ow] * xrow[ow * q.sw + off]
    for t in range(q.KH * q.KW):
        s = 0
        for ow in range(q.OW):
            s = s + acc[t * q.OW + ow]
        gw[t] = s


def conv2d_backward_weight_nchw(
    const floating[:, :, :, ::1] grad_out,  # IN  (N, C_out, OH, OW)
    const floating[:, :, :, ::1] x,         # IN  (N, C_in, H, W)
    floating[:, :, :, ::1] grad_weight,     # OUT (C_out, C_in/groups, KH, KW), overwritten
    floating[:, ::1] scratch,               # (n_threads, KH*KW*OW)
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t groups, int n_threads,
):
    """grad_weight of a convolution. One work item is one (c_out, c_in/groups) filter slice,
    summed over the batch in order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t C_out = grad_weight.shape[0], cig = grad_weight.shape[1]
    cdef Py_ssize_t cog = C_out // groups, r, co, cil
    cdef Geometry q
    q.H, q.W, q.OH, q.OW = x.shape[2], x.shape[3], grad_out.shape[2], grad_out.shape[3]
    q.KH, q.KW, q.sh, q.sw = grad_weight.shape[2], grad_weight.shape[3], stride_h, stride_w
    q.dh, q.dw, q.pt, q.pl = dilation_h, dilation_w, pad_top, pad_left
    if C_out * cig == 0:
        return
    cdef floating* wp = &grad_weight[0, 0, 0, 0]
    cdef floating* sp = &scratch[0, 0]
    cdef Py_ssize_t s_len = scratch.shape[1]
    if N == 0:
        memset(wp, 0, C_out * cig * q.KH * q.KW * sizeof(floating))
        return
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0, 0]
    with nogil:
        for r in prange(C_out * cig, schedule="static", num_threads=n_threads):
            co = r // cig
            cil = r % cig
            _weight_item(gp + co * q.OH * q.OW, xp + ((co // cog) * cig + cil) * q.H * q.W,
                         wp + r * q.KH * q.KW, sp + threadid() * s_len,
                         N, C_out * q.OH * q.OW, C * q.H * q.W, &q)


# --------------------------------------------------------------------------------------------
# depthwise, NHWC: channels are the inner, vectorised loop


cdef inline void _depthwise_input_row(
    const floating* gy,     # IN  grad_out[n]: (OH, OW, C)
    const floating* w,      # IN  weight: (KH, KW, 1, C)
    floating* gx,           # OUT grad_x[n, ih]: (W, C), overwritten
    Py_ssize_t ih, Py_ssize_t C, const Geometry* q,
) noexcept nogil:
    cdef Py_ssize_t iw, kh, kw, oh, ow, c
    cdef floating* dst
    cdef const floating* src
    cdef const floating* wv
    for iw in range(q.W):
        dst = gx + iw * C
        for c in range(C):
            dst[c] = 0
        for kh in range(q.KH):
            oh = source_index(ih, kh, q.sh, q.dh, q.pt, q.OH)
            if oh < 0:
                continue
            for kw in range(q.KW):
                ow = source_index(iw, kw, q.sw, q.dw, q.pl, q.OW)
                if ow < 0:
                    continue
                src = gy + (oh * q.OW + ow) * C
                wv = w + (kh * q.KW + kw) * C
                for c in range(C):
                    dst[c] += wv[c] * src[c]


def depthwise_backward_input_nhwc(
    const floating[:, :, :, ::1] grad_out,  # IN  (N, OH, OW, C)
    const floating[:, :, :, ::1] weight,    # IN  (KH, KW, 1, C)
    floating[:, :, :, ::1] grad_x,          # OUT (N, H, W, C), overwritten
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """grad_x of a depthwise convolution (groups == C_in == C_out), NHWC. Gathers per input
    pixel in a fixed (kh, kw) order; one work item is one input row (n, ih)."""
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[3], r
    cdef Geometry q
    q.H, q.W, q.OH, q.OW = grad_x.shape[1], grad_x.shape[2], grad_out.shape[1], grad_out.shape[2]
    q.KH, q.KW, q.sh, q.sw = weight.shape[0], weight.shape[1], stride_h, stride_w
    q.dh, q.dw, q.pt, q.pl = dilation_h, dilation_w, pad_top, pad_left
    if N * q.H * q.W * C == 0:
        return
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0, 0]
    cdef floating* xp = &grad_x[0, 0, 0, 0]
    with nogil:
        for r in prange(N * q.H, schedule="static", num_threads=n_threads):
            _depthwise_input_row(gp + (r // q.H) * q.OH * q.OW * C, wp, xp + r * q.W * C,
                                 r % q.H, C, &q)


cdef inline void _depthwise_weight_block(
    const floating* gy,     # IN  grad_out: (N, OH, OW, C), from channel c0
    const floating* x,      # IN  x: (N, H, W, C), from channel c0
    floating* gw,           # OUT grad_weight: (KH, KW, 1, C), from channel c0; cb written
    floating* acc,          # scratch (KH*KW, cb)
    Py_ssize_t N, Py_ssize_t C, Py_ssize_t cb, const Geometry* q,
) noexcept nogil:
    cdef Py_ssize_t n, oh, ow, kh, kw, ih, iw, c, t
    cdef const floating* g
    cdef const floating* xv
    cdef floating* a
    memset(acc, 0, q.KH * q.KW * cb * sizeof(floating))
    for n in range(N):
        for oh in range(q.OH):
            for ow in range(q.OW):
                g = gy + ((n * q.OH + oh) * q.OW + ow) * C
                for kh in range(q.KH):
                    ih = oh * q.sh - q.pt + kh * q.dh
                    if ih < 0 or ih >= q.H:
                        continue
                    for kw in range(q.KW):
                        iw = ow * q.sw - q.pl + kw * q.dw
                        if iw < 0 or iw >= q.W:
                            continue
                        xv = x + ((n * q.H + ih) * q.W + iw) * C
                        a = acc + (kh * q.KW + kw) * cb
                        for c in range(cb):
                            a[c] += g[c] * xv[c]
    for t in range(q.KH * q.KW):
        for c in range(cb):
            gw[t * C + c] = acc[t * cb + c]


def depthwise_backward_weight_nhwc(
    const floating[:, :, :, ::1] grad_out,  # IN  (N, OH, OW, C)
    const floating[:, :, :, ::1] x,         # IN  (N, H, W, C)
    floating[:, :, :, ::1] grad_weight,     # OUT (KH, KW, 1, C), overwritten
    floating[:, ::1] scratch,               # (n_threads, KH*KW*block)
    Py_ssize_t block,
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, int n_threads,
):
    """grad_weight of a depthwise convolution, NHWC. One work item is a block of channels,
    each summed over the batch in (n, oh, ow, kh, kw) order whatever the block size."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[3], r, c0, cb
    cdef Py_ssize_t blocks = (C + block - 1) // block
    cdef Geometry q
    q.H, q.W, q.OH, q.OW = x.shape[1], x.shape[2], grad_out.shape[1], grad_out.shape[2]
    q.KH, q.KW, q.sh, q.sw = grad_weight.shape[0], grad_weight.shape[1], stride_h, stride_w
    q.dh, q.dw, q.pt, q.pl = dilation_h, dilation_w, pad_top, pad_left
    if C == 0:
        return
    cdef floating* wp = &grad_weight[0, 0, 0, 0]
    cdef floating* sp = &scratch[0, 0]
    cdef Py_ssize_t s_len = scratch.shape[1]
    if N == 0:
        memset(wp, 0, q.KH * q.KW * C * sizeof(floating))
        return
    cdef const floating* gp = &grad_out[0, 0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0, 0]
    with nogil:
        for r in prange(blocks, schedule="static", num_threads=n_threads):
            c0 = r * block
            cb = C - c0 if C - c0 < block else block
            _depthwise_weight_block(gp + c0, xp + c0, wp + c0, sp + threadid() * s_len,
                                    N, C, cb, &q)
