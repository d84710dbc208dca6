"""Two-link link groups, ADD and DELETE LINK, and connections that survive a dead link,
through the sans-I/O core on the fabric (each host has two devices unless a test says
otherwise). Every transfer is checked byte for byte on both sides."""

from __future__ import annotations

import random

import pytest
from support.fabric import RETRY_TIMEOUT, Bulk, open_conn, pair

from stack.core.config import SmcConfig, Timeouts
from stack.wire import llc
from stack.wire.codes import DECL, LgrType, LinkState

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}  # small rings: every transfer wraps many times


def hosts(versions=frozenset({1, 2}), client_devices=2, server_devices=2, seed=1, **kw):
    c = SmcConfig(host="client", versions=versions, **SMALL, **kw)
    s = SmcConfig(host="server", versions=versions, **SMALL, **kw)
    return pair(c, s, client_devices=client_devices, server_devices=server_devices, seed=seed)


def kinds(io, kind, **match):
    def field(e, k):
        return getattr(e, k) if k in ("host", "lgr", "link", "conn") else e.get(k)

    return [e for e in io.events if e.kind == kind and all(field(e, k) == v for k, v in match.items())]


def llc_log(io, since=0.0) -> list[tuple]:
    """(direction, message type, response, link) of every LLC message after ``since`` (a
    time, or an event: then from that event on)."""
    events = io.events[io.events.index(since) :] if not isinstance(since, float) else [e for e in io.events if e.t >= since]
    return [(e.get("dir"), e.get("type").split(" v")[0].removeprefix("LLC "), e.get("response"), e.link)
            for e in events if e.kind == "llc.msg" and "TEST LINK" not in e.get("type")]  # fmt: skip


def links(io) -> list[tuple[int, str, bool]]:
    (lgr,) = io.host.lgrs
    return sorted((l.link_id, l.device, l.asym) for l in lgr.links.values() if l.state == LinkState.ACTIVE)


def assert_symmetric(*ios) -> None:
    for io in ios:
        for lgr in io.host.lgrs:
            active = [l for l in lgr.links.values() if l.state == LinkState.ACTIVE]
            assert lgr.type == LgrType.SYMMETRIC, f"{io.name} {lgr.name} is {lgr.type.name}"
            assert sorted(l.device for l in active) == ["fab0", "fab1"], f"{io.name}: {[(l.link_id, l.device) for l in active]}"
            assert len(lgr.links) == 2


# --------------------------------------------------------------------------- adding links


@pytest.mark.parametrize("version", [1, 2])
def test_server_adds_a_second_link_after_first_contact(version):
    f, a, b = hosts(frozenset({version}))
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    assert links(a) == links(b) == [(1, "fab0", False), (2, "fab1", False)]
    assert_symmetric(a, b)
    expect = [("tx", "ADD LINK", False, 1), ("rx", "ADD LINK", True, 1)]
    if version == 1:  # one RMB each: one CONTINUATION each way, the server's first
        expect += [("tx", "ADD LINK CONTINUATION", False, 1), ("rx", "ADD LINK CONTINUATION", True, 1)]
    expect += [("tx", "CONFIRM LINK", False, 2), ("rx", "CONFIRM LINK", True, 2)]
    assert llc_log(b, kinds(b, "link.event", event="add_link_begin")[0]) == expect
    # the peer's RMB is known on both links, on both sides
    for io, peer in ((a, b), (b, a)):
        (row,) = io.host.lgrs[0].rtokens
        rmb = peer.host.conns[1].rmb
        assert row == {1: (rmb.on("fab0").rkey, rmb.on("fab0").addr), 2: (rmb.on("fab1").rkey, rmb.on("fab1").addr)}


