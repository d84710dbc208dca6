"""Reliable Connected queue pair of the soft provider: requester and responder.

Protocol logic only: no sockets, no clock. The device calls in with ``now`` (monotonic
seconds) and gives the QP a host to transmit packets, arm timers, find memory regions
and report events. All calls happen under the device lock.

Requester: every posted WR gets its PSNs at post time; packets are sent go-back-N within
a window, the last packet of a message (and every ``ACK_EVERY``-th) asks for an ACK.
Timeouts follow the ibverbs formula (4.096 us * 2**timeout) with ``retry_cnt`` retries;
RNR NAKs wait the responder's RNR timer and retry ``rnr_retry`` times (7 = forever);
remote access / invalid request NAKs complete the WR in error. Any error moves the QP to
ERR and flushes everything outstanding and everything posted later.

Responder: in-order delivery by expected PSN; duplicates are re-ACKed, a gap gets one
PSN-sequence NAK; a SEND with no receive posted gets an RNR NAK; every RDMA WRITE is
checked against rkey, protection domain, access flags and range before a byte moves.
"""

from __future__ import annotations

import errno
from collections import deque
from dataclasses import dataclass
from typing import Protocol, Sequence

from stack.wire import roce
from stack.wire.roce import AckKind, Aeth, NakCode, Opcode

from ..api import (
    RNR_TIMER_MS,
    Access,
    AsyncEvent,
    CompletionQueue,
    EventType,
    QPCap,
    QPState,
    QueuePair,
    RCPath,
    RecvWR,
    SendFlags,
    SendWR,
    Sge,
    VerbsError,
    WcOpcode,
    WcStatus,
    WorkCompletion,
    WrOpcode,
    local_ack_timeout,
)

PSN_MASK = 0xFFFFFF
WINDOW = 256  # packets in flight per QP (the UDP socket buffers are sized for it)
# A request PSN further than this from the expected one cannot come from a requester that
# keeps WINDOW packets in flight: a stray or a forged frame (someone sweeping PSNs). Counted,
# dropped without an answer, and no more than SUSPECT_PER_SECOND a second examined at all.
SUSPECT_SPAN = 2 * WINDOW
SUSPECT_PER_SECOND = 1000
ACK_EVERY = 32  # ask for an ACK at least every this many packets of a long message


def psn_add(psn: int, n: int) -> int:
    return (psn + n) & PSN_MASK


def psn_diff(a: int, b: int) -> int:
    """a - b in 24-bit serial arithmetic (negative when a is before b)."""
    d = (a - b) & PSN_MASK
    return d - (1 << 24) if d & 0x800000 else d


class QpHost(Protocol):
    """What a QP needs from its device."""

    def transmit(self, qp: "SoftQP", packet: roce.RocePacket) -> None: ...
    def arm_timer(self, qp: "SoftQP", key: str, when: float) -> None: ...
    def cancel_timer(self, qp: "SoftQP", key: str) -> None: ...
    def find_mr(self, rkey: int): ...
    def post_event(self, event: AsyncEvent) -> None: ...
    def count(self, stat: str) -> None: ...
    def now(self) -> float: ...


@dataclass
class _SendEntry:
    wr: SendWR
    data: bytes
    first_psn: int
    npkts: int

    @property
    def last_psn(self) -> int:
        return psn_add(self.first_psn, self.npkts - 1)

    @property
    def signaled(self) -> bool:
        return bool(self.wr.flags & SendFlags.SIGNALED)


_TRANSITIONS = {
    # to_init / to_rtr / to_rts: which states they may start from (ibv_modify_qp rules)
    "init": (QPState.RESET, QPState.INIT),
    "rtr": (QPState.INIT,),
    "rts": (QPState.RTR, QPState.RTS),
}

