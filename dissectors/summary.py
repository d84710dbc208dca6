"""What a trace says, in one page: connections with their mode, fallback reason and
throughput; fallbacks by reason (as smc-tools names them); failovers with their duration;
link groups and their types; drops. Works on recorded events and on events derived from
a capture of a real host alike."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from stack.events import BadRecord, Event, Failovers, Skipped, parse_snapshot
from stack.wire import codes
from stack.wire.fields import WRAP, cursor_delta, parse_cursor

from .multifile import base_host

SAME_FAILOVER = 1.0  # seconds: one failover in two files (two hosts' captures) begins within this of itself


@dataclass
class ConnSummary:
    host: str
    conn: int
    role: str = ""
    local: str = ""
    peer: str = ""
    mode: str = "?"
    version: int | None = None
    reason: int | None = None
    reason_text: str = ""
    lgr: str | None = None
    bytes_written: int = 0  # RDMA WRITE payload this side sent
    # what the application sent and read, per call (the kernel source's conn.cursor events
    # with ``len``: smc_tx_sendmsg / smc_rx_recvmsg); None when the trace has none
    bytes_sent: int | None = None
    bytes_received: int | None = None
    first_write: float | None = None
    last_write: float | None = None
    first_rx: float | None = None  # when this end was first and last seen to receive data
    last_rx: float | None = None
    state: str = ""
    error: str | None = None
    rmb_size: int = 0
    rx_prod: str | None = None  # the peer's producer cursor (wrap:count) as the last CDC said
    rx_written: int = 0  # what the peer wrote into our RMB, from those cursors' advances
    rx_seen: bool = False  # the trace showed this end's receive cursors (a capture shows only what each end sent)
    tx_seen: bool = False  # the trace showed this end's producer cursor (a CDC it sent, its cursor events)
    # this end's producer cursor (into the peer's RMB) at its furthest, as its CDCs and cursor
    # events said, and its advances in whole wraps and counts (the peer's RMB size, which a
    # wrap is worth, may come later). A failover writes again what the old link may have
    # lost: the cursor goes back, and those bytes are not counted twice.
    tx_prod: str | None = None
    tx_wraps: int = 0
    tx_counts: int = 0
    written_before: int = 0  # RDMA WRITE payload seen before the first of those cursors
    peer_rmb_size: int = 0

    @property
    def received(self) -> int:
        """What this end received: the application's reads where the trace counts them (the
        kernel source), else what the peer's producer cursor advanced by (as smctop counts)."""
        return self.bytes_received if self.bytes_received is not None else self.rx_written

    def peer_cursor(self, prod: str, t: float | None = None) -> None:
        """A CDC arrived (at ``t``) with the peer's producer cursor ``wrap:count``: count its
        advance (as smctop's model does)."""
        moved = cursor_delta(self.rx_prod, prod, self.rmb_size)
        self.rx_written += moved
        self.rx_prod = prod
        self.rx_seen = True
        if moved > 0 and t is not None:
            self.received_at(t)

    def received_at(self, t: float) -> None:
        self.first_rx = t if self.first_rx is None else self.first_rx
        self.last_rx = t

    def own_cursor(self, prod: str) -> None:
        """This end's producer cursor ``wrap:count`` as a CDC it sent or its cursor event said:
        count how far it went beyond its furthest so far (a cursor sent back by a failover
        counts once it passes where it had been)."""
        self.tx_seen = True
        if self.tx_prod is None:
            self.tx_prod = prod
            return
        w0, c0 = parse_cursor(self.tx_prod)
        w1, c1 = parse_cursor(prod)
        wraps = (w1 - w0) % WRAP
        if wraps >= WRAP // 2 or (wraps == 0 and c1 <= c0):  # behind (a failover's rewind) or not moved
            return
        self.tx_wraps += wraps
        self.tx_counts += c1 - c0
        self.tx_prod = prod

    @property
    def moved(self) -> int:
        """What this end sent, each byte once: as far as its producer cursor went (with the
        WRITEs seen before the trace showed the cursor; a failover's second copies are not new
        bytes, and WRITEs a capture lost still count), or, where the trace shows no cursor,
        its WRITEs or (the kernel as a source sees the application's sends) its sends."""
        if (self.tx_counts or self.tx_wraps) and (self.peer_rmb_size or not self.tx_wraps):
            cursor = self.written_before + self.tx_wraps * self.peer_rmb_size + self.tx_counts
            # with no WRITE seen: a capture that lost them (the CDCs tell), or the kernel as a
            # source, whose sends count where they went further than a cursor it sampled
            return cursor if self.bytes_written or self.bytes_sent is None else max(cursor, self.bytes_sent)
        return self.bytes_written or self.bytes_sent or 0

    @property
    def throughput_mbps(self) -> float:
        if self.first_write is None or self.last_write is None or self.last_write <= self.first_write:
            return 0.0
        return self.moved * 8 / (self.last_write - self.first_write) / 1e6


