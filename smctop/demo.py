"""The embedded demo: three hosts in this process, on soft RoCE devices, with a traffic mix.

* ``alpha`` (client) runs bulk transfers and request/response to ``beta`` over SMC-R;
  both have two soft RoCE devices, so their link group has two links (SYM);
* a third of the way in, ``beta`` loses the port of its first device: its connections
  fail over to the second link, nothing is lost; the port comes back at two thirds and
  the link group returns to SYM;
* ``gamma`` serves too, but declines every Proposal (DIFFPREFIX), so alpha's connections
  to it fall back to TCP and say why;
* every event of every host goes to the event bus; a view prints what an operator needs.

``python -m smctop.demo [--seconds 8]`` prints a live line per second, then the connection
table (as ``smcss -d`` shows it), the link groups (as ``smcr linkgroup link-show``), the
failovers, the fallback reasons and the event counts.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import random
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from stack.core.config import SmcConfig
from stack.runtime import DeviceSpec, Stack, StackConfig
from stack.traffic import runner
from stack.traffic.protocol import BOTH
from stack.wire import codes


def _free_subnet() -> int:
    """A third octet x for which 127.30.x.1-3 and 127.31.x.1-2 are free (no socket on the RoCE
    port 4791 nor the demo's port 5000), chosen at random: two demos, or a demo and the test
    suite, can run at the same time without "address in use"."""
    rng = random.SystemRandom()
    for x in rng.sample(range(256), 256):
        hosts = (f"127.30.{x}.1", f"127.30.{x}.2", f"127.30.{x}.3", f"127.31.{x}.1", f"127.31.{x}.2")
        if all(_free(h) for h in hosts):
            return x
    raise OSError(errno.EADDRINUSE, "no free 127.30.x.0/24 for the demo")


def _free(host: str) -> bool:
    for kind, port in ((socket.SOCK_DGRAM, 4791), (socket.SOCK_STREAM, 5000)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


_X = _free_subnet()  # once per process: smctop.sources reads these names too
ALPHA, BETA, GAMMA = f"127.30.{_X}.1", f"127.30.{_X}.2", f"127.30.{_X}.3"
ALPHA2, BETA2 = f"127.31.{_X}.1", f"127.31.{_X}.2"  # the second devices
DIFFPREFIX = 0x03070000
CLIENT_TRAFFIC = ("bulk", "rr", "fallback")  # alpha's traffic, by kind (the servers' totals are by host)


@dataclass
class Demo:
    """The running topology: stacks by name, and what their traffic did."""

    hosts: dict[str, Stack] = field(default_factory=dict)
    totals: dict[str, runner.Totals] = field(default_factory=dict)
    events: Counter = field(default_factory=Counter)
    tasks: list[asyncio.Task] = field(default_factory=list)

    async def start(self, control_dir: str | None = None) -> "Demo":
        specs = {
            "alpha": ((ALPHA, ALPHA2), {}),
            "beta": ((BETA, BETA2), {}),
            "gamma": ((GAMMA,), {"forced_decline": DIFFPREFIX}),
        }
        for name, (addrs, extra) in specs.items():
            cfg = StackConfig(SmcConfig(host=name, rmb_size=256 << 10, sndbuf_size=256 << 10, **extra),
                              tuple(DeviceSpec("soft", a, a, None, 4096) for a in addrs),
                              control_path=f"{control_dir}/{name}.sock" if control_dir else None)  # fmt: skip
            stack = Stack(cfg)
            await stack.start()
            stack.bus.listen(lambda e: self.events.update([e.kind]))
            self.hosts[name] = stack
        for name in ("beta", "gamma"):
            t = self.totals[name] = runner.Totals()
            await self.hosts[name].start_server(lambda r, w, t=t: runner.serve(r, w, t), specs[name][0][0], 5000)
        return self

    def pull_port(self, seconds: float, out) -> None:
        """beta's first port goes down a third of the way in and comes back at two thirds."""
        loop = asyncio.get_running_loop()
        beta = self.hosts["beta"]

        def port(up: bool) -> None:
            out.write(f"        beta: port of {BETA} {'back up' if up else 'pulled'}\n")
            beta.set_port(BETA, up)

        loop.call_later(seconds / 3, port, False)
        loop.call_later(seconds * 2 / 3, port, True)

    def run_traffic(self, seconds: float) -> None:
        alpha = self.hosts["alpha"]
        bulk, rr, fb = (self.totals.setdefault(k, runner.Totals()) for k in CLIENT_TRAFFIC)

        def to(addr):
            return lambda: alpha.open_connection(addr, 5000, local_addr=(ALPHA, 0))

        self.tasks = [
            asyncio.create_task(runner.bulk(to(BETA), bulk, direction=BOTH, total=0, duration=seconds, seed=1)),
            *(asyncio.create_task(runner.rr(to(BETA), rr, size=256, duration=seconds, count=0, seed=10 + i)) for i in range(2)),
            asyncio.create_task(runner.crr(to(GAMMA), fb, size=64, duration=seconds, count=0, seed=20)),
        ]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for stack in self.hosts.values():
            await stack.close()


def _conn_table(snaps: dict[str, dict]) -> list[str]:
    rows = [f"{'host':6} {'State':15} {'Local Address':20} {'Peer Address':20} {'Mode':5} {'Reason':34} {'Token':10} "
            f"{'RMB':>7} {'rxprod':>10} {'rxcons':>10} {'txprod':>10} {'txcons':>10} {'sent':>12} {'recv':>12}"]  # fmt: skip
    for name, snap in snaps.items():
        for c in snap["conns"]:
            reason = codes.format_reason(c["fallback_reason"]) if c["fallback_reason"] else ""
            if c["peer_diagnosis"]:
                reason += f"/{c['peer_diagnosis']:08x}"
            rows.append(
                f"{name:6} {c['state']:15} {c['local']:20} {c['peer']:20} {c['mode']:5} {reason:34} {c['token']:08x}   "
                f"{c['rmb_size'] // 1024:>5}K {c['rx_prod']:>10} {c['rx_cons']:>10} {c['tx_prod']:>10} {c['tx_cons']:>10} "
                f"{c['bytes_sent']:>12,} {c['bytes_received']:>12,}"
            )  # fmt: skip
    return rows


def _lgr_table(snaps: dict[str, dict]) -> list[str]:
    rows = [f"{'host':6} {'LG-ID':9} {'LG-Role':7} {'LG-Type':7} {'Crit':4} {'#Conns':>6}  {'Link':4} {'Link-State':12} "
            f"{'QPN':>7} {'Peer-QPN':>8} {'Local-GID':18} {'Peer-GID':18}"]  # fmt: skip
    for name, snap in snaps.items():
        for g in snap["lgrs"]:
            for link in g["links"]:
                rows.append(
                    f"{name:6} {g['id']:9} {g['role'].upper()[:6]:7} {g['type']:7} {'Yes' if g['crit'] else 'No':4} {g['conns']:>6}  "
                    f"{link['id']:<4} {link['state']:12} {link['qpn']:>7x} {link['peer_qpn']:>8x} {link['gid']:18} {link['peer_gid']:18}"
                )  # fmt: skip
    return rows


def _failovers(snaps: dict[str, dict]) -> list[str]:
    """The failovers that moved connections; a deleted link with none on it is listed apart,
    as smctop and smc-trace summary count them."""
    every = [(name, fo) for name, snap in snaps.items() for fo in snap["failovers"]]
    lines = [f"  {name:6} link group {fo['lgr']} link {fo['from_link']} -> {fo['to_link']}: {fo['conns']} connections moved in "
             f"{fo['duration_ms']} ms ({fo['reason']})" for name, fo in every if fo["conns"] or fo.get("failed")]  # fmt: skip
    idle = [f"{name} {fo['lgr']} link {fo['from_link']}" for name, fo in every if not (fo["conns"] or fo.get("failed"))]
    return lines + ([f"  link deletions that moved no connection: {', '.join(idle)}"] if idle else [])


def _smcr_conns(snaps: dict[str, dict]) -> int:
    return sum(1 for s in snaps.values() for c in s["conns"] if c.get("mode") == "SMCR")


async def run(seconds: float, out=sys.stdout) -> Demo:
    demo = await Demo().start()
    demo.run_traffic(seconds)
    demo.pull_port(seconds, out)
    start, last = time.monotonic(), (0, time.monotonic())
    busy: dict[str, dict] = {}  # the snapshots that saw the most connections open (not one taken mid-teardown)
    try:
        while any(not t.done() for t in demo.tasks):
            await asyncio.sleep(1.0)
            snaps = {name: stack.snapshot() for name, stack in demo.hosts.items()}
            if _smcr_conns(snaps) and _smcr_conns(snaps) >= _smcr_conns(busy):  # ties: the fresher one
                busy = snaps
            # alpha's ends: each byte once (beta's and gamma's servers count the same bytes again)
            moved = sum(demo.totals[k].bytes_sent + demo.totals[k].bytes_received for k in CLIENT_TRAFFIC)
            now = time.monotonic()
            rate = (moved - last[0]) / (now - last[1]) / 1e6
            last = (moved, now)
            smc = sum(s.host.stats["smc_client"] for s in demo.hosts.values())
            fb = sum(s.host.stats["fallback_client"] for s in demo.hosts.values())
            ops = demo.totals["rr"].ops + demo.totals["fallback"].ops
            out.write(f"{now - start:5.1f} s  {moved / 1e6:9.1f} MB  {rate:7.1f} MB/s  rr/crr ops {ops:6}  "
                      f"SMC-R conns {smc}  fallbacks {fb}  events {sum(demo.events.values()):,}\n")  # fmt: skip
            out.flush()
        out.write("\nconnections while traffic ran (smcss -d):\n" + "\n".join(_conn_table(busy)) + "\n")
        out.write("\nlink groups and links (smcr linkgroup link-show):\n" + "\n".join(_lgr_table(busy)) + "\n")
        final = {name: stack.snapshot() for name, stack in demo.hosts.items()}
        out.write("\nfailovers:\n" + ("\n".join(_failovers(final)) or "  none") + "\n")
        types = sorted({f"{name} {g['type']}" for name, snap in final.items() for g in snap["lgrs"]})
        out.write("link groups at the end: " + ", ".join(types) + "\n")
        out.write("\nfallbacks:\n")
        for name, stack in demo.hosts.items():
            for f in stack.snapshot()["fallbacks"]:
                out.write(f"  {name:6} {f['role']:6} {f['text']:34} x{f['count']}\n")
        rr = demo.totals["rr"].report("rr")
        out.write(f"\nbulk {demo.totals['bulk'].report('bulk')['throughput_mbs']} MB/s both ways over SMC-R; "
                  f"request/response p50 {rr.get('latency_us', {}).get('p50', '-')} us; "
                  f"{demo.totals['fallback'].connections} connections to gamma fell back\n")  # fmt: skip
        out.write("events: " + ", ".join(f"{k} {v:,}" for k, v in sorted(demo.events.items())) + "\n")
    finally:
        await demo.close()
    return demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="how long the traffic runs (default 8)")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    asyncio.run(run(args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
