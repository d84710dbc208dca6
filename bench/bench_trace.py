"""smc-trace's recorder, measured beside baselines in the same run:

* events per second the recorder sustains (queue -> writer thread -> pcapng), against
  writing the same events as JSONL (the cheapest full serialisation we have);
* SMC-R bulk throughput with a recorder attached to both stacks (events and RoCE frames)
  against nobody listening and against a JSONL listener, and what the recorder dropped.

    .venv/bin/python bench/bench_trace.py [--events 200000] [--mib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from bench_stack import stacks  # noqa: E402

from dissectors.recorder import Recorder  # noqa: E402
from stack.events import Event, JsonlWriter  # noqa: E402
from stack.traffic import runner  # noqa: E402
from stack.traffic.protocol import BOTH  # noqa: E402


def synthetic(n: int) -> list[Event]:
    """What a bulk transfer emits, in its proportions: CDC messages, cursor moves, writes."""
    out = []
    raw = bytes.fromhex("fe2c0001" + "00" * 40)
    for i in range(n):
        t = 1000.0 + i * 1e-6
        k = i % 4
        if k == 0:
            out.append(Event(t, "cdc.msg", "client", "lgr1", 1, 1, {"dir": "tx", "seqno": i & 0xFFFF, "token": 7, "prod": f"0:{i}", "cons": "0:0", "flags": [], "raw": raw}))
        elif k == 1:
            out.append(Event(t, "conn.cursor", "client", "lgr1", 1, 1, {"side": "tx", "prod": f"0:{i}", "cons": "0:0", "sent": f"0:{i}", "fin": "0:0"}))
        elif k == 2:
            out.append(Event(t, "rdma.write", "client", "lgr1", 1, 1, {"offset": i % 65536, "length": 4096, "rkey": 0x1234}))
        else:
            out.append(Event(t, "conn.rmb", "server", "lgr1", 1, 1, {"fill": i % 65536, "size": 65536, "write_blocked": False, "peer_write_blocked": False}))
    return out


def recorder_rate(events: list[Event]) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rec = Recorder(os.path.join(d, "x.pcapng"), max_pending=len(events) + 1)
        for e in events:
            rec.on_event(e)
        st = rec.close()
        rate = st.events / (time.perf_counter() - t0)
        size = os.path.getsize(os.path.join(d, "x.pcapng"))
    sink = io.StringIO()
    w = JsonlWriter(sink)
    t0 = time.perf_counter()
    for e in events:
        w(e)
    jsonl = len(events) / (time.perf_counter() - t0)
    return rate, jsonl, size


async def bulk(mib: int, mode: str) -> tuple[float, object]:
    a, b, sa = await stacks()
    stats = None
    rec = None
    d = tempfile.mkdtemp()
    try:
        if mode == "recorder":
            rec = Recorder(os.path.join(d, "bulk.pcapng"))
            rec.attach(a)
            rec.attach(b)
        elif mode == "jsonl":
            for s in (a, b):
                s.bus.listen(JsonlWriter(io.StringIO()))
        ts = runner.Totals()
        await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
        t = runner.Totals()
        start = time.perf_counter()
        await runner.bulk(lambda: a.open_connection(sa, 5000), t, direction=BOTH, total=mib << 20, duration=0, seed=1)
        mbs = (t.bytes_sent + t.bytes_received) / (time.perf_counter() - start) / 1e6
        assert t.verified == 1 and not t.errors, t.errors
    finally:
        if rec is not None:
            stats = rec.close()
        await a.close()
        await b.close()
    return mbs, stats


async def main(args) -> None:
    rate, jsonl, size = recorder_rate(synthetic(args.events))
    print(f"recorder: {args.events} synthetic bulk-transfer events")
    print(f"  recorder to pcapng      {rate:12.0f} events/s   ({size / args.events:.0f} bytes/event)")
    print(f"  JSONL writer (baseline) {jsonl:12.0f} events/s   recorder = {rate / jsonl:.2f}x of JSONL")
    off, _ = await bulk(args.mib, "off")
    js, _ = await bulk(args.mib, "jsonl")
    on, st = await bulk(args.mib, "recorder")
    print(f"\nSMC-R bulk, {args.mib} MiB each way, two in-process stacks on the soft provider")
    print(f"  nobody listening        {off:10.1f} MB/s   1.00x")
    print(f"  JSONL listener          {js:10.1f} MB/s   {js / off:.2f}x")
    print(f"  smc-trace recorder      {on:10.1f} MB/s   {on / off:.2f}x   ({st.events} events, {st.frames} frames, "
          f"dropped {st.dropped_events} events / {st.dropped_frames} frames)")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--mib", type=int, default=32)
    asyncio.run(main(ap.parse_args()))
