"""Screens pushed over the main one: a connection's details, the help, and the choice of a
decline reason."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from stack.wire import codes

from . import format as fmt
from .model import Model


class ConnDetailScreen(Screen):
    """One connection: cursors and fill over time, its state timeline, its CLC and CDC
    messages, and the LLC messages of its link group."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("q", "app.pop_screen", "Back", show=False)]

    def __init__(self, model: Model, key: tuple[str, int]) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="detail-body")
        yield Footer()

    def on_mount(self) -> None:
        self.model.watch(self.key)
        self.update_from(self.model)

    def on_unmount(self) -> None:
        if self.model.watched == self.key:
            self.model.watch(None)

    def update_from(self, model: Model) -> None:
        self.query_one("#detail-body", Static).update(render_detail(model, self.key))


def render_detail(model: Model, key: tuple[str, int]) -> Text:
    c = model.conns.get(key)
    out = Text()
    if c is None:
        out.append(f"{key[0]} connection {key[1]} is gone (closed and forgotten)", style="bold")
        return out
    t0 = model.t0 or 0.0
    out.append(f"{c.host} connection {c.id}", style="bold")
    out.append(f"  {c.role} {c.local} -> {c.peer}  ")
    out.append(c.state, style="bold cyan")
    out.append("  ")
    out.append(c.mode + (f" v{c.version}" if c.mode == "SMCR" else ""), style="bold green" if c.mode == "SMCR" else "bold yellow")
    if c.reason:
        out.append(f"  fallback {fmt.reason(c.reason)} ({fmt.reason_meaning(c.reason)})", style="yellow")
    if c.peer_diagnosis:
        out.append(f"  peer diagnosis {fmt.reason(c.peer_diagnosis)}", style="yellow")
    out.append("\n")
    out.append(f"LG-ID {c.lgr or '-'}  link {c.link if c.link is not None else '-'}  token {c.token:08x}  "
               f"handshake {fmt.ms(c.handshake_ms)}  "
               f"opened {c.opened - t0:+.3f} s" + (f"  closed {c.closed - t0:+.3f} s" if c.closed is not None else "") + "\n")  # fmt: skip
    bar, spec = fmt.fill_bar(c.fill_ratio, 20)
    out.append(f"RMB {fmt.size_k(c.rmb_size)} (peer {fmt.size_k(c.peer_rmb_size)})  fill ")
    out.append(bar, style=spec)
    out.append(f"  {c.fill:,} bytes to receive  write blocked {'yes' if c.write_blocked else 'no'}\n")
    out.append(f"sent {fmt.human(c.bytes_sent)}  received {fmt.human(c.bytes_received)}  rate {fmt.rate(c.rate)}"
               + (f"  error {c.error}" if c.error else "") + "\n")  # fmt: skip
    out.append(f"cursors  rxprod {c.rx_prod or '-'}  rxcons {c.rx_cons}  txprod {c.tx_prod}  txcons {c.tx_cons}  "
               f"txsent {c.tx_sent}  txfin {c.tx_fin}\n")  # fmt: skip
    if c.mode == "TCP" or c.error:
        out.append("\nwhy not SMC-R\n", style="bold")
        for line in diagnose(model, c):
            out.append(f"  {line}\n", style="yellow")
    out.append("\nhistory (one sample a second)\n", style="bold")
    if c.hist is not None and c.hist.n:
        for label, i, top in (("rate", 0, None), ("RMB fill", 1, float(c.rmb_size or 1)), ("rxprod position", 2, float(c.rmb_size or 1)),
                              ("txprod position", 3, float(c.peer_rmb_size or 1))):  # fmt: skip
            series = c.hist.series(i)
            out.append(f"  {label:16}")
            out.append(fmt.sparkline(series, 60, top), style="cyan")
            last = series[-1]
            out.append(f"  {fmt.rate(last) if i == 0 else f'{last:,.0f}'}\n")
    else:
        out.append("  (no samples yet)\n")
    out.append("\nstate timeline\n", style="bold")
    for t, old, new, cause in c.states or []:
        out.append(f"  {t - t0:+10.3f}  {old} -> {new}  ({cause})\n")
    if not c.states:
        out.append("  (no state changes seen)\n")
    out.append(f"\nCLC and CDC messages (last {len(c.log)})\n", style="bold")
    for t, kind, _dir, text in list(c.log)[-40:]:
        out.append(f"  {t - t0:+10.3f}  {text}\n", style="green" if kind == "clc.msg" else "")
    g = model.lgrs.get((c.host, c.lgr)) if c.lgr else None
    if g is not None:
        out.append(f"\nLLC messages of link group {g.id} ({g.type}{', Crit' if g.crit else ''})\n", style="bold")
        for t, link, _dir, text in list(g.llc_log)[-20:]:
            out.append(f"  {t - t0:+10.3f}  link {link} {text}\n", style="blue")
        if not g.llc_log:
            out.append("  (none seen)\n")
    return out


