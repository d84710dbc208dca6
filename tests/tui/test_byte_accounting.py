"""Headline numbers that add up (issue 17 item 3): on one real run of two smc-traffic
processes over the soft provider, with both ends' events recorded, smctop's model counts every
byte once (not once per watched end), and its total equals smc-trace summary's and what
smc-traffic itself says it moved; a fallen-back connection counts once with both ends' view."""

from __future__ import annotations

from support.stacks import TrafficServer, addrs, traffic_client

from dissectors.summary import render, summarize
from smctop.model import Model
from stack.events import read_jsonl


def _events(*paths):
    evs = []
    for p in paths:
        evs.extend(read_jsonl(p.read_text().splitlines()))
    evs.sort(key=lambda e: e.t)  # both processes read one monotonic clock
    return evs


def _model(events) -> Model:
    m = Model()
    m.feed_timed(events)
    m.advance(events[-1].t + 2 * m.interval)  # close the last samples
    return m


def test_smctop_summary_and_smc_traffic_count_the_same_bytes(tmp_path):
    ca, sa = addrs()
    sev, cev = tmp_path / "server.jsonl", tmp_path / "client.jsonl"
    server = TrafficServer(sa, "--count", "1", "--events", str(sev))
    rc, rep, err = traffic_client(sa, ca, "--mode", "bulk", "--bytes", "3M", "--direction", "both", "--events", str(cev))
    srep = server.report()
    assert rc == 0, err
    assert rep["modes"] == {"SMCR": 1}, rep
    moved = rep["bytes_sent"] + rep["bytes_received"]  # smc-traffic's own count, the client's both directions
    assert moved == srep["bytes_sent"] + srep["bytes_received"] and moved >= 6 * 2**20

    events = _events(sev, cev)
    s = summarize(events)
    wire = sum(c.bytes_written for c in s.conns.values())  # what went over SMC-R: the payload and smc-traffic's own
    assert 0 <= wire - moved <= 2048, (wire, moved)  # few protocol bytes (its request and reports), which it does not count
    m = _model(events)
    assert m.bytes == wire, (m.bytes, wire, moved)  # each byte once, though both ends are watched (not 2x)
    ends = [c for c in m.conns.values() if c.mode == "SMCR"]
    assert len(ends) == 2 and ends[0].peer_end is ends[1]
    assert sum(c.bytes_sent for c in ends) == wire == sum(c.bytes_received for c in ends)  # each end saw its own share
    text = render(s)
    assert f"Moved: {wire:,} bytes" in text and "MB/s" in text and "Mb/s" not in text

    one = _model(_events(cev))  # one end watched: what it received counts too, so the total is the same
    assert one.bytes == wire
    for end in (cev, sev):  # and smc-trace summary of one end's recording says so too (it counted what the end sent)
        alone = summarize(_events(end))
        assert alone.moved == wire, (end.name, alone.moved, wire)
        assert f"Moved: {wire:,} bytes" in render(alone)
        (c,) = [c for c in alone.conns.values() if c.mode == "SMCR"]
        assert c.moved + c.received == wire and c.moved > 2**20 and c.received > 2**20  # both directions, each counted


def test_a_fallback_counts_once_with_both_ends_view(tmp_path):
    ca, sa = addrs()
    sev, cev = tmp_path / "server.jsonl", tmp_path / "client.jsonl"
    server = TrafficServer(sa, "--count", "1", "--decline", "DIFFPREFIX", "--events", str(sev))
    rc, rep, err = traffic_client(sa, ca, "--mode", "bulk", "--bytes", "64K", "--events", str(cev))
    server.report()
    assert rc == 0, err
    m = _model(_events(sev, cev))
    rows = m.fallback_cause_rows()
    assert len(rows) == 1 and rows[0]["count"] == 1, rows
    assert rows[0]["text"] == "0x03070000 DIFFPREFIX" and rows[0]["by"].endswith("(server)")
    assert "(client): 0x05000000 PEERDECL" in rows[0]["view"]
    assert m.totals()["fallback_conns"] == 1 and m.totals()["fallbacks"] == 2  # one connection, two ends


