"""CLC negotiation: what a client proposes, what a server picks, what each side checks.

Pure functions over messages, configuration and what the runtime read from the OS (the
net device of the TCP connection's route, ``Netdev``); the handshake machine
(``handshake``) calls them and acts on the result. Each follows a function of Linux
``net/smc`` (``af_smc.c``, ``smc_clc.c``), named where it is done; docs/kernel-fidelity.md
lists them and every remaining difference.

Client (``smc_find_proposal_devices``, ``smc_clc_send_proposal``):

* SMC-Rv1 when configured; SMC-Rv2 when configured with at least one UEID and the TCP
  connection is IPv4 (an IPv6 one, unless v4-mapped, offers no v2); neither: NOSMCDEV.
* The v1 IP prefix comes from the route's net device (``smc_clc_prfx_set``): for IPv4 the
  subnet and mask of the first address whose subnet holds the TCP address; for IPv6 up to
  8 prefixes of its addresses that are not link-local. None found: v1 is not offered, and
  with nothing else to offer the client falls back with CNFERR.
* The header is version 2 whatever is offered (Linux >= 5.10); peer ID, GID and MAC are
  filled only when v1 is offered, so a v2-only Proposal carries an all-zero peer ID.

Server, in the kernel's order (``smc_listen_work``): ``smc_listen_v2_check`` (PEERNOSMC,
NOV2EXT, NOISM2SUPP, NOUEID), ``smc_clc_srv_v2x_features_validate`` (v2.1 limits: the
minimum of the peer's and ours, 0 included, else MAXCONNERR / MAXLINKERR, before any device
or UEID is looked at), then ``smc_listen_find_device``: the v1 prefix (DIFFPREFIX,
``smc_clc_prfx_match``), NOSMCDDEV when no SMC-R is offered at all, SMC-Rv2 on a common UEID
(NOSMCRDEV only after one matched and no device serves it), SMC-Rv1 (NOSMCDEV); the first
reason stored wins, as the kernel's ``ini->rc``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from stack.wire import clc
from stack.wire.clc import SmcType
from stack.wire.codes import DECL

from .config import SmcConfig
from .ports import DeviceInfo

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SMC_CONN_PER_LGR_MAX = 255  # what a group gets without v2.1 limits
SMC_CONN_PER_LGR_MIN = 16
SMC_LINKS_ADD_LNK_MAX = 2
SMC_LINKS_ADD_LNK_MIN = 1
SMC_RELEASE_1 = 1
# What the core assumes when the runtime could not read the interface (tests on a virtual
# fabric, a platform without netlink) and no ``prefix_len`` is configured: /8 for IPv4 (the
# loopback subnet, where such tests run) and /64 for IPv6 (the usual IPv6 subnet).
ASSUMED_PREFIX_LEN = {4: 8, 6: 64}


@dataclass(frozen=True)
class Choice:
    """What the server agreed to (or why not)."""

    version: int = 0
    decline: int = 0
    eid: bytes = bytes(32)
    release: int = 0
    max_conns: int = SMC_CONN_PER_LGR_MAX
    max_links: int = SMC_LINKS_ADD_LNK_MAX


# --------------------------------------------------------------------------- the TCP side


@dataclass(frozen=True)
class Netdev:
    """The net device a TCP connection's route goes out on (the kernel's
    ``sk_dst_get(clcsock->sk)->dev``) with its addresses, in the device's own order (the
    kernel's ``in_dev`` and ``inet6_dev`` address lists, which a netlink dump keeps). The
    runtime reads it from the OS for each connection; the core only computes with it."""

    name: str = ""
    ipv4: tuple[ipaddress.IPv4Interface, ...] = ()
    ipv6: tuple[ipaddress.IPv6Interface, ...] = ()

    @classmethod
    def of(cls, name: str, addresses) -> "Netdev":
        """From ``"address/prefixlen"`` strings (or interface objects), either family."""
        ifaces = [ipaddress.ip_interface(a) for a in addresses]
        return cls(name, tuple(i for i in ifaces if i.version == 4), tuple(i for i in ifaces if i.version == 6))

    @classmethod
    def assumed(cls, local_ip: str, prefix_len: int | None) -> "Netdev":
        """An interface holding only the TCP address, with ``prefix_len`` (an IPv4 one at
        most 32): the configured override, or what the core assumes without information."""
        addr = tcp_address(local_ip)
        plen = ASSUMED_PREFIX_LEN[addr.version] if prefix_len is None else min(prefix_len, addr.max_prefixlen)
        return cls.of("(assumed)", [f"{addr}/{plen}"])


def tcp_address(ip: str) -> IPAddress:
    """The TCP connection's address as the kernel looks at it: an IPv4-mapped IPv6 address
    is IPv4 (``ipv6_addr_v4mapped``); a scope (``fe80::1%eth0``) is dropped."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _link_local(addr: ipaddress.IPv6Address) -> bool:
    return addr in _FE80  # ipv6_addr_type() & IPV6_ADDR_LINKLOCAL: fe80::/10


