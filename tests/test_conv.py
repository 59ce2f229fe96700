"""fastconv.conv2d: every fast path against fastconv.reference.conv2d, plus the API contract.

The reference itself is checked against independent oracles elsewhere; here the fast kernels
(direct, im2col + GEMM, and the "auto" choice between them) must agree with it for every
geometry, layout and dtype, and the public behaviour (dtype policy, out=, threads, errors) must
match the documentation.
"""

from __future__ import annotations

import concurrent.futures
import doctest
import importlib
import math
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

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

ALGORITHMS = ("direct", "im2col", "auto")
FAST_ALGORITHMS = ("direct", "im2col")  # the two kernels "auto" chooses between

conv_module = importlib.import_module("fastconv.conv")


# --------------------------------------------------------------------------------------------
# problem construction


Case = ConvCase   # shorter name for the many case tables below (tests/_helpers.py)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def expected_out_hw(h, w, kernel, stride=1, padding=0, dilation=1):
    """Output (OH, OW) from the documented formulas, computed independently of fastconv.

    Returns values < 1 when the kernel does not fit the padded input.
    """
    (sh, sw), (dh, dw), (kh, kw) = _pair(stride), _pair(dilation), kernel
    if isinstance(padding, str):
        if padding.lower() == "same":  # TensorFlow: out = ceil(in / stride)
            return -(-h // sh), -(-w // sw)
        pads = ((0, 0), (0, 0))
    elif isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    elif isinstance(padding[0], int):
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    else:
        pads = tuple(tuple(p) for p in padding)
    oh = (h + sum(pads[0]) - dh * (kh - 1) - 1) // sh + 1
    ow = (w + sum(pads[1]) - dw * (kw - 1) - 1) // sw + 1
    return oh, ow


def tf_same_padding(size, k, s, d):
    """TensorFlow 'SAME' padding for one axis: (before, after), the odd cell after."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def make_problem(case: Case, layout: str, dtype, seed: int = 0):
    """(x, weight, bias) for ``case`` in ``layout`` and ``dtype``; random normal values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.n, case.c_in, case.h, case.w)).astype(dtype)
    w = rng.standard_normal((case.c_out, case.c_in // case.groups) + tuple(case.kernel))
    w = w.astype(dtype)
    b = rng.standard_normal(case.c_out).astype(dtype) if case.bias else None
    if layout == "NHWC":
        x, w = to_nhwc(x), oihw_to_hwio(w)
    return x, w, b


def result_shape(case: Case, layout: str):
    oh, ow = expected_out_hw(case.h, case.w, case.kernel, case.stride, case.padding,
                             case.dilation)
    if layout == "NCHW":
        return (case.n, case.c_out, oh, ow)
    return (case.n, oh, ow, case.c_out)


CASES = [
    Case("k3-s1-p0-bias", 2, 3, 7, 7, 4, (3, 3), bias=True),
    Case("k3-s2-p1-relu", 1, 3, 8, 9, 5, (3, 3), stride=2, padding=1, bias=True,
         activation="relu"),
    Case("k3-s3-pad-pair", 3, 2, 10, 11, 3, (3, 3), stride=3, padding=(1, 2)),
    Case("k3-d2-p2-relu", 1, 3, 9, 9, 4, (3, 3), padding=2, dilation=2, bias=True,
         activation="relu"),
    Case("stride-dilation-pairs", 2, 2, 9, 10, 3, (3, 2), stride=(1, 2), padding=(2, 1),
         dilation=(2, 1), bias=True),
    Case("groups2-relu", 2, 4, 7, 7, 6, (3, 3), padding=1, groups=2, bias=True,
         activation="relu"),
    Case("groups3-s2", 1, 6, 8, 8, 3, (2, 2), stride=2, groups=3),
    Case("depthwise", 2, 4, 7, 7, 4, (3, 3), padding=1, groups=4, bias=True),
    Case("depthwise-mult2-s2-same", 1, 3, 9, 8, 6, (3, 3), stride=2, padding="same",
         groups=3, bias=True, activation="relu"),
    Case("pad-asymmetric", 1, 2, 6, 7, 3, (3, 3), padding=((1, 2), (0, 3)), bias=True),
    Case("valid", 2, 3, 6, 6, 2, (2, 3), padding="valid"),
    Case("same-s1-even-kernel", 1, 2, 7, 6, 3, (4, 2), padding="same", bias=True),
    Case("SAME-s2-d2-relu", 2, 3, 9, 10, 4, (3, 3), stride=2, padding="SAME", dilation=2,
         bias=True, activation="relu"),
    Case("Same-s3-nonsquare", 1, 2, 7, 11, 2, (2, 3), stride=3, padding="Same"),
    Case("1x1-bias", 2, 5, 6, 7, 4, (1, 1), bias=True),
    Case("1x1-s2-relu", 1, 3, 7, 7, 2, (1, 1), stride=2, activation="relu"),
    Case("kernel-equals-input", 3, 2, 5, 6, 3, (5, 6), bias=True),
    Case("stride-larger-than-kernel", 1, 2, 10, 10, 3, (2, 2), stride=(4, 3), padding=1),
    Case("nonsquare-kernel-and-input", 1, 3, 5, 12, 2, (1, 4), stride=(1, 2), bias=True),
    Case("single-channel", 3, 1, 6, 6, 1, (3, 3), padding=1, activation="relu"),
    # Large enough that "auto" picks im2col (C_in/groups*KH*KW >= 32, C_out/groups >= 8).
    Case("gemm-sized-relu", 2, 8, 6, 6, 16, (3, 3), padding=1, bias=True, activation="relu"),
    Case("gemm-sized-groups2", 1, 16, 5, 5, 16, (2, 2), padding="same", groups=2, bias=True),
]


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


# --------------------------------------------------------------------------------------------
# the main grid: fast == reference


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_reference(algorithm, layout, dtype, case):
    x, w, b = make_problem(case, layout, dtype, seed=len(case.name))
    expected = reference.conv2d(x, w, b, layout=layout, **case.kwargs())
    actual = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, **case.kwargs())
    msg = f"case={case.name} algorithm={algorithm} layout={layout} dtype={dtype_id(dtype)}"
    assert actual.dtype == np.dtype(dtype), msg
    # The geometry is checked against the documented formula, not only against the reference
    # (both share the argument normalisation).
    assert actual.shape == result_shape(case, layout), msg
    assert actual.flags.c_contiguous, msg
    assert_close(actual, expected, dtype, reduction_length=case.reduction, err_msg=msg)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", FAST_ALGORITHMS)
@pytest.mark.parametrize(
    "h, w, kernel, stride, dilation",
    [(7, 6, (4, 2), 1, 1), (9, 10, (3, 3), 2, 2), (7, 11, (2, 3), 3, 1), (5, 8, (3, 4), (2, 3), (2, 1))],
    ids=["even-kernel", "s2-d2", "s3-nonsquare", "mixed-pairs"],
)
def test_same_padding_is_tensorflow_same(layout, algorithm, h, w, kernel, stride, dilation):
    """padding="same" equals explicit TF padding: out = ceil(in/stride), odd cell at the end."""
    case = Case("same", 2, 2, h, w, 3, kernel, stride=stride, padding="same", dilation=dilation)
    x, wt, _ = make_problem(case, layout, np.float64)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    explicit = (tf_same_padding(h, kernel[0], sh, dh), tf_same_padding(w, kernel[1], sw, dw))
    kw = dict(stride=stride, dilation=dilation, layout=layout, algorithm=algorithm)
    same = fastconv.conv2d(x, wt, padding="same", **kw)
    np.testing.assert_array_equal(same, fastconv.conv2d(x, wt, padding=explicit, **kw))
    oh, ow = -(-h // sh), -(-w // sw)
    assert (same.shape[2:] if layout == "NCHW" else same.shape[1:3]) == (oh, ow)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", FAST_ALGORITHMS)
@pytest.mark.parametrize(
    "tile_rows, n, hw",
    [(10, 2, 4), (40, 5, 4), (7, 3, 5)],
    ids=["tile-splits-an-image", "tile-holds-two-images", "tiles-straddle-images"],
)
def test_im2col_tiling_matches_reference(monkeypatch, layout, algorithm, tile_rows, n, hw):
    """Shrink the im2col scratch budget so the tile loops (both branches) are exercised."""
    case = Case("tiles", n, 6, hw + 2, hw + 2, 4, (3, 3), groups=2, bias=True,
                activation="relu")
    k = case.reduction
    monkeypatch.setattr(conv_module, "IM2COL_TILE_BYTES", tile_rows * k * 8)
    x, w, b = make_problem(case, layout, np.float64, seed=tile_rows)
    expected = reference.conv2d(x, w, b, layout=layout, **case.kwargs())
    actual = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, **case.kwargs())
    assert_close(actual, expected, np.float64, reduction_length=k,
                 err_msg=f"tile_rows={tile_rows} layout={layout}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, groups, tile_rows",
    [((3, 3), 2, 1, 2, 1, 5), ((3, 2), (2, 3), ((1, 2), (0, 1)), 1, 2, 7),
     ((1, 1), 1, 0, 1, 1, 3), ((1, 1), 1, 0, 1, 2, 11), ((1, 1), 2, 0, 1, 1, 4),
     ((1, 1), 1, 1, 1, 1, 6)],
    ids=["strided-dilated", "asymmetric", "1x1-x-is-cols", "1x1-grouped", "1x1-strided",
         "1x1-padded"],
)
def test_im2col_tiles_with_partial_rows_match_reference(monkeypatch, layout, kernel, stride,
                                                         padding, dilation, groups, tile_rows):
    """Tiles that start and end mid output row, for strided, dilated, padded and 1x1 layers
    (a 1x1, stride-1, unpadded layer multiplies x itself, with no column matrix)."""
    case = Case("tiles", 3, 4, 9, 8, 6, kernel, stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=True)
    monkeypatch.setattr(conv_module, "IM2COL_TILE_BYTES", tile_rows * case.reduction * 8)
    x, w, b = make_problem(case, layout, np.float64, seed=tile_rows)
    expected = reference.conv2d(x, w, b, layout=layout, **case.kwargs())
    actual = fastconv.conv2d(x, w, b, layout=layout, algorithm="im2col", **case.kwargs())
    assert_close(actual, expected, np.float64, reduction_length=case.reduction,
                 err_msg=f"tile_rows={tile_rows} layout={layout}")


@pytest.mark.parametrize("cig, kernel, cog, groups, expected", AUTO_CASES, ids=AUTO_CASE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_auto_follows_documented_heuristic(layout, cig, kernel, cog, groups, expected):
    """"auto" gives bit for bit the result of the algorithm its documentation says it picks:
    the older rule of AUTO_CASES, except that small calls with a blocked kernel's worth of
    output channels run it: in NCHW from a pixel block of outputs per image, in NHWC when
    the outputs fill more than half a channel block and an image has at least
    AUTO_SMALL_NHWC_MIN_PIXELS outputs (9x9 images, padding 1: 63 to 100 output pixels), or
    when fewer outputs with a kernel larger than 1x1 (stride 1) leave an image
    AUTO_SMALL_NHWC_PIX_BLOCKS pixel blocks of the pix kernel."""
    expected = expected[LAYOUTS.index(layout)]
    pixels = (9 + 2 - kernel[0] + 1) * (9 + 2 - kernel[1] + 1)
    sizes = conv_module._blocked.block_sizes(8)   # float64
    if layout == "NCHW":
        blocked = pixels >= sizes["pix_pixels"]
    elif 2 * cog > sizes["ch_cols"]:
        blocked = pixels >= conv_module.AUTO_SMALL_NHWC_MIN_PIXELS
    else:
        blocked = ((cig * groups == 1 or kernel[0] * kernel[1] > 1)
                   and pixels >= conv_module.AUTO_SMALL_NHWC_PIX_BLOCKS * sizes["pix_pixels"])
    if cog >= conv_module.BLOCKED_MIN_CHANNELS[layout] and blocked:
        expected = "direct"
    case = Case("auto", 2, cig * groups, 9, 9, cog * groups, kernel, padding=1, groups=groups)
    x, w, _ = make_problem(case, layout, np.float64, seed=7)
    kw = dict(layout=layout, num_threads=1, **case.kwargs())
    auto = fastconv.conv2d(x, w, algorithm="auto", **kw)
    np.testing.assert_array_equal(auto, fastconv.conv2d(x, w, algorithm=expected, **kw))


# --------------------------------------------------------------------------------------------
# ranks


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_unbatched_3d_input_returns_3d(layout, algorithm):
    case = Case("unbatched", 1, 3, 7, 8, 4, (3, 2), stride=(2, 1), padding=1, bias=True)
    x, w, b = make_problem(case, layout, np.float64, seed=3)
    image = x[0]
    actual = fastconv.conv2d(image, w, b, layout=layout, algorithm=algorithm, **case.kwargs())
    assert actual.ndim == 3
    assert actual.shape == result_shape(case, layout)[1:]
    batched = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, **case.kwargs())
    np.testing.assert_array_equal(actual, batched[0])
    expected = reference.conv2d(image, w, b, layout=layout, **case.kwargs())
    assert_close(actual, expected, np.float64, reduction_length=case.reduction)


TEXTBOOK_IMAGE = np.array([[1, 2, 1, 0], [0, 1, 3, 2], [2, 1, 0, 1], [1, 0, 1, 2]])
TEXTBOOK_KERNEL = np.array([[1, 0, -1]] * 3)
# Cross-correlation by hand: out[i, j] = sum_r (img[i+r, j] - img[i+r, j+2]), r = 0..2.
#   out[0,0] = (1-1) + (0-3) + (2-0) = -1      out[0,1] = (2-0) + (1-2) + (1-1) = 1
#   out[1,0] = (0-3) + (2-0) + (1-1) = -1      out[1,1] = (1-2) + (1-1) + (0-2) = -3
TEXTBOOK_RESULT = np.array([[-1.0, 1.0], [-1.0, -3.0]])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_2d_image_and_2d_kernel_textbook_example(layout, algorithm):
    scipy_signal = pytest.importorskip("scipy.signal", reason="scipy is a test dependency")
    oracle = scipy_signal.correlate2d(TEXTBOOK_IMAGE, TEXTBOOK_KERNEL, mode="valid")
    np.testing.assert_array_equal(oracle, TEXTBOOK_RESULT)  # the hand computation above
    result = fastconv.conv2d(TEXTBOOK_IMAGE, TEXTBOOK_KERNEL, layout=layout, algorithm=algorithm)
    assert result.ndim == 2
    assert result.dtype == np.float64  # integer inputs compute in float64
    np.testing.assert_array_equal(result, TEXTBOOK_RESULT)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_2d_image_with_stride_padding_dilation(layout, algorithm):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 11)).astype(np.float32)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), activation="relu")
    actual = fastconv.conv2d(x, w, layout=layout, algorithm=algorithm, **kw)
    assert actual.shape == expected_out_hw(9, 11, (3, 2), **{k: kw[k] for k in
                                                             ("stride", "padding", "dilation")})
    assert_close(actual, reference.conv2d(x, w, layout=layout, **kw), np.float32,
                 reduction_length=6)


