"""The P_Key of a device in the security context (#15 item 3): read from the device (pyverbs'
ibv_query_pkey, else sysfs; the soft devices report the one they put in the BTH), entry 0
as the kernel's SMC-R QPs use (``smc_ib_modify_qp_init``: pkey_index 0), and a link group
shared only by connections on the same P_Key."""

from __future__ import annotations

import asyncio
import errno
import os
import types
from dataclasses import replace

import pytest
from support.fabric import open_conn, pair
from support.stacks import addrs, run

from stack.core.config import SmcConfig
from stack.core.linkgroup import SecurityContext
from stack.runtime import DeviceSpec, Stack, StackConfig
from stack.runtime.security import device_pkey
from stack.verbs import api, pyverbs_provider
from stack.verbs.api import VerbsError
from stack.verbs.pyverbs_provider import PyverbsDevice, sysfs_pkey_table
from stack.wire import roce

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}


# ------------------------------------------------------------------ which entry, which P_Key


@pytest.mark.parametrize(
    "table, expected",
    [
        ([0xFFFF], (0xFFFF, 0)),  # rxe, the soft devices
        ([0x8001, 0xFFFF], (0x8001, 0)),  # entry 0, as the kernel, even when the default is further on
        ([0x7FFF], (0x7FFF, 0)),  # limited membership is still a P_Key
        ([0x0000, 0xFFFF], (None, 0)),  # an empty slot holds no P_Key
        ([0x8000], (None, 0)),  # full-membership bit only: invalid
        ([], (None, 0)),  # no table (a device without P_Keys)
    ],
)
def test_device_pkey_is_entry_zero_of_the_table(table, expected):
    assert device_pkey(table) == expected


# ------------------------------------------------------------------ sysfs


def _pkeys(root, device: str, values: dict[int, str], port: int = 1):
    folder = root / device / "ports" / str(port) / "pkeys"
    folder.mkdir(parents=True)
    for index, text in values.items():
        (folder / str(index)).write_text(text + "\n")
    return folder


def test_sysfs_table_in_index_order(tmp_path):
    _pkeys(tmp_path, "mlx5_0", {0: "0xffff", 1: "0x8001", 2: "0x0000", 10: "0x7fff", 3: "0x0000"})
    assert sysfs_pkey_table("mlx5_0", 1, tmp_path) == [0xFFFF, 0x8001, 0, 0, 0x7FFF]
    _pkeys(tmp_path, "rxe0", {0: "0xffff"})
    assert sysfs_pkey_table("rxe0", 1, tmp_path) == [0xFFFF]
    assert device_pkey(sysfs_pkey_table("rxe0", 1, tmp_path)) == (0xFFFF, 0)


@pytest.mark.parametrize("text", ["0x10000", "ffff-", "", "-0x1"])
def test_sysfs_value_that_is_no_pkey_is_a_clear_error(tmp_path, text):
    _pkeys(tmp_path, "rxe0", {0: "0xffff", 1: text})
    with pytest.raises(VerbsError) as e:
        sysfs_pkey_table("rxe0", 1, tmp_path)
    assert e.value.errno == errno.EINVAL
    assert "pkeys/1" in str(e.value) and "not a 16-bit P_Key" in str(e.value)


def test_sysfs_without_a_table_names_the_device_and_port(tmp_path):
    with pytest.raises(VerbsError) as e:
        sysfs_pkey_table("rxe9", 2, tmp_path)
    assert e.value.errno == errno.ENODEV and "rxe9 port 2: no P_Key table" in str(e.value)


# ------------------------------------------------------------------ pyverbs


class _PyverbsError(Exception):
    pass


def _fake_pyverbs_device(monkeypatch, tmp_path, query_pkey):
    """A PyverbsDevice over a stand-in context: ``query_pkey`` (None: an old pyverbs without
    it), a P_Key table of two entries, sysfs at ``tmp_path``."""
    errors = types.SimpleNamespace(PyverbsError=_PyverbsError, PyverbsRDMAError=_PyverbsError)
    pv = types.SimpleNamespace(error=errors)
    monkeypatch.setattr(pyverbs_provider, "_load", lambda: pv)
    monkeypatch.setattr(pyverbs_provider, "SYSFS_INFINIBAND", tmp_path)
    ctx = types.SimpleNamespace(query_port=lambda port: types.SimpleNamespace(pkey_tbl_len=2))
    if query_pkey is not None:
        ctx.query_pkey = query_pkey
    dev = PyverbsDevice.__new__(PyverbsDevice)
    dev._pv, dev._ctx, dev.name, dev.ports = pv, ctx, "hca0", [1]
    return dev