_SEND_OPS = {
    # (opcode kind, position) -> BTH opcode; position: only, first, middle, last
    ("send", "only"): Opcode.SEND_ONLY,
    ("send", "first"): Opcode.SEND_FIRST,
    ("send", "middle"): Opcode.SEND_MIDDLE,
    ("send", "last"): Opcode.SEND_LAST,
    ("send_imm", "only"): Opcode.SEND_ONLY_WITH_IMMEDIATE,
    ("send_imm", "first"): Opcode.SEND_FIRST,
    ("send_imm", "middle"): Opcode.SEND_MIDDLE,
    ("send_imm", "last"): Opcode.SEND_LAST_WITH_IMMEDIATE,
    ("write", "only"): Opcode.RDMA_WRITE_ONLY,
    ("write", "first"): Opcode.RDMA_WRITE_FIRST,
    ("write", "middle"): Opcode.RDMA_WRITE_MIDDLE,
    ("write", "last"): Opcode.RDMA_WRITE_LAST,
    ("write_imm", "only"): Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE,
    ("write_imm", "first"): Opcode.RDMA_WRITE_FIRST,
    ("write_imm", "middle"): Opcode.RDMA_WRITE_MIDDLE,
    ("write_imm", "last"): Opcode.RDMA_WRITE_LAST_WITH_IMMEDIATE,
}
_WR_KIND = {
    WrOpcode.SEND: "send",
    WrOpcode.SEND_WITH_IMM: "send_imm",
    WrOpcode.RDMA_WRITE: "write",
    WrOpcode.RDMA_WRITE_WITH_IMM: "write_imm",
}
_SEND_FIRSTS = {Opcode.SEND_FIRST, Opcode.SEND_ONLY, Opcode.SEND_ONLY_WITH_IMMEDIATE}
_SEND_CONTS = {Opcode.SEND_MIDDLE, Opcode.SEND_LAST, Opcode.SEND_LAST_WITH_IMMEDIATE}
_SEND_ENDS = {Opcode.SEND_ONLY, Opcode.SEND_ONLY_WITH_IMMEDIATE, Opcode.SEND_LAST, Opcode.SEND_LAST_WITH_IMMEDIATE}
_WRITE_FIRSTS = {Opcode.RDMA_WRITE_FIRST, Opcode.RDMA_WRITE_ONLY, Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE}
_WRITE_CONTS = {Opcode.RDMA_WRITE_MIDDLE, Opcode.RDMA_WRITE_LAST, Opcode.RDMA_WRITE_LAST_WITH_IMMEDIATE}
_WRITE_ENDS = {Opcode.RDMA_WRITE_ONLY, Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE, Opcode.RDMA_WRITE_LAST, Opcode.RDMA_WRITE_LAST_WITH_IMMEDIATE}
_WITH_IMM = {Opcode.SEND_ONLY_WITH_IMMEDIATE, Opcode.SEND_LAST_WITH_IMMEDIATE, Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE, Opcode.RDMA_WRITE_LAST_WITH_IMMEDIATE}
_NAK_STATUS = {
    NakCode.INVALID_REQUEST: WcStatus.REM_INV_REQ_ERR,
    NakCode.REMOTE_ACCESS_ERROR: WcStatus.REM_ACCESS_ERR,
    NakCode.REMOTE_OPERATIONAL_ERROR: WcStatus.REM_OP_ERR,
    NakCode.INVALID_RD_REQUEST: WcStatus.REM_INV_REQ_ERR,
}


