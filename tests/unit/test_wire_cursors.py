"""What a failover's sender writes again, read from a capture (dissectors/wire_cursors.py):
from the producer cursor of its last completed CDC, which its validation CDC names as the
kernel does (tx_cdc_seq_fin: one less than that CDC's number), or from where the peer read,
if further, up to the furthest cursor it announced."""

from __future__ import annotations

from dissectors.wire_cursors import WireCursors
from stack.wire.cdc import CdcMessage, Cursor

SIZE = 65536


def _watch() -> WireCursors:
    w = WireCursors()
    w.rmb_size(1, "a", SIZE)
    w.rmb_size(1, "b", SIZE)
    return w


def _cdc(seqno: int, prod=Cursor(), cons=Cursor(), validation: bool = False) -> CdcMessage:
    return CdcMessage(seqno=seqno, token=7, prod=prod, cons=cons, failover_validation=validation)


def test_back_to_the_last_completed_cdc_across_a_wrap() -> None:
    w = _watch()
    for seq, prod in ((1, Cursor(0, 60000)), (2, Cursor(1, 4000)), (3, Cursor(1, 30000))):
        assert w.cdc("a", 1, _cdc(seq, prod)) is None
    # CDC 1 was the last to complete: the kernel's tx_cdc_seq_fin is then 0
    assert w.cdc("a", 1, _cdc(0, validation=True)) == (SIZE - 60000 + 30000, Cursor(0, 60000))
    assert w.cdc("a", 1, _cdc(1, validation=True)) == (30000 - 4000, Cursor(1, 4000))  # CDC 2 completed
    assert w.cdc("a", 1, _cdc(2, validation=True)) is None  # its last CDC completed: nothing goes again


def test_what_the_peer_read_is_not_sent_again() -> None:
    w = _watch()
    w.cdc("a", 1, _cdc(1, Cursor(0, 10000)))
    w.cdc("a", 1, _cdc(2, Cursor(0, 50000)))
    w.cdc("b", 1, _cdc(9, cons=Cursor(0, 40000)))  # b read up to 40,000 of what a wrote
    assert w.cdc("a", 1, _cdc(0, validation=True)) == (10000, Cursor(0, 40000))


def test_unknown_cdc_or_rmb_size_tells_nothing() -> None:
    w = _watch()
    w.cdc("a", 1, _cdc(5, Cursor(0, 100)))
    w.cdc("a", 1, _cdc(6, Cursor(0, 300)))
    assert w.cdc("a", 1, _cdc(3, validation=True)) is None  # the capture missed CDC 4, the one completed
    assert w.cdc("a", 1, _cdc(6, validation=True)) is None  # no CDC 7: the number of a validation that completed
    bare = WireCursors()  # no CLC seen: the peer's RMB size unknown
    bare.cdc("a", 1, _cdc(1, Cursor(0, 100)))
    bare.cdc("a", 1, _cdc(2, Cursor(0, 900)))
    assert bare.cdc("a", 1, _cdc(0, validation=True)) is None


def test_only_the_latest_cdcs_are_kept() -> None:
    w = _watch()
    for seq in range(1, 3000):
        w.cdc("a", 1, _cdc(seq & 0xFFFF, Cursor(seq // 60, seq % 60 * 1000)))
    assert len(w.senders[("a", 1)].by_seqno) == 256
    assert w.cdc("a", 1, _cdc(0, validation=True)) is None
    assert w.cdc("a", 1, _cdc(2997, validation=True)) == (1000, Cursor(49, 58000))


def test_a_receiver_learns_the_senders_cursors_and_its_room_in_the_senders_rmb() -> None:
    w = _watch()
    w.cdc("b", 1, _cdc(1, prod=Cursor(0, 30000)))  # b wrote 30,000 into a's RMB
    assert w.received("b", 1, _cdc(1, prod=Cursor(0, 30000))) == {
        "receiver": "a", "side": "rx", "prod": Cursor(0, 30000), "cons": Cursor(), "peer_rmbe_space": SIZE}  # fmt: skip
    msg = _cdc(2, prod=Cursor(0, 5000), cons=Cursor(0, 10000))  # a wrote 5,000 and read 10,000
    w.cdc("a", 1, msg)
    assert w.received("a", 1, msg)["peer_rmbe_space"] == SIZE - 30000 + 10000  # b's room in a's RMB: 20,000 unread
    assert w.received("a", 1, msg) is None  # the same cursors again: nothing moved
    assert w.received("a", 1, _cdc(3, validation=True)) is None
    assert WireCursors().received("a", 1, msg) is None  # no CLC: whose RMB, how large, unknown


def test_the_number_named_wraps_as_the_kernels_u16_does() -> None:
    w = _watch()
    for seq, prod in ((0xFFFF, Cursor(0, 1000)), (0, Cursor(0, 5000)), (1, Cursor(0, 9000))):
        w.cdc("a", 1, _cdc(seq, prod))
    assert w.cdc("a", 1, _cdc(0xFFFF, validation=True)) == (4000, Cursor(0, 5000))  # CDC 0 completed
