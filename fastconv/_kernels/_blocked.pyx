"""Blocked direct convolution: register-blocked implicit GEMM on a prepared copy of each image.

Compute only: ``fastconv.conv`` validates the arguments, packs the weights, builds the offset
table and sizes the scratch buffers (see ``fastconv.conv._conv_blocked``). The micro-kernels
and their drivers are C (``_blocked.h``); this module prepares the images and spreads the
work over the OpenMP team.

The prepared image ("xs") is the zero-padded input split into its ``stride_h * stride_w``
stride phases: phase (a, b) holds rows a, a + sh, ... and columns b, b + sw, ... of the padded
image, each phase Hs x Ws. Then output pixel (oh, ow), on a grid Ws wide, reads tap (kh, kw)
at a fixed offset from pixel oh * Ws + ow, in every stride, dilation and padding, which the
micro-kernels need. NCHW images are prepared as (phase, C, Hs, Ws), NHWC as (phase, Hs, Ws, C).
"""

from cython cimport floating
from cpython.pyport cimport PY_SSIZE_T_MAX
from cython.parallel cimport prange, threadid
from fastconv._kernels._ranges cimport share_start
from libc.string cimport memcpy, memset


cdef extern from "_blocked.h" nogil:
    Py_ssize_t fc_vec_len_f32()
    Py_ssize_t fc_vec_len_f64()
    Py_ssize_t fc_pix_rows()
    Py_ssize_t fc_pix_vecs()
    Py_ssize_t fc_ch_rows()
    Py_ssize_t fc_ch_vecs()
    Py_ssize_t fc_plane_vecs()
    void fc_prep_row_f32(float* dst, const float* src, Py_ssize_t n, Py_ssize_t zl,
                         Py_ssize_t zr)
    int fc_prep_phases_f32(float* dst, Py_ssize_t phase_len, const float* src, Py_ssize_t sw,
                           Py_ssize_t pl, Py_ssize_t ja, Py_ssize_t jb)
    int fc_prep_phases_f64(double* dst, Py_ssize_t phase_len, const double* src,
                           Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t ja, Py_ssize_t jb)
    void fc_prep_row_f64(double* dst, const double* src, Py_ssize_t n, Py_ssize_t zl,
                         Py_ssize_t zr)
    void fc_pix_blocks_f32(const float* xs, const Py_ssize_t* off, const float* wpack,
                           Py_ssize_t K, Py_ssize_t qb0, Py_ssize_t qb1, float* out,
                           const float* bias, Py_ssize_t cog, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t Ws, int relu, Py_ssize_t ocs, Py_ssize_t ops,
                           Py_ssize_t qmax)
    void fc_pix_blocks_f64(const double* xs, const Py_ssize_t* off, const double* wpack,
                           Py_ssize_t K, Py_ssize_t qb0, Py_ssize_t qb1, double* out,
                           const double* bias, Py_ssize_t cog, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t Ws, int relu, Py_ssize_t ocs, Py_ssize_t ops,
                           Py_ssize_t qmax)
    void fc_plane_blocks_f32(const float* xs, const Py_ssize_t* off, const float* w,
                             Py_ssize_t K, Py_ssize_t qb0, Py_ssize_t qb1, float* out,
                             const float* bias, Py_ssize_t cog, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t Ws, int relu, Py_ssize_t ocs, Py_ssize_t ops,
                           Py_ssize_t qmax)
    void fc_plane_blocks_f64(const double* xs, const Py_ssize_t* off, const double* w,
                             Py_ssize_t K, Py_ssize_t qb0, Py_ssize_t qb1, double* out,
                             const double* bias, Py_ssize_t cog, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t Ws, int relu, Py_ssize_t ocs, Py_ssize_t ops,
                           Py_ssize_t qmax)
    void fc_dw_nhwc_row_f32(const float* x, const float* w, const float* bias, float* out,
                            Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                            Py_ssize_t KW, Py_ssize_t OW, Py_ssize_t ih0, Py_ssize_t sw,
                            Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pl, int relu,
                            int stream)
    void fc_dw_nhwc_row_f64(const double* x, const double* w, const double* bias, double* out,
                            Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                            Py_ssize_t KW, Py_ssize_t OW, Py_ssize_t ih0, Py_ssize_t sw,
                            Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pl, int relu,
                            int stream)
    int fc_dw_nhwc_pair_ok(Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t ih0, Py_ssize_t H)
    void fc_dw_nhwc_pair_f32(const float* x, const float* w, const float* bias, float* out,
                             Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW,
                             Py_ssize_t ih0, Py_ssize_t pl, int relu, int stream)
    void fc_dw_nhwc_pair_f64(const double* x, const double* w, const double* bias,
                             double* out, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OW, Py_ssize_t ih0, Py_ssize_t pl, int relu,
                             int stream)
    void fc_ch_blocks_f32(const float* xs, Py_ssize_t ps, const Py_ssize_t* off,
                          const float* wpack, Py_ssize_t K, Py_ssize_t qb0, Py_ssize_t qb1,
                          float* out, const float* bias, Py_ssize_t cog, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t Ws, int relu, Py_ssize_t ocs,
                          Py_ssize_t ops, int prefetch_x)
    void fc_ch_blocks_f64(const double* xs, Py_ssize_t ps, const Py_ssize_t* off,
                          const double* wpack, Py_ssize_t K, Py_ssize_t qb0, Py_ssize_t qb1,
                          double* out, const double* bias, Py_ssize_t cog, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t Ws, int relu, Py_ssize_t ocs,
                          Py_ssize_t ops, int prefetch_x)


