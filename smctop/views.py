"""The main screen's views: the header, and one pane per tab (link groups and links,
connections, events, fallbacks, performance). Each pane reads the model in ``update_from``;
none keeps state of its own beyond what it shows (order, filter, follow).

``VIEWS`` is the registry the app is built from: its tabs (in order, keys 1-9), what each
tab composes, which table takes the focus, which panes filter and which are updated even
when not on screen. Adding a view is writing its pane class (``tab``, ``label``, ``table_id``,
``update_from``, ``set_filter``) and listing it there. The styles are in smctop.tcss."""

from __future__ import annotations

import bisect
from operator import attrgetter

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from stack.wire.fields import parse_cursor

from . import format as fmt
from .model import Model
from .widgets import RowTable


def pack(parts: list[tuple[int, Text]], width: int) -> Text:
    """One line of ``parts`` (priority, text; 0 is the most important), in their order, leaving
    out the least important ones that do not fit in ``width`` cells."""
    keep = set()
    used = 0
    for i in sorted(range(len(parts)), key=lambda i: parts[i][0]):
        n = parts[i][1].cell_len
        if used + n <= width:
            keep.add(i)
            used += n
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (_prio, text) in enumerate(parts):
        if i in keep:
            out.append_text(text)
    out.truncate(max(width, 1), overflow="ellipsis")
    return out


class HeaderBar(Static):
    """Three lines at any width: who and what is watched, the numbers, the last message.
    What does not fit goes by priority (the message line always stays)."""

    def show(self, model: Model, source: str, flags: list[str], status: str) -> None:
        t = model.totals()
        width = max((self.size.width or self.app.size.width) - 2, 20)
        line1: list[tuple[int, Text]] = [(0, Text("smctop", style="bold")), (1, Text(f"  {source}")),
                                         (4, Text(f"  hosts {' '.join(t['hosts']) or '-'}")), (3, Text(f"  {t['elapsed']:.0f} s"))]  # fmt: skip
        for flag in flags:
            alarm = flag.startswith(("PAUSED", "REC"))
            line1.append((0 if alarm else 2, Text.assemble("  ", (f" {flag} ", "bold reverse red" if alarm else "bold reverse"))))
        fb = t["fallback_ratio"] * 100
        line2 = [
            (0, Text.assemble(("conns ", "dim"), (f"{t['conns']}", "bold"), f" (SMCR {t['smcr']}, TCP {t['tcp']}"
                              + (f", SMCD {t['smcd']}" if t["smcd"] else "") + (f", handshake {t['handshake']}" if t["handshake"] else "") + ")")),
            (0, Text.assemble(("  ", ""), (fmt.rate(t["rate"]), "bold"))),
            (1, Text.assemble(("  links ", "dim"), f"{t['links_active']}/{t['links']} active")),
            (1, Text.assemble(("  LGs ", "dim"), f"{t['lgrs']}", (f" Crit {t['crit']}", "bold red" if t["crit"] else "dim"))),
            (2, Text.assemble(("  fallback ", "dim"), (f"{fb:.1f}%", "bold yellow" if fb else ""), f" ({t['fallback_conns']:,} conns)")),
            (2, Text.assemble(("  failovers ", "dim"), f"{t['failovers']}",
                              *(((" + ", "dim"), f"{t['link_deletions']} link deletions") if t["link_deletions"] else ()))),
            (3, Text.assemble(("  CDC ", "dim"), f"{t['cdc_rate']:,.0f}/s")),
            (4, Text.assemble(("  events ", "dim"), f"{t['event_rate']:,.0f}/s")),
        ]  # fmt: skip
        if t["dropped"]:
            line2.append((0, Text.assemble(("  dropped ", "dim"), (f"{t['dropped']:,}", "bold red"))))
        line3 = Text(status, style="italic", no_wrap=True, overflow="ellipsis")
        line3.truncate(width, overflow="ellipsis")
        self.update(Text("\n").join([pack(line1, width), pack(line2, width), line3]))


