"""A VLAN's link group on the VLAN's GID (#15): a connection whose security context says
VLAN v uses the device's GID of the VLAN-v interface, as the kernel's
``smc_ib_determine_gid(smcibdev, ibport, ini->vlan_id, ...)`` picks it: in the Proposal
(v1 GID, v2 RoCE GID), the Accept and Confirm, the link's QP (its source GID) and the
link snapshot. A VLAN the device has no GID on finds no device: the client proposes
nothing (NOSMCDEV), a server declines (NOSMCRDEV for v2, NOSMCDEV for v1), as
``smc_pnet_determine_gid`` failing does in the kernel.
"""

from __future__ import annotations

import dataclasses

import pytest
from support.fabric import pair

from stack.core.config import SmcConfig
from stack.core.directory import Devices
from stack.core.linkgroup import SecurityContext
from stack.core.ports import DeviceInfo
from stack.wire import clc
from stack.wire.codes import DECL, LgrType

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}
NETNS = 4026531840


def _gid(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + bytes(int(x) for x in ip.split("."))


def _vlan_table(n: int, vlans=(100, 200)) -> tuple[tuple[int, bytes], ...]:
    """Host n's GIDs: eth0's (10.2.0.n) and one per VLAN (10.3.<vid % 256>.n)."""
    return ((0, _gid(f"10.2.0.{n}")),) + tuple((v, _gid(f"10.3.{v % 256}.{n}")) for v in vlans)


def _on_vlans(io, n: int, vlans=(100, 200), device: int = 0) -> None:
    """Give the host's device ``device`` a GID per VLAN, as a pyverbs device on rxe has them."""
    table = io.host.device_table
    table.all = [dataclasses.replace(d, gid=_gid(f"10.2.{i}.{n}"), vlan_gids=_vlan_table(n, vlans) if i == device else d.vlan_gids)
                 if i == device else d for i, d in enumerate(table.all)]  # fmt: skip


def _ctx(vlan: int) -> SecurityContext:
    return SecurityContext(netns=NETNS, vlan=vlan)


def hosts(versions=frozenset({1, 2}), **kw):
    return pair(SmcConfig(host="client", versions=versions, **SMALL), SmcConfig(host="server", versions=versions, **SMALL), **kw)


def open_on(f, a, b, cid: int, vlan_a: int, vlan_b: int | None = None) -> None:
    f.connect_tcp(a, cid, b, cid)
    b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now, security=_ctx(vlan_a if vlan_b is None else vlan_b))
    a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now, security=_ctx(vlan_a))
    f.run(stop=lambda: all(io._app(cid).established or io._app(cid).fallback or io._app(cid).failed for io in (a, b)))


def _clc(io, cid: int, direction: str, kind: str) -> dict:
    return next(e.fields for e in io.events if e.kind == "clc.msg" and e.conn == cid and e.fields["dir"] == direction
                and e.fields["type"] == kind)  # fmt: skip


# ---------------------------------------------------------------- the device table


def test_a_vlan_sees_the_device_with_the_gid_of_its_interface():
    dev = DeviceInfo("rxe0", _gid("10.2.0.1"), bytes(6), 3, vlan_gids=_vlan_table(1))
    assert dev.on_vlan(0) is dev
    assert dev.on_vlan(100).gid == _gid("10.3.100.1") and dev.on_vlan(100).name == "rxe0"
    assert dev.on_vlan(200).gid == _gid("10.3.200.1")
    assert dev.on_vlan(300) is None  # no GID on VLAN 300: no device for it
    soft = DeviceInfo("127.1.0.1", _gid("127.1.0.1"), bytes(6), 3)  # no GID tied to a net device
    assert soft.on_vlan(300) is soft


def test_the_first_device_with_a_gid_on_the_vlan_is_taken():
    """As the kernel's device loop: a device without a GID on the VLAN is passed over."""
    first = DeviceInfo("rxe0", _gid("10.2.0.1"), bytes(6), 3, vlan_gids=((0, _gid("10.2.0.1")),))
    second = DeviceInfo("rxe1", _gid("10.2.1.1"), bytes(6), 3, vlan_gids=_vlan_table(1))
    devices = Devices([first, second])
    assert devices.device(0).name == "rxe0"
    assert devices.device(100).name == "rxe1" and devices.device(100).gid == _gid("10.3.100.1")
    assert devices.device(300) is None
    assert devices.alt_device({"rxe1"}, 100) is None and devices.alt_device({"rxe0"}, 100).gid == _gid("10.3.100.1")
    assert devices.device_info("rxe0", 100) is None and devices.device_info("rxe0").gid == _gid("10.2.0.1")


