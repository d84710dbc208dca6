"""Decline reasons the stack finds on its own (not a forced decline), on the in-memory fabric:
a peer's Accept or Confirm altered in flight the way a misbehaving or newer peer would send
it, and a buffer registration that fails. The side that checks declines with the kernel's
code; the other side falls back with PEERDECL and that code as the peer's diagnosis.

af_smc.c smc_connect_check_aclc and smc_clc.c smc_clc_clnt_v2x_features_validate (client:
MODEUNSUPP, NOUEID, RELEASEERR, MAXCONNERR, MAXLINKERR), smc_clc_v2x_features_confirm_check
(server: RELEASEERR, MAXCONNERR, MAXLINKERR), smc_listen_rdma_reg / smc_buf_create
(ERR_REGBUF)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.fabric import open_conn, pair

from stack.wire import clc
from stack.wire.codes import DECL


def _tamper(io, kind: clc.ClcType, change) -> list:
    """Change the first CLC message of type ``kind`` that ``io`` sends; returns what was changed."""
    seen = []
    send = io.tcp_send

    def tcp_send(conn, data):
        if not seen and len(data) > 8 and bytes(data[:4]) == clc.EYECATCHER_SMCR:
            msg = clc.decode(bytes(data))
            if msg.type == kind:
                seen.append(msg)
                data = change(msg).encode()
        send(conn, data)

    io.tcp_send = tcp_send
    return seen


def _outcome(a, b):
    c, s = a.host.conns[1], b.host.conns[1]
    return (c.mode, c.fallback_reason, c.peer_diagnosis), (s.mode, s.fallback_reason, s.peer_diagnosis)


def _fce(change):
    return lambda m: replace(m, fce=replace(m.fce, **change))


ACCEPT_CASES = [
    ("a newer release than ours", _fce({"release": 2}), DECL.RELEASEERR),
    ("max_conns below SMC_CONN_PER_LGR_MIN", _fce({"max_conns": 0}), DECL.MAXCONNERR),
    ("max_links 0", _fce({"max_links": 0}), DECL.MAXLINKERR),
    ("max_links beyond SMC_LINKS_ADD_LNK_MAX", _fce({"max_links": 3}), DECL.MAXLINKERR),
    ("an EID we did not propose", lambda m: replace(m, eid=b"NOT-OURS".ljust(32)), DECL.NOUEID),
]


@pytest.mark.parametrize("what,change,reason", ACCEPT_CASES, ids=[c[0] for c in ACCEPT_CASES])
def test_the_client_declines_an_accept_it_cannot_take(what, change, reason):
    f, a, b = pair()
    changed = _tamper(b, clc.ClcType.ACCEPT, change)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.1)
    assert changed and changed[0].version == 2 and changed[0].first_contact
    client, server = _outcome(a, b)
    assert client == ("TCP", reason, 0), (what, client)
    assert server == ("TCP", DECL.PEERDECL, reason), (what, server)


CONFIRM_CASES = [
    ("another release than accepted", _fce({"release": 0}), DECL.RELEASEERR),
    ("other max_conns than accepted", _fce({"max_conns": 100}), DECL.MAXCONNERR),
    ("other max_links than accepted", _fce({"max_links": 1}), DECL.MAXLINKERR),
]


@pytest.mark.parametrize("what,change,reason", CONFIRM_CASES, ids=[c[0] for c in CONFIRM_CASES])
def test_the_server_declines_a_confirm_that_does_not_echo_its_accept(what, change, reason):
    f, a, b = pair()
    changed = _tamper(a, clc.ClcType.CONFIRM, change)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.1)
    assert changed and changed[0].first_contact
    client, server = _outcome(a, b)
    assert server == ("TCP", reason, 0), (what, server)
    assert client == ("TCP", DECL.PEERDECL, reason), (what, client)


def test_the_server_declines_err_regbuf_when_its_buffers_cannot_be_registered():
    f, a, b = pair()

    def reg_mr(*args, **kw):
        raise OSError(12, "no memory to register")

    b.reg_mr = reg_mr
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.1)
    client, server = _outcome(a, b)
    assert server == ("TCP", DECL.ERR_REGBUF, 0), server
    assert client == ("TCP", DECL.PEERDECL, DECL.ERR_REGBUF), client
    assert "buffer registration failed" in b.host.conns[1].error


def _as_v1(m):
    extra = {"gids": ()} if m.type == clc.ClcType.CONFIRM else {}
    return replace(m, version=1, fce=None, **extra)


def test_the_client_declines_modeunsupp_for_an_accept_in_a_version_it_did_not_offer():
    """smc_connect_check_aclc: a v1 Accept to a client that proposed v2 only."""
    from stack.core.config import SmcConfig

    f, a, b = pair(SmcConfig(host="client", versions=frozenset({2})))
    changed = _tamper(b, clc.ClcType.ACCEPT, _as_v1)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.1)
    assert changed and changed[0].version == 2
    client, server = _outcome(a, b)
    assert client == ("TCP", DECL.MODEUNSUPP, 0), client
    assert server == ("TCP", DECL.PEERDECL, DECL.MODEUNSUPP), server


def test_the_server_declines_modeunsupp_for_a_confirm_in_another_version_than_its_accept():
    """smc_clc_v2x_features_confirm_check / smc_listen_work: the Confirm must be in the Accept's version."""
    f, a, b = pair()
    changed = _tamper(a, clc.ClcType.CONFIRM, _as_v1)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.1)
    assert changed and changed[0].version == 2
    client, server = _outcome(a, b)
    assert server == ("TCP", DECL.MODEUNSUPP, 0), server
    assert client == ("TCP", DECL.PEERDECL, DECL.MODEUNSUPP), client
