"""RoCEv2 and inet codec edges that the known-answer and ICRC tests leave open, found by
mutation testing (docs/testing.md, "Mutation testing"): each BTH bit, the extension headers
of each opcode family, pad handling, the frame-level errors, IPv4/IPv6/UDP/TCP header fields
and checksums, the SMC TCP option parser. Expected bytes are written by hand (RFC 791/793/
8200, IBA volume 1 chapter 9); the IPv4 header checksum vector is the textbook one."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from stack.wire import inet, roce

A = ipaddress.IPv4Address("10.2.0.1")
B = ipaddress.IPv4Address("10.2.0.2")


def err(exc, fn, *args, **kw):
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    return e.value


# ------------------------------------------------------------------ BTH and extension headers


def test_bth_every_bit():
    b = roce.Bth(0x0A, 0x123456, 0xABCDEF, se=True, ackreq=True, pkey=0x8001, migreq=True, tver=0x0F, fecn=True, becn=True)
    want = bytes([0x0A, 0x80 | 0x40 | 0x20 | 0x0F, 0x80, 0x01, 0xC0, 0x12, 0x34, 0x56, 0x80, 0xAB, 0xCD, 0xEF])
    assert b.pack(2) == want
    v = roce.decode_bth(roce.View(want, "x", roce.RoceError))
    assert v == roce.Bth(0x0A, 0x123456, 0xABCDEF, True, True, 2, 0x8001, True, 0x0F, True, True)
    plain = roce.Bth(0x04, 1, 2).pack(0)
    assert plain == bytes([0x04, 0, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0, 0, 2])
    d = roce.decode_bth(roce.View(plain, "x", roce.RoceError))
    assert not (d.se or d.ackreq or d.migreq or d.fecn or d.becn) and d.pad == 0 and d.tver == 0
    only_becn = roce.decode_bth(roce.View(plain[:4] + b"\x40" + plain[5:], "x", roce.RoceError))
    assert only_becn.becn and not only_becn.fecn
    only_mig = roce.decode_bth(roce.View(plain[:1] + b"\x40" + plain[2:], "x", roce.RoceError))
    assert only_mig.migreq and not only_mig.se and only_mig.pad == 0


@pytest.mark.parametrize(
    "kw, offset, words",
    [
        ({"dest_qp": 1 << 24}, 5, "DestQP=16777216 does not fit in 24 bits"),
        ({"dest_qp": 24 << 24}, 5, "DestQP=402653184 does not fit in 24 bits"),
        ({"psn": 1 << 24}, 9, "PSN=16777216 does not fit in 24 bits"),
        ({"tver": 16}, 1, "transport version=16 does not fit in 4 bits"),
        ({"opcode": 256}, 0, "opcode=256 does not fit in 8 bits"),
        ({"opcode": -1}, 0, "opcode=-1 does not fit in 8 bits"),
        ({"pkey": 1 << 16}, 2, "P_Key=65536 does not fit in 16 bits"),
    ],
)
def test_bth_pack_names_the_field_that_does_not_fit(kw, offset, words):
    fields = {"opcode": 4, "dest_qp": 1, "psn": 1, **kw}
    e = err(roce.RoceError, roce.Bth(**fields).pack, 0)
    assert (e.offset, e.reason) == (offset, words)


def test_bth_encode_into_checks_pad_and_offset():
    b = roce.Builder(20, "RoCE x", roce.RoceError)
    roce.Bth(0x11, 7, 9, pad=3, ackreq=True).encode_into(b, 4)
    assert b.bytes()[4:16] == bytes([0x11, 0x30, 0xFF, 0xFF, 0, 0, 0, 7, 0x80, 0, 0, 9])
    e = err(roce.RoceError, roce.Bth(0x11, 7, 9, pad=4).encode_into, roce.Builder(12, "RoCE x", roce.RoceError))
    assert (e.offset, e.reason) == (1, "pad count=4 does not fit in 2 bits")
    # At an odd offset too (a BTH after a header of odd length).
    b = roce.Builder(13, "RoCE x", roce.RoceError)
    roce.Bth(0x04, 1, 2, se=True, pad=1).encode_into(b, 1)
    assert b.bytes() == bytes([0, 0x04, 0x90, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0, 0, 2])
    e = err(roce.RoceError, roce.Bth(0x04, 1, 2, pad=4).encode_into, roce.Builder(13, "RoCE x", roce.RoceError), 1)
    assert e.offset == 2


def test_bth_encode_into_at_every_offset_is_pack():
    for bth in (roce.Bth(0x0A, 0x123456, 0xABCDEF, se=True, migreq=True, pad=2, tver=1, fecn=True, ackreq=True, pkey=0x1234),
                roce.Bth(0x04, 1, 2, becn=True), roce.Bth(0x04, 1, 2, fecn=True), roce.Bth(0x04, 1, 2, se=True, migreq=True)):  # fmt: skip
        for off in range(13):
            b = roce.Builder(off + 12, "RoCE x", roce.RoceError)
            bth.encode_into(b, off)
            assert b.bytes() == bytes(off) + bth.pack(bth.pad), (bth, off)
    # SE is bit 7 of byte 1 only; the transport version's low bit is not it.
    d = roce.decode_bth(roce.View(roce.Bth(0x04, 1, 2, tver=1).pack(0), "x", roce.RoceError))
    assert not d.se and d.tver == 1


def test_opcode_numbers_are_the_ibas():
    # IBA volume 1 table 38 (RC 0x00-0x17, UC 0x20 family, UD 0x60 family) and the RoCEv2 CNP.
    assert {o.name: o.value for o in roce.Opcode} == {
        "SEND_FIRST": 0x00, "SEND_MIDDLE": 0x01, "SEND_LAST": 0x02, "SEND_LAST_WITH_IMMEDIATE": 0x03, "SEND_ONLY": 0x04,
        "SEND_ONLY_WITH_IMMEDIATE": 0x05, "RDMA_WRITE_FIRST": 0x06, "RDMA_WRITE_MIDDLE": 0x07, "RDMA_WRITE_LAST": 0x08,
        "RDMA_WRITE_LAST_WITH_IMMEDIATE": 0x09, "RDMA_WRITE_ONLY": 0x0A, "RDMA_WRITE_ONLY_WITH_IMMEDIATE": 0x0B,
        "RDMA_READ_REQUEST": 0x0C, "RDMA_READ_RESPONSE_FIRST": 0x0D, "RDMA_READ_RESPONSE_MIDDLE": 0x0E,
        "RDMA_READ_RESPONSE_LAST": 0x0F, "RDMA_READ_RESPONSE_ONLY": 0x10, "ACKNOWLEDGE": 0x11, "ATOMIC_ACKNOWLEDGE": 0x12,
        "COMPARE_SWAP": 0x13, "FETCH_ADD": 0x14, "SEND_LAST_WITH_INVALIDATE": 0x16, "SEND_ONLY_WITH_INVALIDATE": 0x17,
        "UC_SEND_ONLY": 0x24, "UD_SEND_ONLY": 0x64, "UD_SEND_ONLY_WITH_IMMEDIATE": 0x65, "CNP": 0x81,
    }  # fmt: skip
    # The invalidate sends carry a 4-byte IETH.
    inv = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY_WITH_INVALIDATE, 1, 2), other=b"\x01\x02\x03\x04", payload=b"abcd")
    data = inv.encode()
    assert data[12:16] == b"\x01\x02\x03\x04" and data[16:] == b"abcd" and roce.decode_packet(data) == inv
    e = err(roce.RoceError, roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY_WITH_IMMEDIATE, 1, 2)).encode)
    assert (e.offset, e.reason) == (12, "opcode 0x05 takes extension headers ('imm',)")


def test_aeth_kinds():
    assert roce.Aeth.ack(5) == roce.Aeth(0x1F, 5)
    assert roce.Aeth.ack(5, credits=3).value == 3
    r = roce.Aeth.rnr_nak(6, 0x12)
    assert r.syndrome == 0x32 and r.kind == roce.AckKind.RNR_NAK and r.value == 0x12
    n = roce.Aeth.nak(7, roce.NakCode.REMOTE_ACCESS_ERROR)
    assert n.syndrome == 0x62 and n.kind == roce.AckKind.NAK and n.value == 2


def test_packets_of_each_extension_family():
    reth = roce.Reth(0x1122334455667788, 0xAABBCCDD, 0x100)
    p = roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE, 1, 2), reth=reth, imm=0x01020304, payload=b"abcde")
    data = p.encode()
    assert data[1] == 0x30  # pad 3
    assert data[12:28] == bytes.fromhex("1122334455667788aabbccdd00000100") and data[28:32] == bytes([1, 2, 3, 4])
    assert data[32:] == b"abcde\0\0\0"
    assert roce.decode_packet(data) == roce.RocePacket(
        roce.Bth(roce.Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE, 1, 2, pad=3), reth=reth, imm=0x01020304, payload=b"abcde"
    )
    ud = roce.RocePacket(roce.Bth(roce.Opcode.UD_SEND_ONLY_WITH_IMMEDIATE, 1, 2), other=bytes(range(8)), imm=9, payload=b"1234")
    data = ud.encode()
    assert data[12:20] == bytes(range(8)) and data[20:24] == bytes([0, 0, 0, 9]) and data[24:] == b"1234"
    assert roce.decode_packet(data) == ud
    aa = roce.RocePacket(roce.Bth(roce.Opcode.ATOMIC_ACKNOWLEDGE, 1, 2), aeth=roce.Aeth(0x1F, 0x123456), other=bytes(range(8)))
    data = aa.encode()
    assert data[12:16] == bytes([0x1F, 0x12, 0x34, 0x56]) and data[16:24] == bytes(range(8))
    assert roce.decode_packet(data) == aa
    assert roce.extension_headers(roce.Opcode.COMPARE_SWAP) == ("atomiceth",)
    cut = roce.decode_packet(roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 1, 2), payload=b"xy").encode()[:13], pad_cut=True)
    assert cut.payload == b"x" and cut.bth.pad == 2
    e = err(roce.RoceError, roce.decode_packet, roce.Bth(roce.Opcode.SEND_ONLY, 1, 2, pad=3).pack(3) + b"ab")
    assert (e.offset, e.reason) == (1, "pad count 3 exceeds the 2 payload bytes")
    e = err(roce.RoceError, roce.decode_packet, roce.Bth(roce.Opcode.RDMA_WRITE_ONLY, 1, 2).pack(0) + bytes(15))
    assert (e.offset, e.message_type) == (12, "RoCE RDMA_WRITE_ONLY") and e.reason.startswith("RETH needs bytes 12..27")


def test_packet_header_errors():
    def bad(packet, offset, reason):
        e = err(roce.RoceError, packet.encode)
        assert (e.offset, e.reason) == (offset, reason)

    bad(roce.RocePacket(roce.Bth(0x15, 1, 2)), 0, "unsupported BTH opcode 0x15")
    bad(roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 1, 2), imm=1), 12, "opcode 0x04 takes extension headers none")
    bad(roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, 1, 2)), 12, "opcode 0x11 takes extension headers ('aeth',)")
    bad(roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_FIRST, 1, 2)), 12, "opcode 0x06 takes extension headers ('reth',)")
    bad(roce.RocePacket(roce.Bth(roce.Opcode.UD_SEND_ONLY, 1, 2), other=bytes(4)), 12, "opcode 0x64 needs 8 bytes of other headers")
    bad(
        roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, 1, 2), aeth=roce.Aeth(0x100, 0)),
        12,
        "an extension header field does not fit: Aeth(syndrome=256, msn=0)",
    )
    bad(
        roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, 1, 2), aeth=roce.Aeth(0, 1 << 24)),
        12,
        "an extension header field does not fit: Aeth(syndrome=0, msn=16777216)",
    )
    bad(roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY_WITH_IMMEDIATE, 1, 2), imm=1 << 32), 12, "an extension header field does not fit: 4294967296")
    e = err(roce.RoceError, roce.decode_packet, bytes([0x15]) + bytes(11))
    assert (e.offset, e.reason, e.message_type) == (0, "unsupported BTH opcode 0x15", "RoCE opcode 0x15")


# ------------------------------------------------------------------ datagrams and frames


def test_datagram_icrc_and_errors():
    p = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x11, 0x22), payload=b"hello")
    dg = roce.encode_datagram(p, A, B, 49152)
    frame = roce.encode_frame(p, A, B, 49152)
    assert frame[-len(dg) :] == dg  # the datagram path and the frame path agree on the ICRC
    assert roce.decode_datagram(dg, A, B, 49152).payload == b"hello"
    e = err(roce.RoceError, roce.decode_datagram, dg, A, B, 49153)
    assert e.offset == len(dg) - 4 and e.reason.startswith(f"ICRC {dg[-4:].hex()} does not match the computed ")
    assert roce.decode_datagram(dg, A, B, 49153, check_icrc=False).payload == b"hello"
    e = err(roce.RoceError, roce.decode_datagram, dg[:15], A, B, 1)
    assert (e.offset, e.reason) == (0, "15 bytes: too short for BTH and ICRC (16)")
    other_id = roce.encode_datagram(p, A, B, 49152, ident=7)
    assert other_id[:-4] == dg[:-4] and other_id[-4:] != dg[-4:]
    assert roce.encode_datagram(p, A, B, 49152, dont_fragment=False)[-4:] != dg[-4:]


def test_frame_fields_and_errors():
    p = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x11, 0x22), payload=b"hiya")
    frame = roce.encode_frame(p, A, B, 50000, src_mac=b"\x02" * 6, dst_mac=b"\x04" * 6, ident=9, ttl=3, tos=0x20, dont_fragment=False)
    assert frame[:14] == b"\x04" * 6 + b"\x02" * 6 + b"\x08\x00"
    assert frame[15] == 0x20 and frame[18:20] == b"\0\x09" and frame[20:22] == b"\0\0" and frame[22] == 3 and frame[23] == 17
    assert frame[34:38] == struct.pack("!HH", 50000, 4791) and struct.unpack("!H", frame[38:40])[0] == 8 + 12 + 4 + 4
    f = roce.decode_frame(frame, check_icrc=True)
    assert f.icrc_ok and f.packet.payload == b"hiya" and f.ip.ttl == 3 and f.udp.sport == 50000 and f.icrc == frame[-4:]
    broken = frame[:-1] + bytes([frame[-1] ^ 1])
    assert not roce.decode_frame(broken).icrc_ok
    e = err(roce.RoceError, roce.decode_frame, broken, check_icrc=True)
    assert e.offset == len(frame) - 4 and "does not match the computed" in e.reason
    e = err(roce.RoceError, roce.decode_frame, frame[:12] + b"\x86\xdd" + frame[14:])
    assert (e.offset, e.reason) == (12, "ethertype 0x86dd is not IPv4")
    tcp = bytearray(frame)
    tcp[23] = 6
    e = err(roce.RoceError, roce.decode_frame, bytes(tcp))
    assert (e.offset, e.reason) == (23, "IP protocol 6 is not UDP")
    e = err(roce.RoceError, roce.decode_frame, frame[:14] + b"\x65" + frame[15:])
    assert (e.offset, e.reason) == (0, "IPv4: IP version 6 is not 4")
    short = bytearray(frame)
    short[38:40] = (23).to_bytes(2, "big")
    e = err(roce.RoceError, roce.decode_frame, bytes(short))
    assert (e.offset, e.reason) == (38, "UDP length 23 is too short for BTH and ICRC")
    short[38:40] = (24).to_bytes(2, "big")
    assert roce.decode_frame(bytes(short)).packet.bth.opcode == roce.Opcode.SEND_ONLY


# ------------------------------------------------------------------ inet


def test_internet_checksum_vectors():
    assert inet.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D  # RFC 1071 section 3
    assert inet.internet_checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte
    assert inet.internet_checksum(b"\xff\xff\x00\x01") == 0xFFFE  # the carry folds back in


def test_ipv4_textbook_header():
    ip = inet.IPv4(ipaddress.IPv4Address("192.168.0.1"), ipaddress.IPv4Address("192.168.0.199"), 17, 0x73)
    data = ip.encode()
    assert data == bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
    d, off = inet.decode_ipv4(b"xx" + data + bytes(0x73 - 20), 2)
    assert off == 22 and d.checksum == 0xB861 and d.checksum_ok and d.dont_fragment and d.ttl == 64 and d.header_length == 20
    bad = data[:10] + b"\0\0" + data[12:]
    assert not inet.decode_ipv4(bad + bytes(0x73 - 20))[0].checksum_ok
    nodf = inet.IPv4(ip.src, ip.dst, 17, 20, ident=0x1234, dont_fragment=False, ttl=1, tos=0xB8).encode()
    d = inet.decode_ipv4(nodf)[0]
    assert (d.ident, d.dont_fragment, d.ttl, d.tos, d.protocol, d.total_length) == (0x1234, False, 1, 0xB8, 17, 20)


def test_ipv4_decode_rules():
    hdr = bytearray(inet.IPv4(A, B, 17, 28).encode()) + bytes(8)
    opts = bytes([0x46]) + hdr[1:2] + (32).to_bytes(2, "big") + hdr[4:20] + b"\x01\x01\x01\x00" + bytes(8)
    d, off = inet.decode_ipv4(opts)
    assert off == 24 and d.header_length == 24 and d.src == A and d.dst == B
    for data, offset, reason in [
        (b"\x65" + hdr[1:], 0, "IP version 6 is not 4"),
        (b"\x44" + hdr[1:], 0, "IHL 16 bytes is shorter than 20"),
        (hdr[:2] + (19).to_bytes(2, "big") + hdr[4:], 2, "total length 19 is shorter than the header (20)"),
        (hdr[:2] + (29).to_bytes(2, "big") + hdr[4:], 2, "total length 29 but only 28 bytes captured"),
    ]:
        e = err(inet.InetError, inet.decode_ipv4, bytes(data))
        assert (e.offset, e.reason) == (offset, reason)
    assert inet.decode_ipv4(bytes(hdr[:2] + (29).to_bytes(2, "big") + hdr[4:]), cut=True)[0].total_length == 29
    assert inet.decode_ipv4(bytes(hdr[:2] + (20).to_bytes(2, "big") + hdr[4:]))[1] == 20


def test_ipv6_header():
    s, d = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2")
    ip = inet.IPv6(s, d, 6, 8, hop_limit=7, traffic_class=0xAB, flow_label=0xCDEF1)
    data = ip.encode()
    assert data[:8] == bytes([0x6A, 0xBC, 0xDE, 0xF1, 0, 8, 6, 7]) and data[8:24] == s.packed and data[24:40] == d.packed
    assert inet.decode_ipv6(b"z" + data + bytes(8), 1) == (ip, 41)
    e = err(inet.InetError, inet.decode_ipv6, data)
    assert (e.offset, e.reason) == (4, "payload length 8 but only 0 bytes captured after the header")
    assert inet.decode_ipv6(data, cut=True)[0].payload_length == 8
    e = err(inet.InetError, inet.decode_ipv6, b"\x45" + data[1:] + bytes(8))
    assert (e.offset, e.reason) == (0, "IP version 4 is not 6")
    e = err(inet.InetError, inet.decode_ipv6, data[:39])
    assert e.offset == 0 and e.reason.startswith("IPv6 header needs bytes 0..39")
    for bad in ({"flow_label": 1 << 20}, {"traffic_class": 256}, {"flow_label": -1}):
        e = err(inet.InetError, inet.IPv6(s, d, 6, 0, **bad).encode)
        assert (e.offset, e.reason) == (0, "traffic class is 8 bits, flow label 20")
    assert inet.IPv6(s, d, 6, 0, traffic_class=255, flow_label=(1 << 20) - 1).encode()[:4] == b"\x6f\xff\xff\xff"


def test_ethernet_and_vlan():
    eth = inet.Ethernet(b"\x01" * 6, b"\x02" * 6, 0x86DD)
    assert eth.encode() == b"\x01" * 6 + b"\x02" * 6 + b"\x86\xdd"
    assert inet.decode_ethernet(eth.encode()) == (eth, 14)
    tagged = b"\x01" * 6 + b"\x02" * 6 + b"\x81\x00" + b"\xf0\x64" + b"\x08\x00"
    e, off = inet.decode_ethernet(tagged)
    assert (e.vlan, e.ethertype, off) == (0x064, 0x0800, 18)
    # QinQ (802.1ad service tag outside, 802.1Q inside): the customer VLAN, the inner ethertype
    qinq = b"\x01" * 6 + b"\x02" * 6 + b"\x88\xa8" + b"\x00\x0a" + b"\x81\x00" + b"\x00\xc8" + b"\x08\x00"
    e, off = inet.decode_ethernet(qinq)
    assert (e.vlan, e.ethertype, off) == (200, 0x0800, 22)
    with pytest.raises(inet.InetError, match="MAC addresses are 6 bytes"):
        inet.Ethernet(b"\x01" * 5).encode()
    with pytest.raises(inet.InetError, match="MAC addresses are 6 bytes"):
        inet.Ethernet(src=b"\x01" * 7).encode()


def test_udp_header():
    u = inet.Udp(1, 4791, 10, 0xBEEF)
    assert u.encode() == bytes.fromhex("000112b7000abeef")
    assert inet.decode_udp(b"q" + u.encode() + b"ab", 1) == (u, 9)
    for length in (7, 11):
        e = err(inet.InetError, inet.decode_udp, inet.Udp(1, 2, length).encode() + b"ab")
        assert (e.offset, e.reason) == (4, f"UDP length {length} does not fit the 10 bytes after the IP header")
    assert inet.decode_udp(inet.Udp(1, 2, 11).encode() + b"ab", cut=True)[0].length == 11
    assert inet.decode_udp(inet.Udp(1, 2, 8).encode())[0].length == 8


def test_tcp_segments_and_checksums():
    t = inet.Tcp(0x1234, 0x5678, 0x01020304, 0x0A0B0C0D, inet.TCP_SYN | inet.TCP_ACK, window=0x4000, options=inet.SMC_TCP_OPTION)
    seg = t.encode(A, B, b"data!")
    assert seg[:12] == bytes.fromhex("12345678010203040a0b0c0d") and seg[12:14] == bytes([0x70, 0x12]) and seg[14:16] == b"\x40\x00"
    assert seg[18:20] == b"\0\0" and seg[20:28] == inet.SMC_TCP_OPTION and seg[28:] == b"data!"
    pseudo = A.packed + B.packed + bytes([0, 6]) + len(seg).to_bytes(2, "big")
    assert inet.internet_checksum(pseudo + seg) == 0
    d, off = inet.decode_tcp(b"pp" + seg, 2)
    assert off == 30 and d == inet.Tcp(0x1234, 0x5678, 0x01020304, 0x0A0B0C0D, 0x12, 0x4000, inet.SMC_TCP_OPTION, d.checksum)
    assert d.checksum == int.from_bytes(seg[16:18], "big")
    s6, d6 = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2")
    seg6 = inet.Tcp(1, 2, 3, 4, inet.TCP_FIN | 0x100).encode(s6, d6, b"x")
    pseudo6 = s6.packed + d6.packed + len(seg6).to_bytes(4, "big") + bytes([0, 0, 0, 6])
    assert inet.internet_checksum(pseudo6 + seg6) == 0 and inet.decode_tcp(seg6)[0].flags == 0x101
    e = err(inet.InetError, inet.Tcp(1, 2, 3, 4, 0, options=b"\x01").encode, A, B, b"")
    assert (e.offset, e.reason) == (20, "options of 1 bytes are not padded to 4")
    e = err(inet.InetError, inet.Tcp(1, 2, 3, 4, 0).encode, A, s6, b"")
    assert (e.offset, e.reason) == (16, "source 10.2.0.1 and destination fd00::1 are not of one family")
    short = seg[:12] + bytes([0x40, 0x12]) + seg[14:]
    e = err(inet.InetError, inet.decode_tcp, short)
    assert (e.offset, e.reason) == (12, "data offset 16 bytes is shorter than 20")
    e = err(inet.InetError, inet.decode_tcp, seg[:24])
    assert e.offset == 0 and e.reason.startswith("TCP header needs bytes 0..27")


@pytest.mark.parametrize(
    "options, found",
    [
        (inet.SMC_TCP_OPTION, True),
        (bytes([0xFE, 0x06, 0xE2, 0xD4, 0xC3, 0xD9]), True),
        (bytes([0xFE, 0x08, 0xE2, 0xD4, 0xC3, 0xD9, 0, 0]), True),  # longer, even
        (bytes([0xFE, 0x07, 0xE2, 0xD4, 0xC3, 0xD9, 0]), False),  # odd length
        (bytes([0xFE, 0x04, 0xE2, 0xD4]), False),  # too short for the ExID
        (bytes([0xFE, 0x06, 0xE2, 0xD4, 0xC3, 0xC4]), False),  # SMCD ExID
        (bytes([0xFD, 0x06, 0xE2, 0xD4, 0xC3, 0xD9]), False),  # another kind
        (bytes([0x00]) + inet.SMC_TCP_OPTION, False),  # end of options first
        (bytes([0x02, 0x04, 0x05, 0xB4]) + inet.SMC_TCP_OPTION, True),  # after an MSS option
        (bytes([0x02, 0x01]) + inet.SMC_TCP_OPTION, False),  # a length below 2 stops the parse
        (bytes([0x02, 0x0C]) + inet.SMC_TCP_OPTION, False),  # a length beyond the options
        (bytes([0x02, 0x0A]) + inet.SMC_TCP_OPTION, False),  # a length exactly to the end swallows it
        (bytes([0x01, 0x02]), False),  # a kind with no length byte
        (bytes([0x01]) + inet.SMC_TCP_OPTION[2:], True),  # one NOP before it
        (bytes([0x04, 0x02]) + inet.SMC_TCP_OPTION[2:], True),  # after SACK permitted (2 bytes)
        (bytes([0x00, 0x02]) + inet.SMC_TCP_OPTION[2:], False),  # after the end of the options
        (bytes([0xFE, 0x08, 0xE2, 0xD4, 0xC3, 0xD9]), False),  # its length runs past the options
        (b"", False),
    ],
)
def test_smc_tcp_option(options, found):
    assert inet.has_smc_option(options) is found


def test_frame_helpers():
    t = inet.Tcp(1, 2, 3, 4, inet.TCP_SYN)
    f4 = inet.ip_tcp_frame(b"\x02" * 6, b"\x04" * 6, "::ffff:10.2.0.1", "::ffff:10.2.0.2", t, b"p")
    assert f4[12:14] == b"\x08\x00" and f4[26:34] == A.packed + B.packed and f4[-1:] == b"p"
    ip, off = inet.decode_ipv4(f4, 14)
    assert ip.protocol == 6 and ip.total_length == 20 + 20 + 1 and ip.ttl == 64
    f6 = inet.ip_tcp_frame(b"\x02" * 6, b"\x04" * 6, "fd00::1", "fd00::2", t)
    assert f6[12:14] == b"\x86\xdd" and inet.decode_ipv6(f6, 14)[0].payload_length == 20
    mixed = inet.ip_tcp_frame(b"\x02" * 6, b"\x04" * 6, "::ffff:10.2.0.1", "fd00::2", inet.Tcp(1, 2, 3, 4, 0))
    assert mixed[12:14] == b"\x86\xdd"
    u = inet.ipv4_udp_frame(b"\x02" * 6, b"\x04" * 6, A, B, 5, 6, b"xyz", ident=3, ttl=9, tos=4, dont_fragment=False)
    ip, off = inet.decode_ipv4(u, 14)
    assert (ip.ident, ip.ttl, ip.tos, ip.dont_fragment, ip.total_length) == (3, 9, 4, False, 31)
    assert inet.decode_udp(u, off)[0] == inet.Udp(5, 6, 11) and u[-3:] == b"xyz"


def test_rerun_survivors_roce_and_inet():
    # Each BTH flag decodes on its own.
    se = roce.decode_bth(roce.View(roce.Bth(0x04, 1, 2, se=True).pack(0), "x", roce.RoceError))
    assert se.se and not se.migreq
    fecn = roce.decode_bth(roce.View(roce.Bth(0x04, 1, 2, fecn=True).pack(0), "x", roce.RoceError))
    assert fecn.fecn and not fecn.becn
    # IBA NAK codes.
    assert [c.value for c in roce.NakCode] == [0, 1, 2, 3, 4]
    # The headers' arguments after the addresses are keyword-only; the first ones may be named.
    p = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 1, 2), payload=b"abcd")
    dg = roce.encode_datagram(packet=p, src=A, dst=B, sport=1)
    assert roce.decode_datagram(data=dg, src=A, dst=B, sport=1) == p
    fr = roce.encode_frame(packet=p, src=A, dst=B, sport=1)
    assert roce.decode_frame(fr).packet == p
    with pytest.raises(TypeError):
        roce.encode_datagram(p, A, B, 1, 4791, 7)
    with pytest.raises(TypeError):
        roce.encode_frame(p, A, B, 1, 4791, b"\x02" * 6)
    # A wrong ICRC is wrong whichever way it compares.
    for bad in (b"\x00" * 4, b"\xff" * 4):
        assert not roce.decode_frame(fr[:-4] + bad).icrc_ok
    # TCP with 4 bytes of options: a 24-byte header.
    t = inet.Tcp(1, 2, 3, 4, inet.TCP_SYN, options=bytes([2, 4, 5, 0xB4]))
    assert t.header_length == 24 and t.encode(A, B, b"")[12] >> 4 == 6
    # A UDP frame's IP identification is 0 unless given.
    u = inet.ipv4_udp_frame(b"\x02" * 6, b"\x04" * 6, A, B, 5, 6, b"")
    assert u[18:20] == b"\0\0"


def test_rerun_survivors_inet():
    assert inet.Ethernet().encode() == bytes(12) + b"\x08\x00"
    hdr = bytearray(inet.IPv4(A, B, 17, 20, dont_fragment=False).encode())
    hdr[6:8] = b"\x00\x01"  # fragment offset 1, no DF
    assert not inet.decode_ipv4(bytes(hdr))[0].dont_fragment
    seg = inet.Tcp(1, 2, 3, 4, inet.TCP_SYN, options=bytes([2, 4, 5, 0xB4])).encode(A, B, b"data")
    t, off = inet.decode_tcp(seg)
    assert t.options == bytes([2, 4, 5, 0xB4]) and off == 24 and seg[off:] == b"data"
    u = inet.ipv4_udp_frame(b"\x02" * 6, b"\x04" * 6, A, B, 5, 6, b"four")
    ip, _ = inet.decode_ipv4(u, 14)
    assert ip.total_length == 20 + 8 + 4 and ip.checksum_ok
    f = inet.ipv4_tcp_frame(b"\x02" * 6, b"\x04" * 6, A, B, inet.Tcp(1, 2, 3, 4, 0))
    assert f[18:20] == b"\0\0" and inet.decode_ipv4(f, 14)[0].ident == 0


def test_rerun_survivors_roce_second_pass():
    # 12 bytes of BTH, 11 of payload, 1 of pad: 24 bytes, a multiple of the header length.
    p = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 1, 2), payload=b"x" * 11)
    data = p.encode()
    assert len(data) == 24 and data[1] == 0x10 and roce.decode_packet(data).payload == b"x" * 11
    fr = roce.decode_frame(frame=roce.encode_frame(p, A, B, 1), check_icrc=True)
    with pytest.raises(AttributeError):
        fr.icrc_ok = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        roce.decode_frame(roce.encode_frame(p, A, B, 1), True)


def test_rerun_survivors_inet_second_pass():
    assert (inet.TCP_FIN, inet.TCP_SYN, inet.TCP_RST, inet.TCP_PSH, inet.TCP_ACK) == (1, 2, 4, 8, 16)  # RFC 793
    eth = inet.Ethernet()
    with pytest.raises(AttributeError):
        eth.ethertype = 0  # type: ignore[misc]
    s, d = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2")
    data = inet.IPv6(s, d, 6, 8).encode() + bytes(8)
    assert inet.decode_ipv6(data + b"trailer")[0].payload_length == 8  # bytes after the packet (Ethernet padding)
    with pytest.raises(inet.InetError, match="are not of one family"):
        inet.ip_tcp_frame(b"\x02" * 6, b"\x04" * 6, "::ffff:10.2.0.1", "10.2.0.2", inet.Tcp(1, 2, 3, 4, 0))
