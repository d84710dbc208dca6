"""The smc-trace command: record around a command and attached to a running stack's control
socket, decode with filters, summary, export, install-plugin, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.stacks import ROOT, TrafficServer, addrs, traffic_client, wait_for
from support.traces import DIFFPREFIX, record_session

from dissectors.capture import read_events
from stack.events import to_json


def trace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dissectors.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "run.pcapng"
    record_session(path, fallback=True)
    return path


def test_record_around_a_command_captures_its_stack_from_the_first_event(tmp_path):
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "2")
    out = tmp_path / "cmd.pcapng"
    try:
        res = trace("record", "-w", str(out), "--", sys.executable, "-m", "stack.traffic.cli", "client", "--connect", f"{sa}:5000",
                    "--device", ca, "--mode", "bulk", "--bytes", "1M", "--connections", "2", "--json", "--no-progress")  # fmt: skip
    finally:
        server.report()
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verified"] == 2  # the command's own output passes through
    assert "events" in res.stderr and "DROPPED" not in res.stderr
    summary = json.loads(trace("summary", "--json", str(out)).stdout)
    conns = [c for c in summary["conns"] if c["role"] == "client"]
    assert len(conns) == 2 and all(c["mode"] == "SMCR" and c["bytes_written"] >= 1 << 20 for c in conns)
    kinds = {e.kind for e in read_events(out)}
    assert {"conn.open", "clc.msg", "lgr.state", "link.state", "llc.msg", "cdc.msg", "rdma.write", "conn.state"} <= kinds


def _recording_started(path: Path) -> bool:
    try:
        return any(e.kind == "stats" and e.get("cause") == "recording started" for e in read_events(path))
    except Exception:  # the file is being written: not yet
        return False


def test_record_attached_to_a_running_stack(tmp_path):
    ca, sa = addrs()
    sock = tmp_path / "server.sock"
    server = TrafficServer(sa, "--control", str(sock), "--count", "1", "--decline", "DIFFPREFIX")
    out = tmp_path / "attach.pcapng"
    try:
        assert wait_for(sock.exists, 10)
        rec = subprocess.Popen([sys.executable, "-m", "dissectors.cli", "record", "-w", str(out), "--attach", str(sock), "--duration", "20"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
        # the recorder is attached once its first record (the stack's state when it subscribed) is in the file
        assert wait_for(lambda: _recording_started(out), 60), "the recorder never wrote the stack's starting state"
        rc, report, err = traffic_client(sa, ca, "--mode", "rr", "--count", "5")
        assert rc == 0, err
        assert report["modes"] == {"TCP": 1}
        server.report()
        _, err = rec.communicate(timeout=30)  # the stack closing ends the recording
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert rec.returncode == 0, err
    events = list(read_events(out))
    fb = [e for e in events if e.kind == "conn.fallback"]
    assert [e.get("reason") for e in fb] == [DIFFPREFIX] and fb[0].host == "server"
    decline = [e for e in events if e.kind == "clc.msg" and e.get("type") == "Decline"]
    assert len(decline) == 1


def test_decode_filters_and_json(recorded):
    res = trace("decode", str(recorded), "--conn", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines and all("C3" in line.split()[2] for line in lines)
    fb = trace("decode", str(recorded), "--kind", "conn.fallback").stdout.splitlines()
    assert len(fb) == 2 and all("0x03070000 DIFFPREFIX" in line for line in fb)  # the server's reason, and the client's peer diagnosis
    js = [json.loads(x) for x in trace("decode", str(recorded), "--kind", "link,lgr", "--json").stdout.splitlines()]
    assert js and {d["kind"] for d in js} <= {"link.state", "link.event", "lgr.state"}


def test_filters_repeat_take_any_case_and_refuse_an_empty_list(recorded):
    """A filter given twice is both (it kept only the last); a link group id matches in any
    case (hex is easy to type in capitals); an empty list names nothing and is refused (it
    said the file held no events)."""
    both = trace("decode", str(recorded), "--conn", "1", "--conn", "3", "--kind", "conn.open", "--kind", "conn.mode")
    joined = trace("decode", str(recorded), "--conn", "1,3", "--kind", "conn.open,conn.mode")
    assert both.returncode == 0 and both.stdout == joined.stdout
    assert {line.split()[2][-2:] for line in both.stdout.splitlines()} == {"C1", "C3"}
    assert {line.split()[3] for line in both.stdout.splitlines()} == {"conn.open", "conn.mode"}
    lgr = next(json.loads(x)["lgr"] for x in trace("decode", str(recorded), "--kind", "lgr", "--json").stdout.splitlines())
    lower, upper = (trace("decode", str(recorded), "--lgr", x, "--kind", "lgr").stdout for x in (lgr, lgr.upper()))
    assert lower and lower == upper
    for option in ("--conn", "--link", "--lgr", "--host"):
        for value in ("", ","):
            res = trace("decode", str(recorded), option, value)
            assert res.returncode == 2 and f"{option} {value!r} names nothing" in res.stderr and "no events in" not in res.stderr, res.stderr


def test_a_filter_that_matches_nothing_says_why(recorded):
    """An empty timeline is not left unexplained: a host or connection the capture does not
    have is named with those it has; options that each match but not together are told so."""
    res = trace("decode", str(recorded), "--host", "nope,client")
    assert res.returncode == 0 and res.stdout and "no event matched" not in res.stderr  # client matches
    res = trace("decode", str(recorded), "--host", "nope", "--conn", "3,99", "--json")
    assert res.returncode == 0 and res.stdout == ""
    assert "smc-trace: no event matched: --host nope: not in the capture (it has client, server)" in res.stderr, res.stderr
    res = trace("decode", str(recorded), "--conn", "99")
    assert "--conn 99: not in the capture (it has 1, 2, 3)" in res.stderr, res.stderr
    res = trace("decode", str(recorded), "--conn", "3", "--kind", "llc.msg")
    assert res.stdout == "" and "each option matches events, but no event matches all of them together" in res.stderr
    res = trace("decode", str(recorded), "--kind", "conn.urgent")  # a kind the schema has, the capture not
    assert res.stdout == "" and "--kind conn.urgent: the capture has no such events" in res.stderr, res.stderr


def test_a_capture_without_smc_says_so_instead_of_printing_nothing(tmp_path):
    """A pcap with only its header (or a capture of traffic that never was SMC): decode
    names the file and what it did not find; summary's first line ends where its words do."""
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    for args in ((), ("--json",)):
        res = trace("decode", str(empty), *args)
        assert res.returncode == 0 and res.stdout == "", res
        assert f"smc-trace: no events in {empty}: no SMC handshake, RoCEv2 frame or event record in it" in res.stderr, res.stderr
    res = trace("summary", str(empty))
    assert res.returncode == 0 and res.stdout.splitlines()[0] == "0 events over 0.000 s; connections: 0", res.stdout


