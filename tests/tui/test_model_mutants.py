"""smctop's model, at the edges mutation testing found open (docs/testing.md, "Mutation
testing"): cursor arithmetic at its limits, the history rings, each event kind's effect on
connections, links and link groups, fallback causes from one end or both, snapshot host
info read defensively, pruning, and the header totals. Events are built by hand, as a stack
emits them, so every expected number is worked out here, not read back from a generator."""

from __future__ import annotations

import pytest

from smctop import model as M
from smctop.model import Model
from stack.events import Event
from stack.wire import fields

DIFFPREFIX, PEERDECL, NOSMCDEV = 0x03070000, 0x05000000, 0x03030000


def ev(t, kind, host="h", lgr=None, link=None, conn=None, **fields):
    return Event(t, kind, host, lgr, link, conn, fields)


def smc_conn(m: Model, host="h", conn=1, t=0.0, size=1000, lgr="g1", link=1, local="a:1", peer="b:2", role="client"):
    m.feed(ev(t, "conn.open", host, lgr, link, conn, role=role, local=local, peer=peer))
    m.feed(ev(t, "conn.mode", host, lgr, link, conn, mode="SMCR", version=2, token=7, rmb_size=size, peer_rmb_size=2 * size, handshake_ms=1.5))
    return m.conns[(host, conn)]


def test_parse_cursor_and_delta_limits():
    assert fields.parse_cursor("3:17") == (3, 17)
    assert fields.parse_cursor(None) == (0, 0) and fields.parse_cursor("") == (0, 0) and fields.parse_cursor("x:1") == (0, 0)
    assert fields.parse_cursor("5") == (0, 0)  # no count
    size = 100
    half = fields.WRAP * size // 2
    assert fields.cursor_delta("0:0", f"{half // size - 1}:{size - 1}", size) == half - 1
    assert fields.cursor_delta("0:0", f"{half // size}:0", size) == 0  # half the range or more: not forward
    assert fields.cursor_delta(None, "1:0", size) == 0 and fields.cursor_delta("1:0", None, size) == 0
    assert fields.cursor_delta("1:0", "1:1", size) == 1
    assert M.reason_text(0) == "" and M.reason_text(DIFFPREFIX) == "0x03070000 DIFFPREFIX"


def test_ring_and_history():
    r = M.Ring(3)
    assert r.values() == [] and r.last() == 0.0 and r.last(-1.0) == -1.0 and len(r) == 0
    for v in (1, 2):
        r.push(v)
    assert r.values() == [1.0, 2.0] and r.last() == 2.0 and len(r) == 2
    for v in (3, 4, 5):
        r.push(v)
    assert r.values() == [3.0, 4.0, 5.0] and r.last() == 5.0 and len(r) == 3
    h = M.History(3, 2)
    h.push(1, 10)
    h.push(2, 20)
    assert h.series(0) == [1.0, 2.0] and h.series(1) == [10.0, 20.0]
    h.push(3, 30)
    h.push(4, 40)
    assert h.series(0) == [2.0, 3.0, 4.0] and h.series(1) == [20.0, 30.0, 40.0] and h.n == 3
    log = M.new_log(2, [1, 2, 3])
    assert log == [2, 3] and log.maxlen == 2
    assert M.new_log(0, [1, 2]) == [] and M.new_log(5) == []


def test_fallback_cause_from_either_end():
    # The server declined on its own (DIFFPREFIX); the client was told (PEERDECL).
    ends = {"c": ("client", PEERDECL, DIFFPREFIX, "10.0.0.2:80"), "s": ("server", DIFFPREFIX, 0, "10.0.0.1:5000")}
    assert M.fallback_cause(ends) == (DIFFPREFIX, "s (server)", "c (client): 0x05000000 PEERDECL")
    # Only the told end is watched: the cause is the peer's diagnosis, decided by the peer.
    only = {"c": ("client", PEERDECL, DIFFPREFIX, "10.0.0.2:80")}
    assert M.fallback_cause(only) == (DIFFPREFIX, "peer 10.0.0.2 (not watched)", "c (client): 0x05000000 PEERDECL")
    no_diag = {"c": ("client", PEERDECL, 0, "")}
    assert M.fallback_cause(no_diag) == (PEERDECL, "peer ? (not watched)", "c (client): 0x05000000 PEERDECL")
    # No SMC at all on one end (reason 0): "not SMC".
    assert M.fallback_cause({"s": ("server", NOSMCDEV, 0, "x"), "c": ("client", 0, 0, "y")}) == (NOSMCDEV, "s (server)", "c (client): not SMC")
    # Two ends that both decided: the server's reason wins.
    both = {"c": ("client", NOSMCDEV, 0, "p"), "s": ("server", DIFFPREFIX, 0, "q")}
    assert M.fallback_cause(both)[:2] == (DIFFPREFIX, "s (server)")


