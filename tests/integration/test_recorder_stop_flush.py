"""smc-trace record as an operator uses it (issue 17 item 1): it stops when told (Ctrl-C,
SIGTERM, --duration) even while a busy stack streams without a pause, the stacks hand it
what they still hold when they close, and whatever is lost (a stack killed, a line cut in
half, a stack's full queue) is counted at its source and named in ``summary``, never a
traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.fakestack import FakeStack
from support.stacks import ROOT, TrafficServer, addrs, wait_for

from dissectors.capture import read_events
from dissectors.pcapng import read_packets
from dissectors.recorder import WRITE_SNAP
from stack.events import Event, Skipped, to_dict

PY = sys.executable


def trace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "dissectors.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def summary(path: Path) -> dict:
    res = trace("summary", "--json", str(path))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout)


def client(sa: str, ca: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "stack.traffic.cli", "client", "--connect", f"{sa}:5000", "--device", ca, "--json", "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip


def _grown(path: Path, size: int) -> bool:
    return path.exists() and path.stat().st_size > size


@pytest.fixture
def busy(tmp_path):
    """A server with a control socket and a client moving bulk data to it for minutes: a
    stream of events and frames that never pauses for the recorder."""
    ca, sa = addrs()
    sock = tmp_path / "server.sock"
    server = TrafficServer(sa, "--control", str(sock))
    assert wait_for(sock.exists, 10)
    cl = client(sa, ca, "--mode", "bulk", "--duration", "600")
    yield sock
    for p in (cl, server.proc):
        if p.poll() is None:
            p.kill()
            p.wait()


def _check_capture(out: Path) -> list[Event]:
    skipped = Skipped()
    events = list(read_events(out, skipped))
    assert not skipped, skipped.summary()
    kinds = {e.kind for e in events}
    assert {"stats", "cdc.msg"} <= kinds, kinds
    return events


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_an_attached_recording_of_a_busy_stack(busy, tmp_path, sig):
    out = tmp_path / "busy.pcapng"
    rec = subprocess.Popen([PY, "-m", "dissectors.cli", "record", "-w", str(out), "--attach", str(busy)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert wait_for(lambda: _grown(out, 300_000), 120), "the recording never got going"
    rec.send_signal(sig)
    try:
        _, err = rec.communicate(timeout=60)  # bounded: the stream goes on for minutes
    except subprocess.TimeoutExpired:
        rec.kill()
        pytest.fail(f"smc-trace record ignored {sig.name} while the stack kept streaming")
    assert rec.returncode == 0, err
    assert "Traceback" not in err and "events" in err
    _check_capture(out)


def test_duration_stops_an_attached_recording_of_a_busy_stack(busy, tmp_path):
    out = tmp_path / "duration.pcapng"
    res = trace("record", "-w", str(out), "--attach", str(busy), "--duration", "3", timeout=90)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    events = _check_capture(out)
    assert max(e.t for e in events) - min(e.t for e in events) < 30  # it stopped, not the stack


def test_a_command_recording_keeps_the_tail_and_cuts_write_payloads(tmp_path):
    """The client moves 32 MiB and exits: the capture has the connection CLOSED with every
    byte, no drop; RDMA WRITE frames are cut to the default snap length (their length on
    the wire kept), so the capture is a small fraction of the bytes moved."""
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "1")
    out = tmp_path / "bulk.pcapng"
    try:
        res = trace("record", "-w", str(out), "--", PY, "-m", "stack.traffic.cli", "client", "--connect", f"{sa}:5000", "--device", ca,
                    "--mode", "bulk", "--bytes", "32M", "--json", "--no-progress", timeout=300)  # fmt: skip
        server.report()
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert json.loads(res.stdout)["verified"] == 1
    assert f"RDMA WRITE frames cut to {WRITE_SNAP} bytes" in res.stderr and "DROPPED" not in res.stderr and "LOST" not in res.stderr
    s = summary(out)
    assert s["dropped"]["events"] == 0 and s["dropped"]["frames"] == 0 and s["dropped"]["by"] == []
    assert s["skipped"]["records"] == 0
    (conn,) = s["conns"]
    assert conn["state"] == "CLOSED" and conn["mode"] == "SMCR"
    assert conn["bytes_written"] >= 32 << 20
    writes = [p for p in read_packets(out.read_bytes()) if p.interface == 0 and len(p.data) > 42 and p.data[42] in (0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B)]
    assert writes and all(len(p.data) <= 42 + WRITE_SNAP for p in writes)
    assert sum(p.original_length - 42 for p in writes) >= 32 << 20  # the bytes on the wire are all accounted for
    assert out.stat().st_size < 16 << 20  # 32 MiB moved: a fraction of it recorded


def test_a_killed_stack_is_named_as_a_lost_tail(busy, tmp_path):
    out = tmp_path / "killed.pcapng"
    rec = subprocess.Popen([PY, "-m", "dissectors.cli", "record", "-w", str(out), "--attach", str(busy), "--duration", "300"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert wait_for(lambda: _grown(out, 300_000), 120)
    pid = int(next(p for p in os.listdir("/proc") if p.isdigit() and _is_server(p, busy)))
    os.kill(pid, signal.SIGKILL)
    _, err = rec.communicate(timeout=120)
    assert rec.returncode == 0 and "Traceback" not in err, err
    assert "LOST before the recorder" in err and "end line" in err
    s = summary(out)
    (src,) = [d for d in s["dropped"]["by"] if d["by"].endswith("control socket")]
    assert "without the stack's end line" in src["why"]
    text = trace("summary", str(out)).stdout
    assert "DROPPED while recording" in text and "without the stack's end line" in text


def _is_server(pid: str, sock: Path) -> bool:
    try:
        return str(sock).encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and b"server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _event_line(e: Event) -> bytes:
    return json.dumps({"type": "event", "event": to_dict(e)}).encode() + b"\n"


def test_a_line_cut_in_half_and_source_drops_are_named_not_a_traceback(tmp_path):
    sock = tmp_path / "fake.sock"
    open_ = Event(1.0, "conn.open", "fake", conn=1, fields={"role": "client", "local": "10.0.0.1:1000", "peer": "10.0.0.2:5000"})
    dropped = Event(1.5, "events.dropped", "fake", fields={"count": 7})
    whole = _event_line(Event(2.0, "conn.state", "fake", conn=1, fields={"old": "INIT", "new": "ACTIVE"}))
    FakeStack(sock, [b'{"type":"hello","host":"fake","protocol":1}\n', _event_line(open_), _event_line(dropped),
                     b'{"type":"frames.dropped","count":5}\n', whole, whole[: len(whole) // 2]])  # fmt: skip
    out = tmp_path / "fake.pcapng"
    res = trace("record", "-w", str(out), "--attach", str(sock), timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "LOST before the recorder: 8 events, 5 frames" in res.stderr
    s = summary(out)
    by = {d["by"]: d for d in s["dropped"]["by"]}
    assert by["fake event queue"]["events"] == 7
    sock_drop = by["fake control socket"]
    assert sock_drop["frames"] == 5 and sock_drop["events"] == 1 and "ended inside a line" in sock_drop["why"]
    assert s["dropped"]["events"] == 8 and s["dropped"]["frames"] == 5
    assert [c["state"] for c in s["conns"]] == ["ACTIVE"]  # the whole line before the cut one is kept


def test_ctrl_c_stops_a_recorded_command_which_closes_cleanly_with_its_tail(tmp_path):
    """SIGINT to the recorder reaches the command once (its own process group); the command's
    stack closes its connection and hands the recorder what it held: the capture ends with
    the connection CLOSED and nothing lost."""
    ca, sa = addrs()
    server = TrafficServer(sa)
    out = tmp_path / "cmd.pcapng"
    rec = subprocess.Popen([PY, "-m", "dissectors.cli", "record", "-w", str(out), "--", PY, "-m", "stack.traffic.cli", "client",
                            "--connect", f"{sa}:5000", "--device", ca, "--mode", "bulk", "--duration", "600", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert wait_for(lambda: _grown(out, 300_000), 120), "the recording never got going"
        rec.send_signal(signal.SIGINT)
        try:
            _, err = rec.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            rec.kill()
            pytest.fail("smc-trace record did not stop its command on SIGINT")
    finally:
        server.kill()
    assert rec.returncode == 0, err
    assert "Traceback" not in err and "LOST" not in err and "DROPPED" not in err, err
    s = summary(out)
    assert s["dropped"]["by"] == [] and s["skipped"]["records"] == 0
    (conn,) = [c for c in s["conns"] if c["role"] == "client"]
    assert conn["mode"] == "SMCR" and conn["state"] == "CLOSED" and conn["bytes_written"] > 0


def test_duration_stops_a_command_that_ignores_sigint(tmp_path):
    """--duration asks the command to stop; one that ignores SIGINT gets SIGTERM after the
    grace period, and the recording ends (exit 0: stopped as asked)."""
    out = tmp_path / "stubborn.pcapng"
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    env = "import sys, dissectors.cli as c; c.STOP_GRACE = 1.0; sys.exit(c.main(sys.argv[1:]))"
    res = subprocess.run([PY, "-c", env, "record", "-w", str(out), "--duration", "1", "--", PY, "-c", stubborn],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "up" and "Traceback" not in res.stderr, res.stderr


def test_a_replay_of_a_run_shorter_than_a_snapshot_interval_shows_its_final_counters(tmp_path):
    """The stack sends a last snapshot as it closes: a recording of a run that ended before
    its first periodic snapshot replays with the run's counters, not the zeros of the
    snapshot taken when the recording began."""
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "2")
    out = tmp_path / "short.pcapng"
    try:
        res = trace("record", "-w", str(out), "--", PY, "-m", "stack.traffic.cli", "client", "--connect", f"{sa}:5000", "--device", ca,
                    "--mode", "bulk", "--bytes", "256K", "--connections", "2", "--json", "--no-progress", timeout=120)  # fmt: skip
        server.report()
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert res.returncode == 0 and json.loads(res.stdout)["verified"] == 2, res.stderr
    once = subprocess.run(
        [PY, "-c", "import sys; from stack.launch import smctop; sys.exit(smctop())", "--replay", str(out), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert once.returncode == 0, once.stderr
    (stats,) = json.loads(once.stdout)["stats"].values()
    assert stats["counters"]["smc_client"] == 2 and stats["counters"]["fallback_client"] == 0, stats