class Pane:
    """What every view declares for the registry (mixed into its widget class)."""

    tab = ""  # the tab's id
    label = ""  # the tab's title (after its number)
    table_id: str | None = None  # the id of the RowTable that takes the focus on this tab
    filterable = True
    always = False  # updated on every redraw, even when not on screen (it gathers as events arrive)
    filter = ""

    def set_filter(self, text: str, model: Model) -> None:
        self.filter = text.lower()

    def update_from(self, model: Model) -> None:
        raise NotImplementedError


class LinksPane(Pane, Vertical):
    """Link groups and links as ``smcr linkgroup link-show`` lists them, with Crit as
    ``smcr device`` flags it, rates and a sparkline per link; failovers below."""

    tab, label, table_id = "links", "Links", "links-table"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.gen = 0
        self.filter = ""

    def compose(self) -> ComposeResult:
        yield RowTable(fmt.LINK_COLUMNS, fmt.link_cells, key=lambda r: (r[0].host, r[0].id, r[1].id if r[1] else 0),
                       version=lambda r: self.gen, id="links-table", text_sort=True)  # fmt: skip
        yield Static(id="failovers")

    def update_from(self, model: Model) -> None:
        self.gen += 1
        rows = model.link_rows()
        if self.filter:
            rows = [r for r in rows if self.filter in " ".join(t for t, _ in fmt.link_cells(r)).lower()]
        self.query_one(RowTable).set_items(rows)
        fos = list(model.failovers)[-8:]
        text = ("failovers (connections moved) and link deletions (nothing to move):\n"
                + ("\n".join(fmt.failover_line(fo, model.t0) for fo in fos) if fos else "  none yet"))  # fmt: skip
        self.query_one("#failovers", Static).update(text)


# how each column of the connections orders them: (key, descending first); s cycles the
# first five, a click on a column's title sorts by it, S (or a second click) reverses
SORTS = {
    "host": (attrgetter("key"), False),  # (host, id)
    "rate": (lambda c: c.rate, True),
    "fill": (lambda c: c.fill_ratio, True),
    "state": (lambda c: (c.state, c.host, c.id), False),
    "mode": (lambda c: (c.mode, c.reason, c.host, c.id), False),
    "rmb": (lambda c: c.rmb_size, True),
    "sent": (lambda c: c.bytes_sent, True),
    "recv": (lambda c: c.bytes_received, True),
    "local": (lambda c: (c.local, c.host, c.id), False),
    "peer": (lambda c: (c.peer, c.host, c.id), False),
    "reason": (lambda c: (c.reason, c.host, c.id), False),
    "lgr": (lambda c: (c.lgr or "", c.host, c.id), False),
    "link": (lambda c: (c.link or 0, c.host, c.id), False),
    "token": (lambda c: c.token, False),
    "rxprod": (lambda c: (c.rxw, c.rxc), True),
    "rxcons": (lambda c: parse_cursor(c.rx_cons), True),
    "txprod": (lambda c: parse_cursor(c.tx_prod), True),
    "txcons": (lambda c: parse_cursor(c.tx_cons), True),
}
CYCLE = ("host", "rate", "fill", "state", "mode")


def conn_row(item) -> list:
    return fmt.listen_cells(item) if isinstance(item, dict) else fmt.conn_cells(item)


def conn_key(item):
    return ("LISTEN", item["host"], item["local"]) if isinstance(item, dict) else item.key


def conn_version(item) -> int:
    return 0 if isinstance(item, dict) else item.change_no


