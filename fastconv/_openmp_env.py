"""Make libgomp's idle threads sleep instead of spin; must run before the kernels load.

By default libgomp's worker threads spin for several milliseconds after every parallel region.
NumPy's OpenBLAS does the same after every GEMM. On a machine with few cores the two pools then
fight: a NumPy ``@`` right after a fastconv call, or the im2col GEMM right after a pooling call,
ran 4-5x slower in our measurements (a 512x512 float32 matmul 4.5 ms instead of 0.8 ms on
2 cores). With ``GOMP_SPINCOUNT=0`` idle threads sleep at once, and waking them costs a few
microseconds per call instead. libgomp reads the variable once, when it is loaded, so this
module runs first in ``fastconv/__init__.py``; a user's own ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` is left alone.
"""

import os

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def configure() -> bool:
    """Set ``GOMP_SPINCOUNT=0`` unless the user chose a wait policy; return True if it was set."""
    if any(v in os.environ for v in WAIT_VARIABLES):
        return False
    os.environ["GOMP_SPINCOUNT"] = "0"
    return True


SET_BY_FASTCONV = configure()


def describe() -> str:
    """The wait policy in force, and who chose it."""
    chosen = ", ".join(f"{v}={os.environ[v]}" for v in WAIT_VARIABLES if v in os.environ)
    return f"{chosen} (set by fastconv)" if SET_BY_FASTCONV else (chosen or "libgomp default")
