"""RoCEv2: InfiniBand transport headers (BTH, RETH, AETH, ImmDt ...) over UDP port 4791,
and the invariant CRC.

A RoCEv2 packet is Ethernet | IPv4 | UDP (dport 4791) | BTH | extension headers |
payload | pad | ICRC. Ethernet, IPv4 and UDP come from :mod:`stack.wire.inet`.

ICRC (IBA Annex A17, Linux ``rxe_icrc.c``): CRC-32 (the zlib/Ethernet polynomial) over
eight 0xFF bytes standing for the masked LRH, then the IPv4 header with TOS, TTL and
header checksum set to all ones, the UDP header with its checksum set to all ones, and
the BTH with its reserved byte 4 (FECN/BECN/resv) set to all ones, the extension
headers, payload and pad. The 32-bit result is sent little-endian. The masking makes
the CRC independent of what routers rewrite. The check value of a ConnectX-4 Lx CNP
is in the tests.

BTH (12 bytes): opcode @0; byte 1 = SE (0x80) | MigReq (0x40) | PadCnt (0x30) | TVer
(0x0F); P_Key @2; byte 4 = FECN (0x80) | BECN (0x40); DestQP @5 (24 bits); byte 8 =
AckReq (0x80); PSN @9 (24 bits).

RoCE v1 (IBA Annex A16), what SMC-Rv1 uses on a RoCE NIC (a RoCE v1 GID): Ethernet
(ethertype 0x8915) | GRH | BTH | ... | ICRC. The GRH has the IPv6 header's layout (version
6, traffic class, flow label, payload length counting BTH to ICRC, next header 0x1B, hop
limit, source and destination GID). Its ICRC is taken as RoCEv2's with the GRH in the IP
header's place: the GRH's traffic class, flow label and hop limit masked to ones (its
version kept, as rxe masks an IPv6 header), no UDP.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

from ._base import Builder, View, WireError, check_uint
from .inet import (
    ETH_HLEN,
    ETH_P_IP,
    IPPROTO_UDP,
    IPV4_HLEN,
    UDP_HLEN,
    Ethernet,
    InetError,
    IPv4,
    Udp,
    decode_ethernet,
    decode_ipv4,
    decode_udp,
)

ROCE_V2_PORT = 4791
ETH_P_ROCE = 0x8915  # RoCE (v1): the InfiniBand GRH right after the Ethernet header
GRH_NEXT_BTH = 0x1B  # a GRH's next header when an IBA transport header (BTH) follows
BTH_LEN = 12
RETH_LEN = 16
GRH_LEN = 40
AETH_LEN = 4
IMMDT_LEN = 4
IETH_LEN = 4
DETH_LEN = 8
ATOMICETH_LEN = 28
ATOMICACKETH_LEN = 8
ICRC_LEN = 4
DEFAULT_PKEY = 0xFFFF
PSN_MASK = 0xFFFFFF


class RoceError(WireError):
    codec = "roce"


class Opcode(IntEnum):
    """BTH opcodes (IBA table 38); RC unless prefixed."""

    SEND_FIRST = 0x00
    SEND_MIDDLE = 0x01
    SEND_LAST = 0x02
    SEND_LAST_WITH_IMMEDIATE = 0x03
    SEND_ONLY = 0x04
    SEND_ONLY_WITH_IMMEDIATE = 0x05
    RDMA_WRITE_FIRST = 0x06
    RDMA_WRITE_MIDDLE = 0x07
    RDMA_WRITE_LAST = 0x08
    RDMA_WRITE_LAST_WITH_IMMEDIATE = 0x09
    RDMA_WRITE_ONLY = 0x0A
    RDMA_WRITE_ONLY_WITH_IMMEDIATE = 0x0B
    RDMA_READ_REQUEST = 0x0C
    RDMA_READ_RESPONSE_FIRST = 0x0D
    RDMA_READ_RESPONSE_MIDDLE = 0x0E
    RDMA_READ_RESPONSE_LAST = 0x0F
    RDMA_READ_RESPONSE_ONLY = 0x10
    ACKNOWLEDGE = 0x11
    ATOMIC_ACKNOWLEDGE = 0x12
    COMPARE_SWAP = 0x13
    FETCH_ADD = 0x14
    SEND_LAST_WITH_INVALIDATE = 0x16
    SEND_ONLY_WITH_INVALIDATE = 0x17
    UC_SEND_ONLY = 0x24
    UD_SEND_ONLY = 0x64
    UD_SEND_ONLY_WITH_IMMEDIATE = 0x65
    CNP = 0x81


# Extension headers following the BTH, in order, per opcode.
_EXT: dict[int, tuple[str, ...]] = {
    Opcode.SEND_FIRST: (),
    Opcode.SEND_MIDDLE: (),
    Opcode.SEND_LAST: (),
    Opcode.SEND_LAST_WITH_IMMEDIATE: ("imm",),
    Opcode.SEND_ONLY: (),
    Opcode.SEND_ONLY_WITH_IMMEDIATE: ("imm",),
    Opcode.RDMA_WRITE_FIRST: ("reth",),
    Opcode.RDMA_WRITE_MIDDLE: (),
    Opcode.RDMA_WRITE_LAST: (),
    Opcode.RDMA_WRITE_LAST_WITH_IMMEDIATE: ("imm",),
    Opcode.RDMA_WRITE_ONLY: ("reth",),
    Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE: ("reth", "imm"),
    Opcode.RDMA_READ_REQUEST: ("reth",),
    Opcode.RDMA_READ_RESPONSE_FIRST: ("aeth",),
    Opcode.RDMA_READ_RESPONSE_MIDDLE: (),
    Opcode.RDMA_READ_RESPONSE_LAST: ("aeth",),
    Opcode.RDMA_READ_RESPONSE_ONLY: ("aeth",),
    Opcode.ACKNOWLEDGE: ("aeth",),
    Opcode.ATOMIC_ACKNOWLEDGE: ("aeth", "atomicacketh"),
    Opcode.COMPARE_SWAP: ("atomiceth",),
    Opcode.FETCH_ADD: ("atomiceth",),
    Opcode.SEND_LAST_WITH_INVALIDATE: ("ieth",),
    Opcode.SEND_ONLY_WITH_INVALIDATE: ("ieth",),
    Opcode.UC_SEND_ONLY: (),
    Opcode.UD_SEND_ONLY: ("deth",),
    Opcode.UD_SEND_ONLY_WITH_IMMEDIATE: ("deth", "imm"),
    Opcode.CNP: (),
}
_EXT_LEN = {
    "reth": RETH_LEN, "aeth": AETH_LEN, "imm": IMMDT_LEN, "ieth": IETH_LEN,
    "deth": DETH_LEN, "atomiceth": ATOMICETH_LEN, "atomicacketh": ATOMICACKETH_LEN,
}  # fmt: skip


def extension_headers(opcode: int) -> tuple[str, ...]:
    return _EXT[opcode]


@dataclass(frozen=True)
class Bth:
    opcode: int
    dest_qp: int
    psn: int
    se: bool = False
    ackreq: bool = False
    pad: int = 0
    pkey: int = DEFAULT_PKEY
    migreq: bool = False
    tver: int = 0
    fecn: bool = False
    becn: bool = False

    def pack(self, pad: int) -> bytes:
        """The 12 BTH bytes (``pad`` overrides the pad count)."""
        if self.dest_qp >> 24 or self.psn >> 24 or self.tver >> 4 or self.opcode >> 8 or self.pkey >> 16 or self.opcode < 0:
            b = Builder(BTH_LEN, f"RoCE {_opname(self.opcode)}", RoceError)
            Bth(**{**self.__dict__, "pad": pad}).encode_into(b)  # raises, naming the field
        b1 = (0x80 if self.se else 0) | (0x40 if self.migreq else 0) | (pad << 4) | self.tver
        b4 = (0x80 if self.fecn else 0) | (0x40 if self.becn else 0)
        return _BTH.pack(self.opcode, b1, self.pkey, (b4 << 24) | self.dest_qp, (0x80000000 if self.ackreq else 0) | self.psn)

    def encode_into(self, b: Builder, off: int = 0) -> None:
        check_uint(self.pad, 2, "pad count", b.name, off + 1, RoceError)
        check_uint(self.tver, 4, "transport version", b.name, off + 1, RoceError)
        b.u8(off, self.opcode, "opcode")
        b.u8(off + 1, (0x80 if self.se else 0) | (0x40 if self.migreq else 0) | (self.pad << 4) | self.tver, "BTH flags")
        b.u16(off + 2, self.pkey, "P_Key")
        b.u8(off + 4, (0x80 if self.fecn else 0) | (0x40 if self.becn else 0), "FECN/BECN")
        b.u24(off + 5, self.dest_qp, "DestQP")
        b.u8(off + 8, 0x80 if self.ackreq else 0, "AckReq")
        b.u24(off + 9, self.psn, "PSN")


_BTH = struct.Struct("!BBHII")


def decode_bth(v: View, off: int = 0) -> Bth:
    v.need(off, BTH_LEN, "BTH")
    opcode, b1, pkey, w1, w2 = _BTH.unpack_from(v.buf, off)
    return Bth(
        opcode, w1 & PSN_MASK, w2 & PSN_MASK, bool(b1 & 0x80), bool(w2 & 0x80000000), (b1 >> 4) & 3, pkey,
        bool(b1 & 0x40), b1 & 0x0F, bool(w1 & 0x80000000), bool(w1 & 0x40000000),
    )  # fmt: skip


@dataclass(frozen=True)
class Reth:
    """RDMA extended transport header: remote address, rkey, DMA length of the whole message."""

    vaddr: int
    rkey: int
    dma_len: int


class AckKind(IntEnum):
    ACK = 0
    RNR_NAK = 1
    NAK = 3


class NakCode(IntEnum):
    PSN_SEQUENCE_ERROR = 0
    INVALID_REQUEST = 1
    REMOTE_ACCESS_ERROR = 2
    REMOTE_OPERATIONAL_ERROR = 3
    INVALID_RD_REQUEST = 4


@dataclass(frozen=True)
class Aeth:
    """ACK extended transport header: syndrome (kind in bits 7-5, value in 4-0) and MSN."""

    syndrome: int
    msn: int

    @classmethod
    def ack(cls, msn: int, credits: int = 0x1F) -> "Aeth":
        return cls((AckKind.ACK << 5) | credits, msn)

    @classmethod
    def rnr_nak(cls, msn: int, timer: int) -> "Aeth":
        return cls((AckKind.RNR_NAK << 5) | timer, msn)

    @classmethod
    def nak(cls, msn: int, code: NakCode) -> "Aeth":
        return cls((AckKind.NAK << 5) | code, msn)

    @property
    def kind(self) -> int:
        return self.syndrome >> 5

    @property
    def value(self) -> int:
        """Credit count (ACK), RNR timer code (RNR NAK) or NAK code (NAK)."""
        return self.syndrome & 0x1F


@dataclass(frozen=True)
class RocePacket:
    """The InfiniBand transport part of a RoCEv2 packet: BTH, extension headers, payload.

    ``payload`` excludes the pad bytes; ``bth.pad`` is derived from it on encode.
    Headers that have no structured form here (IETH, DETH, atomic) travel in ``other``.
    """

    bth: Bth
    reth: Reth | None = None
    aeth: Aeth | None = None
    imm: int | None = None
    other: bytes = b""
    payload: bytes = b""

    def encode(self) -> bytes:
        """BTH .. pad, without the ICRC."""
        return self.headers() + bytes(self.payload) + bytes(-len(self.payload) % 4)

    def headers(self) -> bytes:
        """BTH and extension headers (the pad count in the BTH follows the payload)."""
        name = f"RoCE {_opname(self.bth.opcode)}"
        if self.bth.opcode not in _EXT:
            raise RoceError(name, 0, f"unsupported BTH opcode 0x{self.bth.opcode:02x}")
        exts = _EXT[self.bth.opcode]
        if ("reth" in exts) != (self.reth is not None) or ("aeth" in exts) != (self.aeth is not None) or ("imm" in exts) != (self.imm is not None):
            raise RoceError(name, BTH_LEN, f"opcode 0x{self.bth.opcode:02x} takes extension headers {exts or 'none'}")
        other_len = sum(_EXT_LEN[e] for e in exts if e not in ("reth", "aeth", "imm"))
        if len(self.other) != other_len:
            raise RoceError(name, BTH_LEN, f"opcode 0x{self.bth.opcode:02x} needs {other_len} bytes of other headers")
        out = [self.bth.pack(-len(self.payload) % 4)]
        other_done = False
        try:
            for e in exts:
                if e == "reth":
                    out.append(_RETH.pack(self.reth.vaddr, self.reth.rkey, self.reth.dma_len))
                elif e == "aeth":
                    if self.aeth.msn >> 24 or self.aeth.syndrome >> 8:
                        raise struct.error("AETH field out of range")
                    out.append(_U32.pack((self.aeth.syndrome << 24) | self.aeth.msn))
                elif e == "imm":
                    out.append(_U32.pack(self.imm))
                elif not other_done:  # the unstructured headers travel together in ``other``
                    out.append(bytes(self.other))
                    other_done = True
        except struct.error:
            raise RoceError(name, BTH_LEN, f"an extension header field does not fit: {self.reth or self.aeth or self.imm}") from None
        return b"".join(out)


_RETH = struct.Struct("!QII")
_U32 = struct.Struct("!I")


def _opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode 0x{opcode:02x}"


def decode_packet(data: bytes, pad_cut: bool = False) -> RocePacket:
    """Decode BTH .. pad (the ICRC already removed). ``pad_cut``: ``data`` is only the start
    of the packet (a capture's snap length): the headers are whole, the pad is not there."""
    data = bytes(data)
    v = View(data, "RoCE packet", RoceError)
    bth = decode_bth(v)
    v.name = f"RoCE {_opname(bth.opcode)}"
    if bth.opcode not in _EXT:
        raise v.fail(0, f"unsupported BTH opcode 0x{bth.opcode:02x}")
    reth = aeth = imm = None
    other = b""
    off = BTH_LEN
    for e in _EXT[bth.opcode]:
        size = _EXT_LEN[e]
        v.need(off, size, e.upper())
        if e == "reth":
            reth = Reth(*_RETH.unpack_from(data, off))
        elif e == "aeth":
            word = _U32.unpack_from(data, off)[0]
            aeth = Aeth(word >> 24, word & PSN_MASK)
        elif e == "imm":
            imm = _U32.unpack_from(data, off)[0]
        else:
            other += v.raw(off, size, e.upper())
        off += size
    if pad_cut:
        return RocePacket(bth, reth, aeth, imm, other, data[off:])
    if len(data) - off < bth.pad:
        raise v.fail(1, f"pad count {bth.pad} exceeds the {len(data) - off} payload bytes")
    payload = data[off : len(data) - bth.pad]
    return RocePacket(bth, reth, aeth, imm, other, payload)


def icrc(ip_header: bytes, udp_header: bytes, ib: bytes) -> bytes:
    """The 4 ICRC bytes, as they appear on the wire, for an IPv4 RoCEv2 packet."""
    ip = bytearray(ip_header)
    ip[1] = 0xFF  # TOS
    ip[8] = 0xFF  # TTL
    ip[10:12] = b"\xff\xff"  # header checksum
    udp = bytearray(udp_header)
    udp[6:8] = b"\xff\xff"  # UDP checksum
    rest = bytearray(ib)
    rest[4] = 0xFF  # BTH resv8a: FECN, BECN, reserved
    crc = zlib.crc32(b"\xff" * 8 + bytes(ip) + bytes(udp) + bytes(rest))
    return struct.pack("<I", crc)


@lru_cache(maxsize=8192)
def _prefix_crc(src: str, dst: str, sport: int, dport: int, ib_len: int, ident: int, dont_fragment: bool) -> int:
    """CRC of the masked LRH, IPv4 and UDP headers: the part of the ICRC a flow repeats."""
    udp = Udp(sport, dport, UDP_HLEN + ib_len + ICRC_LEN)
    ip = IPv4(ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), IPPROTO_UDP, IPV4_HLEN + udp.length, ident, dont_fragment)
    ip_b, udp_b = bytearray(ip.encode()), bytearray(udp.encode())
    ip_b[1], ip_b[8], ip_b[10:12] = 0xFF, 0xFF, b"\xff\xff"
    udp_b[6:8] = b"\xff\xff"
    return zlib.crc32(b"\xff" * 8 + bytes(ip_b) + bytes(udp_b))


