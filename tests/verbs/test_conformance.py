"""One conformance suite for every RDMA provider (see conftest.py for the modes).

Endpoint A is always in this process; endpoint B may be in this process, in a child
process, or on another machine. Every check is about what ibverbs promises: bytes
placed, completion statuses and order, QP states, and memory that a bad request must
never touch.
"""

from __future__ import annotations

import random
import time

import pytest

from stack.verbs.api import EventType, PortState, QPState, WcOpcode, WcStatus, WrOpcode

RX = 5.0  # generous completion timeout: under emulation a VM can be slow
SEND, WRITE, WRITE_IMM = int(WrOpcode.SEND), int(WrOpcode.RDMA_WRITE), int(WrOpcode.RDMA_WRITE_WITH_IMM)


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def poll(ep, count, timeout=RX, **kw):
    wcs, snap = ep.poll(count, timeout, **kw)
    assert len(wcs) == count, f"expected {count} completions, got {len(wcs)}: {wcs}"
    return (wcs, snap) if "snapshot" in kw else wcs


def test_send_recv_44_bytes(pair):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(4096), pair.b.reg_mr(4096)
    msg = pattern(44, 1)
    pair.a.write_mem(src["handle"], 100, msg)
    pair.b.post_recv(qb["handle"], 77, [(dst["handle"], 8, 44)])
    pair.a.post_send(qa["handle"], 5, SEND, [(src["handle"], 100, 44)], solicited=True)
    (sent,) = poll(pair.a, 1)
    (got,) = poll(pair.b, 1)
    assert (sent.wr_id, sent.status, sent.opcode) == (5, WcStatus.SUCCESS, WcOpcode.SEND)
    assert (got.wr_id, got.status, got.opcode, got.byte_len) == (77, WcStatus.SUCCESS, WcOpcode.RECV, 44)
    assert got.qp_num == qb["qpn"]
    assert pair.b.read_mem(dst["handle"], 8, 44) == msg
    assert pair.b.read_mem(dst["handle"], 0, 8) == bytes(8)


def test_one_buffer_registered_twice(pair):
    """A WRITE through either registration of one buffer lands in the same memory."""
    qa, qb = pair.connect()
    src = pair.a.reg_mr(4096)
    dst = pair.b.reg_mr(8192)
    alias = pair.b.reg_mr_alias(dst["handle"])
    assert alias["rkey"] != dst["rkey"]
    pair.a.write_mem(src["handle"], 0, pattern(4096, 7))
    pair.a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, 1000)], remote_addr=dst["addr"] + 10, rkey=dst["rkey"])
    pair.a.post_send(qa["handle"], 2, WRITE, [(src["handle"], 1000, 3000)], remote_addr=alias["addr"] + 5000, rkey=alias["rkey"])
    wcs = poll(pair.a, 2)
    assert [(w.wr_id, w.status) for w in wcs] == [(1, WcStatus.SUCCESS), (2, WcStatus.SUCCESS)]
    data = pattern(4096, 7)
    assert pair.b.read_mem(dst["handle"], 10, 1000) == data[:1000]
    assert pair.b.read_mem(dst["handle"], 5000, 3000) == data[1000:4000]
    assert pair.b.read_mem(alias["handle"], 10, 1000) == data[:1000]
    assert pair.b.read_mem(dst["handle"], 1010, 3990) == bytes(3990)
    pair.b.dereg_mr(alias["handle"])  # the buffer outlives its second registration
    assert pair.b.read_mem(dst["handle"], 10, 1000) == data[:1000]


@pytest.mark.parametrize("size", [1, 3, 1023, 1024, 1025, 65536 + 7, 1 << 20])
def test_rdma_write_lands_exactly(pair, size):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(size + 64), pair.b.reg_mr(size + 64)
    fill = b"\xa5" * (size + 64)
    pair.b.write_mem(dst["handle"], 0, fill)
    data = pattern(size, size)
    pair.a.write_mem(src["handle"], 3, data)
    pair.a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 3, size)], remote_addr=dst["addr"] + 17, rkey=dst["rkey"])
    (wc,) = poll(pair.a, 1, timeout=30)
    assert (wc.status, wc.opcode) == (WcStatus.SUCCESS, WcOpcode.RDMA_WRITE)
    after = pair.b.read_mem(dst["handle"], 0, size + 64)
    assert after[17 : 17 + size] == data
    assert after[:17] == fill[:17] and after[17 + size :] == fill[17 + size :], "bytes outside the target changed"


