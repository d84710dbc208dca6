"""What only the soft provider has: real RoCEv2 frames on a real socket, the frame tap,
fault injection, network namespaces, and its own input checks; on both its engines
(the compiled one of native/softroce and the pure-Python twin)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
from support import tshark
from support.stacks import addrs
from support.verbs_endpoint import Endpoint

from dissectors.pcapng import read_packets
from stack.verbs import VerbsError, open_provider
from stack.verbs.api import Mtu, WcStatus, WrOpcode
from stack.wire import cdc, llc, roce
from stack.wire.roce import AckKind, Opcode

SEND, WRITE = int(WrOpcode.SEND), int(WrOpcode.RDMA_WRITE)


ENGINES = ["python", "native"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def ends(engine):
    pa, pb = addrs()
    a, b = Endpoint("soft", pa, engine=engine), Endpoint("soft", pb, engine=engine)
    assert a.engine() == b.engine() == engine
    yield a, b
    a.close()
    b.close()


def connect(a, b, a_path=None, b_path=None, **kw):
    qa, qb = a.create_qp(**kw), b.create_qp(**kw)
    if a_path and "psn" in a_path:
        qa["psn"] = a_path.pop("psn")
    a.connect(qa["handle"], qa, qb, **(a_path or {}))
    b.connect(qb["handle"], qb, qa, **(b_path or {}))
    return qa, qb


def test_every_frame_is_rocev2_with_a_correct_icrc(ends):
    a, b = ends
    frames = []
    a.device.add_tap(frames.append)
    qa, qb = connect(a, b)
    src, dst = a.reg_mr(70000), b.reg_mr(70000)
    a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, 70000)], remote_addr=dst["addr"], rkey=dst["rkey"])
    assert a.poll(1, 5)[0][0].status == WcStatus.SUCCESS
    a.device.flush_taps()
    tx = [f for f in frames if f.direction == "tx"]
    rx = [f for f in frames if f.direction == "rx"]
    assert len(tx) == 69 and rx, (len(tx), len(rx))  # 70000 bytes at MTU 1024
    for f in tx + rx:
        roce.decode_datagram(f.payload, f.src, f.dst, f.sport, f.dport, check_icrc=True)
        assert f.dport == roce.ROCE_V2_PORT and f.dropped is None
    ops = [roce.decode_packet(f.payload[:-4]).bth.opcode for f in tx]
    assert ops[0] == Opcode.RDMA_WRITE_FIRST and ops[-1] == Opcode.RDMA_WRITE_LAST
    assert set(ops[1:-1]) == {Opcode.RDMA_WRITE_MIDDLE}
    psns = [roce.decode_packet(f.payload[:-4]).bth.psn for f in tx]
    assert psns == [(qa["psn"] + i) & 0xFFFFFF for i in range(69)]
    # ACKs are coalesced: one per 32 packets plus the last, not one per packet
    acks = [roce.decode_packet(f.payload[:-4]) for f in rx]
    assert all(p.bth.opcode == Opcode.ACKNOWLEDGE and p.aeth.kind == AckKind.ACK for p in acks)
    assert len(acks) == 3
    assert b.stats()["icrc_errors"] == 0


def test_psn_wraps_around(ends):
    a, b = ends
    qa, qb = connect(a, b, a_path={"psn": 0xFFFFF0})
    src, dst = a.reg_mr(1 << 16), b.reg_mr(1 << 16)
    a.write_mem(src["handle"], 0, os.urandom(1 << 16))
    a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, 1 << 16)], remote_addr=dst["addr"], rkey=dst["rkey"])
    assert a.poll(1, 5)[0][0].status == WcStatus.SUCCESS
    assert b.read_mem(dst["handle"], 0, 1 << 16) == a.read_mem(src["handle"], 0, 1 << 16)


def test_dropped_frames_are_tapped_with_the_reason_and_retransmitted(ends):
    a, b = ends
    frames = []
    a.device.add_tap(frames.append)
    qa, qb = connect(a, b, a_path={"timeout": 10})
    src, dst = a.reg_mr(8192), b.reg_mr(8192)
    a.write_mem(src["handle"], 0, b"x" * 8192)
    a.set_faults(drop_next=3)
    a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, 8192)], remote_addr=dst["addr"], rkey=dst["rkey"])
    assert a.poll(1, 5)[0][0].status == WcStatus.SUCCESS
    a.device.flush_taps()
    assert [f.dropped for f in frames if f.dropped] == ["drop-next"] * 3
    assert b.read_mem(dst["handle"], 0, 8192) == b"x" * 8192
    assert a.qp_stats(qa["handle"])["retransmits"] >= 1


def test_delay_holds_frames_back(ends):
    a, b = ends
    qa, qb = connect(a, b)
    src, dst = a.reg_mr(64), b.reg_mr(64)
    b.post_recv(qb["handle"], 1, [(dst["handle"], 0, 64)])
    a.set_faults(delay=0.2)
    start = time.monotonic()
    a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 44)])
    assert b.poll(1, 5)[0][0].status == WcStatus.SUCCESS
    assert time.monotonic() - start >= 0.2


def test_frames_from_a_stranger_or_with_a_bad_icrc_are_dropped(ends):
    a, b = ends
    qa, qb = connect(a, b)
    dst = b.reg_mr(4096)
    b.write_mem(dst["handle"], 0, b"\x11" * 4096)
    evil = roce.RocePacket(roce.Bth(Opcode.RDMA_WRITE_ONLY, qb["qpn"], qa["psn"], ackreq=True),
                           reth=roce.Reth(dst["addr"], dst["rkey"], 16), payload=b"\xee" * 16)  # fmt: skip
    target = (b.device.addr, roce.ROCE_V2_PORT)
    # right QPN, PSN and rkey, but from an address the QP is not connected to
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.73.0.1", 0))
    stranger.sendto(roce.encode_datagram(evil, "127.73.0.1", b.device.addr, stranger.getsockname()[1]), target)
    # from the right address, but with a corrupted ICRC
    neighbour = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    neighbour.bind((a.device.addr, 0))
    good = bytearray(roce.encode_datagram(evil, a.device.addr, b.device.addr, neighbour.getsockname()[1]))
    good[-1] ^= 0xFF
    neighbour.sendto(bytes(good), target)
    neighbour.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (b.stats()["unknown_qp"] < 1 or b.stats()["icrc_errors"] < 1):
        time.sleep(0.01)
    stranger.close()
    assert b.stats()["unknown_qp"] == 1 and b.stats()["icrc_errors"] == 1
    assert b.read_mem(dst["handle"], 0, 4096) == b"\x11" * 4096


def test_device_errors_are_clear(engine):
    p = open_provider("soft", engine=engine)
    with pytest.raises(VerbsError, match="give an IPv4 address"):
        p.open_device("rxe0")
    with pytest.raises(VerbsError, match="cannot bind 192.0.2.1:4791"):
        p.open_device("192.0.2.1")
    addr = addrs()[0]
    dev = p.open_device(addr)
    try:
        with pytest.raises(VerbsError, match="already open"):
            p.open_device(addr)
        with pytest.raises(VerbsError, match="one port"):
            dev.query_port(2)
        assert dev.roce_v2_gid().gid == ipaddress.IPv6Address(f"::ffff:{addr}").packed
        assert dev.query_port().active_mtu == Mtu.MTU_1024
    finally:
        p.close()
    with pytest.raises(VerbsError, match="network namespace 'no-such-ns' not found"):
        open_provider("soft", engine=engine).open_device("x", addr="10.0.0.1", netns="no-such-ns")


@pytest.fixture
def two_namespaces():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2 (CI runs as root)")
    tag = uuid.uuid4().hex[:6]
    ns = (f"smct-{tag}-a", f"smct-{tag}-b")

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        for n in ns:
            ip("netns", "add", n)
        ip("link", "add", f"va{tag}", "netns", ns[0], "type", "veth", "peer", "name", f"vb{tag}", "netns", ns[1])
        for n, dev, addr in ((ns[0], f"va{tag}", "10.77.0.1/24"), (ns[1], f"vb{tag}", "10.77.0.2/24")):
            ip("-n", n, "addr", "add", addr, "dev", dev)
            ip("-n", n, "link", "set", dev, "up")
            ip("-n", n, "link", "set", "lo", "up")
        yield ns
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_devices_in_two_network_namespaces(two_namespaces, engine):
    a = Endpoint("soft", "ra", addr="10.77.0.1", netns=two_namespaces[0], engine=engine)
    b = Endpoint("soft", "rb", addr="10.77.0.2", netns=two_namespaces[1], engine=engine)
    try:
        qa, qb = connect(a, b)
        src, dst = a.reg_mr(100_000), b.reg_mr(100_000)
        data = os.urandom(100_000)
        a.write_mem(src["handle"], 0, data)
        a.post_send(qa["handle"], 1, WRITE, [(src["handle"], 0, 100_000)], remote_addr=dst["addr"], rkey=dst["rkey"])
        assert a.poll(1, 10)[0][0].status == WcStatus.SUCCESS
        assert b.read_mem(dst["handle"], 0, 100_000) == data
    finally:
        a.close()
        b.close()


def test_tshark_decodes_a_live_capture_of_lo(tmp_path, ends):
    """tshark, capturing lo while the provider sends LLC and CDC as SENDs and an RDMA WRITE,
    decodes InfiniBand with our opcodes, QPNs and PSNs, and SMC for the LLC and CDC payloads."""
    a, b = ends
    if os.geteuid() != 0:
        pytest.skip("capturing lo needs root (CI runs as root)")
    out = tmp_path / "lo.pcapng"
    cap = subprocess.Popen(
        [tshark.tshark_path(), "-i", "lo", "-f", f"udp port 4791 and host {a.device.addr}", "-w", str(out)],
        stderr=subprocess.PIPE, text=True, env=tshark.env(),
    )  # fmt: skip
    try:
        for line in cap.stderr:  # dumpcap reports "Capture started" once packets are being taken
            if "Capture started" in line:
                break
        time.sleep(0.2)
        qa, qb = connect(a, b)
        src, dst = a.reg_mr(8192), b.reg_mr(8192)
        cl = llc.ConfirmLink(mac=bytes(6), gid=a.gid.gid, qpn=qa["qpn"], link_num=1, link_uid=b"\0\0\1\1").encode()
        cd = cdc.CdcMessage(seqno=1, token=0x42, prod=cdc.Cursor(0, 3000)).encode()
        a.write_mem(src["handle"], 0, cl)
        a.write_mem(src["handle"], 64, cd)
        for i in range(2):
            b.post_recv(qb["handle"], i, [(dst["handle"], 4096 + i * 64, 64)])
        a.post_send(qa["handle"], 1, SEND, [(src["handle"], 0, 44)], solicited=True)
        a.post_send(qa["handle"], 2, WRITE, [(src["handle"], 1000, 3000)], remote_addr=dst["addr"], rkey=dst["rkey"])
        a.post_send(qa["handle"], 3, SEND, [(src["handle"], 64, 44)], solicited=True)
        assert len(a.poll(3, 5)[0]) == 3
        time.sleep(0.3)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
    frames = tshark.decode(str(out))
    psn = qa["psn"]
    sent = [f for f in frames if f.ib and int(f.ib["infiniband.bth.opcode"]) != Opcode.ACKNOWLEDGE]
    got = [(int(f.ib["infiniband.bth.opcode"]), int(f.ib["infiniband.bth.destqp"], 16), int(f.ib["infiniband.bth.psn"])) for f in sent]
    assert got == [
        (Opcode.SEND_ONLY, qb["qpn"], psn),
        (Opcode.RDMA_WRITE_FIRST, qb["qpn"], psn + 1),
        (Opcode.RDMA_WRITE_MIDDLE, qb["qpn"], psn + 2),
        (Opcode.RDMA_WRITE_LAST, qb["qpn"], psn + 3),
        (Opcode.SEND_ONLY, qb["qpn"], psn + 4),
    ]
    assert [int(f.smc[0]["smc.llc_msg"], 0) for f in sent if f.smc] == [0x01, 0xFE]
    assert int(sent[1].ib["infiniband.reth.r_key"], 16) == dst["rkey"] and int(sent[1].ib["infiniband.reth.dmalen"]) == 3000
    assert not any(f.malformed for f in frames)
    # the ICRC we computed before sending is right on the real wire (IP id 0, DF)
    for pkt in read_packets(out.read_bytes()):
        assert roce.decode_frame(pkt.data, check_icrc=True).icrc_ok


def test_frames_stay_in_order_when_the_application_and_the_engine_both_receive():
    """The compiled engine's thread drains the socket when the application has not polled
    for a while, and the application's rx_poll takes over again: two receivers of one
    socket. The frames of one dequeue must not overtake those of an earlier one, or the
    responder sees a PSN gap on a lossless loopback and NAKs it (each go-back is a
    retransmission an operator would read as loss). b's application polls in bursts with
    pauses longer than the engine's grace, so the hand-over happens hundreds of times."""
    pa, pb = addrs()
    a, b = Endpoint("soft", pa, engine="native"), Endpoint("soft", pb, engine="native")
    stop = threading.Event()
    poller = None
    try:
        qa, qb = connect(a, b, max_send_wr=256)
        src, dst = a.reg_mr(4096), b.reg_mr(4096)

        def application():
            while not stop.is_set():
                end = time.monotonic() + 0.002
                while time.monotonic() < end:
                    b.device.rx_poll()
                time.sleep(0.0012)  # longer than the engine's grace (1 ms): its thread takes the socket

        poller = threading.Thread(target=application, daemon=True)
        poller.start()
        sent = done = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            while sent - done < 200:
                a.post_send(qa["handle"], sent, WRITE, [(src["handle"], 0, 64)], remote_addr=dst["addr"], rkey=dst["rkey"])
                sent += 1
            got, _ = a.poll(1, 5)
            assert got and all(w.status == WcStatus.SUCCESS for w in got)
            done += len(got)
        stop.set()
        poller.join(5)
        got, _ = a.poll(sent - done, 10)
        assert len(got) == sent - done and sent > 10_000
        st = a.qp_stats(qa["handle"])
        assert st["seq_naks_rx"] == 0 and st["retransmits"] == 0 and st["tx"] == sent, st
    finally:
        stop.set()
        if poller is not None:
            poller.join(5)
        a.close()
        b.close()
