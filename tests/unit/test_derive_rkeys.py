"""An RMB's rkeys on every link name its connection in a capture of real hosts
(dissectors/derive.py, Deriver.rkey_group). A connection that joins a link group has its
RMB confirmed on the links there are (CONFIRM RKEY, smcr_lgr_reg_rmbs) before the CLC
message that names the RMB to the connection, and a link added in between carries the new
rkey in ADD LINK's rkey pairs. smc-trace tied an rkey of another link to a connection only
when the connection was already known, so the RDMA WRITEs of such a connection on its
second link had no connection (seen in `tcpdump -i lo` of `smc-traffic --connections 2`
with two devices a side: one connection's row had a third of its bytes)."""

from __future__ import annotations

import io
import ipaddress

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from dissectors.summary import summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.wire import cdc, clc, llc, roce
from stack.wire.roce import Opcode

A1, B1, A2, B2 = "10.9.0.1", "10.9.0.2", "10.9.1.1", "10.9.1.2"  # each host's two RoCE ports; CLC over the first
MA, MB = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
QA1, QB1, QA2, QB2 = 0x11, 0x12, 0x13, 0x14
TOKENS = {0: (0xA0, 0xB0), 1: (0xA1, 0xB1)}  # connection -> (client's alert token, server's)
RB0, RA0 = 0x1000B0, 0x1000A0  # connection 0's RMBs on link 1
RB1, RB1_LINK2, RA1, RA1_LINK2 = 0x2000B1, 0x2200B1, 0x2000A1, 0x2200A1  # connection 1's, on links 1 and 2


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


def capture() -> bytes:
    c = Capture()
    c.handshake(40000, (RA0, RB0), 0, first=True)
    c.send(B1, A1, QA1, llc.ConfirmLink(mac=MB, gid=mapped(B1), qpn=QB1, link_num=1, link_uid=b"\0\0\0\1").encode())
    c.send(A1, B1, QB1, llc.ConfirmLink(mac=MA, gid=mapped(A1), qpn=QA1, link_num=1, link_uid=b"\0\0\0\1", response=True).encode())
    # connection 1 joins: both RMBs confirmed on link 1 before its CLC Accept and Confirm
    c.send(B1, A1, QA1, llc.ConfirmRkey(rkey=RB1, vaddr=0x2000).encode())
    c.send(A1, B1, QB1, llc.ConfirmRkey(rkey=RB1, vaddr=0x2000, response=True).encode())
    c.send(A1, B1, QB1, llc.ConfirmRkey(rkey=RA1, vaddr=0x3000).encode())
    c.send(B1, A1, QA1, llc.ConfirmRkey(rkey=RA1, vaddr=0x3000, response=True).encode())
    # meanwhile link 2 is added (the second ports), with every RMB's rkey on it
    add = dict(qp_mtu=3, psn=1, link_num=2, version=2)
    c.send(
        B1,
        A1,
        QA1,
        llc.AddLink(mac=MB, gid=mapped(B2), qpn=QB2, rkeys=(llc.RkeyTriple(RB0, RB0 + 2, 0x1000), llc.RkeyTriple(RB1, RB1_LINK2, 0x2000)), **add).encode(),
    )
    c.send(
        A1,
        B1,
        QB1,
        llc.AddLink(
            mac=MA, gid=mapped(A2), qpn=QA2, rkeys=(llc.RkeyTriple(RA0, RA0 + 2, 0x1000), llc.RkeyTriple(RA1, RA1_LINK2, 0x3000)), response=True, **add
        ).encode(),
    )
    c.send(B2, A2, QA2, llc.ConfirmLink(mac=MB, gid=mapped(B2), qpn=QB2, link_num=2, link_uid=b"\0\0\0\2", version=2).encode())
    c.send(A2, B2, QB2, llc.ConfirmLink(mac=MA, gid=mapped(A2), qpn=QA2, link_num=2, link_uid=b"\0\0\0\2", version=2, response=True).encode())
    c.handshake(40001, (RA1, RB1), 1, first=False)
    # connection 1's data on link 2, each way: a WRITE into the peer's RMB and a CDC
    c.write(A2, B2, QB2, RB1_LINK2, 700)
    c.send(A2, B2, QB2, cdc.CdcMessage(seqno=1, token=TOKENS[1][1], prod=cdc.Cursor(0, 700)).encode())
    c.write(B2, A2, QA2, RA1_LINK2, 300)
    c.send(B2, A2, QA2, cdc.CdcMessage(seqno=1, token=TOKENS[1][0], prod=cdc.Cursor(0, 300)).encode())
    return c.bytes()


def test_a_connection_that_joins_has_its_writes_on_the_second_link():
    events = list(read_events(capture()))
    assert not [e for e in events if e.kind == "trace.note"], [e for e in events if e.kind == "trace.note"]
    writes = [(e.host, e.link, e.conn, e.get("length")) for e in events if e.kind == "rdma.write"]
    assert writes == [(A1, 2, 1, 700), (B1, 2, 1, 300)]
    cdcs = [(e.host, e.link, e.conn) for e in events if e.kind == "cdc.msg"]
    assert cdcs == [(A1, 2, 1), (B1, 2, 1)]
    rows = {(c["host"], c["conn"]): c["bytes_written"] for c in summarize(events).to_dict()["conns"]}
    assert rows == {(A1, 0): 0, (B1, 0): 0, (A1, 1): 700, (B1, 1): 300}
