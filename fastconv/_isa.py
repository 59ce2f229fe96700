"""CPU dispatch: which compiled copy of the kernels this process uses.

The build compiles every compute kernel module once for the baseline instruction set (any
x86-64, or any CPU elsewhere) and, on x86-64, once more per level of :data:`LEVELS` that the
compiler accepts (``_conv_avx2``, ``_conv_avx512``, ...), all from the same source. At import
this module picks the best level that was built and that the running CPU supports, as NumPy
reports its features. ``FASTCONV_CPU_LEVEL=baseline|avx2|avx512`` forces a level (the tests use
it to cover every level the machine can run); asking for one the CPU lacks or the build did not
produce is an error, never a crash on an illegal instruction.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Dict, List, Optional

# From least to most capable; the CPU features each level needs (NumPy's names).
LEVELS = ("baseline", "avx2", "avx512")
REQUIRED_FEATURES = {
    "baseline": (),
    "avx2": ("AVX2", "FMA3"),
    "avx512": ("AVX512F", "AVX512CD", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX2", "FMA3"),
}
ENV_VAR = "FASTCONV_CPU_LEVEL"
# Every level has each of these modules (the probe below looks for the first one).
DISPATCHED = ("_conv", "_blocked", "_conv_backward", "_im2col", "_pool", "_relu")


def cpu_features() -> Dict[str, bool]:
    """The running CPU's features as NumPy detected them (empty if NumPy does not say)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def _suffix(level: str) -> str:
    return "" if level == "baseline" else f"_{level}"


def built_levels() -> List[str]:
    """The levels whose kernels were compiled into this installation."""
    return [level for level in LEVELS
            if importlib.util.find_spec(f"fastconv._kernels.{DISPATCHED[0]}{_suffix(level)}")]


def supported_levels(features: Optional[Dict[str, bool]] = None) -> List[str]:
    """Built levels the CPU can run (``features`` defaults to :func:`cpu_features`)."""
    features = cpu_features() if features is None else features
    return [level for level in built_levels()
            if all(features.get(f, False) for f in REQUIRED_FEATURES[level])]


def choose_level(requested: Optional[str], supported: List[str]) -> str:
    """The level to use: ``requested`` (validated) or else the best of ``supported``."""
    if requested is None or not requested.strip():
        return supported[-1]
    level = requested.strip().lower()
    if level not in LEVELS:
        raise ValueError(f"{ENV_VAR}={requested!r}: must be one of {', '.join(LEVELS)}")
    if level not in supported:
        raise RuntimeError(
            f"{ENV_VAR}={requested!r}: this process cannot use the {level} kernels (levels "
            f"built and supported by this CPU: {', '.join(supported)})"
        )
    return level


LEVEL = choose_level(os.environ.get(ENV_VAR), supported_levels())


def kernel_module(name: str) -> ModuleType:
    """The compiled kernel module ``name`` (e.g. ``"_conv"``) for the chosen level."""
    return importlib.import_module(f"fastconv._kernels.{name}{_suffix(LEVEL)}")


def describe() -> str:
    """One line for ``show_config()``: the level in use and why."""
    forced = os.environ.get(ENV_VAR, "").strip()
    how = f"forced by {ENV_VAR}" if forced else "best supported"
    return (f"{LEVEL} ({how}; built: {', '.join(built_levels())}; "
            f"CPU supports: {', '.join(supported_levels())})")
