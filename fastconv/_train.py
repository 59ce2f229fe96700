"""``python -m fastconv train``: train a small CNN on generated shapes, in NumPy and fastconv.

The network (:data:`MODEL`) is conv(5x5) - ReLU - maxpool(2) - conv(3x3) - ReLU - maxpool(2) -
dense, trained with softmax cross-entropy by Adam or SGD with momentum and a learning rate
that decays by :data:`LR_DECAY` per epoch, every layer from :mod:`fastconv.nn` (the conv, ReLU
and pooling passes, forward and backward, are fastconv ops; the dense layer and the optimizer
are plain NumPy).
The data is :func:`fastconv._shapes.make_shapes`: 28x28 images of lines, crosses, squares and
circles, a training set and a held-out test set drawn from independent streams of one seed.

:func:`run` is the entry point (``fastconv/__main__.py`` only parses the command line); it
prints a progress bar, a line per epoch, and a final summary with the held-out accuracy, whether
it reached the target (``--target``, default :data:`TARGET_ACCURACY`) and the wall time. The exit
status is 1 when the final held-out accuracy is below the target (so CI, which runs the default
command, fails on a regression), 0 otherwise; ``--target 0`` disables the check. ``--plots DIR``
also saves figures with matplotlib (optional: without it the command says how to get it and
trains anyway).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, TextIO, Tuple

import numpy as np

import fastconv

from . import nn
from ._shapes import CLASS_NAMES, make_shapes

HELP = "train a small CNN on generated shapes with fastconv's forward and backward ops"
DESCRIPTION = (
    "Train conv-ReLU-pool x2 + dense + softmax cross-entropy (Adam or SGD with momentum, in "
    "NumPy) on a deterministic generated dataset of 28x28 images of lines, crosses, squares and "
    "circles, then report the held-out accuracy and the time per epoch. Every convolution, "
    "ReLU and pooling, forward and backward, is a fastconv op. Exit status 1 if the final "
    "held-out accuracy is below --target (default: 95%), 0 otherwise."
)

TARGET_ACCURACY = 0.95
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.02}
LR_DECAY = 0.7  # the learning rate is multiplied by this after every epoch
PLOTS_HINT = ('the figures need matplotlib: pip install "fastconv[plots]" '
              "(or pip install matplotlib)")
BAR_WIDTH = 24


def _positive(kind):
    """argparse type: a positive ``kind`` (int or float)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0 or not np.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value
    return parse


def _fraction(text: str) -> float:
    """argparse type: a float in [0, 1] (the ``--target`` accuracy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options to ``parser``."""
    pos_int, pos_float = _positive(int), _positive(float)
    parser.add_argument("--epochs", type=pos_int, default=5, metavar="E",
                        help="passes over the training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=pos_int, default=32, metavar="B",
                        help="default: %(default)s")
    parser.add_argument("--lr", type=pos_float, default=None,
                        help=f"initial learning rate, multiplied by {LR_DECAY} after each epoch "
                             f"(default: {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} for "
                             "sgd)")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                        help="adam, or sgd with momentum 0.9 (default: %(default)s)")
    parser.add_argument("--train-size", type=pos_int, default=16000, metavar="N",
                        help="training images (default: %(default)s)")
    parser.add_argument("--test-size", type=pos_int, default=2000, metavar="N",
                        help="held-out test images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data, the initial weights and the batch order "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=pos_int, default=None, metavar="N",
                        help="threads for every fastconv call (default: "
                             "fastconv.get_num_threads()); NumPy's BLAS, used by the dense "
                             "layer and the im2col GEMM, keeps its own setting")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="default: %(default)s")
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW",
                        help="activation layout; weights are OIHW or HWIO (default: %(default)s)")
    parser.add_argument("--target", type=_fraction, default=TARGET_ACCURACY, metavar="ACC",
                        help="held-out accuracy (a fraction in [0, 1]) the run must reach, or "
                             "exit status 1; 0 disables the check (default: %(default)s)")
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="save PNG figures (kernels, feature maps, curves) into DIR; "
                             "needs matplotlib")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the final summary")