def test_rx_cursor_counts_bytes_across_wraps_and_ignores_backwards():
    m = Model()
    c = smc_conn(m)
    assert c.rx_prod == "0:0" and c.rmb_size == 1000 and c.version == 2 and c.token == 7 and c.peer_rmb_size == 2000
    assert m.handshakes[-1] == 1.5 and m.versions[2] == 1 and m.smc_conns == 1
    m.feed(ev(1, "conn.cursor", conn=1, lgr="g1", link=1, side="rx", prod="0:900", cons="0:100", bytes_to_rcv=800, peer_rmbe_space=5))
    m.feed(ev(2, "conn.cursor", conn=1, lgr="g1", link=1, side="rx", prod="1:100", cons="0:950", bytes_to_rcv=150, peer_rmbe_space=5))
    assert c.bytes_received == 1100 and (c.rxw, c.rxc, c.rx_cons, c.fill) == (1, 100, "0:950", 150)
    m.feed(ev(3, "conn.cursor", conn=1, lgr="g1", link=1, side="rx", prod="0:500", peer_rmbe_space=5))  # backwards
    assert c.bytes_received == 1100 and c.rx_prod == "0:500" and c.rx_cons == "0:950" and c.fill == 150
    # The application read: our consumer cursor, no bytes.
    m.feed(ev(4, "conn.cursor", conn=1, side="rx", cons="1:0", bytes_to_rcv=0))
    assert c.tx_cons == "1:0" and c.fill == 0 and c.bytes_received == 1100
    # A CDC without prod only moves cons.
    m.feed(ev(5, "conn.cursor", conn=1, side="rx", cons="0:990", peer_rmbe_space=1))
    assert c.rx_cons == "0:990" and c.rx_prod == "0:500"
    # Without an RMB size no bytes can be counted.
    n = Model()
    d = n.conn("h", 9)
    n.feed(ev(1, "conn.cursor", conn=9, side="rx", prod="2:5", peer_rmbe_space=1))
    assert d.bytes_received == 0 and d.rx_prod == "2:5" and (d.rxw, d.rxc) == (2, 5)


def test_tx_cursor_fields():
    m = Model()
    c = smc_conn(m)
    m.feed(ev(1, "conn.cursor", conn=1, side="tx", prod="3:40", cons="3:10", sent="3:30", fin="3:20"))
    assert (c.tx_prod, c.txc, c.tx_cons, c.tx_sent, c.tx_fin) == ("3:40", 40, "3:10", "3:30", "3:20")
    m.feed(ev(2, "conn.cursor", conn=1, side="tx", prod="3:50"))
    assert (c.tx_prod, c.txc, c.tx_cons, c.tx_sent, c.tx_fin) == ("3:50", 50, "3:10", "3:30", "3:20")
    m.feed(ev(3, "conn.cursor", conn=1, side="tx", prod="bad"))
    assert c.tx_prod == "bad" and c.txc == 0
    assert m.conns[("h", 1)].version_no >= 4


def test_events_on_unknown_connections_and_links():
    m = Model()
    m.feed(ev(1, "conn.cursor", side="rx", prod="1:1", peer_rmbe_space=1))  # no connection id: ignored
    m.feed(ev(1, "rdma.write", length=5))
    m.feed(ev(1, "conn.rmb", fill=3))
    m.feed(ev(1, "cdc.msg", dir="rx", seqno=1, prod="0:0", cons="0:0"))
    assert m.conns == {} and m.cdc == 1
    # A write on another link moves the connection to it.
    c = smc_conn(m, lgr="g1", link=1)
    m.feed(ev(2, "rdma.write", "h", "g1", 2, 1, length=10))
    assert c.link == 2 and c.bytes_sent == 10
    m.feed(ev(2, "rdma.write", "h", "g2", 2, 1, length=10))
    assert c.lgr == "g2" and c.bytes_sent == 20
    m.feed(ev(3, "conn.rmb", "h", "g2", 3, 1, fill=7, size=2000, write_blocked=True))
    assert (c.link, c.fill, c.rmb_size, c.write_blocked) == (3, 7, 2000, True)
    m.feed(ev(3, "conn.rmb", "h", None, None, 1))
    assert (c.fill, c.rmb_size, c.write_blocked) == (7, 2000, True)
    m.feed(ev(4, "conn.cursor", "h", "g3", 4, 1, side="tx", prod="0:1"))
    assert (c.lgr, c.link) == ("g3", 4)
    m.feed(ev(5, "cdc.msg", "h", "g4", 5, 1, dir="tx", seqno=2, prod="0:1", cons="0:0"))
    assert (c.lgr, c.link) == ("g4", 5) and c.log[-1][1:3] == ("cdc.msg", "tx")


def test_logs_states_errors_and_mode_tcp():
    m = Model(conn_log=3)
    m.feed(ev(0, "conn.open", conn=1, role="server", local="b:2", peer="a:1"))
    c = m.conns[("h", 1)]
    m.feed(ev(1, "clc.msg", conn=1, dir="rx", type="Proposal", version=2))
    m.feed(ev(1, "clc.msg", dir="rx", type="Proposal"))  # no connection: nothing logged, no connection made
    m.feed(ev(2, "conn.mode", conn=1, mode="TCP", reason=DIFFPREFIX))
    assert c.mode == "TCP" and c.reason == DIFFPREFIX and m.tcp_conns == 1 and m.smc_conns == 0
    m.feed(ev(3, "conn.mode", conn=1, mode="TCP", reason=0))  # a later one without a reason keeps it
    assert c.reason == DIFFPREFIX
    m.feed(ev(4, "conn.error", conn=1, reason="reset by peer"))
    assert c.error == "reset by peer"
    assert len(c.log) == 3 and [x[1] for x in c.log] == ["conn.mode", "conn.mode", "conn.error"]
    assert len(m.conns) == 1
    for i in range(70):
        m.feed(ev(5 + i, "conn.state", conn=1, old="A", new="B", cause="x"))
    assert len(c.states) == 64 and c.states[0] == (5, "A", "B", "x") and c.state == "B" and c.closed is None
    m.feed(ev(80, "conn.state", conn=1, old="B", new="CLOSED"))
    assert c.closed == 80 and c.state == "CLOSED" and m.conns_closed == 1
    m.feed(ev(81, "conn.state", conn=1, old="CLOSED", new="CLOSED"))
    assert c.closed == 80 and m.conns_closed == 1


