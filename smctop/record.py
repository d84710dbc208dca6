"""Recording what smctop shows to an smc-trace capture (pcapng) that ``smctop --replay``,
``smc-trace`` and Wireshark read.

With the embedded demo the recorder attaches to the stacks themselves, so the capture
holds their RoCEv2 frames and CLC messages as well as every event; with ``--attach`` or
``--replay`` it records the events smctop receives.
"""

from __future__ import annotations

import os
from typing import Iterable

from dissectors.recorder import Recorder as TraceRecorder
from dissectors.recorder import snapshot_event
from stack.events import Event


class Recorder:
    """``stacks``: in-process stacks to record directly (each starts with its own snapshot);
    otherwise ``model``: what smctop already knows of each host is written first, as the
    snapshot a replay starts from (a recording begun mid-session still has its connections,
    link groups and links)."""

    def __init__(self, path: str, stacks: Iterable = (), model=None) -> None:
        self.path = path
        self._trace = TraceRecorder(path)
        self._stacks = list(stacks)
        for stack in self._stacks:
            self._trace.attach(stack)
        self._count = 0
        if not self._stacks and model is not None:
            self._seed(model)

    def _seed(self, model) -> None:
        from .once import host_names, stack_snapshot

        t = model.now if model.now is not None else (model.events[-1].t if model.events else None)
        hosts = host_names(model)
        # each host's snapshot is dated by the last of its events smctop applied (or its last
        # snapshot), not by the clock: what the host sends from now on is not in the snapshot,
        # and must come after it in the recording, however late it arrives (an attached
        # stack's stream lags under load, and its coalesced data path by up to an interval)
        seen: dict[str, float] = {}
        for e in reversed(model.events):
            if e.host not in seen:
                seen[e.host] = e.t
                if len(seen) >= len(hosts):
                    break
        for host in hosts:
            h = model.hosts.get(host)
            at = max((x for x in (seen.get(host), h.snapshot_t if h is not None else None) if x is not None), default=t)
            if at is None:
                continue  # nothing seen of it yet: nothing to start from
            snap = stack_snapshot(model, host)
            snap["t"] = at
            self._trace.on_event(snapshot_event(at, snap))

    @property
    def count(self) -> int:
        """Events recorded so far (those the attached stacks emitted, or those written)."""
        return self._trace.stats.events if self._stacks else self._count

    def write(self, events: Iterable[Event]) -> None:
        if self._stacks:
            return  # the attached buses deliver these to the recorder already
        for e in events:
            self._trace.on_event(e)
            self._count += 1

    def close(self) -> None:
        self._trace.close()


def default_name(stamp: str) -> str:
    """``smctop-20260101-120000.pcapng`` for the stamp ``20260101-120000``."""
    return f"smctop-{stamp}.pcapng"


def open_recorder(path: str, stacks: Iterable = (), model=None) -> Recorder:
    """Start recording to ``path`` (its folder must exist)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(f"no folder {folder} to record into")
    return Recorder(path, stacks, model)
