"""Where smctop's events come from. Every source feeds the model when polled and answers the
operator's actions it can carry out:

* :class:`DemoSource` (the default): the embedded demo topology (``smctop.demo``) in the
  app's own event loop, with traffic that runs until stopped; actions act on its stacks;
* :class:`AttachSource` (``--attach PATH``): a running stack's control socket; actions
  become control commands (``port``, ``decline``);
* :class:`ReplaySource` (``--replay FILE``): a recorded file (JSONL events, or an
  smc-trace pcapng capture through ``dissectors.capture``), with pause, step and seek;
* :class:`SyntheticSource`: the deterministic :mod:`smctop.synthetic` topology on a clock
  the caller moves (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import stat
import threading
import time
from collections import deque
from typing import Callable

from stack.events import BadRecord, Event, Skipped, check_record, read_jsonl
from stack.wire import codes

from .model import UNNAMED, Model
from .synthetic import SyntheticStack


def feed_timed(model: Model, events: list[Event]) -> None:
    """Feed events in time order, closing each model sample before the first event after it
    (for sources that deliver many seconds at once: a replay, the synthetic clock)."""
    model.feed_timed(events)


def snapshot_of(e: Event) -> dict | None:
    """The stack snapshot a ``stats`` event carries: a recording's start (what the stacks had
    when it began), the kernel source's polls."""
    if e.kind == "stats":
        snap = e.fields.get("snapshot")
        if isinstance(snap, dict):
            if snap.get("host") is None and e.host:  # a snapshot that names no host is its record's host's
                return {**snap, "host": e.host}
            return snap
    return None


def feed_seeded(model: Model, events: list[Event], notices=None) -> None:
    """``feed_timed``, with each snapshot a ``stats`` event carries applied in its place, so a
    recording begun mid-session starts from what its stacks already had (connections with
    their addresses and mode, link groups, links with QPNs and GIDs, counts)."""
    start = 0
    for i, e in enumerate(events):
        if e.kind == "stats":
            snap = snapshot_of(e)
            if snap is None:
                continue
            feed_timed(model, events[start : i + 1])
            start = i + 1
            try:
                model.apply_snapshot(snap)
            except BadRecord as err:
                if notices is not None:
                    notices.append(f"{e.host}: a snapshot left out: {err}")
    feed_timed(model, events[start:] if start else events)


def engine_text(engines) -> str:
    """'native', or 'native+python' when devices differ."""
    return "+".join(sorted({e for e in engines if e}))


class SourceError(Exception):
    """A source could not start or an action failed: the message is for the operator."""


class Source:
    label = "source"
    can: frozenset[str] = frozenset()  # of: traffic, fail_link, restore_link, decline, replay

    def __init__(self) -> None:
        self.traffic_on = False
        self.notices: deque[str] = deque(maxlen=50)  # what the source wants the operator to know

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def poll(self, model: Model) -> list[Event]:
        """Feed what arrived since the last poll into ``model``; returns the events fed."""
        return []

    def now(self) -> float | None:
        return None

    def stacks(self) -> list:
        """In-process stacks a recorder can attach to directly (their RoCE frames too)."""
        return []

    def every_event(self, on: bool) -> None:
        """Deliver every data-path event (on: a recording wants them all) or, where the
        source can, only what they add up to (see AttachSource)."""

    def describe(self) -> str:
        return self.label

    def engine(self) -> str:
        """What moves the RoCE frames of the watched stacks ("native", "python", "pyverbs",
        joined when they differ); empty when the source does not know."""
        return ""

    def _unavailable(self, what: str) -> SourceError:
        return SourceError(f"{what} is not available with the {self.label} source")

    async def set_traffic(self, on: bool) -> str:
        raise self._unavailable("traffic")

    async def fail_link(self) -> str:
        raise self._unavailable("failing a link")

    async def restore_link(self) -> str:
        raise self._unavailable("restoring a link")

    async def decline(self, reason: int | None) -> str:
        raise self._unavailable("forcing a fallback")


def _decline_text(reason: int | None) -> str:
    return f"the next connections fall back with {codes.format_reason(reason)}" if reason else "new connections may use SMC-R again"


# ---------------------------------------------------------------------------- the embedded demo


