"""The kernel as our peer on a VLAN (#15): a kernel client on VLAN 100 against our server.

Both VMs get ``eth0.100`` (10.3.100.N/24) as in test_security_vlan.py. VM a runs our stack's
server on rxe0 (pyverbs, the real SMC TCP option from native/smc_opt.bpf.c, SMC-Rv2 with the
lab's UEID) and captures eth0; VM b runs the kernel's AF_SMC client (ksmc.py), which opens
one connection to 10.3.100.1 and one to 10.2.0.1 (eth0 itself), each echoing 256 KiB, and
reads smc_diag's link info for each while it is open.

What the host asserts: both connections are SMC-R on both ends with every byte back; the
kernel's link for the VLAN connection runs from its ``::ffff:10.3.100.2`` to our
``::ffff:10.3.100.1`` (the GID our Accept gave, on the VLAN: the kernel took it as the
peer's), the eth0 one between the ``10.2.0.N`` GIDs; our server made one group per VLAN
with the same GIDs the other way round; and every RoCEv2 frame of the VLAN connection is
tagged 100, the eth0 one's untagged.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lab
import pytest
from test_security_vlan import ROCE_PORT, _frames, _setup_vlans, start_capture, stop_capture

PORT = 5310
# Our server listens here once its SMC listener is armed: a SYN that reaches a listener between
# listen() hashing it and the option program's TCP_LISTEN_CB gets a SYN-ACK without the SMC
# option (docs/kernel-fidelity.md), and a client that retries while refused can land there.
READY_PORT = PORT + 1
SIZE = 256 * 1024
LAB_UEID = "SMCTOP-LAB"
TARGETS = ("10.3.100.1", "10.2.0.1")  # VM a's address on VLAN 100, on eth0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _v4(gid: str) -> str:
    """The IPv4 address of a GID, as smc_diag writes it (eight hex groups) or as we do."""
    return str(ipaddress.IPv6Address(gid).ipv4_mapped)


# ------------------------------------------------------------------ host side


@pytest.mark.lab
def test_a_kernel_client_on_a_vlan_meets_our_server_on_the_vlans_gid() -> None:
    a, b = lab.pytest_in_pair([str(Path(__file__).relative_to(lab.PROJECT)), "-v"], timeout=240)
    ours = json.loads((a.share / "vlan-kernel-a.json").read_text())
    kernel = json.loads((b.share / "vlan-kernel-b.json").read_text())

    assert [c["target"] for c in kernel["conns"]] == list(TARGETS)
    for c in kernel["conns"]:
        assert (c["mode"], c["fallback_reason"]) == ("SMCR", 0), c
        n = c["target"].rsplit(".", 1)[0]  # 10.3.100 or 10.2.0
        # the kernel's own GID and the one it took from our Accept: both on the connection's VLAN
        assert (_v4(c["gid"]), _v4(c["peer_gid"])) == (f"{n}.2", f"{n}.1"), c
        assert c["sent"] == c["echoed"], c
    # our side: SMC-Rv2, one group per VLAN, the links between the same GIDs, the data intact
    assert {c["vlan"] for c in ours["conns"]} == {100, 0}
    for c in ours["conns"]:
        assert (c["mode"], c["version"]) == ("SMCR", 2), c
    assert sorted(c["received"] for c in ours["conns"]) == sorted(c["sent"] for c in kernel["conns"])
    by_vlan = {g["security"]["vlan"]: g for g in ours["lgrs"]}
    assert set(by_vlan) == {100, 0} and len(ours["lgrs"]) == 2
    for vid, n in ((100, "10.3.100"), (0, "10.2.0")):
        assert {(_v4(lk["gid"]), _v4(lk["peer_gid"])) for lk in by_vlan[vid]["links"]} == {(f"{n}.1", f"{n}.2")}, by_vlan[vid]

    frames = _frames(a.share / "eth0.pcap")
    roce = [f for f in frames if f[1] == "udp" and f[3] == ROCE_PORT]
    assert len(roce) > 50
    for vid, _, _, _, _, src, dst in roce:
        vlan100 = src.startswith("10.3.100.")
        assert vid == (100 if vlan100 else None) and dst.startswith("10.3.100." if vlan100 else "10.2.0."), (vid, src, dst)
    assert {f[0] for f in roce} == {100, None}
    assert {f[0] for f in frames if f[1] == "tcp" and PORT in (f[2], f[3])} == {100, None}


# ------------------------------------------------------------------ guest side


def _our_config():
    from stack import DeviceSpec, SmcConfig, StackConfig

    smc = SmcConfig(host="vlan-ours", versions=frozenset({2}), ueids=(LAB_UEID,))
    return StackConfig(smc, (DeviceSpec("pyverbs", "rxe0"),), tcp_option="option")


async def _our_server() -> dict:
    from stack import Stack

    echoed, released, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    conns: list[dict] = []
    closed = []

    async def handle(reader, writer) -> None:
        local = writer.get_extra_info("sockname")
        data = await asyncio.wait_for(reader.readexactly(SIZE), 120)
        writer.write(data)
        await writer.drain()
        info = writer.get_extra_info("smc") or {}
        conns.append({"vlan": 100 if local[0].startswith("10.3.100.") else 0, "lgr": info.get("lgr"), "mode": info.get("mode"),
                      "version": info.get("version"), "received": _sha(data)})  # fmt: skip
        if len(conns) == len(TARGETS):
            echoed.set()
        await released.wait()  # both connections stay open until the snapshot is taken
        writer.write(b"S")
        await writer.drain()
        await asyncio.wait_for(reader.read(), 60)
        writer.close()
        closed.append(local)
        if len(closed) == len(TARGETS):
            finished.set()

    async with Stack(_our_config()) as host:
        server = await host.start_server(handle, "0.0.0.0", PORT)
        ready = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", READY_PORT)
        await asyncio.wait_for(echoed.wait(), 180)
        ready.close()
        snap = host.snapshot()
        record = {"conns": conns, "lgrs": [{"id": g["id"], "security": g["security"], "links": g["links"]} for g in snap["lgrs"]]}
        released.set()
        await asyncio.wait_for(finished.wait(), 60)
        server.close()
    return record


def _kernel_link(sock: socket.socket) -> dict:
    """smc_diag's view of a connected AF_SMC socket: mode, fallback reason, its link's GIDs."""
    import ksmc

    local, peer = ksmc.names(sock)
    d = ksmc.kio.Diag()
    try:
        dump = ksmc.kdiag.parse_dump(d.dump((1 << (ksmc.SMC_DIAG_FALLBACK - 1)) | (1 << (ksmc.SMC_DIAG_LGRINFO - 1))))
    finally:
        d.close()
    s = next((s for s in dump.sockets if s.local == local and s.peer == peer), None)
    if s is None:
        raise AssertionError(f"smc_diag does not list {local} -> {peer}")
    info = s.lgrinfo
    return {"mode": ksmc.MODES.get(s.mode, str(s.mode)), "fallback_reason": s.fallback_reason or 0,
            "gid": info.gid if info else "", "peer_gid": info.peer_gid if info else ""}  # fmt: skip


def _kernel_client() -> dict:
    import ksmc

    ksmc.ueid_add(LAB_UEID)
    deadline = time.monotonic() + 120
    while True:  # our server's SMC listener is armed once this port answers
        try:
            socket.create_connection((TARGETS[1], READY_PORT), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    conns, socks = [], []
    for target in TARGETS:
        deadline = time.monotonic() + 120
        while True:
            try:
                s = ksmc.connect(target, PORT, timeout=60)
                break
            except OSError:  # our server is not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        s.settimeout(60)
        data = os.urandom(SIZE)
        ksmc.sendall(s, data)
        back = ksmc.recv_exactly(s, SIZE)
        conns.append({"target": target, **_kernel_link(s), "sent": _sha(data), "echoed": _sha(back)})
        socks.append(s)
    for s in socks:
        assert ksmc.recv_exactly(s, 1) == b"S"
    for s in socks:
        s.shutdown(socket.SHUT_WR)
        s.close()
    return {"conns": conns}


@pytest.mark.lab_guest
def test_guest_side() -> None:
    vm, share = os.environ["LAB_VM"], Path(os.environ["LAB_SHARE"])
    n = int(socket.inet_aton(os.environ["LAB_IP"])[3])
    _setup_vlans(n)
    if vm == "a":
        subprocess.run([sys.executable, "-m", "native.smcopt", "load"], check=True, cwd=lab.PROJECT, timeout=120)
        capture = start_capture(share, PORT)
        try:
            record = asyncio.run(_our_server())
        finally:
            stop_capture(capture)
    else:
        record = _kernel_client()
    (share / f"vlan-kernel-{vm}.json").write_text(json.dumps(record, indent=1))
