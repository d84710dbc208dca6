"""Expected transition tables written by hand from the kernel (net/smc), not read from
stack/core/states.py, and the real machines driven against them.

Each row says, for a state, an input and the situation that matters (unread data, what we
and the peer already sent, whether the application released the socket): the next state,
and for the close machine the connection state flags of the CDC the action sends (None: no
CDC). Every row cites the kernel function it comes from; rows marked ``stack:`` are where
the stack splits one kernel step in two (the kernel does both halves under one lock). A
pair that no row lists must be a protocol error. So a wrong table entry, a missing or extra
entry, or a wrong CDC flag fails here, whatever the code's own table says.
"""

from __future__ import annotations

import itertools

import pytest
from support.fabric import open_conn, pair

from stack.core import cursor as curs
from stack.core.states import Hs, ProtocolError
from stack.wire.codes import DECL, LinkState, SmcState

S = SmcState
DW, CL, AB = "peer_done_writing", "peer_conn_closed", "peer_conn_abort"

# situation words: unread (bytes_to_rcv > 0), peer_closed (smc_cdc_rxed_any_close), dw_sent /
# closed_sent (our local_tx_ctrl flags: done writing, closed), released (SOCK_DEAD: close()
# was called), pending (our final flag waits for the sndbuf: the kernel is in smc_close_stream_wait)
CLOSE_ROWS: list[tuple[SmcState, str, frozenset, SmcState, set | str | None, str]] = []


def row(state, event, situation, nxt, cdc, where):
    CLOSE_ROWS.append((state, event, frozenset(situation.split()), nxt, cdc, where))


# --- close(): smc_close_active; the flag it sends is smc_close_final (abort if data is unread)
row(S.INIT, "app_close", "", S.CLOSED, None, "smc_close_active: SMC_INIT")
row(S.LISTEN, "app_close", "", S.CLOSED, None, "smc_close_active: SMC_LISTEN")
row(S.ACTIVE, "app_close", "", S.PEERCLOSEWAIT1, {CL}, "smc_close_active: SMC_ACTIVE, smc_close_final")
row(S.ACTIVE, "app_close", "unread", S.PEERCLOSEWAIT1, {AB}, "smc_close_final: bytes_to_rcv -> smc_close_abort")
row(S.ACTIVE, "app_close", "unsent", S.PEERCLOSEWAIT1, "final queued", "smc_close_active: smc_close_stream_wait first")
row(S.APPCLOSEWAIT1, "app_close", "peer_closed", S.CLOSED, {CL}, "smc_close_active: APPCLOSEWAIT1, rxed close")
row(S.APPCLOSEWAIT1, "app_close", "peer_closed unread", S.CLOSED, {AB}, "smc_close_active + smc_close_final")
row(S.APPCLOSEWAIT1, "app_close", "", S.PEERFINCLOSEWAIT, {CL}, "smc_close_active: peer only shut down")
row(S.APPCLOSEWAIT1, "app_close", "unread", S.PEERFINCLOSEWAIT, {AB}, "smc_close_active + smc_close_final")
row(S.APPCLOSEWAIT2, "app_close", "dw_sent peer_closed", S.CLOSED, {DW, CL}, "smc_close_active: APPCLOSEWAIT2, rxed close")
row(S.APPCLOSEWAIT2, "app_close", "dw_sent", S.PEERFINCLOSEWAIT, {DW, CL}, "smc_close_active: APPCLOSEWAIT2")
row(S.APPCLOSEWAIT2, "app_close", "dw_sent unread", S.PEERFINCLOSEWAIT, {DW, AB}, "smc_close_active + smc_close_final")
row(S.APPFINCLOSEWAIT, "app_close", "dw_sent peer_closed", S.CLOSED, {DW, CL}, "smc_close_active: APPFINCLOSEWAIT, dw && !sent close")
row(S.APPFINCLOSEWAIT, "app_close", "dw_sent peer_closed unread", S.CLOSED, {DW, AB}, "smc_close_active + smc_close_final")
row(S.APPFINCLOSEWAIT, "app_close", "dw_sent closed_sent peer_closed", S.CLOSED, None, "smc_close_active: close already sent")
row(
    S.APPFINCLOSEWAIT,
    "app_close",
    "dw_pending peer_closed",
    S.APPFINCLOSEWAIT,
    "final queued",
    "stack: shutdown()'s smc_close_stream_wait still running; the final flag queues behind it",
)
row(S.PEERCLOSEWAIT1, "app_close", "dw_sent", S.PEERCLOSEWAIT1, {DW, CL}, "smc_close_active: PEERCLOSEWAIT1, dw && !sent close")
row(S.PEERCLOSEWAIT1, "app_close", "dw_sent unread", S.PEERCLOSEWAIT1, {DW, AB}, "smc_close_active + smc_close_final")
row(S.PEERCLOSEWAIT1, "app_close", "closed_sent", S.PEERCLOSEWAIT1, None, "smc_close_active: close already sent")
row(S.PEERCLOSEWAIT2, "app_close", "dw_sent", S.PEERCLOSEWAIT2, {DW, CL}, "smc_close_active: PEERCLOSEWAIT2")
row(S.PEERCLOSEWAIT2, "app_close", "closed_sent", S.PEERCLOSEWAIT2, None, "smc_close_active: close already sent")
row(S.PEERFINCLOSEWAIT, "app_close", "closed_sent", S.PEERFINCLOSEWAIT, None, "smc_close_active: PEERFINCLOSEWAIT waits")
row(S.PROCESSABORT, "app_close", "", S.CLOSED, {AB}, "smc_close_active: PROCESSABORT, smc_close_abort")
row(S.PEERABORTWAIT, "app_close", "", S.CLOSED, None, "smc_close_active: PEERABORTWAIT")
row(S.CLOSED, "app_close", "", S.CLOSED, None, "smc_close_active: SMC_CLOSED")

