"""A deterministic toy image-classification dataset: lines, crosses, squares and circles.

:func:`make_shapes` draws ``n`` grey-scale images, one shape each, at a random position, size,
stroke width and brightness, with Gaussian noise, for the ``python -m fastconv train`` job. The
classes are :data:`CLASS_NAMES`; labels are balanced (class counts differ by at most one) and
shuffled. Everything comes from one :func:`numpy.random.default_rng` seeded by the caller, so
the same seed gives bit-identical arrays.

Shapes are rendered anti-aliased from their distance field: a pixel at distance ``d`` from the
shape's centre line has intensity ``clip(stroke / 2 + 0.5 - d, 0, 1)``. Every shape fits inside
the image with a margin of one pixel.

>>> from fastconv._shapes import make_shapes, CLASS_NAMES
>>> images, labels = make_shapes(12, seed=0)
>>> images.shape, images.dtype, labels.dtype
((12, 1, 28, 28), dtype('float32'), dtype('int64'))
>>> sorted(set(labels.tolist())) == list(range(len(CLASS_NAMES)))
True
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

__all__ = ["CLASS_NAMES", "make_shapes"]

CLASS_NAMES = ("horizontal line", "vertical line", "diagonal line", "cross", "square", "circle")

# Largest deviation from the nominal direction of a line or cross, in degrees.
_JITTER_DEG = 10.0


def _segment_distance(px, py, x0, y0, x1, y1):
    """Distance from points (px, py) to the segments (x0, y0)-(x1, y1), broadcasting."""
    dx, dy = x1 - x0, y1 - y0
    t = ((px - x0) * dx + (py - y0) * dy) / np.maximum(dx * dx + dy * dy, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def _line_distance(px, py, cx, cy, half, angle):
    """Distance to the segment of half-length ``half`` through (cx, cy) at ``angle`` radians."""
    ux, uy = half * np.cos(angle), half * np.sin(angle)
    return _segment_distance(px, py, cx - ux, cy - uy, cx + ux, cy + uy)


def _distance(label: int, px, py, cx, cy, half, angle):
    """Distance field of the shapes of class ``label`` (parameters of shape (m, 1, 1))."""
    name = CLASS_NAMES[label]
    if name in ("horizontal line", "vertical line", "diagonal line"):
        return _line_distance(px, py, cx, cy, half, angle)
    if name == "cross":
        return np.minimum(_line_distance(px, py, cx, cy, half, angle),
                          _line_distance(px, py, cx, cy, half, angle + np.pi / 2))
    if name == "square":  # outline: |signed distance to the box|
        qx, qy = np.abs(px - cx) - half, np.abs(py - cy) - half
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        return np.abs(outside + np.minimum(np.maximum(qx, qy), 0.0))
    return np.abs(np.hypot(px - cx, py - cy) - half)  # circle outline


def make_shapes(n: int, seed: Any = 0, size: int = 28,
                noise: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` labelled images of lines, crosses, squares and circles.

    Parameters
    ----------
    n : int
        Number of images, >= 0.
    seed : int, sequence of ints or numpy.random.SeedSequence
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same arrays.
    size : int
        Height and width in pixels, >= 16.
    noise : float
        Standard deviation of the additive Gaussian pixel noise, >= 0.

    Returns
    -------
    images : ndarray of float32, shape (n, 1, size, size)
        Background about 0, strokes of brightness 0.6 to 1, plus noise (not clipped).
    labels : ndarray of int64, shape (n,)
        Index into :data:`CLASS_NAMES`; every class occurs ``n // 6`` or ``n // 6 + 1`` times.

    Raises
    ------
    ValueError
        If ``n``, ``size`` or ``noise`` is out of range.

    Notes
    -----
    Per image: a half-size (half the line length, the square's half-side, the radius) uniform in
    [0.18, 0.42] * size, a stroke width uniform in [1, 2.5] pixels, a centre uniform among the
    positions that keep the shape one pixel inside the image, and a line or cross direction
    within 10 degrees of its nominal one (a diagonal goes either way, a cross is a "+").

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv._shapes import make_shapes
    >>> a, la = make_shapes(60, seed=1)
    >>> b, lb = make_shapes(60, seed=1)
    >>> bool(np.array_equal(a, b) and np.array_equal(la, lb))
    True
    >>> np.bincount(la).tolist()
    [10, 10, 10, 10, 10, 10]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"make_shapes: `n` must be a non-negative int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"make_shapes: `size` must be an int >= 16, got {size!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"make_shapes: `noise` must be a finite float >= 0, got {noise!r}")
    n, size, k = int(n), int(size), len(CLASS_NAMES)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % k)

    half = rng.uniform(0.18, 0.42, n) * size
    stroke = rng.uniform(1.0, 2.5, n)
    brightness = rng.uniform(0.6, 1.0, n)
    jitter = np.deg2rad(rng.uniform(-_JITTER_DEG, _JITTER_DEG, n))
    flip = rng.integers(0, 2, n)  # the direction of a diagonal
    nominal = np.array([0.0, np.pi / 2, np.pi / 4, 0.0, 0.0, 0.0])[labels]
    angle = nominal + jitter + np.where(labels == CLASS_NAMES.index("diagonal line"),
                                        flip * np.pi / 2, 0.0)
    # Extent of the shape from its centre along x and y, so that it stays inside the image.
    rotated = np.isin(labels, [0, 1, 2, 3])
    extent = np.where(rotated, half * np.maximum(np.abs(np.cos(angle)), np.abs(np.sin(angle))),
                      half)
    extent = extent + stroke / 2 + 1.0
    lo, hi = extent - 0.5, size - 0.5 - extent
    cx = lo + rng.uniform(0.0, 1.0, n) * np.maximum(hi - lo, 0.0)
    cy = lo + rng.uniform(0.0, 1.0, n) * np.maximum(hi - lo, 0.0)
    pixel_noise = rng.standard_normal((n, size, size)) * noise

    py, px = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((n, size, size), dtype=np.float64)
    for label in range(k):
        m = labels == label
        col = lambda a: a[m][:, np.newaxis, np.newaxis]  # noqa: E731  (m,) -> (m, 1, 1)
        d = _distance(label, px, py, col(cx), col(cy), col(half), col(angle))
        images[m] = np.clip(col(stroke) / 2 + 0.5 - d, 0.0, 1.0) * col(brightness)
    images += pixel_noise
    return images.astype(np.float32)[:, np.newaxis], labels
