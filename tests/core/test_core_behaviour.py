"""The sans-I/O core on the in-memory fabric: link group reuse, fallback decisions,
timeouts, TEST LINK, protocol violations and every close path, checked by state, reason
code and event."""

from __future__ import annotations

import pytest
from support.fabric import open_conn, pair

from stack.core.config import SmcConfig, Timeouts
from stack.wire import cdc, clc, codes
from stack.wire.codes import DECL, SmcState


def cfg(host, **kw) -> SmcConfig:
    return SmcConfig(host=host, **kw)


def kinds(io, kind):
    return [e for e in io.events if e.kind == kind]


def test_second_connection_reuses_the_link_group_with_confirm_rkey():
    """A second connection while the first is open: a new RMB, announced by CONFIRM RKEY."""
    f, a, b = pair()
    open_conn(f, a, b, 1)
    open_conn(f, a, b, 2)
    assert a.apps[2].established and b.apps[2].established
    assert len(a.host.lgrs) == len(b.host.lgrs) == 1
    assert [c.first_contact for c in b.host.conns.values()] == [True, False]
    assert [e.get("dir") for e in kinds(a, "llc.msg") if "RKEY" in e.get("type", "")] == ["rx", "tx", "tx", "rx"]
    accept2 = [e for e in kinds(a, "clc.msg") if e.get("type") == "Accept"][1]
    assert accept2.get("first_contact") is False and accept2.get("qpn") == a.host.conns[1].link.peer_qpn


def test_many_concurrent_connections_share_one_link_group():
    f, a, b = pair()
    for cid in range(1, 201):
        f.connect_tcp(a, cid, b, cid)
        b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now)
        a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now)
    f.run(until=5)
    assert all(a.apps[c].established and b.apps[c].established for c in range(1, 201))
    assert len(a.host.lgrs) == len(b.host.lgrs) == 1 and len(b.host.lgrs[0].conns) == 200
    assert sum(c.first_contact for c in b.host.conns.values()) == 1
    assert len({c.token for c in b.host.conns.values()}) == 200


FALLBACKS = [
    # (client config, server config, server smc, client reason, client peer diagnosis, server reason)
    ("forced decline", {}, {"forced_decline": DECL.DIFFPREFIX}, True, DECL.PEERDECL, DECL.DIFFPREFIX, DECL.DIFFPREFIX),
    ("prefix mismatch", {"versions": frozenset({1})}, {"prefix_len": 24}, True, DECL.PEERDECL, DECL.DIFFPREFIX, DECL.DIFFPREFIX),
    ("v2 only against v1 only", {"versions": frozenset({2})}, {"versions": frozenset({1})}, True, DECL.PEERDECL, DECL.VERSMISMAT, DECL.VERSMISMAT),
    # as the kernel (tests/lab/test_kernel_interop.py): no common UEID is NOSMCDEV; NOUEID means the Proposal had none
    ("v2 only, no common UEID", {"versions": frozenset({2}), "ueids": ("EID-A",)}, {"ueids": ("EID-B",)}, True, DECL.PEERDECL, DECL.NOSMCDEV, DECL.NOSMCDEV),
    ("v2 only, server has no UEID", {"versions": frozenset({2})}, {"ueids": ()}, True, DECL.PEERDECL, DECL.NOSMCDEV, DECL.NOSMCDEV),
    ("server is not SMC", {}, {}, False, DECL.PEERNOSMC, DECL.PEERNOSMC, 0),
]


@pytest.mark.parametrize("name,ccfg,scfg,server_smc,c_reason,c_diag,s_reason", FALLBACKS, ids=[x[0] for x in FALLBACKS])
def test_fallback_reasons_on_both_sides(name, ccfg, scfg, server_smc, c_reason, c_diag, s_reason):
    f, a, b = pair(cfg("client", **ccfg), cfg("server", **scfg))
    open_conn(f, a, b, 1, server_smc=server_smc)
    assert a.apps[1].fallback and b.apps[1].fallback
    ca, cb = a.host.conns[1], b.host.conns[1]
    assert (ca.mode, ca.fallback_reason, ca.peer_diagnosis) == ("TCP", c_reason, c_diag)
    assert (cb.mode, cb.fallback_reason) == ("TCP", s_reason)
    fb = kinds(a, "conn.fallback")[0]
    assert fb.get("reason_text") == codes.format_reason(c_reason)
    assert not a.host.lgrs and not b.host.lgrs  # nothing left behind


