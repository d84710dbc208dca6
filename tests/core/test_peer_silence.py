"""A server whose client says nothing (smc_listen_work waits in smc_clc_wait_msg for the
Proposal): after ``timeouts.peer_first_bytes`` of silence the peer is taken for plain TCP
(PEERNOSMC), while some bytes that never make a CLC message fail the connection instead.
A short configured timeout keeps the test fast; the virtual clock makes it exact."""

from __future__ import annotations

from support.fabric import pair

from stack.core.config import SmcConfig, Timeouts
from stack.core.states import Hs
from stack.wire import clc
from stack.wire.codes import DECL


def _server_waiting(wait: float):
    f, a, b = pair(server_cfg=SmcConfig(host="server", timeouts=Timeouts(peer_first_bytes=wait)))
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), f.now)
    return f, b


def test_silence_until_the_timeout_is_plain_tcp():
    f, b = _server_waiting(0.5)
    f.run(until=0.499)
    conn = b.host.conns[1]
    assert conn.hs == Hs.WAIT_PROPOSAL and not b._app(1).fallback  # still waiting, nothing decided
    f.run(until=0.501)
    assert conn.hs == Hs.FALLBACK and conn.mode == "TCP" and conn.fallback_reason == DECL.PEERNOSMC
    assert b.apps[1].fallback and not b.apps[1].failed
    sent = [e for e in b.events if e.kind == "clc.msg" and e.get("dir") == "tx"]
    assert sent == []  # no Decline to a peer that speaks no CLC


def test_a_partial_clc_message_then_silence_fails_the_connection():
    f, b = _server_waiting(0.5)
    b.host.tcp_data(1, clc.EYECATCHER_SMCR + b"\x01", f.now)  # the start of a Proposal, never finished
    f.run(until=1.0)
    assert b.host.conns.get(1) is None or b.host.conns[1].hs == Hs.FAILED
    assert b.apps[1].failed and not b.apps[1].fallback
