"""Drop-in fast layers for the CS231n assignment 2 (``cs231n/fast_layers.py``, ``layer_utils.py``).

The same functions, signatures and conventions as the assignment's: forward functions return
``(out, cache)``, backward functions take ``(dout, cache)`` and return the gradients, conv
gradients as ``(dx, dw, db)``. Arrays are NCHW: ``x`` (N, C, H, W), ``w`` (F, C, HH, WW),
``b`` (F,). ``conv_param = {'stride': s, 'pad': p}`` and
``pool_param = {'pool_height': ph, 'pool_width': pw, 'stride': s}``; other keys are ignored.
Replace ::

    from cs231n.fast_layers import *
    from cs231n.layer_utils import conv_relu_forward, conv_relu_backward, ...

with ::

    from fastconv.compat.cs231n import *

The assignment builds these from a Cython im2col (``im2col_cython``); here they are
:func:`fastconv.conv2d` (with the ReLU fused into the convolution in ``conv_relu_*``),
:func:`fastconv.max_pool2d` and their backward ops. Nothing needs compiling in the
assignment folder.

Differences from the assignment, all deliberate:

* dtypes are kept: float32 stays float32 (the assignment works in float64, which also works).
* Kernels may be non-square, and any stride and padding whose output size is an integer
  works; otherwise a ``ValueError`` names the axis, the sizes, the stride and the padding (the
  assignment's ``assert (W + 2 * pad - WW) % stride == 0`` and ``(H - pool_height) % stride
  == 0``). A missing ``conv_param`` or ``pool_param`` key raises a ``KeyError`` naming it.
  ``stride`` and ``pad`` may also be ``(h, w)`` pairs.
* The caches have their own layout (treat them as opaque, as the assignment's code does): they
  hold the inputs and parameters, so they can be pickled, and backward can be called with the
  same cache more than once.
* Max pooling sends a window's gradient to its first maximum (row-major), as a loop-based
  ``max_pool_backward_naive`` with ``np.argmax`` does; the assignment's "reshape" fast path
  splits it evenly among tied maxima instead. With real-valued data ties do not occur.

Examples
--------
>>> import numpy as np
>>> from fastconv.compat.cs231n import conv_relu_pool_forward, conv_relu_pool_backward
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((2, 3, 16, 16))
>>> w, b = rng.standard_normal((8, 3, 3, 3)), np.zeros(8)
>>> conv_param = {'stride': 1, 'pad': 1}
>>> pool_param = {'pool_height': 2, 'pool_width': 2, 'stride': 2}
>>> out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
>>> out.shape
(2, 8, 8, 8)
>>> dx, dw, db = conv_relu_pool_backward(np.ones_like(out), cache)
>>> dx.shape, dw.shape, db.shape
((2, 3, 16, 16), (8, 3, 3, 3), (8,))
"""

from __future__ import annotations

from typing import Any, Mapping, Tuple

import numpy as np
from numpy.typing import ArrayLike

from .. import conv2d, conv2d_backward, max_pool2d, max_pool2d_backward, relu_backward
from .._validate import as_array, as_pair

__all__ = [
    "conv_forward_fast",
    "conv_backward_fast",
    "max_pool_forward_fast",
    "max_pool_backward_fast",
    "conv_relu_forward",
    "conv_relu_backward",
    "conv_relu_pool_forward",
    "conv_relu_pool_backward",
]

Pair = Tuple[int, int]


# --------------------------------------------------------------------------------------------
# argument checks


