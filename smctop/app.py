"""smctop: the live TUI where SMC-R fallback, failover and performance are debugged together.

    smctop                      the embedded demo (three hosts, traffic, a peer that declines)
    smctop --attach PATH        a running stack's control socket (repeat for several hosts)
    smctop --replay FILE        a recording (JSONL events, or an smc-trace pcapng capture)
    smctop --kernel             the Linux kernel's own SMC-R (--netns NAME: another namespace; repeat, or all)
    smctop --attach P --kernel  our stack and the kernel on this host side by side
    smctop ... --once [--json]  one snapshot as smcss/smcr print it (or one JSON document), then exit

The app polls its source ten times a second, feeds the model, and redraws the views once
per model sample (a second). Keys are in the footer and behind ``?``.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import io
import math
import os
import signal
import stat
import sys
import time
from functools import partial

from rich.console import Console
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.widgets import Footer, Input, TabbedContent, TabPane

from stack.events import Skipped

from .model import Model
from .record import Recorder, default_name, open_recorder
from .screens import ConnDetailScreen, DeclineScreen, HelpScreen, help_text
from .sources import LOAD_IN_BACKGROUND, AttachSource, CombinedSource, DemoSource, KernelTuiSource, ReplaySource, Source, SourceError, load_cost, load_events
from .views import VIEWS, ConnsPane, EventsPane, HeaderBar, Pane
from .widgets import RowTable

# the tabs, from the registry of views (smctop.views.VIEWS): id -> pane class
PANES: dict[str, type[Pane]] = {v.tab: v for v in VIEWS}
TABS = [(v.tab, f"{i} {v.label}") for i, v in enumerate(VIEWS, 1)]

# (action, keys as shown in help, what it does, the source capability it needs)
ACTIONS = [
    ("toggle_traffic", "t", "start / stop traffic", "traffic"),
    ("fail_link", "f", "fail a link (pull beta's first port in the demo; 'port' over a control socket)", "fail_link"),
    ("restore_link", "r", "restore the failed link", "restore_link"),
    ("decline", "d", "make the next connections fall back with a chosen reason", "decline"),
    ("pause", "p", "pause / resume the display (a replay stops its clock)", None),
    ("filter", "/", "filter the current view (Enter applies, Esc clears)", None),
    ("record", "w", "record events to a file (again: stop)", None),
    ("sort", "s", "sort connections: host, rate, fill, state, mode (or click a column's title)", None),
    ("sort_reverse", "S", "connections: reverse the order", None),
    ("closed", "c", "connections: show / hide closed ones (kept a few seconds)", None),
    ("listening", "a", "connections: show / hide LISTEN sockets (as smcss -a)", None),
    ("follow", "F", "events: follow the newest / stay", None),
    ("step", "n", "replay: one event further (pauses)", "replay"),
    ("seek(-10)", "[", "replay: 10 s back", "replay"),
    ("seek(10)", "]", "replay: 10 s forward", "replay"),
    ("help", "?", "this help", None),
    ("quit", "q", "quit", None),
]


class PriorityFooter(Footer):
    """The footer keeps what fits, in the bindings' order (the most important first), and
    leaves out what this source cannot do; it is drawn again when the width changes."""

    def __init__(self) -> None:
        super().__init__(compact=True, show_command_palette=True)
        self._fit_width = 0

    def compose(self):
        width = self.size.width or self.app.size.width
        used = 0
        keys = [w for w in super().compose()]
        palette = keys[-1:] if keys and getattr(keys[-1], "action", "") == "command_palette" else []
        out = []
        for w in keys[: len(keys) - len(palette)]:
            if getattr(w, "disabled", False):
                continue
            n = len(str(getattr(w, "key_display", ""))) + len(str(getattr(w, "description", ""))) + 3
            if used + n > width - (16 if palette else 0):
                break
            used += n
            out.append(w)
        self.styles.grid_size_columns = len(out) + len(palette)
        yield from out + palette

    def on_resize(self, event) -> None:
        if event.size.width != self._fit_width:
            self._fit_width = event.size.width
            self.refresh(recompose=True)


class SmctopApp(App):
    TITLE = "smctop"
    CSS_PATH = "smctop.tcss"
    BINDINGS = [  # in the footer's order: what fits at 80 columns first
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("f", "fail_link", "Fail link"),
        Binding("r", "restore_link", "Restore"),
        Binding("d", "decline", "Decline"),
        Binding("slash", "filter", "Filter"),
        Binding("t", "toggle_traffic", "Traffic"),
        Binding("n", "step", "Step"),
        Binding("left_square_bracket", "seek(-10)", "-10s"),
        Binding("right_square_bracket", "seek(10)", "+10s"),
        Binding("p", "pause", "Pause"),
        Binding("w", "record", "Record"),
        Binding("s", "sort", "Sort", show=False),
        Binding("S", "sort_reverse", "Reverse sort", show=False),
        Binding("c", "closed", "Closed", show=False),
        Binding("a", "listening", "Listening", show=False),
        Binding("F", "follow", "Follow", show=False),
        *(Binding(str(i + 1), f"show_tab('{tab}')", label, show=False) for i, (tab, label) in enumerate(TABS)),
    ]

    def __init__(self, source: Source, *, model: Model | None = None, poll_interval: float = 0.1,
                 record_dir: str = ".", record_path: str | None = None, quiet_gc: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.source = source
        self.model = model or Model()
        self.poll_interval = poll_interval
        self.record_dir = record_dir
        self.record_at_start = record_path
        self.recorder: Recorder | None = None
        self.paused = False
        self.status = "starting…"
        self._filter_said: tuple[str, str] | None = None  # (view, message) when the message line says a view's filter
        self.started = False
        self._loading = False  # a replay being read in the background
        self.frames = 0
        self._drawn = 0.0  # time.monotonic() of the last redraw
        self._finished = False  # a replay reached its end (and was drawn there)
        self._quiet_gc = quiet_gc  # see quiet_gc(): the smctop command asks for it

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with TabbedContent(initial="conns", id="tabs"):
            for (tab, title), view in zip(TABS, VIEWS):
                with TabPane(title, id=tab):
                    yield view(id=f"{tab}-pane")
        yield Input(placeholder="filter: words to match (Enter applies, Esc clears)", id="filter")
        yield PriorityFooter()

    async def on_mount(self) -> None:
        try:  # kill -USR2 <pid>: what every asyncio task of a stuck smctop waits for
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_tasks)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        try:
            await self.source.start()
        except (SourceError, OSError) as e:
            self.exit(return_code=1, message=f"smctop: cannot start the {self.source.label} source: {e}")
            return
        self.started = True
        self.status = self._watching()
        if getattr(self.source, "loading", False):
            self.status = "reading the recording: the replay begins when it is read"
        if self.source.label == "demo":  # the demo's story, on its first screen
            self.status = "demo: f pulls beta's port (failover), r restores, d forces a decline, ? help"
        if self.record_at_start:
            self._start_recording(self.record_at_start)
        self.set_interval(self.poll_interval, self.sync)
        self.sync(force=True)
        self.query_one("#conns-table", RowTable).focus()
        if self._quiet_gc:
            quiet_gc()

    async def on_unmount(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        if self.started:
            await self.source.stop()

    # ------------------------------------------------------------------ the loop

    def sync(self, force: bool = False) -> None:
        """Poll the source, feed the model, and redraw when a sample closed (or ``force``)."""
        if not self.started:
            return
        fatal = getattr(self.source, "fatal", None)  # a replay read in the background that could not be
        if fatal:
            self.exit(return_code=1, message=f"smctop: cannot start the {self.source.label} source: {fatal}")
            return
        if getattr(self.source, "loading", False):
            self._loading = True
            self._header()  # how far the reading is
            return
        if self._loading:  # read: the replay begins
            self._loading = False
            self.status = self._watching()
        events = self.source.poll(self.model)
        if self.recorder is not None and events:
            self.recorder.write(events)
        now = self.source.now()
        ticks = self.model.advance(now) if now is not None else 0
        while self.source.notices:
            self.status = self.source.notices.popleft()
        done = bool(getattr(self.source, "done", False))
        finished, self._finished = done and not self._finished, done
        if finished:
            self.model.finish()
            if isinstance(self.source, ReplaySource):  # where it ended (the header's first line says it too)
                self.status = f"the replay reached its end: {self.source.position()} ([ seeks back)"
        # a sample closing redraws; so do events that no sample closed for a second (a recording
        # shorter than a sample, a source that went quiet) and the end of a replay
        stale = bool(events) and time.monotonic() - self._drawn >= self.model.interval
        if (ticks or force or stale or finished) and not self.paused:
            self.redraw()
        elif ticks or force or finished:
            self._header()

    def redraw(self, everything: bool = False) -> None:
        """Update the view on screen (and the events view, which gathers what its filter
        matches as events arrive); the others are drawn when shown (``everything``: now)."""
        m = self.model
        self.frames += 1
        self._drawn = time.monotonic()
        active = self._active()
        for tab, pane in PANES.items():
            if everything or tab == active or pane.always:
                self.query_one(pane).update_from(m)
        if isinstance(self.screen, ConnDetailScreen):
            self.screen.update_from(m)
        self._header()

    def _header(self) -> None:
        flags = []
        if self.paused:
            flags.append("PAUSED")
        if self.recorder is not None:
            flags.append(f"REC {os.path.basename(self.recorder.path)} {self.recorder.count:,}")
        if "traffic" in self.source.can:
            flags.append("traffic on" if self.source.traffic_on else "traffic off")
        engine = self.source.engine()
        if engine:
            soft = engine in ("native", "python", "native+python")
            flags.append(f"soft RoCE ({engine}): a NIC emulated in software" if soft else f"engine {engine}")
        self.query_one(HeaderBar).show(self.model, self.source.describe(), flags, self.status)

    def _watching(self) -> str:
        """The message line's first words. A replay's position is not in them: the header's
        first line keeps it current, and a copy here stood at event 0 after the replay ended."""
        if isinstance(self.source, ReplaySource):
            return f"replay {self.source.path}: p pauses, n steps one event, [ and ] seek 10 s"
        return f"{self.source.describe()}: watching"

    def say(self, text: str, error: bool = False) -> None:
        self.status = text
        self._header()
        if error:
            self.notify(text, severity="error")

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        for name, _keys, _what, need in ACTIONS:
            if name.split("(")[0] == action and need is not None:
                return need in self.source.can
        return True

    async def _run(self, coro) -> None:
        try:
            self.say(await coro)
        except (SourceError, ValueError, OSError) as e:
            self.say(str(e), error=True)
        self.sync(force=True)

    async def action_toggle_traffic(self) -> None:
        await self._run(self.source.set_traffic(not self.source.traffic_on))

    async def action_fail_link(self) -> None:
        await self._run(self.source.fail_link())

    async def action_restore_link(self) -> None:
        await self._run(self.source.restore_link())

    def action_decline(self) -> None:
        def chosen(result) -> None:
            if result is not False:
                self.run_worker(self._run(self.source.decline(result)), exclusive=False)

        self.push_screen(DeclineScreen(), chosen)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = PANES.get(event.pane.id or "")
        if pane is not None and not self.paused and self.started:
            self.query_one(pane).update_from(self.model)
        said = self._filter_said
        if said is not None and said[1] == self.status and said[0] != event.pane.id:
            # the message line spoke of another view's filter: say this view's, or nothing
            shown = self._pane_filter()
            self.say(f"filter '{shown}' on {self._active()}" if shown else "")
            self._filter_said = (self._active(), self.status)

    def action_pause(self) -> None:
        self.paused = not self.paused
        if isinstance(self.source, ReplaySource):
            self.source.paused = self.paused
        if self.paused and self.started:  # the views not on screen stand still from here too
            for tab, pane in PANES.items():
                if tab != self._active():
                    self.query_one(pane).update_from(self.model)
        self.say("paused: the model keeps counting, the views stand still" if self.paused else "resumed")
        if not self.paused:
            self.redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self._pane_filter()
        box.focus()

    def _active(self) -> str:
        return self.query_one(TabbedContent).active

    def _pane_filter(self) -> str:
        pane = self._pane()
        return getattr(pane, "filter", "") if pane is not None else ""

    def _pane(self):
        cls = PANES.get(self._active())
        return self.query_one(cls) if cls is not None and cls.filterable else None

    def apply_filter(self, text: str) -> None:
        pane = self._pane()
        if pane is None:
            self.say(f"the {PANES[self._active()].label.lower()} view has nothing to filter")
            return
        pane.set_filter(text, self.model)
        pane.update_from(self.model)
        self.say(f"filter '{text}' on {self._active()}" if text else f"filter cleared on {self._active()}")
        self._filter_said = (self._active(), self.status)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.apply_filter(event.value.strip())
            self._close_filter()

    def _close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("shown")
        table = PANES[self._active()].table_id
        if table:
            self.query_one(f"#{table}", RowTable).focus()

    def on_key(self, event) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            box.value = ""
            self.apply_filter("")
            self._close_filter()
            event.stop()

    def action_record(self) -> None:
        if self.recorder is not None:
            rec, self.recorder = self.recorder, None
            rec.close()
            self.source.every_event(False)
            self.say(f"recorded {rec.count:,} events to {rec.path}")
            return
        self._start_recording(os.path.join(self.record_dir, default_name(time.strftime("%Y%m%d-%H%M%S"))))

    def _start_recording(self, path: str) -> None:
        try:
            self.recorder = open_recorder(path, self.source.stacks(), model=self.model)
        except OSError as e:
            self.say(f"cannot record: {e}", error=True)
            return
        self.source.every_event(True)  # a recording holds every event, not what the view needs of the data path
        self.say(f"recording to {path} (w stops)")

    def action_sort(self) -> None:
        pane = self.query_one(ConnsPane)
        self.say(f"connections sorted by {pane.cycle_sort()}")
        pane.update_from(self.model)

    def action_closed(self) -> None:
        pane = self.query_one(ConnsPane)
        pane.show_closed = not pane.show_closed
        pane.set_filter(pane.filter, self.model)
        pane.update_from(self.model)
        self.say("connections: closed ones shown" if pane.show_closed else "connections: closed ones hidden")

    def action_sort_reverse(self) -> None:
        pane = self.query_one(ConnsPane)
        self.say(f"connections sorted by {pane.toggle_reverse()}")
        pane.update_from(self.model)

    def get_system_commands(self, screen):
        """The command palette (ctrl+p): Textual's own commands and every smctop action this
        source can carry out, by the name the help gives it."""
        yield from super().get_system_commands(screen)
        for name, keys, what, need in ACTIONS:
            if name in ("help", "quit") or (need is not None and need not in self.source.can):
                continue
            yield SystemCommand(f"smctop: {what.split(' (')[0]}", f"key {keys}", partial(self.call_next, self.run_action, name))
        for i, (tab, label) in enumerate(TABS):
            yield SystemCommand(f"smctop: show {label.split(' ', 1)[1]}", f"key {i + 1}", partial(self.call_next, self.run_action, f"show_tab('{tab}')"))

    def action_listening(self) -> None:
        pane = self.query_one(ConnsPane)
        pane.show_listen = not pane.show_listen
        pane.set_filter(pane.filter, self.model)
        pane.update_from(self.model)
        self.say("connections: LISTEN sockets shown (as smcss -a)" if pane.show_listen else "connections: LISTEN sockets hidden")

    def action_follow(self) -> None:
        on = self.query_one(EventsPane).toggle_follow()
        self.say("events: following the newest" if on else "events: not following")

    def action_step(self) -> None:
        src = self.source
        if isinstance(src, ReplaySource):
            self.paused = True
            e = src.step(self.model)
            self.say(f"step: {e.kind} {e.host} at {e.t - (self.model.t0 or e.t):+.3f} s" if e else "step: at the end of the recording")
            now = src.now()
            if now is not None:
                self.model.advance(now)
            self.redraw(everything=True)

    def action_seek(self, seconds: float) -> None:
        src = self.source
        if isinstance(src, ReplaySource):
            pos = src.seek(seconds)
            self.sync(force=True)
            if self.paused:
                self.redraw(everything=True)
            self.say(f"replay at {pos:.1f} s")

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        table = PANES[tab].table_id
        if table:
            self.query_one(f"#{table}", RowTable).focus()

    def action_help(self) -> None:
        rows = []
        for _name, keys, what, need in ACTIONS:
            rows.append((keys, what, need is None or need in self.source.can))
        rows.append((f"1-{len(VIEWS)}", "switch view", True))
        rows.append(("Enter", "connection details (from Connections)", True))
        self.push_screen(HelpScreen(help_text(rows, self.source.describe())))

    def on_row_table_selected(self, message: RowTable.Selected) -> None:
        if message.table.id == "conns-table" and not isinstance(message.item, dict):  # (not a LISTEN row)
            self.push_screen(ConnDetailScreen(self.model, message.item.key))

    # ------------------------------------------------------------------ screenshots

    def screen_text(self) -> str:
        """The current screen as plain text (what a terminal shows, without colours)."""
        width, height = self.size
        console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                          record=True, legacy_windows=False, safe_box=False)  # fmt: skip
        console.print(self.screen._compositor.render_update(full=True, screen_stack=self._background_screens))
        return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def quiet_gc(full_every: int = 100) -> None:
    """Keep the cyclic garbage collector's full passes out of the frames. Every second brings
    thousands of events the model keeps for a while, so with Python's defaults the collector
    walks every object of the process about once a second (20-90 ms with 10,000 connections).
    What exists once the app runs (modules, widgets, the demo's stacks) is frozen out of those
    passes, and a full pass waits for ``full_every`` middle ones instead of 10; the young
    generations are collected as before. For the ``smctop`` command, not for an embedding
    process (or tests) whose objects it would freeze."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_every)


# ---------------------------------------------------------------------- the command


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    ap = argparse.ArgumentParser(prog="smctop", description="Live SMC-R link groups, links, connections, events, fallbacks and "
                                 "performance. Without --attach or --replay it runs the embedded demo.")  # fmt: skip
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--attach", metavar="PATH", action="append", help="a stack's control socket (repeat for several hosts)")
    src.add_argument(
        "--replay",
        metavar="FILE",
        help="play a recording: JSONL events or an smc-trace pcapng capture (or any pcap or pcapng; gzip, zstd or LZ4 compressed too)",
    )
    ap.add_argument(
        "--kernel", action="store_true", help="the Linux kernel's own SMC-R (smc_diag, SMC_GEN_NETLINK; tracepoints as root); with --attach, both side by side"
    )
    ap.add_argument("--netns", metavar="NAME", action="append",
                    help="--kernel: a network namespace (ip netns name or /proc/PID/ns/net; needs root); repeat for several, "
                         "'all' for this one and every one in /var/run/netns (each under its own host name, host/NAME)")  # fmt: skip
    ap.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot as smcss -a/-d/-R, smcr linkgroup, smcr device and smcr stats "
        "print, and exit (replay: its end; demo: after --once-after seconds)",
    )
    ap.add_argument("--json", action="store_true", help="--once: one JSON document (connections, link_groups, links, devices, stats)")
    ap.add_argument("--from-raw", metavar="DIR", help="--kernel --once: render the replies `python -m smckernel --save-raw` wrote (another host's)")
    ap.add_argument("--once-after", type=float, default=3.0, metavar="SECONDS", help="--once with the demo: run this long first (default 3)")
    ap.add_argument("--speed", type=float, default=1.0, help="replay speed (default 1.0: real time)")
    ap.add_argument("--paused", action="store_true", help="start a replay paused")
    ap.add_argument("--no-traffic", action="store_true", help="demo: start without traffic (t starts it)")
    ap.add_argument("--record", metavar="FILE", help="record events to FILE from the start (w toggles recording)")
    ap.add_argument("--record-dir", metavar="DIR", default=".", help="where w puts recordings (default: here)")
    ap.add_argument("--prometheus", metavar="ADDR:PORT", help="serve Prometheus metrics of the model on ADDR:PORT (e.g. 127.0.0.1:9717)")
    ap.add_argument("--every-event", action="store_true",
                    help="--attach: every event of the data path (cursor moves, CDCs, RDMA WRITEs, RMB fill), not coalesced "
                         f"per connection every {AttachSource.COALESCE:g} s (recording with w asks for every event anyway)")  # fmt: skip
    ap.add_argument("--headless", action="store_true", help="no TUI: feed the model and serve --prometheus until Ctrl-C or SIGTERM")
    return ap.parse_args(argv), ap


