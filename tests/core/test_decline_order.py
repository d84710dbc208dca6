"""Which Decline a server gives a Proposal, and in which order it looks, as the kernel's
smc_listen_work does (net/smc/af_smc.c, smc_clc.c): smc_listen_v2_check, then
smc_clc_srv_v2x_features_validate, then smc_listen_find_device (smc_listen_prfx_check,
smc_find_ism_v1_device_serv, smc_find_rdma_v2_device_serv, smc_find_rdma_v1_device_serv,
the first ``ini->rc`` stored winning). One test per code, naming the function that gives it.

Then the smaller differences of issue 16 item 8: the version of a Decline, CONFIRM LINK's
v2.1 limits, and first contacts of kernel v2-only clients (all-zero peer ID) in parallel."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from support.fabric import FabricIO, open_conn, pair

from stack.core.config import SmcConfig
from stack.core.negotiation import Netdev, build_proposal, choose
from stack.core.ports import DeviceInfo
from stack.core.states import Hs
from stack.wire import clc
from stack.wire.clc import SmcType as T
from stack.wire.codes import DECL

V4 = ipaddress.IPv4Address
EID_A, EID_B = clc.make_eid("EID-A"), clc.make_eid("EID-B")
OUR_DEV = DeviceInfo("roce0", bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]), b"\x02\x00\x0a\x00\x00\x02", 3)
PEER_GID = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
PEER_ID = b"\x12\x34\x02\x00\x0a\x00\x00\x01"
LOCAL = "10.0.0.2"
NETDEV = Netdev.of("eth0", ["10.0.0.2/24"])
MATCH, OTHER = clc.IpPrefixArea(V4("10.0.0.0"), 24), clc.IpPrefixArea(V4("10.9.0.0"), 24)


def server(**kw) -> SmcConfig:
    kw.setdefault("ueids", ("EID-A",))
    return SmcConfig(host="server", **kw)


def proposal(typev1=T.R, typev2=T.R, *, prefix=MATCH, eids=(EID_A,), release=1, max_conns=255, max_links=2, version=2,
             v2=True, smcd=True) -> clc.Proposal:  # fmt: skip
    ext = None
    if typev2 != T.N and v2:
        ext = clc.V2Extension(tuple(eids), PEER_GID, release, False, max_conns, max_links,
                              smcd=clc.SmcdV2Extension() if typev2.has_d else None)  # fmt: skip
    return clc.Proposal(PEER_ID if typev1 != T.N else bytes(8), PEER_GID if typev1 != T.N else bytes(16), bytes(6), typev1, typev2,
                        version, prefix if typev1 != T.N else None, clc.SmcdArea() if smcd else None, ext)  # fmt: skip


def pick(p: clc.Proposal, cfg: SmcConfig | None = None, device: DeviceInfo | None = OUR_DEV, local: str = LOCAL,
         netdev: Netdev | None = NETDEV):  # fmt: skip
    return choose(cfg or server(), p, device, local, netdev)


def decline(p: clc.Proposal, **kw) -> int:
    c = pick(p, **kw)
    assert c.decline, f"chose v{c.version}"
    return c.decline


# --------------------------------------------------------------------------- smc_listen_v2_check


def test_peernosmc_when_the_proposal_offers_nothing():
    """smc_listen_v2_check: neither SMC-D nor SMC-R in either version -> SMC_CLC_DECL_PEERNOSMC
    (not MODEUNSUPP)."""
    assert decline(proposal(T.N, T.N)) == DECL.PEERNOSMC


def test_nov2ext_when_v2_is_offered_without_the_extension():
    """smc_listen_v2_check: a v2 offer without a v2 extension -> SMC_CLC_DECL_NOV2EXT (when
    there is no v1 offer to go on with)."""
    assert decline(proposal(T.N, T.R, v2=False)) == DECL.NOV2EXT
    assert pick(proposal(T.R, T.R, v2=False)).version == 1


def test_noism2supp_for_smcd_v2_on_a_host_without_ismv2():
    """smc_listen_v2_check: SMC-Dv2 offered, !smc_ism_is_v2_capable() -> SMC_CLC_DECL_NOISM2SUPP."""
    assert decline(proposal(T.N, T.D)) == DECL.NOISM2SUPP


def test_noueid_when_the_v2_offer_has_no_ueid():
    """smc_listen_v2_check: SMC-Rv2 offered with eid_cnt 0 -> SMC_CLC_DECL_NOUEID; the last
    reason set wins (SMC-D and SMC-R both v2: NOISM2SUPP, then NOUEID)."""
    assert decline(proposal(T.N, T.R, eids=())) == DECL.NOUEID
    assert decline(proposal(T.N, T.B, eids=())) == DECL.NOUEID
    assert pick(proposal(T.R, T.R, eids=())).version == 1  # the v1 offer goes on


# --------------------------------------------------------------------------- smc_clc_srv_v2x_features_validate


@pytest.mark.parametrize("peer,ours,want", [(0, 255, DECL.MAXCONNERR), (15, 255, DECL.MAXCONNERR), (255, 16, 0), (20, 16, 0)])
def test_maxconnerr_is_the_minimum_of_both_zero_included(peer, ours, want):
    """smc_clc_srv_v2x_features_validate: max_conns = min(peer, ours) (min_t(u8, ...): a peer's
    0 counts), < SMC_CONN_PER_LGR_MIN (16) -> SMC_CLC_DECL_MAXCONNERR."""
    c = pick(proposal(max_conns=peer), server(max_conns=ours))
    assert c.decline == want
    if not want:
        assert (c.version, c.max_conns) == (2, min(peer, ours))


def test_maxlinkerr_is_the_minimum_of_both_zero_included():
    """smc_clc_srv_v2x_features_validate: max_links = min(peer, ours) < 1 -> SMC_CLC_DECL_MAXLINKERR."""
    assert decline(proposal(max_links=0)) == DECL.MAXLINKERR
    assert pick(proposal(max_links=1)).max_links == 1
    assert pick(proposal(max_links=5), server(max_links=1)).max_links == 1


def test_the_limits_are_checked_before_any_device_prefix_or_ueid():
    """smc_listen_work runs smc_clc_srv_v2x_features_validate before smc_listen_find_device:
    the limits decline a Proposal whose v1 offer would match, whose UEID does not, and a
    host without a device."""
    assert decline(proposal(max_conns=0)) == DECL.MAXCONNERR  # v1 would match
    assert decline(proposal(max_conns=0, eids=(EID_B,))) == DECL.MAXCONNERR  # no common UEID
    assert decline(proposal(max_conns=0), device=None) == DECL.MAXCONNERR
    assert decline(proposal(max_conns=0, prefix=OTHER)) == DECL.MAXCONNERR
    assert decline(proposal(max_conns=0), cfg=server(ueids=())) == DECL.MAXCONNERR  # we have no UEID at all


def test_the_limits_apply_from_release_1_only():
    """smc_clc_srv_v2x_features_validate returns early for release_nr < SMC_RELEASE_1: a v2.0
    group gets SMC_CONN_PER_LGR_MAX and SMC_LINKS_ADD_LNK_MAX, not our settings."""
    c = pick(proposal(release=0, max_conns=0, max_links=0), server(max_conns=100, max_links=1))
    assert (c.version, c.release, c.max_conns, c.max_links) == (2, 0, 255, 2)


def test_v2_check_comes_before_the_limits():
    assert decline(proposal(T.N, T.R, eids=(), max_conns=0)) == DECL.NOUEID


# --------------------------------------------------------------------------- smc_listen_find_device


def test_nosmcddev_when_only_smcd_is_offered():
    """smc_listen_find_device: no SMC-R in typev1 nor typev2 -> ini->rc ?: SMC_CLC_DECL_NOSMCDDEV
    (smc_find_ism_v1_device_serv stored NOSMCDDEV when the prefix matched)."""
    assert decline(proposal(T.D, T.N)) == DECL.NOSMCDDEV
    assert decline(proposal(T.D, T.N, prefix=OTHER)) == DECL.DIFFPREFIX  # the prefix check stored first


def test_diffprefix_on_the_v1_path():
    """smc_listen_prfx_check -> SMC_CLC_DECL_DIFFPREFIX; returned when SMC-Rv2 did not serve."""
    assert decline(proposal(T.R, T.N, prefix=OTHER)) == DECL.DIFFPREFIX
    assert decline(proposal(T.R, T.R, prefix=OTHER, eids=(EID_B,))) == DECL.DIFFPREFIX
    assert decline(proposal(T.R, T.R, prefix=OTHER), device=None) == DECL.DIFFPREFIX  # stored before NOSMCRDEV
    assert pick(proposal(T.R, T.R, prefix=OTHER)).version == 2  # v2 does not look at the prefix


def test_nosmcdev_on_the_v1_path():
    """smc_find_rdma_v1_device_serv: no SMC-Rv1 offered, or no RDMA device -> SMC_CLC_DECL_NOSMCDEV."""
    assert decline(proposal(T.R, T.N), device=None) == DECL.NOSMCDEV
    assert decline(proposal(T.N, T.R, eids=(EID_B,))) == DECL.NOSMCDEV  # v2 only, no common UEID
    assert decline(proposal(T.N, T.R), cfg=server(ueids=())) == DECL.NOSMCDEV


def test_v1_needs_a_roce_v1_gid_on_the_server():
    """smc_find_rdma_v1_device_serv -> smc_ib_determine_gid without smcrv2 takes only a RoCE v1
    GID (IB_GID_TYPE_ROCE): a port with RoCEv2 GIDs alone (Soft-RoCE) serves no v1 ->
    NOSMCDEV; v2 still serves."""
    no_v1 = dataclasses.replace(OUR_DEV, roce_v1=False)
    assert decline(proposal(T.R, T.N), device=no_v1) == DECL.NOSMCDEV
    assert pick(proposal(T.R, T.R), device=no_v1).version == 2
    assert pick(proposal(T.R, T.N), device=OUR_DEV).version == 1  # the control: with a v1 GID, v1


def test_a_client_without_a_roce_v1_gid_offers_v2_only_and_on_ipv6_nothing():
    """smc_find_proposal_devices: no v1 device without a RoCE v1 GID; on an IPv6 connection
    no v2 either, so the client declines NOSMCDEV before any Proposal (two kernels on
    Soft-RoCE do exactly this: the lab's differential run)."""
    no_v1 = dataclasses.replace(OUR_DEV, roce_v1=False)
    p, why = build_proposal(SmcConfig(host="c", ueids=("EID-A",)), no_v1, "10.1.2.3", PEER_ID, NETDEV)
    assert why == 0 and (p.typev1, p.typev2) == (T.N, T.R)
    p, why = build_proposal(SmcConfig(host="c", ueids=("EID-A",)), no_v1, "fd00:1::3", PEER_ID, Netdev.of("eth0", ["fd00:1::3/64"]))
    assert (p, why) == (None, DECL.NOSMCDEV)
    p, why = build_proposal(SmcConfig(host="c", ueids=("EID-A",)), OUR_DEV, "fd00:1::3", PEER_ID, Netdev.of("eth0", ["fd00:1::3/64"]))
    assert why == 0 and (p.typev1, p.typev2) == (T.R, T.N)  # the control: with a v1 GID, v1 over IPv6


def test_nosmcrdev_only_after_a_v2_ueid_match():
    """smc_find_rdma_v2_device_serv: smc_clc_match_eid first; only a matched UEID without a
    device stores SMC_CLC_DECL_NOSMCRDEV (which the v1 path's NOSMCDEV does not replace)."""
    assert decline(proposal(T.N, T.R), device=None) == DECL.NOSMCRDEV
    assert decline(proposal(T.R, T.R), device=None) == DECL.NOSMCRDEV
    assert decline(proposal(T.R, T.R, eids=(EID_B,)), device=None) == DECL.NOSMCDEV


def test_v2_takes_the_first_of_the_proposals_ueids_we_have():
    """smc_clc_match_eid walks the Proposal's UEIDs in order."""
    c = pick(proposal(eids=(clc.make_eid("EID-Z"), EID_B, EID_A)), server(ueids=("EID-A", "EID-B")))
    assert (c.version, c.eid) == (2, EID_B)


def test_v1_is_taken_when_v2_does_not_serve():
    assert pick(proposal(T.R, T.R, eids=(EID_B,))).version == 1
    assert pick(proposal(T.R, T.N)).version == 1


def test_a_v1_group_gets_255_and_2():
    """smc_lgr_create: an SMC-Rv1 group has SMC_CONN_PER_LGR_MAX and SMC_LINKS_ADD_LNK_MAX,
    whatever the v2.1 limits of the Proposal or our settings."""
    c = pick(proposal(T.R, T.R, eids=(EID_B,), max_conns=20, max_links=1), server(max_conns=16, max_links=1))
    assert (c.version, c.max_conns, c.max_links) == (1, 255, 2)


def test_ipv6_connection_finds_no_v2_device():
    """smc_find_rdma_v2_device_serv looks for the RoCE device by sk_rcv_saddr, which an IPv6
    socket has as LOOPBACK4_IPV6: no device's subnet holds it -> NOSMCRDEV stored; the v1
    offer with its IPv6 prefixes goes on (smc_clc_prfx_match6_rcu)."""
    v6 = Netdev.of("eth0", ["fd00::2/64"])
    prefix = clc.IpPrefixArea(V4(0), 0, (clc.Ipv6Prefix(ipaddress.IPv6Address("fd00::"), 64),))
    assert decline(proposal(T.N, T.R), local="fd00::2", netdev=v6) == DECL.NOSMCRDEV
    assert pick(proposal(T.R, T.R, prefix=prefix), local="fd00::2", netdev=v6).version == 1
    assert pick(proposal(T.N, T.R), local="::ffff:10.0.0.2").version == 2  # v4-mapped is IPv4


def test_a_v1_header_keeps_its_typev2_bits_as_the_kernel_reads_them():
    """A version 1 Proposal (Linux <= 5.9, RFC 7609 form) never offers v2, but its typev2 bits
    are 0, which smcr_indicated() reads as SMC-R: smc_listen_find_device goes on past the
    'no SMC-R offered' test for an SMC-D v1 offer, to the v1 path's NOSMCDEV behind NOSMCDDEV."""
    p = proposal(T.D, T.R, version=1, smcd=False, v2=False)
    assert decline(p) == DECL.NOSMCDEV  # no ISM area in the RFC form: nothing stored before
    assert decline(proposal(T.D, T.R, version=1, v2=False)) == DECL.NOSMCDDEV


def test_versmismat_is_our_own_knob():
    """Not the kernel's (it always speaks both): a host configured for versions the Proposal
    does not offer."""
    assert decline(proposal(T.N, T.R), cfg=server(versions=frozenset({1}))) == DECL.VERSMISMAT
    assert decline(proposal(T.R, T.N), cfg=server(versions=frozenset({2}))) == DECL.VERSMISMAT
    assert pick(proposal(T.R, T.R), cfg=server(versions=frozenset({1}))).version == 1


# --------------------------------------------------------------------------- on the wire, through a host


def _decline_on_the_wire(p: clc.Proposal, cfg: SmcConfig | None = None) -> clc.Decline:
    f, a, b = pair(server_cfg=cfg or SmcConfig(host="server"))
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), f.now)
    b.host.tcp_data(1, p.encode(), f.now)
    sent = [e for e in b.events if e.kind == "clc.msg" and e.get("dir") == "tx"]
    assert [e.get("type") for e in sent] == ["Decline"]
    return clc.decode(sent[0].get("raw"))


