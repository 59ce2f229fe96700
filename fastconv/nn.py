"""Minimal CNN layers on top of fastconv's forward and backward ops, for training in NumPy.

Each layer has ``forward(x)``, which caches what its backward pass needs, and
``backward(grad_out)``, which returns the gradient with respect to the input and stores the
gradients of its parameters. Parameters and their gradients live in two dicts with the same
keys, ``layer.params`` and ``layer.grads``; ``backward`` overwrites the gradient arrays in place,
so the ``(param, grad)`` pairs of :meth:`Sequential.parameters` stay valid for an optimizer
(:class:`SGD`, :class:`Adam`) built once. Convolution and pooling layers take ``layout="NCHW"``
(weights OIHW) or ``"NHWC"`` (weights HWIO), and ``num_threads`` as the fastconv ops do.

This is a teaching-sized toolkit, not a framework: no autograd, no modules inside modules, no
training or evaluation modes (there are no layers that need them).

Examples
--------
A conv-ReLU-pool-dense classifier and a few Adam steps on random data:

>>> import numpy as np
>>> from fastconv import nn
>>> rng = np.random.default_rng(0)
>>> model = nn.Sequential(
...     nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
...     nn.Flatten(), nn.Linear(4 * 4 * 4, 3, rng=rng))
>>> x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
>>> labels = np.arange(8) % 3
>>> optimizer = nn.Adam(model.parameters(), lr=1e-2)
>>> losses = []
>>> for step in range(20):
...     loss, grad = nn.softmax_cross_entropy(model.forward(x), labels)
...     _ = model.backward(grad)
...     optimizer.step()
...     losses.append(loss)
>>> bool(losses[-1] < losses[0])
True
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

import fastconv

from ._validate import normalize_layout

__all__ = ["Layer", "Conv2d", "ReLU", "MaxPool2d", "AvgPool2d", "Flatten", "Linear", "Sequential",
           "softmax_cross_entropy", "SGD", "Adam"]


class Layer:
    """Base class of the layers: parameter and gradient dicts, no computation.

    Subclasses define ``forward(x) -> y``, which caches what the backward pass needs, and
    ``backward(grad_out) -> grad_x``, which also fills ``grads``.

    Attributes
    ----------
    params : dict of str to ndarray
        The trainable arrays (empty for a layer without parameters), updated in place by the
        optimizers.
    grads : dict of str to ndarray
        Same keys and shapes as ``params``: the gradients of the last ``backward``,
        overwritten in place.
    """

    def __init__(self) -> None:
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Conv2d(Layer):
    """2-D convolution layer: :func:`fastconv.conv2d` and :func:`fastconv.conv2d_backward`.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Square kernel.
    stride, padding
        As for :func:`fastconv.conv2d`.
    layout : {"NCHW", "NHWC"}
        Weight ``params["weight"]`` is (out, in, k, k) for NCHW and (k, k, in, out) for NHWC.
    dtype : float32 or float64
    rng : numpy.random.Generator, optional
        Source of the He-normal initial weights, ``N(0, 2 / (in_channels * k * k))``; the bias
        starts at 0.
    input_grad : bool
        Compute the input gradient in :meth:`backward` (False for a first layer: saves time,
        and ``backward`` returns None).
    num_threads : int, optional
        Passed to the fastconv ops.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> conv = nn.Conv2d(3, 8, 3, padding=1, rng=np.random.default_rng(0))
    >>> y = conv.forward(np.ones((2, 3, 16, 16), np.float32))
    >>> y.shape, conv.backward(np.ones_like(y)).shape, conv.grads["weight"].shape
    ((2, 8, 16, 16), (2, 3, 16, 16), (8, 3, 3, 3))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1,
                 padding=0, *, layout: str = "NCHW", dtype=np.float32,
                 rng: Optional[np.random.Generator] = None, input_grad: bool = True,
                 num_threads: Optional[int] = None) -> None:
        super().__init__()
        layout = normalize_layout(layout, "Conv2d")
        rng = np.random.default_rng() if rng is None else rng
        k = kernel_size
        std = np.sqrt(2.0 / (in_channels * k * k))
        weight = rng.standard_normal((out_channels, in_channels, k, k)) * std
        if layout == "NHWC":
            weight = weight.transpose(2, 3, 1, 0)
        self.params = {"weight": np.ascontiguousarray(weight, dtype=dtype),
                       "bias": np.zeros(out_channels, dtype=dtype)}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.stride, self.padding, self.layout = stride, padding, layout
        self.input_grad, self.num_threads = input_grad, num_threads
        self._x: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``conv2d(x, weight, bias)`` of an (N, C, H, W) or (N, H, W, C) ``x``; caches ``x``."""
        self._x = x
        return fastconv.conv2d(x, self.params["weight"], self.params["bias"], self.stride,
                               self.padding, layout=self.layout, num_threads=self.num_threads)

    def backward(self, grad_out: np.ndarray) -> Optional[np.ndarray]:
        """Store the weight and bias gradients in ``grads``; return the input gradient (None
        if the layer was built with ``input_grad=False``)."""
        needs = ("input", "weight", "bias") if self.input_grad else ("weight", "bias")
        gx, gw, gb = fastconv.conv2d_backward(
            grad_out, self._x, self.params["weight"], self.stride, self.padding,
            layout=self.layout, needs=needs, num_threads=self.num_threads)
        np.copyto(self.grads["weight"], gw)
        np.copyto(self.grads["bias"], gb)
        return gx

    def __repr__(self) -> str:
        return (f"Conv2d(weight {self.params['weight'].shape}, stride={self.stride}, "
                f"padding={self.padding}, layout={self.layout!r})")


class ReLU(Layer):
    """``max(x, 0)``: :func:`fastconv.relu` and :func:`fastconv.relu_backward`.

    Parameters
    ----------
    num_threads : int, optional
        Passed to the fastconv ops.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> relu = nn.ReLU()
    >>> relu.forward(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    >>> relu.backward(np.array([5.0, 5.0, 5.0]))
    array([0., 0., 5.])
    """

    def __init__(self, *, num_threads: Optional[int] = None) -> None:
        super().__init__()
        self.num_threads = num_threads
        self._y: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``relu(x)``, same shape and dtype; caches it (its sign pattern is the input's)."""
        self._y = fastconv.relu(x, num_threads=self.num_threads)
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` where the output is positive, 0 elsewhere."""
        return fastconv.relu_backward(grad_out, self._y, num_threads=self.num_threads)


class _Pool(Layer):
    """The constructor shared by the pooling layers."""

    def __init__(self, kernel_size, stride=None, padding=0, *, layout: str = "NCHW",
                 num_threads: Optional[int] = None) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.layout = normalize_layout(layout, type(self).__name__)
        self.num_threads = num_threads
        self._x: Optional[np.ndarray] = None
        self._indices: Optional[np.ndarray] = None


class MaxPool2d(_Pool):
    """Max pooling: :func:`fastconv.max_pool2d` and :func:`fastconv.max_pool2d_backward`.

    Parameters
    ----------
    kernel_size, stride, padding
        As for :func:`fastconv.max_pool2d` (stride defaults to ``kernel_size``).
    layout : {"NCHW", "NHWC"}
    num_threads : int, optional
        Passed to the fastconv ops.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> pool = nn.MaxPool2d(2)
    >>> pool.forward(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    >>> pool.backward(np.ones((1, 1, 2, 2)))[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The window maxima of an (N, C, H, W) or (N, H, W, C) ``x``; caches ``x`` and the
        argmax indices."""
        self._x = x
        y, self._indices = fastconv.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, layout=self.layout,
            return_indices=True, num_threads=self.num_threads)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """The input gradient: each window's gradient goes to its (first) maximum, overlapping
        windows accumulate."""
        return fastconv.max_pool2d_backward(
            grad_out, self._x, self.kernel_size, self.stride, self.padding, layout=self.layout,
            indices=self._indices, num_threads=self.num_threads)


class AvgPool2d(_Pool):
    """Average pooling: :func:`fastconv.avg_pool2d` and :func:`fastconv.avg_pool2d_backward`.

    Parameters
    ----------
    kernel_size, stride, padding
        As for :func:`fastconv.avg_pool2d` (stride defaults to ``kernel_size``); padding
        counts as zeros in the average.
    layout : {"NCHW", "NHWC"}
    num_threads : int, optional
        Passed to the fastconv ops.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The window means of an (N, C, H, W) or (N, H, W, C) ``x``; caches its shape."""
        self._x = x
        return fastconv.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                                   layout=self.layout, num_threads=self.num_threads)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """The input gradient: each window's gradient spread evenly over its cells."""
        return fastconv.avg_pool2d_backward(
            grad_out, self._x.shape, self.kernel_size, self.stride, self.padding,
            layout=self.layout, num_threads=self.num_threads)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), in the input's own order ((c, h, w) for NCHW, (h, w, c)
    for NHWC); no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: Tuple[int, ...] = ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Reshape to 2-D; caches the input shape.

        Parameters
        ----------
        x : ndarray of shape (N, ...)

        Returns
        -------
        ndarray of shape (N, prod(x.shape[1:]))
            A view of ``x`` when its memory allows.
        """
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Reshape ``grad_out`` (N, F) back to the last input's shape.

        Parameters
        ----------
        grad_out : ndarray of shape (N, F)

        Returns
        -------
        ndarray, shape of the last input
        """
        return grad_out.reshape(self._shape)


class Linear(Layer):
    """Dense layer ``x @ weight + bias`` with ``weight`` of shape (in_features, out_features).

    Parameters
    ----------
    in_features, out_features : int
    dtype : float32 or float64
    rng : numpy.random.Generator, optional
        Source of the He-normal initial weights, ``N(0, 2 / in_features)``; the bias starts at 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> dense = nn.Linear(4, 3, rng=np.random.default_rng(0))
    >>> y = dense.forward(np.ones((2, 4), np.float32))
    >>> y.shape, dense.backward(np.ones_like(y)).shape, dense.grads["bias"]
    ((2, 3), (2, 4), array([2., 2., 2.], dtype=float32))
    """

    def __init__(self, in_features: int, out_features: int, *, dtype=np.float32,
                 rng: Optional[np.random.Generator] = None) -> None:
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        weight = rng.standard_normal((in_features, out_features)) * np.sqrt(2.0 / in_features)
        self.params = {"weight": weight.astype(dtype), "bias": np.zeros(out_features, dtype)}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._x: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x @ weight + bias``; caches ``x``.

        Parameters
        ----------
        x : ndarray of shape (N, in_features)

        Returns
        -------
        ndarray of shape (N, out_features)

        Raises
        ------
        ValueError
            If ``x`` is not 2-D with ``in_features`` columns.
        """
        if x.ndim != 2 or x.shape[1] != self.params["weight"].shape[0]:
            raise ValueError(f"Linear: `x` must have shape (N, {self.params['weight'].shape[0]}),"
                             f" got {x.shape}")
        self._x = x
        return x @ self.params["weight"] + self.params["bias"]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Store ``x.T @ grad_out`` and ``grad_out.sum(0)`` in ``grads``; return the input
        gradient.

        Parameters
        ----------
        grad_out : ndarray of shape (N, out_features)

        Returns
        -------
        ndarray of shape (N, in_features)
            ``grad_out @ weight.T``.
        """
        np.copyto(self.grads["weight"], self._x.T @ grad_out)
        np.copyto(self.grads["bias"], grad_out.sum(axis=0))
        return grad_out @ self.params["weight"].T

    def __repr__(self) -> str:
        return f"Linear{self.params['weight'].shape}"


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    Parameters
    ----------
    *layers : Layer
        Indexable as ``model[i]``; ``len(model)`` counts them.
    """

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        self.layers: List[Layer] = list(layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The last layer's output: every layer's ``forward`` in order."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out: np.ndarray) -> Optional[np.ndarray]:
        """Backpropagate ``grad_out`` through the layers in reverse, filling their ``grads``;
        return the input gradient (None if the first layer does not compute one)."""
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def parameters(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Every ``(param, grad)`` pair, layer by layer, for an optimizer.

        Returns
        -------
        list of (ndarray, ndarray)
            The arrays themselves (not copies): the optimizers update ``param`` in place and
            read ``grad`` as :meth:`backward` rewrites it.
        """
        return [(layer.params[k], layer.grads[k]) for layer in self.layers for k in layer.params]

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return "Sequential(\n" + "".join(f"  {layer!r},\n" for layer in self.layers) + ")"


def softmax_cross_entropy(logits: np.ndarray, labels: Sequence[int]) -> Tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of a batch and its gradient with respect to ``logits``.

    Parameters
    ----------
    logits : ndarray of shape (N, K)
    labels : array_like of int, shape (N,)
        Class indices in [0, K).

    Returns
    -------
    loss : float
        ``mean(-log softmax(logits)[i, labels[i]])``.
    grad : ndarray of shape (N, K), dtype of ``logits``
        ``(softmax(logits) - onehot(labels)) / N``.

    Examples
    --------
    >>> import numpy as np
    >>> loss, grad = softmax_cross_entropy(np.zeros((2, 4)), [0, 3])
    >>> print(f"{loss:.4f} = log(4)")
    1.3863 = log(4)
    >>> grad[0]
    array([-0.375,  0.125,  0.125,  0.125])
    """
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"softmax_cross_entropy: `logits` must be (N, K) and `labels` (N,), got "
                         f"shapes {logits.shape} and {labels.shape}")
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0
                                                          or labels.max() >= logits.shape[1])):
        raise ValueError(f"softmax_cross_entropy: `labels` must be ints in [0, "
                         f"{logits.shape[1]}), got {labels!r}")
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    loss = float(-log_probs[rows, labels].mean())
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return loss, (grad / n).astype(logits.dtype, copy=False)


class SGD:
    """Stochastic gradient descent with momentum (PyTorch's form).

    ``v = momentum * v + grad``; ``param -= lr * v``. In-place on the arrays of ``params``.

    Parameters
    ----------
    params : iterable of (param, grad) pairs
        As from :meth:`Sequential.parameters`; the grad arrays are read at every :meth:`step`.
    lr : float
        Learning rate; an attribute that may be changed between steps (a schedule).
    momentum : float

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import nn
    >>> w, g = np.array([1.0, 2.0]), np.array([1.0, -1.0])
    >>> opt = nn.SGD([(w, g)], lr=0.1, momentum=0.9)
    >>> opt.step(); w
    array([0.9, 2.1])
    >>> opt.step(); w  # velocity 1.9 * grad
    array([0.71, 2.29])
    """

    def __init__(self, params: Iterable[Tuple[np.ndarray, np.ndarray]], lr: float = 0.01,
                 momentum: float = 0.9) -> None:
        self.params = list(params)
        self.lr, self.momentum = lr, momentum
        self._velocity = [np.zeros_like(p) for p, _ in self.params]

    def step(self) -> None:
        """Update every parameter from its current gradient."""
        for (p, g), v in zip(self.params, self._velocity):
            v *= self.momentum
            v += g
            p -= self.lr * v


class Adam:
    """Adam (Kingma and Ba, 2015) with bias correction.

    Parameters
    ----------
    params : iterable of (param, grad) pairs
        As from :meth:`Sequential.parameters`; the grad arrays are read at every :meth:`step`.
    lr : float
        Learning rate; an attribute that may be changed between steps (a schedule).
    betas : (float, float)
        Decay rates of the first and second moment estimates.
    eps : float
        Added to the root of the second moment.

    Examples
    --------
    The first step moves every parameter by about ``lr`` against the sign of its gradient:

    >>> import numpy as np
    >>> from fastconv import nn
    >>> w, g = np.array([1.0, 2.0]), np.array([0.5, -3.0])
    >>> nn.Adam([(w, g)], lr=0.1).step()
    >>> w.round(6)
    array([0.9, 2.1])
    """

    def __init__(self, params: Iterable[Tuple[np.ndarray, np.ndarray]], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self._m = [np.zeros_like(p) for p, _ in self.params]
        self._v = [np.zeros_like(p) for p, _ in self.params]
        self._t = 0

    def step(self) -> None:
        """Update every parameter from its current gradient."""
        self._t += 1
        b1, b2 = self.betas
        for (p, g), m, v in zip(self.params, self._m, self._v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr / (1 - b1 ** self._t) * m / (np.sqrt(v / (1 - b2 ** self._t)) + self.eps)
