"""The neutral snapshot: what one host's SMC looks like at one moment, whoever tells.

:class:`Snapshot` is what the renderers (``smckernel.once``) take. It is built here from
the kernel's replies (:func:`from_kernel`, pure: the raw dumps come in as bytes, the time
as a number) and from a stack snapshot (:func:`from_stack_snapshot`: the embedded, attach
and replay sources of smctop hand ``Stack.snapshot()`` dicts), and it turns into the
stack's snapshot shape (:func:`to_stack_snapshot`) so that smctop's model can take the
kernel's state through the path it already has (``Model.apply_snapshot``).

A field the source cannot tell is None: the renderers show it as unknown, never as a
made-up value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stack.wire import codes

from . import diag as kdiag
from . import genl as kgenl
from . import netlink as nl

CURSORS = ("rx_prod", "rx_cons", "tx_prod", "tx_cons", "tx_prep", "tx_sent", "tx_fin")
ROLE_WORDS = {0: "client", 1: "server"}  # SMC_CLNT, SMC_SERV


@dataclass(slots=True)
class Conn:
    """One SMC socket (a connection, a listener or one still in its handshake)."""

    id: int | None = None  # the source's connection number (events' ``conn``)
    state: str | None = None  # the kernel's name: ACTIVE, INIT, LISTEN, PEERCLOSEWAIT1, ...
    mode: str | None = None  # SMCR, SMCD or TCP; None while the handshake runs (INIT)
    local: str | None = None
    peer: str | None = None
    role: str | None = None  # client or server, when known (the link group's role for SMC-R)
    uid: int | None = None
    inode: int | None = None
    cookie: int | None = None
    ifindex: int | None = None
    shutdown: int | None = None  # bit 0: no more receives, bit 1: no more sends
    fallback_reason: int | None = None
    peer_diagnosis: int | None = None
    version: int | None = None
    token: int | None = None
    sndbuf_size: int | None = None
    rmb_size: int | None = None
    peer_rmb_size: int | None = None
    cursors: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (wrap, count)
    flags: dict[str, int] = field(default_factory=dict)  # rx_prod, rx_conn_state, tx_prod, tx_conn_state
    lgr: str | None = None
    lgr_role: str | None = None
    link: int | None = None
    ib_dev: str | None = None
    ib_port: int | None = None
    gid: str | None = None
    peer_gid: str | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None


@dataclass
class Link:
    lgr: str | None
    id: int | None = None
    state: str | None = None  # LINK_ACTIVE ...
    ib_dev: str | None = None
    ib_port: int | None = None
    net_dev: str | None = None
    ifindex: int | None = None
    gid: str | None = None
    peer_gid: str | None = None
    uid: str | None = None  # the link user id, hex
    peer_uid: str | None = None
    conns: int | None = None
    qpn: int | None = None
    peer_qpn: int | None = None


@dataclass
class LinkGroup:
    id: str
    role: str | None = None  # client or server
    type: str | None = None  # SINGLE, SYM, ASYMP, ASYML, NONE
    vlan_id: int | None = None
    pnet_id: str | None = None
    conns: int | None = None
    version: int | None = None
    peer_release: int | None = None
    peer_os: str | None = None
    peer_host: str | None = None
    negotiated_eid: str | None = None
    direct: bool | None = None
    max_conns: int | None = None
    max_links: int | None = None
    net_cookie: int | None = None
    sndbuf_alloc: int | None = None
    rmb_alloc: int | None = None

    @property
    def crit(self) -> bool | None:
        """smc-tools' Crit: no failover path (SINGLE, or locally asymmetric)."""
        if self.type is None:
            return None
        return self.type in ("SINGLE", "ASYML")


@dataclass
class Port:
    port: int
    net_dev: str | None = None
    ifindex: int | None = None
    state: str | None = None  # ACTIVE or INACTIVE
    valid: bool | None = None
    links: int | None = None
    pnet_id: str | None = None
    pnet_by_user: bool | None = None


@dataclass
class Device:
    name: str
    crit: bool | None = None
    pci_fid: int | None = None
    pci_chid: int | None = None
    pci_vendor: int | None = None
    pci_device: int | None = None
    pci_id: str | None = None
    ports: list[Port] = field(default_factory=list)