# ---------------------------------------------------------------- the handshake and the link


@pytest.mark.parametrize("version", [1, 2])
def test_a_vlan_connection_runs_its_link_on_the_vlans_gid(version):
    f, a, b = hosts(frozenset({version}))
    _on_vlans(a, 1)
    _on_vlans(b, 2)
    open_on(f, a, b, 1, 100)
    open_on(f, a, b, 2, 0)
    open_on(f, a, b, 3, 200)
    gids = {1: (_gid("10.3.100.1"), _gid("10.3.100.2")), 2: (_gid("10.2.0.1"), _gid("10.2.0.2")), 3: (_gid("10.3.200.1"), _gid("10.3.200.2"))}
    for cid, (ours, theirs) in gids.items():
        for io, local, peer in ((a, ours, theirs), (b, theirs, ours)):
            conn = io.host.conns[cid]
            assert io.apps[cid].established and conn.lgr.security.vlan == {1: 100, 2: 0, 3: 200}[cid]
            assert conn.link.qp.gid == local and conn.link.peer_gid == peer
            snap = next(g for g in io.host.snapshot()["lgrs"] if g["id"] == conn.lgr.name)
            assert {lk["gid"] for lk in snap["links"]} == {f"::ffff:{'.'.join(str(x) for x in local[12:])}"}  # an asymmetric second link too
        # what went on the wire: the Proposal's GID, the Accept's and the Confirm's
        proposal = clc.decode(_clc(a, cid, "tx", "Proposal")["raw"])
        assert (proposal.v2.roce_gid if version == 2 else proposal.gid) == ours
        assert clc.decode(_clc(b, cid, "tx", "Accept")["raw"]).gid == theirs
        assert clc.decode(_clc(a, cid, "tx", "Confirm")["raw"]).gid == ours
    assert len({a.host.conns[c].lgr.lgr_id for c in gids}) == 3  # one group per VLAN
    assert a.host.snapshot()["devices"][0]["vlan_gids"] == {"0": "::ffff:10.2.0.1", "100": "::ffff:10.3.100.1", "200": "::ffff:10.3.200.1"}


def test_a_client_on_a_vlan_without_a_gid_proposes_nothing():
    """smc_find_proposal_devices finds no device (smc_ib_determine_gid fails for the VLAN):
    the client falls back with NOSMCDEV before any CLC message."""
    f, a, b = hosts()
    _on_vlans(a, 1)
    _on_vlans(b, 2, vlans=(100, 200, 300))
    open_on(f, a, b, 1, 300)
    assert a.apps[1].fallback and a.host.conns[1].fallback_reason == DECL.NOSMCDEV
    assert not [e for e in a.events if e.kind == "clc.msg" and e.fields["type"] == "Proposal"]
    assert not a.host.lgrs


@pytest.mark.parametrize(("version", "reason"), [(2, DECL.NOSMCRDEV), (1, DECL.NOSMCDEV)])
def test_a_server_on_a_vlan_without_a_gid_declines(version, reason):
    """smc_listen_find_device: no RoCE device for the VLAN: NOSMCRDEV after a v2 UEID
    matched (smc_find_rdma_v2_device_serv), NOSMCDEV for v1 (smc_find_rdma_v1_device_serv)."""
    f, a, b = hosts(frozenset({version}))
    _on_vlans(a, 1, vlans=(100, 200, 300))
    _on_vlans(b, 2)
    open_on(f, a, b, 1, 300)
    assert b.apps[1].fallback and b.host.conns[1].fallback_reason == reason
    assert a.apps[1].fallback and a.host.conns[1].fallback_reason == DECL.PEERDECL and a.host.conns[1].peer_diagnosis == reason
    assert not a.host.lgrs and not b.host.lgrs


def test_a_vlan_groups_second_link_takes_the_other_devices_gid_on_that_vlan():
    """smc_pnet_find_alt_roce looks for a device with a GID on the group's VLAN; the new
    link's QP uses that GID (the ADD LINK carries it)."""
    f, a, b = hosts(client_devices=2, server_devices=2)
    for io, n in ((a, 1), (b, 2)):
        _on_vlans(io, n, device=0)
        _on_vlans(io, n + 10, device=1)
    open_on(f, a, b, 1, 100)
    f.run(until=f.now + 1.0)
    for io, n in ((a, 1), (b, 2)):
        links = sorted(io.host.conns[1].lgr.usable_links(), key=lambda lk: lk.device)
        assert [(lk.device, lk.qp.gid) for lk in links] == [("fab0", _gid(f"10.3.100.{n}")), ("fab1", _gid(f"10.3.100.{n + 10}"))]


