"""The output buffer pool: large fresh outputs reuse the memory of freed ones.

A new multi-megabyte NumPy array is mapped by the operating system page by page on first
touch, and those page faults (zeroing included) cost about as much as a memory-bound kernel
itself: a depthwise layer's 51 MB output added about 2 ms to a 3.4 ms call on the development
machine. So outputs that fastconv allocates (``out=None``) of at least :data:`MIN_BYTES` take
their buffer from a bounded pool, and give it back to the pool when NumPy frees them (through
a NumPy memory handler, NEP 49, named ``"fastconv_buffer_pool"``). The next output of a fitting
size (its size up to 1/8 larger) then reuses memory that is already mapped.

The arrays are ordinary: they own their data (``flags.owndata``), can be resized, pickled and
passed to any code that goes through NumPy; as with every non-default NumPy allocator (NEP 49),
C code must not take over the buffer and ``free()`` it itself. Only memory that fastconv's own outputs used is ever kept, at most
``max_bytes`` of it (default 256 MiB, oldest blocks freed first, at most 64 blocks);
``set_buffer_pool(0)`` or ``FASTCONV_BUFFER_POOL=0`` turns the pool off.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any, Dict

import numpy as np

from ._kernels import _bufpool

__all__ = ["set_buffer_pool", "buffer_pool_info", "clear_buffer_pool"]

ENV_VAR = "FASTCONV_BUFFER_POOL"
DEFAULT_MAX_BYTES = 256 << 20
# Smaller buffers come from the C allocator's heap, which already reuses them without faults.
MIN_BYTES = 256 << 10

# Results at least this large are written by streaming (non-temporal) stores where a kernel
# has them (ReLU; see _kernels/_stream.h): they leave the caches before anyone reads them
# again, and skipping the read that an ordinary store to an uncached line makes saves a third
# of the memory traffic. Half of a typical L3 cache.
STREAM_MIN_BYTES = 16 << 20

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Bounds above this are refused (the C side holds them in a size_t).
MAX_BOUND = 2**63 - 1


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"256M"``, ``"256MiB"``, ``"1G"`` (binary units); ValueError
    otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size in bytes: {text!r} (examples: 0, 268435456, 256M, 1G)")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size > MAX_BOUND:
        raise ValueError(f"not a size in bytes: {text!r} is more than 2**63 - 1")
    return size


def _initial_max_bytes() -> int:
    text = os.environ.get(ENV_VAR)
    if text is None or not text.strip():
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as exc:
        warnings.warn(f"fastconv: ignoring {ENV_VAR}={text!r}: {exc}; using the default "
                      f"{DEFAULT_MAX_BYTES >> 20} MiB", RuntimeWarning, stacklevel=2)
        return DEFAULT_MAX_BYTES


_bufpool.init(_initial_max_bytes(), MIN_BYTES)


def empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, on pooled memory when it is at least :data:`MIN_BYTES`."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    return _bufpool.empty(shape, dtype)


def streaming(nbytes: int) -> bool:
    """Whether a kernel should write a result of ``nbytes`` by streaming stores."""
    return nbytes >= STREAM_MIN_BYTES


def set_buffer_pool(max_bytes: int) -> int:
    """Bound the memory kept for reuse by fastconv's freed outputs; return the previous bound.

    Parameters
    ----------
    max_bytes : int
        Most bytes the pool keeps (0 keeps none: every output then comes from the C allocator
        and goes back to it). Lowering the bound frees the oldest blocks beyond it at once.

    Returns
    -------
    int
        The bound before this call.

    Raises
    ------
    TypeError
        If ``max_bytes`` is not an integer.
    ValueError
        If ``max_bytes`` is negative or not below 2**63.

    Notes
    -----
    The initial bound is 256 MiB, or ``FASTCONV_BUFFER_POOL`` when set (bytes, or with a
    binary suffix: ``512M``, ``1G``). Only outputs of at least 256 KiB are pooled; arrays
    already handed out keep their memory until they are freed, whatever the bound.

    Examples
    --------
    >>> import fastconv
    >>> previous = fastconv.set_buffer_pool(64 << 20)
    >>> fastconv.buffer_pool_info()["max_bytes"]
    67108864
    >>> _ = fastconv.set_buffer_pool(previous)
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"set_buffer_pool: `max_bytes` must be an int, got "
                        f"{type(max_bytes).__name__}")
    if not 0 <= max_bytes <= MAX_BOUND:
        raise ValueError(f"set_buffer_pool: `max_bytes` must be >= 0 and < 2**63, got "
                         f"{max_bytes}")
    previous = _bufpool.stats()["max_bytes"]
    _bufpool.set_max_bytes(int(max_bytes))
    return previous


def clear_buffer_pool() -> None:
    """Free every block the pool keeps (the bound stays as it is).

    Examples
    --------
    >>> import fastconv
    >>> fastconv.clear_buffer_pool()
    >>> fastconv.buffer_pool_info()["cached_bytes"]
    0
    """
    _bufpool.clear()


def buffer_pool_info() -> Dict[str, Any]:
    """The pool's state: bounds, what it holds, and how often it served an output.

    Returns
    -------
    dict
        ``max_bytes`` and ``min_bytes`` (the bounds), ``cached_bytes`` and ``cached_blocks``
        (held now, free for reuse), ``max_blocks``, ``hits`` and ``misses`` (pooled-size
        outputs served from the pool or freshly allocated since import), ``evictions`` (blocks
        freed to keep within the bounds), ``handler`` (the NumPy memory handler's name, as
        ``get_handler_name`` in NumPy's ``multiarray`` module reports it for a pooled array).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((64, 64, 64), dtype=np.float32)          # 1 MiB
    >>> before = fastconv.buffer_pool_info()
    >>> y = fastconv.relu(x); del y                          # the buffer goes to the pool
    >>> y = fastconv.relu(x)                                 # and is reused here
    >>> fastconv.buffer_pool_info()["hits"] > before["hits"]
    True
    """
    info = _bufpool.stats()
    info["max_blocks"] = _bufpool.MAX_BLOCKS
    info["handler"] = _bufpool.HANDLER_NAME
    return info
