r"""smc-traffic: drive test traffic through the embedded SMC-R stack.

    smc-traffic server --listen 127.1.0.2:5000
    smc-traffic client --connect 127.1.0.2:5000 --mode bulk --bytes 256M --direction both
    smc-traffic client --connect 127.1.0.2:5000 --mode rr --size 64 --duration 10 --connections 4 --json
    smc-traffic server --listen 127.1.0.2:5000 --decline DIFFPREFIX      # exercise fallback
    smc-traffic server --listen 127.1.0.2:5000 --device 127.1.0.2 --device 127.1.1.2
    smc-traffic client --device 127.1.0.1 --device 127.1.1.1 --bytes 1G \
        --fail-link 2 --restore-link 5                                    # failover and back

Each side runs its own stack with a soft RoCE device on its IPv4 address (``--device``,
default: the listen address for the server, or 127.1.0.2 when that is IPv6 or 0.0.0.0, and 127.1.0.1
for the client, whose IPv4 TCP connection also leaves from the first device's address).
IPv6 addresses go in brackets (``--connect [::1]:5000``); the devices stay IPv4 and an
IPv6 connection negotiates SMC-Rv1, as the kernel's does. Give ``--device`` twice for a
second device: link groups then get a second link and survive the loss of one.
``--provider pyverbs --rdma-device rxe0`` uses a real device instead.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import time

from stack.core.config import Limits, SmcConfig, Timeouts
from stack.events import JsonlWriter
from stack.runtime import Capability
from stack.runtime.control import CommandError, parse_reason
from stack.runtime.rdma import DeviceSpec, not_a_device_address
from stack.runtime.stack import Stack, StackConfig
from stack.wire import codes, units

from . import runner
from .protocol import BOTH, DOWN, UP

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)]) * UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 1500, 64K, 256M, 1G)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is negative" if value < 0 else f"{text!r} is not a size (like 1500, 64K, 256M, 1G)")
    if value >= 1 << 62:
        raise argparse.ArgumentTypeError(f"size {text!r} is too large")
    return int(value)


MIN_BUF, MAX_BUF = 16 << 10, 512 << 20  # an RMB's size travels as 16 KiB << (0..15) in CLC


def buffer_size(text: str) -> int:
    """An RMB or send buffer size: 16K to 512M."""
    v = size(text)
    if not MIN_BUF <= v <= MAX_BUF:
        raise argparse.ArgumentTypeError(f"{text!r}: buffers are 16K to 512M")
    return v


LIMIT_NAMES = {"lgrs": "lgrs", "qps": "qps", "reg-mem": "reg_mem", "conns": "conns"}


def limit(text: str) -> tuple[str, int | None]:
    """A resource limit, NAME=N (N a number, reg-mem a size like 256M, or none)."""
    name, sep, value = text.partition("=")
    field = LIMIT_NAMES.get(name.strip().lower())
    if not sep or field is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=N with NAME one of {', '.join(LIMIT_NAMES)}")
    if value.strip().lower() == "none":
        return field, None
    if field == "reg_mem":
        return field, size(value)
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: the limit is a whole number or none")
    return field, int(value)


def hostport(text: str) -> tuple[str, int]:
    """HOST:PORT, an IPv6 address in brackets ([::1]:5000); the host without its brackets."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (an IPv6 address in brackets: [::1]:5000)")
    if not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port {int(port)} is out of range (1 to 65535)")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {host} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if ":" in host or "[" in host or "]" in host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT: an IPv6 address goes in brackets, like [::1]:5000")
    return host, int(port)


def hostport_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def device_addr(text: str) -> str:
    """A soft RoCE device's address: IPv4 (its GID is IPv4-mapped, as Soft-RoCE's are)."""
    try:
        addr = str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address (a soft RoCE device is on one, also for IPv6 traffic)") from None
    why = not_a_device_address(addr)
    if why:
        raise argparse.ArgumentTypeError(f"{text!r}: {why}")
    return addr