cdef extern from "_stream.h" nogil:
    int fc_stream_ok()
    void fc_stream_fence()


cdef extern from "_plane_rows.h" nogil:
    int fc_plane_rows_native()
    void fc_plane_rows_f32(const float* x, Py_ssize_t H, Py_ssize_t W, const float* w,
                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t pt, Py_ssize_t pl, float* out, Py_ssize_t OW,
                           Py_ssize_t oh0, Py_ssize_t oh1, float bias, int relu)
    void fc_plane_rows_f64(const double* x, Py_ssize_t H, Py_ssize_t W, const double* w,
                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t pt, Py_ssize_t pl, double* out, Py_ssize_t OW,
                           Py_ssize_t oh0, Py_ssize_t oh1, double bias, int relu)


cdef extern from "_peak.h" nogil:
    double fc_peak_madds_f32(long iters)
    double fc_peak_madds_f64(long iters)
    double fc_peak_loop_f32(long iters, float m)
    double fc_peak_loop_f64(long iters, double m)


def peak_loop(long iters, int n_threads, bint float64=False):
    """Run the multiply-add loop of ``_peak.h`` (this build's vector width, 12 independent
    accumulators) for ``iters`` rounds on each of ``n_threads`` threads of one OpenMP team,
    as the kernels run. Returns the floating-point operations done (two per multiply-add)
    and the sum of every thread's final accumulator lanes, which keeps the loop computed and
    lets a test check its rounds. The caller times the call (``python -m fastconv bench``:
    the FMA peak ceiling)."""
    cdef int t
    cdef double sink = 0
    if iters < 0 or n_threads < 1:
        raise ValueError(f"peak_loop: iters ({iters}) must be >= 0 and n_threads "
                         f"({n_threads}) >= 1")
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            if float64:
                sink += fc_peak_loop_f64(iters, 0.999999)
            else:
                sink += fc_peak_loop_f32(iters, 0.999999)
    flops = 2.0 * n_threads * (fc_peak_madds_f64(iters) if float64 else fc_peak_madds_f32(iters))
    return flops, sink


def plane_rows_native():
    """Whether this build level has the masked loads that :func:`conv2d_plane_rows` is
    written for (AVX2, AVX-512); elsewhere it works lane by lane and is slower than
    :func:`conv2d_planes`."""
    return bool(fc_plane_rows_native())


def block_sizes(Py_ssize_t itemsize):
    """Block sizes of this build for float32 (itemsize 4) or float64 (8), as a dict:
    ``pix_rows`` output channels x ``pix_pixels`` pixels (NCHW), ``ch_pixels`` pixels x
    ``ch_cols`` output channels (NHWC), ``plane_pixels`` pixels of one output channel
    (:func:`conv2d_planes`), and ``vector``, the elements of one vector."""
    cdef Py_ssize_t vlen = fc_vec_len_f32() if itemsize == 4 else fc_vec_len_f64()
    return {"vector": vlen, "pix_rows": fc_pix_rows(), "pix_pixels": fc_pix_vecs() * vlen,
            "ch_pixels": fc_ch_rows(), "ch_cols": fc_ch_vecs() * vlen,
            "plane_pixels": fc_plane_vecs() * vlen}


# --------------------------------------------------------------------------------------------
# weight packing

# Taps per tile of pack_weight along a contiguous K: a tile's (PACK_TILE, block) panel (8 KiB
# for 64 float32 taps of a 32-channel block) stays in L1 while the block's channels fill it.
cdef enum:
    PACK_TILE = 64


