"""The tree is clean under the linter and the formatter configured in pyproject.toml (ruff):
the test command fails on a new lint error or an unformatted file, so style never drifts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ruff() -> str:
    exe = Path(sys.executable).with_name("ruff")
    found = str(exe) if exe.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (scripts/setup.sh installs it with the test dependencies)")
    return found


def test_ruff_finds_no_lint_error():
    res = subprocess.run([_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_file_is_formatted():
    res = subprocess.run([_ruff(), "format", "--no-cache", "--check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "run: .venv/bin/ruff format .\n" + res.stdout + res.stderr
