"""Measure how rxe's RC transport really behaves, through the pyverbs provider.

Runs inside lab VMs and prints one ``PROBE {json}`` line per fact. The facts feed the
provider conformance suite (what a soft provider must imitate); nothing here asserts.

    python tests/lab/lab.py '.venv/bin/python tests/lab/rc_probe.py local'
    run_pair('... rc_probe.py pair', same)      # VM a = requester, VM b = responder
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from stack.verbs.api import (  # noqa: E402
    Access,
    QPCap,
    RCPath,
    RecvWR,
    SendWR,
    Sge,
    WrOpcode,
    local_ack_timeout,
    poll_wait,
)
from stack.verbs.pyverbs_provider import PyverbsProvider  # noqa: E402

ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


def report(name: str, **facts) -> None:
    print("PROBE " + json.dumps({"probe": name, **facts}, default=str), flush=True)


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def rxe_counters() -> dict[str, int]:
    out = sh("rdma statistic show link rxe0/1").split()
    return {k: int(v) for k, v in zip(out, out[1:]) if v.isdigit()}


@dataclass
class End:
    qp: object
    cq: object
    mr: object
    psn: int


class Lab:
    def __init__(self) -> None:
        self.dev = PyverbsProvider().open_device("rxe0")
        self.pd = self.dev.alloc_pd()
        self.gid = self.dev.roce_v2_gid()

    def end(self, size: int = 65536) -> End:
        cq = self.dev.create_cq(256)
        qp = self.pd.create_rc_qp(cq, cq, QPCap(max_send_wr=64, max_recv_wr=64))
        qp.to_init(ACCESS)
        return End(qp, cq, self.pd.reg_mr(size, ACCESS), random.getrandbits(24))

    def connect(self, me: End, qpn: int, psn: int, gid: bytes, **path) -> None:
        p = RCPath(remote_qpn=qpn, remote_psn=psn, local_psn=me.psn, remote_gid=gid, sgid_index=self.gid.index, **path)
        me.qp.to_rtr(p)
        me.qp.to_rts(p)

    def pair(self, **path) -> tuple[End, End]:
        a, b = self.end(), self.end()
        self.connect(a, b.qp.qp_num, b.psn, self.gid.gid, **path)
        self.connect(b, a.qp.qp_num, a.psn, self.gid.gid, **path)
        return a, b


def wait_one(cq, timeout: float):
    t0 = time.monotonic()
    got = poll_wait(cq, 1, timeout)
    return (got[0] if got else None), time.monotonic() - t0


def port_down_local(lab: Lab, timeout: int, retry_cnt: int) -> None:
    """(a) loopback on one rxe0: eth0 down, then SEND and WRITE on pairs connected before."""
    a, b = lab.pair(timeout=timeout, retry_cnt=retry_cnt)
    a2, b2 = lab.pair(timeout=timeout, retry_cnt=retry_cnt)
    b.qp.post_recv(RecvWR(1, (Sge(b.mr, 0, 64),)))
    before = rxe_counters()
    sh("ip link set eth0 down")
    time.sleep(0.2)
    port = lab.dev.query_port()
    events = lab.dev.poll_events()
    gids = [(g.index, g.gid.hex(), g.type) for g in lab.dev.gid_table()]
    a.qp.post_send(SendWR(2, WrOpcode.SEND, (Sge(a.mr, 0, 44),)))
    wc, dt = wait_one(a.cq, 60)
    a2.qp.post_send(SendWR(3, WrOpcode.RDMA_WRITE, (Sge(a2.mr, 0, 4096),), remote_addr=b2.mr.addr, rkey=b2.mr.rkey))
    wc2, dt2 = wait_one(a2.cq, 60)
    try:
        lab.pair(timeout=timeout, retry_cnt=retry_cnt)
        new_pair = "connected"
    except Exception as exc:
        new_pair = repr(exc)
    after = rxe_counters()
    sh("ip link set eth0 up")
    time.sleep(0.5)
    report(
        "port_down_loopback", timeout=timeout, retry_cnt=retry_cnt,
        expected_s=round(local_ack_timeout(timeout) * (retry_cnt + 1), 3),
        port_state_while_down=port.state.name, events_down=[e.type.name for e in events], gids_while_down=gids,
        send=dict(status=wc and wc.status.name, vendor_err=wc and wc.vendor_err, seconds=round(dt, 3)),
        write=dict(status=wc2 and wc2.status.name, vendor_err=wc2 and wc2.vendor_err, seconds=round(dt2, 3)),
        qp_states_after=(a.qp.state().name, b.qp.state().name, a2.qp.state().name, b2.qp.state().name),
        connect_new_pair_while_down=new_pair,
        counters_delta={k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)},
        events_up=[e.type.name for e in lab.dev.poll_events()], port_state_after_up=lab.dev.query_port().state.name,
    )  # fmt: skip


def inflight_port_down(lab: Lab, timeout: int = 14, retry_cnt: int = 7) -> None:
    """(a) a SEND already in flight (RNR-retrying: no receive posted) when eth0 goes down."""
    a, b = lab.pair(timeout=timeout, retry_cnt=retry_cnt, rnr_retry=7, min_rnr_timer=12)
    a.qp.post_send(SendWR(1, WrOpcode.SEND, (Sge(a.mr, 0, 16),)))
    early, _ = wait_one(a.cq, 0.3)
    sh("ip link set eth0 down")
    wc, dt = wait_one(a.cq, 20)
    b.qp.post_recv(RecvWR(2, (Sge(b.mr, 0, 64),)))
    late, _ = wait_one(a.cq, 2) if wc is None else (None, 0)
    sh("ip link set eth0 up")
    time.sleep(0.5)
    lab.dev.poll_events()
    report(
        "inflight_port_down_loopback", timeout=timeout, retry_cnt=retry_cnt, before_down=early and early.status.name,
        status=wc and wc.status.name, seconds=round(dt, 3), after_recv_posted=late and late.status.name,
        qp_state=a.qp.state().name,
    )  # fmt: skip


def netem_loopback(lab: Lab) -> None:
    """(b) does netem on eth0 touch rxe loopback at all?"""
    sh("tc qdisc add dev eth0 root netem loss 5%")
    before, qdisc_before = rxe_counters(), sh("tc -s qdisc show dev eth0")
    a, b = lab.pair(timeout=14)
    data = os.urandom(65536)
    a.mr.buf[:] = data
    n, t0, bad = 100, time.monotonic(), 0
    for i in range(n):
        b.mr.buf[:] = bytes(65536)
        a.qp.post_send(SendWR(i, WrOpcode.RDMA_WRITE, (Sge(a.mr, 0, 65536),), remote_addr=b.mr.addr, rkey=b.mr.rkey))
        wc, _ = wait_one(a.cq, 30)
        bad += wc is None or not wc.ok or bytes(b.mr.buf) != data
    after = rxe_counters()
    report(
        "netem_loss_loopback", writes=n, bytes_each=65536, seconds=round(time.monotonic() - t0, 3), failed=bad,
        counters_delta={k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)},
        qdisc_before=qdisc_before, qdisc_after=sh("tc -s qdisc show dev eth0"),
    )  # fmt: skip
    sh("tc qdisc del dev eth0 root")


def rnr(lab: Lab) -> None:
    """(d) SEND with no receive posted: rnr_retry 7 waits, rnr_retry 1 fails."""
    a, b = lab.pair(rnr_retry=7, min_rnr_timer=12)
    a.qp.post_send(SendWR(1, WrOpcode.SEND, (Sge(a.mr, 0, 16),)))
    early, _ = wait_one(a.cq, 1.0)
    b.qp.post_recv(RecvWR(2, (Sge(b.mr, 0, 64),)))
    wc, dt = wait_one(a.cq, 30)
    got, _ = wait_one(b.cq, 5)
    r7 = dict(completed_before_recv=early and early.status.name, status=wc and wc.status.name,
              seconds_after_recv=round(dt, 3), recv=got and got.status.name)  # fmt: skip
    results = {}
    for timer in (1, 14, 24):
        a, b = lab.pair(rnr_retry=1, min_rnr_timer=timer)
        t0 = time.monotonic()
        a.qp.post_send(SendWR(1, WrOpcode.SEND, (Sge(a.mr, 0, 16),)))
        wc, _ = wait_one(a.cq, 30)
        results[timer] = dict(status=wc and wc.status.name, seconds=round(time.monotonic() - t0, 3),
                              qp_state=a.qp.state().name, responder_state=b.qp.state().name)  # fmt: skip
    report("rnr", rnr_retry_7=r7, rnr_retry_1_by_min_rnr_timer=results)


def flush_rules(lab: Lab) -> None:
    """Which WRs flush, and when, after a REM_ACCESS_ERR (rxe's user QPs)."""
    a, b = lab.pair()
    a.qp.post_recv(RecvWR(10, (Sge(a.mr, 0, 64),)))  # posted before the error
    b.qp.post_recv(RecvWR(11, (Sge(b.mr, 0, 64),)))
    a.qp.post_send([
        SendWR(12, WrOpcode.RDMA_WRITE, (Sge(a.mr, 0, 64),), remote_addr=b.mr.addr, rkey=b.mr.rkey ^ 0x100),
        SendWR(13, WrOpcode.SEND, (Sge(a.mr, 0, 8),)),
    ])  # fmt: skip
    first = poll_wait(a.cq, 3, 3.0)
    a.qp.post_send(SendWR(14, WrOpcode.SEND, (Sge(a.mr, 0, 8),)))
    a.qp.post_recv(RecvWR(15, (Sge(a.mr, 0, 64),)))
    later = poll_wait(a.cq, 2, 3.0)
    a.qp.to_error()  # an explicit modify to ERR: does it flush the late receive?
    after_modify = poll_wait(a.cq, 1, 3.0)
    report(
        "flush_after_rem_access_err",
        requester=[(w.wr_id, w.status.name, w.opcode.name, w.vendor_err) for w in first],
        posted_after_err=[(w.wr_id, w.status.name, w.opcode.name) for w in later],
        after_explicit_to_error=[(w.wr_id, w.status.name, w.opcode.name) for w in after_modify],
        requester_state=a.qp.state().name, responder_state=b.qp.state().name,
        responder_cq=[(w.wr_id, w.status.name, w.opcode.name) for w in poll_wait(b.cq, 1, 2.0)],
    )  # fmt: skip


def queue_limits(lab: Lab) -> None:
    """What posting past max_send_wr / max_recv_wr does (caps are rounded up by rxe)."""
    cq = lab.dev.create_cq(256)
    qp = lab.pd.create_rc_qp(cq, cq, QPCap(max_send_wr=10, max_recv_wr=10))
    mr = lab.pd.reg_mr(4096, ACCESS)
    qp.to_init(ACCESS)
    posted, err = 0, None
    try:
        for i in range(qp.cap.max_recv_wr + 2):
            qp.post_recv(RecvWR(i, (Sge(mr, 0, 16),)))
            posted += 1
    except Exception as exc:
        err = repr(exc)
    report("queue_limits", requested=(10, 10), cap=qp.cap.__dict__, recv_posted_before_error=posted, error=err)


def many_qps(lab: Lab, count: int = 100) -> None:
    """(e) create and connect ``count`` RC QPs (count/2 loopback pairs)."""
    t0 = time.monotonic()
    cq = lab.dev.create_cq(1024)
    ends = []
    for _ in range(count):
        qp = lab.pd.create_rc_qp(cq, cq, QPCap(max_send_wr=16, max_recv_wr=48))
        ends.append(End(qp, cq, None, random.getrandbits(24)))
    t1 = time.monotonic()
    for e in ends:
        e.qp.to_init(ACCESS)
    for x, y in zip(ends[::2], ends[1::2]):
        lab.connect(x, y.qp.qp_num, y.psn, lab.gid.gid)
        lab.connect(y, x.qp.qp_num, x.psn, lab.gid.gid)
    t2 = time.monotonic()
    for e in ends:
        e.qp.destroy()
    t3 = time.monotonic()
    report("many_qps", count=count, create_s=round(t1 - t0, 3), connect_s=round(t2 - t1, 3),
           destroy_s=round(t3 - t2, 3))  # fmt: skip


# ---- two VMs: a = requester (10.2.0.1), b = responder (10.2.0.2); parameters over TCP


def _exchange(mine: dict) -> dict:
    role, peer = os.environ["LAB_VM"], os.environ["LAB_PEER_IP"]
    if role == "b":
        with socket.create_server(("0.0.0.0", 7000)) as srv:
            conn, _ = srv.accept()
    else:
        for _ in range(300):
            try:
                conn = socket.create_connection((peer, 7000), timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("peer never listened")
    with conn:
        conn.sendall(json.dumps(mine).encode() + b"\n")
        return json.loads(conn.makefile().readline())


def _sync(tag: str) -> None:
    """Both VMs reach ``tag`` before either goes on (a tiny barrier over TCP)."""
    assert _exchange({"sync": tag})["sync"] == tag


DOWN_S = 8  # how long b's link stays down in remote_down


def pair_probe(lab: Lab) -> None:
    role = os.environ["LAB_VM"]
    runs = [("remote_down", 14, 7), ("remote_down", 14, 3), ("remote_down", 15, 3), ("remote_down", 14, 1),
            ("local_down", 14, 7)]  # fmt: skip
    for scenario, timeout, retry_cnt in runs:
        tag = f"{scenario}-{timeout}-{retry_cnt}"
        me = lab.end()
        peer = _exchange(dict(qpn=me.qp.qp_num, psn=me.psn, gid=lab.gid.gid.hex(), addr=me.mr.addr, rkey=me.mr.rkey))
        lab.connect(me, peer["qpn"], peer["psn"], bytes.fromhex(peer["gid"]), timeout=timeout, retry_cnt=retry_cnt)
        _sync(f"{tag}-ready")  # the last TCP exchange before a link goes down
        if role == "b":
            if scenario == "remote_down":  # a's requests now vanish at b
                sh(f"ip link set eth0 down; sleep {DOWN_S}; ip link set eth0 up")
            _sync(f"{tag}-done")
            continue
        if scenario == "local_down":
            sh("ip link set eth0 down")
        time.sleep(0.5)
        state = lab.dev.query_port().state.name
        me.qp.post_send(SendWR(1, WrOpcode.RDMA_WRITE, (Sge(me.mr, 0, 4096),), remote_addr=peer["addr"],
                               rkey=peer["rkey"]))  # fmt: skip
        wc, dt = wait_one(me.cq, 60)
        report(
            f"pair_{scenario}", timeout=timeout, retry_cnt=retry_cnt, port_state=state, peer_down_for_s=DOWN_S,
            expected_s=round(local_ack_timeout(timeout) * (retry_cnt + 1), 3), status=wc and wc.status.name,
            seconds=round(dt, 3), qp_state=me.qp.state().name, events=[e.type.name for e in lab.dev.poll_events()],
        )  # fmt: skip
        sh("ip link set eth0 up")
        time.sleep(0.5)
        lab.dev.poll_events()
        _sync(f"{tag}-done")
    me = lab.end()
    peer = _exchange(dict(qpn=me.qp.qp_num, psn=me.psn, gid=lab.gid.gid.hex(), addr=me.mr.addr, rkey=me.mr.rkey))
    lab.connect(me, peer["qpn"], peer["psn"], bytes.fromhex(peer["gid"]), timeout=14, retry_cnt=7)
    _netem_pair(role, me, peer)


def _netem_pair(role: str, me: End, peer: dict) -> None:
    """WRITE then SEND, n times, with 5% loss both ways; b checks every byte."""
    size, n, slot = 32000, 50, 64000  # two alternating WRITE targets, then the SEND's slot
    sh("tc qdisc add dev eth0 root netem loss 5%")
    before = rxe_counters()
    _sync("netem-on")
    t0, bad = time.monotonic(), 0
    if role == "a":
        for i in range(n):
            off = (i % 2) * size
            me.mr.buf[off : off + size] = bytes([i]) * size
            me.qp.post_send([
                SendWR(i, WrOpcode.RDMA_WRITE, (Sge(me.mr, off, size),), remote_addr=peer["addr"] + off,
                       rkey=peer["rkey"]),
                SendWR(1000 + i, WrOpcode.SEND, (Sge(me.mr, off, 4),)),
            ])  # fmt: skip
            wcs = poll_wait(me.cq, 2, 60)
            bad += len(wcs) != 2 or not all(w.ok for w in wcs)
    else:
        # b posts receive i+1 only after checking i, so a cannot overwrite a slot in use
        for i in range(n):
            off = (i % 2) * size
            me.qp.post_recv(RecvWR(i, (Sge(me.mr, slot, 64),)))
            wc, _ = wait_one(me.cq, 60)
            bad += not (wc and wc.ok and bytes(me.mr.buf[off : off + size]) == bytes([i]) * size)
    secs = time.monotonic() - t0
    after = rxe_counters()
    sh("tc qdisc del dev eth0 root")
    _sync("netem-done")
    report(
        f"pair_netem_loss_{role}", transfers=n, bytes_each=size, seconds=round(secs, 3), bad=bad,
        counters_delta={k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)},
    )  # fmt: skip


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "local"
    lab = Lab()
    if what == "local":
        flush_rules(lab)
        queue_limits(lab)
        many_qps(lab)
        rnr(lab)
        netem_loopback(lab)
        inflight_port_down(lab)
        port_down_local(lab, timeout=14, retry_cnt=7)
    elif what == "portdown":
        inflight_port_down(lab)
        inflight_port_down(lab, retry_cnt=3)
        port_down_local(lab, timeout=14, retry_cnt=7)
        port_down_local(lab, timeout=15, retry_cnt=7)
    elif what == "pair":
        pair_probe(lab)
    else:
        raise SystemExit(f"unknown probe set {what!r}")
    lab.dev.close()  # in order: pyverbs' own finalizers at exit close CQs before their QPs


if __name__ == "__main__":
    main()
