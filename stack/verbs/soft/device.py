"""A soft RoCEv2 device: one UDP socket on port 4791 of its own address, and a thread
that plays the NIC (receives, acknowledges, retransmits) whether or not the
application polls, as hardware does.

Frames are real RoCEv2: BTH/RETH/AETH/ImmDt and a correct ICRC computed over the IPv4
and UDP headers the kernel puts around the datagram (an unconnected socket sending with
DF set gets IP identification 0, so the ICRC is known before sending). A capture of the
interface decodes in Wireshark as InfiniBand and SMC.

Fault injection (``device.faults``): loss probability, dropping the next N frames, a
fixed delay, and port down/up. A frame tap hands every frame sent, received or dropped,
with its timestamp, to whoever listens.
"""

from __future__ import annotations

import ctypes
import errno
import heapq
import ipaddress
import itertools
import os
import random
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from stack.wire import roce
from stack.wire.roce import ROCE_V2_PORT, Opcode, RoceError

from ..api import (
    Access,
    AsyncEvent,
    Capability,
    Device,
    EventType,
    FrameRecord,
    GidEntry,
    Mtu,
    PortAttr,
    PortState,
    QPCap,
    VerbsError,
)
from .memory import PAGE, SoftCQ, SoftMR, SoftPD
from .rc import SoftQP

SOCKET_BUFFER = 8 << 20  # room for the in-flight windows of many QPs
RX_BATCH = 256


WRITE_OPCODES = range(0x06, 0x0C)  # RDMA WRITE FIRST .. ONLY WITH IMMEDIATE: what write_snap cuts


def snap(record: FrameRecord, write_snap: int) -> FrameRecord:
    """The record as a tap with this snap length sees it: an RDMA WRITE frame longer than
    ``write_snap`` bytes keeps its first ``write_snap`` (headers and the start of the data)."""
    p = record.payload
    if write_snap and len(p) > write_snap and p[0] in WRITE_OPCODES:
        return record._replace(payload=p[:write_snap], length=len(p))
    return record


@dataclass
class Faults:
    """What the device does wrong on purpose. Changes take effect immediately."""

    loss: float = 0.0  # probability of dropping each transmitted frame
    rx_loss: float = 0.0  # probability of dropping each received frame
    drop_next: int = 0  # drop this many transmitted frames, then none
    delay: float = 0.0  # seconds each transmitted frame is held back
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)


def mac_for(ip: ipaddress.IPv4Address) -> bytes:
    return b"\x02\x00" + ip.packed


def _link_local_gid(mac: bytes) -> bytes:
    eui = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return b"\xfe\x80" + bytes(6) + eui


