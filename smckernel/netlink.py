"""Netlink framing, pure: messages, attributes and the generic netlink header.

Nothing here opens a socket or reads a clock (``smckernel.kio`` does the I/O). Every
decoder takes bytes a kernel (or a fixture, or an attacker) produced and raises only
:class:`FormatError`, whose message says what was wrong and where.

Facts from the kernel's uapi (include/uapi/linux/netlink.h, genetlink.h): a message is a
16-byte ``nlmsghdr`` (length, type, flags, sequence, port id) and a body padded to 4
bytes; an attribute is a 4-byte ``nlattr`` (length, type with the NESTED and
NET_BYTEORDER flags in its top two bits) and a payload padded to 4 bytes; a generic
netlink body starts with a 4-byte ``genlmsghdr`` (command, version, reserved).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x10  # the dump was interrupted by a change (the kernel says: try again)
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

NETLINK_SOCK_DIAG, NETLINK_GENERIC = 4, 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_VERSION = 1, 2, 3
CTRL_ATTR_HDRSIZE, CTRL_ATTR_MAXATTR, CTRL_ATTR_OPS = 4, 5, 6
CTRL_ATTR_OP_ID, CTRL_ATTR_OP_FLAGS = 1, 2
GENL_ADMIN_PERM, GENL_CMD_CAP_DO, GENL_CMD_CAP_DUMP = 0x01, 0x02, 0x04

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")


class FormatError(ValueError):
    """Bytes that are not what the kernel sends: the message says what and where."""


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    flags: int
    seq: int
    pid: int
    body: bytes


def pad4(n: int) -> int:
    return (n + 3) & ~3


def message(mtype: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """One netlink message (header and body), padded."""
    n = _HDR.size + len(body)
    return _HDR.pack(n, mtype, flags, seq, pid) + body + bytes(pad4(n) - n)


def attr(atype: int, data: bytes) -> bytes:
    n = _ATTR.size + len(data)
    return _ATTR.pack(n, atype) + data + bytes(pad4(n) - n)


def genl_header(cmd: int, version: int = 1) -> bytes:
    return struct.pack("=BBH", cmd, version, 0)


def messages(data: bytes) -> Iterator[Message]:
    """Split a stream of netlink messages (one datagram, or several concatenated)."""
    off, end = 0, len(data)
    while off < end:
        if end - off < _HDR.size:
            raise FormatError(f"{end - off} bytes at offset {off} are too few for a netlink header")
        n, mtype, flags, seq, pid = _HDR.unpack_from(data, off)
        if n < _HDR.size or off + n > end:
            raise FormatError(f"netlink message at offset {off} claims {n} bytes, {end - off} are left")
        yield Message(mtype, flags, seq, pid, bytes(data[off + _HDR.size : off + n]))
        off += pad4(n)


def error_code(body: bytes) -> int:
    """The (negative) errno of an NLMSG_ERROR body, 0 for an acknowledgement."""
    if len(body) < 4:
        raise FormatError(f"NLMSG_ERROR body of {len(body)} bytes is too short")
    return struct.unpack_from("=i", body)[0]


def attrs(data: bytes, where: str = "attributes") -> list[tuple[int, bytes]]:
    """The attributes in ``data`` as (type without flags, payload)."""
    out = []
    off, end = 0, len(data)
    while off + _ATTR.size <= end:
        n, atype = _ATTR.unpack_from(data, off)
        if n < _ATTR.size or off + n > end:
            raise FormatError(f"{where}: attribute at offset {off} claims {n} bytes, {end - off} are left")
        out.append((atype & NLA_TYPE_MASK, bytes(data[off + _ATTR.size : off + n])))
        off += pad4(n)
    if off < end and any(data[off:end]):
        raise FormatError(f"{where}: {end - off} stray bytes after the last attribute")
    return out


def genl_body(body: bytes) -> tuple[int, int, bytes]:
    """(command, version, attributes) of a generic netlink message body."""
    if len(body) < 4:
        raise FormatError(f"generic netlink body of {len(body)} bytes has no header")
    cmd, version, _ = struct.unpack_from("=BBH", body)
    return cmd, version, body[4:]


# ---------------------------------------------------------------------------- scalar payloads


def u8(data: bytes, name: str) -> int:
    if len(data) < 1:
        raise FormatError(f"{name}: empty, a u8 was expected")
    return data[0]


def u16(data: bytes, name: str) -> int:
    if len(data) < 2:
        raise FormatError(f"{name}: {len(data)} bytes, a u16 was expected")
    return struct.unpack_from("=H", data)[0]


def u32(data: bytes, name: str) -> int:
    if len(data) < 4:
        raise FormatError(f"{name}: {len(data)} bytes, a u32 was expected")
    return struct.unpack_from("=I", data)[0]


def u64(data: bytes, name: str) -> int:
    if len(data) < 8:
        raise FormatError(f"{name}: {len(data)} bytes, a u64 was expected")
    return struct.unpack_from("=Q", data)[0]


def uint(data: bytes, name: str) -> int:
    """NLA_UINT (nla_put_uint): 4 bytes when the value fits, else 8."""
    if len(data) == 4:
        return struct.unpack("=I", data)[0]
    return u64(data, name)


def string(data: bytes, name: str) -> str:
    """A NUL-terminated (or NUL-padded) string; bytes that are not UTF-8 are shown escaped."""
    text = data.split(b"\0", 1)[0]
    return text.decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------- generic netlink control


@dataclass(frozen=True)
class Family:
    """A generic netlink family as the controller describes it."""

    name: str
    id: int
    version: int
    maxattr: int
    ops: dict[int, int]  # command -> flags (GENL_ADMIN_PERM, GENL_CMD_CAP_DO/DUMP)

    def can_dump(self, cmd: int) -> bool:
        flags = self.ops.get(cmd)
        return flags is not None and bool(flags & GENL_CMD_CAP_DUMP)


def getfamily_body(name: str) -> bytes:
    """The body of a CTRL_CMD_GETFAMILY request for family ``name``."""
    return genl_header(CTRL_CMD_GETFAMILY) + attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")


def parse_family(body: bytes) -> Family:
    """The controller's answer to CTRL_CMD_GETFAMILY."""
    _cmd, _ver, rest = genl_body(body)
    fam = dict(attrs(rest, "genl family"))
    if CTRL_ATTR_FAMILY_ID not in fam:
        raise FormatError("genl family: no family id in the controller's answer")
    ops: dict[int, int] = {}
    for _i, op in attrs(fam.get(CTRL_ATTR_OPS, b""), "genl family ops"):
        o = dict(attrs(op, "genl family op"))
        if CTRL_ATTR_OP_ID in o:
            ops[u32(o[CTRL_ATTR_OP_ID], "op id")] = u32(o[CTRL_ATTR_OP_FLAGS], "op flags") if CTRL_ATTR_OP_FLAGS in o else 0
    return Family(
        name=string(fam.get(CTRL_ATTR_FAMILY_NAME, b""), "family name"),
        id=u16(fam[CTRL_ATTR_FAMILY_ID], "family id"),
        version=u32(fam[CTRL_ATTR_VERSION], "family version") if CTRL_ATTR_VERSION in fam else 0,
        maxattr=u32(fam[CTRL_ATTR_MAXATTR], "family maxattr") if CTRL_ATTR_MAXATTR in fam else 0,
        ops=ops,
    )


def dump_bodies(stream: bytes) -> tuple[list[bytes], int, bool]:
    """The message bodies of a recorded dump reply, the error it ended with (negative errno,
    0 for none) and whether the kernel flagged it interrupted (NLM_F_DUMP_INTR)."""
    out: list[bytes] = []
    interrupted = False
    for m in messages(stream):
        interrupted = interrupted or bool(m.flags & NLM_F_DUMP_INTR)
        if m.type == NLMSG_DONE:
            err = struct.unpack_from("=i", m.body)[0] if len(m.body) >= 4 else 0
            return out, err, interrupted
        if m.type == NLMSG_ERROR:
            return out, error_code(m.body), interrupted
        if m.type in (NLMSG_NOOP, NLMSG_OVERRUN):
            continue
        out.append(m.body)
    return out, 0, interrupted
