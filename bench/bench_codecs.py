"""Codec cost beside a baseline measured in the same run.

The baseline for each message is the cheapest possible Python decode of the same bytes:
one precompiled ``struct.unpack_from`` of all fixed fields (no validation, no objects).
The ratio says what typed messages and validated, offset-named errors cost on top.

    .venv/bin/python bench/bench_codecs.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import timeit
import zlib

from stack.wire import cdc, clc, llc, roce


def rate(fn, seconds: float) -> float:
    timer = timeit.Timer(fn)
    n, _ = timer.autorange()
    best = min(timer.repeat(repeat=5, number=max(1, int(n * seconds / 0.2))))
    return max(1, int(n * seconds / 0.2)) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=0.5)
    args = ap.parse_args()

    cdc_msg = cdc.CdcMessage(seqno=7, token=0x42, prod=cdc.Cursor(3, 4096), cons=cdc.Cursor(2, 100)).encode()
    cdc_struct = struct.Struct("!BBHIHHIHHIBB")
    cl = llc.ConfirmLink(version=2, mac=bytes(6), gid=bytes(16), qpn=5, link_num=1, link_uid=bytes(4)).encode()
    cl_struct = struct.Struct("!BHB6s16s3sB4sBB")
    acc = clc.Accept(bytes(8), bytes(16), bytes(6), 1, 2, 3, 2, 3, 4, 5, True, 2, eid=bytes(32), fce=clc.FirstContactExt()).encode()
    acc_struct = struct.Struct("!4sBHB8s16s6s3sIBIBBQB3s32s8sBB2s32sBBHI8s4s")
    pkt = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x11, 5), payload=cdc_msg)
    dgram = roce.encode_datagram(pkt, ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Address("127.0.0.2"), 49152)

    rows = [
        ("CDC decode", lambda: cdc.decode(cdc_msg), lambda: cdc_struct.unpack_from(cdc_msg)),
        ("CDC encode", lambda: cdc.CdcMessage(seqno=7, token=0x42).encode(), lambda: cdc_struct.pack(0xFE, 44, 7, 0x42, 0, 0, 0, 0, 0, 0, 0, 0)),
        ("LLC CONFIRM LINK v2 decode", lambda: llc.decode(cl), lambda: cl_struct.unpack_from(cl)),
        ("CLC Accept v2 decode", lambda: clc.decode(acc), lambda: acc_struct.unpack_from(acc)),
        ("RoCE datagram decode+ICRC", lambda: roce.decode_datagram(dgram, "127.0.0.1", "127.0.0.2", 49152), lambda: zlib.crc32(dgram)),
    ]
    print(f"{'operation':32} {'ops/s':>12} {'baseline ops/s':>15} {'cost vs baseline':>17}")
    for name, ours, base in rows:
        a, b = rate(ours, args.seconds), rate(base, args.seconds)
        print(f"{name:32} {a:12,.0f} {b:15,.0f} {b / a:16.1f}x")


if __name__ == "__main__":
    main()
