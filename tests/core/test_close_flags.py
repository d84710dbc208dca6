"""The close flags a kernel peer sees (issue 16 item 5), on the in-memory fabric.

net/smc/smc_close.c: every path that ends our side sends smc_close_final, which is an
abort whenever received data remains unread and a close otherwise (decided when it goes
out, after smc_close_stream_wait); the wait for the send buffer lasts at most
SMC_MAX_STREAM_WAIT_TIMEOUT (2 s) and after it the close goes anyway, as a close, not an
abort; once the peer's close has arrived there is no wait.
"""

from __future__ import annotations

import pytest
from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.wire.codes import SmcState

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}
STATE_FLAGS = ("peer_done_writing", "peer_conn_closed", "peer_conn_abort")


def tx_state_flags(io, cid: int = 1) -> list[tuple[str, ...]]:
    """The connection state flags of every CDC ``io`` sent on ``cid``, once each change."""
    out: list[tuple[str, ...]] = []
    for e in io.events:
        if e.kind == "cdc.msg" and e.conn == cid and e.get("dir") == "tx":
            flags = tuple(f for f in e.get("flags") if f in STATE_FLAGS)
            if not out or out[-1] != flags:
                out.append(flags)
    return [f for f in out if f]


def states(io, cid: int = 1) -> list[str]:
    return [e.get("new") for e in io.events if e.kind == "conn.state" and e.conn == cid][1:]


def setup(**kw):
    f, a, b = pair(SmcConfig(host="client", **kw), SmcConfig(host="server", **kw))
    open_conn(f, a, b, 1)
    return f, a, b


def test_close_with_unread_data_sends_abort_and_the_peer_processes_it():
    f, a, b = setup()
    b.host.app_send(1, b"never read", f.now)
    f.run(until=f.now + 0.01)
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a) == [("peer_conn_abort",)]
    assert a.host.conns[1].state == SmcState.PEERCLOSEWAIT1
    assert b.host.conns[1].state == SmcState.PROCESSABORT and b.host.conns[1].peer_abort
    b.host.app_close(1, f.now)  # smc_close_abort from PROCESSABORT
    f.run(until=f.now + 0.01)
    assert tx_state_flags(b) == [("peer_conn_abort",)]
    assert states(a) == ["PEERCLOSEWAIT1", "CLOSED"] and states(b) == ["PROCESSABORT", "CLOSED"]


def test_close_with_everything_read_sends_closed():
    f, a, b = setup()
    b.host.app_send(1, b"read", f.now)
    f.run(until=f.now + 0.01)
    assert a.host.app_recv(1, 100, f.now) == b"read"
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a) == [("peer_conn_closed",)]


def test_the_final_flag_is_decided_when_it_goes_out_after_the_send_buffer_wait():
    """smc_close_active waits for the send buffer first, then smc_close_final looks at
    bytes_to_rcv: data that arrives during the wait makes it an abort."""
    f, a, b = setup(**SMALL)
    assert b.host.conns[1].rmb is not None  # the server reads nothing: our writes fill its RMB
    assert a.host.app_send(1, bytes(16384), f.now) == 16384
    f.run(until=f.now + 0.01)
    assert a.host.app_send(1, bytes(8000), f.now) == 8000  # waits in our sndbuf: the peer's RMB is full
    a.host.app_close(1, f.now)
    assert a.host.conns[1].pending["final"] and not tx_state_flags(a)
    b.host.app_send(1, b"late", f.now)  # arrives while our close waits
    f.run(until=f.now + 0.01)
    assert b.host.app_recv(1, 20000, f.now)  # the peer reads: our sndbuf drains, the final flag goes
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a) == [("peer_conn_abort",)]