@dataclass
class Snapshot:
    host: str
    t: float
    source: str = "kernel"  # kernel, stack, replay, ...
    netns: str | None = None
    connections: list[Conn] = field(default_factory=list)
    link_groups: list[LinkGroup] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    stats: dict[str, Any] | None = None  # the kernel's counters (smcr stats), or the stack's
    fallbacks: dict[str, Any] | None = None  # totals and reasons by role
    system: dict[str, Any] | None = None  # SMC version, release, host name, SEID, ...
    ueids: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # what could not be read, and why


# ---------------------------------------------------------------------------- from the kernel


@dataclass
class RawDumps:
    """The kernel's replies as bytes: what a poll reads and a fixture keeps. A command that
    was not asked (the kernel lacks it, or it failed) is missing from ``genl``; ``errors``
    says why."""

    diag: bytes | None = None
    genl: dict[int, bytes] = field(default_factory=dict)
    family: bytes | None = None
    ifnames: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    net_cookie: int | None = None  # the namespace read (SO_NETNS_COOKIE): link groups of others are left out


def _trim(text: str | None) -> str | None:
    """smc-tools trims the blank padding of EIDs, host names and PNET ids."""
    return None if text is None else text.strip()


def cursor_bytes(cur: tuple[int, int] | None, size: int | None) -> int | None:
    """Bytes a cursor stands for since the connection began: wraps times the buffer size
    plus the count (exact while the 16-bit wrap counter has not wrapped itself)."""
    if cur is None or not size:
        return None
    return cur[0] * size + cur[1]


def conn_from_diag(s: kdiag.DiagSocket) -> Conn:
    c = Conn(state=s.state_name, uid=s.uid, inode=s.inode, cookie=s.cookie, ifindex=s.ifindex, shutdown=s.shutdown,
             fallback_reason=s.fallback_reason, peer_diagnosis=s.peer_diagnosis)  # fmt: skip
    if s.state != codes.SmcState.INIT:
        c.mode = s.mode_name
        c.local = s.local
        if s.state != codes.SmcState.LISTEN:
            c.peer = s.peer
    ci = s.conninfo
    if ci is not None:
        c.token, c.sndbuf_size, c.rmb_size, c.peer_rmb_size = ci.token, ci.sndbuf_size, ci.rmbe_size, ci.peer_rmbe_size
        for name in CURSORS:
            cur = getattr(ci, name)
            c.cursors[name] = (cur.wrap, cur.count)
        c.flags = {"rx_prod": ci.rx_prod_flags, "rx_conn_state": ci.rx_conn_state_flags, "tx_prod": ci.tx_prod_flags,
                   "tx_conn_state": ci.tx_conn_state_flags}  # fmt: skip
        c.bytes_sent = cursor_bytes(c.cursors.get("tx_prod"), c.peer_rmb_size)
        c.bytes_received = cursor_bytes(c.cursors.get("rx_prod"), c.rmb_size)
    li = s.lgrinfo
    if li is not None:
        c.link, c.ib_dev, c.ib_port, c.gid, c.peer_gid = li.link_id, li.ibname, li.ibport, li.gid, li.peer_gid
        c.lgr_role = ROLE_WORDS.get(li.role)
        c.role = c.lgr_role  # an SMC-R connection has its link group's role (smc_conn_create)
    return c


def _lgr(rec: dict[str, Any]) -> LinkGroup:
    v2 = rec.get("v2") or {}
    r2 = rec.get("v2_smcr") or {}
    return LinkGroup(
        id=kgenl.lgr_id_text(rec.get("id")) or "?",
        role=ROLE_WORDS.get(rec.get("role")) if "role" in rec else None,
        type=kgenl.LGR_TYPES.get(rec["type"], f"{rec['type']:#x}?") if "type" in rec else None,
        vlan_id=rec.get("vlan_id"),
        pnet_id=_trim(rec.get("pnet_id")),
        conns=rec.get("conns"),
        version=v2.get("version", 1 if "id" in rec and not v2 else None),
        peer_release=v2.get("peer_release"),
        peer_os=kgenl.PEER_OS.get(v2["peer_os"], f"Unknown ({v2['peer_os']:#x})") if "peer_os" in v2 else None,
        peer_host=_trim(v2.get("peer_host")),
        negotiated_eid=_trim(v2.get("negotiated_eid")),
        direct=bool(r2["direct"]) if "direct" in r2 else None,
        max_conns=r2.get("max_conns"),
        max_links=r2.get("max_links"),
        net_cookie=rec.get("net_cookie"),
        sndbuf_alloc=rec.get("sndbuf_alloc"),
        rmb_alloc=rec.get("rmb_alloc"),
    )


