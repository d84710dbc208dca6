"""The public API (DESIGN.md section 5) and the asyncio driver of the sans-I/O core.

    async with Stack(StackConfig(devices=[DeviceSpec(addr="127.1.0.1")])) as host:
        reader, writer = await host.open_connection("127.1.0.2", 5000)
        writer.get_extra_info("smc")   # {"mode": "SMCR", "fallback_reason": 0, ...}

The stack owns one ``SmcHost``: it feeds it TCP bytes during the CLC handshake, RDMA
completions from the verbs driver and timer expiries, all with ``now = loop.time()``,
and carries out what the core asks for. Capability signalling is in-band: a client that
wants SMC sends its Proposal first thing on the TCP connection; an SMC listener that
sees plain bytes instead falls back with PEERNOSMC and hands them to the application.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from stack.core.config import SmcConfig
from stack.core.host import SmcHost
from stack.core.states import Hs
from stack.events import EventBus
from stack.verbs.api import FAULTS, Capability, EventType
from stack.wire import codes

from .rdma import DeviceSpec, RdmaDriver, check_specs, engine_detail, engine_of
from .streams import SmcStreamReader, SmcStreamWriter

CONTROL_DIR_ENV = "SMCTOP_CONTROL_DIR"  # a directory: each Stack started opens a control socket there
CONTROL_WAIT_ENV = "SMCTOP_CONTROL_WAIT"  # seconds a Stack waits at start for a subscriber (a recorder)
_STACK_SEQ = itertools.count(1)


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


class ConnHandle:
    """What the stack knows about one connection, shared by its reader and writer."""

    def __init__(self, stack: "Stack", conn_id: int) -> None:
        self.stack = stack
        self.conn_id = conn_id
        self.transport: asyncio.Transport | None = None
        self.protocol: "_TcpProtocol | None" = None
        self.mode = "INIT"
        self.error: str | None = None
        self.ready: asyncio.Future = stack.loop.create_future()
        self.closed: asyncio.Future = stack.loop.create_future()
        self.reader = SmcStreamReader(self)
        self.writer = SmcStreamWriter(self, self.reader)
        self.info: dict = {}
        self._reading_paused = False

    # SMC data path
    def smc_send(self, data) -> int:
        return self.stack.host.app_send(self.conn_id, data, self.stack.now())

    def smc_recv(self, n: int) -> bytes:
        conn = self.stack.host.conns.get(self.conn_id)
        return conn.app_recv(n, self.stack.now()) if conn else b""

    def smc_eof(self) -> bool:
        conn = self.stack.host.conns.get(self.conn_id)
        return conn is None or conn.eof

    def smc_error(self) -> str | None:
        conn = self.stack.host.conns.get(self.conn_id)
        return conn.error if conn is not None and conn.peer_abort else self.error

    def smc_shutdown_wr(self) -> None:
        if self.conn_id in self.stack.host.conns:
            self.stack.host.app_shutdown_wr(self.conn_id, self.stack.now())

    def smc_close(self) -> None:
        self.stack.host.app_close(self.conn_id, self.stack.now())

    def smc_abort(self) -> None:
        self.stack.host.app_abort(self.conn_id, self.stack.now())

    def smc_info(self) -> dict:
        conn = self.stack.host.conns.get(self.conn_id)
        if conn is not None:
            self.info = {
                "mode": conn.mode, "fallback_reason": conn.fallback_reason,
                "fallback_reason_text": codes.format_reason(conn.fallback_reason) if conn.fallback_reason else "",
                "peer_diagnosis": conn.peer_diagnosis, "version": conn.version, "first_contact": conn.first_contact,
                "state": conn.state.name, "lgr": conn.lgr.name if conn.lgr else None, "link": conn.link.link_id if conn.link else None,
                "token": conn.token, "peer_token": conn.peer_token, "rmb_size": conn.rmb_size, "peer_rmb_size": conn.peer_size,
                "conn": self.conn_id,
            }  # fmt: skip
        return dict(self.info) or {"mode": self.mode, "fallback_reason": 0, "conn": self.conn_id}

    # TCP flow control
    def pause_tcp_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_tcp_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    async def tcp_drain(self) -> None:
        if self.protocol is not None:
            await self.protocol.drain()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, stack: "Stack", handle: ConnHandle | None, server: "SmcServer | None" = None) -> None:
        self.stack = stack
        self.h = handle
        self.server = server
        self._paused = False
        self._drain_waiters: list[asyncio.Future] = []

    def connection_made(self, transport: asyncio.Transport) -> None:
        if self.h is None:  # accepted by a listener
            self.h = self.stack._new_handle()
            self.h.transport, self.h.protocol = transport, self
            self.stack._server_conn(self.h, self.server)
        else:
            self.h.transport, self.h.protocol = transport, self

    def data_received(self, data: bytes) -> None:
        h = self.h
        if h.mode == "INIT":
            self.stack.host.tcp_data(h.conn_id, data, self.stack.now())
        elif h.mode == "TCP":
            h.reader._feed(data)
        # SMC mode: the TCP connection stays idle; stray bytes are ignored, as the kernel's clcsock

    def eof_received(self) -> bool:
        if self.h.mode == "TCP":
            self.h.reader._feed_eof()
        return True  # keep our side open for writing (half close)

    def connection_lost(self, exc: Exception | None) -> None:
        h = self.h
        if h is None:
            return
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        if h.mode == "INIT":
            self.stack.host.tcp_conn_closed(h.conn_id, self.stack.now(), str(exc) if exc else None)
        elif h.mode == "TCP":
            if exc is not None:
                h.reader._set_exception(ConnectionResetError(str(exc)))
            h.reader._feed_eof()
            self.stack.host.tcp_conn_closed(h.conn_id, self.stack.now(), str(exc) if exc else None)
            if not h.closed.done():
                h.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        if self.h.transport is not None and self.h.transport.is_closing():
            raise ConnectionResetError("connection lost")
        if self._paused:
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut


class SmcServer:
    def __init__(self, stack: "Stack", cb, smc: bool) -> None:
        self.stack = stack
        self.cb = cb
        self.smc = smc
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()

    @property
    def sockets(self):
        return self.server.sockets if self.server else ()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()

    async def __aenter__(self) -> "SmcServer":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        await self.wait_closed()


class Stack:
    """One SMC-R host. Use ``async with Stack(config) as host`` or ``await host.start()``."""

    def __init__(self, config: StackConfig | None = None, **kw) -> None:
        self.config = config or StackConfig(**kw)
        check_specs(self.config.devices)
        self.bus = EventBus()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.host: SmcHost | None = None
        self.rdma: RdmaDriver | None = None
        self.handles: dict[int, ConnHandle] = {}
        self.servers: list[SmcServer] = []
        self._ids = itertools.count(1)
        self._timers: dict[tuple, asyncio.TimerHandle] = {}
        self.control = None
        self.option_map = None  # native.smcopt.OptionMap when the SMC TCP option is in use
        self.signalling = "inband"
        self.signalling_note = ""  # why not the TCP option, when "auto" fell back to in-band

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> "Stack":
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time  # the core's clock, bound once (called on every message)
        if self.config.tcp_option != "inband":
            from native.smcopt import BpfUnavailable, OptionMap

            try:
                self.option_map = OptionMap.open()
                self.signalling = "tcp_option"
            except BpfUnavailable as e:
                if self.config.tcp_option == "option":
                    raise
                self.signalling_note = str(e)
        rng = random.Random(self.config.seed)
        self.rdma = RdmaDriver(self.loop, random.Random(rng.getrandbits(64)))
        infos = [self.rdma.open(spec) for spec in self.config.devices]
        self.host = SmcHost(self.config.smc, self, infos, self.bus, rng)
        self.rdma.on_send_done = lambda qp, wr, ok, status: self.host.on_send_done(qp, wr, ok, self.now(), status)
        self.rdma.on_recv = lambda qp, data: self.host.on_recv(qp, data, self.now())
        # the core's data path goes straight to the driver (HostIO methods, bound once)
        self.post_send, self.post_write = self.rdma.post_send, self.rdma.post_write
        self.rdma.on_device_event = self._device_event
        path = self.config.control_path
        if path is None and os.environ.get(CONTROL_DIR_ENV):
            # smc-trace record runs a command with this set, to attach to every stack it starts
            path = os.path.join(os.environ[CONTROL_DIR_ENV], f"{self.config.smc.host}-{os.getpid()}-{next(_STACK_SEQ)}.sock")
        if path:
            from .control import ControlServer

            self.control = ControlServer(self, path, self.config.snapshot_interval)
            await self.control.start()
            wait = os.environ.get(CONTROL_WAIT_ENV)
            if wait and path != self.config.control_path:
                await self.control.wait_subscribed(float(wait))
        return self

    async def close(self) -> None:
        if self.host is None:
            return
        for server in self.servers:
            server.close()
        now = self.now()
        for conn_id in list(self.host.conns):
            self.host.app_abort(conn_id, now, "stack closing")
        self.host.terminate_all(now, "stack closing")
        await asyncio.sleep(0.05)  # let the DELETE LINK leave
        for h in list(self.handles.values()):
            if h.transport is not None:
                h.transport.close()
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        if self.control is not None:
            await self.control.close()
        self.rdma.close()
        if self.option_map is not None:
            self.option_map.close()
            self.option_map = None
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
            if smc and self.option_map is not None:
                sock = await self._option_connect(host, port, local_addr)
                await self.loop.create_connection(lambda: _TcpProtocol(self, h), sock=sock)
            else:
                await self.loop.create_connection(lambda: _TcpProtocol(self, h), host, port, local_addr=local_addr)
        except OSError:
            self.handles.pop(h.conn_id, None)
            raise
        local = h.transport.get_extra_info("sockname")[:2]
        peer = h.transport.get_extra_info("peername")[:2]
        if not smc:
            h.mode = "TCP"
            return h.reader, h.writer
        self.host.client_start(h.conn_id, local, peer, self.now(), peer_smc=self._peer_option(h))
        await h.ready
        if h.mode == "FAILED":
            raise ConnectionError(h.error)
        return h.reader, h.writer

    async def start_server(self, cb: Callable[[SmcStreamReader, SmcStreamWriter], Awaitable[None] | None], host: str, port: int,
                           *, smc: bool = True, backlog: int = 512) -> SmcServer:  # fmt: skip
        server = SmcServer(self, cb, smc)
        if smc and self.option_map is not None:
            sock = self._option_listener(host, port, backlog)
            server.server = await self.loop.create_server(lambda: _TcpProtocol(self, None, server), sock=sock)
        else:
            server.server = await self.loop.create_server(lambda: _TcpProtocol(self, None, server), host, port, backlog=backlog)
        self.servers.append(server)
        return server

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
        return snap

    # ---------------------------------------------------------------- the SMC TCP option (native/smcopt)

    async def _option_connect(self, host: str, port: int, local_addr: tuple[str, int] | None) -> socket.socket:
        """A TCP socket opted in to the SMC option (SMC-Rv2 is IPv4 only), connected."""
        infos = await self.loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host}: no IPv4 address")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            self.option_map.want(sock)
            if local_addr is not None:
                sock.bind(local_addr)
            await self.loop.sock_connect(sock, infos[0][4])
        except BaseException:
            sock.close()
            raise
        return sock

    def _option_listener(self, host: str | None, port: int, backlog: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            self.option_map.want(sock)  # before listen(): the program arms the listener then
            sock.bind((host or "0.0.0.0", port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def _peer_option(self, h: ConnHandle) -> bool | None:
        """Whether the peer's SYN / SYN-ACK carried the SMC option; None: in-band signalling
        (no program, or it did not see this connection)."""
        if self.option_map is None or h.transport is None:
            return None
        sock = h.transport.get_extra_info("socket")
        result = self.option_map.result(sock.fileno())
        return result.peer if result.done else None

    # ---------------------------------------------------------------- connection plumbing

    def _new_handle(self) -> ConnHandle:
        h = ConnHandle(self, next(self._ids))
        self.handles[h.conn_id] = h
        return h

    def _server_conn(self, h: ConnHandle, server: SmcServer) -> None:
        local = h.transport.get_extra_info("sockname")[:2]
        peer = h.transport.get_extra_info("peername")[:2]
        peer_smc = self._peer_option(h) if server.smc else None
        self.host.server_start(h.conn_id, local, peer, self.now(), smc=server.smc, peer_smc=peer_smc)

        def done(fut: asyncio.Future) -> None:
            if h.mode in ("SMCR", "TCP"):
                result = server.cb(h.reader, h.writer)
                if asyncio.iscoroutine(result):
                    task = self.loop.create_task(result)
                    server.tasks.add(task)
                    task.add_done_callback(server.tasks.discard)

        h.ready.add_done_callback(done)

    # ---------------------------------------------------------------- HostIO: TCP and timers

    def tcp_send(self, conn: int, data: bytes) -> None:
        h = self.handles.get(conn)
        if h is not None and h.transport is not None and not h.transport.is_closing():
            h.transport.write(data)

    def arm_timer(self, key: tuple, when: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self.loop.call_at(when, self._fire, key)

    def cancel_timer(self, key: tuple) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

    def _fire(self, key: tuple) -> None:
        self._timers.pop(key, None)
        if self.host is not None:
            self.host.on_timer(key, self.now())

    # ---------------------------------------------------------------- HostIO: RDMA (the driver does it)

    def create_qp(self, device):
        return self.rdma.create_qp(device)

    def qp_to_rtr(self, qp, peer_qpn, peer_psn, peer_gid, mtu):
        self.rdma.qp_to_rtr(qp, peer_qpn, peer_psn, peer_gid, mtu)

    def qp_to_rts(self, qp):
        self.rdma.qp_to_rts(qp)

    def destroy_qp(self, qp):
        self.rdma.destroy_qp(qp)

    def reg_mr(self, device, size, remote_write, buf=None):
        return self.rdma.reg_mr(device, size, remote_write, buf)

    def dereg_mr(self, mr):
        self.rdma.dereg_mr(mr)

    def post_send(self, qp, wr_id, payload):
        return self.rdma.post_send(qp, wr_id, payload)

    def post_write(self, qp, wr_id, sges, remote_addr, rkey):
        return self.rdma.post_write(qp, wr_id, sges, remote_addr, rkey)

    def _device_event(self, device: str, event: EventType) -> None:
        if event in (EventType.PORT_ERR, EventType.PORT_ACTIVE) and self.host is not None:
            self.host.port_event(device, event == EventType.PORT_ACTIVE, self.now())

    # ---------------------------------------------------------------- HostIO: the application

    def conn_established(self, conn: int) -> None:
        h = self.handles[conn]
        h.mode = "SMCR"
        h.smc_info()
        if not h.ready.done():
            h.ready.set_result(None)

    def conn_fallback(self, conn: int, leftover: bytes) -> None:
        h = self.handles[conn]
        h.mode = "TCP"
        h.smc_info()
        if leftover:
            h.reader._feed(leftover)
        if not h.ready.done():
            h.ready.set_result(None)

    def conn_failed(self, conn: int, error: str) -> None:
        h = self.handles.pop(conn, None)
        if h is None:
            return
        h.mode, h.error = "FAILED", error
        if h.transport is not None:
            h.transport.close()
        if not h.ready.done():
            h.ready.set_result(None)
        if not h.closed.done():
            h.closed.set_result(None)

    def conn_readable(self, conn: int) -> None:
        h = self.handles.get(conn)
        if h is not None:
            h.reader._wake()

    def conn_writable(self, conn: int) -> None:
        h = self.handles.get(conn)
        if h is not None:
            h.writer._push()

    def conn_closed(self, conn: int, error: str | None) -> None:
        h = self.handles.pop(conn, None)
        if h is None:
            return
        if not h.ready.done():  # closed before the handshake finished: the opener gets the error
            h.mode, h.error = "FAILED", error or "connection closed during the CLC handshake"
            if h.transport is not None:
                h.transport.close()
            h.ready.set_result(None)
            if not h.closed.done():
                h.closed.set_result(None)
            return
        h.smc_info()
        if error:
            h.error = error
            exc = ConnectionResetError(error)
            h.reader._set_exception(exc)
            h.writer._fail(exc)
        h.reader._feed_eof()
        if h.transport is not None and h.mode == "SMCR":
            h.transport.close()
        if not h.closed.done():
            h.closed.set_result(None)

    # ---------------------------------------------------------------- operator controls

    def fail_link(self, lgr: str, link: int) -> bool:
        return self.host.fail_link(lgr, link, self.now())

    def set_port(self, device: str, up: bool) -> None:
        """Take a soft device's port down or up, as a pulled cable would: the stack learns
        of it from the device's port event, like any other port change."""
        dev = self._dev(device)
        if not dev.device.has(Capability.PORT_CONTROL):
            raise ValueError(f"device {device} has no port control (only soft devices)")
        self.host.emit(self.now(), "link.event", event="fault", fault="port_up" if up else "port_down", device=device)
        dev.device.set_port_state(up)

    def set_faults(self, device: str, **faults) -> None:
        dev = self._dev(device)
        if not dev.device.has(Capability.FAULT_INJECTION):
            raise ValueError(f"device {device} has no fault injection (only soft devices)")
        for k in faults:
            if k not in FAULTS:
                raise ValueError(f"unknown fault {k!r}: loss, rx_loss, drop_next, delay")
        for k, v in faults.items():
            setattr(dev.device.faults, k, v)
        self.host.emit(self.now(), "link.event", event="fault", fault="faults", device=device, **faults)

    def add_frame_tap(self, tap: Callable, batch: bool = False, write_snap: int = 0, raw: bool = False) -> list[str]:
        """Hand every RoCE frame this host's soft devices send, receive or drop to ``tap``
        (``batch``: lists of them), on the device threads (it must be quick); ``write_snap``:
        RDMA WRITE frames keep that many bytes; ``raw``: the compiled engine's raw records as
        bytes (other devices give lists). Returns the tapped devices' addresses; a pyverbs
        device has no tap (its frames are seen only by a capture of the interface)."""
        tapped = []
        for dev in self.rdma.devs.values():
            if dev.device.has(Capability.FRAME_TAP):
                dev.device.add_tap(tap, batch, write_snap, raw)
                tapped.append(dev.device.addr)
        return tapped

    def remove_frame_tap(self, tap: Callable) -> None:
        for dev in self.rdma.devs.values():
            if dev.device.has(Capability.FRAME_TAP):
                dev.device.remove_tap(tap)

    def capabilities(self, device: str) -> frozenset[Capability]:
        """What a device can do beyond the verbs: port control, fault injection, a frame tap,
        the compiled engine's fast path (stack.verbs.api.Capability)."""
        return self._dev(device).device.capabilities

    def _dev(self, device: str):
        dev = self.rdma.devs.get(device)
        if dev is None:
            raise ValueError(f"no device {device!r}; devices: {', '.join(self.rdma.devs) or 'none'}")
        return dev

    def force_decline(self, reason: int | None) -> None:
        """Make the next connections this host serves fall back with ``reason`` (None: stop)."""
        from dataclasses import replace

        self.host.config = replace(self.host.config, forced_decline=reason)


def handshake_active(h: ConnHandle) -> bool:
    conn = h.stack.host.conns.get(h.conn_id)
    return conn is not None and conn.hs not in (Hs.SMC, Hs.FALLBACK, Hs.FAILED)
