"""One SMC-R host, sans-I/O: the CLC handshake machine, link groups, connections.

Inputs (each with ``now``): TCP connections starting and their CLC bytes, RDMA
completions and received SENDs, timer expiries, application calls. Effects go through
``HostIO``; every step is reported on the event bus.

First contact: the server creates a link group and a link (QP) and sends Accept with the
first-contact bit; after the client's Confirm both QPs are connected and the server sends
LLC CONFIRM LINK on the new link; the response makes the link ACTIVE and the group SINGLE.
Subsequent contact: the server finds the group by peer id and peer GID (v1: and MAC),
the client by peer id and the Accept's QPN; each side registers its RMB and runs
CONFIRM RKEY before its Accept or Confirm. A client that cannot find the group declines
with SYNCERR and the out-of-sync bit.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Iterable

from stack.events import Event, EventBus
from stack.wire import clc, codes
from stack.wire.clc import ClcError
from stack.wire.codes import LgrRole, LinkState, SmcState
from stack.wire.fields import clc_fields as _clc_fields

from . import handshake as hsk
from .buffers import RegisteredBuffer
from .config import SmcConfig
from .connection import SmcConnection
from .linkgroup import DEL_PROG_INIT_TERM, Link, LinkGroup
from .llcflows import _confirm_link_response
from .ports import DeviceInfo, HostIO
from .states import HS_TABLE, Hs, ProtocolError, step

_EYECATCHERS = (clc.EYECATCHER_SMCR, clc.EYECATCHER_SMCD)


class SmcHost:
    def __init__(self, config: SmcConfig, io: HostIO, devices: Iterable[DeviceInfo], bus: EventBus | None = None,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.config = config
        self.io = io
        self.devices = list(devices)
        self.bus = bus or EventBus()
        self.rng = rng or random.Random()
        self.name = config.host
        first = next((d for d in self.devices if d.up), None)
        self.peer_id = self.rng.getrandbits(16).to_bytes(2, "big") + (first.mac if first else bytes(6))
        self.conns: dict[int, SmcConnection] = {}
        self.lgrs: list[LinkGroup] = []
        self.links_by_qp: dict[int, Link] = {}
        self.dying_lgrs: dict[int, LinkGroup] = {}
        self._lgr_seq = self.rng.getrandbits(16) << 8
        self._token_seq = self.rng.getrandbits(24)
        self._first_contact: dict[bytes, SmcConnection] = {}  # peer id -> the handshake creating its link group
        self._deferred: dict[bytes, list[tuple[SmcConnection, clc.Proposal]]] = {}
        self.stats = {"smc_client": 0, "smc_server": 0, "fallback_client": 0, "fallback_server": 0, "handshake_errors": 0,
                      "links_down": 0, "links_added": 0, "failovers": 0}  # fmt: skip
        self.failovers: deque[dict] = deque(maxlen=256)  # the latest failovers, for snapshots and reports
        self.fallback_reasons: dict[tuple[str, int], int] = {}

    # ---------------------------------------------------------------- events

    @property
    def bus_active(self) -> bool:
        return self.bus.active

    def emit(self, now: float, kind: str, lgr: str | None = None, link: int | None = None, conn: int | None = None, **fields) -> None:
        if self.bus.active:
            self.bus.emit(Event(now, kind, self.name, lgr, link, conn, fields))

    def device(self) -> DeviceInfo | None:
        return next((d for d in self.devices if d.up), None)

    def device_info(self, name: str) -> DeviceInfo | None:
        return next((d for d in self.devices if d.name == name), None)

    def alt_device(self, lgr: LinkGroup) -> DeviceInfo | None:
        """A device for another link of ``lgr``: up, and not used by its symmetric links
        (the kernel's alternate RoCE device; we have no PNET ids, every device qualifies)."""
        used = {link.device for link in lgr.usable_links() if not link.asym}
        return next((d for d in self.devices if d.up and d.name not in used), None)

    def set_device_state(self, name: str, up: bool) -> None:
        self.devices = [DeviceInfo(d.name, d.gid, d.mac, d.mtu, up) if d.name == name else d for d in self.devices]

    def port_event(self, name: str, up: bool, now: float) -> None:
        """A device port went down (its links fail over) or came back (links are added again)."""
        self.set_device_state(name, up)
        self.emit(now, "link.event", event="port_up" if up else "port_down", device=name)
        for lgr in list(self.lgrs):
            if up:
                lgr.want_link(now, f"port up on {name}")
            else:
                for link in [l for l in lgr.links.values() if l.device == name and l.usable]:
                    lgr.link_down(link, now, f"port down on {name}")

    # ---------------------------------------------------------------- starting connections

    def client_start(self, conn_id: int, local: tuple[str, int], peer: tuple[str, int], now: float,
                     peer_smc: bool | None = None) -> SmcConnection:  # fmt: skip
        """A TCP connection this host opened wants SMC. ``peer_smc``: whether the server's
        SYN-ACK carried the SMC TCP option (None: unknown, in-band signalling); False makes
        the connection TCP at once with PEERNOSMC and no CLC, as the kernel does."""
        conn = self._new_conn(conn_id, "client", local, peer, now, peer_smc)
        if peer_smc is False:
            self._hs(conn, "peer_no_smc", now)
            self._fallback(conn, hsk.PEERNOSMC, 0, b"", now)
            return conn
        proposal = hsk.build_proposal(self.config, self.device(), local[0], self.peer_id)
        if proposal is None:
            self._hs(conn, "no_smc_possible", now)
            self._decline(conn, hsk.NOSMCDEV, now, version=2 if self.config.v2 else 1)
            self._fallback(conn, hsk.NOSMCDEV, 0, b"", now)
            return conn
        conn.proposal = proposal
        self._hs(conn, "start_client", now)
        self._send_clc(conn, proposal, now)
        self.io.arm_timer(("clc", conn_id), now + self.config.timeouts.clc_wait)
        return conn

    def server_start(self, conn_id: int, local: tuple[str, int], peer: tuple[str, int], now: float, smc: bool = True,
                     peer_smc: bool | None = None) -> SmcConnection:  # fmt: skip
        """A TCP connection accepted by a listener. ``smc=False``: a plain-TCP listener, which
        still answers a Proposal with a Decline PEERNOSMC (our in-band stand-in for the
        missing TCP option), so an SMC client falls back at once. ``peer_smc``: whether the
        client's SYN carried the SMC TCP option (None: unknown, in-band); False makes the
        connection TCP at once with PEERNOSMC, without waiting for a Proposal (the kernel's
        smc_listen_work)."""
        conn = self._new_conn(conn_id, "server", local, peer, now, peer_smc)
        conn.smc_listener = smc
        if peer_smc is False and smc:
            self._hs(conn, "peer_no_smc", now)
            self._fallback(conn, hsk.PEERNOSMC, 0, b"", now)
            return conn
        self._hs(conn, "start_server", now)
        self.io.arm_timer(("clc", conn_id), now + self.config.timeouts.peer_first_bytes)
        return conn

    def _new_conn(self, conn_id: int, role: str, local, peer, now: float, peer_smc: bool | None = None) -> SmcConnection:
        if conn_id in self.conns:
            raise ValueError(f"connection id {conn_id} is in use")
        conn = SmcConnection(self, conn_id, role, local, peer)
        conn.handshake_started = now
        conn.smc_listener = True
        self.conns[conn_id] = conn
        # with the real TCP option (native/smcopt), whether the peer's SYN or SYN-ACK carried it
        option = {} if peer_smc is None else {"peer_smc_option": peer_smc}
        self.emit(now, "conn.open", conn=conn_id, role=role, local=f"{local[0]}:{local[1]}", peer=f"{peer[0]}:{peer[1]}", **option)
        return conn

    # ---------------------------------------------------------------- the handshake machine

    def _hs(self, conn: SmcConnection, event: str, now: float, guard=lambda g: False) -> tuple[str, ...]:
        rule = step("handshake", HS_TABLE, conn.hs, event, guard)
        if rule.next is not None and rule.next != conn.hs:
            conn.hs = rule.next
        return rule.actions

    def tcp_data(self, conn_id: int, data: bytes, now: float) -> None:
        """CLC bytes from the TCP connection (only while the handshake runs)."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.hs in (Hs.SMC, Hs.FALLBACK, Hs.FAILED):
            return
        conn.clc_buf += data
        while conn.clc_buf and conn.hs not in (Hs.SMC, Hs.FALLBACK, Hs.FAILED):
            if conn.hs == Hs.WAIT_PROPOSAL and not any(e.startswith(conn.clc_buf[:4]) for e in _EYECATCHERS):
                leftover, conn.clc_buf = conn.clc_buf, b""
                self._hs(conn, "not_clc", now)
                self._fallback(conn, hsk.PEERNOSMC, 0, leftover, now)
                return
            try:
                if len(conn.clc_buf) < clc.HEADER_LEN:
                    return
                header = clc.decode_header(conn.clc_buf)
                if len(conn.clc_buf) < header.length:
                    return
                raw, conn.clc_buf = conn.clc_buf[: header.length], conn.clc_buf[header.length :]
                msg = clc.decode(raw)
            except ClcError as e:
                self._fail(conn, f"malformed CLC message: {e}", now, "malformed")
                return
            self.emit(now, "clc.msg", conn=conn_id, dir="rx", **_clc_fields(msg, raw))
            self._on_clc(conn, msg, now)

    def _on_clc(self, conn: SmcConnection, msg, now: float) -> None:
        if isinstance(msg, clc.Decline):
            self._hs(conn, "decline", now)
            if msg.out_of_sync and conn.lgr is not None:
                conn.lgr.sync_err = True
            # our in-band "no SMC here" is the kernel's missing TCP option: PEERNOSMC, not PEERDECL
            reason = hsk.PEERNOSMC if msg.diagnosis == hsk.PEERNOSMC else hsk.PEERDECL
            self._fallback(conn, reason, msg.diagnosis, b"", now, declined_by_peer=True)
            return
        if conn.hs == Hs.WAIT_PROPOSAL and isinstance(msg, clc.Proposal):
            self._server_proposal(conn, msg, now)
        elif conn.hs == Hs.PROPOSAL_SENT and isinstance(msg, clc.Accept):
            self._client_accept(conn, msg, now)
        elif conn.hs == Hs.ACCEPT_SENT and isinstance(msg, clc.Confirm):
            self._server_confirm(conn, msg, now)
        else:
            self._fail(conn, f"unexpected {type(msg).__name__} in handshake state {conn.hs.name}", now, "malformed")

    # ---------------------------------------------------------------- server

    def _server_proposal(self, conn: SmcConnection, p: clc.Proposal, now: float) -> None:
        conn.proposal = p
        pending = self._first_contact.get(p.peer_id)
        if pending is not None and pending is not conn and conn.smc_listener:
            # one first contact at a time per peer (as the kernel's LGR creation lock):
            # this Proposal waits and will most likely reuse the new link group
            self._deferred.setdefault(p.peer_id, []).append((conn, p))
            return
        if not conn.smc_listener:
            self._hs(conn, "proposal", now, lambda g: g == "decline_proposal")
            self._decline(conn, hsk.PEERNOSMC, now, version=p.version)
            self._fallback(conn, 0, 0, b"", now)
            return
        device = self.device()
        choice = hsk.choose(self.config, p, device, conn.local[0])
        if choice.decline:
            self._hs(conn, "proposal", now, lambda g: g == "decline_proposal")
            self._decline(conn, choice.decline, now, version=p.version)
            self._fallback(conn, choice.decline, 0, b"", now)
            return
        conn.choice = choice
        conn.version = choice.version
        peer_gid = p.v2.roce_gid if choice.version >= 2 else p.gid
        lgr = self._find_server_lgr(p.peer_id, peer_gid, p.mac, choice.version)
        if lgr is not None:
            conn.lgr, conn.link = lgr, self._balance(lgr)
            if not self._attach_buffers(conn, now):
                return
            self._hs(conn, "proposal", now, lambda g: g == "reuse")
            self._confirm_rkey(conn, now)
            return
        lgr = self._new_lgr(LgrRole.SERVER, choice.version, p.peer_id, peer_gid, p.mac, now, choice.max_conns, choice.max_links)
        lgr.negotiated_eid = choice.eid
        conn.first_contact = True
        self._first_contact[p.peer_id] = conn
        conn.lgr = lgr
        link = self.new_link(lgr, device, lgr.next_link_id(), now)
        if link is None:
            self._decline_and_fallback(conn, hsk.MEM, now)
            return
        conn.link = link
        if not self._attach_buffers(conn, now):
            return
        self._hs(conn, "proposal", now)
        self._send_accept(conn, now)

    def _confirm_rkey(self, conn: SmcConnection, now: float) -> None:
        """CONFIRM RKEY for an RMB the peer does not know (a new one, or a reused one, which
        DELETE RKEY took back): smcr_lgr_reg_rmbs."""
        if conn.rmb.confirmed:
            self._rkey_done(conn, True, now)
        else:
            conn.lgr.confirm_rkey(conn, now, lambda ok, t: self._rkey_done(conn, ok, t))

    def _rkey_done(self, conn: SmcConnection, ok: bool, now: float) -> None:
        if conn.hs != Hs.WAIT_RKEY:
            return
        if ok:
            conn.rmb.confirmed = True
        if not ok:
            self._hs(conn, "rkey_failed", now)
            self._decline(conn, hsk.ERR_REGBUF, now)
            self._fallback(conn, hsk.ERR_REGBUF, 0, b"", now)
            return
        if conn.role == "server":
            self._hs(conn, "rkey_confirmed", now, lambda g: g == "server")
            self._send_accept(conn, now)
        else:
            self._hs(conn, "rkey_confirmed", now)
            self._send_confirm(conn, now)
            self._hs(conn, "confirm", now)
            self._established(conn, now)

    def _send_accept(self, conn: SmcConnection, now: float) -> None:
        link, choice = conn.link, conn.choice
        fce = None
        if conn.version >= 2 and conn.first_contact:
            fce = clc.FirstContactExt(True, clc.OS_LINUX, choice.release, clc.make_hostname(self.name), choice.max_conns, choice.max_links)
        rmb = conn.rmb.on(link.device)
        accept = clc.Accept(
            self.peer_id, link.qp.gid, link.qp.mac, link.qp.qpn, rmb.rkey, conn.token,
            clc.rmbe_size_compress(conn.rmb.size), link.qp.mtu, rmb.addr, link.qp.psn,
            conn.first_contact, conn.version, eid=choice.eid if conn.version >= 2 else bytes(32), fce=fce,
        )  # fmt: skip
        conn.accept = accept
        self._send_clc(conn, accept, now)
        self.io.arm_timer(("clc", conn.id), now + self.config.timeouts.clc_wait)

    def _server_confirm(self, conn: SmcConnection, c: clc.Confirm, now: float) -> None:
        reason = hsk.check_confirm(conn.choice, c) or (hsk.ERR_RDYLNK if conn.lgr is None or conn.lgr.terminated else 0)
        if reason:
            self._hs(conn, "confirm", now, lambda g: g == "decline_confirm")
            self._decline(conn, reason, now)
            self._fallback(conn, reason, 0, b"", now)
            return
        if not self._adopt_peer_buffer(conn, c, now):
            return
        if not conn.first_contact:
            self._hs(conn, "confirm", now)
            self._established(conn, now)
            return
        link = conn.link
        link.peer_qpn, link.peer_psn, link.peer_gid, link.peer_mac = c.qpn, c.psn, c.gid, c.mac
        link.mtu = min(link.qp.mtu, c.qp_mtu)
        self.io.qp_to_rtr(link.qp.handle, c.qpn, c.psn, c.gid, link.mtu)
        self.io.qp_to_rts(link.qp.handle)
        if c.fce is not None:
            conn.lgr.peer_host = c.fce.hostname.decode("ascii", "replace").strip()
            conn.lgr.peer_os, conn.lgr.peer_release = c.fce.os_type, c.fce.release
        self._hs(conn, "confirm", now, lambda g: g == "first_contact")
        link.post_llc(confirm_link_msg(conn.lgr, link), now)
        self.io.arm_timer(("clc", conn.id), now + self.config.timeouts.llc_wait)

    def confirm_link_response(self, lgr: LinkGroup, link: Link, msg, now: float) -> None:
        conn = self._first_contact_conn(lgr, Hs.WAIT_CONFIRM_LINK_RESP)
        if conn is None or link.state != LinkState.ACTIVATING:
            return
        link.peer_link_uid = msg.link_uid
        lgr.link_confirmed(link, now)
        self._hs(conn, "confirm_link_resp", now)
        self._established(conn, now)
        lgr.want_link(now, "first contact")  # the server tries for a second link at once

    # ---------------------------------------------------------------- client

    def _client_accept(self, conn: SmcConnection, a: clc.Accept, now: float) -> None:
        reason = hsk.check_accept(conn.proposal, a, self.config)
        if reason:
            self._hs(conn, "accept", now, lambda g: g == "decline_accept")
            self._decline(conn, reason, now, version=a.version)
            self._fallback(conn, reason, 0, b"", now)
            return
        conn.accept = a
        conn.version = a.version
        conn.first_contact = a.first_contact
        device = self.device()
        if not a.first_contact:
            lgr, link = self._find_client_link(a)
            if lgr is None:
                self._hs(conn, "accept", now, lambda g: g == "decline_accept")
                self._decline(conn, hsk.SYNCERR, now, version=a.version)
                self._fallback(conn, hsk.SYNCERR, 0, b"", now)
                return
            conn.lgr, conn.link = lgr, link
            if not self._attach_buffers(conn, now) or not self._adopt_peer_buffer(conn, a, now):
                return
            self._hs(conn, "accept", now)
            self._confirm_rkey(conn, now)
            return
        fce = a.fce
        max_conns = fce.max_conns if fce is not None and fce.release >= 1 else 255
        max_links = fce.max_links if fce is not None and fce.release >= 1 else 2
        lgr = self._new_lgr(LgrRole.CLIENT, a.version, a.peer_id, a.gid, a.mac, now, max_conns, max_links)
        lgr.negotiated_eid = a.eid if a.version >= 2 else b""
        if fce is not None:
            lgr.peer_host = fce.hostname.decode("ascii", "replace").strip()
            lgr.peer_os, lgr.peer_release = fce.os_type, fce.release
        conn.lgr = lgr
        link = self.new_link(lgr, device, 0, now)  # the server names the link in CONFIRM LINK
        if link is None:
            self._decline_and_fallback(conn, hsk.MEM, now)
            return
        conn.link = link
        if not self._attach_buffers(conn, now) or not self._adopt_peer_buffer(conn, a, now):
            return
        link.peer_qpn, link.peer_psn, link.peer_gid, link.peer_mac = a.qpn, a.psn, a.gid, a.mac
        link.mtu = min(link.qp.mtu, a.qp_mtu)
        self.io.qp_to_rtr(link.qp.handle, a.qpn, a.psn, a.gid, link.mtu)
        self._hs(conn, "accept", now, lambda g: g == "first_contact")
        self._send_confirm(conn, now)
        self.io.arm_timer(("clc", conn.id), now + self.config.timeouts.client_confirm_link)

    def _send_confirm(self, conn: SmcConnection, now: float) -> None:
        link, a = conn.link, conn.accept
        fce, gids = None, ()
        if conn.version >= 2 and conn.first_contact and a.fce is not None:
            fce = clc.FirstContactExt(True, clc.OS_LINUX, a.fce.release, clc.make_hostname(self.name), a.fce.max_conns,
                                      a.fce.max_links, a.fce.feature_mask)  # fmt: skip
            gids = (link.qp.gid,)
        rmb = conn.rmb.on(link.device)
        confirm = clc.Confirm(
            self.peer_id, link.qp.gid, link.qp.mac, link.qp.qpn, rmb.rkey, conn.token,
            clc.rmbe_size_compress(conn.rmb.size), link.mtu, rmb.addr, link.qp.psn, conn.first_contact,
            conn.version, eid=a.eid if conn.version >= 2 else bytes(32), fce=fce, gids=gids,
        )  # fmt: skip
        self._send_clc(conn, confirm, now)

    def confirm_link_request(self, lgr: LinkGroup, link: Link, msg, now: float) -> None:
        conn = self._first_contact_conn(lgr, Hs.WAIT_CONFIRM_LINK)
        if conn is None or link.state != LinkState.ACTIVATING:
            return  # not ours to answer: dropped, as the kernel drops an unexpected flow
        if not msg.rmbe_eyec_flags & 0x03:
            self._decline_and_fallback(conn, hsk.RMBE_EC, now)
            return
        self.io.qp_to_rts(link.qp.handle)
        lgr.rename_link(link, msg.link_num)
        link.peer_link_uid = msg.link_uid
        link.post_llc(_confirm_link_response(lgr, link, msg), now)
        lgr.link_confirmed(link, now)
        self._hs(conn, "confirm_link", now)
        self._established(conn, now)

    # ---------------------------------------------------------------- shared steps

    def _first_contact_conn(self, lgr: LinkGroup, hs: Hs) -> SmcConnection | None:
        return next((c for c in self.conns.values() if c.lgr is lgr and c.hs == hs), None)

    def _new_lgr(self, role, version, peer_id, peer_gid, peer_mac, now, max_conns, max_links) -> LinkGroup:
        self._lgr_seq = (self._lgr_seq + 256) & 0xFFFFFFFF
        lgr = LinkGroup(self, self._lgr_seq, role, version, peer_id, peer_gid, peer_mac, max_conns, max_links,
                        llc_order=self.config.llc_v2_order, created=now)  # fmt: skip
        self.lgrs.append(lgr)
        lgr.emit(now, "lgr.state", old="NONE", new="NONE", cause="created", role=role.name.lower(), version=version,
                 peer_id=peer_id.hex(), max_conns=max_conns, max_links=max_links, crit=True)  # fmt: skip
        return lgr

    def new_link(self, lgr: LinkGroup, device: DeviceInfo | None, link_id: int, now: float) -> Link | None:
        if device is None:
            return None
        try:
            qp = self.io.create_qp(device.name)
        except OSError as e:
            lgr.emit(now, "link.event", event="qp_create_failed", reason=str(e))
            return None
        link = Link(lgr, qp)
        lgr.add_link(link, link_id, now)
        return link

    def _find_server_lgr(self, peer_id: bytes, peer_gid: bytes, peer_mac: bytes, version: int) -> LinkGroup | None:
        for lgr in self.lgrs:
            if lgr.role != LgrRole.SERVER or lgr.peer_id != peer_id or lgr.sync_err or lgr.terminated or lgr.version != version:
                continue
            if len(lgr.conns) >= lgr.max_conns:
                continue
            for link in lgr.active_links():
                if link.peer_gid == peer_gid and (version >= 2 or link.peer_mac == peer_mac):
                    return lgr
        return None

    def _find_client_link(self, a: clc.Accept) -> tuple[LinkGroup | None, Link | None]:
        for lgr in self.lgrs:
            if lgr.role != LgrRole.CLIENT or lgr.peer_id != a.peer_id or lgr.sync_err or lgr.terminated:
                continue
            for link in lgr.active_links():
                if link.peer_qpn == a.qpn and link.peer_gid == a.gid and (a.version >= 2 or link.peer_mac == a.mac):
                    return lgr, link
            if a.qpn in lgr.retired_peer_qpns and lgr.active_links():
                # the server chose a link that failed while its Accept was on the way: not
                # out of sync, the connection simply starts on a surviving link
                return lgr, lgr.active_links()[0]
        return None, None

    def _balance(self, lgr: LinkGroup) -> Link:
        """The kernel's server balancing: even number of connections -> first link, odd -> the next."""
        links = lgr.active_links()
        return links[len(lgr.conns) % len(links)]

    def _alloc_token(self, lgr: LinkGroup) -> int:
        while True:
            self._token_seq = (self._token_seq + 1) & 0xFFFFFFFF
            if self._token_seq and self._token_seq not in lgr.conns:
                return self._token_seq

    def _attach_buffers(self, conn: SmcConnection, now: float) -> bool:
        device, lgr = conn.link.device, conn.lgr
        rmb_size = clc.rmbe_size_bytes(clc.rmbe_size_compress(self.config.rmb_size))
        conn.rmb, conn.sndbuf = lgr.take_buffers(rmb_size, self.config.sndbuf_size)  # reused when the group has them
        try:
            if conn.rmb is None:
                conn.rmb = RegisteredBuffer(self.io, device, rmb_size, True)
            if conn.sndbuf is None:
                conn.sndbuf = RegisteredBuffer(self.io, device, self.config.sndbuf_size, False)
            lgr.add_buffers(conn.rmb, conn.sndbuf)
            lgr.map_buffers(conn)  # and on the devices of the group's other links
        except OSError as e:
            conn.error = f"buffer registration failed: {e}"
            self._decline_and_fallback(conn, hsk.ERR_REGBUF, now)
            return False
        conn.token = self._alloc_token(conn.lgr)
        conn.lgr.conns[conn.token] = conn
        return True

    def _adopt_peer_buffer(self, conn: SmcConnection, msg, now: float) -> bool:
        """The peer's RMB from its Accept or Confirm: its rkey is for the connection's link;
        CONFIRM RKEY (or ADD LINK) told us, or will tell us, its keys on the other links."""
        row = conn.lgr.rtoken_add(conn.link.link_id, msg.rmb_rkey, msg.rmb_vaddr)
        if row is None:
            self._decline_and_fallback(conn, hsk.ERR_RTOK, now)
            return False
        conn.peer_rtoken = row
        conn.peer_token = msg.rmbe_alert_token
        conn.peer_size = clc.rmbe_size_bytes(msg.rmbe_size)
        conn.peer_rmbe_space = conn.peer_size
        return True

    def _first_contact_over(self, conn: SmcConnection, now: float) -> None:
        """The handshake that was creating a link group finished: the Proposals that waited go on."""
        peer = getattr(conn.proposal, "peer_id", None)
        if peer is None or self._first_contact.get(peer) is not conn:
            return
        del self._first_contact[peer]
        waiting = self._deferred.pop(peer, [])
        for i, (other, p) in enumerate(waiting):
            if other.hs == Hs.WAIT_PROPOSAL and other.id in self.conns:
                self._server_proposal(other, p, now)
                if peer in self._first_contact:  # it became the next first contact: the rest wait again
                    self._deferred.setdefault(peer, []).extend(waiting[i + 1 :])
                    return

    def _established(self, conn: SmcConnection, now: float) -> None:
        self.io.cancel_timer(("clc", conn.id))
        conn.mode = "SMCR"
        conn.rmb.confirmed = True  # the peer has its key (CLC, CONFIRM RKEY): a DELETE RKEY ends it
        self.stats["smc_" + conn.role] += 1
        conn.emit(now, "conn.mode", mode="SMCR", version=conn.version, first_contact=conn.first_contact,
                  token=conn.token, peer_token=conn.peer_token, rmb_size=conn.rmb_size, peer_rmb_size=conn.peer_size,
                  handshake_ms=round((now - conn.handshake_started) * 1000, 3))  # fmt: skip
        conn.input("handshake_done", now)
        self.io.conn_established(conn.id)
        early, conn.early_cdcs = conn.early_cdcs, []
        for msg in early:
            conn.on_cdc(msg, now)
        self._first_contact_over(conn, now)

    def _send_clc(self, conn: SmcConnection, msg, now: float) -> None:
        raw = msg.encode()
        self.emit(now, "clc.msg", conn=conn.id, dir="tx", **_clc_fields(msg, raw))
        self.io.tcp_send(conn.id, raw)

    def _decline(self, conn: SmcConnection, reason: int, now: float, version: int | None = None) -> None:
        peer_version = version or max(getattr(conn.proposal, "version", 1), getattr(conn.accept, "version", 1))
        v2 = peer_version >= 2
        decline = clc.Decline(self.peer_id if self.device() else bytes(8), reason, reason == hsk.SYNCERR,
                              clc.OS_LINUX if v2 else 0, 2 if v2 else 1, (0, 0, 0, 0) if v2 else None)  # fmt: skip
        self._send_clc(conn, decline, now)

    def _decline_and_fallback(self, conn: SmcConnection, reason: int, now: float) -> None:
        self._decline(conn, reason, now)
        self._fallback(conn, reason, 0, b"", now)

    def _fallback(self, conn: SmcConnection, reason: int, peer_diagnosis: int, leftover: bytes, now: float,
                  declined_by_peer: bool = False) -> None:  # fmt: skip
        self.io.cancel_timer(("clc", conn.id))
        conn.hs = Hs.FALLBACK
        conn.mode = "TCP"
        conn.fallback_reason = reason
        conn.peer_diagnosis = peer_diagnosis
        self._release_smc(conn, now)
        if reason:
            self.stats["fallback_" + conn.role] += 1
            self.fallback_reasons[(conn.role, reason)] = self.fallback_reasons.get((conn.role, reason), 0) + 1
        conn.emit(now, "conn.fallback", reason=reason, reason_text=codes.format_reason(reason) if reason else "not SMC",
                  peer_diagnosis=peer_diagnosis, peer_diagnosis_text=codes.format_reason(peer_diagnosis) if peer_diagnosis else "",
                  decline_sent=reason != 0 and not declined_by_peer and codes.sends_decline(reason))  # fmt: skip
        conn.emit(now, "conn.mode", mode="TCP", reason=reason)
        conn.input("handshake_done", now)
        leftover, conn.clc_buf = leftover + conn.clc_buf, b""  # bytes after the last CLC message are the app's
        self.io.conn_fallback(conn.id, leftover)
        if conn.role == "server":
            self._first_contact_over(conn, now)

    def _fail(self, conn: SmcConnection, error: str, now: float, event: str) -> None:
        try:
            self._hs(conn, event, now)
        except ProtocolError:
            conn.hs = Hs.FAILED
        conn.hs = Hs.FAILED
        conn.error = error
        self.stats["handshake_errors"] += 1
        self.io.cancel_timer(("clc", conn.id))
        conn.emit(now, "conn.error", reason=error)
        self._release_smc(conn, now)
        conn.set_state(SmcState.CLOSED, now, "handshake failed")
        self.io.conn_failed(conn.id, error)
        if conn.role == "server":
            self._first_contact_over(conn, now)

    def _release_smc(self, conn: SmcConnection, now: float) -> None:
        """Undo what a handshake that did not end in SMC had set up."""
        lgr = conn.lgr
        if lgr is not None:
            lgr.conns.pop(conn.token, None)
            lgr.unuse_buffers(conn, now)
        else:
            for buf in (conn.rmb, conn.sndbuf):
                if buf is not None:
                    buf.release()
        conn.rmb = conn.sndbuf = None
        if lgr is not None and conn.first_contact and not lgr.conns:
            lgr.terminate(now, DEL_PROG_INIT_TERM, "first contact did not complete", notify_peer=False)
        conn.lgr, conn.link = None, None

    # ---------------------------------------------------------------- closing

    def connection_closed(self, conn: SmcConnection, now: float) -> None:
        """The close machine reached CLOSED: the connection's buffers go back to its link
        group (its RMB after DELETE RKEY) for the next connection, and the app is told."""
        self.io.cancel_timer(("flush", conn.id))
        lgr = conn.lgr
        if conn.mode == "SMCR" and lgr is not None:
            lgr.unuse_buffers(conn, now)
            conn.rmb = conn.sndbuf = None
            lgr.conns.pop(conn.token, None)
        elif conn.mode == "INIT" and lgr is not None:  # closed in the middle of its handshake: what waits for it stops
            self.io.cancel_timer(("clc", conn.id))
            conn.hs = Hs.FAILED
            self._release_smc(conn, now)
        if lgr is not None and conn.mode in ("SMCR", "INIT") and not lgr.conns and not lgr.terminated:
            self.io.arm_timer(("lgr_idle", lgr.lgr_id), now + self.config.timeouts.lgr_idle + (10 if lgr.role == LgrRole.CLIENT else 0))
        self.conns.pop(conn.id, None)
        self.io.conn_closed(conn.id, conn.error)

    def tcp_conn_closed(self, conn_id: int, now: float, error: str | None = None) -> None:
        """A fallback (TCP) connection ended, or the TCP side of a handshake went away."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        if conn.hs not in (Hs.SMC, Hs.FALLBACK, Hs.FAILED):
            self._fail(conn, error or "TCP connection closed during the CLC handshake", now, "tcp_closed")
            return
        if conn.mode == "TCP" and conn.state != SmcState.CLOSED:
            conn.error = error
            conn.set_state(SmcState.CLOSED, now, "tcp closed")

    def lgr_terminated(self, lgr: LinkGroup, now: float) -> None:
        if lgr in self.lgrs:
            self.lgrs.remove(lgr)
        self.dying_lgrs[lgr.lgr_id] = lgr  # until its last DELETE LINK has left
        self.io.cancel_timer(("lgr_idle", lgr.lgr_id))

    # ---------------------------------------------------------------- RDMA and timers

    def on_send_done(self, qp: int, wr_id: int, ok: bool, now: float, status: str = "") -> None:
        link = self.links_by_qp.get(qp)
        if link is None:
            return
        link.send_done(wr_id, ok, now)
        if not ok and link.state == LinkState.ACTIVE:
            link.lgr.emit(now, "link.event", link=link.link_id, event="qp_error", status=status)
            link.lgr.link_down(link, now, f"send completion {status or 'error'}")

    def on_recv(self, qp: int, data: bytes, now: float) -> None:
        link = self.links_by_qp.get(qp)
        if link is not None:
            link.received(data, now)

    def on_qp_error(self, qp: int, reason: str, now: float) -> None:
        link = self.links_by_qp.get(qp)
        if link is not None:
            link.lgr.emit(now, "link.event", link=link.link_id, event="qp_error", status=reason)
            link.lgr.link_down(link, now, reason)

    def on_timer(self, key: tuple, now: float) -> None:
        kind = key[0]
        if kind == "clc":
            conn = self.conns.get(key[1])
            if conn is not None:
                self._clc_timeout(conn, now)
        elif kind == "flush":
            conn = self.conns.get(key[1])
            if conn is not None:
                conn.flush_timeout(now)
        elif kind == "lgr_free":
            lgr = self.dying_lgrs.get(key[1])
            if lgr is not None:
                lgr.free_qps(now)
        else:
            lgr = next((g for g in self.lgrs if g.lgr_id == key[1]), None)
            if lgr is None:
                return
            if kind == "llc":
                lgr.flow_timeout(now)
            elif kind == "testlink":
                lgr.test_link_timer(key[2], now)
            elif kind == "testlink_resp":
                lgr.test_link_expired(key[2], now)
            elif kind == "linkdown" and key[2] in lgr.links:
                lgr.link_down(lgr.links[key[2]], now, "the QP refused a work request")
            elif kind == "lgr_idle" and not lgr.conns:
                lgr.terminate(now, DEL_PROG_INIT_TERM, "idle")

    def handshake_lost(self, conn: SmcConnection, now: float, why: str) -> None:
        """The link group under a handshake ended: decline and fall back to TCP."""
        if conn.state == SmcState.CLOSED or self.conns.get(conn.id) is not conn:
            return  # closed meanwhile (the application aborted it): nothing to fall back
        if conn.hs not in (Hs.ACCEPT_SENT, Hs.WAIT_CONFIRM_LINK, Hs.WAIT_CONFIRM_LINK_RESP, Hs.WAIT_RKEY):
            return
        if conn.hs == Hs.ACCEPT_SENT:  # the client's Confirm is on its way: take it off the wire first
            return
        reason = {Hs.WAIT_RKEY: hsk.ERR_REGBUF, Hs.ACCEPT_SENT: hsk.ERR_RDYLNK}.get(conn.hs, hsk.TIMEOUT_CL)
        self._hs(conn, "link_lost", now)
        self._decline_and_fallback(conn, reason, now)

    def _clc_timeout(self, conn: SmcConnection, now: float) -> None:
        if conn.hs in (Hs.WAIT_CONFIRM_LINK, Hs.WAIT_CONFIRM_LINK_RESP, Hs.WAIT_RKEY):
            self._hs(conn, "timeout", now, lambda g: g == "timeout_declines")
            reason = hsk.TIMEOUT_CL if conn.hs != Hs.WAIT_RKEY else hsk.ERR_REGBUF
            self._decline(conn, reason, now)
            self._fallback(conn, reason, 0, b"", now)
        elif conn.hs in (Hs.PROPOSAL_SENT, Hs.WAIT_PROPOSAL, Hs.ACCEPT_SENT):
            what = {Hs.PROPOSAL_SENT: "Accept", Hs.WAIT_PROPOSAL: "Proposal", Hs.ACCEPT_SENT: "Confirm"}[conn.hs]
            if conn.hs == Hs.WAIT_PROPOSAL and not conn.clc_buf:
                # nothing came: a plain-TCP peer that waits for us to speak first
                self._hs(conn, "not_clc", now)
                self._fallback(conn, hsk.PEERNOSMC, 0, b"", now)
                return
            self._fail(conn, f"CLC timeout: no {what} within {self.config.timeouts.clc_wait:g} s", now, "timeout")

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
                lgr.link_down(lgr.links[link_id], now, reason)
                return True
        return False

    def snapshot(self) -> dict:
        return {
            "host": self.name, "peer_id": self.peer_id.hex(), "stats": dict(self.stats),
            "fallbacks": [{"role": r, "reason": c, "text": codes.format_reason(c), "count": n} for (r, c), n in sorted(self.fallback_reasons.items())],
            "lgrs": [lgr.info() for lgr in self.lgrs], "conns": [c.snapshot() for c in self.conns.values()],
            "failovers": list(self.failovers),
            "devices": [{"name": d.name, "up": d.up, "mtu": d.mtu} for d in self.devices],
        }  # fmt: skip


def confirm_link_msg(lgr: LinkGroup, link: Link):
    from stack.wire import llc

    return llc.ConfirmLink(
        version=lgr.llc_version(), mac=link.qp.mac, gid=link.qp.gid, qpn=link.qp.qpn, link_num=link.link_id,
        link_uid=link.link_uid, max_links=lgr.max_links, max_conns=lgr.max_conns if lgr.version >= 2 else 0,
    )  # fmt: skip

