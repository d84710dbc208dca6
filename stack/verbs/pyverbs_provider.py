"""The verbs interface over pyverbs: a real RNIC or Soft-RoCE (``rxe``), poll-driven.

Works with Debian's python3-pyverbs 44 and PyPI's pyverbs 59. Nothing here blocks the
interpreter: pyverbs holds the GIL in every call, so ``get_cq_event`` and
``get_async_event`` are never used. Completions come from ``ibv_poll_cq``; port loss is
seen by polling the port state in :meth:`PyverbsDevice.poll_events`.

pyverbs frees nothing by itself (its SGE and WR destructors are misnamed), so every SGE
and WR built here is closed right after posting, when ibverbs has copied it.

Each posted WR carries a provider cookie as its wr_id; completions map it back to the
caller's wr_id and to the WR's real opcode, because ibverbs leaves ``wc.opcode`` undefined
on errors (rxe reports 0 = SEND for a failed or flushed RDMA WRITE and a flushed RECV).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import mmap
import os
import socket
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Iterator, Sequence

from . import api
from .api import (
    Access,
    AsyncEvent,
    EventType,
    GidEntry,
    Mtu,
    PortAttr,
    PortState,
    QPCap,
    QPState,
    RCPath,
    RecvWR,
    SendWR,
    VerbsError,
    WcOpcode,
    WcStatus,
    WorkCompletion,
    WrOpcode,
)

INSTALL_HINT = (
    "install Debian's python3-pyverbs (scripts/setup.sh links it into .venv) or the 'rdma' extra (pip install 'smctop[rdma]', which needs a matching rdma-core)"
)
NO_RDMA_HINT = (
    "this host has no RDMA support (no uverbs devices, e.g. a kernel without CONFIG_INFINIBAND): use the soft provider, or run in the kernel lab (tests/lab)"
)
NO_DEVICE_HINT = (
    "the kernel has RDMA support but no device: create a Soft-RoCE one with 'rdma link add rxe0 type rxe netdev <interface>', or use the soft provider"
)

_SEND_OPCODES = {
    WrOpcode.SEND: WcOpcode.SEND,
    WrOpcode.SEND_WITH_IMM: WcOpcode.SEND,
    WrOpcode.RDMA_WRITE: WcOpcode.RDMA_WRITE,
    WrOpcode.RDMA_WRITE_WITH_IMM: WcOpcode.RDMA_WRITE,
    WrOpcode.RDMA_READ: WcOpcode.RDMA_READ,
}
_GID_TYPES = {0: "ib", 1: "roce_v1", 2: "roce_v2"}  # enum ibv_gid_type (query_gid_table)


@dataclass(frozen=True)
class _Pyverbs:
    """The pyverbs modules, imported on first use so that importing this file never fails."""

    e: SimpleNamespace  # IBV_* -> int
    device: ModuleType
    pd: ModuleType
    mr: ModuleType
    cq: ModuleType
    qp: ModuleType
    addr: ModuleType
    wr: ModuleType
    error: ModuleType


_modules: _Pyverbs | None = None


def _flat_enums(module: ModuleType) -> SimpleNamespace:
    """Every IBV_* value as a plain int attribute: 44 has module-level ints, 59 groups them
    into enum classes (``ibv_qp_type.IBV_QPT_RC``) and exports only a few at module level."""
    values = {}
    for name in dir(module):
        value = getattr(module, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            values.update((k, int(m.value)) for k, m in value.__members__.items())  # aliases too
        elif name.startswith("IBV_") and isinstance(value, int):
            values[name] = int(value)
    return SimpleNamespace(**values)


def _load() -> _Pyverbs:
    global _modules
    if _modules is None:
        try:
            try:
                import pyverbs.libibverbs_enums as enums  # 59
            except ImportError:
                import pyverbs.enums as enums  # 44
            import pyverbs.addr
            import pyverbs.cq
            import pyverbs.device
            import pyverbs.mr
            import pyverbs.pd
            import pyverbs.pyverbs_error
            import pyverbs.qp
            import pyverbs.wr
        except ImportError as exc:
            raise VerbsError(errno.ENODEV, f"pyverbs is not installed ({exc}): {INSTALL_HINT}") from exc
        _modules = _Pyverbs(
            _flat_enums(enums), pyverbs.device, pyverbs.pd, pyverbs.mr, pyverbs.cq, pyverbs.qp,
            pyverbs.addr, pyverbs.wr, pyverbs.pyverbs_error,
        )  # fmt: skip
    return _modules


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """PyverbsError -> VerbsError carrying the errno (EINVAL when pyverbs lost it)."""
    pv = _load()
    try:
        yield
    except pv.error.PyverbsRDMAError as exc:
        code = getattr(exc, "error_code", 0)
        raise VerbsError(code if isinstance(code, int) and code > 0 else errno.EINVAL, f"{what}: {exc}") from exc
    except pv.error.PyverbsError as exc:
        raise VerbsError(errno.EINVAL, f"{what}: {exc}") from exc


def _gid_bytes(gid: object) -> bytes:
    return bytes.fromhex(str(gid).replace(":", ""))


def _gid_str(gid: bytes) -> str:
    h = gid.hex()
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


SYSFS_INFINIBAND = Path("/sys/class/infiniband")


def sysfs_pkey_table(device: str, port: int = 1, root: Path | None = None) -> list[int]:
    """A port's P_Key table from ``<root>/<device>/ports/<port>/pkeys/<index>`` (each a hex
    value such as ``0xffff``), in index order. Raises VerbsError naming the file on a value
    that is not a 16-bit P_Key, or when there is no such table."""
    folder = Path(root or SYSFS_INFINIBAND) / device / "ports" / str(port) / "pkeys"
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError as exc:
        raise VerbsError(errno.ENODEV, f"{device} port {port}: no P_Key table ({folder}: {exc.strerror})") from None
    table: list[int] = []
    for index in sorted(int(n) for n in names if n.isdigit()):
        path = folder / str(index)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise VerbsError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
        try:
            value = int(text, 16)
        except ValueError:
            value = -1
        if not 0 <= value <= 0xFFFF:
            raise VerbsError(errno.EINVAL, f"{path}: {text!r} is not a 16-bit P_Key")
        table.append(value)
    return table


class PyverbsProvider(api.Provider):
    """Devices as libibverbs lists them. Raises VerbsError (ENODEV) when there are none."""

    name = "pyverbs"

    def __init__(self) -> None:
        self._pv = _load()
        self.list_devices()

    def list_devices(self) -> list[str]:
        try:
            devices = self._pv.device.get_device_list()
        except self._pv.error.PyverbsError as exc:  # errno lost: ENOSYS without uverbs
            raise VerbsError(errno.ENODEV, f"ibv_get_device_list failed ({exc}): {NO_RDMA_HINT}") from exc
        if not devices:
            raise VerbsError(errno.ENODEV, f"no RDMA device: {NO_DEVICE_HINT}")
        return [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in devices]

    def open_device(self, name: str) -> PyverbsDevice:
        if name not in self.list_devices():
            raise VerbsError(errno.ENODEV, f"no RDMA device {name!r} (have: {', '.join(self.list_devices())})")
        with _errors(f"open {name}"):
            ctx = self._pv.device.Context(name=name)
        return PyverbsDevice(self._pv, ctx, name)


class PyverbsDevice(api.Device):
    engine = "pyverbs"  # a real device (or rxe): no port control, faults, tap or fast path of its own

    def __init__(self, pv: _Pyverbs, ctx: object, name: str) -> None:
        self._pv, self._ctx, self.name = pv, ctx, name
        with _errors(f"query_device {name}"):
            self.ports = list(range(1, ctx.query_device().phys_port_cnt + 1))
        self._qps: dict[int, PyverbsQP] = {}  # qp_num -> QP, for completions
        self._mrs: weakref.WeakSet[PyverbsMR] = weakref.WeakSet()
        self._port_state = {p: self._raw_port_state(p) for p in self.ports}
        self._fatal = False
        self._closed = False

    def _raw_port_state(self, port: int) -> int:
        with _errors(f"query_port {self.name}/{port}"):
            return int(self._ctx.query_port(port).state)

    def query_port(self, port: int = 1) -> PortAttr:
        e = self._pv.e
        with _errors(f"query_port {self.name}/{port}"):
            a = self._ctx.query_port(port)
        layer = {e.IBV_LINK_LAYER_INFINIBAND: "infiniband", e.IBV_LINK_LAYER_ETHERNET: "ethernet"}
        return PortAttr(
            state=PortState(a.state),
            active_mtu=Mtu(a.active_mtu),
            max_mtu=Mtu(a.max_mtu),
            gid_tbl_len=a.gid_tbl_len,
            mac=self._port_mac(port),
            link_layer=layer.get(a.link_layer, "unspecified"),
        )

    def _port_mac(self, port: int) -> bytes:
        """The MAC of the port's netdev (RoCE); zeros when there is none (IB) or it is unknown."""
        ndevs = Path(f"/sys/class/infiniband/{self.name}/ports/{port}/gid_attrs/ndevs")
        for ndev in sorted(ndevs.glob("*"), key=lambda p: int(p.name)) if ndevs.is_dir() else ():
            try:
                ifname = ndev.read_text().strip()
                return bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip().replace(":", ""))
            except (OSError, ValueError):
                continue
        return bytes(6)

    def gid_table(self, port: int = 1) -> list[GidEntry]:
        e = self._pv.e
        with _errors(f"query_port {self.name}/{port}"):
            attr = self._ctx.query_port(port)
        try:
            entries = self._ctx.query_gid_table(attr.gid_tbl_len * len(self.ports))
        except self._pv.error.PyverbsError:
            entries = None  # no ioctl GID query (old kernel): scan sysfs through query_gid_type
        table = []
        if entries is not None:
            for ent in entries:
                if ent.port_num != port:
                    continue
                with _errors(f"query_gid {self.name}/{port}/{ent.gid_index}"):
                    gid = _gid_bytes(self._ctx.query_gid(port, ent.gid_index))
                netdev = self._gid_netdev(port, ent.gid_index, getattr(ent, "ndev_ifindex", 0))
                table.append(GidEntry(ent.gid_index, gid, _GID_TYPES.get(ent.gid_type, "ib"), port, netdev))
            return sorted(table, key=lambda g: g.index)
        v1 = "ib" if attr.link_layer == e.IBV_LINK_LAYER_INFINIBAND else "roce_v1"
        for index in range(attr.gid_tbl_len):
            try:
                gid = _gid_bytes(self._ctx.query_gid(port, index))
                kind = self._ctx.query_gid_type(port, index)
            except self._pv.error.PyverbsError:
                continue  # unset entries fail to query
            if gid != bytes(16):
                kind = "roce_v2" if kind == e.IBV_GID_TYPE_SYSFS_ROCE_V2 else v1
                table.append(GidEntry(index, gid, kind, port, self._gid_netdev(port, index, 0)))
        return table

    def _gid_netdev(self, port: int, index: int, ifindex: int) -> str:
        """The net device of GID entry ``index``: by the ifindex the GID query gave (struct
        ibv_gid_entry's ndev_ifindex), else sysfs ``gid_attrs/ndevs/<index>``; "" when
        neither names one (IB). A VLAN's addresses are on the VLAN's interface (eth0.100)."""
        if ifindex:
            try:
                return socket.if_indextoname(ifindex)
            except OSError:
                pass  # an interface of another namespace: sysfs still names it
        try:
            return (SYSFS_INFINIBAND / self.name / "ports" / str(port) / "gid_attrs" / "ndevs" / str(index)).read_text().strip()
        except OSError:
            return ""

    def pkey_table(self, port: int = 1) -> list[int]:
        """The port's P_Key table through ibv_query_pkey (rxe: one entry, 0xffff); from
        sysfs when pyverbs has no ``query_pkey`` or it fails."""
        with _errors(f"query_port {self.name}/{port}"):
            length = int(self._ctx.query_port(port).pkey_tbl_len)
        query = getattr(self._ctx, "query_pkey", None)
        if query is not None:
            try:
                return [int(query(port, index)) & 0xFFFF for index in range(length)]
            except self._pv.error.PyverbsError:
                pass
        return sysfs_pkey_table(self.name, port)

    def alloc_pd(self) -> PyverbsPD:
        with _errors(f"alloc_pd {self.name}"):
            return PyverbsPD(self, self._pv.pd.PD(self._ctx))

    def create_cq(self, depth: int = 256) -> PyverbsCQ:
        pv = self._pv
        with _errors(f"create_cq {self.name}"):
            channel = pv.cq.CompChannel(self._ctx)
            fd = getattr(channel, "fd", None)  # 59 only
            if fd is None:
                channel.close()
                channel = None
            cq = pv.cq.CQ(self._ctx, depth, None, channel, 0)
        return PyverbsCQ(self, cq, channel, depth)

    def poll_events(self) -> list[AsyncEvent]:
        """Port transitions since the last call, from polling each port's state."""
        events: list[AsyncEvent] = []
        for port in self.ports:
            try:
                state = self._raw_port_state(port)
            except VerbsError:
                if not self._fatal:
                    self._fatal = True
                    events.append(AsyncEvent(EventType.DEVICE_FATAL))
                return events
            was = self._port_state[port]
            active = PortState.ACTIVE
            if was == active and state != active:
                events.append(AsyncEvent(EventType.PORT_ERR, port=port))
            elif was != active and state == active:
                events.append(AsyncEvent(EventType.PORT_ACTIVE, port=port))
            self._port_state[port] = state
        return events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._qps.clear()
        with _errors(f"close {self.name}"):
            self._ctx.close()  # closes every PD, MR, CQ and QP made from it
        for mr in list(self._mrs):
            mr._release()


