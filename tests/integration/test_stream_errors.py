"""A writer whose connection can no longer send must say so: drain raises, as asyncio's does
on a closed transport. Before, the bytes vanished and drain returned at once, so a writing
loop never suspended and starved the event loop (smctop hung on quit)."""

from __future__ import annotations

import pytest
from support.stacks import run, two_stacks


def test_writing_after_the_peer_closed_raises_on_drain_instead_of_spinning():
    async def main():
        async with two_stacks(mtu=1024) as (a, b, ca, sa):

            async def close_at_once(r, w):
                w.close()

            await b.start_server(close_at_once, sa, 5000)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            assert w.get_extra_info("smc")["mode"] == "SMCR"
            assert await r.read() == b""  # the peer closed
            with pytest.raises(ConnectionResetError):
                for _ in range(100_000):
                    w.write(b"x" * 65536)
                    await w.drain()

    run(main(), timeout=60)  # before the fix: drain waited forever (or a write loop spun) and this timed out
