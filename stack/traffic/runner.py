"""Traffic over any (reader, writer) pair: the server's handler and the client's workloads.

Modes: ``bulk`` (one-way or both ways, checked byte for byte and by CRC-32), ``rr``
(request/response on long-lived connections) and ``crr`` (a new connection for every
request/response). Results carry bytes, latencies, connection modes and fallback reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from stack.wire import codes

from .protocol import BLOCK, BOTH, BULK, CHUNK, DOWN, END_RR, HEADER, RR, TRAILER, UP, VERDICT, Header, Pattern, TrafficError

# A sender writes 1 MiB chunks and a receiver checks what the stream has ready, up to 1 MiB a
# read: per byte, the tool costs little next to the transport it measures. With 64 KiB reads
# an SMC-R receiver moved its consumer cursor in small steps, and by the kernel's rule
# (smc_tx_consumer_update) the sender got a cursor update, and ran a transmit step, for
# every 128 KiB.
CHUNK_SIZE = 1 << 20
RECV_BLOCK = 1 << 20
Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass
class Totals:
    """What a run did; shared by all its connections."""

    started: float = field(default_factory=time.monotonic)
    bytes_sent: int = 0
    bytes_received: int = 0
    ops: int = 0
    latencies: list[float] = field(default_factory=list)
    connect_times: list[float] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    # the same with the peer's diagnosis when its decline carried one, as smc-trace summary
    # prints it ("0x05000000 PEERDECL (peer 0x03070000 DIFFPREFIX)"); fallbacks keeps its keys
    fallback_details: dict[str, int] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    verified: int = 0
    connections: int = 0
    first_contacts: int = 0
    link_groups: set[str] = field(default_factory=set)
    # a server's traffic: from its first connection to the end of its last (its rate leaves
    # out the time it waited for clients); a client's ends when its connections are done,
    # before it waits for a port change it was asked for
    first_conn: float | None = None
    last_end: float | None = None

    def count_conn(self, info: dict | None) -> None:
        self.connections += 1
        info = info or {"mode": "TCP", "fallback_reason": 0}
        self.modes[info["mode"]] = self.modes.get(info["mode"], 0) + 1
        if info.get("mode") == "SMCR":
            self.versions[info.get("version", 0)] = self.versions.get(info.get("version", 0), 0) + 1
            self.first_contacts += bool(info.get("first_contact"))
            if info.get("lgr"):
                self.link_groups.add(info["lgr"])
        if info.get("fallback_reason"):
            key = info.get("fallback_reason_text") or f"0x{info['fallback_reason']:08x}"
            self.fallbacks[key] = self.fallbacks.get(key, 0) + 1
            if info.get("peer_diagnosis"):
                key += f" (peer {codes.format_reason(info['peer_diagnosis'])})"
            self.fallback_details[key] = self.fallback_details.get(key, 0) + 1

    def report(self, mode: str) -> dict:
        begin = self.first_conn if self.first_conn is not None else self.started  # only a server notes first_conn
        elapsed = max((self.last_end if self.last_end is not None else time.monotonic()) - begin, 1e-9)
        lat = sorted(self.latencies)
        out = {
            "mode": mode, "seconds": round(elapsed, 3), "connections": self.connections, "modes": self.modes,
            "versions": {str(k): v for k, v in self.versions.items()}, "fallbacks": self.fallbacks,
            "fallback_details": self.fallback_details,
            "first_contacts": self.first_contacts, "link_groups": sorted(self.link_groups),
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "throughput_mbs": round((self.bytes_sent + self.bytes_received) / elapsed / 1e6, 3),
            "ops": self.ops, "ops_per_s": round(self.ops / elapsed, 1), "verified": self.verified, "errors": self.errors,
        }  # fmt: skip
        if lat:
            out["latency_us"] = {
                "min": round(lat[0] * 1e6, 1), "p50": round(_pct(lat, 50) * 1e6, 1), "p90": round(_pct(lat, 90) * 1e6, 1),
                "p99": round(_pct(lat, 99) * 1e6, 1), "max": round(lat[-1] * 1e6, 1), "mean": round(statistics.fmean(lat) * 1e6, 1),
            }  # fmt: skip
        if self.connect_times:
            out["connect_ms_p50"] = round(_pct(sorted(self.connect_times), 50) * 1e3, 3)
        return out


def _pct(sorted_values: list[float], p: float) -> float:
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


CLOSE_WAIT = 5.0  # seconds a closing connection may take before the run moves on


@contextlib.asynccontextmanager
async def _session(writer, totals: Totals):
    """Record what went wrong on a connection as an error of the run, and always close it."""
    try:
        yield
    except asyncio.IncompleteReadError as e:  # asyncio's words say nothing of who ended what
        totals.errors.append(f"the peer ended the connection in the middle of the traffic ({len(e.partial)} of {e.expected} bytes of a "
                             "message came): interrupted, or it failed")  # fmt: skip
    except (ConnectionError, TrafficError) as e:
        totals.errors.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()
        try:
            # bounded: a cancelled run (Ctrl-C, smctop stopping traffic) must not hang on a
            # close handshake the peer may never finish. asyncio.timeout, not wait_for: on
            # Python 3.11 wait_for can swallow a cancellation that arrives as the close
            # completes, and a cancelled traffic loop would then run on forever
            async with asyncio.timeout(CLOSE_WAIT):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            pass


@contextlib.asynccontextmanager
async def _subtasks():
    """Tasks a connection's handler starts (the sending half of a bulk transfer): when the
    handler ends or is cancelled they are cancelled too, and their errors, already recorded
    through the other half, are not reported again as "never retrieved"."""
    tasks: list[asyncio.Task] = []
    try:
        yield tasks
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
            t.add_done_callback(lambda t: t.cancelled() or t.exception())


def _smc_info(writer) -> dict | None:
    try:
        return writer.get_extra_info("smc")
    except Exception:  # a plain asyncio writer has no "smc" entry
        return None


# ------------------------------------------------------------------ bulk


async def _send_bulk(writer, pattern: Pattern, total: int, deadline: float | None, totals: Totals) -> None:
    sent = 0
    while (total == 0 or sent < total) and (deadline is None or time.monotonic() < deadline):
        n = CHUNK_SIZE if total == 0 else min(CHUNK_SIZE, total - sent)
        data = pattern.next(n)
        writer.write(CHUNK.pack(len(data)))
        writer.write(data)
        # counted once written, as send() counts: the connection sends it even when this run
        # is interrupted while it waits here (the peer receives it)
        sent += len(data)
        totals.bytes_sent += len(data)
        await writer.drain()
    writer.write(CHUNK.pack(0) + TRAILER.pack(pattern.offset, pattern.crc))
    await writer.drain()


async def _recv_bulk(reader, pattern: Pattern, totals: Totals) -> tuple[bool, int, int]:
    """Read chunks up to the end marker; True when every byte and the sender's CRC match."""
    ok = True
    while True:
        (n,) = CHUNK.unpack(await reader.readexactly(CHUNK.size))
        if n == 0:
            count, crc = TRAILER.unpack(await reader.readexactly(TRAILER.size))
            return ok and count == pattern.offset and crc == pattern.crc, pattern.offset, pattern.crc
        if n > 16 << 20:
            raise TrafficError(f"chunk of {n} bytes is larger than any sender writes")
        while n:  # check the chunk as it comes, in whatever pieces the stream has ready
            data = await reader.read(min(n, RECV_BLOCK))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            ok &= pattern.check(data)
            totals.bytes_received += len(data)
            n -= len(data)


