"""How smctop writes numbers and rows: sizes, rates, sparklines, fill bars, and the cells of
every table, in smc-tools' vocabulary. Pure functions of model objects."""

from __future__ import annotations

from typing import Any, Sequence

from stack.events import Event, render
from stack.wire import codes
from stack.wire.units import human, ms, rate, us  # noqa: F401 (the views' names for them)

from .model import Conn, Failover, Link, LinkGroup
from .widgets import Cell, Column

BARS = "▁▂▃▄▅▆▇█"


def size_k(n: int) -> str:
    """RMB sizes as smcss writes buffer sizes: 262144 -> '256K'."""
    if not n:
        return "-"
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n % 1024 == 0 else str(n)


def sparkline(values: Sequence[float], width: int, top: float | None = None) -> str:
    """The last ``width`` values as block characters, scaled to the largest (or ``top``)."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    hi = top if top else max(vals)
    if hi <= 0:
        return BARS[0] * len(vals)
    return "".join(BARS[min(len(BARS) - 1, max(0, int(v / hi * (len(BARS) - 1) + 0.5)))] for v in vals)


def fill_bar(ratio: float, width: int = 8) -> Cell:
    ratio = max(0.0, min(1.0, ratio))
    full = int(ratio * width + 0.5)
    spec = "green" if ratio < 0.5 else "yellow" if ratio < 0.9 else "bold red"
    return "█" * full + "░" * (width - full) + f" {ratio * 100:3.0f}%", spec


def reason(code: int) -> str:
    return codes.format_reason(code) if code else ""


def reason_meaning(code: int) -> str:
    return codes.DECLINE_REASONS.meaning(code) if code else "not an SMC peer"


def ago(t: float | None, now: float | None) -> str:
    if t is None or now is None:
        return "-"
    return f"{max(now - t, 0):.0f}s ago"


# ---------------------------------------------------------------------- connections (smcss -d)

# the important columns first (an 80-column terminal shows them); widths are the most a column
# takes: RowTable sizes each to its content
CONN_COLUMNS = [
    Column("host", "Host", 16), Column("state", "State", 15), Column("mode", "Mode", 4), Column("rate", "Rate", 11, ">"),
    Column("fill", "Fill", 13), Column("rmb", "RMB", 5, ">"), Column("sent", "Sent", 9, ">"), Column("recv", "Recv", 9, ">"),
    Column("local", "Local Address", 45), Column("peer", "Peer Address", 45), Column("reason", "Fallback reason", 40),
    Column("lgr", "LG-ID", 8), Column("link", "Link", 4, ">"), Column("token", "Token", 8),
    Column("rxprod", "rxprod-Cursor", 13, ">"), Column("rxcons", "rxcons-Cursor", 13, ">"),
    Column("txprod", "txprod-Cursor", 13, ">"), Column("txcons", "txcons-Cursor", 13, ">"),
]  # fmt: skip

STATE_STYLE = {"ACTIVE": "", "INIT": "cyan", "CLOSED": "dim", "PEERABORTWAIT": "red", "PROCESSABORT": "red"}


def conn_cells(c: Conn) -> list[Cell]:
    closed = c.closed is not None
    dim = "dim" if closed else ""
    mode_spec = "dim" if closed else ("bold green" if c.mode == "SMCR" else "bold yellow" if c.mode == "TCP" else "cyan")
    why = reason(c.reason)
    if c.peer_diagnosis:
        why += f"/{c.peer_diagnosis:08x}"
    fill = fill_bar(c.fill_ratio) if c.mode == "SMCR" and c.rmb_size else ("", "")
    return [
        (c.host, dim), (c.state, STATE_STYLE.get(c.state, "magenta") if not closed else "dim"), (c.mode, mode_spec),
        (rate(c.rate), "bold" if c.rate and not closed else dim), (fill[0], dim or fill[1]), (size_k(c.rmb_size), dim),
        (human(c.bytes_sent), dim), (human(c.bytes_received), dim), (c.local, dim), (c.peer, dim),
        (why, "yellow" if why and not closed else dim),
        (c.lgr or "", dim), (str(c.link) if c.link is not None and c.mode == "SMCR" else "", dim),
        (f"{c.token:08x}" if c.token else "", dim),
        (c.rx_prod if c.mode == "SMCR" else "", dim), (c.rx_cons if c.mode == "SMCR" else "", dim),
        (c.tx_prod if c.mode == "SMCR" else "", dim), (c.tx_cons if c.mode == "SMCR" else "", dim),
    ]  # fmt: skip


def listen_cells(row: dict[str, Any]) -> list[Cell]:
    """A listening socket as ``smcss -a`` lists it: state LISTEN, its address, no peer."""
    return [(row["host"], "dim"), ("LISTEN", "cyan"), ("SMC" if row.get("smc", True) else "TCP", "cyan")] + [("", "")] * 5 + [
        (row["local"], ""), ("*:*", "dim")] + [("", "")] * (len(CONN_COLUMNS) - 10)  # fmt: skip


def conn_search_text(c: Conn) -> str:
    return f"{c.host} {c.state} {c.local} {c.peer} {c.mode} {reason(c.reason)} {c.lgr or ''} {c.role}".lower()


# ---------------------------------------------------------------------- link groups and links (smcr linkgroup link-show)

LINK_COLUMNS = [
    Column("host", "Host", 16), Column("lgr", "LG-ID", 8), Column("role", "LG-Role", 7), Column("type", "LG-Type", 7),
    Column("crit", "Crit", 4), Column("conns", "#Conns", 6, ">"), Column("link", "Link", 4, ">"),
    Column("state", "Link-State", 15), Column("rate", "Rate", 10, ">"), Column("hist", "History (60 s)", 20),
    Column("bytes", "Bytes", 9, ">"), Column("qpn", "QPN", 6, ">"), Column("pqpn", "Peer-QPN", 8, ">"),
    Column("dev", "IB-Dev", 20), Column("gid", "Local-GID", 40), Column("pgid", "Peer-GID", 40),
]  # fmt: skip

LINK_STATE_STYLE = {"LINK_ACTIVE": "green", "LINK_ACTIVATING": "cyan", "LINK_INACTIVE": "bold red", "LINK_UNUSED": "dim"}


def link_cells(row: tuple[LinkGroup, Link | None]) -> list[Cell]:
    g, link = row
    type_spec = "bold red" if g.crit else "green"
    head = [(g.host, ""), (g.id, ""), (g.role.upper()[:6], ""), (g.type, type_spec), ("Yes" if g.crit else "No", "bold red" if g.crit else ""),
            (str(g.conns) if g.conns else "", "")]  # fmt: skip
    if link is None:
        return head + [("", "")] * (len(LINK_COLUMNS) - len(head))
    return head + [
        (str(link.id), ""), (link.state, LINK_STATE_STYLE.get(link.state, "")), (rate(link.rate), "bold" if link.rate else ""),
        (sparkline(link.hist.values(), 20), "cyan"), (human(link.bytes), ""),
        (f"{link.qpn:x}" if link.qpn else "", ""), (f"{link.peer_qpn:x}" if link.peer_qpn else "", ""),
        (link.device, ""), (link.gid, ""), (link.peer_gid, ""),
    ]  # fmt: skip


def failover_line(fo: Failover, t0: float | None) -> str:
    when = f"+{fo.t - t0:.1f}s" if t0 is not None else f"{fo.t:.1f}"
    if not fo.conns and fo.duration_ms is not None:  # a DELETE LINK that moved nothing: not a failover
        return f"{when:>8}  {fo.host:6} link group {fo.lgr} link {fo.from_link} deleted, no connection on it ({fo.reason or 'link down'})"
    took = ms(fo.duration_ms) if fo.duration_ms is not None else "(in progress)"
    return (f"{when:>8}  {fo.host:6} link group {fo.lgr} link {fo.from_link} -> {fo.to_link}: "
            f"{fo.conns} connections moved in {took} ({fo.reason or 'link down'})")  # fmt: skip


# ---------------------------------------------------------------------- fallbacks (smcr stats -d)

FALLBACK_COLUMNS = [
    Column("reason", "Cause", 24), Column("count", "Conns", 7, ">"), Column("share", "Share", 5, ">"),
    Column("by", "Decided by", 30), Column("view", "The other end saw", 50), Column("last", "Last", 8, ">"),
    Column("meaning", "Meaning", 60),
]  # fmt: skip


def fallback_cells(row: dict[str, Any]) -> list[Cell]:
    """One cause of fallback, each connection once (both ends' view in one row)."""
    return [
        (row["text"], "yellow"), (f"{row['count']:,}", "bold"), (f"{row.get('share', 0) * 100:.0f}%", ""), (row["by"], ""),
        (row["view"], "dim"), (row.get("ago", "-"), ""), (reason_meaning(row["reason"]), "dim"),
    ]  # fmt: skip


# ---------------------------------------------------------------------- events

EVENT_COLUMNS = [
    Column("t", "Time", 10, ">"), Column("host", "Host", 16), Column("kind", "Kind", 14), Column("what", "Details", 110),
    Column("lgr", "LG-ID", 8), Column("link", "Link", 4, ">"), Column("conn", "Conn", 6, ">"),
]  # fmt: skip

KIND_STYLE = {"conn.fallback": "yellow", "conn.error": "red", "link.event": "bold magenta", "lgr.state": "bold cyan",
              "link.state": "magenta", "conn.state": "cyan", "events.dropped": "bold red", "llc.msg": "blue", "clc.msg": "green"}  # fmt: skip


def event_details(e: Event) -> str:
    """What the event says: its kind's template in the event schema (stack/events.py)."""
    return render(e)


def event_cells(e: Event, t0: float | None) -> list[Cell]:
    rel = e.t - t0 if t0 is not None else e.t
    return [
        (f"{rel:+.3f}", "dim"), (e.host, ""), (e.kind, KIND_STYLE.get(e.kind, "")), (event_details(e), ""), (e.lgr or "", ""),
        (str(e.link) if e.link is not None else "", ""), (str(e.conn) if e.conn is not None else "", ""),
    ]  # fmt: skip


def event_search_text(e: Event) -> str:
    return f"{e.host} {e.kind} {e.lgr or ''} {e.conn if e.conn is not None else ''} {event_details(e)}".lower()
