"""A large recording is read on a thread while smctop's screen is up (issue 17: replays
that start right): the header says it is being read, q works, the replay begins when the
file is read, and a file that cannot be replayed ends smctop with the reason, as a small
one does at start. Small files and --once still read the file before anything else."""

from __future__ import annotations

import threading
from pathlib import Path

from tuihelp import SIZE, run

import smctop.app as app_mod
import smctop.sources as sources
from smctop.app import SmctopApp, build_source, parse_args
from smctop.sources import ReplaySource

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "session.jsonl"


def _slow_loader(monkeypatch) -> threading.Event:
    """load_events held until the test lets it go, to see the app while the file is read."""
    go = threading.Event()
    real = sources.load_events

    def held(path, skipped=None):
        assert go.wait(30)
        return real(path, skipped)

    monkeypatch.setattr(sources, "load_events", held)
    return go


def _large(monkeypatch) -> None:
    monkeypatch.setattr(sources, "LOAD_IN_BACKGROUND", 1)
    monkeypatch.setattr(app_mod, "LOAD_IN_BACKGROUND", 1)


def test_a_large_recording_is_read_with_the_screen_up_and_then_replayed(monkeypatch, tmp_path):
    _large(monkeypatch)
    go = _slow_loader(monkeypatch)
    args, ap = parse_args(["--replay", str(GOLDEN), "--speed", "1000"])
    src = build_source(args, ap)
    assert isinstance(src, ReplaySource) and not src.events  # nothing read yet: build_source returned at once

    async def main():
        app = SmctopApp(src, poll_interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.3)
            header = "\n".join(app.screen_text().splitlines()[:3])
            assert src.loading and "reading" in header and "q quits" in header
            assert src.step(app.model) is None and not src.done  # keys while reading do nothing
            src.paused = False
            go.set()
            for _ in range(100):
                await pilot.pause(0.05)
                if src.done:
                    break
            assert not src.loading and src.done
            assert len(src.events) == len(GOLDEN.read_text().splitlines())
            assert app.model.conns  # the replay fed the model
            assert app.status.startswith("the replay reached its end: ")  # read, played, and said so

    run(main())


def test_a_large_file_that_cannot_be_replayed_ends_smctop_with_the_reason(monkeypatch, tmp_path):
    _large(monkeypatch)
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\xff" * 64)  # a section header block with a broken length
    args, ap = parse_args(["--replay", str(bad)])
    src = build_source(args, ap)

    async def main():
        app = SmctopApp(src, poll_interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if app.return_code is not None:
                    break
        return app

    app = run(main())
    assert app.return_code == 1
    assert src.fatal and str(bad) in src.fatal


def test_once_and_small_files_are_read_before_the_source_is_returned(monkeypatch):
    args, ap = parse_args(["--replay", str(GOLDEN)])
    assert build_source(args, ap).events  # under the threshold: read at once
    _large(monkeypatch)
    args, ap = parse_args(["--replay", str(GOLDEN), "--once"])
    assert build_source(args, ap).events  # --once prints the end state: it reads first


def test_a_compressed_recording_is_weighed_by_what_it_decompresses_to(monkeypatch, tmp_path):
    """A 3 MB .pcap.gz decompresses to tens of megabytes: weighed by its own size it was read
    before the screen came up, which then stayed blank for as long."""
    import gzip

    small = tmp_path / "session.jsonl.gz"
    small.write_bytes(gzip.compress(GOLDEN.read_bytes()))
    size = small.stat().st_size
    assert sources.load_cost(str(small)) == size * sources.COMPRESSION_GUESS
    assert sources.load_cost(str(GOLDEN)) == GOLDEN.stat().st_size  # a plain file: its size
    monkeypatch.setattr(sources, "LOAD_IN_BACKGROUND", size * 2)
    monkeypatch.setattr(app_mod, "LOAD_IN_BACKGROUND", size * 2)
    args, ap = parse_args(["--replay", str(small)])
    src = build_source(args, ap)
    assert isinstance(src, ReplaySource) and not src.events  # to be read on a thread with the screen up
    args, ap = parse_args(["--replay", str(small), "--once"])
    assert len(build_source(args, ap).events) == len(GOLDEN.read_text().splitlines())  # --once reads it first
