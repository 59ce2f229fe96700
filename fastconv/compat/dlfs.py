"""Drop-in layers for "Deep Learning from Scratch" (Koki Saitoh, O'Reilly), chapter 7.

The book's ``common/layers.py`` and ``common/util.py`` build convolution and pooling from a
NumPy ``im2col``; this module has the same classes and functions, with the same signatures and
attributes, computed by fastconv's kernels. For everything the book does with them (its
networks pool with ``pad=0``) the results are the book's, up to floating-point rounding; the
differences, listed below, are in cases the book does not use. Replace ::

    from common.layers import *        # and: from common.util import im2col, col2im

with ::

    from fastconv.compat.dlfs import *

and the book's ``SimpleConvNet`` (``ch07/simple_convnet.py``) trains unchanged, faster: it needs
:class:`Convolution`, :class:`Relu`, :class:`Pooling`, :class:`Affine` and
:class:`SoftmaxWithLoss`, all provided here. The book's other layers (``Sigmoid``,
``Dropout``, ``BatchNormalization``) are not.

Differences from the book, all deliberate:

* dtypes are kept: float32 data stays float32 (the book's ``im2col`` always returns float64).
  Mixed inputs follow NumPy promotion (float32 data with float64 weights gives float64).
* ``Convolution.col`` (the im2col matrix) is built only when read, and ``col_W`` is a view of
  ``W``; the forward and backward passes do not need either.
* ``Pooling`` with ``pad > 0`` pads with -inf, so every output is the maximum of real input
  cells (a true max, as in PyTorch's ``max_pool2d``), where the book's ``im2col`` would pad
  zeros (and the book's ``Pooling`` ignores ``pad`` in its output size and fails). Each
  side's padding must be at most half the window (PyTorch's rule); more raises ValueError.
* ``Relu.backward`` returns a new array instead of zeroing ``dout`` in place.
* Ties in a pooling window send the gradient to the first maximum in row-major window order,
  as the book's ``np.argmax`` does, and so does a window with one NaN (to the NaN). In a
  window with two or more NaNs, the output is NaN in both, but ``Pooling.arg_max`` and the
  gradient pick the *last* NaN (PyTorch's CPU rule), where the book's ``np.argmax`` picks the
  first.

Examples
--------
>>> import numpy as np
>>> from fastconv.compat.dlfs import Convolution, Relu, Pooling
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((2, 1, 28, 28))
>>> conv = Convolution(0.01 * rng.standard_normal((30, 1, 5, 5)), np.zeros(30))
>>> relu, pool = Relu(), Pooling(pool_h=2, pool_w=2, stride=2)
>>> y = pool.forward(relu.forward(conv.forward(x)))
>>> y.shape
(2, 30, 12, 12)
>>> dx = conv.backward(relu.backward(pool.backward(np.ones_like(y))))
>>> dx.shape, conv.dW.shape, conv.db.shape
((2, 1, 28, 28), (30, 1, 5, 5), (30,))
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .. import col2im as _col2im
from .. import conv2d, conv2d_backward, max_pool2d, max_pool2d_backward, relu, relu_backward
from .. import im2col as _im2col
from .._validate import as_pair

__all__ = ["Convolution", "Pooling", "Relu", "Affine", "SoftmaxWithLoss", "im2col", "col2im"]


def _require_forward(layer: Any, name: str) -> None:
    if layer.x is None:
        raise RuntimeError(f"{name}.backward: call forward() first (no input is stored yet)")


# --------------------------------------------------------------------------------------------
# common/util.py


def im2col(input_data: ArrayLike, filter_h: int, filter_w: int, stride: int = 1,
           pad: int = 0) -> np.ndarray:
    """The book's ``im2col``: every filter window of a batch as one row of a matrix.

    Parameters
    ----------
    input_data : array_like of shape (N, C, H, W)
    filter_h, filter_w : int
        Window size.
    stride : int or (int, int), default 1
    pad : int or (int, int), default 0
        Zero padding on each side.

    Returns
    -------
    col : ndarray of shape (N*out_h*out_w, C*filter_h*filter_w)
        Rows in (n, out_y, out_x) order, columns in (c, y, x) order, exactly as in the book;
        ``out_h = (H + 2*pad - filter_h)//stride + 1`` and likewise ``out_w``. float32 input
        stays float32 (the book always returns float64); integer input gives float64.

    Raises
    ------
    ValueError
        If ``input_data`` is not 4-D or the window does not fit the padded input.

    See Also
    --------
    fastconv.im2col : the same transform, with more options.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import im2col
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> im2col(x, 2, 2)
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    >>> im2col(np.ones((7, 3, 5, 5), dtype=np.float32), 5, 5).shape   # the book's example
    (7, 75)
    """
    return _im2col(input_data, (filter_h, filter_w), stride=stride, padding=pad)


def col2im(col: ArrayLike, input_shape: Sequence[int], filter_h: int, filter_w: int,
           stride: int = 1, pad: int = 0) -> np.ndarray:
    """The book's ``col2im``: fold a column matrix back, summing overlapping windows.

    The adjoint of :func:`im2col` (not its inverse): each entry of ``col`` is added to the
    input cell it was copied from, and entries from the padding are dropped. This is the
    input gradient of a convolution computed through :func:`im2col`.

    Parameters
    ----------
    col : array_like of shape (N*out_h*out_w, C*filter_h*filter_w)
        In :func:`im2col`'s row and column order.
    input_shape : tuple of 4 ints
        (N, C, H, W) of the image batch.
    filter_h, filter_w : int
    stride : int or (int, int), default 1
    pad : int or (int, int), default 0

    Returns
    -------
    ndarray of shape ``input_shape``
        In ``col``'s dtype (float32 stays float32).

    Raises
    ------
    ValueError
        If ``col`` does not have the shape :func:`im2col` gives for ``input_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import col2im
    >>> col2im(np.ones((4, 4)), (1, 1, 3, 3), 2, 2)[0, 0]   # how many windows see each cell
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    return _col2im(col, tuple(input_shape), (filter_h, filter_w), stride=stride, padding=pad)


