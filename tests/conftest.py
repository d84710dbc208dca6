"""Every event any stack emits during the tests is held to the event schema (stack/events.py,
strictly: no field it does not declare); a test during which one did not match fails."""

from __future__ import annotations

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
