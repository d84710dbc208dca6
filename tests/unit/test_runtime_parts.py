"""The runtime's parts meet at declared interfaces: the streams' connection (streams.Conn) is
a conn.ConnHandle, the control socket's stack (controls.ControlTarget) is a stack.Stack."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from stack.runtime.conn import ConnHandle
from stack.runtime.controls import ControlTarget
from stack.runtime.stack import Stack
from stack.runtime.streams import Conn


def _members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")} | set(getattr(protocol, "__annotations__", {}))


def test_a_stack_has_what_the_control_socket_needs():
    stack = Stack()
    missing = [n for n in _members(ControlTarget) if not hasattr(stack, n)]
    assert not missing


def test_a_connection_handle_has_what_the_streams_need():
    loop = asyncio.new_event_loop()
    try:
        handle = ConnHandle(SimpleNamespace(loop=loop), 1)
        assert not [n for n in _members(Conn) if not hasattr(handle, n)]
    finally:
        loop.close()


def test_a_soft_device_on_no_address_of_its_own_is_refused_by_the_library_too() -> None:
    # 0.0.0.0 would bind UDP 4791 on every address of the host: no other device there could start
    from stack.runtime import DeviceSpec, StackConfig
    from stack.verbs import VerbsError

    for addr, words in (("0.0.0.0", "the unspecified address"), ("255.255.255.255", "broadcast"), ("239.1.1.1", "multicast")):
        with pytest.raises(VerbsError, match=f"soft device {addr}: .*{words}"):
            Stack(StackConfig(devices=[DeviceSpec(addr=addr)]))
    Stack(StackConfig(devices=[DeviceSpec(addr="127.1.0.9")]))  # an address of its own: taken
