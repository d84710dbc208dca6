"""Every (state, input) pair of every transition table, against the real objects.

A pair in a table must land where the table says (for any values of its guards); a pair
not in a table must be rejected as a protocol error, leaving the state alone. Random
sequences of closes, shutdowns and aborts on both ends must always end in CLOSED with
no other exception; hostile CLC bytes must end every handshake cleanly.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fabric import open_conn, pair

from stack.core.states import CONN_INPUTS, CONN_TABLE, HS_INPUTS, HS_TABLE, LINK_INPUTS, LINK_TABLE, Hs, ProtocolError, step
from stack.wire import clc
from stack.wire.codes import DECL, DEL, LinkState, SmcState

FAST = settings(max_examples=32, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
GUARDS = ("unread_data", "peer_closed", "unread_data_and_peer_closed", "done_writing_only", "released_and_closed_sent")


def established():
    fabric, a, b = pair()
    open_conn(fabric, a, b, 1)
    return fabric, a, b, a.host.conns[1]


@pytest.mark.parametrize("state,event", list(itertools.product(list(SmcState), CONN_INPUTS)), ids=lambda x: getattr(x, "name", x))
@FAST
@given(flags=st.fixed_dictionaries({
    "unread": st.booleans(), "peer_closed": st.booleans(), "done_writing": st.booleans(), "closed_sent": st.booleans(),
    "released": st.booleans(),
}))  # fmt: skip
def test_every_connection_pair(state, event, flags):
    fabric, a, b, conn = established()
    conn.state = state
    conn.bytes_to_rcv = 100 if flags["unread"] else 0
    conn.peer_closed = flags["peer_closed"]
    conn.sent["done_writing"] = flags["done_writing"]
    conn.sent["closed"] = flags["closed_sent"]
    conn.released = flags["released"]
    if (state, event) not in CONN_TABLE:
        with pytest.raises(ProtocolError) as e:
            conn.input(event, fabric.now)
        assert e.value.state == state and e.value.event == event and conn.state == state
        return
    rule = step("connection", CONN_TABLE, state, event, conn._guard)
    conn.input(event, fabric.now)
    assert conn.state == (rule.next if rule.next is not None else state)


@pytest.mark.parametrize("state,event", list(itertools.product(list(LinkState), LINK_INPUTS)), ids=lambda x: getattr(x, "name", x))
def test_every_link_pair(state, event):
    fabric, a, b, conn = established()
    link = conn.link
    link.state = state
    if (state, event) not in LINK_TABLE:
        with pytest.raises(ProtocolError):
            link.set_state(event, fabric.now)
        assert link.state == state
    else:
        rule = LINK_TABLE[(state, event)][0]
        link.set_state(event, fabric.now)
        assert link.state == (rule.next if rule.next is not None else state)


HS_GUARDS = sorted({rule.guard for rules in HS_TABLE.values() for rule in rules if rule.guard})


def _planned(action: str) -> tuple[str, object]:
    """What the machine should call for a table action: ``send_decline(TIMEOUT_CL)`` is
    send_decline with TIMEOUT_CL's code, ``wait(clc_wait)`` is wait with the timeout's name."""
    name, _, arg = action.partition("(")
    arg = arg.rstrip(")") or None
    return name, getattr(DECL, arg) if arg is not None and name in ("send_decline", "fall_back") else arg


@pytest.mark.parametrize("state,event", list(itertools.product(list(Hs), HS_INPUTS)), ids=lambda x: getattr(x, "name", x))
@FAST
@given(guards=st.sets(st.sampled_from(HS_GUARDS)))
def test_every_handshake_pair(state, event, guards):
    """The real machine (Handshake.input) over every pair: it lands where the table says and
    performs the rule's actions in order, with their arguments; a pair not in the table is a
    ProtocolError that leaves the state alone. The example decides which guards hold, and the
    actions are recorded instead of performed (the behaviour tests perform them)."""
    fabric, a, b = pair()
    conn = a.host._new_conn(1, "client", (a.ip, 40001), (b.ip, 5000), fabric.now)
    machine = a.host.handshake
    done = []
    machine._guards = {g: (lambda c, i, g=g: g in guards) for g in machine._guards}
    machine._actions = {name: (lambda c, i, now, arg, name=name: done.append((name, arg))) for name in machine._actions}
    machine._plans = machine.plans()
    conn.hs = state
    if (state, event) not in HS_TABLE:
        with pytest.raises(ProtocolError) as e:
            machine.input(conn, event, fabric.now)
        assert e.value.state == state and e.value.event == event and conn.hs == state and not done
        return
    rule = step("handshake", HS_TABLE, state, event, lambda g: g in guards)
    machine.input(conn, event, fabric.now)
    assert conn.hs == (rule.next if rule.next is not None else state)
    assert done == [_planned(action) for action in rule.actions]


def test_the_handshake_machine_has_every_guard_and_action_of_its_table_and_no_other():
    fabric, a, b = pair()
    machine = a.host.handshake
    actions = {_planned(action)[0] for rules in HS_TABLE.values() for rule in rules for action in rule.actions}
    assert set(machine._guards) == set(HS_GUARDS)
    assert set(machine._actions) == actions


def test_a_subsequent_contact_client_confirms_once_its_rkey_is_confirmed():
    """The table's WAIT_RKEY -> SMC for a client is what happens: a Confirm received in
    WAIT_RKEY is unexpected (it used to be a table entry that let it through)."""
    fabric, a, b = pair()
    open_conn(fabric, a, b, 1)
    open_conn(fabric, a, b, 2)
    assert [a.host.conns[i].hs for i in (1, 2)] == [Hs.SMC, Hs.SMC] and not a.host.conns[2].first_contact
    assert ("WAIT_RKEY", "confirm") not in {(s.name, e) for s, e in HS_TABLE}


def test_a_server_waiting_for_the_confirm_keeps_waiting_when_its_link_group_ends():
    """ACCEPT_SENT on link loss stays, as the kernel's smc_listen_work stays in
    smc_clc_wait_msg: the Confirm, when it comes, is declined with ERR_RDYLNK
    (smc_listen_rdma_finish)."""
    fabric, a, b = pair()
    fabric.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), fabric.now)
    a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), fabric.now)
    fabric.run(stop=lambda: b.host.conns[1].hs == Hs.ACCEPT_SENT)
    server = b.host.conns[1]
    b.host.lgrs[0].terminate(fabric.now, DEL.PROG_INIT_TERM, "test", notify_peer=False)
    assert server.hs == Hs.ACCEPT_SENT and server.mode == "INIT"
    fabric.run(until=fabric.now + 1)
    assert server.hs == Hs.FALLBACK and server.fallback_reason == DECL.ERR_RDYLNK
    assert a.host.conns[1].fallback_reason == DECL.PEERDECL and a.host.conns[1].peer_diagnosis == DECL.ERR_RDYLNK


APP_OPS = ("send", "recv", "shutdown", "close", "abort", "run")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(APP_OPS)), max_size=25))
def test_random_close_sequences_end_in_closed(ops):
    fabric, a, b, _ = established()
    hosts = {"a": a, "b": b}
    data = bytes(3000)
    for side, op in ops:
        host = hosts[side].host
        conn = host.conns.get(1)
        if conn is None:
            continue
        try:
            if op == "send":
                host.app_send(1, data, fabric.now)
            elif op == "recv":
                host.app_recv(1, 4096, fabric.now)
            elif op == "shutdown":
                host.app_shutdown_wr(1, fabric.now)
            elif op == "close":
                host.app_close(1, fabric.now)
            elif op == "abort":
                host.app_abort(1, fabric.now)
            else:
                fabric.run(until=fabric.now + 0.001)
        except BrokenPipeError:
            assert conn.state != SmcState.ACTIVE or conn.sent["done_writing"] or conn.pending["done_writing"]
        except ConnectionResetError:  # sending after the peer closed or aborted (the kernel's ECONNRESET)
            assert op == "send" and (conn.peer_closed or conn.peer_abort)
    # whatever happened, closing both ends finishes both connections
    for io in (a, b):
        io.host.app_close(1, fabric.now)
    fabric.run(until=fabric.now + 3)  # longer than the 2 s close flush
    for io in (a, b):
        assert 1 not in io.host.conns, f"{io.name} left in {io.host.conns[1].state.name}"
        assert io.apps[1].closed
    assert not a.host.lgrs[0].conns and not b.host.lgrs[0].conns


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.binary(max_size=200), proposal_prefix=st.booleans())
def test_hostile_clc_bytes_end_the_handshake_cleanly(first, proposal_prefix):
    """Whatever a peer sends during the handshake, the server ends in SMC, TCP or a clear failure."""
    fabric, a, b = pair()
    fabric.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), 0.0)
    data = (clc.EYECATCHER_SMCR + first) if proposal_prefix else first
    b.host.tcp_data(1, data, 0.0)
    fabric.run(until=20)  # past every CLC timeout
    conn_gone = 1 not in b.host.conns
    app = b.apps.get(1)
    assert conn_gone or b.host.conns[1].hs in (Hs.FALLBACK, Hs.SMC), "handshake left hanging"
    if app is not None and app.failed:
        assert "CLC" in app.failed or "malformed" in app.failed or "unexpected" in app.failed


def test_the_state_diagrams_in_the_docs_are_drawn_from_these_tables():
    from pathlib import Path

    from stack.core.states import markdown

    doc = Path(__file__).parent.parent.parent / "docs" / "states.md"
    assert doc.read_text() == markdown(), "docs/states.md is stale: python -m stack.core.states > docs/states.md"
