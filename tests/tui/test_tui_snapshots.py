"""Text snapshots of the main screens against checked-in golden files (tests/tui/golden/), at a
wide terminal (every column of every table fits) and at 80x24 (the smallest usable one).

The synthetic source makes every run identical. After an intended change of a screen,
regenerate, review the diff, and run again:

    SMCTOP_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/tui/test_tui_snapshots.py

A regenerating run writes the files and then fails (so it never passes by accident in CI);
the next plain run compares against what was written.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from support.golden import VARIABLE, rewrite_and_fail, update_requested
from tuihelp import advance, make_app, run

GOLDEN = Path(__file__).parent / "golden"

SIZES = {"": (250, 40), "-80x24": (80, 24)}  # file suffix -> terminal size (wide: the connections' every column)

SCREENS = {
    # name: keys pressed after 3 s of traffic, a failover at 3 s and two more seconds
    "connections": ("2",),
    "links": ("1",),
    "events": ("3", "slash", *"link", "enter"),
    "fallbacks": ("4",),
    "performance": ("5",),
    "devices": ("6",),
    "stats": ("7",),
    "detail": ("2", "down", "down", "down", "enter"),
    "help": ("question_mark",),
}


def screen(keys: tuple[str, ...], size: tuple[int, int]) -> str:
    async def go():
        app, src = make_app(3, fallbacks=2)
        app.animation_level = "none"
        async with app.run_test(size=size) as pilot:
            await advance(app, pilot, src, 3)
            await pilot.press("f")
            await advance(app, pilot, src, 2)
            await pilot.press(*keys)
            await pilot.pause()
            app.query_one("#conns-table").refresh()
            await pilot.pause()
            return app.screen_text()

    return run(go())


def compare(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if update_requested():
        rewrite_and_fail(path, text)  # the project's one rule (tests/support/golden.py): write, then fail
    if not path.exists():
        pytest.fail(f"no golden file {path}; run with {VARIABLE}=1 to create it")
    want = path.read_text(encoding="utf-8")
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), f"golden/{name}.txt", "now"))
        pytest.fail(f"screen {name} differs from its golden file ({VARIABLE}=1 regenerates):\n{diff}")


@pytest.mark.parametrize("suffix", list(SIZES))
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen_matches_golden(name, suffix):
    compare(name + suffix, screen(SCREENS[name], SIZES[suffix]) + "\n")


def read(name: str) -> str:
    return (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")


def test_golden_screens_show_what_they_are_for():
    """The golden files themselves carry the content an operator looks for (not just any text)."""
    wide = {name: read(name) for name in SCREENS}
    assert "rxprod-Cursor" in wide["connections"] and "txcons-Cursor" in wide["connections"] and "SMCR" in wide["connections"]
    assert "SINGLE" in wide["links"] and "LINK_UNUSED" in wide["links"] and "3 connections moved in 4.0 ms" in wide["links"]
    assert "failover begins to link 2" in wide["events"] and "filter 'link'" in wide["events"]
    assert "0x03070000 DIFFPREFIX" in wide["fallbacks"] and "0x05000000 PEERDECL" in wide["fallbacks"]
    assert "why not SMC-R" in wide["fallbacks"]
    assert "Throughput" in wide["performance"] and "SMC-R handshake" in wide["performance"]
    assert "state timeline" in wide["detail"] and "received CDC seq" in wide["detail"]
    assert "start / stop traffic" in wide["help"]
    assert all(len(t.splitlines()) == SIZES[""][1] for t in wide.values())
    assert "…" not in wide["connections"].splitlines()[6]  # the header row of the table: every column title whole


def test_80x24_keeps_the_message_line_the_footer_and_the_important_columns():
    small = {name: read(name + "-80x24") for name in SCREENS}
    for name, text in small.items():
        lines = text.splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines), name
    main = small["connections"].splitlines()
    assert main[2].strip() == "beta: port of 127.30.0.2 pulled"  # the message line (the f key's feedback) is there
    assert "q Quit" in main[-1] and "f Fail link" in main[-1] and "palette" in main[-1]  # the footer: the first keys, whole
    head = next(line for line in main if line.startswith("Host"))
    for col in ("State", "Mode", "Rate", "Fill", "RMB", "Sent", "Recv"):  # the columns that matter, before the cut
        assert col in head, head
    assert "1.1 MB/s" in small["connections"] and "%" in small["connections"]
    assert "restore the failed link" in small["help"]  # the help fits its box (and scrolls for the rest)


def test_regenerating_writes_the_file_and_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "GOLDEN", tmp_path)
    monkeypatch.setenv(VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="rewritten|created"):
        compare("screen", "new text\n")
    assert (tmp_path / "screen.txt").read_text(encoding="utf-8") == "new text\n"
    monkeypatch.delenv(VARIABLE)
    compare("screen", "new text\n")  # the next plain run compares against what was written
    with pytest.raises(pytest.fail.Exception, match="differs"):
        compare("screen", "other text\n")
