"""A Prometheus exporter of smctop's model: link groups, links, connections, fallbacks, bytes,
failovers, handshake errors and the kernel's ``smcr stats`` counters, read at scrape time.

    smctop --prometheus 127.0.0.1:9717              the TUI, with /metrics served beside it
    smctop --prometheus :9717 --headless            no TUI: the source feeds the model, the exporter serves it

Exporters read the model, never a source: :class:`ModelCollector` is a custom
prometheus_client collector that builds every metric family from :class:`smctop.model.Model`
when Prometheus scrapes, on the thread that owns the model (the TUI's event loop or the
headless loop), so a scrape sees one moment of the model and the event path pays nothing.
The HTTP server is prometheus_client's, in a thread of its own. Metric names, types and
labels are declared once, in :data:`METRICS`; docs/prometheus.md explains each.

Counters must never go down, while the model forgets closed connections a few seconds after
they close and keeps the last 200 failovers. A :class:`Ledger` therefore remembers, per
model epoch, the connections and failovers it has seen, and adds what the model forgets to
totals of its own. It looks at the model when Prometheus scrapes and between scrapes
(:meth:`Exporter.tick`: once a second, and whenever the model's clock moved half of its
``closed_keep``), doing work only when connections came or went, so that a connection the
model keeps ``closed_keep`` seconds (5) after it closed is always seen; a replay so fast that
one poll covers more than that can skip short connections (docs/prometheus.md).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import errno
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.core import Metric as Family
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from stack.wire import codes

from .model import Model

T = TypeVar("T")

DECIDED = ("SMCR", "SMCD", "TCP")  # connection modes once the handshake decided


@dataclass(frozen=True)
class Metric:
    """One metric as Prometheus sees it: its full name, type, labels (besides ``host``) and help."""

    name: str
    type: str  # counter, gauge, summary
    labels: tuple[str, ...]
    help: str
    kernel: bool = False  # from the kernel's counters (smcr stats): only exposed when a host has them
    per_host: bool = True  # gets the host label when several hosts are watched (False: the whole model, or host is a label already)


METRICS: tuple[Metric, ...] = (
    Metric("smc_host_info", "gauge", ("host",), "A host the exporter watches (always 1); its name as the model has it", per_host=False),
    Metric("smctop_source_up", "gauge", ("host",),
           "1 while the host's source feeds smctop, 0 while it does not (its control socket closed); a host that is down has no other series", per_host=False),
    Metric("smc_link_groups", "gauge", ("type", "role"), "SMC-R link groups now, by type (SINGLE, SYM, ASYMP, ASYML; NONE until the first link) and role"),
    Metric("smc_link_groups_critical", "gauge", (), "SMC-R link groups without a failover path now (smcr's Crit: SINGLE or ASYML)"),
    Metric("smc_links", "gauge", ("state",), "SMC-R links now, by state (deleted links, LINK_UNUSED, are not counted)"),
    Metric("smc_connections", "gauge", ("mode", "state"), "Open connections now, by mode (SMCR, SMCD, TCP; INIT while the handshake runs) and state"),
    Metric("smc_connections_established_total",
           "counter", ("mode",), "Connections that got past the handshake, by the mode it decided (SMCR, SMCD, TCP), each counted once"),
    Metric("smc_fallbacks_total", "counter", ("role", "reason", "reason_name"),
           "Connections that fell back to TCP, by role and reason (hex code and name, as smc-tools prints them)"),
    Metric("smc_sent_bytes_total", "counter", (), "Bytes the host's connections sent (each byte once, at the sending end)"),
    Metric("smc_received_bytes_total", "counter", (), "Bytes the host's connections received (each byte once, at the receiving end)"),
    Metric("smc_failovers_total", "counter", (), "Link failovers that moved connections to another link (counted when they end)"),
    Metric("smc_failover_connections_total", "counter", (), "Connections moved by failovers"),
    Metric("smc_failover_failed_connections_total", "counter", (), "Connections a failover could not move (lost)"),
    Metric("smc_failover_duration_seconds", "summary", (), "How long failovers that moved connections took, link down to connections moved"),
    Metric("smc_link_deletions_total", "counter", (), "Links removed without moving a connection (no failover: an idle link, the group going back to SYM)"),
    Metric("smc_handshake_errors_total", "counter", ("role",), "SMC handshakes that failed (CLC timeout, malformed message); role where the source tells it"),
    Metric("smc_events_total", "counter", ("kind",), "Events the model took, by kind (all hosts together)", per_host=False),
    Metric("smc_events_dropped_total", "counter", (), "Events the source missed (a slow subscriber, a lost trace buffer; all hosts together)", per_host=False),
    # the kernel's own counters: SMC_NETLINK_GET_STATS, per network namespace, what `smcr stats` prints
    Metric("smc_kernel_connections_total",
           "counter", ("technology", "role", "version"), "SMC connections the kernel set up (smcr stats: SMC connections)", True),
    Metric("smc_kernel_data_bytes_total", "counter", ("technology", "direction"), "Bytes the kernel's SMC sockets moved (smcr stats: Data transmitted)", True),
    Metric("smc_kernel_requests_total", "counter", ("technology", "direction"), "Send and receive calls on SMC sockets (smcr stats: Total requests)", True),
    Metric("smc_kernel_payloads_total",
           "counter", ("technology", "direction", "size"), "Send and receive calls by payload size class (smcr stats: Reqs)", True),
    Metric("smc_kernel_buffers_total",
           "counter", ("technology", "direction", "size"), "Buffers given to connections by size class (smcr stats: Bufs; rx: RMBs, tx: send buffers)", True),
    Metric("smc_kernel_buffer_events_total", "counter", ("technology", "direction", "event"),
           "Buffer events (smcr stats: buffer full, full at the peer, too small, too small at the peer, reused, allocated, downgraded)", True),
    Metric("smc_kernel_buffer_usage_bytes", "gauge", ("technology", "direction"), "Bytes of ring buffers in use by connections now (Linux 6.12+)", True),
    Metric("smc_kernel_special_calls_total",
           "counter", ("technology", "call"), "Special socket calls (smcr stats: cork, nodelay, sendpage, splice, urgent data)", True),
)  # fmt: skip
BY_NAME = {m.name: m for m in METRICS}

# the series a host's labelled gauge has before it ever had one: these read 0 (the states a
# host in good health shows); smc_link_groups has no such label set (type and role say what a group is)
_BASELINE = {"smc_links": ("LINK_ACTIVE",), "smc_connections": ("SMCR", "ACTIVE")}

# the kernel's flattened counter names (smckernel.model.flat_stats of SMC_GEN_STATS)
_K_SCALARS = {  # field -> (metric, labels)
    "clnt_v1_succ": ("smc_kernel_connections_total", {"role": "client", "version": "1"}),
    "clnt_v2_succ": ("smc_kernel_connections_total", {"role": "client", "version": "2"}),
    "srv_v1_succ": ("smc_kernel_connections_total", {"role": "server", "version": "1"}),
    "srv_v2_succ": ("smc_kernel_connections_total", {"role": "server", "version": "2"}),
    "tx_bytes": ("smc_kernel_data_bytes_total", {"direction": "tx"}),
    "rx_bytes": ("smc_kernel_data_bytes_total", {"direction": "rx"}),
    "tx_cnt": ("smc_kernel_requests_total", {"direction": "tx"}),
    "rx_cnt": ("smc_kernel_requests_total", {"direction": "rx"}),
    "tx_rmb_usage": ("smc_kernel_buffer_usage_bytes", {"direction": "tx"}),
    "rx_rmb_usage": ("smc_kernel_buffer_usage_bytes", {"direction": "rx"}),
    **{call: ("smc_kernel_special_calls_total", {"call": call}) for call in ("cork", "nodelay", "sendpage", "splice", "urgent_data")},
}
_K_GROUPS = {  # group -> (metric, labels, the label its members fill)
    "tx_payload": ("smc_kernel_payloads_total", {"direction": "tx"}, "size"),
    "rx_payload": ("smc_kernel_payloads_total", {"direction": "rx"}, "size"),
    "tx_rmb_size": ("smc_kernel_buffers_total", {"direction": "tx"}, "size"),
    "rx_rmb_size": ("smc_kernel_buffers_total", {"direction": "rx"}, "size"),
    "tx_rmb": ("smc_kernel_buffer_events_total", {"direction": "tx"}, "event"),
    "rx_rmb": ("smc_kernel_buffer_events_total", {"direction": "rx"}, "event"),
}
_TECHS = ("smcr", "smcd")
# handshake errors: the stack counts them in one number, the kernel by role
_HS_ERRORS = {"handshake_errors": "", "clnt_hshake_err": "client", "srv_hshake_err": "server"}


def reason_labels(code: int) -> tuple[str, str]:
    """A fallback reason as smc-tools prints it, as two labels: ("0x03030000", "NOSMCDEV")."""
    return f"0x{code:08x}", codes.DECLINE_REASONS.name(code) if code else "NONE"


def kernel_samples(stats: dict[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """A host's kernel counters (the flat ``smcr.tx_bytes`` names of smckernel's snapshot) as
    (metric, labels, value); nothing for a host whose stats are not the kernel's. Names this
    version does not know are left out."""
    out: list[tuple[str, dict[str, str], float]] = []
    for key, value in stats.items():
        tech, _, rest = key.partition(".")
        if tech not in _TECHS or not rest or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        group, _, member = rest.partition(".")
        if member:
            spec = _K_GROUPS.get(group)
            if spec is not None:
                name, labels, label = spec
                out.append((name, {"technology": tech, **labels, label: member}, value))
        elif rest in _K_SCALARS:
            name, labels = _K_SCALARS[rest]
            out.append((name, {"technology": tech, **labels}, value))
    return out


# ---------------------------------------------------------------------------- what the model forgets


class _Seen:
    """A connection the ledger saw: the highest byte counts it showed, and whether its mode was counted."""

    __slots__ = ("conn", "tx", "rx", "counted")

    def __init__(self, conn) -> None:
        self.conn = conn
        self.tx = self.rx = 0
        self.counted = False


def _failover_part(fo, final: bool = False) -> tuple[int, int, int, int, int, float]:
    """What one failover record adds: (failovers, connections moved, failed, link deletions,
    durations, seconds). A record moved connections when its count says so; a link removed
    with nothing on it is a deletion, not a failover. A record counts once it ended (its
    numbers are final then, so no counter goes back), or when the model drops it (``final``)."""
    if fo.duration_ms is None and not final:
        return 0, 0, 0, 0, 0, 0.0
    moved = fo.conns or 0
    if moved <= 0:
        return 0, 0, 0, 1, 0, 0.0
    done = fo.duration_ms is not None
    return 1, moved, fo.failed or 0, 0, int(done), (fo.duration_ms / 1000.0) if done else 0.0


class Ledger:
    """Monotonic totals over what the model forgets: every connection and failover record seen
    in the model's current epoch (a replay seeking backwards clears the model and starts a new
    one: the counters then start again, which Prometheus takes as a reset). Runs on the
    model's thread."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.conns: dict[tuple[str, int], _Seen] = {}
        self.sent: Counter = Counter()  # host -> bytes of connections the model forgot
        self.received: Counter = Counter()
        self.opened: Counter = Counter()  # (host, mode) -> connections counted
        self.failovers: dict[int, Any] = {}  # id -> a record the model still keeps
        self.fo_done: dict[str, list[float]] = {}  # host -> the parts of records the model dropped
        self._stamp: tuple | None = None
        self._fo_stamp: tuple | None = None

    def sync(self, model: Model, full: bool = False) -> None:
        """Take what changed: new connections, forgotten ones, failover records (everything
        when ``full``, as a scrape does)."""
        if model.epoch != self.epoch:
            self._reset()
            self.epoch = model.epoch
        stamp = (model.conns_added, model.conns_removed)
        if full or stamp != self._stamp:
            self._stamp = stamp
            seen = self.conns
            live = model.conns
            for key, c in live.items():
                s = seen.get(key)
                if s is None or s.conn is not c:
                    if s is not None:
                        self._retire(s)
                    s = seen[key] = _Seen(c)
                self._see(s)
            if len(seen) > len(live):  # every live key is in seen now: the rest are gone
                for key in [k for k, s in seen.items() if live.get(k) is not s.conn]:
                    self._retire(seen.pop(key))
        fos = model.failovers
        fo_stamp = (id(fos), len(fos), id(fos[-1]) if fos else None)
        if full or fo_stamp != self._fo_stamp:
            self._fo_stamp = fo_stamp
            kept = {id(fo): fo for fo in fos}
            for i, fo in list(self.failovers.items()):
                if kept.get(i) is not fo:  # dropped by the model: its part is final
                    del self.failovers[i]
                    acc = self.fo_done.setdefault(fo.host, [0, 0, 0, 0, 0, 0.0])
                    for j, v in enumerate(_failover_part(fo, final=True)):
                        acc[j] += v
            for i, fo in kept.items():
                self.failovers.setdefault(i, fo)

    def _see(self, s: _Seen) -> None:
        c = s.conn
        # SMC-R bytes only, as the model counts them: a fallen-back connection's TCP bytes show only when a snapshot catches it
        if c.mode != "TCP":
            if c.ev_tx > s.tx:  # a counter: a snapshot that says less than events did never takes bytes back
                s.tx = c.ev_tx
            if c.ev_rx > s.rx:
                s.rx = c.ev_rx
        if not s.counted and c.mode in DECIDED:
            s.counted = True
            self.opened[(c.host, c.mode)] += 1

    def _retire(self, s: _Seen) -> None:
        self._see(s)  # the model let it go: what it showed last is final
        host = s.conn.host
        self.sent[host] += s.tx
        self.received[host] += s.rx

    def failover_totals(self) -> dict[str, list[float]]:
        """host -> [failovers, connections moved, failed, link deletions, durations, seconds]."""
        out = {h: list(v) for h, v in self.fo_done.items()}
        for fo in self.failovers.values():
            acc = out.setdefault(fo.host, [0, 0, 0, 0, 0, 0.0])
            for j, v in enumerate(_failover_part(fo)):
                acc[j] += v
        return out


