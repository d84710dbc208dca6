"""Every event any stack emits during the tests is held to the event schema (stack/events.py,
strictly: no field it does not declare); a test during which one did not match fails."""

from __future__ import annotations

import os

import pytest

from stack import events


def pytest_configure(config) -> None:
    events.check_emitted(True)


@pytest.fixture(autouse=True)
def _events_match_the_schema():
    before = len(events.emit_errors)
    yield
    new = events.emit_errors[before:]
    if new:
        del events.emit_errors[before:]
        pytest.fail("events that do not match the schema (stack/events.py):\n  " + "\n  ".join(sorted(set(new))[:20]), pytrace=False)


# Under CI (the CI variable set, as CI services do and .ci/run does) a test that skips because
# root, tshark, tmux or the lab is missing is a failure: the machine was meant to have them, and a
# dot would let a whole group go untested without anyone noticing. Elsewhere it stays a skip.
_CI_NEEDS = ("root", "tshark", "pyshark", "tmux", "lab", "qemu", "network namespace")


def _needs_the_environment(item, reason: str) -> bool:
    if item.get_closest_marker("lab") is not None or item.get_closest_marker("oracle") is not None:
        return True
    if "tests/lab/" in item.nodeid or "tests/oracle/" in item.nodeid:
        return True
    low = reason.lower()
    return any(word in low for word in _CI_NEEDS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("", "0", "false", "no") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if _needs_the_environment(item, reason):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which counts as a failure (CI={os.environ['CI']!r}): {reason}"
