"""RoCEv2 RC analysis of a capture, as Wireshark's TCP analysis does for TCP: which request
frames are retransmissions (a PSN sent again after a loss, a NAK, an RNR NAK or a timeout),
which ACK / NAK / RNR NAK answers which request, and counts of each per sender QP.

A *flow* is one requester's packets: (source IP, destination IP, destination QPN). Within a
flow the requester sends PSNs in order; a request frame whose PSN is behind the highest PSN
seen so far is a **retransmission** (the RC requester went back: go-back-N after a PSN
sequence NAK, a retry after an RNR NAK or after the local ACK timer expired, as when the
peer vanished). Its **original** is the first captured copy of that PSN; when the capture
never saw the first copy (a capture of the wire does not see a frame lost before it) the
retransmission is the first copy, and it is that copy which counts as the message.

So a message is counted once, at its first captured copy (:attr:`Mark.duplicate` is False);
every later copy is a duplicate and is counted apart, never as a message.

A **go-back** is a run of retransmissions: it starts at a retransmitted frame whose PSN is not
ahead of the previous frame of its flow (the requester went back; within a run PSNs only go
forward, skipping the copies that were lost again). Its cause is the NAK or RNR NAK the
requester received last (from the responder's flow, paired by addresses and PSN range), or
"timeout" when none came. ACKs name the request frame (its last copy) they acknowledge.

A **capture copy** is one frame captured twice: ``tcpdump -i any`` on a host with a VLAN
sub-interface or a bridge sees it once per interface (with and without the VLAN tag), a
pcapng of two interfaces too. Its IP packet (IP, UDP, BTH, payload) is the same, its link
layer may differ, and it comes microseconds after the first: within
:data:`COPY_ACROSS_S` on another capture point, within :data:`COPY_SAME_S` on the same one,
and with no NAK or RNR NAK for its flow in between. A real retransmission of the same PSN
repeats those bytes too, but only after a NAK, an RNR NAK or the local ACK timeout (4.096 us
x 2^15, about 134 ms, for SMC-R's QPs; 2^14 at least): far later. A capture copy is set
aside before the analysis (:attr:`Mark.capture_copy`): no retransmission, no message, no
answer, counted apart (``capture_copies``).

PSNs are 24-bit serial numbers (IBA 9.7.1); opcodes of the RC transport are below 0x20.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Hashable

PSN_MASK = 0xFFFFFF
ACK_OPCODES = (0x11, 0x12)  # RC Acknowledge, RC Atomic Acknowledge
KEEP_PSNS = 65536  # PSNs remembered per flow (a requester keeps far fewer in flight)
CAUSES = ("NAK", "RNR NAK", "timeout")
COPY_SAME_S = 0.001  # seconds: the same IP packet again at the same capture point, no NAK between: a capture copy
COPY_ACROSS_S = 0.010  # seconds: the same IP packet at another capture point (interface, VLAN tag)


def psn_diff(a: int, b: int) -> int:
    """a - b in 24-bit serial arithmetic (negative when a is before b)."""
    d = (a - b) & PSN_MASK
    return d - (1 << 24) if d & 0x800000 else d


FlowKey = tuple  # (src ip, dst ip, destination QPN)


def _ack_kind(syndrome: int) -> str:
    """ "ACK", "RNR NAK" or "NAK", by an AETH syndrome's top bits."""
    kind = syndrome >> 5
    return {0: "ACK", 1: "RNR NAK", 3: "NAK"}.get(kind, f"reserved {kind}")


@dataclass
class Mark:
    """What the analysis says about one frame."""

    frame: int
    flow: FlowKey
    psn: int
    ack: str | None = None  # None for a request; "ACK", "NAK" or "RNR NAK" for an acknowledgement
    dropped: bool = False  # a recording's copy of a frame fault injection dropped
    receiver_copy: bool = False  # dropped at the receiver: the sender's copy is the transmission
    retransmission: bool = False  # a copy of a PSN sent before: captured before, or behind the highest its flow had sent
    original: int | None = None  # the first captured copy's frame (None: this is the first copy)
    go_back: bool = False  # the first frame of a run of retransmissions
    cause: str | None = None  # of a go-back: "NAK", "RNR NAK" or "timeout"
    cause_frame: int | None = None  # the NAK or RNR NAK frame
    answers: int | None = None  # an ACK/NAK: the request frame (last copy) of the PSN it names
    requester: FlowKey | None = None  # an ACK/NAK: the requester flow it answers
    nak_code: int | None = None  # the AETH value of a NAK (0: PSN sequence error)
    stale: bool = False  # an answer for PSNs acknowledged already: the requester ignores it
    capture_copy: bool = False  # the same frame captured again (another interface, or microseconds later): set aside

    @property
    def duplicate(self) -> bool:
        """A copy of a PSN captured before: never a new message."""
        return self.original is not None

    @property
    def copy(self) -> bool:
        """Not the copy its message is counted at: a duplicate, a receiver's copy (which a
        recording may even write before the sender's), or a capture copy."""
        return self.duplicate or self.receiver_copy or self.capture_copy


