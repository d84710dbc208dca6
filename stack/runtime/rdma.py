"""The RDMA half of the runtime: devices, QPs with their receive and send buffers,
memory regions, and completion polling on the asyncio loop.

A QP gets ``RECV_BUFFERS`` receive WRs of 8192 bytes (enough for the largest SMC-Rv2 LLC
message, as the kernel's v2 receive buffers) and a ring of send slots for CDC and LLC
payloads. Completion queues are watched through their file descriptor when the provider
has one (soft provider, pyverbs >= 59) and polled every millisecond otherwise.

On the compiled soft engine the hot path skips the verbs objects: work requests and
completions travel as tuples, the RDMA WRITEs of a transmit step ring one doorbell with
the CDC that announces them (one system call for all their frames), receive buffers are
re-posted once per drain, and the event loop takes the frames from the device's socket
itself when it is readable (``rx_poll``), so a message reaches the core without a hand-off
between the engine's thread and the loop's.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import random
from dataclasses import dataclass, field, replace
from typing import Callable

from stack.core.link import gid_text
from stack.core.ports import DeviceInfo, MrInfo, QpInfo
from stack.verbs import VerbsError, open_provider
from stack.verbs.api import (
    Access,
    Capability,
    CompletionQueue,
    Device,
    EventType,
    Mtu,
    PortState,
    QPCap,
    QPState,
    QueuePair,
    RCPath,
    RecvWR,
    SendFlags,
    SendWR,
    Sge,
    WcStatus,
    WrOpcode,
)

from .security import device_pkey, netdev_vlans, vlan_gids

RECV_BUFFERS = 64
REPOST_BATCH = 16  # receive buffers go back to the QP in groups: at least RECV_BUFFERS - REPOST_BATCH stay posted
RECV_TAG = 1 << 62  # receive WR ids carry this bit: error completions do not say reliably what they were
RECV_SIZE = 8192
SLOT_SIZE = 8192
RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE
_WRITE, _SEND = int(WrOpcode.RDMA_WRITE), int(WrOpcode.SEND)
_SIGNALED_SOLICITED = int(SendFlags.SIGNALED | SendFlags.SOLICITED)
EVENT_POLL = 0.02  # seconds between looks at a device's async events (port up/down)
GID_POLL_EVERY = 50  # event looks between reads of a device's GID table (about 1 s): a VLAN made or removed


@dataclass(frozen=True)
class DeviceSpec:
    """An RDMA device for the stack: a soft device on an address, or a pyverbs device by name."""

    provider: str = "soft"
    name: str = ""  # pyverbs: "rxe0"; soft: defaults to the address
    addr: str = ""  # soft: the IPv4 address of its UDP socket
    netns: str | None = None  # soft: a network namespace to open it in
    mtu: int = 1024
    engine: str | None = None  # soft: "native", "python" or "auto" (None: SMCTOP_SOFT_ENGINE, else auto)
    gso: str | None = None  # soft, native engine: UDP GSO "auto", "on", "off" (None: SMCTOP_SOFT_GSO, else auto)


@dataclass
class _Qp:
    handle: int
    qp: QueuePair
    dev: "_Dev"
    recv_mr: object
    send_mr: object
    send_slots: int
    remote_gid: bytes = b""
    sgid_index: int = 0  # the GID table entry of its source GID (the GID of its link group's VLAN)
    path: RCPath | None = None
    psn: int = 0
    raw: bool = False  # the compiled engine's tuple interface
    doorbell: list = field(default_factory=list)  # WRITEs waiting to go with the next SEND
    reposts: list = field(default_factory=list)  # receive WRs to post again
    qpn: int = 0
    send_lkey: int = 0
    recv_lkey: int = 0
    c_post_send: Callable | None = None  # the engine's calls, bound once
    c_post_recv: Callable | None = None


@dataclass
class _Dev:
    spec: DeviceSpec
    device: Device
    pd: object
    cq: CompletionQueue
    info: DeviceInfo
    gid_index: int
    port_up: bool = True
    qps: dict[int, _Qp] = field(default_factory=dict)  # by qp_num
    raw: bool = False  # the compiled engine: tuples, doorbells, the loop polls the socket
    c_cq_poll: Callable | None = None
    c_rx_poll: Callable | None = None
    c_flush_acks: Callable | None = None
    ack_flush_due: bool = False
    event_looks: int = 0  # how often its events were looked at (every GID_POLL_EVERY-th: its GID table too)
    gid_indexes: dict[bytes, int] = field(default_factory=dict)  # the GIDs a QP may use (one per VLAN) -> index


def _gids(device: Device, table: list) -> tuple[bytes, int, tuple[tuple[int, bytes], ...] | None, dict[bytes, int]]:
    """(the device's own GID, its index, the GID per VLAN or None, GID -> index) from its GID
    table: one GID per VLAN, the one whose net device is the VLAN's interface, the device's
    own the untagged LAN's (VLAN 0); None: the device ties no GID to a net device (the soft
    devices), its one IPv4-mapped RoCEv2 GID serves every VLAN."""
    own = device.roce_v2_gid(1)
    per_vlan = vlan_gids(table, netdev_vlans())
    gid, index = own.gid, own.index
    untagged = next(((g, i) for v, g, i in per_vlan or () if v == 0), None)
    if untagged is not None:
        gid, index = untagged
    indexes = {gid: index} | {g: i for _, g, i in per_vlan or ()}
    return gid, index, None if per_vlan is None else tuple((v, g) for v, g, _ in per_vlan), indexes


class RdmaDriver:
    """Implements the RDMA part of HostIO; completions go to ``on_*`` callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random | None = None) -> None:
        self.loop = loop
        self.rng = rng or random.Random()
        self.providers: dict[str, object] = {}
        self.devs: dict[str, _Dev] = {}
        self.qps: dict[int, _Qp] = {}
        self.mrs: dict[int, tuple[object, _Dev]] = {}
        self.lkeys: dict[int, int] = {}  # MR handle -> lkey (the compiled engine's SGEs)
        self._ids = itertools.count(1)
        self.on_send_done: Callable[[int, int, bool, str], None] = lambda *a: None
        self.on_recv: Callable[[int, bytes], None] = lambda *a: None
        self.on_device_event: Callable[[str, EventType], None] = lambda *a: None
        self._poll_handles: list[asyncio.TimerHandle] = []
        self._closed = False

    # ---------------------------------------------------------------- devices

    def open(self, spec: DeviceSpec) -> DeviceInfo:
        key = (spec.provider, spec.engine, spec.gso) if spec.provider == "soft" else spec.provider
        provider = self.providers.get(key)
        if provider is None:
            options = {"engine": spec.engine, "gso": spec.gso} if spec.provider == "soft" else {}
            provider = self.providers[key] = open_provider(spec.provider, **options)
        if spec.provider == "soft":
            mtu = Mtu(spec.mtu.bit_length() - 8) if spec.mtu in (256, 512, 1024, 2048, 4096) else Mtu.MTU_1024
            device = provider.open_device(spec.name or spec.addr, addr=spec.addr or None, netns=spec.netns, mtu=mtu)
        else:
            device = provider.open_device(spec.name)
        port = device.query_port(1)
        table = device.gid_table(1)
        gid, gid_index, per_vlan, indexes = _gids(device, table)
        # a kernel offers SMC-Rv1 only on a port with a RoCE v1 GID (rxe has none); the soft
        # devices run v1 over their RoCEv2 GID, an emulation kept for stack-to-stack v1
        roce_v1 = spec.provider == "soft" or any(e.type == "roce_v1" for e in table)
        pkey, pkey_index = device_pkey(device.pkey_table(1))  # the link group's P_Key (security context)
        info = DeviceInfo(device.name, gid, port.mac, int(port.active_mtu), port.state == PortState.ACTIVE, roce_v1, pkey, pkey_index, per_vlan)
        dev = _Dev(spec, device, device.alloc_pd(), device.create_cq(8192), info, gid_index, info.up)
        dev.gid_indexes = indexes
        dev.raw = device.has(Capability.FAST_PATH)
        if dev.raw:
            dev.c_cq_poll, dev.c_rx_poll, dev.c_flush_acks = device.engine_calls("cq_poll", "rx_poll", "flush_acks")
        self.devs[device.name] = dev
        fd = dev.cq.fileno()
        if fd is not None:
            self.loop.add_reader(fd, self._drain, dev)
        else:
            self._poll_handles.append(self.loop.call_later(0.001, self._poll_loop, dev))
        if dev.raw:
            self.loop.add_reader(device.rx_fileno(), self._rx_inline, dev)
        self._poll_handles.append(self.loop.call_later(EVENT_POLL, self._events_loop, dev))
        return info

    def check_gids(self, dev: _Dev) -> bool:
        """Read the device's GID table again (the kernel reads it for each connection): a
        VLAN interface made or removed since changes the GIDs per VLAN. True, and the core is
        told (``on_device_event`` GID_CHANGE, the new ``info``), when they changed."""
        try:
            gid, gid_index, per_vlan, indexes = _gids(dev.device, dev.device.gid_table(1))
        except (VerbsError, OSError, ValueError):
            return False  # the device is failing or gone: its port events say so
        if (gid, per_vlan) == (dev.info.gid, dev.info.vlan_gids):
            return False
        dev.info = replace(dev.info, gid=gid, vlan_gids=per_vlan)
        dev.gid_index = gid_index
        dev.gid_indexes = indexes  # the QPs made before keep their own index (_Qp.sgid_index)
        self.on_device_event(dev.device.name, EventType.GID_CHANGE)
        return True

    def close(self) -> None:
        self._closed = True
        for h in self._poll_handles:
            h.cancel()
        for dev in self.devs.values():
            fd = dev.cq.fileno()
            if fd is not None:
                self.loop.remove_reader(fd)
            if dev.raw:
                self.loop.remove_reader(dev.device.rx_fileno())
            for q in list(dev.qps.values()):
                try:
                    q.qp.destroy()
                except VerbsError:
                    pass
            dev.device.close()
        self.devs.clear()

    # ---------------------------------------------------------------- HostIO: RDMA

    def create_qp(self, device: str, gid: bytes | None = None) -> QpInfo:
        dev = self.devs[device]
        gid = dev.info.gid if gid is None else gid
        sgid_index = dev.gid_indexes.get(gid)
        if sgid_index is None:  # the core asks only for GIDs the device gave it
            raise OSError(errno.EADDRNOTAVAIL, f"{device} has no GID {gid_text(gid)}")
        qp = dev.pd.create_rc_qp(dev.cq, dev.cq, QPCap(max_send_wr=256, max_recv_wr=RECV_BUFFERS, max_send_sge=2, max_recv_sge=1))
        handle = next(self._ids)
        q = _Qp(handle, qp, dev, dev.pd.reg_mr(RECV_BUFFERS * RECV_SIZE, Access.LOCAL_WRITE),
                dev.pd.reg_mr(256 * SLOT_SIZE, Access.LOCAL_WRITE), 256, sgid_index=sgid_index, psn=self.rng.getrandbits(24), raw=dev.raw)  # fmt: skip
        qp.to_init(RW, pkey_index=dev.info.pkey_index)
        qp.post_recv([RecvWR(RECV_TAG | i, (Sge(q.recv_mr, i * RECV_SIZE, RECV_SIZE),)) for i in range(RECV_BUFFERS)])
        if q.raw:
            q.qpn, q.send_lkey, q.recv_lkey = qp.qp_num, q.send_mr.lkey, q.recv_mr.lkey
            q.c_post_send, q.c_post_recv = dev.device.engine_calls("post_send", "post_recv")
        self.qps[handle] = q
        dev.qps[qp.qp_num] = q
        return QpInfo(handle, qp.qp_num, q.psn, device, gid, dev.info.mac, dev.info.mtu)

    def qp_to_rtr(self, qp: int, peer_qpn: int, peer_psn: int, peer_gid: bytes, mtu: int) -> None:
        q = self.qps[qp]
        # Linux net/smc QP attributes: timeout 15, retry 7, RNR retry 7 (forever), min RNR timer 5
        # the source GID is the QP's own (its link group's VLAN): its frames go out on that VLAN
        q.path = RCPath(peer_qpn, peer_psn, q.psn, peer_gid, q.sgid_index, Mtu(mtu), 15, 7, 7, 5)
        q.qp.to_rtr(q.path)

    def qp_to_rts(self, qp: int) -> None:
        q = self.qps[qp]
        q.qp.to_rts(q.path)

    def destroy_qp(self, qp: int) -> None:
        q = self.qps.pop(qp, None)
        if q is None:
            return
        q.dev.qps.pop(q.qp.qp_num, None)
        try:
            q.qp.to_error()
            q.qp.destroy()
        except VerbsError:
            pass
        for mr in (q.recv_mr, q.send_mr):
            mr.deregister()

    def reg_mr(self, device: str, size: int, remote_write: bool, buf: memoryview | None = None) -> MrInfo:
        dev = self.devs[device]
        mr = dev.pd.reg_mr(size, RW if remote_write else Access.LOCAL_WRITE, buffer=buf)
        handle = next(self._ids)
        self.mrs[handle] = (mr, dev)
        if dev.raw:
            self.lkeys[handle] = mr.lkey
        return MrInfo(handle, mr.addr, mr.rkey, size, mr.buf)

    def dereg_mr(self, mr: int) -> None:
        entry = self.mrs.pop(mr, None)
        self.lkeys.pop(mr, None)
        if entry is not None:
            entry[0].deregister()

    def post_send(self, qp: int, wr_id: int, payload: bytes) -> bool:
        q = self.qps.get(qp)
        if q is None or len(payload) > SLOT_SIZE:
            return False
        slot = (wr_id % q.send_slots) * SLOT_SIZE
        q.send_mr.buf[slot : slot + len(payload)] = payload
        try:
            if q.raw:  # the WRITEs of this step and their CDC: one doorbell, one system call
                wrs, q.doorbell = q.doorbell, []
                wrs.append((wr_id, _SEND, _SIGNALED_SOLICITED, 0, 0, None, ((q.send_lkey, slot, len(payload)),)))
                q.c_post_send(q.qpn, wrs)
            else:
                wr = SendWR(wr_id, WrOpcode.SEND, (Sge(q.send_mr, slot, len(payload)),), SendFlags.SIGNALED | SendFlags.SOLICITED)
                q.qp.post_send(wr)
        except (VerbsError, OSError, ValueError):  # ValueError: the device is closed
            return False
        return True

    def post_write(self, qp: int, wr_id: int, sges, remote_addr: int, rkey: int) -> bool:
        q = self.qps.get(qp)
        if q is None:
            return False
        if q.raw:
            # rung with the CDC that announces it (the core always follows its WRITEs with
            # one); if the link dies first, the QP and its doorbell go together
            lkeys = self.lkeys
            q.doorbell.append((wr_id, _WRITE, 0, remote_addr, rkey, None, tuple([(lkeys[h], off, n) for h, off, n in sges])))
            return True
        local = tuple(Sge(self.mrs[h][0], off, n) for h, off, n in sges)
        try:
            q.qp.post_send(SendWR(wr_id, WrOpcode.RDMA_WRITE, local, SendFlags.NONE, remote_addr, rkey))
        except VerbsError:
            return False
        return True

    # ---------------------------------------------------------------- completions

    def _rx_inline(self, dev: _Dev) -> None:
        """The device's socket is readable: take the frames on this thread, then their
        completions. The ACKs for them wait for this loop turn's replies to carry them (a
        request/response then costs the requester one wake-up, not two); whatever is left
        goes at the end of the turn."""
        if self._closed:
            return
        try:
            held = dev.c_rx_poll(4)
        except ValueError:  # closed
            return
        self._drain_raw(dev)
        if held and not dev.ack_flush_due:
            dev.ack_flush_due = True
            self.loop.call_soon(self._flush_acks, dev)

    def _flush_acks(self, dev: _Dev) -> None:
        dev.ack_flush_due = False
        if not self._closed:
            try:
                dev.c_flush_acks()
            except ValueError:
                pass

    def _drain(self, dev: _Dev) -> None:
        if dev.raw:
            self._drain_raw(dev)
            return
        while True:
            wcs = dev.cq.poll(64)
            if not wcs:
                break
            for wc in wcs:
                q = dev.qps.get(wc.qp_num)
                if q is None:
                    continue
                if wc.wr_id & RECV_TAG:
                    self._recv_done(q, wc)
                else:
                    self.on_send_done(q.handle, wc.wr_id, wc.status == WcStatus.SUCCESS, wc.status.name)
        dev.cq.arm()

    def _drain_raw(self, dev: _Dev) -> None:
        qps, on_recv, on_send_done = dev.qps, self.on_recv, self.on_send_done
        poll, cq_id = dev.c_cq_poll, dev.cq.id
        while True:
            try:
                wcs = poll(cq_id, 64)
            except ValueError:  # the device closed under us
                return
            for wr_id, status, _opcode, qp_num, byte_len, _imm, _vendor in wcs:
                q = qps.get(qp_num)
                if q is None:
                    continue
                if wr_id & RECV_TAG:
                    if status:
                        if status != WcStatus.WR_FLUSH_ERR:
                            on_send_done(q.handle, -1, False, WcStatus(status).name)
                        continue
                    off = (wr_id & ~RECV_TAG) * RECV_SIZE
                    data = q.recv_mr.buf[off : off + byte_len].tobytes()
                    q.reposts.append((wr_id, ((q.recv_lkey, off, RECV_SIZE),)))
                    if len(q.reposts) >= REPOST_BATCH:
                        self._repost(q)
                    on_recv(q.handle, data)
                else:
                    on_send_done(q.handle, wr_id, status == 0, "SUCCESS" if status == 0 else WcStatus(status).name)
            if len(wcs) < 64:
                break

    def _repost(self, q: _Qp) -> None:
        wrs, q.reposts = q.reposts, []
        try:
            q.c_post_recv(q.qpn, wrs)
        except (OSError, ValueError):  # the QP or the device is gone
            pass

    def _recv_done(self, q: _Qp, wc) -> None:
        if wc.status != WcStatus.SUCCESS:
            if wc.status != WcStatus.WR_FLUSH_ERR:
                self.on_send_done(q.handle, -1, False, wc.status.name)
            return
        off = (wc.wr_id & ~RECV_TAG) * RECV_SIZE
        data = bytes(q.recv_mr.buf[off : off + wc.byte_len])
        try:
            q.qp.post_recv(RecvWR(wc.wr_id, (Sge(q.recv_mr, off, RECV_SIZE),)))
        except VerbsError:
            pass
        self.on_recv(q.handle, data)

    def _poll_loop(self, dev: _Dev) -> None:
        if self._closed:
            return
        self._drain(dev)
        self._poll_handles.append(self.loop.call_later(0.001, self._poll_loop, dev))

    def _events_loop(self, dev: _Dev) -> None:
        if self._closed:
            return
        dev.event_looks += 1
        if dev.event_looks % GID_POLL_EVERY == 0:
            self.check_gids(dev)
        for ev in dev.device.poll_events():
            if ev.type == EventType.GID_CHANGE:
                self.check_gids(dev)  # tells the core itself when what it uses changed
                continue
            if ev.type in (EventType.PORT_ERR, EventType.PORT_ACTIVE):
                dev.port_up = ev.type == EventType.PORT_ACTIVE
                # What the NIC received before the port went down is in the CQs: hand it to the
                # core first, or the link's QP dies with messages the peer saw acknowledged
                # (and its failover-validation CDC would name a seqno we never processed).
                for d in self.devs.values():
                    self._drain(d)
            self.on_device_event(dev.device.name, ev.type)
        self._poll_handles = [h for h in self._poll_handles if not h.cancelled()][-64:]
        self._poll_handles.append(self.loop.call_later(EVENT_POLL, self._events_loop, dev))

    def qp_state(self, qp: int) -> QPState | None:
        q = self.qps.get(qp)
        return q.qp.state() if q else None


