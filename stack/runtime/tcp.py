"""The TCP side of every connection: the asyncio protocol that carries the CLC handshake and,
after a fallback, the application's bytes; and the listener object ``start_server`` returns.

While the handshake runs, what arrives goes to the core (``tcp_data``); in TCP mode to the
connection's reader; an SMC-R connection's TCP connection stays idle (stray bytes are
ignored, as the kernel's clcsock does). A connection that a listener accepts gets its handle
from ``accepted``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Awaitable, Callable


def reset(transport: asyncio.Transport) -> None:
    """Close a TCP connection with an RST (the kernel's tcp_abort): a zero linger time, then
    the close; a plain abort() of the transport sends a FIN."""
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already gone: closing it is all that is left
            pass
    transport.abort()


class TcpProtocol(asyncio.Protocol):
    def __init__(self, handle: Any = None, accepted: Callable[[asyncio.Transport, "TcpProtocol"], Any] | None = None) -> None:
        self.h = handle  # the connection's conn.ConnHandle (for an accepted one: once made)
        self.accepted = accepted
        self._paused = False
        self._drain_waiters: list[asyncio.Future] = []

    def connection_made(self, transport: asyncio.Transport) -> None:
        if self.h is None:  # accepted by a listener
            self.h = self.accepted(transport, self)
        else:
            self.h.transport, self.h.protocol = transport, self

    def data_received(self, data: bytes) -> None:
        h = self.h
        if h.mode == "INIT":
            port = h.port
            port.host.tcp_data(h.conn_id, data, port.now())
        elif h.mode == "TCP":
            h.tcp_moved(received=len(data))
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
        port = h.port
        if h.mode == "INIT":
            port.host.tcp_conn_closed(h.conn_id, port.now(), str(exc) if exc else None)
        elif h.mode == "TCP":
            if exc is not None:
                h.reader._set_exception(ConnectionResetError(str(exc)))
            h.reader._feed_eof()
            port.host.tcp_conn_closed(h.conn_id, port.now(), str(exc) if exc else None)
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
    """A listener: ``cb(reader, writer)`` is called for each connection once its handshake
    has ended in SMC-R or TCP; a coroutine it returns runs as a task."""

    def __init__(self, cb: Callable[[Any, Any], Awaitable[None] | None], smc: bool) -> None:
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
