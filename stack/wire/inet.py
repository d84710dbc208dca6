"""Ethernet, IPv4, IPv6, UDP and TCP headers: what carries RoCEv2 and CLC in a capture.

Only what smctop needs to write and read captures: Ethernet II (with one optional
802.1Q tag on decode), IPv4 without options on encode (options skipped on decode),
IPv6 without extension headers (the CLC handshake of an IPv6 TCP connection), UDP and
TCP (options kept as raw bytes). Checksums are computed on encode, TCP's over the pseudo
header of either family; on decode they are reported, not enforced, because loopback
captures carry partial checksums (CHECKSUM_PARTIAL offload).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ._base import View, WireError

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8  # a QinQ service tag (0x9100 on older switches)
_VLAN_TAGS = (ETH_P_8021Q, ETH_P_8021AD, 0x9100)
IPPROTO_TCP = 6
IPPROTO_UDP = 17
ETH_HLEN = 14
IPV4_HLEN = 20
IPV6_HLEN = 40
UDP_HLEN = 8
TCP_HLEN = 20

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# The SMC capability TCP option: kind 254 (RFC 6994 experimental), length 6, ExID
# 0xE2D4C3D9 ("SMCR"), preceded by two NOPs as Linux writes it.
SMC_TCP_OPTION = bytes([0x01, 0x01, 0xFE, 0x06, 0xE2, 0xD4, 0xC3, 0xD9])


class InetError(WireError):
    codec = "inet"


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class Ethernet:
    dst: bytes = bytes(6)
    src: bytes = bytes(6)
    ethertype: int = ETH_P_IP
    vlan: int | None = None  # 802.1Q VLAN id, decode only

    def encode(self) -> bytes:
        if len(self.dst) != 6 or len(self.src) != 6:
            raise InetError("Ethernet", 0, "MAC addresses are 6 bytes")
        return bytes(self.dst) + bytes(self.src) + struct.pack("!H", self.ethertype)


def decode_ethernet(frame: bytes) -> tuple[Ethernet, int]:
    """Return the header and the offset of its payload."""
    v = View(frame, "Ethernet", InetError)
    ethertype = v.u16(12, "ethertype")
    vlan, off = None, ETH_HLEN
    while ethertype in _VLAN_TAGS:  # 802.1Q, and 802.1ad (QinQ) outer tags: the innermost names the VLAN
        vlan = v.u16(off, "VLAN tag") & 0x0FFF
        ethertype = v.u16(off + 2, "ethertype")
        off += 4
    return Ethernet(v.raw(0, 6, "dst"), v.raw(6, 6, "src"), ethertype, vlan), off


@dataclass(frozen=True)
class IPv4:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    protocol: int
    total_length: int
    ident: int = 0
    dont_fragment: bool = True
    ttl: int = 64
    tos: int = 0
    checksum: int = 0  # as read on decode; computed on encode
    checksum_ok: bool = True  # decode: whether the header checksum verified
    header_length: int = IPV4_HLEN

    def encode(self) -> bytes:
        hdr = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                self.tos,
                self.total_length,
                self.ident,
                0x4000 if self.dont_fragment else 0,
                self.ttl,
                self.protocol,
                0,
                ipaddress.IPv4Address(self.src).packed,
                ipaddress.IPv4Address(self.dst).packed,
            )
        )
        hdr[10:12] = struct.pack("!H", internet_checksum(bytes(hdr)))
        return bytes(hdr)


@dataclass(frozen=True)
class IPv6:
    """The fixed IPv6 header (RFC 8200); extension headers are not written or followed."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def encode(self) -> bytes:
        if not 0 <= self.flow_label < 1 << 20 or not 0 <= self.traffic_class < 256:
            raise InetError("IPv6", 0, "traffic class is 8 bits, flow label 20")
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return struct.pack("!IHBB16s16s", first, self.payload_length, self.next_header, self.hop_limit,
                           ipaddress.IPv6Address(self.src).packed, ipaddress.IPv6Address(self.dst).packed)  # fmt: skip


