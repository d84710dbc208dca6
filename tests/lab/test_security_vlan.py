"""Real VLANs and the device's P_Key in the security context (#15 item 3), between two VMs.

Each VM loads 8021q and puts two VLAN interfaces on eth0: ``eth0.100`` (10.3.100.N/24) and
``eth0.200`` (10.3.200.N/24), N = 1 for a, 2 for b. Both run our stack on ``rxe0`` (pyverbs),
the capability signalled in-band. VM b serves an echo on all addresses; VM a opens four
connections, one after the other: two to 10.3.100.2, one to 10.3.200.2 and one to 10.2.0.2
(eth0 itself, no VLAN), each echoing 256 KiB. Every connection is open when each side takes
its snapshot. Each side writes ``vlan-<vm>.json`` to its share; VM a also captures eth0.

What the host asserts, for both sides: the two connections on VLAN 100 share one link group,
VLAN 200 and the untagged one each get their own (three groups, each recording the VLAN id
the kernel gave its interface: ``ip -d link``); the groups pair up the same way on the two
sides; every byte came back; the
P_Key in each group's context is the one rxe0's sysfs table holds at index 0 (0xffff) and
every RoCE frame's BTH carries it. Each group's links run on the GID of its VLAN's interface,
as a kernel's (``smc_ib_determine_gid``): the link's local GID is ::ffff:10.3.<vid>.N (eth0's
::ffff:10.2.0.N untagged), its peer's the peer's address on the same VLAN, the GID table
rxe0 showed each side names those addresses on eth0.100 and eth0.200, and on the wire every
RoCEv2 frame of a VLAN's group carries that VLAN's tag (100, 200; none for eth0), like the
CLC handshake before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import lab
import pytest

VLANS = (100, 200)
PORT = 5300
SIZE = 256 * 1024
PLAN = (100, 100, 200, 0)  # VM a's connections, by the VLAN of their route (0: eth0 itself)
ROCE_PORT = 4791


def _addr(vid: int, n: int) -> str:
    """VM n's address on VLAN ``vid`` (0: eth0 itself)."""
    return f"10.3.{vid}.{n}" if vid else f"10.2.0.{n}"


def _peer_addr(vid: int) -> str:
    return _addr(vid, 2)


# ------------------------------------------------------------------ host side


def _frames(pcap: Path) -> list[tuple[int | None, str, int, int, bytes, str, str]]:
    """(VLAN id or None, protocol, source port, destination port, payload, source address,
    destination address) of each IPv4 TCP/UDP frame of a classic pcap (Ethernet, at most
    one 802.1Q tag)."""
    raw = pcap.read_bytes()
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(raw[:4])
    assert order, f"{pcap}: not a classic pcap"
    out, off = [], 24
    while off + 16 <= len(raw):
        incl = struct.unpack_from(order + "I", raw, off + 8)[0]
        frame = raw[off + 16 : off + 16 + incl]
        off += 16 + incl
        vid, etype, l3 = None, frame[12:14], 14
        if etype == b"\x81\x00":
            vid, etype, l3 = struct.unpack_from(">H", frame, 14)[0] & 0xFFF, frame[16:18], 18
        if etype != b"\x08\x00" or len(frame) < l3 + 20:
            continue
        ihl, proto = (frame[l3] & 0x0F) * 4, frame[l3 + 9]
        l4 = l3 + ihl
        src, dst = socket.inet_ntoa(frame[l3 + 12 : l3 + 16]), socket.inet_ntoa(frame[l3 + 16 : l3 + 20])
        if proto == 17:
            sport, dport = struct.unpack_from(">HH", frame, l4)
            out.append((vid, "udp", sport, dport, frame[l4 + 8 :], src, dst))
        elif proto == 6:
            sport, dport = struct.unpack_from(">HH", frame, l4)
            out.append((vid, "tcp", sport, dport, frame[l4 + (frame[l4 + 12] >> 4) * 4 :], src, dst))
    return out


def _groups(side: dict) -> dict[str, str]:
    """Connection (the client's address and port) -> link group id, on one side."""
    return {c["client"]: c["lgr"] for c in side["conns"]}


