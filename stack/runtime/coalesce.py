"""Coalescing the data path's events for a subscriber that does not need every one.

A stack running request/response emits several events a round trip on each side (cursor
moves, a CDC each way, an RDMA WRITE, the RMB's fill): tens of thousands a second. A live
view (smctop attached to a control socket) needs what they add up to, not each of them, and
parsing every one cost it more CPU than the traffic it watched. A subscription with
``coalesce`` set gets, per connection and per interval, the last event of each data-path
sort, with ``coalesced`` saying how many it stands for (rdma.write: its ``length`` the sum).

Everything else passes at once, after whatever is held (so no event overtakes one that
happened before it), and so do the data-path events that mark something: a cursor move a
failover caused (``cause``, ``rewound``) and a CDC with flags other than flow control (close,
abort, urgent data, failover validation). Cursors are positions, so the last one of an interval says where the
connection got to; the bytes in between are the difference, which readers already compute.

Pure: the caller passes the time and sends what comes back.
"""

from __future__ import annotations

from dataclasses import replace

from stack.events import Event

COALESCIBLE = frozenset({"conn.cursor", "conn.rmb", "rdma.write", "cdc.msg"})
# a CDC's flow-control flags come and go with the data (a bulk sender into a small RMB sets
# write_blocked on nearly every CDC): such a CDC is coalesced; any other flag (closing,
# aborting, urgent data, failover validation) marks an event that goes as it is
FLOW_CONTROL = frozenset({"write_blocked", "cons_curs_upd_req"})


def _key(e: Event) -> tuple | None:
    """Which held event this one replaces (None: it passes as it is)."""
    f = e.fields
    kind = e.kind
    if kind == "conn.cursor":
        if "cause" in f or "rewound" in f:
            return None
        # a CDC's arrival (it carries the peer's space) and the application's read move different cursors
        return (kind, e.host, e.lgr, e.link, e.conn, f.get("side"), "peer_rmbe_space" in f)
    if kind == "cdc.msg":
        flags = f.get("flags")
        if flags and not FLOW_CONTROL.issuperset(flags):
            return None
        return (kind, e.host, e.lgr, e.link, e.conn, f.get("dir"))
    return (kind, e.host, e.lgr, e.link, e.conn)


class Coalescer:
    """Holds data-path events up to ``interval`` seconds; ``add`` returns what goes now."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.deadline: float | None = None  # when what is held goes (None: nothing held)
        self._held: dict[tuple, list] = {}  # key -> [last event, how many, summed length]

    @property
    def held(self) -> int:
        return len(self._held)

    def add(self, events: list[Event], now: float) -> list[Event]:
        out: list[Event] = []
        held = self._held
        for e in events:
            key = _key(e) if e.kind in COALESCIBLE else None
            if key is None:
                if held:
                    out.extend(self.flush())
                out.append(e)
                continue
            h = held.get(key)
            if h is None:
                held[key] = [e, 1, e.fields.get("length", 0)]
                if self.deadline is None:
                    self.deadline = now + self.interval
            else:
                h[0] = e
                h[1] += 1
                h[2] += e.fields.get("length", 0)
        if self.deadline is not None and now >= self.deadline:
            out.extend(self.flush())
        return out

    def flush(self) -> list[Event]:
        """Everything held, in the order of the last event each stands for."""
        held = sorted(self._held.values(), key=lambda h: h[0].t)
        self._held.clear()
        self.deadline = None
        out = []
        for e, n, length in held:
            if n > 1:
                fields = {**e.fields, "coalesced": n}
                if e.kind == "rdma.write":
                    fields["length"] = length
                e = replace(e, fields=fields)  # the bus's event is shared with other listeners: a new one
            out.append(e)
        return out