class ConnsPane(Pane, Vertical):
    """Connections as ``smcss -d -R`` shows them, plus fill bars and rates. Rows update in
    place: only connections that changed are re-rendered, and only when on screen."""

    tab, label, table_id = "conns", "Connections", "conns-table"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.sort = "host"
        self.reverse = False  # against the column's usual order
        self.show_closed = False
        self.show_listen = False  # LISTEN rows too (a, as smcss -a), when the source knows the listening sockets
        self._stamp: tuple = ()
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield Static(id="conns-summary")
        yield RowTable(fmt.CONN_COLUMNS, conn_row, key=conn_key, version=conn_version, id="conns-table")

    @property
    def table(self) -> RowTable:
        return self.query_one("#conns-table", RowTable)

    def set_filter(self, text: str, model: Model | None = None) -> None:
        self.filter = text.lower()
        self._dirty = True

    def cycle_sort(self) -> str:
        names = list(CYCLE)
        self.sort = names[(names.index(self.sort) + 1) % len(names)] if self.sort in names else names[0]
        self.reverse = False
        self._dirty = True
        return self.sort

    def sort_by(self, column: str) -> str:
        """Sort by ``column``; the same column again reverses the order."""
        if column not in SORTS:
            raise ValueError(f"connections cannot be sorted by {column}")
        if column == self.sort:
            self.reverse = not self.reverse
        else:
            self.sort, self.reverse = column, False
        self._dirty = True
        return self.sort_text()

    def toggle_reverse(self) -> str:
        self.reverse = not self.reverse
        self._dirty = True
        return self.sort_text()

    def sort_text(self) -> str:
        descending = SORTS[self.sort][1] != self.reverse
        return f"{self.sort} {'descending' if descending else 'ascending'}"

    def on_row_table_header_clicked(self, message: RowTable.HeaderClicked) -> None:
        if message.table is self.table and message.column in SORTS:
            text = self.sort_by(message.column)
            self.update_from(self.app.model)
            say = getattr(self.app, "say", None)
            if say is not None:
                say(f"connections sorted by {text}")

    def update_from(self, model: Model) -> None:
        key, desc = SORTS[self.sort]
        reverse = desc != self.reverse
        self.table.set_sort(self.sort, reverse)
        dynamic = self.sort in ("rate", "fill", "sent", "recv", "rxprod", "rxcons", "txprod", "txcons")
        listen = [dict(x, host=h.name) for h in model.hosts.values() for x in h.listeners] if self.show_listen else []
        if self.filter:
            listen = [x for x in listen if self.filter in f"{x['host']} listen {x['local']}".lower()]
        stamp = (model.epoch, model.conns_added, model.conns_removed, model.conns_closed if not self.show_closed else 0, len(listen))
        if self._dirty or dynamic or stamp != self._stamp:  # rows came or went: order them again
            conns = model.conns.values()
            if not self.show_closed:
                conns = [c for c in conns if c.closed is None]
            if self.filter:
                conns = [c for c in conns if self.filter in fmt.conn_search_text(c)]
            self._stamp = stamp
            self._dirty = False
            listen.sort(key=lambda x: (x["host"], x["local"]))
            self.table.set_items(listen + sorted(conns, key=key, reverse=reverse))  # LISTEN rows first, as smcss -a
        else:  # the same rows: those on screen whose connection changed are drawn again
            self.table.refresh()
        n = len(self.table.items) - len(listen)
        if self.filter or self.show_closed:
            smc = sum(1 for c in self.table.items if getattr(c, "mode", "") == "SMCR")
        else:  # the rows are the open connections: the model counts them
            smc = model.totals()["smcr"]
        self.query_one("#conns-summary", Static).update(
            f"{n} connections ({smc} SMCR, {n - smc} other{', closed ones too' if self.show_closed else ''})"
            + (f", {len(listen)} listening" if listen else "") + f"  sorted by {self.sort_text()}"
            + (f"  filter '{self.filter}'" if self.filter else "") + "   Enter: details  s/S/click: sort  c: closed  a: listening")  # fmt: skip


def _t(e) -> float:
    return e.t


