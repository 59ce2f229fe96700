"""fastconv.compat: the "Deep Learning from Scratch" and CS231n drop-in layers.

Every compat function is checked against a plain-NumPy implementation written here from the
books' published code (the book's loop-over-taps ``im2col``/``col2im`` with ``np.pad`` and
slicing and its im2col-based layers; CS231n's loop-based ``*_naive`` functions), never against
fastconv or fastconv.reference. Plus: padded pooling against a -inf-padded naive pool, dtypes,
cache round trips, error messages, and a tiny book-style SimpleConvNet whose training matches
the book's own layers step for step and whose backprop gradient matches its numerical gradient.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pickle
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest

import fastconv
from fastconv.compat import cs231n, dlfs
from _helpers import DTYPES, assert_close


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


def normal(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def ties(rng, shape, dtype=np.float64):
    """Small integers: many ties inside pooling windows, exact in both dtypes."""
    return rng.integers(-3, 4, size=shape).astype(dtype)


def _conv_inputs(rng, x_shape, w_shape, dtype):
    return normal(rng, x_shape, dtype), normal(rng, w_shape, dtype), normal(rng, w_shape[0], dtype)


def _f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


# ============================================================================================
# The books' code, in plain NumPy (float64, as published)
# ============================================================================================

# --- "Deep Learning from Scratch", common/util.py ------------------------------------------


def book_im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1

    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w))

    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]

    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def book_col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)

    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]

    return img[:, :, pad:H + pad, pad:W + pad]


# --- "Deep Learning from Scratch", common/layers.py and common/functions.py ----------------


class BookRelu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = (x <= 0)
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class BookAffine:
    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        self.x = x
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


def book_softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def book_cross_entropy_error(y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


class BookSoftmaxWithLoss:
    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = book_softmax(x)
        self.loss = book_cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        return dx


class BookConvolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x = None
        self.col = None
        self.col_W = None
        self.dW = None
        self.db = None

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h = 1 + int((H + 2 * self.pad - FH) / self.stride)
        out_w = 1 + int((W + 2 * self.pad - FW) / self.stride)

        col = book_im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T

        out = np.dot(col, col_W) + self.b
        out = out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

        self.x = x
        self.col = col
        self.col_W = col_W
        return out

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)

        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout)
        self.dW = self.dW.transpose(1, 0).reshape(FN, C, FH, FW)

        dcol = np.dot(dout, self.col_W.T)
        return book_col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)


class BookPooling:
    """The book's Pooling (correct for pad=0 only, as published)."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None
        self.arg_max = None

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = int(1 + (H - self.pool_h) / self.stride)
        out_w = int(1 + (W - self.pool_w) / self.stride)

        col = book_im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)

        arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        out = out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

        self.x = x
        self.arg_max = arg_max
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)

        pool_size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, pool_size))
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (pool_size,))

        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        return book_col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


