"""Element-wise activations: the public ``relu``."""

from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from . import _buffers, _threads, _validate
from ._isa import kernel_module

_relu = kernel_module("_relu")

__all__ = ["relu", "relu_backward"]

# Elements per thread below which a second thread costs more than it saves.
_RELU_MIN_PER_THREAD = 65536


def relu(x: ArrayLike, *, out: Optional[np.ndarray] = None,
         num_threads: Optional[int] = None) -> np.ndarray:
    """Rectified linear unit, ``max(x, 0)``, element-wise, for arrays of any shape.

    Parameters
    ----------
    x : array_like
        Any shape and memory layout.
    out : ndarray, optional
        Written in place and returned; exact shape and result dtype. ``relu(x, out=x)`` is an
        in-place ReLU.
    num_threads : int, optional
        Upper limit on threads; ``None`` uses :func:`fastconv.get_num_threads`.

    Returns
    -------
    ndarray
        Same shape as x; float32 for float32/float16 input, float64 otherwise.

    Notes
    -----
    NaN stays NaN (as in PyTorch), and -0.0 becomes +0.0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import relu
    >>> relu(np.array([-2.0, -0.0, 0.5, np.nan]))
    array([0. , 0. , 0.5, nan])
    >>> a = np.array([[-1.0, 2.0]], dtype=np.float32)
    >>> relu(a, out=a) is a
    True
    """
    func = "relu"
    x = _validate.as_array(x, "x", func)
    dtype = _validate.common_dtype(func, x=x)
    n_threads = _threads.resolve(num_threads, func)
    out = _validate.check_out(out, x.shape, dtype, func)
    # In place on the same contiguous buffer is safe for an element-wise kernel.
    in_place = out is not None and out is x and x.flags.c_contiguous
    src = np.ascontiguousarray(x, dtype=dtype)
    target = out if in_place else _validate.kernel_target(out, x.shape, dtype, x)
    threads = _threads.for_work(n_threads, src.size, min_per_thread=_RELU_MIN_PER_THREAD)
    # In place, every line is read just before it is written: streaming saves nothing there.
    stream = not in_place and _buffers.streaming(target.nbytes)
    _relu.relu(src.reshape(-1), target.reshape(-1), threads, stream)
    return _validate.deliver(target, out)


def relu_backward(grad_out: ArrayLike, x: ArrayLike, *, out: Optional[np.ndarray] = None,
                  num_threads: Optional[int] = None) -> np.ndarray:
    """Gradient of :func:`relu`: ``grad_out`` where ``x > 0``, else 0 (PyTorch's rule).

    The gradient at exactly 0 is 0. ``x`` may be ReLU's input or its output (they are positive
    at the same places), so after ``conv2d(..., activation="relu")`` pass the conv output. As in
    PyTorch, a NaN in ``x`` lets ``grad_out`` through.

    Parameters
    ----------
    grad_out : array_like
        Gradient of the loss with respect to ReLU's output.
    x : array_like
        ReLU's input or output, same shape as ``grad_out``.
    out : ndarray, optional
        Written in place and returned; exact shape and result dtype. May be ``grad_out`` or
        ``x`` itself.
    num_threads : int, optional
        Upper limit on threads; ``None`` uses :func:`fastconv.get_num_threads`.

    Returns
    -------
    ndarray
        Same shape; float32 when both inputs are float32 (or float16), float64 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import relu_backward
    >>> relu_backward(np.array([1.0, 2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 2.0, np.nan]))
    array([0., 0., 3., 4.])
    """
    func = "relu_backward"
    grad_out, x, dtype = _validate.relu_backward_args(grad_out, x, func)
    n_threads = _threads.resolve(num_threads, func)
    out = _validate.check_out(out, x.shape, dtype, func)
    g = np.ascontiguousarray(grad_out, dtype=dtype)
    xc = np.ascontiguousarray(x, dtype=dtype)
    # Element-wise, so writing over an input read at the same index is safe, provided the other
    # input is that same array or does not overlap ``out`` at all.
    in_place = out is not None and out.flags.c_contiguous and (
        (out is grad_out and (x is out or not np.may_share_memory(out, x)))
        or (out is x and (grad_out is out or not np.may_share_memory(out, grad_out)))
    )
    target = out if in_place else _validate.kernel_target(out, x.shape, dtype, grad_out, x)
    threads = _threads.for_work(n_threads, g.size, min_per_thread=_RELU_MIN_PER_THREAD)
    _relu.relu_backward(g.reshape(-1), xc.reshape(-1), target.reshape(-1), threads)
    return _validate.deliver(target, out)