@pytest.mark.lab
def test_vlans_and_the_pkey_keep_link_groups_apart() -> None:
    a, b = lab.pytest_in_pair([str(Path(__file__).relative_to(lab.PROJECT)), "-v"], timeout=240)
    client = json.loads((a.share / "vlan-a.json").read_text())
    server = json.loads((b.share / "vlan-b.json").read_text())

    for side in (client, server):
        # the VLAN ids the kernel gave the interfaces, and the P_Key rxe0's table holds
        assert side["kernel_vlans"] == {"eth0.100": 100, "eth0.200": 200}
        assert side["sysfs_pkey0"] == "0xffff"
        assert side["device"] == {"pkey": 0xFFFF, "pkey_index": 0, "table": [0xFFFF]}
        by_vlan: dict[int, set[str]] = {}
        for c in side["conns"]:
            assert c["mode"] == "SMCR", c
            by_vlan.setdefault(c["vlan"], set()).add(c["lgr"])
        assert sorted(c["vlan"] for c in side["conns"]) == sorted(PLAN)
        # one group per VLAN, never shared across VLANs
        assert all(len(ids) == 1 for ids in by_vlan.values()), by_vlan
        ids = [next(iter(by_vlan[v])) for v in (100, 200, 0)]
        assert len(set(ids)) == 3, by_vlan
        lgrs = {g["id"]: g for g in side["lgrs"]}
        assert set(lgrs) == set(ids)
        n, peer_n = (1, 2) if side is client else (2, 1)
        for vid, lgr_id in zip((100, 200, 0), ids):
            g = lgrs[lgr_id]
            assert g["security"]["vlan"] == vid and g["security"]["pkey"] == int(side["sysfs_pkey0"], 16), g
            assert g["conns"] == PLAN.count(vid)
            # the group's links on the GID of its VLAN's interface, both ends (smc_ib_determine_gid)
            assert {(lk["gid"], lk["peer_gid"]) for lk in g["links"]} == {(f"::ffff:{_addr(vid, n)}", f"::ffff:{_addr(vid, peer_n)}")}, g
        # the GIDs the device gave the core, one per VLAN, are the interfaces' addresses in rxe0's table
        assert side["vlan_gids"] == {str(v): f"::ffff:{_addr(v, n)}" for v in (0, 100, 200)}
        assert {gid: side["gid_table"][gid] for gid in side["vlan_gids"].values()} == {
            f"::ffff:{_addr(0, n)}": "eth0", f"::ffff:{_addr(100, n)}": "eth0.100", f"::ffff:{_addr(200, n)}": "eth0.200"}  # fmt: skip
        assert len({g["security"]["netns"] for g in side["lgrs"]}) == 1  # one namespace: only the VLAN differs
    # the groups pair up the same way on both sides
    cg, sg = _groups(client), _groups(server)
    assert set(cg) == set(sg)
    pairing = {(cg[k], sg[k]) for k in cg}
    assert len(pairing) == 3 and len({x for x, _ in pairing}) == len({y for _, y in pairing}) == 3
    # no group was even a candidate for another VLAN: each VLAN's Proposal carries the GID of
    # its own interface, so the groups' peers differ before the contexts are compared (with
    # one GID per device the server refused 3 times here: lgr_not_shared_vlan)
    assert server["stats"] == {}, server["stats"]
    # every byte came back
    for c in client["conns"]:
        assert c["sent"] == c["echoed"]
    assert sorted(c["sent"] for c in client["conns"]) == sorted(c["received"] for c in server["conns"])

    frames = _frames(a.share / "eth0.pcap")
    roce = [f for f in frames if f[1] == "udp" and f[3] == ROCE_PORT]
    assert len(roce) > 50
    # the BTH P_Key (bytes 2-3) of every RoCE frame, both directions: the device's
    assert {int.from_bytes(f[4][2:4], "big") for f in roce} == {int(client["sysfs_pkey0"], 16)}
    # the CLC handshakes ran over the real VLANs (tagged on the wire) ...
    clc_tags = {f[0] for f in frames if f[1] == "tcp" and PORT in (f[2], f[3])}
    assert clc_tags == {100, 200, None}
    # ... and so did each group's RoCEv2 frames, both directions: a VLAN's tagged with it,
    # between the two VLAN interfaces' addresses; eth0's untagged
    tags = {f[0] for f in roce}
    assert tags == {100, 200, None}, tags
    for vid, _, _, _, _, src, dst in roce:
        vlan = _vlan_of(src)
        assert _vlan_of(dst) == vlan and vid == (vlan or None), (vid, src, dst)
        assert {src, dst} == {_addr(vlan, 1), _addr(vlan, 2)}


