"""The model behind smctop: a pure aggregation of events (and stack snapshots) into what the
views show. No I/O, no clock: every input carries its time, and :meth:`Model.advance` is
told what time it is.

* :meth:`Model.feed` takes one :class:`stack.events.Event` and updates hosts, link groups,
  links, connections, fallback counters and the recent-event log;
* :meth:`Model.apply_snapshot` takes a ``Stack.snapshot()`` dict (the control socket
  sends the same) and fills in what events alone cannot know after the fact (bytes,
  cursors, link groups that existed before we started listening);
* :meth:`Model.advance` closes one sample per ``interval`` of the given time: rates,
  and the histories behind the sparklines (rates, RMB fill, cursor positions).

Memory is bounded: histories are fixed rings, logs are bounded lists, closed connections
are kept ``closed_keep`` seconds (at most ``max_closed`` of them), recent events at most
``events_kept``. Views read the model: rows come and go when ``conns_added``,
``conns_closed`` or ``conns_removed`` move, and every connection carries a ``change_no``
that moves with what a view shows of it, so a table of thousands of rows redraws only the
rows on screen that changed, never rebuilds. :meth:`Model.take_conn_changes` names the changed keys too.

At scale (10,000 connections that all move every second; ``bench/bench_tui.py``) the work
a second is one pass over each poll's events (:meth:`Model.feed_many`,
:meth:`Model.feed_timed`) and one over the connections that moved when a sample closes:
a connection's history is a slot of 16 bytes in each of the last ``history`` samples (one
buffer a sample, copied from the one before, so who did not move costs nothing), the
header's counts are kept as connections change, and nothing on the event path keeps a set.
"""

from __future__ import annotations

import struct
from array import array
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Iterable

from stack.events import DATA_KINDS, Event, Failover, Failovers, marks_something, parse_snapshot, render, renderer  # noqa: F401 (Failover: the views use it)
from stack.wire import codes
from stack.wire.fields import parse_cursor


def reason_text(code: int) -> str:
    return codes.format_reason(code) if code else ""


class Ring:
    """A fixed-size history of numbers (oldest dropped), stored compactly."""

    __slots__ = ("buf", "size", "n", "pos")

    def __init__(self, size: int, typecode: str = "d") -> None:
        self.buf = array(typecode, bytes(array(typecode).itemsize * size))
        self.size = size
        self.n = 0
        self.pos = 0

    def push(self, value: float) -> None:
        self.buf[self.pos] = value
        self.pos = (self.pos + 1) % self.size
        if self.n < self.size:
            self.n += 1

    def values(self) -> list[float]:
        if self.n < self.size:
            return list(self.buf[: self.n])
        return list(self.buf[self.pos :]) + list(self.buf[: self.pos])

    def last(self, default: float = 0.0) -> float:
        return self.buf[(self.pos - 1) % self.size] if self.n else default

    def __len__(self) -> int:
        return self.n


class History:
    """Several series sampled together (one array, interleaved): cheap per connection."""

    __slots__ = ("width", "size", "buf", "n", "pos")

    def __init__(self, size: int, width: int) -> None:
        self.width, self.size = width, size
        self.buf = array("f", bytes(4 * size * width))
        self.n = 0
        self.pos = 0

    def push(self, *values: float) -> None:
        base = self.pos * self.width
        buf = self.buf
        for v in values:
            buf[base] = v
            base += 1
        self.pos = (self.pos + 1) % self.size
        if self.n < self.size:
            self.n += 1

    def series(self, i: int) -> list[float]:
        w = self.width
        idx = range(self.pos - self.n, self.pos)
        return [self.buf[(j % self.size) * w + i] for j in idx]


HIST_WIDTH = 4  # a connection's history: rate, RMB fill, rx cursor position, tx cursor position
_SAMPLE = struct.Struct(f"{HIST_WIDTH}f")  # one connection's values in one sample
SLOT = _SAMPLE.size


class Clock:
    """The model's samples, shared with every connection: how many closed, and the last
    ``size`` of them, each one buffer of ``SLOT`` bytes per connection slot (rate, fill, rx
    and tx cursor positions as float32). A sample starts as a copy of the one before, so a
    connection that did not move repeats its values; the sample loop writes those that moved."""

    __slots__ = ("tick", "size", "ring")

    def __init__(self, size: int) -> None:
        self.tick = 0  # samples closed so far; the k-th sample is number k, in ring[k % size]
        self.size = size
        self.ring = [bytearray() for _ in range(size)]


class Log(list):
    """A connection's recent messages, oldest first, at most ``maxlen`` (a list: a fraction of a
    deque's size, and a connection has few entries)."""

    __slots__ = ("maxlen",)


def new_log(maxlen: int, entries=()) -> Log:
    log = Log(entries[-maxlen:] if maxlen else ())
    log.maxlen = maxlen
    return log


class ConnHistory:
    """A connection's samples as series: one per model sample since it first moved, the last
    ``clock.size`` of them."""

    __slots__ = ("c",)

    def __init__(self, c: "Conn") -> None:
        self.c = c

    @property
    def n(self) -> int:
        c = self.c
        clk = c.clk
        return max(0, min(clk.size, clk.tick - c.hfirst + 1))

    def series(self, i: int) -> list[float]:
        c = self.c
        clk = c.clk
        off, ring, size = c.slot * SLOT, clk.ring, clk.size
        out = []
        for j in range(clk.tick - self.n + 1, clk.tick + 1):
            buf = ring[j % size]
            out.append(_SAMPLE.unpack_from(buf, off)[i] if len(buf) >= off + SLOT else 0.0)
        return out


