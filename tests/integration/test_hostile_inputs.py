"""Issue #15's reader and command-line defects, each with the input that broke it:

3. a replay whose timestamps are nanoseconds (t >= 2**53, or infinite) hung smctop;
4. event records of the right JSON but the wrong types crashed summary, timeline and model;
5. the control socket took any fault attribute, NaN and Infinity, an unbounded queue, and
   died of deep nesting with a traceback;
6. a second stack given the same --control path took it over and deleted it at exit;
7. command lines that ended in a traceback, or accepted nan;
8. a recording shorter than a second never redrew (it stayed at "event 1/N").
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.stacks import ROOT, config, run

from dissectors.capture import read_events
from dissectors.recorder import Recorder
from dissectors.summary import render as render_summary
from dissectors.summary import summarize
from dissectors.timeline import timeline
from smctop.app import SmctopApp
from smctop.model import Model
from smctop.sources import ReplaySource, load_events
from smctop.synthetic import SyntheticStack
from stack.events import Event, Skipped, to_json
from stack.runtime.control import ControlClient, ControlServer

GOLDEN = Path(ROOT) / "tests" / "golden" / "session.jsonl"


def _cli(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# ---------------------------------------------------------------------------------------- 3: replay hang


@pytest.mark.timeout(20)
def test_a_clock_beyond_float_precision_does_not_hang_the_model():
    m = Model()
    for t in (2.0**53, 2.0**53 + 4096, 1.7e18, 1.7e18 + 1e9):
        m.advance(t)  # each returns: at most one sample a call once t + 1 s == t
    assert m.ticks >= 1


@pytest.mark.timeout(60)
def test_a_replay_in_nanoseconds_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "ns.jsonl"
    lines = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    path.write_text("".join(json.dumps({**d, "t": 1_700_000_000_000_000_000 + int(d["t"] * 1e9)}) + "\n" for d in lines))
    skipped = Skipped()
    assert load_events(str(path), skipped) == [] and skipped.count == len(lines)
    assert "t must be seconds" in skipped.summary()
    res = _cli("smctop.app", "--replay", str(path))
    assert res.returncode == 2 and "no events to replay" in res.stderr and "t must be seconds" in res.stderr, res.stderr
    inf = tmp_path / "inf.jsonl"
    inf.write_text('{"t": 1e999, "kind": "conn.error", "host": "h", "conn": 1, "reason": "x"}\n' + GOLDEN.read_text())
    skipped = Skipped()
    assert len(load_events(str(inf), skipped)) == len(lines) and skipped.count == 1


# ---------------------------------------------------------------------------------------- 4: records that crashed the readers

MUTATIONS = [
    ("conn", None), ("conn", "3"), ("conn", 1.5), ("lgr", 7), ("link", "1"), ("link", -1), ("rkey", 1.5), ("reason", {}),
    ("reason", [1]), ("length", "x"), ("length", -5), ("prod", 17), ("prod", "a:b"), ("fill", None), ("new", 3), ("event", 5),
    ("to_link", "two"), ("duration_ms", "fast"), ("mode", None), ("snapshot", {"conns": [{"conn": "x"}]}), ("host", 5), ("t", "1"),
    ("kind", 4), ("flags", "write_blocked"), ("peer_diagnosis", "x"), ("bytes_to_rcv", 2**70), ("role", ["client"]),
]  # fmt: skip


def _mutated() -> tuple[list[dict], int]:
    """The golden session with every mutation applied to every record that has the key (and
    to a few that do not): what the fuzzer found in captures and JSONL."""
    good = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    out, bad = [], 0
    for i, d in enumerate(good):
        out.append(d)
        for key, value in MUTATIONS:
            if key in d or i % 17 == 0:
                out.append({**d, key: value})
                bad += 1
    out.append({"t": 1.0, "kind": "stats", "host": "x", "snapshot": {"conns": [{"conn": None, "state": 5}], "lgrs": "no"}})
    return out, bad + 1


def _check_readers(events: list[Event]) -> None:
    s = summarize(events)
    assert render_summary(s) and json.dumps(s.to_dict())
    assert len(list(timeline(events))) == len(events)
    m = Model()
    m.feed_timed(sorted(events, key=lambda e: e.t))
    m.advance(max(e.t for e in events) + 5)
    assert m.totals()["events"] == len(events)


def test_bad_records_in_jsonl_are_counted_named_and_skipped(tmp_path):
    records, bad = _mutated()
    path = tmp_path / "mutated.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in records))
    skipped = Skipped()
    events = list(read_events(path, skipped))
    assert len(events) == len(records) - skipped.count and skipped.count >= bad * 0.8  # some mutations add a field the schema does not know: readers take those
    assert skipped.named[0].startswith("line ")
    _check_readers(events)
    smctop_skipped = Skipped()
    assert len(load_events(str(path), smctop_skipped)) == len(events) and smctop_skipped.count == skipped.count
    for cmd in ("summary", "decode"):
        res = _cli("dissectors.cli", cmd, str(path))
        assert res.returncode == 0 and "Traceback" not in res.stderr and "skipped" in res.stderr, res.stderr[-2000:]


def test_bad_records_in_a_capture_are_counted_named_and_skipped(tmp_path):
    records, _ = _mutated()
    path = tmp_path / "mutated.pcapng"
    rec = Recorder(str(path), interval=3600, clock_offset_ns=0)
    for d in records:
        ids = {k: d.get(k) for k in ("lgr", "link", "conn")}
        fields = {k: v for k, v in d.items() if k not in ("t", "kind", "host", "lgr", "link", "conn")}
        t = d.get("t") if type(d.get("t")) in (int, float) else 0.0
        rec.on_event(Event(t, d["kind"] if type(d.get("kind")) is str else "x", str(d.get("host")), fields=fields, **ids))
    st = rec.close()
    assert st.events > 0
    skipped = Skipped()
    events = list(read_events(path, skipped))
    assert events and skipped.count > 100 and skipped.named[0].startswith("pcapng block ")
    _check_readers(events)
    res = _cli("dissectors.cli", "summary", "--json", str(path))
    assert res.returncode == 0 and json.loads(res.stdout)["skipped"]["records"] == skipped.count, res.stderr[-2000:]


# ---------------------------------------------------------------------------------------- 5 and 6: the control socket


async def _ask(client: ControlClient, msgs, line: bytes) -> dict:
    client.writer.write(line + b"\n")
    await client.writer.drain()
    while True:
        m = await asyncio.wait_for(msgs.__anext__(), 10)
        if m["type"] in ("reply", "error"):
            return m


def test_control_commands_are_checked_and_never_a_traceback(tmp_path, capfd):
    path = str(tmp_path / "ctl.sock")
    bad = [
        (b'{"cmd": "faults", "device": "%s", "rng": 1}', "unknown faults ['rng']"),
        (b'{"cmd": "faults", "device": "%s", "delay": Infinity}', "Infinity is not a number"),
        (b'{"cmd": "faults", "device": "%s", "loss": NaN}', "NaN is not a number"),
        (b'{"cmd": "faults", "device": "%s", "delay": 1e400}', "delay must be seconds from 0 to 60"),
        (b'{"cmd": "faults", "device": "%s", "loss": 1.5}', "loss must be a probability"),
        (b'{"cmd": "faults", "device": "%s", "drop_next": 0.5}', "drop_next must be a whole number"),
        (b'{"cmd": "subscribe", "queue": 1e400}', "queue must be a whole number of events from 1 to 1,000,000"),
        (b'{"cmd": "subscribe", "queue": 1000000000}', "queue must be a whole number"),
        (b'{"cmd": "subscribe", "queue": 0}', "queue must be a whole number"),
        (b'{"cmd": "interval", "seconds": NaN}', "NaN is not a number"),
        (b'{"cmd": "interval", "seconds": 1e308}', "seconds must be a number >= 0"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b'{"cmd": "ping", "x": ' + b"[" * 10 + b"]" * 10 + b"}", "nested at most"),
        (b'{"cmd": ["ping"]}', "unknown command"),
        (b'{"cmd": "fail_link", "lgr": "x", "link": true}', "fail_link needs"),
    ]

    async def main():
        from stack.runtime import Stack

        dev = f"127.{random.randint(160, 205)}.{random.randint(0, 255)}.1"  # not addrs(): other test runs count from 127.100
        host = Stack(config("ctl", dev, control=path))
        await host.start()
        try:
            faults = host.rdma.devs[dev].device.faults
            before = dict(vars(faults)) if hasattr(faults, "__dict__") else None
            client = await ControlClient.connect(path)
            msgs = client.messages()
            answers = []
            for line, _ in bad:
                answers.append(await _ask(client, msgs, line.replace(b"%s", dev.encode()) if b"%s" in line else line))
            ok = await _ask(client, msgs, json.dumps({"cmd": "faults", "device": dev, "loss": 0.0, "delay": 0}).encode())
            sub = await _ask(client, msgs, b'{"cmd": "subscribe", "queue": 10}')
            pong = await _ask(client, msgs, b'{"cmd": "ping"}')
            after = dict(vars(faults)) if before is not None else None
            await client.close()
            return answers, ok, sub, pong, before, after
        finally:
            await host.close()

    answers, ok, sub, pong, before, after = run(main())
    for (line, words), answer in zip(bad, answers):
        assert answer["type"] == "error" and words in answer["error"], (line[:60], answer)
    assert ok["ok"] and sub["ok"] and pong["ok"]
    if before is not None:
        assert before.get("rng") is after.get("rng")  # untouched by the refused command
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_a_second_stack_cannot_take_a_control_path_over(tmp_path):
    path = str(tmp_path / "one.sock")

    async def main():
        first = ControlServer(None, path)
        await first.start()
        second = ControlServer(None, path)
        try:
            with pytest.raises(FileExistsError, match="in use"):
                await second.start()
            await second.close()  # must not remove the first one's socket
            probe = socket.socket(socket.AF_UNIX)
            probe.connect(path)
            probe.close()
        finally:
            await first.close()
        # a socket file nobody serves (a stack that died) is taken over
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        third = ControlServer(None, path)
        await third.start()
        await third.close()
        import os

        return os.path.exists(path)

    assert run(main()) is False


# ---------------------------------------------------------------------------------------- 7: command lines


@pytest.mark.parametrize("module,args,rc,words", [
    ("stack.traffic.cli", ["client", "--rmb-size", "8K"], 2, "buffers are 16K to 512M"),
    ("stack.traffic.cli", ["client", "--loss", "nan"], 2, "'nan' is not a finite number"),
    ("stack.traffic.cli", ["client", "--duration", "nan"], 2, "'nan' is not a finite number"),
    ("stack.traffic.cli", ["server", "--duration", "inf"], 2, "'inf' is not a finite number"),
    ("stack.traffic.cli", ["client", "--test-link", "nan"], 2, "not a finite number"),
    ("stack.traffic.cli", ["server", "--listen", "127.1.9.2:5000", "--control", "/missing/dir/x.sock", "--duration", "0.1"], 2,
     "control socket /missing/dir/x.sock"),
    ("dissectors.cli", ["export", str(GOLDEN), "--jsonl", "-o", "/nonexistent/x"], 2, "cannot write /nonexistent/x"),
    ("dissectors.cli", ["summary", "/dev/zero"], 1, "cannot read /dev/zero: not a regular file"),
    ("dissectors.cli", ["record", "-w", "/tmp/x.pcapng", "--attach", "/tmp", "--duration", "nan"], 2, "finite number"),
    ("smctop.app", ["--replay", "/dev/zero"], 2, "not a regular file"),
    ("smctop.app", ["--replay", str(GOLDEN), "--speed", "nan"], 2, "--speed nan: a finite number above 0"),
])  # fmt: skip
def test_command_lines_end_in_a_clear_error(module, args, rc, words):
    res = _cli(module, *args)
    assert res.returncode == rc and words in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]


# ---------------------------------------------------------------------------------------- 8: short replays


def test_a_replay_shorter_than_a_second_is_drawn_to_its_end(tmp_path):
    s = SyntheticStack(1)
    events = s.setup(100.0) + [Event(100.0 + i / 10, "conn.error", "alpha", conn=1, fields={"reason": f"x{i}"}) for i in range(5)]
    path = tmp_path / "short.jsonl"
    path.write_text("".join(to_json(e) + "\n" for e in events))
    clock = [0.0]

    async def go():
        src = ReplaySource(str(path), clock=lambda: clock[0])
        app = SmctopApp(src, poll_interval=3600)
        async with app.run_test(size=(160, 40)) as pilot:
            clock[0] += 1.0  # a second of wall time: the whole recording has played
            app.sync()  # as the app's timer calls it
            await pilot.pause()
            return src, app.screen_text()

    src, screen = run(go())
    assert src.done
    assert f"event {len(events)}/{len(events)}" in screen, screen