def test_conv2d_docstring_examples_are_correct():
    """The examples in conv2d's docstring must print what the function returns."""
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(conv_module.conv2d, "conv2d", globs={}):
        runner.run(test, out=lambda s: None)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, "conv2d's docstring example disagrees with conv2d"


# --------------------------------------------------------------------------------------------
# memory layouts of the inputs


MEMORY_CASE = Case("memory", 2, 4, 7, 9, 6, (3, 2), stride=(1, 2), padding=1, dilation=(2, 1),
                   groups=2, bias=True, activation="relu")


@pytest.mark.parametrize("algorithm", FAST_ALGORITHMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_memory_layouts_of_x_and_weight_give_identical_results(dtype, layout, algorithm):
    x, w, b = make_problem(MEMORY_CASE, layout, dtype, seed=11)
    kw = dict(layout=layout, algorithm=algorithm, num_threads=2, **MEMORY_CASE.kwargs())
    baseline = fastconv.conv2d(x, w, b, **kw)
    for name, xv in memory_variants(x):
        np.testing.assert_array_equal(fastconv.conv2d(xv, w, b, **kw), baseline,
                                      err_msg=f"x variant {name}")
    for name, wv in memory_variants(w):
        np.testing.assert_array_equal(fastconv.conv2d(x, wv, b, **kw), baseline,
                                      err_msg=f"weight variant {name}")
    for name, bv in memory_variants(b):
        np.testing.assert_array_equal(fastconv.conv2d(x, w, bv, **kw), baseline,
                                      err_msg=f"bias variant {name}")


# --------------------------------------------------------------------------------------------
# empty batch


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "case",
    [Case("empty", 0, 4, 6, 5, 6, (3, 2), stride=2, padding=1, groups=2, bias=True),
     Case("empty-gemm-sized", 0, 8, 6, 6, 16, (3, 3), padding="same", bias=True)],
    ids=lambda c: c.name,
)
def test_empty_batch(case, algorithm, layout, dtype):
    x, w, b = make_problem(case, layout, dtype)
    result = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, **case.kwargs())
    assert result.shape == result_shape(case, layout)
    assert result.dtype == np.dtype(dtype)
    assert result.shape == reference.conv2d(x, w, b, layout=layout, **case.kwargs()).shape


