"""Providers under test for the verbs conformance suite.

Modes (``--verbs-mode``, repeatable, or SMCTOP_VERBS_MODES=a,b):
  soft          both endpoints in this process, two soft devices on 127.x addresses (pure-Python engine)
  soft-2proc    endpoint B in a child process (its own interpreter, its own NIC thread)
  native        as soft, on the compiled engine (native/softroce)
  native-2proc  as soft-2proc, on the compiled engine
  pyverbs       both endpoints on the real device SMCTOP_RDMA_DEVICE (rxe0), as in the kernel lab
  pyverbs-2vm   endpoint B served by another machine at SMCTOP_VERBS_REMOTE (host:port)
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from dataclasses import dataclass

import pytest
from support.verbs_endpoint import Endpoint, RemoteEndpoint, connect_remote, serve_sessions

DEFAULT_MODES = ["soft", "soft-2proc", "native", "native-2proc"]
_addr = itertools.count(1)


def pytest_addoption(parser):
    parser.addoption("--verbs-mode", action="append", default=None, help="provider mode(s) for tests/verbs")


# Modes whose two endpoints are joined by a real wire: only there can frames be lost or a
# peer's port go down (rxe loopback on one device never touches the network interface).
WIRE_MODES = {"soft", "soft-2proc", "native", "native-2proc", "pyverbs-2vm"}


def pytest_generate_tests(metafunc):
    modes = metafunc.config.getoption("--verbs-mode") or (
        os.environ["SMCTOP_VERBS_MODES"].split(",") if os.environ.get("SMCTOP_VERBS_MODES") else DEFAULT_MODES
    )
    if "pair" in metafunc.fixturenames:
        metafunc.parametrize("pair", modes, indirect=True)
    if "wire_pair" in metafunc.fixturenames:
        metafunc.parametrize("wire_pair", [m for m in modes if m in WIRE_MODES], indirect=True)


def _soft_addrs() -> tuple[str, str]:
    n = next(_addr)
    return f"127.61.{n % 250}.1", f"127.62.{n % 250}.1"


@dataclass
class Pair:
    mode: str
    a: Endpoint
    b: Endpoint | RemoteEndpoint

    def connect(self, a_path: dict | None = None, b_path: dict | None = None, **qp_kw) -> tuple[dict, dict]:
        qa = self.a.create_qp(**qp_kw)
        qb = self.b.create_qp(**qp_kw)
        self.a.connect(qa["handle"], qa, qb, **(a_path or {}))
        self.b.connect(qb["handle"], qb, qa, **(b_path or {}))
        return qa, qb


@pytest.fixture(scope="session")
def child_server():
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_sessions, args=(child,), daemon=True)
    proc.start()
    child.close()
    yield parent
    parent.close()
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()


@pytest.fixture
def pair(request):
    yield from _pair(request)


@pytest.fixture
def wire_pair(request):
    yield from _pair(request)


def _pair(request):
    mode = request.param
    device = os.environ.get("SMCTOP_RDMA_DEVICE", "rxe0")
    netdev = os.environ.get("SMCTOP_RDMA_NETDEV", "eth0")
    if mode in ("soft", "native"):
        engine = "python" if mode == "soft" else "native"
        x, y = _soft_addrs()
        p = Pair(mode, Endpoint("soft", x, engine=engine), Endpoint("soft", y, engine=engine))
    elif mode in ("soft-2proc", "native-2proc"):
        engine = "python" if mode == "soft-2proc" else "native"
        x, y = _soft_addrs()
        p = Pair(mode, Endpoint("soft", x, engine=engine), RemoteEndpoint(request.getfixturevalue("child_server"), "soft", y, engine=engine))
    elif mode == "pyverbs":
        p = Pair(mode, Endpoint("pyverbs", device, netdev=netdev), Endpoint("pyverbs", device, netdev=netdev))
    elif mode == "pyverbs-2vm":
        host, port = os.environ["SMCTOP_VERBS_REMOTE"].rsplit(":", 1)
        p = Pair(mode, Endpoint("pyverbs", device, netdev=netdev), connect_remote((host, int(port)), "pyverbs", device, netdev=netdev))
    else:
        raise pytest.UsageError(f"unknown verbs mode {mode!r}")
    try:
        yield p
    finally:
        p.a.close()
        p.b.close()
