"""Connections from different network namespaces never share a link group (#15 item 3),
with real stacks over the soft provider.

One server stack listens in two network namespaces (A and B, each joined to the root
namespace by a veth pair); one client stack in the root namespace connects to both. The
server's accepted sockets live in A and B: it reads each socket's namespace
(``stack.runtime.security``: SIOCGSKNS) and gives the connection from B a link group of its
own (first contact), so the client makes a second one too. Two connections into the same
namespace share one group (the control). Needs root (``ip netns``).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from support.stacks import run, two_stacks

from stack.runtime.security import setns

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and ip(8)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespaces():
    """Two namespaces, each reachable from the root namespace over a veth pair:
    root 10.N.k.1/24 <-> 10.N.k.2/24 in namespace k (k = 1, 2)."""
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    net = random.randrange(200, 250)
    made: list[str] = []
    links: list[str] = []
    try:
        out = {}
        for k in (1, 2):
            ns, veth = f"smcsec{tag}{k}", f"ss{tag}{k}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "inner", "netns", ns)
            links.append(veth)
            _ip("addr", "add", f"10.{net}.{k}.1/24", "dev", veth)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"10.{net}.{k}.2/24", "dev", "inner")
            _ip("-n", ns, "link", "set", "inner", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out[k] = (ns, f"10.{net}.{k}.2")
        yield out
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot set up namespaces: {e.stderr.decode(errors='replace').strip()}")
    finally:
        for veth in links:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def _listen_in(server, ns: str, addr: str, cb) -> None:
    """start_server with its listening socket made inside ``ns`` (the calling thread joins
    the namespace for as long as the socket takes to be made)."""
    root = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(target)
        await server.start_server(cb, addr, 5000)
    finally:
        setns(root)
        os.close(root)
        os.close(target)


def _inode(ns: str) -> int:
    return os.stat(f"/var/run/netns/{ns}").st_ino


async def _echo(r, w):
    w.write(await r.read(100))
    await w.drain()
    await r.read()
    w.close()


async def _scenario(namespaces, targets: list[int]):
    async with two_stacks() as (a, b, ca, sa):
        for ns, addr in namespaces.values():
            await _listen_in(b, ns, addr, _echo)
        writers = []
        for k in targets:
            r, w = await a.open_connection(namespaces[k][1], 5000)
            w.write(b"ping %d" % k)
            assert await r.read(100) == b"ping %d" % k
            assert w.get_extra_info("smc")["mode"] == "SMCR"
            writers.append(w)
        server = sorted(((c.lgr.name, c.lgr.security.netns) for c in b.host.conns.values() if c.lgr is not None))
        client = sorted(c.lgr.name for c in a.host.conns.values() if c.lgr is not None)
        for w in writers:
            w.close()
        return server, client


def test_connections_from_two_namespaces_get_two_link_groups(namespaces):
    server, client = run(_scenario(namespaces, [1, 2]), timeout=120)
    assert len(server) == 2 and len(client) == 2
    assert server[0][0] != server[1][0] and client[0] != client[1]
    assert sorted(netns for _, netns in server) == sorted(_inode(ns) for ns, _ in namespaces.values())


def test_connections_from_one_namespace_share_a_link_group(namespaces):
    server, client = run(_scenario(namespaces, [1, 1]), timeout=120)
    assert len(server) == 2 and server[0] == server[1] and server[0][1] == _inode(namespaces[1][0])
    assert client[0] == client[1]
