"""The SMC-R stack beside itself forced to TCP and beside plain asyncio TCP, in one run.

* bulk throughput (one connection, both ways) and request/response latency (64 bytes)
  over SMC-R on the soft provider, over the same stack with SMC switched off (its TCP
  fallback path), and over plain asyncio streams;
* connection set-up rate with first contact (a new link group each time) and with reuse
  of an existing link group;
* SMC-R throughput with every event written to a JSONL file versus nobody listening.

Prints one table of ratios. Everything runs in this process on 127.x addresses.

    .venv/bin/python bench/bench_stack.py [--mib 64] [--ops 2000] [--conns 100]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

from stack.core.config import SmcConfig
from stack.events import JsonlWriter
from stack.runtime import DeviceSpec, Stack, StackConfig
from stack.traffic import runner
from stack.traffic.protocol import BOTH

BIG = {"rmb_size": 1 << 20, "sndbuf_size": 1 << 20}
_n = iter(range(1, 200))


def pair_config() -> tuple[StackConfig, StackConfig, str]:
    n = next(_n)
    ca, sa = f"127.90.{n}.1", f"127.90.{n}.2"
    mk = lambda h, a: StackConfig(SmcConfig(host=h, **BIG), (DeviceSpec("soft", a, a, None, 4096),))  # noqa: E731
    return mk("client", ca), mk("server", sa), sa


async def stacks():
    c, s, sa = pair_config()
    a, b = Stack(c), Stack(s)
    await a.start()
    await b.start()
    return a, b, sa


async def smc_or_tcp(mib: int, ops: int, smc: bool, events: bool = False) -> tuple[float, float]:
    a, b, sa = await stacks()
    sink = io.StringIO()
    if events:
        for s in (a, b):
            s.bus.listen(JsonlWriter(sink))
    try:
        ts = runner.Totals()
        await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000, smc=smc)
        opener = lambda: a.open_connection(sa, 5000, smc=smc)  # noqa: E731
        t = runner.Totals()
        start = time.perf_counter()
        await runner.bulk(opener, t, direction=BOTH, total=mib << 20, duration=0, seed=1)
        mbs = (t.bytes_sent + t.bytes_received) / (time.perf_counter() - start) / 1e6
        assert t.verified == 1 and not t.errors, t.errors
        r = runner.Totals()
        await runner.rr(opener, r, size=64, duration=0, count=ops, seed=2)
        return mbs, statistics.median(r.latencies)
    finally:
        await a.close()
        await b.close()


async def plain_asyncio(mib: int, ops: int) -> tuple[float, float]:
    ts = runner.Totals()
    server = await asyncio.start_server(lambda r, w: runner.serve(r, w, ts), "127.90.250.2", 5000)
    opener = lambda: asyncio.open_connection("127.90.250.2", 5000)  # noqa: E731
    try:
        t = runner.Totals()
        start = time.perf_counter()
        await runner.bulk(opener, t, direction=BOTH, total=mib << 20, duration=0, seed=1)
        mbs = (t.bytes_sent + t.bytes_received) / (time.perf_counter() - start) / 1e6
        r = runner.Totals()
        await runner.rr(opener, r, size=64, duration=0, count=ops, seed=2)
        return mbs, statistics.median(r.latencies)
    finally:
        server.close()


async def setup_rate(conns: int) -> tuple[float, float]:
    """Connections per second: each with a new link group (first contact), then all reusing one."""

    async def accept(r, w):
        try:
            await r.read()
        except ConnectionError:  # the client closed while the stack was closing: nothing to report
            pass
        w.close()

    first_times = []
    for _ in range(max(3, conns // 20)):  # a fresh pair of stacks each time: always first contact
        a, b, sa = await stacks()
        await b.start_server(accept, sa, 5000)
        t0 = time.perf_counter()
        r, w = await a.open_connection(sa, 5000)
        first_times.append(time.perf_counter() - t0)
        assert w.get_extra_info("smc")["first_contact"]
        w.close()
        await a.close()
        await b.close()
    a, b, sa = await stacks()
    await b.start_server(accept, sa, 5000)
    r, w = await a.open_connection(sa, 5000)
    t0 = time.perf_counter()
    for _ in range(conns):
        r2, w2 = await a.open_connection(sa, 5000)
        assert not w2.get_extra_info("smc")["first_contact"]
        w2.close()
    reuse = conns / (time.perf_counter() - t0)
    await a.close()
    await b.close()
    return 1 / statistics.median(first_times), reuse


async def main(args) -> None:
    smc_tp, smc_rtt = await smc_or_tcp(args.mib, args.ops, True)
    tcp_tp, tcp_rtt = await smc_or_tcp(args.mib, args.ops, False)
    plain_tp, plain_rtt = await plain_asyncio(args.mib, args.ops)
    ev_tp, _ = await smc_or_tcp(args.mib, 10, True, events=True)
    first, reuse = await setup_rate(args.conns)
    print(f"smctop stack, soft RoCEv2 provider (MTU 4096, 1 MiB RMB), {args.mib} MiB each way, {args.ops} x 64-byte RR\n")
    print(f"{'':34}{'bulk MB/s':>12}{'RR RTT us':>12}{'vs SMC-R bulk':>15}{'vs SMC-R RTT':>14}")
    for name, tp, rtt in (("SMC-R (soft provider)", smc_tp, smc_rtt), ("same stack, SMC off (TCP)", tcp_tp, tcp_rtt),
                          ("plain asyncio TCP", plain_tp, plain_rtt)):  # fmt: skip
        print(f"{name:34}{tp:12.1f}{rtt * 1e6:12.1f}{tp / smc_tp:14.2f}x{rtt / smc_rtt:13.2f}x")
    print(f"\nconnection set-up: first contact {first:8.1f}/s   reuse of the link group {reuse:8.1f}/s   ratio {reuse / first:5.1f}x")
    print(f"SMC-R bulk with every event written as JSONL: {ev_tp:.1f} MB/s = {ev_tp / smc_tp:.2f}x of no listener")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=100)
    asyncio.run(main(ap.parse_args()))
