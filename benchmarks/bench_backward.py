"""Backward-pass benchmarks: conv2d_backward, max/avg_pool2d_backward and relu_backward.

fastconv (each conv2d_backward algorithm) against the NumPy reference and PyTorch's own
backward kernels, called directly so that only the backward pass is timed
(``torch.ops.aten.convolution_backward``, ``max_pool2d_with_indices_backward``,
``avg_pool2d_backward``, ``threshold_backward``).

Grids (float32, batch from ``--fc-batch``, default 1):

* conv2d_backward (grad input + weight + bias): :data:`CONV_LAYERS` x layout (NCHW, NHWC) x
  implementation. ``extra_info["flops"]`` is twice the forward pass's (input and weight
  gradients; the bias gradient is not counted), and after the run ``gflops`` = ``flops / median
  / 1e9``.
* pooling backward: the four ops of ``fastconv._suite.POOL_OPS`` x layout x implementation on a
  (N, 64, 112, 112) input; max pooling is given the forward pass's indices (as torch is).
  ``extra_info["bytes"]`` = grad_out + grad_x (+ the int64 indices for max pooling).
* relu_backward on (N, 64, 112, 112): bytes = grad_out + x + grad_x.

One benchmark group per op, shape, layout and batch. Every implementation except the reference
is checked against ``fastconv.reference`` on the first :data:`VERIFY_BATCH` images before it is
timed (with ``fastconv._bench.compare``: tolerances scaled by the reduction length). torch is
skipped with a reason when it is not installed; the reference is skipped where one call would take more than :data:`REF_MAX_SECONDS`.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

import fastconv
from fastconv import _suite, reference
from fastconv._bench import compare

DTYPE = np.float32
LAYOUTS = ("NCHW", "NHWC")
VERIFY_BATCH = 2
REF_MAX_SECONDS = 3.0
CONV_LAYERS = _suite.BACKWARD_LAYERS + ("lenet_conv2", "resnet_1x1", "s2_3x3", "dilated_3x3")
CONV_IMPLS = ("fastconv-direct", "fastconv-im2col", "fastconv-auto", "reference", "torch")
IMPLS = ("fastconv", "reference", "torch")


def pytest_generate_tests(metafunc):
    names = set(metafunc.fixturenames)
    batches = metafunc.config.getoption("fc_batch") if "batch" in names else None
    cases, ids = [], []
    if {"layer", "layout", "batch", "impl"} <= names:
        for batch in batches:
            for name in CONV_LAYERS:
                for layout in LAYOUTS:
                    for impl in CONV_IMPLS:
                        cases.append((_suite.LAYERS_BY_NAME[name], layout, batch, impl))
                        ids.append(f"{name}-{layout}-N{batch}-{impl}")
        metafunc.parametrize("layer,layout,batch,impl", cases, ids=ids)
    elif {"op", "layout", "batch", "impl"} <= names:
        for batch in batches:
            for op in _suite.POOL_OPS:
                for layout in LAYOUTS:
                    for impl in IMPLS:
                        cases.append((op, layout, batch, impl))
                        ids.append(f"{op.name}-{layout}-N{batch}-{impl}")
        metafunc.parametrize("op,layout,batch,impl", cases, ids=ids)
    elif {"batch", "impl"} <= names:
        for batch in batches:
            for impl in IMPLS:
                cases.append((batch, impl))
                ids.append(f"N{batch}-{impl}")
        metafunc.parametrize("batch,impl", cases, ids=ids)


def torch_nchw(torch, a: np.ndarray, layout: str):
    """NCHW torch view of ``a`` (NHWC data: a channels_last view, no copy)."""
    t = torch.from_numpy(a)
    return t if layout == "NCHW" else t.permute(0, 3, 1, 2)


def to_layout(t, layout: str) -> np.ndarray:
    return t.numpy() if layout == "NCHW" else t.permute(0, 2, 3, 1).numpy()


def grad_like(shape) -> np.ndarray:
    return np.random.default_rng(99).standard_normal(shape, dtype=DTYPE)


def check(got, want, reductions, what):
    result = compare(got, want, reductions)
    assert result.ok, f"{what} differs from fastconv.reference: {result.note}"


def reference_budget(impl, seconds, batch, vbatch):
    """Skip the reference when one call at ``batch`` would exceed REF_MAX_SECONDS."""
    estimate = seconds * batch / vbatch
    if impl == "reference" and estimate > REF_MAX_SECONDS:
        pytest.skip(f"reference: one call at batch {batch} would take ~{estimate:.1f} s "
                    f"(extrapolated from batch {vbatch}), over the {REF_MAX_SECONDS} s limit")


# --------------------------------------------------------------------------------------------
# conv2d_backward


@functools.lru_cache(maxsize=2)
def conv_case(name: str, layout: str, batch: int):
    """(x, weight, grad_out) for one layer; the first images are the same at every batch."""
    layer = _suite.LAYERS_BY_NAME[name]
    x, w, _ = _suite.conv_inputs(layer, batch, layout, DTYPE)
    return x, w, grad_like(layer.output_shape(batch, layout))


@functools.lru_cache(maxsize=4)
def conv_expected(name: str, layout: str, vbatch: int):
    """(reference gradients on the first ``vbatch`` images, seconds the call took)."""
    layer = _suite.LAYERS_BY_NAME[name]
    x, w, gy = conv_case(name, layout, vbatch)
    start = time.perf_counter()
    want = reference.conv2d_backward(gy, x, w, layer.stride, layer.pad, layer.dilation,
                                     layer.groups, layout=layout)
    return want, time.perf_counter() - start


def conv_call(impl, layer, layout, x, w, gy, torch=None):
    """A zero-argument function returning (grad_x, grad_weight, grad_bias) as NumPy arrays."""
    geo = (layer.stride, layer.pad, layer.dilation, layer.groups)
    if impl.startswith("fastconv-"):
        op, algorithm = fastconv.conv2d_backward, impl.split("-", 1)[1]
        return lambda: op(gy, x, w, *geo, layout=layout, algorithm=algorithm)
    if impl == "reference":
        return lambda: reference.conv2d_backward(gy, x, w, *geo, layout=layout)
    xt, gyt = torch_nchw(torch, x, layout), torch_nchw(torch, gy, layout)
    if layout == "NCHW":
        wt = torch.from_numpy(w)
    else:  # HWIO -> OIHW in channels_last memory, as a channels_last model holds it
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    aten = torch.ops.aten.convolution_backward
    s, p, d = [layer.stride] * 2, [layer.pad] * 2, [layer.dilation] * 2

    def call():
        gx, gw, gb = aten(gyt, xt, wt, [layer.c_out], s, p, d, False, [0, 0], layer.groups,
                          [True, True, True])
        gw = gw.numpy() if layout == "NCHW" else gw.permute(2, 3, 1, 0).numpy()
        return to_layout(gx, layout), gw, gb.numpy()

    return call


def test_conv2d_backward(layer, layout, batch, impl, measure, benchmark, request):
    torch = request.getfixturevalue("torch_mod") if impl == "torch" else None
    benchmark.group = f"conv2d_backward-{layer.name}-{layout}-N{batch}"
    benchmark.extra_info.update(layer=layer.name, layout=layout, batch=batch)
    x, w, gy = conv_case(layer.name, layout, batch)
    vbatch = min(batch, VERIFY_BATCH)
    want, ref_seconds = conv_expected(layer.name, layout, vbatch)
    reference_budget(impl, ref_seconds, batch, vbatch)
    if impl != "reference":
        oh, ow = layer.out_hw()
        reductions = (layer.c_out // layer.groups * layer.kernel ** 2, vbatch * oh * ow)
        check(conv_call(impl, layer, layout, x[:vbatch], w, gy[:vbatch], torch)(), want,
              reductions, f"{impl} conv2d_backward {layer} {layout}")
    flops = 2 * _suite.conv_flops(layer, batch)
    measure(conv_call(impl, layer, layout, x, w, gy, torch), kind="conv2d_backward", impl=impl,
            flops=flops)


# --------------------------------------------------------------------------------------------
# pooling backward


@functools.lru_cache(maxsize=2)
def pool_case(name: str, layout: str, batch: int):
    """(x, grad_out) of one pooling op on the (N, 64, 112, 112) feature map."""
    op = _suite.POOL_OPS_BY_NAME[name]
    x = _suite.feature_map(batch, layout, DTYPE)
    out = op.out_size(_suite.FEATURE_MAP[1])
    c = _suite.FEATURE_MAP[0]
    return x, grad_like((batch, c, out, out) if layout == "NCHW" else (batch, out, out, c))


def pool_call(impl, op, layout, x, gy, torch=None):
    """A zero-argument function returning grad_x as a NumPy array in ``layout``."""
    kargs = (op.kernel, op.stride, op.pad)
    name = op.func + "_backward"
    if impl in ("fastconv", "reference"):
        func = getattr(fastconv if impl == "fastconv" else reference, name)
        if op.func == "avg_pool2d":
            return lambda: func(gy, x.shape, *kargs, layout=layout)
        # The forward pass's indices, as a training step has them (torch gets its own).
        _, idx = fastconv.max_pool2d(x, *kargs, layout=layout, return_indices=True)
        return lambda: func(gy, x, *kargs, layout=layout, indices=idx)
    xt, gyt = torch_nchw(torch, x, layout), torch_nchw(torch, gy, layout)
    k, s, p = [op.kernel] * 2, [op.stride] * 2, [op.pad] * 2
    if op.func == "avg_pool2d":
        aten = torch.ops.aten.avg_pool2d_backward
        return lambda: to_layout(aten(gyt, xt, k, s, p, False, True, None), layout)
    _, it = torch.nn.functional.max_pool2d(xt, *kargs, return_indices=True)
    aten = torch.ops.aten.max_pool2d_with_indices_backward
    return lambda: to_layout(aten(gyt, xt, k, s, p, [1, 1], False, it), layout)


def test_pool_backward(op, layout, batch, impl, measure, benchmark, request):
    torch = request.getfixturevalue("torch_mod") if impl == "torch" else None
    benchmark.group = f"{op.func}_backward-{op.name}-{layout}-N{batch}"
    benchmark.extra_info.update(op=op.name, layout=layout, batch=batch)
    x, gy = pool_case(op.name, layout, batch)
    if impl != "reference":
        v = min(batch, VERIFY_BATCH)
        want = reference.max_pool2d_backward(gy[:v], x[:v], op.kernel, op.stride, op.pad,
                                             layout=layout) if op.func == "max_pool2d" else \
            reference.avg_pool2d_backward(gy[:v], x[:v].shape, op.kernel, op.stride, op.pad,
                                          layout=layout)
        overlap = max(1, -(-op.kernel // op.stride)) ** 2
        check(pool_call(impl, op, layout, x[:v], gy[:v], torch)(), want,
              (overlap * (op.kernel ** 2 if op.func == "avg_pool2d" else 1),),
              f"{impl} {op.func}_backward {op} {layout}")
    nbytes = gy.nbytes + x.nbytes + (gy.size * 8 if op.func == "max_pool2d" else 0)
    measure(pool_call(impl, op, layout, x, gy, torch), kind="pool_backward", impl=impl,
            nbytes=nbytes)


# --------------------------------------------------------------------------------------------
# relu_backward


def relu_call(impl, x, gy, torch=None):
    if impl == "fastconv":
        op = fastconv.relu_backward
        return lambda: op(gy, x)
    if impl == "reference":
        return lambda: reference.relu_backward(gy, x)
    xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
    return lambda: torch.ops.aten.threshold_backward(gyt, xt, 0).numpy()


def test_relu_backward(batch, impl, measure, benchmark, request):
    torch = request.getfixturevalue("torch_mod") if impl == "torch" else None
    benchmark.group = f"relu_backward-N{batch}"
    benchmark.extra_info.update(batch=batch)
    x = _suite.feature_map(batch, "NCHW", DTYPE)
    gy = grad_like(x.shape)
    if impl != "reference":
        check(relu_call(impl, x, gy, torch)(), reference.relu_backward(gy, x), (1,),
              f"{impl} relu_backward")
    measure(relu_call(impl, x, gy, torch), kind="relu_backward", impl=impl,
            nbytes=3 * x.nbytes)
