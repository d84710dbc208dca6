"""Event records and the event bus: the product's bloodstream (DESIGN.md section 3).

Every state transition, cursor movement, link event and protocol message becomes one
:class:`Event`: ``t`` (the ``now`` of the input that caused it), ``kind``, the ids it
belongs to (``host``, ``lgr``, ``link``, ``conn``) and its fields. There is one schema and
one canonical JSON form (:func:`to_json`), used by JSONL files, the control socket and
pcapng event records alike: compact, keys sorted, ids always present (null when not
applicable), bytes as lower-case hex, enums as their numbers.

The bus costs one attribute check when nobody listens (``bus.active``). Listeners are
called inline and must be quick; subscriptions have a bounded queue, and when a slow
subscriber's queue is full new events are dropped for it and counted, then reported to
it as one ``events.dropped`` event as soon as there is room again.

The canonical JSON is encoded by native/eventenc.c when it is built
(``native/build_eventenc.sh``); :func:`_to_json_py` is its pure-Python twin, which defines
the form, gives byte-identical output and is used when it is not
(:func:`encoder_note` says which runs).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO

KINDS = {
    "conn.state": "a connection changed state (SMC socket state, kernel names)",
    "conn.open": "a connection started: role, addresses, SMC wanted or not",
    "conn.mode": "the handshake finished: SMCR (version, first contact) or TCP",
    "conn.fallback": "a connection fell back to TCP: reason and peer diagnosis, hex and name",
    "conn.error": "a connection failed or was aborted, with the reason",
    "conn.cursor": "RMBE cursors moved: local and peer producer/consumer (wrap:count)",
    "conn.rmb": "RMB fill level and write-blocked state",
    "conn.stats": "periodic per-connection byte counters and rates",
    "clc.msg": "a CLC message sent or received (decoded fields and raw bytes)",
    "llc.msg": "an LLC message sent or received",
    "cdc.msg": "a CDC message sent or received",
    "rdma.write": "an RDMA WRITE posted: offset and length in the peer RMB",
    "link.state": "a link changed state (LINK_* kernel names)",
    "link.event": "a link was added or deleted, a TEST LINK timed out, a QP failed, failover began or ended",
    "lgr.state": "a link group was created, changed type, or was terminated",
    "stats": "periodic host totals",
    "events.dropped": "a subscriber missed events because it was too slow",
    "trace.note": "smc-trace could not decode a frame of a capture: its number and why",
}

ID_KEYS = ("host", "lgr", "link", "conn")
RESERVED = {"t", "kind", *ID_KEYS}


@dataclass(slots=True)
class Event:
    t: float
    kind: str
    host: str = ""
    lgr: str | None = None
    link: int | None = None
    conn: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, (int, str)) else value.name
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 9)
    return value


def to_dict(event: Event) -> dict[str, Any]:
    clash = RESERVED & event.fields.keys()
    if clash:
        raise ValueError(f"event {event.kind}: field names {sorted(clash)} are reserved")
    d = {"t": round(event.t, 9), "kind": event.kind, "host": event.host, "lgr": event.lgr, "link": event.link, "conn": event.conn}
    d.update(_plain(event.fields))
    return d


def _to_json_py(event: Event) -> str:
    """The canonical JSON form: compact, sorted keys, one line (the pure-Python definition;
    the compiled encoder gives the same bytes, and hands it whatever it does not handle)."""
    return json.dumps(to_dict(event), sort_keys=True, separators=(",", ":"))


def _load_native():
    try:
        from native import eventenc
    except ImportError as e:  # an installation without native/
        return None, f"the compiled event encoder is not available ({e})"
    try:
        mod = eventenc.load()
    except eventenc.EncoderUnavailable as e:
        return None, str(e)
    mod.configure(Event, enum.Enum, _to_json_py)
    return mod, ""


_native, _native_why = _load_native()


def native_encoder():
    """The compiled encoder module (native/eventenc.c), or None when the twins run."""
    return _native


def encoder_note() -> str:
    """One line for an operator: which event encoder runs, and why not the fast one."""
    if _native is not None:
        return f"smctop events: compiled encoder ({_native.__file__})"
    return f"smctop events: pure-Python encoder, slower: {_native_why}"


_noted = False


def note_encoder_once(log: logging.Logger | None = None) -> None:
    """Warn once per process (logging) when events are encoded in Python although the
    compiled encoder was not deliberately switched off."""
    global _noted
    if _noted or _native is not None or "switched off" in _native_why:
        return
    _noted = True
    (log or logging.getLogger("smctop.events")).warning("%s", encoder_note())


if _native is not None:
    to_json = _native.to_json
    _to_json_line = _native.to_json_line
else:
    to_json = _to_json_py

    def _to_json_line(event: Event) -> str:
        return _to_json_py(event) + "\n"


def from_dict(d: dict[str, Any]) -> Event:
    missing = {"t", "kind"} - d.keys()
    if missing:
        raise ValueError(f"event record lacks {sorted(missing)}")
    if not isinstance(d["kind"], str) or not isinstance(d["t"], (int, float)):
        raise ValueError("event record: 't' must be a number and 'kind' a string")
    fields = {k: v for k, v in d.items() if k not in RESERVED}
    return Event(float(d["t"]), d["kind"], d.get("host") or "", d.get("lgr"), d.get("link"), d.get("conn"), fields)


def from_json(line: str) -> Event:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"event record is not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(d, dict):
        raise ValueError("event record must be a JSON object")
    return from_dict(d)


class Subscription:
    """A bounded queue of events for one consumer."""

    def __init__(self, bus: "EventBus", maxsize: int, kinds: Iterable[str] | None) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self.kinds = frozenset(kinds) if kinds else None
        self.queue: deque[Event] = deque()
        self.dropped = 0
        self.dropped_total = 0
        self._last: Event | None = None
        self._waiter: asyncio.Event | None = None

    def offer(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        if len(self.queue) >= self.maxsize:
            self.dropped += 1
            self.dropped_total += 1
            self._last = event
            return
        self._report_drops()
        self.queue.append(event)
        if self._waiter is not None:
            self._waiter.set()

    def _report_drops(self) -> None:
        """Put one events.dropped record where the missing events would have been."""
        if self.dropped:
            last = self._last
            self.queue.append(Event(last.t, "events.dropped", last.host, fields={"count": self.dropped}))
            self.dropped = 0

    def get_nowait(self) -> list[Event]:
        self._report_drops()
        out = list(self.queue)
        self.queue.clear()
        return out

    async def get(self) -> Event:
        while not self.queue:
            self._report_drops()
            if self.queue:
                break
            if self._waiter is None:
                self._waiter = asyncio.Event()
            self._waiter.clear()
            await self._waiter.wait()
        return self.queue.popleft()

    def close(self) -> None:
        self._bus._unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._subs: list[Subscription] = []
        self._targets: tuple[Callable[[Event], None], ...] = ()  # listeners, then each subscription's offer
        self.active = False
        self.emitted = 0

    def _update(self) -> None:
        self._targets = (*self._listeners, *(sub.offer for sub in self._subs))
        self.active = bool(self._targets)

    def emit(self, event: Event) -> None:
        self.emitted += 1
        for fn in self._targets:
            fn(event)

    def listen(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)
        self._update()

    def unlisten(self, fn: Callable[[Event], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)
        self._update()

    def subscribe(self, maxsize: int = 10_000, kinds: Iterable[str] | None = None) -> Subscription:
        sub = Subscription(self, maxsize, kinds)
        self._subs.append(sub)
        self._update()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        self._update()


class _LineWriterPy:
    """The pure-Python twin of the compiled ``LineWriter``: JsonlWriter's call path."""

    def __init__(self, out: TextIO, kinds: Iterable[str] | None = None) -> None:
        self.out = out
        self.kinds = kinds
        self.written = 0

    def __call__(self, event: Event) -> None:
        if self.kinds is None or event.kind in self.kinds:
            self.out.write(_to_json_line(event))
            self.written += 1


class JsonlWriter(_native.LineWriter if _native is not None else _LineWriterPy):  # type: ignore[misc]
    """A listener that writes every event (or those of ``kinds``) as one canonical JSON line.

    Each line goes to ``out.write`` at once: nothing is held back, so closing ``out`` after
    the last event loses nothing. With the compiled encoder the whole call runs in C
    (encoding an event and handing it to ``write``)."""

    def __init__(self, out: TextIO, kinds: Iterable[str] | None = None) -> None:
        super().__init__(out, frozenset(kinds) if kinds else None)
        note_encoder_once()


def read_jsonl(lines: Iterable[str]) -> Iterable[Event]:
    """Parse JSONL event records; a bad line raises ValueError naming its line number."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield from_json(line)
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
