"""What the sans-I/O core asks of the world, and what a host hands to its parts.

The core never touches a socket, a clock or a NIC. Everything it causes goes through
one :class:`HostIO` object that the runtime implements with asyncio, TCP sockets and a
verbs provider, and that tests implement with an in-memory fabric and an injected clock.
Every input into the core carries ``now``.

Inside the core, a host's parts (the handshake machine, link groups, links, LLC flows,
connections) get :class:`Services` handed in: the I/O port, the configuration, the event
bus, the counters and the device table. None of them names the host; what they have to
tell their owner goes through callbacks or return values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Collection, Protocol, Sequence

from stack.events import Event, EventBus

from .config import SmcConfig


@dataclass(frozen=True)
class DeviceInfo:
    """An RDMA device port the host may use."""

    name: str
    gid: bytes  # RoCEv2 IPv4-mapped GID
    mac: bytes
    mtu: int  # enum ib_mtu code of the active MTU
    up: bool = True
    # SMC-Rv1 needs a RoCE v1 GID on the port (smc_ib_determine_gid without smcrv2 takes only
    # IB_GID_TYPE_ROCE): a kernel on Soft-RoCE (rxe) has none and offers no v1. The soft
    # devices emulate one (their v1 runs over the RoCEv2 GID: docs/kernel-fidelity.md)
    roce_v1: bool = True
    # the P_Key its QPs carry (entry ``pkey_index`` of the port's P_Key table, read from the
    # device); a link group is shared only by connections on the same one. None: no table
    pkey: int | None = None
    pkey_index: int = 0
    # the port's GID for each VLAN (0: the untagged LAN), read from its GID table: the
    # RoCEv2 IPv4-mapped GID whose net device is that VLAN's interface (the kernel's
    # smc_ib_determine_gid). None: the device does not tie its GIDs to net devices (the
    # soft devices: one UDP socket, one address) and ``gid`` serves every VLAN
    vlan_gids: tuple[tuple[int, bytes], ...] | None = None

    def on_vlan(self, vlan: int) -> "DeviceInfo | None":
        """The device as a connection on ``vlan`` uses it: ``gid`` the VLAN's GID, or None
        when the port has no GID for that VLAN (the kernel finds no device then:
        smc_pnet_determine_gid fails, and the connection falls back or is declined)."""
        if self.vlan_gids is None:
            return self
        gid = next((g for v, g in self.vlan_gids if v == vlan), None)
        if gid is None:
            return None
        return self if gid == self.gid else replace(self, gid=gid)


@dataclass(frozen=True)
class QpInfo:
    """A new RC QP in INIT with its receive buffers posted."""

    handle: int
    qpn: int
    psn: int
    device: str
    gid: bytes
    mac: bytes
    mtu: int


@dataclass
class MrInfo:
    """Registered memory: ``buf`` is a live view, ``rkey``/``addr`` what the peer writes to."""

    handle: int
    addr: int
    rkey: int
    size: int
    buf: memoryview


class HostIO(Protocol):
    # TCP: the CLC handshake and the fallback path
    def tcp_send(self, conn: int, data: bytes) -> None: ...

    # timers: one per key; arming again replaces it
    def arm_timer(self, key: tuple, when: float) -> None: ...
    def cancel_timer(self, key: tuple) -> None: ...

    # RDMA
    def create_qp(self, device: str, gid: bytes | None = None) -> QpInfo:
        """A QP on ``device`` whose path uses ``gid`` as its source GID (None: the device's
        ``gid``); the QP's ``gid`` says which one it got."""
        ...

    def qp_to_rtr(self, qp: int, peer_qpn: int, peer_psn: int, peer_gid: bytes, mtu: int) -> None: ...
    def qp_to_rts(self, qp: int) -> None: ...
    def destroy_qp(self, qp: int) -> None: ...
    def reg_mr(self, device: str, size: int, remote_write: bool, buf: memoryview | None = None) -> MrInfo:
        """Register ``size`` bytes with ``device``: fresh memory, or ``buf`` (already
        registered with another device) once more."""
        ...

    def dereg_mr(self, mr: int) -> None: ...
    def post_send(self, qp: int, wr_id: int, payload: bytes) -> bool: ...
    def post_write(self, qp: int, wr_id: int, sges: Sequence[tuple[int, int, int]], remote_addr: int, rkey: int) -> bool: ...

    # the application
    def conn_established(self, conn: int) -> None: ...
    def conn_fallback(self, conn: int, leftover: bytes) -> None: ...
    def conn_failed(self, conn: int, error: str) -> None: ...
    def conn_readable(self, conn: int) -> None: ...
    def conn_writable(self, conn: int) -> None: ...
    def conn_closed(self, conn: int, error: str | None) -> None: ...
    def conn_tcp_shutdown(self, conn: int) -> None:
        """Shut the connection's TCP connection down for writing (a FIN; the kernel's
        kernel_sock_shutdown of the clcsock in smc_close_active and smc_shutdown)."""
        ...

    def conn_tcp_reset(self, conn: int) -> None:
        """Reset the connection's TCP connection (an RST; tcp_abort in smc_close_active_abort)."""
        ...


class DeviceLookup(Protocol):
    """The host's RDMA devices, as its parts look them up."""

    def device(self, vlan: int = 0) -> DeviceInfo | None:
        """The first device that is up and has a GID on ``vlan`` (the one a new connection
        on that VLAN uses), with that GID."""
        ...

    def device_info(self, name: str, vlan: int | None = None) -> DeviceInfo | None:
        """The device ``name``; with ``vlan``, as that VLAN sees it (None: no GID on it)."""
        ...

    def alt_device(self, used: Collection[str], vlan: int = 0) -> DeviceInfo | None:
        """A device that is up, not in ``used`` and has a GID on ``vlan`` (the kernel's
        alternate RoCE device, smc_pnet_find_alt_roce: same VLAN), with that GID."""
        ...


class Services:
    """What a host hands to each of its parts. ``config`` and ``bus`` may be replaced while
    the host runs (an operator forcing a decline, a bench counting looks at the bus): parts
    read them from here each time instead of keeping their own."""

    __slots__ = ("name", "io", "config", "bus", "stats", "devices")

    def __init__(self, name: str, io: HostIO, config: SmcConfig, bus: EventBus, stats: dict[str, int], devices: DeviceLookup) -> None:
        self.name = name  # the host's name: every event carries it
        self.io = io
        self.config = config
        self.bus = bus
        self.stats = stats  # counters for snapshots (smc_client, links_down, failovers ...)
        self.devices = devices

    def emit(self, now: float, kind: str, lgr: str | None = None, link: int | None = None, conn: int | None = None, **fields: Any) -> None:
        bus = self.bus
        if bus.active:
            bus.emit(Event(now, kind, self.name, lgr, link, conn, fields))