class PyverbsPD(api.ProtectionDomain):
    def __init__(self, dev: PyverbsDevice, pd: object) -> None:
        self._dev, self._pd = dev, pd

    def reg_mr(self, size: int, access: Access, buffer: memoryview | None = None) -> PyverbsMR:
        if size <= 0:
            raise VerbsError(errno.EINVAL, f"reg_mr: size {size}")
        # Our own mmap (or the caller's buffer) registered with address=: mr.buf is then a
        # view of the very memory the device reads and writes (MR(length) would malloc
        # and copy on read).
        if buffer is not None:
            view = memoryview(buffer)
            if view.readonly or not view.contiguous or view.nbytes < size:
                raise VerbsError(errno.EINVAL, f"reg_mr: the buffer must be writable, contiguous and at least {size} bytes")
            mm, base = None, view.cast("B")[:size]
            anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(base)  # keeps base exported and alive
            view = base[:]
        else:
            mm = mmap.mmap(-1, size)
            view = memoryview(mm)
            anchor = ctypes.c_char.from_buffer(mm)  # exports mm: pins its address
        try:
            with _errors(f"reg_mr {size} bytes"):
                mr = self._dev._pv.mr.MR(self._pd, size, int(access), address=ctypes.addressof(anchor))
        except BaseException:
            anchor = None  # drop the export, or mm cannot close
            view.release()
            if mm is not None:
                mm.close()
            raise
        out = PyverbsMR(mr, mm, anchor, view, size, Access(access))
        self._dev._mrs.add(out)
        return out

    def create_rc_qp(
        self,
        send_cq: api.CompletionQueue,
        recv_cq: api.CompletionQueue,
        cap: QPCap = QPCap(),  # noqa: B008
    ) -> PyverbsQP:
        pv = self._dev._pv
        if not isinstance(send_cq, PyverbsCQ) or not isinstance(recv_cq, PyverbsCQ):
            raise VerbsError(errno.EINVAL, "create_rc_qp: the CQs must come from the pyverbs provider")
        with _errors("create_rc_qp"):
            want = pv.qp.QPCap(
                max_send_wr=cap.max_send_wr, max_recv_wr=cap.max_recv_wr, max_send_sge=cap.max_send_sge,
                max_recv_sge=cap.max_recv_sge, max_inline_data=cap.max_inline_data,
            )  # fmt: skip
            init = pv.qp.QPInitAttr(qp_type=pv.e.IBV_QPT_RC, scq=send_cq._cq, rcq=recv_cq._cq, cap=want, sq_sig_all=0)
            qp = pv.qp.QP(self._pd, init)
            got = qp.query(pv.e.IBV_QP_CAP)[1].cap
        real = QPCap(got.max_send_wr, got.max_recv_wr, got.max_send_sge, got.max_recv_sge, got.max_inline_data)
        out = PyverbsQP(self._dev, qp, real)
        self._dev._qps[out.qp_num] = out
        return out

    def close(self) -> None:
        with _errors("dealloc_pd"):
            self._pd.close()