@pytest.mark.parametrize("reason", [c.value for c in codes.DECLINE_REASONS if c.value not in codes.FALLBACK_WITHOUT_DECLINE])
def test_server_declines_with_each_code(reason):
    f, a, b = pair(server_cfg=cfg("server", forced_decline=reason))
    open_conn(f, a, b, 1)
    assert a.host.conns[1].fallback_reason == DECL.PEERDECL and a.host.conns[1].peer_diagnosis == reason
    assert b.host.conns[1].fallback_reason == reason
    decline = [e for e in kinds(b, "clc.msg") if e.get("type") == "Decline"][0]
    assert decline.get("diagnosis") == reason and decline.get("out_of_sync") == (reason == DECL.SYNCERR)


def test_no_rdma_device_on_either_side():
    f, a, b = pair(client_devices=False)
    open_conn(f, a, b, 1)
    assert a.host.conns[1].fallback_reason == DECL.NOSMCDEV
    assert (b.host.conns[1].fallback_reason, b.host.conns[1].peer_diagnosis) == (DECL.PEERDECL, DECL.NOSMCDEV)
    f, a, b = pair(server_devices=False)
    open_conn(f, a, b, 1)
    assert (a.host.conns[1].fallback_reason, a.host.conns[1].peer_diagnosis) == (DECL.PEERDECL, DECL.NOSMCRDEV)
    assert b.host.conns[1].fallback_reason == DECL.NOSMCRDEV


def test_version_downgrade_is_not_a_fallback():
    f, a, b = pair(server_cfg=cfg("server", versions=frozenset({1})))
    open_conn(f, a, b, 1)
    assert a.apps[1].established and a.host.conns[1].version == 1
    f, a, b = pair(cfg("client", ueids=("EID-A",)), cfg("server", ueids=("EID-B",)))
    open_conn(f, a, b, 1)  # no common UEID: the server silently takes v1, as Linux does
    assert a.apps[1].established and a.host.conns[1].version == 1


def test_plain_tcp_client_gets_peernosmc_and_its_bytes():
    f, a, b = pair()
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), 0.0)
    b._tcp_in(1, b"GET / HTTP/1.0\r\n\r\n")
    assert b.apps[1].fallback and bytes(b.apps[1].tcp_in) == b"GET / HTTP/1.0\r\n\r\n"
    assert b.host.conns[1].fallback_reason == DECL.PEERNOSMC


def test_clc_timeout_fails_the_connection():
    f, a, b = pair(cfg("client", timeouts=Timeouts(clc_wait=0.5)))
    f.connect_tcp(a, 1, b, 1)
    b.dead = True  # accepts TCP, never answers
    a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), 0.0)
    f.run(until=1.0)
    assert a.apps[1].failed == "CLC timeout: no Accept within 0.5 s"
    assert 1 not in a.host.conns and [e.get("reason") for e in kinds(a, "conn.error")] == [a.apps[1].failed]


@pytest.mark.parametrize(
    "reply,words",
    [
        (clc.EYECATCHER_SMCR + b"\x02\x00\x45\x10" + bytes(57) + clc.EYECATCHER_SMCR, "exactly 68 bytes"),
        (clc.EYECATCHER_SMCR + b"\x09\x00\x20\x10" + bytes(20) + clc.EYECATCHER_SMCR, "unknown CLC message type 9"),
        (clc.Proposal(bytes(8), bytes(16), bytes(6), prefix=clc.IpPrefixArea()).encode(), "unexpected Proposal in handshake state PROPOSAL_SENT"),
    ],
)
def test_malformed_clc_fails_the_connection_with_a_clear_error(reply, words):
    f, a, b = pair()
    f.connect_tcp(a, 1, b, 1)
    b.dead = True
    a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), 0.0)
    a.host.tcp_data(1, reply, 0.001)
    assert words in (a.apps[1].failed or ""), a.apps[1].failed


