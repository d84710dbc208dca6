"""Several files on one timeline (``smc-trace decode``, ``summary`` and ``export`` of several
files): whose host is whose.

Each file names its hosts itself: two recordings can each have a "client" and a "server"
(smc-traffic's processes), two captures of real hosts the same IP addresses. A host name
that more than one file has is told apart by its file: ``client@a.pcapng`` (the file's
name, or its path as given when two files have the same name). Events without a host
(``trace.note``) keep none; a name only one file has stays as it is.

The same connection end in two files (a capture on each host of a connection, two
recordings of one host) is counted once. It is the same end when both files name its host
alike, its ``conn.open`` has the same local and peer address and port, and its CLC Accept
or Confirm (``clc.msg``) an alert token in common: a 4-tuple is used again, a token with
it is not. The file that has more events of it keeps them (the first given, of equal
ones); the others' events of that end (those of its host with its connection number, and
its entry in a starting snapshot) are left out. An end without a ``conn.open`` of its own
(a capture names a second link's frames by their address, a host of its own) is the same
end when its connection's other end was matched so, and the file kept has that host with
that connection and an alert token (CLC or CDC) in common. Other ends without a
``conn.open`` or a token (a recording that began after the handshake, a fallback before
any Accept) cannot be matched and stay in each file under that file's name. Events of no connection
(LLC messages, link events, link group states) stay in each file too: the same frame seen
by two hosts' captures has two times, on two clocks, and cannot be matched reliably.

Pure: ``FileIndex`` learns a file's names from its events (a first reading), ``plan``
decides, and each file's ``Renaming`` applies it to that file's events (the second).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

from stack.events import Event

__all__ = ["FileIndex", "Renaming", "base_host", "plan"]

SEP = "@"


def base_host(name: str) -> str:
    """The host name a file gave, without the file ``plan`` added (``client@a.pcapng``: client)."""
    return name.rpartition(SEP)[0] or name


@dataclass
class _End:
    """One connection end in one file: what tells it in another."""

    local: str = ""
    peer: str = ""
    tokens: set[int] = field(default_factory=set)  # alert tokens of its CLC Accept/Confirm and CDC messages
    events: int = 0
    reopened: bool = False  # two conn.open that differ: not one end, matched with nothing


class FileIndex:
    """A file's host names and connection ends, from its events."""

    def __init__(self) -> None:
        self.hosts: set[str] = set()
        self.ends: dict[tuple[str, int], _End] = {}

    def add(self, e: Event) -> None:
        if not e.host:
            return
        self.hosts.add(e.host)
        if e.conn is None:
            return
        end = self.ends.get((e.host, e.conn))
        if end is None:
            end = self.ends[(e.host, e.conn)] = _End()
        end.events += 1
        if e.kind == "conn.open":
            local, peer = str(e.get("local") or ""), str(e.get("peer") or "")
            if end.local and (local, peer) != (end.local, end.peer):
                end.reopened = True
            end.local, end.peer = local, peer
        elif e.kind in ("clc.msg", "cdc.msg") and type(e.get("token")) is int and e.get("token"):
            end.tokens.add(e.get("token"))

    def feed(self, events: Iterable[Event]) -> FileIndex:
        for e in events:
            self.add(e)
        return self


@dataclass
class Renaming:
    """What one file's events become: its hosts' names (host -> name shown) and the
    connection ends (host, conn) another file keeps."""

    names: dict[str, str] = field(default_factory=dict)
    drop: set[tuple[str, int]] = field(default_factory=set)

    def __call__(self, events: Iterable[Event]) -> Iterator[Event]:
        for e in events:
            if e.conn is not None and (e.host, e.conn) in self.drop:
                continue
            if self.drop and e.kind == "stats":
                e = self._without_dropped(e)
            name = self.names.get(e.host)
            yield e if name is None else replace(e, host=name)

    def _without_dropped(self, e: Event) -> Event:
        """A starting snapshot without the ends another file keeps."""
        snap = e.get("snapshot")
        if not isinstance(snap, dict) or not isinstance(snap.get("conns"), list):
            return e
        conns = [c for c in snap["conns"] if not (isinstance(c, dict) and (e.host, c.get("conn")) in self.drop)]
        if len(conns) == len(snap["conns"]):
            return e
        return replace(e, fields={**e.fields, "snapshot": {**snap, "conns": conns}})


def _labels(files: Sequence[str]) -> dict[str, str]:
    """Each file's name, or its path as given when another file has the same name."""
    base = {f: os.path.basename(f.rstrip("/")) or f for f in files}
    counts: dict[str, int] = {}
    for b in base.values():
        counts[b] = counts.get(b, 0) + 1
    return {f: b if counts[b] == 1 else f for f, b in base.items()}


def plan(files: Sequence[tuple[str, FileIndex]]) -> dict[str, Renaming]:
    """Each file's Renaming (see the module's doc), for files given in this order."""
    labels = _labels([f for f, _ in files])
    seen_in: dict[str, int] = {}
    for _, idx in files:
        for h in idx.hosts:
            seen_in[h] = seen_in.get(h, 0) + 1
    out = {f: Renaming({h: f"{h}{SEP}{labels[f]}" for h in idx.hosts if seen_in[h] > 1}) for f, idx in files}
    # the same end in several files: by host, 4-tuple, and an alert token in common
    moved: dict[tuple[int, int], set[tuple[int, int]]] = {}  # (file, conn) left out -> (file, conn) kept
    by_tuple: dict[tuple[str, str, str], list[tuple[int, int, _End]]] = {}
    for i, (_, idx) in enumerate(files):
        for (host, conn), end in idx.ends.items():
            if seen_in[host] > 1 and end.local and end.peer and end.tokens and not end.reopened:
                by_tuple.setdefault((host, end.local, end.peer), []).append((i, conn, end))
    for (host, _, _), ends in by_tuple.items():
        groups: list[list[tuple[int, int, _End]]] = []
        unsure: set[int] = set()  # groups an end matched ambiguously: not merged
        for item in ends:
            matching = [g for g, members in enumerate(groups) if any(item[2].tokens & m[2].tokens for m in members)]
            if len(matching) == 1 and all(m[0] != item[0] for m in groups[matching[0]]):
                groups[matching[0]].append(item)
            else:
                unsure.update(matching)
                groups.append([item])
                if matching:
                    unsure.add(len(groups) - 1)
        for g, members in enumerate(groups):
            if g in unsure or len(members) < 2:
                continue
            keeper = max(members, key=lambda m: (m[2].events, -m[0]))
            for i, conn, _ in members:
                if (i, conn) != keeper[:2]:
                    out[files[i][0]].drop.add((host, conn))
                    moved.setdefault((i, conn), set()).add(keeper[:2])
    # an end with no conn.open of its own (a capture names a second link's frames by their
    # address, a host of its own): the same end when its connection number is one whose end
    # was matched above, and the file that keeps that one has the host with that connection
    # and an alert token in common
    for i, (f, idx) in enumerate(files):
        for (host, conn), end in idx.ends.items():
            to = moved.get((i, conn))
            if end.local or not end.tokens or seen_in[host] < 2 or to is None or len(to) != 1:
                continue
            (j, other) = next(iter(to))
            there = files[j][1].ends.get((host, other))
            if there is not None and not there.local and end.tokens & there.tokens:
                out[f].drop.add((host, conn))
    return out
