"""smc-trace summary counts what an end sent as far as its producer cursor went, not as the
sum of its RDMA WRITEs: after a failover the sender writes again what the old link may have
lost (smc_switch_cursor), and a capture that saw the first copies counted those bytes twice.
The cursor comes from the end's own CDCs (a capture of the wire) or its cursor events (a
recording of the stack), in whole wraps of the peer's RMB, which may be named later."""

from __future__ import annotations

from dissectors.summary import summarize
from stack.events import Event

OPEN = {"role": "client", "local": "10.0.0.1:40000", "peer": "10.0.0.2:5000"}


def _cdc(t: float, prod: str, *flags: str) -> Event:
    return Event(t, "cdc.msg", "a", "g", 1, 1, {"dir": "tx", "seqno": int(t * 10), "token": 7, "prod": prod, "cons": "0:0", "flags": list(flags)})


def _write(t: float, n: int) -> Event:
    return Event(t, "rdma.write", "a", "g", 1, 1, {"vaddr": 0, "rkey": 5, "length": n})


def _conn(events: list[Event]) -> dict:
    (c,) = summarize(events).to_dict()["conns"]
    return c


def test_a_failovers_second_copies_are_not_new_bytes() -> None:
    events = [
        Event(1.0, "conn.open", "a", conn=1, fields=OPEN),
        Event(1.1, "conn.mode", "a", "g", 1, 1, {"mode": "SMCR", "version": 1, "rmb_size": 65536, "peer_rmb_size": 65536}),
        _write(1.2, 40_000), _cdc(1.21, "0:40000"),
        _write(1.3, 40_000), _cdc(1.31, "1:14464"),  # 80,000 in a 65,536-byte RMB: one wrap
        _cdc(1.4, "0:0", "failover_validation"),  # its cursors are zeros, not a position
        _write(1.5, 40_000), _cdc(1.51, "1:14464"),  # the second 40,000 again, on the new link: nothing new
        _write(1.6, 1_000), _cdc(1.61, "1:15464"),
    ]  # fmt: skip
    c = _conn(events)
    assert (c["bytes_written"], c["moved"]) == (121_000, 81_000)


def test_the_peers_rmb_size_may_come_after_the_wraps() -> None:
    """A recording begun mid-session: a snapshot names the sizes after the first CDCs."""
    events = [
        _cdc(1.0, "3:60000"), _write(1.1, 10_000), _cdc(1.11, "4:4464"),
        Event(1.2, "conn.mode", "a", "g", 1, 1, {"mode": "SMCR", "version": 1, "peer_rmb_size": 65536}),
    ]  # fmt: skip
    assert _conn(events)["moved"] == 10_000


def test_writes_before_the_first_cursor_of_a_trace_begun_mid_connection_count() -> None:
    events = [_write(1.0, 5_000), _cdc(1.01, "2:5000"), _write(1.1, 3_000), _cdc(1.11, "2:8000")]
    assert _conn(events)["moved"] == 8_000


def test_without_the_peers_rmb_size_a_wrap_cannot_be_counted_and_the_writes_are() -> None:
    events = [_cdc(1.0, "0:60000"), _write(1.1, 10_000), _cdc(1.11, "1:4464")]
    assert _conn(events)["moved"] == 10_000  # the WRITEs, as before
    events = [_cdc(1.0, "0:60000"), _write(1.1, 20_000), _cdc(1.11, "1:14464"), _write(1.2, 20_000), _cdc(1.21, "1:14464")]
    assert _conn(events)["moved"] == 40_000  # no size, no cursor count: a rewrite cannot be told


def test_a_stack_recordings_cursor_events_count_and_its_rewind_does_not() -> None:
    """The stack's own conn.cursor events (side tx, prod): a failover's cursor goes back by
    what it sends again, and the WRITEs that follow re-cover it."""
    events = [
        Event(1.0, "conn.open", "a", conn=1, fields=OPEN),
        Event(1.1, "conn.mode", "a", "g", 1, 1, {"mode": "SMCR", "version": 1, "peer_rmb_size": 65536}),
        _write(1.2, 30_000), Event(1.21, "conn.cursor", "a", "g", 1, 1, {"side": "tx", "prod": "0:30000"}),
        Event(1.3, "conn.cursor", "a", "g", 2, 1, {"side": "tx", "cause": "failover", "rewound": 20_000, "prod": "0:10000"}),
        _write(1.4, 25_000), Event(1.41, "conn.cursor", "a", "g", 2, 1, {"side": "tx", "prod": "0:35000"}),
    ]  # fmt: skip
    c = _conn(events)
    assert (c["bytes_written"], c["moved"]) == (55_000, 35_000)


