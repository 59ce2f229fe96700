"""The ``python -m fastconv demo`` self-check: run every op on built-in data and compare.

Everything here is a function of its arguments: the test data comes from a seeded
:func:`numpy.random.default_rng`, nothing is read from disk, and nothing happens on import.
:func:`run_demo` is the entry point; ``fastconv/__main__.py`` only parses the command line.

What the demo does:

1. Builds a synthetic grey-scale test image (:func:`make_test_image`: a bright square, a disc
   and a diagonal bar on a dark, mildly noisy background) and a small random batch with a
   3x3 filter bank (:func:`make_batch`).
2. Runs edge detection (Sobel x and y on the 2-D image, and a 2-channel Sobel filter bank in
   NCHW and NHWC), ReLU, 2x2 max pooling and 2x2 average pooling, plus a conv layer on the
   batch with each algorithm, and checks every result against :mod:`fastconv.reference`.
3. Prints one table row per op as soon as it is done: median time of a few runs for fastconv
   and for the reference, the speed-up, the largest absolute error and pass/fail.
4. Draws the max-pooled edge map of the test image in ASCII.

The exit status is 1 when any result is wrong (or an op raised), 0 otherwise.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

import numpy as np

# Pass when max|fast - ref| <= RTOL[dtype] * max(1, max|ref|). The convolutions here sum at most
# 27 products, so float32 rounding stays far below 1e-4 of the output scale.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

# Characters for the ASCII edge map, from no edge to the strongest edge.
ASCII_RAMP = " .:-=+*#%@"

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = SOBEL_X.T.copy()

# Column layout of the results table: (title, width, alignment).
COLUMNS = (
    ("op", 19, "<"),
    ("layout", 6, "<"),
    ("shape in -> out", 27, "<"),
    ("fastconv ms", 11, ">"),
    ("ref ms", 9, ">"),
    ("speed-up", 8, ">"),
    ("max abs err", 11, ">"),
    ("status", 6, "<"),
)


@dataclass
class Case:
    """One row of the demo: a fastconv call and its reference twin on the same input."""

    op: str
    layout: str
    x: np.ndarray
    fast: Callable[[], np.ndarray]
    ref: Callable[[], np.ndarray]


@dataclass
class Result:
    """The outcome of :func:`run_case`."""

    case: Case
    out_shape: Optional[Tuple[int, ...]]
    fast_ms: float
    ref_ms: float
    max_err: float
    tol: float
    ok: bool
    note: str = ""


def make_test_image(size: int = 256, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """A deterministic grey-scale test image with sharp edges, values roughly in [0, 1].

    A bright square (top left), a disc (top right) and a diagonal bar (bottom) on a dark
    background, plus Gaussian noise of standard deviation 0.02 from ``default_rng(seed)``.

    Parameters
    ----------
    size : int
        Height and width in pixels (shapes scale with it; at least 32).
    seed : int
        Seed of the noise.
    dtype : dtype
        Result dtype.

    Returns
    -------
    ndarray of shape (size, size)
    """
    if size < 32:
        raise ValueError(f"`size` must be at least 32, got {size}")
    s = size / 256.0
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), 0.1)
    square = (rows >= 28 * s) & (rows < 108 * s) & (cols >= 24 * s) & (cols < 104 * s)
    image[square] = 0.9
    disc = (rows - 72 * s) ** 2 + (cols - 182 * s) ** 2 <= (44 * s) ** 2
    image[disc] = 0.7
    # A bar of half-width 7 px along the line from (140, 16) to (236, 240), slope 96/224.
    slope = 96.0 / 224.0
    distance = np.abs((rows - 140 * s) - slope * (cols - 16 * s)) / np.hypot(1.0, slope)
    bar = (distance <= 7 * s) & (cols >= 16 * s) & (cols <= 240 * s)
    image[bar] = 0.55
    image += np.random.default_rng(seed).normal(0.0, 0.02, size=image.shape)
    return image.astype(dtype)


def make_batch(seed: int = 0, dtype=np.float32, shape=(8, 3, 64, 64), filters=16):
    """A random NCHW batch, a 3x3 filter bank (OIHW) and a bias, from ``default_rng(seed + 1)``.

    Returns
    -------
    x : ndarray of shape ``shape``
    weight : ndarray of shape (filters, C, 3, 3), scaled by ``1/sqrt(C*9)``
    bias : ndarray of shape (filters,)
    """
    rng = np.random.default_rng(seed + 1)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    weight = (rng.standard_normal((filters, c, 3, 3)) / np.sqrt(c * 9)).astype(dtype)
    bias = (0.1 * rng.standard_normal(filters)).astype(dtype)
    return x, weight, bias


def sobel_bank(dtype=np.float32, layout: str = "NCHW") -> np.ndarray:
    """The Sobel x and y kernels as a 2-output, 1-input filter bank.

    ``layout="NCHW"`` gives OIHW (2, 1, 3, 3); ``"NHWC"`` gives HWIO (3, 3, 1, 2).
    """
    bank = np.stack([SOBEL_X, SOBEL_Y])[:, np.newaxis].astype(dtype)  # (2, 1, 3, 3)
    return bank if layout == "NCHW" else np.ascontiguousarray(bank.transpose(2, 3, 1, 0))


def to_nhwc(a: np.ndarray) -> np.ndarray:
    """A C-contiguous NHWC copy of an NCHW array."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def median_ms(func: Callable[[], object], repeats: int, min_time: float = 0.05,
              max_calls: int = 200) -> float:
    """Median wall time of calls of ``func``, in milliseconds.

    Calls at least ``repeats`` times and, for quick functions, keeps going until ``min_time``
    seconds have passed (at most ``max_calls`` calls), so that a stall of the first calls (for
    example OpenMP threads waking up, or competing with BLAS threads that are still spinning
    after a NumPy matmul) does not decide the median.
    """
    times: List[float] = []
    total = 0.0
    while len(times) < max(1, repeats) or (total < min_time and len(times) < max_calls):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return 1e3 * statistics.median(times)


