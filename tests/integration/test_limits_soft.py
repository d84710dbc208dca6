"""Resource limits with real stacks over the soft provider (#15 item 4): a client opens
connections without end against a server limited to a few; the first ones are SMC-R, the
rest are declined with MAXCONNERR and run over TCP, every byte echoed, while the server's
registered memory stays where the first ones put it (its snapshot's "limits")."""

from __future__ import annotations

from support.stacks import run, two_stacks

from stack.core.config import Limits
from stack.wire.codes import DECL

LIMIT = 4
FLOOD = 16


async def _echo(r, w):
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


def test_a_flood_of_connections_past_the_limit_falls_back_and_memory_stays_bounded():
    async def main():
        async with two_stacks(None, {"limits": Limits(conns=LIMIT)}) as (a, b, ca, sa):
            await b.start_server(_echo, sa, 5000)
            opened = []
            for i in range(FLOOD):
                r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
                opened.append((r, w))
                if i == LIMIT - 1:
                    mem_at_limit = b.snapshot()["limits"]["reg_mem"]["used"]
            infos = [w.get_extra_info("smc") for _, w in opened]
            for i, (r, w) in enumerate(opened):  # every connection, SMC-R or TCP, carries its bytes
                payload = b"%d" % i * 1000
                w.write(payload)
                assert await r.readexactly(len(payload)) == payload
            snap = b.snapshot()["limits"]
            for _, w in opened:
                w.close()
            return infos, mem_at_limit, snap

    infos, mem_at_limit, snap = run(main(), timeout=120)
    modes = [i["mode"] for i in infos]
    assert modes[:LIMIT] == ["SMCR"] * LIMIT and modes[LIMIT:] == ["TCP"] * (FLOOD - LIMIT)
    assert all(i["peer_diagnosis"] == DECL.MAXCONNERR for i in infos[LIMIT:])
    assert snap["conns"] == {"limit": LIMIT, "used": LIMIT}
    assert snap["reg_mem"]["used"] == mem_at_limit > 0  # the flood registered nothing more
    assert snap["lgrs"]["used"] == 1 and snap["qps"]["used"] == 1
