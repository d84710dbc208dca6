"""Stopping ``smc-trace record --kernel`` (smckernel.stopping): Ctrl-C or SIGTERM ends it in
any state, writing what it has, and never hangs (in the lab, a recorder over three
namespaces once had not exited 120 s after its SIGINT).

The command runs in a child process with fake kernel sources, each misbehaving as a real
one can: a stop that never returns (a thread blocked in a read), a drain that would take a
minute, a signal that the kernel gives to another thread than the main one, a Ctrl-C in
the middle of the start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dissectors.capture import read_events
from smckernel.source import KernelSource
from smckernel.tracing import TraceSession
from stack.events import Event, Skipped

ROOT = Path(__file__).resolve().parents[2]

# The child: smc-trace's main with smckernel.source.KernelSource replaced by a fake whose
# behaviour the test names (argv[1]); it writes what it was asked to do to argv[2].
CHILD = r"""
import os, signal, sys, threading, time
from smckernel import source, stopping
from stack.events import Event

stopping.SLACK, stopping.GRACE, stopping.SAY_AFTER = 1.0, 1.0, 0.5
mode, log = sys.argv[1], sys.argv[2]


def mark(text):
    with open(log, "a") as f:
        f.write(text + "\n")


class Fake:
    def __init__(self, netns=None, host=None, **kw):
        self.host, self.netns, self.notes, self.latest, self.capturing = host or "fake", netns, [], None, []
        self.clock_offset_ns = time.time_ns() - time.monotonic_ns()
        self.drain_timeout = 0.0 if mode == "stuck" else 60.0  # the stop's budget: the drain's, and stopping.SLACK
        self._listeners, self._frame_listeners = [], []
        self._hurried = threading.Event()
        self._read, self._write = os.pipe()  # nothing is ever written: a read of it never returns

    def open(self):
        mark("open")
        if mode == "slow-start":
            time.sleep(1.0)
        mark("opened")

    def start(self):
        for fn in self._listeners:
            fn(Event(time.monotonic(), "stats", self.host, fields={"cause": "fake"}))
        if mode == "signal-other-thread":
            def kill_me():
                time.sleep(0.3)
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # as the kernel may deliver it
            threading.Thread(target=kill_me, daemon=True).start()

    def stop(self):
        mark("stop")
        if mode == "stuck":
            os.read(self._read, 1)  # a reader thread blocked for ever, joined without a timeout
        if mode == "long-drain":
            self._hurried.wait(60.0)  # a trace buffer a minute behind, read until hurried
        mark("stopped")

    def hurry(self):
        mark("hurry")
        self._hurried.set()

    def release(self):
        mark("released")

    def close(self):  # what the recorder called before it knew stop and release
        self.stop()
        self.release()

    def add_listener(self, fn):
        self._listeners.append(fn)

    def remove_listener(self, fn):
        if fn in self._listeners:
            self._listeners.remove(fn)

    def add_frame_listener(self, fn):
        self._frame_listeners.append(fn)

    def status(self):
        return {"frames_dropped": 0}


source.KernelSource = Fake
from dissectors.cli import main

