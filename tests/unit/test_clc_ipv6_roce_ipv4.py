"""A host whose CLC runs over one address while its RoCE frames go over another (its GID an
IPv4-mapped address, which its Proposal, Accept or Confirm carries with its MAC) is one host
(dissectors/derive.py, Deriver.alias): the summary showed it twice, its connection under the
CLC's address without bytes and its RDMA WRITEs under the RoCE address in a row of their
own. First seen with CLC over IPv6; the same held for CLC and RoCE both over IPv4 on two
subnets (a RoCE port on another interface, mapped by PNET ID, or SMC-Rv2 across subnets)."""

from __future__ import annotations

import io
import ipaddress

import pytest

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from dissectors.summary import summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.wire import cdc, clc, roce
from stack.wire.roce import Opcode

A6, B6, A4, B4 = "fd00::1", "fd00::2", "10.5.0.1", "10.5.0.2"
MA, MB = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
QA, QB, RKEY_B, TOKEN_A, TOKEN_B = 0x11, 0x12, 0xB0B, 0x11, 0x22


def mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address("::ffff:" + ip).packed


def capture(a: str = A6, b: str = B6) -> bytes:
    """CLC between ``a`` and ``b``; RoCE between A4 and B4."""
    flow = TcpFlow(Endpoint(ipaddress.ip_address(a), 40000, MA), Endpoint(ipaddress.ip_address(b), 5000, MB))
    if ":" in a:
        prefix = clc.IpPrefixArea(ipv6=(clc.Ipv6Prefix(ipaddress.IPv6Address("fd00::"), 64),))
    else:
        prefix = clc.IpPrefixArea(subnet=ipaddress.IPv4Address("192.168.7.0"), prefix_len=24)
    proposal = clc.Proposal(b"\1" * 8, mapped(A4), MA, version=1, prefix=prefix, smcd=None)
    common = dict(rmbe_size=1, qp_mtu=3, rmb_vaddr=0x1000, psn=1, first_contact=True, version=1)
    accept = clc.Accept(b"\2" * 8, mapped(B4), MB, QB, RKEY_B, TOKEN_B, **common)
    confirm = clc.Confirm(b"\1" * 8, mapped(A4), MA, QA, 0xA0A, TOKEN_A, **common)
    frames = [*flow.handshake(), flow.data(True, proposal.encode()), flow.data(False, accept.encode()), flow.data(True, confirm.encode())]
    write = roce.RocePacket(roce.Bth(Opcode.RDMA_WRITE_ONLY, QB, 1), reth=roce.Reth(0x1000, RKEY_B, 1000), payload=bytes(1000))
    cdc_a = roce.RocePacket(roce.Bth(Opcode.SEND_ONLY, QB, 2), payload=cdc.CdcMessage(seqno=1, token=TOKEN_B, prod=cdc.Cursor(0, 1000)).encode())
    cdc_b = roce.RocePacket(roce.Bth(Opcode.SEND_ONLY, QA, 1), payload=cdc.CdcMessage(seqno=1, token=TOKEN_A, cons=cdc.Cursor(0, 1000)).encode())
    frames += [roce.encode_frame(write, A4, B4, 49152), roce.encode_frame(cdc_a, A4, B4, 49152), roce.encode_frame(cdc_b, B4, A4, 49153)]
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    for i, f in enumerate(frames):
        w.write_packet(0, 1_000_000_000 + i * 100_000, f)
    return buf.getvalue()


@pytest.mark.parametrize("a, b", [(A6, B6), ("192.168.7.1", "192.168.7.2")], ids=["clc_over_ipv6", "clc_over_another_ipv4_subnet"])
def test_clc_and_roce_over_two_addresses_are_one_host(a, b):
    events = list(read_events(capture(a, b)))
    assert {e.host for e in events if e.host} == {a, b}
    d = summarize(events).to_dict()
    assert d["connections"] == {"total": 1, "ends": 2, "modes": {"SMCR": 1}}  # one connection, both its ends
    rows = {(c["host"], c["role"]): c for c in d["conns"]}
    assert set(rows) == {(a, "client"), (b, "server")}
    assert rows[(a, "client")]["bytes_written"] == 1000 and d["moved"] == 1000
    cdcs = [(e.host, e.conn, e.lgr) for e in events if e.kind == "cdc.msg"]
    assert cdcs == [(a, 0, "lgr1"), (b, 0, "lgr1")]
