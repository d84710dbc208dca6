"""The embedded userspace SMC-R stack of smctop.

import stack
async with stack.Stack(stack.StackConfig(devices=[stack.DeviceSpec(addr="127.1.0.1")])) as host:
    reader, writer = await host.open_connection("127.1.0.2", 5000)
"""

from .core.config import SmcConfig, Timeouts


def __getattr__(name: str):
    # the runtime (asyncio, sockets) is imported only when asked for, so the pure
    # parts of the package stay importable without it
    if name in ("Stack", "StackConfig", "DeviceSpec"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)


__all__ = ["Stack", "StackConfig", "DeviceSpec", "SmcConfig", "Timeouts"]
