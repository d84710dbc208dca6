"""A capture of two hosts with two RoCE ports each, written frame by frame, in which a
connection joins a link group and writes on its second link: its RMBs' rkeys on that link
are tied to it only through the rkeys of the same RMB on the first link (CONFIRM RKEY's
rtokens of other links, ADD LINK's rkey pairs), which come before the CLC message that
names the RMB to the connection (smcr_lgr_reg_rmbs). For smc-trace's tests
(tests/unit/test_derive_rkeys.py) and the Wireshark plugin's (tests/oracle/test_lua_rkey_groups.py)."""

from __future__ import annotations

import io
import ipaddress

from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.wire import cdc, clc, llc, roce
from stack.wire.roce import Opcode

A1, B1, A2, B2 = "10.9.0.1", "10.9.0.2", "10.9.1.1", "10.9.1.2"  # each host's two RoCE ports; CLC over the first
MA, MB = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
QA1, QB1, QA2, QB2 = 0x11, 0x12, 0x13, 0x14
TOKENS = {0: (0xA0, 0xB0), 1: (0xA1, 0xB1)}  # connection -> (client's alert token, server's)
RB0, RA0 = 0x1000B0, 0x1000A0  # connection 0's RMBs on link 1
RB1, RB1_LINK2, RA1, RA1_LINK2 = 0x2000B1, 0x2200B1, 0x2000A1, 0x2200A1  # connection 1's, on links 1 and 2

# How connection 1's RMBs get their rkeys on link 2 tied to those on link 1 (see capture)
VIAS = ("add_link", "add_link_be", "add_link_cont", "confirm_rkey", "confirm_rkey_v2", "confirm_rkey_v2_be")


def mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address("::ffff:" + ip).packed


class Capture:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.psn: dict[int, int] = {}

    def send(self, src: str, dst: str, qp: int, payload: bytes) -> None:
        self.psn[qp] = self.psn.get(qp, 0) + 1
        packet = roce.RocePacket(roce.Bth(Opcode.SEND_ONLY, qp, self.psn[qp]), payload=payload)
        self.frames.append(roce.encode_frame(packet, src, dst, 49152))

    def write(self, src: str, dst: str, qp: int, rkey: int, length: int) -> None:
        self.psn[qp] = self.psn.get(qp, 0) + 1
        packet = roce.RocePacket(roce.Bth(Opcode.RDMA_WRITE_ONLY, qp, self.psn[qp]), reth=roce.Reth(0x1000, rkey, length), payload=bytes(length))
        self.frames.append(roce.encode_frame(packet, src, dst, 49152))

    def handshake(self, port: int, rkeys: tuple[int, int], conn: int, first: bool) -> None:
        flow = TcpFlow(Endpoint(ipaddress.ip_address(A1), port, MA), Endpoint(ipaddress.ip_address(B1), 5000, MB))
        prefix = clc.IpPrefixArea(subnet=ipaddress.IPv4Address("10.9.0.0"), prefix_len=24)
        proposal = clc.Proposal(b"\1" * 8, mapped(A1), MA, version=1, prefix=prefix, smcd=None)
        common = dict(rmbe_size=1, qp_mtu=3, rmb_vaddr=0x1000, psn=1, first_contact=first, version=1)
        token_a, token_b = TOKENS[conn]
        accept = clc.Accept(b"\2" * 8, mapped(B1), MB, QB1, rkeys[1], token_b, **common)
        confirm = clc.Confirm(b"\1" * 8, mapped(A1), MA, QA1, rkeys[0], token_a, **common)
        self.frames += [*flow.handshake(), flow.data(True, proposal.encode()), flow.data(False, accept.encode()), flow.data(True, confirm.encode())]

    def bytes(self) -> bytes:
        buf = io.BytesIO()
        w = PcapngWriter(buf)
        w.add_interface(LINKTYPE_ETHERNET, "eth0")
        for i, f in enumerate(self.frames):
            w.write_packet(0, 1_000_000_000 + i * 100_000, f)
        return buf.getvalue()

    def confirm_rkeys(self, version: int = 1, order: str = "little", link2: bool = False) -> None:
        """Connection 1's RMBs confirmed on link 1 (each host its own, the peer answering),
        with their rtoken on link 2 when ``link2``."""
        for src, dst, qp, rkey, new_rkey, vaddr in ((B1, A1, QA1, RB1, RB1_LINK2, 0x2000), (A1, B1, QB1, RA1, RA1_LINK2, 0x3000)):
            others = (llc.Rtoken(2, new_rkey, vaddr),) if link2 else ()
            self.send(src, dst, qp, llc.ConfirmRkey(rkey=rkey, vaddr=vaddr, others=others, version=version).encode(order))
            self.send(dst, src, {QA1: QB1, QB1: QA1}[qp], llc.ConfirmRkey(rkey=rkey, vaddr=vaddr, others=others, version=version, response=True).encode(order))

    def add_link(self, version: int = 2, order: str = "little", conn1: bool = True) -> None:
        """Link 2 added (the second ports), with every RMB's rkey on it (connection 1's too
        when ``conn1``): in ADD LINK v2, or in ADD LINK CONTINUATION after an ADD LINK v1."""
        pairs_b = (llc.RkeyTriple(RB0, RB0 + 2, 0x1000), llc.RkeyTriple(RB1, RB1_LINK2, 0x2000))[: 2 if conn1 else 1]
        pairs_a = (llc.RkeyTriple(RA0, RA0 + 2, 0x1000), llc.RkeyTriple(RA1, RA1_LINK2, 0x3000))[: 2 if conn1 else 1]
        add = dict(qp_mtu=3, psn=1, link_num=2, version=version)
        inline = version == 2
        self.send(B1, A1, QA1, llc.AddLink(mac=MB, gid=mapped(B2), qpn=QB2, rkeys=pairs_b if inline else (), **add).encode(order))
        self.send(A1, B1, QB1, llc.AddLink(mac=MA, gid=mapped(A2), qpn=QA2, rkeys=pairs_a if inline else (), response=True, **add).encode(order))
        if not inline:
            self.send(B1, A1, QA1, llc.AddLinkCont(link_num=2, num_rkeys=len(pairs_b), rkeys=pairs_b).encode())
            self.send(A1, B1, QB1, llc.AddLinkCont(link_num=2, num_rkeys=len(pairs_a), rkeys=pairs_a, response=True).encode())
        link = dict(link_num=2, link_uid=b"\0\0\0\2", version=version)
        self.send(B2, A2, QA2, llc.ConfirmLink(mac=MB, gid=mapped(B2), qpn=QB2, **link).encode(order))
        self.send(A2, B2, QB2, llc.ConfirmLink(mac=MA, gid=mapped(A2), qpn=QA2, response=True, **link).encode(order))