def test_a_decline_is_in_the_version_of_the_proposal():
    """smc_listen_work: proposal_version = SMC_V2 when hdr.version > SMC_V1, and
    smc_listen_decline sends in it: a v1-only Proposal of Linux >= 5.10 (header version 2)
    gets a v2 Decline (44 bytes), an RFC 7609 one a v1 Decline (28 bytes)."""
    v1_only_new = proposal(T.R, T.N, prefix=OTHER)
    d = _decline_on_the_wire(v1_only_new)
    assert (d.diagnosis, d.version, len(d.encode())) == (DECL.DIFFPREFIX, 2, 44)
    rfc = clc.Proposal(PEER_ID, PEER_GID, bytes(6), T.R, T.R, 1, OTHER, None, None)
    d = _decline_on_the_wire(rfc)
    assert (d.diagnosis, d.version, len(d.encode())) == (DECL.DIFFPREFIX, 1, 28)


def test_maxconnerr_decline_on_the_wire():
    d = _decline_on_the_wire(proposal(max_conns=0, eids=(clc.make_eid("SMCTOP"),)))
    assert (d.diagnosis, d.version) == (DECL.MAXCONNERR, 2)


def test_peernosmc_decline_on_the_wire():
    d = _decline_on_the_wire(proposal(T.N, T.N))
    assert d.diagnosis == DECL.PEERNOSMC


