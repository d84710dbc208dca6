"""Stream objects with asyncio's conventions over an SMC-R connection or its TCP fallback.

``SmcStreamReader`` and ``SmcStreamWriter`` have the methods applications use on
``asyncio.StreamReader``/``StreamWriter`` (read, readexactly, readline, readuntil,
at_eof, async iteration; write, writelines, drain, write_eof, close, wait_closed,
get_extra_info, get_write_buffer_size). ``get_extra_info("smc")`` tells the mode, the
fallback reason and where the connection lives (link group, link).

Urgent data, as sockets have it (MSG_OOB, SO_OOBINLINE): ``writer.write_urgent(data)``
sends ``data`` with its last byte urgent (what follows waits until the peer has consumed
everything, as the kernel's SMC sender does); ``await reader.read_urgent()`` returns the
peer's urgent byte, which is kept out of the stream unless ``reader.oob_inline`` is set.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from typing import Any, Protocol

from .tcp import reset

READ_LIMIT = 256 << 10  # bytes pulled out of the RMB (or TCP) ahead of the application


class Conn(Protocol):
    """What the streams ask of their connection (``conn.ConnHandle``)."""

    conn_id: int
    mode: str  # "INIT", "SMCR", "TCP" or "FAILED"
    error: str | None
    transport: asyncio.Transport | None
    closed: asyncio.Future

    def smc_send(self, data, urgent: bool = False) -> int: ...
    def smc_recv(self, n: int) -> bytes: ...
    def smc_recv_urgent(self) -> int | None: ...
    def smc_oob_inline(self, inline: bool | None = None) -> bool: ...
    def smc_eof(self) -> bool: ...
    def smc_error(self) -> str | None: ...
    def smc_info(self) -> dict[str, Any]: ...
    def smc_shutdown_wr(self) -> None: ...
    def smc_close(self) -> None: ...
    def smc_abort(self) -> None: ...
    def pause_tcp_reading(self) -> None: ...
    def resume_tcp_reading(self) -> None: ...
    async def tcp_drain(self) -> None: ...


class SmcStreamReader:
    def __init__(self, handle: Conn) -> None:
        self._h = handle
        self._buf = bytearray()
        self._eof = False
        self._exc: BaseException | None = None
        # every waiting reader: read() and read_urgent() may wait at once (an application
        # reads the stream while a task waits for the urgent byte), and both must wake
        self._waiters: list[asyncio.Future] = []

    # fed by the stack
    def _feed(self, data: bytes) -> None:
        self._buf += data
        self._wake()
        if self._h.transport is not None and self._h.mode == "TCP" and len(self._buf) > READ_LIMIT:
            self._h.pause_tcp_reading()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)

    def _fill(self) -> None:
        """Take what the RMB holds (SMC) up to the read-ahead limit."""
        if self._h.mode == "SMCR":
            room = READ_LIMIT - len(self._buf)
            if room > 0:
                data = self._h.smc_recv(room)
                if data:
                    self._buf += data
            if self._h.smc_eof():
                self._eof = True
                error = self._h.smc_error()
                if error and self._exc is None:
                    self._exc = ConnectionResetError(error)  # recv after an abort: ECONNRESET, as the kernel
        elif self._h.mode == "TCP" and len(self._buf) < READ_LIMIT:
            self._h.resume_tcp_reading()

    async def _wait(self) -> None:
        w = asyncio.get_running_loop().create_future()
        self._waiters.append(w)
        try:
            await w
        finally:
            self._waiters.remove(w)

    def at_eof(self) -> bool:
        self._fill()
        return self._eof and not self._buf

    def buffered(self) -> int:
        """Bytes taken from the connection that the application has not read yet."""
        return len(self._buf)

    @property
    def oob_inline(self) -> bool:
        """SO_OOBINLINE: the peer's urgent byte stays in the stream (the read before it stops
        at it) instead of being kept for ``read_urgent``. Off by default, as on sockets."""
        h = self._h
        if h.mode == "SMCR":
            return h.smc_oob_inline()
        sock = h.transport.get_extra_info("socket") if h.transport is not None else None
        return bool(sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE))

    @oob_inline.setter
    def oob_inline(self, inline: bool) -> None:
        h = self._h
        if h.mode == "SMCR":
            h.smc_oob_inline(bool(inline))
        elif h.transport is not None:
            h.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, int(bool(inline)))

    async def read_urgent(self) -> bytes:
        """recv(MSG_OOB): wait for the peer's urgent byte and return it (one byte), or b""
        when the connection ends without one. A byte is returned once; one that came while
        another was unread replaces it (as TCP's single urgent byte). OSError EINVAL when
        ``oob_inline`` is set, as recv(MSG_OOB) on such a socket."""
        h = self._h
        while True:
            if self.oob_inline:
                raise OSError(errno.EINVAL, "the urgent byte is inline (oob_inline): read it from the stream")
            if h.mode == "SMCR":
                byte = h.smc_recv_urgent()
                if byte is not None:
                    return bytes((byte,))
                if h.smc_eof():
                    return b""
            elif h.mode == "TCP":
                data = self._tcp_urgent()
                if data:
                    return data
                if self._eof or h.transport is None or h.transport.is_closing():
                    return b""
                try:  # the event loop does not watch for exceptional conditions: look again soon
                    await asyncio.wait_for(self._wait(), 0.02)
                except asyncio.TimeoutError:
                    pass
                continue
            else:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._wait()

    def _tcp_urgent(self) -> bytes:
        sock = self._h.transport.get_extra_info("socket") if self._h.transport is not None else None
        if sock is None:
            return b""
        dup = sock.dup()
        try:
            return dup.recv(1, socket.MSG_OOB | socket.MSG_DONTWAIT)
        except OSError:  # EINVAL: none (yet), EAGAIN: announced, not here yet
            return b""
        finally:
            dup.close()

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if n < 0:
            chunks = []
            while True:
                chunk = await self.read(1 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        h = self._h
        while True:
            if self._buf:
                out = bytes(self._buf[:n])
                del self._buf[:n]
                return out
            if h.mode == "SMCR":  # straight from the RMB: the consumer cursor moves as the application reads
                data = h.smc_recv(n)
                if data:
                    return data
            self._fill()
            if self._buf:
                continue
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            await self._wait()

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        first = await self.read(n) if n else b""
        if len(first) == n:  # all of it in one piece (bulk, usually): no second copy
            return first
        out = bytearray(first)
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        while True:
            self._fill()
            i = self._buf.find(separator)
            if i >= 0:
                out = bytes(self._buf[: i + len(separator)])
                del self._buf[: i + len(separator)]
                return out
            if self._exc is not None:
                raise self._exc
            if self._eof:
                partial = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(partial, None)
            if len(self._buf) >= READ_LIMIT:
                raise asyncio.LimitOverrunError("separator not found within the read limit", len(self._buf))
            await self._wait()

    async def readline(self) -> bytes:
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


def _kept(data: bytes | bytearray | memoryview) -> memoryview:
    """What the writer keeps of bytes the sndbuf could not take yet: a view of them when
    nothing can change them (bytes, or a view of bytes), a copy otherwise, as a
    transport's write copies, since the caller may reuse a mutable buffer at once."""
    if type(data) is bytes:
        return memoryview(data)
    if type(data) is memoryview and type(data.obj) is bytes and data.format == "B" and data.ndim == 1 and data.c_contiguous:
        return data
    return memoryview(bytes(data))


class SmcStreamWriter:
    def __init__(self, handle: Conn, reader: SmcStreamReader) -> None:
        self._h = handle
        self._reader = reader
        self._pending: deque[memoryview] = deque()
        self._urgent: deque[bool] = deque()  # per pending chunk: sent with MSG_OOB
        self._pending_bytes = 0
        self._eof_pending = False
        self._close_pending = False
        self._closing = False
        self._drain_waiters: list[asyncio.Future] = []
        self._lost: str | None = None  # why bytes written could not be sent

    @property
    def transport(self):
        return self._h.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "smc":
            return self._h.smc_info()
        if self._h.transport is not None:
            return self._h.transport.get_extra_info(name, default)
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._write(data, False)

    def write_urgent(self, data: bytes | bytearray | memoryview) -> None:
        """send(data, MSG_OOB): ``data`` goes after what was written before it, and its last
        byte is the urgent byte the peer reads with ``read_urgent`` (or inline). On SMC-R,
        what is written after it waits in the writer until the peer has consumed all of it
        (smc_tx_sendmsg's urg_tx_pend); ``drain`` and ``get_write_buffer_size`` show it."""
        self._write(data, True)

    def _write(self, data: bytes | bytearray | memoryview, urgent: bool) -> None:
        if self._closing or self._eof_pending:
            raise RuntimeError("write after close or write_eof")
        h = self._h
        if h.error is not None:
            raise ConnectionResetError(h.error)
        if not data:
            return
        if h.mode == "TCP":
            if urgent:
                self._tcp_write_urgent(bytes(data))
            else:
                h.transport.write(data)
            h.tcp_moved(sent=len(data))
            return
        if not self._pending:  # straight into the sndbuf; only what does not fit waits here
            try:
                n = h.smc_send(data, urgent)
            except (ConnectionError, KeyError) as e:
                self._lose(e)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
        self._pending.append(_kept(data))
        self._urgent.append(urgent)
        self._pending_bytes += len(data)
        self._push()

    def _tcp_write_urgent(self, data: bytes) -> None:
        """TCP (fallback): the socket's own MSG_OOB once everything written before has left;
        what the socket does not take at once follows as ordinary data."""
        transport = self._h.transport
        sent = 0
        if transport.get_write_buffer_size() == 0:
            dup = transport.get_extra_info("socket").dup()
            try:
                sent = dup.send(data, socket.MSG_OOB)
            except BlockingIOError:
                sent = 0
            finally:
                dup.close()
        if sent < len(data):
            transport.write(data[sent:])

    def get_write_buffer_size(self) -> int:
        """Bytes written that are not in the connection's send buffer yet (TCP: the transport's)."""
        if self._h.mode == "TCP" and self._h.transport is not None:
            return self._h.transport.get_write_buffer_size()
        return self._pending_bytes

    def writelines(self, data) -> None:
        for chunk in data:
            self.write(chunk)

    def _push(self) -> None:
        """Move pending bytes into the sndbuf; called again whenever space frees."""
        while self._pending:
            try:
                n = self._h.smc_send(self._pending[0], self._urgent[0])
            except (ConnectionError, KeyError) as e:
                self._lose(e)
                break
            if n == 0:
                break
            self._pending_bytes -= n
            if n == len(self._pending[0]):
                self._pending.popleft()
                self._urgent.popleft()
            else:
                self._pending[0] = self._pending[0][n:]
        if not self._pending:
            if self._eof_pending:
                self._eof_pending = False
                self._h.smc_shutdown_wr()
            if self._close_pending:
                self._close_pending = False
                self._h.smc_close()
        if self._pending_bytes <= READ_LIMIT:
            for w in self._drain_waiters:
                if not w.done():
                    w.set_result(None)
            self._drain_waiters.clear()

    def _lose(self, e: Exception) -> None:
        """What was written cannot be sent: say so on the next drain, as asyncio does for a
        closed transport (otherwise a writing loop never suspends and starves the loop)."""
        self._pending.clear()
        self._urgent.clear()
        self._pending_bytes = 0
        self._lost = "connection closed: cannot send" if isinstance(e, KeyError) else str(e) or "broken pipe"
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError(self._lost))
        self._drain_waiters.clear()

    def _fail(self, exc: BaseException) -> None:
        self._pending.clear()
        self._urgent.clear()
        self._pending_bytes = 0
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(exc)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        if self._h.error is not None:
            raise ConnectionResetError(self._h.error)
        if self._lost is not None:
            await asyncio.sleep(0)  # as asyncio's drain on a closing transport: let the loop run
            raise ConnectionResetError(self._lost)
        if self._h.mode == "TCP":
            await self._h.tcp_drain()
            return
        while self._pending_bytes > READ_LIMIT:
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._h.mode == "TCP":
            self._h.transport.write_eof()
            return
        self._eof_pending = True
        self._push()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._h.mode == "TCP":
            self._h.transport.close()
            return
        self._close_pending = True
        self._push()

    def abort(self) -> None:
        """Reset the connection: the peer sees an SMC abort and a reset of the TCP
        connection (after a fallback, the TCP reset alone)."""
        self._closing = True
        self._pending.clear()
        self._urgent.clear()
        self._pending_bytes = 0
        if self._h.mode == "TCP":
            reset(self._h.transport)
        else:
            self._h.smc_abort()

    async def wait_closed(self) -> None:
        await self._h.closed

    def __repr__(self) -> str:
        return f"<SmcStreamWriter conn={self._h.conn_id} mode={self._h.mode}>"
