"""Event records inside a capture: exported-PDU records (LINKTYPE_WIRESHARK_UPPER_PDU) that
hand the canonical JSON of one event to Wireshark's ``json`` dissector, so they show as a
tree without any plugin; the protocol-column tag says ``SMCTOP``, which is how our Lua
plugin and our reader tell them from other exported PDUs.

Record: TLVs (tag u16 BE, length u16 BE, value NUL-padded to 4 bytes), tag 0 ends them,
then the JSON text. Tags used: 12 dissector name, 33 protocol column text.
"""

from __future__ import annotations

import struct

from stack.events import Event, from_json, native_encoder, to_json

TAG_END = 0
TAG_DISSECTOR_NAME = 12
TAG_COL_PROT = 33
MARKER = "SMCTOP"
DISSECTOR = "json"


class RecordError(ValueError):
    pass


def _tlv(tag: int, value: bytes) -> bytes:
    padded = value + b"\0" * (4 - len(value) % 4)  # NUL-terminated, padded to 4, as Wireshark writes strings
    return struct.pack("!HH", tag, len(padded)) + padded


HEADER = _tlv(TAG_DISSECTOR_NAME, DISSECTOR.encode()) + _tlv(TAG_COL_PROT, MARKER.encode()) + struct.pack("!HH", TAG_END, 0)
_HEADER = HEADER
_native = native_encoder()


def field_bytes(value) -> bytes:
    """A message's bytes from an event field: bytes in process, lower-case hex once through
    JSON; anything else (a damaged record) gives no bytes rather than an error."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def encode_record(event: Event) -> bytes:
    """The exported-PDU record of an event: the tags, then its canonical JSON."""
    if _native is not None:
        return _native.record(event, HEADER)
    return HEADER + to_json(event).encode()


def parse_tags(data: bytes) -> tuple[dict[int, bytes], int]:
    """The TLVs of an exported PDU and the offset of its payload."""
    tags: dict[int, bytes] = {}
    pos = 0
    while True:
        if pos + 4 > len(data):
            raise RecordError(f"exported PDU: tag list runs past the record at byte {pos}")
        tag, size = struct.unpack_from("!HH", data, pos)
        pos += 4
        if tag == TAG_END:
            return tags, pos
        if pos + size > len(data):
            raise RecordError(f"exported PDU: tag {tag} of {size} bytes runs past the record at byte {pos}")
        tags[tag] = data[pos : pos + size]
        pos += size


def is_event_record(data: bytes) -> bool:
    if data.startswith(HEADER):  # as the recorder writes every one
        return True
    try:
        tags, _ = parse_tags(data)
    except RecordError:
        return False
    return tags.get(TAG_COL_PROT, b"").rstrip(b"\0") == MARKER.encode()


def decode_record(data: bytes) -> Event:
    """The event in one of our records; RecordError names what is wrong."""
    if data.startswith(HEADER):  # the recorder's own tags: nothing to parse
        pos = len(HEADER)
    else:
        tags, pos = parse_tags(data)
        if tags.get(TAG_COL_PROT, b"").rstrip(b"\0") != MARKER.encode():
            raise RecordError("exported PDU is not an smctop event record (no SMCTOP protocol tag)")
    try:
        return from_json(data[pos:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"smctop event record: {e}") from None
