"""The output buffer pool (fastconv._buffers): reuse, bounds, ordinary arrays, no stale data."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastconv
from fastconv import _buffers, reference

from _helpers import assert_close

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import get_handler_name

POOL = "fastconv_buffer_pool"
MIB = 1 << 20


COUNTERS = ("hits", "misses", "evictions")


@pytest.fixture(autouse=True)
def fresh_pool():
    """Each test starts with an empty pool at the default bound, and leaves it so."""
    previous = fastconv.set_buffer_pool(_buffers.DEFAULT_MAX_BYTES)
    fastconv.clear_buffer_pool()
    _START.update({k: fastconv.buffer_pool_info()[k] for k in COUNTERS})
    try:
        yield
    finally:
        fastconv.set_buffer_pool(previous)
        fastconv.clear_buffer_pool()


_START = {}


def _info():
    """buffer_pool_info() with the counters counted from the start of the test."""
    info = fastconv.buffer_pool_info()
    for key in COUNTERS:
        info[key] -= _START[key]
    return info


def _owner(a):
    """The array that owns ``a``'s memory (ops may return a reshaped view of their buffer)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _poison(nbytes):
    """Leave one pooled block of exactly ``nbytes`` in the pool, filled with NaN bit patterns
    (0xFF bytes are a NaN in float32 and float64); return its address."""
    block = _buffers.empty((nbytes,), np.uint8)
    block.fill(0xFF)
    address = block.ctypes.data
    del block
    info = _info()
    assert info["cached_blocks"] == 1 and info["cached_bytes"] == nbytes
    return address