def test_client_declines_after_a_v1_accept_in_version_1():
    """__smc_connect: after the Accept, a client's Decline has the Accept's version (here a
    CONFIRM LINK that never comes: TIMEOUT_CL), though its Proposal had header version 2."""
    f, a, b = pair(SmcConfig(host="client"), SmcConfig(host="server", versions=frozenset({1})))
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), f.now)
    a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), f.now)
    f.run(stop=lambda: a.host.conns[1].hs == Hs.WAIT_CONFIRM_LINK)
    b.dead = True  # the server goes silent: no CONFIRM LINK
    f.run(until=f.now + 10)
    declines = [clc.decode(e.get("raw")) for e in a.events if e.kind == "clc.msg" and e.get("type") == "Decline"]
    assert [(d.diagnosis, d.version) for d in declines] == [(DECL.TIMEOUT_CL, 1)]
    proposal_sent = next(e for e in a.events if e.kind == "clc.msg" and e.get("type") == "Proposal")
    assert proposal_sent.get("version") == 2


# --------------------------------------------------------------------------- CONFIRM LINK (smc_llc_send_confirm_link)


def _confirm_links(io: FabricIO) -> list:
    return [e for e in io.events if e.kind == "llc.msg" and "CONFIRM LINK" in e.get("type", "")]