# --- shutdown(SHUT_WR): smc_close_shutdown_write; the flag is smc_close_wr (done writing)
row(S.ACTIVE, "app_shutdown_wr", "", S.PEERCLOSEWAIT1, {DW}, "smc_close_shutdown_write: SMC_ACTIVE, smc_close_wr")
row(S.APPCLOSEWAIT1, "app_shutdown_wr", "", S.APPCLOSEWAIT2, {DW}, "smc_close_shutdown_write: APPCLOSEWAIT1")
row(S.APPCLOSEWAIT1, "app_shutdown_wr", "peer_closed", S.APPCLOSEWAIT2, {DW}, "smc_close_shutdown_write: no wait after a close")
row(S.APPCLOSEWAIT1, "app_shutdown_wr", "peer_closed unsent", S.APPCLOSEWAIT2, {DW}, "smc_close_shutdown_write: no stream wait once rxed close")
row(S.APPCLOSEWAIT1, "app_shutdown_wr", "unsent", S.APPCLOSEWAIT2, "done_writing queued", "smc_close_shutdown_write: smc_close_stream_wait first")
for _s, _sit in ((S.APPCLOSEWAIT2, "dw_sent"), (S.APPFINCLOSEWAIT, "dw_sent peer_closed"), (S.PEERCLOSEWAIT1, "dw_sent"),
                 (S.PEERCLOSEWAIT2, "dw_sent"), (S.PEERFINCLOSEWAIT, "closed_sent"), (S.PROCESSABORT, ""), (S.PEERABORTWAIT, "")):  # fmt: skip
    row(_s, "app_shutdown_wr", _sit, _s, None, "smc_close_shutdown_write: nothing to do")
for _s in (S.INIT, S.LISTEN, S.CLOSED):
    row(_s, "app_shutdown_wr", "", _s, None, "smc_shutdown: not connected, no state change")

# --- the peer's done writing: smc_close_passive_work (no CDC from us)
row(S.INIT, "peer_done_writing", "", S.APPCLOSEWAIT1, None, "smc_close_passive_work: SMC_INIT")
row(S.ACTIVE, "peer_done_writing", "", S.APPCLOSEWAIT1, None, "smc_close_passive_work: SMC_ACTIVE")
row(S.PEERCLOSEWAIT1, "peer_done_writing", "dw_sent", S.PEERCLOSEWAIT2, None, "smc_close_passive_work: PEERCLOSEWAIT1")
for _s, _sit in ((S.APPCLOSEWAIT1, ""), (S.APPCLOSEWAIT2, "dw_sent"), (S.APPFINCLOSEWAIT, "dw_sent peer_closed"),
                 (S.PEERCLOSEWAIT2, "dw_sent"), (S.PEERFINCLOSEWAIT, "closed_sent"), (S.PROCESSABORT, ""), (S.PEERABORTWAIT, ""),
                 (S.CLOSED, "")):  # fmt: skip
    row(_s, "peer_done_writing", _sit, _s, None, "smc_close_passive_work: no close received / nothing to do")

# --- the peer's close: smc_close_passive_work
row(S.INIT, "peer_closed", "", S.APPCLOSEWAIT1, None, "smc_close_passive_work: SMC_INIT")
row(S.ACTIVE, "peer_closed", "", S.APPCLOSEWAIT1, None, "smc_close_passive_work: SMC_ACTIVE")
for _s in (S.PEERCLOSEWAIT1, S.PEERCLOSEWAIT2):
    row(_s, "peer_closed", "dw_sent", S.APPFINCLOSEWAIT, None, "smc_close_passive_work: not yet closed locally")
    row(_s, "peer_closed", "dw_sent released", S.APPFINCLOSEWAIT, None, "smc_close_passive_work: released, no close sent")
    row(_s, "peer_closed", "closed_sent", S.APPFINCLOSEWAIT, None, "smc_close_passive_work: close sent, not released")
    row(_s, "peer_closed", "closed_sent released", S.CLOSED, None, "smc_close_passive_work: SOCK_DEAD && sent close")
