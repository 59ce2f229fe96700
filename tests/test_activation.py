"""relu: fast kernel vs fastconv.reference, special values, out= and aliasing, dtypes, threads."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastconv
from fastconv import reference
from _helpers import DTYPES, memory_variants

SHAPES = [(), (1,), (7,), (0,), (3, 5), (0, 4), (4, 0, 2), (2, 3, 1, 4, 5), (65,)]


def _check_equal(got, want, dtype):
    """relu does no arithmetic: values must be equal (NaN where NaN), dtype and shape exact."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_matches_reference(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    got = fastconv.relu(x)
    _check_equal(got, reference.relu(x), dtype)
    assert got.shape == x.shape
    assert got.flags.c_contiguous
    assert not np.shares_memory(got, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s != ()], ids=str)
def test_relu_memory_variants(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    want = reference.relu(x)
    base = fastconv.relu(x)
    for name, variant in memory_variants(x):
        before = variant.copy()
        got = fastconv.relu(variant)
        _check_equal(got, want, dtype)
        assert got.tobytes() == base.tobytes(), name
        assert_array_equal(variant, before, err_msg=f"{name}: input modified")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_special_values(dtype):
    x = np.array([np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, -1.5, 2.5,
                  np.finfo(dtype).tiny, -np.finfo(dtype).tiny, np.finfo(dtype).max,
                  np.finfo(dtype).min], dtype=dtype)
    got = fastconv.relu(x)
    want = np.array([np.nan, np.nan, 0.0, 0.0, np.inf, 0.0, 0.0, 2.5,
                     np.finfo(dtype).tiny, 0.0, np.finfo(dtype).max, 0.0], dtype=dtype)
    _check_equal(got, want, dtype)
    _check_equal(got, reference.relu(x), dtype)
    assert np.isnan(got[:2]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_negative_zero_becomes_positive_zero(dtype):
    # Documented: "-0.0 becomes +0.0" (both for the result and for an in-place call).
    x = np.array([-0.0, 0.0, -0.0] * 40, dtype=dtype)
    got = fastconv.relu(x)
    assert_array_equal(got, 0.0)
    assert not np.signbit(got).any()
    fastconv.relu(x, out=x)
    assert not np.signbit(x).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_nan_positions_random(dtype, rng):
    x = rng.standard_normal(1000).astype(dtype)
    x[rng.random(1000) < 0.1] = np.nan
    got = fastconv.relu(x)
    assert_array_equal(np.isnan(got), np.isnan(x))
    _check_equal(got, reference.relu(x), dtype)


# --------------------------------------------------------------------------------------------
# out= and aliasing


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (9,), (3, 4), (2, 3, 4)], ids=str)
def test_relu_in_place(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    want = reference.relu(x.copy())
    got = fastconv.relu(x, out=x)
    assert got is x
    _check_equal(x, want, dtype)


def test_relu_in_place_non_contiguous(rng):
    base = rng.standard_normal((6, 10))
    original = base.copy()
    x = base[::2, 1::3]
    got = fastconv.relu(x, out=x)
    assert got is x
    expected = original.copy()
    expected[::2, 1::3] = np.maximum(original[::2, 1::3], 0)
    assert_array_equal(base, expected)  # only the view's cells changed


def test_relu_out_non_contiguous(rng):
    x = rng.standard_normal((5, 6))
    big = np.full((5, 12), 7.0)
    out = big[:, ::2]
    got = fastconv.relu(x, out=out)
    assert got is out
    assert_array_equal(out, reference.relu(x))
    assert (big[:, 1::2] == 7.0).all()


def test_relu_out_fortran(rng):
    x = rng.standard_normal((4, 5))
    out = np.empty((4, 5), order="F")
    assert fastconv.relu(x, out=out) is out
    assert_array_equal(out, reference.relu(x))


def test_relu_out_reversed_view_of_x(rng):
    x = rng.standard_normal(101)
    original = x.copy()
    out = x[::-1]
    got = fastconv.relu(x, out=out)
    assert got is out
    # out[i] = relu(x_original[i]), and out[i] is x[n - 1 - i].
    assert_array_equal(out, np.maximum(original, 0))
    assert_array_equal(x, np.maximum(original, 0)[::-1])


def test_relu_out_transposed_view_of_x(rng):
    x = rng.standard_normal((7, 7))
    original = x.copy()
    out = x.T
    got = fastconv.relu(x, out=out)
    assert got is out
    assert_array_equal(x.T, np.maximum(original, 0))
    assert_array_equal(x, np.maximum(original, 0).T)


def test_relu_out_overlapping_shifted_view(rng):
    buf = rng.standard_normal(200)
    original = buf.copy()
    x, out = buf[:-1], buf[1:]           # both C-contiguous, overlapping, shifted by one
    got = fastconv.relu(x, out=out)
    assert got is out
    assert_array_equal(buf[1:], np.maximum(original[:-1], 0))
    assert buf[0] == original[0]


def test_relu_out_same_memory_different_object(rng):
    x = rng.standard_normal((3, 4))
    original = x.copy()
    out = x.view()  # same buffer, not the same Python object
    assert fastconv.relu(x, out=out) is out
    assert_array_equal(x, np.maximum(original, 0))


def test_relu_out_errors():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"relu: out must have shape \(2, 3\)"):
        fastconv.relu(x, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match=r"relu: out must have shape"):
        fastconv.relu(x, out=np.empty(6))
    with pytest.raises(TypeError, match=r"relu: out must have dtype float64"):
        fastconv.relu(x, out=np.empty((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match=r"relu: out must have dtype float32"):
        fastconv.relu(x.astype(np.float32), out=np.empty((2, 3)))
    with pytest.raises(TypeError, match=r"relu: out must have dtype float32"):
        fastconv.relu(x.astype(np.float16), out=x.astype(np.float16))  # float16 computes in f32
    with pytest.raises(TypeError, match=r"relu: out must be a numpy.ndarray"):
        fastconv.relu(x, out=[[0.0] * 3] * 2)
    ro = np.empty((2, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"relu: out is read-only"):
        fastconv.relu(x, out=ro)


def test_relu_failed_out_leaves_input_alone():
    x = np.array([-1.0, 2.0])
    with pytest.raises(TypeError):
        fastconv.relu(x, out=np.empty(2, dtype=np.float32))
    assert_array_equal(x, [-1.0, 2.0])


# --------------------------------------------------------------------------------------------
# dtypes and inputs


@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [(np.int8, np.float64), (np.int32, np.float64), (np.int64, np.float64),
     (np.uint16, np.float64), (np.uint64, np.float64), (np.float16, np.float32)],
    ids=lambda d: np.dtype(d).name,
)
def test_relu_dtype_promotion(in_dtype, out_dtype):
    x = np.array([[-3, 0, 2], [5, -1, 7]]).astype(in_dtype)
    got = fastconv.relu(x)
    want = np.maximum(x.astype(out_dtype), 0)
    _check_equal(got, want, out_dtype)
    _check_equal(got, reference.relu(x), out_dtype)


def test_relu_bool():
    x = np.array([True, False, True])
    got = fastconv.relu(x)
    _check_equal(got, [1.0, 0.0, 1.0], np.float64)


def test_relu_int_out(rng):
    x = rng.integers(-5, 5, size=(4, 4))
    out = np.empty((4, 4))
    assert fastconv.relu(x, out=out) is out
    assert_array_equal(out, np.maximum(x, 0))


def test_relu_list_and_scalar_inputs():
    _check_equal(fastconv.relu([[-1.0, 2.0], [3.0, -4.0]]), [[0.0, 2.0], [3.0, 0.0]], np.float64)
    got = fastconv.relu(-2.5)
    assert isinstance(got, np.ndarray) and got.shape == () and got == 0.0
    got = fastconv.relu(3)
    assert got.dtype == np.float64 and got.shape == () and got == 3.0


def test_relu_read_only_input(rng):
    x = rng.standard_normal(50)
    x.flags.writeable = False
    assert_array_equal(fastconv.relu(x), np.maximum(x, 0))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object, "U2", "M8[s]",
                                   np.longdouble], ids=str)