# (name, fastconv call, reference call), each producing one pooled-size output from `rng`.
def _cases():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8, 48, 48)).astype(np.float32)          # 288 KiB
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w_hwio = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    dw = rng.standard_normal((8, 1, 3, 3))                             # float64 depthwise
    x64 = x.astype(np.float64)
    gy = rng.standard_normal((4, 16, 48, 48)).astype(np.float32)
    big = rng.standard_normal((4, 16, 96, 96)).astype(np.float32)
    pooled_grad = rng.standard_normal((4, 8, 24, 24)).astype(np.float32)
    cols = reference.im2col(x, 3, padding=1)
    cases = []
    for algorithm in ("direct", "im2col"):
        cases.append((f"conv2d-{algorithm}-NCHW",
                      lambda a=algorithm: fastconv.conv2d(x, w, padding=1, algorithm=a),
                      lambda: reference.conv2d(x, w, padding=1)))
        cases.append((f"conv2d-{algorithm}-NHWC",
                      lambda a=algorithm: fastconv.conv2d(x_nhwc, w_hwio, padding=1,
                                                          layout="NHWC", algorithm=a),
                      lambda: reference.conv2d(x_nhwc, w_hwio, padding=1, layout="NHWC")))
    cases += [
        ("conv2d-depthwise-f64", lambda: fastconv.conv2d(x64, dw, padding=1, groups=8),
         lambda: reference.conv2d(x64, dw, padding=1, groups=8)),
        ("conv2d-relu", lambda: fastconv.conv2d(x, w, padding=1, activation="relu"),
         lambda: reference.conv2d(x, w, padding=1, activation="relu")),
        ("max_pool2d", lambda: fastconv.max_pool2d(big, 2), lambda: reference.max_pool2d(big, 2)),
        ("max_pool2d-NHWC", lambda: fastconv.max_pool2d(x_nhwc, 3, 1, 1, layout="NHWC"),
         lambda: reference.max_pool2d(x_nhwc, 3, 1, 1, layout="NHWC")),
        ("avg_pool2d", lambda: fastconv.avg_pool2d(x, 3, 1, 1),
         lambda: reference.avg_pool2d(x, 3, 1, 1)),
        ("relu", lambda: fastconv.relu(x), lambda: reference.relu(x)),
        ("im2col", lambda: fastconv.im2col(x, 3, padding=1),
         lambda: reference.im2col(x, 3, padding=1)),
        ("col2im", lambda: fastconv.col2im(cols, x.shape, 3, padding=1),
         lambda: reference.col2im(cols, x.shape, 3, padding=1)),
        ("relu_backward", lambda: fastconv.relu_backward(x, x),
         lambda: reference.relu_backward(x, x)),
        ("max_pool2d_backward", lambda: fastconv.max_pool2d_backward(pooled_grad, x, 2),
         lambda: reference.max_pool2d_backward(pooled_grad, x, 2)),
        ("avg_pool2d_backward", lambda: fastconv.avg_pool2d_backward(pooled_grad, x.shape, 2),
         lambda: reference.avg_pool2d_backward(pooled_grad, x.shape, 2)),
        ("conv2d_backward-direct-input",
         lambda: fastconv.conv2d_backward(gy, x, w, padding=1, algorithm="direct",
                                          needs=("input",))[0],
         lambda: reference.conv2d_backward(gy, x, w, padding=1, needs=("input",))[0]),
    ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("name, fast, ref", CASES, ids=[c[0] for c in CASES])
def test_reused_memory_never_leaks_into_results(name, fast, ref):
    # The op's output lands on a block full of NaN; every element must be overwritten.
    expected = ref()
    assert expected.nbytes >= _buffers.MIN_BYTES, name
    address = _poison(expected.nbytes)
    actual = fast()
    assert _owner(actual).ctypes.data == address, f"{name}: the output missed the NaN block"
    assert get_handler_name(_owner(actual)) == POOL
    assert not np.isnan(actual).any(), f"{name}: stale pool contents in the result"
    assert_close(actual, expected, reduction_length=8 * 9 * 16, err_msg=name)


def test_freed_output_is_reused_by_the_next_call():
    x = np.ones((512, 1024), dtype=np.float32)   # 2 MiB
    y = fastconv.relu(x)
    address = y.ctypes.data
    del y
    info = _info()
    assert info["cached_blocks"] == 1 and info["cached_bytes"] == x.nbytes
    y = fastconv.relu(x)
    assert y.ctypes.data == address
    assert _info()["cached_blocks"] == 0


def test_live_outputs_never_share_memory():
    x = np.ones((512, 1024), dtype=np.float32)
    outputs = [fastconv.relu(x) for _ in range(4)]
    for i, a in enumerate(outputs):
        for b in outputs[i + 1:]:
            assert not np.shares_memory(a, b)


def test_pooled_arrays_are_ordinary_arrays():
    x = np.arange(1 << 18, dtype=np.float64)     # 2 MiB
    y = fastconv.relu(x)
    assert get_handler_name(y) == POOL
    assert y.flags.owndata and y.flags.writeable and y.flags.c_contiguous
    assert y.ctypes.data % 64 == 0
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(y)), x)
    y.resize((1 << 20,), refcheck=False)         # grows through the handler's realloc
    np.testing.assert_array_equal(y[:1 << 18], x)
    assert (y[1 << 18:] == 0).all()              # ndarray.resize zero-fills the new part
    y.resize((1000,), refcheck=False)           # under half: a smaller block, data kept
    np.testing.assert_array_equal(y, x[:1000])
    z = np.zeros_like(y)                          # NumPy's own allocations are untouched
    assert get_handler_name(z) != POOL
    del y
    assert _info()["cached_bytes"] == 0          # the 8 KB block is not pooled, nor the 8 MB


def test_small_outputs_and_the_callers_policy_are_untouched():
    small = fastconv.relu(np.ones(1000, dtype=np.float32))
    assert get_handler_name(_owner(small)) != POOL
    before = get_handler_name()
    fastconv.relu(np.ones(1 << 20, dtype=np.float32))
    assert get_handler_name() == before != POOL


def test_handler_is_restored_when_allocation_fails():
    before = get_handler_name()
    with pytest.raises((MemoryError, ValueError)):
        _buffers.empty((1 << 40, 1 << 20), np.uint8)
    assert get_handler_name() == before


def test_size_tolerance_is_one_eighth():
    _poison(9 * MIB)
    block = _buffers.empty((8 * MIB,), np.uint8)      # 9/8 of the request: reused
    assert get_handler_name(block) == POOL
    assert _info()["hits"] == 1
    del block                                          # the 9 MiB block is cached again
    small = _buffers.empty((4 * MIB,), np.uint8)      # 9/4 of the request: not reused
    info = _info()
    assert info["hits"] == 1 and info["misses"] == 2 and info["cached_blocks"] == 1
    del small


