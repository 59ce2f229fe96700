"""The benchmark suite as data: conv2d layer shapes, pooling ops, tensor sizes, FLOP counts.

Shared by ``python -m fastconv bench`` (:mod:`fastconv._bench`) and the pytest-benchmark files
in ``benchmarks/`` (which are not installed, so the table lives in the package). Each
:class:`Layer` is one conv2d call: input channels, output channels, input height and width, a
square kernel, stride, padding, dilation and groups. Batch size, layout and dtype are chosen by
the benchmark, not stored here.

>>> from fastconv._suite import LAYERS_BY_NAME, conv_flops
>>> vgg = LAYERS_BY_NAME["vgg_3x3"]
>>> vgg.out_hw(), vgg.input_shape(1, "NHWC"), vgg.weight_shape("NHWC")
((56, 56), (1, 56, 56, 64), (3, 3, 64, 64))
>>> conv_flops(vgg, batch=1) / 1e9  # 2 * 64 * 56 * 56 * 64 * 3 * 3
0.231211008
"""

from __future__ import annotations

import zlib
from typing import NamedTuple, Tuple

import numpy as np

__all__ = [
    "Layer", "LAYERS", "LAYERS_BY_NAME", "BACKWARD_LAYERS", "FUSED_LAYERS", "conv_flops",
    "conv_inputs", "PoolOp", "POOL_OPS", "POOL_OPS_BY_NAME", "FEATURE_MAP", "QUICK_FEATURE_MAP",
    "feature_map",
]