def test_watch_lengthens_the_log():
    m = Model(conn_log=2, watched_log=5)
    m.watch(("h", 2))
    m.feed(ev(0, "conn.open", conn=1))
    m.feed(ev(0, "conn.open", conn=2))
    assert m.conns[("h", 1)].log.maxlen == 2 and m.conns[("h", 2)].log.maxlen == 5
    for i in range(6):
        m.feed(ev(i, "conn.error", conn=2, reason=str(i)))
    assert len(m.conns[("h", 2)].log) == 5
    m.watch(("h", 1))
    assert m.conns[("h", 2)].log.maxlen == 2 and len(m.conns[("h", 2)].log) == 2 and m.conns[("h", 1)].log.maxlen == 5
    m.watch(None)
    assert m.conns[("h", 1)].log.maxlen == 2 and m.watched is None


def test_links_lgrs_llc_and_dropped():
    m = Model()
    m.feed(ev(1, "llc.msg", dir="rx", type="LLC TEST LINK"))  # no link group: counted only
    assert m.llc == 1 and m.lgrs == {}
    m.feed(ev(1, "llc.msg", "h", "g1", 2, dir="tx", type="LLC CONFIRM LINK"))
    g = m.lgrs[("h", "g1")]
    assert len(g.llc_log) == 1 and g.llc_log[0][:3] == (1, 2, "tx") and g.links[2].llc == 1
    m.feed(ev(1, "llc.msg", "h", "g1", 0, dir="tx", type="LLC DELETE LINK"))
    assert set(g.links) == {2} and m.llc == 3
    m.feed(ev(2, "link.event", "h", "g1", 3, event="added", qpn=0x123, device="eth9"))
    assert (g.links[3].qpn, g.links[3].device) == (0x123, "eth9")
    m.feed(ev(2, "link.event", "h", "g1", 3, event="added"))
    assert (g.links[3].qpn, g.links[3].device) == (0x123, "eth9")
    m.feed(ev(3, "link.state", "h", "g1", 3, old="LINK_ACTIVATING", new="LINK_ACTIVE"))
    assert g.links[3].state == "LINK_ACTIVE"
    m.feed(ev(3, "link.state", "h", "g1", 0, old="", new="LINK_ACTIVE"))  # not yet numbered
    m.feed(ev(3, "link.state", "h", None, 4, old="", new="LINK_ACTIVE"))
    assert set(g.links) == {2, 3} and len(m.lgrs) == 1
    m.feed(ev(4, "link.event", "h", "g1", 9, event="deleted"))  # unknown: nothing made
    m.feed(ev(4, "link.event", "h", "g1", 3, event="deleted"))
    assert g.links[3].state == "LINK_UNUSED" and set(g.links) == {2, 3}
    m.feed(ev(5, "link.event", "h", "g1", 2, event="failover_begin", to_link=3, conns=4, reason="x"))
    m.feed(ev(5.01, "link.event", "h", "g1", 2, event="failover_end", to_link=3, conns=4))
    assert [(f.from_link, f.to_link, f.conns) for f in m.failovers] == [(2, 3, 4)]
    m.feed(ev(6, "lgr.state", "h", "g1", old="NONE", new="SYM", crit=False, role="server", version=2, cause="created"))
    assert (g.type, g.crit, g.role, g.version, g.terminated) == ("SYM", False, "server", 2, False)
    m.feed(ev(7, "lgr.state", "h", "g1", old="SYM", new="SINGLE", crit=True))
    assert (g.type, g.crit, g.role, g.version) == ("SINGLE", True, "server", 2)
    m.feed(ev(8, "lgr.state", "h", "g1", old="SINGLE", new="NONE", crit=True, cause="created"))
    assert not g.terminated
    m.feed(ev(8, "lgr.state", "h", "g1", old="SINGLE", new="NONE", cause="freed"))
    assert g.terminated and g.crit
    m.feed(ev(8, "lgr.state", "h", None, old="SINGLE", new="NONE"))
    m.feed(ev(9, "events.dropped", count=5))
    m.feed(ev(9, "events.dropped", count=2))
    assert m.dropped == 7 and m.totals()["dropped"] == 7
    assert [e.kind for e in m.rare_since(7.5)] == ["lgr.state", "lgr.state", "lgr.state", "events.dropped", "events.dropped"]
    assert len(m.rare_since(None)) == len(m.rare) and m.kinds["llc.msg"] == 3


def test_fallback_rows_and_causes_with_snapshot_counts():
    m = Model()
    m.feed(ev(0, "conn.open", "s", conn=1, role="server", local="b:80", peer="a:5000"))
    m.feed(ev(0, "conn.open", "c", conn=1, role="client", local="a:5000", peer="b:80"))
    m.feed(ev(1, "conn.fallback", "s", conn=1, reason=DIFFPREFIX))
    assert m.fallback_cause_rows()[0]["count"] == 1 and m.fallback_cause_rows()[0]["by"] == "s (server)"
    m.feed(ev(1.5, "conn.fallback", "c", conn=1, reason=PEERDECL, peer_diagnosis=DIFFPREFIX))
    rows = m.fallback_cause_rows()
    assert rows == [
        {"reason": DIFFPREFIX, "text": "0x03070000 DIFFPREFIX", "by": "s (server)", "view": "c (client): 0x05000000 PEERDECL", "count": 1, "last": 1.5}
    ]
    assert m.totals()["fallbacks"] == 2 and m.totals()["fallback_conns"] == 1
    # The same addresses 20 s later: another connection.
    m.feed(ev(21.5, "conn.fallback", "c", conn=1, reason=PEERDECL, peer_diagnosis=DIFFPREFIX))
    assert sum(r["count"] for r in m.fallback_cause_rows()) == 2
    fr = m.fallback_rows()
    assert fr[0] == {"host": "c", "role": "client", "reason": PEERDECL, "text": "0x05000000 PEERDECL", "count": 2, "last": 21.5}
    assert fr[1]["count"] == 1 and fr[1]["host"] == "s"
    # A snapshot that counted more than the events showed adds one-end rows.
    m.apply_snapshot(
        {"host": "c", "t": 30.0, "fallbacks": [{"role": "client", "reason": PEERDECL, "count": 5}, {"role": "client", "reason": NOSMCDEV, "count": 1}]}
    )
    rows = m.fallback_cause_rows()
    extra = [r for r in rows if r["last"] is None]
    assert {(r["reason"], r["by"], r["view"], r["count"]) for r in extra} == {
        (PEERDECL, "the peer", "c (client), before smctop watched", 3),
        (NOSMCDEV, "c (client)", "before smctop watched", 1),
    }
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
    assert next(r for r in m.fallback_rows() if r["reason"] == PEERDECL)["count"] == 5