# --------------------------------------------------------------------------------------------
# dtype policy


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "x_dtype, w_dtype, b_dtype, expected",
    [
        (np.float16, np.float16, np.float16, np.float32),
        (np.float16, np.float32, None, np.float32),
        (np.float32, np.float32, np.float64, np.float32),  # the bias follows x and weight
        (np.float32, np.float64, np.float32, np.float64),
        (np.float64, np.float32, None, np.float64),
        (np.float16, np.float64, None, np.float64),
        (np.int64, np.int64, np.int64, np.float64),
        (np.int32, np.float32, None, np.float64),
        (np.uint8, np.int8, None, np.float64),
        (np.bool_, np.bool_, None, np.float64),
        (np.bool_, np.float32, None, np.float64),
    ],
    ids=lambda v: "none" if v is None else np.dtype(v).name,
)
def test_dtype_policy(x_dtype, w_dtype, b_dtype, expected, algorithm):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 3, 6, 6)) * 3).astype(x_dtype)
    w = (rng.standard_normal((4, 3, 3, 3)) * 3).astype(w_dtype)
    b = None if b_dtype is None else (rng.standard_normal(4) * 3).astype(b_dtype)
    result = fastconv.conv2d(x, w, b, padding=1, algorithm=algorithm)
    assert result.dtype == np.dtype(expected)
    converted = reference.conv2d(x.astype(expected), w.astype(expected),
                                 None if b is None else b.astype(expected), padding=1)
    assert_close(result, converted, expected, reduction_length=27)
    assert_close(result, reference.conv2d(x, w, b, padding=1), expected, reduction_length=27)


