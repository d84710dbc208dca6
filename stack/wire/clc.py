"""CLC (connection layer control) messages: the SMC handshake carried on the TCP connection.

Layouts follow Linux ``net/smc/smc_clc.h`` (RFC 7609 plus SMC version 2 and 2.1).
All fields are big-endian. Offsets in comments are from the first byte of the message.

Header (8 bytes): eyecatcher @0 (EBCDIC "SMCR" or "SMCD"), type @4, length @5 (total,
header and trailer included), byte @7 = version (bits 7-4) | typev2 (bits 3-2) | typev1
(bits 1-0). In Accept/Confirm bit 0x08 is the first-contact flag; in a Decline it is the
out-of-sync flag. The 4-byte trailer repeats the eyecatcher.

Proposal forms:

* RFC 7609 / Linux <= 5.9 (version 1, ``ip_area_offset`` 0): the IP prefix area follows
  the fixed part directly at offset 40.
* Linux >= 5.10 (version 2 header, ``ip_area_offset`` 40): a 40-byte SMC-D/v2 area at 40,
  the IP prefix area at 80 when SMC-R or SMC-D v1 is offered, then the v2 extension.

Both decode; :meth:`Proposal.encode` writes whichever form ``smcd`` selects (the Linux
form unless ``smcd`` is None). Receive validation mirrors ``smc_clc_msg_prop_valid`` and
``smc_clc_msg_hdr_valid``: an exact length formula per message, eyecatchers at both ends
(the Decline trailer is not checked, as in the kernel).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum

from ._base import Builder, View, WireError, check_uint
from .text import printable_ascii

EYECATCHER_SMCR = b"\xe2\xd4\xc3\xd9"  # EBCDIC "SMCR"
EYECATCHER_SMCD = b"\xe2\xd4\xc3\xc4"  # EBCDIC "SMCD"
EYECATCHERS = {"SMCR": EYECATCHER_SMCR, "SMCD": EYECATCHER_SMCD}
_EYECATCHER_NAMES = {v: k for k, v in EYECATCHERS.items()}

HEADER_LEN = 8
TRAILER_LEN = 4
MAX_V6_PREFIXES = 8  # SMC_CLC_MAX_V6_PREFIX
MAX_UEIDS = 8  # SMC_CLC_MAX_UEID
MAX_ISM_GIDS = 8  # SMCD_CLC_MAX_V2_GID_ENTRIES
EID_LEN = 32
HOSTNAME_LEN = 32
SMCD_AREA_LEN = 40  # struct smc_clc_msg_smcd
V2_EXT_FIXED_LEN = 40  # struct smc_clc_v2_extension_fixed
SMCD_V2_EXT_FIXED_LEN = 48  # struct smc_clc_smcd_v2_extension_fixed
FCE_BASE_LEN = 36  # struct smc_clc_first_contact_ext (v2.0)
FCE_V2X_LEN = 52  # struct smc_clc_first_contact_ext_v2x (v2.1)
SMCR_ACCEPT_CONFIRM_V1_LEN = 68
SMCR_ACCEPT_CONFIRM_V2_LEN = 108  # without first-contact extension
SMCD_ACCEPT_CONFIRM_V1_LEN = 48
SMCD_ACCEPT_CONFIRM_V2_LEN = 78
DECLINE_V1_LEN = 28
DECLINE_V2_LEN = 44
# The kernel reads at most this many bytes of a CLC message; a peer's length beyond it is drained.
MAX_MESSAGE_LEN = 0xFFFF

OS_ZOS, OS_LINUX, OS_AIX, OS_UNKNOWN = 1, 2, 3, 15


class ClcError(WireError):
    codec = "clc"


class ClcType(IntEnum):
    PROPOSAL = 1
    ACCEPT = 2
    CONFIRM = 3
    DECLINE = 4


class SmcType(IntEnum):
    """Type codes of header byte 7 (SMC_TYPE_*). SMC-R is 0, not 1."""

    R = 0
    D = 1
    N = 2
    B = 3

    @property
    def has_r(self) -> bool:
        return self in (SmcType.R, SmcType.B)

    @property
    def has_d(self) -> bool:
        return self in (SmcType.D, SmcType.B)


_TYPE_NAMES = {1: "CLC Proposal", 2: "CLC Accept", 3: "CLC Confirm", 4: "CLC Decline"}
_FIRST_CONTACT = 0x08  # SMC_FIRST_CONTACT_MASK << 2
_OUT_OF_SYNC = 0x08


@dataclass(frozen=True)
class ClcHeader:
    type: int
    length: int
    version: int
    typev2: int
    typev1: int
    eyecatcher: str

    @property
    def flag(self) -> bool:
        """Bit 0x08: first contact (Accept/Confirm) or out of sync (Decline)."""
        return bool(self.typev2 & 0b10)


def decode_header(buf: bytes | bytearray | memoryview) -> ClcHeader:
    """Decode the 8-byte header; used to frame CLC messages on the TCP stream.

    Rejects what ``smc_clc_wait_msg`` rejects: an unknown eyecatcher, version 0, an
    unknown type, or a length too small to hold header and trailer.
    """
    v = View(bytes(buf[:HEADER_LEN]), "CLC header", ClcError)
    eyecatcher = v.raw(0, 4, "eyecatcher")
    if eyecatcher not in _EYECATCHER_NAMES:
        raise v.fail(0, f"eyecatcher {eyecatcher.hex()} is neither SMCR (e2d4c3d9) nor SMCD (e2d4c3c4)")
    mtype = v.u8(4, "type")
    if mtype not in _TYPE_NAMES:
        raise v.fail(4, f"unknown CLC message type {mtype}")
    v.name = _TYPE_NAMES[mtype]
    length = v.u16(5, "length")
    if length < HEADER_LEN + TRAILER_LEN:
        raise v.fail(5, f"length {length} is smaller than header plus trailer (12)")
    b7 = v.u8(7, "version/type byte")
    version = b7 >> 4
    if version < 1:
        raise v.fail(7, "version 0 is not a valid CLC version")
    return ClcHeader(mtype, length, version, (b7 >> 2) & 3, b7 & 3, _EYECATCHER_NAMES[eyecatcher])


def _encode_header(b: Builder, mtype: int, version: int, typev2: int, typev1: int, eyecatcher: str) -> None:
    if eyecatcher not in EYECATCHERS:
        raise b.fail(0, f"eyecatcher must be 'SMCR' or 'SMCD', got {eyecatcher!r}")
    check_uint(version, 4, "version", b.name, 7, ClcError)
    if version < 1:
        raise b.fail(7, "version must be at least 1")
    b.raw(0, EYECATCHERS[eyecatcher], 4, "eyecatcher")
    b.u8(4, mtype, "type")
    b.u16(5, len(b.buf), "length")
    b.u8(7, (version << 4) | (typev2 << 2) | typev1, "version/type byte")
    b.raw(len(b.buf) - TRAILER_LEN, EYECATCHERS[eyecatcher], 4, "trailer")


def _check_bytes(value: bytes, size: int, name: str, message: str, offset: int) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ClcError(message, offset, f"{name} must be {size} bytes")
    return bytes(value)


# --------------------------------------------------------------------------- Proposal


@dataclass(frozen=True)
class Ipv6Prefix:
    prefix: ipaddress.IPv6Address
    length: int


@dataclass(frozen=True)
class IpPrefixArea:
    """IP prefix area of a Proposal (struct smc_clc_msg_proposal_prefix + IPv6 list)."""

    subnet: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    prefix_len: int = 0
    ipv6: tuple[Ipv6Prefix, ...] = ()

    @property
    def size(self) -> int:
        return 8 + 17 * len(self.ipv6)


@dataclass(frozen=True)
class SmcdArea:
    """The 40-byte SMC-D / v2 information area at offset 40 (struct smc_clc_msg_smcd)."""

    ism_gid: int = 0
    ism_chid: int = 0
    vendor_oui: bytes = bytes(3)
    vendor_options: bytes = bytes(5)


@dataclass(frozen=True)
class SmcdV2Extension:
    """SMC-Dv2 extension: system EID and the ISMv2 GID/CHID list."""

    seid: bytes = bytes(EID_LEN)
    gids: tuple[tuple[int, int], ...] = ()  # (ISM GID u64, CHID u16)


@dataclass(frozen=True)
class V2Extension:
    """CLC v2 extension of a Proposal (struct smc_clc_v2_extension)."""

    eids: tuple[bytes, ...] = ()  # user EIDs, 32 bytes each
    roce_gid: bytes = bytes(16)  # SMC-Rv2 RoCEv2 GID (::ffff:a.b.c.d)
    release: int = 1  # 0 = v2.0, 1 = v2.1 (SMC_RELEASE_1)
    seid_flag: bool = False
    max_conns: int = 0
    max_links: int = 0
    feature_mask: int = 0
    smcd: SmcdV2Extension | None = None


@dataclass(frozen=True)
class Proposal:
    """CLC Proposal. ``prefix`` is present iff ``typev1`` offers something, ``v2`` iff
    ``typev2`` does; ``smcd`` is None only in the RFC 7609 form (version 1)."""

    peer_id: bytes
    gid: bytes
    mac: bytes
    typev1: SmcType = SmcType.R
    typev2: SmcType = SmcType.N
    version: int = 2
    prefix: IpPrefixArea | None = None
    smcd: SmcdArea | None = field(default_factory=SmcdArea)
    v2: V2Extension | None = None
    eyecatcher: str = "SMCR"

    type = ClcType.PROPOSAL

    @property
    def ip_area_offset(self) -> int:
        return SMCD_AREA_LEN if self.smcd is not None and self.prefix is not None else 0

    def encode(self) -> bytes:
        name = "CLC Proposal"
        typev1, typev2 = SmcType(self.typev1), SmcType(self.typev2)
        if (typev1 != SmcType.N) != (self.prefix is not None):
            raise ClcError(name, 40, "an IP prefix area is required exactly when typev1 offers SMC-R or SMC-D")
        if self.smcd is None and (self.version != 1 or typev1 == SmcType.N):
            raise ClcError(name, 38, "the RFC 7609 form (no SMC-D area) is version 1 with typev1 R/D/B only")
        if self.version == 1:
            # In a version 1 header the typev2 bits are RFC 7609's flag/reserved bits
            # (Linux <= 5.9 sends them as 0): carried as read, never a v2 offer.
            if self.v2 is not None:
                raise ClcError(name, 7, "a v2 extension needs header version 2")
        elif (typev2 != SmcType.N) != (self.v2 is not None):
            raise ClcError(name, 50, "a v2 extension is required exactly when typev2 offers SMC-R or SMC-D")
        if self.v2 is not None and typev2.has_d != (self.v2.smcd is not None):
            raise ClcError(name, 50, "an SMC-Dv2 extension is required exactly when typev2 offers SMC-D")
        if self.smcd is not None and self.prefix is None and (self.smcd.ism_gid & 0xFF) > MAX_V6_PREFIXES:
            # With no prefix area the kernel still reads byte 47 (the ISM GID's last byte)
            # as an IPv6 prefix count and rejects the Proposal if it exceeds 8.
            raise ClcError(name, 47, "with typev1 N the ISM GID's last byte is read as IPv6 prefix count and must be <= 8")

        prefix_off = 40 + self.ip_area_offset
        prefix_len = self.prefix.size if self.prefix else 0
        if self.smcd is None:
            v2_off = None
            end = prefix_off + prefix_len
        else:
            v2_off = 80 + prefix_len
            end = v2_off
        if self.v2 is not None:
            end += V2_EXT_FIXED_LEN + EID_LEN * len(self.v2.eids)
            if self.v2.smcd is not None:
                end += SMCD_V2_EXT_FIXED_LEN + 10 * len(self.v2.smcd.gids)
        b = Builder(end + TRAILER_LEN, name, ClcError)
        b.raw(8, _check_bytes(self.peer_id, 8, "peer_id", name, 8), 8, "peer_id")
        b.raw(16, _check_bytes(self.gid, 16, "gid", name, 16), 16, "gid")
        b.raw(32, _check_bytes(self.mac, 6, "mac", name, 32), 6, "mac")
        b.u16(38, self.ip_area_offset, "ip_area_offset")
        if self.smcd is not None:
            a = self.smcd
            b.u64(40, a.ism_gid, "ism_gid")
            b.u16(48, a.ism_chid, "ism_chid")
            b.u16(50, (v2_off - 52) if self.v2 is not None else 0, "v2_ext_offset")
            b.raw(52, a.vendor_oui, 3, "vendor_oui")
            b.raw(55, a.vendor_options, 5, "vendor_options")
        if self.prefix is not None:
            p = self.prefix
            if len(p.ipv6) > MAX_V6_PREFIXES:
                raise ClcError(name, prefix_off + 7, f"{len(p.ipv6)} IPv6 prefixes, at most {MAX_V6_PREFIXES}")
            b.raw(prefix_off, ipaddress.IPv4Address(p.subnet).packed, 4, "subnet")
            b.u8(prefix_off + 4, p.prefix_len, "prefix_len")
            b.u8(prefix_off + 7, len(p.ipv6), "ipv6_prefix_count")
            for i, pfx in enumerate(p.ipv6):
                o = prefix_off + 8 + 17 * i
                b.raw(o, ipaddress.IPv6Address(pfx.prefix).packed, 16, "ipv6 prefix")
                b.u8(o + 16, pfx.length, "ipv6 prefix length")
        if self.v2 is not None:
            _encode_v2_ext(b, v2_off, self.v2)
        _encode_header(b, ClcType.PROPOSAL, self.version, typev2, typev1, self.eyecatcher)
        return b.bytes()


def _encode_v2_ext(b: Builder, off: int, ext: V2Extension) -> None:
    if len(ext.eids) > MAX_UEIDS:
        raise b.fail(off, f"{len(ext.eids)} user EIDs, at most {MAX_UEIDS}")
    gids = ext.smcd.gids if ext.smcd else ()
    if len(gids) > MAX_ISM_GIDS:
        raise b.fail(off + 1, f"{len(gids)} ISM GID entries, at most {MAX_ISM_GIDS}")
    b.u8(off, len(ext.eids), "eid_cnt")
    b.u8(off + 1, len(gids), "ism_gid_cnt")
    check_uint(ext.release, 4, "release", b.name, off + 3, ClcError)
    b.u8(off + 3, (ext.release << 4) | int(bool(ext.seid_flag)), "v2 flag")
    b.u16(off + 6, (32 + EID_LEN * len(ext.eids)) if ext.smcd is not None else 0, "smcd_v2_ext_offset")
    b.raw(off + 8, ext.roce_gid, 16, "roce_gid")
    b.u8(off + 24, ext.max_conns, "max_conns")
    b.u8(off + 25, ext.max_links, "max_links")
    b.u16(off + 26, ext.feature_mask, "feature_mask")
    o = off + V2_EXT_FIXED_LEN
    for eid in ext.eids:
        b.raw(o, eid, EID_LEN, "user EID")
        o += EID_LEN
    if ext.smcd is not None:
        b.raw(o, ext.smcd.seid, EID_LEN, "system EID")
        o += SMCD_V2_EXT_FIXED_LEN
        for gid, chid in gids:
            b.u64(o, gid, "ISM GID")
            b.u16(o + 8, chid, "ISM CHID")
            o += 10


def _decode_proposal(v: View, h: ClcHeader) -> Proposal:
    typev1, typev2 = SmcType(h.typev1), SmcType(h.typev2)
    peer_id = v.raw(8, 8, "peer_id")
    gid = v.raw(16, 16, "gid")
    mac = v.raw(32, 6, "mac")
    ip_area_offset = v.u16(38, "ip_area_offset")
    if ip_area_offset > SMCD_AREA_LEN:
        raise v.fail(38, f"ip_area_offset {ip_area_offset} is larger than the SMC-D area (40)")
    length = h.length

    if h.version == 1:
        if typev1 == SmcType.N:
            raise v.fail(7, "a version 1 Proposal must offer SMC-R or SMC-D in typev1")
        if ip_area_offset not in (0, SMCD_AREA_LEN):
            raise v.fail(38, f"ip_area_offset {ip_area_offset} is neither 0 (RFC 7609) nor 40 (Linux)")
        smcd = _decode_smcd_area(v) if ip_area_offset == SMCD_AREA_LEN else None
        prefix, end = _decode_prefix(v, 40 + ip_area_offset)
        if length != end + TRAILER_LEN:
            raise v.fail(5, f"length {length} does not match the version 1 layout ({end + TRAILER_LEN} bytes)")
        return Proposal(peer_id, gid, mac, typev1, typev2, 1, prefix, smcd, None, h.eyecatcher)

    # Version 2 and later: the SMC-D/v2 area is always at 40.
    v.need(40, SMCD_AREA_LEN, "SMC-D/v2 area")
    smcd = _decode_smcd_area(v)
    prefix = None
    end = 80
    if typev1 != SmcType.N:
        if ip_area_offset != SMCD_AREA_LEN:
            raise v.fail(38, f"ip_area_offset {ip_area_offset}: a v2 Proposal offering v1 types puts the prefix at 80 (offset 40)")
        prefix, end = _decode_prefix(v, 80)
    else:
        count = v.u8(40 + ip_area_offset + 7, "ipv6_prefix_count")
        if count > MAX_V6_PREFIXES:
            raise v.fail(40 + ip_area_offset + 7, f"IPv6 prefix count {count} exceeds {MAX_V6_PREFIXES}")
    v2 = None
    v2_ext_offset = v.u16(50, "v2_ext_offset")
    if typev2 != SmcType.N:
        if v2_ext_offset == 0:
            raise v.fail(50, "typev2 offers SMC v2 but v2_ext_offset is 0 (no v2 extension)")
        if 52 + v2_ext_offset != end:
            raise v.fail(50, f"v2_ext_offset {v2_ext_offset} puts the v2 extension at {52 + v2_ext_offset}, expected {end}")
        v2, end = _decode_v2_ext(v, end, typev2)
    if length != end + TRAILER_LEN:
        raise v.fail(5, f"length {length} does not match the version 2 layout ({end + TRAILER_LEN} bytes)")
    return Proposal(peer_id, gid, mac, typev1, typev2, h.version, prefix, smcd, v2, h.eyecatcher)


def _decode_smcd_area(v: View) -> SmcdArea:
    return SmcdArea(v.u64(40, "ism_gid"), v.u16(48, "ism_chid"), v.raw(52, 3, "vendor_oui"), v.raw(55, 5, "vendor_options"))


def _decode_prefix(v: View, off: int) -> tuple[IpPrefixArea, int]:
    subnet = ipaddress.IPv4Address(v.raw(off, 4, "subnet"))
    plen = v.u8(off + 4, "prefix_len")
    count = v.u8(off + 7, "ipv6_prefix_count")
    if count > MAX_V6_PREFIXES:
        raise v.fail(off + 7, f"IPv6 prefix count {count} exceeds {MAX_V6_PREFIXES}")
    prefixes = []
    for i in range(count):
        o = off + 8 + 17 * i
        prefixes.append(Ipv6Prefix(ipaddress.IPv6Address(v.raw(o, 16, "ipv6 prefix")), v.u8(o + 16, "ipv6 prefix length")))
    return IpPrefixArea(subnet, plen, tuple(prefixes)), off + 8 + 17 * count


def _decode_v2_ext(v: View, off: int, typev2: SmcType) -> tuple[V2Extension, int]:
    eid_cnt = v.u8(off, "eid_cnt")
    if eid_cnt > MAX_UEIDS:
        raise v.fail(off, f"eid_cnt {eid_cnt} exceeds {MAX_UEIDS}")
    gid_cnt = v.u8(off + 1, "ism_gid_cnt")
    flag = v.u8(off + 3, "v2 flag")
    smcd_off = v.u16(off + 6, "smcd_v2_ext_offset")
    roce = v.raw(off + 8, 16, "roce_gid")
    max_conns = v.u8(off + 24, "max_conns")
    max_links = v.u8(off + 25, "max_links")
    mask = v.u16(off + 26, "feature_mask")
    o = off + V2_EXT_FIXED_LEN
    eids = tuple(v.raw(o + EID_LEN * i, EID_LEN, "user EID") for i in range(eid_cnt))
    o += EID_LEN * eid_cnt
    smcd = None
    if typev2.has_d:
        if gid_cnt > MAX_ISM_GIDS:
            raise v.fail(off + 1, f"ism_gid_cnt {gid_cnt} exceeds {MAX_ISM_GIDS}")
        if off + 8 + smcd_off != o:
            raise v.fail(off + 6, f"smcd_v2_ext_offset {smcd_off} puts the SMC-Dv2 extension at {off + 8 + smcd_off}, expected {o}")
        seid = v.raw(o, EID_LEN, "system EID")
        o += SMCD_V2_EXT_FIXED_LEN
        gids = tuple((v.u64(o + 10 * i, "ISM GID"), v.u16(o + 10 * i + 8, "ISM CHID")) for i in range(gid_cnt))
        o += 10 * gid_cnt
        smcd = SmcdV2Extension(seid, gids)
    return V2Extension(eids, roce, flag >> 4, bool(flag & 1), max_conns, max_links, mask, smcd), o


# --------------------------------------------------------------------------- Accept / Confirm


@dataclass(frozen=True)
class FirstContactExt:
    """First-contact extension of a v2 Accept/Confirm (52 bytes for SMC-R, release >= 1)."""

    v2_direct: bool = True
    os_type: int = OS_LINUX
    release: int = 1
    hostname: bytes = b" " * HOSTNAME_LEN
    max_conns: int = 255
    max_links: int = 2
    feature_mask: int = 0
    vendor_options: int = 0


@dataclass(frozen=True)
class _SmcrAcceptConfirm:
    peer_id: bytes
    gid: bytes
    mac: bytes
    qpn: int
    rmb_rkey: int
    rmbe_alert_token: int
    rmbe_size: int  # compressed notation, size = 2**(c+14)
    qp_mtu: int  # enum ib_mtu: 1=256 ... 5=4096
    rmb_vaddr: int
    psn: int
    first_contact: bool = False
    version: int = 1
    rmbe_idx: int = 1
    eid: bytes = bytes(EID_LEN)  # v2 only
    fce: FirstContactExt | None = None  # v2 with first contact only
    eyecatcher: str = "SMCR"

    type = ClcType.ACCEPT

    def _gid_list(self) -> tuple[bytes, ...]:
        return ()

    def encode(self) -> bytes:
        name = _TYPE_NAMES[self.type]
        gids = self._gid_list()
        if self.version == 1:
            if self.fce is not None or gids:
                raise ClcError(name, 64, "a version 1 Accept/Confirm carries no v2 parts")
            size = SMCR_ACCEPT_CONFIRM_V1_LEN
        else:
            if (self.fce is not None) != bool(self.first_contact):
                raise ClcError(name, 104, "a v2 first-contact Accept/Confirm needs a first-contact extension, and only it")
            if gids and self.fce is None:
                raise ClcError(name, 156, "a GID list is only sent with a first-contact extension")
            size = SMCR_ACCEPT_CONFIRM_V2_LEN
            if self.fce is not None:
                size += FCE_V2X_LEN
                if self.type == ClcType.CONFIRM:
                    size += 4 + 16 * len(gids)
        b = Builder(size, name, ClcError)
        b.raw(8, _check_bytes(self.peer_id, 8, "peer_id", name, 8), 8, "peer_id")
        b.raw(16, _check_bytes(self.gid, 16, "gid", name, 16), 16, "gid")
        b.raw(32, _check_bytes(self.mac, 6, "mac", name, 32), 6, "mac")
        b.u24(38, self.qpn, "qpn")
        b.u32(41, self.rmb_rkey, "rmb_rkey")
        b.u8(45, self.rmbe_idx, "rmbe_idx")
        b.u32(46, self.rmbe_alert_token, "rmbe_alert_token")
        check_uint(self.rmbe_size, 4, "rmbe_size", name, 50, ClcError)
        check_uint(self.qp_mtu, 4, "qp_mtu", name, 50, ClcError)
        b.u8(50, (self.rmbe_size << 4) | self.qp_mtu, "rmbe_size/qp_mtu")
        b.u64(52, self.rmb_vaddr, "rmb_vaddr")
        b.u24(61, self.psn, "psn")
        if self.version >= 2:
            b.raw(64, self.eid, EID_LEN, "eid")
            if self.fce is not None:
                _encode_fce(b, 104, self.fce)
                if self.type == ClcType.CONFIRM:
                    b.u8(156, len(gids), "gid_cnt")
                    for i, g in enumerate(gids):
                        b.raw(160 + 16 * i, g, 16, "GID list entry")
        typev2 = 0b10 if self.first_contact else 0
        _encode_header(b, self.type, self.version, typev2, SmcType.R, self.eyecatcher)
        return b.bytes()


@dataclass(frozen=True)
class Accept(_SmcrAcceptConfirm):
    """SMC-R CLC Accept (server to client)."""

    type = ClcType.ACCEPT


@dataclass(frozen=True)
class Confirm(_SmcrAcceptConfirm):
    """SMC-R CLC Confirm (client to server); v2 first contact adds the GID list."""

    gids: tuple[bytes, ...] = ()

    type = ClcType.CONFIRM

    def _gid_list(self) -> tuple[bytes, ...]:
        if self.gids and (self.version < 2 or not self.first_contact):
            raise ClcError("CLC Confirm", 156, "a GID list is only sent in a v2 first-contact Confirm")
        if len(self.gids) > 255:
            raise ClcError("CLC Confirm", 156, f"{len(self.gids)} GIDs do not fit the count byte")
        return tuple(self.gids)


def _encode_fce(b: Builder, off: int, fce: FirstContactExt) -> None:
    check_uint(fce.os_type, 4, "os_type", b.name, off + 1, ClcError)
    check_uint(fce.release, 4, "release", b.name, off + 1, ClcError)
    b.u8(off, 0x80 if fce.v2_direct else 0, "v2_direct")
    b.u8(off + 1, (fce.os_type << 4) | fce.release, "os_type/release")
    b.raw(off + 4, fce.hostname, HOSTNAME_LEN, "hostname")
    b.u8(off + 36, fce.max_conns, "max_conns")
    b.u8(off + 37, fce.max_links, "max_links")
    b.u16(off + 38, fce.feature_mask, "feature_mask")
    b.u32(off + 40, fce.vendor_options, "vendor_options")


def _decode_fce(v: View, off: int, long_form: bool) -> FirstContactExt:
    b1 = v.u8(off + 1, "os_type/release")
    base = dict(
        v2_direct=bool(v.u8(off, "v2_direct") & 0x80),
        os_type=b1 >> 4,
        release=b1 & 0xF,
        hostname=v.raw(off + 4, HOSTNAME_LEN, "hostname"),
    )
    if not long_form:
        return FirstContactExt(**base, max_conns=0, max_links=0)
    return FirstContactExt(
        **base,
        max_conns=v.u8(off + 36, "max_conns"),
        max_links=v.u8(off + 37, "max_links"),
        feature_mask=v.u16(off + 38, "feature_mask"),
        vendor_options=v.u32(off + 40, "vendor_options"),
    )


def _decode_smcr_accept_confirm(v: View, h: ClcHeader) -> Accept | Confirm:
    length = h.length
    first_contact = h.flag
    if h.version == 1:
        if length != SMCR_ACCEPT_CONFIRM_V1_LEN:
            raise v.fail(5, f"length {length}: a version 1 SMC-R {v.name[4:]} is exactly 68 bytes")
    elif length < SMCR_ACCEPT_CONFIRM_V2_LEN:
        raise v.fail(5, f"length {length}: a version 2 SMC-R {v.name[4:]} is at least 108 bytes")
    size_mtu = v.u8(50, "rmbe_size/qp_mtu")
    common = dict(
        peer_id=v.raw(8, 8, "peer_id"),
        gid=v.raw(16, 16, "gid"),
        mac=v.raw(32, 6, "mac"),
        qpn=v.u24(38, "qpn"),
        rmb_rkey=v.u32(41, "rmb_rkey"),
        rmbe_idx=v.u8(45, "rmbe_idx"),
        rmbe_alert_token=v.u32(46, "rmbe_alert_token"),
        rmbe_size=size_mtu >> 4,
        qp_mtu=size_mtu & 0xF,
        rmb_vaddr=v.u64(52, "rmb_vaddr"),
        psn=v.u24(61, "psn"),
        first_contact=first_contact,
        version=h.version,
        eyecatcher=h.eyecatcher,
    )
    gids: tuple[bytes, ...] = ()
    if h.version >= 2:
        common["eid"] = v.raw(64, EID_LEN, "eid")
        end = SMCR_ACCEPT_CONFIRM_V2_LEN - TRAILER_LEN
        if first_contact:
            # Linux sends the 52-byte v2.1 form for SMC-R; the 36-byte v2.0 base is accepted too.
            body = length - TRAILER_LEN - end
            if h.type == ClcType.ACCEPT:
                if body not in (FCE_BASE_LEN, FCE_V2X_LEN):
                    raise v.fail(5, f"length {length}: the first-contact extension must be 36 or 52 bytes, not {body}")
                fce_len = body
            else:
                fce_len = _confirm_fce_len(v, end, body)
            common["fce"] = _decode_fce(v, end, fce_len == FCE_V2X_LEN)
            end += fce_len
            if h.type == ClcType.CONFIRM:
                count = v.u8(end, "gid_cnt")
                gids = tuple(v.raw(end + 4 + 16 * i, 16, "GID list entry") for i in range(count))
        elif length != SMCR_ACCEPT_CONFIRM_V2_LEN:
            raise v.fail(5, f"length {length}: a v2 SMC-R {v.name[4:]} without first contact is exactly 108 bytes")
    if h.type == ClcType.ACCEPT:
        return Accept(**common)
    return Confirm(**common, gids=gids)


def _confirm_fce_len(v: View, fce_off: int, body: int) -> int:
    """Length of the first-contact extension of a v2 Confirm, from where the GID count
    makes the total length add up (the 52-byte form Linux sends is tried first)."""
    for fce_len in (FCE_V2X_LEN, FCE_BASE_LEN):
        if body >= fce_len + 4 and body == fce_len + 4 + 16 * v.u8(fce_off + fce_len, "gid_cnt"):
            return fce_len
    raise v.fail(5, f"length {fce_off + body + TRAILER_LEN} does not fit a first-contact extension (36 or 52 bytes) and its GID list")


@dataclass(frozen=True)
class SmcdAcceptConfirm:
    """An SMC-D Accept or Confirm, decoded far enough to say what it is.

    smctop is an SMC-R tool; it reports SMC-D handshakes (which appear in captures of
    mixed hosts) but does not speak SMC-D.
    """

    type: ClcType
    version: int
    first_contact: bool
    gid: int
    token: int
    dmbe_idx: int
    dmbe_size: int
    linkid: int
    chid: int = 0
    eid: bytes = b""
    raw: bytes = b""
    eyecatcher: str = "SMCD"


def _decode_smcd_accept_confirm(v: View, h: ClcHeader) -> SmcdAcceptConfirm:
    minimum = SMCD_ACCEPT_CONFIRM_V1_LEN if h.version == 1 else SMCD_ACCEPT_CONFIRM_V2_LEN
    if (h.version == 1 and h.length != minimum) or h.length < minimum:
        raise v.fail(5, f"length {h.length}: an SMC-D {v.name[4:]} version {h.version} needs {minimum} bytes")
    chid, eid = 0, b""
    if h.version >= 2:
        chid = v.u16(32, "chid")
        eid = v.raw(34, EID_LEN, "eid")
    return SmcdAcceptConfirm(
        ClcType(h.type), h.version, h.flag,
        gid=v.u64(8, "gid"), token=v.u64(16, "token"), dmbe_idx=v.u8(24, "dmbe_idx"),
        dmbe_size=v.u8(25, "dmbe_size") >> 4, linkid=v.u32(28, "linkid"),
        chid=chid, eid=eid, raw=v.buf, eyecatcher=h.eyecatcher,
    )  # fmt: skip


# --------------------------------------------------------------------------- Decline


@dataclass(frozen=True)
class Decline:
    """CLC Decline. 28 bytes, or 44 with the four v2 diagnosis words."""

    peer_id: bytes
    diagnosis: int  # peer diagnosis: an SMC_CLC_DECL_* code (see codes.DECLINE_REASONS)
    out_of_sync: bool = False
    os_type: int = 0
    version: int = 1
    extra_diagnosis: tuple[int, int, int, int] | None = None  # present iff the 44-byte form
    eyecatcher: str = "SMCR"

    type = ClcType.DECLINE

    def encode(self) -> bytes:
        name = "CLC Decline"
        extra = self.extra_diagnosis
        if extra is not None and len(extra) != 4:
            raise ClcError(name, 24, "the v2 Decline carries exactly 4 additional diagnosis words")
        b = Builder(DECLINE_V2_LEN if extra is not None else DECLINE_V1_LEN, name, ClcError)
        b.raw(8, _check_bytes(self.peer_id, 8, "peer_id", name, 8), 8, "peer_id")
        b.u32(16, self.diagnosis, "diagnosis")
        check_uint(self.os_type, 4, "os_type", name, 20, ClcError)
        b.u8(20, self.os_type << 4, "os_type")
        for i, word in enumerate(extra or ()):
            b.u32(24 + 4 * i, word, "additional diagnosis")
        _encode_header(b, ClcType.DECLINE, self.version, 0b10 if self.out_of_sync else 0, 0, self.eyecatcher)
        return b.bytes()


def _decode_decline(v: View, h: ClcHeader) -> Decline:
    if h.length not in (DECLINE_V1_LEN, DECLINE_V2_LEN):
        raise v.fail(5, f"length {h.length}: a Decline is 28 (v1) or 44 (v2) bytes")
    extra = None
    if h.length == DECLINE_V2_LEN:
        extra = tuple(v.u32(24 + 4 * i, "additional diagnosis") for i in range(4))
    return Decline(
        peer_id=v.raw(8, 8, "peer_id"),
        diagnosis=v.u32(16, "diagnosis"),
        out_of_sync=h.flag,
        os_type=v.u8(20, "os_type") >> 4,
        version=h.version,
        extra_diagnosis=extra,
        eyecatcher=h.eyecatcher,
    )


# --------------------------------------------------------------------------- entry points

ClcMessage = Proposal | Accept | Confirm | Decline | SmcdAcceptConfirm


def decode(buf: bytes | bytearray | memoryview) -> ClcMessage:
    """Decode exactly one CLC message; ``buf`` must hold exactly ``length`` bytes."""
    data = bytes(buf)
    h = decode_header(data)
    v = View(data, _TYPE_NAMES[h.type], ClcError)
    if len(data) != h.length:
        raise v.fail(5, f"header length {h.length} but {len(data)} bytes given")
    if h.type == ClcType.PROPOSAL:
        msg: ClcMessage = _decode_proposal(v, h)
    elif h.type == ClcType.DECLINE:
        return _decode_decline(v, h)  # the kernel does not check a Decline's trailer
    elif h.typev1 == SmcType.R:
        msg = _decode_smcr_accept_confirm(v, h)
    elif h.typev1 == SmcType.D:
        msg = _decode_smcd_accept_confirm(v, h)
    else:
        raise v.fail(7, f"typev1 {h.typev1} of an Accept/Confirm must be 0 (SMC-R) or 1 (SMC-D)")
    trailer = data[-TRAILER_LEN:]
    if trailer not in _EYECATCHER_NAMES:
        raise v.fail(h.length - TRAILER_LEN, f"trailer {trailer.hex()} is not an SMCR or SMCD eyecatcher")
    return msg


# The fixed fields of each SMC-R message, (name, offset, size), as its decoder reads them: a
# message a capture cut short (its snap length) is read up to its last whole field.
_SMCR_ACCEPT_CONFIRM_FIXED = (("peer_id", 8, 8), ("gid", 16, 16), ("mac", 32, 6), ("qpn", 38, 3), ("rmb_rkey", 41, 4),
                              ("rmbe_idx", 45, 1), ("rmbe_alert_token", 46, 4), ("rmbe_size", 50, 1), ("qp_mtu", 50, 1),
                              ("rmb_vaddr", 52, 8), ("psn", 61, 3))  # fmt: skip
_CUT_FIXED = {
    ClcType.PROPOSAL: (("peer_id", 8, 8), ("gid", 16, 16), ("mac", 32, 6)),
    ClcType.ACCEPT: _SMCR_ACCEPT_CONFIRM_FIXED,
    ClcType.CONFIRM: _SMCR_ACCEPT_CONFIRM_FIXED,
    ClcType.DECLINE: (("peer_id", 8, 8), ("diagnosis", 16, 4), ("os_type", 20, 1)),
}
_NIBBLES = {"rmbe_size": lambda b: b >> 4, "qp_mtu": lambda b: b & 0xF, "os_type": lambda b: b >> 4}


@dataclass(frozen=True)
class CutMessage:
    """A message the capture kept only the start of: its header, and a message object whose
    fixed fields wholly within the bytes kept are read (``known`` names them); the others,
    and what follows the fixed part (a Proposal's prefixes and v2 extension, an Accept's or
    Confirm's EID, first-contact extension and GIDs, a Decline's v2 diagnosis words), are
    zero or absent. ``complete``: every fixed field was kept. An SMC-D Accept/Confirm is read
    as far as its header (``message`` None)."""

    header: ClcHeader
    captured: int  # bytes of it kept
    message: ClcMessage | None
    known: frozenset[str]
    complete: bool


def decode_cut(buf: bytes | bytearray | memoryview) -> CutMessage:
    """Read what a message cut short still says (``buf``: its first bytes, at least the
    header, fewer than its length). Raises ClcError for a bad header, as decode does."""
    data = bytes(buf)
    h = decode_header(data)
    if len(data) >= h.length:
        raise ClcError(_TYPE_NAMES[h.type], 5, f"header length {h.length}: {len(data)} bytes are not a cut message")
    fixed = _CUT_FIXED[h.type] if h.type != ClcType.ACCEPT and h.type != ClcType.CONFIRM or h.typev1 == SmcType.R else ()
    values: dict = {}
    for name, off, size in fixed:
        if off + size <= len(data):
            raw = data[off : off + size]
            values[name] = _NIBBLES[name](raw[0]) if name in _NIBBLES else raw if name in ("peer_id", "gid", "mac") else int.from_bytes(raw, "big")
    known = frozenset(values)
    complete = bool(fixed) and len(known) == len(fixed)
    values = {name: bytes(size) if name in ("peer_id", "gid", "mac") else 0 for name, _, size in fixed} | values
    if not fixed:
        message = None
    elif h.type == ClcType.PROPOSAL:
        message = Proposal(**values, typev1=SmcType(h.typev1), typev2=SmcType(h.typev2), version=h.version, smcd=None, eyecatcher=h.eyecatcher)
    elif h.type == ClcType.DECLINE:
        message = Decline(**values, out_of_sync=h.flag, version=h.version, eyecatcher=h.eyecatcher)
    else:
        message = (Accept if h.type == ClcType.ACCEPT else Confirm)(**values, first_contact=h.flag, version=h.version, eyecatcher=h.eyecatcher)
    return CutMessage(h, len(data), message, known, complete)


def split_stream(buf: bytes | bytearray) -> tuple[list[bytes], bytes]:
    """Cut complete CLC messages off the front of a TCP byte stream.

    Returns the complete messages and the remaining bytes (an incomplete message).
    A bad header raises :class:`ClcError`; the caller fails the connection.
    """
    out = []
    data = bytes(buf)
    while len(data) >= HEADER_LEN:
        h = decode_header(data)
        if len(data) < h.length:
            break
        out.append(data[: h.length])
        data = data[h.length :]
    return out, data


# --------------------------------------------------------------------------- helpers


def make_eid(text: str) -> bytes:
    """A 32-byte user EID: upper case A-Z, 0-9, '.', '-', first character alphanumeric, blank padded."""
    eid = text.strip().upper()
    if not eid or len(eid) > EID_LEN:
        raise ValueError(f"EID {text!r} must be 1 to {EID_LEN} characters")
    if not eid[0].isalnum() or any(not (c.isalnum() or c in ".-") or not c.isascii() for c in eid):
        raise ValueError(f"EID {text!r}: only A-Z, 0-9, '.' and '-' are allowed, starting alphanumeric")
    return eid.encode("ascii").ljust(EID_LEN, b" ")


def eid_text(eid: bytes) -> str:
    """An EID as text; a hostile peer's control bytes come out escaped, never raw."""
    return printable_ascii(eid.rstrip(b" \0"))