def test_rkeys_of_many_connections_travel_in_continuations():
    f, a, b = hosts(frozenset({1}))
    b.port("fab1", False)  # the server starts with one port up: the second link is asymmetric
    f.run(until=0.001)
    for cid in range(1, 6):
        open_conn(f, a, b, cid)
    assert b.host.lgrs[0].type == LgrType.ASYMMETRIC_LOCAL
    t0 = f.now
    b.port("fab1", True)  # a symmetric link now: every RMB is mapped on it
    f.run(until=f.now + 0.01)
    assert_symmetric(a, b)
    conts = [e for e in b.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type").startswith("LLC ADD LINK CONT")]
    # 5 RMBs a side, 2 a message: 3 from the server (5, 3, 1 remaining) answered by 3 from the client
    assert [(e.get("dir"), e.get("num_rkeys"), len(e.get("rkeys"))) for e in conts] == [
        ("tx", 5, 2), ("rx", 5, 2), ("tx", 3, 2), ("rx", 3, 2), ("tx", 1, 1), ("rx", 1, 1)]  # fmt: skip
    for io in (a, b):
        lgr = io.host.lgrs[0]
        assert len(lgr.rtokens) == 5 and all(set(row) == set(lgr.links) for row in lgr.rtokens)


@pytest.mark.parametrize(
    "client_devices, server_devices, client_type, server_type",
    [(1, 2, LgrType.ASYMMETRIC_LOCAL, LgrType.ASYMMETRIC_PEER), (2, 1, LgrType.ASYMMETRIC_PEER, LgrType.ASYMMETRIC_LOCAL),
     (1, 1, LgrType.SINGLE, LgrType.SINGLE)],
)  # fmt: skip
def test_link_group_types_follow_the_devices_each_side_has(client_devices, server_devices, client_type, server_type):
    f, a, b = hosts(client_devices=client_devices, server_devices=server_devices)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    assert (a.host.lgrs[0].type, b.host.lgrs[0].type) == (client_type, server_type)
    if client_type == LgrType.SINGLE:  # the client says why: no alternate path
        (rej,) = kinds(b, "link.event", event="add_link_rejected")
        assert rej.get("reason") == 1 and len(b.host.lgrs[0].links) == 1
    else:
        assert [l.asym for l in b.host.lgrs[0].links.values()] == [False, True]


def test_connections_are_balanced_across_the_links():
    f, a, b = hosts()
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)  # the second link is up
    for cid in range(2, 7):
        open_conn(f, a, b, cid)
    on = [b.host.conns[cid].link.link_id for cid in range(1, 7)]
    # with two links: an even number of connections -> the first link, odd -> the next
    assert on == [1, 2, 1, 2, 1, 2]
    assert [a.host.conns[cid].link.link_id for cid in range(1, 7)] == on


# --------------------------------------------------------------------------- link failure


def run_bulk(f, a, b, nbytes=1_000_000, conns=3, seed=1, gap=0.002):
    bulk = Bulk(f, a, b, nbytes, seed)
    for i in range(conns):
        bulk.start(i + 1, f.now + i * gap)
    return bulk


def finish(f, bulk, limit=60.0):
    f.run(until=f.now + limit, stop=bulk.finished)
    assert bulk.finished(), "the transfer did not finish"
    bulk.check()
    assert not f.access_errors


def no_fault_duration() -> float:
    f, a, b = hosts()
    bulk = run_bulk(f, a, b)
    finish(f, bulk)
    return f.now


@pytest.fixture(scope="module")
def duration() -> float:
    return no_fault_duration()


SEEDS = list(range(24))