# --------------------------------------------------------------------------------------------
# common/layers.py


class Convolution:
    """Convolution layer, ``Convolution(W, b, stride=1, pad=0)`` as in the book.

    Forward is :func:`fastconv.conv2d`, backward :func:`fastconv.conv2d_backward`.

    Parameters
    ----------
    W : ndarray of shape (FN, C, FH, FW)
        Filters. Kept by reference, as in the book: the network's ``params['W1']`` and
        ``layer.W`` are the same array, so in-place updates by an optimizer are seen.
    b : ndarray of shape (FN,)
        Biases, also kept by reference.
    stride : int or (int, int), default 1
    pad : int or (int, int), default 0
        Zero padding on each side.

    Attributes
    ----------
    W, b, stride, pad
        The constructor's arguments.
    x : ndarray or None
        The input of the last :meth:`forward`.
    dW : ndarray of shape (FN, C, FH, FW) or None
        Gradient of ``W``, set by :meth:`backward`.
    db : ndarray of shape (FN,) or None
        Gradient of ``b``, set by :meth:`backward`.
    col : ndarray of shape (N*out_h*out_w, C*FH*FW) or None
        ``im2col`` of the last input, built on first access (the passes do not need it).
    col_W : ndarray of shape (C*FH*FW, FN) or None
        ``W.reshape(FN, -1).T``, a view of ``W``.

    Notes
    -----
    ``out_h = (H + 2*pad - FH)//stride + 1`` and likewise ``out_w``, as in the book. The result
    dtype is NumPy's promotion of ``x`` and ``W`` (all float32 stays float32).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import Convolution
    >>> conv = Convolution(np.ones((1, 1, 2, 2)), np.zeros(1), stride=2)
    >>> conv.forward(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[10., 18.],
             [42., 50.]]]])
    >>> dx = conv.backward(np.ones((1, 1, 2, 2)))
    >>> conv.dW
    array([[[[20., 24.],
             [36., 40.]]]])
    >>> conv.db
    array([4.])
    >>> dx[0, 0]
    array([[1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.]])
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0) -> None:
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x: Optional[np.ndarray] = None
        self.dW: Optional[np.ndarray] = None
        self.db: Optional[np.ndarray] = None
        self._col: Optional[np.ndarray] = None

    @property
    def col(self) -> Optional[np.ndarray]:
        if self.x is None:
            return None
        if self._col is None:
            _, _, fh, fw = np.shape(self.W)
            self._col = im2col(self.x, fh, fw, self.stride, self.pad)
        return self._col

    @property
    def col_W(self) -> Optional[np.ndarray]:
        if self.W is None:
            return None
        w = np.asarray(self.W)
        return w.reshape(w.shape[0], -1).T

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Convolve ``x`` of shape (N, C, H, W); return (N, FN, out_h, out_w)."""
        out = conv2d(x, self.W, self.b, stride=self.stride, padding=self.pad)
        self.x = x
        self._col = None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Set ``dW`` and ``db`` from ``dout`` of shape (N, FN, out_h, out_w); return ``dx``."""
        _require_forward(self, "Convolution")
        dx, self.dW, self.db = conv2d_backward(dout, self.x, self.W, stride=self.stride,
                                               padding=self.pad)
        return dx


class Pooling:
    """Max-pooling layer, ``Pooling(pool_h, pool_w, stride=1, pad=0)`` as in the book.

    Forward is :func:`fastconv.max_pool2d`, backward :func:`fastconv.max_pool2d_backward` with
    the forward pass's indices.

    Parameters
    ----------
    pool_h, pool_w : int
        Window size.
    stride : int or (int, int), default 1
        The book's default is 1, not the window size; its networks pass ``stride=2``
        explicitly for 2x2 pooling, and so should you.
    pad : int or (int, int), default 0
        Padding on each side, filled with -inf (see Notes); at most half the window.

    Attributes
    ----------
    pool_h, pool_w, stride, pad
        The constructor's arguments.
    x : ndarray or None
        The input of the last :meth:`forward`.
    arg_max : ndarray of int64, shape (N*out_h*out_w*C,), or None
        As in the book: for each window, in (n, out_y, out_x, c) order, the position of its
        maximum within the (padded) window, ``y * pool_w + x``. Built on first access.

    Notes
    -----
    ``out_h = (H + 2*pad - pool_h)//stride + 1`` and likewise ``out_w`` (no ceil mode, as in
    the book). With ``pad > 0`` the padding is -inf, so each output is the maximum over the
    real input cells of its window, as in PyTorch's ``max_pool2d``, where the book's ``im2col``
    would pad zeros (the book's ``Pooling`` ignores ``pad`` in its output size and fails).
    ``pad`` must be at most half the window. The gradient of a window goes to its first
    maximum in row-major order (the book's ``np.argmax`` rule), or to its NaN if it has one;
    with two or more NaNs it goes to the last of them (PyTorch's CPU rule; ``np.argmax``
    would pick the first), and ``arg_max`` says so. The dtype of ``x`` is kept.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import Pooling
    >>> x = np.array([[[[1., 2., 0., 1.],
    ...                 [3., 0., 4., 2.],
    ...                 [0., 1., 1., 0.],
    ...                 [2., 5., 0., 3.]]]])
    >>> pool = Pooling(2, 2, stride=2)
    >>> pool.forward(x)
    array([[[[3., 4.],
             [5., 3.]]]])
    >>> pool.arg_max
    array([2, 2, 3, 3])
    >>> pool.backward(np.array([[[[10., 20.], [30., 40.]]]]))[0, 0]
    array([[ 0.,  0.,  0.,  0.],
           [10.,  0., 20.,  0.],
           [ 0.,  0.,  0.,  0.],
           [ 0., 30.,  0., 40.]])

    Padding counts as -inf, so a negative input still gives its own maximum:

    >>> Pooling(2, 2, stride=2, pad=1).forward(-np.ones((1, 1, 2, 2)))
    array([[[[-1., -1.],
             [-1., -1.]]]])
    """

    def __init__(self, pool_h: int, pool_w: int, stride: int = 1, pad: int = 0) -> None:
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x: Optional[np.ndarray] = None
        self._indices: Optional[np.ndarray] = None
        self._arg_max: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Max-pool ``x`` of shape (N, C, H, W); return (N, C, out_h, out_w)."""
        out, indices = max_pool2d(x, (self.pool_h, self.pool_w), self.stride, self.pad,
                                  return_indices=True)
        self.x = x
        self._indices = indices
        self._arg_max = None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Route ``dout`` of shape (N, C, out_h, out_w) to each window's maximum; return dx."""
        _require_forward(self, "Pooling")
        return max_pool2d_backward(dout, self.x, (self.pool_h, self.pool_w), self.stride,
                                   self.pad, indices=self._indices)

    @property
    def arg_max(self) -> Optional[np.ndarray]:
        """Each window's argmax as a flat position in the padded window (see the class
        docstring), or None before the first :meth:`forward`."""
        if self._indices is None:
            return None
        if self._arg_max is None:
            sh, sw = as_pair(self.stride, "stride", "Pooling")
            ph, pw = as_pair(self.pad, "pad", "Pooling", minimum=0)
            idx = self._indices  # as (N, C, OH, OW), also for an unbatched x
            idx = idx.reshape((1,) * (4 - idx.ndim) + idx.shape)
            width = np.shape(self.x)[-1]
            oy = np.arange(idx.shape[2])[:, np.newaxis] * sh
            ox = np.arange(idx.shape[3]) * sw
            # The plane index h * W + w, relative to the window's top-left corner in the
            # padded input, as a flat position within the window.
            local = (idx // width + ph - oy) * self.pool_w + (idx % width + pw - ox)
            self._arg_max = local.transpose(0, 2, 3, 1).reshape(-1)
        return self._arg_max


class Relu:
    """ReLU layer, as in the book; forward :func:`fastconv.relu`, backward
    :func:`fastconv.relu_backward`.

    Attributes
    ----------
    x : ndarray or None
        The input of the last :meth:`forward` (kept by reference, not copied).
    mask : ndarray of bool or None
        ``x <= 0``, as in the book; built when read.

    Notes
    -----
    The gradient is 0 where ``x <= 0`` and ``dout`` elsewhere, as in the book. Unlike the
    book, :meth:`backward` returns a new array and leaves ``dout`` unchanged. Works on any
    shape (the book also uses it between affine layers).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import Relu
    >>> layer = Relu()
    >>> layer.forward(np.array([[1.0, -0.5], [-2.0, 3.0]]))
    array([[1., 0.],
           [0., 3.]])
    >>> layer.mask
    array([[False,  True],
           [ True, False]])
    >>> layer.backward(np.array([[10.0, 20.0], [30.0, 40.0]]))
    array([[10.,  0.],
           [ 0., 40.]])
    """

    def __init__(self) -> None:
        self.x: Optional[np.ndarray] = None

    @property
    def mask(self) -> Optional[np.ndarray]:
        return None if self.x is None else np.asarray(self.x) <= 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``max(x, 0)``; remembers ``x`` for :meth:`backward`."""
        out = relu(x)
        self.x = x
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """``dout`` where the input was positive, 0 elsewhere."""
        _require_forward(self, "Relu")
        return relu_backward(dout, self.x)


class Affine:
    """Fully connected layer ``x @ W + b``, the book's ``Affine`` (plain NumPy).

    Provided so that ``from fastconv.compat.dlfs import *`` gives every layer ``SimpleConvNet``
    uses. A 4-D input (from a convolution or pooling layer) is flattened to (N, -1), and its
    gradient gets the input's shape back.

    Parameters
    ----------
    W : ndarray of shape (D, M)
    b : ndarray of shape (M,)

    Attributes
    ----------
    W, b, dW, db
        Parameters and their gradients (set by :meth:`backward`).
    x : ndarray of shape (N, D) or None
        The flattened input of the last :meth:`forward`.
    original_x_shape : tuple or None
        The input's shape before flattening.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import Affine
    >>> layer = Affine(np.ones((4, 2)), np.array([0.5, -0.5]))
    >>> layer.forward(np.arange(8.0).reshape(2, 1, 2, 2))
    array([[ 6.5,  5.5],
           [22.5, 21.5]])
    >>> layer.backward(np.ones((2, 2))).shape, layer.dW.shape, layer.db
    ((2, 1, 2, 2), (4, 2), array([2., 2.]))
    """

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W = W
        self.b = b
        self.x: Optional[np.ndarray] = None
        self.original_x_shape: Optional[tuple] = None
        self.dW: Optional[np.ndarray] = None
        self.db: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x.reshape(N, -1) @ W + b``."""
        x = np.asarray(x)
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Set ``dW`` and ``db``; return ``dx`` in the input's original shape."""
        _require_forward(self, "Affine")
        dx = np.dot(dout, np.asarray(self.W).T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(self.original_x_shape)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - np.max(x, axis=-1, keepdims=True)  # for numerical stability, as in the book
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def _cross_entropy_error(y: np.ndarray, t: np.ndarray) -> float:
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:  # one-hot labels -> class indices
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


class SoftmaxWithLoss:
    """Softmax followed by the cross-entropy loss, the book's ``SoftmaxWithLoss`` (plain NumPy).

    Labels ``t`` are class indices of shape (N,) or one-hot of shape (N, K). The loss is the
    batch mean of ``-log(y[t] + 1e-7)``, with the book's ``1e-7``.

    Attributes
    ----------
    loss : float or None
    y : ndarray of shape (N, K) or None
        The softmax output.
    t : ndarray or None
        The labels of the last :meth:`forward`.

    Notes
    -----
    :meth:`backward` returns ``dout * (y - onehot(t)) / N``; the book ignores ``dout``, which
    gives the same result for its ``dout=1``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.compat.dlfs import SoftmaxWithLoss
    >>> layer = SoftmaxWithLoss()
    >>> round(float(layer.forward(np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([0, 1]))), 6)
    0.693147
    >>> layer.backward()
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    """

    def __init__(self) -> None:
        self.loss = None
        self.y: Optional[np.ndarray] = None
        self.t: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        """Mean cross-entropy loss of ``softmax(x)`` against the labels ``t``."""
        self.t = np.asarray(t)
        self.y = _softmax(np.asarray(x))
        self.loss = _cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout: float = 1) -> np.ndarray:
        """Gradient of the loss with respect to the scores ``x``, times ``dout``."""
        if self.y is None:
            raise RuntimeError("SoftmaxWithLoss.backward: call forward() first")
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        if not (np.isscalar(dout) and dout == 1):
            dx = dx * dout
        return dx
