"""The soft RoCEv2 provider: RDMA over UDP port 4791 with real RoCEv2 frames, RC
reliability, memory protection, fault injection and a frame tap. Runs anywhere.

Two engines move the frames and give the same results: ``native`` (the compiled engine
of native/softroce, used when it is built) and ``python`` (its pure-Python twin).
``SoftProvider(engine="auto")`` picks native when it loads; the environment variable
``SMCTOP_SOFT_ENGINE`` (auto, native, python) overrides the default."""

from __future__ import annotations

import errno
import ipaddress
import os

from ..api import Mtu, Provider, VerbsError
from .device import Faults, FrameRecord, SoftDevice, SoftDeviceBase

__all__ = ["SoftProvider", "SoftDevice", "SoftDeviceBase", "FrameRecord", "Faults", "ENGINES", "resolve_engine"]

ENGINES = ("auto", "native", "python")
ENGINE_ENV = "SMCTOP_SOFT_ENGINE"


def resolve_engine(engine: str | None = None) -> tuple[str, str]:
    """The engine a soft device gets, and a note when "auto" could not have the native one.
    ``engine`` None: the environment (SMCTOP_SOFT_ENGINE) or "auto"."""
    engine = engine or os.environ.get(ENGINE_ENV) or "auto"
    if engine not in ENGINES:
        raise VerbsError(errno.EINVAL, f"soft engine {engine!r}: choose auto, native or python (from {ENGINE_ENV} or the option)")
    if engine == "python":
        return "python", ""
    from native import softroce

    ok, why = softroce.available()
    if ok:
        return "native", ""
    if engine == "native":
        raise VerbsError(errno.ENOSYS, why)
    return "python", why


class SoftProvider(Provider):
    """Devices are created on demand: ``open_device("127.1.0.1")`` or
    ``open_device("srxe0", addr="10.9.0.1", netns="ns1")``."""

    name = "soft"

    def __init__(self, *, mtu: Mtu = Mtu.MTU_1024, seed: int | None = None, engine: str | None = None, gso: str | None = None) -> None:
        self.mtu = Mtu(mtu)
        self.seed = seed
        self.gso = gso  # the compiled engine's UDP segmentation offload: auto (default), on, off
        self.engine, self.engine_note = resolve_engine(engine)
        self._devices: dict[str, SoftDeviceBase] = {}

    def list_devices(self) -> list[str]:
        return [name for name, dev in self._devices.items() if not _closed(dev)]

    def open_device(self, name: str, *, addr: str | None = None, netns: str | None = None, mtu: Mtu | None = None) -> SoftDeviceBase:
        if addr is None:
            try:
                addr = str(ipaddress.IPv4Address(name))
            except ValueError:
                raise VerbsError(errno.ENODEV, f"soft device {name!r}: give an IPv4 address as name or addr=") from None
        existing = self._devices.get(name)
        if existing is not None and not _closed(existing):
            raise VerbsError(errno.EBUSY, f"soft device {name!r} is already open")
        if self.engine == "native":
            from .native import SoftDeviceNative

            dev: SoftDeviceBase = SoftDeviceNative(name, addr, mtu=mtu or self.mtu, netns=netns, seed=self.seed, gso=self.gso)
        else:
            dev = SoftDevice(name, addr, mtu=mtu or self.mtu, netns=netns, seed=self.seed)
        self._devices[name] = dev
        return dev

    def close(self) -> None:
        for dev in self._devices.values():
            dev.close()
        self._devices.clear()


def _closed(dev: SoftDeviceBase) -> bool:
    return getattr(dev, "_closed", not getattr(dev, "_running", False))
