"""Capture files as other writers make them (older pcapng writers, tcpdump's classic pcap),
for the readers' tests and tshark's."""

from __future__ import annotations

import struct

from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_USER0


def old_style_file(order: str) -> bytes:
    """A pcapng file as older writers made it: obsolete Packet Blocks (type 2: a 16-bit
    interface id and a drops count) on a millisecond interface whose if_tsoffset moves its
    timestamps 1,700,000,000 s on, next to an Enhanced Packet Block on the other one."""

    def block(t: int, body: bytes) -> bytes:
        return struct.pack(order + "II", t, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))

    def opt(code: int, value: bytes) -> bytes:
        return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)

    shb = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    idb0 = struct.pack(order + "HHI", LINKTYPE_ETHERNET, 0, 65535) + opt(9, b"\x03") + opt(14, struct.pack(order + "q", 1_700_000_000)) + opt(0, b"")
    idb1 = struct.pack(order + "HHI", LINKTYPE_USER0, 0, 65535)
    pb = struct.pack(order + "HHIIII", 0, 7, 0, 1_500, 3, 60) + b"abc\0" + opt(1, b"old") + opt(0, b"")
    epb = struct.pack(order + "IIIII", 1, 0, 2_000_000, 2, 2) + b"xy\0\0"
    pb2 = struct.pack(order + "HHIIII", 0, 0, 0, 2_250, 1, 1) + b"z\0\0\0"
    return block(0x0A0D0D0A, shb) + block(1, idb0) + block(1, idb1) + block(2, pb) + block(6, epb) + block(2, pb2)


def classic_pcap(packets, order: str = "<", nanos: bool = False) -> bytes:
    """A classic pcap file of ``packets`` (objects with linktype, timestamp_ns, data and
    original_length: the readers' Packet), as tcpdump writes it, in this byte order and
    timestamp precision; the first packet's link type is the file's."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, packets[0].linktype if packets else LINKTYPE_ETHERNET)]
    for p in packets:
        sec, rest = divmod(p.timestamp_ns, 1_000_000_000)
        out.append(struct.pack(order + "IIII", sec, rest if nanos else rest // 1000, len(p.data), p.original_length) + p.data)
    return b"".join(out)