class SoftDeviceBase(Device):
    """What both engines of a soft device share: its address, MAC and GIDs, the UDP socket,
    the names it gives to memory regions and QPs (keys, virtual addresses, QP numbers), the
    port, faults and the frame tap. The engines differ in who moves the frames:
    :class:`SoftDevice` (pure Python, a NIC thread under the interpreter lock) and
    ``native.SoftDeviceNative`` (the compiled engine of native/softroce)."""

    engine = ""

    def __init__(self, name: str, addr: str, *, mtu: Mtu = Mtu.MTU_1024, netns: str | None = None, seed: int | None = None) -> None:
        self.name = name
        self.ip = ipaddress.IPv4Address(addr)
        self.addr = str(self.ip)
        self.mac = mac_for(self.ip)
        self.mtu = Mtu(mtu)
        self.netns = netns
        self.port_state = PortState.ACTIVE
        self._lock = threading.RLock()
        self._events: list[AsyncEvent] = []
        self._taps: list[tuple[Callable, bool, int, bool]] = []  # (tap, wants batches, write_snap, wants raw records)
        self.write_snap = 0
        self._keys: set[int] = set()
        # Keys, QP numbers and virtual addresses nobody can compute in advance: from the
        # system's CSPRNG, per device (a seed makes them repeatable, for tests and the twins)
        self._rng: random.Random = random.Random(seed) if seed is not None else secrets.SystemRandom()
        self._next_va = 0x7F0000000000 + self._rng.getrandbits(28) * PAGE  # page-aligned, below 2**47
        self._sock = self._open_socket()

    # ------------------------------------------------------------------ socket

    def _open_socket(self) -> socket.socket:
        def make() -> socket.socket:
            # No SO_REUSEADDR: with it another local user could bind the same address and port
            # and the kernel would hand them this device's frames
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
                try:
                    s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            # DF set: the kernel then sends IP identification 0, which the ICRC covers.
            s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            try:
                s.bind((self.addr, ROCE_V2_PORT))
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRINUSE:  # another soft device (another stack) on this address
                    raise VerbsError(e.errno, f"soft device {self.name}: {self.addr}:{ROCE_V2_PORT} is in use: another stack has {self.addr} "
                                              "as its RoCE device") from None  # fmt: skip
                raise VerbsError(e.errno or errno.EADDRNOTAVAIL, f"soft device {self.name}: cannot bind {self.addr}:{ROCE_V2_PORT}: {e.strerror}") from None
            s.setblocking(False)
            return s

        if self.netns is None:
            return make()
        return _in_netns(self.netns, make)

    # ------------------------------------------------------------------ Device interface

    def query_port(self, port: int = 1) -> PortAttr:
        self._check_port(port)
        return PortAttr(self.port_state, self.mtu, Mtu.MTU_4096, 2, self.mac)

    def gid_table(self, port: int = 1) -> list[GidEntry]:
        self._check_port(port)
        v4 = bytes(10) + b"\xff\xff" + self.ip.packed
        return [GidEntry(0, _link_local_gid(self.mac), "roce_v2", port), GidEntry(1, v4, "roce_v2", port)]

    def pkey_table(self, port: int = 1) -> list[int]:
        """One entry, the default full-membership P_Key: what both engines put in the BTH
        of every frame (``roce.DEFAULT_PKEY``), as rxe does (``IB_DEFAULT_PKEY_FULL``)."""
        self._check_port(port)
        return [roce.DEFAULT_PKEY]

    def _check_port(self, port: int) -> None:
        if port != 1:
            raise VerbsError(errno.EINVAL, f"{self.name} has one port (1), not {port}")

    # ------------------------------------------------------------------ taps

    def add_tap(self, tap: Callable, batch: bool = False, write_snap: int = 0, raw: bool = False) -> None:
        """Call ``tap`` with every frame sent, received or dropped; ``batch``: with lists of
        them (cheaper: the compiled engine hands frames out in batches anyway); ``write_snap``:
        RDMA WRITE frames keep that many bytes, their length on the wire in ``length`` (the
        device applies the largest a tap asks for, or none when one asks for whole frames);
        ``raw``: the compiled engine's raw records (this engine hands batches of FrameRecords)."""
        with self._lock:
            self._taps.append((tap, batch or raw, write_snap, False))
            self._tap_changed()

    def remove_tap(self, tap: Callable) -> None:
        with self._lock:
            self._taps = [t for t in self._taps if t[0] != tap]
            self._tap_changed()

    def _tap_changed(self) -> None:
        snaps = [t[2] for t in self._taps]
        self.write_snap = 0 if not snaps or 0 in snaps else max(snaps)

    def flush_taps(self) -> None:
        """Hand every frame seen so far to the taps before returning (this engine calls
        them as frames pass, so there is nothing to wait for)."""

    def _tap(self, record: FrameRecord) -> None:
        record = snap(record, self.write_snap)
        for entry in list(self._taps):
            try:
                entry[0]([record] if entry[1] else record)
            except Exception:  # a broken listener must not take the NIC down
                if entry in self._taps:
                    self._taps.remove(entry)

    # ------------------------------------------------------------------ names of new objects

    def _new_key(self) -> int:
        while True:
            key = self._rng.getrandbits(32)
            if key and key not in self._keys:
                self._keys.add(key)
                return key

    def _new_va(self, size: int) -> int:
        """A virtual address for a new region, with a guard page after it."""
        addr = self._next_va
        self._next_va += (size + 2 * PAGE - 1) // PAGE * PAGE
        return addr

    def _new_qpn(self, taken) -> int:
        """A random 24-bit QP number (0 and 1 are the special QPs), not in use on this device."""
        while True:
            qpn = self._rng.getrandbits(24)
            if qpn >= 2 and qpn not in taken:
                return qpn