def test_confirm_link_never_arrives():
    f, a, b = pair(cfg("client", timeouts=Timeouts(client_confirm_link=0.2)))
    orig = b.post_send
    b.post_send = lambda qp, wr, payload: payload[0] in (0x01, 0x21) or orig(qp, wr, payload)  # swallow CONFIRM LINK
    open_conn(f, a, b, 1)
    f.run(until=1)
    assert a.host.conns[1].fallback_reason == DECL.TIMEOUT_CL
    assert b.host.conns[1].fallback_reason == DECL.PEERDECL and b.host.conns[1].peer_diagnosis == DECL.TIMEOUT_CL
    assert not a.host.lgrs and not b.host.lgrs


def test_cursor_beyond_the_rmb_is_a_protocol_violation():
    f, a, b = pair()
    open_conn(f, a, b, 1)
    victim = b.host.conns[1]
    bad = cdc.CdcMessage(seqno=5, token=victim.token, prod=cdc.Cursor(0, victim.rmb_size + 10))
    victim.link.received(bad.encode(), f.now)
    assert victim.state == SmcState.CLOSED or 1 not in b.host.conns
    assert "protocol violation by the peer: cursor out of range" in b.apps[1].close_error
    f.run(until=f.now + 0.01)
    assert a.host.conns[1].peer_abort and a.host.conns[1].state == SmcState.PROCESSABORT


def test_more_data_than_the_rmb_holds_is_a_protocol_violation():
    f, a, b = pair()
    open_conn(f, a, b, 1)
    victim = b.host.conns[1]
    victim.link.received(cdc.CdcMessage(seqno=5, token=victim.token, prod=cdc.Cursor(1, 100)).encode(), f.now)
    assert "claims" in b.apps[1].close_error and "more than the RMB holds" in b.apps[1].close_error


def test_test_link_timeout_takes_the_link_group_down():
    t = Timeouts(test_link=0.5, llc_wait=0.3)  # the TEST LINK answer is missed before the RC retries run out
    f, a, b = pair(cfg("client", timeouts=t), cfg("server", timeouts=t))
    open_conn(f, a, b, 1)
    b.dead = True  # the peer vanishes without a word
    f.run(until=f.now + 3.0)
    assert [e.get("event") for e in kinds(a, "link.event")][-2:] == ["test_link_timeout", "down"]
    assert kinds(a, "link.event")[-1].t == pytest.approx(0.5 + 0.3, abs=0.01)
    assert a.apps[1].closed and "TEST LINK not answered" in a.apps[1].close_error
    assert not a.host.lgrs
    states = [e.get("new") for e in kinds(a, "lgr.state")]
    assert states[-1] == "NONE"


def test_delete_link_all_from_the_peer_terminates_both_sides():
    f, a, b = pair()
    open_conn(f, a, b, 1)
    lgr = b.host.lgrs[0]
    lgr.terminate(f.now, 0x00020000, "operator")
    f.run(until=f.now + 0.01)
    assert not a.host.lgrs and a.apps[1].closed and a.apps[1].close_error  # the abort CDC came first
    assert kinds(a, "lgr.state")[-1].get("cause") == "peer deleted the link group (0x00020000 OP_INIT_TERM)"
    dl = [e for e in kinds(a, "llc.msg") if e.get("type") == "LLC DELETE LINK v2"][0]
    assert dl.get("all") and dl.get("reason") == 0x00020000


