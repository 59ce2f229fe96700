"""pytest-benchmark set-up for ``benchmarks/bench_*.py``.

Run from the repository root with ``python -m pytest benchmarks/`` (``python -m`` puts the
in-place build on ``sys.path``). The project's ``testpaths = ["tests"]`` keeps these files out of
a plain ``pytest`` run; when ``benchmarks/`` is given, :func:`pytest_collect_file` below collects
the ``bench_*.py`` files, which the default ``python_files`` pattern would skip.

Options and environment:

* ``--fc-batch 1,32`` (or ``FASTCONV_BENCH_BATCH=1,32``): comma-separated batch sizes of the
  conv2d, pooling and ReLU benchmarks; default ``1``.
* ``--benchmark-max-time`` sets the time spent per case (default 1 s; see :func:`measure`);
  ``--benchmark-json``, ``--benchmark-disable`` (check results only), ``--benchmark-group-by``
  and the other reporting options of pytest-benchmark work as usual. Round-count options
  (``--benchmark-min-rounds``, ``--benchmark-warmup``) do not apply: every case is timed with
  ``benchmark.pedantic``.

Each benchmark stores its work in ``benchmark.extra_info``: ``flops`` (conv2d) or ``bytes``
(input + output, for pooling and ReLU). Throughput is that divided by the median time, for example
GFLOP/s = ``flops / median / 1e9``; :func:`measure` also stores it as ``gflops`` or ``gbps``
after the run, so it appears in ``--benchmark-json`` output, and a summary table of medians per
group is printed at the end of the session.
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import fastconv

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `import layers` from the bench files, in any --import-mode
    sys.path.insert(0, str(HERE))

# Every case is timed with benchmark.pedantic and a round count chosen from a short probe:
# about --benchmark-max-time seconds' worth of calls, at least MIN_ROUNDS (slow calls: the
# reference, large batches) and at most MAX_ROUNDS. pytest-benchmark's own calibration can run a
# 40 us function tens of thousands of times, which on a busy 2-core machine took up to 30 s per
# case; a fixed cap keeps a default run at a few minutes.
PROBE_CALLS = 5
PROBE_SECONDS = 0.2
MIN_ROUNDS = 3
MAX_ROUNDS = 1000

_SUMMARY = pytest.StashKey[list]()


def _parse_batches(text: str):
    try:
        batches = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise pytest.UsageError(f"--fc-batch / FASTCONV_BENCH_BATCH: expected positive ints "
                                f"separated by commas, got {text!r}")
    return batches


def pytest_addoption(parser):
    group = parser.getgroup("fastconv benchmarks")
    group.addoption(
        "--fc-batch", dest="fc_batch", type=_parse_batches,
        default=os.environ.get("FASTCONV_BENCH_BATCH", "1"),
        help="batch sizes of the conv2d/pooling/relu benchmarks, comma-separated, e.g. 1,32 "
             "(default: $FASTCONV_BENCH_BATCH or 1)",
    )


def pytest_configure(config):
    config.stash[_SUMMARY] = []


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` in this directory unless pytest already does (python_files, or the
    file was named on the command line)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if file_path.resolve().parent != HERE or parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pattern)
           for pattern in parent.config.getini("python_files")):
        return None
    ihook = parent.session.gethookproxy(file_path)
    return ihook.pytest_pycollect_makemodule(module_path=file_path, parent=parent)


def pytest_collection_modifyitems(config, items):
    # A bench test that fails its correctness check never reaches the benchmark fixture, which
    # then warns "not used"; with the project's filterwarnings=error that would add an ERROR
    # to the FAILED report of the same test.
    unused = pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all")
    for item in items:
        if Path(str(item.path)).resolve().parent == HERE:
            item.add_marker(unused)


def _blas_name() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except Exception:  # the layout of show_config's dict is not a stable API
        return "unknown BLAS"


def pytest_report_header(config):
    cfg = fastconv.config()
    lines = [
        f"fastconv {cfg['version']} (openmp={cfg['openmp']}, num_threads={cfg['num_threads']}), "
        f"numpy {np.__version__} ({_blas_name()}), batch sizes {config.getoption('fc_batch')}",
    ]
    try:
        import torch
    except ImportError:
        lines.append("torch: not installed (torch benchmarks are skipped)")
    else:
        lines.append(f"torch {torch.__version__}: runs with torch.set_num_threads("
                     f"{fastconv.get_num_threads()}); NHWC uses channels_last")
    env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                   if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOMP_")))
    if env:
        lines.append(f"thread/BLAS environment: {env}")
    lines.append("throughput = extra_info['flops' or 'bytes'] / median")
    return lines


@pytest.fixture(scope="session")
def torch_mod():
    """torch, with its intra-op threads set to fastconv's thread count (skips if not installed)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    before = torch.get_num_threads()
    torch.set_num_threads(fastconv.get_num_threads())
    yield torch
    torch.set_num_threads(before)


