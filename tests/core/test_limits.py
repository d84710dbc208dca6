"""Resource limits per stack (#15 item 4), in the spirit of the RDMA cgroup: link groups,
QPs, registered memory and connections. Past a limit a new connection is declined with
the kernel's code (MAXCONNERR, MAXLINKERR, MEM) and falls back to TCP; the snapshot shows
each limit with its use; a peer opening connections without end gets declines while the
memory registered stays bounded."""

from __future__ import annotations

import dataclasses

import pytest
from support.fabric import open_conn, pair

from stack.core.config import Limits, SmcConfig
from stack.core.linkgroup import SecurityContext
from stack.wire.codes import DECL

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}
PER_CONN = 16384 + 16384  # one RMB and one send buffer, on one device


def hosts(client_limits=Limits(), server_limits=Limits(), client_devices=1, server_devices=1, versions=frozenset({1, 2})):
    return pair(SmcConfig(host="client", versions=versions, limits=client_limits, **SMALL),
                SmcConfig(host="server", versions=versions, limits=server_limits, **SMALL),
                client_devices=client_devices, server_devices=server_devices)  # fmt: skip


def registered(io) -> int:
    return sum(mr.size for mr in io.mrs.values())


def test_a_flood_of_connections_past_the_limit_is_declined_and_memory_stays_bounded():
    f, a, b = hosts(server_limits=Limits(conns=3))
    for cid in range(1, 4):
        open_conn(f, a, b, cid)
    after_three = registered(b)
    for cid in range(4, 41):
        open_conn(f, a, b, cid)
    smc = [cid for cid in range(1, 41) if a.apps[cid].established and not a.apps[cid].fallback]
    assert smc == [1, 2, 3]
    for cid in range(4, 41):
        assert b.apps[cid].fallback and b.host.conns[cid].fallback_reason == DECL.MAXCONNERR
        assert a.host.conns[cid].peer_diagnosis == DECL.MAXCONNERR  # the client falls back PEERDECL with it
    assert registered(b) == after_three  # not one more byte registered for the flood
    assert b.host.stats["limit_conns"] == 37
    snap = b.host.snapshot()["limits"]
    assert snap["conns"] == {"limit": 3, "used": 3}
    assert snap["reg_mem"]["used"] == 3 * PER_CONN and snap["lgrs"]["used"] == 1


def test_closed_connections_give_their_place_back():
    f, a, b = hosts(server_limits=Limits(conns=2))
    open_conn(f, a, b, 1)
    open_conn(f, a, b, 2)
    open_conn(f, a, b, 3)
    assert b.apps[3].fallback
    for io in (a, b):
        io.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    open_conn(f, a, b, 4)
    assert a.apps[4].established and not a.apps[4].fallback


def test_registered_memory_limit_declines_with_mem():
    f, a, b = hosts(server_limits=Limits(reg_mem=3 * PER_CONN + PER_CONN // 2))
    for cid in range(1, 6):
        open_conn(f, a, b, cid)
    assert [cid for cid in range(1, 6) if not a.apps[cid].fallback] == [1, 2, 3]
    assert b.host.conns[4].fallback_reason == DECL.MEM and b.host.conns[5].fallback_reason == DECL.MEM
    assert b.host.snapshot()["limits"]["reg_mem"] == {"limit": 3 * PER_CONN + PER_CONN // 2, "used": 3 * PER_CONN}


def test_link_group_limit_declines_a_new_group_with_maxlinkerr():
    """One group allowed: a connection of another security context, which would need a
    group of its own, is declined; one of the group's context still joins."""
    f, a, b = hosts(server_limits=Limits(lgrs=1))
    ns_b = SecurityContext(netns=99)

    def open_in(cid, ctx):
        f.connect_tcp(a, cid, b, cid)
        b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now, security=ctx)
        a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now, security=ctx)
        f.run(stop=lambda: all(io._app(cid).established or io._app(cid).fallback for io in (a, b)))

    open_in(1, None)
    open_in(2, ns_b)
    open_in(3, None)
    assert b.host.conns[2].fallback_reason == DECL.MAXLINKERR and b.host.stats["limit_lgrs"] == 1
    assert not a.apps[3].fallback and len(b.host.lgrs) == 1


def test_qp_limit_keeps_the_second_link_from_being_added():
    f, a, b = hosts(server_limits=Limits(qps=1), client_devices=2, server_devices=2)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.05)
    (lgr,) = b.host.lgrs
    assert len(lgr.links) == 1 and a.apps[1].established
    assert any(e.get("event") == "qp_create_failed" and "QP limit" in e.get("reason", "") for e in b.events if e.kind == "link.event")
    assert b.host.snapshot()["limits"]["qps"] == {"limit": 1, "used": 1}
    open_conn(f, a, b, 2)  # joins the group: no new QP needed
    assert not a.apps[2].fallback


def test_the_client_declines_an_accept_past_its_own_limit():
    f, a, b = hosts(client_limits=Limits(conns=2))
    for cid in range(1, 4):
        open_conn(f, a, b, cid)
    assert a.host.conns[3].fallback_reason == DECL.MAXCONNERR
    assert b.host.conns[3].peer_diagnosis == DECL.MAXCONNERR
    assert a.host.snapshot()["limits"]["conns"] == {"limit": 2, "used": 2}


def test_no_limit_means_none():
    f, a, b = hosts(server_limits=Limits(lgrs=None, qps=None, reg_mem=None, conns=None))
    open_conn(f, a, b, 1)
    snap = b.host.snapshot()["limits"]
    assert snap["conns"] == {"limit": None, "used": 1} and snap["qps"]["limit"] is None


@pytest.mark.parametrize("bad", [{"conns": -1}, {"qps": 1.5}, {"reg_mem": True}, {"lgrs": "3"}])
def test_a_bad_limit_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="limit .* must be a whole number"):
        Limits(**bad)


def test_defaults_are_finite():
    d = Limits()
    assert all(isinstance(getattr(d, n), int) and getattr(d, n) > 0 for n in ("lgrs", "qps", "reg_mem", "conns"))
    assert dataclasses.replace(d, conns=5).conns == 5
