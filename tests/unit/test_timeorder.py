"""One time order across hosts and files for smc-trace decode, summary and export
(dissectors/timeorder.py): each host's events stay in their own order, the hosts
interleave by time, records a recording wrote late take their place, and files on
different clocks are refused with a message naming them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dissectors import cli
from dissectors.timeorder import ClockMismatch, clock_of, in_time_order, merged
from stack.events import from_json

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "session.jsonl"


def _lines() -> list[str]:
    return GOLDEN.read_text().splitlines()


def _by_host(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(json.loads(line)["host"], []).append(line)
    return out


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _shift(lines: list[str], dt: float) -> list[str]:
    out = []
    for line in lines:
        d = json.loads(line)
        d["t"] = round(d["t"] + dt, 9)
        out.append(json.dumps(d, sort_keys=True, separators=(",", ":")))
    return out


def test_a_stream_late_by_less_than_the_window_is_put_in_order_and_ties_keep_their_order() -> None:
    events = [from_json(line) for line in _lines()]
    rng = random.Random(7)
    shuffled = events[:]
    # move records up to 5 places later, as a late batch would arrive (times differ by ms here)
    for i in range(0, len(shuffled) - 5, 3):
        j = i + rng.randint(1, 5)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    assert [e.t for e in shuffled] != sorted(e.t for e in shuffled)
    out = list(in_time_order(shuffled, window=5.0))
    assert [e.t for e in out] == sorted(e.t for e in events)
    assert len(out) == len(events)
    # equal times keep the order they were met in
    for a, b in zip(out, out[1:]):
        if a.t == b.t:
            assert shuffled.index(a) < shuffled.index(b)


def test_a_record_later_than_the_window_comes_out_where_it_is_met_and_is_never_dropped() -> None:
    lines = _lines()[:40]
    late = from_json(lines[0])
    early = [from_json(x) for x in _shift(lines[1:20], 100.0)]
    later = [from_json(x) for x in _shift(lines[20:], 300.0)]
    out = list(in_time_order(early + later + [late], window=5.0))
    assert len(out) == 40
    # the 100 s records were written once the 300 s ones came; the late one goes out as met,
    # after them (not lost, not held for ever), and the 300 s ones still held follow it in order
    assert out[: len(early)] == sorted(early, key=lambda e: e.t)
    assert out[len(early)] is late
    assert out[len(early) + 1 :] == sorted(later, key=lambda e: e.t)


def test_two_hosts_files_make_one_timeline_each_host_in_its_own_order() -> None:
    hosts = _by_host(_lines())
    streams = [(h, [from_json(x) for x in lines]) for h, lines in hosts.items()]
    out = list(merged(streams))
    assert [e.t for e in out] == sorted(e.t for e in out)
    assert len(out) == sum(len(v) for v in hosts.values())
    for h, lines in hosts.items():
        assert [e.t for e in out if e.host == h] == [json.loads(x)["t"] for x in lines]
    # both hosts interleave: neither is printed as one block after the other
    first = [e.host for e in out[:20]]
    assert {"client", "server"} <= set(first)


def test_files_on_different_clocks_are_refused_naming_them() -> None:
    hosts = _by_host(_lines())
    wall = [from_json(x) for x in _shift(hosts["server"], 1.7e9)]
    mono = [from_json(x) for x in hosts["client"]]
    assert clock_of(wall[0].t) == "wall" and clock_of(mono[0].t) == "monotonic"
    with pytest.raises(ClockMismatch) as exc:
        list(merged([("client.jsonl", mono), ("server.pcapng", wall)]))
    assert "client.jsonl" in str(exc.value) and "server.pcapng" in str(exc.value)


def test_smc_trace_decode_export_and_summary_take_each_hosts_file(tmp_path, capsys) -> None:
    hosts = _by_host(_lines())
    c = _write(tmp_path / "client.jsonl", hosts["client"])
    # the server's file written with some records late, as an attached stack's batch can be
    srv = hosts["server"][:]
    srv[3], srv[8] = srv[8], srv[3]
    s = _write(tmp_path / "server.jsonl", srv)

    assert cli.main(["export", c, s, "--jsonl"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(out) == len(_lines())
    assert [d["t"] for d in out] == sorted(d["t"] for d in out)
    assert [json.dumps(d, sort_keys=True, separators=(",", ":")) for d in out if d["host"] == "client"] == hosts["client"]

    assert cli.main(["decode", c, s]) == 0
    text = capsys.readouterr().out.splitlines()
    times = [float(line.split()[0]) for line in text if line.strip()]
    assert times == sorted(times) and len(times) == len(_lines())

    assert cli.main(["summary", c, s, "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    whole = _write(tmp_path / "whole.jsonl", _lines())
    assert cli.main(["summary", whole, "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    # the two hosts' files say what the single recording of both says
    assert one["connections"] == both["connections"]
    assert set(one["roce"]) == {c, s}


def test_smc_trace_decode_of_files_on_different_clocks_is_a_clear_error(tmp_path, capsys) -> None:
    hosts = _by_host(_lines())
    c = _write(tmp_path / "client.jsonl", hosts["client"])
    s = _write(tmp_path / "server.jsonl", _shift(hosts["server"], 1.7e9))
    assert cli.main(["decode", c, s]) == 1
    err = capsys.readouterr().err
    assert "smc-trace: error:" in err and "time since boot" in err and "Traceback" not in err
    assert c in err and s in err


def test_a_damaged_file_gives_what_it_read_and_its_error_comes_after_every_other_files_events() -> None:
    hosts = _by_host(_lines())
    good = [from_json(x) for x in hosts["client"]]
    part = [from_json(x) for x in hosts["server"][:30]]

    def damaged():
        yield from part
        raise ClockMismatch("block 31: damaged")  # any CaptureError a reader raises

    out = []
    with pytest.raises(ClockMismatch, match="block 31"):
        for e in merged([("client", good), ("server", damaged())]):
            out.append(e)
    assert len(out) == len(good) + len(part)
    assert [e.t for e in out] == sorted(e.t for e in out)


def test_recordings_of_hosts_that_booted_apart_line_up_by_the_wall_clock(tmp_path, capsys):
    """Each recording's events carry its host's time since boot; a host that booted 5,000 s
    earlier used to have all its events 5,000 s later in the merged timeline. The records'
    wall-clock stamps put both on one clock: a Proposal is received after it was sent."""
    from dissectors.recorder import Recorder
    from stack.events import Event

    wall = 1_765_000_000 * 10**9  # the same wall-clock instant on both hosts
    steps = {"a": [(100.000, "sent"), (100.004, "received")], "b": [(5100.002, "received"), (5100.003, "sent")]}
    for host, boot_ago in (("a", 100), ("b", 5100)):
        rec = Recorder(str(tmp_path / f"{host}.pcapng"), clock_offset_ns=wall - boot_ago * 10**9, native=False)
        for t, what in steps[host]:
            rec.on_event(Event(t, "conn.state", host, None, None, 1, {"old": "INIT", "new": "ACTIVE", "cause": what}))
        rec.close()
    assert cli.main(["decode", "--json", str(tmp_path / "a.pcapng"), str(tmp_path / "b.pcapng")]) == 0
    order = [(e["host"], e["cause"]) for e in map(json.loads, capsys.readouterr().out.splitlines())]
    assert order == [("a", "sent"), ("b", "received"), ("b", "sent"), ("a", "received")]


def test_a_recording_and_a_packet_capture_of_another_tool_share_the_wall_clock(tmp_path, capsys):
    """A recording's events count its host's time since boot, with the wall clock beside
    them; a tcpdump capture counts wall-clock time. They were refused as a JSONL and a
    recording; the recording is put on the wall clock instead."""
    from dissectors.recorder import Recorder
    from dissectors.timeorder import WallOffset
    from stack.events import Event

    wall0 = 1_765_000_000.0
    offset = WallOffset()
    offset.offset = wall0 - 100.0  # the host booted 100 s before wall0
    state = {"old": "INIT", "new": "ACTIVE"}
    rec = [
        Event(100.000, "conn.state", "a", None, None, 1, {**state, "cause": "first"}),
        Event(100.004, "conn.state", "a", None, None, 1, {**state, "cause": "third"}),
    ]
    capture = [Event(wall0 + 0.002, "conn.state", "b", None, None, 1, {**state, "cause": "second"})]
    out = list(merged([("a.pcapng", rec, offset), ("live.pcap", capture)]))
    assert [e.get("cause") for e in out] == ["first", "second", "third"]
    assert all(clock_of(e.t) == "wall" for e in out) and abs(out[0].t - wall0) < 1e-6
    # through the command: a recording of ours beside a foreign capture's events on the wall clock
    r = Recorder(str(tmp_path / "a.pcapng"), clock_offset_ns=int((wall0 - 100.0) * 1e9), native=False)
    for e in rec:
        r.on_event(e)
    r.close()
    foreign = _write(tmp_path / "b.jsonl", [json.dumps({"t": wall0 + 0.002, "kind": "conn.state", "host": "b", "conn": 1, **state, "cause": "second"})])
    assert cli.main(["decode", "--json", str(tmp_path / "a.pcapng"), foreign]) == 0
    assert [json.loads(x)["cause"] for x in capsys.readouterr().out.splitlines()] == ["first", "second", "third"]
