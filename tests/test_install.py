"""The suite tests the installed package when CI asks it to, not the source tree."""

import os
import pathlib

import pytest

import fastconv

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    os.environ.get("FASTCONV_REQUIRE_INSTALLED") != "1",
    reason="set FASTCONV_REQUIRE_INSTALLED=1 to require an installed fastconv (CI does)",
)
def test_fastconv_under_test_is_installed_not_the_source_tree():
    location = pathlib.Path(fastconv.__file__).resolve().parent
    assert location != REPO / "fastconv", f"testing the source tree at {location}"
    assert "site-packages" in location.parts, f"fastconv imported from {location}"


def test_compiled_kernels_are_importable():
    from fastconv._kernels import _conv, _im2col, _openmp, _pool, _relu  # noqa: F401

    assert pathlib.Path(_conv.__file__).suffix in (".so", ".pyd")
