"""smc-traffic's bulk receiver checks each chunk in whatever pieces the stream has ready,
never reads past a chunk (what follows the end marker, the verdict, stays in the stream),
and catches corruption and truncation; the SMC writer keeps bytes it could not send yet
without copying what cannot change, and copies what can."""

import asyncio
import random
import zlib

import pytest

from stack.runtime.streams import _kept
from stack.traffic import runner
from stack.traffic.protocol import BLOCK, CHUNK, TRAILER, VERDICT, Pattern


def _bulk_stream(seed: int, chunks: list[int]) -> tuple[bytes, int, int]:
    """What a sender writes: chunks of the pattern, the end marker, the count and CRC."""
    p = Pattern(seed)
    out = bytearray()
    for n in chunks:
        data = p.next(n)
        out += CHUNK.pack(len(data)) + data
    out += CHUNK.pack(0) + TRAILER.pack(p.offset, p.crc)
    return bytes(out), p.offset, p.crc


async def _receive(stream: bytes, seed: int, pieces: int, tail: bytes = b"") -> tuple:
    """Feed ``stream`` (and ``tail`` after it) to a real asyncio StreamReader in random
    pieces while the receiver runs; returns its verdict, totals and the reader."""
    reader = asyncio.StreamReader(limit=1 << 22)
    data = stream + tail
    cuts = sorted(random.Random(pieces).sample(range(1, len(data)), pieces))

    async def feed():
        for a, b in zip([0, *cuts], [*cuts, len(data)]):
            reader.feed_data(data[a:b])
            await asyncio.sleep(0)
        reader.feed_eof()

    totals = runner.Totals()
    feeder = asyncio.create_task(feed())
    try:
        result = await runner._recv_bulk(reader, Pattern(seed), totals)
    finally:
        await feeder
    return result, totals, reader


@pytest.mark.parametrize("chunks", [[65536] * 20, [1 << 20] * 3, [1, 4096, (1 << 20) - 3, 777, 1 << 20]])
def test_chunks_verify_in_any_pieces_and_the_verdict_after_them_stays_in_the_stream(chunks):
    stream, count, crc = _bulk_stream(5, chunks)
    verdict = VERDICT.pack(1, 123, 456)

    async def go():
        (ok, got_count, got_crc), totals, reader = await _receive(stream, 5, 300, tail=verdict)
        assert ok and (got_count, got_crc) == (count, crc) == (sum(chunks), zlib.crc32(_payload(stream)))
        assert totals.bytes_received == sum(chunks)
        assert await reader.readexactly(VERDICT.size) == verdict and await reader.read() == b""

    asyncio.run(go())


