"""Our events from the kernel's facts, pure: snapshots diffed, trace records and captured
messages resolved to connections, link groups and links.

:class:`Tracker` keeps what it last saw and turns each input into events of the kinds in
``stack/events.py``: ``conn.open/state/mode/fallback/cursor`` (a connection that leaves
smc_diag becomes ``conn.state`` → CLOSED, the stack's way of saying closed),
``lgr.state``, ``link.state``, ``link.event``, ``clc.msg`` (a Decline the kernel sent),
``cdc.msg``, ``llc.msg`` and ``stats``. Every event carries ``source``: ``snapshot`` (a
smc_diag/genl poll diffed), ``tracepoint`` (a tracepoint or a probe on one), ``probe`` (a
function probe) or ``capture`` (a frame on the wire).

Connections are numbered by the tracker (1, 2, ... in order of first sight, like
smc-trace numbers a capture's): the kernel's own names for a socket (cookie, inode,
pointer) are not shared by all of its interfaces, so a connection is recognised by its
socket cookie (smc_diag), its TCP ports and addresses (probes), or its alert token (CDC
probes, smc_diag's CONNINFO), whichever the input has.

Nothing here reads a clock: snapshots carry their time, trace records theirs.

A snapshot is read over some time and stamped when the read ends, so a probe may report a
change the snapshot's dumps were read just before. A snapshot that contradicts a link
group's type or a link that a probe told of since the previous snapshot is therefore taken
as read before the change and not diffed there; the next snapshot is (a change the probe
missed is told one poll later, never lost).

A trace reader can also fall behind the poller (a loaded host): a socket's records then come
after the snapshot that told it gone. The names of gone connections are kept with that
snapshot's time, and a record older than it is still theirs (see ``_gone_conn``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from stack.events import Event
from stack.wire import cdc as wcdc
from stack.wire import codes
from stack.wire import llc as wllc
from stack.wire._base import WireError
from stack.wire.fields import cdc_fields, llc_fields

from . import trace as ktrace
from .genl import LGR_TYPES
from .model import Conn, Snapshot, to_stack_snapshot

SOURCE = "source"  # the field every event carries (see the report: a schema addition)
SNAPSHOT, TRACEPOINT, PROBE, CAPTURE = "snapshot", "tracepoint", "probe", "capture"
SIDE_NAMING = frozenset({"fallback", "decline", "cdc_rx", "sendmsg", "recvmsg"})  # probes whose records say a socket's side (listen_smc)
CLOSED_KEPT = 4096  # names of gone connections kept for records read late (two per connection)
_CRIT = {"SINGLE": True, "ASYML": True, "SYM": False, "ASYMP": False, "NONE": True}


@dataclass
class _Conn:
    id: int
    cookie: int | None = None
    key: tuple | None = None
    token: int | None = None
    local: str | None = None
    peer: str | None = None
    role: str | None = None
    state: str | None = None
    opened: bool = False
    mode_reported: bool = False
    fallback_reported: bool = False
    rx: tuple | None = None
    tx: tuple | None = None
    touched: float = 0.0  # when a probe last named it (for those smc_diag has not shown)


@dataclass
class _Lgr:
    type: str | None
    links: dict[int, str] = field(default_factory=dict)  # link id -> state


def _key(local: str | None, peer: str | None) -> tuple | None:
    """What recognises a connection by its TCP ends: local port, peer port, peer IPv4
    address ("" for IPv6 or unknown: probes fetch the IPv4 fields only)."""
    if not local or not peer:
        return None
    try:
        lport = int(local.rpartition(":")[2])
        phost, _, pport = peer.rpartition(":")
        pport_i = int(pport)
    except ValueError:
        return None
    if lport == 0 or pport_i == 0:
        return None
    phost = phost.strip("[]")
    return lport, pport_i, "" if ":" in phost or phost in ("0.0.0.0", "") else phost


def _llc_len(raw: bytes, msg) -> int:
    """An LLC message's own length (v1: 44; v2: its length field, in the order it was read)."""
    try:
        return len(msg.encode(msg.order))
    except (WireError, ValueError):
        return 44


def _llc_name(raw: bytes) -> str:
    """An LLC message's name from its type byte alone (the rest would not decode)."""
    t = raw[0] if raw else 0
    try:
        name = wllc.LlcType(t & 0x1F).name.replace("_", " ")
    except ValueError:
        return f"LLC type 0x{t:02x}"
    return f"LLC {name}" + (" v2" if t & 0x20 else "") + " (first 44 bytes)"


