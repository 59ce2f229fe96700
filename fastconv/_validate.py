"""Argument normalisation shared by every public op and by :mod:`fastconv.reference`.

Everything a kernel relies on is decided here, in Python, before any kernel runs: the compute
dtype, the 4-D view of the input, the normalised geometry (stride, dilation, explicit padding,
output size) and every size check. The fast ops and the reference both call these functions,
so the two can only differ in how they compute, never in what they accept.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _buffers

LAYOUTS = ("NCHW", "NHWC")
ALGORITHMS = ("auto", "direct", "im2col")
ACTIVATIONS = (None, "relu")

# Largest stride, dilation, padding or kernel extent accepted. Far beyond any real layer, and
# small enough that no index computed from them in a kernel can overflow a 64-bit integer.
MAX_GEOMETRY = 2**31 - 1

_INTP_MAX = int(np.iinfo(np.intp).max)

# For np.errstate: inf and NaN inputs give inf and NaN outputs silently, in the kernels, in
# NumPy's GEMM and in the reference alike (NumPy's warnings would be errors under -W error).
IEEE_SILENT = {"over": "ignore", "invalid": "ignore"}

Pair = Tuple[int, int]
Padding2 = Tuple[Pair, Pair]

# Type hints of the public API's size arguments.
IntPair = Union[int, Tuple[int, int]]
PaddingArg = Union[int, Tuple[int, int], Tuple[Tuple[int, int], Tuple[int, int]], str]


# --------------------------------------------------------------------------------------------
# dtypes


def compute_dtype(dtype: np.dtype, name: str, func: str) -> np.dtype:
    """Return the float dtype an array of ``dtype`` is computed in.

    float32 and float64 are kept; float16 goes to float32; integers and bool go to float64.
    Anything else (complex, object, strings, datetimes, long double) is a ``TypeError``.
    """
    dtype = np.dtype(dtype)
    if dtype.type in (np.float32, np.float64):
        return np.dtype(dtype.type)
    if dtype.type is np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(
        f"{func}: {name} has dtype {dtype}, which is not supported; use float32 or float64 "
        "(float16, integer and bool inputs are converted)"
    )


def as_array(a: Any, name: str, func: str) -> np.ndarray:
    """``np.asarray`` with a dtype check; the array keeps its own dtype and memory layout."""
    if a is None:
        raise TypeError(f"{func}: {name} must be an array, got None")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{func}: {name} could not be converted to an array: {exc}") from None
    compute_dtype(arr.dtype, name, func)
    return arr


def common_dtype(func: str, **arrays: np.ndarray) -> np.dtype:
    """The dtype the op computes in: ``np.result_type`` of each input's compute dtype."""
    return np.result_type(*(compute_dtype(a.dtype, n, func) for n, a in arrays.items()))


# --------------------------------------------------------------------------------------------
# scalars and pairs


def _as_int(value: Any, name: str, func: str, what: str = "an int or a pair of ints") -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be {what}, got {value!r}") from None


def as_pair(value: Any, name: str, func: str, minimum: int = 1) -> Pair:
    """Normalise an int or a pair of ints to ``(h, w)``, each in ``[minimum, MAX_GEOMETRY]``."""
    if isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim):
        items = list(value)
        if len(items) != 2:
            raise ValueError(f"{func}: {name} must be an int or a pair of ints, got {value!r}")
        pair = (_as_int(items[0], name, func), _as_int(items[1], name, func))
    else:
        v = _as_int(value, name, func)
        pair = (v, v)
    if min(pair) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{func}: {name} must be {bound}, got {value!r}")
    if max(pair) > MAX_GEOMETRY:
        raise ValueError(f"{func}: {name} must be at most {MAX_GEOMETRY}, got {value!r}")
    return pair


def normalize_choice(value: Any, choices, name: str, func: str, upper: bool = False):
    """Case-insensitive match of a string option against ``choices``."""
    if value is None and None in choices:
        return None
    if isinstance(value, str):
        key = value.upper() if upper else value.lower()
        if key in choices:
            return key
    shown = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{func}: {name} must be one of {shown}, got {value!r}")


def normalize_layout(layout: Any, func: str) -> str:
    return normalize_choice(layout, LAYOUTS, "layout", func, upper=True)


def check_num_threads(num_threads: Any, func: str) -> Optional[int]:
    """Validate a ``num_threads`` argument: ``None`` or a positive int."""
    if num_threads is None:
        return None
    if isinstance(num_threads, (bool, np.bool_)):
        raise TypeError(f"{func}: num_threads must be a positive int or None, got {num_threads!r}")
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise TypeError(
            f"{func}: num_threads must be a positive int or None, got {num_threads!r}"
        ) from None
    if n < 1:
        raise ValueError(f"{func}: num_threads must be a positive int or None, got {n}")
    return n


