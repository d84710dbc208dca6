"""Security context (#15 item 3): a link group is shared only by connections of one network
namespace, VLAN and P_Key and, for v2, one UEID; the peer reaches an RMB only with the rkey
of that RMB, and the key dies with its connection.

The kernel compares the network namespace in ``smcr_lgr_match`` (``net_eq(lgr->net, net)``)
and the VLAN in ``smc_conn_create`` (``lgr->vlan_id == ini->vlan_id``, v1); a client whose
server reuses a group it cannot use answers SYNCERR (``smc_conn_create``). We compare the
whole context for every version.
"""

from __future__ import annotations

import dataclasses

import pytest
from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.core.linkgroup import SecurityContext
from stack.wire.codes import DECL

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}
NS_A = SecurityContext(netns=4026531840)
NS_B = SecurityContext(netns=4026532999)


def hosts(versions=frozenset({1, 2}), **kw):
    return pair(SmcConfig(host="client", versions=versions, **SMALL, **kw), SmcConfig(host="server", versions=versions, **SMALL, **kw))


def open_in(f, a, b, cid: int, client: SecurityContext | None, server: SecurityContext | None) -> None:
    """open_conn with each side's security context."""
    f.connect_tcp(a, cid, b, cid)
    b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now, security=server)
    a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now, security=client)
    f.run(stop=lambda: all(io._app(cid).established or io._app(cid).fallback or io._app(cid).failed for io in (a, b)))


def groups_of(io) -> dict[int, str]:
    return {c.id: c.lgr.name for c in io.host.conns.values() if c.lgr is not None}


@pytest.mark.parametrize("version", [1, 2])
def test_same_context_shares_one_link_group(version):
    f, a, b = hosts(frozenset({version}))
    open_in(f, a, b, 1, NS_A, NS_A)
    open_in(f, a, b, 2, NS_A, NS_A)
    for io in (a, b):
        assert len(set(groups_of(io).values())) == 1 and len(io.host.lgrs) == 1
    assert not b.host.conns[2].first_contact


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("second", [NS_B, dataclasses.replace(NS_A, vlan=100), dataclasses.replace(NS_A, pkey=0x8001)], ids=["netns", "vlan", "pkey"])
def test_another_context_gets_its_own_link_group(version, second):
    f, a, b = hosts(frozenset({version}))
    open_in(f, a, b, 1, NS_A, NS_A)
    open_in(f, a, b, 2, second, second)
    for io in (a, b):
        assert io.apps[2].established
        g = groups_of(io)
        assert g[1] != g[2] and len(io.host.lgrs) == 2
        assert io.host.conns[2].lgr.security == second and io.host.conns[1].lgr.security == NS_A
        assert io.host.conns[2].first_contact
    what = NS_A.mismatch(second)
    assert b.host.stats[f"lgr_not_shared_{what}"] == 1
    # a third connection in the first context joins the first group again
    open_in(f, a, b, 3, NS_A, NS_A)
    for io in (a, b):
        assert groups_of(io)[3] == groups_of(io)[1]
    snap = b.host.snapshot()
    assert sorted(g["security"]["netns"] for g in snap["lgrs"]) == sorted([NS_A.netns, second.netns])


def test_a_client_whose_server_reuses_a_group_of_another_context_answers_syncerr():
    """The server (a peer that ignores our contexts, as a kernel in one namespace would)
    reuses the group; the client cannot use it from another namespace: SYNCERR, out of sync."""
    f, a, b = hosts()
    open_in(f, a, b, 1, NS_A, None)
    open_in(f, a, b, 2, NS_B, None)
    assert a.host.conns[2].fallback_reason == DECL.SYNCERR and a.apps[2].fallback
    decline = [e for e in a.events if e.kind == "clc.msg" and e.get("type") == "Decline"][-1]
    assert decline.get("out_of_sync") is True
    assert a.host.stats["lgr_not_shared_netns"] == 1


def test_v2_group_is_not_shared_across_ueids():
    f, a, b = pair(SmcConfig(host="client", versions=frozenset({2}), ueids=("TENANT-A",), **SMALL),
                   SmcConfig(host="server", versions=frozenset({2}), ueids=("TENANT-A", "TENANT-B"), **SMALL))  # fmt: skip
    open_conn(f, a, b, 1)
    a.host.config = dataclasses.replace(a.host.config, ueids=("TENANT-B",))
    open_conn(f, a, b, 2)
    for io in (a, b):
        assert io.apps[2].established
        c1, c2 = io.host.conns[1], io.host.conns[2]
        assert c1.lgr is not c2.lgr
        assert c1.lgr.negotiated_eid.rstrip(b" \0") == b"TENANT-A" and c2.lgr.negotiated_eid.rstrip(b" \0") == b"TENANT-B"
    assert b.host.stats["lgr_not_shared_ueid"] == 1


def test_an_rkey_reaches_only_its_own_rmb():
    """Each RMB has its own registration: the rkey of one connection's RMB cannot write into
    another's (the NIC refuses: here the fabric's rkey and bounds check)."""
    f, a, b = hosts()
    open_conn(f, a, b, 1)
    open_conn(f, a, b, 2)
    r1, r2 = b.host.conns[1].rmb.on("fab0"), b.host.conns[2].rmb.on("fab0")
    assert r1.rkey != r2.rkey
    assert b._write(r1.rkey, r1.addr, b"ok")  # its own RMB
    assert not b._write(r1.rkey, r2.addr, b"x")  # another connection's RMB through this key
    assert not b._write(r1.rkey, r1.addr + r1.size - 1, b"xx")  # past its end
    f.access_errors.clear()


def test_the_rmb_key_is_deregistered_at_close():
    """After DELETE RKEY is answered the RMB's rkey is gone: a write with it fails, and the
    next connection gets a new RMB with a new key."""
    f, a, b = hosts()
    open_conn(f, a, b, 1)
    rmb = b.host.conns[1].rmb
    old = rmb.on("fab0")
    mrs_before = len(b.mrs)
    for io in (a, b):
        io.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert any(e.get("type", "").startswith("LLC DELETE RKEY") for e in b.events if e.kind == "llc.msg")
    assert rmb.regs == {} and rmb not in b.host.lgrs[0].rmbs
    assert len(b.mrs) == mrs_before - 1  # the RMB's registration; the send buffer stays (local keys only)
    assert not b._write(old.rkey, old.addr, b"late")
    f.access_errors.clear()
    open_conn(f, a, b, 2)
    assert b.host.conns[2].rmb.on("fab0").rkey != old.rkey


def test_kernel_pooling_keeps_the_rmb_registered_when_asked():
    f, a, b = pair(SmcConfig(host="client", rmb_keep_registered=True, **SMALL), SmcConfig(host="server", rmb_keep_registered=True, **SMALL))
    open_conn(f, a, b, 1)
    rmb = b.host.conns[1].rmb
    for io in (a, b):
        io.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert rmb.regs and rmb in b.host.lgrs[0].rmbs and not rmb.in_use
