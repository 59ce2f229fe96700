"""The fast backward passes against fastconv.reference, plus their API contract.

``fastconv.conv2d_backward``, ``max_pool2d_backward``, ``avg_pool2d_backward`` and
``relu_backward`` must agree with their NumPy twins in :mod:`fastconv.reference` (themselves
checked against numerical gradients, hand examples and PyTorch in
tests/test_reference_backward.py) for every algorithm, layout, dtype and geometry; be
independent of the memory layout of their inputs and of the thread count (bit for bit); and
refuse bad arguments exactly as the reference does, before any kernel runs.

Max pooling and ReLU backward do no arithmetic beyond sums in a fixed order, so they must equal
the reference exactly; the convolution gradients are compared with dtype-aware tolerances that
scale with the reduction length.
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import fastconv
from fastconv import reference
from _helpers import (
    ConvCase,
    AUTO_CASE_IDS,
    AUTO_CASES,
    DTYPES,
    HAVE_TORCH,
    LAYOUTS,
    TORCH_REASON,
    assert_close,
    memory_variants,
    oihw_to_hwio,
    to_nhwc,
)

conv_module = importlib.import_module("fastconv.conv")

ALGORITHMS = ("auto", "direct", "im2col")
FAST_ALGORITHMS = ("direct", "im2col")
GRAD_NAMES = ("grad_x", "grad_weight", "grad_bias")
NAN = np.nan
INF = np.inf


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


def assert_bit_identical(a, b, err_msg=""):
    """Same dtype, shape and bytes (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape,
                                                       err_msg)
    assert a.tobytes() == b.tobytes(), err_msg


