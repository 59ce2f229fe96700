"""Peak memory of one convolution beyond its input, weight and output (Linux).

    python benchmarks/peak_memory.py [--layer resnet_3x3] [--batch 32] [--layout NCHW]

For each fastconv algorithm (and PyTorch when it is installed), in a fresh process: build the
inputs and a result array and touch them, reset the kernel's peak-RSS mark
(``/proc/self/clear_refs``), run the call once with ``out=`` (torch: ``out=`` too), and print
how far the peak resident set (``VmHWM``) rose above the resident set just before the call:
the call's scratch (column tiles, prepared images, packed weights) and whatever its libraries
allocate. A second call in the same process is shown too: fastconv keeps small scratch
buffers between calls, so it allocates nothing new then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")   # resets VmHWM to the current RSS


def child(layer_name: str, batch: int, layout: str, impl: str) -> dict:
    import numpy as np

    import fastconv
    from fastconv._suite import LAYERS_BY_NAME, conv_inputs

    layer = LAYERS_BY_NAME[layer_name]
    x, w, b = conv_inputs(layer, batch, layout)
    out = np.ones(layer.output_shape(batch, layout), dtype=np.float32)   # touched
    geo = (layer.stride, layer.pad, layer.dilation, layer.groups)
    if impl == "torch":
        import torch

        torch.set_num_threads(fastconv.get_num_threads())
        xt = torch.from_numpy(x)
        wt = torch.from_numpy(w)
        if layout == "NHWC":
            xt = xt.permute(0, 3, 1, 2)
            wt = wt.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        ot = torch.from_numpy(out)
        ot = ot.permute(0, 3, 1, 2) if layout == "NHWC" else ot

        def call():
            torch.ops.aten.convolution.out(xt, wt, torch.from_numpy(b), [layer.stride] * 2,
                                           [layer.pad] * 2, [layer.dilation] * 2, False,
                                           [0, 0], layer.groups, out=ot)
    else:
        def call():
            fastconv.conv2d(x, w, b, *geo, layout=layout, algorithm=impl, out=out)

    peaks = []
    for _ in range(2):
        rss = _status_kib("VmRSS")
        _reset_peak()
        call()
        peaks.append((_status_kib("VmHWM") - rss) / 1024)
    data = (x.nbytes + w.nbytes + out.nbytes) / 2**20
    return {"impl": impl, "first_mib": peaks[0], "second_mib": peaks[1], "data_mib": data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="resnet_3x3")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.layer, args.batch, args.layout, args.child)))
        return
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("needs Linux's /proc/self/clear_refs")
    impls = ["im2col", "direct", "auto"]
    try:
        import torch  # noqa: F401
        impls.append("torch")
    except ImportError:
        print("torch not installed: its row is left out")
    print(f"{args.layer}, batch {args.batch}, {args.layout}, float32: peak RSS above the "
          f"RSS before the call (MiB); input + weight + output:", end=" ")
    for i, impl in enumerate(impls):
        out = subprocess.run([sys.executable, __file__, "--layer", args.layer, "--batch",
                              str(args.batch), "--layout", args.layout, "--child", impl],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout)
        if i == 0:
            print(f"{row['data_mib']:.1f} MiB")
        print(f"  {impl:7s} first call {row['first_mib']:7.1f}   second call "
              f"{row['second_mib']:7.1f}")


if __name__ == "__main__":
    main()