def _cur(cur: tuple[int, int] | None) -> str | None:
    return None if cur is None else f"{cur[0]}:{cur[1]}"


class Tracker:
    """One host's (one network namespace's) connections, link groups and links as the
    kernel last showed them; ``snapshot``, ``trace`` and ``message`` return new events."""

    def __init__(self, host: str, byteorder: str = "little", stats_every: float | None = 10.0, grace: float = 2.0) -> None:
        self.host = host
        self.grace = grace  # seconds a connection only a probe named waits for smc_diag to show it
        self.byteorder = byteorder
        self.stats_every = stats_every
        self.conns: dict[int, _Conn] = {}
        self.by_cookie: dict[int, _Conn] = {}
        self.by_key: dict[tuple, _Conn] = {}
        self.by_token: dict[int, _Conn] = {}
        self.lgrs: dict[str, _Lgr] = {}
        self.ports: dict[tuple[str, int], str] = {}
        self.next_id = 1
        self.snapshots = 0
        self.last_stats: float | None = None
        self.pending_fallbacks: list[tuple[float, int]] = []  # plain tracepoint: (t, reason) not yet tied to a connection
        self.failovers: dict[int, tuple[float, str | None, int | None]] = {}  # pid -> (t, lgr, from link)
        self.installed: set[str] = set()  # probes in place (their tracepoints' own records are then redundant)
        self.skipped: Counter = Counter()  # records that could not become events, by why
        self.net_cookie: int | None = None  # this namespace's: records of others are left out
        self.del_reasons: dict[tuple[str, int], tuple[int, bool, str]] = {}  # (lgr, link) -> DELETE LINK (reason, orderly, "peer"/"local")
        self.gone: set[tuple[str, int]] = set()  # links a snapshot told deleted (genl lists only usable ones) not yet cleared
        self.told: set[tuple] = set()  # ("type", lgr) / ("link", lgr, link) / ("free", lgr) a probe told of since the last snapshot
        # connections taken as gone, by ("token", alert token) and ("key", TCP ends): (the connection, the snapshot time that
        # did not show it). A trace reader that falls behind hands over records of a socket after a snapshot told it closed;
        # a record from before that time is the gone socket's, not a new connection's (see _gone_conn)
        self.closed: OrderedDict[tuple, tuple[_Conn, float]] = OrderedDict()  # oldest first: forgotten in constant time
        self.trace_clock_mono = True  # record times are CLOCK_MONOTONIC like snapshot times (the instance's trace_clock is mono)
        self.late = 0  # records read after a snapshot told their connection gone (the trace reader was behind)
        # connections smc_diag showed without their side (a fallen-back socket's role is not in
        # it), held one poll for the record that names it: id -> (time, the snapshot's Conn, first)
        self.role_wait: dict[int, tuple[float, Conn, bool]] = {}

    # ------------------------------------------------------------------ helpers

    def _ev(self, t: float, kind: str, source: str, lgr: str | None = None, link: int | None = None, conn: int | None = None,
            **fields: Any) -> Event:  # fmt: skip
        fields = {k: v for k, v in fields.items() if v is not None}
        fields[SOURCE] = source
        return Event(t, kind, self.host, lgr, link, conn, fields)

    def _entry(self, cookie: int | None = None, key: tuple | None = None, token: int | None = None) -> _Conn:
        """The connection these names belong to, made when none does. When smc_diag names a
        socket (cookie) that a probe named first (ports, token) before smc_diag had shown
        more than its handshake, the two are one: the probe's number stays."""
        by_cookie = self.by_cookie.get(cookie) if cookie is not None else None
        by_key = self.by_key.get(key) if key is not None else None
        if by_key is not None and cookie is not None and by_key.cookie is not None and by_key.cookie != cookie:
            by_key = None  # the same ports again, but another socket: the old one is gone
        by_token = self.by_token.get(token) if token else None
        if by_token is not None and cookie is not None and by_token.cookie is not None and by_token.cookie != cookie:
            by_token = None
        e = by_cookie or by_key or by_token
        other = next((x for x in (by_key, by_token) if x is not None and x is not e), None)
        if e is not None and other is not None and other.cookie is None and not e.opened:
            self._forget(e)  # merge: what smc_diag saw of the handshake joins the probe's connection
            e = other
        if e is None:
            e = _Conn(self.next_id)
            self.next_id += 1
            self.conns[e.id] = e
        if cookie is not None and e.cookie is None:
            e.cookie = cookie
            self.by_cookie[cookie] = e
        if key is not None and e.key is None:
            e.key = key
            self.by_key[key] = e
        if token and e.token is None:
            e.token = token
            self.by_token[token] = e
        return e

    def _forget(self, e: _Conn) -> None:
        self.conns.pop(e.id, None)
        if e.cookie is not None and self.by_cookie.get(e.cookie) is e:
            del self.by_cookie[e.cookie]
        if e.key is not None and self.by_key.get(e.key) is e:
            del self.by_key[e.key]
        if e.token is not None and self.by_token.get(e.token) is e:
            del self.by_token[e.token]

    def _close(self, e: _Conn, t: float) -> None:
        """Forget ``e``, gone from smc_diag at snapshot time ``t``, but keep its names for records read late."""
        for name in (("token", e.token) if e.token else None, ("key", e.key) if e.key is not None else None):
            if name is not None:
                self.closed.pop(name, None)
                self.closed[name] = (e, t)
        while len(self.closed) > CLOSED_KEPT:
            self.closed.popitem(last=False)
        self._forget(e)

    def _gone_conn(self, t: float, token: int | None, key: tuple | None) -> _Conn | None:
        """The connection a record of time ``t`` names when a snapshot taken after ``t`` had
        already told it gone (its socket's alert token or TCP ends; no live connection has
        them): the trace reader was behind the poller. None when the clocks differ (trace_clock
        not mono) or the record is newer than the snapshot (then it is another socket's)."""
        if not self.trace_clock_mono:
            return None
        for name in (("token", token) if token else None, ("key", key) if key is not None else None):
            got = self.closed.get(name) if name is not None else None
            if got is not None and t <= got[1]:
                return got[0]
        return None

    def _open(self, t: float, e: _Conn, source: str, role: str | None, local: str | None, peer: str | None) -> list[Event]:
        if e.opened:
            return []
        e.opened = True
        e.local, e.peer = local or e.local, peer or e.peer
        e.role = role or e.role
        return [self._ev(t, "conn.open", source, conn=e.id, role=e.role or "unknown", local=e.local, peer=e.peer)]

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, snap: Snapshot, complete: frozenset[str] | set[str] = frozenset({"connections", "link_groups", "links", "devices"})) -> list[Event]:
        """The events that tell how ``snap`` differs from what was seen before. Parts not in
        ``complete`` (their dump failed) are not diffed: nothing is taken as gone for them.
        Fills in each connection's ``id``."""
        t = snap.t
        first = self.snapshots == 0
        self.snapshots += 1
        out: list[Event] = []
        if "link_groups" in complete:
            out += self._lgrs(snap, t, first, "links" in complete)
        if "devices" in complete:
            out += self._devices(snap, t, first)
        if "connections" in complete:
            out += self._conns(snap, t, first)
        self.told.clear()
        if self.stats_every is not None and (self.last_stats is None or t - self.last_stats >= self.stats_every):
            self.last_stats = t
            cause = "the kernel source started" if first else "periodic kernel snapshot"
            out.append(self._ev(t, "stats", SNAPSHOT, cause=cause, snapshot=to_stack_snapshot(snap)))
        return out

    def _conns(self, snap: Snapshot, t: float, first: bool) -> list[Event]:
        out: list[Event] = []
        seen: set[int] = set()
        for c in snap.connections:
            key = _key(c.local, c.peer)
            e = self._entry(cookie=c.cookie, key=key, token=c.token)
            c.id = e.id
            seen.add(e.id)
            if c.state in ("LISTEN", "INIT") or c.mode is None:
                continue  # a listener, or a handshake still running: nothing to tell yet
            if c.role is None and not e.opened and e.id not in self.role_wait and self.installed & SIDE_NAMING:
                # a record that names its side (fallback, decline, a send) may still be on its way
                # (the trace reader behind the poller): conn.open is told once, so wait one poll
                self.role_wait[e.id] = (t, c, first)
                continue
            self.role_wait.pop(e.id, None)
            out += self._conn_events(e, c, t, first)
        for e in list(self.conns.values()):
            if e.id in seen:
                continue
            waited = self.role_wait.pop(e.id, None)
            if waited is not None and not e.opened:  # gone, and no record named its side: as smc_diag showed it
                out += self._conn_events(e, waited[1], waited[0], waited[2])
            if e.cookie is not None or e.state is not None:
                if e.opened and e.state is not None and e.state != "CLOSED":
                    out.append(self._ev(t, "conn.state", SNAPSHOT, conn=e.id, old=e.state, new="CLOSED", cause="gone from smc_diag"))
                self._close(e, t)
            elif t - e.touched > self.grace:
                # only a probe named it, and smc_diag has not shown it since: it closed in between
                if e.opened:
                    out.append(self._ev(t, "conn.state", SNAPSHOT, conn=e.id, old="", new="CLOSED", cause="closed before smc_diag showed it"))
                self._close(e, t)
        return out

    def _conn_events(self, e: _Conn, c: Conn, t: float, first: bool) -> list[Event]:
        """What smc_diag's view ``c`` of connection ``e`` at ``t`` tells that was not told yet."""
        out = self._open(t, e, SNAPSHOT, c.role, c.local, c.peer)
        if e.state != c.state:
            cause = ("already open when the kernel source started" if first else "first seen by smc_diag") if e.state is None else "smc_diag"
            out.append(self._ev(t, "conn.state", SNAPSHOT, conn=e.id, old=e.state or "", new=c.state, cause=cause))
            e.state = c.state
        if not e.mode_reported:
            e.mode_reported = True
            if c.mode == "TCP":
                if not e.fallback_reported:
                    e.fallback_reported = True
                    ft, src = self._fallback_time(t, c.fallback_reason)
                    out.append(self._ev(ft, "conn.fallback", src, conn=e.id, reason=c.fallback_reason or 0,
                                        reason_text=codes.format_reason(c.fallback_reason) if c.fallback_reason else "not SMC",
                                        peer_diagnosis=c.peer_diagnosis or None,
                                        peer_diagnosis_text=codes.format_reason(c.peer_diagnosis) if c.peer_diagnosis else None,
                                        cause="smc_diag" if src == SNAPSHOT else "smc:smc_switch_to_fallback"))  # fmt: skip
                out.append(self._ev(t, "conn.mode", SNAPSHOT, conn=e.id, mode="TCP", reason=c.fallback_reason or 0))
            else:
                out.append(self._ev(t, "conn.mode", SNAPSHOT, lgr=c.lgr, link=c.link, conn=e.id, mode=c.mode, version=c.version,
                                    token=c.token, rmb_size=c.rmb_size, peer_rmb_size=c.peer_rmb_size))  # fmt: skip
        if c.cursors:
            rx = (c.cursors.get("rx_prod"), c.cursors.get("rx_cons"))
            if rx != e.rx:
                e.rx = rx
                to_rcv = None
                if rx[0] is not None and rx[1] is not None and c.rmb_size:
                    to_rcv = max(0, (rx[0][0] - rx[1][0]) * c.rmb_size + rx[0][1] - rx[1][1])
                out.append(self._ev(t, "conn.cursor", SNAPSHOT, lgr=c.lgr, link=c.link, conn=e.id, side="rx", prod=_cur(rx[0]),
                                    cons=_cur(rx[1]), bytes_to_rcv=to_rcv, cause="smc_diag"))  # fmt: skip
            tx = (c.cursors.get("tx_prod"), c.cursors.get("tx_cons"), c.cursors.get("tx_sent"), c.cursors.get("tx_fin"))
            if tx != e.tx:
                e.tx = tx
                out.append(self._ev(t, "conn.cursor", SNAPSHOT, lgr=c.lgr, link=c.link, conn=e.id, side="tx", prod=_cur(tx[0]),
                                    cons=_cur(tx[1]), sent=_cur(tx[2]), fin=_cur(tx[3]), cause="smc_diag"))  # fmt: skip
        return out

    def _fallback_time(self, t: float, reason: int | None) -> tuple[float, str]:
        """The time of a fallback smc_diag shows: the plain tracepoint's, when one with this
        reason is waiting (probes absent), else the snapshot's."""
        for i, (ft, fr) in enumerate(self.pending_fallbacks):
            if fr == reason and ft <= t:
                del self.pending_fallbacks[i]
                return ft, TRACEPOINT
        return t, SNAPSHOT

    def _lgrs(self, snap: Snapshot, t: float, first: bool, links_complete: bool) -> list[Event]:
        out: list[Event] = []
        now = {g.id: g for g in snap.link_groups if ("free", g.id) not in self.told}  # (one a probe saw freed: read before)
        for gid, g in now.items():
            prev = self.lgrs.get(gid)
            if prev is not None and prev.type is not None and prev.type != g.type and ("type", gid) in self.told:
                pass  # read before the type change a probe told of
            elif prev is None or prev.type is None:  # (a probe may have named one of its links first)
                prev = self.lgrs.setdefault(gid, _Lgr(None))
                if g.type in (None, "NONE"):
                    continue  # its first link still being set up (type NONE): told once it has a type
                cause = "already there when the kernel source started" if first else "created (first seen by SMC_GEN_NETLINK)"
                out.append(self._ev(t, "lgr.state", SNAPSHOT, lgr=gid, old="NONE", new=g.type or "NONE", cause=cause, crit=g.crit,
                                    role=g.role, version=g.version, max_conns=g.max_conns, max_links=g.max_links))  # fmt: skip
                prev.type = g.type
            elif prev.type != g.type and g.type is not None:
                out.append(self._ev(t, "lgr.state", SNAPSHOT, lgr=gid, old=prev.type or "NONE", new=g.type, cause="SMC_GEN_NETLINK", crit=g.crit))
                prev.type = g.type
        for gid in [g for g in self.lgrs if g not in now]:
            prev = self.lgrs.pop(gid)
            out += [self._ev(t, "link.event", SNAPSHOT, lgr=gid, link=lid, event="deleted") for lid in sorted(prev.links)]
            out.append(self._ev(t, "lgr.state", SNAPSHOT, lgr=gid, old=prev.type or "NONE", new="NONE",
                                cause="gone from SMC_GEN_NETLINK (freed)", crit=True))  # fmt: skip
        if links_complete:
            for gid in now:
                links = {lk.id: lk for lk in snap.links if lk.lgr == gid and lk.id is not None}
                known = self.lgrs[gid].links
                for lid, lk in links.items():
                    if ("link", gid, lid) in self.told:
                        continue  # read before what a probe told of this link
                    if lid not in known:
                        self.gone.discard((gid, lid))
                        out.append(self._ev(t, "link.event", SNAPSHOT, lgr=gid, link=lid, event="added", device=lk.ib_dev))
                        out.append(self._ev(t, "link.state", SNAPSHOT, lgr=gid, link=lid, old="LINK_UNUSED", new=lk.state or "LINK_UNUSED",
                                            cause="first seen by SMC_GEN_NETLINK"))  # fmt: skip
                    elif lk.state and known[lid] != lk.state:
                        out.append(self._ev(t, "link.state", SNAPSHOT, lgr=gid, link=lid, old=known[lid], new=lk.state, cause="SMC_GEN_NETLINK"))
                    known[lid] = lk.state or known.get(lid, "LINK_UNUSED")
                for lid in [x for x in known if x not in links and ("link", gid, x) not in self.told]:
                    del known[lid]
                    self.gone.add((gid, lid))
                    out.append(self._deleted(t, SNAPSHOT, gid, lid))
        return out

    def _devices(self, snap: Snapshot, t: float, first: bool) -> list[Event]:
        out: list[Event] = []
        for d in snap.devices:
            for p in d.ports:
                key = (d.name, p.port)
                prev = self.ports.get(key)
                if p.state is None:
                    continue
                self.ports[key] = p.state
                if prev is not None and prev != p.state:
                    out.append(self._ev(t, "link.event", SNAPSHOT, event="port_up" if p.state == "ACTIVE" else "port_down",
                                        device=d.name if len(d.ports) < 2 else f"{d.name}/{p.port}"))  # fmt: skip
        return out

    # ------------------------------------------------------------------ trace records

    def trace(self, rec: ktrace.TraceRecord) -> list[Event]:
        """The events one trace_pipe record stands for ([] when it says nothing we can tie
        to a connection, link group or link: counted in ``skipped``)."""
        if self.net_cookie is not None and rec.event != "LOST":
            net = rec.int("net")
            if net is not None and net != self.net_cookie:
                self.skipped["another network namespace"] += 1
                return []
        handler = getattr(self, f"_tr_{rec.event}", None)
        if handler is None:
            self.skipped[f"event {rec.event}"] += 1
            return []
        return handler(rec)

    def _tr_LOST(self, rec: ktrace.TraceRecord) -> list[Event]:
        return [self._ev(rec.t, "events.dropped", TRACEPOINT, count=rec.lost, by=f"the kernel's trace buffer (CPU {rec.cpu})")]

    def _conn_of_probe(self, rec: ktrace.TraceRecord, source: str = PROBE) -> tuple[_Conn, list[Event]] | None:
        """The connection a probe names (by its alert token when smc_diag showed it, else by
        its TCP ends), opened (conn.open) if this is the first word of it."""
        token = ktrace.in_range(rec.int("token"), 32) or None
        e = self.by_token.get(token) if token else None
        if e is None:
            ends = ktrace.tuple_of(rec, self.byteorder)
            key = _key(*ends) if ends is not None else None
            if key is None or key not in self.by_key:
                gone = self._gone_conn(rec.t, token, key)
                if gone is not None:  # read after a snapshot told its socket gone: still that connection
                    self.late += 1
                    return gone, []
            if key is None:
                self.skipped[f"{rec.event}: no TCP ends"] += 1
                return None
            e = self._entry(key=key, token=token)
        else:
            ends = None
        e.touched = max(e.touched, rec.t)
        if e.opened:
            return e, []
        listen = rec.int("listen")
        role = None if listen is None else ("server" if listen else "client")
        ends = ends or ktrace.tuple_of(rec, self.byteorder) or (None, None)
        return e, self._open(rec.t, e, source, role, *ends)

    def _tr_fallback(self, rec: ktrace.TraceRecord) -> list[Event]:
        got = self._conn_of_probe(rec)
        if got is None:
            return []
        e, out = got
        reason, peer = ktrace.in_range(rec.int("reason"), 32) or 0, ktrace.in_range(rec.int("peer_diag"), 32) or 0
        if not e.fallback_reported:
            e.fallback_reported = e.mode_reported = True
            out.append(self._ev(rec.t, "conn.fallback", PROBE, conn=e.id, reason=reason, reason_text=codes.format_reason(reason) if reason else "not SMC",
                                peer_diagnosis=peer or None, peer_diagnosis_text=codes.format_reason(peer) if peer else None,
                                cause="smc_switch_to_fallback"))  # fmt: skip
            out.append(self._ev(rec.t, "conn.mode", PROBE, conn=e.id, mode="TCP", reason=reason))
        return out

    def _tr_decline(self, rec: ktrace.TraceRecord) -> list[Event]:
        got = self._conn_of_probe(rec)
        if got is None:
            return []
        e, out = got
        diag = ktrace.in_range(rec.int("diag"), 32) or 0
        out.append(self._ev(rec.t, "clc.msg", PROBE, conn=e.id, dir="tx", type="Decline", version=ktrace.u8(rec.int("version")), diagnosis=diag,
                            diagnosis_text=codes.format_reason(diag)))  # fmt: skip
        return out

    def _tr_smc_switch_to_fallback(self, rec: ktrace.TraceRecord) -> list[Event]:
        if "fallback" in self.installed:
            return []  # the probe tells the same, with the connection
        reason = rec.int("fallback_rsn")
        if reason is not None and -(1 << 31) <= reason < 1 << 32:
            self.pending_fallbacks.append((rec.t, reason & 0xFFFFFFFF))
            del self.pending_fallbacks[:-1000]
        return []

    def _message(self, rec: ktrace.TraceRecord, kind: str) -> list[Event]:
        raw = ktrace.raw_bytes(rec, 44, self.byteorder)
        lgr, link = ktrace.lgr_text(rec.int("lgr")), ktrace.u8(rec.int("link"))
        if raw is None:
            self.skipped[f"{rec.event}: no message bytes"] += 1
            return []
        try:
            if kind == "cdc.msg":
                fields = {**cdc_fields(wcdc.decode(raw)), "raw": raw}  # the bytes the kernel received, as they were
            else:
                msg = wllc.decode(raw)
                fields = {**llc_fields(msg, raw), "raw": raw[: _llc_len(raw, msg)]}
        except (WireError, ValueError) as err:
            if kind == "llc.msg":  # a v2 message longer than 44 bytes: its first 44 are all the probe sees
                fields = {"type": _llc_name(raw), "raw": raw}
            else:
                fields = {"raw": raw}
            self.skipped[f"{rec.event}: {type(err).__name__} (the event keeps the type and bytes)"] += 1
        conn, out = None, []
        if kind == "cdc.msg":
            got = self._conn_of_probe(rec)
            if got is not None:
                conn, out = got[0].id, got[1]
        return out + [self._ev(rec.t, kind, PROBE, lgr=lgr, link=link, conn=conn, dir="rx", **fields)]

    def _tr_cdc_rx(self, rec: ktrace.TraceRecord) -> list[Event]:
        return self._message(rec, "cdc.msg")

    def _note_delete_link(self, rec: ktrace.TraceRecord) -> None:
        """A DELETE LINK of one link, received (softirq) or queued by the kernel itself (a
        server's own link down, smc_llc_srv_delete_link_local): its reason names why that
        link's deletion (smcr_link_clear) happened."""
        raw = ktrace.raw_bytes(rec, 44, self.byteorder)
        gid = ktrace.lgr_text(rec.int("lgr"))
        if raw is None or gid is None or raw[0] & 0x1F != wllc.LlcType.DELETE_LINK or raw[3] & wllc.FLAG_RESP:  # (a request, not its response)
            return
        try:
            msg = wllc.decode(raw)
        except (WireError, ValueError):
            return
        if isinstance(msg, wllc.DeleteLink) and not msg.all:
            self.del_reasons[(gid, msg.link_num)] = (msg.reason, msg.orderly, "peer" if rec.softirq else "local")

    def _deleted(self, t: float, source: str, gid: str, lid: int) -> Event:
        """link.event deleted, with the DELETE LINK reason when one was seen for this link."""
        why = self.del_reasons.pop((gid, lid), None)
        if why is None:
            return self._ev(t, "link.event", source, lgr=gid, link=lid, event="deleted")
        reason, orderly, by = why
        text = f"{codes.DELETE_LINK_REASONS.format(reason)} ({'the peer' if by == 'peer' else 'this host'}'s DELETE LINK)"
        return self._ev(t, "link.event", source, lgr=gid, link=lid, event="deleted", reason=reason, reason_text=text, orderly=orderly)

    def _tr_llc_rx(self, rec: ktrace.TraceRecord) -> list[Event]:
        self._note_delete_link(rec)
        if not rec.softirq:
            self.skipped["llc_rx: queued by the kernel itself, not received"] += 1
            return []
        return self._message(rec, "llc.msg")

    def _lgr_type(self, rec: ktrace.TraceRecord, cause: str) -> list[Event]:
        gid = ktrace.lgr_text(rec.int("lgr"))
        old, new = rec.int("old"), rec.int("new")
        if gid is None or new is None or old == new:
            return []
        old_name, new_name = LGR_TYPES.get(old, str(old)), LGR_TYPES.get(new, str(new))
        g = self.lgrs.get(gid)
        if g is not None and g.type == new_name:
            return []  # a snapshot told it already
        role = version = None
        if g is None or g.type is None:  # (a link of it may have been seen first)
            g = self.lgrs.setdefault(gid, _Lgr(None))
            cause = f"created ({cause})"
            role = {0: "client", 1: "server"}.get(rec.int("role") if rec.int("role") is not None else -1)
            version = ktrace.u8(rec.int("version"))
        g.type = new_name
        self.told.add(("type", gid))
        return [self._ev(rec.t, "lgr.state", PROBE, lgr=gid, old=old_name, new=new_name, cause=cause, crit=_CRIT.get(new_name),
                         role=role, version=version)]  # fmt: skip

    def _tr_lgr_type(self, rec: ktrace.TraceRecord) -> list[Event]:
        return self._lgr_type(rec, "smcr_lgr_set_type")

    def _tr_lgr_type_asym(self, rec: ktrace.TraceRecord) -> list[Event]:
        return self._lgr_type(rec, "smcr_lgr_set_type_asym")

    def _tr_lgr_free(self, rec: ktrace.TraceRecord) -> list[Event]:
        gid = ktrace.lgr_text(rec.int("lgr"))
        if gid is None:
            return []
        g = self.lgrs.pop(gid, None)
        self.told.add(("free", gid))
        old = g.type if g is not None and g.type else LGR_TYPES.get(rec.int("type") or 0, "NONE")
        return [self._ev(rec.t, "lgr.state", PROBE, lgr=gid, old=old, new="NONE", cause="smc_lgr_free", crit=True)]

    def _tr_failover(self, rec: ktrace.TraceRecord) -> list[Event]:
        gid, frm = ktrace.lgr_text(rec.int("lgr")), ktrace.u8(rec.int("from"))
        self.failovers[rec.pid] = (rec.t, gid, frm)
        reason = "device error" if rec.int("dev_err") else "link down"
        return [self._ev(rec.t, "link.event", PROBE, lgr=gid, link=frm, event="failover_begin", reason=reason)]

    def _tr_failover_end(self, rec: ktrace.TraceRecord) -> list[Event]:
        begun = self.failovers.pop(rec.pid, None)
        gid = ktrace.lgr_text(rec.int("lgr")) or (begun[1] if begun else None)
        to = ktrace.u8(rec.int("to"))
        ms = round((rec.t - begun[0]) * 1000, 3) if begun else None
        return [self._ev(rec.t, "link.event", PROBE, lgr=gid, link=begun[2] if begun else None, event="failover_end", to_link=to,
                         duration_ms=ms)]  # fmt: skip

    def _link_state(self, t: float, gid: str | None, lid: int | None, new: str, cause: str, source: str, device: str | None) -> list[Event]:
        out: list[Event] = []
        if gid is None or lid is None:
            return out
        g = self.lgrs.setdefault(gid, _Lgr(None))
        self.told.add(("link", gid, lid))
        old = g.links.get(lid)
        if old is None:
            self.del_reasons.pop((gid, lid), None)  # (a reason seen for an earlier link of this id)
            self.gone.discard((gid, lid))
            out.append(self._ev(t, "link.event", source, lgr=gid, link=lid, event="added", device=device))
            old = "LINK_ACTIVATING" if new == "LINK_ACTIVE" else "LINK_UNUSED"
        if old != new:
            out.append(self._ev(t, "link.state", source, lgr=gid, link=lid, old=old, new=new, cause=cause))
        g.links[lid] = new
        return out

    def _tr_link_active(self, rec: ktrace.TraceRecord) -> list[Event]:
        return self._link_state(rec.t, ktrace.lgr_text(rec.int("lgr")), ktrace.u8(rec.int("link")), "LINK_ACTIVE", "smc_llc_link_active", PROBE,
                                rec.str("dev"))  # fmt: skip

    def _tr_link_clear(self, rec: ktrace.TraceRecord) -> list[Event]:
        gid, lid = ktrace.lgr_text(rec.int("lgr")), ktrace.u8(rec.int("link"))
        if gid is None or lid is None:
            return []
        g = self.lgrs.get(gid)
        self.told.add(("link", gid, lid))
        if (gid, lid) in self.gone:  # a poll told it deleted when it left genl's list (link down: no longer usable)
            self.gone.discard((gid, lid))
            return []
        out = [self._deleted(rec.t, PROBE, gid, lid)]
        if g is not None and lid in g.links:
            out.append(self._ev(rec.t, "link.state", PROBE, lgr=gid, link=lid, old=g.links.pop(lid), new="LINK_UNUSED", cause="smcr_link_clear"))
        return out

    def _tr_link_down(self, rec: ktrace.TraceRecord) -> list[Event]:
        gid, lid = ktrace.lgr_text(rec.int("lgr")), ktrace.u8(rec.int("link"))
        loc = rec.str("loc")
        return [self._ev(rec.t, "link.event", TRACEPOINT, lgr=gid, link=lid, event="down",
                         reason=f"smcr_link_down from {loc.split('+')[0]}" if loc else "smcr_link_down")]  # fmt: skip

    def _tr_smcr_link_down(self, rec: ktrace.TraceRecord) -> list[Event]:
        if "link_down" in self.installed:
            return []
        dev = rec.str("dev")
        return [self._ev(rec.t, "link.event", TRACEPOINT, event="down", reason=f"smcr_link_down on {dev}" if dev else "smcr_link_down")]

    def _app(self, rec: ktrace.TraceRecord, side: str) -> list[Event]:
        got = self._conn_of_probe(rec, TRACEPOINT)
        n = ktrace.in_range(rec.int("len"), 63)
        if got is None or n is None:
            return []
        e, out = got
        what = f"application sent {n} bytes" if side == "tx" else f"application read {n} bytes"
        return out + [self._ev(rec.t, "conn.cursor", TRACEPOINT, conn=e.id, side=side, cause=what, len=n)]

    def _tr_sendmsg(self, rec: ktrace.TraceRecord) -> list[Event]:
        return self._app(rec, "tx")

    def _tr_recvmsg(self, rec: ktrace.TraceRecord) -> list[Event]:
        return self._app(rec, "rx")

    def _tr_smc_tx_sendmsg(self, rec: ktrace.TraceRecord) -> list[Event]:
        if "sendmsg" not in self.installed:
            self.skipped["smc_tx_sendmsg: the tracepoint names no connection (needs the BTF probe)"] += 1
        return []

    def _tr_smc_rx_recvmsg(self, rec: ktrace.TraceRecord) -> list[Event]:
        if "recvmsg" not in self.installed:
            self.skipped["smc_rx_recvmsg: the tracepoint names no connection (needs the BTF probe)"] += 1
        return []

    # ------------------------------------------------------------------ captured messages

    def message(self, t: float, kind: str, direction: str, fields: dict[str, Any]) -> list[Event]:
        """A CDC or LLC message decoded from a captured frame. A received CDC names our alert
        token, so its connection is known; a sent one names the peer's (unknown here)."""
        if kind == "rdma.write":  # "an RDMA WRITE posted": this host's only
            return [self._ev(t, kind, CAPTURE, **fields)] if direction == "tx" else []
        conn = None
        if kind == "cdc.msg" and direction == "rx":
            e = self.by_token.get(fields.get("token") or -1) or self._gone_conn(t, fields.get("token") or None, None)
            conn = e.id if e is not None else None
        return [self._ev(t, kind, CAPTURE, conn=conn, dir=direction, **fields)]