def test_send_after_write_sees_the_written_data(pair):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(300_000), pair.b.reg_mr(300_000)
    data = pattern(250_000, 7)
    pair.a.write_mem(src["handle"], 0, data)
    pair.a.write_mem(src["handle"], 250_000, b"now read it".ljust(44, b"."))
    pair.b.post_recv(qb["handle"], 9, [(dst["handle"], 260_000, 44)])
    pair.a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, 250_000)], remote_addr=dst["addr"], rkey=dst["rkey"], signaled=False)
    pair.a.post_send(qa["handle"], 2, SEND, [(src["handle"], 250_000, 44)])
    # B reads its memory the moment it sees the SEND's completion: the WRITE must be there.
    (recv,), snap = poll(pair.b, 1, snapshot=(dst["handle"], 0, 250_000))
    assert recv.status == WcStatus.SUCCESS and recv.opcode == WcOpcode.RECV
    assert snap == data
    # The unsignaled WRITE completes silently; only the SEND is reported.
    (sent,) = poll(pair.a, 1)
    assert sent.wr_id == 2 and sent.status == WcStatus.SUCCESS
    assert pair.a.poll(1, 0.2)[0] == []


def test_write_with_immediate(pair):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(8192), pair.b.reg_mr(8192)
    data = pattern(3000, 3)
    pair.a.write_mem(src["handle"], 0, data)
    pair.b.post_recv(qb["handle"], 4, [(dst["handle"], 0, 0)])
    pair.a.post_send(qa["handle"], 1, WRITE_IMM, [(src["handle"], 0, 3000)], remote_addr=dst["addr"] + 100, rkey=dst["rkey"], imm=0xC0FFEE)
    poll(pair.a, 1)
    (wc,) = poll(pair.b, 1)
    assert (wc.wr_id, wc.status, wc.opcode, wc.imm, wc.byte_len) == (4, WcStatus.SUCCESS, WcOpcode.RECV_RDMA_WITH_IMM, 0xC0FFEE, 3000)
    assert pair.b.read_mem(dst["handle"], 100, 3000) == data


def test_gather_and_scatter_lists(pair):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(4096), pair.b.reg_mr(4096)
    pair.a.write_mem(src["handle"], 0, b"A" * 30)
    pair.a.write_mem(src["handle"], 1000, b"B" * 50)
    pair.b.post_recv(qb["handle"], 1, [(dst["handle"], 0, 40), (dst["handle"], 2000, 100)])
    pair.a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 30), (src["handle"], 1000, 50)])
    poll(pair.a, 1)
    (wc,) = poll(pair.b, 1)
    assert wc.byte_len == 80
    assert pair.b.read_mem(dst["handle"], 0, 40) == b"A" * 30 + b"B" * 10
    assert pair.b.read_mem(dst["handle"], 2000, 40) == b"B" * 40