# ------------------------------------------------------------------ guest side


def _sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def _setup_vlans(n: int) -> dict[str, int]:
    """eth0.100 and eth0.200 with 10.3.<vid>.n/24; the VLAN id of each as the kernel reports it."""
    _sh("modprobe", "8021q")
    ids = {}
    for vid in VLANS:
        name = f"eth0.{vid}"
        _sh("ip", "link", "add", "link", "eth0", "name", name, "type", "vlan", "id", str(vid))
        _sh("ip", "addr", "add", f"10.3.{vid}.{n}/24", "dev", name)
        _sh("ip", "link", "set", name, "up")
        ids[name] = json.loads(_sh("ip", "-j", "-d", "link", "show", "dev", name))[0]["linkinfo"]["info_data"]["id"]
    return ids


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config(name: str):
    from stack import DeviceSpec, SmcConfig, StackConfig

    return StackConfig(SmcConfig(host=name), (DeviceSpec("pyverbs", "rxe0"),), tcp_option="inband")


def _device(host) -> dict:
    dev = host.rdma.devs["rxe0"]
    return {"pkey": dev.info.pkey, "pkey_index": dev.info.pkey_index, "table": dev.device.pkey_table(1)}


def _vlan_of(addr: str) -> int:
    return int(addr.split(".")[2]) if addr.startswith("10.3.") else 0


def _gid_text(gid: bytes) -> str:
    return f"::ffff:{socket.inet_ntoa(gid[12:])}" if gid[:12] == bytes(10) + b"\xff\xff" else gid.hex()


def _record(host, conns: list[dict]) -> dict:
    snap = host.snapshot()
    dev = host.rdma.devs["rxe0"]
    links = lambda g: [{"gid": lk["gid"], "peer_gid": lk["peer_gid"]} for lk in g["links"]]  # noqa: E731
    return {
        "conns": conns,
        "lgrs": [{"id": g["id"], "security": g["security"], "conns": g["conns"], "links": links(g)} for g in snap["lgrs"]],
        "stats": {k: v for k, v in snap["stats"].items() if k.startswith("lgr_not_shared")},
        "device": _device(host),
        # the GID per VLAN the runtime read, and rxe0's GID table (GID -> net device) it read it from
        "vlan_gids": {str(v): _gid_text(g) for v, g in dev.info.vlan_gids or ()},
        "gid_table": {_gid_text(e.gid): e.netdev for e in dev.device.gid_table(1) if e.type == "roce_v2"},
    }


async def _server() -> dict:
    from stack import Stack

    echoed, released, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    conns: list[dict] = []
    closed = []

    async def handle(reader, writer) -> None:
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        data = await asyncio.wait_for(reader.readexactly(SIZE), 120)
        writer.write(data)
        await writer.drain()
        info = writer.get_extra_info("smc") or {}
        conns.append({"client": f"{peer[0]}:{peer[1]}", "vlan": _vlan_of(local[0]), "lgr": info.get("lgr"),
                      "mode": info.get("mode"), "received": _sha(data)})  # fmt: skip
        if len(conns) == len(PLAN):
            echoed.set()
        await released.wait()  # every connection stays open until the snapshot is taken
        writer.write(b"S")
        await writer.drain()
        await asyncio.wait_for(reader.read(), 60)
        writer.close()
        closed.append(peer)
        if len(closed) == len(PLAN):
            finished.set()

    async with Stack(_config("vlan-server")) as host:
        server = await host.start_server(handle, "0.0.0.0", PORT)
        await asyncio.wait_for(echoed.wait(), 180)
        record = _record(host, conns)
        released.set()
        await asyncio.wait_for(finished.wait(), 60)
        server.close()
    return record


