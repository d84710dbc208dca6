"""The SMC-option listener sockets (stack/runtime/option.py) behave as asyncio's own: an
IPv6 listener is IPv6 only, so a server may listen on 0.0.0.0 and :: with one port (the
lab's differential run found the second bind failing with EADDRINUSE)."""

from __future__ import annotations

import socket

import pytest

from stack.runtime.option import SmcOption


class _Map:
    """Stands in for the BPF program's map (native/smcopt), which needs root and a cgroup;
    what is under test is the socket, and which sockets were opted in."""

    def __init__(self) -> None:
        self.opted: list[int] = []

    def want(self, sock: socket.socket) -> None:
        self.opted.append(sock.family)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6")
def test_ipv4_and_ipv6_listeners_share_a_port_and_both_are_opted_in():
    opt = SmcOption("option")
    opt.map = _Map()
    v4 = opt.listener("0.0.0.0", 0, 8)
    try:
        port = v4.getsockname()[1]
        v6 = opt.listener("::", port, 8)
        try:
            assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert v6.getsockname()[1] == port
            assert opt.map.opted == [socket.AF_INET, socket.AF_INET6]
            with socket.create_connection(("::1", port), timeout=5):  # the IPv6 listener takes IPv6
                pass
        finally:
            v6.close()
    finally:
        v4.close()


def test_connect_takes_a_numeric_address_without_the_resolver(monkeypatch):
    """An address written as numbers is connected to straight away (no executor round trip
    through getaddrinfo); a name still goes through the resolver."""
    import asyncio

    async def main():
        loop = asyncio.get_running_loop()
        asked: list[str] = []
        real = loop.getaddrinfo

        async def spy(host, *a, **k):  # a name this machine need not know: the resolver answers it here
            asked.append(host)
            return await real("127.0.0.1" if host == "peer.test" else host, *a, **k)

        monkeypatch.setattr(loop, "getaddrinfo", spy)
        srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        opt = SmcOption("option")
        opt.map = _Map()
        try:
            for host in ("127.0.0.1", "peer.test"):
                sock = await opt.connect(loop, host, port, None)
                assert sock.getpeername() == ("127.0.0.1", port)
                sock.close()
        finally:
            srv.close()
        return asked, opt.map.opted

    asked, opted = asyncio.run(main())
    assert asked == ["peer.test"] and opted == [socket.AF_INET, socket.AF_INET]