def test_sync_error_when_the_accept_names_an_unknown_link():
    f, a, b = pair()
    open_conn(f, a, b, 1)
    # the client forgets its link group: the server's next Accept (reuse) names a QP the client does not know
    lost = a.host.lgrs.pop()
    open_conn(f, a, b, 2)
    assert a.host.conns[2].fallback_reason == DECL.SYNCERR
    decline = [e for e in kinds(a, "clc.msg") if e.get("type") == "Decline"][-1]
    assert decline.get("out_of_sync") is True
    assert b.host.conns[2].peer_diagnosis == DECL.SYNCERR
    assert lost is not None
    # the fallback says what the client saw and the likely cause (a v2 peer tells peers apart by GID only)
    fb = [e for e in kinds(a, "conn.fallback") if e.conn == 2][-1]
    assert fb.get("cause", "").startswith("the server reuses a link group this stack does not have, or whose link failed (its link to QP 0x"), fb
    assert "; if no link failed: another SMC stack using this host's RoCE GID" in fb.get("cause")


def _kernel_pooling() -> tuple[SmcConfig, SmcConfig]:
    """RMBs kept registered for the next connection, as the kernel keeps them (our default
    deregisters them at close: tests/core/test_security_context.py)."""
    return SmcConfig(host="client", rmb_keep_registered=True), SmcConfig(host="server", rmb_keep_registered=True)


def _close_states(io) -> list[str]:
    return [e.get("new") for e in kinds(io, "conn.state")][1:]


@pytest.mark.parametrize(
    "script,client_states,server_states",
    [
        ("active", ["PEERCLOSEWAIT1", "CLOSED"], ["APPCLOSEWAIT1", "CLOSED"]),
        ("simultaneous", ["PEERCLOSEWAIT1", "CLOSED"], ["PEERCLOSEWAIT1", "CLOSED"]),
        ("shutdown", ["PEERCLOSEWAIT1", "PEERCLOSEWAIT2", "CLOSED"], ["APPCLOSEWAIT1", "APPCLOSEWAIT2", "CLOSED"]),
        ("abort", ["PEERABORTWAIT", "CLOSED"], ["PROCESSABORT", "CLOSED"]),
        ("unread data", ["PEERCLOSEWAIT1", "CLOSED"], ["PROCESSABORT", "CLOSED"]),
    ],
)
def test_close_paths(script, client_states, server_states):
    f, a, b = pair(*_kernel_pooling())
    open_conn(f, a, b, 1)
    now = lambda: f.now  # noqa: E731
    if script == "active":
        a.host.app_close(1, now())
        f.run(until=now() + 0.01)
        b.host.app_close(1, now())
    elif script == "simultaneous":
        a.host.app_close(1, now())
        b.host.app_close(1, now())
    elif script == "shutdown":
        a.host.app_shutdown_wr(1, now())
        f.run(until=now() + 0.01)
        assert b.host.conns[1].eof
        b.host.app_shutdown_wr(1, now())
        f.run(until=now() + 0.01)
        a.host.app_close(1, now())
        f.run(until=now() + 0.01)
        b.host.app_close(1, now())
    elif script == "abort":
        a.host.app_abort(1, now())
        f.run(until=now() + 0.01)
        b.host.app_close(1, now())
    else:
        b.host.app_send(1, b"never read", now())
        f.run(until=now() + 0.01)
        a.host.app_close(1, now())  # closing with unread data sends an abort, not a close
        f.run(until=now() + 0.01)
        b.host.app_close(1, now())
    f.run(until=now() + 0.01)
    assert _close_states(a) == client_states and _close_states(b) == server_states
    assert a.apps[1].closed and b.apps[1].closed
    flags = [e.get("flags") for e in kinds(a, "cdc.msg") if e.get("dir") == "tx"]
    if script in ("abort", "unread data"):
        assert ["peer_conn_abort"] in flags
    # the RMBs were unregistered with the peer (DELETE RKEY) and went back to the link group,
    # zeroed, still registered here, with the send buffers (smcr_buf_unuse)
    assert any(e.get("type", "").startswith("LLC DELETE RKEY") for e in kinds(a, "llc.msg"))
    for io in (a, b):
        lgr = io.host.lgrs[0]
        assert not lgr.conns
        assert [(buf.in_use, buf.confirmed) for buf in lgr.rmbs] == [(False, False)]
        assert [buf.in_use for buf in lgr.sndbufs] == [False] and all(buf.regs for buf in lgr.rmbs + lgr.sndbufs)
        assert bytes(lgr.rmbs[0].buf) == bytes(lgr.rmbs[0].size)