@pytest.mark.parametrize(
    "target",
    ["wrong rkey", "one byte past the end", "before the start", "deregistered"],
)
def test_bad_write_is_rejected_and_memory_untouched(pair, target):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(8192), pair.b.reg_mr(4096)
    pair.b.write_mem(dst["handle"], 0, b"\x5a" * 4096)
    pair.a.write_mem(src["handle"], 0, pattern(8192, 11))
    addr, rkey, size = dst["addr"], dst["rkey"], 512
    if target == "wrong rkey":
        rkey ^= 0x5A5A
    elif target == "one byte past the end":
        addr, size = dst["addr"] + 4096 - 511, 512
    elif target == "before the start":
        addr = dst["addr"] - 64
    else:
        pair.b.dereg_mr(dst["handle"])
    pair.a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, size)], remote_addr=addr, rkey=rkey)
    pair.a.post_send(qa["handle"], 2, WRITE, [(src["handle"], 0, 16)], remote_addr=dst["addr"], rkey=dst["rkey"])
    bad, flushed = poll(pair.a, 2)
    assert (bad.wr_id, bad.status) == (1, WcStatus.REM_ACCESS_ERR)
    assert (flushed.wr_id, flushed.status) == (2, WcStatus.WR_FLUSH_ERR)
    assert pair.a.qp_state(qa["handle"]) == QPState.ERR
    # a WR posted to a QP in ERR is flushed too
    pair.a.post_send(qa["handle"], 3, SEND, [(src["handle"], 0, 8)])
    (late,) = poll(pair.a, 1)
    assert (late.wr_id, late.status) == (3, WcStatus.WR_FLUSH_ERR)
    if target != "deregistered":
        assert pair.b.read_mem(dst["handle"], 0, 4096) == b"\x5a" * 4096
    # the responder's QP errors too, as on rxe and hardware; its posted receives flush
    assert pair.b.qp_state(qb["handle"]) == QPState.ERR


def test_receive_too_small(pair):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(4096), pair.b.reg_mr(4096)
    pair.b.post_recv(qb["handle"], 1, [(dst["handle"], 0, 44)])
    pair.a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 100)])
    (sent,) = poll(pair.a, 1)
    (recv,) = poll(pair.b, 1)
    # IBA: LOC_LEN_ERR at the responder, NAK "invalid request" to the requester; rxe reports
    # these as LOC_QP_OP_ERR and "remote operational error". Either way both sides see the error.
    assert sent.status in (WcStatus.REM_INV_REQ_ERR, WcStatus.REM_OP_ERR)
    assert recv.status in (WcStatus.LOC_LEN_ERR, WcStatus.LOC_QP_OP_ERR)


def test_rnr_waits_for_a_receive_then_completes(pair):
    qa, qb = pair.connect(a_path={"rnr_retry": 7}, b_path={"min_rnr_timer": 14})  # 1.28 ms between retries
    src, dst = pair.a.reg_mr(4096), pair.b.reg_mr(4096)
    pair.a.write_mem(src["handle"], 0, b"late receiver".ljust(44))
    pair.a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 44)])
    assert pair.a.poll(1, 0.3)[0] == [], "a SEND must not complete before the peer posts a receive"
    pair.b.post_recv(qb["handle"], 2, [(dst["handle"], 0, 44)])
    (sent,) = poll(pair.a, 1)
    (recv,) = poll(pair.b, 1)
    assert sent.status == WcStatus.SUCCESS and recv.status == WcStatus.SUCCESS
    assert pair.b.read_mem(dst["handle"], 0, 13) == b"late receiver"


def test_rnr_retry_exceeded(pair):
    qa, qb = pair.connect(a_path={"rnr_retry": 1}, b_path={"min_rnr_timer": 14})
    src = pair.a.reg_mr(4096)
    pair.a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 44)])
    (wc,) = poll(pair.a, 1)
    assert wc.status == WcStatus.RNR_RETRY_EXC_ERR
    assert pair.a.qp_state(qa["handle"]) == QPState.ERR


def test_five_percent_loss_keeps_data_intact_and_completions_in_order(wire_pair):
    pair = wire_pair
    qa, qb = pair.connect(a_path={"timeout": 10, "retry_cnt": 7}, b_path={"timeout": 10, "retry_cnt": 7})
    n = 60
    src, dst = pair.a.reg_mr(n * 8192), pair.b.reg_mr(n * 8192)
    rng = random.Random(5)
    sizes = [rng.choice([44, 700, 2500, 8000]) for _ in range(n)]
    blob = pattern(n * 8192, 13)
    pair.a.write_mem(src["handle"], 0, blob)
    for i in range(0, n, 3):
        pair.b.post_recv(qb["handle"], 1000 + i, [(dst["handle"], i * 8192, 8192)])
    pair.a.set_faults(loss=0.05, seed=1)
    pair.b.set_faults(loss=0.05, seed=2)
    wrs = []
    for i, size in enumerate(sizes):
        opcode = SEND if i % 3 == 0 else WRITE
        wrs.append(dict(wr_id=i, opcode=opcode, sges=[(src["handle"], i * 8192, size)], remote_addr=dst["addr"] + i * 8192, rkey=dst["rkey"]))
    for k in range(0, n, 16):  # the send queue holds 64
        pair.a.post_send_many(qa["handle"], wrs[k : k + 16])
        time.sleep(0.01)
    done = poll(pair.a, n, timeout=60)
    pair.a.set_faults(loss=0.0)
    pair.b.set_faults(loss=0.0)
    assert [w.wr_id for w in done] == list(range(n)), "completions out of order"
    assert all(w.status == WcStatus.SUCCESS for w in done), [w for w in done if w.status]
    recvs = poll(pair.b, len(range(0, n, 3)))
    assert [w.wr_id for w in recvs] == [1000 + i for i in range(0, n, 3)]
    for i, size in enumerate(sizes):
        assert pair.b.read_mem(dst["handle"], i * 8192, size) == blob[i * 8192 : i * 8192 + size], f"WR {i} damaged"
    if pair.mode.startswith("soft"):
        assert pair.a.stats()["tx_dropped"] > 0, "the loss was not injected"