row(S.PEERFINCLOSEWAIT, "peer_closed", "closed_sent", S.CLOSED, None, "smc_close_passive_work: PEERFINCLOSEWAIT")
row(S.PEERFINCLOSEWAIT, "peer_closed", "pending", S.PEERFINCLOSEWAIT, None, "stack: close() still in smc_close_stream_wait, smc_close_final not yet sent")
for _s, _sit in ((S.APPCLOSEWAIT1, "peer_closed"), (S.APPCLOSEWAIT2, "dw_sent peer_closed"), (S.APPFINCLOSEWAIT, "dw_sent peer_closed"),
                 (S.PROCESSABORT, ""), (S.PEERABORTWAIT, ""), (S.CLOSED, "")):  # fmt: skip
    row(_s, "peer_closed", _sit, _s, None, "smc_close_passive_work: nothing to do")

# --- the peer's abort: smc_close_passive_abort_received (no CDC from us)
for _s in (S.INIT, S.ACTIVE, S.APPCLOSEWAIT1):
    row(_s, "peer_abort", "", S.PROCESSABORT, None, "smc_close_passive_abort_received: INIT/ACTIVE/APPCLOSEWAIT1")
row(S.APPFINCLOSEWAIT, "peer_abort", "dw_sent peer_closed", S.PROCESSABORT, None, "smc_close_passive_abort_received: APPFINCLOSEWAIT")
row(S.APPFINCLOSEWAIT, "peer_abort", "dw_sent peer_closed pending", S.CLOSED, {DW, AB}, "stack: smc_close_active's goto again from PROCESSABORT")
for _s in (S.PEERCLOSEWAIT1, S.PEERCLOSEWAIT2):
    row(_s, "peer_abort", "dw_sent", S.PROCESSABORT, None, "smc_close_passive_abort_received: dw && !sent close")
    row(_s, "peer_abort", "closed_sent", S.CLOSED, None, "smc_close_passive_abort_received: close sent")
    row(_s, "peer_abort", "dw_sent closed_sent", S.CLOSED, None, "smc_close_passive_abort_received: close sent")
    row(_s, "peer_abort", "dw_sent pending", S.CLOSED, {DW, AB}, "stack: smc_close_active's goto again from PROCESSABORT")
row(S.APPCLOSEWAIT2, "peer_abort", "dw_sent", S.CLOSED, None, "smc_close_passive_abort_received: APPCLOSEWAIT2")
row(S.PEERFINCLOSEWAIT, "peer_abort", "closed_sent", S.CLOSED, None, "smc_close_passive_abort_received: PEERFINCLOSEWAIT")
row(S.PEERFINCLOSEWAIT, "peer_abort", "pending", S.CLOSED, {AB}, "stack: smc_close_active's goto again from PROCESSABORT")
row(S.PEERABORTWAIT, "peer_abort", "", S.CLOSED, None, "smc_close_passive_abort_received: PEERABORTWAIT")
row(S.PROCESSABORT, "peer_abort", "", S.PROCESSABORT, None, "smc_close_passive_abort_received: PROCESSABORT")
row(S.CLOSED, "peer_abort", "", S.CLOSED, None, "smc_close_passive_abort_received: no case for CLOSED")

# --- local abort: smc_conn_kill sends smc_close_abort, smc_close_active_abort moves to
# PEERABORTWAIT and on to CLOSED (stack: the second half is the input abort_done)
for _s, _sit, _flags in ((S.ACTIVE, "", {AB}), (S.APPCLOSEWAIT1, "", {AB}), (S.APPCLOSEWAIT2, "dw_sent", {DW, AB}),
                         (S.PEERCLOSEWAIT1, "dw_sent", {DW, AB}), (S.PEERCLOSEWAIT2, "dw_sent", {DW, AB}),
                         (S.PEERFINCLOSEWAIT, "closed_sent", {CL, AB}), (S.APPFINCLOSEWAIT, "dw_sent peer_closed", {DW, AB}),
                         (S.PROCESSABORT, "", {AB})):  # fmt: skip
    row(_s, "abort", _sit, S.PEERABORTWAIT, _flags, "smc_conn_kill: smc_close_abort, smc_close_active_abort")
row(S.INIT, "abort", "", S.CLOSED, None, "smc_close_active_abort: SMC_INIT (nothing sent yet)")
row(S.PEERABORTWAIT, "abort", "", S.PEERABORTWAIT, None, "smc_close_active_abort: PEERABORTWAIT")
row(S.CLOSED, "abort", "", S.CLOSED, None, "smc_close_active_abort: SMC_CLOSED")
row(S.PEERABORTWAIT, "abort_done", "", S.CLOSED, None, "stack: smc_close_active_abort after smc_close_cancel_work")
row(S.CLOSED, "abort_done", "", S.CLOSED, None, "stack: late abort_done")

