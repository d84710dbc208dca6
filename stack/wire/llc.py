"""LLC (link layer control) messages, sent as RDMA SENDs on a link's RC QP.

Layouts follow Linux ``net/smc/smc_llc.c``. Version 1 messages are 44 bytes: type @0,
length @1 (= 44), byte @2 (ADD LINK reject reason in bits 3-0), flags @3. In an SMC-Rv2
link group every message carries version nibble 2 in byte 0 (types 0x21..0x29) and a
16-bit length in bytes 1-2; ADD LINK v2, REQUEST ADD LINK v2 and DELETE RKEY v2 can be
longer than 44 bytes (up to 8192).

The byte-order trap (digest sections 5.2 and 12): Linux writes ``length_v2`` and ADD
LINK v2 ``num_rkeys`` as plain host-order u16, without htons. An x86-64 kernel therefore
puts a 44-byte Confirm Link v2 on the wire as ``21 2c 00`` (little-endian), an s390
kernel as ``21 00 2c``, and Wireshark reads it big-endian. This codec handles it on
purpose:

* encoding takes ``order`` ("little" by default, the x86-64 Linux peer that matters;
  "big" for s390 peers and for what Wireshark 4.0 expects);
* decoding takes ``order="auto"`` by default: of the two readings it keeps the one that
  equals the number of bytes given (a SEND's byte count from its completion, or a
  captured payload); when both or neither do, it keeps the little-endian reading if that
  is a legal length, else the big-endian one. :func:`decode` reports which order it
  used in ``message.order`` so a stack can answer a peer in the peer's own order.

All other multi-byte fields are big-endian.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from ._base import Builder, View, WireError, check_uint

LLC_LEN = 44  # SMC_WR_TX_SIZE
LLC_V2_MAX_LEN = 8192  # SMC_WR_BUF_V2_SIZE
GID_LEN = 16
RMBS_PER_LGR_MAX = 255  # SMC_RMBS_PER_LGR_MAX: the kernel never counts more connections

FLAG_RESP = 0x80
FLAG_ADD_LNK_REJ = 0x40
FLAG_DEL_LINK_ALL = 0x40
FLAG_DEL_LINK_ORDERLY = 0x20
FLAG_RKEY_NEG = 0x20
FLAG_RKEY_RETRY = 0x10
FLAG_NO_RMBE_EYEC = 0x03

ORDERS = ("little", "big")


class LlcError(WireError):
    codec = "llc"


class LlcType(IntEnum):
    """enum smc_llc_msg_type (v1 numbers; v2 adds 0x20)."""

    CONFIRM_LINK = 0x01
    ADD_LINK = 0x02
    ADD_LINK_CONT = 0x03
    DELETE_LINK = 0x04
    REQ_ADD_LINK = 0x05
    CONFIRM_RKEY = 0x06
    TEST_LINK = 0x07
    CONFIRM_RKEY_CONT = 0x08
    DELETE_RKEY = 0x09


_NAMES = {
    LlcType.CONFIRM_LINK: "CONFIRM LINK",
    LlcType.ADD_LINK: "ADD LINK",
    LlcType.ADD_LINK_CONT: "ADD LINK CONTINUATION",
    LlcType.DELETE_LINK: "DELETE LINK",
    LlcType.REQ_ADD_LINK: "REQUEST ADD LINK",
    LlcType.CONFIRM_RKEY: "CONFIRM RKEY",
    LlcType.TEST_LINK: "TEST LINK",
    LlcType.CONFIRM_RKEY_CONT: "CONFIRM RKEY CONTINUATION",
    LlcType.DELETE_RKEY: "DELETE RKEY",
}
# Types without a v2 form: the continuations (rkeys travel inside ADD LINK v2 instead).
_V1_ONLY = {LlcType.ADD_LINK_CONT, LlcType.CONFIRM_RKEY_CONT}


@dataclass(frozen=True)
class RkeyTriple:
    """One RMB on a new link: its rkey on an existing link, its rkey and address on the new one."""

    rkey: int
    new_rkey: int
    new_vaddr: int


@dataclass(frozen=True)
class Rtoken:
    """One (link id, rkey, RMB address) token of CONFIRM RKEY (struct smc_rmb_rtoken)."""

    link_id: int
    rkey: int
    vaddr: int


@dataclass(frozen=True, kw_only=True)
class LlcMessage:
    version: int = 1
    response: bool = False
    # Byte order of length_v2 this message was decoded with (not compared, not encoded).
    order: str = field(default="little", compare=False, repr=False)

    llc_type: ClassVar[LlcType]

    @property
    def name(self) -> str:
        return f"LLC {_NAMES[self.llc_type]}" + (" v2" if self.version >= 2 else "")

    @property
    def type_byte(self) -> int:
        return int(self.llc_type) | (0x20 if self.version >= 2 else 0)

    # Subclasses: size of the message, flag bits besides RESP, body encoder and decoder.
    def _size(self) -> int:
        return LLC_LEN

    def _flags(self) -> int:
        return 0

    def _byte2(self) -> int:
        return 0

    # Concrete messages define _encode_body(builder, order) and the classmethod
    # _decode_body(view, common_fields, flags, order).

    def encode(self, order: str = "little") -> bytes:
        """Encode; ``order`` is the byte order of the v2 length (see the module docstring)."""
        if order not in ORDERS:
            raise LlcError(self.name, 1, f"byte order must be 'little' or 'big', not {order!r}")
        if self.version not in (1, 2):
            raise LlcError(self.name, 0, f"LLC version {self.version} is neither 1 nor 2")
        if self.version == 2 and self.llc_type in _V1_ONLY:
            raise LlcError(self.name, 0, "this message type has no v2 form")
        size = self._size()
        if not LLC_LEN <= size <= LLC_V2_MAX_LEN:
            raise LlcError(self.name, 1, f"message of {size} bytes does not fit 44..8192")
        if self.version == 1 and size != LLC_LEN:
            raise LlcError(self.name, 1, f"a v1 LLC message is 44 bytes, this one needs {size}")
        b = Builder(size, self.name, LlcError)
        b.u8(0, self.type_byte, "type")
        if self.version == 1:
            b.u8(1, LLC_LEN, "length")
            b.u8(2, self._byte2(), "byte 2")
        else:
            b.uint(1, 2, size, "length_v2", order=order)
        b.u8(3, (FLAG_RESP if self.response else 0) | self._flags(), "flags")
        self._encode_body(b, order)  # type: ignore[attr-defined]
        return b.bytes()


def _resp(flags: int) -> bool:
    return bool(flags & FLAG_RESP)


@dataclass(frozen=True, kw_only=True)
class ConfirmLink(LlcMessage):
    mac: bytes
    gid: bytes
    qpn: int
    link_num: int
    link_uid: bytes  # 4 opaque bytes (Linux: LGR id + link id)
    max_links: int = 2
    max_conns: int = 0  # v2.1 only
    rmbe_eyec_flags: int = FLAG_NO_RMBE_EYEC  # bits 0x03: "no RMBE eyecatcher", Linux sets both

    llc_type = LlcType.CONFIRM_LINK

    def _flags(self) -> int:
        check_uint(self.rmbe_eyec_flags, 2, "rmbe_eyec_flags", self.name, 3, LlcError)
        return self.rmbe_eyec_flags

    def _encode_body(self, b: Builder, order: str) -> None:
        b.raw(4, self.mac, 6, "mac")
        b.raw(10, self.gid, GID_LEN, "gid")
        b.u24(26, self.qpn, "qpn")
        b.u8(29, self.link_num, "link_num")
        b.raw(30, self.link_uid, 4, "link_uid")
        b.u8(34, self.max_links, "max_links")
        b.u8(35, self.max_conns, "max_conns")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        return cls(
            **common, mac=v.raw(4, 6, "mac"), gid=v.raw(10, GID_LEN, "gid"), qpn=v.u24(26, "qpn"),
            link_num=v.u8(29, "link_num"), link_uid=v.raw(30, 4, "link_uid"), max_links=v.u8(34, "max_links"),
            max_conns=v.u8(35, "max_conns"), rmbe_eyec_flags=flags & FLAG_NO_RMBE_EYEC,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AddLink(LlcMessage):
    mac: bytes
    gid: bytes
    qpn: int  # 0 in a v1 client "invitation"
    link_num: int
    qp_mtu: int  # enum ib_mtu code
    psn: int
    rejected: bool = False
    reject_reason: int = 0  # v1: byte 2 bits 3-0; v2: flags bits 3-0 (where Wireshark reads it)
    # v2 extension
    direct: bool = False
    target_gid: bytes = bytes(GID_LEN)
    rkeys: tuple[RkeyTriple, ...] = ()
    # num_rkeys as written when it is more than len(rkeys) (0: len(rkeys)): the kernel
    # counts the group's connections but fills only the RMBs in use (smc_llc_fill_ext_v2),
    # so it may announce more triples than the message's length carries.
    num_rkeys: int = 0

    llc_type = LlcType.ADD_LINK

    def _size(self) -> int:
        return 72 + 16 * len(self.rkeys) if self.version >= 2 else LLC_LEN

    def _flags(self) -> int:
        check_uint(self.reject_reason, 4, "reject_reason", self.name, 2, LlcError)
        return (FLAG_ADD_LNK_REJ if self.rejected else 0) | (self.reject_reason if self.version >= 2 else 0)

    def _byte2(self) -> int:
        return self.reject_reason

    def _encode_body(self, b: Builder, order: str) -> None:
        b.raw(4, self.mac, 6, "mac")
        b.raw(12, self.gid, GID_LEN, "gid")
        b.u24(28, self.qpn, "qpn")
        b.u8(31, self.link_num, "link_num")
        check_uint(self.qp_mtu, 4, "qp_mtu", self.name, 32, LlcError)
        b.u8(32, self.qp_mtu, "qp_mtu")
        b.u24(33, self.psn, "psn")
        if self.version >= 2:
            b.u8(44, 0x80 if self.direct else 0, "v2_direct")
            b.raw(46, self.target_gid, GID_LEN, "target_gid")
            check_uint(self.num_rkeys, 8, "num_rkeys", self.name, 70, LlcError)
            b.uint(70, 2, max(self.num_rkeys, len(self.rkeys)), "num_rkeys", order=order)
            for i, t in enumerate(self.rkeys):
                o = 72 + 16 * i
                b.u32(o, t.rkey, "rkey")
                b.u32(o + 4, t.new_rkey, "new_rkey")
                b.u64(o + 8, t.new_vaddr, "new_vaddr")
        elif self.rkeys or self.direct or any(self.target_gid) or self.num_rkeys:
            raise b.fail(44, "a v1 ADD LINK has no v2 extension (use ADD LINK CONTINUATION for rkeys)")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        version = common["version"]
        fields = dict(
            mac=v.raw(4, 6, "mac"), gid=v.raw(12, GID_LEN, "gid"), qpn=v.u24(28, "qpn"),
            link_num=v.u8(31, "link_num"), qp_mtu=v.u8(32, "qp_mtu") & 0x0F, psn=v.u24(33, "psn"),
            rejected=bool(flags & FLAG_ADD_LNK_REJ),
        )  # fmt: skip
        if version == 1:
            fields["reject_reason"] = v.u8(2, "reject_reason") & 0x0F
            return cls(**common, **fields)
        fields["reject_reason"] = flags & 0x0F
        if len(v) == LLC_LEN and (fields["rejected"] or (v.u16le(1, "length_v2") if order == "little" else v.u16(1, "length_v2")) > LLC_LEN):
            # 44 bytes: the kernel's bare reject (smc_llc_cli_add_link_reject), or its echo of a
            # longer request, length_v2 and all (see decode); neither carries the extension
            return cls(**common, **fields)
        n = v.u16le(70, "num_rkeys") if order == "little" else v.u16(70, "num_rkeys")
        # The length says how many triples were filled in; num_rkeys may count more (the
        # kernel's sender counts connections, smc_llc_fill_ext_v2) and its receiver reads
        # what is there (smc_llc_save_add_link_rkeys). Fewer announced than carried, or a
        # partial triple, no kernel sends.
        carried, partial = divmod(len(v) - 72, 16)
        if partial:
            raise v.fail(70, f"{len(v) - 72} bytes after num_rkeys are not whole 16-byte rkey triples")
        if n < carried:
            raise v.fail(70, f"num_rkeys {n} ({order}-endian) but the message carries {carried} triples")
        if n > RMBS_PER_LGR_MAX:
            raise v.fail(70, f"num_rkeys {n} ({order}-endian): a link group has at most {RMBS_PER_LGR_MAX} RMBs")
        rkeys = tuple(RkeyTriple(v.u32(72 + 16 * i, "rkey"), v.u32(76 + 16 * i, "new_rkey"), v.u64(80 + 16 * i, "new_vaddr")) for i in range(carried))
        return cls(
            **common, **fields, direct=bool(v.u8(44, "v2_direct") & 0x80),
            target_gid=v.raw(46, GID_LEN, "target_gid"), rkeys=rkeys, num_rkeys=n if n > carried else 0,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AddLinkCont(LlcMessage):
    """ADD LINK CONTINUATION (v1 only): up to two rkey triples per message."""

    link_num: int
    num_rkeys: int  # rkeys remaining, counting the ones in this message
    rkeys: tuple[RkeyTriple, ...] = ()

    llc_type = LlcType.ADD_LINK_CONT

    def _encode_body(self, b: Builder, order: str) -> None:
        if len(self.rkeys) != min(self.num_rkeys, 2):
            raise b.fail(5, f"num_rkeys {self.num_rkeys} means {min(self.num_rkeys, 2)} triples here, got {len(self.rkeys)}")
        b.u8(4, self.link_num, "link_num")
        b.u8(5, self.num_rkeys, "num_rkeys")
        for i, t in enumerate(self.rkeys):
            o = 8 + 16 * i
            b.u32(o, t.rkey, "rkey")
            b.u32(o + 4, t.new_rkey, "new_rkey")
            b.u64(o + 8, t.new_vaddr, "new_vaddr")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        n = v.u8(5, "num_rkeys")
        rkeys = tuple(RkeyTriple(v.u32(8 + 16 * i, "rkey"), v.u32(12 + 16 * i, "new_rkey"), v.u64(16 + 16 * i, "new_vaddr")) for i in range(min(n, 2)))
        return cls(**common, link_num=v.u8(4, "link_num"), num_rkeys=n, rkeys=rkeys)


@dataclass(frozen=True, kw_only=True)
class DeleteLink(LlcMessage):
    link_num: int
    reason: int  # codes.DELETE_LINK_REASONS
    all: bool = False
    orderly: bool = False

    llc_type = LlcType.DELETE_LINK

    def _flags(self) -> int:
        return (FLAG_DEL_LINK_ALL if self.all else 0) | (FLAG_DEL_LINK_ORDERLY if self.orderly else 0)

    def _encode_body(self, b: Builder, order: str) -> None:
        b.u8(4, self.link_num, "link_num")
        b.u32(5, self.reason, "reason")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        return cls(
            **common, link_num=v.u8(4, "link_num"), reason=v.u32(5, "reason"),
            all=bool(flags & FLAG_DEL_LINK_ALL), orderly=bool(flags & FLAG_DEL_LINK_ORDERLY),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class RequestAddLink(LlcMessage):
    """REQUEST ADD LINK: the client's GIDs (v2; a v1 form fits one GID, Linux never sends it)."""

    gids: tuple[bytes, ...] = ()
    rejected: bool = False
    reject_reason: int = 0

    llc_type = LlcType.REQ_ADD_LINK

    def _size(self) -> int:
        return max(LLC_LEN, 28 + GID_LEN * len(self.gids))

    def _flags(self) -> int:
        check_uint(self.reject_reason, 4, "reject_reason", self.name, 3, LlcError)
        return (FLAG_ADD_LNK_REJ if self.rejected else 0) | self.reject_reason

    def _encode_body(self, b: Builder, order: str) -> None:
        b.u8(24, len(self.gids), "gid_cnt")
        for i, g in enumerate(self.gids):
            b.raw(28 + GID_LEN * i, g, GID_LEN, "gid")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        n = v.u8(24, "gid_cnt")
        if 28 + GID_LEN * n > len(v):
            raise v.fail(24, f"gid_cnt {n} needs {28 + GID_LEN * n} bytes, the message has {len(v)}")
        gids = tuple(v.raw(28 + GID_LEN * i, GID_LEN, "gid") for i in range(n))
        return cls(**common, gids=gids, rejected=bool(flags & FLAG_ADD_LNK_REJ), reject_reason=flags & 0x0F)


