"""The wire protocol between smc-traffic client and server (inside the SMC or TCP stream).

Header, client to server (32 bytes): "SMCT", version, mode (1 bulk, 2 request/response),
direction (bulk: 1 up, 2 down, 3 both), flags, message size (u32), total bytes (u64, 0 =
until the duration ends), seed (u64), duration in ms (u32).

Bulk data travels in chunks (u32 length + bytes; the sender writes 1 MiB chunks, a receiver
checks each in whatever pieces arrive) and ends with a zero length, the byte
count (u64) and the CRC-32 of everything sent. The receiver checks both; the server
answers with a verdict: ok (u8), bytes it received (u64), their CRC-32 (u32).
Request/response: a request is u32 length + bytes, the reply the same; length
0xFFFFFFFF ends the session (the server answers with a verdict).

Data comes from a 1 MiB block seeded per connection, so the receiver knows what to expect.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from native.softroce import crc32_function

MAGIC = b"SMCT"
VERSION = 1
BULK, RR = 1, 2
UP, DOWN, BOTH = 1, 2, 3
END_RR = 0xFFFFFFFF
HEADER = struct.Struct("!4sBBBBIQQI")
CHUNK = struct.Struct("!I")
TRAILER = struct.Struct("!QI")
VERDICT = struct.Struct("!BQI")
BLOCK = 1 << 20
# zlib's CRC-32; the compiled one when built: at zlib's speed the checksums of a checked
# transfer took more CPU than either stack (for TCP and SMC-R alike)
crc32 = crc32_function()


class TrafficError(Exception):
    """The peer broke the traffic protocol or the data did not check out."""


@dataclass(frozen=True)
class Header:
    mode: int
    direction: int = UP
    size: int = 0
    total: int = 0
    seed: int = 0
    duration_ms: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.mode, self.direction, 0, self.size, self.total, self.seed, self.duration_ms)

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        magic, version, mode, direction, _, size, total, seed, duration = HEADER.unpack(data)
        if magic != MAGIC:
            raise TrafficError(f"not an smc-traffic peer: header starts {magic!r}")
        if version != VERSION or mode not in (BULK, RR) or direction not in (UP, DOWN, BOTH):
            raise TrafficError(f"unsupported header: version {version}, mode {mode}, direction {direction}")
        return cls(mode, direction, size, total, seed, duration)


class Pattern:
    """The deterministic byte stream of one direction of one connection."""

    def __init__(self, seed: int) -> None:
        self.block = random.Random(seed).randbytes(BLOCK) * 2  # doubled so any window is one slice
        self.offset = 0
        self.crc = 0

    def next(self, n: int) -> memoryview:
        start = self.offset % BLOCK
        out = memoryview(self.block)[start : start + min(n, BLOCK)]
        self.offset += len(out)
        self.crc = crc32(out, self.crc)
        return out

    def check(self, data: bytes | memoryview) -> bool:
        """Consume ``data`` as the next bytes of the stream; False if they differ."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        pos = 0
        ok = True
        while pos < len(data):
            start = self.offset % BLOCK
            n = min(len(data) - pos, BLOCK)
            # startswith is one memcmp; comparing memoryviews goes byte by byte (about 50x slower,
            # which made the checker, not the transport, the limit of a checked transfer)
            ok &= data.startswith(memoryview(self.block)[start : start + n], pos)
            self.crc = crc32(memoryview(data)[pos : pos + n], self.crc)
            self.offset += n
            pos += n
        return ok