# --- the handshake's end: smc_connect_rdma / smc_listen_work set SMC_ACTIVE
row(S.INIT, "handshake_done", "", S.ACTIVE, None, "__smc_connect / smc_listen_work: sk_state = SMC_ACTIVE")

# --- stack: a final flag that waited for the sndbuf went out (the kernel's smc_close_stream_wait returns)
row(S.APPFINCLOSEWAIT, "closed_sent", "dw_sent closed_sent peer_closed released", S.CLOSED, None, "smc_close_active: APPFINCLOSEWAIT -> CLOSED")
row(S.APPFINCLOSEWAIT, "closed_sent", "dw_sent peer_closed", S.APPFINCLOSEWAIT, None, "stack: done writing only, not released")
row(S.PEERFINCLOSEWAIT, "closed_sent", "closed_sent peer_closed", S.CLOSED, None, "smc_close_passive_work: PEERFINCLOSEWAIT, rxed close")
row(S.PEERFINCLOSEWAIT, "closed_sent", "closed_sent", S.PEERFINCLOSEWAIT, None, "smc_close_active: waits for the peer's close")
for _s in (S.INIT, S.LISTEN, S.ACTIVE, S.APPCLOSEWAIT1, S.APPCLOSEWAIT2, S.PEERCLOSEWAIT1, S.PEERCLOSEWAIT2, S.PROCESSABORT,
           S.PEERABORTWAIT, S.CLOSED):  # fmt: skip
    row(_s, "closed_sent", "", _s, None, "stack: a late closed_sent changes nothing")

# What a row does to the TCP connection under the SMC-R connection (the kernel's clcsock):
# "shutdown" (a FIN, after the final flag) or "reset" (an RST); every other row leaves it
# to close when the socket is released or CLOSED (smc_clcsock_release).
TCP_END: dict[tuple, str] = {
    (S.ACTIVE, "app_close", frozenset()): "shutdown",  # smc_close_active: SMC_ACTIVE, kernel_sock_shutdown(SHUT_RDWR)
    (S.ACTIVE, "app_close", frozenset({"unread"})): "shutdown",
    # smc_shutdown(SHUT_WR): kernel_sock_shutdown after smc_close_shutdown_write sent "done writing"
    (S.ACTIVE, "app_shutdown_wr", frozenset()): "shutdown",
    (S.APPCLOSEWAIT1, "app_shutdown_wr", frozenset()): "shutdown",
    (S.APPCLOSEWAIT1, "app_shutdown_wr", frozenset({"peer_closed"})): "shutdown",
    (S.APPCLOSEWAIT1, "app_shutdown_wr", frozenset({"peer_closed", "unsent"})): "shutdown",
    # smc_close_active_abort: tcp_abort when the socket is past SMC_INIT
    **{(s, e, sit): "reset" for s, e, sit, *_ in CLOSE_ROWS if e == "abort" and s not in (S.INIT, S.PEERABORTWAIT, S.CLOSED)},
}

CLOSE_INPUTS = ("handshake_done", "app_shutdown_wr", "app_close", "peer_done_writing", "peer_closed", "peer_abort", "abort",
                "abort_done", "closed_sent")  # fmt: skip
ALLOWED = {(s, e) for s, e, *_ in CLOSE_ROWS}


def _established():
    fabric, a, b = pair()
    open_conn(fabric, a, b, 1)
    return fabric, a, a.host.conns[1]


def _put_in(conn, state: SmcState, situation: frozenset) -> None:
    conn.state = state
    conn.bytes_to_rcv = 100 if "unread" in situation else 0
    conn.peer_closed = "peer_closed" in situation
    conn.sent["done_writing"] = "dw_sent" in situation
    conn.sent["closed"] = "closed_sent" in situation
    conn.released = "released" in situation
    if "pending" in situation:  # our final flag waits for the sndbuf (smc_close_stream_wait)
        conn.pending["final"] = conn.pending_any = True
    if "unsent" in situation:  # data in our sndbuf not yet written to the peer
        conn.tx_prep = curs.add(conn.tx_sent, 10, conn.sndbuf_size)
    if "dw_pending" in situation:  # our done writing waits for the sndbuf
        conn.pending["done_writing"] = conn.pending_any = True


def _cdc_state_flags(io, since: int) -> set | None:
    """The state flags of the last CDC the host sent on connection 1 after event ``since``."""
    sent = [e for e in io.events[since:] if e.kind == "cdc.msg" and e.conn == 1 and e.get("dir") == "tx"]
    return {f for f in sent[-1].get("flags") if f in (DW, CL, AB)} if sent else None