def test_after_the_wait_the_close_goes_as_closed_not_abort_and_the_rest_follows():
    """smc_close_stream_wait gives up after 2 s; smc_close_final then sends a close (the
    flag is not an abort because data could not be sent); what was not sent yet still goes
    when the peer makes room (smc_tx_pending on its consumer update)."""
    f, a, b = setup(**SMALL)
    assert a.host.app_send(1, bytes(16384), f.now) == 16384
    f.run(until=f.now + 0.01)
    assert a.host.app_send(1, b"x" * 5000, f.now) == 5000
    a.host.app_close(1, f.now)
    t0 = f.now
    f.run(until=t0 + 1.9)
    assert not tx_state_flags(a)
    f.run(until=t0 + 2.1)
    assert tx_state_flags(a) == [("peer_conn_closed",)]
    assert a.host.conns[1].state == SmcState.PEERCLOSEWAIT1 and not a.apps[1].close_error
    server = b.host.conns[1]
    assert server.state == SmcState.APPCLOSEWAIT1 and not server.peer_abort
    got = b.host.app_recv(1, 1 << 20, f.now)
    f.run(until=f.now + 0.01)
    got += b.host.app_recv(1, 1 << 20, f.now)
    assert got == bytes(16384) + b"x" * 5000  # nothing lost
    b.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert states(a) == ["PEERCLOSEWAIT1", "CLOSED"] and states(b) == ["APPCLOSEWAIT1", "CLOSED"]


@pytest.mark.parametrize("peer", ["shutdown", "close"])
def test_passive_close_with_unread_data_sends_abort(peer):
    """APPCLOSEWAIT1 (the peer shut down or closed): our close is smc_close_final too."""
    f, a, b = setup()
    b.host.app_send(1, b"unread", f.now)
    (b.host.app_shutdown_wr if peer == "shutdown" else b.host.app_close)(1, f.now)
    f.run(until=f.now + 0.01)
    assert a.host.conns[1].state == SmcState.APPCLOSEWAIT1
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a) == [("peer_conn_abort",)]
    if peer == "close":  # no wait once the peer's close is in: CLOSED at once
        assert states(a) == ["APPCLOSEWAIT1", "CLOSED"]
    else:
        assert states(a)[:2] == ["APPCLOSEWAIT1", "PEERFINCLOSEWAIT"]


def test_close_after_our_shutdown_with_unread_data_sends_abort():
    """PEERCLOSEWAIT1 after shutdown(SHUT_WR): close() sends smc_close_final, an abort
    when the peer's data is unread (it used to be a close)."""
    f, a, b = setup()
    a.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.01)
    b.host.app_send(1, b"unread", f.now)
    f.run(until=f.now + 0.01)
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a) == [("peer_done_writing",), ("peer_done_writing", "peer_conn_abort")]


def test_both_shut_down_then_close_with_unread_data_sends_abort():
    """APPCLOSEWAIT2: the peer sent data and shut down, we shut down unread, then close."""
    f, a, b = setup()
    b.host.app_send(1, b"unread", f.now)
    b.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.01)
    a.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.01)
    assert a.host.conns[1].state == SmcState.APPCLOSEWAIT2
    a.host.app_close(1, f.now)
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a)[-1] == ("peer_done_writing", "peer_conn_abort")


def test_bytes_the_runtime_read_ahead_count_as_unread():
    """The streams pull bytes out of the RMB ahead of the application; at close the runtime
    says how many the application never read, and they make the final flag an abort."""
    f, a, b = setup()
    b.host.app_send(1, b"line\nrest", f.now)
    f.run(until=f.now + 0.01)
    assert a.host.app_recv(1, 100, f.now) == b"line\nrest"  # all of it in the stream's buffer
    a.host.conns[1].app_close(f.now, unread=4)  # the application read the line only
    f.run(until=f.now + 0.01)
    assert tx_state_flags(a) == [("peer_conn_abort",)]


def test_a_pending_close_goes_out_before_the_connection_ends_when_the_peer_closes_meanwhile():
    """PEERFINCLOSEWAIT with our final flag still waiting for the sndbuf: the peer's close
    does not end the socket before our flag is out (the kernel is still in its stream wait)."""
    f, a, b = setup(**SMALL)
    b.host.app_shutdown_wr(1, f.now)
    f.run(until=f.now + 0.01)
    assert a.host.app_send(1, bytes(16384), f.now) == 16384
    f.run(until=f.now + 0.01)
    assert a.host.app_send(1, bytes(100), f.now) == 100
    a.host.app_close(1, f.now)
    assert a.host.conns[1].state == SmcState.PEERFINCLOSEWAIT and a.host.conns[1].pending["final"]
    b.host.app_recv(1, 1 << 20, f.now)
    b.host.app_close(1, f.now)
    f.run(until=f.now + 0.05)
    assert 1 not in a.host.conns and 1 not in b.host.conns
    assert tx_state_flags(a)[-1] == ("peer_conn_closed",)