@dataclass(slots=True, eq=False)
class Conn:
    """One connection as smcss -d shows it, plus what smctop adds (rates, histories, logs)."""

    host: str
    id: int
    # the fields the event path and the sample loop touch, together (fewer cache lines a connection)
    ev_tx: int = 0  # bytes sent: the last snapshot's count plus what events added since
    ev_rx: int = 0  # bytes received, likewise
    last_tx: int = 0  # ev_tx when the last sample closed
    last_rx: int = 0  # ev_rx, likewise
    rewrite: int = 0  # bytes a failover sends again (its cursor event's rewound): the next WRITEs' bytes are not new
    # ev_tx is tx_base plus the larger of two counts of the same bytes since then: the RDMA
    # WRITEs seen (tx_wr) and how far the producer cursor went past its high water (tx_cur).
    # A capture that lost a WRITE's frames still has the CDC after it, and the order in which
    # a WRITE and its cursor arrive (a sample gives both at once) does not matter.
    tx_base: int = 0
    tx_wr: int = 0
    tx_cur: int = 0
    tx_pos: int = -1  # the producer cursor unwrapped, in bytes from where counting began (-1: not yet)
    tx_hw: int = 0  # the furthest tx_pos went (a failover's rewind goes back; writing again is not new)
    txw: int = 0  # tx_prod's wrap
    peer_end: "Conn | None" = None  # the other end of this connection, when the model watches both ends
    version_no: int = 0  # bumped on every change by an event or a snapshot (see change_no)
    mtick: int = 0  # the sample it last moved in (the model's list of them has it once)
    rate_: float = 0.0  # bytes per second in sample number htick
    htick: int = 0  # the last sample it moved in
    hfirst: int = 0  # the first (0: none yet)
    slot: int = -1  # where its values are in each sample of clk (-1: none)
    lk_gen: int = -1
    lk: Link | None = None  # the link that carries it (resolved when lk_gen is stale)
    fill: int = 0
    rxw: int = 0  # rx_prod parsed: wrap and count (the hot path parses each cursor once)
    rxc: int = 0
    txc: int = 0  # tx_prod's count: where in the peer's RMB we write
    rx_prod: str = ""  # unknown until the first CDC (or "0:0" for a connection seen opening)
    rmb_size: int = 0
    link: int | None = None
    lgr: str | None = None
    role: str = ""
    local: str = ""
    peer: str = ""
    state: str = "INIT"
    mode: str = "INIT"
    version: int = 0
    reason: int = 0
    peer_diagnosis: int = 0
    token: int = 0
    peer_rmb_size: int = 0
    write_blocked: bool = False
    rx_cons: str = "0:0"
    tx_prod: str = "0:0"
    tx_cons: str = "0:0"
    tx_sent: str = "0:0"
    tx_fin: str = "0:0"
    opened: float = 0.0
    handshake_ms: float | None = None
    closed: float | None = None
    error: str = ""
    seen: int = -1  # change_no when take_conn_changes last named it
    clk: Clock | None = None
    log: Log | None = None  # (t, kind, dir, text): CLC, CDC, state, fallback; bounded
    states: list = field(default_factory=list)  # (t, old, new, cause)
    key: tuple[str, int] = None  # type: ignore[assignment]  # (host, id), the model's key

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = (self.host, self.id)

    @property
    def change_no(self) -> int:
        """Moves whenever what a view shows of it does: an event or snapshot changed it, or a
        sample gave it a new rate (views cache rendered rows by it)."""
        return self.version_no + self.htick  # both only grow

    @property
    def rate(self) -> float:
        """Bytes per second, both directions, over the last closed sample (0 if it did not move)."""
        clk = self.clk
        return self.rate_ if clk is not None and self.htick == clk.tick and self.hfirst else 0.0

    @property
    def hist(self) -> ConnHistory | None:
        return ConnHistory(self) if self.hfirst and self.slot >= 0 else None

    @property
    def bytes_sent(self) -> int:
        return self.ev_tx

    @property
    def bytes_received(self) -> int:
        return self.ev_rx

    @property
    def fill_ratio(self) -> float:
        return self.fill / self.rmb_size if self.rmb_size else 0.0

    @property
    def reason_text(self) -> str:
        return reason_text(self.reason)


PEER_DECLINE_CLASS = 0x05000000  # 0x05......: the peer declined (the peer's reason is its diagnosis)


@dataclass(slots=True, eq=False)
class FallbackConn:
    """One connection that fell back: each watched end's view (host -> (role, reason, peer
    diagnosis, peer address)), and the row of :meth:`Model.fallback_cause_rows` it counts in."""

    t: float
    ends: dict
    key: tuple | None = None


def fallback_cause(ends: dict) -> tuple[int, str, str]:
    """(the cause, who decided it, what the other end saw) of a fallen-back connection from its
    ends' views: the cause is the reason of the end that declined (or did not propose); an end
    told by its peer (0x05......) points at the peer, whose diagnosis it carries."""
    views = sorted(ends.items(), key=lambda kv: kv[1][0] != "server")  # the server first: it usually declines
    own = [(h, v) for h, v in views if (v[1] & 0xFF000000) != PEER_DECLINE_CLASS]
    if own:
        host, (role, cause, _diag, _peer) = own[0]
        by = f"{host} ({role})"
    else:  # every watched end was told by its peer: the peer's diagnosis is the cause
        host, (role, reason, diag, peer) = views[0]
        cause = diag or reason
        by = f"peer {peer.rpartition(':')[0] or peer or '?'} (not watched)"
    others = [f"{h} ({v[0]}): {reason_text(v[1]) or 'not SMC'}" for h, v in views if h != host or not own]
    return cause, by, "; ".join(others)


@dataclass(slots=True, eq=False)
class Link:
    host: str
    lgr: str
    id: int
    state: str = "LINK_UNUSED"
    device: str = ""
    qpn: int = 0
    peer_qpn: int = 0
    gid: str = ""
    peer_gid: str = ""
    asym: bool = False
    conns: int = 0
    bytes: int = 0  # RDMA WRITE bytes posted on this link
    rate: float = 0.0
    last_bytes: int = 0
    llc: int = 0
    unused_since: float | None = None  # deleted links stay (with their history) for a while
    hist: Ring = field(default_factory=lambda: Ring(60))
    counters: dict = field(default_factory=dict)  # numbers the snapshot has beyond the schema (PSN out of window, suspect frames, ...)


@dataclass(slots=True, eq=False)
class LinkGroup:
    host: str
    id: str
    role: str = ""
    type: str = "NONE"
    crit: bool = True
    version: int = 0
    peer_host: str = ""
    eid: str = ""  # the EID the link group was made with (SMC-Rv2), when the snapshot says
    conns: int = 0
    terminated: bool = False
    links: dict[int, Link] = field(default_factory=dict)
    llc_log: deque = field(default_factory=lambda: deque(maxlen=64))  # (t, link, dir, text)


@dataclass(slots=True, eq=False)
class Host:
    name: str
    stats: dict = field(default_factory=dict)
    devices: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)  # from the last snapshot
    snapshot_t: float | None = None
    rdma: dict = field(default_factory=dict)  # device -> its counters (frames, drops, PSN out of window, ...), engine
    listeners: list = field(default_factory=list)  # listening sockets, when the snapshot lists them
    ueids: list = field(default_factory=list)  # the host's user EIDs (SMC-Rv2), when known
    extra: dict = field(default_factory=dict)  # other snapshot keys a view may show (limits, security counters)
    up: bool = True  # its source feeds it: False from host_gone until its next snapshot


# a snapshot that names no host (its "host" null or absent) is this host's: "?" reads as
# "not known" in every table and label, where "" left an empty Host column and "on " headings
UNNAMED = "?"


