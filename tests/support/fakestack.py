"""A control socket that speaks the protocol badly on purpose (recorder tests): it reads
the subscribe line, then sends the given chunks as they are and closes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path


class FakeStack:
    """A control socket that speaks the protocol badly on purpose: what it sends is the test."""

    def __init__(self, path: Path, lines: list[bytes]) -> None:
        self.path, self.lines = str(path), lines
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _main(self) -> None:
        done = asyncio.Event()

        async def serve(reader, writer):
            await reader.readline()  # subscribe
            for line in self.lines:
                writer.write(line)
                await writer.drain()
            writer.close()
            done.set()

        server = await asyncio.start_unix_server(serve, self.path)
        self.ready.set()
        await done.wait()
        server.close()
