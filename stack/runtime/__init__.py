"""The asyncio runtime: the only I/O layer of the stack, and its public API."""

from stack.verbs.api import Capability

from .rdma import DeviceSpec
from .stack import Stack, StackConfig

__all__ = ["Stack", "StackConfig", "DeviceSpec", "Capability"]