async def _client() -> dict:
    from stack import Stack

    async def connect(host, addr: str):
        deadline = time.monotonic() + 120
        while True:
            try:
                return await host.open_connection(addr, PORT)
            except OSError:  # the server is not listening yet, or the VLAN's neighbour not resolved
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async with Stack(_config("vlan-client")) as host:
        open_conns, conns = [], []
        for vid in PLAN:
            reader, writer = await connect(host, _peer_addr(vid))
            data = os.urandom(SIZE)
            writer.write(data)
            await writer.drain()
            back = await asyncio.wait_for(reader.readexactly(SIZE), 120)
            local = writer.get_extra_info("sockname")
            info = writer.get_extra_info("smc") or {}
            conns.append({"client": f"{local[0]}:{local[1]}", "vlan": _vlan_of(local[0]), "lgr": info.get("lgr"),
                          "mode": info.get("mode"), "sent": _sha(data), "echoed": _sha(back)})  # fmt: skip
            open_conns.append((reader, writer))
        record = _record(host, conns)
        for reader, _ in open_conns:
            assert await asyncio.wait_for(reader.readexactly(1), 60) == b"S"
        for _, writer in open_conns:
            writer.write_eof()
            writer.close()
            await writer.wait_closed()
    return record


def start_capture(share: Path, port: int) -> subprocess.Popen:
    """tcpdump on eth0 into ``share``/eth0.pcap: RoCEv2 and TCP ``port``, tagged or not."""
    err = share / "tcpdump.err"
    capture = subprocess.Popen(
        ["tcpdump", "-i", "eth0", "-s", "256", "-U", "--immediate-mode", "-w", str(share / "eth0.pcap"),
         # untagged first: after "vlan" every offset of the expression is shifted by the tag
         f"udp port {ROCE_PORT} or tcp port {port} or (vlan and (udp port {ROCE_PORT} or tcp port {port}))"],
        stdout=subprocess.DEVNULL, stderr=err.open("w"),
    )  # fmt: skip
    for _ in range(600):  # (under a loaded host, tcpdump in a TCG guest can take many seconds)
        if "listening" in err.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"tcpdump did not start listening within 60 s: {err.read_text()[-500:]}")
    time.sleep(0.5)  # its socket is open when it says so; a moment for the filter to be in place
    return capture


def stop_capture(capture: subprocess.Popen) -> None:
    # tcpdump stops reading at SIGINT: what the kernel still held for it would be lost (a
    # loaded run lost the last, untagged connection's CLC that way), so let it catch up
    time.sleep(2.0)
    capture.send_signal(signal.SIGINT)
    capture.wait(30)


@pytest.mark.lab_guest
def test_guest_side() -> None:
    vm, share = os.environ["LAB_VM"], Path(os.environ["LAB_SHARE"])
    n = int(socket.inet_aton(os.environ["LAB_IP"])[3])
    kernel_vlans = _setup_vlans(n)
    capture = start_capture(share, PORT) if vm == "a" else None
    try:
        record = asyncio.run(_client() if vm == "a" else _server())
    finally:
        if capture is not None:
            stop_capture(capture)
    record["kernel_vlans"] = kernel_vlans
    record["sysfs_pkey0"] = Path("/sys/class/infiniband/rxe0/ports/1/pkeys/0").read_text().strip()
    (share / f"vlan-{vm}.json").write_text(json.dumps(record, indent=1))
    # this side's own view: one group per VLAN, the data intact, the P_Key of the device
    lgr_of = {c["vlan"]: {x["lgr"] for x in record["conns"] if x["vlan"] == c["vlan"]} for c in record["conns"]}
    assert all(len(v) == 1 for v in lgr_of.values()) and len({next(iter(v)) for v in lgr_of.values()}) == 3, lgr_of
    assert {g["security"]["vlan"] for g in record["lgrs"]} == {100, 200, 0}
    assert {g["security"]["pkey"] for g in record["lgrs"]} == {int(record["sysfs_pkey0"], 16)}