def pack_weight(
    const floating[:, :, :] w,             # IN  (groups, C_out/groups, K), any strides
    floating[:, :, :, ::1] packed,         # OUT (groups, co blocks, K, block width)
    int n_threads=1,
):
    """Pack the weight into the layout the micro-kernels stream: for each group and block of
    ``block`` output channels, K rows of ``block`` weights; columns past the group's last
    channel are zero. ``n_threads``: (group, channel block) items shared out over this many.

    Read along whichever of K and the channels is closer in memory: an OIHW weight row by
    row, in tiles of PACK_TILE taps, an HWIO one a row of ``block`` channels per tap. (Before
    the tiles, a block's channels were read along K one after the other, each writing a
    column of the whole (K, block) panel: packing ResNet's 1024->256 1x1 weight, 1 MB, took
    0.56 ms; now 0.16 on one thread, 0.086 on two. A loop here costs well under a
    microsecond on a small layer, where the same packing with NumPy slicing took 5.)"""
    cdef Py_ssize_t groups = w.shape[0], cog = w.shape[1], K = w.shape[2]
    cdef Py_ssize_t n_cb = packed.shape[1], block = packed.shape[3]
    cdef Py_ssize_t item_size = sizeof(floating)
    if (packed.shape[0], packed.shape[2]) != (groups, K) or n_cb * block < cog:
        raise ValueError(f"pack_weight: packed {tuple(packed.shape)[:4]} does not hold a "
                         f"weight of {groups} groups x {cog} channels x {K} taps")
    if any(w.strides[i] % item_size for i in range(3)):
        raise ValueError(f"pack_weight: strides {tuple(w.strides)[:3]} are not multiples of "
                         f"the item size {item_size}")
    if groups == 0 or n_cb == 0 or K == 0:
        return
    cdef Py_ssize_t sg = w.strides[0] // item_size, sc = w.strides[1] // item_size
    cdef Py_ssize_t sk = w.strides[2] // item_size
    cdef bint k_inner = abs(sk) <= abs(sc) or cog == 1
    cdef Py_ssize_t n_tiles = (K + PACK_TILE - 1) // PACK_TILE
    cdef int threads = n_threads if n_threads > 1 else 1
    cdef const floating* wp = &w[0, 0, 0] if cog > 0 else NULL
    cdef floating* pp = &packed[0, 0, 0, 0]
    cdef Py_ssize_t item, g, cb, k, tile, k0, n_k, j, valid
    cdef const floating* src
    cdef floating* dst
    with nogil:
        for item in prange(groups * n_cb, schedule="static", num_threads=threads):
            g = item // n_cb
            cb = item % n_cb
            dst = pp + item * K * block
            valid = min(block, cog - cb * block)   # channels of this block that exist
            if valid < 0:
                valid = 0
            src = wp + g * sg + cb * block * sc if valid > 0 else NULL
            if k_inner:
                for tile in range(n_tiles):
                    k0 = tile * PACK_TILE
                    n_k = min(K - k0, <Py_ssize_t>PACK_TILE)
                    for j in range(block):
                        if j < valid:
                            for k in range(n_k):
                                dst[(k0 + k) * block + j] = src[j * sc + (k0 + k) * sk]
                        else:
                            for k in range(n_k):
                                dst[(k0 + k) * block + j] = 0
            else:
                for k in range(K):
                    for j in range(valid):
                        dst[k * block + j] = src[j * sc + k * sk]
                    for j in range(valid, block):
                        dst[k * block + j] = 0


# --------------------------------------------------------------------------------------------
# image preparation

cdef inline Py_ssize_t _first_column(Py_ssize_t b, Py_ssize_t sw, Py_ssize_t pl) noexcept nogil:
    """The first column j of stride phase b whose pixel j * sw + b - pl lies inside the image
    (columns before it are left padding)."""
    return (pl - b + sw - 1) // sw if pl > b else 0


cdef inline Py_ssize_t _end_column(Py_ssize_t W, Py_ssize_t b, Py_ssize_t sw, Py_ssize_t pl,
                                   Py_ssize_t Ws, Py_ssize_t j0) noexcept nogil:
    """One past the last column j < Ws of stride phase b inside a W-wide image, and not
    before ``j0``, its _first_column (columns from it on are right padding)."""
    cdef Py_ssize_t j1 = (W - 1 + pl - b) // sw + 1 if W - 1 + pl - b >= 0 else 0
    if j1 > Ws:
        j1 = Ws
    return j1 if j1 > j0 else j0


cdef inline void _prep_columns(
    const floating* src, floating* row, Py_ssize_t W, Py_ssize_t b, Py_ssize_t sw,
    Py_ssize_t pl, Py_ssize_t j0, Py_ssize_t j1,
) noexcept nogil:
    """Columns j0 <= j < j1 of phase b's row, one at a time: src[j * sw + b - pl], or zero
    where that is padding."""
    cdef Py_ssize_t j, col
    for j in range(j0, j1):
        col = j * sw + b - pl
        row[j] = src[col] if 0 <= col < W else 0


cdef inline void _prep_nchw_row(
    const floating* src,   # IN  row ih of channel c: (W,), or NULL for a padding row
    floating* row,         # OUT row i of phase (a, b), channel c: (Ws,)
    Py_ssize_t W, Py_ssize_t b, Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t Ws,
) noexcept nogil:
    cdef Py_ssize_t j0, j1
    if src == NULL:
        memset(row, 0, Ws * sizeof(floating))
    elif sw == 1:
        j0 = _first_column(b, sw, pl)
        j1 = _end_column(W, b, sw, pl, Ws, j0)
        if floating is float:
            fc_prep_row_f32(row, src + j0 + b - pl, j1 - j0, j0, Ws - j1)
        else:
            fc_prep_row_f64(row, src + j0 + b - pl, j1 - j0, j0, Ws - j1)
    else:
        _prep_columns(src, row, W, b, sw, pl, 0, Ws)


