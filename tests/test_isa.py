"""CPU dispatch (fastconv._isa): the level choice, and the suite's core at every level.

The build compiles each compute kernel for the baseline and, on x86-64, for AVX2 and AVX-512;
``FASTCONV_CPU_LEVEL`` forces a level. The kernels are the same source at every level, but the
compiler vectorises each differently, so every level this machine can run is checked against
the reference here, each in its own process (the level is fixed at import).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import fastconv
from fastconv import _isa

TESTS = pathlib.Path(__file__).resolve().parent
# The files that compare every kernel with the reference (forward and backward, all layouts,
# dtypes, geometries); run again at each non-default level.
CORE_FILES = ["test_conv.py", "test_blocked.py", "test_pooling.py", "test_activation.py",
              "test_im2col.py", "test_backward.py"]

ALL_FEATURES = {f: True for level in _isa.LEVELS for f in _isa.REQUIRED_FEATURES[level]}


def test_default_level_is_the_best_supported():
    if os.environ.get(_isa.ENV_VAR):
        pytest.skip(f"{_isa.ENV_VAR} is set in this process")
    assert _isa.LEVEL == _isa.supported_levels()[-1]
    assert fastconv.config()["cpu_level"] == _isa.LEVEL
    assert _isa.LEVEL in fastconv.config()["cpu_dispatch"]


def test_baseline_is_always_built_and_supported():
    assert _isa.built_levels()[0] == "baseline"
    assert _isa.supported_levels({})[0] == "baseline"   # a CPU with no known features


def test_supported_levels_follow_cpu_features(monkeypatch):
    monkeypatch.setattr(_isa, "built_levels", lambda: list(_isa.LEVELS))
    assert _isa.supported_levels({}) == ["baseline"]
    assert _isa.supported_levels({"AVX2": True, "FMA3": True}) == ["baseline", "avx2"]
    assert _isa.supported_levels({"AVX2": True}) == ["baseline"]          # AVX2 without FMA
    assert _isa.supported_levels(ALL_FEATURES) == list(_isa.LEVELS)
    no_dq = dict(ALL_FEATURES, AVX512DQ=False)
    assert _isa.supported_levels(no_dq) == ["baseline", "avx2"]


def test_levels_not_built_are_never_offered(monkeypatch):
    monkeypatch.setattr(_isa, "built_levels", lambda: ["baseline"])
    assert _isa.supported_levels(ALL_FEATURES) == ["baseline"]


def test_choose_level():
    supported = ["baseline", "avx2"]
    assert _isa.choose_level(None, supported) == "avx2"
    assert _isa.choose_level("", supported) == "avx2"
    assert _isa.choose_level(" AVX2 ", supported) == "avx2"
    assert _isa.choose_level("baseline", supported) == "baseline"
    with pytest.raises(ValueError, match="FASTCONV_CPU_LEVEL='sse9': must be one of baseline"):
        _isa.choose_level("sse9", supported)
    with pytest.raises(RuntimeError, match="cannot use the avx512 kernels .*baseline, avx2"):
        _isa.choose_level("avx512", supported)


def test_every_level_has_every_kernel_module():
    import importlib
    import importlib.util

    supported = _isa.supported_levels()
    for level in _isa.built_levels():
        for name in _isa.DISPATCHED:
            suffix = "" if level == "baseline" else f"_{level}"
            assert importlib.util.find_spec(f"fastconv._kernels.{name}{suffix}"), (level, name)
            # Only levels this CPU runs may be imported: the compiler may use the level's
            # instructions in the module's own initialisation (an AVX-512 module killed the
            # interpreter with SIGILL on an AVX2-only CPU).
            if level in supported:
                module = importlib.import_module(f"fastconv._kernels.{name}{suffix}")
                assert module.__name__.endswith(f"{name}{suffix}")


def _run(env_level, *args, timeout=600):
    # The child imports the fastconv under test (source tree or installed copy), not another.
    package_root = str(pathlib.Path(fastconv.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, **{_isa.ENV_VAR: env_level})
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=TESTS)


def test_forcing_an_unknown_level_fails_at_import():
    out = _run("sse9", "-c", "import fastconv")
    assert out.returncode != 0
    assert "FASTCONV_CPU_LEVEL='sse9': must be one of baseline, avx2, avx512" in out.stderr


@pytest.mark.parametrize("level", [lv for lv in _isa.LEVELS if lv != "baseline"])
def test_forcing_an_unsupported_level_fails_cleanly(level):
    if level in _isa.supported_levels():
        pytest.skip(f"this machine supports {level}; nothing to refuse")
    out = _run(level, "-c", "import fastconv")
    assert out.returncode != 0 and "cannot use the" in out.stderr   # an error, not SIGILL


@pytest.mark.parametrize("level", _isa.LEVELS)
def test_core_suite_at_every_supported_level(level):
    """The forward and backward comparisons with the reference, with the kernels of ``level``."""
    if level not in _isa.supported_levels():
        pytest.skip(f"{level} kernels were not built or this CPU cannot run them "
                    f"(supported here: {', '.join(_isa.supported_levels())})")
    if level == _isa.LEVEL:
        pytest.skip(f"{level} is this process's level: the rest of the suite already tests it")
    out = _run(level, "-m", "pytest", *CORE_FILES, "-q", "-x", "-p", "no:cacheprovider",
               "-p", "no:randomly")
    tail = "\n".join(out.stdout.splitlines()[-15:])
    assert out.returncode == 0, (
        f"core suite failed with {_isa.ENV_VAR}={level}:\n{tail}\n{out.stderr[-2000:]}")
    assert " passed" in tail
