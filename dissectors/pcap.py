"""Reading any capture file: pcapng (dissectors.pcapng) or classic pcap, either byte order,
micro- or nanosecond timestamps. Damage raises :class:`CaptureError` naming the record
(or block) and byte offset; what was read before it is kept."""

from __future__ import annotations

import struct
from typing import Iterator

from .pcapng import SHB_TYPE, Packet, PcapngError, read_packets

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}


class CaptureError(ValueError):
    """A capture that cannot be read: names the block or record and the byte offset."""


def _file_header(data: bytes, pos: int, joined: bool) -> tuple[str, int, int, int] | None:
    """The pcap file header at ``pos``: byte order, timestamp scale, snap length and link
    type; None when there is none. ``joined``: one after the first, of a file that ``cat``
    made; only a version 2.4 header counts (a record's seconds would have to be in 2055 or
    2083 to start with a magic, and its next four bytes to read as 2.4 too)."""
    magic = PCAP_MAGICS.get(data[pos : pos + 4])
    if magic is None or len(data) - pos < 24:
        return None
    order, scale = magic
    major, minor, _, _, snaplen, linktype = struct.unpack_from(order + "HHiIII", data, pos + 4)
    return (order, scale, snaplen, linktype & 0x0FFFFFFF) if not joined or (major, minor) == (2, 4) else None


def read_pcap(data: bytes) -> Iterator[Packet]:
    """The packets of a pcap file; of several joined into one (``cat`` of rotated
    tcpdump files, or of their gzip files), each part read with its own header."""
    head = _file_header(data, 0, joined=False)
    if head is None:
        raise CaptureError(f"pcap file header is truncated: {len(data)} of 24 bytes")
    order, scale, snaplen, linktype = head
    pos, n = 24, 0
    while pos < len(data):
        joined = _file_header(data, pos, joined=True)
        if joined is not None:
            order, scale, snaplen, linktype = joined
            pos += 24
            continue
        n += 1
        if len(data) - pos < 16:
            raise CaptureError(f"pcap record {n} at byte offset {pos}: header truncated ({len(data) - pos} of 16 bytes)")
        sec, frac, caplen, origlen = struct.unpack_from(order + "IIII", data, pos)
        if caplen > max(snaplen, 262144):
            raise CaptureError(f"pcap record {n} at byte offset {pos}: captured length {caplen} exceeds the snap length {snaplen}")
        if pos + 16 + caplen > len(data):
            raise CaptureError(f"pcap record {n} at byte offset {pos}: captured length {caplen} runs past the end of the file")
        yield Packet(0, linktype, sec * 1_000_000_000 + frac * scale, data[pos + 16 : pos + 16 + caplen], origlen, [], n, pos)
        pos += 16 + caplen


def is_pcapng(data: bytes) -> bool:
    return len(data) >= 4 and struct.unpack_from("<I", data)[0] == SHB_TYPE


def read_capture(data: bytes, linktypes: frozenset[int] | None = None) -> Iterator[Packet]:
    """The packets of a pcap or pcapng file, in file order (of a pcapng file, with
    ``linktypes``, only those of interfaces of these link types)."""
    head = data[:4]
    if head in PCAP_MAGICS:
        yield from read_pcap(data)
    elif is_pcapng(data):
        try:
            yield from read_packets(data, linktypes=linktypes)
        except PcapngError as e:
            raise CaptureError(str(e)) from None
    else:
        raise CaptureError(f"not a pcap or pcapng file: it starts with {head.hex() or 'nothing'} at byte offset 0")