class EventsPane(Pane, Vertical):
    """The event stream in time order across hosts, newest at the bottom. A filter searches
    every event the model keeps: the recent ones and the long buffer of rare ones (state,
    fallback, link, link group, failover, and the data path's events that mark something:
    a failover's cursor rewind and validation CDCs, closing and urgent CDCs), so a failover
    long ago is found. Not following
    (F), the rows stand still; new ones wait until F follows again."""

    tab, label, table_id, always = "events", "Events", "events-table", True

    MAX_ROWS = 20_000

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.seq = 0
        self.epoch = 0
        self.rows: list = []
        self.waiting = 0  # events that matched while the view stood still
        self.t0: float | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="events-summary")
        yield RowTable(fmt.EVENT_COLUMNS, lambda e: fmt.event_cells(e, self.t0), key=id, id="events-table")

    def on_mount(self) -> None:
        self.table.follow = True

    @property
    def table(self) -> RowTable:
        return self.query_one("#events-table", RowTable)

    def _match(self, events: list) -> list:
        if not self.filter:
            return events
        words = self.filter.split()
        return [e for e in events if all(w in fmt.event_search_text(e) for w in words)]

    def set_filter(self, text: str, model: Model) -> None:
        """Search everything kept, then follow what arrives; no match clears the rows."""
        self.filter = text.lower()
        self.seq = model.seq
        self.epoch = model.epoch
        recent = model.events_since(max(0, model.seq - len(model.events)))
        first = recent[0].t if recent else None
        older = [e for e in model.rare if first is None or e.t < first] if self.filter else []
        rows = self._match(older) + self._match(recent)
        rows.sort(key=_t)
        self.rows = rows[-self.MAX_ROWS :]
        self.waiting = 0
        self.table.follow = True
        self.table.set_items(self.rows)
        self._summary(model)

    def toggle_follow(self) -> bool:
        t = self.table
        if t.follow:
            t.follow = False
        else:
            t.follow = True
            self.waiting = 0
            t.set_items(self.rows)
        return t.follow

    def update_from(self, model: Model) -> None:
        self.t0 = model.t0
        if model.epoch != self.epoch:  # the model started again (a replay seeking back)
            self.epoch, self.seq, self.rows = model.epoch, 0, []
            self.table.set_items(self.rows)
        new = self._match(model.events_since(self.seq))
        self.seq = model.seq
        if new:
            new.sort(key=_t)  # several hosts' events arrive host by host: time order across them
            rows = self.rows
            if rows and new[0].t < rows[-1].t:  # they interleave with the last rows
                i = bisect.bisect_right(rows, new[0].t, key=_t)
                tail = rows[i:] + new
                tail.sort(key=_t)
                rows = rows[:i] + tail
            else:
                rows = rows + new
            if len(rows) > self.MAX_ROWS:
                rows = rows[-self.MAX_ROWS :]
            self.rows = rows
            if not self.table.follow:  # the view stands still: what is on screen stays
                self.waiting += len(new)
        if self.table.follow and (new or self.table.items is not self.rows or self.table.cursor != len(self.rows) - 1):
            self.table.set_items(self.rows)
        self._summary(model)

    def _summary(self, model: Model) -> None:
        shown = len(self.table.items)
        self.query_one("#events-summary", Static).update(
            f"{shown:,} events shown of {model.seq:,}" + (f"  filter '{self.filter}' (all kept, rare events {len(model.rare):,})" if self.filter else "")
            + ("  following" if self.table.follow else f"  NOT FOLLOWING, {self.waiting:,} new (F follows)"))  # fmt: skip


def diagnosis_lines(model: Model, limit: int = 8) -> list[str]:
    """smc_chk's question, answered from the events: for each cause of fallback, who decided it,
    what the other end saw, what did not match and where to look."""
    out = []
    for r in model.fallback_cause_rows()[:limit]:
        hint = DIAGNOSIS_HINTS.get(r["reason"], "")
        out.append(f"{r['count']:,} connection{'s' if r['count'] != 1 else ''}: SMC-R not used because {r['by']} said {r['text']} "
                   f"({fmt.reason_meaning(r['reason'])})" + (f"; {r['view']}" if r["view"] else "") + (f". Check: {hint}" if hint else ""))  # fmt: skip
    return out


