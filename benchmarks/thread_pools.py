"""How OpenMP's and NumPy's OpenBLAS thread pools interact: a small CNN-style loop, timed per op.

Run it twice and compare (OPENBLAS_* unset because this machine's settings slow NumPy's BLAS):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/thread_pools.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE GOMP_SPINCOUNT=300000 python benchmarks/thread_pools.py

The first uses fastconv's default (idle OpenMP threads spin for a few microseconds, then
sleep: ``GOMP_SPINCOUNT=300``; ``GOMP_SPINCOUNT=0`` sleeps at once), the second libgomp's own
default, where idle threads spin for milliseconds after every parallel region and compete with
OpenBLAS's spinning threads. The loop alternates fastconv calls with a NumPy
matmul, as a training step does; the table shows the median time of each step in ms.
"""

from __future__ import annotations

import os
import time

import numpy as np

import fastconv


def main(rounds: int = 30) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 56, 56), dtype=np.float32)
    w1 = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    w2 = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    w_dw = rng.standard_normal((64, 1, 3, 3), dtype=np.float32)
    a = rng.standard_normal((512, 512), dtype=np.float32)
    steps = {
        "conv 3x3 (im2col)": lambda s: s.update(y=fastconv.conv2d(x, w1, padding=1)),
        "relu (in place)": lambda s: fastconv.relu(s["y"], out=s["y"]),
        "max_pool 2x2": lambda s: s.update(p=fastconv.max_pool2d(s["y"], 2)),
        "conv 3x3 on pooled": lambda s: fastconv.conv2d(s["p"], w2, padding=1),
        "depthwise 3x3 (direct)": lambda s: fastconv.conv2d(s["y"], w_dw, padding=1, groups=64),
        "numpy 512x512 matmul": lambda s: a @ a,
    }
    times = {name: [] for name in steps}
    state: dict = {}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(state)
            times[name].append(time.perf_counter() - start)
    print(f"fastconv {fastconv.__version__}, {fastconv.get_num_threads()} threads, "
          f"wait policy: {fastconv.config()['openmp_wait_policy']}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for name, values in times.items():
        print(f"  {name:<24} {np.median(values) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
