"""The pyverbs provider between two VMs (rxe0 on each, one wire): VM a writes and sends to
VM b after exchanging QPN, PSN, GID, address and rkey over TCP, as SMC's CLC does."""

import hashlib
import json
import os
import random
import socket
import time
from pathlib import Path

import lab
import pytest

from stack.verbs.api import Access, QPCap, RCPath, RecvWR, SendWR, Sge, WcOpcode, WrOpcode, poll_wait

ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE
PORT = 7001


@pytest.mark.lab
def test_pyverbs_between_two_vms() -> None:
    a, b = lab.pytest_in_pair([str(Path(__file__).relative_to(lab.PROJECT)), "-v"], timeout=240)
    assert lab.junit_counts(a)["tests"] == lab.junit_counts(b)["tests"] == 1


def exchange(mine: dict) -> dict:
    if os.environ["LAB_VM"] == "b":
        with socket.create_server(("", PORT)) as srv:
            srv.settimeout(60)
            conn, _ = srv.accept()
    else:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection((os.environ["LAB_PEER_IP"], PORT), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    with conn:
        conn.sendall(json.dumps(mine).encode() + b"\n")
        return json.loads(conn.makefile().readline())


@pytest.mark.lab_guest
def test_rdma_write_then_send_across_vms() -> None:
    from stack.verbs.pyverbs_provider import PyverbsProvider

    dev = PyverbsProvider().open_device("rxe0")
    try:
        gid = dev.roce_v2_gid()
        assert gid.gid[12:] == socket.inet_aton(os.environ["LAB_IP"])
        pd = dev.alloc_pd()
        cq = dev.create_cq(16)
        qp = pd.create_rc_qp(cq, cq, QPCap())
        mr = pd.reg_mr(1 << 20, ACCESS)
        psn = random.getrandbits(24)
        qp.to_init(ACCESS)
        peer = exchange(dict(qpn=qp.qp_num, psn=psn, gid=gid.gid.hex(), addr=mr.addr, rkey=mr.rkey))
        path = RCPath(peer["qpn"], peer["psn"], psn, bytes.fromhex(peer["gid"]), gid.index)
        qp.to_rtr(path)
        if os.environ["LAB_VM"] == "b":
            qp.post_recv(RecvWR(1, (Sge(mr, 0, 64),)))
        qp.to_rts(path)
        exchange({"ready": True})  # b's receive is posted before a sends
        data = random.randbytes(1 << 20)
        if os.environ["LAB_VM"] == "a":
            mr.buf[:] = data
            qp.post_send([
                SendWR(2, WrOpcode.RDMA_WRITE, (Sge(mr, 0, 1 << 20),), remote_addr=peer["addr"], rkey=peer["rkey"]),
                SendWR(3, WrOpcode.SEND, (Sge(mr, 0, 44),)),
            ])  # fmt: skip
            got = poll_wait(cq, 2, 60)
            assert [(w.wr_id, w.ok) for w in got] == [(2, True), (3, True)]
            exchange({"sha": hashlib.sha256(data).hexdigest()})
        else:
            (wc,) = poll_wait(cq, 1, 60)
            assert (wc.wr_id, wc.opcode, wc.byte_len, wc.ok) == (1, WcOpcode.RECV, 44, True)
            sent = exchange({})
            assert hashlib.sha256(mr.buf).hexdigest() == sent["sha"]
    finally:
        dev.close()