@pytest.mark.parametrize("seed", SEEDS)
def test_link_one_killed_at_a_random_moment(seed, duration):
    """Kill link 1's port on either side at a random moment of a three-connection
    transfer (handshakes, ADD LINK and data all happen in that window), bring it back
    later: every byte arrives once, the connections carry on, the groups end SYM."""
    rng = random.Random(seed)
    f, a, b = hosts(seed=seed)
    bulk = run_bulk(f, a, b, seed=seed)
    victim = rng.choice([a, b])
    kill_at = rng.uniform(0, duration)
    notify = rng.choice([0.0, 0.0003, 0.1])  # port event at once, soon, or after the QPs noticed
    restore_at = kill_at + rng.uniform(0.005, 0.2)
    f.at(kill_at, victim.port, "fab0", False, notify)
    f.at(restore_at, victim.port, "fab0", True, notify)
    f.run(until=f.now + 60.0, stop=bulk.finished)
    if kinds(a, "clc.msg", type="Decline", dir="tx", diagnosis=DECL.SYNCERR):
        # the server's Accept named the link that had just died on the client: SYNCERR, out
        # of sync, and the server terminates the group (smc_conn_create, smc_clc_wait_msg)
        _assert_syncerr_race(f, a, b)
        return
    finish(f, bulk)
    f.run(until=max(f.now, restore_at + notify) + 8.0)  # room for a link add that must time out first (5 s)
    for cid in bulk.cids:
        for io in (a, b):
            app = io.apps[cid]
            assert app.fallback or (app.closed and app.close_error is None), f"{io.name} conn {cid}: {app}"
    established_before = [c for c in bulk.cids if kinds(a, "conn.mode", conn=c) and kinds(a, "conn.mode", conn=c)[0].t < kill_at]
    for cid in established_before:
        assert not a.apps[cid].fallback  # it was SMC-R and stayed SMC-R, through the failover
    assert_symmetric(a, b)
    if established_before and kinds(a, "rdma.write"):
        assert kinds(victim, "link.event", event="down")


def _assert_syncerr_race(f, a, b) -> None:
    """The kernel's outcome of an Accept that names a link the client has just lost: the
    connection falls back with SYNCERR (its bytes go over TCP), the server terminates the
    link group on the out-of-sync Decline and its other connections abort."""
    (decline,) = kinds(a, "clc.msg", type="Decline", dir="tx", diagnosis=DECL.SYNCERR)
    assert decline.get("out_of_sync") is True
    (ended,) = kinds(b, "lgr.state", cause="the peer declined out of sync (SYNCERR)")
    assert a.apps[decline.conn].fallback and b.apps[decline.conn].fallback
    f.run(until=f.now + 8.0)
    assert ended.lgr not in [lgr.name for lgr in b.host.lgrs]
    for io in (a, b):  # nothing is left on the group: every other connection aborted
        assert not [c for c in io.host.conns.values() if c.lgr is not None and c.lgr.name == ended.lgr]
    assert not f.access_errors


def test_killed_during_the_first_handshake_falls_back_with_every_byte():
    f, a, b = hosts()
    bulk = run_bulk(f, a, b)
    f.at(0.00015, b.port, "fab0", False)  # the Accept is out, CONFIRM LINK not yet
    f.at(0.05, b.port, "fab0", True)
    finish(f, bulk)
    assert a.apps[1].fallback and b.apps[1].fallback
    (fb,) = kinds(b, "conn.fallback", conn=1)
    assert fb.get("reason_text") == "0x09990002 ERR_RDYLNK"
    assert not a.apps[2].fallback and not a.apps[3].fallback
    f.run(until=f.now + 0.1)
    assert_symmetric(a, b)


@pytest.mark.parametrize("victim_device", ["fab0", "fab1"])  # the existing link's or the new link's
@pytest.mark.parametrize("step", ["ADD LINK", "CONFIRM LINK"])
def test_killed_while_the_second_link_is_added(victim_device, step):
    f, a, b = hosts()
    bulk = Bulk(f, a, b, 1_000_000, 1)
    bulk.start(1, 0.0)
    bulk.start(2, 0.05)  # after the port is back
    killed = []

    def watch(e):
        if not killed and e.kind == "llc.msg" and e.get("dir") == "tx" and e.get("type").startswith("LLC " + step):
            if step == "ADD LINK" or e.link == 2:
                killed.append(e.t)
                f.at(f.now, b.port, victim_device, False)

    b.bus.listen(watch)
    f.at(0.04, lambda: b.port(victim_device, True))
    if (step, victim_device) == ("ADD LINK", "fab0"):
        # the only link died before the client heard of the second one: nothing can carry
        # connection 1 any more, it aborts on both sides and says why
        f.run(until=5.0, stop=bulk.finished)
        for io in (a, b):
            assert io.apps[1].closed and "no other link" in io.apps[1].close_error
        assert len(bulk.got[("client", 2)]) == len(bulk.got[("server", 2)]) == 1_000_000
        return
    finish(f, bulk)
    assert killed and not a.apps[1].fallback and a.apps[1].close_error is None
    if victim_device == "fab0":  # link 2 came up without link 1 and took its connection over
        assert kinds(b, "link.event", event="failover_pending")
    f.run(until=f.now + 8.0)
    assert_symmetric(a, b)


