"""SMC-R through the stack's public API against plain asyncio TCP, between the same two
processes, doing the same plain work a user first tries (issue #12's goals):

* bulk: the client writes 64 KiB chunks (write + drain) and closes its side; the server
  reads to end of file and answers with the byte count; MB/s until that answer;
* checksummed bulk: smc-traffic's own workload (stack.traffic.runner: chunk headers, a
  pattern checked byte for byte and by CRC-32 at the other end);
* request/response: 64-byte echoes on one connection, median round trip;
* connection set-up: connections per second through ``Stack.open_connection`` with SMC
  (every one after the first reuses the link group) against TCP through the same call;
* watching it: the same bulk with every event of the client's stack written as JSONL
  (``smc-traffic --events``), and recorded with every event and frame by the smc-trace
  recorder in this process and by ``smc-trace record --attach`` in its own process (through
  the control socket, as an operator records), against nobody listening; and how many times the stack looked whether anyone
  listens (``bus.active``), priced at what one look costs.

The server is a child process with a plain asyncio server and one stack per engine (the
compiled soft RoCE engine and its pure-Python twin); the client is this process, with
its own stacks. Every figure is a ratio against the asyncio TCP baseline measured in
the same run, each run repeated and the median taken.

    .venv/bin/python bench/bench_pair.py [--mib 256] [--rr 5000] [--conns 300] [--repeat 3] [--engines native,python] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dissectors.recorder import Recorder  # noqa: E402
from stack.core.config import SmcConfig  # noqa: E402
from stack.events import EventBus, JsonlWriter  # noqa: E402
from stack.runtime import DeviceSpec, Stack, StackConfig  # noqa: E402
from stack.runtime.control import ControlServer  # noqa: E402
from stack.traffic import runner  # noqa: E402
from stack.traffic.protocol import UP  # noqa: E402

CHUNK = 64 << 10
PLAIN = "127.95.0.2"
ADDRS = {"native": ("127.95.1.1", "127.95.1.2"), "python": ("127.95.2.1", "127.95.2.2")}
PORTS = {"sink": 6001, "echo": 6002, "traffic": 6003, "accept": 6004, "tcp_accept": 6005}
# What a user tuning for throughput sets (smc-traffic --rmb-size 1M --sndbuf-size 1M --mtu 4096);
# plain asyncio TCP gets the kernel's autotuned socket buffers.
BUFFERS = {"rmb_size": 1 << 20, "sndbuf_size": 1 << 20}
MTU = 4096


def stack_config(host: str, addr: str, engine: str) -> StackConfig:
    return StackConfig(SmcConfig(host=host, **BUFFERS), (DeviceSpec("soft", addr, addr, None, MTU, engine),))


# ------------------------------------------------------------------ the server process


async def sink(reader, writer) -> None:
    n = 0
    while chunk := await reader.read(1 << 20):
        n += len(chunk)
    writer.write(n.to_bytes(8, "big"))
    await writer.drain()
    writer.close()


async def echo(reader, writer) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
    except ConnectionError:
        pass
    writer.close()


async def accept(reader, writer) -> None:
    try:
        await reader.read()
    except ConnectionError:  # the client went away first (the bench closes without waiting)
        pass
    writer.close()


async def traffic(reader, writer) -> None:
    await runner.serve(reader, writer, runner.Totals())


HANDLERS = {"sink": sink, "echo": echo, "traffic": traffic, "accept": accept}


async def serve(engines: list[str], ready, stop) -> None:
    servers = [await asyncio.start_server(fn, PLAIN, PORTS[name]) for name, fn in HANDLERS.items()]
    stacks = []
    for engine in engines:
        s = await Stack(stack_config("server", ADDRS[engine][1], engine)).start()
        stacks.append(s)
        for name, fn in HANDLERS.items():
            await s.start_server(fn, ADDRS[engine][1], PORTS[name])
        await s.start_server(accept, ADDRS[engine][1], PORTS["tcp_accept"], smc=False)
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for s in stacks:
        await s.close()
    for srv in servers:
        srv.close()


def server_main(engines: list[str], ready, stop) -> None:
    asyncio.run(serve(engines, ready, stop))


# ------------------------------------------------------------------ the client


async def bulk(opener, mib: int) -> float:
    reader, writer = await opener("sink")
    data = os.urandom(CHUNK)
    t0 = time.perf_counter()
    for _ in range(mib * (1 << 20) // CHUNK):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    n = int.from_bytes(await reader.readexactly(8), "big")
    elapsed = time.perf_counter() - t0
    writer.close()
    assert n == mib << 20, (n, mib << 20)
    return n / elapsed / 1e6


async def checked_bulk(opener, mib: int) -> float:
    t = runner.Totals()
    t0 = time.perf_counter()
    await runner.bulk(lambda: opener("traffic"), t, direction=UP, total=mib << 20, duration=0, seed=3)
    elapsed = time.perf_counter() - t0
    assert t.verified == 1 and not t.errors, t.errors
    return t.bytes_sent / elapsed / 1e6


async def rr(opener, count: int) -> float:
    reader, writer = await opener("echo")
    msg = os.urandom(64)
    lat = []
    for _ in range(count):
        t0 = time.perf_counter()
        writer.write(msg)
        got = await reader.readexactly(64)
        lat.append(time.perf_counter() - t0)
        assert got == msg
    writer.close()
    return statistics.median(lat)


async def setup_rate(open_conn, conns: int) -> float:
    r, w = await open_conn()  # the first one (a first contact for SMC-R) is not counted
    t0 = time.perf_counter()
    for _ in range(conns):
        r2, w2 = await open_conn()
        w2.close()
    rate = conns / (time.perf_counter() - t0)
    w.close()
    return rate


class CountingBus(EventBus):
    """An event bus that counts how often the stack asks whether anyone listens (to any
    event, or to the data path's: ``active``, ``data_active``, ``data_events``)."""

    looks = 0

    def _look(self) -> bool:
        CountingBus.looks += 1
        return False

    def _ignore(self, value) -> None:
        pass

    active = property(_look, _ignore)
    data_active = property(_look, _ignore)
    data_events = property(_look, _ignore)


def look_cost() -> float:
    """Seconds one ``bus.active`` look costs (an attribute read on an object's dict)."""
    bus = EventBus()
    n = 2_000_000
    return min(timeit.repeat("bus.active", globals={"bus": bus}, number=n, repeat=5)) / n


async def watched_bulk(stack, opener, mib: int, how: str, d: str) -> float:
    """Bulk with the client's stack watched: "jsonl" (every event to a file) or "recorder"
    (every event and frame to a pcapng, as smc-trace record does)."""
    if how == "jsonl":
        f = open(os.path.join(d, "events.jsonl"), "w")
        w = JsonlWriter(f)
        stack.bus.listen(w)
        try:
            return await bulk(opener, mib)
        finally:
            stack.bus.unlisten(w)
            f.close()
    if how == "smc-trace":
        return await smc_trace_bulk(stack, opener, mib, d)
    rec = Recorder(os.path.join(d, "trace.pcapng"))
    rec.attach(stack)
    try:
        return await bulk(opener, mib)
    finally:
        rec.close()


async def smc_trace_bulk(stack, opener, mib: int, d: str) -> float:
    """Bulk while ``smc-trace record --attach`` (its own process, as an operator runs it)
    records the client's stack through its control socket: every event and frame."""
    path = os.path.join(d, "client.sock")
    server = ControlServer(stack, path, interval=1.0)
    await server.start()
    out = os.path.join(d, "attached.pcapng")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dissectors.cli", "record", "-w", out, "--attach", path,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    try:
        if not await server.wait_subscribed(30):
            raise SystemExit("bench_pair: smc-trace record did not subscribe within 30 s")
        return await bulk(opener, mib)
    finally:
        proc.send_signal(signal.SIGINT)  # the recording ends as Ctrl-C ends it
        _, err = await proc.communicate()
        await server.close()
        if b"LOST" in err or b"Traceback" in err:
            print(f"bench_pair: smc-trace record: {err.decode(errors='replace').strip()}", file=sys.stderr)


async def idle_bus_share(stack, opener, mib: int) -> float:
    """The share of a bulk transfer's time the stack spends asking whether anyone listens."""
    real = stack.bus
    stack.bus = stack.host.bus = CountingBus()
    CountingBus.looks = 0
    t0 = time.perf_counter()
    try:
        await bulk(opener, mib)
    finally:
        stack.bus = stack.host.bus = real
    elapsed = time.perf_counter() - t0
    return CountingBus.looks * look_cost() / elapsed


async def measure(args) -> dict:
    stacks = {e: await Stack(stack_config("client", ADDRS[e][0], e)).start() for e in args.engines}
    for e, s in stacks.items():
        got = s.engines()[ADDRS[e][0]]
        if got != e:
            raise SystemExit(f"bench_pair: the {e} engine is not available here ({'; '.join(s.engine_notes())})")
    tcp = lambda name: asyncio.open_connection(PLAIN, PORTS[name])  # noqa: E731

    def smc(e):
        return lambda name: stacks[e].open_connection(ADDRS[e][1], PORTS[name])

    results: dict = {"tcp": {}, **{e: {} for e in args.engines}}

    def record(who, what, value):
        results[who].setdefault(what, []).append(value)

    async def both(what, fn, *a):
        record("tcp", what, await fn(tcp, *a))
        for e in args.engines:
            mib = a[0] if e == "native" or what not in ("bulk", "checked") else max(16, a[0] // 8)
            record(e, what, await fn(smc(e), *((mib,) + a[1:])))

    try:
        for _ in range(args.repeat):
            await both("bulk", bulk, args.mib)
            await both("checked", checked_bulk, args.mib)
            await both("rr", rr, args.rr)
            for e in args.engines:
                s, addr = stacks[e], ADDRS[e][1]
                record(e, "setup_smc", await setup_rate(lambda: s.open_connection(addr, PORTS["accept"]), args.conns))
                record(e, "setup_tcp", await setup_rate(lambda: s.open_connection(addr, PORTS["tcp_accept"], smc=False), args.conns))
            if args.trace:
                for e in args.engines:
                    mib = args.mib if e == "native" else max(16, args.mib // 8)
                    with tempfile.TemporaryDirectory() as d:
                        record(e, "trace_off", await bulk(smc(e), mib))
                        record(e, "trace_jsonl", await watched_bulk(stacks[e], smc(e), mib, "jsonl", d))
                        record(e, "trace_off2", await bulk(smc(e), mib))
                        record(e, "trace_recorder", await watched_bulk(stacks[e], smc(e), mib, "recorder", d))
                        record(e, "trace_off3", await bulk(smc(e), mib))
                        record(e, "trace_smc_trace", await watched_bulk(stacks[e], smc(e), mib, "smc-trace", d))
                    record(e, "idle_bus", await idle_bus_share(stacks[e], smc(e), mib))
    finally:
        for s in stacks.values():
            await s.close()
    return {who: {k: statistics.median(v) for k, v in d.items()} for who, d in results.items()}


def run(args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=server_main, args=(args.engines, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise SystemExit("bench_pair: the server process did not start")
        return asyncio.run(measure(args))
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


GOALS = {  # what issue #12 asks, as ratios against asyncio TCP between the same two processes
    "bulk": (">=", 1.0, "bulk, 64 KiB writes read to EOF"),
    "checked": (">=", 1.0, "checksummed bulk (smc-traffic's work)"),
    "rr": ("<=", 1.0, "64-byte request/response, median RTT"),
    "setup": (">=", 0.5, "set-up reusing a link group vs TCP connects"),
}
TRACE_GOALS = {  # against the same bulk with nobody listening (the mean of the rounds before and after)
    "trace_jsonl": (">=", 0.95, "bulk with every event as JSONL"),
    "trace_recorder": (">=", 0.95, "bulk recorded by smc-trace (events, frames)"),
    "trace_smc_trace": (">=", 0.95, "bulk recorded by smc-trace record --attach (its own process)"),
    "idle_bus": ("<=", 0.01, "bus with nobody listening: share of bulk"),
}


def table(res: dict, engines: list[str]) -> list[dict]:
    rows = []
    tcp = res["tcp"]
    for key, (op, goal, label) in GOALS.items():
        for e in engines:
            r = res[e]
            if key == "setup":
                ratio, ours, base, unit = r["setup_smc"] / r["setup_tcp"], r["setup_smc"], r["setup_tcp"], "conn/s"
            elif key == "rr":
                ratio, ours, base, unit = r["rr"] / tcp["rr"], r["rr"] * 1e6, tcp["rr"] * 1e6, "us"
            else:
                ratio, ours, base, unit = r[key] / tcp[key], r[key], tcp[key], "MB/s"
            ok = ratio >= goal if op == ">=" else ratio <= goal
            rows.append({"what": label, "engine": e, "goal": f"{op} {goal:.1f}x", "ratio": round(ratio, 3), "ours": round(ours, 1),
                         "baseline": round(base, 1), "unit": unit, "met": ok, "vs": "asyncio TCP"})  # fmt: skip
    for key, (op, goal, label) in TRACE_GOALS.items():
        for e in engines:
            r = res[e]
            if key not in r:
                continue
            if key == "idle_bus":
                ratio, ours, base, unit, vs, goal_text = r[key], r[key] * 100, 100.0, "%", "the bulk's time", f"< {goal:.0%}"
            else:
                off = (r["trace_off"] + r["trace_off2"]) / 2 if key != "trace_smc_trace" else (r["trace_off2"] + r["trace_off3"]) / 2
                ratio, ours, base, unit, vs, goal_text = r[key] / off, r[key], off, "MB/s", "nobody listening", f"{op} {goal:.2f}x"
            ok = ratio >= goal if op == ">=" else ratio <= goal
            rows.append({"what": label, "engine": e, "goal": goal_text, "ratio": round(ratio, 4), "ours": round(ours, 2),
                         "baseline": round(base, 1), "unit": unit, "met": ok, "vs": vs})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="bulk MiB per run (the Python engine moves an eighth)")
    ap.add_argument("--rr", type=int, default=5000, help="request/response round trips per run")
    ap.add_argument("--conns", type=int, default=300, help="connections per set-up run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engines", default="native,python", type=lambda s: [e for e in s.split(",") if e])
    ap.add_argument("--trace", action="store_true", help="also the cost of watching: JSONL, the recorder, the idle bus")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args)
    rows = table(res, args.engines)
    if args.json:
        print(json.dumps({"results": res, "rows": rows}, indent=1))
        return
    print(f"two processes, soft RoCEv2 over UDP on loopback (MTU {MTU}, 1 MiB RMB and send buffer); medians of {args.repeat} runs\n")
    print(f"{'':46}{'engine':>8}{'goal':>9}{'measured':>10}{'SMC-R':>12}{'asyncio TCP':>13}")
    for r in rows:
        print(f"{r['what']:46}{r['engine']:>8}{r['goal']:>9}{r['ratio']:>9.2f}x{r['ours']:>9.1f} {r['unit']:<6}{r['baseline']:>7.1f}"
              f"  {'met' if r['met'] else 'NOT MET'}")  # fmt: skip


if __name__ == "__main__":
    main()
