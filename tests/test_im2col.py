"""fastconv.im2col and fastconv.col2im: fast kernels against fastconv.reference, the
documented column orders, the adjoint identity, determinism and argument errors."""

from __future__ import annotations

import importlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from _helpers import DTYPES, LAYOUTS, assert_close, memory_variants, oihw_to_hwio, to_nhwc


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


# Geometries, with the input shape given in NCHW: (id, shape, kernel, stride, padding, dilation)
GEOMETRIES = [
    ("k3-s1-p0", (2, 3, 5, 6), (3, 3), 1, 0, 1),
    ("k2x3-s2-p1", (1, 2, 7, 8), (2, 3), 2, 1, 1),
    ("k3-s3-pad-pair", (2, 2, 9, 10), 3, 3, (1, 2), 1),
    ("k3-d2-p2", (1, 3, 9, 9), 3, 1, 2, 2),
    ("stride-dilation-pairs", (2, 2, 8, 9), (3, 2), (1, 2), (2, 1), (2, 1)),
    ("pad-asymmetric", (1, 2, 6, 7), (3, 3), 1, ((1, 2), (0, 3)), 1),
    ("same-s2", (1, 3, 9, 8), (3, 3), 2, "same", 1),
    ("SAME-s2-d2", (2, 2, 9, 10), 3, 2, "SAME", 2),
    ("valid-nonsquare", (2, 3, 6, 6), (2, 3), 1, "valid", 1),
    ("1x1", (2, 4, 5, 5), 1, 1, 0, 1),
    ("kernel-equals-input", (3, 2, 4, 5), (4, 5), 1, 0, 1),
    ("stride-larger-than-kernel", (1, 2, 10, 10), 2, (4, 3), 1, 1),
    ("one-row-input", (2, 1, 1, 7), (1, 3), 1, 0, 1),
    ("empty-batch", (0, 3, 6, 6), 3, 1, 1, 1),
]


def geometry_kwargs(geometry):
    _, _, kernel, stride, padding, dilation = geometry
    return dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)


def make_x(shape_nchw, layout, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape_nchw).astype(dtype)
    return to_nhwc(x) if layout == "NHWC" else x


def _kernel_cells(kernel):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return kh * kw


# --------------------------------------------------------------------------------------------
# fast vs reference


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_im2col_matches_reference(layout, dtype, geometry):
    x = make_x(geometry[1], layout, dtype, seed=1)
    kw = geometry_kwargs(geometry)
    expected = reference.im2col(x, layout=layout, **kw)
    actual = fastconv.im2col(x, layout=layout, **kw)
    assert actual.dtype == np.dtype(dtype)
    assert actual.flags.c_contiguous
    # im2col only copies values: exact equality, padding cells exactly zero.
    np.testing.assert_array_equal(actual, expected, err_msg=f"{geometry[0]} {layout}")


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_col2im_matches_reference(layout, dtype, geometry):
    kw = geometry_kwargs(geometry)
    shape = geometry[1] if layout == "NCHW" else to_nhwc(np.empty(geometry[1])).shape
    rows, cols = reference.im2col(np.zeros(shape), layout=layout, **kw).shape
    c = np.random.default_rng(2).standard_normal((rows, cols)).astype(dtype)
    expected = reference.col2im(c, shape, layout=layout, **kw)
    actual = fastconv.col2im(c, shape, layout=layout, **kw)
    assert actual.shape == tuple(shape)
    assert actual.dtype == np.dtype(dtype)
    assert_close(actual, expected, dtype, reduction_length=_kernel_cells(geometry[2]),
                 err_msg=f"{geometry[0]} {layout}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "in_dtype, expected",
    [(np.float16, np.float32), (np.int32, np.float64), (np.uint8, np.float64),
     (np.bool_, np.float64)],
    ids=dtype_id,
)
def test_dtype_policy(layout, in_dtype, expected):
    x = (np.random.default_rng(3).standard_normal((2, 3, 5, 5)) * 4).astype(in_dtype)
    x = to_nhwc(x) if layout == "NHWC" else x
    cols = fastconv.im2col(x, 3, padding=1, layout=layout)
    assert cols.dtype == np.dtype(expected)
    np.testing.assert_array_equal(cols, reference.im2col(x.astype(expected), 3, padding=1,
                                                         layout=layout))
    back = fastconv.col2im(cols.astype(in_dtype), x.shape, 3, padding=1, layout=layout)
    assert back.dtype == np.dtype(expected)


