"""Reading the lab's captures (classic pcap from tcpdump on a VM's eth0) for the interop tests.

* :func:`frames` walks a pcap file; :func:`tcp_syns` finds every SYN and SYN-ACK with its
  TCP header, for the SMC option check with ``native.tcpopt``.
* :func:`malformed` asks tshark which frames it flags as malformed, and :func:`explain`
  says why a frame is allowed to be: Wireshark 4.0 reads the 16-bit length of an SMC-Rv2
  LLC message big-endian, while Linux on x86 (and our stack, to match it) writes it in
  host byte order (wireshark-oracle.md, last section). Any other malformed frame is a bug.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from support import tshark

ROCE_PORT = 4791
LLC_V2_TYPES = {0x21: "CONFIRM LINK v2", 0x22: "ADD LINK v2", 0x24: "DELETE LINK v2", 0x25: "REQUEST ADD LINK v2",
                0x26: "CONFIRM RKEY v2", 0x27: "TEST LINK v2", 0x29: "DELETE RKEY v2"}  # fmt: skip


@dataclass
class Frame:
    number: int  # 1-based, as tshark counts
    data: bytes


def frames(path: Path) -> list[Frame]:
    raw = Path(path).read_bytes()
    magic = raw[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        order = "<"
    elif magic == b"\xa1\xb2\xc3\xd4":
        order = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    (linktype,) = struct.unpack_from(order + "I", raw, 20)
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    out, off, n = [], 24, 0
    while off + 16 <= len(raw):
        _s, _us, incl, _orig = struct.unpack_from(order + "IIII", raw, off)
        n += 1
        out.append(Frame(n, raw[off + 16 : off + 16 + incl]))
        off += 16 + incl
    return out


def _ip(data: bytes) -> tuple[int, str, str, bytes] | None:
    """(protocol, src, dst, payload) of an Ethernet/IPv4 frame."""
    if len(data) < 34 or data[12:14] != b"\x08\x00":
        return None
    ihl = (data[14] & 0x0F) * 4
    total = struct.unpack_from(">H", data, 16)[0]
    return data[23], socket.inet_ntoa(data[26:30]), socket.inet_ntoa(data[30:34]), data[14 + ihl : 14 + total]


@dataclass
class Syn:
    frame: int
    src: str
    dst: str
    sport: int
    dport: int
    ack: bool  # a SYN-ACK
    header: bytes  # the whole TCP header, options included


def tcp_syns(path: Path) -> list[Syn]:
    out = []
    for f in frames(path):
        ip = _ip(f.data)
        if ip is None or ip[0] != 6:
            continue
        tcp = ip[3]
        if len(tcp) < 20 or not tcp[13] & 0x02:
            continue
        sport, dport = struct.unpack_from(">HH", tcp)
        out.append(Syn(f.number, ip[1], ip[2], sport, dport, bool(tcp[13] & 0x10), tcp[: (tcp[12] >> 4) * 4]))
    return out


def roce_payload(data: bytes) -> bytes | None:
    """The payload of a RoCEv2 frame: after the 12-byte BTH (plus RETH for an RDMA WRITE
    first/only), without the 4-byte ICRC; None for other frames."""
    ip = _ip(data)
    if ip is None or ip[0] != 17 or len(ip[3]) < 8 + 12 + 4:
        return None
    sport, dport = struct.unpack_from(">HH", ip[3])
    if dport != ROCE_PORT:
        return None
    bth = ip[3][8:20]
    opcode = bth[0]
    start = 20 + (16 if opcode in (0x06, 0x0A) else 0)  # RC RDMA WRITE First / Only carry a RETH
    return ip[3][start:-4]


def malformed(path: Path) -> list[int]:
    """Frame numbers tshark marks malformed."""
    res = tshark.run(["-n", "-r", str(path), "-Y", "_ws.malformed", "-T", "fields", "-e", "frame.number"])  # hermetic
    if res.returncode != 0:
        raise AssertionError(f"tshark failed on {path}: {res.stderr[-2000:]}")
    return [int(x) for x in res.stdout.split()]


def explain(data: bytes) -> str | None:
    """Why a frame that tshark 4.0 flags as malformed is a known false positive (None: it is not)."""
    payload = roce_payload(data)
    if payload is None or len(payload) < 44:
        return None
    kind = LLC_V2_TYPES.get(payload[0])
    if kind is None:
        return None
    host_order = int.from_bytes(payload[1:3], "little")
    big = int.from_bytes(payload[1:3], "big")
    if host_order == len(payload) and big != len(payload):
        return (f"{kind}, {len(payload)} bytes: its length {payload[1:3].hex()} is host (little-endian) order as the "
                f"x86 kernel writes it; Wireshark 4.0 reads it big-endian ({big})")  # fmt: skip
    return None


def smc_messages(path: Path) -> list[str]:
    """The Info column of every frame tshark decodes as SMC (CLC over TCP, LLC/CDC over RoCE)."""
    res = tshark.run(["-n", "-r", str(path), "-Y", "smc", "-T", "fields", "-e", "_ws.col.Info"])  # hermetic
    if res.returncode != 0:
        raise AssertionError(f"tshark failed on {path}: {res.stderr[-2000:]}")
    return res.stdout.splitlines()