cdef inline void _prep_nchw_plane(
    const floating* x,     # IN  channel c of the image: (H, W)
    floating* xs,          # OUT rows i0 <= i < i1 of channel c of every phase (a, b): row i
                           #     of phase a * sw + b at xs + (a * sw + b) * phase_len
                           #     + (i - i0) * Ws
    Py_ssize_t H, Py_ssize_t W, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
    Py_ssize_t pl, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t Ws, Py_ssize_t phase_len,
) noexcept nogil:
    """Rows i0 <= i < i1 of one channel's phases, reading the padded image's rows in order,
    each into its sw column phases while it is in L1 (a phase at a time read every sh-th
    row, sw times over), for strides 2 and 4 a vector of columns at a time (see
    fc_prep_phases)."""
    cdef Py_ssize_t i, a, b, ih
    cdef const floating* src
    cdef floating* row
    cdef int done
    # Columns [ja, jb) of every column phase lie inside the row (see fc_prep_phases).
    cdef Py_ssize_t ja = (pl + sw - 1) // sw
    cdef Py_ssize_t jb = (W + pl - sw) // sw + 1 if W + pl >= sw else 0
    jb = min(max(jb, ja), Ws)
    ja = min(ja, jb)
    for i in range(i0, i1):
        for a in range(sh):
            ih = i * sh + a - pt
            src = x + ih * W if 0 <= ih < H else NULL
            row = xs + a * sw * phase_len + (i - i0) * Ws
            done = 0
            if src != NULL:
                if floating is float:
                    done = fc_prep_phases_f32(row, phase_len, src, sw, pl, ja, jb)
                else:
                    done = fc_prep_phases_f64(row, phase_len, src, sw, pl, ja, jb)
            if not done:
                for b in range(sw):
                    _prep_nchw_row(src, row + b * phase_len, W, b, sw, pl, Ws)
                continue
            for b in range(sw):   # the columns around [ja, jb): padding or the row's ends
                _prep_columns(src, row + b * phase_len, W, b, sw, pl, 0, ja)
                _prep_columns(src, row + b * phase_len, W, b, sw, pl, jb, Ws)


cdef inline void _prep_nhwc_row(
    const floating* x,     # IN  the image: (H, W, C)
    floating* xs,          # OUT phase (a, b), row i: (Ws, C)
    Py_ssize_t i, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t a, Py_ssize_t b,
    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t Ws,
) noexcept nogil:
    cdef Py_ssize_t j, c, ih, j0, j1
    cdef const floating* src
    ih = i * sh + a - pt
    if ih < 0 or ih >= H:
        memset(xs, 0, Ws * C * sizeof(floating))
        return
    src = x + ih * W * C
    j0 = _first_column(b, sw, pl)
    j1 = _end_column(W, b, sw, pl, Ws, j0)
    if j0 > 0:
        memset(xs, 0, j0 * C * sizeof(floating))
    if sw == 1:
        memcpy(xs + j0 * C, src + (j0 + b - pl) * C, (j1 - j0) * C * sizeof(floating))
    elif C >= 16:
        for j in range(j0, j1):
            memcpy(xs + j * C, src + (j * sw + b - pl) * C, C * sizeof(floating))
    else:
        # A few channels (RGB stems): a call per pixel would cost more than the copy.
        for j in range(j0, j1):
            for c in range(C):
                xs[j * C + c] = src[(j * sw + b - pl) * C + c]
    if j1 < Ws:
        memset(xs + j1 * C, 0, (Ws - j1) * C * sizeof(floating))


cdef inline void _prep_nhwc_row_planar(
    const floating* x,     # IN  the image: (H, W, C)
    floating* xs,          # OUT phase (a, b): (C, Hs, Ws), row i of each channel written
    Py_ssize_t i, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t a, Py_ssize_t b,
    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t Hs, Py_ssize_t Ws,
) noexcept nogil:
    """Row i of an NHWC image's stride phase, prepared channel-planar (as an NCHW image's
    planes) for the pix kernel: each input pixel's channels read together, written to C
    planes, so the image is read once in memory order."""
    cdef Py_ssize_t j, c, ih, j0, j1, plane = Hs * Ws
    cdef const floating* src
    cdef floating* row = xs + i * Ws
    ih = i * sh + a - pt
    if ih < 0 or ih >= H:
        for c in range(C):
            memset(row + c * plane, 0, Ws * sizeof(floating))
        return
    j0 = _first_column(b, sw, pl)
    j1 = _end_column(W, b, sw, pl, Ws, j0)
    for c in range(C):
        if j0 > 0:
            memset(row + c * plane, 0, j0 * sizeof(floating))
        if j1 < Ws:
            memset(row + c * plane + j1, 0, (Ws - j1) * sizeof(floating))
    src = x + ih * W * C
    for j in range(j0, j1):
        for c in range(C):
            row[c * plane + j] = src[(j * sw + b - pl) * C + c]


cdef inline void _prep_item(
    const floating* x, floating* xs, Py_ssize_t item, bint nhwc, bint planar,
    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t sh, Py_ssize_t sw,
    Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t Hs, Py_ssize_t Ws,
) noexcept nogil:
    """One unit of image preparation, of _prep_items: NCHW a band of a channel's rows, NHWC
    one padded row, into every phase it belongs to (phase (a, b) is number a * sw + b), in
    an NHWC prepared image or (``planar``) a channel-planar one. Units in order read the
    image in order."""
    cdef Py_ssize_t a, b, i, phase, c, i0, i1
    if nhwc:
        a = item % sh
        i = item // sh
        for b in range(sw):   # one input row, still in L1, into each column phase
            phase = a * sw + b
            if planar:
                _prep_nhwc_row_planar(x, xs + phase * C * Hs * Ws, i, H, W, C, a, b, sh, sw,
                                      pt, pl, Hs, Ws)
            else:
                _prep_nhwc_row(x, xs + (phase * Hs + i) * Ws * C, i, H, W, C, a, b, sh, sw,
                               pt, pl, Ws)
    else:
        c = item // sh
        i0 = (item % sh) * Hs // sh
        i1 = (item % sh + 1) * Hs // sh
        _prep_nchw_plane(x + c * H * W, xs + (c * Hs + i0) * Ws, H, W, sh, sw, pt, pl, i0, i1,
                         Ws, C * Hs * Ws)