# --------------------------------------------------------------------------------------------
# padding and output size


def output_size(
    in_size: int,
    kernel: int,
    stride: int,
    dilation: int,
    pad_before: int,
    pad_after: int,
    ceil_mode: bool = False,
) -> int:
    """Output length along one spatial axis (PyTorch's formula).

    ``floor((in + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1``; with
    ``ceil_mode`` the ceiling is taken, and a last window that would start in the end padding
    (or past it) is dropped. May return a value < 1 when the kernel does not fit.
    """
    span = in_size + pad_before + pad_after - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= in_size + pad_before:
            out -= 1
    else:
        out = span // stride + 1
    return out


def same_padding(in_size: int, kernel: int, stride: int, dilation: int) -> Pair:
    """TensorFlow 'SAME' padding along one axis: ``out = ceil(in / stride)``, extra cell at the end."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


def resolve_padding(
    padding: Any,
    in_hw: Pair,
    kernel_hw: Pair,
    stride_hw: Pair,
    dilation_hw: Pair,
    func: str,
) -> Padding2:
    """Normalise every accepted padding form to ``((top, bottom), (left, right))``.

    Accepted: an int, a pair ``(ph, pw)``, a pair of pairs ``((top, bottom), (left, right))``,
    ``"valid"`` (no padding) and ``"same"`` (TensorFlow semantics, any stride and dilation).
    """
    if isinstance(padding, str):
        mode = normalize_choice(padding, ("valid", "same"), "padding", func)
        if mode == "valid":
            return (0, 0), (0, 0)
        return tuple(  # type: ignore[return-value]
            same_padding(i, k, s, d) for i, k, s, d in zip(in_hw, kernel_hw, stride_hw, dilation_hw)
        )
    if isinstance(padding, (tuple, list)) or (isinstance(padding, np.ndarray) and padding.ndim):
        items = list(padding)
        if len(items) == 2 and all(isinstance(p, (tuple, list, np.ndarray)) for p in items):
            pads = []
            for p in items:
                p = list(p)
                if len(p) != 2:
                    raise ValueError(
                        f"{func}: padding must be an int, a pair, a pair of (before, after) "
                        f"pairs, 'valid' or 'same', got {padding!r}"
                    )
                pads.append((_as_int(p[0], "padding", func), _as_int(p[1], "padding", func)))
            result = (pads[0], pads[1])
        elif len(items) == 2:
            ph, pw = _as_int(items[0], "padding", func), _as_int(items[1], "padding", func)
            result = ((ph, ph), (pw, pw))
        else:
            raise ValueError(
                f"{func}: padding must be an int, a pair, a pair of (before, after) pairs, "
                f"'valid' or 'same', got {padding!r}"
            )
    else:
        p = _as_int(padding, "padding", func)
        result = ((p, p), (p, p))
    flat = [v for pair in result for v in pair]
    if min(flat) < 0:
        raise ValueError(f"{func}: padding must be non-negative, got {padding!r}")
    if max(flat) > MAX_GEOMETRY:
        raise ValueError(f"{func}: padding must be at most {MAX_GEOMETRY}, got {padding!r}")
    return result


def check_size(shape: Tuple[int, ...], itemsize: int, what: str, func: str) -> None:
    """Refuse arrays whose byte size would overflow the platform's ``intp``.

    Zero-length axes count as 1, so an empty batch is refused when one sample would be.
    """
    total = math.prod(max(int(s), 1) for s in shape) * itemsize
    if total > _INTP_MAX:
        raise ValueError(
            f"{func}: {what} of shape {tuple(shape)} would need {total} bytes, "
            "more than this platform can index"
        )


# --------------------------------------------------------------------------------------------
# geometry shared by convolution, pooling and im2col


@dataclass(frozen=True)
class Geometry:
    """A sliding-window op over a batch in one layout, fully normalised.

    The kernels and the reference only ever see these numbers; ``pad_bottom`` and
    ``pad_right`` include nothing for ceil_mode (that overhang is implied by ``out_h``/``out_w``).
    """

    n: int
    c: int
    h: int
    w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    out_h: int
    out_w: int

    @property
    def out_pixels(self) -> int:
        return self.out_h * self.out_w

    def window_args(self) -> Tuple[int, ...]:
        """The window arguments of the im2col/col2im kernels, in their order."""
        return (self.kernel_h, self.kernel_w, self.out_h, self.out_w, self.stride_h,
                self.stride_w, self.dilation_h, self.dilation_w, self.pad_top, self.pad_left)


def make_geometry(
    shape4: Tuple[int, int, int, int],
    layout: str,
    kernel_hw: Pair,
    stride: Any,
    padding: Any,
    dilation: Any,
    func: str,
    *,
    ceil_mode: bool = False,
    x_desc: Tuple[str, Any] = ("", None),
    kernel_desc: str = "kernel",
) -> Geometry:
    """Normalise stride/padding/dilation for a 4-D input of ``shape4`` and compute the output size.

    Raises ``ValueError`` when the (dilated) kernel does not fit the padded input.
    ``x_desc`` is ``(name, shape)`` of the caller's input, formatted only into error messages
    (formatting shapes up front would cost every call several microseconds).
    """
    if layout == "NCHW":
        n, c, h, w = shape4
    else:
        n, h, w, c = shape4
    if h < 1 or w < 1:
        # A window would hold no real cell; PyTorch refuses this too.
        raise ValueError(
            f"{func}: the spatial axes must be non-empty, got H={h}, W={w} "
            f"({x_desc[0]} {x_desc[1]})"
        )
    stride_hw = as_pair(stride, "stride", func)
    dilation_hw = as_pair(dilation, "dilation", func)
    (pt, pb), (pl, pr) = resolve_padding(padding, (h, w), kernel_hw, stride_hw, dilation_hw, func)
    out_h = output_size(h, kernel_hw[0], stride_hw[0], dilation_hw[0], pt, pb, ceil_mode)
    out_w = output_size(w, kernel_hw[1], stride_hw[1], dilation_hw[1], pl, pr, ceil_mode)
    if out_h < 1 or out_w < 1:
        eff = tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation_hw))
        raise ValueError(
            f"{func}: {kernel_desc} of size {kernel_hw} (dilated extent {eff}) is larger than "
            f"the padded input {(h + pt + pb, w + pl + pr)} ({x_desc[0]} {x_desc[1]}, padding "
            f"{((pt, pb), (pl, pr))})"
        )
    return Geometry(
        n, c, h, w, kernel_hw[0], kernel_hw[1], stride_hw[0], stride_hw[1],
        dilation_hw[0], dilation_hw[1], pt, pb, pl, pr, out_h, out_w,
    )


def spatial_shape(n: int, c: int, h: int, w: int, layout: str) -> Tuple[int, int, int, int]:
    """The 4-D shape of an (n, c, h, w) tensor in ``layout``."""
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def _restore_batch(y):
    return y


def _restore_image(y):
    return y[0]


def _restore_plane_nchw(y):
    return y[0, 0]


def _restore_plane_nhwc(y):
    return y[0, :, :, 0]


def batched(x: np.ndarray, layout: str, func: str, name: str = "x", allow_2d: bool = False):
    """View ``x`` as a 4-D batch; return ``(x4, restore)`` where ``restore`` undoes the view.

    4-D is a batch, 3-D one image ((C, H, W) or (H, W, C) per layout), and, when ``allow_2d``,
    2-D a single-channel (H, W) image.
    """
    if x.ndim == 4:
        return x, _restore_batch
    if x.ndim == 3:
        return x[np.newaxis], _restore_image
    if x.ndim == 2 and allow_2d:
        if layout == "NCHW":
            return x[np.newaxis, np.newaxis], _restore_plane_nchw
        return x[np.newaxis, :, :, np.newaxis], _restore_plane_nhwc
    dims = "2-D (H, W), 3-D or 4-D" if allow_2d else "3-D or 4-D"
    form = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
    raise ValueError(
        f"{func}: {name} must be {dims} {form} for layout={layout!r}, got shape {x.shape}"
    )


# --------------------------------------------------------------------------------------------
# output buffers


def check_out(out: Any, shape: Tuple[int, ...], dtype: np.dtype, func: str, name: str = "out"):
    """Validate a user-supplied ``out=`` array: exact shape and dtype, writeable."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{func}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{func}: {name} must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{func}: {name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{func}: {name} is read-only")
    return out