# Where the stack differs from the kernel: none today. (An abort received while our final
# flag waited for the sndbuf used to go out with peer_conn_closed too; the kernel's
# smc_close_abort sends peer_conn_abort alone, and so do we now.) A difference found later
# goes here as the flags the stack sends, with a strict xfail holding the kernel's.
TODAY: dict = {}


def _close_params():
    for r in CLOSE_ROWS:
        yield pytest.param(*r[:4], TODAY.get(r[:3], r[4]), r[5], id=f"{r[0].name}-{r[1]}-{'+'.join(sorted(r[2])) or 'plain'}")


@pytest.mark.parametrize("state,event,situation,nxt,cdc,where", list(_close_params()))
def test_close_machine_row(state, event, situation, nxt, cdc, where):
    fabric, a, conn = _established()
    _put_in(conn, state, situation)
    mark = len(a.events)
    conn.input(event, fabric.now)
    assert conn.state == nxt, f"{state.name} --{event}--> {conn.state.name}, want {nxt.name} ({where})"
    if isinstance(cdc, str):  # "<flag> queued": no CDC yet, the flag waits for the sndbuf
        assert _cdc_state_flags(a, mark) is None and conn.pending[cdc.split()[0]], f"{state.name} --{event}--> ({where})"
    else:
        assert _cdc_state_flags(a, mark) == cdc, f"{state.name} --{event}--> CDC flags ({where})"
    app = a.apps[1]
    assert app.tcp_end == TCP_END.get((state, event, situation)), f"{state.name} --{event}--> TCP connection {app.tcp_end} ({where})"
    if app.tcp_end == "shutdown":  # after the flag it goes with, as smc_close_active and smc_shutdown
        with_ = {"closed", "abort"} if event == "app_close" else {"done_writing"}
        assert app.tcp_end_after & with_, app.tcp_end_after


@pytest.mark.parametrize("state,event", sorted(set(itertools.product(SmcState, CLOSE_INPUTS)) - ALLOWED),
                         ids=lambda x: getattr(x, "name", x))  # fmt: skip
def test_close_machine_rejects_what_no_row_allows(state, event):
    fabric, a, conn = _established()
    _put_in(conn, state, frozenset())
    mark = len(a.events)
    with pytest.raises(ProtocolError):
        conn.input(event, fabric.now)
    assert conn.state == state and _cdc_state_flags(a, mark) is None


def test_every_close_input_and_state_has_a_row_or_is_an_error():
    """The rows cover the machine's input alphabet: an input the code added without a row here fails."""
    from stack.core.states import CONN_INPUTS

    assert set(CONN_INPUTS) == set(CLOSE_INPUTS)
    assert {s for s, *_ in CLOSE_ROWS} == set(SmcState)


# --------------------------------------------------------------------------- the link machine
# smc_core.c: smcr_link_init sets ACTIVATING; the CONFIRM LINK exchange (smc_llc_cli_conf_link,
# smc_llc_srv_conf_link -> smc_llc_link_active) ACTIVE; smcr_link_down / a failed CONFIRM
# LINK INACTIVE; smcr_link_clear UNUSED.
L = LinkState
LINK_ROWS = [
    (L.UNUSED, "create", L.ACTIVATING, "smcr_link_init"),
    (L.ACTIVATING, "confirmed", L.ACTIVE, "smc_llc_link_active"),
    (L.ACTIVATING, "failed", L.INACTIVE, "smc_llc_cli_conf_link / smc_llc_srv_conf_link failure"),
    (L.ACTIVATING, "down", L.INACTIVE, "smcr_link_down"),
    (L.ACTIVE, "down", L.INACTIVE, "smcr_link_down"),
    (L.ACTIVE, "failed", L.INACTIVE, "smcr_link_down_cond (a work request failed)"),
    (L.INACTIVE, "down", L.INACTIVE, "smcr_link_down: already down"),
    (L.INACTIVE, "failed", L.INACTIVE, "smcr_link_down_cond: already down"),
    (L.INACTIVE, "clear", L.UNUSED, "smcr_link_clear"),
    (L.ACTIVATING, "clear", L.UNUSED, "smcr_link_clear"),
    (L.ACTIVE, "clear", L.UNUSED, "smcr_link_clear"),
    (L.UNUSED, "clear", L.UNUSED, "smcr_link_clear: nothing to clear"),
]
LINK_INPUTS = ("create", "confirmed", "failed", "down", "clear")


@pytest.mark.parametrize("state,event", list(itertools.product(LinkState, LINK_INPUTS)), ids=lambda x: getattr(x, "name", x))
def test_link_machine_against_the_expected_table(state, event):
    fabric, a, conn = _established()
    link = conn.link
    link.state = state
    want = {(s, e): (n, w) for s, e, n, w in LINK_ROWS}.get((state, event))
    if want is None:
        with pytest.raises(ProtocolError):
            link.set_state(event, fabric.now)
        assert link.state == state
    else:
        link.set_state(event, fabric.now)
        assert link.state == want[0], f"{state.name} --{event}--> {link.state.name}, want {want[0].name} ({want[1]})"