def test_a_capture_gives_each_end_what_its_peer_sent_as_received() -> None:
    """The wire shows what each end sent (its WRITEs and CDCs), not their receipt: an end
    with no receive cursors of its own received what its peer sent, where the trace has
    the peer; a recording of the stack keeps the receiver's own count."""
    server = {"role": "server", "local": "10.0.0.2:5000", "peer": "10.0.0.1:40000"}
    events = [
        Event(1.0, "conn.open", "a", conn=1, fields=OPEN),
        Event(1.0, "conn.open", "b", conn=1, fields=server),
        Event(1.1, "conn.mode", "a", "g", 1, 1, {"mode": "SMCR", "version": 1, "peer_rmb_size": 65536}),
        _write(1.2, 30_000), _cdc(1.21, "0:30000"),
    ]  # fmt: skip
    d = summarize(events).to_dict()
    by = {c["host"]: c for c in d["conns"]}
    assert (by["a"]["moved"], by["b"]["received"], d["moved"]) == (30_000, 30_000, 30_000)
    told = [*events, Event(1.3, "conn.mode", "b", "g", 1, 1, {"mode": "SMCR", "version": 1, "rmb_size": 65536}),
            Event(1.4, "conn.cursor", "b", "g", 1, 1, {"side": "rx", "prod": "0:20000", "peer_rmbe_space": 0})]  # fmt: skip
    assert {c["host"]: c["received"] for c in summarize(told).to_dict()["conns"]}["b"] == 20_000  # as far as b saw it


def test_each_ends_rate_counts_both_directions_the_receiver_too() -> None:
    """The MB/s column was what the end sent over its WRITEs' span: the receiving end of a
    bulk transfer showed 0.0 beside tens of megabytes received. It is both directions over
    the time the end moved data (as smctop's rate); from a capture, which shows no receipt,
    the receiver is timed by its peer's WRITEs."""
    from dissectors.summary import render

    size = 1 << 20
    back = {"role": "server", "local": "10.0.0.2:5000", "peer": "10.0.0.1:40000"}
    sender = [Event(1.0, "conn.open", "a", conn=1, fields=OPEN),
              Event(1.0, "conn.mode", "a", "g", 1, 1, {"mode": "SMCR", "version": 2, "rmb_size": size, "peer_rmb_size": size})]  # fmt: skip
    receiver = [Event(1.0, "conn.open", "b", conn=1, fields=back),
                Event(1.0, "conn.mode", "b", "g", 1, 1, {"mode": "SMCR", "version": 2, "rmb_size": size, "peer_rmb_size": size})]  # fmt: skip
    for k in range(1, 11):  # 10 x 500,000 bytes between 1.0 and 2.0 s: 5 MB in 1 s
        t = 1.0 + k / 10
        sender += [_write(t, 500_000), _cdc(t, f"{k * 500_000 // size}:{k * 500_000 % size}")]
        receiver.append(Event(t, "conn.cursor", "b", "g", 1, 1, {"side": "rx", "prod": f"{k * 500_000 // size}:{k * 500_000 % size}",
                                                                "cons": "0:0", "peer_rmbe_space": 0}))  # fmt: skip
    recorded = summarize(sorted(sender + receiver, key=lambda e: e.t)).to_dict()["conns"]
    by = {c["host"]: c for c in recorded}
    assert (by["a"]["moved"], by["b"]["received"]) == (5_000_000, 5_000_000)
    assert by["a"]["rate_mbps"] == by["b"]["rate_mbps"] == round(5_000_000 * 8 / 0.9 / 1e6, 3)  # from the first move to the last
    wire = summarize(sorted(sender + [e for e in receiver if e.kind != "conn.cursor"], key=lambda e: e.t))  # a capture: no receipt
    by = {c["host"]: c for c in wire.to_dict()["conns"]}
    assert by["b"]["received"] == 5_000_000 and by["b"]["rate_mbps"] == by["a"]["rate_mbps"] > 0
    row = next(line for line in render(wire).splitlines() if line.startswith("b "))
    assert row.split()[-3:] == ["0", "5000000", f"{5_000_000 / 0.9 / 1e6:.1f}"], row  # sent, received, MB/s (not 0.0)