DIAGNOSIS_HINTS = {
    0x03070000: "the two hosts' IP subnets (SMC-Rv1 needs a common prefix); for v2, their UEIDs (Stats view)",
    0x03030000: "an RDMA device with its port up on both hosts, and matching PNET IDs (Devices view)",
    0x03030002: "a RoCE device with its port up and a PNET ID matching the interface (Devices view)",
    0x03030008: "the UEID lists of both hosts: no common entry (Stats view)",
    0x03010000: "whether the peer is SMC-capable at all (an SMC listener, the SMC TCP option)",
    0x030C0000: "the SMC versions each side offers (the Proposal in the connection's details)",
    0x030A0000: "the link group's links (Links view): none active",
    0x0303000A: "the link group's connection limit on either side",
    0x0303000B: "the link group's link limit on either side",
    0x01010000: "memory for RMBs on the declining host",
    0x02010000: "the RoCE path between the hosts: CONFIRM LINK never arrived (ports, GIDs, loss)",
    0x02020000: "the second device pair: ADD LINK never arrived",
    0x04000000: "whether another SMC stack uses this host's RoCE GID with the same peer (the kernel's SMC beside smc-traffic): "
    "an SMC-Rv2 peer cannot tell the two apart, and the Decline makes it end the other's link group",
}


class FallbacksPane(Pane, Vertical):
    """Why connections fell back, each connection once with both ends' view (smcr stats -d
    counts per end; the pane pairs the ends), and below, smc_chk's answer: why no SMC-R."""

    tab, label, table_id = "fallbacks", "Fallbacks", "fallbacks-table"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.gen = 0

    def compose(self) -> ComposeResult:
        yield Static(id="fallbacks-summary")
        yield RowTable(fmt.FALLBACK_COLUMNS, fmt.fallback_cells, key=lambda r: (r["reason"], r["by"], r["view"]),
                       version=lambda r: self.gen, id="fallbacks-table", text_sort=True)  # fmt: skip
        yield Static(id="diagnosis")

    def update_from(self, model: Model) -> None:
        self.gen += 1
        rows = model.fallback_cause_rows()
        total = sum(r["count"] for r in rows) or 1
        for r in rows:
            r["share"] = r["count"] / total
            r["ago"] = fmt.ago(r["last"], model.now)
        if self.filter:
            rows = [r for r in rows if self.filter in f"{r['text']} {r['by']} {r['view']}".lower()]
        self.query_one(RowTable).set_items(rows)
        t = model.totals()
        decided = model.smc_conns + model.tcp_conns
        self.query_one("#fallbacks-summary", Static).update(
            f"fallback ratio {t['fallback_ratio'] * 100:.1f}% of {decided:,} connection ends; {t['fallback_conns']:,} connections fell back "
            f"(each once, both ends' view)\nreasons as smc-tools prints them (hex and name)")  # fmt: skip
        lines = diagnosis_lines(model)
        self.query_one("#diagnosis", Static).update(
            Text("why not SMC-R (as smc_chk asks):\n", style="bold") + Text("\n".join(lines) if lines else "  every connection used SMC-R")
        )


