"""The soft device on the compiled engine (native/softroce): the same verbs objects as
the pure-Python engine, with the frames, the RC protocol and the memory checks in C.

The engine's thread plays the NIC without the interpreter lock: it receives frames in
batches (recvmmsg), places RDMA WRITEs straight into registered memory and SENDs into
posted receive buffers, acknowledges, retransmits, and puts completions in a ring whose
eventfd the asyncio loop watches. Posting a work request sends its frames at once from
the caller's thread (sendmmsg), as a doorbell would start the NIC.

Names (keys, virtual addresses, QP numbers) come from :class:`SoftDeviceBase`, shared
with the Python engine, so both put the same bytes on the wire for the same inputs.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import socket
import sys
import threading
import time
from typing import Sequence

from native import softroce

from ..api import (
    Access,
    AsyncEvent,
    Capability,
    CompletionQueue,
    EventType,
    MemoryRegion,
    Mtu,
    PortState,
    ProtectionDomain,
    QPCap,
    QPState,
    QueuePair,
    RCPath,
    RecvWR,
    SendWR,
    VerbsError,
    WcOpcode,
    WcStatus,
    WorkCompletion,
)
from ..taprec import TAPREC, pack_raw
from .device import FrameRecord, SoftDeviceBase
from .memory import _check_buffer

TAP_WAIT = 0.05  # seconds the tap thread waits for frames before it looks whether it should stop
TAP_GATHER = 0.01  # seconds the tap thread lets frames gather after a small batch
TAP_GATHER_BELOW = 1 << 20  # bytes: a batch this large reads on at once (the engine's tap ring holds 32 MiB)
TAP_GATHER_BYTES = 4 << 20  # bytes the ring may gather at the rate last seen


def gather_pause(got: int, elapsed: float) -> float:
    """How long the tap thread lets frames gather after a batch of ``got`` bytes that came
    in ``elapsed`` seconds: after a small batch up to TAP_GATHER, never longer than that rate
    takes to put TAP_GATHER_BYTES in the engine's ring; after a large one, or below half a
    millisecond, none."""
    if not 0 < got < TAP_GATHER_BELOW:
        return 0.0
    pause = min(TAP_GATHER, TAP_GATHER_BYTES * elapsed / got)
    return pause if pause > 0.0005 else 0.0


GSO_ENV = "SMCTOP_SOFT_GSO"
GSO_MODES = ("auto", "on", "off")
CAPTURE_CHECK = 0.1  # seconds between looks for a packet capture on the device's interface


FIRST_LOOK_WAIT = 1.0  # seconds a new device waits for its watcher's first look for a capture


def gso_mode(mode: str | None = None) -> str:
    """UDP segmentation offload of the compiled engine: "auto" (the default: batches, but
    frame by frame while a packet capture watches the device's interface), "on", "off".
    SMCTOP_SOFT_GSO overrides the default."""
    mode = mode or os.environ.get(GSO_ENV) or "auto"
    mode = {"1": "on", "yes": "on", "true": "on", "0": "off", "no": "off", "false": "off"}.get(mode.lower(), mode.lower())
    if mode not in GSO_MODES:
        raise VerbsError(errno.EINVAL, f"{GSO_ENV}={mode!r}: choose auto, on or off")
    return mode


def captured(ifindexes: set[int] | None) -> bool:
    """Whether a packet socket (tcpdump, dumpcap) listens on one of these interfaces, or on
    all of them, in the calling thread's network namespace; ``None``: any interface."""
    try:
        with open("/proc/thread-self/net/packet") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 4 and (ifindexes is None or int(parts[4]) == 0 or int(parts[4]) in ifindexes):
                    return True
    except (OSError, ValueError, StopIteration):
        pass
    return False


def _verbs_error(e: OSError) -> VerbsError:
    return VerbsError(e.errno or errno.EIO, e.strerror or str(e))


class NativeFaults:
    """The device's faults, kept in the engine (the same fields as the Python engine's Faults)."""

    _FIELDS = ("loss", "rx_loss", "drop_next", "delay")

    def __init__(self, dev: "SoftDeviceNative") -> None:
        object.__setattr__(self, "_dev", dev)
        object.__setattr__(self, "_values", {"loss": 0.0, "rx_loss": 0.0, "drop_next": 0, "delay": 0.0})
        object.__setattr__(self, "seed", None)

    def __getattr__(self, name: str):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name == "seed":
            self.reseed(value)
            return
        if name not in self._FIELDS:
            raise AttributeError(f"unknown fault {name!r}: {', '.join(self._FIELDS)}")
        self._values[name] = int(value) if name == "drop_next" else float(value)
        v = self._values
        self._dev._c.set_faults(v["loss"], v["rx_loss"], v["drop_next"], v["delay"])

    def reseed(self, seed: int | None) -> None:
        object.__setattr__(self, "seed", seed)
        self._dev._c.reseed(_seed64(seed))

    def __repr__(self) -> str:
        return f"NativeFaults({', '.join(f'{k}={v!r}' for k, v in self._values.items())}, seed={self.seed!r})"


def _seed64(seed: int | None) -> int:
    return int.from_bytes(os.urandom(8), "little") if seed is None else random.Random(seed).getrandbits(64)


class NativeMR(MemoryRegion):
    def __init__(self, pd: "NativePD", size: int, access: Access, addr: int, lkey: int, rkey: int, view: memoryview) -> None:
        self.pd = pd
        self.length = size
        self.access = Access(access)
        self.addr = addr
        self.lkey = lkey
        self.rkey = rkey
        self._view = view
        self.valid = True

    @property
    def buf(self) -> memoryview:
        return self._view

    def contains(self, addr: int, length: int) -> bool:
        return self.addr <= addr and addr + length <= self.addr + self.length

    def deregister(self) -> None:
        if self.valid:
            self.valid = False
            dev = self.pd.device
            if not dev._closed:
                dev._c.dereg_mr(self.lkey)

    def __repr__(self) -> str:
        return f"NativeMR(addr=0x{self.addr:x}, len={self.length}, lkey=0x{self.lkey:x}, rkey=0x{self.rkey:x})"


class NativePD(ProtectionDomain):
    def __init__(self, device: "SoftDeviceNative", pd_id: int) -> None:
        self.device = device
        self.id = pd_id

    def reg_mr(self, size: int, access: Access, buffer: memoryview | None = None) -> NativeMR:
        access = Access(access)
        if size <= 0:
            raise VerbsError(errno.EINVAL, f"reg_mr: size {size} must be positive")
        view = memoryview(bytearray(size)) if buffer is None else _check_buffer(buffer, size)[:size]
        if access & (Access.REMOTE_WRITE | Access.REMOTE_ATOMIC) and not access & Access.LOCAL_WRITE:
            raise VerbsError(errno.EINVAL, "reg_mr: remote write or atomic access requires local write")
        dev = self.device
        with dev._lock:
            mr = NativeMR(self, size, access, dev._new_va(size), dev._new_key(), dev._new_key(), view)
            try:
                dev._c.reg_mr(mr.lkey, mr.rkey, mr.addr, view, int(access), self.id)
            except OSError as e:
                raise _verbs_error(e) from None
        return mr

    def create_rc_qp(self, send_cq: CompletionQueue, recv_cq: CompletionQueue, cap: QPCap = QPCap()) -> "NativeQP":
        if not isinstance(send_cq, NativeCQ) or not isinstance(recv_cq, NativeCQ) or send_cq.device is not self.device or recv_cq.device is not self.device:
            raise VerbsError(errno.EINVAL, "create_rc_qp: completion queues must belong to this soft device")
        dev = self.device
        with dev._lock:
            qpn = dev._new_qpn(dev._qpns)
            try:
                dev._c.qp_create(qpn, self.id, send_cq.id, recv_cq.id, cap.max_send_wr, cap.max_recv_wr, cap.max_send_sge,
                                 cap.max_recv_sge, cap.max_inline_data)  # fmt: skip
            except OSError as e:
                raise _verbs_error(e) from None
            dev._qpns.add(qpn)
        return NativeQP(dev, self, cap, qpn)


def _wc(t: tuple) -> WorkCompletion:
    wr_id, status, opcode, qp_num, byte_len, imm, vendor_err = t
    return WorkCompletion(wr_id, WcStatus(status), WcOpcode(opcode), qp_num, byte_len, imm, vendor_err=vendor_err)


class NativeCQ(CompletionQueue):
    """A completion ring in the engine; its eventfd is readable while entries wait."""

    def __init__(self, device: "SoftDeviceNative", depth: int) -> None:
        if depth <= 0:
            raise VerbsError(errno.EINVAL, f"create_cq: depth {depth} must be positive")
        self.device = device
        self.depth = depth
        self.id = device._c.cq_create(depth)  # the engine's CQ number (runtime's hot path)
        self._fd = device._c.cq_fd(self.id)

    def poll(self, max_entries: int = 16) -> list[WorkCompletion]:
        return [_wc(t) for t in self.poll_raw(max_entries)]

    def poll_raw(self, max_entries: int = 64) -> list[tuple]:
        """Completions as (wr_id, status, opcode, qp_num, byte_len, imm, vendor_err) tuples: the runtime's fast path."""
        if self.device._closed:
            return []
        return self.device._c.cq_poll(self.id, max_entries)

    def fileno(self) -> int:
        return self._fd

    @property
    def overruns(self) -> int:
        return self.device._c.cq_len(self.id)[1]

    def __len__(self) -> int:
        return self.device._c.cq_len(self.id)[0]

    def destroy(self) -> None:
        if not self.device._closed:
            self.device._c.cq_destroy(self.id)
        self._fd = -1


def _sges(sges) -> tuple:
    return tuple((s.mr.lkey if getattr(s.mr, "valid", False) else 0, s.offset, s.length) for s in sges)


class NativeQP(QueuePair):
    def __init__(self, device: "SoftDeviceNative", pd: NativePD, cap: QPCap, qp_num: int) -> None:
        self.device = device
        self.pd = pd
        self.cap = cap
        self.qp_num = qp_num
        self.path: RCPath | None = None

    def _call(self, fn, *args):
        try:
            return fn(self.qp_num, *args)
        except OSError as e:
            raise _verbs_error(e) from None
        except ValueError as e:  # the device is closed
            raise VerbsError(errno.ENODEV, str(e)) from None

    @property
    def stats(self) -> dict:
        return self._call(self.device._c.qp_stats)

    def state(self) -> QPState:
        if self.device._closed or self.qp_num not in self.device._qpns:
            return QPState.RESET
        return QPState(self._call(self.device._c.qp_state))

    def to_init(self, access: Access, port: int = 1, pkey_index: int = 0) -> None:
        if port != 1:
            raise VerbsError(errno.EINVAL, f"to_init: {self.device.name} has one port (1), not {port}")
        self._call(self.device._c.qp_init, int(access))

    def to_rtr(self, path: RCPath) -> None:
        if len(path.remote_gid) != 16:
            raise VerbsError(errno.EINVAL, "to_rtr: remote GID must be 16 bytes")
        self._call(self.device._c.qp_rtr, path.remote_qpn, path.remote_psn & 0xFFFFFF, _ip_be(path.remote_gid[12:]), path.path_mtu.bytes,
                   path.timeout, path.retry_cnt, path.rnr_retry, path.min_rnr_timer)  # fmt: skip
        self.path = path

    def to_rts(self, path: RCPath) -> None:
        self._call(self.device._c.qp_rts, path.remote_qpn, path.local_psn & 0xFFFFFF, path.timeout, path.retry_cnt, path.rnr_retry,
                   path.min_rnr_timer)  # fmt: skip
        self.path = path

    def to_error(self) -> None:
        self._call(self.device._c.qp_to_error)

    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        wrs = [wrs] if isinstance(wrs, SendWR) else list(wrs)
        self._call(self.device._c.post_send, [(w.wr_id, int(w.opcode), int(w.flags), w.remote_addr, w.rkey, w.imm, _sges(w.sges)) for w in wrs])

    def post_send_raw(self, wrs: list[tuple]) -> None:
        """[(wr_id, opcode, flags, remote_addr, rkey, imm, ((lkey, offset, length), ...))]: the runtime's fast path."""
        self._call(self.device._c.post_send, wrs)

    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        wrs = [wrs] if isinstance(wrs, RecvWR) else list(wrs)
        self._call(self.device._c.post_recv, [(w.wr_id, _sges(w.sges)) for w in wrs])

    def post_recv_raw(self, wrs: list[tuple]) -> None:
        self._call(self.device._c.post_recv, wrs)

    def destroy(self) -> None:
        dev = self.device
        with dev._lock:
            if self.qp_num in dev._qpns and not dev._closed:
                dev._qpns.discard(self.qp_num)
                self._call(dev._c.qp_destroy)


def _ip_be(packed: bytes) -> int:
    return int.from_bytes(packed, sys.byteorder)  # the engine keeps addresses in network byte order in memory


class SoftDeviceNative(SoftDeviceBase):
    engine = "native"
    capabilities = frozenset({Capability.PORT_CONTROL, Capability.FAULT_INJECTION, Capability.FRAME_TAP, Capability.FAST_PATH})

    def __init__(self, name: str, addr: str, *, mtu: Mtu = Mtu.MTU_1024, netns: str | None = None, seed: int | None = None,
                 gso: str | None = None) -> None:  # fmt: skip
        mod = softroce.load()  # EngineUnavailable before any socket is opened
        mod.set_frame_class(FrameRecord)
        self.gso_mode = gso_mode(gso)
        self.gso = self.gso_mode == "on"
        super().__init__(name, addr, mtu=mtu, netns=netns, seed=seed)
        self._closed = False
        self._qpns: set[int] = set()
        self._pds = itertools.count(1)
        fd = self._sock.detach()  # the engine owns the socket now
        try:
            self._c = mod.Device(fd, _ip_be(self.ip.packed), self.mtu.bytes, _seed64(seed), {"on": 1, "auto": -1, "off": 0}[self.gso_mode])
        except OSError as e:
            socket.close(fd)
            raise VerbsError(e.errno or errno.EIO, f"soft device {name}: the compiled engine did not start: {e}") from None
        self.faults = NativeFaults(self)
        self.last_internal_error = ""
        self._tap_thread: threading.Thread | None = None
        self._tap_stop = threading.Event()
        self._tap_lock = threading.Lock()  # one reader of the engine's tap ring at a time
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._first_look = threading.Event()
        if self.gso_mode == "auto":
            self._watcher = threading.Thread(target=self._watch_captures, name=f"soft-roce gso {self.addr}", daemon=True)
            self._watcher.start()
            # the device is what its first look says from the start: an engine named "native"
            # in a banner and "native (GSO)" in the report of the same run was this race
            self._first_look.wait(FIRST_LOOK_WAIT)

    @property
    def stats(self) -> dict:
        return {} if self._closed else dict(self._c.stats(), gso=self.gso)

    def _watch_captures(self) -> None:
        """GSO on, except while a capture watches the interface: it then sees every frame as
        a datagram of its own, as a wire capture of RoCEv2 should (smc-trace always does)."""
        try:
            if self.netns is not None:  # look in the device's namespace, from this thread
                _join_netns(self.netns)
                ifindexes = None
            else:
                ifindexes = {socket.if_nametoindex("lo")} if self.ip.is_loopback else None
        except OSError:
            self._first_look.set()
            return
        while not self._watch_stop.is_set():
            want = not captured(ifindexes)
            if want != self.gso and not self._closed:
                self.gso = want
                try:
                    self._c.set_gso(want)
                except ValueError:
                    self._first_look.set()
                    return
            self._first_look.set()
            self._watch_stop.wait(CAPTURE_CHECK)

    def engine_calls(self, *names: str) -> tuple:
        """The compiled engine's own methods (post_send, post_recv, cq_poll, rx_poll), for the
        runtime's hot path; they take QP numbers and CQ ids and raise OSError/ValueError."""
        return tuple(getattr(self._c, n) for n in names)

    def rx_fileno(self) -> int:
        """The device's UDP socket: readable when frames wait (see rx_poll)."""
        return self._c.fileno()

    def rx_poll(self, rounds: int = 4) -> int:
        """Take the frames waiting on the socket and process them on this thread (an event
        loop that saw the socket readable); the engine's thread then stays off the socket
        while this keeps happening. Returns the frames processed."""
        return 0 if self._closed else self._c.rx_poll(rounds)

    def alloc_pd(self) -> NativePD:
        return NativePD(self, next(self._pds))

    def create_cq(self, depth: int = 256) -> NativeCQ:
        return NativeCQ(self, depth)

    def poll_events(self) -> list[AsyncEvent]:
        if self._closed:
            return []
        out = []
        for kind, port, qpn in self._c.events():
            kind = EventType(kind)
            out.append(AsyncEvent(kind, port=port or None, qp_num=qpn if kind in (EventType.QP_REQ_ERR, EventType.QP_ACCESS_ERR) else None))
        return out

    def set_port_state(self, up: bool) -> None:
        """Port down: nothing is sent or received, QPs retry until RETRY_EXC_ERR. Port up: traffic flows again."""
        self.port_state = PortState.ACTIVE if up else PortState.DOWN
        if not self._closed:
            self._c.set_port(up)

    def close(self) -> None:
        if self._closed:
            return
        self._stop_tap_thread()
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        self._closed = True
        self._c.close()

    # ------------------------------------------------------------------ the tap: the engine keeps a ring, a thread hands it out

    def add_tap(self, tap, batch: bool = False, write_snap: int = 0, raw: bool = False) -> None:
        """As SoftDeviceBase.add_tap; ``raw``: ``tap`` gets the engine's raw records as one
        bytes object per batch (native/softroce/module.c tap_read_raw), for a consumer in C."""
        with self._lock:
            self._taps.append((tap, batch, write_snap, raw))
            self._tap_changed()
            self._c.tap_enable(True, self.write_snap)
            if self._tap_thread is None:
                self._tap_stop.clear()
                self._tap_thread = threading.Thread(target=self._tap_loop, name=f"soft-roce tap {self.addr}", daemon=True)
                self._tap_thread.start()

    def remove_tap(self, tap) -> None:
        self.flush_taps()
        with self._lock:
            self._taps = [t for t in self._taps if t[0] != tap]
            self._tap_changed()
            last = not self._taps
            if not last and not self._closed:
                self._c.tap_enable(True, self.write_snap)
        if last:
            self._stop_tap_thread()

    def flush_taps(self) -> None:
        """Hand every frame the engine has seen so far to the taps before returning."""
        if not self._closed and self._taps:
            for _ in range(16):  # a read takes at most 4 MiB of the 32 MiB ring (module.c tap_read_raw)
                if not self._deliver(0):
                    break

    def _stop_tap_thread(self) -> None:
        t = self._tap_thread
        if t is not None:
            self._tap_stop.set()
            t.join(timeout=5)
            self._tap_thread = None
            if not self._closed:
                self._c.tap_enable(False)

    def _tap_loop(self) -> None:
        # Each batch takes the interpreter lock from the busy application thread, so after a
        # small batch the thread lets frames gather (10 ms of a 2 GB/s bulk's 128-byte cuts is
        # a few hundred KiB), for no longer than the rate it sees takes to fill 4 MiB of the
        # engine's 32 MiB ring; after a large batch it reads on at once.
        last = time.monotonic()
        while not self._tap_stop.is_set():
            got = self._deliver(TAP_WAIT)
            now = time.monotonic()
            pause = gather_pause(got, now - last)
            if pause:
                self._tap_stop.wait(pause)
            last = now
        self.flush_taps()

    def _deliver(self, wait: float) -> int:
        """Hand what the tap holds to the taps; returns about how many bytes that was."""
        with self._tap_lock:
            if self._closed:
                return 0
            if any(t[3] for t in self._taps):  # a consumer in C: the raw records, and records made from them for the others
                blob, records = self._c.tap_read_raw(wait), []
                if not blob:
                    return 0
            else:
                blob, records = b"", self._c.tap_read(wait)  # FrameRecords, made by the engine in one go
                if not records:
                    return 0
            taps = list(self._taps)  # a tap added while the read waited gets this batch too
            if blob and not all(t[3] for t in taps):
                records = parse_raw(blob)
            elif not blob and any(t[3] for t in taps):
                blob = pack_raw(records)
            for entry in taps:
                tap, batch, raw = entry[0], entry[1], entry[3]
                try:
                    if raw:
                        tap(blob)
                    elif batch:
                        tap(records)
                    else:
                        for record in records:
                            tap(record)
                except Exception:  # a broken listener must not take the NIC down
                    with self._lock:
                        if entry in self._taps:
                            self._taps.remove(entry)
        return len(blob) or sum(len(r.payload) + _TAPREC.size for r in records)


_TAPREC = TAPREC  # module.c tap_read_raw (stack/verbs/taprec.py)


def parse_raw(blob: bytes) -> list[FrameRecord]:
    """FrameRecords from the engine's raw tap records."""
    out, pos = [], 0
    while pos + _TAPREC.size <= len(blob):
        size, direction, rlen, sport, dport, src, dst, length, orig, ts = _TAPREC.unpack_from(blob, pos)
        if size < _TAPREC.size:
            break
        body = blob[pos + _TAPREC.size : pos + size]
        out.append(FrameRecord("rx" if direction else "tx", ts, socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport,
                               body[rlen : rlen + length], body[:rlen].decode("utf-8", "replace") if rlen else None,
                               orig if orig != length else None))  # fmt: skip
        pos += size
    return out


def _join_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (for good)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"cannot join network namespace {name!r}")
    finally:
        os.close(fd)


def _ip_text(ip_be: int) -> str:
    return socket.inet_ntoa(ip_be.to_bytes(4, sys.byteorder))