cdef inline Py_ssize_t _prep_items(bint nhwc, Py_ssize_t C, Py_ssize_t Hs,
                                   Py_ssize_t sh) noexcept nogil:
    """How many _prep_item units make an image: NCHW sh bands of rows per channel (as many
    as there are row phases, to keep a one-image call's team busy), NHWC one unit per padded
    row."""
    return sh * (Hs if nhwc else C)


# --------------------------------------------------------------------------------------------
# block loops

cdef inline void _blocks(
    const floating* xs, const Py_ssize_t* off, const floating* wpack, Py_ssize_t K,
    Py_ssize_t qb0, Py_ssize_t qb1,
    floating* out, const floating* bias, bint ch, bint out_nhwc, Py_ssize_t ps,
    Py_ssize_t C_out, Py_ssize_t cog, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Ws, int relu,
    Py_ssize_t qmax, int prefetch_x,
) noexcept nogil:
    """The pixel blocks [qb0, qb1) of one group of one image, by the ch kernel (``ch``) or
    the pix kernel, into an NHWC (``out_nhwc``) or NCHW result; ``qmax``: where the pix
    kernel's blocks start at the latest (see fc_pix_blocks); ``prefetch_x``: the ch kernel
    prefetches x ahead (an NHWC x read in place, see fc_ch_blocks)."""
    cdef Py_ssize_t ocs = 1 if out_nhwc else OH * OW
    cdef Py_ssize_t ops = C_out if out_nhwc else 1
    if ch:
        if floating is float:
            fc_ch_blocks_f32(xs, ps, off, wpack, K, qb0, qb1, out, bias, cog, OH, OW, Ws,
                             relu, ocs, ops, prefetch_x)
        else:
            fc_ch_blocks_f64(xs, ps, off, wpack, K, qb0, qb1, out, bias, cog, OH, OW, Ws,
                             relu, ocs, ops, prefetch_x)
    else:
        if floating is float:
            fc_pix_blocks_f32(xs, off, wpack, K, qb0, qb1, out, bias, cog, OH, OW,
                              Ws, relu, ocs, ops, qmax)
        else:
            fc_pix_blocks_f64(xs, off, wpack, K, qb0, qb1, out, bias, cog, OH, OW,
                              Ws, relu, ocs, ops, qmax)


cdef bint _offsets_within(const Py_ssize_t[:, ::1] off, Py_ssize_t last):
    """Whether every tap offset lies in [0, last]."""
    cdef Py_ssize_t g, k
    for g in range(off.shape[0]):
        for k in range(off.shape[1]):
            if off[g, k] < 0 or off[g, k] > last:
                return False
    return True