class PerfPane(Pane, VerticalScroll):
    """Throughput, message rates, connection set-up, handshake and request/response latency."""

    tab, label, filterable = "perf", "Perf", False

    def compose(self) -> ComposeResult:
        yield Static(id="perf-body")

    def update_from(self, model: Model) -> None:
        p = model.perf
        names = [("Throughput", 0, fmt.rate), ("CDC messages", 1, lambda v: f"{v:,.0f}/s"), ("LLC messages", 2, lambda v: f"{v:,.0f}/s"),
                 ("New connections", 3, lambda v: f"{v:,.0f}/s"), ("Fallbacks", 4, lambda v: f"{v:,.0f}/s"),
                 ("Events", 5, lambda v: f"{v:,.0f}/s")]  # fmt: skip
        out = Text()
        spark = max(10, min(60, self.app.size.width - 2 - 17 - 14 - 22))  # the terminal decides (the pane may not be laid out yet)
        out.append(f"last {p.n} s, one sample a second\n\n", style="dim")
        for label, i, show in names:
            series = p.series(i)
            now = series[-1] if series else 0.0
            peak = max(series) if series else 0.0
            out.append(f"{label:17}", style="bold")
            out.append(f"{show(now):>12}  ")
            out.append(f"{fmt.sparkline(series, spark):{spark}}", style="cyan")
            out.append(f"  peak {show(peak)}\n")
        out.append(f"\n{'Total moved':17}{fmt.human(model.bytes):>12}  (each byte once)\n")
        hs = list(model.handshakes)
        out.append("\nSMC-R handshake (CLC Proposal to CONFIRM)  ", style="bold")
        out.append(self._pcts(model, hs, fmt.ms) if hs else "no SMC-R connections yet")
        lat = list(model.latencies)
        out.append("\nRequest/response round trip              ", style="bold")
        out.append(self._pcts(model, lat, fmt.us) if lat else "not measured by this source")
        fos = [fo.duration_ms for fo in model.failovers if fo.duration_ms is not None and fo.conns and model.failover_counted(fo)]  # each once
        out.append("\nFailover (link down to connections moved)  ", style="bold")
        out.append(self._pcts(model, fos, fmt.ms) if fos else "none yet")
        dels = sum(1 for fo in model.failovers if not fo.conns and fo.duration_ms is not None and model.failover_counted(fo))
        if dels:
            out.append(f"\n{'':43}plus {dels} link deletion{'s' if dels != 1 else ''} that moved no connection (not counted)")
        self.query_one("#perf-body", Static).update(out)

    @staticmethod
    def _pcts(model: Model, values: list[float], show) -> str:
        p50, p90, p99 = (model.percentile(values, q) for q in (50, 90, 99))
        return f"p50 {show(p50)}  p90 {show(p90)}  p99 {show(p99)}  (n={len(values):,})"


def device_rows(model: Model) -> list[dict]:
    """Each host's RDMA devices as ``smcr device`` / ``smc_rnics`` list them, from snapshots:
    port state, PNET ID, MTU, engine, links on it, and the device's counters."""
    rows = []
    for name in sorted(model.hosts):
        h = model.hosts[name]
        known = {d.get("name"): d for d in h.devices if isinstance(d, dict)}
        for dev in list(known) + [d for d in h.rdma if d not in known]:
            d, r = known.get(dev, {}), h.rdma.get(dev, {})
            up = d.get("up", r.get("port_up"))
            links = [link for g in model.lgrs.values() if g.host == name for link in g.links.values() if link.device == dev]
            rows.append({"host": name, "dev": dev, "up": up, "pnetid": d.get("pnetid") or d.get("pnet_id") or r.get("pnetid") or "",
                         "mtu": d.get("mtu", r.get("mtu")), "engine": str(r.get("engine_detail") or r.get("engine") or ""),
                         "links": sum(1 for link in links if link.state == "LINK_ACTIVE"), "all_links": len(links), "c": r})  # fmt: skip
    return rows


MTU = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}  # ibverbs' enum ibv_mtu


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "-"


