"""The im2col transform and its adjoint col2im (PyTorch calls them unfold and fold)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import _buffers, _threads, _validate
from ._validate import IntPair, PaddingArg
from ._isa import kernel_module

_im2col = kernel_module("_im2col")

__all__ = ["im2col", "col2im"]



def im2col(
    x: ArrayLike,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: PaddingArg = 0,
    dilation: IntPair = 1,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Unfold every sliding window of a batch into one row of a matrix.

    Parameters
    ----------
    x : array_like
        (N, C, H, W) for ``layout="NCHW"``, (N, H, W, C) for ``"NHWC"``.
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same"
        As in :func:`fastconv.conv2d`; padded cells are zeros.
    layout : {"NCHW", "NHWC"}
    num_threads : int, optional
        Upper limit on threads; ``None`` uses :func:`fastconv.get_num_threads`.

    Returns
    -------
    ndarray of shape (N*OH*OW, C*KH*KW)
        Rows are ordered (n, oh, ow). Columns are ordered (c, kh, kw) for NCHW, the order of
        "Deep Learning from Scratch" and of a (C_out, C, KH, KW) weight reshaped to
        (C_out, C*KH*KW); and (kh, kw, c) for NHWC, the order of an HWIO weight reshaped to
        (KH*KW*C, C_out). So ``im2col(x, ...) @ w.reshape(C_out, -1).T`` is a convolution.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import im2col
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> im2col(x, 2)
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    func = "im2col"
    x4, g, layout = _validate.im2col_args(x, kernel_size, stride, padding, dilation, layout, func)
    n_threads = _threads.resolve(num_threads, func)
    cols = _buffers.empty(_validate.cols_shape(g), x4.dtype)
    kernel = _im2col.im2col_nchw if layout == "NCHW" else _im2col.im2col_nhwc
    threads = _threads.for_work(n_threads, cols.size, cols.shape[0])
    kernel(np.ascontiguousarray(x4), cols, 0, 0, *g.window_args(), threads)
    return cols


def col2im(
    cols: ArrayLike,
    input_shape: Sequence[int],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: PaddingArg = 0,
    dilation: IntPair = 1,
    *,
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Fold a column matrix back into a batch, summing overlapping windows.

    The adjoint of :func:`im2col` (not its inverse): every entry of ``cols`` is added to the
    input cell it was copied from, and entries that came from padding are dropped. This is the
    input gradient of a convolution computed through im2col.

    Parameters
    ----------
    cols : array_like of shape (N*OH*OW, C*KH*KW)
        Column order as returned by :func:`im2col` for the same ``layout``.
    input_shape : tuple of 4 ints
        (N, C, H, W) for NCHW, (N, H, W, C) for NHWC.
    kernel_size, stride, padding, dilation, layout
        As given to :func:`im2col`.
    num_threads : int, optional
        Upper limit on threads; the result does not depend on it.

    Returns
    -------
    ndarray of shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import col2im
    >>> col2im(np.ones((4, 4)), (1, 1, 3, 3), 2)[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    func = "col2im"
    cols2, g, layout = _validate.col2im_args(cols, input_shape, kernel_size, stride, padding,
                                             dilation, layout, func)
    n_threads = _threads.resolve(num_threads, func)
    shape4 = _validate.spatial_shape(g.n, g.c, g.h, g.w, layout)
    x = _buffers.empty(shape4, cols2.dtype)
    kernel = _im2col.col2im_nchw if layout == "NCHW" else _im2col.col2im_nhwc
    rows = g.n * g.h * (g.c if layout == "NCHW" else 1)
    threads = _threads.for_work(n_threads, cols2.size, rows)
    kernel(np.ascontiguousarray(cols2), x, *g.window_args(), threads)
    return x
