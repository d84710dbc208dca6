"""Link-group rules as the kernel keeps them (#16 items 7 and 8), each test naming the
kernel function it follows. The VLAN rule (v1 groups are reused only within one VLAN,
``smc_conn_create``) is in test_security_context.py."""

from __future__ import annotations

import dataclasses

from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.wire import llc
from stack.wire.codes import DECL, DEL, LgrType, LinkState

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}


def hosts(versions=frozenset({1, 2}), client_devices=1, server_devices=1, server_kw=None, **kw):
    c = SmcConfig(host="client", versions=versions, **SMALL, **kw)
    s = SmcConfig(host="server", versions=versions, **SMALL, **{**kw, **(server_kw or {})})
    return pair(c, s, client_devices=client_devices, server_devices=server_devices)


def kinds(io, kind, **match):
    def get(e, k):
        return getattr(e, k) if k in ("host", "lgr", "link", "conn") else e.get(k)

    return [e for e in io.events if e.kind == kind and all(get(e, k) == v for k, v in match.items())]


def llc_tx(io, prefix: str, since: float = 0.0):
    return [e for e in kinds(io, "llc.msg", dir="tx") if e.get("type", "").startswith(prefix) and e.t >= since]


# ------------------------------------------------------------------ smc_clc_wait_msg


def test_an_out_of_sync_decline_terminates_the_link_group():
    """smc_clc_wait_msg: a Decline with the out-of-sync flag sets sync_err and terminates
    the group (smc_lgr_terminate_sched); its connections abort. Here the client forgot its
    group, so the server's reuse Accept is answered with SYNCERR."""
    f, a, b = hosts()
    open_conn(f, a, b, 1)
    (group,) = b.host.lgrs
    a.host.lgrs.pop()  # the client no longer knows the group
    open_conn(f, a, b, 2)
    f.run(until=f.now + 0.01)
    assert b.apps[2].fallback and a.host.conns[2].fallback_reason == DECL.SYNCERR
    assert group.sync_err and group.terminated and group not in b.host.lgrs
    (end,) = kinds(b, "lgr.state", cause="the peer declined out of sync (SYNCERR)")
    assert end.get("reason") == DEL.PROG_INIT_TERM
    (dl,) = [e for e in llc_tx(b, "LLC DELETE LINK") if e.get("all")]
    assert dl.get("orderly") is False  # smc_lgr_cleanup sends it not orderly
    assert b.apps[1].closed and b.apps[1].close_error  # connection 1 aborted with the group


def test_without_the_out_of_sync_flag_the_group_stays():
    f, a, b = hosts()
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    b.host.config = dataclasses.replace(b.host.config, forced_decline=DECL.MAXCONNERR)
    open_conn(f, a, b, 2)
    f.run(until=f.now + 0.01)
    assert a.apps[2].fallback and len(b.host.lgrs) == 1 and not b.host.lgrs[0].terminated and not b.host.lgrs[0].sync_err


# ------------------------------------------------------------------ smc_conn_create


def test_a_client_answers_syncerr_when_the_server_picked_a_link_that_failed():
    """smc_conn_create (smcr_lgr_match with the Accept's QPN): only an ACTIVE link matches;
    an Accept naming a link that has failed finds none and the client declines SYNCERR."""
    f, a, b = hosts(client_devices=2, server_devices=2)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    (lgr,) = a.host.lgrs
    assert lgr.type == LgrType.SYMMETRIC
    accept = a.host.conns[1].accept
    links = {l.link_id: l for l in lgr.links.values()}
    named = links[1] if links[1].peer_qpn == accept.qpn else links[2]
    reuse = dataclasses.replace(accept, first_contact=False, qpn=named.peer_qpn, gid=named.peer_gid, mac=named.peer_mac)
    assert a.host.directory.find_client_link(reuse) == (lgr, named)  # the control: the live link is found
    a.port(named.device, False)
    f.run(until=f.now + 0.01)
    assert named.state != LinkState.ACTIVE and lgr.active_links()
    assert a.host.directory.find_client_link(reuse) == (None, None)  # out of sync: SYNCERR


