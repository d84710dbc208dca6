"""smc-trace on a capture of real hosts: frames per second for ``summary`` (derive every
event from the frames, the RC analysis, the summary) beside a baseline in the same run,
reading the same file's frames and nothing more (dissectors.pcap's reader).

The capture is made here: a bulk transfer between two stacks over the soft provider,
recorded with every frame (as ``smc-trace record`` does), written again as the classic
pcap of Ethernet frames a ``tcpdump`` of the wire would give. Also with the fast path for
the frames in the middle of an RDMA WRITE turned off (dissectors.derive.FAST), to show
what it saves.

    .venv/bin/python bench/bench_capture.py [--mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dissectors import derive  # noqa: E402
from dissectors.capture import read_events  # noqa: E402
from dissectors.pcap import read_pcap  # noqa: E402
from dissectors.pcapng import LINKTYPE_ETHERNET, read_packets  # noqa: E402
from dissectors.recorder import Recorder  # noqa: E402
from dissectors.summary import summarize  # noqa: E402
from stack.core.config import SmcConfig  # noqa: E402
from stack.runtime import DeviceSpec, Stack, StackConfig  # noqa: E402

ADDRS = ("127.96.0.1", "127.96.0.2")


async def record_bulk(path: str, mib: int) -> None:
    def config(host: str, addr: str) -> StackConfig:
        return StackConfig(SmcConfig(host=host, rmb_size=1 << 20, sndbuf_size=1 << 20), (DeviceSpec("soft", addr, addr, None, 4096, "auto"),))

    a, b = await Stack(config("client", ADDRS[0])).start(), await Stack(config("server", ADDRS[1])).start()

    async def sink(r, w):
        n = 0
        while chunk := await r.read(1 << 20):
            n += len(chunk)
        w.write(n.to_bytes(8, "big"))
        w.close()

    try:
        await b.start_server(sink, ADDRS[1], 5000)
        rec = Recorder(path)
        rec.attach(a)
        r, w = await a.open_connection(ADDRS[1], 5000)
        data = os.urandom(1 << 16)
        for _ in range(mib * 16):
            w.write(data)
            await w.drain()
        w.write_eof()
        assert int.from_bytes(await r.read(), "big") == mib << 20
        w.close()
        rec.close()
    finally:
        await a.close()
        await b.close()


def as_classic_pcap(src: str, dst: str) -> int:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET)]
    n = 0
    with open(src, "rb") as f:
        for p in read_packets(f.read()):
            if p.linktype == LINKTYPE_ETHERNET:
                sec, rest = divmod(p.timestamp_ns, 1_000_000_000)
                out.append(struct.pack("<IIII", sec, rest // 1000, len(p.data), p.original_length) + p.data)
                n += 1
    with open(dst, "wb") as f:
        f.write(b"".join(out))
    return n


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=512, help="bulk MiB recorded (512: over 65,536 PSNs a QP, past what the RC analysis keeps)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rec, pcap = os.path.join(d, "run.pcapng"), os.path.join(d, "wire.pcap")
        asyncio.run(record_bulk(rec, args.mib))
        frames = as_classic_pcap(rec, pcap)
        size = os.path.getsize(pcap)

        def baseline() -> None:
            with open(pcap, "rb") as f:
                for _ in read_pcap(f.read()):
                    pass

        def summary() -> None:
            s = summarize(read_events(pcap))
            assert s.moved >= args.mib << 20, s.moved

        base = best_of(baseline)
        fast = best_of(summary)
        derive.FAST = False
        try:
            slow = best_of(summary, 1)
        finally:
            derive.FAST = True
    print(f"capture of {args.mib} MiB of bulk: {frames:,} frames ({size / 1e6:.0f} MB as classic pcap, RDMA WRITE frames cut as recorded)")
    print(f"{'':44} {'frames/s':>10} {'vs reading the frames':>22}")
    print(f"{'reading the frames (baseline)':44} {frames / base:>10,.0f} {1.0:>21.2f}x")
    print(f"{'smc-trace summary':44} {frames / fast:>10,.0f} {base / fast:>21.2f}x")
    print(f"{'smc-trace summary, every frame decoded whole':44} {frames / slow:>10,.0f} {base / slow:>21.2f}x")


if __name__ == "__main__":
    main()
