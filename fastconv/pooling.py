"""2-D max and average pooling: the public ``max_pool2d`` and ``avg_pool2d``."""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from numpy.typing import ArrayLike

from . import _threads, _validate
from ._validate import IntPair, PaddingArg
from ._kernels import _pool

__all__ = ["max_pool2d", "avg_pool2d"]


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
    A window containing NaN gives NaN, and its index is the first NaN's (PyTorch's CPU kernel
    reports the last NaN of the window instead; the values agree). Otherwise the first maximum
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


max_pool2d.__doc__ = max_pool2d.__doc__.format(common=_COMMON_PARAMETERS)
avg_pool2d.__doc__ = avg_pool2d.__doc__.format(common=_COMMON_PARAMETERS)