MODEL = ("conv5x5 1->8, relu, maxpool2, conv3x3 8->16, relu, maxpool2, dense 784->6, "
         "softmax")


def build_model(layout: str = "NCHW", dtype=np.float32, rng=None,
                num_threads=None) -> nn.Sequential:
    """The network of :data:`MODEL` ('same' padding, so 28x28 -> 14x14 -> 7x7 x 16 channels).

    For one ``rng`` state both layouts start from the same function: the conv weights are the
    same numbers (OIHW or HWIO), and the NHWC dense weight has its rows in the (h, w, c) order
    in which :class:`~fastconv.nn.Flatten` lays out NHWC features. Training is then the same
    computation in either layout, up to rounding.
    """
    kw = dict(layout=layout, dtype=dtype, rng=rng, num_threads=num_threads)
    pool = dict(layout=layout, num_threads=num_threads)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2, input_grad=False, **kw),
        nn.ReLU(num_threads=num_threads), nn.MaxPool2d(2, **pool),
        nn.Conv2d(8, 16, 3, padding=1, **kw),
        nn.ReLU(num_threads=num_threads), nn.MaxPool2d(2, **pool),
        nn.Flatten(), nn.Linear(16 * 7 * 7, len(CLASS_NAMES), dtype=dtype, rng=rng),
    )
    if layout == "NHWC":  # dense rows from (c, h, w) to (h, w, c) order
        w = model[-1].params["weight"]
        np.copyto(w, w.reshape(16, 7, 7, -1).transpose(1, 2, 0, 3).reshape(w.shape).copy())
    return model


def load_data(train_size: int, test_size: int, seeds, layout: str, dtype):
    """``[(x_train, y_train), (x_test, y_test)]`` from two seeds of :func:`make_shapes`,
    images in ``layout`` and ``dtype``."""
    sets = []
    for n, seed in zip((train_size, test_size), seeds):
        images, labels = make_shapes(n, seed=seed)
        if layout == "NHWC":
            images = images.transpose(0, 2, 3, 1)
        sets.append((np.ascontiguousarray(images, dtype=dtype), labels))
    return sets


