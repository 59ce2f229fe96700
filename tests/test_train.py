"""``python -m fastconv train`` and its dataset generator, fastconv._shapes."""

from __future__ import annotations

import doctest
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _shapes, _train
from fastconv.__main__ import build_parser, main

# A tiny budget cannot reach the default 95% target: these runs disable it with --target 0.
TINY = ["train", "--epochs", "1", "--train-size", "256", "--test-size", "128", "--target", "0"]
# 32 training images, one epoch: far below 95% held-out accuracy.
UNDERTRAINED = ["train", "--epochs", "1", "--train-size", "32", "--test-size", "300", "--quiet"]

try:
    import matplotlib  # noqa: F401
    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False
FIGURES = ["kernels.png", "features_conv1.png", "features_conv2.png", "dataset.png",
           "curves.png"]


# --------------------------------------------------------------------------------------------
# the dataset


def test_shapes_are_deterministic_per_seed():
    a, la = _shapes.make_shapes(50, seed=7)
    b, lb = _shapes.make_shapes(50, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    c, lc = _shapes.make_shapes(50, seed=8)
    assert not np.array_equal(a, c)
    assert not np.array_equal(la, lc)
    # Seeds may be SeedSequences (the training job spawns independent train/test streams).
    s1, s2 = np.random.SeedSequence(0).spawn(2)
    assert not np.array_equal(_shapes.make_shapes(20, seed=s1)[0],
                              _shapes.make_shapes(20, seed=s2)[0])


@pytest.mark.parametrize("n", [0, 1, 7, 61])
def test_shapes_dtypes_shapes_and_balance(n):
    images, labels = _shapes.make_shapes(n, seed=0, size=20)
    assert images.shape == (n, 1, 20, 20) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int64
    counts = np.bincount(labels, minlength=len(_shapes.CLASS_NAMES))
    assert len(counts) == len(_shapes.CLASS_NAMES) >= 4
    assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_shapes_without_noise_stay_inside_the_image():
    images, labels = _shapes.make_shapes(600, seed=3, noise=0.0)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert ((images > 0.25).sum(axis=(1, 2, 3)) >= 8).all()  # every image shows its shape
    # One-pixel margin: the shape never touches the border.
    border = np.concatenate([images[:, 0, 0], images[:, 0, -1], images[:, 0, :, 0],
                             images[:, 0, :, -1]], axis=1)
    assert border.max() == 0.0
    # The classes differ: each class's mean image is far from every other's.
    means = np.stack([images[labels == k].mean(axis=0).ravel() for k in range(6)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dist[~np.eye(6, dtype=bool)].min() > 0.5


def test_shapes_noise():
    clean, _ = _shapes.make_shapes(40, seed=1, noise=0.0)
    noisy, _ = _shapes.make_shapes(40, seed=1, noise=0.3)
    assert (noisy - clean).std() == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": -1}, "`n`"), ({"n": 2.5}, "`n`"), ({"n": 4, "size": 8}, "`size`"),
    ({"n": 4, "noise": -0.1}, "`noise`"), ({"n": 4, "noise": float("nan")}, "`noise`"),
])
def test_shapes_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _shapes.make_shapes(**kwargs)


def test_module_doctests():
    for module in (_shapes, _train, fastconv.nn):
        result = doctest.testmod(module)
        assert result.failed == 0


# --------------------------------------------------------------------------------------------
# the command


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def run_train(argv, stream=None):
    """Parse ``argv`` like ``python -m fastconv`` and run the train command into ``stream``."""
    out = io.StringIO() if stream is None else stream
    args = build_parser().parse_args(argv)
    assert args.func is _train.run
    return _train.run(args, stream=out), out.getvalue()


def summary(text):
    """The final summary line without its timings."""
    last = text.strip().splitlines()[-1]
    assert last.startswith("held-out accuracy ")
    return last.split(";")[0]


def held_out(text):
    """(images right, held-out images) from the final summary line."""
    right, total = re.match(r"held-out accuracy [\d.]+% \((\d+)/(\d+)\)", summary(text)).groups()
    return int(right), int(total)


def test_main_trains_and_reports_accuracy(capsys):
    assert main(TINY) == 0
    text = capsys.readouterr().out
    assert re.search(r"^epoch 1/1 \[#+\] loss \d\.\d{4} acc .*held-out acc .*\d s$", text, re.M)
    assert re.search(r"^held-out accuracy \d+\.\d\d% \(\d+/128\), no target; "
                     r"\d+\.\d s per training epoch, \d+\.\d s wall time in all$", text, re.M)
    assert "\r" not in text  # not a terminal: a line per epoch


@pytest.mark.parametrize("extra", [
    ["--layout", "NHWC"], ["--dtype", "float64", "--optimizer", "sgd"],
    ["--layout", "NHWC", "--dtype", "float64", "--threads", "1", "--batch-size", "64"],
])
def test_options(extra):
    status, text = run_train(TINY + extra)
    assert status == 0
    for value in extra:
        if not value.startswith("-") and not value.isdigit():
            assert value in text
    assert "threads" not in extra or "1 thread," in text


def test_same_seed_same_result():
    argv = TINY + ["--epochs", "2", "--quiet", "--seed", "5", "--dtype", "float64"]
    first = run_train(argv)[1]
    assert first.count("\n") == 1  # --quiet: just the summary
    assert summary(first) == summary(run_train(argv)[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layouts_learn_the_same(dtype):
    # build_model starts both layouts from the same function (NHWC dense rows in (h, w, c)
    # order), so NHWC training is the NCHW computation up to rounding: same per-epoch losses
    # and the same held-out accuracy, give or take one image.
    argv = TINY + ["--epochs", "2", "--seed", "5", "--dtype", dtype]
    texts = [run_train(argv + ["--layout", layout])[1] for layout in ("NCHW", "NHWC")]
    losses = [[float(v) for v in re.findall(r"^epoch \d/2 .* loss (\d\.\d{4}) ", t, re.M)]
              for t in texts]
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[0], losses[1], atol=2e-4)
    (right_nchw, total), (right_nhwc, _) = map(held_out, texts)
    assert total == 128 and abs(right_nchw - right_nhwc) <= 1


def test_build_model_layouts_compute_the_same_function():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 28, 28))
    nchw, nhwc = (_train.build_model(layout, np.float64, np.random.default_rng(7))
                  for layout in ("NCHW", "NHWC"))
    np.testing.assert_allclose(nhwc.forward(x.transpose(0, 2, 3, 1)), nchw.forward(x),
                               rtol=1e-12, atol=1e-12)


