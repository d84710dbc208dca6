"""Urgent data (MSG_OOB) as net/smc does it (issue 16 item 1), on the in-memory fabric.

Send (smc_tx_sendmsg, smc_tx_rdma_writes, smcr_tx_sndbuf_nonempty): the last byte of an
urgent send is urgent; the CDC that carries it has urg_data_pending and urg_data_present;
after it the sender takes nothing more until a CDC shows the peer consumed everything.
Receive (smc_cdc_msg_recv_action, smc_cdc_handle_urg_data_arrival, smc_rx_recvmsg,
smc_rx_update_consumer, smc_rx_recv_urg): the urgent byte is kept apart and, unless
inline, not counted as data; a read stops before it; when the reader reaches it, it is
skipped and the consumer cursor goes to the peer at once (force).
"""

from __future__ import annotations

from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.core.connection import URG_NOTYET, URG_READ, URG_VALID
from stack.wire import cdc
from stack.wire.cdc import Cursor

SMALL = {"rmb_size": 16384, "sndbuf_size": 16384}


def setup(**kw):
    f, a, b = pair(SmcConfig(host="client", **kw), SmcConfig(host="server", **kw))
    open_conn(f, a, b, 1)
    return f, a, b, a.host.conns[1], b.host.conns[1]


def cdcs(io, direction: str) -> list:
    return [e for e in io.events if e.kind == "cdc.msg" and e.get("dir") == direction]


def urgent_events(io) -> list[tuple[str, str]]:
    return [(e.get("dir"), e.get("event")) for e in io.events if e.kind == "conn.urgent"]


def run(f, dt: float = 0.01) -> None:
    f.run(until=f.now + dt)


def test_an_urgent_send_carries_both_flags_and_the_sender_waits_for_the_consumer_update():
    f, a, b, ca, cb = setup()
    assert ca.app_send(b"hello", f.now) == 5
    run(f)
    mark = len(cdcs(a, "tx"))
    assert ca.app_send(b"xyU", f.now, urgent=True) == 3
    run(f)
    sent = cdcs(a, "tx")[mark:]
    assert [e.get("flags") for e in sent] == [["urg_data_pending", "urg_data_present"]]
    assert sent[0].get("prod") == "0:8"
    assert ca.urg_tx_pend and not ca.urg_data_pending and not ca.urg_data_present
    assert ca.app_send(b"after", f.now) == 0  # smc_tx_sendmsg waits: urg_tx_pend
    # the receiver keeps the urgent byte out of the stream
    assert cb.bytes_to_rcv == 7 and cb.urg_state == URG_VALID and cb.urg_rx_byte == ord("U")
    writable = a.apps[1].writable
    assert cb.app_recv(100, f.now) == b"helloxy"
    assert cb.cons == Cursor(0, 8)  # the urgent byte was skipped
    assert cdcs(b, "tx")[-1].get("cons") == "0:8"  # and the update went at once, below every update limit
    run(f)
    assert not ca.urg_tx_pend and a.apps[1].writable > writable
    assert ca.app_send(b"after", f.now) == 5
    run(f)
    assert cb.app_recv_urgent(f.now) == ord("U")
    assert cb.app_recv(100, f.now) == b"after"
    assert cb.urg_state == URG_READ
    assert urgent_events(a) == [("tx", "queued"), ("tx", "sent"), ("tx", "confirmed")]
    assert urgent_events(b) == [("rx", "arrived"), ("rx", "skipped"), ("rx", "read")]


def test_reading_out_of_band_first_skips_the_byte_when_the_reader_gets_there():
    f, a, b, ca, cb = setup()
    ca.app_send(b"0123456789U", f.now, urgent=True)
    run(f)
    assert cb.app_recv_urgent(f.now) == ord("U")
    assert cb.app_recv_urgent(f.now) is None  # read once (EINVAL)
    assert cb.urg_rx_skip_pend and ca.urg_tx_pend
    assert cb.app_recv(4, f.now) == b"0123"
    assert cb.app_recv(100, f.now) == b"456789"
    assert cb.cons == Cursor(0, 11) and not cb.urg_rx_skip_pend
    run(f)
    assert not ca.urg_tx_pend


def test_an_urgent_byte_alone_is_skipped_by_a_read_that_finds_nothing():
    """smc_rx_recvmsg_data_available: no data, an urgent byte valid: skip it and update."""
    f, a, b, ca, cb = setup()
    ca.app_send(b"abc", f.now)
    run(f)
    assert cb.app_recv(100, f.now) == b"abc"
    ca.app_send(b"!", f.now, urgent=True)
    run(f)
    assert cb.bytes_to_rcv == 0 and cb.urg_state == URG_VALID and b.apps[1].readable
    assert cb.app_recv(100, f.now) == b""
    assert cb.cons == Cursor(0, 4)
    run(f)
    assert not ca.urg_tx_pend
    assert cb.app_recv_urgent(f.now) == ord("!")


