"""Convolution layer shapes used by the benchmarks, and their FLOP counts.

The table itself lives in the package, :mod:`fastconv._suite`, so that
``python -m fastconv bench`` (installed) and these pytest-benchmark files (not installed) run
the same suite; this module re-exports it under the names the ``bench_*.py`` files import.
"""

from __future__ import annotations

from fastconv._suite import LAYERS, LAYERS_BY_NAME, Layer, conv_flops

__all__ = ["Layer", "LAYERS", "LAYERS_BY_NAME", "conv_flops"]
