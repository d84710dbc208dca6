"""smc-trace summary's per-connection bytes_sent / bytes_received: the sums of what each send
and receive call moved, from the kernel source's conn.cursor events that carry ``len`` (the
smc_tx_sendmsg / smc_rx_recvmsg tracepoints), what the kernel's smcr tx_bytes / rx_bytes
count (tests/lab/test_kernel_record.py holds them to each other); None when a trace has none."""

from __future__ import annotations

from dissectors.summary import summarize
from stack.events import Event


def test_send_and_receive_calls_add_up_per_connection_and_host() -> None:
    events = [
        Event(1.0, "conn.open", "a", conn=1, fields={"role": "client", "local": "10.2.0.1:40000", "peer": "10.2.0.2:5001"}),
        Event(1.1, "conn.mode", "a", conn=1, fields={"mode": "SMCR", "version": 2}),
        Event(1.2, "conn.cursor", "a", conn=1, fields={"side": "tx", "len": 1000, "source": "tracepoint"}),
        Event(1.3, "conn.cursor", "a", conn=1, fields={"side": "tx", "len": 24, "source": "tracepoint"}),
        Event(1.4, "conn.cursor", "a", conn=1, fields={"side": "rx", "len": 700, "source": "tracepoint"}),
        Event(1.5, "conn.cursor", "a", conn=1, fields={"side": "tx", "prod": "0:1024", "source": "snapshot"}),  # a cursor, no call
        Event(1.6, "conn.cursor", "a/other", conn=1, fields={"side": "tx", "len": 5, "source": "tracepoint"}),  # another namespace
        Event(1.7, "conn.open", "a", conn=2, fields={"role": "client"}),
        Event(1.8, "conn.mode", "a", conn=2, fields={"mode": "TCP", "reason": 0x05000000}),
    ]
    d = summarize(events).to_dict()
    by = {(c["host"], c["conn"]): c for c in d["conns"]}
    assert (by[("a", 1)]["bytes_sent"], by[("a", 1)]["bytes_received"]) == (1024, 700)
    assert (by[("a/other", 1)]["bytes_sent"], by[("a/other", 1)]["bytes_received"]) == (5, None)
    assert (by[("a", 2)]["bytes_sent"], by[("a", 2)]["bytes_received"]) == (None, None)


def test_moved_counts_a_kernel_recordings_sends_where_it_has_no_writes() -> None:
    """A kernel source sees the application's sends, not the RDMA WRITEs: "Moved" and the
    connection's Bytes said 0 for a lab recording whose connection sent 475 MB. Where a
    trace has WRITEs they count (each byte once, at the end that wrote it), never both."""
    from dissectors.summary import render

    events = [
        Event(1.0, "conn.open", "a", conn=1, fields={"role": "client", "local": "10.2.0.1:40000", "peer": "10.2.0.2:5001"}),
        Event(1.1, "conn.mode", "a", conn=1, fields={"mode": "SMCR", "version": 2}),
        Event(2.0, "conn.cursor", "a", conn=1, fields={"side": "tx", "len": 4_000_000, "source": "tracepoint"}),
        Event(3.0, "conn.cursor", "a", conn=1, fields={"side": "tx", "len": 4_000_000, "source": "tracepoint"}),
        Event(1.0, "conn.open", "b", conn=1, fields={"role": "client", "local": "10.2.0.1:40001", "peer": "10.2.0.2:5001"}),
        Event(2.0, "rdma.write", "b", conn=1, fields={"length": 3000}),
        Event(2.5, "conn.cursor", "b", conn=1, fields={"side": "tx", "len": 9999, "source": "tracepoint"}),
    ]
    s = summarize(events)
    by = {(c["host"], c["conn"]): c for c in s.to_dict()["conns"]}
    assert by[("a", 1)]["moved"] == 8_000_000 and by[("a", 1)]["throughput_mbps"] == 64.0  # 8 MB in the second between the sends
    assert by[("b", 1)]["moved"] == 3000
    assert "Moved: 8,003,000 bytes" in render(s)