def test_apply_host_info_reads_defensively():
    m = Model()
    h = m.apply_host_info({"host": "x", "t": 3.0, "stats": {"a": 1, "b": True, "c": "s", "d": 2.5}, "devices": [{"name": "d"}, 5],
                           "fallbacks": [{"role": "client"}, "x"], "rdma": {"dev": {"frames": 1}, "bad": 3},
                           "listeners": [{"local": "1.2.3.4:5"}, {"local": 5}, "x"], "ueids": ["A", 3], "limits": {"max": 1}})  # fmt: skip
    assert h.stats == {"a": 1, "d": 2.5} and h.devices == [{"name": "d"}] and h.fallbacks == [{"role": "client"}]
    assert h.rdma == {"dev": {"frames": 1}} and h.listeners == [{"local": "1.2.3.4:5"}] and h.ueids == ["A"]
    assert h.extra == {"limits": {"max": 1}} and h.snapshot_t == 3.0
    h = m.apply_host_info({"host": "x", "stats": 1, "devices": {}, "fallbacks": {}, "rdma": [], "listeners": {}, "ueids": "A"})
    assert (h.stats, h.devices, h.fallbacks, h.rdma, h.listeners, h.ueids, h.extra) == ({}, [], [], {}, [], [], {})
    h = m.apply_host_info({"host": "y", "listeners": [{"local": "l"}] * 1500, "ueids": ["u"] * 100})
    assert len(h.listeners) == 1000 and len(h.ueids) == 64


def test_snapshot_links_lgrs_and_counters():
    m = Model()
    snap = {"host": "h", "t": 5.0, "lgrs": [{"id": "g", "role": "client", "type": "SYM", "crit": False, "version": 2, "peer_host": "p", "conns": 3,
            "eid": "E" * 40, "links": [{"id": 1, "state": "LINK_ACTIVE", "asym": True, "conns": 2, "psn_out_of_window": 4, "mtu": 1024, "x": "s"},
                                       {"id": 2, "state": "LINK_ACTIVE"}]}]}  # fmt: skip
    m.apply_snapshot(snap)
    g = m.lgrs[("h", "g")]
    assert (g.role, g.type, g.crit, g.version, g.peer_host, g.conns, g.eid) == ("client", "SYM", False, 2, "p", 3, "E" * 32)
    assert g.links[1].asym and g.links[1].conns == 2 and g.links[1].counters == {"psn_out_of_window": 4}
    t = m.totals()
    assert (t["lgrs"], t["links"], t["links_active"], t["crit"]) == (1, 2, 2, 0)
    m.apply_snapshot({**snap, "t": 6.0, "lgrs": [{"id": "g", "links": [{"id": 1}]}]})
    assert g.links[2].state == "LINK_UNUSED" and g.links[1].state == "LINK_ACTIVE" and g.type == "SYM"
    assert m.totals()["links"] == 1  # the header's totals follow a snapshot at once, not at the next event
    m.apply_snapshot({"host": "h", "t": 7.0, "lgrs": []})
    assert g.terminated and m.totals()["lgrs"] == 0
    m.apply_snapshot({"host": "other", "t": 7.0, "lgrs": []})
    assert ("h", "g") in m.lgrs
    assert [(r[0].id, r[1].id if r[1] else None) for r in m.link_rows()] == [("g", 1), ("g", 2)]
    m.lgr("h", "empty")
    assert m.link_rows()[0][0].id == "empty" and m.link_rows()[0][1] is None


def test_snapshot_connections_and_closing():
    m = Model()
    m.feed(ev(1.0, "conn.open", conn=2, role="client", local="a", peer="b"))
    m.apply_snapshot({"host": "h", "t": 2.0, "conns": [{"conn": 1, "mode": "SMCR", "state": "ACTIVE", "role": "server", "fallback_reason": 0,
                      "rx_prod": "2:30", "tx_prod": "1:20", "bytes_sent": 9, "bytes_received": 8, "write_blocked": True}, {"conn": 3}]})  # fmt: skip
    c = m.conns[("h", 1)]
    assert (c.rxw, c.rxc, c.txc, c.ev_tx, c.ev_rx, c.write_blocked, c.role, c.opened) == (2, 30, 20, 9, 8, True, "server", 2.0)
    assert m.conns[("h", 2)].closed == 2.0  # opened before the snapshot and not in it: closed
    m.feed(ev(2.5, "conn.open", conn=4))
    m.apply_snapshot({"host": "h", "t": 2.4, "conns": [{"conn": 1}]})
    assert m.conns[("h", 4)].closed is None  # opened after the snapshot's time: not closed by it
    assert m.conns[("h", 3)].closed == 2.4
    assert m.rmb_usage("h") == (1, 0, 0)
    m.apply_snapshot({"host": "h", "t": 3.0, "conns": [{"conn": 1, "rmb_size": 100, "bytes_to_rcv": 40}, {"conn": 4, "mode": "TCP"}]})
    assert m.rmb_usage("h") == (1, 100, 40) and m.rmb_usage("x") == (0, 0, 0)