def predict(model: nn.Sequential, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Predicted class of every image, in batches."""
    return np.concatenate([model.forward(images[i:i + batch_size]).argmax(axis=1)
                           for i in range(0, len(images), batch_size)])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * done // max(total, 1)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def _first_layer_kernels(model: nn.Sequential) -> np.ndarray:
    """The first conv layer's kernels as (C_out, KH, KW) (input channel 0), a copy."""
    w = model[0].params["weight"]
    w = w if model[0].layout == "NCHW" else w.transpose(3, 2, 0, 1)
    return np.array(w[:, 0], dtype=np.float64)


def train_epoch(model: nn.Sequential, optimizer, x: np.ndarray, y: np.ndarray, batch_size: int,
                rng: np.random.Generator, progress=None) -> Tuple[float, float]:
    """One pass over ``(x, y)`` in shuffled mini-batches; return (mean loss, accuracy).

    ``progress(batches_done, n_batches, loss, accuracy)`` is called after every batch.
    """
    order = rng.permutation(len(x))
    n_batches = -(-len(x) // batch_size)
    loss_sum, correct = 0.0, 0
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        logits = model.forward(x[idx])
        loss, grad = nn.softmax_cross_entropy(logits, y[idx])
        model.backward(grad)
        optimizer.step()
        loss_sum += loss * len(idx)
        correct += int((logits.argmax(axis=1) == y[idx]).sum())
        if progress is not None:
            seen = min(len(x), (b + 1) * batch_size)
            progress(b + 1, n_batches, loss_sum / seen, correct / seen)
    return loss_sum / len(x), correct / len(x)


def run(args: argparse.Namespace, stream: Optional[TextIO] = None) -> int:
    """Train, evaluate, print the summary (and save figures); return the exit status.

    The status is 1 when the final held-out accuracy is below ``args.target``, else 0.
    """
    t0 = time.perf_counter()
    out = sys.stdout if stream is None else stream
    tty = out.isatty()

    def say(text: str = "", end: str = "\n") -> None:
        print(text, file=out, end=end, flush=True)

    plt = None
    if args.plots is not None:
        plt = _import_pyplot()
        if plt is None:
            say(f"--plots: {PLOTS_HINT}; training without figures.")
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    threads = fastconv.get_num_threads() if args.threads is None else args.threads

    t_data = time.perf_counter()
    train_seed, test_seed, model_seed = np.random.SeedSequence(args.seed).spawn(3)
    (x_train, y_train), (x_test, y_test) = load_data(
        args.train_size, args.test_size, (train_seed, test_seed), args.layout, args.dtype)
    data_s = time.perf_counter() - t_data
    rng = np.random.default_rng(model_seed)  # initial weights, then the batch order
    model = build_model(args.layout, args.dtype, rng, args.threads)
    params = model.parameters()
    optimizer = (nn.Adam(params, lr=lr) if args.optimizer == "adam"
                 else nn.SGD(params, lr=lr, momentum=0.9))
    kernels_before = _first_layer_kernels(model)
    if not args.quiet:
        say(f"fastconv {fastconv.__version__} train: {len(CLASS_NAMES)} classes "
            f"({', '.join(CLASS_NAMES)})")
        say(f"data: {len(x_train)} training + {len(x_test)} held-out images of 28x28, "
            f"generated in {data_s:.1f} s (seed {args.seed})")
        say(f"model: {MODEL}; {sum(p.size for p, _ in params)} parameters; {args.dtype} "
            f"{args.layout}")
        say(f"training: {args.optimizer} lr {lr:g} (x{LR_DECAY} per epoch), batch "
            f"{args.batch_size}, {_count(args.epochs, 'epoch')}, {_count(threads, 'thread')}")

    history: Dict[str, List[float]] = {"loss": [], "train_acc": [], "test_acc": []}
    epoch_times: List[float] = []
    for epoch in range(1, args.epochs + 1):
        head = f"epoch {epoch}/{args.epochs}"
        last_draw = [0.0]

        def progress(done, total, loss, acc):  # redraw at most 10 times a second
            now = time.perf_counter()
            if now - last_draw[0] > 0.1 or done == total:
                last_draw[0] = now
                say(f"\r{head} {_bar(done, total)} loss {loss:.4f} acc {acc:6.2%}", end="")

        optimizer.lr = lr * LR_DECAY ** (epoch - 1)
        start = time.perf_counter()
        loss, train_acc = train_epoch(model, optimizer, x_train, y_train, args.batch_size, rng,
                                      progress if tty and not args.quiet else None)
        epoch_times.append(time.perf_counter() - start)
        test_acc = float((predict(model, x_test) == y_test).mean())
        for key, value in (("loss", loss), ("train_acc", train_acc), ("test_acc", test_acc)):
            history[key].append(value)
        if not args.quiet:
            say(f"{chr(13) if tty else ''}{head} {_bar(1, 1)} loss {loss:.4f} acc "
                f"{train_acc:6.2%} | held-out acc {test_acc:6.2%} | {epoch_times[-1]:.1f} s")

    if plt is not None:
        paths = save_plots(plt, args.plots, model, kernels_before, x_test, y_test, history,
                           args.target)
        if not args.quiet:
            say("figures: " + ", ".join(paths))
    total_s = time.perf_counter() - t0  # wall time: data, training, evaluation and figures
    test_acc = history["test_acc"][-1]
    n_right = int(round(test_acc * len(y_test)))
    if args.target > 0:
        met = test_acc >= args.target
        target = f"target {100 * args.target:g}% {'met' if met else 'NOT met'}"
    else:
        met, target = True, "no target"
    say(f"held-out accuracy {test_acc:.2%} ({n_right}/{len(y_test)}), {target}; "
        f"{np.mean(epoch_times):.1f} s per training epoch, {total_s:.1f} s wall time in all")
    return 0 if met else 1


# --------------------------------------------------------------------------------------------
# figures


def _import_pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, rows: List[Tuple[str, np.ndarray, str]], title: str, path: str) -> str:
    """Save a figure with one row of panels per ``(label, (K, H, W) maps, colormap)`` entry.

    The diverging colormap "RdBu_r" is centred on 0; the others span the row's range.
    """
    cols = max(len(maps) for _, maps, _ in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols + 0.8, 1.2 * len(rows) + 0.5),
                             squeeze=False)
    for r, (label, maps, cmap) in enumerate(rows):
        lo, hi = float(maps.min()), float(maps.max())
        if cmap == "RdBu_r":
            hi = max(abs(lo), abs(hi)) or 1.0
            lo = -hi
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(maps):
                ax.imshow(maps[c], cmap=cmap, vmin=lo, vmax=hi)
            else:
                ax.set_visible(False)
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


