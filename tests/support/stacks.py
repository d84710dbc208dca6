"""Helpers for tests that run real stacks over the soft provider."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import replace

from stack.core.config import SmcConfig, Timeouts
from stack.runtime import DeviceSpec, Stack, StackConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_rng = random.SystemRandom()
_handed_out: set[tuple[int, int]] = set()


def free_on_loopback(*hosts: str) -> bool:
    """True if no socket holds the ports our hosts use on any of ``hosts``: UDP 4791 (a soft
    device) and TCP 5000 (a test server). A probe, not a reservation: the window between it
    and the stack's own bind is short, and a later collision shows as a bind error, not a
    wrong result."""
    for host in hosts:
        for kind, port in ((socket.SOCK_DGRAM, 4791), (socket.SOCK_STREAM, 5000)):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def addrs() -> tuple[str, str]:
    """A fresh pair of loopback addresses, so tests never share a device or port: chosen at
    random (127.100-149.x.1/.2, the second devices 50 higher) and probed, so two test runs at
    the same time (two helpers, two CI jobs) do not collide either."""
    for _ in range(1000):
        o1, o2 = _rng.randrange(100, 150), _rng.randrange(0, 256)
        if (o1, o2) in _handed_out:
            continue
        pair = f"127.{o1}.{o2}.1", f"127.{o1}.{o2}.2"
        if free_on_loopback(*pair, *(second_device(a) for a in pair)):
            _handed_out.add((o1, o2))
            return pair
    raise RuntimeError("no free loopback address pair in 127.100.0.0-127.149.255.255")


def second_device(addr: str) -> str:
    """The address of a host's second soft device: same host part, another /16."""
    o = addr.split(".")
    return f"127.{int(o[1]) + 50}.{o[2]}.{o[3]}"


def config(host: str, addr: str | tuple[str, ...] | None, mtu: int = 4096, control: str | None = None, **smc) -> StackConfig:
    smc.setdefault("timeouts", Timeouts(clc_wait=3.0))
    addrs = (addr,) if isinstance(addr, str) else tuple(addr or ())
    devices = tuple(DeviceSpec("soft", a, a, None, mtu) for a in addrs)
    return StackConfig(SmcConfig(host=host, **smc), devices, control_path=control)


@contextlib.asynccontextmanager
async def two_stacks(client_kw: dict | None = None, server_kw: dict | None = None, *, mtu: int = 4096, client_dev: bool | int = True,
                     server_dev: bool | int = True, pair: tuple[str, str] | None = None):  # fmt: skip
    """Two stacks on fresh loopback addresses; ``client_dev``/``server_dev`` = 2 gives a host
    a second device (see ``second_device``)."""
    ca, sa = pair or addrs()

    def devs(addr: str, n: bool | int) -> tuple[str, ...]:
        return (addr, second_device(addr))[: int(n)]

    a = Stack(config("client", devs(ca, client_dev), mtu, **(client_kw or {})))
    b = Stack(config("server", devs(sa, server_dev), mtu, **(server_kw or {})))
    await a.start()
    await b.start()
    try:
        yield a, b, ca, sa
    finally:
        await a.close()
        await b.close()


async def echo_exchanges(client: Stack, server: Stack, ca: str, sa: str, n: int = 2, infos: list | None = None) -> None:
    """``n`` connections, one after the other, each echoing a few KiB: the first makes the
    link group, the next reuse it (CONFIRM RKEY, and DELETE RKEY when they close)."""

    async def echo(r, w):
        w.write(await r.read())
        w.close()

    await server.start_server(echo, sa, 5000)
    for i in range(n):
        r, w = await client.open_connection(sa, 5000, local_addr=(ca, 0))
        if infos is not None:
            infos.append(w.get_extra_info("smc"))
        sent = os.urandom(5000 + i)
        w.write(sent)
        w.write_eof()
        echoed = await r.read()
        assert echoed == sent, (
            f"connection {i}: {len(sent)} bytes sent, {len(echoed)} echoed, first difference at "
            f"{next((k for k, (x, y) in enumerate(zip(sent, echoed)) if x != y), min(len(sent), len(echoed)))}"
        )
        w.close()
        await w.wait_closed()


async def until(predicate, timeout: float = 60.0, what: str = "") -> None:
    """Wait, without blocking the loop, until ``predicate()`` holds; the timeout only stops a
    hang (it is no assertion about speed): it raises AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what or predicate}")
        await asyncio.sleep(0.02)


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class TrafficServer:
    """``smc-traffic server`` in its own process (its own interpreter, its own NIC thread)."""

    def __init__(self, addr: str, *args: str, port: int = 5000) -> None:
        self.addr, self.port = addr, port
        cmd = [sys.executable, "-m", "stack.traffic.cli", "server", "--listen", f"{addr}:{port}", "--json", "--no-progress", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stderr.readline()  # the banner goes to stderr when the report is JSON
        if "smc-traffic server on" not in line:
            out, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"traffic server did not start: {line}{err}")

    def report(self, timeout: float = 60) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        if not out.strip():
            raise RuntimeError(f"traffic server printed no report (exit {self.proc.returncode}): {err}")
        return json.loads(out)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def traffic_client(server: str, device: str, *args: str, timeout: float = 300) -> tuple[int, dict, str]:
    cmd = [sys.executable, "-m", "stack.traffic.cli", "client", "--connect", f"{server}:5000", "--device", device, "--json",
           "--no-progress", *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        report = {}
    return res.returncode, report, res.stderr


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


__all__ = [
    "addrs",
    "free_on_loopback",
    "second_device",
    "config",
    "two_stacks",
    "echo_exchanges",
    "run",
    "until",
    "TrafficServer",
    "traffic_client",
    "wait_for",
    "replace",
]


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound (IPv6 tests skip on a host without it)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