def test_samples_rates_links_and_perf():
    m = Model(interval=0.5)
    c = smc_conn(m, size=1000, lgr="g1", link=1)
    m.apply_snapshot({"host": "h", "t": 0.0, "lgrs": [{"id": "g1", "links": [{"id": 1, "state": "LINK_ACTIVE"}]}],
                      "conns": [{"conn": 1, "mode": "SMCR", "lgr": "g1", "link": 1}]})  # fmt: skip
    m.advance(0.0)
    m.feed(ev(0.1, "rdma.write", "h", "g1", 1, 1, length=300))
    m.feed(ev(0.2, "conn.cursor", "h", "g1", 1, 1, side="rx", prod="0:100", peer_rmbe_space=1))
    m.feed(ev(0.3, "cdc.msg", "h", "g1", 1, 1, dir="rx", seqno=1, prod="0:100", cons="0:0"))
    assert m.advance(0.5) == 1
    assert c.rate == 800.0 and m.rate == 800.0 and m.bytes == 400
    link = m.lgrs[("h", "g1")].links[1]
    assert link.bytes == 400 and link.rate == 800.0 and link.hist.values() == [800.0]
    assert m.perf.series(0) == [800.0] and m.perf.series(1) == [2.0]  # one CDC in half a second
    t = m.totals()
    assert (t["rate"], t["bytes"], t["cdc_rate"], t["events"], t["conns"], t["smcr"], t["handshake"]) == (800.0, 400, 2.0, 5, 1, 1, 0)
    assert t["elapsed"] == 0.5 and t["hosts"] == ["h"]
    assert c.hist.series(0) == [800.0] and c.hist.series(2) == [100.0]
    m.advance(1.0)
    assert c.rate == 0.0 and c.hist.series(0) == [800.0, 0.0] and m.rate == 0.0 and link.rate == 0.0
    # A snapshot saying less than the events did: no negative rate.
    m.apply_snapshot({"host": "h", "t": 1.1, "conns": [{"conn": 1, "mode": "SMCR", "bytes_sent": 0, "bytes_received": 0, "lgr": "g1", "link": 1}]})
    m.advance(1.5)
    assert c.rate == 0.0 and m.bytes == 400


def test_pruning_of_closed_connections_links_and_link_groups():
    m = Model(interval=1.0, history=3, closed_keep=2.0, max_closed=1)
    m.advance(0.0)
    for i in (1, 2, 3):
        m.feed(ev(0.5, "conn.open", conn=i))
    m.watch(("h", 3))
    for i in (1, 2, 3):
        m.feed(ev(0.6, "conn.state", conn=i, old="ACTIVE", new="CLOSED"))
    m.advance(1.0)  # more closed than max_closed: the oldest go at once, the watched one stays
    assert ("h", 1) not in m.conns and ("h", 2) not in m.conns and ("h", 3) in m.conns
    changed, removed = m.take_conn_changes()
    assert removed == {("h", 1), ("h", 2)} and ("h", 3) in changed
    # A deleted link stays, with its history, for history * interval seconds.
    m.feed(ev(1.1, "link.event", "h", "g", 1, event="added"))
    m.feed(ev(1.1, "link.event", "h", "g", 2, event="added"))
    m.feed(ev(1.1, "link.state", "h", "g", 2, old="LINK_ACTIVATING", new="LINK_ACTIVE"))
    m.feed(ev(1.2, "link.event", "h", "g", 1, event="deleted"))
    m.advance(2.0)
    g = m.lgrs[("h", "g")]
    assert g.links[1].unused_since == 2.0 and g.links[2].unused_since is None
    m.advance(4.0)
    assert 1 in g.links
    m.advance(5.0)
    assert set(g.links) == {2}
    # A terminated link group goes once none of its links is in use.
    m.feed(ev(5.5, "lgr.state", "h", "g", old="SINGLE", new="NONE", cause="freed"))
    m.advance(6.0)
    assert ("h", "g") in m.lgrs
    m.feed(ev(6.5, "link.event", "h", "g", 2, event="deleted"))
    m.advance(7.0)
    assert ("h", "g") not in m.lgrs
    slot_free = list(m._free)
    assert len(slot_free) == 2


def test_totals_cache_and_percentile_and_latencies():
    m = Model()
    t1 = m.totals()
    t1["conns"] = 99
    assert m.totals()["conns"] == 0  # a copy each time
    smc_conn(m)
    assert m.totals()["conns"] == 1 and m.totals()["fallback_ratio"] == 0.0
    assert m.percentile([], 50) is None
    assert m.percentile([5, 1, 3, 2, 4], 50) == 3 and m.percentile([5, 1, 3, 2, 4], 100) == 5 and m.percentile([5, 1], 0) == 1
    assert m.percentile([1, 2, 3], 200) == 3 and m.percentile([1, 2, 3], -50) == 1
    m.add_latencies([0.001, 0.0025])
    assert list(m.latencies) == [1000.0, 2500.0]


def test_advance_with_a_clock_beyond_float_precision():
    m = Model(interval=1.0)
    m.advance(2.0**60)
    assert m.advance(2.0**60 + 2**8) == 1  # a step below the float's resolution: one sample, no endless loop