def test_a_new_connection_reuses_a_closed_ones_buffers():
    """As smc_buf_get_slot: the next connection takes the closed one's RMB and send buffer
    (no new registration) and announces the RMB again with CONFIRM RKEY."""
    f, a, b = pair(*_kernel_pooling())
    open_conn(f, a, b, 1)
    open_conn(f, a, b, 2)  # a second RMB: CONFIRM RKEY both ways
    first = {io.name: (io.host.conns[2].rmb, io.host.conns[2].sndbuf) for io in (a, b)}
    regs = {io.name: dict(first[io.name][0].regs) for io in (a, b)}
    a.host.app_send(2, b"x" * 5000, f.now)
    f.run(until=f.now + 0.01)
    assert b.host.app_recv(2, 5000, f.now) == b"x" * 5000
    for io in (a, b):
        io.host.app_close(2, f.now)
    f.run(until=f.now + 0.01)
    assert 2 not in a.host.conns and 2 not in b.host.conns
    rkey_msgs = len([e for e in kinds(a, "llc.msg") if "CONFIRM RKEY" in e.get("type", "")])
    open_conn(f, a, b, 3)
    assert a.apps[3].established and b.apps[3].established
    for io in (a, b):
        conn = io.host.conns[3]
        assert (conn.rmb, conn.sndbuf) == first[io.name] and conn.rmb.regs == regs[io.name] and not conn.first_contact
        assert bytes(conn.rmb.buf[:5000]) == bytes(5000)  # zeroed for its new owner
    assert len([e for e in kinds(a, "llc.msg") if "CONFIRM RKEY" in e.get("type", "")]) == rkey_msgs + 4
    a.host.app_send(3, b"y" * 3000, f.now)
    f.run(until=f.now + 0.01)
    assert b.host.app_recv(3, 3000, f.now) == b"y" * 3000


def test_a_late_write_after_the_peer_aborted_lands_in_registered_memory():
    """The peer aborts and frees the connection while our RDMA WRITE is on its way: the RMB
    is still registered (unused), so the write completes and the link survives."""
    f, a, b = pair()
    open_conn(f, a, b, 1)
    a.host.app_abort(1, f.now)
    b.host.app_send(1, bytes(3000), f.now)  # before the abort reaches b
    b.host.app_send(1, bytes(3000), f.now)
    f.run(until=f.now + 0.5)
    assert not any(e.get("event") == "qp_error" for io in (a, b) for e in kinds(io, "link.event"))
    assert a.host.lgrs and b.host.lgrs and not a.host.lgrs[0].terminated and not b.host.lgrs[0].terminated


def test_idle_link_group_is_freed():
    t = Timeouts(lgr_idle=5.0)
    f, a, b = pair(cfg("client", timeouts=t), cfg("server", timeouts=t))
    open_conn(f, a, b, 1)
    a.host.app_close(1, f.now)
    b.host.app_close(1, f.now)
    f.run(until=f.now + 4)
    assert a.host.lgrs and b.host.lgrs
    f.run(until=f.now + 20)
    assert not a.host.lgrs and not b.host.lgrs
    dl = [e for e in kinds(a, "llc.msg") if "DELETE LINK" in e.get("type", "")]
    assert dl and dl[0].get("reason") == 0x00030000 and dl[0].get("orderly")