class SoftDevice(SoftDeviceBase):
    """The pure-Python engine: a thread plays the NIC (receives, acknowledges, retransmits)
    whether or not the application polls, as hardware does."""

    engine = "python"
    capabilities = frozenset({Capability.PORT_CONTROL, Capability.FAULT_INJECTION, Capability.FRAME_TAP})

    def __init__(self, name: str, addr: str, *, mtu: Mtu = Mtu.MTU_1024, netns: str | None = None, seed: int | None = None) -> None:
        super().__init__(name, addr, mtu=mtu, netns=netns, seed=seed)
        self.faults = Faults()
        self.faults.reseed(seed)
        self.stats = {"tx_frames": 0, "rx_frames": 0, "tx_dropped": 0, "rx_dropped": 0, "icrc_errors": 0, "bad_frames": 0, "unknown_qp": 0,
                      "internal_errors": 0, "psn_out_of_window": 0, "suspect_ignored": 0}  # fmt: skip
        self.last_internal_error = ""
        self._qps: dict[int, SoftQP] = {}
        self._mrs: dict[int, SoftMR] = {}
        self._timers: list[tuple[float, int, SoftQP, str]] = []
        self._timer_ids: dict[tuple[int, str], int] = {}
        self._timer_seq = itertools.count()
        self._delayed: list[tuple[float, int, str, bytes]] = []
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"soft-roce {self.addr}", daemon=True)
        self._thread.start()

    def alloc_pd(self) -> SoftPD:
        return SoftPD(self)

    def create_cq(self, depth: int = 256) -> SoftCQ:
        return SoftCQ(self, depth)

    def poll_events(self) -> list[AsyncEvent]:
        with self._lock:
            events, self._events = self._events, []
            return events

    def close(self) -> None:
        if not self._running:
            return
        self._running = False
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join(timeout=5)
        with self._lock:
            for qp in list(self._qps.values()):
                qp.destroy()
        self._sock.close()
        os.close(self._wake_fd)

    # ------------------------------------------------------------------ the port

    def set_port_state(self, up: bool) -> None:
        """Port down: nothing is sent or received, QPs retry until RETRY_EXC_ERR. Port up: traffic flows again."""
        with self._lock:
            new = PortState.ACTIVE if up else PortState.DOWN
            if new != self.port_state:
                self.port_state = new
                self._events.append(AsyncEvent(EventType.PORT_ACTIVE if up else EventType.PORT_ERR, port=1))

    # ------------------------------------------------------------------ host services for QPs

    def now(self) -> float:
        return time.monotonic()

    def active_mtu_bytes(self, port: int) -> int:
        return self.mtu.bytes

    def transmit(self, qp: SoftQP, packet: roce.RocePacket) -> None:
        dst = socket.inet_ntoa(qp.remote_ip)
        datagram = roce.encode_datagram(packet, self.addr, dst, ROCE_V2_PORT, ROCE_V2_PORT)
        self._send(dst, datagram)

    def _send(self, dst: str, datagram: bytes, *, delayed: bool = False) -> None:
        f = self.faults
        reason = None
        if self.port_state != PortState.ACTIVE:
            reason = "port down"
        elif not delayed and f.drop_next > 0:
            f.drop_next -= 1
            reason = "drop-next"
        elif not delayed and f.loss and f.rng.random() < f.loss:
            reason = "loss"
        elif not delayed and f.delay > 0:
            heapq.heappush(self._delayed, (self.now() + f.delay, next(self._timer_seq), dst, datagram))
            self._wake()
            return
        sent_at = time.time_ns()  # before the send: on loopback the peer may take and answer it before sendto returns
        if reason is None:
            try:
                self._sock.sendto(datagram, (dst, ROCE_V2_PORT))
            except (BlockingIOError, OSError) as e:  # socket full or network unreachable: the wire lost it
                reason = f"send failed: {e.strerror or e}"
        if reason is None:
            self.stats["tx_frames"] += 1
        else:
            self.stats["tx_dropped"] += 1
        if self._taps:
            self._tap(FrameRecord("tx", sent_at, self.addr, ROCE_V2_PORT, dst, ROCE_V2_PORT, datagram, reason))

    def arm_timer(self, qp: SoftQP, key: str, when: float) -> None:
        seq = next(self._timer_seq)
        self._timer_ids[(qp.qp_num, key)] = seq
        heapq.heappush(self._timers, (when, seq, qp, key))
        if threading.current_thread() is not self._thread:
            self._wake()

    def cancel_timer(self, qp: SoftQP, key: str) -> None:
        self._timer_ids.pop((qp.qp_num, key), None)

    def find_mr(self, rkey: int) -> SoftMR | None:
        return self._mrs.get(rkey)

    def post_event(self, event: AsyncEvent) -> None:
        self._events.append(event)

    def count(self, stat: str) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + 1

    _post_event = post_event

    def forget_qp(self, qp: SoftQP) -> None:
        self._qps.pop(qp.qp_num, None)

    # ------------------------------------------------------------------ object creation

    def _new_mr(self, pd: SoftPD, size: int, access: Access, buffer: memoryview | None = None) -> SoftMR:
        with self._lock:
            mr = SoftMR(pd, size, access, self._new_va(size), self._new_key(), self._new_key(), buffer)
            self._mrs[mr.rkey] = mr
            return mr

    def _forget_mr(self, mr: SoftMR) -> None:
        with self._lock:
            self._mrs.pop(mr.rkey, None)

    def _new_qp(self, pd: SoftPD, send_cq, recv_cq, cap: QPCap) -> SoftQP:
        if not isinstance(send_cq, SoftCQ) or not isinstance(recv_cq, SoftCQ):
            raise VerbsError(errno.EINVAL, "create_rc_qp: completion queues must belong to a soft device")
        with self._lock:
            qpn = self._new_qpn(self._qps)
            qp = _LockedQP(self, pd, send_cq, recv_cq, cap, qpn)
            self._qps[qpn] = qp
            return qp

    # ------------------------------------------------------------------ the NIC thread

    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_fd, selectors.EVENT_READ)
        while self._running:
            timeout = self._next_deadline()
            for key, _ in sel.select(timeout):
                if key.fileobj is self._sock:
                    self._receive_batch()
                else:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
            self._run_timers()
        sel.close()

    def _next_deadline(self) -> float | None:
        with self._lock:
            soonest = [t[0] for t in (self._timers[:1] + self._delayed[:1])]
        if not soonest:
            return None
        return max(0.0, min(soonest) - self.now())

    def _run_timers(self) -> None:
        now = self.now()
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                _, _, dst, datagram = heapq.heappop(self._delayed)
                self._send(dst, datagram, delayed=True)
            while self._timers and self._timers[0][0] <= now:
                _, seq, qp, key = heapq.heappop(self._timers)
                if self._timer_ids.get((qp.qp_num, key)) == seq:
                    del self._timer_ids[(qp.qp_num, key)]
                    try:
                        qp.on_timer(key, now)
                    except Exception as e:
                        self._internal_error("timer", e)

    def _internal_error(self, where: str, error: Exception) -> None:
        self.stats["internal_errors"] = self.stats.get("internal_errors", 0) + 1
        self.last_internal_error = f"{where}: {type(error).__name__}: {error}"

    def _receive_batch(self) -> None:
        for _ in range(RX_BATCH):
            try:
                data, (src, sport) = self._sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError:
                return
            with self._lock:
                try:
                    self._receive(data, src, sport)
                except Exception as e:  # the NIC keeps running; the frame is counted and lost
                    self._internal_error("receive", e)

    def _receive(self, data: bytes, src: str, sport: int) -> None:
        reason = None
        packet = None
        if self.port_state != PortState.ACTIVE:
            reason = "port down"
        elif self.faults.rx_loss and self.faults.rng.random() < self.faults.rx_loss:
            reason = "rx loss"
        else:
            try:
                packet = roce.decode_datagram(data, src, self.addr, sport, ROCE_V2_PORT)
            except RoceError as e:
                reason = "bad ICRC" if "ICRC" in e.reason else f"bad frame: {e.reason}"
                self.stats["icrc_errors" if "ICRC" in e.reason else "bad_frames"] += 1
        if self._taps:
            self._tap(FrameRecord("rx", time.time_ns(), src, sport, self.addr, ROCE_V2_PORT, data, reason))
        if packet is None:
            self.stats["rx_dropped"] += 1
            return
        self.stats["rx_frames"] += 1
        qp = self._qps.get(packet.bth.dest_qp)
        # RC accepts packets only from the address it is connected to.
        if qp is None or qp.remote_ip != socket.inet_aton(src):
            self.stats["unknown_qp"] += 1
            return
        now = self.now()
        if packet.bth.opcode == Opcode.ACKNOWLEDGE:
            qp.on_ack(packet, now)
        else:
            qp.on_request(packet, now)


