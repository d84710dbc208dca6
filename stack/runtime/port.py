"""The core's I/O port: the runtime's implementation of ``HostIO``.

What the sans-I/O core asks for is done here: bytes on a connection's TCP transport,
timers on the event loop (one per key; arming again replaces it), RDMA through the verbs
driver (the data path's ``post_send`` and ``post_write`` are the driver's own methods, bound
once), and the application told through the connection's handle (established, fell back,
failed, readable, writable, closed). Timer expiries and device port events go back to the
core with ``now`` from the loop's clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stack.core.connection import PEER_ABORT_ERROR
from stack.core.host import SmcHost
from stack.core.ports import MrInfo, QpInfo
from stack.verbs.api import EventType

from .rdma import RdmaDriver
from .tcp import reset


class HostPort:
    def __init__(self, loop: asyncio.AbstractEventLoop, rdma: RdmaDriver, handles: dict[int, Any]) -> None:
        self.loop = loop
        self.now = loop.time  # the core's clock, bound once (called on every message)
        self.rdma = rdma
        self.handles = handles  # conn.ConnHandle by connection id
        self.host: SmcHost | None = None  # set once the host exists (it is made with this port)
        self._timers: dict[tuple, asyncio.TimerHandle] = {}
        # the core's data path goes straight to the driver
        self.post_send, self.post_write = rdma.post_send, rdma.post_write

    def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()

    # ---------------------------------------------------------------- TCP and timers

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

    # ---------------------------------------------------------------- RDMA (the driver does it)

    def create_qp(self, device: str, gid: bytes | None = None) -> QpInfo:
        return self.rdma.create_qp(device, gid)

    def qp_to_rtr(self, qp: int, peer_qpn: int, peer_psn: int, peer_gid: bytes, mtu: int) -> None:
        self.rdma.qp_to_rtr(qp, peer_qpn, peer_psn, peer_gid, mtu)

    def qp_to_rts(self, qp: int) -> None:
        self.rdma.qp_to_rts(qp)

    def destroy_qp(self, qp: int) -> None:
        self.rdma.destroy_qp(qp)

    def reg_mr(self, device: str, size: int, remote_write: bool, buf: memoryview | None = None) -> MrInfo:
        return self.rdma.reg_mr(device, size, remote_write, buf)

    def dereg_mr(self, mr: int) -> None:
        self.rdma.dereg_mr(mr)

    def device_event(self, device: str, event: EventType) -> None:
        if event in (EventType.PORT_ERR, EventType.PORT_ACTIVE) and self.host is not None:
            self.host.port_event(device, event == EventType.PORT_ACTIVE, self.now())
        elif event == EventType.GID_CHANGE and self.host is not None and device in self.rdma.devs:
            self.host.gids_changed(self.rdma.devs[device].info, self.now())

    # ---------------------------------------------------------------- the application

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
            h.tcp_moved(received=len(leftover))
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

    def conn_tcp_shutdown(self, conn: int) -> None:
        """A FIN on the connection's TCP connection; the socket is closed when the
        connection is (the kernel shuts its clcsock down with SHUT_RDWR or SHUT_WR, and
        SHUT_RD sends nothing)."""
        h = self.handles.get(conn)
        if h is not None and h.transport is not None and h.transport.can_write_eof():
            h.transport.write_eof()

    def conn_tcp_reset(self, conn: int) -> None:
        """An RST on the connection's TCP connection (the kernel's tcp_abort)."""
        h = self.handles.get(conn)
        if h is not None and h.transport is not None:
            reset(h.transport)

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
            if error != PEER_ABORT_ERROR:  # the peer's abort ends the stream for a reader (smc_rx_recvmsg)
                h.reader._set_exception(exc)
            h.writer._fail(exc)
        h.reader._feed_eof()
        if h.transport is not None and h.mode == "SMCR":
            h.transport.close()
        if not h.closed.done():
            h.closed.set_result(None)
