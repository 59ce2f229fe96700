"""Make libgomp's idle threads spin only briefly; must run before the kernels load.

By default libgomp's worker threads spin for several milliseconds after every parallel region.
NumPy's OpenBLAS does the same after every GEMM. On a machine with few cores the two pools then
fight: a NumPy ``@`` right after a fastconv call, or the im2col GEMM right after a pooling call,
ran 4-5x slower in our measurements (a 512x512 float32 matmul 4.5 ms instead of 0.8 ms on
2 cores).

Sleeping at once (``GOMP_SPINCOUNT=0``) avoids that but makes every parallel region and every
barrier wake a sleeping thread, which on a virtual machine costs 10-40 us each time. A call
of a few hundred microseconds has one or two of them per thread: a VGG layer at batch 1 took
0.72-0.82 ms instead of 0.63-0.75, a ReLU on 3 MB 0.11 ms instead of 0.05.
``GOMP_SPINCOUNT=300`` (a few microseconds of spinning) keeps the team awake across a call's
own barriers and between back-to-back calls, and is too short to fight OpenBLAS: the mixed
NumPy/fastconv loop of ``benchmarks/thread_pools.py`` took 2.8-3.1 ms per step, against 3.0
with 0 and 3.5 with 1000 (2 cores; see the README's Threads section).

libgomp reads the variable once, when it is loaded, so this module runs first in
``fastconv/__init__.py``. It changes nothing when the user chose a policy (``OMP_WAIT_POLICY``
or ``GOMP_SPINCOUNT`` is set), or when libgomp is already loaded by another library (then the
setting could no longer take effect). The variable stays in ``os.environ``, so child processes
inherit it; it only tunes libgomp's idle waiting, never results.
"""

import os

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Spin iterations (``pause`` instructions) of an idle libgomp thread before it sleeps.
SPINCOUNT = "300"


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
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return f"GOMP_SPINCOUNT={SPINCOUNT} (set by fastconv)"


POLICY = configure()


def describe() -> str:
    """The wait policy in force, and who chose it."""
    return POLICY
