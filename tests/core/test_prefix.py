"""The SMC-Rv1 IP prefix as the kernel takes it from the net device of the TCP connection's
route (smc_clc_prfx_set, smc_clc_prfx_set4_rcu, smc_clc_prfx_set6_rcu) and matches it
(smc_clc_prfx_match, smc_clc_prfx_match4_rcu, smc_clc_prfx_match6_rcu), and what a client
proposes from it (smc_find_proposal_devices, smc_clc_send_proposal)."""

from __future__ import annotations

import ipaddress

import pytest
from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.core.negotiation import Netdev, build_proposal, choose, prefix_matches, proposal_prefix, tcp_address
from stack.core.ports import DeviceInfo
from stack.wire import clc
from stack.wire.codes import DECL

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
DEV = DeviceInfo("roce0", bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]), b"\x02\x00\x0a\x00\x00\x01", 3)
PEER_ID = b"\x12\x34" + DEV.mac


# --------------------------------------------------------------------------- smc_clc_prfx_set


def test_ipv4_prefix_is_the_first_address_of_the_device_whose_subnet_holds_ours():
    """smc_clc_prfx_set4_rcu: inet_ifa_match(ours, ifa) in the device's order; the subnet is
    ifa_address & ifa_mask, the length the mask's."""
    eth = Netdev.of("eth0", ["192.168.7.9/16", "10.1.2.3/24", "10.1.0.1/16"])
    area = proposal_prefix(eth, "10.1.2.200")
    assert (area.subnet, area.prefix_len, area.ipv6) == (V4("10.1.2.0"), 24, ())
    assert proposal_prefix(eth, "10.1.9.9").prefix_len == 16  # only the /16 holds it
    assert proposal_prefix(eth, "172.16.0.1") is None  # -ENOENT: no v1


def test_a_real_mask_not_a_default_one():
    """Issue 16 item 3: against a kernel on a /24 the prefix must be the /24 (a /8 would be DIFFPREFIX)."""
    area = proposal_prefix(Netdev.of("eth0", ["198.51.100.7/24"]), "198.51.100.7")
    assert (str(area.subnet), area.prefix_len) == ("198.51.100.0", 24)
    kernel_side = Netdev.of("eth0", ["198.51.100.8/24"])
    assert prefix_matches(kernel_side, area)
    assert not prefix_matches(kernel_side, clc.IpPrefixArea(V4("198.0.0.0"), 8))


def test_ipv6_prefixes_are_at_most_eight_none_link_local_in_the_devices_order():
    """smc_clc_prfx_set6_rcu: every address of the device that is not link-local, masked to
    its prefix length, in the device's list order, up to SMC_CLC_MAX_V6_PREFIX (8)."""
    addrs = ["fe80::1/64"] + [f"2001:db8:{i:x}::5/{48 + i}" for i in range(10)]
    area = proposal_prefix(Netdev.of("eth0", addrs), "2001:db8::5")
    assert (area.subnet, area.prefix_len) == (V4(0), 0)
    assert len(area.ipv6) == clc.MAX_V6_PREFIXES == 8
    assert [(str(p.prefix), p.length) for p in area.ipv6] == [
        (str(ipaddress.ip_interface(a).network.network_address), 48 + i) for i, a in enumerate(addrs[1:9])
    ]
    # the TCP address itself plays no part for IPv6: the device's addresses are the prefixes
    assert proposal_prefix(Netdev.of("eth0", addrs), "2001:db8:ffff::1") == area


def test_ipv6_device_with_only_link_local_addresses_has_no_prefix():
    assert proposal_prefix(Netdev.of("eth0", ["fe80::1/64", "fe80::2/64", "10.0.0.1/8"]), "fe80::1%eth0") is None


def test_loopback_ipv6_is_not_link_local():
    """ipv6_addr_type(::1) is LOOPBACK, not LINKLOCAL: lo's ::1/128 is a prefix."""
    area = proposal_prefix(Netdev.of("lo", ["127.0.0.1/8", "::1/128"]), "::1")
    assert [(str(p.prefix), p.length) for p in area.ipv6] == [("::1", 128)]


def test_ipv4_mapped_address_is_ipv4():
    """smc_clc_prfx_set: ipv6_addr_v4mapped -> smc_clc_prfx_set4_rcu with the IPv4 address."""
    assert tcp_address("::ffff:10.1.2.3") == V4("10.1.2.3")
    area = proposal_prefix(Netdev.of("eth0", ["10.1.2.1/24", "fd00::1/64"]), "::ffff:10.1.2.3")
    assert (str(area.subnet), area.prefix_len, area.ipv6) == ("10.1.2.0", 24, ())