def build_source(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Source:
    if args.kernel and args.replay:
        ap.error("--kernel goes alone or with --attach, not with --replay")
    if not (math.isfinite(args.speed) and 0 < args.speed <= 1e6):
        ap.error(f"--speed {args.speed}: a finite number above 0 (at most 1e6)")
    if not os.path.isdir(args.record_dir):
        ap.error(f"--record-dir {args.record_dir}: no such folder")
    if args.record is not None:
        folder = os.path.dirname(os.path.abspath(args.record)) if args.record else ""
        if not args.record or os.path.isdir(args.record) or not os.path.isdir(folder):
            ap.error(f"--record {args.record!r}: give a file in a folder that exists")
    if args.replay is not None and not args.replay:
        ap.error("--replay '': give a recording (JSONL events or an smc-trace pcapng capture)")
    # options of other sources are refused, not ignored: an operator who gave one expected it to act
    if args.no_traffic and (args.replay or args.attach or args.kernel):
        ap.error("--no-traffic: the demo's traffic; a replay, --attach or --kernel has none of its own")
    if args.every_event and not args.attach:
        ap.error("--every-event goes with --attach (a replay plays every event its file has)")
    if (args.paused or args.speed != 1.0) and not args.replay:
        ap.error(f"{'--paused' if args.paused else '--speed'} goes with --replay")
    if args.replay:
        skipped = Skipped()
        try:
            if not getattr(args, "once", False) and load_cost(args.replay) >= LOAD_IN_BACKGROUND:
                src = ReplaySource(args.replay, speed=args.speed, skipped=skipped)  # read on a thread with the screen up
                src.paused = args.paused
                return src
            events = load_events(args.replay, skipped)
        except SourceError as e:
            ap.error(str(e))
        if not events:
            ap.error(f"{args.replay}: no events to replay" + (f" ({skipped.summary()})" if skipped else ""))
        src = ReplaySource(args.replay, speed=args.speed, events=events, skipped=skipped)
        if skipped:
            src.notices.append(f"{args.replay}: {skipped.summary()}")
        src.paused = args.paused
        return src
    if args.netns and not args.kernel:
        ap.error("--netns goes with --kernel")
    if args.kernel and not args.attach:
        return kernel_source(args.netns, ap)
    if args.attach:
        for path in args.attach:
            try:
                if not stat.S_ISSOCK(os.stat(path).st_mode):
                    ap.error(f"--attach {path}: not a unix socket")
            except (OSError, ValueError) as e:  # ValueError: a NUL in the path
                ap.error(f"--attach {path!r}: {getattr(e, 'strerror', None) or e}")
        if args.kernel:  # our stack and the kernel on this host: a connection's two ends side by side
            kern = kernel_source(args.netns, ap)
            return CombinedSource([AttachSource(args.attach, every_event=args.every_event), *(kern.parts if isinstance(kern, CombinedSource) else [kern])])
        return AttachSource(args.attach, every_event=args.every_event)
    return DemoSource(traffic=not args.no_traffic)


def kernel_source(netns: list[str] | None, ap: argparse.ArgumentParser) -> Source:
    """The kernel of each namespace ``--netns`` names (none: this one; ``all``: every one),
    one KernelTuiSource each, combined when there are several; a namespace that is not
    there is a usage error that names it."""
    from smckernel.kio import KernelUnavailable, resolve_netns
    from smckernel.source import hosts_for

    try:
        namespaces = resolve_netns(netns)
    except KernelUnavailable as e:
        ap.error(f"--netns: {e.strerror}")
    if len(namespaces) == 1:
        return KernelTuiSource(namespaces[0])
    return CombinedSource([KernelTuiSource(ns, host=h, trace_tag=i) for i, (ns, h) in enumerate(zip(namespaces, hosts_for(namespaces)))])


def dump_tasks() -> None:
    """Every asyncio task and where it waits, to the real stderr (the TUI owns stdout)."""
    out = sys.__stderr__
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=out)
        task.print_stack(limit=12, file=out)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: where a stuck smctop is stuck
    except (io.UnsupportedOperation, ValueError, RuntimeError):
        pass  # stderr is not a file (a test harness)
    args, ap = parse_args(argv)
    if args.once or args.json or args.from_raw:
        ignored = [name for name, given in (("--record", args.record), ("--prometheus", args.prometheus), ("--headless", args.headless)) if given]
        if ignored:
            ap.error(f"{', '.join(ignored)}: not with --once, which prints one snapshot and exits")
        from .once import run_once

        return run_once(args, ap, build_source)
    source = build_source(args, ap)
    exporter = None
    if args.prometheus or args.headless:
        from . import prometheus

        exporter = prometheus.start(args, ap, source)  # listening already: a bad ADDR:PORT or a port in use ends here
        if args.headless:
            return prometheus.run_headless(args, source, exporter)
    app = SmctopApp(source, model=exporter.model if exporter else None, record_dir=args.record_dir, record_path=args.record, quiet_gc=True)
    if exporter is not None:
        prometheus.serve_app(exporter, app)
    if isinstance(source, ReplaySource) and source.paused:
        app.paused = True
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