def test_default_target_fails_an_undertrained_run(capsys):
    # CI runs the default command: a run below the default 95% target must exit 1.
    assert build_parser().parse_args(["train"]).target == _train.TARGET_ACCURACY == 0.95
    assert main(UNDERTRAINED) == 1
    assert "target 95% NOT met" in capsys.readouterr().out


def test_target_is_checked_against_the_final_accuracy():
    status, text = run_train(UNDERTRAINED + ["--target", "0.999"])
    assert status == 1 and "target 99.9% NOT met" in text
    status, text = run_train(UNDERTRAINED + ["--target", "0"])
    assert status == 0 and "no target" in text and "NOT met" not in text
    # The run is deterministic: its own accuracy as the target is met (>=), and the next float
    # above it is not.
    right, total = held_out(text)
    assert 0 < right < total
    exact = right / total
    status, text = run_train(UNDERTRAINED + ["--target", repr(exact)])
    assert status == 0 and re.search(r"target [\d.]+% met;", text)
    status, text = run_train(UNDERTRAINED + ["--target", repr(float(np.nextafter(exact, 1.0)))])
    assert status == 1 and "NOT met" in text


def test_progress_bar_on_a_terminal():
    status, text = run_train(TINY + ["--epochs", "2", "--batch-size", "8"], stream=FakeTTY())
    assert status == 0
    assert text.count("\repoch 1/2 [") >= 2  # redrawn in place, at least at the end
    assert re.search(r"\repoch 2/2 \[#{24}\] loss .* held-out acc", text)


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (optional, for "
                    "--plots: pip install matplotlib)")
def test_plots_are_written(tmp_path):
    target = tmp_path / "figs"
    status, text = run_train(TINY + ["--plots", str(target)])
    assert status == 0
    for name in FIGURES:
        path = target / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert str(path) in text
    assert "matplotlib" not in text


def test_plots_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    status, text = run_train(TINY + ["--plots", str(tmp_path / "figs")])
    assert status == 0
    assert 'pip install "fastconv[plots]"' in text and "pip install matplotlib" in text
    assert "held-out accuracy" in text
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "0"], ["train", "--lr", "-1"], ["train", "--optimizer", "rmsprop"],
    ["train", "--layout", "nchw"], ["train", "--dtype", "float16"], ["train", "--lr", "nan"],
    ["train", "--target", "1.01"], ["train", "--target", "-0.1"], ["train", "--target", "nan"],
    ["train", "--target", "95%"],
])
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_importing_does_not_load_matplotlib_or_torch():
    code = ("import sys, fastconv.nn, fastconv._train, fastconv._shapes; "
            "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(fastconv.__file__))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=root)
    assert done.stdout.strip() == "[]"
