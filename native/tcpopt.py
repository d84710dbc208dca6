"""The SMC experimental TCP option in pure Python: the twin of ``native/smc_tcpopt.h``.

RFC 7609 (A.1) signals SMC capability with a TCP option in the SYN and SYN-ACK: the
experimental kind 254 (RFC 6994) with the 4-byte ExID 0xE2D4C3D9, 6 bytes in all. Linux
writes exactly that (``smc_options_write``) and accepts, on a SYN, any even length >= 6
that starts with the ExID (``smc_parse_options``), walking the options as
``tcp_parse_options`` does: EOL ends the list, NOP is skipped, a length below 2 or past
the end of the options ends the walk without a match.

``find`` gives the same answer as the C ``smc_tcpopt_find`` that the BPF program runs
(tests/unit/test_tcpopt.py compares them on generated headers).
"""

from __future__ import annotations

import struct

KIND = 254
LENGTH = 6
EXID = 0xE2D4C3D9
OPTION = bytes([KIND, LENGTH]) + EXID.to_bytes(4, "big")
MAX_HEADER = 60
SYN, ACK = 0x02, 0x10


class TcpOptionError(ValueError):
    """The bytes are not a TCP header this module can read or build."""


def find(header: bytes) -> int:
    """1 if the TCP header is a SYN (or SYN-ACK) carrying the SMC option, 0 if not, -1 if
    it is not a TCP header (shorter than 20 bytes, than its data offset, or over 60)."""
    n = len(header)
    if n < 20 or n > MAX_HEADER:
        return -1
    doff = (header[12] >> 4) * 4
    if doff < 20 or doff > n:
        return -1
    if not header[13] & SYN:
        return 0
    off = 20
    while off < doff:
        kind = header[off]
        if kind == 0:
            return 0
        if kind == 1:
            off += 1
            continue
        if doff - off < 2:
            return 0
        size = header[off + 1]
        if size < 2 or size > doff - off:
            return 0
        if kind == KIND and size % 2 == 0 and size >= LENGTH and header[off + 2 : off + 6] == OPTION[2:]:
            return 1
        off += size
    return 0


def carries_smc(header: bytes) -> bool:
    """True when ``find`` says 1; a malformed header raises TcpOptionError."""
    verdict = find(header)
    if verdict < 0:
        raise TcpOptionError(f"not a TCP header: {len(header)} bytes (data offset {header[12] >> 4 if len(header) > 12 else '?'})")
    return verdict == 1


def options(header: bytes) -> list[tuple[int, bytes]]:
    """The (kind, data) options of a TCP header, EOL and NOP left out, as far as they parse."""
    if find(header) < 0:
        raise TcpOptionError(f"not a TCP header: {len(header)} bytes")
    doff = (header[12] >> 4) * 4
    out, off = [], 20
    while off < doff:
        kind = header[off]
        if kind == 0:
            break
        if kind == 1:
            off += 1
            continue
        if doff - off < 2 or not 2 <= header[off + 1] <= doff - off:
            break
        out.append((kind, bytes(header[off + 2 : off + header[off + 1]])))
        off += header[off + 1]
    return out


def build_header(flags: int = SYN, opts: bytes = OPTION, sport: int = 40000, dport: int = 5000,
                 seq: int = 0, ack: int = 0, window: int = 64240) -> bytes:  # fmt: skip
    """A TCP header with ``opts`` as its option bytes (padded with EOL to 4 bytes)."""
    if len(opts) > 40:
        raise TcpOptionError(f"{len(opts)} option bytes: at most 40 fit a TCP header")
    opts = bytes(opts) + bytes(-len(opts) % 4)
    doff = (20 + len(opts)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0) + opts
