"""What listening to the stack's events costs, measured beside baselines in the same run:

* encoding one event as canonical JSON: the compiled encoder (native/eventenc.c) against
  its pure-Python twin (stack.events._to_json_py);
* the cost per event on the emitting thread (the asyncio loop calls bus listeners
  inline): Recorder.on_event and JsonlWriter, against a listener that does nothing;
* what smc-trace's recorder sustains (queue -> writer thread -> pcapng), against the
  goal of 500,000 events/s, and how much interpreter lock its writer thread takes from
  the emitting thread (a Python loop's speed while the writer converts a batch);
* SMC-R bulk throughput with every event written as JSONL, and with the recorder
  attached to both stacks (events and every RoCE frame), against nobody listening, and
  against a listener (and a frame tap) that does nothing: what building the events and
  delivering the frames costs the stack before any consumer does anything; with what
  the recorder dropped.

Rounds are interleaved and the median is printed (the machine may be shared: with the
compiled soft-RoCE engine one bulk run lasts well under a second). Goals (issue #12 item 4): recorder
>= 500,000 events/s; JSONL and recorder each >= 0.95x of bulk with nobody listening.

    .venv/bin/python bench/bench_trace.py [--events 200000] [--mib 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))

from bench_stack import stacks  # noqa: E402

from dissectors.recorder import Recorder  # noqa: E402
from stack.events import Event, EventBus, JsonlWriter, _LineWriterPy, _to_json_py, encoder_note, native_encoder, to_json  # noqa: E402
from stack.traffic import runner  # noqa: E402
from stack.traffic.protocol import BOTH  # noqa: E402

GOAL_RATE = 500_000
GOAL_BULK = 0.95


def synthetic(n: int) -> list[Event]:
    """What a bulk transfer emits, in its proportions: CDC messages, cursor moves, writes."""
    out = []
    raw = bytes.fromhex("fe2c0001" + "00" * 40)
    for i in range(n):
        t = 1000.0 + i * 1e-6
        k = i % 4
        if k == 0:
            out.append(
                Event(
                    t,
                    "cdc.msg",
                    "client",
                    "lgr1",
                    1,
                    1,
                    {"dir": "tx", "seqno": i & 0xFFFF, "token": 7, "prod": f"0:{i}", "cons": "0:0", "flags": [], "raw": raw},
                )
            )
        elif k == 1:
            out.append(Event(t, "conn.cursor", "client", "lgr1", 1, 1, {"side": "tx", "prod": f"0:{i}", "cons": "0:0", "sent": f"0:{i}", "fin": "0:0"}))
        elif k == 2:
            out.append(Event(t, "rdma.write", "client", "lgr1", 1, 1, {"offset": i % 65536, "length": 4096, "rkey": 0x1234}))
        else:
            out.append(Event(t, "conn.rmb", "server", "lgr1", 1, 1, {"fill": i % 65536, "size": 65536, "write_blocked": False, "peer_write_blocked": False}))
    return out


def per_event(fn, events: list[Event], passes: int = 5) -> float:
    """Median seconds per event of fn(e) over the events."""
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for e in events:
            fn(e)
        times.append((time.perf_counter() - t0) / len(events))
    return statistics.median(times)


def through_bus(listener, events: list[Event]) -> float:
    """Per event: bus.emit with this one listener (what the stack's loop pays)."""
    bus = EventBus()
    bus.listen(listener)
    return per_event(bus.emit, events)


def emitting_costs(events: list[Event], d: str) -> dict[str, float]:
    sample = events[:50_000]
    out = {"nothing (a listener that does nothing)": through_bus(lambda e: None, sample)}
    rec = Recorder(os.path.join(d, "emit.pcapng"), max_pending=10 * len(sample) + 1, interval=3600)  # no writer pass meanwhile
    out["Recorder.on_event"] = through_bus(rec.on_event, sample)
    rec.close()
    with open(os.path.join(d, "emit.jsonl"), "w") as f:
        out["JsonlWriter (file)"] = through_bus(JsonlWriter(f), sample)
    out["JsonlWriter (StringIO)"] = through_bus(JsonlWriter(io.StringIO()), sample)
    with open(os.path.join(d, "emit-py.jsonl"), "w") as f:
        out["JsonlWriter, pure-Python twin (file)"] = through_bus(_LineWriterPy(f), sample[:10_000])
    return out


def recorder_rate(events: list[Event], d: str, native: bool | None) -> tuple[float, int, object]:
    path = os.path.join(d, "rate.pcapng")
    t0 = time.perf_counter()
    rec = Recorder(path, max_pending=len(events) + 1, native=native)
    for e in events:
        rec.on_event(e)
    st = rec.close()
    rate = st.events / (time.perf_counter() - t0)
    return rate, os.path.getsize(path), st


def busy(seconds: float) -> int:
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            n += 1
    return n


def writer_gil(events: list[Event], d: str, native: bool | None, window: float = 1.0) -> tuple[float, float]:
    """(seconds of the emitting thread lost per event, writer wall seconds per event) while
    the writer converts and writes a batch of events: a Python loop on this thread runs
    beside it, and what it did not get done is what the writer's lock holding cost it."""
    base = busy(window) / window
    rec = Recorder(os.path.join(d, "gil.pcapng"), max_pending=len(events) + 1, interval=3600, hold=0, native=native)
    for e in events:
        rec.on_event(e)
    took = []

    def writer():
        t0 = time.perf_counter()
        rec._pump(final=False)  # exactly what the writer thread does each interval
        took.append(time.perf_counter() - t0)

    th = threading.Thread(target=writer)
    th.start()
    done = busy(window)
    th.join()
    rec.close()
    lost = max(0.0, window - done / base)
    return lost / len(events), took[0] / len(events)


async def bulk(mib: int, mode: str, d: str) -> tuple[float, object, float]:
    """(MB/s, the recorder's stats, process CPU seconds of the transfer: all threads, so
    the recorder's writer counts; steadier than MB/s when the machine is shared)."""
    a, b, sa = await stacks()
    stats = None
    rec = None
    files = []
    try:
        if mode == "recorder":
            rec = Recorder(os.path.join(d, "bulk.pcapng"))
            rec.attach(a)
            rec.attach(b)
        elif mode == "jsonl":
            for s in (a, b):
                f = open(os.path.join(d, f"bulk-{s.host.name}.jsonl"), "w")
                files.append(f)
                s.bus.listen(JsonlWriter(f))
        elif mode in ("noop", "noop+tap"):
            for s in (a, b):
                s.bus.listen(lambda e: None)
                if mode == "noop+tap":
                    s.add_frame_tap(lambda f: None)
        ts = runner.Totals()
        await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
        t = runner.Totals()
        cpu0, start = time.process_time(), time.perf_counter()
        await runner.bulk(lambda: a.open_connection(sa, 5000), t, direction=BOTH, total=mib << 20, duration=0, seed=1)
        mbs = (t.bytes_sent + t.bytes_received) / (time.perf_counter() - start) / 1e6
        cpu = time.process_time() - cpu0
        assert t.verified == 1 and not t.errors, t.errors
    finally:
        if rec is not None:
            stats = rec.close()
        await a.close()
        await b.close()
        for f in files:
            f.close()
    return mbs, stats, cpu


def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL NOT MET"


async def main(args) -> None:
    events = synthetic(args.events)
    print(encoder_note())
    d = tempfile.mkdtemp(prefix="bench-trace-")

    sample = events[:50_000]
    c = per_event(to_json, sample)
    py = per_event(_to_json_py, sample[:10_000], passes=3)
    print("\nencoding one event (synthetic bulk-transfer mix: cdc.msg, conn.cursor, rdma.write, conn.rmb)")
    print(f"  to_json, {'compiled' if native_encoder() else 'pure Python'}        {c * 1e9:8.0f} ns/event")
    print(f"  to_json, pure-Python twin  {py * 1e9:8.0f} ns/event   compiled = {py / c:.0f}x faster")

    bus = EventBus()
    idle = per_event(lambda e: bus.active and bus.emit(e), sample)
    nothing = per_event(lambda e: None, sample)
    costs = emitting_costs(events, d)
    base = costs["nothing (a listener that does nothing)"]
    print("\non the emitting thread, per event (bus.emit with one listener; goal: well under 500 ns)")
    for name, s in costs.items():
        extra = "" if s is base else f"   listener's own cost {max(0.0, s - base) * 1e9:5.0f} ns"
        print(f"  {name:40s} {s * 1e9:6.0f} ns{extra}")
    print(f"  JSONL writer throughput on the emitting thread: {1 / costs['JsonlWriter (file)']:,.0f} events/s")
    print(f"  nobody listening: the producer checks bus.active, {max(0.0, idle - nothing) * 1e9:.0f} ns")

    rates = [recorder_rate(events, d, None) for _ in range(args.rounds)]
    rate = statistics.median(r[0] for r in rates)
    size = rates[0][1]
    enc = rates[0][2].encoder
    twin_n = min(len(events), 50_000)
    twin, _, _ = recorder_rate(events[:twin_n], d, False)
    print(f"\nsmc-trace recorder, {args.events:,} synthetic events (queue -> writer thread -> pcapng, {size / args.events:.0f} bytes/event)")
    print(f"  {enc} spool                {rate:12,.0f} events/s   goal >= {GOAL_RATE:,}: {verdict(rate >= GOAL_RATE)}"
          f"   (rounds: {', '.join(f'{r[0]:,.0f}' for r in rates)})")  # fmt: skip
    print(f"  pure-Python twin spool        {twin:12,.0f} events/s   ({twin_n:,} events; compiled = {rate / twin:.1f}x)")

    lost, wall = writer_gil(events, d, None)
    lost_py, wall_py = writer_gil(events[:twin_n], d, False)
    print("\nthe writer thread converting a batch while a Python loop runs on the emitting thread")
    print(f"  {enc} spool: writer {wall * 1e9:5.0f} ns/event, emitting thread lost {lost * 1e9:5.0f} ns/event to it")
    print(f"  pure-Python twin: writer {wall_py * 1e9:5.0f} ns/event, emitting thread lost {lost_py * 1e9:5.0f} ns/event")

    modes = ("off", "noop", "noop+tap", "jsonl", "recorder")
    got: dict[str, list] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes[r % len(modes) :] + modes[: r % len(modes)]:
            got[m].append(await bulk(args.mib, m, d))
    med = {m: statistics.median(x[0] for x in got[m]) for m in modes}
    cpu = {m: statistics.median(x[2] for x in got[m]) for m in modes}
    off = med["off"]

    def line(label: str, m: str, note: str = "") -> None:
        print(f"  {label:36s}{med[m]:8.1f} MB/s  {med[m] / off:5.2f}x   cpu {cpu[m] / cpu['off']:5.2f}x{note}")

    print(f"\nSMC-R bulk, {args.mib} MiB each way, two in-process stacks (median of {args.rounds} interleaved rounds;"
          f" cpu: the process's CPU time for the transfer against nobody listening)")  # fmt: skip
    line("nobody listening", "off")
    line("a listener that does nothing", "noop", "   (the stack building its events)")
    line("... and a frame tap that does too", "noop+tap", "   (and delivering its frames)")
    jr, rr = med["jsonl"] / off, med["recorder"] / off
    line("JSONL file per stack", "jsonl", f"   goal >= {GOAL_BULK}: {verdict(jr >= GOAL_BULK)}; {med['jsonl'] / med['noop']:.2f}x of the do-nothing listener")
    line("smc-trace recorder (events, frames)", "recorder",
         f"   goal >= {GOAL_BULK}: {verdict(rr >= GOAL_BULK)}; {med['recorder'] / med['noop+tap']:.2f}x of the do-nothing listener and tap")  # fmt: skip
    for m in modes:
        print(f"     {m:10s} rounds: {', '.join(f'{x[0]:.1f}' for x in got[m])} MB/s")
    for st in (x[1] for x in got["recorder"]):
        print(f"     recorder: {st.events} events, {st.frames} frames written; dropped {st.dropped_events} events, {st.dropped_frames} frames")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(ap.parse_args()))
