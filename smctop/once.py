"""``smctop --once [--json]``: print one snapshot, as smc-tools prints it, and exit.

* ``--kernel``: the kernel's own SMC-R, read once (``smckernel.source.snapshot_many``: each
  ``--netns`` given, or ``all``, under its own host name ``host/namespace``);
* ``--replay FILE``: the state at the recording's end (every event fed to the model, its
  snapshots applied);
* ``--attach PATH``: each stack's state, once its first snapshot has reached the model;
* the embedded demo: run for ``--once-after`` seconds, then its state.

All but the kernel go through smctop's model: what the views show is what is printed. The
text is ``smckernel.once.render_text`` (``smcss -a/-d/-R``, ``smcr linkgroup show`` and
``link-show``, ``smcr device``, ``smcr stats``), once per host; the JSON is one document
with the keys ``connections``, ``link_groups``, ``links``, ``devices`` and ``stats``
(``smckernel.once.to_json_hosts``), of one shape for one host and for several: every
connection, link group, link and device names its ``host`` and ``netns``, and ``stats``
maps each host to its counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, Callable

from smckernel.model import Conn as KConn
from smckernel.model import Snapshot, from_stack_snapshot
from smckernel.once import VIEWS, reason_text, render_text, smcss, to_json_hosts

from .model import Model

_CURSORS = ("rx_prod", "rx_cons", "tx_prod", "tx_cons", "tx_sent", "tx_fin")


def host_names(model: Model) -> list[str]:
    names = set(model.hosts)
    names.update(h for h, _ in model.conns)
    names.update(h for h, _ in model.lgrs)
    return sorted(names)


def stack_snapshot(model: Model, host: str) -> dict[str, Any]:
    """What the model knows of ``host`` now, in ``Stack.snapshot()``'s shape: its open
    connections, its live link groups and their links, its devices and counters."""
    h = model.hosts.get(host)
    conns = []
    for (hn, _), c in sorted(model.conns.items(), key=lambda kv: kv[0][1]):
        if hn != host or c.closed is not None or c.state == "CLOSED":
            continue
        d = {"conn": c.id, "state": c.state, "mode": None if c.mode == "INIT" else c.mode, "role": c.role or None,
             "local": c.local or None, "peer": c.peer or None, "version": c.version or None,
             "fallback_reason": c.reason or None, "peer_diagnosis": c.peer_diagnosis or None, "token": c.token or None,
             "rmb_size": c.rmb_size or None, "peer_rmb_size": c.peer_rmb_size or None, "lgr": c.lgr, "link": c.link,
             "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received}  # fmt: skip
        for k in _CURSORS:
            d[k] = getattr(c, k) or None
        conns.append({k: v for k, v in d.items() if v is not None})
    lgrs = []
    for (hn, gid), g in sorted(model.lgrs.items()):
        if hn != host or g.terminated:
            continue
        links = [{"id": lk.id, "state": lk.state, "device": lk.device or None, "qpn": lk.qpn or None, "peer_qpn": lk.peer_qpn or None,
                  "gid": lk.gid or None, "peer_gid": lk.peer_gid or None, "conns": lk.conns}
                 for lid, lk in sorted(g.links.items()) if lk.state != "LINK_UNUSED"]  # fmt: skip
        lgrs.append({"id": gid, "role": g.role or None, "type": g.type, "crit": g.crit, "version": g.version or None,
                     "peer_host": g.peer_host or None, "conns": g.conns,
                     "links": [{k: v for k, v in lk.items() if v is not None} for lk in links]})  # fmt: skip
    return {"host": host, "t": model.now if model.now is not None else (h.snapshot_t if h else 0.0) or 0.0,
            "stats": dict(h.stats) if h else {}, "devices": list(h.devices) if h else [],
            "fallbacks": list(h.fallbacks) if h else [], "lgrs": [{k: v for k, v in g.items() if v is not None} for g in lgrs],
            "conns": conns}  # fmt: skip


def model_snapshots(model: Model, source: str) -> list[Snapshot]:
    """One neutral snapshot (smckernel.model.Snapshot) per host the model knows."""
    out = []
    for host in host_names(model):
        snap = from_stack_snapshot(stack_snapshot(model, host), source=source)
        h = model.hosts.get(host)
        for lst in h.listeners if h else ():  # smcss -a lists listening sockets
            snap.connections.append(KConn(state="LISTEN", local=lst.get("local"), mode=lst.get("mode") if isinstance(lst.get("mode"), str) else None))
        if not h or h.snapshot_t is None:
            snap.notes.append(f"no snapshot of {host} reached smctop: devices and counters are unknown")
        if model.dropped:
            snap.notes.append(f"the source missed {model.dropped:,} events")
        _same_ports(snap)
        out.append(snap)
    return out


def _same_ports(snap: Snapshot) -> None:
    """A stack's device has one port, 1 (smcr device says so): its links and connections use
    that port, and the device's #Links counts the links on it, so the tables agree."""
    for lk in snap.links:
        if lk.ib_dev and lk.ib_port is None:
            lk.ib_port = 1
    for c in snap.connections:
        if c.ib_dev and c.link is not None and c.ib_port is None:
            c.ib_port = 1
    for d in snap.devices:
        for p in d.ports:
            if p.links is None and p.port == 1:
                p.links = sum(1 for lk in snap.links if lk.ib_dev == d.name)


