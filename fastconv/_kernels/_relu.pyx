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


def relu_backward(
    const floating[::1] grad_out,  # IN  flat
    const floating[::1] x,         # IN  flat, same length: ReLU's input or output
    floating[::1] out,             # OUT flat, same length; may be grad_out's or x's buffer
    int n_threads,
):
    """``out[i] = 0 if x[i] <= 0 else grad_out[i]``: PyTorch's rule (a NaN x passes grad_out)."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef floating g, v
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            # Both loads unconditional: a select of two loaded values vectorises, a load that
            # depends on the compare does not.
            g = grad_out[i]
            v = x[i]
            out[i] = 0 if v <= 0 else g
