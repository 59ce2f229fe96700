"""The README's tour runs as written, and its test command is the one CI runs."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CI_SCRIPT = README.parent / ".ci" / "run"

pytestmark = pytest.mark.skipif(not README.exists(), reason="README.md is not beside tests/")


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_tour_runs():
    blocks = _blocks("python")
    assert blocks, "README.md has no python block"
    namespace = {}   # the blocks are one tour: later ones use names defined earlier
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_starts_with_the_two_setup_commands():
    first = _blocks("bash")[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].endswith("python -m fastconv demo && python -m fastconv train")
    assert first[1].endswith("pytest")
    # .ci/run reads the test command from the README, so the two cannot drift apart.
    assert "grep -m1 -E '^python3 -m venv \\.venv .*pytest' README.md" in CI_SCRIPT.read_text()
