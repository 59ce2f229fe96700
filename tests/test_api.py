"""Cross-cutting API contract: public names, signatures, version, config, threads, doctests."""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import inspect
import os
import pkgutil
import platform
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import _threads, reference

OPS = ("conv2d", "relu", "max_pool2d", "avg_pool2d", "im2col", "col2im", "conv2d_backward",
       "relu_backward", "max_pool2d_backward", "avg_pool2d_backward")
PUBLIC = set(OPS) | {"set_num_threads", "get_num_threads", "show_config", "config",
                     "set_buffer_pool", "buffer_pool_info", "clear_buffer_pool"}
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_thread_setting():
    """Every test here may change the process-wide thread count; put it back afterwards."""
    saved = _threads._setting
    try:
        yield
    finally:
        fastconv.set_num_threads(saved)


# --------------------------------------------------------------------------------------------
# public names and signatures


def test_all_is_exactly_the_public_api():
    assert len(fastconv.__all__) == len(set(fastconv.__all__))
    assert set(fastconv.__all__) == PUBLIC | {"reference", "__version__"}
    for name in fastconv.__all__:
        assert hasattr(fastconv, name), name
    assert inspect.ismodule(fastconv.reference)
    for name in PUBLIC:
        assert callable(getattr(fastconv, name)), name


def test_reference_all_lists_every_op():
    assert sorted(reference.__all__) == sorted(OPS)
    for name in OPS:
        assert callable(getattr(reference, name))


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", OPS)
def test_signature_matches_reference(name):
    fast = _params(getattr(fastconv, name))
    ref = _params(getattr(reference, name))
    if name in ("im2col", "col2im"):
        # The fast versions take a keyword-only num_threads; the reference need not.
        thread_param = ("num_threads", inspect.Parameter.KEYWORD_ONLY, None)
        assert thread_param in fast
        fast = [p for p in fast if p != thread_param]
        ref = [p for p in ref if p != thread_param]
    assert fast == ref


@pytest.mark.parametrize("name", OPS)
def test_num_threads_is_keyword_only_everywhere(name):
    params = inspect.signature(getattr(fastconv, name)).parameters
    assert params["num_threads"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["num_threads"].default is None
    if "out" in params:
        assert params["out"].kind is inspect.Parameter.KEYWORD_ONLY


def _valid_call(name):
    x = np.zeros((1, 2, 4, 4))
    if name == "conv2d":
        return (x, np.zeros((3, 2, 3, 3))), {}
    if name == "relu":
        return (x,), {}
    if name in ("max_pool2d", "avg_pool2d"):
        return (x, 2), {}
    if name == "im2col":
        return (x, 2), {}
    if name == "col2im":
        return (np.zeros((9, 8)), (1, 2, 4, 4), 2), {}
    if name == "conv2d_backward":
        return (np.zeros((1, 3, 2, 2)), x, np.zeros((3, 2, 3, 3))), {}
    if name == "relu_backward":
        return (x, x), {}
    if name == "max_pool2d_backward":
        return (np.zeros((1, 2, 2, 2)), x, 2), {}
    if name == "avg_pool2d_backward":
        return (np.zeros((1, 2, 2, 2)), x.shape, 2), {}
    raise AssertionError(name)


@pytest.mark.parametrize("impl", [fastconv, reference], ids=["fast", "reference"])
@pytest.mark.parametrize("name", OPS)
def test_unknown_keyword_is_type_error(impl, name):
    fn = getattr(impl, name)
    args, kwargs = _valid_call(name)
    fn(*args, **kwargs)  # the call itself is valid
    with pytest.raises(TypeError, match="bogus_option"):
        fn(*args, bogus_option=1, **kwargs)


# --------------------------------------------------------------------------------------------
# version


def test_version_is_a_string():
    assert isinstance(fastconv.__version__, str)
    assert re.match(r"^\d+\.\d+(\.\d+)?", fastconv.__version__)
    assert fastconv.config()["version"] == fastconv.__version__


def test_version_matches_installed_metadata():
    try:
        installed = importlib.metadata.version("fastconv")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastconv is not installed (importlib.metadata has no distribution for it); "
                    "testing the source tree")
    assert fastconv.__version__ == installed


