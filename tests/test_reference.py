"""fastconv.reference checked against independent oracles.

The rest of the suite trusts ``fastconv.reference``; this module is what earns that trust. No
expected value here is computed with fastconv code (neither the reference itself, nor
``fastconv._validate``, nor the fast ops). Expected values come from:

1. examples worked out by hand and typed in literally,
2. ``scipy.signal.correlate2d`` (plus small loops written here),
3. PyTorch (``torch.nn.functional``), when installed,

and a few checks that the reference refuses bad input.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from scipy.signal import correlate2d

from fastconv import reference as ref
from _helpers import (
    DTYPES,
    HAVE_TORCH,
    LAYOUTS,
    TORCH_REASON,
    assert_close,
    oihw_to_hwio,
    to_nhwc,
)

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)

NAN = np.nan
INF = np.inf

# The textbook example: a 4x4 image and a 3x3 vertical-edge kernel.
IMAGE = np.array([[1, 2, 1, 0], [0, 1, 3, 2], [2, 1, 0, 1], [1, 0, 1, 2]])
EDGE = np.array([[1, 0, -1]] * 3)


def _exact(actual, expected, dtype=np.float64):
    """Exact comparison that also checks dtype and shape (hand examples are exact in binary)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=dtype)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert_array_equal(actual, expected)


def _tf_same_pads(in_size, k, s, d=1):
    """TensorFlow 'SAME' padding along one axis, written out independently of fastconv."""
    out = math.ceil(in_size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - in_size, 0)
    return total // 2, total - total // 2


# ============================================================================================
# 1. hand-computed examples
# ============================================================================================

# ---- convolution ---------------------------------------------------------------------------


def test_textbook_valid():
    _exact(ref.conv2d(IMAGE, EDGE), [[-1, 1], [-1, -3]])


def test_textbook_padding_1():
    # Row-wise differences I[r, j-1] - I[r, j+1] (zero outside), summed over three rows.
    want = [
        [-3, -3, 1, 4],
        [-4, -1, 1, 4],
        [-2, -1, -3, 4],
        [-1, 2, -2, 1],
    ]
    _exact(ref.conv2d(IMAGE, EDGE, padding=1), want)


def test_textbook_stride_2_padding_1():
    # Every other cell of the padding=1 result, starting at (0, 0).
    _exact(ref.conv2d(IMAGE, EDGE, stride=2, padding=1), [[-3, 1], [-2, -3]])


def test_textbook_nhwc_hwio():
    x = IMAGE.reshape(4, 4, 1).astype(np.float64)
    w = EDGE.reshape(3, 3, 1, 1).astype(np.float64)
    _exact(ref.conv2d(x, w, layout="NHWC"), [[[-1], [1]], [[-1], [-3]]])
    # ... and batched: (1, H, W, 1)
    _exact(ref.conv2d(x[None], w, layout="NHWC"), [[[[-1], [1]], [[-1], [-3]]]])


def test_textbook_nchw_one_image():
    x = IMAGE.reshape(1, 4, 4)
    w = EDGE.reshape(1, 1, 3, 3)
    _exact(ref.conv2d(x, w), [[[-1, 1], [-1, -3]]])


def test_textbook_bias():
    _exact(ref.conv2d(IMAGE, EDGE, np.array([0.5])), [[-0.5, 1.5], [-0.5, -2.5]])
    x = IMAGE.reshape(1, 1, 4, 4)
    w = np.stack([EDGE, -EDGE]).reshape(2, 1, 3, 3)
    _exact(ref.conv2d(x, w, np.array([10.0, -1.0])),
           [[[[9, 11], [9, 7]], [[0, -2], [0, 2]]]])


def test_textbook_relu():
    y = ref.conv2d(IMAGE, EDGE, activation="relu")
    _exact(y, [[0, 1], [0, 0]])
    assert not np.signbit(y).any()
    # relu is applied after the bias
    _exact(ref.conv2d(IMAGE, EDGE, np.array([1.5]), activation="relu"), [[0.5, 2.5], [0.5, 0]])
    _exact(ref.conv2d(IMAGE, EDGE, padding=1, activation="RELU"),
           [[0, 0, 1, 4], [0, 0, 1, 4], [0, 0, 0, 4], [0, 2, 0, 1]])


def test_multichannel_by_hand():
    # "Deep Learning from Scratch" style: the output is the sum over input channels.
    x = np.array([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                   [[0, 1, 0], [2, 0, 1], [1, 1, 0]]]], dtype=np.float64)   # (1, 2, 3, 3)
    w = np.array([[[[1, 0], [0, -1]],
                   [[2, 1], [0, 1]]]], dtype=np.float64)                     # (1, 2, 2, 2)
    # channel 0: x0[i,j] - x0[i+1,j+1] = -4 everywhere
    # channel 1: 2*x1[i,j] + x1[i,j+1] + x1[i+1,j+1] = [[1, 3], [5, 1]]
    _exact(ref.conv2d(x, w), [[[[-3, -1], [1, -3]]]])
    _exact(ref.conv2d(x, w, np.array([1.0])), [[[[-2, 0], [2, -2]]]])
    # the same in NHWC / HWIO
    _exact(ref.conv2d(to_nhwc(x), oihw_to_hwio(w), layout="NHWC"), [[[[-3], [-1]], [[1], [-3]]]])


def test_multichannel_groups_by_hand():
    # groups=2 on the same data: each output channel sees only its own input channel.
    x = np.array([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                   [[0, 1, 0], [2, 0, 1], [1, 1, 0]]]], dtype=np.float64)
    w = np.array([[[[1, 0], [0, -1]]], [[[2, 1], [0, 1]]]], dtype=np.float64)  # (2, 1, 2, 2)
    _exact(ref.conv2d(x, w, groups=2), [[[[-4, -4], [-4, -4]], [[1, 3], [5, 1]]]])


def test_same_in5_k3_s2_pads_1_1():
    # out = 3, pad_total = 2 -> (1, 1). 3x3 window sums of x[r, c] = 5r + c.
    x = np.arange(25.0).reshape(5, 5)
    want = [[12, 27, 24], [63, 108, 81], [72, 117, 84]]
    _exact(ref.conv2d(x, np.ones((3, 3)), stride=2, padding="same"), want)
    _exact(ref.conv2d(x, np.ones((3, 3)), stride=2, padding="SAME"), want)


def test_same_in6_k3_s2_pads_0_1():
    # out = 3, pad_total = 1 -> (0, 1): the extra cell is at the bottom/right. Windows cover
    # rows {0,1,2}, {2,3,4}, {4,5,pad}; x[r, c] = 6r + c.
    x = np.arange(36.0).reshape(6, 6)
    want = [[63, 81, 63], [171, 189, 135], [168, 180, 126]]
    _exact(ref.conv2d(x, np.ones((3, 3)), stride=2, padding="same"), want)
    # Padding at the top/left instead ((1, 0)) would give a different first window:
    # rows {pad, 0, 1} x cols {pad, 0, 1} = 0 + 1 + 6 + 7 = 14, not 63.
    assert want[0][0] != 14


def test_same_in6_k3_s2_nchw_and_nhwc_batch():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    w = np.ones((1, 1, 3, 3))
    want = np.array([[63, 81, 63], [171, 189, 135], [168, 180, 126]], dtype=np.float64)
    _exact(ref.conv2d(x, w, stride=2, padding="same"), want[None, None])
    _exact(ref.conv2d(to_nhwc(x), oihw_to_hwio(w), stride=2, padding="same", layout="NHWC"),
           want[None, :, :, None])


