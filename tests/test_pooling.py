"""max_pool2d and avg_pool2d: fast kernels vs fastconv.reference, PyTorch, and the API contract."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import fastconv
from fastconv import reference
from _helpers import (
    DTYPES,
    HAVE_TORCH,
    GuardedBuffers,
    LAYOUTS,
    TORCH_REASON,
    assert_close,
    memory_variants,
    to_nhwc,
)

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F

OPS = ("max", "avg")
FAST = {"max": fastconv.max_pool2d, "avg": fastconv.avg_pool2d}
REF = {"max": reference.max_pool2d, "avg": reference.avg_pool2d}
FUNC_NAME = {"max": "max_pool2d", "avg": "avg_pool2d"}


def _data(rng, shape, op, dtype=np.float64):
    """Max pooling gets small integers (many ties, exact in any dtype); average gets normals."""
    if op == "max":
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _in_layout(x_nchw, layout):
    return x_nchw if layout == "NCHW" else to_nhwc(x_nchw)


def _assert_bit_identical(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------
# the parametrised grid

# (H, W, kernel_size, stride, padding); each is run with ceil_mode False and True.
GEOMETRIES = [
    pytest.param(5, 6, 1, None, 0, id="k1"),
    pytest.param(6, 7, 2, None, 0, id="k2-default-stride"),
    pytest.param(7, 8, 3, None, 1, id="k3-p1-default-stride"),
    pytest.param(6, 9, (2, 3), None, 0, id="k2x3-default-stride"),
    pytest.param(6, 7, 3, 1, 1, id="k3-s1-p1"),
    pytest.param(5, 6, 2, 1, 0, id="k2-s1"),
    pytest.param(7, 8, 3, 2, 1, id="k3-s2-p1"),
    pytest.param(8, 9, 3, 3, 0, id="k3-s3"),
    pytest.param(9, 10, 2, 3, 0, id="stride>kernel"),
    pytest.param(7, 9, 2, (3, 4), 1, id="stride>kernel-p1"),
    pytest.param(6, 8, (2, 3), (1, 2), (1, 1), id="k2x3-s1x2-pair-padding"),
    pytest.param(7, 7, 3, 2, (0, 1), id="pair-padding-0-1"),
    pytest.param(7, 8, 3, 2, ((0, 1), (1, 0)), id="asymmetric-padding"),
    pytest.param(6, 7, (3, 2), 2, "same", id="same-s2"),
    pytest.param(5, 6, 3, 1, "same", id="same-s1"),
    pytest.param(7, 8, 3, 2, "valid", id="valid"),
    # ceil_mode specials
    pytest.param(5, 5, 2, 2, 0, id="ceil-adds-window"),
    pytest.param(5, 5, 2, 2, 1, id="H5-k2-s2-p1"),
    pytest.param(4, 4, 3, 3, 1, id="H4-k3-s3-p1"),
    pytest.param(5, 5, 3, 3, 1, id="ceil-last-window-dropped"),
    pytest.param(3, 3, 2, 2, 1, id="ceil-last-window-dropped-small"),
    pytest.param(6, 6, 3, 3, 1, id="ceil-adds-window-p1"),
]


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_matches_reference(layout, dtype, H, W, kernel_size, stride, padding,
                                    ceil_mode, rng):
    x = _in_layout(_data(rng, (2, 3, H, W), "max", dtype), layout)
    kw = dict(layout=layout, ceil_mode=ceil_mode)
    got = fastconv.max_pool2d(x, kernel_size, stride, padding, **kw)
    want = reference.max_pool2d(x, kernel_size, stride, padding, **kw)
    assert got.dtype == np.dtype(dtype)
    assert_array_equal(got, want)

    got_v, got_i = fastconv.max_pool2d(x, kernel_size, stride, padding, return_indices=True, **kw)
    want_v, want_i = reference.max_pool2d(x, kernel_size, stride, padding, return_indices=True,
                                          **kw)
    assert got_v.dtype == np.dtype(dtype)
    assert got_i.dtype == np.int64
    assert got_i.shape == got_v.shape == want_v.shape
    assert_array_equal(got_v, want_v)
    assert_array_equal(got_v, got)
    assert_array_equal(got_i, want_i)


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool_matches_reference(layout, dtype, H, W, kernel_size, stride, padding,
                                    ceil_mode, rng):
    x = _in_layout(_data(rng, (2, 3, H, W), "avg", dtype), layout)
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    for count_include_pad in (True, False):
        for divisor_override in (None, 3):
            kw = dict(layout=layout, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
            got = fastconv.avg_pool2d(x, kernel_size, stride, padding, **kw)
            want = reference.avg_pool2d(x, kernel_size, stride, padding, **kw)
            assert_close(got, want, dtype=dtype, reduction_length=k[0] * k[1], err_msg=str(kw))


@pytest.mark.parametrize(
    "H, kernel_size, stride, padding, floor_size, ceil_size",
    [
        (5, 2, 2, 0, 2, 3),   # ceil_mode adds a window (partly past the input)
        (6, 3, 3, 1, 2, 3),   # adds a window that starts inside the input
        (5, 2, 2, 1, 3, 3),   # ceil would add a window starting in the padding: dropped
        (4, 3, 3, 1, 2, 2),   # the windows tile the padded input: same size either way
        (5, 3, 3, 1, 2, 2),   # dropped, as above
        (3, 2, 2, 1, 2, 2),   # likewise
    ],
)
@pytest.mark.parametrize("op", OPS)
def test_ceil_mode_output_size(op, H, kernel_size, stride, padding, floor_size, ceil_size):
    x = np.arange(float(H * H)).reshape(1, 1, H, H)
    for ceil_mode, size in ((False, floor_size), (True, ceil_size)):
        got = FAST[op](x, kernel_size, stride, padding, ceil_mode=ceil_mode)
        assert got.shape == (1, 1, size, size), (ceil_mode, got.shape)
        if HAVE_TORCH:
            tf = F.max_pool2d if op == "max" else F.avg_pool2d
            t = tf(torch.from_numpy(x), kernel_size, stride, padding, ceil_mode=ceil_mode)
            assert tuple(t.shape) == got.shape
            assert_close(got, t.numpy())


def test_ceil_mode_overhang_not_counted_in_divisor():
    # H = W = 5, k=2, s=2: the last window holds one real row; with count_include_pad=True it
    # still averages over real cells only, because the ceil_mode overhang is not padding.
    x = np.ones((1, 1, 5, 5))
    got = fastconv.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=True)
    assert_array_equal(got, np.ones((1, 1, 3, 3)))
    got = fastconv.avg_pool2d(x, 2, ceil_mode=True, divisor_override=4)
    want = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 0.5], [0.5, 0.5, 0.25]])
    assert_array_equal(got[0, 0], want)


# --------------------------------------------------------------------------------------------
# max pooling: NaN, inf, ties, indices


@pytest.mark.parametrize("C", [1, 3, 5, 17])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_max_pool_nan_window(where, dtype, layout, C, rng):
    # 6x6 planes, 3x3 windows with stride 3: window (1, 0) covers rows 3..5, cols 0..2.
    x = rng.standard_normal((2, C, 6, 6)).astype(dtype)
    cell = {"first": (3, 0), "middle": (4, 1), "last": (5, 2)}[where]
    nan_channels = list(range(0, C, 2))  # every other channel, so neighbours stay finite
    for c in nan_channels:
        x[1, c][cell] = np.nan
    xl = _in_layout(x, layout)
    values, indices = fastconv.max_pool2d(xl, 3, layout=layout, return_indices=True)
    ref_v, ref_i = reference.max_pool2d(xl, 3, layout=layout, return_indices=True)
    assert_array_equal(values, ref_v)
    assert_array_equal(indices, ref_i)
    if layout == "NHWC":
        values, indices = np.moveaxis(values, -1, 1), np.moveaxis(indices, -1, 1)
    for c in range(C):
        if c in nan_channels:
            assert np.isnan(values[1, c, 1, 0])
            assert indices[1, c, 1, 0] == cell[0] * 6 + cell[1]
        else:
            assert not np.isnan(values[1, c, 1, 0])
    # Only that one window of each NaN channel is NaN.
    assert np.isnan(values).sum() == len(nan_channels)


@pytest.mark.parametrize("C", [1, 3, 5, 17])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_several_nans_index_is_last_nan(layout, C, rng):
    x = rng.standard_normal((1, C, 4, 4))
    x[0, :, 0, 1] = np.nan    # window (0, 0): NaNs at flat 1 and 4, a huge value at 5
    x[0, :, 1, 0] = np.nan
    x[0, :, 1, 1] = 1e300
    x[0, :, 3, 3] = np.nan    # window (1, 1): NaN at its last cell, inf before it
    x[0, :, 2, 2] = np.inf
    values, indices = fastconv.max_pool2d(_in_layout(x, layout), 2, layout=layout,
                                          return_indices=True)
    if layout == "NHWC":
        values, indices = np.moveaxis(values, -1, 1), np.moveaxis(indices, -1, 1)
    assert np.isnan(values[0, :, 0, 0]).all() and np.isnan(values[0, :, 1, 1]).all()
    assert (indices[0, :, 0, 0] == 4).all()    # the window's last NaN (PyTorch's CPU rule)
    assert (indices[0, :, 1, 1] == 15).all()


@pytest.mark.parametrize("C", [1, 3, 17])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_max_pool_all_neg_inf_window(dtype, layout, C):
    x = np.full((1, C, 4, 4), -np.inf, dtype=dtype)
    # Padded windows: every real cell is -inf, so padding (also -inf) must not win the index.
    values, indices = fastconv.max_pool2d(_in_layout(x, layout), 3, stride=2, padding=1,
                                          layout=layout, return_indices=True)
    if layout == "NHWC":
        values, indices = np.moveaxis(values, -1, 1), np.moveaxis(indices, -1, 1)
    assert values.shape == (1, C, 2, 2)
    assert np.isneginf(values).all()
    # First real cell of each window: rows/cols start at max(0, 2*o - 1).
    first = np.array([[0 * 4 + 0, 0 * 4 + 1], [1 * 4 + 0, 1 * 4 + 1]])
    assert_array_equal(indices, np.broadcast_to(first, indices.shape))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_inf_and_mixed(layout):
    x = np.array([[[[1.0, np.inf, -np.inf, -np.inf],
                    [np.inf, 0.0, -np.inf, -5.0],
                    [-np.inf, -np.inf, 2.0, 2.0],
                    [-np.inf, -np.inf, 2.0, 7.0]]]])
    values, indices = fastconv.max_pool2d(_in_layout(x, layout), 2, layout=layout,
                                          return_indices=True)
    if layout == "NHWC":
        values, indices = np.moveaxis(values, -1, 1), np.moveaxis(indices, -1, 1)
    assert_array_equal(values[0, 0], [[np.inf, -5.0], [-np.inf, 7.0]])
    assert_array_equal(indices[0, 0], [[1, 7], [8, 15]])


@pytest.mark.parametrize("C", [1, 5, 17])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_ties_first_max_wins(layout, C):
    x = np.zeros((2, C, 4, 6))
    x[:, :, 1, 1] = 5.0      # window (0, 0): max 5 at flat 6 and 7; row-major first is 6
    x[:, :, 1, 0] = 5.0
    x[:, :, 0, 4] = 3.0      # window (0, 2): 3 at 4, 5, 11
    x[:, :, 0, 5] = 3.0
    x[:, :, 1, 5] = 3.0
    values, indices = fastconv.max_pool2d(_in_layout(x, layout), 2, layout=layout,
                                          return_indices=True)
    if layout == "NHWC":
        values, indices = np.moveaxis(values, -1, 1), np.moveaxis(indices, -1, 1)
    assert_array_equal(values[:, :, 0, 0], 5.0)
    assert_array_equal(indices[:, :, 0, 0], 6)
    assert_array_equal(indices[:, :, 0, 1], 2)     # all zeros: first cell (0, 2)
    assert_array_equal(indices[:, :, 0, 2], 4)
    assert_array_equal(indices[:, :, 1, 0], 12)    # all zeros, window starting at (2, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_indices_are_plane_offsets(layout, rng):
    N, C, H, W = 2, 3, 7, 9
    x = rng.standard_normal((N, C, H, W))
    values, indices = fastconv.max_pool2d(_in_layout(x, layout), 3, stride=2, padding=1,
                                          layout=layout, return_indices=True)
    assert values.shape == indices.shape
    assert values.shape == ((N, C, 4, 5) if layout == "NCHW" else (N, 4, 5, C))
    if layout == "NHWC":
        values, indices = np.moveaxis(values, -1, 1), np.moveaxis(indices, -1, 1)
    assert indices.min() >= 0 and indices.max() < H * W
    gathered = np.take_along_axis(x.reshape(N, C, H * W), indices.reshape(N, C, -1), axis=2)
    assert_array_equal(gathered.reshape(values.shape), values)
    # Each index lies inside its own window.
    h, w = indices // W, indices % W
    oh = np.arange(4)[:, None]
    ow = np.arange(5)[None, :]
    assert ((h >= 2 * oh - 1) & (h <= 2 * oh + 1)).all()
    assert ((w >= 2 * ow - 1) & (w <= 2 * ow + 1)).all()


def test_max_pool_nhwc_indices_match_nchw(rng):
    x = rng.integers(-3, 4, size=(2, 5, 7, 6)).astype(np.float64)
    v1, i1 = fastconv.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    v2, i2 = fastconv.max_pool2d(to_nhwc(x), 3, 2, 1, layout="NHWC", ceil_mode=True,
                                 return_indices=True)
    assert_array_equal(to_nhwc(v1), v2)
    assert_array_equal(to_nhwc(i1), i2)


# --------------------------------------------------------------------------------------------
# ranks, empty batch, memory layouts, dtypes


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_unbatched_inputs(op, layout, rng):
    x4 = _in_layout(_data(rng, (1, 3, 7, 6), op), layout)
    kw = dict(stride=2, padding=1, layout=layout)
    if op == "max":
        kw["return_indices"] = True
    full = FAST[op](x4, 3, **kw)
    # 3-D: one image.
    one = FAST[op](x4[0], 3, **kw)
    if op == "max":
        assert one[0].shape == one[1].shape == full[0].shape[1:]
        assert_array_equal(one[0], full[0][0])
        assert_array_equal(one[1], full[1][0])
    else:
        assert one.shape == full.shape[1:]
        assert_array_equal(one, full[0])
    # 2-D: one single-channel plane.
    plane = x4[0, 1] if layout == "NCHW" else x4[0, :, :, 1]
    got = FAST[op](plane, 3, **kw)
    want = REF[op](plane, 3, **kw)
    if op == "max":
        assert got[0].shape == got[1].shape == (4, 3)
        assert_array_equal(got[0], want[0])
        assert_array_equal(got[1], want[1])
        full_c1 = full[0][0, 1] if layout == "NCHW" else full[0][0, :, :, 1]
        assert_array_equal(got[0], full_c1)
    else:
        assert got.shape == (4, 3)
        assert_close(got, want)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch(op, layout):
    x = np.zeros((0, 3, 6, 5) if layout == "NCHW" else (0, 6, 5, 3), dtype=np.float32)
    want_shape = (0, 3, 3, 2) if layout == "NCHW" else (0, 3, 2, 3)
    if op == "max":
        v, i = fastconv.max_pool2d(x, 2, layout=layout, return_indices=True)
        assert v.shape == i.shape == want_shape
        assert v.dtype == np.float32 and i.dtype == np.int64
    else:
        y = fastconv.avg_pool2d(x, 2, layout=layout)
        assert y.shape == want_shape and y.dtype == np.float32


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_memory_variants_bit_identical(op, layout, dtype, rng):
    x = _in_layout(rng.standard_normal((2, 3, 7, 8)).astype(dtype), layout)
    kw = dict(stride=2, padding=1, layout=layout, ceil_mode=True)
    if op == "max":
        kw["return_indices"] = True
    base = FAST[op](x, 3, **kw)
    for name, variant in memory_variants(x):
        got = FAST[op](variant, 3, **kw)
        if op == "max":
            _assert_bit_identical(got[0], base[0])
            _assert_bit_identical(got[1], base[1])
        else:
            _assert_bit_identical(got, base)
        assert_array_equal(variant, x, err_msg=f"{name} input modified")


@pytest.mark.parametrize("op", OPS)
def test_list_input(op, rng):
    x = _data(rng, (2, 2, 5, 5), op)
    got = FAST[op](x.tolist(), 2, 1, 1)
    want = FAST[op](x, 2, 1, 1)
    assert got.dtype == np.float64
    assert_array_equal(got, want)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [
        (np.float16, np.float32),
        (np.int8, np.float64),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.uint8, np.float64),
        (np.bool_, np.float64),
    ],
    ids=lambda d: np.dtype(d).name,
)
def test_dtype_promotion(op, in_dtype, out_dtype, rng):
    x = rng.integers(0, 2 if in_dtype is np.bool_ else 5, size=(1, 2, 6, 6)).astype(in_dtype)
    got = FAST[op](x, 2, padding=1)
    assert got.dtype == np.dtype(out_dtype)
    want = REF[op](x.astype(out_dtype), 2, padding=1)
    assert_close(got, want, dtype=out_dtype, reduction_length=4)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object, "U3"], ids=str)
def test_unsupported_dtype_is_type_error(op, dtype):
    x = np.zeros((1, 1, 4, 4)).astype(dtype)
    with pytest.raises(TypeError, match=rf"{FUNC_NAME[op]}: x has dtype"):
        FAST[op](x, 2)


# --------------------------------------------------------------------------------------------
# out=


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_in_place_and_returned(op, layout, rng):
    x = _in_layout(_data(rng, (2, 3, 6, 7), op, np.float32), layout)
    want = REF[op](x, 3, 2, 1, layout=layout)
    out = np.full(want.shape, 99.0, dtype=np.float32)
    got = FAST[op](x, 3, 2, 1, layout=layout, out=out)
    assert got is out
    assert_close(out, want, reduction_length=9)


@pytest.mark.parametrize("op", OPS)
def test_out_non_contiguous(op, rng):
    x = _data(rng, (2, 3, 6, 7), op)
    want = REF[op](x, 3, 2, 1)
    big = np.full(want.shape[:-1] + (2 * want.shape[-1],), 99.0)
    out = big[..., ::2]
    got = FAST[op](x, 3, 2, 1, out=out)
    assert got is out
    assert_close(out, want, reduction_length=9)
    assert (big[..., 1::2] == 99.0).all()  # the gaps were not written


@pytest.mark.parametrize("op", OPS)
def test_out_unbatched(op, rng):
    x = _data(rng, (7, 6), op)
    want = REF[op](x, 2)
    out = np.empty((3, 3))
    assert FAST[op](x, 2, out=out) is out
    assert_close(out, want, reduction_length=4)


def test_max_pool_out_receives_values_with_indices(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    out = np.empty((2, 3, 3, 3))
    values, indices = fastconv.max_pool2d(x, 2, out=out, return_indices=True)
    assert values is out
    want_v, want_i = reference.max_pool2d(x, 2, return_indices=True)
    assert_array_equal(out, want_v)
    assert_array_equal(indices, want_i)


@pytest.mark.parametrize("op", OPS)
def test_out_aliasing_input(op, rng):
    # out is the input itself (k=3, s=1, p=1 keeps the shape): the result must be computed
    # from the original values, not from partially overwritten ones.
    x = _data(rng, (2, 3, 6, 6), op)
    want = REF[op](x.copy(), 3, 1, 1)
    got = FAST[op](x, 3, 1, 1, out=x)
    assert got is x
    assert_close(x, want, reduction_length=9)


@pytest.mark.parametrize("op", OPS)
def test_out_wrong_shape_dtype_type(op):
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match=rf"{FUNC_NAME[op]}: out must have shape"):
        FAST[op](x, 2, out=np.empty((1, 2, 2, 3)))
    with pytest.raises(ValueError, match=rf"{FUNC_NAME[op]}: out must have shape"):
        FAST[op](x, 2, out=np.empty((2, 2, 2)))
    with pytest.raises(TypeError, match=rf"{FUNC_NAME[op]}: out must have dtype"):
        FAST[op](x, 2, out=np.empty((1, 2, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match=rf"{FUNC_NAME[op]}: out must be a numpy.ndarray"):
        FAST[op](x, 2, out=[[0.0]])
    ro = np.empty((1, 2, 2, 2))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=rf"{FUNC_NAME[op]}: out is read-only"):
        FAST[op](x, 2, out=ro)


# --------------------------------------------------------------------------------------------
# threads


# Geometries with enough work (N*C*OH*OW*KH*KW well above 2 * 4096 and many output rows) that
# two OpenMP threads are really started. A data race only shows when both threads run at the
# same time, so each check is repeated.
THREADED = [
    pytest.param((4, 16, 48, 48), 3, 1, 1, id="k3-s1-p1"),
    pytest.param((4, 32, 32, 32), 3, 2, 1, id="k3-s2-p1"),
    pytest.param((2, 4, 128, 128), (3, 5), (1, 2), (1, 2), id="k3x5-s1x2-p1x2"),
    pytest.param((2, 16, 61, 60), (4, 2), (1, 2), ((2, 1), (0, 1)), id="asymmetric"),
]
REPEATS = 3


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_num_threads_bit_identical(op, layout, rng):
    # A large input: each thread's share takes longer than a scheduler time slice, so the two
    # threads overlap in time even on a loaded machine (a race needs them to overlap).
    x = _in_layout(rng.standard_normal((8, 64, 64, 64)).astype(np.float32), layout)
    kw = dict(layout=layout, ceil_mode=True)
    if op == "max":
        kw["return_indices"] = True
    one = FAST[op](x, 3, 2, 1, num_threads=1, **kw)
    for _ in range(REPEATS):
        two = FAST[op](x, 3, 2, 1, num_threads=2, **kw)
        if op == "max":
            _assert_bit_identical(one[0], two[0])
            _assert_bit_identical(one[1], two[1])
        else:
            _assert_bit_identical(one, two)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, kernel_size, stride, padding", THREADED)
def test_two_threads_match_reference(op, layout, shape, kernel_size, stride, padding, rng):
    x = _in_layout(_data(rng, shape, op), layout)
    kw = dict(layout=layout)
    if op == "max":
        kw["return_indices"] = True
    want = REF[op](x, kernel_size, stride, padding, **kw)
    for _ in range(REPEATS):
        got = FAST[op](x, kernel_size, stride, padding, num_threads=2, **kw)
        if op == "max":
            assert_array_equal(got[0], want[0])
            assert_array_equal(got[1], want[1])
        else:
            assert_close(got, want, reduction_length=20)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), ("2", TypeError),
                                      (1.5, TypeError), (True, TypeError)])
def test_num_threads_invalid(op, bad, exc):
    with pytest.raises(exc, match=rf"{FUNC_NAME[op]}: num_threads"):
        FAST[op](np.zeros((1, 1, 4, 4)), 2, num_threads=bad)


def test_concurrent_python_threads(rng):
    inputs = [rng.standard_normal((2, 4, 16, 16)) for _ in range(4)]
    expected = [(reference.max_pool2d(x, 3, 2, 1, return_indices=True),
                 reference.avg_pool2d(x, 3, 2, 1, count_include_pad=False)) for x in inputs]
    errors = []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            barrier.wait()
            for _ in range(20):
                v, idx = fastconv.max_pool2d(inputs[i], 3, 2, 1, return_indices=True,
                                             num_threads=2)
                a = fastconv.avg_pool2d(inputs[i], 3, 2, 1, count_include_pad=False,
                                        num_threads=2)
                assert_array_equal(v, expected[i][0][0])
                assert_array_equal(idx, expected[i][0][1])
                assert_close(a, expected[i][1], reduction_length=9)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# --------------------------------------------------------------------------------------------
# errors (fast and reference must agree)


ERROR_CASES = [
    pytest.param(dict(kernel_size=2, padding=2), ValueError,
                 r"{f}: padding .* must be at most half of kernel_size", id="padding>half"),
    pytest.param(dict(kernel_size=(3, 2), padding=(1, 2)), ValueError,
                 r"{f}: padding .* must be at most half of kernel_size", id="padding>half-w"),
    pytest.param(dict(kernel_size=3, padding=((0, 2), (0, 0))), ValueError,
                 r"{f}: padding .* must be at most half of kernel_size", id="padding>half-bottom"),
    pytest.param(dict(kernel_size=7), ValueError,
                 r"{f}: kernel_size of size \(7, 7\).*larger than the padded input",
                 id="kernel>input"),
    pytest.param(dict(kernel_size=(2, 9), padding=1), ValueError,
                 r"{f}: kernel_size of size \(2, 9\).*larger than the padded input",
                 id="kernel>padded-input"),
    pytest.param(dict(kernel_size=0), ValueError, r"{f}: kernel_size must be positive",
                 id="kernel0"),
    pytest.param(dict(kernel_size=(2, 0)), ValueError, r"{f}: kernel_size must be positive",
                 id="kernel-pair-0"),
    pytest.param(dict(kernel_size=2, stride=0), ValueError, r"{f}: stride must be positive",
                 id="stride0"),
    pytest.param(dict(kernel_size=2, stride=(1, -1)), ValueError, r"{f}: stride must be positive",
                 id="stride-negative"),
    pytest.param(dict(kernel_size=2, padding=-1), ValueError,
                 r"{f}: padding must be non-negative", id="padding-negative"),
    pytest.param(dict(kernel_size=2, padding=((0, 0), (-1, 0))), ValueError,
                 r"{f}: padding must be non-negative", id="padding-negative-asym"),
    pytest.param(dict(kernel_size=2, padding="full"), ValueError,
                 r"{f}: padding must be one of", id="padding-bad-string"),
    pytest.param(dict(kernel_size=2, layout="NWHC"), ValueError, r"{f}: layout must be one of",
                 id="bad-layout"),
    pytest.param(dict(kernel_size=2.0), TypeError, r"{f}: kernel_size must be an int",
                 id="kernel-float"),
    pytest.param(dict(kernel_size=2, stride=True), TypeError, r"{f}: stride must be an int",
                 id="stride-bool"),
]


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kwargs, exc, pattern", ERROR_CASES)
def test_errors(impl, op, kwargs, exc, pattern):
    fn = (FAST if impl == "fast" else REF)[op]
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(exc, match=pattern.format(f=FUNC_NAME[op])):
        fn(x, **kwargs)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(5,), (1, 1, 1, 4, 4), ()])
def test_bad_rank(impl, op, shape):
    fn = (FAST if impl == "fast" else REF)[op]
    with pytest.raises(ValueError, match=rf"{FUNC_NAME[op]}: x must be 2-D \(H, W\), 3-D or 4-D"):
        fn(np.zeros(shape), 1)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("bad, exc, pattern", [
    (0, ValueError, "must be positive"),
    (-2, ValueError, "must be positive"),
    (1.5, TypeError, "must be an int"),
    (True, TypeError, "must be an int"),
])
def test_divisor_override_invalid(impl, bad, exc, pattern):
    fn = fastconv.avg_pool2d if impl == "fast" else reference.avg_pool2d
    with pytest.raises(exc, match=rf"avg_pool2d: divisor_override {pattern}"):
        fn(np.zeros((1, 1, 4, 4)), 2, divisor_override=bad)


def test_none_input_is_type_error():
    for fn, name in ((fastconv.max_pool2d, "max_pool2d"), (fastconv.avg_pool2d, "avg_pool2d")):
        with pytest.raises(TypeError, match=rf"{name}: x must be an array"):
            fn(None, 2)


# --------------------------------------------------------------------------------------------
# property test


@st.composite
def pool_cases(draw):
    k = draw(st.integers(1, 4))
    return dict(
        op=draw(st.sampled_from(OPS)),
        shape=(draw(st.integers(0, 3)), draw(st.integers(1, 5)),
               draw(st.integers(1, 10)), draw(st.integers(1, 10))),
        kernel_size=k,
        stride=draw(st.integers(1, 4)),
        padding=draw(st.integers(0, k // 2)),
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(pool_cases())
def test_property_fast_matches_reference(case):
    op = case["op"]
    rng = np.random.default_rng(case["seed"])
    x = _in_layout(_data(rng, case["shape"], op, case["dtype"]), case["layout"])
    kw = dict(layout=case["layout"], ceil_mode=case["ceil_mode"])
    if op == "max":
        kw["return_indices"] = True
    else:
        kw["count_include_pad"] = case["count_include_pad"]
    args = (x, case["kernel_size"], case["stride"], case["padding"])
    try:
        want = REF[op](*args, **kw)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            FAST[op](*args, **kw)
        assert str(info.value) == str(exc)
        return
    got = FAST[op](*args, **kw)
    if op == "max":
        assert got[0].dtype == np.dtype(case["dtype"]) and got[1].dtype == np.int64
        assert_array_equal(got[0], want[0])
        assert_array_equal(got[1], want[1])
    else:
        assert_close(got, want, dtype=case["dtype"], reduction_length=case["kernel_size"] ** 2)


# --------------------------------------------------------------------------------------------
# PyTorch as an independent oracle

TORCH_GEOMETRIES = [
    # (H, W, kernel_size, stride, padding)
    (6, 7, 2, None, 0),
    (7, 8, 3, 2, 1),
    (7, 7, 3, 1, 1),
    (8, 9, (2, 3), (2, 1), (1, 1)),
    (9, 10, 2, 3, 1),
    (5, 5, 3, 3, 1),
    (5, 5, 2, 2, 1),
    (4, 4, 3, 3, 1),
    (3, 3, 2, 2, 1),
    (5, 6, 2, 2, 0),
    (10, 9, 4, 3, 2),
]


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", TORCH_GEOMETRIES)
def test_max_pool_vs_torch(H, W, kernel_size, stride, padding, ceil_mode, rng):
    x = rng.integers(-3, 4, size=(2, 3, H, W)).astype(np.float64)  # ties on purpose
    tv, ti = F.max_pool2d(torch.from_numpy(x), kernel_size, stride, padding,
                          ceil_mode=ceil_mode, return_indices=True)
    v = fastconv.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
    v2, i2 = fastconv.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode,
                                 return_indices=True)
    assert_array_equal(v, tv.numpy())
    assert_array_equal(v2, tv.numpy())
    assert_array_equal(i2, ti.numpy())


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
@pytest.mark.parametrize("divisor_override", [None, 3])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("H, W, kernel_size, stride, padding", TORCH_GEOMETRIES)
def test_avg_pool_vs_torch(H, W, kernel_size, stride, padding, ceil_mode, count_include_pad,
                           divisor_override, rng):
    x = rng.standard_normal((2, 3, H, W))
    want = F.avg_pool2d(torch.from_numpy(x), kernel_size, stride, padding, ceil_mode=ceil_mode,
                        count_include_pad=count_include_pad,
                        divisor_override=divisor_override).numpy()
    got = fastconv.avg_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode,
                              count_include_pad=count_include_pad,
                              divisor_override=divisor_override)
    assert_close(got, want, reduction_length=16)


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
@pytest.mark.parametrize("padding", [0, 1])
def test_max_pool_nan_vs_torch(padding, rng):
    x = rng.standard_normal((2, 3, 8, 8))
    nan_mask = rng.random(x.shape) < 0.15
    x[nan_mask] = np.nan
    x[0, 0, :2, :2] = np.nan   # a window made only of NaNs
    tv, ti = F.max_pool2d(torch.from_numpy(x), 3, 2, padding, return_indices=True)
    tv, ti = tv.numpy(), ti.numpy()
    v, idx = fastconv.max_pool2d(x, 3, 2, padding, return_indices=True)
    assert_array_equal(v, tv)  # values agree, NaN positions included
    nan_win = np.isnan(v)
    assert nan_win.any() and (~nan_win).any()
    # Every index equals PyTorch's, NaN windows included (the last NaN of the window), and the
    # windows with several NaNs, where "first" and "last" differ, are really exercised.
    assert_array_equal(idx, ti)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))), (3, 3), axis=(2, 3)
    )[:, :, ::2, ::2]
    assert (np.isnan(windows).sum(axis=(-1, -2)) >= 2).any()
    assert_array_equal(idx, reference.max_pool2d(x, 3, 2, padding, return_indices=True)[1])
    for layout_x, layout in ((to_nhwc(x), "NHWC"),):
        _, idx_nhwc = fastconv.max_pool2d(layout_x, 3, 2, padding, layout=layout,
                                          return_indices=True)
        assert_array_equal(idx_nhwc, to_nhwc(ti))


# --------------------------------------------------------------------------------------------
# odd but valid inputs


@pytest.mark.parametrize("op", OPS)
def test_byte_swapped_read_only_input_and_lowercase_layout(op, rng):
    x = _data(rng, (1, 2, 6, 6), op)
    want = REF[op](x, 3, 2, 1)
    swapped = x.astype(x.dtype.newbyteorder())
    assert_close(FAST[op](swapped, 3, 2, 1), want, reduction_length=9)
    ro = x.copy()
    ro.flags.writeable = False
    assert_close(FAST[op](ro, 3, 2, 1), want, reduction_length=9)
    assert_close(FAST[op](to_nhwc(x), 3, 2, 1, layout="nhwc"), to_nhwc(want), reduction_length=9)


def test_avg_pool_inf_and_nan_propagate():
    x = np.array([[np.inf, -np.inf, np.inf, 1.0],
                  [1.0, 2.0, 3.0, np.nan]])[None, None]
    got = fastconv.avg_pool2d(x, 2)
    assert np.isnan(got[0, 0, 0, 0])          # inf + -inf
    assert np.isnan(got[0, 0, 0, 1])          # NaN in the window
    assert_array_equal(fastconv.avg_pool2d(x[..., 2:3], 1)[0, 0, 0], [np.inf])
    assert_close(got, reference.avg_pool2d(x, 2))


# --------------------------------------------------------------------------------------------
# the vector paths (value-only passes): rows as wide as several vectors, every channel tail
#
# Max without indices and average pooling run vector code for the columns whose windows lie
# inside the input (NCHW, strides 1 and 2) and for every pixel's channels (NHWC). It must give
# the same bits as the scalar search (max with return_indices) and as the other layout, for
# row widths below, at and across every vector length (2 to 16 elements) and every tail.

# (kernel_size, stride, padding)
VECTOR_GEOMETRIES = [
    pytest.param(2, 2, 0, id="k2-s2"),
    pytest.param(3, 2, 1, id="k3-s2-p1"),
    pytest.param(3, 2, 0, id="k3-s2"),
    pytest.param(3, 1, 1, id="k3-s1-p1"),
    pytest.param(2, 1, 0, id="k2-s1"),
    pytest.param((2, 3), (1, 2), 1, id="k2x3-s1x2-p1"),
    pytest.param(3, 2, ((1, 0), (0, 1)), id="asymmetric"),
    pytest.param(2, 3, 0, id="s3-scalar-path"),
]
VECTOR_WIDTHS = [3, 5, 8, 9, 15, 16, 17, 18, 31, 33, 34, 35, 47, 66]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _explicit_pads(padding):
    """((top, bottom), (left, right)) of an int, pair or pair-of-pairs padding."""
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    return tuple(_pair(p) for p in padding)


def _tap_order_average(x, kernel_size, stride, padding, count_include_pad):
    """Average pooling (NCHW, floor mode) summed in the kernels' order: a zero accumulator
    plus each window cell in row-major order (padding cells add +0, which changes no value),
    divided once. An independent oracle of the exact bits."""
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    (pt, pb), (pl, pr) = _explicit_pads(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    valid = np.pad(np.ones(x.shape[2:], dtype=x.dtype), ((pt, pb), (pl, pr)))
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    acc = np.zeros(x.shape[:2] + (oh, ow), dtype=x.dtype)
    count = np.zeros((oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            acc = acc + xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
            count = count + valid[i:i + sh * oh:sh, j:j + sw * ow:sw]
    return acc / (np.asarray(kh * kw, dtype=x.dtype) if count_include_pad else count)


def _vector_cases():
    for k, s, p in ((g.values[0], g.values[1], g.values[2]) for g in VECTOR_GEOMETRIES):
        (kh, kw), ((pt, pb), (pl, pr)) = _pair(k), _explicit_pads(p)
        for W in VECTOR_WIDTHS:
            if W + pl + pr >= kw:
                yield pytest.param(k, s, p, W, id=f"{_geometry_id(k, s, p)}-W{W}")


def _geometry_id(k, s, p):
    return next(g.id for g in VECTOR_GEOMETRIES if g.values == (k, s, p))


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("kernel_size, stride, padding, W", list(_vector_cases()))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_vector_rows_max(dtype, kernel_size, stride, padding, W, ceil_mode, rng):
    x = rng.standard_normal((2, 3, 4, W)).astype(dtype)
    x[0, 0, 1, ::3] = np.nan                 # NaN lanes
    x[1, 1] = np.where(x[1, 1] > 0, 0.0, -0.0)   # signed-zero ties: the first one must win
    kw = dict(ceil_mode=ceil_mode)
    want_v, want_i = reference.max_pool2d(x, kernel_size, stride, padding, return_indices=True,
                                          **kw)
    got = fastconv.max_pool2d(x, kernel_size, stride, padding, **kw)
    scalar_v, scalar_i = fastconv.max_pool2d(x, kernel_size, stride, padding,
                                             return_indices=True, **kw)
    assert_array_equal(got, want_v)
    assert_array_equal(scalar_i, want_i)
    # The very cell the reference's index names (which zero won a signed-zero tie, which
    # NaN a NaN window holds), bit for bit.
    at_index = np.take_along_axis(x.reshape(2, 3, -1), want_i.reshape(2, 3, -1), axis=2)
    _assert_bit_identical(got, at_index.reshape(got.shape))
    _assert_bit_identical(got, scalar_v)
    got_nhwc = fastconv.max_pool2d(to_nhwc(x), kernel_size, stride, padding, layout="NHWC", **kw)
    _assert_bit_identical(got_nhwc, to_nhwc(got))


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("kernel_size, stride, padding, W", list(_vector_cases()))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_vector_rows_avg(dtype, kernel_size, stride, padding, W, ceil_mode, rng):
    x = rng.standard_normal((2, 3, 4, W)).astype(dtype)
    k = _pair(kernel_size)
    for count_include_pad in (True, False):
        for divisor_override in (None, 5):
            kw = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
            got = fastconv.avg_pool2d(x, kernel_size, stride, padding, **kw)
            want = reference.avg_pool2d(x, kernel_size, stride, padding, **kw)
            assert_close(got, want, dtype=dtype, reduction_length=k[0] * k[1], err_msg=str(kw))
            got_nhwc = fastconv.avg_pool2d(to_nhwc(x), kernel_size, stride, padding,
                                           layout="NHWC", **kw)
            _assert_bit_identical(got_nhwc, to_nhwc(got))
            if not ceil_mode and divisor_override is None:
                exact = _tap_order_average(x, kernel_size, stride, padding, count_include_pad)
                _assert_bit_identical(got, exact)


def test_tap_order_oracle_against_hand_computed():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)[None, None]
    assert_array_equal(_tap_order_average(x, 2, 1, 0, True)[0, 0], [[3.0, 4.0]])
    # padding 1: the corner window holds one real cell (1.0) and three padding cells.
    assert_array_equal(_tap_order_average(x, 2, 2, 1, True)[0, 0], [[0.25, 1.25], [1.0, 2.75]])
    assert_array_equal(_tap_order_average(x, 2, 2, 1, False)[0, 0], [[1.0, 2.5], [4.0, 5.5]])


NHWC_CHANNELS = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 83]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("C", NHWC_CHANNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_vector_nhwc_channel_tails(op, C, dtype, rng):
    x = rng.standard_normal((2, C, 5, 6)).astype(dtype)
    x[0, :, 2, 3] = np.nan
    got = FAST[op](to_nhwc(x), 3, 2, 1, layout="NHWC", ceil_mode=True)
    want = REF[op](x, 3, 2, 1, ceil_mode=True)
    assert_close(got, to_nhwc(want), dtype=dtype, reduction_length=9)
    if op == "max":
        assert_array_equal(got, to_nhwc(want))
        scalar_v, _ = fastconv.max_pool2d(to_nhwc(x), 3, 2, 1, layout="NHWC", ceil_mode=True,
                                          return_indices=True)
        _assert_bit_identical(got, scalar_v)
    _assert_bit_identical(got, to_nhwc(FAST[op](x, 3, 2, 1, ceil_mode=True)))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_vector_paths_num_threads_bit_identical(op, layout, rng):
    x = _in_layout(rng.standard_normal((8, 64, 64, 64)).astype(np.float32), layout)
    one = FAST[op](x, 3, 2, 1, layout=layout, num_threads=1)
    for _ in range(REPEATS):
        _assert_bit_identical(one, FAST[op](x, 3, 2, 1, layout=layout, num_threads=2))


GUARDS = GuardedBuffers()


@pytest.mark.skipif(not GUARDS.available, reason="guard pages need mmap + mprotect (POSIX)")
@pytest.mark.parametrize("at", ["end", "start"])
@pytest.mark.parametrize("kernel_size, stride, padding, W", [
    (2, 2, 0, 34), (3, 2, 1, 33), (3, 2, 0, 35), (3, 1, 1, 17), (2, 1, 0, 66), (3, 2, 1, 4),
])
@pytest.mark.parametrize("C", [3, 16, 83])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
def test_no_access_outside_input_and_output(op, layout, dtype, C, kernel_size, stride,
                                            padding, W, at, rng, monkeypatch):
    # The stride-2 taps load two vectors per tap; the last block of a row overlaps the one
    # before it; NHWC pixels hold whole vectors and a channel tail (C = 16, 83). Input and
    # output sit against an inaccessible page: one element too far crashes the process (so
    # this test fails loudly) instead of reading a neighbour.
    x = _in_layout(rng.standard_normal((2, C, 5, W)).astype(dtype), layout)
    want = FAST[op](x, kernel_size, stride, padding, layout=layout)
    guarded_x = GUARDS.array(x, at=at)
    guarded_out = GUARDS.array(np.full_like(want, np.nan), at=at)
    targets = []
    real_target = fastconv._validate.kernel_target
    monkeypatch.setattr(fastconv._validate, "kernel_target",
                        lambda *a: targets.append(real_target(*a)) or targets[-1])
    got = FAST[op](guarded_x, kernel_size, stride, padding, layout=layout, out=guarded_out)
    assert got is guarded_out
    assert len(targets) == 1 and np.shares_memory(targets[0], guarded_out)  # written in place
    _assert_bit_identical(np.array(got), want)


@pytest.mark.skipif(sys.platform != "linux" or fastconv._build_info.BUILD_INFO.get("compiler")
                    != "gcc", reason="the pooling vector code needs GCC (Linux GCC builds)")
def test_pooling_vector_code_is_built():
    # Without it every pooling pass silently runs the scalar loops (and the vector-path tests
    # above test nothing new): make sure the GCC build has it.
    from fastconv._isa import kernel_module
    assert kernel_module("_pool").vector_code()
