"""The soft RoCEv2 provider's two engines (compiled and pure Python) beside raw UDP and
asyncio TCP, measured in the same run.

* throughput: 32 MiB of RDMA WRITE (1 MiB WRs, 4 in flight) vs. a raw UDP stream of
  1024-byte datagrams (no reliability at all) vs. asyncio TCP streams over loopback;
* latency: round trip of a 44-byte SEND answered by a SEND vs. a UDP ping-pong vs. an
  asyncio TCP ping-pong.

Prints a table of ratios (lower latency and higher throughput are better).

    .venv/bin/python bench/bench_verbs.py [--mib 32] [--pings 2000] [--mtu 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time

from stack.verbs import open_provider
from stack.verbs.api import Access, Mtu, QPCap, RCPath, RecvWR, SendFlags, SendWR, Sge, WrOpcode, poll_wait

RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE


def soft_pair(mtu: Mtu, engine: str = "native"):
    prov = open_provider("soft", mtu=mtu, engine=engine)
    devs = [prov.open_device("127.81.0.1"), prov.open_device("127.81.0.2")]
    side = []
    for dev in devs:
        pd = dev.alloc_pd()
        cq = dev.create_cq(4096)
        qp = pd.create_rc_qp(cq, cq, QPCap(64, 64))
        side.append((dev, pd, cq, qp))
    for (dev, _, _, qp), (peer, _, _, pqp) in ((side[0], side[1]), (side[1], side[0])):
        path = RCPath(pqp.qp_num, 1, 1, peer.roce_v2_gid().gid, dev.roce_v2_gid().index, path_mtu=mtu)
        qp.to_init(RW)
        qp.to_rtr(path)
        qp.to_rts(path)
    return prov, side


def soft_write_throughput(mib: int, mtu: Mtu, engine: str = "native") -> float:
    prov, ((_, pa, ca, qa), (_, pb, _, _)) = soft_pair(mtu, engine)
    src, dst = pa.reg_mr(1 << 20, RW), pb.reg_mr(1 << 20, RW)
    wr = SendWR(0, WrOpcode.RDMA_WRITE, (Sge(src, 0, 1 << 20),), SendFlags.SIGNALED, dst.addr, dst.rkey)
    start = time.perf_counter()
    posted = done = 0
    while done < mib:
        while posted < mib and posted - done < 4:
            qa.post_send(wr)
            posted += 1
        done += len(poll_wait(ca, 1, 30))
    elapsed = time.perf_counter() - start
    prov.close()
    return mib * (1 << 20) / elapsed / 1e6


def soft_send_rtt(pings: int, mtu: Mtu, engine: str = "native") -> float:
    prov, ((_, pa, ca, qa), (_, pb, cb, qb)) = soft_pair(mtu, engine)
    ma, mb = pa.reg_mr(4096, RW), pb.reg_mr(4096, RW)
    stop = threading.Event()

    def echo():  # B answers every SEND with a SEND
        while not stop.is_set():
            for wc in poll_wait(cb, 1, 0.1):
                if wc.opcode >= 128:
                    qb.post_recv(RecvWR(0, (Sge(mb, 0, 64),)))
                    qb.post_send(SendWR(1, WrOpcode.SEND, (Sge(mb, 0, 44),), SendFlags.NONE))

    for q, m in ((qa, ma), (qb, mb)):
        q.post_recv([RecvWR(0, (Sge(m, 0, 64),)) for _ in range(8)])
    t = threading.Thread(target=echo, daemon=True)
    t.start()
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        qa.post_send(SendWR(2, WrOpcode.SEND, (Sge(ma, 0, 44),), SendFlags.NONE))
        while True:
            wcs = poll_wait(ca, 1, 5)
            if wcs and wcs[0].opcode >= 128:
                break
        rtts.append(time.perf_counter() - start)
        qa.post_recv(RecvWR(0, (Sge(ma, 0, 64),)))
    stop.set()
    t.join()
    prov.close()
    return statistics.median(rtts)


def udp_stream_throughput(mib: int) -> float:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.81.0.2", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    total = mib * (1 << 20)
    got = [0]

    def sink():
        rx.settimeout(1)
        try:
            while got[0] < total:
                got[0] += len(rx.recv(2048))
        except socket.timeout:
            pass

    t = threading.Thread(target=sink)
    t.start()
    chunk = bytes(1024)
    start = time.perf_counter()
    for _ in range(total // 1024):
        tx.sendto(chunk, rx.getsockname())
    t.join()
    elapsed = time.perf_counter() - start - (1 if got[0] < total else 0)
    rx.close()
    tx.close()
    return got[0] / elapsed / 1e6


def udp_rtt(pings: int) -> float:
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.81.0.1", 0))
    b.bind(("127.81.0.2", 0))

    def echo():
        for _ in range(pings):
            data, addr = b.recvfrom(2048)
            b.sendto(data, addr)

    t = threading.Thread(target=echo)
    t.start()
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        a.sendto(bytes(44), b.getsockname())
        a.recvfrom(2048)
        rtts.append(time.perf_counter() - start)
    t.join()
    a.close()
    b.close()
    return statistics.median(rtts)


async def _tcp(mib: int, pings: int) -> tuple[float, float]:
    async def handle(reader, writer):
        try:
            while data := await reader.read(1 << 16):
                if len(data) == 44:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.81.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.81.0.2", port)
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        writer.write(bytes(44))
        await reader.readexactly(44)
        rtts.append(time.perf_counter() - start)
    writer.close()
    reader, writer = await asyncio.open_connection("127.81.0.2", port)
    chunk = bytes(1 << 20)
    start = time.perf_counter()
    for _ in range(mib):
        writer.write(chunk)
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    elapsed = time.perf_counter() - start
    server.close()
    await server.wait_closed()
    return mib * (1 << 20) / elapsed / 1e6, statistics.median(rtts)


def engine_figures(engine: str, mib: int, mtu: Mtu = Mtu.MTU_4096, pings: int = 2000) -> tuple[float, float]:
    """RDMA WRITE MB/s and the median SEND round trip (s) of one engine."""
    return soft_write_throughput(mib, mtu, engine), soft_send_rtt(pings if engine == "native" else pings // 4, mtu, engine)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--mtu", type=int, default=1024, choices=[256, 512, 1024, 2048, 4096])
    args = ap.parse_args()
    mtu = Mtu(args.mtu.bit_length() - 8)
    engines = {e: engine_figures(e, args.mib if e == "native" else max(8, args.mib // 8), mtu, args.pings) for e in ("native", "python")}
    udp_tp = udp_stream_throughput(args.mib)
    u_rtt = udp_rtt(args.pings)
    tcp_tp, tcp_rtt = asyncio.run(_tcp(args.mib, args.pings))
    print(f"soft provider, path MTU {args.mtu}, {args.mib} MiB, {args.pings} pings; same run, same machine\n")
    print(f"{'':36} {'throughput MB/s':>16} {'RTT us (median)':>16}")
    rows = [(f"soft RoCEv2, {e} engine", *engines[e]) for e in engines]
    rows += [("raw UDP (stream / ping-pong)", udp_tp, u_rtt), ("asyncio TCP (stream / ping-pong)", tcp_tp, tcp_rtt)]
    for name, tp, rtt in rows:
        print(f"{name:36} {tp:16.1f} {rtt * 1e6:16.1f}")
    print()
    for e, (tp, rtt) in engines.items():
        print(f"{e:6} / raw UDP:     throughput {tp / udp_tp:5.2f}x   RTT {rtt / u_rtt:5.2f}x")
        print(f"{e:6} / asyncio TCP: throughput {tp / tcp_tp:5.2f}x   RTT {rtt / tcp_rtt:5.2f}x")


if __name__ == "__main__":
    main()
