"""Pooling benchmarks: fastconv max_pool2d / avg_pool2d against the NumPy reference and PyTorch.

Grid: op (2x2 stride 2; 3x3 stride 2 padding 1, for max and average pooling) x implementation
x layout (NCHW, NHWC) x batch (``--fc-batch``, default 1) on a (N, 64, 112, 112) float32 tensor
(a ResNet stem's output). One group per op, layout and batch. ``extra_info["bytes"]`` is the
input plus output size, and after the run ``gbps`` = ``bytes / median / 1e9``.

Every implementation except the reference is checked once against ``fastconv.reference`` on
the first :data:`VERIFY_BATCH` images before it is timed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import pytest

import fastconv
from fastconv import reference

CHANNELS, SIZE = 64, 112
DTYPE = np.float32
VERIFY_BATCH = 2
IMPLS = ("fastconv", "reference", "torch")
LAYOUTS = ("NCHW", "NHWC")


class PoolOp(NamedTuple):
    name: str       # id
    func: str       # "max_pool2d" or "avg_pool2d"
    kernel: int
    stride: int
    pad: int

    def out_size(self) -> int:
        return (SIZE + 2 * self.pad - self.kernel) // self.stride + 1


OPS = (
    PoolOp("max_2x2_s2", "max_pool2d", 2, 2, 0),
    PoolOp("max_3x3_s2_p1", "max_pool2d", 3, 2, 1),
    PoolOp("avg_2x2_s2", "avg_pool2d", 2, 2, 0),
    PoolOp("avg_3x3_s2_p1", "avg_pool2d", 3, 2, 1),
)


def pytest_generate_tests(metafunc):
    if {"op", "layout", "batch", "impl"} <= set(metafunc.fixturenames):
        cases, ids = [], []
        for batch in metafunc.config.getoption("fc_batch"):
            for op in OPS:
                for layout in LAYOUTS:
                    for impl in IMPLS:
                        cases.append((op, layout, batch, impl))
                        ids.append(f"{op.name}-{layout}-N{batch}-{impl}")
        metafunc.parametrize("op,layout,batch,impl", cases, ids=ids)


@functools.lru_cache(maxsize=2)
def pool_input(layout: str, batch: int) -> np.ndarray:
    """The (N, 64, 112, 112) input, C-contiguous in ``layout`` (same numbers in both)."""
    x = np.random.default_rng(2024).standard_normal((batch, CHANNELS, SIZE, SIZE), dtype=DTYPE)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert x.flags.c_contiguous
    return x


def make_call(impl, op, x, layout, torch=None):
    """A zero-argument function running the pooling op, returning a NumPy array in ``layout``."""
    if impl in ("fastconv", "reference"):
        func = getattr(fastconv if impl == "fastconv" else reference, op.func)
        return lambda: func(x, op.kernel, op.stride, op.pad, layout=layout)
    F = torch.nn.functional
    xt = torch.from_numpy(x)
    if layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2)  # channels_last NCHW view, no copy
        assert xt.is_contiguous(memory_format=torch.channels_last)
    tfunc = F.max_pool2d if op.func == "max_pool2d" else F.avg_pool2d  # count_include_pad=True

    def call():
        y = tfunc(xt, op.kernel, op.stride, op.pad)
        return y.numpy() if layout == "NCHW" else y.permute(0, 2, 3, 1).numpy()

    return call


def test_pool(op, layout, batch, impl, measure, benchmark, request):
    torch = request.getfixturevalue("torch_mod") if impl == "torch" else None
    benchmark.group = f"{op.func}-{op.name}-{layout}-N{batch}"
    x = pool_input(layout, batch)
    out_elems = batch * CHANNELS * op.out_size() ** 2
    nbytes = (x.size + out_elems) * x.itemsize
    benchmark.extra_info.update(op=op.name, layout=layout, batch=batch)

    if impl != "reference":
        xv = x[:VERIFY_BATCH]
        want = make_call("reference", op, xv, layout)()
        got = make_call(impl, op, xv, layout, torch)()
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{impl} {op} {layout} differs from the reference")

    measure(make_call(impl, op, x, layout, torch), kind="pooling", impl=impl, nbytes=nbytes)
