"""The verbs interface every RDMA provider implements, in ibverbs vocabulary.

Numbers equal libibverbs' (``enum ibv_qp_state``, ``enum ibv_wc_status`` ...), so a
completion status printed by smctop reads the same as one printed by ``ibv_rc_pingpong``.
The interface is non-blocking and poll-driven: nothing here waits except
:func:`poll_wait`, which sleeps on the CQ's file descriptor when there is one.

Object tree: :class:`Provider` -> :class:`Device` (ports, GID table, async events) ->
:class:`ProtectionDomain` -> :class:`MemoryRegion` (a live ``memoryview`` of registered
memory, lkey, rkey, access flags) and RC :class:`QueuePair`; :class:`CompletionQueue`
belongs to the device.

Work requests name memory by (MR, offset, length) scatter/gather entries instead of raw
addresses; providers translate (pyverbs: ``mr.addr + offset`` with the MR's lkey).
"""

from __future__ import annotations

import errno
import select
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable


class VerbsError(OSError):
    """A verbs call failed; ``errno`` says how (EINVAL bad state or attribute, ENOMEM queue full,
    ENODEV no such device, EOPNOTSUPP unsupported)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


class Access(IntFlag):
    LOCAL_WRITE = 1
    REMOTE_WRITE = 2
    REMOTE_READ = 4
    REMOTE_ATOMIC = 8


class QPState(IntEnum):
    RESET = 0
    INIT = 1
    RTR = 2
    RTS = 3
    SQD = 4
    SQE = 5
    ERR = 6


class PortState(IntEnum):
    NOP = 0
    DOWN = 1
    INIT = 2
    ARMED = 3
    ACTIVE = 4
    ACTIVE_DEFER = 5


class Mtu(IntEnum):
    """enum ibv_mtu; the same codes SMC-R carries in CLC and LLC messages."""

    MTU_256 = 1
    MTU_512 = 2
    MTU_1024 = 3
    MTU_2048 = 4
    MTU_4096 = 5

    @property
    def bytes(self) -> int:
        return 128 << self.value


class WrOpcode(IntEnum):
    RDMA_WRITE = 0
    RDMA_WRITE_WITH_IMM = 1
    SEND = 2
    SEND_WITH_IMM = 3
    RDMA_READ = 4


class SendFlags(IntFlag):
    NONE = 0
    FENCE = 1
    SIGNALED = 2
    SOLICITED = 4
    INLINE = 8


class WcStatus(IntEnum):
    SUCCESS = 0
    LOC_LEN_ERR = 1
    LOC_QP_OP_ERR = 2
    LOC_EEC_OP_ERR = 3
    LOC_PROT_ERR = 4
    WR_FLUSH_ERR = 5
    MW_BIND_ERR = 6
    BAD_RESP_ERR = 7
    LOC_ACCESS_ERR = 8
    REM_INV_REQ_ERR = 9
    REM_ACCESS_ERR = 10
    REM_OP_ERR = 11
    RETRY_EXC_ERR = 12
    RNR_RETRY_EXC_ERR = 13
    LOC_RDD_VIOL_ERR = 14
    REM_INV_RD_REQ_ERR = 15
    REM_ABORT_ERR = 16
    INV_EECN_ERR = 17
    INV_EEC_STATE_ERR = 18
    FATAL_ERR = 19
    RESP_TIMEOUT_ERR = 20
    GENERAL_ERR = 21


class WcOpcode(IntEnum):
    SEND = 0
    RDMA_WRITE = 1
    RDMA_READ = 2
    COMP_SWAP = 3
    FETCH_ADD = 4
    BIND_MW = 5
    RECV = 128
    RECV_RDMA_WITH_IMM = 129


class EventType(IntEnum):
    """enum ibv_event_type (the ones a provider reports)."""

    CQ_ERR = 0
    QP_FATAL = 1
    QP_REQ_ERR = 2
    QP_ACCESS_ERR = 3
    COMM_EST = 4
    SQ_DRAINED = 5
    PATH_MIG = 6
    PATH_MIG_ERR = 7
    DEVICE_FATAL = 8
    PORT_ACTIVE = 9
    PORT_ERR = 10
    LID_CHANGE = 11
    PKEY_CHANGE = 12
    SM_CHANGE = 13
    SRQ_ERR = 14
    SRQ_LIMIT_REACHED = 15
    QP_LAST_WQE_REACHED = 16
    CLIENT_REREGISTER = 17
    GID_CHANGE = 18


@dataclass(frozen=True)
class GidEntry:
    index: int
    gid: bytes  # 16 bytes; RoCEv2 IPv4-mapped ::ffff:a.b.c.d
    type: str  # "roce_v2", "roce_v1" or "ib"
    port: int = 1
    # the net device the entry belongs to (RoCE: an address of that interface, a VLAN's on
    # the VLAN's interface); "" when the device does not say (IB, the soft devices)
    netdev: str = ""


@dataclass(frozen=True)
class PortAttr:
    state: PortState
    active_mtu: Mtu
    max_mtu: Mtu
    gid_tbl_len: int
    mac: bytes = bytes(6)
    link_layer: str = "ethernet"


@dataclass(frozen=True)
class Sge:
    mr: "MemoryRegion"
    offset: int
    length: int


@dataclass(frozen=True)
class SendWR:
    wr_id: int
    opcode: WrOpcode
    sges: tuple[Sge, ...] = ()
    flags: SendFlags = SendFlags.SIGNALED
    remote_addr: int = 0
    rkey: int = 0
    imm: int | None = None

    @property
    def length(self) -> int:
        return sum(s.length for s in self.sges)


@dataclass(frozen=True)
class RecvWR:
    wr_id: int
    sges: tuple[Sge, ...] = ()


@dataclass(frozen=True)
class WorkCompletion:
    wr_id: int
    status: WcStatus
    opcode: WcOpcode
    qp_num: int
    byte_len: int = 0
    imm: int | None = None
    src_qp: int = 0
    vendor_err: int = 0

    @property
    def ok(self) -> bool:
        return self.status == WcStatus.SUCCESS


@dataclass(frozen=True)
class QPCap:
    max_send_wr: int = 16
    max_recv_wr: int = 48
    max_send_sge: int = 2
    max_recv_sge: int = 2
    max_inline_data: int = 44


@dataclass(frozen=True)
class RCPath:
    """What RTR and RTS need to connect an RC QP (Linux net/smc values as defaults)."""

    remote_qpn: int
    remote_psn: int
    local_psn: int
    remote_gid: bytes
    sgid_index: int
    path_mtu: Mtu = Mtu.MTU_1024
    timeout: int = 15  # local ACK timeout 4.096 us * 2**timeout (15: ~134 ms)
    retry_cnt: int = 7
    rnr_retry: int = 7  # 7 = retry forever
    min_rnr_timer: int = 5
    hop_limit: int = 1
    max_rd_atomic: int = 1
    max_dest_rd_atomic: int = 1


@dataclass(frozen=True)
class AsyncEvent:
    type: EventType
    port: int | None = None
    qp_num: int | None = None


def local_ack_timeout(timeout: int) -> float:
    """Seconds of the IB local ACK timeout code (0 means infinite)."""
    return float("inf") if timeout == 0 else 4.096e-6 * (1 << timeout)


# IBA table 45: RNR NAK timer field -> milliseconds
RNR_TIMER_MS = [
    655.36, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32, 0.48, 0.64, 0.96, 1.28, 1.92,
    2.56, 3.84, 5.12, 7.68, 10.24, 15.36, 20.48, 30.72, 40.96, 61.44, 81.92, 122.88, 163.84, 245.76, 327.68, 491.52,
]  # fmt: skip


class MemoryRegion(ABC):
    addr: int
    length: int
    lkey: int
    rkey: int
    access: Access

    @property
    @abstractmethod
    def buf(self) -> memoryview:
        """A live view of the registered memory."""

    @abstractmethod
    def deregister(self) -> None: ...


class CompletionQueue(ABC):
    depth: int

    @abstractmethod
    def poll(self, max_entries: int = 16) -> list[WorkCompletion]:
        """Take up to ``max_entries`` completions; never blocks."""

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when completions may be waiting (None: poll on a timer)."""
        return None

    def arm(self) -> None:
        """Re-arm the wake-up after draining (providers that need it)."""

    def destroy(self) -> None: ...


