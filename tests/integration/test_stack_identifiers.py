"""A stack without a seed draws its initial PSNs, link group ids and peer id from the CSPRNG
(issue #15 item 2); a seed makes a run repeatable, as the golden session needs."""

from __future__ import annotations

import dataclasses
import random

from support.stacks import addrs, config, run

from stack.runtime import Stack


async def _draws(seed):
    addr, _ = addrs()
    cfg = dataclasses.replace(config("h", addr), seed=seed)
    stack = await Stack(cfg).start()
    try:
        return type(stack.rdma.rng), [stack.rdma.rng.getrandbits(24) for _ in range(8)], stack.host.peer_id
    finally:
        await stack.close()


def test_unseeded_stacks_draw_from_the_csprng():
    kinds, draws, peer_ids = zip(*[run(_draws(None)) for _ in range(2)])
    assert all(k is random.SystemRandom for k in kinds)
    assert draws[0] != draws[1]  # 8 draws of 24 bits: equal by chance once in 2**192


def test_a_seed_repeats_the_run():
    (k1, d1, p1), (k2, d2, p2) = run(_draws(7)), run(_draws(7))
    assert k1 is k2 is random.Random
    assert d1 == d2 and p1[:2] == p2[:2]
