"""The backward passes of fastconv.reference checked against independent oracles.

The fast backward kernels are tested against ``fastconv.reference.*_backward``
(tests/test_backward.py); this module is what earns the reference that trust. No expected value
here comes from a reference backward function itself. Expected values come from:

1. examples worked out by hand and typed in literally,
2. central-difference numerical gradients (float64) of the scalar loss
   ``sum(grad_out * forward(...))`` through the *forward* reference ops, which
   tests/test_reference.py checks against SciPy, hand examples and PyTorch,
3. the adjoint identity ``<conv2d(x, w), g> == <x, grad_x> == <w, grad_w>`` (conv and average
   pooling are linear in each argument),
4. PyTorch autograd (``torch.nn.functional``), when installed,
5. hypothesis-generated shapes checked for the invariants above,

and checks that every bad argument is refused with a message naming it, plus the dtype rules.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from fastconv import reference as ref
from _helpers import (
    ConvCase,
    DTYPES,
    HAVE_TORCH,
    LAYOUTS,
    TORCH_REASON,
    assert_close,
    oihw_to_hwio,
    to_nchw,
    to_nhwc,
)

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)

NAN = np.nan
INF = np.inf

# Central differences of piecewise-linear functions: exact up to rounding when no kink lies
# within EPS of the point, so a tight tolerance is fair.
EPS = 1e-3
NUM_RTOL, NUM_ATOL = 1e-7, 1e-9


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


def _exact(actual, expected, dtype=np.float64):
    """Exact comparison that also checks dtype and shape (hand examples are exact in binary)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=dtype)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert_array_equal(actual, expected)


def numerical_gradient(loss, a, eps=EPS):
    """Central-difference gradient of the scalar ``loss(a)`` with respect to each entry of ``a``."""
    a = np.array(a, dtype=np.float64)  # a private C-contiguous copy we may perturb
    grad = np.empty_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        up = loss(a)
        flat[i] = orig - eps
        down = loss(a)
        flat[i] = orig
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_numerical(actual, expected, what=""):
    assert actual.dtype == np.float64, what
    assert actual.shape == expected.shape, (actual.shape, expected.shape, what)
    assert_allclose(actual, expected, rtol=NUM_RTOL, atol=NUM_ATOL, err_msg=what)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _tf_same(in_size, k, s, d=1):
    """TensorFlow 'SAME' padding along one axis, written out independently of fastconv."""
    out = -(-in_size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - in_size, 0)
    return total // 2, total - total // 2


def explicit_pads(padding, hw, kernel, stride=1, dilation=1):
    """Any padding form as ((top, bottom), (left, right)), computed here, not by fastconv."""
    (sh, sw), (dh, dw), (kh, kw) = _pair(stride), _pair(dilation), _pair(kernel)
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return (0, 0), (0, 0)
        return _tf_same(hw[0], kh, sh, dh), _tf_same(hw[1], kw, sw, dw)
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0], padding[0]), (padding[1], padding[1])
    return tuple(tuple(p) for p in padding)


def inner(a, b) -> float:
    """<a, b> in float64."""
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


# ============================================================================================
# 1. hand-computed examples
# ============================================================================================

# ---- conv2d_backward -----------------------------------------------------------------------


def test_conv_hand_docstring_example():
    # y[i, j] = sum of the 2x2 window at (i, j); every window gets gradient 1, so grad_x counts
    # how many windows cover a cell, grad_w[kh, kw] sums x over the cells tap (kh, kw) reads.
    x = np.arange(9.0).reshape(3, 3)
    gx, gw, gb = ref.conv2d_backward(np.ones((2, 2)), x, np.ones((2, 2)))
    _exact(gx, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    _exact(gw, [[0 + 1 + 3 + 4, 1 + 2 + 4 + 5], [3 + 4 + 6 + 7, 4 + 5 + 7 + 8]])
    _exact(gb, [4])


def test_conv_hand_two_impulses():
    # grad_out = +1 at (0, 0) and -1 at (1, 1): grad_x is w placed at (0, 0) minus w placed at
    # (1, 1); grad_w[kh, kw] = x[kh, kw] - x[1 + kh, 1 + kw].
    x = np.arange(9.0).reshape(3, 3)
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = np.array([[1.0, 0.0], [0.0, -1.0]])
    gx, gw, gb = ref.conv2d_backward(g, x, w)
    _exact(gx, [[1, 2, 0], [3, 4 - 1, -2], [0, -3, -4]])
    _exact(gw, [[0 - 4, 1 - 5], [3 - 7, 4 - 8]])
    _exact(gb, [0])


def test_conv_hand_stride2_padding1():
    # 3x3 input, 2x2 kernel, stride 2, padding 1: windows cover unpadded rows/cols {-1, 0} and
    # {1, 2}; they do not overlap, so input cell i lies in window (i + 1) // 2 at tap (i + 1) % 2
    # and grad_x[i, j] = g[oh(i), ow(j)] * w[kh(i), kw(j)].
    x = np.arange(1.0, 10.0).reshape(3, 3)
    w = np.array([[1.0, 10.0], [100.0, 1000.0]])
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    gx, gw, gb = ref.conv2d_backward(g, x, w, stride=2, padding=1)
    _exact(gx, [[1 * 1000, 2 * 100, 2 * 1000],
                [3 * 10, 4 * 1, 4 * 10],
                [3 * 1000, 4 * 100, 4 * 1000]])
    # grad_w[kh, kw] = sum_{oh, ow} g[oh, ow] * x[2 oh + kh - 1, 2 ow + kw - 1] (0 outside)
    _exact(gw, [[4 * 5, 3 * 4 + 4 * 6],
                [2 * 2 + 4 * 8, 1 * 1 + 2 * 3 + 3 * 7 + 4 * 9]])
    _exact(gb, [10])


def test_conv_hand_dilation():
    # y[j] = w0 * x[j] + w1 * x[j + 3] for j = 0, 1 (a 1x5 input, 1x2 kernel, dilation 3).
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    w = np.array([[2.0, 3.0]])
    g = np.array([[1.0, 10.0]])
    gx, gw, gb = ref.conv2d_backward(g, x, w, dilation=3)
    _exact(gx, [[1 * 2, 10 * 2, 0, 1 * 3, 10 * 3]])
    _exact(gw, [[1 + 10 * 2, 4 + 10 * 5]])
    _exact(gb, [11])


# (1, 2, 2, 2) input, 1x1 kernels: grad_x[c] = sum_o g[o] * w[o, c], grad_w[o, c] = <g[o], x[c]>.
X_2CH = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


def test_conv_hand_multichannel_1x1():
    w = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.0]]).reshape(3, 2, 1, 1)
    g = np.array([[[[1.0, 0.0], [0.0, 0.0]],
                   [[0.0, 1.0], [0.0, 0.0]],
                   [[1.0, 1.0], [1.0, 1.0]]]])
    want_gx = [[[[1 + 3, 3], [3, 3]], [[2, -1], [0, 0]]]]
    want_gw = np.array([[1, 0], [2, 1], [10, 2]]).reshape(3, 2, 1, 1)
    gx, gw, gb = ref.conv2d_backward(g, X_2CH, w)
    _exact(gx, want_gx)
    _exact(gw, want_gw)
    _exact(gb, [1, 1, 4])
    # the same numbers in NHWC / HWIO
    gx, gw, gb = ref.conv2d_backward(to_nhwc(g), to_nhwc(X_2CH), oihw_to_hwio(w), layout="NHWC")
    _exact(gx, to_nhwc(np.array(want_gx, dtype=np.float64)))
    _exact(gw, oihw_to_hwio(want_gw.astype(np.float64)))
    _exact(gb, [1, 1, 4])


