"""The poll cost in Python: parsing a smc_diag dump of N connections and diffing it into
events, per poll, with a tenth of the connections moving their cursors between polls.

    python -m smckernel.bench [--conns 1000] [--polls 50] [--raw DIR]

The dump is made from a real reply (``--raw``, what ``--save-raw`` wrote; by default the
unit tests' fixture of the lab kernel): its first SMC-R socket repeated with other ports,
cookies and tokens. The kernel's side of the cost (the dump itself) is not in here: the lab
test measures a whole poll inside a VM (tests/lab/test_kernel_source.py, bench.json).
"""

from __future__ import annotations

import argparse
import struct
import time
from pathlib import Path

from . import kio, model
from . import netlink as nl
from .diag import MSG_LEN
from .tracker import Tracker

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "unit" / "fixtures" / "smckernel" / "client-open"


def synthetic_diag(template: bytes, n: int, moved: int = 0, shift: int = 0) -> bytes:
    """n copies of one smc_diag message with distinct ports, cookies and tokens; the first
    ``moved`` of them with their rx producer cursor advanced by ``shift`` bytes."""
    out = bytearray()
    for i in range(n):
        b = bytearray(template)
        struct.pack_into(">H", b, 4, 10000 + i % 50000)  # sport
        struct.pack_into("=II", b, 44, i + 1, 0)  # cookie
        off = MSG_LEN
        while off + 4 <= len(b):  # find CONNINFO and give it its own token and cursor
            alen, atype = struct.unpack_from("=HH", b, off)
            if atype & nl.NLA_TYPE_MASK == 1 and alen >= 4 + 76:
                struct.pack_into("=I", b, off + 4, i + 1)
                if i < moved:
                    wrap, count = struct.unpack_from("=HI", b, off + 4 + 16 + 2)
                    struct.pack_into("=HI", b, off + 4 + 16 + 2, wrap, (count + shift) % 65536)
            off += nl.pad4(alen)
        out += nl.message(20, nl.NLM_F_MULTI, 1, bytes(b))
    return bytes(out) + nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, bytes(4))


def measure(raw: model.RawDumps, conns: int, polls: int) -> dict:
    bodies, _, _ = nl.dump_bodies(raw.diag or b"")
    template = next((b for b in bodies if len(b) > MSG_LEN + 80), None)
    if template is None:
        raise SystemExit("the reply holds no SMC-R connection to copy")
    tracker = Tracker("bench", stats_every=None)
    dumps = [synthetic_diag(template, conns, conns // 10, shift=p) for p in range(polls + 1)]
    r = model.RawDumps(genl=raw.genl, ifnames=raw.ifnames, net_cookie=raw.net_cookie)
    r.diag = dumps[0]
    tracker.snapshot(model.from_kernel(r, 0.0, "bench"))  # the first poll opens every connection
    parse = diff = 0.0
    events = 0
    for p in range(1, polls + 1):
        r.diag = dumps[p]
        t0 = time.perf_counter()
        snap = model.from_kernel(r, float(p), "bench")
        t1 = time.perf_counter()
        events += len(tracker.snapshot(snap))
        t2 = time.perf_counter()
        parse += t1 - t0
        diff += t2 - t1
    return {"conns": conns, "polls": polls, "parse_ms": parse / polls * 1e3, "diff_ms": diff / polls * 1e3,
            "events_per_poll": events / polls, "dump_bytes": len(dumps[0])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m smckernel.bench")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--polls", type=int, default=50)
    ap.add_argument("--raw", default=str(FIXTURE))
    a = ap.parse_args()
    m = measure(kio.load_raw(a.raw), a.conns, a.polls)
    print(f"{m['conns']} connections ({m['dump_bytes']} bytes of smc_diag), a tenth moving: parse {m['parse_ms']:.2f} ms, "
          f"diff {m['diff_ms']:.2f} ms per poll, {m['events_per_poll']:.0f} events per poll")  # fmt: skip


if __name__ == "__main__":
    main()
