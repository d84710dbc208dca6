"""The kernel source: the kernel's own SMC-R as a stream of our events.

:class:`KernelSource` polls smc_diag and SMC_GEN_NETLINK at a set rate (unprivileged),
reads the smc tracepoints and our probes through a private tracefs instance (root), and
optionally captures the RoCEv2 frames on the netdevs (CAP_NET_RAW); a
:class:`~smckernel.tracker.Tracker` turns all of it into events. Consumers get them by a
callback (``add_listener``, called on the source's threads: be quick), by an asyncio
iterator (``async for e in source.events()``), and the latest :class:`Snapshot` as
``source.latest``. What the process may not do is said once, in ``notes``, one line per
missing privilege or feature.

    with KernelSource(rate=2.0) as src:       # opens, starts its threads
        src.add_listener(print)
        time.sleep(10)

    snap = snapshot_once()                    # one reading, for --once
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys
import threading
import time
from typing import AsyncIterator, Callable, Iterable

from stack.events import Event

from . import genl as kgenl
from . import kio
from . import netlink as nl
from .model import RawDumps, Snapshot, from_kernel
from .trace import PROBES, REPLACES
from .tracker import Tracker

SO_NETNS_COOKIE = 71
# the share of the time a process's polls may take: a poll that costs more stretches the
# interval to the next (on a loaded one-CPU VM a poll of three namespaces took 0.56 s at two
# polls a second each, and the trace reader, starved, fell minutes behind)
POLL_SHARE = 0.5
POLLER_WAIT = 5.0  # seconds stop() waits for the poller to end its poll
# the genl dumps a poll reads, in this order; GET_LINK_SMCR includes the link groups
POLL_CMDS = (kgenl.GET_SYS_INFO, kgenl.GET_LINK_SMCR, kgenl.GET_DEV_SMCR, kgenl.GET_STATS, kgenl.GET_FBACK_STATS, kgenl.DUMP_UEID)


def default_host(netns: str | None) -> str:
    """This host's name, with the namespace's (``vm-a/ns1``; ``vm-a/pid123`` for a /proc path)."""
    host = socket.gethostname()
    return f"{host}/{kio.netns_label(netns)}" if netns else host


def hosts_for(namespaces: list[str | None], host: str | None = None) -> list[str]:
    """One host name per namespace read, all different: ``host`` (default this host's name)
    alone for this process's namespace, ``host/label`` for the others; a label two paths
    share gets ``#2``, ``#3``... so that two namespaces' rows never merge."""
    base = host or socket.gethostname()
    out: list[str] = []
    for ns in namespaces:
        name = f"{base}/{kio.netns_label(ns)}" if ns is not None else base
        if name in out:
            n = 2
            while f"{name}#{n}" in out:
                n += 1
            name = f"{name}#{n}"
        out.append(name)
    return out


class KernelReader:
    """The netlink side: one sock_diag and one generic netlink channel in a namespace, read
    into :class:`RawDumps` (I/O only; ``smckernel.model.from_kernel`` parses)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.notes: list[str] = []
        self.diag: kio.Diag | None = None
        self.genl: kio.Genl | None = None
        try:
            self.diag = kio.Diag(netns)
            _, err, _ = nl.dump_bodies(self.diag.dump(0))
            if err == -errno.ENOENT:
                self.diag.close()
                self.diag = None
                self.notes.append("smc_diag: no sock_diag handler for AF_SMC: the smc_diag module is not loaded (modprobe smc_diag, as root)")
        except kio.KernelUnavailable as e:
            self.diag = None
            self.notes.append(f"smc_diag: {e.strerror}")
        try:
            self.genl = kio.Genl(netns)
        except kio.KernelUnavailable as e:
            self.notes.append(f"SMC_GEN_NETLINK: {e.strerror}")
        if self.diag is None and self.genl is None:
            raise kio.KernelUnavailable(errno.ENOENT, "neither smc_diag nor SMC_GEN_NETLINK answers: " + "; ".join(self.notes))
        self.cmds = []
        if self.genl is not None:
            fam = self.genl.family
            for cmd in POLL_CMDS:
                if fam.can_dump(cmd):
                    self.cmds.append(cmd)
                elif cmd == kgenl.GET_LINK_SMCR and fam.can_dump(kgenl.GET_LGR_SMCR):
                    self.cmds.append(kgenl.GET_LGR_SMCR)
                    self.notes.append("this kernel has no GET_LINK_SMCR: link groups without their links")
                else:
                    self.notes.append(f"this kernel has no SMC_NETLINK_{kgenl.COMMANDS[cmd]} (Linux {kgenl.SINCE.get(cmd, '?')}+): "
                                      "its part is unknown")  # fmt: skip
        self.net_cookie = self._cookie()
        self._ifnames: dict[int, str] = {}

    def _cookie(self) -> int | None:
        ch = self.genl.channel if self.genl is not None else self.diag.channel if self.diag is not None else None
        if ch is None:
            return None
        try:
            return struct.unpack("=Q", ch.sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        except OSError:
            return None

    def ifnames(self) -> dict[int, str]:
        try:
            self._ifnames = dict(kio.in_netns(self.netns, socket.if_nameindex))
        except OSError:
            pass
        return self._ifnames

    def read(self) -> tuple[RawDumps, set[str]]:
        """One poll: the raw replies, and which parts are complete (read without error)."""
        raw = RawDumps(ifnames=self.ifnames(), net_cookie=self.net_cookie)
        complete: set[str] = set()
        if self.genl is not None:
            raw.family = self.genl.family_reply
            for cmd in self.cmds:
                try:
                    data = self.genl.dump(cmd)
                except (kio.KernelUnavailable, OSError, nl.FormatError) as e:
                    raw.errors.append(f"SMC_NETLINK_{kgenl.COMMANDS[cmd]}: {getattr(e, 'strerror', None) or e}")
                    continue
                raw.genl[cmd] = data
                try:
                    _, err, interrupted = nl.dump_bodies(data)
                except nl.FormatError:
                    continue
                if err or interrupted:
                    continue
                if cmd == kgenl.GET_LINK_SMCR:
                    complete.update(("link_groups", "links"))
                elif cmd == kgenl.GET_LGR_SMCR:
                    complete.add("link_groups")
                elif cmd == kgenl.GET_DEV_SMCR:
                    complete.add("devices")
        if self.diag is not None:
            try:
                raw.diag = self.diag.dump()
                _, err, interrupted = nl.dump_bodies(raw.diag)
                if not err and not interrupted:
                    complete.add("connections")
            except (kio.KernelUnavailable, OSError, nl.FormatError) as e:
                raw.errors.append(f"smc_diag: {getattr(e, 'strerror', None) or e}")
        return raw, complete

    def close(self) -> None:
        for ch in (self.diag, self.genl):
            if ch is not None:
                ch.close()


def snapshot_once(netns: str | None = None, host: str | None = None, now: float | None = None) -> Snapshot:
    """One reading of the kernel's SMC state (for ``--once``); connections numbered 1, 2, ..."""
    reader = KernelReader(netns)
    try:
        raw, complete = reader.read()
    finally:
        reader.close()
    snap = from_kernel(raw, time.monotonic() if now is None else now, host or default_host(netns), netns)
    snap.notes[:0] = reader.notes
    Tracker(snap.host, stats_every=None).snapshot(snap, complete)  # numbers the connections
    return snap


def snapshot_many(netns: list[str] | str | None = None, host: str | None = None, now: float | None = None) -> list[Snapshot]:
    """One reading of each namespace ``--netns`` values name (``smckernel.kio.resolve_netns``:
    none is this one, ``all`` every one), each under its own host name (``hosts_for``)."""
    namespaces = kio.resolve_netns(netns)
    if len(namespaces) == 1 and namespaces[0] is not None and host is not None:
        return [snapshot_once(namespaces[0], host, now)]  # one namespace, named by the caller as before
    return [snapshot_once(ns, h, now) for ns, h in zip(namespaces, hosts_for(namespaces, host))]


def sources_for(netns: list[str] | str | None = None, host: str | None = None, **kwargs) -> list["KernelSource"]:
    """One :class:`KernelSource` per namespace ``--netns`` values name (see ``snapshot_many``),
    each with its own host name and, as root, its own trace session; ``kwargs`` go to each."""
    namespaces = kio.resolve_netns(netns)
    if len(namespaces) == 1:
        return [KernelSource(netns=namespaces[0], host=host, **kwargs)]
    srcs = [KernelSource(netns=ns, host=h, trace_tag=i, **kwargs) for i, (ns, h) in enumerate(zip(namespaces, hosts_for(namespaces, host)))]
    for src in srcs:
        src.siblings = srcs  # one process: they share its CPU (poll budget) and stop polling together (close)
    return srcs


class KernelSource:
    """The kernel's SMC as events (see the module's docstring). ``trace``: None reads the
    tracepoints and probes when the process may (root), True requires them, False skips
    them; ``probes``: all of smckernel.trace.PROBES, none, or the names wanted (cdc_rx and
    sendmsg/recvmsg fire per message and per call: leave them out on a busy host);
    ``capture``: netdev names to capture RoCEv2 frames on, or "auto" (the netdevs of the
    SMC-R devices), None for none."""

    def __init__(self, rate: float = 1.0, netns: str | None = None, host: str | None = None, trace: bool | None = None,
                 probes: bool | Iterable[str] = True, capture: list[str] | str | None = None, stats_every: float | None = 10.0,
                 raw_trace_log: str | None = None, queue_size: int = 100_000, trace_tag: int = 0) -> None:  # fmt: skip
        if rate <= 0:
            raise ValueError("rate must be a positive number of polls per second")
        self.interval = 1.0 / rate
        self.netns = netns
        self.host = host or default_host(netns)
        self.want_trace, self.probes, self.want_capture = trace, probes, capture
        self.stats_every = stats_every
        self.raw_trace_log = raw_trace_log
        self.trace_tag = trace_tag  # several sources in one process (one per namespace): each its own trace session
        self.queue_size = queue_size
        self.notes: list[str] = []
        self.latest: Snapshot | None = None
        self.complete: set[str] = set()
        self.tracker = Tracker(self.host, byteorder=sys.byteorder, stats_every=stats_every)
        self.reader: KernelReader | None = None
        self.tracing = None
        self.captures: list = []
        self.tracepoints: list[str] = []  # enabled (kept after close, for status)
        self.capturing: list[str] = []
        self.frames = self.frames_dropped = 0  # of closed captures
        self.net_cookie: int | None = None
        self.polls = 0
        self.poll_seconds = 0.0  # time spent reading and parsing (the poll cost)
        self.clock_offset_ns = time.time_ns() - time.monotonic_ns()  # wall minus monotonic: frame times to event times
        self._listeners: list[Callable[[Event], None]] = []
        self._frame_listeners: list[Callable] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.emitted = 0
        self.routes: dict[int, KernelSource] = {}  # net cookie -> the sibling whose records this session's probes also take
        self.siblings: list[KernelSource] = [self]  # the sources of this process (sources_for: one per namespace)
        self.drain_timeout = 60.0  # seconds close() lets the trace readers catch up (TraceSession.drain), all siblings together
        self._drain_until: float | None = None  # set when the first sibling closes
        self._hurried = threading.Event()  # hurry(): the stop waits for nothing more
        self._stopped = False  # stop() has ended the readers (release() then only removes)
        self.stretched = 0  # polls whose next one came later than the rate asks (POLL_SHARE)

    # ------------------------------------------------------------------ life

    def __enter__(self) -> "KernelSource":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Open the netlink channels, and tracing and capture as far as allowed."""
        if self.reader is not None:
            return
        self.reader = KernelReader(self.netns)
        self.notes.extend(self.reader.notes)
        self.tracker.net_cookie = self.net_cookie = self.reader.net_cookie
        if self.want_trace is not False:
            self._open_tracing()
        if self.want_capture:
            self._open_capture()

    def _open_tracing(self) -> None:
        from .tracing import TraceSession

        try:
            self.tracing = TraceSession(self.reader.net_cookie if self.reader else None, probes=self.probes, raw_log=self.raw_trace_log,
                                        tag=self.trace_tag)  # fmt: skip
        except kio.KernelUnavailable as e:
            if self.want_trace:
                raise
            self.notes.append(f"no tracepoints or probes: {e.strerror}")
            return
        self.notes.extend(self.tracing.notes)
        self.tracker.installed = set(self.tracing.installed)
        self.tracker.trace_clock_mono = self.tracing.clock_mono
        self.tracepoints = list(self.tracing.tracepoints)
        if len(self.siblings) > 1:
            self._share_call_probes()

    def _share_call_probes(self) -> None:
        """The probes on tracepoints (sendmsg, recvmsg, link_down) are the system's once: a
        namespace whose session could not have them reads them through the session of another
        namespace of this process, which widens its filter and hands their records over."""
        call = {name for name, (kind, _) in PROBES.items() if kind == "t"}
        missing = call - self.tracker.installed
        if not missing or self.tracing is None or self.net_cookie is None:
            return
        for owner in self.siblings:
            if owner is self or owner.tracing is None or not (missing & owner.tracker.installed):
                continue
            got = set(owner.tracing.share_with(self.net_cookie)) & missing
            if not got:
                continue
            with owner._lock:
                owner.routes[self.net_cookie] = self
            self.tracker.installed |= got
            self.tracing.disable_tracepoints([REPLACES[n] for n in sorted(got) if n in REPLACES])
            self.tracepoints = [tp for tp in self.tracepoints if tp not in {REPLACES.get(n) for n in got}]
            self.notes.append(f"{', '.join(sorted(got))}: read through the probes of {owner.host}'s trace session "
                              "(a probe on a tracepoint is the system's once)")  # fmt: skip
            return

    def _open_capture(self) -> None:
        from .capture import Capture

        names = self.want_capture
        if names == "auto":
            snap = snapshot_once(self.netns, self.host)
            names = sorted({p.net_dev for d in snap.devices for p in d.ports if p.net_dev})
            if not names:
                self.notes.append("capture: no SMC-R device has a netdev here")
                return
        for name in names if isinstance(names, list) else [names]:
            try:
                self.captures.append(Capture(name, self.netns))
                self.capturing.append(name)
            except kio.KernelUnavailable as e:
                self.notes.append(f"no capture on {name}: {e.strerror}")

    def start(self) -> None:
        """Open, take the first snapshot, then start the poller, the trace reader and the captures."""
        self.open()
        if self.tracing is not None:
            self.tracing.start(self._on_trace)
        for cap in self.captures:
            cap.start(self._on_frame)
        self.poll()
        self._poller = threading.Thread(target=self._run, name="smckernel poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop reading (``stop``), then take the trace session out of the kernel (``release``)."""
        self.stop()
        self.release()

    def stop(self) -> None:
        """Stop every reader of this source: the poller, the trace reader (after its drain), the
        captures, the netlink channels. Bounded: the drain by ``drain_timeout`` (one budget for
        all the siblings), each thread by a few seconds; ``hurry()`` from another thread cuts
        every wait short, and a thread that does not end is left behind (they are daemons).
        The trace session stays in the kernel until ``release()``."""
        for src in self.siblings:
            src._stop.set()  # every poller of the process stops first: the trace readers get the CPU to catch up
        if self._drain_until is None:  # one budget for the drains of the whole process, not one per namespace
            until = time.monotonic() + self.drain_timeout
            for src in self.siblings:
                if src._drain_until is None:
                    src._drain_until = until
        if self._poller is not None:
            self._join(self._poller, POLLER_WAIT)
        tracing = self.tracing
        if tracing is not None and not self._stopped:
            tracing.drain(0.0 if self._hurried.is_set() else max(0.0, self._drain_until - time.monotonic()))
            if tracing.unread:
                with self._lock:
                    self._emit([self.tracker._ev(time.monotonic(), "events.dropped", "tracepoint", count=tracing.unread,
                                                 by="left in the kernel's trace buffer at close (the trace reader was behind)")])  # fmt: skip
            tracing.stop()
            self.notes.extend(n for n in tracing.notes if n not in self.notes)
        self._stopped = True
        captures, self.captures = self.captures, []
        for cap in captures:
            cap.close()
            self.frames += cap.frames
            self.frames_dropped += cap.dropped
            self.notes.extend(cap.notes)
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def release(self) -> None:
        """Take this source's trace session (its instance and probes) out of the kernel: after
        ``stop()``, which ``close()`` does first. Can take seconds on a loaded host (each probe's
        removal waits for the kernel's RCU); what a process stopped before this leaves, the
        next session's start removes."""
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            if not self._stopped:
                tracing.stop()
            tracing.remove()
            self.notes.extend(n for n in tracing.notes if n not in self.notes)

    def hurry(self) -> None:
        """Cut the stop of this process's sources short (any thread; a second Ctrl-C): no more
        draining, every wait at its end; what the trace buffers still hold is counted as dropped."""
        now = time.monotonic()
        for src in self.siblings:
            src._stop.set()
            src._hurried.set()
            src._drain_until = now
            tracing = src.tracing
            if tracing is not None:
                tracing.abort()
            for cap in list(src.captures):
                cap._stop.set()

    def _join(self, thread: threading.Thread, seconds: float) -> None:
        end = time.monotonic() + seconds
        while thread.is_alive() and not self._hurried.is_set() and time.monotonic() < end:
            thread.join(0.05)

    # ------------------------------------------------------------------ consumers

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[Event], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def add_frame_listener(self, fn: Callable) -> None:
        """``fn(timestamp_ns, direction, capture.Decoded)`` for every captured RoCEv2 frame."""
        self._frame_listeners.append(fn)

    async def events(self) -> AsyncIterator[Event]:
        """The events as an asyncio iterator (the source must be started); a consumer that
        falls more than ``queue_size`` behind gets an ``events.dropped`` record for what it missed."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        dropped = [0]

        def put(e: Event) -> None:
            if queue.qsize() >= self.queue_size:
                dropped[0] += 1
                return
            if dropped[0]:
                queue.put_nowait(Event(e.t, "events.dropped", self.host, fields={"count": dropped[0], "by": "KernelSource.events"}))
                dropped[0] = 0
            queue.put_nowait(e)

        def listener(e: Event) -> None:
            loop.call_soon_threadsafe(put, e)

        self.add_listener(listener)
        try:
            while True:
                yield await queue.get()
        finally:
            self.remove_listener(listener)

    def _emit(self, events: list[Event]) -> None:
        for e in events:
            self.emitted += 1
            for fn in list(self._listeners):
                try:
                    fn(e)
                except Exception as err:  # noqa: BLE001 - one bad listener does not stop the source
                    note = f"an event listener failed: {type(err).__name__}: {err}"
                    if note not in self.notes:
                        self.notes.append(note)

    # ------------------------------------------------------------------ inputs

    def poll(self) -> Snapshot:
        """Read the kernel now; emit what changed; return the snapshot."""
        if self.reader is None:
            self.open()
        t0 = time.perf_counter()
        raw, complete = self.reader.read()
        now = time.monotonic()
        snap = from_kernel(raw, now, self.host, self.netns)
        self.poll_seconds += time.perf_counter() - t0
        self.polls += 1
        snap.notes[:0] = self.notes
        with self._lock:
            events = self.tracker.snapshot(snap, complete)
            self.latest, self.complete = snap, complete
            self._emit(events)
        return snap

    def _run(self) -> None:
        next_t = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            start = time.monotonic()
            next_t += self.interval
            if next_t < start:
                next_t = start + self.interval  # fell behind: no burst of catch-up polls
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - a failed poll is a note, the next one tries again
                note = f"a poll failed: {type(e).__name__}: {e}"
                if note not in self.notes:
                    self.notes.append(note)
            spent = time.monotonic() - start
            budget = start + spent * len(self.siblings) / POLL_SHARE  # the process's polls take at most POLL_SHARE of the time
            if budget > next_t:
                next_t = budget
                self.stretched += 1

    def _on_trace(self, records: list) -> None:
        routed: dict[int, list] = {}
        with self._lock:
            out: list[Event] = []
            for rec in records:
                if self.routes:
                    net = rec.int("net")
                    if net in self.routes:  # another namespace's, read through this session's probes
                        routed.setdefault(net, []).append(rec)
                        continue
                out += self.tracker.trace(rec)
            self._emit(out)
            dests = [(self.routes[net], recs) for net, recs in routed.items()]
        for dest, recs in dests:
            dest._on_trace(recs)

    def _on_frame(self, ts_ns: int, direction: str, frame: bytes) -> None:
        from .capture import decode

        d = decode(frame)
        if d is None:
            return
        for fn in list(self._frame_listeners):
            fn(ts_ns, direction, d)
        t = (ts_ns - self.clock_offset_ns) / 1e9
        with self._lock:
            out: list[Event] = []
            for kind, fields in d.messages:
                out += self.tracker.message(t, kind, direction, fields)
            self._emit(out)

    # ------------------------------------------------------------------ figures

    def status(self) -> dict:
        """What the source does and did: one dict an operator (or a test) reads."""
        return {"host": self.host, "netns": self.netns, "rate": 1.0 / self.interval, "polls": self.polls,
                "poll_ms": round(self.poll_seconds / self.polls * 1000, 3) if self.polls else None, "events": self.emitted,
                "tracepoints": list(self.tracepoints), "probes": sorted(self.tracker.installed), "captures": list(self.capturing),
                "frames": self.frames + sum(c.frames for c in self.captures),
                "frames_dropped": self.frames_dropped + sum(c.drops() for c in self.captures),
                "net_cookie": self.net_cookie, "skipped": dict(self.tracker.skipped),
                "polls_stretched": self.stretched, "late_trace_records": self.tracker.late,
                "clock_offset_ns": self.clock_offset_ns,
                "notes": list(self.notes)}  # fmt: skip