_FE80 = ipaddress.IPv6Network("fe80::/10")


def proposal_prefix(netdev: Netdev, local_ip: str) -> clc.IpPrefixArea | None:
    """The IP prefix area of a Proposal (``smc_clc_prfx_set``), None when the device has no
    fitting address (the kernel's -ENOENT: no v1 offered)."""
    addr = tcp_address(local_ip)
    if addr.version == 4:  # smc_clc_prfx_set4_rcu: the first address whose subnet holds ours
        for iface in netdev.ipv4:
            if addr in iface.network:
                return clc.IpPrefixArea(iface.network.network_address, iface.network.prefixlen)
        return None
    prefixes = [clc.Ipv6Prefix(i.network.network_address, i.network.prefixlen) for i in netdev.ipv6 if not _link_local(i.ip)]
    if not prefixes:  # smc_clc_prfx_set6_rcu: at most 8, none link-local
        return None
    return clc.IpPrefixArea(ipaddress.IPv4Address(0), 0, tuple(prefixes[: clc.MAX_V6_PREFIXES]))


def prefix_matches(netdev: Netdev, prefix: clc.IpPrefixArea) -> bool:
    """``smc_clc_prfx_match``: IPv4 when the Proposal lists no IPv6 prefix (one of our
    addresses has the same prefix length and its subnet holds the proposed subnet), else
    IPv6 (one of our addresses that is not link-local has the length and the prefix of one
    of the first 8 proposed)."""
    if not prefix.ipv6:
        subnet = ipaddress.IPv4Address(prefix.subnet)
        return any(i.network.prefixlen == prefix.prefix_len and subnet in i.network for i in netdev.ipv4)
    proposed = prefix.ipv6[: clc.MAX_V6_PREFIXES]
    for iface in netdev.ipv6:
        if _link_local(iface.ip):
            continue
        for p in proposed:
            if p.length == iface.network.prefixlen and ipaddress.IPv6Address(p.prefix) in iface.network:
                return True
    return False


def _netdev(config: SmcConfig, netdev: Netdev | None, local_ip: str) -> Netdev:
    if config.prefix_len is not None or netdev is None:
        return Netdev.assumed(local_ip, config.prefix_len)
    return netdev


# --------------------------------------------------------------------------- client