STACK_COUNTERS = ("smc_client", "smc_server", "fallback_client", "fallback_server", "handshake_errors")


def stack_stats(snap: Snapshot) -> str:
    """``smcr stats -d`` of a stack's snapshot: the counters a stack keeps (SMC-R and fallback
    connections by role, handshake errors, fallback reasons), in smcr's words and widths.
    What only the kernel counts (bytes, requests, buffers) is said to be unknown."""
    st = snap.stats or {}
    fb = snap.fallbacks or {}

    def n(key: str) -> int:
        v = st.get(key)
        return int(v) if isinstance(v, (int, float)) else 0

    client, server = n("smc_client"), n("smc_server")
    fb_client = n("fallback_client") if "fallback_client" in st else fb.get("client_total") or 0
    fb_server = n("fallback_server") if "fallback_server" in st else fb.get("server_total") or 0
    hs_err = n("handshake_errors")
    out = ["SMC-R Connections Summary", f"  Total connections handled  {client + server + hs_err + fb_client + fb_server:12d}",
           f"  SMC connections            {client + server:12d} (client {client}, server {server})",
           f"  Handshake errors           {hs_err:12d}",
           f"  TCP fallback               {fb_client + fb_server:12d} (client {fb_client}, server {fb_server})"]  # fmt: skip
    for role, caption in (("server", "    Server"), ("client", "    Client")):
        reasons = sorted((r for r in fb.get("reasons", []) if r.get("role") == role), key=lambda r: -(r.get("count") or 0))[:3]
        if reasons:
            out.append(caption)
            out += [f"     {reason_text(r['code']) or '-':<25}  {r.get('count') or 0:12d}" for r in reasons]
    out.append(f"  (data, requests and buffers: unknown, the {snap.source} source's stacks do not count them)")
    return "\n".join(out) + "\n"


def smcss_all(snap: Snapshot) -> str:
    """``smcss -a`` of a stack's snapshot. smcss prints a kernel socket in INIT without
    addresses (the kernel has none to give before connect); a stack's connection in its
    handshake has both, and the model knows them: its row shows them, with mode ``-``."""
    return smcss(snap, all=True, handshake_addresses=True)


def render_snapshot(snap: Snapshot) -> str:
    """One snapshot as text: smckernel's, with ``smcr stats`` from the counters a stack's
    snapshot carries (smckernel's reads only the kernel's SMC_NETLINK_GET_STATS layout) and
    a stack's connections in their handshake with their addresses (:func:`smcss_all`)."""
    if snap.source == "kernel":
        return render_text(snap)
    counters = any(k in (snap.stats or {}) for k in STACK_COUNTERS)
    notes, snap.notes = snap.notes, []
    try:
        text = render_text(snap, [v for v in VIEWS if v not in ("smcss -a", "smcr stats")])
    finally:
        snap.notes = notes
    head, _, rest = text.partition("\n")  # the "# <source> SMC on <host>" line, then the views
    text = f"{head}\n# smcss -a\n{smcss_all(snap)}\n{rest}"
    text += f"\n# smcr stats\n{stack_stats(snap) if counters else VIEWS['smcr stats'](snap)}"
    if notes:
        text += "\n# notes\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    return text