def capture(via: str = "add_link") -> bytes:
    """Connection 0 makes the link group (link 1); connection 1 joins it, and writes (an RDMA
    WRITE and a CDC each way) on link 2 only. ``via`` says how the rkeys of connection 1's
    RMBs on link 2 are tied to those on link 1, which its CLC Accept and Confirm name:

    * "add_link": both RMBs confirmed on link 1 (CONFIRM RKEY v1), then link 2 added with
      their rkeys on it in ADD LINK v2's rkey pairs, written as x86 Linux writes them (the
      length little-endian);
    * "add_link_be": the same, ADD LINK v2 written big-endian (s390);
    * "add_link_cont": the same, SMC-Rv1: ADD LINK v1, then ADD LINK CONTINUATION's pairs;
    * "confirm_rkey": link 2 up first (connection 0's RMBs on it in ADD LINK v2), then both
      RMBs confirmed on link 1 with their rtoken on link 2 (CONFIRM RKEY v1);
    * "confirm_rkey_v2", "confirm_rkey_v2_be": the same in CONFIRM RKEY v2, written
      little-endian (x86) or big-endian (s390)."""
    if via not in VIAS:
        raise ValueError(f"via {via!r} is none of {VIAS}")
    c = Capture()
    c.handshake(40000, (RA0, RB0), 0, first=True)
    c.send(B1, A1, QA1, llc.ConfirmLink(mac=MB, gid=mapped(B1), qpn=QB1, link_num=1, link_uid=b"\0\0\0\1").encode())
    c.send(A1, B1, QB1, llc.ConfirmLink(mac=MA, gid=mapped(A1), qpn=QA1, link_num=1, link_uid=b"\0\0\0\1", response=True).encode())
    if via.startswith("add_link"):
        # connection 1 joins: both RMBs confirmed on link 1 before its CLC Accept and Confirm;
        # meanwhile link 2 is added (the second ports), with every RMB's rkey on it
        c.confirm_rkeys()
        c.add_link(version=1 if via == "add_link_cont" else 2, order="big" if via == "add_link_be" else "little")
    else:
        # link 2 is up before connection 1 joins: its RMBs are confirmed on both links at once
        c.add_link(conn1=False)
        c.confirm_rkeys(version=1 if via == "confirm_rkey" else 2, order="big" if via.endswith("_be") else "little", link2=True)
    c.handshake(40001, (RA1, RB1), 1, first=False)
    # connection 1's data on link 2, each way: a WRITE into the peer's RMB and a CDC
    c.write(A2, B2, QB2, RB1_LINK2, 700)
    c.send(A2, B2, QB2, cdc.CdcMessage(seqno=1, token=TOKENS[1][1], prod=cdc.Cursor(0, 700)).encode())
    c.write(B2, A2, QA2, RA1_LINK2, 300)
    c.send(B2, A2, QA2, cdc.CdcMessage(seqno=1, token=TOKENS[1][0], prod=cdc.Cursor(0, 300)).encode())
    return c.bytes()
