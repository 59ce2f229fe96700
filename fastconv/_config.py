"""Build and runtime configuration: ``config()`` and ``show_config()``."""

from __future__ import annotations

import sys
from typing import Any, Dict

import numpy as np

from . import _buffers, _isa, _openmp_env, _threads
from ._kernels import _openmp
from ._version import __version__

try:
    from ._build_info import BUILD_INFO
except ImportError:  # built by something other than setup.py's build_ext
    BUILD_INFO = {}


def config() -> Dict[str, Any]:
    """The version, build options and thread settings, as a dict.

    Keys: ``version``, ``openmp`` (compiled in), ``openmp_max_threads``,
    ``openmp_wait_policy`` (see :mod:`fastconv._openmp_env`), ``cpu_level`` (the instruction
    set of the kernels in use) and ``cpu_dispatch`` (why; see :mod:`fastconv._isa`),
    ``num_threads`` (the
    current default of every op), ``default_num_threads`` (what ``set_num_threads(None)``
    would read from the environment now), ``compiler``, ``compile_args``,
    ``link_args``, ``numpy_build_version``, ``numpy_runtime_version``, ``cython_version``,
    ``python_version``, ``buffer_pool_max_bytes`` (see :func:`fastconv.set_buffer_pool`).

    Examples
    --------
    >>> import fastconv
    >>> cfg = fastconv.config()
    >>> cfg["version"] == fastconv.__version__
    True
    """
    return {
        "version": __version__,
        "openmp": _openmp.openmp_enabled(),
        "openmp_max_threads": _openmp.omp_max_threads(),
        "openmp_wait_policy": _openmp_env.describe(),
        "cpu_level": _isa.LEVEL,
        "cpu_dispatch": _isa.describe(),
        "num_threads": _threads.get_num_threads(),
        "default_num_threads": _threads.default_num_threads(),
        "buffer_pool_max_bytes": _buffers.buffer_pool_info()["max_bytes"],
        "compiler": BUILD_INFO.get("compiler", "unknown"),
        "compile_args": list(BUILD_INFO.get("compile_args", [])),
        "link_args": list(BUILD_INFO.get("link_args", [])),
        "numpy_build_version": BUILD_INFO.get("numpy_build_version", "unknown"),
        "numpy_runtime_version": np.__version__,
        "cython_version": BUILD_INFO.get("cython_version", "unknown"),
        "python_version": sys.version.split()[0],
    }


def show_config() -> None:
    """Print :func:`config` as an aligned table.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.show_config()  # doctest: +ELLIPSIS
    fastconv ...
    """
    cfg = config()
    print(f"fastconv {cfg['version']}")
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        if key != "version":
            if isinstance(value, list):
                value = " ".join(value) or "(none)"
            print(f"  {key:<{width}}  {value}")