class Model:
    def __init__(self, *, interval: float = 1.0, history: int = 60, conn_log: int = 16, watched_log: int = 400,
                 events_kept: int = 20_000, closed_keep: float = 5.0, max_closed: int = 2_000, rare_kept: int | None = None) -> None:  # fmt: skip
        self.rare_kept = rare_kept if rare_kept is not None else 5 * events_kept
        self.interval = interval
        self.history = history
        self.conn_log = conn_log
        self.watched_log = watched_log
        self.events_kept = events_kept
        self.closed_keep = closed_keep
        self.max_closed = max_closed
        self.epoch = 0  # bumped by clear(): views holding connections start again
        self.clear()

    def clear(self) -> None:
        """Forget everything (a replay seeking backwards starts again from here)."""
        self.epoch += 1
        self.hosts: dict[str, Host] = {}
        self.conns: dict[tuple[str, int], Conn] = {}
        self.lgrs: dict[tuple[str, str], LinkGroup] = {}
        self._ended: OrderedDict[tuple[str, str], float] = OrderedDict()  # link groups that ended and left the model, oldest first
        self.failovers = Failovers(maxlen=200)  # paired as smc-trace summary pairs them
        self.fallbacks: Counter = Counter()  # (host, role, reason) -> connection ends (each end's own view)
        self.fallback_causes: Counter = Counter()  # (cause, decided by, the other end's view) -> connections
        self.fallback_cause_last: dict[tuple, float] = {}
        self._fb_pending: dict[tuple, FallbackConn] = {}  # address pair -> a fallen-back connection, both ends' views
        self._ends: dict[tuple[str, str], Conn] = {}  # (local, peer) -> the open connection end with those addresses
        self.fallback_last: dict[tuple[str, str, int], float] = {}
        self.kinds: Counter = Counter()
        self.events: list[Event] = []  # the most recent events_kept (or up to twice as many)
        self.rare: deque[Event] = deque(maxlen=self.rare_kept)  # the rare events (_rare), kept far longer
        self.versions: Counter = Counter()  # SMC-R version -> connection ends that used it (smcr stats)
        self.seq = 0  # events fed so far; events[-1] is number seq
        self.dropped = 0  # events the source missed (events.dropped)
        self.t0: float | None = None  # the first time seen
        self.now: float | None = None  # the last time advanced to
        self.next_tick: float | None = None
        self.ticks = 0
        self.smc_conns = 0
        self.tcp_conns = 0
        self.opened = 0
        self.cdc = 0
        self.llc = 0
        self.bytes = 0  # all connections, both directions, each byte once (not once per watched end)
        self.rate = 0.0
        self.handshakes: deque[float] = deque(maxlen=2000)  # ms, SMC-R handshakes
        self.latencies: deque[float] = deque(maxlen=5000)  # us, request/response, when the source measures it
        self.perf = History(self.history, 6)  # throughput B/s, CDC/s, LLC/s, conns opened/s, fallbacks/s, events/s
        self._last = (0, 0, 0, 0, 0, 0)
        self._moved: list[Conn] = []  # since the last sample: the connections the next one looks at
        self._period = 1  # the number of the sample open now (ticks + 1)
        self._prev: list[Conn] = []  # those the last sample looked at
        self._removed: set[tuple[str, int]] = set()
        self._closed: deque[tuple[float, tuple[str, int]]] = deque()
        self._clock = Clock(self.history)
        self._slots = 0  # connection slots in the samples
        self._free: list[int] = []  # of them, those whose connection was forgotten
        self._link_gen = 0  # bumped when links come or go: connections look their link up again
        self._open = self._open_smc = self._open_tcp = 0  # connections not closed, and of them SMCR and TCP
        self._open_smcd = 0  # and SMC-D (the kernel source on a host with ISM; a capture of such hosts)
        self.watched: tuple[str, int] | None = None
        self.conns_added = self.conns_closed = self.conns_removed = 0  # views compare these to know when rows come and go
        self._totals: tuple[tuple, dict] | None = None
        self.links_changed = True

    # ------------------------------------------------------------------ lookups

    def host(self, name: str) -> Host:
        h = self.hosts.get(name)
        if h is None:
            h = self.hosts[name] = Host(name)
        return h

    def conn(self, host: str, conn_id: int, t: float | None = None) -> Conn:
        key = (host, conn_id)
        c = self.conns.get(key)
        if c is None:
            if host not in self.hosts:
                self.host(host)
            if self._free:
                slot = self._free.pop()
            else:
                slot = self._slots
                self._slots += 1
            c = self.conns[key] = Conn(host, conn_id, opened=t if t is not None else (self.now or 0.0), key=key, clk=self._clock,
                                       slot=slot, log=new_log(self.watched_log if key == self.watched else self.conn_log))  # fmt: skip
            self.conns_added += 1
            self._open += 1
        return c

    def lgr(self, host: str, lgr_id: str) -> LinkGroup:
        key = (host, lgr_id)
        g = self.lgrs.get(key)
        if g is None:
            g = self.lgrs[key] = LinkGroup(host, lgr_id)
            self.links_changed = True
        return g

    def link(self, host: str, lgr_id: str, link_id: int) -> Link:
        g = self.lgr(host, lgr_id)
        link = g.links.get(link_id)
        if link is None:
            link = g.links[link_id] = Link(host, lgr_id, link_id, hist=Ring(self.history))
            self.links_changed = True
            self._link_gen += 1
        return link

    def watch(self, key: tuple[str, int] | None) -> None:
        """Keep a longer message log for the connection a detail view shows."""
        if self.watched and self.watched in self.conns:
            c = self.conns[self.watched]
            c.log = new_log(self.conn_log, c.log)
        self.watched = key
        if key and key in self.conns:
            c = self.conns[key]
            c.log = new_log(self.watched_log, c.log)

    def take_conn_changes(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """(changed or new, removed) connection keys since the last call. If nobody asked for
        a long time, removed holds only the latest of them: a view then rebuilds from ``conns``.
        Costs a look at every connection (the event path keeps no set of changes for it)."""
        changed = set()
        for key, c in self.conns.items():
            v = c.version_no + c.htick  # change_no
            if v != c.seen:
                c.seen = v
                changed.add(key)
        removed, self._removed = self._removed, set()
        return changed - removed, removed

    def rare_since(self, t: float | None) -> list[Event]:
        """The rare events kept (state, fallback, link, link group, failover, and the data
        path's events that mark something: see _rare), oldest first, those after ``t`` when given."""
        if t is None:
            return list(self.rare)
        return [e for e in self.rare if e.t > t]

    def rmb_usage(self, host: str) -> tuple[int, int, int]:
        """(open SMC-R connection ends, their RMB bytes, bytes waiting in them) of a host."""
        n = size = fill = 0
        for c in self.conns.values():
            if c.host == host and c.closed is None and c.mode == "SMCR":
                n += 1
                size += c.rmb_size
                fill += c.fill
        return n, size, fill

    def events_since(self, seq: int) -> list[Event]:
        """The kept events after number ``seq`` (remember ``model.seq`` to ask again later)."""
        n = self.seq - seq
        if n <= 0:
            return []
        return self.events[-n:] if n < len(self.events) else list(self.events)

    # ------------------------------------------------------------------ events

    def feed_many(self, events: Iterable[Event]) -> None:
        """Feed events in order (as :meth:`feed` one by one, in one pass)."""
        events = events if isinstance(events, list) else list(events)
        if not events:
            return
        if self.t0 is None:
            self.t0 = events[0].t
        handlers = _HANDLERS
        for e in events:
            handler = handlers.get(e.kind)
            if handler is not None:
                handler(self, e)
        self._account(events, 0, len(events))

    def feed_timed(self, events: list[Event]) -> None:
        """Feed events in time order, closing each sample before the first event after it (for
        sources that deliver many seconds at once: a replay, the synthetic clock)."""
        tick = self.next_tick
        if tick is not None and events and max(map(_T, events)) < tick:  # no sample closes among them
            self.feed_many(events)
            return
        handlers = _HANDLERS
        start = 0
        for i, e in enumerate(events):
            if tick is None or e.t >= tick:
                self._account(events, start, i)  # the sample counts the events fed before it
                start = i
                self.advance(e.t)
                tick = self.next_tick
            handler = handlers.get(e.kind)
            if handler is not None:
                handler(self, e)
        self._account(events, start, len(events))

    def _account(self, events: list[Event], start: int, end: int) -> None:
        """The bookkeeping :meth:`feed` does per event, for ``events[start:end]`` at once."""
        if end <= start:
            return
        if self.t0 is None:
            self.t0 = events[start].t
        self.seq += end - start
        log = self.events
        part = events[start:end] if start or end < len(events) else events
        log += part
        if len(log) > 2 * self.events_kept:
            del log[: len(log) - self.events_kept]
        self.kinds.update(map(_KIND, part))
        self.rare.extend([e for e in part if _rare(e)])

    def feed(self, e: Event) -> None:
        if self.t0 is None:
            self.t0 = e.t
        self.seq += 1
        events = self.events
        events.append(e)
        if len(events) > 2 * self.events_kept:
            del events[: len(events) - self.events_kept]
        kind = e.kind
        kinds = self.kinds
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind in RARE_KINDS or (kind in DATA_KINDS and marks_something(e)):  # _rare, inline on the hot path
            self.rare.append(e)
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, e)

    def _touch(self, c: Conn) -> None:
        c.version_no += 1
        if c.mtick != self._period:
            c.mtick = self._period
            self._moved.append(c)

    def _conn_of(self, e: Event) -> Conn | None:
        if e.conn is None:
            return None
        c = self.conns.get((e.host, e.conn))
        if c is None:
            c = self.conn(e.host, e.conn, e.t)
        if e.lgr is not None and e.lgr != c.lgr:
            c.lgr = e.lgr
            c.lk_gen = -1
        if e.link is not None and e.link != c.link:
            c.link = e.link
            c.lk_gen = -1
        return c

    def _log(self, c: Conn, e: Event) -> None:
        """The event in the connection's log, as its schema template reads (rendered now: a log
        entry is a short string, not the event it came from)."""
        log = c.log
        log.append((e.t, e.kind, e.fields.get("dir", ""), render(e)))
        if len(log) > log.maxlen:
            del log[0]

    def _set_mode(self, c: Conn, mode: str) -> None:
        old = c.mode
        if mode == old:
            return
        c.mode = mode
        c.lk_gen = -1
        if c.closed is None:
            if old == "SMCR":
                self._open_smc -= 1
            elif old == "TCP":
                self._open_tcp -= 1
            elif old == "SMCD":
                self._open_smcd -= 1
            if mode == "SMCR":
                self._open_smc += 1
            elif mode == "TCP":
                self._open_tcp += 1
            elif mode == "SMCD":
                self._open_smcd += 1

    def _close(self, c: Conn, t: float) -> None:
        c.closed = t
        self.conns_closed += 1
        self._closed.append((t, c.key))
        self._open -= 1
        if c.mode == "SMCR":
            self._open_smc -= 1
        elif c.mode == "TCP":
            self._open_tcp -= 1
        elif c.mode == "SMCD":
            self._open_smcd -= 1

    def _pair(self, c: Conn) -> None:
        """Find the other end of ``c`` among the watched ends (its addresses swapped): a byte
        is then counted once, as sent, never again as received."""
        if not c.local or not c.peer or c.peer_end is not None:
            return
        self._ends[(c.local, c.peer)] = c
        other = self._ends.get((c.peer, c.local))
        if other is not None and other is not c and other.closed is None and other.peer_end is None:
            c.peer_end, other.peer_end = other, c

    def _on_conn_open(self, e: Event) -> None:
        c = self._conn_of(e)
        f = e.fields
        c.role, c.local, c.peer, c.opened = f.get("role", ""), f.get("local", ""), f.get("peer", ""), e.t
        c.rx_prod = c.rx_prod or "0:0"
        if c.tx_pos < 0 and not c.tx_wr:  # seen opening: its producer cursor begins at 0:0
            c.tx_pos = c.tx_hw = c.txw = c.txc = 0
        self._pair(c)
        self.opened += 1
        self._log(c, e)
        self._touch(c)

    def _on_conn_state(self, e: Event) -> None:
        c = self._conn_of(e)
        f = e.fields
        new = f.get("new", "")
        c.state = new
        if len(c.states) < 64:
            c.states.append((e.t, f.get("old", ""), new, f.get("cause", "")))
        self._log(c, e)
        if new == "CLOSED" and c.closed is None:
            self._close(c, e.t)
        self._touch(c)

    def _on_conn_mode(self, e: Event) -> None:
        c = self._conn_of(e)
        f = e.fields
        self._set_mode(c, f.get("mode", c.mode))
        if c.mode == "SMCR":
            self.smc_conns += 1
            c.version = f.get("version", c.version)
            self.versions[c.version] += 1
            c.token = f.get("token", c.token)
            c.rmb_size = f.get("rmb_size", c.rmb_size)
            c.peer_rmb_size = f.get("peer_rmb_size", c.peer_rmb_size)
            hs = f.get("handshake_ms")
            if hs is not None:
                c.handshake_ms = hs
                other = c.peer_end
                if other is None or not (c.role == "server" and other.role == "client"):  # one a connection: the client's, when both ends are watched
                    self.handshakes.append(hs)
        elif c.mode == "TCP":
            self.tcp_conns += 1
            c.reason = f.get("reason", c.reason) or c.reason
        self._log(c, e)
        self._touch(c)

    def _on_conn_fallback(self, e: Event) -> None:
        c = self._conn_of(e)
        f = e.fields
        c.reason = f.get("reason", 0) or 0
        c.peer_diagnosis = f.get("peer_diagnosis", 0) or 0
        key = (e.host, c.role or "-", c.reason)
        self.fallbacks[key] += 1
        self.fallback_last[key] = e.t
        self._fallback_conn(c, e.t)
        self._log(c, e)
        self._touch(c)

    def _fallback_conn(self, c: Conn, t: float) -> None:
        """Count a fallen-back connection once, with both ends' view when both are watched: the
        second end's fallback moves the connection from its one-end row to its two-end row."""
        pair = tuple(sorted((c.local, c.peer))) if c.local and c.peer else (c.host, c.id)
        rec = self._fb_pending.get(pair)
        if rec is None or c.host in rec.ends or t - rec.t > 10.0:  # none yet, or the addresses' next connection
            rec = FallbackConn(t, {})
            self._fb_pending.pop(pair, None)
            self._fb_pending[pair] = rec
            pending = self._fb_pending
            while pending:  # the oldest have had their chance to pair
                first = next(iter(pending))
                if len(pending) <= 10_000 and pending[first].t > t - 10.0:
                    break
                del pending[first]
        elif rec.key is not None:
            self.fallback_causes[rec.key] -= 1
            if not self.fallback_causes[rec.key]:
                del self.fallback_causes[rec.key]
        rec.ends[c.host] = (c.role or "-", c.reason, c.peer_diagnosis, c.peer)
        rec.key = fallback_cause(rec.ends)
        self.fallback_causes[rec.key] += 1
        self.fallback_cause_last[rec.key] = t

    def _on_conn_error(self, e: Event) -> None:
        c = self._conn_of(e)
        c.error = str(e.fields.get("reason", ""))
        self._log(c, e)
        self._touch(c)

    def _hot_conn(self, e: Event) -> Conn | None:
        """The connection of a frequent event: one lookup when it is known and on the same link."""
        c = self.conns.get((e.host, e.conn))
        if c is None or (e.link is not None and c.link != e.link) or (e.lgr is not None and c.lgr != e.lgr):
            c = self._conn_of(e)
        return c

    def _on_conn_cursor(self, e: Event) -> None:
        c = self.conns.get((e.host, e.conn))  # the hot path: one lookup
        if c is None or (c.link != e.link and e.link is not None) or (c.lgr != e.lgr and e.lgr is not None):
            c = self._conn_of(e)
            if c is None:
                return
        f = e.fields
        if "coalesced" in f:
            self._coalesced(e)
        side = f.get("side")
        n = f.get("len")  # the kernel source's per-call count (smc_tx_sendmsg / smc_rx_recvmsg), or what a cursor moved
        if type(n) is int and n > 0 and f.get("source") in ("tracepoint", "snapshot"):  # since the last poll (KernelTuiSource)
            if side == "tx":
                c.tx_wr += n
                c.ev_tx = c.tx_base + max(c.tx_wr, c.tx_cur)
            else:
                c.ev_rx += n
        if side != "tx" and "peer_rmbe_space" in f:  # a CDC arrived: the peer's producer and consumer cursors
            prod = f.get("prod")
            if prod is not None and prod != c.rx_prod:
                w, _, n = prod.partition(":")
                w, n = int(w), int(n)
                size = c.rmb_size
                if size and c.rx_prod:
                    d = ((w - c.rxw) & 0xFFFF) * size + n - c.rxc  # wrap counters are 16 bits (WRAP)
                    if 0 < d < size << 15:  # less than half of the counters' range: forward
                        c.ev_rx += d
                c.rx_prod = prod
                c.rxw = w
                c.rxc = n
            c.rx_cons = f.get("cons", c.rx_cons)
            c.fill = f.get("bytes_to_rcv", c.fill)
        elif side == "tx":
            if type(f.get("rewound")) is int and f["rewound"] > 0:  # a failover: what the old link may have lost goes again
                c.rewrite += f["rewound"]
            prod = f.get("prod")
            if prod is not None and prod != c.tx_prod:
                _tx_cursor(c, prod)
            if "cons" in f:
                c.tx_cons = f["cons"]
            c.tx_sent = f.get("sent", c.tx_sent)
            c.tx_fin = f.get("fin", c.tx_fin)
        else:  # the application read: our consumer cursor
            c.tx_cons = f.get("cons", c.tx_cons)
            c.fill = f.get("bytes_to_rcv", c.fill)
        c.version_no += 1
        if c.mtick != self._period:
            c.mtick = self._period
            self._moved.append(c)

    def _on_conn_rmb(self, e: Event) -> None:
        c = self._hot_conn(e)
        if c is None:
            return
        f = e.fields
        if "coalesced" in f:
            self._coalesced(e)
        if "fill" in f:
            c.fill = f["fill"]
        if "size" in f:
            c.rmb_size = f["size"]
        c.write_blocked = bool(f.get("write_blocked", c.write_blocked))
        self._touch(c)

    def _on_rdma_write(self, e: Event) -> None:
        c = self.conns.get((e.host, e.conn))  # the hot path: one lookup, no calls
        if c is None or (e.link is not None and c.link != e.link) or (e.lgr is not None and c.lgr != e.lgr):
            c = self._conn_of(e)
            if c is None:
                return
        n = e.fields.get("length", 0)  # coalesced: the WRITEs' sum
        if c.rewrite:  # written again after a failover: counted when first written
            again = min(c.rewrite, n)
            c.rewrite -= again
            n -= again
        wr = c.tx_wr = c.tx_wr + n
        c.ev_tx = c.tx_base + (wr if wr > c.tx_cur else c.tx_cur)
        if "coalesced" in e.fields:
            self._coalesced(e)
        c.version_no += 1
        if c.mtick != self._period:
            c.mtick = self._period
            self._moved.append(c)

    def _coalesced(self, e: Event) -> None:
        """A coalesced event (an attached stack's data path, AttachSource.COALESCE) counts as
        the events it stands for."""
        n = e.fields["coalesced"]
        if type(n) is int and n > 1:
            self.kinds[e.kind] += n - 1
            if e.kind == "cdc.msg":
                self.cdc += n - 1

    def _on_cdc(self, e: Event) -> None:
        self.cdc += 1
        if "coalesced" in e.fields:
            self._coalesced(e)
        c = self.conns.get((e.host, e.conn))  # the hot path: one lookup, the log line inline
        if c is None or (e.link is not None and c.link != e.link) or (e.lgr is not None and c.lgr != e.lgr):
            c = self._conn_of(e)
            if c is None:
                return
        f = e.fields
        if f.get("dir") == "tx":  # its producer cursor: what this end has written (a lost WRITE shows here)
            prod = f.get("prod")
            if prod is not None and prod != c.tx_prod and "failover_validation" not in (f.get("flags") or ()):
                _tx_cursor(c, prod)
                self._touch(c)
        log = c.log
        log.append((e.t, "cdc.msg", f.get("dir", ""), _CDC_TEXT(e)))
        if len(log) > log.maxlen:
            del log[0]

    def _on_clc(self, e: Event) -> None:
        c = self._conn_of(e)
        if c is not None:
            self._log(c, e)

    def _on_llc(self, e: Event) -> None:
        self.llc += 1
        if e.lgr is None:
            return
        g = self.lgrs.get((e.host, e.lgr))
        if g is None:
            # a late message of a group that ended does not bring it back; a new group starts with CONFIRM LINK
            if (e.host, e.lgr) in self._ended and "CONFIRM LINK" not in str(e.fields.get("type", "")):
                return
            g = self.lgr(e.host, e.lgr)
        g.llc_log.append((e.t, e.link, e.fields.get("dir", ""), render(e)))
        if e.link:
            self.link(e.host, e.lgr, e.link).llc += 1

    def _on_link_state(self, e: Event) -> None:
        if e.lgr is None or not e.link:  # link 0: not yet numbered
            return
        self.link(e.host, e.lgr, e.link).state = e.fields.get("new", "")
        self.links_changed = True

    def _on_link_event(self, e: Event) -> None:
        f = e.fields
        ev = f.get("event")
        if e.lgr is None:
            return
        if ev == "deleted" and f.get("all"):  # DELETE LINK for every link (no link number): the link group ends
            g = self.lgrs.get((e.host, e.lgr))
            if g is not None:
                g.terminated = True
                for link in g.links.values():
                    link.state = "LINK_UNUSED"
                self.links_changed = True
            return
        if not e.link:
            return
        if ev == "deleted":
            g = self.lgrs.get((e.host, e.lgr))  # a link of a group we do not show (any more): nothing to mark
            link = g.links.get(e.link) if g is not None else None
            if link is not None:
                link.state = "LINK_UNUSED"
        elif ev == "added":
            link = self.link(e.host, e.lgr, e.link)
            link.qpn = f.get("qpn", link.qpn)
            link.device = f.get("device", link.device)
            link.peer_qpn = f.get("peer_qpn", link.peer_qpn)  # a capture's CONFIRM LINK names both ends
            link.gid, link.peer_gid = f.get("gid", link.gid), f.get("peer_gid", link.peer_gid)
        elif ev in ("failover_begin", "failover_end"):
            last = self.failovers[-1] if self.failovers else None
            fo = self.failovers.feed(e)
            if fo is not None and fo is not last and self.failovers[-1] is fo:  # a new one
                self._pair_failover(fo)
        self.links_changed = True

    def _pair_failover(self, fo: Failover) -> None:
        """Both ends of a link group fail over when its link dies (each moves its ends of the
        connections): ``fo`` is the other end of an earlier failover when that one is on the
        link group at the other end of this one's connections, off the same link (SMC-R numbers
        a link alike at both ends), and not paired yet."""
        peers = {(o.host, o.lgr) for c in self.conns.values() if c.host == fo.host and c.lgr == fo.lgr and (o := c.peer_end) is not None}
        if not peers:
            return
        for other in reversed(self.failovers):
            if other is not fo and not other.paired and other.from_link == fo.from_link and (other.host, other.lgr) in peers:
                # counted at the end that began it (it found the link dead; the other heard of it
                # by DELETE LINK), whichever host's events the source delivered first
                other.paired = fo.paired = True
                (fo if other.t <= fo.t else other).counted = False
                break

    @staticmethod
    def failover_counted(fo: Failover) -> bool:
        return fo.counted

    def _on_lgr_state(self, e: Event) -> None:
        if e.lgr is None:
            return
        g = self.lgr(e.host, e.lgr)
        f = e.fields
        g.type = f.get("new", g.type)
        g.crit = bool(f.get("crit", g.crit))
        if "role" in f:
            g.role = f["role"]
        if "version" in f:
            g.version = f["version"]
        if f.get("cause") not in (None, "created") and g.type == "NONE":
            g.terminated = True
        self.links_changed = True

    def _on_dropped(self, e: Event) -> None:
        self.dropped += int(e.fields.get("count", 0))

    # ------------------------------------------------------------------ snapshots

    def apply_snapshot(self, snap: dict[str, Any]) -> dict[str, Any]:
        """A host's ``Stack.snapshot()``: the truth at its ``t`` for what it covers. It is read
        through the schema's snapshot parser (stack.events.parse_snapshot, as smc-trace's
        summary reads one); one that does not match raises BadRecord and changes nothing.
        Returns the snapshot as parsed."""
        snap = parse_snapshot(snap)
        self._totals = None  # a snapshot can change link and link-group states that no stamp of totals() counts
        name = snap.get("host") or UNNAMED
        t = snap.get("t", self.now or 0.0)
        if self.t0 is None:
            self.t0 = t
        self.apply_host_info(snap)
        seen = set()
        for s in snap.get("conns", []):
            known = (name, s["conn"]) in self.conns
            c = self.conn(name, s["conn"], t)
            seen.add(c.id)
            c.state = s.get("state", c.state)
            self._set_mode(c, s.get("mode", c.mode))
            c.role = c.role or s.get("role", "")
            c.local = c.local or s.get("local", "")
            c.peer = c.peer or s.get("peer", "")
            self._pair(c)
            c.version = s.get("version", c.version)
            c.reason = s.get("fallback_reason", c.reason) or c.reason
            c.peer_diagnosis = s.get("peer_diagnosis", c.peer_diagnosis) or c.peer_diagnosis
            c.token = s.get("token", c.token)
            c.rmb_size = s.get("rmb_size", c.rmb_size)
            c.peer_rmb_size = s.get("peer_rmb_size", c.peer_rmb_size)
            c.fill = s.get("bytes_to_rcv", c.fill)
            c.write_blocked = bool(s.get("write_blocked", c.write_blocked))
            c.lgr = s.get("lgr", c.lgr)
            c.link = s.get("link", c.link)
            c.lk_gen = -1
            for k in ("rx_prod", "rx_cons", "tx_prod", "tx_cons", "tx_sent", "tx_fin"):
                if k in s:
                    setattr(c, k, s[k])
            c.rxw, c.rxc = parse_cursor(c.rx_prod)
            c.txw, c.txc = parse_cursor(c.tx_prod)
            c.ev_tx, c.ev_rx = s.get("bytes_sent", 0), s.get("bytes_received", 0)  # the truth at t; events add to it
            c.tx_base, c.tx_wr, c.tx_cur = c.ev_tx, 0, 0  # both counts begin again at the snapshot's
            c.tx_pos = c.tx_hw = 0 if "tx_prod" in s else -1
            c.rewrite = 0  # the stack's count already took back what a failover sends again
            if not known:  # what it moved before we watched is no rate and no part of what moved while watched
                c.last_tx, c.last_rx = c.ev_tx, c.ev_rx
            self._touch(c)
        for key, c in list(self.conns.items()):  # gone from the stack: closed
            if key[0] == name and c.id not in seen and c.closed is None and c.opened <= t:
                c.state = "CLOSED"
                self._close(c, t)
                self._touch(c)
        lgr_ids = set()
        for gs in snap.get("lgrs", []):
            g = self.lgr(name, gs["id"])
            lgr_ids.add(gs["id"])
            g.role, g.type, g.crit = gs.get("role", g.role), gs.get("type", g.type), bool(gs.get("crit", g.crit))
            g.version, g.peer_host, g.conns = gs.get("version", g.version), gs.get("peer_host", g.peer_host), gs.get("conns", g.conns)
            g.terminated = False
            if isinstance(gs.get("eid"), str):
                g.eid = gs["eid"][:32]
            link_ids = set()
            for ls in gs.get("links", []):
                link = self.link(name, gs["id"], ls["id"])
                link_ids.add(ls["id"])
                link.state, link.device = ls.get("state", link.state), ls.get("device", link.device)
                link.qpn, link.peer_qpn = ls.get("qpn", link.qpn), ls.get("peer_qpn", link.peer_qpn)
                link.gid, link.peer_gid = ls.get("gid", link.gid), ls.get("peer_gid", link.peer_gid)
                link.asym, link.conns = bool(ls.get("asym", link.asym)), ls.get("conns", link.conns)
                link.counters = {str(k): v for k, v in ls.items() if k not in _LINK_KNOWN and type(v) in (int, float)}
            for lid, link in g.links.items():
                if lid not in link_ids:
                    link.state = "LINK_UNUSED"
        for (hn, gid), g in self.lgrs.items():
            if hn == name and gid not in lgr_ids:
                g.terminated = True
        self.links_changed = True
        return snap

    def host_gone(self, name: str, t: float | None = None) -> None:
        """A host's source ended (its control socket closed: the stack exited). What it had
        open went with it, as an empty snapshot of it would say: its connections close, its
        link groups end and their links go unused (and leave the views in time)."""
        t = self.now if t is None else t
        t = 0.0 if t is None else t
        if name in self.hosts:
            self.hosts[name].up = False
        for key, c in list(self.conns.items()):
            if key[0] == name and c.closed is None:
                c.state = "CLOSED"
                self._close(c, t)
                self._touch(c)
        for (hn, _gid), g in self.lgrs.items():
            if hn == name:
                g.terminated = True
                for link in g.links.values():
                    link.state = "LINK_UNUSED"
                    link.unused_since = t if link.unused_since is None else link.unused_since
        self.links_changed = True
        self._totals = None

    def host_back(self, name: str) -> None:
        """A gone host's source is back (a new stack serves its control socket): the closed
        connections of its last run go now, so that the new run's connection numbers, which
        start again, are new connections and not old ones brought back. Its next snapshot
        marks it up."""
        for key, c in list(self.conns.items()):
            if key[0] == name and c.closed is not None and key != self.watched:
                self._forget(c)
        self._totals = None

    def apply_host_info(self, snap: dict[str, Any]) -> Host:
        """The host-wide part of a snapshot (counters, devices and their counters, listening
        sockets, UEIDs, other keys), read defensively: keys the schema does not declare may be
        absent or of any shape. Connections and link groups are :meth:`apply_snapshot`'s."""
        h = self.host(str(snap.get("host") or UNNAMED))
        h.up = True
        stats = snap.get("stats")
        h.stats = {str(k): v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} if isinstance(stats, dict) else {}
        devs = snap.get("devices")
        h.devices = [d for d in devs if isinstance(d, dict)] if isinstance(devs, list) else []
        fbs = snap.get("fallbacks")
        h.fallbacks = [f for f in fbs if isinstance(f, dict)] if isinstance(fbs, list) else []
        h.snapshot_t = snap.get("t", self.now)
        rdma = snap.get("rdma")
        h.rdma = {str(k): v for k, v in rdma.items() if isinstance(v, dict)} if isinstance(rdma, dict) else {}
        lst = snap.get("listeners")
        h.listeners = [x for x in lst if isinstance(x, dict) and isinstance(x.get("local"), str)][:1000] if isinstance(lst, list) else []
        ueids = snap.get("ueids")
        h.ueids = [str(u) for u in ueids if isinstance(u, str)][:64] if isinstance(ueids, list) else []
        h.extra = {k: v for k, v in snap.items() if k not in _SNAPSHOT_KNOWN}
        return h

    def add_latencies(self, seconds: Iterable[float]) -> None:
        """Request/response round trips measured by the source (the demo's traffic)."""
        self.latencies.extend(s * 1e6 for s in seconds)

    # ------------------------------------------------------------------ time

    def advance(self, now: float) -> int:
        """Close every sample whose end is at or before ``now``; returns how many closed."""
        if self.t0 is None:
            self.t0 = now
        if self.next_tick is None:
            self.next_tick = now + self.interval
            self.now = now
            return 0
        self.now = max(now, self.now or now)
        closed = 0
        if now - self.next_tick > 100 * self.interval:  # a long gap (a replay seek): one sample, not thousands
            self.next_tick = now - self.interval / 2
        while now >= self.next_tick:
            self._sample(self.next_tick)
            tick = self.next_tick + self.interval
            closed += 1
            if tick <= self.next_tick:  # a clock beyond a float's precision (2**53 and up): one sample a call, never a loop
                break
            self.next_tick = tick
        return closed

    def finish(self) -> None:
        """The source ended (a replay at its end): close the open sample, so that what moved
        in its last part counts (a recording shorter than a sample would show nothing)."""
        if self.next_tick is not None and self._moved:
            self.advance(self.next_tick)

    def _sample(self, t: float) -> None:
        """Close sample number ``ticks``: the rate and history of each connection that moved
        since the last one (the others' rates read 0 and their histories repeat their last
        values, see :class:`ConnHistory`), link and model rates, the performance history."""
        self.ticks += 1
        clock = self._clock
        tick = clock.tick = self.ticks
        dt = self.interval
        total = 0
        moved = self._moved
        gen = self._link_gen
        ring = clock.ring
        buf = ring[tick % clock.size]
        buf[:] = ring[(tick - 1) % clock.size]  # who did not move repeats its values
        if len(buf) < self._slots * SLOT:
            buf += bytes(self._slots * SLOT - len(buf))
        pack, width = _SAMPLE.pack_into, SLOT
        for c in moved:
            slot = c.slot
            if slot < 0:  # forgotten since it moved
                continue
            dtx, drx = c.ev_tx - c.last_tx, c.ev_rx - c.last_rx
            c.last_tx, c.last_rx = c.ev_tx, c.ev_rx
            if dtx < 0:  # a snapshot said less than events did
                dtx = 0
            if drx < 0:
                drx = 0
            delta = dtx + drx
            if delta > 0:
                rate = delta / dt
                # each byte once: what an end received was counted as sent by its other end, when watched.
                # SMC-R bytes only: a fallen-back connection's TCP bytes reach the model only when a snapshot
                # catches it open (no event reports them), so counting them would count a few connections' bytes
                if c.mode != "TCP":
                    total += dtx if c.peer_end is not None else delta
                if c.lk_gen != gen:
                    self._find_link(c)
                link = c.lk
                if link is not None:  # the link carries it (both directions)
                    link.bytes += delta
            else:
                rate = 0.0
            c.rate_ = rate
            c.htick = tick  # (moves change_no as version_no does)
            if not c.hfirst:
                c.hfirst = tick
            pack(buf, slot * width, rate, c.fill, c.rxc, c.txc)
        for c in self._prev:
            if c.htick == tick - 1 and c.slot >= 0:  # moved in the last sample, not in this one: rate 0 from here on
                c.version_no += 1  # (its change_no moves)
                pack(buf, c.slot * SLOT, 0.0, c.fill, c.rxc, c.txc)
        self._prev = moved
        self._moved = []
        self._period = tick + 1
        self.bytes += total
        self.rate = total / dt
        for g in self.lgrs.values():
            for link in g.links.values():
                if link.state == "LINK_UNUSED":
                    if link.unused_since is None:
                        link.unused_since = t
                else:
                    link.unused_since = None
                d = link.bytes - link.last_bytes
                link.last_bytes = link.bytes
                link.rate = d / dt
                link.hist.push(link.rate)
        counts = (self.cdc, self.llc, self.opened, sum(self.fallbacks.values()), self.seq)
        last = self._last
        self.perf.push(self.rate, *((a - b) / dt for a, b in zip(counts, last[1:])))
        self._last = (0, *counts)
        self._prune(t)

    def _find_link(self, c: Conn) -> None:
        c.lk_gen = self._link_gen
        link = None
        if c.link and c.lgr is not None and c.mode == "SMCR":
            g = self.lgrs.get((c.host, c.lgr))
            link = g.links.get(c.link) if g is not None else None
        c.lk = link

    def _forget(self, c: Conn) -> None:
        """Let a closed connection go (views drop its row)."""
        key = c.key
        del self.conns[key]
        if self._ends.get((c.local, c.peer)) is c:
            del self._ends[(c.local, c.peer)]
        c.peer_end = None
        self.conns_removed += 1
        if c.slot >= 0:
            self._free.append(c.slot)
            c.slot = -1
        if len(self._removed) > self.max_closed:  # nobody asked for a long time: keep the latest
            self._removed.clear()
        self._removed.add(key)

    def _prune(self, t: float) -> None:
        closed = self._closed
        while closed and (closed[0][0] <= t - self.closed_keep or len(closed) > self.max_closed):
            _, key = closed.popleft()
            c = self.conns.get(key)
            if c is not None and c.closed is not None and key != self.watched:
                self._forget(c)
        for g in self.lgrs.values():
            gone = [lid for lid, link in g.links.items() if link.state == "LINK_UNUSED" and link.unused_since is not None
                    and link.unused_since <= t - self.history * self.interval]  # fmt: skip
            for lid in gone:
                del g.links[lid]
                self.links_changed = True
                self._link_gen += 1
        dead = [k for k, g in self.lgrs.items() if g.terminated and all(link.state == "LINK_UNUSED" for link in g.links.values())]
        for k in dead:
            del self.lgrs[k]
            self._ended[k] = t
            if len(self._ended) > 10_000:
                self._ended.popitem(last=False)
            self.links_changed = True
            self._link_gen += 1

    # ------------------------------------------------------------------ summaries

    def totals(self) -> dict[str, Any]:
        """What the header shows (computed once per change of the model)."""
        stamp = (self.seq, self.ticks, self.conns_added, self.conns_closed, self.conns_removed, len(self.lgrs))
        if self._totals is not None and self._totals[0] == stamp:
            return dict(self._totals[1])
        n, smc, tcp = self._open, self._open_smc, self._open_tcp
        decided = self.smc_conns + self.tcp_conns
        links = [link for g in self.lgrs.values() for link in g.links.values() if link.state != "LINK_UNUSED"]
        perf = self.perf
        last = [perf.series(i)[-1] if perf.n else 0.0 for i in range(6)]
        out = {
            "hosts": sorted(self.hosts), "conns": n, "smcr": smc, "tcp": tcp, "smcd": self._open_smcd,
            "lgrs": sum(1 for g in self.lgrs.values() if not g.terminated),
            "links": len(links), "links_active": sum(1 for link in links if link.state == "LINK_ACTIVE"),
            "crit": sum(1 for g in self.lgrs.values() if g.crit and not g.terminated),
            "rate": self.rate, "bytes": self.bytes, "cdc_rate": last[1], "llc_rate": last[2], "open_rate": last[3],
            "event_rate": last[5], "events": self.seq, "dropped": self.dropped,
            "handshake": n - smc - tcp - self._open_smcd,  # open, mode not decided yet (in the CLC handshake)
            "fallbacks": sum(self.fallbacks.values()),  # connection ends that fell back, each end's own view (smcr stats, Prometheus)
            "fallback_conns": sum(self.fallback_causes.values()),  # connections that fell back (both ends of one count once)
            "fallback_ratio": self.tcp_conns / decided if decided else 0.0,
            # those that moved connections, each once (both ends of a link group fail over)
            "failovers": sum(1 for fo in self.failovers if fo.conns and self.failover_counted(fo)),
            "link_deletions": sum(1 for fo in self.failovers if not fo.conns and self.failover_counted(fo)),  # a link went, nothing moved
            "elapsed": (self.now - self.t0) if self.now is not None and self.t0 is not None else 0.0,
        }  # fmt: skip
        self._totals = (stamp, out)
        return dict(out)

    def fallback_rows(self) -> list[dict[str, Any]]:
        """Fallback reasons with counts, per host and role (smcr stats -d), most frequent first.
        Counts seen in events; a host's snapshot counts (since the stack started) when larger."""
        rows: dict[tuple[str, str, int], int] = dict(self.fallbacks)
        for h in self.hosts.values():
            for f in h.fallbacks:
                key = (h.name, f.get("role", "-"), f.get("reason", 0))
                rows[key] = max(rows.get(key, 0), f.get("count", 0))
        return sorted(({"host": k[0], "role": k[1], "reason": k[2], "text": reason_text(k[2]) or "not SMC", "count": n,
                        "last": self.fallback_last.get(k)} for k, n in rows.items()), key=lambda r: (-r["count"], r["host"], r["reason"]))  # fmt: skip

    def fallback_cause_rows(self) -> list[dict[str, Any]]:
        """Fallen-back connections by cause, each connection once with both ends' view (the
        Fallbacks view): cause, decided by, what the other end saw, count. A host's snapshot
        counts (since its stack started) beyond what events showed come as one-end rows."""
        rows = [{"reason": k[0], "text": reason_text(k[0]) or "not SMC", "by": k[1], "view": k[2], "count": n,
                 "last": self.fallback_cause_last.get(k)} for k, n in self.fallback_causes.items() if n > 0]  # fmt: skip
        for h in self.hosts.values():
            for f in h.fallbacks:
                role, reason = f.get("role", "-"), f.get("reason", 0)
                extra = f.get("count", 0) - self.fallbacks.get((h.name, role, reason), 0)
                if extra > 0:
                    peer = (reason & 0xFF000000) == PEER_DECLINE_CLASS
                    view = f"{h.name} ({role}), before smctop watched" if peer else "before smctop watched"
                    rows.append({"reason": reason, "text": reason_text(reason) or "not SMC", "by": "the peer" if peer else f"{h.name} ({role})",
                                 "view": view, "count": extra, "last": None})  # fmt: skip
        return sorted(rows, key=lambda r: (-r["count"], r["reason"], r["by"]))

    def link_rows(self) -> list[tuple[LinkGroup, Link | None]]:
        rows: list[tuple[LinkGroup, Link | None]] = []
        for key in sorted(self.lgrs):
            g = self.lgrs[key]
            if not g.links:
                rows.append((g, None))
            for lid in sorted(g.links):
                rows.append((g, g.links[lid]))
        return rows

    def percentile(self, values: Iterable[float], p: float) -> float | None:
        v = sorted(values)
        if not v:
            return None
        return v[min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))]


