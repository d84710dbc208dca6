"""pcapng writing and reading (the subset smctop writes and the blocks it must skip).

Writer: Section Header, Interface Description (link type, name, nanosecond timestamps)
and Enhanced Packet blocks with an optional comment. Little-endian, as Wireshark writes.

Reader: any pcapng file of either byte order with one or more sections; Enhanced and
Simple Packet blocks are returned, and the obsolete Packet Block older tools still write
(type 2, as tshark reads it); other blocks are skipped. Timestamps honour the interface's
if_tsresol and if_tsoffset. A truncated or corrupt
file raises :class:`PcapngError` naming the block number, its type and the byte
offset; packets read before the damage are kept (``read_packets(..., strict=False)``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
PB_TYPE = 0x00000002  # the obsolete Packet Block: an EPB with a 16-bit interface id and a drops count
SPB_TYPE = 0x00000003
EPB_TYPE = 0x00000006
ISB_TYPE = 0x00000005  # interface statistics: what the capturing host dropped
ISB_IFDROP, ISB_OSDROP = 5, 7  # isb_ifdrop, isb_osdrop
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
IF_NAME = 2
IF_TSRESOL = 9
IF_TSOFFSET = 14  # seconds added to each timestamp of the interface (signed 64-bit)

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_USER0 = 147
LINKTYPE_WIRESHARK_UPPER_PDU = 252
LINKTYPE_LINUX_SLL2 = 276


class PcapngError(ValueError):
    """Damage in block ``block``: the message names where the block starts (``start``) and,
    when that is elsewhere, the byte of the field at fault (``offset``)."""

    def __init__(self, block: int, block_type: int | None, offset: int, reason: str, start: int | None = None) -> None:
        self.block = block
        self.block_type = block_type
        self.offset = offset
        self.reason = reason
        self.start = offset if start is None else start
        kind = f"type 0x{block_type:08x}" if block_type is not None else "unknown type"
        field = f"; the field at byte {offset}" if offset != self.start else ""
        super().__init__(f"pcapng block {block} ({kind}) at byte offset {self.start}: {reason}{field}")


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", code, len(value)) + _pad4(value) for code, value in opts)
    return out + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


_EPB_HEAD = struct.Struct("<IIIIIII")


def epb_block(interface: int, timestamp_ns: int, data: bytes, comment: bytes | None = None, orig_len: int | None = None) -> bytes:
    """One enhanced packet block (nanosecond timestamp, an optional comment option);
    ``orig_len``: the packet's length on the wire when ``data`` is only its start (a snap
    length). The recorder's spool builds the same bytes (dissectors/spool.py, native/eventenc.c)."""
    data = bytes(data)
    opts = struct.pack("<HH", OPT_COMMENT, len(comment)) + _pad4(comment) + struct.pack("<HH", OPT_ENDOFOPT, 0) if comment else b""
    total = 32 + len(data) + (-len(data) % 4) + len(opts)
    orig = max(orig_len or 0, len(data))
    head = _EPB_HEAD.pack(EPB_TYPE, total, interface, (timestamp_ns >> 32) & 0xFFFFFFFF, timestamp_ns & 0xFFFFFFFF, len(data), orig)
    return head + _pad4(data) + opts + struct.pack("<I", total)


class PcapngWriter:
    """Write a pcapng stream. Timestamps are nanoseconds since the epoch."""

    def __init__(self, out: BinaryIO, *, application: str = "smctop") -> None:
        self._out = out
        self._interfaces: list[int] = []
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options([(4, application.encode())])
        self._write(_block(SHB_TYPE, shb))

    def _write(self, data: bytes) -> None:
        """All of data, also to an unbuffered (raw) file, whose write may take only part."""
        n = self._out.write(data)
        if isinstance(n, int) and n < len(data):
            view = memoryview(data)[n:]
            while view:
                n = self._out.write(view)
                view = view[n if n is not None else 0 :]

    def add_interface(self, linktype: int, name: str, snaplen: int = 262144) -> int:
        body = struct.pack("<HHI", linktype, 0, snaplen) + _options([(IF_NAME, name.encode()), (IF_TSRESOL, bytes([9]))])
        self._write(_block(IDB_TYPE, body))
        self._interfaces.append(linktype)
        return len(self._interfaces) - 1

    def write_packet(self, interface: int, timestamp_ns: int, data: bytes, comment: str | None = None, orig_len: int | None = None) -> None:
        """``orig_len``: the packet's length on the wire when ``data`` is only its start."""
        if not 0 <= interface < len(self._interfaces):
            raise ValueError(f"interface {interface} was not added (have {len(self._interfaces)})")
        self._write(epb_block(interface, timestamp_ns, data, comment.encode() if comment else None, orig_len))

    def write_blocks(self, blocks: bytes) -> None:
        """Blocks built elsewhere (epb_block, the recorder's spool) for interfaces added here."""
        self._write(blocks)

    def flush(self) -> None:
        self._out.flush()