def test_version_is_single_sourced():
    pyproject = REPO_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip(f"no pyproject.toml at {pyproject} (tests run outside the source tree)")
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    meta = tomllib.loads(pyproject.read_text())
    # One source of truth: the package metadata takes the version from fastconv/_version.py.
    assert "version" in meta["project"]["dynamic"]
    attr = meta["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "fastconv._version.__version__"
    assert fastconv._version.__version__ == fastconv.__version__


# --------------------------------------------------------------------------------------------
# config and show_config

CONFIG_TYPES = {
    "version": str,
    "openmp": bool,
    "openmp_max_threads": int,
    "openmp_wait_policy": str,
    "cpu_level": str,
    "cpu_dispatch": str,
    "num_threads": int,
    "default_num_threads": int,
    "buffer_pool_max_bytes": int,
    "compiler": str,
    "compile_args": list,
    "link_args": list,
    "numpy_build_version": str,
    "numpy_runtime_version": str,
    "cython_version": str,
    "python_version": str,
}


def test_config_keys_and_types():
    cfg = fastconv.config()
    assert set(cfg) == set(CONFIG_TYPES)
    for key, typ in CONFIG_TYPES.items():
        assert type(cfg[key]) is typ, (key, cfg[key])
    for key in ("compile_args", "link_args"):
        assert all(isinstance(a, str) for a in cfg[key]), cfg[key]
    assert cfg["openmp_max_threads"] >= 1
    assert cfg["num_threads"] >= 1 and cfg["default_num_threads"] >= 1
    assert cfg["numpy_runtime_version"] == np.__version__
    assert cfg["python_version"] == platform.python_version()
    assert cfg["buffer_pool_max_bytes"] == fastconv.buffer_pool_info()["max_bytes"]


def test_config_follows_set_num_threads():
    fastconv.set_num_threads(1)
    assert fastconv.config()["num_threads"] == 1
    fastconv.set_num_threads(3)
    assert fastconv.config()["num_threads"] == 3
    fastconv.set_num_threads(None)
    cfg = fastconv.config()
    assert cfg["num_threads"] == cfg["default_num_threads"]


def test_config_returns_a_fresh_dict():
    cfg = fastconv.config()
    cfg["compile_args"].append("--mutated")
    cfg["version"] = "mutated"
    again = fastconv.config()
    assert again["version"] == fastconv.__version__
    assert "--mutated" not in again["compile_args"]


def test_config_reports_the_build():
    # setup.py's build_ext records the compiler and flags in fastconv/_build_info.py; every
    # supported build goes through it, so none of these may be left at "unknown".
    cfg = fastconv.config()
    assert cfg["compiler"] != "unknown"
    assert cfg["numpy_build_version"] != "unknown"
    assert cfg["cython_version"] != "unknown"
    assert cfg["compile_args"], "no compile flags recorded (optimisation flags expected)"
    if cfg["openmp"]:
        assert any("openmp" in a for a in cfg["compile_args"]), cfg["compile_args"]


def test_show_config_prints_every_key(capsys):
    fastconv.show_config()
    out = capsys.readouterr().out
    lines = out.splitlines()
    cfg = fastconv.config()
    assert lines[0] == f"fastconv {cfg['version']}"
    body = {line.split()[0]: line for line in lines[1:]}
    assert set(body) == set(cfg) - {"version"}
    for key, value in cfg.items():
        if key == "version":
            continue
        shown = (" ".join(value) or "(none)") if isinstance(value, list) else str(value)
        assert body[key].rstrip().endswith(shown), (key, body[key])
        assert body[key].startswith(f"  {key}")


def test_openmp_compiled_in():
    if os.environ.get("FASTCONV_SKIP_OPENMP_TEST") == "1":
        pytest.skip("FASTCONV_SKIP_OPENMP_TEST=1: this build may be serial (built without "
                    "OpenMP, e.g. FASTCONV_OPENMP=0 or a compiler without OpenMP support)")
    cfg = fastconv.config()
    assert cfg["openmp"] is True, (
        "fastconv was built without OpenMP; set FASTCONV_SKIP_OPENMP_TEST=1 if that is intended"
    )
    assert cfg["openmp_max_threads"] >= 1


# --------------------------------------------------------------------------------------------
# set_num_threads / get_num_threads


def test_set_and_get_num_threads():
    assert fastconv.set_num_threads(1) is None
    assert fastconv.get_num_threads() == 1
    fastconv.set_num_threads(2)
    assert fastconv.get_num_threads() == 2
    fastconv.set_num_threads(np.int32(3))
    assert fastconv.get_num_threads() == 3
    assert type(fastconv.get_num_threads()) is int
    fastconv.set_num_threads(None)
    assert fastconv.get_num_threads() == _threads.default_num_threads()


@pytest.mark.parametrize("bad", [0, -1])
def test_set_num_threads_value_error(bad):
    fastconv.set_num_threads(2)
    with pytest.raises(ValueError, match=r"set_num_threads: num_threads must be a positive int"):
        fastconv.set_num_threads(bad)
    assert fastconv.get_num_threads() == 2  # unchanged by the failed call


@pytest.mark.parametrize("bad", ["2", 1.5, True, np.bool_(True), [2]], ids=repr)
def test_set_num_threads_type_error(bad):
    fastconv.set_num_threads(2)
    with pytest.raises(TypeError, match=r"set_num_threads: num_threads must be a positive int"):
        fastconv.set_num_threads(bad)
    assert fastconv.get_num_threads() == 2


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("env, expected", [
    ("3", 3), ("5,2", 5), (" 4 ", 4), ("1", 1),
    ("0", None), ("-2", None), ("abc", None), ("", None), ("2.5", None),
])
def test_default_num_threads_honours_omp_num_threads(monkeypatch, env, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    want = expected if expected is not None else _cores()
    assert _threads.default_num_threads() == want
    fastconv.set_num_threads(None)
    assert fastconv.get_num_threads() == want
    assert fastconv.config()["default_num_threads"] == want
    fastconv.set_num_threads(1)  # an explicit setting wins over the environment
    assert fastconv.get_num_threads() == 1


def test_default_thread_count_is_read_once(monkeypatch):
    """Like OpenMP, the default is read once: a changed OMP_NUM_THREADS takes effect on
    set_num_threads(None), not on the next call."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    fastconv.set_num_threads(None)
    assert fastconv.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert fastconv.get_num_threads() == 3
    assert _threads.resolve(None, "conv2d") == 3
    assert _threads.default_num_threads() == 5   # what set_num_threads(None) would read
    fastconv.set_num_threads(None)
    assert fastconv.get_num_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    fastconv.set_num_threads(None)
    assert fastconv.get_num_threads() == _cores()


def test_default_num_threads_without_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _threads.default_num_threads() == _cores()


# --------------------------------------------------------------------------------------------
# packaging


def test_py_typed_is_shipped():
    marker = Path(fastconv.__file__).parent / "py.typed"
    assert marker.is_file()


def test_py_typed_is_package_data():
    pyproject = REPO_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip(f"no pyproject.toml at {pyproject} (tests run outside the source tree)")
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    meta = tomllib.loads(pyproject.read_text())
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["fastconv"]


# --------------------------------------------------------------------------------------------
# doctests


def _doctest_modules():
    """The public modules named in the docs; the module defining im2col/col2im by lookup, since
    ``fastconv.im2col`` is the function (which shadows a module of the same name)."""
    names = ["fastconv", "fastconv.conv", "fastconv.pooling", "fastconv.activation",
             fastconv.im2col.__module__, "fastconv._threads", "fastconv._config",
             "fastconv._buffers",
             "fastconv.reference"]
    return list(dict.fromkeys(names))


def _run_doctests(module_name, capsys):
    module = importlib.import_module(module_name)
    capsys.readouterr()
    result = doctest.testmod(module, verbose=False, report=True)
    report = capsys.readouterr().out
    return result, report


@pytest.mark.parametrize("module_name", _doctest_modules())
def test_doctests(module_name, capsys):
    result, report = _run_doctests(module_name, capsys)
    assert result.failed == 0, report
    assert result.attempted >= 1, f"{module_name} has no doctest examples"


def test_doctests_of_every_other_module(capsys):
    # Modules without examples are fine, but any examples they have must pass.
    public = set(_doctest_modules())
    others = [m.name for m in pkgutil.walk_packages(fastconv.__path__, "fastconv.")
              if m.name not in public and not m.name.endswith("__main__")
              and not m.name.startswith("fastconv._kernels")]
    for name in others:
        result, report = _run_doctests(name, capsys)
        assert result.failed == 0, f"{name}:\n{report}"


def test_im2col_module_is_importable():
    mod = sys.modules[fastconv.im2col.__module__]
    assert mod.im2col is fastconv.im2col and mod.col2im is fastconv.col2im


# --------------------------------------------------------------------------------------------
# libgomp wait policy (fastconv/_openmp_env.py)


def _import_in_subprocess(env_updates, drop=()):
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_updates)
    code = ("import json, os, fastconv; print(json.dumps([os.environ.get('GOMP_SPINCOUNT'), "
            "fastconv.config()['openmp_wait_policy']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(fastconv.__file__)))
    return json.loads(out.stdout)


def test_idle_openmp_threads_spin_briefly_by_default():
    spincount, policy = _import_in_subprocess({})
    assert spincount == "300"
    assert policy == "GOMP_SPINCOUNT=300 (set by fastconv)"


@pytest.mark.parametrize("variable, value", [("OMP_WAIT_POLICY", "active"),
                                             ("GOMP_SPINCOUNT", "1000")])
def test_a_users_wait_policy_is_left_alone(variable, value):
    spincount, policy = _import_in_subprocess({variable: value})
    assert spincount == (value if variable == "GOMP_SPINCOUNT" else None)
    assert policy == f"{variable}={value} (from the environment)"


# --------------------------------------------------------------------------------------------
# limits shared by the fast ops and the reference


@pytest.mark.parametrize("impl", [fastconv, fastconv.reference], ids=["fast", "reference"])
def test_huge_divisor_override_is_a_value_error(impl):
    with pytest.raises(ValueError, match="avg_pool2d: divisor_override must be at most"):
        impl.avg_pool2d(np.ones((1, 1, 4, 4)), 2, divisor_override=2**70)


@pytest.mark.parametrize("impl", [fastconv, fastconv.reference], ids=["fast", "reference"])
def test_long_double_is_refused(impl):
    with pytest.raises(TypeError, match="relu: x has dtype"):
        impl.relu(np.ones(3, dtype=np.longdouble))


@pytest.mark.parametrize("value", [1.5, True, "2"])
def test_groups_type_error_names_the_argument(value):
    with pytest.raises(TypeError, match=r"conv2d: groups must be an int, got"):
        fastconv.conv2d(np.ones((1, 2, 4, 4)), np.ones((2, 1, 3, 3)), groups=value)


# --------------------------------------------------------------------------------------------
# conv2d's cache of validated arguments (fastconv/_validate.py: conv_args)


def _conv_ok(*args, **kw):
    """Warm the cache with a valid call of these shapes, and check it against the reference."""
    got = fastconv.conv2d(*args, **kw)
    np.testing.assert_allclose(got, reference.conv2d(*args, **kw), rtol=1e-5, atol=1e-5)
    return got


@pytest.mark.parametrize("impl", [fastconv, reference], ids=["fastconv", "reference"])
@pytest.mark.parametrize("name, bad, good", [
    ("groups", True, 1),                           # True == 1 and hashes like it
    ("stride", 1.0, 1),                            # 1.0 == 1
    ("stride", (1, True), (1, 1)),
    ("padding", (True, 1), (1, 1)),
    ("padding", ((1, 1), (1.0, 1)), ((1, 1), (1, 1))),
    ("dilation", 1.0, 1),
])
def test_values_equal_to_a_cached_call_are_still_checked(impl, name, bad, good):
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    kwargs = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    _conv_ok(x, w, **{**kwargs, name: good})
    _conv_ok(x, w, **{**kwargs, name: good})       # now certainly from the cache
    with pytest.raises(TypeError, match=name):
        impl.conv2d(x, w, **{**kwargs, name: bad})


def test_cached_arguments_follow_dtype_rank_bias_and_layout():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for _ in range(2):
        assert _conv_ok(x, w, padding=1).dtype == np.float32
        assert _conv_ok(x.astype(np.float64), w, padding=1).dtype == np.float64
        assert _conv_ok(x.astype(">f4"), w.astype(">f4"), padding=1).dtype == np.float32
        assert _conv_ok(x, w, b, padding=1).shape == (2, 4, 7, 7)
        assert _conv_ok(x[0], w, padding=1).shape == (4, 7, 7)                 # one image
        assert _conv_ok(x[0, 0], w[0, 0], padding=1).shape == (7, 7)           # 2-D
        assert _conv_ok(x[0, 0], w[0, 0], padding=1, layout="NHWC").shape == (7, 7)
        assert _conv_ok(x, w, padding="same", activation="relu").min() >= 0
        # Lists and NumPy integers are not cached, and still accepted.
        _conv_ok(x, w, padding=[1, 1], stride=np.int64(2))
    with pytest.raises(ValueError, match="bias must have shape"):
        fastconv.conv2d(x, w, b[:3], padding=1)
    with pytest.raises(ValueError, match="channels"):
        fastconv.conv2d(x[:, :2], w, padding=1)


def test_conv_argument_cache_is_bounded():
    from fastconv import _validate

    w = np.ones((1, 1, 1, 1), np.float32)
    for size in range(1, _validate.CONV_CACHE_SIZE + 20):
        fastconv.conv2d(np.ones((1, 1, 1, size), np.float32), w)
    assert 0 < len(_validate._conv_cache) <= _validate.CONV_CACHE_SIZE


# --------------------------------------------------------------------------------------------
# the pooling ops' cache of validated arguments (fastconv/_validate.py: pool_args)


def _pool_ok(op, *args, **kw):
    """Warm the cache with a valid call, and check it against the reference."""
    got = getattr(fastconv, op)(*args, **kw)
    np.testing.assert_allclose(got, getattr(reference, op)(*args, **kw), rtol=1e-5, atol=1e-6)
    return got


@pytest.mark.parametrize("impl", [fastconv, reference], ids=["fastconv", "reference"])
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("name, bad, good", [
    ("kernel_size", True, 1),                      # True == 1 and hashes like it
    ("kernel_size", 2.0, 2),
    ("stride", (1, True), (1, 1)),
    ("stride", 2.0, 2),
    ("padding", (True, 0), (1, 0)),
    ("padding", ((1, 1), (1.0, 1)), ((1, 1), (1, 1))),
])
def test_pool_values_equal_to_a_cached_call_are_still_checked(impl, op, name, bad, good):
    x = np.ones((1, 2, 6, 6), np.float32)
    kwargs = {"kernel_size": 2, "stride": 2, "padding": 0}
    _pool_ok(op, x, **{**kwargs, name: good})
    _pool_ok(op, x, **{**kwargs, name: good})     # now certainly from the cache
    with pytest.raises(TypeError, match=name):
        getattr(impl, op)(x, **{**kwargs, name: bad})


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_cached_arguments_follow_dtype_rank_layout_and_ceil_mode(op):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    for _ in range(2):
        assert _pool_ok(op, x, 3, 2, 1).shape == (2, 3, 4, 4)
        assert _pool_ok(op, x, 3, 2, 1, ceil_mode=True).shape == (2, 3, 4, 4)
        assert _pool_ok(op, x, 2, ceil_mode=True).shape == (2, 3, 4, 4)
        assert _pool_ok(op, x, 2).shape == (2, 3, 3, 3)
        assert _pool_ok(op, x.astype(np.float64), 2).dtype == np.float64
        assert _pool_ok(op, x.astype(">f4"), 2).dtype == np.float32
        assert _pool_ok(op, x[0], 2).shape == (3, 3, 3)                        # one image
        assert _pool_ok(op, x[0, 0], 2).shape == (3, 3)                        # 2-D
        assert _pool_ok(op, x, 2, layout="NHWC").shape == (2, 1, 3, 7)     # H 3, W 7, C 7
        assert _pool_ok(op, x, 2, padding="same").shape == (2, 3, 4, 4)
        # Lists, NumPy integers and non-bool ceil_mode are not cached, and still accepted.
        _pool_ok(op, x, [2, 2], stride=np.int64(2), ceil_mode=1)
    with pytest.raises(ValueError, match="at most half"):
        getattr(fastconv, op)(x, 2, padding=2)
    with pytest.raises(ValueError, match="larger than"):
        getattr(fastconv, op)(x[:, :, :1], 3)


def test_pool_argument_cache_is_bounded():
    from fastconv import _validate

    for size in range(1, _validate.POOL_CACHE_SIZE + 20):
        fastconv.max_pool2d(np.ones((1, 1, 1, size), np.float32), 1)
    assert 0 < len(_validate._pool_cache) <= _validate.POOL_CACHE_SIZE
