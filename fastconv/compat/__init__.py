"""Drop-in replacements for the layers of two textbooks, computed by fastconv's kernels.

* :mod:`fastconv.compat.dlfs`: "Deep Learning from Scratch" (chapter 7, ``common/layers.py``
  and ``common/util.py``): ``Convolution``, ``Pooling``, ``Relu``, ``Affine``,
  ``SoftmaxWithLoss``, ``im2col``, ``col2im``.
* :mod:`fastconv.compat.cs231n`: the CS231n assignment 2 (``cs231n/fast_layers.py`` and
  ``layer_utils.py``): ``conv_forward_fast``, ``max_pool_forward_fast``, ``conv_relu_*`` and
  ``conv_relu_pool_*`` with their backward passes.

Swap one import and the book's or the assignment's code runs unchanged, faster; see each
module's docstring for the few deliberate differences.

>>> import numpy as np
>>> from fastconv.compat import cs231n, dlfs
>>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
>>> w, b = np.random.default_rng(1).standard_normal((4, 3, 3, 3)), np.zeros(4)
>>> out_book = dlfs.Convolution(w, b, stride=1, pad=1).forward(x)
>>> out_cs231n, _ = cs231n.conv_forward_fast(x, w, b, {'stride': 1, 'pad': 1})
>>> np.array_equal(out_book, out_cs231n)
True
"""

from . import cs231n, dlfs

__all__ = ["cs231n", "dlfs"]