def _payload(stream: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        (n,) = CHUNK.unpack_from(stream, pos)
        pos += CHUNK.size
        if n == 0:
            return bytes(out)
        out += stream[pos : pos + n]
        pos += n


@pytest.mark.parametrize("where", [0, 65535, (1 << 20) - 1, 1 << 20, 2 << 20])
def test_a_flipped_byte_in_any_piece_fails_the_check(where):
    stream, _, _ = _bulk_stream(9, [1 << 20, 1 << 20, 65537])
    bad = bytearray(stream)
    at = CHUNK.size + where + (CHUNK.size if where >= 1 << 20 else 0) + (CHUNK.size if where >= 2 << 20 else 0)
    bad[at] ^= 0x40

    async def go():
        (ok, _, _), totals, _ = await _receive(bytes(bad), 9, 200)
        assert not ok and totals.bytes_received == (2 << 20) + 65537

    asyncio.run(go())


def test_a_stream_cut_inside_a_chunk_is_an_incomplete_read():
    stream, _, _ = _bulk_stream(2, [1 << 20])

    async def go():
        with pytest.raises(asyncio.IncompleteReadError):
            await _receive(stream[: CHUNK.size + 500_000], 2, 50)

    asyncio.run(go())


def test_the_writer_keeps_immutable_bytes_as_they_are_and_copies_what_the_caller_may_change():
    block = bytes(range(256)) * 16
    view = memoryview(block)[100:3000]
    kept = _kept(view)
    assert kept.obj is block and kept.tobytes() == block[100:3000]  # no copy: bytes cannot change
    assert _kept(block).obj is block
    for mutable in (bytearray(block), memoryview(bytearray(block))[5:], memoryview(bytearray(block)).toreadonly()):
        kept = _kept(mutable)
        before = kept.tobytes()
        target = mutable.obj if isinstance(mutable, memoryview) else mutable
        target[0:300] = b"\xff" * 300  # the caller reuses its buffer at once
        assert kept.tobytes() == before and type(kept.obj) is bytes
    wide = memoryview(bytes(8)).cast("I")  # not a byte view: kept as its bytes
    assert _kept(wide).tobytes() == bytes(8) and _kept(wide).format == "B"


def test_a_request_is_the_size_asked_for_also_over_one_pattern_block():
    """Pattern.next gives at most one 1 MiB block: an rr/crr request of 16M went out as 1 MiB
    (and was counted so) while the server answered 16M."""
    for size in (0, 1, BLOCK, BLOCK + 1, (3 << 20) + 5):
        p = Pattern(4)
        expected = b"".join(bytes(p.next(min(BLOCK, size - i))) for i in range(0, size, BLOCK))
        assert runner._message(4, size) == expected and len(expected) == size


@pytest.mark.parametrize("mode", ["rr", "crr"])
def test_rr_and_crr_send_and_count_requests_over_one_mib_whole(mode):
    size, count = (3 << 20) + 5, 2

    async def go():
        served = runner.Totals()
        server = await asyncio.start_server(lambda r, w: runner.serve(r, w, served), "127.215.9.2", 0)
        port = server.sockets[0].getsockname()[1]
        totals = runner.Totals()
        try:
            await getattr(runner, mode)(lambda: asyncio.open_connection("127.215.9.2", port), totals, size=size, duration=60, count=count, seed=3)
            async with asyncio.timeout(30):
                while served.verified < (count if mode == "crr" else 1):
                    await asyncio.sleep(0.01)  # the server counts a session once its handler ended
        finally:
            server.close()
            await server.wait_closed()
        return totals, served

    totals, served = asyncio.run(go())
    assert (totals.bytes_sent, totals.bytes_received, totals.ops, totals.errors) == (count * size, count * size, count, [])
    assert (served.bytes_received, served.bytes_sent, served.errors) == (count * size, count * size, [])


def test_a_fallback_names_the_peers_diagnosis_as_smc_trace_summary_does():
    totals = runner.Totals()
    info = {"mode": "TCP", "fallback_reason": 0x05000000, "fallback_reason_text": "0x05000000 PEERDECL", "peer_diagnosis": 0x03070000}
    totals.count_conn(info)
    totals.count_conn(info)
    totals.count_conn({"mode": "TCP", "fallback_reason": 0x03030000, "fallback_reason_text": "0x03030000 NOSMCDEV", "peer_diagnosis": 0})
    rep = totals.report("crr")
    assert rep["fallback_details"] == {"0x05000000 PEERDECL (peer 0x03070000 DIFFPREFIX)": 2, "0x03030000 NOSMCDEV": 1}
    assert rep["fallbacks"] == {"0x05000000 PEERDECL": 2, "0x03030000 NOSMCDEV": 1}  # as before, for what reads its keys


def test_a_bulk_send_interrupted_while_it_drains_counts_what_it_wrote():
    """Interrupted (Ctrl-C, --duration) while waiting for the connection to take a chunk: the
    chunk was written and the peer receives it, so the report counts it as sent."""

    class Writer:
        def __init__(self) -> None:
            self.written = self.drains = 0

        def write(self, data) -> None:
            self.written += len(data)

        async def drain(self) -> None:
            self.drains += 1
            if self.drains == 3:
                raise asyncio.CancelledError

    w, totals = Writer(), runner.Totals()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(runner._send_bulk(w, Pattern(1), 0, None, totals))
    assert totals.bytes_sent == 3 * runner.CHUNK_SIZE == w.written - 3 * CHUNK.size


def test_a_peer_that_ends_the_connection_mid_traffic_is_named_so():
    class Writer:
        def close(self) -> None:
            pass

        async def wait_closed(self) -> None:
            pass

    async def main(totals):
        async with runner._session(Writer(), totals):
            raise asyncio.IncompleteReadError(b"", 4)

    totals = runner.Totals()
    asyncio.run(main(totals))
    assert totals.errors == ["the peer ended the connection in the middle of the traffic (0 of 4 bytes of a message came): interrupted, or it failed"]


def test_a_servers_rate_counts_the_time_it_served_not_the_time_it_waited_for_clients():
    totals = runner.Totals(started=100.0, bytes_received=2_000_000)
    totals.first_conn, totals.last_end = 160.0, 162.0  # a client came a minute after the start and stayed 2 s
    rep = totals.report("server")
    assert rep["seconds"] == 2.0 and rep["throughput_mbs"] == 1.0
    idle = runner.Totals(started=100.0)  # no client: the time since the start, as before
    assert idle.report("server")["seconds"] > 1.0


def test_serve_notes_when_the_first_connection_came_and_the_last_ended():
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_eof()  # a client that sent nothing: an error of the run, and the times all the same

        class Writer:
            def write(self, data) -> None:
                pass

            def close(self) -> None:
                pass

            async def wait_closed(self) -> None:
                pass

            def get_extra_info(self, name, default=None):
                return default

        totals = runner.Totals(started=0.0)
        await runner.serve(reader, Writer(), totals)
        return totals

    totals = asyncio.run(main())
    assert totals.connections == 1 and totals.errors
    assert totals.first_conn is not None and totals.last_end is not None and 0 <= totals.last_end - totals.first_conn < 1


def test_a_clients_rate_ends_with_its_traffic_not_with_a_fault_it_waits_for():
    totals = runner.Totals(started=100.0, bytes_sent=1_000_000)
    totals.last_end = 101.0  # done after 1 s; the run then waited for a port change at 5 s
    rep = totals.report("bulk")
    assert rep["seconds"] == 1.0 and rep["throughput_mbs"] == 1.0
