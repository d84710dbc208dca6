"""The RC analysis of captures (dissectors/roce_analysis.py): retransmissions, go-backs and
their causes, ACK/NAK pairing, PSN wrap; and the events smc-trace derives from frames count
a message sent again once."""

from __future__ import annotations

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from dissectors.roce_analysis import RoceAnalysis
from stack.wire import cdc, roce
from stack.wire.roce import Aeth, NakCode, Opcode

A, B = "10.1.0.1", "10.1.0.2"
QA, QB = 0x111, 0x222  # A's QP (B sends to it) and B's QP (A sends to it)


class Wire:
    """Feeds an analysis frame by frame, numbering frames from 1."""

    def __init__(self) -> None:
        self.ra = RoceAnalysis()
        self.n = 0
        self.marks = {}

    def req(self, psn: int, dropped: bool = False, src: str = A, dst: str = B, qpn: int = QB):
        self.n += 1
        self.marks[self.n] = m = self.ra.feed(self.n, self.n / 1000, src, dst, Opcode.SEND_ONLY, qpn, psn & 0xFFFFFF, None, dropped)
        return m

    def ack(self, psn: int, syndrome: int = 0x1F, dropped: bool = False):
        self.n += 1
        self.marks[self.n] = m = self.ra.feed(self.n, self.n / 1000, B, A, Opcode.ACKNOWLEDGE, QA, psn & 0xFFFFFF, syndrome, dropped)
        return m

    def flow(self):
        (f,) = [f for f in self.ra.senders() if (f.src, f.dst, f.qpn) == (A, B, QB)]
        return f


NAK_SEQ = (3 << 5) | NakCode.PSN_SEQUENCE_ERROR


def test_in_order_frames_are_no_retransmissions():
    w = Wire()
    for p in range(1, 6):
        assert not w.req(p).retransmission
    w.ack(5)
    f = w.flow()
    assert (f.frames, f.packets, f.retransmissions, f.acks, f.not_captured) == (5, 5, 0, 1, 0)
    assert w.marks[6].answers == 5 and w.marks[6].ack == "ACK"


def test_go_back_after_a_nak_with_the_lost_frame_recorded():
    w = Wire()
    for p in (1, 2):
        w.req(p)
    w.req(3, dropped=True)  # a recording keeps the frame its sender's fault injection dropped
    w.req(4), w.req(5)
    nak = w.ack(3, NAK_SEQ)
    assert nak.ack == "NAK" and nak.nak_code == 0 and nak.answers == 3 and nak.requester == (A, B, QB)
    r3, r4, r5 = w.req(3), w.req(4), w.req(5)
    assert r3.retransmission and r3.original == 3 and r3.go_back and r3.cause == "NAK" and r3.cause_frame == 6
    assert r4.original == 4 and not r4.go_back and r5.original == 5
    f = w.flow()
    assert (f.frames, f.packets, f.retransmissions, f.duplicates, f.naks, dict(f.go_backs)) == (8, 5, 3, 3, 1, {"NAK": 1})
    assert f.not_captured == 0


def test_a_capture_of_the_wire_never_saw_the_first_copy():
    """The lost frame never reached the capture: its retransmission is the first copy (the
    message, counted once), the frames after it are duplicates."""
    w = Wire()
    w.req(1), w.req(2), w.req(4), w.req(5)
    w.ack(3, NAK_SEQ)
    r3, r4, r5 = w.req(3), w.req(4), w.req(5)
    assert r3.retransmission and not r3.duplicate and r3.go_back and r3.cause == "NAK"
    assert r4.duplicate and r4.original == 3 and r5.original == 4
    f = w.flow()
    assert (f.packets, f.retransmissions, f.duplicates, f.not_captured) == (5, 3, 2, 1)


def test_retries_of_a_peer_that_vanished_are_one_go_back_each():
    w = Wire()
    w.req(7)
    marks = [w.req(7) for _ in range(3)]  # the local ACK timer expired three times
    assert all(m.retransmission and m.go_back and m.cause == "timeout" and m.original == 1 for m in marks)
    f = w.flow()
    assert (f.packets, f.retransmissions, dict(f.go_backs)) == (1, 3, {"timeout": 3})


def test_rnr_nak_and_psn_wrap():
    w = Wire()
    w.req(0xFFFFFE), w.req(0xFFFFFF), w.req(0)
    rnr = w.ack(0, (1 << 5) | 14)
    assert rnr.ack == "RNR NAK" and rnr.answers == 3
    again = w.req(0)
    assert again.go_back and again.cause == "RNR NAK" and again.original == 3
    assert not w.req(1).retransmission  # past the wrap: new
    f = w.flow()
    assert (f.packets, f.retransmissions, f.rnr_naks, dict(f.go_backs)) == (4, 1, 1, {"RNR NAK": 1})