def test_same_dilation_2():
    # W = 5, k = 3, d = 2: effective extent 5, pad_total 4 -> (2, 2); taps at j-2, j, j+2.
    x = np.array([[1.0, 2, 3, 4, 5]])
    w = np.array([[1.0, 2, 3]])
    _exact(ref.conv2d(x, w, dilation=2, padding="same"), [[11, 16, 22, 10, 13]])
    # stride 2 as well: out = 3, pad_total = 2*2 + 5 - 5 = 4 -> (2, 2)
    _exact(ref.conv2d(x, w, stride=2, dilation=2, padding="same"), [[11, 22, 13]])


def test_same_dilation_2_2d():
    # 4x4, 2x2 kernel, dilation 2: extent 3, pad_total 2 -> (1, 1) on each axis.
    # out[i, j] = x[i-1, j-1] + 10 * x[i+1, j+1] with x[r, c] = 4r + c + 1 (zero outside).
    x = np.arange(1.0, 17.0).reshape(4, 4)
    w = np.array([[1.0, 0.0], [0.0, 10.0]])
    want = [
        [60, 70, 80, 0],
        [100, 111, 122, 3],
        [140, 155, 166, 7],
        [0, 9, 10, 11],
    ]
    _exact(ref.conv2d(x, w, dilation=2, padding="same"), want)


def test_same_input_1_kernel_3():
    # in = 1, k = 3: out = 1, pad_total = 2 -> (1, 1): only the centre tap sees the input.
    w = np.arange(1.0, 10.0).reshape(3, 3)
    _exact(ref.conv2d(np.array([[5.0]]), w, padding="same"), [[25]])
    _exact(ref.conv2d(np.array([[5.0]]), w, stride=2, padding="same"), [[25]])


def test_same_stride_larger_than_kernel():
    # in = 7, k = 2, s = 3: out = 3, pad_total = 2*3 + 2 - 7 = 1 -> (0, 1).
    # windows {0,1}, {3,4}, {6,pad}
    w = np.array([[1.0, 10.0]])
    _exact(ref.conv2d(np.arange(1.0, 8.0)[None], w, stride=3, padding="same"), [[21, 54, 7]])
    # in = 11, k = 2, s = 4: out = 3, pad_total = max(8 + 2 - 11, 0) = 0; cell 10 is unused.
    _exact(ref.conv2d(np.arange(1.0, 12.0)[None], w, stride=4, padding="same"),
           [[21, 65, 109]])


def test_explicit_asymmetric_padding_by_hand():
    # ((top, bottom), (left, right)) = ((1, 0), (0, 2)) with a 1x1 kernel of 2: the padded
    # image itself, doubled.
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    _exact(ref.conv2d(x, np.array([[2.0]]), padding=((1, 0), (0, 2))),
           [[0, 0, 0, 0], [2, 4, 0, 0], [6, 8, 0, 0]])
    # pair padding (ph, pw) = (0, 1)
    _exact(ref.conv2d(x, np.array([[2.0]]), padding=(0, 1)), [[0, 2, 4, 0], [0, 6, 8, 0]])


def test_conv_dtypes_by_hand():
    x = IMAGE.astype(np.float32)
    _exact(ref.conv2d(x, EDGE.astype(np.float32)), [[-1, 1], [-1, -3]], dtype=np.float32)
    # float32 with float64 -> float64; ints -> float64; float16 -> float32
    _exact(ref.conv2d(x, EDGE.astype(np.float64)), [[-1, 1], [-1, -3]], dtype=np.float64)
    _exact(ref.conv2d(IMAGE.astype(np.float16), EDGE.astype(np.float16)), [[-1, 1], [-1, -3]],
           dtype=np.float32)
    _exact(ref.conv2d(IMAGE.tolist(), EDGE.tolist()), [[-1, 1], [-1, -3]], dtype=np.float64)


# ---- max pooling ---------------------------------------------------------------------------


def test_max_pool_4x4_by_hand():
    x = np.array([[1.0, 3, 2, 0],
                  [4, 3, 0, 5],
                  [5, 1, 2, 7],
                  [6, 0, 8, 1]])
    values, indices = ref.max_pool2d(x, 2, return_indices=True)
    _exact(values, [[4, 5], [6, 8]])
    _exact(indices, [[4, 7], [12, 14]], dtype=np.int64)
    _exact(ref.max_pool2d(x, 2), [[4, 5], [6, 8]])
    # NCHW batch and NHWC
    v4, i4 = ref.max_pool2d(x[None, None], 2, return_indices=True)
    _exact(v4, [[[[4, 5], [6, 8]]]])
    _exact(i4, [[[[4, 7], [12, 14]]]], dtype=np.int64)
    vh, ih = ref.max_pool2d(x[None, :, :, None], 2, layout="NHWC", return_indices=True)
    _exact(vh, [[[[4], [5]], [[6], [8]]]])
    _exact(ih, [[[[4], [7]], [[12], [14]]]], dtype=np.int64)


def test_max_pool_indices_per_plane():
    # indices are within each (n, c) plane: the second channel holds the same values, so the
    # same indices, not offset by the plane size.
    x = np.array([[1.0, 3, 2, 0], [4, 3, 0, 5], [5, 1, 2, 7], [6, 0, 8, 1]])
    xb = np.stack([x, x + 100]).reshape(1, 2, 4, 4)
    values, indices = ref.max_pool2d(xb, 2, return_indices=True)
    _exact(values, [[[[4, 5], [6, 8]], [[104, 105], [106, 108]]]])
    _exact(indices, [[[[4, 7], [12, 14]], [[4, 7], [12, 14]]]], dtype=np.int64)


def test_max_pool_ties_first_wins():
    x = np.array([[2.0, 2, 1, 3, 0, 0],
                  [2, 0, 3, 3, 7, 7]])
    values, indices = ref.max_pool2d(x, 2, return_indices=True)
    _exact(values, [[2, 3, 7]])
    _exact(indices, [[0, 3, 10]], dtype=np.int64)


def test_max_pool_all_minus_inf_window():
    x = np.array([[-INF, -INF, 1, 2],
                  [-INF, -INF, 3, 0]])
    values, indices = ref.max_pool2d(x, 2, return_indices=True)
    _exact(values, [[-INF, 3]])
    _exact(indices, [[0, 6]], dtype=np.int64)


def test_max_pool_minus_inf_with_padding_points_at_real_cell():
    # Each window holds one real -inf cell and three padding cells (also -inf).
    x = np.full((2, 2), -INF)
    values, indices = ref.max_pool2d(x, 2, stride=2, padding=1, return_indices=True)
    _exact(values, [[-INF, -INF], [-INF, -INF]])
    _exact(indices, [[0, 1], [2, 3]], dtype=np.int64)


def test_max_pool_nan():
    x = np.array([[1.0, NAN, NAN, 0, 4, 1],
                  [NAN, 5, 2, 3, 1, 4]])
    values, indices = ref.max_pool2d(x, 2, return_indices=True)
    _exact(values, [[NAN, NAN, 4]])
    # Window 1 holds NaNs at 1 and 6: the last one wins (PyTorch's CPU rule); first 4 in window 3.
    _exact(indices, [[6, 2, 4]], dtype=np.int64)
    # NaN beats +inf, and a NaN after an inf still gives NaN
    y = np.array([[INF, 1.0], [2.0, NAN]])
    vy, iy = ref.max_pool2d(y, 2, return_indices=True)
    _exact(vy, [[NAN]])
    _exact(iy, [[3]], dtype=np.int64)
    # no NaN leaks into the neighbouring windows
    _exact(ref.max_pool2d(x, (1, 2)), [[NAN, NAN, 4], [NAN, 3, 4]])