def make_hostname(text: str) -> bytes:
    raw = text.encode("ascii", "replace")[:HOSTNAME_LEN]
    return raw.ljust(HOSTNAME_LEN, b" ")


def rmbe_size_bytes(compressed: int) -> int:
    """Compressed RMBE size to bytes: 0 = 16 KiB ... 15 = 512 MiB."""
    if not 0 <= compressed <= 15:
        raise ValueError(f"compressed RMBE size {compressed} is not in 0..15")
    return 1 << (compressed + 14)


def rmbe_size_compress(size: int) -> int:
    """Bytes to compressed notation, rounding up to the next power of two (smc_compress_bufsize)."""
    if size <= 0:
        raise ValueError(f"RMBE size {size} must be positive")
    if size <= 16384:
        return 0
    c = ((size - 1) >> 14).bit_length()
    return min(c, 15)


def qp_mtu_bytes(code: int) -> int:
    """enum ib_mtu code (1..5) to bytes."""
    if not 1 <= code <= 5:
        raise ValueError(f"QP MTU code {code} is not in 1..5")
    return 128 << code


def qp_mtu_code(size: int) -> int:
    codes = {256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}
    if size not in codes:
        raise ValueError(f"path MTU {size} is not one of {sorted(codes)}")
    return codes[size]