@pytest.mark.parametrize(
    "argument, bad",
    [
        ("x", np.ones((1, 1, 3, 3), dtype=np.complex128)),
        ("x", np.ones((1, 1, 3, 3), dtype=object)),
        ("x", np.full((1, 1, 3, 3), "a")),
        ("x", np.ones((1, 1, 3, 3), dtype=np.longdouble)),
        ("weight", np.ones((1, 1, 2, 2), dtype=np.complex64)),
        ("weight", np.ones((1, 1, 2, 2), dtype=object)),
        ("bias", np.ones(1, dtype=np.complex128)),
        ("bias", np.array(["1"])),
    ],
    ids=["x-complex", "x-object", "x-str", "x-longdouble", "weight-complex", "weight-object",
         "bias-complex", "bias-str"],
)
def test_unsupported_dtypes_raise_type_error(argument, bad):
    args = {"x": np.ones((1, 1, 3, 3)), "weight": np.ones((1, 1, 2, 2)), "bias": None}
    args[argument] = bad
    with pytest.raises(TypeError, match=rf"conv2d: {argument} has dtype"):
        fastconv.conv2d(args["x"], args["weight"], args["bias"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nested_list_inputs(algorithm):
    x = [[[[1, 2, 0], [0, 1, 3], [4, 0, 1]]], [[[0, 0, 1], [2, 2, 2], [1, 0, 1]]]]
    w = [[[[1, -1], [0, 2]]], [[[0.5, 0], [0, 0.5]]]]
    result = fastconv.conv2d(x, w, [1, 0], algorithm=algorithm)
    assert isinstance(result, np.ndarray) and result.dtype == np.float64
    expected = reference.conv2d(np.array(x), np.array(w), np.array([1, 0]))
    np.testing.assert_array_equal(result, expected)  # small integers: exact in any order
    # by hand: bias 1 + window . [[1, -1], [0, 2]]
    assert result[0, 0].tolist() == [[1 + 1 - 2 + 0 + 2, 1 + 2 - 0 + 0 + 6],
                                     [1 + 0 - 1 + 0 + 0, 1 + 1 - 3 + 0 + 2]]


# --------------------------------------------------------------------------------------------
# non-finite values


def _nonfinite_input(layout, dtype):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 5, 6] = np.inf
    x[1, 2, 0, 7] = -np.inf            # corner: only a few windows see it
    x[1, 0, 3, 3] = np.inf             # +inf and -inf in the same windows: inf - inf = NaN
    x[1, 0, 3, 4] = -np.inf
    return to_nhwc(x) if layout == "NHWC" else x


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nan_and_inf_in_x_propagate_like_reference(algorithm, layout, dtype, activation):
    """Non-finite inputs give NaN/inf at exactly the reference's positions, silently.

    The suite runs with warnings as errors, so a RuntimeWarning from the computation fails
    this test, as it would fail a user running with -W error.
    """
    x = _nonfinite_input(layout, dtype)
    rng = np.random.default_rng(22)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    w = oihw_to_hwio(w) if layout == "NHWC" else w
    kw = dict(padding=1, layout=layout, activation=activation)
    expected = reference.conv2d(x, w, **kw)
    actual = fastconv.conv2d(x, w, algorithm=algorithm, **kw)
    assert np.isnan(expected).any() and np.isposinf(expected).any()  # the test has teeth
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    assert_close(actual, expected, dtype, reduction_length=27)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nonfinite_weight_meets_zero_padding_like_reference(algorithm, layout):
    """A NaN/inf weight tap that lands on zero padding gives NaN (0 * inf), as in the reference,
    the im2col path and PyTorch: padding behaves as zeros, not as "skip this tap"."""
    x = np.ones((1, 1, 3, 3))
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.inf
    w[0, 0, 2, 1] = np.nan
    if layout == "NHWC":
        x, w = to_nhwc(x), oihw_to_hwio(w)
    expected = reference.conv2d(x, w, padding=1, layout=layout)
    with warnings.catch_warnings():
        # Warnings are test_nan_and_inf_in_x_propagate_like_reference's business; this test
        # is about the values only.
        warnings.simplefilter("ignore", RuntimeWarning)
        actual = fastconv.conv2d(x, w, padding=1, layout=layout, algorithm=algorithm)
    np.testing.assert_array_equal(actual, expected)  # equal_nan by default


# --------------------------------------------------------------------------------------------
# out=


OUT_CASE = Case("out", 2, 3, 6, 7, 4, (3, 3), stride=(1, 2), padding=1, bias=True,
                activation="relu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_out_c_contiguous_is_filled_in_place(algorithm, layout):
    x, w, b = make_problem(OUT_CASE, layout, np.float32)
    expected = reference.conv2d(x, w, b, layout=layout, **OUT_CASE.kwargs())
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    result = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, out=out,
                             **OUT_CASE.kwargs())
    assert result is out
    assert_close(out, expected, np.float32, reduction_length=OUT_CASE.reduction)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["transposed", "strided"])