def test_peer_port_down_gives_retry_exceeded_after_the_configured_timeout(wire_pair):
    """The peer's port goes down under an outstanding SEND: after (retry_cnt + 1) local ACK
    timeouts the requester gives up with RETRY_EXC_ERR. (retry_cnt 7 would mean "forever" on rxe.)"""
    pair = wire_pair
    timeout, retries = 14, 3  # 4.096 us * 2**14 = 67 ms; 4 x 67 = 268 ms
    qa, qb = pair.connect(a_path={"timeout": timeout, "retry_cnt": retries, "rnr_retry": 7}, b_path={"min_rnr_timer": 12})
    src = pair.a.reg_mr(4096)
    # no receive at B: the SEND keeps RNR-retrying, so it is surely outstanding when B's port goes
    pair.a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 44)])
    assert pair.a.poll(1, 0.2)[0] == []
    start = time.monotonic()
    pair.b.set_port(False, 3.0)  # back by itself after 3 s
    (wc,) = poll(pair.a, 1, timeout=20)
    elapsed = time.monotonic() - start
    assert wc.status == WcStatus.RETRY_EXC_ERR
    assert pair.a.qp_state(qa["handle"]) == QPState.ERR
    assert elapsed >= (retries + 1) * 4.096e-6 * 2**timeout * 0.8, f"failed after {elapsed:.3f} s, before the retries ran out"
    time.sleep(max(0.0, 3.5 - elapsed))  # the peer's port is back before the next test


def test_local_port_down_fails_the_work_and_is_reported(pair):
    """Our own port goes down: PORT_ERR and a DOWN port; a SEND fails (rxe flushes at once with
    WR_FLUSH_ERR, the soft provider retries until RETRY_EXC_ERR); the port comes back ACTIVE."""
    qa, qb = pair.connect(a_path={"timeout": 12, "retry_cnt": 3})
    src = pair.a.reg_mr(4096)
    pair.b.post_recv(qb["handle"], 1, [(pair.b.reg_mr(64)["handle"], 0, 64)])
    pair.a.set_port(False, 8.0)
    try:
        assert pair.a.wait_event(int(EventType.PORT_ERR), 5.0), "no PORT_ERR event"
        assert pair.a.port_state() == PortState.DOWN
        pair.a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 44)])
        (wc,) = poll(pair.a, 1, timeout=20)
    finally:
        pair.a.set_port(True)
    assert wc.status in (WcStatus.RETRY_EXC_ERR, WcStatus.WR_FLUSH_ERR)
    assert pair.a.qp_state(qa["handle"]) == QPState.ERR
    assert pair.a.wait_event(int(EventType.PORT_ACTIVE), 10.0), "no PORT_ACTIVE event"
    assert pair.a.port_state() == PortState.ACTIVE