@pytest.fixture
def measure(benchmark, request):
    """Time ``fn()`` with the benchmark fixture; record throughput and the session summary.

    ``measure(fn, kind=..., impl=..., flops=..., nbytes=...)`` first calls ``fn`` up to
    :data:`PROBE_CALLS` times (at most about :data:`PROBE_SECONDS`; this is also the warm-up),
    then times it with ``benchmark.pedantic`` for ``--benchmark-max-time / probe median`` rounds,
    clamped to [:data:`MIN_ROUNDS`, :data:`MAX_ROUNDS`]. After the run, ``extra_info`` gets
    ``gflops`` = ``flops / median / 1e9`` or ``gbps`` = ``bytes / median / 1e9``.
    """

    def run(fn, *, kind, impl, flops=None, nbytes=None):
        info = benchmark.extra_info
        info["impl"] = impl
        if flops is not None:
            info["flops"] = int(flops)
        if nbytes is not None:
            info["bytes"] = int(nbytes)
        probe = []
        while len(probe) < PROBE_CALLS and sum(probe) < PROBE_SECONDS:
            start = time.perf_counter()
            fn()
            probe.append(time.perf_counter() - start)
        budget = float(request.config.getoption("benchmark_max_time", 1.0) or 1.0)
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(budget / np.median(probe)))))
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        stats = getattr(benchmark, "stats", None)  # None with --benchmark-disable
        if stats:
            median = stats.stats.median
            if flops is not None:
                info["gflops"] = flops / median / 1e9
            if nbytes is not None:
                info["gbps"] = nbytes / median / 1e9
            request.config.stash[_SUMMARY].append(dict(
                kind=kind, group=benchmark.group, impl=impl, median=median,
                rounds=stats.stats.rounds, flops=flops, nbytes=nbytes))
        return result

    return run


# --------------------------------------------------------------------------------------------
# end-of-session summary: one table per kind, one row per group, one column per implementation

# The implementation whose throughput is shown and that speed-ups are relative to.
_MAIN_IMPL = ("fastconv-auto", "fastconv", "fastconv-new")
_BASELINES = ("reference", "numpy", "torch")


def _fmt_ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = config.stash.get(_SUMMARY, [])
    if not records:
        return
    tr = terminalreporter
    tr.section("fastconv benchmark summary: median ms (throughput and speed-ups of the first "
               "fastconv column marked *)")
    kinds = OrderedDict()
    for rec in records:
        kinds.setdefault(rec["kind"], []).append(rec)
    for kind, recs in kinds.items():
        impls = list(OrderedDict.fromkeys(r["impl"] for r in recs))
        main = next((i for i in _MAIN_IMPL if i in impls), impls[0])
        groups = OrderedDict()
        for r in recs:
            groups.setdefault(r["group"], {})[r["impl"]] = r
        unit = "GFLOP/s" if any(r["flops"] for r in recs) else "GB/s"
        baselines = [b for b in _BASELINES if b in impls]
        head = ["group"] + [i + ("*" if i == main else "") for i in impls] + [unit]
        head += [f"{b}/*" for b in baselines]
        rows = []
        for group, by_impl in groups.items():
            row = [group] + [_fmt_ms(by_impl[i]["median"]) if i in by_impl else "-"
                             for i in impls]
            m = by_impl.get(main)
            if m:
                work = m["flops"] if m["flops"] is not None else m["nbytes"]
                row.append(f"{work / m['median'] / 1e9:.2f}" if work else "-")
            else:
                row.append("-")
            for b in baselines:
                row.append(f"{by_impl[b]['median'] / m['median']:.2f}x"
                           if m and b in by_impl else "-")
            rows.append(row)
        widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
        tr.write_line("")
        tr.write_line(f"[{kind}]")
        for row in [head] + rows:
            cells = [f"{c:<{w}}" if j == 0 else f"{c:>{w}}"
                     for j, (c, w) in enumerate(zip(row, widths))]
            tr.write_line("  ".join(cells))
