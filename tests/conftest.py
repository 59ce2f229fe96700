"""Shared fixtures and the pytest header line that shows which fastconv is under test."""

import os

import hypothesis
import numpy as np
import pytest

import fastconv

# Hypothesis: deterministic in CI, bounded time, no deadline (2-core shared machines are noisy).
hypothesis.settings.register_profile(
    "fastconv", max_examples=60, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("FASTCONV_HYPOTHESIS_PROFILE", "fastconv"))


def pytest_report_header(config):
    cfg = fastconv.config()
    return (
        f"fastconv {cfg['version']} from {os.path.dirname(fastconv.__file__)} "
        f"(openmp={cfg['openmp']}, num_threads={cfg['num_threads']}, numpy {np.__version__})"
    )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def small_thread_thresholds(monkeypatch):
    """Let small test problems run on several threads: the blocked kernels' production
    thresholds keep calls of under millions of multiply-adds on one thread, which would leave
    thread-count tests comparing one thread with itself."""
    from fastconv import conv

    for name in ("BLOCKED_MACS_PER_THREAD", "BLOCKED_SPLIT_MACS_PER_THREAD",
                 "PLANES_MACS_PER_THREAD"):
        monkeypatch.setattr(conv, name, 1)
    # Launch plans are cached per shape: none made under the production thresholds may serve
    # the test, and none made under these may outlive it.
    conv._clear_launch_caches()
    yield
    conv._clear_launch_caches()