class PyverbsMR(api.MemoryRegion):
    def __init__(self, mr: object, mm: mmap.mmap | None, anchor: ctypes.c_char, view: memoryview, size: int, access: Access) -> None:
        self._mr, self._mm, self._anchor = mr, mm, anchor
        self.addr = ctypes.addressof(anchor)
        self.length = size
        self.lkey = mr.lkey
        self.rkey = mr.rkey
        self.access = access
        self._view: memoryview | None = view

    @property
    def buf(self) -> memoryview:
        if self._view is None:
            raise VerbsError(errno.EINVAL, "the memory region is deregistered")
        return self._view

    def deregister(self) -> None:
        if self._view is None:
            return
        with _errors("dereg_mr"):
            self._mr.close()
        self._release()

    def _release(self) -> None:
        if self._view is None:
            return
        self._view.release()
        self._view = None
        del self._anchor
        if self._mm is None:
            return  # the caller's buffer: it is theirs to free
        try:
            self._mm.close()
        except BufferError:
            pass  # the caller still holds slices of buf: the mapping goes when they do


class PyverbsCQ(api.CompletionQueue):
    def __init__(self, dev: PyverbsDevice, cq: object, channel: object | None, depth: int) -> None:
        self._dev, self._cq, self._channel, self.depth = dev, cq, channel, depth
        self._fd: int | None = None
        if channel is not None:
            self._fd = channel.fd
            os.set_blocking(self._fd, False)  # arm() drains events without ever waiting
            with _errors("req_notify_cq"):
                cq.req_notify()

    def poll(self, max_entries: int = 16) -> list[WorkCompletion]:
        with _errors("poll_cq"):
            n, wcs = self._cq.poll(max_entries)
        out = []
        for wc in wcs[: max(n, 0)]:
            qp = self._dev._qps.get(wc.qp_num)
            if qp is not None:  # completions of a destroyed QP are dropped with it
                out.append(qp._completion(wc))
        return out

    def fileno(self) -> int | None:
        return self._fd

    def arm(self) -> None:
        if self._channel is None:
            return
        pv = self._dev._pv
        got = 0
        while True:  # the fd is non-blocking: this stops at EAGAIN
            try:
                self._channel.get_cq_event(self._cq)
            except pv.error.PyverbsError:
                break
            got += 1
        with _errors("req_notify_cq"):
            if got:
                self._cq.ack_events(got)
            self._cq.req_notify()

    def destroy(self) -> None:
        with _errors("destroy_cq"):
            self._cq.close()
            if self._channel is not None:
                self._channel.close()


