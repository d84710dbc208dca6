"""Which net device a TCP connection's route goes out on, and that device's IP addresses:
what the kernel reads for the SMC-Rv1 IP prefix (``smc_clc_prfx_set`` on the client,
``smc_clc_prfx_match`` on the server, both from ``sk_dst_get(clcsock->sk)->dev``).

Read from the kernel with rtnetlink, once per connection as the kernel does (no cache: an
address added a moment ago counts): RTM_GETROUTE for the connection's destination and
source (the route's output interface, ``ip route get DST from SRC``), then an RTM_GETADDR
dump of that family, kept for the interface in the kernel's own order. The result is a
``stack.core.negotiation.Netdev``; the sans-I/O core computes the prefixes from it.

Linux only; anywhere else, or when the kernel does not answer, ``lookup`` returns None and
the core assumes an interface holding just the TCP address (``Netdev.assumed``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from stack.core.negotiation import Netdev, tcp_address

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_GETROUTE = 20, 22, 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_SRC, RTA_OIF = 1, 2, 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        length, kind = _RTATTR.unpack_from(buf, off)
        if length < 4:
            break
        out.setdefault(kind, buf[off + 4 : off + length])
        off += _align(length)
    return out


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTATTR.pack(4 + len(data), kind) + data
    return raw + bytes(_align(len(raw)) - len(raw))


class NetdevReader:
    """An rtnetlink socket that answers ``lookup(local, peer)``. One per Stack; closed with it."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self.error = ""  # why lookups return None (no netlink here, the kernel refused)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            sock.bind((0, 0))
            sock.settimeout(1.0)  # the kernel answers at once; never hang a handshake on it
            self._sock = sock
        except (AttributeError, OSError) as e:  # not Linux, or netlink refused (a sandbox)
            self.error = f"rtnetlink unavailable: {e}"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def lookup(self, local: str, peer: str, scope_id: int = 0) -> Netdev | None:
        """The device of the route from ``local`` to ``peer`` and its addresses (None when it
        cannot be told). ``scope_id``: a link-local address's interface, which is the route's."""
        if self._sock is None:
            return None
        try:
            src, dst = tcp_address(local), tcp_address(peer)
            if src.version != dst.version:
                return None
            family = socket.AF_INET if src.version == 4 else socket.AF_INET6
            index = scope_id or self._route_oif(family, src, dst)
            if not index:
                return None
            addrs = self._addresses(family, index)
            try:
                name = socket.if_indextoname(index)
            except OSError:
                name = str(index)
            return Netdev.of(name, addrs)
        except (OSError, ValueError, struct.error) as e:
            self.error = f"route lookup {local} -> {peer}: {e}"
            return None

    # ---------------------------------------------------------------- rtnetlink

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body
        sock = self._sock
        sock.send(msg)
        out: list[tuple[int, bytes]] = []
        while True:
            data = sock.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    return out
                payload = data[off + _NLMSGHDR.size : off + length]
                off += _align(length)
                if mseq != seq:
                    continue  # an answer to an earlier request that gave up
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", payload)
                    if errno:
                        raise OSError(-errno, os.strerror(-errno))
                    return out
                out.append((mtype, payload))
                if not flags & NLM_F_DUMP:
                    return out

    def _route_oif(self, family: int, src, dst) -> int:
        bits = dst.max_prefixlen
        body = _RTMSG.pack(family, bits, bits, 0, 0, 0, 0, 0, 0) + _attr(RTA_DST, dst.packed) + _attr(RTA_SRC, src.packed)
        for mtype, payload in self._request(RTM_GETROUTE, 0, body):
            if mtype == RTM_NEWROUTE:
                oif = _attrs(payload, _RTMSG.size, len(payload)).get(RTA_OIF)
                if oif is not None:
                    return struct.unpack("=I", oif[:4])[0]
        return 0

    def _addresses(self, family: int, index: int) -> list[str]:
        """The interface's addresses as "address/prefixlen", in the kernel's order."""
        out = []
        body = _IFADDRMSG.pack(family, 0, 0, 0, 0)
        for mtype, payload in self._request(RTM_GETADDR, NLM_F_DUMP, body):
            if mtype != RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
                continue
            fam, plen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(payload)
            if fam != family or ifindex != index:
                continue
            attrs = _attrs(payload, _IFADDRMSG.size, len(payload))
            # IPv4: ifa_address (IFA_ADDRESS), which smc_clc_prfx_set4_rcu masks; IPv6: the
            # address itself, which is IFA_LOCAL when a peer address is set (inet6_fill_ifaddr)
            raw = attrs.get(IFA_ADDRESS) if family == socket.AF_INET else attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if raw is None:
                continue
            out.append(f"{ipaddress.ip_address(raw)}/{plen}")
        return out