def test_no_second_link_on_a_device_without_a_gid_on_the_vlan():
    """The other device has no GID on VLAN 100: the group stays on one device (an
    asymmetric link on it, on the VLAN's GID, never a link on another VLAN's address)."""
    f, a, b = hosts(client_devices=2, server_devices=2)
    for io, n in ((a, 1), (b, 2)):
        _on_vlans(io, n, device=0)
        _on_vlans(io, n + 10, vlans=(200,), device=1)
    open_on(f, a, b, 1, 100)
    f.run(until=f.now + 1.0)
    for io, n in ((a, 1), (b, 2)):
        links = io.host.conns[1].lgr.usable_links()
        assert {lk.device for lk in links} == {"fab0"}
        assert {lk.qp.gid for lk in links} == {_gid(f"10.3.100.{n}")}


def test_gids_read_again_take_effect_for_new_connections_and_links_on_a_vanished_gid_go_down():
    """A VLAN interface removed (its GID gone) and another made, while the stack runs: the
    link on the vanished GID goes down (its group has no other link: it ends), a new
    connection on that VLAN finds no device (NOSMCDEV), one on the new VLAN runs SMC-R on
    its GID, and the group of a VLAN that kept its GID is untouched."""
    f, a, b = hosts()
    _on_vlans(a, 1)
    _on_vlans(b, 2, vlans=(100, 200, 300))
    open_on(f, a, b, 1, 100)
    open_on(f, a, b, 2, 200)
    lgr100, lgr200 = a.host.conns[1].lgr, a.host.conns[2].lgr
    dev = a.host.device_table.all[0]
    a.host.gids_changed(dataclasses.replace(dev, up=False, vlan_gids=_vlan_table(1, vlans=(200, 300))), f.now)
    f.run(until=f.now + 1.0)
    assert a.host.device_table.all[0].up  # the port state is the host's, not the new reading's
    assert lgr100.terminated and not lgr200.terminated
    assert any(e.kind == "link.event" and e.lgr == lgr100.name and e.fields == {"event": "down", "reason": "GID ::ffff:10.3.100.1 gone from fab0"}
               for e in a.events)  # fmt: skip
    open_on(f, a, b, 3, 100)
    assert a.apps[3].fallback and a.host.conns[3].fallback_reason == DECL.NOSMCDEV
    open_on(f, a, b, 4, 300)
    assert a.apps[4].established and a.host.conns[4].link.qp.gid == _gid("10.3.44.1")
    open_on(f, a, b, 5, 200)
    assert a.host.conns[5].lgr is lgr200  # still shared


def test_a_port_back_before_its_gids_gets_its_link_when_they_return():
    """A net device brought up again: the port event can come before its addresses' GIDs are
    back (the kernel re-adds them after NETDEV_UP). The group that wanted its second link
    then finds no GID on that device; when the GIDs return (GID_CHANGE), it looks again, as
    the kernel's port-event work runs smcr_port_add on a GID change, and is SYM again."""
    f, a, b = hosts(client_devices=2, server_devices=2)
    for io, n in ((a, 1), (b, 2)):
        _on_vlans(io, n, vlans=(), device=0)
        _on_vlans(io, n + 10, vlans=(), device=1)
    open_on(f, a, b, 1, 0)
    f.run(until=f.now + 1.0)
    lgr = b.host.conns[1].lgr
    assert lgr.type == LgrType.SYMMETRIC
    dev = b.host.device_table.all[1]
    b.host.port_event(dev.name, False, f.now)
    f.run(until=f.now + 2.0)
    assert lgr.type != LgrType.SYMMETRIC and {lk.device for lk in lgr.usable_links()} == {"fab0"}
    b.host.gids_changed(dataclasses.replace(dev, vlan_gids=()), f.now)  # the net device down: its GIDs gone
    b.host.port_event(dev.name, True, f.now)  # the port is back, its GIDs not yet
    f.run(until=f.now + 2.0)
    assert lgr.type != LgrType.SYMMETRIC
    b.host.gids_changed(dev, f.now)  # its GIDs again
    f.run(until=f.now + 2.0)
    assert lgr.type == LgrType.SYMMETRIC and {lk.device for lk in lgr.usable_links()} == {"fab0", "fab1"}
