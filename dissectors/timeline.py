"""A readable timeline of events: one line each, filters by connection, link, link group,
host and kind. Messages are described from their raw bytes (dissectors.describe), reason
codes as smc-tools prints them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from stack.events import Event
from stack.wire import cdc, clc, codes, llc
from stack.wire._base import WireError

from .describe import describe
from .records import field_bytes


def _message(e: Event) -> str:
    raw = field_bytes(e.get("raw"))
    try:
        if e.kind == "clc.msg":
            m = clc.decode(raw)
        elif e.kind == "llc.msg":
            m = llc.decode(raw)
        else:
            m = cdc.decode(raw)
        text = describe(m)
    except (WireError, ValueError):
        text = f"{e.get('type', e.kind)} ({len(raw)} bytes, not decodable)"
    return f"{'sent' if e.get('dir') == 'tx' else 'received'} {text}"


def _reason(value) -> str:
    return codes.format_reason(value) if isinstance(value, int) and value else "not SMC"


def describe_event(e: Event) -> str:
    """One line an operator reads: what happened, with names and reasons."""
    k, g = e.kind, e.get
    if k in ("clc.msg", "llc.msg", "cdc.msg"):
        return _message(e)
    if k == "conn.state":
        return f"state {g('old')} -> {g('new')}" + (f" ({g('cause')})" if g("cause") else "")
    if k == "conn.open":
        return f"{g('role')} {g('local')} -> {g('peer')}"
    if k == "conn.mode":
        if g("mode") == "SMCR":
            return f"SMC-R v{g('version')}{' first contact' if g('first_contact') else ''}"
        return f"TCP fallback {_reason(g('reason'))}"
    if k == "conn.fallback":
        peer = f" (peer diagnosis {g('peer_diagnosis_text')})" if g("peer_diagnosis_text") else ""
        return f"fallback to TCP: {g('reason_text') or _reason(g('reason'))}{peer}" + (f" ({g('cause')})" if g("cause") else "")
    if k == "conn.error":
        return f"error: {g('reason')}"
    if k == "conn.cursor":
        parts = [f"{name} {g(name)}" for name in ("prod", "cons", "sent", "fin") if g(name) is not None]
        return f"cursors {g('side')}: " + " ".join(parts) + (f" ({g('cause')})" if g("cause") else "")
    if k == "conn.rmb":
        if g("fill") is None:
            return f"write blocked, {g('pending')} bytes waiting" if g("write_blocked") else "rmb"
        return f"RMB fill {g('fill')}/{g('size')}" + (" write-blocked" if g("write_blocked") else "")
    if k == "rdma.write":
        where = f"offset {g('offset')}" if g("offset") is not None else f"vaddr 0x{g('vaddr', 0):x}"
        return f"RDMA WRITE {g('length')} bytes at {where} rkey 0x{(g('rkey') or 0):08x}"
    if k == "link.state":
        return f"link {e.link} {g('old')} -> {g('new')}" + (f" ({g('cause')})" if g("cause") else "")
    if k == "link.event":
        ev = g("event")
        extra = {key: v for key, v in e.fields.items() if key != "event"}
        if ev == "deleted" and isinstance(g("reason"), int):
            extra["reason"] = g("reason_text") or codes.DELETE_LINK_REASONS.format(g("reason"))
            extra.pop("reason_text", None)
        return f"link {ev}" + ("" if not extra else " " + " ".join(f"{key}={v}" for key, v in extra.items()))
    if k == "lgr.state":
        return f"link group {g('old')} -> {g('new')}" + (f" ({g('cause')})" if g("cause") else "") + (" CRIT" if g("crit") else "")
    if k == "events.dropped":
        return f"{g('count')} events dropped" + (f", {g('frames')} frames" if g("frames") else "")
    if k == "trace.note":
        return f"frame {g('frame')} not decoded: {g('error')}"
    return " ".join(f"{key}={v}" for key, v in e.fields.items() if key != "raw")


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
        if self.lgrs is not None and e.lgr not in self.lgrs:
            return False
        if self.hosts is not None and e.host not in self.hosts:
            return False
        if self.kinds is not None and not any(e.kind == k or e.kind.startswith(k.rstrip(".") + ".") for k in self.kinds):
            return False
        return True


def format_line(e: Event, t0: float = 0.0) -> str:
    ids = "/".join(x for x in (e.lgr or "", f"L{e.link}" if e.link is not None else "", f"C{e.conn}" if e.conn is not None else "") if x)
    return f"{e.t - t0:12.6f}  {e.host:<12} {ids:<18} {e.kind:<14} {describe_event(e)}"


def timeline(events: Iterable[Event], flt: Filter | None = None) -> Iterator[str]:
    t0 = None
    for e in events:
        if flt is not None and not flt(e):
            continue
        if t0 is None:
            t0 = e.t
        yield format_line(e, t0)