def conv2d_blocked(
    const floating[:, :, :, ::1] x,        # IN  (N, C_in, H, W) or (N, H, W, C_in)
    const floating[:, :, :, ::1] wpack,    # IN  (groups, co blocks, K, block width)
    const Py_ssize_t[:, ::1] off,          # IN  (groups, K) tap offsets into xs
    const floating[::1] bias,              # IN  (C_out,) or (0,) for none
    floating[:, :, :, ::1] out,            # OUT (N, C_out, OH, OW) or (N, OH, OW, C_out)
    floating[:, ::1] xs_buf,               # SCRATCH (buffers, xs size); slack zeroed
    bint nhwc, Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_top,
    Py_ssize_t pad_left, Py_ssize_t Hs, Py_ssize_t Ws, Py_ssize_t n_qblocks,
    Py_ssize_t q_chunk, bint prepared, bint relu, int n_threads, bint out_nhwc=False,
    bint ch_nchw=False, bint planar=False,
):
    """Blocked direct convolution of a batch.

    With one scratch buffer per thread (``xs_buf.shape[0] >= n_threads``) the images are
    shared out whole: each thread prepares an image in its own buffer and computes all of it.
    With one buffer, the images are done one after the other, each prepared and then computed
    by the whole team, split into (group, ``q_chunk`` pixel blocks) items. ``prepared``: x
    already is the prepared image (a 1x1 convolution without stride or padding), so it is
    read in place; NCHW planes then have no slack after them, and the pix kernel's last block
    is moved back to end at its plane's end (see fc_pix_blocks), which needs planes of at
    least one block of pixels. ``out_nhwc`` (with ``nhwc`` False): an NCHW x, computed by the pix
    kernel, into an NHWC result (for few output channels, which the ch kernel would waste).
    ``ch_nchw`` (with ``nhwc`` False): an NCHW x, computed by the ch kernel, into an NCHW
    result (for small output planes, whose grid the pix kernel's pixel blocks would waste).
    ``planar`` (with ``nhwc``): the NHWC x is prepared channel-planar, as an NCHW image would
    be, and computed by the pix kernel into the NHWC result (few output channels again).
    """
    if planar and (not nhwc or prepared or ch_nchw):
        raise ValueError("conv2d_blocked: planar preparation is for an NHWC x that is not "
                         "read in place, computed by the pix kernel")
    cdef bint out_last = nhwc or out_nhwc     # the result is channels-last
    cdef bint ch = (nhwc and not planar) or ch_nchw   # the ch micro-kernel
    cdef Py_ssize_t pix_block = fc_pix_vecs() * (fc_vec_len_f32() if floating is float
                                                 else fc_vec_len_f64())
    # An NCHW x read in place: the pix kernel's last block moves back into its plane.
    cdef Py_ssize_t qmax = PY_SSIZE_T_MAX
    if prepared and not nhwc:
        if ((stride_h, stride_w, pad_top, pad_left, Hs, Ws) != (1, 1, 0, 0, x.shape[2],
                                                                  x.shape[3])
                or (out.shape[2], out.shape[3]) != (x.shape[2], x.shape[3])
                or wpack.shape[0] * wpack.shape[2] != x.shape[1]
                or not _offsets_within(off, (x.shape[1] - 1) * x.shape[2] * x.shape[3])):
            raise ValueError("conv2d_blocked: an NCHW x is read in place only for a 1x1 "
                             "convolution without stride or padding")
    if prepared and not nhwc and not ch:
        qmax = x.shape[2] * x.shape[3] - pix_block
        if qmax < 0:
            raise ValueError(f"conv2d_blocked: the pix kernel reads an NCHW x in place only "
                             f"for planes of at least {pix_block} pixels, got "
                             f"{x.shape[2]}x{x.shape[3]}")
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[3] if nhwc else x.shape[1]
    cdef Py_ssize_t H = x.shape[1] if nhwc else x.shape[2]
    cdef Py_ssize_t W = x.shape[2] if nhwc else x.shape[3]
    cdef Py_ssize_t C_out = out.shape[3] if out_last else out.shape[1]
    cdef Py_ssize_t OH = out.shape[1] if out_last else out.shape[2]
    cdef Py_ssize_t OW = out.shape[2] if out_last else out.shape[3]
    cdef Py_ssize_t groups = wpack.shape[0], n_cb = wpack.shape[1], K = wpack.shape[2]
    cdef Py_ssize_t cog = C_out // groups
    cdef Py_ssize_t n_prep = _prep_items(nhwc, C, Hs, stride_h)
    cdef Py_ssize_t image = H * W * C, out_image = OH * OW * C_out
    cdef Py_ssize_t ps = C if ch and nhwc else 1
    cdef Py_ssize_t n_chunks = (n_qblocks + q_chunk - 1) // q_chunk
    cdef Py_ssize_t n, g, item, qc, tid, buf_len = xs_buf.shape[1]
    cdef bint per_thread = xs_buf.shape[0] >= n_threads and n_threads > 1
    # An NHWC x read in place comes from memory, not from a prepared copy in cache.
    cdef int prefetch_x = prepared and nhwc
    if N == 0 or OH == 0 or OW == 0 or C_out == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &wpack[0, 0, 0, 0]
    cdef const Py_ssize_t* offp = &off[0, 0]
    cdef const floating* bp = &bias[0] if bias.shape[0] > 0 else NULL
    cdef floating* op = &out[0, 0, 0, 0]
    cdef floating* bufp = &xs_buf[0, 0]
    cdef floating* xs
    with nogil:
        if per_thread:
            for n in prange(N, schedule="static", num_threads=n_threads):
                tid = threadid()
                xs = <floating*>(xp + n * image) if prepared else bufp + tid * buf_len
                for item in range(0 if prepared else n_prep):
                    _prep_item(xp + n * image, xs, item, nhwc, planar, C, H, W, stride_h,
                               stride_w, pad_top, pad_left, Hs, Ws)
                for g in range(groups):
                    _blocks(xs, offp + g * K, wp + g * n_cb * K * wpack.shape[3], K,
                            0, n_qblocks,
                            op + n * out_image + (g * cog if out_last else g * cog * OH * OW),
                            bp + g * cog if bp != NULL else NULL,
                            ch, out_last, ps, C_out, cog, OH, OW, Ws, relu, qmax, prefetch_x)
        else:
            for n in range(N):
                xs = <floating*>(xp + n * image) if prepared else bufp
                for item in prange(0 if prepared else n_prep, schedule="static",
                                   num_threads=n_threads):
                    _prep_item(xp + n * image, xs, item, nhwc, planar, C, H, W, stride_h,
                               stride_w, pad_top, pad_left, Hs, Ws)
                for item in prange(groups * n_chunks, schedule="static",
                                   num_threads=n_threads):
                    g = item // n_chunks
                    qc = item % n_chunks
                    _blocks(xs, offp + g * K, wp + g * n_cb * K * wpack.shape[3], K,
                            qc * q_chunk, min(n_qblocks, (qc + 1) * q_chunk),
                            op + n * out_image + (g * cog if out_last else g * cog * OH * OW),
                            bp + g * cog if bp != NULL else NULL,
                            ch, out_last, ps, C_out, cog, OH, OW, Ws, relu, qmax, prefetch_x)