def save_plots(plt, directory: str, model: nn.Sequential, kernels_before: np.ndarray,
               x_test: np.ndarray, y_test: np.ndarray, history: Dict[str, List[float]],
               target: float = TARGET_ACCURACY):
    """Save the kernel, feature-map, dataset and curve figures; return their paths.

    ``target`` is drawn as a dashed line on the accuracy curve (0: no line).
    """
    os.makedirs(directory, exist_ok=True)
    layout = model[0].layout
    kernels = [("initial", kernels_before, "RdBu_r"),
               ("trained", _first_layer_kernels(model), "RdBu_r")]
    paths = [_grid(plt, kernels, "first-layer kernels before and after training",
                   os.path.join(directory, "kernels.png"))]

    # Feature maps of one test image, layer by layer: the cross with the most contrast.
    crosses = np.flatnonzero(y_test == CLASS_NAMES.index("cross"))
    i = int(crosses[np.argmax(x_test[crosses].std(axis=(1, 2, 3)))]) if len(crosses) else 0
    image = x_test[i:i + 1]
    maps, h = [], image
    for layer in model.layers[:6]:
        h = layer.forward(h)
        maps.append(_to_nchw(h, layout)[0])
    pred = CLASS_NAMES[int(model.forward(image).argmax())]
    for first, name in ((0, "conv1"), (3, "conv2")):
        rows = [("input", _to_nchw(image, layout)[0], "gray")] if first == 0 else []
        rows += [(step, maps[first + i], "viridis")
                 for i, step in enumerate(("conv", "relu", "maxpool"))]
        title = (f"{name} feature maps of a test image (a {CLASS_NAMES[y_test[i]]}, "
                 f"predicted {pred})")
        paths.append(_grid(plt, rows, title, os.path.join(directory, f"features_{name}.png")))

    examples = [(CLASS_NAMES[k], _to_nchw(x_test[y_test == k][:8], layout)[:, 0], "gray")
                for k in range(len(CLASS_NAMES))]
    paths.append(_grid(plt, examples, "held-out examples per class",
                       os.path.join(directory, "dataset.png")))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax1.plot(epochs, history["loss"], "o-")
    ax1.set(xlabel="epoch", ylabel="training loss", yscale="log", xticks=epochs)
    ax2.plot(epochs, history["train_acc"], "o-", label="training")
    ax2.plot(epochs, history["test_acc"], "s-", label="held-out")
    if target > 0:
        ax2.axhline(target, color="gray", ls="--", lw=1, label="target")
    ax2.set(xlabel="epoch", ylabel="accuracy", xticks=epochs)
    ax2.legend()
    fig.tight_layout()
    path = os.path.join(directory, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return paths + [path]
