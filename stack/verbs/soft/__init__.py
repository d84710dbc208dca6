"""The soft RoCEv2 provider: RDMA over UDP port 4791 with real RoCEv2 frames, RC
reliability, memory protection, fault injection and a frame tap. Runs anywhere."""

from __future__ import annotations

import errno
import ipaddress

from ..api import Mtu, Provider, VerbsError
from .device import Faults, FrameRecord, SoftDevice

__all__ = ["SoftProvider", "SoftDevice", "FrameRecord", "Faults"]


class SoftProvider(Provider):
    """Devices are created on demand: ``open_device("127.1.0.1")`` or
    ``open_device("srxe0", addr="10.9.0.1", netns="ns1")``."""

    name = "soft"

    def __init__(self, *, mtu: Mtu = Mtu.MTU_1024, seed: int | None = None) -> None:
        self.mtu = Mtu(mtu)
        self.seed = seed
        self._devices: dict[str, SoftDevice] = {}

    def list_devices(self) -> list[str]:
        return [name for name, dev in self._devices.items() if dev._running]

    def open_device(self, name: str, *, addr: str | None = None, netns: str | None = None, mtu: Mtu | None = None) -> SoftDevice:
        if addr is None:
            try:
                addr = str(ipaddress.IPv4Address(name))
            except ValueError:
                raise VerbsError(errno.ENODEV, f"soft device {name!r}: give an IPv4 address as name or addr=") from None
        existing = self._devices.get(name)
        if existing is not None and existing._running:
            raise VerbsError(errno.EBUSY, f"soft device {name!r} is already open")
        dev = SoftDevice(name, addr, mtu=mtu or self.mtu, netns=netns, seed=self.seed)
        self._devices[name] = dev
        return dev

    def close(self) -> None:
        for dev in self._devices.values():
            dev.close()
        self._devices.clear()
