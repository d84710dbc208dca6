"""The runtime's reading of a TCP connection's security context (stack/runtime/security.py):
the socket's own network namespace and the VLAN of the interface owning its address."""

from __future__ import annotations

import io
import os
import socket

import pytest

from stack.core.linkgroup import SecurityContext
from stack.runtime import security


def test_a_socket_in_our_namespace_has_our_namespace_and_no_vlan():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as c:
            ctx = security.socket_context(c)
    assert ctx == SecurityContext(netns=os.stat("/proc/thread-self/ns/net").st_ino, vlan=0)


def test_no_socket_no_context():
    class Transport:
        def get_extra_info(self, name, default=None):
            return None

    assert security.socket_context(Transport()) is None


def test_the_vlan_comes_from_the_interface_that_owns_the_address(monkeypatch):
    monkeypatch.setattr(security, "_ipv4_interfaces", lambda: {"10.1.100.5": "eth0.100", "10.2.0.5": "eth1"})
    config = "VLAN Dev name    | VLAN ID\nName-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\neth0.100       | 100  | eth0\n"
    real_open = open

    def fake_open(path, *a, **kw):
        if path == "/proc/thread-self/net/vlan/config":
            return io.StringIO(config)
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", fake_open)
    assert security.vlan_of("10.1.100.5") == 100
    assert security.vlan_of("::ffff:10.1.100.5") == 100  # an IPv4-mapped address of a dual-stack socket
    assert security.vlan_of("10.2.0.5") == 0  # no VLAN interface
    assert security.vlan_of("10.9.9.9") == 0  # an address no interface owns
    assert security.vlan_of("not an address") == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="SIOCGSKNS needs CAP_NET_ADMIN")
def test_siocgskns_names_the_socket_namespace():
    with socket.socket() as s:
        inode, fd = security.socket_netns(s)
        try:
            assert fd is not None and inode == os.stat("/proc/thread-self/ns/net").st_ino
        finally:
            if fd is not None:
                os.close(fd)
