"""A link group: the links between two peers, the connections they carry, the buffers both
sides registered, the local LLC flow slot, and failover.

This module is the group's state and mechanics: links come and go (``new_link``,
``clear_link``), peer RMBs are kept per link (``rtokens``), our buffers are pooled for the
next connection, one local LLC flow holds the slot at a time (the rest wait in order),
and a link that dies hands its connections to a surviving one (``fail_over``). Which LLC
messages to send, and when, is ``llcflows``' business: it drives a group from above.

A link that fails (QP error, port down, TEST LINK unanswered, or the peer's DELETE LINK)
goes INACTIVE and its QP is destroyed at once, so nothing it still had in flight can land
later. Its connections switch to a surviving link, rewind their send cursors and send a
failover-validation CDC (``SmcConnection.switch_link``); with no link left the group is
terminated and every connection aborts.

A group never names its owner's type: it tells its owner (``LinkGroupOwner``) about QPs
coming and going, LLC messages received, handshakes it can no longer carry, failovers
that ended, and its own end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from stack.wire import llc
from stack.wire.codes import DEL, LgrRole, LgrType, LinkState

from .link import Link
from .ports import DeviceInfo, Services

RTOKENS_MAX = 255  # SMC_RMBS_PER_LGR_MAX: peer RMBs one link group can address
ASYMMETRIC = (LgrType.ASYMMETRIC_PEER, LgrType.ASYMMETRIC_LOCAL)


@dataclass(frozen=True)
class SecurityContext:
    """The security context of a TCP connection, which its link group must share (the
    review of AF_SMC asked that an RDMA link be held to it): the network namespace and
    VLAN of the TCP connection and the device's P_Key where it has one. The kernel
    compares the namespace (``smcr_lgr_match``: ``rdma_dev_access_netns``) and the VLAN
    unless ``ini->smcd_version`` is SMC_V2 (``smc_conn_create``: ``lgr->vlan_id ==
    ini->vlan_id``), never a P_Key; we compare all three for every version. The UEID of a
    v2 group is compared apart (``LinkGroup.negotiated_eid``)."""

    netns: int = 0  # the TCP socket's network namespace (its nsfs inode; 0: the stack's own)
    vlan: int = 0  # 802.1Q VLAN id of the interface carrying the TCP connection (0: none)
    pkey: int | None = None  # P_Key of the device, entry 0 of its table (0xffff on rxe and soft devices; None: no table)

    def mismatch(self, other: "SecurityContext") -> str:
        """The first attribute in which ``other`` differs ("" when it does not)."""
        for name in ("netns", "vlan", "pkey"):
            if getattr(self, name) != getattr(other, name):
                return name
        return ""

    def info(self) -> dict:
        return {"netns": self.netns, "vlan": self.vlan, "pkey": self.pkey}


NO_CONTEXT = SecurityContext()


class LinkGroupOwner(Protocol):
    """What a link group tells the one who made it."""

    def may_create_qp(self) -> bool:
        """Is there room for one more QP under the stack's limits?"""

    def link_added(self, link: Link) -> None:
        """A new link's QP: completions and messages on it are this link's."""

    def qp_destroyed(self, link: Link) -> None:
        """The link's QP is gone: nothing more arrives on it."""

    def llc_received(self, lgr: "LinkGroup", link: Link, msg: llc.LlcMessage, now: float) -> None:
        """An LLC message arrived on one of the group's links."""

    def handshake_lost(self, conn: Any, now: float, why: str) -> None:
        """The group ended under a connection still in its CLC handshake."""

    def failover_ended(self, info: dict) -> None:
        """A failover finished (for snapshots and reports)."""

    def lgr_terminated(self, lgr: "LinkGroup", now: float) -> None:
        """The group is terminated; its QPs live until its last DELETE LINK has left."""

    def lgr_freed(self, lgr: "LinkGroup") -> None:
        """The group's QPs are destroyed: it is gone."""


