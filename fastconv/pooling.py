"""2-D max and average pooling: the public ``max_pool2d`` and ``avg_pool2d``."""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _buffers, _threads, _validate
from ._validate import IntPair, PaddingArg
from ._isa import kernel_module

_pool = kernel_module("_pool")

__all__ = ["max_pool2d", "avg_pool2d", "max_pool2d_backward", "avg_pool2d_backward"]


_COMMON_PARAMETERS = """
    x : array_like
        ``layout="NCHW"``: (N, C, H, W), one image (C, H, W) or a single-channel (H, W).
        ``layout="NHWC"``: (N, H, W, C), (H, W, C) or (H, W).
    kernel_size : int or (int, int)
        Window size, positive.
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same"
        As in :func:`fastconv.conv2d`; each side at most half the kernel size.
    layout : {"NCHW", "NHWC"}
    ceil_mode : bool
        Use ceil instead of floor for the output size; a last window that would start in the
        bottom/right padding is dropped (PyTorch's rule).
"""


def _threads_for(args: _validate.PoolArgs, n_threads: int) -> int:
    g = args.geometry
    rows = g.n * g.out_h * (g.c if args.layout == "NCHW" else 1)
    work = g.n * g.c * g.out_pixels * g.kernel_h * g.kernel_w
    return _threads.for_work(n_threads, work, rows)


def max_pool2d(
    x: ArrayLike,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: PaddingArg = 0,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    ceil_mode: bool = False,
    return_indices: bool = False,
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
):
    """2-D max pooling (PyTorch semantics), padding with -inf.

    Parameters
    ----------{common}
    return_indices : bool
        Also return int64 indices of each maximum within its (n, c) plane, ``h * W + w``
        (PyTorch's format, usable by ``max_unpool2d``-style code).
    out : ndarray, optional
        Receives the values (not the indices); exact result shape and dtype.
    num_threads : int, optional
        Upper limit on threads; ``None`` uses :func:`fastconv.get_num_threads`.

    Returns
    -------
    values : ndarray
        (N, C, OH, OW) or (N, OH, OW, C) per layout (fewer dims for fewer input dims).
    indices : ndarray of int64, only with ``return_indices=True``
        Same shape as ``values``.

    Notes
    -----
    A window containing NaN gives NaN, and its index is the window's last NaN (PyTorch's CPU
    rule, so gradients land where PyTorch puts them). Otherwise the first maximum
    in row-major window order wins ties, as in PyTorch; an index always points at a real input
    cell, never at padding (a window of -inf points at its first real cell).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import max_pool2d
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> max_pool2d(x, 2)
    array([[ 5.,  7.],
           [13., 15.]])
    >>> values, indices = max_pool2d(x[None, None], 3, stride=2, padding=1,
    ...                              return_indices=True)
    >>> indices[0, 0]
    array([[ 5,  7],
           [13, 15]])
    """
    func = "max_pool2d"
    args = _validate.pool_args(x, kernel_size, stride, padding, layout, ceil_mode, func)
    n_threads = _threads.resolve(num_threads, func)
    shape4 = args.out_shape4
    out = _validate.check_out(out, _validate.final_shape(args.restore, shape4), args.dtype, func)
    g = args.geometry
    if return_indices:
        _validate.check_size(shape4, np.dtype(np.int64).itemsize, "the indices", func)
        _validate.check_index_offsets(args, func)
    target4 = _validate.kernel_target(out, shape4, args.dtype, args.x).reshape(shape4)
    indices4 = np.empty(shape4 if return_indices else (0, 0, 0, 0), dtype=np.int64)
    kernel = _pool.max_pool_nchw if args.layout == "NCHW" else _pool.max_pool_nhwc
    kernel(np.ascontiguousarray(args.x), target4, indices4, g.kernel_h, g.kernel_w,
           g.stride_h, g.stride_w, g.pad_top, g.pad_left, _threads_for(args, n_threads))
    values = _validate.deliver(args.restore(target4), out)
    return (values, args.restore(indices4)) if return_indices else values