# --------------------------------------------------------------------------- the handshake machine
# Rows: (state, input, guards that hold, next, actions in order). From af_smc.c: the client's
# __smc_connect / smc_connect_rdma / smc_connect_clc, the server's smc_listen_work /
# smc_listen_rdma_finish / smc_listen_decline, and smc_clc.c's smc_clc_wait_msg.
H = Hs
HS_ROWS = [
    (H.START, "start_client", {"peer_no_smc"}, H.FALLBACK, ["fall_back(PEERNOSMC)"], "__smc_connect: !smc->use_fallback && no SMC option"),
    (H.START, "start_client", {"nothing_to_propose"}, H.FALLBACK, ["send_decline", "fall_back"], "__smc_connect: smc_find_proposal_devices fails"),
    (H.START, "start_client", set(), H.PROPOSAL_SENT, ["send_proposal", "wait(clc_wait)"], "smc_connect_clc: smc_clc_send_proposal"),
    (H.PROPOSAL_SENT, "accept", {"declined"}, H.FALLBACK, ["send_decline", "fall_back"], "smc_connect_rdma: smc_connect_decline_fallback"),
    (
        H.PROPOSAL_SENT,
        "accept",
        {"unknown_link_group"},
        H.FALLBACK,
        ["take_accept", "send_decline(SYNCERR)", "fall_back(SYNCERR)"],
        "smc_connect_rdma: no link group for a reuse Accept",
    ),
    (
        H.PROPOSAL_SENT,
        "accept",
        {"first_contact"},
        H.WAIT_CONFIRM_LINK,
        ["take_accept", "new_link_group", "adopt_peer_buffer", "ready_link", "send_confirm", "wait(client_confirm_link)"],
        "smc_connect_rdma: first contact, smc_clc_send_confirm, smcr_clnt_conf_first_link",
    ),
    (
        H.PROPOSAL_SENT,
        "accept",
        set(),
        H.WAIT_RKEY,
        ["take_accept", "join_link_group", "adopt_peer_buffer", "confirm_rkey"],
        "smc_connect_rdma: reuse, smcr_lgr_reg_rmbs (CONFIRM RKEY) before the Confirm",
    ),
    (
        H.WAIT_CONFIRM_LINK,
        "confirm_link",
        {"rmbe_eyecatchers"},
        H.FALLBACK,
        ["send_decline(RMBE_EC)", "fall_back(RMBE_EC)"],
        "smcr_clnt_conf_first_link: SMC_CLC_DECL_RMBE_EC",
    ),
    (H.WAIT_CONFIRM_LINK, "confirm_link", set(), H.SMC, ["answer_confirm_link", "established"], "smcr_clnt_conf_first_link"),
    (H.START, "start_server", {"peer_no_smc"}, H.FALLBACK, ["fall_back(PEERNOSMC)"], "smc_listen_work: !tcp_sk(newclcsock)->syn_smc"),
    (H.START, "start_server", set(), H.WAIT_PROPOSAL, ["wait(peer_first_bytes)"], "smc_listen_work: smc_clc_wait_msg(PROPOSAL)"),
    (H.WAIT_PROPOSAL, "proposal", {"first_contact_pending"}, H.WAIT_PROPOSAL, ["defer"], "smc_listen_work: smc_server_lgr_pending"),
    (H.WAIT_PROPOSAL, "proposal", {"plain_listener"}, H.FALLBACK, ["send_decline(PEERNOSMC)", "plain_tcp"], "smc_listen_work: no SMC listener"),
    (H.WAIT_PROPOSAL, "proposal", {"declined"}, H.FALLBACK, ["send_decline", "fall_back"], "smc_listen_decline"),
    (H.WAIT_PROPOSAL, "proposal", {"reuse"}, H.WAIT_RKEY, ["join_link_group", "confirm_rkey"], "smc_listen_rdma_reg: smcr_lgr_reg_rmbs"),
    (H.WAIT_PROPOSAL, "proposal", set(), H.ACCEPT_SENT, ["new_link_group", "send_accept", "wait(clc_wait)"], "smc_listen_work: smc_clc_send_accept"),
    (H.WAIT_PROPOSAL, "not_clc", set(), H.FALLBACK, ["fall_back(PEERNOSMC)"], "smc_clc_wait_msg: no eyecatcher, peer speaks TCP"),
    (H.ACCEPT_SENT, "confirm", {"declined"}, H.FALLBACK, ["send_decline", "fall_back"], "smc_listen_rdma_finish: decline"),
    (
        H.ACCEPT_SENT,
        "confirm",
        {"first_contact"},
        H.WAIT_CONFIRM_LINK_RESP,
        ["adopt_peer_buffer", "ready_link", "send_confirm_link", "wait(llc_wait)"],
        "smcr_serv_conf_first_link: CONFIRM LINK",
    ),
    (H.ACCEPT_SENT, "confirm", set(), H.SMC, ["adopt_peer_buffer", "established"], "smc_listen_rdma_finish: reuse"),
    (
        H.WAIT_CONFIRM_LINK_RESP,
        "confirm_link_resp",
        set(),
        H.SMC,
        ["link_confirmed", "established", "add_link"],
        "smcr_serv_conf_first_link: response, then smc_llc_srv_add_link_local",
    ),
    (H.WAIT_RKEY, "rkey_confirmed", {"server"}, H.ACCEPT_SENT, ["rmb_confirmed", "send_accept", "wait(clc_wait)"], "smc_listen_work"),
    (H.WAIT_RKEY, "rkey_confirmed", set(), H.SMC, ["rmb_confirmed", "send_confirm", "established"], "smc_connect_rdma: reuse"),
    (H.WAIT_RKEY, "rkey_failed", set(), H.FALLBACK, ["send_decline(ERR_REGBUF)", "fall_back(ERR_REGBUF)"], "smcr_lgr_reg_rmbs: SMC_CLC_DECL_ERR_REGBUF"),
    *[
        (s, "setup_failed", set(), H.FALLBACK, ["send_decline", "fall_back"], "smc_connect_abort / smc_listen_decline")
        for s in (H.WAIT_RKEY, H.ACCEPT_SENT, H.WAIT_CONFIRM_LINK)
    ],
    (H.PROPOSAL_SENT, "timeout", set(), H.FAILED, ["fail"], "smc_clc_wait_msg: -EAGAIN ends the connect"),
    (H.WAIT_PROPOSAL, "timeout", {"nothing_received"}, H.FALLBACK, ["fall_back(PEERNOSMC)"], "smc_listen_work: no CLC, peer is TCP"),
    (H.WAIT_PROPOSAL, "timeout", set(), H.FAILED, ["fail"], "smc_clc_wait_msg: timeout"),
    (H.ACCEPT_SENT, "timeout", set(), H.FAILED, ["fail"], "smc_clc_wait_msg: timeout"),
    (H.WAIT_CONFIRM_LINK, "timeout", set(), H.FALLBACK, ["send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"], "smcr_clnt_conf_first_link"),
    (H.WAIT_CONFIRM_LINK_RESP, "timeout", set(), H.FALLBACK, ["send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"], "smcr_serv_conf_first_link"),
    (H.WAIT_RKEY, "timeout", set(), H.FALLBACK, ["send_decline(ERR_REGBUF)", "fall_back(ERR_REGBUF)"], "smc_llc_do_confirm_rkey timeout"),
    (H.ACCEPT_SENT, "link_lost", set(), H.ACCEPT_SENT, [], "smc_listen_work waits in smc_clc_wait_msg; ERR_RDYLNK follows"),
    (H.WAIT_CONFIRM_LINK, "link_lost", set(), H.FALLBACK, ["send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"], "smcr_clnt_conf_first_link"),
    (H.WAIT_CONFIRM_LINK_RESP, "link_lost", set(), H.FALLBACK, ["send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"], "smcr_serv_conf_first_link"),
    (H.WAIT_RKEY, "link_lost", set(), H.FALLBACK, ["send_decline(ERR_REGBUF)", "fall_back(ERR_REGBUF)"], "smcr_lgr_reg_rmbs"),
]
# two guards hold: the order in which the kernel looks decides
HS_ROWS += [
    (
        H.START,
        "start_client",
        {"peer_no_smc", "nothing_to_propose"},
        H.FALLBACK,
        ["fall_back(PEERNOSMC)"],
        "__smc_connect: the SYN-ACK's missing option before smc_find_proposal_devices",
    ),
    (
        H.PROPOSAL_SENT,
        "accept",
        {"declined", "unknown_link_group"},
        H.FALLBACK,
        ["send_decline", "fall_back"],
        "smc_connect_rdma: smc_connect_check_aclc first",
    ),
    (H.PROPOSAL_SENT, "accept", {"declined", "first_contact"}, H.FALLBACK, ["send_decline", "fall_back"], "smc_connect_check_aclc first"),
    (
        H.PROPOSAL_SENT,
        "accept",
        {"unknown_link_group", "first_contact"},
        H.FALLBACK,
        ["take_accept", "send_decline(SYNCERR)", "fall_back(SYNCERR)"],
        "smc_connect_rdma: the link group lookup before first contact",
    ),
    (
        H.WAIT_PROPOSAL,
        "proposal",
        {"first_contact_pending", "plain_listener", "declined", "reuse"},
        H.WAIT_PROPOSAL,
        ["defer"],
        "smc_listen_work: smc_server_lgr_pending taken before the device search",
    ),
    (
        H.WAIT_PROPOSAL,
        "proposal",
        {"plain_listener", "declined", "reuse"},
        H.FALLBACK,
        ["send_decline(PEERNOSMC)", "plain_tcp"],
        "stack: a plain listener answers any Proposal with PEERNOSMC",
    ),
    (H.WAIT_PROPOSAL, "proposal", {"declined", "reuse"}, H.FALLBACK, ["send_decline", "fall_back"], "smc_listen_find_device fails first"),
    (
        H.ACCEPT_SENT,
        "confirm",
        {"declined", "first_contact"},
        H.FALLBACK,
        ["send_decline", "fall_back"],
        "smc_listen_work: smc_clc_v2x_features_confirm_check before smc_listen_rdma_finish",
    ),
]
_LIVE = (H.PROPOSAL_SENT, H.WAIT_PROPOSAL, H.ACCEPT_SENT, H.WAIT_CONFIRM_LINK, H.WAIT_CONFIRM_LINK_RESP, H.WAIT_RKEY)
for _s in _LIVE:
    HS_ROWS += [
        (_s, "decline", set(), H.FALLBACK, ["note_out_of_sync", "fall_back"], "smc_clc_wait_msg: a Decline (out of sync: smc_lgr_terminate)"),
        (_s, "malformed", set(), H.FAILED, ["fail"], "smc_clc_wait_msg: -EPROTO"),
        (_s, "tcp_closed", set(), H.FAILED, ["fail"], "smc_clc_wait_msg: -ECONNRESET"),
        (_s, "closed", set(), H.FAILED, ["abandon"], "smc_release during the handshake"),
    ]