# ------------------------------------------------------------------ smcr_lgr_conn_assign_link


def test_new_connections_never_go_on_an_asymmetric_link():
    """smcr_lgr_conn_assign_link: a link tagged asymmetric is skipped; the others take
    connections by the kernel's balancing (even count: the first, odd: the next)."""
    f, a, b = hosts(frozenset({1}), client_devices=2, server_devices=2)
    b.port("fab1", False)  # the server has one port: its second link is asymmetric
    f.run(until=0.001)
    for cid in range(1, 5):
        open_conn(f, a, b, cid)
        f.run(until=f.now + 0.01)
    (lgr,) = b.host.lgrs
    assert lgr.type == LgrType.ASYMMETRIC_LOCAL
    asym = [l for l in lgr.active_links() if l.asym]
    assert len(asym) == 1 and len(lgr.active_links()) == 2
    assert all(c.link is not asym[0] for c in b.host.conns.values())
    assert {c.link.link_id for c in b.host.conns.values()} == {1}
    # the client learns the link from the Accept: the same one
    assert {c.link.peer_qpn for c in a.host.conns.values()} == {lgr.links[1].qp.qpn}


def test_assign_link_balances_over_symmetric_links():
    f, a, b = hosts(client_devices=2, server_devices=2)
    for cid in range(1, 5):
        open_conn(f, a, b, cid)
        f.run(until=f.now + 0.01)
    (lgr,) = b.host.lgrs
    assert lgr.type == LgrType.SYMMETRIC
    assert sorted(c.link.link_id for c in b.host.conns.values()).count(1) >= 1
    assert len({c.link.link_id for c in b.host.conns.values()}) == 2
    for l in lgr.links.values():
        l.asym = True
    assert lgr.assign_link() is None  # NOACTVLINK: no group to join
    assert b.host.directory.find_server_lgr(lgr.peer_id, lgr.peer_gid, lgr.peer_mac, lgr.version) is None


def test_set_type_clears_the_asymmetric_tag():
    """smcr_lgr_set_type: a group that becomes SINGLE or SYMMETRIC has no asymmetric link."""
    f, a, b = hosts(frozenset({1}), client_devices=2, server_devices=2)
    b.port("fab1", False)
    f.run(until=0.001)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    (lgr,) = b.host.lgrs
    assert any(l.asym for l in lgr.active_links())
    lgr.set_type(LgrType.SINGLE, f.now, "test")
    assert not any(l.asym for l in lgr.links.values())


# ------------------------------------------------------------------ smc_llc_srv_add_link


def _request_add_link(f, a) -> float:
    (lgr,) = a.host.lgrs
    link = lgr.usable_link()
    t = f.now
    link.post_llc(llc.RequestAddLink(version=2, gids=(link.qp.gid, link.qp.gid)), f.now)
    f.run(until=f.now + 0.01)
    return t


def test_request_add_link_is_answered_when_no_link_can_be_added():
    """smc_llc_srv_add_link: a REQUEST ADD LINK that leads to no ADD LINK (here the group
    allows one link) is answered with the request flagged as a response."""
    f, a, b = hosts(frozenset({2}), server_kw={"max_links": 1})
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    assert b.host.lgrs[0].max_links == 1
    t = _request_add_link(f, a)
    (resp,) = llc_tx(b, "LLC REQUEST ADD LINK", t)
    assert resp.get("response") is True and resp.get("gids") == []
    assert not llc_tx(b, "LLC ADD LINK", t)


def test_request_add_link_is_answered_when_the_new_link_cannot_be_made(monkeypatch):
    """smc_llc_srv_add_link: the flow starts but smcr_link_init fails (here no QP can be
    had): the request is answered all the same."""
    f, a, b = hosts(frozenset({2}))
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)

    def no_qp(device, gid=None):
        raise OSError("out of QPs")

    monkeypatch.setattr(b, "create_qp", no_qp)
    t = _request_add_link(f, a)
    (resp,) = llc_tx(b, "LLC REQUEST ADD LINK", t)
    assert resp.get("response") is True
    assert kinds(b, "link.event", event="qp_create_failed")


