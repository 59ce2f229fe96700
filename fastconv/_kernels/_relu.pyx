"""Element-wise ReLU kernel. Compute only; see ``fastconv.activation``."""

from cython cimport floating
from cython.parallel cimport prange


def relu(
    const floating[::1] x,     # IN  flat
    floating[::1] out,         # OUT flat, same length; may be the same buffer as x
    int n_threads,
):
    """``out[i] = 0 if x[i] <= 0 else x[i]``: NaN propagates, -0.0 becomes +0.0."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef floating v
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            v = x[i]
            out[i] = 0 if v <= 0 else v