def decode_ipv6(data: bytes, offset: int = 0, cut: bool = False) -> tuple[IPv6, int]:
    """Return the fixed header and the offset of what follows it (``cut`` as for IPv4)."""
    v = View(data[offset:], "IPv6", InetError)
    first = v.u32(0, "version/class/flow")
    if first >> 28 != 6:
        raise v.fail(0, f"IP version {first >> 28} is not 6")
    v.need(0, IPV6_HLEN, "IPv6 header")
    plen = v.u16(4, "payload length")
    if IPV6_HLEN + plen > len(v) and not cut:
        raise v.fail(4, f"payload length {plen} but only {len(v) - IPV6_HLEN} bytes captured after the header")
    hdr = IPv6(ipaddress.IPv6Address(v.raw(8, 16, "src")), ipaddress.IPv6Address(v.raw(24, 16, "dst")), v.u8(6, "next header"),
               plen, v.u8(7, "hop limit"), (first >> 20) & 0xFF, first & 0xFFFFF)  # fmt: skip
    return hdr, offset + IPV6_HLEN


def _pseudo_header(src, dst, protocol: int, length: int) -> bytes:
    """The checksum pseudo header of TCP and UDP: RFC 793's for IPv4, RFC 8200's for IPv6."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise InetError("TCP", 16, f"source {s} and destination {d} are not of one family")
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, protocol, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, protocol)


def decode_ipv4(data: bytes, offset: int = 0, cut: bool = False) -> tuple[IPv4, int]:
    """Return the header and the offset of its payload (within ``data``). ``cut``: the capture
    kept only the start of the packet (a snap length), so the total length may run past it."""
    v = View(data[offset:], "IPv4", InetError)
    b0 = v.u8(0, "version/IHL")
    if b0 >> 4 != 4:
        raise v.fail(0, f"IP version {b0 >> 4} is not 4")
    ihl = (b0 & 0x0F) * 4
    if ihl < IPV4_HLEN:
        raise v.fail(0, f"IHL {ihl} bytes is shorter than 20")
    v.need(0, ihl, "IPv4 header")
    total = v.u16(2, "total length")
    if total < ihl:
        raise v.fail(2, f"total length {total} is shorter than the header ({ihl})")
    if total > len(v) and not cut:
        raise v.fail(2, f"total length {total} but only {len(v)} bytes captured")
    frag = v.u16(6, "flags/fragment")
    hdr = IPv4(
        src=ipaddress.IPv4Address(v.raw(12, 4, "src")),
        dst=ipaddress.IPv4Address(v.raw(16, 4, "dst")),
        protocol=v.u8(9, "protocol"),
        total_length=total,
        ident=v.u16(4, "identification"),
        dont_fragment=bool(frag & 0x4000),
        ttl=v.u8(8, "ttl"),
        tos=v.u8(1, "tos"),
        checksum=v.u16(10, "checksum"),
        checksum_ok=internet_checksum(v.buf[:ihl]) == 0,
        header_length=ihl,
    )
    return hdr, offset + ihl


@dataclass(frozen=True)
class Udp:
    sport: int
    dport: int
    length: int
    checksum: int = 0

    def encode(self) -> bytes:
        return struct.pack("!HHHH", self.sport, self.dport, self.length, self.checksum)


def decode_udp(data: bytes, offset: int = 0, cut: bool = False) -> tuple[Udp, int]:
    v = View(data[offset:], "UDP", InetError)
    hdr = Udp(v.u16(0, "source port"), v.u16(2, "destination port"), v.u16(4, "length"), v.u16(6, "checksum"))
    if hdr.length < UDP_HLEN or (hdr.length > len(v) and not cut):
        raise v.fail(4, f"UDP length {hdr.length} does not fit the {len(v)} bytes after the IP header")
    return hdr, offset + UDP_HLEN


@dataclass(frozen=True)
class Tcp:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 65535
    options: bytes = b""
    checksum: int = 0

    @property
    def header_length(self) -> int:
        return TCP_HLEN + len(self.options)

    def encode(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address, dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
               payload: bytes) -> bytes:  # fmt: skip
        if len(self.options) % 4:
            raise InetError("TCP", 20, f"options of {len(self.options)} bytes are not padded to 4")
        off = (self.header_length // 4) << 12
        hdr = struct.pack("!HHIIHHHH", self.sport, self.dport, self.seq, self.ack, off | self.flags, self.window, 0, 0)
        seg = hdr + self.options + payload
        csum = internet_checksum(_pseudo_header(src, dst, IPPROTO_TCP, len(seg)) + seg)
        return seg[:16] + struct.pack("!H", csum) + seg[18:]


def decode_tcp(data: bytes, offset: int = 0) -> tuple[Tcp, int]:
    v = View(data[offset:], "TCP", InetError)
    off_flags = v.u16(12, "data offset/flags")
    hlen = (off_flags >> 12) * 4
    if hlen < TCP_HLEN:
        raise v.fail(12, f"data offset {hlen} bytes is shorter than 20")
    v.need(0, hlen, "TCP header")
    hdr = Tcp(
        sport=v.u16(0, "source port"),
        dport=v.u16(2, "destination port"),
        seq=v.u32(4, "sequence number"),
        ack=v.u32(8, "acknowledgment number"),
        flags=off_flags & 0x01FF,
        window=v.u16(14, "window"),
        options=v.raw(TCP_HLEN, hlen - TCP_HLEN, "options"),
        checksum=v.u16(16, "checksum"),
    )
    return hdr, offset + hlen


def has_smc_option(options: bytes) -> bool:
    """True when TCP options carry kind 254 with the SMC ExID (how the kernel parses it)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return False
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options):
            return False
        size = options[i + 1]
        if size < 2 or i + size > len(options):
            return False
        if kind == 254 and size >= 6 and size % 2 == 0 and options[i + 2 : i + 6] == SMC_TCP_OPTION[4:]:
            return True
        i += size
    return False