@pytest.mark.parametrize("argument", ["x", "cols"])
@pytest.mark.parametrize("bad_dtype", [np.complex128, object], ids=["complex", "object"])
def test_unsupported_dtypes_raise_type_error(argument, bad_dtype):
    if argument == "x":
        with pytest.raises(TypeError, match="im2col: x has dtype"):
            fastconv.im2col(np.ones((1, 1, 3, 3), dtype=bad_dtype), 2)
    else:
        with pytest.raises(TypeError, match="col2im: cols has dtype"):
            fastconv.col2im(np.ones((4, 4), dtype=bad_dtype), (1, 1, 3, 3), 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_memory_layouts_give_identical_results(layout):
    x = make_x((2, 3, 7, 6), layout, np.float64, seed=4)
    kw = dict(kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2), layout=layout)
    cols = fastconv.im2col(x, **kw)
    for name, xv in memory_variants(x):
        np.testing.assert_array_equal(fastconv.im2col(xv, **kw), cols, err_msg=name)
    back = fastconv.col2im(cols, x.shape, **kw)
    for name, cv in memory_variants(cols):
        np.testing.assert_array_equal(fastconv.col2im(cv, x.shape, **kw), back, err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_are_not_modified(layout):
    x = make_x((2, 3, 6, 6), layout, np.float32, seed=5)
    x_copy = x.copy()
    cols = fastconv.im2col(x, 3, padding=1, layout=layout)
    np.testing.assert_array_equal(x, x_copy)
    cols_copy = cols.copy()
    fastconv.col2im(cols, x.shape, 3, padding=1, layout=layout)
    np.testing.assert_array_equal(cols, cols_copy)


# --------------------------------------------------------------------------------------------
# column order


def textbook_im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """im2col as published in "Deep Learning from Scratch" (common/util.py)."""
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w), dtype=input_data.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def textbook_col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col2im as published in "Deep Learning from Scratch" (common/util.py)."""
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1), dtype=col.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]
    return img[:, :, pad:H + pad, pad:W + pad]


TEXTBOOK_CASES = [
    # (shape NCHW, filter_h, filter_w, stride, pad)
    ((1, 3, 7, 7), 5, 5, 1, 0),   # the book's own example: (9, 75)
    ((2, 3, 6, 8), 3, 3, 1, 1),
    ((2, 2, 9, 7), 3, 2, 2, 1),
    ((3, 1, 5, 5), 2, 2, 2, 0),
    ((1, 4, 8, 8), 1, 1, 3, 0),
]


@pytest.mark.parametrize("shape, fh, fw, stride, pad", TEXTBOOK_CASES,
                         ids=["book-example", "k3-p1", "k3x2-s2-p1", "k2-s2", "1x1-s3"])
def test_nchw_columns_follow_deep_learning_from_scratch(shape, fh, fw, stride, pad):
    x = np.random.default_rng(6).standard_normal(shape)
    expected = textbook_im2col(x, fh, fw, stride, pad)
    actual = fastconv.im2col(x, (fh, fw), stride=stride, padding=pad)
    np.testing.assert_array_equal(actual, expected)
    c = np.random.default_rng(7).standard_normal(expected.shape)
    assert_close(fastconv.col2im(c, shape, (fh, fw), stride=stride, padding=pad),
                 textbook_col2im(c, shape, fh, fw, stride, pad), np.float64,
                 reduction_length=fh * fw)


def test_book_example_shape():
    assert fastconv.im2col(np.ones((1, 3, 7, 7)), 5).shape == (9, 75)
    assert fastconv.im2col(np.ones((10, 3, 7, 7)), 5).shape == (90, 75)


def test_docstring_example():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(
        fastconv.im2col(x, 2), [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])
    np.testing.assert_array_equal(fastconv.col2im(np.ones((4, 4)), (1, 1, 3, 3), 2)[0, 0],
                                  [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


CONV_GEOMETRIES = [
    # (id, N, C_in, H, W, C_out, kernel, stride, padding, dilation)
    ("k3-p1", 2, 3, 6, 7, 4, (3, 3), 1, 1, 1),
    ("k2x3-s2-d2-same", 1, 2, 9, 8, 5, (2, 3), 2, "same", 2),
    ("1x1", 2, 5, 4, 4, 3, (1, 1), 1, 0, 1),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=[g[0] for g in CONV_GEOMETRIES])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_columns_times_reshaped_weight_is_convolution(layout, geometry):
    """NCHW columns are (c, kh, kw), matching an OIHW weight reshaped to (C_out, -1); NHWC
    columns are (kh, kw, c), matching an HWIO weight reshaped to (-1, C_out)."""
    _, n, c_in, h, w, c_out, kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, c_in, h, w))
    w_oihw = rng.standard_normal((c_out, c_in) + kernel)
    kw = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    if layout == "NCHW":
        y = fastconv.conv2d(x, w_oihw, **kw)
        product = fastconv.im2col(x, kernel, **kw) @ w_oihw.reshape(c_out, -1).T
        expected = y.transpose(0, 2, 3, 1).reshape(-1, c_out)
    else:
        x, w_hwio = to_nhwc(x), oihw_to_hwio(w_oihw)
        product = fastconv.im2col(x, kernel, **kw) @ w_hwio.reshape(-1, c_out)
        expected = fastconv.conv2d(x, w_hwio, **kw).reshape(-1, c_out)
    assert_close(product, expected, np.float64, reduction_length=c_in * kernel[0] * kernel[1])


def test_nhwc_columns_are_nchw_columns_reordered_kh_kw_c():
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 5))
    kw = dict(kernel_size=(3, 2), stride=(1, 2), padding=1)
    nchw = fastconv.im2col(x, **kw)
    nhwc = fastconv.im2col(to_nhwc(x), layout="NHWC", **kw)
    rows = nchw.shape[0]
    reordered = nchw.reshape(rows, 3, 3, 2).transpose(0, 2, 3, 1).reshape(rows, -1)
    np.testing.assert_array_equal(nhwc, reordered)


# --------------------------------------------------------------------------------------------
# col2im is the adjoint of im2col


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_col2im_is_adjoint_of_im2col(layout, geometry):
    """<im2col(x), c> == <x, col2im(c)> for random x and c."""
    rng = np.random.default_rng(10)
    x = make_x(geometry[1], layout, np.float64, seed=11)
    kw = dict(layout=layout, **geometry_kwargs(geometry))
    cols = fastconv.im2col(x, **kw)
    c = rng.standard_normal(cols.shape)
    lhs = float(np.vdot(cols, c))
    rhs = float(np.vdot(x, fastconv.col2im(c, x.shape, **kw)))
    scale = float(np.abs(cols).ravel() @ np.abs(c).ravel()) + 1.0
    assert abs(lhs - rhs) <= 1e-13 * scale, (lhs, rhs)


# --------------------------------------------------------------------------------------------
# threads


THREAD_SHAPE = (2, 8, 16, 16)  # large enough for both kernels to start 2 threads


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_im2col_thread_count_does_not_change_results(layout, dtype):
    x = make_x(THREAD_SHAPE, layout, dtype, seed=12)
    kw = dict(kernel_size=3, stride=1, padding=1, layout=layout)
    cols_1 = fastconv.im2col(x, num_threads=1, **kw)
    for _ in range(3):
        np.testing.assert_array_equal(fastconv.im2col(x, num_threads=2, **kw), cols_1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_col2im_thread_count_does_not_change_results(layout, dtype):
    """Bit for bit, on every call (repeated: a data race shows up only on some calls)."""
    shape = THREAD_SHAPE if layout == "NCHW" else to_nhwc(np.empty(THREAD_SHAPE)).shape
    kw = dict(kernel_size=3, stride=1, padding=1, layout=layout)
    rows, cols = reference.im2col(np.zeros(shape), **kw).shape
    c = np.random.default_rng(13).standard_normal((rows, cols)).astype(dtype)
    back_1 = fastconv.col2im(c, shape, num_threads=1, **kw)
    for attempt in range(50):
        np.testing.assert_array_equal(fastconv.col2im(c, shape, num_threads=2, **kw), back_1,
                                      err_msg=f"num_threads=2, call {attempt}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_col2im_multithreaded_matches_reference(num_threads, layout):
    shape = THREAD_SHAPE if layout == "NCHW" else to_nhwc(np.empty(THREAD_SHAPE)).shape
    kw = dict(kernel_size=(3, 2), stride=(1, 2), padding=1, dilation=(2, 1), layout=layout)
    rows, cols = reference.im2col(np.zeros(shape), **kw).shape
    c = np.random.default_rng(14).standard_normal((rows, cols))
    expected = reference.col2im(c, shape, **kw)
    for attempt in range(50):
        assert_close(fastconv.col2im(c, shape, num_threads=num_threads, **kw), expected,
                     np.float64, reduction_length=6, err_msg=f"call {attempt}")


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError)],
                         ids=["zero", "negative", "float"])
def test_invalid_num_threads(bad, error):
    with pytest.raises(error, match="im2col: num_threads must be a positive int"):
        fastconv.im2col(np.ones((1, 1, 3, 3)), 2, num_threads=bad)
    with pytest.raises(error, match="col2im: num_threads must be a positive int"):
        fastconv.col2im(np.ones((4, 4)), (1, 1, 3, 3), 2, num_threads=bad)


# --------------------------------------------------------------------------------------------
# errors, raised before any kernel runs


@pytest.fixture
def kernels_forbidden(monkeypatch):
    """Replace the compiled im2col/col2im kernels with ones that fail the test if called."""
    module = importlib.import_module("fastconv.unfold")._im2col   # the dispatched module
    for name in ("im2col_nchw", "im2col_nhwc", "col2im_nchw", "col2im_nhwc"):
        def forbidden(*args, _name=name, **kwargs):
            raise AssertionError(f"kernel {_name} ran before the arguments were rejected")
        monkeypatch.setattr(module, name, forbidden)


def test_kernels_forbidden_fixture_intercepts_kernels(kernels_forbidden):
    with pytest.raises(AssertionError, match="kernel im2col_nchw ran"):
        fastconv.im2col(np.ones((1, 1, 3, 3)), 2)
    with pytest.raises(AssertionError, match="kernel col2im_nhwc ran"):
        fastconv.col2im(np.ones((4, 4)), (1, 3, 3, 1), 2, layout="NHWC")


IM2COL_ERRORS = [
    ("x-3d", (np.ones((3, 5, 5)), 2), {}, ValueError,
     r"im2col: x must be 4-D \(N, C, H, W\) for layout='NCHW', got shape \(3, 5, 5\)"),
    ("x-2d", (np.ones((5, 5)), 2), {}, ValueError, r"im2col: x must be 4-D"),
    ("x-5d", (np.ones((1, 1, 1, 5, 5)), 2), {}, ValueError, r"im2col: x must be 4-D"),
    ("x-3d-nhwc", (np.ones((5, 5, 3)), 2), {"layout": "NHWC"}, ValueError,
     r"im2col: x must be 4-D \(N, H, W, C\) for layout='NHWC'"),
    ("kernel-0", (np.ones((1, 1, 5, 5)), 0), {}, ValueError, r"im2col: kernel_size must be positive"),
    ("kernel-too-large", (np.ones((1, 1, 5, 5)), 6), {}, ValueError,
     r"im2col: kernel_size of size \(6, 6\).* larger than the padded input"),
    ("stride-0", (np.ones((1, 1, 5, 5)), 2), {"stride": 0}, ValueError, r"im2col: stride must be positive"),
    ("padding-negative", (np.ones((1, 1, 5, 5)), 2), {"padding": -1}, ValueError,
     r"im2col: padding must be non-negative"),
    ("padding-unknown", (np.ones((1, 1, 5, 5)), 2), {"padding": "full"}, ValueError,
     r"im2col: padding must be one of"),
    ("layout-unknown", (np.ones((1, 1, 5, 5)), 2), {"layout": "CHWN"}, ValueError,
     r"im2col: layout must be one of"),
    ("kernel-float", (np.ones((1, 1, 5, 5)), 2.0), {}, TypeError, r"im2col: kernel_size must be an int"),
]


@pytest.mark.parametrize("args, kwargs, error, pattern", [c[1:] for c in IM2COL_ERRORS],
                         ids=[c[0] for c in IM2COL_ERRORS])
def test_im2col_invalid_arguments(kernels_forbidden, args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        fastconv.im2col(*args, **kwargs)


COLS = np.ones((4, 4))  # (1, 1, 3, 3) input, 2x2 kernel

COL2IM_ERRORS = [
    ("cols-too-many-rows", (np.ones((5, 4)), (1, 1, 3, 3), 2), {}, ValueError,
     r"col2im: cols must have shape \(4, 4\) for input_shape \(1, 1, 3, 3\).*got shape \(5, 4\)"),
    ("cols-too-few-columns", (np.ones((4, 3)), (1, 1, 3, 3), 2), {}, ValueError,
     r"col2im: cols must have shape \(4, 4\)"),
    ("cols-1d", (np.ones(16), (1, 1, 3, 3), 2), {}, ValueError, r"col2im: cols must have shape"),
    ("cols-3d", (np.ones((1, 4, 4)), (1, 1, 3, 3), 2), {}, ValueError, r"col2im: cols must have shape"),
    ("cols-nhwc-order-mismatch", (np.ones((4, 8)), (1, 3, 3, 1), 2), {"layout": "NHWC"}, ValueError,
     r"col2im: cols must have shape \(4, 4\).*layout='NHWC'"),
    ("input-shape-3-ints", (COLS, (1, 3, 3), 2), {}, ValueError,
     r"col2im: input_shape must be 4 non-negative ints"),
    ("input-shape-5-ints", (COLS, (1, 1, 1, 3, 3), 2), {}, ValueError,
     r"col2im: input_shape must be 4 non-negative ints"),
    ("input-shape-negative", (COLS, (1, -1, 3, 3), 2), {}, ValueError,
     r"col2im: input_shape must be 4 non-negative ints"),
    ("input-shape-float", (COLS, (1, 1, 3.0, 3), 2), {}, TypeError, r"col2im: input_shape"),
    ("input-shape-int", (COLS, 9, 2), {}, TypeError, r"col2im: input_shape must be a tuple of 4 ints"),
    ("kernel-too-large", (COLS, (1, 1, 3, 3), 4), {}, ValueError,
     r"col2im: kernel_size of size \(4, 4\).* larger than the padded input"),
    ("dilation-0", (COLS, (1, 1, 3, 3), 2), {"dilation": 0}, ValueError,
     r"col2im: dilation must be positive"),
    ("layout-unknown", (COLS, (1, 1, 3, 3), 2), {"layout": "nchw?"}, ValueError,
     r"col2im: layout must be one of"),
]


@pytest.mark.parametrize("args, kwargs, error, pattern", [c[1:] for c in COL2IM_ERRORS],
                         ids=[c[0] for c in COL2IM_ERRORS])
def test_col2im_invalid_arguments(kernels_forbidden, args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        fastconv.col2im(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# property-based


@st.composite
def im2col_problems(draw):
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    n, c = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    small = st.integers(0, 2)
    padding = draw(st.one_of(small, st.tuples(st.tuples(small, small), st.tuples(small, small)),
                             st.sampled_from(["same", "valid"])))
    # Geometries where the kernel does not fit are rejected (tested above); "same" always fits.
    if padding == "valid":
        pads = ((0, 0), (0, 0))
    elif isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    elif padding != "same":
        pads = padding
    if padding != "same":
        assume(h + sum(pads[0]) >= dilation[0] * (kernel[0] - 1) + 1)
        assume(w + sum(pads[1]) >= dilation[1] * (kernel[1] - 1) + 1)
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    elements = st.integers(-8, 8).map(lambda v: v / 4)  # exact in any summation order
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    return layout, x, dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)


@given(im2col_problems(), st.randoms(use_true_random=False))
def test_property_im2col_and_col2im_match_reference(problem, random):
    layout, x, kw = problem
    note(f"layout={layout} shape={x.shape} dtype={x.dtype} {kw}")
    cols = fastconv.im2col(x, layout=layout, **kw)
    np.testing.assert_array_equal(cols, reference.im2col(x, layout=layout, **kw))
    c = np.random.default_rng(random.getrandbits(32)).integers(-8, 9, cols.shape) / 4
    c = c.astype(x.dtype)
    np.testing.assert_array_equal(fastconv.col2im(c, x.shape, layout=layout, **kw),
                                  reference.col2im(c, x.shape, layout=layout, **kw))
