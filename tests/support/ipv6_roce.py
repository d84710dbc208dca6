"""Captures of SMC-R with RoCEv2 over IPv6 (GIDs that are the hosts' IPv6 addresses, not
IPv4-mapped), written frame by frame: two link groups whose QPs have the same numbers, for
the Wireshark plugin's tests and smc-trace's alike."""

from __future__ import annotations

import ipaddress
import struct
import zlib

from dissectors.derive import Deriver
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter, read_packets
from stack.events import Event
from stack.wire import cdc, clc, inet, llc, roce


def roce_ipv6_frame(packet: roce.RocePacket, src: str, dst: str, sport: int = 49152) -> bytes:
    """An Ethernet/IPv6/UDP 4791 frame carrying a RoCEv2 packet (roce.encode_frame writes
    IPv4 only), UDP checksum and ICRC computed: the ICRC masks traffic class, flow label and
    hop limit of the IPv6 header and the UDP checksum (IBA Annex A17)."""
    s, d = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    ib = packet.encode()
    length = inet.UDP_HLEN + len(ib) + roce.ICRC_LEN
    ip_b = inet.IPv6(s, d, inet.IPPROTO_UDP, length).encode()
    masked_ip = b"\x6f\xff\xff\xff" + ip_b[4:7] + b"\xff" + ip_b[8:]
    masked_udp = inet.Udp(sport, roce.ROCE_V2_PORT, length, 0xFFFF).encode()
    masked_ib = ib[:4] + b"\xff" + ib[5:]
    icrc = struct.pack("<I", zlib.crc32(b"\xff" * 8 + masked_ip + masked_udp + masked_ib))
    pseudo = s.packed + d.packed + struct.pack("!I3xB", length, inet.IPPROTO_UDP)
    checksum = inet.internet_checksum(pseudo + inet.Udp(sport, roce.ROCE_V2_PORT, length).encode() + ib + icrc) or 0xFFFF
    udp_b = inet.Udp(sport, roce.ROCE_V2_PORT, length, checksum).encode()
    return inet.Ethernet(bytes(6), bytes(6), inet.ETH_P_IPV6).encode() + ip_b + udp_b + ib + icrc


