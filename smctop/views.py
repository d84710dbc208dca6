"""The main screen's views: the header, and one pane per tab (link groups and links,
connections, events, fallbacks, performance). Each pane reads the model in ``update_from``;
none keeps state of its own beyond what it shows (order, filter, follow).

``VIEWS`` is the registry the app is built from: its tabs (in order, keys 1-9), what each
tab composes, which table takes the focus, which panes filter and which are updated even
when not on screen. Adding a view is writing its pane class (``tab``, ``label``, ``table_id``,
``update_from``, ``set_filter``) and listing it there. The styles are in smctop.tcss."""

from __future__ import annotations

from operator import attrgetter

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from . import format as fmt
from .model import Model
from .widgets import RowTable


class HeaderBar(Static):

    def show(self, model: Model, source: str, flags: list[str], status: str) -> None:
        t = model.totals()
        line1 = Text()
        line1.append("smctop", style="bold")
        line1.append(f"  {source}  hosts {' '.join(t['hosts']) or '-'}  {t['elapsed']:.0f} s")
        for flag in flags:
            line1.append("  ")
            line1.append(f" {flag} ", style="bold reverse red" if flag.startswith(("PAUSED", "REC")) else "bold reverse")
        fb = t["fallback_ratio"] * 100
        line2 = Text.assemble(
            ("conns ", "dim"), (f"{t['conns']}", "bold"), f" (SMCR {t['smcr']}, TCP {t['tcp']})",
            ("  LGs ", "dim"), f"{t['lgrs']}", (f" Crit {t['crit']}", "bold red" if t["crit"] else "dim"),
            ("  links ", "dim"), f"{t['links_active']}/{t['links']} active",
            ("  ", ""), (fmt.rate(t["rate"]), "bold"), ("  CDC ", "dim"), f"{t['cdc_rate']:,.0f}/s",
            ("  events ", "dim"), f"{t['event_rate']:,.0f}/s",
            ("  fallback ratio ", "dim"), (f"{fb:.1f}%", "bold yellow" if fb else ""), f" ({t['fallbacks']:,})",
            ("  failovers ", "dim"), f"{t['failovers']}",
            *((("  dropped ", "dim"), (f"{t['dropped']:,}", "bold red")) if t["dropped"] else ()),
        )  # fmt: skip
        self.update(Text("\n").join([line1, line2, Text(status, style="italic")]))


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
                       version=lambda r: self.gen, id="links-table")  # fmt: skip
        yield Static(id="failovers")

    def update_from(self, model: Model) -> None:
        self.gen += 1
        rows = model.link_rows()
        if self.filter:
            rows = [r for r in rows if self.filter in " ".join(t for t, _ in fmt.link_cells(r)).lower()]
        self.query_one(RowTable).set_items(rows)
        fos = list(model.failovers)[-8:]
        text = "failovers:\n" + ("\n".join(fmt.failover_line(fo, model.t0) for fo in fos) if fos else "  none yet")
        self.query_one("#failovers", Static).update(text)


SORTS = {
    "host": (attrgetter("key"), False),  # (host, id)
    "rate": (lambda c: c.rate, True),
    "fill": (lambda c: c.fill_ratio, True),
    "state": (lambda c: (c.state, c.host, c.id), False),
    "mode": (lambda c: (c.mode, c.reason, c.host, c.id), False),
}


class ConnsPane(Pane, Vertical):
    """Connections as ``smcss -d -R`` shows them, plus fill bars and rates. Rows update in
    place: only connections that changed are re-rendered, and only when on screen."""

    tab, label, table_id = "conns", "Connections", "conns-table"


    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.sort = "host"
        self.show_closed = False
        self._stamp: tuple = ()
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield Static(id="conns-summary")
        yield RowTable(fmt.CONN_COLUMNS, fmt.conn_cells, key=attrgetter("key"), version=attrgetter("change_no"), id="conns-table")

    @property
    def table(self) -> RowTable:
        return self.query_one("#conns-table", RowTable)

    def set_filter(self, text: str, model: Model | None = None) -> None:
        self.filter = text.lower()
        self._dirty = True

    def cycle_sort(self) -> str:
        names = list(SORTS)
        self.sort = names[(names.index(self.sort) + 1) % len(names)]
        self._dirty = True
        return self.sort

    def update_from(self, model: Model) -> None:
        key, reverse = SORTS[self.sort]
        dynamic = self.sort in ("rate", "fill")
        stamp = (model.epoch, model.conns_added, model.conns_removed, model.conns_closed if not self.show_closed else 0)
        if self._dirty or dynamic or stamp != self._stamp:  # rows came or went: order them again
            conns = model.conns.values()
            if not self.show_closed:
                conns = [c for c in conns if c.closed is None]
            if self.filter:
                conns = [c for c in conns if self.filter in fmt.conn_search_text(c)]
            self._stamp = stamp
            self._dirty = False
            self.table.set_items(sorted(conns, key=key, reverse=reverse))
        else:  # the same rows: those on screen whose connection changed are drawn again
            self.table.refresh()
        n = len(self.table.items)
        if self.filter or self.show_closed:
            smc = sum(1 for c in self.table.items if c.mode == "SMCR")
        else:  # the rows are the open connections: the model counts them
            smc = model.totals()["smcr"]
        self.query_one("#conns-summary", Static).update(
            f"{n} connections ({smc} SMCR, {n - smc} other{', closed ones too' if self.show_closed else ''})  sorted by {self.sort}"
            + (f"  filter '{self.filter}'" if self.filter else "") + "   Enter: details  s: sort  c: closed")  # fmt: skip


