"""Frames outside a QP's PSN window, reported as a possible attack.

RoCE has no authentication: a frame is taken when its source address, QP number, PSN and
(for an RDMA WRITE) rkey are right. A forger who knows the first two must guess the PSN, and
a PSN far from the one a QP expects comes from no honest peer, which never has more than a
window of packets in flight. The soft device counts such frames per QP (``psn_out_of_window``)
and, past a budget a second, stops examining them (``suspect_ignored``); see
``stack/verbs/soft/rc.py``.

This watch reads those counters from each link's QP once a second and, while they grow,
emits ``link.event`` ``suspect_frames`` for the link (at most one a second per link) with
the frames since the last report and the totals. ``link_counts`` gives the totals for the
stack's snapshot (``lgrs[].links[].psn_out_of_window`` and ``.suspect_ignored``). A device
whose QPs keep no such counters (pyverbs) reports nothing.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from stack.core.host import SmcHost
from stack.verbs.api import VerbsError

from .rdma import RdmaDriver

KEYS = ("psn_out_of_window", "suspect_ignored")
REPORT_EVERY = 1.0  # seconds between looks at the counters: at most one event a second per link


def qp_counts(rdma: RdmaDriver, handle: int) -> dict[str, int] | None:
    """A QP's suspect-frame counters, or None when it has none (or is gone)."""
    q = rdma.qps.get(handle)
    if q is None:
        return None
    try:
        stats = q.qp.stats
    except (VerbsError, AttributeError, ValueError):
        return None
    if not stats or KEYS[0] not in stats:
        return None
    return {k: int(stats.get(k, 0)) for k in KEYS}


class SuspectWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, rdma: RdmaDriver, host: SmcHost, now: Callable[[], float],
                 every: float = REPORT_EVERY) -> None:  # fmt: skip
        self.loop, self.rdma, self.host, self.now, self.every = loop, rdma, host, now, every
        self.reported: dict[tuple[str, int, int], dict[str, int]] = {}  # (lgr, link, QP handle) -> totals last reported
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self.loop.call_later(self.every, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        try:
            self.check()
        finally:
            self._handle = self.loop.call_later(self.every, self._tick)

    def check(self) -> int:
        """Look at every link's counters; emit one event per link whose counts grew. Returns
        the events emitted."""
        seen, emitted = set(), 0
        now = self.now()
        for lgr in list(self.host.lgrs):
            for link in list(lgr.links.values()):
                counts = qp_counts(self.rdma, link.qp.handle)
                if counts is None:
                    continue
                key = (lgr.name, link.link_id, link.qp.handle)
                seen.add(key)
                last = self.reported.get(key, dict.fromkeys(KEYS, 0))
                new = sum(counts[k] - last[k] for k in KEYS)
                if new > 0:
                    self.host.emit(now, "link.event", lgr.name, link.link_id, event="suspect_frames", device=link.qp.device,
                                   qpn=link.qp.qpn, new=new, **counts)  # fmt: skip
                    emitted += 1
                self.reported[key] = counts
        for key in set(self.reported) - seen:
            del self.reported[key]
        return emitted


def link_counts(rdma: RdmaDriver, snapshot: dict, lgrs) -> None:
    """Add each link's suspect-frame totals to a snapshot's ``lgrs[].links[]`` (in place)."""
    handles = {(lgr.name, link.link_id): link.qp.handle for lgr in lgrs for link in lgr.links.values()}
    for g in snapshot.get("lgrs", ()):
        for link in g.get("links", ()):
            handle = handles.get((g.get("id"), link.get("id")))
            counts = qp_counts(rdma, handle) if handle is not None else None
            if counts is not None:
                link.update(counts)