@dataclass
class FlowStats:
    src: str
    dst: str
    qpn: int
    frames: int = 0  # request frames captured
    packets: int = 0  # distinct PSNs captured (each counted at its first copy)
    retransmissions: int = 0  # copies of PSNs sent before (captured before, or behind the highest PSN)
    duplicates: int = 0  # retransmissions whose first copy was captured too
    go_backs: Counter = field(default_factory=Counter)  # cause -> runs
    acks: int = 0  # answers received from the responder
    naks: int = 0  # PSN sequence error NAKs
    other_naks: int = 0  # remote access, invalid request, operational errors
    rnr_naks: int = 0
    not_captured: int = 0  # PSNs skipped: frames the capture never saw
    capture_copies: int = 0  # request frames captured twice (set aside, counted nowhere else)
    first_t: float | None = None
    go_back_list: list = field(default_factory=list)  # (t, first frame, psn, cause, cause frame, frames resent)

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "qpn": self.qpn, "frames": self.frames, "packets": self.packets,
                "retransmissions": self.retransmissions, "duplicates": self.duplicates,
                "go_backs": {c: self.go_backs.get(c, 0) for c in CAUSES}, "acks": self.acks, "naks": self.naks,
                "other_naks": self.other_naks, "rnr_naks": self.rnr_naks, "not_captured": self.not_captured,
                "capture_copies": self.capture_copies}  # fmt: skip


class _Flow:
    __slots__ = ("stats", "next", "last_psn", "copies", "pending", "run", "una", "answers")

    def __init__(self, stats: FlowStats) -> None:
        self.stats = stats
        self.next: int | None = None  # the PSN after the highest seen
        self.last_psn: int | None = None
        # psn -> [first frame, last frame], oldest first: an OrderedDict forgets its oldest in
        # constant time (a dict's first key, after many deletions at its front, is a scan)
        self.copies: OrderedDict[int, list[int]] = OrderedDict()
        self.pending: tuple[str, int] | None = None  # the last NAK / RNR NAK received: (cause, frame)
        self.run: list | None = None  # the go-back being counted
        self.una: int | None = None  # the oldest PSN not acknowledged, as the answers captured say
        self.answers = 0  # NAKs and RNR NAKs received: a frame again after one is sent again, not captured again


@dataclass
class _Seen:
    """A frame's IP packet as last captured: when, where, and how many NAKs its flow had had."""

    t: float
    point: Hashable
    frame: int
    answers: int