# the kinds kept in the long buffer the events view searches: few, and what an operator looks for later
RARE_KINDS = frozenset({"conn.state", "conn.fallback", "conn.error", "link.state", "link.event", "lgr.state", "events.dropped"})


def _tx_cursor(c: Conn, prod: str) -> None:
    """This end's producer cursor moved to ``prod`` (a CDC it sent, or its cursor event): count
    how far past its high water it went (tx_cur), unwrapped with the peer's RMB size."""
    try:
        w, _, n = prod.partition(":")
        w, n = int(w), int(n)
    except (ValueError, AttributeError):
        w, n = parse_cursor(prod)
    size = c.peer_rmb_size
    if size <= 0 and (c.tx_pos < 0 or w != c.txw):
        c.tx_pos = -1  # a wrap cannot be counted without the size: begin again once it is known
    elif c.tx_pos < 0:  # the first cursor seen: counting begins here, from what WRITEs counted
        c.tx_pos = c.tx_hw = 0
        c.tx_cur = c.tx_wr
    else:
        half = size << 15  # wrap counters are 16 bits: a move of under half their range either way
        d = ((w - c.txw) & 0xFFFF) * size + n - c.txc  # (within one wrap, no size needed)
        if size > 0 and d >= half:
            d -= half << 1
        pos = c.tx_pos = c.tx_pos + d
        if pos > c.tx_hw:
            c.tx_cur += pos - c.tx_hw
            c.tx_hw = pos
            if c.tx_cur > c.tx_wr:
                c.ev_tx = c.tx_base + c.tx_cur
    c.tx_prod, c.txw, c.txc = prod, w, n


