"""Lab tests: ``lab`` ones boot VMs from the host; ``lab_guest`` ones run inside a VM only."""

import os
from pathlib import Path

import pytest
from lab import GUEST_ENV

IN_GUEST = bool(os.environ.get(GUEST_ENV))
HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_guest: runs inside a lab VM (started by a `lab` test on the host)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # On the host a lab_guest test has no device; the `lab` test that boots its VM covers it.
    wrong = [
        i for i in items
        if HERE in i.path.parents and (i.get_closest_marker("lab_guest") is not None) != IN_GUEST
    ]  # fmt: skip
    if wrong:
        config.hook.pytest_deselected(items=wrong)
        items[:] = [i for i in items if i not in wrong]