def test_feed_timed_without_closing_a_sample():
    m = Model(interval=1.0)
    m.advance(0.0)
    m.feed_timed([ev(0.2, "stats"), ev(0.4, "conn.open", conn=1)])
    assert m.ticks == 0 and m.seq == 2 and ("h", 1) in m.conns
    m.feed_timed([ev(1.5, "stats"), ev(2.6, "stats")])
    assert m.ticks == 2 and m.seq == 4
    m.feed_many([])
    assert m.seq == 4
    n = Model()
    n.feed_many(iter([ev(3.0, "stats")]))
    assert n.t0 == 3.0 and n.seq == 1


@pytest.mark.parametrize("kept", [1, 3])
def test_event_log_bound(kept):
    m = Model(events_kept=kept)
    m.feed_many([ev(float(i), "stats") for i in range(10)])
    assert len(m.events) <= 2 * kept and m.events[-1].t == 9.0
    assert [e.t for e in m.events_since(9)] == [9.0] and m.events_since(10) == []


def test_survivors_of_the_sampled_run():
    assert fields.cursor_delta("3:10", "3:5", 100) == 0  # backwards within one wrap
    m = Model()
    assert m.conn_log == 16
    m.feed(ev(0, "conn.open", conn=1))
    c = m.conns[("h", 1)]
    assert (c.token, c.peer_diagnosis, m.conns_added) == (0, 0, 1)
    assert isinstance(c.change_no, int) and c.change_no == c.version_no + c.htick
    for i in range(20):
        m.feed(ev(0.1, "conn.error", conn=1, reason=str(i)))
    assert len(c.log) == 16
    assert m.lgr("h", "g").version == 0
    # A fallback that says nothing of the peer's diagnosis: 0, not unknown.
    m.feed(ev(0.2, "conn.fallback", conn=1, reason=DIFFPREFIX))
    assert c.peer_diagnosis == 0
    # Changes are seen after a sample moves a connection again.
    m.advance(0.0)
    m.take_conn_changes()
    m.feed(ev(0.5, "rdma.write", conn=1, length=1))
    m.advance(1.0)
    assert ("h", 1) in m.take_conn_changes()[0]
    m.feed(ev(1.5, "rdma.write", conn=1, length=1))
    m.advance(2.0)
    assert ("h", 1) in m.take_conn_changes()[0]


def test_first_sample_rates_and_fractional_link_rates():
    m = Model(interval=2.0)
    m.advance(0.0)
    c = smc_conn(m, lgr="g", link=1)
    m.apply_snapshot({"host": "h", "t": 0.1, "lgrs": [{"id": "g", "links": [{"id": 1, "state": "LINK_ACTIVE"}]}],
                      "conns": [{"conn": 1, "mode": "SMCR", "lgr": "g", "link": 1}]})  # fmt: skip
    m.feed(ev(0.5, "rdma.write", "h", "g", 1, 1, length=3))
    m.advance(2.0)
    assert m.lgrs[("h", "g")].links[1].rate == 1.5 and c.rate == 1.5
    assert m.perf.series(5) == [m.seq / 2.0] and m.perf.series(3) == [0.5]  # events and connections opened a second


def test_feed_keeps_the_newest_events_when_it_trims():
    m = Model(events_kept=100)
    for i in range(201):
        m.feed(ev(float(i), "stats"))
    assert len(m.events) == 100 and m.events[0].t == 101.0


def test_feed_timed_advances_as_feeding_one_by_one():
    m = Model(interval=1.0)
    m.advance(0.0)
    m.feed_timed([ev(0.2, "stats"), ev(1.5, "stats"), ev(1.7, "stats")])
    assert m.now == 1.5 and m.ticks == 1


def test_local_only_addresses_do_not_pair_two_hosts():
    m = Model()
    for host in ("h1", "h2"):
        m.feed(ev(0, "conn.open", host, conn=1, role="client", local="10.0.0.1:5000"))
        m.feed(ev(1, "conn.fallback", host, conn=1, reason=NOSMCDEV))
    assert m.totals()["fallback_conns"] == 2


def test_kernel_per_call_lengths_count_bytes():
    m = Model()
    c = smc_conn(m)
    m.feed(ev(1, "conn.cursor", conn=1, lgr="g1", link=1, side="tx", len=100, source="tracepoint"))
    m.feed(ev(1, "conn.cursor", conn=1, lgr="g1", link=1, side="rx", len=40, source="snapshot"))
    m.feed(ev(1, "conn.cursor", conn=1, lgr="g1", link=1, side="rx", len=7, source="probe"))
    m.feed(ev(1, "conn.cursor", conn=1, lgr="g1", link=1, side="rx", len=0, source="tracepoint"))
    assert (c.bytes_sent, c.bytes_received) == (100, 40)


def test_a_write_on_a_connection_without_a_link_yet():
    m = Model()
    m.feed(ev(0, "conn.open", conn=1))
    m.feed(ev(1, "rdma.write", "h", "g", 2, 1, length=9))
    c = m.conns[("h", 1)]
    assert (c.link, c.lgr, c.bytes_sent) == (2, "g", 9)


def test_handshake_count_in_totals():
    m = Model()
    for i in (1, 2, 3):
        m.feed(ev(0, "conn.open", conn=i))
    m.feed(ev(1, "conn.mode", conn=1, mode="SMCR"))
    m.feed(ev(1, "conn.mode", conn=2, mode="TCP"))
    t = m.totals()
    assert (t["conns"], t["smcr"], t["tcp"], t["handshake"]) == (3, 1, 1, 1)