@dataclass(frozen=True, kw_only=True)
class ConfirmRkey(LlcMessage):
    """CONFIRM RKEY: the RMB's rkey/address on this link plus (link id, rkey, address) for up to 2 others."""

    rkey: int
    vaddr: int
    others: tuple[Rtoken, ...] = ()
    negative: bool = False
    retry: bool = False

    llc_type = LlcType.CONFIRM_RKEY

    def _flags(self) -> int:
        return (FLAG_RKEY_NEG if self.negative else 0) | (FLAG_RKEY_RETRY if self.retry else 0)

    def _encode_body(self, b: Builder, order: str) -> None:
        if len(self.others) > 2:
            raise b.fail(4, f"{len(self.others)} other-link tokens, at most 2")
        b.u8(4, len(self.others), "num_rkeys")
        b.u32(5, self.rkey, "rkey")
        b.u64(9, self.vaddr, "vaddr")
        for i, t in enumerate(self.others):
            o = 17 + 13 * i
            b.u8(o, t.link_id, "link_id")
            b.u32(o + 1, t.rkey, "rkey")
            b.u64(o + 5, t.vaddr, "vaddr")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        n = v.u8(4, "num_rkeys")
        if n > 2:
            raise v.fail(4, f"num_rkeys {n}: at most 2 other-link tokens fit")
        others = tuple(Rtoken(v.u8(17 + 13 * i, "link_id"), v.u32(18 + 13 * i, "rkey"), v.u64(22 + 13 * i, "vaddr")) for i in range(n))
        return cls(
            **common, rkey=v.u32(5, "rkey"), vaddr=v.u64(9, "vaddr"), others=others,
            negative=bool(flags & FLAG_RKEY_NEG), retry=bool(flags & FLAG_RKEY_RETRY),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ConfirmRkeyCont(LlcMessage):
    """CONFIRM RKEY CONTINUATION (v1): received and ignored by Linux, never sent by it."""

    num_rkeys: int  # tokens left, counting this message's
    tokens: tuple[Rtoken, ...] = ()
    negative: bool = False

    llc_type = LlcType.CONFIRM_RKEY_CONT

    def _flags(self) -> int:
        return FLAG_RKEY_NEG if self.negative else 0

    def _encode_body(self, b: Builder, order: str) -> None:
        if len(self.tokens) != min(self.num_rkeys, 3):
            raise b.fail(4, f"num_rkeys {self.num_rkeys} means {min(self.num_rkeys, 3)} tokens here, got {len(self.tokens)}")
        b.u8(4, self.num_rkeys, "num_rkeys")
        for i, t in enumerate(self.tokens):
            o = 5 + 13 * i
            b.u8(o, t.link_id, "link_id")
            b.u32(o + 1, t.rkey, "rkey")
            b.u64(o + 5, t.vaddr, "vaddr")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        n = v.u8(4, "num_rkeys")
        tokens = tuple(Rtoken(v.u8(5 + 13 * i, "link_id"), v.u32(6 + 13 * i, "rkey"), v.u64(10 + 13 * i, "vaddr")) for i in range(min(n, 3)))
        return cls(**common, num_rkeys=n, tokens=tokens, negative=bool(flags & FLAG_RKEY_NEG))


@dataclass(frozen=True, kw_only=True)
class TestLink(LlcMessage):
    user_data: bytes = bytes(16)

    llc_type = LlcType.TEST_LINK
    __test__ = False  # not a pytest test class

    def _encode_body(self, b: Builder, order: str) -> None:
        b.raw(4, self.user_data, 16, "user_data")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        return cls(**common, user_data=v.raw(4, 16, "user_data"))


@dataclass(frozen=True, kw_only=True)
class DeleteRkey(LlcMessage):
    """DELETE RKEY: v1 carries up to 8 rkeys and an error mask; v2 any number and an invalid count."""

    rkeys: tuple[int, ...] = ()
    negative: bool = False
    err_mask: int = 0  # v1 response: bit (7 - i) set = rkey i unknown
    num_invalid: int = 0  # v2 response

    llc_type = LlcType.DELETE_RKEY

    def _size(self) -> int:
        return max(LLC_LEN, 8 + 4 * len(self.rkeys)) if self.version >= 2 else LLC_LEN

    def _flags(self) -> int:
        return FLAG_RKEY_NEG if self.negative else 0

    def _encode_body(self, b: Builder, order: str) -> None:
        if self.version == 1:
            if len(self.rkeys) > 8:
                raise b.fail(4, f"{len(self.rkeys)} rkeys, a v1 DELETE RKEY carries at most 8")
            if self.num_invalid:
                raise b.fail(5, "num_invalid is a v2 field; v1 uses err_mask")
            b.u8(5, self.err_mask, "err_mask")
        else:
            if self.err_mask:
                raise b.fail(5, "err_mask is a v1 field; v2 uses num_invalid")
            b.u8(5, self.num_invalid, "num_invalid")
        b.u8(4, len(self.rkeys), "num_rkeys")
        for i, rkey in enumerate(self.rkeys):
            b.u32(8 + 4 * i, rkey, "rkey")

    @classmethod
    def _decode_body(cls, v, common, flags, order):
        n = v.u8(4, "num_rkeys")
        version = common["version"]
        if version == 1 and n > 8:
            raise v.fail(4, f"num_rkeys {n}: a v1 DELETE RKEY carries at most 8")
        if 8 + 4 * n > len(v):
            raise v.fail(4, f"num_rkeys {n} needs {8 + 4 * n} bytes, the message has {len(v)}")
        rkeys = tuple(v.u32(8 + 4 * i, "rkey") for i in range(n))
        extra = {"err_mask": v.u8(5, "err_mask")} if version == 1 else {"num_invalid": v.u8(5, "num_invalid")}
        return cls(**common, rkeys=rkeys, negative=bool(flags & FLAG_RKEY_NEG), **extra)


_CLASSES: dict[LlcType, type[LlcMessage]] = {
    cls.llc_type: cls for cls in (ConfirmLink, AddLink, AddLinkCont, DeleteLink, RequestAddLink, ConfirmRkey, TestLink, ConfirmRkeyCont, DeleteRkey)
}


def _v2_length(v: View, order: str, echo: bool = False) -> tuple[int, str]:
    v.need(1, 2, "length_v2")
    little = v.u16le(1, "length_v2")
    big = v.u16(1, "length_v2")
    if order != "auto":
        return (little if order == "little" else big), order
    have = len(v)
    if little == have:
        return little, "little"
    if big == have:
        return big, "big"
    if LLC_LEN <= little <= min(have, LLC_V2_MAX_LEN):
        return little, "little"
    if LLC_LEN <= big <= min(have, LLC_V2_MAX_LEN):
        return big, "big"
    if echo:  # a 44-byte reject that echoes a longer request's header (see decode)
        if LLC_LEN < little <= LLC_V2_MAX_LEN:
            return little, "little"
        if LLC_LEN < big <= LLC_V2_MAX_LEN:
            return big, "big"
    raise v.fail(1, f"length_v2 reads {little} (little-endian) or {big} (big-endian); neither fits the {have} bytes given")


def decode(buf: bytes | bytearray | memoryview, *, order: str = "auto") -> LlcMessage:
    """Decode one LLC message from the bytes a SEND delivered.

    ``buf`` may be longer than the message (a receive buffer); the message's own length
    decides what is read. ``order`` is "auto", "little" or "big" for the v2 length.
    """
    if order not in ("auto", *ORDERS):
        raise ValueError(f"order must be 'auto', 'little' or 'big', not {order!r}")
    v = View(buf, "LLC message", LlcError)
    type_byte = v.u8(0, "type")
    version, base = type_byte >> 4, type_byte & 0x0F
    if version not in (0, 2) or base not in _NAMES.keys() or (version == 2 and LlcType(base) in _V1_ONLY):
        raise v.fail(0, f"unknown LLC message type 0x{type_byte:02x}")
    llc_type = LlcType(base)
    v.name = f"LLC {_NAMES[llc_type]}" + (" v2" if version else "")
    if version == 0:
        length = v.u8(1, "length")
        if length != LLC_LEN:
            raise v.fail(1, f"length {length}: a v1 LLC message is 44 bytes")
        used = "little"
    else:
        # A kernel client answers an ADD LINK v2 by echoing the request's first 44 bytes (all
        # it keeps of a message), its longer length_v2 included, flagged a response, in a
        # 44-byte SEND: when it rejects it (smc_llc_cli_add_link_reject: RESP and REJ), and
        # when it arrives while the client waits for CONFIRM LINK (smc_llc_cli_conf_link takes
        # any other message for a DELETE LINK and sends it back with RESP). Its receive rule
        # (smc_llc_rx_handler) asks only length_v2 >= 44, so it reads what came, as we do.
        echo = llc_type == LlcType.ADD_LINK and len(v) == LLC_LEN and bool(v.u8(3, "flags") & FLAG_RESP)
        length, used = _v2_length(v, order, echo)
        if not LLC_LEN <= length <= LLC_V2_MAX_LEN:
            raise v.fail(1, f"length_v2 {length} ({used}-endian) is outside 44..8192")
        if echo:
            length = LLC_LEN
    if len(v) < length:
        raise v.fail(1, f"length {length} but only {len(v)} bytes given")
    v = View(v.buf[:length], v.name, LlcError)
    flags = v.u8(3, "flags")
    common = {"version": 2 if version else 1, "response": _resp(flags), "order": used}
    return _CLASSES[llc_type]._decode_body(v, common, flags, used)