# --------------------------------------------------------------------------- smc_clc_prfx_match


def test_ipv4_match_needs_the_same_length_and_a_subnet_holding_the_proposed_one():
    """smc_clc_prfx_match4_rcu: prefix_len == inet_mask_len(ifa_mask) && inet_ifa_match(subnet, ifa)."""
    ours = Netdev.of("eth0", ["10.9.9.9/8", "10.1.2.3/24"])
    assert prefix_matches(ours, clc.IpPrefixArea(V4("10.1.2.0"), 24))
    assert prefix_matches(ours, clc.IpPrefixArea(V4("10.0.0.0"), 8))
    assert not prefix_matches(ours, clc.IpPrefixArea(V4("10.1.3.0"), 24))
    assert not prefix_matches(ours, clc.IpPrefixArea(V4("10.1.2.0"), 25))  # lengths differ


def test_ipv6_match_is_chosen_by_the_proposal_and_needs_length_and_prefix():
    """smc_clc_prfx_match: IPv6 whenever the Proposal lists IPv6 prefixes, whatever our socket;
    smc_clc_prfx_match6_rcu: one of our non-link-local addresses has the length and prefix
    of one of the (first 8) proposed ones."""
    ours = Netdev.of("eth0", ["10.1.2.3/24", "fe80::9/64", "fd00:1:2::9/64"])
    area = lambda *pfx: clc.IpPrefixArea(V4(0), 0, tuple(clc.Ipv6Prefix(V6(p), n) for p, n in pfx))  # noqa: E731
    assert prefix_matches(ours, area(("2001:db8::", 32), ("fd00:1:2::", 64)))
    assert not prefix_matches(ours, area(("fd00:1:2::", 48)))
    assert not prefix_matches(ours, area(("fe80::", 64)))  # our link-local address does not count
    # only the first 8 proposed are read (min(ipv6_prefixes_cnt, SMC_CLC_MAX_V6_PREFIX))
    nine = tuple(clc.Ipv6Prefix(V6(f"2001:db8:{i}::"), 64) for i in range(8)) + (clc.Ipv6Prefix(V6("fd00:1:2::"), 64),)
    assert not prefix_matches(ours, clc.IpPrefixArea(V4(0), 0, nine))


# --------------------------------------------------------------------------- the Proposal


def test_proposal_carries_the_route_devices_prefix():
    cfg = SmcConfig(host="c")
    p, why = build_proposal(cfg, DEV, "10.1.2.3", PEER_ID, Netdev.of("eth0", ["10.1.2.1/24"]))
    assert why == 0 and (str(p.prefix.subnet), p.prefix.prefix_len) == ("10.1.2.0", 24)
    wire = clc.decode(p.encode())
    assert (str(wire.prefix.subnet), wire.prefix.prefix_len) == ("10.1.2.0", 24)


def test_configured_prefix_len_overrides_the_device():
    cfg = SmcConfig(host="c", prefix_len=30)
    p, _ = build_proposal(cfg, DEV, "10.1.2.3", PEER_ID, Netdev.of("eth0", ["10.1.2.1/24"]))
    assert (str(p.prefix.subnet), p.prefix.prefix_len) == ("10.1.2.0", 30)
    with pytest.raises(ValueError):
        SmcConfig(prefix_len=129)


def test_without_device_information_the_core_assumes_slash_8_and_slash_64():
    p, _ = build_proposal(SmcConfig(host="c"), DEV, "127.4.5.6", PEER_ID, None)
    assert (str(p.prefix.subnet), p.prefix.prefix_len) == ("127.0.0.0", 8)
    p, _ = build_proposal(SmcConfig(host="c"), DEV, "fd00:1:2:3::4", PEER_ID, None)
    assert [(str(x.prefix), x.length) for x in p.prefix.ipv6] == [("fd00:1:2:3::", 64)]


def test_no_prefix_and_no_v2_is_cnferr():
    """smc_clc_send_proposal: smc_clc_prfx_set failed and no v2 is offered -> SMC_CLC_DECL_CNFERR."""
    p, why = build_proposal(SmcConfig(host="c", versions=frozenset({1})), DEV, "10.1.2.3", PEER_ID, Netdev.of("lo", ["127.0.0.1/8"]))
    assert (p, why) == (None, DECL.CNFERR)


def test_no_prefix_with_v2_offers_v2_only_with_an_all_zero_smcr_part():
    """smc_clc_send_proposal: smc_clc_prfx_set failed, v2 offered -> typev1 N; id_for_peer,
    GID and MAC are filled only when v1 is (smcr_indicated(ini->smc_type_v1))."""
    p, why = build_proposal(SmcConfig(host="c"), DEV, "10.1.2.3", PEER_ID, Netdev.of("lo", ["127.0.0.1/8"]))
    assert why == 0 and (p.typev1, p.typev2, p.prefix) == (clc.SmcType.N, clc.SmcType.R, None)
    assert (p.peer_id, p.gid, p.mac) == (bytes(8), bytes(16), bytes(6))
    assert p.v2.roce_gid == DEV.gid


