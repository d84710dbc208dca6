"""SMC_GEN_NETLINK, pure: the smc module's generic netlink dumps as plain records.

Facts from include/uapi/linux/smc.h, net/smc/smc_core.c, smc_ib.c, smc_stats.c,
smc_clc.c and smc_netlink.c (checked against a 6.12 kernel's replies, which the unit
tests keep as fixtures):

* every dump command may be used by any user; the family has no multicast group, so a
  change is only seen by asking again;
* GET_LGR_SMCR sends one message per link group; GET_LINK_SMCR sends each link group
  followed by one message per usable link (state ACTIVATING or ACTIVE): a link carries no
  link group id, it belongs to the group before it;
* the link group id is the u32 the kernel reads from its 4 id bytes (smc-tools prints it
  ``%08x``); link user ids are 4 raw bytes (printed as their hex);
* the statistics and the fallback counters are per network namespace; a fallback reason's
  count is a u16 in the kernel and wraps;
* attributes added by later kernels (buffer allocation, net cookie, v2 maxima, buffer
  usage) are simply absent on earlier ones: a field this kernel does not send is None.

Each ``parse_*`` takes the raw reply stream of its dump and returns the records and notes
(attributes this version does not know, messages that did not parse): never an exception
for content, only :class:`~smckernel.netlink.FormatError` for bytes that are not netlink.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from . import netlink as nl

# commands (enum in uapi smc.h)
GET_SYS_INFO, GET_LGR_SMCR, GET_LINK_SMCR, GET_LGR_SMCD, GET_DEV_SMCD, GET_DEV_SMCR = 1, 2, 3, 4, 5, 6
GET_STATS, GET_FBACK_STATS, DUMP_UEID, ADD_UEID, REMOVE_UEID, FLUSH_UEID = 7, 8, 9, 10, 11, 12
DUMP_SEID, ENABLE_SEID, DISABLE_SEID, DUMP_HS_LIMITATION = 13, 14, 15, 16
COMMANDS = {1: "GET_SYS_INFO", 2: "GET_LGR_SMCR", 3: "GET_LINK_SMCR", 4: "GET_LGR_SMCD", 5: "GET_DEV_SMCD", 6: "GET_DEV_SMCR",
            7: "GET_STATS", 8: "GET_FBACK_STATS", 9: "DUMP_UEID", 10: "ADD_UEID", 11: "REMOVE_UEID", 12: "FLUSH_UEID",
            13: "DUMP_SEID", 14: "ENABLE_SEID", 15: "DISABLE_SEID", 16: "DUMP_HS_LIMITATION", 17: "ENABLE_HS_LIMITATION",
            18: "DISABLE_HS_LIMITATION"}  # fmt: skip
# what each dump is for, and the first kernel that has it (an operator's hint when it is missing)
SINCE = {GET_SYS_INFO: "5.11", GET_LGR_SMCR: "5.11", GET_LINK_SMCR: "5.11", GET_DEV_SMCR: "5.11", GET_STATS: "5.14",
         GET_FBACK_STATS: "5.14", DUMP_UEID: "5.16", DUMP_SEID: "5.16", DUMP_HS_LIMITATION: "6.1"}  # fmt: skip

# top-level attributes (SMC_GEN_*)
GEN_SYS_INFO, GEN_LGR_SMCR, GEN_LINK_SMCR, GEN_LGR_SMCD, GEN_DEV_SMCD, GEN_DEV_SMCR, GEN_STATS, GEN_FBACK_STATS = range(1, 9)

PAD = "pad"  # an attribute that only aligns 64-bit values
Spec = dict[int, tuple[str, Any]]

SYS_INFO: Spec = {1: ("version", "u8"), 2: ("release", "u8"), 3: ("is_ism_v2", "u8"), 4: ("local_host", "str"), 5: ("seid", "str"),
                  6: ("is_smcr_v2", "u8")}  # fmt: skip
LGR_V2_COMMON: Spec = {0: ("version", "u8"), 1: ("peer_release", "u8"), 2: ("peer_os", "u8"), 3: ("negotiated_eid", "str"),
                       4: ("peer_host", "str")}  # fmt: skip
LGR_R_V2: Spec = {1: ("direct", "u8"), 2: ("max_conns", "u8"), 3: ("max_links", "u8")}
LGR_SMCR: Spec = {1: ("id", "u32"), 2: ("role", "u8"), 3: ("type", "u8"), 4: ("pnet_id", "str"), 5: ("vlan_id", "u8"),
                  6: ("conns", "u32"), 7: ("v2", LGR_V2_COMMON), 8: ("v2_smcr", LGR_R_V2), 9: ("net_cookie", "u64"),
                  10: (PAD, PAD), 11: ("buf_type", "u8"), 12: ("sndbuf_alloc", "uint"), 13: ("rmb_alloc", "uint")}  # fmt: skip
LINK_SMCR: Spec = {1: ("id", "u8"), 2: ("ib_dev", "str"), 3: ("ib_port", "u8"), 4: ("gid", "str"), 5: ("peer_gid", "str"),
                   6: ("conns", "u32"), 7: ("net_dev", "u32"), 8: ("uid", "raw"), 9: ("peer_uid", "raw"), 10: ("state", "u32")}  # fmt: skip
LGR_SMCD: Spec = {1: ("id", "u32"), 2: ("gid", "u64"), 3: ("peer_gid", "u64"), 4: ("vlan_id", "u8"), 5: ("conns", "u32"),
                  6: ("pnet_id", "str"), 7: ("chid", "u16"), 8: (PAD, PAD), 9: ("v2", LGR_V2_COMMON), 10: ("ext_gid", "u64"),
                  11: ("peer_ext_gid", "u64"), 12: ("sndbuf_alloc", "uint"), 13: ("dmb_alloc", "uint")}  # fmt: skip
DEV_PORT: Spec = {1: ("pnet_by_user", "u8"), 2: ("pnet_id", "str"), 3: ("net_dev", "u32"), 4: ("state", "u8"), 5: ("valid", "u8"),
                  6: ("links", "u32")}  # fmt: skip
DEV: Spec = {1: ("use_cnt", "u32"), 2: ("is_crit", "u8"), 3: ("pci_fid", "u32"), 4: ("pci_chid", "u16"), 5: ("pci_vendor", "u16"),
             6: ("pci_device", "u16"), 7: ("pci_id", "str"), 8: ("port1", DEV_PORT), 9: ("port2", DEV_PORT), 10: ("ib_name", "str")}  # fmt: skip
BUCKETS = ("8K", "16K", "32K", "64K", "128K", "256K", "512K", "1024K", "G_1024K")
STATS_PLOAD: Spec = {0: (PAD, PAD), **{i + 1: (name, "u64") for i, name in enumerate(BUCKETS)}}
STATS_RMB: Spec = {0: (PAD, PAD), 1: ("buf_size_small_peer", "u64"), 2: ("buf_size_small", "u64"), 3: ("buf_full_peer", "u64"),
                   4: ("buf_full", "u64"), 5: ("reuse", "u64"), 6: ("alloc", "u64"), 7: ("downgrade", "u64")}  # fmt: skip
STATS_TECH: Spec = {0: (PAD, PAD), 1: ("tx_rmb_size", STATS_PLOAD), 2: ("rx_rmb_size", STATS_PLOAD), 3: ("tx_payload", STATS_PLOAD),
                    4: ("rx_payload", STATS_PLOAD), 5: ("tx_rmb", STATS_RMB), 6: ("rx_rmb", STATS_RMB), 7: ("clnt_v1_succ", "u64"),
                    8: ("clnt_v2_succ", "u64"), 9: ("srv_v1_succ", "u64"), 10: ("srv_v2_succ", "u64"), 11: ("sendpage", "u64"),
                    12: ("splice", "u64"), 13: ("cork", "u64"), 14: ("nodelay", "u64"), 15: ("urgent_data", "u64"),
                    16: ("rx_bytes", "u64"), 17: ("tx_bytes", "u64"), 18: ("rx_cnt", "u64"), 19: ("tx_cnt", "u64"),
                    20: ("rx_rmb_usage", "uint"), 21: ("tx_rmb_usage", "uint")}  # fmt: skip
STATS: Spec = {0: (PAD, PAD), 1: ("smcd", STATS_TECH), 2: ("smcr", STATS_TECH), 3: ("clnt_hshake_err", "u64"), 4: ("srv_hshake_err", "u64")}
FBACK: Spec = {0: (PAD, PAD), 1: ("is_server", "u8"), 2: ("srv_cnt", "u64"), 3: ("clnt_cnt", "u64"), 4: ("code", "u32"), 5: ("count", "u16")}
UEID: Spec = {1: ("ueid", "str")}
SEID: Spec = {1: ("seid", "str"), 2: ("enabled", "u8")}
HS_LIMITATION: Spec = {1: ("enabled", "u8")}

LGR_TYPES = {0: "NONE", 1: "SINGLE", 2: "SYM", 3: "ASYMP", 4: "ASYML"}
LINK_STATES = {0: "LINK_UNUSED", 1: "LINK_INACTIVE", 2: "LINK_ACTIVATING", 3: "LINK_ACTIVE"}
PEER_OS = {1: "ZOS", 2: "LINUX", 3: "AIX"}
_SCALAR = {"u8": nl.u8, "u16": nl.u16, "u32": nl.u32, "u64": nl.u64, "uint": nl.uint, "str": nl.string}


def decode(data: bytes, spec: Spec, path: str, unknown: set[str]) -> dict[str, Any]:
    """Attributes by a spec: names and values; a type the spec lacks goes to ``unknown``
    as "path.type"; a repeated attribute keeps its last value, as the kernel's parsers do."""
    out: dict[str, Any] = {}
    for t, v in nl.attrs(data, path):
        entry = spec.get(t)
        if entry is None:
            unknown.add(f"{path}.{t}")
            continue
        name, kind = entry
        if kind == PAD:
            continue
        if isinstance(kind, dict):
            out[name] = decode(v, kind, f"{path}.{name}", unknown)
        elif kind == "raw":
            out[name] = v
        else:
            out[name] = _SCALAR[kind](v, f"{path}.{name}")
    return out