@dataclass
class Summary:
    events: int = 0
    frames_not_decoded: int = 0
    dropped_events: int = 0
    dropped_frames: int = 0
    drop_sources: dict = field(default_factory=dict)  # who lost what: by -> {"events", "frames", "why"}
    duration: float = 0.0
    kinds: Counter = field(default_factory=Counter)
    conns: dict[tuple[str, int], ConnSummary] = field(default_factory=dict)
    fallbacks: Counter = field(default_factory=Counter)  # reason code -> count
    pairs: Failovers = field(default_factory=Failovers)  # paired as smctop's model pairs them
    lgr_types: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    deletions: list[tuple[str, str | None, int | None, int, float]] = field(default_factory=list)  # host, lgr, link, reason, t
    skipped: Skipped = field(default_factory=Skipped)  # bad records the reader left out
    start: float = 0.0  # the trace's first event
    attempts: dict[tuple[str, str, str], list] = field(default_factory=dict)  # (client, server, outcome) -> [count, first t, last t]

    def _peer_end(self) -> dict[int, ConnSummary]:
        """id of each connection end -> its other end, where the trace has both."""
        ends = {(c.local, c.peer): c for c in self.conns.values() if c.local and c.peer}
        return {id(c): ends[(c.peer, c.local)] for c in self.conns.values() if c.local and c.peer and (c.peer, c.local) in ends}

    @property
    def moved(self) -> int:
        """Every byte once, as smctop counts it: what each end sent, and what an end received
        from a peer the trace does not have (a recording of one host)."""
        peers = self._peer_end()
        return sum(c.moved + (c.received if id(c) not in peers else 0) for c in self.conns.values())

    def received(self, c: ConnSummary, peers: dict[int, ConnSummary]) -> int:
        """What end ``c`` received: as it counted it, or, where the trace shows only what each
        end sent (a capture of the wire: CDCs, not their receipt), what its peer sent."""
        if c.bytes_received is None and not c.rx_seen and id(c) in peers:
            return peers[id(c)].moved
        return c.received

    def rate_mbps(self, c: ConnSummary, peers: dict[int, ConnSummary]) -> float:
        """End ``c``'s data rate, both directions (as smctop's rate): what it sent and received
        over the time it was seen moving data. Where the trace shows only what each end sent,
        its receiving is timed by its peer's WRITEs."""
        rx_from = peers.get(id(c)) if c.bytes_received is None and not c.rx_seen else None
        rx = (rx_from.first_write, rx_from.last_write) if rx_from is not None else (c.first_rx, c.last_rx)
        times = [t for t in (c.first_write, c.last_write, *rx) if t is not None]
        span = max(times) - min(times) if times else 0.0
        if span <= 0:
            return 0.0
        return (c.moved + self.received(c, peers)) * 8 / span / 1e6

    @property
    def sees_data(self) -> bool:
        """The trace shows an SMC-R data path (RoCEv2 frames, or a source that counts sends).
        A capture of a host with a hardware RNIC has the CLC over TCP and nothing of RDMA:
        its connections' bytes are unknown there, not 0."""
        k = self.kinds
        return bool(k["rdma.write"] or k["cdc.msg"] or k["llc.msg"] or k["conn.cursor"] or k["stats"])

    @property
    def failovers(self) -> list[dict]:
        """The failovers that ended (one that only began is still going when the trace ends).
        Of several files, a failover each file has (two hosts' captures of one failover: the
        same host, links and connections, begun within a second) is listed once."""
        out: list[dict] = []
        for fo in self.pairs:
            if fo.duration_ms is None:
                continue
            host = base_host(fo.host)
            if any(base_host(o["host"]) == host and o["host"] != fo.host and (o["from_link"], o["to_link"], o["conns"]) == (fo.from_link, fo.to_link, fo.conns)
                   and abs(o["t"] - fo.t) < SAME_FAILOVER for o in out):  # fmt: skip
                continue
            out.append({"host": fo.host, "lgr": fo.lgr, "from_link": fo.from_link, "to_link": fo.to_link, "conns": fo.conns, "failed": fo.failed,
                        "duration_ms": fo.duration_ms, "t": fo.t})  # fmt: skip
        return out

    @property
    def link_deletes(self) -> Counter:
        """DELETE LINK reasons, each deletion once: of several files, the one each file has
        (two hosts' captures of it: the same host, link group, link and reason, within a
        second) counts once, as its failover is listed once."""
        counted: dict[tuple, list[tuple[str, float]]] = {}  # (host without its file, lgr, link, reason) -> (host, t) counted
        out: Counter = Counter()
        for host, lgr, link, reason, t in self.deletions:
            same = counted.setdefault((base_host(host), lgr, link, reason), [])
            if any(h != host and abs(t - u) < SAME_FAILOVER for h, u in same):
                continue
            same.append((host, t))
            out[reason] += 1
        return out

    def to_dict(self) -> dict:
        peers = self._peer_end()
        # a connection whose two ends the trace has counts once (the end that comes first)
        ones = [c for c in self.conns.values() if id(c) not in peers or _key(c) < _key(peers[id(c)])]
        modes = Counter(c.mode for c in ones)
        return {
            "skipped": self.skipped.to_dict(),
            "events": self.events, "duration_s": round(self.duration, 6), "kinds": dict(sorted(self.kinds.items())),
            "dropped": {"events": self.dropped_events, "frames": self.dropped_frames,
                        "by": [{"by": by, **v} for by, v in sorted(self.drop_sources.items())]},
            "frames_not_decoded": self.frames_not_decoded,
            "connections": {"total": len(ones), "ends": len(self.conns), "modes": dict(modes)},
            "moved": self.moved if self.sees_data or not modes.get("SMCR") else None,  # null: the trace cannot tell
            "fallbacks": [{"reason": r, "text": codes.format_reason(r) if r else "not SMC", "count": n} for r, n in sorted(self.fallbacks.items())],
            "failovers": self.failovers,
            "link_groups": [{"host": h, "lgr": g, "types": t} for (h, g), t in sorted(self.lgr_types.items())],
            "delete_link_reasons": [{"reason": r, "text": codes.DELETE_LINK_REASONS.format(r), "count": n} for r, n in sorted(self.link_deletes.items())],
            "attempts": [{"host": h, "peer": p, "outcome": o, "count": n, "first_s": round(t0 - self.start, 6), "last_s": round(t1 - self.start, 6)}
                         for (h, p, o), (n, t0, t1) in sorted(self.attempts.items())],
            "conns": [
                {"host": c.host, "conn": c.conn, "role": c.role, "local": c.local, "peer": c.peer, "mode": c.mode, "version": c.version,
                 "reason": c.reason, "reason_text": c.reason_text, "lgr": c.lgr, "bytes_written": c.bytes_written,
                 "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received, "moved": c.moved, "received": self.received(c, peers),
                 "throughput_mbps": round(c.throughput_mbps, 3), "rate_mbps": round(self.rate_mbps(c, peers), 3), "state": c.state,
                 "error": c.error, "data_seen": c.bytes_sent is not None or c.tx_seen or c.rx_seen or bool(c.bytes_written)}
                for c in sorted(self.conns.values(), key=lambda c: (c.host, c.conn))
            ],
        }  # fmt: skip