def test_out_non_contiguous_is_filled(kind, algorithm, layout):
    x, w, b = make_problem(OUT_CASE, layout, np.float64)
    expected = reference.conv2d(x, w, b, layout=layout, **OUT_CASE.kwargs())
    if kind == "transposed":
        out = np.full(expected.shape[::-1], np.nan).T
    else:
        out = np.full(tuple(2 * s for s in expected.shape), np.nan)[::2, ::2, ::2, ::-2]
    assert not out.flags.c_contiguous and out.shape == expected.shape
    result = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, out=out,
                             **OUT_CASE.kwargs())
    assert result is out
    assert_close(out, expected, np.float64, reduction_length=OUT_CASE.reduction)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_out_for_unbatched_input(algorithm):
    x, w, b = make_problem(OUT_CASE, "NCHW", np.float64)
    expected = reference.conv2d(x[1], w, b, **OUT_CASE.kwargs())
    out = np.full(expected.shape, np.nan)
    assert fastconv.conv2d(x[1], w, b, algorithm=algorithm, out=out, **OUT_CASE.kwargs()) is out
    assert_close(out, expected, np.float64, reduction_length=OUT_CASE.reduction)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_out_wrong_shape_dtype_or_kind_raises(algorithm):
    x, w, b = make_problem(OUT_CASE, "NCHW", np.float32)
    shape = result_shape(OUT_CASE, "NCHW")
    call = lambda out: fastconv.conv2d(x, w, b, algorithm=algorithm, out=out,  # noqa: E731
                                       **OUT_CASE.kwargs())
    with pytest.raises(ValueError, match=r"conv2d: out must have shape"):
        call(np.empty(shape[:-1] + (shape[-1] + 1,), dtype=np.float32))
    with pytest.raises(ValueError, match=r"conv2d: out must have shape"):
        call(np.empty(shape[1:], dtype=np.float32))
    with pytest.raises(TypeError, match=r"conv2d: out must have dtype float32"):
        call(np.empty(shape, dtype=np.float64))
    with pytest.raises(TypeError, match=r"conv2d: out must be a numpy.ndarray"):
        call(np.empty(shape, dtype=np.float32).tolist())
    read_only = np.empty(shape, dtype=np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"conv2d: out is read-only"):
        call(read_only)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "kernel, padding",
    [((1, 1), 0), ((3, 3), 1), ((3, 2), "same")],
    ids=["1x1", "3x3-pad1", "3x2-same"],
)
def test_out_aliasing_x_gives_correct_result(kernel, padding, algorithm, layout):
    """out=x with a same-shaped output: the kernel must not read what it already wrote."""
    case = Case("alias", 2, 4, 6, 5, 4, kernel, padding=padding, bias=True)
    x, w, b = make_problem(case, layout, np.float64, seed=4)
    expected = reference.conv2d(x, w, b, layout=layout, **case.kwargs())
    assert expected.shape == x.shape
    result = fastconv.conv2d(x, w, b, layout=layout, algorithm=algorithm, out=x,
                             **case.kwargs())
    assert result is x
    assert_close(x, expected, np.float64, reduction_length=case.reduction)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_out_partially_overlapping_x_gives_correct_result(algorithm):
    shape = (2, 3, 5, 5)
    size = math.prod(shape)
    buffer = np.random.default_rng(8).standard_normal(size + 7)
    x = buffer[:size].reshape(shape)
    out = buffer[7:].reshape(shape)  # shifted by 7 elements: overlaps x
    w = np.random.default_rng(9).standard_normal((3, 3, 3, 3))
    expected = reference.conv2d(x.copy(), w, padding=1)
    result = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, out=out)
    assert result is out
    assert_close(out, expected, np.float64, reduction_length=27)


# --------------------------------------------------------------------------------------------
# threads


THREAD_CASE = Case("threads", 3, 8, 20, 18, 16, (3, 3), padding=1, bias=True,
                   activation="relu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", FAST_ALGORITHMS)
