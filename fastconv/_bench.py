"""``python -m fastconv bench``: the verified benchmark report of the layer suite.

Everything runs from the installed package (``benchmarks/`` is not installed, and this module
does not import pytest). The suite itself, layer shapes and pooling configurations, is data in
:mod:`fastconv._suite`, shared with the pytest-benchmark files in ``benchmarks/``.

What a run does:

1. Measures the machine's ceilings: copy bandwidth (``np.copyto`` of a 256 MiB array, read +
   write bytes), NumPy's sgemm GFLOP/s on 2048x2048 float32 (and dgemm when float64 rows are
   asked for), and the FMA peak per dtype: a multiply-add loop compiled into fastconv's
   dispatched kernels (their vector width, 12 independent accumulators, see
   ``_kernels/_peak.h``) on the run's threads, fastest of 5 runs (3 with ``--quick``). "% peak"
   is relative to the FMA peak unless ``--peak-gflops`` gives one.
2. Runs every case of the selected sections (:data:`SECTIONS`): each implementation is first
   checked against :mod:`fastconv.reference` (tolerances scaled by the reduction length, see
   :func:`tolerance`), then timed: one warm-up call (the checked one), then at least
   ``--repeats`` calls and until ``--min-time`` seconds have passed (at most :data:`MAX_CALLS`,
   and only :data:`MIN_CALLS` when those take over :data:`MAX_SECONDS`); the median is
   reported. The reference is slow, so it gets 1 to :data:`REF_MAX_CALLS` calls.
3. Prints one table per section, GFLOP/s (``2 * MACs / time``) or GB/s (input + output bytes)
   with the percentage of the matching ceiling, and the speed ratios reference/fastconv and
   torch/fastconv; torch columns say "n/a" when torch is absent or disabled.
4. Optionally writes every row with its raw timings, the machine, versions and environment to
   ``--json PATH``.

The exit status is 1 when any check fails, 0 otherwise: a fastconv result that differs from the
reference or raises, and also a torch result that differs (its ratio would then compare
different computations; a torch call that raises only marks the torch column "n/a").
``--malloc-condition`` re-runs the suite in a subprocess with :data:`GLIBC_TUNABLES_VALUE` in
``GLIBC_TUNABLES`` (and/or without it) and merges the results; with ``both``, the reference is
timed in the first condition only (it does not depend on fastconv's allocator), and the note
under each table says so. The environment variables ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` are reported, never changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from . import _suite

HELP = "time the layer suite against fastconv.reference and PyTorch, every result verified"
DESCRIPTION = (
    "Benchmark report: conv2d on the layer suite, conv + fused ReLU, max/avg pooling, ReLU and "
    "the backward ops, in both layouts, against the NumPy reference and PyTorch (same thread "
    "count). Every result is checked against fastconv.reference before it is timed; the exit "
    "status is 1 if any check fails. Prints measured machine ceilings (copy bandwidth, NumPy "
    "sgemm, the FMA peak of fastconv's kernels) and, per row, the median time, GFLOP/s or "
    "GB/s, the percentage of the ceiling and "
    "the speed ratios. Progress goes to stderr. The default suite takes a few minutes on 2 "
    "cores; --quick takes seconds."
)

JSON_SCHEMA = "fastconv-bench/1"

# Sections, in the order they run and print. --ops accepts these, plus "backward" for the last
# three together.
SECTIONS = ("conv", "fused", "pool", "relu", "overhead", "conv_backward", "pool_backward",
            "relu_backward")
OP_ALIASES = {"backward": ("conv_backward", "pool_backward", "relu_backward"),
              "all": SECTIONS}
SECTION_TITLES = {
    "conv": "conv2d forward",
    "fused": "conv2d + ReLU: alone, fused (activation='relu'), unfused (conv then relu in place)",
    "pool": "pooling forward",
    "relu": "ReLU forward",
    "overhead": ("per-call overhead: calls with one output value (argument checks, allocation, "
                 "dispatch, thread start)"),
    "conv_backward": "conv2d_backward: grad input + weight + bias (FLOPs: 2x forward)",
    "pool_backward": "pooling backward (max: with forward indices)",
    "relu_backward": "relu_backward",
}
ALGORITHMS = ("direct", "im2col", "auto")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float64")
DEFAULT_BATCHES = (1, 32)
RELU_MODES = ("new", "out")
# The overhead section's calls: (row name, fastconv function, layout).
OVERHEAD_CALLS = (("conv2d", "conv2d", "NCHW"), ("conv2d", "conv2d", "NHWC"),
                  ("max_pool2d 3x3", "max_pool2d", "NCHW"),
                  ("max_pool2d 3x3", "max_pool2d", "NHWC"),
                  ("avg_pool2d 3x3", "avg_pool2d", "NCHW"), ("relu", "relu", "any"))

# --quick: a few seconds in all (the tests run it).
QUICK_LAYERS = ("lenet_conv2", "resnet_3x3", "dw_3x3")
QUICK_FUSED = ("resnet_3x3",)
QUICK_BACKWARD = ("resnet_3x3", "dw_3x3")
QUICK_POOL_OPS = ("max_3x3_s2_p1", "avg_3x3_s2_p1")

# Timing: at least --repeats calls and until --min-time seconds have passed, at most MAX_CALLS.
DEFAULT_REPEATS = 5
DEFAULT_MIN_TIME = 0.3
QUICK_REPEATS = 3
QUICK_MIN_TIME = 0.02
MAX_CALLS = 200
# ... except that a slow call (a busy machine, a large batch) stops after MIN_CALLS calls once
# MAX_SECONDS have been spent on it, so that one case cannot take half a minute.
MIN_CALLS = 3
MAX_SECONDS = 2.0
# A case's implementations are timed in this many alternating rounds, each a share of the
# calls and of the times above (a round of a slow call stops after one call once its share of
# MAX_SECONDS is spent, so MIN_CALLS calls in all).
TIMING_ROUNDS = 3
# Before each block of timed calls, wait (at most SETTLE_MAX_SECONDS) until this process's
# threads are idle: NumPy's OpenBLAS threads spin for about 0.1 s after a GEMM (im2col, the
# reference), using a core, and a 2-thread kernel timed then ran up to 2x slower.
SETTLE_PROBE_SECONDS = 0.01
SETTLE_MAX_SECONDS = 1.0
# Then, untimed, a short call is repeated for up to WARMUP_SECONDS (at most half of the
# block's share of --min-time), or for BLAS_WARMUP_SECONDS when NumPy's BLAS ran just before
# (the case's reference, im2col): after a GEMM the kernels' OpenMP worker woke on the main
# thread's core for its next 100-200 ms of calls, even after a second of sleep
# (/proc/self/task: 22-29 of 30 samples on that core, none before), and a 2-thread call on a
# 512x512 image took 1.2-2x as long (0.15-0.19 against 0.08-0.10 ms, in 25-100 ms windows
# after `A @ A`); calls restored it, time alone did not.
WARMUP_SECONDS = 0.05
BLAS_WARMUP_SECONDS = 0.2
# After those calls, when NumPy's BLAS ran before and the bench uses several threads, the
# calls go on (for at most PLACEMENT_MAX_SECONDS) until the kernels' OpenMP team runs on
# distinct CPUs at PLACEMENT_CHECKS checks in a row (see team_apart). The slow window above
# is the scheduler placing the team's worker on the main thread's CPU: after 0.3 s of im2col
# calls (and 0.15 s of sleep, the BLAS threads idle), a ResNet 1x1 layer at batch 1 ran the
# direct kernel at 1.02-1.24 ms on one CPU (sched_getcpu in each thread) for its next 35-55
# calls, and at 0.54-0.60 ms once the threads ran apart; a one-off check saw them apart
# during two slow calls, hence several in a row. A block that still shares a CPU is timed
# anyway, with a note. Not for implementations that run GEMMs on NumPy's BLAS themselves, nor
# for PyTorch (its own thread pool). The limit is checked between calls, so a block of calls
# longer than a quarter second can overrun it.
PLACEMENT_MAX_SECONDS = 1.0
PLACEMENT_CHECKS = 5
TEAM_SHARED_NOTE = "timed with the kernels' threads on one CPU after {:.1f} s of warm-up"
# The reference: the checked call is timed too, then more while under --min-time, at most this.
REF_MAX_CALLS = 3
# Without timing the reference (--no-reference, or a later malloc condition), checks run on
# the first images only. The notes printed under a table when its reference was not timed:
REFERENCE_NOT_TIMED = "reference: not timed (--no-reference)"
REFERENCE_TIMED_ONCE = ("reference: timed in the first malloc condition ({}) only; the ref "
                        "columns show that time")
VERIFY_BATCH = 2

# Machine ceilings: (copy MiB, GEMM size, timed runs) normally and with --quick.
CEILING_SIZES = (256, 2048, 5)
QUICK_CEILING_SIZES = (16, 512, 3)
# Seconds of each timed run of the FMA peak loop, normally and with --quick.
FMA_RUN_SECONDS = 0.05
QUICK_FMA_RUN_SECONDS = 0.01

# Pass when |got - want| <= tol * max(1, max|want|) + tol * |want| elementwise, with
# tol = TOL_FACTOR * eps(dtype) * sqrt(reduction length): the rounding error of two summation
# orders grows about like sqrt(terms) relative to the result's scale.
TOL_FACTOR = 32

GLIBC_TUNABLES_VALUE = "glibc.malloc.top_pad=1073741824:glibc.malloc.trim_threshold=8589934592"
CONDITIONS = ("default", "tunables")
MALLOC_CHOICES = ("default", "tunables", "both")
CONDITION_SHORT = {"default": "def", "tunables": "tun"}
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ENV_VARS = OPENBLAS_VARS + (
    "GLIBC_TUNABLES", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "FASTCONV_CPU_LEVEL", "FASTCONV_BUFFER_POOL",
)
RECOMMENDED_COMMAND = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastconv bench"


# --------------------------------------------------------------------------------------------
# command-line arguments


def _split(text: str) -> List[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _dedupe(items) -> tuple:
    return tuple(dict.fromkeys(items))


def parse_layers(text: str) -> Tuple[str, ...]:
    """argparse type of ``--layers``: comma-separated layer names of the suite.

    >>> parse_layers("vgg_3x3, dw_3x3,vgg_3x3")
    ('vgg_3x3', 'dw_3x3')
    """
    names = _split(text)
    if not names:
        raise argparse.ArgumentTypeError(f"expected layer names separated by commas, got {text!r}")
    unknown = [name for name in names if name not in _suite.LAYERS_BY_NAME]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown layer{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the suite has: {', '.join(_suite.LAYERS_BY_NAME)}")
    return _dedupe(names)


def parse_ops(text: str) -> Tuple[str, ...]:
    """argparse type of ``--ops``: sections (and ``backward``/``all``), in suite order.

    >>> parse_ops("backward,conv")
    ('conv', 'conv_backward', 'pool_backward', 'relu_backward')
    """
    chosen = set()
    for name in _split(text.lower()):
        if name in OP_ALIASES:
            chosen.update(OP_ALIASES[name])
        elif name in SECTIONS:
            chosen.add(name)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown op {name!r}; choose from: {', '.join(SECTIONS + tuple(OP_ALIASES))}")
    if not chosen:
        raise argparse.ArgumentTypeError(f"expected ops separated by commas, got {text!r}")
    return tuple(s for s in SECTIONS if s in chosen)


def _choice_list(choices: Sequence[str], what: str, upper: bool = False):
    def parse(text: str) -> Tuple[str, ...]:
        items = _split(text.upper() if upper else text.lower())
        bad = [item for item in items if item not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected {what} from {', '.join(choices)} separated by commas, got {text!r}")
        return _dedupe(items)

    parse.__name__ = what  # argparse names the type in its error messages
    return parse


parse_layouts = _choice_list(LAYOUTS, "layouts", upper=True)
parse_dtypes = _choice_list(DTYPES, "dtypes")


def parse_algorithms(text: str) -> Tuple[str, ...]:
    """argparse type of ``--algorithms``: ``all`` or a comma list of direct, im2col, auto."""
    if text.strip().lower() == "all":
        return ALGORITHMS
    return _choice_list(ALGORITHMS, "algorithms")(text)


def parse_batches(text: str) -> Tuple[int, ...]:
    """argparse type of ``--batch``: positive ints separated by commas.

    >>> parse_batches("1,32")
    (1, 32)
    """
    try:
        batches = [int(part) for part in _split(text)]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive ints separated by commas, got {text!r}")
    return _dedupe(batches)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bench`` options on ``parser``.

    Options whose default is ``None`` take their value from ``--quick`` or from the full suite
    in :func:`make_plan`, so that an explicit option always wins over ``--quick``.
    """
    layer_names = ", ".join(_suite.LAYERS_BY_NAME)
    parser.add_argument(
        "--layers", type=parse_layers, default=None, metavar="NAMES",
        help=f"comma-separated conv layers of the suite: {layer_names} (default: all 11; with "
             f"--layers the fused and backward rows use these layers too, otherwise "
             f"{', '.join(_suite.FUSED_LAYERS)} and {', '.join(_suite.BACKWARD_LAYERS)})")
    parser.add_argument(
        "--ops", type=parse_ops, default=None, metavar="OPS",
        help=f"sections to run: {', '.join(SECTIONS)}; 'backward' = the three backward ones "
             f"(default: all)")
    parser.add_argument("--layout", type=parse_layouts, default=None, metavar="LAYOUTS",
                        help="NCHW, NHWC or both, comma-separated (default: NCHW,NHWC)")
    parser.add_argument("--dtype", type=parse_dtypes, default=None, metavar="DTYPES",
                        help="float32, float64 or both (default: float32)")
    parser.add_argument("--batch", type=parse_batches, default=None, metavar="SIZES",
                        help="batch sizes, comma-separated (default: 1,32; --quick: 1)")
    parser.add_argument("--algorithms", type=parse_algorithms, default=None, metavar="ALGOS",
                        help="fastconv conv2d / conv2d_backward algorithms to time: 'all' or a "
                             "comma list of direct, im2col, auto (default: auto)")
    parser.add_argument("--threads", type=_positive(int), default=None, metavar="N",
                        help="threads for fastconv and torch alike (default: "
                             "fastconv.get_num_threads()); NumPy's BLAS keeps its own setting")
    parser.add_argument("--repeats", type=_positive(int), default=None, metavar="R",
                        help=f"least timed calls per implementation; the median is reported "
                             f"(default: {DEFAULT_REPEATS}; --quick: {QUICK_REPEATS})")
    parser.add_argument("--min-time", type=_positive(float), default=None, metavar="SECONDS",
                        help=f"keep calling until this much time has passed, at most "
                             f"{MAX_CALLS} calls (default: {DEFAULT_MIN_TIME}; --quick: "
                             f"{QUICK_MIN_TIME})")
    parser.add_argument("--peak-gflops", type=_positive(float), default=None, metavar="GFLOPS",
                        help="float32 peak for the %%peak column (float64: half of it) instead "
                             "of the measured FMA peak")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small subset in a few seconds: layers {', '.join(QUICK_LAYERS)}, "
                             f"batch 1, pooling/ReLU on (1, {_suite.QUICK_FEATURE_MAP[0]}, "
                             f"{_suite.QUICK_FEATURE_MAP[1]}, {_suite.QUICK_FEATURE_MAP[1]}), "
                             f"short timings, small ceiling measurements")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write every row with raw timings, machine, versions and "
                             "environment to PATH")
    parser.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not time the NumPy reference (results are still checked "
                             f"against it, on the first {VERIFY_BATCH} images)")
    parser.add_argument("--malloc-condition", choices=MALLOC_CHOICES, default="default",
                        help="'default': this process as it is; 'tunables': re-run in a "
                             f"subprocess with GLIBC_TUNABLES={GLIBC_TUNABLES_VALUE}; 'both': "
                             "run both and print them side by side (default: %(default)s)")
    # Set by the parent of a --malloc-condition subprocess: no ceilings, no tables.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Plan:
    """The resolved options of one run (``--quick`` and defaults filled in)."""

    sections: Tuple[str, ...]
    layers: Tuple[str, ...]
    fused_layers: Tuple[str, ...]
    backward_layers: Tuple[str, ...]
    pool_ops: Tuple[str, ...]
    layouts: Tuple[str, ...]
    dtypes: Tuple[str, ...]
    batches: Tuple[int, ...]
    algorithms: Tuple[str, ...]
    threads: int
    repeats: int
    min_time: float
    feature_map: Tuple[int, int]
    ceiling_sizes: Tuple[int, int, int]
    torch: bool
    reference: bool
    quick: bool
    peak_gflops: Optional[float]