def test_relu_unsupported_dtype(dtype):
    if np.dtype(dtype) == np.dtype(np.float64):  # platforms where long double is double
        pytest.skip("long double is float64 here")
    x = np.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=r"relu: x has dtype"):
        fastconv.relu(x)


def test_relu_none_and_unconvertible():
    with pytest.raises(TypeError, match=r"relu: x must be an array"):
        fastconv.relu(None)
    with pytest.raises(ValueError, match=r"relu: x could not be converted"):
        fastconv.relu([[1.0, 2.0], [3.0]])


def test_relu_input_not_modified(rng):
    x = rng.standard_normal((20, 30)).astype(np.float32)
    before = x.copy()
    y = fastconv.relu(x)
    assert_array_equal(x, before)
    assert not np.shares_memory(x, y)
    xnc = rng.standard_normal((20, 60))[:, ::2]
    before = xnc.copy()
    fastconv.relu(xnc)
    assert_array_equal(xnc, before)


# --------------------------------------------------------------------------------------------
# threads


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_num_threads_identical(dtype, rng):
    # 300_000 elements: above 2 * 65536, so two threads are really started.
    x = rng.standard_normal(300_000).astype(dtype)
    x[::997] = np.nan
    x[1::991] = -0.0
    one = fastconv.relu(x, num_threads=1)
    two = fastconv.relu(x, num_threads=2)
    assert one.tobytes() == two.tobytes()
    _check_equal(two, reference.relu(x), dtype)
    inplace = x.copy()
    assert fastconv.relu(inplace, out=inplace, num_threads=2) is inplace
    assert inplace.tobytes() == one.tobytes()


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-3, ValueError), ("2", TypeError),
                                      (1.5, TypeError), (True, TypeError)])