def test_reading_out_of_band_while_standing_on_the_byte_skips_it_where_the_kernel_would_stall():
    """The kernel's smc_rx_recv_urg marks the byte read without skipping it when it is the
    next byte of the stream; a kernel sender then waits for ever. We skip it."""
    f, a, b, ca, cb = setup()
    ca.app_send(b"abc", f.now)
    run(f)
    cb.app_recv(100, f.now)
    ca.app_send(b"!", f.now, urgent=True)
    run(f)
    assert cb.app_recv_urgent(f.now) == ord("!")
    assert cb.cons == Cursor(0, 4)
    run(f)
    assert not ca.urg_tx_pend


def test_inline_the_read_stops_before_the_urgent_byte_and_the_next_read_returns_it():
    f, a, b, ca, cb = setup()
    cb.set_oob_inline(True)
    ca.app_send(b"hello", f.now)
    ca.app_send(b"xyU", f.now, urgent=True)
    run(f)
    assert cb.bytes_to_rcv == 8 and cb.app_recv_urgent(f.now) is None  # inline: EINVAL
    assert cb.app_recv(100, f.now) == b"helloxy"
    assert cb.app_recv(100, f.now) == b"U"
    assert cb.urg_state == URG_READ and cdcs(b, "tx")[-1].get("cons") == "0:8"
    run(f)
    assert not ca.urg_tx_pend


def test_urgent_data_pending_without_new_data_is_not_yet_and_large_urgent_sends_announce_it_early():
    """An urgent send larger than the peer's free RMB goes in parts: the first CDCs carry
    urg_data_pending only (the receiver: SMC_URG_NOTYET on a CDC without data), the last
    one urg_data_present too."""
    f, a, b, ca, cb = setup(**SMALL)
    assert ca.app_send(bytes(16000), f.now) == 16000
    run(f)
    assert ca.app_send(b"z" * 2000, f.now, urgent=True) == 2000
    run(f)
    flags = [e.get("flags") for e in cdcs(a, "tx")]
    assert ["urg_data_pending"] in flags or ["write_blocked", "urg_data_pending"] in flags
    assert not any("urg_data_present" in x for x in flags)
    got = b""
    for _ in range(10):
        got += cb.app_recv(1 << 20, f.now)
        run(f)
    assert len(got) == 16000 + 1999 and got == bytes(16000) + b"z" * 1999
    assert any("urg_data_present" in e.get("flags") for e in cdcs(a, "tx"))
    assert cb.app_recv_urgent(f.now) == ord("z")
    run(f)
    assert not ca.urg_tx_pend
    # a CDC with urg_data_pending and no data
    cb2 = cb
    cb2.link.received(cdc.CdcMessage(seqno=(cb2.rx_seq + 1) & 0xFFFF, token=cb2.token, prod=cb2.rx_prod, cons=cb2.rx_cons,
                                     urg_data_pending=True).encode(), f.now)  # fmt: skip
    assert cb2.urg_state == URG_NOTYET


def test_a_read_never_crosses_the_urgent_mark_when_a_peer_writes_beyond_it():
    """A kernel sender never writes past its urgent byte before the consumer update; if a
    peer does, the read still stops at the mark and the byte is skipped (the kernel would
    copy it into the stream)."""
    f, a, b, ca, cb = setup()
    rmb = cb.rmb.buf
    rmb[0:7] = b"abcUdef"
    seq = (cb.rx_seq + 1) & 0xFFFF
    cb.link.received(cdc.CdcMessage(seqno=seq, token=cb.token, prod=Cursor(0, 4), cons=cb.rx_cons, urg_data_pending=True,
                                    urg_data_present=True).encode(), f.now)  # fmt: skip
    cb.link.received(cdc.CdcMessage(seqno=(seq + 1) & 0xFFFF, token=cb.token, prod=Cursor(0, 7), cons=cb.rx_cons).encode(), f.now)
    assert cb.bytes_to_rcv == 6
    assert cb.app_recv(100, f.now) == b"abc"
    assert cb.app_recv(100, f.now) == b"def"
    assert cb.app_recv_urgent(f.now) is None  # read past it: SMC_URG_READ, as the kernel
    assert cb.cons == Cursor(0, 7)


def test_an_urgent_byte_at_the_end_of_the_ring_is_found_there():
    f, a, b, ca, cb = setup(**SMALL)
    size = cb.rmb_size
    assert ca.app_send(bytes(size - 1), f.now) == size - 1
    run(f)
    assert cb.app_recv(1 << 20, f.now) == bytes(size - 1)
    run(f)
    assert ca.app_send(b"E", f.now, urgent=True) == 1
    run(f)
    assert cb.urg_curs == Cursor(1, 0) and cb.urg_rx_byte == ord("E")
    assert cb.app_recv(10, f.now) == b""  # skipped: nothing else to read
    assert cb.cons == Cursor(1, 0)
    run(f)
    assert not ca.urg_tx_pend
    assert ca.app_send(b"next", f.now) == 4
    run(f)
    assert cb.app_recv(10, f.now) == b"next"
