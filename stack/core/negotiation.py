"""CLC negotiation: what a client proposes, what a server picks, what each side checks.

Pure functions over messages and configuration; the handshake machine (``handshake``)
calls them and acts on the result. Rules from Linux ``af_smc.c`` / ``smc_clc.c``:

* The client offers SMC-Rv1 when configured and SMC-Rv2 when configured with at least
  one UEID; with neither possible it falls back with NOSMCDEV (and says so in a Decline).
* The server takes v2 when the Proposal offers it and one UEID matches, else v1 when
  offered and the IP prefix matches, else declines with the reason of the path that
  failed (DIFFPREFIX, NOUEID when the Proposal has no UEID, NOSMCDEV when no UEID is
  common, NOV2EXT, NOSMCRDEV, MODEUNSUPP, VERSMISMAT).
* v2.1: release = min(both); max_conns = min(both) >= 16; max_links = min(both) >= 1;
  the client accepts only max_conns >= 16 and 1 <= max_links <= 2; the Confirm echoes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from stack.wire import clc
from stack.wire.codes import DECL

from .config import SmcConfig
from .ports import DeviceInfo

@dataclass(frozen=True)
class Choice:
    """What the server agreed to (or why not)."""

    version: int = 0
    decline: int = 0
    eid: bytes = bytes(32)
    release: int = 0
    max_conns: int = 255
    max_links: int = 2


def subnet(ip: str, prefix_len: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{ip}/{prefix_len}", strict=False)


def build_proposal(config: SmcConfig, device: DeviceInfo | None, local_ip: str, peer_id: bytes) -> clc.Proposal | None:
    """The client's Proposal, or None when it can offer nothing (NOSMCDEV)."""
    if device is None:
        return None
    v1 = 1 in config.versions
    v2 = config.v2
    if not v1 and not v2:
        return None
    net = subnet(local_ip, config.prefix_len)
    return clc.Proposal(
        peer_id=peer_id,
        gid=device.gid if v1 else bytes(16),
        mac=device.mac if v1 else bytes(6),
        typev1=clc.SmcType.R if v1 else clc.SmcType.N,
        typev2=clc.SmcType.R if v2 else clc.SmcType.N,
        version=2 if v2 else 1,
        prefix=clc.IpPrefixArea(net.network_address, net.prefixlen) if v1 else None,
        v2=clc.V2Extension(config.eids, device.gid, config.release, False, config.max_conns, config.max_links) if v2 else None,
    )


def choose(config: SmcConfig, p: clc.Proposal, device: DeviceInfo | None, local_ip: str) -> Choice:
    """The server's pick for a Proposal, following smc_listen_find_device."""
    if config.forced_decline is not None:
        return Choice(decline=config.forced_decline)
    offers_v1 = p.typev1.has_r
    offers_v2 = p.version >= 2 and p.typev2.has_r
    if not offers_v1 and not offers_v2:
        return Choice(decline=DECL.MODEUNSUPP)
    if device is None:
        return Choice(decline=DECL.NOSMCRDEV)
    v2_reason = 0
    if offers_v2 and config.v2:
        if p.v2 is None:
            v2_reason = DECL.NOV2EXT
        else:
            ours = set(config.eids)
            eid = next((e for e in p.v2.eids if e in ours), None)
            if not p.v2.eids:
                v2_reason = DECL.NOUEID  # the kernel's smc_listen_v2_check: the peer sent no UEID
            elif eid is None:
                # no common UEID: the kernel finds no SMC-Rv2 device and, without v1, says NOSMCDEV
                # (seen in the lab: a kernel server without a UEID declines 0x03030000)
                v2_reason = DECL.NOSMCDEV
            else:
                release = min(p.v2.release, config.release)
                max_conns, max_links = config.max_conns, config.max_links
                if release >= 1:
                    max_conns = min(p.v2.max_conns or 255, config.max_conns)
                    max_links = min(p.v2.max_links or 2, config.max_links)
                    if max_conns < 16:
                        return Choice(decline=DECL.MAXCONNERR)
                    if max_links < 1:
                        return Choice(decline=DECL.MAXLINKERR)
                return Choice(2, 0, eid, release, max_conns, max_links)
    elif offers_v2:
        # v2 without a UEID of our own is the kernel's "no matching UEID": NOSMCDEV (NOUEID if the peer sent none)
        v2_reason = (DECL.NOUEID if p.v2 is not None and not p.v2.eids else DECL.NOSMCDEV) if 2 in config.versions else DECL.VERSMISMAT
    v1_reason = 0
    if offers_v1 and 1 in config.versions:
        mine = subnet(local_ip, config.prefix_len)
        if p.prefix is None or p.prefix.prefix_len != mine.prefixlen or p.prefix.subnet != mine.network_address:
            v1_reason = DECL.DIFFPREFIX
        else:
            return Choice(1)
    elif offers_v1:
        v1_reason = DECL.VERSMISMAT
    if v1_reason == DECL.DIFFPREFIX:  # the prefix check is the kernel's first v1 test
        return Choice(decline=DECL.DIFFPREFIX)
    return Choice(decline=v2_reason or v1_reason or DECL.MODEUNSUPP)


def check_accept(sent: clc.Proposal, a: clc.Accept, config: SmcConfig) -> int:
    """0 when the client can go on with this Accept, else the Decline reason."""
    offered = {1} if sent.typev1.has_r else set()
    if sent.version >= 2 and sent.typev2.has_r:
        offered.add(2)
    if a.version not in offered:
        return DECL.MODEUNSUPP
    if a.version >= 2:
        if a.eid not in (sent.v2.eids if sent.v2 else ()):
            return DECL.NOUEID
        if a.first_contact and a.fce is not None:
            if a.fce.release > config.release:
                return DECL.RELEASEERR
            if a.fce.release >= 1:
                if a.fce.max_conns < 16:
                    return DECL.MAXCONNERR
                if not 1 <= a.fce.max_links <= 2:
                    return DECL.MAXLINKERR
    return 0


def check_confirm(choice: Choice, c: clc.Confirm) -> int:
    """The server's check that a v2 Confirm echoes what it accepted."""
    if c.version != choice.version:
        return DECL.MODEUNSUPP
    if choice.version >= 2 and c.first_contact and c.fce is not None:
        if c.fce.release != choice.release:
            return DECL.RELEASEERR
        if choice.release >= 1 and c.fce.max_conns != choice.max_conns:
            return DECL.MAXCONNERR
        if choice.release >= 1 and c.fce.max_links != choice.max_links:
            return DECL.MAXLINKERR
    return 0