def _link(lgr: str, rec: dict[str, Any], ifnames: dict[int, str]) -> Link:
    ifindex = rec.get("net_dev")
    return Link(
        lgr=lgr, id=rec.get("id"), state=kgenl.LINK_STATES.get(rec["state"], f"{rec['state']:#x}?") if "state" in rec else None,
        ib_dev=rec.get("ib_dev"), ib_port=rec.get("ib_port"), ifindex=ifindex, net_dev=ifnames.get(ifindex) if ifindex else None,
        gid=rec.get("gid"), peer_gid=rec.get("peer_gid"), uid=rec["uid"].hex() if "uid" in rec else None,
        peer_uid=rec["peer_uid"].hex() if "peer_uid" in rec else None, conns=rec.get("conns"),
    )  # fmt: skip


def _device(rec: dict[str, Any], ifnames: dict[int, str]) -> Device:
    d = Device(name=rec.get("ib_name", "?"), crit=bool(rec["is_crit"]) if "is_crit" in rec else None, pci_fid=rec.get("pci_fid"),
               pci_chid=rec.get("pci_chid"), pci_vendor=rec.get("pci_vendor"), pci_device=rec.get("pci_device"), pci_id=rec.get("pci_id"))  # fmt: skip
    for i, key in enumerate(("port1", "port2"), 1):
        p = rec.get(key)
        if p is None:
            continue
        ifindex = p.get("net_dev")
        d.ports.append(Port(port=i, ifindex=ifindex, net_dev=ifnames.get(ifindex) if ifindex else None,
                            state=("ACTIVE" if p["state"] else "INACTIVE") if "state" in p else None,
                            valid=bool(p["valid"]) if "valid" in p else None, links=p.get("links"), pnet_id=_trim(p.get("pnet_id")),
                            pnet_by_user=bool(p["pnet_by_user"]) if "pnet_by_user" in p else None))  # fmt: skip
    return d


def _match_lgr(c: Conn, snap: Snapshot) -> str | None:
    """The link group of an SMC-R connection: smc_diag names its link (device, port, GIDs,
    link id) and the group's role but not the group; the group whose link matches is it.
    None when no group or several match (two groups of one role over the same GIDs)."""
    if c.link is None:
        return None
    found = {lk.lgr for lk in snap.links if lk.id == c.link and lk.ib_dev == c.ib_dev and lk.ib_port == c.ib_port
             and lk.gid == c.gid and lk.peer_gid == c.peer_gid}  # fmt: skip
    roles = {g.id: g.role for g in snap.link_groups}
    found = {g for g in found if roles.get(g) == c.lgr_role}
    return found.pop() if len(found) == 1 else None