class RoceAnalysis:
    """Feed every RoCEv2 frame in capture order (:meth:`feed`); read :attr:`flows` and the
    per-frame :class:`Mark` it returns."""

    def __init__(self, keep_marks: bool = False) -> None:
        self.marks: dict[int, Mark] | None = {} if keep_marks else None  # frame -> Mark, when asked for
        self.flows: dict[FlowKey, _Flow] = {}
        self.pairs: dict[FlowKey, FlowKey] = {}  # responder (ACK) flow -> requester flow
        self.seen: dict[bytes, _Seen] = {}  # digest of a recent frame's IP packet -> where it was captured last
        self.seen_order: deque[tuple[float, bytes]] = deque()  # (time, digest), oldest first: forgotten after COPY_ACROSS_S
        self.capture_copies = 0  # frames captured twice (requests and answers), set aside

    # ------------------------------------------------------------------ input

    def feed(self, frame: int, t: float, src: str, dst: str, opcode: int, dest_qp: int, psn: int, syndrome: int | None = None,
             dropped: bool = False, receiver_copy: bool = False, packet: bytes | None = None,
             point: Hashable = None) -> Mark | None:  # fmt: skip
        """One frame: BTH opcode, destination QP and PSN, the AETH syndrome of an ACK, and
        whether the frame never made it (a recording keeps frames its fault injection dropped:
        the sender's copy, or ``receiver_copy``, a receiver's of a frame sent and recorded).
        ``packet``: its IP packet (IP header to the end, as captured) and ``point``, where it
        was captured (see capture copies above); without them no frame is a capture copy."""
        if opcode >= 0x20:  # UC, RD, UD, CNP: no RC reliability
            return None
        key = (src, dst, dest_qp)
        if packet is not None and not dropped and not receiver_copy:
            first = self._capture_copy(frame, t, key, opcode, packet, point)
            if first is not None:
                ack = _ack_kind(syndrome or 0) if opcode in ACK_OPCODES else None
                mark = Mark(frame, key, psn, ack=ack, capture_copy=True, original=first)
                if self.marks is not None:
                    self.marks[frame] = mark
                return mark
        if receiver_copy:  # not another transmission: named after the sender's copy, counted nowhere
            flow = self.flows.get(key)
            copies = flow.copies.get(psn) if flow is not None and opcode not in ACK_OPCODES else None
            mark = Mark(frame, key, psn, dropped=True, receiver_copy=True, original=copies[0] if copies else None)
        elif opcode in ACK_OPCODES:
            mark = self._ack(frame, key, psn, syndrome or 0, dropped)
        else:
            mark = self._request(frame, t, key, psn, dropped)
        if self.marks is not None:
            self.marks[frame] = mark
        return mark

    def _capture_copy(self, frame: int, t: float, key: FlowKey, opcode: int, packet: bytes, point: Hashable) -> int | None:
        """The frame a capture copy repeats (its first capture), or None when this frame was
        sent (the first capture of it, or a retransmission: after a NAK, or too late)."""
        while self.seen_order and t - self.seen_order[0][0] > COPY_ACROSS_S:
            old_t, old = self.seen_order.popleft()
            if old in self.seen and self.seen[old].t == old_t:
                del self.seen[old]
        digest = hashlib.blake2b(packet, digest_size=16).digest()
        flow = self.flows.get(key) if opcode not in ACK_OPCODES else None
        answers = flow.answers if flow is not None else 0
        last = self.seen.get(digest)
        # at the same point an ACK or NAK again is the responder's own (it answers every
        # duplicate request with the same ACK): only one captured at another point is a copy
        if (
            last is not None
            and last.answers == answers
            and (t - last.t <= COPY_ACROSS_S if last.point != point else opcode not in ACK_OPCODES and t - last.t <= COPY_SAME_S)
        ):
            self.capture_copies += 1
            if flow is not None:
                flow.stats.capture_copies += 1
            return last.frame
        self.seen[digest] = _Seen(t, point, frame, answers)
        self.seen_order.append((t, digest))
        return None

    def _flow(self, key: FlowKey) -> _Flow:
        flow = self.flows.get(key)
        if flow is None:
            flow = self.flows[key] = _Flow(FlowStats(*key))
        return flow

    def _request(self, frame: int, t: float, key: FlowKey, psn: int, dropped: bool) -> Mark:
        flow = self._flow(key)
        st = flow.stats
        st.frames += 1
        st.first_t = t if st.first_t is None else st.first_t
        mark = Mark(frame, key, psn, dropped=dropped)
        copies = flow.copies.get(psn)
        if copies is None:
            st.packets += 1
            flow.copies[psn] = [frame, frame]
            if len(flow.copies) > KEEP_PSNS:
                flow.copies.popitem(last=False)
        else:
            mark.original = copies[0]
            copies[1] = frame
            st.duplicates += 1
        if dropped:  # never on the wire, and where a recorder puts it is not where it was sent: no order from it
            if copies is not None:
                mark.retransmission = True
                st.retransmissions += 1
            return mark
        behind = flow.next is not None and psn_diff(psn, flow.next) < 0
        if not behind:
            if flow.next is not None and psn != flow.next:
                gap = psn_diff(psn, flow.next)
                st.not_captured += gap if gap > 4096 else sum(1 for i in range(gap) if (flow.next + i) & PSN_MASK not in flow.copies)
            flow.next = (psn + 1) & PSN_MASK
        if behind or copies is not None:
            mark.retransmission = True
            st.retransmissions += 1
            if flow.run is None or flow.last_psn is None or psn_diff(psn, flow.last_psn) <= 0:  # went back
                cause, cause_frame = flow.pending or ("timeout", None)
                flow.pending = None
                mark.go_back, mark.cause, mark.cause_frame = True, cause, cause_frame
                st.go_backs[cause] += 1
                flow.run = [t, frame, psn, cause, cause_frame, 0]
                st.go_back_list.append(flow.run)
            flow.run[5] += 1
        else:
            flow.run = None
        flow.last_psn = psn
        return mark

    def _requester(self, key: FlowKey, psn: int) -> _Flow | None:
        """The requester flow an ACK/NAK flow answers: same two addresses the other way, the
        PSN within what it sent (remembered once found)."""
        paired = self.pairs.get(key)
        if paired is not None:
            return self.flows[paired]
        src, dst, _ = key
        taken = set(self.pairs.values())
        best = None
        for fk, flow in self.flows.items():
            if fk[0] != dst or fk[1] != src or fk in taken or flow.next is None:
                continue
            if -KEEP_PSNS <= psn_diff(psn, flow.next) <= 0:  # a PSN it has sent, or the next it will send
                best = fk  # the latest match wins: a QP made later reuses the addresses
        if best is None:
            return None
        self.pairs[key] = best
        return self.flows[best]

    def _ack(self, frame: int, key: FlowKey, psn: int, syndrome: int, dropped: bool) -> Mark:
        kind = syndrome >> 5
        mark = Mark(frame, key, psn, ack=_ack_kind(syndrome), dropped=dropped)
        if kind == 3:
            mark.nak_code = syndrome & 0x1F
        flow = self._requester(key, psn)
        if flow is None or dropped:  # a lost answer told the requester nothing
            return mark
        mark.requester = (flow.stats.src, flow.stats.dst, flow.stats.qpn)
        st = flow.stats
        copies = flow.copies.get(psn)
        if flow.una is not None and psn_diff(psn, flow.una) < -1:
            mark.stale = True  # the requester ignores an answer older than what it has had acknowledged
            mark.answers = copies[1] if copies else None
            return mark
        acked = psn if kind == 0 else (psn - 1) & PSN_MASK  # a NAK acknowledges everything before its PSN
        if flow.una is None or psn_diff(acked, flow.una) >= 0:
            flow.una = (acked + 1) & PSN_MASK
        if kind == 0:
            st.acks += 1
            mark.answers = copies[1] if copies else None
        elif kind == 1:
            st.rnr_naks += 1
            flow.answers += 1
            flow.pending = ("RNR NAK", frame)
            mark.answers = copies[1] if copies else None
        elif kind == 3:
            flow.answers += 1
            if mark.nak_code == 0:
                st.naks += 1
                flow.pending = ("NAK", frame)
            else:
                st.other_naks += 1
            before = flow.copies.get((psn - 1) & PSN_MASK)  # a NAK acknowledges everything before its PSN
            mark.answers = copies[1] if copies else before[1] if before else None
        return mark

    # ------------------------------------------------------------------ output

    def senders(self) -> list[FlowStats]:
        """Every requester flow, in order of first appearance."""
        return [f.stats for f in self.flows.values() if f.stats.frames]

    def totals(self) -> dict:
        flows = self.senders()
        out = {k: sum(getattr(f, k) for f in flows)
               for k in ("frames", "packets", "retransmissions", "duplicates", "acks", "naks", "other_naks", "rnr_naks", "not_captured")}  # fmt: skip
        out["go_backs"] = {c: sum(f.go_backs.get(c, 0) for f in flows) for c in CAUSES}
        out["capture_copies"] = self.capture_copies
        return out

    def to_dict(self) -> dict:
        return {**self.totals(), "flows": [f.to_dict() for f in self.senders() if f.retransmissions or f.naks or f.rnr_naks or f.not_captured]}

    def render(self) -> list[str]:
        """Lines for ``smc-trace summary``."""
        t = self.totals()
        if not t["frames"]:
            return []
        copies = [self.copies_line()] if self.capture_copies else []
        backs = ", ".join(f"{n} after {c}" for c, n in t["go_backs"].items() if n) or "none"
        out = [f"RoCE requests: {t['frames']} frames, {t['packets']} packets once; retransmissions: {t['retransmissions']} frames "
               f"(go-backs: {backs}); NAKs {t['naks']}, RNR NAKs {t['rnr_naks']}"
               + (f", other NAKs {t['other_naks']}" if t["other_naks"] else "")
               + (f"; {t['not_captured']} PSNs not captured" if t["not_captured"] else "")]  # fmt: skip
        for f in self.senders():
            if f.retransmissions or f.naks or f.rnr_naks:
                out.append(f"  {f.src} -> {f.dst} QP 0x{f.qpn:06x}: {f.frames} frames, {f.retransmissions} retransmitted, "
                           f"{sum(f.go_backs.values())} go-backs, NAKs {f.naks}, RNR NAKs {f.rnr_naks}")  # fmt: skip
        return out + copies

    def copies_line(self) -> str:
        """What the capture held twice, for ``summary`` and ``decode``."""
        n = self.capture_copies
        return (f"Capture copies: {n} RoCE frame{'s' if n != 1 else ''} captured twice (the same IP packet on another interface, "
                f"or again within {COPY_SAME_S * 1000:g} ms with no NAK between: tcpdump -i any on a host with a VLAN or a bridge) "
                "were set aside, each frame counted once")  # fmt: skip

    def timeline(self) -> list[str]:
        """One line per go-back, in capture order, for ``smc-trace decode`` (frame numbers as Wireshark counts)."""
        runs = sorted(((r, f) for f in self.senders() for r in f.go_back_list), key=lambda x: x[0][1])
        lines = []
        for (_, frame, psn, cause, cause_frame, n), f in runs:
            why = f"after {cause}" + (f" (frame {cause_frame})" if cause_frame is not None else "")
            lines.append(f"frame {frame:>7}  {f.src} -> {f.dst} QP 0x{f.qpn:06x}: PSN {psn} sent again, "
                         f"{n} frame{'s' if n != 1 else ''}, {why}")  # fmt: skip
        return lines
