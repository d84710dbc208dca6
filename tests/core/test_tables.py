"""Properties of the state machines beyond single transitions (those are checked against
hand-written expected tables in test_expected_tables.py, not against the code's own tables):
the handshake machine implements every guard and action its table names; random sequences
of closes, shutdowns and aborts on both ends always end in CLOSED with no other exception;
hostile CLC bytes end every handshake cleanly; the docs are drawn from the tables.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fabric import open_conn, pair

from stack.core.states import HS_TABLE, Hs
from stack.wire import clc
from stack.wire.codes import DECL, DEL, SmcState


def established():
    fabric, a, b = pair()
    open_conn(fabric, a, b, 1)
    return fabric, a, b, a.host.conns[1]


HS_GUARDS = sorted({rule.guard for rules in HS_TABLE.values() for rule in rules if rule.guard})


def test_the_handshake_machine_has_every_guard_and_action_of_its_table_and_no_other():
    fabric, a, b = pair()
    machine = a.host.handshake
    actions = {action.partition("(")[0] for rules in HS_TABLE.values() for rule in rules for action in rule.actions}
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