def test_thread_count_does_not_change_results(algorithm, layout):
    x, w, b = make_problem(THREAD_CASE, layout, np.float32, seed=12)
    kw = dict(layout=layout, algorithm=algorithm, **THREAD_CASE.kwargs())
    one = fastconv.conv2d(x, w, b, num_threads=1, **kw)
    two = fastconv.conv2d(x, w, b, num_threads=2, **kw)
    np.testing.assert_array_equal(one, two)
    assert_close(two, reference.conv2d(x, w, b, layout=layout, **THREAD_CASE.kwargs()),
                 np.float32, reduction_length=THREAD_CASE.reduction)


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)],
    ids=["zero", "negative", "float", "str", "bool"],
)
def test_invalid_num_threads(bad, error):
    with pytest.raises(error, match=r"conv2d: num_threads must be a positive int"):
        fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)), num_threads=bad)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_concurrent_calls_match_serial_calls(algorithm):
    case = Case("concurrent", 2, 8, 16, 16, 16, (3, 3), padding=1, bias=True)
    problems = [make_problem(case, "NCHW", np.float32, seed=100 + i) for i in range(4)]
    serial = [fastconv.conv2d(x, w, b, algorithm=algorithm, **case.kwargs())
              for x, w, b in problems]

    def work(i):
        x, w, b = problems[i]
        return [fastconv.conv2d(x, w, b, algorithm=algorithm, **case.kwargs())
                for _ in range(5)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for i, repeats in enumerate(results):
        for j, result in enumerate(repeats):
            np.testing.assert_array_equal(result, serial[i], err_msg=f"worker {i} call {j}")


# --------------------------------------------------------------------------------------------
# inputs are read-only to the op


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=dtype_id)
def test_inputs_are_not_modified(dtype, algorithm, layout):
    case = Case("inputs", 2, 4, 6, 7, 8, (3, 3), padding=1, groups=2, bias=True,
                activation="relu")
    x, w, b = make_problem(case, layout, dtype, seed=6)
    for xin in (x, np.asfortranarray(x)):  # a Fortran-ordered x goes through a copy path
        copies = [a.copy() for a in (xin, w, b)]
        fastconv.conv2d(xin, w, b, layout=layout, algorithm=algorithm, **case.kwargs())
        for original, copy in zip((xin, w, b), copies):
            np.testing.assert_array_equal(original, copy)


# --------------------------------------------------------------------------------------------
# errors: raised before any kernel runs, naming the function and the argument

KERNEL_NAMES = {
    "_conv": ("conv2d_direct_nchw", "conv2d_direct_nhwc", "add_bias_relu"),
    "_blocked": ("conv2d_blocked", "conv2d_planes", "conv2d_plane_rows",
                 "conv2d_depthwise_nhwc"),
    "_im2col": ("im2col_nchw", "im2col_nhwc", "col2im_nchw", "col2im_nhwc"),
}


@pytest.fixture
def kernels_forbidden(monkeypatch):
    """Replace every compiled conv/im2col kernel with one that fails the test if called."""
    conv = importlib.import_module("fastconv.conv")
    for module_name, names in KERNEL_NAMES.items():
        module = getattr(conv, module_name)   # the module of the dispatched CPU level
        for name in names:
            def forbidden(*args, _name=name, **kwargs):
                raise AssertionError(f"kernel {_name} ran before the arguments were rejected")
            monkeypatch.setattr(module, name, forbidden)


def test_kernels_forbidden_fixture_intercepts_kernels(kernels_forbidden):
    """Guard for the fixture itself: a valid call must hit the patched kernels."""
    for algorithm in FAST_ALGORITHMS:
        for c_out in (1, 2, 4):   # the one-channel, plain-loop and blocked direct kernels
            with pytest.raises(AssertionError, match="kernel .* ran"):
                fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((c_out, 1, 2, 2)),
                                algorithm=algorithm)


X4 = np.ones((1, 3, 8, 8))
W4 = np.ones((4, 3, 3, 3))

