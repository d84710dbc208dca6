"""Text snapshots of the main screens against checked-in golden files (tests/tui/golden/).

The synthetic source makes every run identical. After an intended change of a screen,
regenerate and review the diff:

    SMCTOP_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/tui/test_tui_snapshots.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from tuihelp import SIZE, advance, make_app, run

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("SMCTOP_REGEN_GOLDEN") == "1"

SCREENS = {
    # name: keys pressed after 3 s of traffic, a failover at 3 s and two more seconds
    "connections": ("2",),
    "links": ("1",),
    "events": ("3", "slash", *"link", "enter"),
    "fallbacks": ("4",),
    "performance": ("5",),
    "detail": ("2", "down", "down", "down", "enter"),
    "help": ("question_mark",),
}


def screen(keys: tuple[str, ...]) -> str:
    async def go():
        app, src = make_app(3, fallbacks=2)
        app.animation_level = "none"
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 3)
            await pilot.press("f")
            await advance(app, pilot, src, 2)
            await pilot.press(*keys)
            await pilot.pause()
            app.query_one("#conns-table").refresh()
            await pilot.pause()
            return app.screen_text()

    return run(go())


@pytest.mark.parametrize("name", list(SCREENS))
def test_screen_matches_golden(name):
    text = screen(SCREENS[name]) + "\n"
    path = GOLDEN / f"{name}.txt"
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"no golden file {path}; run with SMCTOP_REGEN_GOLDEN=1 to create it")
        path.write_text(text, encoding="utf-8")
        return
    want = path.read_text(encoding="utf-8")
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), f"golden/{name}.txt", "now"))
        pytest.fail(f"screen {name} differs from its golden file (SMCTOP_REGEN_GOLDEN=1 regenerates):\n{diff}")


def test_golden_screens_show_what_they_are_for():
    """The golden files themselves carry the content an operator looks for (not just any text)."""
    read = {name: (GOLDEN / f"{name}.txt").read_text(encoding="utf-8") for name in SCREENS}
    assert "rxprod-Cursor" in read["connections"] and "SMCR" in read["connections"]
    assert "SINGLE" in read["links"] and "LINK_UNUSED" in read["links"] and "3 connections moved in 4.0 ms" in read["links"]
    assert "failover begins to link 2" in read["events"] and "filter 'link'" in read["events"]
    assert "0x03070000 DIFFPREFIX" in read["fallbacks"] and "0x05000000 PEERDECL" in read["fallbacks"]
    assert "Throughput" in read["performance"] and "SMC-R handshake" in read["performance"]
    assert "state timeline" in read["detail"] and "received CDC seq" in read["detail"]
    assert "start / stop traffic" in read["help"]
    assert all(len(t.splitlines()) == SIZE[1] for t in read.values())