# ---------------------------------------------------------------------------- the collector


class ModelCollector(Collector):
    """Every smctop metric family, built from the model when Prometheus scrapes.

    ``call`` runs a function on the thread that owns the model and returns its result (the
    TUI: ``App.call_from_thread``; headless: :class:`LoopCaller`); without one the model is
    read on the scraping thread. ``host_label``: True puts a ``host`` label on every metric,
    False never, None (auto) from the moment the model has seen more than one host."""

    def __init__(self, model: Model, *, call: Callable[[Callable[[], Any]], Any] | None = None, host_label: bool | None = None) -> None:
        self.model = model
        self.call = call
        self.host_label = host_label
        self.ledger = Ledger()
        self._several = False
        self._had: dict[str, set[tuple]] = {}  # gauge -> (host, *labels) it has served: they read 0 when the count is gone

    def collect(self) -> Iterable[Family]:
        return self._on_model_thread(self.families)

    def tick(self) -> None:
        """Between scrapes (on the model's thread, about once a second): note the connections
        and failovers that came or went, so none is forgotten before a scrape sees it."""
        self.ledger.sync(self.model)

    def _on_model_thread(self, fn: Callable[[], T]) -> T:
        if self.call is not None:
            try:
                return self.call(fn)
            except RuntimeError as e:
                # the app or loop is not running (yet, or any more): nobody feeds the model; or this
                # is the app's own thread already (Textual refuses to call itself)
                if "not running" not in str(e) and "different thread" not in str(e):
                    raise
        return fn()

    def _gauge(self, add: Callable, metric: str, counts: Counter) -> None:
        """A labelled gauge of every known host: its counts now, 0 for each label set it had
        before (a series that drops to nothing reads 0, not absent), and 0 in the baseline
        label set for a host that never had any (``sum(smc_links{host="x"})`` is 0, not empty)."""
        had = self._had.setdefault(metric, set())
        had.update(counts)
        base = _BASELINE.get(metric)
        hosts = self.model.hosts
        for host in hosts:
            if base is not None and not any(k[0] == host for k in had):
                had.add((host, *base))
        for key in sorted(k for k in had if k[0] in hosts):
            add(metric, key[0], key[1:], counts.get(key, 0))

    def _hosts_labelled(self) -> bool:
        if self.host_label is not None:
            return self.host_label
        if len(self.model.hosts) > 1:
            self._several = True  # and stays: series must not change their labels back and forth
        return self._several

    def families(self) -> list[Family]:
        """The metric families of this moment (call on the model's thread)."""
        m = self.model
        led = self.ledger
        led.sync(m, full=True)
        with_host = self._hosts_labelled()
        fams: dict[str, Family] = {}
        for spec in METRICS:
            labels = (["host"] if with_host and spec.per_host else []) + list(spec.labels)
            name = spec.name[: -len("_total")] if spec.type == "counter" else spec.name
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "summary": SummaryMetricFamily}[spec.type]
            fams[spec.name] = cls(name, spec.help, labels=labels)

        # a host whose source went away: no value of it is served as if live (Prometheus marks its
        # series stale); smctop_source_up says it is down, smc_host_info that it is known
        down = {name for name, h in m.hosts.items() if not h.up}

        def add(metric: str, host: str, values: Iterable[str], value: float) -> None:
            if host not in down:
                fams[metric].add_metric(([host] if with_host else []) + list(values), value)

        for name in sorted(m.hosts):
            fams["smc_host_info"].add_metric([name], 1)
            fams["smctop_source_up"].add_metric([name], 0 if name in down else 1)

        # link groups and links, as the header counts them (terminated groups and deleted links left out)
        groups: Counter = Counter()
        crit: Counter = Counter()
        links: Counter = Counter()
        for g in m.lgrs.values():
            for link in g.links.values():
                if link.state != "LINK_UNUSED":
                    links[(g.host, link.state)] += 1
            if g.terminated:
                continue
            groups[(g.host, g.type, g.role or "unknown")] += 1
            crit[g.host] += bool(g.crit)
        for host in m.hosts:  # a known host's gauges read 0, not nothing, when it has none
            crit[host] += 0
        self._gauge(add, "smc_link_groups", groups)
        for host, n in sorted(crit.items()):
            add("smc_link_groups_critical", host, (), n)
        self._gauge(add, "smc_links", links)

        # connections: open ones by mode and state; bytes and modes through the ledger
        conns: Counter = Counter()
        sent, received = Counter(led.sent), Counter(led.received)
        for s in led.conns.values():
            c = s.conn
            if c.closed is None:
                conns[(c.host, c.mode, c.state)] += 1
            sent[c.host] += s.tx
            received[c.host] += s.rx
        self._gauge(add, "smc_connections", conns)
        for (host, mode), n in sorted(led.opened.items()):
            add("smc_connections_established_total", host, (mode,), n)
        for host in sorted(set(sent) | set(received)):
            add("smc_sent_bytes_total", host, (), sent[host])
            add("smc_received_bytes_total", host, (), received[host])

        # fallbacks by reason, as smctop's Fallbacks view counts them (events, or a snapshot's count when larger)
        for row in sorted(m.fallback_rows(), key=lambda r: (r["host"], r["role"], r["reason"])):
            role = row["role"] if row["role"] not in ("", "-") else "unknown"
            add("smc_fallbacks_total", row["host"], (role, *reason_labels(row["reason"])), row["count"])

        for host, (n, moved, failed, deletions, timed, seconds) in sorted(led.failover_totals().items()):
            add("smc_failovers_total", host, (), n)
            add("smc_failover_connections_total", host, (), moved)
            add("smc_failover_failed_connections_total", host, (), failed)
            add("smc_link_deletions_total", host, (), deletions)
            if host not in down:
                fams["smc_failover_duration_seconds"].add_metric([host] if with_host else [], timed, seconds)

        kernel = False
        for name in sorted(m.hosts):
            stats = m.hosts[name].stats
            for key, role in _HS_ERRORS.items():
                v = stats.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    add("smc_handshake_errors_total", name, (role,), v)
            for metric, labels, value in kernel_samples(stats):
                kernel = True
                add(metric, name, [labels[k] for k in BY_NAME[metric].labels], value)

        for kind, n in sorted(m.kinds.items()):
            fams["smc_events_total"].add_metric([kind], n)
        fams["smc_events_dropped_total"].add_metric([], m.dropped)
        return [fams[spec.name] for spec in METRICS if kernel or not spec.kernel]