class DemoSource(Source):
    """smctop.demo's three hosts (its ``Demo`` topology), live in this event loop. Traffic runs
    until stopped: bulk both ways and two request/response connections alpha -> beta over
    SMC-R, a new connection to beta twice a second (so a forced decline shows), and ten a
    second to gamma, which declines them all."""

    label = "demo"
    can = frozenset({"traffic", "fail_link", "restore_link", "decline"})

    def __init__(self, *, traffic: bool = True, snapshot_interval: float = 1.0, queue: int = 200_000) -> None:
        super().__init__()
        self.want_traffic = traffic
        self.snapshot_interval = snapshot_interval
        self.queue = queue
        self.demo = None
        self.subs: dict = {}
        self._last_snapshot = float("-inf")
        self._tasks: list[asyncio.Task] = []
        self.port_down = False

    def stacks(self) -> list:
        return list(self.demo.hosts.values()) if self.demo is not None else []

    def engine(self) -> str:
        return engine_text(e for stack in self.stacks() for e in stack.engines().values())

    async def start(self) -> None:
        from . import demo as demo_mod

        self._mod = demo_mod
        self.demo = await demo_mod.Demo().start()
        self.subs = {name: stack.bus.subscribe(maxsize=self.queue) for name, stack in self.demo.hosts.items()}
        if self.want_traffic:
            await self.set_traffic(True)

    async def stop(self) -> None:
        if self.demo is not None:
            tasks, self._tasks, self.traffic_on = self._tasks, [], False
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=1.0) if tasks else None
            for sub in self.subs.values():
                sub.close()
            await self.demo.close()  # aborts what is still open: a task waiting for a close handshake ends here
            await asyncio.gather(*tasks, return_exceptions=True)
            self.demo = None

    def now(self) -> float | None:
        return asyncio.get_running_loop().time()

    def poll(self, model: Model) -> list[Event]:
        if self.demo is None:
            return []
        events: list[Event] = []
        for sub in self.subs.values():
            events.extend(sub.get_nowait())
        model.feed_many(events)
        now = self.now()
        if now - self._last_snapshot >= self.snapshot_interval:
            self._last_snapshot = now
            for stack in self.demo.hosts.values():
                if stack.host is not None:
                    model.apply_snapshot(stack.snapshot())
        rr = self.demo.totals.get("rr")
        if rr is not None and rr.latencies:
            model.add_latencies(rr.latencies)
            rr.latencies.clear()  # the demo's own list would otherwise grow for as long as smctop runs
        return events

    async def set_traffic(self, on: bool) -> str:
        if on and not self.traffic_on:
            from stack.traffic import runner
            from stack.traffic.protocol import BOTH

            d, m = self.demo, self._mod
            bulk, rr, crr, fb = (d.totals.setdefault(k, runner.Totals()) for k in ("bulk", "rr", "crr", "fallback"))
            forever = 7 * 86400.0  # smc-traffic carries the duration in 32-bit milliseconds
            self._tasks = [
                asyncio.create_task(runner.bulk(self._to(m.BETA), bulk, direction=BOTH, total=0, duration=forever, seed=1)),
                *(asyncio.create_task(runner.rr(self._to(m.BETA), rr, size=256, duration=forever, count=0, seed=10 + i)) for i in range(2)),
                asyncio.create_task(self._every(0.5, m.BETA, crr, 30)),  # new connections to beta: a forced decline shows here
                asyncio.create_task(self._every(0.1, m.GAMMA, fb, 20)),  # gamma declines every one (DIFFPREFIX)
            ]  # fmt: skip
            self.traffic_on = True
            return "traffic started: bulk and request/response to beta, new connections to beta (2/s) and gamma (10/s)"
        if not on and self.traffic_on:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            self.traffic_on = False
            return "traffic stopped"
        return "traffic already " + ("running" if on else "stopped")

    def _to(self, addr: str):
        alpha = self.demo.hosts["alpha"]
        return lambda: alpha.open_connection(addr, 5000, local_addr=(self._mod.ALPHA, 0))

    async def _every(self, period: float, addr: str, totals, seed: int) -> None:
        """A new connection every ``period`` seconds: one request, one response, close."""
        from stack.traffic import runner

        while True:
            try:
                await runner.crr(self._to(addr), totals, size=64, duration=1.0, count=1, seed=seed)
            except (ConnectionError, OSError) as e:
                self.notices.append(f"connection to {addr} failed: {e}")
            if asyncio.current_task().cancelling():  # stopped while a connection closed: stop here
                return
            await asyncio.sleep(period)

    async def fail_link(self) -> str:
        self.demo.hosts["beta"].set_port(self._mod.BETA, False)
        self.port_down = True
        return f"beta: port of {self._mod.BETA} pulled (link failure; connections fail over)"

    async def restore_link(self) -> str:
        self.demo.hosts["beta"].set_port(self._mod.BETA, True)
        self.port_down = False
        return f"beta: port of {self._mod.BETA} back up"

    async def decline(self, reason: int | None) -> str:
        for name in ("beta", "gamma"):
            default = self._mod.DIFFPREFIX if name == "gamma" else None
            self.demo.hosts[name].force_decline(reason if reason else default)
        return "beta and gamma: " + _decline_text(reason)


# ---------------------------------------------------------------------------- a control socket

REPLY_TIMEOUT = 5.0  # seconds a command waits for the stack's answer

# what the reader puts in the inbox besides the stack's lines (told apart by identity: no line a stack sends is one of them)
_CLOSED, _ATTACHED = {"type": "closed"}, {"type": "attached"}


