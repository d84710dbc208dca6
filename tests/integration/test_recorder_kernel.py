"""``smc-trace record --kernel`` (issue 18 item 4), without a VM: on a host without SMC it
says what is missing, exits 2 and leaves no file; with the kernel source's events (the lab
kernel's recorded replies, diffed by the real tracker) and frames (the lab's capture of a
kernel-to-kernel SMC-R run) it writes one pcapng timeline that smc-trace reads back:
the events, the frames with RDMA WRITE payloads cut to the snap length, on one clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dissectors import cli
from dissectors.capture import read_events
from dissectors.pcap import read_capture
from dissectors.pcapng import read_packets
from dissectors.recorder import WRITE_SNAP
from smckernel import capture as kcapture
from smckernel import kio
from smckernel import model as kmodel
from smckernel import source as ksource
from smckernel.tracker import Tracker
from stack.events import Skipped

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "unit" / "fixtures" / "smckernel"
PCAP = ROOT / "tests" / "lab" / "fixtures" / "kernel_interop_smcr.pcap"


def trace(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dissectors.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.skipif(Path("/sys/module/smc").exists() or Path("/sys/module/smc_diag").exists(), reason="this host has SMC")
def test_a_host_without_smc_is_named_and_leaves_no_file(tmp_path):
    out = tmp_path / "k.pcapng"
    r = trace("record", "-w", str(out), "--kernel", "--duration", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot record the kernel's SMC-R" in r.stderr and "modprobe smc" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [(["--kernel", "--attach", "/x.sock"], "not several"),
                                           (["--netns", "blue", "--", "true"], "go with --kernel"),
                                           (["--kernel", "--rate", "0"], "polls per second")])  # fmt: skip
def test_kernel_options_are_checked(tmp_path, args, message):
    r = trace("record", "-w", str(tmp_path / "x.pcapng"), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


class FakeKernelSource:
    """smckernel.source.KernelSource as the recorder drives it, fed by recorded replies (two
    polls: a connection open, then closed) and the lab capture's frames."""

    made: list = []

    def __init__(self, **kw) -> None:
        self.kw, self.notes, self.latest, self.capturing = kw, [], None, ["rxe-eth1"]
        self.clock_offset_ns = 1_700_000_000 * 10**9
        self._listeners, self._frame_listeners = [], []
        self.opened = self.closed = self.released = False
        self.host = "kern"
        self.tracker = Tracker("kern", stats_every=None)
        FakeKernelSource.made.append(self)

    def open(self) -> None:
        self.opened = True
        self.notes.append("no tracepoints or probes: test")

    def add_listener(self, fn) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn) -> None:
        self._listeners.remove(fn)

    def add_frame_listener(self, fn) -> None:
        self._frame_listeners.append(fn)

    def start(self) -> None:
        self.events = []
        for i, name in enumerate(("client-open", "client-closed")):
            snap = kmodel.from_kernel(kio.load_raw(str(FIX / name)), 100.0 + i, "kern")
            self.events += self.tracker.snapshot(snap)
        self.frames = []
        for p in read_capture(PCAP.read_bytes()):
            d = kcapture.decode(p.data)
            if d is not None:
                self.frames.append((self.clock_offset_ns + int(100.5e9) + len(self.frames) * 1000, "rx", d))
        for e in self.events:
            for fn in self._listeners:
                fn(e)
        for f in self.frames:
            for fn in self._frame_listeners:
                fn(*f)

    def close(self) -> None:
        self.closed = True
        self.notes.append("3 records left in the trace buffer at close: test")  # what a drain that gave up says

    def stop(self) -> None:  # the recorder's stop (smckernel.stopping): reading ends, then the file, then release
        self.close()

    def release(self) -> None:
        self.released = True

    def hurry(self) -> None:
        pass

    def status(self) -> dict:
        return {"frames_dropped": 0}


def test_record_kernel_writes_events_and_frames_on_one_timeline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ksource, "KernelSource", FakeKernelSource)
    FakeKernelSource.made.clear()
    out = tmp_path / "kernel.pcapng"
    assert cli.main(["record", "-w", str(out), "--kernel", "--duration", "0.3", "--no-trace"]) == 0
    err = capsys.readouterr().err
    # the notes of the start, and the ones closing found, each said once
    assert err.count("kernel: no tracepoints or probes: test") == 1 and err.count("kernel: 3 records left in the trace buffer at close: test") == 1
    (src,) = FakeKernelSource.made
    assert src.opened and src.closed and src.released and src.kw["trace"] is False and src.kw["capture"] == "auto"
    skipped = Skipped()
    events = list(read_events(out, skipped))
    assert not skipped
    assert [e.kind for e in events if e.host == "kern"] == [e.kind for e in src.events]
    assert {"conn.open", "conn.mode", "conn.state", "lgr.state", "link.state"} <= {e.kind for e in events}
    frames = [p for p in read_packets(out.read_bytes()) if p.interface == 0 and p.data[23] == 17]  # UDP: RoCEv2 (the rest: the TCP flows of the connections)
    assert len(frames) == len(src.frames)
    writes = [p for p in frames if p.data[42] in kcapture.WRITES and p.original_length > 42 + WRITE_SNAP]
    assert writes and all(len(p.data) == 42 + WRITE_SNAP for p in writes)
    # one clock: the frames (wall clock) land between the two polls' events (monotonic + the source's offset)
    evts = [p for p in read_packets(out.read_bytes()) if p.interface == 1]
    first, last = min(p.timestamp_ns for p in evts), max(p.timestamp_ns for p in evts)
    assert all(first < p.timestamp_ns < last for p in frames)
    s = json.loads(trace("summary", "--json", str(out)).stdout)
    assert s["connections"]["total"] >= 1 and s["dropped"]["events"] == 0
