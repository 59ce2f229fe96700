"""Per-call overhead counted in instructions, which do not move with the machine's load.

    python benchmarks/call_instructions.py [--calls N] [CASE ...]

Runs each case (a tiny ``conv2d``, LeNet's first layer at batch 1, a tiny ``max_pool2d`` and
``relu``) under ``valgrind --tool=callgrind`` twice, with no timed calls and with N, and
prints the difference per call: the instructions one call executes, Python included (system
calls not), with one OpenMP thread and a fixed PYTHONHASHSEED. On the shared 2-core machines a
timing of a 20 us call moves by up to 2x between processes; this count does not move with
the machine's load. Needs valgrind on PATH. The child mode (``--child CASE N``) is what
valgrind runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import numpy as np


def _cases():
    import fastconv

    rng = np.random.default_rng(0)
    one = np.ones((1, 1, 3, 3), np.float32)
    filt = np.ones((1, 1, 3, 3), np.float32)
    one_nhwc = np.ones((1, 3, 3, 1), np.float32)
    filt_hwio = np.ones((3, 3, 1, 1), np.float32)
    lenet_x = rng.standard_normal((1, 1, 28, 28), dtype=np.float32)
    lenet_w = rng.standard_normal((6, 1, 5, 5), dtype=np.float32)
    return {
        "conv2d_tiny_nchw": lambda: fastconv.conv2d(one, filt),
        "conv2d_tiny_nhwc": lambda: fastconv.conv2d(one_nhwc, filt_hwio, layout="NHWC"),
        "lenet_conv1_b1": lambda: fastconv.conv2d(lenet_x, lenet_w, padding=2),
        "max_pool2d_tiny": lambda: fastconv.max_pool2d(one, 3),
        "relu_tiny": lambda: fastconv.relu(one),
    }


def _child(case: str, calls: int) -> None:
    call = _cases()[case]
    for _ in range(50):   # warm the argument and plan caches
        call()
    for _ in range(calls):
        call()


def _instructions(case: str, calls: int) -> int:
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + os.devnull, sys.executable,
         __file__, "--child", case, str(calls)],
        capture_output=True, text=True, check=True,
        # The same dict layouts in every run, and no idle OpenMP thread whose spinning would
        # be counted (these calls run on one thread anyway).
        env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"})
    return int(re.search(r"Collected : (\d+)", run.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="default: all")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("call_instructions.py needs valgrind on PATH")
    names = args.cases or list(_cases())
    for name in names:
        per_call = (_instructions(name, args.calls) - _instructions(name, 0)) / args.calls
        print(f"{name:<20} {per_call:>10,.0f} instructions per call")


if __name__ == "__main__":
    main()