def test_pyverbs_reads_the_table_through_query_pkey(monkeypatch, tmp_path):
    asked = []

    def query_pkey(port, index):
        asked.append((port, index))
        return [0xFFFF, 0x8002][index]

    dev = _fake_pyverbs_device(monkeypatch, tmp_path, query_pkey)
    assert dev.pkey_table(1) == [0xFFFF, 0x8002]
    assert asked == [(1, 0), (1, 1)]


@pytest.mark.parametrize("why", ["missing", "fails"])
def test_pyverbs_falls_back_to_sysfs(monkeypatch, tmp_path, why):
    def failing(port, index):
        raise _PyverbsError(f"Failed to query pkey {index} of port {port}")

    dev = _fake_pyverbs_device(monkeypatch, tmp_path, None if why == "missing" else failing)
    _pkeys(tmp_path, "hca0", {0: "0x8003", 1: "0xffff"})
    assert dev.pkey_table(1) == [0x8003, 0xFFFF]


def test_a_device_without_pkeys_reports_an_empty_table():
    class NoPkeys(api.Device):
        name = "none"
        query_port = gid_table = alloc_pd = create_cq = poll_events = close = None

    assert NoPkeys().pkey_table(1) == []


# ------------------------------------------------------------------ the core: groups per P_Key


def _device_pkey(io, pkey: int | None) -> None:
    table = io.host.device_table
    table.all = [replace(d, pkey=pkey) for d in table.all]


def test_the_device_pkey_joins_the_connection_context():
    ns = SecurityContext(netns=4026531840)
    f, a, b = pair(SmcConfig(host="client", **SMALL), SmcConfig(host="server", **SMALL))
    for io in (a, b):
        _device_pkey(io, 0xFFFF)
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), f.now, security=ns)
    a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), f.now, security=ns)
    f.run(stop=lambda: a._app(1).established and b._app(1).established)
    for io in (a, b):
        assert io.host.conns[1].lgr.security == SecurityContext(netns=ns.netns, pkey=0xFFFF)
        assert io.host.snapshot()["lgrs"][0]["security"] == {"netns": ns.netns, "vlan": 0, "pkey": 0xFFFF}
        assert io.host.snapshot()["devices"][0]["pkey"] == 0xFFFF
    # a context that names its P_Key keeps it; none (a test double's) stays the stack's own
    assert b.host.directory.context_of(b.host.conns[1]).pkey == 0xFFFF
    b.host.directory.set_context(99, SecurityContext(netns=1, pkey=0x8001))
    assert b.host.directory.contexts[99].pkey == 0x8001
    b.host.directory.set_context(98, None)
    assert 98 not in b.host.directory.contexts


def test_connections_on_another_pkey_never_share_a_group():
    """The same namespace and VLAN, only the device's P_Key differs (as after a P_Key table
    change): the second connection gets a group of its own on both sides, the third, back on
    the first P_Key, joins the first group again."""
    ns = SecurityContext(netns=4026531840, vlan=100)
    f, a, b = pair(SmcConfig(host="client", **SMALL), SmcConfig(host="server", **SMALL))

    def open_on(cid: int, pkey: int) -> None:
        for io in (a, b):
            _device_pkey(io, pkey)
        f.connect_tcp(a, cid, b, cid)
        b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now, security=ns)
        a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now, security=ns)
        f.run(stop=lambda: all(io._app(cid).established or io._app(cid).fallback for io in (a, b)))

    open_on(1, 0xFFFF)
    open_on(2, 0x8001)
    open_on(3, 0xFFFF)
    for io in (a, b):
        conns = io.host.conns
        assert all(io.apps[c].established for c in (1, 2, 3))
        assert conns[1].lgr is not conns[2].lgr and conns[3].lgr is conns[1].lgr
        assert (conns[1].lgr.security.pkey, conns[2].lgr.security.pkey) == (0xFFFF, 0x8001)
    assert b.host.stats["lgr_not_shared_pkey"] == 1  # the server's choice: the client follows it
    assert b.host.conns[2].first_contact and not b.host.conns[3].first_contact


def test_no_context_no_pkey():
    """Connections without a context (no socket: test doubles) keep the stack's own, P_Key
    or not: they share a group as before."""
    f, a, b = pair(SmcConfig(host="client", **SMALL), SmcConfig(host="server", **SMALL))
    for io in (a, b):
        _device_pkey(io, 0xFFFF)
    open_conn(f, a, b, 1)
    open_conn(f, a, b, 2)
    for io in (a, b):
        assert io.host.conns[1].lgr is io.host.conns[2].lgr and io.host.conns[1].lgr.security.pkey is None


# ------------------------------------------------------------------ soft devices: what the BTH carries