def device_cells(r: dict) -> list:
    c = r["c"]
    up = r["up"]
    bad = sum(v for k in ("icrc_errors", "bad_frames", "unknown_qp", "internal_errors") if isinstance(v := c.get(k), int))
    sec = [c.get("psn_out_of_window"), c.get("suspect_ignored")]
    mtu = r["mtu"]
    return [
        (r["host"], ""), (r["dev"], "bold"), ("ACTIVE" if up else "DOWN" if up is False else "?", "green" if up else "bold red"),
        (r["pnetid"] or "-", "" if r["pnetid"] else "dim"), (str(MTU.get(mtu, mtu)) if mtu else "-", ""),
        (f"{r['links']}/{r['all_links']}", ""), (r["engine"], "dim"),
        (_n(c.get("tx_frames")), ""), (_n(c.get("rx_frames")), ""), (_n(c.get("tx_dropped")), ""), (_n(c.get("rx_dropped")), ""),
        (_n(bad) if c else "-", "bold red" if bad else ""), (_n(sec[0]), "bold red" if sec[0] else ""), (_n(sec[1]), "bold red" if sec[1] else ""),
    ]  # fmt: skip


DEVICE_COLUMNS = [
    fmt.Column("host", "Host", 16), fmt.Column("dev", "IB-Dev", 20), fmt.Column("port", "Port", 6), fmt.Column("pnetid", "PNET ID", 16),
    fmt.Column("mtu", "MTU", 4, ">"), fmt.Column("links", "Links", 5, ">"), fmt.Column("engine", "Engine", 24),
    fmt.Column("tx", "TX frames", 12, ">"), fmt.Column("rx", "RX frames", 12, ">"), fmt.Column("txd", "TX drop", 8, ">"),
    fmt.Column("rxd", "RX drop", 8, ">"), fmt.Column("err", "Errors", 7, ">"), fmt.Column("psn", "PSN out-of-window", 17, ">"),
    fmt.Column("suspect", "Suspect", 8, ">"),
]  # fmt: skip


class DevicesPane(Pane, Vertical):
    """RDMA devices as ``smcr device`` and ``smc_rnics`` show them: port state, PNET ID,
    links, counters, and the soft RoCE engine's security counters (PSN out of window,
    suspect frames ignored) when the stack reports them."""

    tab, label, table_id = "devices", "Devices", "devices-table"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.gen = 0

    def compose(self) -> ComposeResult:
        yield Static(id="devices-summary")
        yield RowTable(DEVICE_COLUMNS, device_cells, key=lambda r: (r["host"], r["dev"]), version=lambda r: self.gen, id="devices-table", text_sort=True)

    def update_from(self, model: Model) -> None:
        self.gen += 1
        rows = device_rows(model)
        if self.filter:
            rows = [r for r in rows if self.filter in f"{r['host']} {r['dev']} {r['pnetid']} {'up' if r['up'] else 'down'}".lower()]
        self.query_one(RowTable).set_items(rows)
        down = sum(1 for r in rows if r["up"] is False)
        self.query_one("#devices-summary", Static).update(
            f"{len(rows)} devices" + (f", {down} with the port DOWN" if down else "")
            + ("" if rows else " (none known yet: devices come with the stacks' snapshots)")
            + "   PNET ID '-': none set (devices then pair by subnet)")  # fmt: skip


def _stat(stats: dict, *names: str):
    for n in names:
        if isinstance(stats.get(n), (int, float)) and not isinstance(stats.get(n), bool):
            return stats[n]
    return None


SECURITY_WORDS = ("psn", "suspect", "limit", "reject", "drop", "error", "window", "refused")


