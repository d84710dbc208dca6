"""An application that gives up on ``open_connection`` while its CLC handshake runs (a
timeout, a task cancelled: the demo's traffic switch) must leave nothing behind. Nobody
holds the reader or writer of that connection, so nobody would ever close it: before, it
finished its handshake and stayed ACTIVE at both ends for good."""

from __future__ import annotations

import asyncio

from support.stacks import run, two_stacks


async def _settle(*stacks, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if not any(s.host.conns for s in stacks):
            return
        await asyncio.sleep(0.02)


def test_an_open_cancelled_during_the_handshake_is_closed_at_both_ends():
    async def main():
        async with two_stacks() as (a, b, ca, sa):
            accepted = []

            async def serve(r, w):
                accepted.append(w)
                await r.read()  # until the client goes away
                w.close()

            await b.start_server(serve, sa, 5000)
            started = asyncio.Event()
            real = a.host.client_start

            def client_start(*args, **kw):  # the handshake begins: give up on it now
                real(*args, **kw)
                started.set()

            a.host.client_start = client_start
            for _ in range(3):  # the first makes the link group; the others reuse it
                started.clear()
                task = asyncio.ensure_future(a.open_connection(sa, 5000))
                await started.wait()
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            await _settle(a, b)
            assert not a.host.conns and not b.host.conns, (
                [(c.id, c.state.name) for c in a.host.conns.values()],
                [(c.id, c.state.name) for c in b.host.conns.values()],
            )
            assert not a.handles
            r, w = await a.open_connection(sa, 5000)  # the stack still works
            assert w.get_extra_info("smc")["mode"] == "SMCR"
            w.close()

    run(main())
