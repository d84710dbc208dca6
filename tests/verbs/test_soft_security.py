"""The soft device against a hostile local user (issue #15, items 1 and 2).

A second user on the host must not be able to take the device's UDP port, and a frame
forged from the peer's address (any UDP source port: RoCE receivers, like RNICs, do not
check it) must name the QP, the expected PSN and the rkey, all drawn from the CSPRNG,
before it touches memory. Frames far outside the PSN window are counted per QP, dropped
without an answer and, past a budget a second, not examined at all.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time

import pytest
from support.stacks import addrs
from support.verbs_endpoint import Endpoint

from native import softroce
from stack.verbs.soft import rc
from stack.wire import roce
from stack.wire.roce import Bth, Opcode, Reth, RocePacket

ENGINES = ["python", pytest.param("native", marks=pytest.mark.skipif(not softroce.available()[0], reason="native/build.sh not run"))]

# A process that tries what an attacker would: bind the device's address and port, with
# every sharing option the kernel offers. Standard library only: it runs as user nobody.
_BIND = """
import socket, sys
for opts in ((), (socket.SO_REUSEADDR,), (socket.SO_REUSEADDR, socket.SO_REUSEPORT)):
    for addr in (sys.argv[1], "0.0.0.0"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for o in opts:
            s.setsockopt(socket.SOL_SOCKET, o, 1)
        try:
            s.bind((addr, 4791))
        except OSError as e:
            print(addr, len(opts), e.errno)
        else:
            print(addr, len(opts), "BOUND")
        s.close()
"""


def _attempts(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_one_else_can_bind_the_devices_port(engine):
    """With SO_REUSEADDR on the device's socket any local user could bind the same address and
    port and the kernel handed them the traffic; now every attempt is refused (EADDRINUSE)."""
    addr = addrs()[0]
    dev = Endpoint("soft", addr, engine=engine)
    try:
        same_user = subprocess.run(["python3", "-I", "-c", _BIND, addr], capture_output=True, text=True, timeout=30)
        lines = _attempts(same_user.stdout)
        assert len(lines) == 6, same_user.stderr
        assert all(line.endswith(str(errno.EADDRINUSE)) for line in lines), lines
        if os.geteuid() != 0:
            pytest.skip("the second-user half needs root to become nobody")
        other = subprocess.run(["/usr/bin/python3", "-I", "-c", _BIND, addr], capture_output=True, text=True, timeout=30,
                               user=65534, group=65534, extra_groups=[], cwd="/")  # fmt: skip
        lines = _attempts(other.stdout)
        assert len(lines) == 6, other.stderr
        assert all(line.endswith(str(errno.EADDRINUSE)) for line in lines), lines
    finally:
        dev.close()


def _identifiers(engine: str) -> tuple:
    e = Endpoint("soft", addrs()[0], engine=engine)
    try:
        qp = e.create_qp()
        mr = e.reg_mr(4096)
        return qp["qpn"], mr["rkey"], mr["addr"]
    finally:
        e.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_keys_qp_numbers_and_addresses_do_not_repeat(engine):
    """They were derived from the device's IP address: the same on every run, computable in
    advance. Now four devices on one address in a row share none of them."""
    seen = [_identifiers(engine) for _ in range(4)]
    for i in range(3):
        assert len({s[i] for s in seen}) == 4, seen
    for qpn, _rkey, addr in seen:
        assert 2 <= qpn < 1 << 24 and addr % 4096 == 0 and addr < 1 << 47


class _Forger:
    """A socket on the peer's IP address but its own UDP port, as another local user can open."""

    def __init__(self, peer_ip: str, victim_ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((peer_ip, 0))
        self.src, self.sport = self.sock.getsockname()
        self.victim = victim_ip

    def write(self, qpn: int, psn: int, addr: int, rkey: int, data: bytes) -> None:
        packet = RocePacket(Bth(Opcode.RDMA_WRITE_ONLY, qpn, psn & 0xFFFFFF, ackreq=True), reth=Reth(addr, rkey, len(data)), payload=data)
        self.sock.sendto(roce.encode_datagram(packet, self.src, self.victim, self.sport), (self.victim, roce.ROCE_V2_PORT))

    def close(self) -> None:
        self.sock.close()


def _wait(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("engine", ENGINES)
def test_a_forged_write_needs_the_psn(engine):
    """A frame from the peer's IP but another UDP port, with the right QPN, rkey and address
    but a PSN outside the window, writes nothing, is counted per QP and answered with nothing;
    a burst past the budget is not examined; the real peer's traffic still flows. With the
    exact PSN the frame is accepted, as an RNIC would (RoCE has no authentication)."""
    pa, pb = addrs()
    a, b = Endpoint("soft", pa, engine=engine), Endpoint("soft", pb, engine=engine)
    forger = _Forger(pb, pa)
    try:
        qa, qb = a.create_qp(), b.create_qp()
        a.connect(qa["handle"], qa, qb)
        b.connect(qb["handle"], qb, qa)
        region = a.reg_mr(4096)
        a.write_mem(region["handle"], 0, b"\0" * 4096)
        epsn = qb["psn"]  # what a's QP expects next from b

        forger.write(qa["qpn"], epsn + 100_000, region["addr"], region["rkey"], b"EVIL")
        assert _wait(lambda: a.qp_stats(qa["handle"]).get("psn_out_of_window") == 1)
        assert a.read_mem(region["handle"], 0, 4) == b"\0\0\0\0"
        assert a.stats()["psn_out_of_window"] == 1

        burst = rc.SUSPECT_PER_SECOND + 500
        for i in range(burst):
            forger.write(qa["qpn"], epsn + 1000 + i * 7919, region["addr"], region["rkey"], b"EVIL")
        assert _wait(lambda: sum(a.qp_stats(qa["handle"]).get(k, 0) for k in ("psn_out_of_window", "suspect_ignored")) == burst + 1)
        stats = a.qp_stats(qa["handle"])
        assert stats["suspect_ignored"] > 0  # 1,500 frames in well under the second the budget spans
        assert stats["psn_out_of_window"] <= burst + 1 - stats["suspect_ignored"]
        assert a.read_mem(region["handle"], 0, 4) == b"\0\0\0\0"
        assert b.stats()["rx_frames"] == 0  # nothing was answered: no ACK, no NAK reached the peer

        # the honest peer is unaffected
        src = b.reg_mr(4096)
        b.write_mem(src["handle"], 0, b"GOOD")
        b.post_send(qb["handle"], 1, 0, [(src["handle"], 0, 4)], remote_addr=region["addr"], rkey=region["rkey"])
        (wc,), _ = b.poll(1, 10)
        assert wc.status == 0 and a.read_mem(region["handle"], 0, 4) == b"GOOD"

        # the exact next PSN (learnable only by someone who sees the traffic) is accepted
        forger.write(qa["qpn"], epsn + 1, region["addr"], region["rkey"], b"OWND")
        assert _wait(lambda: a.read_mem(region["handle"], 0, 4) == b"OWND")
    finally:
        forger.close()
        a.close()
        b.close()


class _Host:
    def __init__(self) -> None:
        self.counted: list[str] = []

    def count(self, stat: str) -> None:
        self.counted.append(stat)


def test_the_suspect_budget_is_per_second():
    """The budget's arithmetic, with time passed in: SUSPECT_PER_SECOND examined in a second,
    the rest ignored, and a new second starts a new budget."""
    qp = rc.SoftQP.__new__(rc.SoftQP)
    qp.host = _Host()
    qp.stats = {"psn_out_of_window": 0, "suspect_ignored": 0}
    qp._suspect_second, qp._suspect_count = 0.0, 0
    results = [qp.suspect(100.0 + i * 1e-4) for i in range(rc.SUSPECT_PER_SECOND + 10)]
    assert results.count(True) == rc.SUSPECT_PER_SECOND and results[-10:] == [False] * 10
    assert qp.stats == {"psn_out_of_window": rc.SUSPECT_PER_SECOND, "suspect_ignored": 10}
    assert qp.suspect(101.5) is True and qp.stats["psn_out_of_window"] == rc.SUSPECT_PER_SECOND + 1
    assert qp.host.counted.count("suspect_ignored") == 10
