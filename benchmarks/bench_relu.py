"""ReLU benchmarks: fastconv.relu against np.maximum and PyTorch.

Modes: ``new`` (allocate the result), ``out`` (write into a preallocated buffer,
``out=buf``) and ``inplace`` (``out=x``). Tensor: (N, 64, 112, 112) float32, N from
``--fc-batch`` (default 1). One group per mode and batch. ``extra_info["bytes"]`` is the input
plus output size, and after the run ``gbps`` = ``bytes / median / 1e9``.

fastconv is checked once against ``fastconv.reference.relu`` before it is timed; so is torch.
"""

from __future__ import annotations

import numpy as np

import fastconv
from fastconv import reference

SHAPE = (64, 112, 112)  # per image
DTYPE = np.float32
IMPLS = ("fastconv", "numpy", "torch")
MODES = ("new", "out", "inplace")


def pytest_generate_tests(metafunc):
    if {"mode", "batch", "impl"} <= set(metafunc.fixturenames):
        cases, ids = [], []
        for batch in metafunc.config.getoption("fc_batch"):
            for mode in MODES:
                for impl in IMPLS:
                    cases.append((mode, batch, impl))
                    ids.append(f"{mode}-N{batch}-{impl}")
        metafunc.parametrize("mode,batch,impl", cases, ids=ids)


def make_input(batch: int) -> np.ndarray:
    """Half negative, half positive, C-contiguous."""
    return np.random.default_rng(7).standard_normal((batch, *SHAPE), dtype=DTYPE)


def make_call(impl, mode, x, buf, torch=None):
    """A zero-argument function running one ReLU in ``mode``; returns the result array."""
    if impl == "fastconv":
        if mode == "new":
            return lambda: fastconv.relu(x)
        target = buf if mode == "out" else x
        return lambda: fastconv.relu(x, out=target)
    if impl == "numpy":
        if mode == "new":
            return lambda: np.maximum(x, 0)
        target = buf if mode == "out" else x
        return lambda: np.maximum(x, 0, out=target)
    xt, bt = torch.from_numpy(x), torch.from_numpy(buf)
    if mode == "new":
        return lambda: torch.relu(xt).numpy()
    if mode == "out":
        return lambda: torch.clamp_min(xt, 0.0, out=bt).numpy()
    return lambda: torch.relu_(xt).numpy()


def test_relu(mode, batch, impl, measure, benchmark, request):
    torch = request.getfixturevalue("torch_mod") if impl == "torch" else None
    benchmark.group = f"relu-{mode}-N{batch}"
    benchmark.extra_info.update(mode=mode, batch=batch)
    x = make_input(batch)
    buf = np.empty_like(x)
    want = reference.relu(x)

    # Check on a copy (in place overwrites x), then time on x itself.
    xc, bc = x.copy(), np.empty_like(x)
    got = make_call(impl, mode, xc, bc, torch)()
    np.testing.assert_array_equal(got, want, err_msg=f"{impl} relu ({mode}) differs")
    if mode == "out":
        assert np.shares_memory(got, bc)
    elif mode == "inplace":
        assert np.shares_memory(got, xc)

    # In place: after the first call the input is non-negative, so "inplace" times ReLU on
    # non-negative data (a different sign mix from "new" and "out").
    measure(make_call(impl, mode, x, buf, torch), kind="relu", impl=impl, nbytes=2 * x.nbytes)
