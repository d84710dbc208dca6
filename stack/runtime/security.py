"""The security context of a TCP connection, read from the OS: its network namespace and
the VLAN of the interface carrying it, and the P_Key of the RDMA device its link would use
(``core.linkgroup.SecurityContext``).

A link group is shared only by connections of one context. The kernel takes the namespace
from the socket (``sock_net``) and the VLAN from the route's device (``smc_vlan_by_tcpsk``);
here the namespace is the socket's own (ioctl ``SIOCGSKNS``, which needs CAP_NET_ADMIN in the
namespace's owner; without it, the process's namespace, where the socket was made) and the
VLAN the one of the interface that owns the connection's local address, from
``/proc/net/vlan/config`` (no 8021q module: no VLAN). The P_Key is the device's, entry 0 of
its port's P_Key table (``device_pkey``; the kernel's SMC-R QPs use ``pkey_index`` 0): the
core adds it to the context of each connection (``Directory.set_context``).

The VLAN also picks the GID a connection's links use (``vlan_gids``): the device's RoCEv2
GID whose net device is the VLAN's interface, as the kernel's ``smc_ib_determine_gid``, so
a VLAN's RDMA frames are tagged like its TCP connection.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import threading

from stack.core.linkgroup import SecurityContext
from stack.verbs.api import GidEntry

SIOCGSKNS = 0x894C  # linux/sockios.h: the socket's network namespace as a new fd
SIOCGIFCONF = 0x8912
CLONE_NEWNET = 0x40000000


IPV4_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of a RoCEv2 GID made from an IPv4 address
PKEY_INDEX = 0  # the entry SMC-R QPs use (smc_ib_modify_qp_init: pkey_index 0)


def device_pkey(table: list[int]) -> tuple[int | None, int]:
    """(P_Key, index) a device's QPs use, from its port's P_Key table: entry ``PKEY_INDEX``,
    as the kernel's SMC-R; None when the table is empty or the entry holds no valid P_Key
    (its low 15 bits zero: 0x0000 and 0x8000 are invalid)."""
    if len(table) <= PKEY_INDEX:
        return None, PKEY_INDEX
    pkey = table[PKEY_INDEX]
    return (pkey if pkey & 0x7FFF else None), PKEY_INDEX


def vlan_gids(table: list[GidEntry], vlans: dict[str, int]) -> tuple[tuple[int, bytes, int], ...] | None:
    """(VLAN, GID, index) for each VLAN a port has a GID on, from its GID table and the
    VLAN id of each VLAN interface (``netdev_vlans``): the first RoCEv2 IPv4-mapped GID, in
    table order, whose net device is that VLAN's interface, or for VLAN 0 a net device that
    is no VLAN's, as the kernel's ``smc_ib_determine_gid`` picks them. (The kernel also wants
    the TCP source address in a subnet of that net device; a connection's VLAN is the one of
    the interface owning that address, ``vlan_of``, so it is.) None when no entry names a net
    device (the soft devices, IB): the port's one GID serves every VLAN."""
    if not any(e.netdev for e in table):
        return None
    out: dict[int, tuple[bytes, int]] = {}
    for e in sorted(table, key=lambda e: e.index):
        if e.netdev and e.type == "roce_v2" and e.gid[:12] == IPV4_MAPPED:
            out.setdefault(vlans.get(e.netdev, 0), (e.gid, e.index))
    return tuple((vlan, gid, index) for vlan, (gid, index) in sorted(out.items()))


def _ns_inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def own_netns() -> int:
    """The calling thread's network namespace (its nsfs inode)."""
    return _ns_inode("/proc/thread-self/ns/net")


def socket_netns(sock: socket.socket) -> tuple[int, int | None]:
    """(nsfs inode, an fd of the namespace or None) of the socket; the caller closes the fd."""
    try:
        fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return own_netns(), None
    return os.fstat(fd).st_ino, fd


def _ipv4_interfaces() -> dict[str, str]:
    """IPv4 address -> interface name, in the calling thread's namespace (SIOCGIFCONF)."""
    out: dict[str, str] = {}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        size = 40  # struct ifreq on 64-bit Linux
        buf = array.array("B", bytes(size * 256))
        addr, _ = buf.buffer_info()
        n = struct.unpack("iL", fcntl.ioctl(s.fileno(), SIOCGIFCONF, struct.pack("iL", len(buf), addr)))[0]
        raw = buf.tobytes()[:n]
        for off in range(0, n, size):
            name = raw[off : off + 16].split(b"\0", 1)[0].decode("ascii", "replace")
            out[socket.inet_ntoa(raw[off + 20 : off + 24])] = name
    except OSError:
        pass
    finally:
        s.close()
    return out


def _ipv6_interfaces() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/thread-self/net/if_inet6") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6:
                    out[str(ipaddress.IPv6Address(bytes.fromhex(parts[0])))] = parts[5]
    except (OSError, ValueError):
        pass
    return out


def netdev_vlans() -> dict[str, int]:
    """Interface name -> VLAN id (/proc/net/vlan/config: "name | id | parent")."""
    out: dict[str, int] = {}
    try:
        with open("/proc/thread-self/net/vlan/config") as f:
            for line in f:
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 3 and parts[1].isdigit():
                    out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def vlan_of(local_ip: str) -> int:
    """The VLAN id of the interface owning ``local_ip`` in the calling thread's namespace (0: none)."""
    try:
        ip = ipaddress.ip_address(local_ip.split("%", 1)[0])
    except ValueError:
        return 0
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    table = _ipv4_interfaces() if ip.version == 4 else _ipv6_interfaces()
    name = table.get(str(ip))
    return netdev_vlans().get(name, 0) if name else 0


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` (os.setns before Python
    3.12: libc's setns). Raises OSError."""
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _in_netns(fd: int, fn, *args):
    """Run ``fn`` in the namespace ``fd`` on a helper thread (setns changes only that thread)."""
    result: list = [0]

    def run() -> None:
        try:
            setns(fd)
        except OSError:
            return
        result[0] = fn(*args)

    t = threading.Thread(target=run, name="smc-netns", daemon=True)
    t.start()
    t.join()
    return result[0]


def socket_context(transport_or_sock) -> SecurityContext | None:
    """The security context of a connected socket (or an asyncio transport's); None when it
    cannot be had (no socket: a test double)."""
    sock = transport_or_sock
    if hasattr(sock, "get_extra_info"):
        sock = sock.get_extra_info("socket")
    if sock is None or not hasattr(sock, "fileno"):
        return None
    try:
        local = sock.getsockname()[0]
    except OSError:
        return None
    netns, fd = socket_netns(sock)
    try:
        if fd is None or netns == own_netns():
            vlan = vlan_of(local)
        else:
            vlan = _in_netns(fd, vlan_of, local)
    finally:
        if fd is not None:
            os.close(fd)
    return SecurityContext(netns=netns, vlan=vlan)