def test_export_jsonl_reads_back_as_the_same_events(recorded, tmp_path):
    out = tmp_path / "events.jsonl"
    assert trace("export", str(recorded), "--jsonl", "-o", str(out)).returncode == 0
    assert [to_json(e) for e in read_events(out)] == [to_json(e) for e in read_events(recorded)]


def test_summary_text_names_modes_and_reasons(recorded):
    text = trace("summary", str(recorded)).stdout
    assert "connections: 3 (6 ends) SMCR=2 TCP=1" in text  # each connection once, both its ends in the trace
    assert "Fallbacks: 0x03070000 DIFFPREFIX x1, 0x05000000 PEERDECL x1" in text


def test_a_truncated_capture_prints_what_it_read_then_the_error(recorded, tmp_path):
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(recorded.read_bytes()[: recorded.stat().st_size // 2])
    res = trace("decode", str(cut))
    assert res.returncode == 1
    assert res.stdout.count("\n") > 10
    assert "smc-trace: error: pcapng block" in res.stderr and "byte offset" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["record", "-w", "/tmp/x.pcapng"], "record needs a command after -- or --attach SOCKET"),
    (["record", "-w", "/tmp/x.pcapng", "--attach", "/nonexistent.sock"], "no control socket at /nonexistent.sock"),
    (["decode", "/dev/null", "--conn", "x"], "comma-separated list of numbers"),
    (["export", "/dev/null"], "the following arguments are required: --jsonl"),
    (["frobnicate"], "invalid choice"),
])  # fmt: skip
def test_bad_arguments_exit_2_with_a_message(args, message):
    res = trace(*args)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_missing_and_foreign_files_exit_1():
    res = trace("summary", "/nonexistent.pcapng")
    assert res.returncode == 1 and "cannot read /nonexistent.pcapng" in res.stderr
    res = trace("summary", "/etc/hostname")
    assert res.returncode == 1 and "not a pcap or pcapng file" in res.stderr


def test_install_plugin_copies_the_lua_plugin(tmp_path):
    res = trace("install-plugin", "--dir", str(tmp_path / "plugins"))
    assert res.returncode == 0, res.stderr
    installed = tmp_path / "plugins" / "smctop.lua"
    assert installed.read_bytes() == (Path(ROOT) / "dissectors" / "wireshark" / "smctop.lua").read_bytes()


def test_summary_prints_the_recorders_dropped_line_with_its_exact_counts(tmp_path):
    """A recorder that had to drop (a 20-item queue) says so, with the numbers it counted."""
    path = tmp_path / "drops.pcapng"
    _, stats = record_session(path, max_pending=20)
    assert stats.dropped_events + stats.dropped_frames > 0
    res = trace("summary", str(path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1] == f"DROPPED while recording: {stats.dropped_events} events, {stats.dropped_frames} frames", lines[:3]
    clean = tmp_path / "clean.pcapng"
    record_session(clean)
    assert "DROPPED" not in trace("summary", str(clean)).stdout  # and a recording that dropped nothing does not