@pytest.mark.parametrize("side", ["sender", "receiver"])
def test_killed_mid_write_across_a_wrap(side):
    """The port dies right after the two WRITEs that split a transfer at the ring's end."""
    f, a, b = hosts()
    bulk = run_bulk(f, a, b, conns=1)
    killed = []

    def watch(e):
        if not killed and e.kind == "rdma.write" and e.get("offset") == 0 and e.t > 0.002:
            killed.append((e.t, e.conn, e.get("length")))
            f.at(f.now, (a if side == "sender" else b).port, "fab0", False)  # the WRITEs are on the wire

    a.bus.listen(watch)
    f.at(0.2, lambda: (a if side == "sender" else b).port("fab0", True))
    finish(f, bulk)
    assert killed
    conn_link = [e for e in a.events if e.kind == "link.event" and e.get("event") == "failover_begin"]
    assert conn_link and conn_link[0].get("conns") == 1
    rewound = [e for e in a.events if e.kind == "conn.cursor" and e.get("cause") == "failover"]
    assert rewound and rewound[0].get("rewound") > 0  # unconfirmed data was written again


def test_failover_validation_and_rewind_on_the_wire():
    """The side that fails over sends the validation CDC (flag 0x08, the last completed
    sequence number, zero cursors) on the surviving link before anything else."""
    f, a, b = hosts()
    bulk = run_bulk(f, a, b, conns=1)
    f.at(0.004, a.port, "fab0", False)
    finish(f, bulk)
    (begin,) = kinds(a, "link.event", event="failover_begin")
    after = [e for e in a.events if e.kind == "cdc.msg" and e.get("dir") == "tx" and e.t >= begin.t]
    first = after[0]
    assert first.get("flags") == ["failover_validation"] and first.link == 2
    assert first.get("prod") == "0:0" and first.get("cons") == "0:0"
    assert first.get("raw")[24] == 0x08  # producer flags byte: failover validation bit
    # its number is the kernel's tx_cdc_seq_fin, one less than the last completed CDC's: the
    # producer cursor the sender went back to is that next CDC's
    (rewind,) = kinds(a, "conn.cursor", cause="failover")
    sent = {e.get("seqno"): e.get("prod") for e in a.events if e.kind == "cdc.msg" and e.get("dir") == "tx" and e.t < begin.t and e.conn == first.conn}
    assert sent[(first.get("seqno") + 1) & 0xFFFF] == rewind.get("prod"), (first, rewind)
    (end,) = kinds(a, "link.event", event="failover_end")
    assert end.get("duration_ms") > 0 and end.get("conns") == 1 and end.get("failed") == 0


def pull_after_setup(side: str):
    """A SYM group with one connection, then the client's or the server's fab0 port pulled."""
    f, a, b = hosts()
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    t0 = f.now
    (a if side == "client" else b).port("fab0", False)
    f.run(until=f.now + 0.01)
    return f, a, b, t0


