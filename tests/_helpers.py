"""Helpers shared by the test modules: tolerances, memory-layout variants, layout conversion."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

DTYPES = (np.float32, np.float64)
LAYOUTS = ("NCHW", "NHWC")

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:  # torch is an optional oracle
    HAVE_TORCH = False

TORCH_REASON = "PyTorch is not installed (optional oracle: pip install torch==2.13.0)"


def tolerance(dtype, reduction_length: int = 1):
    """(rtol, atol) for comparing two summation orders of ``reduction_length`` terms.

    float32 rounding error of a sum grows with the number of terms, so its tolerance scales
    with the reduction length; float64 stays tight.
    """
    eps = float(np.finfo(dtype).eps)
    scale = max(1, reduction_length)
    if np.dtype(dtype) == np.float32:
        return 8 * eps * np.sqrt(scale) * 4, 8 * eps * scale
    return 64 * eps * scale, 64 * eps * scale


def assert_close(actual, expected, dtype=None, reduction_length=1, err_msg=""):
    """dtype-aware ``assert_allclose`` that also checks dtype and shape, and NaN positions."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = np.dtype(dtype or expected.dtype)
    assert actual.dtype == dtype, f"dtype {actual.dtype} != {dtype} {err_msg}"
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    rtol, atol = tolerance(dtype, reduction_length)
    # atol is relative to the magnitude of the data so large-valued inputs are judged fairly.
    mag = float(np.nanmax(np.abs(expected[np.isfinite(expected)]), initial=1.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * mag, equal_nan=True,
                               err_msg=err_msg)


def array_order(a) -> str:
    if a.flags.c_contiguous:
        return "C"
    if a.flags.f_contiguous:
        return "F"
    return "N"


def memory_variants(a: np.ndarray):
    """The same values as ``a`` in other memory layouts: Fortran order, a strided view and a
    negative-stride view. Each variant compares equal to ``a``."""
    yield "C", np.ascontiguousarray(a)
    yield "F", np.asfortranarray(a)
    big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    yield "strided", view
    rev = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])
    yield "negative-stride", rev[tuple(slice(None, None, -1) for _ in a.shape)]


def to_nhwc(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def to_nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def oihw_to_hwio(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


# conv2d's "auto" heuristic, for the forward and backward tests: (C_in/groups, kernel,
# C_out/groups, groups, (algorithm for NCHW, algorithm for NHWC)). im2col needs a reduction
# C_in/groups*KH*KW >= 16 and >= 4 output channels per group in NCHW, >= 32 and >= 8 in NHWC.
AUTO_CASES = [
    (8, (2, 2), 8, 1, ("im2col", "im2col")),   # NHWC thresholds met exactly
    (1, (4, 4), 4, 1, ("im2col", "direct")),   # NCHW thresholds met exactly
    (3, (3, 3), 16, 1, ("im2col", "direct")),  # reduction 27: < 32, >= 16
    (4, (3, 3), 7, 1, ("im2col", "direct")),   # 7 output channels per group: < 8, >= 4
    (1, (3, 5), 4, 1, ("direct", "direct")),   # reduction 15 < 16
    (2, (3, 3), 3, 1, ("direct", "direct")),   # 3 output channels < 4
    (4, (3, 3), 8, 2, ("im2col", "im2col")),   # thresholds are per group
    (1, (3, 3), 1, 16, ("direct", "direct")),  # depthwise
]
AUTO_CASE_IDS = ["nhwc-thresholds", "nchw-thresholds", "small-reduction", "few-channels",
                 "tiny-reduction", "tiny-channels", "grouped", "depthwise"]


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """One convolution problem, described in NCHW / OIHW terms (forward and backward tests)."""

    name: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kernel: tuple
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = False
    activation: Optional[str] = None

    @property
    def reduction(self) -> int:
        return self.c_in // self.groups * self.kernel[0] * self.kernel[1]

    def kwargs(self):
        """The geometry keywords (and the activation, when set) of conv2d and its backward."""
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                  groups=self.groups)
        if self.activation is not None:
            kw["activation"] = self.activation
        return kw


class GuardedBuffers:
    """Arrays placed against an inaccessible page, so that a kernel reading or writing one
    element past the end (or before the start) crashes instead of passing silently.

    Linux and macOS only (``mmap`` + ``mprotect`` through ctypes); ``available`` says whether
    this platform supports it. The mappings stay alive as long as this object.
    """

    def __init__(self):
        import ctypes
        import ctypes.util
        import mmap
        import sys

        self._mmap, self._ctypes = mmap, ctypes
        self._maps = []
        self._libc = None
        if sys.platform.startswith(("linux", "darwin")):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self._libc = libc

    @property
    def available(self) -> bool:
        return self._libc is not None

    def array(self, values: np.ndarray, at: str = "end") -> np.ndarray:
        """A C-contiguous copy of ``values`` ending right before a guard page (``at="end"``)
        or starting right after one (``at="start"``)."""
        mmap, ctypes = self._mmap, self._ctypes
        page = mmap.PAGESIZE
        nbytes = values.nbytes
        data_pages = -(-max(nbytes, 1) // page)
        m = mmap.mmap(-1, (data_pages + 2) * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        for guard in (base, base + (data_pages + 1) * page):
            if self._libc.mprotect(guard, page, 0) != 0:   # PROT_NONE
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self._maps.append(m)
        offset = page if at == "start" else (data_pages + 1) * page - nbytes
        out = np.frombuffer(m, dtype=values.dtype, count=values.size, offset=offset)
        out = out.reshape(values.shape)
        out[...] = values
        return out
