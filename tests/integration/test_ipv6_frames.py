"""IPv6 frames for captures (stack/wire/inet.py): the CLC handshake of an IPv6 TCP connection
as Ethernet/IPv6/TCP frames, checked against tshark (IPv6 and TCP headers, TCP checksum over
the IPv6 pseudo header, the SMC dissector's reading of an IPv6 Proposal)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from support import tshark

from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from stack.core.config import SmcConfig
from stack.core.negotiation import Netdev, build_proposal
from stack.core.ports import DeviceInfo
from stack.wire import inet
from stack.wire.inet import SMC_TCP_OPTION, TCP_ACK, TCP_PSH, TCP_SYN, Tcp

A, B = ipaddress.IPv6Address("fd00:5::a"), ipaddress.IPv6Address("fd00:5::b")
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
DEV = DeviceInfo("roce0", bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]), MAC_A, 3)


def _ones_complement_sum(data: bytes) -> int:
    data += bytes(len(data) % 2)
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_ipv6_tcp_frame_round_trip_and_checksum():
    payload = b"hello over IPv6"
    frame = inet.ip_tcp_frame(MAC_A, MAC_B, A, B, Tcp(40000, 5000, 1, 2, TCP_PSH | TCP_ACK), payload)
    eth, off = inet.decode_ethernet(frame)
    assert eth.ethertype == inet.ETH_P_IPV6
    ip, off = inet.decode_ipv6(frame, off)
    assert (ip.src, ip.dst, ip.next_header, ip.payload_length) == (A, B, inet.IPPROTO_TCP, len(frame) - off)
    tcp, off = inet.decode_tcp(frame, off)
    assert (tcp.sport, tcp.dport, frame[off:]) == (40000, 5000, payload)
    seg = frame[inet.ETH_HLEN + inet.IPV6_HLEN :]
    pseudo = A.packed + B.packed + len(seg).to_bytes(4, "big") + bytes(3) + bytes([inet.IPPROTO_TCP])
    assert _ones_complement_sum(pseudo + seg) == 0xFFFF  # RFC 8200 section 8.1
    with pytest.raises(inet.InetError):
        inet.decode_ipv6(frame[: inet.ETH_HLEN + 30], inet.ETH_HLEN)


def test_ipv4_mapped_addresses_make_an_ipv4_frame():
    frame = inet.ip_tcp_frame(MAC_A, MAC_B, "::ffff:10.0.0.1", "::ffff:10.0.0.2", Tcp(1, 2, 0, 0, TCP_SYN))
    eth, off = inet.decode_ethernet(frame)
    ip, _ = inet.decode_ipv4(frame, off)
    assert (eth.ethertype, str(ip.src), str(ip.dst)) == (inet.ETH_P_IP, "10.0.0.1", "10.0.0.2")


def test_tshark_reads_an_ipv6_clc_handshake(tmp_path):
    proposal, _ = build_proposal(SmcConfig(host="c"), DEV, str(A), b"\x01\x02" + MAC_A, Netdev.of("eth0", [f"{A}/64", "fd00:6::a/48"]))
    frames = [
        inet.ip_tcp_frame(MAC_A, MAC_B, A, B, Tcp(40000, 5000, 100, 0, TCP_SYN, options=SMC_TCP_OPTION)),
        inet.ip_tcp_frame(MAC_B, MAC_A, B, A, Tcp(5000, 40000, 500, 101, TCP_SYN | TCP_ACK, options=SMC_TCP_OPTION)),
        inet.ip_tcp_frame(MAC_A, MAC_B, A, B, Tcp(40000, 5000, 101, 501, TCP_ACK)),
        inet.ip_tcp_frame(MAC_A, MAC_B, A, B, Tcp(40000, 5000, 101, 501, TCP_PSH | TCP_ACK), proposal.encode()),
    ]
    path = tmp_path / "ipv6.pcapng"
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        ifc = w.add_interface(LINKTYPE_ETHERNET, "eth0")
        for i, fr in enumerate(frames):
            w.write_packet(ifc, 1_000_000_000 + i * 1000, fr)
    decoded = tshark.decode(str(path), "-o", "tcp.check_checksum:TRUE")
    assert len(decoded) == 4 and not any(f.malformed for f in decoded)
    for f in decoded:
        assert f.layers["ipv6"]["ipv6.src"] in (str(A), str(B))
        assert tshark.flatten(f.layers["tcp"])["tcp.checksum.status"] == "1"  # good (0 bad, 2 unverified)
    smc = decoded[3].smc
    assert smc, decoded[3].protocols
    fields = smc[0]
    assert fields["smc.proposal.ipv6.prefix.count"] == "2"
    assert fields["smc.proposal.ipv6.prefix.value"] == ["fd00:5::", "fd00:6::"]
    assert fields["smc.proposal.ipv6.prefix.length"] == ["64", "48"]