@pytest.mark.parametrize("client,server_cfg,want", [
    ({}, {"max_conns": 100, "max_links": 1}, (100, 1)),  # v2.1: the group's limits
    ({"release": 0}, {"max_conns": 100, "max_links": 1}, (0, 2)),  # v2.0 peer: no max_conns, max_links 2
    ({}, {"versions": frozenset({1})}, (0, 2)),  # v1 group
])  # fmt: skip
def test_confirm_link_carries_max_conns_only_for_release_1(client, server_cfg, want):
    """smc_llc_send_confirm_link: max_links = SMC_LINKS_ADD_LNK_MAX; max_conns and max_links
    of the group only when smc_version == SMC_V2 and peer_smc_release >= SMC_RELEASE_1."""
    f, a, b = pair(SmcConfig(host="client", **client), SmcConfig(host="server", **server_cfg))
    open_conn(f, a, b, 1)
    assert a.host.conns[1].mode == "SMCR"
    msgs = _confirm_links(a)
    assert {e.get("dir") for e in msgs} == {"rx", "tx"}
    assert {(e.get("max_conns"), e.get("max_links")) for e in msgs} == {want}


@pytest.mark.parametrize("client,server_cfg,want", [
    ({}, {"max_conns": 100, "max_links": 2}, (100, 2)),  # v2.1: the group's limits on the second link too
    ({"release": 0}, {"max_conns": 100, "max_links": 2}, (0, 2)),  # v2.0 peer: none, on either link
    ({"versions": frozenset({1})}, {"versions": frozenset({1})}, (0, 2)),  # v1 group
])  # fmt: skip
def test_the_second_links_confirm_link_follows_the_same_rule(client, server_cfg, want):
    """smc_llc_send_confirm_link fills every CONFIRM LINK alike, the one after ADD LINK too
    (two devices a side: the server adds a second link)."""
    f, a, b = pair(SmcConfig(host="client", **client), SmcConfig(host="server", **server_cfg), client_devices=2, server_devices=2)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.05)
    assert len(a.host.lgrs[0].active_links()) == 2, "no second link formed"
    second = [e for e in _confirm_links(a) if e.link == 2]
    assert {e.get("dir") for e in second} == {"rx", "tx"}
    assert {(e.get("max_conns"), e.get("max_links")) for e in second} == {want}