class AttachSource(Source):
    """One or more running stacks' control sockets (``StackConfig(control_path=...)``)."""

    label = "attach"
    can = frozenset({"fail_link", "restore_link", "decline"})
    # the data path (cursors, CDCs, RDMA WRITEs, RMB fill) sampled by the stacks per connection
    # every COALESCE seconds: a request/response pair emits tens of thousands of such events a
    # second, building them cost the stacks two thirds of their rate and reading them cost
    # smctop more CPU than the traffic it watched (the view needs where each connection got
    # to, and the counts, which the sampled events carry)
    COALESCE = 0.1

    def __init__(self, paths: list[str], *, retry: float = 1.0, every_event: bool = False) -> None:
        super().__init__()
        self.paths = list(paths)
        self.always_every_event = every_event
        self.coalesce = 0.0 if every_event else self.COALESCE
        self.retry = retry  # seconds between tries to attach again to a socket that closed
        self.clients: dict[str, object] = {}  # path -> ControlClient
        self.hostnames: dict[str, str] = {}
        self.engines: dict[tuple[str, str], str] = {}  # (host, device) -> engine, from snapshots
        self.inbox: deque[tuple[str, dict]] = deque()
        self.tasks: list[asyncio.Task] = []
        self.devices: dict[str, list[str]] = {}  # path -> device names, from snapshots
        self._clock: tuple[float, float] | None = None  # (remote t, local monotonic)
        self.failed: tuple[str, str] | None = None  # (path, device) of the port we pulled
        self.closed: set[str] = set()  # paths whose socket is closed now (tried again every retry seconds)
        self.skipped = Skipped()  # bad lines from the sockets: counted, named, left out
        self.pending: dict[tuple[str, object], asyncio.Future] = {}  # (path, command id) -> its reply or error line
        self._ids = 0

    async def start(self) -> None:
        for path in self.paths:
            try:
                client = await self._attach(path)
            except OSError as e:
                raise SourceError(f"cannot attach to {path}: {e.strerror or e}") from None
            self.tasks.append(asyncio.create_task(self._read(path, client)))

    async def _attach(self, path: str):
        """Connect, subscribe to the events and ask for a snapshot (what the stack has now)."""
        from stack.runtime.control import ControlClient

        client = await ControlClient.connect(path)
        try:
            await self._subscribe(client)
            await client.send("snapshot")
        except OSError:
            await client.close()
            raise
        self.clients[path] = client
        return client

    async def _read(self, path: str, client) -> None:
        """Follow one socket for as long as the source runs: when it closes (the stack exited),
        try again every ``retry`` seconds, quietly, until a stack serves the path again."""
        while True:
            try:
                async for msg in client.messages(self.skipped):
                    if self._answer(path, msg):
                        continue
                    self.inbox.append((path, msg))
            except (ConnectionError, ValueError, asyncio.LimitOverrunError) as e:
                self.notices.append(f"{path}: {e}")
            await client.close()
            self.closed.add(path)
            for (p, _), fut in list(self.pending.items()):  # a command sent there has no answer coming
                if p == path and not fut.done():
                    fut.set_result({"type": "error", "error": "control socket closed before it answered"})
            self.inbox.append((path, _CLOSED))  # in order: what it sent before is fed first
            self.notices.append(f"{self.hostnames.get(path, path)}: control socket closed (trying again every {self.retry:g} s)")
            while True:
                await asyncio.sleep(self.retry)
                try:
                    client = await self._attach(path)
                    break
                except OSError:  # no stack there yet (refused, no such file): try again
                    continue
            self.closed.discard(path)
            self.inbox.append((path, _ATTACHED))
            self.notices.append(f"{self.hostnames.get(path, path)}: attached again")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients.values():
            await client.close()

    def every_event(self, on: bool) -> None:
        coalesce = 0.0 if on or self.always_every_event else self.COALESCE
        if coalesce == self.coalesce:
            return
        self.coalesce = coalesce
        for path, client in self.clients.items():  # a new subscription replaces the old one; nothing falls between
            if path not in self.closed:
                self.tasks.append(asyncio.ensure_future(self._resubscribe(path, client)))

    async def _subscribe(self, client) -> None:
        await client.send("subscribe", **({"coalesce": self.coalesce} if self.coalesce else {}))

    async def _resubscribe(self, path: str, client) -> None:
        try:
            await self._subscribe(client)
        except OSError as e:
            self.notices.append(f"{self.hostnames.get(path, path)}: {e.strerror or e}")

    def _answer(self, path: str, msg: dict) -> bool:
        """A ``reply`` or ``error`` to a command of ours goes to the one awaiting it (True);
        anything else (a snapshot, an event, an error to no command of ours) to the inbox."""
        if msg.get("type") not in ("reply", "error"):
            return False
        fut = self.pending.pop((path, msg.get("id")), None)
        if fut is None or fut.done():
            return False
        fut.set_result(msg)
        return "snapshot" not in msg  # a reply that carries a snapshot is applied too

    async def command(self, path: str, cmd: str, timeout: float = REPLY_TIMEOUT, **args) -> dict:
        """Send ``cmd`` to one stack and wait for its answer: the ``reply`` line; SourceError
        with the stack's words when it answers ``error`` (or none comes)."""
        host = self.hostnames.get(path, path)
        client = self.clients.get(path)
        if client is None or path in self.closed:
            raise SourceError(f"{host}: control socket closed")
        fut = asyncio.get_running_loop().create_future()
        # our own id (a string: the client's own are numbers), registered before the line goes
        # out, so an answer that comes while the send waits still finds it
        self._ids += 1
        key = (path, f"smctop-{self._ids}")
        self.pending[key] = fut
        try:
            await client.send(cmd, id=key[1], **args)
            msg = await asyncio.wait_for(fut, timeout)
        except OSError as e:
            raise SourceError(f"{host}: {cmd}: {e.strerror or e}") from None
        except asyncio.TimeoutError:
            raise SourceError(f"{host}: {cmd}: no answer within {timeout:g} s") from None
        finally:
            self.pending.pop(key, None)
        if msg.get("type") == "error":
            raise SourceError(f"{host} refused {cmd}: {str(msg.get('error'))[:300]}")
        return msg

    def engine(self) -> str:
        return engine_text(self.engines.values())

    def describe(self) -> str:
        names = [self.hostnames.get(p, p) for p in self.paths]
        return ("attach " + ", ".join(names) + (f" ({len(self.closed)} closed)" if self.closed else "")
                + (f", {self.skipped.count:,} bad records skipped" if self.skipped else ""))  # fmt: skip

    def _bad(self, path: str, error: Exception | str) -> None:
        self.skipped.add(path, error)
        if self.skipped.count <= 5 or self.skipped.count % 1000 == 0:
            self.notices.append(f"bad record from {self.hostnames.get(path, path)} skipped ({self.skipped.count:,} so far): {error}")

    def _saw(self, t: float) -> None:
        self._clock = (t, time.monotonic())

    def now(self) -> float | None:
        if self._clock is None:
            return None
        t, local = self._clock
        return t + (time.monotonic() - local)

    def poll(self, model: Model) -> list[Event]:
        events: list[Event] = []
        while self.inbox:
            path, msg = self.inbox.popleft()
            if msg is _CLOSED or msg is _ATTACHED:
                if path in self.hostnames:
                    if msg is _CLOSED:  # after all it sent: its stack is gone, and what it had open
                        model.host_gone(self.hostnames[path], self.now())
                    else:  # a new stack: its snapshot follows
                        model.host_back(self.hostnames[path])
                continue
            kind = msg.get("type")
            if kind == "event":
                try:
                    e = check_record(msg.get("event"))
                except BadRecord as err:
                    self._bad(path, err)
                    continue
                if not e.host:  # a record with "host": null: the stack on this socket's
                    e.host = self.hostnames.get(path) or path
                events.append(e)
                model.feed(e)
                self._saw(e.t)
            elif kind in ("snapshot", "reply") and "snapshot" in msg:
                raw = msg["snapshot"]
                if isinstance(raw, dict) and not raw.get("host"):  # names no host: the socket's path names it, as describe() does
                    raw = {**raw, "host": self.hostnames.get(path) or path}
                try:
                    snap = model.apply_snapshot(raw)  # checked there (stack.events.parse_snapshot)
                except BadRecord as err:
                    self._bad(path, err)
                    continue
                rdma = snap.get("rdma")
                if isinstance(rdma, dict):
                    for dev, info in rdma.items():
                        if isinstance(info, dict) and isinstance(info.get("engine"), str):
                            self.engines[(str(snap.get("host", "")), str(dev))] = info["engine"][:16]
                self.devices[path] = [d["name"] for d in snap.get("devices", [])]
                self.hostnames[path] = snap.get("host") or path
                if "t" in snap:
                    self._saw(snap["t"])
            elif kind == "hello":
                host = msg.get("host")
                self.hostnames[path] = host[:256] if type(host) is str and host else path
            elif kind == "error":
                self.notices.append(f"{self.hostnames.get(path, path)}: {str(msg.get('error'))[:300]}")
        return events

    def _target(self) -> tuple[str, str]:
        """The port to pull: the first device of the first host that has two (so a link can fail over)."""
        ranked = sorted(self.paths, key=lambda p: -len(self.devices.get(p, [])))
        for path in ranked:
            if self.devices.get(path):
                return path, self.devices[path][0]
        raise SourceError("no devices known yet (waiting for the first snapshot)")

    async def fail_link(self) -> str:
        path, device = self._target()
        await self.command(path, "port", device=device, up=False)
        self.failed = (path, device)
        return f"{self.hostnames.get(path, path)}: port of {device} pulled"

    async def restore_link(self) -> str:
        path, device = self.failed or self._target()
        await self.command(path, "port", device=device, up=True)
        self.failed = None
        return f"{self.hostnames.get(path, path)}: port of {device} back up"

    async def decline(self, reason: int | None) -> str:
        """Each stack's answer, as it came: who set it (with the reason it echoed), who refused."""
        paths = [p for p in self.paths if p in self.clients]
        answers = await asyncio.gather(*(self.command(p, "decline", reason=reason) for p in paths), return_exceptions=True)
        done: dict[int | None, list[str]] = {}
        refused = []
        for path, a in zip(paths, answers):
            if isinstance(a, SourceError):
                refused.append(str(a))
            elif isinstance(a, BaseException):
                raise a
            else:
                echoed = a.get("reason", reason)
                done.setdefault(echoed if type(echoed) is int else reason, []).append(self.hostnames.get(path, path))
        said = [f"{' and '.join(hosts)}: {_decline_text(r)}" for r, hosts in done.items()]
        if refused and not said:
            raise SourceError("; ".join(refused))
        return "; ".join(said + refused)


