"""How an SMC-R connection's TCP connection ends, as the kernel ends its clcsock, seen in
the host's TCP table (/proc/net/tcp): two stacks in one process over the soft provider.

* smc_close_active shuts the TCP connection down right after the final flag of a close
  from ACTIVE, so the side that closes first sends the first FIN and keeps the TIME_WAIT;
  the peer, closing later, needs none.
* smc_conn_kill resets it (smc_close_active_abort's tcp_abort): no FIN, no TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import os

from support.stacks import run, two_stacks
from support.tcpstate import tcp_state

_SEQ = iter(range(1, 200))


def pair() -> tuple[str, str]:
    n, o = next(_SEQ), 170 + os.getpid() % 30
    return f"127.{o}.{n}.1", f"127.{o}.{n}.2"


def test_the_side_that_closes_first_sends_the_first_fin_and_keeps_the_time_wait():
    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            states = {}

            async def server(r, w):
                states["server_addr"] = (w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2])
                assert await r.read() == b"ping"
                assert await r.read() == b""  # the client's close
                # the client's FIN came with its close flag: this end's TCP waits for ours
                states["server_after_peer_close"] = tcp_state(*states["server_addr"])
                await asyncio.sleep(0.2)
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            here, there = w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2]
            w.write(b"ping")
            await w.drain()
            await asyncio.sleep(0.1)
            w.close()
            await asyncio.sleep(0.05)
            states["client_after_close"] = tcp_state(here, there)
            await asyncio.wait_for(w.wait_closed(), 5)
            await asyncio.sleep(0.2)
            states["client_end"] = tcp_state(here, there)
            states["server_end"] = tcp_state(*states["server_addr"])
            return states

    states = run(main())
    assert states["client_after_close"] in ("FIN_WAIT1", "FIN_WAIT2"), states  # FIN sent with the close flag
    assert states["server_after_peer_close"] == "CLOSE_WAIT", states
    assert states["client_end"] == "TIME_WAIT", states
    assert states["server_end"] is None, states  # the later closer: LAST_ACK, then gone, no TIME_WAIT


def test_an_aborted_connection_resets_its_tcp_connection():
    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            seen = {}

            async def server(r, w):
                seen["server_addr"] = (w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2])
                seen["server_read"] = await asyncio.wait_for(r.read(), 5)
                seen["server_next"] = await asyncio.wait_for(r.read(), 5)  # the peer's abort: end of file
                await asyncio.sleep(0.2)
                seen["server_tcp"] = tcp_state(*seen["server_addr"])  # the RST took it away
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            here, there = w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2]
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.1)
            w.abort()
            await asyncio.wait_for(w.wait_closed(), 5)
            await asyncio.sleep(0.4)
            seen["client_tcp"] = tcp_state(here, there)
            return seen

    seen = run(main())
    assert seen["server_read"] == b"x" and seen["server_next"] == b"", seen
    assert seen["client_tcp"] is None and seen["server_tcp"] is None, seen  # an RST: no FIN_WAIT, CLOSE_WAIT or TIME_WAIT


def test_a_killed_link_group_resets_the_tcp_connections_of_its_connections():
    """The operator ends the link group (smc_lgr_terminate): every connection is killed, and
    its TCP connection reset, not closed with a FIN."""

    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            addrs = []

            async def server(r, w):
                addrs.append((w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2]))
                await r.read()
                w.close()

            await b.start_server(server, sa, 5000)
            conns = [await a.open_connection(sa, 5000) for _ in range(3)]
            await asyncio.sleep(0.1)
            assert len(a.host.lgrs) == 1 and len(a.host.lgrs[0].conns) == 3
            a.host.terminate_all(a.now(), "killed by the test")
            await asyncio.sleep(0.4)
            return [tcp_state(*x) for x in addrs], [tcp_state(w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2]) for _, w in conns]

    server_side, client_side = run(main())
    assert server_side == [None] * 3 and client_side == [None] * 3, (server_side, client_side)


def test_abort_after_a_fallback_resets_the_tcp_connection():
    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            seen = {}

            async def server(r, w):
                seen["server_addr"] = (w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2])
                seen["mode"] = w.get_extra_info("smc")["mode"]
                seen["server_read"] = await asyncio.wait_for(r.read(1), 5)
                try:
                    seen["server_next"] = await asyncio.wait_for(r.read(), 5)
                except ConnectionResetError:
                    seen["server_next"] = "reset"
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000, smc=False)  # no SMC option: the server falls back
            here, there = w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2]
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.1)
            w.abort()
            await asyncio.sleep(0.3)
            seen["client_tcp"] = tcp_state(here, there)
            seen["server_tcp"] = tcp_state(*seen["server_addr"])
            return seen

    seen = run(main())
    assert seen["mode"] == "TCP" and seen["server_read"] == b"x", seen
    assert seen["server_next"] == "reset" and seen["client_tcp"] is None and seen["server_tcp"] is None, seen


def test_the_side_that_shuts_down_writing_first_sends_the_first_fin_and_keeps_the_time_wait():
    """smc_shutdown(SHUT_WR) shuts the clcsock down for writing once "done writing" is out:
    a client that sends its request, shuts down writing and reads the answer keeps the
    TIME_WAIT; the server, which answers and closes, none."""

    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            states = {}

            async def server(r, w):
                states["server_addr"] = (w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2])
                request = await r.read()
                while chunk := await r.read():
                    request += chunk
                states["server_at_eof"] = tcp_state(*states["server_addr"])  # the client's FIN came with its flag
                w.write(request[::-1])
                await w.drain()
                await asyncio.sleep(0.1)
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            here, there = w.get_extra_info("sockname")[:2], w.get_extra_info("peername")[:2]
            w.write(b"request")
            w.write_eof()
            states["answer"] = await asyncio.wait_for(r.read(), 5)
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            await asyncio.wait_for(w.wait_closed(), 5)
            await asyncio.sleep(0.3)
            states["client_end"] = tcp_state(here, there)
            states["server_end"] = tcp_state(*states["server_addr"])
            return states

    states = run(main())
    assert states["answer"] == b"tseuqer" and states["server_at_eof"] == "CLOSE_WAIT", states
    assert states["client_end"] == "TIME_WAIT" and states["server_end"] is None, states