def assert_exact(got, want, dtype, err_msg=""):
    """Equal values (NaN where NaN), exact dtype and shape, C-contiguous result."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.dtype(dtype), (got.dtype, err_msg)
    assert got.shape == want.shape, (got.shape, want.shape, err_msg)
    assert got.flags.c_contiguous, err_msg
    assert_array_equal(got, want, err_msg=err_msg)


# ============================================================================================
# conv2d_backward
# ============================================================================================


Case = ConvCase   # shorter name for the many case tables below (tests/_helpers.py)


CASES = [
    Case("k3", 2, 3, 7, 7, 4, (3, 3)),
    Case("k3-s2-p1", 1, 3, 8, 9, 5, (3, 3), stride=2, padding=1),
    Case("k3-s3-pad-pair", 3, 2, 10, 11, 3, (3, 3), stride=3, padding=(1, 2)),
    Case("k3-d2-p2", 1, 3, 9, 9, 4, (3, 3), padding=2, dilation=2),
    Case("stride-dilation-pairs", 2, 2, 9, 10, 3, (3, 2), stride=(1, 2), padding=(2, 1),
         dilation=(2, 1)),
    Case("groups2", 2, 4, 7, 7, 6, (3, 3), padding=1, groups=2),
    Case("groups3-s2", 1, 6, 8, 8, 3, (2, 2), stride=2, groups=3),
    Case("depthwise", 2, 4, 7, 7, 4, (3, 3), padding=1, groups=4),
    Case("depthwise-mult2-s2-same", 1, 3, 9, 8, 6, (3, 3), stride=2, padding="same", groups=3),
    # The NHWC depthwise kernels work on blocks of channels (a multiple of 16, chosen from the
    # thread count): 17 and 35 channels leave a partial last block.
    Case("depthwise-c17", 2, 17, 7, 8, 17, (3, 3), padding=1, groups=17),
    Case("depthwise-c35-s2-same", 1, 35, 9, 8, 35, (3, 3), stride=2, padding="same", groups=35),
    Case("pad-asymmetric", 1, 2, 6, 7, 3, (3, 3), padding=((1, 2), (0, 3))),
    Case("valid", 2, 3, 6, 6, 2, (2, 3), padding="valid"),
    Case("same-s1-even-kernel", 1, 2, 7, 6, 3, (4, 2), padding="same"),
    Case("SAME-s2-d2", 2, 3, 9, 10, 4, (3, 3), stride=2, padding="SAME", dilation=2),
    Case("Same-s3-nonsquare", 1, 2, 7, 11, 2, (2, 3), stride=3, padding="Same"),
    Case("1x1", 2, 5, 6, 7, 4, (1, 1)),
    Case("1x1-s2", 1, 3, 7, 7, 2, (1, 1), stride=2),
    Case("1x1-p1", 1, 3, 5, 4, 2, (1, 1), padding=1),
    Case("kernel-equals-input", 3, 2, 5, 6, 3, (5, 6)),
    Case("stride-larger-than-kernel", 1, 2, 10, 10, 3, (2, 2), stride=(4, 3), padding=1),
    Case("single-channel", 3, 1, 6, 6, 1, (3, 3), padding=1),
    # large enough for an im2col + GEMM formulation to be the natural choice of "auto"
    Case("gemm-sized", 2, 8, 6, 6, 16, (3, 3), padding=1),
    Case("gemm-sized-groups2-s2", 1, 16, 7, 7, 16, (2, 2), stride=2, padding="same", groups=2),
]


def make_problem(case: Case, layout: str, dtype, seed: int = 0):
    """(grad_out, x, weight) for ``case`` in ``layout`` and ``dtype``; random normal values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.n, case.c_in, case.h, case.w)).astype(dtype)
    w = rng.standard_normal((case.c_out, case.c_in // case.groups) + case.kernel).astype(dtype)
    if layout == "NHWC":
        x, w = to_nhwc(x), oihw_to_hwio(w)
    out_shape = reference.conv2d(x, w, layout=layout, **case.kwargs()).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    return g, x, w


def reduction_lengths(case: Case, g, layout):
    """Terms summed per entry of (grad_x, grad_weight, grad_bias), for the tolerances."""
    out_pixels = g.shape[-2] * g.shape[-1] if layout == "NCHW" else g.shape[-3] * g.shape[-2]
    per_image = case.n * out_pixels if g.ndim == 4 else out_pixels
    return (case.c_out // case.groups * case.kernel[0] * case.kernel[1], per_image, per_image)


def check_conv_against_reference(g, x, w, case, layout, algorithm, dtype, **extra):
    kw = dict(layout=layout, **case.kwargs())
    msg = f"case={case.name} algorithm={algorithm} layout={layout} dtype={dtype_id(dtype)}"
    got = fastconv.conv2d_backward(g, x, w, algorithm=algorithm, **kw, **extra)
    want = reference.conv2d_backward(g, x, w, **kw)
    assert isinstance(got, tuple) and len(got) == 3, msg
    shapes = (np.shape(x), np.shape(w), (case.c_out,))
    for name, a, e, length, shape in zip(GRAD_NAMES, got, want,
                                         reduction_lengths(case, np.asarray(g), layout), shapes):
        assert isinstance(a, np.ndarray), f"{name} {msg}"
        assert a.shape == shape, f"{name} {a.shape} {msg}"
        assert a.flags.c_contiguous, f"{name} {msg}"
        assert_close(a, e, dtype, reduction_length=length, err_msg=f"{name} {msg}")
    return got


# ---- the main grid -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_matches_reference(algorithm, layout, dtype, case):
    g, x, w = make_problem(case, layout, dtype, seed=len(case.name))
    check_conv_against_reference(g, x, w, case, layout, algorithm, dtype)


UNBATCHED = Case("unbatched", 1, 4, 7, 8, 6, (3, 2), stride=(2, 1), padding=((1, 0), (1, 2)),
                 dilation=(1, 2), groups=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_unbatched_3d(algorithm, layout, dtype):
    g, x, w = make_problem(UNBATCHED, layout, dtype, seed=3)
    got = check_conv_against_reference(g[0], x[0], w, UNBATCHED, layout, algorithm, dtype)
    assert got[0].ndim == 3
    batched = fastconv.conv2d_backward(g, x, w, layout=layout, algorithm=algorithm,
                                       **UNBATCHED.kwargs())
    assert_close(got[0], batched[0][0], dtype, reduction_length=12)


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(stride=2, padding=1), dict(padding=((1, 0), (2, 1)), dilation=(1, 2)),
     dict(stride=(2, 3), padding="same", dilation=2)],
    ids=["valid", "s2-p1", "asymmetric-dilated", "same-s2x3-d2"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_2d_image_and_kernel(algorithm, layout, dtype, kw):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((9, 11)).astype(dtype), rng.standard_normal((3, 2)).astype(dtype)
    g = rng.standard_normal(reference.conv2d(x, w, layout=layout, **kw).shape).astype(dtype)
    got = fastconv.conv2d_backward(g, x, w, layout=layout, algorithm=algorithm, **kw)
    want = reference.conv2d_backward(g, x, w, layout=layout, **kw)
    assert got[0].shape == (9, 11) and got[1].shape == (3, 2) and got[2].shape == (1,)
    for name, a, e, n in zip(GRAD_NAMES, got, want, (6, g.size, g.size)):
        assert_close(a, e, dtype, reduction_length=n, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "case",
    [Case("empty", 0, 4, 6, 5, 6, (3, 2), stride=2, padding=1, groups=2),
     Case("empty-gemm-sized", 0, 8, 6, 6, 16, (3, 3), padding="same")],
    ids=lambda c: c.name,
)
def test_conv_empty_batch(case, algorithm, layout, dtype):
    g, x, w = make_problem(case, layout, dtype)
    assert g.shape[0] == 0
    gx, gw, gb = fastconv.conv2d_backward(g, x, w, layout=layout, algorithm=algorithm,
                                          **case.kwargs())
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (case.c_out,)
    assert gx.dtype == gw.dtype == gb.dtype == np.dtype(dtype)
    # sums over an empty batch are zero, not uninitialised memory
    assert_array_equal(gw, np.zeros_like(w))
    assert_array_equal(gb, np.zeros(case.c_out, dtype=dtype))


# ---- im2col tiles and the "auto" choice ---------------------------------------------------


@pytest.mark.parametrize(
    "case, tile_rows",
    [(Case("tile-splits-an-image", 2, 6, 6, 6, 4, (3, 3), padding=1, groups=2), 10),
     (Case("tile-holds-two-images", 5, 6, 4, 4, 4, (3, 3), padding=1, groups=2), 40),
     (Case("tiles-straddle-images", 3, 4, 5, 5, 6, (3, 2), stride=(1, 2), padding=1,
           dilation=(2, 1)), 7),
     (Case("strided-dilated-asymmetric", 3, 4, 9, 8, 6, (3, 2), stride=(2, 3),
           padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2), 5),
     (Case("1x1-x-is-cols", 3, 4, 5, 6, 6, (1, 1)), 3),
     (Case("1x1-grouped", 3, 4, 5, 6, 6, (1, 1), groups=2), 11),
     (Case("1x1-strided", 3, 4, 7, 6, 6, (1, 1), stride=2), 4),
     (Case("1x1-padded", 2, 4, 5, 6, 6, (1, 1), padding=1), 6)],
    ids=lambda v: v.name if isinstance(v, Case) else str(v),
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_im2col_tiles_match_reference(monkeypatch, layout, case, tile_rows):
    """Shrink the im2col scratch budget so every tile loop runs: tiles that split an image,
    hold several images or straddle two, and (NHWC) images larger than a tile."""
    k = case.c_in // case.groups * case.kernel[0] * case.kernel[1]
    monkeypatch.setattr(conv_module, "IM2COL_TILE_BYTES", tile_rows * k * 8)
    g, x, w = make_problem(case, layout, np.float64, seed=tile_rows)
    check_conv_against_reference(g, x, w, case, layout, "im2col", np.float64)
    for needs in ("input", "weight"):
        got = fastconv.conv2d_backward(g, x, w, layout=layout, algorithm="im2col", needs=needs,
                                       **case.kwargs())
        want = reference.conv2d_backward(g, x, w, layout=layout, needs=needs, **case.kwargs())
        i = 0 if needs == "input" else 1
        assert_close(got[i], want[i], np.float64, reduction_length=100, err_msg=needs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_1x1_image_larger_than_a_default_tile(layout):
    """A pointwise layer whose image holds more pixels than one 8 MiB tile has rows
    (2048 float32 channels: 1024 rows per tile, 40 x 40 = 1600 pixels), unpatched."""
    case = Case("1x1-wide", 1, 2048, 40, 40, 8, (1, 1))
    g, x, w = make_problem(case, layout, np.float32, seed=17)
    check_conv_against_reference(g, x, w, case, layout, "im2col", np.float32)


@pytest.mark.parametrize("cig, kernel, cog, groups, expected", AUTO_CASES, ids=AUTO_CASE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_auto_picks_as_conv2d_documents(layout, cig, kernel, cog, groups, expected):
    """"auto" gives bit for bit the algorithm conv2d's documented heuristic picks."""
    expected = expected[LAYOUTS.index(layout)]
    case = Case("auto", 2, cig * groups, 9, 9, cog * groups, kernel, padding=1, groups=groups)
    g, x, w = make_problem(case, layout, np.float64, seed=7)
    kw = dict(layout=layout, num_threads=1, **case.kwargs())
    auto = fastconv.conv2d_backward(g, x, w, algorithm="auto", **kw)
    chosen = fastconv.conv2d_backward(g, x, w, algorithm=expected, **kw)
    for name, a, b in zip(GRAD_NAMES, auto, chosen):
        assert_bit_identical(a, b, name)


# ---- the blocked input gradient (stride 1: a forward convolution) ------------------------

BLOCKED_GRAD_X_CASES = [
    Case("bx-k3-p1", 2, 8, 9, 11, 6, (3, 3), padding=1),
    Case("bx-k5x3-d2x1-same", 1, 5, 10, 9, 7, (5, 3), padding="same", dilation=(2, 1)),
    Case("bx-asymmetric", 2, 4, 7, 8, 9, (3, 3), padding=((0, 2), (1, 0))),
    Case("bx-pad-at-limit", 1, 6, 6, 7, 5, (3, 2), padding=((2, 2), (1, 1))),
    Case("bx-valid", 3, 4, 8, 6, 33, (3, 3)),
    Case("bx-1x1", 2, 12, 5, 6, 4, (1, 1)),
    Case("bx-kernel-equals-input", 2, 4, 5, 6, 3, (5, 6)),
    Case("bx-groups2", 2, 8, 7, 7, 6, (3, 3), padding=1, groups=2),
    Case("bx-c_out1", 2, 4, 6, 6, 1, (3, 3), padding=1),
]


def _grad_x_blocked(g, w, layout, case) -> bool:
    shape = ((case.n, case.c_in, case.h, case.w) if layout == "NCHW"
             else (case.n, case.h, case.w, case.c_in))
    args = conv_module._validate.conv_args(np.zeros(shape, w.dtype), w, None, case.stride,
                                           case.padding, case.dilation, case.groups, layout,
                                           None, "test")
    transposed = conv_module._transposed_conv_args(g, w, args)
    return transposed is not None and conv_module._uses_blocked(transposed)


@pytest.mark.usefixtures("small_thread_thresholds")
@pytest.mark.parametrize("case", BLOCKED_GRAD_X_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_blocked_input_gradient(layout, dtype, case):
    """grad_x of a stride-1 convolution through the forward blocked kernel ("direct"): the
    reference's answer, the same as im2col's up to rounding, and the same bits for 1, 2
    and 3 threads."""
    g, x, w = make_problem(case, layout, dtype, seed=len(case.name))
    assert _grad_x_blocked(g, w, layout, case)
    got = check_conv_against_reference(g, x, w, case, layout, "direct", dtype)
    kw = dict(layout=layout, algorithm="direct", **case.kwargs())
    for threads in (1, 3):
        again = fastconv.conv2d_backward(g, x, w, num_threads=threads, needs=("input",), **kw)
        assert_bit_identical(again[0], got[0], f"threads={threads}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_blocked_input_gradient_not_used_where_it_would_differ(layout):
    """Stride > 1, padding wider than dilation * (K - 1), and an inf or NaN weight (whose
    products with grad_out's padding zeros would be NaN where the true gradient has no term)
    keep the other kernels; the results still match the reference."""
    cases = [Case("bx-s2", 2, 8, 9, 9, 6, (3, 3), stride=2, padding=1),
             Case("bx-wide-pad", 1, 8, 7, 7, 6, (3, 3), padding=3)]
    for case in cases:
        g, x, w = make_problem(case, layout, np.float64, seed=3)
        assert not _grad_x_blocked(g, w, layout, case)
        check_conv_against_reference(g, x, w, case, layout, "direct", np.float64)
    case = BLOCKED_GRAD_X_CASES[0]
    g, x, w = make_problem(case, layout, np.float64, seed=4)
    for bad in (INF, NAN):
        w_bad = w.copy()
        w_bad.flat[5] = bad
        assert not _grad_x_blocked(g, w_bad, layout, case)
        got = fastconv.conv2d_backward(g, x, w_bad, layout=layout, algorithm="direct",
                                       **case.kwargs())
        want = reference.conv2d_backward(g, x, w_bad, layout=layout, **case.kwargs())
        assert_close(got[0], want[0], np.float64, reduction_length=case.c_out * 9)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_direct_uses_the_blocked_input_gradient(layout, monkeypatch):
    """"direct" runs the blocked input gradient; "im2col", and "auto" where it picks im2col
    (a large layer), do not (the weight gradient's BLAS threads would slow it down); all
    three agree."""
    case = Case("bx-large", 2, 32, 24, 24, 32, (3, 3), padding=1)
    g, x, w = make_problem(case, layout, np.float32, seed=5)
    calls = []
    real = conv_module._conv_blocked
    monkeypatch.setattr(conv_module, "_conv_blocked",
                        lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    direct = check_conv_against_reference(g, x, w, case, layout, "direct", np.float32)
    assert len(calls) == 1 and calls[0].x.shape == g.shape
    calls.clear()
    for algorithm in ("auto", "im2col"):
        other = check_conv_against_reference(g, x, w, case, layout, algorithm, np.float32)
        assert calls == [], algorithm
        assert_close(direct[0], other[0], np.float32, reduction_length=case.c_out * 9)


# ---- needs ---------------------------------------------------------------------------------

NEEDS_CASE = Case("needs", 2, 4, 7, 6, 8, (3, 3), stride=(1, 2), padding=1, groups=2)
NEEDS_SUBSETS = [s for r in range(4)
                 for s in itertools.combinations(("input", "weight", "bias"), r)]


@pytest.mark.parametrize("needs", NEEDS_SUBSETS, ids=lambda s: "+".join(s) or "none")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_needs_subsets(algorithm, layout, needs):
    g, x, w = make_problem(NEEDS_CASE, layout, np.float64, seed=8)
    kw = dict(layout=layout, **NEEDS_CASE.kwargs())
    got = fastconv.conv2d_backward(g, x, w, needs=needs, algorithm=algorithm, **kw)
    want = reference.conv2d_backward(g, x, w, **kw)
    assert isinstance(got, tuple) and len(got) == 3
    lengths = reduction_lengths(NEEDS_CASE, g, layout)
    for name, a, e, n in zip(("input", "weight", "bias"), got, want, lengths):
        if name in needs:
            assert_close(a, e, np.float64, reduction_length=n, err_msg=name)
        else:
            assert a is None, name


# ---- memory layouts of the inputs ----------------------------------------------------------

MEMORY_CASE = Case("memory", 2, 4, 7, 9, 6, (3, 2), stride=(1, 2), padding=1, dilation=(2, 1),
                   groups=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_memory_layouts_give_identical_results(algorithm, layout, dtype):
    g, x, w = make_problem(MEMORY_CASE, layout, dtype, seed=11)
    kw = dict(layout=layout, algorithm=algorithm, num_threads=2, **MEMORY_CASE.kwargs())
    baseline = fastconv.conv2d_backward(g, x, w, **kw)
    check_conv_against_reference(g, x, w, MEMORY_CASE, layout, algorithm, dtype)
    for arg in ("grad_out", "x", "weight"):
        original = {"grad_out": g, "x": x, "weight": w}[arg]
        for name, variant in memory_variants(original):
            before = variant.copy()
            args = {"grad_out": g, "x": x, "weight": w, arg: variant}
            got = fastconv.conv2d_backward(args["grad_out"], args["x"], args["weight"], **kw)
            for gname, a, b in zip(GRAD_NAMES, got, baseline):
                assert_bit_identical(a, b, f"{gname}: {arg} variant {name}")
            assert_array_equal(variant, before, err_msg=f"{arg} variant {name} was modified")


# ---- threads -------------------------------------------------------------------------------

THREAD_CASES = [
    Case("threads-k3-p1", 4, 8, 20, 19, 16, (3, 3), padding=1),
    Case("threads-depthwise-s2", 3, 12, 21, 20, 12, (3, 3), stride=2, padding="same",
         groups=12),
    # channel blocks of the NHWC depthwise kernels with a partial last block
    Case("threads-depthwise-c17", 3, 17, 20, 19, 17, (3, 3), padding=1, groups=17),
    Case("threads-depthwise-c35-s2", 2, 35, 21, 20, 35, (3, 3), stride=2, padding="same",
         groups=35),
    Case("threads-1x1", 3, 16, 15, 14, 8, (1, 1)),
]


@pytest.mark.usefixtures("small_thread_thresholds")
@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_num_threads_bit_identical(algorithm, layout, dtype, case):
    g, x, w = make_problem(case, layout, dtype, seed=13)
    kw = dict(layout=layout, algorithm=algorithm, **case.kwargs())
    one = fastconv.conv2d_backward(g, x, w, num_threads=1, **kw)
    for repeat in range(2):
        two = fastconv.conv2d_backward(g, x, w, num_threads=2, **kw)
        for name, a, b in zip(GRAD_NAMES, one, two):
            assert_bit_identical(a, b, f"{name} repeat {repeat}")
    default = fastconv.conv2d_backward(g, x, w, **kw)
    for name, a, b in zip(GRAD_NAMES, one, default):
        assert_bit_identical(a, b, f"{name} num_threads=None")
    # and right, not only reproducible
    if algorithm == "auto" and dtype == np.float64:
        check_conv_against_reference(g, x, w, case, layout, "auto", dtype, num_threads=2)


# ---- dtypes, values ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "g_dtype, x_dtype, w_dtype, expected",
    [
        (np.float32, np.float32, np.float32, np.float32),
        (np.float64, np.float32, np.float32, np.float64),
        (np.float32, np.float64, np.float32, np.float64),
        (np.float32, np.float32, np.float64, np.float64),
        (np.float16, np.float16, np.float16, np.float32),
        (np.int64, np.int32, np.uint8, np.float64),
    ],
    ids=lambda v: np.dtype(v).name,
)
def test_conv_dtype_policy(g_dtype, x_dtype, w_dtype, expected, algorithm):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 4, 6, 6)) * 3).astype(x_dtype)
    w = (rng.standard_normal((6, 2, 3, 3)) * 3).astype(w_dtype)
    g = (rng.standard_normal((2, 6, 6, 6)) * 3).astype(g_dtype)
    kw = dict(padding=1, groups=2)
    got = fastconv.conv2d_backward(g, x, w, algorithm=algorithm, **kw)
    want = reference.conv2d_backward(g, x, w, **kw)
    for name, a, e, n in zip(GRAD_NAMES, got, want, (27, 72, 72)):
        assert a.dtype == np.dtype(expected), name
        assert_close(a, e, expected, reduction_length=n, err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_nonfinite_values_like_reference(algorithm, layout):
    """NaN and inf in grad_out or x reach the gradients the reference says they reach, silently
    (warnings are errors in this suite)."""
    g, x, w = make_problem(CASES[1], layout, np.float64, seed=21)
    g.flat[5] = NAN
    x.flat[17] = INF
    kw = dict(layout=layout, **CASES[1].kwargs())
    got = fastconv.conv2d_backward(g, x, w, algorithm=algorithm, **kw)
    want = reference.conv2d_backward(g, x, w, **kw)
    assert any(np.isnan(e).any() for e in want)
    for name, a, e in zip(GRAD_NAMES, got, want):
        assert_array_equal(np.isnan(a), np.isnan(e), err_msg=name)
        assert_array_equal(np.isinf(a), np.isinf(e), err_msg=name)
        assert_close(a, e, np.float64, reduction_length=100, err_msg=name)


def test_conv_list_inputs():
    got = fastconv.conv2d_backward([[1, 0], [0, -1]], [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
                                   [[1, 2], [3, 4]])
    # by hand: grad_x is w at (0, 0) minus w at (1, 1); grad_w[i, j] = x[i, j] - x[i+1, j+1]
    assert_exact(got[0], [[1, 2, 0], [3, 3, -2], [0, -3, -4]], np.float64)
    assert_exact(got[1], [[-4, -4], [-4, -4]], np.float64)
    assert_exact(got[2], [0], np.float64)


# ---- hypothesis ----------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = ((draw(st.integers(0, 2)), draw(st.integers(0, 2))),
            (draw(st.integers(0, 2)), draw(st.integers(0, 2))))
    eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    h = draw(st.integers(max(1, eh - sum(pads[0])), eh + 5))
    w = draw(st.integers(max(1, ew - sum(pads[1])), ew + 5))
    padding = draw(st.sampled_from([pads, "same"]))
    case = Case("hypothesis", draw(st.integers(0, 2)), c_in, h, w, c_out, (kh, kw), stride,
                padding, dilation, groups)
    return (case, draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(DTYPES)),
            draw(st.sampled_from(ALGORITHMS)), draw(st.integers(0, 2**32 - 1)))


@given(conv_cases())
def test_conv_property_matches_reference(drawn):
    case, layout, dtype, algorithm, seed = drawn
    note(str(drawn))
    g, x, w = make_problem(case, layout, dtype, seed=seed)
    check_conv_against_reference(g, x, w, case, layout, algorithm, dtype)


# ============================================================================================
# max_pool2d_backward
# ============================================================================================

# (H, W, kernel_size, stride, padding); each is run with ceil_mode False and True.
POOL_GRID = [
    pytest.param(5, 6, 1, None, 0, id="k1"),
    pytest.param(6, 7, 2, None, 0, id="k2-default-stride"),
    pytest.param(7, 8, 3, None, 1, id="k3-p1-default-stride"),
    pytest.param(7, 7, 3, 1, 1, id="k3-s1-p1-overlapping"),
    pytest.param(6, 7, 3, 1, 0, id="k3-s1-overlapping"),
    pytest.param(7, 8, 3, 2, 1, id="k3-s2-p1-overlapping"),
    pytest.param(9, 10, 2, 3, 0, id="stride>kernel"),
    pytest.param(7, 9, 2, (3, 4), 1, id="stride>kernel-p1"),
    pytest.param(6, 8, (2, 3), (1, 2), (1, 1), id="k2x3-s1x2-pair-padding"),
    pytest.param(8, 8, 4, 3, 2, id="k4-p2-half-kernel"),
    pytest.param(7, 8, 3, 2, ((0, 1), (1, 0)), id="asymmetric-padding"),
    pytest.param(6, 7, (3, 2), 2, "same", id="same-s2"),
    pytest.param(7, 8, 3, 2, "valid", id="valid"),
    pytest.param(5, 5, 2, 2, 0, id="ceil-adds-window"),
    pytest.param(5, 5, 3, 3, 1, id="ceil-last-window-dropped"),
    pytest.param(5, 6, 5, 1, 0, id="kernel-equals-input-height"),
]
CEIL = pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])


def _in_layout(a_nchw, layout):
    return a_nchw if layout == "NCHW" else to_nhwc(a_nchw)


def pool_problem(rng, shape, kernel_size, stride, padding, layout, ceil_mode, dtype,
                 ties=True):
    """(grad_out, x) for a pooling problem; ``ties`` gives small integers (many equal maxima)."""
    x = rng.integers(-3, 4, size=shape) if ties else rng.standard_normal(shape)
    x = _in_layout(x.astype(dtype), layout)
    out_shape = reference.avg_pool2d(x, kernel_size, stride, padding, layout=layout,
                                     ceil_mode=ceil_mode).shape
    return rng.standard_normal(out_shape).astype(dtype), x


def check_max_pool(g, x, kernel_size, stride, padding, dtype, msg="", **kw):
    """Fast == reference exactly, with and without indices (from either max_pool2d)."""
    want = reference.max_pool2d_backward(g, x, kernel_size, stride, padding, **kw)
    got = fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding, **kw)
    assert_exact(got, want, dtype, msg)
    _, idx = fastconv.max_pool2d(x, kernel_size, stride, padding, return_indices=True, **kw)
    with_idx = fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding, indices=idx,
                                            **kw)
    assert_bit_identical(with_idx, got, f"indices= {msg}")
    _, ref_idx = reference.max_pool2d(x, kernel_size, stride, padding, return_indices=True, **kw)
    assert_bit_identical(
        fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding, indices=ref_idx, **kw),
        got, f"reference indices= {msg}")
    return got


@CEIL
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", POOL_GRID)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_matches_reference(layout, dtype, H, W, kernel_size, stride, padding, ceil_mode,
                               rng):
    g, x = pool_problem(rng, (2, 3, H, W), kernel_size, stride, padding, layout, ceil_mode,
                        dtype)
    check_max_pool(g, x, kernel_size, stride, padding, dtype, layout=layout, ceil_mode=ceil_mode)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_ties_go_to_first_maximum(layout):
    # all equal, overlapping 2x2 stride-1 windows: window (i, j) sends its gradient to (i, j)
    g = _in_layout(np.arange(1.0, 10.0).reshape(1, 1, 3, 3), layout)
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, :3, :3] = np.arange(1.0, 10.0).reshape(3, 3)
    got = fastconv.max_pool2d_backward(g, _in_layout(np.ones((1, 1, 4, 4)), layout), 2, 1,
                                       layout=layout)
    assert_exact(got, _in_layout(want, layout), np.float64)


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_nan_and_neg_inf_windows(layout, dtype, padding, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    x[rng.random(x.shape) < 0.1] = NAN
    x[0, 0, :2, :2] = NAN          # a window of NaNs only
    x[0, 1, 4:7, 3:6] = NAN        # several NaNs in overlapping windows
    x[1, 2] = -INF                 # a plane of -inf: every window all -inf
    x[1, 0, :, :3] = -INF          # -inf next to finite values
    x = _in_layout(x.astype(dtype), layout)
    for ceil_mode in (False, True):
        kw = dict(layout=layout, ceil_mode=ceil_mode)
        shape = reference.max_pool2d(x, 3, 2, padding, **kw).shape
        g = rng.standard_normal(shape).astype(dtype)
        got = check_max_pool(g, x, 3, 2, padding, dtype, f"ceil_mode={ceil_mode}", **kw)
        assert np.isfinite(got).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_several_nans_in_a_window_last_nan_wins(layout):
    """A window with two or more NaNs sends its gradient to the LAST of them in row-major
    window order (PyTorch's CPU rule); with one NaN, to that NaN."""
    x = np.array([[NAN, 1.0, 5.0, NAN],
                  [NAN, 0.0, NAN, NAN],
                  [2.0, NAN, 3.0, 4.0],
                  [1.0, 7.0, NAN, NAN]])
    # windows: NaNs at (0,0),(1,0) -> (1,0); (0,3),(1,2),(1,3) -> (1,3); one NaN (2,1);
    # (3,2),(3,3) -> (3,3)
    want = np.zeros((4, 4))
    want[1, 0], want[1, 3], want[2, 1], want[3, 3] = 1.0, 2.0, 3.0, 4.0
    # channel 1: every window all NaN -> each window's last cell
    x4 = _in_layout(np.stack([x, np.full((4, 4), NAN)])[None], layout)
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    g4 = _in_layout(np.stack([g, 10 * g])[None], layout)
    all_nan = np.zeros((4, 4))
    all_nan[1::2, 1::2] = 10 * g
    got = check_max_pool(g4, x4, 2, None, 0, np.float64, layout=layout)
    assert_exact(got, _in_layout(np.stack([want, all_nan])[None], layout), np.float64)
    _, idx = fastconv.max_pool2d(x4, 2, layout=layout, return_indices=True)
    idx = idx if layout == "NCHW" else np.moveaxis(idx, -1, 1)
    assert_array_equal(idx[0], [[[4, 7], [9, 15]], [[5, 7], [13, 15]]])


@pytest.mark.parametrize("kernel_size, stride, padding",
                         [(2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), 1)],
                         ids=["k2", "k3-s2-p1", "k3-s1-p1-overlapping", "k2x3-s1x2-p1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_windows_with_several_nans_match_reference(layout, dtype, kernel_size, stride,
                                                       padding, rng):
    """Dense NaNs (many windows hold two or more), 17 channels (a partial NHWC channel block):
    fast == reference exactly, with and without indices, for 1 and 2 threads."""
    x = rng.standard_normal((2, 17, 9, 8))
    x[rng.random(x.shape) < 0.45] = NAN
    x[1, 3] = NAN                                    # a plane of NaNs only
    x = _in_layout(x.astype(dtype), layout)
    for ceil_mode in (False, True):
        kw = dict(layout=layout, ceil_mode=ceil_mode)
        # the NaN count of every window, to make sure the case is not vacuous
        counts = reference.avg_pool2d(np.isnan(x).astype(np.float64), kernel_size, stride,
                                      padding, count_include_pad=False, divisor_override=1,
                                      **kw)
        assert (counts >= 2).sum() > counts.size // 4, "too few windows with several NaNs"
        g = rng.standard_normal(counts.shape).astype(dtype)
        one = check_max_pool(g, x, kernel_size, stride, padding, dtype,
                             f"ceil_mode={ceil_mode}", num_threads=1, **kw)
        two = fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding, num_threads=2,
                                           **kw)
        assert_bit_identical(one, two, f"2 threads, ceil_mode={ceil_mode}")


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_several_nans_match_pytorch(layout, rng):
    import torch

    x = rng.standard_normal((2, 5, 9, 8))
    x[rng.random(x.shape) < 0.45] = NAN
    xt = torch.from_numpy(x).requires_grad_(True)
    y = torch.nn.functional.max_pool2d(xt, 3, 2, 1, ceil_mode=True)
    g = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(g))
    got = fastconv.max_pool2d_backward(_in_layout(g, layout), _in_layout(x, layout), 3, 2, 1,
                                       layout=layout, ceil_mode=True)
    assert_exact(got, _in_layout(xt.grad.numpy(), layout), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_nonfinite_grad_out_stays_in_its_cell(layout, rng):
    # NaN/inf in grad_out reach only the cell their window chose; other cells stay finite
    x = _in_layout(rng.standard_normal((1, 2, 6, 6)), layout)
    g = _in_layout(np.ones((1, 2, 3, 3)), layout)
    g.flat[0], g.flat[7] = NAN, INF
    got = check_max_pool(g, x, 2, None, 0, np.float64, layout=layout)
    assert np.isnan(got).sum() == 1 and np.isinf(got).sum() == 1


@pytest.mark.parametrize("channels", [1, 16, 17, 35])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pool_channel_counts(layout, channels, rng):
    """Channel counts around the NHWC kernels' blocks of 16 channels."""
    for dtype in DTYPES:
        g, x = pool_problem(rng, (2, channels, 7, 6), 3, 2, 1, layout, True, dtype)
        check_max_pool(g, x, 3, 2, 1, dtype, layout=layout, ceil_mode=True)
        check_avg_pool(g, x.shape, 3, 2, 1, dtype, layout=layout, ceil_mode=True,
                       count_include_pad=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_unbatched_and_2d(layout, dtype, rng):
    x4 = rng.integers(-3, 4, size=(1, 3, 7, 8)).astype(dtype)
    kw = dict(layout=layout, ceil_mode=True)
    x3 = _in_layout(x4, layout)[0]
    x2 = x4[0, 0]
    for x in (x3, x2):
        g = rng.standard_normal(reference.max_pool2d(x, 3, 2, 1, **kw).shape).astype(dtype)
        got = check_max_pool(g, x, 3, 2, 1, dtype, f"rank {x.ndim}", **kw)
        assert got.shape == x.shape


@pytest.mark.parametrize("indices", [False, True], ids=["no-indices", "indices"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_empty_batch(layout, dtype, indices):
    x = _in_layout(np.zeros((0, 3, 6, 6), dtype=dtype), layout)
    g = _in_layout(np.zeros((0, 3, 3, 3), dtype=dtype), layout)
    idx = np.zeros(g.shape, dtype=np.int64) if indices else None
    got = fastconv.max_pool2d_backward(g, x, 3, 2, 1, layout=layout, indices=idx)
    assert got.shape == x.shape and got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_memory_layouts_bit_identical(layout, dtype, rng):
    g, x = pool_problem(rng, (2, 3, 9, 8), 3, 2, 1, layout, True, dtype)
    _, idx = fastconv.max_pool2d(x, 3, 2, 1, layout=layout, ceil_mode=True, return_indices=True)
    kw = dict(layout=layout, ceil_mode=True)
    base = fastconv.max_pool2d_backward(g, x, 3, 2, 1, **kw)
    assert_exact(base, reference.max_pool2d_backward(g, x, 3, 2, 1, **kw), dtype)
    for arg, original in (("grad_out", g), ("x", x), ("indices", idx)):
        for name, variant in memory_variants(original):
            before = variant.copy()
            args = {"grad_out": g, "x": x, "indices": None, arg: variant}
            got = fastconv.max_pool2d_backward(args["grad_out"], args["x"], 3, 2, 1,
                                               indices=args["indices"], **kw)
            assert_bit_identical(got, base, f"{arg} variant {name}")
            assert_array_equal(variant, before, err_msg=f"{arg} variant {name} was modified")


@pytest.mark.parametrize("use_indices", [False, True], ids=["no-indices", "indices"])
@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 2, 1), (3, 1, 1), (2, None, 0)],
                         ids=["k3-s2-p1", "k3-s1-p1", "k2"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_num_threads_bit_identical(layout, kernel_size, stride, padding, use_indices, rng):
    g, x = pool_problem(rng, (4, 16, 33, 34), kernel_size, stride, padding, layout, True,
                        np.float32, ties=False)
    kw = dict(layout=layout, ceil_mode=True)
    idx = None
    if use_indices:
        _, idx = fastconv.max_pool2d(x, kernel_size, stride, padding, return_indices=True, **kw)
    one = fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding, indices=idx,
                                       num_threads=1, **kw)
    for _ in range(2):
        two = fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding, indices=idx,
                                           num_threads=2, **kw)
        assert_bit_identical(one, two)
    assert_exact(one, reference.max_pool2d_backward(g, x, kernel_size, stride, padding, **kw),
                 np.float32)


# ============================================================================================
# avg_pool2d_backward
# ============================================================================================

AVG_OPTIONS = [dict(count_include_pad=c, divisor_override=d)
               for c, d in itertools.product((True, False), (None, 3))]


def check_avg_pool(g, input_shape, kernel_size, stride, padding, dtype, msg="", **kw):
    want = reference.avg_pool2d_backward(g, input_shape, kernel_size, stride, padding, **kw)
    got = fastconv.avg_pool2d_backward(g, input_shape, kernel_size, stride, padding, **kw)
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    assert got.shape == tuple(input_shape), msg
    assert got.flags.c_contiguous, msg
    assert_close(got, want, dtype, reduction_length=k[0] * k[1], err_msg=f"{kw} {msg}")
    return got


@CEIL
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", POOL_GRID)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_matches_reference(layout, dtype, H, W, kernel_size, stride, padding, ceil_mode,
                               rng):
    g, x = pool_problem(rng, (2, 3, H, W), kernel_size, stride, padding, layout, ceil_mode,
                        dtype, ties=False)
    for options in AVG_OPTIONS:
        check_avg_pool(g, x.shape, kernel_size, stride, padding, dtype, layout=layout,
                       ceil_mode=ceil_mode, **options)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_unbatched_2d_and_empty(layout, dtype, rng):
    shape4 = (1, 3, 7, 8) if layout == "NCHW" else (1, 7, 8, 3)
    for shape in (shape4[1:], (7, 8), (0,) + shape4[1:]):
        for options in AVG_OPTIONS:
            kw = dict(layout=layout, ceil_mode=True, **options)
            out_shape = reference.avg_pool2d(np.zeros(shape), 3, 2, 1, **kw).shape
            g = rng.standard_normal(out_shape).astype(dtype)
            got = check_avg_pool(g, shape, 3, 2, 1, dtype, f"shape {shape}", **kw)
            assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_memory_layouts_and_threads_bit_identical(layout, dtype, rng):
    g, x = pool_problem(rng, (4, 16, 33, 30), 3, 2, 1, layout, True, dtype, ties=False)
    kw = dict(layout=layout, ceil_mode=True, count_include_pad=False)
    base = fastconv.avg_pool2d_backward(g, x.shape, 3, 2, 1, num_threads=1, **kw)
    check_avg_pool(g, x.shape, 3, 2, 1, dtype, **kw)
    for name, variant in memory_variants(g):
        got = fastconv.avg_pool2d_backward(variant, x.shape, 3, 2, 1, num_threads=2, **kw)
        assert_bit_identical(got, base, f"grad_out variant {name}, 2 threads")
    # input_shape as a list or numpy ints
    got = fastconv.avg_pool2d_backward(g, [np.int64(s) for s in x.shape], 3, 2, 1, **kw)
    assert_bit_identical(got, base, "input_shape as a list")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_nonfinite_grad_out_like_reference(layout, rng):
    g, x = pool_problem(rng, (1, 2, 7, 7), 3, 2, 1, layout, False, np.float64, ties=False)
    g.flat[0], g.flat[5] = NAN, INF
    got = check_avg_pool(g, x.shape, 3, 2, 1, np.float64, layout=layout)
    want = reference.avg_pool2d_backward(g, x.shape, 3, 2, 1, layout=layout)
    assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any() and np.isinf(got).any()