def engine_of(device: Device) -> str:
    """What moves a device's frames: "native" or "python" (soft engines), "pyverbs"."""
    return device.engine or "pyverbs"


def engine_detail(device: Device) -> str:
    """The engine with how it sends: "native (GSO)", "native", "python", "pyverbs"."""
    engine = engine_of(device)
    return f"{engine} (GSO)" if device.gso else engine


def check_specs(specs) -> None:
    for s in specs:
        if s.provider not in ("soft", "pyverbs"):
            raise VerbsError(errno.EINVAL, f"device {s}: provider must be 'soft' or 'pyverbs'")
        if s.engine not in (None, "auto", "native", "python"):
            raise VerbsError(errno.EINVAL, f"device {s.name or s.addr}: engine {s.engine!r} must be 'auto', 'native' or 'python'")
        if s.gso not in (None, "auto", "on", "off"):
            raise VerbsError(errno.EINVAL, f"device {s.name or s.addr}: gso {s.gso!r} must be 'auto', 'on' or 'off'")
        if s.provider == "soft" and not s.addr:
            raise VerbsError(errno.EINVAL, f"soft device {s.name or '?'}: give its address (addr=...)")
        if s.provider == "soft":
            why = not_a_device_address(s.addr)
            if why:
                raise VerbsError(errno.EINVAL, f"soft device {s.addr}: {why}")


def not_a_device_address(addr: str) -> str | None:
    """Why ``addr`` cannot be a soft device's (its GID, the address its RoCEv2 frames come
    from and go to), or None. A wildcard would take UDP port 4791 of every address of the
    host, so no other device (a client's, on the same host) could start."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None  # the device says what is wrong with it when it starts
    if ip.is_unspecified:
        return "the unspecified address listens on every address; a device needs one of its own"
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "a multicast or broadcast address is no device's address"
    return None