def to_json_doc(snaps: list[Snapshot]) -> dict[str, Any]:
    """One document of one shape whatever the number of hosts (a script need not count them
    first): ``smckernel.once.to_json_hosts``'s, even for one host (where ``python -m
    smckernel`` gives that snapshot's own document: ``host`` at the top, ``stats`` its
    counters alone)."""
    return to_json_hosts(snaps)


def render(snaps: list[Snapshot], as_json: bool) -> str:
    """The text of each snapshot (:func:`render_snapshot`), or one JSON document
    (:func:`to_json_doc`)."""
    if as_json:
        return json.dumps(to_json_doc(snaps), indent=2) + "\n"
    return "\n".join(render_snapshot(s) for s in snaps)


async def collect(source, model: Model, ready: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Start ``source``, poll it into ``model`` until ``ready()`` (True) or ``timeout`` (False)."""
    await source.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            source.poll(model)
            now = source.now()
            if now is not None:
                model.advance(now)
            if ready() or time.monotonic() >= deadline:
                return ready()
            await asyncio.sleep(poll)
    finally:
        await source.stop()


def run_once(args, ap, build_source) -> int:
    """``smctop ... --once [--json]``: see the module docstring. Exit 0 with the snapshot on
    stdout, 2 with the reason on stderr when the source cannot give one."""
    import sys

    from .sources import AttachSource, DemoSource, KernelTuiSource, ReplaySource, SourceError

    if args.kernel and args.replay:
        ap.error("--kernel goes alone or with --attach, not with --replay")
    if args.json and not args.once:
        ap.error("--json goes with --once")
    if args.from_raw and not (args.kernel and args.once):
        ap.error("--from-raw goes with --kernel --once")
    if not (args.once_after == args.once_after and 0 <= args.once_after <= 3600):
        ap.error(f"--once-after {args.once_after}: seconds from 0 to 3600")
    snaps: list = []
    if args.kernel:
        from smckernel.kio import KernelUnavailable
        from smckernel.source import snapshot_many

        try:
            if args.from_raw:
                from smckernel.__main__ import _from_raw

                if args.netns and len(args.netns) > 1:
                    ap.error("--from-raw renders one namespace's replies: give at most one --netns")
                snaps = [_from_raw(argparse.Namespace(from_raw=args.from_raw, host=None, netns=args.netns[0] if args.netns else None))]
            else:
                snaps = snapshot_many(args.netns)
        except KernelUnavailable as e:
            print(f"smctop: the kernel's SMC-R: {e.strerror}", file=sys.stderr)
            return 2
    if not args.kernel or args.attach:  # with --kernel and --attach: the kernel's snapshot, then each stack's
        source = AttachSource(args.attach) if args.kernel else build_source(args, ap)
        model = Model()
        try:
            if isinstance(source, ReplaySource):
                source.t = source.end_t  # the state at its end: every event fed, the recorded snapshots applied
                source.poll(model)
                model.advance(source.end_t)
                model.finish()
                ok = True
            elif isinstance(source, AttachSource):

                def ready() -> bool:  # each stack's first snapshot is in the model, or its socket closed
                    return all(p in source.closed or (source.hostnames.get(p) in model.hosts
                                                      and model.hosts[source.hostnames[p]].snapshot_t is not None) for p in source.paths)  # fmt: skip

                ok = asyncio.run(collect(source, model, ready, timeout=10.0))
            else:
                assert isinstance(source, (DemoSource, KernelTuiSource))
                started = time.monotonic()
                asyncio.run(collect(source, model, lambda: time.monotonic() - started >= args.once_after, timeout=args.once_after))
                ok = True  # it ran as long as asked
        except SourceError as e:
            print(f"smctop: {e}", file=sys.stderr)
            return 2
        for note in source.notices:
            print(f"smctop: {note}", file=sys.stderr)
        if not ok:
            print("smctop: not every stack sent its snapshot within 10 s: printing what arrived", file=sys.stderr)
        snaps += model_snapshots(model, source.label)
        if not snaps:
            print(f"smctop: the {source.label} source showed nothing to print", file=sys.stderr)
            return 2
    try:
        sys.stdout.write(render(snaps, args.json))
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0
