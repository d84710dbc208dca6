"""smctop with 10,000 connections (rows: 5,000 pairs seen from both ends) that all move every second: the cost of one frame (feed
that second's events into the model, close the model's sample, update the views, paint the
screen) and the memory the model holds, as ratios against an empty model measured in the
same run, headless (Textual's test driver), with the synthetic source.

    .venv/bin/python bench/bench_tui.py [--conns 10000] [--frames 20]

Also: the same row updates through Textual's DataTable.update_cell (what the connections
view does not use), and the per-event cost of the full message mix (CDC, RDMA WRITE,
cursors, RMB: six events per connection and second).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc

from smctop.app import SmctopApp
from smctop.model import Model
from smctop.sources import SyntheticSource, feed_timed
from smctop.synthetic import SyntheticStack

SIZE = (200, 50)


async def frames(conns: int, n: int) -> tuple[list[float], list[float], list[float], int]:
    """Frame times (s) of the app with ``conns`` connections, the parts of them that fed the
    events and closed the sample, and how much the model grows over ``n`` more seconds (bytes)."""
    src = SyntheticSource(SyntheticStack(conns, fallbacks=0, full=False))
    app = SmctopApp(src, poll_interval=3600)
    app.animation_level = "none"
    times, feeds, samples = [], [], []
    async with app.run_test(size=SIZE) as pilot:
        src.advance(1.0)
        app.sync(force=True)
        await pilot.pause()
        for _ in range(n):
            src.advance(1.0)  # generating the synthetic events is not part of the frame
            gc.collect()
            t0 = time.perf_counter()
            app.model.advance(src.pending[0].t) if src.pending else None  # close the last second's sample
            ts = time.perf_counter()
            feed_timed(app.model, src.pending)  # what the source's polls feed over the second
            src.pending = []
            t1 = time.perf_counter()
            app.sync(force=True)  # update the views
            app.screen._compositor.render_update(full=True)  # paint the whole screen
            times.append(time.perf_counter() - t0)
            feeds.append(t1 - ts)
            samples.append(ts - t0)
            await pilot.pause()
        table = app.query_one("#conns-table")
        assert len(table.items) == 2 * conns and all(c.rate > 0 for c in table.items), (len(table.items), conns)
        mem = model_memory(app.model, src.stack, n)
    return times, feeds, samples, mem


def model_memory(model: Model, stack: SyntheticStack, n: int) -> int:
    """What the model holds: bytes allocated while it runs ``n`` more seconds, plus its size now."""
    model.events_kept = 0  # the recent-event log has its own bound (events_kept)
    t = model.now or 0.0
    feed_timed(model, stack.step(t + 1))
    model.advance(t + 1.01)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(1, n):
        feed_timed(model, stack.step(t + i + 1))
        model.advance(t + i + 1.01)
        model.take_conn_changes()
    model.events.clear()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown


def model_size(conns: int) -> int:
    gc.collect()
    tracemalloc.start()
    m, s = Model(), SyntheticStack(conns, fallbacks=0, full=False)
    feed_timed(m, s.setup(0.0))
    for t in range(1, 61):  # a minute: every history ring full
        feed_timed(m, s.step(float(t)))
        m.advance(t + 0.01)
        m.take_conn_changes()
    m.events.clear()  # the recent-event log is bounded separately (events_kept)
    gc.collect()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del m, s
    return size


async def datatable_updates(rows: int) -> float:
    from textual.app import App
    from textual.widgets import DataTable

    class A(App):
        def compose(self):
            yield DataTable()

    app = A()
    async with app.run_test(size=SIZE) as pilot:
        t = app.query_one(DataTable)
        for i in range(8):
            t.add_column(f"c{i}", key=f"c{i}", width=10)
        for r in range(rows):
            t.add_row(*[str(r)] * 8, key=f"r{r}")
        await pilot.pause()
        t0 = time.perf_counter()
        for r in range(rows):  # rate, bytes sent, bytes received, fill, rxprod, rxcons: six cells a row
            for c in range(6):
                t.update_cell(f"r{r}", f"c{c}", f"{r}:{c}")
        await pilot.pause()
        return time.perf_counter() - t0


def ingest_full(conns: int) -> tuple[float, int]:
    m, s = Model(), SyntheticStack(conns, fallbacks=0, full=True)
    feed_timed(m, s.setup(0.0))
    events = s.step(1.0)
    t0 = time.perf_counter()
    m.feed_many(events)
    return time.perf_counter() - t0, len(events)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=10_000, help="connections (rows); they come in pairs, both ends of one")
    ap.add_argument("--frames", type=int, default=20)
    args = ap.parse_args()

    pairs = args.conns // 2
    empty, _, _, _ = asyncio.run(frames(0, args.frames))
    full, feeds, samples, grown = asyncio.run(frames(pairs, args.frames))
    e50, f50, feed50, s50 = (statistics.median(x) for x in (empty, full, feeds, samples))
    p90 = sorted(full)[int(0.9 * (len(full) - 1))]
    views50 = f50 - feed50 - s50
    app50 = s50 + feed50 / 10 + views50  # the redraw as the app runs it: one poll of ten feeds its share
    print(f"frame, {args.frames} frames, {args.conns:,} connections ({pairs:,} pairs seen from both ends), each getting one update every second:")
    print(f"  empty model                   median {e50 * 1e3:6.1f} ms")
    print(f"  {args.conns:,} connections, a whole second fed in the frame: median {f50 * 1e3:6.1f} ms  p90 {p90 * 1e3:6.1f} ms"
          f"  = {f50 / e50:.1f}x the empty frame")  # fmt: skip
    print(f"    close the sample {s50 * 1e3:.1f} ms + feed {2 * pairs:,} events {feed50 * 1e3:.1f} ms + views and paint {views50 * 1e3:.1f} ms")
    print(f"  as the app runs it (ten polls a second; the redraw poll feeds a tenth): {app50 * 1e3:.1f} ms = {app50 / e50:.1f}x the empty frame;"
          f" {'under' if app50 < 0.050 else 'OVER'} the 50 ms budget (the whole-second frame is {'under' if f50 < 0.050 else 'over'})")  # fmt: skip

    base, big = model_size(0), model_size(pairs)
    print("model memory after a minute (histories full):")
    print(f"  empty model         {base / 1e6:7.2f} MB")
    print(f"  {args.conns:,} connections  {big / 1e6:7.2f} MB  = {big / max(base, 1):.0f}x the empty model, "
          f"{(big - base) / args.conns:.0f} bytes a connection")  # fmt: skip
    print(f"  {args.frames} s later: {grown / 1e6:+.2f} MB ({grown / max(big, 1) * 100:+.1f}% of the model: the per-sample sets"
          " and cursor strings in flight; nothing accumulates)")  # fmt: skip

    dt = asyncio.run(datatable_updates(args.conns))
    print(f"Textual DataTable.update_cell for the same rows (6 cells each): {dt * 1e3:.0f} ms = {dt / f50:.1f}x smctop's whole frame")
    t, n = ingest_full(pairs)
    print(f"full message mix: {n:,} events a second take {t * 1e3:.0f} ms to feed ({t / n * 1e6:.2f} us an event)")


if __name__ == "__main__":
    main()
