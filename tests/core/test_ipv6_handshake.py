"""IPv6 TCP connections through the sans-I/O core (issue 16 item 2): the handshake never
raises on an IPv6 address; it negotiates SMC-Rv1 with the IPv6 prefixes of the route's
device, as the kernel (smc_clc_prfx_set6_rcu, smc_clc_prfx_match6_rcu), or falls back
with the kernel's code. The RoCE devices stay IPv4 (fabric GIDs ::ffff:127.0.0.x)."""

from __future__ import annotations

import ipaddress

import pytest
from support.fabric import pair

from stack.core.config import SmcConfig
from stack.core.negotiation import Netdev
from stack.wire import clc
from stack.wire.codes import DECL

A6, B6 = "fd00:1:2:3::a", "fd00:1:2:3::b"


def open6(client_dev: Netdev | None, server_dev: Netdev | None, client: dict | None = None, server: dict | None = None,
          a_ip: str = A6, b_ip: str = B6):  # fmt: skip
    f, a, b = pair(SmcConfig(host="client", **(client or {})), SmcConfig(host="server", **(server or {})))
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b_ip, 5000), (a_ip, 40001), f.now, netdev=server_dev)
    a.host.client_start(1, (a_ip, 40001), (b_ip, 5000), f.now, netdev=client_dev)
    done = lambda io: io._app(1).established or io._app(1).fallback or io._app(1).failed  # noqa: E731
    f.run(stop=lambda: done(a) and done(b))
    return f, a, b


def sent(io, kind: str) -> list:
    return [clc.decode(e.get("raw")) for e in io.events if e.kind == "clc.msg" and e.get("type") == kind and e.get("dir") == "tx"]


def test_same_ipv6_subnet_negotiates_smcr_v1():
    a_dev = Netdev.of("eth0", ["fe80::a/64", "fd00:1:2:3::a/64"])
    b_dev = Netdev.of("eth0", ["fd00:1:2:3::b/64", "fe80::b/64"])
    f, a, b = open6(a_dev, b_dev)
    assert (a.host.conns[1].mode, b.host.conns[1].mode, a.host.conns[1].version) == ("SMCR", "SMCR", 1)
    (p,) = sent(a, "Proposal")
    assert (p.version, p.typev1, p.typev2) == (2, clc.SmcType.R, clc.SmcType.N)
    assert [(str(x.prefix), x.length) for x in p.prefix.ipv6] == [("fd00:1:2:3::", 64)]
    assert (sent(b, "Accept")[0].version, len(b.host.lgrs)) == (1, 1)


def test_different_ipv6_subnets_decline_diffprefix():
    f, a, b = open6(Netdev.of("eth0", ["fd00:1:2:3::a/64"]), Netdev.of("eth0", ["fd00:9::b/64"]), b_ip="fd00:9::b")
    ca, cb = a.host.conns[1], b.host.conns[1]
    assert (ca.mode, ca.fallback_reason, ca.peer_diagnosis) == ("TCP", DECL.PEERDECL, DECL.DIFFPREFIX)
    assert (cb.mode, cb.fallback_reason) == ("TCP", DECL.DIFFPREFIX)
    assert not a.host.lgrs and not b.host.lgrs


def test_only_the_first_eight_prefixes_are_sent():
    """smc_clc_prfx_set6_rcu stops at SMC_CLC_MAX_V6_PREFIX: a server sharing only the client's
    ninth prefix finds no match."""
    client = Netdev.of("eth0", [f"fd00:{i}::a/64" for i in range(1, 11)])
    f, a, b = open6(client, Netdev.of("eth0", ["fd00:9::b/64"]), a_ip="fd00:1::a", b_ip="fd00:9::b")
    (p,) = sent(a, "Proposal")
    assert len(p.prefix.ipv6) == 8 and p.prefix.ipv6[-1].prefix == ipaddress.IPv6Address("fd00:8::")
    assert b.host.conns[1].fallback_reason == DECL.DIFFPREFIX
    f, a, b = open6(client, Netdev.of("eth0", ["fd00:8::b/64"]), a_ip="fd00:1::a", b_ip="fd00:8::b")
    assert b.host.conns[1].mode == "SMCR"


@pytest.mark.parametrize("versions", [frozenset({1}), frozenset({1, 2})])
def test_link_local_only_route_falls_back_with_cnferr(versions):
    """No IPv6 prefix (only link-local addresses) and no v2 (never on IPv6): smc_clc_send_proposal
    returns SMC_CLC_DECL_CNFERR, which smc_connect_decline_fallback sends as a Decline."""
    f, a, b = open6(Netdev.of("eth0", ["fe80::a/64"]), Netdev.of("eth0", ["fe80::b/64"]), {"versions": versions},
                    a_ip="fe80::a%eth0", b_ip="fe80::b%eth0")  # fmt: skip
    ca, cb = a.host.conns[1], b.host.conns[1]
    assert (ca.mode, ca.fallback_reason) == ("TCP", DECL.CNFERR)
    assert (cb.mode, cb.fallback_reason, cb.peer_diagnosis) == ("TCP", DECL.PEERDECL, DECL.CNFERR)
    assert not sent(a, "Proposal") and [d.diagnosis for d in sent(a, "Decline")] == [DECL.CNFERR]


def test_ipv6_with_unknown_device_assumes_a_slash_64():
    f, a, b = open6(None, None)
    assert a.host.conns[1].mode == "SMCR"
    (p,) = sent(a, "Proposal")
    assert [(str(x.prefix), x.length) for x in p.prefix.ipv6] == [("fd00:1:2:3::", 64)]


def test_ipv6_and_ipv4_connections_share_the_link_group():
    """The link group belongs to the peer's RoCE device, not to the TCP family: an IPv4
    connection after an IPv6 one (both v1) joins its group."""
    f, a, b = open6(Netdev.of("eth0", ["fd00:1:2:3::a/64"]), Netdev.of("eth0", ["fd00:1:2:3::b/64"]),
                    {"versions": frozenset({1})})  # fmt: skip
    f.connect_tcp(a, 2, b, 2)
    b.host.server_start(2, (b.ip, 5000), (a.ip, 40002), f.now)
    a.host.client_start(2, (a.ip, 40002), (b.ip, 5000), f.now)
    f.run(until=f.now + 1)
    assert a.apps[2].established and not a.host.conns[2].first_contact and len(b.host.lgrs) == 1