# ---------------------------------------------------------------------------- a recorded file


def load_events(path: str, skipped: Skipped | None = None) -> list[Event]:
    """A recorded file's events in time order: JSONL event records, or an smc-trace pcapng
    capture (read by ``dissectors.capture.read_events``). Records that do not match the
    event schema are left out and counted in ``skipped``."""
    skipped = skipped if skipped is not None else Skipped()
    try:
        # non-blocking: a FIFO is refused at once, not waited on for a writer that never comes
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SourceError(f"cannot read {path}: not a regular file")
            head = f.read(4096)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise SourceError(f"cannot read {path if isinstance(e, OSError) else repr(path)}: {getattr(e, 'strerror', None) or e}") from None
    if head.lstrip()[:1] in (b"{", b""):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                events = list(read_jsonl(f, skipped))
        except (ValueError, MemoryError) as e:
            raise SourceError(f"{path}: not a JSONL event file: {e}") from None
    else:
        try:
            capture = importlib.import_module("dissectors.capture")  # the smc-trace reader
        except ImportError:
            raise SourceError(f"{path} is not a JSONL event file, and pcapng replay needs dissectors.capture") from None
        events = []
        try:
            for e in capture.read_events(path, skipped):
                events.append(e)
        except (ValueError, OSError, getattr(capture, "CaptureError", ValueError)) as e:
            if not events:
                raise SourceError(f"{path}: {e}") from None
            # a capture cut short (tcpdump killed, a disk that filled): replay what it holds, as
            # smc-trace reads it, and say where it ends
            skipped.add(path, f"the file ends damaged after {len(events):,} events: {e}")
    for e in events:
        if not e.host:  # a record with "host": null (read as ""): named as the model names such a snapshot's host
            e.host = UNNAMED
    events.sort(key=lambda e: e.t)  # stable: events of one instant keep their order
    return events