ERROR_CASES = [
    # (id, args, kwargs, exception, regex)
    ("x-1d", (np.ones(5), W4), {}, ValueError, r"conv2d: x must be 2-D \(H, W\), 3-D or 4-D"),
    ("x-5d", (np.ones((1, 1, 3, 8, 8)), W4), {}, ValueError, r"conv2d: x must be .* got shape \(1, 1, 3, 8, 8\)"),
    ("x-0d", (np.float64(1.0), W4), {}, ValueError, r"conv2d: x must be"),
    ("weight-3d", (X4, np.ones((4, 3, 3))), {}, ValueError, r"conv2d: weight must be 4-D .* got shape \(4, 3, 3\)"),
    ("weight-5d", (X4, np.ones((4, 3, 3, 3, 1))), {}, ValueError, r"conv2d: weight must be 4-D"),
    ("weight-nhwc-3d", (np.ones((1, 8, 8, 3)), np.ones((3, 3, 3))), {"layout": "NHWC"}, ValueError,
     r"conv2d: weight must be 4-D \(KH, KW, C_in/groups, C_out\) for layout='NHWC'"),
    ("x-2d-weight-4d", (np.ones((8, 8)), W4), {}, ValueError, r"conv2d: a 2-D x \(H, W\) needs a 2-D weight"),
    ("x-4d-weight-2d", (X4, np.ones((3, 3))), {}, ValueError, r"conv2d: a 2-D x \(H, W\) needs a 2-D weight"),
    ("weight-zero-axis", (X4, np.ones((0, 3, 3, 3))), {}, ValueError, r"conv2d: weight must have no zero-length axis"),
    ("channel-mismatch", (X4, np.ones((4, 2, 3, 3))), {}, ValueError,
     r"conv2d: weight expects 2 input channels per group but x has 3 channels"
     r".*x shape \(1, 3, 8, 8\), weight shape \(4, 2, 3, 3\)"),
    ("channel-mismatch-nhwc", (np.ones((1, 8, 8, 4)), np.ones((3, 3, 3, 4))), {"layout": "NHWC"}, ValueError,
     r"conv2d: weight expects 3 input channels per group but x has 4 channels"
     r".*x shape \(1, 8, 8, 4\), weight shape \(3, 3, 3, 4\)"),
    ("group-mismatch", (np.ones((1, 4, 8, 8)), np.ones((4, 4, 3, 3))), {"groups": 2}, ValueError,
     r"conv2d: weight expects 4 input channels per group but x has 4 channels.*groups=2"),
    ("c-in-not-divisible", (X4, np.ones((4, 1, 3, 3))), {"groups": 2}, ValueError,
     r"conv2d: x has 3 channels, which is not divisible by groups"),
    ("c-out-not-divisible", (np.ones((1, 4, 8, 8)), np.ones((3, 2, 3, 3))), {"groups": 2}, ValueError,
     r"conv2d: weight has 3 output channels, which is not divisible by groups"),
    ("bias-too-short", (X4, W4, np.ones(3)), {}, ValueError, r"conv2d: bias must have shape \(4,\)"),
    ("bias-2d", (X4, W4, np.ones((4, 1))), {}, ValueError, r"conv2d: bias must have shape \(4,\).*got shape \(4, 1\)"),
    ("bias-scalar", (X4, W4, 1.0), {}, ValueError, r"conv2d: bias must have shape \(4,\)"),
    ("kernel-larger-than-input", (np.ones((1, 3, 4, 4)), np.ones((4, 3, 5, 5))), {}, ValueError,
     r"conv2d: weight kernel of size \(5, 5\).* is larger than the padded input"),
    ("dilated-kernel-too-large", (np.ones((1, 3, 6, 6)), W4), {"dilation": 3}, ValueError,
     r"conv2d: weight kernel .*dilated extent \(7, 7\).* larger than the padded input"),
    ("kernel-taller-than-input", (np.ones((1, 3, 2, 9)), W4), {"padding": ((0, 0), (1, 1))}, ValueError,
     r"conv2d: weight kernel .* larger than the padded input"),
    ("empty-spatial-axis", (np.ones((1, 3, 0, 8)), W4), {"padding": 2}, ValueError, r"conv2d: .*H=0"),
    ("stride-0", (X4, W4), {"stride": 0}, ValueError, r"conv2d: stride must be positive"),
    ("stride-negative", (X4, W4), {"stride": (1, -2)}, ValueError, r"conv2d: stride must be positive"),
    ("dilation-0", (X4, W4), {"dilation": 0}, ValueError, r"conv2d: dilation must be positive"),
    ("dilation-negative", (X4, W4), {"dilation": -1}, ValueError, r"conv2d: dilation must be positive"),
    ("groups-0", (X4, W4), {"groups": 0}, ValueError, r"conv2d: groups must be positive"),
    ("groups-negative", (X4, W4), {"groups": -3}, ValueError, r"conv2d: groups must be positive"),
    ("padding-negative", (X4, W4), {"padding": -1}, ValueError, r"conv2d: padding must be non-negative"),
    ("padding-pair-negative", (X4, W4), {"padding": (1, -1)}, ValueError, r"conv2d: padding must be non-negative"),
    ("padding-explicit-negative", (X4, W4), {"padding": ((0, 0), (-1, 2))}, ValueError,
     r"conv2d: padding must be non-negative"),
    ("padding-unknown-string", (X4, W4), {"padding": "full"}, ValueError, r"conv2d: padding must be one of"),
    ("padding-3-tuple", (X4, W4), {"padding": (1, 1, 1)}, ValueError, r"conv2d: padding must be an int, a pair"),
    ("padding-inner-3-tuple", (X4, W4), {"padding": ((1, 1, 1), (0, 0))}, ValueError,
     r"conv2d: padding must be an int, a pair"),
    ("stride-3-tuple", (X4, W4), {"stride": (1, 1, 1)}, ValueError, r"conv2d: stride must be an int or a pair"),
    ("layout-unknown", (X4, W4), {"layout": "NCWH"}, ValueError, r"conv2d: layout must be one of"),
    ("layout-none", (X4, W4), {"layout": None}, ValueError, r"conv2d: layout must be one of"),
    ("algorithm-unknown", (X4, W4), {"algorithm": "fft"}, ValueError, r"conv2d: algorithm must be one of"),
    ("activation-unknown", (X4, W4), {"activation": "sigmoid"}, ValueError, r"conv2d: activation must be one of"),
    ("stride-bool", (X4, W4), {"stride": True}, TypeError, r"conv2d: stride must be an int"),
    ("stride-float", (X4, W4), {"stride": 1.5}, TypeError, r"conv2d: stride must be an int"),
    ("stride-integral-float", (X4, W4), {"stride": 2.0}, TypeError, r"conv2d: stride must be an int"),
    ("dilation-bool-pair", (X4, W4), {"dilation": (1, False)}, TypeError, r"conv2d: dilation must be an int"),
    ("padding-float", (X4, W4), {"padding": 1.0}, TypeError, r"conv2d: padding must be an int"),
    ("groups-float", (X4, W4), {"groups": 1.0}, TypeError, r"conv2d: groups must be an int"),
    ("x-none", (None, W4), {}, TypeError, r"conv2d: x must be an array"),
    ("x-ragged", ([[1.0, 2.0], [3.0]], np.ones((1, 1))), {}, ValueError, r"conv2d: x could not be converted"),
    ("padding-2**40", (X4, W4), {"padding": 2**40}, ValueError, r"conv2d: padding must be at most"),
    ("stride-2**40", (X4, W4), {"stride": 2**40}, ValueError, r"conv2d: stride must be at most"),
    ("dilation-2**31", (X4, W4), {"dilation": 2**31}, ValueError, r"conv2d: dilation must be at most"),
    ("output-overflows", (np.ones((4, 3, 1, 1)), W4), {"padding": 2**31 - 1}, ValueError,
     r"conv2d: the output of shape .* more than this platform can index"),
    ("output-overflows-empty-batch", (np.ones((0, 3, 1, 1)), W4), {"padding": 2**31 - 1}, ValueError,
     r"conv2d: "),
]


