"""2-D convolution: the public ``conv2d``."""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import types
from typing import Iterable, Literal, Mapping, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _buffers, _threads, _validate
from ._validate import IntPair, PaddingArg
from ._isa import kernel_module

_conv = kernel_module("_conv")
_blocked = kernel_module("_blocked")
_conv_backward = kernel_module("_conv_backward")
_im2col = kernel_module("_im2col")

__all__ = ["conv2d", "conv2d_backward"]


# Upper bound on the im2col scratch matrix of one call. The column matrix is built and
# multiplied tile by tile, so memory stays bounded whatever the batch size.
IM2COL_TILE_BYTES = 8 * 2**20

# Forward "auto" (see choose_algorithm) runs the blocked direct kernel on dense calls of at least
# this many multiply-adds; 1x1 calls without stride or padding (see _pointwise_runs_blocked)
# only from this many output pixels per call.
AUTO_BLOCKED_MIN_MACS = 2**20
AUTO_POINTWISE_MIN_PIXELS = 196

# Otherwise (and in the backward pass) "auto" picks im2col + GEMM when the GEMM is big enough
# for BLAS to pay off: a reduction length
# (C_in/groups * KH * KW) and an output-channel count per group both of at least these sizes,
# per layout. Below that (depthwise, single-channel filters) the plain direct loops win.
# Measured against those loops (python -m fastconv bench --algorithms all): LeNet's first layer
# (reduction 25, 6 channels) runs 2x faster with im2col in NCHW, 20% slower in NHWC.
AUTO_MIN_REDUCTION = {"NCHW": 16, "NHWC": 32}
# Small NHWC calls (under AUTO_BLOCKED_MIN_MACS) whose outputs fill most of the ch kernel's
# channel block run it from this many output pixels per image (see choose_algorithm).
AUTO_SMALL_NHWC_MIN_PIXELS = 81
# Small NHWC calls with few outputs that the pix kernel takes (see _pix_for_nhwc) run it from
# this many of its pixel blocks per image.
AUTO_SMALL_NHWC_PIX_BLOCKS = 4
AUTO_MIN_CHANNELS = {"NCHW": 4, "NHWC": 8}

# The direct algorithm runs the register-blocked kernel when a group has at least this many
# output channels (a block of outputs shares each input load); with fewer (depthwise, single
# filters) the plain loops below win.
BLOCKED_MIN_CHANNELS = {"NCHW": 4, "NHWC": 4}
# Scratch buffers of the blocked kernel up to this size are kept between calls, per Python
# thread (see _scratch_array).
SCRATCH_CACHE_BYTES = 64 * 2**20
# Views of those buffers kept per Python thread, by slot, shape and dtype.
SCRATCH_VIEWS = 64
_scratch = threading.local()

# Multiply-adds worth a thread of the blocked kernel (below that one thread does it all), when
# whole images go to each thread (one parallel region per call), and when one image is split
# over the team (two regions per image). Measured on the 2-core AVX-512 VM with the wait
# policy fastconv sets (GOMP_SPINCOUNT=300), one thread against two, medians of 1500-2000
# back-to-back calls, 3 rounds: whole images pay off from about 1M multiply-adds (the bound
# below gives two threads from 800K; LeNet conv2 at batch 32, 7.7M: 281 against 203-208 us;
# LeNet conv1 at batch 32, 3.8M: 195 against 117-124; 16->16 32x32 3x3 at batch 4, 9.4M: 221
# against 146; LeNet conv2 at batch 4, 0.96M: 46 against 36-37; at batch 2, 0.48M: 29
# against 29), a split image from about 10M (32->64
# 28x28 3x3, 14.5M: 300 against 250; 64->64 14x14, 7.2M: 177 against 180-182; 16->32 32x32,
# 4.7M: 112 against 132-151). (Under libgomp's default wait policy, sleeping workers had put
# both bounds at 10M and 30M.)
BLOCKED_MACS_PER_THREAD = 400_000
BLOCKED_SPLIT_MACS_PER_THREAD = 5_000_000
# The same for the one-output-channel kernel (one region per call; memory-bound, so a thread
# pays off sooner: depthwise 3x3 at batch 1, 3.6M, ran 1.2-1.7x faster on two).
PLANES_MACS_PER_THREAD = 200_000
# Bands of the one-output-channel kernel: the prepared rows of one band fit in this much
# cache (half the 512 KiB L2 of a Zen 3 core), and a band has at least this many output rows.
PLANE_BAND_BYTES = 256 * 2**10
PLANE_BAND_MIN_ROWS = 8
# Stride-1 one-channel calls read x in place (conv2d_plane_rows) where the level has masked
# loads; False sends them through the prepared copy too (tests compare the two). Planes
# larger than PLANE_ROWS_MAX_BYTES do so only when there are at most
# PLANE_ROWS_MAX_LARGE_PLANES of them (see _runs_plane_rows).
PLANE_ROWS = True
PLANE_ROWS_MAX_BYTES = 256 * 2**10
PLANE_ROWS_MAX_LARGE_PLANES = 8

# Weights of at least this many elements are packed for the blocked kernel on the call's
# threads (ResNet's 1024->256 1x1 weight, 262144: 0.157 ms on one, 0.086 on two; a
# parallel region costs a few microseconds, which a 64->64 3x3 weight, 0.024 ms, would feel).
PACK_PARALLEL_MIN_ELEMENTS = 65536

# NCHW 1x1 convolutions without stride or padding read x in place in the blocked kernel
# unless whole images go to each thread (see _nchw_can_read_x); False sends them all
# through the prepared copy (tests compare the two).
NCHW_POINTWISE_IN_PLACE = True

# Large NHWC depthwise results are written by streaming stores (see _buffers.streaming).
NHWC_DEPTHWISE_STREAM = True

# Below this many output channels the direct NHWC path runs the NCHW kernel on transposed
# copies (see _conv_direct).
NHWC_DIRECT_MIN_CHANNELS = 8