# ---------------------------------------------------------------------------- serving


class ExporterError(Exception):
    """The exporter cannot serve: the message is for the operator."""


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` -> (addr, port): ``127.0.0.1:9717``, ``[::1]:9717``, ``localhost:9717``,
    ``:9717`` (every address). Raises ExporterError with what is wrong."""
    form = "ADDR:PORT (e.g. 127.0.0.1:9717, [::1]:9717 or :9717 for every address)"
    if not isinstance(text, str) or "\0" in text or ":" not in text:
        raise ExporterError(f"{text!r}: expected {form}")
    if text.startswith("["):
        addr, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ExporterError(f"{text!r}: expected {form}")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise ExporterError(f"{text!r}: {addr!r} is not an IPv6 address") from None
    else:
        addr, _, port_text = text.rpartition(":")
        if ":" in addr:
            raise ExporterError(f"{text!r}: put an IPv6 address in brackets: [ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ExporterError(f"{text!r}: the port must be a number from 0 to 65535")
    return addr or "0.0.0.0", int(port_text)


class LoopCaller:
    """Runs a function on an asyncio loop's thread from another thread and returns its result
    (what the HTTP server's thread uses to read the model the loop owns)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 10.0) -> None:
        self.loop = loop
        self.timeout = timeout
        self.thread = threading.get_ident()

    def __call__(self, fn: Callable[[], T]) -> T:
        if threading.get_ident() == self.thread:
            return fn()
        if self.loop.is_closed() or not self.loop.is_running():
            raise RuntimeError("the loop is not running")
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # handed to the caller's thread
                    fut.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        try:
            return fut.result(self.timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"the model did not answer in {self.timeout:g} s") from None


class Exporter:
    """The collector in a registry of its own (with the process's metrics), served over HTTP
    by prometheus_client in a daemon thread."""

    def __init__(self, model: Model, *, host_label: bool | None = None, process_metrics: bool = True) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ModelCollector(model, host_label=host_label)
        self.registry.register(self.collector)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.server = None
        self.thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        if self.address is None:
            return ""
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def serve(self, listen: str) -> "Exporter":
        """Bind ``ADDR:PORT`` and serve /metrics; ExporterError says why not (no traceback)."""
        addr, port = parse_listen(listen)
        # every address (":PORT"): IPv6's wildcard, a dual-stack socket that takes IPv4 too;
        # 0.0.0.0 when the host has no IPv6
        tries = ["::", addr] if listen.startswith(":") and socket.has_ipv6 else [addr]
        try:
            for i, addr in enumerate(tries):
                try:
                    self.server, self.thread = start_http_server(port, addr=addr, registry=self.registry)
                    break
                except OSError as e:
                    if i + 1 == len(tries) or e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
        except socket.gaierror as e:
            raise ExporterError(f"{listen}: cannot resolve {addr!r}: {e.strerror or e}") from None
        except OSError as e:
            why = {errno.EADDRINUSE: "the port is in use (another exporter, or a Prometheus?)",
                   errno.EACCES: "permission denied (ports below 1024 need root)",
                   errno.EADDRNOTAVAIL: f"{addr} is not an address of this host"}.get(e.errno, e.strerror or str(e))  # fmt: skip
            raise ExporterError(f"{listen}: cannot listen: {why}") from None
        except (OverflowError, ValueError, UnicodeError) as e:
            raise ExporterError(f"{listen}: cannot listen: {e}") from None
        host, port = self.server.server_address[:2]
        self.address = (str(host), int(port))
        return self

    def use(self, call: Callable[[Callable[[], Any]], Any] | None) -> None:
        """How to reach the model's thread (None: read it on the scraping thread)."""
        self.collector.call = call

    def tick(self) -> None:
        self.collector.tick()

    def start_ticker(self, interval: float = 1.0) -> None:
        """:meth:`tick` about every ``interval`` seconds through the collector's ``call`` (for the
        TUI, whose loop this module does not run)."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.collector._on_model_thread(self.tick)
                except Exception:  # the app is going away; the next scrape syncs fully anyway
                    pass

        self._ticker = threading.Thread(target=loop, name="smctop-prometheus-tick", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# ---------------------------------------------------------------------------- headless


class Headless:
    """No TUI: poll the source into the model (as the app does, ten times a second), keep the
    exporter's ledger current, say what the source says on stderr, stop on SIGINT/SIGTERM.
    ``paused`` stops feeding the model (it stands still while the source goes on)."""

    def __init__(self, source, exporter: Exporter, *, poll_interval: float = 0.1, record: str | None = None, out=None) -> None:
        self.source = source
        self.exporter = exporter
        self.model = exporter.model
        self.poll_interval = poll_interval
        self.record = record
        self.recorder = None
        self.out = out if out is not None else sys.stderr
        self.paused = False
        self.stop_event: asyncio.Event | None = None
        self._said_done = False

    def say(self, text: str) -> None:
        print(f"smctop: {text}", file=self.out, flush=True)

    def step(self) -> None:
        """One poll: feed the model, close its samples, note what the ledger must see."""
        if self.paused:
            return
        events = self.source.poll(self.model)
        if self.recorder is not None and events:
            self.recorder.write(events)
        now = self.source.now()
        if now is not None:
            self.model.advance(now)
        while self.source.notices:
            self.say(self.source.notices.popleft())
        if getattr(self.source, "done", False) and not self._said_done:
            self._said_done = True
            self.say("the replay reached its end; serving its last state")

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    async def run(self) -> int:
        from .sources import SourceError  # the loop drives a source; the collector reads only the model

        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.exporter.use(LoopCaller(loop))
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
                pass
        try:
            try:
                await self.source.start()
            except (SourceError, OSError) as e:
                self.say(f"cannot start the {self.source.label} source: {e}")
                return 1
            if self.record:
                from .record import open_recorder

                try:  # once the source runs: the demo's stacks exist then, and their frames are recorded too
                    self.recorder = open_recorder(self.record, self.source.stacks())
                except OSError as e:
                    self.say(f"cannot record: {e}")
                    await self.source.stop()
                    return 1
                self.say(f"recording to {self.record}")
            self.say(f"{self.source.describe()}: Prometheus metrics on {self.exporter.url} (headless; Ctrl-C stops)")
            last_tick, last_model_t = 0.0, None
            try:
                while not self.stop_event.is_set():
                    self.step()
                    now = self.model.now
                    # once a second, and whenever the model's clock moved half of closed_keep (a fast
                    # replay): a connection is seen before the model forgets it
                    if time.monotonic() - last_tick >= 1.0 or (now is not None and last_model_t is not None
                                                               and now - last_model_t >= self.model.closed_keep / 2):  # fmt: skip
                        last_tick, last_model_t = time.monotonic(), now
                        self.exporter.tick()
                    try:
                        await asyncio.wait_for(self.stop_event.wait(), self.poll_interval)
                    except asyncio.TimeoutError:
                        pass
            finally:
                await self.source.stop()
            self.say("stopped")
            return 0
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            if self.recorder is not None:
                self.recorder.close()
            self.exporter.use(None)


# ---------------------------------------------------------------------------- the command line


def several_hosts(source) -> bool | None:
    """Whether the source watches several hosts, as far as it is known before it starts (the
    host label is then there from the first scrape); None: decide from the model."""
    if getattr(source, "label", "") == "demo":
        return True
    paths = getattr(source, "paths", None)
    if isinstance(paths, list) and len(paths) > 1:
        return True
    events = getattr(source, "events", None)
    if isinstance(events, list) and events and len({e.host for e in events}) > 1:
        return True
    return None


def start(args: argparse.Namespace, ap: argparse.ArgumentParser, source, model: Model | None = None) -> Exporter | None:
    """From smctop's arguments: None without --prometheus; else the exporter, already
    listening (a bad ADDR:PORT or a port in use ends the command with a clear error)."""
    if args.headless and not args.prometheus:
        ap.error("--headless needs --prometheus ADDR:PORT (without a TUI the exporter is all there is)")
    if not args.prometheus:
        return None
    exporter = Exporter(model or Model(), host_label=several_hosts(source))
    try:
        exporter.serve(args.prometheus)
    except ExporterError as e:
        ap.error(f"--prometheus {e}")
    return exporter


def run_headless(args: argparse.Namespace, source, exporter: Exporter) -> int:
    """``smctop --prometheus ADDR:PORT --headless``: the source, the model and the exporter,
    until SIGINT or SIGTERM."""
    try:
        return asyncio.run(Headless(source, exporter, record=getattr(args, "record", None)).run())
    finally:
        exporter.close()


def serve_app(exporter: Exporter, app) -> None:
    """Beside the TUI: scrapes and ticks read the model on the app's loop (``call_from_thread``)."""
    exporter.use(app.call_from_thread)
    exporter.start_ticker()