def test_max_pool_padding_indices_never_padding():
    # All values negative: a padding cell (-inf) never wins, the top-left real cell does.
    x = -np.arange(1.0, 17.0).reshape(4, 4)
    values, indices = ref.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    _exact(values, [[-1, -2], [-5, -6]])
    _exact(indices, [[0, 1], [4, 5]], dtype=np.int64)
    # ascending data: the bottom-right real cell of each window wins
    values, indices = ref.max_pool2d(np.arange(16.0).reshape(4, 4), 3, stride=2, padding=1,
                                     return_indices=True)
    _exact(values, [[5, 7], [13, 15]])
    _exact(indices, [[5, 7], [13, 15]], dtype=np.int64)


def test_max_pool_ceil_mode_adds_partial_window():
    # 3x3, k=2, s=2: floor -> 1x1; ceil -> 2x2 with windows holding 2, 2 and 1 real cells.
    x = np.arange(9.0).reshape(3, 3)
    _exact(ref.max_pool2d(x, 2), [[4]])
    values, indices = ref.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
    _exact(values, [[4, 5], [7, 8]])
    _exact(indices, [[4, 5], [7, 8]], dtype=np.int64)
    # with negative data the overhang (not a real cell) must not win either
    values, indices = ref.max_pool2d(-x - 1, 2, ceil_mode=True, return_indices=True)
    _exact(values, [[-1, -3], [-7, -9]])
    _exact(indices, [[0, 2], [6, 8]], dtype=np.int64)


def test_max_pool_ceil_mode_with_padding_adds_window():
    # H = W = 4, k = 3, s = 2, p = 1: floor 2, ceil 3 ((3-1)*2 = 4 < 4 + 1, kept).
    # Windows cover real rows {0,1}, {1,2,3}, {3}.
    x = np.arange(16.0).reshape(4, 4)
    _exact(ref.max_pool2d(x, 3, 2, 1), [[5, 7], [13, 15]])
    values, indices = ref.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    _exact(values, [[5, 7, 7], [13, 15, 15], [13, 15, 15]])
    _exact(indices, [[5, 7, 7], [13, 15, 15], [13, 15, 15]], dtype=np.int64)


def test_max_pool_ceil_mode_drops_window_starting_in_padding():
    # H = W = 4, k = 2, s = 2, p = 1: (4+2-2)/2 + 1 = 3 in both modes; windows cover real rows
    # {0}, {1,2}, {3}.
    x4 = np.arange(16.0).reshape(4, 4)
    want4 = [[0, 2, 3], [8, 10, 11], [12, 14, 15]]
    _exact(ref.max_pool2d(x4, 2, 2, 1), want4)
    _exact(ref.max_pool2d(x4, 2, 2, 1, ceil_mode=True), want4)
    # H = W = 5, same pooling: floor 5//2 + 1 = 3; ceil would be ceil(5/2) + 1 = 4, but the
    # 4th window starts at padded position 6 >= 5 + 1 (in the bottom padding): dropped -> 3.
    x5 = np.arange(25.0).reshape(5, 5)
    want5 = [[0, 2, 4], [10, 12, 14], [20, 22, 24]]
    _exact(ref.max_pool2d(x5, 2, 2, 1), want5)
    values, indices = ref.max_pool2d(x5, 2, 2, 1, ceil_mode=True, return_indices=True)
    _exact(values, want5)
    _exact(indices, want5, dtype=np.int64)
    # whereas without padding ceil_mode does add a third window: 5x5, k=2, s=2 -> 3x3
    _exact(ref.max_pool2d(x5, 2), [[6, 8], [16, 18]])
    _exact(ref.max_pool2d(x5, 2, ceil_mode=True), [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


def test_max_pool_non_square_and_stride():
    x = np.arange(12.0).reshape(3, 4)
    # kernel (1, 2), default stride (1, 2)
    _exact(ref.max_pool2d(x, (1, 2)), [[1, 3], [5, 7], [9, 11]])
    # kernel (3, 2), stride (1, 1)
    _exact(ref.max_pool2d(x, (3, 2), stride=1), [[9, 10, 11]])
    # 'same' pooling with k 3, s 2: H 3 -> out 2, pads (1, 1); W 4 -> out 2, pads (0, 1).
    # On -x the top-left real cell of each window wins.
    _exact(ref.max_pool2d(-x, 3, stride=2, padding="same"), [[0, -2], [-4, -6]])


# ---- average pooling -----------------------------------------------------------------------

X44 = np.arange(1.0, 17.0).reshape(4, 4)   # x[r, c] = 4r + c + 1


def test_avg_pool_plain():
    _exact(ref.avg_pool2d(X44, 2), [[3.5, 5.5], [11.5, 13.5]])
    _exact(ref.avg_pool2d(X44, (1, 4)), [[2.5], [6.5], [10.5], [14.5]])


def test_avg_pool_count_include_pad():
    # k=3, s=2, p=1 on 4x4: windows hold real rows {0,1} / {1,2,3}; sums 14, 30, 57, 99.
    _exact(ref.avg_pool2d(X44, 3, 2, 1), np.array([[14, 30], [57, 99]]) / 9)
    _exact(ref.avg_pool2d(X44, 3, 2, 1, count_include_pad=True),
           np.array([[14, 30], [57, 99]]) / 9)
    _exact(ref.avg_pool2d(X44, 3, 2, 1, count_include_pad=False), [[3.5, 5], [9.5, 11]])


def test_avg_pool_divisor_override():
    _exact(ref.avg_pool2d(X44, 3, 2, 1, divisor_override=5),
           np.array([[14, 30], [57, 99]]) / 5)
    # divisor_override wins over count_include_pad
    _exact(ref.avg_pool2d(X44, 3, 2, 1, count_include_pad=False, divisor_override=2),
           np.array([[14, 30], [57, 99]]) / 2)
    _exact(ref.avg_pool2d(X44, 2, divisor_override=1), [[14, 22], [46, 54]])


def test_avg_pool_ceil_overhang_not_counted():
    # 3x3, k=2, s=2, ceil: windows {1,2,4,5}, {3,6}, {7,8}, {9}; the overhang is not padding,
    # so it never counts, whatever count_include_pad says.
    x = np.arange(1.0, 10.0).reshape(3, 3)
    want = [[3, 4.5], [7.5, 9]]
    _exact(ref.avg_pool2d(x, 2, ceil_mode=True), want)
    _exact(ref.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False), want)
    _exact(ref.avg_pool2d(x, 2, ceil_mode=True, divisor_override=4),
           [[3, 2.25], [3.75, 2.25]])


def test_avg_pool_ceil_with_padding_divisors():
    # ones(4, 4), k=3, s=2, p=1, ceil -> 3x3. Per axis the windows hold 2, 3, 1 real cells and
    # 3, 3, 2 cells of the padded input (the last: one real, one padding, one overhang).
    x = np.ones((4, 4))
    real = np.array([2, 3, 1])
    padded = np.array([3, 3, 2])
    want_incl = [[4 / 9, 6 / 9, 2 / 6], [6 / 9, 1, 3 / 6], [2 / 6, 3 / 6, 1 / 4]]
    got = ref.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert_close(got, np.array(want_incl))
    assert_close(got, np.outer(real, real) / np.outer(padded, padded))
    _exact(ref.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), np.ones((3, 3)))
    _exact(ref.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=2),
           [[2, 3, 1], [3, 4.5, 1.5], [1, 1.5, 0.5]])