def test_lost_and_stale_answers_change_nothing():
    w = Wire()
    for p in range(1, 5):
        w.req(p)
    assert w.ack(2, NAK_SEQ, dropped=True).ack == "NAK"  # lost on the way: the requester never saw it
    w.ack(4)
    stale = w.ack(2, NAK_SEQ)  # older than the ACK of 4
    assert stale.stale
    again = w.req(3)  # so this is a timeout, not the NAK's go-back
    assert again.go_back and again.cause == "timeout"
    f = w.flow()
    assert (f.naks, f.acks) == (0, 1)


def test_a_go_back_whose_first_copy_is_lost_again_is_one_run():
    w = Wire()
    for p in range(1, 6):
        w.req(p)
    w.ack(2, NAK_SEQ)
    w.req(2), w.req(3, dropped=True), w.req(4), w.req(5)
    f = w.flow()
    assert dict(f.go_backs) == {"NAK": 1} and f.retransmissions == 4 and f.go_back_list[0][5] == 3
    assert w.ra.timeline() == [f"frame       7  {A} -> {B} QP 0x000222: PSN 2 sent again, 3 frames, after NAK (frame 6)"]


RTO_NS = 150_000_000  # frames this far apart: a PSN again is sent again (after the local ACK timeout), not captured again


def write_capture(path, psns: list[int]) -> None:
    """CDC messages A -> B as SENDs with these PSNs (a repeated PSN repeats its message),
    RTO_NS apart."""
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        i = w.add_interface(LINKTYPE_ETHERNET, "lo")
        for n, psn in enumerate(psns):
            msg = cdc.CdcMessage(seqno=psn, token=0xAB, prod=cdc.Cursor(0, 100 * psn))
            w.write_packet(
                i,
                1_700_000_000_000_000_000 + n * RTO_NS,
                roce.encode_frame(roce.RocePacket(roce.Bth(Opcode.SEND_ONLY, QB, psn), payload=msg.encode()), A, B, 49152),
            )
        nak = roce.RocePacket(roce.Bth(Opcode.ACKNOWLEDGE, QA, 3), aeth=Aeth.nak(1, NakCode.PSN_SEQUENCE_ERROR))
        w.write_packet(i, 1_700_000_000_000_000_000 + len(psns) * RTO_NS, roce.encode_frame(nak, B, A, 49152))


def test_derived_events_count_a_message_sent_again_once(tmp_path):
    path = tmp_path / "wire.pcapng"
    write_capture(path, [1, 2, 3, 4, 3, 4, 5, 5])
    ra = RoceAnalysis()
    cdcs = [e for e in read_events(path, None, ra) if e.kind == "cdc.msg"]
    assert [e.get("seqno") for e in cdcs] == [1, 2, 3, 4, 5]
    t = ra.totals()
    assert (t["frames"], t["packets"], t["retransmissions"], t["go_backs"]["timeout"]) == (8, 5, 3, 2)
    assert "retransmissions: 3 frames" in ra.render()[0]


def test_a_responders_repeated_ack_at_one_point_is_its_own_and_at_another_a_capture_copy() -> None:
    """A responder answers every duplicate request with the same ACK (the same bytes), often
    within a millisecond of the first (a recording of the lossy soft stack had two 0.2 ms
    apart on one interface); only the same ACK captured at another point is a copy."""
    ack = bytes(range(40))  # an IP packet: only its bytes and where it was captured matter here
    ra = RoceAnalysis(keep_marks=True)
    ra.feed(1, 0.0, "10.0.0.2", "10.0.0.1", Opcode.ACKNOWLEDGE, 0x11, 5, 0, packet=ack, point=(0, b"eth"))
    again = ra.feed(2, 0.0002, "10.0.0.2", "10.0.0.1", Opcode.ACKNOWLEDGE, 0x11, 5, 0, packet=ack, point=(0, b"eth"))
    elsewhere = ra.feed(3, 0.0003, "10.0.0.2", "10.0.0.1", Opcode.ACKNOWLEDGE, 0x11, 5, 0, packet=ack, point=(1, b"vlan"))
    assert not again.capture_copy and again.ack == "ACK"  # an ACK of its own, as the plugin shows it
    assert elsewhere.capture_copy and ra.capture_copies == 1