def test_client_detects_first_server_drives_the_deletion():
    f, a, b, t0 = pull_after_setup("client")
    log_a = llc_log(a, t0)
    assert log_a[:3] == [("tx", "DELETE LINK", False, 2), ("rx", "DELETE LINK", False, 2), ("tx", "DELETE LINK", True, 2)]
    reqs = [e for e in a.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type", "").startswith("LLC DELETE LINK")]
    assert [(e.get("link_num"), e.get("reason"), e.get("orderly")) for e in reqs[:2]] == [(1, 0x00010000, True), (1, 0x00010000, True)]
    assert reqs[2].get("reason") == 0x00100000  # the client had already cleared link 1: "unknown link"


def test_server_detects_first_the_client_answers():
    f, a, b, t0 = pull_after_setup("server")
    reqs = [e for e in a.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type", "").startswith("LLC DELETE LINK")]
    assert [(e.get("dir"), e.get("response"), e.get("link_num"), e.get("reason")) for e in reqs[:2]] == [
        ("rx", False, 1, 0x00010000), ("tx", True, 1, 0)]  # fmt: skip
    # then the server, SINGLE now, adds an asymmetric link on the device it still has
    assert (a.host.lgrs[0].type, b.host.lgrs[0].type) == (LgrType.ASYMMETRIC_PEER, LgrType.ASYMMETRIC_LOCAL)


@pytest.mark.parametrize("version", [1, 2])
def test_client_port_back_asks_for_a_link_and_the_asymmetric_one_goes(version):
    f, a, b = hosts(frozenset({version}))
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    a.port("fab0", False)
    f.run(until=f.now + 0.01)
    assert (a.host.lgrs[0].type, b.host.lgrs[0].type) == (LgrType.ASYMMETRIC_LOCAL, LgrType.ASYMMETRIC_PEER)
    t0 = f.now
    a.port("fab0", True)
    f.run(until=f.now + 0.01)
    first = llc_log(a, t0)[0]
    if version == 2:
        assert first == ("tx", "REQUEST ADD LINK", False, 2)
    else:
        assert first == ("tx", "ADD LINK", False, 2)
        invite = next(e for e in a.events if e.kind == "llc.msg" and e.t >= t0)
        assert invite.get("qpn") == 0 and invite.get("gid") == a.dev_gid["fab0"]
    dels = [e for e in b.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type", "").startswith("LLC DELETE LINK")]
    assert dels[0].get("reason") == 0x00050000 and dels[0].get("orderly")  # the asymmetric link is no longer needed
    assert_symmetric(a, b)


def test_silent_path_loss_is_found_by_test_link():
    """No port event, no traffic: TEST LINK finds the dead path and the group fails over
    (its answer time is shorter than the RC retry budget here, so TEST LINK is first)."""
    t = Timeouts(test_link=0.5, llc_wait=0.3)
    f, a, b = hosts(timeouts=t)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    b.port("fab0", False, notify_after=None)
    f.run(until=f.now + 3.0)
    assert kinds(a, "link.event", event="test_link_timeout") or kinds(b, "link.event", event="test_link_timeout")
    assert a.host.conns[1].link.link_id == 2 and b.host.conns[1].link.link_id == 2
    assert a.host.app_send(1, b"still here", f.now) == 10
    f.run(until=f.now + 0.01)
    assert b.host.app_recv(1, 100, f.now) == b"still here"


# --------------------------------------------------------------------------- no link left


def test_both_links_killed_mid_transfer_every_connection_aborts_in_time():
    f, a, b = hosts()
    bulk = run_bulk(f, a, b)
    kill = 0.006
    f.at(kill, b.port, "fab0", False)
    f.at(kill, b.port, "fab1", False)
    f.run(until=kill + 10)
    for cid in bulk.cids:
        for io, limit in ((b, 0.001), (a, 2 * RETRY_TIMEOUT + 0.01)):
            app = io.apps[cid]
            assert app.closed and app.close_error and "terminated" in app.close_error, f"{io.name} {cid}: {app}"
            (closed,) = kinds(io, "conn.state", conn=cid, new="CLOSED")
            assert closed.t - kill <= limit, f"{io.name} conn {cid} closed {closed.t - kill:.3f} s after the kill"
    assert not a.host.lgrs and not b.host.lgrs
    (gone,) = [e for e in b.events if e.kind == "lgr.state" and e.get("new") == "NONE" and e.get("cause") != "created"]
    assert "no other link" in gone.get("cause") or "no link left" in gone.get("cause")


def test_both_links_killed_while_idle_test_link_ends_it():
    t = Timeouts(test_link=5.0)
    f, a, b = hosts(timeouts=t)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    kill = f.now
    b.port("fab0", False)
    b.port("fab1", False)
    f.run(until=kill + 5.0 + 2.0 + RETRY_TIMEOUT * 2 + 0.1)
    assert b.apps[1].closed and a.apps[1].closed and "terminated" in a.apps[1].close_error
    (closed,) = kinds(a, "conn.state", conn=1, new="CLOSED")
    assert closed.t - kill <= 5.0 + 2.0 + 0.01  # TEST LINK interval + its 2 s answer time


def test_a_port_that_comes_back_while_an_add_link_runs_gets_its_link_after_it():
    """The lab's two-link differential: our server's asymmetric ADD LINK after a link loss
    was still waiting (for a peer whose side of the path had gone too) when rxe1's port came
    back, and the port's ADD LINK was dropped: the group stayed SINGLE. As the kernel's
    llc_event_q keeps it, it now waits for the running flow and then adds the link."""
    from stack.core.llcflows import ServerAddLink

    f, a, b = hosts(frozenset({2}))
    b.port("fab1", False)
    f.run(until=0.001)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    lgr = b.host.lgrs[0]
    assert lgr.type == LgrType.ASYMMETRIC_LOCAL
    busy = ServerAddLink(lgr, "an ADD LINK still waiting for its peer")
    lgr.running = busy  # as the failed asymmetric add was, when the port came back
    b.port("fab1", True)
    f.run(until=f.now + 0.001)
    assert [type(x).__name__ for x in lgr.flows] == ["ServerAddLink"]  # kept for when the running one ends
    b.port("fab1", True)  # a second port event while one waits: still one
    f.run(until=f.now + 0.001)
    assert len(lgr.flows) == 1
    lgr.flow_done(busy, f.now)
    f.run(until=f.now + 0.01)
    assert_symmetric(a, b)


def test_a_late_answer_to_an_earlier_add_link_is_not_taken_for_the_running_ones():
    """The lab again: the kernel client's rejection of our timed-out ADD LINK (link 3)
    arrived while our next ADD LINK (link 4) waited for its answer, and ended it. A response
    names its link (smc_llc_cli_add_link keeps the server's link_num): another link's is left."""
    from stack.core.llcflows import ServerAddLink
    from stack.wire import llc

    f, a, b = hosts(frozenset({2}))
    b.port("fab1", False)
    f.run(until=0.001)
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    lgr = b.host.lgrs[0]
    b.port("fab1", True)
    f.run(until=f.now + 1e-6)  # the port event: the server's ADD LINK is on its way, not yet answered
    flow = lgr.running
    assert isinstance(flow, ServerAddLink) and flow.step == "ADD LINK response", (flow, getattr(flow, "step", None))
    stale = llc.AddLink(version=2, response=True, rejected=True, mac=bytes(6), gid=bytes(16), qpn=0, link_num=flow.new.link_id + 7,
                        qp_mtu=3, psn=0)  # fmt: skip
    assert flow.on_llc(flow.link, stale, f.now)
    assert lgr.running is flow and flow.new is not None  # still waiting for its own answer
    f.run(until=f.now + 0.01)
    assert_symmetric(a, b)
    assert not kinds(b, "link.event", event="add_link_rejected")


def _server_add_link_unanswered():
    """v2 hosts whose server gets its second port back with two connections open: its ADD
    LINK v2 (two rkeys, longer than 44 bytes) is on its way, not yet answered. Returns the
    fabric, the hosts, the group, the running ServerAddLink, the request's bytes and when
    the port came back."""
    from stack.core.llcflows import ServerAddLink

    f, a, b = hosts(frozenset({2}))
    b.port("fab1", False)
    f.run(until=0.001)
    for cid in (1, 2):  # RMBs to announce: the request carries rkeys and is longer than 44 bytes
        open_conn(f, a, b, cid)
    f.run(until=f.now + 0.01)
    lgr = b.host.lgrs[0]
    t0 = f.now
    b.port("fab1", True)
    f.run(until=f.now + 1e-6)
    flow = lgr.running
    assert isinstance(flow, ServerAddLink) and flow.step == "ADD LINK response"
    (req,) = [e for e in b.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type") == "LLC ADD LINK v2" and e.get("dir") == "tx"]
    request = req.get("raw")
    assert len(request) > 44 and int.from_bytes(request[1:3], "little") == len(request)
    return f, a, b, lgr, flow, request, t0


def test_the_kernels_44_byte_echo_of_a_longer_add_link_ends_the_servers_flow_at_once():
    """The lab: a kernel client whose port was not up yet rejected our ADD LINK v2 with the
    first 44 bytes of our request, its length_v2 of 104 included (smc_llc_cli_add_link_reject
    echoes the request; the kernel's own receive rule asks only length_v2 >= 44). We took that
    for a malformed message, waited 2 s for an answer that had come, and the client's REQUEST
    ADD LINK in between found our flow busy: the group stayed SINGLE. The echo is a reject."""
    f, a, b, lgr, flow, request, _ = _server_add_link_unanswered()
    echo = request[:3] + bytes([0xC1]) + request[4:44]  # RESP | REJ, reason 1 (NO_ALT_PATH)
    new_link = flow.new.link_id
    flow.link.received(echo, f.now)
    assert not kinds(b, "link.event", event="bad_llc")
    (rej,) = kinds(b, "link.event", event="add_link_rejected")
    assert rej.link == new_link and rej.get("reason") == 1
    assert lgr.running is not flow and not kinds(b, "link.event", event="llc_timeout")


def test_the_kernels_echo_of_our_add_link_while_it_confirms_another_ends_our_flow_and_its_request_gets_a_link():
    """The lab: a kernel client still waiting for the CONFIRM LINK of a link it was adding got
    our next ADD LINK, took it for a DELETE LINK and sent it back flagged a response
    (smc_llc_cli_conf_link), 44 bytes of our 104. Then it asked for a link itself (REQUEST ADD
    LINK) while our flow still waited for an answer, and was told no: the group stayed
    SINGLE. Now the echo ends our flow at once (its own QPN and GID in it), and a REQUEST ADD
    LINK that comes while an ADD LINK flow runs gets a flow of its own when that one fails."""
    from stack.core.llcflows import ServerAddLink

    f, a, b, lgr, flow, request, t0 = _server_add_link_unanswered()
    # the client's REQUEST ADD LINK comes while our flow waits: it is kept, not refused
    flow.link.received(llc.RequestAddLink(version=2, gids=(a.host.lgrs[0].links[1].qp.gid,)).encode("little"), f.now)
    assert not [e for e in b.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type") == "LLC REQUEST ADD LINK v2" and e.get("dir") == "tx"]
    first_link = flow.new.link_id
    flow.link.received(request[:3] + bytes([0x80]) + request[4:44], f.now)  # our request back, RESP only
    assert not kinds(b, "link.event", event="bad_llc") and not kinds(b, "link.event", event="llc_timeout")
    (failed,) = kinds(b, "link.event", event="add_link_failed")
    assert failed.link == first_link and "sent our ADD LINK back" in failed.get("reason")
    again = lgr.running
    assert isinstance(again, ServerAddLink) and again is not flow and again.cause == "client request after a failed add"
    assert again.step == "ADD LINK response" and again.new.link_id != first_link
    f.run(until=f.now + 1.0)  # the peer answers this one: the group is symmetric again
    assert lgr.type.smc_tools_name == "SYM" and len(lgr.active_links()) == 2


def test_a_request_add_link_during_an_add_that_succeeds_is_answered_after_it():
    """The other way a kept REQUEST ADD LINK ends: the flow it came during adds its link, and
    the request gets one answer, a response (smc_llc_send_req_add_link_response). (With both
    links up, a second flow would answer the same way: the peer cannot tell them apart.)"""
    f, a, b, lgr, flow, _, t0 = _server_add_link_unanswered()
    flow.link.received(llc.RequestAddLink(version=2, gids=(a.host.lgrs[0].links[1].qp.gid,)).encode("little"), f.now)
    f.run(until=f.now + 1.0)
    answers = [e for e in b.events if e.kind == "llc.msg" and e.t >= t0 and e.get("type") == "LLC REQUEST ADD LINK v2" and e.get("dir") == "tx"]
    assert [e.get("response") for e in answers] == [True]
    assert lgr.type == LgrType.SYMMETRIC and len(lgr.active_links()) == 2 and lgr.running is None