def stats_text(model: Model) -> Text:
    """``smcr stats``-style counters per host, from the stacks' snapshots and the events: SMC-R
    and fallback connections by role, handshake errors, connections per SMC-R version, RMB
    usage, link events; UEIDs and PNET IDs; the stack's security counters and limits."""
    out = Text()
    for name in sorted(model.hosts):
        h = model.hosts[name]
        st = h.stats
        out.append(f"{name}\n", style="bold")
        rows = [("SMC-R connections", _stat(st, "smc_client"), _stat(st, "smc_server")),
                ("fallbacks to TCP", _stat(st, "fallback_client"), _stat(st, "fallback_server"))]  # fmt: skip
        out.append(f"  {'':28}{'client':>10}{'server':>10}\n", style="dim")
        for label, cl, sv in rows:
            out.append(f"  {label:28}{_n(cl) if cl is not None else '-':>10}{_n(sv) if sv is not None else '-':>10}\n")
        for label, keys in (("handshake errors", ("handshake_errors",)), ("links added", ("links_added",)), ("links down", ("links_down",)),
                            ("failovers", ("failovers",))):  # fmt: skip
            v = _stat(st, *keys)
            out.append(f"  {label:28}{_n(v) if v is not None else '-':>10}\n", style="bold red" if label == "handshake errors" and v else "")
        versions: dict[int, int] = {}
        for c in model.conns.values():
            if c.host == name and c.mode == "SMCR" and c.closed is None:
                versions[c.version] = versions.get(c.version, 0) + 1
        out.append(f"  {'open SMC-R conns by version':28}" + ("  ".join(f"v{v}: {n}" for v, n in sorted(versions.items())) or "-") + "\n")
        n, size, fill = model.rmb_usage(name)
        out.append(f"  {'RMB usage':28}{n} RMBs, {fmt.human(size)}" + (f", {fill / size * 100:.1f}% filled" if size else "") + "\n")
        used = sorted({g.eid for g in model.lgrs.values() if g.host == name and g.eid})
        out.append(f"  {'UEIDs':28}{', '.join(h.ueids) if h.ueids else '-'}" + (f"  (in use by link groups: {', '.join(used)})" if used else "") + "\n")
        pnets = sorted({str(d.get("pnetid") or d.get("pnet_id")) for d in h.devices if isinstance(d, dict) and (d.get("pnetid") or d.get("pnet_id"))})
        out.append(f"  {'PNET IDs':28}{', '.join(pnets) if pnets else '- (none set)'}\n")
        sec = {}
        for _dev, c in h.rdma.items():
            for k in ("psn_out_of_window", "suspect_ignored", "icrc_errors", "bad_frames", "unknown_qp"):
                if isinstance(c.get(k), int):
                    sec[k] = sec.get(k, 0) + c[k]
        if sec:
            out.append(f"  {'security counters':28}" + "  ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sec.items()) + "\n",
                       style="bold red" if any(sec.values()) else "")  # fmt: skip
        for g in sorted((g for g in model.lgrs.values() if g.host == name), key=lambda g: g.id):
            for link in sorted(g.links.values(), key=lambda link: link.id):
                watch = {k: v for k, v in link.counters.items() if any(w in k for w in SECURITY_WORDS)}
                if watch:
                    counts = "  ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(watch.items()))
                    out.append(f"  {'link ' + g.id + '/' + str(link.id):28}" + counts + "\n", style="bold red" if any(watch.values()) else "")
        other = {k: v for k, v in st.items() if k not in {"smc_client", "smc_server", "fallback_client", "fallback_server", "handshake_errors",
                                                          "links_added", "links_down", "failovers"}}  # fmt: skip
        for k, v in sorted(h.extra.items()):
            if isinstance(v, dict) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
                other.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        if other:
            out.append(
                f"  {'other counters':28}" + "  ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in sorted(other.items())[:24]) + "\n",
                style="dim",
            )
        out.append("\n")
    if not model.hosts:
        out.append("no hosts yet\n")
    return out


class StatsPane(Pane, VerticalScroll):
    """``smcr stats`` as an operator reads it, per host, and the UEIDs and PNET IDs that decide
    whether two hosts can use SMC-R at all."""

    tab, label, filterable = "stats", "Stats", False

    def compose(self) -> ComposeResult:
        yield Static(id="stats-body")

    def update_from(self, model: Model) -> None:
        self.query_one("#stats-body", Static).update(stats_text(model))


VIEWS: tuple[type[Pane], ...] = (LinksPane, ConnsPane, EventsPane, FallbacksPane, PerfPane, DevicesPane, StatsPane)  # the tabs, in order