class QueuePair(ABC):
    qp_num: int
    cap: QPCap
    # counters, for snapshots; the soft engines keep "psn_out_of_window" and "suspect_ignored"
    # (frames no honest peer sends: stack/runtime/suspect.py reports them as a possible attack)
    stats: Mapping[str, Any] = MappingProxyType({})

    @abstractmethod
    def state(self) -> QPState:
        """The real current state (not a cached one)."""

    @abstractmethod
    def to_init(self, access: Access, port: int = 1, pkey_index: int = 0) -> None: ...

    @abstractmethod
    def to_rtr(self, path: RCPath) -> None: ...

    @abstractmethod
    def to_rts(self, path: RCPath) -> None: ...

    @abstractmethod
    def to_error(self) -> None: ...

    @abstractmethod
    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None: ...

    @abstractmethod
    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None: ...

    @abstractmethod
    def destroy(self) -> None: ...


class ProtectionDomain(ABC):
    @abstractmethod
    def reg_mr(self, size: int, access: Access, buffer: memoryview | None = None) -> MemoryRegion:
        """Register ``size`` bytes. ``buffer`` (writable, contiguous, at least ``size`` bytes):
        register that memory instead of allocating, so one buffer can be registered with
        several devices (SMC-R maps every RMB on every link of its link group)."""

    @abstractmethod
    def create_rc_qp(self, send_cq: CompletionQueue, recv_cq: CompletionQueue, cap: QPCap = QPCap()) -> QueuePair: ...

    def close(self) -> None: ...


