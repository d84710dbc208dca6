"""Shared plumbing of the wire codecs: the error type and bounded field access.

Every codec module defines its own subclass of :class:`WireError`, so a caller
can catch exactly one type per codec (``ClcError``, ``LlcError`` ...) or all of
them at once. An error always names the message type, the byte offset and what
was wrong, because an operator reading a decode failure needs all three.
"""

from __future__ import annotations

import struct
from typing import ClassVar


class WireError(ValueError):
    """A message could not be decoded or encoded.

    ``message_type`` names what was being decoded ("CLC Accept", "LLC ADD LINK"),
    ``offset`` is the byte offset of the offending field within that message,
    ``reason`` says what was wrong.
    """

    codec: ClassVar[str] = "wire"

    def __init__(self, message_type: str, offset: int, reason: str) -> None:
        self.message_type = message_type
        self.offset = offset
        self.reason = reason
        super().__init__(f"{message_type}: offset {offset}: {reason}")


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class View:
    """Read big-endian fields from a message, raising the codec's error on overrun.

    ``name`` is the message type reported in errors; it can be narrowed once the
    type byte is known (``view.name = "LLC ADD LINK"``).
    """

    __slots__ = ("buf", "name", "error")

    def __init__(self, buf: bytes | bytearray | memoryview, name: str, error: type[WireError]) -> None:
        self.buf = bytes(buf)
        self.name = name
        self.error = error

    def __len__(self) -> int:
        return len(self.buf)

    def fail(self, offset: int, reason: str) -> WireError:
        return self.error(self.name, offset, reason)

    def need(self, offset: int, size: int, field: str) -> None:
        if offset + size > len(self.buf):
            raise self.fail(
                offset,
                f"{field} needs bytes {offset}..{offset + size - 1} but the message has {len(self.buf)} bytes",
            )

    def u8(self, offset: int, field: str) -> int:
        self.need(offset, 1, field)
        return self.buf[offset]

    def u16(self, offset: int, field: str) -> int:
        self.need(offset, 2, field)
        return _U16.unpack_from(self.buf, offset)[0]

    def u16le(self, offset: int, field: str) -> int:
        self.need(offset, 2, field)
        return int.from_bytes(self.buf[offset : offset + 2], "little")

    def u24(self, offset: int, field: str) -> int:
        self.need(offset, 3, field)
        return int.from_bytes(self.buf[offset : offset + 3], "big")

    def u32(self, offset: int, field: str) -> int:
        self.need(offset, 4, field)
        return _U32.unpack_from(self.buf, offset)[0]

    def u64(self, offset: int, field: str) -> int:
        self.need(offset, 8, field)
        return _U64.unpack_from(self.buf, offset)[0]

    def raw(self, offset: int, size: int, field: str) -> bytes:
        self.need(offset, size, field)
        return self.buf[offset : offset + size]


class Builder:
    """Write big-endian fields into a zeroed buffer, rejecting values that do not fit.

    Reserved bytes stay zero, as RFC 7609 requires of a sender.
    """

    __slots__ = ("buf", "name", "error")

    def __init__(self, size: int, name: str, error: type[WireError]) -> None:
        self.buf = bytearray(size)
        self.name = name
        self.error = error

    def fail(self, offset: int, reason: str) -> WireError:
        return self.error(self.name, offset, reason)

    def uint(self, offset: int, size: int, value: int, field: str, *, order: str = "big") -> None:
        check_uint(value, size * 8, field, self.name, offset, self.error)
        self.buf[offset : offset + size] = int(value).to_bytes(size, order)

    def u8(self, offset: int, value: int, field: str) -> None:
        self.uint(offset, 1, value, field)

    def u16(self, offset: int, value: int, field: str) -> None:
        self.uint(offset, 2, value, field)

    def u24(self, offset: int, value: int, field: str) -> None:
        self.uint(offset, 3, value, field)

    def u32(self, offset: int, value: int, field: str) -> None:
        self.uint(offset, 4, value, field)

    def u64(self, offset: int, value: int, field: str) -> None:
        self.uint(offset, 8, value, field)

    def raw(self, offset: int, value: bytes, size: int, field: str) -> None:
        value = bytes(value)
        if len(value) != size:
            raise self.fail(offset, f"{field} must be {size} bytes, got {len(value)}")
        self.buf[offset : offset + size] = value

    def bytes(self) -> bytes:
        return bytes(self.buf)


def check_uint(value: int, bits: int, field: str, message_type: str, offset: int, error: type[WireError]) -> None:
    """Reject a value that is not an integer in [0, 2**bits)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(message_type, offset, f"{field} must be an integer, got {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise error(message_type, offset, f"{field}={value} does not fit in {bits} bits")


def check_choice(value: object, choices: tuple, field: str, message_type: str, offset: int, error: type[WireError]) -> None:
    if value not in choices:
        raise error(message_type, offset, f"{field}={value!r} is not one of {choices}")
