"""Stopping a recording of the kernel's SMC-R on Ctrl-C or SIGTERM: promptly, writing what
it has, and never hanging.

A stop has three parts, each run in a daemon thread the main thread watches:

1. the sources stop reading (``KernelSource.stop``): pollers, trace readers (after draining
   what the kernel's trace buffer still holds, up to the sources' ``drain_timeout``, one
   budget for all of a process's namespaces), captures, netlink channels;
2. the recording writes what is left and closes its file;
3. the trace sessions leave the kernel (``KernelSource.release``: instances and probes; each
   probe's removal waits for an RCU grace period, seconds on a loaded VM).

A second Ctrl-C or SIGTERM cuts the part under way short (``KernelSource.hurry``: no more
draining, what is left in the trace buffers counted as dropped); a part that still has not
returned a few seconds later is abandoned with one line on stderr naming it, and the
process goes on to its end (every thread it leaves is a daemon). Trace sessions left in the
kernel are removed by the next session's start (``TraceSession._cleanup_stale``).

The signals are counted by a handler that takes no lock, and the main thread polls the count
in short sleeps: ``threading.Event.set`` in a handler deadlocks when the signal lands while
the main thread holds that event's own lock (inside its ``wait``), and a lock wait without a
timeout never returns for a signal the kernel delivered to another of the process's threads.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable

SLACK = 15.0  # seconds the sources' stop may take beyond their drain budget before it is cut short
GRACE = 5.0  # seconds a part cut short (a second signal, or its budget spent) has before it is abandoned
WRITE_BUDGET = 30.0  # seconds for the recording's last writes
RELEASE_BUDGET = 30.0  # seconds for the trace sessions to leave the kernel
SAY_AFTER = 2.0  # a stop still under way after this long says what it waits for
TICK = 0.05


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class StopSignals:
    """SIGINT and SIGTERM, counted (``count``), while in a ``with`` block (the old handlers
    come back at its end). Install it before anything that a stop has to undo is made."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._on)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def _on(self, signum, frame) -> None:
        self.count += 1  # no lock, no I/O: the handler runs between any two of the main thread's bytecodes

    def wait(self, seconds: float | None = None, since: int = 0) -> bool:
        """Until the count passes ``since`` (True) or ``seconds`` have passed (False)."""
        end = None if seconds is None else time.monotonic() + seconds
        while self.count <= since:
            left = TICK if end is None else min(TICK, end - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


class Part:
    """One part of a stop: ``fn(step)`` in a daemon thread; ``step(text)`` names what it is
    doing, for the line that says what it waits for or what was abandoned."""

    def __init__(self, what: str, fn: Callable[[Callable[[str], None]], object]) -> None:
        self.what = what
        self.step = what
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._fn = fn

    def _run(self) -> None:
        try:
            self.result = self._fn(self._set_step)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
        finally:
            self.done.set()

    def _set_step(self, text: str) -> None:
        self.step = text


def run_part(part: Part, signals: StopSignals | None, budget: float, hurry: Callable[[], None] | None = None,
             grace: float = GRACE, waiting: str | None = None, out: Callable[[str], None] = say) -> bool:  # fmt: skip
    """Run ``part`` and wait for it: ``budget`` seconds or until a new signal, then ``hurry()``
    (if given) and ``grace`` seconds more. True when it returned (its error, if any, is
    raised here); False when it was abandoned (said in one line). ``waiting``: a line said
    when the part takes longer than SAY_AFTER seconds."""
    threading.Thread(target=part._run, name=f"smc-trace stop: {part.what}", daemon=True).start()
    seen = signals.count if signals is not None else 0
    t0 = time.monotonic()
    said = False

    def asked() -> bool:
        return signals is not None and signals.count > seen

    while not part.done.wait(TICK):
        if asked() or time.monotonic() - t0 > budget:
            break
        if waiting and not said and time.monotonic() - t0 > SAY_AFTER:
            out(waiting)
            said = True
    if not part.done.is_set():
        if hurry is not None:
            hurry()
        t1 = time.monotonic()
        while not part.done.wait(TICK) and time.monotonic() - t1 < grace:
            pass
    if not part.done.is_set():
        why = "asked again to stop" if asked() else f"after {budget:g} s"
        out(f"smc-trace: stopping: {part.step} did not end ({why}, then {grace:g} s more): abandoned, left running as the process ends")
        return False
    if part.error is not None:
        raise part.error
    return True


def stop_sources(srcs: list, signals: StopSignals | None, out: Callable[[str], None] = say) -> bool:
    """Part 1: every source stops reading. False when one did not end (abandoned, said)."""

    def fn(step: Callable[[str], None]) -> None:
        for src in srcs:
            step(f"stopping the kernel source of {src.host}")
            src.stop()

    drain = max((getattr(src, "drain_timeout", 0.0) for src in srcs), default=0.0)
    waiting = f"smc-trace: stopping: reading what the kernel's trace buffers still hold (at most {drain:g} s; Ctrl-C again stops at once)"
    return run_part(Part("stopping the kernel sources", fn), signals, drain + SLACK, hurry=lambda: [src.hurry() for src in srcs],
                    waiting=waiting, out=out)  # fmt: skip


def write_recording(rec, signals: StopSignals | None, out: Callable[[str], None] = say):
    """Part 2: the recording's last writes. Its stats, or None when they did not end (said)."""
    part = Part("writing the recording's last records", lambda step: rec.close())
    return part.result if run_part(part, signals, WRITE_BUDGET, out=out) else None


def release_sources(srcs: list, signals: StopSignals | None, out: Callable[[str], None] = say) -> bool:
    """Part 3: the trace sessions leave the kernel. False when that was abandoned (said; the
    next session's start removes what is left)."""

    def fn(step: Callable[[str], None]) -> None:
        for src in srcs:
            step(f"removing the trace session of {src.host} from the kernel (the next session's start removes what is left)")
            src.release()

    return run_part(Part("removing the trace sessions", fn), signals, RELEASE_BUDGET, out=out)
