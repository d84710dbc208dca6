"""Connection buffers registered with every device their link group uses.

An RMB is written by the peer over whichever link carries its connection, so it must be
registered on the device of every link (the kernel maps each RMB on each link and keeps
an rkey per link, ``buf_desc->mr[link_idx]``). The send buffer likewise needs a local
key on every device that may post RDMA WRITEs from it. One memory, several
registrations: a failover changes the link and the key, never the bytes.

Buffers belong to their link group, not to one connection (``smc_buf_get_slot``,
``smcr_buf_unuse``): when a connection ends, its RMB is unregistered with the peer (DELETE
RKEY). By default its registration then ends too (``LinkGroup.rmb_free``): no rkey outlives
the connection it was handed to. With ``SmcConfig.rmb_keep_registered`` it is kept as the
kernel keeps it: zeroed and registered, unused, with its send buffer, for the next
connection of the same size, which announces it again (CONFIRM RKEY); an RMB whose DELETE
RKEY went unanswered is kept that way too, so a late RDMA WRITE lands in registered memory
instead of failing the link. Send buffers (local keys only) are always pooled. What is left
is freed with the group.
"""

from __future__ import annotations

from .ports import HostIO, MrInfo

_ZEROS: dict[int, bytes] = {}


def _zeros(size: int) -> bytes:
    """Zero bytes to copy over a buffer (kept per size: buffers come in a few sizes)."""
    z = _ZEROS.get(size)
    if z is None:
        if len(_ZEROS) > 8:
            _ZEROS.clear()
        z = _ZEROS[size] = bytes(size)
    return z


class RegisteredBuffer:
    def __init__(self, io: HostIO, device: str, size: int, remote_write: bool) -> None:
        self.io = io
        self.remote_write = remote_write
        first = io.reg_mr(device, size, remote_write)
        self.size = size
        self.buf = first.buf
        self.regs: dict[str, MrInfo] = {device: first}
        self.in_use = True
        self.confirmed = False  # an RMB whose keys the peer has (CLC, CONFIRM RKEY or ADD LINK)

    def on(self, device: str) -> MrInfo:
        """The registration on ``device`` (KeyError when the buffer is not mapped there)."""
        return self.regs[device]

    def ensure(self, device: str) -> MrInfo:
        """Map the buffer on ``device`` too (raises OSError when registration fails)."""
        reg = self.regs.get(device)
        if reg is None:
            reg = self.regs[device] = self.io.reg_mr(device, self.size, self.remote_write, self.buf)
        return reg

    def clear(self) -> None:
        self.buf[:] = _zeros(self.size)

    def release(self) -> None:
        for reg in self.regs.values():
            self.io.dereg_mr(reg.handle)
        self.regs.clear()