# --------------------------------------------------------------------------- first contacts of v2-only kernel clients


def test_v2_only_clients_with_all_zero_peer_ids_make_their_link_groups_in_parallel():
    """A kernel's v2-only Proposal has an all-zero peer ID (smc_clc_send_proposal fills
    id_for_peer only for v1). Two such clients (different RoCE GIDs) must not wait for each
    other's first contact; two connections of one client still share one group."""
    f, a1, b = pair(SmcConfig(host="client", versions=frozenset({2})))
    a2 = FabricIO(f, "client2", "127.0.0.3", SmcConfig(host="client2", versions=frozenset({2})), 9)
    for cid, a in ((1, a1), (2, a2), (3, a1)):
        f.connect_tcp(a, cid, b, cid)
        b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now)
        a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now)
    f.run(until=1.0)
    assert all(io.apps[cid].established for cid, io in ((1, a1), (2, a2), (3, a1))), "not every connection is up"
    proposals = [clc.decode(e.get("raw")) for e in b.events if e.kind == "clc.msg" and e.get("type") == "Proposal"]
    assert {p.peer_id for p in proposals} == {bytes(8)}
    accepts = sorted(((e.t, e.conn, e.get("first_contact")) for e in b.events if e.kind == "clc.msg" and e.get("type") == "Accept"))
    assert [(cid, fc) for _, cid, fc in accepts][:2] == [(1, True), (2, True)] or [(cid, fc) for _, cid, fc in accepts][:2] == [(2, True), (1, True)]
    first_done = min(e.t for e in b.events if e.kind == "conn.mode" and e.get("mode") == "SMCR")
    assert accepts[1][0] < first_done, "the second client's first contact waited for the first's"
    assert len(b.host.lgrs) == 2 and sorted(len(g.conns) for g in b.host.lgrs) == [1, 2]
