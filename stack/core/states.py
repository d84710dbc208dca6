"""State machines as data: transition tables keyed by (state, input).

Each entry is a tuple of :class:`Rule`; the first rule whose guard holds applies. A pair
that has no entry is a protocol error (:class:`ProtocolError`): the input cannot happen
in that state from a correct peer or application. A rule with ``next=None`` keeps the
state. Names are the kernel's (``enum smc_state``, ``enum smc_link_state``) and the
closing rules follow ``net/smc/smc_close.c``.

The docs draw their state diagrams from these tables (``python -m stack.core.states``)
and the tests enumerate every pair.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Hashable, Mapping

from stack.wire.codes import LinkState, SmcState


class ProtocolError(Exception):
    """An input that the table does not allow in the current state."""

    def __init__(self, machine: str, state: Hashable, event: str) -> None:
        self.machine = machine
        self.state = state
        self.event = event
        name = getattr(state, "name", state)
        super().__init__(f"{machine}: {event!r} is not allowed in state {name}")


@dataclass(frozen=True)
class Rule:
    next: Hashable | None = None  # None: the state does not change
    actions: tuple[str, ...] = ()
    guard: str | None = None  # name of a condition the machine evaluates; None: always


Table = Mapping[tuple[Hashable, str], tuple[Rule, ...]]


def step(name: str, table: Table, state: Hashable, event: str, guard: Callable[[str], bool] = lambda g: False) -> Rule:
    """The rule that applies to ``event`` in ``state``; raises ProtocolError when none does."""
    rules = table.get((state, event))
    if rules is None:
        raise ProtocolError(name, state, event)
    for rule in rules:
        if rule.guard is None or guard(rule.guard):
            return rule
    raise ProtocolError(name, state, event)


def R(next=None, *actions: str, guard: str | None = None) -> Rule:  # noqa: N802 - reads like a table cell
    return Rule(next, tuple(actions), guard)


S = SmcState
STAY = R()

# --------------------------------------------------------------------------- connection

CONN_INPUTS = (
    "handshake_done",  # CLC handshake (or fallback) completed
    "app_shutdown_wr",  # shutdown(SHUT_WR)
    "app_close",  # close() / release
    "peer_done_writing",  # CDC with 0x80 received
    "peer_closed",  # CDC with 0x40 received
    "peer_abort",  # CDC with 0x20 received
    "abort",  # local abort: link group gone, peer protocol violation, out of sync
    "abort_done",  # the abort was sent and the connection cleaned up
    "closed_sent",  # a close flag that waited for the sndbuf to drain went out
)
_OPEN = (S.ACTIVE, S.APPCLOSEWAIT1, S.APPCLOSEWAIT2, S.APPFINCLOSEWAIT, S.PEERCLOSEWAIT1, S.PEERCLOSEWAIT2, S.PEERFINCLOSEWAIT, S.PROCESSABORT)

# Closing follows net/smc/smc_close.c. Guards: peer_closed (the peer's close flag arrived
# earlier: smc_cdc_rxed_any_close), done_writing_only (we sent or queued "done writing" but
# no close yet), done_writing_pending (our "done writing" still waits for the sndbuf to
# drain), released (the application closed its socket), released_and_abort_sent (it did, and
# our final flag went out as an abort), released_and_closed_sent (it did,
# and our close or abort went out), close_pending (our final flag waits for the sndbuf).
# Actions: send_final is smc_close_final: once the sndbuf has drained (smc_close_stream_wait,
# at most timeouts.close_flush, after which it goes anyway), an abort if received data
# remains unread then, else a close; send_final_now is the same without the wait (the kernel
# skips it once the peer's close arrived); send_done_writing(_now) is smc_close_wr, with and
# without the wait; send_abort is smc_close_abort, at once. The TCP connection (the kernel's
# clcsock) follows: shutdown_tcp_with_final shuts it down (a FIN) when the final flag goes out
# after a close from ACTIVE, as smc_close_active does "to prevent the peer from entering
# TIME_WAIT"; shutdown_tcp_with_done_writing when "done writing" goes out (smc_shutdown's
# kernel_sock_shutdown after smc_close_shutdown_write; in the other states it is down
# already); reset_tcp resets it (an RST) when a connection is killed (smc_conn_kill:
# smc_close_active_abort's tcp_abort); otherwise it closes when the connection is CLOSED.
CONN_TABLE: dict[tuple[SmcState, str], tuple[Rule, ...]] = {
    (S.INIT, "handshake_done"): (R(S.ACTIVE),),
    (S.INIT, "app_close"): (R(S.CLOSED),),
    (S.LISTEN, "app_close"): (R(S.CLOSED),),
    (S.INIT, "abort"): (R(S.CLOSED),),
    # active side: smc_close_shutdown_write
    (S.ACTIVE, "app_shutdown_wr"): (R(S.PEERCLOSEWAIT1, "shutdown_tcp_with_done_writing", "send_done_writing"),),
    (S.APPCLOSEWAIT1, "app_shutdown_wr"): (
        R(S.APPCLOSEWAIT2, "shutdown_tcp_with_done_writing", "send_done_writing_now", guard="peer_closed"),
        R(S.APPCLOSEWAIT2, "shutdown_tcp_with_done_writing", "send_done_writing"),
    ),
    # shutdown(SHUT_WR) anywhere else changes nothing, as in smc_close_shutdown_write
    **{(s, "app_shutdown_wr"): (STAY,) for s in SmcState if s not in (S.ACTIVE, S.APPCLOSEWAIT1)},
    # smc_close_active: every path that ends our side sends smc_close_final (abort when
    # unread data remains, else close)
    (S.ACTIVE, "app_close"): (R(S.PEERCLOSEWAIT1, "shutdown_tcp_with_final", "send_final"),),
    (S.APPCLOSEWAIT1, "app_close"): (
        R(S.CLOSED, "send_final_now", guard="peer_closed"),
        R(S.PEERFINCLOSEWAIT, "send_final"),
    ),
    (S.APPCLOSEWAIT2, "app_close"): (
        R(S.CLOSED, "send_final_now", guard="peer_closed"),
        R(S.PEERFINCLOSEWAIT, "send_final"),
    ),
    # our "done writing" may still wait for the sndbuf (the kernel's shutdown() would have
    # waited for it before returning): the close follows it, and closed_sent ends the socket
    (S.APPFINCLOSEWAIT, "app_close"): (
        R(None, "send_final", guard="done_writing_pending"),
        R(S.CLOSED, "send_final", guard="done_writing_only"),
        R(S.CLOSED),
    ),
    (S.PEERCLOSEWAIT1, "app_close"): (R(None, "send_final", guard="done_writing_only"), STAY),
    (S.PEERCLOSEWAIT2, "app_close"): (R(None, "send_final", guard="done_writing_only"), STAY),
    (S.PEERFINCLOSEWAIT, "app_close"): (STAY,),
    (S.PROCESSABORT, "app_close"): (R(S.CLOSED, "send_abort"),),
    (S.PEERABORTWAIT, "app_close"): (R(S.CLOSED),),
    (S.CLOSED, "app_close"): (STAY,),
    # passive side
    (S.INIT, "peer_done_writing"): (R(S.APPCLOSEWAIT1),),
    (S.ACTIVE, "peer_done_writing"): (R(S.APPCLOSEWAIT1),),
    # stack: the peer's "done writing" after our abort went out (see closed_sent below)
    (S.PEERCLOSEWAIT1, "peer_done_writing"): (R(S.CLOSED, guard="released_and_abort_sent"), R(S.PEERCLOSEWAIT2)),
    (S.INIT, "peer_closed"): (R(S.APPCLOSEWAIT1),),
    (S.ACTIVE, "peer_closed"): (R(S.APPCLOSEWAIT1),),
    (S.PEERCLOSEWAIT1, "peer_closed"): (R(S.CLOSED, guard="released_and_closed_sent"), R(S.APPFINCLOSEWAIT)),
    (S.PEERCLOSEWAIT2, "peer_closed"): (R(S.CLOSED, guard="released_and_closed_sent"), R(S.APPFINCLOSEWAIT)),
    # our final flag may still wait for the sndbuf (the kernel is still in smc_close_stream_wait
    # then): it goes out first, and closed_sent ends the socket
    (S.PEERFINCLOSEWAIT, "peer_closed"): (R(None, guard="close_pending"), R(S.CLOSED)),
    (S.INIT, "peer_abort"): (R(S.PROCESSABORT),),
    (S.ACTIVE, "peer_abort"): (R(S.PROCESSABORT),),
    (S.APPCLOSEWAIT1, "peer_abort"): (R(S.PROCESSABORT),),
    (S.APPCLOSEWAIT2, "peer_abort"): (R(S.CLOSED),),
    # an abort while our close flag still waits for the sndbuf: the kernel's close() was
    # still draining (smc_close_stream_wait) and answers from PROCESSABORT with an abort
    # (smc_close_active: "goto again" with the state the passive side left)
    (S.APPFINCLOSEWAIT, "peer_abort"): (R(S.CLOSED, "send_abort", guard="close_pending"), R(S.PROCESSABORT)),
    (S.PEERCLOSEWAIT1, "peer_abort"): (R(S.CLOSED, "send_abort", guard="close_pending"), R(S.PROCESSABORT, guard="done_writing_only"), R(S.CLOSED)),
    (S.PEERCLOSEWAIT2, "peer_abort"): (R(S.CLOSED, "send_abort", guard="close_pending"), R(S.PROCESSABORT, guard="done_writing_only"), R(S.CLOSED)),
    (S.PEERFINCLOSEWAIT, "peer_abort"): (R(S.CLOSED, "send_abort", guard="close_pending"), R(S.CLOSED)),
    (S.PEERABORTWAIT, "peer_abort"): (R(S.CLOSED),),
    (S.PROCESSABORT, "peer_abort"): (STAY,),
    # a peer repeating its close flags in later CDCs changes nothing
    (S.APPCLOSEWAIT1, "peer_done_writing"): (STAY,),
    (S.APPCLOSEWAIT2, "peer_done_writing"): (STAY,),
    (S.APPFINCLOSEWAIT, "peer_done_writing"): (STAY,),
    (S.PEERCLOSEWAIT2, "peer_done_writing"): (STAY,),
    (S.PEERFINCLOSEWAIT, "peer_done_writing"): (STAY,),
    (S.APPCLOSEWAIT1, "peer_closed"): (STAY,),
    (S.APPCLOSEWAIT2, "peer_closed"): (STAY,),
    (S.APPFINCLOSEWAIT, "peer_closed"): (STAY,),
    (S.PROCESSABORT, "peer_done_writing"): (STAY,),
    (S.PROCESSABORT, "peer_closed"): (STAY,),
    (S.PEERABORTWAIT, "peer_done_writing"): (STAY,),
    (S.PEERABORTWAIT, "peer_closed"): (STAY,),
    (S.CLOSED, "peer_done_writing"): (STAY,),
    (S.CLOSED, "peer_closed"): (STAY,),
    (S.CLOSED, "peer_abort"): (STAY,),
    # local abort
    **{(s, "abort"): (R(S.PEERABORTWAIT, "send_abort", "reset_tcp"),) for s in _OPEN},
    (S.PEERABORTWAIT, "abort"): (STAY,),
    (S.CLOSED, "abort"): (STAY,),
    (S.PEERABORTWAIT, "abort_done"): (R(S.CLOSED),),
    (S.CLOSED, "abort_done"): (STAY,),
    # our close flag waited for unsent data (the kernel's close() waits for it in
    # smc_close_stream_wait); when the peer's close came meanwhile, sending ours ends it
    **{(s, "closed_sent"): (STAY,) for s in SmcState if s not in (S.APPFINCLOSEWAIT, S.PEERFINCLOSEWAIT, S.PEERCLOSEWAIT2)},
    (S.APPFINCLOSEWAIT, "closed_sent"): (R(S.CLOSED, guard="released"), STAY),
    # stack: our final flag went out as an abort, the socket is released and the peer had
    # said "done writing": the peer took our abort in APPCLOSEWAIT2 (CLOSED, no answer:
    # smc_close_passive_abort_received) or in PEERCLOSEWAIT2 (PROCESSABORT: its close answers
    # with an abort, which then meets no connection and is dropped). The kernel waits for a
    # close that in the first case never comes and keeps the socket until its link group
    # goes; we end it (docs/kernel-fidelity.md)
    (S.PEERCLOSEWAIT2, "closed_sent"): (R(S.CLOSED, guard="released_and_abort_sent"), STAY),
    (S.PEERFINCLOSEWAIT, "closed_sent"): (R(S.CLOSED, guard="peer_closed"), STAY),
}

# --------------------------------------------------------------------------- link

LINK_INPUTS = ("create", "confirmed", "failed", "down", "clear")
L = LinkState
LINK_TABLE: dict[tuple[LinkState, str], tuple[Rule, ...]] = {
    (L.UNUSED, "create"): (R(L.ACTIVATING),),
    (L.ACTIVATING, "confirmed"): (R(L.ACTIVE),),
    (L.ACTIVATING, "failed"): (R(L.INACTIVE),),
    (L.ACTIVATING, "down"): (R(L.INACTIVE),),
    (L.ACTIVE, "down"): (R(L.INACTIVE),),
    (L.ACTIVE, "failed"): (R(L.INACTIVE),),
    (L.INACTIVE, "down"): (STAY,),
    (L.INACTIVE, "failed"): (STAY,),
    (L.INACTIVE, "clear"): (R(L.UNUSED),),
    (L.ACTIVATING, "clear"): (R(L.UNUSED),),
    (L.ACTIVE, "clear"): (R(L.UNUSED),),
    (L.UNUSED, "clear"): (STAY,),
}

# --------------------------------------------------------------------------- CLC handshake


class Hs(Enum):
    """Where a connection is in the CLC handshake (ours; the kernel keeps this in its call stack)."""

    START = "START"
    PROPOSAL_SENT = "PROPOSAL_SENT"  # client: waiting for Accept or Decline
    WAIT_PROPOSAL = "WAIT_PROPOSAL"  # server: waiting for the first CLC message
    ACCEPT_SENT = "ACCEPT_SENT"  # server: waiting for Confirm or Decline
    WAIT_CONFIRM_LINK = "WAIT_CONFIRM_LINK"  # client, first contact: Confirm sent, waiting for LLC CONFIRM LINK
    WAIT_CONFIRM_LINK_RESP = "WAIT_CONFIRM_LINK_RESP"  # server, first contact: waiting for the response
    WAIT_RKEY = "WAIT_RKEY"  # subsequent contact: CONFIRM RKEY outstanding
    SMC = "SMC"  # done: SMC-R
    FALLBACK = "FALLBACK"  # done: TCP
    FAILED = "FAILED"  # the connection failed (timeout, malformed CLC, TCP error)


HS_INPUTS = (
    "start_client",  # the application opened a connection that wants SMC
    "start_server",  # a listener accepted a TCP connection
    "proposal",
    "accept",
    "confirm",
    "decline",  # CLC messages from the peer
    "not_clc",  # the client's first bytes are not CLC: it speaks plain TCP
    "rkey_confirmed",
    "rkey_failed",  # the CONFIRM RKEY flow for our RMB ended
    "confirm_link",  # client, first contact: the server's LLC CONFIRM LINK on the new link
    "confirm_link_resp",  # server, first contact: the client's response
    "setup_failed",  # a resource the connection needs could not be had (QP, buffers, rtoken)
    "timeout",  # the CLC timer expired
    "malformed",  # a CLC message that cannot be decoded, or is not expected now
    "tcp_closed",  # the TCP connection ended
    "link_lost",  # the link group under the handshake was terminated
    "closed",  # the application closed or aborted the connection
)
H = Hs
_LIVE = (H.PROPOSAL_SENT, H.WAIT_PROPOSAL, H.ACCEPT_SENT, H.WAIT_CONFIRM_LINK, H.WAIT_CONFIRM_LINK_RESP, H.WAIT_RKEY)
_DONE = (H.SMC, H.FALLBACK, H.FAILED)
# The machine is ``handshake.Handshake``: it evaluates the guards and performs the actions.
# Guards: peer_no_smc (the peer's SYN or SYN-ACK had no SMC TCP option, seen through
# native/smcopt), nothing_to_propose (no device or version to offer), first_contact_pending
# (another handshake is creating a link group with this peer: the kernel's
# smc_server_lgr_pending lock), plain_listener (a plain-TCP listener), declined (the
# message fails negotiation or cannot be taken: the Decline reason is the machine's),
# unknown_link_group (an Accept for a link group we do not have: out of sync), reuse (an
# existing link group takes the connection), first_contact (this handshake creates the
# link group), server, rmbe_eyecatchers (CONFIRM LINK without the no-RMBE-eyecatcher
# flags), nothing_received (no byte came from the client).
# Actions with an argument: send_decline(R) and fall_back(R) use reason R (without one:
# the reason the machine found); wait(T) arms the CLC timer for timeouts.T.
HS_TABLE: dict[tuple[Hs, str], tuple[Rule, ...]] = {
    # client side (smc_connect, smc_connect_rdma)
    (H.START, "start_client"): (
        R(H.FALLBACK, "fall_back(PEERNOSMC)", guard="peer_no_smc"),
        R(H.FALLBACK, "send_decline", "fall_back", guard="nothing_to_propose"),  # NOSMCDEV, or CNFERR: no v1 prefix
        R(H.PROPOSAL_SENT, "send_proposal", "wait(clc_wait)"),
    ),
    (H.PROPOSAL_SENT, "accept"): (
        R(H.FALLBACK, "send_decline", "fall_back", guard="declined"),
        R(H.FALLBACK, "take_accept", "send_decline(SYNCERR)", "fall_back(SYNCERR)", guard="unknown_link_group"),
        R(
            H.WAIT_CONFIRM_LINK,
            "take_accept",
            "new_link_group",
            "adopt_peer_buffer",
            "ready_link",
            "send_confirm",
            "wait(client_confirm_link)",
            guard="first_contact",
        ),
        R(H.WAIT_RKEY, "take_accept", "join_link_group", "adopt_peer_buffer", "confirm_rkey"),
    ),
    (H.WAIT_CONFIRM_LINK, "confirm_link"): (
        R(H.FALLBACK, "send_decline(RMBE_EC)", "fall_back(RMBE_EC)", guard="rmbe_eyecatchers"),
        R(H.SMC, "answer_confirm_link", "established"),
    ),
    # server side (smc_listen_work, smc_listen_rdma_finish)
    (H.START, "start_server"): (R(H.FALLBACK, "fall_back(PEERNOSMC)", guard="peer_no_smc"), R(H.WAIT_PROPOSAL, "wait(peer_first_bytes)")),
    (H.WAIT_PROPOSAL, "proposal"): (
        R(None, "defer", guard="first_contact_pending"),
        R(H.FALLBACK, "send_decline(PEERNOSMC)", "plain_tcp", guard="plain_listener"),
        R(H.FALLBACK, "send_decline", "fall_back", guard="declined"),
        R(H.WAIT_RKEY, "join_link_group", "confirm_rkey", guard="reuse"),
        R(H.ACCEPT_SENT, "new_link_group", "send_accept", "wait(clc_wait)"),
    ),
    (H.WAIT_PROPOSAL, "not_clc"): (R(H.FALLBACK, "fall_back(PEERNOSMC)"),),
    (H.ACCEPT_SENT, "confirm"): (
        R(H.FALLBACK, "send_decline", "fall_back", guard="declined"),
        R(H.WAIT_CONFIRM_LINK_RESP, "adopt_peer_buffer", "ready_link", "send_confirm_link", "wait(llc_wait)", guard="first_contact"),
        R(H.SMC, "adopt_peer_buffer", "established"),
    ),
    (H.WAIT_CONFIRM_LINK_RESP, "confirm_link_resp"): (R(H.SMC, "link_confirmed", "established", "add_link"),),
    # subsequent contact, both sides: our RMB is announced with CONFIRM RKEY before the
    # server's Accept or the client's Confirm
    (H.WAIT_RKEY, "rkey_confirmed"): (
        R(H.ACCEPT_SENT, "rmb_confirmed", "send_accept", "wait(clc_wait)", guard="server"),
        R(H.SMC, "rmb_confirmed", "send_confirm", "established"),
    ),
    (H.WAIT_RKEY, "rkey_failed"): (R(H.FALLBACK, "send_decline(ERR_REGBUF)", "fall_back(ERR_REGBUF)"),),
    **{(s, "setup_failed"): (R(H.FALLBACK, "send_decline", "fall_back"),) for s in (H.WAIT_RKEY, H.ACCEPT_SENT, H.WAIT_CONFIRM_LINK)},
    # timeouts: waiting for a CLC message fails the connection (the kernel's smc_clc_wait_msg
    # error), except a server that heard nothing at all, which takes the peer for plain TCP;
    # waiting for an LLC step declines and falls back
    (H.PROPOSAL_SENT, "timeout"): (R(H.FAILED, "fail"),),
    (H.WAIT_PROPOSAL, "timeout"): (R(H.FALLBACK, "fall_back(PEERNOSMC)", guard="nothing_received"), R(H.FAILED, "fail")),
    (H.ACCEPT_SENT, "timeout"): (R(H.FAILED, "fail"),),
    (H.WAIT_CONFIRM_LINK, "timeout"): (R(H.FALLBACK, "send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"),),
    (H.WAIT_CONFIRM_LINK_RESP, "timeout"): (R(H.FALLBACK, "send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"),),
    (H.WAIT_RKEY, "timeout"): (R(H.FALLBACK, "send_decline(ERR_REGBUF)", "fall_back(ERR_REGBUF)"),),
    # the link group under the handshake ended (its last link failed). A server waiting for
    # the Confirm keeps waiting, as the kernel's smc_listen_work does in smc_clc_wait_msg: the
    # Confirm is answered then with a Decline ERR_RDYLNK (smc_listen_rdma_finish), which
    # ``declined`` says for a terminated link group.
    (H.ACCEPT_SENT, "link_lost"): (STAY,),
    (H.WAIT_CONFIRM_LINK, "link_lost"): (R(H.FALLBACK, "send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"),),
    (H.WAIT_CONFIRM_LINK_RESP, "link_lost"): (R(H.FALLBACK, "send_decline(TIMEOUT_CL)", "fall_back(TIMEOUT_CL)"),),
    (H.WAIT_RKEY, "link_lost"): (R(H.FALLBACK, "send_decline(ERR_REGBUF)", "fall_back(ERR_REGBUF)"),),
    # both sides
    **{(s, "decline"): (R(H.FALLBACK, "note_out_of_sync", "fall_back"),) for s in _LIVE},
    **{(s, "malformed"): (R(H.FAILED, "fail"),) for s in _LIVE},
    **{(s, "tcp_closed"): (R(H.FAILED, "fail"),) for s in _LIVE},
    **{(s, "closed"): (R(H.FAILED, "abandon"),) for s in _LIVE},
    # late inputs once the handshake is over change nothing: a CONFIRM RKEY flow ending after
    # a timeout or a close, a TCP connection closing after fallback
    **{(s, e): (STAY,) for s in _DONE for e in ("timeout", "tcp_closed")},
    **{(s, e): (STAY,) for s in (H.FALLBACK, H.FAILED) for e in ("rkey_confirmed", "rkey_failed")},
    (H.FAILED, "closed"): (STAY,),
}

MACHINES = {
    "connection": (CONN_TABLE, list(SmcState), CONN_INPUTS),
    "link": (LINK_TABLE, list(LinkState), LINK_INPUTS),
    "handshake": (HS_TABLE, list(Hs), HS_INPUTS),
}


def markdown() -> str:
    """The tables as Markdown with Mermaid state diagrams, for docs/states.md."""
    out = ["# SMC state machines\n", "Generated from `stack/core/states.py` by `python -m stack.core.states`. "
           "A pair (state, input) missing from a table is a protocol error.\n"]  # fmt: skip
    for name, (table, _states, _inputs) in MACHINES.items():
        out.append(f"\n## {name}\n\n```mermaid\nstateDiagram-v2\n")
        for (state, event), rules in table.items():
            for rule in rules:
                if rule.next is not None and rule.next != state:
                    label = event + (f" [{rule.guard}]" if rule.guard else "") + (f" / {', '.join(rule.actions)}" if rule.actions else "")
                    out.append(f"    {_n(state)} --> {_n(rule.next)}: {label}\n")
        out.append("```\n\n| state | input | guard | next | actions |\n|---|---|---|---|---|\n")
        for (state, event), rules in table.items():
            for rule in rules:
                nxt = "(same)" if rule.next is None else _n(rule.next)
                out.append(f"| {_n(state)} | {event} | {rule.guard or ''} | {nxt} | {', '.join(rule.actions)} |\n")
    return "".join(out)


def _n(state) -> str:
    return getattr(state, "name", str(state))


if __name__ == "__main__":
    sys.stdout.write(markdown())
