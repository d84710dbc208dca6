"""The public API (DESIGN.md section 5): one SMC-R host on asyncio.

    async with Stack(StackConfig(devices=[DeviceSpec(addr="127.1.0.1")])) as host:
        reader, writer = await host.open_connection("127.1.0.2", 5000)
        writer.get_extra_info("smc")   # {"mode": "SMCR", "fallback_reason": 0, ...}

A Stack puts the parts of the runtime together: the verbs driver (``rdma``), the sans-I/O
``SmcHost`` and its I/O port (``port``: TCP, timers, RDMA, the application), the TCP side
(``tcp``), the SMC TCP option (``option``), the operator controls (``controls``) and the
control socket (``control``). It feeds the core TCP bytes during the CLC handshake, RDMA
completions and timer expiries, all with ``now = loop.time()``. Capability signalling is
in-band unless the SMC TCP option is in use: a client that wants SMC sends its Proposal
first thing on the TCP connection; an SMC listener that sees plain bytes instead falls back
with PEERNOSMC and hands them to the application.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from stack.core.config import SmcConfig
from stack.core.host import SmcHost
from stack.core.states import Hs
from stack.events import EventBus
from stack.verbs.api import Capability

from .conn import ConnHandle
from .control import ControlServer
from .controls import Controls
from .netdev import NetdevReader
from .option import SmcOption
from .port import HostPort
from .rdma import DeviceSpec, RdmaDriver, check_specs, engine_detail, engine_of
from .security import socket_context
from .streams import SmcStreamReader, SmcStreamWriter
from .suspect import SuspectWatch, link_counts
from .tcp import SmcServer, TcpProtocol

CONTROL_DIR_ENV = "SMCTOP_CONTROL_DIR"  # a directory: each Stack started opens a control socket there
CONTROL_WAIT_ENV = "SMCTOP_CONTROL_WAIT"  # seconds a Stack waits at start for a subscriber (a recorder)
_STACK_SEQ = itertools.count(1)
# Seconds close() lets connections the application closed finish their close: a kernel
# finishes a closed socket's close after its process has gone, but ending our link groups
# (DELETE LINK) makes a kernel peer kill its connections, with what it had not read yet.
CLOSE_LINGER = 2.0

__all__ = ["Stack", "StackConfig", "DeviceSpec", "SmcServer", "ConnHandle"]


@dataclass(frozen=True)
class StackConfig:
    smc: SmcConfig = field(default_factory=SmcConfig)
    devices: tuple[DeviceSpec, ...] = ()
    control_path: str | None = None  # a unix socket (mode 0600) streaming events and snapshots
    snapshot_interval: float = 1.0
    seed: int | None = None
    # SMC capability signalling: "inband" (a Proposal first thing on the TCP connection),
    # "option" (the real SMC TCP option through native/smc_opt.bpf.c: required, start()
    # raises BpfUnavailable when it cannot be used), "auto" (the option when the program
    # is loaded, else in-band). Only the option interoperates with the Linux kernel.
    tcp_option: str = "auto"

    def __post_init__(self) -> None:
        if self.tcp_option not in ("auto", "option", "inband"):
            raise ValueError(f"tcp_option {self.tcp_option!r} must be 'auto', 'option' or 'inband'")


class Stack:
    """One SMC-R host. Use ``async with Stack(config) as host`` or ``await host.start()``."""

    def __init__(self, config: StackConfig | None = None, **kw) -> None:
        self.config = config or StackConfig(**kw)
        check_specs(self.config.devices)
        self.bus = EventBus()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.host: SmcHost | None = None
        self.rdma: RdmaDriver | None = None
        self.port: HostPort | None = None
        self.controls: Controls | None = None
        self.handles: dict[int, ConnHandle] = {}
        self.servers: list[SmcServer] = []
        self._ids = itertools.count(1)
        self.control: ControlServer | None = None
        self.suspect: SuspectWatch | None = None
        self.option = SmcOption(self.config.tcp_option)
        self.netdevs: NetdevReader | None = None  # the route's device of each TCP connection (the v1 IP prefix)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> "Stack":
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time  # the core's clock, bound once (called on every message)
        self.option.open()
        self.netdevs = NetdevReader()
        # initial PSNs, link group ids and tokens: from the system's CSPRNG unless a seed
        # asks for a repeatable run (tests); a PSN is half of what a forger must guess
        rng = random.Random(self.config.seed) if self.config.seed is not None else secrets.SystemRandom()
        self.rdma = RdmaDriver(self.loop, random.Random(rng.getrandbits(64)) if self.config.seed is not None else rng)
        infos = [self.rdma.open(spec) for spec in self.config.devices]
        self.port = HostPort(self.loop, self.rdma, self.handles)
        self.host = host = self.port.host = SmcHost(self.config.smc, self.port, infos, self.bus, rng)
        now = self.now
        self.rdma.on_send_done = lambda qp, wr, ok, status: host.on_send_done(qp, wr, ok, now(), status)
        self.rdma.on_recv = lambda qp, data: host.on_recv(qp, data, now())
        self.rdma.on_device_event = self.port.device_event
        self.controls = Controls(host, self.rdma, now)
        self.suspect = SuspectWatch(self.loop, self.rdma, host, now)  # frames outside a PSN window: possible attacks
        self.suspect.start()
        path = self.config.control_path
        if path is None and os.environ.get(CONTROL_DIR_ENV):
            # smc-trace record runs a command with this set, to attach to every stack it starts
            path = os.path.join(os.environ[CONTROL_DIR_ENV], f"{self.config.smc.host}-{os.getpid()}-{next(_STACK_SEQ)}.sock")
        if path:
            self.control = ControlServer(self, path, self.config.snapshot_interval)
            await self.control.start()
            wait = os.environ.get(CONTROL_WAIT_ENV)
            if wait and path != self.config.control_path:
                await self.control.wait_subscribed(float(wait))
        return self

    async def close(self, linger: float = CLOSE_LINGER) -> None:
        """Shut the stack down: connections the application closed may finish their orderly
        close for up to ``linger`` seconds (a peer that has not read our last bytes would lose
        them when the link group ends); the others are aborted, the link groups ended."""
        if self.host is None:
            return
        for server in self.servers:
            server.close()
        conns = self.host.conns
        closing = [h.closed for h in self.handles.values() if h.mode == "SMCR" and h.writer.is_closing() and not h.closed.done()
                   and (c := conns.get(h.conn_id)) is not None and not c.aborted]  # fmt: skip
        if closing and linger > 0:
            await asyncio.wait(closing, timeout=linger)
        if self.host is None:  # closed meanwhile by another caller
            return
        now = self.now()
        for conn_id in list(self.host.conns):
            self.host.app_abort(conn_id, now, "stack closing")
        self.host.terminate_all(now, "stack closing")
        await asyncio.sleep(0.05)  # let the DELETE LINK leave
        for h in list(self.handles.values()):
            if h.transport is not None:
                h.transport.close()
        self.port.close()
        if self.suspect is not None:
            self.suspect.close()
        if self.control is not None:
            await self.control.close()
        self.rdma.close()
        self.option.close()
        self.netdevs.close()
        self.host = None

    async def __aenter__(self) -> "Stack":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def now(self) -> float:
        return self.loop.time()

    # ---------------------------------------------------------------- public API

    async def open_connection(self, host: str, port: int, *, smc: bool = True, local_addr: tuple[str, int] | None = None,
                              ) -> tuple[SmcStreamReader, SmcStreamWriter]:  # fmt: skip
        h = self._new_handle()
        try:
            if smc and self.option.map is not None:
                sock = await self.option.connect(self.loop, host, port, local_addr)
                await self.loop.create_connection(lambda: TcpProtocol(h), sock=sock)
            else:
                await self.loop.create_connection(lambda: TcpProtocol(h), host, port, local_addr=local_addr)
        except BaseException:  # refused, or the opener gave up (cancelled, timed out): nothing stays behind
            self.handles.pop(h.conn_id, None)
            if h.transport is not None:
                h.transport.close()
            raise
        local = h.transport.get_extra_info("sockname")[:2]
        peer = h.transport.get_extra_info("peername")[:2]
        if not smc:
            h.mode = "TCP"
            return h.reader, h.writer
        self.host.client_start(h.conn_id, local, peer, self.now(), security=socket_context(h.transport), peer_smc=self.option.peer(h.transport),
                               netdev=self._netdev(h.transport))  # fmt: skip
        try:
            await h.ready
        except BaseException:
            # the opener gave up during the handshake: nobody holds this connection's streams,
            # so nobody would close it; it is aborted (an SMC-R peer sees the abort flag, a
            # peer still in the handshake sees the TCP connection go)
            self._abandon(h, "the application gave up on the connection during its handshake")
            raise
        if h.mode == "FAILED":
            raise ConnectionError(h.error)
        return h.reader, h.writer

    def _abandon(self, h: ConnHandle, why: str) -> None:
        if self.host is not None and h.conn_id in self.host.conns:
            self.host.app_abort(h.conn_id, self.now(), why)
        if h.transport is not None:
            h.transport.close()

    async def start_server(self, cb: Callable[[SmcStreamReader, SmcStreamWriter], Awaitable[None] | None], host: str, port: int,
                           *, smc: bool = True, backlog: int = 512) -> SmcServer:  # fmt: skip
        server = SmcServer(cb, smc)

        def accepted(transport: asyncio.Transport, protocol: TcpProtocol) -> ConnHandle:
            h = self._new_handle()
            h.transport, h.protocol = transport, protocol
            self._server_conn(h, server)
            return h

        if smc and self.option.map is not None:
            sock = self.option.listener(host, port, backlog)
            server.server = await self.loop.create_server(lambda: TcpProtocol(None, accepted), sock=sock)
        else:
            server.server = await self.loop.create_server(lambda: TcpProtocol(None, accepted), host, port, backlog=backlog)
        self.servers.append(server)
        return server

    @property
    def name(self) -> str:
        """The host's name (events, CLC hostname, snapshots)."""
        return self.config.smc.host

    def devices(self) -> list[str]:
        """The names of the host's RDMA devices."""
        return list(self.rdma.devs) if self.rdma is not None else []

    def engines(self) -> dict[str, str]:
        """Which engine moves each device's frames: "native" (compiled soft RoCE), "python"
        (its pure-Python twin) or "pyverbs" (a real device)."""
        return {name: engine_of(dev.device) for name, dev in self.rdma.devs.items()}

    def engine_summary(self) -> str:
        """One line for a report: each device's engine, and why it is not the compiled one when
        it could have been."""
        parts = [f"{name} {engine_detail(dev.device)}" for name, dev in self.rdma.devs.items()]
        notes = self.engine_notes()
        return ", ".join(parts) + (f" ({'; '.join(notes)})" if notes else "")

    def engine_notes(self) -> list[str]:
        """Why a soft device that could have had the compiled engine runs the Python one."""
        return sorted({p.engine_note for p in self.rdma.providers.values() if p.engine_note})

    def snapshot(self) -> dict:
        snap = self.host.snapshot()
        snap["t"] = self.now()
        snap["rdma"] = {name: dict(dev.device.stats, port_up=dev.port_up, engine=engine_of(dev.device),
                                   engine_detail=engine_detail(dev.device)) for name, dev in self.rdma.devs.items()}  # fmt: skip
        link_counts(self.rdma, snap, self.host.lgrs)  # each link's psn_out_of_window, suspect_ignored
        snap["listeners"] = self.listeners()
        snap["ueids"] = list(self.config.smc.ueids)
        return snap

    def listeners(self) -> list[dict]:
        """The listening sockets (smcss -a): address, and whether they offer SMC."""
        out = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append({"local": f"{host}:{port}", "smc": server.smc})
        return out

    # ---------------------------------------------------------------- the SMC TCP option

    @property
    def option_map(self):
        """native.smcopt.OptionMap when the SMC TCP option is in use."""
        return self.option.map

    @property
    def signalling(self) -> str:
        """ "tcp_option" or "inband"."""
        return self.option.signalling

    @property
    def signalling_note(self) -> str:
        """Why not the TCP option, when "auto" fell back to in-band."""
        return self.option.note

    # ---------------------------------------------------------------- connection plumbing

    def _new_handle(self) -> ConnHandle:
        h = ConnHandle(self.port, next(self._ids))
        self.handles[h.conn_id] = h
        return h

    def _netdev(self, transport: asyncio.Transport):
        """The net device of the TCP connection's route and its addresses, read from the OS
        (stack.core.negotiation.Netdev; None when it cannot be told)."""
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        if not local or not peer:
            return None
        scope = local[3] if len(local) > 3 else 0  # a link-local IPv6 address names its interface
        return self.netdevs.lookup(local[0], peer[0], scope)

    def _server_conn(self, h: ConnHandle, server: SmcServer) -> None:
        local = h.transport.get_extra_info("sockname")[:2]
        peer = h.transport.get_extra_info("peername")[:2]
        peer_smc = self.option.peer(h.transport) if server.smc else None
        netdev = self._netdev(h.transport) if server.smc else None
        self.host.server_start(h.conn_id, local, peer, self.now(), security=socket_context(h.transport), smc=server.smc, peer_smc=peer_smc, netdev=netdev)

        def done(fut: asyncio.Future) -> None:
            if h.mode in ("SMCR", "TCP"):
                result = server.cb(h.reader, h.writer)
                if asyncio.iscoroutine(result):
                    task = self.loop.create_task(result)
                    server.tasks.add(task)
                    task.add_done_callback(server.tasks.discard)

        h.ready.add_done_callback(done)

    # ---------------------------------------------------------------- operator controls (controls.Controls)

    def fail_link(self, lgr: str, link: int) -> bool:
        return self.controls.fail_link(lgr, link)

    def set_port(self, device: str, up: bool) -> None:
        """Take a soft device's port down or up, as a pulled cable would: the stack learns
        of it from the device's port event, like any other port change."""
        self.controls.set_port(device, up)

    def set_faults(self, device: str, **faults) -> None:
        self.controls.set_faults(device, **faults)

    def add_frame_tap(self, tap: Callable, batch: bool = False, write_snap: int = 0, raw: bool = False) -> list[str]:
        """Hand every RoCE frame this host's soft devices send, receive or drop to ``tap``
        (``batch``: lists of them), on the device threads (it must be quick); ``write_snap``:
        RDMA WRITE frames keep that many bytes; ``raw``: the compiled engine's raw records as
        bytes (other devices give lists). Returns the tapped devices' addresses; a pyverbs
        device has no tap (its frames are seen only by a capture of the interface)."""
        return self.controls.add_frame_tap(tap, batch, write_snap, raw)

    def remove_frame_tap(self, tap: Callable) -> None:
        self.controls.remove_frame_tap(tap)

    def capabilities(self, device: str) -> frozenset[Capability]:
        """What a device can do beyond the verbs: port control, fault injection, a frame tap,
        the compiled engine's fast path (stack.verbs.api.Capability)."""
        return self.controls.capabilities(device)

    def _dev(self, device: str):
        return self.controls.dev(device)

    def force_decline(self, reason: int | None) -> None:
        """Make the next connections this host serves fall back with ``reason`` (None: stop)."""
        self.controls.force_decline(reason)


def handshake_active(h: ConnHandle) -> bool:
    conn = h.port.host.conns.get(h.conn_id)
    return conn is not None and conn.hs not in (Hs.SMC, Hs.FALLBACK, Hs.FAILED)