def _flow_icrc(prefix: int, ib: bytes | memoryview) -> bytes:
    """Finish the ICRC over BTH (reserved byte 4 masked) and the rest, without copying the payload."""
    head = bytes(ib[:4]) + b"\xff"
    return _ICRC.pack(zlib.crc32(ib[5:], zlib.crc32(head, prefix)))


_ICRC = struct.Struct("<I")


def encode_datagram(
    packet: RocePacket,
    src: ipaddress.IPv4Address | str,
    dst: ipaddress.IPv4Address | str,
    sport: int,
    dport: int = ROCE_V2_PORT,
    *,
    ident: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """The UDP payload of a RoCEv2 packet (BTH .. ICRC).

    The ICRC covers the IPv4 and UDP headers the kernel will put around the payload:
    an unconnected UDP socket sending with DF set uses IP identification 0, which
    the soft provider arranges (IP_PMTUDISC_DO), so ``ident`` defaults to 0.
    """
    ib = packet.encode()
    return ib + _flow_icrc(_prefix_crc(str(src), str(dst), sport, dport, len(ib), ident, dont_fragment), ib)


def decode_datagram(
    data: bytes,
    src: ipaddress.IPv4Address | str,
    dst: ipaddress.IPv4Address | str,
    sport: int,
    dport: int = ROCE_V2_PORT,
    *,
    ident: int = 0,
    dont_fragment: bool = True,
    check_icrc: bool = True,
) -> RocePacket:
    """Decode a UDP payload received on port 4791, checking its ICRC against the headers it came with."""
    if len(data) < BTH_LEN + ICRC_LEN:
        raise RoceError("RoCE packet", 0, f"{len(data)} bytes: too short for BTH and ICRC ({BTH_LEN + ICRC_LEN})")
    mv = memoryview(data)
    ib, got = mv[:-ICRC_LEN], bytes(mv[-ICRC_LEN:])
    if check_icrc:
        want = _flow_icrc(_prefix_crc(str(src), str(dst), sport, dport, len(ib), ident, dont_fragment), ib)
        if got != want:
            raise RoceError("RoCE packet", len(ib), f"ICRC {got.hex()} does not match the computed {want.hex()}")
    return decode_packet(ib)


@dataclass(frozen=True)
class RoceFrame:
    eth: Ethernet
    ip: IPv4
    udp: Udp
    packet: RocePacket
    icrc: bytes
    icrc_ok: bool


def encode_frame(
    packet: RocePacket,
    src: ipaddress.IPv4Address | str,
    dst: ipaddress.IPv4Address | str,
    sport: int,
    dport: int = ROCE_V2_PORT,
    *,
    src_mac: bytes = bytes(6),
    dst_mac: bytes = bytes(6),
    ident: int = 0,
    ttl: int = 64,
    tos: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """A complete Ethernet frame carrying the packet, with a correct ICRC."""
    ib = packet.encode()
    udp = Udp(sport, dport, UDP_HLEN + len(ib) + ICRC_LEN)
    ip = IPv4(ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), IPPROTO_UDP, IPV4_HLEN + udp.length, ident, dont_fragment, ttl, tos)
    ip_b, udp_b = ip.encode(), udp.encode()
    return Ethernet(dst_mac, src_mac, ETH_P_IP).encode() + ip_b + udp_b + ib + icrc(ip_b, udp_b, ib)


def decode_frame(frame: bytes, *, check_icrc: bool = False) -> RoceFrame:
    """Decode an Ethernet frame holding an IPv4 RoCEv2 packet.

    ``icrc_ok`` says whether the ICRC verified; with ``check_icrc`` a mismatch raises.
    Errors in the Ethernet/IP/UDP layers are re-raised as :class:`RoceError`.
    """
    try:
        eth, off = decode_ethernet(frame)
        if eth.ethertype != ETH_P_IP:
            raise RoceError("RoCEv2 frame", 12, f"ethertype 0x{eth.ethertype:04x} is not IPv4")
        ip, uoff = decode_ipv4(frame, off)
        if ip.protocol != IPPROTO_UDP:
            raise RoceError("RoCEv2 frame", off + 9, f"IP protocol {ip.protocol} is not UDP")
        udp, poff = decode_udp(frame, uoff)
    except InetError as e:
        raise RoceError("RoCEv2 frame", e.offset, f"{e.message_type}: {e.reason}") from e
    end = uoff + udp.length
    if udp.length < UDP_HLEN + BTH_LEN + ICRC_LEN:
        raise RoceError("RoCEv2 frame", uoff + 4, f"UDP length {udp.length} is too short for BTH and ICRC")
    ib, got = frame[poff : end - ICRC_LEN], frame[end - ICRC_LEN : end]
    want = icrc(frame[off:uoff], frame[uoff:poff], ib)
    ok = got == want
    if check_icrc and not ok:
        raise RoceError("RoCEv2 frame", end - ICRC_LEN, f"ICRC {got.hex()} does not match the computed {want.hex()}")
    return RoceFrame(eth, ip, udp, decode_packet(ib), got, ok)


# ------------------------------------------------------------------ RoCE v1 (Annex A16)


@dataclass(frozen=True)
class Grh:
    """The InfiniBand Global Route Header of a RoCE v1 frame (the IPv6 header's layout)."""

    sgid: bytes
    dgid: bytes
    paylen: int  # BTH up to and including the ICRC
    next_header: int = GRH_NEXT_BTH
    hop_limit: int = 64
    tclass: int = 0
    flow_label: int = 0

    def encode(self) -> bytes:
        if len(self.sgid) != 16 or len(self.dgid) != 16:
            raise RoceError("GRH", 8, "a GID is 16 bytes")
        if not 0 <= self.flow_label < 1 << 20 or not 0 <= self.tclass < 256:
            raise RoceError("GRH", 0, "traffic class is 8 bits, flow label 20")
        check_uint(self.paylen, 16, "payload length", "GRH", 4, RoceError)
        first = (6 << 28) | (self.tclass << 20) | self.flow_label
        return struct.pack("!IHBB16s16s", first, self.paylen, self.next_header, self.hop_limit, self.sgid, self.dgid)


def decode_grh(data: bytes | memoryview, offset: int = 0, cut: bool = False) -> tuple[Grh, int]:
    """The GRH at ``offset`` and the offset of what follows it. ``cut``: a capture's snap
    length kept only the start of the frame, so the payload length may run past it."""
    v = View(bytes(data[offset : offset + GRH_LEN]), "GRH", RoceError)
    v.need(0, GRH_LEN, "GRH")
    first = v.u32(0, "version/class/flow")
    if first >> 28 != 6:
        raise v.fail(0, f"IP version {first >> 28} is not 6")
    paylen = v.u16(4, "payload length")
    if offset + GRH_LEN + paylen > len(data) and not cut:
        raise v.fail(4, f"payload length {paylen} but only {len(data) - offset - GRH_LEN} bytes captured after the GRH")
    grh = Grh(v.raw(8, 16, "source GID"), v.raw(24, 16, "destination GID"), paylen, v.u8(6, "next header"), v.u8(7, "hop limit"),
              (first >> 20) & 0xFF, first & 0xFFFFF)  # fmt: skip
    return grh, offset + GRH_LEN


def icrc_v1(grh: bytes, ib: bytes | memoryview) -> bytes:
    """The 4 ICRC bytes of a RoCE v1 packet: ``grh`` as sent, ``ib`` BTH .. pad."""
    # traffic class, flow label and hop limit masked; the version stays (as rxe masks IPv6)
    masked = bytes((grh[0] | 0x0F,)) + b"\xff\xff\xff" + grh[4:7] + b"\xff" + grh[8:]
    head = bytes(ib[:4]) + b"\xff"  # BTH resv8a
    return _ICRC.pack(zlib.crc32(ib[5:], zlib.crc32(head, zlib.crc32(masked, zlib.crc32(b"\xff" * 8)))))


def encode_frame_v1(packet: RocePacket, sgid: bytes, dgid: bytes, *, src_mac: bytes = bytes(6), dst_mac: bytes = bytes(6),
                    vlan: int | None = None, hop_limit: int = 64, tclass: int = 0) -> bytes:  # fmt: skip
    """A complete RoCE v1 Ethernet frame carrying the packet, with its ICRC (and an 802.1Q
    tag when ``vlan`` is given)."""
    ib = packet.encode()
    grh = Grh(sgid, dgid, len(ib) + ICRC_LEN, hop_limit=hop_limit, tclass=tclass).encode()
    eth = dst_mac + src_mac + (struct.pack("!HH", 0x8100, vlan) if vlan is not None else b"") + struct.pack("!H", ETH_P_ROCE)
    return eth + grh + ib + icrc_v1(grh, ib)


__all__ = [
    "ROCE_V2_PORT", "ETH_HLEN", "Opcode", "Bth", "Reth", "Aeth", "AckKind", "NakCode", "RocePacket", "RoceFrame",
    "RoceError", "icrc", "encode_datagram", "decode_datagram", "encode_frame", "decode_frame", "decode_packet",
    "extension_headers", "ETH_P_ROCE", "GRH_LEN", "Grh", "decode_grh", "icrc_v1", "encode_frame_v1",
]  # fmt: skip
