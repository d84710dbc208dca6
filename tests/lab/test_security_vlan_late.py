"""A VLAN made while the stack runs (#15): its GID is picked up without a restart.

Both VMs start our stack on rxe0 (pyverbs, in-band signalling) first, then add ``eth0.300``
(10.3.44.N/24): rxe0 gets the new interface's GIDs, and the runtime, which reads the GID
table again about every second, offers VLAN 300 a GID. Each side waits until its device
lists one (the server before it listens, the client before it connects); then one
connection over VLAN 300 echoes 256 KiB. VM a captures eth0.

What the host asserts: neither side had a GID for VLAN 300 when its stack opened the device,
both had ``::ffff:10.3.44.N`` afterwards; the connection is SMC-R on both ends, its group
records VLAN 300 and its link runs between the two VLAN-300 GIDs; every byte came back;
the RoCEv2 frames are tagged 300.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import lab
import pytest
from test_security_vlan import ROCE_PORT, _frames, start_capture, stop_capture

PORT = 5320
SIZE = 256 * 1024
VID = 300
SUBNET = "10.3.44"  # VLAN 300's addresses


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ host side


@pytest.mark.lab
def test_a_vlan_made_while_the_stack_runs_gets_its_gid() -> None:
    a, b = lab.pytest_in_pair([str(Path(__file__).relative_to(lab.PROJECT)), "-v"], timeout=240)
    for r, n, peer_n in ((a, 1, 2), (b, 2, 1)):
        rec = json.loads((r.share / f"vlan-late-{r.name}.json").read_text())
        assert str(VID) not in rec["vlan_gids_at_open"], rec
        assert rec["vlan_gids_later"][str(VID)] == f"::ffff:{SUBNET}.{n}", rec
        conn = rec["conn"]
        assert conn["mode"] == "SMCR" and conn["sent"] == conn["received"], conn
        groups = [g for g in rec["lgrs"] if g["id"] == conn["lgr"]]
        assert len(groups) == 1 and groups[0]["security"]["vlan"] == VID, rec["lgrs"]
        links = {(lk["gid"], lk["peer_gid"]) for lk in groups[0]["links"]}
        assert links == {(f"::ffff:{SUBNET}.{n}", f"::ffff:{SUBNET}.{peer_n}")}, links
    roce = [f for f in _frames(a.share / "eth0.pcap") if f[1] == "udp" and f[3] == ROCE_PORT]
    assert len(roce) > 50 and {f[0] for f in roce} == {VID}, {f[0] for f in roce}


# ------------------------------------------------------------------ guest side


def _sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def _add_vlan(n: int) -> None:
    _sh("modprobe", "8021q")
    name = f"eth0.{VID}"
    _sh("ip", "link", "add", "link", "eth0", "name", name, "type", "vlan", "id", str(VID))
    _sh("ip", "addr", "add", f"{SUBNET}.{n}/24", "dev", name)
    _sh("ip", "link", "set", name, "up")


def _gids(host) -> dict[str, str]:
    from stack.core.link import gid_text

    return {str(v): gid_text(g) for v, g in host.rdma.devs["rxe0"].info.vlan_gids or ()}


async def _until_vlan_gid(host) -> dict[str, str]:
    """Wait (at most 60 s) until the device offers VLAN 300 a GID; the GIDs per VLAN then."""
    for _ in range(600):
        if str(VID) in _gids(host):
            return _gids(host)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no GID for VLAN {VID} a minute after eth0.{VID} came up: {_gids(host)}")


def _config(name: str):
    from stack import DeviceSpec, SmcConfig, StackConfig

    return StackConfig(SmcConfig(host=name), (DeviceSpec("pyverbs", "rxe0"),), tcp_option="inband")


def _record(host, at_open: dict, later: dict, conn: dict) -> dict:
    snap = host.snapshot()
    lgrs = [{"id": g["id"], "security": g["security"], "links": g["links"]} for g in snap["lgrs"]]
    return {"vlan_gids_at_open": at_open, "vlan_gids_later": later, "conn": conn, "lgrs": lgrs}


async def _side(vm: str, n: int) -> dict:
    from stack import Stack

    async with Stack(_config(f"vlan-late-{vm}")) as host:
        at_open = _gids(host)
        _add_vlan(n)
        later = await _until_vlan_gid(host)
        if vm == "b":
            done: asyncio.Future = asyncio.get_running_loop().create_future()

            async def handle(reader, writer) -> None:
                data = await asyncio.wait_for(reader.readexactly(SIZE), 120)
                writer.write(data)
                await writer.drain()
                info = writer.get_extra_info("smc") or {}
                record = _record(host, at_open, later, {"mode": info.get("mode"), "lgr": info.get("lgr"), "sent": _sha(data),
                                                        "received": _sha(data)})  # fmt: skip
                await asyncio.wait_for(reader.read(), 60)
                writer.close()
                done.set_result(record)

            server = await host.start_server(handle, "0.0.0.0", PORT)
            record = await asyncio.wait_for(done, 180)
            server.close()
            return record
        deadline = time.monotonic() + 120
        while True:
            try:
                reader, writer = await host.open_connection(f"{SUBNET}.2", PORT)
                break
            except OSError:  # the server is not listening yet (it waits for its own GID)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        data = os.urandom(SIZE)
        writer.write(data)
        await writer.drain()
        back = await asyncio.wait_for(reader.readexactly(SIZE), 120)
        info = writer.get_extra_info("smc") or {}
        record = _record(host, at_open, later, {"mode": info.get("mode"), "lgr": info.get("lgr"), "sent": _sha(data), "received": _sha(back)})
        writer.write_eof()
        writer.close()
        await writer.wait_closed()
        return record


@pytest.mark.lab_guest
def test_guest_side() -> None:
    vm, share = os.environ["LAB_VM"], Path(os.environ["LAB_SHARE"])
    n = int(socket.inet_aton(os.environ["LAB_IP"])[3])
    capture = start_capture(share, PORT) if vm == "a" else None
    try:
        record = asyncio.run(_side(vm, n))
    finally:
        if capture is not None:
            stop_capture(capture)
    (share / f"vlan-late-{vm}.json").write_text(json.dumps(record, indent=1))