@pytest.mark.parametrize("first_contact", [True, False])
def test_data_that_overtakes_the_confirm_is_kept(first_contact):
    """The client is done once its Confirm is on TCP and may write at once over RDMA; its CDC
    can reach the server before the Confirm does. The data must not be lost."""
    f, a, b = pair()
    if not first_contact:
        open_conn(f, a, b, 1)
    cid = 2
    slow_tcp = a.tcp_send

    def tcp_send(conn, data):  # the Confirm takes 5 ms on TCP, RDMA takes 50 us
        if data[4:5] == b"\x03":
            f.at(f.now + 0.005, lambda: slow_tcp(conn, data))
        else:
            slow_tcp(conn, data)

    a.tcp_send = tcp_send
    f.connect_tcp(a, cid, b, cid)
    b.host.server_start(cid, (b.ip, 5000), (a.ip, 40002), f.now)
    a.host.client_start(cid, (a.ip, 40002), (b.ip, 5000), f.now)
    f.run(stop=lambda: a._app(cid).established)
    assert a.host.app_send(cid, b"sent before the server saw our Confirm", f.now) == 38
    f.run(until=f.now + 0.01)
    assert b.apps[cid].established
    assert b.host.app_recv(cid, 100, f.now) == b"sent before the server saw our Confirm"


def test_aborting_a_connection_mid_handshake_frees_it_and_the_group_can_end():
    """An application that aborts while its CONFIRM RKEY is outstanding: the connection is
    gone from its link group, and terminating the group later (stack closing) is clean."""
    f, a, b = pair()
    open_conn(f, a, b, 1)
    f.connect_tcp(a, 2, b, 2)
    a.host.client_start(2, (a.ip, 40002), (b.ip, 5000), f.now)
    b.host.server_start(2, (b.ip, 5000), (a.ip, 40002), f.now)
    for _ in range(200):  # until the server waits for its CONFIRM RKEY
        f.run(until=f.now + 0.00001)
        if b.host.conns[2].hs.name == "WAIT_RKEY":
            break
    conn = b.host.conns[2]
    assert conn.hs.name == "WAIT_RKEY"
    b.host.app_abort(2, f.now)
    assert 2 not in b.host.conns and conn.token not in b.host.lgrs[0].conns
    b.host.lgrs[0].terminate(f.now, 0x00020000, "stack closing")  # must not raise
    f.run(until=f.now + 1)
    assert not b.host.lgrs


def test_a_received_cdc_event_shows_the_bytes_as_they_came():
    """The rx cdc.msg event carries the 44 bytes as received (reserved bytes and unknown flag
    bits included, as the llc.msg event shows its message's own bytes), and its flags are the
    ones the stack acts on."""
    f, a, b = pair()
    open_conn(f, a, b, 1)
    victim = b.host.conns[1]
    wire = bytearray(cdc.CdcMessage(seqno=victim.rx_seq + 1, token=victim.token, prod=victim.rx_prod, cons=victim.rx_cons,
                                    write_blocked=True, peer_done_writing=True).encode())  # fmt: skip
    wire[24] |= 0x03  # producer flag bits the protocol does not define
    wire[30:34] = b"\xde\xad\xbe\xef"  # reserved
    since = len(b.events)
    victim.link.received(bytes(wire), f.now)
    (ev,) = [e for e in b.events[since:] if e.kind == "cdc.msg" and e.get("dir") == "rx"]
    assert ev.get("raw") == bytes(wire) and ev.get("seqno") == victim.rx_seq
    assert ev.get("flags") == ["write_blocked", "peer_done_writing"] and victim.peer_done_writing


@pytest.mark.parametrize("wire, event", [
    (b"\xfe" + bytes(10), "bad_cdc"),  # a CDC cut short
    (bytes([0x7f, 44]) + bytes(42), "bad_llc"),  # an LLC type nobody defines
])  # fmt: skip
def test_a_message_that_cannot_be_decoded_is_reported_with_its_bytes(wire, event):
    """What the peer sent is in the event, so an operator can tell a corrupt frame from a
    message we do not know (the kernel's ADD LINK echo was first seen this way)."""
    f, a, b = pair()
    open_conn(f, a, b, 1)
    link = b.host.conns[1].link
    since, errors = len(b.events), link.rx_errors
    link.received(wire, f.now)
    (ev,) = [e for e in b.events[since:] if e.kind == "link.event"]
    assert ev.get("event") == event and ev.get("raw") == wire and ev.get("reason")
    assert link.rx_errors == errors + 1 and b.apps[1].established