def from_kernel(raw: RawDumps, t: float, host: str, netns: str | None = None) -> Snapshot:
    """The snapshot the kernel's replies describe. Pure: a damaged or unknown reply becomes
    a note, never an exception."""
    snap = Snapshot(host=host, t=t, source="kernel", netns=netns, notes=list(raw.errors))

    def parsed(cmd: int) -> kgenl.Parsed | None:
        data = raw.genl.get(cmd)
        if data is None:
            return None
        try:
            p = kgenl.parse(data, cmd)
        except nl.FormatError as e:
            snap.notes.append(f"{kgenl.COMMANDS[cmd]}: not netlink: {e}")
            return None
        snap.notes.extend(p.notes)
        return p

    p = parsed(kgenl.GET_SYS_INFO)
    if p is not None:
        for r in p.records:
            if r["kind"] == "sys_info":
                snap.system = {"version": r.get("version"), "release": r.get("release"), "host": _trim(r.get("local_host")),
                               "seid": _trim(r.get("seid")), "smcr_v2": bool(r["is_smcr_v2"]) if "is_smcr_v2" in r else None,
                               "ism_v2": bool(r["is_ism_v2"]) if "is_ism_v2" in r else None}  # fmt: skip
    p = parsed(kgenl.GET_LINK_SMCR)
    lgr_cmd = kgenl.GET_LINK_SMCR
    if p is None:
        p, lgr_cmd = parsed(kgenl.GET_LGR_SMCR), kgenl.GET_LGR_SMCR
    if p is not None:
        others = 0
        for g in kgenl.link_groups(p):
            if raw.net_cookie is not None and g.get("net_cookie") is not None and g["net_cookie"] != raw.net_cookie:
                others += 1  # the kernel lists every namespace's link groups: this one's only
                continue
            lgr = _lgr(g)
            snap.link_groups.append(lgr)
            snap.links.extend(_link(lgr.id, lk, raw.ifnames) for lk in g["links"])
        if lgr_cmd == kgenl.GET_LGR_SMCR:
            snap.notes.append("links unknown: the kernel did not answer GET_LINK_SMCR")
        if others:
            snap.notes.append(f"{others} link group(s) of other network namespaces left out")
    p = parsed(kgenl.GET_DEV_SMCR)
    if p is not None:
        snap.devices = [_device(r, raw.ifnames) for r in p.records if r["kind"] == "dev"]
    p = parsed(kgenl.GET_STATS)
    if p is not None:
        for r in p.records:
            if r["kind"] == "stats":
                snap.stats = {k: v for k, v in r.items() if k != "kind"}
    p = parsed(kgenl.GET_FBACK_STATS)
    if p is not None:
        snap.fallbacks = kgenl.fallbacks(p)
    p = parsed(kgenl.DUMP_UEID)
    if p is not None:
        snap.ueids = [_trim(r["ueid"]) or "" for r in p.records if r.get("kind") == "ueid" and "ueid" in r]
    if raw.diag is not None:
        try:
            dump = kdiag.parse_dump(raw.diag)
        except nl.FormatError as e:
            snap.notes.append(f"smc_diag: not netlink: {e}")
        else:
            snap.notes.extend(dump.notes)
            snap.connections = [conn_from_diag(s) for s in dump.sockets]
    versions = {g.id: g.version for g in snap.link_groups}
    listening = {_port(c.local) for c in snap.connections if c.state == "LISTEN"}
    for c in snap.connections:
        c.lgr = _match_lgr(c, snap)
        if c.lgr is not None:
            c.version = versions.get(c.lgr)
        if c.role is None and c.state not in ("LISTEN", "INIT") and _port(c.local) in listening:
            c.role = "server"  # its port is a listener's: accepted (no client can bind a listening port)
    return snap


def _port(endpoint: str | None) -> int | None:
    if not endpoint:
        return None
    try:
        return int(endpoint.rpartition(":")[2])
    except ValueError:
        return None


# ---------------------------------------------------------------------------- the stack's shape


def _cursor_text(cur: tuple[int, int] | None) -> str | None:
    return None if cur is None else f"{cur[0]}:{cur[1]}"


