"""One SMC-R host, sans-I/O: where every input enters and is routed to the part it is for.

Inputs (each with ``now``): TCP connections starting and their CLC bytes (to the
handshake machine, ``handshake``), RDMA completions and received SENDs (to the link their
QP belongs to), timer expiries, port events and application calls by connection id.
Effects go through ``HostIO``; every step is reported on the event bus.

The host owns its parts and hands them their services (``ports.Services``): the
directory of devices and link groups (``directory``), the handshake machine, and the
connections by id. It is the owner its link groups and connections report to: a link
group's QPs coming and going, LLC messages (``llcflows`` answers them; a first link's
CONFIRM LINK goes to the handshake), handshakes a group can no longer carry, failovers,
the group's end; a connection reaching CLOSED.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Iterable

from stack.events import EventBus
from stack.wire import codes, llc
from stack.wire.codes import DEL, LgrRole, LinkState, SmcState

from . import llcflows
from .config import SmcConfig
from .connection import SmcConnection
from .directory import Devices, Directory
from .handshake import Handshake
from .link import Link, gid_text
from .linkgroup import LinkGroup, SecurityContext
from .negotiation import Netdev
from .ports import DeviceInfo, HostIO, Services


class SmcHost:
    def __init__(self, config: SmcConfig, io: HostIO, devices: Iterable[DeviceInfo], bus: EventBus | None = None,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.rng = rng or random.Random()
        self.name = config.host
        self.device_table = Devices(devices)
        first = next((d for d in self.device_table.all if d.up), None)  # its MAC: the system id, whatever VLANs it serves
        self.peer_id = self.rng.getrandbits(16).to_bytes(2, "big") + (first.mac if first else bytes(6))
        self.stats = {"smc_client": 0, "smc_server": 0, "fallback_client": 0, "fallback_server": 0, "handshake_errors": 0,
                      "links_down": 0, "links_added": 0, "failovers": 0}  # fmt: skip
        self.ctx = Services(config.host, io, config, bus or EventBus(), self.stats, self.device_table)
        self.directory = Directory(self.ctx, self, self.rng)
        self.conns: dict[int, SmcConnection] = {}
        self.directory.conns = self.conns  # counted against the connection limit
        self.handshake = Handshake(self.ctx, self.directory, self.conns, self.peer_id)
        # the directory's, under the names snapshots, tests and tools know
        self.lgrs: list[LinkGroup] = self.directory.lgrs
        self.links_by_qp: dict[int, Link] = self.directory.links_by_qp
        self.dying_lgrs: dict[int, LinkGroup] = self.directory.dying
        self.failovers: deque[dict] = deque(maxlen=256)  # the latest failovers, for snapshots and reports

    # ---------------------------------------------------------------- services

    @property
    def io(self) -> HostIO:
        return self.ctx.io

    @property
    def config(self) -> SmcConfig:
        return self.ctx.config

    @config.setter
    def config(self, config: SmcConfig) -> None:  # an operator forcing a decline
        self.ctx.config = config

    @property
    def bus(self) -> EventBus:
        return self.ctx.bus

    @bus.setter
    def bus(self, bus: EventBus) -> None:
        self.ctx.bus = bus

    @property
    def bus_active(self) -> bool:
        return self.ctx.bus.active

    @property
    def devices(self) -> list[DeviceInfo]:
        return self.device_table.all

    @property
    def fallback_reasons(self) -> dict[tuple[str, int], int]:
        return self.handshake.fallback_reasons

    def emit(self, now: float, kind: str, lgr: str | None = None, link: int | None = None, conn: int | None = None, **fields) -> None:
        self.ctx.emit(now, kind, lgr, link, conn, **fields)

    # ---------------------------------------------------------------- devices

    def set_device_state(self, name: str, up: bool) -> None:
        self.device_table.set_state(name, up)

    def gids_changed(self, info: DeviceInfo, now: float) -> None:
        """A device's GIDs per VLAN changed (a VLAN interface made or removed): new
        connections on a VLAN take its new GID (or find no device), and a link whose GID is
        gone goes down, its connections failing over where the group has another link (the
        kernel's smc_ib_gid_check takes the whole port down then: smcr_port_err)."""
        self.device_table.update(info)
        gids = {g for _, g in info.vlan_gids} if info.vlan_gids is not None else {info.gid}
        for lgr in list(self.lgrs):
            for link in [lk for lk in lgr.links.values() if lk.device == info.name and lk.usable and lk.qp.gid not in gids]:
                llcflows.link_down(lgr, link, now, f"GID {gid_text(link.qp.gid)} gone from {info.name}")
        device = self.device_table.device_info(info.name)
        if device is not None and device.up:
            # smc_ib_port_event_work on a GID change of an active port: smcr_port_add, the
            # groups look for a link again. A port that came back before its GIDs did (its
            # net device's addresses are re-added after the port event) is only usable now.
            for lgr in list(self.lgrs):
                llcflows.want_link(lgr, now, f"GIDs changed on {info.name}")

    def port_event(self, name: str, up: bool, now: float) -> None:
        """A device port went down (its links fail over) or came back (links are added again)."""
        self.set_device_state(name, up)
        self.emit(now, "link.event", event="port_up" if up else "port_down", device=name)
        for lgr in list(self.lgrs):
            if up:
                llcflows.want_link(lgr, now, f"port up on {name}")
            else:
                for link in [l for l in lgr.links.values() if l.device == name and l.usable]:
                    llcflows.link_down(lgr, link, now, f"port down on {name}")

    # ---------------------------------------------------------------- starting connections

    def client_start(self, conn_id: int, local: tuple[str, int], peer: tuple[str, int], now: float,
                     peer_smc: bool | None = None, netdev: Netdev | None = None,
                     security: SecurityContext | None = None) -> SmcConnection:  # fmt: skip
        """A TCP connection this host opened wants SMC. ``peer_smc``: whether the server's
        SYN-ACK carried the SMC TCP option (None: unknown, in-band signalling); False makes
        the connection TCP at once with PEERNOSMC and no CLC, as the kernel does.
        ``netdev``: the net device of the connection's route with its addresses, which the
        runtime read from the OS (the v1 IP prefix; None: unknown)."""
        conn = self._new_conn(conn_id, "client", local, peer, now, peer_smc, security)  # security: its netns, VLAN, P_Key
        self.handshake.start_client(conn, now, peer_smc, netdev)
        return conn

    def server_start(self, conn_id: int, local: tuple[str, int], peer: tuple[str, int], now: float, smc: bool = True,
                     peer_smc: bool | None = None, netdev: Netdev | None = None,
                     security: SecurityContext | None = None) -> SmcConnection:  # fmt: skip
        """A TCP connection accepted by a listener. ``smc=False``: a plain-TCP listener, which
        still answers a Proposal with a Decline PEERNOSMC (our in-band stand-in for the
        missing TCP option), so an SMC client falls back at once. ``peer_smc``: whether the
        client's SYN carried the SMC TCP option (None: unknown, in-band); False makes the
        connection TCP at once with PEERNOSMC, without waiting for a Proposal (the kernel's
        smc_listen_work). ``netdev``: as for ``client_start``, for the Proposal's prefix match."""
        conn = self._new_conn(conn_id, "server", local, peer, now, peer_smc, security)  # security: its netns, VLAN, P_Key
        conn.smc_listener = smc
        self.handshake.start_server(conn, now, peer_smc, netdev)
        return conn

    def _new_conn(self, conn_id: int, role: str, local, peer, now: float, peer_smc: bool | None = None,
                  security: SecurityContext | None = None) -> SmcConnection:  # fmt: skip
        """``security``: the TCP connection's network namespace, VLAN and P_Key; the
        connection shares a link group only with connections of the same context (None:
        the stack's own)."""
        if conn_id in self.conns:
            raise ValueError(f"connection id {conn_id} is in use")
        self.directory.set_context(conn_id, security)
        conn = SmcConnection(self.ctx, conn_id, role, local, peer, self.connection_closed)
        conn.handshake_started = now
        conn.smc_listener = True
        self.conns[conn_id] = conn
        # with the real TCP option (native/smcopt), whether the peer's SYN or SYN-ACK carried it
        option = {} if peer_smc is None else {"peer_smc_option": peer_smc}
        self.emit(now, "conn.open", conn=conn_id, role=role, local=f"{local[0]}:{local[1]}", peer=f"{peer[0]}:{peer[1]}", **option)
        return conn

    def tcp_data(self, conn_id: int, data: bytes, now: float) -> None:
        """CLC bytes from the TCP connection (only while the handshake runs)."""
        conn = self.conns.get(conn_id)
        if conn is not None:
            self.handshake.tcp_data(conn, data, now)

    # ---------------------------------------------------------------- closing

    def connection_closed(self, conn: SmcConnection, now: float) -> None:
        """The close machine reached CLOSED: the connection's buffers go back to its link
        group (its RMB after DELETE RKEY) for the next connection, and the app is told."""
        self.io.cancel_timer(("flush", conn.id))
        lgr = conn.lgr
        if conn.mode == "SMCR" and lgr is not None:
            llcflows.unuse_buffers(lgr, conn, now)
            conn.rmb = conn.sndbuf = None
            lgr.conns.pop(conn.token, None)
        elif conn.mode == "INIT":  # closed in the middle of its handshake: what waits for it stops
            self.handshake.closed(conn, now)
        if lgr is not None and conn.mode in ("SMCR", "INIT") and not lgr.conns and not lgr.terminated:
            self.io.arm_timer(("lgr_idle", lgr.lgr_id), now + self.config.timeouts.lgr_idle + (10 if lgr.role == LgrRole.CLIENT else 0))
        self.conns.pop(conn.id, None)
        self.directory.set_context(conn.id, None)
        self.io.conn_closed(conn.id, conn.error)

    def tcp_conn_closed(self, conn_id: int, now: float, error: str | None = None) -> None:
        """A fallback (TCP) connection ended, or the TCP side of a handshake went away."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        self.handshake.tcp_closed(conn, now, error)
        if conn.mode == "TCP" and conn.state != SmcState.CLOSED:
            conn.error = error
            conn.set_state(SmcState.CLOSED, now, "tcp closed")

    # ---------------------------------------------------------------- what link groups tell their owner

    def link_added(self, link: Link) -> None:
        self.links_by_qp[link.qp.handle] = link

    def may_create_qp(self) -> bool:
        return self.directory.qp_room()

    def qp_destroyed(self, link: Link) -> None:
        self.links_by_qp.pop(link.qp.handle, None)

    def llc_received(self, lgr: LinkGroup, link: Link, msg: llc.LlcMessage, now: float) -> None:
        if not llcflows.receive(lgr, link, msg, now):
            self.handshake.confirm_link(lgr, link, msg, now)

    def handshake_lost(self, conn: SmcConnection, now: float, why: str) -> None:
        self.handshake.link_lost(conn, now, why)

    def failover_ended(self, info: dict) -> None:
        self.failovers.append(info)

    def lgr_terminated(self, lgr: LinkGroup, now: float) -> None:
        self.directory.terminated(lgr)
        self.io.cancel_timer(("lgr_idle", lgr.lgr_id))

    def lgr_freed(self, lgr: LinkGroup) -> None:
        self.directory.freed(lgr)

    # ---------------------------------------------------------------- RDMA and timers

    def on_send_done(self, qp: int, wr_id: int, ok: bool, now: float, status: str = "") -> None:
        link = self.links_by_qp.get(qp)
        if link is None:
            return
        link.send_done(wr_id, ok, now)
        if not ok and link.state == LinkState.ACTIVE:
            self._qp_error(link, status or "error", f"send completion {status or 'error'}", now)

    def on_recv(self, qp: int, data: bytes, now: float) -> None:
        link = self.links_by_qp.get(qp)
        if link is not None:
            link.received(data, now)

    def on_qp_error(self, qp: int, reason: str, now: float) -> None:
        link = self.links_by_qp.get(qp)
        if link is not None:
            self._qp_error(link, reason, reason, now)

    def _qp_error(self, link: Link, status: str, why: str, now: float) -> None:
        lgr = self._lgr_of(link)
        if lgr is not None:
            lgr.emit(now, "link.event", link=link.link_id, event="qp_error", status=status)
            llcflows.link_down(lgr, link, now, why)

    def _lgr_of(self, link: Link) -> LinkGroup | None:
        lgr = self.directory.lgr(link.lgr_id)
        return lgr if lgr is not None else self.dying_lgrs.get(link.lgr_id)

    def on_timer(self, key: tuple, now: float) -> None:
        kind = key[0]
        if kind == "clc":
            conn = self.conns.get(key[1])
            if conn is not None:
                self.handshake.timeout(conn, now)
        elif kind == "flush":
            conn = self.conns.get(key[1])
            if conn is not None:
                conn.flush_timeout(now)
        elif kind == "lgr_free":
            lgr = self.dying_lgrs.get(key[1])
            if lgr is not None:
                lgr.free_qps(now)
        else:
            lgr = self.directory.lgr(key[1])
            if lgr is None:
                return
            if kind == "llc":
                lgr.flow_timeout(now)
            elif kind == "testlink":
                llcflows.test_link_timer(lgr, key[2], now)
            elif kind == "testlink_resp":
                llcflows.test_link_expired(lgr, key[2], now)
            elif kind == "linkdown" and key[2] in lgr.links:
                llcflows.link_down(lgr, lgr.links[key[2]], now, "the QP refused a work request")
            elif kind == "lgr_sync":
                lgr.terminate(now, DEL.PROG_INIT_TERM, "the peer declined out of sync (SYNCERR)", orderly=False)
            elif kind == "lgr_idle" and not lgr.conns:
                lgr.terminate(now, DEL.PROG_INIT_TERM, "idle")

    # ---------------------------------------------------------------- application calls by id

    def app_send(self, conn_id: int, data, now: float) -> int:
        return self.conns[conn_id].app_send(data, now)

    def app_recv(self, conn_id: int, n: int, now: float) -> bytes:
        return self.conns[conn_id].app_recv(n, now)

    def app_shutdown_wr(self, conn_id: int, now: float) -> None:
        self.conns[conn_id].app_shutdown_wr(now)

    def app_close(self, conn_id: int, now: float) -> None:
        conn = self.conns.get(conn_id)
        if conn is not None:
            conn.app_close(now)

    def app_abort(self, conn_id: int, now: float, reason: str = "aborted by the application") -> None:
        conn = self.conns.get(conn_id)
        if conn is not None:
            conn.abort(now, reason)

    # ---------------------------------------------------------------- faults and views

    def fail_link(self, lgr_name: str, link_id: int, now: float, reason: str = "failed by operator") -> bool:
        for lgr in self.lgrs:
            if lgr.name == lgr_name and link_id in lgr.links:
                llcflows.link_down(lgr, lgr.links[link_id], now, reason)
                return True
        return False

    def terminate_all(self, now: float, why: str) -> None:
        """Every link group ends (an operator's termination: DELETE LINK OP_INIT_TERM)."""
        for lgr in list(self.lgrs):
            lgr.terminate(now, DEL.OP_INIT_TERM, why)

    def snapshot(self) -> dict:
        return {
            "host": self.name, "peer_id": self.peer_id.hex(), "stats": dict(self.stats),
            "fallbacks": [{"role": r, "reason": c, "text": codes.format_reason(c), "count": n} for (r, c), n in sorted(self.fallback_reasons.items())],
            "lgrs": [lgr.info() for lgr in self.lgrs], "conns": [c.snapshot() for c in self.conns.values()],
            "failovers": list(self.failovers),
            "devices": [{"name": d.name, "up": d.up, "mtu": d.mtu, "pkey": d.pkey, "gid": gid_text(d.gid),
                         # the GID each VLAN's links use (null: the device has one GID for every VLAN)
                         "vlan_gids": None if d.vlan_gids is None else {str(v): gid_text(g) for v, g in d.vlan_gids}}
                        for d in self.devices],  # fmt: skip
            "limits": self.directory.limits_info(),
        }  # fmt: skip