def test_avg_pool_same_is_tf_average():
    # 'same' with count_include_pad=False is TensorFlow's SAME average pooling. in 5, k 2, s 2:
    # out 3, pad_total 1 -> (0, 1). Windows rows {0,1},{2,3},{4}.
    x = np.arange(25.0).reshape(5, 5)
    want = [[3, 5, 6.5], [13, 15, 16.5], [20.5, 22.5, 24]]
    _exact(ref.avg_pool2d(x, 2, 2, "same", count_include_pad=False), want)
    # count_include_pad=True counts the padding cell: last row/col divides by 4, not 2 / 1
    _exact(ref.avg_pool2d(x, 2, 2, "same"),
           [[3, 5, 6.5 / 2], [13, 15, 16.5 / 2], [20.5 / 2, 22.5 / 2, 24 / 4]])


# ---- relu ----------------------------------------------------------------------------------


def test_relu_special_values():
    x = np.array([-2, -0.0, 0, 0.5, NAN, INF, -INF])
    y = ref.relu(x)
    _exact(y, [0, 0, 0, 0.5, NAN, INF, 0])
    assert not np.signbit(y).any(), "-0.0 must become +0.0"
    y32 = ref.relu(x.astype(np.float32))
    _exact(y32, [0, 0, 0, 0.5, NAN, INF, 0], dtype=np.float32)
    assert not np.signbit(y32).any()


def test_relu_ranks_and_dtypes():
    _exact(ref.relu(np.float64(-3.0)), 0.0)
    _exact(ref.relu(np.float64(3.0)), 3.0)
    _exact(ref.relu([[-1, 2], [3, -4]]), [[0, 2], [3, 0]])
    _exact(ref.relu(np.array([-1, 2], dtype=np.int8)), [0, 2])
    _exact(ref.relu(np.array([True, False])), [1, 0])
    _exact(ref.relu(np.array([-1, 2], dtype=np.float16)), [0, 2], dtype=np.float32)
    x = np.array([-1.0, 2.0, -0.0])
    out = ref.relu(x, out=x)
    assert out is x
    _exact(x, [0, 2, 0])
    assert not np.signbit(x).any()


# ---- im2col / col2im -----------------------------------------------------------------------

X2C = np.array([[[[0.0, 1, 2], [3, 4, 5], [6, 7, 8]],
                 [[10, 11, 12], [13, 14, 15], [16, 17, 18]]]])   # (1, 2, 3, 3)

COLS_NCHW = np.array([
    # c0: (0,0) (0,1) (1,0) (1,1)   c1: (0,0) (0,1) (1,0) (1,1)
    [0, 1, 3, 4, 10, 11, 13, 14],    # output pixel (0, 0)
    [1, 2, 4, 5, 11, 12, 14, 15],    # (0, 1)
    [3, 4, 6, 7, 13, 14, 16, 17],    # (1, 0)
    [4, 5, 7, 8, 14, 15, 17, 18],    # (1, 1)
])

COLS_NHWC = np.array([
    # (kh,kw,c): 00c0 00c1 01c0 01c1 10c0 10c1 11c0 11c1
    [0, 10, 1, 11, 3, 13, 4, 14],
    [1, 11, 2, 12, 4, 14, 5, 15],
    [3, 13, 4, 14, 6, 16, 7, 17],
    [4, 14, 5, 15, 7, 17, 8, 18],
])


def test_im2col_nchw_by_hand():
    _exact(ref.im2col(X2C, 2), COLS_NCHW)


def test_im2col_nhwc_by_hand():
    _exact(ref.im2col(to_nhwc(X2C), 2, layout="NHWC"), COLS_NHWC)


def test_im2col_batch_rows_and_padding_by_hand():
    # two images: rows are (n, oh, ow)
    x = np.stack([X2C[0], X2C[0] + 100])
    _exact(ref.im2col(x, 2), np.concatenate([COLS_NCHW, COLS_NCHW + 100]))
    # padding cells are zeros: 1x1 image, k=2, p=1 -> 2x2 output
    one = np.array([[[[7.0]]]])
    _exact(ref.im2col(one, 2, padding=1),
           [[0, 0, 0, 7], [0, 0, 7, 0], [0, 7, 0, 0], [7, 0, 0, 0]])
    # stride 2 and dilation 2 on a 1x5 row with kernel (1, 2)
    row = np.arange(5.0).reshape(1, 1, 1, 5)
    _exact(ref.im2col(row, (1, 2), stride=2), [[0, 1], [2, 3]])
    _exact(ref.im2col(row, (1, 2), dilation=2), [[0, 2], [1, 3], [2, 4]])


def test_im2col_times_weight_is_the_textbook_conv():
    cols = ref.im2col(IMAGE.reshape(1, 1, 4, 4), 3)
    _exact(cols @ EDGE.reshape(-1).astype(np.float64), [-1, 1, -1, -3])


def test_col2im_ones_counts_windows():
    # kernel 3, stride 1, padding 1 on 3x3: per axis the real cells are covered 2, 3, 2 times.
    got = ref.col2im(np.ones((9, 9)), (1, 1, 3, 3), 3, padding=1)
    _exact(got, [[[[4, 6, 4], [6, 9, 6], [4, 6, 4]]]])
    # kernel 3, stride 2, padding 1 on 4x4: per axis coverage 1, 2, 1, 1.
    want = np.array([[1, 2, 1, 1], [2, 4, 2, 2], [1, 2, 1, 1], [1, 2, 1, 1]], dtype=np.float64)
    _exact(ref.col2im(np.ones((4, 9)), (1, 1, 4, 4), 3, stride=2, padding=1), want[None, None])
    # two channels, NHWC
    got = ref.col2im(np.ones((4, 18)), (1, 4, 4, 2), 3, stride=2, padding=1, layout="NHWC")
    _exact(got, np.stack([want, want], axis=-1)[None])
    # no padding, kernel 2 on 3x3 (the docstring example)
    _exact(ref.col2im(np.ones((4, 4)), (1, 1, 3, 3), 2), [[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]])


def test_col2im_sums_by_hand():
    # col2im of the hand im2col matrix: each cell times the number of windows covering it.
    counts = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)
    _exact(ref.col2im(COLS_NCHW, (1, 2, 3, 3), 2), X2C * counts)
    _exact(ref.col2im(COLS_NHWC, (1, 3, 3, 2), 2, layout="NHWC"), to_nhwc(X2C * counts))
    # a single 1 at row 3 (output pixel (1,1)), column 5 (c1, kh0, kw1) lands on x[0,1,1,2]
    cols = np.zeros((4, 8))
    cols[3, 5] = 1.0
    want = np.zeros((1, 2, 3, 3))
    want[0, 1, 1, 2] = 1.0
    _exact(ref.col2im(cols, (1, 2, 3, 3), 2), want)


# ============================================================================================
# 2. SciPy
# ============================================================================================


def scipy_conv(x, w, b=None, padding=((0, 0), (0, 0)), groups=1):
    """NCHW/OIHW convolution from correlate2d, one (output, input) channel pair at a time."""
    xp = np.pad(x, ((0, 0), (0, 0)) + tuple(padding))
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    out = []
    for i in range(n):
        chans = []
        for oc in range(o):
            g = oc // og
            acc = sum(correlate2d(xp[i, g * cg + ci], w[oc, ci], mode="valid") for ci in range(cg))
            chans.append(acc + (b[oc] if b is not None else 0.0))
        out.append(chans)
    return np.array(out, dtype=np.float64)