class Capability(str, Enum):
    """What a device can do beyond the verbs every provider has. A device declares its own in
    ``Device.capabilities``; each has the interface below (``CAPABILITY_INTERFACES``)."""

    PORT_CONTROL = "port_control"  # take the port down or up, as a pulled cable would
    FAULT_INJECTION = "fault_injection"  # lose, drop or delay frames on purpose
    FRAME_TAP = "frame_tap"  # hand every frame sent, received or dropped to a tap
    FAST_PATH = "fast_path"  # the compiled engine's own calls: tuples for work requests and completions


FAULTS = ("loss", "rx_loss", "drop_next", "delay")  # what FAULT_INJECTION's ``faults`` has


@runtime_checkable
class PortControl(Protocol):
    def set_port_state(self, up: bool) -> None:
        """Port down: nothing is sent or received, QPs retry until RETRY_EXC_ERR. Up: traffic flows again."""


@runtime_checkable
class FaultInjection(Protocol):
    faults: Any  # loss (probability per sent frame), rx_loss (per received frame), drop_next (count), delay (seconds)


class FrameRecord(NamedTuple):
    """One frame seen by a FRAME_TAP (and, in the same fields, one frame a recorder takes
    from a control socket: dissectors.recorder). ``payload`` is the UDP payload (BTH ..
    ICRC). A tuple: the tap makes one per frame, hundreds of thousands a second."""

    direction: str  # "tx" or "rx"
    timestamp_ns: int
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    dropped: str | None = None  # why the frame never made it: "loss", "drop-next", "port down", ...
    length: int | None = None  # the frame's length on the wire, when ``payload`` was cut (the tap's write_snap)