def test_an_smcd_connection_is_counted_as_smcd_not_as_in_the_handshake():
    """The kernel source on a host with ISM, and captures of such hosts, report SMC-D
    connections: they are decided, not in the handshake."""
    m = Model()
    for i in (1, 2, 3):
        m.feed(ev(0, "conn.open", conn=i))
    m.feed(ev(1, "conn.mode", conn=1, mode="SMCD"))
    m.feed(ev(1, "conn.mode", conn=2, mode="SMCR"))
    t = m.totals()
    assert (t["conns"], t["smcr"], t["smcd"], t["tcp"], t["handshake"]) == (3, 1, 1, 0, 1)
    m.feed(ev(2, "conn.state", conn=1, old="ACTIVE", new="CLOSED"))
    t = m.totals()
    assert (t["conns"], t["smcd"], t["handshake"]) == (2, 0, 1)


def test_rerun_survivors_model():
    assert Model(events_kept=10).rare.maxlen == 50  # the rare events are kept five times longer
    m = Model()
    for host in ("a", "b"):
        m.feed(ev(0, "conn.open", host, conn=1))
        m.feed(ev(0, "conn.mode", host, conn=1, mode="SMCR", rmb_size=100))
    assert m.rmb_usage("a") == (1, 100, 0) and m.rmb_usage("b") == (1, 100, 0)
    c = smc_conn(m, host="a", conn=2)
    m.feed(ev(1, "conn.cursor", "a", "g1", 1, 2, side="tx", len=1, source="tracepoint"))
    assert c.bytes_sent == 1


def test_a_connection_moved_to_an_unknown_link_group_stops_counting_on_its_old_link():
    m = Model()
    m.advance(0.0)
    c = smc_conn(m, lgr="g", link=1)
    m.feed(ev(0.1, "link.event", "h", "g", 1, event="added"))
    m.feed(ev(0.1, "link.state", "h", "g", 1, old="LINK_ACTIVATING", new="LINK_ACTIVE"))
    m.feed(ev(0.5, "rdma.write", "h", "g", 1, 1, length=10))
    m.advance(1.0)
    old = m.lgrs[("h", "g")].links[1]
    assert old.bytes == 10 and c.lk is old
    m.feed(ev(1.5, "rdma.write", "h", "g2", 1, 1, length=10))  # now in a link group the model has no link of
    m.advance(2.0)
    assert old.bytes == 10 and c.bytes_sent == 20 and c.lk is None


def test_more_survivors_of_the_sampled_run():
    h = M.History(300, 1)  # longer than 256 samples: counts compared by value
    for i in range(301):
        h.push(i)
    assert len(h.series(0)) == 300 and h.series(0)[0] == 1.0
    m = Model(interval=1.0)
    assert m.watched_log == 400
    m.advance(0.0)
    m.feed(ev(0.5, "cdc.msg", conn=1, dir="rx", seqno=1, prod="0:0", cons="0:0"))
    m.feed(ev(0.6, "cdc.msg", conn=1, dir="rx", seqno=2, prod="0:0", cons="0:0"))
    m.feed(ev(0.7, "cdc.msg", conn=1, dir="tx", seqno=3, prod="0:0", cons="0:0"))
    assert [x[2] for x in m.conns[("h", 1)].log] == ["rx", "rx", "tx"]
    m.advance(1.0)
    m.feed(ev(1.5, "cdc.msg", conn=1, dir="rx", seqno=4, prod="0:0", cons="0:0"))
    # A connection that first moves in the second sample: its history holds exactly its samples.
    m.feed(ev(1.6, "rdma.write", conn=2, length=5))
    m.advance(2.0)
    assert m.perf.series(1) == [3.0, 1.0] and m.totals()["cdc_rate"] == 1.0  # the last sample's rate
    c2 = m.conns[("h", 2)]
    assert c2.hfirst == 2 and c2.hist.n == 1 and c2.hist.series(0) == [5.0]
    m.advance(3.0)
    assert c2.hist.n == 2 and c2.hist.series(0) == [5.0, 0.0]
    # feed_timed counts every event, on both sides of a sample.
    n = Model(interval=1.0)
    n.advance(0.0)
    n.feed_timed([ev(0.2, "stats"), ev(1.5, "stats"), ev(1.7, "stats"), ev(1.8, "stats")])
    assert n.seq == 4 and n.kinds["stats"] == 4
    # Critical link groups are counted once each.
    m.apply_snapshot({"host": "h", "t": 4.5, "lgrs": [{"id": "g", "type": "SINGLE", "crit": True, "links": [{"id": 1, "state": "LINK_ACTIVE"}]}]})
    m.feed(ev(4.6, "stats"))
    assert m.totals()["crit"] == 1


def test_third_pass_survivors():
    m = Model(interval=1.0, closed_keep=2.0)
    m.feed(ev(0, "link.state", "h", "g", 1, old="", new="LINK_ACTIVE"))
    assert m.lgrs[("h", "g")].links[1].qpn == 0
    m.advance(0.0)
    c = smc_conn(m, lgr="g", link=1)
    m.feed(ev(0.5, "cdc.msg", "h", "g", 2, 1, dir="rx", seqno=1, prod="0:0", cons="0:0"))
    assert c.link == 2 and c.lgr == "g"
    # Past 256 samples a connection that moves in each is still counted once a sample.
    for t in range(1, 301):
        m.feed(ev(t - 0.5, "rdma.write", "h", "g", 2, 1, length=10))
        m.advance(float(t))
    assert m.ticks == 300 and c.rate == 10.0 and c.bytes_sent == 3000
    # A connection closed exactly closed_keep seconds ago is forgotten.
    m.feed(ev(300.0, "conn.state", "h", conn=1, old="ACTIVE", new="CLOSED"))
    m.advance(301.0)
    assert ("h", 1) in m.conns
    m.advance(302.0)
    assert ("h", 1) not in m.conns


