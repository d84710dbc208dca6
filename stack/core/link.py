"""One link: an RC QP between two peers' devices, its send queue and what it receives.

Every CDC and RDMA WRITE of a connection, and every LLC message of its link group, goes
through a link's send-queue accounting: ``send_queue`` work requests at most (the kernel's
QP depth), of which ``LLC_RESERVE`` are kept for messages without data; signaled sends
that find no slot wait in order, and connections that find no room wait to be called back.
What the link receives is a CDC (for the connection its token names) or an LLC message
(handed to ``on_llc``).

A link gets its services handed in (the I/O port, the send-queue depth, its group's event
emitter and connections by token) and never names its link group: the group creates it,
and tells it when the group is going away (``draining``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from stack.wire import cdc, llc
from stack.wire.cdc import CdcError
from stack.wire.codes import LinkState
from stack.wire.fields import llc_fields as _llc_fields
from stack.wire.llc import LlcError

from .ports import QpInfo, Services
from .states import LINK_TABLE, step

LLC_RESERVE = 4  # send-queue slots kept for CDCs and LLC messages without data

OnDone = Callable[[bool, float], None]


class Link:
    def __init__(self, ctx: Services, qp: QpInfo, lgr_id: int, emit: Callable[..., None], conns: dict[int, Any],
                 on_llc: Callable[["Link", llc.LlcMessage, float], None], llc_order: str) -> None:  # fmt: skip
        self.ctx = ctx
        self.qp = qp
        self.lgr_id = lgr_id
        self.emit = emit  # the link group's: events carry its name
        self.conns = conns  # the link group's connections by token: who a CDC is for
        self.on_llc = on_llc
        self.llc_order = llc_order
        # the data path calls these on every message: bound once
        self._post_send = ctx.io.post_send
        self._post_write = ctx.io.post_write
        self.send_queue = ctx.config.send_queue
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
        self.draining = False  # the link group is terminated: its last DELETE LINK may still leave
        self.sq_used = 0
        self.unsignaled = 0
        self.wr_seq = 0
        self.pending: dict[int, tuple[int, OnDone | None]] = {}
        self.waiting: deque = deque()  # connections waiting for send-queue room (they have tx_step)
        # signaled sends waiting for a free send-queue slot, in order (the kernel waits for a slot too)
        self.backlog: deque[tuple[bytes, OnDone | None]] = deque()
        self.last_rx = 0.0
        self.test_link_outstanding = False
        self.rx_errors = 0

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
            self.emit(now, "link.state", link=self.link_id, old=old.smc_tools_name, new=self.state.smc_tools_name, cause=event)

    def info(self) -> dict:
        return {
            "id": self.link_id, "state": self.state.smc_tools_name, "device": self.qp.device, "qpn": self.qp.qpn,
            "peer_qpn": self.peer_qpn, "gid": gid_text(self.qp.gid), "peer_gid": gid_text(self.peer_gid), "asym": self.asym,
            "link_uid": self.link_uid.hex(), "peer_link_uid": self.peer_link_uid.hex(), "conns": sum(1 for c in self.conns.values() if c.link is self),
            "mtu": self.mtu, "sq_used": self.sq_used,
        }  # fmt: skip

    # ---------------------------------------------------------------- send queue

    def has_room(self, n: int) -> bool:
        return not self.backlog and self.sq_used + n <= self.send_queue - LLC_RESERVE

    def wait_for_room(self, conn) -> None:
        if conn not in self.waiting:
            self.waiting.append(conn)

    def _signaled(self, payload: bytes, on_done: OnDone | None, now: float) -> bool:
        if not self.qp_alive or (self.state == LinkState.UNUSED and not self.draining):
            return False
        if self.backlog or self.sq_used >= self.send_queue:
            self.backlog.append((payload, on_done))
            return True
        return self._post_signaled(payload, on_done, now)

    def _post_signaled(self, payload: bytes, on_done: OnDone | None, now: float) -> bool:
        self.wr_seq += 1
        wr_id = self.wr_seq
        if not self._post_send(self.qp.handle, wr_id, payload):
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
        if self._post_write(self.qp.handle, self.wr_seq, sges, remote_addr, rkey):
            self.sq_used += 1
            self.unsignaled += 1
        else:
            self._post_failed(now)

    def _post_failed(self, now: float) -> None:
        """A QP that refuses work is broken: the link goes down, from a timer (never in the
        middle of the send that found out)."""
        if self.state == LinkState.ACTIVE:
            self.ctx.io.arm_timer(("linkdown", self.lgr_id, self.link_id), now)

    def post_cdc(self, msg: cdc.CdcMessage, on_done: OnDone, now: float) -> bool:
        return self._signaled(msg.encode(), on_done, now)

    def post_cdc_bytes(self, payload: bytes, on_done: OnDone, now: float) -> bool:
        """A CDC already encoded (the transmit path packs it straight from the cursors)."""
        return self._signaled(payload, on_done, now)

    def post_llc(self, msg: llc.LlcMessage, now: float, on_done: OnDone | None = None) -> bool:
        payload = msg.encode(self.llc_order)
        ok = self._signaled(payload, on_done, now)
        if ok and self.ctx.bus.active:
            self.emit(now, "llc.msg", link=self.link_id, dir="tx", **_llc_fields(msg, payload))
        return ok

    def send_done(self, wr_id: int, ok: bool, now: float) -> None:
        freed, on_done = self.pending.pop(wr_id, (0, None))
        self.sq_used -= freed
        if on_done is not None:
            on_done(ok, now)
        while self.backlog and self.sq_used < self.send_queue and self.qp_alive:
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
                self.emit(now, "link.event", link=self.link_id, event="bad_cdc", reason=str(e), raw=bytes(data[: llc.LLC_V2_MAX_LEN]))
                return
            conn = self.conns.get(msg.token)
            if conn is not None:
                conn.on_cdc(msg, now, data)
            return
        try:
            msg = llc.decode(data)
        except LlcError as e:
            # unknown LLC types are dropped, as the kernel's demultiplexer does
            self.rx_errors += 1
            self.emit(now, "link.event", link=self.link_id, event="bad_llc", reason=str(e), raw=bytes(data[: llc.LLC_V2_MAX_LEN]))
            return
        if self.ctx.bus.active:
            self.emit(now, "llc.msg", link=self.link_id, dir="rx", **_llc_fields(msg, data[: len(msg.encode(msg.order))]))
        self.on_llc(self, msg, now)


def gid_text(g: bytes) -> str:
    if len(g) == 16 and g[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in g[12:])
    return g.hex()
