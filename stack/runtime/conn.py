"""The application's end of one connection: its reader and writer, its TCP transport, and
what the core said about it (mode, error), between the streams and the sans-I/O core.

A handle is made for every connection the stack opens or accepts and lives in the I/O
port's table until the core reports the connection closed (or failed). The streams talk to
it through the small interface ``streams.Conn``; it talks to the core by connection id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stack.core.connection import PEER_ABORT_ERROR
from stack.wire import codes

from .port import HostPort
from .streams import SmcStreamReader, SmcStreamWriter


class ConnHandle:
    """What the stack knows about one connection, shared by its reader and writer."""

    def __init__(self, port: HostPort, conn_id: int) -> None:
        self.port = port
        self.conn_id = conn_id
        self.transport: asyncio.Transport | None = None
        self.protocol: Any = None  # the tcp.TcpProtocol carrying it
        self.mode = "INIT"
        self.error: str | None = None
        self.ready: asyncio.Future = port.loop.create_future()
        self.closed: asyncio.Future = port.loop.create_future()
        self.reader = SmcStreamReader(self)
        self.writer = SmcStreamWriter(self, self.reader)
        self.info: dict = {}
        self._reading_paused = False
        # the peer's last urgent byte, kept for read_urgent() even when the streams' read-ahead
        # went past it (docs/kernel-fidelity.md)
        self.urg_seen = 0
        self.urg_byte = 0
        self.urg_unread = False

    def tcp_moved(self, sent: int = 0, received: int = 0) -> None:
        """Bytes a connection that fell back moved over TCP, counted where SMC-R's are (the
        core connection's counters), so its snapshot and smctop show them, not 0."""
        conn = self.port.host.conns.get(self.conn_id)
        if conn is not None:
            conn.bytes_sent += sent
            conn.bytes_received += received

    # SMC data path
    def smc_send(self, data, urgent: bool = False) -> int:
        """Bytes taken into the sndbuf; ``urgent``: send(MSG_OOB), its last byte urgent
        (KeyError once the connection is gone, as the streams expect)."""
        port = self.port
        if urgent:
            return port.host.conns[self.conn_id].app_send(data, port.now(), urgent=True)
        return port.host.app_send(self.conn_id, data, port.now())

    def smc_recv(self, n: int) -> bytes:
        port = self.port
        conn = port.host.conns.get(self.conn_id)
        if conn is None:
            return b""
        data = conn.app_recv(n, port.now())
        if conn.urg_rx_count != self.urg_seen:
            self._urgent_seen(conn)
        return data

    def _urgent_seen(self, conn) -> None:
        if conn.urg_rx_count != self.urg_seen:
            self.urg_seen, self.urg_byte = conn.urg_rx_count, conn.urg_rx_byte
            self.urg_unread = not conn.urg_inline

    def smc_recv_urgent(self) -> int | None:
        """recv(MSG_OOB): the peer's urgent byte, or None when there is none to read."""
        port = self.port
        conn = port.host.conns.get(self.conn_id)
        if conn is not None:
            self._urgent_seen(conn)
            byte = conn.app_recv_urgent(port.now())
            if byte is not None:
                self.urg_unread = False
                return byte
        if self.urg_unread:
            self.urg_unread = False
            return self.urg_byte
        return None

    def smc_oob_inline(self, inline: bool | None = None) -> bool:
        """SO_OOBINLINE: set it (``inline`` given) and say what it is."""
        conn = self.port.host.conns.get(self.conn_id)
        if conn is None:
            return False
        if inline is not None:
            conn.set_oob_inline(inline)
        return conn.urg_inline

    def smc_eof(self) -> bool:
        conn = self.port.host.conns.get(self.conn_id)
        return conn is None or conn.eof

    def smc_error(self) -> str | None:
        """Why reading must fail, once the stream has ended: never the peer's abort, which a
        reader sees as end of file (smc_rx_recvmsg breaks on peer_conn_abort and returns 0);
        the writer still fails (smc_tx_sendmsg: ECONNRESET)."""
        return None if self.error == PEER_ABORT_ERROR else self.error

    def smc_shutdown_wr(self) -> None:
        if self.conn_id in self.port.host.conns:
            self.port.host.app_shutdown_wr(self.conn_id, self.port.now())

    def smc_close(self) -> None:
        """close(): what the reader took out of the RMB and the application never read
        counts as unread, for the final flag (smc_close_final: abort when data is unread)."""
        conn = self.port.host.conns.get(self.conn_id)
        if conn is not None:
            conn.app_close(self.port.now(), unread=self.reader.buffered())

    def smc_abort(self) -> None:
        self.port.host.app_abort(self.conn_id, self.port.now())

    def smc_info(self) -> dict[str, Any]:
        conn = self.port.host.conns.get(self.conn_id)
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