class PyverbsQP(api.QueuePair):
    """An RC QP; SQ and RQ keep (cookie, wr_id, opcode) of every WR in flight, in post order."""

    def __init__(self, dev: PyverbsDevice, qp: object, cap: QPCap) -> None:
        self._dev, self._qp, self.cap = dev, qp, cap
        self._pv = dev._pv
        self.qp_num = qp.qp_num
        self._port = 1
        self._seq = 0
        self._sq: deque[tuple[int, int, WcOpcode]] = deque()
        self._rq: deque[tuple[int, int, WcOpcode]] = deque()
        self._moved_to = QPState.RESET  # the last state we moved it to (only ERR happens on its own)

    def state(self) -> QPState:
        with _errors(f"query_qp {self.qp_num}"):
            return QPState(self._qp.query(self._pv.e.IBV_QP_STATE)[0].qp_state)

    def _modify(self, attr: object, mask: int, what: str) -> None:
        with _errors(f"modify_qp {self.qp_num} to {what}"):
            self._qp.modify(attr, mask)
        self._moved_to = QPState[what]

    def to_init(self, access: Access, port: int = 1, pkey_index: int = 0) -> None:
        e = self._pv.e
        a = self._pv.qp.QPAttr(qp_state=e.IBV_QPS_INIT, port_num=port)
        a.pkey_index = pkey_index
        a.qp_access_flags = int(access)
        self._modify(a, e.IBV_QP_STATE | e.IBV_QP_PKEY_INDEX | e.IBV_QP_PORT | e.IBV_QP_ACCESS_FLAGS, "INIT")
        self._port = port

    def to_rtr(self, path: RCPath) -> None:
        pv, e = self._pv, self._pv.e
        a = pv.qp.QPAttr(qp_state=e.IBV_QPS_RTR, port_num=self._port, path_mtu=int(path.path_mtu))
        a.dest_qp_num = path.remote_qpn
        a.rq_psn = path.remote_psn
        a.max_dest_rd_atomic = path.max_dest_rd_atomic
        a.min_rnr_timer = path.min_rnr_timer
        if len(path.remote_gid) != 16:
            raise VerbsError(errno.EINVAL, f"remote_gid must be 16 bytes, not {len(path.remote_gid)}")
        with _errors("address vector"):
            route = pv.addr.GlobalRoute(dgid=pv.addr.GID(_gid_str(path.remote_gid)), sgid_index=path.sgid_index, hop_limit=path.hop_limit)
            a.ah_attr = pv.addr.AHAttr(gr=route, is_global=1, port_num=self._port)
        mask = (
            e.IBV_QP_STATE | e.IBV_QP_AV | e.IBV_QP_PATH_MTU | e.IBV_QP_DEST_QPN | e.IBV_QP_RQ_PSN
            | e.IBV_QP_MAX_DEST_RD_ATOMIC | e.IBV_QP_MIN_RNR_TIMER
        )  # fmt: skip
        self._modify(a, mask, "RTR")

    def to_rts(self, path: RCPath) -> None:
        e = self._pv.e
        a = self._pv.qp.QPAttr(qp_state=e.IBV_QPS_RTS, port_num=self._port)
        a.timeout = path.timeout
        a.retry_cnt = path.retry_cnt
        a.rnr_retry = path.rnr_retry
        a.sq_psn = path.local_psn
        a.max_rd_atomic = path.max_rd_atomic
        mask = (
            e.IBV_QP_STATE | e.IBV_QP_TIMEOUT | e.IBV_QP_RETRY_CNT | e.IBV_QP_RNR_RETRY | e.IBV_QP_SQ_PSN
            | e.IBV_QP_MAX_QP_RD_ATOMIC
        )  # fmt: skip
        self._modify(a, mask, "RTS")

    def to_error(self) -> None:
        e = self._pv.e
        self._modify(self._pv.qp.QPAttr(qp_state=e.IBV_QPS_ERR), e.IBV_QP_STATE, "ERR")

    def _cookie(self, recv: bool) -> int:
        self._seq += 1
        return self._seq << 1 | recv

    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        wr = self._pv.wr

        def make(w: SendWR, cookie: int, n: int, sg: list) -> object:
            imm = socket.htonl(w.imm & 0xFFFFFFFF) if w.imm is not None else 0  # big-endian on the wire
            pw = wr.SendWR(wr_id=cookie, opcode=int(w.opcode), num_sge=n, imm_data=imm, sg=sg, send_flags=int(w.flags))
            if w.opcode in (WrOpcode.RDMA_WRITE, WrOpcode.RDMA_WRITE_WITH_IMM, WrOpcode.RDMA_READ):
                pw.set_wr_rdma(w.rkey, w.remote_addr)
            return pw

        wrs = [wrs] if isinstance(wrs, SendWR) else list(wrs)
        if self._moved_to in (QPState.RESET, QPState.INIT, QPState.RTR):
            # ibverbs says EINVAL; libibverbs 44 with pyverbs crashes the process instead
            raise VerbsError(errno.EINVAL, f"post_send: QP 0x{self.qp_num:06x} is in {self._moved_to.name}, not RTS")
        entries = [(self._cookie(False), w.wr_id, _SEND_OPCODES[WrOpcode(w.opcode)]) for w in wrs]
        self._post(wrs, entries, make, self._sq, self._qp.post_send, "post_send")

    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        wr = self._pv.wr
        wrs = [wrs] if isinstance(wrs, RecvWR) else list(wrs)
        if self._moved_to == QPState.RESET:
            raise VerbsError(errno.EINVAL, f"post_recv: QP 0x{self.qp_num:06x} is in RESET")
        entries = [(self._cookie(True), w.wr_id, WcOpcode.RECV) for w in wrs]
        self._post(
            wrs, entries, lambda w, cookie, n, sg: wr.RecvWR(wr_id=cookie, num_sge=n, sg=sg),
            self._rq, self._qp.post_recv, "post_recv",
        )  # fmt: skip

    def _post(self, wrs: list, entries: list, make, queue: deque, post, what: str) -> None:
        """Chain the WRs with next_wr, post them at once, and track what was really posted."""
        if not wrs:
            return
        pv = self._pv
        owned: list = []  # every pyverbs object made here, closed at the end
        built: list = []
        try:
            for w, (cookie, _, _) in zip(wrs, entries, strict=True):
                sg = []
                for s in w.sges:
                    if s.offset < 0 or s.length < 0:
                        raise VerbsError(errno.EINVAL, f"{what}: bad SGE offset {s.offset} length {s.length}")
                    sg.append(pv.wr.SGE(s.mr.addr + s.offset, s.length, s.mr.lkey))
                owned += sg
                if not sg:  # pyverbs insists on one SGE; num_sge = 0 afterwards
                    owned.append(pv.wr.SGE(0, 0, 0))
                pw = make(w, cookie, max(len(sg), 1), sg or owned[-1:])
                if not sg:
                    pw.num_sge = 0
                owned.append(pw)
                if built:
                    built[-1].next_wr = pw
                built.append(pw)
            # bad_wr receives a bitwise copy of the failing WR (its sg_list pointer too), so
            # after a failure it is never closed: that would free the failing WR's list twice.
            dummy = pv.wr.SGE(0, 0, 0)
            owned.append(dummy)
            bad = make(wrs[0], 0, 1, [dummy])
            queue.extend(entries)
            try:
                with _errors(f"{what} on QP {self.qp_num}"):
                    post(built[0], bad)
            except VerbsError:
                cookies = [c for c, _, _ in entries]
                first = cookies.index(bad.wr_id) if bad.wr_id in cookies else 0
                for _ in cookies[first:]:  # the failing WR and those after it were not posted
                    queue.pop()
                raise
            owned.append(bad)
        finally:
            for o in owned:
                o.close()

    def _completion(self, wc) -> WorkCompletion:
        """The caller's view of a WC: its own wr_id and the posted WR's opcode."""
        cookie = wc.wr_id
        queue = self._rq if cookie & 1 else self._sq
        wr_id, opcode = cookie, WcOpcode.RECV if cookie & 1 else WcOpcode.SEND
        if any(c == cookie for c, _, _ in queue):
            while True:  # earlier unsignaled send WRs completed silently before this one
                c, wr_id, opcode = queue.popleft()
                if c == cookie:
                    break
        status = WcStatus(wc.status)
        imm = None
        if status == WcStatus.SUCCESS:
            if cookie & 1:
                opcode = WcOpcode(wc.opcode)  # RECV or RECV_RDMA_WITH_IMM
            if wc.wc_flags & self._pv.e.IBV_WC_WITH_IMM:
                imm = socket.ntohl(wc.imm_data)
        return WorkCompletion(
            wr_id=wr_id, status=status, opcode=opcode, qp_num=wc.qp_num, byte_len=wc.byte_len,
            imm=imm, src_qp=wc.src_qp, vendor_err=wc.vendor_err,
        )  # fmt: skip

    def destroy(self) -> None:
        self._dev._qps.pop(self.qp_num, None)
        with _errors(f"destroy_qp {self.qp_num}"):
            self._qp.close()
