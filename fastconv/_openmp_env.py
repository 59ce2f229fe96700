"""Make libgomp's idle threads sleep instead of spin; must run before the kernels load.

By default libgomp's worker threads spin for several milliseconds after every parallel region.
NumPy's OpenBLAS does the same after every GEMM. On a machine with few cores the two pools then
fight: a NumPy ``@`` right after a fastconv call, or the im2col GEMM right after a pooling call,
ran 4-5x slower in our measurements (a 512x512 float32 matmul 4.5 ms instead of 0.8 ms on
2 cores). With ``GOMP_SPINCOUNT=0`` idle threads sleep at once, and waking them costs a few
microseconds per call instead.

libgomp reads the variable once, when it is loaded, so this module runs first in
``fastconv/__init__.py``. It changes nothing when the user chose a policy (``OMP_WAIT_POLICY``
or ``GOMP_SPINCOUNT`` is set), or when libgomp is already loaded by another library (then the
setting could no longer take effect). The variable stays in ``os.environ``, so child processes
inherit it; it only tunes libgomp's idle waiting, never results.
"""

import os

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def libgomp_loaded() -> bool:
    """Is libgomp already mapped into this process? (Linux only; False elsewhere.)"""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def configure() -> str:
    """Apply the policy; return why the wait policy is what it is."""
    chosen = [f"{v}={os.environ[v]}" for v in WAIT_VARIABLES if v in os.environ]
    if chosen:
        return ", ".join(chosen) + " (from the environment)"
    if libgomp_loaded():
        return "libgomp default (libgomp was loaded before fastconv)"
    os.environ["GOMP_SPINCOUNT"] = "0"
    return "GOMP_SPINCOUNT=0 (set by fastconv)"


POLICY = configure()


def describe() -> str:
    """The wait policy in force, and who chose it."""
    return POLICY
