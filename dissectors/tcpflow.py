"""Ethernet/IPv4/TCP (or IPv6/TCP) frames of one TCP connection, so that CLC messages appear in a
capture as the TCP payload of their connection (as on a real host).

Sequence and acknowledgment numbers follow the bytes sent; the SYN and SYN-ACK carry
the SMC capability option (kind 254, ExID 0xE2D4C3D9) when the endpoint offers SMC.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from stack.wire.inet import SMC_TCP_OPTION, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Tcp, ip_tcp_frame

MSS_OPTION = bytes([0x02, 0x04, 0xFF, 0xD7])  # MSS 65495, what loopback advertises


@dataclass
class Endpoint:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    mac: bytes = bytes(6)
    smc: bool = True  # puts the SMC option on its SYN / SYN-ACK
    isn: int = 0


class TcpFlow:
    def __init__(self, client: Endpoint, server: Endpoint) -> None:
        self.client = client
        self.server = server
        self._next = {True: client.isn, False: server.isn}  # next sequence number by "from client"

    def _frame(self, from_client: bool, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        seq = self._next[from_client]
        ack = self._next[not from_client] if flags & TCP_ACK else 0
        tcp = Tcp(src.port, dst.port, seq, ack, flags, 65535, options)
        advance = len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        self._next[from_client] = (seq + advance) & 0xFFFFFFFF
        return ip_tcp_frame(src.mac, dst.mac, src.ip, dst.ip, tcp, payload)

    def handshake(self) -> list[bytes]:
        syn_opts = MSS_OPTION + (SMC_TCP_OPTION if self.client.smc else b"")
        synack_opts = MSS_OPTION + (SMC_TCP_OPTION if self.server.smc and self.client.smc else b"")
        return [
            self._frame(True, TCP_SYN, options=syn_opts),
            self._frame(False, TCP_SYN | TCP_ACK, options=synack_opts),
            self._frame(True, TCP_ACK),
        ]

    def data(self, from_client: bool, payload: bytes) -> bytes:
        return self._frame(from_client, TCP_PSH | TCP_ACK, payload)

    def ack(self, from_client: bool) -> bytes:
        return self._frame(from_client, TCP_ACK)

    def fin(self, from_client: bool) -> bytes:
        return self._frame(from_client, TCP_FIN | TCP_ACK)

    def rst(self, from_client: bool) -> bytes:
        return self._frame(from_client, TCP_RST | TCP_ACK)