class SoftQP(QueuePair):
    def __init__(self, host: QpHost, pd, send_cq: CompletionQueue, recv_cq: CompletionQueue, cap: QPCap, qp_num: int) -> None:
        self.host = host
        self.pd = pd
        self.send_cq = send_cq
        self.recv_cq = recv_cq
        self.cap = cap
        self.qp_num = qp_num
        self._state = QPState.RESET
        self.access = Access(0)
        self.port = 1
        self.path: RCPath | None = None
        self.mtu = 1024
        self.remote_ip: bytes = b""
        # requester
        self.sq: deque[_SendEntry] = deque()
        self.psn_tail = 0  # PSN the next posted WR starts at
        self.snd_nxt = 0  # next PSN to put on the wire
        self.una = 0  # oldest unacknowledged PSN
        self.retry_left = 0
        self.rnr_left = 0
        self.rnr_waiting = False
        self.rto_armed = False
        # responder
        self.rq: deque[RecvWR] = deque()
        self.epsn = 0
        self.msn = 0
        self.cur_recv: tuple[RecvWR, int, int | None] | None = None  # (wr, bytes placed, imm)
        self.cur_write: tuple[object, int, int, int] | None = None  # (mr, next offset, bytes left, message length)
        self.nak_seq_sent = False
        self.stats = {"tx": 0, "retransmits": 0, "timeouts": 0, "rnr_naks_rx": 0, "seq_naks_rx": 0, "dup_rx": 0,
                      "psn_out_of_window": 0, "suspect_ignored": 0}  # fmt: skip
        self._suspect_second = 0.0
        self._suspect_count = 0

    # ------------------------------------------------------------------ state

    def state(self) -> QPState:
        return self._state

    def to_init(self, access: Access, port: int = 1, pkey_index: int = 0) -> None:
        self._require("init", "to_init")
        self.access, self.port = Access(access), port
        self._state = QPState.INIT

    def to_rtr(self, path: RCPath) -> None:
        self._require("rtr", "to_rtr")
        if len(path.remote_gid) != 16:
            raise VerbsError(errno.EINVAL, "to_rtr: remote GID must be 16 bytes")
        self.path = path
        self.mtu = min(path.path_mtu.bytes, self.host.active_mtu_bytes(self.port))
        self.remote_ip = path.remote_gid[12:]
        self.epsn = path.remote_psn & PSN_MASK
        self._state = QPState.RTR

    def to_rts(self, path: RCPath) -> None:
        self._require("rts", "to_rts")
        if self.path is None or path.remote_qpn != self.path.remote_qpn:
            raise VerbsError(errno.EINVAL, "to_rts: the path must be the one given to to_rtr")
        self.path = path
        if self._state == QPState.RTR:
            self.psn_tail = self.snd_nxt = self.una = path.local_psn & PSN_MASK
        self.retry_left = path.retry_cnt
        self.rnr_left = path.rnr_retry
        self._state = QPState.RTS

    def to_error(self) -> None:
        self._enter_error(self.host.now())

    def _require(self, step: str, call: str) -> None:
        if self._state not in _TRANSITIONS[step]:
            raise VerbsError(errno.EINVAL, f"{call}: QP 0x{self.qp_num:06x} is in {self._state.name}")

    def destroy(self) -> None:
        self._cancel_rto()
        self.host.cancel_timer(self, "rnr")
        self._state = QPState.RESET
        self.sq.clear()
        self.rq.clear()
        self.host.forget_qp(self)

    # ------------------------------------------------------------------ posting

    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        wrs = [wrs] if isinstance(wrs, SendWR) else list(wrs)
        if self._state == QPState.ERR:
            for wr in wrs:
                self._cqe(self.send_cq, wr.wr_id, WcStatus.WR_FLUSH_ERR, _wc_op(wr.opcode))
            return
        if self._state != QPState.RTS:
            raise VerbsError(errno.EINVAL, f"post_send: QP 0x{self.qp_num:06x} is in {self._state.name}, not RTS")
        if len(self.sq) + len(wrs) > self.cap.max_send_wr:
            raise VerbsError(errno.ENOMEM, f"post_send: send queue full ({self.cap.max_send_wr} WRs)")
        now = self.host.now()
        for wr in wrs:
            if wr.opcode not in _WR_KIND:
                raise VerbsError(errno.EOPNOTSUPP, f"post_send: opcode {wr.opcode!r} is not supported")
            if len(wr.sges) > self.cap.max_send_sge:
                raise VerbsError(errno.EINVAL, f"post_send: {len(wr.sges)} SGEs, the QP allows {self.cap.max_send_sge}")
            if wr.flags & SendFlags.INLINE and wr.length > self.cap.max_inline_data:
                raise VerbsError(errno.EINVAL, f"post_send: {wr.length} bytes inline, the QP allows {self.cap.max_inline_data}")
        for wr in wrs:
            data = self._gather(wr.sges)
            if data is None:  # bad lkey or range: a local protection error, as a NIC reports it
                self._cqe(self.send_cq, wr.wr_id, WcStatus.LOC_PROT_ERR, _wc_op(wr.opcode))
                self._enter_error(now)
                return
            npkts = max(1, -(-len(data) // self.mtu))
            self.sq.append(_SendEntry(wr, data, self.psn_tail, npkts))
            self.psn_tail = psn_add(self.psn_tail, npkts)
        self._pump(now)

    def _gather(self, sges: Sequence[Sge]) -> bytes | None:
        parts = []
        for s in sges:
            mr = s.mr
            if not getattr(mr, "valid", False) or mr.pd is not self.pd or s.offset < 0 or s.length < 0 or s.offset + s.length > mr.length:
                return None
            parts.append(bytes(mr.buf[s.offset : s.offset + s.length]))
        return b"".join(parts)

    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        wrs = [wrs] if isinstance(wrs, RecvWR) else list(wrs)
        if self._state == QPState.ERR:
            for wr in wrs:
                self._cqe(self.recv_cq, wr.wr_id, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV)
            return
        if self._state == QPState.RESET:
            raise VerbsError(errno.EINVAL, f"post_recv: QP 0x{self.qp_num:06x} is in RESET")
        if len(self.rq) + len(wrs) > self.cap.max_recv_wr:
            raise VerbsError(errno.ENOMEM, f"post_recv: receive queue full ({self.cap.max_recv_wr} WRs)")
        for wr in wrs:
            if len(wr.sges) > self.cap.max_recv_sge:
                raise VerbsError(errno.EINVAL, f"post_recv: {len(wr.sges)} SGEs, the QP allows {self.cap.max_recv_sge}")
        self.rq.extend(wrs)

    # ------------------------------------------------------------------ requester

    def _entry_for(self, psn: int) -> tuple[int, _SendEntry] | None:
        for i, e in enumerate(self.sq):
            if 0 <= psn_diff(psn, e.first_psn) < e.npkts:
                return i, e
        return None

    def _pump(self, now: float) -> None:
        """Send what the window allows, starting at snd_nxt."""
        if self._state != QPState.RTS or self.rnr_waiting:
            return
        sent = False
        found = None
        while self.snd_nxt != self.psn_tail and psn_diff(self.snd_nxt, self.una) < WINDOW:
            if found is None or not 0 <= psn_diff(self.snd_nxt, found[1].first_psn) < found[1].npkts:
                found = self._entry_for(self.snd_nxt)
                if found is None:  # cannot happen while una <= snd_nxt < psn_tail
                    break
            entry = found[1]
            self._transmit_packet(entry, psn_diff(self.snd_nxt, entry.first_psn))
            self.snd_nxt = psn_add(self.snd_nxt, 1)
            sent = True
        if sent and not self.rto_armed:
            self._arm_rto(now)

    def _transmit_packet(self, e: _SendEntry, index: int) -> None:
        kind = _WR_KIND[e.wr.opcode]
        last = index == e.npkts - 1
        pos = "only" if e.npkts == 1 else "first" if index == 0 else "last" if last else "middle"
        op = _SEND_OPS[(kind, pos)]
        psn = psn_add(e.first_psn, index)
        payload = e.data[index * self.mtu : (index + 1) * self.mtu]
        reth = roce.Reth(e.wr.remote_addr, e.wr.rkey, len(e.data)) if op in _WRITE_FIRSTS else None
        imm = (e.wr.imm or 0) if op in _WITH_IMM else None
        bth = roce.Bth(
            op,
            self.path.remote_qpn,
            psn,
            se=last and kind.startswith("send") and bool(e.wr.flags & SendFlags.SOLICITED),
            ackreq=last or index % ACK_EVERY == ACK_EVERY - 1,
        )
        self.stats["tx"] += 1
        self.host.transmit(self, roce.RocePacket(bth, reth=reth, imm=imm, payload=payload))

    def _arm_rto(self, now: float) -> None:
        """(Re)start the local ACK timer: it measures from the last progress, not the last send."""
        self.rto_armed = True
        self.host.arm_timer(self, "rto", now + local_ack_timeout(self.path.timeout))

    def _cancel_rto(self) -> None:
        self.rto_armed = False
        self.host.cancel_timer(self, "rto")

    def suspect(self, now: float) -> bool:
        """A frame whose PSN no honest peer sends: count it; True when it may still be examined
        (at most SUSPECT_PER_SECOND a second)."""
        if now - self._suspect_second >= 1.0:
            self._suspect_second, self._suspect_count = now, 0
        self._suspect_count += 1
        key = "suspect_ignored" if self._suspect_count > SUSPECT_PER_SECOND else "psn_out_of_window"
        self.stats[key] += 1
        self.host.count(key)
        return key == "psn_out_of_window"

    def on_ack(self, packet: roce.RocePacket, now: float) -> None:
        if self._state != QPState.RTS or packet.aeth is None:
            return
        psn, aeth = packet.bth.psn, packet.aeth
        # An ACK or NAK only means something for PSNs we have sent.
        if psn_diff(psn, self.una) < -1 or psn_diff(psn, self.psn_tail) >= 0:
            if abs(psn_diff(psn, self.una)) > SUSPECT_SPAN:
                self.suspect(now)
            return
        kind = aeth.kind
        if kind == AckKind.ACK:
            self._acked_through(psn, now)
            self.snd_nxt = self.snd_nxt if psn_diff(self.snd_nxt, self.una) >= 0 else self.una
            self._pump(now)
            return
        self._acked_through(psn_add(psn, -1), now)  # a NAK acknowledges everything before it
        if kind == AckKind.RNR_NAK:
            self.stats["rnr_naks_rx"] += 1
            if self.rnr_left == 0:
                self._fail_at(psn, WcStatus.RNR_RETRY_EXC_ERR, now)
                return
            if self.path.rnr_retry != 7:
                self.rnr_left -= 1
            self.snd_nxt = psn
            self.rnr_waiting = True
            self._cancel_rto()
            self.host.arm_timer(self, "rnr", now + RNR_TIMER_MS[aeth.value] / 1000)
        elif kind == AckKind.NAK and aeth.value == NakCode.PSN_SEQUENCE_ERROR:
            self.stats["seq_naks_rx"] += 1
            if self.rnr_waiting and psn == self.snd_nxt:
                return  # the followers of an RNR-NAKed packet: we go back there anyway
            if self.retry_left == 0:
                self._fail_at(psn, WcStatus.RETRY_EXC_ERR, now)
                return
            self.retry_left -= 1
            self.snd_nxt = psn
            self.stats["retransmits"] += 1
            self._pump(now)
        elif kind == AckKind.NAK:
            self._fail_at(psn, _NAK_STATUS.get(aeth.value, WcStatus.REM_OP_ERR), now)

    def _acked_through(self, psn: int, now: float) -> None:
        """Everything up to and including ``psn`` arrived: complete finished WRs."""
        if psn_diff(psn, self.una) < 0:
            return
        self.una = psn_add(psn, 1)
        self.retry_left = self.path.retry_cnt
        self.rnr_left = self.path.rnr_retry
        while self.sq and psn_diff(self.sq[0].last_psn, psn) <= 0:
            e = self.sq.popleft()
            if e.signaled:
                self._cqe(self.send_cq, e.wr.wr_id, WcStatus.SUCCESS, _wc_op(e.wr.opcode), len(e.data))
        if self.una == self.psn_tail:
            self._cancel_rto()
        else:
            self._arm_rto(now)

    def _fail_at(self, psn: int, status: WcStatus, now: float) -> None:
        found = self._entry_for(psn)
        if found is not None:
            i, e = found
            for _ in range(i):  # defensive: earlier entries were acknowledged by the NAK
                self.sq.popleft()
            self.sq.popleft()
            self._cqe(self.send_cq, e.wr.wr_id, status, _wc_op(e.wr.opcode))
        self._enter_error(now)

    def on_timer(self, key: str, now: float) -> None:
        if self._state != QPState.RTS:
            return
        if key == "rnr":
            self.rnr_waiting = False
            self._pump(now)
            return
        if key == "rto":
            self.rto_armed = False
        if key == "rto" and self.una != self.psn_tail:
            self.stats["timeouts"] += 1
            if self.retry_left == 0:
                self._fail_at(self.una, WcStatus.RETRY_EXC_ERR, now)
                return
            self.retry_left -= 1
            self.snd_nxt = self.una
            self.stats["retransmits"] += 1
            self._pump(now)

    # ------------------------------------------------------------------ responder

    def on_request(self, packet: roce.RocePacket, now: float) -> None:
        if self._state not in (QPState.RTR, QPState.RTS):
            return
        bth = packet.bth
        d = psn_diff(bth.psn, self.epsn)
        if d >= SUSPECT_SPAN or d < -SUSPECT_SPAN:  # no answer: a forger learns nothing from us
            self.suspect(now)
            return
        if d and self._suspect_count > SUSPECT_PER_SECOND and now - self._suspect_second < 1.0:
            # under a sweep the QP answers only its expected PSN until the second is over
            self.stats["suspect_ignored"] += 1
            self.host.count("suspect_ignored")
            return
        if d < 0:
            self.stats["dup_rx"] += 1
            if bth.ackreq:
                self._send_ack(psn_add(self.epsn, -1), Aeth.ack(self.msn))
            return
        if d > 0:
            if not self.nak_seq_sent:
                self.nak_seq_sent = True
                self._send_ack(self.epsn, Aeth.nak(self.msn, NakCode.PSN_SEQUENCE_ERROR))
            return
        self.nak_seq_sent = False
        op = bth.opcode
        if op in _SEND_FIRSTS or op in _SEND_CONTS:
            ok = self._on_send(packet, op)
        elif op in _WRITE_FIRSTS or op in _WRITE_CONTS:
            ok = self._on_write(packet, op)
        else:
            self._responder_error(WcStatus.REM_INV_REQ_ERR, NakCode.INVALID_REQUEST, EventType.QP_REQ_ERR)
            return
        if ok is None:  # RNR NAK sent, the packet will come again
            return
        if not ok:
            return
        self.epsn = psn_add(self.epsn, 1)
        if bth.ackreq:
            self._send_ack(bth.psn, Aeth.ack(self.msn))

    def _on_send(self, packet: roce.RocePacket, op: int) -> bool | None:
        if op in _SEND_FIRSTS:
            if self.cur_recv is not None:
                return self._responder_error(None, NakCode.INVALID_REQUEST, EventType.QP_REQ_ERR)
            if not self.rq:
                return self._rnr_nak(packet.bth.psn)
            self.cur_recv = (self.rq.popleft(), 0, None)
        elif self.cur_recv is None:
            return self._responder_error(None, NakCode.INVALID_REQUEST, EventType.QP_REQ_ERR)
        wr, placed, _ = self.cur_recv
        if not self._scatter(wr, placed, packet.payload):
            self.cur_recv = None
            self._cqe(self.recv_cq, wr.wr_id, WcStatus.LOC_LEN_ERR, WcOpcode.RECV)
            return self._responder_error(None, NakCode.INVALID_REQUEST, EventType.QP_REQ_ERR)
        placed += len(packet.payload)
        if op in _SEND_ENDS:
            self.cur_recv = None
            self.msn = (self.msn + 1) & PSN_MASK
            self._cqe(self.recv_cq, wr.wr_id, WcStatus.SUCCESS, WcOpcode.RECV, placed, packet.imm)
        else:
            self.cur_recv = (wr, placed, None)
        return True

    def _scatter(self, wr: RecvWR, placed: int, data: bytes) -> bool:
        """Place ``data`` after ``placed`` bytes into the receive WR's SGEs."""
        capacity = sum(s.length for s in wr.sges)
        if placed + len(data) > capacity:
            return False
        pos, src = 0, 0
        for s in wr.sges:
            if src >= len(data):
                break
            if pos + s.length <= placed:
                pos += s.length
                continue
            start = max(0, placed - pos)
            n = min(s.length - start, len(data) - src)
            mr = s.mr
            if not getattr(mr, "valid", False) or s.offset + start + n > mr.length:
                return False
            mr.buf[s.offset + start : s.offset + start + n] = data[src : src + n]
            src += n
            pos += s.length
        return True

    def _on_write(self, packet: roce.RocePacket, op: int) -> bool | None:
        needs_recv = op in _WITH_IMM
        if needs_recv and not self.rq:
            return self._rnr_nak(packet.bth.psn)
        if op in _WRITE_FIRSTS:
            if self.cur_write is not None:
                return self._responder_error(None, NakCode.INVALID_REQUEST, EventType.QP_REQ_ERR)
            reth = packet.reth
            mr = self.host.find_mr(reth.rkey)
            if (
                mr is None
                or not mr.valid
                or mr.pd is not self.pd
                or not mr.access & Access.REMOTE_WRITE
                or not self.access & Access.REMOTE_WRITE
                or not mr.contains(reth.vaddr, reth.dma_len)
                or len(packet.payload) > reth.dma_len
            ):
                return self._responder_error(None, NakCode.REMOTE_ACCESS_ERROR, EventType.QP_ACCESS_ERR)
            offset, left, total = reth.vaddr - mr.addr, reth.dma_len, reth.dma_len
        else:
            if self.cur_write is None:
                return self._responder_error(None, NakCode.INVALID_REQUEST, EventType.QP_REQ_ERR)
            mr, offset, left, total = self.cur_write
            if not mr.valid or len(packet.payload) > left:
                return self._responder_error(None, NakCode.REMOTE_ACCESS_ERROR, EventType.QP_ACCESS_ERR)
        n = len(packet.payload)
        mr.buf[offset : offset + n] = packet.payload
        offset, left = offset + n, left - n
        if op in _WRITE_ENDS:
            self.cur_write = None
            self.msn = (self.msn + 1) & PSN_MASK
            if needs_recv:
                wr = self.rq.popleft()
                self._cqe(self.recv_cq, wr.wr_id, WcStatus.SUCCESS, WcOpcode.RECV_RDMA_WITH_IMM, total, packet.imm)
        else:
            self.cur_write = (mr, offset, left, total)
        return True

    def _rnr_nak(self, psn: int) -> None:
        self._send_ack(psn, Aeth.rnr_nak(self.msn, self.path.min_rnr_timer))
        self.nak_seq_sent = True  # the packets behind it are dropped quietly until it comes again
        return None

    def _responder_error(self, status: WcStatus | None, nak: NakCode, event: EventType) -> bool:
        """The requester broke a rule: NAK it, and this QP goes to ERR as rxe and hardware do."""
        self._enter_error(self.host.now())  # before the NAK leaves, so the requester never sees us still in RTS
        self.host.post_event(AsyncEvent(event, qp_num=self.qp_num))
        self._send_ack(self.epsn, Aeth.nak(self.msn, nak))
        return False

    def _send_ack(self, psn: int, aeth: Aeth) -> None:
        bth = roce.Bth(Opcode.ACKNOWLEDGE, self.path.remote_qpn, psn)
        self.host.transmit(self, roce.RocePacket(bth, aeth=aeth))

    # ------------------------------------------------------------------ errors and completions

    def _enter_error(self, now: float) -> None:
        if self._state == QPState.ERR:
            return
        self._state = QPState.ERR
        self._cancel_rto()
        self.host.cancel_timer(self, "rnr")
        self.rnr_waiting = False
        while self.sq:
            e = self.sq.popleft()
            self._cqe(self.send_cq, e.wr.wr_id, WcStatus.WR_FLUSH_ERR, _wc_op(e.wr.opcode))
        if self.cur_recv is not None:
            self._cqe(self.recv_cq, self.cur_recv[0].wr_id, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV)
            self.cur_recv = None
        self.cur_write = None
        while self.rq:
            self._cqe(self.recv_cq, self.rq.popleft().wr_id, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV)

    def _cqe(self, cq, wr_id: int, status: WcStatus, opcode: WcOpcode, byte_len: int = 0, imm: int | None = None) -> None:
        vendor_err = 0 if status == WcStatus.SUCCESS else 0x100 + int(status)
        cq.push(WorkCompletion(wr_id, status, opcode, self.qp_num, byte_len, imm, vendor_err=vendor_err))


def _wc_op(op: WrOpcode) -> WcOpcode:
    return WcOpcode.SEND if op in (WrOpcode.SEND, WrOpcode.SEND_WITH_IMM) else WcOpcode.RDMA_WRITE
