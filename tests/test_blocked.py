"""The register-blocked direct kernels against the reference: the blocked kernel
(``algorithm="direct"`` with >= 4 output channels per group; NCHW through either
micro-kernel), the one-channel kernel (one output channel per group: depthwise, single
filters), and for both: block edges, stride phases, groups, the in-place 1x1 NHWC path, both
ways of sharing out a batch, scratch reuse, non-finite values and "auto"'s choice."""

from __future__ import annotations

import importlib
import itertools
import math
import threading

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv import _isa, _validate

from _helpers import DTYPES, LAYOUTS, GuardedBuffers, assert_close, oihw_to_hwio, to_nhwc

conv_module = importlib.import_module("fastconv.conv")
blocked = conv_module._blocked

# Small problems here must run on several threads too (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("small_thread_thresholds")


def problem(layout, dtype, n, c_in, h, w, c_out, kernel, groups=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c_in // groups) + tuple(kernel)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    if layout == "NHWC":
        x, wt = to_nhwc(x), oihw_to_hwio(wt)
    return x, wt, bias


def check(layout, dtype, n, c_in, h, w, c_out, kernel, num_threads=2, bias=True,
          path="blocked", **kw):
    """conv2d(algorithm="direct") against the reference, after checking which kernel runs."""
    x, wt, b = problem(layout, dtype, n, c_in, h, w, c_out, kernel, kw.get("groups", 1))
    b = b if bias else None
    args = _validate.conv_args(x, wt, b, kw.get("stride", 1), kw.get("padding", 0),
                               kw.get("dilation", 1), kw.get("groups", 1), layout,
                               kw.get("activation"), "test")
    assert (conv_module._uses_blocked(args), conv_module._uses_planes(args)) == (
        path == "blocked", path == "planes")
    got = fastconv.conv2d(x, wt, b, layout=layout, algorithm="direct",
                          num_threads=num_threads, **kw)
    want = reference.conv2d(x, wt, b, layout=layout, **kw)
    reduction = c_in // kw.get("groups", 1) * kernel[0] * kernel[1]
    assert_close(got, want, dtype, reduction, err_msg=f"{layout} {kw}")
    return got


def block_sizes(dtype):
    return blocked.block_sizes(np.dtype(dtype).itemsize)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sizes_follow_the_vector_width(dtype):
    """Blocks are whole vectors of the level in use (AVX-512: 64 bytes, AVX2: 32, else 16)."""
    lanes = {"avx512": 64, "avx2": 32}.get(_isa.LEVEL, 16) // np.dtype(dtype).itemsize
    sizes = block_sizes(dtype)
    assert sizes["pix_pixels"] % lanes == 0 and sizes["ch_cols"] % lanes == 0
    assert sizes["pix_rows"] >= 4 and sizes["ch_pixels"] >= 6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_channel_counts_around_the_blocks(layout, dtype):
    """Every channel count from one below to one above each block edge of this build."""
    sizes = block_sizes(dtype)
    edge = sizes["ch_cols"] if layout == "NHWC" else sizes["pix_rows"]
    for c_out in sorted({4, 5, edge - 1, edge, edge + 1, 2 * edge + 3}):
        if c_out >= 4:
            check(layout, dtype, 2, 3, 7, 6, c_out, (3, 3), padding=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pixel_counts_around_the_blocks(layout, dtype):
    """Output rows shorter and longer than a pixel block, and grids ending inside a block."""
    sizes = block_sizes(dtype)
    q = sizes["ch_pixels"] if layout == "NHWC" else sizes["pix_pixels"]
    for width in sorted({1, 2, q - 1, q, q + 1, 2 * q + 1}):
        check(layout, dtype, 1, 4, 3, width, 8, (1, 3), padding=(0, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride, dilation, padding, kernel", [
    (2, 1, 1, (3, 3)),
    (4, 1, 2, (11, 11)),          # AlexNet's first layer: 16 stride phases
    ((2, 3), 1, ((0, 2), (3, 1)), (3, 4)),
    (3, 1, 0, (2, 2)),            # stride larger than the kernel: unread input
    (1, 2, 2, (3, 3)),
    ((1, 2), (3, 2), "same", (3, 3)),
    (2, 2, "same", (2, 3)),
    (1, 1, "valid", (7, 7)),      # the kernel covers the whole input
])
def test_strides_dilations_and_padding(layout, dtype, stride, dilation, padding, kernel):
    check(layout, dtype, 2, 5, 13, 11 if kernel != (7, 7) else 7, 9, kernel, stride=stride,
          dilation=dilation, padding=padding, activation="relu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sw", [2, 4])
def test_strided_preparation_in_vectors(dtype, sw):
    """NCHW images with column stride 2 or 4 are split into their column phases a vector of
    columns at a time (fc_prep_phases), the padding columns and the row ends around that
    range one at a time: widths around one and two vectors of each phase, left padding
    below, at and past the stride, NaN and inf at the row ends, row strides 1 and 2, for the
    blocked kernel and the one-output-channel kernel (depthwise)."""
    lanes = block_sizes(dtype)["vector"]
    # In-range columns per phase: a vector less one, one, and one to two vectors (the last
    # step overlaps), whatever the left padding.
    widths = sorted({sw * lanes - 1, sw * lanes, sw * lanes + 1, sw * lanes + sw,
                     sw * lanes + 2 * sw, sw * (lanes + lanes // 2) + 1, 2 * sw * lanes + 3,
                     3 * sw * lanes + sw - 1})
    for width, left, sh in itertools.product(widths, sorted({0, 1, sw - 1, sw + 1}), (1, 2)):
        padding = ((1, 0), (left, (left + 1) % 3))
        for c_in, c_out, groups in ((3, 5, 1), (4, 4, 4)):
            x, wt, b = problem("NCHW", dtype, 2, c_in, 5, width, c_out, (2, sw + 1), groups,
                               seed=width + left)
            x[0, 0, 1, 0], x[1, c_in - 1, 2, width - 1] = np.nan, np.inf
            kw = dict(stride=(sh, sw), padding=padding, groups=groups)
            got = fastconv.conv2d(x, wt, b, algorithm="direct", **kw)
            want = reference.conv2d(x, wt, b, **kw)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want),
                                          err_msg=f"width {width}, {kw}")
            assert_close(got, want, dtype, c_in // groups * 2 * (sw + 1),
                         err_msg=f"width {width}, {kw}")
            assert np.isnan(got).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("groups, c_in, c_out", [(2, 6, 8), (3, 9, 12), (4, 8, 36)])
def test_groups(layout, dtype, groups, c_in, c_out):
    check(layout, dtype, 2, c_in, 6, 9, c_out, (3, 3), groups=groups, padding=1)



def _force_nchw_kernel(monkeypatch, kernel):
    """Make blocked NCHW calls run the ``"ch"`` or the ``"pix"`` micro-kernel, whichever the
    rule would choose, and check that each call really asks for it."""
    chosen = []
    call = blocked.conv2d_blocked

    def spy(*args):
        chosen.append("ch" if len(args) > 19 and args[19] else "pix")   # ch_nchw
        return call(*args)

    monkeypatch.setattr(conv_module, "_nchw_runs_ch", lambda *a: kernel == "ch")
    monkeypatch.setattr(blocked, "conv2d_blocked", spy)
    conv_module._clear_launch_caches()   # the launch plans hold the choice
    return chosen


NCHW_KERNEL_CASES = [
    # (n, c_in, h, w, c_out, kernel, groups, geometry keywords)
    (2, 3, 7, 6, 5, (3, 3), 1, dict(padding=1)),
    (1, 4, 9, 11, 8, (1, 3), 1, dict(padding=(0, 1))),          # one image: pixel chunks
    (3, 5, 13, 11, 9, (3, 3), 1, dict(stride=2, padding=1)),     # 3 images on 2 threads
    (4, 5, 13, 11, 9, (3, 4), 1, dict(stride=(2, 3), padding=((0, 2), (3, 1)))),
    (2, 3, 23, 21, 7, (11, 11), 1, dict(stride=4, padding=2)),   # 16 stride phases
    (2, 5, 10, 9, 6, (2, 2), 1, dict(stride=3)),                 # stride > kernel
    (2, 5, 13, 11, 9, (3, 3), 1, dict(dilation=2, padding=2)),
    (2, 5, 11, 10, 4, (2, 3), 1, dict(stride=2, dilation=2, padding="same")),
    (2, 5, 7, 7, 9, (7, 7), 1, {}),                               # kernel == input: 1 pixel
    (2, 6, 6, 9, 8, (3, 3), 2, dict(padding=1)),
    (2, 9, 6, 9, 12, (3, 3), 3, dict(padding=1)),
    (2, 8, 6, 9, 36, (3, 3), 4, dict(padding=1)),
]


@pytest.mark.parametrize("kernel", ["ch", "pix"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c_in, h, w, c_out, size, groups, kw", NCHW_KERNEL_CASES)
def test_nchw_runs_either_micro_kernel(monkeypatch, kernel, dtype, n, c_in, h, w, c_out, size,
                                       groups, kw):
    """Blocked NCHW layers through both micro-kernels (the ch one with its NCHW store),
    against the reference, with and without bias, with ReLU, and bit-identical on one and
    two threads (both ways of sharing out a batch)."""
    chosen = _force_nchw_kernel(monkeypatch, kernel)
    for bias, activation in ((True, "relu"), (False, None)):
        got = check("NCHW", dtype, n, c_in, h, w, c_out, size, groups=groups, bias=bias,
                    activation=activation, **kw)
        x, wt, b = problem("NCHW", dtype, n, c_in, h, w, c_out, size, groups)
        one = fastconv.conv2d(x, wt, b if bias else None, groups=groups, algorithm="direct",
                              activation=activation, num_threads=1, **kw)
        np.testing.assert_array_equal(one, got)
    assert chosen and set(chosen) == {kernel}


@pytest.mark.parametrize("dtype", DTYPES)
def test_nchw_ch_kernel_around_its_blocks(monkeypatch, dtype):
    """The ch kernel on NCHW: channel counts around its channel block, output planes around
    its pixel block (a short last block repeats its last pixel, which must not be stored)."""
    chosen = _force_nchw_kernel(monkeypatch, "ch")
    sizes = block_sizes(dtype)
    cols, q = sizes["ch_cols"], sizes["ch_pixels"]
    for c_out in sorted({4, cols - 1, cols, cols + 1, 2 * cols + 3} - {0, 1, 2, 3}):
        check("NCHW", dtype, 2, 3, 5, 6, c_out, (3, 3), padding=1)
    for pixels in sorted({1, 2, q - 1, q, q + 1, 2 * q + 1}):
        check("NCHW", dtype, 2, 4, 1, pixels + 2, 8, (1, 3))
        check("NCHW", dtype, 1, 4, pixels + 2, 1, 8, (3, 1))
    assert chosen and set(chosen) == {"ch"}


GUARDS = GuardedBuffers()


@pytest.mark.skipif(not GUARDS.available, reason="guard pages need mmap + mprotect (POSIX)")
@pytest.mark.parametrize("kernel", ["ch", "pix"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nchw_1x1_reads_x_in_place(monkeypatch, kernel, dtype):
    """NCHW 1x1 layers without stride or padding read x itself, not a prepared copy, unless
    whole images go to each thread, and the pix kernel only with planes of at least one of
    its pixel blocks (its last block moves back into the plane): with x against a guard
    page, one element read past the end crashes the process. Planes around the pix block,
    groups, planted NaN and inf, bias and ReLU; the same bits as the prepared copy (the
    same sums in the same order) and the reference's answer."""
    chosen = _force_nchw_kernel(monkeypatch, kernel)
    kernel_call = blocked.conv2d_blocked
    reads = []

    def recording(*args):   # conv2d_blocked's 16th argument: x is the prepared image
        reads.append((args[15], np.shares_memory(args[0], guarded)))
        return kernel_call(*args)

    monkeypatch.setattr(blocked, "conv2d_blocked", recording)
    q = block_sizes(dtype)["pix_pixels"]
    planes = sorted({(1, q), (1, q + 1), (2, q // 2 + 1), (q // 4, 9), (1, max(q - 1, 1)),
                     (5, 3)})
    cases = 0
    for (h, w), (n, threads, whole_images) in itertools.product(
            planes, [(1, 2, False), (3, 2, False), (4, 2, True), (4, 1, False)]):
        for c_in, c_out, groups in ((5, 9, 1), (6, 8, 2)):
            x, wt, b = problem("NCHW", dtype, n, c_in, h, w, c_out, (1, 1), groups,
                               seed=h * w + n)
            x[0, c_in - 1, h - 1, w - 1], x[n - 1, 0, 0, 0] = np.nan, np.inf
            guarded = GUARDS.array(x)   # x's last element against the guard page
            kw = dict(groups=groups, activation="relu", num_threads=threads,
                      algorithm="direct")
            reads.clear()
            got = fastconv.conv2d(guarded, wt, b, **kw)
            in_place = not whole_images and (kernel == "ch" or h * w >= q)
            err = f"{kernel} {n}x{c_in}x{h}x{w} -> {c_out}, groups {groups}, {threads} threads"
            assert reads == [(in_place, True)], err
            want = np.maximum(reference.conv2d(x, wt, b, groups=groups), 0)
            assert_close(got, want, dtype, c_in // groups, err_msg=err)
            assert np.isnan(got[0]).any(), err
            monkeypatch.setattr(conv_module, "NCHW_POINTWISE_IN_PLACE", False)
            conv_module._clear_launch_caches()
            reads.clear()
            prepared = fastconv.conv2d(guarded, wt, b, **kw)
            assert reads == [(False, True)], err
            np.testing.assert_array_equal(got, prepared, err_msg=err)
            monkeypatch.setattr(conv_module, "NCHW_POINTWISE_IN_PLACE", True)
            conv_module._clear_launch_caches()
            cases += in_place
    assert cases > 0 and set(chosen) == {kernel}


def test_nchw_in_place_read_refuses_what_it_cannot_do():
    """conv2d_blocked reads an NCHW x in place only for a 1x1 layer without stride or
    padding, and with the pix kernel only for planes of at least one pixel block."""
    q = block_sizes(np.float32)["pix_pixels"]
    off = np.arange(2, dtype=np.intp)[None, :] * 4
    wpack = np.zeros((1, 1, 2, block_sizes(np.float32)["pix_rows"]), np.float32)
    bias = np.zeros(0, np.float32)
    buf = np.zeros((1, 1), np.float32)
    small = np.zeros((1, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="planes of at least"):
        blocked.conv2d_blocked(small, wpack, off, bias, np.zeros((1, 4, 2, 2), np.float32),
                               buf, False, 1, 1, 0, 0, 2, 2, 1, 1, True, False, 1)
    big = np.zeros((1, 2, 1, q), np.float32)
    with pytest.raises(ValueError, match="only for a 1x1"):
        blocked.conv2d_blocked(big, wpack, off, bias, np.zeros((1, 4, 1, q), np.float32),
                               buf, False, 1, 1, 0, 1, 1, q + 1, 1, 1, True, False, 1)
    # An unpadded stride-1 3x3 layer (its offsets reach two rows and two columns past the
    # pixel): refused for either kernel, before it could read past x's end.
    x = GUARDS.array(np.ones((1, 4, 8, 12), np.float32))
    wt = np.ones((8, 4, 3, 3), np.float32)
    args = _validate.conv_args(x, wt, None, 1, 0, 1, 1, "NCHW", None, "test")
    for ch in (False, True):
        off3, n_cb, block, n_qb, hs, ws, _, _ = conv_module._blocked_plan_for(
            args.geometry, 1, 8, "NCHW", 4, ch)
        wpack3 = np.ascontiguousarray(conv_module._pack_blocked_weight(wt, args, n_cb, block))
        with pytest.raises(ValueError, match="only for a 1x1"):
            blocked.conv2d_blocked(x, wpack3, off3, bias, np.zeros((1, 8, 6, 10), np.float32),
                                   buf, False, 1, 1, 0, 0, hs, ws, n_qb, n_qb, True, False, 1,
                                   False, ch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nchw_kernel_choice(dtype):
    """The NCHW blocked call runs the kernel whose blocks cover fewer lanes (channels x
    pixels), the ch one on a tie: the lane counts worked out here from the geometry (stride
    1: the pix kernel's grid is out_h rows of the padded width), and on this build's block
    sizes the suite's choices that _nchw_runs_ch documents."""
    itemsize = np.dtype(dtype).itemsize
    sizes = block_sizes(dtype)

    def up(n, block):
        return -(-n // block) * block

    def choice(c_in, c_out, hw, kernel, padding=0):
        x = np.zeros((2, c_in, hw, hw), dtype)
        g = _validate.conv_args(x, np.zeros((c_out, c_in, kernel, kernel), dtype), None,
                                1, padding, 1, 1, "NCHW", None, "test").geometry
        out = hw + 2 * padding - kernel + 1
        pix = up(c_out, sizes["pix_rows"]) * up(out * (hw + 2 * padding), sizes["pix_pixels"])
        ch = up(c_out, sizes["ch_cols"]) * up(out * out, sizes["ch_pixels"])
        runs_ch = conv_module._nchw_runs_ch(g, 1, c_out, itemsize)
        assert runs_ch == (ch <= pix), (c_in, c_out, hw, kernel, padding, ch, pix)
        return runs_ch

    choices = {"lenet_conv1": choice(1, 6, 28, 5, 2), "lenet_conv2": choice(6, 16, 14, 5),
               "vgg_3x3": choice(64, 64, 56, 3, 1), "odd_channels": choice(8, 9, 20, 3),
               "one_pixel": choice(8, 64, 3, 3)}
    if _isa.LEVEL in ("avx2", "avx512") and dtype == np.float32:
        assert not choices["lenet_conv1"] and choices["vgg_3x3"]
        assert choices["lenet_conv2"] == (_isa.LEVEL == "avx2")
    assert choices["one_pixel"]   # one pixel: the pix kernel computes a block of them


# One output channel per group: NCHW depthwise and grouped layers, single-channel images in
# either layout (an NHWC one is an NCHW one in memory).
PLANE_CASES = [
    # (layout, c_in, groups, kernel, geometry keywords)
    ("NCHW", 8, 8, (3, 3), dict(padding=1)),
    ("NCHW", 6, 6, (3, 3), dict(stride=2, padding=1)),
    ("NCHW", 12, 4, (3, 3), dict(padding="same")),          # 3 input channels per group
    ("NCHW", 5, 5, (3, 2), dict(stride=(1, 3), padding=((2, 0), (1, 3)), dilation=(1, 2))),
    ("NCHW", 4, 4, (7, 7), dict(stride=3, padding=3)),
    ("NCHW", 3, 3, (1, 1), {}),
    ("NCHW", 1, 1, (5, 5), dict(stride=2, padding=2, dilation=2)),
    ("NHWC", 1, 1, (3, 3), dict(padding=1)),
    ("NHWC", 1, 1, (4, 3), dict(stride=2, padding="same")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, c_in, groups, kernel, kw", PLANE_CASES)
@pytest.mark.parametrize("width", [1, 9, 70])
def test_one_output_channel_per_group(layout, c_in, groups, kernel, kw, dtype, width):
    """Widths below, inside and across the one-channel kernel's pixel blocks."""
    check(layout, dtype, 2, c_in, 11, max(width, kernel[1]), groups, kernel, path="planes",
          groups=groups, activation="relu", **kw)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_channel_kernel_is_bit_identical_for_any_thread_count(layout):
    c = 1 if layout == "NHWC" else 6
    x, wt, b = problem(layout, np.float32, 3, c, 20, 21, c, (3, 3), groups=c)
    results = [fastconv.conv2d(x, wt, b, padding=1, groups=c, layout=layout,
                               algorithm="direct", num_threads=t) for t in (1, 2, 3)]
    assert_close(results[0], reference.conv2d(x, wt, b, padding=1, groups=c, layout=layout),
                 np.float32, 9)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


BAND_CASES = [   # (n, c = groups, h, w, kernel, kw): stride 1, one input channel per group
    (1, 1, 61, 37, (3, 3), dict(padding=1)),
    (1, 1, 50, 70, (5, 3), dict(padding=((3, 1), (0, 2)), dilation=(2, 1))),
    (3, 2, 29, 9, (3, 3), {}),                       # no padding: the last band is short
    (1, 1, 40, 33, (1, 1), {}),
    (1, 1, 23, 23, (7, 7), dict(padding="same", dilation=2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c, h, w, kernel, kw", BAND_CASES)
@pytest.mark.parametrize("band_bytes", [1, 2000, 2**20])
@pytest.mark.parametrize("plane_rows", [False, True], ids=["prepared", "rows"])
def test_one_channel_kernel_in_row_bands(monkeypatch, request, dtype, n, c, h, w, kernel, kw,
                                         band_bytes, plane_rows):
    """Large planes (or fewer planes than threads) are split into bands of output rows, each
    prepared and computed on its own (or, by conv2d_plane_rows, read in place): the results
    must be the reference's and bit-identical to the unbanded plane, for any band height
    (band_bytes 1: PLANE_BAND_MIN_ROWS rows) and any thread count."""
    monkeypatch.setattr(conv_module, "PLANE_ROWS", plane_rows)
    x, wt, b = problem("NCHW", dtype, n, c, h, w, c, kernel, groups=c)
    whole = fastconv.conv2d(x, wt, b, groups=c, algorithm="direct", num_threads=1,
                            activation="relu", **kw)
    monkeypatch.setattr(conv_module, "PLANE_BAND_BYTES", band_bytes)
    # The launch plans are cached by shape: none made with the real band size may serve
    # this test, and none made with the patched one may outlive it.
    conv_module._clear_launch_caches()
    request.addfinalizer(conv_module._clear_launch_caches)
    args = _validate.conv_args(x, wt, b, 1, kw.get("padding", 0), kw.get("dilation", 1), c,
                               "NCHW", "relu", "test")
    g = args.geometry
    bands = {t: -(-g.out_h // conv_module._plane_band_rows(g, c, x.itemsize, t))
             for t in (1, 2, 3)}
    if band_bytes == 1:
        assert bands[1] > 1     # really banded
    if n * c < 3:   # each of 3 threads gets a band, unless the bands would be too short
        assert bands[3] >= min(-(-3 // (n * c)), g.out_h // conv_module.PLANE_BAND_MIN_ROWS)
    want = reference.conv2d(x, wt, b, groups=c, activation="relu", **kw)
    band_args, ran = [], set()
    for name, band_arg in (("conv2d_planes", -4), ("conv2d_plane_rows", -3)):
        def spy(*a, _real=getattr(blocked, name), _at=band_arg, _name=name):
            band_args.append(a[_at])   # band_rows
            ran.add(_name)
            return _real(*a)

        monkeypatch.setattr(blocked, name, spy)
    expected = ("conv2d_plane_rows" if conv_module._runs_plane_rows(wt, g, c)
                else "conv2d_planes")
    few_or_small = (n * c <= conv_module.PLANE_ROWS_MAX_LARGE_PLANES
                    or h * w * x.itemsize <= conv_module.PLANE_ROWS_MAX_BYTES)
    assert (expected == "conv2d_plane_rows") == (plane_rows and blocked.plane_rows_native()
                                                 and few_or_small)
    for threads in (1, 2, 3):
        got = fastconv.conv2d(x, wt, b, groups=c, algorithm="direct", num_threads=threads,
                              activation="relu", **kw)
        assert_close(got, want, dtype, kernel[0] * kernel[1], err_msg=f"{threads} threads")
        np.testing.assert_array_equal(got, whole)
        if c == 1:   # a single-channel NHWC image is the same memory and runs the same bands
            got = fastconv.conv2d(to_nhwc(x), oihw_to_hwio(wt), b, layout="NHWC",
                                  algorithm="direct", num_threads=threads, activation="relu",
                                  **kw)
            np.testing.assert_array_equal(got, to_nhwc(whole))
    assert ran == {expected}
    if band_bytes == 1:
        assert min(band_args) < g.out_h   # the kernel really ran in bands


ROWS_CASES = [   # (n, c, h, w, kernel, conv2d keywords)
    (1, 1, 1, 1, (1, 1), {}),
    (2, 3, 5, 17, (3, 3), dict(padding=1)),
    (1, 2, 4, 64, (3, 3), dict(padding=1)),                 # one block wide, with edges
    (1, 1, 9, 70, (3, 3), {}),                              # blocks entirely inside the row
    (2, 2, 7, 100, (5, 3), dict(padding=((2, 1), (0, 3)))),
    (1, 3, 6, 33, (2, 7), dict(padding=3, dilation=2)),
    (1, 1, 3, 5, (3, 3), dict(padding=4)),                  # padding wider than the kernel
    (1, 1, 3, 9, (3, 3), dict(padding=(0, 1))),              # one output row
    (3, 4, 11, 15, (7, 7), dict(padding="same")),
    (1, 2, 13, 20, (3, 3), dict(padding=(3, 1), dilation=(3, 1))),   # rows feeding no output
    (2, 1, 12, 40, (3, 3), dict(padding=2, dilation=(2, 3))),
    (1, 1, 4, 6, (3, 3), dict(padding=(1, 17))),            # whole vectors in the padding
    (2, 3, 5, 5, (5, 5), {}),                                # kernel == input
    # The geometries compiled with constant sizes (3x3 'same' over several blocks, 5x5 'same')
    (1, 1, 6, 150, (3, 3), dict(padding=1)),
    (2, 2, 9, 40, (5, 5), dict(padding=2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c, h, w, kernel, kw", ROWS_CASES)
@pytest.mark.parametrize("bias, activation", [(False, None), (False, "relu"), (True, "relu")])
@pytest.mark.parametrize("planted", [False, True], ids=["finite", "nan-inf"])
def test_plane_rows_kernel_matches_the_prepared_one(monkeypatch, dtype, n, c, h, w, kernel, kw,
                                                    bias, activation, planted):
    """conv2d_plane_rows (stride 1, read in place, masked loads at the row ends) against the
    prepared one-channel kernel, bit for bit (the same sums in the same order: padding taps
    add zeros there and are skipped or masked here), and against the reference; finite
    inputs, and a NaN and an inf planted in x; several threads; the single-channel NHWC image
    that is the same memory. Spies check which kernel ran."""
    if not blocked.plane_rows_native():
        pytest.skip("this level runs the prepared one-channel kernel only")
    x, wt, b = problem("NCHW", dtype, n, c, h, w, c, kernel, groups=c, seed=h * w)
    if planted:
        x[0, 0, h // 2, w // 3] = np.nan
        x[-1, -1, h - 1, w - 1] = np.inf
    b = b if bias else None
    args = _validate.conv_args(x, wt, b, 1, kw.get("padding", 0), kw.get("dilation", 1), c,
                               "NCHW", activation, "test")
    assert conv_module._runs_plane_rows(wt, args.geometry, c)
    ran = []
    for name in ("conv2d_planes", "conv2d_plane_rows"):
        def spy(*a, _real=getattr(blocked, name), _name=name):
            ran.append(_name)
            return _real(*a)

        monkeypatch.setattr(blocked, name, spy)
    results = {}
    for plane_rows in (False, True):
        monkeypatch.setattr(conv_module, "PLANE_ROWS", plane_rows)
        for threads in (1, 2):
            results[plane_rows, threads] = fastconv.conv2d(
                x, wt, b, groups=c, activation=activation, algorithm="direct",
                num_threads=threads, **kw)
    assert ran == ["conv2d_planes"] * 2 + ["conv2d_plane_rows"] * 2
    want = reference.conv2d(x, wt, b, groups=c, activation=activation, **kw)
    assert_close(results[True, 1], want, dtype, kernel[0] * kernel[1])
    assert np.isfinite(want).all() != planted   # the finite pass compares finite bits
    for got in results.values():
        np.testing.assert_array_equal(got, results[False, 1])
    if c == 1:
        got = fastconv.conv2d(to_nhwc(x), oihw_to_hwio(wt), b, layout="NHWC",
                              activation=activation, algorithm="direct", **kw)
        np.testing.assert_array_equal(got, to_nhwc(results[False, 1]))
        assert ran[-1] == "conv2d_plane_rows"


def test_plane_rows_rule():
    """Which one-channel calls read x in place (see _runs_plane_rows)."""
    def runs_rows(n, c, h, w, weight=None, **kw):
        wt = np.ones((c, 1, 3, 3), np.float32) if weight is None else weight
        x = np.zeros((n, c, h, w), np.float32)
        g = _validate.conv_args(x, wt, None, kw.get("stride", 1), kw.get("padding", 0), 1, c,
                                "NCHW", None, "test").geometry
        return conv_module._runs_plane_rows(wt, g, c)

    native = blocked.plane_rows_native()
    assert runs_rows(32, 128, 56, 56, padding=1) == native       # small planes
    assert runs_rows(1, 1, 512, 512, padding=1) == native        # one large plane
    assert runs_rows(4, 2, 512, 512, padding=1) == native        # a few large planes
    assert not runs_rows(9, 1, 512, 512, padding=1)              # more large planes
    assert not runs_rows(32, 1, 512, 512, padding=1)
    assert not runs_rows(2, 8, 30, 30, stride=2, padding=1)      # stride 2
    inf = np.ones((8, 1, 3, 3), np.float32)
    inf[3, 0, 1, 1] = np.inf
    assert not runs_rows(2, 8, 30, 30, weight=inf, padding=1)   # must meet padding rows
    assert not runs_rows(2, 8, 30, 30, weight=inf, padding=(1, 0))
    assert runs_rows(2, 8, 30, 30, weight=inf, padding=(0, 1)) == native   # columns: zeros
    assert runs_rows(2, 8, 30, 30, weight=inf) == native         # no padding to meet


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding, nan_at", [
    (1, (slice(None), 1, 0, slice(None))),                # the top padding row
    ((0, 1), (slice(None), 1, slice(None), 0)),           # the left padding column
])
def test_plane_rows_inf_weight_meets_padding_zeros(dtype, padding, nan_at):
    """An inf weight meets the padding zeros and gives NaN there, as in PyTorch and the
    reference: with row padding through the prepared kernel, with column padding only
    through the in-place one (its masked lanes are real zeros)."""
    x, wt, b = problem("NCHW", dtype, 2, 4, 9, 21, 4, (3, 3), groups=4)
    wt[1, 0, 0, 0] = np.inf
    got = fastconv.conv2d(x, wt, b, padding=padding, groups=4, algorithm="direct")
    want = reference.conv2d(x, wt, b, padding=padding, groups=4)
    assert np.isnan(want[nan_at]).all()
    assert_close(got, want, dtype, 9)


def test_band_rows_rule():
    x = np.zeros((1, 1, 512, 512), np.float32)
    w = np.zeros((1, 1, 3, 3), np.float32)
    g = _validate.conv_args(x, w, None, 1, 1, 1, 1, "NCHW", None, "test").geometry
    rows = {t: conv_module._plane_band_rows(g, 1, 4, t) for t in (1, 2)}
    # 514 padded columns of float32: 125 rows fit in 256 KiB -> 5 bands, 6 on 2 threads.
    assert rows == {1: 103, 2: 86}
    strided = _validate.conv_args(x, w, None, 2, 1, 1, 1, "NCHW", None, "test").geometry
    assert conv_module._plane_band_rows(strided, 1, 4, 2) == strided.out_h
    small = _validate.conv_args(np.zeros((32, 128, 56, 56), np.float32),
                                np.zeros((128, 1, 3, 3), np.float32), None, 1, 1, 1, 128,
                                "NCHW", None, "test").geometry
    assert conv_module._plane_band_rows(small, 128, 4, 2) == 56   # dw_3x3: whole planes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [8, 9, 64, 70, 130])
@pytest.mark.parametrize("kernel, kw", [
    ((3, 3), dict(padding=1)),
    ((5, 3), dict(stride=(2, 1), padding="same", dilation=(1, 2))),
    ((2, 2), dict(stride=3)),
    ((3, 5), dict(stride=2, padding=((1, 2), (3, 0)), dilation=(2, 1))),
    ((5, 5), dict(dilation=3, padding=6)),     # no column has its whole window inside
    ((9, 9), dict(padding=4)),                 # more taps than the row's tap table holds
])
def test_nhwc_depthwise(dtype, channels, kernel, kw):
    """NHWC depthwise: whole channel blocks in registers plus a channel tail one at a time,
    interior columns from a table of the row's taps, border columns checking each tap;
    bit-identical for 1 and 2 threads."""
    x, w, b = problem("NHWC", dtype, 2, channels, 9, 11, channels, kernel, groups=channels)
    got = [fastconv.conv2d(x, w, b, groups=channels, layout="NHWC", algorithm="direct",
                           activation="relu", num_threads=t, **kw) for t in (1, 2)]
    want = reference.conv2d(x, w, b, groups=channels, layout="NHWC", activation="relu", **kw)
    assert_close(got[0], want, dtype, kernel[0] * kernel[1])
    np.testing.assert_array_equal(got[0], got[1])



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, kw", [
    ((3, 3), dict(padding=1)),
    ((3, 3), {}),
    ((1, 3), dict(padding=((0, 0), (2, 1)))),
    ((5, 3), dict(stride=(2, 1), dilation=(2, 1), padding=(3, 1))),
])
def test_nhwc_depthwise_sliding_runs(dtype, kernel, kw):
    """3-wide stride-1 NHWC depthwise kernels run interior columns in runs of 4 with the
    window sliding along the row, over blocks of 2 channel vectors: widths whose interior
    ends before, at and after a run, channel counts around the block (the rest of the
    channels take the per-column path), with and without bias, and ReLU."""
    lanes = {"avx512": 64, "avx2": 32}.get(_isa.LEVEL, 16) // np.dtype(dtype).itemsize
    block = 2 * lanes
    for channels in sorted({block - 1, block, block + 1, 2 * block + lanes + 1}):
        if channels < conv_module.NHWC_DIRECT_MIN_CHANNELS:
            continue   # too narrow for the NHWC depthwise kernel (runs transposed)
        for width in (5, 6, 7, 10, 13):
            x, w, b = problem("NHWC", dtype, 2, channels, 6, width, channels, kernel,
                              groups=channels)
            assert conv_module._is_nhwc_depthwise(_validate.conv_args(
                x, w, b, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                channels, "NHWC", None, "test"))
            for bias, act in ((b, "relu"), (None, None)):
                got = [fastconv.conv2d(x, w, bias, groups=channels, layout="NHWC",
                                       algorithm="direct", activation=act, num_threads=t,
                                       **kw) for t in (1, 2)]
                want = reference.conv2d(x, w, bias, groups=channels, layout="NHWC",
                                        activation=act, **kw)
                assert_close(got[0], want, dtype, kernel[0] * kernel[1],
                             err_msg=f"C={channels} W={width}")
                np.testing.assert_array_equal(got[0], got[1])

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [1, 0, ((2, 0), (1, 1)), ((0, 3), (0, 2))])
def test_nhwc_depthwise_row_pairs_give_the_same_bits(dtype, padding):
    """3x3 stride-1 NHWC depthwise rows whose four input rows are all inside the image go two
    at a time (fc_dw_nhwc_pair: runs of columns x one channel vector for both rows, then the
    one-row per-column path for what is left): the results equal the one-row path bit for
    bit and the reference, over heights that give pairs starting on even and odd rows and a
    lone last row, widths whose interior ends before, at and after a run, channel counts
    around the vector, bias/ReLU, NaN and inf in x, streaming stores, 1, 2 and 4 threads (2
    and 4 split images, and some shares end between the rows of a pair). The kernel reports
    the pairs it took: as many as the rule allows on one thread, none with pairs=False."""
    lanes = {"avx512": 64, "avx2": 32}.get(_isa.LEVEL, 16) // np.dtype(dtype).itemsize
    (pt, pb), (pl, pr) = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    total_pairs = 0
    for channels, height, width in [(lanes, 5, 7), (lanes + 1, 8, 6), (2 * lanes - 1, 9, 9),
                                    (3 * lanes + 5, 6, 12), (8, 7, 5), (lanes, 4, 3)]:
        x, w, b = problem("NHWC", dtype, 3, channels, height, width, channels, (3, 3),
                          groups=channels, seed=channels + height)
        x[1, 2, 1, 0] = np.nan
        x[2, height - 1, width - 1, channels - 1] = np.inf
        w2 = np.ascontiguousarray(w.reshape(9, channels))
        oh, ow = height + pt + pb - 2, width + pl + pr - 2
        # Pairs one thread takes: from the top of each image, rows r and r + 1 whenever input
        # rows r - pt .. r - pt + 3 are all inside it.
        per_image, r = 0, 0
        while r < oh:
            if r + 1 < oh and 0 <= r - pt and r - pt + 3 < height:
                per_image, r = per_image + 1, r + 2
            else:
                r += 1
        total_pairs += per_image
        for bias, relu in ((b, True), (np.empty(0, dtype), False)):
            results = []
            for pairs in (False, True):
                for threads, stream in ((1, False), (2, True), (4, False)):
                    out = np.full((3, oh, ow, channels), -7, dtype)
                    taken = blocked.conv2d_depthwise_nhwc(x, w2, bias, out, 3, 3, 1, 1, 1, 1,
                                                          pt, pl, relu, threads, stream, pairs)
                    if not pairs:
                        assert taken == 0
                    elif threads == 1:
                        assert taken == 3 * per_image
                    results.append(out)
            for got in results[1:]:
                np.testing.assert_array_equal(got, results[0],
                                              err_msg=f"C={channels} {height}x{width}")
            want = reference.conv2d(x, w, bias if bias.size else None, groups=channels,
                                    padding=((pt, pb), (pl, pr)), layout="NHWC",
                                    activation="relu" if relu else None)
            assert_close(results[-1], want, dtype, 9, err_msg=f"C={channels} {height}x{width}")
    assert total_pairs > 0   # the pair path really ran


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, kw", [
    ((3, 3), dict(padding=1)),                       # the sliding runs
    ((5, 3), dict(stride=(2, 1), padding=2)),        # the per-column paths
])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_nhwc_depthwise_streaming_stores_write_the_same_bits(monkeypatch, dtype, kernel, kw,
                                                             offset):
    """Large NHWC depthwise results go out by streaming stores (aligned vectors only; the
    others and the channel tail by ordinary ones): forced at every size here, the results
    equal the ordinary stores' bit for bit, with the result placed on and off the vector
    alignment (out= a view one element into a buffer), channel counts around the blocks,
    bias/ReLU, 1 and 2 threads."""
    calls = []
    real = blocked.conv2d_depthwise_nhwc

    def spy(*a):
        calls.append(a[-1])   # stream
        return real(*a)

    monkeypatch.setattr(blocked, "conv2d_depthwise_nhwc", spy)
    monkeypatch.setattr(fastconv._buffers, "STREAM_MIN_BYTES", 0)
    lanes = {"avx512": 64, "avx2": 32}.get(_isa.LEVEL, 16) // np.dtype(dtype).itemsize
    for channels in sorted({8, 2 * lanes - 1, 2 * lanes, 4 * lanes + 3}):
        x, w, b = problem("NHWC", dtype, 3, channels, 7, 13, channels, kernel, groups=channels)
        x[0, 3, 4, 0] = np.nan
        shape = fastconv.conv2d(x, w, groups=channels, layout="NHWC", **kw).shape
        for bias, act in ((b, "relu"), (None, None)):
            results = []
            for stream in (False, True):
                monkeypatch.setattr(conv_module, "NHWC_DEPTHWISE_STREAM", stream)
                for threads in (1, 2):
                    size = int(np.prod(shape))
                    buf = np.full(size + 64, -7, dtype)
                    start = (-buf.ctypes.data % 64) // buf.itemsize + offset   # 64-byte aligned
                    out = buf[start:start + size].reshape(shape)
                    fastconv.conv2d(x, w, bias, groups=channels, layout="NHWC", activation=act,
                                    algorithm="direct", num_threads=threads, out=out, **kw)
                    results.append(out.copy())
                    outside = np.concatenate([buf[:start], buf[start + size:]])
                    assert (outside == -7).all()   # nothing written outside the result
            for got in results[1:]:
                np.testing.assert_array_equal(got, results[0], err_msg=f"C={channels}")
            want = reference.conv2d(x, w, bias, groups=channels, layout="NHWC",
                                    activation=act, **kw)
            assert_close(results[-1], want, dtype, kernel[0] * kernel[1])
    assert True in calls and False in calls   # both ways really ran


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, h, w", [(1, 1, 1), (1, 3, 5), (3, 5, 7), (32, 2, 3)])
@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_nhwc_reads_x_in_place(dtype, n, h, w, groups):
    """1x1 NHWC without stride or padding: every pixel count, including ones that end
    inside a pixel block (the block repeats its last pixel instead of reading past x)."""
    check("NHWC", dtype, n, 8, h, w, 10 * groups, (1, 1), groups=groups)
    check("NHWC", dtype, n, 8, h, w, 10 * groups, (1, 1), groups=groups, num_threads=1)


@pytest.mark.skipif(not GUARDS.available, reason="guard pages need mmap + mprotect (POSIX)")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("at", ["start", "end"])
def test_pointwise_nhwc_in_place_stays_inside_x(monkeypatch, dtype, at):
    """The in-place NHWC 1x1 path reads x itself (the ch kernel's rows and the prefetches
    of the blocks ahead; a prefetch cannot fault, a load can): with x against a guard page
    before its first or after its last element, pixel counts around the block and around
    the prefetch distance, each thread's chunk ending inside x, groups, planted NaN and inf
    and ReLU. The same bits on 1 and 2 threads (each output summed by one call in one
    order) and the reference's answer."""
    kernel_call = blocked.conv2d_blocked
    reads = []

    def recording(*args):   # x read in place, and the threads the call ran on
        reads.append((np.shares_memory(args[0], guarded), args[17]))
        return kernel_call(*args)

    monkeypatch.setattr(blocked, "conv2d_blocked", recording)
    q = block_sizes(dtype)["ch_pixels"]
    for pixels, (c_in, c_out, groups) in itertools.product(
            sorted({1, q - 1, q, q + 1, 2 * q + 1, 3 * q, 5 * q + 3, 40 * q + 7}),
            [(5, 9, 1), (6, 8, 2), (33, 40, 1)]):
        x, wt, b = problem("NHWC", dtype, 1, c_in, 1, pixels, c_out, (1, 1), groups,
                           seed=pixels)
        x[0, 0, pixels - 1, c_in - 1], x[0, 0, 0, 0] = np.nan, np.inf
        guarded = GUARDS.array(x, at=at)
        results = []
        for threads in (1, 2):
            reads.clear()
            results.append(fastconv.conv2d(guarded, wt, b, groups=groups, layout="NHWC",
                                           activation="relu", algorithm="direct",
                                           num_threads=threads))
            assert len(reads) == 1 and reads[0][0], (pixels, c_in, groups, threads)
            # The module's fixture lowers the thresholds that keep small calls on one thread.
            assert reads[0][1] == threads or pixels < 2 * q, (pixels, threads, reads)
        err = f"{pixels} pixels, {c_in} -> {c_out}, groups {groups}, guard at the {at}"
        np.testing.assert_array_equal(results[1], results[0], err_msg=err)
        want = reference.conv2d(x, wt, b, groups=groups, layout="NHWC", activation="relu")
        assert_close(results[0], want, dtype, c_in // groups, err_msg=err)
        assert np.isnan(results[0][0, 0, pixels - 1]).any(), err


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
def test_batch_sharing_is_bit_identical_for_any_thread_count(layout, n):
    """Whole images per thread or one image split over the team: each output element is
    summed by one call in one order, so 1, 2 and 3 threads agree bit for bit."""
    x, wt, b = problem(layout, np.float32, n, 6, 9, 10, 12, (3, 3))
    results = [fastconv.conv2d(x, wt, b, padding=1, layout=layout, algorithm="direct",
                               num_threads=t) for t in (1, 2, 3)]
    want = reference.conv2d(x, wt, b, padding=1, layout=layout)
    assert_close(results[0], want, np.float32, 54)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scratch_reuse_across_sizes_and_dtypes(layout):
    """The per-thread scratch buffers are reused: a big call, a small one, another dtype and
    the big one again all match the reference (no stale data, stale slack or wrong view)."""
    calls = [(np.float32, 2, 16, 20, 20, 24), (np.float32, 1, 3, 5, 4, 5),
             (np.float64, 3, 8, 9, 7, 9), (np.float32, 2, 16, 20, 20, 24)]
    for dtype, n, c_in, h, w, c_out in calls:
        check(layout, dtype, n, c_in, h, w, c_out, (3, 3), padding=1)


def test_scratch_views_are_reused_and_follow_their_buffer(monkeypatch):
    """A repeated scratch request returns the same view; a larger one replaces the slot's
    buffer and drops the views of the old one; the kept views stay bounded; requests over
    SCRATCH_CACHE_BYTES get fresh memory."""
    scratch = conv_module._scratch_array
    a = scratch("test slot", (3, 5), np.float32)
    assert scratch("test slot", (3, 5), np.float32) is a
    b = scratch("test slot", (2, 3), np.float64)   # fits in the same buffer
    assert np.shares_memory(a, b) and b.dtype == np.float64 and b.shape == (2, 3)
    big = scratch("test slot", (1000, 100), np.float32)   # replaces the buffer
    assert not np.shares_memory(big, a)
    again = scratch("test slot", (3, 5), np.float32)
    assert again is not a and np.shares_memory(again, big)
    assert not np.shares_memory(scratch("other slot", (3, 5), np.float32), again)
    monkeypatch.setattr(conv_module, "SCRATCH_VIEWS", 4)
    for rows in range(1, 12):
        scratch("test slot", (rows, 3), np.float32)
        assert len(conv_module._scratch.views) <= 4
    monkeypatch.setattr(conv_module, "SCRATCH_CACHE_BYTES", 64)
    huge = scratch("test slot", (5, 5), np.float32)
    assert not np.shares_memory(huge, scratch("test slot", (5, 5), np.float32))


@pytest.mark.skipif(not fastconv.config()["openmp"], reason="built without OpenMP")
@pytest.mark.parametrize("shape, c_out, groups, name", [
    ((2, 16, 30, 30), 16, 16, "conv2d_planes"),        # one-channel kernel, prepared
    ((2, 16, 30, 30), 16, 16, "conv2d_plane_rows"),    # one-channel kernel, in place
    ((2, 8, 30, 30), 16, 1, "conv2d_blocked"),         # blocked kernel
])
def test_cached_launch_plans_follow_the_thread_limit(monkeypatch, request, shape, c_out,
                                                      groups, name):
    """The launch plans are cached per thread limit: alternating 1 and 2 threads on one shape
    runs each call on its own count, with bit-identical, correct results."""
    if name == "conv2d_plane_rows" and not blocked.plane_rows_native():
        pytest.skip("this level runs the prepared one-channel kernel only")
    monkeypatch.setattr(conv_module, "PLANE_ROWS", name == "conv2d_plane_rows")
    x, wt, b = problem("NCHW", np.float32, shape[0], shape[1], shape[2], shape[3], c_out,
                       (3, 3), groups=groups)
    kernel = getattr(blocked, name)
    seen = []

    def spy(*args):
        seen.append(args[17] if name == "conv2d_blocked" else args[-1])
        return kernel(*args)

    monkeypatch.setattr(blocked, name, spy)
    monkeypatch.setattr(conv_module, "PLANES_MACS_PER_THREAD", 1)
    monkeypatch.setattr(conv_module, "BLOCKED_MACS_PER_THREAD", 1)
    conv_module._clear_launch_caches()
    request.addfinalizer(conv_module._clear_launch_caches)
    want = reference.conv2d(x, wt, b, padding=1, groups=groups)
    results = [fastconv.conv2d(x, wt, b, padding=1, groups=groups, algorithm="direct",
                               num_threads=t) for t in (1, 2, 1, 2)]
    assert seen == [1, 2, 1, 2]
    assert_close(results[0], want, np.float32, 9 * shape[1] // groups)
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


def test_python_threads_do_not_share_scratch():
    """Four Python threads calling at once each get their own scratch buffers."""
    cases = [problem(layout, np.float32, 3, 8, 11 + i, 9, 12, (3, 3), seed=i)
             for i, layout in enumerate(LAYOUTS * 2)]
    wants = [reference.conv2d(x, w, b, padding=1, layout=lay)
             for (x, w, b), lay in zip(cases, LAYOUTS * 2)]
    errors = []

    def run(i):
        x, w, b = cases[i]
        for _ in range(20):
            got = fastconv.conv2d(x, w, b, padding=1, layout=(LAYOUTS * 2)[i],
                                  algorithm="direct", num_threads=1)
            if not np.allclose(got, wants[i], rtol=1e-4, atol=1e-4):
                errors.append(i)
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("layout, c_in, c_out, groups", [
    ("NCHW", 4, 8, 1), ("NHWC", 4, 8, 1), ("NCHW", 4, 4, 4), ("NHWC", 1, 1, 1),
    ("NHWC", 16, 16, 16)])
def test_nonfinite_weight_meets_padding_zeros(layout, c_in, c_out, groups):
    """Padding zeros are real in the prepared image: an inf weight times padding is NaN at
    the border, as in PyTorch and the reference; a NaN in x spoils only its own windows."""
    x, w, _ = problem(layout, np.float64, 1, c_in, 6, 6, c_out, (3, 3), groups)
    w = w.copy()
    w[0, 0, 0, 0] = np.inf
    x = x.copy()
    x[(0, 3, 3, c_in - 1) if layout == "NHWC" else (0, c_in - 1, 3, 3)] = np.nan
    got = fastconv.conv2d(x, w, padding=1, groups=groups, layout=layout, algorithm="direct")
    want = reference.conv2d(x, w, padding=1, groups=groups, layout=layout)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any() and not np.isnan(got).all()
    assert_close(got, want, np.float64, 9 * c_in // groups)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_and_strided_inputs(layout):
    x, w, b = problem(layout, np.float32, 0, 4, 5, 5, 8, (3, 3))
    assert fastconv.conv2d(x, w, b, layout=layout, algorithm="direct").shape[0] == 0
    x, w, b = problem(layout, np.float32, 4, 4, 10, 12, 8, (3, 3))
    view = x[::-2, ..., ::-1] if layout == "NHWC" else x[::-2, ::-1, ::2, ::-1]
    got = fastconv.conv2d(view, w, b, padding=1, layout=layout, algorithm="direct")
    assert_close(got, reference.conv2d(view, w, b, padding=1, layout=layout), np.float32, 36)


def _auto(layout, n, c_in, hw, c_out, kernel, groups=1, dtype=np.float32):
    """choose_algorithm for a problem of this size, without allocating it."""
    x = np.broadcast_to(np.zeros((), dtype), (n, c_in, hw, hw) if layout == "NCHW"
                        else (n, hw, hw, c_in))
    k = (c_out, c_in // groups) + kernel if layout == "NCHW" else kernel + (c_in // groups, c_out)
    w = np.broadcast_to(np.zeros((), dtype), k)
    args = _validate.conv_args(x, w, None, 1, "same", 1, groups, layout, None, "test")
    return conv_module.choose_algorithm(args)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_auto_choice_for_large_calls(layout):
    """The documented rule on calls above AUTO_BLOCKED_MIN_MACS, and below it the exceptions
    to the older rule (which AUTO_CASES in test_conv.py tests)."""
    assert _auto(layout, 32, 64, 56, 64, (3, 3)) == "direct"
    assert _auto(layout, 1, 3, 224, 64, (7, 7)) == "direct"
    # 1x1: the blocked kernel from AUTO_POINTWISE_MIN_PIXELS output pixels per call, else
    # BLAS on x in place.
    assert conv_module.AUTO_POINTWISE_MIN_PIXELS == 196
    assert _auto(layout, 1, 256, 56, 64, (1, 1)) == "direct"
    assert _auto(layout, 32, 256, 56, 64, (1, 1)) == "direct"
    assert _auto(layout, 1, 1024, 14, 256, (1, 1)) == "direct"       # 196 pixels
    assert _auto(layout, 1, 2048, 7, 512, (1, 1)) == "im2col"        # 49
    assert _auto(layout, 3, 2048, 7, 512, (1, 1)) == "im2col"        # 147
    assert _auto(layout, 4, 2048, 7, 512, (1, 1)) == "direct"        # 196
    # Depthwise: the plain loops.
    assert _auto(layout, 32, 128, 56, 128, (3, 3), groups=128) == "direct"
    # At most half a channel block of outputs: the blocked kernel too (NHWC had gone to im2col
    # while the blocked kernel kept such calls on one thread), and LeNet conv2 at batch 32.
    half_block = block_sizes(np.float32)["ch_cols"] // 2
    assert _auto(layout, 32, 64, 56, half_block, (3, 3)) == "direct"
    assert _auto(layout, 32, 6, 14, 16, (5, 5)) == "direct"
    # Below the size threshold, the older rule, except for NCHW from a pixel block of outputs
    # per image on, and NHWC from AUTO_SMALL_NHWC_MIN_PIXELS outputs when they fill more than
    # half a channel block, or from AUTO_SMALL_NHWC_PIX_BLOCKS pixel blocks when they do not.
    if layout == "NCHW":
        pixels = block_sizes(np.float32)["pix_pixels"]
        assert _auto(layout, 1, 1, 28, 6, (5, 5)) == "direct"          # LeNet conv1
        assert _auto(layout, 1, 64, 4, 64, (3, 3)) == ("im2col" if pixels > 16 else "direct")
        return
    cols = block_sizes(np.float32)["ch_cols"]
    filled, few = cols // 2 + 1, cols // 2
    min_pixels = conv_module.AUTO_SMALL_NHWC_MIN_PIXELS
    side = math.isqrt(min_pixels - 1) + 1        # the smallest square image with enough pixels
    def older(c_out):   # reduction 144: im2col from AUTO_MIN_CHANNELS outputs on
        return "im2col" if c_out >= conv_module.AUTO_MIN_CHANNELS["NHWC"] else "direct"

    assert _auto(layout, 1, 16, side, filled, (3, 3)) == "direct"
    assert _auto(layout, 1, 16, side - 1, filled, (3, 3)) == older(filled)
    assert _auto(layout, 1, 16, side, 4, (3, 3)) == "direct"        # older rule: 4 < 8 outputs
    # Few outputs (the pix kernel): from AUTO_SMALL_NHWC_PIX_BLOCKS of its pixel blocks.
    pix_pixels = conv_module.AUTO_SMALL_NHWC_PIX_BLOCKS * block_sizes(np.float32)["pix_pixels"]
    pix_side = math.isqrt(pix_pixels - 1) + 1
    assert _auto(layout, 1, 16, pix_side, few, (3, 3)) == "direct"
    assert _auto(layout, 1, 16, pix_side - 1, few, (3, 3)) == older(few)
    assert _auto(layout, 1, 6, 14, 16, (5, 5)) == (                   # LeNet conv2, 'same'
        "direct" if 2 * 16 > cols or 196 >= pix_pixels else "im2col")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c_out, groups", [(8, 1), (4, 4)], ids=["blocked", "planes"])
def test_cached_plans_are_read_only_and_reused_correctly(layout, c_out, groups):
    # The offset tables are cached per geometry (they cost more than a small convolution);
    # a cache hit with other data, dtype or bias must still give the reference's answer, and
    # nothing may write into the cached tables.
    from fastconv import conv as conv_module

    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        for _ in range(2):
            x = rng.standard_normal((2, 4, 9, 11)).astype(dtype)
            w = rng.standard_normal((c_out, 4 // groups, 3, 3)).astype(dtype)
            b = rng.standard_normal(c_out).astype(dtype)
            xl, wl = (x, w) if layout == "NCHW" else (to_nhwc(x), oihw_to_hwio(w))
            got = fastconv.conv2d(xl, wl, b, 2, 1, 1, groups, layout=layout, algorithm="direct")
            want = reference.conv2d(xl, wl, b, 2, 1, 1, groups, layout=layout)
            assert_close(got, want, dtype=dtype, reduction_length=9 * 4 // groups)
    # Each (dtype, layout) pair ran twice: the second call found its launch plan cached.
    launch = conv_module._blocked_launch if c_out == 8 else conv_module._planes_launch
    assert launch.cache_info().hits >= len(DTYPES)
    g = _validate.conv_args(x, w, b, 2, 1, 1, groups, "NCHW", None).geometry
    table = conv_module._tap_offsets(g, 4 // groups, 4, False)
    assert not table.flags.writeable
    with pytest.raises(ValueError):
        table[0] = 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [
    dict(padding=2), dict(stride=2, padding=1), dict(dilation=2, padding="same"),
    dict(padding=((0, 2), (1, 0)), activation="relu"), dict(stride=(1, 3), activation="relu"),
], ids=["p2", "s2", "d2-same", "asym-relu", "s1x3-relu"])
def test_single_channel_nhwc_few_outputs_use_the_pix_kernel(dtype, extra):
    """NHWC images with one channel are NCHW memory: with at most half a channel block of
    outputs the pix kernel runs and stores the result channels-last. Output counts at and
    around the pix kernel's row block; widths across its pixel blocks."""
    half = block_sizes(dtype)["ch_cols"] // 2
    rows = block_sizes(dtype)["pix_rows"]
    for c_out in sorted({4, rows - 1, rows, rows + 1, half}):
        if not 4 <= c_out <= half:
            continue
        for n, h, w in ((3, 9, 23), (1, 17, 61)):
            x, wt, b = problem("NHWC", dtype, n, 1, h, w, c_out, (3, 5), 1)
            args = _validate.conv_args(x, wt, b, extra.get("stride", 1),
                                       extra.get("padding", 0), extra.get("dilation", 1), 1,
                                       "NHWC", extra.get("activation"), "test")
            assert conv_module._pix_for_nhwc(args)
            got = fastconv.conv2d(x, wt, b, layout="NHWC", algorithm="direct", **extra)
            want = reference.conv2d(x, wt, b, layout="NHWC", **extra)
            assert_close(got, want, dtype, 15, err_msg=f"c_out={c_out} {extra}")
            one = fastconv.conv2d(x, wt, b, layout="NHWC", algorithm="direct", num_threads=1,
                                  **extra)
            np.testing.assert_array_equal(one, got)
    x, wt, b = problem("NHWC", dtype, 2, 1, 9, 9, 2 * half, (3, 3), 1)
    args = _validate.conv_args(x, wt, b, 1, 0, 1, 1, "NHWC", None, "test")
    assert not conv_module._pix_for_nhwc(args)   # a full channel block: the ch kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [
    dict(padding=2), dict(padding=0, activation="relu"), dict(dilation=2, padding="same"),
    dict(padding=((0, 2), (1, 0)), activation="relu"), dict(padding=1, groups=2),
], ids=["p2", "p0-relu", "d2-same", "asym-relu", "groups2"])
def test_nhwc_few_outputs_run_the_pix_kernel_on_a_channel_planar_copy(dtype, extra,
                                                                       monkeypatch):
    """NHWC layers of several channels with at most half a channel block of outputs, stride 1
    and a kernel larger than 1x1 prepare each image channel-planar (as an NCHW image) and run
    the pix kernel into the NHWC result: the same sums in the same order as the NCHW layer
    on the pix kernel, so the same bits (NaN and inf included), and the reference's answer.
    Input channels around a vector; outputs at and around the pix row block; batches shared
    out by image (4) and an image split over the team (1); one thread gives the same bits."""
    groups = extra.get("groups", 1)
    half = block_sizes(dtype)["ch_cols"] // 2
    rows = block_sizes(dtype)["pix_rows"]
    if half < groups * conv_module.BLOCKED_MIN_CHANNELS["NHWC"]:
        pytest.skip(f"a half channel block ({half}) is under the blocked kernel's minimum "
                    f"output count per group times {groups} groups at this level and dtype: "
                    "no such layer takes this path")
    planar_calls = []
    kernel = conv_module._blocked.conv2d_blocked

    def recording(*args):   # conv2d_blocked's last argument: the planar preparation
        planar_calls.append(args[-1])
        return kernel(*args)

    monkeypatch.setattr(conv_module._blocked, "conv2d_blocked", recording)
    bit_checks = 0
    for c_in in (2, 3, 6, 18):
        for c_out in sorted({4, rows - 1, rows, rows + 1, half}):
            if (not 4 <= c_out <= half or c_in % groups or c_out % groups
                    or c_out // groups < conv_module.BLOCKED_MIN_CHANNELS["NHWC"]):
                continue   # not a blocked layer with few outputs
            for n, h, w in ((4, 9, 23), (1, 17, 61)):
                x, wt, b = problem("NHWC", dtype, n, c_in, h, w, c_out, (3, 5), groups,
                                   seed=c_in * 100 + c_out)
                x[0, 1, 2, c_in - 1], x[-1, h // 2, w - 1, 0] = np.nan, np.inf
                kw = dict(padding=extra.get("padding", 0), dilation=extra.get("dilation", 1),
                          groups=groups, activation=extra.get("activation"))
                args = _validate.conv_args(x, wt, b, 1, kw["padding"], kw["dilation"], groups,
                                           "NHWC", kw["activation"], "test")
                assert conv_module._pix_for_nhwc(args)
                planar_calls.clear()
                got = fastconv.conv2d(x, wt, b, layout="NHWC", algorithm="direct", **kw)
                assert planar_calls == [True]
                want = reference.conv2d(x, wt, b, layout="NHWC", **kw)
                err = f"c_in={c_in} c_out={c_out} n={n} {extra}"
                assert_close(got, want, dtype, c_in // groups * 15, err_msg=err)
                assert np.isnan(got).any(), err   # the planted NaN reached the result
                one = fastconv.conv2d(x, wt, b, layout="NHWC", algorithm="direct",
                                      num_threads=1, **kw)
                np.testing.assert_array_equal(one, got, err_msg=err)
                xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
                wc = np.ascontiguousarray(wt.transpose(3, 2, 0, 1))
                nchw_args = _validate.conv_args(xc, wc, b, 1, kw["padding"], kw["dilation"],
                                                groups, "NCHW", kw["activation"], "test")
                if not conv_module._nchw_runs_ch(nchw_args.geometry, groups, c_out,
                                                 np.dtype(dtype).itemsize):
                    nchw = fastconv.conv2d(xc, wc, b, algorithm="direct", **kw)
                    np.testing.assert_array_equal(got, to_nhwc(nchw), err_msg=err)
                    bit_checks += 1
    assert bit_checks > 0


def test_nhwc_few_outputs_keep_the_ch_kernel_for_stride_and_1x1():
    """The channel-planar pix path is for stride 1 and kernels larger than 1x1 only (with
    stride 2 or a 1x1 kernel the ch kernel was faster); one-channel images take the pix
    kernel in any case (they are NCHW memory)."""
    few = block_sizes(np.float32)["ch_cols"] // 2
    def pix(c_in, kernel, stride, padding=1):
        x, wt, b = problem("NHWC", np.float32, 2, c_in, 12, 12, few, kernel)
        args = _validate.conv_args(x, wt, b, stride, padding, 1, 1, "NHWC", None, "test")
        return conv_module._pix_for_nhwc(args)
    assert pix(8, (3, 3), 1)
    assert not pix(8, (3, 3), 2)
    assert not pix(8, (3, 3), (1, 2))
    assert not pix(8, (1, 1), 1, padding=0)
    assert not pix(8, (1, 1), 2, padding=0)
    assert pix(1, (3, 3), 2) and pix(1, (1, 1), 1, padding=0)
    for kernel, stride, padding in (((1, 1), 2, 0), ((3, 3), (1, 2), 1)):
        x, wt, b = problem("NHWC", np.float32, 4, 8, 12, 12, few, kernel)
        assert_close(fastconv.conv2d(x, wt, b, stride, padding, layout="NHWC",
                                     algorithm="direct"),
                     reference.conv2d(x, wt, b, stride, padding, layout="NHWC"), np.float32,
                     8 * kernel[0] * kernel[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias, activation", [(False, None), (True, None), (True, "relu")])
def test_channels_last_store_matches_the_nchw_store_bit_for_bit(dtype, bias, activation):
    """The pix kernel's tile reaches an NHWC result through fc_store_channels_last (whole
    vectors of pixels transposed in registers, the rest one value at a time) and an NCHW one
    through the row epilogue: the same sums, so the same bits, NaN and inf included. Output
    counts below, at and past a row block; widths that leave 0, 1 and most of a vector after
    the vectors of each tile segment; one image and three (both ways of sharing a batch)."""
    rows = block_sizes(dtype)["pix_rows"]
    half = block_sizes(dtype)["ch_cols"] // 2
    for c_out in sorted({4, rows - 2, rows, rows + 3, half}):
        if not 4 <= c_out <= half:
            continue
        for n, h, w in ((1, 11, 16), (3, 7, 33), (1, 20, 47)):
            rng = np.random.default_rng(c_out * 100 + w)
            x = rng.standard_normal((n, 1, h, w)).astype(dtype)
            x[0, 0, 2, 3], x[-1, 0, h // 2, w - 2], x[0, 0, h - 1, w // 2] = np.nan, np.inf, -np.inf
            wt = rng.standard_normal((c_out, 1, 3, 5)).astype(dtype)
            b = rng.standard_normal(c_out).astype(dtype) if bias else None
            kw = dict(padding=(1, 2), activation=activation, algorithm="direct")
            nhwc_args = _validate.conv_args(to_nhwc(x), oihw_to_hwio(wt), b, 1, (1, 2), 1, 1,
                                            "NHWC", activation, "test")
            assert conv_module._pix_for_nhwc(nhwc_args)
            assert not conv_module._nchw_runs_ch(nhwc_args.geometry, 1, c_out,
                                                 np.dtype(dtype).itemsize)
            want = fastconv.conv2d(x, wt, b, **kw)
            got = fastconv.conv2d(to_nhwc(x), oihw_to_hwio(wt), b, layout="NHWC", **kw)
            np.testing.assert_array_equal(got, to_nhwc(want), err_msg=f"c_out={c_out} w={w}")
            assert np.isnan(got).any()   # the planted NaN reached the result
            assert_close(got, reference.conv2d(to_nhwc(x), oihw_to_hwio(wt), b, 1, (1, 2),
                                               layout="NHWC", activation=activation),
                         dtype, 15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels, multiplier", [(4, 1), (3, 2), (7, 1)])
def test_narrow_nhwc_grouped_layers_run_transposed(dtype, channels, multiplier):
    """NHWC layers with fewer than NHWC_DIRECT_MIN_CHANNELS outputs that no NHWC kernel takes
    run as NCHW on transposed copies; with one output channel per group (narrow depthwise)
    that NCHW call takes the one-channel kernel. Against the reference, inf weight included
    (it must meet the padding zeros, as in PyTorch)."""
    c_out = channels * multiplier
    x, w, b = problem("NHWC", dtype, 2, channels, 7, 9, c_out, (3, 3), groups=channels)
    args = _validate.conv_args(x, w, b, 1, 1, 1, channels, "NHWC", None, "test")
    assert conv_module._nhwc_prefers_nchw(args)
    for weight in (w, np.where(np.arange(w.size).reshape(w.shape) == 4, np.inf, w)):
        got = fastconv.conv2d(x, weight, b, 1, 1, 1, channels, layout="NHWC",
                              algorithm="direct")
        want = reference.conv2d(x, weight, b, 1, 1, 1, channels, layout="NHWC")
        assert_close(got, want, dtype, 9)


def _threads_passed(monkeypatch, call):
    """The thread counts ``call`` passes to ``conv2d_blocked`` (its 18th argument,
    ``n_threads``)."""
    seen = []
    kernel = blocked.conv2d_blocked

    def spy(*args):
        seen.append(args[17])
        return kernel(*args)

    monkeypatch.setattr(blocked, "conv2d_blocked", spy)
    call()
    return seen


@pytest.mark.skipif(not fastconv.config()["openmp"], reason="built without OpenMP")
def test_thread_count_tests_really_use_several_threads(monkeypatch):
    x, wt, b = problem("NCHW", np.float32, 1, 6, 9, 10, 12, (3, 3))
    seen = _threads_passed(monkeypatch, lambda: fastconv.conv2d(
        x, wt, b, padding=1, algorithm="direct", num_threads=2))
    assert seen == [2]


@pytest.mark.skipif(not fastconv.config()["openmp"], reason="built without OpenMP")
def test_production_thresholds_keep_small_calls_on_one_thread(monkeypatch):
    """Two threads only when the work pays for starting them (see BLOCKED_MACS_PER_THREAD):
    a one-image 32->32 16x16 layer (2.4M multiply-adds) stays on one, VGG's 64->64 56x56
    (116M) takes two, as do a batch of two 64->64 14x14 images (14M, whole images) and of two
    32->32 8x8 ones (1.2M); a batch of two 16->16 8x8 images (0.3M) stays on one."""
    monkeypatch.undo()
    conv_module._clear_launch_caches()   # plans made under the patched thresholds
    rng = np.random.default_rng(0)

    def threads(n, c, hw):
        x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((c, c, 3, 3), dtype=np.float32)
        seen = _threads_passed(monkeypatch, lambda: fastconv.conv2d(
            x, w, padding=1, algorithm="direct", num_threads=2))
        monkeypatch.undo()
        return seen

    assert threads(1, 32, 16) == [1]
    assert threads(1, 64, 56) == [2]
    assert threads(2, 64, 14) == [2]
    assert threads(2, 32, 8) == [2]
    assert threads(2, 16, 8) == [1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_pack_weight_against_numpy(dtype, n_threads):
    """pack_weight against the layout written out in NumPy, whichever of K and the channels
    is closer in memory (OIHW rows, HWIO rows, negative strides, slices), K around its tile
    of 64 taps, channel counts around the block, one and two threads."""
    rng = np.random.default_rng(7)
    for groups, cog, K, block in ((1, 37, 130, 32), (2, 8, 64, 8), (3, 5, 1, 16),
                                  (1, 1, 200, 8), (2, 33, 65, 16)):
        base = rng.standard_normal((groups, cog, K)).astype(dtype)
        views = {
            "oihw": base,
            "hwio": np.ascontiguousarray(base.transpose(2, 0, 1)).transpose(1, 2, 0),
            "reversed": base[::-1, ::-1, ::-1].copy()[::-1, ::-1, ::-1],
            "sliced": np.repeat(base, 2, axis=2)[:, :, ::2],
        }
        n_cb = -(-cog // block)
        want = np.zeros((groups, n_cb * block, K), dtype)
        want[:, :cog] = base
        want = want.reshape(groups, n_cb, block, K).transpose(0, 1, 3, 2)
        for name, w in views.items():
            np.testing.assert_array_equal(w, base)
            packed = np.full((groups, n_cb, K, block), np.nan, dtype)
            blocked.pack_weight(w, packed, n_threads)
            np.testing.assert_array_equal(packed, want, err_msg=f"{name} {groups, cog, K}")
        with pytest.raises(ValueError, match="does not hold"):
            blocked.pack_weight(base, np.zeros((groups, n_cb, K + 1, block), dtype))
        with pytest.raises(ValueError, match="does not hold"):
            blocked.pack_weight(base, np.zeros((groups, n_cb - 1, K, block), dtype))
    # A float field of a structured array: strides that are not multiples of the item size.
    record = np.zeros((1, 4, 3), dtype=[("a", np.int8), ("v", dtype)])["v"]
    with pytest.raises(ValueError, match="not multiples of the item size"):
        blocked.pack_weight(record, np.zeros((1, 1, 3, 8), dtype))