for _s in (H.SMC, H.FALLBACK, H.FAILED):
    HS_ROWS += [(_s, e, set(), _s, [], "stack: a late timer or TCP end after the handshake") for e in ("timeout", "tcp_closed")]
for _s in (H.FALLBACK, H.FAILED):
    HS_ROWS += [(_s, e, set(), _s, [], "stack: a CONFIRM RKEY flow ending after the handshake") for e in ("rkey_confirmed", "rkey_failed")]
HS_ROWS.append((H.FAILED, "closed", set(), H.FAILED, [], "stack: closing a failed connection"))
HS_INPUTS = ("start_client", "start_server", "proposal", "accept", "confirm", "decline", "not_clc", "rkey_confirmed", "rkey_failed",
             "confirm_link", "confirm_link_resp", "setup_failed", "timeout", "malformed", "tcp_closed", "link_lost", "closed")  # fmt: skip


def _hs_machine(guards: set):
    fabric, a, b = pair()
    conn = a.host._new_conn(1, "client", (a.ip, 40001), (b.ip, 5000), fabric.now)
    machine = a.host.handshake
    done: list = []
    machine._guards = {g: (lambda c, i, g=g: g in guards) for g in machine._guards}
    machine._actions = {name: (lambda c, i, now, arg, name=name: done.append((name, arg))) for name in machine._actions}
    machine._plans = machine.plans()
    return fabric, conn, machine, done