def diagnose(model: Model, c) -> list[str]:
    """smc_chk's answer for one connection, from what the events said: who declined and with
    what, what the other end saw (when it is watched too), the CLC messages, where to look."""
    from .model import PEER_DECLINE_CLASS
    from .views import DIAGNOSIS_HINTS

    out = []
    peer = c.peer_end
    if c.reason and (c.reason & 0xFF000000) == PEER_DECLINE_CLASS:
        who = f"{peer.host} ({peer.role})" if peer is not None else f"the peer {c.peer}"
        cause = c.peer_diagnosis or (peer.reason if peer is not None else 0)
        out.append(f"{who} declined" + (f" with {fmt.reason(cause)}: {fmt.reason_meaning(cause)}" if cause else " (no diagnosis sent)"))
    elif c.reason:
        cause = c.reason
        out.append(f"{c.host} ({c.role}) decided: {fmt.reason(cause)}: {fmt.reason_meaning(cause)}")
    else:
        cause = 0
        out.append("the connection did not ask for SMC (plain TCP)" if c.mode == "TCP" else f"error: {c.error}")
    if peer is not None and peer.reason:
        out.append(f"the other end ({peer.host}, {peer.role}) says {fmt.reason(peer.reason)}"
                   + (f", peer diagnosis {fmt.reason(peer.peer_diagnosis)}" if peer.peer_diagnosis else ""))  # fmt: skip
    clc = [text for _t, kind, _d, text in list(c.log) if kind == "clc.msg"]
    if peer is not None:
        clc += [f"{peer.host}: {text}" for _t, kind, _d, text in list(peer.log) if kind == "clc.msg"]
    if clc:
        out.append("CLC: " + "; ".join(clc[:6]))
    hint = DIAGNOSIS_HINTS.get(cause)
    if hint:
        out.append(f"check: {hint}")
    return out


class HelpScreen(ModalScreen):
    """Every key, grouped; what the source cannot do is marked."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Close"), Binding("question_mark", "app.pop_screen", "Close", show=False),
                Binding("q", "app.pop_screen", "Close", show=False)]  # fmt: skip

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    BINDINGS = BINDINGS + [Binding("down", "scroll(1)", "Down", show=False), Binding("up", "scroll(-1)", "Up", show=False),
                           Binding("pagedown", "scroll(10)", "Page down", show=False), Binding("pageup", "scroll(-10)", "Page up", show=False)]  # fmt: skip

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-scroll"):
            yield Static(self.text, id="help-body")

    def action_scroll(self, lines: int) -> None:
        self.query_one("#help-scroll", VerticalScroll).scroll_relative(y=lines, animate=False)


def help_text(bindings: list[tuple[str, str, bool]], source: str) -> str:
    """``bindings``: (keys, what it does, available with this source)."""
    lines = [f"smctop — keys (source: {source})", ""]
    for keys, what, ok in bindings:
        lines.append(f"  {keys:12} {what}" + ("" if ok else "   (not with this source)"))
    lines += ["", "Views: 1 link groups and links (smcr linkgroup link-show), 2 connections and LISTEN sockets (smcss -a -d -R),",
              "       3 events, 4 fallback causes and why no SMC-R (smcr stats -d, smc_chk), 5 performance,",
              "       6 devices (smcr device, smc_rnics), 7 counters, UEIDs, PNET IDs (smcr stats).",
              "ctrl+p: every action by name. Up/Down scroll this help; Esc or ? closes it."]  # fmt: skip
    return "\n".join(lines)


class DeclineScreen(ModalScreen):
    """Pick the reason the next connections will fall back with (or none)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    OFF = "off"

    def compose(self) -> ComposeResult:
        options = [Option("off — accept SMC-R again (gamma keeps its DIFFPREFIX in the demo)", id=self.OFF)]
        options += [Option(f"{code}  {code.meaning}", id=str(code.value)) for code in codes.DECLINE_REASONS]
        with Vertical():
            yield Static(" Make the next connections fall back with:", classes="title")
            yield OptionList(*options, id="decline-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id
        self.dismiss(None if oid == self.OFF else int(oid))

    def action_cancel(self) -> None:
        self.dismiss(False)