def test_request_add_link_is_answered_by_the_add_link_flow_already_queued():
    """A REQUEST ADD LINK while an ADD LINK flow waits for the slot is that flow's to answer:
    with no link to add (max_links 1) it answers when it runs, once, and not before."""
    f, a, b = hosts(frozenset({2}), server_kw={"max_links": 1})
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    from stack.core import llcflows

    (lgr,) = b.host.lgrs
    lgr.flows.append(llcflows.ServerAddLink(lgr, "test"))  # one waits already
    busy = lgr.running = llcflows.LlcFlow(lgr)  # and the slot is busy
    t = _request_add_link(f, a)
    assert not llc_tx(b, "LLC REQUEST ADD LINK", t)
    busy.finish(f.now)
    f.run(until=f.now + 0.01)
    (resp,) = llc_tx(b, "LLC REQUEST ADD LINK", t)
    assert resp.get("response") is True and lgr.running is None and not lgr.flows


def test_request_add_link_that_leads_to_an_add_link_gets_no_extra_response():
    """The control: when a link can be added, the ADD LINK is the answer."""
    f, a, b = hosts(frozenset({2}), client_devices=2, server_devices=2)
    b.port("fab1", False)  # the server starts with one port: an asymmetric second link
    f.run(until=0.001)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    assert b.host.lgrs[0].type == LgrType.ASYMMETRIC_LOCAL
    b.port("fab1", True, notify_after=None)  # back, without a port event: the server does not act on its own
    b.host.set_device_state("fab1", True)
    t = _request_add_link(f, a)
    f.run(until=f.now + 0.05)
    assert llc_tx(b, "LLC ADD LINK", t)
    assert not llc_tx(b, "LLC REQUEST ADD LINK", t)
    assert b.host.lgrs[0].type == LgrType.SYMMETRIC


# ------------------------------------------------------------------ smc_llc_process_srv_delete_link


def test_delete_link_all_is_echoed_orderly():
    """smc_llc_process_srv_delete_link: the server answers a DELETE LINK ALL with
    smc_llc_send_link_delete_all(lgr, true, reason): orderly, whatever the request said."""
    f, a, b = hosts(frozenset({2}))
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    link = a.host.lgrs[0].usable_link()
    t = f.now
    link.post_llc(llc.DeleteLink(version=2, link_num=0, reason=DEL.OP_INIT_TERM, all=True, orderly=False), f.now)
    f.run(until=f.now + 0.01)
    (echo,) = [e for e in llc_tx(b, "LLC DELETE LINK", t) if e.get("all")]
    assert echo.get("orderly") is True and echo.get("reason") == DEL.OP_INIT_TERM
    assert not b.host.lgrs


# ------------------------------------------------------------------ smcr_conn_save_peer_info


def test_rmbe_idx_is_honoured_when_writing_into_the_peer_rmb(monkeypatch):
    """smcr_conn_save_peer_info: tx_off = RMBE size * (rmbe_idx - 1). A server announces its
    RMB as the second RMBE of a region starting one RMBE earlier; the client's writes land
    at the RMBE it named (the fabric refuses any write outside the registered RMB)."""
    from stack.wire import clc

    f, a, b = hosts(frozenset({2}))
    real_send = b.tcp_send

    def shifted(conn, data):
        try:
            msg = clc.decode(data)
        except clc.ClcError:
            return real_send(conn, data)  # not a (whole) CLC message
        if isinstance(msg, clc.Accept):
            size = clc.rmbe_size_bytes(msg.rmbe_size)
            data = dataclasses.replace(msg, rmbe_idx=2, rmb_vaddr=msg.rmb_vaddr - size).encode()
        return real_send(conn, data)

    monkeypatch.setattr(b, "tcp_send", shifted)
    open_conn(f, a, b, 1)
    assert a.host.conns[1].tx_off == a.host.conns[1].peer_size
    a.host.app_send(1, b"written where rmbe_idx says", f.now)
    f.run(until=f.now + 0.01)
    assert b.host.app_recv(1, 100, f.now) == b"written where rmbe_idx says"
    assert not f.access_errors