def test_ipv6_offers_no_v2():
    """smc_find_proposal_devices: SMC-Rv2 off for an AF_INET6 socket that is not v4-mapped."""
    netdev = Netdev.of("eth0", ["fd00::1/64"])
    p, _ = build_proposal(SmcConfig(host="c"), DEV, "fd00::1", PEER_ID, netdev)
    assert (p.typev1, p.typev2, p.v2) == (clc.SmcType.R, clc.SmcType.N, None)
    p, why = build_proposal(SmcConfig(host="c", versions=frozenset({2})), DEV, "fd00::1", PEER_ID, netdev)
    assert (p, why) == (None, DECL.NOSMCDEV)
    p, _ = build_proposal(SmcConfig(host="c"), DEV, "::ffff:10.1.2.3", PEER_ID, Netdev.of("eth0", ["10.1.2.1/24"]))
    assert p.typev2 == clc.SmcType.R  # v4-mapped is IPv4


def test_v1_only_proposal_has_header_version_2_as_linux_5_10_sends_it():
    """smc_clc_send_proposal: hdr.version = SMC_V2 always; the SMC-D/v2 area at 40, the prefix
    at 80 (iparea_offset 40), v2_ext_offset 0: a v1 kernel reads it through iparea_offset."""
    p, _ = build_proposal(SmcConfig(host="c", versions=frozenset({1})), DEV, "10.1.2.3", PEER_ID, Netdev.of("eth0", ["10.1.2.1/24"]))
    raw = p.encode()
    assert raw[7] >> 4 == 2 and raw[7] & 0x0F == (clc.SmcType.N << 2) | clc.SmcType.R
    assert int.from_bytes(raw[38:40], "big") == 40 and int.from_bytes(raw[50:52], "big") == 0
    # the kernel's length: pclc_base (40) + pclc_smcd (40) + prefix (8) + trailer (4)
    assert len(raw) == int.from_bytes(raw[5:7], "big") == 92
    assert raw[80:84] == bytes([10, 1, 2, 0]) and raw[84] == 24
    ipv6, _ = build_proposal(SmcConfig(host="c", versions=frozenset({1})), DEV, "fd00::1", PEER_ID,
                             Netdev.of("eth0", ["fd00::1/64", "fd01::1/64"]))  # fmt: skip
    assert len(ipv6.encode()) == 92 + 2 * 17


# --------------------------------------------------------------------------- both sides, on the fabric


@pytest.mark.parametrize("client_len,server_len,ok", [(24, 24, True), (24, 16, False), (None, None, True), (8, None, True), (8, 24, False)])
def test_prefix_lengths_end_to_end(client_len, server_len, ok):
    """The configured override on either side against the other's (the fabric has no OS
    interfaces: without an override the core assumes 127.0.0.0/8)."""
    f, a, b = pair(SmcConfig(host="client", versions=frozenset({1}), prefix_len=client_len),
                   SmcConfig(host="server", prefix_len=server_len))  # fmt: skip
    open_conn(f, a, b, 1)
    ca, cb = a.host.conns[1], b.host.conns[1]
    if ok:
        assert (ca.mode, cb.mode, ca.version) == ("SMCR", "SMCR", 1)
    else:
        assert (ca.mode, ca.fallback_reason, ca.peer_diagnosis, cb.fallback_reason) == ("TCP", DECL.PEERDECL, DECL.DIFFPREFIX, DECL.DIFFPREFIX)


def test_server_matches_against_its_route_device_not_a_default():
    """The server takes the netdev the runtime hands in (smc_clc_prfx_match on sk_dst_get's dev)."""
    cfg = SmcConfig(host="s", versions=frozenset({1}))
    p = clc.Proposal(PEER_ID, DEV.gid, DEV.mac, clc.SmcType.R, clc.SmcType.N, 2, clc.IpPrefixArea(V4("10.1.2.0"), 24))
    assert choose(cfg, p, DEV, "10.1.2.9", Netdev.of("eth0", ["10.1.2.9/24"])).version == 1
    assert choose(cfg, p, DEV, "10.1.2.9", Netdev.of("eth0", ["10.1.2.9/16"])).decline == DECL.DIFFPREFIX
    assert choose(cfg, p, DEV, "10.1.2.9", None).decline == DECL.DIFFPREFIX  # assumed 10.0.0.0/8