def ipv4_udp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    ident: int = 0,
    ttl: int = 64,
    tos: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    udp = Udp(sport, dport, UDP_HLEN + len(payload))
    ip = IPv4(src, dst, IPPROTO_UDP, IPV4_HLEN + udp.length, ident, dont_fragment, ttl, tos)
    return Ethernet(dst_mac, src_mac).encode() + ip.encode() + udp.encode() + payload


def ipv4_tcp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    tcp: Tcp,
    payload: bytes = b"",
    *,
    ident: int = 0,
    ttl: int = 64,
) -> bytes:
    seg = tcp.encode(src, dst, payload)
    ip = IPv4(src, dst, IPPROTO_TCP, IPV4_HLEN + len(seg), ident, True, ttl)
    return Ethernet(dst_mac, src_mac).encode() + ip.encode() + seg


def ipv6_tcp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address,
    tcp: Tcp,
    payload: bytes = b"",
    *,
    hop_limit: int = 64,
) -> bytes:
    seg = tcp.encode(src, dst, payload)
    ip = IPv6(src, dst, IPPROTO_TCP, len(seg), hop_limit)
    return Ethernet(dst_mac, src_mac, ETH_P_IPV6).encode() + ip.encode() + seg


def ip_tcp_frame(src_mac: bytes, dst_mac: bytes, src, dst, tcp: Tcp, payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP or Ethernet/IPv6/TCP frame, as the addresses are (IPv4-mapped
    IPv6 addresses are IPv4, as on the wire)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 6 and s.ipv4_mapped is not None and d.version == 6 and d.ipv4_mapped is not None:
        s, d = s.ipv4_mapped, d.ipv4_mapped
    if s.version == 4:
        return ipv4_tcp_frame(src_mac, dst_mac, s, d, tcp, payload)
    return ipv6_tcp_frame(src_mac, dst_mac, s, d, tcp, payload)