def build_proposal(config: SmcConfig, device: DeviceInfo | None, local_ip: str, peer_id: bytes,
                   netdev: Netdev | None = None) -> tuple[clc.Proposal | None, int]:  # fmt: skip
    """The client's Proposal, or (None, why not): NOSMCDEV when it can offer nothing
    (``smc_find_proposal_devices``), CNFERR when only v1 was possible and the route's
    device has no fitting prefix (``smc_clc_send_proposal``)."""
    if device is None:
        return None, DECL.NOSMCDEV
    v1 = 1 in config.versions and device.roce_v1  # smc_find_rdma_v1_device_serv / smc_pnet_find_roce_resource: a RoCE v1 GID
    # smc_find_proposal_devices: no SMC-Rv2 on an IPv6 TCP connection (unless v4-mapped)
    v2 = config.v2 and tcp_address(local_ip).version == 4
    if not v1 and not v2:
        return None, DECL.NOSMCDEV
    prefix = None
    if v1:
        prefix = proposal_prefix(_netdev(config, netdev, local_ip), local_ip)
        if prefix is None:
            if not v2:
                return None, DECL.CNFERR
            v1 = False
    return clc.Proposal(
        peer_id=peer_id if v1 else bytes(8),  # the kernel fills the SMC-R part only for v1
        gid=device.gid if v1 else bytes(16),
        mac=device.mac if v1 else bytes(6),
        typev1=SmcType.R if v1 else SmcType.N,
        typev2=SmcType.R if v2 else SmcType.N,
        version=2,  # Linux >= 5.10: version 2 whatever is offered
        prefix=prefix,
        v2=clc.V2Extension(config.eids, device.gid, config.release, False, config.max_conns, config.max_links) if v2 else None,
    ), 0


# --------------------------------------------------------------------------- server


def choose(config: SmcConfig, p: clc.Proposal, device: DeviceInfo | None, local_ip: str, netdev: Netdev | None = None) -> Choice:
    """The server's answer to a Proposal (see the module's docstring for the order)."""
    if config.forced_decline is not None:
        return Choice(decline=config.forced_decline)
    v2_header = p.version > 1
    offered = ({1} if p.typev1.has_r else set()) | ({2} if v2_header and p.typev2.has_r else set())
    if offered and not offered & config.versions:
        # our own knob, no kernel's: a host configured for versions the Proposal does not offer
        return Choice(decline=DECL.VERSMISMAT)

    # smc_listen_v2_check
    smcr_v1, smcd_v1 = p.typev1.has_r, p.typev1.has_d
    smcr_v2, smcd_v2 = v2_header and p.typev2.has_r, v2_header and p.typev2.has_d
    rc = DECL.PEERNOSMC
    release = 0
    if smcr_v2 or smcd_v2:
        if p.v2 is None:
            smcr_v2 = smcd_v2 = False
            rc = DECL.NOV2EXT
        else:
            if smcd_v2:  # smc_ism_is_v2_capable(): no ISM device here
                smcd_v2 = False
                rc = DECL.NOISM2SUPP
            if smcr_v2 and not p.v2.eids:
                smcr_v2 = False
                rc = DECL.NOUEID
            release = min(p.v2.release, config.release)
    if not (smcr_v1 or smcd_v1 or smcr_v2 or smcd_v2):
        return Choice(decline=rc)

    # smc_clc_srv_v2x_features_validate: before any device or UEID is matched
    max_conns, max_links = SMC_CONN_PER_LGR_MAX, SMC_LINKS_ADD_LNK_MAX
    if smcr_v2 and release >= SMC_RELEASE_1:
        max_conns = min(p.v2.max_conns, config.max_conns)
        if max_conns < SMC_CONN_PER_LGR_MIN:
            return Choice(decline=DECL.MAXCONNERR)
        max_links = min(p.v2.max_links, config.max_links)
        if max_links < SMC_LINKS_ADD_LNK_MIN:
            return Choice(decline=DECL.MAXLINKERR)

    # smc_listen_find_device (an SMC-R host: no ISM device, so no SMC-D)
    stored = 0  # ini->rc: the first reason stored is the one given

    def store(reason: int) -> None:
        nonlocal stored
        stored = stored or reason

    prfx_rc = 0
    if p.typev1 != SmcType.N:  # smc_listen_prfx_check
        if p.prefix is None or not prefix_matches(_netdev(config, netdev, local_ip), p.prefix):
            prfx_rc = DECL.DIFFPREFIX
            store(prfx_rc)
    if not prfx_rc and smcd_v1 and p.smcd is not None:
        store(DECL.NOSMCDDEV)  # smc_find_ism_v1_device_serv: no ISM device
    if not SmcType(p.typev1).has_r and not SmcType(p.typev2).has_r:  # the header's bits, whatever the version
        return Choice(decline=stored or DECL.NOSMCDDEV)
    if smcr_v2 and 2 in config.versions:  # smc_find_rdma_v2_device_serv
        ours = set(config.eids)
        eid = next((e for e in p.v2.eids if e in ours), None)  # smc_clc_match_eid: the Proposal's order
        if eid is not None:
            # the kernel looks for a RoCE device by the TCP connection's IPv4 source address; an
            # IPv6 socket's is LOOPBACK4_IPV6 (127.0.0.6), in no device's subnet: no v2 device
            if device is None or tcp_address(local_ip).version != 4:
                store(DECL.NOSMCRDEV)
            else:
                return Choice(2, 0, eid, release, max_conns, max_links)
    if prfx_rc:
        return Choice(decline=prfx_rc)
    # smc_find_rdma_v1_device_serv
    if smcr_v1 and 1 in config.versions and device is not None and device.roce_v1:
        return Choice(1)
    store(DECL.NOSMCDEV)
    return Choice(decline=stored)