def compare(got: np.ndarray, want: np.ndarray) -> Tuple[bool, float, float, str]:
    """Check ``got`` against the reference ``want``: (ok, max abs error, tolerance, note)."""
    want = np.asarray(want)
    tol = RTOL.get(want.dtype, 1e-4) * max(1.0, float(np.max(np.abs(want), initial=0.0)))
    if not isinstance(got, np.ndarray):
        return False, float("nan"), tol, f"got {type(got).__name__}"
    if got.shape != want.shape:
        return False, float("nan"), tol, f"shape {got.shape} != {want.shape}"
    if got.dtype != want.dtype:
        return False, float("nan"), tol, f"dtype {got.dtype} != {want.dtype}"
    if got.size == 0:
        return True, 0.0, tol, ""
    same_nan = np.array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    err = float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]), initial=0.0))
    ok = same_nan and err <= tol
    return ok, err, tol, "" if same_nan else "NaN mismatch"


def run_case(case: Case, repeats: int) -> Result:
    """Run a case once to check it, then time both sides with :func:`median_ms`.

    Order: reference (check), fastconv (check), reference timed, one fastconv warm-up call,
    fastconv timed.
    """
    nan = float("nan")
    try:
        want = case.ref()
    except Exception as exc:  # report, keep going: the demo is a diagnostic
        return Result(case, None, nan, nan, nan, 0.0, False,
                      f"reference raised {type(exc).__name__}: {exc}")
    try:
        got = case.fast()
    except Exception as exc:
        return Result(case, None, nan, nan, nan, 0.0, False,
                      f"fastconv raised {type(exc).__name__}: {exc}")
    ok, err, tol, note = compare(got, want)
    ref_ms = median_ms(case.ref, repeats)
    # Warm up after the reference: its BLAS threads may still hold the cores for a moment,
    # which would stall the first OpenMP region that follows.
    case.fast()
    fast_ms = median_ms(case.fast, repeats)
    return Result(case, tuple(got.shape), fast_ms, ref_ms, err, tol, ok, note)


def fmt_shape(shape: Sequence[int]) -> str:
    """``(1, 2, 3)`` -> ``"1x2x3"``."""
    return "x".join(str(d) for d in shape)


def format_row(values: Sequence[str]) -> str:
    """One table line, aligned per :data:`COLUMNS`."""
    cells = [f"{v:{align}{width}}" for v, (_, width, align) in zip(values, COLUMNS)]
    return "  ".join(cells).rstrip()


def format_result(r: Result) -> str:
    """The table line of one result."""
    shapes = fmt_shape(r.case.x.shape) + " -> " + (fmt_shape(r.out_shape) if r.out_shape else "?")
    def num(value, spec):
        return "-" if value != value else format(value, spec)  # NaN: not measured

    speed = r.ref_ms / r.fast_ms if r.fast_ms > 0 else float("nan")
    line = format_row([
        r.case.op, r.case.layout, shapes, num(r.fast_ms, ".3f"), num(r.ref_ms, ".3f"),
        num(speed, ".1f") + ("x" if speed == speed else ""), num(r.max_err, ".2e"),
        "ok" if r.ok else "FAIL",
    ])
    return line + (f"  ({r.note})" if r.note else "")


