"""One-line, operator-readable descriptions of decoded SMC messages.

Reason codes are printed as smc-tools prints them (``0x03030000 NOSMCDEV``); names are
the kernel's.
"""

from __future__ import annotations

from stack.wire import cdc, clc, codes, llc
from stack.wire.text import printable_ascii


def gid_text(g: bytes) -> str:
    """A GID as the address it reads as: ::ffff:10.3.0.1 (IPv4-mapped), fe80::5054:ff:fe13:1."""
    if g[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in g[12:])
    import ipaddress

    return str(ipaddress.IPv6Address(g))


def describe_clc(m: clc.ClcMessage) -> str:
    if isinstance(m, clc.Proposal):
        parts = [f"CLC Proposal v{m.version} offers v1={m.typev1.name}"]
        if m.version >= 2:
            parts.append(f"v2={m.typev2.name}")
        if m.prefix is not None:
            if m.prefix.ipv6:  # an IPv6 connection's Proposal: its prefixes (the IPv4 field is zero)
                parts.append("prefixes " + ",".join(f"{p.prefix}/{p.length}" for p in m.prefix.ipv6))
            else:
                parts.append(f"prefix {m.prefix.subnet}/{m.prefix.prefix_len}")
        if m.v2 is not None:
            eids = ",".join(clc.eid_text(e) for e in m.v2.eids) or "none"
            parts.append(f"UEIDs {eids} RoCEv2 GID {gid_text(m.v2.roce_gid)} release {m.v2.release}")
        return " ".join(parts)
    if isinstance(m, (clc.Accept, clc.Confirm)):
        kind = "Accept" if isinstance(m, clc.Accept) else "Confirm"
        text = (
            f"CLC {kind} v{m.version}{' first contact' if m.first_contact else ''} QPN 0x{m.qpn:06x} "
            f"token 0x{m.rmbe_alert_token:08x} RMB {clc.rmbe_size_bytes(m.rmbe_size) // 1024} KiB "
            f"rkey 0x{m.rmb_rkey:08x} MTU {clc.qp_mtu_bytes(m.qp_mtu) if 1 <= m.qp_mtu <= 5 else m.qp_mtu}"
        )
        if m.fce is not None:
            text += f" host {printable_ascii(m.fce.hostname).strip()} max_conns {m.fce.max_conns} max_links {m.fce.max_links}"
        if isinstance(m, clc.Confirm) and m.gids:
            text += " GIDs " + ",".join(gid_text(g) for g in m.gids)
        return text
    if isinstance(m, clc.Decline):
        return f"CLC Decline v{m.version} {codes.format_reason(m.diagnosis)}{' (out of sync)' if m.out_of_sync else ''}"
    return f"CLC SMC-D {m.type.name.title()} v{m.version} (SMC-D is reported, not spoken)"


def describe_llc(m: llc.LlcMessage) -> str:
    head = m.name + (" response" if m.response else " request")
    if isinstance(m, llc.ConfirmLink):
        return f"{head} link {m.link_num} QPN 0x{m.qpn:06x} GID {gid_text(m.gid)} max_links {m.max_links}"
    if isinstance(m, llc.AddLink):
        if m.rejected:
            return f"{head} REJECTED reason {codes.ADD_LINK_REJECT_REASONS.format(m.reject_reason)}"
        return f"{head} link {m.link_num} QPN 0x{m.qpn:06x} GID {gid_text(m.gid)} PSN 0x{m.psn:06x} rkeys {len(m.rkeys)}"
    if isinstance(m, llc.AddLinkCont):
        return f"{head} link {m.link_num} {m.num_rkeys} rkeys left"
    if isinstance(m, llc.DeleteLink):
        scope = "all links" if m.all else f"link {m.link_num}"
        return f"{head} {scope}{' orderly' if m.orderly else ''} {codes.DELETE_LINK_REASONS.format(m.reason)}"
    if isinstance(m, llc.RequestAddLink):
        return f"{head} GIDs " + ",".join(gid_text(g) for g in m.gids)
    if isinstance(m, llc.ConfirmRkey):
        return f"{head} rkey 0x{m.rkey:08x}{' NEGATIVE' if m.negative else ''} +{len(m.others)} other links"
    if isinstance(m, llc.DeleteRkey):
        return f"{head} rkeys " + ",".join(f"0x{r:08x}" for r in m.rkeys) + (" NEGATIVE" if m.negative else "")
    return head


def describe_cdc(m: cdc.CdcMessage) -> str:
    flags = [
        name
        for name, on in (
            ("write-blocked", m.write_blocked),
            ("urg-pending", m.urg_data_pending),
            ("urg-present", m.urg_data_present),
            ("cons-update-req", m.cons_curs_upd_req),
            ("failover-validation", m.failover_validation),
            ("done-writing", m.peer_done_writing),
            ("closed", m.peer_conn_closed),
            ("ABORT", m.peer_conn_abort),
        )
        if on
    ]
    return f"CDC seq {m.seqno} token 0x{m.token:08x} prod {m.prod.wrap}:{m.prod.count} cons {m.cons.wrap}:{m.cons.count}" + (
        f" [{' '.join(flags)}]" if flags else ""
    )


def describe(m) -> str:
    if isinstance(m, llc.LlcMessage):
        return describe_llc(m)
    if isinstance(m, cdc.CdcMessage):
        return describe_cdc(m)
    return describe_clc(m)
