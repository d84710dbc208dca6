"""Replays that start right (issue 17 item 2) and ``--once`` on real stacks (issue 18 item 3):
a recording begun mid-session (``smc-trace record --attach`` while a connection runs) seeds
the model from the snapshot at its start; a step moves exactly one event; a seek back
starts again from that snapshot; ``smctop --attach ... --once --json`` and ``smctop --replay
... --once --json`` print the connection a real stack has."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from support.stacks import ROOT, TrafficServer, addrs, wait_for

from smctop.model import Model
from smctop.sources import ReplaySource, load_events

PY = sys.executable


def smctop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", "import sys; from smctop.app import main; sys.exit(main(sys.argv[1:]))", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)  # fmt: skip


def _attach_once(sock) -> dict | None:
    r = smctop("--attach", str(sock), "--once", "--json", timeout=60)
    if r.returncode != 0:
        return None
    doc = json.loads(r.stdout)
    return doc if any(c["mode"] == "SMCR" and c["state"] == "ACTIVE" for c in doc["connections"]) else None


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A server with a control socket and a request/response client running for minutes; what
    ``--attach --once`` saw of it; and a recording begun while the connection was up."""
    tmp = tmp_path_factory.mktemp("midsession")
    ca, sa = addrs()
    sock = tmp / "server.sock"
    server = TrafficServer(sa, "--control", str(sock))
    client = subprocess.Popen([PY, "-m", "stack.traffic.cli", "client", "--connect", f"{sa}:5000", "--device", ca, "--mode", "rr",
                               "--duration", "600", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    try:
        seen = []
        assert wait_for(lambda: seen.append(_attach_once(sock)) or seen[-1] is not None, 120, interval=0.5), "no SMC-R connection came up"
        out = tmp / "mid.pcapng"
        rec = subprocess.run([PY, "-m", "dissectors.cli", "record", "-w", str(out), "--attach", str(sock), "--duration", "2"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
        assert rec.returncode == 0, rec.stderr
        yield {"attach": seen[-1], "capture": out, "server": sa, "client": ca, "sock": sock}
    finally:
        for p in (client, server.proc):
            if p.poll() is None:
                p.kill()
                p.wait()


def started(src: ReplaySource) -> ReplaySource:
    asyncio.run(src.start())
    return src


def _smcr(doc: dict) -> dict:
    (c,) = [c for c in doc["connections"] if c["mode"] == "SMCR"]
    return c


def test_attach_once_prints_the_real_stacks_connection_link_group_and_link(session):
    doc = session["attach"]
    assert {"connections", "link_groups", "links", "devices", "stats"} <= set(doc)
    c = _smcr(doc)
    assert c["state"] == "ACTIVE" and c["local"].startswith(session["server"] + ":") and c["peer"].startswith(session["client"] + ":")
    assert c["link_group"]["id"] and c["buffers"]["rmb"]
    (lk,) = [lk for lk in doc["links"] if lk["link_group"] == c["link_group"]["id"]]
    assert lk["state"] == "LINK_ACTIVE" and lk["qpn"] and lk["peer_qpn"] and lk["gid"] and lk["peer_gid"]
    assert [d["name"] for d in doc["devices"]] == [session["server"]]


def test_a_recording_begun_mid_session_seeds_the_model_at_its_start(session):
    events = load_events(str(session["capture"]))
    assert not any(e.kind == "conn.open" for e in events)  # the connection opened before the recording: only the snapshot has it
    src = started(ReplaySource(str(session["capture"]), events=events, clock=lambda: 0.0))
    src.paused = True
    m = Model()
    src.poll(m)  # the replay's first instant: the starting snapshot
    assert src.i > 0
    conns = [c for c in m.conns.values() if c.mode == "SMCR"]
    assert len(conns) == 1
    c = conns[0]
    want = _smcr(session["attach"])
    assert (c.state, c.local, c.peer, c.role) == ("ACTIVE", want["local"], want["peer"], "server")
    (g,) = m.lgrs.values()
    assert g.type == "SINGLE" and g.id == want["link_group"]["id"]
    (lk,) = g.links.values()
    assert lk.state == "LINK_ACTIVE" and lk.qpn and lk.peer_qpn and lk.gid and lk.peer_gid
    assert c.bytes_sent > 0 and c.bytes_received > 0  # the counts at the start, not 0


def test_a_mid_session_replay_counts_only_what_moved_while_it_was_recorded(session):
    """The starting snapshot's byte counts (what moved before the recording) are no rate and
    no part of "Total moved"; and the last part-second of the recording counts (the final
    sample closes when the replay ends): Total moved is the connection's counts at the end
    less those at the start."""
    events = load_events(str(session["capture"]))
    wall = [0.0]
    src = started(ReplaySource(str(session["capture"]), events=events, clock=lambda: wall[0]))
    m = Model()
    src.paused = True
    src.poll(m)
    c = next(c for c in m.conns.values() if c.mode == "SMCR")
    start = (c.bytes_sent, c.bytes_received)
    src.paused = False
    while not src.done:
        wall[0] += 0.25
        src.poll(m)
        m.advance(src.now())
    m.finish()
    moved = c.bytes_sent - start[0] + c.bytes_received - start[1]
    # (up to one 68-byte message more: the first instant's events, which the snapshot holds too)
    assert moved > 0 and 0 <= m.bytes - moved <= 68
    assert max(x.rate_ for x in m.conns.values()) < 2 * moved  # no sample carried the bytes moved before


def test_a_step_moves_exactly_one_event(session):
    events = load_events(str(session["capture"]))
    src = started(ReplaySource(str(session["capture"]), events=events, clock=lambda: 0.0))
    m = Model()
    src.paused = True
    src.poll(m)
    for _ in range(50):  # recordings have many events at one instant: none may come along
        before = (m.seq, src.i)
        e = src.step(m)
        assert e is not None
        assert (m.seq, src.i) == (before[0] + 1, before[1] + 1)
        assert src.poll(m) == [] and m.seq == before[0] + 1


def test_a_seek_back_starts_again_from_the_snapshot(session):
    events = load_events(str(session["capture"]))
    wall = [0.0]
    src = started(ReplaySource(str(session["capture"]), events=events, clock=lambda: wall[0]))
    m = Model()
    src.poll(m)
    src.seek(1.0)
    src.poll(m)
    at = src.i
    src.seek(-10.0)
    src.poll(m)
    assert src.i < at
    c = next(c for c in m.conns.values() if c.mode == "SMCR")
    assert c.state == "ACTIVE" and c.local == _smcr(session["attach"])["local"]


def test_replay_once_prints_the_state_at_the_recordings_end(session):
    r = smctop("--replay", str(session["capture"]), "--once", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    c, want = _smcr(doc), _smcr(session["attach"])
    assert (c["state"], c["local"], c["peer"], c["token"]) == ("ACTIVE", want["local"], want["peer"], want["token"])
    assert c["bytes_sent"] > want["bytes_sent"]  # later than the attach snapshot: events moved it on
    text = smctop("--replay", str(session["capture"]), "--once").stdout
    assert "# smcr linkgroup link-show" in text and want["local"] in text and "LINK_ACTIVE" in text


def test_a_recording_smctop_begins_on_an_attached_stack_starts_from_what_smctop_knew(session, tmp_path):
    """smctop's ``w`` on --attach: the capture starts with the model's state of each host, so
    its replay shows the running connection at once (ACTIVE, SMCR, addresses, the link)."""
    import time

    from smctop.record import open_recorder
    from smctop.sources import AttachSource

    out = tmp_path / "w.pcapng"

    async def run() -> None:
        src = AttachSource([str(session["sock"])])
        m = Model()
        await src.start()
        try:
            while not any(h.snapshot_t is not None for h in m.hosts.values()):
                src.poll(m)
                await asyncio.sleep(0.05)
            rec = open_recorder(str(out), src.stacks(), model=m)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # a second of events after the start
                rec.write(src.poll(m))
                await asyncio.sleep(0.05)
            rec.close()
        finally:
            await src.stop()

    asyncio.run(asyncio.wait_for(run(), 120))
    events = load_events(str(out))
    assert events[0].kind == "stats" and events[0].get("cause") == "recording started"
    src = started(ReplaySource(str(out), events=events, clock=lambda: 0.0))
    m = Model()
    src.poll(m)
    want = _smcr(session["attach"])
    (c,) = [c for c in m.conns.values() if c.mode == "SMCR"]
    assert (c.state, c.local, c.peer) == ("ACTIVE", want["local"], want["peer"])
    (lk,) = next(iter(m.lgrs.values())).links.values()
    assert lk.state == "LINK_ACTIVE" and lk.qpn and lk.gid


def _long_recording(seconds: int = 100, per_second: int = 100) -> list:
    """A stack's recording as smc-trace writes it: a starting snapshot, one every second, and
    RDMA WRITEs of 10 bytes in between (the snapshots carry the byte count the writes add up to)."""
    from stack.events import Event

    def snap(t: float, sent: int) -> Event:
        s = {"host": "h", "t": t, "stats": {}, "devices": [], "fallbacks": [],
             "lgrs": [{"id": "00000100", "role": "client", "type": "SINGLE", "conns": 1, "links": [{"id": 1, "state": "LINK_ACTIVE", "qpn": 7}]}],
             "conns": [{"conn": 1, "state": "ACTIVE", "mode": "SMCR", "role": "client", "local": "10.0.0.1:1", "peer": "10.0.0.2:2",
                        "lgr": "00000100", "link": 1, "bytes_sent": sent}]}  # fmt: skip
        return Event(t, "stats", "h", fields={"cause": "recording started" if t == 1000.0 else "snapshot", "snapshot": s})

    events = []
    for sec in range(seconds):
        t0 = 1000.0 + sec
        events.append(snap(t0, sec * per_second * 10))
        events += [Event(t0 + (k + 1) / (per_second + 1), "rdma.write", "h", conn=1, lgr="00000100", link=1, fields={"length": 10})
                   for k in range(per_second)]  # fmt: skip
    return events


def test_a_seek_back_in_a_long_recording_replays_from_the_last_snapshot_not_the_start():
    events = _long_recording()
    wall = [0.0]
    src = started(ReplaySource("long", events=events, clock=lambda: wall[0]))
    m = Model()
    src.poll(m)
    src.seek(95.0)
    src.poll(m)
    src.seek(-44.6)  # to 50.4 s
    src.poll(m)
    assert m.seq <= 2 * 101  # what it fed since the seek: from the snapshot at 50 s (the whole file is 10,100 events)
    (c,) = m.conns.values()
    assert (c.state, c.mode, c.local) == ("ACTIVE", "SMCR", "10.0.0.1:1")
    full = Model()  # the same point replayed from the start
    ref = started(ReplaySource("long", events=events, clock=lambda: 0.0))
    ref.t = src.t
    ref.poll(full)
    assert c.bytes_sent == full.conns[("h", 1)].bytes_sent == 50 * 1000 + 40 * 10  # the 40 writes of 50.0-50.4 s on the snapshot's count
