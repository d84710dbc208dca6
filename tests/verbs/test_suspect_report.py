"""Frames outside a QP's PSN window are reported as a possible attack (issue #15 item 2).

A forger on the peer's address (its own UDP port, as any local user can open) sends RDMA
WRITEs to a live link's QP with PSNs far from the expected one. The stack must say so: a
``link.event`` ``suspect_frames`` naming the link group, link, device and QP with the counts
(at most one per link per look at the counters, and none while the counts stand still), and
the counts in its snapshot under the link. The connection itself carries on. Both engines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket

import pytest
from support.stacks import addrs, config, run, until

from native import softroce
from stack import events
from stack.runtime import Stack, suspect
from stack.wire import roce
from stack.wire.roce import Bth, Opcode, Reth, RocePacket

ENGINES = ["python", pytest.param("native", marks=pytest.mark.skipif(not softroce.available()[0], reason="native/build.sh not run"))]


def _config(host: str, addr: str, engine: str):
    cfg = config(host, addr)
    return dataclasses.replace(cfg, devices=tuple(dataclasses.replace(d, engine=engine) for d in cfg.devices))


def _forge(sock: socket.socket, src: str, dst: str, qpn: int, psn: int, addr: int, rkey: int) -> None:
    packet = RocePacket(Bth(Opcode.RDMA_WRITE_ONLY, qpn, psn & 0xFFFFFF, ackreq=True), reth=Reth(addr, rkey, 4), payload=b"EVIL")
    sport = sock.getsockname()[1]
    sock.sendto(roce.encode_datagram(packet, src, dst, sport, roce.ROCE_V2_PORT), (dst, roce.ROCE_V2_PORT))


async def _scenario(engine: str):
    ca, sa = addrs()
    client, server = Stack(_config("client", ca, engine)), Stack(_config("server", sa, engine))
    await client.start()
    await server.start()
    seen: list[events.Event] = []
    server.bus.listen(lambda e: seen.append(e) if e.kind == "link.event" and e.get("event") == "suspect_frames" else None)
    ticks = []
    check = server.suspect.check
    server.suspect.check = lambda: ticks.append(check()) or ticks[-1]  # count the looks (and what each emitted)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger.bind((ca, 0))  # the client's address, another UDP port
    try:
        release = asyncio.Event()

        async def hold(r, w):
            w.write(await r.readexactly(4))
            await release.wait()
            w.write(await r.read())
            w.close()

        await server.start_server(hold, sa, 5000)
        r, w = await client.open_connection(sa, 5000, local_addr=(ca, 0))
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        assert server.engines()[sa] == engine

        lgr = server.host.lgrs[0]
        link = next(iter(lgr.links.values()))
        peer = client.host.lgrs[0].links[link.link_id]
        # far from anything the client's QP will send: the client started at peer.qp.psn and sent a handful
        far = peer.qp.psn + (1 << 23)
        for i in range(40):  # (the PSN is checked before the rkey: these never get that far)
            _forge(forger, ca, sa, link.qp.qpn, far + i * 4099, 0, 0)
        await until(lambda: sum(e.get("new") for e in seen) >= 40, 30, "a suspect_frames event for 40 frames")
        first = list(seen)
        snap = server.snapshot()
        # the counts stand still now: the next look reports nothing
        quiet = check()

        # a burst of more than the QP's budget a second: what it examines and what it does not, both reported
        burst = 1500
        for i in range(burst):
            _forge(forger, ca, sa, link.qp.qpn, far + 100_000 + i * 7919, 0, 0)
        await until(lambda: sum(e.get("new") for e in seen) >= 40 + burst, 30, "the burst reported")
        snap2 = server.snapshot()

        # the real connection still works
        release.set()
        body = os.urandom(100_000)
        w.write(body)
        w.write_eof()
        echoed = await r.read()
        w.close()
        return dict(seen=list(seen), first=first, snap=snap, snap2=snap2, quiet=quiet, ticks=list(ticks), echoed=echoed == body,
                    lgr=lgr.name, link=link.link_id, qpn=link.qp.qpn, device=sa, burst=burst)  # fmt: skip
    finally:
        forger.close()
        await client.close()
        await server.close()


def _link(snap: dict, lgr: str, link: int) -> dict:
    g = next(g for g in snap["lgrs"] if g["id"] == lgr)
    return next(l for l in g["links"] if l["id"] == link)


@pytest.mark.parametrize("engine", ENGINES)
def test_out_of_window_frames_are_reported_as_a_possible_attack(engine):
    out = run(_scenario(engine))
    first = out["first"]
    assert first, "no suspect_frames event"
    for e in out["seen"]:  # every report names the link and its QP, and reads back through the schema
        assert (e.host, e.lgr, e.link) == ("server", out["lgr"], out["link"])
        assert e.get("qpn") == out["qpn"] and e.get("device") == out["device"] and e.get("new") > 0
        back = events.loads(json.dumps(events.to_dict(e)))
        assert back["event"] == "suspect_frames" and back["new"] == e.get("new")
        assert "possible attack" in events.render(e)
    last = first[-1]
    assert sum(e.get("new") for e in first) == 40
    assert last.get("psn_out_of_window") + last.get("suspect_ignored") == 40
    # the snapshot carries the counts under the link, and passes the readers' check
    assert events.check_snapshot(out["snap"]) is None
    link = _link(out["snap"], out["lgr"], out["link"])
    assert link["psn_out_of_window"] + link["suspect_ignored"] == 40
    assert out["quiet"] == 0  # counts that stand still are not reported again
    # rate limit: never more than one event per look at the counters (once a second)
    assert len(out["seen"]) <= sum(1 for n in out["ticks"] if n) and all(n <= 1 for n in out["ticks"])
    link2 = _link(out["snap2"], out["lgr"], out["link"])
    assert link2["psn_out_of_window"] + link2["suspect_ignored"] == 40 + out["burst"]
    # whatever share of the burst the budget left unexamined (how it splits across seconds depends on
    # the machine's speed: test_soft_security tests the budget), the last report and the snapshot agree
    final = out["seen"][-1]
    assert (final.get("psn_out_of_window"), final.get("suspect_ignored")) == (link2["psn_out_of_window"], link2["suspect_ignored"])
    assert out["snap2"]["rdma"][out["device"]]["psn_out_of_window"] == link2["psn_out_of_window"]
    assert out["echoed"]  # the connection was not hurt


def test_a_device_without_the_counters_reports_nothing():
    """pyverbs QPs keep no such counters: no event, no snapshot keys, no error."""

    class _Qp:
        stats = {}

    class _Rdma:
        qps = {1: type("Q", (), {"qp": _Qp()})()}

    assert suspect.qp_counts(_Rdma(), 1) is None
    assert suspect.qp_counts(_Rdma(), 2) is None
