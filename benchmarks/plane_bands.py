"""The one-output-channel kernel with and without row bands, interleaved in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/plane_bands.py [--threads N]

Stride-1 depthwise and single-filter planes are computed in bands of output rows (see
``_plane_band_rows`` in ``fastconv/conv.py``); replacing that rule by "the whole plane" gives
the kernel of before (one work item per plane, so one image runs on one thread). Prints the median milliseconds of both, in alternating rounds,
for single-filter images (one 512x512 edge image, a batch of 32, one 2048x2048 image) and the
depthwise suite layer (whole planes either way: a control).
"""

from __future__ import annotations

import argparse
import importlib
import timeit

import numpy as np

import fastconv

conv = importlib.import_module("fastconv.conv")

CASES = {  # name: (x shape, groups)
    "edge_3x3 batch 1": ((1, 1, 512, 512), 1),
    "edge_3x3 batch 32": ((32, 1, 512, 512), 1),
    "2048x2048 image": ((1, 1, 2048, 2048), 1),
    "dw_3x3 batch 32 (control)": ((32, 128, 56, 56), 128),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    threads = args.threads or fastconv.get_num_threads()
    rng = np.random.default_rng(0)
    banded_rule = conv._plane_band_rows
    rules = {"bands": banded_rule, "whole": lambda g, *args: g.out_h}
    print(f"fastconv {fastconv.__version__}, {threads} threads; median ms per call")
    print(f"{'case':<28}{'bands':>8}{'whole':>8}  whole/bands")
    for name, (shape, groups) in CASES.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        w = rng.standard_normal((shape[1], 1, 3, 3), dtype=np.float32)
        number = max(3, int(2e7 // x.size))
        times = {"bands": [], "whole": []}
        for _ in range(args.rounds):
            for label, rule in rules.items():
                conv._plane_band_rows = rule
                conv._clear_launch_caches()   # launch plans are cached per shape
                call = lambda: fastconv.conv2d(x, w, padding=1, groups=groups,  # noqa: E731
                                               num_threads=threads)
                times[label].append(min(timeit.repeat(call, number=number, repeat=3)) / number)
        conv._plane_band_rows = banded_rule
        conv._clear_launch_caches()
        bands, whole = (float(np.median(times[k])) for k in ("bands", "whole"))
        print(f"{name:<28}{bands * 1e3:>8.3f}{whole * 1e3:>8.3f}  {whole / bands:.2f}")


if __name__ == "__main__":
    main()
