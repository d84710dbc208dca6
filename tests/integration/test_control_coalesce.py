"""A control-socket subscriber that asks for the data path coalesced gets what every event
adds up to, with far fewer lines (smctop --attach does; it could not keep up with a
request/response pair's tens of thousands of events a second)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path

from support.stacks import run, two_stacks, until

from stack.runtime.control import ControlServer

ROUNDS = 400


async def _subscriber(path: str, **args) -> tuple[list[dict], asyncio.Task, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    await reader.readline()  # hello
    writer.write(json.dumps({"cmd": "subscribe", "id": 1, **args}).encode() + b"\n")
    await writer.drain()
    while json.loads(await reader.readline()).get("type") != "reply":
        pass
    got: list[dict] = []

    async def read():
        while line := await reader.readline():
            msg = json.loads(line)
            if msg.get("type") == "event":
                got.append(msg["event"])

    return got, asyncio.create_task(read()), writer


@contextlib.asynccontextmanager
async def _both_streams(stack):
    """Two subscribers of ``stack``'s control socket, one taking every event and one the data
    path sampled: their event lists, filled as the lines come."""
    with tempfile.TemporaryDirectory(prefix="smccoal") as d:
        ctl = ControlServer(stack, str(Path(d) / "c.sock"), interval=0)
        await ctl.start()
        subs = []
        try:
            subs = [await _subscriber(ctl.path), await _subscriber(ctl.path, coalesce=0.1)]
            yield subs[0][0], subs[1][0]
        finally:
            for _, task, writer in subs:
                writer.close()
                task.cancel()
            await ctl.close()


def _totals(events: list[dict], host: str) -> dict:
    mine = [e for e in events if e["host"] == host]
    n = lambda e: e.get("coalesced", 1)  # noqa: E731
    return {
        "written": sum(e["length"] for e in mine if e["kind"] == "rdma.write"),
        "writes": sum(n(e) for e in mine if e["kind"] == "rdma.write"),
        "cdc_tx": sum(n(e) for e in mine if e["kind"] == "cdc.msg" and e["dir"] == "tx"),
        "cdc_rx": sum(n(e) for e in mine if e["kind"] == "cdc.msg" and e["dir"] == "rx"),
        # every cursor move and RMB event counted too (smctop's smc_events_total adds them up)
        "cursor_tx": sum(n(e) for e in mine if e["kind"] == "conn.cursor" and e["side"] == "tx"),
        "cursor_rx": sum(n(e) for e in mine if e["kind"] == "conn.cursor" and e["side"] == "rx"),
        "rmb": sum(n(e) for e in mine if e["kind"] == "conn.rmb"),
        "states": [(e["conn"], e["new"]) for e in mine if e["kind"] == "conn.state"],
        "last_tx_prod": [e["prod"] for e in mine if e["kind"] == "conn.cursor" and e["side"] == "tx" and "prod" in e][-1],
    }


def test_a_coalesced_subscription_adds_up_to_every_event_in_far_fewer_lines() -> None:
    async def main():
        async with two_stacks() as (client, server, ca, sa):

            async def echo(r, w):
                while data := await r.read(1 << 16):
                    w.write(data)
                w.close()

            await server.start_server(echo, sa, 5000)
            async with _both_streams(client) as (every, some):
                r, w = await client.open_connection(sa, 5000, local_addr=(ca, 0))
                msg = os.urandom(64)
                for _ in range(ROUNDS):
                    w.write(msg)
                    assert await r.readexactly(64) == msg
                w.close()
                await w.wait_closed()
                info = w.get_extra_info("smc")
                await until(lambda: any(e["kind"] == "conn.state" and e["new"] == "CLOSED" for e in some), 30, "the close, coalesced")
                await asyncio.sleep(0.3)  # the last interval's events
                a, b = _totals(every, "client"), _totals(some, "client")
                assert a["written"] == ROUNDS * 64 == b["written"]
                assert a == b, (a, b)
                assert a["cdc_tx"] >= ROUNDS and info["mode"] == "SMCR"
                assert len(some) * 10 < len(every), (len(some), len(every))
                assert [e["t"] for e in some] == sorted(e["t"] for e in some)  # nothing overtook what came before it
                assert any(e.get("coalesced", 1) > 1 for e in some)

    run(main())


def test_coalesce_out_of_range_is_refused_with_a_reason() -> None:
    async def main():
        async with two_stacks() as (client, _server, _ca, _sa):
            with tempfile.TemporaryDirectory(prefix="smccoal") as d:
                ctl = ControlServer(client, str(Path(d) / "c.sock"), interval=0)
                await ctl.start()
                try:
                    reader, writer = await asyncio.open_unix_connection(ctl.path)
                    await reader.readline()
                    for bad in (-1, 11, "0.1", None, [0.1]):
                        writer.write(json.dumps({"cmd": "subscribe", "id": 1, "coalesce": bad}).encode() + b"\n")
                        await writer.drain()
                        msg = json.loads(await reader.readline())
                        assert msg["type"] == "error" and "coalesce must be seconds from 0" in msg["error"], (bad, msg)
                    writer.close()
                finally:
                    await ctl.close()

    run(main())


def test_short_connections_add_up_in_smctops_model_sampled_as_with_every_event() -> None:
    """Connections that open, move a few KiB each way and close within one sample interval
    (smc-traffic's crr): smctop's model counts the same bytes from the sampled stream as from
    every event, and what the stacks' connections counted."""
    from smctop.model import Model
    from stack.events import check_record

    async def main():
        async with two_stacks() as (client, server, ca, sa):

            async def answer(r, w):
                w.write(await r.readexactly(3000))
                w.close()

            await server.start_server(answer, sa, 5000)
            async with _both_streams(server) as (every, some):
                for _ in range(12):
                    r, w = await client.open_connection(sa, 5000, local_addr=(ca, 0))
                    msg = os.urandom(3000)
                    w.write(msg)
                    assert await r.readexactly(3000) == msg
                    w.close()
                    await w.wait_closed()
                closed = lambda evs: sum(e["kind"] == "conn.state" and e["new"] == "CLOSED" for e in evs)  # noqa: E731
                await until(lambda: closed(some) == 12 == closed(every), 30, "every close, both ways")
                await asyncio.sleep(0.3)
                got = []
                for events in (every, some):
                    m = Model()
                    for e in events:
                        m.feed(check_record(e))
                    got.append((sum(c.ev_rx for c in m.conns.values()), sum(c.ev_tx for c in m.conns.values()), m.cdc))
                assert got[0] == got[1], got
                assert got[0][:2] == (12 * 3000, 12 * 3000), got

    run(main())
