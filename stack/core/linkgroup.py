"""Link groups and links: QPs between two peers, the LLC flows that manage them, and
the send-queue accounting every CDC and RDMA WRITE goes through.

LLC flows follow ``net/smc/smc_llc.c``: one local flow at a time per link group (the
rest wait in order); requests from the peer are answered at once. The server drives link
management: it sends CONFIRM LINK on a new link; the client answers. TEST LINK keeps an
idle link honest: no message within the interval -> TEST LINK request -> no response
within 2 s -> the link is down. A link group whose last link goes down is terminated and
every connection on it aborts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from stack.wire import cdc, llc
from stack.wire.cdc import CdcError
from stack.wire.codes import LgrRole, LgrType, LinkState
from stack.wire.llc import LlcError

from .ports import QpInfo
from .states import LINK_TABLE, step

if TYPE_CHECKING:
    from .connection import SmcConnection
    from .host import SmcHost

DEL_LOST_PATH = 0x00010000
DEL_PROG_INIT_TERM = 0x00030000
DEL_PROT_VIOL = 0x00040000
DEL_NOLNK = 0x00100000
LLC_RESERVE = 4  # send-queue slots kept for CDCs and LLC messages without data


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

    def set_state(self, event: str, now: float) -> None:
        rule = step("link", LINK_TABLE, self.state, event)
        if rule.next is not None and rule.next != self.state:
            old, self.state = self.state, rule.next
            self.lgr.emit(now, "link.state", link=self.link_id, old=old.smc_tools_name, new=self.state.smc_tools_name, cause=event)

    def info(self) -> dict:
        return {
            "id": self.link_id, "state": self.state.smc_tools_name, "device": self.qp.device, "qpn": self.qp.qpn,
            "peer_qpn": self.peer_qpn, "gid": _gid(self.qp.gid), "peer_gid": _gid(self.peer_gid),
            "link_uid": self.link_uid.hex(), "peer_link_uid": self.peer_link_uid.hex(), "conns": sum(1 for c in self.lgr.conns.values() if c.link is self),
            "mtu": self.mtu, "sq_used": self.sq_used,
        }  # fmt: skip

    # ---------------------------------------------------------------- send queue

    def has_room(self, n: int) -> bool:
        return not self.backlog and self.sq_used + n <= self.host.config.send_queue - LLC_RESERVE

    def wait_for_room(self, conn: "SmcConnection") -> None:
        if conn not in self.waiting:
            self.waiting.append(conn)

    def _signaled(self, payload: bytes, on_done: Callable[[bool, float], None] | None) -> bool:
        if self.state == LinkState.UNUSED:
            return False
        if self.backlog or self.sq_used >= self.host.config.send_queue:
            self.backlog.append((payload, on_done))
            return True
        return self._post_signaled(payload, on_done)

    def _post_signaled(self, payload: bytes, on_done: Callable[[bool, float], None] | None) -> bool:
        self.wr_seq += 1
        wr_id = self.wr_seq
        if not self.host.io.post_send(self.qp.handle, wr_id, payload):
            return False
        self.pending[wr_id] = (1 + self.unsignaled, on_done)
        self.sq_used += 1
        self.unsignaled = 0
        return True

    def post_write(self, sges, remote_addr: int, rkey: int) -> None:
        self.wr_seq += 1
        if self.host.io.post_write(self.qp.handle, self.wr_seq, sges, remote_addr, rkey):
            self.sq_used += 1
            self.unsignaled += 1

    def post_cdc(self, conn: "SmcConnection", msg: cdc.CdcMessage, marks) -> bool:
        return self._signaled(msg.encode(), lambda ok, now: conn.cdc_completed(marks, ok, now))

    def post_llc(self, msg: llc.LlcMessage, now: float) -> bool:
        payload = msg.encode(self.lgr.llc_order)
        ok = self._signaled(payload, None)
        if ok and self.host.bus_active:
            self.lgr.emit(now, "llc.msg", link=self.link_id, dir="tx", **_llc_fields(msg, payload))
        return ok

    def send_done(self, wr_id: int, ok: bool, now: float) -> None:
        freed, on_done = self.pending.pop(wr_id, (0, None))
        self.sq_used -= freed
        if on_done is not None:
            on_done(ok, now)
        while self.backlog and self.sq_used < self.host.config.send_queue:
            payload, cb = self.backlog.popleft()
            if not self._post_signaled(payload, cb) and cb is not None:
                cb(False, now)
        while self.waiting and self.has_room(3):
            self.waiting.popleft().tx_step(now)

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
class Flow:
    """A local LLC flow waiting for its response."""

    kind: type
    link: Link
    msg: llc.LlcMessage
    timeout: float
    on_response: Callable[[llc.LlcMessage, float], None]
    on_timeout: Callable[[float], None]
    started: bool = False


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
    flows: deque[Flow] = field(default_factory=deque)
    peer_rkeys: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)  # peer rkey -> link id -> (rkey, vaddr)
    negotiated_eid: bytes = b""
    peer_host: str = ""
    peer_os: int = 0
    peer_release: int = 0
    llc_order: str = "little"
    created: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.lgr_id:08x}"

    def emit(self, now: float, kind: str, link: int | None = None, conn: int | None = None, **fields) -> None:
        self.host.emit(now, kind, lgr=self.name, link=link, conn=conn, **fields)

    def info(self) -> dict:
        return {
            "id": self.name, "role": self.role.name.lower(), "type": self.type.smc_tools_name, "version": self.version,
            "crit": self.type.critical, "conns": len(self.conns), "max_conns": self.max_conns, "max_links": self.max_links,
            "peer_host": self.peer_host, "peer_id": self.peer_id.hex(), "eid": self.negotiated_eid.rstrip(b" \0").decode("ascii", "replace"),
            "links": [link.info() for link in self.links.values()],
        }  # fmt: skip

    def active_links(self) -> list[Link]:
        return [l for l in self.links.values() if l.state == LinkState.ACTIVE]

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

    def link_confirmed(self, link: Link, now: float) -> None:
        link.set_state("confirmed", now)
        link.last_rx = now
        self.set_type(LgrType.SINGLE if len(self.active_links()) == 1 else LgrType.SYMMETRIC, now, "link confirmed")
        self._arm_test_link(link, now)

    def link_down(self, link: Link, now: float, reason: str) -> None:
        """A link failed (QP error, TEST LINK timeout): with no other link the group ends."""
        if link.state not in (LinkState.ACTIVE, LinkState.ACTIVATING):
            return
        link.set_state("down", now)
        self.emit(now, "link.event", link=link.link_id, event="down", reason=reason)
        if not self.active_links():
            self.terminate(now, DEL_LOST_PATH, f"link {link.link_id} down ({reason}) and no other link")

    def next_link_id(self) -> int:
        used = set(self.links)
        return next(i for i in range(1, 256) if i not in used)

    # ---------------------------------------------------------------- TEST LINK

    def _arm_test_link(self, link: Link, now: float) -> None:
        interval = self.host.config.timeouts.test_link
        if interval > 0:
            self.host.io.arm_timer(("testlink", self.lgr_id, link.link_id), now + interval)

    def test_link_timer(self, link_id: int, now: float) -> None:
        link = self.links.get(link_id)
        if link is None or link.state != LinkState.ACTIVE or self.terminated:
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

    # ---------------------------------------------------------------- local flows

    def start_flow(self, flow: Flow, now: float) -> None:
        self.flows.append(flow)
        if len(self.flows) == 1:
            self._run_flow(now)

    def _run_flow(self, now: float) -> None:
        while self.flows and not self.flows[0].started:
            flow = self.flows[0]
            flow.started = True
            if flow.link.post_llc(flow.msg, now):
                self.host.io.arm_timer(("llc", self.lgr_id), now + flow.timeout)
                return
            self.flows.popleft()
            flow.on_timeout(now)

    def _finish_flow(self, now: float) -> None:
        self.host.io.cancel_timer(("llc", self.lgr_id))
        self.flows.popleft()
        self._run_flow(now)

    def flow_timeout(self, now: float) -> None:
        if self.flows and self.flows[0].started:
            flow = self.flows[0]
            self.emit(now, "link.event", link=flow.link.link_id, event="llc_timeout", flow=type(flow.msg).__name__)
            self.flows.popleft()
            flow.on_timeout(now)
            self._run_flow(now)

    def confirm_rkey(self, conn: "SmcConnection", now: float, done: Callable[[bool, float], None]) -> None:
        """CONFIRM RKEY for a new connection's RMB on an existing link group."""
        msg = llc.ConfirmRkey(version=self.llc_version(), rkey=conn.rmb.rkey, vaddr=conn.rmb.addr)
        self.start_flow(
            Flow(llc.ConfirmRkey, conn.link, msg, self.host.config.timeouts.llc_wait,
                 lambda resp, t: done(not resp.negative, t), lambda t: done(False, t)),
            now,
        )  # fmt: skip

    def delete_rkey(self, rkey: int, link: Link, now: float, done: Callable[[float], None]) -> None:
        msg = llc.DeleteRkey(version=self.llc_version(), rkeys=(rkey,))
        self.start_flow(Flow(llc.DeleteRkey, link, msg, self.host.config.timeouts.llc_wait, lambda r, t: done(t), done), now)

    # ---------------------------------------------------------------- incoming LLC

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> None:
        if msg.response:
            if isinstance(msg, llc.TestLink):
                link.test_link_outstanding = False
                self.host.io.cancel_timer(("testlink_resp", self.lgr_id, link.link_id))
                self._arm_test_link(link, now)
                return
            if self.flows and self.flows[0].started and isinstance(msg, self.flows[0].kind):
                flow = self.flows[0]
                self._finish_flow(now)
                flow.on_response(msg, now)
                return
            if isinstance(msg, llc.ConfirmLink):
                self.host.confirm_link_response(self, link, msg, now)
            return  # a response nobody waits for is dropped
        if isinstance(msg, llc.TestLink):
            link.post_llc(llc.TestLink(version=msg.version, response=True, user_data=msg.user_data), now)
        elif isinstance(msg, llc.ConfirmRkey):
            self.peer_rkeys[msg.rkey] = {link.link_id: (msg.rkey, msg.vaddr), **{t.link_id: (t.rkey, t.vaddr) for t in msg.others}}
            link.post_llc(llc.ConfirmRkey(version=msg.version, response=True, rkey=msg.rkey, vaddr=msg.vaddr, others=msg.others), now)
        elif isinstance(msg, llc.DeleteRkey):
            unknown = [r for r in msg.rkeys if r not in self.peer_rkeys]
            for r in msg.rkeys:
                self.peer_rkeys.pop(r, None)
            resp = llc.DeleteRkey(version=msg.version, response=True, rkeys=msg.rkeys, negative=bool(unknown),
                                  **({"err_mask": sum(0x80 >> i for i, r in enumerate(msg.rkeys) if r in unknown)} if msg.version == 1
                                     else {"num_invalid": len(unknown)}))  # fmt: skip
            link.post_llc(resp, now)
        elif isinstance(msg, llc.ConfirmLink):
            self.host.confirm_link_request(self, link, msg, now)
        elif isinstance(msg, llc.DeleteLink):
            self._delete_link_request(link, msg, now)
        elif isinstance(msg, (llc.AddLink, llc.RequestAddLink, llc.AddLinkCont)):
            # a second link is not offered here: reject as a kernel without an alternate path does
            if isinstance(msg, llc.AddLink) and self.role == LgrRole.CLIENT:
                link.post_llc(llc.AddLink(version=msg.version, response=True, rejected=True, reject_reason=1, mac=msg.mac,
                                          gid=msg.gid, qpn=msg.qpn, link_num=msg.link_num, qp_mtu=msg.qp_mtu, psn=msg.psn), now)  # fmt: skip
        # CONFIRM RKEY CONTINUATION is received and ignored, as in Linux

    def _delete_link_request(self, link: Link, msg: llc.DeleteLink, now: float) -> None:
        if msg.all:
            if self.role == LgrRole.SERVER:
                link.post_llc(llc.DeleteLink(version=msg.version, link_num=0, reason=msg.reason, all=True, orderly=msg.orderly), now)
            self.terminate(now, msg.reason, f"peer deleted the link group ({_reason(msg.reason)})", notify_peer=False)
            return
        target = self.links.get(msg.link_num)
        link.post_llc(llc.DeleteLink(version=msg.version, response=True, link_num=msg.link_num, reason=0 if target else DEL_NOLNK), now)
        if target is not None:
            self.link_down(target, now, f"peer deleted it ({_reason(msg.reason)})")

    # ---------------------------------------------------------------- the end

    def terminate(self, now: float, reason: int, why: str, notify_peer: bool = True) -> None:
        """smc_lgr_terminate: abort every connection, DELETE LINK all, take the links down."""
        if self.terminated:
            return
        self.terminated = True
        self.emit(now, "lgr.state", old=self.type.smc_tools_name, new="NONE", cause=why, reason=reason, crit=True)
        self.type = LgrType.NONE
        for conn in list(self.conns.values()):
            conn.abort(now, f"link group {self.name} terminated: {why}")
        if notify_peer:
            for link in self.links.values():
                if link.state == LinkState.ACTIVE:
                    link.post_llc(llc.DeleteLink(version=self.llc_version(), link_num=0, reason=reason, all=True,
                                                 orderly=reason == DEL_PROG_INIT_TERM), now)  # fmt: skip
                    break
        for flow in list(self.flows):
            flow.on_timeout(now)
        self.flows.clear()
        self.host.io.cancel_timer(("llc", self.lgr_id))
        for link in self.links.values():
            self.host.io.cancel_timer(("testlink", self.lgr_id, link.link_id))
            self.host.io.cancel_timer(("testlink_resp", self.lgr_id, link.link_id))
            link.set_state("clear", now)
        self.host.lgr_terminated(self, now)


def _gid(g: bytes) -> str:
    if len(g) == 16 and g[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in g[12:])
    return g.hex()


def _reason(code: int) -> str:
    from stack.wire.codes import DELETE_LINK_REASONS

    return DELETE_LINK_REASONS.format(code)


def _llc_fields(msg: llc.LlcMessage, raw: bytes) -> dict:
    from dataclasses import fields as dc_fields

    out = {"type": msg.name, "response": msg.response}
    for f in dc_fields(msg):
        if f.name in ("version", "response", "order"):
            continue
        v = getattr(msg, f.name)
        if isinstance(v, tuple):
            v = [vars(x) if hasattr(x, "__dict__") else x for x in v]
        out[f.name] = v
    out["raw"] = raw
    return out