def avg_pool2d(
    x: ArrayLike,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: PaddingArg = 0,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """2-D average pooling (PyTorch semantics), padding with zeros.

    Parameters
    ----------{common}
    count_include_pad : bool
        True (default): divide by the window cells inside the padded input (explicit padding
        counts, a ceil_mode overhang does not). False: divide by the real input cells only,
        which is also what TensorFlow's 'SAME' average pooling does.
    divisor_override : int, optional
        Divide every window sum by this positive number instead.
    out : ndarray, optional
        Written in place and returned; exact result shape and dtype.
    num_threads : int, optional
        Upper limit on threads; ``None`` uses :func:`fastconv.get_num_threads`.

    Returns
    -------
    ndarray
        (N, C, OH, OW) or (N, OH, OW, C) per layout (fewer dims for fewer input dims).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import avg_pool2d
    >>> x = np.ones((1, 1, 3, 3))
    >>> avg_pool2d(x, 2, stride=1, padding=1)[0, 0]
    array([[0.25, 0.5 , 0.5 , 0.25],
           [0.5 , 1.  , 1.  , 0.5 ],
           [0.5 , 1.  , 1.  , 0.5 ],
           [0.25, 0.5 , 0.5 , 0.25]])
    >>> avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=False)[0, 0, 0]
    array([1., 1., 1., 1.])
    """
    func = "avg_pool2d"
    args = _validate.pool_args(x, kernel_size, stride, padding, layout, ceil_mode, func)
    n_threads = _threads.resolve(num_threads, func)
    divisor = _validate.avg_divisor(divisor_override, func)
    shape4 = args.out_shape4
    out = _validate.check_out(out, _validate.final_shape(args.restore, shape4), args.dtype, func)
    g = args.geometry
    target4 = _validate.kernel_target(out, shape4, args.dtype, args.x).reshape(shape4)
    kernel = _pool.avg_pool_nchw if args.layout == "NCHW" else _pool.avg_pool_nhwc
    kernel(np.ascontiguousarray(args.x), target4, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
           g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, bool(count_include_pad), divisor,
           _threads_for(args, n_threads))
    return _validate.deliver(args.restore(target4), out)




# --------------------------------------------------------------------------------------------
# backward

_BACKWARD_PARAMETERS = """
    grad_out : array_like
        Gradient of the loss with respect to the pooling output; same shape as that output.
    kernel_size, stride, padding, layout, ceil_mode
        As given to the forward op.
"""


def _backward_threads(g: _validate.Geometry, layout: str, n_threads: int) -> int:
    # Work items are (n, c) planes for NCHW, (n, channel block) for NHWC (see the kernels).
    items = g.n * (g.c if layout == "NCHW" else -(-g.c // _pool.BACKWARD_CHANNEL_BLOCK))
    work = g.n * g.c * (g.h * g.w + g.out_pixels * g.kernel_h * g.kernel_w)
    return _threads.for_work(n_threads, work, items)


def max_pool2d_backward(
    grad_out: ArrayLike,
    x: ArrayLike,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: PaddingArg = 0,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    ceil_mode: bool = False,
    indices: Optional[ArrayLike] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Gradient of :func:`max_pool2d` with respect to its input (PyTorch's autograd rule).

    Each window's gradient goes to the window's maximum: the first one in row-major window
    order, or the last NaN (the cell ``max_pool2d(..., return_indices=True)`` reports).
    Overlapping windows that share a maximum add up; all other cells get 0.

    Parameters
    ----------{common}
    x : array_like
        The forward op's input.
    indices : array_like of int, optional
        The indices returned by ``max_pool2d(x, ..., return_indices=True)``; when given the
        windows are not searched again. Each must lie in ``[0, H*W)``.
    num_threads : int, optional
        Upper limit on threads; the result does not depend on it.

    Returns
    -------
    ndarray
        Shaped like ``x``, in the dtype of ``grad_out`` and ``x`` combined.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import max_pool2d, max_pool2d_backward
    >>> x = np.array([[1., 3., 2.], [4., 0., 5.], [1., 1., 1.]])
    >>> max_pool2d(x, 2, stride=1)
    array([[4., 5.],
           [4., 5.]])
    >>> max_pool2d_backward(np.array([[10., 20.], [30., 40.]]), x, 2, stride=1)
    array([[ 0.,  0.,  0.],
           [40.,  0., 60.],
           [ 0.,  0.,  0.]])
    """
    func = "max_pool2d_backward"
    grad, indices4 = _validate.max_pool_backward_args(grad_out, x, kernel_size, stride, padding,
                                                      layout, ceil_mode, indices, func)
    n_threads = _threads.resolve(num_threads, func)
    args, g = grad.pool, grad.pool.geometry
    if indices4 is None:
        _validate.check_index_offsets(args, func)
    grad_x = _buffers.empty(args.x.shape, args.dtype)
    empty = np.empty((0, 0, 0, 0), dtype=args.dtype)
    source = empty if indices4 is not None else np.ascontiguousarray(args.x)
    if indices4 is None:
        indices4 = np.empty((0, 0, 0, 0), dtype=np.int64)
    kernel = _pool.max_pool_backward_nchw if args.layout == "NCHW" else _pool.max_pool_backward_nhwc
    with np.errstate(**_validate.IEEE_SILENT):
        kernel(source, np.ascontiguousarray(grad.grad_out), np.ascontiguousarray(indices4),
               grad_x, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_top, g.pad_left,
               _backward_threads(g, args.layout, n_threads))
    return args.restore(grad_x)


def avg_pool2d_backward(
    grad_out: ArrayLike,
    input_shape: Tuple[int, ...],
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: PaddingArg = 0,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to its input (PyTorch's autograd rule).

    Each window spreads ``grad_out / divisor`` over its real cells, with the forward op's
    divisor; overlapping windows add up. The input itself is not needed, only its shape.

    Parameters
    ----------{common}
    input_shape : tuple of int
        Shape of the forward op's input: 2, 3 or 4 ints, as x's shape was.
    count_include_pad, divisor_override
        As given to :func:`avg_pool2d`.
    num_threads : int, optional
        Upper limit on threads; the result does not depend on it.

    Returns
    -------
    ndarray of shape ``input_shape``
        float32 for a float32 (or float16) ``grad_out``, float64 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import avg_pool2d_backward
    >>> avg_pool2d_backward(np.array([[4.0, 8.0]]), (2, 4), 2)
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.]])
    """
    func = "avg_pool2d_backward"
    grad = _validate.avg_pool_backward_args(grad_out, input_shape, kernel_size, stride, padding,
                                            layout, ceil_mode, func)
    n_threads = _threads.resolve(num_threads, func)
    divisor = _validate.avg_divisor(divisor_override, func)
    args, g = grad.pool, grad.pool.geometry
    grad_x = _buffers.empty(args.x.shape, args.dtype)
    kernel = _pool.avg_pool_backward_nchw if args.layout == "NCHW" else _pool.avg_pool_backward_nhwc
    threads = _backward_threads(g, args.layout, n_threads)
    if args.layout == "NHWC":
        threads = min(threads, max(g.n, 1))   # the NHWC kernel's work items are whole images
    with np.errstate(**_validate.IEEE_SILENT):
        kernel(np.ascontiguousarray(grad.grad_out), grad_x, g.kernel_h, g.kernel_w, g.stride_h,
               g.stride_w, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right,
               bool(count_include_pad), divisor, threads)
    return args.restore(grad_x)


max_pool2d.__doc__ = max_pool2d.__doc__.format(common=_COMMON_PARAMETERS)
avg_pool2d.__doc__ = avg_pool2d.__doc__.format(common=_COMMON_PARAMETERS)
max_pool2d_backward.__doc__ = max_pool2d_backward.__doc__.format(common=_BACKWARD_PARAMETERS)
avg_pool2d_backward.__doc__ = avg_pool2d_backward.__doc__.format(common=_BACKWARD_PARAMETERS)
