"""Events of one or several recordings in one time order, for ``smc-trace decode``,
``summary`` and ``export``.

A recording is written in time order only as far as its inputs arrive in time: the
recorder holds items back 200 ms, so a stack attached over its control socket whose batch
arrives later, or two devices' taps, can leave a few records behind their neighbours. Two
files (each host's own recording, or each process's ``--events`` JSONL) are two streams.
:func:`in_time_order` sorts one stream within a bounded window; :func:`merged` interleaves
several sorted streams. Events with equal times keep their order (file order, then the
order of the files given).

Clocks: a pcapng recording carries wall-clock times, a stack's JSONL its event loop's
monotonic clock (seconds since the host booted). Only files on the same clock can share a
timeline; :func:`clock_of` tells them apart by magnitude (a monotonic clock would need
31 years of uptime to reach 1e9 s).
"""

from __future__ import annotations

import heapq
import math
from typing import Iterable, Iterator, Sequence

from stack.events import Event

from .pcap import CaptureError

__all__ = ["REORDER_WINDOW", "WALL_CLOCK_FROM", "WallOffset", "clock_of", "in_time_order", "merged"]

REORDER_WINDOW = 5.0  # seconds: how late a record may be written and still take its place
REORDER_LIMIT = 200_000  # events held at most (memory bound); beyond it the oldest goes out
WALL_CLOCK_FROM = 1e9  # seconds: times at or above this are wall clock (after 2001-09-09)


class WallOffset:
    """What a reader learns of a file's clock: wall-clock time minus its events' times, when
    the file says (an smc-trace recording: each event record's block is stamped with the
    wall clock, its event with the stack's monotonic clock). Recordings of hosts that booted
    at different times count from different origins; this is how they share one timeline."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None


ALIGN_FROM = 1e-3  # seconds: smaller differences of offset are the recorders' own jitter, not another boot


def clock_of(t: float) -> str:
    """'wall' or 'monotonic' (seconds since boot), by magnitude."""
    return "wall" if t >= WALL_CLOCK_FROM else "monotonic"


def in_time_order(events: Iterable[Event], window: float = REORDER_WINDOW, limit: int = REORDER_LIMIT) -> Iterator[Event]:
    """``events`` sorted by time, holding each until one ``window`` seconds later has been
    seen (or ``limit`` are held). Records later than the window come out where they are
    met, never dropped."""
    held: list[tuple[float, int, Event]] = []
    newest = -math.inf
    for seq, e in enumerate(events):
        heapq.heappush(held, (e.t, seq, e))
        if e.t > newest:
            newest = e.t
        while held and (newest - held[0][0] > window or len(held) > limit):
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


class ClockMismatch(CaptureError):
    """Files on different clocks given for one timeline."""


def _until_error(events: Iterable[Event], errors: list[Exception]) -> Iterator[Event]:
    """``events`` until one raises: the error is kept for the end, so what was read before
    it (in every file) is still given, in order, before the error is reported."""
    try:
        yield from events
    except Exception as e:  # noqa: BLE001 - re-raised by merged() once the rest is out
        errors.append(e)


def merged(streams: Sequence[tuple], window: float = REORDER_WINDOW) -> Iterator[Event]:
    """One time order over several named streams, each ``(name, events)`` or ``(name,
    events, WallOffset)`` (each put in order first). Streams whose offsets are known are put
    on the first such stream's clock (hosts that booted apart line up by the wall clock). A
    stream that fails (a damaged file) gives what it read; its error is raised after every
    event of every stream. Raises :class:`ClockMismatch`, naming the files, when one counts
    wall-clock time and another time since boot: their events cannot be interleaved."""
    errors: list[Exception] = []
    ordered = [(s[0], in_time_order(_until_error(s[1], errors), window), s[2] if len(s) > 2 else None) for s in streams]
    firsts: list[tuple[str, Event | None, Iterator[Event]]] = []
    for name, it, _clock in ordered:
        first = next(it, None)
        firsts.append((name, first, it))
    known = [clock.offset for _, _, clock in ordered if clock is not None and clock.offset is not None]
    if known:
        # a file that says nothing of its clock and counts wall-clock time (a capture of
        # another tool: tcpdump, tshark) puts every recording on the wall clock; otherwise
        # they go on the first recording's clock (its host's time since boot)
        foreign_wall = any(first is not None and clock_of(first.t) == "wall" for (_, first, _), (_, _, clock) in zip(firsts, ordered)
                           if clock is None or clock.offset is None)  # fmt: skip
        target = 0.0 if foreign_wall else known[0]
        firsts = [(name, *_shifted(first, it, clock.offset - target)) if clock is not None and clock.offset is not None
                  else (name, first, it) for (name, first, it), (_, _, clock) in zip(firsts, ordered)]  # fmt: skip
    clocks = {name: clock_of(first.t) for name, first, _ in firsts if first is not None}
    if len(set(clocks.values())) > 1:
        wall = [n for n, c in clocks.items() if c == "wall"]
        mono = [n for n, c in clocks.items() if c == "monotonic"]
        raise ClockMismatch(
            f"{', '.join(mono)} count{'s' if len(mono) == 1 else ''} time since boot (a stack's --events JSONL) and "
            f"{', '.join(wall)} wall-clock time (a packet capture, or a recording put on its clock): their events cannot share "
            "one timeline; give files of one clock (recordings and packet captures, or JSONL of processes on one host)"
        )

    def chain(first: Event | None, it: Iterator[Event]) -> Iterator[Event]:
        if first is not None:
            yield first
            yield from it

    yield from heapq.merge(*(chain(first, it) for _, first, it in firsts), key=lambda e: e.t)
    if errors:
        raise errors[0]


def _shifted(first: Event | None, it: Iterator[Event], shift: float) -> tuple[Event | None, Iterator[Event]]:
    """A stream's events moved by ``shift`` seconds (none below ALIGN_FROM)."""
    if abs(shift) < ALIGN_FROM:
        return first, it
    move = lambda e: Event(e.t + shift, e.kind, e.host, e.lgr, e.link, e.conn, e.fields)  # noqa: E731
    return (move(first) if first is not None else None), map(move, it)