class Layer(NamedTuple):
    """One conv2d layer shape (square kernel; stride, padding, dilation equal on both axes)."""

    name: str
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: int
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    groups: int = 1

    def out_hw(self) -> Tuple[int, int]:
        """Output (OH, OW): ``floor((size + 2*pad - dilation*(kernel-1) - 1) / stride) + 1``."""
        span = self.dilation * (self.kernel - 1) + 1
        return ((self.h + 2 * self.pad - span) // self.stride + 1,
                (self.w + 2 * self.pad - span) // self.stride + 1)

    def input_shape(self, batch: int, layout: str) -> Tuple[int, int, int, int]:
        """Shape of x: (N, C_in, H, W) for NCHW, (N, H, W, C_in) for NHWC."""
        if layout == "NCHW":
            return (batch, self.c_in, self.h, self.w)
        return (batch, self.h, self.w, self.c_in)

    def weight_shape(self, layout: str) -> Tuple[int, int, int, int]:
        """Shape of the weight: OIHW (C_out, C_in/groups, K, K) for NCHW, HWIO for NHWC."""
        cig = self.c_in // self.groups
        if layout == "NCHW":
            return (self.c_out, cig, self.kernel, self.kernel)
        return (self.kernel, self.kernel, cig, self.c_out)

    def output_shape(self, batch: int, layout: str) -> Tuple[int, int, int, int]:
        """Shape of the result in ``layout``."""
        oh, ow = self.out_hw()
        if layout == "NCHW":
            return (batch, self.c_out, oh, ow)
        return (batch, oh, ow, self.c_out)

    def reduction(self) -> int:
        """Terms summed per output value: ``C_in/groups * K * K``."""
        return (self.c_in // self.groups) * self.kernel ** 2

    def describe(self) -> str:
        """A short summary, e.g. ``"64->128 56x56 k3 s2"`` or ``"128 56x56 k3 dw"``."""
        if self.groups == self.c_in == self.c_out and self.groups > 1:
            chans = f"{self.c_in} dw"
        else:
            chans = f"{self.c_in}->{self.c_out}" + (f" g{self.groups}" if self.groups > 1 else "")
        text = f"{chans} {self.h}x{self.w} k{self.kernel}"
        if self.stride != 1:
            text += f" s{self.stride}"
        if self.dilation != 1:
            text += f" d{self.dilation}"
        return text


LAYERS = (
    Layer("lenet_conv1", 1, 6, 28, 28, kernel=5, stride=1, pad=2),
    Layer("lenet_conv2", 6, 16, 14, 14, kernel=5, stride=1, pad=0),
    Layer("alexnet_conv1", 3, 64, 224, 224, kernel=11, stride=4, pad=2),
    Layer("vgg_3x3", 64, 64, 56, 56, kernel=3, stride=1, pad=1),
    Layer("resnet_3x3", 128, 128, 28, 28, kernel=3, stride=1, pad=1),
    Layer("resnet_1x1", 256, 64, 56, 56, kernel=1, stride=1, pad=0),
    Layer("s2_3x3", 64, 128, 56, 56, kernel=3, stride=2, pad=1),
    Layer("dw_3x3", 128, 128, 56, 56, kernel=3, stride=1, pad=1, groups=128),
    Layer("stem_7x7", 3, 64, 224, 224, kernel=7, stride=2, pad=3),
    Layer("edge_3x3", 1, 1, 512, 512, kernel=3, stride=1, pad=1),
    Layer("dilated_3x3", 64, 64, 56, 56, kernel=3, stride=1, pad=2, dilation=2),
)

LAYERS_BY_NAME = {layer.name: layer for layer in LAYERS}

# The layers whose backward pass is benchmarked by default (issue 4): a dense 3x3 at high
# resolution, a dense 3x3 with many channels, and a depthwise 3x3.
BACKWARD_LAYERS = ("vgg_3x3", "resnet_3x3", "dw_3x3")

# The layers of the "conv + fused ReLU vs conv alone" rows by default.
FUSED_LAYERS = ("vgg_3x3", "resnet_1x1", "dw_3x3")


def conv_flops(layer: Layer, batch: int) -> int:
    """Floating-point operations of one conv2d call, counting a multiply-add as 2.

    ``2 * N * C_out * OH * OW * (C_in / groups) * KH * KW`` (bias and activation not counted).
    A full backward pass (input and weight gradients) is twice this.
    """
    oh, ow = layer.out_hw()
    return 2 * batch * layer.c_out * oh * ow * layer.reduction()


def conv_inputs(layer: Layer, batch: int, layout: str, dtype=np.float32):
    """Deterministic ``(x, weight, bias)`` for one layer, C-contiguous in ``layout``.

    The numbers are the same in both layouts and dtypes (drawn in float64 NCHW/OIHW from a
    generator seeded by the layer name, then converted); the weight is scaled by
    ``1/sqrt(fan_in)`` so outputs stay of order 1, as in a trained network.
    """
    rng = np.random.default_rng(zlib.crc32(layer.name.encode()))
    w = rng.standard_normal(layer.weight_shape("NCHW")) / np.sqrt(layer.reduction())
    bias = 0.1 * rng.standard_normal(layer.c_out)
    x = rng.standard_normal(layer.input_shape(batch, "NCHW"))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
        w = w.transpose(2, 3, 1, 0)
    return (np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(w, dtype=dtype),
            bias.astype(dtype))


class PoolOp(NamedTuple):
    """One pooling configuration: ``func(x, kernel, stride, pad)``."""

    name: str       # id, e.g. "max_2x2_s2"
    func: str       # "max_pool2d" or "avg_pool2d"
    kernel: int
    stride: int
    pad: int

    def out_size(self, size: int) -> int:
        """Output height/width for a square ``size x size`` input (floor mode)."""
        return (size + 2 * self.pad - self.kernel) // self.stride + 1

    def describe(self) -> str:
        """E.g. ``"max_pool2d 3x3 s2 p1"``."""
        text = f"{self.func} {self.kernel}x{self.kernel} s{self.stride}"
        return text + (f" p{self.pad}" if self.pad else "")


POOL_OPS = (
    PoolOp("max_2x2_s2", "max_pool2d", 2, 2, 0),
    PoolOp("max_3x3_s2_p1", "max_pool2d", 3, 2, 1),
    PoolOp("avg_2x2_s2", "avg_pool2d", 2, 2, 0),
    PoolOp("avg_3x3_s2_p1", "avg_pool2d", 3, 2, 1),
)

POOL_OPS_BY_NAME = {op.name: op for op in POOL_OPS}

# (channels, height = width) of the pooling and ReLU tensors: a ResNet stem's output. The batch
# size comes from the benchmark. QUICK_FEATURE_MAP is the smaller tensor of ``bench --quick``.
FEATURE_MAP = (64, 112)
QUICK_FEATURE_MAP = (16, 56)


def feature_map(batch: int, layout: str, dtype=np.float32, size=FEATURE_MAP) -> np.ndarray:
    """A deterministic standard-normal (N, C, H, W) tensor, C-contiguous in ``layout``.

    The same numbers in both layouts; about half the values are negative (for ReLU).
    """
    channels, hw = size
    x = np.random.default_rng(2024).standard_normal((batch, channels, hw, hw))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=dtype)