def test_fourth_pass_survivors():
    assert fields.cursor_delta("3:10", "3:9", 100) == 0
    m = Model(interval=1.0)
    m.feed(ev(0, "lgr.state", "h", "g", old="NONE", new="SINGLE"))
    assert m.lgrs[("h", "g")].conns == 0
    # Changes before the first sample are seen too.
    m.feed(ev(0, "conn.open", conn=1))
    m.take_conn_changes()
    m.feed(ev(0.1, "conn.error", conn=1, reason="x"))
    assert m.take_conn_changes()[0] == {("h", 1)}
    # The first sample's LLC rate counts from zero.
    m.advance(0.0)
    m.feed(ev(0.2, "llc.msg", "h", "g", 1, dir="rx", type="LLC TEST LINK"))
    m.advance(1.0)
    assert m.perf.series(2) == [1.0]
    assert m.percentile([1, 2, 3, 4], 40) == 2 and m.percentile([1, 2, 3, 4, 5], 40) == 3


def test_a_connection_moved_to_an_unknown_link_of_its_group():
    m = Model()
    m.advance(0.0)
    c = smc_conn(m, lgr="g", link=1)
    m.feed(ev(0.1, "link.event", "h", "g", 1, event="added"))
    m.feed(ev(0.5, "rdma.write", "h", "g", 1, 1, length=10))
    m.advance(1.0)
    old = m.lgrs[("h", "g")].links[1]
    assert old.bytes == 10 and c.lk is old
    m.feed(ev(1.5, "rdma.write", "h", "g", 2, 1, length=10))  # link 2: not known to the model
    m.advance(2.0)
    assert old.bytes == 10 and c.lk is None and c.link == 2


def test_writes_that_change_only_the_link_group():
    m = Model()
    m.feed(ev(0, "conn.open", "h", None, 2, 1))
    m.feed(ev(1, "rdma.write", "h", "g", 2, 1, length=1))
    assert m.conns[("h", 1)].lgr == "g"
    m.feed(ev(0, "conn.open", "h", "b", 1, 2))
    m.feed(ev(1, "rdma.write", "h", "a", 1, 2, length=1))
    assert m.conns[("h", 2)].lgr == "a"


def test_two_moves_a_sample_past_256_samples():
    m = Model(interval=1.0)
    m.advance(0.0)
    c = smc_conn(m)
    for t in range(1, 301):
        m.feed(ev(t - 0.5, "rdma.write", "h", "g1", 1, 1, length=10))
        m.feed(ev(t - 0.4, "rdma.write", "h", "g1", 1, 1, length=10))
        m.advance(float(t))
    assert c.rate == 20.0 and m.rate == 20.0


def test_bounds_on_closed_connections_and_pending_fallbacks():
    m = Model(closed_keep=1000.0)
    m.advance(0.0)
    m.feed_many([ev(0.5, "conn.state", conn=i, old="ACTIVE", new="CLOSED") for i in range(2001)])
    m.advance(1.0)
    assert len(m.conns) == 2000 and ("h", 0) not in m.conns  # at most max_closed (2,000) closed ones kept
    n = Model()
    n.feed_many([ev(1.0, "conn.open", conn=i, local=f"10.0.{i // 250}.{i % 250}:1", peer="10.9.9.9:80") for i in range(10_002)])
    n.feed_many([ev(1.0, "conn.fallback", conn=i, reason=NOSMCDEV) for i in range(10_002)])
    assert len(n._fb_pending) == 10_000  # waiting for the other end: the newest 10,000


def test_pruned_links_tell_the_views():
    m = Model(interval=1.0, history=2)
    m.feed(ev(0, "link.event", "h", "g", 1, event="added"))
    m.feed(ev(0, "link.event", "h", "g", 2, event="added"))
    m.feed(ev(0, "link.state", "h", "g", 2, old="", new="LINK_ACTIVE"))
    m.advance(0.0)
    m.advance(1.0)
    m.links_changed = False
    m.advance(3.0)
    assert set(m.lgrs[("h", "g")].links) == {2} and m.links_changed


def test_fifth_pass_survivors():
    m = Model(interval=1.0)
    m.advance(0.0)
    c = smc_conn(m, lgr="g1", link=1)
    m.feed(ev(0.1, "conn.error", conn=1, reason="x"))  # an event without link or group keeps both
    assert (c.link, c.lgr) == (1, "g1")
    m.feed(ev(0.2, "conn.cursor", "h", "g1", 1, 1, side="rx", prod="0:100", peer_rmbe_space=1))
    m.advance(1.0)
    assert c.rate == 100.0
    # A snapshot that says fewer bytes received than events did, while we sent 50: the sample counts the 50.
    m.apply_snapshot({"host": "h", "t": 1.2, "conns": [{"conn": 1, "mode": "SMCR", "lgr": "g1", "link": 1, "bytes_sent": 0, "bytes_received": 0}]})
    m.feed(ev(1.5, "rdma.write", "h", "g1", 1, 1, length=50))
    m.advance(2.0)
    assert c.rate == 50.0


def test_a_new_link_carries_no_connections():
    m = Model()
    m.feed(ev(0, "link.event", "h", "g", 1, event="added", qpn=5))
    link = m.lgrs[("h", "g")].links[1]
    assert (link.conns, link.qpn, link.bytes, link.state) == (0, 5, 0, "LINK_UNUSED")


def test_a_removed_link_group_tells_the_views():
    m = Model(interval=1.0)
    m.feed(ev(0, "lgr.state", "h", "g", old="SINGLE", new="NONE", cause="freed"))
    m.advance(0.0)
    m.links_changed = False
    m.advance(1.0)
    assert ("h", "g") not in m.lgrs and m.links_changed