def build_cases(image: np.ndarray, batch, num_threads: Optional[int], state: dict) -> List[Case]:
    """The demo's cases, in the order they run.

    Some cases feed later ones (the edge maps are pooled); ``state`` carries those intermediate
    results between cases, computed by fastconv so that a wrong kernel shows up downstream too.
    """
    import fastconv
    from fastconv import reference as ref

    dtype = image.dtype
    nt = {"num_threads": num_threads}
    sx, sy = SOBEL_X.astype(dtype), SOBEL_Y.astype(dtype)
    img4 = image[np.newaxis, np.newaxis]              # (1, 1, H, W)
    img4_nhwc = image[np.newaxis, :, :, np.newaxis]   # (1, H, W, 1)
    bank, bank_hwio = sobel_bank(dtype, "NCHW"), sobel_bank(dtype, "NHWC")
    x, w, b = batch
    x_nhwc, w_hwio = to_nhwc(x), np.ascontiguousarray(w.transpose(2, 3, 1, 0))

    def edge_magnitude():
        gx = fastconv.conv2d(image, sx, padding=1, **nt)
        gy = fastconv.conv2d(image, sy, padding=1, **nt)
        state["magnitude"] = np.hypot(gx, gy).astype(dtype)
        return state["magnitude"]

    edge_magnitude()  # the pooling rows below start from the fastconv edge map
    state["edges"] = fastconv.conv2d(img4, bank, padding=1, **nt)
    state["features"] = fastconv.conv2d(x, w, b, padding=1, **nt)
    state["features_nhwc"] = to_nhwc(state["features"])

    def conv_case(op, layout, xin, wgt, bias=None, **kw):
        return Case(op, layout, xin,
                    lambda: fastconv.conv2d(xin, wgt, bias, padding=1, layout=layout, **kw, **nt),
                    lambda: ref.conv2d(xin, wgt, bias, padding=1, layout=layout, **kw))

    def unary_case(op, layout, xin, fast, slow):
        return Case(op, layout, xin, lambda: fast(xin), lambda: slow(xin))

    mag = state["magnitude"]
    edges, feats, feats_nhwc = state["edges"], state["features"], state["features_nhwc"]
    return [
        Case("conv2d sobel-x", "HW", image,
             lambda: fastconv.conv2d(image, sx, padding=1, **nt),
             lambda: ref.conv2d(image, sx, padding=1)),
        Case("conv2d sobel-y", "HW", image,
             lambda: fastconv.conv2d(image, sy, padding=1, **nt),
             lambda: ref.conv2d(image, sy, padding=1)),
        conv_case("conv2d sobel bank", "NCHW", img4, bank),
        Case("conv2d sobel bank", "NHWC", img4_nhwc,
             lambda: fastconv.conv2d(img4_nhwc, bank_hwio, padding=1, layout="NHWC", **nt),
             lambda: ref.conv2d(img4_nhwc, bank_hwio, padding=1, layout="NHWC")),
        unary_case("relu edges", "NCHW", edges,
                   lambda a: fastconv.relu(a, **nt), ref.relu),
        unary_case("max_pool2d 2x2", "HW", mag,
                   lambda a: fastconv.max_pool2d(a, 2, **nt),
                   lambda a: ref.max_pool2d(a, 2)),
        unary_case("avg_pool2d 2x2", "HW", mag,
                   lambda a: fastconv.avg_pool2d(a, 2, **nt),
                   lambda a: ref.avg_pool2d(a, 2)),
        conv_case("conv2d 3x3 auto", "NCHW", x, w, b),
        conv_case("conv2d 3x3 direct", "NCHW", x, w, b, algorithm="direct"),
        conv_case("conv2d 3x3 im2col", "NCHW", x, w, b, algorithm="im2col"),
        conv_case("conv2d 3x3 +relu", "NCHW", x, w, b, activation="relu"),
        conv_case("conv2d 3x3 direct", "NHWC", x_nhwc, w_hwio, b, algorithm="direct"),
        conv_case("conv2d 3x3 im2col", "NHWC", x_nhwc, w_hwio, b, algorithm="im2col"),
        unary_case("relu", "NCHW", feats, lambda a: fastconv.relu(a, **nt), ref.relu),
        unary_case("max_pool2d 2x2", "NCHW", feats,
                   lambda a: fastconv.max_pool2d(a, 2, **nt),
                   lambda a: ref.max_pool2d(a, 2)),
        unary_case("max_pool2d 2x2", "NHWC", feats_nhwc,
                   lambda a: fastconv.max_pool2d(a, 2, layout="NHWC", **nt),
                   lambda a: ref.max_pool2d(a, 2, layout="NHWC")),
        unary_case("avg_pool2d 2x2", "NCHW", feats,
                   lambda a: fastconv.avg_pool2d(a, 2, **nt),
                   lambda a: ref.avg_pool2d(a, 2)),
        unary_case("avg_pool2d 2x2", "NHWC", feats_nhwc,
                   lambda a: fastconv.avg_pool2d(a, 2, layout="NHWC", **nt),
                   lambda a: ref.avg_pool2d(a, 2, layout="NHWC")),
    ]