def _gid(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


# group: (client, server, client's second GID, server's second GID, SMC version)
IPV6_HOST_PAIRS = {  # two host pairs
    "P": ("fd00:1::a", "fd00:1::b", "fd00:11::a", "fd00:11::b", 1),
    "Q": ("fd00:2::a", "fd00:2::b", "fd00:12::a", "fd00:12::b", 2),
}
IPV6_BOTH_WAYS = {  # the same two hosts, a link group each way (as the lab's kernels did over IPv4)
    "P": ("fd00:1::a", "fd00:1::b", "fd00:11::a", "fd00:11::b", 1),
    "Q": ("fd00:1::b", "fd00:1::a", "fd00:11::b", "fd00:11::a", 1),
}


def write_ipv6_pairs(path: str, pairs: dict = IPV6_HOST_PAIRS, writes: bool = False) -> dict[int, tuple[str, int | None]]:
    """Two SMC-R link groups "P" and "Q", RoCEv2 over IPv6 (GIDs that are the hosts' IPv6
    addresses), whose QPs have the same numbers in both groups: servers 0x11 on their first
    link and 0x13 on the second (ADD LINK), clients 0x12 and 0x14. A group of version 2
    speaks SMC-Rv2 (LLC v2 with a little-endian length, decoded by the plugin), of version 1
    SMC-Rv1 (LLC v1, decoded by Wireshark). Each group has two connections, the second
    reusing the first's link group. ``writes``: an RDMA WRITE each way on each link of every
    connection too, after the CDCs (to the rkey of the receiver's RMB, from its Accept or
    Confirm). Returns frame number -> (group, TCP stream or None)."""
    mac = {p: (b"\x02\x00\x00\x00" + bytes([i, 0x0A]), b"\x02\x00\x00\x00" + bytes([i, 0x0B])) for i, p in enumerate(pairs, 1)}
    out: dict[int, tuple[str, int | None]] = {}
    streams: list[str] = []
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        eth = w.add_interface(LINKTYPE_ETHERNET, "roce")
        ts = [1_700_000_000_000_000_000]

        def put(pair: str, data: bytes, stream: int | None = None) -> None:
            ts[0] += 1000
            w.write_packet(eth, ts[0], data)
            out[len(out) + 1] = (pair, stream)

        def connect(pair: str, n: int) -> None:
            """The handshake and CLC of connection n (0, 1) of a pair: server QP 0x11, client 0x12."""
            client, server, _, _, version = pairs[pair]
            cmac, smac = mac[pair]
            stream = len(streams)
            streams.append(pair)
            a, b = ipaddress.IPv6Address(client), ipaddress.IPv6Address(server)
            cport, sport = 40000 + stream, 5000
            seq = {a: 1000, b: 5000}

            def seg(src, dst, flags, payload=b"", options=b""):
                put(pair, inet.ip_tcp_frame(b"\2" + bytes(5), b"\2" + bytes(5), src, dst,
                                            inet.Tcp(cport if src == a else sport, sport if src == a else cport, seq[src], seq[dst],
                                                     flags, options=options), payload), stream)  # fmt: skip
                seq[src] += len(payload) + (1 if flags & inet.TCP_SYN else 0)

            seg(a, b, inet.TCP_SYN, options=inet.SMC_TCP_OPTION)
            seg(b, a, inet.TCP_SYN | inet.TCP_ACK, options=inet.SMC_TCP_OPTION)
            seg(a, b, inet.TCP_ACK)
            peer_c, peer_s = b"\x00\x01" + cmac, b"\x00\x02" + smac
            proposal = clc.Proposal(
                peer_c, _gid(client), cmac, version=1, prefix=clc.IpPrefixArea(ipv6=(clc.Ipv6Prefix(ipaddress.IPv6Address(client) - 0xA, 64),))
            )
            seg(a, b, inet.TCP_PSH | inet.TCP_ACK, proposal.encode())
            first = n == 0
            common = dict(rmbe_size=1, qp_mtu=3, rmb_vaddr=0x10000, psn=0x100, first_contact=first, version=version)
            if version == 2:
                common.update(eid=b"SMCTOP-TEST".ljust(32), fce=clc.FirstContactExt() if first else None)
            token = 0x100 * (stream + 1)
            seg(b, a, inet.TCP_PSH | inet.TCP_ACK, clc.Accept(peer_s, _gid(server), smac, 0x11, 0x5000 + stream, token + 0xB, **common).encode())
            seg(a, b, inet.TCP_PSH | inet.TCP_ACK, clc.Confirm(peer_c, _gid(client), cmac, 0x12, 0x6000 + stream, token + 0xA, **common).encode())

        def send(pair: str, src: str, dst: str, qpn: int, payload: bytes, psn: int, stream: int | None = None) -> None:
            put(pair, roce_ipv6_frame(roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, qpn, psn), payload=payload), src, dst), stream)

        def llc_msg(pair: str, m) -> bytes:
            return m.encode("little" if pairs[pair][4] == 2 else "big")

        for n in (0, 1):
            for pair in pairs:
                connect(pair, n)
        psn = 1
        for pair in pairs:  # CONFIRM LINK each way on the first link
            client, server, _, _, version = pairs[pair]
            cmac, smac = mac[pair]
            request = llc.ConfirmLink(version=version, mac=smac, gid=_gid(server), qpn=0x11, link_num=1, link_uid=b"\0\0\0\1")
            response = llc.ConfirmLink(version=version, response=True, mac=cmac, gid=_gid(client), qpn=0x12, link_num=1, link_uid=b"\0\0\0\1")
            send(pair, server, client, 0x12, llc_msg(pair, request), psn)
            send(pair, client, server, 0x11, llc_msg(pair, response), psn)
        psn += 1
        for pair in pairs:  # ADD LINK: the second link, between the second GIDs, QPs 0x13 (server) and 0x14 (client)
            client, server, client2, server2, version = pairs[pair]
            cmac, smac = mac[pair]
            request = llc.AddLink(version=version, mac=smac, gid=_gid(server2), qpn=0x13, link_num=2, qp_mtu=3, psn=0x200)
            response = llc.AddLink(version=version, response=True, mac=cmac, gid=_gid(client2), qpn=0x14, link_num=2, qp_mtu=3, psn=0x300)
            send(pair, server, client, 0x12, llc_msg(pair, request), psn)
            send(pair, client, server, 0x11, llc_msg(pair, response), psn)
        psn += 1
        for stream, pair in enumerate(streams):  # a CDC each way on each link, for every connection
            client, server, client2, server2, _ = pairs[pair]
            token = 0x100 * (stream + 1)
            for src, dst, qpn, tok in ((client, server, 0x11, token + 0xB), (server, client, 0x12, token + 0xA),
                                       (client2, server2, 0x13, token + 0xB), (server2, client2, 0x14, token + 0xA)):  # fmt: skip
                send(pair, src, dst, qpn, cdc.CdcMessage(stream + 1, tok, prod=cdc.Cursor(0, 100 * psn)).encode(), psn, stream)
            psn += 1
        for stream, pair in enumerate(streams if writes else ()):  # an RDMA WRITE each way on each link
            client, server, client2, server2, _ = pairs[pair]
            for src, dst, qpn, rkey in ((client, server, 0x11, 0x5000 + stream), (server, client, 0x12, 0x6000 + stream),
                                        (client2, server2, 0x13, 0x5000 + stream), (server2, client2, 0x14, 0x6000 + stream)):  # fmt: skip
                write = roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_ONLY, qpn, psn), reth=roce.Reth(0x10000, rkey, 64), payload=bytes(64))
                put(pair, roce_ipv6_frame(write, src, dst), stream)
            psn += 1
    return out


def events_per_frame(path) -> tuple[list, dict[int, list[Event]]]:
    """The capture's packets, and the events smc-trace derives from each (frame number ->
    events), fed frame by frame as derive_events feeds them."""
    with open(path, "rb") as f:
        packets = list(read_packets(f))
    d = Deriver()
    return packets, {n: list(d.feed(p, n)) for n, p in enumerate(packets, 1)}
