"""Convolution layer shapes used by the benchmarks, as data, and their FLOP counts.

Each :class:`Layer` is one conv2d call: input channels, output channels, input height and width,
a square kernel, stride, padding, dilation and groups. Batch size and layout are chosen by the
benchmark, not stored here.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple


class Layer(NamedTuple):
    """One conv2d layer shape (square kernel; stride, padding and dilation the same on both axes)."""

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


def conv_flops(layer: Layer, batch: int) -> int:
    """Floating-point operations of one conv2d call, counting a multiply-add as 2.

    ``2 * N * C_out * OH * OW * (C_in / groups) * KH * KW`` (bias and activation not counted).
    """
    oh, ow = layer.out_hw()
    return 2 * batch * layer.c_out * oh * ow * (layer.c_in // layer.groups) * layer.kernel ** 2
