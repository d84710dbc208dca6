"""Urgent data and close flags through the public API over the soft provider (issue 16
items 1 and 5): two stacks in one process, real RoCEv2 frames on loopback."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest
from support.stacks import run, two_stacks

from stack.runtime import Stack

A, B = 20000, 30000
_SEQ = iter(range(1, 200))


def pair() -> tuple[str, str]:
    """Loopback addresses of our own (another test process may be using support.stacks.addrs' first ones)."""
    n, o = next(_SEQ), 210 + os.getpid() % 40
    return f"127.{o}.{n}.1", f"127.{o}.{n}.2"


def _events(stack: Stack, kind: str) -> list:
    out: list = []
    stack.bus.listen(lambda e: out.append(e) if e.kind == kind else None)
    return out


def test_urgent_data_mid_stream_both_ways_keeps_the_urgent_byte_out_of_the_stream():
    pre, msg, post = os.urandom(A), os.urandom(99) + b"U", os.urandom(B)
    spre, smsg, spost = os.urandom(B), os.urandom(49) + b"V", os.urandom(A)

    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            urg_a, urg_b = _events(a, "conn.urgent"), _events(b, "conn.urgent")
            got = {}

            async def server(r, w):
                got["s_inband"] = await r.readexactly(A + 99)
                got["s_oob"] = await asyncio.wait_for(r.read_urgent(), 5)
                got["s_rest"] = await r.readexactly(B)
                w.write(spre)
                w.write_urgent(smsg)
                w.write(spost)  # waits in the writer until the client consumed the urgent byte
                got["s_buffered"] = w.get_write_buffer_size()
                await w.drain()
                got["s_eof"] = await r.read()
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            w.write(pre)
            w.write_urgent(msg)
            w.write(post)
            c_inband = await asyncio.wait_for(r.readexactly(B + 49), 10)
            c_oob = await asyncio.wait_for(r.read_urgent(), 5)
            c_rest = await asyncio.wait_for(r.readexactly(A), 10)
            w.write_eof()
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
            await asyncio.sleep(0.05)
            return got, c_inband, c_oob, c_rest, urg_a, urg_b

    got, c_inband, c_oob, c_rest, urg_a, urg_b = run(main())
    assert got["s_inband"] + got["s_rest"] == pre + msg[:-1] + post and got["s_oob"] == b"U"
    assert c_inband + c_rest == spre + smsg[:-1] + spost and c_oob == b"V"
    assert got["s_buffered"] == A  # what followed the urgent send waited for the consumer update
    assert [e.get("event") for e in urg_a if e.get("dir") == "tx"] == ["queued", "sent", "confirmed"]
    assert {e.get("event") for e in urg_b if e.get("dir") == "rx"} == {"arrived", "skipped", "read"}
    assert [e.get("byte") for e in urg_b if e.get("event") == "arrived"] == [ord("U")]


def test_a_task_waiting_for_the_urgent_byte_while_the_stream_is_read_gets_it():
    """The way an application that does not know where the urgent byte is reads: one task
    waits in read_urgent() while the stream is read to the end (poll's POLLPRI beside
    POLLIN). Both wait on the reader at once and both must wake (one waiter used to replace
    the other, and the urgent byte was never returned)."""
    pre, post = os.urandom(A), os.urandom(B)

    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            got = {}

            async def server(r, w):
                urgent = asyncio.ensure_future(r.read_urgent())
                data = bytearray()
                while chunk := await r.read(1 << 16):
                    data += chunk
                    await asyncio.sleep(0)  # the urgent task runs before the next read passes the mark
                got["data"], got["urgent"] = bytes(data), await asyncio.wait_for(urgent, 5)
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            await asyncio.sleep(0.05)  # the server is already waiting on both when data arrives
            w.write(pre)
            w.write_urgent(b"U")
            w.write(post)
            await w.drain()
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
            return got

    got = run(main())
    assert got["urgent"] == b"U" and got["data"] == pre + post


def test_oob_inline_keeps_the_urgent_byte_in_the_stream_and_reads_stop_at_it():
    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            result = {}

            async def server(r, w):
                r.oob_inline = True
                first = await r.read(1 << 16)
                while len(first) < 10:
                    first += await r.read(1 << 16)
                result["first"] = first
                result["second"] = await r.read(1 << 16)
                try:
                    await r.read_urgent()
                except OSError as e:
                    result["oob"] = e.errno
                w.close()

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            w.write_urgent(b"0123456789U")
            await r.read()
            w.close()
            await w.wait_closed()
            return result

    res = run(main())
    assert res == {"first": b"0123456789", "second": b"U", "oob": errno.EINVAL}


def test_urgent_data_over_tcp_fallback_uses_the_sockets_oob():
    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            result = {}

            async def server(r, w):
                result["inband"] = await r.readexactly(9)
                result["oob"] = await asyncio.wait_for(r.read_urgent(), 5)
                result["rest"] = await r.read()
                w.close()

            await b.start_server(server, sa, 5000, smc=False)
            r, w = await a.open_connection(sa, 5000, smc=False)
            assert w.get_extra_info("smc")["mode"] == "TCP"
            w.write_urgent(b"abcdefghiU")
            await asyncio.sleep(0.1)
            w.write(b"more")
            w.write_eof()
            await r.read()
            w.close()
            return result

    assert run(main()) == {"inband": b"abcdefghi", "oob": b"U", "rest": b"more"}


@pytest.mark.parametrize("closer", ["server", "client"])
def test_close_with_data_the_application_never_read_aborts_and_the_peer_reads_end_of_file(closer):
    """The closer read a line (the reader's read-ahead took the rest out of the RMB) and
    closes: the kernel's rule makes that an abort (smc_close_final). The peer's application
    reads end of file, as a kernel reader does (smc_rx_recvmsg stops on peer_conn_abort and
    returns 0; the lab's differential run shows two kernels doing it), and its next write
    fails with ECONNRESET (smc_tx_sendmsg after any close received)."""

    async def main():
        async with two_stacks(pair=pair()) as (a, b, _, sa):
            cdcs = (_events(a, "cdc.msg"), _events(b, "cdc.msg"))
            seen = {}

            async def peer_side(r, w):
                seen["read"] = await asyncio.wait_for(r.read(), 5)
                try:
                    w.write(b"after")
                    await w.drain()
                    seen["write"] = "ok"
                except ConnectionResetError:
                    seen["write"] = "reset"

            async def server(r, w):
                await r.readline()
                if closer == "server":
                    await asyncio.sleep(0.1)
                    w.close()  # 5000 bytes unread
                    return
                w.write(b"line\n" + bytes(5000))
                await w.drain()
                await peer_side(r, w)

            await b.start_server(server, sa, 5000)
            r, w = await a.open_connection(sa, 5000)
            w.write(b"line\n" + (bytes(5000) if closer == "server" else b""))
            if closer == "server":
                await peer_side(r, w)
            else:
                await r.readline()
                await asyncio.sleep(0.1)
                w.close()
                await asyncio.sleep(0.3)
            sent = [e.fields.get("flags") or () for e in cdcs[0] + cdcs[1] if e.fields.get("dir") == "tx"]
            return seen, [f for f in sent if "peer_conn_abort" in f]

    seen, aborts = run(main())
    assert seen == {"read": b"", "write": "reset"}
    assert len(aborts) == 1, aborts  # the closer's one abort went on the wire


def test_a_stack_closing_lets_connections_its_application_closed_finish():
    """A server writes its answer, closes the writer and its stack shuts down at once (the
    lab's two-NIC server did, and a kernel client read nothing: our stack aborted the
    connection and ended the link group, and a kernel kills its connections then, unread
    data and all). Closing the stack now lets such connections finish their close first;
    the client, reading only later, gets every byte and a clean end of file."""

    async def go():
        answer = os.urandom(200_000)
        answered = asyncio.Event()

        async def serve(r, w):
            await r.readexactly(5)
            w.write(answer)
            w.close()
            answered.set()

        async with two_stacks(pair=pair()) as (client, server, ca, sa):
            states = _events(client, "conn.state")
            await server.start_server(serve, sa, 5000)
            r, w = await client.open_connection(sa, 5000, local_addr=(ca, 0))
            w.write(b"hello")
            await answered.wait()
            closing = asyncio.ensure_future(server.close())
            await asyncio.sleep(0.2)  # the client's application reads only now
            got = await r.read()
            w.close()
            await closing
            assert len(got) == len(answer) and got == answer
            assert not [e for e in states if "abort" in e.get("cause", "")], [(e.get("old"), e.get("new"), e.get("cause")) for e in states]

    run(go())