LOAD_IN_BACKGROUND = 16 << 20  # bytes: a file this large is read on a thread while the screen is up


def file_size(path: str) -> int:
    """The size of a regular file to replay; SourceError names what is wrong."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise SourceError(f"cannot read {path if isinstance(e, OSError) else repr(path)}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"cannot read {path}: not a regular file")
    return st.st_size


COMPRESSION_GUESS = 8  # a compressed capture's bytes to read, per byte of the file (gzip of pcap: 3-10)


def load_cost(path: str) -> int:
    """About how many bytes replaying ``path`` reads: its size, or a guess at what it
    decompresses to (gzip, zstd, LZ4), so a large compressed capture is read in the background too."""
    size = file_size(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        kind = importlib.import_module("dissectors.compressed").kind  # the smc-trace reader's, as load_events reads it
    except (OSError, ImportError):
        return size
    return size * COMPRESSION_GUESS if kind(head) else size


class ReplaySource(Source):
    """Plays recorded events on their own clock: ``speed`` x real time, with pause, step
    (one event) and seek (backwards replays from the start into a cleared model)."""

    label = "replay"
    can = frozenset({"replay"})

    def __init__(self, path: str, *, speed: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 events: list[Event] | None = None, skipped: Skipped | None = None) -> None:  # fmt: skip
        super().__init__()
        self.path = path
        self.skipped = skipped if skipped is not None else Skipped()
        self.speed = speed
        self.clock = clock
        self.events = events if events is not None else []
        self._loaded = events is not None
        self.i = 0
        self.t = 0.0
        self.paused = False
        self._wall: float | None = None
        self._reset = False
        self._stepped = False  # paused by a step: the events at the same instant wait for the next step
        self._seeded = False  # the recording's starting snapshots are in the model
        self._loading: threading.Thread | None = None  # reading a large file in the background
        self._read: list[Event] = []
        self._size = 0
        self._load_started = 0.0
        self.fatal: str | None = None  # the file could not be replayed (read in the background): smctop ends with it

    async def start(self) -> None:
        """A small file is read here; a large one (LOAD_IN_BACKGROUND) on a thread, so that
        the screen, the keys and ``q`` work while it is read (the replay starts when it is)."""
        if not self._loaded:
            size = load_cost(self.path)
            if size >= LOAD_IN_BACKGROUND:
                self._size = size
                self._load_started = time.monotonic()
                self._loading = threading.Thread(target=self._load, name="smctop replay load", daemon=True)  # q does not wait for it
                self._loading.start()
                return
            self.events = load_events(self.path, self.skipped)
            self._loaded = True
        self._ready()

    def _load(self) -> None:
        try:
            self._read = load_events(self.path, self.skipped)
        except SourceError as e:
            self.fatal = str(e)
        except MemoryError:
            self.fatal = f"{self.path}: not enough memory to replay it"

    def _ready(self) -> None:
        if self.skipped:
            self.notices.append(f"{self.path}: {self.skipped.summary()}")
        if not self.events:
            raise SourceError(f"{self.path}: no events to replay")
        self.t = self.events[0].t

    @property
    def loading(self) -> bool:
        """The file is still being read (in the background)."""
        if self._loading is None:
            return False
        if self._loading.is_alive():
            return True
        self._loading = None
        if self.fatal is None:
            self.events, self._read, self._loaded = self._read, [], True
            try:
                self._ready()
            except SourceError as e:
                self.fatal = str(e)
        self._wall = None  # the replay's clock starts now
        return False

    @property
    def start_t(self) -> float:
        return self.events[0].t if self.events else 0.0

    @property
    def end_t(self) -> float:
        return self.events[-1].t if self.events else 0.0

    @property
    def done(self) -> bool:
        return not self.loading and self.i >= len(self.events)

    def describe(self) -> str:
        if self.loading:
            return f"replay {self.path}: reading about {self._size / 1e6:,.0f} MB, {time.monotonic() - self._load_started:.0f} s (q quits)"
        if self.fatal:
            return f"replay {self.path}: {self.fatal}"
        state = "paused" if self.paused else ("at the end" if self.done else f"playing {self.speed:g}x")
        bad = f", {self.skipped.count:,} bad records skipped" if self.skipped else ""
        return f"replay {self.path} {self.position()}, {state}{bad}"

    def position(self) -> str:
        """Where the replay is: its clock against the recording's length, and the events fed."""
        return f"{self.t - self.start_t:.1f}/{self.end_t - self.start_t:.1f} s, event {self.i}/{len(self.events)}"

    def now(self) -> float | None:
        return self.t if self.events else None

    def poll(self, model: Model) -> list[Event]:
        if self.loading or self.fatal:
            return []
        wall = self.clock()
        if self._wall is not None and not self.paused and not self.done:
            self.t = min(self.t + (wall - self._wall) * self.speed, self.end_t)
        self._wall = wall
        if self._reset:
            self._restart(model, self.t)
        if self.i == 0:
            self._seed(model)
        if self.paused and self._stepped:
            return []  # a step fed exactly one event; others of its instant wait for the next
        return self._feed_until(model, self.t)

    def _restart(self, model: Model, t: float) -> None:
        """A seek back: a cleared model, from the last point before ``t`` where every host's
        state is in a recorded snapshot (smc-trace records each stack's periodic ones), so
        that a seek in a long recording replays seconds, not the whole file; from the start
        when there is no such point."""
        model.clear()
        self._reset = self._seeded = False
        self.i = 0
        chosen: dict[str, int] = {}  # host -> its last snapshot at or before t
        first: dict[str, int] = {}  # host -> its first event (the recorder's own drop records aside)
        for i, e in enumerate(self.events):
            if e.t > t:
                break
            if e.host != "smc-trace":
                first.setdefault(e.host, i)
            if e.kind == "stats" and snapshot_of(e) is not None:
                chosen[e.host] = i
        if not chosen:
            return
        start = min(chosen.values())
        if start == 0 or any(h not in chosen for h, i in first.items() if i < start):
            return  # a host with events before that point and no snapshot of it: from the start
        for i in sorted(chosen.values()):
            e = self.events[i]
            try:
                model.apply_snapshot(snapshot_of(e))
            except BadRecord:
                return self._restart_from_zero(model)
        self._seeded = True  # (the recording's starting snapshots are older than these)
        self.i = start  # the snapshots are applied again in place as the feed passes them

    def _restart_from_zero(self, model: Model) -> None:
        model.clear()
        self.i = 0
        self._seeded = False

    def _seed(self, model: Model) -> None:
        """Before the first event: each host's state when the recording began (the snapshot
        the recorder took as it attached: events of the first milliseconds come before it in
        time, but they are in it too)."""
        if self._seeded:
            return
        self._seeded = True
        hosts = set()
        for e in self.events[:10_000]:
            snap = snapshot_of(e)
            if snap is not None and e.fields.get("cause") == "recording started" and e.host not in hosts:
                hosts.add(e.host)
                try:
                    model.apply_snapshot(snap)
                except BadRecord as err:
                    self.notices.append(f"{e.host}: the recording's starting snapshot left out: {err}")

    def _feed_until(self, model: Model, t: float) -> list[Event]:
        events = self.events
        start = self.i
        end = start
        while end < len(events) and events[end].t <= t:
            end += 1
        self.i = end
        fed = events[start:end]
        feed_seeded(model, fed, self.notices)
        return fed

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        self._stepped = False
        return self.paused

    def step(self, model: Model) -> Event | None:
        """Pause, and play exactly one more event (the next poll adds none)."""
        self.paused = True
        self._stepped = True
        if self.loading or self.fatal:
            return None
        if self._reset:  # a seek back not yet played: replay up to it first
            self._restart(model, self.t)
            if self.i == 0:
                self._seed(model)
            self._feed_until(model, self.t)
        elif self.i == 0:
            self._seed(model)
        if self.done:
            return None
        e = self.events[self.i]
        self.t = max(self.t, e.t)
        self.i += 1
        feed_seeded(model, [e], self.notices)
        return e

    def seek(self, delta: float) -> float:
        """Move the replay clock by ``delta`` seconds; backwards replays from the start (the
        events are in memory: the file is read once)."""
        target = min(max(self.t + delta, self.start_t), self.end_t)
        if target < self.t:
            self._reset = True
        self.t = target
        self._stepped = False
        return target - self.start_t


