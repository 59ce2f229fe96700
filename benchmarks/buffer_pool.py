"""The output buffer pool on and off, interleaved in one process, against PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/buffer_pool.py [--rounds R]

For each memory-bound suite case at batch 32 (depthwise and single-filter convolution,
pooling, ReLU into a new array) it times fastconv with the pool on (the default), fastconv with
``set_buffer_pool(0)`` (every output a fresh allocation, as before the pool), and PyTorch when
installed, in alternating rounds so that all three see the same machine state. Prints median
milliseconds and GB/s (input + output bytes) and the ratios. Run it once more under
``GLIBC_TUNABLES=glibc.malloc.top_pad=1073741824:glibc.malloc.trim_threshold=8589934592`` to
see the fault-free allocator for both libraries. See ``fastconv/_buffers.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fastconv

try:
    import torch
except ImportError:  # optional peer
    torch = None


def _cases(rng):
    dw_x = rng.standard_normal((32, 128, 56, 56), dtype=np.float32)
    dw_w = rng.standard_normal((128, 1, 3, 3), dtype=np.float32)
    dw_xn = np.ascontiguousarray(dw_x.transpose(0, 2, 3, 1))
    dw_wn = np.ascontiguousarray(dw_w.transpose(2, 3, 1, 0))
    edge_x = rng.standard_normal((32, 1, 512, 512), dtype=np.float32)
    edge_w = rng.standard_normal((1, 1, 3, 3), dtype=np.float32)
    act = rng.standard_normal((32, 64, 112, 112), dtype=np.float32)
    act_n = np.ascontiguousarray(act.transpose(0, 2, 3, 1))
    cases = [
        ("dw_3x3 NCHW", dw_x, lambda: fastconv.conv2d(dw_x, dw_w, padding=1, groups=128),
         lambda t: torch.nn.functional.conv2d(t[0], t[1], padding=1, groups=128),
         ((dw_x, dw_w), False)),
        ("dw_3x3 NHWC", dw_xn,
         lambda: fastconv.conv2d(dw_xn, dw_wn, padding=1, groups=128, layout="NHWC"),
         lambda t: torch.nn.functional.conv2d(t[0], t[1], padding=1, groups=128),
         ((dw_x, dw_w), True)),
        ("edge_3x3", edge_x, lambda: fastconv.conv2d(edge_x, edge_w, padding=1),
         lambda t: torch.nn.functional.conv2d(t[0], t[1], padding=1),
         ((edge_x, edge_w), False)),
        ("max_pool2d 2x2 NCHW", act, lambda: fastconv.max_pool2d(act, 2),
         lambda t: torch.nn.functional.max_pool2d(t[0], 2), ((act,), False)),
        ("max_pool2d 2x2 NHWC", act_n, lambda: fastconv.max_pool2d(act_n, 2, layout="NHWC"),
         lambda t: torch.nn.functional.max_pool2d(t[0], 2), ((act,), True)),
        ("avg_pool2d 3x3 s2 p1 NCHW", act, lambda: fastconv.avg_pool2d(act, 3, 2, 1),
         lambda t: torch.nn.functional.avg_pool2d(t[0], 3, 2, 1), ((act,), False)),
        ("relu (new array)", act, lambda: fastconv.relu(act),
         lambda t: torch.relu(t[0]), ((act,), False)),
    ]
    return cases


def _torch_args(spec):
    """PyTorch tensors of the NCHW arrays; the input channels-last for an NHWC case."""
    arrays, channels_last = spec
    tensors = [torch.from_numpy(a) for a in arrays]
    if channels_last:
        tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    return tensors


def _time_once(fn) -> float:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result          # freed before the next call, as in a layer-by-layer loop
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per variant")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bound = fastconv.buffer_pool_info()["max_bytes"] or (256 << 20)
    if torch is not None:
        torch.set_num_threads(fastconv.get_num_threads())
    print(f"fastconv {fastconv.__version__}, {fastconv.get_num_threads()} threads, pool bound "
          f"{bound >> 20} MiB, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')}, "
          f"torch {torch.__version__ if torch is not None else 'not installed'}")
    print(f"{'case':<28}{'pool on':>10}{'pool off':>10}{'torch':>10}   GB/s on/off/torch"
          f"   off/on  torch/on")
    for name, x, fast, peer, spec in _cases(rng):
        out_bytes = fast().nbytes
        moved = x.nbytes + out_bytes
        targs = _torch_args(spec) if torch is not None else None
        variants = {"on": [], "off": [], "torch": []}
        for _ in range(3):   # warm-up: the pool holds a block, torch's kernels are loaded
            fastconv.set_buffer_pool(bound)
            _time_once(fast)
            if torch is not None:
                _time_once(lambda: peer(targs))
        for _ in range(args.rounds):
            # Lowering the bound to 0 empties the pool, so each "on" call follows an untimed
            # one whose freed output it reuses, as in a loop over the same layer.
            fastconv.set_buffer_pool(bound)
            _time_once(fast)
            variants["on"].append(_time_once(fast))
            fastconv.set_buffer_pool(0)
            variants["off"].append(_time_once(fast))
            if torch is not None:
                with torch.no_grad():
                    variants["torch"].append(_time_once(lambda: peer(targs)))
        fastconv.set_buffer_pool(bound)
        med = {k: float(np.median(v)) if v else float("nan") for k, v in variants.items()}
        gbs = "/".join(f"{moved / med[k] / 1e9:.1f}" for k in ("on", "off", "torch"))
        print(f"{name:<28}{med['on'] * 1e3:>10.2f}{med['off'] * 1e3:>10.2f}"
              f"{med['torch'] * 1e3:>10.2f}   {gbs:<17}{med['off'] / med['on']:>7.2f}"
              f"{med['torch'] / med['on']:>9.2f}")


if __name__ == "__main__":
    main()