@dataclass
class Parsed:
    """What one dump gave: its records (dicts of decoded attributes), the notes on it, the
    error that ended it (negative errno, 0 for none)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: int = 0


def parse(stream: bytes, cmd: int) -> Parsed:
    """A recorded reply stream of dump ``cmd``, decoded by the command's spec."""
    name = COMMANDS.get(cmd, str(cmd))
    out = Parsed()
    bodies, err, interrupted = nl.dump_bodies(stream)
    out.error = err
    unknown: set[str] = set()
    for i, body in enumerate(bodies):
        try:
            mcmd, _ver, rest = nl.genl_body(body)
            out.records.extend(_message(mcmd, rest, unknown))
        except nl.FormatError as e:
            out.notes.append(f"{name}: message {i} left out: {e}")
    if unknown:
        out.notes.append(f"{name}: attributes this version does not know were ignored: {', '.join(sorted(unknown))}")
    if err:
        out.notes.append(f"{name}: the dump ended with error {-err} ({os.strerror(-err)})")
    if interrupted:
        out.notes.append(f"{name}: the kernel flagged the dump as interrupted by a change")
    return out


_TOP: dict[int, tuple[str, Spec]] = {GEN_SYS_INFO: ("sys_info", SYS_INFO), GEN_LGR_SMCR: ("lgr", LGR_SMCR), GEN_LINK_SMCR: ("link", LINK_SMCR),
                                     GEN_LGR_SMCD: ("lgr_smcd", LGR_SMCD), GEN_DEV_SMCD: ("dev_smcd", DEV), GEN_DEV_SMCR: ("dev", DEV),
                                     GEN_STATS: ("stats", STATS), GEN_FBACK_STATS: ("fallback", FBACK)}  # fmt: skip
