"""One snapshot as text, as smc-tools prints it for scripts, and as one JSON document.

* :func:`smcss` (``smcss``, ``-a``, ``-l``, ``-d``, ``-R``, ``-W``), :func:`linkgroup_show`
  (``smcr linkgroup show``, ``-d``), :func:`link_show` (``smcr linkgroup link-show``,
  ``-d``, ``-dd``), :func:`device` (``smcr device``, ``-d``) and :func:`stats` (``smcr stats``,
  ``-d``) print the columns smc-tools 1.8 prints, in its widths;
* :func:`render_text` puts the usual views together (what ``--once`` prints);
* :func:`render_json` is one document with the keys ``connections``, ``link_groups``,
  ``links``, ``devices`` and ``stats`` (and ``host``, ``source``, ``t``, ``notes``).

They take a :class:`smckernel.model.Snapshot`, whoever filled it: the kernel source, or a
stack snapshot through ``model.from_stack_snapshot``. Where smc-tools prints a value the
snapshot does not have (a stack knows no inode), ``-`` stands in its column; reason codes
get their names after the hex (``0x05000000/0x03030000 PEERDECL/NOSMCDEV``), at the end of
the line so that the columns stay where scripts expect them.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from stack.wire import codes

from .model import CURSORS, Conn, Snapshot

ADDR_LEN_SHORT = 23
SMCSS_STATE = {"APPFINCLOSEWAIT": "APPFINCLOSEWAIT1"}  # smcss prints state 24 so
ROLE_SHORT = {"client": "CLNT", "server": "SERV"}
DEV_TYPES = {0x1004: "RoCE_Express", 0x1016: "RoCE_Express2", 0x101E: "RoCE_Express3", 0x04ED: "ISM"}
BUCKET_KEYS = ("8K", "16K", "32K", "64K", "128K", "256K", "512K")


def reason_name(code: int | None) -> str | None:
    if code is None:
        return None
    return codes.DECLINE_REASONS.name(code)


def reason_text(code: int | None) -> str | None:
    """``0x03030000 NOSMCDEV`` (smc-tools' form), None when unknown."""
    return None if code is None else codes.format_reason(code)


def _num(v: Any, fmt: str, width: int) -> str:
    return "-".rjust(width) if v is None else format(v, fmt)


def _addr(endpoint: str | None, wide: bool) -> str:
    """An address as smcss writes it: truncated with '..' past 23 characters unless wide."""
    if not endpoint:
        return "-"
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    text = f"{host}:{port}"
    if wide or len(text) <= ADDR_LEN_SHORT:
        return text
    keep = ADDR_LEN_SHORT - 1 - len(port) - 2
    return f"{host[:keep]}..:{port}"


# ---------------------------------------------------------------------------- smcss


def smcss(snap: Snapshot, all: bool = False, listening: bool = False, debug: bool = False, smcr: bool = False,
          smcd: bool = False, wide: bool = False, handshake_addresses: bool = False) -> str:  # fmt: skip
    """smcss's table. ``handshake_addresses``: a connection in its handshake (INIT) shows the
    addresses it has (a stack's does; smcss prints none for a kernel socket in INIT)."""
    head = "State          UID   Inode   Local Address           Peer Address            Intf Mode "
    if debug:
        head += ("Shutd Token    Sndbuf   Rcvbuf   Peerbuf  rxprod-Cursor rxcons-Cursor rxFlags txprod-Cursor txcons-Cursor "
                 "txFlags txprep-Cursor txsent-Cursor txfin-Cursor  ")  # fmt: skip
    if smcr:
        head += "Role IB-device       Port Linkid GID                                      Peer-GID"
    lines = [head]
    for c in snap.connections:
        if listening:
            if c.state != "LISTEN":
                continue
        elif not all and c.state in ("LISTEN", "INIT"):
            continue
        if smcr and c.mode != "SMCR":
            continue
        if smcd and c.mode != "SMCD":
            continue
        lines.append(_smcss_line(c, debug, smcr, wide, handshake_addresses and bool(c.local or c.peer)))
    return "\n".join(lines) + "\n"


def _cur(c: Conn, name: str) -> str:
    cur = c.cursors.get(name)
    return "----:--------" if cur is None else f"{cur[0]:04x}:{cur[1]:08x}"


def _smcss_line(c: Conn, debug: bool, smcr: bool, wide: bool, init_addresses: bool = False) -> str:
    state = c.state or "-"
    out = f"{SMCSS_STATE.get(state, state):<14} {_num(c.uid, '05d', 5)} {_num(c.inode, '07d', 7)} "
    if c.state == "INIT" and not init_addresses:
        return out.rstrip(" ") + " "
    local = _addr(c.local, wide)
    out += f"{local:<{max(ADDR_LEN_SHORT, len(local))}} "
    if c.state == "LISTEN":
        return out
    peer = _addr(c.peer, wide)
    out += f"{peer:<{max(ADDR_LEN_SHORT, len(peer))}} "
    out += f"{_num(c.ifindex, '04x', 4)} "
    if c.state == "CLOSED":
        return out
    if c.mode == "TCP":
        out += "TCP "
        if c.fallback_reason is not None:
            out += f"0x{c.fallback_reason:08x}"
            names = [reason_name(c.fallback_reason) or "?"]
            if c.peer_diagnosis:
                out += f"/0x{c.peer_diagnosis:08x}"
                names.append(reason_name(c.peer_diagnosis) or "?")
            out += "  " + "/".join(names)
        return out
    out += f"{c.mode or '-':>4} "
    if debug:
        if c.shutdown is not None:
            out += f" {'R' if c.shutdown & 1 else '<'}-{'W' if c.shutdown & 2 else '>'}  "
        else:  # not reported (the embedded stack's snapshots): the column stays, so the rest lines up
            out += " -    "
        if c.token is not None:
            fl = c.flags
            out += (f"{c.token:08x} {_num(c.sndbuf_size, '08x', 8)} {_num(c.rmb_size, '08x', 8)} {_num(c.peer_rmb_size, '08x', 8)} "
                    f"{_cur(c, 'rx_prod')} {_cur(c, 'rx_cons')} {fl.get('rx_prod', 0):02x}:{fl.get('rx_conn_state', 0):02x}   "
                    f"{_cur(c, 'tx_prod')} {_cur(c, 'tx_cons')} {fl.get('tx_prod', 0):02x}:{fl.get('tx_conn_state', 0):02x}   "
                    f"{_cur(c, 'tx_prep')} {_cur(c, 'tx_sent')} {_cur(c, 'tx_fin')} ")  # fmt: skip
    if smcr and c.link is not None:
        out += (f"{ROLE_SHORT.get(c.lgr_role or '', '-'):>4} {c.ib_dev or '-':<15} {_num(c.ib_port, '02x', 2)}   "
                f"{_num(c.link, '02x', 2)}     {c.gid or '-':<40} {c.peer_gid or '-'}")  # fmt: skip
    return out


# ---------------------------------------------------------------------------- smcr linkgroup


def _lgid(lgr_id: str) -> str:
    return lgr_id if len(lgr_id) == 8 else f"{lgr_id:<8}"


def _c_hash_x(v: int | None, width: int) -> str:
    """C's ``%#<width>x``: 0 as "0", others with 0x."""
    if v is None:
        return "-".rjust(width)
    return (f"{v:#x}" if v else "0").rjust(width)


def linkgroup_show(snap: Snapshot, detail: int = 0) -> str:
    if detail >= 1:
        blocks = []
        for g in snap.link_groups:
            lines = [f"LG-ID    : {g.id}", f"LG-Role  : {ROLE_SHORT.get(g.role or '', '-')}", f"LG-Type  : {g.type or '-'}",
                     f"VLAN     : {'-' if g.vlan_id is None else format(g.vlan_id, 'x')}", f"PNET-ID  : {g.pnet_id or ''}",
                     f"Version  : {'-' if g.version is None else g.version}"]  # fmt: skip
            if g.version is not None and g.version >= 2:
                lines += [f"Peer-Rel : {'-' if g.peer_release is None else g.peer_release}", f"Peer-Host: {g.peer_host or ''}",
                          f"Peer-OS  : {g.peer_os or '-'}", f"Direct   : {'-' if g.direct is None else ('Yes' if g.direct else 'No')}",
                          f"EID      : {g.negotiated_eid or ''}"]  # fmt: skip
            lines += [f"#Conns   : {'-' if g.conns is None else g.conns}", f"Sndbuf   : {'-' if g.sndbuf_alloc is None else g.sndbuf_alloc} B",
                      f"RMB      : {'-' if g.rmb_alloc is None else g.rmb_alloc} B"]  # fmt: skip
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + ("\n" if blocks else "")
    lines = ["LG-ID    LG-Role  LG-Type  VLAN  #Conns  PNET-ID "]
    for g in snap.link_groups:
        lines.append(f"{_lgid(g.id)} {ROLE_SHORT.get(g.role or '', '-'):<8} {g.type or '-':<8} {_c_hash_x(g.vlan_id, 4)}  "
                     f"{_num(g.conns, '6d', 6)}  {g.pnet_id or '':<16} ")  # fmt: skip
    return "\n".join(lines) + "\n"


def link_show(snap: Snapshot, detail: int = 0) -> str:
    head = "LG-ID    LG-Role  LG-Type  Net-Dev         Link-State      #Conns  "
    width = _ib_dev_width(lk.ib_dev or "-" for lk in snap.links)
    if detail >= 1:
        head += f"Link-UID  Peer-UID  {'IB-Dev':<{width}}  IB-P  "
        if detail >= 2:
            head += "Local-GID                                 Peer-GID  "
    lines = [head]
    groups = {g.id: g for g in snap.link_groups}
    for lk in snap.links:
        g = groups.get(lk.lgr or "")
        role = ROLE_SHORT.get((g.role if g else None) or "", "-")
        line = (f"{_lgid(lk.lgr or '-')} {role:<8} {(g.type if g else None) or '-':<8} {(lk.net_dev or '-')[:15]:<15} "
                f"{lk.state or '-':<15} {_num(lk.conns, '6d', 6)}  ")  # fmt: skip
        if detail >= 1:
            line += f"{lk.uid or '-':<8}  {lk.peer_uid or '-':<8}  {lk.ib_dev or '-':<{width}}  {_num(lk.ib_port, '4d', 4)}  "
            if detail >= 2:
                line += f"{lk.gid or '-':<40}  {lk.peer_gid or '-'}  "
        lines.append(line)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- smcr device


def _ib_dev_width(names) -> int:
    """The IB-Dev column: 8 wide as smc-tools prints it (mlx5_0, rxe0), wider for longer names
    (a soft device is named by its address), so the columns after it stay under their headers."""
    return max([8, *(len(n) for n in names)])


def device(snap: Snapshot, detail: int = 0) -> str:
    width = _ib_dev_width(d.name for d in snap.devices)
    head = f"Net-Dev         {'IB-Dev':<{width}} IB-P  IB-State  Type          Crit  "
    if detail >= 1:
        head += " FID   PCI-ID        PCHID  "
    head += "#Links  PNET-ID  "
    lines = [head]
    for d in snap.devices:
        for p in d.ports:
            if p.valid is False:
                continue
            dtype = "-" if d.pci_device is None else DEV_TYPES.get(d.pci_device, f"{d.pci_device:#x}" if d.pci_device else "0")
            crit = "-" if d.crit is None else ("Yes" if d.crit else "No")
            line = f"{(p.net_dev or '-')[:15]:<15} {d.name:<{width}} {p.port:4d}  {p.state or '-':>8}  {dtype:<13}  {crit:>3}   "
            if detail >= 1:
                line += f"{_num(d.pci_fid, '04x', 4)}  {d.pci_id or '-':<12}  {_num(d.pci_chid, '04x', 4)}    "
            pnet = ("*" if p.pnet_by_user else "") + (p.pnet_id or "")
            line += f"{_num(p.links, '5d', 5)}  {pnet:<16} "
            lines.append(line)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- smcr stats


def abbreviated(num: int | None, max_digs: int = 6) -> str:
    """A count in at most ``max_digs`` characters, as smc-tools abbreviates (131.1K, 1.235M)."""
    if num is None:
        return "-"
    if num < 1000:
        return str(num)
    leading = len(str(num))

    def digs(lead: int) -> tuple[int, int]:
        full = lead % 3 or 3
        places = max_digs - full - 2
        return (full, places) if places > 0 else (max_digs - 1, 0)

    def mag(lead: int) -> tuple[str, float]:
        if lead < 7:
            return "K", 1e3
        if lead < 10:
            return "M", 1e6
        if lead < 13:
            return "G", 1e9
        return ("T" if lead < 16 else "P" if lead < 19 else "?"), 1000.0 ** (lead // 3)

    full, places = digs(leading)
    unit, factor = mag(leading)
    value = num / factor
    if value + 5 * math.pow(10, -1 - places) >= math.pow(10, full):
        if places > 0:
            places -= 1
        else:
            leading += 1
            full, places = digs(leading)
            unit, factor = mag(leading)
            value = num / factor
    return f"{value:{max_digs - 1}.{places}f}{unit}"


def _pct(part: int | None, whole: int | None) -> str:
    return f"{(part or 0) / whole * 100:.2f}" if whole else "0.00"


def _buckets(d: dict | None) -> str:
    d = d or {}
    vals = [d.get(k) for k in BUCKET_KEYS] + [None if d.get("1024K") is None and d.get("G_1024K") is None
                                               else (d.get("1024K") or 0) + (d.get("G_1024K") or 0)]  # fmt: skip
    return "  ".join(f"{abbreviated(v):>6}" for v in vals)


def stats(snap: Snapshot, detail: int = 0, tech: str = "smcr") -> str:
    """``smcr stats`` (``-d``): counters since the module was loaded (smc-tools can also
    show them since its last ``reset``, which it keeps in a file of its own; this does not)."""
    st = snap.stats or {}
    t: dict = st.get(tech) or {}
    if not t:
        why = "no SMC_NETLINK_GET_STATS answer" if snap.source == "kernel" else f"the {snap.source} source does not count them"
        return ("SMC-D" if tech == "smcd" else "SMC-R") + f" Connections Summary\n  unknown ({why})\n"
    fb = snap.fallbacks or {}
    g = t.get
    v1 = (g("clnt_v1_succ") or 0) + (g("srv_v1_succ") or 0)
    v2 = (g("clnt_v2_succ") or 0) + (g("srv_v2_succ") or 0)
    smc_conns = v1 + v2
    hs_err = (st.get("clnt_hshake_err") or 0) + (st.get("srv_hshake_err") or 0)
    fallback = (fb.get("client_total") or 0) + (fb.get("server_total") or 0)
    total = smc_conns + hs_err + fallback
    reqs = (g("rx_cnt") or 0) + (g("tx_cnt") or 0)
    txr, rxr = t.get("tx_rmb") or {}, t.get("rx_rmb") or {}
    tx_cnt, rx_cnt = g("tx_cnt"), g("rx_cnt")
    out = ["SMC-D Connections Summary" if tech == "smcd" else "SMC-R Connections Summary",
           f"  Total connections handled  {total:12d}"]  # fmt: skip
    if detail:
        out += [f"  SMC connections            {smc_conns:12d} (client {(g('clnt_v1_succ') or 0) + (g('clnt_v2_succ') or 0)}, "
                f"server {(g('srv_v1_succ') or 0) + (g('srv_v2_succ') or 0)})", f"    v1                       {v1:12d}",
                f"    v2                       {v2:12d}",
                f"  Handshake errors           {hs_err:12d} (client {st.get('clnt_hshake_err') or 0}, server {st.get('srv_hshake_err') or 0})"]  # fmt: skip
    else:
        out += [f"  SMC connections            {smc_conns:12d}", f"  Handshake errors           {hs_err:12d}"]
    out.append(f"  Avg requests per SMC conn  {reqs / smc_conns if smc_conns else 0:14.1f}")
    if detail:
        out.append(f"  TCP fallback               {fallback:12d} (client {fb.get('client_total') or 0}, server {fb.get('server_total') or 0})")
        for role, caption in (("server", "    Server"), ("client", "    Client")):
            reasons = sorted((r for r in fb.get("reasons", []) if r["role"] == role), key=lambda r: -(r["count"] or 0))[:3]
            if reasons:
                out.append(caption)
                out += [f"     {reason_text(r['code']):<25}  {r['count'] or 0:12d}" for r in reasons]
    else:
        out.append(f"  TCP fallback               {fallback:12d}")

    def n(v: Any) -> int:
        return v or 0

    out += ["", "RX Stats", f"  Data transmitted (Bytes) {n(g('rx_bytes')):14d} ({abbreviated(n(g('rx_bytes')))})",
            f"  Total requests             {n(rx_cnt):12d}",
            f"  Buffer usage (Bytes)       {n(g('rx_rmb_usage')):12d} ({abbreviated(n(g('rx_rmb_usage')))})",
            f"  Buffer full                {n(rxr.get('buf_full')):12d} ({_pct(rxr.get('buf_full'), rx_cnt)}%)"]  # fmt: skip
    if detail:
        out += [f"  Buffer downgrades          {n(rxr.get('downgrade')):12d}", f"  Buffer reuses              {n(rxr.get('reuse')):12d}"]
    out += ["            8KB    16KB    32KB    64KB   128KB   256KB   512KB  >512KB",
            f"  Bufs   {_buckets(t.get('rx_rmb_size'))}", f"  Reqs   {_buckets(t.get('rx_payload'))}", "", "TX Stats",
            f"  Data transmitted (Bytes) {n(g('tx_bytes')):14d} ({abbreviated(n(g('tx_bytes')))})",
            f"  Total requests             {n(tx_cnt):12d}",
            f"  Buffer usage (Bytes)       {n(g('tx_rmb_usage')):12d} ({abbreviated(n(g('tx_rmb_usage')))})",
            f"  Buffer full                {n(txr.get('buf_full')):12d} ({_pct(txr.get('buf_full'), tx_cnt)}%)",
            f"  Buffer full (remote)       {n(txr.get('buf_full_peer')):12d} ({_pct(txr.get('buf_full_peer'), tx_cnt)}%)",
            f"  Buffer too small           {n(txr.get('buf_size_small')):12d} ({_pct(txr.get('buf_size_small'), tx_cnt)}%)",
            f"  Buffer too small (remote)  {n(txr.get('buf_size_small_peer')):12d} ({_pct(txr.get('buf_size_small_peer'), tx_cnt)}%)"]  # fmt: skip
    if detail:
        out += [f"  Buffer downgrades          {n(txr.get('downgrade')):12d}", f"  Buffer reuses              {n(txr.get('reuse')):12d}"]
    out += ["            8KB    16KB    32KB    64KB   128KB   256KB   512KB  >512KB",
            f"  Bufs   {_buckets(t.get('tx_rmb_size'))}", f"  Reqs   {_buckets(t.get('tx_payload'))}", "", "Extras",
            f"  Special socket calls       {sum(n(g(k)) for k in ('cork', 'nodelay', 'sendpage', 'splice', 'urgent_data')):12d}"]  # fmt: skip
    if detail:
        out += [f"    cork                     {n(g('cork')):12d}", f"    nodelay                  {n(g('nodelay')):12d}",
                f"    sendpage                 {n(g('sendpage')):12d}", f"    splice                   {n(g('splice')):12d}",
                f"    urgent data              {n(g('urgent_data')):12d}"]  # fmt: skip
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- together


VIEWS = {
    "smcss -a": lambda s: smcss(s, all=True),
    "smcss -d": lambda s: smcss(s, debug=True),
    "smcss -R": lambda s: smcss(s, smcr=True),
    "smcr linkgroup show": lambda s: linkgroup_show(s),
    "smcr linkgroup link-show": lambda s: link_show(s, detail=2),
    "smcr device": lambda s: device(s),
    "smcr stats": lambda s: stats(s, detail=1),
}


def render_text(snap: Snapshot, views: Iterable[str] = tuple(VIEWS)) -> str:
    """The views smc-tools would print, each after a ``# <command>`` line, then the notes."""
    parts = [f"# {snap.source} SMC on {snap.host}" + (f" (network namespace {snap.netns})" if snap.netns else "")]
    for name in views:
        parts.append(f"# {name}\n{VIEWS[name](snap)}")
    if snap.notes:
        parts.append("# notes\n" + "\n".join(f"- {n}" for n in snap.notes) + "\n")
    return "\n".join(parts)


def _reason(code: int | None) -> dict[str, Any] | None:
    if code is None:
        return None
    return {"code": code, "hex": f"0x{code:08x}", "name": reason_name(code), "text": reason_text(code)}


def _cursor(cur: tuple[int, int] | None) -> dict[str, int] | None:
    return None if cur is None else {"wrap": cur[0], "count": cur[1]}


def to_json_obj(snap: Snapshot) -> dict[str, Any]:
    conns = []
    for c in snap.connections:
        conns.append({
            "id": c.id, "state": c.state, "mode": c.mode, "role": c.role, "local": c.local, "peer": c.peer,
            "uid": c.uid, "inode": c.inode, "cookie": c.cookie, "ifindex": c.ifindex,
            "shutdown": None if c.shutdown is None else {"rcv": bool(c.shutdown & 1), "snd": bool(c.shutdown & 2)},
            "fallback_reason": _reason(c.fallback_reason) if c.mode == "TCP" else None,
            "peer_diagnosis": _reason(c.peer_diagnosis) if c.mode == "TCP" and c.peer_diagnosis else None,
            "version": c.version, "token": c.token,
            "buffers": {"sndbuf": c.sndbuf_size, "rmb": c.rmb_size, "peer_rmb": c.peer_rmb_size},
            "cursors": {k: _cursor(c.cursors.get(k)) for k in CURSORS},
            "flags": c.flags or None,
            "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received,
            "link_group": None if c.link is None and c.lgr is None else {
                "id": c.lgr, "role": c.lgr_role, "link": c.link, "ib_dev": c.ib_dev, "ib_port": c.ib_port, "gid": c.gid,
                "peer_gid": c.peer_gid},
        })  # fmt: skip
    lgrs = [{"id": g.id, "role": g.role, "type": g.type, "crit": g.crit, "vlan_id": g.vlan_id, "pnet_id": g.pnet_id, "conns": g.conns,
             "version": g.version, "peer_release": g.peer_release, "peer_os": g.peer_os, "peer_host": g.peer_host,
             "negotiated_eid": g.negotiated_eid, "direct": g.direct, "max_conns": g.max_conns, "max_links": g.max_links,
             "net_cookie": g.net_cookie, "sndbuf_alloc": g.sndbuf_alloc, "rmb_alloc": g.rmb_alloc} for g in snap.link_groups]  # fmt: skip
    links = [{"link_group": lk.lgr, "id": lk.id, "state": lk.state, "ib_dev": lk.ib_dev, "ib_port": lk.ib_port, "net_dev": lk.net_dev,
              "ifindex": lk.ifindex, "gid": lk.gid, "peer_gid": lk.peer_gid, "uid": lk.uid, "peer_uid": lk.peer_uid, "conns": lk.conns,
              "qpn": lk.qpn, "peer_qpn": lk.peer_qpn} for lk in snap.links]  # fmt: skip
    devices = [{"name": d.name, "crit": d.crit, "pci_fid": d.pci_fid, "pci_chid": d.pci_chid, "pci_vendor": d.pci_vendor,
                "pci_device": d.pci_device, "pci_id": d.pci_id,
                "ports": [{"port": p.port, "net_dev": p.net_dev, "ifindex": p.ifindex, "state": p.state, "valid": p.valid,
                           "links": p.links, "pnet_id": p.pnet_id, "pnet_by_user": p.pnet_by_user} for p in d.ports]}
               for d in snap.devices]  # fmt: skip
    fb = snap.fallbacks
    stats = None
    if snap.stats is not None or fb is not None:
        stats = {"counters": snap.stats,
                 "fallback": None if fb is None else {
                     "client": fb.get("client_total"), "server": fb.get("server_total"),
                     "reasons": [{"role": r["role"], **(_reason(r["code"]) or {}), "count": r["count"]} for r in fb.get("reasons", [])]}}  # fmt: skip
    return {"host": snap.host, "source": snap.source, "netns": snap.netns, "t": snap.t, "system": snap.system, "ueids": snap.ueids,
            "connections": conns, "link_groups": lgrs, "links": links, "devices": devices, "stats": stats, "notes": snap.notes}  # fmt: skip


def render_json(snap: Snapshot, indent: int | None = 2) -> str:
    return json.dumps(to_json_obj(snap), indent=indent, sort_keys=False) + "\n"


def to_json_many(snaps: list[Snapshot]) -> dict[str, Any]:
    """One document for several snapshots (several network namespaces, or a kernel and our
    stacks): one snapshot gives ``to_json_obj``'s document as is; several give
    ``to_json_hosts``'s."""
    if len(snaps) == 1:
        return to_json_obj(snaps[0])
    return to_json_hosts(snaps)


def to_json_hosts(snaps: list[Snapshot]) -> dict[str, Any]:
    """The document of several hosts, whatever their number: the same five keys with every
    connection, link group, link and device naming its ``host`` and ``netns`` (null: the
    reader's own namespace), ``stats`` mapping each host to its counters, and ``hosts`` /
    ``namespaces`` (host -> netns) at the top."""
    doc: dict[str, Any] = {"hosts": [s.host for s in snaps], "namespaces": {s.host: s.netns for s in snaps},
                           "source": snaps[0].source if snaps else None, "connections": [], "link_groups": [], "links": [],
                           "devices": [], "stats": {}, "notes": []}  # fmt: skip
    for s in snaps:
        one = to_json_obj(s)
        for key in ("connections", "link_groups", "links", "devices"):
            doc[key].extend({"host": s.host, "netns": s.netns, **item} for item in one[key])
        doc["stats"][s.host] = one["stats"]
        doc["notes"].extend(f"{s.host}: {n}" for n in one["notes"])
    return doc


def render_many(snaps: list[Snapshot], as_json: bool = False) -> str:
    """Several snapshots: the text of each after the other (each names its host and
    namespace), or one JSON document (``to_json_many``)."""
    if as_json:
        return json.dumps(to_json_many(snaps), indent=2) + "\n"
    return "\n".join(render_text(s) for s in snaps)