@dataclass
class Interface:
    linktype: int
    snaplen: int
    name: str = ""
    tsresol: int = 6  # decimal exponent; 6 = microseconds (pcapng default)
    tsresol_binary: bool = False
    tsoffset: int = 0  # seconds

    def to_ns(self, ts: int) -> int:
        if self.tsresol_binary:
            ns = (ts * 1_000_000_000) >> self.tsresol
        elif self.tsresol <= 9:
            ns = ts * 10 ** (9 - self.tsresol)
        else:
            ns = ts // 10 ** (self.tsresol - 9)
        return ns + self.tsoffset * 1_000_000_000


@dataclass
class Packet:
    interface: int
    linktype: int
    timestamp_ns: int
    data: bytes
    original_length: int
    comments: list[str] = field(default_factory=list)
    block: int = 0
    offset: int = 0


def _parse_options(buf: bytes, order: str, block: int, btype: int, offset: int) -> list[tuple[int, bytes]]:
    opts = []
    i = 0
    while i + 4 <= len(buf):
        code, size = struct.unpack_from(order + "HH", buf, i)
        if code == OPT_ENDOFOPT:
            break
        if i + 4 + size > len(buf):
            raise PcapngError(block, btype, offset + i, f"option {code} of {size} bytes runs past the block")
        opts.append((code, buf[i + 4 : i + 4 + size]))
        i += 4 + size + (-size % 4)
    return opts


@dataclass
class CaptureDrops:
    """What an interface's capture lost, from its last statistics block (dumpcap writes one
    when it stops): packets the interface dropped and those the OS dropped (buffer full)."""

    interface: int
    name: str
    ifdrop: int
    osdrop: int


def capture_drops(data: bytes) -> list[CaptureDrops]:
    """The drop counters of a pcapng file's interface statistics blocks, the last one of each
    interface (the counters are totals since the capture began); [] when there are none or
    the file is damaged (its packets are read elsewhere, with their errors)."""
    out: dict[int, CaptureDrops] = {}
    names: list[str] = []
    order, pos = "<", 0
    try:
        while pos + 12 <= len(data):
            raw_type = struct.unpack_from("<I", data, pos)[0]
            if raw_type == SHB_TYPE:
                order = "<" if data[pos + 8 : pos + 12] == struct.pack("<I", BYTE_ORDER_MAGIC) else ">"
                names = []
            btype, total = struct.unpack_from(order + "II", data, pos)
            if total < 12 or total % 4 or pos + total > len(data):
                break
            body = data[pos + 8 : pos + total - 4]
            if btype == IDB_TYPE:
                name = next((v.rstrip(b"\0").decode("utf-8", "replace") for c, v in _parse_options(body[8:], order, 0, btype, 0) if c == IF_NAME), "")
                names.append(name)
            elif btype == ISB_TYPE and len(body) >= 12:
                ifidx = struct.unpack_from(order + "I", body, 0)[0]
                opts = dict(_parse_options(body[12:], order, 0, btype, 0))
                drops = [struct.unpack_from(order + "Q", opts[c])[0] if len(opts.get(c, b"")) == 8 else 0 for c in (ISB_IFDROP, ISB_OSDROP)]
                name = names[ifidx] if ifidx < len(names) else ""
                out[ifidx] = CaptureDrops(ifidx, name, drops[0], drops[1])
            pos += total
    except (PcapngError, struct.error):
        pass
    return [d for d in out.values() if d.ifdrop or d.osdrop]