_FLAT: dict[int, tuple[str, Spec]] = {DUMP_UEID: ("ueid", UEID), DUMP_SEID: ("seid", SEID), DUMP_HS_LIMITATION: ("hs_limitation", HS_LIMITATION)}


def _message(cmd: int, rest: bytes, unknown: set[str]) -> list[dict[str, Any]]:
    """The records of one message: {"kind": ..., **fields} for each top-level nest (or the
    message's own attributes for the UEID/SEID/limitation dumps)."""
    if cmd in _FLAT:
        kind, spec = _FLAT[cmd]
        return [{"kind": kind, **decode(rest, spec, kind, unknown)}]
    out = []
    for t, v in nl.attrs(rest, COMMANDS.get(cmd, str(cmd))):
        top = _TOP.get(t)
        if top is None:
            unknown.add(f"{COMMANDS.get(cmd, cmd)}.{t}")
            continue
        kind, spec = top
        out.append({"kind": kind, **decode(v, spec, kind, unknown)})
    return out


# ---------------------------------------------------------------------------- records by dump


def link_groups(parsed: Parsed) -> list[dict[str, Any]]:
    """GET_LGR_SMCR or GET_LINK_SMCR records as link groups, each with its ``links``."""
    groups: list[dict[str, Any]] = []
    for r in parsed.records:
        if r["kind"] == "lgr":
            groups.append({**r, "links": []})
        elif r["kind"] == "link" and groups:
            groups[-1]["links"].append(r)
        elif r["kind"] == "link":
            parsed.notes.append("GET_LINK_SMCR: a link came before any link group; left out")
    return groups


def fallbacks(parsed: Parsed) -> dict[str, Any]:
    """GET_FBACK_STATS: totals and (role, code, count) per reason."""
    out: dict[str, Any] = {"server_total": None, "client_total": None, "reasons": []}
    for r in parsed.records:
        if r["kind"] != "fallback":
            continue
        if "srv_cnt" in r:
            out["server_total"] = r["srv_cnt"]
        if "clnt_cnt" in r:
            out["client_total"] = r["clnt_cnt"]
        if r.get("code"):
            out["reasons"].append({"role": "server" if r.get("is_server") else "client", "code": r["code"], "count": r.get("count")})
    return out


def lgr_id_text(lgr_id: int | None) -> str | None:
    """A link group id as smc-tools prints it (LG-ID)."""
    return None if lgr_id is None else f"{lgr_id:08x}"
