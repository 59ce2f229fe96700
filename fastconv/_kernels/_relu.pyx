"""Element-wise ReLU kernel. Compute only; see ``fastconv.activation``."""

from cython cimport floating
from cython.parallel cimport prange
from fastconv._kernels._ranges cimport share_start


cdef extern from "_stream.h" nogil:
    int fc_stream_ok()
    void fc_stream_fence()
    void fc_relu_stream_f32(float* dst, const float* src, Py_ssize_t n)
    void fc_relu_stream_f64(double* dst, const double* src, Py_ssize_t n)


def streaming_stores():
    """Whether this build has streaming (non-temporal) stores (x86 builds)."""
    return bool(fc_stream_ok())


def relu(
    const floating[::1] x,     # IN  flat
    floating[::1] out,         # OUT flat, same length; may be the same buffer as x
    int n_threads,
    bint stream=False,
):
    """``out[i] = 0 if x[i] <= 0 else x[i]``: NaN propagates, -0.0 becomes +0.0.

    With ``stream`` (and a build that has them) out is written by streaming stores, one
    contiguous share per thread: for results much larger than the caches (see _stream.h)."""
    cdef Py_ssize_t n = x.shape[0], i, t, i0, i1
    cdef floating v
    if n == 0:
        return
    cdef const floating* xp = &x[0]
    cdef floating* op = &out[0]
    if stream and fc_stream_ok():
        with nogil:
            for t in prange(n_threads, schedule="static", num_threads=n_threads):
                i0 = share_start(n, n_threads, t)
                i1 = share_start(n, n_threads, t + 1)
                if floating is float:
                    fc_relu_stream_f32(op + i0, xp + i0, i1 - i0)
                else:
                    fc_relu_stream_f64(op + i0, xp + i0, i1 - i0)
                fc_stream_fence()   # the thread's only share, so its last streaming store
        return
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