def test_bound_on_bytes_evicts_oldest_first():
    fastconv.set_buffer_pool(3 * MIB)
    blocks = [_buffers.empty((MIB,), np.uint8) for _ in range(5)]
    addresses = [b.ctypes.data for b in blocks]
    for i in range(5):          # freed in this order: 0 is the oldest in the pool
        blocks[i] = None
    info = _info()
    assert info["cached_bytes"] == 3 * MIB and info["cached_blocks"] == 3
    assert info["evictions"] == 2                               # blocks 0 and 1
    assert fastconv.set_buffer_pool(MIB) == 3 * MIB             # lowering it evicts at once
    info = _info()
    assert info["cached_bytes"] == MIB and info["evictions"] == 4
    assert _buffers.empty((MIB,), np.uint8).ctypes.data == addresses[4]   # the newest stays


def test_bound_on_blocks():
    blocks = [_buffers.empty((_buffers.MIN_BYTES,), np.uint8) for _ in range(80)]
    del blocks
    info = _info()
    assert info["cached_blocks"] == info["max_blocks"] == 64
    assert info["evictions"] == 16


def test_block_larger_than_the_bound_is_not_kept():
    fastconv.set_buffer_pool(MIB)
    y = fastconv.relu(np.ones(2 * MIB // 4, dtype=np.float32))   # 2 MiB
    del y
    assert _info()["cached_bytes"] == 0


def test_disabled_pool_keeps_nothing():
    assert fastconv.set_buffer_pool(0) == _buffers.DEFAULT_MAX_BYTES
    y = fastconv.relu(np.ones(1 << 20, dtype=np.float32))
    del y
    info = _info()
    assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0


@pytest.mark.parametrize("bad", [-1, np.int64(-5), 2**63, 2**70])
def test_set_buffer_pool_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"set_buffer_pool: `max_bytes` must be >= 0"):
        fastconv.set_buffer_pool(bad)


@pytest.mark.parametrize("bad", [1.5, "1G", None, True])
def test_set_buffer_pool_rejects_non_integers(bad):
    with pytest.raises(TypeError, match=r"set_buffer_pool: `max_bytes` must be an int"):
        fastconv.set_buffer_pool(bad)


@pytest.mark.parametrize("text, expected", [("0", 0), ("1048576", MIB), ("256M", 256 * MIB),
                                            ("256MiB", 256 * MIB), ("1g", 1 << 30),
                                            (" 64 kb ", 64 << 10)])
def test_parse_size(text, expected):
    assert _buffers.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5G", "lots", "12T", "99999999999G"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size in bytes"):
        _buffers.parse_size(text)


def _max_bytes_in_subprocess(value):
    env = dict(os.environ, FASTCONV_BUFFER_POOL=value)
    code = ("import warnings; warnings.simplefilter('always');"
            "import fastconv; print(fastconv.buffer_pool_info()['max_bytes'])")
    # From the directory holding the package under test: from the repository root, `-c`
    # would import the (unbuilt) source tree instead.
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True,
                         cwd=os.path.dirname(os.path.dirname(fastconv.__file__)))
    return int(out.stdout.strip()), out.stderr


@pytest.mark.parametrize("value, expected", [("64M", 64 * MIB), ("0", 0)])
def test_environment_variable_sets_the_bound(value, expected):
    assert _max_bytes_in_subprocess(value) == (expected, "")


def test_bad_environment_variable_warns_and_keeps_the_default():
    max_bytes, stderr = _max_bytes_in_subprocess("plenty")
    assert max_bytes == _buffers.DEFAULT_MAX_BYTES
    assert "RuntimeWarning" in stderr and "FASTCONV_BUFFER_POOL='plenty'" in stderr


def test_concurrent_python_threads():
    # Allocation and free from several threads at once: no lost or doubled blocks.
    x = np.arange(1 << 18, dtype=np.float32) - (1 << 17)       # 1 MiB
    expected = reference.relu(x)
    errors = []

    def work():
        try:
            for _ in range(100):
                y = fastconv.relu(x, num_threads=1)
                if not np.array_equal(y, expected):
                    errors.append("wrong result")
                del y
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = _info()
    assert 1 <= info["cached_blocks"] <= 4
    assert info["cached_bytes"] == info["cached_blocks"] * x.nbytes
    assert info["hits"] + info["misses"] == 400