def read_packets(src: BinaryIO | bytes, *, strict: bool = True, linktypes: frozenset[int] | None = None) -> Iterator[Packet]:
    """Yield the packets of a pcapng file in file order.

    With ``strict`` a damaged block raises :class:`PcapngError` after the good packets
    before it were yielded; without it, reading stops quietly at the damage. ``linktypes``:
    only the packets of interfaces with these link types (the others' blocks are checked
    and passed over, with no packet made: a replay of a recording reads its events and not
    its millions of frames).
    """
    data = src if isinstance(src, (bytes, bytearray)) else src.read()
    data = bytes(data)
    pos = 0
    block = 0
    order = "<"
    interfaces: list[Interface] = []
    while pos < len(data):
        block += 1
        packet: Packet | None = None
        try:
            if len(data) - pos < 12:
                left = len(data) - pos  # four bytes or more name the block's type
                btype = struct.unpack_from(order + "I", data, pos)[0] if left >= 4 else None
                raise PcapngError(block, btype, pos, f"{left} trailing bytes are too few for a block header")
            raw_type = struct.unpack_from("<I", data, pos)[0]
            if raw_type == SHB_TYPE:
                if len(data) - pos < 28:
                    raise PcapngError(block, SHB_TYPE, pos, "section header block is truncated")
                magic = data[pos + 8 : pos + 12]
                if magic == struct.pack("<I", BYTE_ORDER_MAGIC):
                    order = "<"
                elif magic == struct.pack(">I", BYTE_ORDER_MAGIC):
                    order = ">"
                else:
                    raise PcapngError(block, SHB_TYPE, pos + 8, f"byte-order magic {magic.hex()} is not 1a2b3c4d")
                interfaces = []
            elif block == 1:
                raise PcapngError(block, raw_type, pos, "a pcapng file starts with a section header block (0x0a0d0d0a)")
            btype, total = struct.unpack_from(order + "II", data, pos)
            if total < 12 or total % 4:
                raise PcapngError(block, btype, pos + 4, f"block length {total} is not a multiple of 4 of at least 12")
            if pos + total > len(data):
                raise PcapngError(block, btype, pos + 4, f"block length {total} runs past the end of the file ({len(data) - pos} bytes left)")
            (trailer,) = struct.unpack_from(order + "I", data, pos + total - 4)
            if trailer != total:
                raise PcapngError(block, btype, pos + total - 4, f"trailing length {trailer} differs from the leading {total}")
            if btype == EPB_TYPE and linktypes is not None and total >= 32:  # passed over without a copy when not wanted
                ifidx, caplen = struct.unpack_from(order + "I8xI", data, pos + 8)
                if ifidx < len(interfaces) and 32 + caplen <= total and interfaces[ifidx].linktype not in linktypes:
                    pos += total
                    continue
            body = data[pos + 8 : pos + total - 4]
            if btype == IDB_TYPE:
                if len(body) < 8:
                    raise PcapngError(block, btype, pos + 8, "interface description block is truncated")
                linktype, _, snaplen = struct.unpack_from(order + "HHI", body, 0)
                iface = Interface(linktype, snaplen)
                for code, value in _parse_options(body[8:], order, block, btype, pos + 16):
                    if code == IF_NAME:
                        iface.name = value.rstrip(b"\0").decode("utf-8", "replace")
                    elif code == IF_TSRESOL and value:
                        iface.tsresol, iface.tsresol_binary = value[0] & 0x7F, bool(value[0] & 0x80)
                    elif code == IF_TSOFFSET and len(value) == 8:
                        (iface.tsoffset,) = struct.unpack(order + "q", value)
                interfaces.append(iface)
            elif btype == EPB_TYPE or btype == PB_TYPE:
                if len(body) < 20:
                    what = "enhanced packet block" if btype == EPB_TYPE else "packet block"
                    raise PcapngError(block, btype, pos + 8, f"{what} is truncated")
                ifidx, hi, lo, caplen, origlen = struct.unpack_from(order + ("IIIII" if btype == EPB_TYPE else "H2xIIII"), body, 0)
                if ifidx >= len(interfaces):
                    raise PcapngError(block, btype, pos + 8, f"interface {ifidx} was not described (have {len(interfaces)})")
                if 20 + caplen > len(body):
                    raise PcapngError(block, btype, pos + 20, f"captured length {caplen} runs past the block")
                opts_at = 20 + caplen + (-caplen % 4)
                comments = [v.decode("utf-8", "replace") for c, v in _parse_options(body[opts_at:], order, block, btype, pos + 8 + opts_at) if c == OPT_COMMENT]
                iface = interfaces[ifidx]
                packet = Packet(ifidx, iface.linktype, iface.to_ns((hi << 32) | lo), body[20 : 20 + caplen], origlen, comments, block, pos)
            elif btype == SPB_TYPE:
                if not interfaces:
                    raise PcapngError(block, btype, pos, "simple packet block before any interface description")
                if len(body) < 4:
                    raise PcapngError(block, btype, pos + 8, "simple packet block is truncated")
                (origlen,) = struct.unpack_from(order + "I", body, 0)
                caplen = min(origlen, interfaces[0].snaplen or origlen, len(body) - 4)
                packet = Packet(0, interfaces[0].linktype, 0, body[4 : 4 + caplen], origlen, [], block, pos)
            if packet is not None and (linktypes is None or packet.linktype in linktypes):
                yield packet
            pos += total
        except PcapngError as e:
            if strict:
                if e.start != pos:  # named by where its block starts, and the field's own byte
                    raise PcapngError(e.block, e.block_type, e.offset, e.reason, start=pos) from None
                raise
            return
