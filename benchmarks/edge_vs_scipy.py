"""One image filtered by a 3x3 kernel: fastconv against ``scipy.signal.correlate2d``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/edge_vs_scipy.py [--size 512]

The suite's edge_3x3 layer per image: a float32 (size, size) image, 'same' zero padding. Each
round times fastconv (2-D in, 2-D out; two threads and one) and scipy, one after the other,
so that the machine's slow and fast phases fall on all alike; prints the medians and ratios,
after checking that the results agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import signal

import fastconv


def _per_call(call, seconds: float = 0.05) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((args.size, args.size)).astype(np.float32)
    kernel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float32)
    calls = {
        "fastconv 2 threads": lambda: fastconv.conv2d(image, kernel, padding=1, num_threads=2),
        "fastconv 1 thread": lambda: fastconv.conv2d(image, kernel, padding=1, num_threads=1),
        "scipy correlate2d": lambda: signal.correlate2d(image, kernel, mode="same"),
    }
    want = calls["scipy correlate2d"]()
    for name, call in calls.items():
        np.testing.assert_allclose(call(), want, rtol=1e-5, atol=1e-4, err_msg=name)
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            times[name].append(_per_call(call))
    scipy_ms = statistics.median(times["scipy correlate2d"]) * 1e3
    print(f"{args.size}x{args.size} float32 image, 3x3 kernel, 'same' padding; medians of "
          f"{args.rounds} interleaved rounds:")
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"  {name:20s} {ms:8.3f} ms   scipy / this {scipy_ms / ms:6.1f}x")


if __name__ == "__main__":
    main()
