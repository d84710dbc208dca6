"""SmcStreamReader over a connection handle that hands out what an RMB would: readexactly
as asyncio's (whole reads, pieces joined, the partial data on EOF, size checks), and a
whole read taken as it came."""

import asyncio

import pytest

from stack.runtime.streams import SmcStreamReader


class Rmb:
    """The part of a connection handle a reader uses (mode SMCR), fed by the test."""

    mode = "SMCR"
    transport = None

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.reads: list[bytes] = []

    def smc_recv(self, n: int) -> bytes:
        out = bytes(self.data[:n])
        del self.data[:n]
        if out:
            self.reads.append(out)
        return out

    def smc_eof(self) -> bool:
        return self.eof and not self.data

    def smc_error(self):
        return None


def _reader() -> tuple[SmcStreamReader, Rmb]:
    h = Rmb()
    return SmcStreamReader(h), h


def test_a_whole_read_is_returned_as_it_came():
    async def go():
        r, h = _reader()
        h.data += bytes(range(256)) * 256
        got = await r.readexactly(65536)
        assert got == bytes(range(256)) * 256 and got is h.reads[0]
        assert await r.readexactly(0) == b""

    asyncio.run(go())


def test_pieces_are_joined_in_order():
    async def go():
        r, h = _reader()
        task = asyncio.ensure_future(r.readexactly(10))
        for piece in (b"abc", b"defg", b"hijXYZ"):
            await asyncio.sleep(0)
            h.data += piece
            r._wake()
        assert await task == b"abcdefghij"
        assert await r.readexactly(3) == b"XYZ"

    asyncio.run(go())


def test_eof_gives_the_partial_data_and_negative_sizes_are_refused():
    async def go():
        r, h = _reader()
        h.data += b"12345"
        h.eof = True
        with pytest.raises(asyncio.IncompleteReadError) as e:
            await r.readexactly(8)
        assert (e.value.partial, e.value.expected) == (b"12345", 8)
        with pytest.raises(ValueError, match="less than zero"):
            await r.readexactly(-1)

    asyncio.run(go())
