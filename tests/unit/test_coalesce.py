"""The data path's events coalesced for a subscriber that asked (stack/runtime/coalesce.py)."""

from __future__ import annotations

from stack.events import Event, check_event
from stack.runtime.coalesce import Coalescer


def ev(t, kind, conn=1, **fields) -> Event:
    return Event(t, kind, "h", "00000100", 1, conn, fields)


def test_per_connection_the_last_of_each_sort_with_how_many_it_stands_for() -> None:
    c = Coalescer(0.1)
    got = []
    for i in range(10):
        got += c.add([ev(0.001 * i, "rdma.write", length=100 + i, offset=i), ev(0.001 * i, "cdc.msg", dir="tx", seqno=i, prod=f"0:{i}", cons="0:0"),
                      ev(0.001 * i, "conn.cursor", side="tx", prod=f"0:{i}")], now=0.001 * i)  # fmt: skip
        got += c.add([ev(0.001 * i, "rdma.write", conn=2, length=7)], now=0.001 * i)
    assert got == [] and c.held == 4  # nothing before the interval ends
    out = c.flush()
    by = {(e.kind, e.conn): e for e in out}
    assert len(out) == 4
    w = by[("rdma.write", 1)]
    assert w.fields["length"] == sum(100 + i for i in range(10)) and w.fields["coalesced"] == 10 and w.fields["offset"] == 9
    assert by[("rdma.write", 2)].fields == {"length": 70, "coalesced": 10}
    assert by[("cdc.msg", 1)].fields["seqno"] == 9 and by[("cdc.msg", 1)].fields["coalesced"] == 10
    assert by[("conn.cursor", 1)].fields == {"side": "tx", "prod": "0:9", "coalesced": 10}
    assert [e.t for e in out] == sorted(e.t for e in out)
    for e in out:
        assert check_event(e) is None, e  # coalesced events are events of the schema


def test_the_bus_event_is_not_changed_and_a_single_one_goes_as_it_was() -> None:
    c = Coalescer(0.1)
    a, b = ev(0.0, "rdma.write", length=5), ev(0.01, "rdma.write", length=6)
    c.add([a, b], now=0.0)
    (merged,) = c.flush()
    assert a.fields == {"length": 5} and b.fields == {"length": 6}  # other listeners share them
    assert merged.fields == {"length": 11, "coalesced": 2}
    one = ev(1.0, "conn.rmb", fill=3)
    c.add([one], now=1.0)
    assert c.flush() == [one] and "coalesced" not in one.fields


def test_anything_else_goes_at_once_after_what_was_held() -> None:
    c = Coalescer(10.0)
    held = [ev(0.0, "conn.cursor", side="rx", prod="0:5", peer_rmbe_space=9), ev(0.1, "conn.cursor", side="rx", prod="0:8", peer_rmbe_space=9)]
    state = ev(0.2, "conn.state", old="ACTIVE", new="PEERCLOSEWAIT1")
    out = c.add([*held, state, ev(0.3, "conn.cursor", side="rx", prod="0:9", peer_rmbe_space=9)], now=0.3)
    assert [e.kind for e in out] == ["conn.cursor", "conn.state"] and out[0].fields["prod"] == "0:8" and out[0].fields["coalesced"] == 2
    assert c.held == 1


def test_events_that_mark_something_are_never_folded_into_others() -> None:
    c = Coalescer(10.0)
    marked = [
        ev(0.0, "cdc.msg", dir="rx", seqno=1, flags=["peer_conn_closed"]),
        ev(0.1, "conn.cursor", side="tx", prod="0:1", cause="failover", rewound=100),
    ]
    plain = ev(0.05, "cdc.msg", dir="rx", seqno=2)
    out = c.add([plain, marked[0], marked[1]], now=0.2)
    assert out == [plain, marked[0], marked[1]]  # the held plain one first, then each marked one as it was


def test_the_two_cursor_moves_of_a_receiver_are_kept_apart() -> None:
    # a CDC's arrival moves the peer's producer; the application's read moves our consumer
    c = Coalescer(1.0)
    c.add([ev(0.0, "conn.cursor", side="rx", prod="0:10", peer_rmbe_space=1), ev(0.1, "conn.cursor", side="rx", cons="0:10"),
           ev(0.2, "conn.cursor", side="rx", prod="0:20", peer_rmbe_space=1)], now=0.2)  # fmt: skip
    out = c.flush()
    assert [(e.fields.get("prod"), e.fields.get("cons"), e.fields.get("coalesced")) for e in out] == [(None, "0:10", None), ("0:20", None, 2)]


def test_what_is_held_goes_when_the_interval_ends() -> None:
    c = Coalescer(0.1)
    assert c.add([ev(0.0, "rdma.write", length=1)], now=0.0) == []
    assert c.deadline == 0.1
    out = c.add([ev(0.11, "rdma.write", length=2)], now=0.11)
    assert [e.fields for e in out] == [{"length": 3, "coalesced": 2}] and c.deadline is None and c.held == 0


def test_flow_control_flags_come_and_go_with_the_data_and_are_coalesced() -> None:
    # a bulk sender into a small RMB sets write_blocked on nearly every CDC: passing each one
    # (and flushing before it) would coalesce nothing
    c = Coalescer(1.0)
    blocked = [ev(0.01 * i, "cdc.msg", dir="rx", seqno=i, flags=["write_blocked"] if i % 2 else ["cons_curs_upd_req"]) for i in range(10)]
    assert c.add(blocked, now=0.1) == []
    (last,) = c.flush()
    assert last.fields["seqno"] == 9 and last.fields["coalesced"] == 10
    urgent = ev(2.0, "cdc.msg", dir="rx", seqno=11, flags=["write_blocked", "urg_data_present"])
    assert c.add([urgent], now=2.0) == [urgent]