def test_relu_num_threads_invalid(bad, exc):
    with pytest.raises(exc, match=r"relu: num_threads must be a positive int or None"):
        fastconv.relu(np.zeros(3), num_threads=bad)


def test_relu_num_threads_numpy_int():
    assert_array_equal(fastconv.relu(np.array([-1.0, 1.0]), num_threads=np.int64(2)), [0.0, 1.0])


# --------------------------------------------------------------------------------------------
# streaming stores (results of at least fastconv._buffers.STREAM_MIN_BYTES)

STREAMING_BUILT = fastconv.activation._relu.streaming_stores()


class _KernelSpy:
    """Stands in for the ReLU kernel module and records each call's ``stream`` flag."""

    def __init__(self, real):
        self.real, self.streams = real, []

    def relu(self, x, out, n_threads, stream=False):
        self.streams.append(stream)
        return self.real.relu(x, out, n_threads, stream)


@pytest.fixture
def relu_spy(monkeypatch):
    spy = _KernelSpy(fastconv.activation._relu)
    monkeypatch.setattr(fastconv.activation, "_relu", spy)
    return spy


def test_relu_streams_only_large_results_not_in_place(relu_spy, rng):
    limit = fastconv._buffers.STREAM_MIN_BYTES
    big = rng.standard_normal(limit // 4, dtype=np.float32)
    small = big[: limit // 8]
    fastconv.relu(big)
    fastconv.relu(small)
    fastconv.relu(big, out=big)     # in place: each line is read just before it is written
    assert relu_spy.streams == [True, False, False]


@pytest.mark.skipif(not STREAMING_BUILT, reason="this build has no streaming stores (x86 only)")
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("offset", [0, 1, 3], ids=lambda o: f"offset{o}")
@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 1000, 4099])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_streaming_stores_exact(dtype, n, offset, num_threads, relu_spy, rng,
                                     monkeypatch):
    # Streaming forced at every size: the aligned middle, the scalar head (out starts `offset`
    # elements past an aligned address) and tail, and each thread's share must give exactly
    # the ordinary kernel's bits (NaN kept, -0.0 made +0.0, infinities).
    monkeypatch.setattr(fastconv._buffers, "STREAM_MIN_BYTES", 0)
    specials = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -1.0, 2.5], dtype=dtype)
    x = rng.standard_normal(n).astype(dtype)
    x[::5] = np.resize(specials, x[::5].shape)
    out_buf = np.full(n + 16 + offset, 7.0, dtype=dtype)   # guard values around the result
    start = (-out_buf.ctypes.data // out_buf.itemsize) % 16 + offset
    out = out_buf[start:start + n]
    got = fastconv.relu(x, out=out, num_threads=num_threads)
    assert got is out
    assert relu_spy.streams == [True]
    monkeypatch.setattr(fastconv._buffers, "STREAM_MIN_BYTES", 1 << 62)
    plain = fastconv.relu(x, num_threads=num_threads)
    assert relu_spy.streams == [True, False]
    assert got.tobytes() == plain.tobytes()
    _check_equal(got, reference.relu(x), dtype)
    outside = np.concatenate([out_buf[:start], out_buf[start + n:]])
    assert (outside == 7.0).all()
