"""Batch-1 calls and calls right after a NumPy matmul, under one libgomp wait policy.

Run once per policy and compare (OPENBLAS_* unset because this machine's settings slow NumPy's
BLAS):

    for s in 0 300 1000; do
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE GOMP_SPINCOUNT=$s python benchmarks/spin_policy.py
    done

Prints median microseconds per call: back-to-back batch-1 layers (where waking a sleeping
OpenMP thread at every region and barrier shows), then a fastconv call right after a NumPy
matmul and a matmul right after a fastconv call (where spinning OpenMP and OpenBLAS threads
fight). See the README's Threads section and ``fastconv/_openmp_env.py``.
"""

from __future__ import annotations

import os
import time
import timeit

import numpy as np

import fastconv

LAYERS = {  # name: (C_in, C_out, H=W, kernel, stride, padding, groups)
    "vgg_3x3": (64, 64, 56, 3, 1, 1, 1),
    "resnet_3x3": (128, 128, 28, 3, 1, 1, 1),
    "s2_3x3": (64, 128, 56, 3, 2, 1, 1),
    "dw_3x3": (128, 128, 56, 3, 1, 1, 128),
    "c64_14x14": (64, 64, 14, 3, 1, 1, 1),
}


def _median_us(fn, number: int = 50, repeat: int = 7) -> float:
    times = sorted(timeit.repeat(fn, number=number, repeat=repeat))
    return times[repeat // 2] / number * 1e6


def _after(first, second, rounds: int = 40) -> float:
    """Median microseconds of ``second()`` called right after ``first()``."""
    times = []
    for _ in range(rounds):
        first()
        start = time.perf_counter()
        second()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for name, (ci, co, hw, k, s, p, g) in LAYERS.items():
        x = rng.standard_normal((1, ci, hw, hw), dtype=np.float32)
        w = rng.standard_normal((co, ci // g, k, k), dtype=np.float32)
        xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        wn = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        rows.append((f"{name} NCHW", _median_us(
            lambda: fastconv.conv2d(x, w, stride=s, padding=p, groups=g))))
        rows.append((f"{name} NHWC", _median_us(
            lambda: fastconv.conv2d(xn, wn, stride=s, padding=p, groups=g, layout="NHWC"))))
    a = rng.standard_normal((1, 64, 112, 112), dtype=np.float32)
    rows.append(("max_pool2d 2x2", _median_us(lambda: fastconv.max_pool2d(a, 2))))
    rows.append(("relu", _median_us(lambda: fastconv.relu(a))))

    m = rng.standard_normal((512, 512), dtype=np.float32)
    x = rng.standard_normal((1, 64, 56, 56), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    rows.append(("matmul -> conv2d", _after(lambda: m @ m, lambda: fastconv.conv2d(x, w, padding=1))))
    rows.append(("matmul -> relu", _after(lambda: m @ m, lambda: fastconv.relu(x, out=x))))
    rows.append(("matmul -> max_pool2d", _after(lambda: m @ m, lambda: fastconv.max_pool2d(x, 2))))
    rows.append(("conv2d -> matmul", _after(lambda: fastconv.conv2d(x, w, padding=1), lambda: m @ m)))

    print(f"fastconv {fastconv.__version__}, {fastconv.get_num_threads()} threads, "
          f"wait policy: {fastconv.config()['openmp_wait_policy']}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for name, us in rows:
        print(f"  {name:<22} {us:9.1f} us")


if __name__ == "__main__":
    main()
