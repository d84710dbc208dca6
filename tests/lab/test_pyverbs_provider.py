"""The pyverbs provider on Soft-RoCE, for real: two RC QPs on rxe0 connected to each other
(rxe loopback, as rdma-core's own tests do). The ``lab`` test boots a VM and runs the
``lab_guest`` tests of this file inside it."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import lab
import pytest

from stack.verbs.api import (
    Access,
    QPCap,
    QPState,
    RCPath,
    RecvWR,
    SendFlags,
    SendWR,
    Sge,
    WcOpcode,
    WcStatus,
    WrOpcode,
    poll_wait,
)

ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
guest = pytest.mark.lab_guest


@pytest.mark.lab
def test_pyverbs_provider_in_vm() -> None:
    result = lab.pytest_in_vm([str(Path(__file__).relative_to(lab.PROJECT)), "-v"], timeout=240)
    assert lab.junit_counts(result)["skipped"] == 0, result.output


@dataclass
class End:
    qp: object
    cq: object
    mr: object


@pytest.fixture(scope="module")
def device():
    from stack.verbs.pyverbs_provider import PyverbsProvider

    dev = PyverbsProvider().open_device("rxe0")
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def pd(device):
    return device.alloc_pd()


@pytest.fixture
def pair(device, pd):
    """Two connected RC QPs (a -> b), each with its own CQ and a 64 KiB MR."""
    gid = device.roce_v2_gid()
    ends = []
    for _ in range(2):
        cq = device.create_cq(64)
        ends.append(End(pd.create_rc_qp(cq, cq, QPCap(max_send_wr=16, max_recv_wr=16)), cq, pd.reg_mr(65536, ACCESS)))
    a, b = ends
    psn = {id(a): random.getrandbits(24), id(b): random.getrandbits(24)}
    for me, peer in ((a, b), (b, a)):
        path = RCPath(
            remote_qpn=peer.qp.qp_num, remote_psn=psn[id(peer)], local_psn=psn[id(me)],
            remote_gid=gid.gid, sgid_index=gid.index, timeout=14,
        )  # fmt: skip
        me.qp.to_init(ACCESS)
        me.qp.to_rtr(path)
        me.qp.to_rts(path)
    yield a, b
    for end in ends:
        end.qp.destroy()
        end.mr.deregister()
        end.cq.destroy()


def one(cq, timeout: float = 10.0):
    got = poll_wait(cq, 1, timeout)
    assert len(got) == 1, "no completion within the timeout"
    return got[0]


@guest
def test_device_port_and_roce_v2_gid(device) -> None:
    port = device.query_port()
    assert port.state.name == "ACTIVE" and port.link_layer == "ethernet"
    assert port.mac == bytes.fromhex("525400120001")
    gid = device.roce_v2_gid()
    assert gid.gid == bytes(10) + b"\xff\xff" + bytes([10, 2, 0, 1])
    assert device.poll_events() == []


@guest
def test_connected_qps_are_rts_with_real_caps(pair) -> None:
    a, b = pair
    assert a.qp.state() == QPState.RTS and b.qp.state() == QPState.RTS
    assert a.qp.cap.max_send_wr >= 16 and a.qp.cap.max_inline_data >= 44


@guest
def test_send_recv_44_bytes(pair) -> None:
    a, b = pair
    payload = os.urandom(44)
    a.mr.buf[100:144] = payload
    b.qp.post_recv(RecvWR(7, (Sge(b.mr, 0, 64),)))
    a.qp.post_send(SendWR(8, WrOpcode.SEND, (Sge(a.mr, 100, 44),), SendFlags.SIGNALED | SendFlags.INLINE))
    sent, got = one(a.cq), one(b.cq)
    assert (sent.wr_id, sent.status, sent.opcode) == (8, WcStatus.SUCCESS, WcOpcode.SEND)
    assert (got.wr_id, got.status, got.opcode, got.byte_len) == (7, WcStatus.SUCCESS, WcOpcode.RECV, 44)
    assert got.qp_num == b.qp.qp_num and got.imm is None
    assert bytes(b.mr.buf[:44]) == payload


@guest
def test_multi_sge_send_scatters_into_multi_sge_recv(pair) -> None:
    a, b = pair
    a.mr.buf[0:10] = b"0123456789"
    a.mr.buf[1000:1006] = b"abcdef"
    b.qp.post_recv(RecvWR(1, (Sge(b.mr, 500, 4), Sge(b.mr, 2000, 60))))
    a.qp.post_send(SendWR(2, WrOpcode.SEND, (Sge(a.mr, 0, 10), Sge(a.mr, 1000, 6))))
    assert one(a.cq).ok
    got = one(b.cq)
    assert got.ok and got.byte_len == 16
    assert bytes(b.mr.buf[500:504]) == b"0123" and bytes(b.mr.buf[2000:2012]) == b"456789abcdef"


@guest
def test_rdma_write_64k_visible_in_mr_buf(pair) -> None:
    a, b = pair
    data = os.urandom(65536)
    a.mr.buf[:] = data
    b.mr.buf[:] = bytes(65536)
    a.qp.post_send(SendWR(3, WrOpcode.RDMA_WRITE, (Sge(a.mr, 0, 65536),), remote_addr=b.mr.addr, rkey=b.mr.rkey))
    wc = one(a.cq)
    assert (wc.wr_id, wc.status, wc.opcode) == (3, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE)
    assert bytes(b.mr.buf) == data
    assert b.cq.poll() == []  # an RDMA WRITE is silent at the responder


@guest
def test_chained_unsignaled_write_then_signaled_send(pair) -> None:
    """RC order: the SEND arrives after the WRITE data is placed (SMC's WRITE-then-CDC)."""
    a, b = pair
    a.mr.buf[:4096] = b"w" * 4096
    a.mr.buf[8192:8200] = b"cdc-msg!"
    b.qp.post_recv(RecvWR(9, (Sge(b.mr, 60000, 64),)))
    a.qp.post_send([
        SendWR(10, WrOpcode.RDMA_WRITE, (Sge(a.mr, 0, 4096),), SendFlags.NONE, remote_addr=b.mr.addr, rkey=b.mr.rkey),
        SendWR(11, WrOpcode.SEND, (Sge(a.mr, 8192, 8),)),
    ])  # fmt: skip
    wc = one(a.cq)
    assert (wc.wr_id, wc.opcode, wc.status) == (11, WcOpcode.SEND, WcStatus.SUCCESS)
    assert a.cq.poll() == []  # the unsignaled WRITE gives no CQE
    assert one(b.cq).byte_len == 8
    assert bytes(b.mr.buf[:4096]) == b"w" * 4096 and bytes(b.mr.buf[60000:60008]) == b"cdc-msg!"


@guest
def test_rdma_write_with_imm_and_send_with_imm(pair) -> None:
    a, b = pair
    a.mr.buf[:256] = bytes(range(256))
    b.qp.post_recv([RecvWR(20, ()), RecvWR(21, (Sge(b.mr, 1024, 64),))])
    a.qp.post_send(SendWR(
        22, WrOpcode.RDMA_WRITE_WITH_IMM, (Sge(a.mr, 0, 256),), remote_addr=b.mr.addr + 4096, rkey=b.mr.rkey,
        imm=0x12345678,
    ))  # fmt: skip
    assert one(a.cq).opcode == WcOpcode.RDMA_WRITE
    got = one(b.cq)
    assert (got.wr_id, got.opcode, got.imm, got.byte_len) == (20, WcOpcode.RECV_RDMA_WITH_IMM, 0x12345678, 256)
    assert bytes(b.mr.buf[4096:4352]) == bytes(range(256))
    a.qp.post_send(SendWR(23, WrOpcode.SEND_WITH_IMM, (Sge(a.mr, 0, 16),), imm=0xDEADBEEF))
    assert one(a.cq).opcode == WcOpcode.SEND
    got = one(b.cq)
    assert (got.wr_id, got.opcode, got.imm, got.byte_len) == (21, WcOpcode.RECV, 0xDEADBEEF, 16)


@guest
def test_cq_fileno_wakes_on_completion_where_pyverbs_has_one(pair) -> None:
    """59: the CompChannel fd becomes readable; 44 has none, so fileno() is None."""
    import select

    from pyverbs.cq import CompChannel

    a, b = pair
    fd = a.cq.fileno()
    assert (fd is not None) == hasattr(CompChannel, "fd")
    if fd is None:
        return
    a.cq.arm()
    assert select.select([fd], [], [], 0) == ([], [], [])
    a.qp.post_send(SendWR(40, WrOpcode.RDMA_WRITE, (Sge(a.mr, 0, 64),), remote_addr=b.mr.addr, rkey=b.mr.rkey))
    assert select.select([fd], [], [], 10)[0] == [fd]
    a.cq.arm()  # takes the event; the fd is quiet again until the next completion
    assert select.select([fd], [], [], 0)[0] == []
    assert one(a.cq).wr_id == 40


@guest
def test_wrong_rkey_gives_rem_access_err_then_err_state_and_flush(pair) -> None:
    a, b = pair
    a.qp.post_recv(RecvWR(29, (Sge(a.mr, 0, 64),)))  # posted before the error
    b.qp.post_recv(RecvWR(30, (Sge(b.mr, 0, 64),)))
    bad_rkey = b.mr.rkey ^ 0x5A5A00
    a.qp.post_send(SendWR(31, WrOpcode.RDMA_WRITE, (Sge(a.mr, 0, 64),), remote_addr=b.mr.addr, rkey=bad_rkey))
    got = poll_wait(a.cq, 2, 10.0)
    assert [(w.wr_id, w.status, w.opcode) for w in got] == [
        (31, WcStatus.REM_ACCESS_ERR, WcOpcode.RDMA_WRITE),  # the failing WR first, with its own status
        (29, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV),
    ]
    assert a.qp.state() == QPState.ERR
    assert bytes(b.mr.buf[:64]) == bytes(64)  # nothing was written
    a.qp.post_send(SendWR(32, WrOpcode.SEND, (Sge(a.mr, 0, 8),)))
    flushed = one(a.cq, 5.0)
    assert (flushed.wr_id, flushed.status, flushed.opcode) == (32, WcStatus.WR_FLUSH_ERR, WcOpcode.SEND)
    # rxe flushes a receive posted in ERR only when the QP is kicked (post_recv of a user QP
    # never enters the kernel); a modify to ERR does that.
    a.qp.post_recv(RecvWR(33, (Sge(a.mr, 0, 8),)))
    a.qp.to_error()
    flushed = one(a.cq, 5.0)
    assert (flushed.wr_id, flushed.status, flushed.opcode) == (33, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV)