def _parse_cursor(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    w, _, c = text.partition(":")
    try:
        return int(w), int(c)
    except ValueError:
        return None


def flat_stats(stats: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """Nested counters as one level of numbers: {"smcr.tx_bytes": 200001, ...}."""
    out: dict[str, float] = {}
    for k, v in (stats or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_stats(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def to_stack_snapshot(snap: Snapshot, max_conns: int = 2000) -> dict[str, Any]:
    """The snapshot in ``Stack.snapshot()``'s shape (stack.events.SNAPSHOT), which smctop's
    model and recordings take. Unknown values are left out (the shape allows that); past
    ``max_conns`` connections the rest are counted in ``conns_left_out``."""

    def clean(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if v is not None}

    lgrs = []
    for g in snap.link_groups:
        links = [clean({"id": lk.id, "state": lk.state, "device": lk.ib_dev, "qpn": lk.qpn, "peer_qpn": lk.peer_qpn, "gid": lk.gid,
                        "peer_gid": lk.peer_gid, "conns": lk.conns}) for lk in snap.links if lk.lgr == g.id and lk.id is not None]  # fmt: skip
        lgrs.append(clean({"id": g.id, "role": g.role, "type": g.type, "crit": g.crit, "version": g.version, "peer_host": g.peer_host,
                           "conns": g.conns, "links": links}))  # fmt: skip
    conns = []
    for c in snap.connections:
        if c.id is None or c.state == "LISTEN":
            continue
        d = clean({"conn": c.id, "state": c.state, "mode": c.mode, "role": c.role, "local": c.local, "peer": c.peer, "version": c.version,
                   "fallback_reason": c.fallback_reason, "peer_diagnosis": c.peer_diagnosis, "token": c.token, "rmb_size": c.rmb_size,
                   "peer_rmb_size": c.peer_rmb_size, "lgr": c.lgr, "link": c.link, "bytes_sent": c.bytes_sent,
                   "bytes_received": c.bytes_received})  # fmt: skip
        for key in ("rx_prod", "rx_cons", "tx_prod", "tx_cons", "tx_sent", "tx_fin"):
            text = _cursor_text(c.cursors.get(key))
            if text is not None:
                d[key] = text
        rx_prod, rx_cons = c.cursors.get("rx_prod"), c.cursors.get("rx_cons")
        if rx_prod is not None and rx_cons is not None and c.rmb_size:
            d["bytes_to_rcv"] = max(0, (cursor_bytes(rx_prod, c.rmb_size) or 0) - (cursor_bytes(rx_cons, c.rmb_size) or 0))
        conns.append(d)
    devices = []
    for dev in snap.devices:
        for p in dev.ports:
            devices.append(clean({"name": dev.name if len(dev.ports) < 2 else f"{dev.name}/{p.port}", "up": p.state == "ACTIVE" if p.state else None}))
    fallbacks = [{"role": r["role"], "reason": r["code"], "count": r["count"] or 0} for r in (snap.fallbacks or {}).get("reasons", [])]
    out = {"host": snap.host, "t": snap.t, "stats": flat_stats(snap.stats), "devices": devices, "fallbacks": fallbacks, "lgrs": lgrs,
           "conns": conns[:max_conns], "failovers": []}  # fmt: skip
    if len(conns) > max_conns:  # one record stays readable (readers take at most 1 MiB a record)
        out["conns_left_out"] = len(conns) - max_conns
    return out


def from_stack_snapshot(d: dict[str, Any], source: str = "stack") -> Snapshot:
    """A ``Stack.snapshot()`` dict (embedded, attach, replay) as a neutral snapshot: what the
    stack tells is filled in, what only a kernel tells (inode, uid) stays unknown."""
    snap = Snapshot(host=str(d.get("host", "")), t=float(d.get("t") or 0.0), source=source)
    for g in d.get("lgrs", []) or []:
        gid = str(g.get("id"))
        snap.link_groups.append(LinkGroup(id=gid, role=g.get("role"), type=g.get("type"), version=g.get("version"),
                                          peer_host=g.get("peer_host"), conns=g.get("conns")))  # fmt: skip
        for lk in g.get("links", []) or []:
            snap.links.append(Link(lgr=gid, id=lk.get("id"), state=lk.get("state"), ib_dev=lk.get("device"), gid=lk.get("gid"),
                                   peer_gid=lk.get("peer_gid"), conns=lk.get("conns"), qpn=lk.get("qpn"), peer_qpn=lk.get("peer_qpn")))  # fmt: skip
    for s in d.get("conns", []) or []:
        c = Conn(id=s.get("conn"), state=s.get("state"), mode=s.get("mode"), local=s.get("local"), peer=s.get("peer"), role=s.get("role"),
                 fallback_reason=s.get("fallback_reason"), peer_diagnosis=s.get("peer_diagnosis"), version=s.get("version"),
                 token=s.get("token"), rmb_size=s.get("rmb_size"), peer_rmb_size=s.get("peer_rmb_size"), lgr=s.get("lgr"),
                 link=s.get("link"), bytes_sent=s.get("bytes_sent"), bytes_received=s.get("bytes_received"))  # fmt: skip
        for key in ("rx_prod", "rx_cons", "tx_prod", "tx_cons", "tx_sent", "tx_fin"):
            cur = _parse_cursor(s.get(key))
            if cur is not None:
                c.cursors[key] = cur
        if c.lgr is not None:
            c.lgr_role = next((g.role for g in snap.link_groups if g.id == c.lgr), None)
            lk = next((x for x in snap.links if x.lgr == c.lgr and x.id == c.link), None)
            if lk is not None:
                c.ib_dev, c.gid, c.peer_gid = lk.ib_dev, lk.gid, lk.peer_gid
        snap.connections.append(c)
    for dev in d.get("devices", []) or []:
        snap.devices.append(Device(name=str(dev.get("name", "?")), ports=[Port(port=1, state=None if dev.get("up") is None else
                                                                                ("ACTIVE" if dev.get("up") else "INACTIVE"))]))  # fmt: skip
    stats = d.get("stats")
    snap.stats = dict(stats) if isinstance(stats, dict) else None
    reasons = [{"role": f.get("role"), "code": f.get("reason"), "count": f.get("count")} for f in d.get("fallbacks", []) or []]
    snap.fallbacks = {"server_total": sum(r["count"] or 0 for r in reasons if r["role"] == "server"),
                      "client_total": sum(r["count"] or 0 for r in reasons if r["role"] == "client"), "reasons": reasons}  # fmt: skip
    return snap