def test_failovers_count_only_when_connections_moved_in_smctop_and_summary():
    """A DELETE LINK that moved nothing (NO_ASYM_NEEDED, 0.0 ms) is a link deletion, not a
    failover, in smctop's header and percentiles and in smc-trace summary alike."""
    from stack.events import Event

    evs = [Event(1.0, "link.event", "b", "g1", 1, fields={"event": "failover_begin", "to_link": 2, "conns": 3}),
           Event(1.004, "link.event", "b", "g1", 1, fields={"event": "failover_end", "to_link": 2, "conns": 3, "failed": 0, "duration_ms": 4.0}),
           Event(2.0, "link.event", "b", "g1", 2, fields={"event": "failover_end", "to_link": 3, "conns": 0, "failed": 0, "duration_ms": 0.0})]  # fmt: skip
    m = _model(evs)
    assert m.totals()["failovers"] == 1 and m.totals()["link_deletions"] == 1
    text = render(summarize(evs))
    assert "b g1 link 1 -> 2: 3 connections, 0 failed, 4.0 ms" in text and "link 2 -> 3" not in text
    assert "Link deletions that moved no connection: b g1 link 2" in text
    one = [Event(3.0, "link.event", "c", "g2", 1, fields={"event": "failover_end", "to_link": 2, "conns": 1, "failed": 0, "duration_ms": 1.5})]
    assert "c g2 link 1 -> 2: 1 connection, 0 failed, 1.5 ms" in render(summarize(one))


def test_a_failover_watched_at_both_ends_counts_once():
    """beta's port goes down: beta and alpha each move their ends of the connections off link
    1 (each emits failover_begin/end). The Performance view's n= and the header counted 2 for
    one failover; now 1, at the end that began it (beta), as handshakes count once a
    connection. The links view still lists each end's line."""
    from tuihelp import SIZE, advance, make_app, run

    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("f")
            await pilot.pause()
            await advance(app, pilot, src, 2)
            m = app.model
            moved = [fo for fo in m.failovers if fo.conns]
            assert sorted(fo.host for fo in moved) == ["alpha", "beta"]  # both ends watched
            assert [fo.host for fo in moved if m.failover_counted(fo)] == ["beta"]
            assert m.totals()["failovers"] == 1
            await pilot.press("5")
            await pilot.pause()
            text = app.screen_text()
            assert "failovers 1 " in text.splitlines()[1] + " "
            line = next(row for row in text.splitlines() if row.strip().startswith("Failover (link down"))
            assert line.rstrip().endswith("(n=1)"), line

    run(go())


def test_a_failover_counts_at_the_end_that_began_it_whatever_order_its_hosts_events_came():
    """The demo feeds each host's events in turn: alpha's failover (begun on beta's DELETE
    LINK, 4 ms later) could come first and be the one counted, with its 8 ms, instead of
    beta's, which began at the port going down."""
    from stack.events import Event

    m = Model()
    for host, local, peer, role in (("alpha", "10.0.0.1:4000", "10.0.0.2:5000", "client"), ("beta", "10.0.0.2:5000", "10.0.0.1:4000", "server")):
        lgr = "ga" if host == "alpha" else "gb"
        m.feed(Event(1.0, "conn.open", host, lgr, 1, 7, fields={"role": role, "local": local, "peer": peer}))
        m.feed(Event(1.1, "conn.mode", host, lgr, 1, 7, fields={"mode": "SMCR", "version": 2}))
    fo = lambda t, host, lgr, ev, **f: Event(t, "link.event", host, lgr, 1, fields={"event": ev, "to_link": 2, "conns": 1, **f})  # noqa: E731
    for e in (fo(5.004, "alpha", "ga", "failover_begin"), fo(5.012, "alpha", "ga", "failover_end", failed=0, duration_ms=8.0),
              fo(5.000, "beta", "gb", "failover_begin"), fo(5.002, "beta", "gb", "failover_end", failed=0, duration_ms=2.0)):  # fmt: skip
        m.feed(e)
    counted = [f for f in m.failovers if f.conns and m.failover_counted(f)]
    assert [(f.host, f.duration_ms) for f in counted] == [("beta", 2.0)] and m.totals()["failovers"] == 1


