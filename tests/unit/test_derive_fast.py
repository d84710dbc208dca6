"""The frames in the middle of an RDMA WRITE (most frames of a bulk transfer) are read from
fixed offsets (dissectors/derive.py, ``_middle_of_a_write``) instead of through the full
decoding: a 315 MB tcpdump of a failover run took 63 s to summarize, 15 s now (with the RC
analysis no longer scanning its PSN table). Whatever that path takes must come out as the
full decoding gives it: the same events and the same RC analysis, for real kernel captures
and for every odd frame, which the full decoding names."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from support.derive_ways import both_ways

from dissectors import derive
from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, Packet
from stack.wire import inet

FIXTURES = Path(__file__).resolve().parents[1] / "lab" / "fixtures"


@pytest.mark.parametrize("name,middles", [("kernel_interop_smcr.pcap", 60), ("kernel_vlans_smcr.pcap", 8)])
def test_kernel_captures_give_the_same_events_and_analysis_either_way(name, middles, monkeypatch):
    fast, slow, taken = both_ways(lambda roce: read_events(str(FIXTURES / name), roce=roce), monkeypatch)
    assert fast == slow and fast[0] and fast[1]["frames"] > 0
    assert taken == middles  # the kernel's WRITE middle and last frames, plain IPv4 (VLAN-tagged or not)


def _ip_udp_bth(opcode: int, payload: bytes, *, pad: int = 0, pad_bytes: int | None = None, ihl: int = 5, udp_extra: int = 0,
                total_extra: int = 0) -> bytes:  # fmt: skip
    bth = struct.pack("!BBHII", opcode, pad << 4, 0xFFFF, 0x11, 0x80000000 | 1234)
    udp_body = bth + payload + b"\x00" * (pad if pad_bytes is None else pad_bytes) + b"ICRC"
    udp = struct.pack("!HHHH", 49152, 4791, 8 + len(udp_body) + udp_extra, 0) + udp_body
    opts = b"\x01" * ((ihl - 5) * 4)
    total = 4 * ihl + len(udp) + total_extra
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, 0x4000, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + opts
    hdr = hdr[:10] + struct.pack("!H", inet.internet_checksum(hdr)) + hdr[12:]
    return hdr + udp


ETH = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
VLAN = b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00\x00\x05\x08\x00"
SLL = b"\x00\x04\x00\x01\x00\x06" + b"\x04" * 6 + b"\x00\x00\x08\x00"
SLL2 = b"\x08\x00\x00\x00\x00\x00\x00\x02\x00\x01\x04\x06" + b"\x04" * 6 + b"\x00\x00"

ODD = {
    "plain": (ETH, _ip_udp_bth(0x07, b"x" * 64)),
    "last": (ETH, _ip_udp_bth(0x08, b"x" * 64, pad=3)),
    "pad past its payload": (ETH, _ip_udp_bth(0x08, b"x", pad=3, pad_bytes=0)),
    "no room for the ICRC": (ETH, _ip_udp_bth(0x07, b"")[:-4]),
    "UDP longer than the packet": (ETH, _ip_udp_bth(0x07, b"x" * 16, udp_extra=9)),
    "IP longer than captured": (ETH, _ip_udp_bth(0x07, b"x" * 16, total_extra=9)),
    "IP options": (ETH, _ip_udp_bth(0x07, b"x" * 16, ihl=6)),
    "VLAN tag": (VLAN, _ip_udp_bth(0x07, b"x" * 16)),
    "Linux cooked": (SLL, _ip_udp_bth(0x07, b"x" * 16)),
    "Linux cooked v2": (SLL2, _ip_udp_bth(0x08, b"x" * 16)),
    "Ethernet padding": (ETH, _ip_udp_bth(0x07, b"x" * 2) + b"\x00" * 10),
}
LINKTYPES = {ETH: LINKTYPE_ETHERNET, VLAN: LINKTYPE_ETHERNET, SLL: LINKTYPE_LINUX_SLL, SLL2: LINKTYPE_LINUX_SLL2}


@pytest.mark.parametrize("snap", [0, 60], ids=["whole", "cut_by_a_snap_length"])
@pytest.mark.parametrize("dropped", [None, "dropped (tx at 1.0)", "dropped (rx at 1.0)"])
@pytest.mark.parametrize("case", sorted(ODD))
def test_odd_frames_give_what_the_full_decoding_gives(case, snap, dropped, monkeypatch):
    link, ip = ODD[case]
    frame = link + ip
    kept = frame[: len(link) + snap] if snap else frame

    def read(roce):
        d = derive.Deriver(roce)
        first = Packet(0, LINKTYPES[link], 1_000_000_000, kept, len(frame), [dropped] if dropped else [])
        again = Packet(0, LINKTYPES[link], 1_500_000_000, kept, len(frame))  # the same frame again: a retransmission
        for n, p in enumerate((first, again), 1):
            yield from d.feed(p, n)

    fast, slow, taken = both_ways(read, monkeypatch)
    assert fast == slow
    if case in ("plain", "last", "Linux cooked", "Linux cooked v2", "Ethernet padding"):
        assert taken == 2, taken  # these are for the fast way: it was tried on them