def make_plan(args: argparse.Namespace, default_threads: Optional[int] = None) -> Plan:
    """Resolve the parsed options into a :class:`Plan`.

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> plan = make_plan(p.parse_args(["--quick", "--batch", "2"]), default_threads=2)
    >>> plan.layers, plan.batches, plan.threads
    (('lenet_conv2', 'resnet_3x3', 'dw_3x3'), (2,), 2)
    """
    quick = bool(args.quick)
    if args.layers is not None:
        layers = fused = backward = tuple(args.layers)
    elif quick:
        layers, fused, backward = QUICK_LAYERS, QUICK_FUSED, QUICK_BACKWARD
    else:
        layers = tuple(_suite.LAYERS_BY_NAME)
        fused, backward = _suite.FUSED_LAYERS, _suite.BACKWARD_LAYERS
    if default_threads is None:
        from . import _threads

        default_threads = _threads.get_num_threads()

    def pick(value, normal, fast):
        return value if value is not None else (fast if quick else normal)

    return Plan(
        sections=tuple(args.ops) if args.ops is not None else SECTIONS,
        layers=layers, fused_layers=fused, backward_layers=backward,
        pool_ops=QUICK_POOL_OPS if quick else tuple(_suite.POOL_OPS_BY_NAME),
        layouts=tuple(args.layout) if args.layout is not None else LAYOUTS,
        dtypes=tuple(args.dtype) if args.dtype is not None else ("float32",),
        batches=tuple(pick(args.batch, DEFAULT_BATCHES, (1,))),
        algorithms=tuple(args.algorithms) if args.algorithms is not None else ("auto",),
        threads=args.threads if args.threads is not None else default_threads,
        repeats=pick(args.repeats, DEFAULT_REPEATS, QUICK_REPEATS),
        min_time=pick(args.min_time, DEFAULT_MIN_TIME, QUICK_MIN_TIME),
        feature_map=_suite.QUICK_FEATURE_MAP if quick else _suite.FEATURE_MAP,
        ceiling_sizes=QUICK_CEILING_SIZES if quick else CEILING_SIZES,
        torch=not args.no_torch, reference=not args.no_reference, quick=quick,
        peak_gflops=args.peak_gflops,
    )


# --------------------------------------------------------------------------------------------
# arithmetic and formatting (pure functions)


