"""A live capture of the RoCEv2 frames on a network device (AF_PACKET), decoded by our own
codecs (stack.wire) into ``cdc.msg``, ``llc.msg`` and ``rdma.write`` facts.

Soft-RoCE (rxe) sends and receives its RoCEv2 frames through the netdev it is bound to,
so a packet socket there sees both directions; a hardware RNIC does not pass them
through the kernel's network stack, and this sees nothing (a sniffer flow on the RNIC,
as libpcap's rdmasniff makes, would be needed there). Opening a packet socket needs
CAP_NET_RAW.

:func:`decode` is pure (bytes in, facts out); :class:`Capture` is the I/O: a thread reading
the socket, with the kernel's receive time of each frame (SO_TIMESTAMPNS, CLOCK_REALTIME)
and a classic BPF filter so that only UDP to port 4791 crosses into Python.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable

from stack.wire import cdc as wcdc
from stack.wire import llc as wllc
from stack.wire import roce
from stack.wire._base import WireError
from stack.wire.fields import cdc_fields, llc_fields

from .kio import KernelUnavailable, in_netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RCVBUFFORCE = 33
SOL_PACKET, PACKET_STATISTICS = 263, 6
RCVBUF = 16 << 20
NEED_CAP = "a live capture needs CAP_NET_RAW (root)"
SENDS = {roce.Opcode.SEND_ONLY, roce.Opcode.SEND_FIRST, roce.Opcode.SEND_ONLY_WITH_IMMEDIATE}
WRITES = {roce.Opcode.RDMA_WRITE_ONLY, roce.Opcode.RDMA_WRITE_FIRST, roce.Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE}

# classic BPF: IPv4, UDP, not a later fragment, destination port 4791 (what `tcpdump -dd
# 'udp dst port 4791'` compiles to, written out here)
_BPF = [
    (0x28, 0, 0, 12),  # ldh [12]            ethertype
    (0x15, 0, 8, 0x0800),  # jeq IPv4
    (0x30, 0, 0, 23),  # ldb [23]            protocol
    (0x15, 0, 6, 17),  # jeq UDP
    (0x28, 0, 0, 20),  # ldh [20]            flags and fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset 0x1fff: a later fragment, drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 16),  # ldh [x+16]          UDP destination port
    (0x15, 0, 1, roce.ROCE_V2_PORT),  # jeq 4791
    (0x06, 0, 0, 0x40000),  # ret whole frame
    (0x06, 0, 0, 0),  # ret 0
]


@dataclass
class Decoded:
    """What one frame carried: its UDP ends and payload (for the recorder), and the SMC
    message facts our codecs found in it (kind, fields)."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    messages: list[tuple[str, dict[str, Any]]]
    error: str | None = None


def decode(frame: bytes) -> Decoded | None:
    """An Ethernet frame: None when it is not RoCEv2; otherwise its facts (an SMC message
    that does not decode is named in ``error``, never raised)."""
    try:
        f = roce.decode_frame(frame)
    except WireError:
        return None
    start = 14 + f.ip.header_length
    payload = frame[start + 8 : start + f.udp.length]
    out = Decoded(str(f.ip.src), f.udp.sport, str(f.ip.dst), f.udp.dport, payload, [])
    pkt = f.packet
    try:
        if pkt.bth.opcode in SENDS and pkt.payload:
            if pkt.payload[0] == wcdc.CDC_TYPE:
                out.messages.append(("cdc.msg", {**cdc_fields(wcdc.decode(pkt.payload)), "raw": bytes(pkt.payload[:44])}))
            else:
                msg = wllc.decode(pkt.payload)
                out.messages.append(("llc.msg", llc_fields(msg, pkt.payload[: len(msg.encode(msg.order))])))
        elif pkt.bth.opcode in WRITES and pkt.reth is not None:
            out.messages.append(("rdma.write", {"length": pkt.reth.dma_len, "rkey": pkt.reth.rkey, "vaddr": pkt.reth.vaddr}))
    except (WireError, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"
    return out


def _filter_prog() -> bytes:
    return b"".join(struct.pack("HBBI", *ins) for ins in _BPF)


class Capture:
    """A packet socket on ``ifname`` (in ``netns``); ``start(callback)`` calls
    ``callback(timestamp_ns, direction, frame bytes)`` from its thread."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        self.ifname = ifname

        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                prog = _filter_prog()
                import ctypes

                buf = ctypes.create_string_buffer(prog)
                fprog = struct.pack("HL", len(_BPF), ctypes.addressof(buf))
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
                self._prog = buf  # keep it alive while the kernel copies it (it copies at once)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                try:  # room for a burst of RDMA WRITEs while the reader is busy (root may exceed rmem_max)
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                s.bind((ifname, ETH_P_ALL))
            except BaseException:
                s.close()
                raise
            return s

        try:
            self.sock = in_netns(netns, make)
        except PermissionError:
            raise KernelUnavailable(errno.EPERM, NEED_CAP) from None
        except KernelUnavailable:
            raise
        except OSError as e:
            raise KernelUnavailable(e.errno or 0, f"cannot capture on {ifname}: {e.strerror or e}") from None
        self.sock.settimeout(0.2)
        self.frames = 0
        self.dropped = 0  # frames the kernel dropped because the reader fell behind (PACKET_STATISTICS)
        self.notes: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, callback: Callable[[int, str, bytes], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(callback,), name=f"smckernel capture {self.ifname}", daemon=True)
        self._thread.start()

    def _run(self, callback: Callable[[int, str, bytes], None]) -> None:
        import time

        while not self._stop.is_set():
            try:
                data, anc, _flags, addr = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(16))
            except socket.timeout:
                continue
            except OSError as e:
                self.notes.append(f"capture on {self.ifname} stopped: {e.strerror or e}")
                return
            ts = None
            for level, ctype, cdata in anc:
                if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    ts = sec * 1_000_000_000 + nsec
            if ts is None:
                ts = time.time_ns()
            direction = "tx" if len(addr) > 2 and addr[2] == PACKET_OUTGOING else "rx"
            self.frames += 1
            try:
                callback(ts, direction, data)
            except Exception as e:  # noqa: BLE001 - the capture goes on
                self.notes.append(f"frame handler failed: {type(e).__name__}: {e}")

    def drops(self) -> int:
        """Frames the kernel dropped for this socket so far (its counters reset on reading)."""
        try:
            _packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.dropped += drops
        except OSError:
            pass
        return self.dropped

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self.drops():
            self.notes.append(f"capture on {self.ifname}: the kernel dropped {self.dropped} frames (the reader fell behind)")
        self.sock.close()
