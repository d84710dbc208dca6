"""Recording the kernel source: its events and, where a capture runs, its RoCEv2 frames in
one pcapng timeline, written by smc-trace's recorder (dissectors.recorder).

Clocks: every event's ``t`` is CLOCK_MONOTONIC seconds (snapshots read ``time.monotonic()``,
the trace instance's ``trace_clock`` is ``mono``); frames carry the kernel's receive time
(SO_TIMESTAMPNS, CLOCK_REALTIME). The recorder writes both as wall-clock times, turning
event times with the offset wall minus monotonic that the source measured when it was
made (``KernelSource.clock_offset_ns``, handed to the recorder), so events and frames
share one clock. What can still separate them is the wall clock being slewed (NTP)
during the recording: at most the slew rate times the recording's length (NTP slews by
at most 500 ppm: 0.5 ms a second, usually far less).

    with KernelSource(capture="auto") as src, KernelRecording("run.pcapng", src) as rec:
        time.sleep(30)
    print(rec.stats)
"""

from __future__ import annotations

import threading

from dissectors.recorder import WRITE_SNAP, Frame, Recorder, RecorderStats
from stack.events import Event

from .capture import WRITES, Decoded
from .model import to_stack_snapshot
from .source import KernelSource
from .tracker import SNAPSHOT, SOURCE


class KernelRecording:
    """Record ``source`` (a KernelSource, started or not; or a list of them, one per network
    namespace, each under its own host name) to ``out`` until ``close()``. Several sources
    share one clock offset (the first's), so that their frames and events stay on one
    timeline: set it before they start."""

    def __init__(self, out, source: KernelSource | list[KernelSource], write_snap: int = WRITE_SNAP) -> None:
        self.sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not self.sources:
            raise ValueError("nothing to record: no kernel source")
        self.source = self.sources[0]
        self.write_snap = write_snap
        for src in self.sources[1:]:
            src.clock_offset_ns = self.source.clock_offset_ns
        self.recorder = Recorder(out, clock_offset_ns=self.source.clock_offset_ns, write_snap=write_snap)
        self.stats: RecorderStats | None = None
        self._closing = threading.Lock()
        for src in self.sources:
            if src.latest is not None:  # started already: the state so far comes first
                snap = src.latest
                self.recorder.on_event(Event(snap.t, "stats", snap.host, fields={"cause": "recording started",
                                                                               "snapshot": to_stack_snapshot(snap), SOURCE: SNAPSHOT}))  # fmt: skip
            src.add_listener(self.recorder.on_event)
            src.add_frame_listener(self._frame)

    def _frame(self, ts_ns: int, direction: str, d: Decoded) -> None:
        payload, length = d.payload, None
        if self.write_snap and len(payload) > self.write_snap and payload[:1] and payload[0] in WRITES:
            payload, length = payload[: self.write_snap], len(d.payload)
        self.recorder.on_frame(Frame(direction, ts_ns, d.src, d.sport, d.dst, d.dport, payload, None, length))

    def __enter__(self) -> "KernelRecording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> RecorderStats:
        """Write what is left and close the file (once: any thread, any number of times)."""
        with self._closing:
            if self.stats is None:
                for src in self.sources:
                    src.remove_listener(self.recorder.on_event)
                    if self._frame in src._frame_listeners:
                        src._frame_listeners.remove(self._frame)
                self.stats = self.recorder.close()
            return self.stats


def record(out, seconds: float, **source_kwargs) -> tuple[RecorderStats, dict]:
    """Record the kernel for ``seconds`` (the source made from ``source_kwargs``), in the
    right order: the source stops (its trace reader drained) before the recorder closes.
    Returns the recorder's figures and the source's status."""
    import time

    src = KernelSource(**source_kwargs)
    rec = KernelRecording(out, src)
    try:
        src.start()
        time.sleep(seconds)
    finally:
        src.close()
        stats = rec.close()
    return stats, src.status()