def gflops(flops: Optional[float], seconds: Optional[float]) -> Optional[float]:
    """``flops / seconds / 1e9``, or None when either is missing or zero.

    >>> gflops(2 * 64 * 56 * 56 * 64 * 9, 0.001)
    231.211008
    """
    if not flops or not seconds:
        return None
    return flops / seconds / 1e9


def gbps(nbytes: Optional[float], seconds: Optional[float]) -> Optional[float]:
    """``nbytes / seconds / 1e9`` (decimal GB/s), or None when either is missing or zero."""
    return gflops(nbytes, seconds)


def fmt_ms(seconds: Optional[float]) -> str:
    """A time in milliseconds with 3 significant digits (whole ms from 100 ms on); ``-`` if None.

    >>> fmt_ms(0.000123456), fmt_ms(0.0123456), fmt_ms(1.23456), fmt_ms(None)
    ('0.123', '12.3', '1235', '-')
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_rate(value: Optional[float]) -> str:
    """A throughput with 3 significant digits (whole numbers from 100 on); ``-`` if None.

    >>> fmt_rate(231.2), fmt_rate(12.345), fmt_rate(0.5), fmt_rate(None)
    ('231', '12.3', '0.5', '-')
    """
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def fmt_ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    """``numerator / denominator`` as ``"1.23x"`` (2 decimals below 10, 1 below 100, else 0).

    >>> fmt_ratio(3.0, 2.0), fmt_ratio(45.0, 1.0), fmt_ratio(152.4, 1.0), fmt_ratio(None, 1.0)
    ('1.50x', '45.0x', '152x', '-')
    """
    if not numerator or not denominator:
        return "-"
    ratio = numerator / denominator
    if ratio < 10:
        return f"{ratio:.2f}x"
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def fmt_percent(value: Optional[float], ceiling: Optional[float]) -> str:
    """``value`` as a percentage of ``ceiling``, e.g. ``"42%"``; ``-`` if either is missing."""
    if not value or not ceiling:
        return "-"
    return f"{100.0 * value / ceiling:.0f}%"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 aligns: Optional[str] = None) -> List[str]:
    """Lines of a plain-text table: header, dashes, rows; columns aligned per ``aligns``.

    ``aligns`` has one character per column, ``<`` or ``>`` (default: first left, rest right).

    >>> print("\\n".join(format_table(["layer", "ms"], [["vgg_3x3", "1.23"], ["dw", "10.5"]])))
    layer      ms
    -------  ----
    vgg_3x3  1.23
    dw       10.5
    """
    aligns = aligns or "<" + ">" * (len(header) - 1)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in [list(header), ["-" * w for w in widths]] + [list(r) for r in rows]:
        cells = [f"{str(c):{a}{w}}" for c, a, w in zip(row, aligns, widths)]
        lines.append("  ".join(cells).rstrip())
    return lines


def fmt_duration(seconds: float) -> str:
    """``"2 min 05 s"`` or ``"7.3 s"``.

    >>> fmt_duration(125.2), fmt_duration(7.26)
    ('2 min 05 s', '7.3 s')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def tolerance(dtype, reduction: int) -> float:
    """Relative tolerance for two summation orders of ``reduction`` terms in ``dtype``.

    ``TOL_FACTOR * eps * sqrt(reduction)``: about 9e-5 for a float32 3x3 conv over 64 channels.

    >>> round(tolerance("float32", 576), 7)
    9.16e-05
    """
    return TOL_FACTOR * float(np.finfo(np.dtype(dtype)).eps) * math.sqrt(max(1, int(reduction)))


@dataclass
class Check:
    """The outcome of :func:`compare`: ``err`` and ``tol`` relative to ``max(1, max|want|)``."""

    ok: bool
    err: float
    tol: float
    note: str = ""


def compare(got: Any, want: Any, reductions: Sequence[int]) -> Check:
    """Check ``got`` against the reference ``want`` (an array, or a tuple of arrays).

    Shapes, dtypes and NaN positions must match, and
    ``|got - want| <= tol * (max(1, max|want|) + |want|)`` with ``tol`` from :func:`tolerance`
    for each output's reduction length. Returns the worst output's error.

    >>> a = np.ones(3, dtype=np.float32)
    >>> compare(a, a, [1]).ok, compare(a + 1e-3, a, [1]).ok
    (True, False)
    """
    gots = got if isinstance(got, tuple) else (got,)
    wants = want if isinstance(want, tuple) else (want,)
    if len(gots) != len(wants):
        return Check(False, math.nan, math.nan, f"{len(gots)} outputs, expected {len(wants)}")
    worst = Check(True, 0.0, math.inf)
    for i, (g, w) in enumerate(zip(gots, wants)):
        where = f"output {i}: " if len(wants) > 1 else ""
        w = np.asarray(w)
        tol = tolerance(w.dtype, reductions[min(i, len(reductions) - 1)])
        if not isinstance(g, np.ndarray):
            return Check(False, math.nan, tol, f"{where}got {type(g).__name__}, not an ndarray")
        if g.shape != w.shape or g.dtype != w.dtype:
            return Check(False, math.nan, tol, f"{where}got {g.dtype}{list(g.shape)}, expected "
                                               f"{w.dtype}{list(w.shape)}")
        if not np.array_equal(np.isnan(g), np.isnan(w)):
            return Check(False, math.nan, tol, f"{where}NaN positions differ")
        finite = np.isfinite(w)
        scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
        diff = np.abs(g.astype(np.float64) - w)
        diff[~finite] = 0.0
        bound = tol * (scale + np.abs(np.where(finite, w, 0.0)))
        ok = bool(np.all(diff <= bound)) and np.array_equal(g[~finite & ~np.isnan(w)],
                                                            w[~finite & ~np.isnan(w)])
        err = float(np.max(diff, initial=0.0)) / scale
        if not ok:
            return Check(False, err, tol,
                         f"{where}max error {err:.2e} of max|ref| > tol {tol:.1e}")
        if worst.tol == math.inf or err / tol > worst.err / worst.tol:
            worst = Check(True, err, tol)
    return worst


# --------------------------------------------------------------------------------------------
# timing and the machine's ceilings


def time_calls(fn: Callable[[], Any], min_calls: int, min_time: float,
               max_calls: int = MAX_CALLS, max_time: Optional[float] = None,
               cap_after: int = MIN_CALLS) -> List[float]:
    """Wall times of calls of ``fn``: at least ``min_calls``, and until ``min_time`` seconds have
    passed, at most ``max_calls`` (``min_calls`` wins over ``max_calls``). With ``max_time``,
    stop as soon as ``cap_after`` calls have taken that long in all.

    >>> len(time_calls(lambda: None, 4, 0.0)), len(time_calls(lambda: None, 1, 1.0, 7))
    (4, 7)
    >>> len(time_calls(lambda: time.sleep(0.01), 50, 0.0, max_time=0.01)) == MIN_CALLS
    True
    """
    times: List[float] = []
    total = 0.0
    while len(times) < min_calls or (total < min_time and len(times) < max_calls):
        if max_time is not None and len(times) >= cap_after and total >= max_time:
            break
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return times


def _median_time(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up
    return statistics.median(time_calls(fn, runs, 0.0))


def measure_copy_bandwidth(mib: int = 256, runs: int = 5) -> Dict[str, Any]:
    """GB/s of ``np.copyto`` between two ``mib`` MiB float32 arrays, read + write bytes."""
    n = mib * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)  # both touched: no page faults in the timed copies
    seconds = _median_time(lambda: np.copyto(dst, src), runs)
    return {"gbps": gbps(2 * src.nbytes, seconds), "bytes": 2 * src.nbytes, "median_s": seconds,
            "what": f"np.copyto of a {mib} MiB float32 array, read + write bytes, 1 thread"}