class EventsPane(Pane, Vertical):
    """The event stream: newest at the bottom, followed unless the cursor moves up (F)."""

    tab, label, table_id, always = "events", "Events", "events-table", True

    MAX_ROWS = 5000

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.seq = 0
        self.rows: list = []
        self.t0: float | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="events-summary")
        yield RowTable(fmt.EVENT_COLUMNS, lambda e: fmt.event_cells(e, self.t0), key=id, id="events-table")

    def on_mount(self) -> None:
        self.table.follow = True

    @property
    def table(self) -> RowTable:
        return self.query_one("#events-table", RowTable)

    def set_filter(self, text: str, model: Model) -> None:
        self.filter = text.lower()
        self.rows = []
        self.seq = max(0, model.seq - len(model.events))
        self.update_from(model)

    def toggle_follow(self) -> bool:
        t = self.table
        t.follow = not t.follow
        if t.follow and t.items:
            t.move_to(len(t.items) - 1)
            t.follow = True
        return t.follow

    def update_from(self, model: Model) -> None:
        self.t0 = model.t0
        new = model.events_since(self.seq)
        self.seq = model.seq
        if self.filter:
            words = self.filter.split()
            new = [e for e in new if all(w in fmt.event_search_text(e) for w in words)]
        if new:
            rows = self.rows + new if len(new) < self.MAX_ROWS else new[-self.MAX_ROWS :]
            if len(rows) > self.MAX_ROWS:
                rows = rows[-self.MAX_ROWS :]
            self.rows = rows
            self.table.set_items(rows)
        self.query_one("#events-summary", Static).update(
            f"{len(self.rows):,} events shown of {model.seq:,}" + (f"  filter '{self.filter}'" if self.filter else "")
            + ("  following" if self.table.follow else "  not following (F follows)"))  # fmt: skip


class FallbacksPane(Pane, Vertical):
    """Fallback reasons with counts, per host and role, as ``smcr stats -d`` lists them."""

    tab, label, table_id = "fallbacks", "Fallbacks", "fallbacks-table"


    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.gen = 0

    def compose(self) -> ComposeResult:
        yield Static(id="fallbacks-summary")
        yield RowTable(fmt.FALLBACK_COLUMNS, fmt.fallback_cells, key=lambda r: (r["host"], r["role"], r["reason"]),
                       version=lambda r: self.gen, id="fallbacks-table")  # fmt: skip

    def update_from(self, model: Model) -> None:
        self.gen += 1
        rows = model.fallback_rows()
        total = sum(r["count"] for r in rows) or 1
        for r in rows:
            r["share"] = r["count"] / total
            r["ago"] = fmt.ago(r["last"], model.now)
        if self.filter:
            rows = [r for r in rows if self.filter in f"{r['host']} {r['role']} {r['text']}".lower()]
        self.query_one(RowTable).set_items(rows)
        t = model.totals()
        decided = model.smc_conns + model.tcp_conns
        self.query_one("#fallbacks-summary", Static).update(
            f"fallback ratio {t['fallback_ratio'] * 100:.1f}%: {model.tcp_conns:,} of {decided:,} connections fell back to TCP "
            f"(SMC-R {model.smc_conns:,})\nreasons as smc-tools prints them (hex and name); the peer's diagnosis follows a '/' in Connections")  # fmt: skip


class PerfPane(Pane, VerticalScroll):
    """Throughput, message rates, connection set-up, handshake and request/response latency."""

    tab, label, filterable = "perf", "Performance", False


    def compose(self) -> ComposeResult:
        yield Static(id="perf-body")

    def update_from(self, model: Model) -> None:
        p = model.perf
        names = [("Throughput", 0, fmt.rate), ("CDC messages", 1, lambda v: f"{v:,.0f}/s"), ("LLC messages", 2, lambda v: f"{v:,.0f}/s"),
                 ("New connections", 3, lambda v: f"{v:,.0f}/s"), ("Fallbacks", 4, lambda v: f"{v:,.0f}/s"),
                 ("Events", 5, lambda v: f"{v:,.0f}/s")]  # fmt: skip
        out = Text()
        out.append(f"last {p.n} s, one sample a second\n\n", style="dim")
        for label, i, show in names:
            series = p.series(i)
            now = series[-1] if series else 0.0
            peak = max(series) if series else 0.0
            out.append(f"{label:17}", style="bold")
            out.append(f"{show(now):>12}  ")
            out.append(f"{fmt.sparkline(series, 60):60}", style="cyan")
            out.append(f"  peak {show(peak)}\n")
        out.append(f"\n{'Total moved':17}{fmt.human(model.bytes):>12}\n")
        hs = list(model.handshakes)
        out.append("\nSMC-R handshake (CLC Proposal to CONFIRM)  ", style="bold")
        out.append(self._pcts(model, hs, "ms") if hs else "no SMC-R connections yet")
        lat = list(model.latencies)
        out.append("\nRequest/response round trip              ", style="bold")
        out.append(self._pcts(model, lat, "us") if lat else "not measured by this source")
        fos = [fo.duration_ms for fo in model.failovers if fo.duration_ms is not None]
        out.append("\nFailover (link down to connections moved)  ", style="bold")
        out.append(self._pcts(model, fos, "ms") if fos else "none yet")
        self.query_one("#perf-body", Static).update(out)

    @staticmethod
    def _pcts(model: Model, values: list[float], unit: str) -> str:
        p50, p90, p99 = (model.percentile(values, q) for q in (50, 90, 99))
        return f"p50 {p50:,.1f} {unit}  p90 {p90:,.1f} {unit}  p99 {p99:,.1f} {unit}  (n={len(values):,})"


VIEWS: tuple[type[Pane], ...] = (LinksPane, ConnsPane, EventsPane, FallbacksPane, PerfPane)  # the tabs, in order