def test_conv_hand_depthwise_1x1():
    # groups=2: each channel sees only its own weight.
    w = np.array([2.0, -3.0]).reshape(2, 1, 1, 1)
    g = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    gx, gw, gb = ref.conv2d_backward(g, X_2CH, w, groups=2)
    _exact(gx, [[[[2, 4], [6, 8]], [[0, -3], [0, -3]]]])
    _exact(gw, np.array([1 + 4 + 9 + 16, 1]).reshape(2, 1, 1, 1))
    _exact(gb, [10, 2])


# ---- max_pool2d_backward -------------------------------------------------------------------


def test_max_hand_docstring_example():
    # Overlapping 2x2 windows, stride 1: maxima 4 (twice, at (1, 0)), 5 (twice, at (1, 2)).
    x = np.array([[1.0, 3.0, 2.0], [4.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    g = np.array([[10.0, 20.0], [30.0, 40.0]])
    _exact(ref.max_pool2d_backward(g, x, 2, stride=1),
           [[0, 0, 0], [10 + 30, 0, 20 + 40], [0, 0, 0]])


def test_max_hand_ties_go_to_first_maximum():
    # All cells equal: each window's first cell (row-major) is its maximum.
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    _exact(ref.max_pool2d_backward(g, np.ones((3, 3)), 2, stride=1),
           [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    # Two equal maxima in one window, the later one first in column order: row-major wins.
    x = np.array([[0.0, 7.0], [7.0, 0.0]])
    _exact(ref.max_pool2d_backward([[5.0]], x, 2), [[0, 5], [0, 0]])


def test_max_hand_padding_and_neg_inf():
    # 2x2 input of -inf, kernel 2, stride 2, padding 1: each window holds exactly one real cell
    # (the rest is -inf padding), and the gradient goes to that real cell, never to padding.
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    _exact(ref.max_pool2d_backward(g, np.full((2, 2), -INF), 2, padding=1), g)
    # One window, all -inf: the first cell.
    _exact(ref.max_pool2d_backward([[6.0]], np.full((2, 2), -INF), 2), [[6, 0], [0, 0]])


def test_max_hand_nan_window():
    x = np.array([[1.0, NAN], [3.0, 2.0]])
    _exact(ref.max_pool2d_backward([[5.0]], x, 2), [[0, 5], [0, 0]])


def test_max_hand_ceil_mode():
    # W = 3, kernel 2, stride 2, ceil_mode: a second window over column 2 only.
    x = np.array([[5.0, 1.0, 2.0], [0.0, 4.0, 9.0]])
    _exact(ref.max_pool2d_backward([[1.0, 2.0]], x, 2, ceil_mode=True), [[1, 0, 0], [0, 0, 2]])
    _exact(ref.max_pool2d_backward([[1.0]], x, 2), [[1, 0, 0], [0, 0, 0]])


def test_max_hand_given_indices_are_followed():
    # With indices=, the gradient goes where the indices say (here: not the maximum).
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    _exact(ref.max_pool2d_backward([[5.0]], x, 2, indices=[[2]]), [[0, 0], [5, 0]])


# ---- avg_pool2d_backward -------------------------------------------------------------------

# (2, 3) input, kernel 2, stride 2, padding 1: windows cover unpadded rows {-1, 0}, {1, 2} and
# columns {-1, 0}, {1, 2}; row 2 is bottom padding. Every cell lies in exactly one window.
AVG_G = np.array([[4.0, 8.0], [12.0, 16.0]])


def test_avg_hand_docstring_example():
    _exact(ref.avg_pool2d_backward(np.array([[4.0, 8.0]]), (2, 4), 2),
           [[1, 1, 2, 2], [1, 1, 2, 2]])


def test_avg_hand_count_include_pad():
    # every window has 4 cells inside the padded input
    _exact(ref.avg_pool2d_backward(AVG_G, (2, 3), 2, padding=1),
           [[4 / 4, 8 / 4, 8 / 4], [12 / 4, 16 / 4, 16 / 4]])


def test_avg_hand_exclude_pad():
    # real cells per window: (0, 0) -> 1, (0, 1) -> 2, (1, 0) -> 1, (1, 1) -> 2
    _exact(ref.avg_pool2d_backward(AVG_G, (2, 3), 2, padding=1, count_include_pad=False),
           [[4 / 1, 8 / 2, 8 / 2], [12 / 1, 16 / 2, 16 / 2]])


def test_avg_hand_divisor_override():
    _exact(ref.avg_pool2d_backward(AVG_G, (2, 3), 2, padding=1, divisor_override=8),
           [[4 / 8, 8 / 8, 8 / 8], [12 / 8, 16 / 8, 16 / 8]])


def test_avg_hand_ceil_mode_overhang_not_counted():
    # W = 5, kernel (1, 2), stride 2, ceil_mode: the last window is column 4 plus one overhang
    # cell, which does not count even with count_include_pad=True.
    _exact(ref.avg_pool2d_backward([[2.0, 4.0, 6.0]], (1, 5), (1, 2), ceil_mode=True),
           [[1, 1, 2, 2, 6]])


def test_avg_hand_overlapping_windows_accumulate():
    # 3x3 input, kernel 2, stride 1: a cell gets 1/4 of every window covering it.
    g = np.array([[4.0, 8.0], [12.0, 16.0]])
    _exact(ref.avg_pool2d_backward(g, (3, 3), 2, stride=1),
           [[1, 1 + 2, 2], [1 + 3, 1 + 2 + 3 + 4, 2 + 4], [3, 3 + 4, 4]])


# ---- relu_backward -------------------------------------------------------------------------


def test_relu_hand_special_values():
    x = np.array([-1.0, 0.0, 2.0, NAN, -0.0, INF, -INF, 1e-300])
    g = np.arange(1.0, 9.0)
    # 0 where x <= 0 (also -0.0, -inf), grad_out elsewhere (also NaN and inf)
    _exact(ref.relu_backward(g, x), [0, 0, 3, 4, 0, 6, 0, 8])


def test_relu_hand_grad_out_specials_pass_through():
    x = np.array([1.0, 1.0, 1.0, -1.0, -1.0])
    g = np.array([NAN, INF, -INF, NAN, INF])
    # where x <= 0 the result is exactly 0 even for NaN/inf grad_out (a select, not a product)
    _exact(ref.relu_backward(g, x), [NAN, INF, -INF, 0, 0])


def test_relu_hand_0d():
    r = ref.relu_backward(np.float64(3.0), np.float64(2.0))
    assert r.shape == () and r.dtype == np.float64 and r == 3.0
    assert ref.relu_backward(3.0, -2.0) == 0.0


# ============================================================================================
# 2. central-difference numerical gradients
# ============================================================================================

# ---- conv2d --------------------------------------------------------------------------------


CONV_CASES = [
    ConvCase("k3", 2, 3, 6, 6, 4, (3, 3)),
    ConvCase("k3-s2-p1", 1, 3, 7, 8, 4, (3, 3), stride=2, padding=1),
    ConvCase("pair-stride-padding-dilation", 2, 2, 7, 8, 3, (3, 2), stride=(1, 2),
             padding=(2, 1), dilation=(2, 1)),
    ConvCase("asymmetric-padding", 1, 2, 6, 7, 3, (3, 3), padding=((1, 2), (0, 3))),
    ConvCase("valid", 1, 2, 6, 6, 2, (2, 3), padding="valid"),
    ConvCase("same-s1-even-kernel", 1, 2, 7, 6, 3, (4, 2), padding="same"),
    ConvCase("same-s2-d2", 1, 2, 9, 10, 3, (3, 3), stride=2, padding="same", dilation=2),
    ConvCase("SAME-s3-nonsquare", 1, 2, 7, 11, 2, (2, 3), stride=3, padding="SAME"),
    ConvCase("dilation2-p2", 1, 2, 8, 8, 3, (3, 3), padding=2, dilation=2),
    ConvCase("groups2", 2, 4, 6, 6, 6, (3, 3), padding=1, groups=2),
    ConvCase("depthwise", 1, 3, 6, 6, 3, (3, 3), padding=1, groups=3),
    ConvCase("depthwise-mult2-s2", 1, 3, 7, 6, 6, (3, 3), stride=2, padding=1, groups=3),
    ConvCase("1x1", 2, 4, 5, 5, 3, (1, 1)),
    ConvCase("1x1-s2-p1", 1, 3, 6, 5, 2, (1, 1), stride=2, padding=1),
    ConvCase("kernel-equals-input", 2, 2, 4, 5, 3, (4, 5)),
    ConvCase("stride>kernel", 1, 2, 9, 10, 3, (2, 2), stride=(4, 3), padding=1),
]


def conv_problem(case: ConvCase, layout: str, dtype=np.float64, seed: int = 0):
    """(x, weight, bias, grad_out) for ``case`` in ``layout``; random normal values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.n, case.c_in, case.h, case.w)).astype(dtype)
    w = rng.standard_normal((case.c_out, case.c_in // case.groups) + case.kernel).astype(dtype)
    b = rng.standard_normal(case.c_out).astype(dtype)
    if layout == "NHWC":
        x, w = to_nhwc(x), oihw_to_hwio(w)
    out_shape = ref.conv2d(x, w, layout=layout, **case.kwargs()).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    return x, w, b, g


def conv_numerical(g, x, w, b, **kw):
    """Numerical (grad_x, grad_w, grad_b) of sum(g * conv2d(x, w, b))."""
    gx = numerical_gradient(lambda a: inner(g, ref.conv2d(a, w, b, **kw)), x)
    gw = numerical_gradient(lambda a: inner(g, ref.conv2d(x, a, b, **kw)), w)
    gb = numerical_gradient(lambda a: inner(g, ref.conv2d(x, w, a, **kw)), b)
    return gx, gw, gb


def check_conv_numerical(g, x, w, b, **kw):
    got = ref.conv2d_backward(g, x, w, **kw)
    want = conv_numerical(g, x, w, b, **kw)
    for name, a, e in zip(("grad_x", "grad_w", "grad_b"), got, want):
        assert_numerical(a, e, f"{name} {kw}")
    return got


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv_numerical(case, layout):
    x, w, b, g = conv_problem(case, layout, seed=len(case.name))
    gx, gw, gb = check_conv_numerical(g, x, w, b, layout=layout, **case.kwargs())
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (case.c_out,)
    assert gx.flags.c_contiguous and gw.flags.c_contiguous


def test_conv_numerical_stride_greater_than_kernel_leaves_gaps():
    # cells no window reads get exactly zero gradient (not just small)
    case = CONV_CASES[-1]
    x, w, b, g = conv_problem(case, "NCHW", seed=1)
    gx = ref.conv2d_backward(g, x, w, **case.kwargs())[0]
    # stride (4, 3), kernel 2, padding 1: windows read rows {0}, {3, 4}, {7, 8} and columns
    # {0}, {2, 3}, {5, 6}, {8, 9}; rows 1, 2, 5, 6 and columns 1, 4, 7 are never read
    assert (gx[:, :, [1, 2, 5, 6], :] == 0).all() and (gx[:, :, :, [1, 4, 7]] == 0).all()
    assert (gx[:, :, [0, 3, 4], :][:, :, :, [0, 2, 3]] != 0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "case",
    [ConvCase("unbatched-s2-p1", 1, 3, 7, 6, 4, (3, 2), stride=(2, 1), padding=1),
     ConvCase("unbatched-depthwise-same", 1, 2, 6, 7, 4, (3, 3), stride=2, padding="same",
              dilation=(1, 2), groups=2)],
    ids=lambda c: c.name,
)
def test_conv_numerical_unbatched_3d(case, layout):
    x, w, b, g = conv_problem(case, layout, seed=3)
    gx, gw, gb = check_conv_numerical(g[0], x[0], w, b, layout=layout, **case.kwargs())
    assert gx.shape == x.shape[1:]
    # and equal to the batched call
    bx, bw, bb = ref.conv2d_backward(g, x, w, layout=layout, **case.kwargs())
    assert_allclose(gx, bx[0], rtol=1e-14)
    assert_allclose(gw, bw, rtol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(stride=2, padding=1), dict(padding=((1, 0), (2, 1)), dilation=(1, 2)),
     dict(stride=2, padding="same", dilation=2)],
    ids=["valid", "s2-p1", "asymmetric-dilated", "same-s2-d2"],
)
def test_conv_numerical_2d(kw, layout):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((7, 8)), rng.standard_normal((3, 2))
    g = rng.standard_normal(ref.conv2d(x, w, layout=layout, **kw).shape)
    gx, gw, gb = check_conv_numerical(g, x, w, np.zeros(1), layout=layout, **kw)
    assert gx.shape == (7, 8) and gw.shape == (3, 2) and gb.shape == (1,)


# ---- pooling -------------------------------------------------------------------------------

# (H, W, kernel_size, stride, padding): overlapping and gapped windows, every padding form,
# padding up to half the kernel. Each is run with ceil_mode False and True.
POOL_GRID = [
    pytest.param(6, 7, 2, None, 0, id="k2-default-stride"),
    pytest.param(7, 7, 3, 1, 1, id="k3-s1-p1"),
    pytest.param(7, 8, 3, 2, 1, id="k3-s2-p1"),
    pytest.param(8, 9, (2, 3), (2, 1), (1, 1), id="k2x3-pairs"),
    pytest.param(9, 10, 2, 3, 1, id="stride>kernel-p1"),
    pytest.param(8, 8, 4, 3, 2, id="k4-p2-half-kernel"),
    pytest.param(7, 8, 3, 2, ((0, 1), (1, 0)), id="asymmetric-padding"),
    pytest.param(6, 7, (3, 2), 2, "same", id="same-s2"),
    pytest.param(7, 8, 3, 2, "valid", id="valid"),
    pytest.param(5, 5, 3, 3, 1, id="ceil-last-window-dropped"),
    pytest.param(5, 6, 2, 2, 0, id="ceil-adds-window"),
    pytest.param(5, 5, 5, 1, 0, id="kernel-equals-input"),
    pytest.param(4, 5, 1, 2, 0, id="k1-s2"),
]
CEIL = pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])


def distinct_values(shape, seed):
    """Values with gaps of at least 0.25 (no ties), so max pooling is smooth at the point."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.25


def pool_out_shape(x, kernel_size, stride, padding, layout, ceil_mode):
    return ref.avg_pool2d(x, kernel_size, stride, padding, layout=layout,
                          ceil_mode=ceil_mode).shape


@CEIL
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", POOL_GRID)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_numerical(layout, H, W, kernel_size, stride, padding, ceil_mode):
    x = distinct_values((2, 2, H, W), seed=H * W)
    x = x if layout == "NCHW" else to_nhwc(x)
    kw = dict(layout=layout, ceil_mode=ceil_mode)
    shape = pool_out_shape(x, kernel_size, stride, padding, layout, ceil_mode)
    g = np.random.default_rng(1).standard_normal(shape)
    got = ref.max_pool2d_backward(g, x, kernel_size, stride, padding, **kw)
    want = numerical_gradient(
        lambda a: inner(g, ref.max_pool2d(a, kernel_size, stride, padding, **kw)), x)
    assert_numerical(got, want, str(kw))


@pytest.mark.parametrize("divisor_override", [None, 3])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@CEIL
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", POOL_GRID)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_numerical(layout, H, W, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, divisor_override):
    rng = np.random.default_rng(H * W)
    x = rng.standard_normal((1, 2, H, W))
    x = x if layout == "NCHW" else to_nhwc(x)
    kw = dict(layout=layout, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
              divisor_override=divisor_override)
    g = rng.standard_normal(ref.avg_pool2d(x, kernel_size, stride, padding, **kw).shape)
    got = ref.avg_pool2d_backward(g, x.shape, kernel_size, stride, padding, **kw)
    want = numerical_gradient(
        lambda a: inner(g, ref.avg_pool2d(a, kernel_size, stride, padding, **kw)), x)
    assert_numerical(got, want, str(kw))


@pytest.mark.parametrize("rank", [3, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pool_numerical_unbatched(layout, rank):
    shape = {3: (6, 7, 2) if layout == "NHWC" else (2, 6, 7), 2: (6, 7)}[rank]
    x = distinct_values(shape, seed=rank)
    kw = dict(layout=layout, ceil_mode=True)
    out_shape = ref.max_pool2d(x, 3, 2, 1, **kw).shape
    assert len(out_shape) == rank
    g = np.random.default_rng(rank).standard_normal(out_shape)
    got = ref.max_pool2d_backward(g, x, 3, 2, 1, **kw)
    want = numerical_gradient(lambda a: inner(g, ref.max_pool2d(a, 3, 2, 1, **kw)), x)
    assert_numerical(got, want, "max")
    kw["count_include_pad"] = False
    got = ref.avg_pool2d_backward(g, shape, 3, 2, 1, **kw)
    want = numerical_gradient(lambda a: inner(g, ref.avg_pool2d(a, 3, 2, 1, **kw)), x)
    assert_numerical(got, want, "avg")


# ---- relu ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 3, 4, 5)], ids=str)
def test_relu_numerical(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 0.1, 0.5, x)  # no kink within EPS
    g = rng.standard_normal(shape)
    want = numerical_gradient(lambda a: inner(g, ref.relu(a)), x)
    assert_numerical(ref.relu_backward(g, x), want)
    # x may equally be ReLU's output: same mask
    assert_array_equal(ref.relu_backward(g, ref.relu(x)), ref.relu_backward(g, x))


# ============================================================================================
# 3. the adjoint identity
# ============================================================================================


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv_adjoint_identity(case, layout):
    """<conv2d(x, w), g> == <x, grad_x> == <w, grad_w>, and grad_b = the sum of g per channel."""
    x, w, _, g = conv_problem(case, layout, seed=99)
    gx, gw, gb = ref.conv2d_backward(g, x, w, layout=layout, **case.kwargs())
    forward = inner(ref.conv2d(x, w, layout=layout, **case.kwargs()), g)
    assert inner(x, gx) == pytest.approx(forward, rel=1e-12, abs=1e-12)
    assert inner(w, gw) == pytest.approx(forward, rel=1e-12, abs=1e-12)
    channel_axis = 1 if layout == "NCHW" else 3
    axes = tuple(a for a in range(4) if a != channel_axis)
    assert_allclose(gb, g.sum(axis=axes), rtol=1e-13)


@st.composite
def conv_geometries(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = ((draw(st.integers(0, 2)), draw(st.integers(0, 2))),
            (draw(st.integers(0, 2)), draw(st.integers(0, 2))))
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    h = draw(st.integers(max(1, eh - sum(pads[0])), eh + 5))
    w = draw(st.integers(max(1, ew - sum(pads[1])), ew + 5))
    padding = draw(st.sampled_from(["explicit", "same", "valid"]))
    if padding == "valid":
        h, w = max(h, eh), max(w, ew)
    return dict(
        n=draw(st.integers(1, 2)), c_in=c_in, c_out=c_out, h=h, w=w, k=(kh, kw), s=(sh, sw),
        d=(dh, dw), padding=pads if padding == "explicit" else padding, groups=groups,
        layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(conv_geometries())
def test_conv_property_shapes_and_adjoint(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c_in"], case["h"], case["w"]))
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"]) + case["k"])
    if case["layout"] == "NHWC":
        x, w = to_nhwc(x), oihw_to_hwio(w)
    kw = dict(stride=case["s"], padding=case["padding"], dilation=case["d"],
              groups=case["groups"], layout=case["layout"])
    y = ref.conv2d(x, w, **kw)
    # the output size from the documented formula, computed here
    pads = explicit_pads(case["padding"], (case["h"], case["w"]), case["k"], case["s"],
                         case["d"])
    oh, ow = ((size + sum(p) - d * (k - 1) - 1) // s + 1
              for size, p, d, k, s in zip((case["h"], case["w"]), pads, case["d"], case["k"],
                                          case["s"]))
    assert (y.shape[2:] if case["layout"] == "NCHW" else y.shape[1:3]) == (oh, ow)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = ref.conv2d_backward(g, x, w, **kw)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (case["c_out"],)
    assert gx.dtype == gw.dtype == gb.dtype == np.float64
    forward = inner(y, g)
    assert inner(x, gx) == pytest.approx(forward, rel=1e-11, abs=1e-11)
    assert inner(w, gw) == pytest.approx(forward, rel=1e-11, abs=1e-11)


@st.composite
def pool_geometries(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    pads = ((draw(st.integers(0, kh // 2)), draw(st.integers(0, kh // 2))),
            (draw(st.integers(0, kw // 2)), draw(st.integers(0, kw // 2))))
    h = draw(st.integers(max(1, kh - sum(pads[0])), kh + 6))
    w = draw(st.integers(max(1, kw - sum(pads[1])), kw + 6))
    return dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), k=(kh, kw), s=stride,
        p=pads, ceil_mode=draw(st.booleans()), layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(pool_geometries(), st.booleans(), st.sampled_from([None, 1, 5]))
def test_avg_property_shapes_and_adjoint(case, count_include_pad, divisor_override):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    x = x if case["layout"] == "NCHW" else to_nhwc(x)
    kw = dict(layout=case["layout"], ceil_mode=case["ceil_mode"],
              count_include_pad=count_include_pad, divisor_override=divisor_override)
    y = ref.avg_pool2d(x, case["k"], case["s"], case["p"], **kw)
    g = rng.standard_normal(y.shape)
    gx = ref.avg_pool2d_backward(g, x.shape, case["k"], case["s"], case["p"], **kw)
    assert gx.shape == x.shape and gx.dtype == np.float64
    assert inner(x, gx) == pytest.approx(inner(y, g), rel=1e-11, abs=1e-11)


@given(pool_geometries())
def test_max_property_gradient_mass_goes_to_argmax(case):
    """Each window passes its whole gradient to the one cell its index names."""
    rng = np.random.default_rng(case["seed"])
    x = rng.integers(-3, 4, size=case["shape"]).astype(np.float64)  # many ties
    layout = case["layout"]
    x = x if layout == "NCHW" else to_nhwc(x)
    kw = dict(layout=layout, ceil_mode=case["ceil_mode"])
    _, idx = ref.max_pool2d(x, case["k"], case["s"], case["p"], return_indices=True, **kw)
    g = rng.integers(1, 5, size=idx.shape).astype(np.float64)  # exact sums
    gx = ref.max_pool2d_backward(g, x, case["k"], case["s"], case["p"], **kw)
    assert gx.shape == x.shape and gx.dtype == np.float64
    # scatter-add written here: NCHW planes, flat index per window
    gx_nchw = gx if layout == "NCHW" else to_nchw(gx)
    idx_nchw = idx if layout == "NCHW" else to_nchw(idx)
    g_nchw = g if layout == "NCHW" else to_nchw(g)
    n, c, h, w = gx_nchw.shape
    want = np.zeros((n, c, h * w))
    for i, j in itertools.product(range(n), range(c)):
        np.add.at(want[i, j], idx_nchw[i, j].ravel(), g_nchw[i, j].ravel())
    assert_array_equal(gx_nchw.reshape(n, c, -1), want)
    assert gx.sum() == g.sum()


# ============================================================================================
# 4. PyTorch autograd
# ============================================================================================


def _t(a, grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.requires_grad_(True) if grad else t


def torch_conv_grads(g, x, w, b, stride, pads, dilation, groups):
    """NCHW (grad_x, grad_w, grad_b) by autograd, with explicit ((t, b), (l, r)) padding."""
    tx, tw, tb = _t(x, True), _t(w, True), _t(b, True)
    (pt, pb), (pl, pr) = pads
    y = F.conv2d(F.pad(tx, (pl, pr, pt, pb)), tw, tb, stride, 0, dilation, groups)
    y.backward(_t(g))
    return tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_torch_conv2d(case, layout, dtype):
    x, w, b, g = conv_problem(case, "NCHW", dtype, seed=7)
    pads = explicit_pads(case.padding, (case.h, case.w), case.kernel, case.stride, case.dilation)
    want = torch_conv_grads(g, x, w, b, case.stride, pads, case.dilation, case.groups)
    if layout == "NHWC":
        got = ref.conv2d_backward(to_nhwc(g), to_nhwc(x), oihw_to_hwio(w), layout="NHWC",
                                  **case.kwargs())
        got = (to_nchw(got[0]), got[1].transpose(3, 2, 0, 1), got[2])
    else:
        got = ref.conv2d_backward(g, x, w, **case.kwargs())
    kh, kw = case.kernel
    out_pixels = g.shape[2] * g.shape[3]
    lengths = (case.c_out // case.groups * kh * kw, case.n * out_pixels, case.n * out_pixels)
    for name, a, e, length in zip(("grad_x", "grad_w", "grad_b"), got, want, lengths):
        assert_close(a, e, dtype=dtype, reduction_length=length, err_msg=f"{name} {layout}")


@needs_torch
def test_torch_conv2d_native_same_and_unbatched(rng):
    # torch's own padding='same' (stride 1) and an unbatched (C, H, W) input
    # (odd dilated extents: torch warns about even ones)
    x, w = rng.standard_normal((3, 7, 6)), rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((4, 7, 6))
    tx, tw = _t(x, True), _t(w, True)
    F.conv2d(tx, tw, padding="same", dilation=(2, 1)).backward(_t(g))
    gx, gw, gb = ref.conv2d_backward(g, x, w, padding="same", dilation=(2, 1))
    assert_close(gx, tx.grad.numpy(), reduction_length=36)
    assert_close(gw, tw.grad.numpy(), reduction_length=42)
    assert_close(gb, g.sum(axis=(1, 2)), reduction_length=42)


def torch_max_grad(g, x, kernel_size, stride, padding, ceil_mode):
    tx = _t(x, True)
    y, idx = F.max_pool2d(tx, kernel_size, stride, padding, ceil_mode=ceil_mode,
                          return_indices=True)
    y.backward(_t(g))
    return tx.grad.numpy(), idx.numpy()


TORCH_POOL_GRID = [p for p in POOL_GRID if not isinstance(p.values[4], (str, tuple))
                   or (isinstance(p.values[4], tuple) and isinstance(p.values[4][0], int))]


@needs_torch
@CEIL
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", TORCH_POOL_GRID)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_max_pool2d_with_ties(layout, H, W, kernel_size, stride, padding, ceil_mode, rng):
    x = rng.integers(-2, 3, size=(2, 3, H, W)).astype(np.float64)  # ties on purpose
    x[0, 0] = 1.0                                                   # a plane of ties
    x[1, 1, : H // 2] = -INF                                        # -inf windows
    shape = ref.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode).shape
    g = rng.integers(1, 9, size=shape).astype(np.float64)           # exact sums
    want, t_idx = torch_max_grad(g, x, kernel_size, stride, padding, ceil_mode)
    xin, gin = (x, g) if layout == "NCHW" else (to_nhwc(x), to_nhwc(g))
    kw = dict(layout=layout, ceil_mode=ceil_mode)
    got = ref.max_pool2d_backward(gin, xin, kernel_size, stride, padding, **kw)
    got = got if layout == "NCHW" else to_nchw(got)
    assert_array_equal(got, want)
    # indices from max_pool2d (and torch's own) given as indices= give the very same result
    _, idx = ref.max_pool2d(xin, kernel_size, stride, padding, return_indices=True, **kw)
    with_idx = ref.max_pool2d_backward(gin, xin, kernel_size, stride, padding, indices=idx, **kw)
    assert_array_equal(with_idx, ref.max_pool2d_backward(gin, xin, kernel_size, stride,
                                                         padding, **kw))
    t_idx = t_idx if layout == "NCHW" else to_nhwc(t_idx)
    with_t_idx = ref.max_pool2d_backward(gin, xin, kernel_size, stride, padding, indices=t_idx,
                                         **kw)
    assert_array_equal(with_t_idx if layout == "NCHW" else to_nchw(with_t_idx), want)


@needs_torch
def test_torch_max_pool2d_ties_go_to_first_max_explicitly():
    g = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    # all ties, overlapping 2x2 stride-1 windows: window (i, j) -> cell (i, j)
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, :3, :3] = g[0, 0]
    torch_grad, _ = torch_max_grad(g, np.ones((1, 1, 4, 4)), 2, 1, 0, False)
    assert_array_equal(torch_grad, want)   # our reading of torch's rule
    _exact(ref.max_pool2d_backward(g, np.ones((1, 1, 4, 4)), 2, 1), want)
    # all -inf, 3x3 windows, stride 2, padding 1: the first real cell of each window
    x = np.full((1, 1, 3, 3), -INF)
    g = np.ones((1, 1, 2, 2))
    want = np.array([[[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])
    torch_grad, _ = torch_max_grad(g, x, 3, 2, 1, False)
    assert_array_equal(torch_grad, want)
    _exact(ref.max_pool2d_backward(g, x, 3, 2, 1), want)


@needs_torch
def test_torch_max_pool2d_single_nan_window(rng):
    # one NaN per window at most: torch and the reference both send the gradient to the NaN
    x = distinct_values((1, 2, 6, 6), seed=5)
    x[0, 0, 1, 1] = NAN
    x[0, 1, 4, 3] = NAN
    g = rng.standard_normal((1, 2, 3, 3))
    want, _ = torch_max_grad(g, x, 2, 2, 0, False)
    got = ref.max_pool2d_backward(g, x, 2)
    assert_array_equal(got, want)
    assert got[0, 0, 1, 1] == g[0, 0, 0, 0] and got[0, 1, 4, 3] == g[0, 1, 2, 1]


@needs_torch
@pytest.mark.parametrize("kernel_size, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_torch_max_pool2d_several_nans_per_window(kernel_size, stride, padding, rng):
    # Windows holding two or more NaNs: PyTorch sends the gradient to the window's LAST NaN, and
    # so must the reference (and the fast op, which matches the reference exactly).
    import fastconv

    x = distinct_values((2, 3, 7, 7), seed=11)
    x[rng.random(x.shape) < 0.3] = NAN
    x[0, 0, :2, :2] = NAN
    y = ref.max_pool2d(x, kernel_size, stride, padding)
    g = rng.standard_normal(y.shape)
    want, _ = torch_max_grad(g, x, kernel_size, stride, padding, False)
    got = ref.max_pool2d_backward(g, x, kernel_size, stride, padding)
    assert_array_equal(got, want)
    assert_array_equal(fastconv.max_pool2d_backward(g, x, kernel_size, stride, padding), want)
    nhwc = fastconv.max_pool2d_backward(g.transpose(0, 2, 3, 1), x.transpose(0, 2, 3, 1),
                                        kernel_size, stride, padding, layout="NHWC")
    assert_array_equal(nhwc, want.transpose(0, 2, 3, 1))


@needs_torch
@pytest.mark.parametrize("divisor_override", [None, 3])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@CEIL
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", TORCH_POOL_GRID)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_avg_pool2d(layout, H, W, kernel_size, stride, padding, ceil_mode,
                          count_include_pad, divisor_override, rng):
    x = rng.standard_normal((2, 3, H, W))
    kw = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad,
              divisor_override=divisor_override)
    tx = _t(x, True)
    y = F.avg_pool2d(tx, kernel_size, stride, padding, **kw)
    g = rng.standard_normal(tuple(y.shape))
    y.backward(_t(g))
    want = tx.grad.numpy()
    if layout == "NCHW":
        got = ref.avg_pool2d_backward(g, x.shape, kernel_size, stride, padding, **kw)
    else:
        got = to_nchw(ref.avg_pool2d_backward(to_nhwc(g), to_nhwc(x).shape, kernel_size, stride,
                                              padding, layout="NHWC", **kw))
    k = _pair(kernel_size)
    assert_close(got, want, reduction_length=k[0] * k[1], err_msg=str(kw))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_torch_relu(dtype, rng):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x.flat[:7] = [NAN, INF, -INF, -0.0, 0.0, -1e-30, 1e-30]
    g = rng.standard_normal(x.shape).astype(dtype)
    g.flat[7:9] = [NAN, INF]
    tx = _t(x, True)
    torch.relu(tx).backward(_t(g))
    got = ref.relu_backward(g, x)
    assert got.dtype == np.dtype(dtype)
    assert_array_equal(got, tx.grad.numpy())
    assert got.flat[0] == g.flat[0] and got.flat[3] == 0 and got.flat[4] == 0


# ============================================================================================
# 5. dtype rules and `needs`
# ============================================================================================

SMALL_CONV = dict(stride=1, padding=1, groups=2)


def _small_conv(x_dtype=np.float64, w_dtype=np.float64, g_dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 5, 5)).astype(x_dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(w_dtype)
    g = rng.standard_normal((2, 6, 5, 5)).astype(g_dtype)
    return g, x, w


@pytest.mark.parametrize(
    "g_dtype, x_dtype, w_dtype, expected",
    [
        (np.float32, np.float32, np.float32, np.float32),
        (np.float64, np.float32, np.float32, np.float64),
        (np.float32, np.float64, np.float32, np.float64),
        (np.float32, np.float32, np.float64, np.float64),
        (np.float16, np.float16, np.float16, np.float32),
        (np.int64, np.int32, np.int8, np.float64),
    ],
    ids=lambda v: np.dtype(v).name,
)
def test_conv_dtype_rules(g_dtype, x_dtype, w_dtype, expected):
    g, x, w = _small_conv(x_dtype, w_dtype, g_dtype)
    got = ref.conv2d_backward(g, x, w, **SMALL_CONV)
    for a in got:
        assert a.dtype == np.dtype(expected)
    # the value is that of the inputs converted up front
    want = ref.conv2d_backward(g.astype(expected), x.astype(expected), w.astype(expected),
                               **SMALL_CONV)
    for a, e in zip(got, want):
        assert_array_equal(a, e)


def test_conv_float32_close_to_float64():
    g, x, w = _small_conv(np.float32, np.float32, np.float32)
    got = ref.conv2d_backward(g, x, w, **SMALL_CONV)
    want = ref.conv2d_backward(g.astype(np.float64), x.astype(np.float64),
                               w.astype(np.float64), **SMALL_CONV)
    for a, e, n in zip(got, want, (27, 50, 50)):
        assert_close(a, e.astype(np.float32), dtype=np.float32, reduction_length=n)


NEEDS_SUBSETS = [s for r in range(4)
                 for s in itertools.combinations(("input", "weight", "bias"), r)]


@pytest.mark.parametrize("needs", NEEDS_SUBSETS, ids=lambda s: "+".join(s) or "none")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_needs_subsets(needs, layout):
    g, x, w = _small_conv()
    if layout == "NHWC":
        g, x, w = to_nhwc(g), to_nhwc(x), oihw_to_hwio(w)
    full = ref.conv2d_backward(g, x, w, layout=layout, **SMALL_CONV)
    part = ref.conv2d_backward(g, x, w, layout=layout, needs=needs, **SMALL_CONV)
    assert isinstance(part, tuple) and len(part) == 3
    for name, a, e in zip(("input", "weight", "bias"), part, full):
        if name in needs:
            assert_array_equal(a, e)
        else:
            assert a is None


@pytest.mark.parametrize("needs, present", [("weight", (1,)), ("BIAS", (2,)),
                                            (["Input", "bias"], (0, 2)),
                                            ({"weight"}, (1,)), (iter(["input"]), (0,))],
                         ids=["str", "upper-str", "list", "set", "iterator"])
def test_conv_needs_forms(needs, present):
    g, x, w = _small_conv()
    got = ref.conv2d_backward(g, x, w, needs=needs, **SMALL_CONV)
    assert [i for i, a in enumerate(got) if a is not None] == list(present)


@pytest.mark.parametrize(
    "g_dtype, x_dtype, expected",
    [(np.float32, np.float32, np.float32), (np.float64, np.float32, np.float64),
     (np.float32, np.float64, np.float64), (np.float16, np.float16, np.float32),
     (np.int32, np.int32, np.float64)],
    ids=lambda v: np.dtype(v).name,
)
def test_pool_and_relu_dtype_rules(g_dtype, x_dtype, expected):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3, 6, 6)) * 4).astype(x_dtype)
    g = (rng.standard_normal((2, 3, 3, 3)) * 4).astype(g_dtype)
    got = ref.max_pool2d_backward(g, x, 3, 2, 1)
    assert got.dtype == np.dtype(expected)
    assert_array_equal(got, ref.max_pool2d_backward(g.astype(expected), x.astype(expected),
                                                    3, 2, 1))
    # avg backward has no x: the dtype is grad_out's own compute dtype
    avg = ref.avg_pool2d_backward(g, x.shape, 3, 2, 1)
    assert avg.dtype == {"float16": np.float32, "int32": np.float64}.get(np.dtype(g_dtype).name,
                                                                         g_dtype)
    gr = (rng.standard_normal(x.shape) * 4).astype(g_dtype)
    got = ref.relu_backward(gr, x)
    assert got.dtype == np.dtype(expected)
    assert_array_equal(got, ref.relu_backward(gr.astype(expected), x.astype(expected)))


def test_list_inputs():
    gx, gw, gb = ref.conv2d_backward([[1, 0], [0, -1]], [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
                                     [[1, 2], [3, 4]])
    _exact(gx, [[1, 2, 0], [3, 3, -2], [0, -3, -4]])
    _exact(ref.relu_backward([1, 2], [-1, 1]), [0, 2])
    _exact(ref.max_pool2d_backward([[5]], [[1, 2], [3, 4]], 2), [[0, 0], [0, 5]])
    _exact(ref.avg_pool2d_backward([[4]], [2, 2], 2), [[1, 1], [1, 1]])


def _empty_batch(layout):
    x, w = np.zeros((0, 4, 5, 5)), np.ones((6, 2, 3, 3))
    g, gp = np.zeros((0, 6, 3, 3)), np.zeros((0, 4, 2, 2))
    if layout == "NHWC":
        x, w, g, gp = to_nhwc(x), oihw_to_hwio(w), to_nhwc(g), to_nhwc(gp)
    return x, w, g, gp


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_and_avg_empty_batch(layout):
    x, w, g, gp = _empty_batch(layout)
    gx, gw, gb = ref.conv2d_backward(g, x, w, groups=2, layout=layout)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (6,)
    assert not gw.any() and not gb.any()    # sums over an empty batch are zero
    assert ref.avg_pool2d_backward(gp, x.shape, 2, layout=layout).shape == x.shape


@pytest.mark.parametrize("indices", [False, True], ids=["no-indices", "indices"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_empty_batch(layout, indices):
    x, _, _, gp = _empty_batch(layout)
    idx = np.zeros(gp.shape, dtype=np.int64) if indices else None
    gx = ref.max_pool2d_backward(gp, x, 2, layout=layout, indices=idx)
    assert gx.shape == x.shape and gx.dtype == np.float64


# ============================================================================================
# 6. bad arguments are refused, naming the argument
# ============================================================================================


@pytest.mark.parametrize(
    "bad_shape", [(1, 4, 5, 5), (1, 4, 4), (1, 3, 4, 4), (2, 4, 4, 4), (1, 4, 4, 4, 1)],
    ids=["spatial", "rank-3", "channels", "batch", "rank-5"],
)
def test_conv_grad_out_wrong_shape(bad_shape):
    x, w = np.ones((1, 2, 6, 6)), np.ones((4, 2, 3, 3))
    with pytest.raises(ValueError, match=re.escape(
            "conv2d_backward: grad_out must have shape (1, 4, 4, 4)")) as info:
        ref.conv2d_backward(np.ones(bad_shape), x, w)
    assert str(bad_shape) in str(info.value)
    # NHWC and unbatched: the expected shape is in the caller's layout and rank
    with pytest.raises(ValueError, match=re.escape("grad_out must have shape (4, 4, 4)")):
        ref.conv2d_backward(np.ones((4, 4, 5)), np.ones((6, 6, 2)), oihw_to_hwio(w),
                            layout="NHWC")


def test_pool_grad_out_wrong_shape():
    x = np.ones((1, 2, 6, 6))
    with pytest.raises(ValueError, match=re.escape(
            "max_pool2d_backward: grad_out must have shape (1, 2, 3, 3)")):
        ref.max_pool2d_backward(np.ones((1, 2, 2, 2)), x, 2)
    with pytest.raises(ValueError, match=re.escape(
            "avg_pool2d_backward: grad_out must have shape (1, 2, 4, 4)")):
        ref.avg_pool2d_backward(np.ones((1, 2, 3, 3)), x.shape, 3, 2, 1, ceil_mode=True)
    with pytest.raises(ValueError, match=re.escape("grad_out must have shape (3, 3)")):
        ref.avg_pool2d_backward(np.ones((1, 3, 3)), (6, 6), 2)


def test_relu_shape_mismatch():
    with pytest.raises(ValueError, match=re.escape(
            "relu_backward: grad_out and x must have the same shape, got (2, 3) and (3, 2)")):
        ref.relu_backward(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="relu_backward: grad_out and x"):
        ref.relu_backward(np.ones(3), np.ones((1, 3)))   # no broadcasting


@pytest.mark.parametrize(
    "needs, exc, pattern",
    [(("input", "gradient"), ValueError, "needs must be one of 'input', 'weight', 'bias', "
                                         "got 'gradient'"),
     ("x", ValueError, "needs must be one of"),
     (("input", 3), ValueError, "needs must be one of .* got 3"),
     (3, TypeError, "needs must be a tuple of 'input', 'weight' and/or 'bias', got 3"),
     (None, TypeError, "needs must be a tuple")],
    ids=["unknown-name", "unknown-str", "non-str-item", "int", "None"],
)
def test_conv_bad_needs(needs, exc, pattern):
    g, x, w = _small_conv()
    with pytest.raises(exc, match="conv2d_backward: " + pattern):
        ref.conv2d_backward(g, x, w, needs=needs, **SMALL_CONV)


def test_conv_other_bad_arguments():
    g, x, w = _small_conv()
    with pytest.raises(ValueError, match="conv2d_backward: algorithm must be one of"):
        ref.conv2d_backward(g, x, w, algorithm="fft", **SMALL_CONV)
    with pytest.raises(ValueError, match="conv2d_backward: num_threads"):
        ref.conv2d_backward(g, x, w, num_threads=0, **SMALL_CONV)
    with pytest.raises(TypeError, match="conv2d_backward: grad_out has dtype complex"):
        ref.conv2d_backward(g.astype(complex), x, w, **SMALL_CONV)
    with pytest.raises(ValueError, match="conv2d_backward: weight expects 2 input channels"):
        ref.conv2d_backward(g, x, w, stride=1, padding=1)   # groups missing
    with pytest.raises(TypeError, match="conv2d_backward: grad_out must be an array"):
        ref.conv2d_backward(None, x, w, **SMALL_CONV)


@pytest.mark.parametrize(
    "indices, exc, pattern",
    [(np.zeros((1, 2, 3, 3)), TypeError, "indices must be an integer array"),
     (np.zeros((1, 2, 3, 3), dtype=bool), TypeError, "indices must be an integer array"),
     (np.zeros((1, 2, 3, 2), dtype=np.int64), ValueError,
      re.escape("indices must have grad_out's shape (1, 2, 3, 3), got shape (1, 2, 3, 2)")),
     (np.zeros((2, 3, 3), dtype=np.int64), ValueError, "indices must have grad_out's shape"),
     (np.full((1, 2, 3, 3), -1), ValueError,
      re.escape("indices must lie in [0, H*W) = [0, 36)")),
     (np.full((1, 2, 3, 3), 36, dtype=np.int32), ValueError,
      r"indices must lie in .* got values in \[36, 36\]")],
    ids=["float", "bool", "shape", "rank", "negative", "too-large"],
)
def test_max_bad_indices(indices, exc, pattern):
    x, g = np.ones((1, 2, 6, 6)), np.ones((1, 2, 3, 3))
    with pytest.raises(exc, match="max_pool2d_backward: " + pattern):
        ref.max_pool2d_backward(g, x, 2, indices=indices)


def test_max_indices_may_be_any_integer_dtype():
    x, g = distinct_values((1, 2, 6, 6), 0), np.ones((1, 2, 3, 3))
    _, idx = ref.max_pool2d(x, 2, return_indices=True)
    want = ref.max_pool2d_backward(g, x, 2)
    for dtype in (np.int32, np.uint16, np.int64):
        assert_array_equal(ref.max_pool2d_backward(g, x, 2, indices=idx.astype(dtype)), want)


@pytest.mark.parametrize(
    "input_shape, exc, pattern",
    [(5, TypeError, "input_shape must be a tuple of 2, 3 or 4 ints"),
     (("1", 2, 6, 6), TypeError, "input_shape must be a tuple"),
     ((1.0, 2, 6, 6), TypeError, "input_shape must be a tuple"),
     ((6,), ValueError, "input_shape must be 2, 3 or 4 non-negative ints"),
     ((1, 1, 2, 6, 6), ValueError, "input_shape must be 2, 3 or 4 non-negative ints"),
     ((1, -2, 6, 6), ValueError, "input_shape must be 2, 3 or 4 non-negative ints"),
     ((1, 2, 0, 6), ValueError, "the spatial axes must be non-empty, got H=0, W=6")],
    ids=["int", "str-item", "float-item", "rank-1", "rank-5", "negative", "empty-spatial"],
)
def test_avg_bad_input_shape(input_shape, exc, pattern):
    with pytest.raises(exc, match="avg_pool2d_backward: " + pattern):
        ref.avg_pool2d_backward(np.ones((1, 2, 3, 3)), input_shape, 2)


def test_pool_other_bad_arguments():
    x, g = np.ones((1, 2, 6, 6)), np.ones((1, 2, 3, 3))
    with pytest.raises(ValueError, match="max_pool2d_backward: padding .* must be at most half"):
        ref.max_pool2d_backward(g, x, 2, padding=2)
    with pytest.raises(ValueError, match="avg_pool2d_backward: divisor_override must be positive"):
        ref.avg_pool2d_backward(g, x.shape, 2, divisor_override=0)
    with pytest.raises(ValueError, match="avg_pool2d_backward: layout must be one of"):
        ref.avg_pool2d_backward(g, x.shape, 2, layout="NCWH")
    with pytest.raises(TypeError, match="max_pool2d_backward: x has dtype"):
        ref.max_pool2d_backward(g, x.astype(complex), 2)


def test_relu_out_errors():
    g, x = np.ones((2, 3)), -np.ones((2, 3))
    with pytest.raises(ValueError, match=re.escape(
            "relu_backward: out must have shape (2, 3), got (3, 2)")):
        ref.relu_backward(g, x, out=np.empty((3, 2)))
    with pytest.raises(TypeError, match="relu_backward: out must have dtype float64, got float32"):
        ref.relu_backward(g, x, out=np.empty((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="relu_backward: out must have dtype float32"):
        ref.relu_backward(g.astype(np.float32), x.astype(np.float32), out=np.empty((2, 3)))
    with pytest.raises(TypeError, match="relu_backward: out must be a numpy.ndarray"):
        ref.relu_backward(g, x, out=[[0.0] * 3] * 2)
    read_only = np.empty((2, 3))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="relu_backward: out is read-only"):
        ref.relu_backward(g, x, out=read_only)


def test_relu_out_semantics():
    rng = np.random.default_rng(8)
    g, x = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    want = np.where(x > 0, g, 0.0)
    out = np.empty((3, 4))
    assert ref.relu_backward(g, x, out=out) is out
    assert_array_equal(out, want)
    g2, x2 = g.copy(), x.copy()
    assert ref.relu_backward(g2, x, out=g2) is g2          # in place on grad_out
    assert_array_equal(g2, want)
    assert ref.relu_backward(g, x2, out=x2) is x2          # in place on x
    assert_array_equal(x2, want)