def _rare(e: Event) -> bool:
    """Kept in the long buffer: a rare kind, or a data-path event that marks something (a
    failover's cursor rewind and validation CDC, a CDC that closes, aborts or carries urgent
    data), which a filter must find long after the data path's flood has pushed it out."""
    kind = e.kind
    return kind in RARE_KINDS or (kind in DATA_KINDS and marks_something(e))


_LINK_KNOWN = frozenset({"id", "state", "device", "qpn", "peer_qpn", "gid", "peer_gid", "asym", "conns", "mtu", "sq_used"})
_SNAPSHOT_KNOWN = frozenset({"host", "t", "stats", "devices", "fallbacks", "lgrs", "conns", "failovers", "rdma", "listeners", "ueids", "peer_id"})

_CDC_TEXT = renderer("cdc.msg")  # the hot path's log line, the schema's template compiled
_KIND = attrgetter("kind")
_T = attrgetter("t")

_HANDLERS = {
    "conn.open": Model._on_conn_open,
    "conn.state": Model._on_conn_state,
    "conn.mode": Model._on_conn_mode,
    "conn.fallback": Model._on_conn_fallback,
    "conn.error": Model._on_conn_error,
    "conn.cursor": Model._on_conn_cursor,
    "conn.rmb": Model._on_conn_rmb,
    "rdma.write": Model._on_rdma_write,
    "cdc.msg": Model._on_cdc,
    "clc.msg": Model._on_clc,
    "llc.msg": Model._on_llc,
    "link.state": Model._on_link_state,
    "link.event": Model._on_link_event,
    "lgr.state": Model._on_lgr_state,
    "events.dropped": Model._on_dropped,
}
