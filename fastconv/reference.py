"""Slow, auditable NumPy reference implementation of every public ``fastconv`` op.

Each function here accepts exactly the arguments of the fast op of the same name and raises the
same errors, because both normalise their arguments with :mod:`fastconv._validate`. The
reference then computes the result in the most direct way NumPy allows: one vectorised step per
kernel tap ``(kh, kw)``, never a Python loop over pixels. The test suite checks the fast ops
against these functions, so clarity matters more here than speed.

Conventions shared by every op:

* Work happens in NCHW; NHWC inputs are transposed in and the result is transposed back.
* Padding is explicit: the input is padded with :func:`numpy.pad` and every kernel tap reads a
  strided slice of the padded array (see :func:`_taps`).
* Results have the compute dtype chosen by :mod:`fastconv._validate`, are C-contiguous and have
  the caller's rank. ``out=`` is validated with :func:`fastconv._validate.check_out`.
* ``algorithm`` and ``num_threads`` are validated like the fast op's, then ignored.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple, Union

import numpy as np

from fastconv._validate import (
    ConvArgs,
    Geometry,
    PoolArgs,
    as_array,
    ALGORITHMS,
    IEEE_SILENT,
    avg_divisor,
    check_num_threads,
    check_out,
    col2im_args,
    cols_shape,
    common_dtype,
    avg_pool_backward_args,
    conv_args,
    conv_backward_args,
    deliver,
    final_shape,
    im2col_args,
    max_pool_backward_args,
    normalize_choice,
    pool_args,
    relu_backward_args,
)

__all__ = [
    "conv2d", "relu", "max_pool2d", "avg_pool2d", "im2col", "col2im",
    "conv2d_backward", "relu_backward", "max_pool2d_backward", "avg_pool2d_backward",
]


# --------------------------------------------------------------------------------------------
# helpers


def _to_nchw(x4: np.ndarray, layout: str) -> np.ndarray:
    """View a 4-D array in ``layout`` as NCHW."""
    return x4 if layout == "NCHW" else x4.transpose(0, 3, 1, 2)


def _from_nchw(y: np.ndarray, layout: str) -> np.ndarray:
    """A C-contiguous copy of the NCHW array ``y`` in ``layout``."""
    return np.ascontiguousarray(y if layout == "NCHW" else y.transpose(0, 2, 3, 1))


def _to_caller(y: np.ndarray, args: Union[ConvArgs, PoolArgs]) -> np.ndarray:
    """The NCHW result ``y`` in the caller's layout and rank."""
    return args.restore(_from_nchw(y, args.layout))  # dropping size-1 axes keeps it contiguous