def ascii_art(edge_map: np.ndarray, width: int = 32, height: int = 16) -> str:
    """Render a 2-D non-negative map as ``height`` lines of ``width`` characters.

    Each character shows the maximum of its block (so thin edges survive), scaled to the map's
    99th percentile, on the :data:`ASCII_RAMP` scale.
    """
    h, w = edge_map.shape
    rows = np.linspace(0, h, height + 1).astype(int)
    cols = np.linspace(0, w, width + 1).astype(int)
    blocks = np.array([[edge_map[r0:r1, c0:c1].max() for c0, c1 in zip(cols[:-1], cols[1:])]
                       for r0, r1 in zip(rows[:-1], rows[1:])], dtype=np.float64)
    scale = float(np.percentile(blocks, 99)) or 1.0
    levels = np.clip(blocks / scale, 0.0, 1.0) * (len(ASCII_RAMP) - 1)
    # Truncate rather than round, so that the noise floor stays blank.
    return "\n".join("".join(ASCII_RAMP[int(v)] for v in row) for row in levels)


def header_line(num_threads: Optional[int], dtype) -> str:
    """``fastconv <version> | OpenMP on | 2 threads | float32 | numpy <version>``."""
    import fastconv

    cfg = fastconv.config()
    threads = num_threads if num_threads is not None else cfg["num_threads"]
    if cfg["openmp"]:
        openmp = f"OpenMP on | {threads} thread{'s' if threads != 1 else ''}"
    else:
        openmp = "OpenMP off | 1 thread (serial build)"
    return (f"fastconv {fastconv.__version__} | {openmp} | {np.dtype(dtype).name} | "
            f"numpy {np.__version__}")


def run_demo(num_threads: Optional[int] = None, dtype="float32", seed: int = 0,
             repeats: int = 5, art: bool = True, stream: Optional[TextIO] = None) -> int:
    """Run the demo, print the table (and the edge map), return the exit status.

    Parameters
    ----------
    num_threads : int, optional
        Passed to every fastconv call; ``None`` uses :func:`fastconv.get_num_threads`.
    dtype : {"float32", "float64"}
        dtype of all test data.
    seed : int
        Seed of the random data.
    repeats : int
        Least number of timed calls per op and side (quick ops get more, up to 50 ms' worth);
        the table shows the median.
    art : bool
        Print the ASCII edge map.
    stream : text file, optional
        Where to print; default ``sys.stdout``.

    Returns
    -------
    int
        0 if every fastconv result matches the reference, 1 otherwise.
    """
    out = sys.stdout if stream is None else stream

    def say(text=""):
        print(text, file=out, flush=True)

    dtype = np.dtype(dtype)
    if dtype not in RTOL:
        raise ValueError(f"`dtype` must be float32 or float64, got {dtype}")
    start = time.perf_counter()
    say(header_line(num_threads, dtype))
    image = make_test_image(256, seed, dtype)
    batch = make_batch(seed, dtype)
    state: dict = {}
    try:
        cases = build_cases(image, batch, num_threads, state)
    except Exception as exc:  # the setup calls fastconv too
        say(f"FAIL: could not prepare the demo data: {type(exc).__name__}: {exc}")
        return 1
    say(f"test image {fmt_shape(image.shape)}, batch {fmt_shape(batch[0].shape)} with a "
        f"{fmt_shape(batch[1].shape)} filter bank; times: median of >= {repeats} runs")
    say()
    say(format_row([title for title, _, _ in COLUMNS]))
    say(format_row(["-" * width for _, width, _ in COLUMNS]))
    failures = 0
    for case in cases:
        result = run_case(case, repeats)
        failures += not result.ok
        say(format_result(result))
    say()
    say(f"pass: max abs error <= {RTOL[dtype]:g} * max(1, max|reference|) for {dtype.name}; "
        f"speed-up = reference time / fastconv time")
    if art:
        import fastconv

        pooled = fastconv.max_pool2d(state["magnitude"], 2, num_threads=num_threads)
        say()
        say(f"Sobel edge magnitude of the test image, 2x2 max-pooled to {fmt_shape(pooled.shape)}:")
        say(ascii_art(pooled))
    say()
    elapsed = time.perf_counter() - start
    if failures:
        say(f"FAILED: {failures} of {len(cases)} checks ({elapsed:.1f} s)")
        return 1
    say(f"all {len(cases)} checks passed ({elapsed:.1f} s)")
    return 0
