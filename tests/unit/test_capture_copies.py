"""A frame captured twice is one frame (dissectors/roce_analysis.py, capture copies):
``tcpdump -i any`` (Linux cooked SLL / SLL2) on a host with a VLAN sub-interface or a bridge,
or a pcapng of two interfaces, holds each frame once per interface, with and without its
VLAN tag, microseconds apart. Each second copy was counted as a retransmission (a go-back
"after timeout"); a real retransmission (after a NAK, after the local ACK timeout) still is."""

from __future__ import annotations

from support.capture_copies import MS, T0, US, VLAN, any_capture, nak, one_interface, send, sll2, two_interfaces, write

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_LINUX_SLL
from dissectors.roce_analysis import RoceAnalysis


def analysed(data: bytes):
    ra = RoceAnalysis(keep_marks=True)
    events = list(read_events(data, None, ra))
    return ra, events


def test_tcpdump_any_with_a_vlan_sees_each_frame_twice_and_counts_it_once():
    """(The tagged copy was not read at all: a cooked header's VLAN tag was not skipped.)"""
    frames = [(T0 + i * 100 * US, send(i)) for i in range(1, 4)] + [(T0 + 400 * US + i * 100 * US, write(i)) for i in range(4, 7)]
    # and one frame the capture has only on eth0, tagged (its copy on eth0.100 came after the capture stopped)
    ra, events = analysed(any_capture(frames, extra=[(T0 + 2 * MS, sll2(send(7), 2, VLAN))]))
    t = ra.totals()
    assert [e.get("seqno") for e in events if e.kind == "cdc.msg"] == [1, 2, 3, 7]
    assert (t["frames"], t["packets"], t["retransmissions"], t["go_backs"]["timeout"]) == (7, 7, 0, 0), t
    assert t["capture_copies"] == 6
    assert sum(e.get("length") for e in events if e.kind == "rdma.write") == 3 * 512  # each byte once
    assert "trace.note" not in {e.kind for e in events}
    lines = ra.render()
    assert "retransmissions: 0 frames" in lines[0]
    assert any(line.startswith("Capture copies: 6 RoCE frames captured twice") and "set aside" in line for line in lines), lines
    assert ra.to_dict()["capture_copies"] == 6


def test_a_cooked_v1_capture_and_a_pcapng_of_two_interfaces_count_each_frame_once():
    frames = [(T0 + i * 100 * US, send(i)) for i in range(1, 4)]
    ra, events = analysed(any_capture(frames, LINKTYPE_LINUX_SLL))
    assert (ra.totals()["frames"], ra.totals()["retransmissions"]) == (3, 0)
    assert ra.totals()["capture_copies"] == 3
    assert [e.get("seqno") for e in events if e.kind == "cdc.msg"] == [1, 2, 3]
    ra, events = analysed(two_interfaces(frames))  # dumpcap -i eth0 -i eth0.100: two interfaces, the copy on the second 2 ms later
    assert (ra.totals()["frames"], ra.totals()["retransmissions"]) == (3, 0)
    assert ra.totals()["capture_copies"] == 3


def test_real_retransmissions_are_still_counted_and_their_copies_are_set_aside():
    """After a NAK (50 us later: soon, but the NAK came between) and after the local ACK
    timeout (150 ms of silence), the same PSN is sent again: retransmissions, each seen
    twice by tcpdump -i any and counted once."""
    frames = [(T0, send(1)), (T0 + 10 * US, send(2)), (T0 + 20 * US, send(4)), (T0 + 30 * US, nak(3)),
              (T0 + 80 * US, send(3)), (T0 + 90 * US, send(4)),  # go-back after the NAK
              (T0 + 150 * MS, send(4))]  # fmt: skip  # and again after a timeout
    ra, events = analysed(any_capture(frames))
    t = ra.totals()
    assert (t["frames"], t["packets"], t["retransmissions"], t["naks"]) == (6, 4, 3, 1), t
    assert t["go_backs"] == {"NAK": 1, "RNR NAK": 0, "timeout": 1}
    assert t["capture_copies"] == 7  # every frame, the NAK too
    assert [e.get("seqno") for e in events if e.kind == "cdc.msg"] == [1, 2, 4, 3]


def test_the_same_frame_again_on_one_interface_is_a_copy_only_within_a_millisecond():
    ra, events = analysed(one_interface([(T0, send(1)), (T0 + 20 * US, send(1)), (T0 + 5 * MS, send(1))]))
    t = ra.totals()
    assert (t["frames"], t["retransmissions"], t["go_backs"]["timeout"]) == (2, 1, 1), t
    assert t["capture_copies"] == 1
    assert ra.marks[2].capture_copy and ra.marks[2].original == 1 and not ra.marks[2].retransmission
    assert ra.marks[3].retransmission and not ra.marks[3].capture_copy