def _pad(a: np.ndarray, g: Geometry, value: Any) -> np.ndarray:
    """Pad the last two (H, W) axes of ``a`` with ``value``.

    Adds the explicit padding of ``g`` and, after it, any extra bottom/right cells the last
    window needs (only with pooling's ceil_mode, whose overhang explicit padding does not cover).
    """
    need_h = (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1
    need_w = (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1
    extra_h = max(0, need_h - (g.pad_top + g.h + g.pad_bottom))
    extra_w = max(0, need_w - (g.pad_left + g.w + g.pad_right))
    widths = [(0, 0)] * (a.ndim - 2) + [
        (g.pad_top, g.pad_bottom + extra_h),
        (g.pad_left, g.pad_right + extra_w),
    ]
    return np.pad(a, widths, constant_values=value)


def _taps(g: Geometry) -> Iterator[Tuple[int, int, slice, slice]]:
    """Yield ``(kh, kw, hs, ws)`` for each kernel tap in row-major order.

    ``hs, ws`` slice the padded input at the cell the tap reads for every output pixel, so
    ``padded[..., hs, ws]`` has shape ``(..., out_h, out_w)``.
    """
    for kh in range(g.kernel_h):
        top = kh * g.dilation_h
        hs = slice(top, top + g.stride_h * (g.out_h - 1) + 1, g.stride_h)
        for kw in range(g.kernel_w):
            left = kw * g.dilation_w
            ws = slice(left, left + g.stride_w * (g.out_w - 1) + 1, g.stride_w)
            yield kh, kw, hs, ws


def _avg_divisors(g: Geometry, dtype: np.dtype, count_include_pad: bool, divisor: int):
    """Average pooling's divisor: ``divisor`` (divisor_override) if non-zero, else per output
    pixel the number of window cells inside the padded input (``count_include_pad``) or inside
    the real input. The ceil_mode overhang never counts."""
    if divisor:
        return divisor
    # 1 for every cell that counts towards the divisor, windowed like the input.
    inside = _pad(np.ones((g.h, g.w), dtype=dtype), g, 1 if count_include_pad else 0)
    inside[g.pad_top + g.h + g.pad_bottom:, :] = 0
    inside[:, g.pad_left + g.w + g.pad_right:] = 0
    return _windows(inside, g).sum(axis=-1)


def _windows(padded: np.ndarray, g: Geometry) -> np.ndarray:
    """Every window of ``padded``: shape ``(..., out_h, out_w, KH*KW)``, taps in row-major order."""
    return np.stack([padded[..., hs, ws] for _, _, hs, ws in _taps(g)], axis=-1)


# --------------------------------------------------------------------------------------------
# public ops


def conv2d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    layout: str = "NCHW",
    activation: Optional[str] = None,
    algorithm: str = "auto",
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.conv2d`.

    Cross-correlation (no kernel flip), computed as one ``einsum`` per kernel tap over a
    zero-padded copy of the input.

    Parameters
    ----------
    x, weight, bias, stride, padding, dilation, groups, layout, activation, out
        As for :func:`fastconv.conv2d`.
    algorithm, num_threads
        Validated like :func:`fastconv.conv2d`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        The convolution, in ``x``'s layout and rank (``out`` if given).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import conv2d
    >>> x = np.array([[1, 2, 1, 0], [0, 1, 3, 2], [2, 1, 0, 1], [1, 0, 1, 2]])
    >>> conv2d(x, np.array([[1, 0, -1]] * 3))
    array([[-1.,  1.],
           [-1., -3.]])
    """
    args = conv_args(x, weight, bias, stride, padding, dilation, groups, layout, activation)
    normalize_choice(algorithm, ALGORITHMS, "algorithm", "conv2d")
    check_num_threads(num_threads, "conv2d")
    check_out(out, final_shape(args.restore, args.out_shape4), args.dtype, "conv2d")
    g, groups = args.geometry, args.groups
    # Split channels into groups: x as (N, G, C_in/G, H, W), weight as (G, C_out/G, C_in/G, KH, KW).
    weight_oihw = args.weight if args.layout == "NCHW" else args.weight.transpose(3, 2, 0, 1)
    xp = _pad(_to_nchw(args.x, args.layout), g, 0)
    xg = xp.reshape(g.n, groups, g.c // groups, *xp.shape[2:])
    wg = weight_oihw.reshape(groups, args.c_out // groups, *weight_oihw.shape[1:])

    y = np.zeros((g.n, groups, args.c_out // groups, g.out_h, g.out_w), dtype=args.dtype)
    with np.errstate(**IEEE_SILENT):
        for kh, kw, hs, ws in _taps(g):
            y += np.einsum("ngchw,goc->ngohw", xg[..., hs, ws], wg[..., kh, kw])
        y = y.reshape(g.n, args.c_out, g.out_h, g.out_w)
        if args.bias is not None:
            y += args.bias[:, np.newaxis, np.newaxis]
    if args.activation == "relu":
        np.maximum(y, 0, out=y)  # NaN stays NaN

    return deliver(_to_caller(y, args), out)


def relu(
    x: Any, *, out: Optional[np.ndarray] = None, num_threads: Optional[int] = None
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.relu`.

    ``max(x, 0)`` elementwise; NaN stays NaN. Any rank, including 0-d.

    Parameters
    ----------
    x, out
        As for :func:`fastconv.relu`; ``out`` may be ``x`` itself.
    num_threads
        Validated like :func:`fastconv.relu`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        ``max(x, 0)`` in the compute dtype (``out`` if given).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import relu
    >>> relu(np.array([-1.5, 0.5, 2.0, np.nan]))
    array([0. , 0.5, 2. , nan])
    """
    arr = as_array(x, "x", "relu")
    check_num_threads(num_threads, "relu")
    dtype = common_dtype("relu", x=arr)
    check_out(out, arr.shape, dtype, "relu")
    # np.asarray rather than ascontiguousarray: the latter turns a 0-d result into 1-d.
    result = np.asarray(np.maximum(arr.astype(dtype, copy=False), 0), order="C")
    return deliver(result, out)


def max_pool2d(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    *,
    layout: str = "NCHW",
    ceil_mode: bool = False,
    return_indices: bool = False,
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Slow, auditable NumPy reference for :func:`fastconv.max_pool2d`.

    Padding cells are ``-inf``; a window holding a NaN gives NaN. The index of a window's
    maximum is the flat position ``h * W + w`` in the unpadded (n, c) plane of the first real
    (non-padding) cell, in row-major window order, equal to the maximum; when the maximum is NaN
    it is the window's last NaN, as in PyTorch's CPU kernel.

    Parameters
    ----------
    x, kernel_size, stride, padding, layout, ceil_mode, return_indices, out
        As for :func:`fastconv.max_pool2d`; ``out`` receives the values only.
    num_threads
        Validated like :func:`fastconv.max_pool2d`'s, then ignored.

    Returns
    -------
    numpy.ndarray or tuple of numpy.ndarray
        The pooled values (``out`` if given), and with ``return_indices`` also the int64 indices.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import max_pool2d
    >>> x = np.array([[1., 3., 2., 0.], [4., 3., 0., 0.], [5., 1., 2., 7.]])
    >>> values, indices = max_pool2d(x, 2, return_indices=True)
    >>> values
    array([[4., 2.]])
    >>> indices
    array([[4, 2]])
    >>> max_pool2d(x, 2, ceil_mode=True)
    array([[4., 2.],
           [5., 7.]])
    """
    args = pool_args(x, kernel_size, stride, padding, layout, ceil_mode, "max_pool2d")
    check_num_threads(num_threads, "max_pool2d")
    check_out(out, final_shape(args.restore, args.out_shape4), args.dtype, "max_pool2d")
    g = args.geometry
    windows = _windows(_pad(_to_nchw(args.x, args.layout), g, -np.inf), g)
    values = windows.max(axis=-1)  # propagates NaN

    result = deliver(_to_caller(values, args), out)
    if not return_indices:
        return result

    # Flat index of every cell of the (n, c) plane, -1 for padding, windowed like the values.
    flat = _windows(_pad(np.arange(g.h * g.w, dtype=np.int64).reshape(g.h, g.w), g, -1), g)
    m = values[..., np.newaxis]
    hit = ((windows == m) | (np.isnan(windows) & np.isnan(m))) & (flat >= 0)
    # Flat indices grow in row-major window order: the first hit is the smallest index, the
    # last the largest. PyTorch keeps the first maximum but the last NaN.
    first = np.where(hit, flat, np.iinfo(np.int64).max).min(axis=-1)
    last = np.where(hit, flat, -1).max(axis=-1)
    chosen = np.where(np.isnan(values), last, first)
    return result, _to_caller(chosen, args)


def avg_pool2d(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    *,
    layout: str = "NCHW",
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.avg_pool2d`.

    Window sums over the zero-padded input, divided by ``divisor_override`` if given, else by
    the number of window cells inside the explicitly padded input (``count_include_pad``) or
    inside the real input (otherwise). The ceil_mode overhang never counts.

    Parameters
    ----------
    x, kernel_size, stride, padding, layout, ceil_mode, count_include_pad, divisor_override, out
        As for :func:`fastconv.avg_pool2d`.
    num_threads
        Validated like :func:`fastconv.avg_pool2d`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        The pooled averages (``out`` if given).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import avg_pool2d
    >>> x = np.array([[1., 2., 3.], [4., 5., 6.]])
    >>> avg_pool2d(x, 2, padding=1)
    array([[0.25, 1.25],
           [1.  , 2.75]])
    >>> avg_pool2d(x, 2, padding=1, count_include_pad=False)
    array([[1. , 2.5],
           [4. , 5.5]])
    """
    args = pool_args(x, kernel_size, stride, padding, layout, ceil_mode, "avg_pool2d")
    check_num_threads(num_threads, "avg_pool2d")
    divisor = avg_divisor(divisor_override, "avg_pool2d")
    check_out(out, final_shape(args.restore, args.out_shape4), args.dtype, "avg_pool2d")
    g = args.geometry
    counts = _avg_divisors(g, args.dtype, count_include_pad, divisor)
    with np.errstate(**IEEE_SILENT):
        sums = _windows(_pad(_to_nchw(args.x, args.layout), g, 0), g).sum(axis=-1)
        averages = sums / counts
    return deliver(_to_caller(averages, args), out)


def im2col(
    x: Any,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    *,
    layout: str = "NCHW",
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.im2col`.

    One row per output pixel, ordered ``(n, oh, ow)``; columns ordered ``(c, kh, kw)`` for
    NCHW and ``(kh, kw, c)`` for NHWC. Padding cells are zero.

    Parameters
    ----------
    x, kernel_size, stride, padding, dilation, layout
        As for :func:`fastconv.im2col`; ``x`` is 4-D.
    num_threads
        Validated like :func:`fastconv.im2col`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        Shape ``(N * out_h * out_w, C * KH * KW)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import im2col
    >>> im2col(np.arange(9.).reshape(1, 1, 3, 3), 2)
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    x4, g, layout = im2col_args(x, kernel_size, stride, padding, dilation, layout)
    check_num_threads(num_threads, "im2col")
    windows = _windows(_pad(_to_nchw(x4, layout), g, 0), g)  # (N, C, OH, OW, KH*KW)
    order = (0, 2, 3, 1, 4) if layout == "NCHW" else (0, 2, 3, 4, 1)
    return np.ascontiguousarray(windows.transpose(order)).reshape(cols_shape(g))


def col2im(
    cols: Any,
    input_shape: Any,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    *,
    layout: str = "NCHW",
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.col2im`.

    The adjoint of :func:`im2col`: every entry of ``cols`` is added to the input cell it was
    copied from; overlapping windows sum and entries that came from padding are dropped.

    Parameters
    ----------
    cols, input_shape, kernel_size, stride, padding, dilation, layout
        As for :func:`fastconv.col2im`; ``input_shape`` is 4-D, in ``layout``.
    num_threads
        Validated like :func:`fastconv.col2im`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        Shape ``input_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import col2im
    >>> col2im(np.ones((4, 4)), (1, 1, 3, 3), 2)
    array([[[[1., 2., 1.],
             [2., 4., 2.],
             [1., 2., 1.]]]])
    """
    cols, g, layout = col2im_args(cols, input_shape, kernel_size, stride, padding, dilation, layout)
    check_num_threads(num_threads, "col2im")
    # Undo im2col's row and column order, giving (N, C, KH, KW, OH, OW).
    if layout == "NCHW":
        x6 = cols.reshape(g.n, g.out_h, g.out_w, g.c, g.kernel_h, g.kernel_w)
        x6 = x6.transpose(0, 3, 4, 5, 1, 2)
    else:
        x6 = cols.reshape(g.n, g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.c)
        x6 = x6.transpose(0, 5, 3, 4, 1, 2)

    padded = _pad(np.zeros((g.n, g.c, g.h, g.w), dtype=cols.dtype), g, 0)
    with np.errstate(**IEEE_SILENT):
        for kh, kw, hs, ws in _taps(g):
            # Within one tap every output pixel reads a distinct cell, so slice += is exact.
            padded[..., hs, ws] += x6[:, :, kh, kw]
    x = padded[..., g.pad_top:g.pad_top + g.h, g.pad_left:g.pad_left + g.w]
    return _from_nchw(x, layout)


# --------------------------------------------------------------------------------------------
# backward passes


def _crop(padded: np.ndarray, g: Geometry) -> np.ndarray:
    """The unpadded (H, W) region of an array padded by :func:`_pad`."""
    return padded[..., g.pad_top:g.pad_top + g.h, g.pad_left:g.pad_left + g.w]


def conv2d_backward(
    grad_out: Any,
    x: Any,
    weight: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    layout: str = "NCHW",
    needs: Any = ("input", "weight", "bias"),
    algorithm: str = "auto",
    num_threads: Optional[int] = None,
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Slow, auditable NumPy reference for :func:`fastconv.conv2d_backward`.

    The adjoint of :func:`conv2d`, one ``einsum`` per kernel tap: tap ``(kh, kw)`` read the
    strided slice ``padded_x[..., hs, ws]`` in the forward pass, so it adds
    ``grad_out x weight[..., kh, kw]`` back onto that slice of the padded input gradient and
    ``grad_out . slice`` onto ``grad_weight[..., kh, kw]``. The padding is then cropped away.

    Parameters
    ----------
    grad_out, x, weight, stride, padding, dilation, groups, layout, needs
        As for :func:`fastconv.conv2d_backward`.
    algorithm, num_threads
        Validated like :func:`fastconv.conv2d_backward`'s, then ignored.

    Returns
    -------
    (grad_x, grad_weight, grad_bias)
        Shaped like x, weight and (C_out,); ``None`` for an entry not in ``needs``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import conv2d_backward
    >>> x = np.arange(9.0).reshape(3, 3)
    >>> gx, gw, gb = conv2d_backward(np.ones((2, 2)), x, np.ones((2, 2)))
    >>> gx
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    >>> gw
    array([[ 8., 12.],
           [20., 24.]])
    >>> gb
    array([4.])
    """
    func = "conv2d_backward"
    grad = conv_backward_args(grad_out, x, weight, stride, padding, dilation, groups, layout,
                              needs, func)
    normalize_choice(algorithm, ALGORITHMS, "algorithm", func)
    check_num_threads(num_threads, func)
    args, g, groups = grad.conv, grad.conv.geometry, grad.conv.groups
    cog, cig = args.c_out // groups, g.c // groups
    weight_oihw = args.weight if args.layout == "NCHW" else args.weight.transpose(3, 2, 0, 1)
    gy = _to_nchw(grad.grad_out, args.layout)
    gyg = gy.reshape(g.n, groups, cog, g.out_h, g.out_w)
    wg = weight_oihw.reshape(groups, cog, cig, g.kernel_h, g.kernel_w)
    xp = _pad(_to_nchw(args.x, args.layout), g, 0)
    xg = xp.reshape(g.n, groups, cig, *xp.shape[2:])

    grad_x = grad_w = grad_b = None
    with np.errstate(**IEEE_SILENT):
        if "input" in grad.needs:
            gxp = np.zeros(xg.shape, dtype=args.dtype)
            for kh, kw, hs, ws in _taps(g):
                # Within one tap every output pixel reads a distinct cell, so slice += is exact.
                gxp[..., hs, ws] += np.einsum("ngohw,goc->ngchw", gyg, wg[..., kh, kw])
            gx = _crop(gxp.reshape(xp.shape), g)
            grad_x = args.restore(_from_nchw(gx, args.layout))
        if "weight" in grad.needs:
            gw = np.empty(wg.shape, dtype=args.dtype)
            for kh, kw, hs, ws in _taps(g):
                gw[..., kh, kw] = np.einsum("ngohw,ngchw->goc", gyg, xg[..., hs, ws])
            gw = gw.reshape(weight_oihw.shape)
            if args.layout == "NHWC":
                gw = gw.transpose(2, 3, 1, 0)
            grad_w = np.ascontiguousarray(gw).reshape(grad.weight_shape)
        if "bias" in grad.needs:
            grad_b = gy.sum(axis=(0, 2, 3))
    return grad_x, grad_w, grad_b


def relu_backward(
    grad_out: Any, x: Any, *, out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.relu_backward`.

    ``0 where x <= 0, else grad_out`` (PyTorch's rule: the gradient at exactly 0 is 0, and a
    NaN x passes grad_out through). ``x`` may equally be ReLU's input or its output.

    Parameters
    ----------
    grad_out, x, out
        As for :func:`fastconv.relu_backward`.
    num_threads
        Validated like :func:`fastconv.relu_backward`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        The input gradient (``out`` if given).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import relu_backward
    >>> relu_backward(np.array([1.0, 2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 2.0, np.nan]))
    array([0., 0., 3., 4.])
    """
    grad_out, x, dtype = relu_backward_args(grad_out, x)
    check_num_threads(num_threads, "relu_backward")
    check_out(out, x.shape, dtype, "relu_backward")
    result = np.where(x <= 0, dtype.type(0), grad_out.astype(dtype, copy=False))
    return deliver(np.asarray(result, dtype=dtype, order="C"), out)


def max_pool2d_backward(
    grad_out: Any,
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    *,
    layout: str = "NCHW",
    ceil_mode: bool = False,
    indices: Any = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.max_pool2d_backward`.

    Each window's gradient goes to the cell :func:`max_pool2d` reports as its maximum (or to
    ``indices`` when given); ``numpy.add.at`` accumulates overlapping windows in row-major
    output order.

    Parameters
    ----------
    grad_out, x, kernel_size, stride, padding, layout, ceil_mode, indices
        As for :func:`fastconv.max_pool2d_backward`.
    num_threads
        Validated like :func:`fastconv.max_pool2d_backward`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        The input gradient, shaped like ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import max_pool2d_backward
    >>> x = np.array([[1., 3., 2.], [4., 0., 5.], [1., 1., 1.]])
    >>> max_pool2d_backward(np.array([[10., 20.], [30., 40.]]), x, 2, stride=1)
    array([[ 0.,  0.,  0.],
           [40.,  0., 60.],
           [ 0.,  0.,  0.]])
    """
    func = "max_pool2d_backward"
    grad, idx4 = max_pool_backward_args(grad_out, x, kernel_size, stride, padding, layout,
                                        ceil_mode, indices, func)
    check_num_threads(num_threads, func)
    args, g = grad.pool, grad.pool.geometry
    if idx4 is None:
        _, idx = max_pool2d(args.x, kernel_size, stride, padding, layout=args.layout,
                            ceil_mode=ceil_mode, return_indices=True)
        idx4 = idx
    planes = _to_nchw(idx4, args.layout).reshape(g.n * g.c, g.out_pixels)
    gy = _to_nchw(grad.grad_out, args.layout).reshape(g.n * g.c, g.out_pixels)
    gx = np.zeros((g.n * g.c, g.h * g.w), dtype=args.dtype)
    rows = np.broadcast_to(np.arange(g.n * g.c)[:, np.newaxis], planes.shape)
    with np.errstate(**IEEE_SILENT):
        np.add.at(gx, (rows, planes), gy)
    return args.restore(_from_nchw(gx.reshape(g.n, g.c, g.h, g.w), args.layout))


def avg_pool2d_backward(
    grad_out: Any,
    input_shape: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    *,
    layout: str = "NCHW",
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Slow, auditable NumPy reference for :func:`fastconv.avg_pool2d_backward`.

    Each window spreads ``grad_out / divisor`` evenly over its cells (the divisor of
    :func:`avg_pool2d`); cells in the padding are dropped. One slice ``+=`` per window tap.

    Parameters
    ----------
    grad_out, input_shape, kernel_size, stride, padding, layout, ceil_mode, count_include_pad,
    divisor_override
        As for :func:`fastconv.avg_pool2d_backward`.
    num_threads
        Validated like :func:`fastconv.avg_pool2d_backward`'s, then ignored.

    Returns
    -------
    numpy.ndarray
        The input gradient, of shape ``input_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.reference import avg_pool2d_backward
    >>> avg_pool2d_backward(np.array([[4.0, 8.0]]), (2, 4), 2)
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.]])
    """
    func = "avg_pool2d_backward"
    grad = avg_pool_backward_args(grad_out, input_shape, kernel_size, stride, padding, layout,
                                  ceil_mode, func)
    check_num_threads(num_threads, func)
    divisor = avg_divisor(divisor_override, func)
    args, g = grad.pool, grad.pool.geometry
    counts = _avg_divisors(g, args.dtype, count_include_pad, divisor)
    with np.errstate(**IEEE_SILENT):
        share = _to_nchw(grad.grad_out, args.layout) / counts
        gxp = _pad(np.zeros((g.n, g.c, g.h, g.w), dtype=args.dtype), g, 0)
        for _, _, hs, ws in _taps(g):
            gxp[..., hs, ws] += share
    return args.restore(_from_nchw(_crop(gxp, g), args.layout))
