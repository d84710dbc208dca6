"""The data path sampled for a subscriber that asked for it (stack/runtime/coalesce.py) and
the bus that builds no data-path event for such a subscriber (stack/events.py)."""

from __future__ import annotations

from types import SimpleNamespace

from stack.events import Event, EventBus, check_event, marks_something
from stack.runtime.coalesce import Sampler
from stack.wire.cdc import Cursor


def conn(**kw) -> SimpleNamespace:
    c = SimpleNamespace(
        id=1, ctx=SimpleNamespace(name="h"), lgr=SimpleNamespace(name="00000100"), link=SimpleNamespace(link_id=1),
        rdma_writes=0, bytes_sent=0, cdc_sent=0, cdc_received=0, bytes_received=0, tx_seq=0, rx_seq=0, token=0x10, peer_token=0x20,
        tx_prod=Cursor(0, 0), tx_sent=Cursor(0, 0), tx_fin=Cursor(0, 0), cons_confirmed=Cursor(0, 0), cons=Cursor(0, 0),
        rx_prod=Cursor(0, 0), rx_cons=Cursor(0, 0), bytes_to_rcv=0, peer_rmbe_space=1000, rmb_size=1000, write_blocked=False,
        peer_write_blocked=False, rx_moves=0, reads=0, rmb_blocked=0,
    )  # fmt: skip
    c.__dict__.update(kw)
    return c


def send(c, n: int, writes: int = 1) -> None:
    """What the data path does when it writes n bytes and announces them."""
    c.rdma_writes += writes
    c.bytes_sent += n
    c.tx_prod = Cursor(0, c.tx_prod.count + n)
    c.tx_sent = c.tx_prod
    c.cdc_sent += 1
    c.tx_seq += 1


def test_a_sample_tells_what_the_connection_did_since_the_last_one() -> None:
    s, c = Sampler(0.1), conn()
    for _ in range(10):
        send(c, 64)
        s.touched[c.id] = c
    c.cdc_received, c.rx_seq, c.rx_prod, c.bytes_to_rcv, c.rx_moves = 10, 10, Cursor(0, 640), 640, 10
    by = {(e.kind, e.fields.get("dir") or e.fields.get("side")): e for e in s.sample(5.0)}
    assert by[("rdma.write", None)].fields == {"length": 640, "coalesced": 10}
    assert by[("cdc.msg", "tx")].fields == {"dir": "tx", "seqno": 10, "token": 0x20, "prod": "0:640", "cons": "0:0", "coalesced": 10}
    assert by[("cdc.msg", "rx")].fields["seqno"] == 10 and by[("cdc.msg", "rx")].fields["coalesced"] == 10
    assert by[("conn.cursor", "rx")].fields["prod"] == "0:640" and by[("conn.cursor", "rx")].fields["peer_rmbe_space"] == 1000
    # each stands for as many as the connection's counters say were emitted: a cursor move and an RMB event per CDC that moved one
    assert by[("conn.cursor", "rx")].fields["coalesced"] == by[("conn.rmb", None)].fields["coalesced"] == by[("conn.cursor", "tx")].fields["coalesced"] == 10
    for e in by.values():
        assert e.t == 5.0 and (e.host, e.lgr, e.link, e.conn) == ("h", "00000100", 1, 1)
        assert check_event(e) is None, e  # sampled events are events of the schema
    assert s.touched == {}
    send(c, 100)
    s.touched[c.id] = c
    (w, cdc, cur) = s.sample(6.0)
    assert w.fields == {"length": 100} and cdc.fields["seqno"] == 11 and "coalesced" not in cdc.fields  # one of each: as it was
    assert s.sample(7.0) == []  # nothing moved, nothing told


