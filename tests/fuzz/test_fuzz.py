"""The fuzz harness (tests/fuzz/harness.py), briefly: every target (capture readers, event
readers, the control socket both ways, the three command lines) on its kept corpus and a few
thousand mutations of it; no crash. SMCTOP_FUZZ_INPUTS sets how many (a long run: the
harness's own command line)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

INPUTS = int(os.environ.get("SMCTOP_FUZZ_INPUTS", "3000"))


@pytest.mark.parametrize("target", sorted(harness.TARGETS))
def test_no_crash(target):
    r = harness.run(target, inputs=INPUTS, seed=int(os.environ.get("SMCTOP_FUZZ_SEED", "0")), save=False)
    assert r.inputs >= INPUTS and not r.crashes, "\n".join(r.crashes)


def test_the_corpus_is_kept():
    for target in harness.TARGETS:
        assert any((harness.CORPUS / target).iterdir()), target