def server_peer_key(p: clc.Proposal, choice: Choice) -> tuple[bytes, bytes]:
    """Who a server's first contact is with: the peer ID and the GID the group would be made
    for. A kernel's v2-only Proposal carries an all-zero peer ID, so the ID alone would make
    every such peer one."""
    return p.peer_id, (p.v2.roce_gid if choice.version >= 2 and p.v2 is not None else p.gid)


# --------------------------------------------------------------------------- client checks


def check_accept(sent: clc.Proposal, a: clc.Accept, config: SmcConfig) -> int:
    """0 when the client can go on with this Accept, else the Decline reason
    (``smc_connect_check_aclc``, ``smc_clc_clnt_v2x_features_validate``)."""
    offered = {1} if sent.typev1.has_r else set()
    if sent.version >= 2 and sent.typev2.has_r:
        offered.add(2)
    if min(a.version, 2) not in offered:
        return DECL.MODEUNSUPP
    if a.version >= 2:
        if a.eid not in (sent.v2.eids if sent.v2 else ()):
            return DECL.NOUEID
        if a.first_contact and a.fce is not None:
            if a.fce.release > config.release:
                return DECL.RELEASEERR
            if a.fce.release >= SMC_RELEASE_1:
                if a.fce.max_conns < SMC_CONN_PER_LGR_MIN:
                    return DECL.MAXCONNERR
                if not SMC_LINKS_ADD_LNK_MIN <= a.fce.max_links <= SMC_LINKS_ADD_LNK_MAX:
                    return DECL.MAXLINKERR
    return 0


def check_confirm(choice: Choice, c: clc.Confirm) -> int:
    """The server's check that a v2 Confirm echoes what it accepted
    (``smc_clc_v2x_features_confirm_check``)."""
    if c.version != choice.version:
        return DECL.MODEUNSUPP
    if choice.version >= 2 and c.first_contact and c.fce is not None:
        if c.fce.release != choice.release:
            return DECL.RELEASEERR
        if choice.release >= SMC_RELEASE_1 and c.fce.max_conns != choice.max_conns:
            return DECL.MAXCONNERR
        if choice.release >= SMC_RELEASE_1 and c.fce.max_links != choice.max_links:
            return DECL.MAXLINKERR
    return 0


# --------------------------------------------------------------------------- the first link


def confirm_link_limits(msg, lgr_version: int, peer_release: int, max_conns: int, max_links: int):
    """A CONFIRM LINK carries the group's v2.1 limits only to a v2 peer of release >= 1;
    otherwise max_conns 0 and max_links SMC_LINKS_ADD_LNK_MAX (``smc_llc_send_confirm_link``)."""
    if lgr_version >= 2 and peer_release >= SMC_RELEASE_1:
        return replace(msg, max_conns=max_conns, max_links=max_links)
    return replace(msg, max_conns=0, max_links=SMC_LINKS_ADD_LNK_MAX)
