"""The runtime's GID per VLAN, from a device's GID table (#15): the first RoCEv2
IPv4-mapped GID whose net device is the VLAN's interface, for VLAN 0 one whose net device
is no VLAN's (the kernel's ``smc_ib_determine_gid``); a QP's path takes the index of the
GID its link group uses.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from stack.runtime import rdma as rdma_mod
from stack.runtime.rdma import DeviceSpec, RdmaDriver
from stack.runtime.security import vlan_gids
from stack.verbs.api import GidEntry


def _gid(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + bytes(int(x) for x in ip.split("."))


LL = bytes.fromhex("fe800000000000000250 56fffe000001".replace(" ", ""))
# what rxe0 on a VM with eth0.100 and eth0.200 shows (both GID types per address, link-local first)
TABLE = [
    GidEntry(0, LL, "roce_v1", 1, "eth0"),
    GidEntry(1, LL, "roce_v2", 1, "eth0"),
    GidEntry(2, _gid("10.2.0.1"), "roce_v1", 1, "eth0"),
    GidEntry(3, _gid("10.2.0.1"), "roce_v2", 1, "eth0"),
    GidEntry(4, LL, "roce_v2", 1, "eth0.100"),
    GidEntry(5, _gid("10.3.100.1"), "roce_v1", 1, "eth0.100"),
    GidEntry(6, _gid("10.3.100.1"), "roce_v2", 1, "eth0.100"),
    GidEntry(7, _gid("10.3.200.1"), "roce_v2", 1, "eth0.200"),
]
VLANS = {"eth0.100": 100, "eth0.200": 200}


def test_each_vlan_gets_the_gid_of_its_interface():
    assert vlan_gids(TABLE, VLANS) == ((0, _gid("10.2.0.1"), 3), (100, _gid("10.3.100.1"), 6), (200, _gid("10.3.200.1"), 7))


def test_a_vlan_without_an_interface_on_the_device_has_no_gid():
    by_vlan = {v: g for v, g, _ in vlan_gids(TABLE, VLANS)}
    assert 300 not in by_vlan
    # eth0.200 not known as a VLAN (8021q gone): its entry counts as the untagged LAN's, after eth0's
    assert {v for v, _, _ in vlan_gids(TABLE, {"eth0.100": 100})} == {0, 100}


def test_the_first_entry_in_table_order_wins():
    table = [GidEntry(9, _gid("10.3.100.9"), "roce_v2", 1, "eth0.100")] + TABLE
    assert dict((v, i) for v, _, i in vlan_gids(table, VLANS))[100] == 6


def test_a_device_that_names_no_net_devices_has_one_gid_for_every_vlan():
    soft = [GidEntry(0, LL, "roce_v2"), GidEntry(1, _gid("127.1.0.1"), "roce_v2")]
    assert vlan_gids(soft, VLANS) is None


# ---------------------------------------------------------------- the driver: DeviceInfo and the QP's path


class _Port:
    state, active_mtu, mac = 4, 3, bytes(6)


class _Qp:
    qp_num = 17

    def __init__(self):
        self.rtr = None

    def to_init(self, access, pkey_index=0):
        pass

    def post_recv(self, wrs):
        pass

    def to_rtr(self, path):
        self.rtr = path

    def destroy(self):
        pass


class _Mr:
    lkey = rkey = addr = 1
    buf = memoryview(bytearray(1))


class _Pd:
    def __init__(self):
        self.qps = []

    def create_rc_qp(self, *a):
        self.qps.append(_Qp())
        return self.qps[-1]

    def reg_mr(self, *a, **kw):
        return _Mr()


class _Cq:
    def fileno(self):
        return None


class _Device:
    name = "rxe0"

    def __init__(self):
        self.pd = _Pd()

    def query_port(self, port):
        return _Port()

    def gid_table(self, port):
        return TABLE

    def roce_v2_gid(self, port):
        return next(e for e in TABLE if e.type == "roce_v2" and e.gid[:12] == bytes(10) + b"\xff\xff")

    def pkey_table(self, port):
        return [0xFFFF]

    def alloc_pd(self):
        return self.pd

    def create_cq(self, depth):
        return _Cq()

    def has(self, capability):
        return False

    def poll_events(self):
        return []

    def close(self):
        pass


class _Provider:
    def open_device(self, name):
        return _Device()


def test_the_driver_gives_the_core_a_gid_per_vlan_and_the_qp_its_index(monkeypatch):
    monkeypatch.setattr(rdma_mod, "open_provider", lambda name, **kw: _Provider())
    monkeypatch.setattr(rdma_mod, "netdev_vlans", lambda: dict(VLANS))
    loop = asyncio.new_event_loop()
    try:
        driver = RdmaDriver(loop)
        info = driver.open(DeviceSpec("pyverbs", "rxe0"))
        assert info.gid == _gid("10.2.0.1")
        assert info.vlan_gids == ((0, _gid("10.2.0.1")), (100, _gid("10.3.100.1")), (200, _gid("10.3.200.1")))
        q100 = driver.create_qp("rxe0", _gid("10.3.100.1"))
        q0 = driver.create_qp("rxe0")
        assert (q100.gid, q0.gid) == (_gid("10.3.100.1"), _gid("10.2.0.1"))
        driver.qp_to_rtr(q100.handle, 5, 0, _gid("10.3.100.2"), 3)
        driver.qp_to_rtr(q0.handle, 6, 0, _gid("10.2.0.2"), 3)
        assert [qp.rtr.sgid_index for qp in driver.devs["rxe0"].pd.qps] == [6, 3]  # each QP's source GID, by index
        with pytest.raises(OSError) as e:  # a GID the device does not have: a named error, no QP
            driver.create_qp("rxe0", _gid("10.3.44.1"))
        assert e.value.errno == errno.EADDRNOTAVAIL and "rxe0 has no GID ::ffff:10.3.44.1" in str(e.value)
        assert len(driver.devs["rxe0"].pd.qps) == 2
        driver.close()
    finally:
        loop.close()


def test_a_vlan_made_or_removed_while_the_stack_runs_changes_the_gids(monkeypatch):
    """The GID table is read again (about every second, and on a GID_CHANGE event): a new
    VLAN interface's GID is offered, a removed one's no longer; a QP made before keeps its
    source GID index; the core hears of it only when the GIDs per VLAN changed."""
    monkeypatch.setattr(rdma_mod, "open_provider", lambda name, **kw: _Provider())
    monkeypatch.setattr(rdma_mod, "netdev_vlans", lambda: dict(VLANS))
    table = list(TABLE)
    monkeypatch.setattr(_Device, "gid_table", lambda self, port: table)
    loop = asyncio.new_event_loop()
    try:
        driver = RdmaDriver(loop)
        heard = []
        driver.on_device_event = lambda name, ev: heard.append((name, ev, driver.devs[name].info.vlan_gids))
        driver.open(DeviceSpec("pyverbs", "rxe0"))
        dev = driver.devs["rxe0"]
        old = driver.create_qp("rxe0", _gid("10.3.200.1"))
        assert driver.check_gids(dev) is False and heard == []  # nothing changed
        table[:] = [e for e in TABLE if e.netdev != "eth0.200"] + [GidEntry(8, _gid("10.3.44.1"), "roce_v2", 1, "eth0.300")]
        monkeypatch.setattr(rdma_mod, "netdev_vlans", lambda: {"eth0.100": 100, "eth0.300": 300})
        assert driver.check_gids(dev) is True
        assert heard == [("rxe0", rdma_mod.EventType.GID_CHANGE, ((0, _gid("10.2.0.1")), (100, _gid("10.3.100.1")), (300, _gid("10.3.44.1"))))]
        assert driver.create_qp("rxe0", _gid("10.3.44.1")).gid == _gid("10.3.44.1")
        with pytest.raises(OSError):
            driver.create_qp("rxe0", _gid("10.3.200.1"))
        driver.qp_to_rtr(old.handle, 5, 0, _gid("10.3.200.2"), 3)
        assert dev.pd.qps[0].rtr.sgid_index == 7
        # the event loop reads the table every GID_POLL_EVERY looks
        table.append(GidEntry(9, _gid("10.3.100.9"), "roce_v2", 1, "eth0.100"))  # a second address: VLAN 100 keeps its first
        table[:] = [e for e in table if e.netdev != "eth0.300"]
        for _ in range(rdma_mod.GID_POLL_EVERY):
            driver._events_loop(dev)
        assert len(heard) == 2 and heard[-1][2] == ((0, _gid("10.2.0.1")), (100, _gid("10.3.100.1")))
        driver.close()
    finally:
        loop.close()


# ---------------------------------------------------------------- pyverbs: the net device of each entry


def _fake_pyverbs(monkeypatch, tmp_path, entries):
    """A PyverbsDevice over a stand-in context whose GID table is ``entries`` (index, GID
    text, type code, ndev_ifindex); None: an old kernel without the ioctl GID query."""
    from types import SimpleNamespace

    from stack.verbs import pyverbs_provider
    from stack.verbs.pyverbs_provider import PyverbsDevice

    class PyverbsError(Exception):
        pass

    e = SimpleNamespace(IBV_LINK_LAYER_INFINIBAND=1, IBV_GID_TYPE_SYSFS_ROCE_V2=1)
    pv = SimpleNamespace(e=e, error=SimpleNamespace(PyverbsError=PyverbsError, PyverbsRDMAError=PyverbsError))
    monkeypatch.setattr(pyverbs_provider, "_load", lambda: pv)
    monkeypatch.setattr(pyverbs_provider, "SYSFS_INFINIBAND", tmp_path)
    gids = {i: g for i, g, _, _ in entries}

    def query_gid_table(n):
        if entries is None:
            raise PyverbsError("no ioctl")
        return [SimpleNamespace(gid_index=i, gid_type=t, ndev_ifindex=x, port_num=1) for i, _, t, x in entries]

    def query_gid(port, index):
        if index not in gids:
            raise PyverbsError("unset")
        return gids[index]

    ctx = SimpleNamespace(query_port=lambda port: SimpleNamespace(gid_tbl_len=4, link_layer=2), query_gid_table=query_gid_table,
                          query_gid=query_gid, query_gid_type=lambda port, index: 1)  # fmt: skip
    dev = PyverbsDevice.__new__(PyverbsDevice)
    dev._pv, dev._ctx, dev.name, dev.ports = pv, ctx, "rxe0", [1]
    return dev


def _ndev(tmp_path, index: int, name: str) -> None:
    folder = tmp_path / "rxe0" / "ports" / "1" / "gid_attrs" / "ndevs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(index)).write_text(name + "\n")


def test_pyverbs_names_each_gids_net_device_by_ifindex_else_sysfs(monkeypatch, tmp_path):
    lo = socket.if_nametoindex("lo")
    entries = [(1, "0000:0000:0000:0000:0000:ffff:7f00:0001", 2, lo), (6, "0000:0000:0000:0000:0000:ffff:0a03:6401", 2, 0)]
    dev = _fake_pyverbs(monkeypatch, tmp_path, entries)
    _ndev(tmp_path, 6, "eth0.100")  # no ifindex given: sysfs names it
    table = dev.gid_table(1)
    assert [(g.index, g.gid, g.type, g.netdev) for g in table] == [(1, _gid("127.0.0.1"), "roce_v2", "lo"), (6, _gid("10.3.100.1"), "roce_v2", "eth0.100")]
    assert vlan_gids(table, {"eth0.100": 100}) == ((0, _gid("127.0.0.1"), 1), (100, _gid("10.3.100.1"), 6))


def test_pyverbs_without_the_gid_table_query_reads_the_net_devices_from_sysfs(monkeypatch, tmp_path):
    dev = _fake_pyverbs(monkeypatch, tmp_path, [(0, "0000:0000:0000:0000:0000:ffff:0a02:0001", 2, 0), (2, "0000:0000:0000:0000:0000:ffff:0a03:c801", 2, 0)])
    dev._ctx.query_gid_table = lambda n: (_ for _ in ()).throw(dev._pv.error.PyverbsError("old kernel"))
    _ndev(tmp_path, 0, "eth0")
    _ndev(tmp_path, 2, "eth0.200")
    assert [(g.index, g.netdev) for g in dev.gid_table(1)] == [(0, "eth0"), (2, "eth0.200")]