# ---- hypothesis ----------------------------------------------------------------------------


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    pads = ((draw(st.integers(0, kh // 2)), draw(st.integers(0, kh // 2))),
            (draw(st.integers(0, kw // 2)), draw(st.integers(0, kw // 2))))
    h = draw(st.integers(max(1, kh - sum(pads[0])), kh + 6))
    w = draw(st.integers(max(1, kw - sum(pads[1])), kw + 6))
    return dict(
        shape=(draw(st.integers(0, 2)), draw(st.integers(1, 3)), h, w), kernel_size=(kh, kw),
        stride=stride, padding=pads, ceil_mode=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.sampled_from([None, 1, 5])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(pool_cases())
def test_pool_property_matches_reference(case):
    rng = np.random.default_rng(case["seed"])
    geometry = (case["kernel_size"], case["stride"], case["padding"])
    g, x = pool_problem(rng, case["shape"], *geometry, case["layout"], case["ceil_mode"],
                        case["dtype"])
    kw = dict(layout=case["layout"], ceil_mode=case["ceil_mode"])
    check_max_pool(g, x, *geometry, case["dtype"], **kw)
    check_avg_pool(g, x.shape, *geometry, case["dtype"], count_include_pad=case[
        "count_include_pad"], divisor_override=case["divisor_override"], **kw)


# ============================================================================================
# relu_backward
# ============================================================================================

RELU_SHAPES = [(), (1,), (7,), (0,), (3, 5), (0, 4), (2, 3, 1, 4, 5), (1001,), (3, 17, 19)]


def relu_problem(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    if x.size >= 8:
        x.flat[:8] = [NAN, INF, -INF, 0.0, -0.0, 1e-30, -1e-30, 1.0]
        g.flat[7] = NAN   # a NaN gradient where x > 0 passes through
    return g, x


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", RELU_SHAPES, ids=str)
def test_relu_matches_reference(shape, dtype, rng):
    g, x = relu_problem(rng, shape, dtype)
    got = fastconv.relu_backward(g, x)
    assert_exact(got, reference.relu_backward(g, x), dtype)
    assert not np.shares_memory(got, g) and not np.shares_memory(got, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_relu_out_forms(dtype, rng):
    g, x = relu_problem(rng, (5, 7), dtype)
    want = reference.relu_backward(g, x)
    out = np.empty_like(g)
    assert fastconv.relu_backward(g, x, out=out) is out
    assert_exact(out, want, dtype)
    g2 = g.copy()
    assert fastconv.relu_backward(g2, x, out=g2) is g2          # in place on grad_out
    assert_exact(g2, want, dtype)
    x2 = x.copy()
    assert fastconv.relu_backward(g, x2, out=x2) is x2          # in place on x
    assert_exact(x2, want, dtype)
    big = np.zeros((10, 14), dtype=dtype)
    strided = big[::2, ::2]                                     # non-contiguous out
    assert fastconv.relu_backward(g, x, out=strided) is strided
    assert_array_equal(strided, want)
    assert not big[1::2].any() and not big[:, 1::2].any()       # nothing written in between
    f_out = np.empty((5, 7), dtype=dtype, order="F")
    assert fastconv.relu_backward(g, x, out=f_out) is f_out
    assert_array_equal(f_out, want)
    rev = g[::-1, ::-1].copy()[::-1, ::-1]                     # negative strides, grad_out alias
    assert fastconv.relu_backward(rev, x, out=rev) is rev
    assert_array_equal(rev, want)
    g3 = g.copy()
    view = g3.view()                                            # same memory, another object
    assert fastconv.relu_backward(g3, x, out=view) is view
    assert_array_equal(g3, want)
    x3 = x.copy()
    flipped = x3[::-1, ::-1]                                    # out overlaps x, reversed
    assert fastconv.relu_backward(g, x3, out=flipped) is flipped
    assert_array_equal(flipped, want)
    assert_array_equal(x3, want[::-1, ::-1])


def test_relu_out_overlapping_x_shifted():
    # out is x shifted by one, grad_out overlaps both: the result must be computed from the
    # inputs as they were before the call, as the reference does on copies.
    buf = np.arange(1.0, 9.0)
    want = reference.relu_backward(buf[:-1].copy(), buf[1:].copy())
    got = fastconv.relu_backward(buf[:-1], buf[1:], out=buf[1:])
    assert np.shares_memory(got, buf) and got.base is buf
    assert_exact(buf[1:], want, np.float64)
    assert buf[0] == 1.0


S = np.s_
# (grad_out, x, out) as slices of one buffer, or None for a separate array of the same length.
RELU_OVERLAPS = {
    "grad_out-behind-out": (S[:-1], None, S[1:]),
    "grad_out-ahead-of-out": (S[1:], None, S[:-1]),
    "x-behind-out": (None, S[:-1], S[1:]),
    "x-ahead-of-out": (None, S[1:], S[:-1]),
    "grad_out-behind-x-is-out": (S[:-1], S[1:], S[1:]),
    "all-three-shifted": (S[:-2], S[1:-1], S[2:]),
    "all-three-shifted-backwards": (S[2:], S[1:-1], S[:-2]),
    "grad_out-reversed-is-out": (S[::-1], None, S[:]),
    "x-reversed-is-out": (None, S[::-1], S[:]),
    "strided-interleaved": (S[0:-1:2], S[1::2], S[1::2]),
}


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("n", [9, 40001])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(RELU_OVERLAPS))
def test_relu_out_overlapping_inputs(case, dtype, n, num_threads):
    """``out`` overlapping grad_out and/or x at a shift: equal to the reference on copies, and
    nothing outside ``out`` written."""
    rng = np.random.default_rng(n)
    buf = rng.integers(-3, 4, size=n).astype(dtype)      # zeros and both signs
    buf[buf == 1] = NAN                                   # NaN x passes grad_out, like torch
    slices = RELU_OVERLAPS[case]
    length = len(buf[slices[2]])
    g, x, out = (buf[s] if s is not None else rng.standard_normal(length).astype(dtype)
                 for s in slices)
    want = reference.relu_backward(g.copy(), x.copy())
    expected_buf = buf.copy()
    expected_buf[slices[2]] = want
    got = fastconv.relu_backward(g, x, out=out, num_threads=num_threads)
    assert got is out
    assert_array_equal(out, want, err_msg=case)
    assert_array_equal(buf, expected_buf, err_msg=f"{case}: outside out")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_relu_0d_and_out(dtype):
    g, x = np.array(3.0, dtype=dtype), np.array(2.0, dtype=dtype)
    got = fastconv.relu_backward(g, x)
    assert got.shape == () and got.dtype == np.dtype(dtype) and got == 3.0
    out = np.empty((), dtype=dtype)
    assert fastconv.relu_backward(g, -x, out=out) is out and out == 0.0
    assert fastconv.relu_backward(3.0, 2.0) == 3.0


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_relu_memory_layouts_and_threads(dtype, rng):
    g, x = relu_problem(rng, (5, 160, 171), dtype)   # large enough for two threads
    base = fastconv.relu_backward(g, x, num_threads=1)
    assert_exact(base, reference.relu_backward(g, x), dtype)
    for arg, original in (("grad_out", g), ("x", x)):
        for name, variant in memory_variants(original):
            args = {"grad_out": g, "x": x, arg: variant}
            got = fastconv.relu_backward(args["grad_out"], args["x"], num_threads=2)
            assert_bit_identical(got, base, f"{arg} variant {name}")


@pytest.mark.parametrize(
    "g_dtype, x_dtype, expected",
    [(np.float32, np.float32, np.float32), (np.float64, np.float32, np.float64),
     (np.float32, np.float64, np.float64), (np.float16, np.float16, np.float32),
     (np.int32, np.bool_, np.float64)],
    ids=lambda v: np.dtype(v).name,
)
def test_backward_dtype_policy_pool_and_relu(g_dtype, x_dtype, expected, rng):
    x = (rng.standard_normal((2, 3, 6, 6)) * 4).astype(x_dtype)
    g = (rng.standard_normal((2, 3, 3, 3)) * 4).astype(g_dtype)
    got = fastconv.max_pool2d_backward(g, x, 3, 2, 1)
    assert_exact(got, reference.max_pool2d_backward(g, x, 3, 2, 1), expected)
    got = fastconv.avg_pool2d_backward(g, x.shape, 3, 2, 1)
    assert_close(got, reference.avg_pool2d_backward(g, x.shape, 3, 2, 1), reduction_length=9)
    gr = (rng.standard_normal(x.shape) * 4).astype(g_dtype)
    assert_exact(fastconv.relu_backward(gr, x), reference.relu_backward(gr, x), expected)


# ============================================================================================
# errors: the fast ops refuse what the reference refuses, with the same message
# ============================================================================================

X4, W4 = np.ones((1, 2, 6, 6)), np.ones((4, 2, 3, 3))
G_CONV, G_POOL = np.ones((1, 4, 4, 4)), np.ones((1, 2, 3, 3))

ERROR_CASES = [
    # conv2d_backward
    ("conv2d_backward", (np.ones((1, 4, 5, 5)), X4, W4), {}, ValueError,
     "grad_out must have shape (1, 4, 4, 4)"),
    ("conv2d_backward", (np.ones((4, 4, 4)), X4, W4), {}, ValueError,
     "grad_out must have shape (1, 4, 4, 4)"),
    ("conv2d_backward", (np.ones((1, 4, 4, 2)), to_nhwc(X4), oihw_to_hwio(W4)),
     dict(layout="NHWC"), ValueError, "grad_out must have shape (1, 4, 4, 4)"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(needs=("input", "grad")), ValueError, "needs"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(needs=7), TypeError, "needs"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(needs=None), TypeError, "needs"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(algorithm="winograd"), ValueError, "algorithm"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(num_threads=0), ValueError, "num_threads"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(num_threads=1.5), TypeError, "num_threads"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(layout="CHWN"), ValueError, "layout"),
    ("conv2d_backward", (G_CONV.astype(complex), X4, W4), {}, TypeError, "grad_out has dtype"),
    ("conv2d_backward", (None, X4, W4), {}, TypeError, "grad_out must be an array"),
    ("conv2d_backward", (G_CONV, X4, np.ones((4, 3, 3, 3))), {}, ValueError,
     "weight expects 3 input channels"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(groups=2), ValueError, "input channels"),
    ("conv2d_backward", (G_CONV, X4, W4), dict(stride=0), ValueError, "stride"),
    ("conv2d_backward", (G_CONV, np.ones((1, 2, 2, 2)), W4), {}, ValueError, "larger than"),
    # max_pool2d_backward
    ("max_pool2d_backward", (np.ones((1, 2, 2, 2)), X4, 2), {}, ValueError,
     "grad_out must have shape (1, 2, 3, 3)"),
    ("max_pool2d_backward", (G_POOL, X4, 2), dict(indices=np.zeros((1, 2, 3, 3))), TypeError,
     "indices must be an integer array"),
    ("max_pool2d_backward", (G_POOL, X4, 2), dict(indices=np.zeros((1, 2, 3), np.int64)),
     ValueError, "indices must have grad_out's shape"),
    ("max_pool2d_backward", (G_POOL, X4, 2), dict(indices=np.full((1, 2, 3, 3), -1)),
     ValueError, "indices must lie in"),
    ("max_pool2d_backward", (G_POOL, X4, 2), dict(indices=np.full((1, 2, 3, 3), 36)),
     ValueError, "indices must lie in"),
    ("max_pool2d_backward", (G_POOL, X4, 2), dict(padding=2), ValueError, "at most half"),
    ("max_pool2d_backward", (G_POOL, X4.astype(complex), 2), {}, TypeError, "x has dtype"),
    ("max_pool2d_backward", (G_POOL, X4, 2), dict(num_threads=-1), ValueError, "num_threads"),
    # avg_pool2d_backward
    ("avg_pool2d_backward", (np.ones((1, 2, 2, 2)), X4.shape, 2), {}, ValueError,
     "grad_out must have shape (1, 2, 3, 3)"),
    ("avg_pool2d_backward", (G_POOL, 6, 2), {}, TypeError, "input_shape"),
    ("avg_pool2d_backward", (G_POOL, (1, 2, 6, 6, 1), 2), {}, ValueError, "input_shape"),
    ("avg_pool2d_backward", (G_POOL, (1, -2, 6, 6), 2), {}, ValueError, "input_shape"),
    ("avg_pool2d_backward", (G_POOL, (1, 2, 6.0, 6), 2), {}, TypeError, "input_shape"),
    ("avg_pool2d_backward", (G_POOL, X4.shape, 2), dict(divisor_override=0), ValueError,
     "divisor_override"),
    ("avg_pool2d_backward", (G_POOL, X4.shape, 2), dict(num_threads="2"), TypeError,
     "num_threads"),
    # relu_backward
    ("relu_backward", (np.ones((2, 3)), np.ones((3, 2))), {}, ValueError,
     "grad_out and x must have the same shape"),
    ("relu_backward", (np.ones((2, 3)), np.ones((2, 3))), dict(out=np.empty((3, 2))),
     ValueError, "out must have shape (2, 3)"),
    ("relu_backward", (np.ones((2, 3)), np.ones((2, 3))),
     dict(out=np.empty((2, 3), np.float32)), TypeError, "out must have dtype float64"),
    ("relu_backward", (np.ones((2, 3)), np.ones((2, 3))), dict(out=[0.0] * 6), TypeError,
     "out must be a numpy.ndarray"),
    ("relu_backward", (np.ones(3, complex), np.ones(3)), {}, TypeError, "grad_out has dtype"),
    ("relu_backward", (np.ones(3), np.ones(3)), dict(num_threads=0), ValueError, "num_threads"),
]


@pytest.mark.parametrize("func, args, kwargs, exc, fragment", ERROR_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_errors_match_reference(func, args, kwargs, exc, fragment):
    with pytest.raises(exc) as want:
        getattr(reference, func)(*args, **kwargs)
    assert str(want.value).startswith(f"{func}: "), str(want.value)
    assert fragment in str(want.value)
    with pytest.raises(exc) as got:
        getattr(fastconv, func)(*args, **kwargs)
    assert str(got.value) == str(want.value)


def test_failed_calls_leave_out_and_inputs_alone(rng):
    # relu_backward: a shape error is raised before anything is written to out
    g, x = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    out = np.full((4, 5), 7.0)
    with pytest.raises(ValueError, match="relu_backward: grad_out and x"):
        fastconv.relu_backward(g, x[:, :4], out=out)
    with pytest.raises(TypeError, match="relu_backward: out must have dtype"):
        fastconv.relu_backward(g, x, out=np.empty((4, 5), np.float32))
    assert (out == 7.0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_ops_do_not_modify_inputs(layout, rng):
    g, x, w = make_problem(CASES[5], layout, np.float64, seed=1)
    copies = [a.copy() for a in (g, x, w)]
    for algorithm in ALGORITHMS:
        fastconv.conv2d_backward(g, x, w, layout=layout, algorithm=algorithm,
                                 **CASES[5].kwargs())
    for a, c in zip((g, x, w), copies):
        assert_array_equal(a, c)
    gp, xp = pool_problem(rng, (2, 3, 7, 7), 3, 2, 1, layout, False, np.float64)
    copies = [gp.copy(), xp.copy()]
    fastconv.max_pool2d_backward(gp, xp, 3, 2, 1, layout=layout)
    fastconv.avg_pool2d_backward(gp, xp.shape, 3, 2, 1, layout=layout)
    fastconv.relu_backward(xp, xp)
    assert_array_equal(gp, copies[0])
    assert_array_equal(xp, copies[1])
