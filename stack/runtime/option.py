"""The real SMC TCP option on the stack's own sockets (native/smcopt, a BPF program).

With it, a client's SYN and a listener's SYN-ACK carry the SMC experimental option as the
kernel's do, and the stack learns whether the peer's did: the only signalling that
interoperates with the Linux kernel. Without it, SMC capability travels in-band (a Proposal
first thing on the TCP connection).
"""

from __future__ import annotations

import asyncio
import socket


class SmcOption:
    """``mode``: "option" (required: ``open`` raises BpfUnavailable without the program),
    "auto" (the option when the program is loaded, else in-band), "inband"."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.map = None  # native.smcopt.OptionMap when the option is in use
        self.signalling = "inband"
        self.note = ""  # why not the option, when "auto" fell back to in-band

    def open(self) -> None:
        if self.mode == "inband":
            return
        from native.smcopt import BpfUnavailable, OptionMap  # outside the stack: loaded only when asked for

        try:
            self.map = OptionMap.open()
            self.signalling = "tcp_option"
        except BpfUnavailable as e:
            if self.mode == "option":
                raise
            self.note = str(e)

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None

    async def connect(self, loop: asyncio.AbstractEventLoop, host: str, port: int, local_addr: tuple[str, int] | None) -> socket.socket:
        """A TCP socket opted in to the SMC option, connected: IPv4 or IPv6 as ``host`` is
        (an IPv6 connection negotiates SMC-Rv1 only, as the kernel's)."""
        family, address = _numeric(host, port)
        if family is None:  # a name: the resolver, on the loop's executor
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"{host}: no address")
            family, address = infos[0][0], infos[0][4]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            self.map.want(sock)
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    def listener(self, host: str | None, port: int, backlog: int) -> socket.socket:
        family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # IPv6 only, as asyncio's create_server: an IPv4 listener may share the port
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            self.map.want(sock)  # before listen(): the program arms the listener then
            sock.bind((host or "0.0.0.0", port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def peer(self, transport: asyncio.Transport | None) -> bool | None:
        """Whether the peer's SYN / SYN-ACK carried the SMC option; None: in-band signalling
        (no program, or it did not see this connection)."""
        if self.map is None or transport is None:
            return None
        sock = transport.get_extra_info("socket")
        result = self.map.result(sock.fileno())
        return result.peer if result.done else None


def _numeric(host: str, port: int) -> tuple[socket.AddressFamily | None, tuple]:
    """An address written as numbers needs no resolver (as asyncio's own connect skips it): the
    executor round trip cost more than the rest of a connect on loopback."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, TypeError):
            continue
        return family, (host, port) if family == socket.AF_INET else (host, port, 0, 0)
    return None, ()
