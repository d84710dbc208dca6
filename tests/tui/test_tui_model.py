"""The model on its own: events in, a snapshot of what the views show out. No app, no clock."""

from __future__ import annotations

import tracemalloc

from smctop.model import Model
from smctop.synthetic import DIFFPREFIX, PEERDECL, SyntheticStack
from stack.events import Event
from stack.wire.fields import cursor_delta


def fed(conns: int = 3, seconds: int = 4, **kw) -> tuple[Model, SyntheticStack]:
    m, s = Model(), SyntheticStack(conns, **kw)
    m.feed_many(s.setup(0.0))
    m.advance(0.0)
    for t in range(1, seconds + 1):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
    return m, s


def test_cursor_arithmetic_across_wraps():
    size = 1000
    assert cursor_delta("0:900", "1:100", size) == 200
    assert cursor_delta("65535:900", "0:100", size) == 200  # the 16-bit wrap counter wraps too
    assert cursor_delta("3:10", "3:10", size) == 0
    assert cursor_delta("3:10", "2:10", size) == 0  # backwards is not traffic
    assert cursor_delta("0:0", "5:0", 0) == 0


def test_rates_bytes_and_fill_come_from_events():
    m, s = fed(3, seconds=4)
    sender, receiver = m.conns[("alpha", 1)], m.conns[("beta", 1)]
    per_second = s.rate + (1 * 4099) % 8192
    assert sender.bytes_sent == 4 * per_second and sender.rate == per_second
    assert receiver.bytes_received == 4 * per_second and receiver.rate == per_second
    assert receiver.rx_prod == f"{(4 * per_second // s.rmb_size)}:{4 * per_second % s.rmb_size}"
    assert receiver.fill == (1 * 7919 + 4 * 104729) % (s.rmb_size // 2) and 0 < receiver.fill_ratio < 0.5
    assert receiver.hist.series(0)[-4:] == [per_second] * 4
    assert receiver.hist.series(1)[-1] == receiver.fill
    total = sum(s.rate + (i * 4099) % 8192 for i in range(1, 4))
    assert m.rate == total  # each byte once: both ends are watched, what beta received is what alpha sent
    assert m.totals()["smcr"] == 6 and m.totals()["lgrs"] == 2 and m.totals()["crit"] == 0


def test_rates_drop_to_zero_when_traffic_stops():
    m, s = fed(2, seconds=2)
    s.set_traffic(False)
    for t in (3, 4):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
    assert m.conns[("alpha", 1)].rate == 0 and m.rate == 0
    assert m.conns[("alpha", 1)].hist.series(0)[-1] == 0


def test_fallbacks_are_counted_with_reason_and_role_and_ratio():
    m, s = fed(1, seconds=3, fallbacks=2)
    rows = {(r["host"], r["role"], r["text"]): r["count"] for r in m.fallback_rows()}
    assert rows == {("gamma", "server", "0x03070000 DIFFPREFIX"): 6, ("alpha", "client", "0x05000000 PEERDECL"): 6}
    alpha_fb = next(c for c in m.conns.values() if c.host == "alpha" and c.mode == "TCP")
    assert alpha_fb.reason == PEERDECL and alpha_fb.peer_diagnosis == DIFFPREFIX
    assert m.totals()["fallback_ratio"] == 12 / 14
    s.set_decline(0x03030000)
    m.feed_many(s.step(4.0))
    assert any(r["text"] == "0x03030000 NOSMCDEV" and r["count"] == 2 for r in m.fallback_rows())


def test_failover_changes_types_links_and_moves_traffic():
    m, s = fed(3, seconds=2)
    m.feed_many(s.fail_link(2.5))
    m.feed_many(s.step(3.0))
    m.advance(3.01)
    g = m.lgrs[("beta", "00b2b200")]
    assert g.type == "SINGLE" and g.crit
    assert g.links[1].state == "LINK_UNUSED" and g.links[2].state == "LINK_ACTIVE"
    assert [(f.host, f.from_link, f.to_link, f.conns, f.duration_ms) for f in m.failovers] == [("beta", 1, 2, 3, 4.0), ("alpha", 1, 2, 3, 4.0)]
    assert m.conns[("alpha", 1)].link == 2 and m.lgrs[("alpha", "00a1a100")].links[2].rate > 0
    m.feed_many(s.restore_link(3.5))
    m.advance(4.01)
    assert g.type == "SYM" and not g.crit and g.links[3].state == "LINK_ACTIVE"


def test_snapshot_fills_in_what_events_do_not_say():
    m = Model()
    snap = {"host": "h", "t": 10.0, "stats": {"smc_client": 1}, "devices": [{"name": "127.1.0.1", "up": True}],
            "fallbacks": [{"role": "client", "reason": DIFFPREFIX, "count": 7}],
            "lgrs": [{"id": "00aa0000", "role": "client", "type": "SINGLE", "crit": True, "conns": 1, "version": 2, "peer_host": "p",
                      "links": [{"id": 1, "state": "LINK_ACTIVE", "device": "127.1.0.1", "qpn": 0x111, "peer_qpn": 0x211,
                                 "gid": "::ffff:127.1.0.1", "peer_gid": "::ffff:127.1.0.2", "asym": False, "conns": 1}]}],
            "conns": [{"conn": 5, "state": "ACTIVE", "mode": "SMCR", "role": "client", "local": "a:1", "peer": "b:2", "version": 2,
                       "fallback_reason": 0, "peer_diagnosis": 0, "token": 1, "rmb_size": 65536, "peer_rmb_size": 65536,
                       "rx_prod": "1:0", "rx_cons": "1:0", "tx_prod": "2:5", "tx_cons": "1:0", "tx_sent": "2:5", "tx_fin": "2:5",
                       "bytes_to_rcv": 0, "write_blocked": False, "bytes_sent": 1000, "bytes_received": 500, "lgr": "00aa0000", "link": 1}]}  # fmt: skip
    m.apply_snapshot(snap)
    c = m.conns[("h", 5)]
    assert (c.bytes_sent, c.bytes_received, c.tx_prod, c.txc, c.lgr) == (1000, 500, "2:5", 5, "00aa0000")
    link = m.lgrs[("h", "00aa0000")].links[1]
    assert (link.qpn, link.peer_gid, link.state) == (0x111, "::ffff:127.1.0.2", "LINK_ACTIVE")
    assert m.fallback_rows()[0]["count"] == 7 and m.fallback_rows()[0]["text"] == "0x03070000 DIFFPREFIX"
    # events after the snapshot add to its byte counts
    m.feed(Event(10.5, "rdma.write", "h", "00aa0000", 1, 5, {"offset": 0, "length": 24, "rkey": 1}))
    assert c.bytes_sent == 1024
    # the next snapshot without the connection: it closed
    m.apply_snapshot({**snap, "t": 11.0, "conns": []})
    assert c.closed == 11.0 and c.state == "CLOSED"


def test_closed_connections_are_forgotten_and_views_are_told():
    m, s = fed(1, seconds=1, fallbacks=1)
    m.take_conn_changes()
    closed = [k for k, c in m.conns.items() if c.closed is not None]
    assert closed
    for t in range(2, 10):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
    changed, removed = m.take_conn_changes()
    assert set(closed) <= removed and not (set(closed) & set(m.conns))
    assert ("alpha", 1) in changed  # still moving


def test_changes_are_incremental():
    m, s = fed(5, seconds=1)
    m.take_conn_changes()
    s.set_traffic(False)
    s.fallbacks = 0
    m.feed(Event(1.5, "conn.rmb", "beta", "00b2b200", 1, 3, {"fill": 10, "size": s.rmb_size}))
    changed, removed = m.take_conn_changes()
    assert changed == {("beta", 3)} and not removed
    assert m.take_conn_changes() == (set(), set())


def test_events_since_and_the_recent_event_log_is_bounded():
    m = Model(events_kept=100)
    for i in range(1000):
        m.feed(Event(float(i), "stats", "h"))
    assert m.seq == 1000 and len(m.events) <= 200
    assert [e.t for e in m.events_since(995)] == [995.0, 996.0, 997.0, 998.0, 999.0]
    assert m.events_since(1000) == []


def test_memory_is_bounded_under_connection_churn():
    """Thousands of short connections come and go: what the model holds stops growing."""
    m, s = Model(events_kept=2000), SyntheticStack(10, fallbacks=50)  # the event log fills in a few seconds
    m.feed_many(s.setup(0.0))
    m.advance(0.0)
    tracemalloc.start()
    sizes = []
    for t in range(1, 121):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
        if t in (30, 120):
            sizes.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    assert len(m.conns) <= 20 + 2 * 50 * (m.closed_keep + 1)
    assert sizes[1] < sizes[0] * 1.15, sizes  # 4x the time, 6,000 more connections: the same memory


def test_advance_closes_one_sample_per_interval():
    m = Model(interval=1.0)
    assert m.advance(100.0) == 0
    assert m.advance(100.5) == 0
    assert m.advance(103.2) == 3 and m.ticks == 3
    assert m.advance(10_000.0) == 1  # a long gap (a seek): one sample, not thousands


def _state(m: Model) -> dict:
    """What the views can read of a model, as plain values."""
    conns = {k: (c.state, c.mode, c.bytes_sent, c.bytes_received, c.rate, c.fill, c.rx_prod, c.tx_prod, c.closed, list(c.log),
                 [c.hist.series(i) for i in range(4)] if c.hist else None) for k, c in m.conns.items()}  # fmt: skip
    links = {k: [(link.id, link.state, link.bytes, link.rate, link.hist.values()) for link in g.links.values()] for k, g in m.lgrs.items()}
    return {"conns": conns, "links": links, "totals": m.totals(), "kinds": dict(m.kinds), "seq": m.seq,
            "events": [id(e) for e in m.events[-m.events_kept :]], "perf": [m.perf.series(i) for i in range(6)],
            "fallbacks": m.fallback_rows()}  # fmt: skip


def test_batch_feeding_is_feeding_one_by_one():
    """feed_many and feed_timed (one pass over a poll's events) leave the model as feed() does."""
    s = SyntheticStack(4, fallbacks=3)
    seconds = [s.setup(0.0)] + [s.step(float(t)) for t in range(1, 6)]
    seconds[3] += s.fail_link(3.2)
    seconds[5] += s.restore_link(5.3)
    one, many, timed = Model(events_kept=50), Model(events_kept=50), Model(events_kept=50)
    for t, events in enumerate(seconds):
        for e in events:
            if one.next_tick is None or e.t >= one.next_tick:
                one.advance(e.t)
            one.feed(e)
        timed.feed_timed(events)
        many.advance(float(t))
        many.feed_many(events)
    for m in (one, many, timed):
        m.advance(6.5)
    assert _state(one) == _state(timed) == _state(many)


def test_open_connection_counts_follow_modes_closes_and_snapshots():
    """The header's counts are kept as connections change, not recounted: they agree with a recount."""
    m, s = fed(3, seconds=3, fallbacks=4)
    snap = {"host": "h", "t": 3.5, "conns": [{"conn": 1, "mode": "SMCR", "state": "ACTIVE"}, {"conn": 2, "mode": "TCP", "state": "ACTIVE"},
                                             {"conn": 3, "state": "INIT"}]}  # fmt: skip
    m.apply_snapshot(snap)
    m.apply_snapshot({**snap, "t": 3.6, "conns": [{"conn": 1, "mode": "TCP"}, {"conn": 3, "mode": "SMCR"}]})  # 2 closed, 1 fell back late
    assert m.conns[("h", 2)].closed == 3.6
    for t in range(4, 12):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
        open_ = [c for c in m.conns.values() if c.closed is None]
        t_ = m.totals()
        assert (t_["conns"], t_["smcr"], t_["tcp"]) == (len(open_), sum(c.mode == "SMCR" for c in open_), sum(c.mode == "TCP" for c in open_))
    assert ("h", 2) not in m.conns and t_["smcr"] == 7 and t_["tcp"] == 1


def test_an_idle_connection_history_shows_its_idle_seconds():
    """Each sample is a second: a connection that stops shows rate 0 and its last fill for the
    seconds it sat still, and picks up again when it moves."""
    m, s = fed(2, seconds=3)
    s.set_traffic(False)
    for t in (4, 5, 6):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
    s.set_traffic(True)
    m.feed_many(s.step(7.0))
    m.advance(7.01)
    r = m.conns[("beta", 2)]
    per_second = s.rate + (2 * 4099) % 8192
    rates = r.hist.series(0)
    fills = r.hist.series(1)
    assert rates[-5:] == [per_second, 0, 0, 0, per_second] and r.rate == per_second
    assert fills[-4:-1] == [fills[-5]] * 3 and fills[-1] == r.fill
    assert r.hist.n == 7 and len(rates) == 7


def test_a_forgotten_connection_slot_is_reused_without_its_history():
    m, s = fed(1, seconds=2, fallbacks=2)
    gone = [c for c in m.conns.values() if c.closed is not None]
    for t in range(3, 12):
        m.feed_many(s.step(float(t)))
        m.advance(t + 0.01)
    assert all(c.slot == -1 and c.key not in m.conns for c in gone)
    slots = [c.slot for c in m.conns.values()]
    assert len(set(slots)) == len(slots) and max(slots) < 2 + 4 * 10  # slots are reused, none shared
    young = max(m.conns.values(), key=lambda c: c.opened)
    assert young.hist.n == 1 and young.hist.series(0) == [0.0]  # a fallback connection: one sample, no bytes


def test_a_handshake_counts_once_per_connection_when_both_ends_are_watched():
    """The Perf view's handshake n= counted both ends of one connection (n=210 for 105
    connections): with both ends watched it counts the client's view, once."""
    m = Model()
    for host, role, local, peer in (("a", "client", "10.0.0.1:4000", "10.0.0.2:5000"), ("b", "server", "10.0.0.2:5000", "10.0.0.1:4000")):
        m.feed(Event(1.0, "conn.open", host, conn=1, fields={"role": role, "local": local, "peer": peer}))
    for host, ms in (("b", 2.0), ("a", 3.0)):  # the server says it first
        m.feed(Event(1.1, "conn.mode", host, "g", 1, 1, {"mode": "SMCR", "version": 2, "handshake_ms": ms}))
    assert list(m.handshakes) == [3.0]
    # a connection of which only one end is watched counts once too
    m.feed(Event(2.0, "conn.open", "b", conn=2, fields={"role": "server", "local": "10.0.0.2:5000", "peer": "10.0.0.9:4000"}))
    m.feed(Event(2.1, "conn.mode", "b", "g", 1, 2, {"mode": "SMCR", "version": 2, "handshake_ms": 4.0}))
    assert list(m.handshakes) == [3.0, 4.0]


def test_a_link_group_deleted_with_all_its_links_ends_and_a_late_message_does_not_bring_it_back():
    m = Model(history=2)
    m.feed(Event(1.0, "llc.msg", "h", "g1", 1, fields={"dir": "tx", "type": "LLC CONFIRM LINK v2"}))
    m.feed(Event(1.0, "link.state", "h", "g1", 1, fields={"old": "LINK_UNUSED", "new": "LINK_ACTIVE"}))
    m.feed(Event(2.0, "link.event", "h", "g1", fields={"event": "deleted", "all": True}))  # no link number: every link
    g = m.lgrs[("h", "g1")]
    assert g.terminated and g.links[1].state == "LINK_UNUSED" and m.totals()["lgrs"] == 0
    m.advance(2.0)
    m.advance(10.0)  # the ended group leaves the model
    assert ("h", "g1") not in m.lgrs
    m.feed(Event(10.1, "llc.msg", "h", "g1", 1, fields={"dir": "tx", "type": "LLC CONFIRM RKEY v2"}))
    m.feed(Event(10.1, "link.event", "h", "g1", 2, fields={"event": "deleted", "all": False}))
    assert ("h", "g1") not in m.lgrs
    m.feed(Event(11.0, "llc.msg", "h", "g1", 1, fields={"dir": "tx", "type": "LLC CONFIRM LINK v2"}))  # a new group of that id
    assert ("h", "g1") in m.lgrs and not m.lgrs[("h", "g1")].terminated