def _key(c: ConnSummary) -> tuple:
    return (c.host, c.conn, c.local, c.peer)


def summarize(events: Iterable[Event]) -> Summary:
    s = Summary()
    t0 = t1 = None
    for e in events:
        s.events += 1
        s.kinds[e.kind] += 1
        t0 = e.t if t0 is None else min(t0, e.t)
        t1 = e.t if t1 is None else max(t1, e.t)
        k, g = e.kind, e.get
        c = None
        if e.conn is not None and k.startswith(("conn.", "clc.", "cdc.", "rdma.")):
            c = s.conns.get((e.host, e.conn))
            if c is None:
                c = s.conns[(e.host, e.conn)] = ConnSummary(e.host, e.conn)
            if e.lgr:
                c.lgr = e.lgr
        if c is not None and type(g("prod")) is str and (k == "cdc.msg" and g("dir") == "tx" or k == "conn.cursor" and g("side") == "tx"):
            if "failover_validation" not in (g("flags") or ()):  # its cursors are zeros, not a position
                c.own_cursor(g("prod"))
        if k == "conn.open":
            c.role, c.local, c.peer = g("role", ""), g("local", ""), g("peer", "")
            c.rx_prod = c.rx_prod or "0:0"  # a connection opened in the trace: the peer writes from its start
            c.tx_prod = c.tx_prod or "0:0"  # and so does this end
        elif k == "conn.mode":
            c.mode = g("mode", "?")
            c.version = g("version")
            if type(g("rmb_size")) is int and g("rmb_size") > 0:
                c.rmb_size = g("rmb_size")
            if type(g("peer_rmb_size")) is int and g("peer_rmb_size") > 0:
                c.peer_rmb_size = g("peer_rmb_size")
        elif k == "conn.fallback":
            reason = g("reason") or 0
            c.reason, c.reason_text = reason, g("reason_text") or (codes.format_reason(reason) if reason else "not SMC")
            if g("peer_diagnosis_text"):
                c.reason_text += f" (peer {g('peer_diagnosis_text')})"
            s.fallbacks[reason] += 1
        elif k == "conn.state":
            c.state = g("new", "")
        elif k == "conn.cursor" and c is not None and type(g("len")) is int and g("side") in ("tx", "rx"):
            if g("side") == "tx":
                c.bytes_sent = (c.bytes_sent or 0) + g("len")
                if not c.bytes_written:  # no WRITEs seen (yet): the sends time the throughput
                    c.first_write = e.t if c.first_write is None else c.first_write
                    c.last_write = e.t
            else:
                c.bytes_received = (c.bytes_received or 0) + g("len")
                c.received_at(e.t)
        elif k == "conn.cursor" and c is not None and g("side") == "rx" and "peer_rmbe_space" in e.fields and g("prod") is not None:
            c.peer_cursor(str(g("prod")), e.t)  # a CDC arrived: the peer wrote up to its producer cursor
        elif k == "conn.rmb" and c is not None and type(g("size")) is int and g("size") > 0:
            c.rmb_size = g("size")
        elif k == "conn.error":
            c.error = g("reason")
        elif k == "rdma.write" and c is not None:
            c.bytes_written += g("length") or 0
            if c.tx_prod is None:
                c.written_before += g("length") or 0
            c.first_write = e.t if c.first_write is None else c.first_write
            c.last_write = e.t
        elif k == "link.event":
            ev = g("event")
            if ev in ("failover_begin", "failover_end"):
                s.pairs.feed(e)
            elif ev == "deleted" and isinstance(g("reason"), int):
                s.deletions.append((e.host, e.lgr, e.link, g("reason"), e.t))
        elif k == "lgr.state" and e.lgr:
            types = s.lgr_types.setdefault((e.host, e.lgr), [])
            if g("new") and (not types or types[-1] != g("new")):
                types.append(g("new"))
        elif k == "stats" and isinstance(g("snapshot"), dict):  # the state when a recording started
            try:
                snap = parse_snapshot(g("snapshot"))  # as smctop's model reads one
            except BadRecord:
                continue
            for cs in snap.get("conns", []):
                if cs.get("conn") is None:
                    continue
                key = (e.host, cs["conn"])
                c = s.conns.get(key)
                if c is None:
                    c = s.conns[key] = ConnSummary(e.host, cs["conn"])
                # what the events did not say yet: they may come first (a stack's events queued
                # before the recorder's snapshot was taken), and they know better what they said
                c.role, c.local, c.peer = c.role or cs.get("role", ""), c.local or cs.get("local", ""), c.peer or cs.get("peer", "")
                c.mode = cs.get("mode", "?") if c.mode == "?" else c.mode
                c.version = cs.get("version") if c.version is None else c.version
                c.lgr, c.state = c.lgr or cs.get("lgr"), c.state or cs.get("state", "")
                if not c.rmb_size and type(cs.get("rmb_size")) is int:
                    c.rmb_size = cs["rmb_size"]
                if not c.peer_rmb_size and type(cs.get("peer_rmb_size")) is int:
                    c.peer_rmb_size = cs["peer_rmb_size"]
                if c.tx_prod is None and isinstance(cs.get("tx_prod"), str):  # where this end's writes stood
                    c.own_cursor(cs["tx_prod"])
                if c.rx_prod is None and isinstance(cs.get("rx_prod"), str):  # where the peer's writes stood when the recording began
                    c.peer_cursor(cs["rx_prod"])
                if c.reason is None and cs.get("fallback_reason"):
                    c.reason, c.reason_text = cs["fallback_reason"], codes.format_reason(cs["fallback_reason"])
        elif k == "events.dropped":
            s.dropped_events += g("count") or 0
            s.dropped_frames += g("frames") or 0
            src = s.drop_sources.setdefault(str(g("by") or f"{e.host} event queue"), {"events": 0, "frames": 0, "why": ""})
            src["events"] += g("count") or 0
            src["frames"] += g("frames") or 0
            if g("last_error"):
                src["why"] = str(g("last_error"))
        elif k == "trace.note":
            s.frames_not_decoded += 1
        elif k == "conn.attempt":
            seen = s.attempts.setdefault((e.host, str(g("peer", "")), str(g("outcome", ""))), [0, e.t, e.t])
            seen[0] += 1
            seen[1], seen[2] = min(seen[1], e.t), max(seen[2], e.t)
    s.duration = (t1 - t0) if t0 is not None else 0.0
    s.start = t0 if t0 is not None else 0.0
    return s