sys.exit(main(["record", "--kernel", "--no-trace", "--capture", "none", "-w", sys.argv[3]]))
"""


class Child:
    def __init__(self, tmp: Path, mode: str) -> None:
        self.log, self.out, self.err = tmp / "log.txt", tmp / "k.pcapng", tmp / "err.txt"
        self.log.write_text("")
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(self.log), str(self.out)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=open(self.err, "w"))  # fmt: skip

    def wait_for(self, text: str, where: str = "err", timeout: float = 30.0) -> None:
        path = self.err if where == "err" else self.log
        deadline = time.monotonic() + timeout
        while text not in path.read_text():
            assert self.proc.poll() is None, f"the child ended (rc {self.proc.returncode}) before {text!r}: {self.err.read_text()}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: {self.err.read_text()}"
            time.sleep(0.02)

    def ends_within(self, seconds: float) -> int:
        try:
            return self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"smc-trace record --kernel had not exited {seconds} s after it was asked to stop: {self.err.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def child(tmp_path):
    made: list[Child] = []

    def make(mode: str) -> Child:
        made.append(Child(tmp_path, mode))
        return made[-1]

    yield make
    for c in made:
        c.kill()


def events_in(path: Path) -> list:
    skipped = Skipped()
    out = list(read_events(path, skipped))
    assert not skipped
    return out


def test_a_source_whose_stop_never_returns_is_abandoned_and_the_file_is_written(child) -> None:
    c = child("stuck")
    c.wait_for("recording the kernel's SMC-R")
    c.proc.send_signal(signal.SIGINT)
    assert c.ends_within(20) == 1  # not everything stopped: said, and not 0
    err = c.err.read_text()
    assert "stopping the kernel source of fake did not end" in err and "abandoned" in err, err
    assert "kernel events" in err and "Traceback" not in err
    assert [e.kind for e in events_in(c.out)] == ["stats"]  # what it had is in the file
    assert c.log.read_text().split() == ["open", "opened", "stop", "hurry", "released"]


def test_a_second_ctrl_c_cuts_a_long_drain_short(child) -> None:
    c = child("long-drain")
    c.wait_for("recording the kernel's SMC-R")
    c.proc.send_signal(signal.SIGINT)
    c.wait_for("reading what the kernel's trace buffers still hold")  # a stop that takes long says so, and how to cut it
    assert c.proc.poll() is None
    c.proc.send_signal(signal.SIGINT)
    assert c.ends_within(10) == 0
    assert c.log.read_text().split() == ["open", "opened", "stop", "hurry", "stopped", "released"]
    assert [e.kind for e in events_in(c.out)] == ["stats"]


def test_sigterm_stops_it_too(child) -> None:
    c = child("quiet")
    c.wait_for("recording the kernel's SMC-R")
    c.proc.send_signal(signal.SIGTERM)
    assert c.ends_within(10) == 0
    assert c.log.read_text().split() == ["open", "opened", "stop", "stopped", "released"]


def test_a_signal_the_kernel_gives_another_thread_stops_it(child) -> None:
    """A process-directed signal goes to any thread that does not block it: Python runs the
    handler in the main thread, but a main thread blocked in a lock wait without a timeout
    (threading.Event.wait()) is never woken for it."""
    c = child("signal-other-thread")
    assert c.ends_within(15) == 0
    assert "Traceback" not in c.err.read_text()
    assert c.log.read_text().split() == ["open", "opened", "stop", "stopped", "released"]


def test_ctrl_c_during_the_start_undoes_what_was_made(child) -> None:
    c = child("slow-start")
    c.wait_for("open", where="log")
    c.proc.send_signal(signal.SIGINT)
    assert c.ends_within(15) == 130
    err = c.err.read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopped before the recording began: nothing written" in err
    assert c.log.read_text().split() == ["open", "opened", "stop", "stopped", "released"]
    assert not c.out.exists()


# ---------------------------------------------------------------------------- the source's own parts


def session_over(tmp: Path) -> TraceSession:
    """A TraceSession whose instance is a plain directory with a FIFO as its trace_pipe."""
    s = TraceSession.__new__(TraceSession)
    s.root, s.instance, s.group = str(tmp), str(tmp / "instance"), "smck9"
    os.mkdir(s.instance)
    os.mkfifo(os.path.join(s.instance, "trace_pipe"))
    s.notes, s.installed, s.tracepoints, s.shared = [], [], [], []
    s.raw_log, s.errors, s.records, s.unread = None, 0, 0, 0
    s._stop, s._abort, s._thread = threading.Event(), threading.Event(), None
    return s


def test_a_drain_that_never_empties_the_buffer_ends_at_once_when_aborted(tmp_path: Path) -> None:
    s = session_over(tmp_path)
    s.start(lambda records: None)
    writer = os.open(os.path.join(s.instance, "trace_pipe"), os.O_WRONLY)
    busy = threading.Event()

    def flood() -> None:  # a kernel that keeps the reader busy: it never reads the buffer empty
        busy.set()
        try:
            while s._thread.is_alive():
                os.write(writer, b"not a trace line\n" * 64)
        except OSError:
            pass

    threading.Thread(target=flood, daemon=True).start()
    busy.wait(5)
    threading.Timer(0.5, s.abort).start()  # a second Ctrl-C, from another thread
    t0 = time.monotonic()
    s.drain(60.0)
    assert time.monotonic() - t0 < 5.0
    assert not s._thread.is_alive()
    assert any("the trace reader was behind" in n for n in s.notes)
    os.close(writer)


def test_hurry_cuts_the_drain_of_every_sibling_short_and_the_dropped_are_counted() -> None:
    class Session:
        def __init__(self) -> None:
            self.aborted = threading.Event()
            self.unread, self.notes, self.drained = 0, [], None

        def drain(self, timeout: float) -> None:
            self.drained = timeout
            if not self.aborted.wait(timeout):
                return
            self.unread = 7

        def abort(self) -> None:
            self.aborted.set()

        def stop(self) -> None:
            pass

        def remove(self) -> None:
            self.notes.append("removed")

    a, b = KernelSource(host="a"), KernelSource(host="a/ns1", trace_tag=1)
    a.siblings = b.siblings = [a, b]
    for src in (a, b):
        src.tracing = Session()
    got: list[Event] = []
    a.add_listener(got.append)
    done = threading.Event()

    def stop_both() -> None:
        a.stop()
        b.stop()
        done.set()

    threading.Thread(target=stop_both, daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set()  # draining (a minute's budget)
    a.hurry()
    assert done.wait(5)
    assert b.tracing.drained == 0.0  # the sibling's drain did not begin another wait
    assert [(e.kind, e.fields["count"]) for e in got] == [("events.dropped", 7)]
    a.release()
    b.release()
    assert a.tracing is None and b.tracing is None
