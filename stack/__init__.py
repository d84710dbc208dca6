"""The embedded userspace SMC-R stack of smctop.

import stack
async with stack.Stack(stack.StackConfig(devices=[stack.DeviceSpec(addr="127.1.0.1")])) as host:
    reader, writer = await host.open_connection("127.1.0.2", 5000)
"""


def __getattr__(name: str):
    # imported only when asked for: the runtime (asyncio, sockets), so the pure parts of the
    # package stay importable without it, and the configuration, so that importing the package
    # (as every command does first, through stack.launch) costs nothing
    if name in ("Stack", "StackConfig", "DeviceSpec"):
        from . import runtime

        return getattr(runtime, name)
    if name in ("SmcConfig", "Timeouts"):
        from .core import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["Stack", "StackConfig", "DeviceSpec", "SmcConfig", "Timeouts"]