def deliver(result: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """Copy ``result`` into ``out`` when ``out`` was given and is not already ``result``."""
    if out is None or out is result:
        return result
    np.copyto(out, result)
    return out


def kernel_target(out: Optional[np.ndarray], shape, dtype, *inputs: np.ndarray) -> np.ndarray:
    """The C-contiguous array a kernel writes into.

    ``out`` itself when it is C-contiguous and shares no memory with the inputs, otherwise a
    fresh array (copied into ``out`` afterwards by :func:`deliver`), from the output buffer
    pool when it is large (see :mod:`fastconv._buffers`).
    """
    if (
        out is not None
        and out.flags.c_contiguous
        and not any(np.may_share_memory(out, a) for a in inputs)
    ):
        return out
    return _buffers.empty(shape, dtype)


# --------------------------------------------------------------------------------------------
# convolution


# The per-call argument records (ConvArgs, PoolArgs) are not frozen dataclasses: one is built
# on every call, and a frozen one costs 1.5-3.5 us more to build. Treat them as read-only (use
# dataclasses.replace); eq=False, as ndarray fields do not compare to one bool.
@dataclass(eq=False)
class ConvArgs:
    """Normalised arguments of ``conv2d``: 4-D arrays in ``layout``, compute dtype, geometry."""

    x: np.ndarray          # 4-D, in layout, compute dtype (not necessarily contiguous)
    weight: np.ndarray     # (C_out, C_in/g, KH, KW) for NCHW, (KH, KW, C_in/g, C_out) for NHWC
    bias: Optional[np.ndarray]
    geometry: Geometry
    groups: int
    c_out: int
    layout: str
    activation: Optional[str]
    dtype: np.dtype
    restore: Any           # maps the 4-D result back to the caller's rank

    @property
    def out_shape4(self) -> Tuple[int, int, int, int]:
        g = self.geometry
        return spatial_shape(g.n, self.c_out, g.out_h, g.out_w, self.layout)


class _ArgCache(dict):
    """Normalised arguments by shapes, dtypes and options (conv2d, pooling). A call that
    repeats a validated combination (every layer of a network, every step) skips the checks,
    which cost about 9 us (conv2d) and 25 us (pooling), more than a small layer's whole
    computation. Keys are built only from plain values (see _plain_option); the cache is
    emptied when it reaches ``size`` entries."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        if len(self) >= self.size:
            self.clear()
        self[key] = value


CONV_CACHE_SIZE = 512
_conv_cache = _ArgCache(CONV_CACHE_SIZE)
POOL_CACHE_SIZE = 512
_pool_cache = _ArgCache(POOL_CACHE_SIZE)


def _plain_option(value: Any) -> bool:
    """Whether a size option can be part of a cache key: an exact int, str or None, or a
    tuple of exact ints or of pairs of them. Anything else (a bool, a float, a list, a NumPy
    integer) takes the full checks, so a value they refuse is never found in the cache."""
    t = type(value)
    if t is int or t is str or value is None:
        return True
    if t is not tuple:
        return False
    for item in value:
        if type(item) is not int and not (
            type(item) is tuple and all(type(v) is int for v in item)
        ):
            return False
    return True


def _conv_key(x, weight, bias, stride, padding, dilation, groups, layout, activation):
    """The cache key of a conv2d call, or None when its arguments are not all plain."""
    if (
        type(x) is not np.ndarray
        or type(weight) is not np.ndarray
        or not (bias is None or type(bias) is np.ndarray)
        or not (_plain_option(stride) and _plain_option(padding) and _plain_option(dilation)
                and type(groups) is int and _plain_option(layout)
                and _plain_option(activation))
    ):
        return None
    return (x.shape, x.dtype, weight.shape, weight.dtype,
            None if bias is None else (bias.shape, bias.dtype),
            stride, padding, dilation, groups, layout, activation)


def _weight4(weight: np.ndarray, layout: str) -> np.ndarray:
    """A 2-D (KH, KW) filter as a 4-D weight of one input and one output channel."""
    if weight.ndim != 2:
        return weight
    return weight[np.newaxis, np.newaxis] if layout == "NCHW" else weight[:, :, np.newaxis, np.newaxis]


def conv_args(
    x, weight, bias, stride, padding, dilation, groups, layout, activation, func="conv2d"
) -> ConvArgs:
    """Validate and normalise the arguments of ``conv2d`` (and its reference)."""
    key = _conv_key(x, weight, bias, stride, padding, dilation, groups, layout, activation)
    known = _conv_cache.get(key) if key is not None else None
    if known is None:
        args = _check_conv_args(x, weight, bias, stride, padding, dilation, groups, layout,
                                activation, func)
        if key is not None:
            _conv_cache.put(key, (args.layout, args.activation, args.groups, args.c_out,
                                  args.dtype, args.geometry))
        return args
    layout, activation, groups, c_out, dtype, geometry = known
    x4, restore = batched(x, layout, func, allow_2d=True)
    return ConvArgs(
        x=x4.astype(dtype, copy=False),
        weight=_weight4(weight, layout).astype(dtype, copy=False),
        bias=None if bias is None else bias.astype(dtype, copy=False),
        geometry=geometry, groups=groups, c_out=c_out, layout=layout, activation=activation,
        dtype=dtype, restore=restore,
    )


def _check_conv_args(
    x, weight, bias, stride, padding, dilation, groups, layout, activation, func
) -> ConvArgs:
    """Every check of :func:`conv_args`, on any array-likes and option values."""
    layout = normalize_layout(layout, func)
    activation = normalize_choice(activation, ACTIVATIONS, "activation", func)
    x = as_array(x, "x", func)
    weight = as_array(weight, "weight", func)
    arrays = {"x": x, "weight": weight}
    if bias is not None:
        bias = as_array(bias, "bias", func)
    dtype = common_dtype(func, **arrays)
    groups = _as_int(groups, "groups", func, "an int")
    if groups < 1:
        raise ValueError(f"{func}: groups must be positive, got {groups}")

    if (x.ndim == 2) != (weight.ndim == 2):
        raise ValueError(
            f"{func}: a 2-D x (H, W) needs a 2-D weight (KH, KW) and vice versa "
            f"(x shape {x.shape}, weight shape {weight.shape})"
        )
    x4, restore = batched(x, layout, func, allow_2d=True)
    if weight.ndim not in (2, 4):
        form = "(C_out, C_in/groups, KH, KW)" if layout == "NCHW" else "(KH, KW, C_in/groups, C_out)"
        raise ValueError(
            f"{func}: weight must be 4-D {form} for layout={layout!r}, got shape {weight.shape}"
        )
    weight4 = _weight4(weight, layout)

    if layout == "NCHW":
        c_out, c_in_g, kh, kw = weight4.shape
        c_in = x4.shape[1]
    else:
        kh, kw, c_in_g, c_out = weight4.shape
        c_in = x4.shape[3]
    def shapes() -> str:   # only formatted for an error message
        return f"(x shape {x.shape}, weight shape {weight.shape}, groups={groups})"

    if min(weight4.shape) < 1:
        raise ValueError(f"{func}: weight must have no zero-length axis {shapes()}")
    if c_in % groups:
        raise ValueError(f"{func}: x has {c_in} channels, which is not divisible by groups {shapes()}")
    if c_out % groups:
        raise ValueError(
            f"{func}: weight has {c_out} output channels, which is not divisible by groups {shapes()}"
        )
    if c_in_g * groups != c_in:
        raise ValueError(
            f"{func}: weight expects {c_in_g} input channels per group but x has {c_in} "
            f"channels {shapes()}"
        )
    if bias is not None:
        if bias.shape != (c_out,):
            raise ValueError(
                f"{func}: bias must have shape ({c_out},) to match the weight's {c_out} output "
                f"channels, got shape {bias.shape} (weight shape {weight.shape})"
            )
        bias = bias.astype(dtype, copy=False)
    geometry = make_geometry(
        x4.shape, layout, (kh, kw), stride, padding, dilation, func,
        x_desc=("x shape", x.shape), kernel_desc="weight kernel",
    )
    args = ConvArgs(
        x=x4.astype(dtype, copy=False), weight=weight4.astype(dtype, copy=False), bias=bias,
        geometry=geometry, groups=groups, c_out=c_out, layout=layout, activation=activation,
        dtype=dtype, restore=restore,
    )
    check_size(args.out_shape4, dtype.itemsize, "the output", func)
    return args


# --------------------------------------------------------------------------------------------
# pooling


@dataclass(eq=False)
class PoolArgs:
    """Normalised arguments of a pooling op."""

    x: np.ndarray          # 4-D, in layout, compute dtype
    geometry: Geometry
    layout: str
    dtype: np.dtype
    restore: Any

    @property
    def out_shape4(self) -> Tuple[int, int, int, int]:
        g = self.geometry
        return spatial_shape(g.n, g.c, g.out_h, g.out_w, self.layout)


def pool_args(x, kernel_size, stride, padding, layout, ceil_mode, func,
              x_name="x shape") -> PoolArgs:
    """Validate and normalise the arguments shared by ``max_pool2d`` and ``avg_pool2d``."""
    key = None
    if (type(x) is np.ndarray and _plain_option(kernel_size) and _plain_option(stride)
            and _plain_option(padding) and _plain_option(layout) and type(ceil_mode) is bool):
        key = (x.shape, x.dtype, kernel_size, stride, padding, layout, ceil_mode, func, x_name)
        known = _pool_cache.get(key)
        if known is not None:
            layout, dtype, geometry = known
            x4, restore = batched(x, layout, func, allow_2d=True)
            return PoolArgs(x=x4.astype(dtype, copy=False), geometry=geometry, layout=layout,
                            dtype=dtype, restore=restore)
    args = _check_pool_args(x, kernel_size, stride, padding, layout, ceil_mode, func, x_name)
    if key is not None:
        _pool_cache.put(key, (args.layout, args.dtype, args.geometry))
    return args


def _check_pool_args(x, kernel_size, stride, padding, layout, ceil_mode, func,
                     x_name) -> PoolArgs:
    """Every check of :func:`pool_args`, on any array-like and option values."""
    layout = normalize_layout(layout, func)
    x = as_array(x, "x", func)
    dtype = common_dtype(func, x=x)
    x4, restore = batched(x, layout, func, allow_2d=True)
    kernel_hw = as_pair(kernel_size, "kernel_size", func)
    if stride is None:
        stride = kernel_hw
    geometry = make_geometry(
        x4.shape, layout, kernel_hw, stride, padding, 1, func,
        ceil_mode=bool(ceil_mode), x_desc=(x_name, x.shape), kernel_desc="kernel_size",
    )
    pads = (geometry.pad_top, geometry.pad_bottom, geometry.pad_left, geometry.pad_right)
    halves = (kernel_hw[0], kernel_hw[0], kernel_hw[1], kernel_hw[1])
    if any(2 * p > k for p, k in zip(pads, halves)):
        raise ValueError(
            f"{func}: padding {((pads[0], pads[1]), (pads[2], pads[3]))} must be at most half "
            f"of kernel_size {kernel_hw} ({x_name} {x.shape})"
        )
    args = PoolArgs(x=x4.astype(dtype, copy=False), geometry=geometry, layout=layout,
                    dtype=dtype, restore=restore)
    check_size(args.out_shape4, dtype.itemsize, "the output", func)
    return args


def check_index_offsets(args: PoolArgs, func: str) -> None:
    """Refuse max-pool index searches whose in-window offsets would overflow a C int.

    The kernels record a window's maximum as its offset ``row * W + column`` from the window's
    first cell, as an int (so the select vectorises alongside float32 compares).
    """
    g = args.geometry
    if (g.kernel_h - 1) * g.w + g.kernel_w > MAX_GEOMETRY:
        raise ValueError(
            f"{func}: cannot compute indices for kernel_size {(g.kernel_h, g.kernel_w)} over rows "
            f"of width {g.w}: (kernel_h - 1) * W + kernel_w must be at most {MAX_GEOMETRY}"
        )


def avg_divisor(divisor_override: Any, func: str) -> int:
    """Validate ``divisor_override``: None (returned as 0) or a positive int."""
    if divisor_override is None:
        return 0
    d = _as_int(divisor_override, "divisor_override", func, "an int or None")
    if d < 1:
        raise ValueError(f"{func}: divisor_override must be positive, got {divisor_override!r}")
    if d > MAX_GEOMETRY:
        raise ValueError(f"{func}: divisor_override must be at most {MAX_GEOMETRY}, got {d}")
    return d


# --------------------------------------------------------------------------------------------
# im2col / col2im


def im2col_args(x, kernel_size, stride, padding, dilation, layout, func="im2col"):
    """Validate ``im2col``'s arguments; return ``(x4 in compute dtype, geometry, layout)``."""
    layout = normalize_layout(layout, func)
    x = as_array(x, "x", func)
    dtype = common_dtype(func, x=x)
    if x.ndim != 4:
        form = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
        raise ValueError(f"{func}: x must be 4-D {form} for layout={layout!r}, got shape {x.shape}")
    kernel_hw = as_pair(kernel_size, "kernel_size", func)
    geometry = make_geometry(x.shape, layout, kernel_hw, stride, padding, dilation, func,
                             x_desc=("x shape", x.shape), kernel_desc="kernel_size")
    check_size(cols_shape(geometry), dtype.itemsize, "the column matrix", func)
    return x.astype(dtype, copy=False), geometry, layout


def cols_shape(g: Geometry) -> Pair:
    """Shape of the im2col matrix: one row per output pixel, one column per window cell."""
    return g.n * g.out_h * g.out_w, g.c * g.kernel_h * g.kernel_w


def col2im_args(cols, input_shape, kernel_size, stride, padding, dilation, layout, func="col2im"):
    """Validate ``col2im``'s arguments; return ``(cols in compute dtype, geometry, layout)``."""
    layout = normalize_layout(layout, func)
    cols = as_array(cols, "cols", func)
    dtype = common_dtype(func, cols=cols)
    try:
        shape = tuple(_as_int(s, "input_shape", func, "a tuple of 4 ints") for s in input_shape)
    except TypeError:
        raise TypeError(f"{func}: input_shape must be a tuple of 4 ints, got {input_shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{func}: input_shape must be 4 non-negative ints, got {input_shape!r}")
    kernel_hw = as_pair(kernel_size, "kernel_size", func)
    geometry = make_geometry(shape, layout, kernel_hw, stride, padding, dilation, func,
                             x_desc=("input_shape", shape), kernel_desc="kernel_size")
    expected = cols_shape(geometry)
    if cols.shape != expected:
        raise ValueError(
            f"{func}: cols must have shape {expected} for input_shape {shape}, kernel_size "
            f"{kernel_hw} and layout={layout!r}, got shape {cols.shape}"
        )
    check_size(shape, dtype.itemsize, "the output", func)
    return cols.astype(dtype, copy=False), geometry, layout


_ONE_BYTE = np.zeros(1, dtype=np.uint8)


@functools.lru_cache(maxsize=1024)
def final_shape(restore: Any, shape4: Tuple[int, ...]) -> Tuple[int, ...]:
    """The caller-rank shape of a 4-D result of ``shape4`` (what ``restore`` will return).
    Cached: every call of an op asks, and the restore functions are module-level."""
    # A zero-stride view of one byte: restore() only indexes it, and this is the cheapest
    # array of any shape to build.
    return restore(np.ndarray(shape4, np.uint8, buffer=_ONE_BYTE, strides=(0,) * len(shape4))).shape


# --------------------------------------------------------------------------------------------
# backward passes

GRAD_NEEDS = ("input", "weight", "bias")


def normalize_needs(needs: Any, func: str) -> frozenset:
    """Validate ``needs``: one of ``"input"``, ``"weight"``, ``"bias"`` or an iterable of them."""
    if isinstance(needs, str):
        needs = (needs,)
    try:
        items = list(needs)
    except TypeError:
        raise TypeError(
            f"{func}: needs must be a tuple of 'input', 'weight' and/or 'bias', got {needs!r}"
        ) from None
    return frozenset(normalize_choice(item, GRAD_NEEDS, "needs", func) for item in items)


def check_grad_out(grad_out: Any, expected: Tuple[int, ...], forward: str, context: str,
                   func: str) -> np.ndarray:
    """``grad_out`` as an array, which must have exactly the forward op's output shape."""
    grad_out = as_array(grad_out, "grad_out", func)
    if grad_out.shape != tuple(expected):
        raise ValueError(
            f"{func}: grad_out must have shape {tuple(expected)}, the shape of {forward}'s "
            f"output for {context}, got shape {grad_out.shape}"
        )
    return grad_out


@dataclass(frozen=True)
class ConvGradArgs:
    """Normalised arguments of ``conv2d_backward``."""

    conv: ConvArgs             # the forward op's arguments, in the backward compute dtype
    grad_out: np.ndarray       # 4-D, shaped like the forward output (conv.out_shape4)
    weight_shape: Tuple[int, ...]  # the caller's weight shape (grad_weight gets it back)
    needs: frozenset


def conv_backward_args(grad_out, x, weight, stride, padding, dilation, groups, layout, needs,
                       func="conv2d_backward") -> ConvGradArgs:
    """Validate and normalise the arguments of ``conv2d_backward`` (and its reference)."""
    needs = normalize_needs(needs, func)
    args = conv_args(x, weight, None, stride, padding, dilation, groups, layout, None, func)
    weight_shape = np.shape(weight)
    grad_out = check_grad_out(
        grad_out, final_shape(args.restore, args.out_shape4), "conv2d",
        f"x shape {np.shape(x)}, weight shape {weight_shape}", func,
    )
    dtype = np.result_type(args.dtype, compute_dtype(grad_out.dtype, "grad_out", func))
    args = ConvArgs(
        x=args.x.astype(dtype, copy=False), weight=args.weight.astype(dtype, copy=False),
        bias=None, geometry=args.geometry, groups=args.groups, c_out=args.c_out,
        layout=args.layout, activation=None, dtype=dtype, restore=args.restore,
    )
    check_size(args.x.shape, dtype.itemsize, "grad_x", func)
    grad_out4 = grad_out.astype(dtype, copy=False).reshape(args.out_shape4)
    return ConvGradArgs(conv=args, grad_out=grad_out4, weight_shape=weight_shape, needs=needs)


@dataclass(frozen=True)
class PoolGradArgs:
    """Normalised arguments of a pooling backward op."""

    pool: PoolArgs             # the forward op's arguments, in the backward compute dtype
    grad_out: np.ndarray       # 4-D, shaped like the forward output (pool.out_shape4)
    input_shape: Tuple[int, ...]  # the caller's x shape (grad_x gets it)


def pool_backward_args(grad_out, x, kernel_size, stride, padding, layout, ceil_mode, forward,
                       func, x_name="x shape") -> PoolGradArgs:
    """Validate a pooling backward's arguments; ``x`` may be a broadcast stand-in (avg_pool2d)."""
    args = pool_args(x, kernel_size, stride, padding, layout, ceil_mode, func, x_name)
    grad_out = check_grad_out(grad_out, final_shape(args.restore, args.out_shape4), forward,
                              f"{x_name} {np.shape(x)}", func)
    dtype = np.result_type(args.dtype, compute_dtype(grad_out.dtype, "grad_out", func))
    args = PoolArgs(x=args.x.astype(dtype, copy=False), geometry=args.geometry,
                    layout=args.layout, dtype=dtype, restore=args.restore)
    check_size(args.x.shape, dtype.itemsize, "grad_x", func)
    return PoolGradArgs(pool=args, grad_out=grad_out.astype(dtype, copy=False).reshape(
        args.out_shape4), input_shape=np.shape(x))


def max_pool_backward_args(grad_out, x, kernel_size, stride, padding, layout, ceil_mode, indices,
                           func="max_pool2d_backward"):
    """Validate ``max_pool2d_backward``'s arguments; return ``(PoolGradArgs, indices4 or None)``.

    Given indices must be integers of grad_out's shape, each inside its (n, c) plane; that is
    all a kernel needs to stay in bounds (an index outside its window is the caller's business).
    """
    x = as_array(x, "x", func)
    args = pool_backward_args(grad_out, x, kernel_size, stride, padding, layout, ceil_mode,
                              "max_pool2d", func)
    if indices is None:
        return args, None
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{func}: indices must be an integer array (max_pool2d's return_indices "
                        f"output), got dtype {indices.dtype}")
    if indices.shape != np.shape(grad_out):
        raise ValueError(f"{func}: indices must have grad_out's shape {np.shape(grad_out)}, got "
                         f"shape {indices.shape}")
    g = args.pool.geometry
    if indices.size and (indices.min() < 0 or indices.max() >= g.h * g.w):
        raise ValueError(
            f"{func}: indices must lie in [0, H*W) = [0, {g.h * g.w}) for x shape {x.shape}, "
            f"got values in [{indices.min()}, {indices.max()}]"
        )
    return args, indices.astype(np.int64, copy=False).reshape(args.pool.out_shape4)


def input_shape_arg(input_shape: Any, dtype: np.dtype, func: str) -> np.ndarray:
    """A zero-copy stand-in array of ``input_shape`` (2, 3 or 4 non-negative ints)."""
    try:
        shape = tuple(_as_int(s, "input_shape", func, "a tuple of ints") for s in input_shape)
    except TypeError:
        raise TypeError(f"{func}: input_shape must be a tuple of 2, 3 or 4 ints, got "
                        f"{input_shape!r}") from None
    if len(shape) not in (2, 3, 4) or min(shape) < 0:
        raise ValueError(f"{func}: input_shape must be 2, 3 or 4 non-negative ints, got "
                         f"{input_shape!r}")
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def avg_pool_backward_args(grad_out, input_shape, kernel_size, stride, padding, layout,
                           ceil_mode, func="avg_pool2d_backward") -> PoolGradArgs:
    """Validate ``avg_pool2d_backward``'s arguments (the input itself is not needed)."""
    grad_out = as_array(grad_out, "grad_out", func)
    stand_in = input_shape_arg(input_shape, compute_dtype(grad_out.dtype, "grad_out", func), func)
    return pool_backward_args(grad_out, stand_in, kernel_size, stride, padding, layout,
                              ceil_mode, "avg_pool2d", func, x_name="input_shape")


def relu_backward_args(grad_out, x, func="relu_backward"):
    """Validate ``relu_backward``'s arguments; return ``(grad_out, x, dtype)``."""
    grad_out = as_array(grad_out, "grad_out", func)
    x = as_array(x, "x", func)
    if grad_out.shape != x.shape:
        raise ValueError(f"{func}: grad_out and x must have the same shape, got {grad_out.shape} "
                         f"and {x.shape}")
    return grad_out, x, common_dtype(func, grad_out=grad_out, x=x)
