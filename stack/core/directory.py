"""The host's directory: its RDMA devices, and its link groups with the names they give out.

``Devices`` is which devices the host has and which are up (a port event changes that).
``Directory`` is the link groups: the live ones in creation order (the kernel's
``smc_lgr_list``), the ones terminated but not yet freed, which link each QP belongs to,
how a Proposal or an Accept finds the group it can reuse, and the names handed out (link
group ids, connection tokens).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Collection, Iterable

from stack.wire import clc
from stack.wire.codes import DECL, LgrRole

from .link import Link
from .linkgroup import NO_CONTEXT, LinkGroup, LinkGroupOwner, SecurityContext
from .ports import DeviceInfo, Services


class Devices:
    def __init__(self, devices: Iterable[DeviceInfo]) -> None:
        self.all = list(devices)

    def device(self, vlan: int = 0) -> DeviceInfo | None:
        return next((v for d in self.all if d.up and (v := d.on_vlan(vlan)) is not None), None)

    def device_info(self, name: str, vlan: int | None = None) -> DeviceInfo | None:
        d = next((d for d in self.all if d.name == name), None)
        return d if d is None or vlan is None else d.on_vlan(vlan)

    def alt_device(self, used: Collection[str], vlan: int = 0) -> DeviceInfo | None:
        return next((v for d in self.all if d.up and d.name not in used and (v := d.on_vlan(vlan)) is not None), None)

    def update(self, info: DeviceInfo) -> None:
        """The device ``info.name`` read again (its GIDs); its port state stays ours."""
        self.all = [replace(info, up=d.up) if d.name == info.name else d for d in self.all]

    def set_state(self, name: str, up: bool) -> None:
        self.all = [replace(d, up=up) if d.name == name else d for d in self.all]


class Directory:
    def __init__(self, ctx: Services, owner: LinkGroupOwner, rng: random.Random) -> None:
        self.ctx = ctx
        self.owner = owner  # what the link groups made here report to
        self.lgrs: list[LinkGroup] = []
        self.links_by_qp: dict[int, Link] = {}
        self.dying: dict[int, LinkGroup] = {}  # terminated, until its last DELETE LINK has left
        self.conns: dict = {}  # the host's connections by id (SmcHost sets it), for the connection limit
        self.contexts: dict[int, SecurityContext] = {}  # connection id -> its security context (absent: the stack's own)
        self._lgr_seq = rng.getrandbits(16) << 8
        self._token_seq = rng.getrandbits(24)

    def lgr(self, lgr_id: int) -> LinkGroup | None:
        return next((g for g in self.lgrs if g.lgr_id == lgr_id), None)

    def new_lgr(self, role: LgrRole, version: int, peer_id: bytes, peer_gid: bytes, peer_mac: bytes, now: float,
                max_conns: int, max_links: int, conn=None) -> LinkGroup:  # fmt: skip
        """A new group, in the security context of ``conn`` (the connection it is made for)."""
        self._lgr_seq = (self._lgr_seq + 256) & 0xFFFFFFFF
        lgr = LinkGroup(self.ctx, self.owner, self._lgr_seq, role, version, peer_id, peer_gid, peer_mac, max_conns, max_links,
                        llc_order=self.ctx.config.llc_v2_order, created=now, security=self.context_of(conn))  # fmt: skip
        self.lgrs.append(lgr)
        lgr.emit(now, "lgr.state", old="NONE", new="NONE", cause="created", role=role.name.lower(), version=version,
                 peer_id=peer_id.hex(), max_conns=max_conns, max_links=max_links, crit=True)  # fmt: skip
        return lgr

    # ---------------------------------------------------------------- security contexts

    def set_context(self, conn_id: int, security: SecurityContext | None) -> None:
        """The connection's context as the runtime read it (network namespace, VLAN), with
        the P_Key of the device it will use when the context names none."""
        if security is not None and security.pkey is None:
            device = self.ctx.devices.device(security.vlan)
            if device is not None and device.pkey is not None:
                security = replace(security, pkey=device.pkey)
        if security is None or security == NO_CONTEXT:
            self.contexts.pop(conn_id, None)
        else:
            self.contexts[conn_id] = security

    def context_of(self, conn) -> SecurityContext:
        return NO_CONTEXT if conn is None else self.contexts.get(conn.id, NO_CONTEXT)

    def _shareable(self, lgr: LinkGroup, conn, version: int, eid: bytes | None) -> bool:
        """May ``conn`` join ``lgr``? Only in the group's own security context and, for v2,
        with the group's UEID; a refusal is counted in the stats by what differed."""
        why = lgr.security.mismatch(self.context_of(conn))
        if not why and version >= 2 and eid is not None and lgr.negotiated_eid and eid != lgr.negotiated_eid:
            why = "ueid"
        if why:
            key = f"lgr_not_shared_{why}"  # stats: groups a connection could not join, by what differed
            self.ctx.stats[key] = self.ctx.stats.get(key, 0) + 1
        return not why

    def terminated(self, lgr: LinkGroup) -> None:
        if lgr in self.lgrs:
            self.lgrs.remove(lgr)
        self.dying[lgr.lgr_id] = lgr

    def freed(self, lgr: LinkGroup) -> None:
        self.dying.pop(lgr.lgr_id, None)

    def find_server_lgr(self, peer_id: bytes, peer_gid: bytes, peer_mac: bytes, version: int, eid: bytes | None = None,
                        conn=None) -> LinkGroup | None:  # fmt: skip
        """The group a server's new connection joins (smc_conn_create, smcr_lgr_match): same
        peer, version and peer device, not out of sync, room left, and the connection's own
        security context and UEID."""
        for lgr in self.lgrs:
            if lgr.role != LgrRole.SERVER or lgr.peer_id != peer_id or lgr.sync_err or lgr.terminated or lgr.version != version:
                continue
            if len(lgr.conns) >= lgr.max_conns or lgr.assign_link() is None:
                continue  # full, or only an asymmetric link to put the connection on
            if any(link.peer_gid == peer_gid and (version >= 2 or link.peer_mac == peer_mac) for link in lgr.active_links()):
                if self._shareable(lgr, conn, version, eid):
                    return lgr
        return None

    def find_client_link(self, a: clc.Accept, conn=None) -> tuple[LinkGroup | None, Link | None]:
        """The group and link an Accept without first contact names (smcr_lgr_match with the
        server's QPN): an ACTIVE link whose peer QP, GID (and v1 MAC) the Accept gives, in a
        group of the connection's security context and UEID. None: out of sync; the client
        answers SYNCERR, as smc_conn_create does, also when the link the server picked
        has failed meanwhile."""
        for lgr in self.lgrs:
            if lgr.role != LgrRole.CLIENT or lgr.peer_id != a.peer_id or lgr.sync_err or lgr.terminated:
                continue
            for link in lgr.active_links():
                if link.peer_qpn == a.qpn and link.peer_gid == a.gid and (a.version >= 2 or link.peer_mac == a.mac):
                    if self._shareable(lgr, conn, a.version, a.eid if a.version >= 2 else None):
                        return lgr, link
                    return None, None
        return None, None

    # ---------------------------------------------------------------- resource limits

    def usage(self) -> dict[str, int]:
        """What the stack holds now: link groups (live and dying), QPs, bytes registered for
        connection buffers (once per device a buffer is mapped on), and connections (SMC-R
        or in their handshake)."""
        groups = self.lgrs + list(self.dying.values())
        return {
            "lgrs": len(groups),
            "qps": sum(1 for g in groups for l in g.links.values() if l.qp_alive),
            "reg_mem": sum(buf.size * len(buf.regs) for g in groups for buf in g.rmbs + g.sndbufs),
            "conns": sum(1 for c in self.conns.values() if c.mode in ("INIT", "SMCR")),
        }

    def limits_info(self) -> dict[str, dict]:
        """The snapshot's "limits": each limit (None: none) with its current use."""
        limits, use = self.ctx.config.limits, self.usage()
        return {name: {"limit": getattr(limits, name), "used": used} for name, used in use.items()}

    def qp_room(self) -> bool:
        limit = self.ctx.config.limits.qps
        return limit is None or self.usage()["qps"] < limit

    def over_limit(self, conn, lgr: LinkGroup | None) -> int:
        """The decline a new connection gets when it would take the stack past a limit (0:
        none): the connection limit MAXCONNERR, a new link group (one more group and QP)
        MAXLINKERR, the registered memory its buffers need (on every device of the group)
        MEM, the kernel's code for buffers it cannot have (smc_buf_create). Counted in
        the stats as limit_<name>."""
        limits, use = self.ctx.config.limits, self.usage()
        config = self.ctx.config
        others = use["conns"] - (1 if conn is not None and conn.mode in ("INIT", "SMCR") else 0)
        devices = len({l.device for l in lgr.usable_links()}) if lgr is not None else 1
        need = (clc.rmbe_size_bytes(clc.rmbe_size_compress(config.rmb_size)) + config.sndbuf_size) * max(devices, 1)
        checks = (
            ("conns", limits.conns is not None and others >= limits.conns, DECL.MAXCONNERR),
            ("lgrs", lgr is None and limits.lgrs is not None and use["lgrs"] >= limits.lgrs, DECL.MAXLINKERR),
            ("qps", lgr is None and limits.qps is not None and use["qps"] >= limits.qps, DECL.MAXLINKERR),
            ("reg_mem", limits.reg_mem is not None and use["reg_mem"] + need > limits.reg_mem, DECL.MEM),
        )
        for name, over, reason in checks:
            if over:
                key = f"limit_{name}"
                self.ctx.stats[key] = self.ctx.stats.get(key, 0) + 1
                return reason
        return 0

    def alloc_token(self, lgr: LinkGroup) -> int:
        """A connection token (the RMBE alert token), unique in the group."""
        while True:
            self._token_seq = (self._token_seq + 1) & 0xFFFFFFFF
            if self._token_seq and self._token_seq not in lgr.conns:
                return self._token_seq
