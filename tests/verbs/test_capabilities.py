"""Optional provider features are declared, not guessed: each device class says which
capabilities it has (stack.verbs.api.Capability) and has each one's interface."""

from __future__ import annotations

import pytest
from support.stacks import addrs

from stack.verbs.api import CAPABILITY_INTERFACES, FAULTS, Capability
from stack.verbs.pyverbs_provider import PyverbsDevice
from stack.verbs.soft import SoftProvider

ENGINES = ["python"] + (["native"] if SoftProvider(engine="auto").engine == "native" else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_a_soft_device_has_every_capability_it_declares(engine):
    provider = SoftProvider(engine=engine)
    dev = provider.open_device(addrs()[0])
    try:
        expected = {Capability.PORT_CONTROL, Capability.FAULT_INJECTION, Capability.FRAME_TAP}
        assert set(dev.capabilities) == expected | ({Capability.FAST_PATH} if engine == "native" else set())
        for cap in dev.capabilities:
            assert dev.has(cap) and isinstance(dev, CAPABILITY_INTERFACES[cap]), cap
        assert all(hasattr(dev.faults, name) for name in FAULTS)
        assert dev.engine == engine
    finally:
        provider.close()


def test_a_pyverbs_device_declares_none():
    assert PyverbsDevice.capabilities == frozenset() and PyverbsDevice.engine == "pyverbs"