def measure_gemm(dtype: str = "float32", n: int = 2048, runs: int = 5) -> Dict[str, Any]:
    """GFLOP/s of NumPy's ``a @ b`` on ``n x n`` matrices of ``dtype`` (``2 n^3`` FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    seconds = _median_time(lambda: a @ b, runs)
    name = "sgemm" if np.dtype(dtype) == np.float32 else "dgemm"
    return {"gflops": gflops(2.0 * n ** 3, seconds), "n": n, "median_s": seconds,
            "what": f"NumPy {name}: {dtype} {n}x{n} @ {n}x{n}, NumPy's BLAS threads"}


def measure_fma_peak(dtype: str = "float32", threads: int = 1, runs: int = 5,
                     seconds: float = FMA_RUN_SECONDS) -> Dict[str, Any]:
    """GFLOP/s of the multiply-add loop in fastconv's dispatched kernels (``_peak.h``: the
    level's vector width, 12 independent accumulators) on ``threads`` threads: the most a
    kernel of that build can compute. Iterations are scaled so that a run takes about
    ``seconds``; the fastest of ``runs`` runs (a peak: on a shared machine other work only
    slows a run down, and the loop touches no memory that could make one faster)."""
    from . import _isa

    if not seconds > 0:
        raise ValueError(f"measure_fma_peak: seconds must be > 0, got {seconds}")
    blocked = _isa.kernel_module("_blocked")
    float64 = np.dtype(dtype) == np.float64
    iters = 1000
    while True:   # calibrate: a run long enough to time, then scale to `seconds`
        start = time.perf_counter()
        blocked.peak_loop(iters, threads, float64)
        took = time.perf_counter() - start
        if took >= seconds / 8:
            break
        iters *= 8
    iters = max(1, int(iters * seconds / took))
    flops, _ = blocked.peak_loop(iters, threads, float64)   # also the warm-up
    elapsed = min(time_calls(lambda: blocked.peak_loop(iters, threads, float64), runs, 0.0))
    return {"gflops": gflops(flops, elapsed), "threads": threads, "level": _isa.LEVEL,
            "fastest_s": elapsed,
            "what": f"multiply-add loop of the {_isa.LEVEL} kernels ({dtype}), {threads} "
                    f"thread{'s' if threads != 1 else ''}"}


def measure_ceilings(plan: Plan) -> Dict[str, Any]:
    """Copy bandwidth, NumPy GEMM and the FMA peak per dtype, and the peak each dtype's
    "% peak" uses."""
    mib, n, runs = plan.ceiling_sizes
    ceilings: Dict[str, Any] = {"copy": measure_copy_bandwidth(mib, runs), "gemm": {},
                                "fma": {}, "peak_gflops": {}, "peak_source": {}}
    fma_seconds = QUICK_FMA_RUN_SECONDS if plan.quick else FMA_RUN_SECONDS
    for dtype in plan.dtypes:
        ceilings["gemm"][dtype] = measure_gemm(dtype, n, runs)
        ceilings["fma"][dtype] = measure_fma_peak(dtype, plan.threads, runs, fma_seconds)
    for dtype in plan.dtypes:
        if plan.peak_gflops is not None:
            scale = 1.0 if dtype == "float32" else 0.5
            ceilings["peak_gflops"][dtype] = plan.peak_gflops * scale
            ceilings["peak_source"][dtype] = ("--peak-gflops" if scale == 1.0
                                              else "--peak-gflops / 2")
            continue
        fma = ceilings["fma"][dtype]
        ceilings["peak_gflops"][dtype] = fma["gflops"]
        ceilings["peak_source"][dtype] = f"FMA peak (measured: {fma['what']})"
    return ceilings


# --------------------------------------------------------------------------------------------
# results


@dataclass
class Measurement:
    """One implementation on one case: status, raw times (s), check result."""

    impl: str
    status: str = "ok"            # ok | FAIL | skipped | n/a
    times: List[float] = field(default_factory=list)
    note: str = ""
    max_err: Optional[float] = None
    tol: Optional[float] = None
    algorithm: Optional[str] = None  # what algorithm="auto" picked

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None


@dataclass
class CaseResult:
    """Every implementation of one case (section, op, shape, layout, dtype, batch, condition)."""

    section: str
    name: str
    desc: str
    layout: str
    dtype: str
    batch: int
    condition: str
    flops: Optional[int] = None
    nbytes: Optional[int] = None
    measurements: List[Measurement] = field(default_factory=list)
    seconds: float = 0.0

    def key(self) -> tuple:
        """Identifies the case across malloc conditions."""
        return (self.section, self.name, self.layout, self.dtype, self.batch)

    def get(self, impl: str) -> Optional[Measurement]:
        return next((m for m in self.measurements if m.impl == impl), None)

    def fast(self) -> List[Measurement]:
        return [m for m in self.measurements if m.impl.startswith("fastconv")]


def case_rows(case: CaseResult) -> List[Dict[str, Any]]:
    """The JSON rows of one case: one per implementation, with raw times and throughput."""
    rows = []
    for m in case.measurements:
        median = m.median
        rows.append({
            "section": case.section, "name": case.name, "desc": case.desc,
            "layout": case.layout, "dtype": case.dtype, "batch": case.batch,
            "condition": case.condition, "impl": m.impl, "algorithm": m.algorithm,
            "status": m.status, "note": m.note, "verified": m.status == "ok" and m.tol is not None,
            "max_err": _finite(m.max_err), "tol": _finite(m.tol), "times_s": list(m.times),
            "median_s": median,
            "flops": case.flops, "bytes": case.nbytes,
            "gflops": gflops(case.flops, median), "gbps": gbps(case.nbytes, median),
            "case_seconds": case.seconds,
        })
    return rows


def _finite(value: Optional[float]) -> Optional[float]:
    """``value``, or None when it is None, NaN or infinite (JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


def cases_from_rows(rows: Sequence[Dict[str, Any]]) -> List[CaseResult]:
    """Rebuild :class:`CaseResult` objects from :func:`case_rows` output (a child's JSON)."""
    cases: Dict[tuple, CaseResult] = {}
    for r in rows:
        key = (r["section"], r["name"], r["layout"], r["dtype"], r["batch"], r["condition"])
        if key not in cases:
            cases[key] = CaseResult(r["section"], r["name"], r["desc"], r["layout"], r["dtype"],
                                    r["batch"], r["condition"], r["flops"], r["bytes"],
                                    seconds=r.get("case_seconds") or 0.0)
        cases[key].measurements.append(Measurement(
            r["impl"], r["status"], list(r["times_s"]), r["note"], r["max_err"], r["tol"],
            r["algorithm"]))
    return list(cases.values())


def is_failure(m: Measurement) -> bool:
    return m.status == "FAIL"


# --------------------------------------------------------------------------------------------
# cases: what to call


@dataclass
class Impl:
    """A timed implementation: ``fn``, or None when torch is unavailable (``missing`` says
    why; the row is "n/a")."""

    name: str
    fn: Optional[Callable[[], Any]]
    expect: str = "ref"           # which reference result it must match
    missing: str = ""
    algorithm: Optional[str] = None
    uses_blas: bool = False       # runs GEMMs on NumPy's BLAS (see BLAS_WARMUP_SECONDS)


@dataclass
class Calls:
    """The calls of one case at one batch size: references by key and implementations."""

    refs: Dict[str, Callable[[], Any]]
    impls: List[Impl]
    reductions: Dict[str, Tuple[int, ...]]
    time_reference: bool = True   # time refs["ref"] as the "reference" implementation
    refs_use_blas: bool = False   # the references run GEMMs on NumPy's BLAS


@dataclass
class CaseSpec:
    """One case before it runs: metadata and ``build(batch) -> Calls``."""

    section: str
    name: str
    desc: str
    layout: str
    dtype: str
    batch: int
    flops: Optional[int]
    nbytes: Optional[int]
    build: Callable[[int], Calls]

    def label(self) -> str:
        return f"{self.section} {self.name} {self.layout} {self.dtype} N={self.batch}"


class TorchInfo:
    """torch (or None) and why not; its intra-op threads set for the run."""

    def __init__(self, enabled: bool):
        self.torch = None
        self.version: Optional[str] = None
        self.reason = ""
        self._threads_before: Optional[int] = None
        if not enabled:
            self.reason = "--no-torch"
            return
        try:
            import torch
        except ImportError as exc:
            self.reason = f"torch is not installed ({exc})"
            return
        self.torch = torch
        self.version = torch.__version__

    def set_threads(self, n: int) -> None:
        if self.torch is not None:
            self._threads_before = self.torch.get_num_threads()
            self.torch.set_num_threads(n)

    def restore(self) -> None:
        if self.torch is not None and self._threads_before is not None:
            self.torch.set_num_threads(self._threads_before)


def _torch_impl(torch_info: TorchInfo, make: Callable[[Any], Callable[[], Any]],
                expect: str = "ref", name: str = "torch") -> Impl:
    if torch_info.torch is None:
        return Impl(name, None, expect, f"torch: {torch_info.reason}")
    try:
        return Impl(name, make(torch_info.torch), expect)
    except Exception as exc:  # e.g. an op this torch version lacks
        return Impl(name, None, expect, f"torch: {type(exc).__name__}: {exc}")


def _nchw_tensor(torch, a: np.ndarray, layout: str):
    """An NCHW torch view of ``a`` (NHWC data: channels_last memory format, no copy)."""
    t = torch.from_numpy(a)
    return t if layout == "NCHW" else t.permute(0, 3, 1, 2)


def _torch_weight(torch, w: np.ndarray, layout: str):
    """An OIHW torch weight; from HWIO, a channels_last copy (as a channels_last model has it)."""
    if layout == "NCHW":
        return torch.from_numpy(w)
    return torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)


def _to_layout(t, layout: str) -> np.ndarray:
    """A torch NCHW result as a NumPy array in ``layout`` (a view, no copy)."""
    return t.numpy() if layout == "NCHW" else t.permute(0, 2, 3, 1).numpy()


def _auto_algorithm(x, w, layer: _suite.Layer, layout: str) -> Optional[str]:
    try:
        from . import _validate, conv

        args = _validate.conv_args(x, w, None, layer.stride, layer.pad, layer.dilation,
                                   layer.groups, layout, None)
        return conv.choose_algorithm(args)
    except Exception:  # a private heuristic: report nothing rather than fail
        return None