def test_a_failovers_second_copies_count_once_in_smctop():
    """The WRITEs after a failover's cursor event (``rewound``: what the old link may have
    lost, sent again) re-cover bytes already counted; a snapshot's count, which the stack
    already took them back from, ends what is owed."""
    from stack.events import Event

    def write(t, n, **more):
        return Event(t, "rdma.write", "a", "g", 2, 1, {"vaddr": 0, "rkey": 5, "length": n, **more})

    m = Model()
    m.feed(Event(1.0, "conn.open", "a", "g", 1, 1, {"role": "client", "local": "10.0.0.1:1", "peer": "10.0.0.2:2"}))
    m.feed(Event(1.1, "rdma.write", "a", "g", 1, 1, {"vaddr": 0, "rkey": 4, "length": 30_000}))
    m.feed(Event(1.2, "conn.cursor", "a", "g", 2, 1, {"side": "tx", "cause": "failover", "rewound": 20_000, "prod": "0:10000"}))
    m.feed(write(1.3, 15_000))
    m.feed(write(1.4, 10_000, coalesced=2))  # a sample of two WRITEs: 5,000 of them again, 5,000 new
    c = m.conns[("a", 1)]
    assert c.ev_tx == 35_000
    m.feed(Event(1.5, "conn.cursor", "a", "g", 2, 1, {"side": "tx", "cause": "failover", "rewound": 8_000, "prod": "0:27000"}))
    m.apply_snapshot({"host": "a", "t": 1.6, "conns": [{"conn": 1, "state": "ACTIVE", "lgr": "g", "link": 2, "bytes_sent": 26_000}]})
    m.feed(write(1.7, 8_000))
    assert c.ev_tx == 34_000  # the snapshot's 26,000 (it took back the 8,000 and wrote 7,000 again) and what came after it


def test_sent_follows_the_producer_cursor_where_writes_are_missing_in_any_order():
    """smctop's Sent is the larger of two counts of one thing: the RDMA WRITEs seen and how far
    the producer cursor went (past its wraps, never counting a failover's rewind twice), so
    WRITEs lost from a capture still count, and a cursor that arrives before its WRITE (a
    sample gives both) does not count the bytes twice."""
    from stack.events import Event

    size = 65_536

    def cdc(t, prod, flags=()):
        return Event(t, "cdc.msg", "a", "g", 1, 1, {"dir": "tx", "seqno": int(t * 10), "prod": prod, "cons": "0:0", "flags": list(flags)})

    def write(t, n):
        return Event(t, "rdma.write", "a", "g", 1, 1, {"offset": 0, "rkey": 5, "length": n})

    m = Model()
    m.feed(Event(1.0, "conn.open", "a", "g", 1, 1, {"role": "client", "local": "10.0.0.1:1", "peer": "10.0.0.2:2"}))
    m.feed(Event(1.0, "conn.mode", "a", "g", 1, 1, {"mode": "SMCR", "version": 2, "rmb_size": size, "peer_rmb_size": size}))
    c = m.conns[("a", 1)]
    m.feed(write(1.1, 40_000))
    m.feed(cdc(1.1, "0:40000"))
    assert c.ev_tx == 40_000  # both counts agree: once
    m.feed(cdc(1.2, "1:14464"))  # a WRITE of 40,000 the capture lost: the cursor went round the RMB
    assert c.ev_tx == 80_000
    m.feed(Event(1.3, "conn.cursor", "a", "g", 1, 1, {"side": "tx", "prod": "1:54464", "cons": "0:0"}))  # the cursor first
    m.feed(write(1.3, 40_000))  # then its WRITE
    assert c.ev_tx == 120_000
    m.feed(cdc(1.4, "0:0", ["failover_validation"]))  # a validation CDC carries no cursor
    assert c.ev_tx == 120_000
    m.feed(Event(1.5, "conn.cursor", "a", "g", 2, 1, {"side": "tx", "cause": "failover", "rewound": 20_000, "prod": "1:34464"}))
    m.feed(write(1.6, 20_000))  # written again
    m.feed(cdc(1.6, "1:54464"))
    assert c.ev_tx == 120_000
    m.feed(cdc(1.7, "3:0"))  # 11,072 + a whole turn of new bytes, the WRITEs lost
    assert c.ev_tx == 120_000 + 11_072 + size
    for k in range(40):  # many turns: the 16-bit wrap counter rolls over
        m.feed(cdc(2.0 + k / 100, f"{(3 + 2000 * (k + 1)) & 0xFFFF}:0"))
    assert c.ev_tx == 120_000 + 11_072 + size + 40 * 2000 * size