def naive_padded_max_pool(x, pool_h, pool_w, stride, pad, dout):
    """Max pooling with -inf padding (PyTorch semantics), one window at a time.

    Returns (out, arg_max in the book's (n, oh, ow, c) window-local format, dx for dout).
    """
    x = x.astype(np.float64)
    N, C, H, W = x.shape
    out_h = (H + 2 * pad - pool_h) // stride + 1
    out_w = (W + 2 * pad - pool_w) // stride + 1
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], constant_values=-np.inf)
    out = np.empty((N, C, out_h, out_w))
    arg = np.empty((N, out_h, out_w, C), dtype=np.int64)
    dxp = np.zeros_like(xp)
    for n in range(N):
        for c in range(C):
            for i in range(out_h):
                for j in range(out_w):
                    hs, ws = i * stride, j * stride
                    window = xp[n, c, hs:hs + pool_h, ws:ws + pool_w]
                    k = int(np.argmax(window))
                    out[n, c, i, j] = window.flat[k]
                    arg[n, i, j, c] = k
                    dxp[n, c, hs + k // pool_w, ws + k % pool_w] += dout[n, c, i, j]
    return out, arg.reshape(-1), dxp[:, :, pad:pad + H, pad:pad + W]


# --- CS231n assignment 2, the naive layers -------------------------------------------------


def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = 1 + (H + 2 * pad - HH) // stride
    W_out = 1 + (W + 2 * pad - WW) // stride
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    out = np.zeros((N, F, H_out, W_out))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    window = xp[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.sum(dout, axis=(0, 2, 3))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    hs, ws = i * stride, j * stride
                    dw[f] += xp[n, :, hs:hs + HH, ws:ws + WW] * dout[n, f, i, j]
                    dxp[n, :, hs:hs + HH, ws:ws + WW] += w[f] * dout[n, f, i, j]
    return dxp[:, :, pad:pad + H, pad:pad + W], dw, db


def max_pool_forward_naive(x, pool_param):
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    H_out = 1 + (H - ph) // stride
    W_out = 1 + (W - pw) // stride
    out = np.zeros((N, C, H_out, W_out))
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    out[n, c, i, j] = np.max(
                        x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw])
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
                    a, k = np.unravel_index(np.argmax(window), window.shape)
                    dx[n, c, i * stride + a, j * stride + k] += dout[n, c, i, j]
    return dx


def relu_forward_naive(x):
    return np.maximum(0, x), x


def relu_backward_naive(dout, cache):
    return dout * (cache > 0)


# ============================================================================================
# dlfs: im2col / col2im
# ============================================================================================

# (x shape, filter_h, filter_w, stride, pad)
UNFOLD_CASES = [
    pytest.param((2, 3, 5, 5), 3, 3, 1, 0, id="k3"),
    pytest.param((1, 2, 7, 8), 2, 3, 2, 1, id="k2x3-s2-p1"),
    pytest.param((2, 1, 6, 9), 3, 1, 2, 2, id="k3x1-s2-p2"),
    pytest.param((1, 2, 7, 7), 2, 2, 3, 1, id="stride-larger-than-kernel"),
    pytest.param((3, 2, 4, 5), 4, 5, 1, 0, id="kernel-equals-input"),
    pytest.param((1, 3, 5, 6), 3, 3, 2, 0, id="floor-output-size"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape, fh, fw, stride, pad", UNFOLD_CASES)
def test_dlfs_im2col_matches_book(rng, shape, fh, fw, stride, pad, dtype):
    x = normal(rng, shape, dtype)
    got = dlfs.im2col(x, fh, fw, stride=stride, pad=pad)
    want = book_im2col(x.astype(np.float64), fh, fw, stride, pad)
    assert got.dtype == dtype  # the book returns float64; the compat keeps float32
    np.testing.assert_array_equal(got, want.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape, fh, fw, stride, pad", UNFOLD_CASES)
def test_dlfs_col2im_matches_book(rng, shape, fh, fw, stride, pad, dtype):
    n, c, h, w = shape
    rows = n * ((h + 2 * pad - fh) // stride + 1) * ((w + 2 * pad - fw) // stride + 1)
    col = normal(rng, (rows, c * fh * fw), dtype)
    got = dlfs.col2im(col, shape, fh, fw, stride=stride, pad=pad)
    want = book_col2im(col.astype(np.float64), shape, fh, fw, stride, pad)
    assert_close(got, want.astype(dtype), dtype, reduction_length=fh * fw)


def test_dlfs_im2col_positional_signature_and_integer_input():
    x = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    got = dlfs.im2col(x, 2, 2, 2, 1)  # the book calls it positionally
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, book_im2col(x, 2, 2, 2, 1))


# ============================================================================================
# dlfs: Convolution, Pooling, Relu, Affine, SoftmaxWithLoss
# ============================================================================================

# (x shape, W shape, stride, pad)
CONV_CASES = [
    pytest.param((2, 3, 7, 7), (4, 3, 3, 3), 1, 0, id="k3"),
    pytest.param((2, 3, 7, 8), (4, 3, 2, 3), 2, 1, id="k2x3-s2-p1"),
    pytest.param((1, 2, 9, 6), (3, 2, 3, 1), 2, 2, id="k3x1-s2-p2-floor"),
    pytest.param((3, 1, 5, 5), (2, 1, 5, 5), 1, 0, id="kernel-equals-input"),
    pytest.param((1, 2, 8, 8), (2, 2, 2, 2), 3, 1, id="stride-larger-than-kernel"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad", CONV_CASES)
def test_dlfs_convolution_matches_book(rng, x_shape, w_shape, stride, pad, dtype):
    x, W, b = _conv_inputs(rng, x_shape, w_shape, dtype)
    layer = dlfs.Convolution(W, b, stride, pad)
    book = BookConvolution(W.astype(np.float64), b.astype(np.float64), stride, pad)
    red = int(np.prod(w_shape[1:]))

    out = layer.forward(x)
    want = book.forward(x.astype(np.float64))
    assert_close(out, want.astype(dtype), dtype, reduction_length=red)

    dout = normal(rng, out.shape, dtype)
    dx = layer.backward(dout)
    want_dx = book.backward(dout.astype(np.float64))
    n_out = out.shape[0] * out.shape[2] * out.shape[3]
    assert_close(dx, want_dx.astype(dtype), dtype, reduction_length=w_shape[0] * red)
    assert_close(layer.dW, book.dW.astype(dtype), dtype, reduction_length=n_out)
    assert_close(layer.db, book.db.astype(dtype), dtype, reduction_length=n_out)

    # The book's attributes: the same objects and values.
    assert layer.W is W and layer.b is b and layer.x is x
    np.testing.assert_array_equal(layer.col, book.col.astype(dtype))
    np.testing.assert_array_equal(layer.col_W, book.col_W.astype(dtype))
    assert np.shares_memory(layer.col_W, W)


# (pool_h, pool_w, stride)
POOL_CASES = [
    pytest.param(2, 2, 2, id="2x2-s2"),
    pytest.param(3, 3, 1, id="3x3-s1-overlapping"),
    pytest.param(2, 3, 2, id="2x3-s2"),
    pytest.param(3, 2, 1, id="3x2-s1"),
    pytest.param(3, 3, 2, id="3x3-s2-overlapping"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("pool_h, pool_w, stride", POOL_CASES)
def test_dlfs_pooling_matches_book(rng, pool_h, pool_w, stride, dtype):
    x = ties(rng, (2, 3, 7, 8), dtype)  # ties: both must pick the first maximum
    layer = dlfs.Pooling(pool_h, pool_w, stride)
    book = BookPooling(pool_h, pool_w, stride)

    out = layer.forward(x)
    want = book.forward(x.astype(np.float64))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, want.astype(dtype))
    np.testing.assert_array_equal(layer.arg_max, book.arg_max)
    assert layer.x is x

    dout = normal(rng, out.shape, dtype)
    dx = layer.backward(dout)
    want_dx = book.backward(dout.astype(np.float64))
    assert_close(dx, want_dx.astype(dtype), dtype, reduction_length=pool_h * pool_w)


# (pool_h, pool_w, stride, pad)
PADDED_POOL_CASES = [
    pytest.param(2, 2, 2, 1, id="2x2-s2-p1"),
    pytest.param(3, 3, 2, 1, id="3x3-s2-p1"),
    pytest.param(3, 2, 1, 1, id="3x2-s1-p1"),
    pytest.param(4, 4, 3, 2, id="4x4-s3-p2"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("pool_h, pool_w, stride, pad", PADDED_POOL_CASES)
def test_dlfs_padded_pooling_matches_neg_inf_padding(rng, pool_h, pool_w, stride, pad, dtype):
    # All inputs negative: zero padding would win every border window; -inf padding must not.
    x = (ties(rng, (2, 2, 6, 7)) - 4).astype(dtype)
    layer = dlfs.Pooling(pool_h, pool_w, stride=stride, pad=pad)
    out = layer.forward(x)
    dout = normal(rng, out.shape, dtype)
    want, want_arg, want_dx = naive_padded_max_pool(x, pool_h, pool_w, stride, pad, dout)

    assert out.shape == ((2, 2) + (((6 + 2 * pad - pool_h) // stride + 1),
                                   ((7 + 2 * pad - pool_w) // stride + 1)))
    assert out.max() < 0
    np.testing.assert_array_equal(out, want.astype(dtype))
    np.testing.assert_array_equal(layer.arg_max, want_arg)
    assert_close(layer.backward(dout), want_dx.astype(dtype), dtype,
                 reduction_length=pool_h * pool_w)


def test_dlfs_pooling_arg_max_of_an_unbatched_image(rng):
    x = normal(rng, (2, 5, 6))
    batched, single = dlfs.Pooling(3, 2, stride=2, pad=1), dlfs.Pooling(3, 2, stride=2, pad=1)
    np.testing.assert_array_equal(single.forward(x), batched.forward(x[np.newaxis])[0])
    np.testing.assert_array_equal(single.arg_max, batched.arg_max)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dlfs_pooling_nan_windows(dtype):
    # The documented difference from the book: a window with two or more NaNs routes to its
    # LAST NaN (PyTorch's CPU rule), where the book's np.argmax picks the first. One NaN, or
    # none: the same as the book.
    nan = np.nan
    x = np.array([[[[nan, 1., nan, 2., 5., 6.],
                    [0., nan, 3., 4., 7., 6.],
                    [nan, nan, 1., 1., 8., 8.],
                    [nan, 0., 2., nan, 8., 8.]]]], dtype=dtype)
    layer, book = dlfs.Pooling(2, 2, stride=2), BookPooling(2, 2, stride=2)
    out = layer.forward(x)
    np.testing.assert_array_equal(out, book.forward(x.astype(np.float64)).astype(dtype))
    # Windows in (out_y, out_x) order: 2 NaNs, 1 NaN, no NaN; 3 NaNs, 1 NaN, 4-way tie.
    np.testing.assert_array_equal(book.arg_max, [0, 0, 2, 0, 3, 0])
    np.testing.assert_array_equal(layer.arg_max, [3, 0, 2, 2, 3, 0])
    dout = np.arange(1., 7.).reshape(1, 1, 2, 3).astype(dtype)
    want = np.zeros_like(x)
    want[0, 0, [1, 0, 1, 3, 3, 2], [1, 2, 4, 0, 3, 4]] = dout.ravel()
    np.testing.assert_array_equal(layer.backward(dout), want)


def test_dlfs_pooling_follows_the_books_signature():
    params = inspect.signature(dlfs.Pooling).parameters
    assert [(p.name, p.default) for p in params.values()] == [
        ("pool_h", inspect.Parameter.empty), ("pool_w", inspect.Parameter.empty),
        ("stride", 1), ("pad", 0)]
    params = inspect.signature(dlfs.Convolution).parameters
    assert [(p.name, p.default) for p in params.values()] == [
        ("W", inspect.Parameter.empty), ("b", inspect.Parameter.empty), ("stride", 1), ("pad", 0)]
    # stride defaults to 1 (the book's choice), not to the window size.
    assert dlfs.Pooling(2, 2).forward(np.zeros((1, 1, 4, 4))).shape == (1, 1, 3, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dlfs_relu_matches_book(rng, dtype):
    x = ties(rng, (2, 3, 4, 5), dtype)  # includes zeros: the gradient there is 0
    layer, book = dlfs.Relu(), BookRelu()
    out = layer.forward(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, book.forward(x.astype(np.float64)).astype(dtype))
    np.testing.assert_array_equal(layer.mask, book.mask)

    dout = normal(rng, x.shape, dtype)
    kept = dout.copy()
    dx = layer.backward(dout)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, book.backward(dout.astype(np.float64)).astype(dtype))
    np.testing.assert_array_equal(dout, kept)  # unlike the book, dout is not modified

    flat = dlfs.Relu()  # also between affine layers (2-D)
    np.testing.assert_array_equal(flat.forward(x.reshape(2, -1)), out.reshape(2, -1))


@pytest.mark.parametrize("one_hot", [False, True], ids=["labels", "one-hot"])
def test_dlfs_affine_and_softmax_with_loss_match_book(rng, one_hot):
    x = normal(rng, (4, 2, 3, 3))
    W, b = normal(rng, (18, 5)), normal(rng, 5)
    t = rng.integers(0, 5, size=4)
    if one_hot:
        t = np.eye(5)[t]
    affine, book_affine = dlfs.Affine(W, b), BookAffine(W, b)
    loss_layer, book_loss = dlfs.SoftmaxWithLoss(), BookSoftmaxWithLoss()

    scores = affine.forward(x)
    np.testing.assert_allclose(scores, book_affine.forward(x), rtol=1e-13)
    np.testing.assert_allclose(loss_layer.forward(scores, t), book_loss.forward(scores, t),
                               rtol=1e-13)
    dscores = loss_layer.backward()
    np.testing.assert_allclose(dscores, book_loss.backward(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(loss_layer.backward(2.0), 2 * dscores, rtol=1e-13, atol=1e-15)
    dx = affine.backward(dscores)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, book_affine.backward(dscores), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(affine.dW, book_affine.dW, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(affine.db, book_affine.db, rtol=1e-13, atol=1e-15)


def test_dlfs_float32_stays_float32_through_a_layer_stack(rng):
    f32 = np.float32
    x = normal(rng, (2, 1, 8, 8), f32)
    conv = dlfs.Convolution(normal(rng, (3, 1, 3, 3), f32), np.zeros(3, f32), pad=1)
    relu, pool = dlfs.Relu(), dlfs.Pooling(2, 2, stride=2, pad=1)
    y = pool.forward(relu.forward(conv.forward(x)))
    assert y.dtype == f32 and y.shape == (2, 3, 5, 5)
    dx = conv.backward(relu.backward(pool.backward(np.ones_like(y))))
    assert (dx.dtype, conv.dW.dtype, conv.db.dtype) == (f32, f32, f32)
    assert conv.col.dtype == f32


def test_dlfs_uses_the_fast_ops():
    for name in ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "relu",
                 "relu_backward"):
        assert getattr(dlfs, name) is getattr(fastconv, name), name
    for name in ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
                 "relu_backward"):
        assert getattr(cs231n, name) is getattr(fastconv, name), name


def test_dlfs_errors():
    x = np.zeros((1, 2, 6, 6))
    with pytest.raises(ValueError, match="padding .* at most half of kernel_size"):
        dlfs.Pooling(2, 2, stride=2, pad=2).forward(x)
    with pytest.raises(ValueError, match="channels"):
        dlfs.Convolution(np.zeros((3, 1, 3, 3)), np.zeros(3)).forward(x)
    with pytest.raises(ValueError, match="kernel"):
        dlfs.Convolution(np.zeros((3, 2, 7, 7)), np.zeros(3)).forward(x)
    conv = dlfs.Convolution(np.zeros((3, 2, 3, 3)), np.zeros(3))
    conv.forward(x)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        conv.backward(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="cols must have shape"):
        dlfs.col2im(np.zeros((4, 4)), (1, 1, 4, 4), 2, 2)
    with pytest.raises(ValueError, match="4-D"):
        dlfs.im2col(np.zeros((6, 6)), 2, 2)
    for layer, name in [(dlfs.Convolution(np.zeros((1, 1, 1, 1)), np.zeros(1)), "Convolution"),
                        (dlfs.Pooling(2, 2), "Pooling"), (dlfs.Relu(), "Relu"),
                        (dlfs.Affine(np.zeros((2, 2)), np.zeros(2)), "Affine")]:
        with pytest.raises(RuntimeError, match=rf"{name}\.backward: call forward\(\) first"):
            layer.backward(np.zeros((1, 1, 1, 1)))
    with pytest.raises(RuntimeError, match="call forward"):
        dlfs.SoftmaxWithLoss().backward()


def test_dlfs_attributes_before_forward():
    conv = dlfs.Convolution(np.zeros((2, 1, 3, 3)), np.zeros(2))
    assert (conv.x, conv.col, conv.dW, conv.db) == (None, None, None, None)
    assert conv.col_W.shape == (9, 2)
    pool, relu = dlfs.Pooling(2, 2), dlfs.Relu()
    assert (pool.x, pool.arg_max, relu.mask) == (None, None, None)


# --------------------------------------------------------------------------------------------
# A tiny "SimpleConvNet" (ch07/simple_convnet.py), written as the book does


class SimpleConvNet:
    """conv - relu - pool - affine - relu - affine - softmax, with layers from ``L``."""

    def __init__(self, L, input_dim=(1, 6, 6), filter_num=3, filter_size=3, pad=1, stride=1,
                 hidden_size=5, output_size=3, weight_init_std=0.3, seed=0):
        rng = np.random.default_rng(seed)
        input_size = input_dim[1]
        conv_output_size = (input_size - filter_size + 2 * pad) / stride + 1
        pool_output_size = int(filter_num * (conv_output_size / 2) * (conv_output_size / 2))

        self.params = {}
        self.params["W1"] = weight_init_std * rng.standard_normal(
            (filter_num, input_dim[0], filter_size, filter_size))
        self.params["b1"] = 0.1 * rng.standard_normal(filter_num)
        self.params["W2"] = weight_init_std * rng.standard_normal((pool_output_size, hidden_size))
        self.params["b2"] = 0.1 * rng.standard_normal(hidden_size)
        self.params["W3"] = weight_init_std * rng.standard_normal((hidden_size, output_size))
        self.params["b3"] = 0.1 * rng.standard_normal(output_size)

        self.layers = OrderedDict()
        self.layers["Conv1"] = L.Convolution(self.params["W1"], self.params["b1"], stride, pad)
        self.layers["Relu1"] = L.Relu()
        self.layers["Pool1"] = L.Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = L.Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = L.Relu()
        self.layers["Affine2"] = L.Affine(self.params["W3"], self.params["b3"])
        self.last_layer = L.SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x), t)

    def numerical_gradient(self, x, t):
        loss_w = lambda w: self.loss(x, t)  # noqa: E731  (the book's style)
        grads = {}
        for idx in (1, 2, 3):
            grads["W" + str(idx)] = book_numerical_gradient(loss_w, self.params["W" + str(idx)])
            grads["b" + str(idx)] = book_numerical_gradient(loss_w, self.params["b" + str(idx)])
        return grads

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        grads["W1"], grads["b1"] = self.layers["Conv1"].dW, self.layers["Conv1"].db
        grads["W2"], grads["b2"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W3"], grads["b3"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


def book_numerical_gradient(f, x, h=1e-4):
    """common/gradient.py's numerical_gradient (central differences, h=1e-4, in place)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = float(tmp_val) + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


BOOK_LAYERS = SimpleNamespace(Convolution=BookConvolution, Relu=BookRelu, Pooling=BookPooling,
                              Affine=BookAffine, SoftmaxWithLoss=BookSoftmaxWithLoss)


def _batch(seed=1, n=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 6, 6)), rng.integers(0, 3, size=n)


def test_simple_convnet_trains_like_the_books_layers():
    x, t = _batch()
    net, book_net = SimpleConvNet(dlfs), SimpleConvNet(BOOK_LAYERS)
    losses = []
    for _ in range(5):  # plain SGD, updating the shared parameter arrays in place
        grads, book_grads = net.gradient(x, t), book_net.gradient(x, t)
        losses.append(net.last_layer.loss)
        for key in net.params:
            np.testing.assert_allclose(grads[key], book_grads[key], rtol=1e-9, atol=1e-12,
                                       err_msg=key)
            net.params[key] -= 0.1 * grads[key]
            book_net.params[key] -= 0.1 * book_grads[key]
    for key in net.params:
        np.testing.assert_allclose(net.params[key], book_net.params[key], rtol=1e-9,
                                   atol=1e-12, err_msg=key)
    assert net.loss(x, t) < losses[0]


def test_simple_convnet_numerical_gradient_matches_backprop():
    x, t = _batch(seed=2, n=3)
    net = SimpleConvNet(dlfs, seed=3)
    backprop = net.gradient(x, t)
    numerical = net.numerical_gradient(x, t)
    for key in ("W1", "b1", "W2", "b2", "W3", "b3"):
        assert backprop[key].shape == net.params[key].shape, key
        assert np.abs(backprop[key]).max() > 1e-4, key  # a gradient that actually flows
        np.testing.assert_allclose(backprop[key], numerical[key], rtol=1e-5, atol=1e-8,
                                   err_msg=key)


# ============================================================================================
# cs231n
# ============================================================================================

# (x shape, w shape, stride, pad): every case tiles exactly, as CS231n requires.
CS_CONV_CASES = [
    pytest.param((2, 3, 7, 7), (4, 3, 3, 3), 1, 1, id="k3-s1-p1"),
    pytest.param((2, 3, 9, 8), (4, 3, 3, 2), 2, 1, id="k3x2-s2-p1"),
    pytest.param((1, 2, 6, 10), (3, 2, 2, 4), 2, 0, id="k2x4-s2"),
    pytest.param((2, 1, 5, 5), (2, 1, 5, 5), 1, 0, id="kernel-equals-input"),
    pytest.param((1, 2, 7, 7), (2, 2, 1, 1), 3, 0, id="1x1-s3"),
    pytest.param((1, 2, 5, 5), (2, 2, 3, 3), 1, 2, id="k3-p2"),
]

# (x shape, pool_height, pool_width, stride)
CS_POOL_CASES = [
    pytest.param((2, 3, 8, 8), 2, 2, 2, id="2x2-s2"),
    pytest.param((2, 3, 7, 9), 3, 3, 2, id="3x3-s2-overlapping"),
    pytest.param((1, 2, 6, 9), 2, 3, 2, id="2x3-s2"),
    pytest.param((1, 2, 5, 5), 2, 2, 1, id="2x2-s1"),
    pytest.param((2, 1, 4, 6), 4, 1, 1, id="4x1-s1"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad", CS_CONV_CASES)
def test_cs231n_conv_matches_naive(rng, x_shape, w_shape, stride, pad, dtype):
    x, w, b = _conv_inputs(rng, x_shape, w_shape, dtype)
    conv_param = {"stride": stride, "pad": pad}
    red = int(np.prod(w_shape[1:]))
    out, cache = cs231n.conv_forward_fast(x, w, b, conv_param)
    want, naive_cache = conv_forward_naive(*_f64(x, w, b), conv_param)
    assert_close(out, want.astype(dtype), dtype, reduction_length=red)

    dout = normal(rng, out.shape, dtype)
    dx, dw, db = cs231n.conv_backward_fast(dout, cache)
    want_dx, want_dw, want_db = conv_backward_naive(dout.astype(np.float64), naive_cache)
    n_out = out.shape[0] * out.shape[2] * out.shape[3]
    assert_close(dx, want_dx.astype(dtype), dtype, reduction_length=w_shape[0] * red)
    assert_close(dw, want_dw.astype(dtype), dtype, reduction_length=n_out)
    assert_close(db, want_db.astype(dtype), dtype, reduction_length=n_out)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_shape, ph, pw, stride", CS_POOL_CASES)
def test_cs231n_max_pool_matches_naive(rng, x_shape, ph, pw, stride, dtype):
    x = ties(rng, x_shape, dtype)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = cs231n.max_pool_forward_fast(x, pool_param)
    want, naive_cache = max_pool_forward_naive(x.astype(np.float64), pool_param)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, want.astype(dtype))

    dout = normal(rng, out.shape, dtype)
    dx = cs231n.max_pool_backward_fast(dout, cache)
    want_dx = max_pool_backward_naive(dout.astype(np.float64), naive_cache)
    assert_close(dx, want_dx.astype(dtype), dtype, reduction_length=ph * pw)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad", CS_CONV_CASES[:3])
def test_cs231n_conv_relu_matches_naive(rng, x_shape, w_shape, stride, pad, dtype):
    x, w, b = _conv_inputs(rng, x_shape, w_shape, dtype)
    conv_param = {"stride": stride, "pad": pad}
    red = int(np.prod(w_shape[1:]))
    out, cache = cs231n.conv_relu_forward(x, w, b, conv_param)
    a, conv_cache = conv_forward_naive(*_f64(x, w, b), conv_param)
    want, relu_cache = relu_forward_naive(a)
    assert_close(out, want.astype(dtype), dtype, reduction_length=red)
    assert (out > 0).any() and (out == 0).any()

    dout = normal(rng, out.shape, dtype)
    grads = cs231n.conv_relu_backward(dout, cache)
    want_grads = conv_backward_naive(relu_backward_naive(dout.astype(np.float64), relu_cache),
                                     conv_cache)
    n_out = out.shape[0] * out.shape[2] * out.shape[3]
    for got, expected, length in zip(grads, want_grads, (w_shape[0] * red, n_out, n_out)):
        assert_close(got, expected.astype(dtype), dtype, reduction_length=length)


# (x shape, w shape, conv stride, conv pad, pool_height, pool_width, pool stride)
CS_CRP_CASES = [
    pytest.param((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 2, 2, 2, id="assignment-like"),
    pytest.param((2, 2, 9, 8), (3, 2, 3, 2), 2, 1, 3, 2, 1, id="nonsquare-overlapping"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad, ph, pw, pstride", CS_CRP_CASES)
def test_cs231n_conv_relu_pool_matches_naive(rng, x_shape, w_shape, stride, pad, ph, pw,
                                             pstride, dtype):
    x, w, b = _conv_inputs(rng, x_shape, w_shape, dtype)
    conv_param = {"stride": stride, "pad": pad}
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": pstride}
    red = int(np.prod(w_shape[1:]))
    out, cache = cs231n.conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    a, conv_cache = conv_forward_naive(*_f64(x, w, b), conv_param)
    s, relu_cache = relu_forward_naive(a)
    want, pool_cache = max_pool_forward_naive(s, pool_param)
    assert_close(out, want.astype(dtype), dtype, reduction_length=red)

    dout = normal(rng, out.shape, dtype)
    grads = cs231n.conv_relu_pool_backward(dout, cache)
    ds = max_pool_backward_naive(dout.astype(np.float64), pool_cache)
    want_grads = conv_backward_naive(relu_backward_naive(ds, relu_cache), conv_cache)
    n_out = a.shape[0] * a.shape[2] * a.shape[3]
    for got, expected, length in zip(grads, want_grads, (w_shape[0] * red, n_out, n_out)):
        assert_close(got, expected.astype(dtype), dtype, reduction_length=length)


def _round_trip_cases():
    conv = {"stride": 2, "pad": 1}
    pool = {"pool_height": 3, "pool_width": 3, "stride": 2}
    return [
        pytest.param(lambda x, w, b: cs231n.conv_forward_fast(x, w, b, conv),
                     cs231n.conv_backward_fast, id="conv"),
        pytest.param(lambda x, w, b: cs231n.max_pool_forward_fast(x, pool),
                     cs231n.max_pool_backward_fast, id="max_pool"),
        pytest.param(lambda x, w, b: cs231n.conv_relu_forward(x, w, b, conv),
                     cs231n.conv_relu_backward, id="conv_relu"),
        pytest.param(lambda x, w, b: cs231n.conv_relu_pool_forward(x, w, b, conv, pool),
                     cs231n.conv_relu_pool_backward, id="conv_relu_pool"),
    ]


@pytest.mark.parametrize("forward, backward", _round_trip_cases())
def test_cs231n_cache_round_trip(rng, forward, backward):
    x, w, b = _conv_inputs(rng, (2, 3, 9, 9), (4, 3, 3, 3), np.float64)
    saved = [a.copy() for a in (x, w, b)]
    out, cache = forward(x, w, b)
    dout = normal(rng, out.shape)
    dout_saved = dout.copy()
    first = backward(dout, cache)
    again = backward(dout, cache)  # a cache can be used twice
    thawed = backward(dout, pickle.loads(pickle.dumps(cache)))  # and pickled
    first = first if isinstance(first, tuple) else (first,)
    again = again if isinstance(again, tuple) else (again,)
    thawed = thawed if isinstance(thawed, tuple) else (thawed,)
    assert first[0].shape == x.shape
    for a, b2, c in zip(first, again, thawed):
        np.testing.assert_array_equal(a, b2)
        np.testing.assert_array_equal(a, c)
    for a, kept in zip((x, w, b, dout), saved + [dout_saved]):
        np.testing.assert_array_equal(a, kept)  # inputs are not modified


def test_cs231n_ignores_extra_param_keys_and_takes_pairs(rng):
    x, w, b = _conv_inputs(rng, (1, 2, 7, 9), (3, 2, 3, 3), np.float64)
    out, _ = cs231n.conv_forward_fast(x, w, b, {"stride": (2, 1), "pad": 1, "note": "x"})
    assert out.shape == (1, 3, 4, 9)
    pool = {"pool_height": 3, "pool_width": 3, "stride": (2, 3), "mode": "max"}
    assert cs231n.max_pool_forward_fast(x, pool)[0].shape == (1, 2, 3, 3)


# --------------------------------------------------------------------------------------------
# cs231n errors


def test_cs231n_conv_size_errors_name_axis_sizes_stride_and_pad():
    b = np.zeros(2)
    with pytest.raises(ValueError, match=r"conv_forward_fast: the width axis .* \(W \+ 2\*pad - "
                       r"WW\) % stride must be 0, but \(8 \+ 2\*1 - 3\) % 2 = 1 \(width 8, "
                       r"kernel 3, stride 2, pad 1\)"):
        cs231n.conv_forward_fast(np.zeros((1, 1, 7, 8)), np.zeros((2, 1, 3, 3)), b,
                                 {"stride": 2, "pad": 1})
    with pytest.raises(ValueError, match=r"height axis .* \(6 \+ 2\*0 - 2\) % 3 = 1 "
                       r"\(height 6, kernel 2, stride 3, pad 0\)"):
        cs231n.conv_relu_forward(np.zeros((1, 1, 6, 5)), np.zeros((2, 1, 2, 2)), b,
                                 {"stride": 3, "pad": 0})


def test_cs231n_pool_size_errors_name_axis_sizes_and_stride():
    with pytest.raises(ValueError, match=r"max_pool_forward_fast: the height axis .* "
                       r"\(H - pool_height\) % stride must be 0, but \(7 - 2\) % 2 = 1"):
        cs231n.max_pool_forward_fast(np.zeros((1, 1, 7, 8)),
                                     {"pool_height": 2, "pool_width": 2, "stride": 2})
    # Pooling inside conv_relu_pool_forward: the errors name the function that was called.
    with pytest.raises(ValueError, match=r"^conv_relu_pool_forward: the width axis .* "
                       r"\(8 - 3\) % 2 = 1"):
        cs231n.conv_relu_pool_forward(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 1, 1)),
                                      np.zeros(1), {"stride": 1, "pad": 0},
                                      {"pool_height": 2, "pool_width": 3, "stride": 2})


def test_cs231n_conv_relu_pool_errors_name_the_called_function():
    x, w, b, conv = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 1, 1)), np.zeros(1), {"stride": 1,
                                                                                   "pad": 0}
    with pytest.raises(KeyError, match="^[\"']conv_relu_pool_forward: pool_param is missing the "
                       "key 'stride'"):
        cs231n.conv_relu_pool_forward(x, w, b, conv, {"pool_height": 2, "pool_width": 2})
    with pytest.raises(ValueError, match=r"^conv_relu_pool_forward: pool_param\['pool_height'\]"
                       r".* must be positive"):
        cs231n.conv_relu_pool_forward(x, w, b, conv, {"pool_height": 0, "pool_width": 2,
                                                      "stride": 2})
    out, (conv_cache, relu_out, pool_cache) = cs231n.conv_relu_pool_forward(
        x, w, b, conv, {"pool_height": 2, "pool_width": 2, "stride": 2})
    with pytest.raises(ValueError, match="^conv_relu_pool_backward: cache must be the cache "
                       "returned by conv_relu_pool_forward, got tuple of length 2"):
        cs231n.conv_relu_pool_backward(out, (conv_cache, relu_out, pool_cache[:2]))
    with pytest.raises(ValueError, match=r"^conv_relu_pool_backward: the height axis"):
        bad = (np.zeros((1, 1, 5, 4)), {"pool_height": 2, "pool_width": 2, "stride": 2},
               pool_cache[2])
        cs231n.conv_relu_pool_backward(out, (conv_cache, relu_out, bad))


@pytest.mark.parametrize("missing", ["stride", "pad"])
def test_cs231n_missing_conv_param_key(missing):
    conv_param = {"stride": 1, "pad": 0}
    del conv_param[missing]
    with pytest.raises(KeyError, match=f"conv_param is missing the key '{missing}'"):
        cs231n.conv_forward_fast(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), np.zeros(1),
                                 conv_param)


@pytest.mark.parametrize("missing", ["pool_height", "pool_width", "stride"])
def test_cs231n_missing_pool_param_key(missing):
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    del pool_param[missing]
    with pytest.raises(KeyError, match=f"pool_param is missing the key '{missing}'"):
        cs231n.max_pool_forward_fast(np.zeros((1, 1, 4, 4)), pool_param)


def test_cs231n_other_argument_errors():
    x, w, b = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), np.zeros(1)
    with pytest.raises(TypeError, match="conv_param must be a dict"):
        cs231n.conv_forward_fast(x, w, b, (1, 0))
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\), got shape \(4, 4\)"):
        cs231n.conv_forward_fast(x[0, 0], w, b, {"stride": 1, "pad": 0})
    with pytest.raises(ValueError, match=r"w must be 4-D \(F, C, HH, WW\)"):
        cs231n.conv_forward_fast(x, w[0], b, {"stride": 1, "pad": 0})
    with pytest.raises(ValueError, match=r"conv_param\['stride'\] must be positive"):
        cs231n.conv_forward_fast(x, w, b, {"stride": 0, "pad": 0})
    with pytest.raises(ValueError, match=r"conv_param\['pad'\] must be >= 0"):
        cs231n.conv_forward_fast(x, w, b, {"stride": 1, "pad": -1})
    with pytest.raises(ValueError, match="bias must have shape"):
        cs231n.conv_forward_fast(x, w, np.zeros(2), {"stride": 1, "pad": 0})
    with pytest.raises(ValueError, match="larger than the padded input"):
        cs231n.conv_forward_fast(x, np.zeros((1, 1, 5, 5)), b, {"stride": 1, "pad": 0})
    with pytest.raises(ValueError, match="pool_height.* must be positive"):
        cs231n.max_pool_forward_fast(x, {"pool_height": 0, "pool_width": 2, "stride": 2})
    out, cache = cs231n.conv_forward_fast(x, w, b, {"stride": 1, "pad": 0})
    with pytest.raises(ValueError, match="grad_out must have shape"):
        cs231n.conv_backward_fast(np.zeros((1, 1, 3, 3)), cache)
    with pytest.raises(ValueError, match="cache must be the cache returned by conv_forward_fast"):
        cs231n.conv_backward_fast(out, cache[:3])
    with pytest.raises(ValueError, match="cache must be the cache returned by "
                       "max_pool_forward_fast"):
        cs231n.max_pool_backward_fast(out, cache)


# ============================================================================================
# doctests


@pytest.mark.parametrize("module_name", ["fastconv.compat", "fastconv.compat.dlfs",
                                         "fastconv.compat.cs231n"])
def test_compat_doctests(module_name, capsys):
    module = importlib.import_module(module_name)
    capsys.readouterr()
    result = doctest.testmod(module, verbose=False, report=True)
    report = capsys.readouterr().out
    assert result.failed == 0, report
    assert result.attempted >= 5, f"{module_name} has too few examples"