def conv2d_planes(
    const floating[:, :, :, ::1] x,        # IN  (N, C_in, H, W)
    const floating[:, ::1] weight,         # IN  (C_out, K): one output channel per group
    const Py_ssize_t[::1] off,             # IN  (K,) tap offsets into one group's xs
    const floating[::1] bias,              # IN  (C_out,) or (0,) for none
    floating[:, :, :, ::1] out,            # OUT (N, C_out, OH, OW)
    floating[:, ::1] xs_buf,               # SCRATCH (n_threads, xs size); slack zeroed
    Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_top, Py_ssize_t pad_left,
    Py_ssize_t Hs, Py_ssize_t Ws, Py_ssize_t n_qblocks, Py_ssize_t band_rows,
    Py_ssize_t band_in_rows, bint relu, int n_threads,
):
    """NCHW convolution with one output channel per group (depthwise, single filters).

    One work item is one (image, group): its thread prepares only that group's input
    channels (for depthwise, one padded plane that stays in L1) and computes its output
    plane with the one-channel micro-kernel, so x and out each pass through memory once.

    With ``band_rows < OH`` (stride 1 and one input channel per group only) a work item is a
    band of ``band_rows`` output rows of one plane instead: its thread prepares the
    ``band_in_rows`` padded rows the band reads (``band_rows`` plus the kernel's reach) and
    computes the band, so that a large plane is shared by several threads and each band's
    prepared rows stay in cache. ``n_qblocks`` then counts one band's pixel blocks.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t C_out = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t K = weight.shape[1], cig = C // C_out
    cdef Py_ssize_t n_prep = _prep_items(False, cig, Hs, stride_h)
    cdef Py_ssize_t buf_len = xs_buf.shape[1], item, i, n, g, plane, oh0, rows, i1
    cdef Py_ssize_t n_bands = (OH + band_rows - 1) // band_rows if band_rows > 0 else 1
    cdef Py_ssize_t q_block = fc_plane_vecs() * (fc_vec_len_f32() if floating is float
                                                 else fc_vec_len_f64())
    cdef Py_ssize_t n_qb
    cdef floating* xs
    if N == 0 or C_out == 0 or OH == 0 or OW == 0:
        return
    if n_bands > 1 and (stride_h * stride_w * cig != 1 or band_in_rows * Ws > buf_len
                        or n_qblocks * q_block > buf_len):
        raise ValueError("conv2d_planes: row bands need stride 1, one input channel per group "
                         "and a scratch row for a whole band")
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0]
    cdef const Py_ssize_t* offp = &off[0]
    cdef const floating* bp = &bias[0] if bias.shape[0] > 0 else NULL
    cdef floating* op = &out[0, 0, 0, 0]
    cdef floating* bufp = &xs_buf[0, 0]
    with nogil:
        for item in prange(N * C_out * n_bands, schedule="static", num_threads=n_threads):
            plane = item // n_bands
            n = plane // C_out
            g = plane % C_out
            xs = bufp + threadid() * buf_len
            if n_bands == 1:
                oh0 = 0
                rows = OH
                n_qb = n_qblocks
                for i in range(n_prep):
                    _prep_item(xp + (n * C + g * cig) * H * W, xs, i, False, False, cig, H, W,
                               stride_h, stride_w, pad_top, pad_left, Hs, Ws)
            else:
                # A band: output rows oh0 <= oh < oh0 + rows read padded rows oh0 onwards.
                oh0 = (item % n_bands) * band_rows
                rows = OH - oh0 if OH - oh0 < band_rows else band_rows
                i1 = oh0 + band_in_rows if oh0 + band_in_rows < Hs else Hs
                n_qb = (rows * Ws + q_block - 1) // q_block   # the last band may be shorter
                _prep_nchw_plane(xp + plane * H * W, xs, H, W, 1, 1, pad_top, pad_left, oh0,
                                 i1, Ws, 0)
            if floating is float:
                fc_plane_blocks_f32(xs, offp, wp + g * K, K, 0, n_qb,
                                    op + plane * OH * OW + oh0 * OW,
                                    bp + g if bp != NULL else NULL, 1, rows, OW, Ws, relu,
                                    OH * OW, 1, PY_SSIZE_T_MAX)
            else:
                fc_plane_blocks_f64(xs, offp, wp + g * K, K, 0, n_qb,
                                    op + plane * OH * OW + oh0 * OW,
                                    bp + g if bp != NULL else NULL, 1, rows, OW, Ws, relu,
                                    OH * OW, 1, PY_SSIZE_T_MAX)


def conv2d_plane_rows(
    const floating[:, :, :, ::1] x,        # IN  (N, C, H, W), C == C_out: one per group
    const floating[:, ::1] weight,         # IN  (C_out, KH * KW)
    const floating[::1] bias,              # IN  (C_out,) or (0,) for none
    floating[:, :, :, ::1] out,            # OUT (N, C_out, OH, OW), OW = W + pads - reach
    Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
    Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t band_rows, bint relu, int n_threads,
):
    """Stride-1 convolution with one input and one output channel per group, read straight
    from x (see ``_plane_rows.h``): no prepared copy, no scratch. A work item is a band of
    ``band_rows`` output rows of one plane (a whole plane when ``band_rows >= OH``). Taps on
    padding contribute zeros (rows outside x are skipped, columns outside loaded as zeros):
    the caller sends non-finite weights with row padding to :func:`conv2d_planes`, whose
    padding zeros are real."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t C_out = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t K = kernel_h * kernel_w, n_bands, item, plane, oh0, oh1
    if N == 0 or C_out == 0 or OH == 0 or OW == 0:
        return
    # Reads stay inside x for any output size and padding (rows outside are skipped, lanes
    # outside a row masked) once the kernel and dilation are positive.
    if (C != C_out or x.shape[0] != out.shape[0] or weight.shape[0] != C_out
            or kernel_h < 1 or kernel_w < 1 or dilation_h < 1 or dilation_w < 1
            or weight.shape[1] != kernel_h * kernel_w or band_rows < 1
            or (bias.shape[0] != 0 and bias.shape[0] != C_out)):
        raise ValueError("conv2d_plane_rows: inconsistent shapes")
    n_bands = (OH + band_rows - 1) // band_rows
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0]
    cdef floating* op = &out[0, 0, 0, 0]
    cdef bint has_bias = bias.shape[0] > 0
    with nogil:
        for item in prange(N * C_out * n_bands, schedule="static", num_threads=n_threads):
            plane = item // n_bands
            oh0 = (item % n_bands) * band_rows
            oh1 = oh0 + band_rows if oh0 + band_rows < OH else OH
            if floating is float:
                fc_plane_rows_f32(xp + plane * H * W, H, W, wp + (plane % C_out) * K,
                                  kernel_h, kernel_w, dilation_h, dilation_w, pad_top,
                                  pad_left, op + plane * OH * OW, OW, oh0, oh1,
                                  bias[plane % C_out] if has_bias else 0, relu)
            else:
                fc_plane_rows_f64(xp + plane * H * W, H, W, wp + (plane % C_out) * K,
                                  kernel_h, kernel_w, dilation_h, dilation_w, pad_top,
                                  pad_left, op + plane * OH * OW, OW, oh0, oh1,
                                  bias[plane % C_out] if has_bias else 0, relu)


