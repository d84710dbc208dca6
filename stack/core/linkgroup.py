"""Link groups and links: QPs between two peers, the LLC flows that manage them, the
send-queue accounting every CDC and RDMA WRITE goes through, and failover.

LLC flows follow ``net/smc/smc_llc.c``: one local flow at a time per link group holds
the flow slot (the rest wait in order); rkey and TEST LINK requests from the peer are
answered at once. ADD LINK and DELETE LINK processing take the slot on both sides, so no
CONFIRM RKEY runs while a link is being added (``llcflows`` has the flows). The server
drives link management; the client invites (v1) or requests (v2) a link and reports
lost ones.

A link that fails (QP error, port down, TEST LINK unanswered, or the peer's DELETE LINK)
goes INACTIVE and its QP is destroyed at once, so nothing it still had in flight can land
later. Its connections switch to a surviving link, rewind their send cursors and send a
failover-validation CDC (``SmcConnection.switch_link``); with no link left the group is
terminated and every connection aborts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable

from stack.wire import cdc, llc
from stack.wire.cdc import CdcError
from stack.wire.codes import LgrRole, LgrType, LinkState
from stack.wire.llc import LlcError
from stack.wire.fields import llc_fields as _llc_fields

from .ports import QpInfo
from .states import LINK_TABLE, step

if TYPE_CHECKING:
    from .connection import SmcConnection
    from .host import SmcHost
    from .llcflows import LlcFlow

DEL_LOST_PATH = 0x00010000
DEL_OP_INIT_TERM = 0x00020000
DEL_PROG_INIT_TERM = 0x00030000
DEL_PROT_VIOL = 0x00040000
DEL_NO_ASYM_NEEDED = 0x00050000
DEL_NOLNK = 0x00100000
LLC_RESERVE = 4  # send-queue slots kept for CDCs and LLC messages without data
RTOKENS_MAX = 255  # SMC_RMBS_PER_LGR_MAX: peer RMBs one link group can address
ASYMMETRIC = (LgrType.ASYMMETRIC_PEER, LgrType.ASYMMETRIC_LOCAL)


class Link:
    def __init__(self, lgr: "LinkGroup", qp: QpInfo) -> None:
        self.lgr = lgr
        self.qp = qp
        self.link_id = 0
        self.state = LinkState.UNUSED
        self.peer_qpn = 0
        self.peer_psn = 0
        self.peer_gid = b""
        self.peer_mac = b""
        self.mtu = qp.mtu
        self.link_uid = b"\0\0\0\0"
        self.peer_link_uid = b"\0\0\0\0"
        self.asym = False  # an asymmetric link: one side has only one device for both links
        self.qp_alive = True
        self.sq_used = 0
        self.unsignaled = 0
        self.wr_seq = 0
        self.pending: dict[int, tuple[int, Callable[[bool, float], None] | None]] = {}
        self.waiting: deque[SmcConnection] = deque()
        # signaled sends waiting for a free send-queue slot, in order (the kernel waits for a slot too)
        self.backlog: deque[tuple[bytes, Callable[[bool, float], None] | None]] = deque()
        self.last_rx = 0.0
        self.test_link_outstanding = False
        self.rx_errors = 0

    @property
    def host(self) -> "SmcHost":
        return self.lgr.host

    @property
    def device(self) -> str:
        return self.qp.device

    @property
    def usable(self) -> bool:
        return self.state in (LinkState.ACTIVATING, LinkState.ACTIVE) and self.qp_alive

    def set_state(self, event: str, now: float) -> None:
        rule = step("link", LINK_TABLE, self.state, event)
        if rule.next is not None and rule.next != self.state:
            old, self.state = self.state, rule.next
            self.lgr.emit(now, "link.state", link=self.link_id, old=old.smc_tools_name, new=self.state.smc_tools_name, cause=event)

    def info(self) -> dict:
        return {
            "id": self.link_id, "state": self.state.smc_tools_name, "device": self.qp.device, "qpn": self.qp.qpn,
            "peer_qpn": self.peer_qpn, "gid": _gid(self.qp.gid), "peer_gid": _gid(self.peer_gid), "asym": self.asym,
            "link_uid": self.link_uid.hex(), "peer_link_uid": self.peer_link_uid.hex(), "conns": sum(1 for c in self.lgr.conns.values() if c.link is self),
            "mtu": self.mtu, "sq_used": self.sq_used,
        }  # fmt: skip

    # ---------------------------------------------------------------- send queue

    def has_room(self, n: int) -> bool:
        return not self.backlog and self.sq_used + n <= self.host.config.send_queue - LLC_RESERVE

    def wait_for_room(self, conn: "SmcConnection") -> None:
        if conn not in self.waiting:
            self.waiting.append(conn)

    def _signaled(self, payload: bytes, on_done: Callable[[bool, float], None] | None, now: float) -> bool:
        if not self.qp_alive or (self.state == LinkState.UNUSED and not self.lgr.terminated):
            return False
        if self.backlog or self.sq_used >= self.host.config.send_queue:
            self.backlog.append((payload, on_done))
            return True
        return self._post_signaled(payload, on_done, now)

    def _post_signaled(self, payload: bytes, on_done: Callable[[bool, float], None] | None, now: float) -> bool:
        self.wr_seq += 1
        wr_id = self.wr_seq
        if not self.host.io.post_send(self.qp.handle, wr_id, payload):
            self._post_failed(now)
            return False
        self.pending[wr_id] = (1 + self.unsignaled, on_done)
        self.sq_used += 1
        self.unsignaled = 0
        return True

    def post_write(self, sges, remote_addr: int, rkey: int, now: float) -> None:
        if not self.qp_alive:
            return
        self.wr_seq += 1
        if self.host.io.post_write(self.qp.handle, self.wr_seq, sges, remote_addr, rkey):
            self.sq_used += 1
            self.unsignaled += 1
        else:
            self._post_failed(now)

    def _post_failed(self, now: float) -> None:
        """A QP that refuses work is broken: the link goes down, from a timer (never in the
        middle of the send that found out)."""
        if self.state == LinkState.ACTIVE:
            self.host.io.arm_timer(("linkdown", self.lgr.lgr_id, self.link_id), now)

    def post_cdc(self, msg: cdc.CdcMessage, on_done: Callable[[bool, float], None], now: float) -> bool:
        return self._signaled(msg.encode(), on_done, now)

    def post_cdc_bytes(self, payload: bytes, on_done: Callable[[bool, float], None], now: float) -> bool:
        """A CDC already encoded (the transmit path packs it straight from the cursors)."""
        return self._signaled(payload, on_done, now)

    def post_llc(self, msg: llc.LlcMessage, now: float, on_done: Callable[[bool, float], None] | None = None) -> bool:
        payload = msg.encode(self.lgr.llc_order)
        ok = self._signaled(payload, on_done, now)
        if ok and self.host.bus_active:
            self.lgr.emit(now, "llc.msg", link=self.link_id, dir="tx", **_llc_fields(msg, payload))
        return ok

    def send_done(self, wr_id: int, ok: bool, now: float) -> None:
        freed, on_done = self.pending.pop(wr_id, (0, None))
        self.sq_used -= freed
        if on_done is not None:
            on_done(ok, now)
        while self.backlog and self.sq_used < self.host.config.send_queue and self.qp_alive:
            payload, cb = self.backlog.popleft()
            if not self._post_signaled(payload, cb, now) and cb is not None:
                cb(False, now)
        while self.waiting and self.has_room(3):
            self.waiting.popleft().tx_step(now)

    def drop_sends(self) -> None:
        """The QP is gone: forget what waited for it (the connections re-send elsewhere)."""
        self.pending.clear()
        self.backlog.clear()
        self.waiting.clear()
        self.sq_used = self.unsignaled = 0

    # ---------------------------------------------------------------- receive

    def received(self, data: bytes, now: float) -> None:
        self.last_rx = now
        if data[:1] == b"\xfe":
            try:
                msg = cdc.decode(data)
            except CdcError as e:
                self.rx_errors += 1
                self.lgr.emit(now, "link.event", link=self.link_id, event="bad_cdc", reason=str(e))
                return
            conn = self.lgr.conns.get(msg.token)
            if conn is not None:
                conn.on_cdc(msg, now)
            return
        try:
            msg = llc.decode(data)
        except LlcError as e:
            # unknown LLC types are dropped, as the kernel's demultiplexer does
            self.rx_errors += 1
            self.lgr.emit(now, "link.event", link=self.link_id, event="bad_llc", reason=str(e))
            return
        if self.host.bus_active:
            self.lgr.emit(now, "llc.msg", link=self.link_id, dir="rx", **_llc_fields(msg, data[: len(msg.encode(msg.order))]))
        self.lgr.on_llc(self, msg, now)


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


@dataclass
class LinkGroup:
    host: "SmcHost"
    lgr_id: int
    role: LgrRole
    version: int
    peer_id: bytes
    peer_gid: bytes
    peer_mac: bytes
    max_conns: int = 255
    max_links: int = 2
    links: dict[int, Link] = field(default_factory=dict)
    conns: dict[int, "SmcConnection"] = field(default_factory=dict)
    type: LgrType = LgrType.NONE
    terminated: bool = False
    sync_err: bool = False
    flows: deque["LlcFlow"] = field(default_factory=deque)  # local flows waiting for the slot
    running: "LlcFlow | None" = None  # the flow holding the slot
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
    link_seq: int = 0
    failovers: list[Failover] = field(default_factory=list)
    # links that died while the only other link was being confirmed: their connections
    # wait for it instead of aborting
    orphans: list[Link] = field(default_factory=list)

    @cached_property
    def name(self) -> str:
        return f"{self.lgr_id:08x}"

    def emit(self, now: float, kind: str, link: int | None = None, conn: int | None = None, **fields) -> None:
        self.host.emit(now, kind, lgr=self.name, link=link, conn=conn, **fields)

    def info(self) -> dict:
        return {
            "id": self.name, "role": self.role.name.lower(), "type": self.type.smc_tools_name, "version": self.version,
            "crit": self.type.critical, "conns": len(self.conns), "max_conns": self.max_conns, "max_links": self.max_links,
            "peer_host": self.peer_host, "peer_id": self.peer_id.hex(), "eid": self.negotiated_eid.rstrip(b" \0").decode("ascii", "replace"),
            "links": [link.info() for link in self.links.values()], "peer_rmbs": len(self.rtokens),
            "flow": type(self.running).__name__ if self.running else None,
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
        if new != self.type:
            old, self.type = self.type, new
            self.emit(now, "lgr.state", old=old.smc_tools_name, new=new.smc_tools_name, cause=cause, crit=new.critical)

    def llc_version(self) -> int:
        return 2 if self.version >= 2 else 1

    # ---------------------------------------------------------------- links

    def add_link(self, link: Link, link_id: int, now: float) -> None:
        link.link_id = link_id
        link.link_uid = ((self.lgr_id + link_id) & 0xFFFFFFFF).to_bytes(4, "big")
        self.links[link_id] = link
        self.host.links_by_qp[link.qp.handle] = link
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

    def link_confirmed(self, link: Link, now: float, new_type: LgrType = LgrType.SYMMETRIC) -> None:
        link.set_state("confirmed", now)
        link.last_rx = now
        self.set_type(LgrType.SINGLE if len(self.active_links()) == 1 else new_type, now, f"link {link.link_id} confirmed")
        self._arm_test_link(link, now)
        self._adopt_orphans(now)

    def _adopt_orphans(self, now: float) -> None:
        """A link came up after the only other one died: its connections move now and the
        dead link is deleted as any lost link."""
        from . import llcflows

        to = self.usable_link()
        while self.orphans and to is not None:
            dead = self.orphans.pop(0)
            self.switch_conns(dead, to, now, "the link it waited for is up")
            if self.role == LgrRole.SERVER:
                self.start_flow(llcflows.ServerDeleteLink(self, dead.link_id, DEL_LOST_PATH, orderly=True), now)
            else:
                self.start_flow(llcflows.ClientDeleteLink(self, dead.link_id, DEL_LOST_PATH), now)

    def kill_qp(self, link: Link) -> None:
        """Destroy the link's QP now: nothing it had in flight can land later."""
        if link.qp_alive:
            link.qp_alive = False
            self.host.links_by_qp.pop(link.qp.handle, None)
            self.host.io.destroy_qp(link.qp.handle)
            link.drop_sends()
        self.host.io.cancel_timer(("testlink", self.lgr_id, link.link_id))
        self.host.io.cancel_timer(("testlink_resp", self.lgr_id, link.link_id))

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

    def map_buffers(self, conn: "SmcConnection") -> None:
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

    def unuse_buffers(self, conn: "SmcConnection", now: float) -> None:
        """smc_buf_unuse: the send buffer is free at once; an RMB the peer knows is
        unregistered with it first (DELETE RKEY), then zeroed and free. Both stay registered
        here; a group that is going away frees them instead."""
        rmb, sndbuf = conn.rmb, conn.sndbuf
        if sndbuf is not None:
            sndbuf.in_use = False
        if rmb is None:
            pass
        elif rmb.confirmed and not self.terminated and self.active_links():
            self.delete_rkey(conn, now, lambda t: self._rmb_free(rmb))
        else:
            self._rmb_free(rmb)
        if self.terminated:
            self.free_buffers()

    def _rmb_free(self, rmb) -> None:
        rmb.confirmed = False
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

    # ---------------------------------------------------------------- TEST LINK

    def _arm_test_link(self, link: Link, now: float) -> None:
        interval = self.host.config.timeouts.test_link
        if interval > 0:
            self.host.io.arm_timer(("testlink", self.lgr_id, link.link_id), now + interval)

    def test_link_timer(self, link_id: int, now: float) -> None:
        link = self.links.get(link_id)
        if link is None or link.state != LinkState.ACTIVE or not link.qp_alive or self.terminated:
            return
        deadline = link.last_rx + self.host.config.timeouts.test_link
        if deadline > now:  # heard from the peer within the interval: look again then
            self.host.io.arm_timer(("testlink", self.lgr_id, link_id), deadline)
            return
        link.test_link_outstanding = True
        link.post_llc(llc.TestLink(version=self.llc_version()), now)
        self.host.io.arm_timer(("testlink_resp", self.lgr_id, link_id), now + self.host.config.timeouts.llc_wait)

    def test_link_expired(self, link_id: int, now: float) -> None:
        link = self.links.get(link_id)
        if link is not None and link.test_link_outstanding:
            self.emit(now, "link.event", link=link_id, event="test_link_timeout")
            self.link_down(link, now, "TEST LINK not answered")

    # ---------------------------------------------------------------- the local flow slot

    def start_flow(self, flow: "LlcFlow", now: float, front: bool = False) -> None:
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

    def flow_done(self, flow: "LlcFlow", now: float) -> None:
        if self.running is flow:
            self.host.io.cancel_timer(("llc", self.lgr_id))
            self.running = None
            self._run_flows(now)

    def flow_wait(self, seconds: float, now: float) -> None:
        self.host.io.arm_timer(("llc", self.lgr_id), now + seconds)

    def flow_timeout(self, now: float) -> None:
        flow = self.running
        if flow is not None:
            self.emit(now, "link.event", event="llc_timeout", flow=type(flow).__name__, step=flow.step)
            flow.on_timeout(now)

    def has_flow(self, kind: type) -> bool:
        return isinstance(self.running, kind) or any(isinstance(f, kind) for f in self.flows)

    def confirm_rkey(self, conn: "SmcConnection", now: float, done: Callable[[bool, float], None]) -> None:
        """CONFIRM RKEY for a new connection's RMB: its rkey on the link the message goes
        over, and (link id, rkey, address) for every other active link."""
        from .llcflows import RequestFlow

        def build(link: Link) -> llc.LlcMessage:
            others = tuple(llc.Rtoken(l.link_id, conn.rmb.on(l.device).rkey, conn.rmb.on(l.device).addr)
                           for l in self.active_links() if l is not link)[:2]  # fmt: skip
            reg = conn.rmb.on(link.device)
            return llc.ConfirmRkey(version=self.llc_version(), rkey=reg.rkey, vaddr=reg.addr, others=others)

        self.start_flow(RequestFlow(self, llc.ConfirmRkey, build, lambda resp, t: done(resp is not None and not resp.negative, t),
                                    prefer=conn.link), now)  # fmt: skip

    def delete_rkey(self, conn: "SmcConnection", now: float, done: Callable[[float], None]) -> None:
        from .llcflows import RequestFlow

        rmb = conn.rmb
        self.start_flow(RequestFlow(self, llc.DeleteRkey, lambda link: llc.DeleteRkey(version=self.llc_version(), rkeys=(rmb.on(link.device).rkey,)),
                                    lambda resp, t: done(t), prefer=conn.link), now)  # fmt: skip

    # ---------------------------------------------------------------- incoming LLC

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> None:
        from . import llcflows

        if isinstance(msg, llc.TestLink):
            if msg.response:
                link.test_link_outstanding = False
                self.host.io.cancel_timer(("testlink_resp", self.lgr_id, link.link_id))
                self._arm_test_link(link, now)
            else:
                link.post_llc(llc.TestLink(version=msg.version, response=True, user_data=msg.user_data), now)
            return
        if self.running is not None and self.running.on_llc(link, msg, now):
            return
        if msg.response:
            if isinstance(msg, llc.ConfirmLink):
                self.host.confirm_link_response(self, link, msg, now)
            return  # a response nobody waits for is dropped
        if isinstance(msg, llc.ConfirmRkey):
            row = self.rtoken_add(link.link_id, msg.rkey, msg.vaddr, msg.others)
            link.post_llc(llc.ConfirmRkey(version=msg.version, response=True, rkey=msg.rkey, vaddr=msg.vaddr, others=msg.others,
                                          negative=row is None, retry=row is None), now)  # fmt: skip
        elif isinstance(msg, llc.DeleteRkey):
            unknown = [r for r in msg.rkeys if not self.rtoken_delete(link.link_id, r)]
            resp = llc.DeleteRkey(version=msg.version, response=True, rkeys=msg.rkeys, negative=bool(unknown),
                                  **({"err_mask": sum(0x80 >> i for i, r in enumerate(msg.rkeys) if r in unknown)} if msg.version == 1
                                     else {"num_invalid": len(unknown)}))  # fmt: skip
            link.post_llc(resp, now)
        elif isinstance(msg, llc.ConfirmLink):
            self.host.confirm_link_request(self, link, msg, now)
        elif isinstance(msg, llc.DeleteLink):
            llcflows.peer_delete_link(self, link, msg, now)
        elif isinstance(msg, llc.AddLink):
            llcflows.peer_add_link(self, link, msg, now)
        elif isinstance(msg, llc.RequestAddLink):
            llcflows.peer_request_add_link(self, link, msg, now)
        # an ADD LINK CONTINUATION nobody waits for, and CONFIRM RKEY CONTINUATION, are dropped as in Linux

    # ---------------------------------------------------------------- link loss and failover

    def link_down(self, link: Link, now: float, reason: str) -> None:
        """This side found the link dead: fail over, then tell the peer (server: DELETE LINK
        flow and a new link; client: DELETE LINK request). A link still being added is
        the ADD LINK flow's to clean up."""
        from . import llcflows

        if not link.usable:
            return
        active = link.state == LinkState.ACTIVE
        if self.fail_over(link, now, reason) is None or not active:
            return
        if self.role == LgrRole.SERVER:
            self.start_flow(llcflows.ServerDeleteLink(self, link.link_id, DEL_LOST_PATH, orderly=True), now)
        else:
            self.start_flow(llcflows.ClientDeleteLink(self, link.link_id, DEL_LOST_PATH), now)

    def fail_over(self, link: Link, now: float, reason: str) -> Link | None:
        """Take ``link`` down and move its connections; returns the link they moved to, or
        None when none was left (the group is then terminated)."""
        was_active = link.state == LinkState.ACTIVE
        if link.usable:
            link.set_state("down", now)
            self.host.stats["links_down"] += 1
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
                self.terminate(now, DEL_LOST_PATH, f"link {link.link_id} down ({reason}) and no other link")
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
        self.host.stats["failovers"] += 1
        self.host.failovers.append({"t": rec.started, "lgr": self.name, "from_link": rec.from_link, "to_link": rec.to_link,
                                    "conns": rec.moved, "failed": rec.failed, "duration_ms": duration_ms, "reason": rec.reason})  # fmt: skip

    def after_link_removed(self, link: Link, now: float, expected_asym: bool = False) -> None:
        """Set the type once a deleted link is cleared (smc_llc_*_delete_link)."""
        n = len(self.active_links())
        if n == 0:
            self.terminate(now, DEL_LOST_PATH, f"no link left after link {link.link_id} was deleted")
        elif n == 1 and not expected_asym:
            self.set_type(LgrType.SINGLE, now, "link deleted")

    def may_add_link(self, new_type: LgrType) -> bool:
        """smc_llc_alloc_alt_link: room for one more link of this kind?"""
        if self.max_links <= 1 or self.terminated or len(self.usable_links()) >= 3:
            return False
        if self.type == LgrType.SYMMETRIC:
            return False
        return self.type == LgrType.SINGLE or new_type not in ASYMMETRIC

    def want_link(self, now: float, cause: str) -> None:
        """A second link may be possible now: the server adds one, the client asks for one."""
        from . import llcflows

        if self.terminated or self.max_links <= 1 or self.type not in (LgrType.SINGLE, LgrType.ASYMMETRIC_LOCAL):
            return
        if self.has_flow(llcflows.ServerAddLink) or self.has_flow(llcflows.ClientInvite):
            return
        if self.role == LgrRole.SERVER:
            self.start_flow(llcflows.ServerAddLink(self, cause), now)
        else:
            self.start_flow(llcflows.ClientInvite(self), now)

    # ---------------------------------------------------------------- the end

    def terminate(self, now: float, reason: int, why: str, notify_peer: bool = True) -> None:
        """smc_lgr_terminate: abort every connection, DELETE LINK all, take the links down.
        The QPs live until the DELETE LINK has left (or a second has passed)."""
        if self.terminated:
            return
        self.terminated = True
        self.emit(now, "lgr.state", old=self.type.smc_tools_name, new="NONE", cause=why, reason=reason, crit=True)
        self.type = LgrType.NONE
        running, self.running = self.running, None
        for flow in ([running] if running else []) + list(self.flows):
            flow.abandon(now)
        self.flows.clear()
        self.host.io.cancel_timer(("llc", self.lgr_id))
        for conn in list(self.conns.values()):
            if conn.mode == "INIT":
                self.host.handshake_lost(conn, now, f"link group {self.name} terminated: {why}")
            else:
                conn.abort(now, f"link group {self.name} terminated: {why}")
        for rec in list(self.failovers):
            self._failover_end(rec, now)
        link = self.usable_link()
        sent = notify_peer and link is not None and link.post_llc(
            llc.DeleteLink(version=self.llc_version(), link_num=0, reason=reason, all=True, orderly=reason == DEL_PROG_INIT_TERM),
            now, lambda ok, t: self.free_qps(t))  # fmt: skip
        for l in self.links.values():
            self.host.io.cancel_timer(("testlink", self.lgr_id, l.link_id))
            self.host.io.cancel_timer(("testlink_resp", self.lgr_id, l.link_id))
            if l.state != LinkState.UNUSED:
                l.set_state("clear", now)
        self.host.lgr_terminated(self, now)
        self.free_buffers()
        if sent:
            self.host.io.arm_timer(("lgr_free", self.lgr_id), now + 1.0)
        else:
            self.free_qps(now)

    def free_qps(self, now: float) -> None:
        self.host.io.cancel_timer(("lgr_free", self.lgr_id))
        self.host.dying_lgrs.pop(self.lgr_id, None)
        for link in self.links.values():
            self.kill_qp(link)


def _gid(g: bytes) -> str:
    if len(g) == 16 and g[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in g[12:])
    return g.hex()


def _reason(code: int) -> str:
    from stack.wire.codes import DELETE_LINK_REASONS

    return DELETE_LINK_REASONS.format(code)

