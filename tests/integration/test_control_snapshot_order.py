"""A snapshot on the control socket comes after every event that happened before it.

The session's writer task sends queued events later than a command's reply, so under load
(events waiting in the subscription's queue) a snapshot overtook older events: smctop set a
connection's bytes to the snapshot's count and then added the older events again (one end of
a link read twice the other's rate), and a recording's starting snapshot came after events
stamped before it."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from support.stacks import addrs, config, run

from stack.events import Event
from stack.runtime import Stack
from stack.runtime.control import ControlServer


def test_a_snapshot_follows_the_events_queued_before_it() -> None:
    async def main():
        with tempfile.TemporaryDirectory(prefix="smcsnap") as d:
            stack = Stack(config("h", (addrs()[0],), 4096))
            await stack.start()
            server = ControlServer(stack, str(Path(d) / "c.sock"), interval=0)
            await server.start()
            try:
                reader, writer = await asyncio.open_unix_connection(server.path)
                await reader.readline()  # hello
                writer.write(b'{"cmd": "subscribe", "id": 1}\n')
                await writer.drain()
                while True:  # until the session holds the subscription
                    line = json.loads(await reader.readline())
                    if line.get("type") == "reply":
                        break
                (session,) = server.sessions
                # events queued and not sent yet (no loop turn between), then a snapshot asked for
                for i in range(50):
                    stack.bus.emit(Event(float(i), "trace.note", "h", fields={"frame": i, "error": "before the snapshot"}))
                session.handle(b'{"cmd": "snapshot", "id": 2}')
                await writer.drain()
                notes, got_snapshot = [], False
                while not got_snapshot:
                    msg = json.loads(await asyncio.wait_for(reader.readline(), 10))
                    if msg.get("type") == "event" and msg["event"]["kind"] == "trace.note":
                        assert not got_snapshot
                        notes.append(msg["event"]["frame"])
                    got_snapshot = msg.get("type") == "reply" and "snapshot" in msg
                assert notes == list(range(50))  # all of them, before the snapshot
                writer.close()
            finally:
                await server.close()
                await stack.close()

    run(main())