def conv2d_depthwise_nhwc(
    const floating[:, :, :, ::1] x,        # IN  (N, H, W, C)
    const floating[:, ::1] weight,         # IN  (KH*KW, C): HWIO with one input channel
    const floating[::1] bias,              # IN  (C,) or (0,) for none
    floating[:, :, :, ::1] out,            # OUT (N, OH, OW, C)
    Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
    Py_ssize_t dilation_h, Py_ssize_t dilation_w, Py_ssize_t pad_top, Py_ssize_t pad_left,
    bint relu, int n_threads, bint stream=False, bint pairs=True,
):
    """NHWC depthwise convolution, one work item per output row (n, oh); each pixel keeps a
    block of channels in registers over all taps. With ``pairs``, two rows at a time where
    the kernel is 3x3 with stride and dilation 1 and their input rows lie inside the image
    (fc_dw_nhwc_pair: the same bits; ``pairs=False`` is there for the tests to show it).
    Returns the number of row pairs so computed.
    Taps on padding are skipped: the caller pads x explicitly when the weight is not finite.
    With ``stream`` (and a build that has them) aligned result vectors are written by
    streaming stores, each thread taking one contiguous share of the rows and fencing after
    its last (see _stream.h)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2]
    cdef Py_ssize_t r, n, oh, ih0, t, r0, r1, rows = N * OH, n_pairs = 0
    if rows == 0 or OW == 0 or C == 0:
        return 0
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0]
    cdef const floating* bp = &bias[0] if bias.shape[0] > 0 else NULL
    cdef floating* op = &out[0, 0, 0, 0]
    cdef bint streaming = stream and fc_stream_ok()
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            r0 = share_start(rows, n_threads, t)
            r1 = share_start(rows, n_threads, t + 1)
            r = r0
            while r < r1:
                n = r // OH
                oh = r % OH
                ih0 = oh * stride_h - pad_top
                if pairs and r + 1 < r1 and oh + 1 < OH and fc_dw_nhwc_pair_ok(
                        kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, ih0, H):
                    if floating is float:
                        fc_dw_nhwc_pair_f32(xp + n * H * W * C, wp, bp, op + r * OW * C, C, H,
                                            W, OW, ih0, pad_left, relu, streaming)
                    else:
                        fc_dw_nhwc_pair_f64(xp + n * H * W * C, wp, bp, op + r * OW * C, C, H,
                                            W, OW, ih0, pad_left, relu, streaming)
                    r = r + 2
                    n_pairs += 1
                    continue
                if floating is float:
                    fc_dw_nhwc_row_f32(xp + n * H * W * C, wp, bp, op + r * OW * C, C, H, W,
                                       kernel_h, kernel_w, OW, ih0, stride_w, dilation_h,
                                       dilation_w, pad_left, relu, streaming)
                else:
                    fc_dw_nhwc_row_f64(xp + n * H * W * C, wp, bp, op + r * OW * C, C, H, W,
                                       kernel_h, kernel_w, OW, ih0, stride_w, dilation_h,
                                       dilation_w, pad_left, relu, streaming)
                r = r + 1
            if streaming:
                fc_stream_fence()   # after the thread's last streaming store
    return n_pairs
