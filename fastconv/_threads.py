"""The thread count every kernel runs with.

``num_threads=None`` in any op means the process-wide setting: :func:`set_num_threads`, which
defaults to ``OMP_NUM_THREADS`` when that is set, else to the number of cores this process may
run on. Like OpenMP itself, fastconv reads these once (when an op first needs them), and again
on ``set_num_threads(None)``. Without OpenMP every kernel runs on one thread whatever is asked.
"""

from __future__ import annotations

import os
from typing import Optional

from . import _validate
from ._kernels import _openmp

# Work items (output rows, pixels, elements) below which starting a thread team costs more than
# it saves. Small calls then run on the calling thread only.
MIN_WORK_PER_THREAD = 4096

_setting: Optional[int] = None
# default_num_threads() as last read: by the first call that needs it and again by
# set_num_threads(None). Reading the environment and the CPU affinity on every call cost
# 2-3 us, a tenth of a small convolution.
_default: Optional[int] = None


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` (its first entry) when set to a positive int, else the core count."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _cores()


def set_num_threads(n: Optional[int]) -> None:
    """Set the default thread count of every op; ``None`` restores the default.

    Parameters
    ----------
    n : int or None
        Positive number of threads, an upper limit per call (a call never uses more threads than
        it has work items). ``None`` goes back to ``OMP_NUM_THREADS`` or the core count,
        read again now (so a changed environment or CPU affinity takes effect).

    Examples
    --------
    >>> import fastconv
    >>> fastconv.set_num_threads(1)
    >>> fastconv.get_num_threads()
    1
    >>> fastconv.set_num_threads(None)
    """
    global _setting, _default
    _setting = _validate.check_num_threads(n, "set_num_threads")
    if _setting is None:
        _default = default_num_threads()


def get_num_threads() -> int:
    """The thread count used when an op is called with ``num_threads=None``.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.get_num_threads() >= 1
    True
    """
    global _default
    if _setting is not None:
        return _setting
    if _default is None:
        _default = default_num_threads()
    return _default


def resolve(num_threads: Optional[int], func: str) -> int:
    """Validate an op's ``num_threads`` argument and return the requested thread count."""
    n = _validate.check_num_threads(num_threads, func)
    return get_num_threads() if n is None else n


def for_work(n_threads: int, work: int, parallel_items: Optional[int] = None,
             min_per_thread: int = MIN_WORK_PER_THREAD) -> int:
    """Threads to start for ``work`` units of work split over ``parallel_items`` loop items.

    At most ``n_threads``, at most one per ``min_per_thread`` units of work and at most one per
    item (default: one per unit of work); 1 without OpenMP.
    """
    if not _openmp.openmp_enabled():
        return 1
    useful = work // max(1, min_per_thread)
    if parallel_items is not None:
        useful = min(useful, parallel_items)
    return max(1, min(n_threads, useful))
