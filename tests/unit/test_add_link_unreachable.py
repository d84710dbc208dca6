"""A new link whose QP cannot reach the peer (its netdev down, no route: rxe's modify_qp to
RTR fails with ENETUNREACH) is refused, not a crash: found in the two-link lab run of our
stack against a kernel server (tests/lab/test_kernel_two_links_stack.py), where the kernel,
after its rxe1 went down, offered an asymmetric link that our rxe1 could not reach and the
exception left the group's processing, so TEST LINK went unanswered and the group died.
The kernel's client rejects such an ADD LINK (smc_llc_cli_add_link: smc_ib_ready_link fails
-> smc_llc_cli_add_link_reject); its server clears the new link (smc_llc_srv_add_link)."""

from __future__ import annotations

import errno

from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.wire.codes import LgrType, LinkState

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}


def unreachable_second_qp(io) -> None:
    """This host's QPs on its second device cannot reach the peer."""
    orig = io.qp_to_rtr

    def qp_to_rtr(qp, peer_qpn, peer_psn, peer_gid, mtu):
        if io.fabric.qps[(io.name, qp)].device != "fab0":
            raise OSError(errno.ENETUNREACH, "modify_qp to RTR: Network is unreachable")
        return orig(qp, peer_qpn, peer_psn, peer_gid, mtu)

    io.qp_to_rtr = qp_to_rtr


def test_a_client_rejects_an_add_link_its_new_qp_cannot_carry_and_keeps_the_group() -> None:
    f, a, b = pair(SmcConfig(host="client", versions=frozenset({2}), **SMALL), SmcConfig(host="server", versions=frozenset({2}), **SMALL),
                   client_devices=2, server_devices=2)  # fmt: skip
    unreachable_second_qp(a)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.05)
    assert a._app(1).established and b._app(1).established
    rejected = [e for e in a.events if e.kind == "link.event" and e.get("event") == "add_link_rejected"]
    assert rejected and "cannot reach the peer" in rejected[0].get("why"), rejected
    for io in (a, b):
        (lgr,) = io.host.lgrs
        assert lgr.type == LgrType.SINGLE, (io.name, lgr.type)
        assert [l.link_id for l in lgr.links.values() if l.state == LinkState.ACTIVE] == [1]
    assert not [q for (host, _), q in f.qps.items() if host == "client" and q.device != "fab0"]  # the new QP is gone


def test_a_server_whose_new_qp_cannot_carry_clears_the_new_link_and_keeps_the_group() -> None:
    f, a, b = pair(SmcConfig(host="client", versions=frozenset({2}), **SMALL), SmcConfig(host="server", versions=frozenset({2}), **SMALL),
                   client_devices=2, server_devices=2)  # fmt: skip
    unreachable_second_qp(b)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.05)
    assert a._app(1).established and b._app(1).established
    failed = [e for e in b.events if e.kind == "link.event" and e.get("event") == "add_link_failed"]
    assert failed and "cannot reach the peer" in failed[0].get("reason"), failed
    (lgr,) = b.host.lgrs
    assert lgr.type == LgrType.SINGLE and [l.link_id for l in lgr.links.values() if l.state == LinkState.ACTIVE] == [1]
