"""The two FIN close-wait states end to end, both hosts on the in-memory fabric, with the
CDC state flags each side sends (net/smc/smc_close.c):

* APPFINCLOSEWAIT: we shut down writing (PEERCLOSEWAIT1), the peer then closes; our socket
  waits for the application's close(), which sends our close (smc_close_active:
  APPFINCLOSEWAIT, done writing sent and no close yet -> smc_close_final) and ends it;
* PEERFINCLOSEWAIT: the peer shut down writing (APPCLOSEWAIT1), we close (our close goes
  out, smc_close_active), and we wait for the peer's close (smc_close_passive_work).
"""

from __future__ import annotations

from support.fabric import open_conn, pair

from stack.wire.codes import SmcState

FLAGS = ("peer_done_writing", "peer_conn_closed", "peer_conn_abort")


def tx_flags(io) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for e in io.events:
        if e.kind == "cdc.msg" and e.conn == 1 and e.get("dir") == "tx":
            flags = tuple(f for f in e.get("flags") if f in FLAGS)
            if flags and (not out or out[-1] != flags):
                out.append(flags)
    return out


def states(io) -> list[str]:
    return [e.get("new") for e in io.events if e.kind == "conn.state" and e.conn == 1][1:]


def test_appfinclosewait_waits_for_our_close_then_sends_it():
    f, a, b = pair()
    open_conn(f, a, b, 1)
    a.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.01)
    assert a.host.conns[1].state == SmcState.PEERCLOSEWAIT1 and b.host.conns[1].state == SmcState.APPCLOSEWAIT1
    b.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert a.host.conns[1].state == SmcState.APPFINCLOSEWAIT  # the peer closed; our application has not
    assert b.host.conns[1].state == SmcState.PEERFINCLOSEWAIT
    assert tx_flags(a) == [("peer_done_writing",)]  # no close from us yet
    assert a.host.app_recv(1, 100, f.now) == b""  # EOF for the reader
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_flags(a) == [("peer_done_writing",), ("peer_done_writing", "peer_conn_closed")]
    assert tx_flags(b) == [("peer_conn_closed",)]
    assert states(a) == ["PEERCLOSEWAIT1", "APPFINCLOSEWAIT", "CLOSED"]
    assert states(b) == ["APPCLOSEWAIT1", "PEERFINCLOSEWAIT", "CLOSED"]
    assert 1 not in a.host.conns and 1 not in b.host.conns


def test_peerfinclosewait_waits_for_the_peers_close():
    f, a, b = pair()
    open_conn(f, a, b, 1)
    b.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.01)
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert a.host.conns[1].state == SmcState.PEERFINCLOSEWAIT
    assert b.host.conns[1].state == SmcState.APPFINCLOSEWAIT
    assert tx_flags(a) == [("peer_conn_closed",)]
    f.run(until=f.now + 5)  # however long: only the peer's close ends it
    assert a.host.conns[1].state == SmcState.PEERFINCLOSEWAIT
    b.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_flags(b) == [("peer_done_writing",), ("peer_done_writing", "peer_conn_closed")]
    assert states(a) == ["APPCLOSEWAIT1", "PEERFINCLOSEWAIT", "CLOSED"]
    assert states(b) == ["PEERCLOSEWAIT1", "APPFINCLOSEWAIT", "CLOSED"]


def test_an_abort_crossing_the_peers_shutdown_still_ends_both_sides():
    """Found by test_tables.py's random close sequences: b's abort (closing with data unread,
    from PEERCLOSEWAIT1) crosses a's done writing; a takes the abort in APPCLOSEWAIT2 and goes
    CLOSED without a word (smc_close_passive_abort_received), so b would wait in
    PEERCLOSEWAIT2 for a close that never comes, as a kernel would. Released and its abort
    out, b ends when a's done writing arrives (docs/kernel-fidelity.md)."""
    f, a, b = pair()
    open_conn(f, a, b, 1)
    a.host.app_send(1, bytes(3000), f.now)
    b.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.001)
    b.host.app_close(1, f.now)  # data unread: an abort (smc_close_final) from PEERCLOSEWAIT1
    a.host.app_shutdown_wr(1, f.now)  # at the same moment: done writing from APPCLOSEWAIT1
    f.run(until=f.now + 0.001)
    for io in (a, b):
        io.host.app_close(1, f.now)
    f.run(until=f.now + 3)
    assert 1 not in a.host.conns
    assert 1 not in b.host.conns, b.host.conns[1].state.name
