"""smc-trace summary of a recording begun mid-session: the starting snapshot names the
connections. A stack's events queued before the recorder's snapshot was taken can come
first in the file (smctop's `w` on an attached stack under load): the connections they
made must still get their addresses, mode and state from the snapshot, and what the events
said first is not overwritten."""

from __future__ import annotations

from dissectors.summary import render, summarize
from stack.events import Event

SNAP = {
    "host": "srv", "t": 2.0,
    "conns": [
        {"conn": 7, "role": "server", "local": "127.1.0.2:5000", "peer": "127.1.0.1:40000", "mode": "SMCR", "version": 2,
         "state": "ACTIVE", "lgr": "00aa0000", "rmb_size": 65536, "rx_prod": "3:100"},
        {"conn": 8, "role": "server", "local": "127.1.0.2:5000", "peer": "127.1.0.1:40001", "mode": "SMCR", "version": 2,
         "state": "ACTIVE", "lgr": "00aa0000", "rmb_size": 65536, "rx_prod": "0:0"},
    ],
}  # fmt: skip


def test_a_snapshot_after_a_connections_first_events_still_names_it() -> None:
    events = [
        Event(1.0, "rdma.write", "srv", "00aa0000", 1, 7, fields={"offset": 0, "length": 500, "rkey": 1}),
        Event(1.1, "conn.cursor", "srv", "00aa0000", 1, 7, fields={"side": "rx", "prod": "3:300", "cons": "3:100", "bytes_to_rcv": 200, "peer_rmbe_space": 1}),
        Event(1.2, "conn.state", "srv", "00aa0000", 1, 8, fields={"old": "ACTIVE", "new": "APPCLOSEWAIT1"}),
        Event(2.0, "stats", "srv", fields={"cause": "recording started", "snapshot": SNAP}),
    ]  # fmt: skip
    s = summarize(events)
    by = {c["conn"]: c for c in s.to_dict()["conns"]}
    c7, c8 = by[7], by[8]
    assert (c7["role"], c7["local"], c7["peer"], c7["mode"], c7["version"], c7["state"]) == (
        "server", "127.1.0.2:5000", "127.1.0.1:40000", "SMCR", 2, "ACTIVE")  # fmt: skip
    assert c7["moved"] == 500
    assert c8["state"] == "APPCLOSEWAIT1" and c8["peer"] == "127.1.0.1:40001"  # what an event said first stays
    assert "127.1.0.1:40000" in render(s) and "?" not in s.to_dict()["connections"]["modes"]