class _LockedQP(SoftQP):
    """The application's entry points take the device lock; the NIC thread already holds it."""

    def _locked(name):  # noqa: N805 - builds methods
        def method(self, *args, **kwargs):
            with self.host._lock:
                return getattr(SoftQP, name)(self, *args, **kwargs)

        method.__name__ = name
        return method

    post_send = _locked("post_send")
    post_recv = _locked("post_recv")
    to_init = _locked("to_init")
    to_rtr = _locked("to_rtr")
    to_rts = _locked("to_rts")
    to_error = _locked("to_error")
    destroy = _locked("destroy")
    del _locked


_libc = None


def _in_netns(name: str, fn: Callable[[], socket.socket]) -> socket.socket:
    """Run ``fn`` in a thread that joined network namespace ``name`` (a socket keeps its namespace)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    path = f"/var/run/netns/{name}"
    result: dict = {}

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            result["error"] = VerbsError(errno.ENOENT, f"network namespace {name!r} not found ({path}): {e.strerror}")
            return
        try:
            if _libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                err = ctypes.get_errno()
                result["error"] = VerbsError(err, f"cannot join network namespace {name!r}: {os.strerror(err)}")
                return
            result["sock"] = fn()
        except Exception as e:  # handed to the caller's thread
            result["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]