def _grad(shape, dtype, seed: int = 99) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def conv_case(section: str, layer: _suite.Layer, layout: str, dtype: str, batch: int,
              plan: Plan, torch_info: TorchInfo) -> CaseSpec:
    """A conv2d (``conv``), conv2d + ReLU (``fused``) or conv2d_backward case."""
    from . import reference

    geo = (layer.stride, layer.pad, layer.dilation, layer.groups)
    flops = _suite.conv_flops(layer, batch)
    if section == "conv_backward":
        flops *= 2

    def build(n: int) -> Calls:
        import fastconv

        x, w, b = _suite.conv_inputs(layer, n, layout, dtype)
        red = layer.reduction()
        if section == "conv":
            impls = []
            for algo in plan.algorithms:
                chosen = _auto_algorithm(x, w, layer, layout) if algo == "auto" else algo
                impls.append(Impl(
                    f"fastconv-{algo}",
                    lambda a=algo: fastconv.conv2d(x, w, None, *geo, layout=layout, algorithm=a),
                    algorithm=chosen, uses_blas=chosen != "direct"))

            def torch_conv(torch):
                F = torch.nn.functional
                xt, wt = _nchw_tensor(torch, x, layout), _torch_weight(torch, w, layout)
                return lambda: _to_layout(F.conv2d(xt, wt, None, *geo), layout)

            impls.append(_torch_impl(torch_info, torch_conv))
            return Calls({"ref": lambda: reference.conv2d(x, w, None, *geo, layout=layout)},
                         impls, {"ref": (red,)}, refs_use_blas=True)
        if section == "fused":
            relu = fastconv.relu

            def unfused():
                y = fastconv.conv2d(x, w, b, *geo, layout=layout)
                return relu(y, out=y)

            blas = _auto_algorithm(x, w, layer, layout) != "direct"
            impls = [
                Impl("fastconv-alone", lambda: fastconv.conv2d(x, w, b, *geo, layout=layout),
                     expect="plain", uses_blas=blas),
                Impl("fastconv-fused", lambda: fastconv.conv2d(x, w, b, *geo, layout=layout,
                                                               activation="relu"),
                     uses_blas=blas),
                Impl("fastconv-unfused", unfused, uses_blas=blas),
            ]

            def torch_fused(torch):
                F = torch.nn.functional
                xt, wt = _nchw_tensor(torch, x, layout), _torch_weight(torch, w, layout)
                bt = torch.from_numpy(b)
                return lambda: _to_layout(torch.relu_(F.conv2d(xt, wt, bt, *geo)), layout)

            impls.append(_torch_impl(torch_info, torch_fused))
            return Calls(
                {"ref": lambda: reference.conv2d(x, w, b, *geo, layout=layout, activation="relu"),
                 "plain": lambda: reference.conv2d(x, w, b, *geo, layout=layout)},
                impls, {"ref": (red,), "plain": (red,)}, time_reference=False,
                refs_use_blas=True)
        # conv_backward
        gy = _grad(layer.output_shape(n, layout), dtype)
        oh, ow = layer.out_hw()
        reds = (layer.c_out // layer.groups * layer.kernel ** 2, n * oh * ow, n * oh * ow)
        impls = [Impl(f"fastconv-{algo}",
                      lambda a=algo: fastconv.conv2d_backward(gy, x, w, *geo, layout=layout,
                                                              algorithm=a),
                      algorithm=None if algo == "auto" else algo,
                      uses_blas=algo != "direct")   # "auto" may choose im2col
                 for algo in plan.algorithms]

        def torch_backward(torch):
            xt, gyt = _nchw_tensor(torch, x, layout), _nchw_tensor(torch, gy, layout)
            wt = _torch_weight(torch, w, layout)
            aten = torch.ops.aten.convolution_backward
            s, p, d, g = ([layer.stride] * 2, [layer.pad] * 2, [layer.dilation] * 2,
                          layer.groups)

            def call():
                gx, gw, gb = aten(gyt, xt, wt, [layer.c_out], s, p, d, False, [0, 0], g,
                                  [True, True, True])
                gw = gw.numpy() if layout == "NCHW" else gw.permute(2, 3, 1, 0).numpy()
                return _to_layout(gx, layout), gw, gb.numpy()

            return call

        impls.append(_torch_impl(torch_info, torch_backward))
        return Calls({"ref": lambda: reference.conv2d_backward(gy, x, w, *geo, layout=layout)},
                     impls, {"ref": reds}, refs_use_blas=True)

    return CaseSpec(section, layer.name, layer.describe(), layout, dtype, batch, flops, None,
                    build)


def pool_case(op: _suite.PoolOp, layout: str, dtype: str, batch: int, plan: Plan,
              torch_info: TorchInfo, backward: bool = False) -> CaseSpec:
    """A max/avg pooling forward (``pool``) or backward (``pool_backward``) case."""
    from . import reference

    channels, size = plan.feature_map
    itemsize = np.dtype(dtype).itemsize
    in_elems = batch * channels * size * size
    out_elems = batch * channels * op.out_size(size) ** 2
    nbytes = (in_elems + out_elems) * itemsize
    if backward and op.func == "max_pool2d":
        nbytes += out_elems * 8  # the int64 indices
    red = 1 if op.func == "max_pool2d" else op.kernel ** 2
    if backward:  # overlapping windows add up to ceil(k/s)^2 contributions per cell
        red *= max(1, -(-op.kernel // op.stride)) ** 2
    kargs = (op.kernel, op.stride, op.pad)
    section = "pool_backward" if backward else "pool"
    desc = f"({channels}, {size}, {size})"

    def build(n: int) -> Calls:
        import fastconv

        x = _suite.feature_map(n, layout, dtype, plan.feature_map)
        if not backward:
            fast = getattr(fastconv, op.func)
            impl = Impl("fastconv", lambda: fast(x, *kargs, layout=layout))

            def torch_pool(torch):
                F = torch.nn.functional
                tfunc = F.max_pool2d if op.func == "max_pool2d" else F.avg_pool2d
                xt = _nchw_tensor(torch, x, layout)
                return lambda: _to_layout(tfunc(xt, *kargs), layout)

            ref = getattr(reference, op.func)
            return Calls({"ref": lambda: ref(x, *kargs, layout=layout)},
                         [impl, _torch_impl(torch_info, torch_pool)], {"ref": (red,)})
        name = op.func + "_backward"
        fast = getattr(fastconv, name)
        ref = getattr(reference, name)
        out_shape = ((n, channels, op.out_size(size), op.out_size(size)) if layout == "NCHW"
                     else (n, op.out_size(size), op.out_size(size), channels))
        gy = _grad(out_shape, dtype)
        if op.func == "max_pool2d":
            _, idx = fastconv.max_pool2d(x, *kargs, layout=layout, return_indices=True)
            impl = Impl("fastconv", lambda: fast(gy, x, *kargs, layout=layout, indices=idx))

            def torch_pool(torch):
                F = torch.nn.functional
                xt, gyt = _nchw_tensor(torch, x, layout), _nchw_tensor(torch, gy, layout)
                _, it = F.max_pool2d(xt, *kargs, return_indices=True)
                aten = torch.ops.aten.max_pool2d_with_indices_backward
                k, s, p = [op.kernel] * 2, [op.stride] * 2, [op.pad] * 2
                return lambda: _to_layout(aten(gyt, xt, k, s, p, [1, 1], False, it), layout)

            ref_fn = lambda: ref(gy, x, *kargs, layout=layout)  # noqa: E731
        else:
            impl = Impl("fastconv", lambda: fast(gy, x.shape, *kargs, layout=layout))

            def torch_pool(torch):
                xt, gyt = _nchw_tensor(torch, x, layout), _nchw_tensor(torch, gy, layout)
                aten = torch.ops.aten.avg_pool2d_backward
                k, s, p = [op.kernel] * 2, [op.stride] * 2, [op.pad] * 2
                return lambda: _to_layout(aten(gyt, xt, k, s, p, False, True, None), layout)

            ref_fn = lambda: ref(gy, x.shape, *kargs, layout=layout)  # noqa: E731
        return Calls({"ref": ref_fn}, [impl, _torch_impl(torch_info, torch_pool)],
                     {"ref": (red,)})

    return CaseSpec(section, op.describe(), desc, layout, dtype, batch, None, nbytes, build)


def relu_case(mode: str, dtype: str, batch: int, plan: Plan, torch_info: TorchInfo) -> CaseSpec:
    """ReLU forward (``mode`` "new" or "out") or ``relu_backward`` (``mode`` "backward")."""
    from . import reference

    channels, size = plan.feature_map
    elems = batch * channels * size * size
    itemsize = np.dtype(dtype).itemsize
    section = "relu_backward" if mode == "backward" else "relu"
    nbytes = (3 if mode == "backward" else 2) * elems * itemsize
    name = {"new": "relu (new array)", "out": "relu (out=)", "backward": "relu_backward"}[mode]
    desc = f"({channels}, {size}, {size})"

    def build(n: int) -> Calls:
        import fastconv

        x = _suite.feature_map(n, "NCHW", dtype, plan.feature_map)
        if mode == "backward":
            gy = _grad(x.shape, dtype)
            fast = fastconv.relu_backward
            impl = Impl("fastconv", lambda: fast(gy, x))

            def torch_relu(torch):
                xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
                aten = torch.ops.aten.threshold_backward
                return lambda: aten(gyt, xt, 0).numpy()

            return Calls({"ref": lambda: reference.relu_backward(gy, x)},
                         [impl, _torch_impl(torch_info, torch_relu)], {"ref": (1,)})
        fast = fastconv.relu
        if mode == "new":
            impl = Impl("fastconv", lambda: fast(x))
            ref_fn = lambda: reference.relu(x)  # noqa: E731
        else:
            buf, ref_buf = np.empty_like(x), np.empty_like(x)
            impl = Impl("fastconv", lambda: fast(x, out=buf))
            ref_fn = lambda: reference.relu(x, out=ref_buf)  # noqa: E731

        def torch_relu(torch):
            xt = torch.from_numpy(x)
            if mode == "new":
                return lambda: torch.relu(xt).numpy()
            bt = torch.from_numpy(np.empty_like(x))
            return lambda: torch.clamp_min(xt, 0.0, out=bt).numpy()

        return Calls({"ref": ref_fn}, [impl, _torch_impl(torch_info, torch_relu)],
                     {"ref": (1,)})

    return CaseSpec(section, name, desc, "any", dtype, batch, None, nbytes, build)


def overhead_case(name: str, func: str, layout: str, dtype: str,
                  torch_info: TorchInfo) -> CaseSpec:
    """One call whose arithmetic is negligible: a 3x3 single-channel image reduced to one
    value by a 3x3 window (ReLU: its 9 values). Its time is the per-call cost of argument
    checks, output allocation, dispatch and thread start."""
    from . import reference

    nhwc = layout == "NHWC"
    shape = (1, 3, 3, 1) if nhwc else (1, 1, 3, 3)

    def build(n: int) -> Calls:
        import fastconv

        x = np.arange(-4, 5, dtype=dtype).reshape(shape)
        if func == "conv2d":
            w = np.linspace(-1, 1, 9, dtype=dtype).reshape((3, 3, 1, 1) if nhwc else (1, 1, 3, 3))
            fast_conv = fastconv.conv2d
            impl = Impl("fastconv", lambda: fast_conv(x, w, layout=layout))
            ref_fn = lambda: reference.conv2d(x, w, layout=layout)  # noqa: E731

            def torch_call(torch):
                xt, wt = _nchw_tensor(torch, x, layout), _torch_weight(torch, w, layout)
                conv = torch.nn.functional.conv2d
                return lambda: _to_layout(conv(xt, wt), layout)
        elif func == "relu":
            fast_relu = fastconv.relu
            impl = Impl("fastconv", lambda: fast_relu(x))
            ref_fn = lambda: reference.relu(x)  # noqa: E731

            def torch_call(torch):
                xt = torch.from_numpy(x)
                return lambda: torch.relu(xt).numpy()
        else:
            fast_pool, ref_pool = getattr(fastconv, func), getattr(reference, func)
            impl = Impl("fastconv", lambda: fast_pool(x, 3, layout=layout))
            ref_fn = lambda: ref_pool(x, 3, layout=layout)  # noqa: E731

            def torch_call(torch):
                xt = _nchw_tensor(torch, x, layout)
                pool = getattr(torch.nn.functional, func)
                return lambda: _to_layout(pool(xt, 3), layout)
        return Calls({"ref": ref_fn}, [impl, _torch_impl(torch_info, torch_call)],
                     {"ref": (9,)})

    desc = "(1, 3, 3) -> 1" if func != "relu" else "(1, 3, 3)"
    return CaseSpec("overhead", name, desc, layout, dtype, 1, None, None, build)


def build_cases(plan: Plan, torch_info: TorchInfo) -> List[CaseSpec]:
    """Every case of the plan, in the order they run and print."""
    specs: List[CaseSpec] = []
    grid = [(dtype, batch) for dtype in plan.dtypes for batch in plan.batches]
    for section in plan.sections:
        for dtype, batch in grid:
            if section in ("conv", "fused", "conv_backward"):
                names = {"conv": plan.layers, "fused": plan.fused_layers,
                         "conv_backward": plan.backward_layers}[section]
                for name in names:
                    for layout in plan.layouts:
                        specs.append(conv_case(section, _suite.LAYERS_BY_NAME[name], layout,
                                               dtype, batch, plan, torch_info))
            elif section in ("pool", "pool_backward"):
                for name in plan.pool_ops:
                    for layout in plan.layouts:
                        specs.append(pool_case(_suite.POOL_OPS_BY_NAME[name], layout, dtype,
                                               batch, plan, torch_info,
                                               backward=section == "pool_backward"))
            elif section == "relu":
                for mode in RELU_MODES:
                    specs.append(relu_case(mode, dtype, batch, plan, torch_info))
            elif section == "overhead":
                if batch == plan.batches[0]:   # one image whatever --batch says
                    for name, func, layout in OVERHEAD_CALLS:
                        if layout in plan.layouts or layout == "any":
                            specs.append(overhead_case(name, func, layout, dtype,
                                                       torch_info))
            else:
                specs.append(relu_case("backward", dtype, batch, plan, torch_info))
    return specs


# --------------------------------------------------------------------------------------------
# running


def _error_note(who: str, exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{who} raised {type(exc).__name__}: {text}"[:300]


def settle(max_seconds: float = SETTLE_MAX_SECONDS) -> bool:
    """Wait until the threads of this process use under a fifth of a core (CPU time over
    SETTLE_PROBE_SECONDS of sleep); False if they still did after ``max_seconds`` (a thread
    that never stops, say a library's busy-waiting pool: the block is then timed anyway)."""
    deadline = time.perf_counter() + max_seconds
    while True:
        cpu = time.process_time()
        time.sleep(SETTLE_PROBE_SECONDS)
        if time.process_time() - cpu < 0.2 * SETTLE_PROBE_SECONDS:
            return True
        if time.perf_counter() >= deadline:
            return False


def team_apart(threads: int) -> Optional[bool]:
    """Whether the kernels' OpenMP team of ``threads`` runs on distinct CPUs right now (on
    every usable CPU, when there are more threads than CPUs; see _openmp.team_cpus); None
    when that cannot be told: one thread, a smaller team, or a platform that does not say
    which CPU a thread is on."""
    from . import _threads
    from ._kernels import _openmp

    if threads < 2:
        return None
    cpus = _openmp.team_cpus(threads)
    if len(cpus) < threads or min(cpus) < 0:
        return None
    return len(set(cpus)) >= min(threads, _threads._cores())


def warm_up(fn: Callable[[], Any], call_seconds: float, share: float,
            after_blas: bool = False, threads: int = 1) -> Optional[float]:
    """Untimed calls of ``fn`` for min(WARMUP_SECONDS, share / 2) seconds, before a timed block
    whose share of --min-time is ``share``, or for BLAS_WARMUP_SECONDS ``after_blas`` (see
    WARMUP_SECONDS); none when a call (``call_seconds``: the shortest seen so far) takes that
    long. Then, ``after_blas`` on ``threads`` > 1, more calls until the team runs apart (see
    PLACEMENT_MAX_SECONDS). Returns the seconds spent when the team still shared a CPU at the
    end, else None."""
    start = time.perf_counter()
    seconds = BLAS_WARMUP_SECONDS if after_blas else min(WARMUP_SECONDS, share / 2)
    if call_seconds < seconds:
        end = start + seconds
        while time.perf_counter() < end:
            fn()
    if not after_blas or threads < 2:
        return None
    deadline = time.perf_counter() + PLACEMENT_MAX_SECONDS
    apart_in_a_row = 0
    while True:
        apart = team_apart(threads)
        if apart is None:
            return None
        apart_in_a_row = apart_in_a_row + 1 if apart else 0
        if apart_in_a_row >= PLACEMENT_CHECKS:
            return None
        if time.perf_counter() >= deadline:
            return time.perf_counter() - start
        fn()


def _call_failed(m: Measurement, exc: BaseException) -> None:
    # torch raising (say, an op this torch lacks) is not a fastconv failure.
    m.status = "n/a" if m.impl == "torch" else "FAIL"
    m.note = _error_note(m.impl, exc)


def run_case(spec: CaseSpec, plan: Plan, condition: str) -> CaseResult:
    """Check every implementation of ``spec`` against the reference, then time them in turns
    (see TIMING_ROUNDS)."""
    start = time.perf_counter()
    result = CaseResult(spec.section, spec.name, spec.desc, spec.layout, spec.dtype, spec.batch,
                        condition, spec.flops, spec.nbytes)
    expected: Dict[str, Any] = {}
    try:  # inputs and reference results; a failure here fails the whole case
        calls = spec.build(spec.batch)
        timed_ref = plan.reference and calls.time_reference
        vcalls = calls if timed_ref or spec.batch <= VERIFY_BATCH else spec.build(VERIFY_BATCH)
        if timed_ref:
            t0 = time.perf_counter()
            expected["ref"] = calls.refs["ref"]()
            times = [time.perf_counter() - t0]
            times += time_calls(calls.refs["ref"], 0, plan.min_time - times[0],
                                REF_MAX_CALLS - 1) if times[0] < plan.min_time else []
            result.measurements.append(Measurement("reference", times=times))
        elif calls.time_reference:
            result.measurements.append(Measurement("reference", "skipped",
                                                   note=REFERENCE_NOT_TIMED))
        for key, fn in vcalls.refs.items():
            if key not in expected:
                expected[key] = fn()
    except Exception as exc:
        result.measurements.append(Measurement("fastconv", "FAIL",
                                               note=_error_note("setting up the case", exc)))
        result.seconds = time.perf_counter() - start
        return result

    timed: List[Tuple[Any, Measurement]] = []
    call_seconds: Dict[str, float] = {}   # one call at the timed batch (for warm_up)
    for impl, vimpl in zip(calls.impls, vcalls.impls):
        m = Measurement(impl.name, algorithm=impl.algorithm)
        result.measurements.append(m)
        if impl.fn is None:
            m.status, m.note = "n/a", impl.missing
            continue
        try:
            t0 = time.perf_counter()
            got = vimpl.fn()
            call_seconds[impl.name] = time.perf_counter() - t0
            check = compare(got, expected[impl.expect], vcalls.reductions[impl.expect])
            del got
            if vimpl is not impl:
                t0 = time.perf_counter()
                impl.fn()  # warm-up at the timed batch size
                call_seconds[impl.name] = time.perf_counter() - t0
        except Exception as exc:
            _call_failed(m, exc)
            continue
        m.max_err, m.tol = check.err, check.tol
        if not check.ok:  # torch too: a torch result that disagrees makes its ratio meaningless
            m.status = "FAIL"
            m.note = f"{impl.name} differs from fastconv.reference: {check.note}"
        timed.append((impl, m))
    # The implementations take turns, TIMING_ROUNDS blocks each, so that a slow phase of the
    # shared machine (they last from milliseconds to seconds) falls on all of them alike; each
    # block starts once the threads of the one before are idle (see settle), after a few
    # untimed calls (see WARMUP_SECONDS).
    share = plan.min_time / TIMING_ROUNDS
    # Every implementation's checked call ran above, those that failed it too.
    after_blas = calls.refs_use_blas or any(i.uses_blas for i in calls.impls if i.fn)
    for _ in range(TIMING_ROUNDS):
        for impl, m in list(timed):
            settle()
            try:
                # An implementation that runs GEMMs on NumPy's BLAS itself upsets the
                # placement with every call, and PyTorch runs on its own thread pool:
                # waiting for fastconv's team would only lose time.
                holds = not impl.uses_blas and impl.name != "torch"
                shared = warm_up(impl.fn, min([call_seconds[impl.name]] + m.times), share,
                                 after_blas, plan.threads if holds else 1)
                if shared is not None and not m.note:
                    m.note = TEAM_SHARED_NOTE.format(shared)
                after_blas = impl.uses_blas
                m.times += time_calls(
                    impl.fn, -(-plan.repeats // TIMING_ROUNDS), share,
                    MAX_CALLS // TIMING_ROUNDS,
                    max_time=max(MAX_SECONDS, plan.min_time) / TIMING_ROUNDS, cap_after=1)
            except Exception as exc:
                after_blas = after_blas or impl.uses_blas   # it may have run a GEMM
                _call_failed(m, exc)
                m.times, m.max_err, m.tol = [], None, None
                timed.remove((impl, m))
    result.seconds = time.perf_counter() - start
    return result


class Progress:
    """One stderr line per case (``\\r``-updated in place on a terminal)."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, prefix: str = ""):
        self.total, self.done = total, 0
        self.stream = sys.stderr if stream is None else stream
        self.prefix = prefix
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            if not final:  # a wrapped line could not be overwritten
                text = text[:max(20, shutil.get_terminal_size().columns - 1)]
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, spec: CaseSpec) -> None:
        if self.tty:
            self._write(f"{self.prefix}[{self.done + 1}/{self.total}] {spec.label()} ...", False)

    def finish(self, case: CaseResult) -> None:
        self.done += 1
        parts = []
        for m in case.measurements:
            parts.append(f"{m.impl} {fmt_ms(m.median)} ms" if m.times else f"{m.impl} {m.status}")
        bad = [m for m in case.measurements if is_failure(m)]
        status = "FAIL" if bad else "ok"
        text = (f"{self.prefix}[{self.done}/{self.total}] {case.section} {case.name} "
                f"{case.layout} {case.dtype} N={case.batch}: {', '.join(parts)}; {status} "
                f"({case.seconds:.1f} s)")
        self._write(text, final=not self.tty or self.done == self.total or bool(bad))


def run_suite(plan: Plan, condition: str, torch_info: TorchInfo,
              progress_stream: Optional[TextIO] = None) -> List[CaseResult]:
    """Run every case of ``plan`` in this process, with fastconv's and torch's threads set."""
    from . import _threads

    specs = build_cases(plan, torch_info)
    progress = Progress(len(specs), progress_stream,
                        prefix=f"[{condition}] " if condition != "default" else "")
    before = _threads._setting
    _threads.set_num_threads(plan.threads)
    torch_info.set_threads(plan.threads)
    results = []
    try:
        for spec in specs:
            progress.start(spec)
            case = run_case(spec, plan, condition)
            progress.finish(case)
            results.append(case)
    finally:
        _threads.set_num_threads(before)
        torch_info.restore()
    return results


def current_condition(environ=None) -> str:
    """The malloc condition this process runs in: ``default`` (GLIBC_TUNABLES unset),
    ``tunables`` (set to :data:`GLIBC_TUNABLES_VALUE`) or ``custom`` (set to anything else)."""
    value = (os.environ if environ is None else environ).get("GLIBC_TUNABLES")
    if not value:
        return "default"
    return "tunables" if value == GLIBC_TUNABLES_VALUE else "custom"


def child_argv(args: argparse.Namespace, plan: Plan, condition: str, json_path: str) -> List[str]:
    """The ``python -m fastconv`` arguments re-running ``plan`` in ``condition``.

    Options come from ``args`` as given (so that ``--quick`` presets resolve the same way),
    except the thread count and the reference switch, which come from ``plan``.
    """
    argv = ["bench"]
    if args.quick:
        argv.append("--quick")
    for option, attr in (("--layers", "layers"), ("--ops", "ops"), ("--layout", "layout"),
                         ("--dtype", "dtype"), ("--batch", "batch"),
                         ("--algorithms", "algorithms")):
        value = getattr(args, attr)
        if value is not None:
            argv += [option, ",".join(str(v) for v in value)]
    argv += ["--threads", str(plan.threads)]
    for option, attr in (("--repeats", "repeats"), ("--min-time", "min_time"),
                         ("--peak-gflops", "peak_gflops")):
        value = getattr(args, attr)
        if value is not None:
            argv += [option, str(value)]
    if args.no_torch:
        argv.append("--no-torch")
    if not plan.reference:
        argv.append("--no-reference")
    return argv + ["--malloc-condition", condition, "--json", json_path, "--child"]


def child_environ(condition: str, environ=None) -> Dict[str, str]:
    """A copy of the environment with GLIBC_TUNABLES set (``tunables``) or removed."""
    env = dict(os.environ if environ is None else environ)
    if condition == "tunables":
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES_VALUE
    else:
        env.pop("GLIBC_TUNABLES", None)
    return env


def run_child(args: argparse.Namespace, plan: Plan,
              condition: str) -> Tuple[List[CaseResult], Optional[str]]:
    """Run the suite in a subprocess in ``condition``; (its cases, an error message or None)."""
    import fastconv

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    with tempfile.TemporaryDirectory(prefix="fastconv-bench-") as tmp:
        path = os.path.join(tmp, "child.json")
        cmd = [sys.executable, "-m", "fastconv"] + child_argv(args, plan, condition, path)
        # The same package as this process: -m looks in the working directory first.
        done = subprocess.run(cmd, env=child_environ(condition), cwd=package_parent,
                              stdout=subprocess.PIPE, text=True)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            tail = "\n".join(done.stdout.splitlines()[-20:])
            return [], (f"the {condition} subprocess (exit status {done.returncode}) wrote no "
                        f"results ({exc}); its output ended with:\n{tail}")
    return cases_from_rows(data["rows"]), None


# --------------------------------------------------------------------------------------------
# report


def _impl_label(m: Measurement) -> str:
    label = m.impl[len("fastconv-"):] if m.impl.startswith("fastconv-") else m.impl
    if m.impl == "fastconv-auto" and m.algorithm:
        label += f" ({m.algorithm})"
    return label


def _ceiling(case: CaseResult, ceilings: Dict[str, Any]) -> Optional[float]:
    if case.flops:
        return ceilings.get("peak_gflops", {}).get(case.dtype)
    return ceilings.get("copy", {}).get("gbps")


def _rate(case: CaseResult, m: Optional[Measurement]) -> Optional[float]:
    if m is None or m.median is None:
        return None
    return gflops(case.flops, m.median) if case.flops else gbps(case.nbytes, m.median)


def _check_text(case: CaseResult, m: Measurement) -> str:
    text = m.status
    torch = case.get("torch")
    if torch is not None and torch.status == "FAIL":
        text += ", torch FAIL"
    return text


def section_table(section: str, rows: Sequence[Dict[str, CaseResult]], conditions: Sequence[str],
                  ceilings: Dict[str, Any]) -> List[str]:
    """The lines of one section's table.

    ``rows`` holds, per case, its result in each condition (``{condition: CaseResult}``); each
    fastconv implementation of a case is one table row. With two conditions the per-condition
    columns (time, torch time, torch/fastconv, check) appear once per condition, side by side.
    """
    first = conditions[0]
    flops = any(r[first].flops for r in rows if first in r)
    unit = "GFLOP/s" if flops else "GB/s"
    ceiling = "%peak" if flops else "%copy"
    tag = (lambda t, c: f"{t} [{CONDITION_SHORT.get(c, c)}]") if len(conditions) > 1 else (
        lambda t, c: t)
    header = ["case", "shape", "layout", "dtype", "N", "fastconv"]
    for c in conditions:
        header.append(tag("ms", c))
    header += [unit, ceiling]
    if section == "fused":
        header.append("/alone")
    else:
        header += ["ref ms", "ref/fc"]
    for c in conditions:
        header += [tag("torch ms", c), tag("torch/fc", c)]
    for c in conditions:
        header.append(tag("check", c))
    lines_rows = []
    for by_cond in rows:
        base = by_cond.get(first) or next(iter(by_cond.values()))
        for fm in base.fast():
            row = [base.name, base.desc, base.layout, base.dtype, str(base.batch),
                   _impl_label(fm)]
            for c in conditions:
                case = by_cond.get(c)
                m = case.get(fm.impl) if case else None
                row.append(fmt_ms(m.median) if m and m.times else (m.status if m else "-"))
            row += [fmt_rate(_rate(base, fm)), fmt_percent(_rate(base, fm),
                                                           _ceiling(base, ceilings))]
            if section == "fused":
                alone = base.get("fastconv-alone")
                row.append(fmt_ratio(fm.median, alone.median if alone else None)
                           if fm.impl != "fastconv-alone" else "1.00x")
            else:
                ref = base.get("reference")
                row += [fmt_ms(ref.median) if ref else "-",
                        fmt_ratio(ref.median if ref else None, fm.median)]
            for c in conditions:
                case = by_cond.get(c)
                m = case.get(fm.impl) if case else None
                torch = case.get("torch") if case else None
                row += [fmt_ms(torch.median) if torch and torch.times else
                        (torch.status if torch else "-"),
                        fmt_ratio(torch.median if torch else None, m.median if m else None)]
            for c in conditions:
                case = by_cond.get(c)
                m = case.get(fm.impl) if case else None
                row.append(_check_text(case, m) if m else "-")
            lines_rows.append(row)
    aligns = "<<<<>" + "<" + ">" * (len(header) - 6 - len(conditions)) + "<" * len(conditions)
    return format_table(header, lines_rows, aligns)


def group_rows(cases: Sequence[CaseResult], conditions: Sequence[str]
               ) -> Dict[str, List[Dict[str, CaseResult]]]:
    """``{section: [{condition: case}, ...]}`` in first-seen order, matching cases by key."""
    by_key: Dict[tuple, Dict[str, CaseResult]] = {}
    for case in cases:
        by_key.setdefault(case.key(), {})[case.condition] = case
    sections: Dict[str, List[Dict[str, CaseResult]]] = {}
    for key, by_cond in by_key.items():
        sections.setdefault(key[0], []).append(by_cond)
    return {s: sections[s] for s in SECTIONS if s in sections}


def notes_of(cases: Sequence[CaseResult]) -> List[str]:
    """Distinct notes of skipped and n/a measurements (why a column is empty)."""
    notes = []
    for case in cases:
        for m in case.measurements:
            if m.status in ("skipped", "n/a") and m.note and m.note not in notes:
                notes.append(m.note)
    return notes


def failures_of(cases: Sequence[CaseResult]) -> List[str]:
    """One line per failed check."""
    return [f"{c.condition}: {c.section} {c.name} {c.layout} {c.dtype} N={c.batch} {m.impl}: "
            f"{m.note}" for c in cases for m in c.measurements if is_failure(m)]


def environment() -> Dict[str, Optional[str]]:
    """The environment variables that change results, as set (None: unset)."""
    return {name: os.environ.get(name) for name in ENV_VARS}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_name() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except Exception:  # the layout of show_config's dict is not a stable API
        return "unknown BLAS"


def machine_info(plan: Plan, ceilings: Optional[Dict[str, Any]],
                 load_before: Optional[List[float]] = None) -> Dict[str, Any]:
    """Platform, CPU, cores, threads, load averages (1, 5, 15 min) before and after, ceilings."""
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cores": _cores(),
            "threads": plan.threads, "load_average_before": load_before,
            "load_average_after": _load_average(), "ceilings": ceilings}


def _cores() -> int:
    from . import _threads

    return _threads._cores()


def _load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on this platform
        return None


def versions(torch_info: TorchInfo) -> Dict[str, Any]:
    import fastconv

    cfg = fastconv.config()
    return {"fastconv": fastconv.__version__, "numpy": np.__version__, "blas": _blas_name(),
            "python": platform.python_version(), "openmp": cfg["openmp"],
            "openmp_wait_policy": cfg["openmp_wait_policy"], "cpu_level": cfg["cpu_level"],
            "buffer_pool_max_bytes": cfg["buffer_pool_max_bytes"], "torch": torch_info.version,
            "torch_reason": torch_info.reason or None}


def report_json(plan: Plan, conditions: Sequence[str], cases: Sequence[CaseResult],
                ceilings: Optional[Dict[str, Any]], torch_info: TorchInfo, wall: float,
                failures: int, load_before: Optional[List[float]] = None) -> Dict[str, Any]:
    """The ``--json`` document (schema :data:`JSON_SCHEMA`)."""
    env = environment()
    return {
        "schema": JSON_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m fastconv bench",
        "wall_seconds": wall,
        "failures": failures,
        "conditions": list(conditions),
        "glibc_tunables_value": GLIBC_TUNABLES_VALUE,
        "versions": versions(torch_info),
        "machine": machine_info(plan, ceilings, load_before),
        "env": env,
        "env_flags": {"openblas_coretype_set": env["OPENBLAS_CORETYPE"] is not None,
                      "openblas_l2_size_set": env["OPENBLAS_L2_SIZE"] is not None,
                      "glibc_tunables_set": env["GLIBC_TUNABLES"] is not None},
        "options": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(plan).items()},
        "rows": [row for case in cases for row in case_rows(case)],
    }


def header_lines(plan: Plan, torch_info: TorchInfo, conditions: Sequence[str]) -> List[str]:
    v = versions(torch_info)
    torch_text = f"torch {v['torch']}" if v["torch"] else f"torch n/a ({torch_info.reason})"
    lines = [
        f"fastconv {v['fastconv']} bench | {plan.threads} thread"
        f"{'s' if plan.threads != 1 else ''} (fastconv and torch) | numpy {v['numpy']} "
        f"({v['blas']}; BLAS threads: OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}) | {torch_text}",
        f"cpu: {_cpu_model()}, {_cores()} cores | OpenMP "
        f"{'on' if v['openmp'] else 'off'}, wait policy: {v['openmp_wait_policy']} | kernels: "
        f"{v['cpu_level']} | output buffer pool: {v['buffer_pool_max_bytes'] >> 20} MiB",
        f"malloc condition{'s' if len(conditions) > 1 else ''}: "
        + ", ".join(f"{c} (GLIBC_TUNABLES={GLIBC_TUNABLES_VALUE if c == 'tunables' else 'unset'})"
                    for c in conditions),
    ]
    load, cores = _load_average(), _cores()
    if load and load[0] > 0.5 * cores:
        lines.append(f"NOTE: load average {load[0]:.2f} on {cores} cores before the run: other "
                     f"processes compete for the CPU, timings will be noisy")
    set_vars = [f"{name}={os.environ[name]}" for name in OPENBLAS_VARS if name in os.environ]
    if set_vars:
        lines += [
            f"NOTE: {' '.join(set_vars)} set: on this machine they slow NumPy's BLAS (the "
            f"im2col GEMM and the sgemm ceiling). For representative numbers run:",
            f"  {RECOMMENDED_COMMAND}",
        ]
    return lines


def ceiling_lines(ceilings: Dict[str, Any]) -> List[str]:
    copy = ceilings["copy"]
    lines = ["machine ceilings (measured now):",
             f"  copy bandwidth  {fmt_rate(copy['gbps']):>6} GB/s     {copy['what']}"]
    for dtype, gemm in ceilings["gemm"].items():
        name = "sgemm" if dtype == "float32" else "dgemm"
        lines.append(f"  {name:<14}  {fmt_rate(gemm['gflops']):>6} GFLOP/s  {gemm['what']}")
    for dtype, fma in ceilings.get("fma", {}).items():
        lines.append(f"  FMA {dtype:<10}  {fmt_rate(fma['gflops']):>6} GFLOP/s  {fma['what']}")
    for dtype, peak in ceilings["peak_gflops"].items():
        lines.append(f"  peak {dtype:<9}  {fmt_rate(peak):>6} GFLOP/s  %peak is relative to "
                     f"this: {ceilings['peak_source'][dtype]}")
    return lines


def print_report(cases: Sequence[CaseResult], conditions: Sequence[str],
                 ceilings: Dict[str, Any], say: Callable[[str], None]) -> None:
    """The tables, one per section, each followed by its notes."""
    for section, rows in group_rows(cases, conditions).items():
        say("")
        say(f"== {SECTION_TITLES[section]} ==")
        for line in section_table(section, rows, conditions, ceilings):
            say(line)
        section_cases = [c for r in rows for c in r.values()]
        for note in notes_of(section_cases):
            say(f"  note: {note}")


def run(args: argparse.Namespace, stream: Optional[TextIO] = None,
        progress_stream: Optional[TextIO] = None) -> int:
    """Run the benchmark report; return the exit status (1 if any check failed)."""
    out = sys.stdout if stream is None else stream

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    wall_start = time.perf_counter()
    load_before = _load_average()
    plan = make_plan(args)
    conditions = (list(CONDITIONS) if args.malloc_condition == "both"
                  else [args.malloc_condition])
    torch_info = TorchInfo(plan.torch)
    here = current_condition()
    quiet = args.child
    if not quiet:
        for line in header_lines(plan, torch_info, conditions):
            say(line)
    ceilings = None if quiet else measure_ceilings(plan)
    if ceilings is not None:
        for line in ceiling_lines(ceilings):
            say(line)
    cases: List[CaseResult] = []
    errors: List[str] = []
    for i, condition in enumerate(conditions):
        # The reference does not depend on fastconv's malloc condition: time it in the first.
        cond_plan = plan if i == 0 else dataclasses.replace(plan, reference=False)
        if condition == here:
            cond_cases = run_suite(cond_plan, condition, torch_info, progress_stream)
        else:
            cond_cases, error = run_child(args, cond_plan, condition)
            if error:
                errors.append(error)
        if plan.reference and not cond_plan.reference:  # say why, not "--no-reference"
            for case in cond_cases:
                for m in case.measurements:
                    if m.impl == "reference" and m.status == "skipped":
                        m.note = REFERENCE_TIMED_ONCE.format(conditions[0])
        cases += cond_cases
    failures = failures_of(cases) + errors
    wall = time.perf_counter() - wall_start
    if not quiet:
        print_report(cases, conditions, ceilings, say)
        say("")
        checked = sum(1 for c in cases for m in c.measurements if m.tol is not None)
        say(f"{len(cases)} cases, {checked} results checked against fastconv.reference, "
            f"{len(failures)} failed; wall time {fmt_duration(wall)}")
        if failures:
            say(f"*** {len(failures)} CHECK{'S' if len(failures) > 1 else ''} FAILED ***")
            for line in failures:
                say(f"  FAIL {line}")
    if args.json:
        doc = report_json(plan, conditions, cases, ceilings, torch_info, wall, len(failures),
                          load_before)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False, default=_json_default)
            f.write("\n")
        if not quiet:
            say(f"wrote {args.json}")
    return 1 if failures else 0


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