def _param(params: Any, dict_name: str, key: str, keys: Tuple[str, ...], func: str) -> Any:
    """``params[key]``, with errors that name the dict and the missing key."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{func}: {dict_name} must be a dict with keys "
                        f"{', '.join(repr(k) for k in keys)}, got {type(params).__name__}")
    try:
        return params[key]
    except KeyError:
        raise KeyError(f"{func}: {dict_name} is missing the key {key!r} (it needs "
                       f"{', '.join(repr(k) for k in keys)}; got keys {list(params)!r})"
                       ) from None


def _four_d(a: ArrayLike, name: str, form: str, func: str) -> np.ndarray:
    a = as_array(a, name, func)
    if a.ndim != 4:
        raise ValueError(f"{func}: {name} must be 4-D {form}, got shape {a.shape}")
    return a


def _check_tiling(func: str, axis: str, expr: str, values: str, size: int, kernel: int,
                  stride: int, pad: int) -> None:
    """CS231n's requirement that the windows tile the padded axis exactly.

    A kernel larger than the padded input is left to fastconv's own error message.
    """
    span = size + 2 * pad - kernel
    if span >= 0 and span % stride:
        raise ValueError(
            f"{func}: the {axis} axis does not give an integer output size: {expr} % stride "
            f"must be 0, but {values} % {stride} = {span % stride} ({axis} {size}, kernel "
            f"{kernel}, stride {stride}, pad {pad})"
        )


_CONV_KEYS = ("stride", "pad")
_POOL_KEYS = ("pool_height", "pool_width", "stride")


def _conv_geometry(x: np.ndarray, w: np.ndarray, conv_param: Any, func: str) -> Tuple[Pair, Pair]:
    """``(stride, pad)`` pairs from ``conv_param``, after checking the output size is exact."""
    stride = _param(conv_param, "conv_param", "stride", _CONV_KEYS, func)
    pad = _param(conv_param, "conv_param", "pad", _CONV_KEYS, func)
    sh, sw = as_pair(stride, "conv_param['stride']", func)
    ph, pw = as_pair(pad, "conv_param['pad']", func, minimum=0)
    _, _, h, width = x.shape
    _, _, hh, ww = w.shape
    _check_tiling(func, "height", "(H + 2*pad - HH)", f"({h} + 2*{ph} - {hh})", h, hh, sh, ph)
    _check_tiling(func, "width", "(W + 2*pad - WW)", f"({width} + 2*{pw} - {ww})", width, ww,
                  sw, pw)
    return (sh, sw), (ph, pw)


def _pool_geometry(x: np.ndarray, pool_param: Any, func: str) -> Tuple[Pair, Pair]:
    """``(kernel, stride)`` pairs from ``pool_param``, after checking the output size is exact."""
    height = _param(pool_param, "pool_param", "pool_height", _POOL_KEYS, func)
    width = _param(pool_param, "pool_param", "pool_width", _POOL_KEYS, func)
    stride = _param(pool_param, "pool_param", "stride", _POOL_KEYS, func)
    kernel = as_pair((height, width), "pool_param['pool_height'] and ['pool_width']", func)
    sh, sw = as_pair(stride, "pool_param['stride']", func)
    _, _, h, w = x.shape
    _check_tiling(func, "height", "(H - pool_height)", f"({h} - {kernel[0]})", h, kernel[0],
                  sh, 0)
    _check_tiling(func, "width", "(W - pool_width)", f"({w} - {kernel[1]})", w, kernel[1], sw, 0)
    return kernel, (sh, sw)


def _unpack(cache: Any, size: int, func: str, producer: str) -> tuple:
    if not isinstance(cache, tuple) or len(cache) != size:
        raise ValueError(f"{func}: cache must be the cache returned by {producer}, got "
                         f"{type(cache).__name__}"
                         + (f" of length {len(cache)}" if isinstance(cache, tuple) else ""))
    return cache


# --------------------------------------------------------------------------------------------
# fast_layers.py


def _conv_forward(x, w, b, conv_param, activation, func):
    x = _four_d(x, "x", "(N, C, H, W)", func)
    w = _four_d(w, "w", "(F, C, HH, WW)", func)
    stride, pad = _conv_geometry(x, w, conv_param, func)
    out = conv2d(x, w, b, stride=stride, padding=pad, activation=activation)
    return out, (x, w, b, conv_param)


def _conv_backward(dout, cache, func, producer):
    x, w, _, conv_param = _unpack(cache, 4, func, producer)
    stride, pad = _conv_geometry(x, w, conv_param, func)
    return conv2d_backward(dout, x, w, stride=stride, padding=pad)


def _pool_forward(x, pool_param, func):
    x = _four_d(x, "x", "(N, C, H, W)", func)
    kernel, stride = _pool_geometry(x, pool_param, func)
    out, indices = max_pool2d(x, kernel, stride, return_indices=True)
    return out, (x, pool_param, indices)


def _pool_backward(dout, cache, func, producer):
    x, pool_param, indices = _unpack(cache, 3, func, producer)
    kernel, stride = _pool_geometry(x, pool_param, func)
    return max_pool2d_backward(dout, x, kernel, stride, indices=indices)


def conv_forward_fast(x: ArrayLike, w: ArrayLike, b: ArrayLike, conv_param: dict):
    """Forward pass of a convolutional layer (cross-correlation plus bias).

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
    w : array_like of shape (F, C, HH, WW)
        Filters; HH and WW may differ.
    b : array_like of shape (F,)
    conv_param : dict
        ``'stride'``: step between windows; ``'pad'``: zero padding on each side. Each an int
        (or an ``(h, w)`` pair). ``(H + 2*pad - HH)`` must be a multiple of the stride, and
        likewise for the width.

    Returns
    -------
    out : ndarray of shape (N, F, H', W')
        ``H' = 1 + (H + 2*pad - HH) // stride``, ``W' = 1 + (W + 2*pad - WW) // stride``;
        the dtype of ``x`` and ``w`` promoted together (float32 stays float32).
    cache : tuple
        For :func:`conv_backward_fast`.

    Raises
    ------
    KeyError
        If ``conv_param`` lacks ``'stride'`` or ``'pad'``.
    ValueError
        If an axis does not give an integer output size, or the shapes do not match.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import conv_forward_fast
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> out, cache = conv_forward_fast(x, np.ones((1, 1, 2, 2)), np.array([1.0]),
    ...                                {'stride': 2, 'pad': 0})
    >>> out
    array([[[[11., 19.],
             [43., 51.]]]])
    """
    return _conv_forward(x, w, b, conv_param, None, "conv_forward_fast")


def conv_backward_fast(dout: ArrayLike, cache: tuple):
    """Backward pass of :func:`conv_forward_fast`.

    Parameters
    ----------
    dout : array_like of shape (N, F, H', W')
        Upstream gradient.
    cache : tuple
        From :func:`conv_forward_fast`.

    Returns
    -------
    dx : ndarray of shape (N, C, H, W)
    dw : ndarray of shape (F, C, HH, WW)
    db : ndarray of shape (F,)

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import conv_forward_fast, conv_backward_fast
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> out, cache = conv_forward_fast(x, np.ones((1, 1, 2, 2)), np.zeros(1),
    ...                                {'stride': 2, 'pad': 0})
    >>> dx, dw, db = conv_backward_fast(np.ones_like(out), cache)
    >>> dw
    array([[[[20., 24.],
             [36., 40.]]]])
    >>> db
    array([4.])
    """
    return _conv_backward(dout, cache, "conv_backward_fast", "conv_forward_fast")


def max_pool_forward_fast(x: ArrayLike, pool_param: dict):
    """Forward pass of a max-pooling layer.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
    pool_param : dict
        ``'pool_height'``, ``'pool_width'``: window size (may differ); ``'stride'``: step
        between windows (an int, or an ``(h, w)`` pair). No padding, as in the assignment.
        ``(H - pool_height)`` must be a multiple of the stride, and likewise for the width.

    Returns
    -------
    out : ndarray of shape (N, C, H', W')
        ``H' = 1 + (H - pool_height) // stride``, ``W' = 1 + (W - pool_width) // stride``,
        in the dtype of ``x``.
    cache : tuple
        For :func:`max_pool_backward_fast`.

    Raises
    ------
    KeyError
        If ``pool_param`` lacks ``'pool_height'``, ``'pool_width'`` or ``'stride'``.
    ValueError
        If an axis does not give an integer output size.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import max_pool_forward_fast
    >>> x = np.arange(28.0).reshape(1, 1, 4, 7)
    >>> out, cache = max_pool_forward_fast(
    ...     x, {'pool_height': 2, 'pool_width': 3, 'stride': 2})   # non-square window
    >>> out
    array([[[[ 9., 11., 13.],
             [23., 25., 27.]]]])
    """
    return _pool_forward(x, pool_param, "max_pool_forward_fast")


def max_pool_backward_fast(dout: ArrayLike, cache: tuple) -> np.ndarray:
    """Backward pass of :func:`max_pool_forward_fast`.

    Each window's gradient goes to its maximum (the first one in row-major order on ties; in
    a window with several NaNs, the last NaN, as in PyTorch); overlapping windows accumulate.

    Parameters
    ----------
    dout : array_like of shape (N, C, H', W')
    cache : tuple
        From :func:`max_pool_forward_fast`.

    Returns
    -------
    dx : ndarray of shape (N, C, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import max_pool_forward_fast, max_pool_backward_fast
    >>> x = np.array([[[[1., 3.], [4., 2.]]]])
    >>> out, cache = max_pool_forward_fast(x, {'pool_height': 2, 'pool_width': 2, 'stride': 2})
    >>> max_pool_backward_fast(np.array([[[[5.]]]]), cache)
    array([[[[0., 0.],
             [5., 0.]]]])
    """
    return _pool_backward(dout, cache, "max_pool_backward_fast", "max_pool_forward_fast")


# --------------------------------------------------------------------------------------------
# layer_utils.py


def conv_relu_forward(x: ArrayLike, w: ArrayLike, b: ArrayLike, conv_param: dict):
    """Convolution followed by ReLU, with the ReLU fused into the convolution kernel.

    Parameters
    ----------
    x, w, b, conv_param
        As for :func:`conv_forward_fast`.

    Returns
    -------
    out : ndarray of shape (N, F, H', W')
        ``max(conv(x, w) + b, 0)``.
    cache : tuple
        ``(conv_cache, relu_cache)`` for :func:`conv_relu_backward`. ``relu_cache`` is ``out``
        itself (the ReLU's output marks where the gradient passes exactly as its input
        does), so do not modify ``out`` in place before the backward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import conv_relu_forward, conv_relu_backward
    >>> x = np.array([[[[1., -2.], [3., -4.]]]])
    >>> out, cache = conv_relu_forward(x, np.ones((1, 1, 1, 1)), np.zeros(1),
    ...                                {'stride': 1, 'pad': 0})
    >>> out
    array([[[[1., 0.],
             [3., 0.]]]])
    >>> dx, dw, db = conv_relu_backward(np.ones_like(out), cache)
    >>> dx
    array([[[[1., 0.],
             [1., 0.]]]])
    """
    out, conv_cache = _conv_forward(x, w, b, conv_param, "relu", "conv_relu_forward")
    return out, (conv_cache, out)


def conv_relu_backward(dout: ArrayLike, cache: tuple):
    """Backward pass of :func:`conv_relu_forward`.

    Parameters
    ----------
    dout : array_like of shape (N, F, H', W')
    cache : tuple
        From :func:`conv_relu_forward`.

    Returns
    -------
    dx, dw, db : ndarray
        Shaped like ``x``, ``w`` and ``b``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import conv_relu_forward, conv_relu_backward
    >>> x = np.arange(-4.0, 5.0).reshape(1, 1, 3, 3)
    >>> out, cache = conv_relu_forward(x, np.ones((2, 1, 2, 2)), np.zeros(2),
    ...                                {'stride': 1, 'pad': 0})
    >>> dx, dw, db = conv_relu_backward(np.ones_like(out), cache)
    >>> db
    array([2., 2.])
    """
    func = "conv_relu_backward"
    conv_cache, relu_out = _unpack(cache, 2, func, "conv_relu_forward")
    da = relu_backward(dout, relu_out)
    return _conv_backward(da, conv_cache, func, "conv_relu_forward")


def conv_relu_pool_forward(x: ArrayLike, w: ArrayLike, b: ArrayLike, conv_param: dict,
                           pool_param: dict):
    """Convolution, ReLU (fused into the convolution) and max pooling.

    Parameters
    ----------
    x, w, b, conv_param
        As for :func:`conv_forward_fast`.
    pool_param
        As for :func:`max_pool_forward_fast`, applied to the convolution's output.

    Returns
    -------
    out : ndarray of shape (N, F, H'', W'')
    cache : tuple
        ``(conv_cache, relu_cache, pool_cache)`` for :func:`conv_relu_pool_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import conv_relu_pool_forward
    >>> x = np.arange(-8.0, 8.0).reshape(1, 1, 4, 4)
    >>> out, cache = conv_relu_pool_forward(
    ...     x, np.ones((1, 1, 1, 1)), np.zeros(1), {'stride': 1, 'pad': 0},
    ...     {'pool_height': 2, 'pool_width': 2, 'stride': 2})
    >>> out
    array([[[[0., 0.],
             [5., 7.]]]])
    """
    func = "conv_relu_pool_forward"
    s, conv_cache = _conv_forward(x, w, b, conv_param, "relu", func)
    out, pool_cache = _pool_forward(s, pool_param, func)
    return out, (conv_cache, s, pool_cache)


def conv_relu_pool_backward(dout: ArrayLike, cache: tuple):
    """Backward pass of :func:`conv_relu_pool_forward`.

    Parameters
    ----------
    dout : array_like of shape (N, F, H'', W'')
    cache : tuple
        From :func:`conv_relu_pool_forward`.

    Returns
    -------
    dx, dw, db : ndarray
        Shaped like ``x``, ``w`` and ``b``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.cs231n import conv_relu_pool_forward, conv_relu_pool_backward
    >>> x = np.arange(-8.0, 8.0).reshape(1, 1, 4, 4)
    >>> out, cache = conv_relu_pool_forward(
    ...     x, np.ones((1, 1, 1, 1)), np.zeros(1), {'stride': 1, 'pad': 0},
    ...     {'pool_height': 2, 'pool_width': 2, 'stride': 2})
    >>> dx, dw, db = conv_relu_pool_backward(np.ones_like(out), cache)
    >>> dx[0, 0]
    array([[0., 0., 0., 0.],
           [0., 0., 0., 0.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
    """
    func = "conv_relu_pool_backward"
    conv_cache, relu_out, pool_cache = _unpack(cache, 3, func, "conv_relu_pool_forward")
    ds = _pool_backward(dout, pool_cache, func, "conv_relu_pool_forward")
    da = relu_backward(ds, relu_out)
    return _conv_backward(da, conv_cache, func, "conv_relu_pool_forward")
