"""Operator controls: the faults an operator (smctop, smc-traffic, the control socket) injects
into a running stack, each reported as an event: a link failed, a soft device's port pulled
or put back, loss and delay, a frame tap, the next connections declined with a reason.

What a device can do is what it declares (``stack.verbs.api.Capability``); asking a device
for what it does not have is a ValueError that says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Protocol

from stack.core.host import SmcHost
from stack.events import EventBus
from stack.verbs.api import FAULTS, Capability

from .rdma import RdmaDriver


class ControlTarget(Protocol):
    """What the control socket (``control.py``) needs of a running stack; ``stack.Stack`` is one."""

    bus: EventBus

    @property
    def name(self) -> str: ...
    def now(self) -> float: ...
    def devices(self) -> list[str]: ...
    def snapshot(self) -> dict[str, Any]: ...
    def fail_link(self, lgr: str, link: int) -> bool: ...
    def set_port(self, device: str, up: bool) -> None: ...
    def set_faults(self, device: str, **faults: Any) -> None: ...
    def add_frame_tap(self, tap: Callable, batch: bool = False, write_snap: int = 0, raw: bool = False) -> list[str]: ...
    def remove_frame_tap(self, tap: Callable) -> None: ...
    def force_decline(self, reason: int | None) -> None: ...


class Controls:
    def __init__(self, host: SmcHost, rdma: RdmaDriver, now: Callable[[], float]) -> None:
        self.host = host
        self.rdma = rdma
        self.now = now

    def dev(self, device: str):
        dev = self.rdma.devs.get(device)
        if dev is None:
            raise ValueError(f"no device {device!r}; devices: {', '.join(self.rdma.devs) or 'none'}")
        return dev

    def capabilities(self, device: str) -> frozenset[Capability]:
        return self.dev(device).device.capabilities

    def fail_link(self, lgr: str, link: int) -> bool:
        return self.host.fail_link(lgr, link, self.now())

    def set_port(self, device: str, up: bool) -> None:
        dev = self.dev(device)
        if not dev.device.has(Capability.PORT_CONTROL):
            raise ValueError(f"device {device} has no port control (only soft devices)")
        self.host.emit(self.now(), "link.event", event="fault", fault="port_up" if up else "port_down", device=device)
        dev.device.set_port_state(up)

    def set_faults(self, device: str, **faults) -> None:
        dev = self.dev(device)
        if not dev.device.has(Capability.FAULT_INJECTION):
            raise ValueError(f"device {device} has no fault injection (only soft devices)")
        for k in faults:
            if k not in FAULTS:
                raise ValueError(f"unknown fault {k!r}: loss, rx_loss, drop_next, delay")
        for k, v in faults.items():
            setattr(dev.device.faults, k, v)
        self.host.emit(self.now(), "link.event", event="fault", fault="faults", device=device, **faults)

    def add_frame_tap(self, tap: Callable, batch: bool = False, write_snap: int = 0, raw: bool = False) -> list[str]:
        tapped = []
        for dev in self.rdma.devs.values():
            if dev.device.has(Capability.FRAME_TAP):
                dev.device.add_tap(tap, batch, write_snap, raw)
                tapped.append(dev.device.addr)
        return tapped

    def remove_frame_tap(self, tap: Callable) -> None:
        for dev in self.rdma.devs.values():
            if dev.device.has(Capability.FRAME_TAP):
                dev.device.remove_tap(tap)

    def force_decline(self, reason: int | None) -> None:
        self.host.config = replace(self.host.config, forced_decline=reason)