class Flow(Protocol):
    """What the local flow slot asks of an LLC flow (``llcflows.LlcFlow``)."""

    step: str

    def start(self, now: float) -> None: ...
    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> bool: ...
    def on_timeout(self, now: float) -> None: ...
    def on_link_down(self, link: Link, now: float) -> None: ...
    def abandon(self, now: float) -> None: ...
    def confirming(self) -> bool: ...


@dataclass
class Failover:
    """One link's connections moving to another link, from detection until every
    validation CDC is acknowledged on the new link."""

    started: float
    from_link: int
    to_link: int
    reason: str
    waiting: set[int] = field(default_factory=set)
    moved: int = 0
    failed: int = 0


@dataclass(eq=False)
class LinkGroup:
    ctx: Services = field(repr=False)
    owner: LinkGroupOwner = field(repr=False)
    lgr_id: int
    role: LgrRole
    version: int
    peer_id: bytes
    peer_gid: bytes
    peer_mac: bytes
    max_conns: int = 255
    max_links: int = 2
    links: dict[int, Link] = field(default_factory=dict)
    conns: dict[int, Any] = field(default_factory=dict)  # SmcConnection by token
    type: LgrType = LgrType.NONE
    terminated: bool = False
    sync_err: bool = False
    flows: deque[Flow] = field(default_factory=deque)  # local flows waiting for the slot
    running: Flow | None = None  # the flow holding the slot
    # the peer's RMBs: one row per RMB, link id -> (rkey, address) on that link (lgr->rtokens)
    rtokens: list[dict[int, tuple[int, int]]] = field(default_factory=list)
    # our buffers, in use or waiting for the next connection (lgr->rmbs, lgr->sndbufs)
    rmbs: list = field(default_factory=list)
    sndbufs: list = field(default_factory=list)
    retired_peer_qpns: set[int] = field(default_factory=set)  # peer QPNs of links that are gone
    negotiated_eid: bytes = b""
    peer_host: str = ""
    peer_os: int = 0
    peer_release: int = 0
    llc_order: str = "little"
    created: float = 0.0
    security: SecurityContext = NO_CONTEXT  # every connection of the group shares it
    link_seq: int = 0
    failovers: list[Failover] = field(default_factory=list)
    # links that died while the only other link was being confirmed: their connections
    # wait for it instead of aborting
    orphans: list[Link] = field(default_factory=list)

    @cached_property
    def name(self) -> str:
        return f"{self.lgr_id:08x}"

    def emit(self, now: float, kind: str, link: int | None = None, conn: int | None = None, **fields) -> None:
        self.ctx.emit(now, kind, lgr=self.name, link=link, conn=conn, **fields)

    def info(self) -> dict:
        return {
            "id": self.name, "role": self.role.name.lower(), "type": self.type.smc_tools_name, "version": self.version,
            "crit": self.type.critical, "conns": len(self.conns), "max_conns": self.max_conns, "max_links": self.max_links,
            "peer_host": self.peer_host, "peer_id": self.peer_id.hex(), "eid": self.negotiated_eid.rstrip(b" \0").decode("ascii", "replace"),
            "links": [link.info() for link in self.links.values()], "peer_rmbs": len(self.rtokens),
            "flow": type(self.running).__name__ if self.running else None, "security": self.security.info(),
        }  # fmt: skip

    def active_links(self) -> list[Link]:
        return [l for l in self.links.values() if l.state == LinkState.ACTIVE and l.qp_alive]

    def usable_links(self) -> list[Link]:
        return [l for l in self.links.values() if l.usable]

    def usable_link(self, avoid: Link | None = None) -> Link | None:
        """The first ACTIVE link (smc_llc_usable_link), other than ``avoid`` when possible."""
        active = self.active_links()
        return next((l for l in active if l is not avoid), None)

    def set_type(self, new: LgrType, now: float, cause: str) -> None:
        """smcr_lgr_set_type: a type that is not asymmetric clears every link's asymmetric tag."""
        if new not in ASYMMETRIC:
            for link in self.usable_links():
                link.asym = False
        if new != self.type:
            old, self.type = self.type, new
            self.emit(now, "lgr.state", old=old.smc_tools_name, new=new.smc_tools_name, cause=cause, crit=new.critical)

    def llc_version(self) -> int:
        return 2 if self.version >= 2 else 1

    # ---------------------------------------------------------------- links

    def new_link(self, device: DeviceInfo | None, link_id: int, now: float) -> Link | None:
        """A new link on ``device`` (its QP in INIT), or None when no QP could be had."""
        if device is None:
            return None
        if not self.owner.may_create_qp():
            self.emit(now, "link.event", event="qp_create_failed", reason=f"QP limit reached ({self.ctx.config.limits.qps})")
            return None
        try:
            qp = self.ctx.io.create_qp(device.name, device.gid)  # the GID of the group's VLAN (Devices.device)
        except OSError as e:
            self.emit(now, "link.event", event="qp_create_failed", reason=str(e))
            return None
        link = Link(self.ctx, qp, self.lgr_id, self.emit, self.conns, self._llc_received, self.llc_order)
        link.draining = self.terminated
        self.add_link(link, link_id, now)
        return link

    def _llc_received(self, link: Link, msg: llc.LlcMessage, now: float) -> None:
        self.owner.llc_received(self, link, msg, now)

    def add_link(self, link: Link, link_id: int, now: float) -> None:
        link.link_id = link_id
        link.link_uid = ((self.lgr_id + link_id) & 0xFFFFFFFF).to_bytes(4, "big")
        self.links[link_id] = link
        self.owner.link_added(link)
        link.set_state("create", now)
        self.emit(now, "link.event", link=link_id, event="added", qpn=link.qp.qpn, device=link.qp.device)

    def rename_link(self, link: Link, link_id: int) -> None:
        """The client learns its first link's id from CONFIRM LINK."""
        old = link.link_id
        del self.links[old]
        link.link_id = link_id
        link.link_uid = ((self.lgr_id + link_id) & 0xFFFFFFFF).to_bytes(4, "big")
        self.links[link_id] = link
        for row in self.rtokens:
            if old in row:
                row[link_id] = row.pop(old)

    def next_link_id(self) -> int:
        """Server: link ids count up 1..255, skipping ids in use (smc_next_link_id)."""
        for _ in range(255):
            self.link_seq = self.link_seq % 255 + 1
            if self.link_seq not in self.links:
                return self.link_seq
        raise RuntimeError("no free link id")

    def kill_qp(self, link: Link) -> None:
        """Destroy the link's QP now: nothing it had in flight can land later."""
        if link.qp_alive:
            link.qp_alive = False
            self.owner.qp_destroyed(link)
            self.ctx.io.destroy_qp(link.qp.handle)
            link.drop_sends()
        self.ctx.io.cancel_timer(("testlink", self.lgr_id, link.link_id))
        self.ctx.io.cancel_timer(("testlink_resp", self.lgr_id, link.link_id))

    def clear_link(self, link: Link, now: float) -> None:
        """smcr_link_clear: the link and everything keyed by its id are gone."""
        self.kill_qp(link)
        if self.links.get(link.link_id) is not link:
            return
        link.set_state("clear", now)
        del self.links[link.link_id]
        if link.peer_qpn:
            self.retired_peer_qpns.add(link.peer_qpn)
        for row in self.rtokens:
            row.pop(link.link_id, None)
        self.emit(now, "link.event", link=link.link_id, event="deleted")

    # ---------------------------------------------------------------- buffers and the peer's rtokens

    def map_buffers(self, conn) -> None:
        """Register a new connection's buffers on every device a usable link uses (OSError on failure)."""
        for device in {l.device for l in self.usable_links()}:
            conn.rmb.ensure(device)
            conn.sndbuf.ensure(device)

    def map_all(self, device: str) -> None:
        """Register every buffer of the group, in use or not, on ``device`` (a new link's: smcr_buf_map_lgr)."""
        for buf in self.rmbs + self.sndbufs:
            buf.ensure(device)

    def take_buffers(self, rmb_size: int, sndbuf_size: int) -> tuple:
        """An unused RMB and send buffer of these sizes (smc_buf_get_slot), or None for each."""
        rmb = next((b for b in self.rmbs if not b.in_use and b.size == rmb_size), None)
        sndbuf = next((b for b in self.sndbufs if not b.in_use and b.size == sndbuf_size), None)
        for b in (rmb, sndbuf):
            if b is not None:
                b.in_use = True
        return rmb, sndbuf

    def add_buffers(self, rmb, sndbuf) -> None:
        for buf, pool in ((rmb, self.rmbs), (sndbuf, self.sndbufs)):
            if buf is not None and buf not in pool:
                pool.append(buf)

    def rmb_free(self, rmb, peer_forgot: bool = True) -> None:
        """The peer no longer knows this RMB (``peer_forgot``: it answered DELETE RKEY, or
        never had the key). Unless the configuration keeps RMBs registered as the kernel
        does (``rmb_keep_registered``), its rkeys are deregistered now and the memory goes:
        no key outlives its connection. Otherwise, or when the peer may still hold the key
        (DELETE RKEY unanswered), it is zeroed and waits, registered, for the next
        connection (smcr_buf_unuse), so a late write lands in registered memory."""
        rmb.confirmed = False
        if not self.terminated and peer_forgot and not self.ctx.config.rmb_keep_registered:
            rmb.release()
            if rmb in self.rmbs:
                self.rmbs.remove(rmb)
            return
        if not self.terminated and rmb.regs:
            rmb.clear()
        rmb.in_use = False
        if self.terminated:
            self.free_buffers()

    def free_buffers(self) -> None:
        """The group is gone: every buffer nobody uses is deregistered."""
        for pool in (self.rmbs, self.sndbufs):
            for buf in [b for b in pool if not b.in_use]:
                buf.release()
                pool.remove(buf)

    def rkey_triples(self, old: Link, new: Link) -> list[llc.RkeyTriple]:
        """Each of our RMBs, in use or not (the peer keeps its key either way): its rkey on
        ``old``, its rkey and address on ``new``."""
        out = []
        for rmb in self.rmbs:
            if old.device in rmb.regs and new.device in rmb.regs:
                on_new = rmb.on(new.device)
                out.append(llc.RkeyTriple(rmb.on(old.device).rkey, on_new.rkey, on_new.addr))
        return out

    def rtoken_find(self, link_id: int, rkey: int) -> dict[int, tuple[int, int]] | None:
        return next((row for row in self.rtokens if row.get(link_id, (None,))[0] == rkey), None)

    def rtoken_fits(self, link_id: int, rkey: int) -> bool:
        """Would ``rtoken_add`` find room for this peer RMB?"""
        return len(self.rtokens) < RTOKENS_MAX or self.rtoken_find(link_id, rkey) is not None

    def rtoken_add(self, link_id: int, rkey: int, vaddr: int, others=()) -> dict[int, tuple[int, int]] | None:
        """A peer RMB (CONFIRM RKEY or CLC): its row, or None when the group has no room left."""
        row = self.rtoken_find(link_id, rkey)
        if row is None:
            if len(self.rtokens) >= RTOKENS_MAX:
                return None
            row = {}
            self.rtokens.append(row)
        row[link_id] = (rkey, vaddr)
        for t in others:
            if t.link_id in self.links:
                row[t.link_id] = (t.rkey, t.vaddr)
        return row

    def rtoken_set(self, link_id: int, new_link_id: int, triples) -> None:
        """ADD LINK (CONT): the peer's RMBs on the new link, found by their rkey on ``link_id``."""
        for t in triples:
            row = self.rtoken_find(link_id, t.rkey)
            if row is not None:
                row[new_link_id] = (t.new_rkey, t.new_vaddr)

    def rtoken_delete(self, link_id: int, rkey: int) -> bool:
        row = self.rtoken_find(link_id, rkey)
        if row is None:
            return False
        self.rtokens.remove(row)
        return True

    # ---------------------------------------------------------------- the local flow slot

    def start_flow(self, flow: Flow, now: float, front: bool = False) -> None:
        if self.terminated:
            flow.abandon(now)
            return
        if front:
            self.flows.appendleft(flow)
        else:
            self.flows.append(flow)
        self._run_flows(now)

    def _run_flows(self, now: float) -> None:
        while self.running is None and self.flows and not self.terminated:
            self.running = self.flows.popleft()
            self.running.start(now)

    def flow_done(self, flow: Flow, now: float) -> None:
        if self.running is flow:
            self.ctx.io.cancel_timer(("llc", self.lgr_id))
            self.running = None
            self._run_flows(now)

    def flow_wait(self, seconds: float, now: float) -> None:
        self.ctx.io.arm_timer(("llc", self.lgr_id), now + seconds)

    def flow_timeout(self, now: float) -> None:
        flow = self.running
        if flow is not None:
            self.emit(now, "link.event", event="llc_timeout", flow=type(flow).__name__, step=flow.step)
            flow.on_timeout(now)

    def has_flow(self, kind: type) -> bool:
        return isinstance(self.running, kind) or any(isinstance(f, kind) for f in self.flows)

    # ---------------------------------------------------------------- link loss and failover

    def fail_over(self, link: Link, now: float, reason: str) -> Link | None:
        """Take ``link`` down and move its connections; returns the link they moved to, or
        None when none was left (the group is then terminated)."""
        was_active = link.state == LinkState.ACTIVE
        if link.usable:
            link.set_state("down", now)
            self.ctx.stats["links_down"] += 1
            self.emit(now, "link.event", link=link.link_id, event="down", reason=reason)
        self.kill_qp(link)
        if self.running is not None:
            self.running.on_link_down(link, now)
        if self.terminated:
            return None
        to = self.usable_link(avoid=link)
        if to is None:
            if was_active and self.running is not None and self.running.confirming():
                # the second link is set up on both sides and only waits for its CONFIRM LINK,
                # which does not need this one: its connections wait for it
                self.orphans.append(link)
                self.emit(now, "link.event", link=link.link_id, event="failover_pending", reason=reason)
                return None
            if was_active or not self.usable_links():  # the last link, or a first link that never came up
                self.terminate(now, DEL.LOST_PATH, f"link {link.link_id} down ({reason}) and no other link")
            return None
        if not was_active:
            return None
        self.switch_conns(link, to, now, reason)
        if len(self.active_links()) == 1:
            self.set_type(LgrType.SINGLE, now, f"link {link.link_id} lost")
        return to

    def switch_conns(self, old: Link, to: Link, now: float, reason: str) -> None:
        """smc_switch_conns: every connection on ``old`` continues on ``to``."""
        moved = [c for c in self.conns.values() if c.link is old]
        rec = Failover(now, old.link_id, to.link_id, reason, moved=len(moved))
        self.emit(now, "link.event", link=old.link_id, event="failover_begin", to_link=to.link_id, conns=len(moved), reason=reason)
        for conn in moved:
            if conn.switch_link(to, now, lambda ok, t, c=conn: self._validated(rec, c.id, ok, t)):
                rec.waiting.add(conn.id)
        if rec.waiting:
            self.failovers.append(rec)
        else:
            self._failover_end(rec, now)

    def _validated(self, rec: Failover, conn_id: int, ok: bool, now: float) -> None:
        if conn_id in rec.waiting:
            rec.waiting.discard(conn_id)
            rec.failed += 0 if ok else 1
            if not rec.waiting:
                self._failover_end(rec, now)

    def _failover_end(self, rec: Failover, now: float) -> None:
        if rec in self.failovers:
            self.failovers.remove(rec)
        duration_ms = round((now - rec.started) * 1000, 3)
        self.emit(now, "link.event", link=rec.from_link, event="failover_end", to_link=rec.to_link, conns=rec.moved,
                  failed=rec.failed, duration_ms=duration_ms)  # fmt: skip
        self.ctx.stats["failovers"] += 1
        self.owner.failover_ended({"t": rec.started, "lgr": self.name, "from_link": rec.from_link, "to_link": rec.to_link,
                                   "conns": rec.moved, "failed": rec.failed, "duration_ms": duration_ms, "reason": rec.reason})  # fmt: skip

    def after_link_removed(self, link: Link, now: float, expected_asym: bool = False) -> None:
        """Set the type once a deleted link is cleared (smc_llc_*_delete_link)."""
        n = len(self.active_links())
        if n == 0:
            self.terminate(now, DEL.LOST_PATH, f"no link left after link {link.link_id} was deleted")
        elif n == 1 and not expected_asym:
            self.set_type(LgrType.SINGLE, now, "link deleted")

    def assign_link(self) -> Link | None:
        """smcr_lgr_conn_assign_link: the link a new server connection goes on. Never an
        asymmetric one; of the others, the first for an even number of connections, the
        next for an odd one. None: no such link (NOACTVLINK)."""
        links = [l for l in self.active_links() if not l.asym]
        if not links:
            return None
        return links[1] if len(self.conns) % 2 and len(links) > 1 else links[0]

    def out_of_sync(self, now: float) -> None:
        """The peer declined out of sync (smc_clc_wait_msg): no connection joins the group
        any more, and it is terminated as soon as the handshake that heard it is over
        (smc_lgr_terminate_sched)."""
        self.sync_err = True
        if not self.terminated:
            self.ctx.io.arm_timer(("lgr_sync", self.lgr_id), now)

    def may_add_link(self, new_type: LgrType) -> bool:
        """smc_llc_alloc_alt_link: room for one more link of this kind?"""
        if self.max_links <= 1 or self.terminated or len(self.usable_links()) >= 3:
            return False
        if self.type == LgrType.SYMMETRIC:
            return False
        return self.type == LgrType.SINGLE or new_type not in ASYMMETRIC

    # ---------------------------------------------------------------- the end

    def terminate(self, now: float, reason: int, why: str, notify_peer: bool = True, orderly: bool | None = None) -> None:
        """smc_lgr_terminate: abort every connection, DELETE LINK all, take the links down.
        The QPs live until the DELETE LINK has left (or a second has passed). ``orderly``:
        the DELETE LINK's flag (None: orderly only for PROG_INIT_TERM, an idle group freed,
        as smc_lgr_free; smc_lgr_cleanup sends it not orderly)."""
        if self.terminated:
            return
        self.terminated = True
        for l in self.links.values():
            l.draining = True
        self.emit(now, "lgr.state", old=self.type.smc_tools_name, new="NONE", cause=why, reason=reason, crit=True)
        self.type = LgrType.NONE
        running, self.running = self.running, None
        for flow in ([running] if running else []) + list(self.flows):
            flow.abandon(now)
        self.flows.clear()
        io = self.ctx.io
        io.cancel_timer(("llc", self.lgr_id))
        for conn in list(self.conns.values()):
            if conn.mode == "INIT":
                self.owner.handshake_lost(conn, now, f"link group {self.name} terminated: {why}")
            else:
                conn.abort(now, f"link group {self.name} terminated: {why}")
        for rec in list(self.failovers):
            self._failover_end(rec, now)
        link = self.usable_link()
        sent = notify_peer and link is not None and link.post_llc(
            llc.DeleteLink(version=self.llc_version(), link_num=0, reason=reason, all=True,
                           orderly=reason == DEL.PROG_INIT_TERM if orderly is None else orderly),
            now, lambda ok, t: self.free_qps(t))  # fmt: skip
        for l in self.links.values():
            io.cancel_timer(("testlink", self.lgr_id, l.link_id))
            io.cancel_timer(("testlink_resp", self.lgr_id, l.link_id))
            if l.state != LinkState.UNUSED:
                l.set_state("clear", now)
        self.owner.lgr_terminated(self, now)
        self.free_buffers()
        if sent:
            io.arm_timer(("lgr_free", self.lgr_id), now + 1.0)
        else:
            self.free_qps(now)

    def free_qps(self, now: float) -> None:
        self.ctx.io.cancel_timer(("lgr_free", self.lgr_id))
        self.owner.lgr_freed(self)
        for link in self.links.values():
            self.kill_qp(link)