def test_the_applications_read_is_its_own_cursor_move() -> None:
    s, c = Sampler(0.1), conn(cdc_received=1, rx_seq=1, rx_prod=Cursor(0, 64), bytes_to_rcv=64, rx_moves=1)
    s.touched[c.id] = c
    assert {e.kind for e in s.sample(1.0)} == {"cdc.msg", "conn.cursor", "conn.rmb"}  # the CDC's arrival
    c.bytes_received, c.cons, c.bytes_to_rcv, c.reads = 64, Cursor(0, 64), 0, 1
    s.touched[c.id] = c
    (e,) = s.sample(2.0)
    assert e.fields == {"side": "rx", "cons": "0:64", "prod": "0:64", "bytes_to_rcv": 0}
    c.bytes_received, c.cons, c.reads = 96, Cursor(0, 96), 3  # two reads of 16 bytes
    s.touched[c.id] = c
    (e,) = s.sample(3.0)
    assert e.fields["coalesced"] == 2


def test_a_cdc_that_went_as_an_event_is_not_counted_again() -> None:
    s, c = Sampler(0.1), conn()
    for _ in range(3):
        send(c, 10)
    send(c, 0)  # the closing CDC: an event of its own, sent before the sample
    s.passed(1, "tx")
    s.touched[c.id] = c
    cdc = {(e.kind, e.fields.get("dir")): e for e in s.sample(1.0)}[("cdc.msg", "tx")]
    assert cdc.fields["coalesced"] == 3
    send(c, 5)
    s.touched[c.id] = c
    assert {(e.kind, e.fields.get("dir")): e for e in s.sample(2.0)}[("cdc.msg", "tx")].fields.get("coalesced") is None  # just the one
    s.forget(1)
    assert s.sample(3.0) == [] and s._last == {} and s._passed == {}


def test_a_closing_cdc_that_went_as_an_event_still_has_its_bytes_told() -> None:
    # the peer's last bytes and its close in one CDC: the CDC is an event of its own (not
    # counted again), the producer cursor it moved is still sampled (readers count bytes from it)
    s, c = Sampler(0.1), conn(cdc_received=1, rx_seq=1, rx_prod=Cursor(0, 700), bytes_to_rcv=700, rx_moves=1)
    s.passed(1, "rx")
    s.touched[c.id] = c
    out = {(e.kind, e.fields.get("dir") or e.fields.get("side")): e for e in s.sample(1.0)}
    assert ("cdc.msg", "rx") not in out
    assert out[("conn.cursor", "rx")].fields["prod"] == "0:700" and "coalesced" not in out[("conn.cursor", "rx")].fields
    assert out[("conn.rmb", None)].fields["fill"] == 700


def test_the_bus_builds_the_data_path_only_for_who_takes_it_event_by_event() -> None:
    bus = EventBus()
    assert not bus.active and not bus.data_events and not bus.data_active
    sampled = bus.subscribe(kinds=None, sampled=True)
    sampler = Sampler(0.1)
    bus.add_toucher(sampler)
    assert bus.active and not bus.data_events and bus.data_active
    some = bus.subscribe(kinds=["conn.state"])
    assert not bus.data_events  # it takes no data-path kind
    every = bus.subscribe()
    assert bus.data_events
    c = conn()
    bus.touch(c)
    assert sampler.touched == {1: c}
    plain = Event(1.0, "cdc.msg", "h", None, None, 1, {"dir": "tx", "seqno": 1})
    closing = Event(1.0, "cdc.msg", "h", None, None, 1, {"dir": "tx", "seqno": 2, "flags": ["peer_conn_closed"]})
    flow = Event(1.0, "cdc.msg", "h", None, None, 1, {"dir": "rx", "seqno": 3, "flags": ["write_blocked"]})
    rewind = Event(1.0, "conn.cursor", "h", None, None, 1, {"side": "tx", "cause": "failover", "rewound": 10})
    for e in (plain, closing, flow, rewind):
        bus.emit(e)
    assert sampled.get_nowait() == [closing, rewind]  # built for another; only what marks something comes here
    assert every.get_nowait() == [plain, closing, flow, rewind] and some.get_nowait() == []
    assert [marks_something(e) for e in (plain, closing, flow, rewind)] == [False, True, False, True]
    every.close()
    bus.remove_toucher(sampler)
    assert not bus.data_events and not bus.data_active