def _action(text: str):
    name, _, arg = text.partition("(")
    arg = arg.rstrip(")") or None
    return name, getattr(DECL, arg) if arg is not None and name in ("send_decline", "fall_back") else arg


@pytest.mark.parametrize("state,event,guards,nxt,actions,where", HS_ROWS,
                         ids=[f"{s.name}-{e}-{'+'.join(sorted(g)) or 'plain'}" for s, e, g, *_ in HS_ROWS])  # fmt: skip
def test_handshake_machine_row(state, event, guards, nxt, actions, where):
    """The real Handshake.input with these guards holding (and no other): its next state and the
    actions it performs, in order, with their arguments (the decline reasons)."""
    fabric, conn, machine, done = _hs_machine(guards)
    conn.hs = state
    machine.input(conn, event, fabric.now)
    assert conn.hs == nxt, f"{state.name} --{event} [{guards}]--> {conn.hs.name}, want {nxt.name} ({where})"
    assert done == [_action(a) for a in actions], where


@pytest.mark.parametrize("state,event", sorted(set(itertools.product(Hs, HS_INPUTS)) - {(s, e) for s, e, *_ in HS_ROWS},
                                               key=lambda p: (p[0].value, p[1])), ids=lambda x: getattr(x, "name", x))  # fmt: skip
def test_handshake_machine_rejects_what_no_row_allows(state, event):
    fabric, conn, machine, done = _hs_machine(set())
    conn.hs = state
    with pytest.raises(ProtocolError):
        machine.input(conn, event, fabric.now)
    assert conn.hs == state and not done


def test_the_handshake_inputs_are_the_rows_inputs():
    from stack.core.states import HS_INPUTS as CODE_INPUTS

    assert set(CODE_INPUTS) == set(HS_INPUTS)