# ---------------------------------------------------------------------------- the kernel's SMC-R


QUIT_DRAIN = 2.0  # seconds the kernel source's trace reader gets at quit (smckernel's own default is a minute)


class KernelTuiSource(Source):
    """The Linux kernel's own SMC-R (``smckernel.source.KernelSource``): smc_diag and
    SMC_GEN_NETLINK polled ``rate`` times a second and diffed into our events, tracepoints and
    probes where the process may (root); its snapshots (``stats`` events) are applied to the
    model as a stack's are. The kernel is watched, not driven: no actions."""

    label = "kernel"
    can = frozenset()

    def __init__(self, netns: str | None = None, rate: float = 1.0, factory: Callable | None = None, host: str | None = None,
                 trace_tag: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.netns, self.rate, self.host, self.trace_tag = netns, rate, host, trace_tag
        self.factory = factory  # tests give a KernelSource stand-in
        self.src = None
        self.inbox: deque[Event] = deque()
        self._sizes: dict[tuple, tuple] = {}  # (host, conn) -> (rmb_size, peer_rmb_size), from conn.mode
        self._cursors: dict[tuple, tuple[int, int] | None] = {}  # (host, conn, side) -> the last producer cursor

    async def start(self) -> None:
        from smckernel.kio import KernelUnavailable
        from smckernel.source import KernelSource

        make = self.factory or (lambda: KernelSource(rate=self.rate, netns=self.netns, host=self.host, trace_tag=self.trace_tag))
        try:
            self.src = make()
            # at quit what the trace reader has not read has nowhere to go (smctop's recording is
            # closed first): waiting for it would hold q for up to a minute on a loaded host
            self.src.drain_timeout = QUIT_DRAIN
            self.src.add_listener(self.inbox.append)  # called on the source's threads; deque.append is atomic
            await asyncio.get_running_loop().run_in_executor(None, self.src.start)
        except KernelUnavailable as e:
            raise SourceError(f"the kernel's SMC-R{self._where()}: {e.strerror}") from None
        except ValueError as e:
            raise SourceError(f"the kernel's SMC-R{self._where()}: {e}") from None
        for note in self.src.notes:
            self.notices.append(f"kernel{self._where()}: {note}")

    def _where(self) -> str:
        return f" (netns {self.netns})" if self.netns else ""

    async def stop(self) -> None:
        if self.src is not None:
            src, self.src = self.src, None
            await asyncio.get_running_loop().run_in_executor(None, src.close)

    def poll(self, model: Model) -> list[Event]:
        events = []
        while self.inbox:
            events.append(self.inbox.popleft())
        events = self._moved(events)
        feed_seeded(model, events, self.notices)
        return events

    def _moved(self, events: list[Event]) -> list[Event]:
        """Without the per-call probes (unprivileged, or another process holds them), what a
        connection moved comes from its cursors: each snapshot's tx or rx producer cursor
        against the one before, in bytes (the wrap counter times the buffer, 16 bits), given
        to the model as the cursor event's ``len``, as the probes give theirs; so rates are
        live at the poll rate rather than once per stats snapshot."""
        installed = getattr(getattr(self.src, "tracker", None), "installed", None) or set()
        out = []
        for e in events:
            f = e.fields
            if e.kind == "conn.mode" and e.conn is not None:
                self._sizes[(e.host, e.conn)] = (f.get("rmb_size"), f.get("peer_rmb_size"))
            elif e.kind == "conn.state" and f.get("new") == "CLOSED":  # forgotten with the connection
                self._sizes.pop((e.host, e.conn), None)
                self._cursors.pop((e.host, e.conn, "tx"), None)
                self._cursors.pop((e.host, e.conn, "rx"), None)
            elif e.kind == "conn.cursor" and f.get("source") == "snapshot" and isinstance(f.get("prod"), str) and "len" not in f:
                side = f.get("side")
                key = (e.host, e.conn, side)
                try:
                    w, _, n = f["prod"].partition(":")
                    cur = (int(w), int(n))
                except ValueError:
                    cur = None
                last, self._cursors[key] = self._cursors.get(key), cur
                if side not in ("tx", "rx") or cur is None or last is None or ("sendmsg" if side == "tx" else "recvmsg") in installed:
                    out.append(e)
                    continue
                size = self._sizes.get((e.host, e.conn), (None, None))[side == "tx"]  # tx: the peer's RMB; rx: ours
                d = ((cur[0] - last[0]) & 0xFFFF) * size + cur[1] - last[1] if size else 0
                if 0 < d < size << 15:  # forward, by less than half the counters' range
                    e = Event(e.t, e.kind, e.host, e.lgr, e.link, e.conn, {**f, "len": d})
            out.append(e)
        return out

    def now(self) -> float | None:
        return time.monotonic()  # the kernel source's events carry CLOCK_MONOTONIC

    def describe(self) -> str:
        host = getattr(self.src, "host", None) or self.host or "this host"
        return f"kernel {host}"


# ---------------------------------------------------------------------------- several at once


class CombinedSource(Source):
    """Several sources in one view: ``smctop --attach PATH --kernel`` watches our stack and a
    kernel on this host together, so a connection's two ends appear side by side (each host
    under its own name). Actions go to the first part that can do them; notices are gathered."""

    label = "combined"

    def __init__(self, parts: list[Source]) -> None:
        super().__init__()
        self.parts = list(parts)
        self.can = frozenset().union(*(p.can for p in self.parts))

    async def start(self) -> None:
        started: list[Source] = []
        try:
            for part in self.parts:
                await part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                await part.stop()
            raise

    async def stop(self) -> None:
        for part in reversed(self.parts):
            await part.stop()

    def poll(self, model: Model) -> list[Event]:
        events: list[Event] = []
        for part in self.parts:
            events += part.poll(model)
            while part.notices:
                self.notices.append(part.notices.popleft())
        return events

    def now(self) -> float | None:
        return next((t for t in (p.now() for p in self.parts) if t is not None), None)

    def stacks(self) -> list:
        return [s for p in self.parts for s in p.stacks()]

    def every_event(self, on: bool) -> None:
        for p in self.parts:
            p.every_event(on)

    def describe(self) -> str:
        return " + ".join(p.describe() for p in self.parts)

    def engine(self) -> str:
        return ", ".join(e for e in dict.fromkeys(p.engine() for p in self.parts) if e)

    def _doer(self, what: str, action: str) -> Source:
        part = next((p for p in self.parts if action in p.can), None)
        if part is None:
            raise self._unavailable(what)
        return part

    async def fail_link(self) -> str:
        return await self._doer("failing a link", "fail_link").fail_link()

    async def restore_link(self) -> str:
        return await self._doer("restoring a link", "restore_link").restore_link()

    async def decline(self, reason: int | None) -> str:
        return await self._doer("forcing a fallback", "decline").decline(reason)


# ---------------------------------------------------------------------------- synthetic (tests, benchmarks)


class SyntheticSource(Source):
    """The synthetic topology on a clock that only :meth:`advance` moves: every whole second
    it passes produces one :meth:`SyntheticStack.step` of events at that second."""

    label = "synthetic"
    can = frozenset({"traffic", "fail_link", "restore_link", "decline"})

    def __init__(self, stack: SyntheticStack | None = None, *, start: float = 1000.0) -> None:
        super().__init__()
        self.stack = stack or SyntheticStack()
        self.t = start
        self.pending: list[Event] = list(self.stack.setup(start))
        self.calls: list[tuple] = []
        self.traffic_on = self.stack.traffic

    def advance(self, seconds: float) -> None:
        end = self.t + seconds
        second = int(self.t) + 1
        while second <= end:
            self.pending.extend(self.stack.step(float(second)))
            second += 1
        self.t = end

    def now(self) -> float | None:
        return self.t

    def poll(self, model: Model) -> list[Event]:
        events, self.pending = self.pending, []
        feed_timed(model, events)
        for info in self.stack.host_info(self.t):  # the host-wide part of a snapshot (devices, listeners, counters)
            model.apply_host_info(info)
        return events

    async def set_traffic(self, on: bool) -> str:
        self.calls.append(("traffic", on))
        self.stack.set_traffic(on)
        self.traffic_on = on
        return "traffic " + ("started" if on else "stopped")

    async def fail_link(self) -> str:
        self.calls.append(("fail_link",))
        self.pending.extend(self.stack.fail_link(self.t))
        return "beta: port of 127.30.0.2 pulled"

    async def restore_link(self) -> str:
        self.calls.append(("restore_link",))
        self.pending.extend(self.stack.restore_link(self.t))
        return "beta: port of 127.30.0.2 back up"

    async def decline(self, reason: int | None) -> str:
        self.calls.append(("decline", reason))
        self.stack.set_decline(reason)
        return "gamma: " + _decline_text(reason)