@pytest.mark.parametrize("engine", ["python", "native"])
def test_soft_stacks_use_the_pkey_their_frames_carry(engine):
    """Two stacks on soft devices: each device reports one P_Key, 0xffff; every frame either
    sends carries exactly that P_Key in its BTH; the link group's context records it."""

    async def scenario():
        ca, sa = addrs()

        def cfg(host: str, addr: str) -> StackConfig:
            return StackConfig(SmcConfig(host=host, **SMALL), (DeviceSpec("soft", addr, addr, engine=engine),), tcp_option="inband")

        frames: list = []
        async with Stack(cfg("client", ca)) as a, Stack(cfg("server", sa)) as b:
            for s in (a, b):
                dev = s.rdma.devs[next(iter(s.rdma.devs))]
                assert dev.device.engine == engine
                assert dev.device.pkey_table(1) == [roce.DEFAULT_PKEY]
                assert (dev.info.pkey, dev.info.pkey_index) == (0xFFFF, 0)
                dev.device.add_tap(frames.extend, batch=True)

            async def echo(r, w):
                w.write(await r.read())
                w.close()

            await b.start_server(echo, sa, 5000)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            data = os.urandom(100_000)
            w.write(data)
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 30) == data
            assert w.get_extra_info("smc")["mode"] == "SMCR"
            groups = [(s.snapshot()["lgrs"], s.snapshot()["devices"]) for s in (a, b)]
            w.close()
            await w.wait_closed()
            for s in (a, b):
                s.rdma.devs[next(iter(s.rdma.devs))].device.flush_taps()
        return frames, groups

    frames, groups = run(scenario(), timeout=60)
    for lgrs, devices in groups:
        assert [g["security"]["pkey"] for g in lgrs] == [0xFFFF]
        assert [d["pkey"] for d in devices] == [0xFFFF]
    sent = [f for f in frames if f.direction == "tx"]
    assert len(sent) > 20
    assert {int.from_bytes(f.payload[2:4], "big") for f in sent} == {0xFFFF}  # BTH: P_Key at byte 2


def test_a_second_link_stays_on_the_pkey_of_the_group():
    """Two devices a side, the second on another P_Key: the group's second link never goes
    to it (it would leave the group's context); with both on one P_Key it does."""

    def links_after(second_pkey: int) -> list[tuple[str, int | None]]:
        f, a, b = pair(SmcConfig(host="client", **SMALL), SmcConfig(host="server", **SMALL), client_devices=2, server_devices=2)
        for io in (a, b):
            table = io.host.device_table
            table.all = [replace(d, pkey=0xFFFF if d.name == "fab0" else second_pkey) for d in table.all]
        ns = SecurityContext(netns=4026531840)
        f.connect_tcp(a, 1, b, 1)
        b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), f.now, security=ns)
        a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), f.now, security=ns)
        f.run(until=f.now + 5)
        assert a._app(1).established and b._app(1).established
        out = []
        for io in (a, b):
            lgr = io.host.conns[1].lgr
            assert lgr.security.pkey == 0xFFFF
            pkeys = {d.name: d.pkey for d in io.host.device_table.all}
            out += [(link.device, pkeys[link.device]) for link in lgr.usable_links()]
        return out

    same = links_after(0xFFFF)
    assert {dev for dev, _ in same} == {"fab0", "fab1"}  # the control: the second device is used
    other = links_after(0x8001)
    assert other and {pkey for _, pkey in other} == {0xFFFF}


def test_the_kernels_roce_frames_carry_the_pkey_the_soft_devices_report():
    """The lab's capture of the kernel's SMC-R (tests/lab/fixtures/kernel_interop_smcr.pcap:
    VM b, 10.2.0.2, is AF_SMC on rxe0): the BTH P_Key of every RoCE frame either host sent
    is 0xffff, the one our soft devices report and send."""
    from pathlib import Path

    raw = (Path(__file__).parents[1] / "lab" / "fixtures" / "kernel_interop_smcr.pcap").read_bytes()
    assert raw[:4] == b"\xd4\xc3\xb2\xa1"  # classic pcap, little-endian, Ethernet
    pkeys: dict[str, set[int]] = {}
    off = 24
    while off + 16 <= len(raw):
        incl = int.from_bytes(raw[off + 8 : off + 12], "little")
        frame, off = raw[off + 16 : off + 16 + incl], off + 16 + incl
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:  # IPv4 / UDP
            continue
        l4 = 14 + (frame[14] & 0x0F) * 4
        if int.from_bytes(frame[l4 + 2 : l4 + 4], "big") == roce.ROCE_V2_PORT:
            src = ".".join(str(x) for x in frame[26:30])
            pkeys.setdefault(src, set()).add(int.from_bytes(frame[l4 + 10 : l4 + 12], "big"))  # BTH byte 2
    assert pkeys == {"10.2.0.1": {0xFFFF}, "10.2.0.2": {0xFFFF}}
    assert pkeys["10.2.0.2"] == {roce.DEFAULT_PKEY}