def test_a_hundred_qps_on_one_device(pair):
    pairs = [pair.connect(max_send_wr=4, max_recv_wr=4) for _ in range(100)]
    src, dst = pair.a.reg_mr(100 * 64), pair.b.reg_mr(100 * 64)
    for i, (_qa, qb) in enumerate(pairs):
        pair.a.write_mem(src["handle"], i * 64, i.to_bytes(2, "big") * 22)
        pair.b.post_recv(qb["handle"], i, [(dst["handle"], i * 64, 64)])
    for i, (qa, _qb) in enumerate(pairs):
        pair.a.post_send(qa["handle"], i, SEND, [(src["handle"], i * 64, 44)])
    sent = poll(pair.a, 100, timeout=60)
    recvs = poll(pair.b, 100, timeout=60)
    assert all(w.status == WcStatus.SUCCESS for w in sent + recvs)
    by_qpn = {qb["qpn"]: i for i, (qa, qb) in enumerate(pairs)}
    for w in recvs:
        assert by_qpn[w.qp_num] == w.wr_id, "a message arrived on the wrong QP"
        assert pair.b.read_mem(dst["handle"], w.wr_id * 64, 44) == w.wr_id.to_bytes(2, "big") * 22
    assert len({qa["qpn"] for qa, _ in pairs}) == 100


def test_queue_rules(pair):
    from stack.verbs.api import VerbsError

    qa_info = pair.a.create_qp(max_send_wr=2)
    src = pair.a.reg_mr(64)
    with pytest.raises(VerbsError) as e:
        pair.a.post_send(qa_info["handle"], 1, SEND, [(src["handle"], 0, 8)])
    assert e.value.errno == 22  # EINVAL: the QP is in RESET, not RTS
    qa, qb = pair.connect(max_send_wr=2)
    depth = qa["max_send_wr"]  # what the device granted (rxe rounds up)
    pair.b.to_error(qb["handle"])  # nobody answers: the sends stay outstanding
    for i in range(depth):
        pair.a.post_send(qa["handle"], i, SEND, [(src["handle"], 0, 8)], signaled=False)
    with pytest.raises(VerbsError) as e:
        pair.a.post_send(qa["handle"], depth, SEND, [(src["handle"], 0, 8)])
    assert e.value.errno == 12  # ENOMEM: the send queue is full
    pair.a.to_error(qa["handle"])
    flushed = poll(pair.a, depth)
    assert {w.status for w in flushed} == {WcStatus.WR_FLUSH_ERR}, "unsignaled WRs are flushed with a completion"


def test_many_messages_stream_in_order(pair):
    qa, qb = pair.connect()
    src, dst = pair.a.reg_mr(1 << 16), pair.b.reg_mr(1 << 16)
    for i in range(500):
        if i % 50 == 0:
            pair.b.post_recv(qb["handle"], i, [(dst["handle"], 0, 64)])
    for i in range(500):
        op = SEND if i % 50 == 0 else WRITE
        pair.a.post_send(qa["handle"], i, op, [(src["handle"], (i * 64) % 60000, 64)], remote_addr=dst["addr"] + 64 + (i * 64) % 60000, rkey=dst["rkey"])
        if i % 32 == 31:
            poll(pair.a, 32)
    poll(pair.a, 500 % 32)
    assert [w.wr_id for w in poll(pair.b, 10)] == list(range(0, 500, 50))


def test_rnr_with_many_messages_in_flight_does_not_exhaust_retries(pair):
    """A burst into an empty receive queue: the RNR NAK's followers must not count as retries."""
    qa, qb = pair.connect(a_path={"rnr_retry": 7, "retry_cnt": 2, "timeout": 14}, b_path={"min_rnr_timer": 12})
    src, dst = pair.a.reg_mr(64 * 40), pair.b.reg_mr(64 * 40)
    for i in range(40):
        pair.a.post_send(qa["handle"], i, SEND, [(src["handle"], i * 64, 44)])
    time.sleep(0.3)  # hundreds of RNR rounds with nothing posted and 39 packets behind each
    for i in range(40):
        pair.b.post_recv(qb["handle"], i, [(dst["handle"], i * 64, 64)])
    got = poll(pair.b, 40)
    sent = poll(pair.a, 40)
    assert [w.status for w in sent] == [WcStatus.SUCCESS] * 40, [w for w in sent if w.status][:3]
    assert sorted(w.wr_id for w in got) == list(range(40))