# ------------------------------------------------------------------ server


async def serve(reader, writer, totals: Totals) -> None:
    """Handle one client connection until it ends; errors are recorded, not raised."""
    if totals.first_conn is None:
        totals.first_conn = time.monotonic()
    totals.count_conn(_smc_info(writer))
    try:
        await _serve(reader, writer, totals)
    finally:
        totals.last_end = time.monotonic()


async def _serve(reader, writer, totals: Totals) -> None:
    async with _session(writer, totals), _subtasks() as tasks:
        hdr = Header.decode(await reader.readexactly(HEADER.size))
        if hdr.mode == BULK:
            deadline = time.monotonic() + hdr.duration_ms / 1000 if hdr.duration_ms and not hdr.total else None
            if hdr.direction in (DOWN, BOTH):
                tasks.append(asyncio.create_task(_send_bulk(writer, Pattern(hdr.seed * 2 + 2), hdr.total, deadline, totals)))
            result = (True, 0, 0)
            if hdr.direction in (UP, BOTH):
                result = await _recv_bulk(reader, Pattern(hdr.seed * 2 + 1), totals)
            await asyncio.gather(*tasks)
            writer.write(VERDICT.pack(int(result[0]), result[1], result[2]))
            totals.verified += int(result[0])
            if not result[0]:
                totals.errors.append("upload did not verify")
        else:
            while True:
                (n,) = CHUNK.unpack(await reader.readexactly(CHUNK.size))
                if n == END_RR:
                    writer.write(VERDICT.pack(1, totals.ops, 0))
                    # a client ends a session only after every reply checked out (a wrong one
                    # stops it without END_RR): so the end is this side's verification
                    totals.verified += 1
                    break
                if n > 16 << 20:
                    raise TrafficError(f"request of {n} bytes is too large")
                request = await reader.readexactly(n)
                totals.bytes_received += n
                reply = request if not hdr.size else (request * (hdr.size // max(n, 1) + 1))[: hdr.size]
                writer.write(CHUNK.pack(len(reply)) + reply)
                totals.bytes_sent += len(reply)
                totals.ops += 1
        await writer.drain()
        writer.write_eof()
        await reader.read()


# ------------------------------------------------------------------ client


async def bulk(open_conn: Opener, totals: Totals, *, direction: int, total: int, duration: float, seed: int) -> None:
    t0 = time.monotonic()
    reader, writer = await open_conn()
    totals.connect_times.append(time.monotonic() - t0)
    totals.count_conn(_smc_info(writer))
    async with _session(writer, totals), _subtasks() as tasks:
        writer.write(Header(BULK, direction, 0, total, seed, 0 if total else int(duration * 1000)).encode())
        deadline = time.monotonic() + duration if duration and not total else None
        send = None
        if direction in (UP, BOTH):
            out = Pattern(seed * 2 + 1)
            send = asyncio.create_task(_send_bulk(writer, out, total, deadline, totals))
            tasks.append(send)
        ok_down = True
        if direction in (DOWN, BOTH):
            ok_down, _, _ = await _recv_bulk(reader, Pattern(seed * 2 + 2), totals)
        if send is not None:
            await send
        ok, count, crc = VERDICT.unpack(await reader.readexactly(VERDICT.size))
        if direction in (UP, BOTH) and (not ok or count != out.offset or crc != out.crc):
            raise TrafficError(f"server received {count} bytes CRC {crc:08x}, we sent {out.offset} CRC {out.crc:08x}")
        if not ok_down:
            raise TrafficError("download did not verify")
        totals.verified += 1
        writer.write_eof()
        await reader.read()


async def _rr_once(reader, writer, size: int, totals: Totals, request: bytes) -> None:
    t0 = time.perf_counter()
    writer.write(CHUNK.pack(len(request)) + request)
    await writer.drain()
    (n,) = CHUNK.unpack(await reader.readexactly(CHUNK.size))
    reply = await reader.readexactly(n)
    totals.latencies.append(time.perf_counter() - t0)
    if reply != request[:n] and size == len(request):
        raise TrafficError("the reply differs from the request")
    totals.ops += 1
    totals.bytes_sent += len(request)
    totals.bytes_received += n


async def _rr_end(reader, writer) -> None:
    writer.write(CHUNK.pack(END_RR))
    await writer.drain()
    VERDICT.unpack(await reader.readexactly(VERDICT.size))
    writer.write_eof()
    await reader.read()


def _message(seed: int, size: int) -> bytes:
    """A request of exactly ``size`` bytes: Pattern.next gives at most one block (1 MiB) a call."""
    pattern = Pattern(seed)
    return b"".join(pattern.next(min(BLOCK, size - at)) for at in range(0, size, BLOCK))


async def rr(open_conn: Opener, totals: Totals, *, size: int, duration: float, count: int, seed: int) -> None:
    t0 = time.monotonic()
    reader, writer = await open_conn()
    totals.connect_times.append(time.monotonic() - t0)
    totals.count_conn(_smc_info(writer))
    request = _message(seed, size)
    async with _session(writer, totals):
        writer.write(Header(RR, UP, size, 0, seed).encode())
        deadline = time.monotonic() + duration
        done = 0
        while (count and done < count) or (not count and time.monotonic() < deadline):
            await _rr_once(reader, writer, size, totals, request)
            done += 1
        await _rr_end(reader, writer)
        totals.verified += 1


async def crr(open_conn: Opener, totals: Totals, *, size: int, duration: float, count: int, seed: int) -> None:
    request = _message(seed, size)
    deadline = time.monotonic() + duration
    done = 0
    while (count and done < count) or (not count and time.monotonic() < deadline):
        done += 1
        t0 = time.perf_counter()
        try:
            reader, writer = await open_conn()
        except (ConnectionError, OSError) as e:
            totals.errors.append(f"connect: {e}")
            continue
        totals.connect_times.append(time.perf_counter() - t0)
        totals.count_conn(_smc_info(writer))
        async with _session(writer, totals):
            writer.write(Header(RR, UP, size, 0, seed).encode())
            await _rr_once(reader, writer, size, totals, request)
            totals.latencies[-1] = time.perf_counter() - t0  # connect + request + response
            await _rr_end(reader, writer)
            totals.verified += 1
