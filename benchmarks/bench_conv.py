"""conv2d benchmarks: fastconv (direct, im2col, auto) against the NumPy reference and PyTorch.

Grid: implementation x layer (:data:`layers.LAYERS`) x layout (NCHW, NHWC) x batch
(``--fc-batch``, default 1), float32, no bias. One benchmark group per layer, layout and batch,
so each table of pytest-benchmark's report compares the implementations on one shape.

``extra_info`` holds ``flops`` (see :func:`layers.conv_flops`) and, after the run, ``gflops`` =
``flops / median / 1e9``; ``auto_algorithm`` says what ``algorithm="auto"`` picked.

Before timing, every implementation except the reference is checked once against
``fastconv.reference.conv2d`` on the first :data:`VERIFY_BATCH` images. The reference itself is
skipped where one call at the benchmark's batch size would take more than
:data:`REF_MAX_SECONDS`, extrapolated from the time of that verification call.
"""

from __future__ import annotations

import functools
import time
import zlib

import numpy as np
import pytest

import fastconv
from fastconv import reference
from layers import LAYERS, LAYERS_BY_NAME, conv_flops

IMPLS = ("fastconv-direct", "fastconv-im2col", "fastconv-auto", "reference", "torch")
LAYOUTS = ("NCHW", "NHWC")
DTYPE = np.float32
VERIFY_BATCH = 2
REF_MAX_SECONDS = 3.0
# Pass when |fast - ref| <= RTOL * |ref| + RTOL * max(1, max|ref|) elementwise.
RTOL = 1e-4


def pytest_generate_tests(metafunc):
    if {"layer", "layout", "batch", "impl"} <= set(metafunc.fixturenames):
        cases, ids = [], []
        for batch in metafunc.config.getoption("fc_batch"):
            for layer in LAYERS:
                for layout in LAYOUTS:
                    for impl in IMPLS:
                        cases.append((layer, layout, batch, impl))
                        ids.append(f"{layer.name}-{layout}-N{batch}-{impl}")
        metafunc.parametrize("layer,layout,batch,impl", cases, ids=ids)


@functools.lru_cache(maxsize=2)
def conv_inputs(name: str, layout: str, batch: int):
    """x and weight for one case, C-contiguous in ``layout``; the same numbers in both layouts,
    and the first images are the same at every batch size (the weight is drawn first)."""
    layer = LAYERS_BY_NAME[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    fan_in = (layer.c_in // layer.groups) * layer.kernel ** 2
    w = rng.standard_normal(layer.weight_shape("NCHW"), dtype=DTYPE) / np.sqrt(fan_in,
                                                                               dtype=DTYPE)
    x = rng.standard_normal(layer.input_shape(batch, "NCHW"), dtype=DTYPE)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        w = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    assert x.flags.c_contiguous and w.flags.c_contiguous
    assert x.shape == layer.input_shape(batch, layout) and w.shape == layer.weight_shape(layout)
    return x, w


@functools.lru_cache(maxsize=4)
def expected(name: str, layout: str, vbatch: int):
    """(reference result on the first ``vbatch`` images, seconds the reference call took)."""
    layer = LAYERS_BY_NAME[name]
    x, w = conv_inputs(name, layout, vbatch)
    start = time.perf_counter()
    want = reference.conv2d(x, w, None, layer.stride, layer.pad, layer.dilation, layer.groups,
                            layout=layout)
    return want, time.perf_counter() - start


def auto_algorithm(x, w, layer, layout) -> str:
    """What ``algorithm="auto"`` picks (from fastconv's private heuristic; "?" if unavailable)."""
    try:
        from fastconv import _validate, conv

        args = _validate.conv_args(x, w, None, layer.stride, layer.pad, layer.dilation,
                                   layer.groups, layout, None)
        return conv.choose_algorithm(args)
    except Exception:
        return "?"


def make_call(impl, x, w, layer, layout, torch=None):
    """A zero-argument function running one conv2d call, returning a NumPy array in ``layout``."""
    conv_args = (None, layer.stride, layer.pad, layer.dilation, layer.groups)
    if impl.startswith("fastconv-"):
        algorithm = impl.split("-", 1)[1]
        return lambda: fastconv.conv2d(x, w, *conv_args, layout=layout, algorithm=algorithm)
    if impl == "reference":
        return lambda: reference.conv2d(x, w, *conv_args, layout=layout)
    # torch: NCHW tensors; NHWC data viewed as NCHW in channels_last memory format (no copy).
    F = torch.nn.functional
    if layout == "NCHW":
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    else:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        assert xt.is_contiguous(memory_format=torch.channels_last)

    def call():
        y = F.conv2d(xt, wt, *conv_args)
        return y.numpy() if layout == "NCHW" else y.permute(0, 2, 3, 1).numpy()

    return call


def test_conv2d(layer, layout, batch, impl, measure, benchmark, request):
    torch = request.getfixturevalue("torch_mod") if impl == "torch" else None
    benchmark.group = f"conv2d-{layer.name}-{layout}-N{batch}"
    x, w = conv_inputs(layer.name, layout, batch)
    flops = conv_flops(layer, batch)
    benchmark.extra_info.update(layer=layer.name, layout=layout, batch=batch)

    vbatch = min(batch, VERIFY_BATCH)
    want, ref_seconds = expected(layer.name, layout, vbatch)
    if impl == "reference":
        estimate = ref_seconds * batch / vbatch
        if estimate > REF_MAX_SECONDS:
            pytest.skip(f"reference: one call at batch {batch} would take ~{estimate:.1f} s "
                        f"(extrapolated from batch {vbatch}), over the {REF_MAX_SECONDS} s limit")
    else:
        xv = x[:vbatch]
        got = make_call(impl, xv, w, layer, layout, torch)()
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype)
        np.testing.assert_allclose(
            got, want, rtol=RTOL, atol=RTOL * max(1.0, float(np.abs(want).max())),
            err_msg=f"{impl} conv2d {layer} {layout} differs from fastconv.reference")
    if impl == "fastconv-auto":
        benchmark.extra_info["auto_algorithm"] = auto_algorithm(x, w, layer, layout)

    measure(make_call(impl, x, w, layer, layout, torch), kind="conv2d", impl=impl, flops=flops)
