"""The runtime's parts meet at declared interfaces: the streams' connection (streams.Conn) is
a conn.ConnHandle, the control socket's stack (controls.ControlTarget) is a stack.Stack."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

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
