"""fastconv: fast CPU convolution, pooling and ReLU for NumPy.

Cython kernels, parallel with OpenMP, behind a NumPy API; every op has a plain-NumPy twin in
:mod:`fastconv.reference` with the same signature.

>>> import numpy as np
>>> import fastconv
>>> x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
>>> w = np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32)
>>> y = fastconv.max_pool2d(fastconv.conv2d(x, w, padding=1, activation="relu"), 2)
>>> y.shape
(2, 8, 8, 8)
>>> np.allclose(y, fastconv.reference.max_pool2d(
...     fastconv.reference.conv2d(x, w, padding=1, activation="relu"), 2), atol=1e-5)
True
"""

# First, before any kernel (and so libgomp) is loaded: see _openmp_env's docstring.
from . import _openmp_env  # noqa: F401  isort: skip
from . import reference
from ._buffers import buffer_pool_info, clear_buffer_pool, set_buffer_pool
from ._config import config, show_config
from ._threads import get_num_threads, set_num_threads
from ._version import __version__
from .activation import relu, relu_backward
from .conv import conv2d, conv2d_backward
from .unfold import col2im, im2col
from .pooling import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward

__all__ = [
    "conv2d",
    "relu",
    "max_pool2d",
    "avg_pool2d",
    "im2col",
    "col2im",
    "conv2d_backward",
    "relu_backward",
    "max_pool2d_backward",
    "avg_pool2d_backward",
    "set_num_threads",
    "get_num_threads",
    "set_buffer_pool",
    "buffer_pool_info",
    "clear_buffer_pool",
    "show_config",
    "config",
    "reference",
    "__version__",
]
