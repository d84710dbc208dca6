"""A capture of SMC-Rv1 as a real host's RoCE NIC puts it on the wire: RoCE v1 frames
(ethertype 0x8915, GRH, BTH), whose addresses are the hosts' RoCE v1 GIDs (link-local,
from the port's MAC, as a NIC's GID index 0), not IP addresses. The kernel picks such a GID
for SMC-Rv1 (``smc_ib_determine_gid``: IB_GID_TYPE_ROCE), and the CLC messages carry it.

Two connections on one link group: the first (first contact) writes 6,000 bytes from the
client to the server in RDMA WRITE FIRST/MIDDLE/LAST at a 1,024-byte MTU, its LAST frame
sent again 5 ms later (a retransmission on the sender's timeout); the second reuses the link group and writes 3,000 bytes the
other way. Both close with the close flags and a FIN."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, PcapngWriter
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.wire import cdc, clc, llc, roce

CLIENT_IP, SERVER_IP = ipaddress.IPv4Address("10.3.0.1"), ipaddress.IPv4Address("10.3.0.2")
CLIENT_MAC, SERVER_MAC = bytes.fromhex("525400130001"), bytes.fromhex("525400130002")
CLIENT_QPN, SERVER_QPN = 0x000105, 0x00010A
CLIENT_MAC2, SERVER_MAC2 = bytes.fromhex("525400130101"), bytes.fromhex("525400130102")  # the second ports (second_link)
CLIENT_QPN2, SERVER_QPN2 = 0x000106, 0x00010B
MTU = 1024
FIRST_BYTES, SECOND_BYTES = 6000, 3000


def link_local_gid(mac: bytes) -> bytes:
    """The RoCE v1 GID a NIC derives from its port's MAC (EUI-64 under fe80::/64)."""
    eui = bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:]
    return b"\xfe\x80" + bytes(6) + eui


CLIENT_GID, SERVER_GID = link_local_gid(CLIENT_MAC), link_local_gid(SERVER_MAC)
CLIENT_GID2, SERVER_GID2 = link_local_gid(CLIENT_MAC2), link_local_gid(SERVER_MAC2)


def gid_text(gid: bytes) -> str:
    return str(ipaddress.IPv6Address(gid))


@dataclass
class Truth:
    """What the capture holds, to check a reader against."""

    frames: int = 0
    roce_frames: int = 0
    retransmitted: int = 0
    cdcs: list[tuple[str, int, int]] = field(default_factory=list)  # (sender IP, token, prod count)
    llcs: list[tuple[str, str]] = field(default_factory=list)  # (sender IP, LLC type name)
    writes: list[tuple[str, int, int]] = field(default_factory=list)  # (sender IP, rkey, length) of each RDMA WRITE
    tokens: dict[int, int] = field(default_factory=dict)  # alert token -> connection (tcp.stream)


def _sll2(frame: bytes) -> bytes:
    """The frame as ``tcpdump -i any`` keeps it: a Linux cooked v2 header in place of Ethernet's."""
    proto = frame[12:14]
    body = frame[14:]
    if proto == b"\x81\x00":  # the VLAN tag stays in the payload, as libpcap puts it back
        body = frame[14:]
    return proto + b"\0\0" + struct.pack("!I", 2) + struct.pack("!HBB", 1, 0, 6) + frame[6:12] + b"\0\0" + body