def render(s: Summary) -> str:
    d = s.to_dict()
    n, ends = d["connections"]["total"], d["connections"]["ends"]
    out = [" ".join([f"{d['events']} events over {d['duration_s']:.3f} s; connections: {n}" + (f" ({ends} ends)" if ends != n else ""),
                     *(f"{m}={k}" for m, k in sorted(d["connections"]["modes"].items()))])]  # fmt: skip
    if s.dropped_events or s.dropped_frames or s.drop_sources:
        out.append(f"DROPPED while recording: {s.dropped_events} events, {s.dropped_frames} frames")
        for by, v in sorted(s.drop_sources.items()):
            out.append(f"  by {by}: {v['events']} events, {v['frames']} frames" + (f" ({v['why']})" if v["why"] else ""))
    if s.skipped:
        out.append(f"SKIPPED {s.skipped.count} bad event records ({s.skipped.summary().partition(': ')[2]})")
    if s.frames_not_decoded:
        out.append(f"{s.frames_not_decoded} frames could not be decoded (see decode --kind trace.note)")
    out.append("")
    if d["moved"] is None:
        out.append("Moved: unknown: the trace has SMC-R connections but no RoCEv2 frames (a hardware RNIC's RDMA "
                   "traffic does not pass the network interface a capture watches)")  # fmt: skip
    else:
        out.append(f"Moved: {d['moved']:,} bytes over SMC-R (each byte once, as smctop counts it: what each end sent, "
                   "and what an end received from a peer not in the trace)")  # fmt: skip
    hw = max([14] + [len(c["host"]) + 1 for c in d["conns"]])  # a host of several files names its file: client@a.pcapng
    out.append(
        f"{'Host':<{hw}}{'Conn':>5}  {'Role':<7}{'Local':<22}{'Peer':<22}{'Mode':<6}{'Fallback reason':<52}{'Sent':>12}{'Received':>12}{'MB/s':>10}  State"
    )
    known = d["moved"] is not None
    for c in d["conns"]:
        # an SMC-D connection's data moves through ISM memory: a capture of the network never sees it
        sent, received = (c["moved"], c["received"]) if known and (c["mode"] != "SMCD" or c["data_seen"]) else ("?", "?")
        out.append(f"{c['host']:<{hw}}{c['conn']:>5}  {c['role']:<7}{c['local']:<22}{c['peer']:<22}{c['mode']:<6}"
                   f"{c['reason_text'] if c['mode'] == 'TCP' else '':<52}{sent:>12}{received:>12}{c['rate_mbps'] / 8:>10.1f}  {c['state']}"
                   + (f" ({c['error']})" if c["error"] else ""))  # fmt: skip
    if any(c["mode"] == "SMCD" and not c["data_seen"] for c in d["conns"]):
        out.append("(?: SMC-D moves data through ISM memory inside the machine, which no network capture sees)")
    out.append("")
    out.append("Fallbacks: " + (", ".join(f"{f['text']} x{f['count']}" for f in d["fallbacks"]) or "none"))
    if d["attempts"]:
        out.append(f"Failed SMC attempts (a SYN offering SMC that made no connection): {sum(a['count'] for a in d['attempts'])}")
        for a in d["attempts"]:
            when = f"at {a['first_s']:.3f} s" if a["count"] == 1 else f"from {a['first_s']:.3f} s to {a['last_s']:.3f} s"
            out.append(f"  {a['host']} -> {a['peer']}: {a['outcome']} x{a['count']}, {when}")
    moved = [f for f in d["failovers"] if f["conns"]]  # as smctop counts them: a failover moves connections
    if moved:
        out.append("Failovers:")
        for f in moved:
            out.append(f"  {f['host']} {f['lgr']} link {f['from_link']} -> {f['to_link']}: {f['conns']} connection{'' if f['conns'] == 1 else 's'}, "
                       f"{f['failed']} failed, {f['duration_ms']} ms")  # fmt: skip
    else:
        out.append("Failovers: none")
    idle = [f for f in d["failovers"] if not f["conns"]]
    if idle:
        out.append("Link deletions that moved no connection: " + ", ".join(f"{f['host']} {f['lgr']} link {f['from_link']}" for f in idle))
    if d["delete_link_reasons"]:
        out.append("DELETE LINK reasons: " + ", ".join(f"{x['text']} x{x['count']}" for x in d["delete_link_reasons"]))
    if d["link_groups"]:
        out.append("Link groups:")
        for g in d["link_groups"]:
            out.append(f"  {g['host']} {g['lgr']}: " + " -> ".join(g["types"]))
    return "\n".join(out)