@runtime_checkable
class FrameTap(Protocol):
    def add_tap(self, tap: Callable, batch: bool = False, write_snap: int = 0, raw: bool = False) -> None:
        """Call ``tap`` with every frame (``batch``: lists of them); ``write_snap``: RDMA WRITE
        frames keep that many bytes; ``raw``: the compiled engine's records as bytes."""

    def remove_tap(self, tap: Callable) -> None: ...


@runtime_checkable
class FastPath(Protocol):
    def engine_calls(self, *names: str) -> tuple:
        """The engine's own methods (post_send, post_recv, cq_poll, rx_poll, flush_acks)."""

    def rx_fileno(self) -> int:
        """A descriptor readable when frames wait; ``rx_poll`` then takes them on the caller's thread."""

    def rx_poll(self, rounds: int = 4) -> int: ...


CAPABILITY_INTERFACES: dict[Capability, type] = {
    Capability.PORT_CONTROL: PortControl,
    Capability.FAULT_INJECTION: FaultInjection,
    Capability.FRAME_TAP: FrameTap,
    Capability.FAST_PATH: FastPath,
}


class Device(ABC):
    name: str
    capabilities: frozenset[Capability] = frozenset()  # optional interfaces it has (see Capability)
    engine = ""  # what moves its frames: "native" or "python" (the soft engines), "pyverbs"
    gso = False  # sends runs of frames in one UDP GSO send
    stats: Mapping[str, Any] = MappingProxyType({})  # counters, for snapshots

    def has(self, capability: Capability) -> bool:
        return capability in self.capabilities

    @abstractmethod
    def query_port(self, port: int = 1) -> PortAttr: ...

    @abstractmethod
    def gid_table(self, port: int = 1) -> list[GidEntry]: ...

    def pkey_table(self, port: int = 1) -> list[int]:
        """The port's P_Key table (ibv_query_pkey, index by index); empty when the device
        has none. A QP's ``pkey_index`` names one of its entries."""
        return []

    @abstractmethod
    def alloc_pd(self) -> ProtectionDomain: ...

    @abstractmethod
    def create_cq(self, depth: int = 256) -> CompletionQueue: ...

    @abstractmethod
    def poll_events(self) -> list[AsyncEvent]:
        """Asynchronous events since the last call (port up/down, QP fatal); never blocks."""

    @abstractmethod
    def close(self) -> None: ...

    def roce_v2_gid(self, port: int = 1) -> GidEntry:
        """The IPv4-mapped RoCEv2 GID SMC-Rv2 uses (scanned, not assumed at index 1)."""
        for entry in self.gid_table(port):
            if entry.type == "roce_v2" and entry.gid[:12] == bytes(10) + b"\xff\xff":
                return entry
        raise VerbsError(errno.ENODEV, f"{self.name} port {port} has no IPv4-mapped RoCEv2 GID")


class Provider(ABC):
    name: str
    engine_note = ""  # why its devices do not have the engine they could have had

    @abstractmethod
    def list_devices(self) -> list[str]: ...

    @abstractmethod
    def open_device(self, name: str) -> Device: ...


def poll_wait(
    cq: CompletionQueue,
    count: int,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[WorkCompletion]:
    """Collect ``count`` completions or whatever arrived within ``timeout`` seconds.

    Sleeps on the CQ's descriptor when it has one, else polls every half millisecond.
    For tests and tools; the asyncio runtime registers ``cq.fileno()`` instead.
    """
    got: list[WorkCompletion] = []
    deadline = clock() + timeout
    fd = cq.fileno()
    while len(got) < count:
        got += cq.poll(count - len(got))
        if len(got) >= count:
            break
        left = deadline - clock()
        if left <= 0:
            break
        if fd is not None:
            select.select([fd], [], [], min(left, 0.05))
            cq.arm()
        else:
            time.sleep(min(left, 0.0005))
    return got
