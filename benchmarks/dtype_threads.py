"""float64 against float32, and two threads against one, on the dense suite layers, interleaved.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dtype_threads.py \
        [--batch 32] [--rounds 5] [--layers vgg_3x3,resnet_3x3]

For each dense layer and layout, one round calls fastconv.conv2d (algorithm "auto") in float32
on two threads, in float64 on two threads and in float32 on one thread, one after the other,
so that the machine's slow and fast phases fall on all three alike; prints the medians and
the two ratios of the issue's targets: float64 throughput as a share of float32 (FLOPs per
second; the same FLOPs, so time32 / time64) and the two-thread speed-up (time1 / time2).
The im2col rows (NCHW 1x1) multiply on NumPy's BLAS, whose threads num_threads does not set,
so their speed-up says nothing about fastconv's threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastconv
from fastconv._bench import _auto_algorithm
from fastconv._suite import LAYERS_BY_NAME, conv_inputs

DENSE = "alexnet_conv1,vgg_3x3,resnet_3x3,resnet_1x1,s2_3x3,dilated_3x3,stem_7x7"


def _time(call, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", default=DENSE)
    args = parser.parse_args()
    print(f"fastconv {fastconv.__version__}, batch {args.batch}, {args.rounds} rounds; "
          "median ms per call")
    print(f"{'layer':<15}{'layout':<8}{'f32 2t':>8}{'f64 2t':>8}{'f32 1t':>8}"
          f"{'f64/f32':>9}{'2t/1t':>7}  algorithm")
    for name in args.layers.split(","):
        layer = LAYERS_BY_NAME[name]
        for layout in ("NCHW", "NHWC"):
            inputs = {dt: conv_inputs(layer, args.batch, layout, np.dtype(dt))
                      for dt in ("float32", "float64")}

            def call(dtype, threads):
                x, w = inputs[dtype][:2]
                return lambda: fastconv.conv2d(
                    x, w, stride=layer.stride, padding=layer.pad, dilation=layer.dilation,
                    groups=layer.groups, layout=layout, num_threads=threads)

            runs = {"f32 2t": call("float32", 2), "f64 2t": call("float64", 2),
                    "f32 1t": call("float32", 1)}
            for run in runs.values():   # warm up: caches, scratch, the buffer pool
                run()
            times = {k: [] for k in runs}
            for _ in range(args.rounds):
                for key, run in runs.items():
                    times[key].append(_time(run))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            algo = _auto_algorithm(*inputs["float32"][:2], layer, layout) or "?"
            print(f"{name:<15}{layout:<8}{med['f32 2t']:>8.1f}{med['f64 2t']:>8.1f}"
                  f"{med['f32 1t']:>8.1f}{med['f32 2t'] / med['f64 2t']:>9.2f}"
                  f"{med['f32 1t'] / med['f32 2t']:>7.2f}  {algo}")


if __name__ == "__main__":
    main()