MAX_SEED = (1 << 32) - 1


def seed(text: str) -> int:
    """The data pattern's seed: each connection's pattern and the header's u64 derive from it."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is out of range: a seed is 0 to {MAX_SEED}")
    return v


MAX_MESSAGE = 16 << 20  # the largest request a server takes


def message_size(text: str) -> int:
    v = size(text)
    if v > MAX_MESSAGE:
        raise argparse.ArgumentTypeError(f"{text!r}: a message is at most 16M")
    return v


def bulk_bytes(text: str) -> int:
    v = size(text)
    if v == 0:  # 0 used to mean "run for --duration" without a word
        raise argparse.ArgumentTypeError("0: give at least 1 byte, or leave --bytes out to run for --duration")
    return v


def host_name(text: str) -> str:
    """A host name: shown in terminals (smctop, reports) and put in socket file names, so
    no control characters (escape sequences would reach an operator's terminal), no '/'
    (smc-trace record names a stack's socket after it), at most 64 characters."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a host name must not be empty")
    bad = next((c for c in text if not c.isprintable() or c == "/"), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: a host name must not contain {bad!r} (control characters and '/' are refused)")
    if len(text) > 64:
        raise argparse.ArgumentTypeError(f"{text[:64]!r}...: a host name is at most 64 characters")
    return text


def reason(text: str) -> int:
    try:
        return parse_reason(text)
    except CommandError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def versions(text: str) -> frozenset[int]:
    try:
        vs = frozenset(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: versions are like 1,2") from None
    if not vs or not vs <= {1, 2}:
        raise argparse.ArgumentTypeError(f"{text!r}: SMC-R versions are 1 and 2")
    return vs


def ueid(text: str) -> str:
    from stack.wire.clc import make_eid

    try:
        make_eid(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def positive_float(text: str) -> float:
    """A finite number >= 0 (seconds, a probability): NaN and infinity are not."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    if v > 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return v


def fault_at(text: str) -> tuple[float, str | None]:
    when, _, device = text.partition(":")
    return positive_float(when), device or None


def probability(text: str) -> float:
    v = positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability between 0 and 1")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stack")
    g.add_argument("--device", action="append", type=device_addr, help="soft RoCE device IPv4 address (repeat for a second device; default: see above)")
    g.add_argument("--provider", choices=["soft", "pyverbs"], default="soft")
    g.add_argument("--rdma-device", action="append", help="pyverbs device name (repeatable; default rxe0)")
    g.add_argument("--netns", help="open the soft device in this network namespace")
    g.add_argument("--mtu", type=int, choices=[256, 512, 1024, 2048, 4096], default=1024, help="soft device MTU")
    g.add_argument(
        "--engine",
        choices=["auto", "native", "python"],
        default=None,
        help="soft devices: the compiled engine (native), its pure-Python twin, or native when built (auto, the default)",
    )
    g.add_argument(
        "--gso",
        choices=["auto", "on", "off"],
        default=None,
        help="native engine: send runs of frames as UDP GSO batches (auto, the default: except while a capture watches the interface)",
    )
    g.add_argument("--no-smc", action="store_true", help="plain TCP, no SMC")
    g.add_argument("--rmb-size", type=buffer_size, default=64 << 10, help="RMB per connection (default 64K)")
    g.add_argument("--sndbuf-size", type=buffer_size, default=64 << 10, help="send buffer per connection (default 64K)")
    g.add_argument("--versions", type=versions, default=frozenset({1, 2}), help="SMC-R versions offered (default 1,2)")
    g.add_argument("--ueid", action="append", type=ueid, help="user EID for SMC-Rv2 (repeatable; default SMCTOP)")
    g.add_argument(
        "--limit",
        action="append",
        type=limit,
        default=[],
        metavar="NAME=N",
        help="a resource limit of the stack: lgrs, qps, reg-mem (a size) or conns, or NAME=none (repeatable; defaults: lgrs=128 qps=256 reg-mem=1G conns=1024)",
    )
    g.add_argument("--test-link", type=positive_float, default=30.0, help="TEST LINK interval in seconds (0 disables)")
    g.add_argument("--host-name", type=host_name, help="host name in events and CLC (default: client/server)")
    g.add_argument(
        "--tcp-option",
        choices=["auto", "option", "inband"],
        default="auto",
        help="SMC capability signalling: the real TCP option through native/smcopt ('option': required; "
        "needed to talk to a Linux kernel), in-band, or the option when its BPF program is loaded (default)",
    )
    f = p.add_argument_group("faults (soft devices)")
    f.add_argument(
        "--fail-link",
        action="append",
        type=fault_at,
        default=[],
        metavar="T[:DEVICE]",
        help="T seconds after start, take DEVICE's port down (default: the first device, where link 1 is)",
    )
    f.add_argument(
        "--restore-link", action="append", type=fault_at, default=[], metavar="T[:DEVICE]", help="T seconds after start, bring DEVICE's port back up"
    )
    f.add_argument("--loss", type=probability, default=0.0, help="drop this fraction of frames sent by every device (0..1)")
    o = p.add_argument_group("output")
    o.add_argument("--events", help="write every event as JSON lines to this file")
    o.add_argument("--control", help="serve the control socket at this path (smctop --attach)")
    o.add_argument("--json", action="store_true", help="print the report as JSON")
    o.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress (default: on a terminal)")
    o.add_argument("--no-progress", dest="progress", action="store_false")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="smc-traffic", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server", help="accept connections and answer them")
    s.add_argument("--listen", type=hostport, default=("127.1.0.2", 5000), help="HOST:PORT (default 127.1.0.2:5000)")
    s.add_argument("--decline", type=reason, help="decline every Proposal with this reason (hex, number or name, e.g. DIFFPREFIX)")
    s.add_argument("--count", type=int, default=0, help="exit after this many connections (default 0: serve until stopped)")
    s.add_argument("--duration", type=positive_float, default=0, help="exit after this many seconds")
    _common(s)
    c = sub.add_parser("client", help="connect and run a workload")
    c.add_argument("--connect", type=hostport, default=("127.1.0.2", 5000), help="HOST:PORT (default 127.1.0.2:5000)")
    c.add_argument("--mode", choices=["bulk", "rr", "crr"], default="bulk", help="bulk, request/response, connect/request/response")
    c.add_argument("--direction", choices=["up", "down", "both"], default=None, help="bulk: who sends (default up)")
    c.add_argument("--connections", type=int, default=1, help="connections (bulk, rr) or parallel workers (crr)")
    c.add_argument("--size", type=message_size, default=None, help="rr/crr message size, 0 to 16M (default 64)")
    c.add_argument("--bytes", type=bulk_bytes, default=None, help="bulk bytes per connection and direction (default: run for --duration)")
    c.add_argument("--duration", type=positive_float, default=5.0,
                   help="seconds, when no --bytes/--count (default 5; 0 only with --bytes or --count: a run needs an end)")  # fmt: skip
    c.add_argument("--count", type=int, default=0, help="rr/crr: requests per connection or worker (default: run for --duration)")
    c.add_argument("--seed", type=seed, default=1, help=f"seed of the data patterns, 0 to {MAX_SEED} (default 1)")
    _common(c)
    return ap


def default_device(args, role: str) -> str:
    """The server's listen address when it is one IPv4 address, else (IPv6, a name, 0.0.0.0
    for every address) 127.1.0.2; 127.1.0.1 for the client."""
    if role == "server":
        try:
            addr = ipaddress.IPv4Address(args.listen[0])
        except ValueError:
            return "127.1.0.2"
        return "127.1.0.2" if not_a_device_address(str(addr)) else str(addr)
    return "127.1.0.1"


def stack_config(args, role: str) -> StackConfig:
    devices = ()
    if not args.no_smc:
        if args.provider == "pyverbs":
            devices = tuple(DeviceSpec("pyverbs", name) for name in args.rdma_device or ["rxe0"])
        else:
            addrs = args.device or [default_device(args, role)]
            devices = tuple(DeviceSpec("soft", addr, addr, args.netns, args.mtu, args.engine, args.gso) for addr in addrs)
    smc = SmcConfig(
        host=args.host_name or role, versions=args.versions, ueids=tuple(args.ueid or ("SMCTOP",)), rmb_size=args.rmb_size,
        sndbuf_size=args.sndbuf_size, forced_decline=getattr(args, "decline", None), timeouts=Timeouts(test_link=args.test_link),
        limits=Limits(**dict(args.limit)),
    )  # fmt: skip
    return StackConfig(smc, devices, control_path=args.control, tcp_option=args.tcp_option)


class Progress:
    def __init__(self, totals: runner.Totals, enabled: bool) -> None:
        self.totals = totals
        self.enabled = enabled
        self.task: asyncio.Task | None = None
        self._last = (time.monotonic(), 0)

    def start(self) -> None:
        if self.enabled:
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            t = self.totals
            now, moved = time.monotonic(), t.bytes_sent + t.bytes_received
            rate = (moved - self._last[1]) / max(now - self._last[0], 1e-9) / 1e6
            self._last = (now, moved)
            modes = " ".join(f"{k} {v}" for k, v in t.modes.items())
            sys.stderr.write(
                f"\r{now - t.started:7.1f} s  {moved / 1e6:10.1f} MB  {rate:8.1f} MB/s  conns {t.connections} ({modes})  ops {t.ops}  errors {len(t.errors)}   "
            )
            sys.stderr.flush()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            sys.stderr.write("\n")


class UsageError(Exception):
    """The command line asks for something this run cannot do."""


def schedule_faults(host: Stack, args) -> None:
    """Loss now, port downs and ups at their times; a device that does not exist or has
    no port control is an error before anything runs."""
    first = next(iter(host.rdma.devs), None)
    plan = [(t, dev or first, False) for t, dev in args.fail_link] + [(t, dev or first, True) for t, dev in args.restore_link]
    try:
        for _, dev, _ in plan:
            if Capability.PORT_CONTROL not in host.capabilities(dev):
                raise ValueError(f"device {dev} has no port control (only soft devices)")
        if args.loss:
            for name in host.rdma.devs:
                host.set_faults(name, loss=args.loss)
    except ValueError as e:
        raise UsageError(str(e)) from None
    loop = asyncio.get_running_loop()
    for when, dev, up in plan:
        loop.call_later(when, host.set_port, dev, up)


def link_report(host: Stack, started: float) -> dict:
    """What the links went through: failovers (when, how long) and where the link groups ended."""
    snap = host.host.snapshot()
    every = [{**{k: v for k, v in fo.items() if k != "t"}, "at_s": round(fo["t"] - started, 3)} for fo in snap["failovers"]]
    # a failover moved connections (or failed to); a deleted link with nothing on it is a link
    # deletion, as smctop and smc-trace summary count them
    moved = [fo for fo in every if fo.get("conns") or fo.get("failed")]
    return {
        "failovers": moved, "link_deletions": [fo for fo in every if fo not in moved],
        "links_down": snap["stats"]["links_down"], "links_added": snap["stats"]["links_added"],
        "link_groups": [{"id": g["id"], "type": g["type"], "links": [f"{l['id']}:{l['device']}:{l['state']}" for l in g["links"]]}
                        for g in snap["lgrs"]],
    }  # fmt: skip


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def print_report(rep: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rep, indent=2, sort_keys=True))
        return
    print(f"mode {rep['mode']}: {_count(rep['connections'], 'connection')} in {rep['seconds']} s"
          + (f", interrupted by {rep['signal']}: what it did until then" if rep.get("interrupted") else ""))  # fmt: skip
    if rep.get("engine"):
        print(f"  engine:    {rep['engine']}")
    print("  modes:     " + (", ".join(f"{k} {v}" for k, v in rep["modes"].items()) or "none")
          + (f"  (SMC-R versions: {', '.join(f'v{k} {v}' for k, v in rep['versions'].items())})" if rep["versions"] else ""))  # fmt: skip
    for text, n in rep["fallback_details"].items():
        print(f"  fallback:  {text}  x{n}")
    print(f"  bytes:     sent {rep['bytes_sent']:,}  received {rep['bytes_received']:,}  ({units.rate(rep['throughput_mbs'] * 1e6)})")
    if rep["ops"]:
        print(f"  ops:       {rep['ops']:,} ({rep['ops_per_s']}/s)")
    if "latency_us" in rep:
        lat = rep["latency_us"]
        print(f"  latency:   p50 {units.us(lat['p50'])}  p90 {units.us(lat['p90'])}  p99 {units.us(lat['p99'])}  max {units.us(lat['max'])}")
    if "connect_ms_p50" in rep:
        print(f"  connect:   p50 {units.ms(rep['connect_ms_p50'])}")
    print(f"  verified:  {rep['verified']}/{rep['connections']}")
    links = rep.get("links")
    if links and (links["failovers"] or links["link_deletions"] or links["links_down"] or links["links_added"]):
        print(f"  links:     {links['links_down']} went down, {links['links_added']} added, {_count(len(links['failovers']), 'failover')}, "
              f"{_count(len(links['link_deletions']), 'link deletion')} that moved nothing")  # fmt: skip
        for fo in links["failovers"][:10]:
            print(f"  failover:  at {fo['at_s']} s link group {fo['lgr']} link {fo['from_link']} -> {fo['to_link']}:"
                  f" {_count(fo['conns'], 'connection')} in {units.ms(fo['duration_ms'])}"
                  + (f", {fo['failed']} failed" if fo.get("failed") else "") + f" ({fo['reason']})")  # fmt: skip
        for fo in links["link_deletions"][:10]:
            print(f"  deleted:   at {fo['at_s']} s link group {fo['lgr']} link {fo['from_link']}: no connection on it ({fo['reason']})")
        for g in links["link_groups"]:
            print(f"  now:       link group {g['id']} {g['type']}  {'  '.join(g['links'])}")
    for e in rep["errors"][:10]:
        print(f"  error:     {e}")


class EventsFile:
    """--events: every event as a JSON line. A write that fails (a full disk) ends the
    recording, not the run: the bus drops the writer and logs it at once, and ``close``
    names it for the report (the run then exits 1)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = open(path, "w")
        self.writer = JsonlWriter(self.file)
        self.bus = None

    def listen(self, bus) -> None:
        self.bus = bus
        bus.listen(self.writer)

    def close(self) -> str | None:
        failed = [e for fn, e in self.bus.failures if fn is self.writer] if self.bus is not None else []
        try:
            self.file.close()
        except OSError as e:  # what the buffer held
            failed.append(e)
        if not failed:
            return None
        e = failed[0]
        return f"events file {self.path}: {e.strerror if isinstance(e, OSError) and e.strerror else e}; the events after that were not written"


async def run_server(args) -> int:
    totals = runner.Totals()
    events = EventsFile(args.events) if args.events else None
    try:
        async with Stack(stack_config(args, "server")) as host:
            if events:
                events.listen(host.bus)
            done = asyncio.Event()
            served = 0

            async def handle(reader, writer):
                nonlocal served
                await runner.serve(reader, writer, totals)
                served += 1
                if args.count and served >= args.count:
                    done.set()

            try:
                server = await host.start_server(handle, *args.listen, smc=not args.no_smc)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UsageError(f"--listen {hostport_text(*args.listen)}: the port is in use (another server?)") from None
                raise
            schedule_faults(host, args)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
            if args.duration:
                loop.call_later(args.duration, done.set)
            progress = Progress(totals, args.progress if args.progress is not None else sys.stderr.isatty())
            progress.start()
            banner = (f"smc-traffic server on {hostport_text(*args.listen)}" + (" (plain TCP)" if args.no_smc else "")
                      + (f", declining with {codes.format_reason(args.decline)}" if args.decline else "")
                      + (f"; engine {host.engine_summary()}" if host.rdma.devs else ""))  # fmt: skip
            print(banner, file=sys.stderr if args.json else sys.stdout, flush=True)  # stdout stays pure JSON
            await done.wait()
            server.close()
            if server.tasks:
                await asyncio.wait(server.tasks, timeout=5)
            progress.stop()
            links = link_report(host, totals.started)
            engine = host.engine_summary()
    finally:
        failed = events.close() if events else None
    if failed:
        totals.errors.append(failed)
    rep = totals.report("server")
    rep["links"] = links
    rep["engine"] = engine
    print_report(rep, args.json)
    return 1 if totals.errors else 0


async def run_client(args) -> int:
    totals = runner.Totals()
    cfg = stack_config(args, "client")
    loop = asyncio.get_running_loop()
    stopped_by: int | None = None  # the signal that ended the run early
    work: asyncio.Future | None = None

    def stop(signum: int) -> None:
        nonlocal stopped_by
        if stopped_by is not None:  # a second one: the first did not end it soon enough
            sys.stdout.flush()
            sys.stderr.write(f"\nsmc-traffic: {signal.Signals(signum).name} again; exiting without a report\n")
            os._exit(128 + signum)
        stopped_by = signum
        if work is not None:
            work.cancel()

    # SIGINT and SIGTERM end the workload, not the program: the report still comes, marked
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    events = EventsFile(args.events) if args.events else None
    try:
        async with Stack(cfg) as host:
            if events:
                events.listen(host.bus)
            src = client_source(cfg, args)
            local = (src, 0) if src else None

            async def open_conn():
                return await host.open_connection(*args.connect, smc=not args.no_smc, local_addr=local)

            schedule_faults(host, args)
            progress = Progress(totals, args.progress if args.progress is not None else sys.stderr.isatty())
            progress.start()
            direction = {"up": UP, "down": DOWN, "both": BOTH}[args.direction]
            jobs = []
            for i in range(args.connections):
                seed = args.seed * 1000 + i
                if args.mode == "bulk":
                    jobs.append(runner.bulk(open_conn, totals, direction=direction, total=args.bytes or 0, duration=args.duration, seed=seed))
                elif args.mode == "rr":
                    jobs.append(runner.rr(open_conn, totals, size=args.size, duration=args.duration, count=args.count, seed=seed))
                else:
                    jobs.append(runner.crr(open_conn, totals, size=args.size, duration=args.duration, count=args.count, seed=seed))
            work = asyncio.gather(*jobs)
            if stopped_by is not None:  # a signal while the stack started
                work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                if stopped_by is None:  # not ours: the run itself is being cancelled
                    raise
            except (ConnectionError, OSError) as e:
                totals.errors.append(f"{type(e).__name__}: {e}")
            totals.last_end = time.monotonic()  # the rate is the traffic's, not the wait below
            # stay for the last port change asked for, so the report shows what it did
            last = max([t for t, _ in args.fail_link + args.restore_link], default=None)
            if last is not None and stopped_by is None:
                await asyncio.sleep(max(0.0, totals.started + last + 0.5 - time.monotonic()))
            progress.stop()
            links = link_report(host, totals.started)
            engine = host.engine_summary()
    finally:
        failed = events.close() if events else None
    if failed:
        totals.errors.append(failed)
    rep = totals.report(args.mode)
    rep["links"] = links
    rep["engine"] = engine
    rep["interrupted"] = stopped_by is not None
    if stopped_by is not None:
        rep["signal"] = signal.Signals(stopped_by).name
    print_report(rep, args.json)
    if stopped_by is not None:
        return 128 + stopped_by  # the shell's code for a program a signal ended
    return 1 if totals.errors else 0


def resolve(host: str, port: int) -> tuple[tuple[str, int], int]:
    """--connect's address and family, looked up once before the run; UsageError naming the host."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise UsageError(f"--connect {hostport_text(host, port)}: cannot resolve host {host!r}: {reason}") from None
    return (addr[0], addr[1]), family


MODE_OPTIONS = {"bulk": ("--bytes", "--direction"), "rr": ("--size", "--count"), "crr": ("--size", "--count")}


def check_client(args) -> None:
    """What the options mean together; UsageError when a run would have no end, or for an
    option of another mode (it was ignored: --count 5 with a bulk ran for --duration). The
    mode's own defaults are filled in here."""
    given = {"--bytes": args.bytes is not None, "--direction": args.direction is not None, "--size": args.size is not None,
             "--count": args.count != 0}  # fmt: skip
    wrong = [o for o, set_ in given.items() if set_ and o not in MODE_OPTIONS[args.mode]]
    if wrong:
        raise UsageError(f"{' and '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --mode {args.mode} "
                         f"(its own: {', '.join(MODE_OPTIONS[args.mode])})")  # fmt: skip
    args.direction = "up" if args.direction is None else args.direction
    args.size = 64 if args.size is None else args.size
    bounded = args.bytes if args.mode == "bulk" else args.count
    if not args.duration and not bounded:
        end = "--bytes" if args.mode == "bulk" else "--count"
        raise UsageError(f"--duration 0 with no {end}: the run would never end; give a duration or {end}")


def client_source(cfg: StackConfig, args) -> str | None:
    """The address a client's connections leave from: an IPv4 connection from the first soft
    device's (its CLC then comes from its RoCE address, as a kernel's on one interface does);
    an IPv6 one cannot, and goes as the kernel routes it (None)."""
    if args.connect_family != socket.AF_INET or not cfg.devices or cfg.devices[0].provider != "soft":
        return None
    return cfg.devices[0].addr


def check_route(cfg: StackConfig, args) -> None:
    """UsageError when --connect cannot be reached from the address the client's connections
    leave from (client_source): a server on another host with the default device 127.1.0.1
    was an "Invalid argument" from the kernel, per connection."""
    src = client_source(cfg, args)
    if src is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((src, 0))
        except OSError:
            return  # not an address of this host: the device says so when it starts
        try:
            s.connect(args.connect)
        except OSError as e:
            default = "" if args.device else ", 127.1.0.1 by default"
            raise UsageError(f"--connect {hostport_text(*args.connect)}: cannot be reached from {src}, the address the client's "
                             f"connections leave from (its first --device{default}): {e.strerror}; "
                             "give --device this host's address towards the server") from None  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.role == "client" and (not 1 <= args.connections <= 10_000 or args.count < 0):
        ap.error("--connections must be at least 1 (at most 10,000) and --count not negative")
    if args.count < 0:
        ap.error("--count must not be negative")
    if args.role == "client":
        try:
            check_client(args)
            args.connect, args.connect_family = resolve(*args.connect)
        except UsageError as e:
            ap.error(str(e))
    try:
        cfg = stack_config(args, args.role)  # what the stack's configuration refuses is a usage error too
        if args.role == "client":
            check_route(cfg, args)
    except (ValueError, UsageError) as e:
        ap.error(str(e))
    try:
        return asyncio.run(run_server(args) if args.role == "server" else run_client(args))
    except (OSError, UsageError) as e:
        hint = "; give this one another address with --device" if isinstance(e, OSError) and e.errno == errno.EADDRINUSE and "RoCE device" in str(e) else ""
        print(f"smc-traffic: {e.strerror if isinstance(e, OSError) and e.strerror else e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # after the run's own handlers were gone
        print("smc-traffic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
