"""The compiled soft-RoCE engine's raw tap records (native/softroce/module.c tap_read_raw):
one bytes object holds a batch of frames, each a fixed header and then the drop reason
and the captured frame. The engine hands them out raw so that a consumer in C (the
recorder's spool) or across a socket (the control socket's ``frames.raw``) takes a whole
batch without a Python object per frame.

Header, little endian: record size, direction (0 tx, 1 rx), reason length, UDP source and
destination ports, 2 pad bytes, IPv4 source and destination (network order), captured
length, length on the wire, 4 pad bytes, timestamp (ns, wall clock).
"""

from __future__ import annotations

import socket
import struct
from typing import Iterable

TAPREC = struct.Struct("<IBBHH2x4s4sII4xq")


def count_raw(blob: bytes) -> int:
    """How many frames a blob of raw tap records holds (up to the first damaged one)."""
    n = pos = 0
    while pos + 4 <= len(blob):
        (size,) = struct.unpack_from("<I", blob, pos)
        if size < TAPREC.size:
            break
        n += 1
        pos += size
    return n


def pack_raw(records: Iterable) -> bytes:
    """Raw records from FrameRecords (stack/verbs/api.py), as the engine would have given
    them: for a raw tap added while a batch was being read as records."""
    out = []
    for r in records:
        reason = (r.dropped or "").encode()
        payload = bytes(r.payload)
        wire = r.length if getattr(r, "length", None) is not None else len(payload)
        out.append(TAPREC.pack(TAPREC.size + len(reason) + len(payload), r.direction == "rx", len(reason), r.sport, r.dport,
                               socket.inet_aton(r.src), socket.inet_aton(r.dst), len(payload), wire, r.timestamp_ns))  # fmt: skip
        out += (reason, payload)
    return b"".join(out)