def write_v1_capture(path: str, *, vlan: int | None = None, cooked: bool = False, snaplen: int = 0, second_link: bool = False) -> Truth:
    """Write the capture (Ethernet frames, 802.1Q-tagged when ``vlan`` is given; Linux cooked
    v2 when ``cooked``; frames cut to ``snaplen`` bytes when it is not 0) and return its truth.
    ``second_link``: after the first link, the server adds a second over both hosts' second
    ports (ADD LINK, then CONFIRM LINK on the new link, as smc_llc_srv_add_link does), and at
    the end deletes it (DELETE LINK) and then the group (DELETE LINK ALL)."""
    truth = Truth()
    t = 1_765_000_000_000_000_000
    psn = {True: 0x200, False: 0x700}
    psn2 = {True: 0x400, False: 0x900}
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        iface = w.add_interface(LINKTYPE_LINUX_SLL2 if cooked else LINKTYPE_ETHERNET, "any" if cooked else "eth1", snaplen=snaplen or 262144)

        def put(frame: bytes) -> None:
            nonlocal t
            t += 91_000
            if vlan is not None and frame[12:14] != b"\x81\x00":
                frame = frame[:12] + struct.pack("!HH", 0x8100, vlan) + frame[12:]
            if cooked:
                frame = _sll2(frame)
            kept = frame[:snaplen] if snaplen else frame
            w.write_packet(iface, t, kept, None, orig_len=len(frame))
            truth.frames += 1

        def rdma(from_client: bool, packet: roce.RocePacket, link: int = 1) -> None:
            c, sv = (CLIENT_GID, SERVER_GID) if link == 1 else (CLIENT_GID2, SERVER_GID2)
            sgid, dgid = (c, sv) if from_client else (sv, c)
            cm, sm = (CLIENT_MAC, SERVER_MAC) if link == 1 else (CLIENT_MAC2, SERVER_MAC2)
            macs = (cm, sm) if from_client else (sm, cm)
            put(roce.encode_frame_v1(packet, sgid, dgid, src_mac=macs[0], dst_mac=macs[1], vlan=vlan))
            truth.roce_frames += 1

        def send(from_client: bool, payload: bytes, link: int = 1) -> None:
            if link == 1:
                psn[from_client] += 1
                qpn, at = SERVER_QPN if from_client else CLIENT_QPN, psn[from_client]
            else:  # the second link's QPs count their own PSNs
                psn2[from_client] += 1
                qpn, at = SERVER_QPN2 if from_client else CLIENT_QPN2, psn2[from_client]
            packet = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, qpn, at, se=True, ackreq=True), payload=payload)
            rdma(from_client, packet, link)
            sender = str(CLIENT_IP if from_client else SERVER_IP)
            if payload[0] == cdc.CDC_TYPE:
                m = cdc.decode(payload)
                truth.cdcs.append((sender, m.token, m.prod.count))
            else:
                truth.llcs.append((sender, type(llc.decode(payload)).__name__))

        def ack(from_client: bool) -> None:  # the responder acknowledges the requester's last PSN
            qpn = SERVER_QPN if from_client else CLIENT_QPN
            rdma(from_client, roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, qpn, psn[not from_client]), aeth=roce.Aeth.ack(1)))

        def write(from_client: bool, data: bytes, vaddr: int, rkey: int, again: bool = False) -> None:
            chunks = [data[i : i + MTU] for i in range(0, len(data), MTU)]
            qpn = SERVER_QPN if from_client else CLIENT_QPN
            for i, chunk in enumerate(chunks):
                psn[from_client] += 1
                first, last = i == 0, i == len(chunks) - 1
                if len(chunks) == 1:
                    op = roce.Opcode.RDMA_WRITE_ONLY
                else:
                    op = roce.Opcode.RDMA_WRITE_FIRST if first else roce.Opcode.RDMA_WRITE_LAST if last else roce.Opcode.RDMA_WRITE_MIDDLE
                reth = roce.Reth(vaddr, rkey, len(data)) if first else None
                packet = roce.RocePacket(roce.Bth(op, qpn, psn[from_client], ackreq=last), reth=reth, payload=chunk)
                rdma(from_client, packet)
            if again:  # no ACK came in time: the last packet is sent again (the same PSN on the wire twice)
                nonlocal t
                t += 5_000_000
                rdma(from_client, packet)
                truth.retransmitted += 1
            truth.writes.append((str(CLIENT_IP if from_client else SERVER_IP), rkey, len(data)))

        peer_client, peer_server = b"\x8a\x01" + CLIENT_MAC, b"\x8a\x02" + SERVER_MAC
        prefix = clc.IpPrefixArea(ipaddress.IPv4Address("10.3.0.0"), 24)
        for stream, (port, first_contact) in enumerate(((40001, True), (40002, False))):
            flow = TcpFlow(Endpoint(CLIENT_IP, port, CLIENT_MAC), Endpoint(SERVER_IP, 5000, SERVER_MAC))
            for frame in flow.handshake():
                put(frame)
            c_token, s_token = 0x1000 + stream, 0x2000 + stream
            c_rkey, s_rkey = 0x3000 + stream, 0x4000 + stream
            c_vaddr, s_vaddr = 0x7F0000100000 + (stream << 20), 0x7F0000200000 + (stream << 20)
            truth.tokens[c_token] = truth.tokens[s_token] = stream
            proposal = clc.Proposal(peer_client, CLIENT_GID, CLIENT_MAC, clc.SmcType.R, clc.SmcType.N, 2, prefix)
            accept = clc.Accept(peer_server, SERVER_GID, SERVER_MAC, SERVER_QPN, s_rkey, s_token, clc.rmbe_size_compress(65536), 3, s_vaddr,
                                psn[False] + 1, first_contact, 1)  # fmt: skip
            confirm = clc.Confirm(peer_client, CLIENT_GID, CLIENT_MAC, CLIENT_QPN, c_rkey, c_token, clc.rmbe_size_compress(65536), 3, c_vaddr,
                                  psn[True] + 1, first_contact, 1)  # fmt: skip
            put(flow.data(True, proposal.encode()))
            put(flow.data(False, accept.encode()))
            put(flow.data(True, confirm.encode()))
            if first_contact:
                send(False, llc.ConfirmLink(version=1, mac=SERVER_MAC, gid=SERVER_GID, qpn=SERVER_QPN, link_num=1, link_uid=b"\0\0\1\1").encode())
                send(True, llc.ConfirmLink(version=1, response=True, mac=CLIENT_MAC, gid=CLIENT_GID, qpn=CLIENT_QPN, link_num=1,
                                           link_uid=b"\0\0\2\1").encode())  # fmt: skip
                if second_link:
                    send(False, llc.AddLink(version=1, mac=SERVER_MAC2, gid=SERVER_GID2, qpn=SERVER_QPN2, link_num=2, qp_mtu=3, psn=0x900).encode())
                    send(True, llc.AddLink(version=1, response=True, mac=CLIENT_MAC2, gid=CLIENT_GID2, qpn=CLIENT_QPN2, link_num=2, qp_mtu=3,
                                           psn=0x400).encode())  # fmt: skip
                    send(False, llc.ConfirmLink(version=1, mac=SERVER_MAC2, gid=SERVER_GID2, qpn=SERVER_QPN2, link_num=2,
                                                link_uid=b"\0\0\1\2").encode(), link=2)  # fmt: skip
                    send(True, llc.ConfirmLink(version=1, response=True, mac=CLIENT_MAC2, gid=CLIENT_GID2, qpn=CLIENT_QPN2, link_num=2,
                                               link_uid=b"\0\0\2\2").encode(), link=2)  # fmt: skip
            if stream == 0:  # the client writes into the server's RMB, its last frame twice
                data = bytes(range(256)) * (FIRST_BYTES // 256) + bytes(FIRST_BYTES % 256)
                write(True, data, s_vaddr, s_rkey, again=True)
                send(True, cdc.CdcMessage(seqno=1, token=s_token, prod=cdc.Cursor(0, len(data))).encode())
                ack(False)
                send(False, cdc.CdcMessage(seqno=1, token=c_token, cons=cdc.Cursor(0, len(data))).encode())
                ack(True)
                sent_by_client, sent_by_server = len(data), 0
            else:  # the server writes into the client's RMB
                data = bytes(SECOND_BYTES)
                write(False, data, c_vaddr, c_rkey)
                send(False, cdc.CdcMessage(seqno=1, token=c_token, prod=cdc.Cursor(0, len(data))).encode())
                ack(True)
                send(True, cdc.CdcMessage(seqno=1, token=s_token, cons=cdc.Cursor(0, len(data))).encode())
                ack(False)
                sent_by_client, sent_by_server = 0, len(data)
            send(True, cdc.CdcMessage(seqno=2, token=s_token, prod=cdc.Cursor(0, sent_by_client), cons=cdc.Cursor(0, sent_by_server),
                                      peer_conn_closed=True).encode())  # fmt: skip
            send(False, cdc.CdcMessage(seqno=2, token=c_token, prod=cdc.Cursor(0, sent_by_server), cons=cdc.Cursor(0, sent_by_client),
                                       peer_conn_closed=True).encode())  # fmt: skip
            put(flow.fin(True))
            put(flow.fin(False))
            put(flow.ack(True))
        if second_link:  # the second link goes, then the group (an idle group freed: orderly)
            send(False, llc.DeleteLink(version=1, link_num=2, reason=0x00010000, orderly=True).encode())
            send(True, llc.DeleteLink(version=1, response=True, link_num=2, reason=0x00010000, orderly=True).encode())
            send(False, llc.DeleteLink(version=1, link_num=0, reason=0x00030000, all=True, orderly=True).encode())
    return truth
