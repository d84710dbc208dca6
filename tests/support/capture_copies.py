"""Captures that hold each RoCE frame twice (dissectors/roce_analysis.py, capture copies):
``tcpdump -i any`` (Linux cooked SLL / SLL2) on a host with a VLAN sub-interface or a bridge,
a pcapng of two interfaces, one interface that saw a frame again. Used by smc-trace's tests
(tests/unit/test_capture_copies.py) and the Wireshark plugin's (tests/oracle)."""

from __future__ import annotations

import io
import struct

from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, PcapngWriter
from stack.wire import cdc, roce
from stack.wire.roce import Aeth, NakCode, Opcode

A, B = "10.1.0.1", "10.1.0.2"
QA, QB = 0x111, 0x222
T0 = 1_700_000_000_000_000_000
US = 1000  # ns
MS = 1_000_000
VLAN = 100
ETH = b"\2" * 6 + b"\4" * 6  # destination and source MAC


def _ip(packet: roce.RocePacket, src: str = A, dst: str = B) -> bytes:
    return roce.encode_frame(packet, src, dst, 49152)[14:]  # the IP packet, without its Ethernet header


def send(psn: int) -> bytes:
    msg = cdc.CdcMessage(seqno=psn, token=0xAB, prod=cdc.Cursor(0, 100 * psn))
    return _ip(roce.RocePacket(roce.Bth(Opcode.SEND_ONLY, QB, psn), payload=msg.encode()))


def write(psn: int, length: int = 512) -> bytes:
    reth = roce.Reth(0x7000 + psn * length, 0xCAFE, length)
    return _ip(roce.RocePacket(roce.Bth(Opcode.RDMA_WRITE_ONLY, QB, psn), reth=reth, payload=bytes(length)))


def nak(psn: int) -> bytes:
    return _ip(roce.RocePacket(roce.Bth(Opcode.ACKNOWLEDGE, QA, psn), aeth=Aeth.nak(1, NakCode.PSN_SEQUENCE_ERROR)), B, A)


def sll2(ip: bytes, ifindex: int, vlan: int | None = None) -> bytes:
    """A Linux cooked v2 header (tcpdump -i any); libpcap puts a VLAN's tag back after it."""
    proto, tag = (0x8100, struct.pack("!HH", vlan, 0x0800)) if vlan is not None else (0x0800, b"")
    return struct.pack("!HHIHBB8s", proto, 0, ifindex, 1, 4, 6, bytes(8)) + tag + ip


def sll(ip: bytes) -> bytes:
    return struct.pack("!HHH8sH", 4, 1, 6, bytes(8), 0x0800) + ip


def any_capture(frames: list[tuple[int, bytes]], linktype: int = LINKTYPE_LINUX_SLL2, extra: list[tuple[int, bytes]] = ()) -> bytes:
    """``tcpdump -i any`` on a host whose RoCE runs over VLAN 100: each frame on eth0.100
    (untagged) and 5 us later on eth0 (with its tag), as SLL2; as SLL (v1) both copies look
    alike (no interface index, and here no tag either: a bridge and its port). ``extra``:
    frames written as they are, after."""
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(linktype, "any")
    for ns, ip in frames:
        if linktype == LINKTYPE_LINUX_SLL2:
            w.write_packet(0, ns, sll2(ip, 5))
            w.write_packet(0, ns + 5 * US, sll2(ip, 2, VLAN))
        else:
            w.write_packet(0, ns, sll(ip))
            w.write_packet(0, ns + 5 * US, sll(ip))
    for ns, frame in extra:
        w.write_packet(0, ns, frame)
    return buf.getvalue()


def two_interfaces(frames: list[tuple[int, bytes]]) -> bytes:
    """``dumpcap -i eth0 -i eth0.100``: two interfaces, each frame on eth0 (tagged) and its copy
    on eth0.100 2 ms later (written right after it)."""
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    w.add_interface(LINKTYPE_ETHERNET, "eth0.100")
    for ns, ip in frames:
        w.write_packet(0, ns, ETH + struct.pack("!HHH", 0x8100, VLAN, 0x0800) + ip)
        w.write_packet(1, ns + 2 * MS, ETH + b"\x08\x00" + ip)
    return buf.getvalue()


def one_interface(frames: list[tuple[int, bytes]]) -> bytes:
    """One Ethernet interface (br0), each frame once, as given."""
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "br0")
    for ns, ip in frames:
        w.write_packet(0, ns, ETH + b"\x08\x00" + ip)
    return buf.getvalue()
