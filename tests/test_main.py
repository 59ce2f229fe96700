"""The command line: ``python -m fastconv`` (the demo, the main job) and its subcommands."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _demo
from fastconv.__main__ import main


def test_demo_checks_every_op_and_passes(capsys):
    assert main(["demo", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"fastconv {fastconv.__version__}")
    assert "checks passed" in text
    assert "FAIL" not in text
    for op in ("conv2d sobel-x", "relu", "max_pool2d 2x2", "avg_pool2d 2x2", "NHWC"):
        assert op in text


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_demo_dtype_and_threads_options(capsys, dtype):
    assert main(["demo", "--repeats", "1", "--no-art", "--threads", "1", "--dtype", dtype]) == 0
    assert dtype in capsys.readouterr().out


def test_demo_fails_when_a_result_is_wrong(monkeypatch):
    # A broken fast op must turn the demo red: the check is real, not decorative.
    real_relu = fastconv.relu
    monkeypatch.setattr(fastconv, "relu", lambda x, **kw: real_relu(x, **kw) + 1)
    out = io.StringIO()
    assert _demo.run_demo(repeats=1, art=False, stream=out) == 1
    assert "FAIL" in out.getvalue()


def test_module_entry_point_reports_the_version():
    # Run outside the repository: `-m` puts the working directory first on sys.path, which
    # from the repository root would be the (unbuilt) source tree, not the package under test.
    done = subprocess.run([sys.executable, "-m", "fastconv", "--version"],
                          capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(fastconv.__file__)))
    assert done.stdout.strip() == f"fastconv {fastconv.__version__}"


def test_config_subcommand(capsys):
    assert main(["config"]) == 0
    assert "openmp" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["demo", "--threads", "0"], ["demo", "--dtype", "int8"],
                                  ["no-such-command"]])
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_test_image_is_deterministic():
    a = _demo.make_test_image(seed=3)
    b = _demo.make_test_image(seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (256, 256)
