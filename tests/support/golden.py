"""Golden files, one rule for all of them: SMCTOP_UPDATE_GOLDEN=1 rewrites a golden file and
then FAILS the test, so a regenerated golden never passes silently; review the diff
(git diff tests/) and run again without the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VARIABLE = "SMCTOP_UPDATE_GOLDEN"


def update_requested() -> bool:
    return os.environ.get(VARIABLE) == "1"


def rewrite_and_fail(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and fail, saying whether anything changed."""
    old = path.read_text(encoding="utf-8") if path.exists() else None
    path.write_text(text, encoding="utf-8")
    what = "unchanged" if old == text else ("created" if old is None else "rewritten")
    pytest.fail(f"{VARIABLE}=1: golden file {path} {what}; review `git diff {path}` and run again without {VARIABLE}", pytrace=False)
