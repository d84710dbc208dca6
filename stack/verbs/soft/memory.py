"""Protection domains, memory regions and completion queues of the soft provider."""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from typing import TYPE_CHECKING

from ..api import (
    Access,
    AsyncEvent,
    CompletionQueue,
    EventType,
    MemoryRegion,
    ProtectionDomain,
    QPCap,
    VerbsError,
    WorkCompletion,
)

if TYPE_CHECKING:
    from .device import SoftDevice

PAGE = 4096


class SoftMR(MemoryRegion):
    """Registered memory: a bytearray with a made-up virtual address, as a NIC sees it."""

    def __init__(self, pd: "SoftPD", size: int, access: Access, addr: int, lkey: int, rkey: int,
                 buffer: memoryview | None = None) -> None:  # fmt: skip
        self.pd = pd
        self.length = size
        self.access = Access(access)
        self.addr = addr
        self.lkey = lkey
        self.rkey = rkey
        self._view = memoryview(bytearray(size)) if buffer is None else buffer[:size]
        self.valid = True

    @property
    def buf(self) -> memoryview:
        return self._view

    def contains(self, addr: int, length: int) -> bool:
        return self.addr <= addr and addr + length <= self.addr + self.length

    def deregister(self) -> None:
        if self.valid:
            self.valid = False
            self.pd.device._forget_mr(self)

    def __repr__(self) -> str:
        return f"SoftMR(addr=0x{self.addr:x}, len={self.length}, lkey=0x{self.lkey:x}, rkey=0x{self.rkey:x})"


def _check_buffer(buffer, size: int) -> memoryview:
    view = memoryview(buffer)
    if view.readonly or not view.contiguous:
        raise VerbsError(errno.EINVAL, "reg_mr: the buffer must be writable and contiguous")
    view = view.cast("B")
    if len(view) < size:
        raise VerbsError(errno.EINVAL, f"reg_mr: the buffer has {len(view)} bytes, {size} asked")
    return view


class SoftPD(ProtectionDomain):
    def __init__(self, device: "SoftDevice") -> None:
        self.device = device

    def reg_mr(self, size: int, access: Access, buffer: memoryview | None = None) -> SoftMR:
        access = Access(access)
        if size <= 0:
            raise VerbsError(errno.EINVAL, f"reg_mr: size {size} must be positive")
        if buffer is not None:
            buffer = _check_buffer(buffer, size)
        if access & (Access.REMOTE_WRITE | Access.REMOTE_ATOMIC) and not access & Access.LOCAL_WRITE:
            raise VerbsError(errno.EINVAL, "reg_mr: remote write or atomic access requires local write")
        return self.device._new_mr(self, size, access, buffer)

    def create_rc_qp(self, send_cq: CompletionQueue, recv_cq: CompletionQueue, cap: QPCap = QPCap()):
        return self.device._new_qp(self, send_cq, recv_cq, cap)


class SoftCQ(CompletionQueue):
    """A completion queue with an eventfd that is readable while entries wait."""

    def __init__(self, device: "SoftDevice", depth: int) -> None:
        if depth <= 0:
            raise VerbsError(errno.EINVAL, f"create_cq: depth {depth} must be positive")
        self.device = device
        self.depth = depth
        self._entries: deque[WorkCompletion] = deque()
        self._lock = threading.Lock()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.overruns = 0

    def push(self, wc: WorkCompletion) -> None:
        with self._lock:
            if len(self._entries) >= self.depth:
                self.overruns += 1
                self.device._post_event(AsyncEvent(EventType.CQ_ERR))
                return
            self._entries.append(wc)
            if len(self._entries) == 1:
                os.eventfd_write(self._fd, 1)

    def poll(self, max_entries: int = 16) -> list[WorkCompletion]:
        with self._lock:
            out = [self._entries.popleft() for _ in range(min(max_entries, len(self._entries)))]
            if not self._entries:
                try:
                    os.eventfd_read(self._fd)
                except BlockingIOError:
                    pass
            return out

    def fileno(self) -> int:
        return self._fd

    def __len__(self) -> int:
        return len(self._entries)

    def destroy(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
