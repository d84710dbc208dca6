"""Failover time over the soft provider, as a distribution over many runs.

Each run: two stacks with two soft devices each, one connection streaming data client
to server, then the port of the device carrying link 1 is pulled at a random moment on
the sender's or the receiver's side. Failover time is measured from the port going down
to the first new byte the receiver sees arrive over the surviving link. Beside it, in
the same process: the stack's request/response round trip (the floor of any recovery)
and the port-event poll interval (how long the stack may take to hear of a dead port).

    .venv/bin/python bench/bench_failover.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics

from stack.core.config import SmcConfig
from stack.runtime import DeviceSpec, Stack, StackConfig
from stack.runtime.rdma import EVENT_POLL
from stack.traffic import runner

RMB = {"rmb_size": 256 << 10, "sndbuf_size": 256 << 10}
_n = iter(range(1, 250))


def configs() -> tuple[StackConfig, StackConfig, str, str]:
    n = next(_n)
    ca, sa, ca2, sa2 = f"127.91.{n}.1", f"127.91.{n}.2", f"127.92.{n}.1", f"127.92.{n}.2"

    def mk(host: str, *addrs: str) -> StackConfig:
        return StackConfig(SmcConfig(host=host, **RMB), tuple(DeviceSpec("soft", a, a, None, 4096) for a in addrs))

    return mk("client", ca, ca2), mk("server", sa, sa2), ca, sa


async def one_failover(side: str, rng: random.Random) -> float | None:
    c, s, ca, sa = configs()
    a, b = await Stack(c).start(), await Stack(s).start()
    marks: dict[str, float] = {}

    def watch(e) -> None:  # the receiver's first new data over another link after the fault
        if "fault" in marks and "first" not in marks and e.kind == "conn.cursor" and e.get("side") == "rx" and e.link != 1 and "prod" in e.fields:
            marks["first"] = e.t
        elif e.kind == "link.event" and e.get("event") == "fault" and e.get("fault") == "port_down":
            marks["fault"] = e.t

    a.bus.listen(watch)
    b.bus.listen(watch)
    try:
        ts = runner.Totals()
        await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
        tc = runner.Totals()
        work = asyncio.create_task(runner.bulk(lambda: a.open_connection(sa, 5000, local_addr=(ca, 0)), tc, direction=runner.UP,
                                               total=0, duration=1.2, seed=1))  # fmt: skip
        await asyncio.sleep(0.3 + rng.uniform(0, 0.3))  # the second link is up and data flows
        (a if side == "sender" else b).set_port(ca if side == "sender" else sa, False)
        await work
        return (marks["first"] - marks["fault"]) * 1000 if "first" in marks and not tc.errors else None
    finally:
        await a.close()
        await b.close()


async def rr_round_trip() -> float:
    c, s, ca, sa = configs()
    a, b = await Stack(c).start(), await Stack(s).start()
    try:
        ts, tc = runner.Totals(), runner.Totals()
        await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
        await runner.rr(lambda: a.open_connection(sa, 5000, local_addr=(ca, 0)), tc, size=64, duration=0, count=500, seed=1)
        return statistics.median(tc.latencies) * 1000
    finally:
        await a.close()
        await b.close()


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def main(runs: int) -> None:
    rng = random.Random(7)
    rtt = await rr_round_trip()
    print(f"failover time over the soft provider, {runs} runs a side (ms; link down -> first byte over the surviving link)")
    print(f"baseline in this process: request/response round trip p50 {rtt:.3f} ms; port events polled every {EVENT_POLL * 1000:.0f} ms\n")
    print(f"{'port pulled on':16} {'ok':>4} {'min':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'p50/RTT':>9} {'p50/poll':>9}")
    for side in ("sender", "receiver"):
        times = []
        for _ in range(runs):
            try:
                t = await asyncio.wait_for(one_failover(side, rng), 30)
            except asyncio.TimeoutError:
                t = None  # counted as not recovered: ok < runs shows it
            if t is not None:
                times.append(t)
        if not times:
            print(f"{side:16} {0:>4}")
            continue
        p50 = pct(times, 50)
        print(f"{side:16} {len(times):>4} {min(times):8.2f} {p50:8.2f} {pct(times, 90):8.2f} {pct(times, 99):8.2f} {max(times):8.2f}"
              f" {p50 / rtt:9.1f} {p50 / (EVENT_POLL * 1000):9.2f}")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    asyncio.run(main(ap.parse_args().runs))