def conv2d(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntPair = 1,
    padding: PaddingArg = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    activation: Optional[Literal["relu"]] = None,
    algorithm: Literal["auto", "direct", "im2col"] = "auto",
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """2-D convolution (cross-correlation, no kernel flip), as in PyTorch and TensorFlow.

    Parameters
    ----------
    x : array_like
        Input. ``layout="NCHW"``: (N, C_in, H, W) or one image (C_in, H, W).
        ``layout="NHWC"``: (N, H, W, C_in) or (H, W, C_in). A 2-D (H, W) x with a 2-D
        (KH, KW) weight filters a single-channel image and returns a 2-D array.
    weight : array_like
        ``NCHW``: (C_out, C_in/groups, KH, KW) (PyTorch OIHW). ``NHWC``:
        (KH, KW, C_in/groups, C_out) (TensorFlow HWIO).
    bias : array_like of shape (C_out,), optional
        Added to every output pixel of each channel. It does not take part in dtype
        promotion: it is cast to the dtype of x and weight (a float64 bias with float32 x and
        weight is rounded to float32).
    stride, dilation : int or (int, int)
        Positive.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same"
        Zero padding: the same on all sides, (ph, pw) per axis, explicit
        ((top, bottom), (left, right)), none, or TensorFlow 'SAME' for any stride and dilation
        (``out = ceil(in / stride)``, the odd cell at the bottom/right). Case-insensitive.
    groups : int
        C_in and C_out must both be divisible by it; ``groups == C_in`` is depthwise.
    layout : {"NCHW", "NHWC"}
        Layout of x, weight (see above) and the result.
    activation : {None, "relu"}
        ``"relu"`` is fused into the kernel: no extra pass over memory.
    algorithm : {"auto", "direct", "im2col"}
        ``"direct"``: with at least 4 output channels per group, a register-blocked kernel
        (an implicit GEMM on a zero-padded, stride-split copy of each image, with AVX-512,
        AVX2 or SSE2 micro-kernels); with fewer (depthwise, single filters), plain loops over
        the window. ``"im2col"`` builds the column matrix tile by tile and multiplies with
        NumPy's BLAS. ``"auto"`` chooses by layer shape and size (see
        :func:`fastconv.conv.choose_algorithm`): the blocked kernel for dense layers, im2col
        for 1x1 layers of fewer than 196 output pixels and for NHWC calls under about a
        million multiply-adds with few output channels or pixels. All give the same answers
        up to rounding.
    out : ndarray, optional
        Written in place and returned; must have the exact result shape and dtype.
    num_threads : int, optional
        Upper limit on threads; ``None`` uses :func:`fastconv.get_num_threads`. The GEMM of the
        im2col path runs on NumPy's BLAS threads, which this does not control.

    Returns
    -------
    ndarray
        (N, C_out, OH, OW) for NCHW or (N, OH, OW, C_out) for NHWC (no N for one image), with
        ``OH = floor((H + pad_top + pad_bottom - dilation*(KH-1) - 1) / stride) + 1``.
        float32 when x and weight are both float32 (or float16), float64 otherwise.

    Raises
    ------
    TypeError
        Complex, object or string dtypes; non-integer sizes; ``out`` of the wrong dtype.
    ValueError
        Wrong ranks, channel/group mismatches, a bias of the wrong shape, a kernel larger than
        the padded input, non-positive stride/dilation/groups, negative padding, an unknown
        string option, an ``out`` of the wrong shape, sizes too large to index.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import conv2d
    >>> image = np.array([[1, 2, 1, 0], [0, 1, 3, 2], [2, 1, 0, 1], [1, 0, 1, 2]])
    >>> conv2d(image, np.array([[1, 0, -1]] * 3))
    array([[-1.,  1.],
           [-1., -3.]])
    >>> x = np.ones((2, 3, 8, 8), dtype=np.float32)
    >>> w = np.ones((4, 3, 3, 3), dtype=np.float32)
    >>> conv2d(x, w, padding="same").shape
    (2, 4, 8, 8)
    >>> conv2d(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), stride=2, layout="NHWC").shape
    (2, 3, 3, 4)
    """
    func = "conv2d"
    args = _validate.conv_args(
        x, weight, bias, stride, padding, dilation, groups, layout, activation, func
    )
    algorithm = _validate.normalize_choice(algorithm, _validate.ALGORITHMS, "algorithm", func)
    n_threads = _threads.resolve(num_threads, func)
    shape4 = args.out_shape4
    out = _validate.check_out(
        out, _validate.final_shape(args.restore, shape4), args.dtype, func
    )
    if algorithm == "auto":
        algorithm = choose_algorithm(args)

    xc = np.ascontiguousarray(args.x)
    wc = np.ascontiguousarray(args.weight)
    bc = (np.ascontiguousarray(args.bias) if args.bias is not None
          else np.empty(0, dtype=args.dtype))
    target = _validate.kernel_target(out, shape4, args.dtype, args.x, args.weight,
                                     *(() if args.bias is None else (args.bias,)))
    target4 = target.reshape(shape4)
    if algorithm == "direct":
        _conv_direct(xc, wc, bc, target4, args, n_threads)
    else:
        _conv_im2col(xc, wc, bc, target4, args, n_threads)
    return _validate.deliver(args.restore(target4), out)


@functools.lru_cache(maxsize=None)
def _block_sizes(itemsize: int) -> Mapping[str, int]:
    """The kernel build's block sizes for this item size (``_blocked.block_sizes``), read-only
    and cached: building the dict costs about 0.2 us, and a small call asked for it several
    times."""
    return types.MappingProxyType(_blocked.block_sizes(itemsize))


def choose_algorithm(args: _validate.ConvArgs) -> str:
    """The forward ``"auto"`` heuristic (see :func:`conv2d`).

    Measured with ``python -m fastconv bench --algorithms all`` (2-core AVX-512 machine): the
    blocked direct kernel beats im2col + BLAS by 1.5-3x on every dense suite layer at batch
    32, and at batch 1 on all but the smallest. 1x1 layers without stride or padding, where
    im2col needs no copy at all, follow _pointwise_runs_blocked. NHWC layers
    with at most half a channel block of outputs once went to im2col too (LeNet conv2 at batch
    32: 0.15 against 0.23 ms), but since their pix tiles leave in vectors and the blocked
    kernel takes two threads from about 1M multiply-adds the blocked kernel is ahead on every
    one measured, all from 1.9M up (the rule starts at AUTO_BLOCKED_MIN_MACS, about 1M; the
    SSE2 build was not measured). AVX-512, direct / im2col us: LeNet conv2 at batch 8 77-80 /
    105-110, 32->8 28x28 at batch 16 1120-1221 / 1601-1741, 64->16 56x56 at batch 4 2250-2390
    / 3347-4063, 16->16 8x8 at batch 32 170-196 / 213-711; AVX2 1.7-3x.
    Calls under about a million multiply-adds follow the older rule (_gemm_or_loops), except
    NCHW ones with at least a pixel block of outputs per image, where the blocked kernel on
    one thread wins (LeNet at batch 1: conv1 17 against 21 us, conv2 19 against 25; 32->32
    8x8: 28 against 37; but 64->64 4x4, 16 pixels: 63 against 38), and NHWC ones with more
    than half a channel block of outputs and at least 81 output pixels per image (2-core
    AVX2 machine, where LeNet conv2 fills the 16-channel block, direct against im2col:
    batch 1 42 against 62 us, batch 8 99 against 533; float32 16->16 14x14 54 against 89,
    16->24 10x10 35 against 49; float64 8->8 9x9 batch 2 48 against 70; but 32->64 7x7 82
    against 80, 64->64 4x4 98 against 79, and float64 16->16 8x8 63 against 50), or with
    fewer outputs that the pix kernel takes and four of its pixel blocks per image (see
    _small_call_runs_blocked).
    """
    if not _uses_blocked(args):
        return _gemm_or_loops(args)
    g = args.geometry
    macs = _macs(args)
    if macs < AUTO_BLOCKED_MIN_MACS:
        if not _is_pointwise(g) and _small_call_runs_blocked(args):
            return "direct"
        return _gemm_or_loops(args)
    if _is_pointwise(g):
        return "direct" if _pointwise_runs_blocked(g) else "im2col"
    return "direct"


def _pointwise_runs_blocked(g: _validate.Geometry) -> bool:
    """Whether "auto" runs the blocked kernel on a 1x1 call without stride or padding (of at
    least AUTO_BLOCKED_MIN_MACS): from AUTO_POINTWISE_MIN_PIXELS output pixels per call.

    Timed alone, such a layer runs about as fast on NumPy's GEMM (x is already its column
    matrix), but in a network the GEMM costs the layers around it: NumPy's BLAS threads spin
    for about 0.1 s after it, and the scheduler then keeps the kernels' two threads on one
    CPU for tens of milliseconds (see README, Threads). ResNet-50 bottleneck blocks (1x1,
    3x3, 1x1; the 3x3 always direct) on the 2-core AVX-512 VM, ms, 1x1 layers on im2col
    against direct, NCHW: batch 1 56x56 3.73 / 3.03, 28x28 3.71 / 2.66, 14x14 4.19 / 3.18,
    7x7 7.32 / 6.33; batch 32 116 / 81, 111 / 74, 107 / 72, 122 / 85. NHWC: batch 1 3.55 /
    2.49, 3.47 / 2.59, 4.27 / 3.00, but 7x7 7.92 / 8.68; batch 32 114 / 75, 106 / 68, 105 /
    71, 121 / 82. Alone, direct / im2col speed at batch 1, NCHW: 256->64 56x56 0.98,
    512->128 28x28 0.98, 1024->256 14x14 0.86, 64->256 56x56 0.81, 64->64 56x56 0.88, but
    7x7 layers 0.37-0.49, whose 1-4 MB weights take longer to pack for the blocked kernel
    than its 49 pixels take to compute; NHWC 1.00, 0.93, 1.05, 0.91, 0.78, 7x7 0.55; at
    batch 32, NCHW 1.13, 1.29, 1.08, 1.07, 0.97, 7x7 0.97-0.98. Hence the blocked kernel
    from one 14x14 image on."""
    return g.n * g.out_h * g.out_w >= AUTO_POINTWISE_MIN_PIXELS


def _small_call_runs_blocked(args: _validate.ConvArgs) -> bool:
    """Whether "auto" runs the blocked kernel on a call under AUTO_BLOCKED_MIN_MACS (not 1x1):
    NCHW with at least a pixel block of outputs per image; NHWC with a channel block more
    than half used and at least AUTO_SMALL_NHWC_MIN_PIXELS outputs per image, or with fewer
    outputs that the pix kernel takes and AUTO_SMALL_NHWC_PIX_BLOCKS of its pixel blocks
    per image (batch 1 unless said, direct against im2col us: AVX-512, 8->8 16x16 3x3, 256
    pixels, 17.1 / 21.8; 16->16 14x14, 196, even at 26.5 / 25.7; but LeNet conv2, 100, 21.1
    / 20.1, 16->16 8x8 batch 4 38.9 / 29.7, 32->16 7x7 26.6 / 18.8; AVX2, from 96 pixels:
    6->8 14x14 5x5 16.4 / 18.3, 16->8 14x14 20.2 / 22.7; but 16->8 8x8 batch 4 30.0 /
    26.1). One-channel images count too (they had followed the older rule): 1->8 28x28 7x7
    19.8 / 65.8, 1->8 16x16 7x7 15.2 / 35.3, 1->16 14x14 7x7 17.2 / 30.6 (AVX2 alike)."""
    g = args.geometry
    pix_pixels = _block_sizes(args.dtype.itemsize)["pix_pixels"]
    if args.layout == "NCHW":
        return g.out_pixels >= pix_pixels
    if _pix_for_nhwc(args):
        return g.out_pixels >= AUTO_SMALL_NHWC_PIX_BLOCKS * pix_pixels
    return not _few_nhwc_outputs(args) and g.out_pixels >= AUTO_SMALL_NHWC_MIN_PIXELS


def _gemm_or_loops(args: _validate.ConvArgs) -> str:
    """im2col when the GEMM is big enough for BLAS to pay off, else the plain direct loops;
    the backward ``"auto"`` (whose direct kernels are the plain loops) and small forward calls.
    """
    g = args.geometry
    reduction = (g.c // args.groups) * g.kernel_h * g.kernel_w
    if (reduction >= AUTO_MIN_REDUCTION[args.layout]
            and args.c_out // args.groups >= AUTO_MIN_CHANNELS[args.layout]):
        return "im2col"
    return "direct"


def _few_nhwc_outputs(args: _validate.ConvArgs) -> bool:
    """NHWC with at most half of the ch micro-kernel's channel block of outputs per group:
    the ch kernel would leave most of its lanes idle."""
    cog = args.c_out // args.groups
    return (args.layout == "NHWC"
            and 2 * cog <= _block_sizes(args.dtype.itemsize)["ch_cols"])


def _is_nhwc_depthwise(args: _validate.ConvArgs) -> bool:
    """An NHWC depthwise layer (one input and one output channel per group) wide enough for
    its own kernel (channels are contiguous, so it vectorises over them)."""
    return (args.layout == "NHWC"
            and args.groups == args.geometry.c == args.c_out >= NHWC_DIRECT_MIN_CHANNELS)


def _uses_blocked(args: _validate.ConvArgs) -> bool:
    """Whether the direct algorithm runs the register-blocked kernel (see _conv_blocked)."""
    return args.c_out // args.groups >= BLOCKED_MIN_CHANNELS[args.layout]


def _macs(args: _validate.ConvArgs) -> int:
    """Multiply-adds of the forward convolution (each GEMM of the backward pass has as many)."""
    return _geometry_macs(args.geometry, args.groups, args.c_out)


def _geometry_macs(g: _validate.Geometry, groups: int, c_out: int) -> int:
    return g.n * c_out * g.out_pixels * (g.c // groups) * g.kernel_h * g.kernel_w


def _pixel_chunk(n_qblocks: int, threads: int, groups: int) -> int:
    """Pixel blocks per work item when one image is split over the team: about 16 items per
    thread, so that uneven items still share out evenly."""
    return max(1, -(-n_qblocks // -(-16 * threads // groups)))


def _prepared_grid(g: _validate.Geometry) -> Tuple[int, int]:
    """(Hs, Ws): the size of each stride phase of the zero-padded image (see _blocked.pyx)."""
    return (-(-(g.h + g.pad_top + g.pad_bottom) // g.stride_h),
            -(-(g.w + g.pad_left + g.pad_right) // g.stride_w))


@functools.lru_cache(maxsize=256)
def _tap_offsets(g: _validate.Geometry, cig: int, image_channels: int, nhwc: bool):
    """(K,) offsets, relative to its output pixel, at which each (tap, channel) of a group of
    ``cig`` channels reads a prepared image of ``image_channels`` channels; K in the weight's
    order: (kh, kw, ci) for HWIO, (ci, kh, kw) for OIHW. Cached (building the table costs
    more than a small convolution), so the array is read-only."""
    sh, sw = g.stride_h, g.stride_w
    hs, ws = _prepared_grid(g)
    taps_h = np.arange(g.kernel_h) * g.dilation_h
    taps_w = np.arange(g.kernel_w) * g.dilation_w
    # Tap (kh, kw) reads stride phase (kh*dh % sh, kw*dw % sw), shifted by (kh*dh // sh) rows
    # and (kw*dw // sw) columns of that phase.
    phase = (taps_h % sh)[:, None] * sw + (taps_w % sw)[None, :]
    shift = (taps_h // sh)[:, None] * ws + (taps_w // sw)[None, :]
    channels = np.arange(cig)
    if nhwc:
        # (phase, Hs, Ws, C) images.
        off = ((phase * hs * ws + shift) * image_channels)[:, :, None] + channels
    else:
        # (phase, C, Hs, Ws) images.
        off = (phase[None] * image_channels + channels[:, None, None]) * hs * ws + shift[None]
    return _read_only(off.reshape(-1).astype(np.intp))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=256)
def _blocked_plan_for(g: _validate.Geometry, groups: int, c_out: int, layout: str,
                      itemsize: int, ch: bool):
    """Offsets, block counts and scratch sizes of the blocked kernel for these arguments.

    ``layout`` is that of the image and result; ``ch``: run the ch micro-kernel (always for
    NHWC) rather than the pix one. Returns ``(off, n_cb, block, n_qblocks, Hs, Ws,
    prepared, buf_len)``: ``off`` (groups, K, read-only) gives where each tap of each group
    reads the prepared image, relative to the pixel; an image preparation writes
    ``prepared`` elements of a ``buf_len`` scratch row.
    """
    nhwc = layout == "NHWC"
    cig, cog = g.c // groups, c_out // groups
    hs, ws = _prepared_grid(g)
    sizes = _block_sizes(itemsize)
    group_base = np.arange(groups) * (cig if nhwc else cig * hs * ws)
    if ch:
        block, q_block = sizes["ch_cols"], sizes["ch_pixels"]
    else:
        block, q_block = sizes["pix_rows"], sizes["pix_pixels"]
    off = _read_only(np.ascontiguousarray(_tap_offsets(g, cig, g.c, nhwc)
                                          + group_base[:, None], dtype=np.intp))
    prepared = g.stride_h * g.stride_w * g.c * hs * ws
    if ch:
        # Blocks of output pixels; each pixel reads only its own window.
        return (off, -(-cog // block), block, -(-g.out_pixels // q_block), hs, ws, prepared,
                prepared)
    n_qblocks = -(-(g.out_h * ws) // q_block)
    return (off, -(-cog // block), block, n_qblocks, hs, ws, prepared,
            _slack_len(prepared, n_qblocks * q_block, off))


def _slack_len(prepared: int, grid_pixels: int, off) -> int:
    """Scratch length for an NCHW prepared image: the last pixel block reads up to a block
    past the Ws-wide grid, into slack after the ``prepared`` elements that stays zero."""
    return max(prepared, grid_pixels + int(off.max()))


def _pack_blocked_weight(w, args: _validate.ConvArgs, n_cb: int, block: int,
                         layout: Optional[str] = None, n_threads: int = 1):
    """The weight (in ``layout``, default args.layout) as (groups, co blocks, K, block),
    zero-filled past the last channel, in a reused scratch buffer (see _scratch_array); on
    ``n_threads`` from PACK_PARALLEL_MIN_ELEMENTS weights."""
    groups, cog = args.groups, args.c_out // args.groups
    k = w.size // args.c_out
    packed = _scratch_array("weight", (groups, n_cb, k, block), args.dtype)
    if (layout or args.layout) == "NHWC":
        wk = w.reshape(k, groups, cog).transpose(1, 2, 0)   # HWIO: K = (kh, kw, ci)
    else:
        wk = w.reshape(groups, cog, k)                      # OIHW: K = (ci, kh, kw)
    _blocked.pack_weight(wk, packed, n_threads if w.size >= PACK_PARALLEL_MIN_ELEMENTS else 1)
    return packed


def _scratch_array(slot: str, shape, dtype) -> np.ndarray:
    """An uninitialised array on memory kept per Python thread and ``slot`` between calls.

    Fresh memory costs a page fault per 4 KiB page on first touch (about 5 us each on this
    kind of virtual machine: 0.5 ms for a ResNet layer's packed weight and image), more
    than the whole convolution of a small image; reusing the buffer avoids it. Buffers over
    SCRATCH_CACHE_BYTES are not kept. A request that repeats an earlier one (slot, shape and
    dtype) returns the same array object; up to SCRATCH_VIEWS of them are kept.
    """
    try:
        views = _scratch.views
    except AttributeError:
        views = _scratch.views = {}
        _scratch.buffers = {}
    key = (slot, shape, dtype)
    view = views.get(key)
    if view is not None:   # the same request as before: the same array (1.5 us saved)
        return view
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > SCRATCH_CACHE_BYTES:
        return np.empty(shape, dtype=dtype)
    buffers = _scratch.buffers
    buf = buffers.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[slot] = np.empty(max(nbytes, 64), dtype=np.uint8)
        for old in [k for k in views if k[0] == slot]:   # views of the replaced buffer
            del views[old]
    if len(views) >= SCRATCH_VIEWS:
        views.clear()
    view = views[key] = buf[:nbytes].view(dtype).reshape(shape)
    return view


def _conv_blocked(x, w, bias, out4, args: _validate.ConvArgs, n_threads: int) -> None:
    """Register-blocked direct convolution (implicit GEMM), see ``_kernels/_blocked.pyx``.

    Each image is copied once, zero-padded and split into stride phases, into a scratch
    buffer (one per thread when the batch is shared out by image); the micro-kernels then read
    every tap at a fixed offset and keep a block of outputs in registers over the whole
    reduction. Padding zeros are real, so an inf or NaN weight meets them as in PyTorch.
    A 1x1 convolution without stride or padding reads x in place: NHWC always (see
    _conv_pointwise_nhwc), NCHW unless whole images go to each thread (see
    _nchw_can_read_x). NHWC layers that run the pix kernel (few outputs, see _pix_for_nhwc)
    have their images prepared channel-planar, as NCHW ones (one-channel images need no
    reordering).
    """
    g = args.geometry
    if g.n == 0 or g.out_pixels == 0:
        return
    out_nhwc = _pix_for_nhwc(args)
    layout = args.layout
    # NHWC images of several channels are prepared channel-planar; one channel's are planes.
    planar = out_nhwc and g.c > 1
    if out_nhwc:
        if not planar:
            x = x.reshape(g.n, 1, g.h, g.w)
        w = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
        layout = "NCHW"
    elif layout == "NHWC" and _is_pointwise(g):
        _conv_pointwise_nhwc(x, w, bias, out4, args, n_threads)
        return
    (off, n_cb, block, n_qblocks, hs, ws, prepared, buf_len, threads, per_image, chunk,
     ch, in_place) = _blocked_launch(g, args.groups, args.c_out, layout, args.dtype.itemsize,
                                     n_threads, out_nhwc)
    wpack = _pack_blocked_weight(w, args, n_cb, block, layout, threads)
    if in_place:
        xs_buf = np.zeros((1, 1), dtype=args.dtype)   # not read
    else:
        xs_buf = _scratch_array("image", (threads if per_image else 1, buf_len), args.dtype)
        # Every image preparation rewrites its first `prepared` elements; the slack after
        # them (read by the last NCHW pixel block, never stored) must hold finite values.
        xs_buf[:, prepared:] = 0
    _blocked.conv2d_blocked(x, wpack, off, bias, out4, xs_buf, layout == "NHWC" or planar,
                            g.stride_h, g.stride_w, g.pad_top, g.pad_left, hs, ws, n_qblocks,
                            chunk, in_place, args.activation == "relu", threads, out_nhwc,
                            ch and layout == "NCHW", planar)


@functools.lru_cache(maxsize=256)
def _blocked_launch(g: _validate.Geometry, groups: int, c_out: int, layout: str, itemsize: int,
                    n_threads: int, out_nhwc: bool):
    """_blocked_plan_for's plan followed by ``(threads, per_image, chunk, ch, in_place)``:
    how _conv_blocked runs a call with at most ``n_threads``, ``ch`` telling the micro-kernel
    (``out_nhwc``: the pix kernel into an NHWC result, see _pix_for_nhwc) and ``in_place``
    whether x is read in place (see _nchw_can_read_x). Cached, like _planes_launch."""
    ch = layout == "NHWC" or (not out_nhwc and _nchw_runs_ch(g, groups, c_out, itemsize))
    plan = _blocked_plan_for(g, groups, c_out, layout, itemsize, ch)
    n_cb, n_qblocks = plan[1], plan[3]
    can_read_x = layout == "NCHW" and not out_nhwc and _nchw_can_read_x(g, ch, itemsize)
    threads = _blocked_threads(_geometry_macs(g, groups, c_out), g.n * groups, n_threads,
                               n_cb * n_qblocks, can_read_x or _whole_images(g.n, n_threads))
    # Whole images per thread when they share out evenly enough; else one image at a time,
    # split into (group, pixel chunk) items.
    per_image = threads > 1 and _whole_images(g.n, threads)
    in_place = can_read_x and not per_image
    return plan + (threads, per_image, _pixel_chunk(n_qblocks, threads, groups), ch, in_place)


def _nchw_can_read_x(g: _validate.Geometry, ch: bool, itemsize: int) -> bool:
    """Whether a blocked NCHW call can read x in place rather than a prepared copy: a 1x1
    convolution without stride or padding, whose prepared image would be x itself, with
    planes of at least a pix block of pixels for the pix kernel (its last block moves back
    into the plane; the ch kernel repeats its last pixel). _blocked_launch does so unless
    whole images go to each thread.

    The copy takes about an eighth of such a call (13% of the time samples of ResNet's
    256->64 56x56 at batch 32), but it also brings the image into the cache of the thread
    that computes it. Measured (2-core AVX-512 VM, float32, GFLOP/s, prepared / in
    place; 256->64 56x56, 1024->256 14x14, 64->256 56x56, 2048->512 7x7):
    - one image over two threads: 158 / 183, 82 / 89, 146 / 156, 31 / 33; batch 3 (also one
      image at a time): 161 / 182, 123 / 138, 146 / 156, 61 / 68;
    - one thread, batch 1: 92 / 102, 63 / 67, 85 / 86, 29 / 29; batch 32: 87 / 84, 94 / 99,
      75 / 73, 78 / 85;
    - but whole images per thread (two threads, batch 8 and 32) the copy wins: 169 / 156,
      167 / 164, 145 / 137, 113 / 102 and 169 / 153, 182 / 168, 143 / 133, 149 / 129 (an
      x aligned to 64 bytes too: 165 / 150 at batch 32)."""
    return (NCHW_POINTWISE_IN_PLACE and _is_pointwise(g)
            and (ch or g.out_pixels >= _block_sizes(itemsize)["pix_pixels"]))


def _clear_launch_caches() -> None:
    """Forget the cached launch plans (for code that changes the thresholds they follow,
    such as tests patching BLOCKED_MACS_PER_THREAD or PLANE_BAND_BYTES)."""
    _blocked_launch.cache_clear()
    _planes_launch.cache_clear()


def _whole_images(n: int, threads: int) -> bool:
    """Whether a batch of ``n`` images shares out evenly enough over ``threads`` for each
    thread to take whole images."""
    return n % threads == 0 or n >= 4 * threads


def _blocked_threads(macs: int, planes: int, n_threads: int, items: int,
                     one_region: bool) -> int:
    """Threads for a blocked call of ``macs`` multiply-adds with ``items`` (channel block,
    pixel block) pairs per plane (image and group); ``one_region``: the call is one parallel
    region (whole images per thread, or an image that needs no preparation), not two per
    image."""
    per_thread = BLOCKED_MACS_PER_THREAD if one_region else BLOCKED_SPLIT_MACS_PER_THREAD
    return _threads.for_work(n_threads, macs // per_thread, planes * items, min_per_thread=1)


def _uses_planes(args: _validate.ConvArgs) -> bool:
    """Whether the direct algorithm runs the one-output-channel kernel (see _conv_planes):
    NCHW layers with one output channel per group, and single-channel NHWC images, which
    are NCHW ones in memory."""
    return args.c_out == args.groups and (args.layout == "NCHW" or args.geometry.c == 1)


def _plane_band_rows(g: _validate.Geometry, groups: int, itemsize: int, n_threads: int) -> int:
    """Output rows per work item of the one-output-channel kernel: the whole plane (out_h), or
    for stride 1 and one input channel per group, equal bands whose prepared rows fit in
    PLANE_BAND_BYTES, rounded up to a multiple of the threads per plane when the batch has
    fewer planes than threads (one 512x512 image: 6 bands, 3 per thread on 2 threads). No
    band is shorter than PLANE_BAND_MIN_ROWS."""
    if g.stride_h != 1 or g.stride_w != 1 or g.c != groups:
        return g.out_h
    ws = _prepared_grid(g)[1]
    reach = (g.kernel_h - 1) * g.dilation_h
    fit = max(PLANE_BAND_MIN_ROWS, PLANE_BAND_BYTES // (ws * itemsize) - reach)
    bands = -(-g.out_h // fit)
    planes = g.n * groups
    if planes < n_threads:   # a whole number of bands for each thread of a plane
        per_plane = -(-n_threads // planes)
        bands = -(-bands // per_plane) * per_plane
    rows = max(PLANE_BAND_MIN_ROWS, -(-g.out_h // bands))
    return min(rows, g.out_h)


@functools.lru_cache(maxsize=256)
def _planes_plan(g: _validate.Geometry, groups: int, itemsize: int, band_rows: int):
    """``(off, Hs, Ws, n_qblocks, prepared, buf_len)`` of the one-output-channel kernel: the
    tap offsets into one group's prepared plane (read-only), the pixel blocks of one work item
    (a plane, or a band of ``band_rows`` output rows) and the scratch row it needs (see
    _blocked_plan_for)."""
    cig = g.c // groups
    hs, ws = _prepared_grid(g)
    off = _tap_offsets(g, cig, cig, False)
    q_block = _block_sizes(itemsize)["plane_pixels"]
    n_qblocks = -(-(band_rows * ws) // q_block)
    if band_rows < g.out_h:   # the band's rows and the kernel's reach below them
        prepared = (band_rows + (g.kernel_h - 1) * g.dilation_h) * ws
    else:
        prepared = g.stride_h * g.stride_w * cig * hs * ws
    return off, hs, ws, n_qblocks, prepared, _slack_len(prepared, n_qblocks * q_block, off)


@functools.lru_cache(maxsize=256)
def _planes_launch(g: _validate.Geometry, groups: int, itemsize: int, n_threads: int):
    """``(threads, band_rows, off, hs, ws, n_qblocks, band_in_rows, buf_len, zero_from)``:
    how _conv_planes runs a call with at most ``n_threads``. Cached: working it out costs
    about 5 us, a third of a small call."""
    planes = g.n * groups
    # The threads the work is worth (bands of PLANE_BAND_MIN_ROWS at most), then the bands.
    threads = _threads.for_work(n_threads, _geometry_macs(g, groups, groups)
                                // PLANES_MACS_PER_THREAD,
                                planes * -(-g.out_h // PLANE_BAND_MIN_ROWS), min_per_thread=1)
    band_rows = _plane_band_rows(g, groups, itemsize, threads)
    off, hs, ws, n_qblocks, prepared, buf_len = _planes_plan(g, groups, itemsize, band_rows)
    n_bands = -(-g.out_h // band_rows)
    # Each thread's scratch row is zeroed from here on (see _conv_planes). The last, shorter
    # band prepares fewer rows, and its last pixel blocks read on into the rows after them
    # (for outputs it discards): from there on the row holds zeros or rows an earlier band
    # prepared, never stale memory.
    last_band = g.out_h - (n_bands - 1) * band_rows
    zero_from = min(prepared, (last_band + prepared // ws - band_rows) * ws)
    return (min(threads, planes * n_bands), band_rows, off, hs, ws, n_qblocks, prepared // ws,
            buf_len, zero_from)


def _conv_planes(x, w, bias, out4, args: _validate.ConvArgs, n_threads: int) -> None:
    """Depthwise and single-filter convolution: one (image, group) per work item, its input
    channels prepared (padded, stride-split) into a per-thread scratch plane, then one
    output plane computed with the one-channel micro-kernel (see ``conv2d_planes``); large
    planes, or fewer planes than threads, are split into bands of output rows (see
    _plane_band_rows). Where _runs_plane_rows allows, stride-1 planes (or the same bands) are
    instead read in place by ``conv2d_plane_rows``, with no scratch."""
    g = args.geometry
    if g.n == 0 or g.out_pixels == 0:
        return
    if args.layout == "NHWC":   # one channel: the same memory as NCHW
        x = x.reshape(g.n, 1, g.h, g.w)
        out4 = out4.reshape(g.n, 1, g.out_h, g.out_w)
    (threads, band_rows, off, hs, ws, n_qblocks, band_in_rows, buf_len,
     zero_from) = _planes_launch(g, args.groups, args.dtype.itemsize, n_threads)
    if _runs_plane_rows(w, g, args.groups):
        _blocked.conv2d_plane_rows(x, w.reshape(args.c_out, -1), bias, out4, g.kernel_h,
                                   g.kernel_w, g.dilation_h, g.dilation_w, g.pad_top,
                                   g.pad_left, band_rows, args.activation == "relu", threads)
        return
    xs_buf = _scratch_array("image", (threads, buf_len), args.dtype)
    xs_buf[:, zero_from:] = 0
    _blocked.conv2d_planes(x, w.reshape(args.c_out, -1), off, bias, out4, xs_buf, g.stride_h,
                           g.stride_w, g.pad_top, g.pad_left, hs, ws, n_qblocks, band_rows,
                           band_in_rows, args.activation == "relu", threads)


def _runs_plane_rows(w, g: _validate.Geometry, groups: int) -> bool:
    """Whether a one-channel call runs ``conv2d_plane_rows`` (straight from x, see
    ``_kernels/_plane_rows.h``) rather than ``conv2d_planes``: PLANE_ROWS on, a level with
    masked vector loads, stride 1, one input channel per group, planes of at most
    PLANE_ROWS_MAX_BYTES or at most PLANE_ROWS_MAX_LARGE_PLANES planes, and finite weights
    unless there is no row padding (that kernel skips the padding rows, where an inf weight
    must meet a zero to give NaN; padding columns it loads as zeros).

    Measured on the 2-core AVX-512 machine, float32 3x3 'same', 2 threads, interleaved in one
    process (prepared / in-place time), with the in-place kernel compiled for the kernel size:
    128 56x56 depthwise planes 1.08-1.20 at batch 1 and 1.05-1.46 at batch 32 (measured before
    that, so at least this); 512x512 images 1.41 for 8 of them (0.54 against 0.38 ms), 1024x1024
    1.33 for 4 and 1.08-1.17 for 8, 2048x2048 1.42-1.47 for 2; but more 512x512 planes lose
    (12: 0.78-1.30, 16: 0.92 in 3 of 4 rounds, 24: 0.87-0.92, 32: 0.70-0.72), where the
    prepared copy's row bands stream through memory better."""
    large_ok = g.n * groups <= PLANE_ROWS_MAX_LARGE_PLANES
    return (PLANE_ROWS and g.stride_h == 1 and g.stride_w == 1 and g.c == groups
            and _blocked.plane_rows_native()
            and (g.h * g.w * w.dtype.itemsize <= PLANE_ROWS_MAX_BYTES or large_ok)
            and (not (g.pad_top or g.pad_bottom) or bool(np.isfinite(w).all())))


def _conv_pointwise_nhwc(x, w, bias, out4, args: _validate.ConvArgs, n_threads: int) -> None:
    """1x1 NHWC convolution without stride or padding: x is read in place, the whole batch
    as one column of pixels (a (pixels, C_in) x (C_in, C_out) product)."""
    g = args.geometry
    groups, cig = args.groups, g.c // args.groups
    sizes = _block_sizes(args.dtype.itemsize)
    n_cb = -(-(args.c_out // groups) // sizes["ch_cols"])
    off = np.ascontiguousarray(np.arange(groups)[:, None] * cig + np.arange(cig), dtype=np.intp)
    pixels = g.n * g.h * g.w
    n_qblocks = -(-pixels // sizes["ch_pixels"])
    threads = _blocked_threads(_macs(args), g.n * groups, n_threads, n_cb * n_qblocks, True)
    _blocked.conv2d_blocked(
        x.reshape(1, pixels, 1, g.c),
        _pack_blocked_weight(w, args, n_cb, sizes["ch_cols"], n_threads=threads),
        off, bias, out4.reshape(1, pixels, 1, args.c_out), np.zeros((1, 1), dtype=args.dtype),
        True, 1, 1, 0, 0, pixels, 1, n_qblocks, _pixel_chunk(n_qblocks, threads, groups), True,
        args.activation == "relu", threads)


def _pad_if_not_finite(x, other, g: _validate.Geometry, layout: str):
    """``(x, g)`` with the padding made explicit when ``other`` holds an inf or NaN.

    The direct kernels skip taps that fall on padding, which is exact as long as whatever
    multiplies the padding zeros (the weight forwards, grad_out for the weight gradient) is
    finite. An inf or NaN times a padding zero is NaN (as in PyTorch), so then x is padded
    explicitly and the taps really multiply. ``g`` is returned with the new size and no padding.
    """
    spatial = ((g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right))
    if not any(p for pair in spatial for p in pair) or np.isfinite(other).all():
        return x, g
    nchw = layout == "NCHW"
    x = np.pad(x, ((0, 0), (0, 0)) + spatial if nchw else ((0, 0),) + spatial + ((0, 0),))
    return x, dataclasses.replace(g, h=x.shape[2 if nchw else 1], w=x.shape[3 if nchw else 2],
                                  pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)


def _conv_direct(x, w, bias, out4, args: _validate.ConvArgs, n_threads: int) -> None:
    if _nhwc_prefers_nchw(args):
        _conv_nhwc_through_nchw(x, w, bias, out4, args, n_threads)
        return
    if _uses_blocked(args):
        _conv_blocked(x, w, bias, out4, args, n_threads)
        return
    if _uses_planes(args):
        _conv_planes(x, w, bias, out4, args, n_threads)
        return
    layout = args.layout
    x, g = _pad_if_not_finite(x, w, args.geometry, layout)
    if _is_nhwc_depthwise(args):
        _blocked.conv2d_depthwise_nhwc(
            x, w.reshape(g.kernel_h * g.kernel_w, g.c), bias, out4, g.kernel_h, g.kernel_w,
            g.stride_h, g.stride_w, g.dilation_h, g.dilation_w, g.pad_top, g.pad_left,
            args.activation == "relu",
            _threads.for_work(n_threads, _macs(args), g.n * g.out_h),
            NHWC_DEPTHWISE_STREAM and _buffers.streaming(out4.nbytes))
        return
    kernel = _conv.conv2d_direct_nchw if layout == "NCHW" else _conv.conv2d_direct_nhwc
    rows = g.n * g.out_h * (args.c_out if layout == "NCHW" else 1)
    macs = _macs(args)
    threads = _threads.for_work(n_threads, macs, rows)
    kernel(x, w, bias, out4, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
           g.pad_top, g.pad_left, args.groups, args.activation == "relu", threads)


def _nhwc_prefers_nchw(args: _validate.ConvArgs) -> bool:
    """Whether a direct NHWC call that none of the NHWC-capable kernels takes (blocked, one
    channel, depthwise) runs faster as NCHW on transposed copies: with fewer than
    NHWC_DIRECT_MIN_CHANNELS outputs, which the NHWC loops (vectorised over output channels)
    would waste. The NCHW call goes through _conv_direct again, so a layer with one output
    channel per group (a narrow depthwise one) then takes the one-channel kernel. (The
    blocked kernel has its own way: see _pix_for_nhwc.)"""
    if args.layout != "NHWC" or _uses_blocked(args) or _uses_planes(args):
        return False
    return not _is_nhwc_depthwise(args) and args.c_out < NHWC_DIRECT_MIN_CHANNELS


@functools.lru_cache(maxsize=256)
def _nchw_runs_ch(g: _validate.Geometry, groups: int, c_out: int, itemsize: int) -> bool:
    """Whether a blocked NCHW call runs the ch micro-kernel (with an NCHW store) rather than
    the pix one: the kernel whose blocks cover fewer lanes (output channels x pixels), the ch
    kernel on a tie.

    The pix blocks are ``pix_rows`` output channels x ``pix_pixels`` pixels of the Ws-wide
    prepared grid, whose columns past the output width are computed and dropped; the ch
    blocks are ``ch_pixels`` output pixels x ``ch_cols`` channels, the pixels packed across
    row ends. Measured at batch 32, float32 (ms, pix against ch): LeNet conv2 (16 channels,
    10x10 outputs) with AVX2, 69% of the pix lanes used and 98% of the ch ones, 0.26
    against 0.20; with AVX-512 (32-channel ch blocks, half used) 0.17 against 0.21, both as
    chosen. LeNet conv1 (6 channels): pix, 0.17 against 0.27 (AVX2) and 0.38 (AVX-512). The
    dense suite layers fill both kernels' blocks (96% or more), and the dropped columns of the
    pix grid tip the padded ones to the ch kernel: pix / ch time 0.98-1.08 with AVX-512
    (vgg_3x3 0.98, resnet_3x3 1.07, s2_3x3 1.08, dilated_3x3 0.99, alexnet_conv1 0.98,
    stem_7x7 1.04) and with AVX2 (1.08, 1.02, 1.07, 1.07, 1.00, 0.98). Cached (it builds
    both kernels' plans); _blocked_launch, itself cached, asks it.
    """
    sizes = _block_sizes(itemsize)
    lanes = []
    for ch, q_block in ((False, sizes["pix_pixels"]), (True, sizes["ch_pixels"])):
        _, n_cb, block, n_qblocks, *_ = _blocked_plan_for(g, groups, c_out, "NCHW", itemsize, ch)
        lanes.append(n_cb * block * n_qblocks * q_block)
    return lanes[1] <= lanes[0]


def _pix_for_nhwc(args: _validate.ConvArgs) -> bool:
    """Whether a blocked NHWC call runs the pix (NCHW) micro-kernel with an NHWC store, for
    at most half a channel block of outputs, which the ch kernel would mostly waste:
    single-channel images (NCHW memory already), and stride-1 layers with a kernel larger
    than 1x1, whose images are then prepared channel-planar.

    LeNet conv1 (1 -> 6 channels) at batch 32: 0.20-0.24 ms with the ch kernel (6 of its 32
    channel lanes used), the NCHW layer's 0.11 ms this way. Several channels, float32, ch
    against pix us, best of 3-5 interleaved rounds: AVX-512, LeNet conv2 (6 -> 16) batch 32
    232 / 179, batch 8 115 / 87; 32->8 28x28 3x3 batch 16 1156 / 463; 64->16 56x56 batch 4
    2218 / 1366; 3->16 32x32 5x5 batch 32 808 / 502; 128->16 28x28 batch 2 591 / 419. AVX2
    (8 outputs, a 16-channel block): 1.2-1.5x, LeNet conv2 even. Not with stride 2 (the
    image prepared in four phases: AVX-512 even, 64->16 56x56 batch 4 627 / 542-675; AVX2
    0.49-0.69x) nor for 1x1 kernels (no taps to share the prepared image; 64->16 56x56
    stride 2 0.67x, 256->16 14x14 batch 32 0.89x; AVX2 0.59-0.64x). The outputs are counted
    per group, so grouped layers with few outputs per group go this way too: 3x3, ch / pix
    time 2.2-3.1 on AVX-512 (32->128 in 32 groups 56x56 batch 8 4262 / 1458 us; 64->16 in 2
    groups 4328 / 1436; 32->32 in 4 groups 28x28 batch 4 332 / 149), 1.2-2.9 on AVX2."""
    if not _few_nhwc_outputs(args):
        return False
    g = args.geometry
    return g.c == 1 or (g.stride_h == g.stride_w == 1 and g.kernel_h * g.kernel_w > 1)


def _conv_nhwc_through_nchw(x, w, bias, out4, args: _validate.ConvArgs, n_threads: int):
    """An NHWC direct convolution computed in NCHW: transposed x and weight in, the result
    transposed back into ``out4`` (written in place when its transpose is contiguous)."""
    xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    wt = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    out_t = out4.transpose(0, 3, 1, 2)
    target = (out_t if out_t.flags.c_contiguous
              else _scratch_array("nchw result", out_t.shape, out4.dtype))
    _conv_direct(xt, wt, bias, target, dataclasses.replace(args, x=xt, weight=wt, layout="NCHW"),
                 n_threads)
    if target is not out_t:
        out4[...] = target.transpose(0, 2, 3, 1)


def _nchw_tiles(n: int, pixels: int, tile_rows: int):
    """``(n0, n1, p0, p1)`` tiles of at most ``tile_rows`` output pixels: whole images when one
    fits, otherwise pixel ranges of one image."""
    if pixels <= tile_rows:
        per_tile = tile_rows // pixels
        return [(n0, min(n0 + per_tile, n), 0, pixels) for n0 in range(0, n, per_tile)]
    return [(i, i + 1, p0, min(p0 + tile_rows, pixels))
            for i in range(n) for p0 in range(0, pixels, tile_rows)]


def _is_pointwise(g: _validate.Geometry) -> bool:
    """A 1x1, stride-1, unpadded convolution: x itself is the (transposed) column matrix."""
    return (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w) == (1, 1, 1, 1) and not any(
        (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right))


def _conv_im2col(x, w, bias, out4, args: _validate.ConvArgs, n_threads: int) -> None:
    """im2col + GEMM, tile by tile, with the bias/ReLU epilogue applied to each finished tile.

    NCHW multiplies ``weight (C_out, K) @ cols_t (K, pixels)`` per image, with the transposed
    column matrix; NHWC multiplies ``cols (pixels, K) @ weight (K, C_out)`` over the whole
    batch. Both are plain row-major GEMMs. A 1x1 convolution with stride 1 and no padding needs
    no column matrix at all: x itself is one.
    """
    g = args.geometry
    if g.n == 0:
        return
    groups, c_out, nchw = args.groups, args.c_out, args.layout == "NCHW"
    cig, cog = g.c // groups, c_out // groups
    k = cig * g.kernel_h * g.kernel_w
    pixels = g.out_pixels
    tile_rows = max(1, IM2COL_TILE_BYTES // (k * args.dtype.itemsize))
    relu = args.activation == "relu"
    geometry = g.window_args()
    x_is_cols = _is_pointwise(g)
    # Per-group GEMM operands: NCHW weight rows (ci, kh, kw) match the column order; an HWIO
    # weight reshapes to (kh, kw, ci) x C_out, which matches the NHWC column order.
    if nchw:
        w_groups = [w.reshape(c_out, k)[i * cog:(i + 1) * cog] for i in range(groups)]
    else:
        w_groups = [np.ascontiguousarray(w[..., i * cog:(i + 1) * cog]).reshape(k, cog)
                    for i in range(groups)]
    buffer = None if x_is_cols else np.empty(min(tile_rows, g.n * pixels) * k, dtype=args.dtype)
    # The GEMM runs on NumPy's BLAS threads. Starting an OpenMP team between two GEMMs makes the
    # two thread pools compete for the cores, which costs more than it saves, so the column
    # fill and the epilogue run on the calling thread.
    serial = 1

    if nchw:
        out3 = out4.reshape(g.n, c_out, pixels)
        x3 = x.reshape(g.n, g.c, g.h * g.w)
        for n0, n1, p0, p1 in _nchw_tiles(g.n, pixels, tile_rows):
            dest = out3[n0:n1, :, p0:p1]
            for i in range(groups):
                if x_is_cols:
                    cols_t = x3[n0:n1, i * cig:(i + 1) * cig, p0:p1]
                else:
                    cols_t = buffer[: (n1 - n0) * k * (p1 - p0)].reshape(n1 - n0, k, p1 - p0)
                    _im2col.im2col_nchw_t(x, cols_t, n0, p0, i * cig, *geometry, serial)
                with np.errstate(**_validate.IEEE_SILENT):
                    np.matmul(w_groups[i], cols_t, out=dest[:, i * cog:(i + 1) * cog])
            _conv.add_bias_relu(dest, bias, 1, relu, serial)
    else:
        out2 = out4.reshape(g.n * pixels, c_out)
        x2 = x.reshape(g.n * g.h * g.w, g.c)
        total = g.n * pixels
        for q0 in range(0, total, tile_rows):
            q1 = min(q0 + tile_rows, total)
            dest = out2[q0:q1]
            for i in range(groups):
                if x_is_cols:
                    cols = x2[q0:q1, i * cig:(i + 1) * cig]
                else:
                    cols = buffer[: (q1 - q0) * k].reshape(q1 - q0, k)
                    _im2col.im2col_nhwc(x, cols, q0, i * cig, *geometry, serial)
                with np.errstate(**_validate.IEEE_SILENT):
                    if groups == 1:
                        np.matmul(cols, w_groups[0], out=dest)
                    else:
                        dest[:, i * cog:(i + 1) * cog] = cols @ w_groups[i]
            _conv.add_bias_relu(dest[np.newaxis], bias, 2, relu, serial)


# --------------------------------------------------------------------------------------------
# backward


def conv2d_backward(
    grad_out: ArrayLike,
    x: ArrayLike,
    weight: ArrayLike,
    stride: IntPair = 1,
    padding: PaddingArg = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    needs: Iterable[Literal["input", "weight", "bias"]] = ("input", "weight", "bias"),
    algorithm: Literal["auto", "direct", "im2col"] = "auto",
    num_threads: Optional[int] = None,
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    Given ``grad_out``, the gradient of a loss with respect to ``conv2d(x, weight, bias, ...)``,
    returns the gradients of that loss with respect to ``x``, ``weight`` and ``bias``, exactly
    as PyTorch's autograd defines them (padding cells receive nothing; overlapping windows
    add up). For ``activation="relu"`` apply :func:`relu_backward` with the conv output first.

    Parameters
    ----------
    grad_out : array_like
        Same shape as the forward output.
    x, weight, stride, padding, dilation, groups, layout
        As given to :func:`conv2d` (the bias is not needed).
    needs : iterable of {"input", "weight", "bias"}
        Which gradients to compute; the others are returned as ``None`` and cost nothing.
    algorithm : {"auto", "direct", "im2col"}
        ``"im2col"``: GEMMs with NumPy's BLAS on column-matrix tiles of at most 8 MiB, folded
        back with col2im; ``"direct"``: loops over the kernel taps (NCHW kernels, and NHWC
        kernels for depthwise layers; other NHWC layers run on transposed copies), except
        that a stride-1 input gradient with at least 4 input channels per group and a finite
        weight is computed as a forward convolution by the blocked kernel of
        :func:`conv2d` (grad_out correlated with the flipped, channel-swapped weight).
        ``"auto"`` picks between these two by layer shape as :func:`conv2d`'s older rule
        does: im2col for layers with a long reduction and several output channels, else
        direct.
    num_threads : int, optional
        Upper limit on the threads of fastconv's kernels; the im2col path's GEMMs run on
        NumPy's BLAS threads, which this does not control. The result does not depend on it:
        each gradient element of the direct kernels is summed by one thread in a fixed order,
        and the im2col path's tiles are visited in a fixed order.

    Returns
    -------
    grad_x : ndarray or None
        Shaped like ``x``.
    grad_weight : ndarray or None
        Shaped like ``weight``, in its layout (OIHW or HWIO).
    grad_bias : ndarray or None
        Shape (C_out,).

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d`; also a ``grad_out`` whose shape is not the forward output's, and an
        unknown entry in ``needs``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import conv2d, conv2d_backward
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((2, 1, 3, 3))
    >>> y = conv2d(x, w, padding=1)
    >>> grad_x, grad_w, grad_b = conv2d_backward(np.ones_like(y), x, w, padding=1)
    >>> grad_x[0, 0]
    array([[ 8., 12., 12.,  8.],
           [12., 18., 18., 12.],
           [12., 18., 18., 12.],
           [ 8., 12., 12.,  8.]])
    >>> grad_w[0, 0]
    array([[ 45.,  66.,  54.],
           [ 84., 120.,  96.],
           [ 81., 114.,  90.]])
    >>> grad_b
    array([16., 16.])
    >>> conv2d_backward(np.ones_like(y), x, w, padding=1, needs=("bias",))[:2]
    (None, None)
    """
    func = "conv2d_backward"
    grad = _validate.conv_backward_args(grad_out, x, weight, stride, padding, dilation, groups,
                                        layout, needs, func)
    algorithm = _validate.normalize_choice(algorithm, _validate.ALGORITHMS, "algorithm", func)
    n_threads = _threads.resolve(num_threads, func)
    args = grad.conv
    if algorithm == "auto":
        algorithm = _gemm_or_loops(args)
    gy = np.ascontiguousarray(grad.grad_out)
    xc = np.ascontiguousarray(args.x)
    wc = np.ascontiguousarray(args.weight)
    grad_w = np.empty(args.weight.shape, dtype=args.dtype) if "weight" in grad.needs else None
    grad_x = grad_x_blocked = None
    if "input" in grad.needs:
        # A stride-1 input gradient is a forward convolution, which the blocked kernel
        # computes when the algorithm is "direct". Not with "im2col" (nor when "auto" picks
        # it): the weight gradient's GEMM leaves NumPy's OpenBLAS threads spinning, and an
        # OpenMP kernel right after it shares the cores with them (see the note above
        # _transposed_conv_args).
        transposed = _transposed_conv_args(gy, wc, args) if algorithm == "direct" else None
        if transposed is not None:
            grad_x_blocked = _buffers.empty(args.x.shape, args.dtype)
            with np.errstate(**_validate.IEEE_SILENT):
                _conv_blocked(np.ascontiguousarray(transposed.x), transposed.weight,
                              np.empty(0, dtype=args.dtype), grad_x_blocked, transposed,
                              n_threads)
        else:
            grad_x = np.zeros(args.x.shape, dtype=args.dtype)
    if grad_x is not None or grad_w is not None:
        backward = _backward_direct if algorithm == "direct" else _backward_im2col
        with np.errstate(**_validate.IEEE_SILENT):
            backward(gy, xc, wc, grad_x, grad_w, args, n_threads)
    if grad_x_blocked is not None:
        grad_x = grad_x_blocked
    grad_b = None
    if "bias" in grad.needs:
        with np.errstate(**_validate.IEEE_SILENT):
            grad_b = gy.sum(axis=(0, 2, 3) if args.layout == "NCHW" else (0, 1, 2))
    return (
        None if grad_x is None else args.restore(grad_x),
        None if grad_w is None else grad_w.reshape(grad.weight_shape),
        grad_b,
    )


# Why "auto" keeps im2col for the input gradient of dense layers, measured on vgg_3x3 at
# batch 32 (NCHW, float32, 2 cores): after the weight gradient's GEMM, NumPy's OpenBLAS
# threads keep spinning, and the blocked input gradient that follows took 34 ms instead of
# the 17.7 it takes alone (im2col: 28.5 ms). With OPENBLAS_NUM_THREADS=1 it takes 17.7 ms
# again, but the GEMM then runs on one core.
def _transposed_conv_args(gy, w, args: _validate.ConvArgs) -> Optional[_validate.ConvArgs]:
    """The input gradient of a stride-1 convolution as a forward one for the blocked
    kernel, or None.

    With stride 1, grad_x is grad_out correlated with the weight flipped in both spatial axes
    and with its input and output channels swapped (per group), padded by dilation * (K - 1)
    minus the forward padding on each side; the blocked kernel then computes it. None for
    other strides, for forward padding wider than dilation * (K - 1), for fewer input
    channels per group than the blocked kernel takes as outputs (_uses_blocked), and for a
    weight with inf or NaN: the padding zeros of grad_out would meet it (inf * 0 = NaN) where
    the true gradient has no term at all.
    """
    g = args.geometry
    extra_h, extra_w = g.dilation_h * (g.kernel_h - 1), g.dilation_w * (g.kernel_w - 1)
    pads = ((extra_h - g.pad_top, extra_h - g.pad_bottom),
            (extra_w - g.pad_left, extra_w - g.pad_right))
    cig = g.c // args.groups   # the output channels of the transposed convolution
    if ((g.stride_h, g.stride_w) != (1, 1) or min(min(p) for p in pads) < 0
            or cig < BLOCKED_MIN_CHANNELS[args.layout]):
        return None
    with np.errstate(**_validate.IEEE_SILENT):
        if not np.isfinite(w).all():
            return None
    groups, cog = args.groups, args.c_out // args.groups
    kh, kw = g.kernel_h, g.kernel_w
    if args.layout == "NCHW":   # OIHW (C_out, cig, KH, KW) -> (C_in, cog, KH, KW)
        wt = w.reshape(groups, cog, cig, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        wt = wt.reshape(groups * cig, cog, kh, kw)
    else:                       # HWIO (KH, KW, cig, C_out) -> (KH, KW, cog, C_in)
        wt = w[::-1, ::-1].reshape(kh, kw, cig, groups, cog).transpose(0, 1, 4, 3, 2)
        wt = wt.reshape(kh, kw, cog, groups * cig)
    transposed = _validate.conv_args(gy, np.ascontiguousarray(wt), None, 1, pads,
                                     (g.dilation_h, g.dilation_w), groups, args.layout, None,
                                     "conv2d_backward")
    return transposed if transposed.out_shape4 == args.x.shape else None


def _backward_direct(gy, x, w, grad_x, grad_w, args: _validate.ConvArgs, n_threads: int):
    """The direct NCHW kernels; NHWC has its own depthwise kernels and runs the NCHW kernels on
    transposed copies otherwise."""
    g = args.geometry
    nhwc = args.layout == "NHWC"
    if nhwc and args.groups == g.c == args.c_out:
        return _backward_depthwise_nhwc(gy, x, w, grad_x, grad_w, args, n_threads)
    if nhwc:
        gy = np.ascontiguousarray(gy.transpose(0, 3, 1, 2))
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        w = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    macs = _macs(args)
    geometry = (g.stride_h, g.stride_w, g.dilation_h, g.dilation_w)
    if grad_x is not None:
        gx = np.empty((g.n, g.c, g.h, g.w), dtype=args.dtype) if nhwc else grad_x
        threads = _threads.for_work(n_threads, macs, g.n * g.c)
        _conv_backward.conv2d_backward_input_nchw(gy, w, gx, *geometry, g.pad_top, g.pad_left,
                                                  args.groups, threads)
        if nhwc:
            grad_x[...] = gx.transpose(0, 2, 3, 1)
    if grad_w is not None:
        x, gp = _pad_if_not_finite(x, gy, g, "NCHW")
        pad_top, pad_left = gp.pad_top, gp.pad_left
        gw = np.empty(w.shape, dtype=args.dtype) if nhwc else grad_w
        threads = _threads.for_work(n_threads, macs, gw.shape[0] * gw.shape[1])
        scratch = np.empty((threads, g.kernel_h * g.kernel_w * g.out_w), dtype=args.dtype)
        _conv_backward.conv2d_backward_weight_nchw(gy, x, gw, scratch, *geometry, pad_top,
                                                   pad_left, args.groups, threads)
        if nhwc:
            grad_w[...] = gw.transpose(2, 3, 1, 0)


def _backward_depthwise_nhwc(gy, x, w, grad_x, grad_w, args: _validate.ConvArgs,
                             n_threads: int):
    g = args.geometry
    geometry = (g.stride_h, g.stride_w, g.dilation_h, g.dilation_w)
    work = g.n * g.c * g.out_pixels * g.kernel_h * g.kernel_w
    if grad_x is not None:
        threads = _threads.for_work(n_threads, work, g.n * g.h)
        _conv_backward.depthwise_backward_input_nhwc(gy, w, grad_x, *geometry, g.pad_top,
                                                     g.pad_left, threads)
    if grad_w is not None:
        x, gp = _pad_if_not_finite(x, gy, g, "NHWC")
        pad_top, pad_left = gp.pad_top, gp.pad_left
        # Channel blocks of a multiple of 16, one per thread when there are enough channels.
        threads = _threads.for_work(n_threads, work, -(-g.c // 16))
        block = 16 * -(-g.c // (16 * threads))
        scratch = np.empty((threads, g.kernel_h * g.kernel_w * block), dtype=args.dtype)
        _conv_backward.depthwise_backward_weight_nhwc(gy, x, grad_w, scratch, block, *geometry,
                                                      pad_top, pad_left, threads)


def _backward_im2col(gy, x, w, grad_x, grad_w, args: _validate.ConvArgs, n_threads: int):
    """GEMMs on column-matrix tiles: ``grad_weight += grad_out . cols`` and
    ``grad_cols = weight^T . grad_out`` folded back into ``grad_x`` (which starts at zero).

    Like the forward pass, the fill and fold kernels run on the calling thread around NumPy's
    BLAS. The tiles are fixed by the shapes and visited in order, so the sums are deterministic.
    """
    g = args.geometry
    if g.n == 0:
        if grad_w is not None:
            grad_w[...] = 0
        return
    groups, c_out = args.groups, args.c_out
    cig, cog = g.c // groups, c_out // groups
    k = cig * g.kernel_h * g.kernel_w
    pixels = g.out_pixels
    tile_rows = max(1, IM2COL_TILE_BYTES // (k * args.dtype.itemsize))
    if args.layout == "NHWC" and pixels > tile_rows:
        # The NHWC fold works on whole images; one image is larger than a tile, so keep the
        # scratch bounded by running the NCHW tiles (which split images) on transposed copies.
        return _backward_im2col_via_nchw(gy, x, w, grad_x, grad_w, args, n_threads)
    geometry = g.window_args()
    pointwise = _is_pointwise(g)
    buffer = None if pointwise else np.empty(min(tile_rows, g.n * pixels) * k, dtype=args.dtype)
    serial = 1
    need_x, need_w = grad_x is not None, grad_w is not None

    if args.layout == "NCHW":
        gy3 = gy.reshape(g.n, c_out, pixels)
        x3 = x.reshape(g.n, g.c, g.h * g.w)
        w2 = w.reshape(c_out, k)
        gx3 = grad_x.reshape(g.n, g.c, g.h * g.w) if need_x else None
        gw2 = grad_w.reshape(c_out, k) if need_w else None
        if need_w:
            gw2[...] = 0
            product = np.empty((cog, k), dtype=args.dtype)
        for n0, n1, p0, p1 in _nchw_tiles(g.n, pixels, tile_rows):
            b, span = n1 - n0, p1 - p0
            for i in range(groups):
                co, ci = slice(i * cog, (i + 1) * cog), slice(i * cig, (i + 1) * cig)
                gyi = gy3[n0:n1, co, p0:p1]
                if need_w:
                    if pointwise:
                        cols_t = x3[n0:n1, ci, p0:p1]
                    else:
                        cols_t = buffer[:b * k * span].reshape(b, k, span)
                        _im2col.im2col_nchw_t(x, cols_t, n0, p0, i * cig, *geometry, serial)
                    for j in range(b):
                        np.matmul(gyi[j], cols_t[j].T, out=product)
                        gw2[co] += product
                if need_x:
                    if pointwise:
                        np.matmul(w2[co].T, gyi, out=gx3[n0:n1, ci, p0:p1])
                    else:
                        grad_cols_t = buffer[:b * k * span].reshape(b, k, span)
                        np.matmul(w2[co].T, gyi, out=grad_cols_t)
                        _im2col.col2im_nchw_t_add(grad_cols_t, grad_x, n0, p0, i * cig,
                                                  *geometry, serial)
        return

    gy2 = gy.reshape(g.n * pixels, c_out)
    x2 = x.reshape(g.n * g.h * g.w, g.c)
    gx2 = grad_x.reshape(g.n * g.h * g.w, g.c) if need_x else None
    w_groups = [np.ascontiguousarray(w[..., i * cog:(i + 1) * cog]).reshape(k, cog)
                for i in range(groups)]
    if need_w:
        gw_groups = [np.zeros((k, cog), dtype=args.dtype) for _ in range(groups)]
        product = np.empty((k, cog), dtype=args.dtype)
    per_tile = max(1, tile_rows // pixels)
    for n0 in range(0, g.n, per_tile):
        n1 = min(n0 + per_tile, g.n)
        q0, q1 = n0 * pixels, n1 * pixels
        for i in range(groups):
            co, ci = slice(i * cog, (i + 1) * cog), slice(i * cig, (i + 1) * cig)
            gyi = gy2[q0:q1, co]
            if need_w:
                if pointwise:
                    cols = x2[q0:q1, ci]
                else:
                    cols = buffer[:(q1 - q0) * k].reshape(q1 - q0, k)
                    _im2col.im2col_nhwc(x, cols, q0, i * cig, *geometry, serial)
                np.matmul(cols.T, gyi, out=product)
                gw_groups[i] += product
            if need_x:
                if pointwise:
                    np.matmul(gyi, w_groups[i].T, out=gx2[q0:q1, ci])
                else:
                    grad_cols = buffer[:(q1 - q0) * k].reshape(q1 - q0, k)
                    np.matmul(gyi, w_groups[i].T, out=grad_cols)
                    _im2col.col2im_nhwc_add(grad_cols, grad_x, n0, i * cig, *geometry, serial)
    if need_w:
        for i in range(groups):
            grad_w[..., i * cog:(i + 1) * cog] = gw_groups[i].reshape(
                g.kernel_h, g.kernel_w, cig, cog)


def _backward_im2col_via_nchw(gy, x, w, grad_x, grad_w, args: _validate.ConvArgs,
                              n_threads: int):
    g = args.geometry
    nchw = dataclasses.replace(args, layout="NCHW")
    gx = np.zeros((g.n, g.c, g.h, g.w), dtype=args.dtype) if grad_x is not None else None
    gw = np.empty(w.transpose(3, 2, 0, 1).shape, dtype=args.dtype) if grad_w is not None else None
    _backward_im2col(np.ascontiguousarray(gy.transpose(0, 3, 1, 2)),
                     np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
                     np.ascontiguousarray(w.transpose(3, 2, 0, 1)), gx, gw, nchw, n_threads)
    if gx is not None:
        grad_x[...] = gx.transpose(0, 2, 3, 1)
    if gw is not None:
        grad_w[...] = gw.transpose(2, 3, 1, 0)
