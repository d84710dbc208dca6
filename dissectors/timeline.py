"""A readable timeline of events: one line each, filters by connection, link, link group,
host and kind. What each line says is its kind's template in the event schema
(stack/events.py), reason codes as smc-tools prints them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from stack.events import Event, render

from .multifile import base_host


@dataclass
class Filter:
    conns: set[int] | None = None
    links: set[int] | None = None
    lgrs: set[str] | None = None
    hosts: set[str] | None = None
    kinds: tuple[str, ...] | None = None  # prefixes: "conn" matches conn.state, conn.mode, ...

    def __call__(self, e: Event) -> bool:
        if self.conns is not None and e.conn not in self.conns:
            return False
        if self.links is not None and e.link not in self.links:
            return False
        if self.lgrs is not None and (e.lgr or "").lower() not in self.lgrs:  # asked for in lower case
            return False
        if self.hosts is not None and e.host not in self.hosts and base_host(e.host) not in self.hosts:
            return False  # a host of several files: "client" matches client@a.pcapng too
        return self.kinds is None or self.kind_matches(e.kind)

    def kind_matches(self, kind: str) -> bool:
        """``kind`` is one of the kinds asked for, or under one of their prefixes."""
        return any(kind == k or kind.startswith(k.rstrip(".") + ".") for k in self.kinds or ())


def format_line(e: Event, t0: float = 0.0) -> str:
    ids = "/".join(x for x in (e.lgr or "", f"L{e.link}" if e.link is not None else "", f"C{e.conn}" if e.conn is not None else "") if x)
    return f"{e.t - t0:12.6f}  {e.host:<12} {ids:<18} {e.kind:<14} {render(e)}"


def timeline(events: Iterable[Event], flt: Filter | None = None) -> Iterator[str]:
    t0 = None
    for e in events:
        if t0 is None:  # the trace's start, shown or not: a filtered timeline keeps the unfiltered one's times
            t0 = e.t
        if flt is not None and not flt(e):
            continue
        yield format_line(e, t0)