@pytest.mark.parametrize("algorithm", FAST_ALGORITHMS)
@pytest.mark.parametrize("args, kwargs, error, pattern", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_invalid_arguments_raise_before_any_kernel(kernels_forbidden, args, kwargs, error,
                                                   pattern, algorithm):
    if "algorithm" not in kwargs:
        kwargs = dict(kwargs, algorithm=algorithm)
    with pytest.raises(error, match=pattern) as fast:
        fastconv.conv2d(*args, **kwargs)
    # The reference validates identically: same exception type and message.
    with pytest.raises(error) as ref:
        reference.conv2d(*args, **kwargs)
    assert str(fast.value) == str(ref.value)


# --------------------------------------------------------------------------------------------
# property-based: any geometry, fast == reference (and the same errors)


def _quarters():
    # Multiples of 1/4 in [-2, 2]: every product and sum below is exact in float32, so
    # differences can only come from indexing, never from summation order.
    return st.integers(-8, 8).map(lambda v: v / 4)


small_pads = st.integers(0, 2)


@st.composite
def conv_problems(draw):
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 3))
    groups = draw(st.integers(1, 3))
    cig = draw(st.integers(1, 3))
    cog = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    padding = draw(st.one_of(
        small_pads,
        st.tuples(small_pads, small_pads),
        st.tuples(st.tuples(small_pads, small_pads), st.tuples(small_pads, small_pads)),
        st.sampled_from(["same", "valid", "SAME", "Valid"]),
    ))
    case = Case("hypothesis", n, cig * groups, h, w, cog * groups, (kh, kw), stride=stride,
                padding=padding, dilation=dilation, groups=groups,
                bias=draw(st.booleans()), activation=draw(st.sampled_from([None, "relu"])))
    x_shape = (n, case.c_in, h, w) if layout == "NCHW" else (n, h, w, case.c_in)
    w_shape = (case.c_out, cig, kh, kw) if layout == "NCHW" else (kh, kw, cig, case.c_out)
    x = draw(hnp.arrays(dtype, x_shape, elements=_quarters()))
    wt = draw(hnp.arrays(dtype, w_shape, elements=_quarters()))
    b = draw(hnp.arrays(dtype, (case.c_out,), elements=_quarters())) if case.bias else None
    algorithm = draw(st.sampled_from(ALGORITHMS))
    return case, layout, dtype, algorithm, x, wt, b


@given(conv_problems())
def test_property_fast_matches_reference(problem):
    case, layout, dtype, algorithm, x, w, b = problem
    note(f"{case} layout={layout} dtype={dtype_id(dtype)} algorithm={algorithm}")
    oh, ow = expected_out_hw(case.h, case.w, case.kernel, case.stride, case.padding,
                             case.dilation)
    call = dict(layout=layout, **case.kwargs())
    if oh < 1 or ow < 1:  # the kernel does not fit: both must refuse, with the same message
        event("kernel does not fit: ValueError expected")
        with pytest.raises(ValueError, match="larger than the padded input") as ref:
            reference.conv2d(x, w, b, **call)
        with pytest.raises(ValueError, match="larger than the padded input") as fast:
            fastconv.conv2d(x, w, b, algorithm=algorithm, **call)
        assert str(fast.value) == str(ref.value)
        return
    expected = reference.conv2d(x, w, b, **call)
    actual = fastconv.conv2d(x, w, b, algorithm=algorithm, **call)
    assert actual.shape == result_shape(case, layout)
    assert_close(actual, expected, dtype, reduction_length=case.reduction)


# --------------------------------------------------------------------------------------------
# PyTorch as an independent oracle on realistic layers

TORCH_LAYERS = [
    # (id, N, C_in, H, W, C_out, K, stride, padding, groups)
    ("3to16-32x32-k3-s1-p1", 4, 3, 32, 32, 16, 3, 1, 1, 1),
    ("16to32-k3-s2-p1", 2, 16, 16, 16, 32, 3, 2, 1, 1),
    ("depthwise32-k3-p1", 2, 32, 16, 16, 32, 3, 1, 1, 32),
    ("1x1-32to64", 2, 32, 12, 12, 64, 1, 1, 0, 1),
]


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", FAST_ALGORITHMS)
@pytest.mark.parametrize("layer", TORCH_LAYERS, ids=lambda layer: layer[0])
def test_matches_torch_on_realistic_layers(layer, algorithm, layout):
    import torch

    _, n, c_in, h, w, c_out, k, stride, padding, groups = layer
    rng = np.random.default_rng(c_in * c_out)
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    wt = (rng.standard_normal((c_out, c_in // groups, k, k)) / k).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b), stride=stride,
        padding=padding, groups=groups).numpy()
    if layout == "NHWC":
        x, wt, expected = to_nhwc(x), oihw_to_hwio(wt), to_nhwc(expected)
    actual = fastconv.conv2d(x, wt, b, stride=stride, padding=padding, groups=groups,
                             layout=layout, algorithm=algorithm)
    assert_close(actual, expected, np.float32, reduction_length=c_in // groups * k * k,
                 err_msg=f"{layer[0]} {algorithm} {layout}")