def dilate_kernel(k, dh, dw):
    kh, kw = k.shape
    big = np.zeros(((kh - 1) * dh + 1, (kw - 1) * dw + 1), dtype=k.dtype)
    big[::dh, ::dw] = k
    return big


@pytest.mark.parametrize(
    "image_shape, kernel_shape",
    [((7, 9), (3, 3)), ((5, 5), (5, 5)), ((6, 4), (1, 1)), ((8, 6), (2, 3)), ((4, 7), (4, 1)),
     ((1, 6), (1, 2)), ((3, 3), (3, 3)), ((10, 10), (4, 5))],
)
def test_scipy_valid(image_shape, kernel_shape, rng):
    x = rng.standard_normal(image_shape)
    k = rng.standard_normal(kernel_shape)
    assert_close(ref.conv2d(x, k), correlate2d(x, k, mode="valid"),
                 reduction_length=k.size)


@pytest.mark.parametrize(
    "image_shape, kernel_shape",
    [((7, 9), (3, 3)), ((5, 5), (5, 5)), ((6, 4), (1, 1)), ((8, 6), (3, 5)), ((4, 7), (5, 1)),
     ((2, 2), (3, 3))],
)
def test_scipy_same_odd_kernel(image_shape, kernel_shape, rng):
    x = rng.standard_normal(image_shape)
    k = rng.standard_normal(kernel_shape)
    pad = (kernel_shape[0] // 2, kernel_shape[1] // 2)
    want = correlate2d(x, k, mode="same")
    assert_close(ref.conv2d(x, k, padding=pad), want, reduction_length=k.size)
    # for stride 1 and odd kernels this is also TF 'SAME'
    assert_close(ref.conv2d(x, k, padding="same"), want, reduction_length=k.size)


@pytest.mark.parametrize(
    "image_shape, kernel_shape",
    [((7, 9), (3, 3)), ((5, 5), (5, 5)), ((6, 4), (1, 1)), ((8, 6), (2, 3)), ((4, 7), (4, 2)),
     ((2, 3), (4, 4))],
)
def test_scipy_full(image_shape, kernel_shape, rng):
    x = rng.standard_normal(image_shape)
    k = rng.standard_normal(kernel_shape)
    pad = (kernel_shape[0] - 1, kernel_shape[1] - 1)
    assert_close(ref.conv2d(x, k, padding=pad), correlate2d(x, k, mode="full"),
                 reduction_length=k.size)


def test_scipy_is_correlation_not_convolution(rng):
    # An asymmetric kernel tells correlation from convolution.
    from scipy.signal import convolve2d

    x = rng.standard_normal((6, 6))
    k = np.array([[1.0, 2.0], [3.0, 5.0]])
    got = ref.conv2d(x, k)
    assert_close(got, correlate2d(x, k, mode="valid"))
    assert not np.allclose(got, convolve2d(x, k, mode="valid"))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("c_in, c_out, kernel", [(1, 1, 3), (3, 2, 3), (2, 4, (2, 3)), (4, 1, 1)])
def test_scipy_multichannel(c_in, c_out, kernel, bias, rng):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((2, c_in, 7, 6))
    w = rng.standard_normal((c_out, c_in, kh, kw))
    b = rng.standard_normal(c_out) if bias else None
    n = c_in * kh * kw
    assert_close(ref.conv2d(x, w, b), scipy_conv(x, w, b), reduction_length=n)
    assert_close(ref.conv2d(x, w, b, padding=1), scipy_conv(x, w, b, padding=((1, 1), (1, 1))),
                 reduction_length=n)
    pads = ((0, 2), (1, 0))
    assert_close(ref.conv2d(x, w, b, padding=pads), scipy_conv(x, w, b, padding=pads),
                 reduction_length=n)
    # one image (C, H, W)
    assert_close(ref.conv2d(x[1], w, b), scipy_conv(x[1:], w, b)[0], reduction_length=n)


def test_scipy_relu_fused(rng):
    x = rng.standard_normal((1, 3, 6, 6))
    w = rng.standard_normal((2, 3, 3, 3))
    b = rng.standard_normal(2)
    assert_close(ref.conv2d(x, w, b, activation="relu"), np.maximum(scipy_conv(x, w, b), 0),
                 reduction_length=27)


@pytest.mark.parametrize("stride", [2, 3, (2, 1), (1, 3)])
@pytest.mark.parametrize("padding", [0, 1])
def test_scipy_strided_is_subsampled(stride, padding, rng):
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = rng.standard_normal((1, 2, 9, 8))
    w = rng.standard_normal((3, 2, 3, 3))
    full = scipy_conv(x, w, padding=((padding, padding), (padding, padding)))
    assert_close(ref.conv2d(x, w, stride=stride, padding=padding), full[:, :, ::sh, ::sw],
                 reduction_length=18)


@pytest.mark.parametrize("dilation", [2, 3, (2, 1), (1, 3)])
@pytest.mark.parametrize("padding", [0, 2])
def test_scipy_dilated_is_zero_stuffed_kernel(dilation, padding, rng):
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    x = rng.standard_normal((9, 10))
    k = rng.standard_normal((3, 3))
    want = correlate2d(np.pad(x, padding), dilate_kernel(k, dh, dw), mode="valid")
    assert_close(ref.conv2d(x, k, dilation=dilation, padding=padding), want, reduction_length=9)
    # multi-channel, with stride
    xb = rng.standard_normal((1, 2, 9, 10))
    w = rng.standard_normal((2, 2, 2, 3))
    wd = np.array([[dilate_kernel(w[o, i], dh, dw) for i in range(2)] for o in range(2)])
    want = scipy_conv(xb, wd, padding=((padding, padding), (padding, padding)))[:, :, ::2, ::2]
    assert_close(ref.conv2d(xb, w, stride=2, dilation=dilation, padding=padding), want,
                 reduction_length=12)


@pytest.mark.parametrize(
    "c_in, c_out, groups", [(4, 2, 2), (4, 6, 2), (6, 3, 3), (3, 3, 3), (3, 6, 3), (4, 4, 4)]
)
def test_scipy_groups_concatenate_per_group(c_in, c_out, groups, rng):
    x = rng.standard_normal((2, c_in, 6, 7))
    w = rng.standard_normal((c_out, c_in // groups, 3, 2))
    b = rng.standard_normal(c_out)
    cg, og = c_in // groups, c_out // groups
    want = np.concatenate(
        [scipy_conv(x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], b[g * og:(g + 1) * og])
         for g in range(groups)],
        axis=1,
    )
    assert_close(ref.conv2d(x, w, b, groups=groups), want, reduction_length=cg * 6)
    want_p = np.concatenate(
        [scipy_conv(x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], None,
                    padding=((1, 1), (0, 0)))
         for g in range(groups)],
        axis=1,
    )
    assert_close(ref.conv2d(x, w, groups=groups, padding=(1, 0)), want_p,
                 reduction_length=cg * 6)


@pytest.mark.parametrize(
    "c_in, c_out, groups, stride, padding, dilation",
    [(3, 4, 1, 1, 0, 1), (3, 4, 1, 2, 1, 1), (4, 6, 2, 1, ((1, 0), (2, 1)), 1),
     (4, 4, 4, 1, 1, 2), (2, 3, 1, (2, 1), 0, (1, 2))],
)
def test_scipy_nhwc_is_transposed_nchw(c_in, c_out, groups, stride, padding, dilation, rng):
    x = rng.standard_normal((2, c_in, 8, 9))
    w = rng.standard_normal((c_out, c_in // groups, 3, 3))
    b = rng.standard_normal(c_out)
    if isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    else:
        pads = padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    wd = np.array([[dilate_kernel(w[o, i], dh, dw) for i in range(w.shape[1])]
                   for o in range(c_out)])
    want = scipy_conv(x, wd, b, padding=pads, groups=groups)[:, :, ::sh, ::sw]
    n = (c_in // groups) * 9
    got_nchw = ref.conv2d(x, w, b, stride, padding, dilation, groups)
    assert_close(got_nchw, want, reduction_length=n)
    got_nhwc = ref.conv2d(to_nhwc(x), oihw_to_hwio(w), b, stride, padding, dilation, groups,
                          layout="NHWC")
    assert got_nhwc.flags.c_contiguous
    assert_close(got_nhwc, want.transpose(0, 2, 3, 1), reduction_length=n)
    # one image (H, W, C)
    assert_close(ref.conv2d(to_nhwc(x)[0], oihw_to_hwio(w), b, stride, padding, dilation,
                            groups, layout="nhwc"),
                 want[0].transpose(1, 2, 0), reduction_length=n)


@pytest.mark.parametrize("in_size, k, s, d", [(5, 3, 2, 1), (6, 3, 2, 1), (7, 2, 3, 1),
                                              (8, 4, 1, 1), (9, 3, 1, 2), (6, 2, 2, 2),
                                              (1, 3, 1, 1), (4, 5, 3, 1)])
def test_scipy_same_padding(in_size, k, s, d, rng):
    x = rng.standard_normal((in_size, in_size + 1))
    w = rng.standard_normal((k, k))
    ph = _tf_same_pads(in_size, k, s, d)
    pw = _tf_same_pads(in_size + 1, k, s, d)
    want = correlate2d(np.pad(x, (ph, pw)), dilate_kernel(w, d, d), mode="valid")[::s, ::s]
    got = ref.conv2d(x, w, stride=s, dilation=d, padding="same")
    assert got.shape == (math.ceil(in_size / s), math.ceil((in_size + 1) / s))
    assert_close(got, want, reduction_length=k * k)


# ============================================================================================
# 3. PyTorch
# ============================================================================================


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def torch_conv(x, w, b, stride, pads, dilation, groups):
    """NCHW conv2d via torch with explicit ((top, bottom), (left, right)) zero padding."""
    (pt, pb), (pl, pr) = pads
    xt = F.pad(_t(x), (pl, pr, pt, pb))
    bt = None if b is None else _t(b)
    return F.conv2d(xt, _t(w), bt, stride=stride, padding=0, dilation=dilation,
                    groups=groups).numpy()


def _pads(padding, hw, k, s, d):
    """((top, bottom), (left, right)) for the padding forms used in the torch grids."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        return (_tf_same_pads(hw[0], k[0], s[0], d[0]), _tf_same_pads(hw[1], k[1], s[1], d[1]))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, bias)
CONV_GRID = [
    pytest.param(2, 3, 4, 8, 8, 3, 1, 1, 1, 1, True, id="3x3-p1"),
    pytest.param(1, 3, 5, 9, 7, 3, 2, 0, 1, 1, True, id="stride2"),
    pytest.param(2, 2, 3, 8, 9, 3, (2, 1), (1, 0), 1, 1, False, id="stride2x1-pad1x0"),
    pytest.param(1, 2, 4, 10, 9, 3, 1, 2, 2, 1, True, id="dilation2"),
    pytest.param(1, 3, 2, 9, 11, (2, 3), 1, 0, (1, 3), 1, False, id="dilation1x3"),
    pytest.param(2, 4, 6, 7, 6, 3, 1, 1, 1, 2, True, id="groups2"),
    pytest.param(1, 6, 6, 7, 8, 3, 1, 1, 1, 3, True, id="groups3"),
    pytest.param(2, 4, 4, 8, 8, 3, 1, 1, 1, 4, True, id="depthwise"),
    pytest.param(1, 3, 6, 8, 7, 3, 2, 1, 1, 3, False, id="depthwise-multiplier2-s2"),
    pytest.param(1, 3, 5, 6, 6, 1, 1, 0, 1, 1, True, id="1x1"),
    pytest.param(1, 2, 3, 6, 7, (2, 3), 1, 0, 1, 1, True, id="kernel2x3"),
    pytest.param(1, 2, 2, 5, 4, (5, 4), 1, 0, 1, 1, True, id="kernel=input"),
    pytest.param(2, 3, 4, 7, 8, 3, 1, ((0, 2), (1, 0)), 1, 1, True, id="asym-pad"),
    pytest.param(1, 2, 3, 7, 6, 3, 2, ((2, 1), (0, 3)), (2, 1), 1, True, id="asym-pad-s2-dil"),
    pytest.param(1, 3, 4, 6, 7, 3, 2, "same", 1, 1, True, id="same-s2"),
    pytest.param(1, 2, 4, 9, 8, (3, 2), (3, 2), "same", (2, 1), 2, True, id="same-s3x2-dil"),
    pytest.param(1, 2, 3, 7, 7, 3, 1, "valid", 1, 1, False, id="valid"),
    pytest.param(1, 1, 2, 5, 5, 2, 3, 1, 1, 1, True, id="stride>kernel"),
    pytest.param(1, 8, 16, 9, 9, 3, 1, 1, 1, 1, True, id="wide"),
]


@needs_torch
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, bias", CONV_GRID
)
def test_torch_conv2d(N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, bias,
                      dtype, layout, rng):
    kh, kw = _pair(kernel)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    w = rng.standard_normal((C_out, C_in // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype) if bias else None
    pads = _pads(padding, (H, W), (kh, kw), _pair(stride), _pair(dilation))
    want = torch_conv(x, w, b, stride, pads, dilation, groups)
    n = (C_in // groups) * kh * kw
    if layout == "NCHW":
        got = ref.conv2d(x, w, b, stride, padding, dilation, groups)
        assert_close(got, want, dtype=dtype, reduction_length=n)
    else:
        got = ref.conv2d(to_nhwc(x), oihw_to_hwio(w), b, stride, padding, dilation, groups,
                         layout="NHWC")
        assert_close(got, want.transpose(0, 2, 3, 1), dtype=dtype, reduction_length=n)
    # fused relu
    if layout == "NCHW":
        got = ref.conv2d(x, w, b, stride, padding, dilation, groups, activation="relu")
        assert_close(got, torch.relu(_t(want)).numpy(), dtype=dtype, reduction_length=n)


@needs_torch
def test_torch_conv2d_same_stride1_native(rng):
    # torch's own padding='same' (stride 1): odd and even kernels, dilation. For an even
    # extent torch also puts the extra cell at the bottom/right, like TensorFlow.
    for k, d in [(3, 1), (4, 1), (2, 3), ((2, 5), (2, 1))]:
        x = rng.standard_normal((1, 2, 7, 8))
        w = rng.standard_normal((3, 2) + _pair(k))
        with warnings.catch_warnings():
            # torch warns that an even extent needs a padded copy; not our concern
            warnings.simplefilter("ignore", UserWarning)
            want = F.conv2d(_t(x), _t(w), padding="same", dilation=d).numpy()
        assert_close(ref.conv2d(x, w, padding="same", dilation=d), want,
                     reduction_length=w[0].size)


@needs_torch
def test_torch_conv2d_mixed_dtype_and_bias_cast(rng):
    # float32 x with float64 weight computes in float64
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3))
    want = F.conv2d(_t(x).double(), _t(w)).numpy()
    assert_close(ref.conv2d(x, w), want, dtype=np.float64, reduction_length=18)
    # float64 bias with float32 x, weight: the result stays float32
    w32 = w.astype(np.float32)
    b = rng.standard_normal(3)
    want = F.conv2d(_t(x), _t(w32), _t(b.astype(np.float32))).numpy()
    assert_close(ref.conv2d(x, w32, b), want, dtype=np.float32, reduction_length=18)


# (H, W, kernel, stride, padding) for pooling (symmetric padding: what torch accepts)
POOL_GRID = [
    pytest.param(6, 6, 2, None, 0, id="k2"),
    pytest.param(7, 8, 3, None, 1, id="k3-p1"),
    pytest.param(7, 7, 3, 2, 1, id="k3-s2-p1"),
    pytest.param(6, 9, (2, 3), None, 0, id="k2x3"),
    pytest.param(8, 7, (3, 2), (2, 1), (1, 0), id="k3x2-s2x1-p1x0"),
    pytest.param(5, 5, 2, 2, 0, id="H5-k2-s2"),
    pytest.param(5, 5, 2, 2, 1, id="H5-k2-s2-p1"),
    pytest.param(4, 4, 2, 2, 1, id="H4-k2-s2-p1"),
    pytest.param(5, 5, 3, 3, 1, id="H5-k3-s3-p1"),
    pytest.param(6, 6, 3, 3, 1, id="H6-k3-s3-p1"),
    pytest.param(9, 10, 2, 3, 0, id="stride>kernel"),
    pytest.param(7, 9, 2, (3, 4), 1, id="stride>kernel-p1"),
    pytest.param(5, 6, 1, 1, 0, id="k1"),
    pytest.param(4, 5, (4, 5), 1, (2, 2), id="k=input-p2"),
]


@needs_torch
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("H, W, kernel, stride, padding", POOL_GRID)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_max_pool2d(H, W, kernel, stride, padding, ceil_mode, dtype, layout, rng):
    # small integers: many ties, exact in both dtypes
    x = rng.integers(-4, 5, size=(2, 3, H, W)).astype(dtype)
    tv, ti = F.max_pool2d(_t(x), kernel, stride, padding, ceil_mode=ceil_mode,
                          return_indices=True)
    tv, ti = tv.numpy(), ti.numpy()
    xin = x if layout == "NCHW" else to_nhwc(x)
    v, i = ref.max_pool2d(xin, kernel, stride, padding, layout=layout, ceil_mode=ceil_mode,
                          return_indices=True)
    v_plain = ref.max_pool2d(xin, kernel, stride, padding, layout=layout, ceil_mode=ceil_mode)
    if layout == "NHWC":
        v, i, v_plain = (np.moveaxis(a, -1, 1) for a in (v, i, v_plain))
    assert v.dtype == np.dtype(dtype) and i.dtype == np.int64
    assert v.shape == tv.shape
    assert_array_equal(v, tv)
    assert_array_equal(v_plain, tv)
    assert_array_equal(i, ti)


@needs_torch
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("H, W, kernel, stride, padding", POOL_GRID)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_avg_pool2d(H, W, kernel, stride, padding, ceil_mode, dtype, layout, rng):
    x = rng.standard_normal((2, 3, H, W)).astype(dtype)
    xin = x if layout == "NCHW" else to_nhwc(x)
    kh, kw = _pair(kernel)
    for count_include_pad in (True, False):
        for divisor_override in (None, 3):
            kw_args = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                           divisor_override=divisor_override)
            want = F.avg_pool2d(_t(x), kernel, stride, padding, **kw_args).numpy()
            got = ref.avg_pool2d(xin, kernel, stride, padding, layout=layout, **kw_args)
            if layout == "NHWC":
                got = np.moveaxis(got, -1, 1)
            assert_close(got, want, dtype=dtype, reduction_length=kh * kw, err_msg=str(kw_args))


@needs_torch
@pytest.mark.parametrize("H, W, kernel, stride, padding", POOL_GRID[:8])
def test_torch_max_pool2d_nan(H, W, kernel, stride, padding, rng):
    # Values always agree; indices only where the window has no NaN (torch reports the last
    # NaN of a window, fastconv documents the first).
    x = rng.standard_normal((2, 3, H, W))
    x[rng.random(x.shape) < 0.15] = np.nan
    x[0, 0, 0, 0] = np.nan
    x[1, 2, -1, -1] = -np.inf
    for ceil_mode in (False, True):
        tv, ti = F.max_pool2d(_t(x), kernel, stride, padding, ceil_mode=ceil_mode,
                              return_indices=True)
        v, i = ref.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                              return_indices=True)
        assert_array_equal(v, tv.numpy())   # assert_array_equal treats NaN == NaN
        has_nan = F.max_pool2d(_t(np.isnan(x).astype(np.float64)), kernel, stride, padding,
                               ceil_mode=ceil_mode).numpy() > 0
        assert has_nan.any()
        assert_array_equal(np.isnan(v), has_nan)
        assert_array_equal(i[~has_nan], ti.numpy()[~has_nan])
        # where there is a NaN the index points at a NaN cell of the input
        planes = x.reshape(2, 3, -1)
        picked = np.take_along_axis(planes, i.reshape(2, 3, -1), axis=-1).reshape(i.shape)
        assert np.isnan(picked[has_nan]).all()


@needs_torch
def test_torch_max_pool2d_several_nans_index_is_last():
    # several NaNs in one window: the index is the last NaN's, in torch and in the reference
    x = np.array([[[[1.0, NAN], [NAN, 5.0]]]])
    tv, ti = F.max_pool2d(_t(x), 2, return_indices=True)
    v, i = ref.max_pool2d(x, 2, return_indices=True)
    assert_array_equal(v, tv.numpy())
    assert int(ti) == 2 and int(i[0, 0, 0, 0]) == 2


@needs_torch
@pytest.mark.parametrize(
    "N, C, H, W, kernel, stride, padding, dilation",
    [
        (1, 2, 3, 3, 2, 1, 0, 1),
        (2, 3, 6, 7, 3, 1, 1, 1),
        (1, 2, 7, 8, 3, 2, 1, 1),
        (1, 2, 8, 9, (2, 3), (2, 1), (1, 0), 1),
        (2, 1, 9, 9, 3, 1, 2, 2),
        (1, 3, 7, 10, (3, 2), 3, (0, 2), (1, 3)),
        (1, 1, 5, 5, 5, 1, 0, 1),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_torch_unfold_fold(N, C, H, W, kernel, stride, padding, dilation, dtype, rng):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    u = F.unfold(_t(x), kernel, dilation=dilation, padding=padding, stride=stride).numpy()
    L = u.shape[2]
    want = u.transpose(0, 2, 1).reshape(N * L, -1)
    got = ref.im2col(x, kernel, stride, padding, dilation)
    assert got.dtype == np.dtype(dtype)
    assert_array_equal(got, want)
    # NHWC: columns (kh, kw, c) instead of (c, kh, kw)
    kh, kw = _pair(kernel)
    want_nhwc = want.reshape(N * L, C, kh, kw).transpose(0, 2, 3, 1).reshape(N * L, -1)
    assert_array_equal(ref.im2col(to_nhwc(x), kernel, stride, padding, dilation, layout="NHWC"),
                       want_nhwc)

    cols = rng.standard_normal(want.shape).astype(dtype)
    folded = F.fold(_t(cols.reshape(N, L, -1).transpose(0, 2, 1)), (H, W), kernel,
                    dilation=dilation, padding=padding, stride=stride).numpy()
    k_cover = kh * kw   # at most this many column entries land on one cell
    assert_close(ref.col2im(cols, x.shape, kernel, stride, padding, dilation), folded,
                 dtype=dtype, reduction_length=k_cover)
    cols_nhwc = cols.reshape(N * L, C, kh, kw).transpose(0, 2, 3, 1).reshape(N * L, -1)
    assert_close(ref.col2im(cols_nhwc, to_nhwc(x).shape, kernel, stride, padding, dilation,
                            layout="NHWC"),
                 to_nhwc(folded), dtype=dtype, reduction_length=k_cover)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_torch_relu(dtype, rng):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x.flat[:6] = [NAN, INF, -INF, -0.0, 0.0, -1e-30]
    want = torch.relu(_t(x)).numpy()
    got = ref.relu(x)
    assert got.dtype == np.dtype(dtype)
    assert_array_equal(got, want)


# ---- hypothesis ----------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = ((draw(st.integers(0, 2)), draw(st.integers(0, 2))),
            (draw(st.integers(0, 2)), draw(st.integers(0, 2))))
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    h = draw(st.integers(max(1, eh - sum(pads[0])), eh + 5))
    w = draw(st.integers(max(1, ew - sum(pads[1])), ew + 5))
    return dict(
        n=draw(st.integers(1, 2)), c_in=c_in, c_out=c_out, h=h, w=w, k=(kh, kw), s=(sh, sw),
        d=(dh, dw), pads=pads, groups=groups, bias=draw(st.booleans()),
        padding_form=draw(st.sampled_from(["explicit", "same"])),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**32 - 1)),
    )


@needs_torch
@given(conv_cases())
def test_torch_conv2d_hypothesis(case):
    rng = np.random.default_rng(case["seed"])
    dtype = case["dtype"]
    x = rng.standard_normal((case["n"], case["c_in"], case["h"], case["w"])).astype(dtype)
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"]) + case["k"])
    w = w.astype(dtype)
    b = rng.standard_normal(case["c_out"]).astype(dtype) if case["bias"] else None
    if case["padding_form"] == "same":
        padding = "same"
        pads = _pads("same", (case["h"], case["w"]), case["k"], case["s"], case["d"])
    else:
        padding = pads = case["pads"]
    want = torch_conv(x, w, b, case["s"], pads, case["d"], case["groups"])
    n = w[0].size
    if case["layout"] == "NCHW":
        got = ref.conv2d(x, w, b, case["s"], padding, case["d"], case["groups"])
    else:
        got = ref.conv2d(to_nhwc(x), oihw_to_hwio(w), b, case["s"], padding, case["d"],
                         case["groups"], layout="NHWC")
        want = want.transpose(0, 2, 3, 1)
    assert_close(got, want, dtype=dtype, reduction_length=n, err_msg=str(case))


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), kh + 6))
    w = draw(st.integers(max(1, kw - 2 * pw), kw + 6))
    return dict(
        n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), h=h, w=w, k=(kh, kw),
        s=stride, p=(ph, pw), ceil_mode=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _pool_input(case, integers):
    rng = np.random.default_rng(case["seed"])
    shape = (case["n"], case["c"], case["h"], case["w"])
    x = rng.integers(-3, 4, size=shape) if integers else rng.standard_normal(shape)
    x = x.astype(case["dtype"])
    return x, (x if case["layout"] == "NCHW" else to_nhwc(x))


def _from_layout(a, layout):
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


@needs_torch
@given(pool_cases())
def test_torch_max_pool2d_hypothesis(case):
    x, xin = _pool_input(case, integers=True)
    tv, ti = F.max_pool2d(_t(x), case["k"], case["s"], case["p"], ceil_mode=case["ceil_mode"],
                          return_indices=True)
    v, i = ref.max_pool2d(xin, case["k"], case["s"], case["p"], layout=case["layout"],
                          ceil_mode=case["ceil_mode"], return_indices=True)
    v, i = _from_layout(v, case["layout"]), _from_layout(i, case["layout"])
    assert v.dtype == np.dtype(case["dtype"])
    assert_array_equal(v, tv.numpy(), err_msg=str(case))
    assert_array_equal(i, ti.numpy(), err_msg=str(case))


@needs_torch
@given(pool_cases(), st.booleans(), st.sampled_from([None, 1, 2, 7]))
def test_torch_avg_pool2d_hypothesis(case, count_include_pad, divisor_override):
    x, xin = _pool_input(case, integers=False)
    kw_args = dict(ceil_mode=case["ceil_mode"], count_include_pad=count_include_pad,
                   divisor_override=divisor_override)
    want = F.avg_pool2d(_t(x), case["k"], case["s"], case["p"], **kw_args).numpy()
    got = ref.avg_pool2d(xin, case["k"], case["s"], case["p"], layout=case["layout"], **kw_args)
    assert_close(_from_layout(got, case["layout"]), want, dtype=case["dtype"],
                 reduction_length=case["k"][0] * case["k"][1], err_msg=str((case, kw_args)))


# ============================================================================================
# 4. the reference refuses bad input
# ============================================================================================


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_error_pool_padding_more_than_half_kernel(op):
    x = np.ones((1, 1, 6, 6))
    f = getattr(ref, op)
    with pytest.raises(ValueError, match=op):
        f(x, 2, padding=2)
    with pytest.raises(ValueError, match=op):
        f(x, 3, padding=((0, 2), (0, 0)))
    with pytest.raises(ValueError, match=op):
        f(x, (3, 4), padding=(1, 3))
    f(x, 2, padding=1)   # exactly half is fine


def test_error_kernel_larger_than_input():
    with pytest.raises(ValueError, match="conv2d"):
        ref.conv2d(np.ones((3, 3)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="conv2d"):
        ref.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), dilation=3)
    with pytest.raises(ValueError, match="max_pool2d"):
        ref.max_pool2d(np.ones((1, 1, 3, 3)), 4)
    with pytest.raises(ValueError, match="avg_pool2d"):
        ref.avg_pool2d(np.ones((1, 1, 3, 5)), (4, 2))
    with pytest.raises(ValueError, match="im2col"):
        ref.im2col(np.ones((1, 1, 3, 3)), 4)


def test_error_complex_dtype():
    z = np.ones((1, 1, 4, 4), dtype=np.complex128)
    with pytest.raises(TypeError, match="conv2d"):
        ref.conv2d(z, np.ones((1, 1, 3, 3)))
    with pytest.raises(TypeError, match="conv2d"):
        ref.conv2d(np.ones((1, 1, 4, 4)), z[..., :3, :3])
    with pytest.raises(TypeError, match="relu"):
        ref.relu(z)
    with pytest.raises(TypeError, match="max_pool2d"):
        ref.max_pool2d(z, 2)
    with pytest.raises(TypeError, match="avg_pool2d"):
        ref.avg_pool2d(z, 2)
    with pytest.raises(TypeError, match="im2col"):
        ref.im2col(z, 2)
    with pytest.raises(TypeError, match="col2im"):
        ref.col2im(np.ones((9, 4), dtype=np.complex64), (1, 1, 4, 4), 2)


def test_error_channel_mismatch_and_bad_groups():
    with pytest.raises(ValueError, match="conv2d"):
        ref.conv2d(np.ones((1, 3, 5, 5)), np.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="conv2d"):
        ref.conv2d(np.ones((1, 4, 5, 5)), np.ones((3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="conv2d"):
        ref.conv2d(np.ones((1, 2, 5, 5)), np.ones((4, 2, 3, 3)), np.ones(3))
